//! This node's private key: made once, kept in a file, never made again
//! while the file is there (a new key for the same node leaves stale peers
//! behind everywhere, k3s issue #5216). Keys are base64 text, as `wg genkey`
//! and upstream's flanneld write them.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use boringtun::x25519::{PublicKey, StaticSecret};

/// Where the key is kept unless `WIREGUARD_KEY_FILE` says otherwise
/// (upstream's path and variable).
pub const DEFAULT_FILE: &str = "/run/flannel/wgkey";
pub const FILE_ENV: &str = "WIREGUARD_KEY_FILE";

/// A 32-byte key from its base64 text (surrounding blanks ignored, so a
/// file ending in a newline, as `wg genkey > file` writes, reads too).
pub fn decode(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64 ({e})"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{} bytes, a key has 32", bytes.len()))
}

pub fn encode(key: &[u8; 32]) -> String {
    STANDARD.encode(key)
}

/// The key file's path: the environment's, else upstream's default.
pub fn path() -> std::path::PathBuf {
    std::env::var_os(FILE_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| DEFAULT_FILE.into(), Into::into)
}

/// This node's key pair: read from `path`, or made and written there when
/// there is no file. A file that cannot be read as a key is an error, not
/// replaced.
pub fn load_or_create(path: &Path) -> Result<(StaticSecret, PublicKey), String> {
    let secret = match read(path)? {
        Some(k) => k,
        None => create(path)?,
    };
    let public = PublicKey::from(&secret);
    Ok((secret, public))
}

fn read(path: &Path) -> Result<Option<StaticSecret>, String> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read the wireguard key {}: {e}",
                path.display()
            ));
        }
    };
    let mut text = String::new();
    (&f).take(1024)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the wireguard key {}: {e}", path.display()))?;
    let key = decode(&text).map_err(|e| {
        format!(
            "the wireguard key {} is not a key: {e}; fix or remove it (a new key makes every peer drop this node until it learns the new one)",
            path.display()
        )
    })?;
    if let Ok(m) = f.metadata()
        && m.permissions().mode() & 0o077 != 0
    {
        crate::warn!(
            "wireguard: the key {} can be read by others (mode {:o}): chmod 0400 it",
            path.display(),
            m.permissions().mode() & 0o777
        );
    }
    Ok(Some(StaticSecret::from(key)))
}

/// Makes a key and writes it to `path` (mode 0400) whole or not at all:
/// a temporary file linked into place, so an agent that races us, or
/// dies half way, never leaves a half-written key. Losing the race means
/// taking the winner's key.
fn create(path: &Path) -> Result<StaticSecret, String> {
    let err = |what: &str, e: std::io::Error| {
        format!("cannot {what} the wireguard key {}: {e}", path.display())
    };
    let mut key = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut r| r.read_exact(&mut key))
        .map_err(|e| err("make", e))?;
    // Clamped as `wg genkey` does, so the file reads the same to `wg`.
    key[0] &= 248;
    key[31] = (key[31] & 127) | 64;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(d) = dir {
        fs::create_dir_all(d).map_err(|e| err("make the directory of", e))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(encode(&key).as_bytes())?;
            f.sync_all()
        });
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Some(d) = dir {
                let _ = File::open(d).and_then(|d| d.sync_all());
            }
            crate::info!("wireguard: made a new key in {}", path.display());
            Ok(StaticSecret::from(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read(path)?.ok_or_else(|| err("read", std::io::ErrorKind::NotFound.into()))
        }
        Err(e) => Err(err("write", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_and_read_back_the_same() {
        let dir = std::env::temp_dir().join(format!("wgkey-test-{}", std::process::id()));
        let path = dir.join("sub").join("wgkey");
        let (_, first) = load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 44);
        let (_, again) = load_or_create(&path).unwrap();
        assert_eq!(first.as_bytes(), again.as_bytes());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_is_no_key_is_an_error_and_kept() {
        let dir = std::env::temp_dir().join(format!("wgkey-bad-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wgkey");
        fs::write(&path, "not a key").unwrap();
        let Err(e) = load_or_create(&path) else {
            panic!("a bad key file was taken")
        };
        assert!(e.contains("is not a key"), "{e}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "not a key");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_decode_as_wg_writes_them() {
        // `wg genkey` output and its `wg pubkey`.
        let secret = decode("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n").unwrap();
        let public = PublicKey::from(&StaticSecret::from(secret));
        assert_eq!(
            encode(public.as_bytes()),
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
        );
        assert!(decode("c2hvcnQ=").unwrap_err().contains("5 bytes"));
        assert!(decode("!!").unwrap_err().contains("base64"));
    }
}
