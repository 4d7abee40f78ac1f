//! host-local, run as a runtime runs it: every behaviour of the reference
//! plugin, the shared on-disk store (also with the Go binary), GC, STATUS,
//! crash leftovers and many processes at once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use conformance::bins::{GO_HOST_LOCAL, go_host_local_available as go_available};
use conformance::{Invocation, PluginOutput, TempDir, TestHost, plugin_binary};
use serde_json::{Value, json};

/// One network's store in a scratch dataDir, and a host namespace to run in.
struct Net {
    host: TestHost,
    data: TempDir,
    ipam: Value,
    version: &'static str,
}

impl Net {
    fn new(ipam: Value) -> Self {
        let data = TempDir::new("hl");
        let mut ipam = ipam;
        ipam["type"] = json!("host-local");
        ipam["dataDir"] = json!(data.path());
        Net {
            host: TestHost::new(0),
            data,
            ipam,
            version: "1.1.0",
        }
    }

    fn v4() -> Self {
        Self::new(json!({"ranges": [[{"subnet": "10.1.2.0/24"}]]}))
    }

    fn conf(&self) -> Value {
        json!({"cniVersion": self.version, "name": "hlnet", "type": "bridge", "ipam": self.ipam})
    }

    fn store(&self) -> PathBuf {
        self.data.path().join("hlnet")
    }

    fn call(&self, command: &str, cid: &str) -> Invocation {
        Invocation::new(command)
            .container_id(cid)
            .env("CNI_NETNS", "/var/run/netns/unused")
            .config(&self.conf())
    }

    fn run(&self, inv: Invocation) -> PluginOutput {
        inv.run(&plugin_binary("host-local"), &self.host.host)
    }

    fn run_go(&self, inv: Invocation) -> PluginOutput {
        inv.run(Path::new(GO_HOST_LOCAL), &self.host.host)
    }

    fn add(&self, cid: &str) -> Value {
        self.run(self.call("ADD", cid)).success()
    }

    fn del(&self, cid: &str) {
        self.run(self.call("DEL", cid)).silent_success();
    }

    /// The reservations on disk: address -> content.
    fn reservations(&self) -> Vec<(String, String)> {
        let Ok(dir) = std::fs::read_dir(self.store()) else {
            return Vec::new();
        };
        let mut out: Vec<(String, String)> = dir
            .map(|e| e.unwrap())
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .unwrap()
                    .parse::<std::net::IpAddr>()
                    .is_ok()
            })
            .map(|e| {
                let content = std::fs::read_to_string(e.path()).unwrap();
                (e.file_name().into_string().unwrap(), content)
            })
            .collect();
        out.sort();
        out
    }

    fn reserve_by_hand(&self, ip: &str, content: &str) {
        std::fs::create_dir_all(self.store()).unwrap();
        std::fs::write(self.store().join(ip), content).unwrap();
    }

    /// Fills the store with address files outside every range, enough for
    /// ours to look it up through its index instead of reading it whole.
    fn make_large(&self) {
        for i in 0..LARGE_FILL {
            let ip = format!("{FILL_PREFIX}{}.{}", i / 250, i % 250 + 1);
            self.reserve_by_hand(&ip, &format!("fill-{i}\r\neth0"));
        }
    }

    /// The reservations on disk, without those of [`Net::make_large`].
    fn own_reservations(&self) -> Vec<(String, String)> {
        let mut all = self.reservations();
        all.retain(|(ip, _)| !ip.starts_with(FILL_PREFIX));
        all
    }
}

/// Where [`Net::make_large`] puts its files: in no test's ranges.
const FILL_PREFIX: &str = "10.250.";
const LARGE_FILL: usize = 1_000;

fn addresses(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| ip["address"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn allocates_and_releases_dual_stack_in_the_reference_layout() {
    let net = Net::new(json!({
        "ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "2001:db8:1::9"}]
    }));
    let r = net.add("ctr1");
    assert_eq!(
        r["ips"],
        json!([
            {"address": "10.1.2.2/24", "gateway": "10.1.2.1"},
            {"address": "2001:db8:1::2/64", "gateway": "2001:db8:1::1"}
        ])
    );
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "2001:db8:1::9"}])
    );
    assert_eq!(r["cniVersion"], "1.1.0");
    assert!(r.get("interfaces").is_none());
    assert_eq!(
        net.reservations(),
        [
            ("10.1.2.2".to_string(), "ctr1\r\neth0".to_string()),
            ("2001:db8:1::2".to_string(), "ctr1\r\neth0".to_string())
        ]
    );
    let last = |n: u32| {
        std::fs::read_to_string(net.store().join(format!("last_reserved_ip.{n}"))).unwrap()
    };
    assert_eq!(
        (last(0).as_str(), last(1).as_str()),
        ("10.1.2.2", "2001:db8:1::2")
    );
    // A second attachment of the same container on another interface.
    let r2 = net.run(net.call("ADD", "ctr1").ifname("net1")).success();
    assert_eq!(addresses(&r2), ["10.1.2.3/24", "2001:db8:1::3/64"]);
    net.del("ctr1");
    assert_eq!(
        net.reservations().len(),
        2,
        "only eth0's addresses are released"
    );
    net.run(net.call("DEL", "ctr1").ifname("net1"))
        .silent_success();
    assert!(net.reservations().is_empty());
}

#[test]
fn prints_the_result_in_every_spec_version() {
    for version in [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
    ] {
        let mut net = Net::new(json!({
            "ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]],
            "routes": [{"dst": "0.0.0.0/0"}]
        }));
        net.version = version;
        let r = net.add("ctr");
        assert_eq!(r["cniVersion"], version);
        if version.starts_with("0.1") || version.starts_with("0.2") {
            assert_eq!(
                r["ip4"],
                json!({"ip": "10.1.2.2/24", "gateway": "10.1.2.1", "routes": [{"dst": "0.0.0.0/0"}]})
            );
            assert_eq!(
                r["ip6"],
                json!({"ip": "2001:db8:1::2/64", "gateway": "2001:db8:1::1"})
            );
            assert!(r.get("ips").is_none());
        } else if version.starts_with("0.") {
            assert_eq!(r["ips"][0]["version"], "4");
            assert_eq!(r["ips"][1]["version"], "6");
        } else {
            assert!(r["ips"][0].get("version").is_none());
        }
        net.del("ctr");
    }
}

#[test]
fn legacy_single_range_form_routes_and_resolv_conf() {
    let scratch = TempDir::new("resolv");
    let resolv = scratch.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "# test\nnameserver 10.1.0.10\nsearch a.example b.example\ndomain example\noptions ndots:2\n",
    )
    .unwrap();
    let net = Net::new(json!({
        "subnet": "10.1.4.0/24", "rangeStart": "10.1.4.100", "rangeEnd": "10.1.4.101", "gateway": "10.1.4.254",
        "routes": [{"dst": "192.168.0.0/16", "gw": "10.1.4.254"}],
        "resolvConf": resolv
    }));
    let r = net.add("a");
    assert_eq!(
        r["ips"],
        json!([{"address": "10.1.4.100/24", "gateway": "10.1.4.254"}])
    );
    assert_eq!(
        r["routes"],
        json!([{"dst": "192.168.0.0/16", "gw": "10.1.4.254"}])
    );
    assert_eq!(
        r["dns"],
        json!({"nameservers": ["10.1.0.10"], "domain": "example", "search": ["a.example", "b.example"], "options": ["ndots:2"]})
    );
    assert_eq!(addresses(&net.add("b")), ["10.1.4.101/24"]);
}

#[test]
fn a_missing_resolv_conf_is_an_error_that_reserves_nothing() {
    let net = Net::new(
        json!({"ranges": [[{"subnet": "10.1.2.0/24"}]], "resolvConf": "/nonexistent/resolv.conf"}),
    );
    let err = net.run(net.call("ADD", "a")).error(5);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/resolv.conf"),
        "{err}"
    );
    assert!(net.reservations().is_empty());
}

#[test]
fn ip_ranges_capability_comes_first() {
    let net = Net::v4();
    let mut conf = net.conf();
    conf["runtimeConfig"] = json!({"ipRanges": [[{"subnet": "10.9.0.0/24"}]]});
    let r = net.run(net.call("ADD", "a").config(&conf)).success();
    assert_eq!(addresses(&r), ["10.9.0.2/24", "10.1.2.2/24"]);
}

#[test]
fn invalid_configs_are_refused_with_the_reference_messages_and_leave_nothing() {
    let cases: Vec<(Value, u64, &str)> = vec![
        (
            json!({"ranges": [[{"subnet": "10.1.2.0/31"}]]}),
            7,
            "Network 10.1.2.0/31 too small to allocate from",
        ),
        (
            json!({"ranges": [[{"subnet": "2001:db8::/127"}]]}),
            7,
            "too small to allocate from",
        ),
        (
            json!({"ranges": [[{"subnet": "10.1.2.5/24"}]]}),
            7,
            "Network has host bits set. For a subnet mask of length 24 the network address is 10.1.2.0",
        ),
        (
            json!({"ranges": [[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.3.1"}]]}),
            7,
            "RangeStart 10.1.3.1 not in network 10.1.2.0/24",
        ),
        (
            json!({"ranges": [[{"subnet": "10.1.2.0/24", "rangeEnd": "10.1.3.1"}]]}),
            7,
            "RangeEnd 10.1.3.1 not in network 10.1.2.0/24",
        ),
        (
            json!({"ranges": [[{"subnet": "10.1.2.0/24"}, {"subnet": "2001:db8::/64"}]]}),
            7,
            "mixed address families",
        ),
        (
            json!({"ranges": [[{"subnet": "10.1.0.0/16"}, {"subnet": "10.1.2.0/24"}]]}),
            7,
            "subnets 10.1.0.1-10.1.255.254 and 10.1.2.1-10.1.2.254 overlap",
        ),
        (
            json!({"ranges": [[{"subnet": "10.1.0.0/16"}], [{"subnet": "10.1.2.0/24"}]]}),
            7,
            "range set 0 overlaps with 1",
        ),
        (json!({"ranges": []}), 7, "no IP ranges specified"),
        (json!({}), 7, "no IP ranges specified"),
        (json!({"ranges": [[]]}), 7, "empty range set"),
        (
            json!({"ranges": [[{"subnet": "not-a-cidr"}]]}),
            7,
            "invalid ipam config",
        ),
        (
            json!({"ranges": [[{"subnet": "10.1.2.0/24"}]], "routes": "everywhere"}),
            7,
            "invalid ipam config",
        ),
    ];
    for (ipam, code, msg) in cases {
        let net = Net::new(ipam.clone());
        let err = net.run(net.call("ADD", "a")).error(code);
        assert!(err["msg"].as_str().unwrap().contains(msg), "{ipam}: {err}");
        assert!(!net.store().exists(), "{ipam}: the store was created");
    }
    // No ipam key at all.
    let net = Net::v4();
    let conf = json!({"cniVersion": "1.0.0", "name": "hlnet", "type": "bridge"});
    let err = net.run(net.call("ADD", "a").config(&conf)).error(7);
    assert_eq!(err["msg"], "IPAM config missing 'ipam' key");
    // Two addresses per family cannot be printed in 0.2.0.
    let mut net =
        Net::new(json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.3.0/24"}]]}));
    net.version = "0.2.0";
    let err = net.run(net.call("ADD", "a")).error(1);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("does not support more than 1 address per family")
    );
    assert!(!net.store().exists());
}

#[test]
fn requested_addresses_from_every_source() {
    let net =
        Net::new(json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]]}));
    // CNI_ARGS IP= (with a prefix, which is dropped)
    let r = net
        .run(
            net.call("ADD", "a")
                .cni_args("IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.1.2.50/24"),
        )
        .success();
    assert_eq!(addresses(&r), ["10.1.2.50/24", "2001:db8:1::2/64"]);
    // args.cni.ips
    let mut conf = net.conf();
    conf["args"] = json!({"cni": {"ips": ["10.1.2.60", "2001:db8:1::60"]}});
    let r = net.run(net.call("ADD", "b").config(&conf)).success();
    assert_eq!(addresses(&r), ["10.1.2.60/24", "2001:db8:1::60/64"]);
    // runtimeConfig.ips; the other family goes on round-robin from the
    // last address taken, requested or not (as the reference does).
    let mut conf = net.conf();
    conf["runtimeConfig"] = json!({"ips": ["2001:db8:1::70/64"]});
    let r = net.run(net.call("ADD", "c").config(&conf)).success();
    assert_eq!(addresses(&r), ["10.1.2.61/24", "2001:db8:1::70/64"]);
    assert_eq!(net.reservations().len(), 6);
}

#[test]
fn a_requested_address_that_cannot_be_given_fails_and_reserves_nothing() {
    let net =
        Net::new(json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]]}));
    net.run(net.call("ADD", "owner").cni_args("IP=10.1.2.50"))
        .success();
    let before = net.reservations();
    let cases = [
        (
            "IP=10.1.2.50",
            "requested IP address 10.1.2.50 is not available in range set 10.1.2.1-10.1.2.254",
        ),
        ("IP=10.1.2.1", "requested ip 10.1.2.1 is subnet's gateway"),
        (
            "IP=192.168.7.7",
            "failed to allocate all requested IPs: 192.168.7.7",
        ),
        (
            "IP=10.1.2.20,10.1.2.21",
            "failed to allocate all requested IPs: 10.1.2.21",
        ),
    ];
    for (args, msg) in cases {
        let err = net.run(net.call("ADD", "x").cni_args(args)).error(112);
        assert!(err["msg"].as_str().unwrap().contains(msg), "{args}: {err}");
        assert_eq!(
            net.reservations(),
            before,
            "{args}: something stayed reserved"
        );
    }
    let err = net
        .run(net.call("ADD", "x").cni_args("IP=not-an-ip"))
        .error(4);
    assert!(err["msg"].as_str().unwrap().contains("not-an-ip"));
}

#[test]
fn cni_args_unknown_keys_need_ignore_unknown() {
    let net = Net::v4();
    let err = net
        .run(net.call("ADD", "a").cni_args("K8S_POD_NAME=x"))
        .error(4);
    assert!(err["msg"].as_str().unwrap().contains("K8S_POD_NAME"));
    assert!(net.reservations().is_empty());
    net.run(
        net.call("ADD", "a")
            .cni_args("IgnoreUnknown=true;K8S_POD_NAME=x"),
    )
    .success();
}

#[test]
fn round_robin_wraps_and_exhaustion_names_the_range() {
    let net = Net::new(json!({"ranges": [[
        {"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.10", "rangeEnd": "10.1.2.11"},
        {"subnet": "10.1.3.0/24", "rangeStart": "10.1.3.10", "rangeEnd": "10.1.3.10"}
    ]]}));
    assert_eq!(addresses(&net.add("a")), ["10.1.2.10/24"]);
    assert_eq!(addresses(&net.add("b")), ["10.1.2.11/24"]);
    net.del("a");
    // Round robin: the freed address is not reused before the others.
    assert_eq!(addresses(&net.add("c")), ["10.1.3.10/24"]);
    assert_eq!(addresses(&net.add("d")), ["10.1.2.10/24"]);
    let err = net.run(net.call("ADD", "e")).error(110);
    assert_eq!(
        err["msg"],
        "failed to allocate for range 0: no IP addresses available in range set: 10.1.2.10-10.1.2.11,10.1.3.10-10.1.3.10"
    );
    net.del("b");
    assert_eq!(addresses(&net.add("e")), ["10.1.2.11/24"]);
}

#[test]
fn never_hands_out_gateway_network_or_broadcast() {
    let net = Net::new(
        json!({"ranges": [[{"subnet": "10.1.2.0/30", "rangeStart": "10.1.2.0", "rangeEnd": "10.1.2.3"}]]}),
    );
    assert_eq!(addresses(&net.add("a")), ["10.1.2.2/30"]);
    net.run(net.call("ADD", "b")).error(110);
}

#[test]
fn a_second_add_for_the_same_attachment_is_refused() {
    let net = Net::v4();
    net.add("a");
    let err = net.run(net.call("ADD", "a")).error(111);
    assert_eq!(
        err["msg"],
        "failed to allocate for range 0: 10.1.2.2 has been allocated to a, duplicate allocation is not allowed"
    );
    assert_eq!(net.reservations().len(), 1);
}

#[test]
fn del_is_idempotent_and_handles_old_files() {
    let net = Net::v4();
    // No store at all: success, and none is created.
    net.del("nobody");
    assert!(!net.store().exists());
    net.add("a");
    net.del("unknown");
    net.del("a");
    net.del("a");
    assert!(net.reservations().is_empty());
    // A container-ID-only file from an old version, with stray whitespace.
    net.reserve_by_hand("10.1.2.77", "  old-ctr \n");
    net.del("old-ctr");
    assert!(net.reservations().is_empty());
    // An invalid config is still an error on DEL.
    let bad = Net::new(json!({"ranges": [[{"subnet": "10.1.2.5/24"}]]}));
    bad.run(bad.call("DEL", "a")).error(7);
}

#[test]
fn check_finds_the_reservation_or_says_what_is_missing() {
    let net = Net::v4();
    let r = net.add("a");
    net.run(net.call("CHECK", "a")).silent_success();
    let err = net.run(net.call("CHECK", "b")).error(113);
    assert_eq!(
        err["msg"],
        "host-local: Failed to find address added by container b"
    );
    // prevResult naming an address the attachment does not hold.
    let mut conf = net.conf();
    conf["prevResult"] = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.1.2.9/24"}]});
    let err = net.run(net.call("CHECK", "a").config(&conf)).error(113);
    assert!(err["msg"].as_str().unwrap().contains("10.1.2.9"), "{err}");
    conf["prevResult"] = r;
    net.run(net.call("CHECK", "a").config(&conf))
        .silent_success();
    // Removed behind our back: CHECK notices.
    std::fs::remove_file(net.store().join("10.1.2.2")).unwrap();
    net.run(net.call("CHECK", "a")).error(113);
    // No store at all.
    let empty = Net::v4();
    empty.run(empty.call("CHECK", "a")).error(113);
}

#[test]
fn gc_releases_what_is_not_listed_and_nothing_without_a_list() {
    let net =
        Net::new(json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]]}));
    for cid in ["keep", "drop"] {
        net.add(cid);
    }
    net.run(net.call("ADD", "keep").ifname("net1")).success();
    net.reserve_by_hand("10.1.2.100", "legacy-keep");
    net.reserve_by_hand("10.1.2.101", "legacy-drop");
    net.reserve_by_hand("10.1.2.102", ""); // a reservation cut short by a crash
    let total = net.reservations().len();
    // No list: nothing is released.
    net.run(net.call("GC", "").without("CNI_CONTAINERID"))
        .silent_success();
    assert_eq!(net.reservations().len(), total);
    let mut conf = net.conf();
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}, {"containerID": "legacy-keep", "ifname": "eth0"}]);
    net.run(
        Invocation::new("GC")
            .without("CNI_CONTAINERID")
            .without("CNI_IFNAME")
            .config(&conf),
    )
    .silent_success();
    let left: Vec<(String, String)> = net.reservations();
    assert_eq!(
        left,
        [
            ("10.1.2.100".to_string(), "legacy-keep".to_string()),
            ("10.1.2.2".to_string(), "keep\r\neth0".to_string()),
            ("2001:db8:1::2".to_string(), "keep\r\neth0".to_string()),
        ]
    );
    // The older key works too, and the index follows: "keep" can re-add net1.
    let mut conf = net.conf();
    conf["cni.dev/attachments"] = json!([]);
    net.run(Invocation::new("GC").config(&conf))
        .silent_success();
    assert!(net.reservations().is_empty());
    net.run(net.call("ADD", "keep").ifname("net1")).success();
}

#[test]
fn status_reports_an_unusable_data_directory() {
    let net = Net::v4();
    net.run(net.call("STATUS", "")).silent_success();
    let blocker = TempDir::new("status");
    let file = blocker.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let broken =
        Net::new(json!({"ranges": [[{"subnet": "10.1.2.0/24"}]], "dataDir": file.join("sub")}));
    let mut conf = broken.conf();
    conf["ipam"]["dataDir"] = json!(file.join("sub"));
    let err = broken
        .run(broken.call("STATUS", "").config(&conf))
        .error(50);
    assert!(err["msg"].as_str().unwrap().contains("a-file"), "{err}");
}

#[test]
fn crash_leftovers_do_not_break_the_store() {
    let net = Net::v4();
    net.add("a");
    // What a process killed mid-reservation leaves: our temporary file.
    std::fs::write(net.store().join(".reserving"), "dead\r\neth0").unwrap();
    assert_eq!(addresses(&net.add("b")), ["10.1.2.3/24"]);
    assert!(!net.store().join(".reserving").exists());
    net.del("a");
    net.del("b");
    assert!(net.reservations().is_empty());
}

#[test]
fn a_damaged_index_is_rebuilt_from_the_store() {
    let net = Net::v4();
    net.make_large();
    net.add("a");
    net.add("b");
    let index = net.data.path().join(".cni-rs-index/hlnet");
    let buckets: Vec<_> = std::fs::read_dir(&index)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with('b'))
        .collect();
    assert!(
        !buckets.is_empty(),
        "a large store is looked up by its index"
    );
    for b in &buckets {
        // Torn writes: a line cut short, the checksum no longer matching.
        let text = std::fs::read_to_string(b).unwrap();
        std::fs::write(b, &text[..text.len() / 2]).unwrap();
    }
    net.run(net.call("ADD", "a")).error(111);
    net.run(net.call("CHECK", "b")).silent_success();
    net.del("a");
    net.del("b");
    assert!(net.own_reservations().is_empty());
}

/// Changes made behind our back, small store (read whole) or large (index).
fn foreign_changes_are_seen(large: bool) {
    let net = Net::v4();
    if large {
        net.make_large();
    }
    net.add("a");
    // Someone else reserves for "b" and frees "a": we must see both.
    net.reserve_by_hand("10.1.2.40", "b\r\neth0");
    std::fs::remove_file(net.store().join("10.1.2.2")).unwrap();
    net.run(net.call("ADD", "b")).error(111);
    net.run(net.call("CHECK", "a")).error(113);
    net.del("b");
    assert!(net.own_reservations().is_empty());
    // The same address re-taken by another attachment is not "a"'s any more.
    net.add("a");
    std::fs::write(net.store().join("10.1.2.3"), "z\r\neth0").unwrap();
    net.run(net.call("CHECK", "a")).error(113);
    net.del("a");
    assert_eq!(
        net.own_reservations(),
        [("10.1.2.3".to_string(), "z\r\neth0".to_string())]
    );
}

#[test]
fn a_small_store_is_read_as_it_is() {
    foreign_changes_are_seen(false);
}

#[test]
fn the_index_is_only_a_hint_when_the_store_changes_behind_our_back() {
    foreign_changes_are_seen(true);
}

#[test]
fn a_large_store_trusts_its_index_while_nobody_else_writes() {
    let net = Net::v4();
    net.make_large();
    net.add("a");
    let stamp = net.data.path().join(".cni-rs-index/hlnet/stamp");
    let sealed = std::fs::read_to_string(&stamp).unwrap();
    // Trusted, not rebuilt: a rebuild would seal and stamp afresh.
    net.run(net.call("CHECK", "a")).silent_success();
    net.del("nobody");
    assert_eq!(std::fs::read_to_string(&stamp).unwrap(), sealed);
    // Any change by someone else withdraws the trust.
    net.reserve_by_hand("10.1.2.99", "b\r\neth0");
    net.run(net.call("ADD", "b")).error(111);
    assert_ne!(std::fs::read_to_string(&stamp).unwrap(), sealed);
}

/// Clears the append-only flag on drop, so the scratch dir can go even when
/// the test fails.
struct AppendOnly<'a>(&'a Path);

impl AppendOnly<'_> {
    /// `None` where the filesystem has no such flag (then nothing to test).
    fn set(dir: &Path) -> Option<AppendOnly<'_>> {
        let ok = std::process::Command::new("chattr")
            .arg("+a")
            .arg(dir)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then_some(AppendOnly(dir))
    }
}

impl Drop for AppendOnly<'_> {
    fn drop(&mut self) {
        let cleared = std::process::Command::new("chattr")
            .arg("-a")
            .arg(self.0)
            .status();
        if !cleared.is_ok_and(|s| s.success()) {
            eprintln!("warning: chattr -a {} failed", self.0.display());
        }
    }
}

#[test]
fn an_incomplete_rollback_is_reported_under_the_adds_error() {
    let net = Net::v4();
    net.add("first"); // creates the store
    // Files can be created in an append-only directory but not removed, so
    // the failed ADD below cannot take back its first address.
    let store = net.store();
    let Some(_guard) = AppendOnly::set(&store) else {
        eprintln!("skipped: chattr +a is not supported on {}", store.display());
        return;
    };
    let out = net.run(net.call("ADD", "x").cni_args("IP=10.1.2.50,192.168.7.7"));
    let err = out.error(112);
    assert_eq!(
        err["msg"], "failed to allocate all requested IPs: 192.168.7.7",
        "the ADD's own error stays what the runtime sees"
    );
    let details = err["details"].as_str().unwrap_or_default();
    assert!(
        details.contains("rollback incomplete: 10.1.2.50 is still reserved"),
        "{err}"
    );
    assert!(
        out.stderr.contains("10.1.2.50 is still reserved"),
        "{}",
        out.stderr
    );
}

#[test]
fn go_allocates_then_we_continue_and_release() {
    if !go_available() {
        return;
    }
    let mut net =
        Net::new(json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]]}));
    net.version = "1.0.0"; // the newest the Debian Go plugin speaks
    let go = net.run_go(net.call("ADD", "go-ctr")).success();
    assert_eq!(addresses(&go), ["10.1.2.2/24", "2001:db8:1::2/64"]);
    // We continue round-robin from where Go left off, see its attachment...
    assert_eq!(
        addresses(&net.add("rust-ctr")),
        ["10.1.2.3/24", "2001:db8:1::3/64"]
    );
    net.run(net.call("ADD", "go-ctr")).error(111);
    net.run(net.call("CHECK", "go-ctr")).silent_success();
    // ...and release it.
    net.del("go-ctr");
    net.del("rust-ctr");
    assert!(net.reservations().is_empty());
    assert_eq!(
        addresses(&net.run_go(net.call("ADD", "again")).success()),
        ["10.1.2.4/24", "2001:db8:1::4/64"]
    );
}

#[test]
fn we_allocate_then_go_continues_and_releases() {
    if !go_available() {
        return;
    }
    let mut net =
        Net::new(json!({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "2001:db8:1::/64"}]]}));
    net.version = "1.0.0";
    net.add("rust-ctr");
    let go = net.run_go(net.call("ADD", "go-ctr")).success();
    assert_eq!(addresses(&go), ["10.1.2.3/24", "2001:db8:1::3/64"]);
    let err = net.run_go(net.call("ADD", "rust-ctr")).json();
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("duplicate allocation"),
        "{err}"
    );
    net.run_go(net.call("CHECK", "rust-ctr")).silent_success();
    net.run_go(net.call("DEL", "rust-ctr")).silent_success();
    // Go released ours behind our back; we notice and carry on.
    net.run(net.call("CHECK", "rust-ctr")).error(113);
    assert_eq!(
        addresses(&net.add("next")),
        ["10.1.2.4/24", "2001:db8:1::4/64"]
    );
    net.run_go(net.call("DEL", "go-ctr")).silent_success();
    net.del("next");
    assert!(net.reservations().is_empty());
}

#[test]
fn two_hundred_processes_at_once_get_unique_addresses_and_release_them_all() {
    let net = Net::new(json!({"ranges": [[{"subnet": "10.20.0.0/16"}]]}));
    let n = 200;
    let run_all = |command: &str| -> Vec<PluginOutput> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let inv = net.call(command, &format!("ctr-{i}"));
                    let net = &net;
                    s.spawn(move || net.run(inv))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let added: BTreeSet<String> = run_all("ADD")
        .iter()
        .map(|out| addresses(&out.success())[0].clone())
        .collect();
    assert_eq!(added.len(), n, "addresses were handed out twice");
    assert_eq!(net.reservations().len(), n);
    for out in run_all("DEL") {
        out.silent_success();
    }
    assert!(net.reservations().is_empty());
}
