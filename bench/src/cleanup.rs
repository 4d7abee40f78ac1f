//! Nothing left behind, also when a benchmark fails part-way.
//!
//! Release builds abort on a panic (no unwinding, so no `Drop` runs), and
//! Ctrl-C ends a process without running any. So the long-running
//! benchmarks keep what they made findable and sweep it up themselves:
//!
//! - every child process is started with a parent-death signal (SIGKILL);
//!   the ones `process::Proc` starts are registered here and killed first
//!   by the sweep (etcd, started by the conformance harness, is found in
//!   its namespace like anything else still running there);
//! - every namespace the conformance harness makes is named
//!   `cnirs-test-<our pid>-...`: the sweep deletes those still listed;
//! - scratch directories are registered here and removed by the sweep.
//!
//! [`install`] hooks the sweep into panics and into SIGINT, SIGTERM and
//! SIGHUP (taken by a thread of their own, then the process exits). The
//! normal path still cleans up by `Drop`; [`sweep`] at the end of `main`
//! catches what a bug let through, and [`leftovers`] says whether any is.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, pthread_sigmask};
use nix::unistd::Pid;

static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// The prefix of the namespaces this process made through the harness
/// (`conformance::netns::PREFIX` plus our pid).
pub fn netns_prefix() -> String {
    format!("{}{}-", conformance::netns::PREFIX, std::process::id())
}

/// A lock that is taken even when poisoned, and not waited for from a
/// panic hook (the panicking thread may hold it: then the sweep goes on
/// without that list).
fn lock<T>(m: &Mutex<T>, wait: bool) -> Option<MutexGuard<'_, T>> {
    if wait {
        return Some(m.lock().unwrap_or_else(|p| p.into_inner()));
    }
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// Installs the panic hook and the signal thread. Call first thing in
/// `main`, before any other thread starts: the signals are blocked in the
/// calling thread, and threads started later inherit that. So would child
/// processes (a mask survives exec): `process::Proc` clears it in the child.
pub fn install() -> Result<(), String> {
    install_panic_hook();
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|e| format!("cannot block signals: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                eprintln!("bench: {sig}; cleaning up");
                sweep_now(true);
                std::process::exit(128 + sig as i32);
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

/// Just the panic hook of [`install`] (the sweep, after the default
/// report), for programs whose child processes must not inherit blocked
/// signals.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("bench: panicked; cleaning up before the process ends");
        sweep_now(false);
    }));
}

pub fn register_child(pid: u32) {
    if let Some(mut c) = lock(&CHILDREN, true) {
        c.push(pid);
    }
}

pub fn unregister_child(pid: u32) {
    if let Some(mut c) = lock(&CHILDREN, true) {
        c.retain(|p| *p != pid);
    }
}

/// Kills what is left, deletes our namespaces and scratch directories.
pub fn sweep() {
    sweep_now(true);
}

fn sweep_now(wait: bool) {
    if let Some(children) = lock(&CHILDREN, wait) {
        for pid in children.iter() {
            if let Ok(p) = i32::try_from(*pid) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
    }
    for ns in leftovers() {
        // Whatever still runs inside (not ours, or not registered yet) first.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(p) = pid.parse::<i32>() {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    }
    if let Some(dirs) = lock(&DIRS, wait) {
        for d in dirs.iter() {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// Our namespaces still listed by `ip netns`.
pub fn leftovers() -> Vec<String> {
    let prefix = netns_prefix();
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with(&prefix))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// A private scratch directory (on tmpfs when there is one: etcd's fsyncs
/// are not what is measured), removed on drop and by the sweep.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Result<Scratch, String> {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("cnirs-bench-{}-{n}-{tag}", std::process::id()));
        fs::create_dir_all(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        if let Some(mut d) = lock(&DIRS, true) {
            d.push(path.clone());
        }
        Ok(Scratch { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
        if let Some(mut d) = lock(&DIRS, true) {
            d.retain(|p| p != &self.path);
        }
    }
}
