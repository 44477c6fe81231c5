//! The lease keeper: one thread per manager that keeps locks alive while
//! their holders work, and tells a holder when its lock is lost.
//!
//! A kept-alive lock has a short TTL (the time it takes the others to notice
//! that its holder crashed) and is renewed about every third of it. The
//! keeper keeps one timer heap for all of them and renews every lock that is
//! due (or nearly) in one round trip per node, many locks per `EVALSHA` (the
//! compare-and-pexpire batch script, which never re-creates a missing key).
//!
//! Each lease's state is one atomic word, tagged with the lease's generation
//! (slots are reused, so a late word about an old lease is recognised and
//! ignored):
//!
//! ```text
//! held ──release()/drop──▶ releasing ──▶ released
//!   │
//!   └──keeper: lost on a majority, validity ran out unrenewed, max_hold──▶ lost
//! ```
//!
//! Release moves a lease to *releasing* before it sends anything, and the
//! keeper renews only leases it finds *held*; a renewal already in flight
//! when the release starts can only pexpire a key that still holds our
//! token, so a released lock is never brought back. The keeper never holds
//! its table's mutex across a round trip.
//!
//! Invariant (the same as [`Lock::extend`](crate::Lock::extend)'s): a
//! lease's validity never exceeds the TTL a majority of nodes could still
//! hold. Renewals follow the extend rule (see `Quorum::renew_many`), and a
//! lease's validity is only written with its data mutex held, across the
//! round trip that justifies it, so the keeper and an explicit `extend`
//! cannot interleave.
//!
//! Steady state allocates nothing: lease slots, the heap, the batch and its
//! buffers are reused.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use smallvec::SmallVec;

use crate::error::Error;
use crate::lock::INLINE_KEY;
use crate::observe::Observe;
use crate::quorum::Renewal;
use crate::route::{Route, needs_one_by_one, renewal_of};
use crate::script::{RENEW_BATCH, RenewArgs};
use crate::time;
use crate::token::Token;

/// Lease states, in the low two bits of the state word; the generation is
/// above them.
const HELD: u64 = 0;
const RELEASING: u64 = 1;
const RELEASED: u64 = 2;
const LOST: u64 = 3;
const STATE_BITS: u64 = 0b11;

/// How soon an undecided renewal is tried again, at the soonest.
const RETRY_MIN: Duration = Duration::from_millis(5);

/// What a holder may run when its lock is lost.
pub(crate) type OnLost = Box<dyn FnOnce() + Send + 'static>;

/// One kept-alive lock, as the keeper and its holder share it.
pub(crate) struct Lease {
    /// Where it sits in the keeper's table.
    slot: u32,
    /// Generation and state (see the module docs).
    state: AtomicU64,
    /// End of validity, in nanoseconds since `epoch`.
    valid_until: AtomicU64,
    /// When it is next due for renewal, in nanoseconds since `epoch`: heap
    /// entries for other times are stale.
    due: AtomicU64,
    epoch: Instant,
    /// What the renewal needs; held across each renewal's round trip.
    data: Mutex<LeaseData>,
    /// Signalled when the lease is lost or released.
    ended: Condvar,
}

struct LeaseData {
    key: SmallVec<[u8; INLINE_KEY]>,
    token: Option<Token>,
    ttl: Duration,
    /// Renewal period: a third of the TTL.
    period: Duration,
    /// After this, renewal stops and the lease is reported lost.
    hold_until: Option<Instant>,
    on_lost: Option<OnLost>,
}

/// A holder's handle on its lease.
pub(crate) struct LeaseRef {
    lease: Arc<Lease>,
    generation: u64,
}

/// What a release found when it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Began {
    /// The lease was held: it is now releasing, and the keeper leaves it.
    Held,
    /// The keeper had reported it lost.
    Lost,
}

/// The keeper of one manager: its table, and its thread once the first
/// lease asks for it. Dropped with the manager, which stops the thread.
pub(crate) struct Keeper {
    core: Arc<Core>,
    thread: Mutex<Option<(JoinHandle<()>, ThreadId)>>,
}

struct Core {
    route: Arc<Route>,
    /// Counts leases found lost (feature `metrics`).
    observe: Arc<Observe>,
    epoch: Instant,
    table: Mutex<Table>,
    /// Signalled when the heap's first entry moves earlier, or on stop.
    changed: Condvar,
}

struct Table {
    /// Every lease slot ever made; reused, never freed before the keeper.
    slots: Vec<Arc<Lease>>,
    /// Slots released and free for reuse.
    free: Vec<u32>,
    /// (due in nanoseconds since the epoch, slot): the next renewals.
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    /// Per slot, the due time of its entry in the heap, if it has one. A
    /// slot keeps one entry (a lease that is due later than its slot's
    /// entry is put back when the entry comes up), so the heap never holds
    /// more than about one entry per slot, however fast locks come and go.
    queued: Vec<Option<u64>>,
    stop: bool,
}

impl Lease {
    fn new(slot: u32, epoch: Instant) -> Lease {
        Lease {
            slot,
            state: AtomicU64::new(RELEASED),
            valid_until: AtomicU64::new(0),
            due: AtomicU64::new(u64::MAX),
            epoch,
            data: Mutex::new(LeaseData {
                key: SmallVec::new(),
                token: None,
                ttl: Duration::ZERO,
                period: Duration::ZERO,
                hold_until: None,
                on_lost: None,
            }),
            ended: Condvar::new(),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        nanos(self.epoch, at)
    }

    fn instant(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }

    fn valid_until(&self) -> Instant {
        self.instant(self.valid_until.load(Ordering::Acquire))
    }

    /// Marks generation `generation` lost if it is still held; returns
    /// whether it did.
    fn mark_lost(&self, generation: u64) -> bool {
        self.state
            .compare_exchange(
                word(generation, HELD),
                word(generation, LOST),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }
}

fn word(generation: u64, state: u64) -> u64 {
    generation << 2 | state
}

fn nanos(epoch: Instant, at: Instant) -> u64 {
    // Cannot truncate for 584 years.
    at.saturating_duration_since(epoch).as_nanos() as u64
}

impl LeaseRef {
    fn state(&self) -> Option<u64> {
        let word = self.lease.state.load(Ordering::Acquire);
        (word >> 2 == self.generation).then_some(word & STATE_BITS)
    }

    /// How long the lock stays valid: zero once lost, released or expired.
    pub(crate) fn remaining(&self) -> Duration {
        match self.state() {
            Some(HELD | RELEASING) => self
                .lease
                .valid_until()
                .saturating_duration_since(Instant::now()),
            _ => Duration::ZERO,
        }
    }

    /// The end of validity as last recorded.
    pub(crate) fn valid_until(&self) -> Instant {
        self.lease.valid_until()
    }

    /// Whether the keeper reported the lock lost, or its validity ran out.
    pub(crate) fn is_lost(&self) -> bool {
        self.remaining().is_zero()
    }

    /// Blocks until the lock is lost or `timeout` passes; says whether it
    /// is lost.
    pub(crate) fn wait_lost(&self, timeout: Duration) -> bool {
        let deadline = time::deadline_in(timeout);
        let mut data = self.lease.data.lock();
        loop {
            if self.is_lost() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // Validity may run out without a word from the keeper (a
            // renewal still under way): look again then.
            let until = deadline.min(self.lease.valid_until().max(now));
            self.lease.ended.wait_until(&mut data, until);
        }
    }

    /// Runs `f` when the lock is lost (on the keeper's thread), or now if
    /// it is lost already. Replaces an earlier one.
    pub(crate) fn on_lost(&self, f: OnLost) {
        let mut data = self.lease.data.lock();
        if self.state() == Some(HELD) {
            data.on_lost = Some(f);
            return;
        }
        drop(data);
        if self.is_lost() {
            f();
        }
    }

    /// Release begins: the keeper leaves the lease alone from now on.
    pub(crate) fn begin_release(&self) -> Began {
        match self.lease.state.compare_exchange(
            word(self.generation, HELD),
            word(self.generation, RELEASING),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Began::Held,
            Err(_) => Began::Lost,
        }
    }

    /// Runs an explicit renewal: `renew` does the round trip, with the
    /// lease's data held so that the keeper cannot renew in between, and
    /// returns the validity to record (the extend rule's) or `None` when
    /// the lock is lost; `ttl` becomes the lease's TTL when it is renewed.
    pub(crate) fn renew_with(
        &self,
        ttl: Duration,
        renew: impl FnOnce() -> (Option<Instant>, bool),
    ) -> bool {
        let mut data = self.lease.data.lock();
        if self.state() != Some(HELD) {
            return false;
        }
        let (valid_until, renewed) = renew();
        match valid_until {
            Some(until) => {
                self.lease
                    .valid_until
                    .store(self.lease.nanos(until), Ordering::Release);
                if renewed {
                    data.ttl = ttl;
                    data.period = period(ttl);
                    let due = next_due(Instant::now() + data.period, data.hold_until);
                    self.lease
                        .due
                        .store(self.lease.nanos(due), Ordering::Release);
                }
                true
            }
            None => {
                let on_lost = self
                    .lease
                    .mark_lost(self.generation)
                    .then(|| data.on_lost.take())
                    .flatten();
                drop(data);
                self.lease.ended.notify_all();
                if let Some(f) = on_lost {
                    run_on_lost(f);
                }
                false
            }
        }
    }
}

impl fmt::Debug for LeaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseRef")
            .field("slot", &self.lease.slot)
            .field("generation", &self.generation)
            .finish()
    }
}

/// A third of the TTL, and at least a millisecond.
fn period(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(1))
}

/// Runs a holder's callback; a panic in it must not stop the keeper.
fn run_on_lost(f: OnLost) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        log::error!("redlease: an on_lost callback panicked");
    }
}

impl Keeper {
    pub(crate) fn new(route: Arc<Route>, observe: Arc<Observe>) -> Keeper {
        let epoch = Instant::now();
        Keeper {
            core: Arc::new(Core {
                route,
                observe,
                epoch,
                table: Mutex::new(Table {
                    slots: Vec::new(),
                    free: Vec::new(),
                    heap: BinaryHeap::new(),
                    queued: Vec::new(),
                    stop: false,
                }),
                changed: Condvar::new(),
            }),
            thread: Mutex::new(None),
        }
    }

    /// Starts keeping a lock alive: renewed for `ttl` about every third of
    /// it, from validity `valid_until`, until released, lost, or
    /// `hold_until`. Starts the keeper's thread the first time.
    pub(crate) fn keep(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
        valid_until: Instant,
        hold_until: Option<Instant>,
    ) -> Result<LeaseRef, Error> {
        self.start()?;
        let core = &*self.core;
        let mut table = core.table.lock();
        // A free slot the keeper is not in the middle of renewing (it holds
        // the data of the leases in its batch), else a new one.
        let lease = match table
            .free
            .iter()
            .rposition(|&slot| !table.slots[slot as usize].data.is_locked())
        {
            Some(at) => {
                let slot = table.free.swap_remove(at);
                Arc::clone(&table.slots[slot as usize])
            }
            None => {
                let slot = u32::try_from(table.slots.len())
                    .map_err(|_| Error::invalid("too many kept-alive locks"))?;
                let lease = Arc::new(Lease::new(slot, core.epoch));
                table.slots.push(Arc::clone(&lease));
                table.queued.push(None);
                // Room for every slot's entry and its place on the free
                // list, made as the table grows, never in steady state.
                table.heap.reserve(2);
                let more = table.slots.len() - table.free.len();
                table.free.reserve(more);
                lease
            }
        };
        let now = Instant::now();
        let period = period(ttl);
        // The first renewal comes a period from now, or sooner if less
        // validity is left than a period's worth (a lock kept alive late).
        let left = valid_until.saturating_duration_since(now);
        let due = next_due(now + period.min(left / 3), hold_until);
        let (generation, due) = {
            // `due` is written under the data lock, as by the keeper, so
            // that an old lease's late word cannot land on this one.
            let mut data = lease.data.lock();
            data.key.clear();
            data.key.extend_from_slice(key);
            data.token = Some(*token);
            data.ttl = ttl;
            data.period = period;
            data.hold_until = hold_until;
            debug_assert!(data.on_lost.is_none(), "cleared by finish");
            lease
                .valid_until
                .store(lease.nanos(valid_until), Ordering::Release);
            let generation = (lease.state.load(Ordering::Acquire) >> 2) + 1;
            lease.state.store(word(generation, HELD), Ordering::Release);
            let due = lease.nanos(due);
            lease.due.store(due, Ordering::Release);
            (generation, due)
        };
        let first = table.heap.peek().is_none_or(|&Reverse((d, _))| due < d);
        table.queue(lease.slot, due);
        drop(table);
        if first {
            core.changed.notify_one();
        }
        Ok(LeaseRef { lease, generation })
    }

    /// A lease's holder is done with it (released, or dropped after loss):
    /// its slot is free again.
    pub(crate) fn finish(&self, lease: LeaseRef) {
        let LeaseRef { lease, generation } = lease;
        // The callback goes with the lease: it may own things (a manager,
        // a channel, even a lock) that must not outlive it, and it is
        // dropped here, outside every lock of the keeper.
        let on_lost = {
            let mut data = lease.data.lock();
            lease
                .state
                .store(word(generation, RELEASED), Ordering::Release);
            data.on_lost.take()
        };
        lease.ended.notify_all();
        drop(on_lost);
        self.core.table.lock().free.push(lease.slot);
    }

    /// After an explicit extend changed a kept-alive lock's TTL: its next
    /// renewal, as recorded on the lease, is put in the heap.
    pub(crate) fn requeue(&self, lease: &LeaseRef) {
        let due = lease.lease.due.load(Ordering::Acquire);
        let mut table = self.core.table.lock();
        let first = table.heap.peek().is_none_or(|&Reverse((d, _))| due < d);
        table.queue(lease.lease.slot, due);
        drop(table);
        if first {
            self.core.changed.notify_one();
        }
    }

    fn start(&self) -> Result<(), Error> {
        let mut thread = self.thread.lock();
        if thread.is_some() {
            return Ok(());
        }
        let core = Arc::clone(&self.core);
        let handle = thread::Builder::new()
            .name("redlease-keeper".into())
            .spawn(move || core.run())
            .map_err(|e| Error::Thread(format!("cannot start the lease keeper: {e}").into()))?;
        let id = handle.thread().id();
        *thread = Some((handle, id));
        Ok(())
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.core.table.lock().stop = true;
        self.core.changed.notify_all();
        if let Some((handle, id)) = self.thread.lock().take() {
            // The last manager may be dropped by a callback on the keeper's
            // own thread: that thread ends by itself once it returns.
            if id != thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

impl fmt::Debug for Keeper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.core.table.lock();
        f.debug_struct("Keeper")
            .field("slots", &table.slots.len())
            .field("free", &table.free.len())
            .finish_non_exhaustive()
    }
}

/// When a lease renewed now is next due: a period later, or at its hold
/// limit if that comes first.
fn next_due(after_period: Instant, hold_until: Option<Instant>) -> Instant {
    hold_until.map_or(after_period, |hold| hold.min(after_period))
}

/// A lost lease's key and token, to release what is left of it.
type Leftover = (SmallVec<[u8; INLINE_KEY]>, Token);

/// A lease taken into a batch, with the generation its data was read for.
struct Taken<'a> {
    lease: &'a Lease,
    generation: u64,
    data: MutexGuard<'a, LeaseData>,
}

/// What the keeper's thread reuses from one batch to the next.
struct Work {
    batch: Vec<Arc<Lease>>,
    args: RenewArgs,
    ttls: SmallVec<[Duration; RENEW_BATCH]>,
    /// Each lease's renewal, and when its answer came.
    outcomes: SmallVec<[Option<(Renewal, Instant)>; RENEW_BATCH]>,
    /// (slot, due) to put back in the heap.
    next: SmallVec<[(u32, u64); RENEW_BATCH]>,
}

impl Table {
    /// Makes sure `slot` comes up in the heap by `due`.
    fn queue(&mut self, slot: u32, due: u64) {
        let queued = &mut self.queued[slot as usize];
        if queued.is_some_and(|at| at <= due) {
            return;
        }
        *queued = Some(due);
        self.heap.push(Reverse((due, slot)));
    }
}

impl Core {
    fn run(&self) {
        let mut work = Work {
            batch: Vec::with_capacity(RENEW_BATCH),
            args: RenewArgs::default(),
            ttls: SmallVec::new(),
            outcomes: SmallVec::new(),
            next: SmallVec::new(),
        };
        let mut table = self.table.lock();
        while !table.stop {
            let now = Instant::now();
            self.take_due(&mut table, now, &mut work.batch);
            if work.batch.is_empty() {
                match table.heap.peek() {
                    Some(&Reverse((due, _))) => {
                        let until = self.epoch + Duration::from_nanos(due);
                        self.changed.wait_until(&mut table, until);
                    }
                    None => self.changed.wait(&mut table),
                }
                continue;
            }
            MutexGuard::unlocked(&mut table, || {
                self.renew(&mut work);
            });
            work.batch.clear();
            for &(slot, due) in &work.next {
                table.queue(slot, due);
            }
        }
    }

    /// Takes the leases due now, and those due within a quarter period
    /// after (renewing a little early lets renewals share round trips),
    /// up to a batch.
    fn take_due(&self, table: &mut Table, now: Instant, batch: &mut Vec<Arc<Lease>>) {
        let now_ns = nanos(self.epoch, now);
        let mut horizon = now_ns;
        while batch.len() < RENEW_BATCH {
            let Some(&Reverse((due, slot))) = table.heap.peek() else {
                break;
            };
            if due > horizon {
                break;
            }
            table.heap.pop();
            if table.queued[slot as usize] != Some(due) {
                // A later entry of a slot that also has an earlier one.
                continue;
            }
            table.queued[slot as usize] = None;
            let lease = Arc::clone(&table.slots[slot as usize]);
            if lease.state.load(Ordering::Acquire) & STATE_BITS != HELD {
                continue;
            }
            let wanted = lease.due.load(Ordering::Acquire);
            if wanted > horizon {
                // Its slot's entry came up, but this lease is due later.
                table.queue(slot, wanted);
                continue;
            }
            if batch.is_empty()
                && let Some(data) = lease.data.try_lock()
            {
                horizon = now_ns.saturating_add((data.period / 4).as_nanos() as u64);
            }
            batch.push(lease);
        }
    }

    /// Renews one batch, records what happened to each lease, and leaves
    /// in `work.next` when each still-held lease is due again.
    fn renew(&self, work: &mut Work) {
        work.next.clear();
        work.args.clear();
        work.ttls.clear();
        let began = Instant::now();
        // Callbacks run once every lease's data is let go: a callback that
        // touches another lock of this batch must not find it held here.
        let mut callbacks: SmallVec<[OnLost; 2]> = SmallVec::new();
        // Lost leases' leftovers, released once no lease data is held.
        let mut leftovers: SmallVec<[Leftover; 2]> = SmallVec::new();
        let mut taken: SmallVec<[Taken<'_>; RENEW_BATCH]> = SmallVec::new();
        for lease in &work.batch {
            // A lease whose data is busy (an explicit extend under way) is
            // renewed by that; look again shortly.
            // (Its due time is its holder's to change meanwhile: only the
            // slot is looked at again.)
            let Some(data) = lease.data.try_lock() else {
                work.next.push((lease.slot, lease.nanos(began + RETRY_MIN)));
                continue;
            };
            let word = lease.state.load(Ordering::Acquire);
            if word & STATE_BITS != HELD {
                continue;
            }
            let generation = word >> 2;
            if data.hold_until.is_some_and(|hold| began >= hold) {
                log::warn!(
                    "redlease: lock on {} held past its max_hold: no longer kept alive, reported lost",
                    data.key.escape_ascii()
                );
                callbacks.extend(self.lose(lease, generation, data, None));
                continue;
            }
            if data.token.is_none() {
                continue;
            }
            taken.push(Taken {
                lease,
                generation,
                data,
            });
        }
        if taken.is_empty() {
            drop(taken);
            self.after(leftovers, callbacks);
            return;
        }
        // In a Redis Cluster one script renews keys of one slot: the batch
        // goes as one call per slot (sorted in place: no allocation).
        let cluster = self.route.is_cluster();
        if cluster {
            taken.sort_unstable_by_key(|t| crate::cluster::slot(&t.data.key));
        }
        work.outcomes.clear();
        work.outcomes.resize(taken.len(), None);
        let mut start = 0;
        while start < taken.len() {
            let slot = cluster.then(|| crate::cluster::slot(&taken[start].data.key));
            let end = match slot {
                Some(slot) => taken[start..]
                    .iter()
                    .position(|t| crate::cluster::slot(&t.data.key) != slot)
                    .map_or(taken.len(), |n| start + n),
                None => taken.len(),
            };
            work.args.clear();
            work.ttls.clear();
            for t in &taken[start..end] {
                let token = t.data.token.as_ref().expect("a taken lease has a token");
                work.args.push(&t.data.key, token, millis(t.data.ttl));
                work.ttls.push(t.data.ttl);
            }
            let first = &taken[start].data;
            let token = first.token.expect("a taken lease has a token");
            let outcomes = &mut work.outcomes[start..end];
            let op = work.args.op();
            let refused =
                self.route
                    .renew_many(&first.key, op, &token, &work.ttls, |j, outcome| {
                        outcomes[j] = Some((outcome, Instant::now()))
                    });
            // A slot being migrated refuses a batch of its keys until the
            // migration ends: each is renewed alone, following its own
            // redirection (rare: no allocation spared here).
            if refused.as_ref().is_some_and(needs_one_by_one) {
                for (j, t) in taken[start..end].iter().enumerate() {
                    let token = t.data.token.as_ref().expect("a taken lease has a token");
                    let extended = self.route.extend_now(&t.data.key, token, t.data.ttl);
                    work.outcomes[start + j] = Some((renewal_of(extended), Instant::now()));
                }
            }
            start = end;
        }
        let now = Instant::now();
        for (t, outcome) in taken.into_iter().zip(work.outcomes.iter()) {
            let Taken {
                lease,
                generation,
                data,
            } = t;
            let period = data.period;
            let hold_until = data.hold_until;
            let valid_until = match outcome {
                // Loss is final: a lock whose validity ran out before the
                // renewal was confirmed was unprotected for a while, and a
                // later renewal cannot undo that.
                // (Each batch by when its own answer came: a cluster's
                // batches go one after another.)
                Some((Renewal::Renewed(_), answered)) if lease.valid_until() <= *answered => None,
                Some((Renewal::Renewed(until), _)) => Some((*until, began + period)),
                Some((
                    Renewal::Undecided {
                        valid_until_at_most,
                    },
                    _,
                )) => {
                    // The extend rule: never longer than before, nor than
                    // the renewal could have set.
                    let until = valid_until_at_most.map_or(lease.valid_until(), |at_most| {
                        at_most.min(lease.valid_until())
                    });
                    let left = until.saturating_duration_since(now);
                    let retry = (left / 3).clamp(RETRY_MIN.min(period), period);
                    (!left.is_zero()).then(|| (until, now + retry))
                }
                Some((Renewal::Lost, _)) | None => None,
            };
            match valid_until {
                Some((until, due)) => {
                    lease
                        .valid_until
                        .store(lease.nanos(until), Ordering::Release);
                    // Under the data lock, like every write of `due`.
                    let due = lease.nanos(next_due(due, hold_until));
                    lease.due.store(due, Ordering::Release);
                    drop(data);
                    work.next.push((lease.slot, due));
                }
                None => {
                    log::warn!(
                        "redlease: kept-alive lock on {} lost",
                        data.key.escape_ascii()
                    );
                    callbacks.extend(self.lose(lease, generation, data, Some(&mut leftovers)));
                }
            }
        }
        self.after(leftovers, callbacks);
    }

    /// What follows a batch once no lease data is held: lost leases'
    /// leftovers released (best effort), then their callbacks.
    fn after(&self, leftovers: SmallVec<[Leftover; 2]>, callbacks: SmallVec<[OnLost; 2]>) {
        for (key, token) in leftovers {
            let _ = self.route.release(&key, &token);
        }
        for f in callbacks {
            run_on_lost(f);
        }
    }

    /// Reports a lease lost: its state and its waiters; with `leftovers`,
    /// notes what is left of it on the nodes for release (its holder cannot
    /// use it any more, and others should not wait for its TTL). Returns
    /// its callback, for the caller to run.
    fn lose(
        &self,
        lease: &Lease,
        generation: u64,
        mut data: MutexGuard<'_, LeaseData>,
        leftovers: Option<&mut SmallVec<[Leftover; 2]>>,
    ) -> Option<OnLost> {
        if !lease.mark_lost(generation) {
            return None;
        }
        self.observe.lost();
        let on_lost = data.on_lost.take();
        if let (Some(leftovers), Some(token)) = (leftovers, data.token) {
            leftovers.push((data.key.clone(), token));
        }
        drop(data);
        lease.ended.notify_all();
        on_lost
    }
}

fn millis(ttl: Duration) -> u64 {
    // Cannot truncate: TTLs are capped far below u64::MAX milliseconds.
    ttl.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(slots: usize) -> Table {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
            heap: BinaryHeap::new(),
            queued: vec![None; slots],
            stop: false,
        }
    }

    /// A slot keeps one heap entry while later times are asked for, so
    /// locks coming and going fast do not grow the heap; an earlier time
    /// gets an entry of its own.
    #[test]
    fn a_slot_keeps_one_entry_unless_asked_earlier() {
        let mut t = table(2);
        for due in [100, 150, 200, 100] {
            t.queue(0, due);
        }
        assert_eq!(t.heap.len(), 1);
        assert_eq!(t.queued[0], Some(100));
        t.queue(0, 50);
        assert_eq!(t.heap.len(), 2);
        assert_eq!(t.queued[0], Some(50));
        t.queue(1, 75);
        assert_eq!(t.heap.len(), 3);
    }

    /// The state word carries the generation: a word about an old lease
    /// does not match the new one.
    #[test]
    fn generations_tell_leases_apart() {
        let lease = Lease::new(0, Instant::now());
        lease.state.store(word(7, HELD), Ordering::Release);
        assert!(!lease.mark_lost(6));
        assert!(lease.mark_lost(7));
        assert_eq!(lease.state.load(Ordering::Acquire), word(7, LOST));
        assert!(!lease.mark_lost(7), "lost once");
        let old = LeaseRef {
            lease: Arc::new(Lease::new(0, Instant::now())),
            generation: 3,
        };
        old.lease.state.store(word(4, HELD), Ordering::Release);
        assert_eq!(old.remaining(), Duration::ZERO, "a newer lease's validity");
        assert_eq!(old.begin_release(), Began::Lost);
    }

    #[test]
    fn period_is_a_third_and_at_least_a_millisecond() {
        assert_eq!(period(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(period(Duration::from_millis(2)), Duration::from_millis(1));
    }
}
