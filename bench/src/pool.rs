//! Scenario 2: the cost of one ADD and one DEL in an empty pool and in a
//! pool that is nearly full.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::plugin::{self, Plugin, Verb};
use crate::stats::{Summary, summarise};
use crate::store::{self, FIRST_HOST};
use crate::subnet::Subnet;
use crate::tempdir::TempDir;

/// One ADD and the DEL of the same attachment.
#[derive(Debug, Clone, Copy)]
pub struct Pair {
    pub add: Duration,
    pub del: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// The first call after the store was written by someone else (here: the
    /// fill); ours rebuilds its index then, so it is kept out of `add`/`del`.
    pub first: Pair,
    pub add: Summary,
    pub del: Summary,
}

/// A fresh store for one implementation, pre-filled with `fill` reservations.
#[derive(Debug)]
pub struct Pool {
    data: TempDir,
    subnet: Subnet,
    fill: u32,
}

impl Pool {
    pub fn new(label: &str, subnet: Subnet, fill: u32) -> Result<Pool, String> {
        let data = TempDir::new(&format!("{label}-pool{fill}"))?;
        if fill > 0 {
            let start = Instant::now();
            store::prefill(data.path(), subnet, fill)?;
            flush(data.path());
            eprintln!(
                "  ({label}: wrote {fill} reservations in {:.1} s)",
                start.elapsed().as_secs_f64()
            );
        }
        Ok(Pool { data, subnet, fill })
    }
}

/// Writes the fill back now, so that its writeback does not land in the
/// timings; only a cost to the figures if it fails, hence a warning.
fn flush(path: &Path) {
    match Command::new("sync").arg("-f").arg(path).status() {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("warning: sync -f {}: {status}", path.display()),
        Err(e) => eprintln!("warning: cannot run sync: {e}"),
    }
}

/// Measures `runs` ADD+DEL pairs, after one unmeasured first pair, in `pool`
/// (which no other implementation should have touched).
pub fn measure(plugin: &Plugin, pool: &Pool, runs: usize) -> Result<Case, String> {
    let Pool { data, subnet, fill } = pool;
    let (subnet, fill) = (*subnet, *fill);
    let config = plugin::config(data.path(), &subnet.to_string())?;
    let probe = Probe {
        plugin,
        data_dir: data.path(),
        subnet,
        fill,
        config: &config,
    };

    let first = probe.add_del("probe-first")?;
    let mut adds = Vec::with_capacity(runs);
    let mut dels = Vec::with_capacity(runs);
    for n in 0..runs {
        let pair = probe.add_del(&format!("probe-{n}"))?;
        adds.push(pair.add);
        dels.push(pair.del);
    }

    // The fill must come through untouched: nothing taken over or released.
    let left = store::contents(data.path())?;
    let in_fill = |ip: &Ipv4Addr| {
        subnet
            .offset_of(*ip)
            .is_some_and(|o| (FIRST_HOST..FIRST_HOST + fill).contains(&o))
    };
    let fill_len = usize::try_from(fill).map_err(|e| e.to_string())?;
    if left.reservations.len() != fill_len
        || !left.reservations.iter().all(in_fill)
        || !left.unexpected.is_empty()
    {
        return Err(format!(
            "{}: after the runs the store holds {} reservations (expected the {fill} of the \
             fill) and these other files: {:?}",
            plugin.label,
            left.reservations.len(),
            left.unexpected
        ));
    }
    Ok(Case {
        first,
        add: summarise(&adds)?,
        del: summarise(&dels)?,
    })
}

struct Probe<'a> {
    plugin: &'a Plugin,
    data_dir: &'a Path,
    subnet: Subnet,
    fill: u32,
    config: &'a [u8],
}

impl Probe<'_> {
    /// ADD then DEL of `id`, timed separately, with their effect on the
    /// store checked outside the timings.
    fn add_del(&self, id: &str) -> Result<Pair, String> {
        let label = self.plugin.label;
        let (add, out) = self.plugin.run(Verb::Add, id, self.config)?;
        plugin::check_success(self.plugin, Verb::Add, id, &out)?;
        let ip = plugin::added_address(self.plugin, id, &out)?;
        let offset = self
            .subnet
            .offset_of(ip)
            .ok_or_else(|| format!("{label}: {id} got {ip}, outside {}", self.subnet))?;
        if (FIRST_HOST..FIRST_HOST + self.fill).contains(&offset) {
            return Err(format!("{label}: {id} got {ip}, which the fill holds"));
        }
        let file = store::network_dir(self.data_dir).join(ip.to_string());
        if !file.exists() {
            return Err(format!(
                "{label}: ADD of {id} returned {ip} but wrote no {}",
                file.display()
            ));
        }

        let (del, out) = self.plugin.run(Verb::Del, id, self.config)?;
        plugin::check_success(self.plugin, Verb::Del, id, &out)?;
        if file.exists() {
            return Err(format!(
                "{label}: DEL of {id} left {} behind",
                file.display()
            ));
        }
        Ok(Pair { add, del })
    }
}
