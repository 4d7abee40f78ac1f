//! A small blocking rtnetlink socket: netlink-packet-route messages over
//! the socket core every netlink protocol here shares (`nlsock`).
//!
//! Plugins run for milliseconds and do one thing after another, so a plain
//! socket with request/response is all they need: no async runtime. A
//! socket stays bound to the namespace it was created in; make one inside a
//! namespace (see [`crate::NetNs::socket`]) and use it from anywhere.
//!
//! Dumps are checked strictly by the kernel (`NETLINK_GET_STRICT_CHK`), so
//! a dump request can name what it wants (a route table, a link) and the
//! kernel sends only that; see [`crate::route::RouteFilter`] and
//! [`Netlink::neighbours`].

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;

use crate::nlsock::NlSocket;
pub use crate::nlsock::{KernelError, NetlinkError};

#[derive(Debug)]
pub struct Netlink {
    sock: NlSocket,
}

fn encode(msg: RouteNetlinkMessage, flags: u16) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    packet.finalize();
    let mut out = vec![0; packet.buffer_len()];
    packet.serialize(&mut out);
    out
}

/// The rtnetlink messages among the replies.
fn decode(replies: Vec<Vec<u8>>) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    let mut out = Vec::with_capacity(replies.len());
    for bytes in replies {
        let packet = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes)
            .map_err(|e| NetlinkError::Decode(e.to_string()))?;
        if let NetlinkPayload::InnerMessage(m) = packet.payload {
            out.push(m);
        }
    }
    Ok(out)
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<Netlink, NetlinkError> {
        Ok(Netlink {
            sock: NlSocket::open(NETLINK_ROUTE, true)?,
        })
    }

    /// Whether the kernel filters dumps by what the request names (Linux
    /// 4.20+). Filtered dumps are checked again on our side either way.
    pub fn filters_dumps(&self) -> bool {
        self.sock.strict()
    }

    /// A request that changes something (or a GET of one object), with its
    /// ACK; `flags` adds e.g. NLM_F_CREATE. Returns the replies, if any.
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        decode(self.sock.request(encode(msg, flags))?)
    }

    /// A dump request; read again when concurrent changes interrupted it.
    /// Under strict checking the kernel refuses header fields and
    /// attributes it cannot filter by.
    pub fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        decode(self.sock.dump(encode(msg, 0))?)
    }

    /// Many requests like [`Netlink::request`], sent together a window at
    /// a time: each one's replies or error, in order. The outer error is a
    /// socket failure; one request failing does not stop the others.
    #[allow(clippy::type_complexity)]
    pub fn request_all(
        &mut self,
        requests: Vec<(RouteNetlinkMessage, u16)>,
    ) -> Result<Vec<Result<Vec<RouteNetlinkMessage>, NetlinkError>>, NetlinkError> {
        let msgs = requests
            .into_iter()
            .map(|(m, flags)| encode(m, flags))
            .collect();
        Ok(self
            .sock
            .request_all(msgs)?
            .into_iter()
            .map(|r| r.and_then(decode))
            .collect())
    }
}
