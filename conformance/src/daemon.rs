//! A long-running program (the node agent) started inside a test namespace
//! and stopped on drop: SIGTERM, then SIGKILL if it lingers.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, pthread_sigmask};
use nix::unistd::Pid;

use crate::netns::TestNetns;

#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    log: std::path::PathBuf,
}

/// How a [`Daemon`] is started, beyond its program, arguments and log.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Set in its environment, which is otherwise only `PATH`.
    pub env: Vec<(String, String)>,
    /// SIGKILL when the thread that started it ends (the kernel's
    /// parent-death signal), for programs that may end without running
    /// any `Drop` (the benchmarks, built to abort on panic): start it from
    /// a thread that lives as long as it should.
    pub die_with_parent: bool,
}

impl Daemon {
    /// Starts `binary args` in `ns`; its stderr goes to `log`.
    pub fn start(binary: &Path, args: &[String], ns: &TestNetns, log: &Path) -> Daemon {
        Self::start_with_env(binary, args, ns, log, &[])
    }

    /// As [`Daemon::start`], with `env` set (the environment is otherwise
    /// only `PATH`).
    pub fn start_with_env(
        binary: &Path,
        args: &[String],
        ns: &TestNetns,
        log: &Path,
        env: &[(&str, &str)],
    ) -> Daemon {
        let opts = DaemonOptions {
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..DaemonOptions::default()
        };
        Self::try_start(binary, args, ns, log, &opts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `binary args` in `ns` as `opts` say; its stderr goes to `log`.
    pub fn try_start(
        binary: &Path,
        args: &[String],
        ns: &TestNetns,
        log: &Path,
        opts: &DaemonOptions,
    ) -> Result<Daemon, String> {
        let err = File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        let die_with_parent = opts.die_with_parent;
        // SAFETY: runs in the forked child before exec and only calls
        // sigprocmask(2) and prctl(2), which are async-signal-safe. A mask
        // survives exec: the benchmarks block SIGTERM in their threads to
        // handle it themselves, and a daemon must still stop on it.
        unsafe {
            cmd.pre_exec(move || {
                pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
                if die_with_parent {
                    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                }
                Ok(())
            });
        }
        let child = crate::netns::spawn_in(&mut cmd, ns)
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        Ok(Daemon {
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, while it has not been stopped.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// SIGTERM and wait (up to 10 s, then SIGKILL). Returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let pid = Pid::from_raw(i32::try_from(child.id()).ok()?);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok().and_then(|s| s.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// flanneld as the tests run it: on the embedded store in `store`, the
/// simulated host's `eth0`, writing `subnet_file`, then `extra` flags;
/// its stderr in `log`. Does not wait for it.
pub fn start_flanneld(
    ns: &TestNetns,
    store: &Path,
    subnet_file: &Path,
    extra: &[&str],
    log: &Path,
) -> Daemon {
    let mut args: Vec<String> = vec![
        "--store-dir".into(),
        store.display().to_string(),
        "--iface".into(),
        "eth0".into(),
        "--subnet-file".into(),
        subnet_file.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Daemon::start(&crate::plugin_binary("flanneld"), &args, ns, log)
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ends `child` as a person would: `signal` (SIGINT, SIGTERM), then a
/// kill if it has not exited within `grace`; reaped either way.
pub fn end_child(
    child: &mut std::process::Child,
    signal: nix::sys::signal::Signal,
    grace: Duration,
) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
    let exited = wait_for(grace, || child.try_wait().ok().flatten().is_some());
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
}
