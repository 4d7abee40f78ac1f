//! The proof that lets a call trust the index of a large store: the store
//! directory's state as the index last saw it, in a form that no later
//! change to the directory can leave as it was.
//!
//! The directory's ctime alone cannot prove that: it comes from a coarse
//! clock (a jiffy before Linux 6.13 or on filesystems without multigrain
//! timestamps, a second on some), so a change within the same tick as the
//! recorded state leaves it as it was. But creating, removing or renaming
//! an entry sets the directory's mtime and ctime to the same instant. So
//! once the index is up to date we "seal" the directory: set its mtime to
//! just before its ctime, and record both. Any later change by anyone (the
//! reference plugin, a person) makes them equal again, whatever the clock's
//! granularity; a recorded pair with mtime < ctime cannot come back without
//! setting the clock back to the nanosecond (to the second where the
//! filesystem keeps only seconds).

use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sys::stat::futimens;
use nix::sys::time::TimeSpec;

use crate::fsutil::{overwrite, remove_if_present};

const STAMP_FILE: &str = "stamp";
/// Stamps of earlier versions could vouch within a tick: never trusted.
const FORMAT: &str = "v2";

/// What any change to the directory's entries changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirState {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
    size: u64,
}

impl DirState {
    pub fn of(m: &Metadata) -> DirState {
        DirState {
            dev: m.dev(),
            ino: m.ino(),
            ctime: (m.ctime(), m.ctime_nsec()),
            mtime: (m.mtime(), m.mtime_nsec()),
            size: m.size(),
        }
    }

    fn encode(&self) -> String {
        format!(
            "{FORMAT} {} {} {}.{:09} {}.{:09} {}\n",
            self.dev, self.ino, self.ctime.0, self.ctime.1, self.mtime.0, self.mtime.1, self.size
        )
    }

    fn decode(text: &str) -> Option<DirState> {
        let mut f = text.strip_suffix('\n')?.split(' ');
        if f.next()? != FORMAT {
            return None;
        }
        let time = |s: &str| -> Option<(i64, i64)> {
            let (sec, nsec) = s.split_once('.')?;
            Some((sec.parse().ok()?, nsec.parse().ok()?))
        };
        let state = DirState {
            dev: f.next()?.parse().ok()?,
            ino: f.next()?.parse().ok()?,
            ctime: time(f.next()?)?,
            mtime: time(f.next()?)?,
            size: f.next()?.parse().ok()?,
        };
        f.next().is_none().then_some(state)
    }
}

/// The state a stamp in `index_dir` vouches for; `None` when there is no
/// stamp or it cannot be read (then the index is simply not trusted).
pub fn read(index_dir: &Path) -> Option<DirState> {
    DirState::decode(&fs::read_to_string(index_dir.join(STAMP_FILE)).ok()?)
}

pub fn write(index_dir: &Path, state: &DirState) -> io::Result<()> {
    overwrite(&index_dir.join(STAMP_FILE), state.encode().as_bytes())
}

pub fn remove(index_dir: &Path) -> io::Result<()> {
    remove_if_present(&index_dir.join(STAMP_FILE))
}

/// Seals `store_dir` (see the module's text) and returns its state then;
/// `None` where its times may not be set (then no stamp can be trusted).
pub fn seal(store_dir: &Path) -> io::Result<Option<DirState>> {
    let dir = File::open(store_dir)?;
    let before = dir.metadata()?;
    let ctime = (before.ctime(), before.ctime_nsec());
    let sealed = match ctime {
        (sec, 0) => TimeSpec::new(sec - 1, 999_999_999),
        (sec, nsec) => TimeSpec::new(sec, nsec - 1),
    };
    // Not permitted (the directory belongs to another user): the next
    // call reads the store whole, which only costs time.
    if futimens(&dir, &TimeSpec::UTIME_OMIT, &sealed).is_err() {
        return Ok(None);
    }
    let after = dir.metadata()?;
    // Only a writer ignoring the lock could change the directory now; if it
    // did after our futimens, the mtime is `ctime` or later: no stamp.
    Ok(((after.mtime(), after.mtime_nsec()) < ctime).then(|| DirState::of(&after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_change_after_the_seal_shows_even_within_the_same_tick() {
        let dir = std::env::temp_dir().join(format!("hl-stamp-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("10.0.0.2"), "a\r\neth0").unwrap();
        let sealed = seal(&dir).unwrap();
        let unchanged = DirState::of(&fs::metadata(&dir).unwrap());
        // Right away: within the same tick of even the coarsest clock.
        fs::write(dir.join("10.0.0.3"), "b\r\neth0").unwrap();
        let changed = DirState::of(&fs::metadata(&dir).unwrap());
        fs::remove_dir_all(&dir).unwrap();
        let sealed = sealed.expect("root may set the times of its own directory");
        assert_eq!(sealed, unchanged);
        assert!(sealed.mtime < sealed.ctime);
        assert_ne!(sealed, changed);
        assert_eq!(changed.mtime, changed.ctime);
    }

    #[test]
    fn encodes_and_refuses_other_formats() {
        let s = DirState {
            dev: 2049,
            ino: 77,
            ctime: (1_700_000_000, 5),
            mtime: (1_700_000_000, 123_456_789),
            size: 4096,
        };
        assert_eq!(DirState::decode(&s.encode()), Some(s.clone()));
        // The format before v2, which could vouch within a tick.
        assert_eq!(
            DirState::decode("2049 77 1700000000.000000005 1700000000.123456789\n"),
            None
        );
        assert_eq!(DirState::decode(&s.encode().replace('\n', " 9\n")), None);
        assert_eq!(DirState::decode("v2 1 2 3.4"), None);
    }
}
