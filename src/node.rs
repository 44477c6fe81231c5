//! One Redis endpoint: its bounded pool of connections and its health.
//!
//! The pool is a `Vec` with room for every connection reserved up front, so
//! taking and returning a connection never allocates. A thread that finds the
//! pool empty opens a new connection while there is room, and otherwise waits
//! (bounded) for one to come back.
//!
//! Health is the node's own business, told to it by its [`Checkout`]s:
//! - any well-formed reply marks it healthy at once;
//! - a failed connect, or a timeout on a request that had time to be
//!   answered, puts it in a reconnect backoff (50 ms doubling to 1 s) during
//!   which it is skipped ([`Failure::Down`]), so a dead or hung minority
//!   costs a quorum one timeout per backoff, not one per lock;
//! - a node that failed is never reconnected on the hot path: once its
//!   backoff ends, a thread connects in the background and puts the
//!   connection in the pool, while operations skip the node until then.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::conn::{Conn, Timeouts};
use crate::endpoint::Endpoint;
use crate::error::Failure;
use crate::resp::Reply;
use crate::time;

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

/// How to take a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// An idle one if any, else a new one (see [`Node::checkout`]).
    Pooled,
    /// A new one, connecting within `budget` at most: the idle connection
    /// just used proved stale (closed by the server while it sat idle), so
    /// its siblings, which sat at least as long, are closed too.
    Fresh { budget: Duration },
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
    /// Consecutive failures, for the backoff; zero when healthy. Atomic so
    /// that a healthy reply costs one load, not a lock.
    failures: AtomicU32,
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
    /// A background connect is under way.
    reconnecting: bool,
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
                reconnecting: false,
            }),
            freed: Condvar::new(),
            failures: AtomicU32::new(0),
        }
    }

    /// The I/O timeout its connections use.
    pub(crate) fn io_timeout(&self) -> Duration {
        self.timeouts.io
    }

    /// Takes a connection: an idle one if any; else, while there is room, a
    /// new one (connected here if the node is healthy, in the background if
    /// it failed recently: then this returns [`Failure::Down`]); else the
    /// first one returned within the pool wait.
    pub(crate) fn checkout(self: &Arc<Node>, take: Take) -> Result<Checkout<'_>, Failure> {
        let mut state = self.state.lock();
        if let Some(until) = state.down_until
            && Instant::now() < until
        {
            return Err(Failure::Down);
        }
        let connect_within = match take {
            Take::Pooled => self.timeouts.connect,
            Take::Fresh { budget } => {
                let stale = std::mem::take(&mut state.idle);
                state.open -= stale.len();
                state.idle.reserve(self.config.max_conns);
                drop(stale);
                budget.min(self.timeouts.connect)
            }
        };
        let mut deadline = None;
        loop {
            if let Some(conn) = state.idle.pop() {
                return Ok(Checkout {
                    node: self,
                    conn: Some(conn),
                });
            }
            if state.open < self.config.max_conns {
                if take == Take::Pooled && self.failures.load(Ordering::Relaxed) > 0 {
                    self.reconnect_in_background(&mut state);
                    return Err(Failure::Down);
                }
                state.open += 1;
                drop(state);
                return self.open_new(connect_within);
            }
            let deadline = *deadline.get_or_insert_with(|| time::deadline_in(self.config.wait));
            if self.freed.wait_until(&mut state, deadline).timed_out()
                && state.idle.is_empty()
                && state.open >= self.config.max_conns
            {
                return Err(Failure::PoolTimeout(self.config.wait));
            }
        }
    }

    /// Opens a connection in a slot already counted in `open`, within
    /// `connect_within`.
    fn open_new(&self, connect_within: Duration) -> Result<Checkout<'_>, Failure> {
        let timeouts = Timeouts {
            connect: connect_within,
            ..self.timeouts
        };
        match Conn::connect(&self.endpoint, timeouts) {
            Ok(conn) => {
                self.mark_up();
                Ok(Checkout {
                    node: self,
                    conn: Some(Box::new(conn)),
                })
            }
            Err(failure) => {
                self.state.lock().open -= 1;
                self.freed.notify_one();
                // A connect cut short by the caller's budget says little.
                if connect_within >= self.timeouts.connect || !matches!(failure, Failure::Timeout) {
                    self.mark_down(&failure);
                }
                Err(failure)
            }
        }
    }

    /// Starts a thread that opens one connection and puts it in the pool,
    /// unless one is already at it. The thread holds the node only weakly:
    /// a manager dropped meanwhile is not kept alive, and the thread ends
    /// within one connect timeout and one I/O timeout.
    fn reconnect_in_background(self: &Arc<Node>, state: &mut State) {
        if state.reconnecting {
            return;
        }
        state.reconnecting = true;
        state.open += 1;
        let node = Arc::downgrade(self);
        let (endpoint, timeouts) = (self.endpoint.clone(), self.timeouts);
        let spawned = thread::Builder::new()
            .name("redlease-reconnect".into())
            .spawn(move || reconnected(&node, Conn::connect(&endpoint, timeouts)));
        if let Err(e) = spawned {
            state.reconnecting = false;
            state.open -= 1;
            log::warn!(
                "redlease: cannot start a reconnect thread for {}: {e}",
                self.name
            );
        }
    }

    fn give_back(&self, mut conn: Box<Conn>) {
        let mut state = self.state.lock();
        if conn.is_clean() {
            conn.returned_to_pool();
            state.idle.push(conn);
        } else {
            state.open -= 1;
            drop(state);
            // Closing the socket happens outside the lock.
            drop(conn);
        }
        self.freed.notify_one();
    }

    /// Puts the node in its reconnect backoff.
    fn mark_down(&self, failure: &Failure) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed);
        let backoff = (BACKOFF_MIN * (1 << failures.min(5))).min(BACKOFF_MAX);
        self.state.lock().down_until = Some(Instant::now() + backoff);
        log::warn!(
            "redlease: node {} marked down for {backoff:?}: {failure:?}",
            self.name
        );
    }

    /// Marks the node healthy: one atomic load when it already is.
    fn mark_up(&self) {
        if self.failures.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut state = self.state.lock();
        if self.failures.swap(0, Ordering::Relaxed) > 0 {
            state.down_until = None;
            drop(state);
            log::info!("redlease: node {} is back up", self.name);
        }
    }

    /// Opens connections until `n` are idle in the pool (at most the pool
    /// size), so that the first burst of locks does not pay for connecting.
    pub(crate) fn preconnect(self: &Arc<Node>, n: usize) -> Result<(), Failure> {
        let mut held = Vec::with_capacity(n);
        while held.len() < n.min(self.config.max_conns) {
            held.push(self.checkout(Take::Pooled)?);
        }
        Ok(())
    }
}

/// Delivers a background connect's outcome to its node, if the node is
/// still there.
fn reconnected(node: &Weak<Node>, result: Result<Conn, Failure>) {
    let Some(node) = node.upgrade() else { return };
    let mut state = node.state.lock();
    state.reconnecting = false;
    match result {
        Ok(mut conn) => {
            conn.returned_to_pool();
            state.idle.push(Box::new(conn));
            drop(state);
            node.mark_up();
        }
        Err(failure) => {
            state.open -= 1;
            drop(state);
            node.mark_down(&failure);
        }
    }
    node.freed.notify_one();
}

/// A connection taken from a node's pool; goes back (or is closed, if
/// broken) when dropped. Tells the node how its requests went.
pub(crate) struct Checkout<'a> {
    node: &'a Node,
    conn: Option<Box<Conn>>,
}

impl Checkout<'_> {
    /// Waits (until `deadline`) for the reply to the latest request and
    /// interprets it, as [`Conn::recv_latest`]; then tells the node: any
    /// well-formed reply shows it healthy, and a timeout counts against it
    /// only if the request `had_time` to be answered (a read left no time
    /// by a slow sibling is no evidence).
    pub(crate) fn recv<T>(
        &mut self,
        deadline: Instant,
        had_time: bool,
        interpret: impl FnMut(Reply<'_>) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        match self.recv_latest(deadline, interpret) {
            Ok(reply) => {
                if !matches!(reply, Err(Failure::Protocol(_))) {
                    self.node.mark_up();
                }
                reply
            }
            Err(Failure::Timeout) => {
                if had_time {
                    self.node.mark_down(&Failure::Timeout);
                }
                Err(Failure::Timeout)
            }
            Err(failure) => Err(failure),
        }
    }
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
