//! etcd v3 with upstream flanneld's layout, so our agents and upstream's
//! share one etcd: `<prefix>/config`, and `<prefix>/subnets/<key>` holding
//! the `LeaseAttrs` JSON under a 24 h etcd lease (no lease: a reservation).
//! A lease is created by a transaction that puts only if the key does not
//! exist; a lost race answers `false` and the caller tries another subnet.

mod client;
pub mod wire;

use std::time::{Duration, SystemTime};

use tokio::runtime::Runtime;
use tonic::Streaming;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use self::client::{Client, ConnectSpec};
use super::{Store, StoreError, Unreadable};
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
    watch: Option<Streaming<wire::WatchResponse>>,
    unreadable: Unreadable,
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
/// `--etcd-keyfile` are given; the CA, when given, replaces the system's.
fn tls_config(opts: &Options) -> Result<Option<ClientTlsConfig>, StoreError> {
    let mut tls = ClientTlsConfig::new();
    let mut any = false;
    if let (Some(cert), Some(key)) = (&opts.etcd_certfile, &opts.etcd_keyfile) {
        tls = tls.identity(Identity::from_pem(
            read(cert, "--etcd-certfile")?,
            read(key, "--etcd-keyfile")?,
        ));
        any = true;
    }
    if let Some(ca) = &opts.etcd_cafile {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca, "--etcd-cafile")?));
        any = true;
    }
    Ok(any.then_some(tls))
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
            prefix: opts.etcd_prefix.trim_end_matches('/').to_string(),
            endpoints,
            revision: 0,
            watch: None,
            unreadable: Unreadable::default(),
        })
    }

    fn subnet_key(&self, key: &SubnetKey) -> String {
        format!("{}/subnets/{key}", self.prefix)
    }

    fn value(attrs: &LeaseAttrs) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(attrs).map_err(|e| StoreError::Invalid(e.to_string()))
    }

    /// A fresh etcd lease of `ttl`, or 0 (no lease: a reservation).
    async fn grant(
        client: &mut Client,
        ttl: Option<Duration>,
        endpoints: &str,
    ) -> Result<i64, StoreError> {
        match ttl {
            Some(t) => client
                .lease_grant(t)
                .await
                .map_err(|e| etcd_err("cannot grant a lease", endpoints, client::describe(&e))),
            None => Ok(0),
        }
    }
}

impl Store for EtcdStore {
    fn feed(&mut self, _sink: super::Sink, _relist: Duration) -> Result<(), StoreError> {
        Err(StoreError::Invalid(
            "the etcd feed is not written yet".into(),
        ))
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
        if let Some(h) = &resp.header {
            self.revision = h.revision;
        }
        let mut out = Vec::with_capacity(resp.kvs.len());
        let mut bad = std::collections::BTreeMap::new();
        for kv in &resp.kvs {
            let name = String::from_utf8_lossy(&kv.key).into_owned();
            let Some(key) = name.strip_prefix(&dir).and_then(SubnetKey::parse) else {
                bad.insert(name, "not a subnet key such as 10.244.3.0-24".into());
                continue;
            };
            let attrs = match serde_json::from_slice::<LeaseAttrs>(&kv.value) {
                Ok(a) => a,
                Err(e) => {
                    bad.insert(name, e.to_string());
                    continue;
                }
            };
            // The exact expiry would cost a call per key; only our own
            // lease's matters, and the agent tracks that one itself.
            let expires = (kv.lease != 0).then(|| SystemTime::now() + crate::alloc::LEASE_TTL);
            out.push(Lease {
                key,
                attrs,
                expires,
            });
        }
        self.unreadable.update(bad);
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
        let endpoints = self.endpoints.as_str();
        let client = &mut self.client;
        self.rt.block_on(async move {
            let lease = Self::grant(client, ttl, endpoints).await?;
            let created = client
                .create(&path, value, lease)
                .await
                .map_err(|e| etcd_err("cannot create a lease", endpoints, client::describe(&e)))?;
            if !created && lease != 0 {
                // Best effort: an unused grant expires by itself anyway.
                if let Err(e) = client.lease_revoke(lease).await {
                    crate::debug!(
                        "cannot revoke unused etcd lease {lease}: {}",
                        client::describe(&e)
                    );
                }
            }
            Ok(created)
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
        let endpoints = self.endpoints.as_str();
        let client = &mut self.client;
        self.rt.block_on(async move {
            let lease = Self::grant(client, ttl, endpoints).await?;
            client
                .put(&path, value, lease)
                .await
                .map(drop)
                .map_err(|e| etcd_err("cannot renew a lease", endpoints, client::describe(&e)))
        })
    }

    fn delete(&mut self, key: &SubnetKey) -> Result<(), StoreError> {
        let path = self.subnet_key(key);
        self.rt
            .block_on(self.client.delete(&path))
            .map(drop)
            .map_err(|e| {
                etcd_err(
                    "cannot delete a lease",
                    &self.endpoints,
                    client::describe(&e),
                )
            })
    }
}
