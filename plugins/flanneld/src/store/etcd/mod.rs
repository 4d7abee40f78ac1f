//! etcd v3 with upstream flanneld's layout, so our agents and upstream's
//! share one etcd: `<prefix>/config`, and `<prefix>/subnets/<key>` holding
//! the `LeaseAttrs` JSON under a 24 h etcd lease (no lease: a reservation).
//! Every write is a transaction with a condition: a lease is created only
//! if the key does not exist, and our own is rewritten or deleted only if
//! the key's `mod_revision` is still the one we last saw (a lost compare
//! means another node wrote it: the lease is not ours any more). A failed
//! compare reads the key in the same transaction, so the caller learns
//! who holds it.
//!
//! One etcd lease per key: a renewal keeps the etcd lease we attached
//! alive (LeaseKeepAlive) instead of granting another, and a lease a key no
//! longer uses (replaced, or its key deleted or taken) is revoked, so that
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
use super::{
    Acquire, Listing, NOT_A_SUBNET_KEY, Records, Sink, Store, StoreError, Unreadable, Written,
};
use crate::flags::Options;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};
use crate::store::alloc::{self, AllocError};

pub struct EtcdStore {
    // The client belongs to the runtime that made it.
    rt: Runtime,
    client: Client,
    /// How we reached etcd: the feed makes its own connection with it.
    spec: ConnectSpec,
    prefix: String,
    /// `<prefix>/subnets/`.
    dir: String,
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
        let rt = super::runtime()?;
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
        let prefix = opts.etcd_prefix.trim_end_matches('/').to_string();
        let client = rt
            .block_on(Client::connect(&spec))
            .map_err(|e| etcd_err("cannot connect", &endpoints, e))?;
        Ok(EtcdStore {
            rt,
            client,
            spec,
            prefix: prefix.clone(),
            dir: format!("{prefix}/subnets/"),
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

/// A lease from its etcd pair, `dir` being `<prefix>/subnets/`; why not
/// when the key or value cannot be read (with the key, when that much
/// can).
fn parse_lease(dir: &str, kv: &wire::KeyValue) -> Result<Lease, (Option<SubnetKey>, String)> {
    let name = String::from_utf8_lossy(&kv.key);
    let key = name
        .strip_prefix(dir)
        .and_then(SubnetKey::parse)
        .ok_or((None, NOT_A_SUBNET_KEY.to_string()))?;
    let attrs =
        serde_json::from_slice::<LeaseAttrs>(&kv.value).map_err(|e| (Some(key), e.to_string()))?;
    // The exact expiry would cost a call per key; only our own lease's
    // matters, and the agent tracks that one itself.
    let expires = (kv.lease != 0).then(|| SystemTime::now() + alloc::LEASE_TTL);
    Ok(Lease {
        key,
        attrs,
        expires,
        rev: u64::try_from(kv.mod_revision).unwrap_or(0),
    })
}

/// The leases among `kvs` (all under `dir`, `<prefix>/subnets/`), by key;
/// the unreadable ones are left out (their keys, when readable, listed
/// apart) and handed to `unreadable`.
fn parse_leases<'a>(
    dir: &str,
    kvs: impl IntoIterator<Item = &'a wire::KeyValue>,
    unreadable: &mut Unreadable,
) -> Listing {
    let mut out = Listing::default();
    let mut bad = std::collections::BTreeMap::new();
    for kv in kvs {
        match parse_lease(dir, kv) {
            Ok(lease) => out.leases.push(lease),
            Err((key, why)) => {
                out.unreadable.extend(key);
                bad.insert(String::from_utf8_lossy(&kv.key).into_owned(), why);
            }
        }
    }
    unreadable.update(bad);
    out.leases.sort_by_key(|l| l.key);
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

/// The pieces of our transactions.
mod txn {
    use super::wire::{
        Compare, CompareResult, CompareTarget, CompareUnion, DeleteRangeRequest, PutRequest,
        RangeRequest, Request, RequestOp, TxnRequest,
    };

    /// Nobody holds `key`.
    pub fn absent(key: &[u8]) -> Compare {
        Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: key.to_vec(),
            target_union: Some(CompareUnion::Version(0)),
        }
    }

    /// `key` is still at revision `rev`.
    pub fn unchanged(key: &[u8], rev: u64) -> Compare {
        Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: key.to_vec(),
            target_union: Some(CompareUnion::ModRevision(
                i64::try_from(rev).unwrap_or(i64::MAX),
            )),
        }
    }

    pub fn put(key: &[u8], value: Vec<u8>, lease: i64) -> RequestOp {
        RequestOp {
            request: Some(Request::Put(PutRequest {
                key: key.to_vec(),
                value,
                lease,
            })),
        }
    }

    pub fn delete(key: &[u8]) -> RequestOp {
        RequestOp {
            request: Some(Request::DeleteRange(DeleteRangeRequest {
                key: key.to_vec(),
                range_end: Vec::new(),
                prev_kv: true,
            })),
        }
    }

    /// `then` if `cond`, else a read of `key` (who holds it now).
    pub fn if_else_read(key: &[u8], cond: Compare, then: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![cond],
            success: then,
            failure: vec![RequestOp {
                request: Some(Request::Range(RangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                })),
            }],
        }
    }
}

/// What a conditional write came to: the revision it wrote at, or the
/// pair the key holds now.
enum Outcome {
    Done {
        revision: i64,
        deleted: Vec<wire::KeyValue>,
    },
    Lost(Option<wire::KeyValue>),
}

fn outcome(resp: wire::TxnResponse) -> Outcome {
    let mut responses = resp.responses.into_iter().filter_map(|r| r.response);
    if resp.succeeded {
        let deleted = responses
            .find_map(|r| match r {
                wire::Response::DeleteRange(d) => Some(d.prev_kvs),
                _ => None,
            })
            .unwrap_or_default();
        return Outcome::Done {
            revision: resp.header.map_or(0, |h| h.revision),
            deleted,
        };
    }
    Outcome::Lost(responses.find_map(|r| match r {
        wire::Response::Range(r) => r.kvs.into_iter().next(),
        _ => None,
    }))
}

/// One lease call at a time against one client, with errors worded for
/// the log.
struct Calls<'a> {
    client: &'a mut Client,
    endpoints: &'a str,
    dir: &'a str,
}

impl Calls<'_> {
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

    async fn grant(&mut self, ttl: Duration) -> Result<Held, StoreError> {
        let (id, granted) = self
            .client
            .lease_grant(ttl)
            .await
            .map_err(|e| self.err("cannot grant a lease", &e))?;
        Ok(Held {
            id,
            asked: ttl_secs(ttl),
            granted,
        })
    }

    async fn txn(&mut self, what: &str, req: wire::TxnRequest) -> Result<Outcome, StoreError> {
        match self.client.txn(req).await {
            Ok(resp) => Ok(outcome(resp)),
            Err(e) => Err(self.err(what, &e)),
        }
    }

    /// What a lost compare found, as a lease (`None`: nothing readable).
    fn found(&self, kv: Option<wire::KeyValue>) -> Written {
        Written::NotOurs(kv.and_then(|kv| parse_lease(self.dir, &kv).ok()))
    }

    fn lease(key: &SubnetKey, attrs: &LeaseAttrs, ttl: Option<Duration>, rev: i64) -> Lease {
        Lease {
            key: *key,
            attrs: attrs.clone(),
            expires: ttl.map(|t| SystemTime::now() + t),
            rev: u64::try_from(rev).unwrap_or(0),
        }
    }

    /// Puts a lease only if nobody holds the key; the etcd lease it was
    /// put under comes back with it.
    async fn create(
        &mut self,
        key: &SubnetKey,
        path: &str,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<(Written, Option<Held>), StoreError> {
        let value = EtcdStore::value(attrs)?;
        let held = match ttl {
            Some(t) => Some(self.grant(t).await?),
            None => None,
        };
        let id = held.map_or(0, |h| h.id);
        let k = path.as_bytes();
        let req = txn::if_else_read(k, txn::absent(k), vec![txn::put(k, value, id)]);
        let result = self.txn("cannot create a lease", req).await;
        match result {
            Ok(Outcome::Done { revision, .. }) => {
                Ok((Written::Ours(Self::lease(key, attrs, ttl, revision)), held))
            }
            other => {
                // The grant is unused: it would expire anyway, but only
                // after a whole TTL.
                self.revoke_replaced(&[id], 0).await;
                match other? {
                    Outcome::Lost(kv) => Ok((self.found(kv), None)),
                    Outcome::Done { .. } => Ok((Written::NotOurs(None), None)),
                }
            }
        }
    }

    /// Rewrites our lease if the key is still at its revision, keeping its
    /// etcd lease alive rather than granting a new one when it can (the
    /// one we hold, else the one attached to the key, learned from etcd
    /// after a restart). Returns the etcd lease the key now has.
    async fn replace(
        &mut self,
        lease: &Lease,
        path: &str,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
        held: Option<Held>,
    ) -> Result<(Written, Option<Held>), StoreError> {
        let k = path.as_bytes();
        let held = match held {
            Some(h) => Some(h),
            None => {
                let kv = self
                    .client
                    .range(path, false)
                    .await
                    .map_err(|e| self.err("cannot read a lease", &e))?
                    .kvs
                    .into_iter()
                    .next();
                match kv {
                    // Ours as we saw it: its etcd lease is ours too.
                    Some(kv) if u64::try_from(kv.mod_revision).ok() == Some(lease.rev) => {
                        (kv.lease != 0).then_some(Held {
                            id: kv.lease,
                            asked: 0,
                            granted: 0,
                        })
                    }
                    kv => return Ok((self.found(kv), None)),
                }
            }
        };
        let value = EtcdStore::value(attrs)?;
        let old = held.map_or(0, |h| h.id);
        // The etcd lease to write under: ours kept alive, else a new one.
        let (under, fresh) = match ttl {
            None => (None, false),
            Some(t) => {
                let asked = ttl_secs(t);
                let mut kept = None;
                if let Some(h) = held.filter(|h| h.id != 0) {
                    let left = self
                        .client
                        .lease_keep_alive(h.id)
                        .await
                        .map_err(|e| self.err("cannot renew a lease", &e))?;
                    // A keep-alive renews to the TTL the lease was granted:
                    // keep it if that is the TTL asked for (or what etcd
                    // made of that).
                    let now = Held {
                        id: h.id,
                        asked,
                        granted: left,
                    };
                    if left > 0 && (left == asked || h == now) {
                        kept = Some(now);
                    }
                }
                match kept {
                    Some(h) => (Some(h), false),
                    None => (Some(self.grant(t).await?), true),
                }
            }
        };
        let id = under.map_or(0, |h| h.id);
        let then = if !fresh && id == old && *attrs == lease.attrs {
            // Nothing to write: the compare alone says it is still ours.
            Vec::new()
        } else {
            vec![txn::put(k, value, id)]
        };
        let writes = !then.is_empty();
        let req = txn::if_else_read(k, txn::unchanged(k, lease.rev), then);
        let result = self.txn("cannot renew a lease", req).await;
        match result {
            Ok(Outcome::Done { revision, .. }) => {
                self.revoke_replaced(&[old], id).await;
                let rev = if writes {
                    revision
                } else {
                    i64::try_from(lease.rev).unwrap_or(0)
                };
                Ok((
                    Written::Ours(Self::lease(&lease.key, attrs, ttl, rev)),
                    under,
                ))
            }
            Ok(Outcome::Lost(kv)) => {
                // Not ours any more: neither etcd lease holds anything of ours.
                self.revoke_replaced(&[old, id], 0).await;
                Ok((self.found(kv), None))
            }
            Err(e) => {
                if fresh {
                    self.revoke_replaced(&[id], 0).await;
                }
                Err(e)
            }
        }
    }

    /// Deletes our lease if the key is still at its revision.
    async fn delete(
        &mut self,
        lease: &Lease,
        path: &str,
        held: Option<Held>,
    ) -> Result<bool, StoreError> {
        let k = path.as_bytes();
        let req = txn::if_else_read(k, txn::unchanged(k, lease.rev), vec![txn::delete(k)]);
        match self.txn("cannot delete a lease", req).await? {
            Outcome::Done { deleted, .. } => {
                // The key's etcd lease would otherwise live on, holding nothing.
                let mut ids: Vec<i64> = deleted.iter().map(|kv| kv.lease).collect();
                ids.extend(held.map(|h| h.id));
                self.revoke_replaced(&ids, 0).await;
                Ok(true)
            }
            Outcome::Lost(_) => Ok(false),
        }
    }
}

impl EtcdStore {
    fn calls(&mut self) -> (&Runtime, Calls<'_>, &mut HashMap<SubnetKey, Held>) {
        (
            &self.rt,
            Calls {
                client: &mut self.client,
                endpoints: &self.endpoints,
                dir: &self.dir,
            },
            &mut self.held,
        )
    }

    /// Remembers the etcd lease a key of ours now has.
    fn hold(held: &mut HashMap<SubnetKey, Held>, key: &SubnetKey, now: Option<Held>) {
        match now {
            Some(h) => held.insert(*key, h),
            None => held.remove(key),
        };
    }
}

impl Records for EtcdStore {
    fn list(&mut self) -> Result<Listing, StoreError> {
        let resp = self
            .rt
            .block_on(self.client.range(&self.dir, true))
            .map_err(|e| etcd_err("cannot list leases", &self.endpoints, client::describe(&e)))?;
        Ok(parse_leases(&self.dir, &resp.kvs, &mut self.unreadable))
    }

    fn create(
        &mut self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Written, StoreError> {
        let path = self.subnet_key(key);
        let (rt, mut calls, held) = self.calls();
        let earlier = held.get(key).copied();
        let (written, now) = rt.block_on(async {
            let (written, now) = calls.create(key, &path, attrs, ttl).await?;
            if let (Written::Ours(_), Some(earlier)) = (&written, earlier) {
                // The key was deleted under us and is ours again: the
                // grant it had is of no use now.
                calls
                    .revoke_replaced(&[earlier.id], now.map_or(0, |h| h.id))
                    .await;
            }
            Ok::<_, StoreError>((written, now))
        })?;
        if matches!(written, Written::Ours(_)) {
            Self::hold(held, key, now);
        }
        Ok(written)
    }

    fn replace(
        &mut self,
        lease: &Lease,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Written, StoreError> {
        let path = self.subnet_key(&lease.key);
        let (rt, mut calls, held) = self.calls();
        let before = held.get(&lease.key).copied();
        let (written, now) = rt.block_on(calls.replace(lease, &path, attrs, ttl, before))?;
        Self::hold(held, &lease.key, now);
        Ok(written)
    }

    fn delete(&mut self, lease: &Lease) -> Result<bool, StoreError> {
        let path = self.subnet_key(&lease.key);
        let (rt, mut calls, held) = self.calls();
        let before = held.remove(&lease.key);
        rt.block_on(calls.delete(lease, &path, before))
    }
}

impl Store for EtcdStore {
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

    fn acquire(&mut self, want: &Acquire<'_>) -> Result<Lease, AllocError> {
        alloc::acquire(self, want)
    }

    fn renew(
        &mut self,
        lease: &Lease,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<Written, StoreError> {
        self.replace(lease, attrs, ttl)
    }

    fn recreate(&mut self, lease: &Lease, ttl: Option<Duration>) -> Result<Written, StoreError> {
        self.create(&lease.key, &lease.attrs, ttl)
    }

    fn feed(&mut self, sink: Sink, relist: Duration) -> Result<(), StoreError> {
        feed::start(
            self.spec.clone(),
            &self.prefix,
            &self.endpoints,
            sink,
            relist,
        )
    }
}
