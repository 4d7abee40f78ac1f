//! The agent's log: one line per event on stderr,
//! `2025-06-01T12:00:00.123Z E message`, with an RFC 3339 UTC timestamp and
//! a klog-style level letter (E error, W warning, I info, D debug) so that
//! `grep ' E '` finds what needs a person.
//!
//! `-v N` is upstream's klog verbosity. Errors, warnings and info always
//! show; debug lines show from `-v 4`, Kubernetes' "debug" verbosity.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    fn letter(self) -> char {
        match self {
            Level::Error => 'E',
            Level::Warn => 'W',
            Level::Info => 'I',
            Level::Debug => 'D',
        }
    }
}

/// The `-v` from which debug lines show.
pub const DEBUG_VERBOSITY: u32 = 4;

static VERBOSITY: AtomicU32 = AtomicU32::new(0);

/// Sets the verbosity (`-v N`) for the rest of the process.
pub fn init(verbosity: u32) {
    VERBOSITY.store(verbosity, Ordering::Relaxed);
}

pub fn enabled(level: Level) -> bool {
    level < Level::Debug || VERBOSITY.load(Ordering::Relaxed) >= DEBUG_VERBOSITY
}

/// `2025-06-01T12:00:00.123Z` for `t`.
pub fn timestamp(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Year, month, day of the `days`th day after 1970-01-01 (proleptic
/// Gregorian; Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Text from outside (a store's keys, what a peer wrote) as it may be
/// logged: line breaks and other control characters escaped, so that no
/// writer to the store can forge a log line.
pub fn escape(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// One whole line, written at once so lines of threads never interleave.
pub fn line(level: Level, t: SystemTime, args: fmt::Arguments<'_>) -> String {
    format!("{} {} {args}\n", timestamp(t), level.letter())
}

pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let text = line(level, SystemTime::now(), args);
    // Nowhere left to report a failed write to stderr.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |s: u64, ms: u64| {
            timestamp(UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day in a century leap year) 23:59:59.999.
        assert_eq!(at(951_868_799, 999), "2000-02-29T23:59:59.999Z");
        assert_eq!(at(1_709_251_199, 5), "2024-02-29T23:59:59.005Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000Z");
    }

    #[test]
    fn lines_carry_the_level() {
        let t = UNIX_EPOCH + Duration::from_secs(86_400);
        assert_eq!(
            line(Level::Error, t, format_args!("cannot {}", "x")),
            "1970-01-02T00:00:00.000Z E cannot x\n"
        );
        assert!(line(Level::Warn, t, format_args!("w")).contains("Z W w"));
        assert!(line(Level::Info, t, format_args!("i")).contains("Z I i"));
        assert!(line(Level::Debug, t, format_args!("d")).contains("Z D d"));
    }

    #[test]
    fn outside_text_cannot_make_a_line_of_its_own() {
        let forged = "10.244.9.0-24\n2025-06-01T12:00:00.000Z E forged";
        assert_eq!(escape(forged).lines().count(), 1);
        assert_eq!(escape("10.244.9.0-24"), "10.244.9.0-24");
        assert_eq!(escape("node-h1's \"x\"\t"), "node-h1's \"x\"\\t");
    }

    #[test]
    fn debug_shows_from_verbosity_four() {
        init(0);
        assert!(enabled(Level::Error) && enabled(Level::Info));
        assert!(!enabled(Level::Debug));
        init(DEBUG_VERBOSITY);
        assert!(enabled(Level::Debug));
        init(0);
    }
}
