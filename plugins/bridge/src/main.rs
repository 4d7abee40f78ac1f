//! `bridge`: wires a pod to a Linux bridge on the node.

fn main() {
    cni_types::skel::run(&cni_types::skel::Unimplemented {
        name: "bridge",
        about: "CNI bridge plugin (cni-rs) for spec 0.1.0-1.1.0",
    })
}
