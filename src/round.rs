//! One operation over the nodes, in four steps a reader can follow:
//!
//! 1. **check out** a connection from every target node and encode the
//!    request into it (a node that is down or whose pool is exhausted
//!    fails here);
//! 2. **scatter**: write every request; the one deadline for all replies
//!    starts just before the first write (the validity clock starts at the
//!    checkouts, and again after them if one took real time), so slow
//!    checkouts cost the replies nothing;
//! 3. **gather**: read every reply until the deadline;
//! 4. **second chance**, once, for nodes that could not answer through no
//!    fault of theirs: a `NOSCRIPT` reply (the script goes again by
//!    source), a pooled connection the server had closed while it sat
//!    idle, or a `READONLY` from a sentinel-found master that a failover
//!    demoted (the request goes again on a new connection, if there is
//!    time left to connect; a refused write did nothing). None of these
//!    can repeat, so there is no loop. A request
//!    sent again may find the effect of its first sending (the server may
//!    have applied it just before closing). Acquisitions go again as a
//!    script that recognises our own token, and a handoff recognises the
//!    waiter's; extend is idempotent. A release sent again cannot tell
//!    "deleted by the first sending" from "not ours": it says not ours, and
//!    the key is gone either way.
//!
//! What the operation means (granted, held, lost…) is the quorum's business;
//! a round only records which nodes said yes, no, or failed, and can clean
//! up behind itself on the very connections it used.

use std::sync::Arc;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use crate::error::{Failure, ServerError};
use crate::node::{Checkout, Node, Take};
use crate::resp;
use crate::script::{Form, Op, Vote};
use crate::time::{self, Deadline};
use crate::token::Token;

/// A set of nodes: bit `i` is node `i`.
pub(crate) type Mask = u64;

/// How many nodes `mask` names. `count_ones` is about twenty instructions
/// on baseline x86-64 (no `POPCNT`), paid on every operation; a quorum of
/// up to 8 nodes takes it from a table instead.
#[inline(always)]
pub(crate) fn count(mask: Mask) -> usize {
    match usize::try_from(mask) {
        Ok(low) if low < NODES_IN_BYTE.len() => usize::from(NODES_IN_BYTE[low]),
        _ => mask.count_ones() as usize,
    }
}

/// The bits set in every byte value.
const NODES_IN_BYTE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = (i as u8).count_ones() as u8;
        i += 1;
    }
    table
};

/// One connection slot per node; `None` where the node is not taking part.
/// Made on first use: a one-node round, which holds its connection in
/// `Round::one`, makes none, and dropping it is one test rather than a
/// call.
#[derive(Default)]
struct Slots<'a>(Option<SmallVec<[Option<Checkout<'a>>; 8]>>);

impl<'a> Slots<'a> {
    fn push(&mut self, slot: Option<Checkout<'a>>) {
        self.0.get_or_insert_with(SmallVec::new).push(slot);
    }

    /// At least `len` slots, the new ones empty.
    fn cover(&mut self, len: usize) {
        let slots = self.0.get_or_insert_with(SmallVec::new);
        if slots.len() < len {
            slots.resize_with(len, || None);
        }
    }
}

impl<'a> std::ops::Deref for Slots<'a> {
    type Target = [Option<Checkout<'a>>];

    fn deref(&self) -> &Self::Target {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl std::ops::DerefMut for Slots<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_deref_mut().unwrap_or(&mut [])
    }
}

/// Nodes owed a second chance, and why.
type Redos = SmallVec<[(usize, Redo); 8]>;

/// Why a node gets a second chance within one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Redo {
    /// The server lost its script cache: send the script source.
    Source,
    /// The pooled connection had been closed by the server: reconnect.
    Reconnect,
}

/// Records `failure` as node `i`'s in the tally, and tells the node (its
/// error count and latest error; feature `metrics`, and `status()`). Only
/// what a round gives up on counts: a second chance that worked does not.
fn note_fail(nodes: &[Arc<Node>], tally: &mut Tally, i: usize, failure: Failure) {
    nodes[i].failed(&failure);
    tally.fail(i, failure);
}

/// What one round found, node by node.
#[derive(Debug)]
pub(crate) struct Tally {
    pub(crate) yes: Mask,
    pub(crate) no: Mask,
    /// The shortest time a node that said no still holds the key for
    /// another owner, when nodes said (waiters' attempts ask).
    pub(crate) held_ms: Option<u64>,
    /// The highest fence a node that granted gave (fencing mode), else 0.
    pub(crate) fence: u64,
    /// Which key of a multi-key lock a node found held (the first node
    /// that said).
    pub(crate) blocker: Option<u16>,
    /// Nodes whose request was written whole: it may have been applied,
    /// whatever (if anything) came back.
    pub(crate) sent: Mask,
    /// The first failure and its node, for the error.
    pub(crate) first_failure: Option<(usize, Failure)>,
    /// Just before the first request was written.
    pub(crate) start: Instant,
    /// Just after the last reply was read (`start` after a `run_untimed`).
    pub(crate) end: Instant,
}

impl Tally {
    fn new(now: Instant) -> Tally {
        Tally {
            yes: 0,
            no: 0,
            held_ms: None,
            fence: 0,
            blocker: None,
            sent: 0,
            first_failure: None,
            start: now,
            end: now,
        }
    }

    #[inline]
    pub(crate) fn yes_count(&self) -> usize {
        count(self.yes)
    }

    #[inline]
    pub(crate) fn no_count(&self) -> usize {
        count(self.no)
    }

    /// Node `node` said no; its holder keeps the key `held_ms` more.
    fn held(&mut self, node: usize, held_ms: Option<u64>) {
        self.no |= 1 << node;
        if let Some(ms) = held_ms {
            self.held_ms = Some(self.held_ms.map_or(ms, |m| m.min(ms)));
        }
    }

    fn fail(&mut self, node: usize, failure: Failure) {
        if self.first_failure.is_none() {
            self.first_failure = Some((node, failure));
        }
    }
}

/// One operation in flight: its connections and what they said.
pub(crate) struct Round<'q> {
    nodes: &'q [Arc<Node>],
    op: Op<'q>,
    /// Whether `op` can grant (see [`may_vote`](Self::may_vote)), asked once.
    grants: bool,
    key: &'q [u8],
    token: &'q Token,
    io_timeout: Duration,
    slots: Slots<'q>,
    tally: Tally,
    /// Every request goes after `ASKING` (a Redis Cluster key being
    /// migrated to this node: see `cluster/`).
    asking: bool,
    /// Nodes whose request went again on a new connection.
    resent: Mask,
    /// Nodes whose request may have been applied but whose connection is
    /// gone: a clean-up must open another.
    orphans: Mask,
    /// A one-node round's connection, once its request is settled (no
    /// second chance owed), held here rather than in a slot vector, which
    /// the round then never makes; a clean-up or a confirmation puts it
    /// back in its slot ([`settle`](Self::settle)).
    one: Option<Checkout<'q>>,
    /// A batched renewal's answers, node by node (bit `j`: lock `j`
    /// renewed there), in the caller's buffer; `None` for every other
    /// operation (a pointer, not an array: rounds are moved on the hot
    /// path).
    each: Option<&'q mut [u64]>,
}

impl<'q> Round<'q> {
    /// A round about to run `op`. The validity clock starts here, before
    /// anything is sent: conservative by the time the checkouts take, and
    /// read again after them if one of them took real time.
    #[inline(always)]
    pub(crate) fn new(
        nodes: &'q [Arc<Node>],
        io_timeout: Duration,
        op: Op<'q>,
        key: &'q [u8],
        token: &'q Token,
        asking: bool,
    ) -> Round<'q> {
        let now = Instant::now();
        Round {
            nodes,
            op,
            grants: op.grants(),
            key,
            token,
            io_timeout,
            asking,
            slots: Slots::default(),
            tally: Tally::new(now),
            resent: 0,
            orphans: 0,
            one: None,
            each: None,
        }
    }

    /// Runs the operation on the nodes in `targets`: check out, scatter,
    /// gather, second chance. The reply deadline is one I/O timeout from
    /// just before the first write.
    pub(crate) fn run(&mut self, targets: Mask) {
        self.exchange(targets);
        self.tally.end = Instant::now();
    }

    /// [`run`](Self::run) for an operation whose meaning does not depend on
    /// how long it took (a release): the tally's `end` is not read from the
    /// clock, and stays its `start`.
    pub(crate) fn run_untimed(&mut self, targets: Mask) {
        self.exchange(targets);
        self.tally.end = self.tally.start;
    }

    /// The four steps: on one node by [`run_one`](Self::run_one), inlined
    /// where the round runs; on several by [`exchange_many`](Self::exchange_many).
    #[inline(always)]
    fn exchange(&mut self, targets: Mask) {
        if self.nodes.len() == 1 && targets & 1 != 0 {
            self.run_one();
        } else {
            self.exchange_many(targets);
        }
    }

    #[inline(never)]
    fn exchange_many(&mut self, targets: Mask) {
        if self.check_out(targets) {
            self.tally.start = Instant::now();
        }
        // The quorum caps its I/O timeout (`time::FAR`).
        let deadline = Deadline::new(self.tally.start, self.io_timeout);
        let mut redos = Redos::new();
        let pending = self.scatter(&mut redos);
        self.gather(pending, deadline, true, &mut redos);
        if !redos.is_empty() {
            self.second_chance(&redos, deadline);
        }
    }

    /// The four steps on a quorum of one node, by the same rules, without
    /// the loops over nodes.
    #[inline(never)]
    fn run_one(&mut self) {
        let node = &self.nodes[0];
        // Whether anything before the write may have waited: a quarantine
        // looked up under the node's lock, a contended pool, a connect, the
        // pool's wait. Then `start` is read again after it. Otherwise only
        // CPU work lies between `start` (read as the round was made) and the
        // write, so the reply's first read may take the whole I/O timeout
        // as the time left (see `send_with_time_left`).
        let mut waited = self.grants && node.may_be_quarantined();
        let checkout = match waited.then(|| node.quarantined()).flatten() {
            Some(left) => Err(Failure::Quarantined(left)),
            None => node.checkout(Take::Pooled).and_then(|conn| {
                // The quarantine again, now that the connection is in
                // hand (see `check_out`).
                if self.grants && conn.node_may_be_quarantined() {
                    waited = true;
                    self.may_vote(conn)
                } else {
                    Ok(conn)
                }
            }),
        };
        let mut conn = match checkout {
            Ok(conn) => conn,
            Err(failure) => {
                note_fail(self.nodes, &mut self.tally, 0, failure);
                self.slots.push(None);
                return;
            }
        };
        if conn.slow || waited {
            self.tally.start = Instant::now();
        }
        let deadline = Deadline::new(self.tally.start, self.io_timeout);
        self.put(&mut conn, self.op, self.token, Form::Sha);
        let redo = match conn.send_with_time_left(1 + u32::from(self.asking), self.io_timeout) {
            Ok(()) => {
                self.tally.sent = 1;
                let op = self.op;
                let outcome = conn.recv(deadline, true, |reply| op.interpret(reply));
                let stale = matches!(&outcome, Err(failure) if conn.was_stale(failure));
                self.judge(0, outcome, stale)
            }
            Err(failure) if conn.was_stale(&failure) => Some(Redo::Reconnect),
            Err(failure) => {
                note_fail(self.nodes, &mut self.tally, 0, failure);
                None
            }
        };
        match redo {
            None => self.one = Some(conn),
            Some(why) => {
                self.slots.push(Some(conn));
                self.second_chance(&[(0, why)], deadline);
            }
        }
    }

    /// Puts a one-node round's connection back in its slot, for the steps
    /// that go through the slots after the round (clean-up, confirmation).
    fn settle(&mut self) {
        if let Some(conn) = self.one.take() {
            self.slots.cover(self.nodes.len());
            self.slots[0] = Some(conn);
        }
    }

    /// Step 1: a connection from every target node, its request encoded;
    /// a node that cannot give one is the round's failure there. Says
    /// whether a checkout took real time (opened a connection, or waited
    /// for the pool).
    fn check_out(&mut self, targets: Mask) -> bool {
        let mut slow = false;
        for (i, node) in self.nodes.iter().enumerate() {
            let mut slot = None;
            if targets & (1 << i) != 0 {
                // Quarantine is looked at before (a quarantined node costs
                // no checkout) and once the connection is in hand: opening
                // one may be how the node learns of a restart.
                let checkout = match self.grants.then(|| node.quarantined()).flatten() {
                    Some(left) => Err(Failure::Quarantined(left)),
                    None => node
                        .checkout(Take::Pooled)
                        .and_then(|conn| self.may_vote(conn)),
                };
                match checkout {
                    Ok(mut conn) => {
                        slow |= conn.slow;
                        self.put(&mut conn, self.op, self.token, Form::Sha);
                        slot = Some(conn);
                    }
                    Err(failure) => note_fail(self.nodes, &mut self.tally, i, failure),
                }
            }
            self.slots.push(slot);
        }
        slow
    }

    /// Encodes `op` into the connection's request, after `ASKING` if the
    /// round asks.
    #[inline]
    fn put(&self, conn: &mut Checkout<'_>, op: Op<'_>, token: &Token, form: Form) {
        // `request()` starts an empty request: one call for both.
        let buf = conn.request();
        if self.asking {
            resp::encode(buf, &[b"ASKING"]);
        }
        op.encode(buf, self.key, token, form);
    }

    /// Writes what [`put`](Self::put) encoded: one command, or two with
    /// `ASKING` (whose `+OK` the reply's read skips).
    #[inline]
    fn send(&self, conn: &mut Checkout<'_>) -> Result<(), Failure> {
        conn.send_many(1 + u32::from(self.asking))
    }

    /// The connection, unless the operation could grant a lock and its
    /// node is in its restart quarantine (it may have lost locks it held):
    /// then the node takes no part, and the majority needed is unchanged.
    #[inline]
    fn may_vote<'c>(&self, conn: Checkout<'c>) -> Result<Checkout<'c>, Failure> {
        if self.grants
            && let Some(left) = conn.node_quarantined()
        {
            return Err(Failure::Quarantined(left));
        }
        Ok(conn)
    }

    pub(crate) fn tally(&self) -> &Tally {
        &self.tally
    }

    /// For a batched renewal: where its answers go, one word per node
    /// (zeroed here), before the round runs.
    pub(crate) fn record_each(&mut self, each: &'q mut [u64]) {
        each.fill(0);
        self.each = Some(each);
    }

    /// For a batched renewal: the nodes that renewed lock `j` of the batch.
    pub(crate) fn renewed(&self, j: usize) -> Mask {
        let mut nodes = 0;
        for (i, bits) in self.each.iter().flat_map(|each| each.iter()).enumerate() {
            if bits & (1 << j) != 0 {
                nodes |= 1 << i;
            }
        }
        nodes
    }

    /// The tally, once the connections are no longer needed.
    pub(crate) fn into_tally(self) -> Tally {
        self.tally
    }

    /// Step 2: writes every encoded request; returns the nodes that now owe
    /// a reply.
    fn scatter(&mut self, redos: &mut Redos) -> Mask {
        let mut pending = 0;
        let commands = 1 + u32::from(self.asking);
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(conn) = slot else { continue };
            match conn.send_many(commands) {
                Ok(()) => pending |= 1 << i,
                Err(failure) if conn.was_stale(&failure) => redos.push((i, Redo::Reconnect)),
                Err(failure) => note_fail(self.nodes, &mut self.tally, i, failure),
            }
        }
        self.tally.sent |= pending;
        pending
    }

    /// Step 3: reads one reply from each node in `pending`, until
    /// `deadline`. A timeout counts against a node only if its request
    /// `had_time` to be answered. Nodes that could not answer through no
    /// fault of theirs go into `redos`.
    fn gather(&mut self, pending: Mask, deadline: Deadline, had_time: bool, redos: &mut Redos) {
        for i in 0..self.slots.len() {
            if pending & (1 << i) == 0 {
                continue;
            }
            let Some(conn) = self.slots[i].as_mut() else {
                continue;
            };
            let resent = self.resent & (1 << i) != 0;
            let op = if resent { self.op.resent() } else { self.op };
            let outcome = conn.recv(deadline, had_time, |reply| op.interpret(reply));
            let stale = matches!(&outcome, Err(failure) if conn.was_stale(failure));
            if let Some(why) = self.judge(i, outcome, stale) {
                redos.push((i, why));
            }
        }
    }

    /// What node `i`'s answer means: its vote in the tally, the second
    /// chance it is owed (`stale`: its pooled connection had been closed by
    /// the server), or its failure.
    #[inline(always)]
    fn judge(&mut self, i: usize, outcome: Result<Vote, Failure>, stale: bool) -> Option<Redo> {
        match outcome {
            Ok(Vote::Yes) => self.tally.yes |= 1 << i,
            Ok(Vote::Fenced(fence)) => {
                self.tally.yes |= 1 << i;
                self.tally.fence = self.tally.fence.max(fence);
            }
            Ok(Vote::Each(bits)) => {
                // A node that answered a batch is in `yes`; what it
                // renewed is here.
                self.tally.yes |= 1 << i;
                if let Some(slot) = self.each.as_deref_mut().and_then(|each| each.get_mut(i)) {
                    *slot = bits;
                }
            }
            Ok(Vote::No { held_ms }) => self.tally.held(i, held_ms),
            Ok(Vote::Blocked { held_ms, index }) => {
                self.tally.held(i, held_ms);
                self.tally.blocker.get_or_insert(index);
            }
            Err(failure) if failure.server_error() == Some(ServerError::NoScript) => {
                return Some(Redo::Source);
            }
            // A master demoted by a failover refused the write: the
            // sentinels name another server now, and a new connection
            // goes there (its idle siblings are closed with it).
            Err(failure)
                if failure.server_error() == Some(ServerError::ReadOnly)
                    && self.nodes[i].follows_failover() =>
            {
                log::debug!(
                    "redlease: {} is read-only now, reconnecting through its sentinels",
                    self.nodes[i].name
                );
                return Some(Redo::Reconnect);
            }
            Err(_) if stale => return Some(Redo::Reconnect),
            Err(failure) => note_fail(self.nodes, &mut self.tally, i, failure),
        }
        None
    }

    /// Step 4: sends again to the nodes in `redos`, then gathers their
    /// replies under the same deadline. Whatever asks for a third attempt
    /// is final.
    fn second_chance(&mut self, redos: &[(usize, Redo)], deadline: Deadline) {
        let at = deadline.at();
        let mut again = 0;
        for &(i, why) in redos {
            let sent = match why {
                Redo::Source => {
                    log::debug!(
                        "redlease: script missing on {}, sending its source",
                        self.nodes[i].name
                    );
                    let Some(mut conn) = self.slots[i].take() else {
                        continue;
                    };
                    self.put(&mut conn, self.op, self.token, Form::Source);
                    let sent = self.send(&mut conn);
                    self.slots[i] = Some(conn);
                    sent
                }
                Redo::Reconnect => {
                    // Give back the dead connection before asking for a new
                    // one, and connect within what is left of the deadline
                    // (no time left is a timeout, not the node's fault).
                    self.slots[i] = None;
                    self.orphans |= 1 << i;
                    let budget = at.saturating_duration_since(Instant::now());
                    if budget < Duration::from_millis(1) {
                        Err(Failure::Timeout)
                    } else {
                        // A server that closed our connection may just have
                        // restarted: the new connection's handshake says.
                        self.nodes[i]
                            .checkout(Take::Fresh { budget })
                            .and_then(|conn| self.may_vote(conn))
                            .and_then(|mut conn| {
                                self.put(&mut conn, self.op.resent(), self.token, Form::Sha);
                                self.send(&mut conn)?;
                                self.slots[i] = Some(conn);
                                self.orphans &= !(1 << i);
                                self.resent |= 1 << i;
                                Ok(())
                            })
                    }
                }
            };
            match sent {
                Ok(()) => again |= 1 << i,
                Err(failure) => note_fail(self.nodes, &mut self.tally, i, failure),
            }
        }
        self.tally.sent |= again;
        // Requests written this late may have had too little time for a
        // timeout to say anything about their node.
        let had_time = at.saturating_duration_since(Instant::now()) >= self.io_timeout / 2;
        let mut third = Redos::new();
        self.gather(again, deadline, had_time, &mut third);
        for (i, _) in third {
            self.tally
                .fail(i, Failure::Protocol("node asked for a third attempt"));
        }
    }

    /// After a grant: asks each node in `granted`, on the very connection
    /// that wrote the lock (`WAIT` counts that connection's writes), whether
    /// `replicas` of its replicas acknowledged it within `wait`. The answers
    /// are a tally of their own (yes: replicated); the round's is kept. No
    /// second chance: a `WAIT` on another connection would prove nothing.
    /// Only sound for grants that wrote on this connection: a script that
    /// answers "granted" for a key already holding our token writes
    /// nothing, which is why fair mode (one token for a whole wait) is
    /// refused with it, and resent grants are not asked.
    pub(crate) fn confirm_replicated(
        &mut self,
        granted: Mask,
        replicas: u32,
        wait: Duration,
    ) -> Tally {
        let op = Op::WaitReplicas {
            replicas,
            timeout_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        };
        self.settle();
        let now = Instant::now();
        let acquired = std::mem::replace(&mut self.tally, Tally::new(now));
        let mut pending = 0;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            // A grant after a second chance may have written nothing on
            // its new connection (the script recognised our own token,
            // written on the first): WAIT there would count no write and
            // pass at once. Such a node is not confirmed.
            if granted & !self.resent & (1 << i) == 0 {
                continue;
            }
            let Some(conn) = slot.as_mut() else { continue };
            op.encode(conn.request(), self.key, self.token, Form::Sha);
            match conn.send() {
                Ok(()) => pending |= 1 << i,
                Err(failure) => note_fail(self.nodes, &mut self.tally, i, failure),
            }
        }
        let kept_op = std::mem::replace(&mut self.op, op);
        let mut redos = Redos::new();
        self.gather(
            pending,
            time::deadline(now, wait.saturating_add(self.io_timeout)).into(),
            true,
            &mut redos,
        );
        for (i, _) in redos {
            note_fail(self.nodes, &mut self.tally, i, Failure::Closed);
        }
        self.op = kept_op;
        self.tally.end = Instant::now();
        std::mem::replace(&mut self.tally, acquired)
    }

    /// Releases whatever this round may have written, on the very
    /// connections it used, except on the nodes in `skip` (they said nothing
    /// was written): a lock's release, or a primitive's own
    /// ([`Op::undo`]). On the same connection the release runs after the
    /// request even when the request's reply never came: a connection that
    /// timed out still carries it, then is closed without waiting for a
    /// reply. A node whose connection is gone (an orphan, lost to a
    /// reconnect: the server had closed it, or a demoted master refused the
    /// write, so nothing of the request can arrive after the release) gets
    /// one from its pool. Returns the round's tally (not
    /// the clean-up's).
    pub(crate) fn clean_up(self, skip: Mask) -> Tally {
        let token = self.token;
        self.clean_up_token(skip, token)
    }

    /// [`clean_up`](Self::clean_up), releasing `token` rather than the
    /// round's own (after a handoff, the token it may have written).
    pub(crate) fn clean_up_token(mut self, skip: Mask, token: &Token) -> Tally {
        // A node whose request may have landed without a connection left to
        // it gets one for the clean-up, if its pool gives one.
        self.settle();
        self.slots.cover(self.nodes.len());
        for i in 0..self.nodes.len() {
            if self.orphans & !skip & (1 << i) != 0 {
                self.slots[i] = self.nodes[i].checkout(Take::Pooled).ok();
            }
        }
        let mut pending = 0;
        for i in 0..self.slots.len() {
            if skip & (1 << i) != 0 {
                continue;
            }
            let Some(mut conn) = self.slots[i].take() else {
                continue;
            };
            // By source, so that no NOSCRIPT round is needed.
            self.put(&mut conn, self.op.undo(), token, Form::Source);
            let sent = self.send(&mut conn).is_ok();
            let conn = self.slots[i].insert(conn);
            if sent {
                if conn.is_broken() {
                    conn.discard_arrived();
                } else {
                    pending |= 1 << i;
                }
            }
        }
        self.op = self.op.undo();
        self.grants = self.op.grants();
        let now = Instant::now();
        let tally = std::mem::replace(&mut self.tally, Tally::new(now));
        self.gather(
            pending,
            time::deadline(now, self.io_timeout).into(),
            true,
            &mut Redos::new(),
        );
        if let Some((node, failure)) = &self.tally.first_failure {
            log::debug!(
                "redlease: clean-up after a failed operation failed on {}: {failure:?}",
                self.nodes[*node].name
            );
        }
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table agrees with `count_ones` below 256 and hands over above.
    #[test]
    fn count_is_count_ones() {
        for mask in (0..=1u64 << 12).chain([u64::MAX, 1 << 63, (1 << 40) | 0xff, 0x100]) {
            assert_eq!(count(mask), mask.count_ones() as usize, "{mask:#x}");
        }
    }
}
