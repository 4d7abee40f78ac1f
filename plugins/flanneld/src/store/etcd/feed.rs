//! The etcd feed: a listing of `<prefix>/`, then a watch from the
//! listing's revision on, on a thread of its own with its own connection.
//!
//! Whatever breaks the watch (an error, its end, a cancel, a compaction)
//! leads to a new listing first and a watch from *that* listing's
//! revision: an etcd that was wiped and restarted counts revisions from 1
//! again, and a watch from our old revision would wait silently forever.
//! A healthy watch costs nothing: no polling, only the HTTP/2 pings the
//! channel sends to notice a dead connection (and etcd cancels the watch
//! when its member loses the leader, since every call says `hasleader`).

use std::time::Duration;

use tokio::time::Instant;

use super::client::{self, Client, ConnectSpec};
use super::{parse_lease, parse_leases, wire};
use crate::store::{Backoff, Sink, StoreError, StoreEvent, Unreadable, jittered};

/// A watch that ran this long was healthy: the next trouble starts the
/// backoff from its shortest wait again.
const STEADY: Duration = Duration::from_secs(10);

pub(super) fn start(
    spec: ConnectSpec,
    prefix: &str,
    endpoints: &str,
    sink: Sink,
    relist: Duration,
) -> Result<(), StoreError> {
    let rt = crate::store::runtime()?;
    // The client bounds each call itself (failed endpoints included);
    // this is a backstop a little beyond.
    let wait = spec.call_bound() + Duration::from_secs(5);
    let mut feed = Feed {
        spec,
        dir: format!("{prefix}/"),
        subnets: format!("{prefix}/subnets/"),
        config: format!("{prefix}/config"),
        endpoints: endpoints.to_string(),
        sink,
        relist,
        wait,
        client: None,
        unreadable: Unreadable::for_feed("lease record"),
    };
    std::thread::Builder::new()
        .name("etcd-feed".into())
        .spawn(move || rt.block_on(feed.run()))
        .map_err(|source| StoreError::Io {
            what: "cannot start the etcd feed".into(),
            source,
        })?;
    Ok(())
}

struct Feed {
    spec: ConnectSpec,
    /// `<prefix>/`: listed and watched as a whole.
    dir: String,
    subnets: String,
    config: String,
    endpoints: String,
    sink: Sink,
    relist: Duration,
    /// How long connecting, listing or starting the watch may take.
    wait: Duration,
    /// Kept across failures: its channels connect again by themselves,
    /// and it remembers which endpoint worked.
    client: Option<Client>,
    unreadable: Unreadable,
}

/// `call`'s value within `wait`; when it fails or does not answer in
/// time, the attempt ends as unreachable, worded `<what>: <why>`.
async fn within<T, E>(
    wait: Duration,
    what: &str,
    call: impl Future<Output = Result<T, E>>,
    why: impl FnOnce(&E) -> String,
) -> Result<T, End> {
    match tokio::time::timeout(wait, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(End::Unreachable(format!("{what}: {}", why(&e)))),
        Err(_) => Err(End::Unreachable(format!("{what}: no answer in time"))),
    }
}

/// How one listing-and-watch ended.
enum End {
    /// The sink is gone.
    Stop,
    /// List again now: the safety tick, or a compacted watch.
    Relist,
    /// The watch broke after it ran for this long: list again soon.
    Broken(String, Duration),
    /// etcd cannot be reached (connect, list or watch failed).
    Unreachable(String),
}

impl Feed {
    async fn run(&mut self) {
        let mut backoff = Backoff::new();
        loop {
            match self.cycle().await {
                End::Stop => return,
                End::Relist => {}
                End::Broken(why, ran) => {
                    crate::debug!(
                        "etcd {}: the watch ended ({why}); listing again",
                        self.endpoints
                    );
                    if ran >= STEADY {
                        backoff.reset();
                    }
                    tokio::time::sleep(backoff.next_wait()).await;
                }
                End::Unreachable(why) => {
                    if !(self.sink)(StoreEvent::Trouble(format!(
                        "etcd {}: {why}",
                        self.endpoints
                    ))) {
                        return;
                    }
                    tokio::time::sleep(backoff.next_wait()).await;
                }
            }
        }
    }

    /// Lists, reports the listing, then follows the watch until it ends.
    async fn cycle(&mut self) -> End {
        let mut client = match self.client.take() {
            Some(c) => c,
            None => {
                let connect = Client::connect(&self.spec);
                match within(self.wait, "cannot connect", connect, ToString::to_string).await {
                    Ok(c) => c,
                    Err(end) => return end,
                }
            }
        };
        let end = self.follow(&mut client).await;
        self.client = Some(client);
        end
    }

    /// The listing and the watch, on `client`.
    async fn follow(&mut self, client: &mut Client) -> End {
        let list = client.range(&self.dir, true);
        let listing = match within(self.wait, "cannot list", list, client::describe).await {
            Ok(r) => r,
            Err(end) => return end,
        };
        // Changes after the listing, and none before: from its revision on.
        let revision = listing.header.as_ref().map_or(0, |h| h.revision);
        let listed = self.listed(listing);
        if !(self.sink)(listed) {
            return End::Stop;
        }
        let watch = client.watch(&self.dir, revision + 1);
        let mut stream = match within(self.wait, "cannot watch", watch, client::describe).await {
            Ok(s) => s,
            Err(end) => return end,
        };
        let started = Instant::now();
        let tick = started + jittered(self.relist);
        loop {
            let resp = match tokio::time::timeout_at(tick, stream.message()).await {
                Err(_) => return End::Relist,
                Ok(Ok(Some(r))) => r,
                Ok(Ok(None)) => return End::Broken("etcd ended it".into(), started.elapsed()),
                Ok(Err(e)) => return End::Broken(client::describe(&e), started.elapsed()),
            };
            if resp.compact_revision != 0 {
                crate::debug!(
                    "etcd {}: the watch's revisions were compacted (to {}); listing again",
                    self.endpoints,
                    resp.compact_revision
                );
                return End::Relist;
            }
            if resp.canceled {
                let why = format!("etcd canceled it: {}", resp.cancel_reason);
                return End::Broken(why, started.elapsed());
            }
            for ev in resp.events {
                if let Some(event) = self.event(ev)
                    && !(self.sink)(event)
                {
                    return End::Stop;
                }
            }
        }
    }

    /// The listing as an event; unreadable records are logged (once) and
    /// left out.
    fn listed(&mut self, listing: wire::RangeResponse) -> StoreEvent {
        let mut kvs = listing.kvs;
        let config = kvs
            .iter()
            .position(|kv| kv.key == self.config.as_bytes())
            .and_then(|i| self.config_text(kvs.swap_remove(i).value));
        let subnets = kvs
            .iter()
            .filter(|kv| kv.key.starts_with(self.subnets.as_bytes()));
        let leases = parse_leases(&self.subnets, subnets, &mut self.unreadable).leases;
        StoreEvent::Listed { leases, config }
    }

    fn config_text(&self, value: Vec<u8>) -> Option<String> {
        String::from_utf8(value)
            .map_err(|_| {
                crate::warn!(
                    "etcd {}: {} is not text, so it is ignored",
                    self.endpoints,
                    self.config
                );
            })
            .ok()
    }

    /// A watch event as a feed event; `None` for keys that are not ours
    /// and for unreadable records (logged once).
    fn event(&mut self, ev: wire::Event) -> Option<StoreEvent> {
        let deleted = ev.r#type() == wire::EventType::Delete;
        let kv = ev.kv?;
        if kv.key == self.config.as_bytes() {
            let text = if deleted {
                None
            } else {
                self.config_text(kv.value)
            };
            return Some(StoreEvent::Config(text));
        }
        let name = String::from_utf8_lossy(&kv.key).into_owned();
        let sub = name.strip_prefix(&self.subnets)?;
        if deleted {
            self.unreadable.forget(&name);
            return crate::lease::SubnetKey::parse(sub).map(StoreEvent::Gone);
        }
        match parse_lease(&self.subnets, &kv) {
            Ok(lease) => {
                self.unreadable.forget(&name);
                Some(StoreEvent::Put(lease))
            }
            Err((_, why)) => {
                self.unreadable.note(name, &why);
                None
            }
        }
    }
}
