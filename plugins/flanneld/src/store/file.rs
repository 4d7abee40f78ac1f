//! The embedded store: a directory that any number of agents on one machine
//! (or sharing a filesystem) can use, guarded by flock.
//!
//! ```text
//! <dir>/config               the network config JSON
//! <dir>/lock                 flock'd for every change
//! <dir>/subnets/<key>        {"value": <LeaseAttrs>, "expires": <unix seconds>}
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, Unreadable};
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
    /// The subnets directory's change time at the last `changed` call.
    seen: Option<(i64, i64)>,
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
            seen: None,
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
    fn feed(&mut self, _sink: super::Sink, _relist: Duration) -> Result<(), StoreError> {
        Err(StoreError::Invalid(
            "the embedded store's feed is not written yet".into(),
        ))
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
                bad.insert(name, "not a subnet key such as 10.244.3.0-24".into());
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
