//! What the agent reports about itself: `/healthz`, `/readyz` and
//! `/metrics` (Prometheus text), served by [`http`] from startup on.
//!
//! - `/healthz` (liveness): 200 while starting; once the resync loop runs,
//!   503 when no resync pass has finished for [`stale_after`] (a wedged
//!   loop), and at once when the forwarding threads (udp, wireguard) died: what a
//!   restart would cure. A store or a peer that keeps failing is not (a
//!   liveness probe would only restart the agent in a loop): `/readyz`
//!   says so.
//! - `/readyz`: 503 until subnet.env is written and the peers were listed
//!   and programmed; then 503 whenever the store is failing, our lease is
//!   held by another node, the store's network config changed under us, a
//!   kernel change is failing, the forwarder died, or a wireguard peer's
//!   handshakes fail to authenticate. The body says why.
//!
//! The agent's loop records where it stands each time round (at least
//! every second), whether anything happened or not.

pub mod http;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// No resync pass finished for this long (or 5 resync periods, if
/// longer): `/healthz` fails.
pub const STALE_MIN: Duration = Duration::from_secs(10);

pub fn stale_after(resync: Duration) -> Duration {
    STALE_MIN.max(resync * 5)
}

/// One labelled series of a metric: its labels and its value.
type Series<'a> = (&'a str, &'a AtomicU64);

/// Counters and gauges for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub leases: AtomicU64,
    pub peers: AtomicU64,
    pub repairs: AtomicU64,
    pub store_errors: AtomicU64,
    pub resyncs: AtomicU64,
    pub dataplane_errors: AtomicU64,
    pub udp_forward_errors: AtomicU64,
    pub lease_conflicts: AtomicU64,
    pub leases_invalid: AtomicU64,
    pub config_changed: AtomicU64,
    pub peers_absent: AtomicU64,
    pub full_resync_micros: AtomicU64,
    pub udp_tx_packets: AtomicU64,
    pub udp_tx_bytes: AtomicU64,
    pub udp_rx_packets: AtomicU64,
    pub udp_rx_bytes: AtomicU64,
    pub udp_drop_malformed: AtomicU64,
    pub udp_drop_not_peer: AtomicU64,
    pub udp_drop_spoofed: AtomicU64,
    pub udp_drop_not_ours: AtomicU64,
    pub wg: WgMetrics,
}

/// The wireguard backend's counters.
#[derive(Debug, Default)]
pub struct WgMetrics {
    pub handshakes: AtomicU64,
    /// Peers with Noise state: talked to, and not given up on.
    pub peers_active: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub drop_malformed: AtomicU64,
    pub drop_unknown_peer: AtomicU64,
    pub drop_auth_failed: AtomicU64,
    pub drop_replayed: AtomicU64,
    pub drop_spoofed: AtomicU64,
    pub drop_not_ours: AtomicU64,
    pub drop_send_failed: AtomicU64,
    pub drop_bad_mac: AtomicU64,
    pub drop_under_load: AtomicU64,
    pub drop_rate_limited: AtomicU64,
    pub drop_over_budget: AtomicU64,
}

impl Metrics {
    pub fn render(&self) -> String {
        let rows: [(&str, &str, &str, &AtomicU64); 13] = [
            (
                "flannel_leases",
                "gauge",
                "Leases seen in the store.",
                &self.leases,
            ),
            (
                "flannel_peers",
                "gauge",
                "Peers programmed into the data plane.",
                &self.peers,
            ),
            (
                "flannel_repairs_total",
                "counter",
                "Kernel state found missing and restored.",
                &self.repairs,
            ),
            (
                "flannel_store_errors_total",
                "counter",
                "Failed calls to the lease store.",
                &self.store_errors,
            ),
            (
                "flannel_resyncs_total",
                "counter",
                "Passes comparing the kernel with the store.",
                &self.resyncs,
            ),
            (
                "flannel_dataplane_errors_total",
                "counter",
                "Kernel reads and changes that failed.",
                &self.dataplane_errors,
            ),
            (
                "flannel_udp_forward_errors_total",
                "counter",
                "Packets the udp backend could not pass on.",
                &self.udp_forward_errors,
            ),
            (
                "flannel_lease_conflicts_total",
                "counter",
                "Times this node's lease was found held by another node.",
                &self.lease_conflicts,
            ),
            (
                "flannel_leases_invalid",
                "gauge",
                "Leases in the store ignored as invalid (outside the network, overlapping, malformed).",
                &self.leases_invalid,
            ),
            (
                "flannel_config_changed",
                "gauge",
                "1 while the store's network config differs from the one this agent runs.",
                &self.config_changed,
            ),
            (
                "flannel_leases_unreadable",
                "gauge",
                "Records in the store that cannot be read as leases (a bad key or value; a Node that is not one), each named once in the log.",
                &crate::store::UNREADABLE,
            ),
            (
                "flannel_peers_absent",
                "gauge",
                "Peers missing from the last listing of the store, kept for the grace period.",
                &self.peers_absent,
            ),
            (
                "flannel_full_resync_last_microseconds",
                "gauge",
                "How long the last full comparison of the kernel with the peers took.",
                &self.full_resync_micros,
            ),
        ];
        let mut out: String = rows
            .iter()
            .map(|(name, kind, help, v)| {
                format!(
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n",
                    v.load(Ordering::Relaxed)
                )
            })
            .collect();
        // The udp backend's traffic, by direction, and what it refused.
        let wg = &self.wg;
        let labelled: [(&str, &str, &[Series<'_>]); 6] = [
            (
                "flannel_udp_packets_total",
                "Packets the udp backend carried, by direction.",
                &[
                    ("direction=\"tx\"", &self.udp_tx_packets),
                    ("direction=\"rx\"", &self.udp_rx_packets),
                ],
            ),
            (
                "flannel_udp_bytes_total",
                "Bytes of inner packets the udp backend carried, by direction.",
                &[
                    ("direction=\"tx\"", &self.udp_tx_bytes),
                    ("direction=\"rx\"", &self.udp_rx_bytes),
                ],
            ),
            (
                "flannel_udp_dropped_total",
                "Datagrams the udp backend refused to write to the pod network, by reason.",
                &[
                    ("reason=\"malformed\"", &self.udp_drop_malformed),
                    ("reason=\"not_a_peer\"", &self.udp_drop_not_peer),
                    ("reason=\"spoofed_source\"", &self.udp_drop_spoofed),
                    ("reason=\"not_for_this_node\"", &self.udp_drop_not_ours),
                ],
            ),
            (
                "flannel_wireguard_packets_total",
                "Inner packets the wireguard backend carried, by direction.",
                &[
                    ("direction=\"tx\"", &wg.tx_packets),
                    ("direction=\"rx\"", &wg.rx_packets),
                ],
            ),
            (
                "flannel_wireguard_bytes_total",
                "Bytes of inner packets the wireguard backend carried, by direction.",
                &[
                    ("direction=\"tx\"", &wg.tx_bytes),
                    ("direction=\"rx\"", &wg.rx_bytes),
                ],
            ),
            (
                "flannel_wireguard_dropped_total",
                "Packets the wireguard backend dropped, by reason: datagrams that never reached the pod network, and sends that failed.",
                &[
                    ("reason=\"malformed\"", &wg.drop_malformed),
                    ("reason=\"unknown_peer\"", &wg.drop_unknown_peer),
                    ("reason=\"auth_failed\"", &wg.drop_auth_failed),
                    ("reason=\"replayed\"", &wg.drop_replayed),
                    ("reason=\"spoofed_source\"", &wg.drop_spoofed),
                    ("reason=\"not_for_this_node\"", &wg.drop_not_ours),
                    ("reason=\"send_failed\"", &wg.drop_send_failed),
                    ("reason=\"bad_mac\"", &wg.drop_bad_mac),
                    ("reason=\"under_load\"", &wg.drop_under_load),
                    ("reason=\"rate_limited\"", &wg.drop_rate_limited),
                    ("reason=\"over_budget\"", &wg.drop_over_budget),
                ],
            ),
        ];
        out.push_str(&format!(
            "# HELP flannel_wireguard_handshakes_total WireGuard handshakes completed with peers.\n# TYPE flannel_wireguard_handshakes_total counter\nflannel_wireguard_handshakes_total {}\n",
            wg.handshakes.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "# HELP flannel_wireguard_peers_active Peers with WireGuard state (talked to, and not given up on).\n# TYPE flannel_wireguard_peers_active gauge\nflannel_wireguard_peers_active {}\n",
            wg.peers_active.load(Ordering::Relaxed)
        ));
        for (name, help, series) in labelled {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            for (label, v) in series {
                out.push_str(&format!(
                    "{name}{{{label}}} {}\n",
                    v.load(Ordering::Relaxed)
                ));
            }
        }
        out
    }
}

/// The agent's state as the endpoints see it. Times are milliseconds
/// since `start` plus one (0: never), on the monotonic clock.
#[derive(Debug)]
pub struct Health {
    start: Instant,
    stale_after: Duration,
    pub metrics: Metrics,
    subnet_env: AtomicBool,
    /// What start-up waits for, while it waits.
    starting: Mutex<Option<String>>,
    loop_started: AtomicU64,
    last_pass: AtomicU64,
    last_success: AtomicU64,
    store_failing: AtomicBool,
    /// Why, for `/readyz` (written by the loop, read by the server).
    store_why: Mutex<Option<String>>,
    dataplane_failing: AtomicBool,
    /// The backend whose forwarding threads stopped ("": none did).
    forwarder_dead: Mutex<&'static str>,
    conflict: AtomicBool,
    /// Peers the data plane cannot talk to, and why (wireguard handshakes
    /// that fail to authenticate).
    peers_failing: Mutex<Option<String>>,
}

/// A copy of [`Health`] at one instant, for the verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub now: Duration,
    pub subnet_env: bool,
    pub starting: Option<String>,
    pub loop_started: Option<Duration>,
    pub last_pass: Option<Duration>,
    pub last_success: Option<Duration>,
    pub store_failing: bool,
    pub store_why: Option<String>,
    pub dataplane_failing: bool,
    /// The backend whose forwarding threads stopped ("": none).
    pub forwarder_dead: &'static str,
    pub conflict: bool,
    pub config_changed: bool,
    pub peers_failing: Option<String>,
}

/// Where the agent stands after handling what happened (events, ticks,
/// a full comparison).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// The store is reachable, our lease is ours and in place, and the
    /// peers were listed at least once.
    pub store_ok: bool,
    /// Why not, when not.
    pub store_why: Option<String>,
    /// Kernel changes that failed and are not yet repaired.
    pub dataplane_errors: usize,
    /// Our key holds another node's lease.
    pub conflict: bool,
    /// The store's network config is no longer the one we run.
    pub config_changed: bool,
}

impl Health {
    pub fn new(resync: Duration) -> Health {
        Health {
            start: Instant::now(),
            stale_after: stale_after(resync),
            metrics: Metrics::default(),
            subnet_env: AtomicBool::new(false),
            starting: Mutex::new(None),
            loop_started: AtomicU64::new(0),
            last_pass: AtomicU64::new(0),
            last_success: AtomicU64::new(0),
            store_failing: AtomicBool::new(false),
            store_why: Mutex::new(None),
            dataplane_failing: AtomicBool::new(false),
            forwarder_dead: Mutex::new(""),
            conflict: AtomicBool::new(false),
            peers_failing: Mutex::new(None),
        }
    }

    fn stamp(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn at(v: u64) -> Option<Duration> {
        v.checked_sub(1).map(Duration::from_millis)
    }

    /// Start-up waits for `why` (`None`: no longer).
    pub fn starting(&self, why: Option<String>) {
        if let Ok(mut w) = self.starting.lock() {
            *w = why;
        }
    }

    pub fn subnet_env_written(&self) {
        self.subnet_env.store(true, Ordering::Relaxed);
    }

    pub fn loop_started(&self) {
        self.loop_started.store(self.stamp(), Ordering::Relaxed);
    }

    /// Peers the data plane cannot talk to (`None`: all can be).
    pub fn peers_failing(&self, why: Option<String>) {
        if let Ok(mut w) = self.peers_failing.lock()
            && *w != why
        {
            *w = why;
        }
    }

    /// The forwarding threads (udp, wireguard) stopped.
    pub fn forwarder_died(&self, backend: &'static str) {
        if let Ok(mut d) = self.forwarder_dead.lock() {
            *d = backend;
        }
    }

    /// The agent's loop went round (it does at least every second).
    pub fn record(&self, pass: Pass) {
        let now = self.stamp();
        self.last_pass.store(now, Ordering::Relaxed);
        self.store_failing.store(!pass.store_ok, Ordering::Relaxed);
        if let Ok(mut why) = self.store_why.lock()
            && *why != pass.store_why
        {
            *why = pass.store_why;
        }
        self.dataplane_failing
            .store(pass.dataplane_errors > 0, Ordering::Relaxed);
        self.conflict.store(pass.conflict, Ordering::Relaxed);
        self.metrics
            .config_changed
            .store(u64::from(pass.config_changed), Ordering::Relaxed);
        if pass.store_ok && pass.dataplane_errors == 0 {
            self.last_success.store(now, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            now: self.start.elapsed(),
            subnet_env: self.subnet_env.load(Ordering::Relaxed),
            starting: self.starting.lock().ok().and_then(|w| w.clone()),
            loop_started: Self::at(self.loop_started.load(Ordering::Relaxed)),
            last_pass: Self::at(self.last_pass.load(Ordering::Relaxed)),
            last_success: Self::at(self.last_success.load(Ordering::Relaxed)),
            store_failing: self.store_failing.load(Ordering::Relaxed),
            store_why: self.store_why.lock().ok().and_then(|w| w.clone()),
            dataplane_failing: self.dataplane_failing.load(Ordering::Relaxed),
            forwarder_dead: self.forwarder_dead.lock().map_or("?", |d| *d),
            conflict: self.conflict.load(Ordering::Relaxed),
            config_changed: self.metrics.config_changed.load(Ordering::Relaxed) != 0,
            peers_failing: self.peers_failing.lock().ok().and_then(|w| w.clone()),
        }
    }

    pub fn stale_after(&self) -> Duration {
        self.stale_after
    }
}

/// `/healthz`: `Ok(body)` for 200, `Err(body)` for 503.
pub fn healthz(s: &Snapshot, stale_after: Duration) -> Result<String, String> {
    if !s.forwarder_dead.is_empty() {
        return Err(format!(
            "the {} forwarding threads stopped\n",
            s.forwarder_dead
        ));
    }
    let Some(started) = s.loop_started else {
        return Ok("ok: starting\n".into());
    };
    let since = s.last_pass.unwrap_or(started).max(started);
    let age = s.now.saturating_sub(since);
    if age > stale_after {
        return Err(format!(
            "no resync pass finished for {} s (limit {} s): the agent is stuck\n",
            age.as_secs(),
            stale_after.as_secs()
        ));
    }
    Ok("ok\n".into())
}

/// `/readyz`: `Ok(body)` for 200, `Err(body)` for 503.
pub fn readyz(s: &Snapshot) -> Result<String, String> {
    let mut why: Vec<String> = Vec::new();
    if !s.subnet_env {
        why.push(match &s.starting {
            Some(w) => format!("subnet.env not written yet: {w}"),
            None => "subnet.env not written yet".into(),
        });
    } else if s.last_success.is_none() {
        why.push("no successful resync yet".into());
    }
    if s.conflict {
        why.push("this node's lease is held by another node (see the log)".into());
    }
    if s.config_changed {
        why.push("the network config in the store changed: restart flanneld to apply it".into());
    }
    if s.store_failing {
        why.push(match &s.store_why {
            Some(w) => format!("the lease store is failing: {w}"),
            None => "the lease store is failing".into(),
        });
    }
    if s.dataplane_failing {
        why.push("the data plane could not be programmed".into());
    }
    if !s.forwarder_dead.is_empty() {
        why.push(format!(
            "the {} forwarding threads stopped",
            s.forwarder_dead
        ));
    }
    if let Some(w) = &s.peers_failing {
        why.push(w.clone());
    }
    if why.is_empty() {
        Ok("ready\n".into())
    } else {
        Err(format!("{}\n", why.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE: Duration = Duration::from_secs(10);

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    fn running(now: u64, last: u64) -> Snapshot {
        Snapshot {
            now: Duration::from_secs(now),
            subnet_env: true,
            loop_started: secs(2),
            last_pass: secs(last),
            last_success: secs(last),
            ..Snapshot::default()
        }
    }

    #[test]
    fn healthz_follows_the_age_of_the_last_finished_pass() {
        let starting = Snapshot {
            now: Duration::from_secs(300),
            ..Snapshot::default()
        };
        assert!(healthz(&starting, STALE).is_ok(), "alive while starting");
        assert!(healthz(&running(11, 10), STALE).is_ok());
        assert!(healthz(&running(25, 10), STALE).is_err());
        // The loop started but no pass ever finished: counted from its start.
        let never = Snapshot {
            last_pass: None,
            last_success: None,
            ..running(11, 0)
        };
        assert!(healthz(&never, STALE).is_ok());
        let never = Snapshot {
            last_pass: None,
            last_success: None,
            ..running(13, 0)
        };
        assert!(healthz(&never, STALE).unwrap_err().contains("stuck"));
        // Passes that keep failing (a peer that cannot be routed, a store
        // away): alive, only not ready.
        let failing = Snapshot {
            last_success: secs(3),
            dataplane_failing: true,
            ..running(60, 59)
        };
        assert!(healthz(&failing, STALE).is_ok());
        assert!(readyz(&failing).is_err());
        let dead = Snapshot {
            forwarder_dead: "udp",
            ..running(11, 10)
        };
        assert!(
            healthz(&dead, STALE)
                .unwrap_err()
                .contains("forwarding threads")
        );
    }

    #[test]
    fn readyz_needs_subnet_env_a_good_resync_and_nothing_failing() {
        assert!(
            readyz(&Snapshot::default())
                .unwrap_err()
                .contains("subnet.env")
        );
        let no_pass = Snapshot {
            last_success: None,
            ..running(3, 0)
        };
        assert!(
            readyz(&no_pass)
                .unwrap_err()
                .contains("no successful resync")
        );
        assert_eq!(readyz(&running(11, 10)), Ok("ready\n".into()));
        let store = Snapshot {
            store_failing: true,
            ..running(11, 10)
        };
        assert!(readyz(&store).unwrap_err().contains("lease store"));
        let kernel = Snapshot {
            dataplane_failing: true,
            ..running(11, 10)
        };
        assert!(readyz(&kernel).unwrap_err().contains("data plane"));
    }

    #[test]
    fn a_pass_updates_the_state() {
        let h = Health::new(Duration::from_secs(1));
        assert_eq!(h.stale_after(), STALE_MIN);
        assert_eq!(stale_after(Duration::from_secs(3)), Duration::from_secs(15));
        h.subnet_env_written();
        h.loop_started();
        h.record(Pass {
            store_ok: true,
            dataplane_errors: 1,
            ..Pass::default()
        });
        let s = h.snapshot();
        assert!(s.dataplane_failing && s.last_success.is_none());
        h.record(Pass {
            store_ok: true,
            dataplane_errors: 0,
            ..Pass::default()
        });
        let s = h.snapshot();
        assert!(!s.dataplane_failing && s.last_success.is_some());
        assert!(readyz(&s).is_ok());
        h.record(Pass {
            conflict: true,
            config_changed: true,
            ..Pass::default()
        });
        let why = readyz(&h.snapshot()).unwrap_err();
        assert!(why.contains("held by another node") && why.contains("network config"));
        assert!(h.metrics.render().contains("flannel_config_changed 1\n"));
    }
}
