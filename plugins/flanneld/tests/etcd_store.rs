//! The etcd store against a real etcd (Debian's etcd-server) running in a
//! network namespace this test makes: lease creation races, reservations,
//! and the feed noticing a change.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flanneld::flags::Options;
use flanneld::lease::{LeaseAttrs, SubnetKey};
use flanneld::store::etcd::EtcdStore;
use flanneld::store::probe::{channel, next};
use flanneld::store::{Store, StoreEvent};
use netkit::NetNs;

const URL: &str = "http://127.0.0.1:2379";

/// A named namespace with etcd in it; both go on drop.
struct Etcd {
    ns: String,
    child: Child,
    dir: std::path::PathBuf,
}

impl Etcd {
    fn start() -> Etcd {
        assert!(
            std::path::Path::new("/usr/bin/etcd").is_file(),
            "apt-get install etcd-server etcd-client"
        );
        let ns = format!("cnirs-test-{}-etcdstore", std::process::id());
        assert!(
            Command::new("ip")
                .args(["netns", "add", &ns])
                .status()
                .unwrap()
                .success(),
            "needs root"
        );
        assert!(
            Command::new("ip")
                .args(["-n", &ns, "link", "set", "lo", "up"])
                .status()
                .unwrap()
                .success()
        );
        let dir = std::env::temp_dir().join(&ns);
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "etcd",
                "--data-dir",
                dir.to_str().unwrap(),
            ])
            .args(["--listen-client-urls", URL, "--advertise-client-urls", URL])
            .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Etcd { ns, child, dir }
    }

    fn ctl(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, "etcdctl", "--endpoints", URL])
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn netns(&self) -> NetNs {
        NetNs::open(format!("/run/netns/{}", self.ns)).unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn attrs(ip: &str) -> LeaseAttrs {
    serde_json::from_value(serde_json::json!({"PublicIP": ip, "BackendType": "host-gw"})).unwrap()
}

#[test]
fn leases_races_reservations_and_the_watch() {
    let etcd = Etcd::start();
    assert!(wait_for(|| etcd.ctl(&[
        "put",
        "/coreos.com/network/config",
        r#"{"Network":"10.244.0.0/16"}"#
    ])));
    let opts = Options {
        etcd_endpoints: vec![URL.to_string()],
        ..Options::default()
    };
    // gRPC connects lazily (and reconnects), so the client lives on a
    // thread inside the namespace for the whole test.
    etcd.netns()
        .run(|| exercise(&etcd, &opts))
        .expect("the test body panicked");
}

fn exercise(etcd: &Etcd, opts: &Options) {
    let mut store = EtcdStore::connect(opts).unwrap();
    assert!(store.network_config().unwrap().contains("10.244.0.0/16"));

    let key = SubnetKey::parse("10.244.7.0-24").unwrap();
    assert!(
        store
            .create(&key, &attrs("192.0.2.1"), Some(Duration::from_secs(60)))
            .unwrap()
    );
    assert!(
        !store
            .create(&key, &attrs("192.0.2.2"), Some(Duration::from_secs(60)))
            .unwrap(),
        "a lost race is false"
    );
    let reserved = SubnetKey::parse("10.244.9.0-24").unwrap();
    assert!(store.create(&reserved, &attrs("192.0.2.3"), None).unwrap());
    let leases = store.leases().unwrap();
    assert_eq!(leases.len(), 2);
    let lease = |k: &SubnetKey| leases.iter().find(|l| l.key == *k).unwrap().clone();
    assert_eq!(
        lease(&key).attrs.public_ip,
        Some("192.0.2.1".parse().unwrap())
    );
    assert!(lease(&key).expires.is_some());
    assert!(
        lease(&reserved).expires.is_none(),
        "no etcd lease: a reservation"
    );

    // The feed lists, then its watch sees a change made elsewhere (its
    // other cases, compaction included, are in conformance/tests/flanneld_store.rs).
    let (sink, rx) = channel();
    store.feed(sink, Duration::from_secs(3600)).unwrap();
    match next(&rx, Duration::from_secs(15)) {
        StoreEvent::Listed { leases, config } => {
            assert_eq!(leases.len(), 2);
            assert!(config.unwrap().contains("10.244.0.0/16"));
        }
        other => panic!("the feed began with {other:?}"),
    }
    assert!(etcd.ctl(&["del", "/coreos.com/network/subnets/10.244.9.0-24"]));
    assert_eq!(
        next(&rx, Duration::from_secs(15)),
        StoreEvent::Gone(reserved),
        "the watch missed a delete"
    );
}
