//! Masquerade with iptables (`ipMasqBackend: "iptables"`), in the
//! reference plugin's layout (pkg/ip/ipmasq_iptables_linux.go) for
//! operators who ask for it:
//!
//! ```text
//! -N CNI-<sha512(network + containerID) in hex, first 24 digits>
//! -A CNI-… -d <subnet> -m comment --comment "name: \"<net>\" id: \"<cid>\"" -j ACCEPT
//! -A CNI-… ! -d 224.0.0.0/4 -m comment --comment "…" -j MASQUERADE
//! -A POSTROUTING -s <ip>/32 -m comment --comment "…" -j CNI-…
//! ```
//!
//! (IPv6 the same with ip6tables and `! -d ff00::/8`.) Each change is one
//! `iptables-restore --noflush` process per family, never one per rule;
//! DEL and CHECK read the table with one `iptables -t nat -S` first, as
//! the pod's addresses are no longer known then.

use std::io::Write as _;
use std::process::{Command, Stdio};

use cni_types::CniError;
use ipnetwork::IpNetwork;

use crate::errors::{self, CHECK, MASQUERADE};

/// Whose rules: the network and container (the reference ignores ifname).
pub use crate::attachment::Attachment as Owner;

impl Owner<'_> {
    /// `CNI-` and 24 hex digits of sha512(network + containerID): 28 chars.
    pub fn ipt_chain(&self) -> String {
        let id = format!("{}{}", self.network, self.container_id);
        format!("CNI-{}", crate::attachment::sha512_hex(&id, 12))
    }

    /// `name: "<net>" id: "<cid>"`, quoted for iptables-restore.
    fn comment_arg(&self) -> String {
        let text = format!("name: \"{}\" id: \"{}\"", self.network, self.container_id);
        format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fam {
    V4,
    V6,
}

impl Fam {
    fn of(ip: &IpNetwork) -> Fam {
        if ip.is_ipv4() { Fam::V4 } else { Fam::V6 }
    }

    fn restore(self) -> &'static str {
        match self {
            Fam::V4 => "iptables-restore",
            Fam::V6 => "ip6tables-restore",
        }
    }

    fn list(self) -> &'static str {
        match self {
            Fam::V4 => "iptables",
            Fam::V6 => "ip6tables",
        }
    }

    fn multicast(self) -> &'static str {
        match self {
            Fam::V4 => "224.0.0.0/4",
            Fam::V6 => "ff00::/8",
        }
    }

    fn host_prefix(self) -> u8 {
        match self {
            Fam::V4 => 32,
            Fam::V6 => 128,
        }
    }
}

fn missing_tool(tool: &str, e: &std::io::Error) -> CniError {
    if e.kind() == std::io::ErrorKind::NotFound {
        errors::msg(
            MASQUERADE,
            format!(
                "{tool} not found: ipMasqBackend \"iptables\" needs the iptables package \
                 (install it, e.g. `apt-get install iptables`), or use \"nftables\""
            ),
        )
    } else {
        errors::err(MASQUERADE, format!("failed to run {tool}"), e)
    }
}

/// Feeds `input` to one `<fam>tables-restore --noflush`.
fn restore(fam: Fam, input: &str) -> Result<(), CniError> {
    let tool = fam.restore();
    let mut child = Command::new(tool)
        .args(["--noflush", "--wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| missing_tool(tool, &e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| errors::err(MASQUERADE, format!("failed to write to {tool}"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| errors::err(MASQUERADE, format!("failed to run {tool}"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(errors::msg(
            MASQUERADE,
            format!(
                "{tool} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }
}

/// `<fam>tables -t nat -S`: the nat table as rule lines.
fn list_nat(fam: Fam) -> Result<Vec<String>, CniError> {
    let tool = fam.list();
    let out = Command::new(tool)
        .args(["-w", "-t", "nat", "-S"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| missing_tool(tool, &e))?;
    if !out.status.success() {
        return Err(errors::msg(
            MASQUERADE,
            format!(
                "{tool} -t nat -S failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// The restore input that makes the chain and sends `ips` to it.
fn add_input(who: &Owner<'_>, fam: Fam, ips: &[&IpNetwork]) -> String {
    let chain = who.ipt_chain();
    let comment = who.comment_arg();
    let mut s = format!("*nat\n:{chain} - [0:0]\n");
    let mut subnets: Vec<String> = Vec::new();
    for ip in ips {
        let subnet = format!("{}/{}", ip.network(), ip.prefix());
        if !subnets.contains(&subnet) {
            subnets.push(subnet);
        }
    }
    for subnet in &subnets {
        s += &format!("-A {chain} -d {subnet} -m comment --comment {comment} -j ACCEPT\n");
    }
    s += &format!(
        "-A {chain} ! -d {} -m comment --comment {comment} -j MASQUERADE\n",
        fam.multicast()
    );
    for ip in ips {
        s += &format!(
            "-A POSTROUTING -s {}/{} -m comment --comment {comment} -j {chain}\n",
            ip.ip(),
            fam.host_prefix()
        );
    }
    s.push_str("COMMIT\n");
    s
}

fn families(ips: &[IpNetwork]) -> Vec<(Fam, Vec<&IpNetwork>)> {
    [Fam::V4, Fam::V6]
        .into_iter()
        .map(|f| (f, ips.iter().filter(|ip| Fam::of(ip) == f).collect()))
        .filter(|(_, v): &(Fam, Vec<&IpNetwork>)| !v.is_empty())
        .collect()
}

/// SNAT traffic from each pod address leaving its subnet: the chain made
/// (or flushed and refilled) and the POSTROUTING jumps, one process per
/// family.
pub fn add(who: &Owner<'_>, ips: &[IpNetwork]) -> Result<(), CniError> {
    for (fam, ips) in families(ips) {
        restore(fam, &add_input(who, fam, &ips))?;
    }
    Ok(())
}

/// Whether a `-S` line jumps to `chain` from POSTROUTING.
fn is_jump(line: &str, chain: &str) -> bool {
    line.starts_with("-A POSTROUTING ") && line.ends_with(&format!(" -j {chain}"))
}

/// The restore input that removes `chains` and the POSTROUTING jumps to
/// them, given the table as `-S` lists it; `None` when none exists.
fn removal(lines: &[String], chains: &[String]) -> Option<String> {
    let mut s = String::from("*nat\n");
    let mut any = false;
    for chain in chains {
        for j in lines.iter().filter(|l| is_jump(l, chain)) {
            s += &format!("-D{}\n", &j[2..]);
            any = true;
        }
        if lines.iter().any(|l| *l == format!("-N {chain}")) {
            s += &format!("-F {chain}\n-X {chain}\n");
            any = true;
        }
    }
    s.push_str("COMMIT\n");
    any.then_some(s)
}

/// Removes `chains` (and the jumps to them) in both families, keeping on
/// through failures and reporting the first.
fn remove(chains_of: impl Fn(&[String]) -> Vec<String>) -> Result<(), CniError> {
    let mut failures = Vec::new();
    for fam in [Fam::V4, Fam::V6] {
        let result = list_nat(fam).and_then(|lines| match removal(&lines, &chains_of(&lines)) {
            Some(input) => restore(fam, &input),
            None => Ok(()),
        });
        if let Err(e) = result {
            failures.push(e);
        }
    }
    match failures.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Removes the POSTROUTING jumps to the chain and the chain, in both
/// families, whatever the pod's addresses were.
pub fn del(who: &Owner<'_>) -> Result<(), CniError> {
    let chain = who.ipt_chain();
    remove(|_| vec![chain.clone()])
}

/// Removes the chains of `network`'s attachments that are not in `keep`
/// (found by the comment every rule of ours carries).
pub fn gc(network: &str, keep: &[Owner<'_>]) -> Result<(), CniError> {
    let keep: Vec<String> = keep.iter().map(Owner::ipt_chain).collect();
    let tag = format!("name: \\\"{network}\\\" id:");
    remove(|lines| {
        let mut stale: Vec<String> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("-A CNI-"))
            .filter(|rest| rest.contains(&tag))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(|c| format!("CNI-{c}"))
            .filter(|c| !keep.contains(c))
            .collect();
        stale.sort();
        stale.dedup();
        stale
    })
}

/// The chain with its two kinds of rules, and a jump for each address.
pub fn check(who: &Owner<'_>, ips: &[IpNetwork]) -> Result<(), CniError> {
    let chain = who.ipt_chain();
    for (fam, ips) in families(ips) {
        let lines = list_nat(fam)?;
        let fail = |what: String| Err(errors::msg(CHECK, what));
        if !lines.iter().any(|l| *l == format!("-N {chain}")) {
            return fail(format!("{} chain {chain} not found", fam.list()));
        }
        let masq = lines.iter().any(|l| {
            l.starts_with(&format!("-A {chain} ! -d {} ", fam.multicast()))
                && l.ends_with(" -j MASQUERADE")
        });
        if !masq {
            return fail(format!("masquerade rule not found in chain {chain}"));
        }
        for ip in ips {
            let subnet = format!("-A {chain} -d {}/{} ", ip.network(), ip.prefix());
            if !lines
                .iter()
                .any(|l| l.starts_with(&subnet) && l.ends_with(" -j ACCEPT"))
            {
                return fail(format!(
                    "accept rule for {}/{} not found in chain {chain}",
                    ip.network(),
                    ip.prefix()
                ));
            }
            let src = format!("-A POSTROUTING -s {}/{} ", ip.ip(), fam.host_prefix());
            if !lines
                .iter()
                .any(|l| l.starts_with(&src) && is_jump(l, &chain))
            {
                return fail(format!(
                    "POSTROUTING rule for {} to chain {chain} not found",
                    ip.ip()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_and_restore_input_follow_the_reference() {
        let who = Owner {
            network: "mynet",
            container_id: "cid",
            ifname: "eth0",
        };
        let chain = who.ipt_chain();
        assert_eq!(chain.len(), 28);
        assert!(chain.starts_with("CNI-"));
        let ip: IpNetwork = "10.88.0.5/24".parse().unwrap();
        let input = add_input(&who, Fam::V4, &[&ip]);
        let c = r#""name: \"mynet\" id: \"cid\"""#;
        assert_eq!(
            input,
            format!(
                "*nat\n:{chain} - [0:0]\n\
                 -A {chain} -d 10.88.0.0/24 -m comment --comment {c} -j ACCEPT\n\
                 -A {chain} ! -d 224.0.0.0/4 -m comment --comment {c} -j MASQUERADE\n\
                 -A POSTROUTING -s 10.88.0.5/32 -m comment --comment {c} -j {chain}\n\
                 COMMIT\n"
            )
        );
    }
}
