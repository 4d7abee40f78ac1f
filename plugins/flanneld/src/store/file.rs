//! The embedded store: a directory that any number of agents on one machine
//! (or sharing a filesystem) can use, guarded by flock.
//!
//! ```text
//! <dir>/config               the network config JSON
//! <dir>/lock                 flock'd for every change
//! <dir>/subnets/<key>        {"value": <LeaseAttrs>, "expires": <unix seconds>}
//! ```
//!
//! Records are written to a hidden temporary file and renamed into place,
//! so a reader (and the feed, which follows the directory with inotify)
//! never sees half a record.

mod feed;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{NOT_A_SUBNET_KEY, Store, StoreError, Unreadable};
use crate::lease::{Lease, LeaseAttrs, SubnetKey};

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

    fn write(
        &self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let record = Record {
            value: attrs.clone(),
            expires: ttl.map(|t| now_secs() + t.as_secs()),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let tmp = self.dir.join("subnets").join(format!(".{key}.tmp"));
        let mut f = File::create(&tmp).map_err(io_err("cannot write a lease"))?;
        f.write_all(&bytes)
            .map_err(io_err("cannot write a lease"))?;
        drop(f);
        fs::rename(&tmp, self.path(key)).map_err(io_err("cannot write a lease"))
    }

    /// The live lease at `key`; `Ok(None)` when there is none or it
    /// expired, `Err(why)` when the record cannot be read.
    fn load(&self, key: &SubnetKey) -> Result<Option<Lease>, String> {
        let bytes = match fs::read(self.path(key)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let record: Record = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if record.expires.is_some_and(|e| e <= now_secs()) {
            return Ok(None);
        }
        Ok(Some(Lease {
            key: *key,
            attrs: record.value,
            expires: record.expires.map(|e| UNIX_EPOCH + Duration::from_secs(e)),
        }))
    }

    /// As `load`; an unreadable record counts as free (it is overwritten).
    fn read(&self, key: &SubnetKey) -> Option<Lease> {
        self.load(key).ok().flatten()
    }
}

impl Store for FileStore {
    fn feed(&mut self, sink: super::Sink, relist: Duration) -> Result<(), StoreError> {
        feed::start(&self.dir, sink, relist)
    }

    fn network_config(&mut self) -> Result<String, StoreError> {
        let path = self.dir.join("config");
        fs::read_to_string(&path).map_err(io_err(format!(
            "has no network config at {} (write the config JSON there)",
            path.display()
        )))
    }

    fn leases(&mut self) -> Result<Vec<Lease>, StoreError> {
        let dir = self.dir.join("subnets");
        let mut out = Vec::new();
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
            match self.load(&key) {
                Ok(Some(lease)) => out.push(lease),
                Ok(None) => {}
                Err(why) => {
                    bad.insert(name, why);
                }
            }
        }
        self.unreadable.update(bad);
        out.sort_by_key(|l| l.key);
        Ok(out)
    }

    fn create(
        &mut self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let _lock = self.lock()?;
        if self.read(key).is_some() {
            return Ok(false);
        }
        self.write(key, attrs, ttl)?;
        Ok(true)
    }

    fn update(
        &mut self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        self.write(key, attrs, ttl)
    }

    fn delete(&mut self, key: &SubnetKey) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        match fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err("cannot delete a lease")(e))
            }
            _ => Ok(()),
        }
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
        assert!(
            ours.create(&key("10.244.1.0-24"), &attrs("192.0.2.1"), HOUR)
                .unwrap()
        );
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
        assert!(other.create(&k, &attrs("192.0.2.2"), HOUR).unwrap());
        match next(&rx, SOON) {
            StoreEvent::Put(l) => {
                assert_eq!(l.key, k);
                assert_eq!(l.attrs, attrs("192.0.2.2"));
                assert!(l.expires.is_some());
            }
            other => panic!("expected the new lease, got {other:?}"),
        }
        other.update(&k, &attrs("192.0.2.22"), None).unwrap();
        match next(&rx, SOON) {
            StoreEvent::Put(l) => {
                assert_eq!(l.attrs, attrs("192.0.2.22"));
                assert!(l.expires.is_none(), "now a reservation");
            }
            other => panic!("expected the rewrite, got {other:?}"),
        }
        // A bad record is left out (and logged), not sent.
        fs::write(dir.0.join("subnets").join("10.244.9.0-24"), "not json").unwrap();
        other.delete(&k).unwrap();
        assert_eq!(next(&rx, SOON), StoreEvent::Gone(k));
        assert!(
            matches!(
                rx.recv_timeout(Duration::from_millis(300)),
                Err(RecvTimeoutError::Timeout)
            ),
            "nothing else happened"
        );
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
        assert!(
            store
                .create(&short, &attrs("192.0.2.3"), Some(Duration::from_secs(1)))
                .unwrap()
        );
        assert!(
            store
                .create(&renewed, &attrs("192.0.2.4"), Some(Duration::from_secs(2)))
                .unwrap()
        );
        store.update(&renewed, &attrs("192.0.2.4"), HOUR).unwrap();
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
        // The renewed one outlives its first expiry (2 s) quietly.
        let quiet = rx.recv_timeout(Duration::from_millis(2500));
        assert!(matches!(quiet, Err(RecvTimeoutError::Timeout)), "{quiet:?}");
        assert_eq!(store.leases().unwrap().len(), 1);
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
        assert!(
            store
                .create(&key("10.244.5.0-24"), &attrs("192.0.2.5"), HOUR)
                .unwrap()
        );
        // The thread returned with the sink, and so dropped its sender.
        let end = rx.recv_timeout(SOON);
        assert!(
            matches!(end, Err(RecvTimeoutError::Disconnected)),
            "{end:?}"
        );
    }

    /// 5,000 leases: how long a listing takes, and a single write's event.
    #[test]
    fn feed_holds_five_thousand_leases() {
        let dir = Dir::new();
        let mut store = FileStore::open(&dir.0).unwrap();
        let made = Instant::now();
        for i in 0..5000u32 {
            let k = key(&format!("10.{}.{}.0-24", 100 + i / 256, i % 256));
            assert!(store.create(&k, &attrs("192.0.2.9"), HOUR).unwrap());
        }
        eprintln!("wrote 5000 leases in {:?}", made.elapsed());
        let (sink, rx) = channel();
        let start = Instant::now();
        store.feed(sink, Duration::from_secs(3600)).unwrap();
        match next(&rx, Duration::from_secs(20)) {
            StoreEvent::Listed { leases, .. } => assert_eq!(leases.len(), 5000),
            other => panic!("first came {other:?}"),
        }
        let listed = start.elapsed();
        let mut other = FileStore::open(&dir.0).unwrap();
        let k = key("10.120.0.0-24");
        let mut worst = Duration::ZERO;
        for round in 0..20 {
            let ip = format!("192.0.2.{}", 10 + round);
            let start = Instant::now();
            other.update(&k, &attrs(&ip), HOUR).unwrap();
            match next(&rx, SOON) {
                StoreEvent::Put(l) => assert_eq!(l.attrs, attrs(&ip)),
                ev => panic!("expected the write, got {ev:?}"),
            }
            worst = worst.max(start.elapsed());
        }
        eprintln!(
            "5000 leases: Listed after {listed:?}; write -> Put at most {worst:?} (20 writes)"
        );
        assert!(listed < Duration::from_secs(10), "{listed:?}");
        assert!(worst < Duration::from_millis(500), "{worst:?}");
    }
}
