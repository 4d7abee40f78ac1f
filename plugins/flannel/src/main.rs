//! `flannel`: the meta plugin that turns the node's subnet.env into a
//! bridge + host-local delegate config.

fn main() {
    cni_types::skel::run(&flannel::Flannel)
}
