//! The command line and the environment, read the way Go's cnitool reads
//! them, into one [`Request`].

use std::ffi::OsString;
use std::path::PathBuf;

use cni_types::CniArgs;
use serde_json::{Map, Value};

use crate::failure::Failure;
use crate::sha512;

pub const DEFAULT_NETCONF_DIR: &str = "/etc/cni/net.d";
/// Go's cnitool has no default (an unset `CNI_PATH` finds no plugin); this
/// is where runtimes (containerd, CRI-O, podman) and this suite install them.
pub const DEFAULT_CNI_PATH: &str = "/opt/cni/bin";
/// libcni's `CacheDir`.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";
pub const DEFAULT_IFNAME: &str = "eth0";

pub const USAGE: &str = "\
cnitool: runs a CNI network's plugins by hand, the way a container runtime (libcni) does

Usage:
  cnitool [options] add    NETWORK NETNS   attach NETNS to NETWORK and print the result
  cnitool [options] check  NETWORK NETNS   check the attachment against its cached ADD result
  cnitool [options] del    NETWORK NETNS   detach it and drop its cached result
  cnitool [options] gc     NETWORK         DEL cached attachments whose netns is gone, then GC
                                           the plugins, keeping the attachments still cached
  cnitool [options] status NETWORK         ask the plugins whether they can serve ADD

  NETWORK is the `name` of a config in NETCONFPATH (*.conflist first, then *.conf and
  *.json, each set in file name order; the first match wins). NETNS is a network
  namespace file, e.g. /run/netns/NAME; del needs none when --container-id is given.
  CHECK needs cniVersion 0.4.0 or later; GC and STATUS reach the plugins from 1.1.0.

Options:
  -i, --ifname NAME        interface inside NETNS (default: $CNI_IFNAME, else eth0)
      --container-id ID    container ID (default: cnitool- and the hex of the first
                           10 bytes of the sha512 of NETNS's absolute path)
      --cache-dir DIR      libcni's cache directory (default: $CNI_CACHE_DIR, else /var/lib/cni)
  -h, --help               print this help
  -V, --version            print the version

Environment:
  NETCONFPATH    config directory (default /etc/cni/net.d)
  CNI_PATH       plugin directories, colon-separated (default /opt/cni/bin)
  CNI_IFNAME     as --ifname
  CNI_ARGS       KEY=VALUE;KEY2=VALUE2 for the plugins (del and check reuse ADD's when unset)
  CAP_ARGS       capability arguments, a JSON object such as {\"portMappings\":[...]}; each
                 plugin gets as runtimeConfig the ones its `capabilities` declare (del and
                 check reuse ADD's when unset)
  CNI_CACHE_DIR  as --cache-dir

The result of add is printed on stdout. Errors go to stderr, a plugin's with its CNI error
code; the exit status is then 1, and 2 for a command line cnitool does not understand.
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Check,
    Del,
    Gc,
    Status,
}

impl Verb {
    fn parse(word: &str) -> Option<Verb> {
        Some(match word {
            "add" => Verb::Add,
            "check" => Verb::Check,
            "del" => Verb::Del,
            "gc" => Verb::Gc,
            "status" => Verb::Status,
            _ => return None,
        })
    }

    /// ADD, CHECK and DEL act on one attachment; GC and STATUS on the network.
    pub fn per_attachment(self) -> bool {
        matches!(self, Verb::Add | Verb::Check | Verb::Del)
    }
}

/// Everything one run needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub verb: Verb,
    pub network: String,
    /// Absolute and cleaned; empty for gc/status and a del by container ID.
    pub netns: String,
    /// Empty for gc/status.
    pub container_id: String,
    pub ifname: String,
    /// `None` when `CNI_ARGS` is unset or empty.
    pub cni_args: Option<Vec<(String, String)>>,
    /// `None` when `CAP_ARGS` is unset or empty.
    pub cap_args: Option<Map<String, Value>>,
    pub netconf_dir: PathBuf,
    pub cni_path: Vec<PathBuf>,
    pub cache_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Run(Box<Request>),
    Help,
    Version,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgsError {
    /// The command line is wrong: usage text and exit status 2.
    Usage(String),
    /// An environment variable is unusable.
    Env(Failure),
}

/// What the process sees: its environment and working directory.
pub trait Context {
    fn var(&self, key: &str) -> Option<OsString>;
    fn cwd(&self) -> std::io::Result<PathBuf>;
}

/// The real process environment.
#[derive(Debug)]
pub struct Process;

impl Context for Process {
    fn var(&self, key: &str) -> Option<OsString> {
        std::env::var_os(key)
    }

    fn cwd(&self) -> std::io::Result<PathBuf> {
        std::env::current_dir()
    }
}

fn usage(msg: impl Into<String>) -> ArgsError {
    ArgsError::Usage(msg.into())
}

/// Reads `argv` (program name first) and the environment.
pub fn parse(argv: Vec<OsString>, ctx: &dyn Context) -> Result<Parsed, ArgsError> {
    let mut positional = Vec::new();
    let mut ifname = None;
    let mut container_id = None;
    let mut cache_dir = None;
    let mut args = argv.into_iter().skip(1);
    let mut options_done = false;
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|a| usage(format!("argument {a:?} is not valid UTF-8")))?;
        if options_done || !arg.starts_with('-') || arg == "-" {
            positional.push(arg);
            continue;
        }
        if arg == "--" {
            options_done = true;
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_string())),
            _ => (arg.as_str(), None),
        };
        let slot = match name {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            "-i" | "--ifname" => &mut ifname,
            "--container-id" => &mut container_id,
            "--cache-dir" => &mut cache_dir,
            _ => return Err(usage(format!("unknown option {name:?}"))),
        };
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| usage(format!("option {name} needs a value")))?
                .into_string()
                .map_err(|a| usage(format!("the value {a:?} of {name} is not valid UTF-8")))?,
        };
        *slot = Some(value);
    }

    let mut positional = positional.into_iter();
    let Some(word) = positional.next() else {
        return Err(usage("no command given"));
    };
    if word == "help" {
        return Ok(Parsed::Help);
    }
    let verb = Verb::parse(&word).ok_or_else(|| usage(format!("unknown command {word:?}")))?;
    let network = positional
        .next()
        .ok_or_else(|| usage(format!("{word} needs a NETWORK name")))?;
    let netns = positional.next();
    if let Some(extra) = positional.next() {
        return Err(usage(format!("unexpected argument {extra:?}")));
    }
    if netns.as_deref() == Some("") {
        return Err(usage("NETNS is empty"));
    }

    let mut request = Request {
        verb,
        network,
        netns: String::new(),
        container_id: String::new(),
        ifname: String::new(),
        cni_args: None,
        cap_args: None,
        netconf_dir: var_path(ctx, "NETCONFPATH")
            .unwrap_or_else(|| PathBuf::from(DEFAULT_NETCONF_DIR)),
        cni_path: cni_path(ctx),
        cache_dir: match cache_dir {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => var_path(ctx, "CNI_CACHE_DIR").unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR)),
        },
    };
    if !verb.per_attachment() {
        // Go's cnitool wants a NETNS here too and ignores it; so do we.
        return Ok(Parsed::Run(Box::new(request)));
    }

    request.netns = match netns {
        Some(path) => absolute(&path, ctx)?,
        None if verb == Verb::Del && container_id.is_some() => String::new(),
        None => return Err(usage(format!("{word} needs NETWORK and NETNS"))),
    };
    request.container_id = match container_id {
        Some(id) => id,
        None => derived_container_id(&request.netns),
    };
    request.ifname = match ifname {
        Some(name) => name,
        None => match var_string(ctx, "CNI_IFNAME")? {
            Some(name) if !name.is_empty() => name,
            _ => DEFAULT_IFNAME.to_string(),
        },
    };
    request.cni_args = match var_string(ctx, "CNI_ARGS")? {
        Some(raw) if !raw.is_empty() => {
            let parsed = CniArgs::parse(&raw).map_err(|e| ArgsError::Env(e.into()))?;
            Some(parsed.pairs().to_vec())
        }
        _ => None,
    };
    request.cap_args = match var_string(ctx, "CAP_ARGS")? {
        Some(raw) if !raw.is_empty() => Some(cap_args(&raw)?),
        _ => None,
    };
    Ok(Parsed::Run(Box::new(request)))
}

fn var_path(ctx: &dyn Context, key: &str) -> Option<PathBuf> {
    ctx.var(key).filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn var_string(ctx: &dyn Context, key: &str) -> Result<Option<String>, ArgsError> {
    ctx.var(key)
        .map(|v| {
            v.into_string()
                .map_err(|_| ArgsError::Env(Failure::new(format!("{key} is not valid UTF-8"))))
        })
        .transpose()
}

/// `CNI_PATH` split on `:`, empty entries skipped (Go would look for the
/// plugin in the working directory for them).
fn cni_path(ctx: &dyn Context) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = ctx
        .var("CNI_PATH")
        .map(|raw| {
            std::env::split_paths(&raw)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if dirs.is_empty() {
        vec![PathBuf::from(DEFAULT_CNI_PATH)]
    } else {
        dirs
    }
}

fn cap_args(raw: &str) -> Result<Map<String, Value>, ArgsError> {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(Value::Null) => Ok(Map::new()),
        Ok(_) => Err(ArgsError::Env(Failure::new(
            "CAP_ARGS must be a JSON object of capability arguments",
        ))),
        Err(e) => Err(ArgsError::Env(Failure::new(format!(
            "CAP_ARGS is not valid JSON: {e}"
        )))),
    }
}

/// Go's `filepath.Abs`: joined to the working directory when relative,
/// then cleaned lexically (symlinks are not resolved).
fn absolute(path: &str, ctx: &dyn Context) -> Result<String, ArgsError> {
    if path.starts_with('/') {
        return Ok(clean(path));
    }
    let cwd = ctx.cwd().map_err(|e| {
        ArgsError::Env(Failure::new(format!(
            "cannot read the working directory: {e}"
        )))
    })?;
    let cwd = cwd
        .to_str()
        .ok_or_else(|| ArgsError::Env(Failure::new("the working directory is not valid UTF-8")))?;
    Ok(clean(&format!("{cwd}/{path}")))
}

/// Go's `filepath.Clean` on a Unix path.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_string()
    } else {
        joined
    }
}

/// The container ID Go's cnitool uses: one per netns path, so that ADD and
/// DEL of the same namespace meet in the same cache entry.
pub fn derived_container_id(abs_netns: &str) -> String {
    let digest = sha512::digest(abs_netns.as_bytes());
    format!("cnitool-{}", sha512::hex(&digest[..10]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Fake(BTreeMap<&'static str, &'static str>);

    impl Context for Fake {
        fn var(&self, key: &str) -> Option<OsString> {
            self.0.get(key).map(OsString::from)
        }
        fn cwd(&self) -> std::io::Result<PathBuf> {
            Ok(PathBuf::from("/work/dir"))
        }
    }

    fn run(args: &[&str], env: &[(&'static str, &'static str)]) -> Result<Parsed, ArgsError> {
        let argv = std::iter::once("cnitool")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        parse(argv, &Fake(env.iter().copied().collect()))
    }

    fn request(args: &[&str], env: &[(&'static str, &'static str)]) -> Request {
        match run(args, env) {
            Ok(Parsed::Run(r)) => *r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_like_go_cnitool() {
        let r = request(&["add", "mynet", "/run/netns/foo"], &[]);
        assert_eq!(r.verb, Verb::Add);
        assert_eq!(r.network, "mynet");
        assert_eq!(r.netns, "/run/netns/foo");
        // "cnitool-" + the first 10 bytes of sha512("/run/netns/foo").
        assert_eq!(r.container_id, "cnitool-254dc2c1a36160f60f59");
        assert_eq!(r.ifname, "eth0");
        assert_eq!(r.cni_args, None);
        assert_eq!(r.cap_args, None);
        assert_eq!(r.netconf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(r.cni_path, [PathBuf::from("/opt/cni/bin")]);
        assert_eq!(r.cache_dir, PathBuf::from("/var/lib/cni"));
    }

    #[test]
    fn environment_and_options() {
        let env = [
            ("NETCONFPATH", "/etc/x"),
            ("CNI_PATH", "/a::/b"),
            ("CNI_IFNAME", "net1"),
            ("CNI_ARGS", "IgnoreUnknown=1;K=a=b;"),
            ("CAP_ARGS", r#"{"mac":"c2:11:22:33:44:55"}"#),
            ("CNI_CACHE_DIR", "/tmp/c"),
        ];
        let r = request(&["del", "n", "ns/../foo"], &env);
        assert_eq!(r.netns, "/work/dir/foo");
        assert_eq!(r.ifname, "net1");
        assert_eq!(r.cni_path, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(
            r.cni_args,
            Some(vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K".into(), "a=b".into())
            ])
        );
        assert_eq!(r.cap_args.unwrap()["mac"], "c2:11:22:33:44:55");
        assert_eq!(r.cache_dir, PathBuf::from("/tmp/c"));
        let r = request(
            &[
                "--cache-dir=/d",
                "-i",
                "eth9",
                "del",
                "--container-id",
                "abc",
                "n",
            ],
            &env,
        );
        assert_eq!(
            (
                r.cache_dir,
                r.ifname.as_str(),
                r.container_id.as_str(),
                r.netns.as_str()
            ),
            (PathBuf::from("/d"), "eth9", "abc", "")
        );
        let r = request(&["gc", "n"], &[]);
        assert_eq!((r.netns.as_str(), r.container_id.as_str()), ("", ""));
        let r = request(&["status", "n", "/ignored"], &[]);
        assert_eq!(r.netns, "");
    }

    #[test]
    fn bad_usage_and_bad_environment() {
        for args in [
            &[][..],
            &["frob", "n", "/x"],
            &["add", "n"],
            &["add"],
            &["check", "n", "/x", "y"],
            &["del", "n"],
            &["add", "n", ""],
            &["--bogus", "add", "n", "/x"],
            &["add", "n", "/x", "--ifname"],
        ] {
            assert!(
                matches!(run(args, &[]), Err(ArgsError::Usage(_))),
                "{args:?}"
            );
        }
        assert_eq!(run(&["add", "--help"], &[]), Ok(Parsed::Help));
        assert_eq!(run(&["help"], &[]), Ok(Parsed::Help));
        assert_eq!(run(&["-V"], &[]), Ok(Parsed::Version));
        for env in [
            [("CAP_ARGS", "[1]")],
            [("CAP_ARGS", "{")],
            [("CNI_ARGS", "novalue")],
        ] {
            assert!(
                matches!(run(&["add", "n", "/x"], &env), Err(ArgsError::Env(_))),
                "{env:?}"
            );
        }
    }

    #[test]
    fn cleans_paths_like_go() {
        for (raw, want) in [
            ("/a/b/../c/./d/", "/a/c/d"),
            ("//x//y", "/x/y"),
            ("/..", "/"),
            ("/", "/"),
            ("a/../..", ".."),
            ("", "."),
        ] {
            assert_eq!(clean(raw), want, "{raw}");
        }
    }
}
