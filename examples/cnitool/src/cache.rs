//! libcni's result cache: `<cacheDir>/results/<network>-<containerID>-<ifname>`
//! holds one attachment's ADD result with what is needed to undo it, in
//! libcni's `cniCacheV1` layout, so that Go's runtimes and cnitool read our
//! entries and we read theirs.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::base64;
use crate::failure::Failure;
use crate::ordered_json;

pub const KIND: &str = "cniCacheV1";

/// One cached attachment: libcni's `cachedInfo`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    pub container_id: String,
    pub network: String,
    pub ifname: String,
    pub netns: String,
    /// The network list's bytes as ADD read them.
    pub config: Vec<u8>,
    pub cni_args: Vec<(String, String)>,
    pub cap_args: Map<String, Value>,
    pub result: Option<Map<String, Value>>,
}

/// What a cache file holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Cached {
    Entry(Entry),
    /// A bare result, as libcni wrote before `cniCacheV1`.
    Legacy(Value),
}

pub fn results_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("results")
}

pub fn path(cache_dir: &Path, network: &str, container_id: &str, ifname: &str) -> PathBuf {
    results_dir(cache_dir).join(format!("{network}-{container_id}-{ifname}"))
}

impl Entry {
    /// The file's text: compact, fields in libcni's order, the empty
    /// optional ones left out (Go's `omitempty`).
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("kind".into(), KIND.into());
        m.insert("containerId".into(), self.container_id.clone().into());
        m.insert("config".into(), base64::encode(&self.config).into());
        m.insert("ifName".into(), self.ifname.clone().into());
        m.insert("networkName".into(), self.network.clone().into());
        if !self.netns.is_empty() {
            m.insert("netns".into(), self.netns.clone().into());
        }
        if !self.cni_args.is_empty() {
            let pairs = self
                .cni_args
                .iter()
                .map(|(k, v)| Value::Array(vec![k.clone().into(), v.clone().into()]))
                .collect();
            m.insert("cniArgs".into(), Value::Array(pairs));
        }
        if !self.cap_args.is_empty() {
            m.insert(
                "capabilityArgs".into(),
                Value::Object(self.cap_args.clone()),
            );
        }
        if let Some(result) = self.result.as_ref().filter(|r| !r.is_empty()) {
            m.insert("result".into(), Value::Object(result.clone()));
        }
        ordered_json::compact(&Value::Object(m), ordered_json::cache_order)
    }

    /// Reads a `cniCacheV1` object; any field of the wrong type fails the
    /// whole entry, as Go's decoder does.
    pub fn from_value(value: &Value) -> Result<Entry, String> {
        let obj = value.as_object().ok_or("not a JSON object")?;
        let text = |key: &str| -> Result<String, String> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(format!("{key} is not a string")),
            }
        };
        let kind = text("kind")?;
        if kind != KIND {
            return Err(format!("kind {kind:?} is not {KIND:?}"));
        }
        let config = base64::decode(&text("config")?).map_err(|e| format!("config: {e}"))?;
        let mut cni_args = Vec::new();
        match obj.get("cniArgs") {
            None | Some(Value::Null) => {}
            Some(Value::Array(pairs)) => {
                for pair in pairs {
                    let Value::Array(kv) = pair else {
                        return Err("cniArgs holds something else than pairs".into());
                    };
                    // Go decodes into [2]string: missing members are "".
                    let member = |i: usize| match kv.get(i) {
                        None | Some(Value::Null) => Ok(String::new()),
                        Some(Value::String(s)) => Ok(s.clone()),
                        Some(_) => Err("cniArgs holds a non-string".to_string()),
                    };
                    cni_args.push((member(0)?, member(1)?));
                }
            }
            Some(_) => return Err("cniArgs is not a list".into()),
        }
        let cap_args = match obj.get("capabilityArgs") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err("capabilityArgs is not an object".into()),
        };
        let result = match obj.get("result") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m.clone()),
            Some(_) => return Err("result is not an object".into()),
        };
        Ok(Entry {
            container_id: text("containerId")?,
            network: text("networkName")?,
            ifname: text("ifName")?,
            netns: text("netns")?,
            config,
            cni_args,
            cap_args,
            result,
        })
    }
}

/// Writes the entry whole or not at all: a temporary file beside it
/// (a dot name, which no real entry has) renamed over it.
pub fn write(cache_dir: &Path, entry: &Entry) -> Result<PathBuf, Failure> {
    let file = path(
        cache_dir,
        &entry.network,
        &entry.container_id,
        &entry.ifname,
    );
    let dir = results_dir(cache_dir);
    let fail = |what: &str, e: std::io::Error| Failure::new(format!("cannot {what}: {e}"));
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| fail(&format!("create {}", dir.display()), e))?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(entry.to_json().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &file)
    })();
    if let Err(e) = written {
        // The write's error is the one to report; a temporary file left
        // behind is overwritten by the next write of this entry.
        std::fs::remove_file(&tmp).ok();
        return Err(fail(&format!("write {}", file.display()), e));
    }
    Ok(file)
}

/// The cache file at `file`; `None` when it cannot be read (libcni ignores
/// read errors too: the attachment may simply not be there).
pub fn read(file: &Path) -> Result<Option<Cached>, Failure> {
    let Ok(bytes) = std::fs::read(file) else {
        return Ok(None);
    };
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Failure::new(format!("cache file {} is not JSON: {e}", file.display())))?;
    Ok(Some(match Entry::from_value(&value) {
        Ok(entry) => Cached::Entry(entry),
        Err(_) => Cached::Legacy(value),
    }))
}

/// Removes the entry; one already gone is fine.
pub fn remove(file: &Path) -> Result<(), Failure> {
    match std::fs::remove_file(file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Failure::new(format!(
            "cannot remove {}: {e}",
            file.display()
        ))),
        _ => Ok(()),
    }
}

/// Every readable `cniCacheV1` entry naming a network and an interface, in
/// file name order (libcni's `GetCachedAttachments("")`).
pub fn attachments(cache_dir: &Path) -> Result<Vec<Entry>, Failure> {
    let dir = results_dir(cache_dir);
    let listing = match std::fs::read_dir(&dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Failure::new(format!("cannot read {}: {e}", dir.display()))),
    };
    let mut files: Vec<PathBuf> = listing
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    files.sort();
    Ok(files
        .iter()
        .filter_map(|f| match read(f) {
            Ok(Some(Cached::Entry(entry))) => Some(entry),
            _ => None,
        })
        .filter(|e| !e.ifname.is_empty() && !e.network.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entry_round_trips_in_libcni_layout() {
        let entry = Entry {
            container_id: "cnitool-0011".into(),
            network: "net".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            config: br#"{"name":"net"}"#.to_vec(),
            cni_args: vec![("K".into(), "V".into())],
            cap_args: json!({"mac": "c2:00:00:00:00:01"})
                .as_object()
                .cloned()
                .unwrap(),
            result: json!({"cniVersion": "1.0.0", "ips": []})
                .as_object()
                .cloned(),
        };
        let text = entry.to_json();
        assert_eq!(
            text,
            r#"{"kind":"cniCacheV1","containerId":"cnitool-0011","config":"eyJuYW1lIjoibmV0In0=","ifName":"eth0","networkName":"net","netns":"/run/netns/x","cniArgs":[["K","V"]],"capabilityArgs":{"mac":"c2:00:00:00:00:01"},"result":{"cniVersion":"1.0.0","ips":[]}}"#
        );
        let back = Entry::from_value(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back, entry);
        let bare = Entry {
            cni_args: vec![],
            cap_args: Map::new(),
            netns: String::new(),
            result: None,
            ..entry
        };
        assert_eq!(
            bare.to_json(),
            r#"{"kind":"cniCacheV1","containerId":"cnitool-0011","config":"eyJuYW1lIjoibmV0In0=","ifName":"eth0","networkName":"net"}"#
        );
    }

    #[test]
    fn other_layouts_are_not_entries() {
        for v in [
            json!({"cniVersion": "0.4.0", "ips": []}),
            json!({"kind": "cniCacheV1", "config": "!!"}),
            json!({"kind": "cniCacheV1", "result": []}),
            json!({"kind": "cniCacheV1", "cniArgs": [[1, 2]]}),
            json!([]),
        ] {
            assert!(Entry::from_value(&v).is_err(), "{v}");
        }
    }
}
