//! The real chain, flannel -> bridge -> host-local, run as a runtime runs it
//! in throwaway namespaces: every verb in the versions a cluster uses,
//! IPv4/IPv6/dual-stack subnet.env, upstream's delegate config and cache
//! layout, and every error path without residue.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::path::{Path, PathBuf};

use conformance::util::addresses;
use conformance::util::{reservations, with_prev};
use conformance::{Invocation, PluginOutput, TempDir, TestHost, plugin_binary};
use serde_json::{Value, json};

const V4_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
const V6_ENV: &str = "FLANNEL_IPV6_NETWORK=fd00:244::/56\nFLANNEL_IPV6_SUBNET=fd00:244:0:7::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
const DUAL_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_IPV6_NETWORK=fd00:244::/56\nFLANNEL_IPV6_SUBNET=fd00:244:0:7::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

struct Node {
    host: TestHost,
    dir: TempDir,
}

impl Node {
    fn new(pods: usize, subnet_env: Option<&str>) -> Node {
        let node = Node {
            host: TestHost::new(pods),
            dir: TempDir::new("flannel"),
        };
        if let Some(text) = subnet_env {
            std::fs::write(node.subnet_env(), text).unwrap();
        }
        node
    }

    fn subnet_env(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("flannel-cache")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version, "name": "cbr0", "type": "flannel",
            "subnetFile": self.subnet_env(), "dataDir": self.cache(),
            "ipam": {"dataDir": self.ipam_dir()},
            "delegate": {"hairpinMode": true, "isDefaultGateway": true}
        })
    }

    fn call(&self, command: &str, pod: usize, conf: &Value) -> Invocation {
        Invocation::new(command)
            .container_id(&format!("pod{pod}"))
            .netns(self.host.pod(pod))
            .config(conf)
    }

    fn run(&self, inv: Invocation) -> PluginOutput {
        inv.run(&plugin_binary("flannel"), &self.host.host)
    }

    fn saved(&self, pod: usize) -> Option<Value> {
        std::fs::read(self.cache().join(format!("pod{pod}")))
            .ok()
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    fn reservations(&self) -> usize {
        reservations(&self.ipam_dir().join("cbr0"))
    }

    fn host_links(&self) -> usize {
        self.host.host.ip(&["-o", "link", "show"]).lines().count()
    }
}

fn file_mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn every_verb_in_every_cluster_version_and_family() {
    for (env, family_addrs) in [
        (V4_ENV, vec!["10.244.7.2/24"]),
        (V6_ENV, vec!["fd00:244:0:7::2/64"]),
        (DUAL_ENV, vec!["10.244.7.2/24", "fd00:244:0:7::2/64"]),
    ] {
        for version in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let node = Node::new(1, Some(env));
            let conf = node.conf(version);
            let r = node.run(node.call("ADD", 0, &conf)).success();
            assert_eq!(r["cniVersion"], version);
            let addrs: Vec<&str> = r["ips"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["address"].as_str().unwrap())
                .collect();
            assert_eq!(addrs, family_addrs, "{env} {version}");
            let saved = node.saved(0).expect("the delegate config is saved");
            assert_eq!(saved["type"], "bridge");
            assert_eq!(saved["hairpinMode"], true);
            assert_eq!(saved["cniVersion"], version);
            assert_eq!(file_mode(&node.cache()), 0o700);
            assert_eq!(file_mode(&node.cache().join("pod0")), 0o600);
            if version != "0.3.1" {
                node.run(node.call("CHECK", 0, &with_prev(&conf, &r)))
                    .silent_success();
            }
            if version == "1.1.0" {
                node.run(node.call("STATUS", 0, &conf)).silent_success();
                let mut gc = conf.clone();
                gc["cni.dev/valid-attachments"] =
                    json!([{"containerID": "pod0", "ifname": "eth0"}]);
                node.run(Invocation::new("GC").config(&gc)).silent_success();
                assert!(node.saved(0).is_some(), "GC keeps listed attachments");
                assert_eq!(node.reservations(), family_addrs.len());
            }
            node.run(node.call("DEL", 0, &conf)).silent_success();
            assert!(node.saved(0).is_none());
            assert_eq!(node.reservations(), 0);
            assert_eq!(node.host_links(), 2, "lo and cni0 remain");
            node.run(node.call("DEL", 0, &conf)).silent_success();
        }
    }
}

#[test]
fn the_upstream_example_delegate_config() {
    let node = Node::new(
        1,
        Some(
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
        ),
    );
    let conf = json!({"name": "cni-flannel", "type": "flannel", "subnetFile": node.subnet_env(), "dataDir": node.cache()});
    // The default IPAM dataDir would touch the machine's store: the saved
    // config is what this test is about, so the delegate is a stand-in.
    let out = node.run(node.call("ADD", 0, &conf).env("CNI_PATH", "/nonexistent"));
    out.error(100);
    assert!(
        node.saved(0).is_none(),
        "a failed ADD removes the saved config"
    );
    let fake = TempDir::new("fakebridge");
    let script = fake.path().join("bridge");
    conformance::util::script(
        &script,
        "#!/bin/sh\ncat > \"$(dirname \"$0\")/stdin\"\necho '{\"cniVersion\":\"0.1.0\",\"ip4\":{\"ip\":\"10.1.17.2/24\"}}'\n",
    );
    node.run(
        node.call("ADD", 0, &conf)
            .env("CNI_PATH", &fake.path().display().to_string()),
    )
    .success();
    let want = json!({"name":"cni-flannel","type":"bridge","ipMasq":false,"isGateway":true,"mtu":1472,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":"10.1.0.0/16"}]}});
    assert_eq!(node.saved(0).unwrap(), want);
    let sent: Value =
        serde_json::from_slice(&std::fs::read(fake.path().join("stdin")).unwrap()).unwrap();
    assert_eq!(sent, want, "the delegate gets exactly what is saved");
}

#[test]
fn a_pod_added_by_the_go_chain_is_deleted_by_ours() {
    let go_bridge = Path::new("/usr/lib/cni/bridge");
    assert!(
        go_bridge.is_file(),
        "apt-get install containernetworking-plugins (scripts/test.sh does)"
    );
    let node = Node::new(1, Some(V4_ENV));
    // What Go's flannel saves: its delegate config, keys sorted, compact.
    let saved = format!(
        r#"{{"cniVersion":"1.0.0","hairpinMode":true,"ipMasq":false,"ipam":{{"dataDir":"{}","ranges":[[{{"subnet":"10.244.7.0/24"}}]],"routes":[{{"dst":"10.244.0.0/16"}}],"type":"host-local"}},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}}"#,
        node.ipam_dir().display()
    );
    std::fs::create_dir_all(node.cache()).unwrap();
    std::fs::write(node.cache().join("pod0"), &saved).unwrap();
    // ...and what Go's flannel then runs: the Go bridge with those bytes.
    let out = Invocation::new("ADD")
        .container_id("pod0")
        .netns(node.host.pod(0))
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(saved.as_bytes())
        .run(go_bridge, &node.host.host);
    out.success();
    assert_eq!(node.reservations(), 1);
    // Our DEL (our bridge, our host-local) takes it all down.
    node.run(node.call("DEL", 0, &node.conf("1.0.0")))
        .silent_success();
    assert!(node.saved(0).is_none());
    assert_eq!(node.reservations(), 0);
    assert_eq!(
        node.host.pod(0).ip(&["-o", "link", "show"]).lines().count(),
        1
    );
}

#[test]
fn error_paths_say_what_is_wrong_and_leave_nothing() {
    // No subnet.env yet: try again later, naming the file.
    let node = Node::new(1, None);
    let conf = node.conf("1.1.0");
    let err = node.run(node.call("ADD", 0, &conf)).error(11);
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains(&node.subnet_env().display().to_string()) && msg.contains("flanneld"),
        "{msg}"
    );
    let err = node.run(node.call("STATUS", 0, &conf)).error(50);
    assert!(err["msg"].as_str().unwrap().contains("subnet.env"));
    assert!(!node.cache().exists());
    // Keys missing.
    std::fs::write(
        node.subnet_env(),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=1450\n",
    )
    .unwrap();
    let err = node.run(node.call("ADD", 0, &conf)).error(130);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("is missing FLANNEL_SUBNET"),
        "{err}"
    );
    node.run(node.call("STATUS", 0, &conf)).error(50);
    // Bad values.
    std::fs::write(node.subnet_env(), "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=oops\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap();
    let err = node.run(node.call("ADD", 0, &conf)).error(130);
    assert!(err["msg"].as_str().unwrap().contains("oops"));
    // Bad delegates.
    std::fs::write(node.subnet_env(), V4_ENV).unwrap();
    for (delegate, needle) in [
        (json!({"type": 7}), "must be a string"),
        (json!({"name": "x"}), "'name'"),
        (json!({"ipam": {}}), "'ipam'"),
    ] {
        let mut c = conf.clone();
        c["delegate"] = delegate;
        let err = node.run(node.call("ADD", 0, &c)).error(7);
        assert!(err["msg"].as_str().unwrap().contains(needle), "{err}");
    }
    // A delegate that is not there: its error, and the saved config removed.
    let mut c = conf.clone();
    c["delegate"] = json!({"type": "no-such-plugin"});
    node.run(node.call("ADD", 0, &c)).error(100);
    assert!(node.saved(0).is_none());
    // The delegate fails (the pod already has eth0): nothing stays reserved.
    node.host.pod(0).ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    node.run(node.call("ADD", 0, &conf)).error(121);
    assert!(node.saved(0).is_none());
    assert_eq!(node.reservations(), 0);
    assert!(!node.host.host.ip(&["-o", "link", "show"]).contains("veth"));
    // CHECK without a saved config.
    let r = json!({"cniVersion": "1.1.0"});
    let err = node
        .run(node.call("CHECK", 0, &with_prev(&conf, &r)))
        .error(131);
    assert!(err["msg"].as_str().unwrap().contains("pod0"));
}

#[test]
fn gc_removes_saved_configs_and_addresses_of_gone_pods() {
    let node = Node::new(2, Some(V4_ENV));
    let conf = node.conf("1.1.0");
    node.run(node.call("ADD", 0, &conf)).success();
    node.run(node.call("ADD", 1, &conf)).success();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "pod1", "ifname": "eth0"}]);
    node.run(Invocation::new("GC").config(&gc)).silent_success();
    assert!(node.saved(0).is_none() && node.saved(1).is_some());
    assert_eq!(node.reservations(), 1);
    // No list: nothing removed.
    node.run(Invocation::new("GC").config(&conf))
        .silent_success();
    assert!(node.saved(1).is_some());
}

#[test]
fn two_pods_reach_each_other_and_their_gateway() {
    let node = Node::new(2, Some(DUAL_ENV));
    let conf = node.conf("1.0.0");
    let a = node.run(node.call("ADD", 0, &conf)).success();
    let b = node.run(node.call("ADD", 1, &conf)).success();
    let addr = |r: &Value, i: usize| addresses(r).remove(i);
    for target in [
        addr(&b, 0),
        "10.244.7.1".to_string(),
        addr(&b, 1),
        "fd00:244:0:7::1".to_string(),
    ] {
        let out = node.host.pod(0).exec("ping", &["-c1", "-W3", &target]);
        assert!(out.status.success(), "pod0 cannot reach {target}");
    }
    let out = node.host.pod(1).exec("ping", &["-c1", "-W3", &addr(&a, 0)]);
    assert!(out.status.success());
    // The default route goes to the gateway, the cluster route too.
    let routes = node.host.pod(0).ip(&["route", "show"]);
    assert!(
        routes.contains("default via 10.244.7.1")
            && routes.contains("10.244.0.0/16 via 10.244.7.1"),
        "{routes}"
    );
}

#[test]
fn a_delegate_that_cannot_undo_its_add_is_reported_and_its_config_kept() {
    let node = Node::new(1, Some(V4_ENV));
    // A delegate whose ADD fails and whose DEL fails too.
    let fake = conformance::TempDir::new("stuckdelegate");
    let script = fake.path().join("stuck-bridge");
    conformance::util::script(
        &script,
        "#!/bin/sh\ncat >/dev/null\necho '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"busy\"}'\nexit 1\n",
    );
    let mut conf = node.conf("1.0.0");
    conf["delegate"] = json!({"type": "stuck-bridge"});
    let path = format!(
        "{}:{}",
        fake.path().display(),
        conformance::bins::bin_dir().display()
    );
    let out = node.run(node.call("ADD", 0, &conf).env("CNI_PATH", &path));
    let err = out.error(11);
    let details = err["details"].as_str().unwrap_or_default();
    assert!(
        details.contains("rollback incomplete") && details.contains("stuck-bridge DEL"),
        "{err}"
    );
    assert!(
        out.stderr.contains("rollback was incomplete"),
        "{}",
        out.stderr
    );
    // Kept, so that the runtime's DEL can still reach the delegate.
    assert!(node.saved(0).is_some());
}

/// A delegate `type` that is a path (or empty) can never be run: refused as
/// invalid config before the delegate config is saved, so nothing is left
/// in dataDir (a rollback DEL would be refused for the same reason).
#[test]
fn a_delegate_type_that_is_a_path_is_refused_before_anything_is_saved() {
    let node = Node::new(1, Some(V4_ENV));
    let cache_files = || -> Vec<String> {
        std::fs::read_dir(node.cache())
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for kind in ["../../bin/true", "/bin/true", "..", ""] {
        let mut conf = node.conf("1.0.0");
        conf["delegate"] = json!({"type": kind});
        let err = node.run(node.call("ADD", 0, &conf)).error(7);
        let msg = err["msg"].as_str().unwrap();
        assert!(
            msg.contains("'delegate' field 'type'") && msg.contains("plugin name"),
            "{kind:?}: {err}"
        );
        assert!(err.get("details").is_none(), "{kind:?}: {err}");
        assert_eq!(cache_files(), Vec::<String>::new(), "{kind:?}");
        assert_eq!(node.reservations(), 0);
        assert_eq!(node.host_links(), 1, "only lo");
    }
}

#[test]
fn an_inconsistent_subnet_env_is_refused_and_leaves_nothing() {
    let node = Node::new(1, None);
    let conf = node.conf("1.0.0");
    for (text, needle) in [
        (
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.245.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
            "lies outside FLANNEL_NETWORK",
        ),
        (
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=20\nFLANNEL_IPMASQ=true\n",
            "out of range",
        ),
    ] {
        std::fs::write(node.subnet_env(), text).unwrap();
        let err = node.run(node.call("ADD", 0, &conf)).error(130);
        let msg = err["msg"].as_str().unwrap();
        assert!(msg.contains(needle), "{err}");
        assert!(
            msg.contains(node.subnet_env().to_str().unwrap()),
            "the message names the file: {err}"
        );
        assert!(node.saved(0).is_none());
        assert_eq!(node.reservations(), 0);
        assert_eq!(node.host_links(), 1, "only lo");
        node.run(node.call("STATUS", 0, &node.conf("1.1.0")))
            .error(50);
    }
}
