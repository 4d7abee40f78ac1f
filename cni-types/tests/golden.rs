//! Golden-file tests for result conversion (every pair of versions) and for
//! the error JSON of every code.
//!
//! Inputs are hand-written, one per version, in `tests/golden/input/`.
//! Expected outputs live in `tests/golden/results/<from>_to_<to>.json` and
//! `tests/golden/errors/`. Run with `UPDATE_GOLDEN=1` to (re)write the
//! expected outputs instead of comparing; then read every changed file and
//! check it by hand against the spec before keeping it.
//!
//! All comparisons are between `serde_json::Value`s, so key order and
//! whitespace do not matter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use cni_types::error::code;
use cni_types::version::SUPPORTED;
use cni_types::{CniError, CniResult, Version};
use serde_json::{Value, json};

// ---- helpers ----------------------------------------------------------------

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "reading {}: {e} (run with UPDATE_GOLDEN=1?)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Compares `actual` with the golden file `rel` (under `tests/golden/`), or
/// writes it when `UPDATE_GOLDEN=1`.
fn check_golden(rel: &str, actual: &Value) {
    let path = golden_dir().join(rel);
    if updating() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut text = serde_json::to_string_pretty(actual).unwrap();
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        return;
    }
    let expected = read_json(&path);
    assert!(
        expected == *actual,
        "golden mismatch for {rel}\n--- expected\n{}\n--- actual\n{}",
        serde_json::to_string_pretty(&expected).unwrap(),
        serde_json::to_string_pretty(actual).unwrap(),
    );
}

fn input(version: Version) -> Value {
    read_json(&golden_dir().join(format!("input/result-{version}.json")))
}

fn convert(from: Version, to: Version) -> Value {
    let result = CniResult::from_value(input(from), from)
        .unwrap_or_else(|e| panic!("decoding the {from} fixture: {e}"));
    result
        .to_value(to)
        .unwrap_or_else(|e| panic!("converting {from} -> {to}: {e}"))
}

fn check_pair(from: Version, to: Version) {
    let out = convert(from, to);
    check_golden(&format!("results/{from}_to_{to}.json"), &out);
    check_spec_rules(from, to, &out);
}

fn is_legacy(v: Version) -> bool {
    v <= Version::V0_2_0
}

fn is_v04(v: Version) -> bool {
    (Version::V0_3_0..=Version::V0_4_0).contains(&v)
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

fn is_v4_cidr(s: &str) -> bool {
    s.parse::<ipnetwork::IpNetwork>().unwrap().is_ipv4()
}

/// The spec's conversion rules, checked by code on every output, in addition
/// to the golden comparison (so a wrong golden file cannot pass silently).
fn check_spec_rules(from: Version, to: Version, out: &Value) {
    let ctx = format!("{from} -> {to}");
    assert_eq!(out["cniVersion"], json!(to.as_str()), "{ctx}");
    // The DNS block survives every conversion unchanged.
    assert_eq!(out["dns"], input(from)["dns"], "{ctx}: dns");

    if is_legacy(to) {
        assert_eq!(keys(out), ["cniVersion", "dns", "ip4", "ip6"], "{ctx}");
        // The first address of each family, in the 1.x view of the input.
        let src = CniResult::from_value(input(from), from).unwrap();
        for (key, v4) in [("ip4", true), ("ip6", false)] {
            let first = src
                .ips
                .iter()
                .find(|ip| ip.address.is_ipv4() == v4)
                .unwrap();
            let block = &out[key];
            assert_eq!(
                block["ip"],
                json!(first.address.to_string()),
                "{ctx}: {key}"
            );
            let routes = block["routes"].as_array().unwrap();
            let want: Vec<Value> = src
                .routes
                .iter()
                .filter(|r| r.dst.is_ipv4() == v4)
                .map(|r| {
                    let mut m = json!({ "dst": r.dst.to_string() });
                    if let Some(gw) = r.gw {
                        m["gw"] = json!(gw.to_string());
                    }
                    m
                })
                .collect();
            assert_eq!(
                routes, &want,
                "{ctx}: {key}.routes keep only dst/gw, split by family"
            );
        }
        if is_legacy(from) {
            let mut want = input(from);
            want["cniVersion"] = json!(to.as_str());
            assert_eq!(
                *out, want,
                "{ctx}: same layout, only the version string differs"
            );
        }
        return;
    }

    // 0.3.x, 0.4.0 and 1.x all have interfaces/ips/routes.
    let ips = out["ips"].as_array().unwrap();
    for ip in ips {
        let v4 = is_v4_cidr(ip["address"].as_str().unwrap());
        if is_v04(to) {
            assert_eq!(
                ip["version"],
                json!(if v4 { "4" } else { "6" }),
                "{ctx}: {ip}"
            );
        } else {
            assert!(
                ip.get("version").is_none(),
                "{ctx}: 1.x has no ips[].version: {ip}"
            );
        }
        if is_legacy(from) {
            assert!(
                ip.get("interface").is_none(),
                "{ctx}: legacy has no interface index"
            );
        }
    }
    if is_legacy(from) {
        assert!(
            out.get("interfaces").is_none(),
            "{ctx}: legacy has no interfaces"
        );
        // ip4 then ip6; routes ip4's then ip6's.
        assert_eq!(ips.len(), 2, "{ctx}");
        assert!(is_v4_cidr(ips[0]["address"].as_str().unwrap()), "{ctx}");
        assert!(!is_v4_cidr(ips[1]["address"].as_str().unwrap()), "{ctx}");
    } else {
        assert_eq!(
            ips.len(),
            3,
            "{ctx}: no address is lost between 0.3+ layouts"
        );
        for iface in out["interfaces"].as_array().unwrap() {
            if is_v04(to) {
                for k in ["mtu", "socketPath", "pciID"] {
                    assert!(
                        iface.get(k).is_none(),
                        "{ctx}: 0.x interface has {k}: {iface}"
                    );
                }
            }
        }
    }
    // Routes are never reordered or changed between 0.3+ layouts.
    if !is_legacy(from) {
        assert_eq!(
            out["routes"],
            input(from)["routes"],
            "{ctx}: routes copied as they are"
        );
    }
    // Same layout family: only the version string changes.
    let same_family = from.result_format() == to.result_format();
    if same_family {
        let mut want = input(from);
        want["cniVersion"] = json!(to.as_str());
        assert_eq!(
            *out, want,
            "{ctx}: same layout, only the version string differs"
        );
    }
}

// ---- result conversion: every pair -----------------------------------------

macro_rules! pairs {
    ($($name:ident: $from:ident => $to:ident;)*) => {
        $(
            #[test]
            fn $name() {
                check_pair(Version::$from, Version::$to);
            }
        )*
        /// The names above cover every pair exactly once.
        #[test]
        fn pair_list_is_complete() {
            let listed = [$((Version::$from, Version::$to)),*];
            let mut want = Vec::new();
            for from in SUPPORTED {
                for to in SUPPORTED {
                    want.push((from, to));
                }
            }
            assert_eq!(listed.len(), 49);
            assert_eq!(listed.to_vec(), want);
        }
    };
}

pairs! {
    convert_0_1_0_to_0_1_0: V0_1_0 => V0_1_0;
    convert_0_1_0_to_0_2_0: V0_1_0 => V0_2_0;
    convert_0_1_0_to_0_3_0: V0_1_0 => V0_3_0;
    convert_0_1_0_to_0_3_1: V0_1_0 => V0_3_1;
    convert_0_1_0_to_0_4_0: V0_1_0 => V0_4_0;
    convert_0_1_0_to_1_0_0: V0_1_0 => V1_0_0;
    convert_0_1_0_to_1_1_0: V0_1_0 => V1_1_0;
    convert_0_2_0_to_0_1_0: V0_2_0 => V0_1_0;
    convert_0_2_0_to_0_2_0: V0_2_0 => V0_2_0;
    convert_0_2_0_to_0_3_0: V0_2_0 => V0_3_0;
    convert_0_2_0_to_0_3_1: V0_2_0 => V0_3_1;
    convert_0_2_0_to_0_4_0: V0_2_0 => V0_4_0;
    convert_0_2_0_to_1_0_0: V0_2_0 => V1_0_0;
    convert_0_2_0_to_1_1_0: V0_2_0 => V1_1_0;
    convert_0_3_0_to_0_1_0: V0_3_0 => V0_1_0;
    convert_0_3_0_to_0_2_0: V0_3_0 => V0_2_0;
    convert_0_3_0_to_0_3_0: V0_3_0 => V0_3_0;
    convert_0_3_0_to_0_3_1: V0_3_0 => V0_3_1;
    convert_0_3_0_to_0_4_0: V0_3_0 => V0_4_0;
    convert_0_3_0_to_1_0_0: V0_3_0 => V1_0_0;
    convert_0_3_0_to_1_1_0: V0_3_0 => V1_1_0;
    convert_0_3_1_to_0_1_0: V0_3_1 => V0_1_0;
    convert_0_3_1_to_0_2_0: V0_3_1 => V0_2_0;
    convert_0_3_1_to_0_3_0: V0_3_1 => V0_3_0;
    convert_0_3_1_to_0_3_1: V0_3_1 => V0_3_1;
    convert_0_3_1_to_0_4_0: V0_3_1 => V0_4_0;
    convert_0_3_1_to_1_0_0: V0_3_1 => V1_0_0;
    convert_0_3_1_to_1_1_0: V0_3_1 => V1_1_0;
    convert_0_4_0_to_0_1_0: V0_4_0 => V0_1_0;
    convert_0_4_0_to_0_2_0: V0_4_0 => V0_2_0;
    convert_0_4_0_to_0_3_0: V0_4_0 => V0_3_0;
    convert_0_4_0_to_0_3_1: V0_4_0 => V0_3_1;
    convert_0_4_0_to_0_4_0: V0_4_0 => V0_4_0;
    convert_0_4_0_to_1_0_0: V0_4_0 => V1_0_0;
    convert_0_4_0_to_1_1_0: V0_4_0 => V1_1_0;
    convert_1_0_0_to_0_1_0: V1_0_0 => V0_1_0;
    convert_1_0_0_to_0_2_0: V1_0_0 => V0_2_0;
    convert_1_0_0_to_0_3_0: V1_0_0 => V0_3_0;
    convert_1_0_0_to_0_3_1: V1_0_0 => V0_3_1;
    convert_1_0_0_to_0_4_0: V1_0_0 => V0_4_0;
    convert_1_0_0_to_1_0_0: V1_0_0 => V1_0_0;
    convert_1_0_0_to_1_1_0: V1_0_0 => V1_1_0;
    convert_1_1_0_to_0_1_0: V1_1_0 => V0_1_0;
    convert_1_1_0_to_0_2_0: V1_1_0 => V0_2_0;
    convert_1_1_0_to_0_3_0: V1_1_0 => V0_3_0;
    convert_1_1_0_to_0_3_1: V1_1_0 => V0_3_1;
    convert_1_1_0_to_0_4_0: V1_1_0 => V0_4_0;
    convert_1_1_0_to_1_0_0: V1_1_0 => V1_0_0;
    convert_1_1_0_to_1_1_0: V1_1_0 => V1_1_0;
}

/// No stale file hides among the goldens: exactly the 49 pairs exist.
#[test]
fn results_dir_holds_exactly_the_49_pairs() {
    if updating() {
        return;
    }
    let mut found: Vec<String> = std::fs::read_dir(golden_dir().join("results"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    found.sort();
    let mut want: Vec<String> = SUPPORTED
        .iter()
        .flat_map(|f| SUPPORTED.iter().map(move |t| format!("{f}_to_{t}.json")))
        .collect();
    want.sort();
    assert_eq!(found, want);
}

/// Every hand-written fixture is in its version's canonical form: decoding
/// and printing it in its own version gives it back unchanged.
#[test]
fn fixtures_round_trip_in_their_own_version() {
    for v in SUPPORTED {
        let raw = input(v);
        assert_eq!(raw["cniVersion"], json!(v.as_str()));
        let back = CniResult::from_value(raw.clone(), v)
            .unwrap()
            .to_value(v)
            .unwrap();
        assert_eq!(back, raw, "{v}");
    }
}

/// Downgrading and upgrading again loses only what the older layout cannot
/// hold; within 1.x and within 0.3/0.4 nothing is lost.
#[test]
fn downgrade_then_upgrade() {
    let full = CniResult::from_value(input(Version::V1_1_0), Version::V1_1_0).unwrap();
    let back = |via: Version| {
        let old = full.to_value(via).unwrap();
        CniResult::from_value(old, via).unwrap()
    };
    assert_eq!(back(Version::V1_0_0), full);
    let v04 = back(Version::V0_4_0);
    assert_eq!(v04.ips, full.ips);
    assert_eq!(v04.routes, full.routes);
    assert_eq!(v04.dns, full.dns);
    for (a, b) in v04.interfaces.iter().zip(&full.interfaces) {
        assert_eq!((&a.name, &a.mac, &a.sandbox), (&b.name, &b.mac, &b.sandbox));
        assert_eq!(
            (a.mtu, a.socket_path.as_str(), a.pci_id.as_str()),
            (None, "", "")
        );
    }
    let legacy = back(Version::V0_2_0);
    assert!(legacy.interfaces.is_empty());
    let addrs: Vec<String> = legacy.ips.iter().map(|ip| ip.address.to_string()).collect();
    assert_eq!(addrs, ["10.1.0.5/16", "2001:db8:1::5/64"]);
    assert!(legacy.ips.iter().all(|ip| ip.interface.is_none()));
    assert_eq!(legacy.routes.len(), 4);
    assert!(
        legacy
            .routes
            .iter()
            .all(|r| r.mtu.is_none() && r.table.is_none())
    );
}

// ---- result conversion: errors and version selection -----------------------

#[test]
fn no_ips_cannot_be_converted_to_legacy() {
    let no_ips = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
        "dns": {"nameservers": ["10.1.0.10"]}
    });
    let result = CniResult::from_value(no_ips, Version::V1_1_0).unwrap();
    for to in [Version::V0_1_0, Version::V0_2_0] {
        let err = result.to_value(to).unwrap_err();
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION, "{to}");
        assert_eq!(err.msg, "cannot convert: no valid IP addresses", "{to}");
    }
    // The newer layouts have no such limit.
    for to in [
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
    ] {
        let out = result.to_value(to).unwrap();
        assert!(out.get("ips").is_none(), "{to}");
    }
    // An entirely empty result too.
    let empty = CniResult::default();
    assert_eq!(
        empty.to_value(Version::V0_2_0).unwrap_err().code,
        code::INCOMPATIBLE_VERSION
    );
    assert_eq!(
        empty.to_value(Version::V1_1_0).unwrap(),
        json!({"cniVersion": "1.1.0"})
    );
}

#[test]
fn one_family_only_converts_to_legacy() {
    let v6_only = json!({
        "cniVersion": "1.0.0",
        "ips": [{"address": "2001:db8::5/64"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}, {"dst": "::/0"}]
    });
    let out = CniResult::from_value(v6_only, Version::V1_0_0)
        .unwrap()
        .to_value(Version::V0_2_0)
        .unwrap();
    // The v4 route has no ip4 block to live in and is dropped.
    assert_eq!(
        out,
        json!({"cniVersion": "0.2.0", "ip6": {"ip": "2001:db8::5/64", "routes": [{"dst": "::/0"}]}})
    );
}

#[test]
fn result_own_cni_version_wins_over_the_one_passed() {
    // A 0.2.0 result handed in as if it were 1.1.0 is still read as 0.2.0.
    let legacy = CniResult::from_value(input(Version::V0_2_0), Version::V1_1_0).unwrap();
    assert_eq!(legacy.ips.len(), 2);
    assert_eq!(legacy.ips[0].address.to_string(), "10.1.0.5/16");
    // A 1.1.0 result handed in as 0.2.0 is still read as 1.1.0.
    let modern = CniResult::from_value(input(Version::V1_1_0), Version::V0_2_0).unwrap();
    assert_eq!(modern.ips.len(), 3);
    assert_eq!(modern.interfaces[2].pci_id, "0000:3b:00.1");
    // Without a cniVersion (or with an empty one), the version passed in decides.
    for absent in [None, Some("")] {
        let mut raw = input(Version::V0_2_0);
        match absent {
            None => {
                raw.as_object_mut().unwrap().remove("cniVersion");
            }
            Some(s) => raw["cniVersion"] = json!(s),
        }
        let as_legacy = CniResult::from_value(raw.clone(), Version::V0_1_0).unwrap();
        assert_eq!(as_legacy.ips.len(), 2);
        // Read as 1.x, the legacy keys mean nothing.
        let as_v1 = CniResult::from_value(raw, Version::V1_1_0).unwrap();
        assert!(as_v1.ips.is_empty());
    }
}

#[test]
fn unsupported_result_version_is_an_error() {
    for bad in ["9.9.9", "1.2.0", "1.0", "0.5.0"] {
        let mut raw = input(Version::V1_1_0);
        raw["cniVersion"] = json!(bad);
        let err = CniResult::from_value(raw, Version::V1_1_0).unwrap_err();
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION, "{bad}");
        assert!(err.msg.contains(bad), "{bad}: {}", err.msg);
    }
}

#[test]
fn malformed_results_are_decode_errors() {
    for (raw, v) in [
        (
            json!({"cniVersion": "1.1.0", "ips": [{"address": "not-an-ip"}]}),
            Version::V1_1_0,
        ),
        (
            json!({"cniVersion": "0.4.0", "ips": [{"version": "4"}]}),
            Version::V0_4_0,
        ),
        (
            json!({"cniVersion": "0.2.0", "ip4": {"gateway": "10.0.0.1"}}),
            Version::V0_2_0,
        ),
        (
            json!({"cniVersion": "1.0.0", "routes": "nope"}),
            Version::V1_0_0,
        ),
    ] {
        let err = CniResult::from_value(raw.clone(), v).unwrap_err();
        assert_eq!(err.code, code::DECODE, "{raw}");
    }
    let err = CniResult::from_slice(b"{not json", Version::V1_1_0).unwrap_err();
    assert_eq!(err.code, code::DECODE);
    let ok = CniResult::from_slice(
        serde_json::to_vec(&input(Version::V0_4_0))
            .unwrap()
            .as_slice(),
        Version::V1_1_0,
    )
    .unwrap();
    assert_eq!(ok.ips.len(), 3);
}

// ---- error JSON --------------------------------------------------------------

/// One error per well-known code, plus plugin codes, as the suite builds them.
fn errors() -> Vec<(&'static str, CniError)> {
    vec![
        (
            "1-incompatible-version",
            CniError::incompatible_version("incompatible CNI versions"),
        ),
        (
            "2-unsupported-field",
            CniError::new(code::UNSUPPORTED_FIELD, "unsupported field \"vlanTrunk\""),
        ),
        (
            "3-unknown-container",
            CniError::new(code::UNKNOWN_CONTAINER, "missing containerID"),
        ),
        (
            "4-invalid-env",
            CniError::invalid_env("required env variables [CNI_NETNS] missing"),
        ),
        ("5-io", CniError::io("failed to read the config from stdin")),
        (
            "6-decode",
            CniError::decode("decoding network config from stdin: expected a JSON object"),
        ),
        (
            "7-invalid-config",
            CniError::invalid_config("missing network name"),
        ),
        (
            "11-try-again-later",
            CniError::try_again("the IPAM store is locked by another process"),
        ),
        (
            "50-not-available",
            CniError::not_available("plugin is not available"),
        ),
        (
            "51-limited-connectivity",
            CniError::new(
                code::LIMITED_CONNECTIVITY,
                "plugin is not available; existing containers may have limited connectivity",
            ),
        ),
        (
            "100-plugin-not-found",
            CniError::new(
                code::PLUGIN_NOT_FOUND,
                "failed to find plugin \"host-local\"",
            ),
        ),
        (
            "101-delegate-failed",
            CniError::new(code::DELEGATE_FAILED, "host-local ADD printed no JSON"),
        ),
        (
            "102-not-implemented",
            CniError::not_implemented("bridge ADD"),
        ),
        (
            "999-internal",
            CniError::new(999, "failed to set up the bridge"),
        ),
    ]
}

#[test]
fn error_json_for_every_code() {
    let errs = errors();
    let codes: Vec<u32> = errs.iter().map(|(_, e)| e.code).collect();
    assert_eq!(codes, [1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 100, 101, 102, 999]);
    for (name, err) in errs {
        let plain = err.to_json("1.1.0");
        let detailed = err
            .clone()
            .with_details(format!("details for code {}", err.code))
            .to_json("0.4.0");
        check_golden(
            &format!("errors/{name}.json"),
            &json!({ "withoutDetails": plain, "withDetails": detailed }),
        );
        // The shape itself, independent of the golden file.
        assert_eq!(keys(&plain), ["cniVersion", "code", "msg"], "{name}");
        assert_eq!(
            keys(&detailed),
            ["cniVersion", "code", "details", "msg"],
            "{name}"
        );
        assert_eq!(plain["code"], json!(err.code));
        assert_eq!(plain["msg"], json!(err.msg));
        assert_eq!(detailed["cniVersion"], json!("0.4.0"));
    }
}

#[test]
fn error_json_details() {
    let err = CniError::incompatible_version("incompatible CNI versions").with_details(format!(
        "config is \"9.9.9\", plugin supports {}",
        Version::supported_list()
    ));
    check_golden("errors/1-with-supported-list.json", &err.to_json("1.1.0"));
    // Empty details are left out, as Go's omitempty does.
    let empty = CniError::io("x").with_details("");
    assert!(empty.to_json("1.0.0").get("details").is_none());
    // context() prefixes the message and keeps the rest.
    let ctx = CniError::decode("bad")
        .with_details("d")
        .context("invalid prevResult");
    assert_eq!(
        ctx.to_json("0.3.1"),
        json!({"cniVersion": "0.3.1", "code": 6, "msg": "invalid prevResult: bad", "details": "d"})
    );
    // The error decodes back from the printed JSON (cniVersion is ignored).
    let printed = err.to_json("1.1.0");
    let back: CniError = serde_json::from_value(printed).unwrap();
    assert_eq!(back, err);
    assert_eq!(err.to_string(), format!("{}; {}", err.msg, err.details));
}
