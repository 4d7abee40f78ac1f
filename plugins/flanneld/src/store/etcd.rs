//! etcd v3 with upstream flanneld's layout, so our agents and upstream's
//! share one etcd: `<prefix>/config`, and `<prefix>/subnets/<key>` holding
//! the `LeaseAttrs` JSON under a 24 h etcd lease (no lease: a reservation).
//! A lease is created by a transaction that puts only if the key does not
//! exist; a lost race answers `false` and the caller tries another subnet.

use std::time::{Duration, SystemTime};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use tokio::runtime::Runtime;

use super::{Store, StoreError};
use crate::flags::Options;
use crate::lease::{Lease, LeaseAttrs, SubnetKey};

pub struct EtcdStore {
    // The client belongs to the runtime that made it.
    rt: Runtime,
    client: Client,
    prefix: String,
    endpoints: String,
    /// The revision of the last listing: watches start after it.
    revision: i64,
    /// A prefix watch on the subnets, made lazily and dropped on any trouble
    /// (the next tick re-lists and watches again).
    watch: Option<WatchStream>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn etcd_err(what: &str, endpoints: &str, e: etcd_client::Error) -> StoreError {
    StoreError::Invalid(format!("etcd {endpoints}: {what}: {e}"))
}

fn read(path: &str, what: &str) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|source| StoreError::Io {
        what: format!("cannot read {what} {path}"),
        source,
    })
}

impl EtcdStore {
    pub fn connect(opts: &Options) -> Result<EtcdStore, StoreError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| StoreError::Io {
                what: "cannot start the etcd client".into(),
                source,
            })?;
        let mut copts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_require_leader(true);
        if let (Some(user), Some(pass)) = (&opts.etcd_username, &opts.etcd_password) {
            copts = copts
                .with_user(user.clone(), pass.clone())
                .with_auto_token_refresh(true);
        }
        // As upstream: TLS when a client certificate and key are given.
        if let (Some(cert), Some(key)) = (&opts.etcd_certfile, &opts.etcd_keyfile) {
            let mut tls = TlsOptions::new().identity(Identity::from_pem(
                read(cert, "--etcd-certfile")?,
                read(key, "--etcd-keyfile")?,
            ));
            if let Some(ca) = &opts.etcd_cafile {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca, "--etcd-cafile")?));
            }
            copts = copts.with_tls(tls);
        }
        let endpoints = opts.etcd_endpoints.join(",");
        let client = rt
            .block_on(Client::connect(opts.etcd_endpoints.clone(), Some(copts)))
            .map_err(|e| etcd_err("cannot connect", &endpoints, e))?;
        Ok(EtcdStore {
            rt,
            client,
            prefix: opts.etcd_prefix.trim_end_matches('/').to_string(),
            endpoints,
            revision: 0,
            watch: None,
        })
    }

    fn subnet_key(&self, key: &SubnetKey) -> String {
        format!("{}/subnets/{key}", self.prefix)
    }

    fn value(attrs: &LeaseAttrs) -> Result<String, StoreError> {
        serde_json::to_string(attrs).map_err(|e| StoreError::Invalid(e.to_string()))
    }
}

impl Store for EtcdStore {
    /// Polls a prefix watch (started after the last listing) without
    /// waiting. A cancelled or compacted watch, or a broken stream, also
    /// answers `true`: the agent then re-lists, which is the full resync
    /// that compaction requires.
    fn changed(&mut self) -> bool {
        let dir = format!("{}/subnets/", self.prefix);
        if self.watch.is_none() {
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(self.revision + 1);
            let client = &mut self.client;
            // The timer must be made inside the runtime.
            let made = self.rt.block_on(async move {
                tokio::time::timeout(Duration::from_secs(2), client.watch(dir, Some(opts))).await
            });
            match made {
                Ok(Ok(ws)) => self.watch = Some(ws),
                _ => return false,
            }
        }
        let Some(ws) = self.watch.as_mut() else {
            return false;
        };
        let polled = self.rt.block_on(async move {
            tokio::time::timeout(Duration::from_millis(1), ws.message()).await
        });
        match polled {
            Err(_) => false,
            Ok(Ok(Some(resp))) if resp.canceled() || resp.compact_revision() != 0 => {
                self.watch = None;
                true
            }
            Ok(Ok(Some(resp))) => !resp.events().is_empty(),
            Ok(Ok(None)) | Ok(Err(_)) => {
                self.watch = None;
                true
            }
        }
    }

    fn network_config(&mut self) -> Result<String, StoreError> {
        let key = format!("{}/config", self.prefix);
        let resp = self
            .rt
            .block_on(self.client.get(key.clone(), None))
            .map_err(|e| etcd_err("cannot read the network config", &self.endpoints, e))?;
        let kv = resp.kvs().first().ok_or_else(|| {
            StoreError::Invalid(format!(
                "etcd {}: no network config at {key}: did you create your config using the etcd v3 API?",
                self.endpoints
            ))
        })?;
        kv.value_str()
            .map(str::to_string)
            .map_err(|e| etcd_err("the network config is not text", &self.endpoints, e))
    }

    fn leases(&mut self) -> Result<Vec<Lease>, StoreError> {
        let dir = format!("{}/subnets/", self.prefix);
        let resp = self
            .rt
            .block_on(
                self.client
                    .get(dir.clone(), Some(GetOptions::new().with_prefix())),
            )
            .map_err(|e| etcd_err("cannot list leases", &self.endpoints, e))?;
        if let Some(h) = resp.header() {
            self.revision = h.revision();
        }
        let mut out = Vec::new();
        for kv in resp.kvs() {
            let Some(key) = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(&dir))
                .and_then(SubnetKey::parse)
            else {
                continue;
            };
            let Ok(attrs) = serde_json::from_slice::<LeaseAttrs>(kv.value()) else {
                continue;
            };
            // The exact expiry would cost a call per key; only our own
            // lease's matters, and the agent tracks that one itself.
            let expires = (kv.lease() != 0).then(|| SystemTime::now() + crate::alloc::LEASE_TTL);
            out.push(Lease {
                key,
                attrs,
                expires,
            });
        }
        out.sort_by_key(|l| l.key);
        Ok(out)
    }

    fn create(
        &mut self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let path = self.subnet_key(key);
        let value = Self::value(attrs)?;
        let endpoints = self.endpoints.clone();
        let client = &mut self.client;
        self.rt.block_on(async move {
            let lease = match ttl {
                Some(t) => Some(
                    client
                        .lease_grant(i64::try_from(t.as_secs()).unwrap_or(i64::MAX), None)
                        .await
                        .map_err(|e| etcd_err("cannot grant a lease", &endpoints, e))?
                        .id(),
                ),
                None => None,
            };
            let put = match lease {
                Some(id) => PutOptions::new().with_lease(id),
                None => PutOptions::new(),
            };
            let txn = Txn::new()
                .when([Compare::version(path.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(path, value, Some(put))]);
            let resp = client
                .txn(txn)
                .await
                .map_err(|e| etcd_err("cannot create a lease", &endpoints, e))?;
            if !resp.succeeded()
                && let Some(id) = lease
            {
                let _ = client.lease_revoke(id).await;
            }
            Ok(resp.succeeded())
        })
    }

    fn update(
        &mut self,
        key: &SubnetKey,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let path = self.subnet_key(key);
        let value = Self::value(attrs)?;
        let endpoints = self.endpoints.clone();
        let client = &mut self.client;
        self.rt.block_on(async move {
            let put = match ttl {
                Some(t) => {
                    let id = client
                        .lease_grant(i64::try_from(t.as_secs()).unwrap_or(i64::MAX), None)
                        .await
                        .map_err(|e| etcd_err("cannot grant a lease", &endpoints, e))?
                        .id();
                    PutOptions::new().with_lease(id)
                }
                None => PutOptions::new(),
            };
            client
                .put(path, value, Some(put))
                .await
                .map(drop)
                .map_err(|e| etcd_err("cannot renew a lease", &endpoints, e))
        })
    }

    fn delete(&mut self, key: &SubnetKey) -> Result<(), StoreError> {
        let path = self.subnet_key(key);
        self.rt
            .block_on(self.client.delete(path, None))
            .map(drop)
            .map_err(|e| etcd_err("cannot delete a lease", &self.endpoints, e))
    }
}
