//! Delegation: run another plugin from `CNI_PATH` the way a runtime would.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::Duration;

use crate::error::{CniError, code};
use crate::result::CniResult;
use crate::skel::Command;
use crate::version::Version;

/// The rule `find_in_path` applies to a plugin name: a plain file name in
/// `CNI_PATH`, never a path out of it. Public so that a plugin can refuse a
/// delegate type before it does anything else.
pub fn check_plugin_name(plugin: &str) -> Result<(), CniError> {
    if plugin.is_empty() {
        return Err(CniError::invalid_config("no plugin name provided"));
    }
    if plugin.contains('/') || plugin == "." || plugin == ".." {
        return Err(CniError::invalid_config(format!(
            "invalid plugin name {plugin:?}: it must be a file name, not a path"
        )));
    }
    Ok(())
}

/// Finds `plugin` in the `CNI_PATH` directories, first match wins.
pub fn find_in_path(plugin: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    check_plugin_name(plugin)?;
    path.iter()
        .map(|dir| dir.join(plugin))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            let dirs: Vec<String> = path.iter().map(|p| p.display().to_string()).collect();
            CniError::new(
                code::PLUGIN_NOT_FOUND,
                format!(
                    "failed to find plugin {plugin:?} in path [{}]",
                    dirs.join(" ")
                ),
            )
        })
}

/// Runs a delegate plugin with `conf` on stdin and this process's
/// environment, `CNI_COMMAND` set to `command`, plus `env` overrides.
/// Returns its stdout on success; its spec error (code and message kept) on
/// failure.
pub fn exec(
    plugin: &Path,
    command: Command,
    conf: &[u8],
    env: &[(&str, &str)],
) -> Result<Vec<u8>, CniError> {
    let name = plugin.display();
    let mut cmd = Process::new(plugin);
    cmd.env("CNI_COMMAND", command.as_str())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(&mut cmd).map_err(|e| {
        CniError::new(
            code::DELEGATE_FAILED,
            format!("failed to run plugin {name}: {e}"),
        )
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin may exit without reading stdin (VERSION); a broken pipe
        // then is no error of ours, its exit status tells the story.
        let _ = stdin.write_all(conf);
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(
            code::DELEGATE_FAILED,
            format!("failed to wait for plugin {name}: {e}"),
        )
    })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    if let Ok(err) = serde_json::from_slice::<CniError>(&out.stdout) {
        return Err(err);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(CniError::new(
        code::DELEGATE_FAILED,
        format!(
            "plugin {name} failed ({}) without a CNI error: {}",
            out.status,
            stderr.trim()
        ),
    ))
}

/// ADD through a delegate found on `path`; the result is decoded in
/// `version` unless it names its own.
pub fn add(
    plugin_type: &str,
    path: &[PathBuf],
    conf: &[u8],
    version: Version,
) -> Result<CniResult, CniError> {
    let plugin = find_in_path(plugin_type, path)?;
    let out = exec(&plugin, Command::Add, conf, &[])?;
    CniResult::from_slice(&out, version)
        .map_err(|e| e.context(format!("plugin {plugin_type} returned a bad result")))
}

/// DEL, CHECK, GC or STATUS through a delegate found on `path`.
pub fn run(
    plugin_type: &str,
    path: &[PathBuf],
    command: Command,
    conf: &[u8],
) -> Result<(), CniError> {
    let plugin = find_in_path(plugin_type, path)?;
    exec(&plugin, command, conf, &[]).map(drop)
}

/// Spawns `cmd`, retrying briefly while the executable is busy (ETXTBSY):
/// another thread that forked while the file was open for writing holds it
/// until its own exec, which is over within milliseconds.
pub fn spawn(cmd: &mut Process) -> std::io::Result<Child> {
    let mut delay = Duration::from_millis(1);
    loop {
        match cmd.spawn() {
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && delay.as_millis() < 500 =>
            {
                std::thread::sleep(delay);
                delay *= 2;
            }
            other => return other,
        }
    }
}
