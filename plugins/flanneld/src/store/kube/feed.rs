//! The Nodes as a feed of leases: one list (in pages of 500), then one
//! watch from the list's resource version, with bookmarks, on a thread of
//! its own. Only what the data plane needs is kept of each Node (its
//! lease's key and a digest), not the Node: a cluster of thousands costs
//! little. Each Node that is a lease is reported as one (`Put`); one that
//! stops being one (deleted, or its annotations or pod CIDR no longer
//! qualify) as `Gone`; our own Node is not a peer and is left out.
//!
//! A watch the server ends is resumed from the last resource version; a
//! `410 Gone` (the version was compacted away), an error or the safety
//! tick means a new listing. A listing is no proof that a Node missing
//! from it is gone: the agent applies the same evidence rules as for
//! etcd (see `store::StoreEvent::Listed`).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use super::slim::Node;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use tokio::time::Instant;
use tokio_stream::StreamExt;

use super::annotations::Annotations;
use super::connect::describe;
use super::node::{self, Families};
use crate::lease::{Lease, SubnetKey};
use crate::store::{Backoff, Sink, StoreError, StoreEvent, Unreadable, jittered};

/// Nodes per page of a listing.
const PAGE: u32 = 500;
/// How long a listing page or the start of a watch may take.
const CALL_WAIT: Duration = Duration::from_secs(30);
/// How long the server keeps one watch open before we open the next.
const WATCH_SECONDS: u32 = 290;
/// A watch that ran this long was healthy: the next trouble starts the
/// backoff from its shortest wait again.
const STEADY: Duration = Duration::from_secs(10);

/// What the feed is made of.
#[derive(Clone)]
pub struct Setup {
    pub config: kube::Config,
    pub ann: Annotations,
    /// Our own Node's name.
    pub own: String,
    pub families: Families,
    pub net_config: PathBuf,
}

pub(super) fn start(setup: Setup, sink: Sink, relist: Duration) -> Result<(), StoreError> {
    let rt = crate::store::runtime()?;
    let mut feed = Feed {
        setup,
        sink,
        relist,
        known: HashMap::new(),
        holder: HashMap::new(),
        waiting: HashMap::new(),
        unreadable: Unreadable::for_nodes(),
    };
    std::thread::Builder::new()
        .name("kube-feed".into())
        .spawn(move || rt.block_on(feed.run()))
        .map_err(|source| StoreError::Io {
            what: "cannot start the Kubernetes feed".into(),
            source,
        })?;
    Ok(())
}

/// What was last reported of a Node: its lease's key and a digest of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    key: SubnetKey,
    digest: u64,
}

impl Known {
    fn of(lease: &Lease) -> Known {
        let mut h = std::hash::DefaultHasher::new();
        lease.key.hash(&mut h);
        h.write(&serde_json::to_vec(&lease.attrs).unwrap_or_default());
        Known {
            key: lease.key,
            digest: h.finish(),
        }
    }
}

struct Feed {
    setup: Setup,
    sink: Sink,
    relist: Duration,
    /// The Nodes reported as leases, by name.
    known: HashMap<String, Known>,
    /// Which Node a reported lease's key is (two Nodes may claim one pod
    /// CIDR: the first keeps it).
    holder: HashMap<SubnetKey, String>,
    /// Nodes whose pod CIDR another holds, with their lease: reported
    /// when that one goes.
    waiting: HashMap<String, Lease>,
    unreadable: Unreadable,
}

/// How one listing-and-watch ended.
enum End {
    /// The sink is gone.
    Stop,
    /// List again now: the safety tick, or a compacted watch.
    Relist,
    /// The watch broke after it ran for this long: list again soon.
    Broken(String, Duration),
    /// The API server cannot be reached (or refuses).
    Unreachable(String),
}

async fn within<T>(
    what: &str,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, End> {
    super::answered(CALL_WAIT, what, call)
        .await
        .map_err(End::Unreachable)
}

impl Feed {
    async fn run(&mut self) {
        // An API server that refuses answers at once: trying again often is
        // cheap, and a restarted one is followed within a second.
        let mut backoff = Backoff::up_to(Duration::from_secs(1));
        let server = self.setup.config.cluster_url.to_string();
        loop {
            match self.cycle().await {
                End::Stop => return,
                End::Relist => {}
                End::Broken(why, ran) => {
                    crate::debug!(
                        "kubernetes API {server}: the watch of Nodes ended ({why}); listing again"
                    );
                    if ran >= STEADY {
                        backoff.reset();
                    }
                    tokio::time::sleep(backoff.next_wait()).await;
                }
                End::Unreachable(why) => {
                    if !(self.sink)(StoreEvent::Trouble(format!(
                        "kubernetes API {server}: {why}"
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
        let client = match kube::Client::try_from(self.setup.config.clone()) {
            Ok(c) => c,
            Err(e) => return End::Unreachable(format!("cannot make a client: {e}")),
        };
        let nodes: Api<Node> = Api::all(client);
        let (leases, mut rv) = match self.list(&nodes).await {
            Ok(l) => l,
            Err(end) => return end,
        };
        let config = std::fs::read_to_string(&self.setup.net_config).ok();
        if !(self.sink)(StoreEvent::Listed { leases, config }) {
            return End::Stop;
        }
        let started = Instant::now();
        let tick = started + jittered(self.relist);
        loop {
            let mut params = WatchParams::default().timeout(WATCH_SECONDS);
            params.bookmarks = true;
            let stream = match within("cannot watch Nodes", nodes.watch(&params, &rv)).await {
                Ok(s) => s,
                Err(end) => return end,
            };
            let mut stream = std::pin::pin!(stream);
            loop {
                let ev = match tokio::time::timeout_at(tick, stream.next()).await {
                    Err(_) => return End::Relist,
                    // The server ended the watch: the next from where it was.
                    Ok(None) => break,
                    Ok(Some(Err(e))) => return End::Broken(describe(&e), started.elapsed()),
                    Ok(Some(Ok(ev))) => ev,
                };
                match ev {
                    WatchEvent::Added(n) | WatchEvent::Modified(n) => {
                        rv = n.metadata.resource_version.clone().unwrap_or(rv);
                        if !self.changed(&n) {
                            return End::Stop;
                        }
                    }
                    WatchEvent::Deleted(n) => {
                        rv = n.metadata.resource_version.clone().unwrap_or(rv);
                        if !self.deleted(&n) {
                            return End::Stop;
                        }
                    }
                    WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                    WatchEvent::Error(e) if e.code == 410 => {
                        crate::debug!(
                            "the watch of Nodes is too old ({}); listing again",
                            e.message
                        );
                        return End::Relist;
                    }
                    WatchEvent::Error(e) => {
                        return End::Broken(
                            format!("{} ({})", e.message, e.code),
                            started.elapsed(),
                        );
                    }
                }
            }
        }
    }

    /// Every Node, page by page: the leases, and the version to watch from.
    async fn list(&mut self, nodes: &Api<Node>) -> Result<(Vec<Lease>, String), End> {
        let mut leases = Vec::new();
        let mut bad = std::collections::BTreeMap::new();
        let mut known = HashMap::with_capacity(self.known.len());
        let mut holder: HashMap<SubnetKey, String> = HashMap::with_capacity(self.known.len());
        let mut waiting = HashMap::new();
        let mut next: Option<String> = None;
        loop {
            let mut params = ListParams::default().limit(PAGE);
            if let Some(token) = &next {
                params = params.continue_token(token);
            }
            let page = within("cannot list Nodes", nodes.list(&params)).await?;
            // The names kept are made after the page is freed, side by side
            // in the room it leaves: made while it lives, each would pin a
            // page of the heap among its garbage (megabytes at 5,000 Nodes).
            let mut names = String::new();
            let mut read = Vec::with_capacity(page.items.len());
            for n in &page.items {
                let name = n.metadata.name.as_deref().unwrap_or_default();
                if name == self.setup.own {
                    continue;
                }
                let start = names.len();
                names.push_str(name);
                let lease = node::lease_of(n, &self.setup.ann, self.setup.families);
                read.push((start..names.len(), lease));
            }
            next = page.metadata.continue_.filter(|c| !c.is_empty());
            let version = page.metadata.resource_version;
            drop(page.items);
            for (span, lease) in read {
                let name = names.get(span).unwrap_or_default().to_string();
                match lease {
                    Ok(lease) => match holder.get(&lease.key) {
                        Some(other) => {
                            bad.insert(name.clone(), taken(&lease, other));
                            waiting.insert(name, lease);
                        }
                        None => {
                            holder.insert(lease.key, name.clone());
                            known.insert(name, Known::of(&lease));
                            leases.push(lease);
                        }
                    },
                    Err(why) => {
                        bad.insert(name, why);
                    }
                }
            }
            if next.is_none() {
                self.unreadable.update(bad);
                self.known = known;
                self.holder = holder;
                self.waiting = waiting;
                return Ok((leases, version.unwrap_or_default()));
            }
        }
    }

    /// `name` no longer holds the lease `key`: reported gone, and a Node
    /// that waited for that pod CIDR takes it. `false` when the sink is
    /// gone.
    fn release(&mut self, name: &str, key: SubnetKey) -> bool {
        if self.holder.get(&key).is_some_and(|h| h == name) {
            self.holder.remove(&key);
        }
        if !(self.sink)(StoreEvent::Gone(key)) {
            return false;
        }
        let next = self
            .waiting
            .iter()
            .find(|(_, l)| l.key == key)
            .map(|(n, _)| n.clone());
        match next.and_then(|n| self.waiting.remove(&n).map(|l| (n, l))) {
            Some((n, lease)) => {
                self.unreadable.forget(&n);
                self.holder.insert(key, n.clone());
                self.known.insert(n, Known::of(&lease));
                (self.sink)(StoreEvent::Put(lease))
            }
            None => true,
        }
    }

    /// A Node added or changed: its lease reported if it changed, or its
    /// end if it stopped being one. `false` when the sink is gone.
    fn changed(&mut self, n: &Node) -> bool {
        let name = n.metadata.name.clone().unwrap_or_default();
        if name == self.setup.own {
            return true;
        }
        let lease = node::lease_of(n, &self.setup.ann, self.setup.families);
        let other = lease
            .as_ref()
            .ok()
            .and_then(|l| self.holder.get(&l.key))
            .filter(|h| **h != name)
            .cloned();
        match (lease, other) {
            (Ok(lease), None) => {
                self.unreadable.forget(&name);
                self.waiting.remove(&name);
                let now = Known::of(&lease);
                let before = self.known.insert(name.clone(), now);
                if before == Some(now) {
                    return true;
                }
                // Its pod CIDR changed (deleted and made again under the
                // same name): the old lease is gone.
                if let Some(b) = before.filter(|b| b.key != now.key)
                    && !self.release(&name, b.key)
                {
                    return false;
                }
                self.holder.insert(now.key, name);
                (self.sink)(StoreEvent::Put(lease))
            }
            (Ok(lease), Some(other)) => {
                self.unreadable.note(name.clone(), &taken(&lease, &other));
                self.waiting.insert(name.clone(), lease);
                self.forget(&name)
            }
            (Err(why), _) => {
                self.unreadable.note(name.clone(), &why);
                self.waiting.remove(&name);
                self.forget(&name)
            }
        }
    }

    /// A Node deleted: its lease is gone.
    fn deleted(&mut self, n: &Node) -> bool {
        let name = n.metadata.name.clone().unwrap_or_default();
        self.unreadable.forget(&name);
        self.waiting.remove(&name);
        self.forget(&name)
    }

    /// `name` is no lease any more: its lease, if reported, is gone.
    fn forget(&mut self, name: &str) -> bool {
        match self.known.remove(name) {
            Some(k) => self.release(name, k.key),
            None => true,
        }
    }
}

/// Why a Node whose pod CIDR another holds is not a peer.
fn taken(lease: &Lease, other: &str) -> String {
    format!("its pod CIDR ({}) is node {other}'s", lease.key)
}
