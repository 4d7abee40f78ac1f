//! dist/kube-flannel.yml deployed with kubectl onto a real two-node
//! Kubernetes cluster in simulated hosts (see `conformance::kubecluster`):
//! the image scripts/image.sh makes from the binaries this suite built,
//! imported into each node's containerd; the manifest applied unchanged
//! (its image, `cni-rs/flannel:0.1.0`, is what image.sh names the archive).
//! Then, each with a deadline: the DaemonSet Ready on both nodes through our
//! /readyz, each node's subnet.env holding its Node's pod CIDR and
//! NetworkUnavailable False/FlannelIsUp, app pods of a Deployment (one per
//! node) pinging each other and answering behind a ClusterIP Service from
//! the other node, a rolling restart of the agents losing no ping and
//! keeping every subnet, and `kubectl delete -f` leaving the app pods
//! talking, `apply` recovering without restarting anything else. And the
//! same manifest with the wireguard backend. Skipped, loudly, without the
//! Kubernetes binaries or kubectl.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test
#![allow(clippy::print_stdout)] // the shared steps print the figures the tests report

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conformance::bins::bin_dir;
use conformance::cri::containerd::exec_in_net_of;
use conformance::cri::image::PAUSE_IMAGE;
use conformance::kube::{KubeApi, kubectl_present, repo};
use conformance::kubecluster::KubeCluster;
use conformance::netns::in_netns;
use conformance::{TempDir, require_root, wait_for};
use serde_json::{Value, json};

/// scripts/image.sh from the binaries this suite built, its default name.
fn build_image(out: &Path) {
    let run = Command::new("bash")
        .arg(repo().join("scripts/image.sh"))
        .arg("--bin-from")
        .arg(bin_dir())
        .arg("--out")
        .arg(out)
        .output()
        .expect("cannot run scripts/image.sh");
    assert!(
        run.status.success(),
        "image.sh failed: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}

const FLANNEL_NS: &str = "kube-flannel";
const DS: &str = "ds/kube-flannel-ds";

/// The flannel pods that are Ready: (pod name, node name).
fn ready_agents(c: &KubeCluster) -> Vec<(String, String)> {
    let Some(list) = c.get(&["-n", FLANNEL_NS, "pods", "-l", "app=flannel"]) else {
        return Vec::new();
    };
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Waits until one Ready agent runs on each node; their pod names.
fn wait_agents_ready(c: &KubeCluster, within: Duration, what: &str) -> Vec<String> {
    let nodes: BTreeSet<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    let mut agents = Vec::new();
    let ok = wait_for(within, || {
        agents = ready_agents(c);
        let on: BTreeSet<String> = agents.iter().map(|(_, n)| n.clone()).collect();
        on == nodes && agents.len() == nodes.len()
    });
    assert!(
        ok,
        "{what}: the flannel pods did not turn Ready on every node within {within:?}: {}\n{}\nkubelet node-0: {}",
        c.kubectl_text(&["-n", FLANNEL_NS, "get", "pods", "-o", "wide"]),
        c.kubectl_text(&["-n", FLANNEL_NS, "describe", "pods"]),
        tail(&c.nodes[0].kubelet_log(), 4000)
    );
    agents.into_iter().map(|(p, _)| p).collect()
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    &s[start..]
}

/// FLANNEL_SUBNET of a node's subnet.env ("" while there is none).
fn flannel_subnet(c: &KubeCluster, node: &str) -> String {
    let env = c.node(node).run_dir().join("flannel/subnet.env");
    std::fs::read_to_string(env)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .unwrap_or("")
        .to_string()
}

/// The FLANNEL_SUBNET a pod CIDR gives: its first address, same length.
fn subnet_of(pod_cidr: &str) -> String {
    let (net, len) = pod_cidr.split_once('/').unwrap();
    let ip: std::net::Ipv4Addr = net.parse().unwrap();
    format!("{}/{len}", std::net::Ipv4Addr::from(u32::from(ip) + 1))
}

/// `program args` in the network namespace of process `pid`.
fn in_pod(pid: u32, program: &str, args: &[&str]) -> std::process::Output {
    exec_in_net_of(pid, program, args)
}

/// An app pod: name, node, address, uid.
#[derive(Debug, Clone, PartialEq)]
struct App {
    name: String,
    node: String,
    ip: String,
    uid: String,
    restarts: u64,
}

fn app_pods(c: &KubeCluster) -> Vec<App> {
    let Some(list) = c.get(&["pods", "-l", "app=echo"]) else {
        return Vec::new();
    };
    let mut apps: Vec<App> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
        .map(|p| App {
            name: p["metadata"]["name"].as_str().unwrap().to_string(),
            node: p["spec"]["nodeName"].as_str().unwrap().to_string(),
            ip: p["status"]["podIP"].as_str().unwrap().to_string(),
            uid: p["metadata"]["uid"].as_str().unwrap().to_string(),
            restarts: p["status"]["containerStatuses"][0]["restartCount"]
                .as_u64()
                .unwrap_or(0),
        })
        .collect();
    apps.sort_by(|a, b| a.node.cmp(&b.node));
    apps
}

/// The Deployment (two busybox httpd pods, never on the same node, each
/// answering its own name) and a ClusterIP Service in front of them.
fn app_objects() -> Value {
    let script = "/bin/busybox mkdir -p /www && /bin/busybox hostname > /www/index.html \
                  && exec /bin/busybox httpd -f -p 8080 -h /www";
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "echo", "namespace": "default"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "echo"}},
                    "template": {
                        "metadata": {"labels": {"app": "echo"}},
                        "spec": {
                            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                                {"labelSelector": {"matchLabels": {"app": "echo"}},
                                 "topologyKey": "kubernetes.io/hostname"}
                            ]}},
                            "terminationGracePeriodSeconds": 1,
                            "containers": [{
                                "name": "echo",
                                "image": PAUSE_IMAGE,
                                "imagePullPolicy": "Never",
                                "command": ["/bin/busybox", "sh", "-c", script],
                                "ports": [{"containerPort": 8080}]
                            }]
                        }
                    }
                }
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "echo", "namespace": "default"},
                "spec": {
                    "type": "ClusterIP",
                    "selector": {"app": "echo"},
                    "ports": [{"port": 80, "targetPort": 8080}]
                }
            }
        ]
    })
}

/// A ping running from one pod to another until stopped; the sequence
/// numbers answered, as they come.
struct Pinger {
    child: Child,
    replies: Arc<Mutex<BTreeSet<u64>>>,
    reader: Option<std::thread::JoinHandle<String>>,
}

/// What a [`Pinger`] saw.
#[derive(Debug)]
struct PingCount {
    sent: u64,
    answered: u64,
    /// Sequence numbers never answered, but the last one sent (which may
    /// still have been on its way when the ping stopped).
    lost: Vec<u64>,
}

impl Pinger {
    fn start(pid: u32, to: &str) -> Pinger {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(["--", "ping", "-n", "-i", "0.1", "-W", "1", to])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run ping");
        let out = child.stdout.take().unwrap();
        let replies = Arc::new(Mutex::new(BTreeSet::new()));
        let seen = replies.clone();
        let reader = std::thread::spawn(move || {
            let mut summary = String::new();
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.contains("bytes from")
                    && let Some(seq) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("icmp_seq="))
                        .and_then(|s| s.parse::<u64>().ok())
                {
                    seen.lock().unwrap().insert(seq);
                } else if line.contains("transmitted") {
                    summary = line;
                }
            }
            summary
        });
        Pinger {
            child,
            replies,
            reader: Some(reader),
        }
    }

    fn answered(&self) -> usize {
        self.replies.lock().unwrap().len()
    }

    fn stop(mut self) -> PingCount {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        let summary = self.reader.take().unwrap().join().unwrap();
        let sent: u64 = summary
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no ping summary: {summary:?}"));
        let replies = self.replies.lock().unwrap().clone();
        let lost = (1..sent).filter(|s| !replies.contains(s)).collect();
        PingCount {
            sent,
            answered: replies.len() as u64,
            lost,
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `count` pings from the pod at `pid` to `to`, 0.1 s apart: how many
/// were answered.
fn ping_burst(pid: u32, to: &str, count: u32) -> u32 {
    let out = in_pod(
        pid,
        "ping",
        &["-n", "-c", &count.to_string(), "-i", "0.1", "-W", "1", to],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains("transmitted"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `GET /` (HTTP/1.0) of `ip:port` from the network namespace `netns`:
/// the status line and the body, or why not. (Debian's static busybox
/// wget crashes where a connection fails, so the tests ask themselves.)
fn http_get(netns: &Path, ip: &str, port: u16, path: &str) -> Result<(String, String), String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::new(ip.parse().unwrap(), port);
    in_netns(netns, || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut text = String::new();
        s.read_to_string(&mut text)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.lines().next().unwrap_or("").to_string();
        Ok((status, body.trim().to_string()))
    })
}

/// What the Service at `ip` answers to the pod at `pid` (a pod's name).
fn ask_service(pid: u32, ip: &str) -> Result<String, String> {
    http_get(Path::new(&format!("/proc/{pid}/ns/net")), ip, 80, "/").map(|(_, body)| body)
}

/// Until each app pod has been answered through the Service by the pod on
/// the other node.
fn service_answers_across(c: &KubeCluster, apps: &[App], ip: &str, within: Duration) {
    for (from, other) in [(&apps[0], &apps[1]), (&apps[1], &apps[0])] {
        let pid = c.node(&from.node).pod_pid(&from.name).unwrap();
        let mut last = Ok(String::new());
        let ok = wait_for(within, || {
            last = ask_service(pid, ip);
            last.as_deref() == Ok(other.name.as_str())
        });
        if !ok {
            let direct = http_get(
                Path::new(&format!("/proc/{pid}/ns/net")),
                &other.ip,
                8080,
                "/",
            );
            let nat = c.node(&from.node).ns.exec("iptables-save", &["-t", "nat"]);
            panic!(
                "the Service {ip} did not answer {} from {}'s pod (last answer {last:?})\n\
                 directly {}:8080: {direct:?}\nnat: {}\nkube-proxy: {}",
                from.name,
                other.node,
                other.ip,
                String::from_utf8_lossy(&nat.stdout),
                tail(&c.node(&from.node).proxy_log(), 3000)
            );
        }
    }
}

/// The image built and a two-node cluster up with it; `None` (said
/// loudly) where the Kubernetes binaries or kubectl are missing.
fn cluster(scratch: &TempDir) -> Option<KubeCluster> {
    if KubeApi::binaries().is_none()
        || !kubectl_present("the kube-flannel cluster test did not run")
    {
        return None;
    }
    require_root();
    let image = scratch.path().join("cni-rs-flannel.oci.tar");
    let t = Instant::now();
    build_image(&image);
    println!(
        "image: {} bytes (from {}, built in {:.1} s)",
        std::fs::metadata(&image).unwrap().len(),
        bin_dir().display(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let c = KubeCluster::start(2, std::slice::from_ref(&image))?;
    println!(
        "cluster up (2 nodes registered with pod CIDRs) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Some(c)
}

/// `kubectl apply -f manifest` and both agents Ready; their pod names.
fn apply(c: &KubeCluster, manifest: &str) -> Vec<String> {
    let applied = Instant::now();
    c.kubectl_ok(&["apply", "-f", manifest]);
    let agents = wait_agents_ready(c, Duration::from_secs(120), "first apply");
    println!(
        "kubectl apply -> both flannel pods Ready: {:.1} s",
        applied.elapsed().as_secs_f64()
    );
    agents
}

/// The app Deployment (one pod per node) and its Service, running, each
/// pod inside its node's pod CIDR and pinging the other; the pods and
/// their sandboxes' pids.
fn start_apps(c: &KubeCluster, scratch: &TempDir) -> (Vec<App>, Vec<u32>) {
    let objects = scratch.path().join("echo.json");
    std::fs::write(&objects, app_objects().to_string()).unwrap();
    c.kubectl_ok(&["apply", "-f", objects.to_str().unwrap()]);
    let mut apps = Vec::new();
    let ok = wait_for(Duration::from_secs(90), || {
        apps = app_pods(c);
        apps.len() == 2 && apps[0].node != apps[1].node
    });
    assert!(
        ok,
        "the app pods did not run on both nodes: {}\n{}",
        c.kubectl_text(&["get", "pods", "-o", "wide"]),
        c.kubectl_text(&["describe", "pods", "-l", "app=echo"])
    );
    for a in &apps {
        let cidr = c.pod_cidr(&a.node);
        let prefix = cidr.rsplit_once(".0/").unwrap().0;
        assert!(
            a.ip.starts_with(&format!("{prefix}.")),
            "{} on {} has {} outside its node's {cidr}",
            a.name,
            a.node,
            a.ip
        );
        println!("app pod {} on {}: {}", a.name, a.node, a.ip);
    }
    let pids: Vec<u32> = apps
        .iter()
        .map(|a| {
            c.node(&a.node)
                .pod_pid(&a.name)
                .expect("no sandbox for an app pod")
        })
        .collect();
    for (i, j) in [(0, 1), (1, 0)] {
        let ok = wait_for(Duration::from_secs(30), || {
            ping_burst(pids[i], &apps[j].ip, 1) == 1
        });
        assert!(ok, "{} cannot ping {}", apps[i].name, apps[j].ip);
    }
    (apps, pids)
}

/// A rolling restart of the agents with pings every 0.1 s both ways all
/// along: the new agents, how long it took, and what each Pinger saw.
fn rolling_restart(
    c: &KubeCluster,
    agents: &[String],
    apps: &[App],
    pids: &[u32],
) -> (Vec<String>, Duration, PingCount, PingCount) {
    let forth = Pinger::start(pids[0], &apps[1].ip);
    let back = Pinger::start(pids[1], &apps[0].ip);
    assert!(
        wait_for(Duration::from_secs(10), || forth.answered() >= 5
            && back.answered() >= 5),
        "no pings answered before the restart"
    );
    let restarted = Instant::now();
    c.kubectl_ok(&["-n", FLANNEL_NS, "rollout", "restart", DS]);
    c.kubectl_ok(&["-n", FLANNEL_NS, "rollout", "status", DS, "--timeout=180s"]);
    let new_agents = wait_agents_ready(c, Duration::from_secs(60), "rollout restart");
    let restart_time = restarted.elapsed();
    assert!(
        new_agents.iter().all(|a| !agents.contains(a)),
        "the agents were not replaced: {agents:?} -> {new_agents:?}"
    );
    // A second's worth of pings after the new agents are Ready.
    let (f0, b0) = (forth.answered(), back.answered());
    assert!(
        wait_for(Duration::from_secs(10), || forth.answered() >= f0 + 10
            && back.answered() >= b0 + 10),
        "pings stopped being answered after the restart"
    );
    let (forth, back) = (forth.stop(), back.stop());
    println!(
        "rollout restart: {:.1} s; pings {}->{}: {} sent, {} answered, lost {:?}; {}->{}: {} sent, {} answered, lost {:?}",
        restart_time.as_secs_f64(),
        apps[0].node,
        apps[1].node,
        forth.sent,
        forth.answered,
        forth.lost,
        apps[1].node,
        apps[0].node,
        back.sent,
        back.answered,
        back.lost
    );
    (new_agents, restart_time, forth, back)
}

#[test]
fn kube_flannel_on_a_two_node_cluster() {
    let scratch = TempDir::new("kfcluster");
    let Some(mut c) = cluster(&scratch) else {
        return;
    };
    let manifest = repo().join("dist/kube-flannel.yml");
    let manifest = manifest.to_str().unwrap();
    let agents = apply(&c, manifest);
    // Ready through our /readyz: it answers on each node's address.
    for n in &c.nodes {
        let answer = http_get(&n.ns.path(), &n.ip, 8081, "/readyz");
        assert!(
            answer
                .as_ref()
                .is_ok_and(|(status, _)| status.contains(" 200")),
            "{}: /readyz: {answer:?}",
            n.name
        );
    }

    // Subnets and the NetworkUnavailable condition.
    let mut subnets = Vec::new();
    for n in &c.nodes {
        let cidr = c.pod_cidr(&n.name);
        let want = subnet_of(&cidr);
        let env = flannel_subnet(&c, &n.name);
        assert_eq!(env, want, "{}: subnet.env against pod CIDR {cidr}", n.name);
        let mut cond = Value::Null;
        let ok = wait_for(Duration::from_secs(30), || {
            cond = c
                .get(&["node", &n.name])
                .and_then(|node| {
                    node["status"]["conditions"]
                        .as_array()?
                        .iter()
                        .find(|c| c["type"] == "NetworkUnavailable")
                        .cloned()
                })
                .unwrap_or(Value::Null);
            cond["status"] == "False" && cond["reason"] == "FlannelIsUp"
        });
        assert!(ok, "{}: NetworkUnavailable is {cond}", n.name);
        println!(
            "{}: pod CIDR {cidr}, FLANNEL_SUBNET={env}, NetworkUnavailable False/FlannelIsUp",
            n.name
        );
        subnets.push((n.name.clone(), env));
    }

    // App pods, one per node, and their Service.
    let (apps, pids) = start_apps(&c, &scratch);
    let svc = c.get(&["svc", "echo"]).unwrap();
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    service_answers_across(&c, &apps, &cluster_ip, Duration::from_secs(60));
    println!("Service echo ({cluster_ip}) answers each app pod from the other node");

    // A rolling restart of the agents, pinging both ways all along.
    let (_, _, forth, back) = rolling_restart(&c, &agents, &apps, &pids);
    for (name, before) in &subnets {
        assert_eq!(
            &flannel_subnet(&c, name),
            before,
            "{name}: FLANNEL_SUBNET changed over the restart"
        );
    }
    assert!(
        forth.lost.is_empty() && back.lost.is_empty(),
        "pings lost over the rolling restart: {forth:?} {back:?}"
    );

    // Delete the manifest: the data plane stays.
    c.kubectl_ok(&["delete", "-f", manifest, "--timeout=120s"]);
    assert!(
        c.get(&["namespace", FLANNEL_NS]).is_none(),
        "the kube-flannel namespace is still there"
    );
    for (i, j) in [(0, 1), (1, 0)] {
        let answered = ping_burst(pids[i], &apps[j].ip, 20);
        assert_eq!(
            answered, 20,
            "{} -> {} without the manifest: {answered}/20 pings answered",
            apps[i].name, apps[j].ip
        );
    }
    service_answers_across(&c, &apps, &cluster_ip, Duration::from_secs(30));
    println!(
        "manifest deleted: the app pods still ping each other (20/20 each way) and the Service answers"
    );

    // Apply again: recovers, nothing else restarted.
    let again = Instant::now();
    c.kubectl_ok(&["apply", "-f", manifest]);
    wait_agents_ready(&c, Duration::from_secs(120), "second apply");
    println!(
        "applied again -> both flannel pods Ready: {:.1} s",
        again.elapsed().as_secs_f64()
    );
    for (name, before) in &subnets {
        assert_eq!(
            &flannel_subnet(&c, name),
            before,
            "{name}: FLANNEL_SUBNET changed"
        );
    }
    let after = app_pods(&c);
    assert_eq!(after, apps, "the app pods changed (restarted or replaced)");
    for (a, pid) in apps.iter().zip(&pids) {
        assert_eq!(
            c.node(&a.node).pod_pid(&a.name),
            Some(*pid),
            "{}'s sandbox changed",
            a.name
        );
    }
    assert!(c.controllers_alive(), "a controller exited");
    for n in &mut c.nodes {
        assert!(n.alive(), "{}: kubelet or kube-proxy exited", n.name);
    }
    for (i, j) in [(0, 1), (1, 0)] {
        assert_eq!(ping_burst(pids[i], &apps[j].ip, 10), 10);
    }
    drop(c);
}

/// The flannel annotations' backend data of each Node: its public key.
fn wireguard_keys(c: &KubeCluster) -> Vec<String> {
    c.nodes
        .iter()
        .map(|n| {
            let node = c.get(&["node", &n.name]).unwrap();
            let a = &node["metadata"]["annotations"];
            assert_eq!(a["flannel.alpha.coreos.com/backend-type"], "wireguard");
            let data: Value =
                serde_json::from_str(a["flannel.alpha.coreos.com/backend-data"].as_str().unwrap())
                    .unwrap();
            assert_eq!(data["Port"], 51820, "{}: backend-data {data}", n.name);
            let key = data["PublicKey"].as_str().unwrap().to_string();
            assert_eq!(key.len(), 44, "{}: backend-data {data}", n.name);
            key
        })
        .collect()
}

/// The same manifest with `"Type": "wireguard"` in net-conf.json: pods on
/// the two nodes talk through our userspace WireGuard (the node kernels
/// have no WireGuard module), and a rolling restart keeps every node's key
/// (the host's /run/flannel/wgkey) and costs pings only while each agent is
/// down (the data plane is the agent's process, unlike vxlan's).
#[test]
fn kube_flannel_with_the_wireguard_backend() {
    let scratch = TempDir::new("kfwg");
    let Some(c) = cluster(&scratch) else {
        return;
    };
    let text = std::fs::read_to_string(repo().join("dist/kube-flannel.yml")).unwrap();
    let wg = text.replace("\"Type\": \"vxlan\"", "\"Type\": \"wireguard\"");
    assert_ne!(wg, text, "no vxlan backend in the manifest to replace");
    let manifest = scratch.path().join("kube-flannel-wireguard.yml");
    std::fs::write(&manifest, wg).unwrap();
    let agents = apply(&c, manifest.to_str().unwrap());
    let keys = wireguard_keys(&c);
    println!("wireguard keys: {keys:?}");
    let (apps, pids) = start_apps(&c, &scratch);
    for n in &c.nodes {
        let dev = n.ns.ip(&["link", "show", "flannel-wg"]);
        assert!(dev.contains("mtu 1420"), "{}: {dev}", n.name);
    }
    let (_, took, forth, back) = rolling_restart(&c, &agents, &apps, &pids);
    assert_eq!(
        wireguard_keys(&c),
        keys,
        "a node's key changed over the restart"
    );
    // Each agent is down for a moment in turn (its devices go with it):
    // pings (one per 0.1 s) are lost then, but not over the whole restart
    // (each node's pods talk again once its new agent is up; rolling_restart
    // checks that after the last).
    for (dir, p) in [("forth", &forth), ("back", &back)] {
        let lost = p.lost.len() as f64 * 0.1;
        assert!(
            lost < took.as_secs_f64(),
            "{dir}: {lost:.1} s of pings lost over a {:.1} s rolling restart: {p:?}",
            took.as_secs_f64()
        );
    }
    for (i, j) in [(0, 1), (1, 0)] {
        assert_eq!(ping_burst(pids[i], &apps[j].ip, 10), 10);
    }
}
