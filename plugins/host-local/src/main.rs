//! `host-local`: IP address management from ranges stored on the node.

fn main() {
    cni_types::skel::run(&cni_types::skel::Unimplemented {
        name: "host-local",
        about: "CNI host-local IPAM plugin (cni-rs) for spec 0.1.0-1.1.0",
    })
}
