//! Many route, neighbour and forwarding-entry changes in few round trips,
//! as an agent programs its peers: each change is the same request the
//! single call sends ([`Netlink::replace_route`], [`Netlink::set_fdb`], ...).

use netlink_packet_route::RouteNetlinkMessage;

use crate::neigh::{self, Entry};
use crate::netlink::{Netlink, NetlinkError};
use crate::route::{self, Route};

/// One change of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Adds the route, or replaces one to the same destination.
    ReplaceRoute(Route),
    DelRoute(Route),
    /// A permanent neighbour entry (replacing one for the same address).
    SetNeighbour(Entry),
    DelNeighbour(Entry),
    /// A forwarding entry on a VXLAN device.
    SetFdb(Entry),
    DelFdb(Entry),
}

impl Op {
    fn request(&self) -> (RouteNetlinkMessage, u16) {
        match self {
            Op::ReplaceRoute(r) => route::replace_request(r),
            Op::DelRoute(r) => route::delete_request(r),
            Op::SetNeighbour(e) => neigh::set_neighbour_request(e),
            Op::DelNeighbour(e) => neigh::del_neighbour_request(e),
            Op::SetFdb(e) => neigh::set_fdb_request(e),
            Op::DelFdb(e) => neigh::del_fdb_request(e),
        }
    }
}

impl Netlink {
    /// Every op sent over [`Netlink::request_all`] (a window of requests
    /// per round trip): each one's result, in order. One op failing does
    /// not stop the others; the outer error is a socket failure.
    pub fn apply(&mut self, ops: &[Op]) -> Result<Vec<Result<(), NetlinkError>>, NetlinkError> {
        let requests = ops.iter().map(Op::request).collect();
        Ok(self
            .request_all(requests)?
            .into_iter()
            .map(|r| r.map(drop))
            .collect())
    }
}
