//! Our host-local and the Go reference plugin taking turns on one store
//! faster than the filesystem's clock ticks, so that their changes land in
//! the same timestamp: whoever wrote an attachment, DEL by either releases
//! exactly its addresses and ADD's duplicate check never passes wrongly.
//!
//! The tick collisions are made deterministic with a filesystem whose
//! timestamps tick once a second (ext4 with 128-byte inodes), mounted in a
//! mount namespace of the test's own thread: calls ~10 ms apart then share
//! a timestamp every time. Each store is run small (read whole by ours) and
//! large (looked up through ours' index), and also on the ordinary temp
//! filesystem.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conformance::bins::GO_HOST_LOCAL;
use conformance::util::addresses;
use conformance::{Invocation, PluginOutput, TempDir, TestHost, plugin_binary};
use serde_json::json;

const NET: &str = "hlnet";
/// Enough address files to put the store well past the size up to which
/// ours reads it whole, so that lookups go through the index.
const LARGE_FILL: usize = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Ours,
    Go,
}

/// One network's store in `data`, shared by both plugins.
struct Store<'a> {
    host: &'a TestHost,
    data: PathBuf,
    /// Reservations written by hand before the run (the large case).
    fill: BTreeMap<String, String>,
    large: bool,
}

impl<'a> Store<'a> {
    fn new(host: &'a TestHost, data: &Path, large: bool) -> Self {
        let dir = data.join(NET);
        std::fs::create_dir_all(&dir).unwrap();
        let fill: BTreeMap<String, String> = (0..if large { LARGE_FILL } else { 0 })
            .map(|i| {
                let ip = format!("10.1.{}.{}", 200 + i / 256, i % 256);
                (ip, format!("fill-{i}\r\neth0"))
            })
            .collect();
        for (ip, content) in &fill {
            std::fs::write(dir.join(ip), content).unwrap();
        }
        Store {
            host,
            data: data.to_path_buf(),
            fill,
            large,
        }
    }

    fn dir(&self) -> PathBuf {
        self.data.join(NET)
    }

    fn call(&self, who: Who, verb: &str, (cid, ifname): (&str, &str)) -> PluginOutput {
        // Dual stack, so that "exactly its addresses" means two files; 1.0.0
        // is the newest the Debian Go plugin speaks.
        let conf = json!({
            "cniVersion": "1.0.0", "name": NET, "type": "bridge",
            "ipam": {
                "type": "host-local", "dataDir": self.data,
                "ranges": [[{"subnet": "10.1.0.0/16"}], [{"subnet": "2001:db8:1::/64"}]]
            }
        });
        let bin = match who {
            Who::Ours => plugin_binary("host-local"),
            Who::Go => PathBuf::from(GO_HOST_LOCAL),
        };
        Invocation::new(verb)
            .container_id(cid)
            .ifname(ifname)
            .env("CNI_NETNS", "/var/run/netns/unused")
            .config(&conf)
            .run(&bin, &self.host.host)
    }

    /// The reservations on disk: address -> content.
    fn reservations(&self) -> BTreeMap<String, String> {
        std::fs::read_dir(self.dir())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| {
                let name = e.file_name().into_string().unwrap();
                name.parse::<std::net::IpAddr>().is_ok()
            })
            .map(|e| {
                let content = std::fs::read_to_string(e.path()).unwrap();
                (e.file_name().into_string().unwrap(), content)
            })
            .collect()
    }

    /// What the store must hold: the fill plus every attachment's files.
    fn expect(&self, model: &Model) -> BTreeMap<String, String> {
        let mut want = self.fill.clone();
        for ((cid, ifname), ips) in model {
            for ip in ips {
                want.insert(ip.clone(), format!("{cid}\r\n{ifname}"));
            }
        }
        want
    }

    /// Fails with what differs (the fill alone is thousands of entries).
    fn assert_holds(&self, model: &Model, what: &str) {
        let (have, want) = (self.reservations(), self.expect(model));
        let missing: Vec<_> = want
            .iter()
            .filter(|(k, v)| have.get(*k) != Some(v))
            .collect();
        let extra: Vec<_> = have
            .iter()
            .filter(|(k, v)| want.get(*k) != Some(v))
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{what}: the store lacks {missing:?} and holds unexpected {extra:?}"
        );
    }

    /// Ours' proof that its index is current, written after its last call.
    fn stamp(&self) -> PathBuf {
        self.data.join(".cni-rs-index").join(NET).join("stamp")
    }

    fn ctime(&self) -> (i64, i64) {
        let m = std::fs::metadata(self.dir()).unwrap();
        (m.ctime(), m.ctime_nsec())
    }
}

/// Attachment -> the addresses its ADD returned.
type Model = BTreeMap<(String, String), Vec<String>>;

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a fresh filesystem whose timestamps tick once a second,
/// mounted in a mount namespace of its own thread: it is unmounted and its
/// loop device freed when that thread ends, even if `f` panics or the test
/// is killed. The machine's mount table is never changed.
fn on_coarse_clock_fs<T: Send>(f: impl FnOnce(&Path) -> T + Send) -> T {
    let scratch = TempDir::new("coarse-fs");
    let image = scratch.path().join("fs.img");
    let mnt = scratch.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // Found before the mount namespace: inside it, under a chroot, the test
    // binary's own path reads as one outside the chroot.
    conformance::bins::bin_dir();
    let outcome = std::thread::scope(|s| {
        s.spawn(|| {
            // unshare(CLONE_NEWNS) applies to this thread (and what it
            // spawns) only; private so that nothing propagates back.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                .expect("cannot make a mount namespace");
            run("mount", &["--make-rprivate", "/"]);
            let (image, mnt) = (image.to_str().unwrap(), mnt.to_str().unwrap());
            run("truncate", &["-s", "96M", image]);
            // 128-byte inodes have no room for sub-second timestamps.
            run(
                "mkfs.ext4",
                &["-q", "-F", "-I", "128", "-N", "16384", image],
            );
            // Needs loop devices (modprobe loop) and e2fsprogs' mkfs.ext4.
            run("mount", &["-o", "loop", image, mnt]);
            f(Path::new(mnt))
        })
        .join()
    });
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Waits for the start of a wall-clock second, so that the next few calls
/// share one timestamp on the coarse filesystem.
fn fresh_second() {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = Duration::from_nanos(u64::from(since.subsec_nanos()));
    if into > Duration::from_millis(100) {
        std::thread::sleep(Duration::from_secs(1) - into + Duration::from_millis(5));
    }
}

/// Ours writes the store (and, in the versions that keep one, stamps its
/// index), then Go ADDs `x` within the same timestamp tick. Retries until
/// the directory's times show that the two really collided; returns `x`'s
/// addresses.
fn go_adds_within_our_tick(store: &Store, model: &mut Model, x: (&str, &str)) -> Vec<String> {
    let filler = format!("filler-{}", model.len());
    for _ in 0..5 {
        fresh_second();
        let ours = addresses(&store.call(Who::Ours, "ADD", (&filler, "eth0")).success());
        // In a large store ours now vouches for its index, even on this
        // clock: what follows must undo that, not a missing stamp.
        if store.large {
            assert!(store.stamp().is_file(), "no stamp after our ADD");
        }
        let before = store.ctime();
        let go = addresses(&store.call(Who::Go, "ADD", x).success());
        if store.ctime() == before {
            model.insert((filler.clone(), "eth0".into()), ours);
            model.insert((x.0.into(), x.1.into()), go.clone());
            store.assert_holds(model, "after Go's ADD");
            return go;
        }
        // A second boundary fell between the two: undo and try again.
        store.call(Who::Go, "DEL", x).silent_success();
        store
            .call(Who::Ours, "DEL", (&filler, "eth0"))
            .silent_success();
    }
    panic!("Go's ADD never landed in the same timestamp tick as ours");
}

/// The case the index once got wrong: Go ADDs X right after our call wrote
/// its stamp, within the same tick. Our DEL of X must release it...
fn our_del_releases_a_foreign_add_in_our_tick(host: &TestHost, data: &Path, large: bool) {
    let store = Store::new(host, data, large);
    let mut model = Model::new();
    let x = ("x-ctr", "eth0");
    go_adds_within_our_tick(&store, &mut model, x);
    store.call(Who::Ours, "DEL", x).silent_success();
    model.remove(&(x.0.into(), x.1.into()));
    store.assert_holds(&model, "after our DEL of Go's attachment");
    store.call(Who::Ours, "CHECK", x).error(113);
}

/// ...and our ADD of X must be refused as a duplicate.
fn our_add_refuses_a_foreign_add_in_our_tick(host: &TestHost, data: &Path, large: bool) {
    let store = Store::new(host, data, large);
    let mut model = Model::new();
    let x = ("x-ctr", "eth0");
    go_adds_within_our_tick(&store, &mut model, x);
    let err = store.call(Who::Ours, "ADD", x).error(111);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("duplicate allocation"),
        "{err}"
    );
    store.assert_holds(&model, "after our refused ADD");
    store.call(Who::Ours, "CHECK", x).silent_success();
}

/// xorshift64: the same sequence on every run.
struct Steps(u64);

impl Steps {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// ADD, DEL and CHECK by ours and Go, back to back, in a fixed pseudo-random
/// order over a few attachments; after every call the store must hold
/// exactly what the calls so far imply.
fn interleaved_calls_keep_the_store_exact(host: &TestHost, data: &Path, large: bool) {
    let store = Store::new(host, data, large);
    let attachments = [
        ("a", "eth0"),
        ("a", "net1"),
        ("b", "eth0"),
        ("c", "eth0"),
        ("d", "eth0"),
    ];
    let mut model = Model::new();
    let mut steps = Steps(0x9e37_79b9_7f4a_7c15);
    for step in 0..60 {
        let who = if steps.next(2) == 0 {
            Who::Ours
        } else {
            Who::Go
        };
        let att = attachments[steps.next(attachments.len())];
        let key = (att.0.to_string(), att.1.to_string());
        let held = model.contains_key(&key);
        let verb = ["ADD", "ADD", "DEL", "CHECK"][steps.next(4)];
        let what = format!("step {step}: {who:?} {verb} {att:?} (held: {held})");
        let out = store.call(who, verb, att);
        match (verb, held, who) {
            ("ADD", false, _) => {
                let ips = addresses(&out.success());
                model.insert(key, ips);
            }
            ("ADD", true, Who::Ours) => {
                out.error(111);
            }
            ("ADD", true, Who::Go) => {
                assert!(!out.status.success(), "{what}: Go allocated twice");
                let msg = out.json()["msg"].as_str().unwrap().to_string();
                assert!(msg.contains("duplicate allocation"), "{what}: {msg}");
            }
            ("DEL", ..) => {
                out.silent_success();
                model.remove(&key);
            }
            ("CHECK", true, _) => out.silent_success(),
            ("CHECK", false, Who::Ours) => {
                out.error(113);
            }
            ("CHECK", false, Who::Go) => {
                assert!(!out.status.success(), "{what}: Go's CHECK passed");
            }
            _ => unreachable!(),
        }
        store.assert_holds(&model, &format!("after {what}"));
    }
    for (cid, ifname) in model.keys().cloned().collect::<Vec<_>>() {
        store
            .call(Who::Ours, "DEL", (&cid, &ifname))
            .silent_success();
    }
    store.assert_holds(&Model::new(), "after the final DELs");
}

// The namespace the plugins run in is made here, outside the coarse
// filesystem's mount namespace, so that it is removed like any other.

#[test]
fn our_del_releases_what_go_added_in_our_tick_small_store() {
    if conformance::bins::go_host_local_available() {
        let host = TestHost::new(0);
        on_coarse_clock_fs(|data| our_del_releases_a_foreign_add_in_our_tick(&host, data, false));
    }
}

#[test]
fn our_del_releases_what_go_added_in_our_tick_large_store() {
    if conformance::bins::go_host_local_available() {
        let host = TestHost::new(0);
        on_coarse_clock_fs(|data| our_del_releases_a_foreign_add_in_our_tick(&host, data, true));
    }
}

#[test]
fn our_add_refuses_what_go_added_in_our_tick_small_store() {
    if conformance::bins::go_host_local_available() {
        let host = TestHost::new(0);
        on_coarse_clock_fs(|data| our_add_refuses_a_foreign_add_in_our_tick(&host, data, false));
    }
}

#[test]
fn our_add_refuses_what_go_added_in_our_tick_large_store() {
    if conformance::bins::go_host_local_available() {
        let host = TestHost::new(0);
        on_coarse_clock_fs(|data| our_add_refuses_a_foreign_add_in_our_tick(&host, data, true));
    }
}

#[test]
fn interleaved_with_go_on_a_coarse_clock_small_store() {
    if conformance::bins::go_host_local_available() {
        let host = TestHost::new(0);
        on_coarse_clock_fs(|data| interleaved_calls_keep_the_store_exact(&host, data, false));
    }
}

#[test]
fn interleaved_with_go_on_a_coarse_clock_large_store() {
    if conformance::bins::go_host_local_available() {
        let host = TestHost::new(0);
        on_coarse_clock_fs(|data| interleaved_calls_keep_the_store_exact(&host, data, true));
    }
}

#[test]
fn interleaved_with_go_on_the_temp_filesystem() {
    if !conformance::bins::go_host_local_available() {
        return;
    }
    let host = TestHost::new(0);
    for large in [false, true] {
        let data = TempDir::new("interleave");
        interleaved_calls_keep_the_store_exact(&host, data.path(), large);
        if large {
            // Ours took the index path, and stamped it.
            let store = Store::new(&host, data.path(), false);
            store
                .call(Who::Ours, "DEL", ("nobody", "eth0"))
                .silent_success();
            assert!(store.stamp().is_file(), "no stamp");
        }
    }
}
