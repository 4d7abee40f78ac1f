//! The embedded store's feed: inotify on `<dir>/subnets` (the leases) and
//! on `<dir>` (the config), on a thread of its own. Each changed name is
//! read again on its own, so a change costs one small read whatever the
//! number of leases; leases are also reported `Gone` as they expire
//! (nothing in the directory changes then), and the whole store is listed
//! again when the kernel's event queue overflowed and on the `relist` tick.
//! Between changes the thread sleeps in poll(2) until the next expiry or
//! tick.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::FileStore;
use crate::lease::{Lease, SubnetKey};
use crate::store::Records as _;
use crate::store::{Backoff, NOT_A_SUBNET_KEY, Sink, StoreError, StoreEvent, Unreadable, jittered};

/// What a record's name can go through: written in place (close), renamed
/// in (our writes) or out, created, deleted.
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_CREATE
}

fn watch_err(what: &Path) -> impl FnOnce(Errno) -> StoreError + '_ {
    move |e| StoreError::Io {
        what: format!("cannot watch {}", what.display()),
        source: io::Error::from(e),
    }
}

pub(super) fn start(dir: &Path, sink: Sink, relist: Duration) -> Result<(), StoreError> {
    let inotify =
        Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(watch_err(dir))?;
    // Watched here, before the thread lists: no change can fall between.
    let mut feed = Feed {
        store: FileStore {
            dir: dir.to_path_buf(),
            unreadable: Unreadable::for_feed("lease record"),
        },
        inotify,
        subnets_wd: None,
        dir_wd: None,
        sink,
        relist,
        known: HashMap::new(),
        expiry: BTreeSet::new(),
        config: None,
    };
    feed.watch()?;
    std::thread::Builder::new()
        .name("store-feed".into())
        .spawn(move || feed.run())
        .map_err(|source| StoreError::Io {
            what: "cannot start the lease store's feed".into(),
            source,
        })?;
    Ok(())
}

struct Feed {
    /// Our own handle, to read records as the store does.
    store: FileStore,
    inotify: Inotify,
    /// `None` once the kernel dropped the watch (the directory went away):
    /// made again before the next listing.
    subnets_wd: Option<WatchDescriptor>,
    dir_wd: Option<WatchDescriptor>,
    sink: Sink,
    relist: Duration,
    /// Every live lease as last reported, in brief (thousands of full
    /// records would double the agent's memory).
    known: HashMap<SubnetKey, Seen>,
    /// The known leases' expiry times, soonest first.
    expiry: BTreeSet<(SystemTime, SubnetKey)>,
    /// The config as last reported.
    config: Option<String>,
}

/// A lease as last reported: when it expires, and a digest of its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    expires: Option<SystemTime>,
    digest: u64,
}

impl Seen {
    fn of(lease: &Lease) -> Seen {
        use std::hash::{DefaultHasher, Hasher};
        let mut h = DefaultHasher::new();
        // The JSON of the value: what the lease says, field for field.
        h.write(&serde_json::to_vec(&lease.attrs).unwrap_or_default());
        Seen {
            expires: lease.expires,
            digest: h.finish(),
        }
    }
}

/// What one batch of inotify events asks for.
#[derive(Default)]
struct Changes {
    /// Record names, with every event seen for each.
    subnets: HashMap<OsString, AddWatchFlags>,
    config: Option<AddWatchFlags>,
    /// Events were lost, or a watch is gone: list everything again.
    relist: bool,
}

impl Feed {
    /// Makes the watches that are missing.
    fn watch(&mut self) -> Result<(), StoreError> {
        let subnets = self.store.dir.join("subnets");
        if self.subnets_wd.is_none() {
            fs::create_dir_all(&subnets).map_err(|source| StoreError::Io {
                what: format!("cannot create {}", subnets.display()),
                source,
            })?;
            let wd = self
                .inotify
                .add_watch(&subnets, mask())
                .map_err(watch_err(&subnets))?;
            self.subnets_wd = Some(wd);
        }
        if self.dir_wd.is_none() {
            let dir = &self.store.dir;
            self.dir_wd = Some(
                self.inotify
                    .add_watch(dir, mask())
                    .map_err(watch_err(dir))?,
            );
        }
        Ok(())
    }

    fn run(mut self) {
        let mut backoff = Backoff::new();
        let mut tick = Instant::now();
        let mut list = true;
        loop {
            if list {
                match self.watch().and_then(|()| self.list()) {
                    Ok(event) => {
                        if !(self.sink)(event) {
                            return;
                        }
                        backoff.reset();
                        tick = Instant::now() + jittered(self.relist);
                    }
                    Err(e) => {
                        if !(self.sink)(StoreEvent::Trouble(e.to_string())) {
                            return;
                        }
                        std::thread::sleep(backoff.next_wait());
                        continue;
                    }
                }
            }
            self.wait(tick);
            let changes = self.read_changes();
            if changes.relist {
                list = true;
                continue;
            }
            if !self.apply(changes) || !self.expire() {
                return;
            }
            list = Instant::now() >= tick;
        }
    }

    /// Every live lease and the config, as they are now.
    fn list(&mut self) -> Result<StoreEvent, StoreError> {
        let leases = self.store.list()?.leases;
        self.known.clear();
        self.expiry.clear();
        for lease in &leases {
            self.remember(lease.key, Seen::of(lease));
        }
        self.config = self.read_config();
        Ok(StoreEvent::Listed {
            leases,
            config: self.config.clone(),
        })
    }

    fn read_config(&self) -> Option<String> {
        let path = self.store.dir.join("config");
        match fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                crate::warn!("cannot read {}: {e}", path.display());
                None
            }
        }
    }

    fn remember(&mut self, key: SubnetKey, seen: Seen) {
        self.forget(&key);
        if let Some(t) = seen.expires {
            self.expiry.insert((t, key));
        }
        self.known.insert(key, seen);
    }

    /// Drops a known lease; `true` if it was known.
    fn forget(&mut self, key: &SubnetKey) -> bool {
        let Some(old) = self.known.remove(key) else {
            return false;
        };
        if let Some(t) = old.expires {
            self.expiry.remove(&(t, *key));
        }
        true
    }

    /// Sleeps until there are events, the next lease expires, or `tick`.
    fn wait(&self, tick: Instant) {
        let mut until = tick.saturating_duration_since(Instant::now());
        if let Some((t, _)) = self.expiry.first() {
            let left = t.duration_since(SystemTime::now()).unwrap_or_default();
            until = until.min(left);
        }
        // Rounded up: waking before the expiry second would find the
        // lease still live and spin until it is not.
        let ms = until.as_nanos().div_ceil(1_000_000);
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        // EINTR and the like: the caller just looks again.
        let _ = poll(&mut fds, timeout);
    }

    /// Everything the kernel has queued, by name.
    fn read_changes(&mut self) -> Changes {
        let mut changes = Changes::default();
        loop {
            let events = match self.inotify.read_events() {
                Ok(events) if !events.is_empty() => events,
                Ok(_) | Err(Errno::EAGAIN) => return changes,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    crate::warn!("cannot read the lease store's changes ({e}); listing it again");
                    changes.relist = true;
                    return changes;
                }
            };
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    crate::debug!(
                        "the lease store changed faster than we read it; listing it again"
                    );
                    changes.relist = true;
                    continue;
                }
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    // The directory went away with its watch.
                    if Some(ev.wd) == self.subnets_wd {
                        self.subnets_wd = None;
                    }
                    if Some(ev.wd) == self.dir_wd {
                        self.dir_wd = None;
                    }
                    changes.relist = true;
                    continue;
                }
                let Some(name) = ev.name else { continue };
                // Our temporary files, and anything hidden.
                if name.as_encoded_bytes().starts_with(b".") {
                    continue;
                }
                if Some(ev.wd) == self.subnets_wd {
                    *changes
                        .subnets
                        .entry(name)
                        .or_insert(AddWatchFlags::empty()) |= ev.mask;
                } else if Some(ev.wd) == self.dir_wd && name == "config" {
                    *changes.config.get_or_insert(AddWatchFlags::empty()) |= ev.mask;
                }
            }
        }
    }

    /// Reports what changed; `false` when the sink is gone.
    fn apply(&mut self, changes: Changes) -> bool {
        for (name, mask) in changes.subnets {
            // A file just created is often still empty: wait for its close
            // before calling it unreadable.
            let only_created = mask == AddWatchFlags::IN_CREATE;
            if let Some(event) = self.record(&name, only_created)
                && !(self.sink)(event)
            {
                return false;
            }
        }
        if let Some(mask) = changes.config
            && mask != AddWatchFlags::IN_CREATE
        {
            let config = self.read_config();
            if config != self.config {
                self.config.clone_from(&config);
                if !(self.sink)(StoreEvent::Config(config)) {
                    return false;
                }
            }
        }
        true
    }

    /// Reads one record again: what changed about it, if anything.
    fn record(&mut self, name: &OsString, only_created: bool) -> Option<StoreEvent> {
        let text = name.to_string_lossy();
        let Some(key) = SubnetKey::parse(&text) else {
            let there = self.store.dir.join("subnets").join(name).exists();
            if !there {
                self.store.unreadable.forget(&text);
            } else if !only_created {
                self.store
                    .unreadable
                    .note(text.into_owned(), NOT_A_SUBNET_KEY);
            }
            return None;
        };
        match self.store.load(&key) {
            Ok(Some(lease)) => {
                self.store.unreadable.forget(&text);
                let seen = Seen::of(&lease);
                if self.known.get(&key) == Some(&seen) {
                    return None;
                }
                self.remember(key, seen);
                Some(StoreEvent::Put(lease))
            }
            Ok(None) => {
                self.store.unreadable.forget(&text);
                self.forget(&key).then_some(StoreEvent::Gone(key))
            }
            Err(why) => {
                if !only_created {
                    self.store.unreadable.note(text.into_owned(), &why);
                }
                None
            }
        }
    }

    /// Reports the leases whose time has come; `false` when the sink is
    /// gone.
    fn expire(&mut self) -> bool {
        let now = SystemTime::now();
        while let Some(&(t, key)) = self.expiry.first() {
            if t > now {
                break;
            }
            // Read again: it may have been renewed (with its event still
            // queued) or rewritten badly. `load` already leaves out expired
            // records; the guard is for a wall clock stepped back since
            // `now`, which would put this expiry back in front of the loop.
            let event = match self.store.load(&key) {
                Ok(Some(lease)) if lease.expires.is_none_or(|e| e > now) => {
                    self.remember(key, Seen::of(&lease));
                    Some(StoreEvent::Put(lease))
                }
                _ => self.forget(&key).then_some(StoreEvent::Gone(key)),
            };
            if let Some(event) = event
                && !(self.sink)(event)
            {
                return false;
            }
        }
        true
    }
}
