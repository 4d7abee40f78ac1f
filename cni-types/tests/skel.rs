//! `skel::dispatch` against a tiny plugin, an in-memory environment and stdin.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use cni_types::error::code;
use cni_types::skel::{Outcome, dispatch};
use cni_types::{CmdArgs, CniError, CniResult, Command, Plugin};
use serde_json::{Value, json};

const ABOUT: &str = "test plugin v0.0.0 (CNI spec 0.1.0 - 1.1.0)";

/// What the plugin saw, one entry per verb call.
#[derive(Debug, Clone)]
struct Seen {
    command: Command,
    container_id: String,
    netns: Option<PathBuf>,
    ifname: String,
    args: Vec<(String, String)>,
    path: Vec<PathBuf>,
    name: String,
    version: String,
    stdin: Vec<u8>,
}

#[derive(Default)]
struct TestPlugin {
    /// What ADD returns; the default is a dual-stack result.
    add_result: Option<Result<CniResult, CniError>>,
    /// What every other verb returns.
    other_result: Option<CniError>,
    seen: RefCell<Vec<Seen>>,
}

impl TestPlugin {
    fn record(&self, a: &CmdArgs) {
        self.seen.borrow_mut().push(Seen {
            command: a.command,
            container_id: a.container_id.clone(),
            netns: a.netns.clone(),
            ifname: a.ifname.clone(),
            args: a.args.pairs().to_vec(),
            path: a.path.clone(),
            name: a.network_name().to_string(),
            version: a.version.as_str().to_string(),
            stdin: a.stdin.clone(),
        });
    }

    fn other(&self) -> Result<(), CniError> {
        match &self.other_result {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn calls(&self) -> Vec<Seen> {
        self.seen.borrow().clone()
    }
}

fn dual_stack() -> CniResult {
    CniResult::from_value(
        json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "mac": "0a:58:0a:01:00:05", "mtu": 1500, "sandbox": "/var/run/netns/t"}],
            "ips": [
                {"interface": 0, "address": "10.1.0.5/16", "gateway": "10.1.0.1"},
                {"interface": 0, "address": "10.1.0.6/16"},
                {"interface": 0, "address": "2001:db8::5/64", "gateway": "2001:db8::1"}
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "table": 100}, {"dst": "::/0"}],
            "dns": {"nameservers": ["10.1.0.10"]}
        }),
        cni_types::Version::V1_1_0,
    )
    .unwrap()
}

impl Plugin for TestPlugin {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        self.record(args);
        self.add_result.clone().unwrap_or_else(|| Ok(dual_stack()))
    }
    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        self.record(args);
        self.other()
    }
    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        self.record(args);
        self.other()
    }
    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        self.record(args);
        self.other()
    }
    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        self.record(args);
        self.other()
    }
    fn about(&self) -> String {
        ABOUT.to_string()
    }
}

/// The environment of a well-formed ADD.
fn add_env() -> HashMap<String, String> {
    [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "cnitool-0123abcd"),
        ("CNI_NETNS", "/var/run/netns/t"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/libexec/cni"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn env_with(command: &str) -> HashMap<String, String> {
    let mut env = add_env();
    env.insert("CNI_COMMAND".into(), command.into());
    env
}

fn config(version: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "cniVersion": version,
        "name": "testnet",
        "type": "test",
        "ipam": {"type": "host-local", "subnet": "10.1.0.0/16"},
        "futureKey": [1, 2]
    }))
    .unwrap()
}

fn run(plugin: &TestPlugin, env: &HashMap<String, String>, stdin: &[u8]) -> Outcome {
    dispatch(plugin, |k: &str| env.get(k).map(OsString::from), stdin)
}

fn run_default(env: &HashMap<String, String>, stdin: &[u8]) -> Outcome {
    run(&TestPlugin::default(), env, stdin)
}

/// A successful outcome's stdout as one JSON value.
fn ok_json(out: &Outcome) -> Value {
    assert_eq!(
        out.exit_code,
        0,
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    single_json(&out.stdout)
}

/// stdout is exactly one JSON object, nothing before or after it.
fn single_json(stdout: &[u8]) -> Value {
    let values: Vec<Value> = serde_json::Deserializer::from_slice(stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}",
                String::from_utf8_lossy(stdout)
            )
        });
    assert_eq!(
        values.len(),
        1,
        "stdout: {}",
        String::from_utf8_lossy(stdout)
    );
    assert!(values[0].is_object());
    values.into_iter().next().unwrap()
}

/// An error outcome: non-zero exit, one JSON error object on stdout,
/// nothing on stderr. Returns it after checking its shape.
fn err_json(out: &Outcome, want_code: u32) -> Value {
    assert_ne!(out.exit_code, 0);
    let v = single_json(&out.stdout);
    assert_eq!(v["code"], json!(want_code), "{v}");
    assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v["cniVersion"].is_string(), "{v}");
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert!(
        keys.iter()
            .all(|k| ["cniVersion", "code", "msg", "details"].contains(&k.as_str())),
        "{v}"
    );
    assert!(out.stderr.is_empty());
    v
}

fn supported() -> Value {
    json!([
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"
    ])
}

// ---- VERSION ---------------------------------------------------------------------

#[test]
fn version_echoes_the_input_version() {
    let env = env_with("VERSION");
    for v in [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
    ] {
        let out = run_default(&env, format!(r#"{{"cniVersion":"{v}"}}"#).as_bytes());
        assert_eq!(
            ok_json(&out),
            json!({"cniVersion": v, "supportedVersions": supported()})
        );
        assert!(out.stderr.is_empty());
    }
}

#[test]
fn version_answers_latest_for_empty_or_unknown() {
    let env = env_with("VERSION");
    for stdin in [
        &b""[..],
        b"  \n\t",
        br#"{"cniVersion":"9.9.9"}"#,
        br#"{"cniVersion":""}"#,
        br#"{}"#,
        br#"{"name":"n","type":"x"}"#,
        b"[]",
    ] {
        let out = run_default(&env, stdin);
        assert_eq!(
            ok_json(&out),
            json!({"cniVersion": "1.1.0", "supportedVersions": supported()}),
            "{}",
            String::from_utf8_lossy(stdin)
        );
    }
}

#[test]
fn version_bad_json_is_code_6() {
    let env = env_with("VERSION");
    for stdin in [&b"{"[..], b"not json", br#"{"cniVersion":"1.0.0""#] {
        err_json(&run_default(&env, stdin), code::DECODE);
    }
    // A cniVersion that is not a string cannot be decoded either.
    for stdin in [
        &br#"{"cniVersion":1}"#[..],
        br#"{"cniVersion":null}"#,
        br#"{"cniVersion":["1.0.0"]}"#,
    ] {
        let v = err_json(&run_default(&env, stdin), code::DECODE);
        assert_eq!(v["cniVersion"], json!("1.1.0"));
    }
}

#[test]
fn version_needs_no_other_env() {
    let env: HashMap<String, String> = [("CNI_COMMAND".to_string(), "VERSION".to_string())].into();
    let plugin = TestPlugin::default();
    let out = run(&plugin, &env, br#"{"cniVersion":"0.4.0"}"#);
    assert_eq!(ok_json(&out)["cniVersion"], json!("0.4.0"));
    assert!(plugin.calls().is_empty());
}

// ---- environment -------------------------------------------------------------------

#[test]
fn missing_command_prints_about_to_stderr() {
    let mut env = add_env();
    env.remove("CNI_COMMAND");
    for env in [env.clone(), {
        let mut e = env;
        e.insert("CNI_COMMAND".into(), String::new());
        e
    }] {
        let plugin = TestPlugin::default();
        let out = run(&plugin, &env, &config("1.1.0"));
        assert_eq!(out.exit_code, 0);
        assert!(out.stdout.is_empty());
        assert_eq!(String::from_utf8(out.stderr).unwrap(), format!("{ABOUT}\n"));
        assert!(plugin.calls().is_empty());
    }
}

#[test]
fn unknown_command_is_code_4() {
    for cmd in ["FOO", "add", "Add", "DELETE", " ADD"] {
        let v = err_json(
            &run_default(&env_with(cmd), &config("1.1.0")),
            code::INVALID_ENV,
        );
        assert_eq!(v["msg"], json!(format!("unknown CNI_COMMAND: {cmd}")));
    }
}

#[test]
fn missing_env_vars_are_listed() {
    let only_cmd = |cmd: &str| -> HashMap<String, String> {
        [("CNI_COMMAND".to_string(), cmd.to_string())].into()
    };
    let cases = [
        (
            "ADD",
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing",
        ),
        (
            "CHECK",
            "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing",
        ),
        (
            "DEL",
            "required env variables [CNI_CONTAINERID,CNI_IFNAME,CNI_PATH] missing",
        ),
        ("GC", "required env variables [CNI_PATH] missing"),
        ("STATUS", "required env variables [CNI_PATH] missing"),
    ];
    for (cmd, msg) in cases {
        let plugin = TestPlugin::default();
        let v = err_json(
            &run(&plugin, &only_cmd(cmd), &config("1.1.0")),
            code::INVALID_ENV,
        );
        assert_eq!(v["msg"], json!(msg), "{cmd}");
        assert_eq!(
            v["cniVersion"],
            json!("1.1.0"),
            "errors speak the config's version"
        );
        assert!(plugin.calls().is_empty());
    }
    // One missing, and an empty value counts as missing.
    let mut env = add_env();
    env.remove("CNI_NETNS");
    env.insert("CNI_PATH".into(), String::new());
    let v = err_json(&run_default(&env, &config("0.4.0")), code::INVALID_ENV);
    assert_eq!(
        v["msg"],
        json!("required env variables [CNI_NETNS,CNI_PATH] missing")
    );
    assert_eq!(v["cniVersion"], json!("0.4.0"));
}

#[test]
fn bad_container_id_is_code_4() {
    for id in ["-abc", ".abc", "a b", "a/b", "ab:c", "é"] {
        let mut env = add_env();
        env.insert("CNI_CONTAINERID".into(), id.into());
        let plugin = TestPlugin::default();
        err_json(&run(&plugin, &env, &config("1.1.0")), code::INVALID_ENV);
        assert!(plugin.calls().is_empty(), "{id}");
    }
}

#[test]
fn bad_ifname_is_code_4() {
    for ifname in ["eth0:1", "a/b", "a b", ".", "..", "1234567890123456"] {
        for cmd in ["ADD", "DEL", "CHECK"] {
            let mut env = env_with(cmd);
            env.insert("CNI_IFNAME".into(), ifname.into());
            err_json(&run_default(&env, &config("1.1.0")), code::INVALID_ENV);
        }
    }
    // 15 bytes is the limit, and it is fine.
    let mut env = add_env();
    env.insert("CNI_IFNAME".into(), "123456789012345".into());
    ok_json(&run_default(&env, &config("1.1.0")));
}

#[test]
fn bad_cni_args_is_code_4() {
    let mut env = add_env();
    env.insert("CNI_ARGS".into(), "A=1;NOEQUALS".into());
    err_json(&run_default(&env, &config("1.1.0")), code::INVALID_ENV);
}

// ---- stdin ------------------------------------------------------------------------------

#[test]
fn bad_json_is_code_6() {
    for stdin in [&b""[..], b"{", b"nope", br#"{"name":"n",}"#] {
        for cmd in ["ADD", "DEL", "CHECK", "GC", "STATUS"] {
            let v = err_json(&run_default(&env_with(cmd), stdin), code::DECODE);
            assert_eq!(v["cniVersion"], json!("1.1.0"));
        }
    }
}

#[test]
fn non_object_json_is_code_6() {
    for stdin in [
        &b"[]"[..],
        b"null",
        b"42",
        br#""str""#,
        b"true",
        br#"[{"name":"n"}]"#,
    ] {
        err_json(&run_default(&add_env(), stdin), code::DECODE);
    }
}

#[test]
fn wrongly_typed_known_field_is_code_6() {
    let stdin = br#"{"cniVersion":"1.0.0","name":"n","ipMasq":"yes"}"#;
    err_json(&run_default(&add_env(), stdin), code::DECODE);
}

#[test]
fn unsupported_config_version_is_code_1_with_details() {
    for bad in ["1.2.0", "0.5.0", "2.0"] {
        let plugin = TestPlugin::default();
        let v = err_json(
            &run(&plugin, &add_env(), &config(bad)),
            code::INCOMPATIBLE_VERSION,
        );
        assert_eq!(v["msg"], json!("incompatible CNI versions"));
        assert_eq!(
            v["details"],
            json!(format!(
                "config is \"{bad}\", plugin supports [\"0.1.0\", \"0.2.0\", \"0.3.0\", \"0.3.1\", \"0.4.0\", \"1.0.0\", \"1.1.0\"]"
            ))
        );
        assert_eq!(v["cniVersion"], json!("1.1.0"));
        assert!(plugin.calls().is_empty());
    }
}

#[test]
fn missing_config_version_means_0_1_0() {
    let plugin = TestPlugin::default();
    let out = run(&plugin, &add_env(), br#"{"name":"testnet","type":"test"}"#);
    let v = ok_json(&out);
    assert_eq!(v["cniVersion"], json!("0.1.0"));
    assert!(v.get("ip4").is_some());
    assert_eq!(plugin.calls()[0].version, "0.1.0");
}

#[test]
fn bad_or_missing_network_name_is_code_7() {
    for conf in [
        json!({"cniVersion": "1.0.0", "type": "t"}),
        json!({"cniVersion": "1.0.0", "name": "", "type": "t"}),
        json!({"cniVersion": "1.0.0", "name": "bad name", "type": "t"}),
        json!({"cniVersion": "1.0.0", "name": "-lead", "type": "t"}),
        json!({"cniVersion": "1.0.0", "name": "a/b", "type": "t"}),
    ] {
        for cmd in ["ADD", "DEL"] {
            let plugin = TestPlugin::default();
            let v = err_json(
                &run(&plugin, &env_with(cmd), &serde_json::to_vec(&conf).unwrap()),
                code::INVALID_CONFIG,
            );
            assert_eq!(v["cniVersion"], json!("1.0.0"));
            assert!(plugin.calls().is_empty());
        }
    }
}

// ---- version gates -------------------------------------------------------------------

#[test]
fn check_needs_0_4_0() {
    for old in ["0.1.0", "0.2.0", "0.3.0", "0.3.1"] {
        let plugin = TestPlugin::default();
        let v = err_json(
            &run(&plugin, &env_with("CHECK"), &config(old)),
            code::INCOMPATIBLE_VERSION,
        );
        assert_eq!(v["cniVersion"], json!(old));
        assert!(plugin.calls().is_empty());
    }
    for ok in ["0.4.0", "1.0.0", "1.1.0"] {
        let plugin = TestPlugin::default();
        let out = run(&plugin, &env_with("CHECK"), &config(ok));
        assert_eq!(out.exit_code, 0, "{ok}");
        assert!(out.stdout.is_empty());
        assert_eq!(plugin.calls()[0].command, Command::Check);
    }
}

#[test]
fn gc_and_status_need_1_1_0() {
    for cmd in ["GC", "STATUS"] {
        for old in ["0.3.1", "0.4.0", "1.0.0"] {
            let plugin = TestPlugin::default();
            let v = err_json(
                &run(&plugin, &env_with(cmd), &config(old)),
                code::INCOMPATIBLE_VERSION,
            );
            assert_eq!(v["cniVersion"], json!(old));
            assert!(plugin.calls().is_empty());
        }
    }
}

#[test]
fn gc_and_status_need_only_cni_path() {
    for (cmd, want) in [("GC", Command::Gc), ("STATUS", Command::Status)] {
        let env: HashMap<String, String> = [
            ("CNI_COMMAND".to_string(), cmd.to_string()),
            ("CNI_PATH".to_string(), "/opt/cni/bin".to_string()),
        ]
        .into();
        let plugin = TestPlugin::default();
        let out = run(&plugin, &env, &config("1.1.0"));
        assert_eq!(out.exit_code, 0);
        assert!(out.stdout.is_empty() && out.stderr.is_empty());
        let seen = plugin.calls();
        assert_eq!(seen[0].command, want);
        assert_eq!(
            (seen[0].container_id.as_str(), seen[0].ifname.as_str()),
            ("", "")
        );
        assert_eq!(seen[0].netns, None);
    }
}

#[test]
fn status_failure_is_printed() {
    let plugin = TestPlugin {
        other_result: Some(CniError::not_available("no IPs left")),
        ..TestPlugin::default()
    };
    let v = err_json(
        &run(&plugin, &env_with("STATUS"), &config("1.1.0")),
        code::NOT_AVAILABLE,
    );
    assert_eq!(
        v,
        json!({"cniVersion": "1.1.0", "code": 50, "msg": "no IPs left"})
    );
}

// ---- ADD / DEL ---------------------------------------------------------------------------

#[test]
fn add_result_is_printed_in_the_config_version() {
    let cases = [
        (
            "0.2.0",
            json!({
                "cniVersion": "0.2.0",
                "ip4": {"ip": "10.1.0.5/16", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]},
                "ip6": {"ip": "2001:db8::5/64", "gateway": "2001:db8::1", "routes": [{"dst": "::/0"}]},
                "dns": {"nameservers": ["10.1.0.10"]}
            }),
        ),
        (
            "0.4.0",
            json!({
                "cniVersion": "0.4.0",
                "interfaces": [{"name": "eth0", "mac": "0a:58:0a:01:00:05", "sandbox": "/var/run/netns/t"}],
                "ips": [
                    {"version": "4", "interface": 0, "address": "10.1.0.5/16", "gateway": "10.1.0.1"},
                    {"version": "4", "interface": 0, "address": "10.1.0.6/16"},
                    {"version": "6", "interface": 0, "address": "2001:db8::5/64", "gateway": "2001:db8::1"}
                ],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "table": 100}, {"dst": "::/0"}],
                "dns": {"nameservers": ["10.1.0.10"]}
            }),
        ),
    ];
    for (version, want) in cases {
        assert_eq!(
            ok_json(&run_default(&add_env(), &config(version))),
            want,
            "{version}"
        );
    }
    for version in ["1.0.0", "1.1.0"] {
        let mut want = dual_stack().to_value(cni_types::Version::V1_1_0).unwrap();
        want["cniVersion"] = json!(version);
        assert_eq!(ok_json(&run_default(&add_env(), &config(version))), want);
    }
}

#[test]
fn add_passes_the_environment_through() {
    let mut env = add_env();
    env.insert(
        "CNI_ARGS".into(),
        "IgnoreUnknown=1;IP=10.1.0.9;;X=a=b".into(),
    );
    let plugin = TestPlugin::default();
    let stdin = config("1.0.0");
    ok_json(&run(&plugin, &env, &stdin));
    let seen = &plugin.calls()[0];
    assert_eq!(seen.command, Command::Add);
    assert_eq!(seen.container_id, "cnitool-0123abcd");
    assert_eq!(seen.netns, Some(PathBuf::from("/var/run/netns/t")));
    assert_eq!(seen.ifname, "eth0");
    assert_eq!(
        seen.path,
        [
            PathBuf::from("/opt/cni/bin"),
            PathBuf::from("/usr/libexec/cni")
        ]
    );
    assert_eq!(
        seen.args,
        [("IgnoreUnknown", "1"), ("IP", "10.1.0.9"), ("X", "a=b")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    assert_eq!(seen.name, "testnet");
    assert_eq!(seen.version, "1.0.0");
    assert_eq!(seen.stdin, stdin, "the config is handed over byte for byte");
}

#[test]
fn add_error_is_printed_in_the_config_version() {
    let plugin = TestPlugin {
        add_result: Some(Err(
            CniError::try_again("store locked").with_details("retry")
        )),
        ..TestPlugin::default()
    };
    let out = run(&plugin, &add_env(), &config("0.3.1"));
    let v = err_json(&out, code::TRY_AGAIN_LATER);
    assert_eq!(
        v,
        json!({"cniVersion": "0.3.1", "code": 11, "msg": "store locked", "details": "retry"})
    );
}

#[test]
fn add_result_without_ips_cannot_be_printed_as_0_2_0() {
    let plugin = TestPlugin {
        add_result: Some(Ok(CniResult::default())),
        ..TestPlugin::default()
    };
    let v = err_json(
        &run(&plugin, &add_env(), &config("0.2.0")),
        code::INCOMPATIBLE_VERSION,
    );
    assert_eq!(v["msg"], json!("cannot convert: no valid IP addresses"));
    assert_eq!(v["cniVersion"], json!("0.2.0"));
}

#[test]
fn del_without_netns_is_accepted() {
    let mut env = env_with("DEL");
    env.remove("CNI_NETNS");
    let plugin = TestPlugin::default();
    let out = run(&plugin, &env, &config("1.1.0"));
    assert_eq!(out.exit_code, 0);
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    let seen = &plugin.calls()[0];
    assert_eq!(seen.command, Command::Del);
    assert_eq!(seen.netns, None);
    // An empty CNI_NETNS is the same as none.
    env.insert("CNI_NETNS".into(), String::new());
    let plugin = TestPlugin::default();
    assert_eq!(run(&plugin, &env, &config("0.1.0")).exit_code, 0);
    assert_eq!(plugin.calls()[0].netns, None);
}

#[test]
fn del_failure_is_one_json_object() {
    let plugin = TestPlugin {
        other_result: Some(CniError::new(999, "boom")),
        ..TestPlugin::default()
    };
    let v = err_json(&run(&plugin, &env_with("DEL"), &config("1.0.0")), 999);
    assert_eq!(
        v,
        json!({"cniVersion": "1.0.0", "code": 999, "msg": "boom"})
    );
}

#[test]
fn every_error_path_prints_exactly_one_object_and_fails() {
    let mut no_cmd_args = add_env();
    no_cmd_args.insert("CNI_ARGS".into(), "=x".into());
    let cases: Vec<(HashMap<String, String>, Vec<u8>, u32)> = vec![
        (env_with("NOPE"), config("1.1.0"), code::INVALID_ENV),
        (env_with("VERSION"), b"{".to_vec(), code::DECODE),
        (add_env(), b"{".to_vec(), code::DECODE),
        (add_env(), b"[1]".to_vec(), code::DECODE),
        (add_env(), config("7.7.7"), code::INCOMPATIBLE_VERSION),
        (
            add_env(),
            br#"{"cniVersion":"1.1.0"}"#.to_vec(),
            code::INVALID_CONFIG,
        ),
        (
            env_with("CHECK"),
            config("0.3.1"),
            code::INCOMPATIBLE_VERSION,
        ),
        (env_with("GC"), config("1.0.0"), code::INCOMPATIBLE_VERSION),
        (
            env_with("STATUS"),
            config("1.0.0"),
            code::INCOMPATIBLE_VERSION,
        ),
        (no_cmd_args, config("1.1.0"), code::INVALID_ENV),
    ];
    for (env, stdin, want) in cases {
        let out = run_default(&env, &stdin);
        assert_ne!(out.exit_code, 0);
        let text = String::from_utf8(out.stdout.clone()).unwrap();
        assert_eq!(text.trim_start(), text, "nothing before the object");
        assert!(text.ends_with("}\n"), "{text:?}");
        err_json(&out, want);
    }
}
