//! Measurements through the [`metrics`](https://docs.rs/metrics) facade,
//! behind the `metrics` feature; without it every method here is empty and
//! the structs are zero-sized.
//!
//! Handles are registered once, when the manager is built (and each node
//! with it), so that recording is an atomic operation on a handle: nothing
//! is looked up or allocated per lock. The flip side: install the recorder
//! before building the manager; a manager built before sees the no-op
//! recorder for its whole life. No key is ever a label.
//!
//! | metric | kind | labels |
//! | --- | --- | --- |
//! | `redlease_acquire_total` | counter | `outcome`: `granted`, `held`, `timeout`, `no_quorum`, `error` |
//! | `redlease_acquire_wait_seconds` | histogram | — (from the call to the grant) |
//! | `redlease_hold_seconds` | histogram | — (from the grant to the release) |
//! | `redlease_handoff_seconds` | histogram | — (a release handing the lock to a waiter) |
//! | `redlease_extend_total` | counter | `outcome`: `extended`, `lost`, `error` |
//! | `redlease_locks_lost_total` | counter | — (kept-alive locks found lost) |
//! | `redlease_node_errors_total` | counter | `node` |
//! | `redlease_node_up` | gauge | `node` (1 up, 0 in its reconnect backoff) |

use std::time::{Duration, Instant};

#[cfg(feature = "metrics")]
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::error::Error;

/// How a call for a lock ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Granted,
    Held,
    TimedOut,
    NoQuorum,
    Failed,
}

impl Outcome {
    /// The outcome a failed call's error stands for.
    pub(crate) fn of(error: &Error) -> Outcome {
        match error {
            Error::Held { .. } => Outcome::Held,
            Error::WaitTimedOut { .. } => Outcome::TimedOut,
            Error::NoQuorum { .. } => Outcome::NoQuorum,
            _ => Outcome::Failed,
        }
    }
}

/// The manager's handles.
#[derive(Debug, Default)]
pub(crate) struct Observe {
    #[cfg(feature = "metrics")]
    handles: Handles,
}

#[cfg(feature = "metrics")]
#[derive(Debug)]
struct Handles {
    acquire: [Counter; 5],
    wait: Histogram,
    hold: Histogram,
    handoff: Histogram,
    extend: [Counter; 3],
    lost: Counter,
}

#[cfg(feature = "metrics")]
impl Default for Handles {
    fn default() -> Handles {
        let acquire =
            |outcome: &'static str| counter!("redlease_acquire_total", "outcome" => outcome);
        let extend =
            |outcome: &'static str| counter!("redlease_extend_total", "outcome" => outcome);
        Handles {
            acquire: [
                acquire("granted"),
                acquire("held"),
                acquire("timeout"),
                acquire("no_quorum"),
                acquire("error"),
            ],
            wait: histogram!("redlease_acquire_wait_seconds"),
            hold: histogram!("redlease_hold_seconds"),
            handoff: histogram!("redlease_handoff_seconds"),
            extend: [extend("extended"), extend("lost"), extend("error")],
            lost: counter!("redlease_locks_lost_total"),
        }
    }
}

impl Observe {
    /// A call for a lock that began at `started` ended (the clock is read
    /// only with the feature).
    #[inline]
    pub(crate) fn acquire(&self, outcome: Outcome, started: Instant) {
        #[cfg(feature = "metrics")]
        {
            self.handles.acquire[outcome as usize].increment(1);
            if let Outcome::Granted = outcome {
                self.handles.wait.record(started.elapsed().as_secs_f64());
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (outcome, started);
    }

    /// A lock was released (or dropped) after being held this long (the
    /// lock keeps its grant time only with the feature).
    #[cfg(feature = "metrics")]
    #[inline]
    pub(crate) fn held(&self, held: Duration) {
        self.handles.hold.record(held.as_secs_f64());
    }

    /// A release handed the lock to a waiter; the handoff took this long.
    #[inline]
    pub(crate) fn handed_off(&self, took: Duration) {
        #[cfg(feature = "metrics")]
        self.handles.handoff.record(took.as_secs_f64());
        #[cfg(not(feature = "metrics"))]
        let _ = took;
    }

    /// An explicit extend ended: `Ok`, lost, or another error.
    #[inline]
    pub(crate) fn extended(&self, result: Result<(), &Error>) {
        #[cfg(feature = "metrics")]
        {
            let i = match result {
                Ok(()) => 0,
                Err(Error::LockLost | Error::ValidityExpired { .. }) => 1,
                Err(_) => 2,
            };
            self.handles.extend[i].increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = result;
    }

    /// The keeper found a kept-alive lock lost.
    #[inline]
    pub(crate) fn lost(&self) {
        #[cfg(feature = "metrics")]
        self.handles.lost.increment(1);
    }
}

/// One node's handles.
#[derive(Debug)]
pub(crate) struct NodeObserve {
    #[cfg(feature = "metrics")]
    errors: Counter,
    #[cfg(feature = "metrics")]
    up: Gauge,
}

impl NodeObserve {
    pub(crate) fn new(name: &str) -> NodeObserve {
        #[cfg(feature = "metrics")]
        {
            let up = gauge!("redlease_node_up", "node" => name.to_owned());
            up.set(1.0);
            NodeObserve {
                errors: counter!("redlease_node_errors_total", "node" => name.to_owned()),
                up,
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = name;
            NodeObserve {}
        }
    }

    /// An operation failed on the node.
    #[inline]
    pub(crate) fn failed(&self) {
        #[cfg(feature = "metrics")]
        self.errors.increment(1);
    }

    /// The node went down (into its reconnect backoff) or came back up.
    #[inline]
    pub(crate) fn up(&self, up: bool) {
        #[cfg(feature = "metrics")]
        self.up.set(if up { 1.0 } else { 0.0 });
        #[cfg(not(feature = "metrics"))]
        let _ = up;
    }
}
