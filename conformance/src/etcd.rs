//! etcd for tests and benchmarks (Debian's etcd-server, one member),
//! started inside a test namespace, stopped on drop; and `etcdctl` run
//! against it from that namespace (Debian's etcd-client).
//!
//! One type for every user: the lease store tests (etcd alone in a
//! namespace of its own, data in memory), the simulated clusters (etcd on
//! the underlay in the switch namespace, also over TLS) and the benchmarks.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{http_request, parse_lease_list};
use crate::daemon::{Daemon, DaemonOptions};
use crate::{TempDir, TestNetns};

pub const ETCD_BIN: &str = "/usr/bin/etcd";
/// How long etcd may take to answer after it was started.
const UP_WITHIN: Duration = Duration::from_secs(20);

/// How an [`Etcd`] is started, beyond where.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// More flags for etcd (e.g. its TLS certificate).
    pub server_flags: Vec<String>,
    /// Flags every `etcdctl` call gets (e.g. the CA and a client
    /// certificate for TLS).
    pub ctl_flags: Vec<String>,
    /// See [`DaemonOptions::die_with_parent`].
    pub die_with_parent: bool,
}

/// One etcd member serving clients at `url` inside a namespace; its data
/// in `dir/etcd` (kept across [`Etcd::stop`] and [`Etcd::start_again`]),
/// its log in `dir/etcd.log`.
#[derive(Debug)]
pub struct Etcd {
    // Dropped in order: etcd stops before its namespace and data go.
    daemon: Option<Daemon>,
    ns: TestNetns,
    _own_dir: Option<TempDir>,
    url: String,
    dir: PathBuf,
    opts: EtcdOptions,
}

impl Etcd {
    /// etcd in `ns` at `url` (e.g. `http://192.168.77.1:2379`), its data
    /// under `dir`; returns once it answers. Fails the test otherwise.
    pub fn start(ns: &TestNetns, url: &str, dir: &Path) -> Etcd {
        Self::start_with(ns, url, dir, EtcdOptions::default())
    }

    /// As [`Etcd::start`], with `opts`.
    pub fn start_with(ns: &TestNetns, url: &str, dir: &Path, opts: EtcdOptions) -> Etcd {
        Self::try_start(ns, url, dir, opts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Etcd::start_with`], with an error instead of a failed test.
    pub fn try_start(
        ns: &TestNetns,
        url: &str,
        dir: &Path,
        opts: EtcdOptions,
    ) -> Result<Etcd, String> {
        let mut etcd = Etcd {
            daemon: None,
            ns: ns.handle(),
            _own_dir: None,
            url: url.to_string(),
            dir: dir.to_path_buf(),
            opts,
        };
        etcd.try_start_again()?;
        Ok(etcd)
    }

    /// etcd alone on 127.0.0.1:2379 in a namespace of its own (`tag`),
    /// its data in memory (/dev/shm when there is one), so that thousands
    /// of writes do not wait on the disk. The namespace and data go on drop.
    pub fn alone(tag: &str) -> Etcd {
        let ns = TestNetns::new(tag);
        let dir = TempDir::in_memory(tag);
        let mut etcd = Etcd {
            daemon: None,
            ns,
            url: "http://127.0.0.1:2379".into(),
            dir: dir.path().to_path_buf(),
            _own_dir: Some(dir),
            opts: EtcdOptions::default(),
        };
        etcd.try_start_again().unwrap_or_else(|e| panic!("{e}"));
        etcd
    }

    /// The client URL, as agents are given it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The client address (for clients made inside [`Etcd::ns`]).
    pub fn client_addr(&self) -> SocketAddr {
        let hostport = self.url.split("://").nth(1).unwrap_or(&self.url);
        hostport
            .parse()
            .unwrap_or_else(|e| panic!("etcd URL {}: {e}", self.url))
    }

    /// The namespace etcd runs in.
    pub fn ns(&self) -> &TestNetns {
        &self.ns
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.daemon.as_ref().and_then(Daemon::pid)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// Stops etcd (SIGTERM); its data stays.
    pub fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop();
        }
    }

    /// Starts the stopped etcd again on its data (or none, after
    /// [`Etcd::wipe`]); returns once it answers.
    pub fn start_again(&mut self) {
        self.try_start_again().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Its data gone, as after a rebuilt control plane. Stop it first.
    pub fn wipe(&self) {
        assert!(self.daemon.is_none(), "stop etcd before wiping its data");
        std::fs::remove_dir_all(self.dir.join("etcd")).unwrap();
    }

    fn try_start_again(&mut self) -> Result<(), String> {
        assert!(self.daemon.is_none(), "etcd runs already");
        if !Path::new(ETCD_BIN).is_file() {
            return Err(format!(
                "{ETCD_BIN} is missing: apt-get install etcd-server etcd-client (scripts/test.sh does)"
            ));
        }
        let host = self
            .url
            .split("://")
            .nth(1)
            .and_then(|r| r.rsplit_once(':'))
            .map(|(host, _)| host.to_string())
            .ok_or_else(|| format!("etcd URL without a port: {}", self.url))?;
        let peer = format!("http://{host}:2380");
        let data = self.dir.join("etcd").display().to_string();
        let mut args: Vec<String> = [
            "--name",
            "test",
            "--data-dir",
            &data,
            "--listen-client-urls",
            &self.url,
            "--advertise-client-urls",
            &self.url,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("test={peer}"),
            "--logger",
            "zap",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.opts.server_flags.iter().cloned());
        let spawn = DaemonOptions {
            die_with_parent: self.opts.die_with_parent,
            ..DaemonOptions::default()
        };
        let log = self.dir.join("etcd.log");
        let mut daemon = Daemon::try_start(Path::new(ETCD_BIN), &args, &self.ns, &log, &spawn)?;
        let deadline = Instant::now() + UP_WITHIN;
        while !self.answers() {
            if !daemon.alive() || Instant::now() > deadline {
                daemon.stop();
                return Err(format!("etcd did not come up: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.daemon = Some(daemon);
        Ok(())
    }

    /// Whether etcd says it is healthy: `GET /health` over plain HTTP
    /// (no process to start: the benchmarks need no etcdctl), else
    /// `etcdctl endpoint health` with the TLS flags.
    fn answers(&self) -> bool {
        if self.url.starts_with("http://") {
            let addr = self.client_addr();
            let conn = self
                .ns
                .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok());
            conn.is_some_and(|s| http_request(s, "/health").0 == 200)
        } else {
            self.try_ctl(&["endpoint", "health"]).is_some()
        }
    }

    /// `etcdctl --endpoints URL <args>` in etcd's namespace: its stdout,
    /// or `None` when it fails.
    pub fn try_ctl(&self, args: &[&str]) -> Option<String> {
        let out = self.run_ctl(args);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// As [`Etcd::try_ctl`]; a failure fails the test.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.run_ctl(args);
        assert!(
            out.status.success(),
            "etcdctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn run_ctl(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["--endpoints", &self.url];
        all.extend(self.opts.ctl_flags.iter().map(String::as_str));
        all.extend_from_slice(args);
        self.ns.exec("etcdctl", &all)
    }

    /// The keys under `prefix`, without it.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.ctl(&["get", "--prefix", "--keys-only", prefix])
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(str::to_string)
            .collect()
    }

    /// The ids (hex, as etcdctl prints them) of `etcdctl lease list`.
    pub fn lease_ids(&self) -> Vec<String> {
        parse_lease_list(&self.ctl(&["lease", "list"]))
    }

    /// Every etcd lease, as numbers, in order.
    pub fn leases(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .lease_ids()
            .iter()
            .map(|id| i64::from_str_radix(id, 16).unwrap())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// A key's etcd lease (0: none) and mod revision; fails the test when
    /// the key is not there.
    pub fn lease_and_revision(&self, key: &str) -> (i64, i64) {
        let v: Value = serde_json::from_str(&self.ctl(&["get", key, "-w", "json"])).unwrap();
        let kv = &v["kvs"][0];
        assert!(kv.is_object(), "{key} is not in etcd: {v}");
        (
            kv["lease"].as_i64().unwrap_or(0),
            kv["mod_revision"].as_i64().unwrap(),
        )
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let v: Value = serde_json::from_str(&self.ctl(&["get", "/", "-w", "json"])).unwrap();
        v["header"]["revision"].as_i64().unwrap()
    }

    /// Seconds left on etcd lease `id`.
    pub fn seconds_left(&self, id: i64) -> i64 {
        let hex = format!("{id:x}");
        let v: Value =
            serde_json::from_str(&self.ctl(&["lease", "timetolive", &hex, "-w", "json"])).unwrap();
        v["ttl"].as_i64().unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
