//! host-local: IP address management from ranges, with its state in files
//! on the node that the reference plugin reads and writes the same way.

pub mod allocator;
pub mod config;
pub mod dns;
pub mod errors;
pub mod fsutil;
pub mod index;
pub mod ip;
pub mod owner;
pub mod pending;
pub mod range;
pub mod stamp;
pub mod store;

use std::net::IpAddr;

use cni_types::result::CniResult;
use cni_types::{CmdArgs, CniError, Plugin};

use crate::config::Config;
use crate::owner::Owner;
use crate::store::Store;

#[derive(Debug, Clone, Copy)]
pub struct HostLocal;

fn open_store(conf: &Config, create: bool) -> Result<Option<Store>, CniError> {
    Store::open(&conf.data_dir, &conf.name, create).map_err(|e| {
        errors::io(
            &format!(
                "failed to open the address store {}",
                conf.store_dir().display()
            ),
            e,
        )
    })
}

fn commit(store: Store) -> Result<(), CniError> {
    let dir = store.dir().display().to_string();
    store
        .commit()
        .map_err(|e| errors::io(&format!("failed to save the address store {dir}"), e))
}

/// Releases every address the attachment holds (the old container-ID-only
/// files when it holds none in the exact layout, as the reference does).
fn release_attachment(store: &mut Store, container_id: &str, ifname: &str) -> Result<(), CniError> {
    let read_err = |e| errors::io("failed to read the address store", e);
    let mut ifname = Some(ifname);
    let mut held = store.held_by(container_id, ifname).map_err(read_err)?;
    if held.is_empty() {
        ifname = None;
        held = store.held_by(container_id, None).map_err(read_err)?;
    }
    let owner = Owner {
        container_id: container_id.to_string(),
        ifname: ifname.map(str::to_string),
    };
    for ip in held {
        store
            .release(ip, &owner)
            .map_err(|e| errors::io(&format!("failed to release {ip}"), e))?;
    }
    Ok(())
}

impl Plugin for HostLocal {
    fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
        let conf = config::load(args)?;
        let dns = match &conf.resolv_conf {
            Some(path) => std::fs::read_to_string(path)
                .map(|text| dns::parse_resolv_conf(&text))
                .map_err(|e| {
                    errors::io(&format!("failed to read resolvConf {}", path.display()), e)
                })?,
            None => Default::default(),
        };
        let Some(mut store) = open_store(&conf, true)? else {
            return Err(errors::internal(
                "the address store vanished while opening".into(),
            ));
        };
        let owner = Owner::new(&args.container_id, &args.ifname);
        let mut requested: Vec<IpAddr> = conf.requested.clone();
        let mut result = CniResult {
            dns,
            routes: conf.routes.clone(),
            ..CniResult::default()
        };
        let mut outcome = Ok(());
        for (i, set) in conf.sets.iter().enumerate() {
            let want = requested
                .iter()
                .position(|ip| set.contains(*ip))
                .map(|p| requested.remove(p));
            match allocator::allocate(&mut store, i, set, &owner, want) {
                Ok(ipc) => result.ips.push(ipc),
                Err(e) => {
                    outcome = Err(e.context(format!("failed to allocate for range {i}")));
                    break;
                }
            }
        }
        if outcome.is_ok() && !requested.is_empty() {
            let list: Vec<String> = requested.iter().map(ToString::to_string).collect();
            outcome = Err(errors::unavailable(format!(
                "failed to allocate all requested IPs: {}",
                list.join(" ")
            )));
        }
        if let Err(e) = outcome {
            // Nothing of a failed ADD stays reserved; what could not be
            // undone is named for the operator, under the ADD's own error.
            let mut left = Vec::new();
            for ipc in &result.ips {
                let ip = ipc.address.ip();
                if let Err(err) = store.release(ip, &owner) {
                    left.push(format!(
                        "{ip} is still reserved in {}: {err}",
                        store.dir().display()
                    ));
                }
            }
            let dir = store.dir().display().to_string();
            if let Err(err) = store.commit() {
                left.push(format!("failed to save the address store {dir}: {err}"));
            }
            return Err(e.rollback_incomplete("host-local", &left));
        }
        commit(store)?;
        Ok(result)
    }

    fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = config::load(args)?;
        let Some(mut store) = open_store(&conf, false)? else {
            return Ok(());
        };
        release_attachment(&mut store, &args.container_id, &args.ifname)?;
        commit(store)
    }

    fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = config::load(args)?;
        let id = &args.container_id;
        let missing = || {
            errors::not_found(format!(
                "host-local: Failed to find address added by container {id}"
            ))
        };
        let Some(mut store) = open_store(&conf, false)? else {
            return Err(missing());
        };
        let read_err = |e| errors::io("failed to read the address store", e);
        let mut held = store.held_by(id, Some(&args.ifname)).map_err(read_err)?;
        if held.is_empty() {
            held = store.held_by(id, None).map_err(read_err)?;
        }
        commit(store)?;
        if held.is_empty() {
            return Err(missing());
        }
        // Beyond the reference: every address of ours in prevResult must
        // still be reserved for this attachment.
        if let Some(prev) = args.conf.prev_result()? {
            for ipc in prev.ips {
                let ip = ipc.address.ip();
                if conf.sets.iter().any(|s| s.contains(ip)) && !held.contains(&ip) {
                    return Err(errors::not_found(format!(
                        "host-local: {ip} from prevResult is not reserved for container {id} ifname {}",
                        args.ifname
                    )));
                }
            }
        }
        Ok(())
    }

    fn gc(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = config::load(args)?;
        let Some(valid) = args.conf.gc_valid_attachments() else {
            return Ok(()); // no list: nothing can be known stale
        };
        let Some(mut store) = open_store(&conf, false)? else {
            return Ok(());
        };
        let all = store
            .scan()
            .map_err(|e| errors::io("failed to read the address store", e))?;
        let keep = |o: &Owner| {
            valid
                .iter()
                .any(|a| o.belongs_to(&a.container_id, &a.ifname))
        };
        let mut kept = Vec::new();
        let mut failures = Vec::new();
        for (ip, owner) in all {
            if keep(&owner) {
                kept.push((ip, owner));
            } else if let Err(e) = store.release(ip, &owner) {
                failures.push(format!("{ip}: {e}"));
                kept.push((ip, owner));
            }
        }
        store.reindex(&kept);
        commit(store)?;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(CniError::io(format!(
                "GC could not release {} address(es): {}",
                failures.len(),
                failures.join("; ")
            )))
        }
    }

    fn status(&self, args: &CmdArgs) -> Result<(), CniError> {
        let conf = config::load(args)?;
        store::check_usable(&conf.data_dir, &conf.name).map_err(|e| {
            CniError::not_available(format!(
                "host-local cannot use its data directory {}: {e}",
                conf.store_dir().display()
            ))
        })
    }

    fn about(&self) -> String {
        "CNI host-local IPAM plugin (cni-rs) for spec 0.1.0-1.1.0".into()
    }
}
