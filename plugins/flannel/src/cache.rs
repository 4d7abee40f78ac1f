//! Saved delegate configs: `<dataDir>/<containerID>` holding the exact JSON
//! the delegate was given, the layout upstream uses, so that a pod added by
//! the Go plugin is deleted by ours after an upgrade (and back).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, container_id: &str) -> PathBuf {
        self.dir.join(container_id)
    }

    /// Writes the config whole (temporary file, fsync, rename), directory
    /// 0700 and file 0600.
    pub fn save(&self, container_id: &str, bytes: &[u8]) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let tmp = self.tmp_path(container_id);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, self.path(container_id)).inspect_err(|_| {
            // The rename's error is the one to report; a temp file left
            // behind is overwritten by the next save.
            fs::remove_file(&tmp).ok();
        })
    }

    /// The saved config, `None` when there is none.
    pub fn load(&self, container_id: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(container_id)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn tmp_path(&self, container_id: &str) -> PathBuf {
        self.dir.join(format!(".{container_id}.tmp"))
    }

    /// Removes the saved config, and the temporary file a save killed
    /// before its rename left behind.
    pub fn remove(&self, container_id: &str) -> io::Result<()> {
        for path in [self.path(container_id), self.tmp_path(container_id)] {
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The regular files in the cache directory (none when it is not
    /// there yet).
    fn files(&self) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str()
                && entry.file_type().is_ok_and(|t| t.is_file())
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Container IDs with a temporary file: saves that never finished.
    pub fn unfinished(&self) -> io::Result<Vec<String>> {
        Ok(self
            .files()?
            .iter()
            .filter_map(|n| n.strip_prefix('.')?.strip_suffix(".tmp"))
            .map(str::to_string)
            .collect())
    }

    /// Every saved container ID (our temporary files start with a dot).
    pub fn list(&self) -> io::Result<Vec<String>> {
        Ok(self
            .files()?
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .collect())
    }
}
