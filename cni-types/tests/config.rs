//! Config round trips (unknown fields kept everywhere) and the config helpers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use cni_types::config::{Attachment, IpRequest};
use cni_types::error::code;
use cni_types::{NetConf, NetConfList, Version};
use serde_json::{Value, json};

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/input")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn conf(v: Value) -> NetConf {
    serde_json::from_value(v).unwrap()
}

fn list(v: Value) -> NetConfList {
    serde_json::from_value(v).unwrap()
}

// ---- round trips -------------------------------------------------------------

#[test]
fn full_plugin_config_round_trips() {
    let raw = fixture("netconf-full.json");
    let parsed = conf(raw.clone());
    let back = serde_json::to_value(&parsed).unwrap();
    assert_eq!(back, raw);
    // From bytes too, as a plugin reads stdin.
    let from_bytes: NetConf = serde_json::from_slice(&serde_json::to_vec(&raw).unwrap()).unwrap();
    assert_eq!(from_bytes, parsed);
}

#[test]
fn full_plugin_config_fields_are_typed() {
    let c = conf(fixture("netconf-full.json"));
    assert_eq!(c.cni_version.as_deref(), Some("1.1.0"));
    assert_eq!(c.name.as_deref(), Some("dbnet"));
    assert_eq!(c.plugin_type.as_deref(), Some("bridge"));
    let caps = c.capabilities.as_ref().unwrap();
    assert_eq!(caps.get("portMappings"), Some(&true));
    assert_eq!(caps.get("futureCap"), Some(&false));
    assert_eq!(c.ip_masq, Some(true));

    let rc = c.runtime_config.as_ref().unwrap();
    let ips: Vec<String> = rc
        .ips
        .as_ref()
        .unwrap()
        .iter()
        .map(IpRequest::to_string)
        .collect();
    assert_eq!(ips, ["10.1.0.42/16", "10.1.0.43", "2001:db8:1::42/64"]);
    assert_eq!(rc.ips.as_ref().unwrap()[1].prefix, None);
    assert_eq!(rc.mac.as_deref(), Some("0a:58:0a:01:00:2a"));
    let ranges = rc.ip_ranges.as_ref().unwrap();
    assert_eq!(ranges.len(), 2);
    assert_eq!(ranges[0][0].range_start.unwrap().to_string(), "10.1.0.20");
    assert_eq!(ranges[0][1].gateway, None);
    let pm = rc.port_mappings.as_ref().unwrap();
    assert_eq!(
        (
            pm[0].host_port,
            pm[0].container_port,
            pm[0].protocol.as_str()
        ),
        (8080, 80, "tcp")
    );
    assert_eq!(pm[1].host_ip, "192.0.2.10");
    let bw = rc.bandwidth.as_ref().unwrap();
    assert_eq!(bw.egress_burst, Some(400_000));
    assert_eq!(rc.dns.as_ref().unwrap().searches, ["svc.cluster.local"]);
    assert_eq!(
        rc.extra.len(),
        2,
        "unknown runtimeConfig keys land in extra"
    );
    assert!(rc.extra.contains_key("futureRuntimeKey"));
    assert!(rc.extra.contains_key("infinibandGUID"));

    let args = c.args.as_ref().unwrap();
    let cni = args.cni.as_ref().unwrap();
    assert_eq!(cni.ips.len(), 2);
    assert_eq!(cni.mac.as_deref(), Some("0a:58:0a:01:00:2c"));
    assert_eq!(cni.labels[1].key, "tier");
    assert_eq!(cni.extra["futureCniArg"], json!("kept"));
    assert_eq!(args.extra["k8s"]["podName"], json!("db-0"));

    let ipam = c.ipam.as_ref().unwrap();
    assert_eq!(ipam.plugin_type, "host-local");
    assert_eq!(ipam.extra["dataDir"], json!("/var/lib/cni/networks"));
    assert_eq!(c.dns.as_ref().unwrap().domain, "cluster.local");
    assert_eq!(
        c.prev_result.as_ref().unwrap()["unknownResultKey"],
        json!(true)
    );
    assert_eq!(c.valid_attachments.as_ref().unwrap().len(), 2);
    assert_eq!(c.legacy_attachments.as_ref().unwrap().len(), 1);

    // Unknown top-level keys, `cni.dev/` ones and null values included.
    for key in [
        "cni.dev/future",
        "bridge",
        "isGateway",
        "mtu",
        "hairpinMode",
        "vlanTrunk",
        "topLevelNull",
        "topLevelNumber",
    ] {
        assert!(c.extra.contains_key(key), "{key}");
    }
    assert_eq!(c.extra["topLevelNull"], Value::Null);
    assert_eq!(c.extra.len(), 8);
}

#[test]
fn minimal_plugin_config_round_trips() {
    for raw in [
        json!({}),
        json!({"type": "bridge"}),
        json!({"cniVersion": "0.3.1", "name": "n", "type": "bridge", "ipam": {}}),
        json!({"type": "bridge", "ipam": {"type": "dhcp"}, "capabilities": {}}),
        json!({"type": "x", "runtimeConfig": {}, "args": {}, "cni.dev/valid-attachments": []}),
        json!({"type": "x", "args": {"cni": {}}, "ipMasq": false}),
    ] {
        let back = serde_json::to_value(conf(raw.clone())).unwrap();
        assert_eq!(back, raw);
    }
}

#[test]
fn full_conflist_round_trips() {
    let raw = fixture("conflist-full.json");
    let parsed = list(raw.clone());
    assert_eq!(serde_json::to_value(&parsed).unwrap(), raw);
    assert_eq!(parsed.cni_version.as_deref(), Some("1.0.0"));
    assert_eq!(parsed.cni_versions.as_ref().unwrap().len(), 4);
    assert_eq!(parsed.name, "dbnet");
    assert_eq!(parsed.disable_check, Some(true));
    assert_eq!(parsed.disable_gc, Some(false));
    assert_eq!(parsed.load_only_inlined_plugins, Some(true));
    assert_eq!(parsed.plugins.len(), 3);
    assert_eq!(
        parsed.plugins[0].extra["futurePluginKey"],
        json!({"a": "b"})
    );
    assert_eq!(
        parsed.plugins[0].ipam.as_ref().unwrap().extra["futureIpamKey"],
        json!([true])
    );
    assert_eq!(parsed.extra.len(), 2);
    assert!(parsed.extra.contains_key("futureListKey"));
}

#[test]
fn minimal_conflist_round_trips() {
    // `plugins` is always printed, even when empty.
    let raw = json!({"name": "n", "plugins": []});
    assert_eq!(serde_json::to_value(list(raw.clone())).unwrap(), raw);
    let without_plugins = list(json!({"name": "n"}));
    assert!(without_plugins.plugins.is_empty());
    // `name` is required.
    assert!(serde_json::from_value::<NetConfList>(json!({"plugins": []})).is_err());
}

#[test]
fn bad_typed_fields_are_rejected() {
    for bad in [
        json!({"cniVersion": 1}),
        json!({"capabilities": {"portMappings": "yes"}}),
        json!({"runtimeConfig": {"ips": ["not-an-ip"]}}),
        json!({"runtimeConfig": {"ips": ["10.0.0.1/33"]}}),
        json!({"runtimeConfig": {"portMappings": [{"hostPort": 70000, "containerPort": 80}]}}),
        json!({"ipMasq": "true"}),
        json!({"cni.dev/valid-attachments": [{"containerID": "a"}]}),
        json!({"args": {"cni": {"labels": [{"key": "k"}]}}}),
    ] {
        assert!(
            serde_json::from_value::<NetConf>(bad.clone()).is_err(),
            "{bad}"
        );
    }
}

// ---- NetConf::version ----------------------------------------------------------

#[test]
fn version_missing_means_0_1_0() {
    assert_eq!(conf(json!({"name": "n"})).version(), Ok(Version::V0_1_0));
    assert_eq!(
        conf(json!({"cniVersion": ""})).version(),
        Ok(Version::V0_1_0)
    );
}

#[test]
fn version_supported() {
    for v in cni_types::version::SUPPORTED {
        assert_eq!(conf(json!({"cniVersion": v.as_str()})).version(), Ok(v));
    }
}

#[test]
fn version_unsupported_is_code_1_with_details() {
    for bad in ["1.2.0", "0.5.0", "1.0", "v1.0.0", "latest"] {
        let err = conf(json!({"cniVersion": bad})).version().unwrap_err();
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION, "{bad}");
        assert_eq!(err.msg, "incompatible CNI versions");
        assert_eq!(
            err.details,
            format!(
                "config is \"{bad}\", plugin supports [\"0.1.0\", \"0.2.0\", \"0.3.0\", \"0.3.1\", \"0.4.0\", \"1.0.0\", \"1.1.0\"]"
            )
        );
    }
}

// ---- GC attachments -------------------------------------------------------------

fn att(id: &str, ifname: &str) -> Attachment {
    Attachment {
        container_id: id.into(),
        ifname: ifname.into(),
        extra: Default::default(),
    }
}

#[test]
fn gc_valid_attachments_prefers_the_spec_key() {
    let c = conf(fixture("netconf-full.json"));
    let mut second = att("def456", "net1");
    second
        .extra
        .insert("futureAttachmentKey".into(), json!("y"));
    assert_eq!(
        c.gc_valid_attachments(),
        Some(&[att("abc123", "eth0"), second][..])
    );
    // Even an empty spec list wins over a non-empty legacy one.
    let c = conf(json!({
        "cni.dev/valid-attachments": [],
        "cni.dev/attachments": [{"containerID": "a", "ifname": "eth0"}]
    }));
    assert_eq!(c.gc_valid_attachments(), Some(&[][..]));
}

#[test]
fn gc_valid_attachments_falls_back_to_the_legacy_key() {
    let c = conf(json!({"cni.dev/attachments": [{"containerID": "a", "ifname": "eth0"}]}));
    assert_eq!(c.gc_valid_attachments(), Some(&[att("a", "eth0")][..]));
}

#[test]
fn gc_valid_attachments_none_when_neither() {
    assert_eq!(conf(json!({"type": "bridge"})).gc_valid_attachments(), None);
    // A look-alike key in extra does not count.
    assert_eq!(
        conf(json!({"cni.dev/attachment": []})).gc_valid_attachments(),
        None
    );
}

// ---- prevResult -------------------------------------------------------------------

#[test]
fn prev_result_is_decoded_in_the_config_version() {
    let c = conf(json!({
        "cniVersion": "0.2.0",
        "prevResult": {"ip4": {"ip": "10.0.0.5/24", "gateway": "10.0.0.1"}}
    }));
    let r = c.prev_result().unwrap().unwrap();
    assert_eq!(r.ips[0].address.to_string(), "10.0.0.5/24");
    assert_eq!(conf(json!({"cniVersion": "1.0.0"})).prev_result(), Ok(None));
    let bad = conf(json!({"cniVersion": "1.0.0", "prevResult": {"ips": [{"address": 5}]}}));
    let err = bad.prev_result().unwrap_err();
    assert_eq!(err.code, code::DECODE);
    assert!(err.msg.starts_with("invalid prevResult: "), "{}", err.msg);
}

// ---- NetConfList helpers ------------------------------------------------------------

#[test]
fn selected_version_is_the_highest_supported() {
    let l = list(fixture("conflist-full.json"));
    assert_eq!(l.selected_version(), Some(Version::V1_1_0));

    let cases = [
        (
            json!({"name": "n", "cniVersion": "0.4.0"}),
            Some(Version::V0_4_0),
        ),
        (
            json!({"name": "n", "cniVersion": "1.1.0", "cniVersions": ["0.3.1"]}),
            Some(Version::V1_1_0),
        ),
        (
            json!({"name": "n", "cniVersions": ["0.3.1", "1.0.0", "0.4.0"]}),
            Some(Version::V1_0_0),
        ),
        (
            json!({"name": "n", "cniVersion": "9.9.9", "cniVersions": ["0.3.1"]}),
            Some(Version::V0_3_1),
        ),
        (
            json!({"name": "n", "cniVersion": "1.2.0", "cniVersions": ["2.0.0"]}),
            None,
        ),
        (json!({"name": "n"}), None),
        (json!({"name": "n", "cniVersions": []}), None),
    ];
    for (raw, want) in cases {
        assert_eq!(list(raw.clone()).selected_version(), want, "{raw}");
    }
}

#[test]
fn plugin_config_injects_name_and_selected_version() {
    let l = list(fixture("conflist-full.json"));
    let p0 = l.plugin_config(0).unwrap();
    assert_eq!(p0.name.as_deref(), Some("dbnet"));
    assert_eq!(p0.cni_version.as_deref(), Some("1.1.0"));
    assert_eq!(p0.plugin_type.as_deref(), Some("bridge"));
    // Everything else is the plugin object as written.
    let mut want = fixture("conflist-full.json")["plugins"][0].clone();
    want["name"] = json!("dbnet");
    want["cniVersion"] = json!("1.1.0");
    assert_eq!(serde_json::to_value(&p0).unwrap(), want);

    // A plugin's own name and cniVersion are overridden by the list's.
    let p2 = l.plugin_config(2).unwrap();
    assert_eq!(p2.name.as_deref(), Some("dbnet"));
    assert_eq!(p2.cni_version.as_deref(), Some("1.1.0"));
    assert_eq!(p2.extra["sysctl"], json!({"net.core.somaxconn": "500"}));

    assert!(l.plugin_config(3).is_none());
}

#[test]
fn plugin_config_without_a_supported_version() {
    // Nothing supported: the list's own cniVersion is passed on, so that the
    // plugin reports the incompatibility itself.
    let l = list(json!({"name": "n", "cniVersion": "9.9.9", "plugins": [{"type": "bridge"}]}));
    let p = l.plugin_config(0).unwrap();
    assert_eq!(p.cni_version.as_deref(), Some("9.9.9"));
    assert_eq!(p.version().unwrap_err().code, code::INCOMPATIBLE_VERSION);
    // Nothing at all: no version, which a plugin reads as 0.1.0.
    let l = list(json!({"name": "n", "plugins": [{"type": "bridge", "cniVersion": "1.0.0"}]}));
    let p = l.plugin_config(0).unwrap();
    assert_eq!(p.cni_version, None);
    assert_eq!(p.version(), Ok(Version::V0_1_0));
}

#[test]
fn ip_request_text_forms() {
    for ok in ["10.0.0.1", "10.0.0.1/24", "2001:db8::1", "2001:db8::1/64"] {
        let r: IpRequest = ok.parse().unwrap();
        assert_eq!(r.to_string(), ok);
        assert_eq!(serde_json::to_value(r).unwrap(), json!(ok));
    }
    for bad in [
        "",
        "10.0.0",
        "10.0.0.1/",
        "10.0.0.1/33",
        "x/24",
        "2001:db8::1/129",
    ] {
        assert!(bad.parse::<IpRequest>().is_err(), "{bad}");
    }
}
