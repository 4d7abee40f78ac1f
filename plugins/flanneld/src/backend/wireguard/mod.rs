//! wireguard: pod traffic between nodes encrypted as standard WireGuard,
//! in user space, so it runs where the kernel has no WireGuard module.
//! Upstream's config (`ListenPort`, `ListenPortV6`, `PSK`,
//! `PersistentKeepaliveInterval`, `Mode`, `MTU`), lease data
//! (`{"PublicKey":..,"Port":..}` per family) and device names
//! (`flannel-wg`, `flannel-wg-v6`), so our nodes and upstream's kernel
//! backend share a cluster.
//!
//! The devices are TUN devices on the udp backend's machinery (TUN
//! offloads, `UDP_SEGMENT`/`UDP_GRO`, batched system calls, a queue per
//! core); the Noise handshake, sessions, replay window, timers and cookies
//! are boringtun's (`noise`), which has no sockets of its own.

mod backend;
mod forward;
mod gate;
pub mod key;
mod peers;

use serde_json::{Value, json};

pub use backend::Wireguard;

pub const DEVICE: &str = "flannel-wg";
pub const DEVICE_V6: &str = "flannel-wg-v6";
/// Outer IPv6 and UDP headers and WireGuard's own (upstream's figure for
/// either family): the device's MTU is the underlay's less this.
pub const OVERHEAD: u32 = 80;

/// A peer's key and port for one family, from its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerKey {
    pub key: [u8; 32],
    pub port: u16,
}

/// `{"PublicKey":"...","Port":N}`, as upstream marshals it (the lease
/// writer keeps this field order).
pub fn backend_data(public: &[u8; 32], port: u16) -> Value {
    json!({"PublicKey": key::encode(public), "Port": port})
}

/// The key and port in a lease's backend data (`what` names the field);
/// a port of 0 or none is `default`, as upstream reads it.
pub fn peer_key(data: Option<&Value>, what: &str, default: u16) -> Result<PeerKey, String> {
    let d = data.ok_or_else(|| format!("its lease has no {what}"))?;
    let text = d
        .get("PublicKey")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("its {what} has no PublicKey"))?;
    let key = key::decode(text).map_err(|e| format!("its {what} PublicKey {text:?}: {e}"))?;
    let port = match d.get("Port") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| format!("its {what} Port {v} is not a port"))?,
    };
    Ok(PeerKey {
        key,
        port: if port == 0 { default } else { port },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_data_reads_back_and_refuses_junk() {
        let k = [7u8; 32];
        let d = backend_data(&k, 51821);
        assert_eq!(
            peer_key(Some(&d), "BackendV6Data", 1).unwrap(),
            PeerKey {
                key: k,
                port: 51821
            }
        );
        let no_port = json!({"PublicKey": key::encode(&k)});
        assert_eq!(peer_key(Some(&no_port), "x", 51820).unwrap().port, 51820);
        assert!(
            peer_key(None, "BackendData", 1)
                .unwrap_err()
                .contains("no BackendData")
        );
        let bad = json!({"PublicKey": "abc", "Port": 1});
        assert!(peer_key(Some(&bad), "BackendData", 1).is_err());
        let port = json!({"PublicKey": key::encode(&k), "Port": 70000});
        assert!(
            peer_key(Some(&port), "BackendData", 1)
                .unwrap_err()
                .contains("Port")
        );
    }
}
