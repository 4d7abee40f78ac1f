//! cnitool, run as a person runs it at a shell inside a throwaway host
//! namespace, over our chain (bridge + host-local, flannel) and over
//! Debian's Go plugins: every verb, libcni's config lookup, chaining,
//! capabilities, environment, cache layout and version gates, GC of stale
//! attachments, and plugin errors shown with their code and undone.
//!
//! Plugins that log what they were given are small shell scripts in the
//! test's directory: either wrappers that record and then run the real
//! binary, or fakes that print a canned result.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use conformance::util::{addresses, link_names, reservations, sha512_hex};
use conformance::{PluginOutput, TempDir, TestHost, TestNetns, Tool, plugin_binary};
use serde_json::{Value, json};

const MAC: &str = "c2:11:22:33:44:55";

fn ours() -> PathBuf {
    conformance::bins::bin_dir()
}

fn go() -> PathBuf {
    let dir = PathBuf::from("/usr/lib/cni");
    assert!(
        dir.join("bridge").is_file(),
        "apt-get install containernetworking-plugins (scripts/test.sh does)"
    );
    dir
}

fn cnitool() -> PathBuf {
    plugin_binary("cnitool")
}

/// The container ID Go's cnitool derives from a netns path, computed with
/// coreutils rather than with cnitool's own code.
fn container_id(netns: &Path) -> String {
    format!(
        "cnitool-{}",
        &sha512_hex(&netns.display().to_string())[..20]
    )
}

/// coreutils base64, either way.
fn base64(input: &[u8], decode: bool) -> Vec<u8> {
    let mut child = Command::new("base64")
        .arg(if decode { "-d" } else { "-w0" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("base64 (coreutils) is needed");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn describe(out: &PluginOutput) -> String {
    format!(
        "exit {}, stdout {:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        out.stderr
    )
}

/// A successful add: the result alone on stdout, indented by four spaces
/// with `cniVersion` first, as Go's cnitool prints it.
fn added(out: &PluginOutput) -> Value {
    let r = out.success();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("{\n    \"cniVersion\": "), "{text}");
    r
}

/// A failure: exit status 1, nothing on stdout, the story on stderr.
fn failed(out: &PluginOutput) -> String {
    assert_eq!(out.status.code(), Some(1), "{}", describe(out));
    assert!(out.stdout.is_empty(), "{}", describe(out));
    // Plugins' own stderr comes first; cnitool's report follows.
    assert!(
        out.stderr.lines().any(|l| l.starts_with("cnitool: ")),
        "{}",
        describe(out)
    );
    out.stderr.clone()
}

/// A failure that shows a plugin's (or a spec rule's) error code.
fn failed_with_code(out: &PluginOutput, code: u32) -> String {
    let err = failed(out);
    assert!(
        err.contains(&format!("(CNI error code {code})")),
        "expected code {code}: {err}"
    );
    err
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// One host namespace with pods, and a directory for NETCONFPATH, the
/// cache, host-local's store, fake plugins and their logs.
struct Node {
    host: TestHost,
    dir: TempDir,
}

impl Node {
    fn new(pods: usize) -> Node {
        let node = Node {
            host: TestHost::new(pods),
            dir: TempDir::new("cnitool"),
        };
        for sub in ["net.d", "bin", "log"] {
            std::fs::create_dir_all(node.path(sub)).unwrap();
        }
        node
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn netconf(&self) -> PathBuf {
        self.path("net.d")
    }

    fn ipam(&self) -> PathBuf {
        self.path("ipam")
    }

    fn fakes(&self) -> PathBuf {
        self.path("bin")
    }

    fn pod(&self, i: usize) -> PathBuf {
        self.host.pod(i).path()
    }

    fn cid(&self, i: usize) -> String {
        container_id(&self.pod(i))
    }

    fn cache_file(&self, network: &str, pod: usize) -> PathBuf {
        self.path("cache")
            .join("results")
            .join(format!("{network}-{}-eth0", self.cid(pod)))
    }

    fn reservations(&self, network: &str) -> usize {
        reservations(&self.ipam().join(network))
    }

    /// Writes a config into NETCONFPATH; returns its bytes.
    fn conf(&self, file: &str, conf: &Value) -> Vec<u8> {
        let bytes = serde_json::to_vec_pretty(conf).unwrap();
        std::fs::write(self.netconf().join(file), &bytes).unwrap();
        bytes
    }

    /// cnitool with this node's NETCONFPATH and cache, and `CNI_PATH`. The
    /// cache is given as an option: `CNI_CACHE_DIR` would reach the plugins'
    /// environment, which the tests compare whole.
    fn tool(&self, cni_path: &[&Path]) -> Tool {
        let path = std::env::join_paths(cni_path).unwrap();
        Tool::new(&cnitool())
            .env("NETCONFPATH", self.netconf())
            .env("CNI_PATH", path)
            .arg("--cache-dir")
            .arg(self.path("cache"))
    }

    /// `cnitool VERB NETWORK <pod's netns>`.
    fn on_pod(&self, tool: Tool, verb: &str, network: &str, pod: usize) -> PluginOutput {
        tool.args([verb, network])
            .arg(self.pod(pod))
            .run_in(&self.host.host)
    }

    fn run(&self, tool: Tool) -> PluginOutput {
        tool.run_in(&self.host.host)
    }

    fn script(&self, name: &str, body: &str) {
        let path = self.fakes().join(name);
        conformance::util::script(&path, &format!("#!/bin/sh\n{body}"));
    }

    /// Shell lines that log one call: stdin, the `CNI_*` environment, and
    /// the call's place in the order of calls.
    fn logging(&self, name: &str) -> String {
        let log = self.path("log");
        format!(
            "log='{}'; tag=\"$CNI_COMMAND-{name}\"\n\
             cat > \"$log/$tag.stdin\"\n\
             env | grep '^CNI_' | sort > \"$log/$tag.env\"\n\
             echo \"$CNI_COMMAND {name}\" >> \"$log/calls\"\n",
            log.display()
        )
    }

    /// A plugin `name` that logs each call, then runs `real` with the same
    /// input and logs what it printed.
    fn wrap(&self, name: &str, real: &Path) {
        let body = format!(
            "{}'{}' < \"$log/$tag.stdin\" > \"$log/$tag.stdout\"; rc=$?\n\
             cat \"$log/$tag.stdout\"\nexit $rc\n",
            self.logging(name),
            real.display()
        );
        self.script(name, &body);
    }

    /// A plugin `name` that logs each call and answers ADD with `result`.
    fn fake(&self, name: &str, result: &Value) {
        let text = result.to_string();
        assert!(!text.contains('\''));
        let body = format!(
            "{}if [ \"$CNI_COMMAND\" = ADD ]; then printf '%s' '{text}'; fi\n",
            self.logging(name)
        );
        self.script(name, &body);
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("log").join("calls"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    fn logged(&self, command: &str, name: &str, what: &str) -> String {
        let file = self.path("log").join(format!("{command}-{name}.{what}"));
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{} was not logged: {e}", file.display()))
    }

    /// The config `name` read on stdin for `command`.
    fn seen(&self, command: &str, name: &str) -> Value {
        serde_json::from_str(&self.logged(command, name, "stdin")).unwrap()
    }

    /// What a wrapped plugin printed for `command`.
    fn printed(&self, command: &str, name: &str) -> Value {
        serde_json::from_str(&self.logged(command, name, "stdout")).unwrap()
    }

    /// The `CNI_*` variables `name` had for `command`.
    fn seen_env(&self, command: &str, name: &str) -> BTreeMap<String, String> {
        self.logged(command, name, "env")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

fn bridge(node: &Node) -> Value {
    json!({
        "type": "bridge", "bridge": "cni0", "isGateway": true,
        "ipam": {"type": "host-local", "dataDir": node.ipam(), "ranges": [[{"subnet": "10.88.0.0/24"}]]}
    })
}

fn bridge_list(node: &Node, version: &str, name: &str) -> Value {
    json!({"cniVersion": version, "name": name, "plugins": [bridge(node)]})
}

fn env_of(att: &[(&str, &str)]) -> BTreeMap<String, String> {
    att.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn usage_errors_exit_2_while_help_and_version_exit_0() {
    let ns = TestNetns::new("cnitool");
    let dir = TempDir::new("cnitool-usage");
    let run = |args: &[&str]| {
        Tool::new(&cnitool())
            .env("NETCONFPATH", dir.path())
            .args(args)
            .run_in(&ns)
    };
    for args in [
        &[][..],
        &["frob", "net", "/run/netns/x"],
        &["add", "net"],
        &["add", "net", "/run/netns/x", "extra"],
        &["del", "net"],
        &["--bogus", "add", "net", "/run/netns/x"],
        &["add", "net", "/run/netns/x", "--ifname"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(out.stdout.is_empty());
        assert!(
            out.stderr.starts_with("cnitool: ") && out.stderr.contains("Usage:"),
            "{args:?}: {}",
            out.stderr
        );
    }
    for args in [&["--help"][..], &["help"], &["gc", "-h"]] {
        let out = run(args);
        assert!(out.status.success(), "{}", describe(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        for word in [
            "add",
            "check",
            "del",
            "gc",
            "status",
            "NETCONFPATH",
            "CAP_ARGS",
        ] {
            assert!(text.contains(word), "{word} not in {text}");
        }
    }
    let out = run(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("cnitool "));

    // Unusable environment or names: exit 1 before any plugin runs, with
    // the spec's code where libcni has one.
    let err = failed(
        &Tool::new(&cnitool())
            .args(["add", "net", "/run/netns/x"])
            .env("CAP_ARGS", "[1]")
            .run_in(&ns),
    );
    assert!(err.contains("CAP_ARGS"), "{err}");
    let err = failed_with_code(&run(&["-i", "a/b", "add", "net", "/run/netns/x"]), 4);
    assert!(err.contains("interface name"), "{err}");
    failed_with_code(&run(&["add", "bad/name", "/run/netns/x"]), 7);
    failed_with_code(
        &run(&["--container-id", "-x", "del", "net", "/run/netns/x"]),
        4,
    );
    let err = failed(&run(&["add", "net", "/run/netns/x"]));
    assert!(err.contains("no net configurations found in"), "{err}");
}

#[test]
fn our_bridge_and_host_local_add_check_del() {
    let node = Node::new(1);
    let bytes = node.conf("10-brnet.conflist", &bridge_list(&node, "1.1.0", "brnet"));
    let tool = || node.tool(&[&ours()]);
    let r = added(&node.on_pod(tool(), "add", "brnet", 0));
    assert_eq!(r["cniVersion"], "1.1.0");
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 3, "{r}");
    assert_eq!(ifs[2]["name"], "eth0");
    assert_eq!(ifs[2]["sandbox"], json!(node.pod(0)));
    assert_eq!(addresses(&r), ["10.88.0.2"]);
    let pod_addrs = node.host.pod(0).ip(&["-o", "addr", "show", "dev", "eth0"]);
    assert!(pod_addrs.contains("10.88.0.2/24"), "{pod_addrs}");

    // The cache entry, laid out as libcni writes it.
    let file = node.cache_file("brnet", 0);
    let text = std::fs::read_to_string(&file).unwrap();
    let head = format!(
        r#"{{"kind":"cniCacheV1","containerId":"{}","config":""#,
        node.cid(0)
    );
    assert!(text.starts_with(&head), "{text}");
    let entry: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(entry["ifName"], "eth0");
    assert_eq!(entry["networkName"], "brnet");
    assert_eq!(entry["netns"], json!(node.pod(0)));
    assert_eq!(entry["result"], r);
    assert_eq!(
        base64(entry["config"].as_str().unwrap().as_bytes(), true),
        bytes
    );
    assert!(entry.get("cniArgs").is_none() && entry.get("capabilityArgs").is_none());
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(file.parent().unwrap()), 0o700);

    node.on_pod(tool(), "check", "brnet", 0).silent_success();
    // A second ADD of the same attachment is refused, and the first stays.
    let err = failed(&node.on_pod(tool(), "add", "brnet", 0));
    assert!(err.contains("already attached"), "{err}");
    assert!(file.exists());
    node.on_pod(tool(), "check", "brnet", 0).silent_success();
    node.run(tool().args(["status", "brnet"])).silent_success();

    node.on_pod(tool(), "del", "brnet", 0).silent_success();
    assert!(!file.exists());
    assert_eq!(link_names(node.host.pod(0)), ["lo"]);
    assert_eq!(link_names(&node.host.host), ["lo", "cni0"]);
    assert_eq!(node.reservations("brnet"), 0);
    // DEL again is fine; CHECK without an ADD has nothing to compare with.
    node.on_pod(tool(), "del", "brnet", 0).silent_success();
    let err = failed(&node.on_pod(tool(), "check", "brnet", 0));
    assert!(err.contains("no cached ADD result"), "{err}");
    node.run(tool().args(["gc", "brnet"])).silent_success();
}

#[test]
fn go_bridge_and_host_local_add_check_del_gc_status() {
    let mut node = Node::new(2);
    node.conf("10-gonet.conflist", &bridge_list(&node, "1.0.0", "gonet"));
    let go = go();
    let tool = |node: &Node| node.tool(&[&go]);
    for pod in 0..2 {
        let r = added(&node.on_pod(tool(&node), "add", "gonet", pod));
        assert_eq!(r["cniVersion"], "1.0.0");
        assert_eq!(addresses(&r), [format!("10.88.0.{}", 2 + pod)]);
        assert!(node.cache_file("gonet", pod).exists());
    }
    for pod in 0..2 {
        node.on_pod(tool(&node), "check", "gonet", pod)
            .silent_success();
    }
    // STATUS exists from 1.1.0 on: nothing to ask these plugins.
    let out = node.run(tool(&node).args(["status", "gonet"]));
    out.silent_success();
    assert!(
        out.stderr.contains("STATUS exists from 1.1.0"),
        "{}",
        out.stderr
    );

    node.on_pod(tool(&node), "del", "gonet", 0).silent_success();
    assert!(!node.cache_file("gonet", 0).exists());
    assert_eq!(link_names(node.host.pod(0)), ["lo"]);
    assert_eq!(node.reservations("gonet"), 1);
    assert_eq!(
        link_names(&node.host.host).len(),
        3,
        "lo, cni0, pod 1's veth"
    );

    // Pod 1's namespace goes away without a DEL: GC finds the stale
    // attachment in the cache and DELs it (plugins below 1.1.0 get no GC).
    let stale = node.cache_file("gonet", 1);
    node.host.pods.pop();
    let out = node.run(tool(&node).args(["gc", "gonet"]));
    out.silent_success();
    assert!(
        out.stderr.contains("deleted stale attachment"),
        "{}",
        out.stderr
    );
    assert!(!stale.exists());
    assert_eq!(node.reservations("gonet"), 0);
    // (Its veth goes with the namespace, when the kernel gets to it.)
}

#[test]
fn gc_deletes_stale_attachments_and_tells_plugins_which_to_keep() {
    let mut node = Node::new(2);
    node.conf("10-brnet.conflist", &bridge_list(&node, "1.1.0", "brnet"));
    node.wrap("bridge", &ours().join("bridge"));
    let fakes = node.fakes();
    let ours = ours();
    let tool = |node: &Node| node.tool(&[&fakes, &ours]);
    for pod in 0..2 {
        added(&node.on_pod(tool(&node), "add", "brnet", pod));
    }
    // A reservation no attachment owns, as a crashed runtime leaves it.
    std::fs::write(
        node.ipam().join("brnet").join("10.88.0.99"),
        "ghost\r\neth0",
    )
    .unwrap();
    assert_eq!(node.reservations("brnet"), 3);
    let (live, stale) = (node.cache_file("brnet", 0), node.cache_file("brnet", 1));
    let (cid0, cid1, netns1) = (node.cid(0), node.cid(1), node.pod(1));
    node.host.pods.pop();

    let out = node.run(tool(&node).args(["gc", "brnet"]));
    out.silent_success();
    assert!(
        out.stderr
            .contains(&format!("deleted stale attachment {cid1} eth0")),
        "{}",
        out.stderr
    );
    assert_eq!(
        node.calls(),
        ["ADD bridge", "ADD bridge", "DEL bridge", "GC bridge"]
    );
    // The stale attachment got its DEL with its cached result and env.
    let del = node.seen("DEL", "bridge");
    assert_eq!(del["prevResult"]["ips"][0]["address"], "10.88.0.3/24");
    let env = node.seen_env("DEL", "bridge");
    assert_eq!(env["CNI_CONTAINERID"], cid1);
    assert_eq!(env["CNI_NETNS"], netns1.display().to_string());
    assert!(!stale.exists());
    assert!(live.exists());
    // GC named the live attachment under both keys; everything else of the
    // network (the ghost) was released, the live pod's address kept.
    let gc = node.seen("GC", "bridge");
    let keep = json!([{"containerID": cid0, "ifname": "eth0"}]);
    assert_eq!(gc["cni.dev/valid-attachments"], keep);
    assert_eq!(gc["cni.dev/attachments"], keep);
    assert_eq!(gc["name"], "brnet");
    assert_eq!(gc["cniVersion"], "1.1.0");
    assert!(gc.get("prevResult").is_none() && gc.get("runtimeConfig").is_none());
    let path = std::env::join_paths([&fakes, &ours]).unwrap();
    assert_eq!(
        node.seen_env("GC", "bridge"),
        env_of(&[
            ("CNI_ARGS", ""),
            ("CNI_COMMAND", "GC"),
            ("CNI_CONTAINERID", ""),
            ("CNI_IFNAME", ""),
            ("CNI_NETNS", ""),
            ("CNI_PATH", path.to_str().unwrap()),
        ])
    );
    assert_eq!(node.reservations("brnet"), 1);
    assert!(node.ipam().join("brnet").join("10.88.0.2").exists());
    node.on_pod(tool(&node), "check", "brnet", 0)
        .silent_success();

    // disableGC: GC leaves everything alone.
    let mut conf = bridge_list(&node, "1.1.0", "brnet");
    conf["disableGC"] = json!(true);
    node.conf("10-brnet.conflist", &conf);
    std::fs::write(
        node.ipam().join("brnet").join("10.88.0.98"),
        "ghost\r\neth0",
    )
    .unwrap();
    let out = node.run(tool(&node).args(["gc", "brnet"]));
    out.silent_success();
    assert!(out.stderr.contains("disableGC"), "{}", out.stderr);
    assert_eq!(node.reservations("brnet"), 2);
    assert_eq!(
        node.calls().len(),
        5,
        "only the CHECK since: {:?}",
        node.calls()
    );
}

/// A netns path that cannot be checked (here a symlink loop: ELOOP, which
/// `Path::exists` reads as "gone") is not proof the pod is gone: GC keeps
/// the attachment, names it to the plugins, and says why.
#[test]
fn gc_keeps_an_attachment_whose_netns_cannot_be_checked() {
    let node = Node::new(1);
    node.fake("fa", &canned("10.0.0.1/24"));
    node.conf(
        "10-loop.conflist",
        &json!({"cniVersion": "1.1.0", "name": "loopnet", "plugins": [{"type": "fa"}]}),
    );
    let fakes = node.fakes();
    let tool = || node.tool(&[&fakes]);
    let looped = node.path("loop");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let netns = looped.join("ns");
    let err = std::fs::exists(&netns).unwrap_err();
    assert_ne!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    assert!(!netns.exists());

    let cid = container_id(&netns);
    added(&node.run(tool().args(["add", "loopnet"]).arg(&netns)));
    let cache = node
        .path("cache")
        .join("results")
        .join(format!("loopnet-{cid}-eth0"));
    assert!(cache.exists());

    let out = node.run(tool().args(["gc", "loopnet"]));
    out.silent_success();
    assert_eq!(node.calls(), ["ADD fa", "GC fa"]);
    assert!(cache.exists());
    let keep = json!([{"containerID": cid, "ifname": "eth0"}]);
    assert_eq!(node.seen("GC", "fa")["cni.dev/valid-attachments"], keep);
    assert!(
        out.stderr.contains(&format!(
            "keeping attachment {cid} eth0: cannot tell whether netns {} exists",
            netns.display()
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn flannel_chain_and_status_before_and_after_subnet_env() {
    let node = Node::new(1);
    let subnet_env = node.path("subnet.env");
    let saved = node.path("flannel");
    node.conf(
        "10-flannel.conflist",
        &json!({"cniVersion": "1.1.0", "name": "cbr0", "plugins": [{
            "type": "flannel", "subnetFile": subnet_env, "dataDir": saved,
            "ipam": {"dataDir": node.ipam()}, "delegate": {"isDefaultGateway": true}
        }]}),
    );
    let tool = || node.tool(&[&ours()]);
    // Before flanneld has written subnet.env the node is not ready: STATUS
    // says so with 50, ADD with 11 (try again later), and nothing is left.
    let err = failed_with_code(&node.run(tool().args(["status", "cbr0"])), 50);
    assert!(
        err.contains(r#"plugin type="flannel" failed (status)"#),
        "{err}"
    );
    let err = failed_with_code(&node.on_pod(tool(), "add", "cbr0", 0), 11);
    assert!(
        err.contains(r#"plugin type="flannel" failed (add)"#),
        "{err}"
    );
    assert!(!node.cache_file("cbr0", 0).exists());
    assert_eq!(link_names(node.host.pod(0)), ["lo"]);

    std::fs::write(
        &subnet_env,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .unwrap();
    node.run(tool().args(["status", "cbr0"])).silent_success();
    let r = added(&node.on_pod(tool(), "add", "cbr0", 0));
    assert_eq!(addresses(&r), ["10.244.7.2"]);
    assert!(
        saved.join(node.cid(0)).exists(),
        "flannel saved its delegate"
    );
    node.on_pod(tool(), "check", "cbr0", 0).silent_success();
    node.on_pod(tool(), "del", "cbr0", 0).silent_success();
    assert!(!saved.join(node.cid(0)).exists());
    assert!(!node.cache_file("cbr0", 0).exists());
    assert_eq!(node.reservations("cbr0"), 0);
    assert_eq!(link_names(node.host.pod(0)), ["lo"]);
}

#[test]
fn plugin_errors_show_their_code_and_a_failed_add_is_undone() {
    let node = Node::new(1);
    let (ours, go, fakes) = (ours(), go(), node.fakes());
    let tool = || node.tool(&[&fakes, &ours, &go]);
    // Our bridge, then Go's tuning with a sysctl the kernel does not have.
    node.conf(
        "10-errnet.conflist",
        &json!({"cniVersion": "1.0.0", "name": "errnet", "plugins": [
            bridge(&node),
            {"type": "tuning", "dataDir": node.path("tuning"),
             "sysctl": {"net.ipv4.conf.eth0.no_such_knob": "1"}}
        ]}),
    );
    let err = failed_with_code(&node.on_pod(tool(), "add", "errnet", 0), 999);
    assert!(
        err.contains(r#"plugin type="tuning" failed (add): "#) && err.contains("no_such_knob"),
        "{err}"
    );
    // Undone: no cache entry, no interface, no veth, no reservation.
    assert!(!node.cache_file("errnet", 0).exists());
    assert_eq!(link_names(node.host.pod(0)), ["lo"]);
    assert_eq!(link_names(&node.host.host), ["lo", "cni0"]);
    assert_eq!(node.reservations("errnet"), 0);

    // Our bridge refusing its config: the spec's 7.
    let mut bad = bridge(&node);
    bad["vlan"] = json!(5000);
    node.conf(
        "20-badconf.conflist",
        &json!({"cniVersion": "1.1.0", "name": "badconf", "plugins": [bad]}),
    );
    let err = failed_with_code(&node.on_pod(tool(), "add", "badconf", 0), 7);
    assert!(
        err.contains(r#"plugin type="bridge" failed (add)"#),
        "{err}"
    );

    // A plugin that crashes: what it said on stderr and how it died.
    node.script("crasher", "echo 'boom: out of luck' >&2\nkill -9 $$\n");
    // One that prints something else than an error object.
    node.script("garbler", "echo 'not json at all'\nexit 3\n");
    for (name, plugin, want) in [
        (
            "crash",
            "crasher",
            &["netplugin failed", "boom: out of luck", "SIGKILL"][..],
        ),
        (
            "garble",
            "garbler",
            &["error parsing its diagnostic message", "not json at all"],
        ),
        ("missing", "nosuch", &[r#"failed to find plugin "nosuch""#]),
    ] {
        node.conf(
            &format!("30-{name}.conflist"),
            &json!({"cniVersion": "1.1.0", "name": name, "plugins": [{"type": plugin}]}),
        );
        let err = failed(&node.on_pod(tool(), "add", name, 0));
        for w in want {
            assert!(err.contains(w), "{w:?} not in {err}");
        }
        assert!(!node.cache_file(name, 0).exists());
    }
}

#[test]
fn chain_passes_prev_result_capabilities_and_env_like_libcni() {
    let node = Node::new(1);
    let (ours, go, fakes) = (ours(), go(), node.fakes());
    node.wrap("bridge", &ours.join("bridge"));
    node.wrap("tuning", &go.join("tuning"));
    node.wrap("portmap", &go.join("portmap"));
    node.conf(
        "10-chain.conflist",
        &json!({"cniVersion": "1.0.0", "name": "chain", "plugins": [
            bridge(&node),
            {"type": "tuning", "capabilities": {"mac": true}, "dataDir": node.path("tuning")},
            {"type": "portmap", "capabilities": {"portMappings": true, "ips": false}}
        ]}),
    );
    let caps = json!({
        "mac": MAC,
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 1000, "ingressBurst": 1000},
        "ips": ["10.88.0.50/24"]
    });
    let args = "IgnoreUnknown=1;K8S_POD_NAME=web";
    let tool = || node.tool(&[&fakes, &ours, &go]);
    let r = added(
        &node.on_pod(
            tool()
                .env("CAP_ARGS", caps.to_string())
                .env("CNI_ARGS", args),
            "add",
            "chain",
            0,
        ),
    );
    assert_eq!(node.calls(), ["ADD bridge", "ADD tuning", "ADD portmap"]);
    let seen: Vec<Value> = ["bridge", "tuning", "portmap"]
        .iter()
        .map(|p| node.seen("ADD", p))
        .collect();
    for conf in &seen {
        assert_eq!(conf["name"], "chain");
        assert_eq!(conf["cniVersion"], "1.0.0");
    }
    // Each plugin gets the capability args it declares, and only those.
    assert!(seen[0].get("runtimeConfig").is_none());
    assert_eq!(seen[1]["runtimeConfig"], json!({"mac": MAC}));
    assert_eq!(
        seen[2]["runtimeConfig"],
        json!({"portMappings": caps["portMappings"]})
    );
    // Each result is the next plugin's prevResult; the last one is printed.
    assert!(seen[0].get("prevResult").is_none());
    // (Go plugins of Debian's vintage print an empty "dns": {}; libcni's
    // result types, and cnitool, leave it out.)
    assert_eq!(
        seen[1]["prevResult"],
        decoded(node.printed("ADD", "bridge"))
    );
    assert_eq!(
        seen[2]["prevResult"],
        decoded(node.printed("ADD", "tuning"))
    );
    assert_eq!(r, decoded(node.printed("ADD", "portmap")));
    assert_eq!(r["interfaces"][2]["mac"], MAC, "{r}");
    let link = node.host.pod(0).ip(&["link", "show", "eth0"]);
    assert!(link.contains(MAC), "{link}");
    let nat = node.host.host.exec("iptables", &["-t", "nat", "-S"]);
    assert!(String::from_utf8_lossy(&nat.stdout).contains("--dport 8080"));
    // libcni's six variables, the same for every plugin.
    let path = std::env::join_paths([&fakes, &ours, &go]).unwrap();
    let pod = node.pod(0).display().to_string();
    let cid = node.cid(0);
    let want = |command| {
        env_of(&[
            ("CNI_ARGS", args),
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", &cid),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", &pod),
            ("CNI_PATH", path.to_str().unwrap()),
        ])
    };
    for p in ["bridge", "tuning", "portmap"] {
        assert_eq!(node.seen_env("ADD", p), want("ADD"), "{p}");
    }
    // The cache keeps the args for DEL (and GC).
    let entry: Value =
        serde_json::from_slice(&std::fs::read(node.cache_file("chain", 0)).unwrap()).unwrap();
    assert_eq!(
        entry["cniArgs"],
        json!([["IgnoreUnknown", "1"], ["K8S_POD_NAME", "web"]])
    );
    assert_eq!(entry["capabilityArgs"], caps);

    // DEL without CAP_ARGS or CNI_ARGS: reverse order, the cached result as
    // prevResult, and ADD's args again.
    node.on_pod(tool(), "del", "chain", 0).silent_success();
    assert_eq!(
        node.calls()[3..],
        ["DEL portmap", "DEL tuning", "DEL bridge"]
    );
    for p in ["bridge", "tuning", "portmap"] {
        assert_eq!(node.seen("DEL", p)["prevResult"], r, "{p}");
        assert_eq!(node.seen_env("DEL", p), want("DEL"), "{p}");
    }
    assert_eq!(
        node.seen("DEL", "portmap")["runtimeConfig"],
        json!({"portMappings": caps["portMappings"]})
    );
    let nat = node.host.host.exec("iptables", &["-t", "nat", "-S"]);
    assert!(!String::from_utf8_lossy(&nat.stdout).contains("--dport 8080"));
    assert_eq!(link_names(node.host.pod(0)), ["lo"]);
    assert_eq!(node.reservations("chain"), 0);
    assert!(!node.cache_file("chain", 0).exists());
}

/// A printed result as libcni's types hold it: an empty `dns` is no DNS.
fn decoded(mut result: Value) -> Value {
    if result["dns"] == json!({}) {
        result.as_object_mut().unwrap().remove("dns");
    }
    result
}

fn canned(address: &str) -> Value {
    json!({"cniVersion": "1.0.0", "ips": [{"address": address}]})
}

#[test]
fn config_lookup_and_version_gates_follow_libcni() {
    let node = Node::new(1);
    node.fake("fa", &canned("10.0.0.1/24"));
    node.fake("fb", &canned("10.0.0.2/24"));
    node.fake("fc", &canned("10.0.0.3/24"));
    // Prints a 0.4.0 result whatever it is asked.
    node.fake(
        "old",
        &json!({"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.4/24"}]}),
    );
    let list = |name: &str, version: &str, plugins: &[&str]| {
        let plugins: Vec<Value> = plugins.iter().map(|p| json!({"type": p})).collect();
        json!({"cniVersion": version, "name": name, "plugins": plugins})
    };
    // A single-plugin file sorts first, but lists win; of two lists with
    // the same name the first by file name wins.
    node.conf(
        "05-dup.conf",
        &json!({"cniVersion": "1.0.0", "name": "dup", "type": "fc"}),
    );
    node.conf("10-dup.conflist", &list("dup", "1.0.0", &["fa"]));
    node.conf("20-dup.conflist", &list("dup", "1.0.0", &["fb"]));
    let single =
        json!({"cniVersion": "0.4.0", "name": "single", "type": "fa", "custom": {"kept": true}});
    node.conf("30-single.json", &single);
    let mut conv = list("conv", "0.4.0", &["old", "fa"]);
    conv["cniVersions"] = json!(["1.0.0", "9.9.9"]);
    node.conf("40-conv.conflist", &conv);
    node.conf("50-old.conflist", &list("old031", "0.3.1", &["fa"]));
    let mut nocheck = list("nocheck", "1.0.0", &["fa"]);
    nocheck["disableCheck"] = json!(true);
    node.conf("60-nocheck.conflist", &nocheck);
    std::fs::write(node.netconf().join("notes.txt"), "not a config").unwrap();
    std::fs::create_dir(node.netconf().join("70-dir.conflist")).unwrap();
    let fakes = node.fakes();
    let tool = || node.tool(&[&fakes]);

    let r = added(&node.on_pod(tool(), "add", "dup", 0));
    assert_eq!(addresses(&r), ["10.0.0.1"]);
    assert_eq!(node.calls(), ["ADD fa"]);

    // A .json single-plugin config is run as a list of one; its own fields
    // are kept, the result is printed in its version (0.4.0 adds "version").
    let r = added(&node.on_pod(tool(), "add", "single", 0));
    assert_eq!(r["cniVersion"], "0.4.0");
    assert_eq!(r["ips"][0]["version"], "4");
    let got = node.seen("ADD", "fa");
    assert_eq!(
        (&got["name"], &got["cniVersion"]),
        (&json!("single"), &json!("0.4.0"))
    );
    assert_eq!(got["custom"], json!({"kept": true}));
    let entry: Value =
        serde_json::from_slice(&std::fs::read(node.cache_file("single", 0)).unwrap()).unwrap();
    let config: Value =
        serde_json::from_slice(&base64(entry["config"].as_str().unwrap().as_bytes(), true))
            .unwrap();
    assert_eq!(
        config,
        json!({"cniVersion": "0.4.0", "name": "single", "plugins": [single]})
    );

    // cniVersions: the highest this spec knows (9.9.9 is skipped); a plugin
    // that prints another version is converted for the next one.
    let r = added(&node.on_pod(tool(), "add", "conv", 0));
    assert_eq!(r["cniVersion"], "1.0.0");
    let got = node.seen("ADD", "fa");
    assert_eq!(got["cniVersion"], "1.0.0");
    assert_eq!(
        got["prevResult"],
        json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.4/24"}]})
    );

    // CHECK needs 0.4.0; disableCheck skips it; STATUS needs 1.1.0.
    added(&node.on_pod(tool(), "add", "old031", 0));
    let err = failed(&node.on_pod(tool(), "check", "old031", 0));
    assert!(
        err.contains(r#"configuration version "0.3.1" does not support the CHECK command"#),
        "{err}"
    );
    added(&node.on_pod(tool(), "add", "nocheck", 0));
    let out = node.on_pod(tool(), "check", "nocheck", 0);
    out.silent_success();
    assert!(out.stderr.contains("disableCheck"));
    node.run(tool().args(["status", "dup"])).silent_success();
    assert!(
        node.calls()
            .iter()
            .all(|c| !c.starts_with("CHECK") && !c.starts_with("STATUS")),
        "{:?}",
        node.calls()
    );
    // DEL of a 0.3.1 list sends no prevResult (libcni from 0.4.0 on).
    node.on_pod(tool(), "del", "old031", 0).silent_success();
    assert!(node.seen("DEL", "fa").get("prevResult").is_none());

    let err = failed(&node.on_pod(tool(), "add", "nope", 0));
    assert!(
        err.contains(r#"no net configuration with name "nope" in"#),
        "{err}"
    );
    // A file that cannot be parsed stops the search: it may have been the one.
    std::fs::write(node.netconf().join("00-broken.conflist"), "{").unwrap();
    let err = failed_with_code(&node.on_pod(tool(), "del", "dup", 0), 7);
    assert!(err.contains("00-broken.conflist"), "{err}");
}

#[test]
fn reads_libcni_cache_entries_and_falls_back_to_the_cached_config() {
    let node = Node::new(1);
    node.fake("fa", &canned("10.9.0.1/24"));
    let conf = json!({"cniVersion": "1.1.0", "name": "interop", "plugins": [{"type": "fa"}]});
    let bytes = node.conf("10-interop.conflist", &conf);
    let fakes = node.fakes();
    let tool = || node.tool(&[&fakes]);
    let file = node.cache_file("interop", 0);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();

    // An entry as Go's libcni writes it, its result in 1.0.0: DEL hands the
    // result on in the list's version, with the cached CNI_ARGS.
    let go_entry = format!(
        r#"{{"kind":"cniCacheV1","containerId":"{}","config":"{}","ifName":"eth0","networkName":"interop","netns":"{}","cniArgs":[["IgnoreUnknown","1"]],"capabilityArgs":{{"mac":"{MAC}"}},"result":{{"cniVersion":"1.0.0","ips":[{{"address":"10.9.0.5/24"}}]}}}}"#,
        node.cid(0),
        String::from_utf8(base64(&bytes, false)).unwrap(),
        node.pod(0).display()
    );
    std::fs::write(&file, go_entry).unwrap();
    node.on_pod(tool(), "del", "interop", 0).silent_success();
    let del = node.seen("DEL", "fa");
    assert_eq!(
        del["prevResult"],
        json!({"cniVersion": "1.1.0", "ips": [{"address": "10.9.0.5/24"}]})
    );
    assert_eq!(node.seen_env("DEL", "fa")["CNI_ARGS"], "IgnoreUnknown=1");
    assert!(!file.exists());

    // An entry from before cniCacheV1: the bare result.
    std::fs::write(
        &file,
        r#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.9.0.6/24"}]}"#,
    )
    .unwrap();
    node.on_pod(tool(), "del", "interop", 0).silent_success();
    assert_eq!(
        node.seen("DEL", "fa")["prevResult"],
        json!({"cniVersion": "1.1.0", "ips": [{"address": "10.9.0.6/24"}]})
    );
    assert!(!file.exists());

    // An unreadable entry does not block DEL: it is dropped.
    std::fs::write(&file, "garbage").unwrap();
    node.on_pod(tool(), "del", "interop", 0).silent_success();
    assert!(node.seen("DEL", "fa").get("prevResult").is_none());
    assert!(!file.exists());

    // The network's config removed after ADD: DEL uses the cached one.
    added(&node.on_pod(tool(), "add", "interop", 0));
    std::fs::remove_file(node.netconf().join("10-interop.conflist")).unwrap();
    let out = node.on_pod(tool(), "del", "interop", 0);
    out.silent_success();
    assert!(
        out.stderr.contains("using the config cached at ADD"),
        "{}",
        out.stderr
    );
    assert_eq!(node.calls().last().unwrap(), "DEL fa");
    assert!(!file.exists());
    // Without a cache entry either, there is nothing to go on.
    let err = failed(&node.on_pod(tool(), "del", "interop", 0));
    assert!(err.contains("no net configurations found"), "{err}");

    // --container-id and --ifname name the attachment instead of the netns.
    node.conf("10-interop.conflist", &conf);
    let out = node.run(
        tool()
            .args(["add", "--container-id", "ctr-1", "-i", "net1", "interop"])
            .arg(node.pod(0)),
    );
    added(&out);
    let env = node.seen_env("ADD", "fa");
    assert_eq!(
        (env["CNI_CONTAINERID"].as_str(), env["CNI_IFNAME"].as_str()),
        ("ctr-1", "net1")
    );
    let named = node
        .path("cache")
        .join("results")
        .join("interop-ctr-1-net1");
    assert!(named.exists());
    node.run(tool().args(["del", "--container-id=ctr-1", "--ifname=net1", "interop"]))
        .silent_success();
    // No netns given: ADD's, which still exists, so the pod side goes too.
    assert_eq!(
        node.seen_env("DEL", "fa")["CNI_NETNS"],
        node.pod(0).to_str().unwrap()
    );
    assert!(!named.exists());
}
