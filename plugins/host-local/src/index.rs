//! An index from attachment to addresses, so that the duplicate check on
//! ADD and the lookups of DEL and CHECK in a large store do not read every
//! reservation file (the reference plugin does, which costs ~0.5 s per call
//! at 60,000 reservations).
//!
//! It lives beside the store, in `<dataDir>/.cni-rs-index/<network>/` (a
//! network name cannot start with a dot, so this never collides, and the
//! reference plugin never looks there). Entries are spread over 256 bucket
//! files by a hash of the attachment, so a call reads and rewrites one small
//! file.
//!
//! Whether the index may be trusted is decided by the store from the stamp
//! (see `stamp`); entries found are still verified against the address
//! files before use.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::fsutil::overwrite;
use crate::owner::Owner;

pub const INDEX_DIR: &str = ".cni-rs-index";
const BUCKETS: u64 = 256;

/// One indexed reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    ip: IpAddr,
    container_id: String,
    /// Empty for the old container-ID-only files.
    ifname: String,
}

impl Entry {
    fn indexable(owner: &Owner) -> bool {
        let clean = |s: &str| !s.contains(['\t', '\n', '\r']);
        clean(&owner.container_id) && owner.ifname.as_deref().is_none_or(clean)
    }
}

#[derive(Debug)]
pub struct Index {
    dir: PathBuf,
    valid: bool,
    /// Buckets read (or rebuilt) so far.
    buckets: BTreeMap<u8, Vec<Entry>>,
    dirty: BTreeSet<u8>,
}

/// FNV-1a: stable across runs and versions, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn bucket_of(container_id: &str, ifname: &str) -> u8 {
    let key = format!("{container_id}\0{ifname}");
    (fnv1a(key.as_bytes()) % BUCKETS) as u8
}

impl Index {
    /// The index in `dir` (see [`dir_of`]); `current` says whether its
    /// stamp proved it up to date (if not, the first lookup rebuilds it).
    pub fn open(dir: PathBuf, current: bool) -> Index {
        Index {
            dir,
            valid: current,
            buckets: BTreeMap::new(),
            dirty: BTreeSet::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_valid(&self) -> bool {
        self.valid
    }

    /// Replaces the whole index with `entries` (a full scan of the store).
    pub fn rebuild<'a>(&mut self, entries: impl IntoIterator<Item = (IpAddr, &'a Owner)>) {
        self.buckets = (0..BUCKETS).map(|b| (b as u8, Vec::new())).collect();
        self.dirty = (0..BUCKETS).map(|b| b as u8).collect();
        for (ip, owner) in entries {
            self.insert(ip, owner);
        }
        self.valid = true;
    }

    fn bucket(&mut self, b: u8) -> io::Result<&mut Vec<Entry>> {
        if !self.buckets.contains_key(&b) {
            let entries = read_bucket(&self.dir.join(format!("b{b:02x}")))?;
            self.buckets.insert(b, entries);
        }
        Ok(self.buckets.entry(b).or_default())
    }

    /// Addresses indexed for the exact attachment (`ifname` = `None` for the
    /// old container-ID-only files). Only meaningful while valid.
    pub fn lookup(&mut self, container_id: &str, ifname: Option<&str>) -> io::Result<Vec<IpAddr>> {
        let ifname = ifname.unwrap_or("");
        let bucket = self.bucket(bucket_of(container_id, ifname))?;
        Ok(bucket
            .iter()
            .filter(|e| e.container_id == container_id && e.ifname == ifname)
            .map(|e| e.ip)
            .collect())
    }

    pub fn insert(&mut self, ip: IpAddr, owner: &Owner) {
        if !Entry::indexable(owner) {
            return;
        }
        let ifname = owner.ifname.clone().unwrap_or_default();
        let b = bucket_of(&owner.container_id, &ifname);
        // A bucket that cannot be read leaves the index invalid; the next
        // call rebuilds it.
        match self.bucket(b) {
            Ok(bucket) => {
                bucket.retain(|e| e.ip != ip);
                bucket.push(Entry {
                    ip,
                    container_id: owner.container_id.clone(),
                    ifname,
                });
                self.dirty.insert(b);
            }
            Err(_) => self.valid = false,
        }
    }

    pub fn remove(&mut self, ip: IpAddr, owner: &Owner) {
        let ifname = owner.ifname.clone().unwrap_or_default();
        let b = bucket_of(&owner.container_id, &ifname);
        match self.bucket(b) {
            Ok(bucket) => {
                bucket.retain(|e| e.ip != ip);
                self.dirty.insert(b);
            }
            Err(_) => self.valid = false,
        }
    }

    /// Writes the changed buckets; `false`, writing nothing, while the index
    /// is not a complete picture of the store (then it must not be stamped).
    pub fn save(&mut self) -> io::Result<bool> {
        if !self.valid {
            return Ok(false);
        }
        fs::create_dir_all(&self.dir)?;
        for b in std::mem::take(&mut self.dirty) {
            let path = self.dir.join(format!("b{b:02x}"));
            let entries = self.buckets.get(&b).map(Vec::as_slice).unwrap_or_default();
            if entries.is_empty() {
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                continue;
            }
            let mut text = String::new();
            for e in entries {
                text.push_str(&format!("{}\t{}\t{}\n", e.ip, e.container_id, e.ifname));
            }
            // Written in place: the trailer's checksum exposes a torn write.
            text.push_str(&format!("#{:016x}\n", fnv1a(text.as_bytes())));
            overwrite(&path, text.as_bytes())?;
        }
        Ok(true)
    }
}

/// Where the index of network `name` lives.
pub fn dir_of(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join(INDEX_DIR).join(name)
}

fn read_bucket(path: &Path) -> io::Result<Vec<Entry>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let torn = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is damaged", path.display()),
        )
    };
    let body_end = text.trim_end_matches('\n').rfind('\n').map_or(0, |i| i + 1);
    let (body, trailer) = text.split_at(body_end);
    let sum = trailer
        .trim()
        .strip_prefix('#')
        .and_then(|h| u64::from_str_radix(h, 16).ok());
    if sum != Some(fnv1a(body.as_bytes())) {
        return Err(torn());
    }
    body.lines()
        .map(|line| {
            let mut parts = line.split('\t');
            let ip = parts
                .next()
                .and_then(|ip| ip.parse().ok())
                .ok_or_else(torn)?;
            let container_id = parts.next().ok_or_else(torn)?.to_string();
            let ifname = parts.next().ok_or_else(torn)?.to_string();
            Ok(Entry {
                ip,
                container_id,
                ifname,
            })
        })
        .collect()
}
