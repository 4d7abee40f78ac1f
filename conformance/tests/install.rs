//! scripts/install.sh, run only into temporary staging roots (`--root`),
//! with the binaries this workspace built (`--bin-from`): the files and
//! modes it lays out, the conflist, unit and environment file it installs,
//! re-runs, conflicts, `--force`, `--uninstall` and its options.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use conformance::{TempDir, bins, plugin_binary};
use serde_json::{Value, json};

const PLUGINS: [&str; 3] = ["flannel", "bridge", "host-local"];
const MANIFEST: &str = "var/lib/cni-rs/install-manifest";

/// Every file an install lays out (paths under the root) and its mode.
const LAYOUT: [(&str, u32); 8] = [
    ("opt/cni/bin/flannel", 0o755),
    ("opt/cni/bin/bridge", 0o755),
    ("opt/cni/bin/host-local", 0o755),
    ("usr/local/bin/flanneld", 0o755),
    ("etc/cni/net.d/10-flannel.conflist", 0o644),
    ("etc/systemd/system/flanneld.service", 0o644),
    ("etc/default/flanneld", 0o600),
    (MANIFEST, 0o644),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The directory holding all four built binaries, for `--bin-from`.
fn built() -> PathBuf {
    for b in PLUGINS.iter().chain(&["flanneld"]) {
        plugin_binary(b);
    }
    bins::bin_dir()
}

#[derive(Debug)]
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `install.sh --root ROOT ARGS` (no `--bin-from` added).
fn run_raw(root: &Path, args: &[&str]) -> Run {
    let out = Command::new("bash")
        .arg(repo().join("scripts/install.sh"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("cannot run bash");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `install.sh --root ROOT --bin-from DIR ARGS`, which must succeed.
fn install_from(root: &Path, bin: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--bin-from", bin.to_str().unwrap()];
    all.extend_from_slice(args);
    let run = run_raw(root, &all);
    assert!(run.ok, "install.sh {all:?} failed: {run:#?}");
    run
}

fn install(root: &Path, args: &[&str]) -> Run {
    install_from(root, &built(), args)
}

fn uninstall(root: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--uninstall"];
    all.extend_from_slice(args);
    let run = run_raw(root, &all);
    assert!(run.ok, "install.sh {all:?} failed: {run:#?}");
    run
}

/// What is under `root`: path -> (is a directory, mode, inode, mtime in ns).
type Tree = BTreeMap<String, (bool, u32, u64, i64)>;

fn tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let md = std::fs::symlink_metadata(&path).unwrap();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let mtime = md.mtime() * 1_000_000_000 + md.mtime_nsec();
            out.insert(rel, (md.is_dir(), md.mode() & 0o7777, md.ino(), mtime));
            if md.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Tree::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

fn files(tree: &Tree) -> BTreeSet<String> {
    tree.iter()
        .filter(|(_, v)| !v.0)
        .map(|(k, _)| k.clone())
        .collect()
}

fn dirs(tree: &Tree) -> BTreeSet<String> {
    tree.iter()
        .filter(|(_, v)| v.0)
        .map(|(k, _)| k.clone())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn read(path: impl AsRef<Path>) -> Vec<u8> {
    let path = path.as_ref();
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// sha256 in hex as coreutils prints it, independent of the script's own.
fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The manifest's entries: (dirs, file path -> sha256).
fn manifest(root: &Path) -> (BTreeSet<String>, BTreeMap<String, String>) {
    let text = String::from_utf8(read(root.join(MANIFEST))).unwrap();
    let (mut dirs, mut files) = (BTreeSet::new(), BTreeMap::new());
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        match line.split_once(' ') {
            Some(("dir", path)) => {
                dirs.insert(path.to_string());
            }
            Some(("file", rest)) => {
                let (sum, path) = rest.split_once(' ').unwrap();
                files.insert(path.to_string(), sum.to_string());
            }
            _ => panic!("unexpected manifest line {line:?}"),
        }
    }
    (dirs, files)
}

/// The line the script prints for `file`: `  <word> <root>/<file>...`.
fn said(run: &Run, word: &str, root: &Path, file: &str) -> bool {
    let path = root.join(file);
    let path = path.to_str().unwrap();
    run.stdout.lines().any(|l| {
        let mut parts = l.split_whitespace();
        parts.next() == Some(word) && parts.next() == Some(path)
    })
}

/// The flags flanneld reads from `FLANNELD_*`, from the `FLAGS` list in its
/// source, as environment variable names.
fn flanneld_env_names() -> BTreeSet<String> {
    let src = String::from_utf8(read(repo().join("plugins/flanneld/src/flags.rs"))).unwrap();
    let start = src
        .find("const FLAGS: &[&str] = &[")
        .expect("flags.rs has no FLAGS list");
    let list = &src[start..];
    let list = &list[..list.find("];").unwrap()];
    let names: BTreeSet<String> = list
        .split('"')
        .skip(1)
        .step_by(2)
        .map(|f| format!("FLANNELD_{}", f.to_uppercase().replace('-', "_")))
        .collect();
    assert!(
        names.len() > 10,
        "could not read FLAGS from flags.rs: {names:?}"
    );
    names
}

/// `KEY=value` lines of a unit section, as (key, value) in order.
fn unit_section(unit: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == format!("[{section}]");
        } else if inside && !line.is_empty() && !line.starts_with('#') {
            let (k, v) = line.split_once('=').unwrap();
            out.push((k.to_string(), v.to_string()));
        }
    }
    out
}

fn unit_value(entries: &[(String, String)], key: &str) -> Vec<String> {
    entries
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

#[test]
fn installs_every_file_with_its_mode_and_reruns_unchanged() {
    let bin = built();
    let dir = TempDir::new("install-layout");
    let root = dir.path().join("root");
    let real_manifest_before = Path::new("/").join(MANIFEST).exists();
    let run = install(&root, &[]);

    let t = tree(&root);
    let expected: BTreeSet<String> = LAYOUT.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(files(&t), expected, "{run:#?}");
    for (path, mode) in LAYOUT {
        assert_eq!(t[path].1, mode, "mode of {path}");
        if path != MANIFEST {
            assert!(said(&run, "installed", &root, path), "{path}: {run:#?}");
        }
    }
    let expected_dirs = set(&[
        "etc",
        "etc/cni",
        "etc/cni/net.d",
        "etc/default",
        "etc/systemd",
        "etc/systemd/system",
        "opt",
        "opt/cni",
        "opt/cni/bin",
        "usr",
        "usr/local",
        "usr/local/bin",
        "var",
        "var/lib",
        "var/lib/cni-rs",
    ]);
    assert_eq!(dirs(&t), expected_dirs);
    for d in &expected_dirs {
        assert_eq!(t[d].1, 0o755, "mode of {d}/");
    }

    // The binaries as built, the rest as kept in dist/.
    for b in PLUGINS {
        assert!(
            read(root.join("opt/cni/bin").join(b)) == read(bin.join(b)),
            "{b}"
        );
    }
    assert!(read(root.join("usr/local/bin/flanneld")) == read(bin.join("flanneld")));
    for (installed, source) in [
        ("etc/cni/net.d/10-flannel.conflist", "10-flannel.conflist"),
        ("etc/systemd/system/flanneld.service", "flanneld.service"),
        ("etc/default/flanneld", "flanneld.env"),
    ] {
        assert_eq!(
            read(root.join(installed)),
            read(repo().join("dist").join(source))
        );
    }

    // kube-flannel.yml's cni-conf.json.
    let conflist: Value =
        serde_json::from_slice(&read(root.join("etc/cni/net.d/10-flannel.conflist")))
            .expect("the conflist is not JSON");
    assert_eq!(
        conflist,
        json!({
            "name": "cbr0",
            "cniVersion": "0.3.1",
            "plugins": [
                {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
    );
    // portmap is not ours: said, not fatal.
    assert!(
        run.stderr.contains("portmap is missing")
            && run.stderr.contains("containernetworking-plugins"),
        "{run:#?}"
    );

    // The manifest: every file with its sha256 and every directory made.
    let (mdirs, mfiles) = manifest(&root);
    let node_dirs: BTreeSet<String> = expected_dirs.iter().map(|d| format!("/{d}")).collect();
    assert_eq!(mdirs, node_dirs);
    let listed: BTreeSet<String> = mfiles.keys().cloned().collect();
    let node_files: BTreeSet<String> = LAYOUT[..7].iter().map(|(p, _)| format!("/{p}")).collect();
    assert_eq!(listed, node_files);
    for (path, sum) in &mfiles {
        assert_eq!(*sum, sha256(&root.join(&path[1..])), "sha256 of {path}");
    }

    // Again: nothing is rewritten, not even the manifest.
    let rerun = install(&root, &[]);
    for (path, _) in &LAYOUT[..7] {
        assert!(said(&rerun, "unchanged", &root, path), "{path}: {rerun:#?}");
    }
    assert_eq!(tree(&root), t, "a re-run changed files: {rerun:#?}");

    // Nothing outside the staging root.
    assert_eq!(Path::new("/").join(MANIFEST).exists(), real_manifest_before);
}

#[test]
fn unit_and_environment_file() {
    let dir = TempDir::new("install-unit");
    let root = dir.path().join("root");
    install(&root, &[]);

    let unit = String::from_utf8(read(root.join("etc/systemd/system/flanneld.service"))).unwrap();
    let u = unit_section(&unit, "Unit");
    assert!(
        unit_value(&u, "After")
            .iter()
            .any(|v| v.contains("network-online.target"))
    );
    assert!(
        unit_value(&u, "Wants")
            .iter()
            .any(|v| v.contains("network-online.target"))
    );
    let s = unit_section(&unit, "Service");
    let one = |key: &str| -> String {
        let v = unit_value(&s, key);
        assert_eq!(v.len(), 1, "[Service] {key}: {v:?}");
        v[0].clone()
    };
    assert_eq!(one("ExecStart"), "/usr/local/bin/flanneld $FLANNELD_ARGS");
    assert_eq!(one("EnvironmentFile"), "-/etc/default/flanneld");
    assert_eq!(one("Restart"), "always");
    assert_eq!(one("RuntimeDirectory"), "flannel");
    assert_eq!(one("RuntimeDirectoryPreserve"), "yes");
    // flanneld sends no READY=1: a notify unit would never come up.
    assert_ne!(one("Type"), "notify");
    assert!(one("CapabilityBoundingSet").contains("CAP_NET_ADMIN"));
    let i = unit_section(&unit, "Install");
    assert_eq!(unit_value(&i, "WantedBy"), ["multi-user.target"]);

    // systemd's own check, when it is here: the unit must load without a
    // single warning (ExecStart pointed at the staged binary).
    if Path::new("/usr/bin/systemd-analyze").is_file() {
        let vdir = dir.path().join("verify");
        std::fs::create_dir(&vdir).unwrap();
        let staged = root.join("usr/local/bin/flanneld");
        std::fs::write(
            vdir.join("flanneld.service"),
            unit.replace("/usr/local/bin/flanneld", staged.to_str().unwrap()),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(vdir.join("flanneld.service"))
            .current_dir(&vdir)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "systemd-analyze verify: {said}"
        );
    } else {
        eprintln!("systemd-analyze is not installed: the unit is not verified by systemd");
    }

    // The environment file: only comments (the defaults), and exactly the
    // FLANNELD_* names flanneld reads, plus FLANNELD_ARGS for the unit.
    let env = String::from_utf8(read(root.join("etc/default/flanneld"))).unwrap();
    let mut listed = BTreeSet::new();
    let mut values = Vec::new();
    for line in env.lines() {
        assert!(
            line.is_empty() || line.starts_with('#'),
            "not commented: {line:?}"
        );
        let Some((name, value)) = line
            .strip_prefix('#')
            .filter(|l| l.starts_with("FLANNELD_"))
            .and_then(|l| l.split_once('='))
        else {
            continue;
        };
        listed.insert(name.to_string());
        if name != "FLANNELD_ARGS" && !value.is_empty() {
            values.push((name.to_string(), value.to_string()));
        }
    }
    let mut supported = flanneld_env_names();
    supported.insert("FLANNELD_ARGS".into());
    assert_eq!(listed, supported, "the env file's names against flags.rs");

    // Each value shown parses: flanneld reads the environment before it
    // answers --version, and refuses a bad value.
    let out = Command::new(root.join("usr/local/bin/flanneld"))
        .arg("--version")
        .env_clear()
        .envs(values.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "flanneld refuses the env file's values {values:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = Command::new(root.join("usr/local/bin/flanneld"))
        .arg("--version")
        .env_clear()
        .env("FLANNELD_HEALTHZ_PORT", "not-a-port")
        .output()
        .unwrap();
    assert!(!bad.status.success(), "flanneld checks FLANNELD_* values");
}

#[test]
fn a_foreign_file_stops_the_install_before_anything_is_written() {
    let bin = built();
    let dir = TempDir::new("install-conflict");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc/cni/net.d")).unwrap();
    std::fs::create_dir_all(root.join("opt/cni/bin")).unwrap();
    std::fs::write(root.join("etc/cni/net.d/10-flannel.conflist"), "{}\n").unwrap();
    std::fs::write(root.join("opt/cni/bin/bridge"), "#!/bin/sh\n").unwrap();
    let before = tree(&root);

    let run = run_raw(&root, &["--bin-from", bin.to_str().unwrap()]);
    assert!(!run.ok, "{run:#?}");
    for f in ["etc/cni/net.d/10-flannel.conflist", "opt/cni/bin/bridge"] {
        let path = root.join(f);
        assert!(
            run.stderr.contains(path.to_str().unwrap()),
            "the error names {f}: {run:#?}"
        );
    }
    assert!(run.stderr.contains("--force"), "{run:#?}");
    assert!(run.stderr.contains("nothing was installed"), "{run:#?}");
    assert_eq!(
        tree(&root),
        before,
        "a refused install left something behind"
    );
    assert_eq!(
        read(root.join("etc/cni/net.d/10-flannel.conflist")),
        b"{}\n"
    );

    // --force overwrites them, and from then on they are ours.
    let run = install(&root, &["--force"]);
    assert!(
        said(&run, "replaced", &root, "opt/cni/bin/bridge"),
        "{run:#?}"
    );
    assert!(said(
        &run,
        "replaced",
        &root,
        "etc/cni/net.d/10-flannel.conflist"
    ));
    assert!(said(&run, "installed", &root, "opt/cni/bin/flannel"));
    assert!(read(root.join("opt/cni/bin/bridge")) == read(bin.join("bridge")));
    assert_eq!(
        read(root.join("etc/cni/net.d/10-flannel.conflist")),
        read(repo().join("dist/10-flannel.conflist"))
    );
    // Uninstall removes them, but not the directories it found there.
    uninstall(&root, &[]);
    let t = tree(&root);
    assert!(files(&t).is_empty(), "left behind: {t:?}");
    assert_eq!(
        dirs(&t),
        set(&[
            "etc",
            "etc/cni",
            "etc/cni/net.d",
            "opt",
            "opt/cni",
            "opt/cni/bin"
        ])
    );
}

#[test]
fn uninstall_removes_exactly_what_was_installed() {
    let dir = TempDir::new("install-uninstall");
    let root = dir.path().join("root");
    install(&root, &[]);

    // Someone else's files beside ours, and an operator's edit of ours.
    std::fs::write(root.join("opt/cni/bin/portmap"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        root.join("opt/cni/bin/portmap"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(root.join("usr/local/bin/other"), "other\n").unwrap();
    let env_file = root.join("etc/default/flanneld");
    let mut edited = read(&env_file);
    edited.extend_from_slice(b"FLANNELD_IP_MASQ=true\n");
    std::fs::write(&env_file, &edited).unwrap();

    // A re-install keeps the edit, and no longer misses portmap.
    let run = install(&root, &[]);
    assert!(
        said(&run, "kept", &root, "etc/default/flanneld"),
        "{run:#?}"
    );
    assert!(said(&run, "unchanged", &root, "opt/cni/bin/flannel"));
    assert_eq!(read(&env_file), edited);
    assert!(!run.stderr.contains("portmap is missing"), "{run:#?}");

    let run = uninstall(&root, &[]);
    assert!(
        run.stderr.contains(&format!("kept {}", env_file.display())),
        "the edited file is kept with a warning: {run:#?}"
    );
    let t = tree(&root);
    // The manifest stays, listing only the kept file.
    assert_eq!(
        files(&t),
        set(&[
            "etc/default/flanneld",
            "opt/cni/bin/portmap",
            "usr/local/bin/other",
            MANIFEST
        ])
    );
    let (mdirs, mfiles) = manifest(&root);
    assert_eq!(
        mfiles.into_keys().collect::<Vec<_>>(),
        ["/etc/default/flanneld"]
    );
    // Directories we made are gone where empty, kept where not (and those
    // still there stay listed).
    let left = [
        "etc",
        "etc/default",
        "opt",
        "opt/cni",
        "opt/cni/bin",
        "usr",
        "usr/local",
        "usr/local/bin",
        "var",
        "var/lib",
        "var/lib/cni-rs",
    ];
    assert_eq!(dirs(&t), set(&left));
    assert_eq!(
        mdirs,
        left.iter()
            .map(|d| format!("/{d}"))
            .collect::<BTreeSet<_>>()
    );
    assert_eq!(read(&env_file), edited);

    // Again: the edit is kept again, nothing else changes.
    let again = uninstall(&root, &[]);
    assert!(
        again
            .stderr
            .contains(&format!("kept {}", env_file.display())),
        "{again:#?}"
    );
    assert_eq!(tree(&root), t);

    // A root with no manifest: nothing to do, still a success.
    let empty = dir.path().join("empty");
    let none = uninstall(&empty, &[]);
    assert!(none.stdout.contains("nothing to uninstall"), "{none:#?}");
    assert!(!empty.exists());
}

#[test]
fn uninstall_force_also_removes_edited_files() {
    let dir = TempDir::new("install-uninstall-force");
    let root = dir.path().join("root");
    install(&root, &[]);
    std::fs::write(root.join("etc/default/flanneld"), "FLANNELD_IFACE=eth1\n").unwrap();
    std::fs::write(root.join("etc/cni/net.d/10-flannel.conflist"), "{}\n").unwrap();
    let run = uninstall(&root, &["--force"]);
    assert!(
        tree(&root).is_empty(),
        "left behind: {:?} {run:#?}",
        tree(&root)
    );
}

#[test]
fn force_installs_over_an_edited_conflist() {
    let dir = TempDir::new("install-force-edit");
    let root = dir.path().join("root");
    install(&root, &[]);
    let conflist = "etc/cni/net.d/10-flannel.conflist";
    let file = root.join(conflist);
    let edited = b"{\"name\": \"edited\"}\n";
    std::fs::write(&file, edited).unwrap();

    // Without --force the edit stays, and the way to replace it is named.
    let run = install(&root, &[]);
    assert!(said(&run, "kept", &root, conflist), "{run:#?}");
    assert!(run.stdout.contains("--force installs it"), "{run:#?}");
    assert_eq!(read(&file), edited);

    // --force does what it said: the dist version, recorded as ours.
    let run = install(&root, &["--force"]);
    assert!(said(&run, "replaced", &root, conflist), "{run:#?}");
    assert_eq!(read(&file), read(repo().join("dist/10-flannel.conflist")));
    assert_eq!(manifest(&root).1[&format!("/{conflist}")], sha256(&file));
    let run = install(&root, &[]);
    assert!(said(&run, "unchanged", &root, conflist), "{run:#?}");
}

#[test]
fn uninstall_force_after_an_uninstall_that_kept_an_edit() {
    let dir = TempDir::new("install-uninstall-kept");
    let root = dir.path().join("root");
    install(&root, &[]);
    let env_file = root.join("etc/default/flanneld");
    std::fs::write(&env_file, "FLANNELD_IFACE=eth1\n").unwrap();

    let run = uninstall(&root, &[]);
    assert!(
        run.stderr.contains(&format!("kept {}", env_file.display())),
        "{run:#?}"
    );
    assert!(
        run.stdout.contains("re-run with --uninstall --force"),
        "{run:#?}"
    );
    // The manifest still lists what was kept, so that advice can work.
    let listed: Vec<String> = manifest(&root).1.into_keys().collect();
    assert_eq!(listed, ["/etc/default/flanneld"]);

    let run = uninstall(&root, &["--force"]);
    assert!(
        !run.stdout.contains("nothing to uninstall"),
        "the kept file was forgotten: {run:#?}"
    );
    assert!(
        tree(&root).is_empty(),
        "left behind: {:?} {run:#?}",
        tree(&root)
    );
}

#[test]
fn our_own_files_are_updated_without_force() {
    let built = built();
    let dir = TempDir::new("install-update");
    let root = dir.path().join("root");
    install_from(&root, &built, &[]);

    // A newer build: flannel differs.
    let newer = dir.path().join("newer");
    std::fs::create_dir(&newer).unwrap();
    for b in PLUGINS.iter().chain(&["flanneld"]) {
        std::fs::copy(built.join(b), newer.join(b)).unwrap();
    }
    let mut flannel = read(newer.join("flannel"));
    flannel.extend_from_slice(b"\0newer");
    std::fs::write(newer.join("flannel"), &flannel).unwrap();

    let run = install_from(&root, &newer, &[]);
    assert!(
        said(&run, "updated", &root, "opt/cni/bin/flannel"),
        "{run:#?}"
    );
    assert!(said(&run, "unchanged", &root, "opt/cni/bin/bridge"));
    assert!(read(root.join("opt/cni/bin/flannel")) == flannel);
    assert_eq!(
        manifest(&root).1["/opt/cni/bin/flannel"],
        sha256(&root.join("opt/cni/bin/flannel"))
    );

    // A mode changed by hand on one of ours is set back.
    std::fs::set_permissions(
        root.join("opt/cni/bin/bridge"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let run = install_from(&root, &newer, &[]);
    assert!(said(&run, "mode", &root, "opt/cni/bin/bridge"), "{run:#?}");
    assert_eq!(tree(&root)["opt/cni/bin/bridge"].1, 0o755);

    uninstall(&root, &[]);
    assert!(tree(&root).is_empty(), "left behind: {:?}", tree(&root));
}

#[test]
fn cni_directories_can_be_chosen() {
    let dir = TempDir::new("install-dirs");
    let root = dir.path().join("root");
    let run = install(
        &root,
        &[
            "--cni-bin-dir",
            "/usr/lib/cni",
            "--cni-conf-dir=/etc/cni/conf.d/",
        ],
    );
    let t = tree(&root);
    assert_eq!(
        files(&t),
        set(&[
            "usr/lib/cni/flannel",
            "usr/lib/cni/bridge",
            "usr/lib/cni/host-local",
            "usr/local/bin/flanneld",
            "etc/cni/conf.d/10-flannel.conflist",
            "etc/systemd/system/flanneld.service",
            "etc/default/flanneld",
            MANIFEST,
        ]),
        "{run:#?}"
    );
    assert!(!root.join("opt").exists());
    assert!(!root.join("etc/cni/net.d").exists());
    assert!(
        run.stderr.contains("usr/lib/cni/portmap is missing"),
        "{run:#?}"
    );
    let listed: BTreeSet<String> = manifest(&root).1.into_keys().collect();
    assert!(listed.contains("/usr/lib/cni/flannel"));
    assert!(listed.contains("/etc/cni/conf.d/10-flannel.conflist"));

    uninstall(&root, &[]);
    assert!(tree(&root).is_empty(), "left behind: {:?}", tree(&root));
}

#[test]
fn options() {
    let dir = TempDir::new("install-options");
    let root = dir.path().join("root");

    let help = run_raw(&root, &["--help"]);
    assert!(help.ok, "{help:#?}");
    for opt in [
        "--root",
        "--cni-bin-dir",
        "--cni-conf-dir",
        "--bin-from",
        "--force",
        "--uninstall",
    ] {
        assert!(
            help.stdout.contains(opt),
            "--help mentions {opt}: {help:#?}"
        );
    }

    let bin = built();
    let bin = bin.to_str().unwrap();
    for (args, message) in [
        (vec!["--frobnicate"], "unknown option --frobnicate"),
        (vec!["--bin-from", bin, "extra"], "unknown option extra"),
        (vec!["--bin-from"], "--bin-from needs a value"),
        // An empty root must not mean the machine's own.
        (
            vec!["--root", "", "--bin-from", bin],
            "--root needs a directory",
        ),
        (
            vec!["--bin-from", bin, "--cni-bin-dir", "opt/cni/bin"],
            "absolute paths",
        ),
        (
            vec!["--bin-from", dir.path().to_str().unwrap()],
            "lacks flannel bridge host-local flanneld",
        ),
    ] {
        let run = run_raw(&root, &args);
        assert!(!run.ok, "{args:?} should fail: {run:#?}");
        assert!(
            run.stderr.contains(message),
            "{args:?}: expected {message:?}: {run:#?}"
        );
    }
    assert!(!root.exists(), "a refused run made the root");
}
