//! `/healthz` (always 200), `/readyz` (200 once subnet.env is written) and
//! `/metrics` (Prometheus text) on a small blocking HTTP listener.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub ready: AtomicBool,
    pub leases: AtomicU64,
    pub peers: AtomicU64,
    pub repairs: AtomicU64,
    pub store_errors: AtomicU64,
}

impl Metrics {
    fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# HELP flannel_leases Leases seen in the store.\n# TYPE flannel_leases gauge\nflannel_leases {}\n\
             # HELP flannel_peers Peers programmed into the data plane.\n# TYPE flannel_peers gauge\nflannel_peers {}\n\
             # HELP flannel_repairs_total Kernel state found missing and restored.\n# TYPE flannel_repairs_total counter\nflannel_repairs_total {}\n\
             # HELP flannel_store_errors_total Failed calls to the lease store.\n# TYPE flannel_store_errors_total counter\nflannel_store_errors_total {}\n",
            g(&self.leases),
            g(&self.peers),
            g(&self.repairs),
            g(&self.store_errors)
        )
    }
}

/// Serves until the process ends.
pub fn serve(addr: &str, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut line = String::new();
            let mut reader = BufReader::new(&stream);
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/healthz" => ("200 OK", "ok\n".to_string()),
                "/readyz" if metrics.ready.load(Ordering::Relaxed) => {
                    ("200 OK", "ready\n".to_string())
                }
                "/readyz" => (
                    "503 Service Unavailable",
                    "subnet.env not written yet\n".to_string(),
                ),
                "/metrics" => ("200 OK", metrics.render()),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let mut stream = stream;
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(())
}
