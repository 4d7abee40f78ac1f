//! The pod sandbox ("pause") image, made here because no registry can be
//! reached: Debian's static busybox as the only file, sleeping forever,
//! packed as an OCI image layout in a tar archive for `ctr images import`.
//! Made with tar, gzip and sha256sum so that its bytes are the same on
//! every run.

use std::path::Path;
use std::process::Command;

pub const PAUSE_IMAGE: &str = "localhost/cnirs/pause:1.0";
const BUSYBOX: &str = "/bin/busybox";

/// This machine's architecture as OCI names it.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("cannot run a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tar of `entries` in `dir` whose bytes depend on their content only:
/// sorted, root-owned, every mtime 0.
fn tar(dir: &Path, out: &Path, entries: &[&str]) {
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "-C",
        ])
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .args(entries));
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("cannot run sha256sum");
    assert!(out.status.success(), "sha256sum {} failed", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum printed nothing")
        .to_string()
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).expect("cannot stat a blob").len()
}

/// Moves `file` into the layout's blobs under its digest; answers the digest.
fn add_blob(layout: &Path, file: &Path) -> (String, u64) {
    let digest = sha256(file);
    let len = size(file);
    std::fs::rename(file, layout.join("blobs/sha256").join(&digest)).expect("cannot move a blob");
    (digest, len)
}

/// Writes the image archive to `out`, working in `work` (left behind for the
/// caller's scratch directory to remove).
pub fn build_pause_image(work: &Path, out: &Path) {
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: apt-get install busybox-static (scripts/test.sh does)"
    );
    let rootfs = work.join("rootfs");
    let layout = work.join("layout");
    std::fs::create_dir_all(rootfs.join("bin")).expect("cannot make the image rootfs");
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("cannot make the image layout");
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("cannot copy busybox");

    // The layer, gzipped without name or time.
    let layer_tar = work.join("layer.tar");
    tar(&rootfs, &layer_tar, &["bin"]);
    let diff_id = sha256(&layer_tar);
    run(Command::new("gzip").args(["-n", "-9"]).arg(&layer_tar));
    let (layer, layer_size) = add_blob(&layout, &work.join("layer.tar.gz"));

    let config = serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Entrypoint": ["/bin/busybox", "sleep", "2147483647"],
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]}
    });
    let config_file = work.join("config.json");
    std::fs::write(&config_file, config.to_string()).expect("cannot write the image config");
    let (config_digest, config_size) = add_blob(&layout, &config_file);

    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config_size
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{layer}"),
            "size": layer_size
        }]
    });
    let manifest_file = work.join("manifest.json");
    std::fs::write(&manifest_file, manifest.to_string()).expect("cannot write the manifest");
    let (manifest_digest, manifest_size) = add_blob(&layout, &manifest_file);

    let tag = PAUSE_IMAGE.rsplit(':').next().unwrap_or("latest");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest_size,
            "platform": {"architecture": oci_arch(), "os": "linux"},
            "annotations": {
                "io.containerd.image.name": PAUSE_IMAGE,
                "org.opencontainers.image.ref.name": tag
            }
        }]
    });
    std::fs::write(layout.join("index.json"), index.to_string()).expect("cannot write index.json");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("cannot write oci-layout");
    tar(&layout, out, &["oci-layout", "index.json", "blobs"]);
}
