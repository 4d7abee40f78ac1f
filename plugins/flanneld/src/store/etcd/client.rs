//! A small etcd v3 client over tonic: the KV, Watch, Lease and Auth calls
//! the agent makes, each with the metadata etcd wants (the auth token, and
//! `hasleader` so a member cut off from its cluster refuses instead of
//! serving stale data). An expired auth token is renewed once per call,
//! by logging in again on the endpoint that said so.
//!
//! Endpoints: one channel each, connecting when first used (and again
//! after a failure). A call goes to the endpoint that last worked; when
//! that one cannot be used, the call moves on to the next, at most once
//! round the list, as etcd's own client does. A list with a dead member
//! (upstream's default names 127.0.0.1:4001, where usually nothing
//! listens) so costs one failed attempt, not every other call. Reads may
//! be made again after any failure of their endpoint; writes only when
//! the failure came before the request could have left (a create that
//! reached etcd and is made again would read as "someone holds the key").

use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status, Streaming};

use super::wire::{self, path};

/// The largest answer we read (a listing of every lease).
const MAX_ANSWER: usize = 64 << 20;
/// How long making a connection may take: the TCP connect, and then the
/// TLS handshake, each. Short: an endpoint that does not answer (a
/// blackholed address) should cost a call little before the next is
/// tried.
const CONNECT_WAIT: Duration = Duration::from_secs(3);
/// The per-call deadline: how long one attempt on one endpoint may take,
/// connection and answer included. Longer than making a connection
/// (2 x [`CONNECT_WAIT`]), so that an endpoint we could not connect to
/// fails before the deadline does, and is told apart from one that took
/// the request and did not answer. A whole call makes at most one attempt
/// per endpoint, plus, once, a login and a second attempt on the endpoint
/// that said the token had expired: it ends within
/// [`ConnectSpec::call_bound`] = (endpoints + 2) x `ATTEMPT_WAIT`.
const ATTEMPT_WAIT: Duration = Duration::from_secs(10);

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
/// when there is none, and the transport's reasons.
pub fn describe(s: &Status) -> String {
    let out = if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        s.message().to_string()
    };
    with_reasons(out, s.source())
}

/// `out`, then each error of the chain from `source` on that says
/// something new (tonic's wrappers repeat their inner error's words, or
/// only say "transport error").
fn with_reasons(mut out: String, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    while let Some(e) = source {
        let text = e.to_string();
        if !text.is_empty() && text != "transport error" && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
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

impl ConnectSpec {
    /// The longest one call of a client on these endpoints takes, failed
    /// attempts and a new login included (see [`ATTEMPT_WAIT`]); also
    /// the longest [`Client::connect`] takes.
    pub fn call_bound(&self) -> Duration {
        let attempts = u32::try_from(self.endpoints.len().saturating_add(2)).unwrap_or(u32::MAX);
        ATTEMPT_WAIT.saturating_mul(attempts)
    }
}

/// One endpoint: its URL (for messages) and its channel.
#[derive(Debug, Clone)]
struct Member {
    url: String,
    channel: Channel,
}

/// Whether a call may be made again on another endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// A read, or a renewal: after any failure of its endpoint.
    Safe,
    /// A write: only when it cannot have reached etcd.
    OnlyUnsent,
}

/// What a failed attempt says about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No connection could be made (refused, no answer in time, TLS
    /// failed): the request never left.
    Unsent,
    /// The request may have left, and then the connection broke, the
    /// deadline passed, or etcd said it cannot serve now (Unavailable:
    /// no leader, a timed-out proposal).
    Lost,
    /// etcd answered: the endpoint works, the call failed on its merits.
    Answered,
}

impl Failure {
    fn of(s: &Status) -> Failure {
        if unsent(s) {
            Failure::Unsent
        } else if s.source().is_some()
            || matches!(
                s.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
            )
        {
            // A status with a source was made by the transport, not sent
            // by etcd.
            Failure::Lost
        } else {
            Failure::Answered
        }
    }
}

/// A failure before the request left: tonic wraps every error of making
/// a connection (TCP, TLS) in `ConnectError`, and our own [`NotSent`].
fn unsent(s: &Status) -> bool {
    let mut source = s.source();
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() || e.is::<NotSent>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// A channel that would not take a request.
#[derive(Debug, thiserror::Error)]
#[error("the connection cannot take a call: {0}")]
struct NotSent(String);

fn not_sent(why: impl std::fmt::Display) -> Status {
    let mut s = Status::unavailable(why.to_string());
    s.set_source(Arc::new(NotSent(why.to_string())));
    s
}

#[derive(Debug, Clone)]
pub struct Client {
    members: Arc<[Member]>,
    /// The member calls go to first: the one that last worked (shared by
    /// clones, which use the same channels).
    current: Arc<AtomicUsize>,
    credentials: Option<(String, String)>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Client {
    /// Makes a channel per endpoint (each connects when first used, and
    /// again after a failure) and, with credentials, logs in.
    pub async fn connect(spec: &ConnectSpec) -> Result<Client, ClientError> {
        let mut members = Vec::with_capacity(spec.endpoints.len());
        for url in &spec.endpoints {
            let bad = |reason: String| ClientError::Endpoint {
                url: url.clone(),
                reason,
            };
            let mut ep = Endpoint::from_shared(url.clone())
                .map_err(|e| bad(with_reasons(String::new(), Some(&e))))?
                .connect_timeout(CONNECT_WAIT)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true)
                .tcp_nodelay(true);
            if url.starts_with("https://") {
                // No TLS settings: the system's CA certificates, as with
                // no --etcd-cafile.
                let tls = spec
                    .tls
                    .clone()
                    .unwrap_or_else(|| ClientTlsConfig::new().with_native_roots())
                    .timeout(CONNECT_WAIT);
                ep = ep.tls_config(tls).map_err(|e| {
                    let why = with_reasons(String::new(), Some(&e));
                    if why.contains("no native certs") {
                        bad(format!(
                            "{why}: the system has no CA certificates to check etcd's with; \
                             give --etcd-cafile, or name them with SSL_CERT_FILE"
                        ))
                    } else {
                        bad(why)
                    }
                })?;
            }
            members.push(Member {
                url: url.clone(),
                channel: ep.connect_lazy(),
            });
        }
        if members.is_empty() {
            return Err(ClientError::Endpoint {
                url: String::new(),
                reason: "no etcd endpoint given".into(),
            });
        }
        let mut client = Client {
            members: members.into(),
            current: Arc::new(AtomicUsize::new(0)),
            credentials: spec.credentials.clone(),
            token: None,
        };
        if let Some((name, password)) = client.credentials.clone() {
            // Logging in changes nothing in etcd's data: safe to repeat.
            let req = wire::AuthenticateRequest { name, password };
            let resp: wire::AuthenticateResponse = client
                .failover(Repeat::Safe, async |_, ch| {
                    unary(ch, path::AUTHENTICATE, Request::new(req.clone())).await
                })
                .await?;
            client.token = Some(token(&resp)?);
        }
        Ok(client)
    }

    /// Logs in again on `member`, for a token etcd no longer knows.
    async fn login(&mut self, member: &Member) -> Result<(), Status> {
        let Some((name, password)) = self.credentials.clone() else {
            return Ok(());
        };
        let req = wire::AuthenticateRequest { name, password };
        let resp: wire::AuthenticateResponse = self
            .attempt(member, &async |_, ch| {
                unary(ch, path::AUTHENTICATE, Request::new(req.clone())).await
            })
            .await?;
        self.token = Some(token(&resp).map_err(|e| Status::internal(e.to_string()))?);
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

    /// `call` on one member's channel, within the per-call deadline.
    async fn attempt<T>(
        &self,
        member: &Member,
        call: &impl AsyncFn(&Client, Channel) -> Result<T, Status>,
    ) -> Result<T, Status> {
        match tokio::time::timeout(ATTEMPT_WAIT, call(self, member.channel.clone())).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {} s",
                ATTEMPT_WAIT.as_secs()
            ))),
        }
    }

    /// `call` on the current endpoint, and on the next ones while an
    /// endpoint cannot be used and `repeat` allows another attempt (at
    /// most once round the list); after an expired token, once, a new
    /// login and the same endpoint again. The endpoint that answered is
    /// the current one from then on.
    async fn failover<T>(
        &mut self,
        repeat: Repeat,
        call: impl AsyncFn(&Client, Channel) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let n = self.members.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut logged_in_again = false;
        let mut failed: Vec<String> = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            let member = self.members[i].clone();
            let mut outcome = self.attempt(&member, &call).await;
            if let Err(s) = &outcome
                && token_expired(s)
                && self.credentials.is_some()
                && !logged_in_again
            {
                logged_in_again = true;
                outcome = match self.login(&member).await {
                    Ok(()) => self.attempt(&member, &call).await,
                    Err(s) => Err(s),
                };
            }
            let status = match outcome {
                Ok(v) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(s) => s,
            };
            let failure = Failure::of(&status);
            if failure == Failure::Answered {
                self.current.store(i, Ordering::Relaxed);
                return Err(status);
            }
            // This endpoint is unusable for now: the next call starts on
            // the next one.
            let next = (i + 1) % n;
            self.current.store(next, Ordering::Relaxed);
            let why = format!("{}: {}", member.url, describe(&status));
            if failure == Failure::Lost && repeat == Repeat::OnlyUnsent {
                let note = if n > 1 {
                    " (not made again on another endpoint: it may have reached etcd)"
                } else {
                    ""
                };
                return Err(Status::new(status.code(), format!("{why}{note}")));
            }
            if k + 1 < n {
                crate::warn!("etcd {why}; trying {}", self.members[next].url);
            }
            failed.push(why);
        }
        Err(Status::unavailable(format!(
            "no etcd endpoint could be used: {}",
            failed.join("; ")
        )))
    }

    /// A unary call with our metadata, on whichever endpoint can take it.
    async fn call<Req, Resp>(
        &mut self,
        repeat: Repeat,
        method: &'static str,
        msg: Req,
    ) -> Result<Resp, Status>
    where
        Req: prost::Message + Clone + 'static,
        Resp: prost::Message + Default + 'static,
    {
        self.failover(repeat, async |c, ch| {
            unary(ch, method, c.request(msg.clone())).await
        })
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
        self.call(Repeat::Safe, path::RANGE, req).await
    }

    /// A transaction: its compares, then its success or failure ops. A
    /// write: made again elsewhere only if it cannot have reached etcd.
    pub async fn txn(&mut self, req: wire::TxnRequest) -> Result<wire::TxnResponse, Status> {
        self.call(Repeat::OnlyUnsent, path::TXN, req).await
    }

    /// A new lease of `ttl`: its ID, and the TTL etcd gave it (it raises
    /// very short ones to its minimum).
    pub async fn lease_grant(&mut self, ttl: Duration) -> Result<(i64, i64), Status> {
        let req = wire::LeaseGrantRequest {
            ttl: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
            id: 0,
        };
        let resp: wire::LeaseGrantResponse = self
            .call(Repeat::OnlyUnsent, path::LEASE_GRANT, req)
            .await?;
        if resp.error.is_empty() {
            Ok((resp.id, resp.ttl))
        } else {
            Err(Status::unknown(resp.error))
        }
    }

    pub async fn lease_revoke(&mut self, id: i64) -> Result<(), Status> {
        let req = wire::LeaseRevokeRequest { id };
        let _: wire::LeaseRevokeResponse = self
            .call(Repeat::OnlyUnsent, path::LEASE_REVOKE, req)
            .await?;
        Ok(())
    }

    /// Renews lease `id` once: its TTL in seconds after the renewal, 0 when
    /// the lease is gone (expired or revoked). A renewal made twice does
    /// no harm, so it may go to another endpoint after any failure.
    pub async fn lease_keep_alive(&mut self, id: i64) -> Result<i64, Status> {
        self.failover(Repeat::Safe, async |c, ch| c.keep_alive_once(ch, id).await)
            .await
    }

    /// LeaseKeepAlive is a two-way stream: we send one request and close
    /// our side, etcd answers once and ends the call.
    async fn keep_alive_once(&self, channel: Channel, id: i64) -> Result<i64, Status> {
        let outbound = tokio_stream::iter([wire::LeaseKeepAliveRequest { id }]);
        let mut grpc = grpc(channel).await?;
        let codec = tonic_prost::ProstCodec::<
            wire::LeaseKeepAliveRequest,
            wire::LeaseKeepAliveResponse,
        >::default();
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
    }

    /// A watch of every key under `prefix`, from `start_revision` on, on
    /// whichever endpoint takes it. The request stream stays open (an
    /// ended one would read as a client that is going away).
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
        // Starting a watch changes nothing: safe on any endpoint.
        self.failover(Repeat::Safe, async |c, ch| {
            let outbound = tokio_stream::iter([create.clone()]).chain(tokio_stream::pending());
            let mut grpc = grpc(ch).await?;
            let codec =
                tonic_prost::ProstCodec::<wire::WatchRequest, wire::WatchResponse>::default();
            let resp = grpc
                .streaming(
                    c.request(outbound),
                    PathAndQuery::from_static(path::WATCH),
                    codec,
                )
                .await?;
            Ok(resp.into_inner())
        })
        .await
    }
}

/// A gRPC client on `channel`, once the channel can take a call.
async fn grpc(channel: Channel) -> Result<tonic::client::Grpc<Channel>, Status> {
    // A listing of thousands of leases is larger than tonic's default
    // 4 MiB limit for one answer.
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_ANSWER);
    grpc.ready().await.map_err(not_sent)?;
    Ok(grpc)
}

/// One unary call on `channel`, as is.
async fn unary<Req, Resp>(
    channel: Channel,
    method: &'static str,
    req: Request<Req>,
) -> Result<Resp, Status>
where
    Req: prost::Message + 'static,
    Resp: prost::Message + Default + 'static,
{
    let mut grpc = grpc(channel).await?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    grpc.unary(req, PathAndQuery::from_static(method), codec)
        .await
        .map(tonic::Response::into_inner)
}

/// The token of a login's answer, as metadata.
fn token(
    resp: &wire::AuthenticateResponse,
) -> Result<MetadataValue<tonic::metadata::Ascii>, ClientError> {
    MetadataValue::try_from(resp.token.as_str())
        .map_err(|_| ClientError::Call("etcd sent an auth token that is not text".into()))
}

/// etcd answers an expired or unknown token with this status.
fn token_expired(s: &Status) -> bool {
    s.code() == Code::Unauthenticated && s.message().contains("invalid auth token")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_source(mut s: Status, e: impl std::error::Error + Send + Sync + 'static) -> Status {
        s.set_source(Arc::new(e));
        s
    }

    #[test]
    fn failures_are_told_apart_by_whether_the_request_could_have_left() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let connect = tonic::ConnectError(Box::new(refused));
        let s = with_source(Status::unavailable("tcp connect error"), connect);
        assert_eq!(Failure::of(&s), Failure::Unsent);
        assert_eq!(Failure::of(&not_sent("buffer closed")), Failure::Unsent);
        // The connection broke after the request went: a transport error.
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let s = with_source(Status::unknown("h2 protocol error"), reset);
        assert_eq!(Failure::of(&s), Failure::Lost);
        // Our deadline, and etcd saying it cannot serve now.
        assert_eq!(
            Failure::of(&Status::deadline_exceeded("no answer")),
            Failure::Lost
        );
        assert_eq!(
            Failure::of(&Status::unavailable("etcdserver: no leader")),
            Failure::Lost
        );
        // etcd answered.
        for s in [
            Status::failed_precondition("etcdserver: requested lease not found"),
            Status::invalid_argument("etcdserver: authentication failed"),
            Status::permission_denied("etcdserver: permission denied"),
        ] {
            assert_eq!(Failure::of(&s), Failure::Answered, "{s:?}");
        }
    }

    #[test]
    fn descriptions_say_each_reason_once() {
        // As tonic makes them: the status repeats a wrapper's words, the
        // wrapper its inner error's.
        let refused = std::io::Error::other("Connection refused");
        let connect = tonic::ConnectError(Box::new(refused));
        let s = with_source(Status::unavailable("Connection refused"), connect);
        assert_eq!(describe(&s), "Connection refused");
        let refused = std::io::Error::other("Connection refused");
        let connect = tonic::ConnectError(Box::new(refused));
        let s = with_source(Status::unavailable("tcp connect error"), connect);
        assert_eq!(describe(&s), "tcp connect error: Connection refused");
        assert_eq!(describe(&Status::unavailable("")), "Unavailable");
        // A transport error says only that: its source says what.
        let bad = Endpoint::from_shared("http://bad host").unwrap_err();
        let text = with_reasons(String::new(), Some(&bad));
        assert!(
            !text.is_empty() && !text.starts_with("transport error"),
            "{text}"
        );
    }

    #[test]
    fn a_call_is_bounded_by_its_attempts() {
        let spec = ConnectSpec {
            endpoints: vec!["http://a:2379".into(), "http://b:2379".into()],
            ..ConnectSpec::default()
        };
        assert_eq!(spec.call_bound(), ATTEMPT_WAIT * 4);
        const { assert!(ATTEMPT_WAIT.as_secs() > 2 * CONNECT_WAIT.as_secs()) };
    }
}
