//! The plugin entry point: environment + stdin -> verb -> stdout.
//!
//! [`dispatch`] does all the work on an explicit environment and stdin so
//! that it can be tested without a process; [`run`] wires it to the real ones.

use std::ffi::OsString;
use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::str::FromStr;

use serde_json::Value;

use crate::args::CniArgs;
use crate::config::NetConf;
use crate::error::CniError;
use crate::result::CniResult;
use crate::validate;
use crate::version::{self, SUPPORTED, Version};

/// The most stdin a plugin reads. Configs with a large `prevResult` stay far
/// below this; anything bigger is a runaway writer, not a config.
pub const MAX_STDIN: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub const fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    /// The variables a runtime must set for this verb (as the reference
    /// skeleton requires them).
    fn required_env(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Gc | Command::Status => &["CNI_PATH"],
            Command::Version => &[],
        }
    }

    /// Verbs that act on one attachment (container ID + ifname).
    fn is_per_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Command {
    type Err = CniError;

    fn from_str(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::invalid_env(format!(
                    "unknown CNI_COMMAND: {other}"
                )));
            }
        })
    }
}

/// Everything a verb gets: the validated environment and the decoded config.
#[derive(Debug, Clone)]
pub struct CmdArgs {
    pub command: Command,
    /// Empty for GC and STATUS.
    pub container_id: String,
    /// `None` when the runtime gave none (allowed for DEL, GC and STATUS).
    pub netns: Option<PathBuf>,
    /// Empty for GC and STATUS.
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
    /// The config exactly as read, for plugins that decode their own fields.
    pub stdin: Vec<u8>,
    pub conf: NetConf,
    pub version: Version,
}

impl CmdArgs {
    /// The network name (validated to be present for every verb but VERSION).
    pub fn network_name(&self) -> &str {
        self.conf.name.as_deref().unwrap_or_default()
    }
}

/// What a plugin implements. GC and STATUS default to success, as the
/// reference skeleton does for plugins that define neither.
pub trait Plugin {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError>;
    fn del(&self, args: &CmdArgs) -> Result<(), CniError>;
    fn check(&self, args: &CmdArgs) -> Result<(), CniError>;
    fn gc(&self, _args: &CmdArgs) -> Result<(), CniError> {
        Ok(())
    }
    fn status(&self, _args: &CmdArgs) -> Result<(), CniError> {
        Ok(())
    }
    /// One line for people who run the binary by hand.
    fn about(&self) -> String;
}

/// What the process should print and how it should exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

impl Outcome {
    fn success(stdout: Vec<u8>) -> Self {
        Outcome {
            stdout,
            stderr: Vec::new(),
            exit_code: 0,
        }
    }

    fn error(err: &CniError, version: &str) -> Self {
        Outcome {
            stdout: render(&err.to_json(version)),
            stderr: Vec::new(),
            exit_code: 1,
        }
    }
}

fn render(value: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(value).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Reads the real environment and stdin, prints the outcome, exits.
pub fn run(plugin: &impl Plugin) -> ! {
    let env = |key: &str| std::env::var_os(key);
    let outcome = dispatch(plugin, env, std::io::stdin().lock());
    // Nothing useful is left to do when stdout or stderr is gone.
    let _ = std::io::stderr().write_all(&outcome.stderr);
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&outcome.stdout);
    let _ = stdout.flush();
    std::process::exit(outcome.exit_code)
}

/// Runs one invocation against the given environment and stdin.
pub fn dispatch(
    plugin: &impl Plugin,
    env: impl Fn(&str) -> Option<OsString>,
    stdin: impl Read,
) -> Outcome {
    let latest = version::LATEST.as_str();
    let Some(command) = env("CNI_COMMAND").filter(|c| !c.is_empty()) else {
        // Run by hand: say what this is, as the reference plugins do.
        return Outcome {
            stdout: Vec::new(),
            stderr: format!("{}\n", plugin.about()).into_bytes(),
            exit_code: 0,
        };
    };
    let command: Command = match command.to_str().map(str::parse) {
        Some(Ok(c)) => c,
        Some(Err(e)) => return Outcome::error(&e, latest),
        None => {
            let e = CniError::invalid_env("CNI_COMMAND is not valid UTF-8");
            return Outcome::error(&e, latest);
        }
    };
    let stdin = match read_capped(stdin) {
        Ok(bytes) => bytes,
        Err(e) => return Outcome::error(&e, latest),
    };
    if command == Command::Version {
        return version_reply(&stdin);
    }
    // The environment first, as the reference skeleton does.
    if let Err(e) = check_required_env(command, &env) {
        return Outcome::error(&e, tag_version(&stdin));
    }
    let conf = match decode_conf(&stdin) {
        Ok(conf) => conf,
        Err(e) => return Outcome::error(&e, latest),
    };
    let version = match conf.version() {
        Ok(v) => v,
        Err(e) => return Outcome::error(&e, latest),
    };
    let args = match collect_args(command, &env, stdin, conf, version) {
        Ok(args) => args,
        Err(e) => return Outcome::error(&e, version.as_str()),
    };
    let done = match command {
        Command::Add => plugin
            .add(&args)
            .and_then(|r| r.to_value(version))
            .map(Some),
        Command::Del => plugin.del(&args).map(|()| None),
        Command::Check => plugin.check(&args).map(|()| None),
        Command::Gc => plugin.gc(&args).map(|()| None),
        Command::Status => plugin.status(&args).map(|()| None),
        Command::Version => Ok(None),
    };
    match done {
        Ok(Some(result)) => Outcome::success(render(&result)),
        Ok(None) => Outcome::success(Vec::new()),
        Err(e) => Outcome::error(&e, version.as_str()),
    }
}

fn read_capped(stdin: impl Read) -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    stdin
        .take(MAX_STDIN + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CniError::io(format!("failed to read the config from stdin: {e}")))?;
    if buf.len() as u64 > MAX_STDIN {
        return Err(CniError::decode(format!(
            "the config on stdin is larger than {MAX_STDIN} bytes"
        )));
    }
    Ok(buf)
}

/// VERSION: the input's version (or the newest, when the input names none
/// or one we do not know) and every version we support.
fn version_reply(stdin: &[u8]) -> Outcome {
    let asked = if stdin.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<Value>(stdin) {
            Ok(v) => match v.get("cniVersion") {
                None => None,
                Some(Value::String(s)) => s.parse::<Version>().ok(),
                Some(other) => {
                    let err = CniError::decode(format!(
                        "decoding version from network config: cniVersion must be a string, not {other}"
                    ));
                    return Outcome::error(&err, version::LATEST.as_str());
                }
            },
            Err(e) => {
                let err = CniError::decode(format!("decoding version from network config: {e}"));
                return Outcome::error(&err, version::LATEST.as_str());
            }
        }
    };
    let reply = serde_json::json!({
        "cniVersion": asked.unwrap_or(version::LATEST),
        "supportedVersions": SUPPORTED,
    });
    Outcome::success(render(&reply))
}

/// The version to tag an error with before the config is decoded: the
/// config's own when it names a supported one.
fn tag_version(stdin: &[u8]) -> &'static str {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str()?.parse::<Version>().ok())
        .unwrap_or(version::LATEST)
        .as_str()
}

fn decode_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let value: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::decode(format!("decoding network config from stdin: {e}")))?;
    if !value.is_object() {
        return Err(CniError::decode(
            "decoding network config from stdin: expected a JSON object",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| CniError::decode(format!("decoding network config from stdin: {e}")))
}

/// A variable's value; unset and empty are the same (as in the reference).
fn env_string(
    env: &impl Fn(&str) -> Option<OsString>,
    key: &str,
) -> Result<Option<String>, CniError> {
    match env(key) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v
            .into_string()
            .map(Some)
            .map_err(|_| CniError::invalid_env(format!("{key} is not valid UTF-8"))),
    }
}

fn check_required_env(
    command: Command,
    env: &impl Fn(&str) -> Option<OsString>,
) -> Result<(), CniError> {
    let mut missing = Vec::new();
    for key in command.required_env() {
        if env_string(env, key)?.is_none() {
            missing.push(*key);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CniError::invalid_env(format!(
            "required env variables [{}] missing",
            missing.join(",")
        )))
    }
}

fn collect_args(
    command: Command,
    env: &impl Fn(&str) -> Option<OsString>,
    stdin: Vec<u8>,
    conf: NetConf,
    version: Version,
) -> Result<CmdArgs, CniError> {
    let get = |key: &str| env_string(env, key);
    validate::network_name(conf.name.as_deref().unwrap_or_default())?;
    match command {
        Command::Check if !version.allows_check() => {
            return Err(CniError::incompatible_version(format!(
                "config version {version} does not allow CHECK (needs 0.4.0 or later)"
            )));
        }
        Command::Gc | Command::Status if !version.allows_gc_and_status() => {
            return Err(CniError::incompatible_version(format!(
                "config version {version} does not allow {command} (needs 1.1.0 or later)"
            )));
        }
        _ => {}
    }
    let container_id = get("CNI_CONTAINERID")?.unwrap_or_default();
    let ifname = get("CNI_IFNAME")?.unwrap_or_default();
    if command.is_per_attachment() {
        validate::container_id(&container_id)?;
        validate::interface_name(&ifname)?;
    }
    let args = CniArgs::parse(&get("CNI_ARGS")?.unwrap_or_default())?;
    let path = std::env::split_paths(&env("CNI_PATH").unwrap_or_default())
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    Ok(CmdArgs {
        command,
        container_id,
        netns: env("CNI_NETNS")
            .filter(|n| !n.is_empty())
            .map(PathBuf::from),
        ifname,
        args,
        path,
        stdin,
        conf,
        version,
    })
}
