//! The report: one table per scenario, each figure beside its target
//! (and beside upstream's, with the ratio, when upstream was measured).

use super::cluster::ClusterFigs;
use super::kube::{IDLE, KUBE_CHANGES, KubeFigs};
use super::setup::{
    CHANGE_LIMIT, CHURN_SETTLE, CHURN_TIME, DEVICE_LIMIT, HEALTH_IDLE, REPAIR_LIMIT,
};
use super::single::{Damage, Single};
use super::wireguard::WgFigs;
use crate::stats::percentile;
use crate::table::{print_table, row, show_mib, show_ms, show_pct};

pub(crate) fn missed(v: &[f64]) -> usize {
    v.iter().filter(|x| x.is_infinite()).count()
}

pub fn report_single(n: usize, ours: &Single, upstream: Option<&Single>) {
    let up = upstream.is_some();
    let u = |f: fn(&Single) -> Option<f64>| upstream.and_then(f);
    let repairs = |s: &Single| -> Vec<f64> { s.repair_ms.iter().map(|(_, m)| *m).collect() };
    let mut rows = vec![
        row(
            &format!("all {n} peers programmed after start"),
            Some(500.0),
            "<= 500 ms",
            ours.programmed_ms,
            u(|s| s.programmed_ms),
            show_ms,
        ),
        row(
            "RSS after settling",
            Some(10.0),
            "<= 10 MiB",
            ours.rss_mib,
            u(|s| s.rss_mib),
            show_mib,
        ),
        row(
            "peak RSS (VmHWM)",
            None,
            "",
            ours.peak_rss_mib,
            u(|s| s.peak_rss_mib),
            show_mib,
        ),
        row(
            "threads",
            None,
            "",
            ours.threads.map(|t| t as f64),
            u(|s| s.threads.map(|t| t as f64)),
            |v| v.map_or("-".into(), |x| format!("{x:.0}")),
        ),
    ];
    let mut cpu = row(
        "steady CPU over 10 s (% of a core)",
        Some(0.2),
        "<= 0.2 %, <= upstream",
        ours.steady_cpu,
        u(|s| s.steady_cpu),
        show_pct,
    );
    if let (Some(o), Some(Some(x))) = (ours.steady_cpu, upstream.map(|s| s.steady_cpu))
        && o > x
        && cpu.met == Some(true)
    {
        cpu.met = Some(false);
        cpu.why = " (> upstream)";
    }
    rows.push(cpu);
    rows.push(row(
        "full comparison (safety net), one pass",
        None,
        "rare (5 min)",
        ours.full_pass_ms,
        None,
        show_ms,
    ));
    rows.push(row(
        &format!(
            "/healthz answer, {HEALTH_IDLE} idle + 1 slow, max of {}",
            ours.health_ms.len()
        ),
        Some(100.0),
        "<= 100 ms",
        percentile(&ours.health_ms, 1.0),
        None,
        show_ms,
    ));
    let ch = |s: &Single, p: f64| percentile(&s.change_ms, p);
    rows.push(row(
        &format!(
            "lease change -> kernel, p50 ({} changes)",
            ours.change_ms.len()
        ),
        None,
        "",
        ch(ours, 0.5),
        upstream.and_then(|s| ch(s, 0.5)),
        show_ms,
    ));
    rows.push(row(
        "lease change -> kernel, p99",
        Some(50.0),
        "<= 50 ms",
        ch(ours, 0.99),
        upstream.and_then(|s| ch(s, 0.99)),
        show_ms,
    ));
    rows.push(row(
        "lease change -> kernel, max",
        None,
        "",
        ch(ours, 1.0),
        upstream.and_then(|s| ch(s, 1.0)),
        show_ms,
    ));
    rows.push(row(
        &format!(
            "repair after deletion, p50 ({} deletions)",
            ours.repair_ms.len()
        ),
        None,
        "",
        percentile(&repairs(ours), 0.5),
        upstream.and_then(|s| percentile(&repairs(s), 0.5)),
        show_ms,
    ));
    rows.push(row(
        "repair after deletion, p99",
        Some(1000.0),
        "<= 1000 ms",
        percentile(&repairs(ours), 0.99),
        upstream.and_then(|s| percentile(&repairs(s), 0.99)),
        show_ms,
    ));
    for kind in [
        Damage::Route,
        Damage::Fdb,
        Damage::Neighbour,
        Damage::Device,
    ] {
        let of = |s: &Single| -> Option<f64> {
            let v: Vec<f64> = s
                .repair_ms
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, m)| *m)
                .collect();
            percentile(&v, 1.0)
        };
        rows.push(row(
            &format!("  repair max: {}", kind.name()),
            None,
            "",
            of(ours),
            upstream.and_then(of),
            show_ms,
        ));
    }
    rows.push(row(
        &format!("churn: writes/s achieved ({} s)", CHURN_TIME.as_secs()),
        None,
        "",
        ours.churn_rate,
        u(|s| s.churn_rate),
        |v| v.map_or("-".into(), |x| format!("{x:.0}/s")),
    ));
    rows.push(row(
        "churn: CPU during it (% of a core)",
        None,
        "",
        ours.churn_cpu,
        u(|s| s.churn_cpu),
        show_pct,
    ));
    let conv = |s: &Single| -> Option<f64> {
        if s.churn_ops == 0 {
            None
        } else {
            Some(s.churn_converged_ms.unwrap_or(f64::INFINITY))
        }
    };
    let mut r = row(
        "churn: kernel = store exactly, after",
        Some(f64::MAX),
        &format!("equal (<= {} s)", CHURN_SETTLE.as_secs()),
        conv(ours),
        upstream.and_then(conv),
        show_ms,
    );
    r.met = conv(ours).map(f64::is_finite);
    rows.push(r);
    print_table(
        &format!(
            "== one node, N = {n} peers (vxlan; one etcd lease per subnet; etcd on the simulated underlay) =="
        ),
        &rows,
        up,
    );
    for (label, s) in [("ours", Some(ours)), ("upstream", upstream)] {
        let Some(s) = s else { continue };
        let mut lines = Vec::new();
        if let Some(l) = s.load_s {
            lines.push(format!("{n} leases loaded into etcd in {l:.2} s"));
        }
        let m = missed(&s.change_ms);
        if m > 0 {
            lines.push(format!(
                "{m} of {} lease changes not seen within {} s",
                s.change_ms.len(),
                CHANGE_LIMIT.as_secs()
            ));
        }
        let r = repairs(s);
        let m = missed(&r);
        if m > 0 {
            lines.push(format!(
                "{m} of {} deletions not repaired within {} s ({} s for the device)",
                r.len(),
                REPAIR_LIMIT.as_secs(),
                DEVICE_LIMIT.as_secs()
            ));
        }
        if s.repair_skipped > 0 {
            lines.push(format!(
                "{} deletions skipped: the thing to delete was not there",
                s.repair_skipped
            ));
        }
        if let Some(late) = &s.churn_late {
            lines.push(format!("churn: {late}"));
        }
        lines.extend(s.notes.iter().cloned());
        for l in lines {
            println!("  [{label}] {}", l.replace('\n', "\n      "));
        }
    }
}

pub fn report_cluster(f: &ClusterFigs) {
    let rows = vec![
        row(
            &format!(
                "every pair routed after start ({} pairs)",
                f.agents * (f.agents - 1)
            ),
            Some(1000.0),
            "<= 1000 ms",
            f.routed_ms,
            None,
            show_ms,
        ),
        row(
            "  a host routed to all others, p50",
            None,
            "",
            f.routed_p50_ms,
            None,
            show_ms,
        ),
        row(
            "steady CPU of etcd over 10 s",
            Some(2.0),
            "<= 2 %",
            f.etcd_cpu,
            None,
            show_pct,
        ),
        row(
            "steady CPU of an agent, max",
            Some(0.2),
            "<= 0.2 % each",
            f.agent_cpu_max,
            None,
            show_pct,
        ),
        row(
            "steady CPU of an agent, mean",
            None,
            "",
            f.agent_cpu_mean,
            None,
            show_pct,
        ),
        row(
            "RSS of an agent, max",
            Some(10.0),
            "<= 10 MiB",
            f.agent_rss_max,
            None,
            show_mib,
        ),
        row(
            "RSS of an agent, mean",
            None,
            "",
            f.agent_rss_mean,
            None,
            show_mib,
        ),
        row(
            "node out of service gone from all others",
            Some(1000.0),
            "<= 1000 ms",
            f.gone_ms,
            None,
            show_ms,
        ),
        row(
            "  gone from a host, p50",
            None,
            "",
            f.gone_p50_ms,
            None,
            show_ms,
        ),
    ];
    print_table(
        &format!(
            "== cluster of {} agents on one etcd, started at once (ours) ==",
            f.agents
        ),
        &rows,
        false,
    );
    println!(
        "  [ours] {} agents spawned in {:.0} ms",
        f.agents, f.spawn_ms
    );
    for n in &f.notes {
        println!("  [ours] {}", n.replace('\n', "\n      "));
    }
}

/// The requests of a map as "N (verb resource xK, ...)".
fn show_requests(m: &std::collections::BTreeMap<String, usize>) -> String {
    let total: usize = m.values().sum();
    if total == 0 {
        return "0".into();
    }
    let each: Vec<String> = m.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    format!("{total} ({})", each.join(", "))
}

pub fn report_kube(n: usize, f: &KubeFigs) {
    let ch = |p: f64| percentile(&f.change_ms, p);
    let mean = (!f.change_ms.is_empty())
        .then(|| f.change_ms.iter().sum::<f64>() / f.change_ms.len() as f64);
    let idle = f.idle_requests.as_ref().map(|m| m.values().sum::<usize>());
    let mut rows = vec![
        row(
            &format!("every peer's route in the kernel, from the start ({n} Nodes)"),
            Some(1300.0),
            "<= 1300 ms",
            f.programmed_ms,
            None,
            show_ms,
        ),
        row(
            "RSS after settling",
            Some(15.0),
            "<= 15 MiB",
            f.rss_mib,
            None,
            show_mib,
        ),
        row(
            "  of which data (RssAnon; the rest: the program's own pages)",
            None,
            "",
            f.anon_rss_mib,
            None,
            show_mib,
        ),
        row("peak RSS (VmHWM)", None, "", f.peak_rss_mib, None, show_mib),
        row(
            "threads",
            None,
            "",
            f.threads.map(|t| t as f64),
            None,
            |v| v.map_or("-".into(), |x| format!("{x:.0}")),
        ),
        row(
            &format!("idle CPU over {} s (% of a core)", IDLE.as_secs()),
            Some(0.2),
            "<= 0.2 %",
            f.idle_cpu,
            None,
            show_pct,
        ),
        row(
            &format!("annotation change -> kernel, mean ({KUBE_CHANGES} changes)"),
            None,
            "",
            mean,
            None,
            show_ms,
        ),
        row(
            "annotation change -> kernel, p99",
            None,
            "",
            ch(0.99),
            None,
            show_ms,
        ),
        row(
            "annotation change -> kernel, max",
            Some(25.0),
            "<= 25 ms",
            ch(1.0),
            None,
            show_ms,
        ),
    ];
    let mut r = row(
        &format!("requests while idle ({} s, audit log)", IDLE.as_secs()),
        Some(0.0),
        "none but the one watch",
        idle.map(|v| v as f64),
        None,
        |v| v.map_or("-".into(), |x| format!("{x:.0}")),
    );
    r.ours = f.idle_requests.as_ref().map_or("-".into(), show_requests);
    rows.push(r);
    print_table(
        &format!(
            "== kube subnet manager, one node, N = {n} Nodes (vxlan; a real kube-apiserver on the simulated underlay) =="
        ),
        &rows,
        false,
    );
    let mut lines = Vec::new();
    if let (Some(s), Some(k)) = (f.fill_s, f.node_kib) {
        lines.push(format!(
            "{n} Nodes of {k:.1} KiB each (as JSON) created in {s:.1} s"
        ));
    }
    if let Some(m) = &f.startup_requests {
        lines.push(format!(
            "requests from the start until every peer was programmed and 2 s after: {}",
            show_requests(m)
        ));
    }
    let m = missed(&f.change_ms);
    if m > 0 {
        lines.push(format!(
            "{m} of {} annotation changes not seen within {} s",
            f.change_ms.len(),
            CHANGE_LIMIT.as_secs()
        ));
    }
    lines.extend(f.notes.iter().cloned());
    for l in lines {
        println!("  [ours] {}", l.replace('\n', "\n      "));
    }
}

pub fn report_wireguard(n: usize, f: &WgFigs) {
    let count = |v: Option<u64>| v.map(|t| t as f64);
    let rows = vec![
        row(
            &format!("all {n} peers held after start (flannel_peers)"),
            None,
            "",
            f.programmed_ms,
            None,
            show_ms,
        ),
        row(
            "RSS, no peer talked to yet",
            None,
            "",
            f.rss_mib,
            None,
            show_mib,
        ),
        row(
            "idle CPU over 10 s, no peer talked to (% of a core)",
            Some(0.2),
            "<= 0.2 %",
            f.fresh_cpu,
            None,
            show_pct,
        ),
        row(
            "RSS, a packet sent to every peer",
            None,
            "",
            f.made_rss_mib,
            None,
            show_mib,
        ),
        row(
            "peak RSS (VmHWM) 100 s later",
            None,
            "",
            f.peak_rss_mib,
            None,
            show_mib,
        ),
        row("threads", None, "", count(f.threads), None, |v| {
            v.map_or("-".into(), |x| format!("{x:.0}"))
        }),
        row(
            "CPU over 10 s while every handshake goes unanswered (% of a core)",
            None,
            "",
            f.retrying_cpu,
            None,
            show_pct,
        ),
        row(
            "idle CPU over 10 s, every peer's handshake given up (100 s on)",
            None,
            "",
            f.idle_cpu,
            None,
            show_pct,
        ),
    ];
    print_table(
        &format!(
            "== wireguard backend, one node, N = {n} fake peers (keys in their leases, nobody at their addresses) =="
        ),
        &rows,
        false,
    );
    if let Some(s) = f.load_s {
        println!("  [ours] {n} leases loaded in {s:.1} s");
    }
    for l in &f.notes {
        println!("  [ours] {}", l.replace('\n', "\n      "));
    }
}
