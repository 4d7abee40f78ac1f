//! The harness itself: namespaces are real, plugins run inside the host
//! namespace, and nothing is left behind, also when a test panics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use conformance::{Invocation, TestHost, TestNetns};

fn namespace_exists(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn namespaces_are_removed_on_drop() {
    let host = TestHost::new(2);
    let names: Vec<String> = std::iter::once(&host.host)
        .chain(&host.pods)
        .map(|n| n.name().to_string())
        .collect();
    for name in &names {
        assert!(namespace_exists(name), "{name} was not created");
    }
    drop(host);
    for name in &names {
        assert!(!namespace_exists(name), "{name} was left behind");
    }
}

#[test]
fn namespaces_are_removed_when_a_test_panics() {
    let mut name = String::new();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = TestNetns::new("panics");
        name = ns.name().to_string();
        panic!("a failing test");
    }));
    assert!(caught.is_err());
    assert!(!name.is_empty());
    assert!(!namespace_exists(&name), "{name} survived the panic");
}

#[test]
fn each_namespace_is_its_own_and_not_the_root_one() {
    let host = TestHost::new(1);
    let root = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    let host_ino = std::fs::metadata(host.host.path()).unwrap().ino();
    let pod_ino = std::fs::metadata(host.pod(0).path()).unwrap().ino();
    assert_ne!(host_ino, root);
    assert_ne!(pod_ino, root);
    assert_ne!(pod_ino, host_ino);
    // Loopback is up, nothing else is there.
    let links = host.host.ip(&["-o", "link", "show"]);
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
}

#[test]
fn a_plugin_runs_inside_the_host_namespace_with_only_the_cni_environment() {
    let host = TestHost::new(0);
    let dir = std::env::temp_dir().join(format!("cnirs-harness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("report-plugin");
    // A stand-in plugin that reports where it runs and what it was given.
    conformance::util::script(
        &fake,
        "#!/bin/sh\nstat -L -c %i /proc/self/ns/net\nenv | grep -c '^CNI_'\ncat\n",
    );
    let out = Invocation::new("ADD")
        .netns(&host.host)
        .stdin("hello")
        .run(&fake, &host.host);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let host_ino = std::fs::metadata(host.host.path()).unwrap().ino();
    assert_eq!(lines[0], host_ino.to_string());
    assert_eq!(
        lines[1], "5",
        "CNI_COMMAND, CONTAINERID, IFNAME, NETNS, PATH"
    );
    assert_eq!(lines[2], "hello");
}
