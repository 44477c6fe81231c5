//! The entry point: [`LockManager`] hands out [`Lock`]s.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::builder::LockManagerBuilder;
use crate::error::{Error, Result};
use crate::keeper::{Keeper, LeaseRef};
use crate::lock::Lock;
use crate::observe::{Observe, Outcome};
use crate::probe;
use crate::quorum::{Acquired, Attempt, ExtendFailed, HandedOff};
use crate::retry::RetryPolicy;
use crate::route::Route;
use crate::script::FAIR_LEASE_MS;
use crate::status::Status;
use crate::time;
use crate::token::Token;
use crate::wait::{Handed, Registration, Wakeups, Wants};

/// Hands out locks on one Redis node or a Redlock quorum of independent
/// nodes.
///
/// Cheap to clone (an `Arc` inside; cloning does not allocate) and meant to
/// be shared across threads: clones share the same connection pools.
///
/// ```no_run
/// use std::time::Duration;
///
/// let locks = redlease::LockManager::builder()
///     .node("redis://127.0.0.1:6379")
///     .build()?;
///
/// if let Some(lock) = locks.try_lock("orders:42", Duration::from_secs(10))? {
///     // ... critical section; lock.remaining() says how long it stays valid
///     let still_ours: bool = lock.release()?;
///     # let _ = still_ours;
/// }
/// # Ok::<(), redlease::Error>(())
/// ```
#[derive(Clone)]
pub struct LockManager {
    shared: Arc<Shared>,
}

/// What every clone shares.
#[derive(Debug)]
struct Shared {
    /// The nodes, and which of them a key's lock lives on.
    route: Arc<Route>,
    /// Keeps locks alive on request; its thread starts with the first.
    keeper: Keeper,
    /// Default cap on how long a kept-alive lock is renewed.
    max_hold: Option<Duration>,
    retry: RetryPolicy,
    limits: Limits,
    /// The shortest TTL that leaves validity after the drift allowance
    /// (whole milliseconds), worked out once.
    min_ttl: Duration,
    /// Waiters and the subscribers that wake them. Dropped with the last
    /// clone, which stops the subscriber threads.
    wakeups: Wakeups,
    /// First come, first served (one node only).
    fair: bool,
    /// Every lock gets a fencing token.
    fencing: bool,
    io_timeout: Duration,
    /// Metrics handles (feature `metrics`; empty without).
    observe: Arc<Observe>,
}

/// What keys and TTLs the manager accepts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_ttl: Duration,
    pub(crate) max_key_len: usize,
}

/// The start of a call, when metrics are on; no clock read otherwise.
#[inline]
pub(crate) fn observing() -> Option<Instant> {
    cfg!(feature = "metrics").then(Instant::now)
}

/// Why waiting for a lock (a permit…) stopped.
pub(crate) enum Waited<T> {
    Got(T),
    /// The policy's attempts ran out; the lock was held at the last one.
    Held {
        attempts: u32,
    },
    /// The wait bound passed; the lock was held at the last attempt.
    TimedOut {
        attempts: u32,
    },
    /// An error that is final, or the last attempt's.
    Failed(Error),
}

impl<T> From<Result<T>> for Waited<T> {
    fn from(result: Result<T>) -> Waited<T> {
        match result {
            Ok(got) => Waited::Got(got),
            Err(e) => Waited::Failed(e),
        }
    }
}

/// The attempts a wait repeats ([`LockManager::wait_for`]): a lock's, a
/// permit's, a read or write lock's, a multi-key lock's.
pub(crate) trait Attempts {
    /// The guard an attempt gives.
    type Got;

    /// One attempt; `attempt` counts from 1; `registered`: the thread is a
    /// registered waiter (the attempt may learn the holder's PTTL).
    /// `Ok(Err(retry_in))`: held, for `retry_in` when known.
    fn attempt(
        &mut self,
        attempt: u32,
        registered: bool,
    ) -> Result<Result<Self::Got, Option<Duration>>>;

    /// The key whose releases wake the waiter (asked after an attempt found
    /// it held).
    fn wake_key(&self) -> &[u8];

    /// How a release tells the waiter: every waiter woken or the oldest;
    /// handed the lock directly or woken to try.
    fn wants(&self) -> Wants;

    /// The longest nap between attempts, given the policy's.
    fn cap(&self, policy_cap: Duration) -> Duration {
        policy_cap
    }

    /// The longest nap between attempts of any kind (a backoff after
    /// failures too), when the attempts keep a place that lapses.
    fn max_nap(&self) -> Option<Duration> {
        None
    }

    /// A lock another thread of the manager handed over on the wake key.
    /// Only locks are handed over; anything else releases it and fails.
    fn handed(&mut self, handed: Handed, attempts: u32) -> Result<Self::Got>;
}

/// A lock's attempts.
struct LockAttempts<'m> {
    manager: &'m LockManager,
    key: &'m [u8],
    ttl: Duration,
    /// Fair mode: the wait's one token.
    fair_token: Option<Token>,
}

impl Attempts for LockAttempts<'_> {
    type Got = Lock;

    #[inline]
    fn attempt(
        &mut self,
        attempt: u32,
        registered: bool,
    ) -> Result<Result<Lock, Option<Duration>>> {
        let how = self.manager.how(true, registered);
        self.manager
            .attempt(self.key, self.ttl, attempt, how, self.fair_token)
    }

    fn wake_key(&self) -> &[u8] {
        self.key
    }

    fn wants(&self) -> Wants {
        Wants {
            all: false,
            handoff: true,
            each_release: false,
        }
    }

    fn cap(&self, policy_cap: Duration) -> Duration {
        self.max_nap()
            .map_or(policy_cap, |most| policy_cap.min(most))
    }

    fn max_nap(&self) -> Option<Duration> {
        // Often enough to renew the place in the queue.
        self.fair_token
            .is_some()
            .then(|| Duration::from_millis(FAIR_LEASE_MS / 5))
    }

    fn handed(&mut self, handed: Handed, attempts: u32) -> Result<Lock> {
        Ok(self.manager.handed(self.key, self.ttl, handed, attempts))
    }
}

impl LockManager {
    /// A builder with the defaults documented on each of its setters.
    pub fn builder() -> LockManagerBuilder {
        LockManagerBuilder::default()
    }

    pub(crate) fn new(
        route: Route,
        retry: RetryPolicy,
        limits: Limits,
        fair: bool,
        io_timeout: Duration,
        max_hold: Option<Duration>,
        fencing: bool,
    ) -> LockManager {
        let wakeups = Wakeups::new(&route.nodes(), fair);
        let route = Arc::new(route);
        let min_ttl = min_ttl(&route, limits.max_ttl);
        let observe = Arc::new(Observe::default());
        LockManager {
            shared: Arc::new(Shared {
                keeper: Keeper::new(Arc::clone(&route), Arc::clone(&observe)),
                observe,
                max_hold,
                fencing,
                route,
                retry,
                min_ttl,
                limits,
                wakeups,
                fair,
                io_timeout,
            }),
        }
    }

    /// Number of nodes (in a Redis Cluster, the masters serving slots now).
    pub fn nodes(&self) -> usize {
        self.shared.route.node_count()
    }

    /// Each node's health, for an operator's health endpoint or a log line:
    /// up or down and since when, its latest failure, its restart
    /// quarantine, its connections, and a `PING` round trip measured now
    /// (a node that is down is not pinged, but a call after its backoff
    /// starts its reconnect, as a lock call would). Nodes are asked one
    /// after another; each may take the pool wait when all its connections
    /// are busy, or a connect when none is open, plus one I/O timeout. A
    /// slow answer here never marks a node down.
    ///
    /// ```no_run
    /// # let locks = redlease::LockManager::builder().node("redis://127.0.0.1").build()?;
    /// let status = locks.status();
    /// if !status.healthy() {
    ///     eprintln!("{status}");
    /// }
    /// # Ok::<(), redlease::Error>(())
    /// ```
    pub fn status(&self) -> Status {
        let nodes: Vec<_> = self
            .shared
            .route
            .nodes()
            .iter()
            .map(|node| {
                let mut status = node.status();
                // A node in its backoff answers Down at once; one past it
                // starts its reconnect in the background.
                status.round_trip = probe::round_trip(node);
                status
            })
            .collect();
        // In a cluster every master is needed: each serves its own slots.
        let quorum = if self.shared.route.is_cluster() {
            nodes.len()
        } else {
            self.shared.route.needed()
        };
        Status { nodes, quorum }
    }

    /// Votes needed for a lock: a strict majority of the nodes; 1 in a
    /// Redis Cluster (the key's slot master).
    pub fn quorum(&self) -> usize {
        self.shared.route.needed()
    }

    /// Makes one attempt to take the lock on `key` for `ttl`; never waits for
    /// it to become free. Blocks for one round trip to the nodes (bounded by
    /// the I/O timeout).
    ///
    /// `Ok(None)` means another owner holds it: an expected outcome, not an
    /// error. Errors mean the attempt could not be decided (a node failed,
    /// too few answered) or the arguments were refused; anything the attempt
    /// may have written has been cleaned up.
    ///
    /// `ttl` is rounded down to whole milliseconds; it must leave room for
    /// the clock-drift allowance and stay within the configured maximum.
    #[inline]
    pub fn try_lock(&self, key: impl AsRef<[u8]>, ttl: Duration) -> Result<Option<Lock>> {
        let key = key.as_ref();
        let ttl = self.check(key, ttl)?;
        let started = observing();
        // Fair: only when no one is queued.
        let how = self.how(false, false);
        let result = self.attempt(key, ttl, 1, how, None).map(Result::ok);
        self.observe_call(started, &result);
        result
    }

    /// Takes the lock, waiting by the manager's retry policy while another
    /// owner holds it or transient failures stand in the way. Blocks.
    ///
    /// Gives up with [`Error::Held`] when the policy's attempts run out,
    /// [`Error::WaitTimedOut`] when its wait bound passes, or the last error
    /// when that error is not worth retrying (or was the last attempt's).
    pub fn lock(&self, key: impl AsRef<[u8]>, ttl: Duration) -> Result<Lock> {
        self.lock_with(key, ttl, &self.shared.retry)
    }

    /// [`lock`](Self::lock) with a retry policy for this call only.
    pub fn lock_with(
        &self,
        key: impl AsRef<[u8]>,
        ttl: Duration,
        policy: &RetryPolicy,
    ) -> Result<Lock> {
        let key = key.as_ref();
        let ttl = self.check(key, ttl)?;
        let started = Instant::now();
        let deadline = policy
            .wait_bound()
            .map(|wait| time::deadline(started, wait));
        let waited = self.wait(key, ttl, policy, deadline);
        self.waited(waited, started)
    }

    /// Tries to take the lock until `wait` has passed, retrying on the
    /// manager's policy's schedule (its own attempt and wait bounds do not
    /// apply here). Blocks at most about `wait` plus one round trip.
    ///
    /// `Ok(None)` when another owner still held it at the last attempt.
    pub fn try_lock_for(
        &self,
        key: impl AsRef<[u8]>,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<Lock>> {
        let key = key.as_ref();
        let ttl = self.check(key, ttl)?;
        let policy = self.try_for_policy();
        let started = observing();
        let result = match self.wait(key, ttl, &policy, Some(time::deadline_in(wait))) {
            Waited::Got(lock) => Ok(Some(lock)),
            Waited::Held { .. } | Waited::TimedOut { .. } => Ok(None),
            Waited::Failed(e) => Err(e),
        };
        self.observe_call(started, &result);
        result
    }

    /// The manager's policy for a `try_…_for` call: its schedule, without
    /// its attempt and wait bounds.
    pub(crate) fn try_for_policy(&self) -> RetryPolicy {
        self.shared.retry.clone().max_attempts(u32::MAX)
    }

    /// The manager's retry policy.
    pub(crate) fn retry_policy(&self) -> &RetryPolicy {
        &self.shared.retry
    }

    /// Counts a `try_lock`-like call's outcome (feature `metrics`).
    #[inline]
    pub(crate) fn observe_call<T>(&self, started: Option<Instant>, result: &Result<Option<T>>) {
        if let Some(started) = started {
            let outcome = match result {
                Ok(Some(_)) => Outcome::Granted,
                Ok(None) => Outcome::Held,
                Err(e) => Outcome::of(e),
            };
            self.shared.observe.acquire(outcome, started);
        }
    }

    /// The nodes, for the primitives (`primitives/`).
    pub(crate) fn route(&self) -> &Route {
        &self.shared.route
    }

    /// This manager released `key` (a primitive's): its waiters for the
    /// key are woken at once.
    pub(crate) fn released_here(&self, key: &[u8], token: &Token) {
        self.shared.wakeups.released(key, token);
    }

    /// The manager's metrics handles, for its locks.
    pub(crate) fn observe(&self) -> &Observe {
        &self.shared.observe
    }

    /// [`wait_for`](Self::wait_for) a lock: fair mode keeps one token, its
    /// place in the queue, for the whole wait, and leaves the queue when
    /// the wait ends without the lock.
    fn wait(
        &self,
        key: &[u8],
        ttl: Duration,
        policy: &RetryPolicy,
        deadline: Option<Instant>,
    ) -> Waited<Lock> {
        let fair = self.shared.fair;
        // Still fresh for this acquisition.
        let fair_token = match fair.then(Token::random).transpose() {
            Ok(token) => token,
            Err(e) => return Waited::Failed(Error::RandomSource(e.to_string().into())),
        };
        let mut locks = LockAttempts {
            manager: self,
            key,
            ttl,
            fair_token,
        };
        let waited = self.wait_for(&mut locks, ttl, policy, deadline);
        if let (Some(token), false) = (fair_token, matches!(waited, Waited::Got(_))) {
            self.shared.route.fair_leave(key, &token);
        }
        waited
    }

    /// Attempts until one succeeds, an error is final, or the policy's
    /// attempts or the deadline run out; says which. Every way of waiting
    /// goes through here: locks, permits, read and write locks, multi-key
    /// locks (`attempts` makes their attempts).
    ///
    /// Waking (the default, see [`RetryPolicy::wake_on_release`]): after a
    /// first attempt finds the lock held, the thread registers as a waiter
    /// (subscribed and confirmed before it goes on, so no release can be
    /// missed) and attempts again at once; from then on each attempt also
    /// learns how long the holder keeps the key, and the thread sleeps until
    /// it is woken by a release, that time runs out, the wake cap passes,
    /// or the deadline comes. Failures are retried on the backoff's delays.
    pub(crate) fn wait_for<A: Attempts>(
        &self,
        tries: &mut A,
        ttl: Duration,
        policy: &RetryPolicy,
        deadline: Option<Instant>,
    ) -> Waited<A::Got> {
        let cap = tries.cap(policy.cap());
        let mut delays = policy.delays();
        let mut waiter: Option<Registration<'_>> = None;
        let mut attempts = 0u32;
        let mut waited = loop {
            attempts = attempts.saturating_add(1);
            if let Some(waiter) = &waiter {
                // A lock handed over since the last look needs no attempt
                // (which would only find it held, by the handed token).
                if let Some(handed) = waiter.attempting() {
                    break Waited::from(tries.handed(handed, attempts));
                }
            }
            // `trouble`: a failure worth retrying; else the lock was held.
            let (trouble, retry_in) = match tries.attempt(attempts, waiter.is_some()) {
                Ok(Ok(got)) => break Waited::Got(got),
                Ok(Err(retry_in)) => (None, retry_in),
                Err(e) if e.is_retryable() => (Some(e), None),
                Err(e) => break Waited::Failed(e),
            };
            // Waiting to be woken is for held locks; failures back off.
            let wake = policy.wakes() && trouble.is_none();
            let stop = |held: Waited<A::Got>| trouble.map_or(held, Waited::Failed);
            if attempts >= policy.attempts_bound() {
                break stop(Waited::Held { attempts });
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break stop(Waited::TimedOut { attempts });
            }
            // A multi-key lock blocked by another key than the one it
            // listens to: it listens to that one instead (registered anew,
            // then an attempt at once, as for a first registration). Only
            // waiters that take no handoff, so none can be under way.
            if let Some(w) = &waiter
                && wake
                && !tries.wants().handoff
                && !w.is_for(tries.wake_key())
            {
                waiter = None;
            }
            if wake && waiter.is_none() {
                let listen_until = time::deadline(now, self.shared.io_timeout);
                let listen_until = deadline.map_or(listen_until, |d| d.min(listen_until));
                let (key, wants) = (tries.wake_key(), tries.wants());
                waiter = Some(self.shared.wakeups.register(key, ttl, listen_until, wants));
                continue;
            }
            let nap = match (wake, retry_in) {
                // The holder's key expires in `r`: look just after.
                (true, Some(r)) => (r + Duration::from_millis(1)).min(cap),
                (true, None) => cap,
                (false, _) => delays.next().unwrap_or(cap),
            };
            // Some waits must attempt that often whatever the policy (a
            // place to renew: fair mode's queue, a writer's turn).
            let nap = tries.max_nap().map_or(nap, |most| nap.min(most));
            let until = time::deadline(now, nap);
            let until = deadline.map_or(until, |d| d.min(until));
            match &waiter {
                Some(waiter) if wake => {
                    waiter.wait(until);
                    if let Some(handed) = waiter.take_handed() {
                        break Waited::from(tries.handed(handed, attempts));
                    }
                }
                _ => std::thread::sleep(until.saturating_duration_since(Instant::now())),
            }
        };
        // A handoff under way to this thread is seen through before leaving.
        if let Some(handed) = waiter.as_ref().and_then(Registration::settle) {
            match waited {
                // Cannot happen (a key handed over was never free for us to
                // take), but a lock must never be left behind.
                Waited::Got(_) => {
                    let _ = self.shared.route.release(tries.wake_key(), &handed.0);
                }
                _ => waited = Waited::from(tries.handed(handed, attempts)),
            }
        }
        waited
    }

    /// What a wait for a lock, a permit… ended with, as the caller's
    /// result (`lock`, `acquire`, `read`…), counted in the metrics.
    pub(crate) fn waited<T>(&self, waited: Waited<T>, started: Instant) -> Result<T> {
        let result = match waited {
            Waited::Got(got) => Ok(got),
            Waited::Held { attempts } => Err(Error::Held {
                attempts,
                waited: started.elapsed(),
            }),
            Waited::TimedOut { attempts } => Err(Error::WaitTimedOut {
                attempts,
                waited: started.elapsed(),
            }),
            Waited::Failed(e) => Err(e),
        };
        let outcome = match &result {
            Ok(_) => Outcome::Granted,
            Err(e) => Outcome::of(e),
        };
        self.shared.observe.acquire(outcome, started);
        result
    }

    /// What kind of attempt the manager's mode makes: `waits` for one made
    /// by `lock` (fair mode joins the queue), `registered` once the thread
    /// is a registered waiter (the attempt also learns the holder's PTTL).
    fn how(&self, waits: bool, registered: bool) -> Attempt {
        if self.shared.fair {
            Attempt::Fair { enqueue: waits }
        } else if self.shared.fencing {
            Attempt::Fenced {
                waiting: registered,
            }
        } else if registered {
            Attempt::Waiting
        } else {
            Attempt::Plain
        }
    }

    /// The guard for a lock another thread handed over.
    fn handed(
        &self,
        key: &[u8],
        ttl: Duration,
        (token, valid_until): Handed,
        attempts: u32,
    ) -> Lock {
        Lock::new(self.clone(), key, token, ttl, valid_until, attempts, None)
    }

    /// One attempt; `attempt` counts from 1. `Ok(Err(retry_in))`: held by
    /// another owner, whose key expires in `retry_in` when known. A fresh
    /// token unless fair mode passes the wait's own.
    fn attempt(
        &self,
        key: &[u8],
        ttl: Duration,
        attempt: u32,
        how: Attempt,
        token: Option<Token>,
    ) -> Result<Result<Lock, Option<Duration>>> {
        let token = match token {
            Some(token) => token,
            None => Token::random().map_err(|e| Error::RandomSource(e.to_string().into()))?,
        };
        match self.shared.route.acquire(key, &token, ttl, how)? {
            Acquired::Granted { valid_until, fence } => Ok(Ok(Lock::new(
                self.clone(),
                key,
                token,
                ttl,
                valid_until,
                attempt,
                fence,
            ))),
            Acquired::Held { retry_in, .. } => Ok(Err(retry_in)),
        }
    }

    /// Renews a lock on the quorum; for [`Lock::extend`].
    pub(crate) fn extend(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> Result<Instant, ExtendFailed> {
        self.shared.route.extend(key, token, ttl)
    }

    /// Starts keeping a lock alive, for at most `max_hold` from now; for
    /// [`Lock::keep_alive`].
    pub(crate) fn keep(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
        valid_until: Instant,
        max_hold: Option<Duration>,
    ) -> Result<LeaseRef> {
        let hold_until = max_hold.map(time::deadline_in);
        self.shared
            .keeper
            .keep(key, token, ttl, valid_until, hold_until)
    }

    /// The builder's default cap on keeping a lock alive.
    pub(crate) fn max_hold(&self) -> Option<Duration> {
        self.shared.max_hold
    }

    /// Confirms a fence over the quorum; for [`Lock::fence`]. Returns when
    /// the last reply came.
    pub(crate) fn confirm_fence(&self, key: &[u8], token: &Token, fence: u64) -> Result<Instant> {
        self.shared.route.confirm_fence(key, token, fence)
    }

    /// A kept-alive lock's next renewal moved (an explicit extend).
    pub(crate) fn requeue_lease(&self, lease: &LeaseRef) {
        self.shared.keeper.requeue(lease);
    }

    /// A kept-alive lock's holder is done with its lease.
    pub(crate) fn finish_lease(&self, lease: LeaseRef) {
        self.shared.keeper.finish(lease);
    }

    /// Releases a lock on the quorum; for [`Lock::release`] and its `Drop`.
    /// When a thread of this manager waits for the key, the lock is handed
    /// to it directly (see `wait.rs`); otherwise, or if that fails, it is
    /// released, and a waiter of this manager is woken at once.
    #[inline(always)]
    pub(crate) fn release(&self, key: &[u8], token: &Token) -> Result<bool> {
        let shared = &*self.shared;
        // A lock handed over would come without a fence of its own: in
        // fencing mode waiters are woken and take it themselves.
        // Nor when grants wait for replicas: a handoff would not wait.
        let handoff = (!shared.fencing && !shared.route.waits_for_replicas())
            .then(|| shared.wakeups.claim(key))
            .flatten();
        if let Some(handoff) = handoff {
            // No fresh token, no handoff: `handoff` delivers nothing when
            // dropped, and the waiter tries by itself.
            if let Ok(theirs) = Token::random() {
                let started = observing();
                match shared.route.handoff(key, token, &theirs, handoff.ttl()) {
                    HandedOff::Granted { valid_until } => {
                        if let Some(started) = started {
                            shared.observe.handed_off(started.elapsed());
                        }
                        if !handoff.deliver(Some((theirs, valid_until))) {
                            // The waiter is gone: let its lock go.
                            let _ = shared.route.release(key, &theirs);
                        }
                        return Ok(true);
                    }
                    HandedOff::Failed { released } => {
                        drop(handoff);
                        return released;
                    }
                }
            }
        }
        let released = shared.route.release(key, token);
        if let Ok(true) = released {
            shared.wakeups.released(key, token);
        }
        released
    }

    /// What keys and TTLs this manager accepts.
    #[cfg(feature = "internals")]
    pub(crate) fn limits(&self) -> Limits {
        self.shared.limits
    }

    /// The clock-drift allowance for `ttl`.
    pub(crate) fn drift(&self, ttl: Duration) -> Duration {
        self.shared.route.drift(ttl)
    }

    /// Validates a key and a TTL; returns the TTL in whole milliseconds.
    #[inline]
    pub(crate) fn check(&self, key: &[u8], ttl: Duration) -> Result<Duration> {
        let shared = &*self.shared;
        let key_fits = !key.is_empty() && key.len() <= shared.limits.max_key_len;
        if !key_fits
            || ((shared.fencing || shared.fair)
                && shared.route.is_cluster()
                && !crate::cluster::companions_fit(key))
        {
            return Err(self.bad_key(key));
        }
        self.check_ttl(ttl)
    }

    /// Why [`check`](Self::check) refused `key`.
    #[cold]
    fn bad_key(&self, key: &[u8]) -> Error {
        match self.check_key(key) {
            Err(e) => e,
            Ok(()) => Error::invalid(format!(
                "key {:?} has a '}}' but no hash tag, so its fence or queue keys cannot share its cluster slot: give it a hash tag ({{…}})",
                key.escape_ascii().to_string()
            )),
        }
    }

    /// Validates a key: not empty, within the manager's length cap.
    pub(crate) fn check_key(&self, key: &[u8]) -> Result<()> {
        let max_key_len = self.shared.limits.max_key_len;
        if key.is_empty() {
            return Err(Error::invalid("key is empty"));
        }
        if key.len() > max_key_len {
            return Err(Error::invalid(format!(
                "key is {} bytes, over the {max_key_len} byte cap",
                key.len(),
            )));
        }
        Ok(())
    }

    /// Validates a TTL; returns it rounded down to whole milliseconds, as it
    /// is sent (`PX`, `PEXPIRE`). `PEXPIRE 0` would delete the key, so a TTL
    /// is never let through as zero.
    #[inline]
    pub(crate) fn check_ttl(&self, ttl: Duration) -> Result<Duration> {
        let shared = &*self.shared;
        // Rounded down to whole milliseconds, without 128-bit arithmetic.
        let whole = Duration::new(ttl.as_secs(), ttl.subsec_millis() * 1_000_000);
        if whole >= shared.min_ttl && ttl <= shared.limits.max_ttl {
            return Ok(whole);
        }
        self.bad_ttl(ttl)
    }

    /// [`check_ttl`](Self::check_ttl)'s rules again, spelled out, for
    /// the error that says which one a TTL breaks.
    #[cold]
    fn bad_ttl(&self, ttl: Duration) -> Result<Duration> {
        let max_ttl = self.shared.limits.max_ttl;
        if ttl > max_ttl {
            return Err(Error::invalid(format!(
                "ttl {ttl:?} is over the {max_ttl:?} cap"
            )));
        }
        // Cannot truncate: max_ttl is far below u64::MAX milliseconds.
        let ttl = Duration::from_millis(ttl.as_millis() as u64);
        let drift = self.drift(ttl);
        if ttl <= drift {
            return Err(Error::invalid(format!(
                "ttl {ttl:?} leaves no validity after the {drift:?} clock-drift allowance"
            )));
        }
        Ok(ttl)
    }
}

/// The shortest whole-millisecond TTL above its own drift allowance on
/// `route` (a few milliseconds: the allowance is 2 ms plus under half the
/// TTL, so the search is short); `Duration::MAX` if none is up to
/// `max_ttl` (then every TTL takes the slow check, which refuses it).
fn min_ttl(route: &Route, max_ttl: Duration) -> Duration {
    (1..=millis_cap(max_ttl))
        .map(Duration::from_millis)
        .find(|&ttl| ttl > route.drift(ttl))
        .unwrap_or(Duration::MAX)
}

/// `ttl` in whole milliseconds, as a `u64`.
fn millis_cap(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

impl fmt::Debug for LockManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockManager")
            .field("nodes", &self.shared.route.nodes())
            .field("quorum", &self.quorum())
            .field("retry", &self.shared.retry)
            .field("fair", &self.shared.fair)
            .finish_non_exhaustive()
    }
}
