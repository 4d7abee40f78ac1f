//! A small client for etcd's HTTP JSON gateway (`/v3/...`) over one
//! keep-alive HTTP/1.1 connection, fast enough to load thousands of
//! leases (one `etcdctl` process per write is not). etcd itself is
//! started by the conformance harness ([`conformance::Etcd`]).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use conformance::{Etcd, EtcdOptions, TestNetns};
use serde_json::{Value, json};

pub use conformance::etcd::ETCD_BIN;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// etcd serving clients on `ip:2379` inside `ns`, its data in `dir/etcd`;
/// killed with this program if it dies without cleaning up.
pub fn start(ns: &TestNetns, ip: &str, dir: &Path) -> Result<Etcd, String> {
    let opts = EtcdOptions {
        die_with_parent: true,
        ..EtcdOptions::default()
    };
    Etcd::try_start(ns, &format!("http://{ip}:2379"), dir, opts)
}

/// A new gateway connection to `etcd`, made from inside its namespace.
pub fn client(etcd: &Etcd) -> Result<Gateway, String> {
    Gateway::connect(&etcd.ns().path(), etcd.client_addr())
}

/// One keep-alive connection to the gateway; reconnects once on trouble.
#[derive(Debug)]
pub struct Gateway {
    ns: std::path::PathBuf,
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

/// One key of a range read.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: String,
    pub value: String,
}

impl Gateway {
    pub fn connect(ns: &Path, addr: SocketAddr) -> Result<Gateway, String> {
        let mut g = Gateway {
            ns: ns.to_path_buf(),
            addr,
            conn: None,
        };
        g.open()?;
        Ok(g)
    }

    fn open(&mut self) -> Result<(), String> {
        let netns = netkit::NetNs::open(&self.ns).map_err(|e| e.to_string())?;
        let addr = self.addr;
        let stream = netns
            .run(move || TcpStream::connect_timeout(&addr, IO_TIMEOUT))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot connect to etcd at {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| format!("cannot set up the etcd connection: {e}"))?;
        self.conn = Some(BufReader::with_capacity(64 * 1024, stream));
        Ok(())
    }

    /// POSTs `body` to `path`; the answer's JSON. A connection that broke
    /// is opened again and the request sent once more.
    pub fn call(&mut self, path: &str, body: &Value) -> Result<Value, String> {
        match self.exchange(path, body) {
            Ok(v) => Ok(v),
            Err(Trouble::Answer(e)) => Err(e),
            Err(Trouble::Connection(_)) => {
                self.open()?;
                self.exchange(path, body).map_err(|t| t.to_string())
            }
        }
    }

    fn exchange(&mut self, path: &str, body: &Value) -> Result<Value, Trouble> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| Trouble::Connection("not connected".into()))?;
        let body = body.to_string();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let io = |e: std::io::Error| Trouble::Connection(format!("etcd {path}: {e}"));
        conn.get_mut().write_all(request.as_bytes()).map_err(io)?;
        let (status, reply) = read_response(conn).map_err(io)?;
        let text = String::from_utf8_lossy(&reply);
        if status != 200 {
            return Err(Trouble::Answer(format!(
                "etcd {path}: HTTP {status}: {}",
                text.trim()
            )));
        }
        serde_json::from_str(&text)
            .map_err(|e| Trouble::Answer(format!("etcd {path}: not JSON ({e}): {text}")))
    }

    /// A new etcd lease of `ttl` seconds; its ID.
    pub fn grant(&mut self, ttl: u64) -> Result<i64, String> {
        let v = self.call("/v3/lease/grant", &json!({"TTL": ttl}))?;
        int(&v["ID"]).ok_or_else(|| format!("lease grant: no ID in {v}"))
    }

    /// Puts `key` = `value`, attached to `lease` (0: none).
    pub fn put(&mut self, key: &str, value: &str, lease: i64) -> Result<(), String> {
        let mut body = json!({"key": b64(key.as_bytes()), "value": b64(value.as_bytes())});
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        self.call("/v3/kv/put", &body).map(drop)
    }

    /// Deletes `key`; how many keys went.
    pub fn delete(&mut self, key: &str) -> Result<u64, String> {
        let v = self.call("/v3/kv/deleterange", &json!({"key": b64(key.as_bytes())}))?;
        Ok(int(&v["deleted"])
            .and_then(|d| u64::try_from(d).ok())
            .unwrap_or(0))
    }

    /// Revokes a lease, deleting the keys attached to it.
    pub fn revoke(&mut self, lease: i64) -> Result<(), String> {
        self.call("/v3/lease/revoke", &json!({"ID": lease.to_string()}))
            .map(drop)
    }

    /// Every key under `prefix`, in key order.
    pub fn range_prefix(&mut self, prefix: &str) -> Result<Vec<Kv>, String> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let v = self.call(
            "/v3/kv/range",
            &json!({"key": b64(prefix.as_bytes()), "range_end": b64(&end)}),
        )?;
        let Some(kvs) = v["kvs"].as_array() else {
            return Ok(Vec::new());
        };
        kvs.iter()
            .map(|kv| {
                let text = |f: &str| -> Result<String, String> {
                    let raw = kv[f].as_str().unwrap_or("");
                    let bytes = unb64(raw).ok_or_else(|| format!("range: bad base64 in {f}"))?;
                    String::from_utf8(bytes).map_err(|_| format!("range: {f} is not UTF-8"))
                };
                Ok(Kv {
                    key: text("key")?,
                    value: text("value")?,
                })
            })
            .collect()
    }
}

enum Trouble {
    /// The connection failed: worth a new one.
    Connection(String),
    /// etcd answered, and said no.
    Answer(String),
}

impl std::fmt::Display for Trouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trouble::Connection(e) | Trouble::Answer(e) => f.write_str(e),
        }
    }
}

/// The gateway writes 64-bit integers as strings.
fn int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

/// Reads one HTTP/1.1 response: its status and body (Content-Length or
/// chunked).
fn read_response(r: &mut impl BufRead) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("headers cut short"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse().map_err(|_| bad("bad Content-Length"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    }
    Ok((status, body))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as the gateway's `bytes` fields are.
pub fn b64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn unb64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = B64.iter().position(|b| *b == c)?;
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            (
                "/coreos.com/network/subnets/10.244.3.0-24",
                "L2NvcmVvcy5jb20vbmV0d29yay9zdWJuZXRzLzEwLjI0NC4zLjAtMjQ=",
            ),
        ] {
            assert_eq!(b64(plain.as_bytes()), coded);
            assert_eq!(unb64(coded).unwrap(), plain.as_bytes());
        }
        assert!(unb64("a*b").is_none());
    }

    #[test]
    fn responses_with_length_or_chunks() {
        let mut r = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".as_bytes();
        assert_eq!(read_response(&mut r).unwrap(), (200, b"{}".to_vec()));
        assert_eq!(read_response(&mut r).unwrap(), (404, b"abcde".to_vec()));
        assert!(read_response(&mut r).is_err());
    }

    #[test]
    fn integers_as_strings() {
        assert_eq!(int(&json!("7587861231")), Some(7_587_861_231));
        assert_eq!(int(&json!(5)), Some(5));
        assert_eq!(int(&Value::Null), None);
    }
}
