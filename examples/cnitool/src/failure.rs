//! What cnitool reports when something goes wrong: a message with its
//! context, and the CNI error code when a plugin (or a spec rule) gave one.

use std::fmt;
use std::io::Write;

use cni_types::CniError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub msg: String,
    pub code: Option<u32>,
}

impl Failure {
    pub fn new(msg: impl Into<String>) -> Self {
        Failure {
            msg: msg.into(),
            code: None,
        }
    }

    pub fn with_code(code: u32, msg: impl Into<String>) -> Self {
        Failure {
            msg: msg.into(),
            code: Some(code),
        }
    }

    /// Prefixes the message with where it happened; the code stays.
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.msg = format!("{ctx}: {}", self.msg);
        self
    }
}

impl From<CniError> for Failure {
    fn from(e: CniError) -> Self {
        // CniError's Display is Go's types.Error text: "msg; details".
        Failure::with_code(e.code, e.to_string())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)?;
        if let Some(code) = self.code {
            write!(f, " (CNI error code {code})")?;
        }
        Ok(())
    }
}

/// Everything that went wrong in one run: best-effort verbs (DEL, GC) keep
/// going after a failure and report them all.
#[derive(Debug, Default)]
pub struct Failures(pub Vec<Failure>);

impl From<Failure> for Failures {
    fn from(f: Failure) -> Self {
        Failures(vec![f])
    }
}

impl Failures {
    pub fn push(&mut self, f: Failure) {
        self.0.push(f);
    }

    /// `Ok(value)` when nothing failed.
    pub fn or_ok<T>(self, value: T) -> Result<T, Failures> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

/// A line for the person running cnitool, on stderr. It cannot panic (as
/// `eprintln!` does when stderr is a closed pipe): with stderr gone there
/// is no one left to tell.
pub fn note(msg: impl fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "cnitool: {msg}");
}
