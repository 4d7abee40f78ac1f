//! `host-local`: IP address management from ranges stored on the node.

fn main() {
    cni_types::skel::run(&host_local::HostLocal)
}
