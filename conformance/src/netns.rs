//! Throwaway named network namespaces (`ip netns`), removed on drop.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Every namespace the harness makes starts with this, so a leftover one is
/// easy to spot (scripts/test.sh fails when it finds any after the suite).
pub const PREFIX: &str = "cnirs-test-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Fails the test with a clear message unless it can create namespaces.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates network namespaces: run it as root (scripts/test.sh does)"
    );
    let ip = Command::new("ip").arg("-V").output();
    assert!(
        ip.is_ok_and(|o| o.status.success()),
        "this test needs iproute2's `ip` (apt-get install iproute2; scripts/test.sh does)"
    );
}

/// A named network namespace, deleted when dropped.
/// Runs `f` on a thread of its own inside the namespace at `ns` and returns
/// what it returns (a panic in it fails the caller). Sockets it makes stay
/// bound to `ns` and can be used from any thread afterwards.
pub fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> T {
    let file = File::open(ns).unwrap_or_else(|e| panic!("cannot open {}: {e}", ns.display()));
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("cannot enter {}: {e}", ns.display()));
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[derive(Debug)]
pub struct TestNetns {
    name: String,
    /// False for a [`TestNetns::handle`]: dropping it leaves the namespace.
    owned: bool,
}

impl TestNetns {
    /// Creates `cnirs-test-<pid>-<n>-<tag>` with its loopback up.
    pub fn new(tag: &str) -> Self {
        require_root();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("failed to run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = TestNetns { name, owned: true };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Another handle on this namespace that does not delete it when
    /// dropped: for something that lives inside a namespace owned elsewhere
    /// (e.g. etcd in a cluster's switch), to be dropped before the owner.
    pub fn handle(&self) -> TestNetns {
        TestNetns {
            name: self.name.clone(),
            owned: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, as a runtime passes it in `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// [`in_netns`] for this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.path(), f)
    }

    /// Runs a program inside this namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .expect("failed to run ip netns exec")
    }

    /// Runs `ip <args>` inside this namespace and returns its stdout;
    /// fails the test if it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("failed to run ip");
        assert!(
            out.status.success(),
            "ip -n {} {} failed: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // Best effort: a failure here must not hide the test's own failure.
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("warning: ip netns del {}: {e}", self.name),
        }
    }
}

/// Spawns `cmd` inside `ns`: the child enters the namespace between fork
/// and exec, so no thread of ours ever changes namespace.
pub fn spawn_in(cmd: &mut Command, ns: &TestNetns) -> std::io::Result<Child> {
    let ns_file = File::open(ns.path())?;
    let fd = ns_file.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only
    // calls setns(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // SAFETY: `ns_file` is open in the parent until spawn() returns,
            // and the child inherited the descriptor.
            let ns = std::os::fd::BorrowedFd::borrow_raw(fd);
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    let child = cni_types::delegate::spawn(cmd);
    drop(ns_file);
    child
}

/// One simulated node: a "host" namespace where plugins run, and pod
/// namespaces for them to wire up.
#[derive(Debug)]
pub struct TestHost {
    // Pods first: they are dropped before the host that their links hang on.
    pub pods: Vec<TestNetns>,
    pub host: TestNetns,
}

impl TestHost {
    pub fn new(pods: usize) -> Self {
        let host = TestNetns::new("host");
        let pods = (0..pods)
            .map(|i| TestNetns::new(&format!("pod{i}")))
            .collect();
        TestHost { pods, host }
    }

    pub fn pod(&self, i: usize) -> &TestNetns {
        &self.pods[i]
    }
}
