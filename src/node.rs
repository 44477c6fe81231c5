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
//!   answered, puts it in a reconnect backoff (50 ms doubling to 1 s, one
//!   step per backoff however many operations failed at once) during which
//!   it is skipped ([`Failure::Down`]), so a dead or hung minority costs a
//!   quorum one timeout per backoff, not one per lock; its idle connections
//!   are closed, since they lead to the same sick server;
//! - a node that failed is never reconnected on the hot path: once its
//!   backoff ends, a thread connects in the background and puts the
//!   connection in the pool, while operations skip the node until then.
//!
//! Restarts are its business too: every connection's handshake says when
//! the server last started, and a server that started less than the
//! quarantine ago (the longest lease: it may have lost locks it held) is
//! *quarantined* until then. A quarantined node is healthy; it just grants
//! no new lock (see `Quorum::acquire`).

use std::fmt::{self, Write as _};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::conn::{Conn, Timeouts, Uptime};
use crate::endpoint::{Addr, Endpoint};
use crate::error::Failure;
use crate::observe::NodeObserve;
use crate::resp::Reply;
use crate::sentinel::Watch;
use crate::status::NodeStatus;
use crate::time::{self, Deadline};

/// First reconnect backoff after a failure.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest reconnect backoff.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A node's settings: its pool, and its restart quarantine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NodeConfig {
    /// Most connections open at once.
    pub(crate) max_conns: usize,
    /// Longest wait for a connection when all are in use.
    pub(crate) wait: Duration,
    /// How long after a server starts it may grant no lock; `None`: no
    /// quarantine.
    pub(crate) quarantine: Option<Duration>,
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
    config: NodeConfig,
    state: Mutex<State>,
    /// Signalled whenever a connection or a slot for one becomes free.
    freed: Condvar,
    /// Whether `failures` is above zero: a mirror of the state's, so that a
    /// healthy reply costs one load, not a lock.
    failing: AtomicBool,
    /// Whether `quarantined_until` is set: a mirror, so that a node out of
    /// quarantine costs a grant one load, not a lock.
    quarantined: AtomicBool,
    /// For a node found through sentinels: the master switches they
    /// announced; connections opened before the latest are closed.
    watch: Option<Watch>,
    /// The latest failure, described, and when: for `status()`. Noted at
    /// most once a second, in a reused string.
    last_error: Mutex<Option<(Instant, String)>>,
    /// Its failures and health as metrics (feature `metrics`).
    observe: NodeObserve,
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
    /// Backoffs in a row, for the backoff's length; zero when healthy.
    failures: u32,
    /// A background connect is under way.
    reconnecting: bool,
    /// Grants nothing before this (a recent restart).
    quarantined_until: Option<Instant>,
    /// Since when the server has not said how long it has been up.
    silent_since: Option<Instant>,
    /// The watch's epoch the idle connections belong to.
    epoch: u64,
    /// When it last went down or came back up (or was made).
    changed_at: Instant,
    /// The `run_id` of the server its latest connection reached.
    run_id: Option<[u8; 40]>,
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
    pub(crate) fn new(endpoint: Endpoint, timeouts: Timeouts, config: NodeConfig) -> Node {
        let watch = match &endpoint.addr {
            Addr::Sentinel { sentinels, .. } => Some(Watch::start(Arc::clone(sentinels), timeouts)),
            _ => None,
        };
        let observe = NodeObserve::new(&endpoint.name());
        Node {
            observe,
            name: Arc::from(endpoint.name()),
            endpoint,
            timeouts,
            config,
            state: Mutex::new(State {
                idle: Vec::with_capacity(config.max_conns),
                open: 0,
                down_until: None,
                failures: 0,
                reconnecting: false,
                quarantined_until: None,
                silent_since: None,
                epoch: 0,
                changed_at: Instant::now(),
                run_id: None,
            }),
            freed: Condvar::new(),
            failing: AtomicBool::new(false),
            quarantined: AtomicBool::new(false),
            watch,
            last_error: Mutex::new(None),
        }
    }

    /// The I/O timeout its connections use.
    pub(crate) fn io_timeout(&self) -> Duration {
        self.timeouts.io
    }

    /// Whether the node's server is found through sentinels.
    pub(crate) fn follows_failover(&self) -> bool {
        self.endpoint.follows_failover()
    }

    /// Its address and credentials.
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Its connections' timeouts.
    pub(crate) fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Takes a connection: an idle one if any; else, while there is room, a
    /// new one (connected here if the node is healthy, in the background if
    /// it failed recently: then this returns [`Failure::Down`]); else the
    /// first one returned within the pool wait. Never waits for a sick
    /// node's pool, nor, for [`Take::Fresh`], for any pool.
    #[inline(always)]
    pub(crate) fn checkout(self: &Arc<Node>, take: Take) -> Result<Checkout<'_>, Failure> {
        // The common case first, small enough to inline: a healthy node
        // with an idle connection, its pool's lock free. Anything else takes
        // the full path, which looks at everything again; a checkout that
        // found the lock taken is `slow` (it may have waited for it), so
        // that a round reads the clock after it.
        if take == Take::Pooled {
            let Some(mut state) = self.state.try_lock() else {
                return self.checkout_slow(take, true);
            };
            if state.down_until.is_none() {
                let epoch = self.sync_epoch(&mut state);
                if let Some(conn) = state.idle.pop() {
                    return Ok(Checkout {
                        node: self,
                        conn: Some(conn),
                        slow: false,
                        epoch,
                    });
                }
            }
        }
        self.checkout_slow(take, false)
    }

    /// [`checkout`](Self::checkout), every case; `contended`: the pool's
    /// lock was found taken.
    #[inline(never)]
    fn checkout_slow(
        self: &Arc<Node>,
        take: Take,
        contended: bool,
    ) -> Result<Checkout<'_>, Failure> {
        let mut state = self.state.lock();
        let epoch = self.sync_epoch(&mut state);
        if let Take::Fresh { .. } = take {
            let stale = std::mem::take(&mut state.idle);
            state.open -= stale.len();
            state.idle.reserve(self.config.max_conns);
            drop(stale);
        }
        let mut deadline = None;
        loop {
            // Looked at again after every wait: the node may have failed
            // meanwhile.
            if let Some(until) = state.down_until
                && Instant::now() < until
            {
                return Err(Failure::Down);
            }
            if let Some(conn) = state.idle.pop() {
                return Ok(Checkout {
                    node: self,
                    conn: Some(conn),
                    slow: contended || deadline.is_some(),
                    epoch,
                });
            }
            let failing = state.failures > 0;
            if state.open < self.config.max_conns {
                if take == Take::Pooled && failing {
                    self.reconnect_in_background(&mut state);
                    return Err(Failure::Down);
                }
                state.open += 1;
                drop(state);
                let within = match take {
                    Take::Pooled => self.timeouts,
                    Take::Fresh { budget } => Timeouts {
                        connect: budget.min(self.timeouts.connect),
                        io: budget.min(self.timeouts.io),
                    },
                };
                return self.open_new(within, epoch);
            }
            if failing || state.reconnecting {
                // Its connections are busy with a sick server, or one is
                // being opened in the background: waiting would only wait.
                return Err(Failure::Down);
            }
            if matches!(take, Take::Fresh { .. }) {
                return Err(Failure::PoolTimeout(Duration::ZERO));
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

    /// Opens a connection in a slot already counted in `open`, with these
    /// timeouts (a caller's budget may shorten the node's own).
    fn open_new(&self, timeouts: Timeouts, epoch: u64) -> Result<Checkout<'_>, Failure> {
        let connect_within = timeouts.connect;
        match Conn::connect(&self.endpoint, timeouts) {
            Ok(conn) => {
                self.saw_start(conn.server_uptime(), conn.server_run_id());
                self.mark_up();
                Ok(Checkout {
                    node: self,
                    conn: Some(Box::new(conn)),
                    slow: true,
                    epoch,
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
        let epoch = self.sync_epoch(state);
        let node = Arc::downgrade(self);
        let (endpoint, timeouts) = (self.endpoint.clone(), self.timeouts);
        let spawned = thread::Builder::new()
            .name("redlease-reconnect".into())
            .spawn(move || {
                // Whatever happens, the outcome is delivered: a panic must
                // not leave the node reconnecting for ever.
                // The endpoint is this thread's own copy: nothing a panic
                // interrupts is seen again.
                let connect = std::panic::AssertUnwindSafe(|| Conn::connect(&endpoint, timeouts));
                let result = std::panic::catch_unwind(connect)
                    .unwrap_or(Err(Failure::Protocol("reconnect panicked")));
                reconnected(&node, result, epoch);
            });
        if let Err(e) = spawned {
            state.reconnecting = false;
            state.open -= 1;
            log::warn!(
                "redlease: cannot start a reconnect thread for {}: {e}",
                self.name
            );
        }
    }

    /// The sentinels' latest master switch, with the idle connections of
    /// the ones before closed; 0 for a node with a fixed address.
    #[inline(always)]
    fn sync_epoch(&self, state: &mut State) -> u64 {
        match &self.watch {
            None => 0,
            Some(watch) => self.sync_epoch_with(watch, state),
        }
    }

    #[inline(never)]
    fn sync_epoch_with(&self, watch: &Watch, state: &mut State) -> u64 {
        let now = watch.epoch();
        if now != state.epoch {
            state.epoch = now;
            let stale = std::mem::take(&mut state.idle);
            state.open -= stale.len();
            state.idle.reserve(self.config.max_conns);
            drop(stale);
        }
        now
    }

    #[inline]
    fn give_back(&self, mut conn: Box<Conn>, epoch: u64) {
        let mut state = self.state.lock();
        if conn.is_clean() && self.sync_epoch(&mut state) == epoch {
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

    /// Puts the node in its reconnect backoff, one step longer than the
    /// last, unless it is in one already (operations failing together are
    /// one failure); closes its idle connections.
    fn mark_down(&self, failure: &Failure) {
        let mut state = self.state.lock();
        let now = Instant::now();
        if state.down_until.is_some_and(|until| now < until) {
            return;
        }
        let backoff = (BACKOFF_MIN * (1 << state.failures.min(5))).min(BACKOFF_MAX);
        if state.failures == 0 {
            state.changed_at = now;
            self.observe.up(false);
        }
        state.failures = state.failures.saturating_add(1);
        state.down_until = Some(now + backoff);
        self.failing.store(true, Ordering::Relaxed);
        let idle = std::mem::take(&mut state.idle);
        state.open -= idle.len();
        state.idle.reserve(self.config.max_conns);
        drop(state);
        // Closing sockets happens outside the lock.
        drop(idle);
        self.note(failure);
        log::warn!(
            "redlease: node {} marked down for {backoff:?}: {failure:?}",
            self.name
        );
    }

    /// Marks the node healthy: one atomic load when it already is.
    #[inline]
    fn mark_up(&self) {
        if self.failing.load(Ordering::Relaxed) {
            self.mark_up_slow();
        }
    }

    #[cold]
    fn mark_up_slow(&self) {
        let mut state = self.state.lock();
        let was_down = state.failures > 0;
        if was_down {
            state.changed_at = Instant::now();
            self.observe.up(true);
        }
        state.failures = 0;
        state.down_until = None;
        self.failing.store(false, Ordering::Relaxed);
        drop(state);
        if was_down {
            log::info!("redlease: node {} is back up", self.name);
        }
    }

    /// An operation failed here (a round's verdict, after any second
    /// chance): counted, and kept as the latest error.
    #[cold]
    pub(crate) fn failed(&self, failure: &Failure) {
        self.observe.failed();
        self.note(failure);
    }

    /// Keeps `failure` as the node's latest, unless one was kept less than
    /// a second ago (or another thread is keeping one now).
    #[cold]
    fn note(&self, failure: &Failure) {
        let Some(mut last) = self.last_error.try_lock() else {
            return;
        };
        let now = Instant::now();
        if last
            .as_ref()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) < Duration::from_secs(1))
        {
            return;
        }
        // The string is reused: a node failing the same way for hours
        // allocates for its description once.
        let mut text = last.take().map(|(_, text)| text).unwrap_or_default();
        text.clear();
        let _ = write!(text, "{failure}");
        *last = Some((now, text));
    }

    /// Its health for `status()`, without a round trip.
    pub(crate) fn status(&self) -> NodeStatus {
        let now = Instant::now();
        let (up, since, connections, idle) = {
            let state = self.state.lock();
            let up = state.failures == 0;
            (
                up,
                now.saturating_duration_since(state.changed_at),
                state.open,
                state.idle.len(),
            )
        };
        let last_error = self
            .last_error
            .lock()
            .as_ref()
            .map(|(at, text)| (text.clone(), now.saturating_duration_since(*at)));
        NodeStatus {
            name: self.name.to_string(),
            up,
            since,
            last_error,
            quarantined: self.quarantined(),
            round_trip: None,
            connections,
            idle,
        }
    }

    /// Whether the node keeps a restart quarantine at all.
    pub(crate) fn quarantines(&self) -> bool {
        self.config.quarantine.is_some()
    }

    /// Whether the node may be in its restart quarantine: one atomic load.
    /// When it says no, [`quarantined`](Self::quarantined) says `None`
    /// without taking the node's lock.
    #[inline]
    pub(crate) fn may_be_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// How long the node stays quarantined (a recent restart), if it is:
    /// one atomic load when it is not.
    #[inline]
    pub(crate) fn quarantined(&self) -> Option<Duration> {
        if self.may_be_quarantined() {
            self.quarantined_slow()
        } else {
            None
        }
    }

    #[cold]
    fn quarantined_slow(&self) -> Option<Duration> {
        let mut state = self.state.lock();
        let left = state
            .quarantined_until
            .map(|until| until.saturating_duration_since(Instant::now()))
            .filter(|left| !left.is_zero());
        if left.is_none() && state.quarantined_until.take().is_some() {
            self.quarantined.store(false, Ordering::Relaxed);
            drop(state);
            log::info!("redlease: node {} out of its restart quarantine", self.name);
        }
        left
    }

    /// A connection's handshake said how long the server had been up
    /// (`None`: it would not say) and which server it is. Up for less than
    /// the quarantine, the node is quarantined until the quarantine has
    /// passed since the start. A server that will not say is quarantined in
    /// full from the first time it was seen not saying (not from every
    /// connection, which would never end). And a node whose address now
    /// leads to another server than before (a Sentinel failover, a DNS or
    /// proxy switch: a new `run_id` with a long uptime) is quarantined in
    /// full from now: the new server may lack locks the old one granted.
    fn saw_start(&self, uptime: Option<Uptime>, run_id: Option<[u8; 40]>) {
        let Some(quarantine) = self.config.quarantine else {
            return;
        };
        let now = Instant::now();
        let mut state = self.state.lock();
        let switched = match (state.run_id, run_id) {
            (Some(before), Some(now_id)) => before != now_id,
            _ => false,
        };
        if run_id.is_some() {
            state.run_id = run_id;
        }
        // Computed forward from when the uptime was read, never by going
        // back from it (an Instant cannot always be taken back that far).
        let until = match uptime {
            Some(Uptime { up, seen_at }) => {
                state.silent_since = None;
                time::deadline(seen_at, quarantine.saturating_sub(up))
            }
            None => time::deadline(*state.silent_since.get_or_insert(now), quarantine),
        };
        let until = if switched {
            until.max(time::deadline(now, quarantine))
        } else {
            until
        };
        if until <= now {
            return;
        }
        if let Some(known) = state.quarantined_until {
            // Uptimes are whole seconds: connections to one server disagree
            // by up to one, which is no news (nor a new log line).
            if until <= known + Duration::from_secs(1) {
                state.quarantined_until = Some(known.max(until));
                return;
            }
        }
        state.quarantined_until = Some(until);
        self.quarantined.store(true, Ordering::Relaxed);
        drop(state);
        match uptime {
            _ if switched => log::warn!(
                "redlease: node {} now leads to another server (a failover?): it grants no lock for {:?}",
                self.name,
                until - now
            ),
            Some(Uptime { up, .. }) => log::warn!(
                "redlease: node {} started {up:?} ago: it may have lost locks it held, so it grants none for {:?}",
                self.name,
                until - now
            ),
            None => log::warn!(
                "redlease: node {} does not say when it started: it grants no lock for {:?}",
                self.name,
                until - now
            ),
        }
    }

    /// Starts the restart quarantine now (a cluster replica promoted to
    /// master may lack locks its old master granted); returns its length,
    /// for the caller to log, or `None` if the quarantine is off.
    pub(crate) fn quarantine_now(&self) -> Option<Duration> {
        let quarantine = self.config.quarantine?;
        let until = time::deadline_in(quarantine);
        let mut state = self.state.lock();
        state.quarantined_until = Some(state.quarantined_until.map_or(until, |u| u.max(until)));
        self.quarantined.store(true, Ordering::Relaxed);
        Some(quarantine)
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
fn reconnected(node: &Weak<Node>, result: Result<Conn, Failure>, epoch: u64) {
    let Some(node) = node.upgrade() else { return };
    let mut state = node.state.lock();
    state.reconnecting = false;
    match result {
        Ok(mut conn) => {
            // The quarantine is known before the connection can be taken.
            drop(state);
            node.saw_start(conn.server_uptime(), conn.server_run_id());
            let mut state = node.state.lock();
            if node.sync_epoch(&mut state) == epoch {
                conn.returned_to_pool();
                state.idle.push(Box::new(conn));
            } else {
                // The sentinels announced a new master meanwhile.
                state.open -= 1;
            }
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
    /// Whether taking it took real time: a wait for a free connection, or
    /// opening a new one.
    pub(crate) slow: bool,
    /// The node's sentinel epoch when it was taken (see `Node::sync_epoch`).
    epoch: u64,
}

impl Checkout<'_> {
    /// Waits (until `deadline`) for the reply to the latest request and
    /// interprets it, as [`Conn::recv_latest`]; then tells the node: any
    /// well-formed reply shows it healthy, and a timeout counts against it
    /// only if the request `had_time` to be answered (a read left no time
    /// by a slow sibling is no evidence).
    #[inline]
    pub(crate) fn recv<T>(
        &mut self,
        deadline: Deadline,
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

impl Checkout<'_> {
    /// How long its node stays in its restart quarantine, if it is.
    #[inline]
    pub(crate) fn node_quarantined(&self) -> Option<Duration> {
        self.node.quarantined()
    }

    /// Whether its node may be in its restart quarantine (see
    /// [`Node::may_be_quarantined`]).
    #[inline]
    pub(crate) fn node_may_be_quarantined(&self) -> bool {
        self.node.may_be_quarantined()
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
    #[inline]
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.node.give_back(conn, self.epoch);
        }
    }
}
