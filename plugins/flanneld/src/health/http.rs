//! A minimal HTTP/1.x server for the health endpoints: one thread, all
//! sockets non-blocking under poll(2), so an idle or slow client only
//! holds its own connection. Each connection gets [`DEADLINE`] to send a
//! request head of at most [`MAX_REQUEST`] bytes and take the answer; at
//! [`MAX_CONNECTIONS`] the oldest one is dropped for a newcomer, so a probe
//! is answered however many idle connections someone holds open.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::{Health, healthz, readyz};

pub const MAX_REQUEST: usize = 8 * 1024;
pub const MAX_CONNECTIONS: usize = 64;
pub const DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    deadline: Instant,
}

/// Binds `addr` and serves on a thread of its own until the process ends.
pub fn serve(addr: &str, health: Arc<Health>) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || run(&listener, &health))?;
    Ok(())
}

fn run(listener: &TcpListener, health: &Health) {
    let mut conns: Vec<Conn> = Vec::new();
    loop {
        let now = Instant::now();
        // Past their deadline: dropped, which closes them.
        conns.retain(|c| c.deadline > now);
        let wait = conns
            .iter()
            .map(|c| c.deadline.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        let ms = u16::try_from(wait.as_millis()).unwrap_or(1000).max(1);
        let ready: Vec<bool> = {
            let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            for c in &conns {
                let ev = if c.output.is_empty() {
                    PollFlags::POLLIN
                } else {
                    PollFlags::POLLOUT
                };
                fds.push(PollFd::new(c.stream.as_fd(), ev));
            }
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    crate::error!("health endpoint: poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        // Backwards, so that swap_remove only moves handled entries.
        for i in (0..conns.len()).rev() {
            if ready.get(i + 1).copied().unwrap_or(false) && !step(&mut conns[i], health) {
                conns.swap_remove(i);
            }
        }
        if ready.first().copied().unwrap_or(false) {
            accept(listener, &mut conns);
        }
    }
}

fn accept(listener: &TcpListener, conns: &mut Vec<Conn>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                if conns.len() >= MAX_CONNECTIONS
                    && let Some(oldest) = (0..conns.len()).min_by_key(|&i| conns[i].deadline)
                {
                    conns.swap_remove(oldest);
                }
                conns.push(Conn {
                    stream,
                    input: Vec::new(),
                    output: Vec::new(),
                    written: 0,
                    deadline: Instant::now() + DEADLINE,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // E.g. the client left before we took it, or no fds left: the
            // next readiness tries again.
            Err(e) => {
                crate::debug!("health endpoint: accept: {e}");
                return;
            }
        }
    }
}

/// Moves one connection on; `false` when it is done (to be closed).
fn step(c: &mut Conn, health: &Health) -> bool {
    if c.output.is_empty() {
        let mut buf = [0u8; 1024];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => c.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
            if c.input.len() > MAX_REQUEST {
                break;
            }
        }
        if c.input.len() > MAX_REQUEST {
            c.output = response(
                431,
                "Request Header Fields Too Large",
                "request too large\n",
            );
        } else if let Some(head) = head(&c.input) {
            c.output = answer(head, health);
        } else {
            return true;
        }
    }
    while c.written < c.output.len() {
        match c.stream.write(&c.output[c.written..]) {
            Ok(0) => return false,
            Ok(n) => c.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    false
}

/// The request head, once the blank line that ends it has arrived.
fn head(input: &[u8]) -> Option<&[u8]> {
    let crlf = input.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = input.windows(2).position(|w| w == b"\n\n");
    crlf.into_iter().chain(lf).min().map(|end| &input[..end])
}

fn response(code: u16, reason: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The answer to a request head.
pub fn answer(head: &[u8], health: &Health) -> Vec<u8> {
    let line = String::from_utf8_lossy(head);
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or("");
    let target = words.next().unwrap_or("/");
    let path = target.split('?').next().unwrap_or(target);
    if method != "GET" && method != "HEAD" {
        return response(405, "Method Not Allowed", "only GET\n");
    }
    let verdict = match path {
        "/healthz" => healthz(&health.snapshot(), health.stale_after()),
        "/readyz" => readyz(&health.snapshot()),
        "/metrics" => Ok(health.metrics.render()),
        _ => return response(404, "Not Found", "not found\n"),
    };
    match verdict {
        Ok(body) => response(200, "OK", &body),
        Err(body) => response(503, "Service Unavailable", &body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: Vec<u8>) -> String {
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn heads_end_at_a_blank_line() {
        assert_eq!(head(b"GET / HTTP/1.0\r\n"), None);
        assert_eq!(
            head(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"),
            Some(&b"GET / HTTP/1.0\r\nHost: x"[..])
        );
        assert_eq!(head(b"GET / HTTP/1.0\n\n"), Some(&b"GET / HTTP/1.0"[..]));
    }

    #[test]
    fn routes_and_methods() {
        let h = Health::new(Duration::from_secs(1));
        assert!(text(answer(b"GET /healthz HTTP/1.1", &h)).starts_with("HTTP/1.1 200"));
        let r = text(answer(b"GET /readyz?verbose HTTP/1.1", &h));
        assert!(r.starts_with("HTTP/1.1 503") && r.ends_with("subnet.env not written yet\n"));
        assert!(text(answer(b"GET /metrics HTTP/1.1", &h)).contains("flannel_resyncs_total 0"));
        assert!(text(answer(b"GET /nope HTTP/1.1", &h)).starts_with("HTTP/1.1 404"));
        assert!(text(answer(b"POST /healthz HTTP/1.1", &h)).starts_with("HTTP/1.1 405"));
        assert!(text(answer(b"", &h)).starts_with("HTTP/1.1 405"));
    }

    /// Over loopback in a namespace of the test's own: many idle
    /// connections do not keep a probe from its answer, and an oversized
    /// head is refused.
    #[test]
    fn idle_clients_do_not_block_a_probe() {
        let ns = netkit::NetNs::create().expect("this test needs root (CAP_SYS_ADMIN)");
        ns.run(|| {
            std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            listener.set_nonblocking(true).unwrap();
            let health = Arc::new(Health::new(Duration::from_secs(1)));
            std::thread::spawn(move || run(&listener, &health));
            let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS + 10)
                .map(|_| TcpStream::connect(addr).unwrap())
                .collect();
            let mut probe = TcpStream::connect(addr).unwrap();
            probe
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            probe.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
            let mut out = String::new();
            probe.read_to_string(&mut out).unwrap();
            // Answered at all (a blocked server would leave the read to
            // time out); how fast is bench-flanneld-scale's `/healthz` row.
            assert!(out.starts_with("HTTP/1.1 200"), "{out}");
            let mut big = TcpStream::connect(addr).unwrap();
            big.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = big.write_all(&vec![b'a'; MAX_REQUEST + 10]);
            let mut out = Vec::new();
            let _ = big.read_to_end(&mut out);
            assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431"));
            drop(idle);
        })
        .unwrap();
    }
}
