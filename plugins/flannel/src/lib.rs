//! flannel: the meta plugin. It reads the node's subnet.env, builds a
//! bridge + host-local config from it, saves that config per container, and
//! hands every verb to the delegate.

pub mod cache;
pub mod delegate_conf;
pub mod subnet_env;

use std::path::PathBuf;

use cni_types::result::CniResult;
use cni_types::{CmdArgs, CniError, Command, Plugin, delegate};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::cache::Cache;
use crate::subnet_env::{SubnetEnv, SubnetEnvError};

pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

/// subnet.env exists but cannot be used.
pub const ERR_SUBNET_ENV: u32 = 130;
/// A saved delegate config cannot be read, written or understood.
pub const ERR_CACHE: u32 = 131;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fields {
    subnet_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    delegate: Option<Map<String, Value>>,
}

struct Config {
    subnet_file: PathBuf,
    cache: Cache,
    delegate: Map<String, Value>,
    ipam: Option<Map<String, Value>>,
}

fn load(args: &CmdArgs) -> Result<Config, CniError> {
    let fields: Fields = serde_json::from_value(Value::Object(args.conf.extra.clone()))
        .map_err(|e| CniError::invalid_config(format!("invalid flannel config: {e}")))?;
    let delegate = fields.delegate.unwrap_or_default();
    delegate_conf::validate(&delegate)?;
    let ipam = match &args.conf.ipam {
        Some(ipam) => match serde_json::to_value(ipam) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        },
        None => None,
    };
    Ok(Config {
        subnet_file: fields
            .subnet_file
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SUBNET_FILE)),
        cache: Cache::new(
            &fields
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        ),
        delegate,
        ipam,
    })
}

/// subnet.env, or the error for a verb that needs it: missing means the
/// node agent is not ready yet (try again later), malformed is a plugin error.
fn subnet_env(conf: &Config) -> Result<SubnetEnv, CniError> {
    SubnetEnv::load(&conf.subnet_file).map_err(|e| match e {
        SubnetEnvError::Unreadable(m) => CniError::try_again(m),
        SubnetEnvError::Invalid(m) => CniError::new(ERR_SUBNET_ENV, m),
    })
}

fn delegate_type(bytes: &[u8]) -> Result<String, CniError> {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v.get("type")?.as_str().map(str::to_string))
        .ok_or_else(|| CniError::new(ERR_CACHE, "the saved delegate config has no 'type'"))
}

fn cache_err(what: &str, e: std::io::Error) -> CniError {
    CniError::new(ERR_CACHE, format!("{what}: {e}"))
}

/// A saved config re-sent for CHECK or GC: the runtime's version (and
/// prevResult for CHECK) in place of what was saved.
fn with_fields(bytes: &[u8], fields: &[(&str, Value)]) -> Result<Vec<u8>, CniError> {
    let mut v: Value = serde_json::from_slice(bytes).map_err(|e| {
        CniError::new(
            ERR_CACHE,
            format!("the saved delegate config is not JSON: {e}"),
        )
    })?;
    if let Some(obj) = v.as_object_mut() {
        for (k, val) in fields {
            obj.insert((*k).to_string(), val.clone());
        }
    }
    serde_json::to_vec(&v).map_err(|e| CniError::new(ERR_CACHE, e.to_string()))
}

#[derive(Debug, Clone, Copy)]
pub struct Flannel;

impl Plugin for Flannel {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let conf = load(args)?;
        let env = subnet_env(&conf)?;
        let d = delegate_conf::build(&args.conf, &conf.delegate, conf.ipam.as_ref(), &env);
        let kind = d
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("bridge")
            .to_string();
        // Before the save: a type delegation refuses would also refuse the
        // rollback DEL, leaving the saved config behind.
        delegate::check_plugin_name(&kind).map_err(|e| e.context("'delegate' field 'type'"))?;
        let bytes = serde_json::to_vec(&d).map_err(|e| CniError::new(ERR_CACHE, e.to_string()))?;
        // Saved first: a DEL after a crash mid-ADD must find it.
        conf.cache
            .save(&args.container_id, &bytes)
            .map_err(|e| cache_err("failed to save the delegate config", e))?;
        match delegate::add(&kind, &args.path, &bytes, args.version) {
            Ok(result) => Ok(result),
            Err(e) => {
                // Undo: the delegate may have made part of the pod, and the
                // saved config must go only once that is gone (a later DEL
                // needs it otherwise).
                let mut left = Vec::new();
                match delegate::run(&kind, &args.path, Command::Del, &bytes) {
                    // A delegate that is not there made nothing either.
                    Err(err) if err.code != cni_types::error::code::PLUGIN_NOT_FOUND => left.push(
                        format!("{kind} DEL: {err} (the saved config is kept for a later DEL)"),
                    ),
                    _ => {
                        if let Err(err) = conf.cache.remove(&args.container_id) {
                            left.push(format!("removing the saved delegate config: {err}"));
                        }
                    }
                }
                Err(e.rollback_incomplete("flannel", &left))
            }
        }
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = load(args)?;
        let Some(bytes) = conf
            .cache
            .load(&args.container_id)
            .map_err(|e| cache_err("failed to read the saved delegate config", e))?
        else {
            // Nothing was delegated (the config is saved first); a save an
            // ADD killed before its rename may have left a temporary file.
            return conf
                .cache
                .remove(&args.container_id)
                .map_err(|e| cache_err("failed to remove an unfinished save", e));
        };
        let kind = delegate_type(&bytes)?;
        delegate::run(&kind, &args.path, Command::Del, &bytes)?;
        // Only now: a failed DEL keeps what a retry needs.
        conf.cache
            .remove(&args.container_id)
            .map_err(|e| cache_err("failed to remove the saved delegate config", e))
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = load(args)?;
        let bytes = conf
            .cache
            .load(&args.container_id)
            .map_err(|e| cache_err("failed to read the saved delegate config", e))?
            .ok_or_else(|| {
                CniError::new(
                    ERR_CACHE,
                    format!(
                        "no saved delegate config for container {}: was it added by flannel?",
                        args.container_id
                    ),
                )
            })?;
        let kind = delegate_type(&bytes)?;
        let mut fields = vec![("cniVersion", Value::String(args.version.as_str().into()))];
        if let Some(prev) = &args.conf.prev_result {
            fields.push(("prevResult", prev.clone()));
        }
        delegate::run(
            &kind,
            &args.path,
            Command::Check,
            &with_fields(&bytes, &fields)?,
        )
    }

    /// GC goes to the delegate once per distinct saved config (or the one
    /// subnet.env gives, when none is saved), then saved configs of
    /// containers not in the list are removed.
    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = load(args)?;
        let ids = conf
            .cache
            .list()
            .map_err(|e| cache_err("failed to list saved delegate configs", e))?;
        let mut configs: Vec<Value> = Vec::new();
        for id in &ids {
            if let Ok(Some(bytes)) = conf.cache.load(id)
                && let Ok(mut v) = serde_json::from_slice::<Value>(&bytes)
            {
                if let Some(o) = v.as_object_mut() {
                    o.remove("runtimeConfig");
                }
                if !configs.contains(&v) {
                    configs.push(v);
                }
            }
        }
        if configs.is_empty()
            && let Ok(env) = SubnetEnv::load(&conf.subnet_file)
        {
            configs.push(delegate_conf::build(
                &args.conf,
                &conf.delegate,
                conf.ipam.as_ref(),
                &env,
            ));
        }
        let mut fields = vec![("cniVersion", Value::String(args.version.as_str().into()))];
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            if let Some(list) = args.conf.gc_valid_attachments() {
                fields.push((key, serde_json::to_value(list).unwrap_or_default()));
            }
        }
        let mut failures = Vec::new();
        for c in &configs {
            let bytes =
                serde_json::to_vec(c).map_err(|e| CniError::new(ERR_CACHE, e.to_string()))?;
            let kind = delegate_type(&bytes)?;
            if let Err(e) = delegate::run(
                &kind,
                &args.path,
                Command::Gc,
                &with_fields(&bytes, &fields)?,
            ) {
                failures.push(e.to_string());
            }
        }
        if let Some(valid) = args.conf.gc_valid_attachments() {
            // Saves a killed ADD never finished count too.
            let mut stale = ids.clone();
            stale.extend(
                conf.cache
                    .unfinished()
                    .map_err(|e| cache_err("failed to list saved delegate configs", e))?,
            );
            stale.sort();
            stale.dedup();
            for id in stale
                .iter()
                .filter(|id| !valid.iter().any(|a| &a.container_id == *id))
            {
                if let Err(e) = conf.cache.remove(id) {
                    failures.push(format!("{id}: {e}"));
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(
                ERR_CACHE,
                format!("GC failed: {}", failures.join("; ")),
            ))
        }
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = load(args)?;
        let env = SubnetEnv::load(&conf.subnet_file).map_err(|e| match e {
            SubnetEnvError::Unreadable(m) | SubnetEnvError::Invalid(m) => {
                CniError::not_available(m)
            }
        })?;
        let d = delegate_conf::build(&args.conf, &conf.delegate, conf.ipam.as_ref(), &env);
        let bytes = serde_json::to_vec(&d).map_err(|e| CniError::new(ERR_CACHE, e.to_string()))?;
        let kind = delegate_type(&bytes)?;
        delegate::run(&kind, &args.path, Command::Status, &bytes)
    }

    fn about(&self) -> String {
        "CNI flannel meta plugin (cni-rs) for spec 0.1.0-1.1.0".into()
    }
}
