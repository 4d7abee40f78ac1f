//! What can go wrong talking netlink, whatever the protocol.

use std::fmt;
use std::io;

use nix::errno::Errno;
use nix::libc;

/// The kernel refused a request: its errno, and its extended ack when it
/// gave one (the reason in words, and where in the request it looked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError {
    /// The positive errno.
    pub errno: i32,
    /// The extended ack's text (`NLMSGERR_ATTR_MSG`), e.g. "Nexthop has
    /// invalid gateway".
    pub message: Option<String>,
    /// The offset in the request, from the start of its netlink header, of
    /// the attribute the kernel objected to (`NLMSGERR_ATTR_OFFS`).
    pub offset: Option<u32>,
}

impl KernelError {
    pub fn new(errno: i32) -> KernelError {
        KernelError {
            errno,
            message: None,
            offset: None,
        }
    }
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            // "Network is unreachable (kernel: Nexthop has invalid gateway)"
            Some(m) => write!(f, "{} (kernel: {m})", Errno::from_raw(self.errno).desc()),
            None => write!(f, "{}", io::Error::from_raw_os_error(self.errno)),
        }
    }
}

impl std::error::Error for KernelError {}

/// A netlink error: the kernel refused the request, the socket failed, or
/// the answers could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("{0}")]
    Kernel(KernelError),
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("netlink: cannot decode the kernel's answer: {0}")]
    Decode(String),
    /// Every attempt at a dump was interrupted by concurrent changes
    /// (`NLM_F_DUMP_INTR`), so no consistent snapshot was read.
    #[error(
        "netlink: the dump was interrupted by concurrent changes {attempts} times in a row; try again"
    )]
    Interrupted { attempts: u32 },
    /// The kernel dropped answers because the socket's receive buffer was
    /// full (`ENOBUFS`): `lost` requests never got theirs, so whether they
    /// were applied is unknown.
    #[error(
        "netlink: the kernel's answers overflowed the socket's receive buffer (ENOBUFS); {lost} request(s) got no answer, so whether they were applied is unknown"
    )]
    Overrun { lost: usize },
}

impl NetlinkError {
    /// The kernel's errno, if the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel(e) => Some(e.errno),
            _ => None,
        }
    }

    /// The kernel's extended-ack text, if it refused with one.
    pub fn kernel_message(&self) -> Option<&str> {
        match self {
            NetlinkError::Kernel(e) => e.message.as_deref(),
            _ => None,
        }
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV | libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL)
        )
    }

    /// A dump kept being interrupted by changes: reading again may work.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, NetlinkError::Interrupted { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_errors_read_like_the_errno_with_the_kernels_reason() {
        let plain = NetlinkError::Kernel(KernelError::new(libc::EEXIST));
        assert_eq!(plain.to_string(), "File exists (os error 17)");
        assert!(plain.is_exists());
        assert_eq!(plain.kernel_message(), None);
        let with = NetlinkError::Kernel(KernelError {
            errno: libc::ENETUNREACH,
            message: Some("Nexthop has invalid gateway".into()),
            offset: None,
        });
        assert_eq!(
            with.to_string(),
            "Network is unreachable (kernel: Nexthop has invalid gateway)"
        );
        assert_eq!(with.errno(), Some(libc::ENETUNREACH));
        assert_eq!(with.kernel_message(), Some("Nexthop has invalid gateway"));
        assert!(NetlinkError::Kernel(KernelError::new(libc::ENODEV)).is_not_found());
        assert!(NetlinkError::Interrupted { attempts: 3 }.is_interrupted());
        assert_eq!(NetlinkError::Overrun { lost: 1 }.errno(), None);
    }
}
