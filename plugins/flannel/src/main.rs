//! `flannel`: the meta plugin that turns the node's subnet.env into a
//! bridge + host-local delegate config.

fn main() {
    cni_types::skel::run(&cni_types::skel::Unimplemented {
        name: "flannel",
        about: "CNI flannel meta plugin (cni-rs) for spec 0.1.0-1.1.0",
    })
}
