//! `flanneld install-cni`, run as an init container runs it: from an
//! "image" directory holding flanneld and the plugins side by side, into a
//! "host" directory, all under temporary directories. Atomic replacement,
//! idempotence, and nothing written when a plugin is missing or the
//! conflist is bad. Also: dist/kube-flannel.yml carries the conflist, the
//! network config, the image tag and the install-cni flags that fit.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use conformance::kube::repo;
use conformance::{TempDir, plugin_binary};

const PLUGINS: [&str; 3] = ["flannel", "bridge", "host-local"];
const CONFLIST: &str = "10-flannel.conflist";

/// A node and an image under one scratch directory.
struct Setup {
    dir: TempDir,
}

impl Setup {
    /// `image/opt/bin` holds flanneld and the plugins (as the image does);
    /// `cfg/cni-conf.json` kube-flannel's conflist.
    fn new(tag: &str) -> Setup {
        let dir = TempDir::new(tag);
        let s = Setup { dir };
        fs::create_dir_all(s.image()).unwrap();
        for b in PLUGINS.iter().chain(&["flanneld"]) {
            fs::copy(plugin_binary(b), s.image().join(b)).unwrap();
        }
        fs::create_dir_all(s.path("cfg")).unwrap();
        fs::copy(repo().join("dist").join(CONFLIST), s.conflist()).unwrap();
        s
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn image(&self) -> PathBuf {
        self.path("image/opt/bin")
    }
    fn conflist(&self) -> PathBuf {
        self.path("cfg/cni-conf.json")
    }
    fn bin_dir(&self) -> PathBuf {
        self.path("host/opt/cni/bin")
    }
    fn conf_dir(&self) -> PathBuf {
        self.path("host/etc/cni/net.d")
    }
    /// The host's files after an install, in install order.
    fn targets(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = PLUGINS.iter().map(|p| self.bin_dir().join(p)).collect();
        v.push(self.conf_dir().join(CONFLIST));
        v
    }
    /// `image/opt/bin/flanneld install-cni` with the host's dirs and `extra`.
    fn run(&self, extra: &[&str]) -> Run {
        let out = Command::new(self.image().join("flanneld"))
            .arg("install-cni")
            .arg("--cni-bin-dir")
            .arg(self.bin_dir())
            .arg("--cni-conf-dir")
            .arg(self.conf_dir())
            .arg(format!("--conflist={}", self.conflist().display()))
            .args(extra)
            .output()
            .expect("cannot run flanneld");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
    fn host(&self) -> Tree {
        tree(&self.path("host"))
    }
}

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(self.code, Some(0), "install-cni failed: {self:#?}");
        self
    }
    fn failed(self, code: i32) -> Run {
        assert_eq!(self.code, Some(code), "install-cni: {self:#?}");
        assert!(self.stdout.is_empty(), "reported installs: {self:#?}");
        self
    }
    /// The report's lines as (word, path).
    fn lines(&self) -> Vec<(String, PathBuf)> {
        self.stdout
            .lines()
            .map(|l| {
                let (word, rest) = l.split_once(' ').unwrap();
                let path = rest.split(" (").next().unwrap();
                (word.to_string(), PathBuf::from(path))
            })
            .collect()
    }
}

/// Every entry under `root`: path -> (inode, mode, mtime ns), files and dirs.
type Tree = BTreeMap<PathBuf, (u64, u32, i64)>;

fn tree(root: &Path) -> Tree {
    fn walk(dir: &Path, out: &mut Tree) {
        for e in fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let md = fs::symlink_metadata(&path).unwrap();
            let mtime = md.mtime() * 1_000_000_000 + md.mtime_nsec();
            out.insert(path.clone(), (md.ino(), md.mode() & 0o7777, mtime));
            if md.is_dir() {
                walk(&path, out);
            }
        }
    }
    let mut out = Tree::new();
    if root.exists() {
        walk(root, &mut out);
    }
    out
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn installs_then_leaves_identical_files_alone() {
    let s = Setup::new("install-cni-idem");
    let run = s.run(&[]).ok();
    let want: Vec<(String, PathBuf)> = s
        .targets()
        .into_iter()
        .map(|p| ("installed".to_string(), p))
        .collect();
    // Plugins first: the conflist tells the runtime it may exec them.
    assert_eq!(run.lines(), want, "{run:#?}");
    for p in PLUGINS {
        let dest = s.bin_dir().join(p);
        assert_eq!(
            fs::read(&dest).unwrap(),
            fs::read(plugin_binary(p)).unwrap()
        );
        assert_eq!(mode(&dest), 0o755, "{}", dest.display());
    }
    let conf = s.conf_dir().join(CONFLIST);
    assert_eq!(fs::read(&conf).unwrap(), fs::read(s.conflist()).unwrap());
    assert_eq!(mode(&conf), 0o644);
    // Exactly the four files: no temporary file left behind.
    let files: Vec<PathBuf> = s
        .host()
        .into_keys()
        .filter(|p| p.is_file())
        .collect::<Vec<_>>();
    let mut expected = s.targets();
    expected.sort();
    assert_eq!(files, expected);

    let before = s.host();
    let again = s.run(&[]).ok();
    assert!(
        again.lines().iter().all(|(w, _)| w == "unchanged") && again.lines().len() == 4,
        "{again:#?}"
    );
    assert!(again.stdout.contains("identical"), "{again:#?}");
    assert_eq!(s.host(), before, "an identical re-run touched the node");
}

#[test]
fn replaces_atomically_by_rename() {
    let s = Setup::new("install-cni-atomic");
    fs::create_dir_all(s.bin_dir()).unwrap();
    fs::create_dir_all(s.conf_dir()).unwrap();
    // An older bridge, held open as a runtime executing it would.
    let old_bridge = s.bin_dir().join("bridge");
    fs::write(&old_bridge, b"old bridge").unwrap();
    let mut held = File::open(&old_bridge).unwrap();
    let old_ino = fs::metadata(&old_bridge).unwrap().ino();
    // host-local a symlink to a Go plugin elsewhere: replaced, not written through.
    let go = s.path("go-host-local");
    fs::write(&go, b"go host-local").unwrap();
    symlink(&go, s.bin_dir().join("host-local")).unwrap();
    // An old conflist; flannel identical already.
    fs::write(s.conf_dir().join(CONFLIST), b"{\"old\": true}").unwrap();
    fs::copy(plugin_binary("flannel"), s.bin_dir().join("flannel")).unwrap();
    fs::set_permissions(
        s.bin_dir().join("flannel"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();

    let run = s.run(&[]).ok();
    let words: Vec<String> = run.lines().into_iter().map(|(w, _)| w).collect();
    assert_eq!(
        words,
        ["unchanged", "replaced", "replaced", "replaced"],
        "{run:#?}"
    );

    let md = fs::metadata(&old_bridge).unwrap();
    assert_ne!(md.ino(), old_ino, "bridge was rewritten in place");
    assert_eq!(
        fs::read(&old_bridge).unwrap(),
        fs::read(plugin_binary("bridge")).unwrap()
    );
    let mut seen = Vec::new();
    held.read_to_end(&mut seen).unwrap();
    assert_eq!(
        seen, b"old bridge",
        "the open old file changed under its reader"
    );
    let hl = s.bin_dir().join("host-local");
    assert!(fs::symlink_metadata(&hl).unwrap().is_file());
    assert_eq!(fs::read(&go).unwrap(), b"go host-local");
    assert_eq!(
        fs::read(s.conf_dir().join(CONFLIST)).unwrap(),
        fs::read(s.conflist()).unwrap()
    );
}

#[test]
fn a_bad_conflist_writes_nothing() {
    let s = Setup::new("install-cni-badconf");
    for (text, says) in [
        ("{\"name\": \"cbr0\", \"plugins\": [", "not JSON"),
        ("{\"name\": \"cbr0\", \"type\": \"flannel\"}", "\"plugins\""),
        ("{\"name\": \"cbr0\", \"plugins\": []}", "empty"),
    ] {
        fs::write(s.conflist(), text).unwrap();
        let run = s.run(&[]).failed(1);
        assert!(
            run.stderr.contains(&s.conflist().display().to_string())
                && run.stderr.contains(says)
                && run.stderr.contains("nothing was installed"),
            "{text}: {run:#?}"
        );
        assert!(s.host().is_empty(), "{text}: wrote {:?}", s.host());
    }
    // Over an installed node: every file as it was.
    fs::copy(repo().join("dist").join(CONFLIST), s.conflist()).unwrap();
    s.run(&[]).ok();
    let before = s.host();
    fs::write(s.conflist(), "not json").unwrap();
    s.run(&[]).failed(1);
    assert_eq!(s.host(), before);
    // A missing conflist is named too.
    fs::remove_file(s.conflist()).unwrap();
    let run = s.run(&[]).failed(1);
    assert!(run.stderr.contains("cni-conf.json"), "{run:#?}");
    assert_eq!(s.host(), before);
}

#[test]
fn a_missing_plugin_is_named_and_nothing_is_written() {
    let s = Setup::new("install-cni-missing");
    fs::remove_file(s.image().join("host-local")).unwrap();
    let run = s.run(&[]).failed(1);
    let path = s.image().join("host-local");
    assert!(
        run.stderr.contains("plugin host-local")
            && run.stderr.contains(&path.display().to_string())
            && run.stderr.contains("nothing was installed"),
        "{run:#?}"
    );
    assert!(s.host().is_empty(), "wrote {:?}", s.host());

    // --plugins-from and --plugins: another directory, another list.
    let other = s.path("other");
    fs::create_dir_all(&other).unwrap();
    fs::copy(plugin_binary("bridge"), other.join("bridge")).unwrap();
    let from = format!("--plugins-from={}", other.display());
    let run = s.run(&[&from, "--plugins=bridge,nope"]).failed(1);
    assert!(run.stderr.contains("plugin nope"), "{run:#?}");
    assert!(s.host().is_empty());
    let run = s.run(&[&from, "--plugins=bridge", "--conflist="]).ok();
    assert_eq!(
        run.lines(),
        [("installed".to_string(), s.bin_dir().join("bridge"))]
    );
}

#[test]
fn a_directory_in_the_way_and_bad_flags() {
    let s = Setup::new("install-cni-flags");
    fs::create_dir_all(s.conf_dir().join(CONFLIST)).unwrap();
    let before = s.host();
    let run = s.run(&[]).failed(1);
    assert!(run.stderr.contains("is a directory"), "{run:#?}");
    assert_eq!(s.host(), before, "plugins were written before the check");

    let run = s.run(&["--plugin=flannel"]).failed(2);
    assert!(run.stderr.contains("unknown flag --plugin"), "{run:#?}");
    let run = s.run(&["--conflist-name=../x.conflist"]).failed(2);
    assert!(run.stderr.contains("without a directory"), "{run:#?}");
    let help = s.run(&["--help"]).ok();
    assert!(help.stdout.contains("--cni-bin-dir"), "{help:#?}");
}

/// The lines of a `key: |` block scalar in `yaml`, de-indented.
fn block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let head = lines.next().unwrap_or_else(|| panic!("no {key} block"));
    let indent = head.len() - head.trim_start().len() + 2;
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// dist/kube-flannel.yml against what it carries and runs (the YAML is
/// read as text: no YAML crate for one test).
#[test]
fn the_manifest_fits_the_binaries() {
    let yaml = fs::read_to_string(repo().join("dist/kube-flannel.yml")).unwrap();
    let conf: serde_json::Value = serde_json::from_str(&block(&yaml, "cni-conf.json")).unwrap();
    let dist: serde_json::Value =
        serde_json::from_slice(&fs::read(repo().join("dist").join(CONFLIST)).unwrap()).unwrap();
    assert_eq!(
        conf, dist,
        "the ConfigMap's conflist differs from dist/{CONFLIST}"
    );
    let net = flanneld::netconfig::NetConfig::parse(&block(&yaml, "net-conf.json")).unwrap();
    assert_eq!(
        net.ipv4.map(|f| f.network.to_string()).as_deref(),
        Some("10.244.0.0/16")
    );

    // Every container runs the image scripts/image.sh tags for this version.
    let want = format!("image: cni-rs/flannel:{}", env!("CARGO_PKG_VERSION"));
    let images: Vec<&str> = yaml
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("image:"))
        .collect();
    assert_eq!(images, [want.as_str(); 3]);

    // The init containers' flags are install-cni's.
    let lines: Vec<&str> = yaml.lines().map(str::trim).collect();
    let mut runs = 0;
    for (i, _) in lines
        .iter()
        .enumerate()
        .filter(|(_, l)| **l == "- install-cni")
    {
        let args: Vec<String> = lines[i + 1..]
            .iter()
            .take_while(|l| l.starts_with("- --"))
            .map(|l| l.trim_start_matches("- ").to_string())
            .collect();
        let opts = flanneld::install_cni::Options::parse(&args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(!opts.help);
        runs += 1;
    }
    assert_eq!(runs, 2, "two init containers run install-cni");
    for flag in ["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"] {
        assert!(lines.contains(&format!("- {flag}").as_str()), "{flag}");
    }
}

/// A temporary file an install killed mid-copy left (older than ten
/// minutes) is removed by the next run; a fresh one may be another
/// install's and is left.
#[test]
fn an_interrupted_installs_leftovers_are_swept() {
    let s = Setup::new("install-cni-sweep");
    fs::create_dir_all(s.bin_dir()).unwrap();
    let old = s.bin_dir().join(".bridge.1-5f-0.install-cni-tmp");
    let young = s.bin_dir().join(".bridge.1-60-0.install-cni-tmp");
    for f in [&old, &young] {
        fs::write(f, b"half a plugin").unwrap();
    }
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    let run = s.run(&[]).ok();
    assert!(!old.exists(), "{run:#?}");
    assert!(young.exists());
    assert!(
        run.stderr.contains(&old.display().to_string()) && run.stderr.contains("interrupted"),
        "{run:#?}"
    );
}
