//! Spec versions this suite speaks, and the gates between them.

use std::fmt;
use std::str::FromStr;

/// A CNI spec version that our plugins support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_1_0,
    V0_2_0,
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// Every version, oldest first: this is the `supportedVersions` list of VERSION.
pub const SUPPORTED: [Version; 7] = [
    Version::V0_1_0,
    Version::V0_2_0,
    Version::V0_3_0,
    Version::V0_3_1,
    Version::V0_4_0,
    Version::V1_0_0,
    Version::V1_1_0,
];

/// The version a config means when it carries no `cniVersion` (as libcni's
/// `DecodeVersion` decides).
pub const IMPLICIT: Version = Version::V0_1_0;

/// The newest spec version.
pub const LATEST: Version = Version::V1_1_0;

/// The result layout that belongs to a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultFormat {
    /// 0.1.0 and 0.2.0: `ip4` / `ip6` objects.
    Legacy,
    /// 0.3.0, 0.3.1 and 0.4.0: `ips[]` with `version`.
    V04,
    /// 1.0.0 and 1.1.0.
    V1,
}

impl Version {
    pub const fn as_str(self) -> &'static str {
        match self {
            Version::V0_1_0 => "0.1.0",
            Version::V0_2_0 => "0.2.0",
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    pub const fn result_format(self) -> ResultFormat {
        match self {
            Version::V0_1_0 | Version::V0_2_0 => ResultFormat::Legacy,
            Version::V0_3_0 | Version::V0_3_1 | Version::V0_4_0 => ResultFormat::V04,
            Version::V1_0_0 | Version::V1_1_0 => ResultFormat::V1,
        }
    }

    /// CHECK exists from 0.4.0 on.
    pub fn allows_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// GC and STATUS exist from 1.1.0 on.
    pub fn allows_gc_and_status(self) -> bool {
        self >= Version::V1_1_0
    }

    /// The supported list rendered as the spec's error details do.
    pub fn supported_list() -> String {
        let names: Vec<String> = SUPPORTED
            .iter()
            .map(|v| format!("{:?}", v.as_str()))
            .collect();
        format!("[{}]", names.join(", "))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string is not one of the supported versions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported CNI version {0:?}")]
pub struct UnsupportedVersion(pub String);

impl FromStr for Version {
    type Err = UnsupportedVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SUPPORTED
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnsupportedVersion(s.to_string()))
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_nothing_else() {
        for v in SUPPORTED {
            assert_eq!(v.as_str().parse::<Version>(), Ok(v));
        }
        for bad in ["", "1.1", "1.2.0", "0.3", "v1.0.0", " 1.0.0"] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
    }

    #[test]
    fn gates() {
        assert!(!Version::V0_3_1.allows_check());
        assert!(Version::V0_4_0.allows_check());
        assert!(!Version::V1_0_0.allows_gc_and_status());
        assert!(Version::V1_1_0.allows_gc_and_status());
    }

    #[test]
    fn supported_list_text() {
        assert_eq!(
            Version::supported_list(),
            r#"["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]"#
        );
    }
}
