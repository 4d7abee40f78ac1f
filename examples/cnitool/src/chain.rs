//! The verbs over a network list, with libcni's semantics: ADD in order
//! with each result chained as the next plugin's `prevResult` and the last
//! one cached; CHECK in order and DEL in reverse with the cached result;
//! GC and STATUS to every plugin, gated by the list's version.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use cni_types::config::{LEGACY_ATTACHMENTS_KEY, VALID_ATTACHMENTS_KEY};
use cni_types::{CniResult, Version};
use serde_json::{Map, Value, json};

use crate::cache::{self, Cached, Entry};
use crate::exec::{self, PluginEnv};
use crate::failure::{Failure, Failures, note};
use crate::netconf::{NetworkList, PluginConf};

/// Where plugins and the cache are.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub cni_path: Vec<PathBuf>,
    /// `cni_path` joined with `:`, as plugins get it in `CNI_PATH`.
    pub cni_path_env: OsString,
    pub cache_dir: PathBuf,
}

/// One attachment of a container to the network: libcni's `RuntimeConf`.
#[derive(Debug, Clone, Default)]
pub struct Attachment {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `None`: not given; CHECK and DEL then reuse what ADD had.
    pub cni_args: Option<Vec<(String, String)>>,
    pub cap_args: Option<Map<String, Value>>,
}

impl Attachment {
    fn from_entry(e: &Entry) -> Attachment {
        Attachment {
            container_id: e.container_id.clone(),
            netns: e.netns.clone(),
            ifname: e.ifname.clone(),
            cni_args: Some(e.cni_args.clone()),
            cap_args: Some(e.cap_args.clone()),
        }
    }

    /// The args ADD was given, where this call gives none; and ADD's
    /// namespace when none is given and it still exists, so that the pod's
    /// interface is removed too.
    fn or_cached(&self, cached: Option<&Cached>) -> Attachment {
        let mut att = self.clone();
        if let Some(Cached::Entry(e)) = cached {
            att.cni_args.get_or_insert_with(|| e.cni_args.clone());
            att.cap_args.get_or_insert_with(|| e.cap_args.clone());
            if att.netns.is_empty() && !e.netns.is_empty() && Path::new(&e.netns).exists() {
                att.netns = e.netns.clone();
            }
        }
        att
    }

    /// `CNI_ARGS` as libcni joins its pairs.
    fn args_string(&self) -> String {
        self.cni_args
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    fn cache_file(&self, rt: &Runtime, network: &str) -> PathBuf {
        cache::path(&rt.cache_dir, network, &self.container_id, &self.ifname)
    }
}

fn find(rt: &Runtime, plugin: &PluginConf) -> Result<PathBuf, Failure> {
    // Our own failure to find a binary, not a plugin's: no CNI code.
    cni_types::delegate::find_in_path(&plugin.plugin_type, &rt.cni_path)
        .map_err(|e| Failure::new(e.msg))
}

/// The config a plugin reads: its own object with the list's `name` and
/// `cniVersion`, plus for ADD/CHECK/DEL the previous result and, as
/// `runtimeConfig`, the capability args it declares in `capabilities`.
fn plugin_stdin(
    list: &NetworkList,
    plugin: &PluginConf,
    prev: Option<&Value>,
    cap_args: Option<&Map<String, Value>>,
    extra: &[(&str, Value)],
) -> Result<Vec<u8>, Failure> {
    let mut conf = plugin.raw.clone();
    conf.insert("name".into(), list.name.clone().into());
    conf.insert("cniVersion".into(), list.cni_version.clone().into());
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    if let Some(cap_args) = cap_args {
        let runtime_config: Map<String, Value> = plugin
            .capabilities
            .iter()
            .filter(|(_, declared)| **declared)
            .filter_map(|(cap, _)| cap_args.get(cap).map(|v| (cap.clone(), v.clone())))
            .collect();
        // Only when there is something to pass: a plugin's own
        // runtimeConfig stays otherwise (libcni's injectRuntimeConfig).
        if !runtime_config.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
    }
    for (key, value) in extra {
        conf.insert((*key).into(), value.clone());
    }
    serde_json::to_vec(&Value::Object(conf)).map_err(|e| {
        Failure::new(format!(
            "cannot encode the config of {}: {e}",
            plugin.describe()
        ))
    })
}

/// Runs one plugin for one attachment.
fn call(
    rt: &Runtime,
    list: &NetworkList,
    plugin: &PluginConf,
    command: &str,
    att: &Attachment,
    prev: Option<&Value>,
) -> Result<Vec<u8>, Failure> {
    let exe = find(rt, plugin)?;
    let stdin = plugin_stdin(list, plugin, prev, att.cap_args.as_ref(), &[])?;
    let args = att.args_string();
    let env = PluginEnv {
        command,
        container_id: &att.container_id,
        netns: &att.netns,
        cni_args: &args,
        ifname: &att.ifname,
        path: &rt.cni_path_env,
    };
    exec::run(&exe, &env, &stdin)
}

/// Runs one plugin for the whole network (GC, STATUS): no attachment, so
/// the per-container variables are empty, as libcni sends them.
fn call_network(
    rt: &Runtime,
    list: &NetworkList,
    plugin: &PluginConf,
    command: &str,
    extra: &[(&str, Value)],
) -> Result<(), Failure> {
    let exe = find(rt, plugin)?;
    let stdin = plugin_stdin(list, plugin, None, None, extra)?;
    let env = PluginEnv {
        command,
        container_id: "",
        netns: "",
        cni_args: "",
        ifname: "",
        path: &rt.cni_path_env,
    };
    exec::run(&exe, &env, &stdin).map(drop)
}

/// A plugin's ADD output as a result in the list's version. Plugins must
/// print that version; one that printed another is converted here, so the
/// next plugin's `prevResult` and the cache always hold the list's version
/// (libcni passes it on as printed). A result without `cniVersion` is taken
/// to be in the config's version, as libcni does.
fn decode_result(stdout: &[u8], version: Version) -> Result<Value, Failure> {
    let value: Value = serde_json::from_slice(stdout).map_err(|e| {
        Failure::with_code(
            cni_types::error::code::DECODE,
            format!("failed to unmarshal raw result: {e}"),
        )
    })?;
    let value = if value.is_null() {
        Value::Object(Map::new())
    } else {
        value
    };
    Ok(CniResult::from_value(value, version)?.to_value(version)?)
}

/// A cached result in the list's version (libcni converts it the same way;
/// a cached result without `cniVersion` is 0.1.0 to it).
fn cached_result(value: Value, version: Version) -> Result<Value, Failure> {
    Ok(CniResult::from_value(value, cni_types::version::IMPLICIT)?.to_value(version)?)
}

pub fn add(
    rt: &Runtime,
    list: &NetworkList,
    version: Version,
    att: &Attachment,
) -> Result<Value, Failures> {
    let file = att.cache_file(rt, &list.name);
    // The spec forbids a second ADD of an attachment without DEL; the
    // plugins would fail half-way (the interface exists), so say it first.
    if file.exists() {
        return Err(Failure::new(format!(
            "container {:?} is already attached to network {:?} as {:?} (cached in {}): del it first",
            att.container_id,
            list.name,
            att.ifname,
            file.display()
        ))
        .into());
    }
    let att = Attachment {
        cni_args: Some(att.cni_args.clone().unwrap_or_default()),
        cap_args: Some(att.cap_args.clone().unwrap_or_default()),
        ..att.clone()
    };
    let mut prev: Option<Value> = None;
    for plugin in &list.plugins {
        let result = call(rt, list, plugin, "ADD", &att, prev.as_ref())
            .and_then(|out| decode_result(&out, version));
        match result {
            Ok(result) => prev = Some(result),
            Err(f) => {
                let f = f.context(format!("plugin {} failed (add)", plugin.describe()));
                return Err(undo_add(rt, list, &att, f));
            }
        }
    }
    let Some(result) = prev else {
        return Err(Failure::new(format!("network {:?} has no plugins", list.name)).into());
    };
    let entry = Entry {
        container_id: att.container_id.clone(),
        network: list.name.clone(),
        ifname: att.ifname.clone(),
        netns: att.netns.clone(),
        config: list.bytes.clone(),
        cni_args: att.cni_args.clone().unwrap_or_default(),
        cap_args: att.cap_args.clone().unwrap_or_default(),
        result: result.as_object().cloned(),
    };
    if let Err(f) = cache::write(&rt.cache_dir, &entry) {
        let f = f.context(format!(
            "failed to set network {:?} cached result",
            list.name
        ));
        return Err(undo_add(rt, list, &att, f));
    }
    Ok(result)
}

/// After a failed ADD, DEL every plugin in reverse, as a runtime does
/// (Go's cnitool leaves that to the user): nothing stays half-made.
fn undo_add(rt: &Runtime, list: &NetworkList, att: &Attachment, failure: Failure) -> Failures {
    note(format_args!(
        "ADD failed; running DEL for every plugin of {:?} to undo it",
        list.name
    ));
    let mut all = Failures::from(failure);
    for plugin in list.plugins.iter().rev() {
        if let Err(f) = call(rt, list, plugin, "DEL", att, None) {
            all.push(f.context(format!(
                "undo: plugin {} failed (delete)",
                plugin.describe()
            )));
        }
    }
    all
}

pub fn check(
    rt: &Runtime,
    list: &NetworkList,
    version: Version,
    att: &Attachment,
) -> Result<(), Failures> {
    if !version.allows_check() {
        return Err(Failure::new(format!(
            "configuration version {:?} does not support the CHECK command",
            list.cni_version
        ))
        .into());
    }
    if list.disable_check {
        note(format_args!(
            "network {:?} sets disableCheck: nothing to check",
            list.name
        ));
        return Ok(());
    }
    let file = att.cache_file(rt, &list.name);
    let cached = cache::read(&file).map_err(|f| {
        f.context(format!(
            "failed to get network {:?} cached result",
            list.name
        ))
    })?;
    // libcni would run CHECK without prevResult, which every plugin that
    // checks anything refuses; the spec rules out CHECK before ADD anyway.
    let Some(cached) = cached else {
        return Err(Failure::new(format!(
            "no cached ADD result for container {:?} ifname {:?} in network {:?} ({} is missing): CHECK compares against it, so add first",
            att.container_id,
            att.ifname,
            list.name,
            file.display()
        ))
        .into());
    };
    let att = att.or_cached(Some(&cached));
    let raw = match cached {
        Cached::Entry(e) => e.result.map(Value::Object),
        Cached::Legacy(v) => Some(v),
    };
    let prev = raw
        .map(|v| cached_result(v, version))
        .transpose()
        .map_err(|f| {
            f.context(format!(
                "failed to get network {:?} cached result",
                list.name
            ))
        })?;
    for plugin in &list.plugins {
        call(rt, list, plugin, "CHECK", &att, prev.as_ref())
            .map_err(|f| f.context(format!("plugin {} failed (check)", plugin.describe())))?;
    }
    Ok(())
}

pub fn del(
    rt: &Runtime,
    list: &NetworkList,
    version: Version,
    att: &Attachment,
) -> Result<(), Failures> {
    let file = att.cache_file(rt, &list.name);
    // An unusable cache entry must not block the DEL: it is dropped and the
    // plugins get no prevResult (libcni does the same).
    let cached = cache::read(&file).unwrap_or_else(|f| {
        note(format_args!("ignoring the cached result: {f}"));
        drop_unusable(&file);
        None
    });
    let att = att.or_cached(cached.as_ref());
    let mut prev = None;
    // Plugins get prevResult on DEL from 0.4.0 on.
    if version.allows_check() {
        let raw = match cached {
            Some(Cached::Entry(e)) => e.result.map(Value::Object),
            Some(Cached::Legacy(v)) => Some(v),
            None => None,
        };
        match raw.map(|v| cached_result(v, version)).transpose() {
            Ok(v) => prev = v,
            Err(f) => {
                note(format_args!(
                    "ignoring the cached result in {}: {f}",
                    file.display()
                ));
                drop_unusable(&file);
            }
        }
    }
    // Best effort: one plugin failing does not stop the others from
    // releasing what they hold (libcni stops at the first). The cache entry
    // stays until a DEL succeeds everywhere, so it can be retried.
    let mut failures = Failures::default();
    for plugin in list.plugins.iter().rev() {
        if let Err(f) = call(rt, list, plugin, "DEL", &att, prev.as_ref()) {
            failures.push(f.context(format!("plugin {} failed (delete)", plugin.describe())));
        }
    }
    if failures.0.is_empty() {
        cache::remove(&file)?;
    }
    failures.or_ok(())
}

/// GC the way a runtime that knows its live containers does: a cached
/// attachment whose netns is gone is stale and gets a DEL; the others are
/// the valid attachments every plugin is told to keep, under the spec's key
/// and the older one libcni also sends. (Go's cnitool passes no list, so
/// libcni DELs every cached attachment of the network and plugins get no
/// key.)
pub fn gc(rt: &Runtime, list: &NetworkList, version: Version) -> Result<(), Failures> {
    if list.disable_gc {
        note(format_args!(
            "network {:?} sets disableGC: nothing to do",
            list.name
        ));
        return Ok(());
    }
    let mut failures = Failures::default();
    let mut valid = Vec::new();
    for entry in cache::attachments(&rt.cache_dir)?
        .iter()
        .filter(|e| e.network == list.name)
    {
        // The names build the cache file's path that DEL removes: one a
        // runtime could not have written is left alone.
        let named = cni_types::validate::container_id(&entry.container_id)
            .and_then(|()| cni_types::validate::interface_name(&entry.ifname));
        if let Err(e) = named {
            note(format_args!(
                "skipping a cache entry of {:?}: {e}",
                list.name
            ));
            continue;
        }
        // Only a netns known to be gone makes an attachment stale: a path
        // that cannot be checked (EACCES, ELOOP, ...) may still be a live
        // pod's, and a DEL would cut it off.
        let gone = match entry.netns.as_str() {
            "" => false,
            netns => match Path::new(netns).try_exists() {
                Ok(exists) => !exists,
                Err(e) => {
                    note(format_args!(
                        "keeping attachment {} {}: cannot tell whether netns {netns} exists: {e}",
                        entry.container_id, entry.ifname
                    ));
                    false
                }
            },
        };
        if !gone {
            valid.push(json!({"containerID": entry.container_id, "ifname": entry.ifname}));
            continue;
        }
        match del(rt, list, version, &Attachment::from_entry(entry)) {
            Ok(()) => note(format_args!(
                "deleted stale attachment {} {} (netns {} is gone)",
                entry.container_id, entry.ifname, entry.netns
            )),
            Err(errs) => {
                for f in errs.0 {
                    failures.push(f.context(format!(
                        "failed to delete stale attachment {} {}",
                        entry.container_id, entry.ifname
                    )));
                }
            }
        }
    }
    if !version.allows_gc_and_status() {
        note(format_args!(
            "network {:?} has cniVersion {:?}: plugins get GC from 1.1.0, so only stale attachments were deleted",
            list.name, list.cni_version
        ));
        return failures.or_ok(());
    }
    let keep = Value::Array(valid);
    let extra = [
        (VALID_ATTACHMENTS_KEY, keep.clone()),
        (LEGACY_ATTACHMENTS_KEY, keep),
    ];
    for plugin in &list.plugins {
        if let Err(f) = call_network(rt, list, plugin, "GC", &extra) {
            failures.push(f.context(format!("failed to GC plugin {}", plugin.describe())));
        }
    }
    failures.or_ok(())
}

pub fn status(rt: &Runtime, list: &NetworkList, version: Version) -> Result<(), Failures> {
    if !version.allows_gc_and_status() {
        note(format_args!(
            "network {:?} has cniVersion {:?}: STATUS exists from 1.1.0, nothing to ask",
            list.name, list.cni_version
        ));
        return Ok(());
    }
    // The first plugin that is not ready answers for the network.
    for plugin in &list.plugins {
        call_network(rt, list, plugin, "STATUS", &[])
            .map_err(|f| f.context(format!("plugin {} failed (status)", plugin.describe())))?;
    }
    Ok(())
}

/// Removes a cache entry that cannot be used; a failure is noted (the entry
/// is then dropped by the DEL's own removal, or stays for a person to see).
fn drop_unusable(file: &Path) {
    if let Err(f) = cache::remove(file) {
        note(format_args!("cannot remove {}: {f}", file.display()));
    }
}
