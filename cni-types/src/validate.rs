//! The name checks the reference skeleton applies to the runtime's input.

use crate::error::{CniError, code};

/// Linux IFNAMSIZ less the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, the rule for container IDs and network names.
pub fn is_valid_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(first) if first.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

pub fn container_id(id: &str) -> Result<(), CniError> {
    if id.is_empty() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            "missing containerID",
        ));
    }
    if !is_valid_identifier(id) {
        return Err(CniError::invalid_env(format!(
            "invalid characters in containerID {id:?}: it must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"
        )));
    }
    Ok(())
}

pub fn network_name(name: &str) -> Result<(), CniError> {
    if name.is_empty() {
        return Err(CniError::invalid_config("missing network name"));
    }
    if !is_valid_identifier(name) {
        return Err(CniError::invalid_config(format!(
            "invalid characters found in network name {name:?}: it must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"
        )));
    }
    Ok(())
}

pub fn interface_name(name: &str) -> Result<(), CniError> {
    let reason = if name.is_empty() {
        "interface name is empty"
    } else if name.len() > MAX_IFNAME_LEN {
        "interface name is too long (at most 15 bytes)"
    } else if name == "." || name == ".." {
        "interface name is . or .."
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        "interface name contains / or : or whitespace characters"
    } else {
        return Ok(());
    };
    Err(CniError::invalid_env(format!("{reason}: {name:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        for ok in ["a", "0", "abc-DEF_1.2", "cnitool-0123abcd"] {
            assert!(is_valid_identifier(ok), "{ok}");
        }
        for bad in ["", "-a", ".a", "_a", "a b", "a/b", "a:b", "é", "a\n"] {
            assert!(!is_valid_identifier(bad), "{bad:?}");
        }
    }

    #[test]
    fn interface_names() {
        for ok in ["eth0", "a", "123456789012345", "veth.1", "net-1"] {
            assert!(interface_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "1234567890123456",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
        ] {
            let err = interface_name(bad).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENV, "{bad:?}");
        }
    }

    #[test]
    fn container_ids() {
        assert_eq!(container_id("").unwrap_err().code, code::UNKNOWN_CONTAINER);
        assert_eq!(container_id("-x").unwrap_err().code, code::INVALID_ENV);
        assert!(container_id("abc123").is_ok());
    }

    #[test]
    fn network_names() {
        assert_eq!(network_name("").unwrap_err().code, code::INVALID_CONFIG);
        assert_eq!(
            network_name("bad name").unwrap_err().code,
            code::INVALID_CONFIG
        );
        assert!(network_name("cbr0").is_ok());
    }
}
