//! Running a host-local binary the way a runtime does: one process per call,
//! the CNI_* environment and nothing else, the network config on stdin.

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const NETWORK: &str = "benchnet";
const CNI_VERSION: &str = "1.0.0";
/// host-local never opens the namespace, so any path will do.
const NETNS: &str = "/var/run/netns/bench";
pub const IFNAME: &str = "eth0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
        }
    }
}

/// One implementation under test.
#[derive(Debug, Clone)]
pub struct Plugin {
    pub label: &'static str,
    path: PathBuf,
    cni_path: PathBuf,
}

impl Plugin {
    pub fn new(label: &'static str, path: &Path) -> Result<Plugin, String> {
        let path = path
            .canonicalize()
            .map_err(|e| format!("{label}: cannot find {}: {e}", path.display()))?;
        let cni_path = path
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| format!("{label}: {} has no parent dir", path.display()))?;
        Ok(Plugin {
            label,
            path,
            cni_path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts one call and hands it its config; the caller waits for it.
    pub fn spawn(&self, verb: Verb, container_id: &str, config: &[u8]) -> Result<Child, String> {
        let mut child = Command::new(&self.path)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("CNI_COMMAND", verb.as_str())
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", NETNS)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: cannot run {}: {e}", self.label, self.path.display()))?;
        // The config is far smaller than a pipe buffer, so this never blocks
        // on the child; closing stdin marks the end of the config.
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| format!("{}: no stdin pipe", self.label))?;
        match stdin.write_all(config) {
            // It exited without reading: its status and output tell why.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            Err(e) => return Err(format!("{}: cannot write the config: {e}", self.label)),
            Ok(()) => {}
        }
        drop(stdin);
        Ok(child)
    }

    /// Runs one call to its end; the time covers exec to exit, as a runtime
    /// sees it.
    pub fn run(
        &self,
        verb: Verb,
        container_id: &str,
        config: &[u8],
    ) -> Result<(Duration, Output), String> {
        let start = Instant::now();
        let child = self.spawn(verb, container_id, config)?;
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{}: waiting for {}: {e}", self.label, verb.as_str()))?;
        Ok((start.elapsed(), out))
    }
}

/// The network config a runtime would send for one host-local range.
pub fn config(data_dir: &Path, subnet: &str) -> Result<Vec<u8>, String> {
    let data_dir = data_dir
        .to_str()
        .ok_or_else(|| format!("data dir {} is not UTF-8", data_dir.display()))?;
    let conf = json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK,
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir,
            "ranges": [[{ "subnet": subnet }]],
        },
    });
    serde_json::to_vec(&conf).map_err(|e| format!("cannot encode the config: {e}"))
}

/// Fails with the plugin's own words unless the call exited 0.
pub fn check_success(
    plugin: &Plugin,
    verb: Verb,
    container_id: &str,
    out: &Output,
) -> Result<(), String> {
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{}: {} of {container_id} failed ({}):\n  stdout: {}\n  stderr: {}",
        plugin.label,
        verb.as_str(),
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim(),
    ))
}

/// The single IPv4 address of an ADD result, without its prefix length.
pub fn added_address(
    plugin: &Plugin,
    container_id: &str,
    out: &Output,
) -> Result<Ipv4Addr, String> {
    let bad = |why: &str| {
        format!(
            "{}: ADD of {container_id}: {why}: {}",
            plugin.label,
            String::from_utf8_lossy(&out.stdout).trim()
        )
    };
    let result: Value = serde_json::from_slice(&out.stdout).map_err(|e| bad(&e.to_string()))?;
    let ips = result
        .get("ips")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"ips\" in the result"))?;
    let [ip] = ips.as_slice() else {
        return Err(bad("expected exactly one address"));
    };
    let cidr = ip
        .get("address")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("an entry of \"ips\" has no \"address\""))?;
    let addr = cidr.split_once('/').map_or(cidr, |(a, _)| a);
    addr.parse().map_err(|_| bad("the address is not IPv4"))
}
