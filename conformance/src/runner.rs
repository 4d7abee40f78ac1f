//! Runs a plugin binary as a runtime does: `CNI_*` environment, config on
//! stdin, inside the test's host namespace; stdout parsed as the spec says.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use serde_json::Value;

use crate::netns::TestNetns;

/// One plugin call: the environment and the stdin a runtime would give.
#[derive(Debug, Clone)]
pub struct Invocation {
    env: BTreeMap<String, String>,
    stdin: Vec<u8>,
}

impl Invocation {
    /// A call with the variables libcni sets for `command`: a container ID,
    /// `eth0`, and `CNI_PATH` = the built binaries. Add the netns with
    /// [`Invocation::netns`].
    pub fn new(command: &str) -> Self {
        let mut env = BTreeMap::new();
        env.insert("CNI_COMMAND".into(), command.into());
        env.insert("CNI_CONTAINERID".into(), "cnirs-test-ctr".into());
        env.insert("CNI_IFNAME".into(), "eth0".into());
        env.insert(
            "CNI_PATH".into(),
            crate::bins::bin_dir().display().to_string(),
        );
        Invocation {
            env,
            stdin: Vec::new(),
        }
    }

    pub fn netns(self, ns: &TestNetns) -> Self {
        self.env("CNI_NETNS", &ns.path().display().to_string())
    }

    pub fn container_id(self, id: &str) -> Self {
        self.env("CNI_CONTAINERID", id)
    }

    pub fn ifname(self, name: &str) -> Self {
        self.env("CNI_IFNAME", name)
    }

    pub fn cni_args(self, args: &str) -> Self {
        self.env("CNI_ARGS", args)
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Leaves `key` out of the environment.
    pub fn without(mut self, key: &str) -> Self {
        self.env.remove(key);
        self
    }

    pub fn config(self, conf: &Value) -> Self {
        self.stdin(conf.to_string().into_bytes())
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = bytes.into();
        self
    }

    /// Runs `binary` inside `host` and collects what it printed.
    pub fn run(&self, binary: &Path, host: &TestNetns) -> PluginOutput {
        let mut cmd = Command::new(binary);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(&self.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = crate::netns::spawn_in(&mut cmd, host).expect("cannot start the plugin");
        if let Some(mut stdin) = child.stdin.take() {
            // The plugin may exit before reading it all; its output says why.
            let _ = stdin.write_all(&self.stdin);
        }
        let out = child
            .wait_with_output()
            .expect("cannot wait for the plugin");
        PluginOutput {
            status: out.status,
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// What a plugin printed and how it exited.
#[derive(Debug)]
pub struct PluginOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl PluginOutput {
    fn describe(&self) -> String {
        format!(
            "exit {}, stdout {:?}, stderr {:?}",
            self.status,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        )
    }

    /// stdout holds exactly one JSON object and nothing else.
    pub fn json(&self) -> Value {
        let v: Value = serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {}", self.describe()));
        assert!(
            v.is_object(),
            "stdout is not a JSON object: {}",
            self.describe()
        );
        v
    }

    /// Success with a JSON result (ADD, VERSION).
    pub fn success(&self) -> Value {
        assert!(
            self.status.success(),
            "expected success: {}",
            self.describe()
        );
        self.json()
    }

    /// Success with nothing on stdout (DEL, CHECK, GC, STATUS).
    pub fn silent_success(&self) {
        assert!(
            self.status.success(),
            "expected success: {}",
            self.describe()
        );
        assert!(
            self.stdout.iter().all(u8::is_ascii_whitespace),
            "expected empty stdout: {}",
            self.describe()
        );
    }

    /// A spec error with `code`: non-zero exit, the error object alone on
    /// stdout with a message a person can read. Returns the object.
    pub fn error(&self, code: u64) -> Value {
        assert!(
            !self.status.success(),
            "expected an error: {}",
            self.describe()
        );
        let v = self.json();
        assert_eq!(
            v["code"].as_u64(),
            Some(code),
            "wrong code: {}",
            self.describe()
        );
        let msg = v["msg"].as_str().unwrap_or_default();
        assert!(
            !msg.trim().is_empty(),
            "error without a message: {}",
            self.describe()
        );
        assert!(
            v["cniVersion"].is_string(),
            "error without cniVersion: {}",
            self.describe()
        );
        v
    }
}
