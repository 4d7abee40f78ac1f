//! `bridge`: wires a pod to a Linux bridge on the node.

fn main() {
    cni_types::skel::run(&bridge::Bridge)
}
