//! nf_tables over netlink: just enough to keep a few tables, chains and
//! rules of our own without the `nft` binary.
//!
//! Changes go in a [`Batch`], which the kernel applies as one transaction:
//! all of it or nothing. [`Nft::rules`], [`Nft::chains`] (or
//! [`Nft::chain_list`], with how each hooks in) and [`Nft::has_table`]
//! read what is there, and [`Exprs::same_rule`] compares a dumped rule
//! with one we would write. Like [`crate::Netlink`], a socket is bound to the network
//! namespace it was made in.
//!
//! Cost worth knowing: making objects is cheap, but a transaction that
//! deletes something (a rule, a flush, an update of an existing chain)
//! leaves work that closing the socket waits for (an RCU grace period,
//! 5-25 ms). Read first and send only what is missing.

mod batch;
pub mod expr;
mod socket;
mod wire;

use std::io;

use nix::libc;

use crate::nlsock::NetlinkError;

pub use batch::{BaseChain, Batch};
pub use expr::{Expr, Exprs, HeaderMatch, LinkMatch, MetaMatch, NAT_FULLY_RANDOM, Step, Verdict};
pub use socket::{Chain, Nft, Rule};

/// An nf_tables address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `inet`: IPv4 and IPv6 in one table.
    Inet,
    Ip,
    Ip6,
    /// `bridge`: frames crossing a Linux bridge.
    Bridge,
}

impl Family {
    fn proto(self) -> u8 {
        let proto = match self {
            Family::Inet => libc::NFPROTO_INET,
            Family::Ip => libc::NFPROTO_IPV4,
            Family::Ip6 => libc::NFPROTO_IPV6,
            Family::Bridge => libc::NFPROTO_BRIDGE,
        };
        proto as u8
    }

    fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Bridge => "bridge",
        }
    }
}

/// A table: its family and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table<'a> {
    pub family: Family,
    pub name: &'a str,
}

impl std::fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "table {} {}", self.family.name(), self.name)
    }
}

/// An nf_tables failure: the kernel refused a message, or the socket failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nf_tables: {what}: {}{}", io::Error::from_raw_os_error(*errno), reason(extack))]
    Kernel {
        /// What was asked, e.g. `add rule inet t c`.
        what: String,
        /// The positive errno.
        errno: i32,
        /// The kernel's extended-ack message, if it gave one.
        extack: Option<String>,
    },
    #[error("nf_tables netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("nf_tables: cannot decode the kernel's answer: {0}")]
    Decode(String),
    /// A dump was interrupted by concurrent changes at every attempt.
    #[error(
        "nf_tables: {what}: interrupted by concurrent changes {attempts} times in a row; try again"
    )]
    Interrupted { what: String, attempts: u32 },
    /// The kernel dropped answers (`ENOBUFS`) and none of those that
    /// arrived tells how it went.
    #[error(
        "nf_tables: {what}: the kernel's answers overflowed the socket's receive buffer (ENOBUFS), so whether it was applied is unknown"
    )]
    Overrun { what: String },
}

fn reason(extack: &Option<String>) -> String {
    extack
        .as_ref()
        .map(|m| format!(" ({m})"))
        .unwrap_or_default()
}

impl NftError {
    /// A socket-core error, for the request described by `what`.
    fn from_netlink(what: &str, e: NetlinkError) -> NftError {
        match e {
            NetlinkError::Kernel(k) => NftError::Kernel {
                what: what.to_string(),
                errno: k.errno,
                extack: k.message,
            },
            NetlinkError::Socket(e) => NftError::Socket(e),
            NetlinkError::Decode(d) => NftError::Decode(d),
            NetlinkError::Interrupted { attempts } => NftError::Interrupted {
                what: what.to_string(),
                attempts,
            },
            NetlinkError::Overrun { .. } => NftError::Overrun {
                what: what.to_string(),
            },
        }
    }

    /// The kernel's errno; `EINTR` for a dump that kept being interrupted
    /// and `ENOBUFS` for lost answers, as the socket reports those.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Kernel { errno, .. } => Some(*errno),
            NftError::Socket(e) => e.raw_os_error(),
            NftError::Decode(_) => None,
            NftError::Interrupted { .. } => Some(libc::EINTR),
            NftError::Overrun { .. } => Some(libc::ENOBUFS),
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(libc::ENOENT)
    }

    /// The ruleset changed under us: the batch's generation was stale
    /// (`ERESTART`) or a dump was interrupted (`EINTR`). Read again and retry.
    pub fn is_conflict(&self) -> bool {
        matches!(self.errno(), Some(libc::ERESTART | libc::EINTR))
    }
}

/// Numbers from the kernel's UAPI headers <linux/netfilter/nf_tables.h> and
/// <linux/netfilter/nfnetlink.h> that libc does not carry (attribute types),
/// and typed copies of those it does.
mod sys {
    use nix::libc;

    pub const NFNL_SUBSYS_NFTABLES: u16 = libc::NFNL_SUBSYS_NFTABLES as u16;
    pub const NFNL_MSG_BATCH_BEGIN: u16 = libc::NFNL_MSG_BATCH_BEGIN as u16;
    pub const NFNL_MSG_BATCH_END: u16 = libc::NFNL_MSG_BATCH_END as u16;
    pub const NFNL_BATCH_GENID: u16 = 1;
    pub const NFPROTO_UNSPEC: u8 = libc::NFPROTO_UNSPEC as u8;

    pub const NFT_MSG_NEWTABLE: u8 = libc::NFT_MSG_NEWTABLE as u8;
    pub const NFT_MSG_GETTABLE: u8 = libc::NFT_MSG_GETTABLE as u8;
    pub const NFT_MSG_DELTABLE: u8 = libc::NFT_MSG_DELTABLE as u8;
    pub const NFT_MSG_NEWCHAIN: u8 = libc::NFT_MSG_NEWCHAIN as u8;
    pub const NFT_MSG_DELCHAIN: u8 = libc::NFT_MSG_DELCHAIN as u8;
    pub const NFT_MSG_GETCHAIN: u8 = libc::NFT_MSG_GETCHAIN as u8;
    pub const NFT_MSG_NEWRULE: u8 = libc::NFT_MSG_NEWRULE as u8;
    pub const NFT_MSG_GETRULE: u8 = libc::NFT_MSG_GETRULE as u8;
    pub const NFT_MSG_DELRULE: u8 = libc::NFT_MSG_DELRULE as u8;
    pub const NFT_MSG_GETGEN: u8 = libc::NFT_MSG_GETGEN as u8;

    pub const NFTA_TABLE_NAME: u16 = 1;
    pub const NFTA_TABLE_USERDATA: u16 = 6;
    pub const NFTA_CHAIN_TABLE: u16 = 1;
    pub const NFTA_CHAIN_NAME: u16 = 3;
    pub const NFTA_CHAIN_HOOK: u16 = 4;
    pub const NFTA_CHAIN_POLICY: u16 = 5;
    pub const NFTA_CHAIN_TYPE: u16 = 7;
    pub const NFTA_CHAIN_USERDATA: u16 = 12;
    pub const NFTA_HOOK_HOOKNUM: u16 = 1;
    pub const NFTA_HOOK_PRIORITY: u16 = 2;
    pub const NFTA_RULE_TABLE: u16 = 1;
    pub const NFTA_RULE_CHAIN: u16 = 2;
    pub const NFTA_RULE_HANDLE: u16 = 3;
    pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
    pub const NFTA_RULE_USERDATA: u16 = 7;
    pub const NFTA_GEN_ID: u16 = 1;
    pub const NFTA_LIST_ELEM: u16 = 1;
    pub const NFTA_EXPR_NAME: u16 = 1;
    pub const NFTA_EXPR_DATA: u16 = 2;
    pub const NFTA_DATA_VALUE: u16 = 1;
    pub const NFTA_DATA_VERDICT: u16 = 2;
    pub const NFTA_VERDICT_CODE: u16 = 1;
    pub const NFTA_VERDICT_CHAIN: u16 = 2;
    pub const NFTA_META_DREG: u16 = 1;
    pub const NFTA_META_KEY: u16 = 2;
    pub const NFTA_PAYLOAD_DREG: u16 = 1;
    pub const NFTA_PAYLOAD_BASE: u16 = 2;
    pub const NFTA_PAYLOAD_OFFSET: u16 = 3;
    pub const NFTA_PAYLOAD_LEN: u16 = 4;
    pub const NFTA_BITWISE_SREG: u16 = 1;
    pub const NFTA_BITWISE_DREG: u16 = 2;
    pub const NFTA_BITWISE_LEN: u16 = 3;
    pub const NFTA_BITWISE_MASK: u16 = 4;
    pub const NFTA_BITWISE_XOR: u16 = 5;
    pub const NFTA_BITWISE_OP: u16 = 6;
    pub const NFTA_CMP_SREG: u16 = 1;
    pub const NFTA_CMP_OP: u16 = 2;
    pub const NFTA_CMP_DATA: u16 = 3;
    pub const NFTA_IMMEDIATE_DREG: u16 = 1;
    pub const NFTA_IMMEDIATE_DATA: u16 = 2;
    pub const NFTA_MASQ_FLAGS: u16 = 1;
    pub const NFTA_MASQ_REG_PROTO_MIN: u16 = 2;
    pub const NFTA_MASQ_REG_PROTO_MAX: u16 = 3;

    pub const NFT_REG_VERDICT: u32 = libc::NFT_REG_VERDICT as u32;
    pub const NFT_REG_1: u32 = libc::NFT_REG_1 as u32;
    pub const NFT_META_NFPROTO: u32 = libc::NFT_META_NFPROTO as u32;
    pub const NFT_META_MARK: u32 = libc::NFT_META_MARK as u32;
    pub const NFT_META_IIFNAME: u32 = libc::NFT_META_IIFNAME as u32;
    pub const NFT_PAYLOAD_LL_HEADER: u32 = libc::NFT_PAYLOAD_LL_HEADER as u32;
    pub const NFT_JUMP: i32 = libc::NFT_JUMP;
    /// `IFNAMSIZ`: interface names are compared on this many bytes.
    pub const IFNAMSIZ: usize = 16;
    /// `NFT_BITWISE_BOOL`: `(reg & mask) ^ xor`, the only kind older
    /// kernels have (they send no NFTA_BITWISE_OP).
    pub const NFT_BITWISE_BOOL: u32 = 0;
    pub const NFT_PAYLOAD_NETWORK_HEADER: u32 = libc::NFT_PAYLOAD_NETWORK_HEADER as u32;
    pub const NFT_CMP_EQ: u32 = libc::NFT_CMP_EQ as u32;
    pub const NFT_CMP_NEQ: u32 = libc::NFT_CMP_NEQ as u32;
    pub const NFT_GOTO: i32 = libc::NFT_GOTO;
    pub const NFT_RETURN: i32 = libc::NFT_RETURN;
    pub const NF_ACCEPT: u32 = libc::NF_ACCEPT as u32;
    /// The verdict codes as an `immediate` carries them.
    pub const NF_ACCEPT_CODE: i32 = libc::NF_ACCEPT;
    pub const NF_DROP_CODE: i32 = libc::NF_DROP;

    /// libnftnl's user-data TLV type for a comment (tables, chains, rules).
    pub const UDATA_COMMENT: u8 = 0;
    /// nft refuses longer comments (NFTNL_UDATA_COMMENT_MAXLEN).
    pub const COMMENT_MAX: usize = 128;
}

/// Runs `f` again, up to `attempts` times in all with a short growing pause,
/// while the ruleset changed under it (a stale generation, an interrupted
/// dump, or a rule or chain gone between reading and writing).
pub fn retry<T>(attempts: u32, mut f: impl FnMut() -> Result<T, NftError>) -> Result<T, NftError> {
    let mut attempt = 0;
    loop {
        match f() {
            Err(e) if attempt + 1 < attempts && (e.is_conflict() || e.is_not_found()) => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(u64::from(attempt)));
            }
            other => return other,
        }
    }
}
