//! Long-running programs (the agents) started inside a simulated
//! host, measured from /proc, and stopped on drop.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use conformance::TestNetns;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, pthread_sigmask};
use nix::unistd::Pid;

use crate::cleanup;

/// A program running in a namespace; SIGTERM (then SIGKILL) on drop.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
}

impl Proc {
    /// Starts `binary args` inside `ns`, stderr and stdout to `log`.
    ///
    /// The child gets SIGKILL when the thread that started it ends (the
    /// kernel's parent-death signal follows the thread): start long-lived
    /// programs from the main thread only.
    pub fn spawn(
        binary: &Path,
        args: &[String],
        ns: &TestNetns,
        log: &Path,
    ) -> Result<Proc, String> {
        Self::spawn_with_env(binary, args, &[], ns, log)
    }

    /// As [`Proc::spawn`], with `env` set in the child's environment.
    pub fn spawn_with_env(
        binary: &Path,
        args: &[String],
        env: &[(&str, &str)],
        ns: &TestNetns,
        log: &Path,
    ) -> Result<Proc, String> {
        let out = File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("cannot reopen {}: {e}", log.display()))?;
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: runs in the forked child before exec and only calls
        // sigprocmask(2) and prctl(2), which are async-signal-safe. The
        // mask is inherited across exec (the standard library leaves it),
        // and `cleanup::install` blocks SIGTERM in this process.
        unsafe {
            cmd.pre_exec(|| {
                pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                Ok(())
            });
        }
        let child = conformance::netns::spawn_in(&mut cmd, ns)
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let pid = child.id();
        cleanup::register_child(pid);
        Ok(Proc {
            child: Some(child),
            pid,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The last `lines` lines of its output, for a failure report.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM without waiting (to stop many at once; `stop` reaps).
    pub fn terminate(&self) {
        if self.child.is_some()
            && let Ok(p) = i32::try_from(self.pid)
        {
            let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
        }
    }

    /// SIGTERM, wait up to 5 s, then SIGKILL. Returns whether it ended by
    /// itself.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let mut clean = false;
        if let Ok(p) = i32::try_from(self.pid) {
            let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => {
                    clean = true;
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        cleanup::unregister_child(self.pid);
        clean
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU time a process has used so far.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    /// utime + stime of the whole process (exited threads included), in
    /// clock ticks.
    ticks: u64,
    /// The live threads and the sum of their run time in ns
    /// (`/proc/PID/task/*/schedstat`): precise, but blind to threads that
    /// come and go.
    threads: BTreeSet<u32>,
    sched_ns: u64,
}

fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// Machine-wide busy CPU time since boot, in seconds: /proc/stat's "cpu"
/// line, user+nice+system+irq+softirq+steal.
pub fn machine_busy_seconds() -> Result<f64, String> {
    let stat =
        fs::read_to_string("/proc/stat").map_err(|e| format!("cannot read /proc/stat: {e}"))?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or("/proc/stat has no cpu line")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()
        .ok_or_else(|| format!("/proc/stat: bad cpu line {line:?}"))?;
    // user nice system idle iowait irq softirq steal (guest is in user)
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| ticks.get(i).copied().ok_or("/proc/stat: short cpu line"))
        .sum::<Result<u64, _>>()?;
    Ok(busy as f64 / clock_ticks_per_second() as f64)
}

/// utime + stime from /proc/PID/stat (fields 14 and 15, counted after
/// the command name, which may hold spaces).
fn stat_ticks(pid: u32) -> Result<u64, String> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let field = |n: usize| -> Result<u64, String> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: no field {n}"))
    };
    Ok(field(14)? + field(15)?)
}

pub fn cpu_sample(pid: u32) -> Result<CpuSample, String> {
    let ticks = stat_ticks(pid)?;
    let mut threads = BTreeSet::new();
    let mut sched_ns = 0u64;
    let dir = format!("/proc/{pid}/task");
    for entry in fs::read_dir(&dir).map_err(|e| format!("cannot read {dir}: {e}"))? {
        let Ok(entry) = entry else { continue };
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // A thread may end between the listing and the read.
        if let Ok(s) = fs::read_to_string(entry.path().join("schedstat"))
            && let Some(ns) = s
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
        {
            threads.insert(tid);
            sched_ns += ns;
        }
    }
    Ok(CpuSample {
        at: Instant::now(),
        ticks,
        threads,
        sched_ns,
    })
}

/// The run time so far (ns, from `schedstat`) of the threads of process
/// `pid` named `comm`, e.g. a library's worker threads in this process;
/// an error when there is none.
pub fn threads_run_ns(pid: u32, comm: &str) -> Result<u64, String> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    let mut found = false;
    for entry in fs::read_dir(&dir).map_err(|e| format!("cannot read {dir}: {e}"))? {
        let Ok(entry) = entry else { continue };
        let p = entry.path();
        // A thread may end between the listing and the reads.
        let name = fs::read_to_string(p.join("comm")).unwrap_or_default();
        if name.trim_end() != comm {
            continue;
        }
        found = true;
        if let Ok(s) = fs::read_to_string(p.join("schedstat"))
            && let Some(ns) = s
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
        {
            total += ns;
        }
    }
    if found {
        Ok(total)
    } else {
        Err(format!("process {pid} has no thread named {comm}"))
    }
}

/// CPU used between two samples of one process, as % of one core: from the
/// threads' run times when the same threads lived throughout, else from the
/// process's tick counts (a tick is 10 ms).
pub fn cpu_percent(a: &CpuSample, b: &CpuSample) -> f64 {
    let wall = b.at.duration_since(a.at).as_secs_f64();
    if wall <= 0.0 {
        return 0.0;
    }
    let used = if a.threads == b.threads && b.sched_ns >= a.sched_ns {
        (b.sched_ns - a.sched_ns) as f64 / 1e9
    } else {
        b.ticks.saturating_sub(a.ticks) as f64 / clock_ticks_per_second() as f64
    };
    100.0 * used / wall
}

/// A `Name:   value kB` line of /proc/PID/status, as a number.
fn status_field(pid: u32, name: &str) -> Result<u64, String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("/proc/{pid}/status has no {name}"))
}

/// Resident memory now, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    status_field(pid, "VmRSS")
}

/// Resident memory that is the process's own data (heap, stacks), not
/// its program's pages, in KiB.
pub fn anon_rss_kib(pid: u32) -> Result<u64, String> {
    status_field(pid, "RssAnon")
}

/// The peak resident memory, in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64, String> {
    status_field(pid, "VmHWM")
}

pub fn threads(pid: u32) -> Result<u64, String> {
    status_field(pid, "Threads")
}
