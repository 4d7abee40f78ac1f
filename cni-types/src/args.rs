//! `CNI_ARGS`: `K=V;K2=V2` pairs from the runtime.

use crate::error::CniError;

/// Parsed `CNI_ARGS`, in the order given. Keys are case-sensitive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: Vec<(String, String)>,
}

/// The key that lets a runtime send keys a plugin does not know.
pub const IGNORE_UNKNOWN: &str = "IgnoreUnknown";

impl CniArgs {
    /// Parses `K=V;K2=V2`. Empty segments (`A=1;;B=2`, a trailing `;`) are
    /// skipped. A value may itself contain `=`: only the first one splits
    /// (the Go library rejects such pairs; accepting them loses nothing).
    /// A segment without `=` or with an empty key is an error.
    pub fn parse(raw: &str) -> Result<Self, CniError> {
        let mut pairs = Vec::new();
        for segment in raw.split(';') {
            if segment.is_empty() {
                continue;
            }
            match segment.split_once('=') {
                Some((key, value)) if !key.is_empty() => {
                    pairs.push((key.to_string(), value.to_string()));
                }
                _ => {
                    return Err(CniError::invalid_env(format!(
                        "CNI_ARGS: invalid pair {segment:?}: expected KEY=VALUE"
                    )));
                }
            }
        }
        Ok(CniArgs { pairs })
    }

    /// The value of `key` (the last one when repeated).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// `IgnoreUnknown` is `1` or `true` (any case).
    pub fn ignore_unknown(&self) -> bool {
        self.get(IGNORE_UNKNOWN)
            .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
    }

    /// Fails when a key outside `known` (and `IgnoreUnknown`) is present,
    /// unless `IgnoreUnknown` is set.
    pub fn check_known(&self, known: &[&str]) -> Result<(), CniError> {
        if self.ignore_unknown() {
            return Ok(());
        }
        let unknown: Vec<&str> = self
            .pairs
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| *k != IGNORE_UNKNOWN && !known.contains(k))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(CniError::invalid_env(format!(
                "CNI_ARGS: unknown args {unknown:?} (known: {known:?}; add IgnoreUnknown=1 to allow others)"
            )))
        }
    }
}
