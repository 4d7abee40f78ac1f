//! flanneld's etcd store against a real etcd (Debian's etcd-server), each
//! test with its own etcd on 127.0.0.1 inside a network namespace made for
//! it; the store code runs on a thread that entered that namespace (so do
//! the feed threads it starts), and nothing touches the root namespace.
//!
//! Covered: one etcd lease per key through renewals, re-creation after a
//! delete, and an agent restart; the feed's listing and events for writes
//! made with etcdctl; an etcd wiped and restarted empty; a compacted
//! watch; 5,000 leases listed and a write among them seen (how fast, and
//! the idle feed's CPU, are bench-flanneld-store's figures); all of it
//! for a user with a password (auth tokens on every call); and
//! an endpoint list with a dead member, refused or blackholed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::sync::mpsc;
use std::time::{Duration, Instant};

use conformance::netns::in_netns;
use conformance::{Etcd, wait_for};
use flanneld::flags::Options;
use flanneld::lease::{Lease, LeaseAttrs, SubnetKey};
use flanneld::store::etcd::EtcdStore;
use flanneld::store::probe::{channel, next, until};
use flanneld::store::{Records, Sink, Store, StoreError, StoreEvent, Written};

/// Where [`Etcd::alone`] serves.
const URL: &str = "http://127.0.0.1:2379";
const PREFIX: &str = "/coreos.com/network";
const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#;
/// What each feed event must take at most in these tests: a watch
/// reports within milliseconds, a re-list on a timer would not.
const PROMPT: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
/// Nothing listens there: a connect is refused at once.
const REFUSED: &str = "http://127.0.0.1:4001";
/// Sent to a MAC nobody owns: a connect gets no answer at all (no
/// refusal, no ICMP) and waits for its timeout.
const BLACKHOLED: &str = "http://10.99.0.2:2379";

fn opts(etcd: &Etcd) -> Options {
    Options {
        etcd_endpoints: vec![etcd.url().to_string()],
        ..Options::default()
    }
}

/// Makes [`BLACKHOLED`] unreachable the quiet way from etcd's namespace:
/// its frames leave through a veth whose other end drops them (not its MAC).
fn blackhole(etcd: &Etcd) {
    let ns = etcd.ns();
    ns.ip(&[
        "link", "add", "hole", "type", "veth", "peer", "name", "hole1",
    ]);
    ns.ip(&["addr", "add", "10.99.0.1/24", "dev", "hole"]);
    ns.ip(&["link", "set", "hole", "up"]);
    ns.ip(&["link", "set", "hole1", "up"]);
    ns.ip(&[
        "neigh",
        "replace",
        "10.99.0.2",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "hole",
        "nud",
        "permanent",
    ]);
}

fn attrs(ip: &str) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: Some(ip.parse().unwrap()),
        public_ipv6: None,
        backend_type: "host-gw".into(),
        backend_data: None,
        backend_v6_data: None,
    }
}

fn json(ip: &str) -> String {
    serde_json::to_string(&attrs(ip)).unwrap()
}

fn key(s: &str) -> SubnetKey {
    SubnetKey::parse(s).unwrap()
}

fn subnet(k: &str) -> String {
    format!("{PREFIX}/subnets/{k}")
}

/// The lease a write made; the test fails if it was not made.
#[track_caller]
fn made(w: Result<Written, StoreError>) -> Lease {
    match w.unwrap() {
        Written::Ours(l) => l,
        Written::NotOurs(now) => panic!("not written; etcd holds {now:?}"),
    }
}

fn listed(ev: StoreEvent) -> (Vec<flanneld::lease::Lease>, Option<String>) {
    match ev {
        StoreEvent::Listed { leases, config } => (leases, config),
        other => panic!("expected a listing, got {other:?}"),
    }
}

#[test]
fn one_etcd_lease_per_key_through_renewals_recreation_and_restart() {
    let etcd = Etcd::alone("store-leases");
    in_netns(&etcd.ns().path(), || {
        let k = key("10.244.7.0-24");
        let name = subnet("10.244.7.0-24");
        let ttl = Some(Duration::from_secs(60));
        let mut store = EtcdStore::connect(&opts(&etcd)).unwrap();
        let l = made(store.create(&k, &attrs("192.0.2.7"), ttl));
        let (first, rev) = etcd.lease_and_revision(&name);
        assert_ne!(first, 0, "a lease with a TTL has an etcd lease");
        assert_eq!(etcd.leases(), [first]);
        assert_eq!(l.rev, rev as u64);

        // (a) Renewals keep that lease alive; an unchanged value is not
        // written again (no new revision).
        let mut l = l;
        for _ in 0..3 {
            l = made(store.replace(&l, &attrs("192.0.2.7"), ttl));
        }
        assert_eq!(etcd.leases(), [first]);
        assert_eq!(
            etcd.lease_and_revision(&name),
            (first, rev),
            "a renewal rewrote the value"
        );
        // A changed value is written, on the same lease.
        let l = made(store.replace(&l, &attrs("192.0.2.70"), ttl));
        let (lease, rev2) = etcd.lease_and_revision(&name);
        assert_eq!(lease, first);
        assert!(rev2 > rev);
        assert_eq!(l.rev, rev2 as u64);
        assert_eq!(etcd.leases(), [first]);

        // (b) Deleted by someone, then created again: the earlier grant is
        // revoked, not left to expire.
        etcd.ctl(&["del", &name]);
        let l = made(store.create(&k, &attrs("192.0.2.70"), ttl));
        let (second, _) = etcd.lease_and_revision(&name);
        assert_ne!(second, first);
        assert_eq!(etcd.leases(), [second]);

        // (c) A restarted agent: a new store learns the key's lease from
        // etcd (at the revision it knows) and keeps that one alive.
        drop(store);
        // Let the lease run down a little (etcd counts whole seconds), to
        // see the renewal.
        let fresh = etcd.seconds_left(second);
        let mut before = fresh;
        assert!(
            wait_for(Duration::from_secs(5), || {
                before = etcd.seconds_left(second);
                before < fresh
            }),
            "lease {second:x} does not run down: {fresh} s left"
        );
        let mut store = EtcdStore::connect(&opts(&etcd)).unwrap();
        let l = made(store.replace(&l, &attrs("192.0.2.70"), ttl));
        assert_eq!(etcd.lease_and_revision(&name).0, second);
        assert_eq!(etcd.leases(), [second]);
        let after = etcd.seconds_left(second);
        assert!(
            after > before,
            "not renewed: {before} s left, then {after} s"
        );

        // Another TTL asked for: a new lease replaces the old one.
        let l = made(store.replace(&l, &attrs("192.0.2.70"), Some(Duration::from_secs(120))));
        let (third, _) = etcd.lease_and_revision(&name);
        assert_ne!(third, second);
        assert_eq!(etcd.leases(), [third]);
        assert!(etcd.seconds_left(third) > 100);

        // A reservation has no etcd lease; back to a lease, then deleted:
        // nothing is left behind.
        let l = made(store.replace(&l, &attrs("192.0.2.70"), None));
        assert_eq!(etcd.lease_and_revision(&name).0, 0);
        assert!(etcd.leases().is_empty());
        let l = made(store.replace(&l, &attrs("192.0.2.70"), ttl));
        assert_eq!(etcd.leases().len(), 1);
        assert!(store.delete(&l).unwrap());
        assert!(etcd.leases().is_empty());

        // A lost race leaves no grant behind either, and names the holder.
        etcd.ctl(&["put", &name, &json("192.0.2.99")]);
        match store.create(&k, &attrs("192.0.2.70"), ttl).unwrap() {
            Written::NotOurs(Some(now)) => assert_eq!(now.attrs, attrs("192.0.2.99")),
            w => panic!("{w:?}"),
        }
        assert!(etcd.leases().is_empty());
    });
}

/// Issue 18, defect 5: our lease lapsed and another node took the subnet
/// between our last read and our renewal: the renewal must lose, name the
/// holder, and leave its lease alone (before, it read, then put, keeping
/// alive whatever etcd lease the key had).
#[test]
fn a_renewal_loses_to_another_writer_and_never_overwrites_it() {
    let etcd = Etcd::alone("store-cas");
    in_netns(&etcd.ns().path(), || {
        let k = key("10.244.9.0-24");
        let name = subnet("10.244.9.0-24");
        let ttl = Some(Duration::from_secs(60));
        let mut store = EtcdStore::connect(&opts(&etcd)).unwrap();
        let ours = made(store.create(&k, &attrs("192.0.2.9"), ttl));
        let (our_grant, _) = etcd.lease_and_revision(&name);
        // The other node writes under a lease of its own.
        let grant = etcd.ctl(&["lease", "grant", "600"]);
        let theirs = grant.split_whitespace().nth(1).unwrap().to_string();
        etcd.ctl(&["put", "--lease", &theirs, &name, &json("192.0.2.99")]);
        let before = etcd.lease_and_revision(&name);
        for attempt in [attrs("192.0.2.9"), attrs("192.0.2.10")] {
            match store.replace(&ours, &attempt, ttl).unwrap() {
                Written::NotOurs(Some(now)) => assert_eq!(now.attrs, attrs("192.0.2.99")),
                w => panic!("our renewal went through: {w:?}"),
            }
        }
        assert!(!store.delete(&ours).unwrap(), "nor may we delete it");
        assert_eq!(
            etcd.lease_and_revision(&name),
            before,
            "their lease was rewritten"
        );
        let value = etcd.ctl(&["get", &name, "--print-value-only"]);
        assert_eq!(value.trim(), json("192.0.2.99"));
        let held = etcd.leases();
        assert!(
            !held.contains(&our_grant),
            "our unused grant lives on: {held:?}"
        );
        assert_eq!(held.len(), 1, "{held:?}");
    });
}

/// Creation races, reservations, and the watch seeing a delete.
#[test]
fn creation_races_reservations_and_the_watch() {
    let etcd = Etcd::alone("store-races");
    etcd.ctl(&["put", &format!("{PREFIX}/config"), CONFIG]);
    in_netns(&etcd.ns().path(), || {
        let mut store = EtcdStore::connect(&opts(&etcd)).unwrap();
        assert!(store.network_config().unwrap().contains("10.244.0.0/16"));
        let k = key("10.244.7.0-24");
        let ttl = Some(Duration::from_secs(60));
        made(store.create(&k, &attrs("192.0.2.1"), ttl));
        assert!(
            matches!(
                store.create(&k, &attrs("192.0.2.2"), ttl).unwrap(),
                Written::NotOurs(Some(_))
            ),
            "a lost race is not ours"
        );
        let reserved = key("10.244.9.0-24");
        made(store.create(&reserved, &attrs("192.0.2.3"), None));
        let leases = store.list().unwrap().leases;
        assert_eq!(leases.len(), 2);
        let lease = |k: &SubnetKey| leases.iter().find(|l| l.key == *k).unwrap().clone();
        assert_eq!(
            lease(&k).attrs.public_ip,
            Some("192.0.2.1".parse().unwrap())
        );
        assert!(lease(&k).expires.is_some());
        assert!(
            lease(&reserved).expires.is_none(),
            "no etcd lease: a reservation"
        );

        let (sink, rx) = channel();
        store.feed(sink, HOUR).unwrap();
        let (leases, config) = listed(next(&rx, Duration::from_secs(15)));
        assert_eq!(leases.len(), 2);
        assert!(config.unwrap().contains("10.244.0.0/16"));
        etcd.ctl(&["del", &subnet("10.244.9.0-24")]);
        assert_eq!(
            next(&rx, PROMPT),
            StoreEvent::Gone(reserved),
            "the watch missed a delete"
        );
    });
}

#[test]
fn feed_reports_etcdctl_writes_within_a_second() {
    let etcd = Etcd::alone("store-feed");
    etcd.ctl(&["put", &format!("{PREFIX}/config"), CONFIG]);
    etcd.ctl(&["put", &subnet("10.244.1.0-24"), &json("192.0.2.1")]);
    in_netns(&etcd.ns().path(), || {
        let mut store = EtcdStore::connect(&opts(&etcd)).unwrap();
        let (sink, rx) = channel();
        store.feed(sink, HOUR).unwrap();
        let (leases, config) = listed(next(&rx, Duration::from_secs(15)));
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].key, key("10.244.1.0-24"));
        assert!(leases[0].expires.is_none(), "no etcd lease: a reservation");
        assert_eq!(config.as_deref(), Some(CONFIG));

        let mut took = Vec::new();
        // A lease written with etcdctl, under an etcd lease.
        let grant = etcd.ctl(&["lease", "grant", "600"]);
        let id = grant.split_whitespace().nth(1).unwrap().to_string();
        let start = Instant::now();
        etcd.ctl(&[
            "put",
            "--lease",
            &id,
            &subnet("10.244.2.0-24"),
            &json("192.0.2.2"),
        ]);
        match next(&rx, PROMPT) {
            StoreEvent::Put(l) => {
                assert_eq!(l.key, key("10.244.2.0-24"));
                assert_eq!(l.attrs, attrs("192.0.2.2"));
                assert!(l.expires.is_some());
            }
            other => panic!("expected the put, got {other:?}"),
        }
        took.push(("etcdctl put", start.elapsed()));

        let start = Instant::now();
        etcd.ctl(&["del", &subnet("10.244.1.0-24")]);
        assert_eq!(next(&rx, PROMPT), StoreEvent::Gone(key("10.244.1.0-24")));
        took.push(("etcdctl del", start.elapsed()));

        // The lease's etcd lease revoked: its key goes, and that is a Gone.
        let start = Instant::now();
        etcd.ctl(&["lease", "revoke", &id]);
        assert_eq!(next(&rx, PROMPT), StoreEvent::Gone(key("10.244.2.0-24")));
        took.push(("etcdctl lease revoke", start.elapsed()));

        let start = Instant::now();
        let changed = CONFIG.replace("host-gw", "vxlan");
        etcd.ctl(&["put", &format!("{PREFIX}/config"), &changed]);
        assert_eq!(next(&rx, PROMPT), StoreEvent::Config(Some(changed)));
        took.push(("etcdctl put config", start.elapsed()));
        let start = Instant::now();
        etcd.ctl(&["del", &format!("{PREFIX}/config")]);
        assert_eq!(next(&rx, PROMPT), StoreEvent::Config(None));
        took.push(("etcdctl del config", start.elapsed()));

        // A record that cannot be read is skipped (and logged), and keys
        // outside the layout are nobody's business.
        etcd.ctl(&["put", &subnet("10.244.4.0-24"), "not json"]);
        etcd.ctl(&["put", &subnet("bogus"), &json("192.0.2.4")]);
        etcd.ctl(&["put", &format!("{PREFIX}/other"), "x"]);
        etcd.ctl(&["put", &subnet("10.244.5.0-24"), &json("192.0.2.5")]);
        match next(&rx, PROMPT) {
            StoreEvent::Put(l) => assert_eq!(l.key, key("10.244.5.0-24")),
            other => panic!("expected only the good record, got {other:?}"),
        }

        // Our own write, timed without a process start in between.
        let mut worst = Duration::ZERO;
        let mut ours = made(store.create(&key("10.244.6.0-24"), &attrs("192.0.2.99"), Some(HOUR)));
        assert!(matches!(next(&rx, PROMPT), StoreEvent::Put(_)));
        for i in 0..10 {
            let ip = format!("192.0.2.{}", 100 + i);
            let start = Instant::now();
            ours = made(store.replace(&ours, &attrs(&ip), Some(HOUR)));
            match next(&rx, PROMPT) {
                StoreEvent::Put(l) => assert_eq!(l.attrs, attrs(&ip)),
                other => panic!("expected our write, got {other:?}"),
            }
            worst = worst.max(start.elapsed());
        }
        took.push(("store.replace (worst of 10)", worst));
        for (what, t) in took {
            eprintln!("etcd feed: {what} -> event in {t:?}");
        }
    });
}

#[test]
fn feed_lists_an_etcd_that_came_back_empty_and_watches_it_afresh() {
    let mut etcd = Etcd::alone("store-wiped");
    etcd.ctl(&["put", &format!("{PREFIX}/config"), CONFIG]);
    etcd.ctl(&["put", &subnet("10.244.1.0-24"), &json("192.0.2.1")]);
    // Many revisions, so that the old watch position lies far beyond what
    // the empty etcd will count.
    for i in 0..20 {
        etcd.ctl(&["put", "/elsewhere", &i.to_string()]);
    }
    let old_revision = etcd.revision();
    let ns = etcd.ns().path();
    in_netns(&ns, || {
        let mut store = EtcdStore::connect(&opts(&etcd)).unwrap();
        let (sink, rx) = channel();
        store.feed(sink, HOUR).unwrap();
        let (leases, _) = listed(next(&rx, Duration::from_secs(15)));
        assert_eq!(leases.len(), 1);

        etcd.stop();
        let (_, before) = until(&rx, Duration::from_secs(15), |ev| {
            matches!(ev, StoreEvent::Trouble(_))
        });
        assert!(before.is_empty(), "events before the trouble: {before:?}");
        etcd.wipe();
        etcd.start_again();
        let (ev, before) = until(&rx, Duration::from_secs(30), |ev| {
            matches!(ev, StoreEvent::Listed { .. })
        });
        assert!(
            before.iter().all(|ev| matches!(ev, StoreEvent::Trouble(_))),
            "{before:?}"
        );
        let (leases, config) = listed(ev);
        assert!(leases.is_empty(), "the empty etcd listed {leases:?}");
        assert_eq!(config, None);
        assert!(etcd.revision() < old_revision);

        // Watched from the new etcd's revision: its writes are seen.
        etcd.ctl(&["put", &subnet("10.244.2.0-24"), &json("192.0.2.2")]);
        match next(&rx, PROMPT) {
            StoreEvent::Put(l) => assert_eq!(l.key, key("10.244.2.0-24")),
            other => panic!("expected the put on the new etcd, got {other:?}"),
        }
        etcd.ctl(&["put", &format!("{PREFIX}/config"), CONFIG]);
        assert_eq!(next(&rx, PROMPT), StoreEvent::Config(Some(CONFIG.into())));
    });
}

#[test]
fn feed_lists_again_when_its_watch_was_compacted() {
    let etcd = Etcd::alone("store-compact");
    in_netns(&etcd.ns().path(), || {
        let mut store = EtcdStore::connect(&opts(&etcd)).unwrap();
        let (tx, rx) = mpsc::channel();
        // The feed reports a listing before it starts watching from the
        // listing's revision: holding it in the sink lets the test compact
        // past that revision first, deterministically.
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let sink: Sink = Box::new(move |ev| {
            let hold = matches!(ev, StoreEvent::Listed { .. });
            let ok = tx.send(ev).is_ok();
            if hold {
                // Err (the test dropped go_tx): no longer held.
                let _ = go_rx.recv();
            }
            ok
        });
        store.feed(sink, HOUR).unwrap();
        let (leases, _) = listed(next(&rx, Duration::from_secs(15)));
        assert!(leases.is_empty());

        etcd.ctl(&["put", &subnet("10.244.1.0-24"), &json("192.0.2.1")]);
        etcd.ctl(&["put", &subnet("10.244.2.0-24"), &json("192.0.2.2")]);
        etcd.ctl(&["compact", &etcd.revision().to_string()]);
        go_tx.send(()).unwrap();
        // Not the two puts (etcd no longer has them as events): a listing.
        let (leases, _) = listed(next(&rx, Duration::from_secs(5)));
        let keys: Vec<SubnetKey> = leases.iter().map(|l| l.key).collect();
        assert_eq!(keys, [key("10.244.1.0-24"), key("10.244.2.0-24")]);
        drop(go_tx);

        // And the new watch works.
        etcd.ctl(&["del", &subnet("10.244.1.0-24")]);
        assert_eq!(next(&rx, PROMPT), StoreEvent::Gone(key("10.244.1.0-24")));
    });
}

/// The functional half of a scale check: all 5,000 leases are listed and
/// a write among them is seen. How fast, and the idle feed's CPU, are
/// figures of `bench-flanneld-store` (scripts/bench-flanneld-store.sh).
#[test]
fn feed_of_five_thousand_leases_lists_them_all_and_sees_a_write() {
    let etcd = Etcd::alone("store-scale");
    in_netns(&etcd.ns().path(), || {
        let mut store = EtcdStore::connect(&opts(&etcd)).unwrap();
        for i in 0..5000u32 {
            let k = key(&format!("10.{}.{}.0-24", 100 + i / 256, i % 256));
            let ip = format!("192.0.{}.{}", 2 + i / 250, 1 + i % 250);
            made(store.create(&k, &attrs(&ip), None));
        }

        let (sink, rx) = channel();
        store.feed(sink, HOUR).unwrap();
        // Generous: the bound only ends a test whose feed never lists.
        let (leases, _) = listed(next(&rx, Duration::from_secs(30)));
        assert_eq!(leases.len(), 5000);

        // A write among 5,000: its event.
        let mut l = leases
            .iter()
            .find(|l| l.key == key("10.100.0.0-24"))
            .unwrap()
            .clone();
        for i in 0..10 {
            let ip = format!("198.51.100.{}", 1 + i);
            l = made(store.replace(&l, &attrs(&ip), None));
            match next(&rx, PROMPT) {
                StoreEvent::Put(l) => assert_eq!(l.attrs, attrs(&ip)),
                other => panic!("expected the write, got {other:?}"),
            }
        }

        // Nothing changes: no event. Nothing must happen within the
        // feed's promptness: wait that long.
        let quiet = rx.recv_timeout(PROMPT);
        assert!(quiet.is_err(), "{quiet:?}");
    });
}

#[test]
fn a_user_with_a_password_renews_revokes_and_feeds() {
    let etcd = Etcd::alone("store-auth");
    etcd.ctl(&["user", "add", "root:rootpw", "--interactive=false"]);
    etcd.ctl(&["user", "add", "flannel:flpw", "--interactive=false"]);
    etcd.ctl(&["role", "add", "flannel"]);
    etcd.ctl(&[
        "role",
        "grant-permission",
        "flannel",
        "--prefix=true",
        "readwrite",
        &format!("{PREFIX}/"),
    ]);
    etcd.ctl(&["user", "grant-role", "flannel", "flannel"]);
    etcd.ctl(&["auth", "enable"]);
    let root = |args: &[&str]| {
        let mut a = vec!["--user", "root:rootpw"];
        a.extend_from_slice(args);
        etcd.ctl(&a)
    };
    let lease_count = || root(&["lease", "list"]).lines().skip(1).count();
    in_netns(&etcd.ns().path(), || {
        let opts = Options {
            etcd_username: Some("flannel".into()),
            etcd_password: Some("flpw".into()),
            ..opts(&etcd)
        };
        let mut store = EtcdStore::connect(&opts).unwrap();
        let (sink, rx) = channel();
        store.feed(sink, HOUR).unwrap();
        assert!(listed(next(&rx, Duration::from_secs(15))).0.is_empty());
        let k = key("10.244.8.0-24");
        let ttl = Some(Duration::from_secs(60));
        let l = made(store.create(&k, &attrs("192.0.2.8"), ttl));
        assert!(matches!(next(&rx, PROMPT), StoreEvent::Put(l) if l.key == k));
        let l = made(store.replace(&l, &attrs("192.0.2.8"), ttl));
        made(store.replace(&l, &attrs("192.0.2.80"), ttl));
        assert!(matches!(next(&rx, PROMPT), StoreEvent::Put(l) if l.attrs == attrs("192.0.2.80")));
        assert_eq!(lease_count(), 1);
        root(&["del", &subnet("10.244.8.0-24")]);
        assert_eq!(next(&rx, PROMPT), StoreEvent::Gone(k));
        let l = made(store.create(&k, &attrs("192.0.2.8"), ttl));
        assert_eq!(lease_count(), 1, "the earlier grant was not revoked");
        assert!(store.delete(&l).unwrap());
        assert_eq!(lease_count(), 0);
    });
}

#[test]
fn every_call_works_with_a_dead_endpoint_in_the_list() {
    let etcd = Etcd::alone("store-dead");
    blackhole(&etcd);
    etcd.ctl(&["put", &format!("{PREFIX}/config"), CONFIG]);
    let lists = [
        [REFUSED, URL],
        [URL, REFUSED],
        [BLACKHOLED, URL],
        [URL, BLACKHOLED],
    ];
    in_netns(&etcd.ns().path(), || {
        for (i, list) in lists.iter().enumerate() {
            let opts = Options {
                etcd_endpoints: list.iter().map(ToString::to_string).collect(),
                ..Options::default()
            };
            let began = Instant::now();
            let mut store = EtcdStore::connect(&opts).unwrap();
            // A write first, on a fresh client: the grant and the create
            // meet the dead endpoint before anything was sent.
            let own = key(&format!("10.244.{}.0-24", 10 + i));
            let other = key(&format!("10.244.{}.0-24", 20 + i));
            let ttl = Some(Duration::from_secs(60));
            let ok = |what: &str, r: Result<Written, StoreError>| match r {
                Ok(Written::Ours(l)) => l,
                Ok(w) => panic!("{list:?}: {what}: not written: {w:?}"),
                Err(e) => panic!("{list:?}: {what}: {e}"),
            };
            let mut mine = ok("create", store.create(&own, &attrs("192.0.2.1"), ttl));
            for round in 0..15 {
                let config = store.network_config();
                assert_eq!(config.unwrap_or_else(|e| panic!("{list:?}: {e}")), CONFIG);
                let leases = store.list().unwrap_or_else(|e| panic!("{list:?}: {e}"));
                assert!(!leases.leases.is_empty());
                let ip = format!("192.0.2.{}", 1 + round % 2);
                mine = ok("renew", store.replace(&mine, &attrs(&ip), ttl));
                let theirs = ok("create", store.create(&other, &attrs("192.0.2.9"), ttl));
                assert!(
                    store
                        .delete(&theirs)
                        .unwrap_or_else(|e| panic!("{list:?}: {e}"))
                );
            }
            // The endpoint that worked is remembered: one connect timeout
            // at most, not one per call. A bound on behaviour, not speed:
            // 76 calls each waiting out a blackholed connect take minutes.
            let took = began.elapsed();
            eprintln!("{list:?}: 76 store calls in {took:?}");
            assert!(took < Duration::from_secs(10), "{list:?}: {took:?}");

            // The feed (a client of its own) lists and watches.
            let (sink, rx) = channel();
            store.feed(sink, HOUR).unwrap();
            let (leases, config) = listed(next(&rx, Duration::from_secs(15)));
            assert!(leases.iter().any(|l| l.key == own), "{list:?}");
            assert_eq!(config.as_deref(), Some(CONFIG));
            etcd.ctl(&["put", &subnet("10.244.99.0-24"), &json("192.0.2.99")]);
            match next(&rx, PROMPT) {
                StoreEvent::Put(l) => assert_eq!(l.key, key("10.244.99.0-24")),
                other => panic!("{list:?}: expected the put, got {other:?}"),
            }
            etcd.ctl(&["del", &subnet("10.244.99.0-24")]);
            assert!(store.delete(&mine).unwrap());
        }

        // Every endpoint dead: the call fails in bounded time (its
        // deadlines, not a hang: the bound is the behaviour) and says why
        // for each.
        let opts = Options {
            etcd_endpoints: vec![REFUSED.into(), BLACKHOLED.into()],
            ..Options::default()
        };
        let mut store = EtcdStore::connect(&opts).unwrap();
        let began = Instant::now();
        let err = store.network_config().unwrap_err().to_string();
        let took = began.elapsed();
        eprintln!("all dead, after {took:?}: {err}");
        assert!(took < Duration::from_secs(30), "{took:?}");
        assert!(
            err.contains(&format!("{REFUSED}: ")) && err.contains(&format!("{BLACKHOLED}: ")),
            "{err}"
        );
        assert!(err.contains("refused"), "{err}");
    });
}
