//! The on-disk store, byte-compatible with the reference plugin:
//!
//! ```text
//! <dataDir>/<network>/lock                 flock'd by every call
//! <dataDir>/<network>/<ip>                 "<containerID>\r\n<ifname>"
//! <dataDir>/<network>/last_reserved_ip.<N> the last address taken from set N
//! ```
//!
//! A reservation is written whole into a file without a name (O_TMPFILE)
//! and then linked to its address: the link fails if the address is taken
//! (as O_EXCL would) and never exposes a half-written file. Filesystems
//! without O_TMPFILE get the same from a temporary name and a hard link.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::fsutil::{Unnamed, overwrite};
use crate::index::Index;
use crate::owner::Owner;

const LOCK_FILE: &str = "lock";
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// Our temporary file where O_TMPFILE is missing; only ever present while
/// we hold the lock, or after a crash (then the next call removes it).
const RESERVING_FILE: &str = ".reserving";

#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    index: Index,
    /// A reservation file written for this owner, not linked yet.
    pending: Option<(Owner, Pending)>,
    // Held for the store's lifetime: the flock is released when it closes.
    _lock: File,
}

impl Store {
    /// Opens and locks the store of network `name`. With `create` false a
    /// store that does not exist yet is `None` (nothing to release or find).
    pub fn open(data_dir: &Path, name: &str, create: bool) -> io::Result<Option<Store>> {
        let dir = data_dir.join(name);
        if create {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&dir)?;
        } else if !dir.is_dir() {
            return Ok(None);
        }
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(LOCK_FILE))?;
        lock.lock()?;
        remove_if_present(&dir.join(RESERVING_FILE))?;
        let index = Index::open(data_dir, name, &dir)?;
        Ok(Some(Store {
            dir,
            index,
            pending: None,
            _lock: lock,
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// Takes `ip` for `owner`; `false` when it is already taken.
    pub fn reserve(&mut self, ip: IpAddr, owner: &Owner) -> io::Result<bool> {
        // The prepared file is kept across taken candidates and consumed by
        // a successful link, so no two reservations share an inode.
        let pending = match self.pending.take() {
            Some((o, p)) if &o == owner => p,
            other => {
                if let Some((_, p)) = other {
                    p.discard()?;
                }
                Pending::prepare(&self.dir, owner)?
            }
        };
        let linked = pending.link_as(&self.ip_path(ip))?;
        if linked {
            pending.discard()?;
            self.index.insert(ip, owner);
        } else {
            self.pending = Some((owner.clone(), pending));
        }
        Ok(linked)
    }

    /// Frees `ip`, held by `owner`; an address already free is no error.
    pub fn release(&mut self, ip: IpAddr, owner: &Owner) -> io::Result<()> {
        remove_if_present(&self.ip_path(ip))?;
        self.index.remove(ip, owner);
        Ok(())
    }

    /// Who holds `ip`, read from its file.
    pub fn owner_of(&self, ip: IpAddr) -> io::Result<Option<Owner>> {
        match fs::read_to_string(self.ip_path(ip)) {
            Ok(text) => Ok(Some(Owner::parse(&text))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every reservation in the store, read from disk.
    pub fn scan(&self) -> io::Result<Vec<(IpAddr, Owner)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            match fs::read_to_string(entry.path()) {
                Ok(text) => out.push((ip, Owner::parse(&text))),
                // Released by someone else since the listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The addresses held by the attachment in the exact layout
    /// (`ifname` Some) or in the old container-ID-only one (`None`),
    /// through the index, verified against the files.
    pub fn held_by(&mut self, container_id: &str, ifname: Option<&str>) -> io::Result<Vec<IpAddr>> {
        if !self.index.is_valid() {
            self.rebuild_index()?;
        }
        let indexed = match self.index.lookup(container_id, ifname) {
            Ok(ips) => ips,
            // A damaged bucket: read the store again.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                self.rebuild_index()?;
                self.index.lookup(container_id, ifname)?
            }
            Err(e) => return Err(e),
        };
        let wanted = Owner {
            container_id: container_id.to_string(),
            ifname: ifname.map(str::to_string),
        };
        let mut held = Vec::new();
        for ip in indexed {
            if self.owner_of(ip)?.as_ref() == Some(&wanted) {
                held.push(ip);
            } else {
                // Released or re-taken behind our back: drop the hint.
                self.index.remove(ip, &wanted);
            }
        }
        Ok(held)
    }

    fn rebuild_index(&mut self) -> io::Result<()> {
        let all = self.scan()?;
        self.index.rebuild(all.iter().map(|(ip, o)| (*ip, o)));
        Ok(())
    }

    /// Replaces the index with a full scan's view (after GC).
    pub fn reindex(&mut self, entries: &[(IpAddr, Owner)]) {
        self.index.rebuild(entries.iter().map(|(ip, o)| (*ip, o)));
    }

    pub fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        let text =
            fs::read_to_string(self.dir.join(format!("{LAST_RESERVED_PREFIX}{set}"))).ok()?;
        text.trim().parse().ok()
    }

    pub fn set_last_reserved(&mut self, set: usize, ip: IpAddr) -> io::Result<()> {
        // A hint for round-robin only (the reference starts over when it is
        // unreadable), so an in-place write is enough.
        let path = self.dir.join(format!("{LAST_RESERVED_PREFIX}{set}"));
        overwrite(&path, ip.to_string().as_bytes())
    }

    /// Ends the call: removes the temporary file, saves the index with a
    /// stamp of the store as this call leaves it; the lock goes on drop.
    pub fn commit(mut self) -> io::Result<()> {
        if let Some((_, p)) = self.pending.take() {
            p.discard()?;
        }
        self.index.save(&self.dir)
    }
}

/// Checks that the store of network `name` can be created and opened for
/// writing, without changing it (STATUS is called often, and a change would
/// cost the next call an index rebuild).
pub fn check_usable(data_dir: &Path, name: &str) -> io::Result<()> {
    let dir = data_dir.join(name);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join(LOCK_FILE))
        .map(drop)
}

/// A reservation's content, ready to be linked to an address.
#[derive(Debug)]
enum Pending {
    Unnamed(Unnamed),
    /// The fallback: a named temporary file in the store.
    Named(PathBuf),
}

impl Pending {
    fn prepare(dir: &Path, owner: &Owner) -> io::Result<Pending> {
        let content = owner.file_content();
        if let Some(u) = Unnamed::create(dir, content.as_bytes())? {
            return Ok(Pending::Unnamed(u));
        }
        let path = dir.join(RESERVING_FILE);
        overwrite(&path, content.as_bytes())?;
        Ok(Pending::Named(path))
    }

    fn link_as(&self, target: &Path) -> io::Result<bool> {
        match self {
            Pending::Unnamed(u) => u.link_as(target),
            Pending::Named(path) => match fs::hard_link(path, target) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            },
        }
    }

    fn discard(self) -> io::Result<()> {
        match self {
            Pending::Unnamed(_) => Ok(()),
            Pending::Named(path) => remove_if_present(&path),
        }
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
