//! JSON text with the key order Go's encoding/json gives: struct fields in
//! declaration order, map keys sorted. serde_json's `Map` only sorts, so
//! without this a result would print `dns` before `interfaces` and the cache
//! file would not read like the one libcni writes.

use serde_json::{Map, Value};

/// The keys, in order, of the objects found at `path` (the object keys from
/// the root down; array levels do not count). Keys not listed follow,
/// sorted, as Go sorts a map's keys.
pub type Order = fn(&[&str]) -> &'static [&'static str];

/// Indented by four spaces, as Go's `json.MarshalIndent(v, "", "    ")`
/// that libcni's `Result.Print` uses.
pub fn pretty(value: &Value, order: Order) -> String {
    let mut out = String::new();
    write(&mut out, value, &mut Vec::new(), Some(0), order);
    out
}

/// On one line, as `json.Marshal`.
pub fn compact(value: &Value, order: Order) -> String {
    let mut out = String::new();
    write(&mut out, value, &mut Vec::new(), None, order);
    out
}

/// A CNI result (or error) in the field order of Go's result types
/// (`pkg/types/100`, `040`, `020`).
pub fn result_order(path: &[&str]) -> &'static [&'static str] {
    match path {
        [] => &[
            "cniVersion",
            "code",
            "msg",
            "details",
            "interfaces",
            "ips",
            "ip4",
            "ip6",
            "routes",
            "dns",
        ],
        ["interfaces"] => &["name", "mac", "mtu", "sandbox", "socketPath", "pciID"],
        ["ips"] => &["version", "interface", "address", "gateway"],
        ["ip4" | "ip6"] => &["ip", "gateway", "routes"],
        ["routes"] | ["ip4" | "ip6", "routes"] => {
            &["dst", "gw", "mtu", "advmss", "priority", "table", "scope"]
        }
        ["dns"] => &["nameservers", "domain", "search", "options"],
        _ => &[],
    }
}

/// libcni's cache file: the fields of its `cachedInfo` struct in order;
/// inside them (result, capability args) Go maps, so sorted keys.
pub fn cache_order(path: &[&str]) -> &'static [&'static str] {
    match path {
        [] => &[
            "kind",
            "containerId",
            "config",
            "ifName",
            "networkName",
            "netns",
            "cniArgs",
            "capabilityArgs",
            "result",
        ],
        _ => &[],
    }
}

fn ordered_keys<'a>(map: &'a Map<String, Value>, known: &[&str]) -> Vec<&'a str> {
    let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
    keys.sort_by_key(|k| (known.iter().position(|x| x == k).unwrap_or(known.len()), *k));
    keys
}

fn newline(out: &mut String, indent: Option<usize>) {
    if let Some(level) = indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str("    ");
        }
    }
}

fn write<'a>(
    out: &mut String,
    value: &'a Value,
    path: &mut Vec<&'a str>,
    indent: Option<usize>,
    order: Order,
) {
    let inner = indent.map(|level| level + 1);
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, key) in ordered_keys(map, order(path)).into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, inner);
                out.push_str(&Value::String(key.to_string()).to_string());
                out.push(':');
                if indent.is_some() {
                    out.push(' ');
                }
                if let Some(v) = map.get(key) {
                    path.push(key);
                    write(out, v, path, inner, order);
                    path.pop();
                }
            }
            newline(out, indent);
            out.push('}');
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, inner);
                write(out, item, path, inner, order);
            }
            newline(out, indent);
            out.push(']');
        }
        // Scalars, `{}` and `[]`: serde_json's compact text is Go's too.
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn result_prints_like_go_marshal_indent() {
        let r = json!({
            "dns": {"search": ["a"], "nameservers": ["10.0.0.1"]},
            "routes": [{"gw": "10.1.0.1", "dst": "0.0.0.0/0"}],
            "ips": [{"gateway": "10.1.0.1", "address": "10.1.0.5/16", "interface": 2}],
            "interfaces": [{"sandbox": "/run/netns/x", "mac": "aa", "name": "eth0"}],
            "cniVersion": "1.1.0",
            "zz": {}, "aa": []
        });
        let want = r#"{
    "cniVersion": "1.1.0",
    "interfaces": [
        {
            "name": "eth0",
            "mac": "aa",
            "sandbox": "/run/netns/x"
        }
    ],
    "ips": [
        {
            "interface": 2,
            "address": "10.1.0.5/16",
            "gateway": "10.1.0.1"
        }
    ],
    "routes": [
        {
            "dst": "0.0.0.0/0",
            "gw": "10.1.0.1"
        }
    ],
    "dns": {
        "nameservers": [
            "10.0.0.1"
        ],
        "search": [
            "a"
        ]
    },
    "aa": [],
    "zz": {}
}"#;
        assert_eq!(pretty(&r, result_order), want);
    }

    #[test]
    fn legacy_result_and_cache_orders() {
        let r = json!({"ip4": {"routes": [{"gw": "1.1.1.1", "dst": "0.0.0.0/0"}], "gateway": "10.0.0.1", "ip": "10.0.0.2/24"}, "cniVersion": "0.2.0"});
        assert_eq!(
            compact(&r, result_order),
            r#"{"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24","gateway":"10.0.0.1","routes":[{"dst":"0.0.0.0/0","gw":"1.1.1.1"}]}}"#
        );
        let c = json!({"result": {"ips": [], "cniVersion": "1.0.0"}, "kind": "cniCacheV1", "config": "e30=", "containerId": "c", "ifName": "eth0", "networkName": "n"});
        assert_eq!(
            compact(&c, cache_order),
            r#"{"kind":"cniCacheV1","containerId":"c","config":"e30=","ifName":"eth0","networkName":"n","result":{"cniVersion":"1.0.0","ips":[]}}"#
        );
        assert_eq!(compact(&json!("a\"b\n"), cache_order), r#""a\"b\n""#);
    }
}
