//! Who a plugin call is for: the network, the container and its interface.
//! Rules and chains are named and found by it, also after the pod's
//! namespace is gone.

use cni_types::CmdArgs;

#[derive(Debug, Clone, Copy)]
pub struct Attachment<'a> {
    pub network: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
}

impl<'a> Attachment<'a> {
    pub fn of(args: &'a CmdArgs) -> Attachment<'a> {
        Attachment {
            network: args.network_name(),
            container_id: &args.container_id,
            ifname: &args.ifname,
        }
    }
}
