//! `CNI_ARGS` parsing and the unknown-key check, edge cases included.

#![allow(clippy::unwrap_used)]

use cni_types::CniArgs;
use cni_types::error::code;

fn pairs(raw: &str) -> Vec<(String, String)> {
    CniArgs::parse(raw).unwrap().pairs().to_vec()
}

fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn plain_pairs_in_order() {
    let args =
        CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0").unwrap();
    assert_eq!(
        args.pairs(),
        owned(&[
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", "default"),
            ("K8S_POD_NAME", "web-0"),
        ])
    );
    assert_eq!(args.get("K8S_POD_NAME"), Some("web-0"));
    assert_eq!(args.get("missing"), None);
    assert!(!args.is_empty());
}

#[test]
fn equals_sign_inside_a_value_is_kept() {
    let args = CniArgs::parse("A=b=c;TOKEN=abc==;EMPTYISH==").unwrap();
    assert_eq!(args.get("A"), Some("b=c"));
    assert_eq!(args.get("TOKEN"), Some("abc=="));
    assert_eq!(args.get("EMPTYISH"), Some("="));
}

#[test]
fn empty_value_is_allowed() {
    let args = CniArgs::parse("A=;B=2").unwrap();
    assert_eq!(args.get("A"), Some(""));
    assert_eq!(args.get("B"), Some("2"));
}

#[test]
fn empty_segments_are_skipped() {
    assert_eq!(pairs("A=1;;B=2"), owned(&[("A", "1"), ("B", "2")]));
    assert_eq!(pairs("A=1;B=2;"), owned(&[("A", "1"), ("B", "2")]));
    assert_eq!(pairs(";A=1"), owned(&[("A", "1")]));
    assert_eq!(pairs(";;;"), owned(&[]));
    let empty = CniArgs::parse("").unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty, CniArgs::default());
    assert!(empty.check_known(&[]).is_ok());
}

#[test]
fn segment_without_equals_is_invalid_env() {
    for raw in ["A=1;B", "JUSTAKEY", "A=1;B;C=3", " "] {
        let err = CniArgs::parse(raw).unwrap_err();
        assert_eq!(err.code, code::INVALID_ENV, "{raw:?}");
        assert!(err.msg.contains("CNI_ARGS"), "{raw:?}: {}", err.msg);
    }
}

#[test]
fn empty_key_is_invalid_env() {
    for raw in ["=1", "A=1;=2", "=", "A=1;=;B=2"] {
        let err = CniArgs::parse(raw).unwrap_err();
        assert_eq!(err.code, code::INVALID_ENV, "{raw:?}");
    }
}

#[test]
fn keys_are_case_sensitive() {
    let args = CniArgs::parse("ip=10.0.0.5;MAC=aa:bb:cc:dd:ee:ff").unwrap();
    assert_eq!(args.get("IP"), None);
    assert_eq!(args.get("ip"), Some("10.0.0.5"));
    assert_eq!(args.get("mac"), None);
    // "ip" is not the known "IP".
    let err = args.check_known(&["IP", "MAC"]).unwrap_err();
    assert_eq!(err.code, code::INVALID_ENV);
    assert!(err.msg.contains("\"ip\""), "{}", err.msg);
    // A lower-case ignoreunknown is just another unknown key.
    let args = CniArgs::parse("ignoreunknown=1;IP=10.0.0.5").unwrap();
    assert!(!args.ignore_unknown());
    let err = args.check_known(&["IP"]).unwrap_err();
    assert!(err.msg.contains("ignoreunknown"), "{}", err.msg);
}

#[test]
fn whitespace_is_not_trimmed() {
    let args = CniArgs::parse("A=1; B=2").unwrap();
    assert_eq!(args.get("B"), None);
    assert_eq!(args.get(" B"), Some("2"));
}

#[test]
fn repeated_key_last_wins() {
    let args = CniArgs::parse("IP=10.0.0.1;IP=10.0.0.2;IP=10.0.0.3").unwrap();
    assert_eq!(args.get("IP"), Some("10.0.0.3"));
    // All occurrences are still listed, in order.
    assert_eq!(args.pairs().len(), 3);
    // Also for IgnoreUnknown itself.
    assert!(
        !CniArgs::parse("IgnoreUnknown=1;IgnoreUnknown=0")
            .unwrap()
            .ignore_unknown()
    );
    assert!(
        CniArgs::parse("IgnoreUnknown=0;IgnoreUnknown=1")
            .unwrap()
            .ignore_unknown()
    );
}

#[test]
fn unknown_keys_without_ignore_unknown_are_rejected() {
    let args = CniArgs::parse("IP=10.0.0.5;K8S_POD_NAME=web-0;FOO=bar").unwrap();
    let err = args.check_known(&["IP"]).unwrap_err();
    assert_eq!(err.code, code::INVALID_ENV);
    // Exactly the unknown keys, in order; the known one is not reported.
    assert!(
        err.msg
            .starts_with(r#"CNI_ARGS: unknown args ["K8S_POD_NAME", "FOO"]"#),
        "{}",
        err.msg
    );
    // Only known keys: fine.
    assert!(
        CniArgs::parse("IP=10.0.0.5")
            .unwrap()
            .check_known(&["IP"])
            .is_ok()
    );
    // Nothing is known: every key is unknown.
    assert!(
        CniArgs::parse("IP=10.0.0.5")
            .unwrap()
            .check_known(&[])
            .is_err()
    );
}

#[test]
fn ignore_unknown_values() {
    for on in ["1", "true", "TRUE", "True", "tRuE"] {
        let raw = format!("IgnoreUnknown={on};K8S_POD_NAME=web-0;FOO=bar");
        let args = CniArgs::parse(&raw).unwrap();
        assert!(args.ignore_unknown(), "{on}");
        assert!(args.check_known(&["IP"]).is_ok(), "{on}");
    }
    for off in ["0", "false", "FALSE", "", "yes", "01", " 1", "1 "] {
        let raw = format!("IgnoreUnknown={off};FOO=bar");
        let args = CniArgs::parse(&raw).unwrap();
        assert!(!args.ignore_unknown(), "{off:?}");
        let err = args.check_known(&["IP"]).unwrap_err();
        assert_eq!(err.code, code::INVALID_ENV, "{off:?}");
        // IgnoreUnknown itself never counts as unknown.
        assert!(
            err.msg.starts_with(r#"CNI_ARGS: unknown args ["FOO"]"#),
            "{off:?}: {}",
            err.msg
        );
    }
    // IgnoreUnknown alone (any value) is accepted by itself.
    for alone in [
        "IgnoreUnknown=0",
        "IgnoreUnknown=1",
        "IgnoreUnknown=whatever",
    ] {
        assert!(
            CniArgs::parse(alone).unwrap().check_known(&[]).is_ok(),
            "{alone}"
        );
    }
}

#[test]
fn kubernetes_style_args() {
    let raw = "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=db-0;\
               K8S_POD_INFRA_CONTAINER_ID=0123abcd;K8S_POD_UID=6f1c-42";
    let args = CniArgs::parse(raw).unwrap();
    assert!(args.check_known(&["IP", "MAC"]).is_ok());
    assert_eq!(args.get("K8S_POD_UID"), Some("6f1c-42"));
    assert_eq!(args.pairs().len(), 5);
}
