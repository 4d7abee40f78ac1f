//! The store's own thread: the agent's requests to write its lease arrive
//! as messages and are answered the same way, so however long the store
//! takes (an etcd that hangs, a disk that stalls), the agent's loop goes on
//! repairing the data plane and answering `/healthz`.

use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use super::{Store, Written};
use crate::lease::{Lease, LeaseAttrs};

/// A write of our own lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Rewrite `lease` (as last seen) with `attrs`.
    Renew {
        lease: Lease,
        attrs: LeaseAttrs,
        ttl: Option<Duration>,
    },
    /// Write `lease` again under its key, which was found free.
    Recreate { lease: Lease, ttl: Option<Duration> },
    /// The data plane is up with `lease` (answered with it when said).
    Complete { lease: Lease },
}

impl Request {
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Renew { .. } => "renew",
            Request::Recreate { .. } => "re-create",
            Request::Complete { .. } => "complete",
        }
    }
}

/// The store's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub request: Request,
    pub result: Result<Written, String>,
    /// How long the store took.
    pub took: Duration,
}

/// The agent's end: requests go in, replies come out through the sink
/// given to [`Task::spawn`].
#[derive(Debug)]
pub struct Task {
    tx: Sender<Request>,
}

impl Task {
    /// Moves `store` onto a thread of its own; each reply goes to `reply`,
    /// and the thread ends when `reply` returns `false` or the `Task` is
    /// dropped.
    pub fn spawn(
        mut store: Box<dyn Store>,
        mut reply: impl FnMut(Reply) -> bool + Send + 'static,
    ) -> Result<Task, String> {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("store".into())
            .spawn(move || {
                for request in rx {
                    let began = Instant::now();
                    let result = match &request {
                        Request::Renew { lease, attrs, ttl } => store.renew(lease, attrs, *ttl),
                        Request::Recreate { lease, ttl } => store.recreate(lease, *ttl),
                        Request::Complete { lease } => {
                            store.complete(lease).map(|()| Written::Ours(lease.clone()))
                        }
                    }
                    .map_err(|e| e.to_string());
                    let answer = Reply {
                        request,
                        result,
                        took: began.elapsed(),
                    };
                    if !reply(answer) {
                        return;
                    }
                }
            })
            .map_err(|e| format!("cannot start the lease store's thread: {e}"))?;
        Ok(Task { tx })
    }

    /// Hands `request` to the store; an error when its thread is gone.
    pub fn send(&self, request: Request) -> Result<(), String> {
        self.tx
            .send(request)
            .map_err(|_| "the lease store's thread stopped".to_string())
    }
}
