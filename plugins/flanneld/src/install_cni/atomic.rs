//! One file put in place so that a reader (kubelet execing a plugin,
//! containerd loading the conflist) sees the old file or the new one,
//! never a part: the bytes go to a temporary file in the target's own
//! directory, are synced and given their mode, then renamed over the
//! target, and the directory is synced so the rename survives a crash.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The temporary name's ending. It must not end in `.conf`, `.conflist` or
/// `.json`: libcni loads any such file in the conf dir, and would try one
/// that is still being written. The leading dot hides it from `ls`.
pub const TEMP_SUFFIX: &str = ".install-cni-tmp";

/// A temporary file of ours older than this was left by an install that
/// was killed (a node losing power mid-copy) and is removed; a younger one
/// may be another install's, still writing.
pub const STALE_TEMP: Duration = Duration::from_secs(600);

/// What happened to one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// There was nothing there.
    Installed,
    /// Another file (or a symlink) was there and was replaced.
    Replaced,
    /// The same bytes and mode were there already: not touched.
    Unchanged,
}

/// Whether `dest` can be written: absent, a file or a symlink (replaced,
/// never followed), in a directory or where one can be made.
pub fn check_target(dest: &Path) -> Result<(), String> {
    match fs::symlink_metadata(dest) {
        Ok(md) if md.is_dir() => Err("is a directory".into()),
        Ok(_) => Ok(()),
        // Absent, or a parent is not a directory: find the first parent
        // that exists and say what it is.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            let mut dir = dest.parent();
            while let Some(d) = dir {
                match fs::metadata(d) {
                    Ok(md) if md.is_dir() => return Ok(()),
                    Ok(_) => return Err(format!("{} is not a directory", d.display())),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                        ) =>
                    {
                        dir = d.parent()
                    }
                    Err(e) => return Err(format!("cannot look at {}: {e}", d.display())),
                }
            }
            Ok(())
        }
        Err(e) => Err(format!("cannot look at it: {e}")),
    }
}

/// Whether `dest` is a regular file (not a symlink) holding exactly
/// `content` with permission bits `mode`.
fn identical(dest: &Path, content: &[u8], mode: u32) -> io::Result<bool> {
    let md = match fs::symlink_metadata(dest) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !md.is_file() || md.permissions().mode() & 0o7777 != mode || md.len() != content.len() as u64
    {
        return Ok(false);
    }
    let mut have = Vec::with_capacity(content.len());
    File::open(dest)?.read_to_end(&mut have)?;
    Ok(have == content)
}

/// A temporary file next to `dest`, made with O_EXCL. The name carries the
/// time as well as the pid: in containers every init process is pid 1.
fn create_temp(dest: &Path) -> io::Result<(PathBuf, File)> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut last = io::Error::other("no attempt");
    for attempt in 0..16u32 {
        let tmp = dir.join(format!(
            ".{name}.{}-{nanos:x}-{attempt}{TEMP_SUFFIX}",
            std::process::id()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Removes `dest`'s temporary files that an interrupted install left
/// (older than [`STALE_TEMP`]); answers their paths. Best effort: what
/// cannot be read or removed is left for the next run.
pub fn sweep(dest: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
        return Vec::new();
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let now = SystemTime::now();
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        if !file.starts_with(&prefix) || !file.ends_with(TEMP_SUFFIX) {
            continue;
        }
        let stale = fs::symlink_metadata(e.path())
            .ok()
            .filter(|md| md.is_file())
            .and_then(|md| md.modified().ok())
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > STALE_TEMP);
        if stale && fs::remove_file(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

fn write_temp(file: &mut File, content: &[u8], mode: u32) -> io::Result<()> {
    file.write_all(content)?;
    // The mode before the rename: a plugin is never seen without its x bit.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.sync_all()
}

/// Puts `content` at `dest` with `mode`, unless it is there already. The
/// directory is made when missing. On failure `dest` is as it was and no
/// temporary file is left.
pub fn put(dest: &Path, content: &[u8], mode: u32) -> io::Result<Outcome> {
    if identical(dest, content, mode)? {
        return Ok(Outcome::Unchanged);
    }
    let existed = fs::symlink_metadata(dest).is_ok();
    let dir = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let (tmp, mut file) = create_temp(dest)?;
    let done = write_temp(&mut file, content, mode).and_then(|()| fs::rename(&tmp, dest));
    if let Err(e) = done {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()?;
    Ok(if existed {
        Outcome::Replaced
    } else {
        Outcome::Installed
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, symlink};

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "flanneld-install-cni-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn installs_then_leaves_alone_then_replaces() {
        let d = scratch("cycle");
        let f = d.join("bridge");
        assert_eq!(put(&f, b"one", 0o755).unwrap(), Outcome::Installed);
        let ino = fs::metadata(&f).unwrap().ino();
        assert_eq!(put(&f, b"one", 0o755).unwrap(), Outcome::Unchanged);
        assert_eq!(fs::metadata(&f).unwrap().ino(), ino, "rewritten");
        // Another mode alone is a change too.
        assert_eq!(put(&f, b"one", 0o644).unwrap(), Outcome::Replaced);
        assert_ne!(fs::metadata(&f).unwrap().ino(), ino, "not renamed over");
        // Compared with the file just before: a freed inode number may be
        // given again to a later file.
        let ino = fs::metadata(&f).unwrap().ino();
        assert_eq!(put(&f, b"two", 0o755).unwrap(), Outcome::Replaced);
        let md = fs::metadata(&f).unwrap();
        assert_ne!(md.ino(), ino, "not renamed over");
        assert_eq!(md.permissions().mode() & 0o7777, 0o755);
        assert_eq!(fs::read(&f).unwrap(), b"two");
        assert_eq!(entries(&d), ["bridge"], "a temporary file was left");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_symlink_is_replaced_not_written_through() {
        let d = scratch("symlink");
        fs::write(d.join("elsewhere"), b"go plugin").unwrap();
        symlink(d.join("elsewhere"), d.join("bridge")).unwrap();
        assert_eq!(
            put(&d.join("bridge"), b"go plugin", 0o755).unwrap(),
            Outcome::Replaced
        );
        assert!(fs::symlink_metadata(d.join("bridge")).unwrap().is_file());
        assert_eq!(fs::read(d.join("elsewhere")).unwrap(), b"go plugin");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn makes_the_directory_and_refuses_a_directory_target() {
        let d = scratch("dirs");
        let f = d.join("a/b/10-flannel.conflist");
        assert_eq!(check_target(&f), Ok(()));
        assert_eq!(put(&f, b"{}", 0o644).unwrap(), Outcome::Installed);
        fs::create_dir(d.join("taken")).unwrap();
        assert!(
            check_target(&d.join("taken"))
                .unwrap_err()
                .contains("directory")
        );
        fs::write(d.join("file"), b"").unwrap();
        assert!(
            check_target(&d.join("file/x/y"))
                .unwrap_err()
                .contains("not a directory")
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn sweeps_only_old_temporary_files_of_its_target() {
        let d = scratch("sweep");
        let old = SystemTime::now() - STALE_TEMP - Duration::from_secs(60);
        let make = |name: &str, when: SystemTime| {
            let f = File::create(d.join(name)).unwrap();
            f.set_modified(when).unwrap();
        };
        make(&format!(".bridge.1-a-0{TEMP_SUFFIX}"), old);
        make(&format!(".bridge.1-b-0{TEMP_SUFFIX}"), SystemTime::now());
        make(&format!(".flannel.1-a-0{TEMP_SUFFIX}"), old);
        make(".bridge.keep", old);
        let removed = sweep(&d.join("bridge"));
        assert_eq!(removed, [d.join(format!(".bridge.1-a-0{TEMP_SUFFIX}"))]);
        assert_eq!(
            entries(&d),
            [
                format!(".bridge.1-b-0{TEMP_SUFFIX}"),
                ".bridge.keep".to_string(),
                format!(".flannel.1-a-0{TEMP_SUFFIX}"),
            ]
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn temp_names_are_not_loaded_by_libcni() {
        for ext in [".conf", ".conflist", ".json"] {
            assert!(!TEMP_SUFFIX.ends_with(ext));
        }
    }
}
