//! flanneld's kube subnet manager (`--kube-subnet-mgr`) against a real
//! kube-apiserver (`conformance::kube`), with upstream's RBAC alone: the
//! agents run as the user of the service account `kube-flannel/flannel`,
//! which upstream's ClusterRoleBinding names. Nodes are made as a cluster
//! would have them (pod CIDRs, one annotation already); the agents learn
//! their Node from `NODE_NAME`.
//!
//! Where the Kubernetes binaries are absent, each test says SKIPPED and
//! returns.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::time::Duration;

use conformance::cluster::{Cluster, Pinger, http_get, metric};
use conformance::wait_for;
use serde_json::{Value, json};

const PREFIX: &str = "flannel.alpha.coreos.com/";

fn vxlan() -> Value {
    json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}})
}

/// Host `h`'s pod CIDR in these tests.
fn cidr(h: usize) -> Vec<String> {
    vec![format!("10.244.{}.0/24", 10 + h)]
}

fn annotation(node: &Value, suffix: &str) -> Option<String> {
    node["metadata"]["annotations"][format!("{PREFIX}{suffix}")]
        .as_str()
        .map(str::to_string)
}

/// Every pod reaches every other (within 10 s).
fn all_reach(c: &Cluster, pods: &[String]) {
    for (from, _) in pods.iter().enumerate() {
        for (to, target) in pods.iter().enumerate() {
            if from != to {
                assert!(
                    wait_for(Duration::from_secs(10), || c.reaches(from, 0, target)),
                    "host {from}'s pod cannot reach host {to}'s ({target}):\n{}",
                    c.log(from)
                );
            }
        }
    }
}

fn three_hosts(config: &Value) {
    let Some(mut c) = Cluster::prepare_kube(3, 1, config, cidr) else {
        return;
    };
    for h in 0..3 {
        c.start(h);
    }
    let backend = config["Backend"]["Type"].as_str().unwrap().to_string();
    for h in 0..3 {
        let env = c.subnet_env(h);
        assert!(
            env.contains(&format!("FLANNEL_SUBNET=10.244.{}.1/24\n", 10 + h)),
            "{env}"
        );
        let node = c.kube().node(&Cluster::node_name(h));
        assert_eq!(
            annotation(&node, "kube-subnet-manager").as_deref(),
            Some("true")
        );
        assert_eq!(annotation(&node, "backend-type"), Some(backend.clone()));
        assert_eq!(
            annotation(&node, "public-ip"),
            Some(c.hosts[h].underlay_ip.clone())
        );
        let data = annotation(&node, "backend-data").unwrap();
        if backend == "vxlan" {
            let mac = c.hosts[h].ns.ip(&["-j", "link", "show", "flannel.1"]);
            let mac: Value = serde_json::from_str(&mac).unwrap();
            assert_eq!(
                data,
                format!(
                    r#"{{"VNI":1,"VtepMAC":"{}"}}"#,
                    mac[0]["address"].as_str().unwrap()
                )
            );
        } else {
            assert_eq!(data, "null");
        }
        // The annotation a kubelet put there is kept.
        assert!(node["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"].is_string());
        // NetworkUnavailable False, as upstream sets it.
        let ok = wait_for(Duration::from_secs(5), || {
            let node = c.kube().node(&Cluster::node_name(h));
            node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|cond| {
                    cond["type"] == "NetworkUnavailable"
                        && cond["status"] == "False"
                        && cond["reason"] == "FlannelIsUp"
                        && cond["message"] == "Flannel is running on this node"
                })
        });
        assert!(
            ok,
            "no NetworkUnavailable=False on node {h}: {}",
            c.kube().node(&Cluster::node_name(h))
        );
    }
    let pods: Vec<String> = (0..3).map(|h| c.add_pod(h, 0)).collect();
    all_reach(&c, &pods);
}

#[test]
fn three_nodes_over_vxlan_reach_each_other_with_upstreams_annotations_and_condition() {
    three_hosts(&vxlan());
}

#[test]
fn three_nodes_over_host_gw_reach_each_other() {
    three_hosts(&json!({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}));
}

const HEALTH: [&str; 2] = ["--healthz-port", "18097"];

fn get(c: &Cluster, h: usize, path: &str) -> (u16, String) {
    let host = &c.hosts[h];
    http_get(&host.ns, &host.underlay_ip, 18097, path)
}

/// The routes, neighbours and fdb entries host `h` holds on flannel.1.
fn vxlan_state(c: &Cluster, h: usize) -> String {
    let ns = &c.hosts[h].ns;
    let fdb = ns.exec("bridge", &["fdb", "show", "dev", "flannel.1"]);
    format!(
        "{}{}{}",
        ns.ip(&["route", "show", "dev", "flannel.1"]),
        ns.ip(&["neigh", "show", "dev", "flannel.1"]),
        String::from_utf8_lossy(&fdb.stdout)
    )
}

/// Upstream exits when its Node has no pod CIDR yet (and the DaemonSet
/// restart-loops); ours waits on the watch, says so, and goes on the
/// moment it is set.
#[test]
fn a_node_without_a_pod_cidr_is_waited_for_and_its_pods_talk_within_5s_of_it() {
    let no_cidr_for_1 = |h: usize| if h == 1 { Vec::new() } else { cidr(h) };
    let Some(mut c) = Cluster::prepare_kube(2, 1, &vxlan(), no_cidr_for_1) else {
        return;
    };
    c.start(0);
    c.spawn(1, &HEALTH);
    let waiting = wait_for(Duration::from_secs(10), || {
        let (code, body) = get(&c, 1, "/readyz");
        code == 503 && body.contains("node-h1 has no IPv4 pod CIDR yet")
    });
    assert!(
        waiting,
        "/readyz does not say why: {:?}\n{}",
        get(&c, 1, "/readyz"),
        c.log(1)
    );
    assert!(
        c.log(1)
            .contains("node-h1 has no IPv4 pod CIDR yet: waiting"),
        "{}",
        c.log(1)
    );
    assert!(
        c.hosts[1].agent.as_mut().unwrap().alive(),
        "it must not exit"
    );
    let set = std::time::Instant::now();
    c.kube().patch_node(
        "node-h1",
        json!({"spec": {"podCIDR": "10.244.11.0/24", "podCIDRs": ["10.244.11.0/24"]}}),
        false,
    );
    let env = c.hosts[1].dir.join("subnet.env");
    assert!(
        wait_for(Duration::from_secs(5), || env.exists()),
        "{}",
        c.log(1)
    );
    let a = c.add_pod(0, 0);
    let b = c.add_pod(1, 0);
    assert!(
        wait_for(Duration::from_secs(5).saturating_sub(set.elapsed()), || c
            .reaches(0, 0, &b)
            && c.reaches(1, 0, &a)),
        "pods do not talk within 5 s of the pod CIDR being set:\n{}\n{}",
        c.log(0),
        c.log(1)
    );
    eprintln!("pod CIDR set -> pods talking: {:?}", set.elapsed());
}

#[test]
fn a_deleted_node_is_forgotten_within_a_second() {
    let Some(mut c) = Cluster::prepare_kube(3, 1, &vxlan(), cidr) else {
        return;
    };
    for h in 0..3 {
        c.start(h);
    }
    let pods: Vec<String> = (0..3).map(|h| c.add_pod(h, 0)).collect();
    all_reach(&c, &pods);
    let gone = "10.244.12.0";
    assert!(vxlan_state(&c, 0).contains(gone));
    assert!(vxlan_state(&c, 0).contains(&c.hosts[2].underlay_ip));
    c.kube().delete_node("node-h2");
    let forgotten = wait_for(Duration::from_secs(1), || {
        let s = vxlan_state(&c, 0);
        !s.contains(gone) && !s.contains(&c.hosts[2].underlay_ip)
    });
    assert!(
        forgotten,
        "still there after 1 s:\n{}\n{}",
        vxlan_state(&c, 0),
        c.log(0)
    );
    assert!(c.reaches(0, 0, &pods[1]), "the others stay");
}

/// A restart keeps the subnet (the Node's pod CIDR) and the VTEP MAC (read
/// back from the Node's backend-data: here one an earlier agent chose,
/// as upstream's random ones are), and costs no ping.
#[test]
fn an_agent_restart_keeps_its_subnet_and_vtep_mac_and_loses_no_ping() {
    let Some(mut c) = Cluster::prepare_kube(2, 1, &vxlan(), cidr) else {
        return;
    };
    let earlier = "0a:58:0a:f4:0b:01";
    c.kube().patch_node(
        "node-h1",
        json!({"metadata": {"annotations": {
            "flannel.alpha.coreos.com/backend-data": format!(r#"{{"VNI":1,"VtepMAC":"{earlier}"}}"#)
        }}}),
        false,
    );
    c.start(0);
    c.start(1);
    let mac = |c: &Cluster| {
        let v: Value =
            serde_json::from_str(&c.hosts[1].ns.ip(&["-j", "link", "show", "flannel.1"])).unwrap();
        v[0]["address"].as_str().unwrap().to_string()
    };
    assert_eq!(mac(&c), earlier, "the MAC in backend-data was not kept");
    let a = c.add_pod(0, 0);
    let b = c.add_pod(1, 0);
    all_reach(&c, &[a, b.clone()]);
    let before = c.subnet_env(1);
    let mut ping = Pinger::start(&c.hosts[0].pods[0], &b, &c.dir.path().join("ping.txt"));
    assert!(ping.wait_for_more(5, Duration::from_secs(5)));
    c.stop(1);
    c.start(1);
    assert!(ping.wait_for_more(10, Duration::from_secs(10)));
    let report = ping.stop();
    assert_eq!(c.subnet_env(1), before);
    assert_eq!(mac(&c), earlier);
    assert_eq!(report.lost(), 0, "{report:?}");
}

/// The API server goes away and comes back: no ping is lost meanwhile,
/// `/readyz` says the store fails, and it is ready again within 5 s of
/// the server answering.
#[test]
fn the_api_server_restarted_costs_no_ping_and_ready_again_within_5s() {
    let Some(mut c) = Cluster::prepare_kube(2, 1, &vxlan(), cidr) else {
        return;
    };
    c.start_with(0, &HEALTH);
    c.start(1);
    let a = c.add_pod(0, 0);
    let b = c.add_pod(1, 0);
    all_reach(&c, &[a, b.clone()]);
    assert!(wait_for(Duration::from_secs(5), || get(&c, 0, "/readyz").0 == 200));
    let mut ping = Pinger::start(&c.hosts[0].pods[0], &b, &c.dir.path().join("ping.txt"));
    assert!(ping.wait_for_more(5, Duration::from_secs(5)));
    c.kube_mut().stop();
    assert!(
        wait_for(Duration::from_secs(10), || {
            let (code, body) = get(&c, 0, "/readyz");
            code == 503 && body.contains("lease store")
        }),
        "{:?}",
        get(&c, 0, "/readyz")
    );
    assert_eq!(get(&c, 0, "/healthz").0, 200);
    assert!(
        ping.wait_for_more(10, Duration::from_secs(10)),
        "pods stopped talking"
    );
    c.kube_mut().start_again();
    let back = std::time::Instant::now();
    assert!(
        wait_for(Duration::from_secs(5), || get(&c, 0, "/readyz").0 == 200),
        "not ready within 5 s of the API server's return: {:?}\n{}",
        get(&c, 0, "/readyz"),
        c.log(0)
    );
    eprintln!("API server back -> ready: {:?}", back.elapsed());
    let report = ping.stop();
    assert_eq!(report.lost(), 0, "{report:?}");
}

/// Any Node is input from outside: one without annotations, with
/// malformed backend data, without a spec, with a pod CIDR outside the
/// network or on another's: each skipped as a peer with one log line and
/// counted; the agents go on.
#[test]
fn hostile_nodes_are_skipped_with_one_line_and_a_count() {
    let Some(mut c) = Cluster::prepare_kube(2, 1, &vxlan(), cidr) else {
        return;
    };
    c.start_with(0, &HEALTH);
    c.start(1);
    let managed = |data: &'static str| {
        vec![
            ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
            ("flannel.alpha.coreos.com/backend-type", "vxlan"),
            ("flannel.alpha.coreos.com/public-ip", "192.168.77.99"),
            ("flannel.alpha.coreos.com/backend-data", data),
        ]
    };
    let k = c.kube();
    k.create_node("no-annotations", &["10.244.50.0/24"], &[]);
    k.create_node(
        "bad-backend-data",
        &["10.244.51.0/24"],
        &managed("{not json"),
    );
    let good = managed(r#"{"VNI":1,"VtepMAC":"0a:00:00:00:00:99"}"#);
    k.create_node("no-spec", &[], &good);
    k.create_node("outside", &["10.99.0.0/24"], &good);
    let other = managed(r#"{"VNI":1,"VtepMAC":"0a:00:00:00:00:98"}"#);
    k.create_node("on-another-s-cidr", &["10.244.11.0/24"], &other);
    let counted = wait_for(Duration::from_secs(5), || {
        let page = get(&c, 0, "/metrics").1;
        metric(&page, "flannel_leases_unreadable") == Some(4.0)
            && metric(&page, "flannel_leases_invalid") == Some(1.0)
    });
    assert!(counted, "{}\n{}", get(&c, 0, "/metrics").1, c.log(0));
    let log = c.log(0);
    for name in [
        "no-annotations",
        "bad-backend-data",
        "no-spec",
        "on-another-s-cidr",
    ] {
        let lines = log
            .lines()
            .filter(|l| l.contains(&format!("node {name} is not a peer:")))
            .count();
        assert_eq!(lines, 1, "{name}:\n{log}");
    }
    assert!(
        log.contains(
            "node on-another-s-cidr is not a peer: its pod CIDR (10.244.11.0-24) is node node-h1's"
        ),
        "{log}"
    );
    let lines = log
        .lines()
        .filter(|l| l.contains("ignoring lease 10.99.0.0-24"))
        .count();
    assert_eq!(lines, 1, "{log}");
    assert!(c.hosts[0].agent.as_mut().unwrap().alive());
    let a = c.add_pod(0, 0);
    let b = c.add_pod(1, 0);
    all_reach(&c, &[a, b]);
}

#[test]
fn dual_stack_nodes_reach_each_other_over_both_families_in_upstreams_layout() {
    let config = json!({
        "Network": "10.244.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:244::/56",
        "Backend": {"Type": "vxlan"}
    });
    let dual = |h: usize| {
        vec![
            format!("10.244.{}.0/24", 10 + h),
            format!("fd00:244:0:{}::/64", 10 + h),
        ]
    };
    let Some(mut c) = Cluster::prepare_kube(2, 1, &config, dual) else {
        return;
    };
    c.start(0);
    c.start(1);
    for h in 0..2 {
        let node = c.kube().node(&Cluster::node_name(h));
        assert_eq!(
            annotation(&node, "public-ipv6"),
            Some(format!("fd00:77::{}", 10 + h))
        );
        let v6: Value =
            serde_json::from_str(&annotation(&node, "backend-v6-data").unwrap()).unwrap();
        let dev: Value =
            serde_json::from_str(&c.hosts[h].ns.ip(&["-j", "link", "show", "flannel-v6.1"]))
                .unwrap();
        assert_eq!(v6["VtepMAC"], dev[0]["address"]);
    }
    let a = c.add_pod_all(0, 0);
    let b = c.add_pod_all(1, 0);
    for (from, to) in [(0usize, &b), (1, &a)] {
        for target in to {
            assert!(
                wait_for(Duration::from_secs(10), || c.reaches(from, 0, target)),
                "host {from} cannot reach {target}:\n{}",
                c.log(from)
            );
        }
    }
}

/// As in a DaemonSet: no kubeconfig, the pod's in-cluster config (the
/// service's address in the environment, the token and CA where a pod has
/// them), and the Node learnt from the pod's own spec (POD_NAME).
#[test]
fn in_cluster_config_and_the_node_from_the_pods_spec() {
    let Some(mut c) = Cluster::prepare_kube(2, 1, &vxlan(), cidr) else {
        return;
    };
    c.start(1);
    c.kube()
        .create_pod("kube-flannel", "kube-flannel-ds-x1", "node-h0");
    let secrets = c.dir.path().join("sa");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("token"), conformance::kube::FLANNEL_TOKEN).unwrap();
    std::fs::write(secrets.join("namespace"), "kube-flannel").unwrap();
    std::fs::copy(c.kube().ca(), secrets.join("ca.crt")).unwrap();
    let net_conf = c.dir.path().join("net-conf.json");
    let env_file = c.hosts[0].dir.join("subnet.env");
    let args: Vec<String> = [
        "--kube-subnet-mgr",
        "--net-config-path",
        net_conf.to_str().unwrap(),
        "--iface",
        "eth0",
        "--subnet-file",
        env_file.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // A mount namespace of its own, where /run holds the pod's secrets.
    let script = format!(
        "mount -t tmpfs none /run && mkdir -p /run/secrets/kubernetes.io/serviceaccount && cp {0}/token {0}/ca.crt {0}/namespace /run/secrets/kubernetes.io/serviceaccount/ && exec \"$@\"",
        secrets.display()
    );
    let mut all = vec![
        "--mount".to_string(),
        "--propagation".into(),
        "private".into(),
        "sh".into(),
        "-c".into(),
        script,
        "sh".into(),
        conformance::plugin_binary("flanneld").display().to_string(),
    ];
    all.extend(args);
    let env = [
        ("KUBERNETES_SERVICE_HOST", "192.168.77.1"),
        ("KUBERNETES_SERVICE_PORT", "6443"),
        ("POD_NAME", "kube-flannel-ds-x1"),
        ("POD_NAMESPACE", "kube-flannel"),
    ];
    let host = &mut c.hosts[0];
    let log = host.dir.join("flanneld.log");
    host.agent = Some(conformance::Daemon::start_with_env(
        std::path::Path::new("/usr/bin/unshare"),
        &all,
        &host.ns,
        &log,
        &env,
    ));
    assert!(
        wait_for(Duration::from_secs(10), || env_file.exists()),
        "no subnet.env: {}",
        c.log(0)
    );
    assert!(
        c.subnet_env(0).contains("FLANNEL_SUBNET=10.244.10.1/24"),
        "{}",
        c.subnet_env(0)
    );
    let a = c.add_pod(0, 0);
    let b = c.add_pod(1, 0);
    all_reach(&c, &[a, b]);
}

#[test]
fn three_nodes_over_udp_reach_each_other() {
    three_hosts(&json!({"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}));
}

#[test]
fn ipv6_only_nodes_reach_each_other() {
    let config = json!({
        "EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:244::/56",
        "Backend": {"Type": "vxlan"}
    });
    let v6 = |h: usize| vec![format!("fd00:244:0:{}::/64", 10 + h)];
    let Some(mut c) = Cluster::prepare_kube(2, 1, &config, v6) else {
        return;
    };
    c.start(0);
    c.start(1);
    let node = c.kube().node("node-h0");
    assert!(annotation(&node, "backend-v6-data").is_some(), "{node}");
    let a = c.add_pod_all(0, 0);
    let b = c.add_pod_all(1, 0);
    assert!(a.iter().chain(&b).all(|ip| ip.contains(':')), "{a:?} {b:?}");
    all_reach(&c, &[a[0].clone(), b[0].clone()]);
}

/// What a person sets on a Node: `node-public-ip` stands for
/// `--public-ip`; `public-ip-overwrite` is published instead of the
/// detected address (a node behind NAT). And another annotation prefix.
#[test]
fn a_persons_annotations_and_another_prefix() {
    let Some(mut c) = Cluster::prepare_kube(2, 1, &vxlan(), cidr) else {
        return;
    };
    c.hosts[0]
        .ns
        .ip(&["addr", "add", "192.168.77.110/24", "dev", "eth0"]);
    // Where the overwrite points: host 1 answers there too (its NAT
    // router's address, in a real cluster).
    c.hosts[1]
        .ns
        .ip(&["addr", "add", "192.168.77.111/24", "dev", "eth0"]);
    c.kube().patch_node(
        "node-h0",
        json!({"metadata": {"annotations": {"example.com/net-node-public-ip": "192.168.77.110"}}}),
        false,
    );
    c.kube().patch_node(
        "node-h1",
        json!({"metadata": {"annotations": {"example.com/net-public-ip-overwrite": "192.168.77.111"}}}),
        false,
    );
    let prefix = ["--kube-annotation-prefix", "example.com/net"];
    c.start_with(0, &prefix);
    c.start_with(1, &prefix);
    let a = |h: usize, k: &str| {
        c.kube().node(&Cluster::node_name(h))["metadata"]["annotations"]
            [format!("example.com/net-{k}")]
        .as_str()
        .map(str::to_string)
    };
    assert_eq!(a(0, "public-ip").as_deref(), Some("192.168.77.110"));
    assert_eq!(a(1, "public-ip").as_deref(), Some("192.168.77.111"));
    assert_eq!(a(0, "kube-subnet-manager").as_deref(), Some("true"));
    let node = c.kube().node("node-h0");
    assert!(
        annotation(&node, "kube-subnet-manager").is_none(),
        "the default prefix is not used"
    );
    // Each is reached where it says it is.
    let pod0 = c.add_pod(0, 0);
    c.add_pod(1, 0);
    assert!(
        wait_for(Duration::from_secs(10), || c.reaches(1, 0, &pod0)),
        "{}",
        c.log(1)
    );
}
