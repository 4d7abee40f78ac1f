//! A scratch directory removed on drop, also when the test panics.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        Self::under(&std::env::temp_dir(), tag)
    }

    /// In memory (/dev/shm) when the machine has it: for data written
    /// thousands of times, where waiting on a disk is not what is tested.
    pub fn in_memory(tag: &str) -> Self {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            Self::under(shm, tag)
        } else {
            Self::new(tag)
        }
    }

    fn under(base: &Path, tag: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("cnirs-test-{}-{n}-{tag}", std::process::id()));
        std::fs::create_dir_all(&path).expect("cannot create a scratch directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("warning: cannot remove {}: {e}", self.0.display());
        }
    }
}
