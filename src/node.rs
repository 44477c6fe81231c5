//! One Redis endpoint: its bounded pool of connections and its health.
//!
//! The pool is a `Vec` with room for every connection reserved up front, so
//! taking and returning a connection never allocates. A thread that finds the
//! pool empty opens a new connection while there is room, and otherwise waits
//! (bounded) for one to come back.
//!
//! Health is a reconnect backoff: after a failed connect or a timeout the node
//! is skipped ([`Failure::Down`]) for a while, starting at 50 ms and doubling
//! up to 1 s, so that a dead or hung minority costs a quorum one timeout per
//! backoff period instead of one per lock.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::conn::{Conn, Endpoint, Timeouts};
use crate::error::Failure;
use crate::resp::Reply;

/// First reconnect backoff after a failure.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest reconnect backoff.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Pool sizing and waiting.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolConfig {
    /// Most connections open at once.
    pub(crate) max_conns: usize,
    /// Longest wait for a connection when all are in use.
    pub(crate) wait: Duration,
}

/// A Redis endpoint and its connections.
pub(crate) struct Node {
    /// `host:port`, shared with every error that names this node.
    pub(crate) name: Arc<str>,
    endpoint: Endpoint,
    timeouts: Timeouts,
    config: PoolConfig,
    state: Mutex<State>,
    /// Signalled whenever a connection or a slot for one becomes free.
    freed: Condvar,
}

struct State {
    /// Connections ready for use, most recently used last.
    // Boxed on purpose: taking and returning one moves a pointer rather than
    // the ~100-byte connection through the pool, the guard and the quorum's
    // slots on every operation.
    #[allow(clippy::vec_box)]
    idle: Vec<Box<Conn>>,
    /// Connections in existence: idle, in use, or being opened.
    open: usize,
    /// While set and in the future, the node is skipped.
    down_until: Option<Instant>,
    /// Consecutive failures, for the backoff.
    failures: u32,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Node {
    pub(crate) fn new(endpoint: Endpoint, timeouts: Timeouts, config: PoolConfig) -> Node {
        Node {
            name: Arc::from(endpoint.name()),
            endpoint,
            timeouts,
            config,
            state: Mutex::new(State {
                idle: Vec::with_capacity(config.max_conns),
                open: 0,
                down_until: None,
                failures: 0,
            }),
            freed: Condvar::new(),
        }
    }

    /// Takes a connection: an idle one if any, else a new one while there is
    /// room, else the first one returned within the pool wait. With `fresh`,
    /// idle connections are closed first rather than used (after a stale
    /// one, its siblings are suspect too).
    pub(crate) fn checkout(&self, fresh: bool) -> Result<Checkout<'_>, Failure> {
        let mut state = self.state.lock();
        if let Some(until) = state.down_until
            && Instant::now() < until
        {
            return Err(Failure::Down);
        }
        if fresh {
            // The idle connection that proved stale was the most recently
            // used: the others sat idle at least as long (a server restart or
            // idle timeout closes them all). Close them rather than try each.
            let stale = std::mem::take(&mut state.idle);
            state.open -= stale.len();
            state.idle.reserve(self.config.max_conns);
            drop(stale);
        }
        let mut deadline = None;
        loop {
            if let Some(conn) = state.idle.pop() {
                return Ok(Checkout {
                    node: self,
                    conn: Some(conn),
                    slow: deadline.is_some(),
                });
            }
            if state.open < self.config.max_conns {
                state.open += 1;
                drop(state);
                return self.open_new();
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + self.config.wait);
            if self.freed.wait_until(&mut state, deadline).timed_out()
                && state.idle.is_empty()
                && state.open >= self.config.max_conns
            {
                return Err(Failure::PoolTimeout(self.config.wait));
            }
        }
    }

    /// Opens a connection in a slot already counted in `open`.
    fn open_new(&self) -> Result<Checkout<'_>, Failure> {
        match Conn::connect(&self.endpoint, self.timeouts) {
            Ok(conn) => {
                self.mark_up();
                Ok(Checkout {
                    node: self,
                    conn: Some(Box::new(conn)),
                    slow: true,
                })
            }
            Err(failure) => {
                {
                    let mut state = self.state.lock();
                    state.open -= 1;
                }
                self.freed.notify_one();
                self.mark_down(&failure);
                Err(failure)
            }
        }
    }

    fn give_back(&self, mut conn: Box<Conn>) {
        let mut state = self.state.lock();
        if conn.is_clean() {
            conn.reused = true;
            state.idle.push(conn);
        } else {
            state.open -= 1;
            drop(state);
            // Closing the socket happens outside the lock.
            drop(conn);
        }
        self.freed.notify_one();
    }

    /// Puts the node in its reconnect backoff. Called after a failed connect
    /// and after a timeout; other failures (a reset connection, a server error
    /// reply) say nothing about the next connection.
    pub(crate) fn mark_down(&self, failure: &Failure) {
        let mut state = self.state.lock();
        let shift = state.failures.min(5);
        state.failures = state.failures.saturating_add(1);
        let backoff = (BACKOFF_MIN * (1 << shift)).min(BACKOFF_MAX);
        state.down_until = Some(Instant::now() + backoff);
        drop(state);
        log::warn!(
            "redlease: node {} marked down for {backoff:?}: {failure:?}",
            self.name
        );
    }

    fn mark_up(&self) {
        let mut state = self.state.lock();
        if state.failures > 0 {
            state.failures = 0;
            state.down_until = None;
            drop(state);
            log::info!("redlease: node {} is back up", self.name);
        }
    }

    /// Opens connections until `n` are idle in the pool (at most the pool
    /// size), so that the first burst of locks does not pay for connecting.
    pub(crate) fn preconnect(&self, n: usize) -> Result<(), Failure> {
        let mut held = Vec::with_capacity(n);
        while held.len() < n.min(self.config.max_conns) {
            held.push(self.checkout(false)?);
        }
        Ok(())
    }

    /// The server's `run_id` (from `INFO server`), which tells two addresses
    /// of one server apart from two servers. `None` when the server will not
    /// say (an ACL user without `INFO`).
    pub(crate) fn run_id(&self) -> Result<Option<[u8; 40]>, Failure> {
        let mut conn = self.checkout(false)?;
        crate::resp::encode(conn.request(), &[b"INFO", b"server"]);
        conn.send()?;
        let deadline = Instant::now() + self.timeouts.io;
        conn.recv_next_with(deadline, |reply| match reply {
            Reply::Bulk(info) => Ok(info
                .split(|&b| b == b'\n')
                .find_map(|line| line.strip_prefix(b"run_id:"))
                .and_then(|id| id.get(..40))
                .and_then(|id| id.try_into().ok())),
            Reply::Error(_) => Ok(None),
            _ => Err(Failure::Protocol("unexpected reply to INFO")),
        })?
    }
}

/// A connection taken from a node's pool; goes back (or is closed, if
/// broken) when dropped.
pub(crate) struct Checkout<'a> {
    node: &'a Node,
    conn: Option<Box<Conn>>,
    /// Whether taking it took real time: a wait for a free connection, or
    /// opening a new one.
    pub(crate) slow: bool,
}

impl fmt::Debug for Checkout<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkout")
            .field("node", &self.node.name)
            .finish()
    }
}

impl Deref for Checkout<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        // Invariant: `conn` is only taken in `drop`.
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl DerefMut for Checkout<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("connection present until drop")
    }
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.node.give_back(conn);
        }
    }
}
