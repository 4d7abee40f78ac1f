//! Debian's containerd with its CRI plugin, run inside a simulated host:
//! the host's network namespace (made by the test) and a private mount
//! namespace of its own, in which `/run` and `/var/lib` are bind mounts of
//! directories in this runtime's scratch directory. So every path
//! containerd, its shims, runc and libcni use (state, shim sockets, sandbox
//! netns pins, the libcni cache, host-local's store, flannel's cache) lives
//! in the scratch directory, and the machine's own `/opt/cni/bin`,
//! `/etc/cni/net.d` and containerd state are never touched.
//!
//! As the host sees them: `<dir>/run` is the runtime's `/run` (put
//! `flannel/subnet.env` there) and `<dir>/varlib` its `/var/lib`.
//!
//! Dropping it stops every pod through the CRI, stops containerd, kills
//! shims and pods that outlived it, and removes their cgroups and the
//! scratch directory, also when the test failed.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::client::CriClient;
use super::image::{PAUSE_IMAGE, build_pause_image};
use super::wire;
use crate::netns::TestNetns;
use crate::wait_for;

static NEXT: AtomicU32 = AtomicU32::new(0);

const CONTAINERD: &str = "/usr/bin/containerd";

/// Where the machine mounts its cgroup hierarchies.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug)]
pub struct Containerd {
    dir: PathBuf,
    socket: PathBuf,
    /// Pod cgroups go under this parent in every hierarchy.
    cgroup_parent: String,
    child: Option<Child>,
    /// containerd's private mount namespace (`mnt:[inode]`).
    mount_ns: Option<String>,
    client: Option<CriClient>,
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn config_toml(dir: &Path, socket: &Path, cni_bin: &Path, cni_conf: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{socket}"

# The default, /opt/containerd, would be made on the machine.
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # runc here cannot lower oom_score_adj.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/state/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
        socket = socket.display(),
        bin = cni_bin.display(),
        conf = cni_conf.display(),
    )
}

/// Runs in the new mount namespace, inside the host's network namespace.
/// A fresh sysfs for that namespace (as `ip netns exec` mounts) with the
/// cgroup tree moved over it, which `ip netns exec` would lose and runc
/// needs; then `/run` and `/var/lib` hidden behind our directories, and
/// containerd's root on a tmpfs, since overlayfs snapshots cannot have their
/// upper layer on an overlayfs (what /tmp is on a machine whose root is one).
/// `-n`: the machine's `/run/mount/utab` is not written. `@EXTRA@` is where
/// [`ContainerdOptions`] adds its mounts.
const INNER: &str = r#"#!/bin/sh
set -eu
d=$1
mount -n --rbind /sys/fs/cgroup "$d/mnt"
mount -n -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -n --move "$d/mnt" /sys/fs/cgroup
mount -n --bind "$d/run" /run
mount -n --bind "$d/varlib" /var/lib
mount -n -t tmpfs -o mode=0700 tmpfs "$d/root"
# bind_over SRC TARGET: SRC over TARGET; a missing TARGET is made on a
# writable overlay (its upper layer on a tmpfs here) of its nearest
# existing parent, so the machine's own tree is never written. Never an
# overlay of /: it would hide every mount under it (/tmp, /proc, ...); a
# missing top-level directory (/opt on a minimal machine) is made, empty,
# as any CNI install would.
bind_over() {
  if [ ! -e "$2" ]; then
    p=$(dirname "$2")
    while [ ! -d "$p" ]; do p=$(dirname "$p"); done
    if [ "$p" = / ]; then
      p=/$(printf '%s' "$2" | cut -d/ -f2)
      mkdir -p "$p"
    fi
    o="$d/ov$(printf '%s' "$p" | tr / _)"
    if [ ! -d "$o" ]; then
      mkdir -p "$o"
      mount -n -t tmpfs tmpfs "$o"
      mkdir "$o/u" "$o/w"
      mount -n -t overlay overlay -o "lowerdir=$p,upperdir=$o/u,workdir=$o/w" "$p"
    fi
    if [ -d "$1" ]; then mkdir -p "$2"; else mkdir -p "$(dirname "$2")"; : >"$2"; fi
  fi
  mount -n --bind "$1" "$2"
}
@EXTRA@
exec containerd -c "$d/config.toml"
"#;

/// What [`Containerd::start_with`] adds to [`Containerd::start`]'s set-up,
/// for a node that a real kubelet runs in the same mount namespace.
#[derive(Debug, Clone, Default)]
pub struct ContainerdOptions {
    /// Directories made in the runtime's scratch directory (by their name
    /// there) and bind-mounted over absolute paths of its mount namespace:
    /// e.g. `("cni-bin", "/opt/cni/bin")`, so a DaemonSet's hostPath
    /// volumes land in the scratch directory.
    pub binds: Vec<(String, String)>,
    /// Files under `/proc/sys` that read as the given value in the mount
    /// namespace (a file of ours bind-mounted over them; a write lands in
    /// it): kubelet "corrects" machine-wide sysctls (`kernel/panic`,
    /// `vm/overcommit_memory`, ...) that a test must not change.
    pub sysctls: Vec<(String, String)>,
    /// Return when the runtime is ready, without waiting for a CNI
    /// network config (which a DaemonSet will install).
    pub no_network_yet: bool,
}
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) S ...: comm may hold spaces, so look after the last ')'.
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// Running (a zombie is not: the machine's init reaps orphans lazily).
fn alive(pid: u32) -> bool {
    process_state(pid).is_some_and(|s| s != 'Z')
}

fn kill9(pid: u32) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Containerd {
    /// Starts containerd in `host` with the CRI's CNI plugin pointed at
    /// `cni_bin` and `cni_conf`, waits until the CRI reports the runtime and
    /// the network ready, and imports the pause image.
    pub fn start(host: &TestNetns, cni_bin: &Path, cni_conf: &Path) -> Containerd {
        Self::start_with(host, cni_bin, cni_conf, &ContainerdOptions::default())
    }

    /// As [`Containerd::start`], set up as `opts` say (`cni_bin` and
    /// `cni_conf` are paths in its mount namespace).
    pub fn start_with(
        host: &TestNetns,
        cni_bin: &Path,
        cni_conf: &Path,
        opts: &ContainerdOptions,
    ) -> Containerd {
        assert!(
            Path::new(CONTAINERD).is_file() && Path::new("/usr/bin/ctr").is_file(),
            "apt-get install containerd runc (scripts/test.sh does)"
        );
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("cnirs-cri-{}-{n}", std::process::id());
        // Short: the socket path (plus ".ttrpc") must fit in 108 bytes.
        let dir = std::env::temp_dir().join(&name);
        for sub in ["root", "state", "run", "varlib", "opt", "mnt"] {
            std::fs::create_dir_all(dir.join(sub)).expect("cannot make the runtime's directories");
        }
        let socket = dir.join("c.sock");
        let mut rt = Containerd {
            dir: dir.clone(),
            socket: socket.clone(),
            cgroup_parent: name,
            child: None,
            mount_ns: None,
            client: None,
        };
        write(
            &dir.join("config.toml"),
            &config_toml(&dir, &socket, cni_bin, cni_conf),
        );
        let mut extra = String::new();
        for (name, target) in &opts.binds {
            std::fs::create_dir_all(dir.join(name)).expect("cannot make a bind-mounted directory");
            extra.push_str(&format!("bind_over \"$d/{name}\" {target}\n"));
        }
        for (i, (key, value)) in opts.sysctls.iter().enumerate() {
            write(&dir.join(format!("sysctl{i}")), &format!("{value}\n"));
            extra.push_str(&format!(
                "if [ -e /proc/sys/{key} ]; then mount -n --bind \"$d/sysctl{i}\" /proc/sys/{key}; fi\n"
            ));
        }
        write(&dir.join("inner.sh"), &INNER.replace("@EXTRA@", &extra));
        let image = dir.join("pause.tar");
        build_pause_image(&dir.join("image"), &image);

        let log = std::fs::File::create(dir.join("containerd.log")).expect("cannot make the log");
        let log2 = log.try_clone().expect("cannot duplicate the log");
        // nsenter, unshare and sh all exec: the child's pid is containerd's.
        let child = Command::new("nsenter")
            .arg(format!("--net={}", host.path().display()))
            .args(["--", "unshare", "--mount", "--propagation", "private", "--"])
            .arg("/bin/sh")
            .arg(dir.join("inner.sh"))
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a Ctrl-C of the test run is ours to handle.
            .process_group(0)
            .spawn()
            .expect("cannot start containerd");
        let pid = child.id();
        rt.child = Some(child);

        // Its name, not /proc/<pid>/exe: seen from outside its mount
        // namespace (under a chroot) the exe path may not read as ours.
        let comm = format!("/proc/{pid}/comm");
        assert!(
            wait_for(Duration::from_secs(10), || {
                std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "containerd")
            }),
            "containerd did not start: {}",
            rt.log()
        );
        rt.mount_ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
            .ok()
            .map(|p| p.display().to_string());

        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            if socket.exists()
                && let Ok(c) = CriClient::connect(&socket)
                && c.conditions().is_ok_and(|conds| {
                    if opts.no_network_yet {
                        conds.iter().any(|c| c.r#type == "RuntimeReady" && c.status)
                    } else {
                        conds.iter().filter(|c| c.status).count() >= 2
                            && conds.iter().all(|c| c.status)
                    }
                })
            {
                break c;
            }
            assert!(
                Instant::now() < deadline && alive(pid),
                "containerd's CRI did not become ready (runtime and network): {}",
                rt.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        rt.client = Some(client);

        rt.import(&image);
        rt
    }

    /// Imports the image archive `file` (`ctr -n k8s.io images import`).
    pub fn import(&self, file: &Path) {
        let out = Command::new("ctr")
            .args(["-n", "k8s.io", "--address"])
            .arg(&self.socket)
            .args(["images", "import"])
            .arg(file)
            .output()
            .expect("cannot run ctr");
        assert!(
            out.status.success(),
            "ctr images import {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The CRI socket, for a kubelet.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The cgroup every pod goes under (`/<name>`), for a kubelet's
    /// `--cgroup-root`: so its pods are found and removed on drop.
    pub fn cgroup_root(&self) -> String {
        format!("/{}", self.cgroup_parent)
    }

    /// containerd's pid, for programs that must share its mount namespace
    /// (kubelet, kube-proxy: `nsenter --target PID --mount --root --wd`).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("containerd runs")
    }

    /// Its scratch directory as the machine sees it (what
    /// [`ContainerdOptions::binds`] names are under).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn client(&self) -> &CriClient {
        self.client.as_ref().expect("the CRI client is connected")
    }

    /// The runtime's `/run`, as the machine sees it.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// The runtime's `/var/lib`, as the machine sees it.
    pub fn var_lib(&self) -> PathBuf {
        self.dir.join("varlib")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// A sandbox config as kubelet sends it, with our cgroup parent (an
    /// empty one would make the CRI create `/k8s.io` cgroups on the machine).
    pub fn sandbox_config(&self, name: &str, uid: &str) -> wire::PodSandboxConfig {
        wire::PodSandboxConfig {
            metadata: Some(wire::PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            dns_config: Some(wire::DnsConfig::default()),
            linux: Some(wire::LinuxPodSandboxConfig {
                cgroup_parent: format!("/{}", self.cgroup_parent),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The pid of a sandbox's pause process, from the verbose status.
    pub fn sandbox_pid(&self, id: &str) -> Option<u32> {
        let resp = self.client().pod_sandbox_status(id, true).ok()?;
        let info: serde_json::Value = serde_json::from_str(resp.info.get("info")?).ok()?;
        info["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
    }

    /// Runs `program args` in a sandbox's network namespace.
    pub fn exec_in_sandbox(&self, id: &str, program: &str, args: &[&str]) -> std::process::Output {
        let pid = self
            .sandbox_pid(id)
            .expect("the sandbox has no running pause process");
        exec_in_net_of(pid, program, args)
    }

    fn teardown(&mut self) {
        // The clean way first: stop and remove every pod through the CRI
        // (CNI DEL runs, shims exit once their task is gone).
        if let Some(client) = &self.client {
            for pod in client.list_pod_sandboxes().unwrap_or_default() {
                let _ = client.stop_pod_sandbox(&pod.id);
                let _ = client.remove_pod_sandbox(&pod.id);
            }
        }
        self.client = None;
        if let Some(mut child) = self.child.take() {
            crate::daemon::end_child(
                &mut child,
                nix::sys::signal::Signal::SIGTERM,
                Duration::from_secs(10),
            );
        }
        // What outlived containerd: containers first (a shim killed first
        // leaves its pod to init), then the shims, found by our socket in
        // their arguments, then anything left in our cgroups.
        let tasks = self.dir.join("state/io.containerd.runtime.v2.task/k8s.io");
        for bundle in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
            let id = bundle.file_name().to_string_lossy().into_owned();
            let Some(pid) = std::fs::read_to_string(bundle.path().join("init.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let ours = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.lines().any(|l| l.ends_with(&format!("/{id}"))));
            if ours {
                kill9(pid);
            }
        }
        let socket = self.socket.as_os_str().as_encoded_bytes().to_vec();
        for pid in pids() {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            if cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == socket.as_slice())
            {
                kill9(pid);
            }
        }
        for pid in leftover_pids(Path::new(CGROUP_ROOT), &self.cgroup_parent) {
            kill9(pid);
        }
        // The private mount namespace (and the netns pins in it) goes with
        // its last process.
        if let Some(ns) = &self.mount_ns {
            let gone = wait_for(Duration::from_secs(10), || {
                !pids().into_iter().any(|pid| {
                    alive(pid)
                        && std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
                            .is_ok_and(|p| p.display().to_string() == *ns)
                })
            });
            if !gone {
                eprintln!("warning: processes are left in containerd's mount namespace {ns}");
            }
        }
        for hierarchy in hierarchies(Path::new(CGROUP_ROOT)) {
            let top = hierarchy.join(&self.cgroup_parent);
            if !top.is_dir() {
                continue;
            }
            let removed = wait_for(Duration::from_secs(5), || {
                let mut dirs = walk_dirs(&top);
                dirs.reverse();
                for d in dirs {
                    let _ = std::fs::remove_dir(d);
                }
                !top.exists()
            });
            if !removed {
                eprintln!("warning: cannot remove the cgroup {}", top.display());
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("warning: cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// The cgroup hierarchies mounted under `root`. cgroup v2 (unified) has
/// one, `root` itself, known by its `cgroup.controllers`; v1 has one
/// directory per controller (and, on hybrid machines, `unified`).
fn hierarchies(root: &Path) -> Vec<PathBuf> {
    if root.join("cgroup.controllers").is_file() {
        return vec![root.to_path_buf()];
    }
    std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// The processes in `parent`'s cgroups in every hierarchy below `root`
/// (each at most once): any one hierarchy may lack a process's cgroup.
fn leftover_pids(root: &Path, parent: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for hierarchy in hierarchies(root) {
        for cgroup in walk_dirs(&hierarchy.join(parent)) {
            let list = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
            pids.extend(list.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// `top` and every directory below it, parents before children.
fn walk_dirs(top: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if !top.is_dir() {
        return out;
    }
    let mut stack = vec![top.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        out.push(d);
    }
    out
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Runs `program args` in the network namespace of process `pid` (a pod's
/// pause process).
pub fn exec_in_net_of(pid: u32, program: &str, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg("--")
        .arg(program)
        .args(args)
        .output()
        .expect("cannot run nsenter")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed step fails the test

    use super::*;
    use crate::TempDir;

    /// A fixture cgroup tree: `(relative path, cgroup.procs)` for each
    /// cgroup, plus any plain files.
    fn tree(cgroups: &[(&str, &str)], files: &[&str]) -> TempDir {
        let dir = TempDir::new("cgroups");
        for (cgroup, procs) in cgroups {
            let d = dir.path().join(cgroup);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cgroup.procs"), procs).unwrap();
        }
        for file in files {
            std::fs::write(dir.path().join(file), "cpu memory pids\n").unwrap();
        }
        dir
    }

    fn sorted(mut v: Vec<PathBuf>) -> Vec<PathBuf> {
        v.sort();
        v
    }

    #[test]
    fn v1_one_hierarchy_per_controller() {
        let dir = tree(
            &[
                ("pids/pod-parent", ""),
                ("pids/pod-parent/sandbox", "41\n42\n"),
                ("memory/pod-parent/sandbox", "41\n"),
                ("unified/pod-parent/sandbox", "41\n"),
                ("pids/other", "7\n"),
            ],
            &[],
        );
        let root = dir.path();
        assert_eq!(
            sorted(hierarchies(root)),
            [root.join("memory"), root.join("pids"), root.join("unified")]
        );
        assert_eq!(leftover_pids(root, "pod-parent"), [41, 42]);
    }

    #[test]
    fn v2_one_unified_hierarchy_at_the_root() {
        let dir = tree(
            &[
                ("", "1\n"),
                ("pod-parent", ""),
                ("pod-parent/sandbox", "51\n52\n"),
                ("system.slice", "9\n"),
            ],
            &["cgroup.controllers"],
        );
        let root = dir.path();
        assert_eq!(hierarchies(root), [root.to_path_buf()]);
        assert_eq!(leftover_pids(root, "pod-parent"), [51, 52]);
    }
}
