//! Network namespaces held by file descriptor.
//!
//! Work that must happen inside a namespace runs on a dedicated thread that
//! enters it and then ends, so no thread we do not own ever changes
//! namespace and there is nothing to restore (and no failed restore to miss).

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use nix::sys::statfs::{NSFS_MAGIC, PROC_SUPER_MAGIC, fstatfs};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("failed to open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a network namespace (not an nsfs file)")]
    NotNetns { path: PathBuf },
    #[error("failed to create a network namespace: {source}")]
    Create {
        #[source]
        source: nix::Error,
    },
    #[error("failed to enter network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot open a netlink socket in network namespace {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: crate::NetlinkError,
    },
}

/// An open network namespace; it stays alive while this is held.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Opens the namespace at `path` (e.g. `/var/run/netns/x` or
    /// `/proc/<pid>/ns/net`) and checks that it is one.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| NetnsError::Open {
            path: path.clone(),
            source,
        })?;
        let fs = fstatfs(file.as_fd()).map_err(|e| NetnsError::Open {
            path: path.clone(),
            source: e.into(),
        })?;
        // /proc/<pid>/ns/net reports procfs on older kernels, nsfs on newer.
        let kind = fs.filesystem_type();
        if kind != NSFS_MAGIC && kind != PROC_SUPER_MAGIC {
            return Err(NetnsError::NotNetns { path });
        }
        Ok(NetNs { file, path })
    }

    /// A new, empty network namespace, made on a throwaway thread and held
    /// only by this handle: it goes away with its last handle (and what
    /// is in it). No thread of the caller's changes namespace.
    pub fn create() -> Result<Self, NetnsError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                        .map_err(|source| NetnsError::Create { source })?;
                    Self::current()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Self, NetnsError> {
        Self::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A netlink socket bound to this namespace, usable from any thread.
    pub fn socket(&self) -> Result<crate::Netlink, NetnsError> {
        self.open_socket(crate::Netlink::new)
    }

    /// A [`crate::Monitor`] of this namespace's changes, usable from any
    /// thread.
    pub fn monitor(&self) -> Result<crate::Monitor, NetnsError> {
        self.open_socket(crate::Monitor::new)
    }

    /// A netlink socket of some kind, opened inside this namespace.
    fn open_socket<T: Send>(
        &self,
        open: fn() -> Result<T, crate::NetlinkError>,
    ) -> Result<T, NetnsError> {
        self.run(open)?.map_err(|e| NetnsError::Socket {
            path: self.path.clone(),
            source: e,
        })
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.file)
    }

    /// Runs `f` on a fresh thread inside this namespace and returns its value.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                        NetnsError::Enter {
                            path: self.path.clone(),
                            source,
                        }
                    })?;
                    Ok(f())
                })
                .join()
                // A panic is a bug and ends the process (release binaries
                // abort on it): carried on to the caller, never an error.
                // The caller's own thread never left its namespace.
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn ns_inode() -> u64 {
        std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
    }

    /// A namespace private to this test, and its inode.
    fn private_netns() -> (NetNs, u64) {
        let ns = NetNs::create().expect("this test needs root (CAP_SYS_ADMIN)");
        let inode = ns.run(ns_inode).unwrap();
        (ns, inode)
    }

    #[test]
    fn runs_inside_the_namespace_and_leaves_the_caller_alone() {
        let before = ns_inode();
        let (ns, inode) = private_netns();
        assert_ne!(inode, before);
        assert_eq!(ns.run(ns_inode).unwrap(), inode);
        assert_eq!(ns_inode(), before);
    }

    #[test]
    fn rejects_files_that_are_not_namespaces() {
        let err = NetNs::open("/etc/hostname").unwrap_err();
        assert!(matches!(err, NetnsError::NotNetns { .. }), "{err}");
        let err = NetNs::open("/nonexistent/netns").unwrap_err();
        assert!(matches!(err, NetnsError::Open { .. }), "{err}");
    }

    #[test]
    fn a_panic_inside_reaches_the_caller_whose_namespace_is_untouched() {
        let before = ns_inode();
        let (ns, _) = private_netns();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ns.run(|| -> () { panic!("boom") })
        }));
        assert!(caught.is_err(), "the panic must not become a value");
        assert_eq!(ns_inode(), before);
    }
}
