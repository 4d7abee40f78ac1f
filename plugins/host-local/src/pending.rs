//! A reservation's file, written whole before it gets its address's name.
//!
//! Written into a file without a name (O_TMPFILE) and then linked to its
//! address: the link fails if the address is taken (as O_EXCL would) and
//! never exposes a half-written file. Filesystems without O_TMPFILE get
//! the same from a temporary name and a hard link.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::{Unnamed, overwrite, remove_if_present};
use crate::owner::Owner;

/// Our temporary file where O_TMPFILE is missing; only ever present while
/// we hold the lock, or after a crash (then the next call removes it).
pub const RESERVING_FILE: &str = ".reserving";

/// A reservation's content, ready to be linked to an address.
#[derive(Debug)]
pub enum Pending {
    Unnamed(Unnamed),
    /// The fallback: a named temporary file in the store.
    Named(PathBuf),
}

impl Pending {
    pub fn prepare(dir: &Path, owner: &Owner) -> io::Result<Pending> {
        let content = owner.file_content();
        if let Some(u) = Unnamed::create(dir, content.as_bytes())? {
            return Ok(Pending::Unnamed(u));
        }
        let path = dir.join(RESERVING_FILE);
        overwrite(&path, content.as_bytes())?;
        Ok(Pending::Named(path))
    }

    pub fn link_as(&self, target: &Path) -> io::Result<bool> {
        match self {
            Pending::Unnamed(u) => u.link_as(target),
            Pending::Named(path) => match fs::hard_link(path, target) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            },
        }
    }

    pub fn discard(self) -> io::Result<()> {
        match self {
            Pending::Unnamed(_) => Ok(()),
            Pending::Named(path) => remove_if_present(&path),
        }
    }
}
