//! etcd v3 with upstream flanneld's layout, so our agents and upstream's
//! share one etcd: `<prefix>/config`, and `<prefix>/subnets/<key>` holding
//! the `LeaseAttrs` JSON under a 24 h etcd lease (no lease: a reservation).
//! A lease is created by a transaction that puts only if the key does not
//! exist; a lost race answers `false` and the caller tries another subnet.
//!
//! One etcd lease per key: a renewal keeps the key's etcd lease alive
//! (LeaseKeepAlive) instead of granting another, and a lease a key no
//! longer uses (replaced, or its key deleted) is revoked, so that
//! `etcdctl lease list` shows one lease per node.

mod client;
mod feed;
pub mod wire;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tokio::runtime::Runtime;
use tonic::Status;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use self::client::{Client, ConnectSpec};
use super::{NOT_A_SUBNET_KEY, Store, StoreError, Unreadable};
use crate::flags::Options;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};

pub struct EtcdStore {
    // The client belongs to the runtime that made it.
    rt: Runtime,
    client: Client,
    /// How we reached etcd: the feed makes its own connection with it.
    spec: ConnectSpec,
    prefix: String,
    endpoints: String,
    /// The etcd lease last attached to each key we wrote, so that a
    /// renewal keeps it alive and a replaced one is revoked.
    held: HashMap<SubnetKey, Held>,
    unreadable: Unreadable,
}

/// An etcd lease of ours: its ID, the TTL (seconds) we asked for, and
/// the one etcd granted (it raises very short ones to its minimum).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Held {
    id: i64,
    asked: i64,
    granted: i64,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn etcd_err(what: &str, endpoints: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Invalid(format!("etcd {endpoints}: {what}: {e}"))
}

fn read(path: &str, what: &str) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::Io {
        what: format!("cannot read {what} {path}"),
        source,
    })
}

/// As upstream: TLS with a client certificate when `--etcd-certfile` and
/// `--etcd-keyfile` are given; the server's certificate checked against
/// `--etcd-cafile` when given, else against the system's CA certificates
/// (its trust store, or those SSL_CERT_FILE / SSL_CERT_DIR name). Always
/// `Some`: it is used for https:// endpoints only.
fn tls_config(opts: &Options) -> Result<Option<ClientTlsConfig>, StoreError> {
    let mut tls = ClientTlsConfig::new();
    if let (Some(cert), Some(key)) = (&opts.etcd_certfile, &opts.etcd_keyfile) {
        tls = tls.identity(Identity::from_pem(
            read(cert, "--etcd-certfile")?,
            read(key, "--etcd-keyfile")?,
        ));
    }
    tls = match &opts.etcd_cafile {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca, "--etcd-cafile")?)),
        None => tls.with_native_roots(),
    };
    Ok(Some(tls))
}

impl EtcdStore {
    pub fn connect(opts: &Options) -> Result<EtcdStore, StoreError> {
        let rt = runtime()?;
        let credentials = match (&opts.etcd_username, &opts.etcd_password) {
            (Some(user), Some(pass)) => Some((user.clone(), pass.clone())),
            _ => None,
        };
        let spec = ConnectSpec {
            endpoints: opts.etcd_endpoints.clone(),
            tls: tls_config(opts)?,
            credentials,
        };
        let endpoints = opts.etcd_endpoints.join(",");
        let client = rt
            .block_on(Client::connect(&spec))
            .map_err(|e| etcd_err("cannot connect", &endpoints, e))?;
        Ok(EtcdStore {
            rt,
            client,
            spec,
            prefix: opts.etcd_prefix.trim_end_matches('/').to_string(),
            endpoints,
            held: HashMap::new(),
            unreadable: Unreadable::default(),
        })
    }

    fn subnet_key(&self, key: &SubnetKey) -> String {
        format!("{}/subnets/{key}", self.prefix)
    }

    fn value(attrs: &LeaseAttrs) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(attrs).map_err(|e| StoreError::Invalid(e.to_string()))
    }
}

/// A current-thread runtime: the store's, and the feed's own.
fn runtime() -> Result<Runtime, StoreError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| StoreError::Io {
            what: "cannot start the etcd client".into(),
            source,
        })
}

/// A lease from its etcd pair, `dir` being `<prefix>/subnets/`; why not
/// when the key or value cannot be read.
fn parse_lease(dir: &str, kv: &wire::KeyValue) -> Result<Lease, String> {
    let name = String::from_utf8_lossy(&kv.key);
    let key = name
        .strip_prefix(dir)
        .and_then(SubnetKey::parse)
        .ok_or(NOT_A_SUBNET_KEY)?;
    let attrs = serde_json::from_slice::<LeaseAttrs>(&kv.value).map_err(|e| e.to_string())?;
    // The exact expiry would cost a call per key; only our own lease's
    // matters, and the agent tracks that one itself.
    let expires = (kv.lease != 0).then(|| SystemTime::now() + crate::alloc::LEASE_TTL);
    Ok(Lease {
        key,
        attrs,
        expires,
    })
}

/// The leases among `kvs` (all under `dir`, `<prefix>/subnets/`), by
/// key; the unreadable ones are left out and handed to `unreadable`.
fn parse_leases<'a>(
    dir: &str,
    kvs: impl IntoIterator<Item = &'a wire::KeyValue>,
    unreadable: &mut Unreadable,
) -> Vec<Lease> {
    let mut out = Vec::new();
    let mut bad = std::collections::BTreeMap::new();
    for kv in kvs {
        match parse_lease(dir, kv) {
            Ok(lease) => out.push(lease),
            Err(why) => {
                bad.insert(String::from_utf8_lossy(&kv.key).into_owned(), why);
            }
        }
    }
    unreadable.update(bad);
    out.sort_by_key(|l| l.key);
    out
}

/// etcd's answer when a put names a lease that no longer exists.
fn lease_not_found(s: &Status) -> bool {
    s.message().contains("lease not found")
}

/// The key's lease seconds as etcd counts them.
fn ttl_secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)
}

/// One lease call at a time against one client, with errors worded for
/// the log.
struct Leases<'a> {
    client: &'a mut Client,
    endpoints: &'a str,
}

impl Leases<'_> {
    fn err(&self, what: &str, e: &Status) -> StoreError {
        etcd_err(what, self.endpoints, client::describe(e))
    }

    /// Revokes the leases a key no longer uses (0 and `keep` are skipped).
    /// Best effort: one left behind still expires at its TTL.
    async fn revoke_replaced(&mut self, ids: &[i64], keep: i64) {
        let mut done = Vec::with_capacity(ids.len());
        for &id in ids {
            if id == 0 || id == keep || done.contains(&id) {
                continue;
            }
            done.push(id);
            match self.client.lease_revoke(id).await {
                Ok(()) => crate::debug!("revoked etcd lease {id:x}, which a key no longer uses"),
                Err(e) if lease_not_found(&e) => {}
                Err(e) => crate::warn!(
                    "cannot revoke etcd lease {id:x}, which a key no longer uses (it expires by itself): {}",
                    client::describe(&e)
                ),
            }
        }
    }

    /// Puts a lease only if nobody holds the key: `None` when someone
    /// does, else `Some` of the etcd lease it was put under (`None` for a
    /// reservation).
    async fn create(
        &mut self,
        path: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<Option<Option<Held>>, StoreError> {
        let held = match ttl {
            Some(t) => {
                let (id, granted) = self
                    .client
                    .lease_grant(t)
                    .await
                    .map_err(|e| self.err("cannot grant a lease", &e))?;
                Some(Held {
                    id,
                    asked: ttl_secs(t),
                    granted,
                })
            }
            None => None,
        };
        let id = held.map_or(0, |h| h.id);
        match self.client.create(path, value, id).await {
            Ok(true) => Ok(Some(held)),
            outcome => {
                // The grant is unused: it would expire anyway, but only
                // after a whole TTL.
                self.revoke_replaced(&[id], 0).await;
                match outcome {
                    Err(e) => Err(self.err("cannot create a lease", &e)),
                    _ => Ok(None),
                }
            }
        }
    }

    /// Writes a lease, keeping its etcd lease alive rather than granting a
    /// new one when it can: the lease attached to the key (learned from
    /// etcd, so also after a restart), else the one `held` names. Returns
    /// the etcd lease the key now has.
    async fn rewrite(
        &mut self,
        path: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        held: Option<Held>,
    ) -> Result<Option<Held>, StoreError> {
        let current = self
            .client
            .range(path, false)
            .await
            .map_err(|e| self.err("cannot read a lease", &e))?
            .kvs
            .into_iter()
            .next();
        let attached = current.as_ref().map_or(0, |kv| kv.lease);
        let replaced = [attached, held.map_or(0, |h| h.id)];
        let unchanged = |id: i64| {
            current
                .as_ref()
                .is_some_and(|kv| kv.lease == id && kv.value == value)
        };
        let Some(ttl) = ttl else {
            // A reservation has no etcd lease.
            if !unchanged(0) {
                self.client
                    .put(path, value, 0)
                    .await
                    .map_err(|e| self.err("cannot write a reservation", &e))?;
            }
            self.revoke_replaced(&replaced, 0).await;
            return Ok(None);
        };
        let candidate = if attached != 0 {
            Some(attached)
        } else {
            held.map(|h| h.id)
        };
        if let Some(id) = candidate {
            let left = self
                .client
                .lease_keep_alive(id)
                .await
                .map_err(|e| self.err("cannot renew a lease", &e))?;
            // A keep-alive renews to the TTL the lease was granted: keep it
            // if that is the TTL asked for (or what etcd made of that).
            let asked = ttl_secs(ttl);
            let kept = Held {
                id,
                asked,
                granted: left,
            };
            let as_granted = held.is_some_and(|h| h == kept);
            if left > 0 && (left == asked || as_granted) {
                if unchanged(id) {
                    self.revoke_replaced(&replaced, id).await;
                    return Ok(Some(kept));
                }
                match self.client.put(path, value.clone(), id).await {
                    Ok(_) => {
                        self.revoke_replaced(&replaced, id).await;
                        return Ok(Some(kept));
                    }
                    // It expired between the keep-alive and the put: a
                    // new grant below.
                    Err(e) if lease_not_found(&e) => {}
                    Err(e) => return Err(self.err("cannot renew a lease", &e)),
                }
            }
        }
        let (id, granted) = self
            .client
            .lease_grant(ttl)
            .await
            .map_err(|e| self.err("cannot grant a lease", &e))?;
        if let Err(e) = self.client.put(path, value, id).await {
            self.revoke_replaced(&[id], 0).await;
            return Err(self.err("cannot renew a lease", &e));
        }
        self.revoke_replaced(&replaced, id).await;
        Ok(Some(Held {
            id,
            asked: ttl_secs(ttl),
            granted,
        }))
    }
}

impl Store for EtcdStore {
    fn feed(&mut self, sink: super::Sink, relist: Duration) -> Result<(), StoreError> {
        feed::start(
            self.spec.clone(),
            &self.prefix,
            &self.endpoints,
            sink,
            relist,
        )
    }

    fn network_config(&mut self) -> Result<String, StoreError> {
        let key = format!("{}/config", self.prefix);
        let resp = self
            .rt
            .block_on(self.client.range(&key, false))
            .map_err(|e| {
                etcd_err(
                    "cannot read the network config",
                    &self.endpoints,
                    client::describe(&e),
                )
            })?;
        let kv = resp.kvs.into_iter().next().ok_or_else(|| {
            StoreError::Invalid(format!(
                "etcd {}: no network config at {key}: did you create your config using the etcd v3 API?",
                self.endpoints
            ))
        })?;
        String::from_utf8(kv.value)
            .map_err(|e| etcd_err("the network config is not text", &self.endpoints, e))
    }

    fn leases(&mut self) -> Result<Vec<Lease>, StoreError> {
        let dir = format!("{}/subnets/", self.prefix);
        let resp = self
            .rt
            .block_on(self.client.range(&dir, true))
            .map_err(|e| etcd_err("cannot list leases", &self.endpoints, client::describe(&e)))?;
        Ok(parse_leases(&dir, &resp.kvs, &mut self.unreadable))
    }

    fn create(
        &mut self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let path = self.subnet_key(key);
        let value = Self::value(attrs)?;
        let earlier = self.held.get(key).copied();
        let mut leases = Leases {
            client: &mut self.client,
            endpoints: &self.endpoints,
        };
        let created = self.rt.block_on(async {
            let created = leases.create(&path, value, ttl).await?;
            if let (Some(now), Some(earlier)) = (created, earlier) {
                // The key was deleted under us and is ours again: the
                // grant it had is of no use now.
                let keep = now.map_or(0, |h| h.id);
                leases.revoke_replaced(&[earlier.id], keep).await;
            }
            Ok::<_, StoreError>(created)
        })?;
        match created {
            None => Ok(false),
            Some(now) => {
                match now {
                    Some(h) => self.held.insert(*key, h),
                    None => self.held.remove(key),
                };
                Ok(true)
            }
        }
    }

    fn update(
        &mut self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let path = self.subnet_key(key);
        let value = Self::value(attrs)?;
        let held = self.held.get(key).copied();
        let mut leases = Leases {
            client: &mut self.client,
            endpoints: &self.endpoints,
        };
        let now = self.rt.block_on(leases.rewrite(&path, value, ttl, held))?;
        match now {
            Some(h) => self.held.insert(*key, h),
            None => self.held.remove(key),
        };
        Ok(())
    }

    fn delete(&mut self, key: &SubnetKey) -> Result<(), StoreError> {
        let path = self.subnet_key(key);
        let held = self.held.remove(key);
        let mut leases = Leases {
            client: &mut self.client,
            endpoints: &self.endpoints,
        };
        self.rt.block_on(async {
            let resp = leases
                .client
                .delete(&path)
                .await
                .map_err(|e| leases.err("cannot delete a lease", &e))?;
            // The key's etcd lease would otherwise live on, holding nothing.
            let mut ids: Vec<i64> = resp.prev_kvs.iter().map(|kv| kv.lease).collect();
            ids.extend(held.map(|h| h.id));
            leases.revoke_replaced(&ids, 0).await;
            Ok(())
        })
    }
}
