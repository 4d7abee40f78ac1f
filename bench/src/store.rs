//! The host-local store on disk, in the reference plugin's format:
//! `<dataDir>/<network>/<address>` holding "<containerID>\r\n<ifname>",
//! `last_reserved_ip.<range set>`, and the `lock` file.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::plugin::{IFNAME, NETWORK};
use crate::subnet::Subnet;

/// Offset of the first address host-local hands out: .1 is the gateway.
pub const FIRST_HOST: u32 = 2;

pub fn network_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(NETWORK)
}

/// Writes `count` reservations from the first host address on, owned by
/// `fill-<n>`, as if that many ADDs had run; returns the last address.
/// Files are written directly because 60,000 real ADDs of the reference
/// plugin would take hours (each one reads every reservation).
pub fn prefill(data_dir: &Path, subnet: Subnet, count: u32) -> Result<Ipv4Addr, String> {
    let fits = count
        .checked_add(FIRST_HOST - 1)
        .is_some_and(|last| count > 0 && last <= subnet.last_host_offset());
    if !fits {
        return Err(format!("{count} reservations do not fit in {subnet}"));
    }
    let dir = network_dir(data_dir);
    DirBuilder::new()
        .mode(0o755)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut last = Ipv4Addr::UNSPECIFIED;
    for n in 0..count {
        last = subnet
            .host(FIRST_HOST + n)
            .ok_or_else(|| format!("{count} reservations do not fit in {subnet}"))?;
        write_new(
            &dir.join(last.to_string()),
            &format!("fill-{n}\r\n{IFNAME}"),
        )
        .map_err(|e| format!("cannot write reservation {last}: {e}"))?;
    }
    write_new(&dir.join("last_reserved_ip.0"), &last.to_string())
        .map_err(|e| format!("cannot write last_reserved_ip.0: {e}"))?;
    Ok(last)
}

fn write_new(path: &Path, content: &str) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())
}

/// What a store directory holds, sorted by kind.
#[derive(Debug, Default)]
pub struct Contents {
    /// Files named by an IPv4 address.
    pub reservations: Vec<Ipv4Addr>,
    /// Anything but reservations, `lock` and `last_reserved_ip.*`.
    pub unexpected: Vec<String>,
}

/// Reads the network's store directory; a missing one is empty.
pub fn contents(data_dir: &Path) -> Result<Contents, String> {
    let dir = network_dir(data_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Contents::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    let mut found = Contents::default();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(ip) = name.parse::<Ipv4Addr>() {
            found.reservations.push(ip);
        } else if name != "lock" && !name.starts_with("last_reserved_ip.") {
            found.unexpected.push(name);
        }
    }
    found.reservations.sort();
    found.unexpected.sort();
    Ok(found)
}
