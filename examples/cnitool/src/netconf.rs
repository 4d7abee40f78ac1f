//! Finding a network by name in `NETCONFPATH` and loading it, as libcni's
//! `LoadNetworkConf` does: `*.conflist` files first, then the deprecated
//! single-plugin `*.conf` / `*.json` files wrapped as a list of one; each
//! set in file name order, first match wins, and a file that cannot be
//! parsed on the way stops the search (it might have been the one).

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cni_types::Version;
use serde_json::{Map, Value};

use crate::failure::Failure;

/// The newest spec version libcni knows; `cniVersions` entries above it are
/// skipped.
const NEWEST: (i64, i64, i64) = (1, 1, 0);

/// A network configuration list, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    pub name: String,
    /// `cniVersion` as libcni settles it (the highest usable of `cniVersion`
    /// and `cniVersions`); given to every plugin as is, possibly empty.
    pub cni_version: String,
    pub disable_check: bool,
    pub disable_gc: bool,
    pub load_only_inlined_plugins: bool,
    pub plugins: Vec<PluginConf>,
    /// What the list was read from: libcni caches these bytes with a result.
    pub bytes: Vec<u8>,
}

/// One plugin's object, kept whole (unknown keys included).
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    pub raw: Map<String, Value>,
    pub plugin_type: String,
    /// The plugin object's own `name`, only used to describe it.
    pub name: String,
    pub cni_version: String,
    pub capabilities: BTreeMap<String, bool>,
}

impl PluginConf {
    /// As libcni names a plugin in its errors: `type="bridge" name="x"`.
    pub fn describe(&self) -> String {
        let mut out = format!("type={:?}", self.plugin_type);
        if !self.name.is_empty() {
            out.push_str(&format!(" name={:?}", self.name));
        }
        out
    }
}

impl NetworkList {
    /// The spec version the list speaks; no `cniVersion` means 0.1.0. A
    /// version cnitool does not know is refused here rather than by each
    /// plugin, since its results could not be read anyway.
    pub fn version(&self) -> Result<Version, Failure> {
        if self.cni_version.is_empty() {
            return Ok(cni_types::version::IMPLICIT);
        }
        self.cni_version.parse().map_err(|_| {
            Failure::with_code(
                cni_types::error::code::INCOMPATIBLE_VERSION,
                format!(
                    "network {:?} has cniVersion {:?}, which cnitool does not speak (it knows {})",
                    self.name,
                    self.cni_version,
                    Version::supported_list()
                ),
            )
        })
    }
}

/// Why [`load`] found no list.
#[derive(Debug)]
pub enum LoadError {
    /// No config has that name (or there are no configs at all).
    NotFound(Failure),
    /// A config could not be read or parsed.
    Invalid(Failure),
}

impl From<LoadError> for Failure {
    fn from(e: LoadError) -> Failure {
        match e {
            LoadError::NotFound(f) | LoadError::Invalid(f) => f,
        }
    }
}

/// Finds the network called `name` in `dir`.
pub fn load(dir: &Path, name: &str) -> Result<NetworkList, LoadError> {
    let lists = conf_files(dir, &[".conflist"]).map_err(LoadError::Invalid)?;
    for file in &lists {
        let mut list = list_from_bytes(read(file)?).map_err(|e| invalid(file, e))?;
        if list.name != name {
            continue;
        }
        // Plugins may also sit in <dir>/<name>/*.conf. libcni reads that
        // directory for every list it parses; only the match needs it.
        if !list.load_only_inlined_plugins {
            list.plugins.extend(plugins_in(&dir.join(name))?);
        }
        if list.plugins.is_empty() {
            return Err(invalid(file, "no plugin configs found".into()));
        }
        return Ok(list);
    }

    let singles = conf_files(dir, &[".conf", ".json"]).map_err(LoadError::Invalid)?;
    if singles.is_empty() && lists.is_empty() {
        return Err(LoadError::NotFound(Failure::new(format!(
            "no net configurations found in {}",
            dir.display()
        ))));
    }
    for file in &singles {
        let plugin = plugin_from_bytes(&read(file)?).map_err(|e| invalid(file, e))?;
        if plugin.name != name {
            continue;
        }
        // Upconverted as libcni's ConfListFromConf does: a list of one with
        // the plugin's name and version; these bytes are what gets cached.
        let mut wrapper = Map::new();
        wrapper.insert("cniVersion".into(), plugin.cni_version.clone().into());
        wrapper.insert("name".into(), plugin.name.clone().into());
        wrapper.insert(
            "plugins".into(),
            Value::Array(vec![Value::Object(plugin.raw)]),
        );
        let bytes = serde_json::to_vec(&wrapper).map_err(|e| invalid(file, e.to_string()))?;
        return list_from_bytes(bytes).map_err(|e| invalid(file, e));
    }
    Err(LoadError::NotFound(Failure::new(format!(
        "no net configuration with name {name:?} in {}",
        dir.display()
    ))))
}

fn invalid(file: &Path, msg: String) -> LoadError {
    LoadError::Invalid(Failure::with_code(
        cni_types::error::code::INVALID_CONFIG,
        format!("{}: {msg}", file.display()),
    ))
}

fn read(file: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(file).map_err(|e| {
        LoadError::Invalid(Failure::new(format!(
            "error reading {}: {e}",
            file.display()
        )))
    })
}

/// The regular files (not directories) in `dir` whose extension, as Go's
/// `filepath.Ext` sees it, is one of `exts`, sorted by name. A missing
/// directory has none.
fn conf_files(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>, Failure> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Failure::new(format!("cannot read {}: {e}", dir.display()))),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| Failure::new(format!("cannot read {}: {e}", dir.display())))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name();
        let bytes = name.as_bytes();
        let ext = bytes
            .iter()
            .rposition(|&b| b == b'.')
            .map_or(&[][..], |dot| &bytes[dot..]);
        if exts.iter().any(|e| e.as_bytes() == ext) {
            files.push(dir.join(name));
        }
    }
    files.sort();
    Ok(files)
}

/// The plugin objects in `<dir>/<network>/*.conf`.
fn plugins_in(dir: &Path) -> Result<Vec<PluginConf>, LoadError> {
    let files = conf_files(dir, &[".conf"]).map_err(|f| {
        LoadError::Invalid(f.context(format!(
            "failed to read plugin config files in {}",
            dir.display()
        )))
    })?;
    files
        .iter()
        .map(|file| plugin_from_bytes(&read(file)?).map_err(|e| invalid(file, e)))
        .collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// libcni's `NetworkConfFromBytes`: a list with `name`, `cniVersion`,
/// `cniVersions`, the three flags and `plugins`.
pub fn list_from_bytes(bytes: Vec<u8>) -> Result<NetworkList, String> {
    const CTX: &str = "error parsing configuration list";
    let raw = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => map,
        Ok(Value::Null) => Map::new(),
        Ok(other) => return Err(format!("{CTX}: expected an object, found {}", kind(&other))),
        Err(e) => return Err(format!("{CTX}: {e}")),
    };
    let name = match raw.get("name") {
        None => return Err(format!("{CTX}: no name")),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("{CTX}: invalid name type {}", kind(other))),
    };
    let mut cni_version = match raw.get("cniVersion") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("{CTX}: invalid cniVersion type {}", kind(other))),
    };
    if let Some(versions) = raw.get("cniVersions") {
        let Value::Array(versions) = versions else {
            return Err(format!(
                "{CTX}: invalid type for cniVersions: {}",
                kind(versions)
            ));
        };
        let mut usable = Vec::new();
        for (i, v) in versions.iter().enumerate() {
            let Value::String(v) = v else {
                return Err(format!(
                    "{CTX}: invalid type for cniVersions index {i}: {}",
                    kind(v)
                ));
            };
            let parsed = parse_version(v)
                .map_err(|e| format!("{CTX}: invalid cniVersions entry {v} at index {i}: {e}"))?;
            if parsed <= NEWEST {
                usable.push((parsed, v.clone()));
            }
        }
        if !cni_version.is_empty() {
            let parsed = parse_version(&cni_version)
                .map_err(|e| format!("{CTX}: invalid cniVersion {cni_version}: {e}"))?;
            if parsed <= NEWEST {
                usable.push((parsed, cni_version.clone()));
            }
        }
        if let Some((_, highest)) = usable.into_iter().max_by_key(|(parsed, _)| *parsed) {
            cni_version = highest;
        }
    }
    let flag = |key: &str| -> Result<bool, String> {
        match raw.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                other => Err(format!("{CTX}: invalid value {other:?} for {key}")),
            },
            Some(other) => Err(format!("{CTX}: invalid type {} for {key}", kind(other))),
        }
    };
    let disable_check = flag("disableCheck")?;
    let disable_gc = flag("disableGC")?;
    let load_only_inlined_plugins = flag("loadOnlyInlinedPlugins")?;

    let plugins = match raw.get("plugins") {
        None if load_only_inlined_plugins => {
            return Err(format!(
                "{CTX}: `loadOnlyInlinedPlugins` is true, and no 'plugins' key"
            ));
        }
        None => Vec::new(),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(format!("{CTX}: no plugins in list"));
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                plugin_from_value(item.clone())
                    .map_err(|e| format!("failed to parse plugin config {i}: {e}"))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("{CTX}: invalid 'plugins' type {}", kind(other))),
    };

    Ok(NetworkList {
        name,
        cni_version,
        disable_check,
        disable_gc,
        load_only_inlined_plugins,
        plugins,
        bytes,
    })
}

/// libcni's `ParseVersion`: up to three dot-separated numbers, the missing
/// ones 0; an empty string is 0.1.0.
fn parse_version(v: &str) -> Result<(i64, i64, i64), String> {
    if v.is_empty() {
        return Ok((0, 1, 0));
    }
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() > 3 {
        return Err(format!("invalid version {v:?}: too many parts"));
    }
    let part = |i: usize| -> Result<i64, String> {
        parts.get(i).map_or(Ok(0), |p| {
            p.parse()
                .map_err(|e| format!("failed to convert version part {p:?}: {e}"))
        })
    };
    Ok((part(0)?, part(1)?, part(2)?))
}

fn plugin_from_bytes(bytes: &[u8]) -> Result<PluginConf, String> {
    let value =
        serde_json::from_slice(bytes).map_err(|e| format!("error parsing configuration: {e}"))?;
    plugin_from_value(value)
}

/// One plugin object, checked as Go decodes it into `types.PluginConf`:
/// the fields it declares must have their types, and `type` is required.
fn plugin_from_value(value: Value) -> Result<PluginConf, String> {
    const CTX: &str = "error parsing configuration";
    let raw = match value {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => return Err(format!("{CTX}: expected an object, found {}", kind(&other))),
    };
    let text = |key: &str| -> Result<String, String> {
        match raw.get(key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!(
                "{CTX}: {key:?} must be a string, not {}",
                kind(other)
            )),
        }
    };
    let plugin_type = text("type")?;
    let name = text("name")?;
    let cni_version = text("cniVersion")?;

    let mut capabilities = BTreeMap::new();
    match raw.get("capabilities") {
        None | Some(Value::Null) => {}
        Some(Value::Object(caps)) => {
            for (cap, on) in caps {
                match on {
                    Value::Bool(b) => {
                        capabilities.insert(cap.clone(), *b);
                    }
                    Value::Null => {}
                    other => {
                        return Err(format!(
                            "{CTX}: capability {cap:?} must be true or false, not {}",
                            kind(other)
                        ));
                    }
                }
            }
        }
        Some(other) => {
            return Err(format!(
                "{CTX}: \"capabilities\" must be an object, not {}",
                kind(other)
            ));
        }
    }
    let object_with = |key: &str, strings: &[&str], lists: &[&str]| -> Result<(), String> {
        let inner = match raw.get(key) {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Object(inner)) => inner,
            Some(other) => {
                return Err(format!(
                    "{CTX}: {key:?} must be an object, not {}",
                    kind(other)
                ));
            }
        };
        for field in strings {
            if let Some(v) = inner.get(*field).filter(|v| !v.is_null() && !v.is_string()) {
                return Err(format!(
                    "{CTX}: \"{key}.{field}\" must be a string, not {}",
                    kind(v)
                ));
            }
        }
        for field in lists {
            match inner.get(*field) {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) if items.iter().all(|i| i.is_null() || i.is_string()) => {
                }
                Some(other) => {
                    return Err(format!(
                        "{CTX}: \"{key}.{field}\" must be a list of strings, not {}",
                        kind(other)
                    ));
                }
            }
        }
        Ok(())
    };
    object_with("ipam", &["type"], &[])?;
    object_with("dns", &["domain"], &["nameservers", "search", "options"])?;
    object_with("prevResult", &[], &[])?;

    if plugin_type.is_empty() {
        return Err(format!("{CTX}: missing 'type'"));
    }
    Ok(PluginConf {
        raw,
        plugin_type,
        name,
        cni_version,
        capabilities,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> Result<NetworkList, String> {
        list_from_bytes(text.as_bytes().to_vec())
    }

    #[test]
    fn version_selection_like_libcni() {
        let l = list(r#"{"name":"n","cniVersion":"0.4.0","cniVersions":["1.0.0","1.2.0","0.3.1"],"plugins":[{"type":"x"}]}"#).unwrap();
        assert_eq!(l.cni_version, "1.0.0");
        let l = list(r#"{"name":"n","cniVersions":["2.0.0"],"plugins":[{"type":"x"}]}"#).unwrap();
        assert_eq!(l.cni_version, "");
        assert_eq!(l.version().unwrap(), Version::V0_1_0);
        let l = list(r#"{"name":"n","cniVersion":"1.2.0","plugins":[{"type":"x"}]}"#).unwrap();
        assert_eq!(l.version().unwrap_err().code, Some(1));
        assert!(list(r#"{"name":"n","cniVersions":["a.b"],"plugins":[{"type":"x"}]}"#).is_err());
    }

    #[test]
    fn flags_and_plugins() {
        let l = list(r#"{"name":"n","disableCheck":"TRUE","disableGC":true,"plugins":[{"type":"a","capabilities":{"mac":true,"ips":false}},{"type":"b","name":"own"}]}"#).unwrap();
        assert!(l.disable_check && l.disable_gc && !l.load_only_inlined_plugins);
        assert_eq!(l.plugins[0].capabilities.get("mac"), Some(&true));
        assert_eq!(l.plugins[0].describe(), r#"type="a""#);
        assert_eq!(l.plugins[1].describe(), r#"type="b" name="own""#);
        for bad in [
            r#"{"plugins":[{"type":"a"}]}"#,
            r#"{"name":1,"plugins":[{"type":"a"}]}"#,
            r#"{"name":"n","plugins":[]}"#,
            r#"{"name":"n","plugins":{}}"#,
            r#"{"name":"n","plugins":[{"name":"no type"}]}"#,
            r#"{"name":"n","plugins":[{"type":"a","capabilities":{"mac":"yes"}}]}"#,
            r#"{"name":"n","plugins":[{"type":"a","ipam":"host-local"}]}"#,
            r#"{"name":"n","plugins":[{"type":"a","dns":{"nameservers":"1.1.1.1"}}]}"#,
            r#"{"name":"n","disableCheck":"maybe","plugins":[{"type":"a"}]}"#,
            r#"{"name":"n","loadOnlyInlinedPlugins":true}"#,
            r#"[1]"#,
            r#"{"name":"n","#,
        ] {
            assert!(list(bad).is_err(), "{bad}");
        }
    }
}
