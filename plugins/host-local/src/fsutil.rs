//! File writes tuned for a store that many processes take turns on.
//!
//! Everything here runs under the store lock, so what matters is the time
//! a call holds it: no renames and no truncations to zero, which on ext4
//! start writeback of the file (its `auto_da_alloc` heuristics).

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{AT_FDCWD, AtFlags, OFlag};
use nix::sys::stat::Mode;

/// Overwrites `path` with `data` in place (created 0600 if missing).
/// Readers may see a torn file if the writer dies midway: use it only for
/// hints whose damage is detected (checksummed) or harmless.
pub fn overwrite(path: &Path, data: &[u8]) -> io::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    f.write_all_at(data, 0)?;
    f.set_len(data.len() as u64)
}

/// A file with its content written but no name yet (O_TMPFILE): it gets one
/// only by [`Unnamed::link_as`], whole or not at all.
#[derive(Debug)]
pub struct Unnamed {
    file: File,
}

impl Unnamed {
    /// `None` where the filesystem has no O_TMPFILE.
    pub fn create(dir: &Path, data: &[u8]) -> io::Result<Option<Unnamed>> {
        let opened = OpenOptions::new()
            .write(true)
            .mode(0o600)
            .custom_flags(OFlag::O_TMPFILE.bits())
            .open(dir);
        let mut file = match opened {
            Ok(f) => f,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(nix::libc::EOPNOTSUPP | nix::libc::EISDIR | nix::libc::EINVAL)
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        file.write_all(data)?;
        Ok(Some(Unnamed { file }))
    }

    /// Gives the file the name `path`; `false` if that name exists.
    /// Through /proc so that no CAP_DAC_READ_SEARCH is needed.
    pub fn link_as(&self, path: &Path) -> io::Result<bool> {
        let fd_path = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        match nix::unistd::linkat(
            AT_FDCWD,
            fd_path.as_str(),
            AT_FDCWD,
            path,
            AtFlags::AT_SYMLINK_FOLLOW,
        ) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::EEXIST) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// Removes `path`; a file already gone is no error.
pub fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Reads the file `name` in the directory `dir` into `buf` (cleared first);
/// `false` if it does not exist. Cheaper than `fs::read` when reading a
/// whole store: no path walk from the root, no size query.
pub fn read_in(dir: &File, name: &OsStr, buf: &mut Vec<u8>) -> io::Result<bool> {
    let fd = match nix::fcntl::openat(dir, name, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
    {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let mut file = File::from(fd);
    buf.clear();
    let mut chunk = [0u8; 512];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
