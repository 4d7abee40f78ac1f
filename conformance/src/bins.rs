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
