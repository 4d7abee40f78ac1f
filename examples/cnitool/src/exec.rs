//! Running one plugin binary as libcni's `RawExec` does: the `CNI_*`
//! variables over this process's environment, the config on stdin, the
//! result (or the spec error) read from stdout.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::failure::Failure;

/// The protocol variables of one call. libcni sets all six on every call,
/// empty when they do not apply (GC and STATUS name no container).
#[derive(Debug, Clone, Copy)]
pub struct PluginEnv<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub cni_args: &'a str,
    pub ifname: &'a str,
    pub path: &'a OsStr,
}

/// Runs `plugin` and returns its stdout when it exits 0.
pub fn run(plugin: &Path, env: &PluginEnv<'_>, stdin: &[u8]) -> Result<Vec<u8>, Failure> {
    let mut cmd = Command::new(plugin);
    cmd.env("CNI_COMMAND", env.command)
        .env("CNI_CONTAINERID", env.container_id)
        .env("CNI_NETNS", env.netns)
        .env("CNI_ARGS", env.cni_args)
        .env("CNI_IFNAME", env.ifname)
        .env("CNI_PATH", env.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // spawn() retries while the file is busy being written (ETXTBSY), as
    // libcni retries "text file busy".
    let mut child = cni_types::delegate::spawn(&mut cmd)
        .map_err(|e| Failure::new(format!("cannot run {}: {e}", plugin.display())))?;
    let pipe = child.stdin.take();
    // Fed from its own thread: a plugin that prints before it has read all
    // of a large config must not deadlock against us.
    let output = std::thread::scope(|scope| {
        if let Some(mut pipe) = pipe {
            scope.spawn(move || {
                // A plugin may exit without reading stdin; its exit status
                // tells what happened.
                let _ = pipe.write_all(stdin);
            });
        }
        child.wait_with_output()
    })
    .map_err(|e| Failure::new(format!("cannot wait for {}: {e}", plugin.display())))?;

    if output.status.success() {
        // libcni passes a plugin's stderr on to its own.
        let _ = std::io::stderr().write_all(&output.stderr);
        return Ok(output.stdout);
    }
    Err(plugin_error(&output))
}

/// The failure a plugin reported: its spec error from stdout, else what it
/// said on stderr (a crash), with libcni's wording.
fn plugin_error(out: &Output) -> Failure {
    let status = out.status;
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return if stderr.trim().is_empty() {
            Failure::new(format!("netplugin failed with no error message: {status}"))
        } else {
            Failure::new(format!("netplugin failed: {:?}: {status}", stderr.as_ref()))
        };
    }
    match serde_json::from_slice::<Value>(&out.stdout) {
        Ok(Value::Object(err)) => {
            // The error object is the message; stderr may add the story.
            let _ = std::io::stderr().write_all(&out.stderr);
            let code = err
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(0);
            let msg = err.get("msg").and_then(Value::as_str).unwrap_or_default();
            let details = err
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let text = match (msg.is_empty(), details.is_empty()) {
                (_, true) if !msg.is_empty() => msg.to_string(),
                (true, true) => {
                    format!("plugin failed ({status}) with an error that has no message")
                }
                _ => format!("{msg}; {details}"),
            };
            Failure::with_code(code, text)
        }
        parsed => {
            let why = match parsed {
                Ok(_) => "not a JSON object".to_string(),
                Err(e) => e.to_string(),
            };
            Failure::new(format!(
                "netplugin failed ({status}) but error parsing its diagnostic message {:?}: {why}",
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }
}
