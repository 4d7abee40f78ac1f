//! The embedded store: a directory that any number of agents on one machine
//! (or sharing a filesystem) can use, guarded by flock.
//!
//! ```text
//! <dir>/config               the network config JSON
//! <dir>/lock                 flock'd for every change
//! <dir>/subnets/<key>        {"value": <LeaseAttrs>, "expires": <unix seconds>}
//! ```
//!
//! Records are written to a hidden temporary file, flushed to disk and
//! renamed into place (the directory flushed too), so a reader (and the
//! feed, which follows the directory with inotify) never sees half a
//! record, and a crash never loses one. A record's revision is a digest
//! of its bytes: a write of our own lease compares it, under the lock,
//! with the one we last saw. A record that cannot be read (what a crash of
//! another writer before these flushes could leave) counts as taken until
//! it is older than the longest lease: handing its subnet out could give
//! one subnet to two nodes.

mod feed;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{
    Acquire, Listing, NOT_A_SUBNET_KEY, Records, Sink, Store, StoreError, Unreadable, Written,
};
use crate::lease::{Lease, LeaseAttrs, Revision, SubnetKey};
use crate::store::alloc::{self, AllocError};

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    value: LeaseAttrs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<u64>,
}

#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    unreadable: Unreadable,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A record's revision: FNV-1a of its bytes.
fn digest(bytes: &[u8]) -> Revision {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What is at a key.
enum Found {
    Nothing,
    Lease(Lease),
    /// A record that cannot be read, and why.
    Unreadable(String),
}

impl FileStore {
    pub fn open(dir: &Path) -> Result<FileStore, StoreError> {
        fs::create_dir_all(dir.join("subnets"))
            .map_err(io_err(format!("cannot create {}", dir.display())))?;
        Ok(FileStore {
            dir: dir.to_path_buf(),
            unreadable: Unreadable::default(),
        })
    }

    fn lock(&self) -> Result<File, StoreError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("lock"))
            .map_err(io_err("cannot open the lock"))?;
        f.lock().map_err(io_err("cannot take the lock"))?;
        Ok(f)
    }

    fn path(&self, key: &SubnetKey) -> PathBuf {
        self.dir.join("subnets").join(key.to_string())
    }

    /// Writes a record durably; returns the lease as written.
    fn write(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Lease, StoreError> {
        let expires = ttl.map(|t| now_secs().saturating_add(t.as_secs()));
        let record = Record {
            value: attrs.clone(),
            expires,
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let subnets = self.dir.join("subnets");
        let tmp = subnets.join(format!(".{key}.tmp"));
        let failed = io_err("cannot write a lease");
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, self.path(key))?;
            // The rename itself is durable only once the directory is.
            File::open(&subnets)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            failed(e)
        })?;
        Ok(Lease {
            key: *key,
            attrs: attrs.clone(),
            expires: expires.map(|e| UNIX_EPOCH + Duration::from_secs(e)),
            rev: digest(&bytes),
        })
    }

    /// What is at `key` now (an expired lease is nothing).
    fn find(&self, key: &SubnetKey) -> Found {
        let bytes = match fs::read(self.path(key)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Found::Nothing,
            Err(e) => return Found::Unreadable(e.to_string()),
        };
        let record: Record = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) if bytes.is_empty() => return Found::Unreadable(format!("empty record ({e})")),
            Err(e) => return Found::Unreadable(e.to_string()),
        };
        if record.expires.is_some_and(|e| e <= now_secs()) {
            return Found::Nothing;
        }
        Found::Lease(Lease {
            key: *key,
            attrs: record.value,
            expires: record.expires.map(|e| UNIX_EPOCH + Duration::from_secs(e)),
            rev: digest(&bytes),
        })
    }

    /// The live lease at `key`; `Ok(None)` when there is none or it
    /// expired, `Err(why)` when the record cannot be read.
    fn load(&self, key: &SubnetKey) -> Result<Option<Lease>, String> {
        match self.find(key) {
            Found::Nothing => Ok(None),
            Found::Lease(l) => Ok(Some(l)),
            Found::Unreadable(why) => Err(why),
        }
    }

    /// An unreadable record older than any lease could live (`ttl`, and
    /// upstream's 24 h): whatever it held has expired.
    fn stale(&self, key: &SubnetKey, ttl: Option<Duration>) -> bool {
        let longest = ttl.unwrap_or_default().max(alloc::LEASE_TTL);
        fs::metadata(self.path(key))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > longest)
    }

    /// What a lost compare reports: the lease there now, if readable.
    fn now_at(&self, key: &SubnetKey) -> Written {
        Written::NotOurs(self.load(key).ok().flatten())
    }
}

impl Records for FileStore {
    fn list(&mut self) -> Result<Listing, StoreError> {
        let dir = self.dir.join("subnets");
        let mut out = Listing::default();
        let mut bad = std::collections::BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(io_err(format!("cannot list {}", dir.display())))? {
            let entry = entry.map_err(io_err("cannot list leases"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Our temporary files, and anything hidden.
            if name.starts_with('.') {
                continue;
            }
            let Some(key) = SubnetKey::parse(&name) else {
                bad.insert(name, NOT_A_SUBNET_KEY.into());
                continue;
            };
            match self.find(&key) {
                Found::Lease(lease) => out.leases.push(lease),
                Found::Nothing => {}
                Found::Unreadable(why) => {
                    out.unreadable.push(key);
                    bad.insert(name, why);
                }
            }
        }
        self.unreadable.update(bad);
        out.leases.sort_by_key(|l| l.key);
        Ok(out)
    }

    fn create(
        &mut self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Written, StoreError> {
        let _lock = self.lock()?;
        match self.find(key) {
            Found::Lease(l) => return Ok(Written::NotOurs(Some(l))),
            Found::Unreadable(_) if !self.stale(key, ttl) => return Ok(Written::NotOurs(None)),
            Found::Unreadable(_) | Found::Nothing => {}
        }
        self.write(key, attrs, ttl).map(Written::Ours)
    }

    fn replace(
        &mut self,
        lease: &Lease,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Written, StoreError> {
        let _lock = self.lock()?;
        match self.find(&lease.key) {
            Found::Lease(now) if now.rev == lease.rev => {}
            _ => return Ok(self.now_at(&lease.key)),
        }
        self.write(&lease.key, attrs, ttl).map(Written::Ours)
    }

    fn delete(&mut self, lease: &Lease) -> Result<bool, StoreError> {
        let _lock = self.lock()?;
        match self.find(&lease.key) {
            Found::Lease(now) if now.rev == lease.rev => {}
            _ => return Ok(false),
        }
        match fs::remove_file(self.path(&lease.key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err("cannot delete a lease")(e))
            }
            _ => Ok(true),
        }
    }
}

impl Store for FileStore {
    fn network_config(&mut self) -> Result<String, StoreError> {
        let path = self.dir.join("config");
        fs::read_to_string(&path).map_err(io_err(format!(
            "has no network config at {} (write the config JSON there)",
            path.display()
        )))
    }

    fn acquire(&mut self, want: &Acquire<'_>) -> Result<Lease, AllocError> {
        alloc::acquire(self, want)
    }

    fn renew(
        &mut self,
        lease: &Lease,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Written, StoreError> {
        self.replace(lease, attrs, ttl)
    }

    fn recreate(&mut self, lease: &Lease, ttl: Option<Duration>) -> Result<Written, StoreError> {
        self.create(&lease.key, &lease.attrs, ttl)
    }

    fn feed(&mut self, sink: Sink, relist: Duration) -> Result<(), StoreError> {
        feed::start(&self.dir, sink, relist)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreEvent;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::mpsc::{self, RecvTimeoutError};
    use std::time::Instant;

    /// A store directory of its own, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Dir {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("flanneld-store-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// The lease a write made; the test fails if it was not made.
    #[track_caller]
    fn made(w: Result<Written, StoreError>) -> Lease {
        match w.unwrap() {
            Written::Ours(l) => l,
            Written::NotOurs(now) => panic!("not written; the store holds {now:?}"),
        }
    }

    fn key(s: &str) -> SubnetKey {
        SubnetKey::parse(s).unwrap()
    }

    fn attrs(ip: &str) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Some(ip.parse().unwrap()),
            public_ipv6: None,
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    use crate::store::probe::{channel, next, until};

    const SOON: Duration = Duration::from_secs(2);
    const HOUR: Option<Duration> = Some(Duration::from_secs(3600));

    #[test]
    fn feed_lists_first_then_reports_what_another_handle_writes() {
        let dir = Dir::new();
        fs::write(dir.0.join("config"), r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        let mut ours = FileStore::open(&dir.0).unwrap();
        made(ours.create(&key("10.244.1.0-24"), &attrs("192.0.2.1"), HOUR));
        let (sink, rx) = channel();
        ours.feed(sink, Duration::from_secs(3600)).unwrap();
        match next(&rx, SOON) {
            StoreEvent::Listed { leases, config } => {
                assert_eq!(leases.len(), 1);
                assert_eq!(leases[0].key, key("10.244.1.0-24"));
                assert_eq!(config.as_deref(), Some(r#"{"Network":"10.244.0.0/16"}"#));
            }
            other => panic!("first came {other:?}"),
        }

        let mut other = FileStore::open(&dir.0).unwrap();
        let k = key("10.244.2.0-24");
        let l = made(other.create(&k, &attrs("192.0.2.2"), HOUR));
        match next(&rx, SOON) {
            StoreEvent::Put(l) => {
                assert_eq!(l.key, k);
                assert_eq!(l.attrs, attrs("192.0.2.2"));
                assert!(l.expires.is_some());
            }
            other => panic!("expected the new lease, got {other:?}"),
        }
        let l = made(other.replace(&l, &attrs("192.0.2.22"), None));
        match next(&rx, SOON) {
            StoreEvent::Put(l) => {
                assert_eq!(l.attrs, attrs("192.0.2.22"));
                assert!(l.expires.is_none(), "now a reservation");
            }
            other => panic!("expected the rewrite, got {other:?}"),
        }
        // A bad record is left out (and logged), not sent.
        fs::write(dir.0.join("subnets").join("10.244.9.0-24"), "not json").unwrap();
        assert!(other.delete(&l).unwrap());
        assert_eq!(next(&rx, SOON), StoreEvent::Gone(k));
        // The feed applies a batch of changed names in key order, so an
        // event for the bad record (were there one) could trail the Gone
        // within the same pass: 300 ms cover that.
        assert!(
            matches!(
                rx.recv_timeout(Duration::from_millis(300)),
                Err(RecvTimeoutError::Timeout)
            ),
            "nothing else happened"
        );
    }

    #[test]
    fn a_write_of_our_lease_loses_to_another_writer_in_between() {
        let dir = Dir::new();
        let mut ours = FileStore::open(&dir.0).unwrap();
        let mut other = FileStore::open(&dir.0).unwrap();
        let k = key("10.244.6.0-24");
        let mine = made(ours.create(&k, &attrs("192.0.2.6"), HOUR));
        // Our renewal goes through while the record is as we wrote it.
        let mine = made(ours.replace(&mine, &attrs("192.0.2.6"), HOUR));
        // Our lease lapsed, say, and another node took the subnet: it
        // writes between our read and our write.
        let seen = other.list().unwrap().leases.remove(0);
        let theirs = made(other.replace(&seen, &attrs("192.0.2.66"), HOUR));
        match ours.replace(&mine, &attrs("192.0.2.6"), HOUR).unwrap() {
            Written::NotOurs(Some(now)) => assert_eq!(now.attrs, attrs("192.0.2.66")),
            w => panic!("our write went through: {w:?}"),
        }
        assert!(!ours.delete(&mine).unwrap(), "nor may we delete it");
        assert_eq!(ours.list().unwrap().leases, [theirs]);
        // Nor is a key taken back by a create while someone holds it.
        assert!(matches!(
            ours.create(&k, &attrs("192.0.2.6"), HOUR).unwrap(),
            Written::NotOurs(Some(_))
        ));
    }

    #[test]
    fn an_unreadable_record_is_taken_until_it_is_older_than_any_lease() {
        let dir = Dir::new();
        let mut store = FileStore::open(&dir.0).unwrap();
        let k = key("10.244.7.0-24");
        // What a crash between creating and writing a record leaves.
        let path = store.path(&k);
        File::create(&path).unwrap();
        assert!(matches!(
            store.create(&k, &attrs("192.0.2.7"), HOUR).unwrap(),
            Written::NotOurs(None)
        ));
        let listing = store.list().unwrap();
        assert!(listing.leases.is_empty());
        assert_eq!(listing.unreadable, [k]);
        // Allocation leaves it alone: the only other subnet is taken.
        let config = crate::netconfig::NetConfig::parse(
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.7.0","SubnetMax":"10.244.8.0"}"#,
        )
        .unwrap();
        let want = Acquire {
            config: &config,
            attrs: &attrs("192.0.2.8"),
            previous: Some(k),
            ttl: Duration::from_secs(3600),
        };
        let got = store.acquire(&want).unwrap();
        assert_eq!(got.key, key("10.244.8.0-24"));
        // Older than the longest lease: whatever it held is over.
        let old = SystemTime::now() - alloc::LEASE_TTL - Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        made(store.create(&k, &attrs("192.0.2.7"), HOUR));
    }

    #[test]
    fn feed_reports_expiry_but_not_a_renewed_lease() {
        let dir = Dir::new();
        let mut store = FileStore::open(&dir.0).unwrap();
        let (sink, rx) = channel();
        store.feed(sink, Duration::from_secs(3600)).unwrap();
        assert!(matches!(next(&rx, SOON), StoreEvent::Listed { leases, .. } if leases.is_empty()));
        let short = key("10.244.3.0-24");
        let renewed = key("10.244.4.0-24");
        made(store.create(&short, &attrs("192.0.2.3"), Some(Duration::from_secs(1))));
        let written = Instant::now();
        let l = made(store.create(&renewed, &attrs("192.0.2.4"), Some(Duration::from_secs(2))));
        made(store.replace(&l, &attrs("192.0.2.4"), HOUR));
        let start = Instant::now();
        let (_, before) = until(&rx, Duration::from_secs(5), |ev| {
            *ev == StoreEvent::Gone(short)
        });
        eprintln!(
            "expiry reported {:?} after the write (ttl 1 s)",
            start.elapsed()
        );
        assert!(
            before.iter().all(|ev| matches!(ev, StoreEvent::Put(_))),
            "{before:?}"
        );
        // The renewed one outlives its first expiry (2 s after its write)
        // quietly: waiting past that moment is the test.
        let past_expiry = written + Duration::from_millis(2500);
        let quiet = rx.recv_timeout(past_expiry.saturating_duration_since(Instant::now()));
        assert!(matches!(quiet, Err(RecvTimeoutError::Timeout)), "{quiet:?}");
        assert_eq!(store.list().unwrap().leases.len(), 1);
    }

    #[test]
    fn feed_reports_config_changes() {
        let dir = Dir::new();
        let mut store = FileStore::open(&dir.0).unwrap();
        let (sink, rx) = channel();
        store.feed(sink, Duration::from_secs(3600)).unwrap();
        assert!(matches!(
            next(&rx, SOON),
            StoreEvent::Listed { config: None, .. }
        ));
        let config = dir.0.join("config");
        // Written in place, as `echo > config` does.
        fs::write(&config, "one").unwrap();
        assert_eq!(next(&rx, SOON), StoreEvent::Config(Some("one".into())));
        // Renamed into place, as editors and `kubectl cp`-style tools do.
        fs::write(dir.0.join(".config.new"), "two").unwrap();
        fs::rename(dir.0.join(".config.new"), &config).unwrap();
        assert_eq!(next(&rx, SOON), StoreEvent::Config(Some("two".into())));
        fs::remove_file(&config).unwrap();
        assert_eq!(next(&rx, SOON), StoreEvent::Config(None));
    }

    #[test]
    fn feed_lists_again_on_its_tick() {
        let dir = Dir::new();
        let mut store = FileStore::open(&dir.0).unwrap();
        let (sink, rx) = channel();
        store.feed(sink, Duration::from_millis(200)).unwrap();
        assert!(matches!(next(&rx, SOON), StoreEvent::Listed { .. }));
        assert!(matches!(next(&rx, SOON), StoreEvent::Listed { .. }));
    }

    #[test]
    fn feed_ends_when_the_sink_says_so() {
        let dir = Dir::new();
        let mut store = FileStore::open(&dir.0).unwrap();
        let (tx, rx) = mpsc::channel();
        // Takes the first event, then says it is gone.
        let sink = move |ev| {
            let _ = tx.send(ev);
            false
        };
        store
            .feed(Box::new(sink), Duration::from_secs(3600))
            .unwrap();
        assert!(matches!(next(&rx, SOON), StoreEvent::Listed { .. }));
        made(store.create(&key("10.244.5.0-24"), &attrs("192.0.2.5"), HOUR));
        // The thread returned with the sink, and so dropped its sender.
        let end = rx.recv_timeout(SOON);
        assert!(
            matches!(end, Err(RecvTimeoutError::Disconnected)),
            "{end:?}"
        );
    }

    /// 5,000 leases: all listed, and a single write among them seen. How
    /// fast is bench-flanneld-store's figure, not this test's.
    #[test]
    fn feed_holds_five_thousand_leases() {
        let dir = Dir::new();
        let mut store = FileStore::open(&dir.0).unwrap();
        // Written as the store writes them, without its flushes to disk:
        // this is about the feed.
        let record = serde_json::to_vec(&Record {
            value: attrs("192.0.2.9"),
            expires: Some(now_secs() + 3600),
        })
        .unwrap();
        for i in 0..5000u32 {
            let k = key(&format!("10.{}.{}.0-24", 100 + i / 256, i % 256));
            fs::write(store.path(&k), &record).unwrap();
        }
        let (sink, rx) = channel();
        store.feed(sink, Duration::from_secs(3600)).unwrap();
        // Generous: the bound only ends a test whose feed never lists.
        match next(&rx, Duration::from_secs(20)) {
            StoreEvent::Listed { leases, .. } => assert_eq!(leases.len(), 5000),
            other => panic!("first came {other:?}"),
        }
        let mut other = FileStore::open(&dir.0).unwrap();
        let k = key("10.119.0.0-24");
        let mut l = other
            .list()
            .unwrap()
            .leases
            .into_iter()
            .find(|l| l.key == k)
            .unwrap();
        for round in 0..20 {
            let ip = format!("192.0.2.{}", 10 + round);
            l = made(other.replace(&l, &attrs(&ip), HOUR));
            match next(&rx, SOON) {
                StoreEvent::Put(l) => assert_eq!(l.attrs, attrs(&ip)),
                ev => panic!("expected the write, got {ev:?}"),
            }
        }
    }
}
