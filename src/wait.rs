//! Waiting without polling: the threads of one manager that wait for keys,
//! and how they are woken.
//!
//! A thread that found a key held registers here before the attempt that
//! decides to wait (and, the first for that key, has the key's wake channel
//! subscribed on every node and confirmed), so that no release can fall
//! between that attempt and the wait. It then sleeps until the first of:
//!
//! - a release: a message from a node (another process released it), or a
//!   release by another thread of this manager (direct handoff: no need to
//!   wait for the server's message);
//! - the holder's TTL running out (learned in the same round trip as the
//!   attempt that found it held), for holders that do not publish;
//! - the wake cap, for a lost message;
//! - its deadline.
//!
//! A wake is only a hint: the woken thread attempts, and the quorum decides.
//! One waiter is woken per release, oldest first: only one can win, and
//! waking the others would only load the servers. A woken waiter that leaves
//! without attempting passes the wake on. In fair mode every waiter is
//! woken, since only the server knows which of them is the queue's head.
//!
//! Between threads of one manager a release does better than wake: it
//! *hands the lock over*. The releasing thread claims the oldest waiter and,
//! in the round trip that would have released the key, swaps its token for
//! a fresh one of the waiter's (the key is never free, so no one else slips
//! in), then delivers the lock to the waiter, which returns it without a
//! round trip of its own. Every [`HANDOFF_STREAK`]th release of a key in a
//! row is a real one, published to every process, so that waiters elsewhere
//! get their turn. A claimed waiter does not leave before the outcome is
//! delivered.
//!
//! The table is a `Vec` of slots, one per key being waited on, reused and
//! never shrunk, each with an inline key and an inline queue: registering,
//! waking and leaving allocate nothing in steady state. Threads are parked
//! and unparked through their own `Thread` handles.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use smallvec::SmallVec;

use crate::lock::INLINE_KEY;
use crate::node::Node;
use crate::round::Mask;
use crate::subscriber::Subscriber;
use crate::time;
use crate::token::Token;

/// Bytes of a token a release message carries: enough to tell this
/// process's own releases apart.
pub(crate) const TOKEN_PREFIX: usize = 8;

/// Direct handoffs of one key in a row, after which a release is a real one
/// (published), so that other processes' waiters get their turn.
pub(crate) const HANDOFF_STREAK: u32 = 8;

/// A lock handed over: its token and the end of its validity.
pub(crate) type Handed = (Token, Instant);

/// The threads of one manager waiting for keys.
pub(crate) struct Waiters {
    /// Threads registered, over all keys. Zero on the uncontended path,
    /// which then never takes the table's lock.
    registered: AtomicUsize,
    table: Mutex<Vec<Slot>>,
    next_id: AtomicU64,
    /// Wake every waiter on a release, not only the oldest.
    wake_all: bool,
}

/// One key being waited on.
struct Slot {
    in_use: bool,
    key: SmallVec<[u8; INLINE_KEY]>,
    /// Oldest first.
    queue: SmallVec<[Waiter; 8]>,
    /// A waiter was woken and has not attempted since: waking another now
    /// would only make a second thread lose the same race.
    wake_in_flight: bool,
    /// Nodes whose subscriber confirmed the key's channel.
    confirmed: Mask,
    /// The token prefix of this process's latest release of the key: the
    /// nodes' messages about it are not news (the waiter was woken
    /// directly).
    released_here: Option<[u8; TOKEN_PREFIX]>,
    /// Direct handoffs in a row.
    streak: u32,
    /// Every waiter is woken by a release (a read-write lock's: readers can
    /// all win at once); never handed over.
    all: bool,
    /// Each release wakes one more waiter (see [`Wants::each_release`]).
    each: bool,
}

struct Waiter {
    id: u64,
    thread: Thread,
    woken: bool,
    /// The TTL it asks for, for a handoff.
    ttl: Duration,
    /// A releasing thread is handing it the lock: it must not leave before
    /// the outcome.
    claimed: bool,
    /// The lock handed over, not yet taken.
    handed: Option<Handed>,
    /// It waits for a plain lock, which a release may hand over to it (a
    /// primitive's waiter, or a multi-key lock's, is only woken).
    takes_handoff: bool,
}

/// How a waiter wants to be told of a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wants {
    /// Every waiter for the key is woken, not only the oldest (readers can
    /// all win at once). Set by any waiter, it holds for the key.
    pub(crate) all: bool,
    /// A release may hand the lock over directly (plain locks).
    pub(crate) handoff: bool,
    /// Each release wakes one more waiter, even while one woken before has
    /// not tried yet (a semaphore: each release frees a permit). Set by
    /// any waiter, it holds for the key.
    pub(crate) each_release: bool,
}

/// A waiter chosen for a handoff.
#[derive(Debug)]
pub(crate) struct Claim {
    slot: usize,
    id: u64,
    /// What the waiter asked for.
    pub(crate) ttl: Duration,
}

/// A thread's place in the table.
#[derive(Debug)]
pub(crate) struct Registered {
    slot: usize,
    id: u64,
}

impl std::fmt::Debug for Waiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiters")
            .field("registered", &self.registered.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Slot {
    fn waiter(&mut self, id: u64) -> &mut Waiter {
        // Invariant: a registered id stays in its slot's queue until it
        // deregisters.
        self.queue
            .iter_mut()
            .find(|w| w.id == id)
            .expect("registered waiter present")
    }

    /// Wakes the oldest waiter not woken yet, unless one is already on its
    /// way; or every waiter.
    fn wake(&mut self, all: bool) {
        if all || self.all {
            for w in &mut self.queue {
                w.woken = true;
                w.thread.unpark();
            }
            self.wake_in_flight = !self.queue.is_empty();
            return;
        }
        if self.wake_in_flight && !self.each {
            return;
        }
        if let Some(w) = self.queue.iter_mut().find(|w| !w.woken) {
            w.woken = true;
            self.wake_in_flight = true;
            w.thread.unpark();
        }
    }
}

impl Waiters {
    pub(crate) fn new(wake_all: bool) -> Waiters {
        Waiters {
            registered: AtomicUsize::new(0),
            table: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            wake_all,
        }
    }

    /// Whether no thread waits for any key.
    #[inline]
    pub(crate) fn is_idle(&self) -> bool {
        self.registered.load(Ordering::Relaxed) == 0
    }

    /// Adds the calling thread to `key`'s waiters. `first` runs under the
    /// table's lock when it is the first waiter for the key (to subscribe:
    /// under the lock, so that a subscription and the unsubscription of a
    /// previous round cannot cross).
    pub(crate) fn register(
        &self,
        key: &[u8],
        ttl: Duration,
        wants: Wants,
        first: impl FnOnce(&[u8]),
    ) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let waiter = Waiter {
            id,
            thread: thread::current(),
            woken: false,
            ttl,
            claimed: false,
            handed: None,
            takes_handoff: wants.handoff,
        };
        let all = wants.all;
        let mut table = self.table.lock();
        self.registered.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = table.iter().position(|s| s.in_use && s.key[..] == *key) {
            table[slot].queue.push(waiter);
            table[slot].all |= all;
            table[slot].each |= wants.each_release;
            return Registered { slot, id };
        }
        let slot = match table.iter().position(|s| !s.in_use) {
            Some(free) => free,
            None => {
                table.push(Slot {
                    in_use: false,
                    key: SmallVec::new(),
                    queue: SmallVec::new(),
                    wake_in_flight: false,
                    confirmed: 0,
                    released_here: None,
                    streak: 0,
                    all: false,
                    each: false,
                });
                table.len() - 1
            }
        };
        let s = &mut table[slot];
        s.in_use = true;
        s.key.clear();
        s.key.extend_from_slice(key);
        s.queue.push(waiter);
        s.wake_in_flight = false;
        s.confirmed = 0;
        s.released_here = None;
        s.streak = 0;
        s.all = all;
        s.each = wants.each_release;
        first(key);
        Registered { slot, id }
    }

    /// Removes a waiter. A wake it received and did not use goes to the
    /// next waiter; `last` runs under the table's lock when no waiter is
    /// left for the key (to unsubscribe).
    pub(crate) fn deregister(&self, r: &Registered, last: impl FnOnce(&[u8])) {
        let mut table = self.table.lock();
        self.registered.fetch_sub(1, Ordering::Relaxed);
        let slot = &mut table[r.slot];
        let Some(at) = slot.queue.iter().position(|w| w.id == r.id) else {
            return;
        };
        let waiter = slot.queue.remove(at);
        if waiter.woken && slot.wake_in_flight {
            slot.wake_in_flight = false;
            slot.wake(self.wake_all);
        }
        if slot.queue.is_empty() {
            slot.in_use = false;
            last(&slot.key);
        }
    }

    /// The waiter is about to attempt: returns the lock handed to it, if
    /// any (then there is nothing to attempt); else a wake it received is
    /// used up. One step under the lock: a handoff delivered in between
    /// cannot have its wake cleared unseen.
    pub(crate) fn attempting(&self, r: &Registered) -> Option<Handed> {
        let mut table = self.table.lock();
        let slot = &mut table[r.slot];
        let waiter = slot.waiter(r.id);
        if let Some(handed) = waiter.handed.take() {
            return Some(handed);
        }
        if std::mem::take(&mut waiter.woken) {
            slot.wake_in_flight = false;
        }
        None
    }

    /// Chooses the oldest waiter for `key` that takes a handoff (a plain
    /// lock's); `None` when there is none, in fair mode, for a key whose
    /// waiters are all woken, or when the key's streak of handoffs calls for
    /// a real release.
    pub(crate) fn claim(&self, key: &[u8]) -> Option<Claim> {
        if self.wake_all || self.is_idle() {
            return None;
        }
        let mut table = self.table.lock();
        let slot = table.iter().position(|s| s.in_use && s.key[..] == *key)?;
        let s = &mut table[slot];
        if s.all {
            return None;
        }
        if s.streak >= HANDOFF_STREAK {
            s.streak = 0;
            return None;
        }
        let waiter = s
            .queue
            .iter_mut()
            .find(|w| w.takes_handoff && !w.claimed && w.handed.is_none())?;
        waiter.claimed = true;
        s.streak += 1;
        Some(Claim {
            slot,
            id: waiter.id,
            ttl: waiter.ttl,
        })
    }

    /// The outcome of a claim: the lock handed over, or `None` (the waiter
    /// is woken to try by itself). `false` when the waiter is gone (it
    /// could only have left by unwinding): the caller must let the lock go.
    pub(crate) fn deliver(&self, claim: Claim, handed: Option<Handed>) -> bool {
        let mut table = self.table.lock();
        let slot = &mut table[claim.slot];
        let Some(waiter) = slot.queue.iter_mut().find(|w| w.id == claim.id) else {
            return false;
        };
        waiter.claimed = false;
        waiter.handed = handed;
        waiter.woken = true;
        waiter.thread.unpark();
        if handed.is_none() {
            slot.streak = 0;
        }
        true
    }

    /// Whether the waiter waits for `key`.
    pub(crate) fn is_for(&self, r: &Registered, key: &[u8]) -> bool {
        self.table.lock()[r.slot].key[..] == *key
    }

    /// Takes the lock handed to this waiter, if any.
    pub(crate) fn take_handed(&self, r: &Registered) -> Option<Handed> {
        self.table.lock()[r.slot].waiter(r.id).handed.take()
    }

    /// Before leaving: waits for a handoff under way to this waiter to be
    /// delivered (one round trip at most), and takes what it brought.
    pub(crate) fn settle(&self, r: &Registered) -> Option<Handed> {
        self.park_until(time::deadline_in(Duration::MAX), || {
            !self.table.lock()[r.slot].waiter(r.id).claimed
        });
        self.take_handed(r)
    }

    /// Parks the calling thread until it is woken (`true`) or `until`
    /// passes (`false`).
    pub(crate) fn wait(&self, r: &Registered, until: Instant) -> bool {
        self.park_until(until, || self.table.lock()[r.slot].waiter(r.id).woken)
    }

    /// Parks the calling thread until every node in `nodes` confirmed the
    /// key's channel, or `until` passes.
    pub(crate) fn await_confirmed(&self, r: &Registered, nodes: Mask, until: Instant) {
        self.park_until(until, || {
            self.table.lock()[r.slot].confirmed & nodes == nodes
        });
    }

    fn park_until(&self, until: Instant, mut done: impl FnMut() -> bool) -> bool {
        loop {
            if done() {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            // Spurious returns and stale unparks only cost another look.
            thread::park_timeout(until - now);
        }
    }

    /// This manager released `key` (held with `token`): wakes its waiters
    /// at once, and notes the release so that the nodes' messages about it
    /// are not taken for news.
    pub(crate) fn released_here(&self, key: &[u8], token: &[u8]) {
        if self.is_idle() {
            return;
        }
        let mut table = self.table.lock();
        if let Some(slot) = table.iter_mut().find(|s| s.in_use && s.key[..] == *key) {
            let mut prefix = [0u8; TOKEN_PREFIX];
            prefix.copy_from_slice(&token[..TOKEN_PREFIX]);
            slot.released_here = Some(prefix);
            slot.wake(self.wake_all);
        }
    }

    /// A node says `key` was released by the holder whose token starts with
    /// `prefix`.
    pub(crate) fn message(&self, key: &[u8], prefix: &[u8]) {
        let mut table = self.table.lock();
        if let Some(slot) = table.iter_mut().find(|s| s.in_use && s.key[..] == *key) {
            if slot.released_here.is_some_and(|p| p[..] == *prefix) {
                return;
            }
            slot.wake(self.wake_all);
        }
    }

    /// Node `node` confirmed the subscription to `key`'s channel.
    pub(crate) fn confirmed(&self, key: &[u8], node: usize) {
        let mut table = self.table.lock();
        if let Some(slot) = table.iter_mut().find(|s| s.in_use && s.key[..] == *key) {
            slot.confirmed |= 1 << node;
            for w in &slot.queue {
                w.thread.unpark();
            }
        }
    }

    /// Node `node`'s subscription was lost: messages may have been missed,
    /// so every waiter is woken to look for itself.
    pub(crate) fn lost(&self, node: usize) {
        let mut table = self.table.lock();
        for slot in table.iter_mut().filter(|s| s.in_use) {
            slot.confirmed &= !(1 << node);
            slot.wake(true);
        }
    }

    /// Runs `f` with every key waited on, under the table's lock (to
    /// subscribe them all after a reconnect, in order with the others).
    pub(crate) fn with_keys<T>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &[u8]>) -> T) -> T {
        let table = self.table.lock();
        let mut keys = table.iter().filter(|s| s.in_use).map(|s| &s.key[..]);
        f(&mut keys)
    }

    /// Runs `f` under the table's lock if no thread waits: a subscriber
    /// closing for idleness cannot then race a new subscription.
    pub(crate) fn if_idle(&self, f: impl FnOnce()) -> bool {
        let _table = self.table.lock();
        let idle = self.is_idle();
        if idle {
            f();
        }
        idle
    }
}

/// A manager's waiting machinery: the waiters table, and a subscriber per
/// node feeding it the nodes' release messages.
#[derive(Debug)]
pub(crate) struct Wakeups {
    waiters: Arc<Waiters>,
    subscribers: Box<[Subscriber]>,
}

impl Wakeups {
    /// `wake_all`: wake every waiter on a release (fair mode).
    pub(crate) fn new(nodes: &[Arc<Node>], wake_all: bool) -> Wakeups {
        let waiters = Arc::new(Waiters::new(wake_all));
        let subscribers = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                Subscriber::new(
                    i,
                    Arc::clone(&node.name),
                    node.endpoint().clone(),
                    node.timeouts(),
                    Arc::clone(&waiters),
                )
            })
            .collect();
        Wakeups {
            waiters,
            subscribers,
        }
    }

    /// Registers the calling thread as waiting for `key`. The first waiter
    /// for a key subscribes its channel on every node and waits (until
    /// `until` at most) for the connected nodes to confirm: from then on no
    /// release can go unnoticed, and the caller's next attempt decides.
    pub(crate) fn register(
        &self,
        key: &[u8],
        ttl: Duration,
        until: Instant,
        wants: Wants,
    ) -> Registration<'_> {
        let mut asked: Mask = 0;
        let place = self.waiters.register(key, ttl, wants, |key| {
            for (i, subscriber) in self.subscribers.iter().enumerate() {
                if subscriber.subscribe(key) {
                    asked |= 1 << i;
                }
            }
        });
        if asked != 0 {
            self.waiters.await_confirmed(&place, asked, until);
        }
        Registration {
            wakeups: self,
            place,
        }
    }

    /// This manager released `key`: its waiters are woken at once.
    #[inline]
    pub(crate) fn released(&self, key: &[u8], token: &Token) {
        if !self.waiters.is_idle() {
            self.waiters.released_here(key, token.as_bytes());
        }
    }

    /// Claims the oldest waiter for `key` for a direct handoff (see
    /// [`Waiters::claim`]).
    #[inline]
    pub(crate) fn claim(&self, key: &[u8]) -> Option<Handoff<'_>> {
        if self.waiters.is_idle() {
            return None;
        }
        let claim = self.waiters.claim(key)?;
        Some(Handoff {
            waiters: &self.waiters,
            claim: Some(claim),
        })
    }
}

/// A waiter claimed for a handoff. Dropped without delivering (an error, or
/// unwinding), it delivers "nothing": a claimed waiter never waits for ever.
pub(crate) struct Handoff<'w> {
    waiters: &'w Waiters,
    claim: Option<Claim>,
}

impl Handoff<'_> {
    /// The TTL the waiter asked for.
    pub(crate) fn ttl(&self) -> Duration {
        self.claim.as_ref().map_or(Duration::ZERO, |c| c.ttl)
    }

    /// See [`Waiters::deliver`].
    pub(crate) fn deliver(mut self, handed: Option<Handed>) -> bool {
        match self.claim.take() {
            Some(claim) => self.waiters.deliver(claim, handed),
            None => false,
        }
    }
}

impl Drop for Handoff<'_> {
    fn drop(&mut self) {
        if let Some(claim) = self.claim.take() {
            self.waiters.deliver(claim, None);
        }
    }
}

impl std::fmt::Debug for Handoff<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("claim", &self.claim)
            .finish()
    }
}

/// A thread's registration as a waiter; leaving it (drop) deregisters, and
/// the last waiter for a key unsubscribes its channel.
pub(crate) struct Registration<'w> {
    wakeups: &'w Wakeups,
    place: Registered,
}

impl Registration<'_> {
    /// The waiter is about to attempt: the lock handed to it if any, else
    /// a wake it received is used up.
    pub(crate) fn attempting(&self) -> Option<Handed> {
        self.wakeups.waiters.attempting(&self.place)
    }

    /// Sleeps until woken (`true`) or until `until` (`false`).
    pub(crate) fn wait(&self, until: Instant) -> bool {
        self.wakeups.waiters.wait(&self.place, until)
    }

    /// Whether it waits for `key`.
    pub(crate) fn is_for(&self, key: &[u8]) -> bool {
        self.wakeups.waiters.is_for(&self.place, key)
    }

    /// The lock handed to this waiter, if any.
    pub(crate) fn take_handed(&self) -> Option<Handed> {
        self.wakeups.waiters.take_handed(&self.place)
    }

    /// Waits for a handoff under way to be delivered; takes what it brought.
    pub(crate) fn settle(&self) -> Option<Handed> {
        self.wakeups.waiters.settle(&self.place)
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let subscribers = &self.wakeups.subscribers;
        self.wakeups.waiters.deregister(&self.place, |key| {
            for subscriber in subscribers.iter() {
                subscriber.unsubscribe(key);
            }
        });
    }
}

impl std::fmt::Debug for Registration<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("place", &self.place)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LOCK: Wants = Wants {
        all: false,
        handoff: true,
        each_release: false,
    };

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    /// One release wakes the oldest waiter only; a second release while the
    /// first wake is unused wakes nobody more; once the woken one has
    /// attempted (and lost) it is still the oldest; once it has left (won),
    /// the next release wakes the next.
    #[test]
    fn one_wake_per_release_oldest_first() {
        let waiters = Waiters::new(false);
        let mut firsts = 0;
        let a = waiters.register(b"k", Duration::from_secs(1), LOCK, |_| firsts += 1);
        let b = waiters.register(b"k", Duration::from_secs(1), LOCK, |_| firsts += 1);
        assert_eq!(firsts, 1, "only the first waiter subscribes");
        waiters.message(b"k", b"00000000");
        waiters.message(b"k", b"11111111");
        assert!(waiters.wait(&a, Instant::now()));
        assert!(!waiters.wait(&b, Instant::now()));
        waiters.attempting(&a);
        waiters.message(b"k", b"22222222");
        assert!(waiters.wait(&a, Instant::now()));
        assert!(!waiters.wait(&b, Instant::now()));
        waiters.attempting(&a);
        let mut lasts = 0;
        waiters.deregister(&a, |_| lasts += 1);
        waiters.message(b"k", b"33333333");
        assert!(waiters.wait(&b, Instant::now()));
        waiters.deregister(&b, |_| lasts += 1);
        assert_eq!(lasts, 1);
        assert!(waiters.is_idle());
    }

    /// A waiter woken that leaves without attempting passes the wake on.
    #[test]
    fn an_unused_wake_is_passed_on() {
        let waiters = Waiters::new(false);
        let a = waiters.register(b"k", Duration::from_secs(1), LOCK, |_| {});
        let b = waiters.register(b"k", Duration::from_secs(1), LOCK, |_| {});
        waiters.released_here(b"k", b"0123456789abcdef");
        waiters.deregister(&a, |_| {});
        assert!(waiters.wait(&b, Instant::now()));
        waiters.deregister(&b, |_| {});
    }

    /// The nodes' messages about this process's own release are not news;
    /// another holder's are.
    #[test]
    fn own_release_messages_are_ignored() {
        let waiters = Waiters::new(false);
        let a = waiters.register(b"k", Duration::from_secs(1), LOCK, |_| {});
        waiters.released_here(b"k", b"abcdef0123456789");
        assert!(waiters.wait(&a, Instant::now()));
        waiters.attempting(&a);
        waiters.message(b"k", b"abcdef01");
        assert!(!waiters.wait(&a, Instant::now()));
        waiters.message(b"k", b"99999999");
        assert!(waiters.wait(&a, Instant::now()));
        waiters.deregister(&a, |_| {});
    }

    /// A lock handed over just before the waiter's next attempt is what that
    /// attempt returns: its wake is not cleared unseen (that cost a whole
    /// wake cap before this test).
    #[test]
    fn a_handoff_before_an_attempt_is_not_lost() {
        let waiters = Waiters::new(false);
        let a = waiters.register(b"k", Duration::from_secs(1), LOCK, |_| {});
        let claim = waiters.claim(b"k").expect("a waiter to claim");
        let token = Token::random().expect("token");
        assert!(waiters.deliver(claim, Some((token, Instant::now()))));
        assert!(waiters.attempting(&a).is_some_and(|(t, _)| t == token));
        assert!(waiters.attempting(&a).is_none());
        waiters.deregister(&a, |_| {});
    }

    /// Fair mode wakes everyone; a lost subscription wakes everyone.
    #[test]
    fn wake_all_when_asked() {
        let fair = Waiters::new(true);
        let a = fair.register(b"k", Duration::from_secs(1), LOCK, |_| {});
        let b = fair.register(b"k", Duration::from_secs(1), LOCK, |_| {});
        fair.message(b"k", b"x");
        assert!(fair.wait(&a, Instant::now()) && fair.wait(&b, Instant::now()));
        let plain = Waiters::new(false);
        let c = plain.register(b"k", Duration::from_secs(1), LOCK, |_| {});
        let d = plain.register(b"k", Duration::from_secs(1), LOCK, |_| {});
        plain.confirmed(b"k", 0);
        plain.lost(0);
        assert!(plain.wait(&c, Instant::now()) && plain.wait(&d, Instant::now()));
    }

    /// A key registered to wake all (a read-write lock's) wakes every
    /// waiter on one release, in a manager that otherwise wakes one, and
    /// is never claimed for a handoff; other keys still wake one.
    #[test]
    fn wake_all_for_one_key() {
        let waiters = Waiters::new(false);
        let rw = Wants {
            all: true,
            handoff: false,
            each_release: false,
        };
        let a = waiters.register(b"rw", Duration::from_secs(1), rw, |_| {});
        let b = waiters.register(b"rw", Duration::from_secs(1), LOCK, |_| {});
        let c = waiters.register(b"k", Duration::from_secs(1), LOCK, |_| {});
        let d = waiters.register(b"k", Duration::from_secs(1), LOCK, |_| {});
        assert!(waiters.claim(b"rw").is_none());
        waiters.message(b"rw", b"x");
        waiters.message(b"k", b"x");
        assert!(waiters.wait(&a, Instant::now()) && waiters.wait(&b, Instant::now()));
        assert!(waiters.wait(&c, Instant::now()));
        assert!(!waiters.wait(&d, Instant::now()));
    }

    /// A key whose waiters want each release (a semaphore's): two messages
    /// wake two waiters even when the first has not tried yet; elsewhere
    /// the second is held back until it has.
    #[test]
    fn each_release_wakes_one_more_waiter() {
        let waiters = Waiters::new(false);
        let permits = Wants {
            all: false,
            handoff: false,
            each_release: true,
        };
        let a = waiters.register(b"sem", Duration::from_secs(1), permits, |_| {});
        let b = waiters.register(b"sem", Duration::from_secs(1), permits, |_| {});
        let c = waiters.register(b"k", Duration::from_secs(1), LOCK, |_| {});
        let d = waiters.register(b"k", Duration::from_secs(1), LOCK, |_| {});
        for key in [&b"sem"[..], b"sem", b"k", b"k"] {
            waiters.message(key, b"x");
        }
        assert!(waiters.wait(&a, Instant::now()) && waiters.wait(&b, Instant::now()));
        assert!(waiters.wait(&c, Instant::now()));
        assert!(!waiters.wait(&d, Instant::now()));
    }

    /// A waiter that takes no handoff (a multi-key lock's, on a key a plain
    /// lock also uses) is passed over by a claim, for the next lock waiter.
    #[test]
    fn only_lock_waiters_are_handed_a_lock() {
        let waiters = Waiters::new(false);
        let set = Wants {
            all: false,
            handoff: false,
            each_release: false,
        };
        let a = waiters.register(b"k", Duration::from_secs(1), set, |_| {});
        assert!(waiters.claim(b"k").is_none());
        let b = waiters.register(b"k", Duration::from_secs(1), LOCK, |_| {});
        let claim = waiters.claim(b"k").expect("the lock waiter");
        assert_eq!(claim.id, b.id);
        assert!(waiters.deliver(claim, None));
        waiters.deregister(&a, |_| {});
        waiters.deregister(&b, |_| {});
    }

    /// A parked thread is woken by another thread's release well before its
    /// timeout.
    #[test]
    fn a_parked_thread_is_woken() {
        let waiters = Arc::new(Waiters::new(false));
        let r = waiters.register(b"k", Duration::from_secs(1), LOCK, |_| {});
        let waker = {
            let waiters = Arc::clone(&waiters);
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(20));
                waiters.released_here(b"k", b"0123456789abcdef");
            })
        };
        let started = Instant::now();
        assert!(waiters.wait(&r, soon()));
        assert!(started.elapsed() < Duration::from_secs(2));
        waker.join().expect("waker");
        waiters.deregister(&r, |_| {});
    }
}
