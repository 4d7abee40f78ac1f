//! Reading a feed from a channel, with deadlines: what the store's tests
//! (and anyone driving a feed by hand) need. A missed deadline panics, at
//! the caller's line: these are test helpers, and a test that waits in
//! vain has failed.

use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use super::{Sink, StoreEvent};

/// A sink that sends into a channel, and the channel's end.
pub fn channel() -> (Sink, Receiver<StoreEvent>) {
    let (tx, rx) = mpsc::channel();
    (Box::new(move |ev| tx.send(ev).is_ok()), rx)
}

/// The next event within `limit`.
///
/// # Panics
/// When none comes within `limit`.
#[track_caller]
pub fn next(rx: &Receiver<StoreEvent>, limit: Duration) -> StoreEvent {
    match rx.recv_timeout(limit) {
        Ok(ev) => ev,
        Err(e) => panic!("no event within {limit:?}: {e}"),
    }
}

/// Events until one passes `want` (within `limit`); the ones before it
/// are returned too.
///
/// # Panics
/// When none passes within `limit`.
#[track_caller]
pub fn until(
    rx: &Receiver<StoreEvent>,
    limit: Duration,
    want: impl Fn(&StoreEvent) -> bool,
) -> (StoreEvent, Vec<StoreEvent>) {
    let end = Instant::now() + limit;
    let mut before = Vec::new();
    loop {
        match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(ev) if want(&ev) => return (ev, before),
            Ok(ev) => before.push(ev),
            Err(e) => panic!("no matching event within {limit:?} ({e}); saw {before:?}"),
        }
    }
}
