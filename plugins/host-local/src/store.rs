//! The on-disk store, byte-compatible with the reference plugin:
//!
//! ```text
//! <dataDir>/<network>/lock                 flock'd by every call
//! <dataDir>/<network>/<ip>                 "<containerID>\r\n<ifname>"
//! <dataDir>/<network>/last_reserved_ip.<N> the last address taken from set N
//! ```
//!
//! Finding an attachment's addresses must never miss one, whoever wrote
//! the store (the reference plugin, a person). A small store is read whole,
//! once per call, as the reference does: a node's /24 is a few hundred
//! files. A large one is looked up through the index (see `index`), which
//! is trusted only when its stamp proves that the directory has not changed
//! since the index was saved (see `stamp`), and is rebuilt from a full read
//! otherwise.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::fsutil::{overwrite, read_in, remove_if_present};
use crate::index::{self, Index};
use crate::owner::Owner;
use crate::pending::{Pending, RESERVING_FILE};
use crate::stamp::{self, DirState};

const LOCK_FILE: &str = "lock";
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// Directories up to this size are read whole rather than looked up through
/// the index: up to ~500 address files on ext4, ~800 on tmpfs or btrfs (a
/// full IPv4 /24 is 254), at ~2 µs per file. Only a matter of cost: both
/// ways find everything. (ext4 never shrinks a directory, so a store once
/// large stays on the index.)
const SMALL_DIR_BYTES: u64 = 16 * 1024;

#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    lookup: Lookup,
    /// A reservation file written for this owner, not linked yet.
    pending: Option<(Owner, Pending)>,
    // Held for the store's lifetime: the flock is released when it closes.
    _lock: File,
}

/// How this call finds an attachment's addresses.
#[derive(Debug)]
enum Lookup {
    /// A small store: read whole at the first lookup, then kept in step
    /// with this call's own changes (the lock keeps other writers out).
    Scan(Option<Vec<(IpAddr, Owner)>>),
    /// A large store, through its index; `proven` is the directory's state
    /// that the stamp vouched for when the call began.
    Indexed {
        index: Index,
        proven: Option<DirState>,
    },
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
        // Read under the lock, after our own clean-up: the state this
        // call's lookups start from.
        let meta = fs::metadata(&dir)?;
        let lookup = if meta.size() <= SMALL_DIR_BYTES {
            Lookup::Scan(None)
        } else {
            let index_dir = index::dir_of(data_dir, name);
            let state = DirState::of(&meta);
            let proven = stamp::read(&index_dir).filter(|s| *s == state);
            Lookup::Indexed {
                index: Index::open(index_dir, proven.is_some()),
                proven,
            }
        };
        Ok(Some(Store {
            dir,
            lookup,
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
            match &mut self.lookup {
                Lookup::Scan(Some(all)) => all.push((ip, owner.clone())),
                // The first lookup will read it from disk.
                Lookup::Scan(None) => {}
                Lookup::Indexed { index, .. } => index.insert(ip, owner),
            }
        } else {
            self.pending = Some((owner.clone(), pending));
        }
        Ok(linked)
    }

    /// Frees `ip`, held by `owner`; an address already free is no error.
    pub fn release(&mut self, ip: IpAddr, owner: &Owner) -> io::Result<()> {
        remove_if_present(&self.ip_path(ip))?;
        match &mut self.lookup {
            Lookup::Scan(Some(all)) => all.retain(|(held, _)| *held != ip),
            Lookup::Scan(None) => {}
            Lookup::Indexed { index, .. } => index.remove(ip, owner),
        }
        Ok(())
    }

    /// Every reservation in the store, read from disk.
    pub fn scan(&self) -> io::Result<Vec<(IpAddr, Owner)>> {
        scan(&self.dir)
    }

    /// The addresses held by the attachment in the exact layout
    /// (`ifname` Some) or in the old container-ID-only one (`None`).
    pub fn held_by(&mut self, container_id: &str, ifname: Option<&str>) -> io::Result<Vec<IpAddr>> {
        let wanted = Owner {
            container_id: container_id.to_string(),
            ifname: ifname.map(str::to_string),
        };
        match &mut self.lookup {
            Lookup::Scan(cache) => {
                if cache.is_none() {
                    *cache = Some(scan(&self.dir)?);
                }
                let all = cache.as_deref().unwrap_or_default();
                Ok(all
                    .iter()
                    .filter(|(_, o)| *o == wanted)
                    .map(|(ip, _)| *ip)
                    .collect())
            }
            Lookup::Indexed { index, .. } => indexed_held_by(&self.dir, index, &wanted),
        }
    }

    /// Replaces what lookups see with a full scan's view (after GC).
    pub fn reindex(&mut self, entries: &[(IpAddr, Owner)]) {
        match &mut self.lookup {
            Lookup::Scan(cache) => *cache = Some(entries.to_vec()),
            Lookup::Indexed { index, .. } => index.rebuild(entries.iter().map(|(ip, o)| (*ip, o))),
        }
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

    /// Ends the call: removes the temporary file and saves the index with a
    /// stamp of the store as this call leaves it; the lock goes on drop.
    pub fn commit(mut self) -> io::Result<()> {
        if let Some((_, p)) = self.pending.take() {
            p.discard()?;
        }
        let Lookup::Indexed { index, proven } = &mut self.lookup else {
            return Ok(());
        };
        if !index.save()? {
            // Never leave a stamp vouching for an index known incomplete.
            return stamp::remove(index.dir());
        }
        if proven.as_ref() == Some(&DirState::of(&fs::metadata(&self.dir)?)) {
            return Ok(()); // unchanged: the stamp that proved it still holds
        }
        match stamp::seal(&self.dir)? {
            Some(state) => stamp::write(index.dir(), &state),
            None => stamp::remove(index.dir()),
        }
    }
}

/// Who holds `ip`, read from its file.
fn owner_of(dir: &Path, ip: IpAddr) -> io::Result<Option<Owner>> {
    match fs::read(dir.join(ip.to_string())) {
        Ok(bytes) => Ok(Some(Owner::parse(&String::from_utf8_lossy(&bytes)))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every reservation in the store at `dir`, read from disk.
fn scan(dir: &Path) -> io::Result<Vec<(IpAddr, Owner)>> {
    let handle = File::open(dir)?;
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(ip) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
            continue;
        };
        // Gone since the listing: released by someone else.
        if read_in(&handle, &name, &mut buf)? {
            // Junk bytes make an owner no attachment matches, not an error.
            out.push((ip, Owner::parse(&String::from_utf8_lossy(&buf))));
        }
    }
    Ok(out)
}

/// `wanted`'s addresses through the index (rebuilt first unless proven
/// current), each verified against its file.
fn indexed_held_by(dir: &Path, index: &mut Index, wanted: &Owner) -> io::Result<Vec<IpAddr>> {
    let rebuild = |index: &mut Index| -> io::Result<()> {
        let all = scan(dir)?;
        index.rebuild(all.iter().map(|(ip, o)| (*ip, o)));
        Ok(())
    };
    if !index.is_valid() {
        rebuild(index)?;
    }
    let (id, ifname) = (wanted.container_id.as_str(), wanted.ifname.as_deref());
    let indexed = match index.lookup(id, ifname) {
        Ok(ips) => ips,
        // A damaged bucket: read the store again.
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            rebuild(index)?;
            index.lookup(id, ifname)?
        }
        Err(e) => return Err(e),
    };
    let mut held = Vec::new();
    for ip in indexed {
        if owner_of(dir, ip)?.as_ref() == Some(wanted) {
            held.push(ip);
        } else {
            // Released or re-taken: drop the hint.
            index.remove(ip, wanted);
        }
    }
    Ok(held)
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
