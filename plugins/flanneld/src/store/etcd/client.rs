//! A small etcd v3 client over tonic: the KV, Watch, Lease and Auth calls
//! the agent makes, each with the metadata etcd wants (the auth token, and
//! `hasleader` so a member cut off from its cluster refuses instead of
//! serving stale data). An expired auth token is renewed once per call.

use std::time::Duration;

use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status, Streaming};

use super::wire::{self, path};

/// The largest answer we read (a listing of every lease).
const MAX_ANSWER: usize = 64 << 20;
/// How long a keep-alive answer may take: the HTTP/2 pings would notice a
/// dead connection, but a renewal should not wait on them.
const KEEP_ALIVE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad endpoint {url}: {reason}")]
    Endpoint { url: String, reason: String },
    #[error("{0}")]
    Call(String),
}

impl From<Status> for ClientError {
    fn from(s: Status) -> ClientError {
        ClientError::Call(describe(&s))
    }
}

/// A gRPC status as a person reads it: the server's message, or the code
/// and the transport's reason when there is no message.
pub fn describe(s: &Status) -> String {
    use std::error::Error as _;
    let mut out = if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        s.message().to_string()
    };
    let mut source = s.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// How to reach etcd: endpoints, TLS, credentials.
#[derive(Debug, Clone, Default)]
pub struct ConnectSpec {
    pub endpoints: Vec<String>,
    pub tls: Option<ClientTlsConfig>,
    pub credentials: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
    credentials: Option<(String, String)>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Client {
    /// Builds the channel (connections are made lazily and re-made after a
    /// failure) and, with credentials, logs in.
    pub async fn connect(spec: &ConnectSpec) -> Result<Client, ClientError> {
        let mut endpoints = Vec::with_capacity(spec.endpoints.len());
        for url in &spec.endpoints {
            let bad = |reason: String| ClientError::Endpoint {
                url: url.clone(),
                reason,
            };
            let mut ep = Endpoint::from_shared(url.clone())
                .map_err(|e| bad(e.to_string()))?
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(10))
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true)
                .tcp_nodelay(true);
            if url.starts_with("https://") {
                let tls = spec.tls.clone().unwrap_or_default();
                ep = ep.tls_config(tls).map_err(|e| bad(e.to_string()))?;
            }
            endpoints.push(ep);
        }
        if endpoints.is_empty() {
            return Err(ClientError::Endpoint {
                url: String::new(),
                reason: "no etcd endpoint given".into(),
            });
        }
        // Calls go to whichever endpoint answers.
        let channel = Channel::balance_list(endpoints.into_iter());
        let mut client = Client {
            channel,
            credentials: spec.credentials.clone(),
            token: None,
        };
        if client.credentials.is_some() {
            client.authenticate().await?;
        }
        Ok(client)
    }

    async fn authenticate(&mut self) -> Result<(), ClientError> {
        let Some((name, password)) = self.credentials.clone() else {
            return Ok(());
        };
        let req = wire::AuthenticateRequest { name, password };
        let resp: wire::AuthenticateResponse =
            self.unary(path::AUTHENTICATE, Request::new(req)).await?;
        let token = MetadataValue::try_from(resp.token.as_str())
            .map_err(|_| ClientError::Call("etcd sent an auth token that is not text".into()))?;
        self.token = Some(token);
        Ok(())
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        let md = req.metadata_mut();
        md.insert("hasleader", MetadataValue::from_static("true"));
        if let Some(token) = &self.token {
            md.insert("token", token.clone());
        }
        req
    }

    /// A gRPC client on our channel, once the channel can take a call.
    async fn grpc(&self) -> Result<tonic::client::Grpc<Channel>, Status> {
        // A listing of thousands of leases is larger than tonic's default
        // 4 MiB limit for one answer.
        let mut grpc =
            tonic::client::Grpc::new(self.channel.clone()).max_decoding_message_size(MAX_ANSWER);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("etcd is not reachable: {e}")))?;
        Ok(grpc)
    }

    /// One unary call, as is.
    async fn unary<Req, Resp>(
        &self,
        method: &'static str,
        req: Request<Req>,
    ) -> Result<Resp, Status>
    where
        Req: prost::Message + 'static,
        Resp: prost::Message + Default + 'static,
    {
        let mut grpc = self.grpc().await?;
        let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
        grpc.unary(req, PathAndQuery::from_static(method), codec)
            .await
            .map(tonic::Response::into_inner)
    }

    /// `attempt`, made again once after logging in again when etcd says
    /// the token has expired.
    async fn with_fresh_token<T>(
        &mut self,
        attempt: impl AsyncFn(&Client) -> Result<T, Status>,
    ) -> Result<T, Status> {
        match attempt(self).await {
            Err(s) if token_expired(&s) && self.credentials.is_some() => {
                self.authenticate()
                    .await
                    .map_err(|e| Status::unauthenticated(e.to_string()))?;
                attempt(self).await
            }
            other => other,
        }
    }

    /// A unary call with our metadata, logging in again once when etcd
    /// says the token has expired.
    async fn call<Req, Resp>(&mut self, method: &'static str, msg: Req) -> Result<Resp, Status>
    where
        Req: prost::Message + Clone + 'static,
        Resp: prost::Message + Default + 'static,
    {
        self.with_fresh_token(async |c| c.unary(method, c.request(msg.clone())).await)
            .await
    }

    pub async fn range(&mut self, key: &str, prefix: bool) -> Result<wire::RangeResponse, Status> {
        let key = key.as_bytes().to_vec();
        let range_end = if prefix {
            wire::prefix_end(&key)
        } else {
            Vec::new()
        };
        let req = wire::RangeRequest {
            key,
            range_end,
            ..Default::default()
        };
        self.call(path::RANGE, req).await
    }

    /// A transaction: its compares, then its success or failure ops.
    pub async fn txn(&mut self, req: wire::TxnRequest) -> Result<wire::TxnResponse, Status> {
        self.call(path::TXN, req).await
    }

    /// A new lease of `ttl`: its ID, and the TTL etcd gave it (it raises
    /// very short ones to its minimum).
    pub async fn lease_grant(&mut self, ttl: Duration) -> Result<(i64, i64), Status> {
        let req = wire::LeaseGrantRequest {
            ttl: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            id: 0,
        };
        let resp: wire::LeaseGrantResponse = self.call(path::LEASE_GRANT, req).await?;
        if resp.error.is_empty() {
            Ok((resp.id, resp.ttl))
        } else {
            Err(Status::unknown(resp.error))
        }
    }

    pub async fn lease_revoke(&mut self, id: i64) -> Result<(), Status> {
        let req = wire::LeaseRevokeRequest { id };
        let _: wire::LeaseRevokeResponse = self.call(path::LEASE_REVOKE, req).await?;
        Ok(())
    }

    /// Renews lease `id` once: its TTL in seconds after the renewal, 0 when
    /// the lease is gone (expired or revoked).
    pub async fn lease_keep_alive(&mut self, id: i64) -> Result<i64, Status> {
        self.with_fresh_token(async |c| c.keep_alive_once(id).await)
            .await
    }

    /// LeaseKeepAlive is a two-way stream: we send one request and close
    /// our side, etcd answers once and ends the call.
    async fn keep_alive_once(&self, id: i64) -> Result<i64, Status> {
        let outbound = tokio_stream::iter([wire::LeaseKeepAliveRequest { id }]);
        let mut grpc = self.grpc().await?;
        let codec = tonic_prost::ProstCodec::<
            wire::LeaseKeepAliveRequest,
            wire::LeaseKeepAliveResponse,
        >::default();
        let call = async {
            let mut answers = grpc
                .streaming(
                    self.request(outbound),
                    PathAndQuery::from_static(path::LEASE_KEEP_ALIVE),
                    codec,
                )
                .await?
                .into_inner();
            match answers.message().await? {
                Some(resp) => Ok(resp.ttl),
                None => Err(Status::unavailable(
                    "etcd ended the keep-alive call without an answer",
                )),
            }
        };
        tokio::time::timeout(KEEP_ALIVE_WAIT, call)
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("no keep-alive answer in time")))
    }

    /// A watch of every key under `prefix`, from `start_revision` on. The
    /// request stream stays open (an ended one would read as a client that
    /// is going away).
    pub async fn watch(
        &mut self,
        prefix: &str,
        start_revision: i64,
    ) -> Result<Streaming<wire::WatchResponse>, Status> {
        use tokio_stream::StreamExt as _;
        let key = prefix.as_bytes().to_vec();
        let create = wire::WatchRequest {
            request_union: Some(wire::WatchRequestUnion::Create(wire::WatchCreateRequest {
                range_end: wire::prefix_end(&key),
                key,
                start_revision,
                progress_notify: false,
                prev_kv: false,
            })),
        };
        let outbound = tokio_stream::iter([create]).chain(tokio_stream::pending());
        let mut grpc = self.grpc().await?;
        let codec = tonic_prost::ProstCodec::<wire::WatchRequest, wire::WatchResponse>::default();
        let resp = grpc
            .streaming(
                self.request(outbound),
                PathAndQuery::from_static(path::WATCH),
                codec,
            )
            .await?;
        Ok(resp.into_inner())
    }
}

/// etcd answers an expired or unknown token with this status.
fn token_expired(s: &Status) -> bool {
    s.code() == Code::Unauthenticated && s.message().contains("invalid auth token")
}
