//! Delegation: a plugin found on CNI_PATH is run with the caller's
//! environment and the verb asked for; its result is parsed and its error
//! comes back unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use cni_types::delegate;
use cni_types::error::code;
use cni_types::{Command, Version};

/// A temp dir of stand-in plugins (shell scripts), removed on drop.
struct FakePath(PathBuf);

impl FakePath {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("cnirs-delegate-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        FakePath(dir)
    }

    fn plugin(&self, name: &str, script: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn dirs(&self) -> Vec<PathBuf> {
        vec![PathBuf::from("/nonexistent-cni-dir"), self.0.clone()]
    }
}

impl Drop for FakePath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn add_parses_the_delegate_result_in_its_version() {
    let dir = FakePath::new("add");
    dir.plugin(
        "ipam",
        r#"cat >/dev/null; echo '{"cniVersion":"0.2.0","ip4":{"ip":"10.1.2.3/24","gateway":"10.1.2.1"}}'"#,
    );
    let result = delegate::add("ipam", &dir.dirs(), b"{}", Version::V1_0_0).unwrap();
    assert_eq!(result.ips.len(), 1);
    assert_eq!(result.ips[0].address.to_string(), "10.1.2.3/24");
}

#[test]
fn verb_is_overridden_and_stdin_and_environment_are_passed() {
    let dir = FakePath::new("env");
    let log = dir.0.join("log");
    dir.plugin(
        "probe",
        &format!(
            "{{ echo \"$CNI_COMMAND\"; echo \"$CNI_DELEGATE_TEST\"; cat; }} > {}",
            log.display()
        ),
    );
    let plugin = delegate::find_in_path("probe", &dir.dirs()).unwrap();
    delegate::exec(
        &plugin,
        Command::Del,
        b"{\"a\":1}",
        &[("CNI_DELEGATE_TEST", "seen")],
    )
    .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text, "DEL\nseen\n{\"a\":1}");
}

#[test]
fn a_spec_error_comes_back_unchanged() {
    let dir = FakePath::new("err");
    dir.plugin(
        "failing",
        r#"echo '{"cniVersion":"1.0.0","code":7,"msg":"bad range","details":"10.0.0.0/33"}'; exit 1"#,
    );
    let err = delegate::run("failing", &dir.dirs(), Command::Check, b"{}").unwrap_err();
    assert_eq!(err.code, 7);
    assert_eq!(err.msg, "bad range");
    assert_eq!(err.details, "10.0.0.0/33");
}

#[test]
fn a_failure_without_spec_error_carries_stderr() {
    let dir = FakePath::new("crash");
    dir.plugin("crashing", "echo 'segfault-ish trouble' >&2; exit 3");
    let err = delegate::run("crashing", &dir.dirs(), Command::Add, b"{}").unwrap_err();
    assert_eq!(err.code, code::DELEGATE_FAILED);
    assert!(err.msg.contains("segfault-ish trouble"), "{}", err.msg);
}

#[test]
fn a_bad_result_is_a_decode_error_naming_the_plugin() {
    let dir = FakePath::new("bad");
    dir.plugin("garbage", "echo 'not json'");
    let err = delegate::add("garbage", &dir.dirs(), b"{}", Version::V1_0_0).unwrap_err();
    assert_eq!(err.code, code::DECODE);
    assert!(err.msg.contains("garbage"), "{}", err.msg);
}

#[test]
fn missing_and_invalid_plugin_names() {
    let dir = FakePath::new("names");
    let err = delegate::find_in_path("nope", &dir.dirs()).unwrap_err();
    assert_eq!(err.code, code::PLUGIN_NOT_FOUND);
    assert!(err.msg.contains("nope") && err.msg.contains(&*dir.0.to_string_lossy()));
    for bad in ["", "../bin/sh", "/bin/sh", ".."] {
        let err = delegate::find_in_path(bad, &dir.dirs()).unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG, "{bad:?}");
    }
    // A directory of that name is not a plugin.
    std::fs::create_dir(dir.0.join("adir")).unwrap();
    assert!(delegate::find_in_path("adir", &dir.dirs()).is_err());
}
