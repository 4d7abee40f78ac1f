//! Spec conformance of every plugin binary: VERSION, env and config
//! validation, version gates, and the rule that stdout carries only the
//! result or the error. Each call runs as a runtime makes it, inside a
//! throwaway host namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use conformance::{Invocation, PluginOutput, TestHost, plugin_binary};
use serde_json::{Value, json};

const PLUGINS: [&str; 3] = ["bridge", "host-local", "flannel"];
const VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

fn conf(version: &str) -> Value {
    json!({"cniVersion": version, "name": "cnirs-net", "type": "bridge"})
}

/// Runs `inv` against every plugin inside one host namespace.
fn each_plugin(inv: &Invocation, check: impl Fn(&str, PluginOutput)) {
    let host = TestHost::new(0);
    for name in PLUGINS {
        check(name, inv.clone().run(&plugin_binary(name), &host.host));
    }
}

/// A full ADD-shaped call into a fresh pod namespace.
fn add_call(host: &TestHost) -> Invocation {
    Invocation::new("ADD").netns(host.pod(0))
}

#[test]
fn version_answers_every_supported_version() {
    for v in VERSIONS {
        let inv = Invocation::new("VERSION").config(&json!({"cniVersion": v}));
        each_plugin(&inv, |name, out| {
            let reply = out.success();
            assert_eq!(reply["cniVersion"], v, "{name}");
            assert_eq!(reply["supportedVersions"], json!(VERSIONS), "{name}");
        });
    }
}

#[test]
fn version_without_input_or_with_an_unknown_version_answers_the_newest() {
    for stdin in ["", "{}", r#"{"cniVersion":"9.9.9"}"#] {
        let inv = Invocation::new("VERSION").stdin(stdin);
        each_plugin(&inv, |name, out| {
            assert_eq!(out.success()["cniVersion"], "1.1.0", "{name} {stdin:?}");
        });
    }
}

#[test]
fn bad_json_is_code_6() {
    let host = TestHost::new(1);
    for command in ["ADD", "DEL", "CHECK", "VERSION"] {
        for stdin in ["{not json", "", "[1,2]", "\"text\"", "{\"cniVersion\": 1}"] {
            if command == "VERSION" && matches!(stdin, "" | "[1,2]" | "\"text\"") {
                continue; // VERSION may be sent without a config
            }
            for name in PLUGINS {
                let out = add_call(&host)
                    .env("CNI_COMMAND", command)
                    .stdin(stdin)
                    .run(&plugin_binary(name), &host.host);
                out.error(6);
            }
        }
    }
}

#[test]
fn missing_environment_is_code_4_and_names_the_variable() {
    let host = TestHost::new(1);
    let cases = [
        ("ADD", "CNI_CONTAINERID"),
        ("ADD", "CNI_NETNS"),
        ("ADD", "CNI_IFNAME"),
        ("ADD", "CNI_PATH"),
        ("CHECK", "CNI_NETNS"),
        ("DEL", "CNI_CONTAINERID"),
        ("DEL", "CNI_IFNAME"),
        ("GC", "CNI_PATH"),
        ("STATUS", "CNI_PATH"),
    ];
    for (command, var) in cases {
        for name in PLUGINS {
            let out = add_call(&host)
                .env("CNI_COMMAND", command)
                .without(var)
                .config(&conf("1.1.0"))
                .run(&plugin_binary(name), &host.host);
            let err = out.error(4);
            assert!(
                err["msg"].as_str().unwrap().contains(var),
                "{name} {command}: {err}"
            );
        }
    }
}

#[test]
fn malformed_environment_is_code_4() {
    let host = TestHost::new(1);
    let cases: [(&str, &str); 9] = [
        ("CNI_COMMAND", "ATTACH"),
        ("CNI_CONTAINERID", "-starts-with-dash"),
        ("CNI_CONTAINERID", "has space"),
        ("CNI_IFNAME", "this-name-is-too-long"),
        ("CNI_IFNAME", "eth/0"),
        ("CNI_IFNAME", "eth:0"),
        ("CNI_IFNAME", ".."),
        ("CNI_ARGS", "IP"),
        ("CNI_ARGS", "=10.0.0.1"),
    ];
    for (var, value) in cases {
        for name in PLUGINS {
            let out = add_call(&host)
                .env(var, value)
                .config(&conf("1.0.0"))
                .run(&plugin_binary(name), &host.host);
            out.error(4);
        }
    }
}

#[test]
fn unsupported_cni_version_is_code_1_with_details() {
    let host = TestHost::new(1);
    for command in ["ADD", "DEL", "CHECK"] {
        for name in PLUGINS {
            let out = add_call(&host)
                .env("CNI_COMMAND", command)
                .config(&conf("1.2.0"))
                .run(&plugin_binary(name), &host.host);
            let err = out.error(1);
            let details = err["details"].as_str().unwrap_or_default();
            assert!(
                details.contains("1.2.0") && details.contains("1.1.0"),
                "{err}"
            );
        }
    }
}

#[test]
fn invalid_network_name_is_code_7() {
    let host = TestHost::new(1);
    for bad in [json!("bad name"), json!("-dash"), json!("")] {
        for name in PLUGINS {
            let mut c = conf("1.0.0");
            c["name"] = bad.clone();
            let out = add_call(&host)
                .config(&c)
                .run(&plugin_binary(name), &host.host);
            out.error(7);
        }
    }
    for name in PLUGINS {
        let out = add_call(&host)
            .config(&json!({"cniVersion": "1.0.0", "type": "bridge"}))
            .run(&plugin_binary(name), &host.host);
        out.error(7);
    }
}

#[test]
fn check_needs_0_4_0_and_gc_status_need_1_1_0() {
    let host = TestHost::new(1);
    let cases = [
        ("CHECK", "0.3.1"),
        ("CHECK", "0.1.0"),
        ("GC", "1.0.0"),
        ("STATUS", "1.0.0"),
        ("STATUS", "0.4.0"),
    ];
    for (command, version) in cases {
        for name in PLUGINS {
            let out = add_call(&host)
                .env("CNI_COMMAND", command)
                .config(&conf(version))
                .run(&plugin_binary(name), &host.host);
            let err = out.error(1);
            assert!(err["msg"].as_str().unwrap().contains(command), "{err}");
            assert_eq!(
                err["cniVersion"], version,
                "errors are tagged with the config version"
            );
        }
    }
}

#[test]
fn run_by_hand_without_a_command_prints_about_on_stderr_only() {
    let host = TestHost::new(0);
    for name in PLUGINS {
        let out = Invocation::new("")
            .without("CNI_COMMAND")
            .run(&plugin_binary(name), &host.host);
        assert!(out.status.success());
        assert!(out.stdout.is_empty(), "{name} printed on stdout");
        assert!(out.stderr.contains("CNI"), "{name}: {}", out.stderr);
    }
}
