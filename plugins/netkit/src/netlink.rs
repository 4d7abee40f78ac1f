//! A small blocking rtnetlink socket.
//!
//! Plugins run for milliseconds and do one thing after another, so a plain
//! socket with request/response is all they need: no async runtime. A
//! socket stays bound to the namespace it was created in; make one inside a
//! namespace (see [`crate::NetNs::socket`]) and use it from anywhere.

use std::io;
use std::num::NonZeroI32;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// A netlink error: the kernel's errno for a request, or a socket failure.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("{0}")]
    Kernel(io::Error),
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("netlink: cannot decode the kernel's answer: {0}")]
    Decode(String),
}

impl NetlinkError {
    /// The kernel's errno, if the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel(e) => e.raw_os_error(),
            _ => None,
        }
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(nix::libc::EEXIST)
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(
                nix::libc::ENODEV | nix::libc::ENOENT | nix::libc::ESRCH | nix::libc::EADDRNOTAVAIL
            )
        )
    }
}

#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<Netlink, NetlinkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        // Extended acks carry the kernel's reason along with the errno.
        let _ = socket.set_ext_ack(true);
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0).map_err(NetlinkError::Socket)?;
        Ok(self.seq)
    }

    /// Reads answers to request `seq` until its ACK (or, for a dump, its
    /// DONE), returning the messages.
    fn collect(&mut self, seq: u32) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let mut out = Vec::new();
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(NetlinkError::Socket)?;
            let mut offset = 0;
            while offset < n {
                let packet =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                        .map_err(|e| NetlinkError::Decode(e.to_string()))?;
                let len = packet.header.length as usize;
                if len == 0 {
                    return Err(NetlinkError::Decode("zero-length message".into()));
                }
                offset += len;
                if packet.header.sequence_number != seq {
                    continue; // a late answer to an earlier request
                }
                match packet.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(kernel_error(code)),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// A request that changes something; `flags` adds e.g. NLM_F_CREATE.
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        self.collect(seq)
    }

    /// A dump request.
    pub fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let seq = self.send(msg, NLM_F_DUMP)?;
        self.collect(seq)
    }
}

fn kernel_error(code: NonZeroI32) -> NetlinkError {
    NetlinkError::Kernel(io::Error::from_raw_os_error(-code.get()))
}
