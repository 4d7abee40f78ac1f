//! Runs a command-line program (arguments, no CNI stdin), such as cnitool,
//! inside a test namespace, as a person at a shell in that namespace would:
//! whatever it changes in the network stays in the namespace.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::netns::TestNetns;
use crate::runner::PluginOutput;

/// A program, its arguments and its environment (only `PATH` is inherited).
#[derive(Debug, Clone)]
pub struct Tool {
    program: PathBuf,
    args: Vec<OsString>,
    env: BTreeMap<String, OsString>,
}

impl Tool {
    pub fn new(program: &Path) -> Self {
        Tool {
            program: program.to_path_buf(),
            args: Vec::new(),
            env: BTreeMap::new(),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        self.env.insert(key.into(), value.as_ref().to_os_string());
        self
    }

    /// Leaves `key` out of the environment.
    pub fn without(mut self, key: &str) -> Self {
        self.env.remove(key);
        self
    }

    /// Runs it inside `ns` with stdin empty and collects what it printed.
    pub fn run_in(&self, ns: &TestNetns) -> PluginOutput {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = crate::netns::spawn_in(&mut cmd, ns)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("cannot wait for {}: {e}", self.program.display()));
        PluginOutput {
            status: out.status,
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}
