//! Sysctls under /proc/sys/net. They resolve against the network namespace
//! of the thread that opens them: call these from inside the namespace
//! (see [`crate::NetNs::run`]).

use std::fs;
use std::io;

/// Writes `value` to `/proc/sys/<key>` (key with `/` separators) unless it
/// already holds it.
pub fn set(key: &str, value: &str) -> io::Result<()> {
    let path = format!("/proc/sys/{key}");
    if fs::read_to_string(&path).is_ok_and(|cur| cur.trim() == value) {
        return Ok(());
    }
    fs::write(&path, value).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}

pub fn get(key: &str) -> io::Result<String> {
    fs::read_to_string(format!("/proc/sys/{key}")).map(|s| s.trim().to_string())
}
