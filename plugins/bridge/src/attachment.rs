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

/// The first `n` bytes of the SHA-512 of `text`, in lower-case hex: how the
/// reference names chains and tags rules after an attachment.
pub fn sha512_hex(text: &str, n: usize) -> String {
    use sha2::{Digest, Sha512};
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha512::digest(text.as_bytes());
    let mut hex = String::with_capacity(2 * n);
    for b in digest.iter().take(n) {
        hex.push(char::from(DIGITS[usize::from(b >> 4)]));
        hex.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    hex
}
