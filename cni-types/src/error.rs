//! The spec's error object and its codes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Well-known error codes (spec "Error codes"); 100 and above belong to plugins.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const LIMITED_CONNECTIVITY: u32 = 51;

    /// First code free for plugins.
    pub const PLUGIN_BASE: u32 = 100;
    /// A delegated plugin is not on `CNI_PATH`.
    pub const PLUGIN_NOT_FOUND: u32 = 100;
    /// A delegated plugin could not be run or answered outside the spec.
    pub const DELEGATE_FAILED: u32 = 101;
    /// The verb is not implemented yet by this binary.
    pub const NOT_IMPLEMENTED: u32 = 102;
}

/// A CNI error: printed on stdout as `{"cniVersion","code","msg","details"}`
/// with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn incompatible_version(msg: impl Into<String>) -> Self {
        Self::new(code::INCOMPATIBLE_VERSION, msg)
    }

    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, msg)
    }

    pub fn io(msg: impl Into<String>) -> Self {
        Self::new(code::IO, msg)
    }

    pub fn decode(msg: impl Into<String>) -> Self {
        Self::new(code::DECODE, msg)
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg)
    }

    pub fn try_again(msg: impl Into<String>) -> Self {
        Self::new(code::TRY_AGAIN_LATER, msg)
    }

    pub fn not_available(msg: impl Into<String>) -> Self {
        Self::new(code::NOT_AVAILABLE, msg)
    }

    pub fn not_implemented(what: &str) -> Self {
        Self::new(
            code::NOT_IMPLEMENTED,
            format!("{what} is not implemented yet"),
        )
    }

    /// After a failed ADD: what its rollback could not undo, added to the
    /// details and logged on stderr (`plugin: ...`), so an operator can
    /// clean it up. The ADD's own code and message stay what the runtime
    /// sees. Nothing changes when `left` is empty.
    pub fn rollback_incomplete(self, plugin: &str, left: &[String]) -> Self {
        if left.is_empty() {
            return self;
        }
        let left = left.join("; ");
        eprintln!("{plugin}: ADD failed and its rollback was incomplete: {left}");
        let details = if self.details.is_empty() {
            format!("rollback incomplete: {left}")
        } else {
            format!("{}; rollback incomplete: {left}", self.details)
        };
        self.with_details(details)
    }

    /// Prefix the message with context, keeping code and details.
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.msg = format!("{ctx}: {}", self.msg);
        self
    }

    /// The JSON a plugin prints, tagged with the config's version.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = serde_json::Value::String(self.details.clone());
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, "; {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}
