//! Where the built plugin binaries are.

use std::path::PathBuf;

/// The directory holding the built binaries: `CNI_RS_BIN_DIR`, or the
/// cargo profile directory this test binary was built into. Found once:
/// a thread that later enters a mount namespace of its own (where
/// /proc/self/exe may read as a path outside a chroot) still gets it right.
pub fn bin_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("CNI_RS_BIN_DIR") {
            return PathBuf::from(dir);
        }
        // target/<profile>/deps/<test-binary>
        let exe = std::env::current_exe().expect("cannot find the test binary's path");
        exe.parent()
            .and_then(|deps| deps.parent())
            .map(PathBuf::from)
            .expect("the test binary is not inside a cargo target directory")
    })
    .clone()
}

/// The path of a built plugin binary; fails the test with a clear message
/// when it has not been built.
pub fn plugin_binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "plugin binary {} is missing: build the plugins first with \
         `cargo build --workspace --bins` (scripts/test.sh does), \
         or point CNI_RS_BIN_DIR at them",
        path.display()
    );
    path
}

/// Debian's Go host-local, for the interop tests.
pub const GO_HOST_LOCAL: &str = "/usr/lib/cni/host-local";

/// Whether the Go host-local is there; fails the test when it is not,
/// unless `CNI_RS_ALLOW_NO_GO` asks to skip the interop tests.
pub fn go_host_local_available() -> bool {
    let ok = std::path::Path::new(GO_HOST_LOCAL).is_file();
    assert!(
        ok || std::env::var_os("CNI_RS_ALLOW_NO_GO").is_some(),
        "the Go reference plugin {GO_HOST_LOCAL} is missing: apt-get install containernetworking-plugins \
         (scripts/test.sh does), or set CNI_RS_ALLOW_NO_GO=1 to skip the interop tests"
    );
    ok
}
