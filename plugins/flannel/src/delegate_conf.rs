//! The delegate config: the user's `delegate` object with what flannel
//! fills in from subnet.env, by upstream's rules (only what is not set).

use cni_types::{CniError, NetConf};
use ipnetwork::IpNetwork;
use serde_json::{Map, Value, json};

use crate::subnet_env::SubnetEnv;

/// Checks the user's `delegate` object before anything is done.
pub fn validate(delegate: &Map<String, Value>) -> Result<(), CniError> {
    if delegate.get("type").is_some_and(|t| !t.is_string()) {
        return Err(CniError::invalid_config(
            "'delegate' field 'type' must be a string",
        ));
    }
    for forbidden in ["name", "ipam"] {
        if delegate.contains_key(forbidden) {
            return Err(CniError::invalid_config(format!(
                "'delegate' must not contain '{forbidden}': flannel sets it (use the top-level '{forbidden}')"
            )));
        }
    }
    Ok(())
}

/// The subnet as a network (`10.1.17.1/24` -> `10.1.17.0/24`).
fn network_of(n: IpNetwork) -> String {
    IpNetwork::new(n.network(), n.prefix()).map_or_else(|_| n.to_string(), |net| net.to_string())
}

pub fn build(
    conf: &NetConf,
    delegate: &Map<String, Value>,
    ipam: Option<&Map<String, Value>>,
    env: &SubnetEnv,
) -> Value {
    let mut d = delegate.clone();
    d.insert("name".into(), json!(conf.name.clone().unwrap_or_default()));
    d.entry("type").or_insert_with(|| json!("bridge"));
    d.entry("ipMasq")
        .or_insert_with(|| json!(!env.ipmasq.unwrap_or(false)));
    if let Some(mtu) = env.mtu {
        d.entry("mtu").or_insert_with(|| json!(mtu));
    }
    if d.get("type").and_then(Value::as_str) == Some("bridge") {
        d.entry("isGateway").or_insert_with(|| json!(true));
    }
    if let Some(v) = &conf.cni_version {
        d.insert("cniVersion".into(), json!(v));
    }
    let mut ipam = ipam.cloned().unwrap_or_default();
    ipam.entry("type").or_insert_with(|| json!("host-local"));
    let ranges: Vec<Value> = [env.subnet, env.ipv6_subnet]
        .into_iter()
        .flatten()
        .map(|sn| json!([{"subnet": network_of(sn)}]))
        .collect();
    ipam.insert("ranges".into(), Value::Array(ranges));
    let mut routes: Vec<Value> = ipam
        .get("routes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    routes.extend(
        env.networks
            .iter()
            .chain(&env.ipv6_networks)
            .map(|n| json!({"dst": n.to_string()})),
    );
    ipam.insert("routes".into(), Value::Array(routes));
    d.insert("ipam".into(), Value::Object(ipam));
    if let Some(rc) = &conf.runtime_config
        && let Ok(v) = serde_json::to_value(rc)
        && v.as_object().is_some_and(|o| !o.is_empty())
    {
        d.insert("runtimeConfig".into(), v);
    }
    Value::Object(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_example() {
        let env = SubnetEnv::parse("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n").unwrap();
        let conf = NetConf {
            name: Some("cni-flannel".into()),
            ..NetConf::default()
        };
        let got = build(&conf, &Map::new(), None, &env);
        let want: Value = serde_json::from_str(
            r#"{"name":"cni-flannel","type":"bridge","ipMasq":false,"isGateway":true,"mtu":1472,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}]}}"#,
        )
        .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn user_values_win_and_dual_stack_gets_two_sets() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n\
             FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        let conf = NetConf {
            name: Some("cbr0".into()),
            cni_version: Some("1.0.0".into()),
            ..NetConf::default()
        };
        let delegate = json!({"mtu": 1400, "isGateway": false, "hairpinMode": true})
            .as_object()
            .unwrap()
            .clone();
        let ipam = json!({"routes": [{"dst": "192.168.0.0/16"}], "dataDir": "/x"})
            .as_object()
            .unwrap()
            .clone();
        let got = build(&conf, &delegate, Some(&ipam), &env);
        assert_eq!(got["mtu"], 1400);
        assert_eq!(got["isGateway"], false);
        assert_eq!(got["ipMasq"], true);
        assert_eq!(got["cniVersion"], "1.0.0");
        assert_eq!(got["ipam"]["dataDir"], "/x");
        assert_eq!(
            got["ipam"]["ranges"],
            json!([[{"subnet": "10.1.17.0/24"}], [{"subnet": "2001:cafe:42::/64"}]])
        );
        assert_eq!(
            got["ipam"]["routes"],
            json!([{"dst": "192.168.0.0/16"}, {"dst": "10.1.0.0/16"}, {"dst": "2001:cafe:42::/56"}])
        );
    }

    #[test]
    fn delegate_validation() {
        let bad = |v: Value| validate(v.as_object().unwrap()).unwrap_err().code;
        assert_eq!(bad(json!({"type": 5})), 7);
        assert_eq!(bad(json!({"name": "x"})), 7);
        assert_eq!(bad(json!({"ipam": {}})), 7);
        assert!(validate(json!({"type": "bridge"}).as_object().unwrap()).is_ok());
    }
}
