//! Redlock over N independent nodes (N = 1 is the single-node lock, with the
//! same rules): one vote per server, the majority, validity and drift, and
//! what each operation's tally means. How one operation talks to the nodes
//! is `round.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conn::Timeouts;
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::node::{Node, NodeConfig};
use crate::probe;
use crate::round::{Mask, Round, Tally};
use crate::script::Op;
use crate::time;
use crate::token::Token;

/// Most nodes a quorum may have: node sets are `u64` bit masks.
pub(crate) const MAX_NODES: usize = 64;

/// Fixed part of the clock-drift allowance, as the Redlock spec gives it.
const DRIFT_FIXED: Duration = Duration::from_millis(2);

/// The nodes and the rules for counting their votes.
#[derive(Debug)]
pub(crate) struct Quorum {
    nodes: Box<[Arc<Node>]>,
    /// Clock-drift allowance per unit of TTL, in parts per billion: integer
    /// arithmetic on the hot path instead of `Duration::mul_f64`.
    drift_ppb: u64,
    /// Deadline for each operation's replies, from its first write.
    io_timeout: Duration,
    /// Grant only what this many replicas of each granting node
    /// acknowledged within this long (`WAIT`).
    replicas: Option<(u32, Duration)>,
    /// Every request goes after `ASKING` (a Redis Cluster node importing
    /// the slot of the keys it is asked about; see `cluster/`).
    asking: bool,
}

/// Outcome of an acquisition attempt that reached a decision.
#[derive(Debug)]
pub(crate) enum Acquired {
    /// Ours on a quorum, valid until this instant; in fencing mode, the
    /// highest fence the granting nodes gave (see [`Quorum::confirm_fence`]).
    Granted {
        valid_until: Instant,
        fence: Option<u64>,
    },
    /// Held by another owner on enough nodes that no quorum was possible;
    /// `retry_in`, when the nodes said, is when the first of those keys
    /// expires; `blocker`, for a multi-key lock, which of its keys.
    Held {
        retry_in: Option<Duration>,
        blocker: Option<u16>,
    },
}

/// Outcome of a direct handoff.
#[derive(Debug)]
pub(crate) enum HandedOff {
    /// The waiter holds the lock on a quorum, valid until this instant;
    /// ours is gone.
    Granted { valid_until: Instant },
    /// Not handed over: whatever the handoff wrote was cleaned up and ours
    /// released; `released` says what a plain release would have said.
    Failed { released: Result<bool, Error> },
}

/// What kind of acquisition attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// `SET NX PX`: one attempt, or a waiter's first.
    Plain,
    /// A waiter's later attempts: also learn how long the holder keeps it.
    Waiting,
    /// Fair mode: by the queue; `enqueue` to join it if not granted.
    Fair { enqueue: bool },
    /// Fencing mode: also takes a fence; `waiting` as for `Waiting`.
    Fenced { waiting: bool },
}

/// What a batched renewal did for one of its locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// Renewed on a quorum in time: valid until this instant.
    Renewed(Instant),
    /// A majority no longer holds it, or renewed it too late to count: the
    /// lock is lost (the extend rule's `LockLost` and `ValidityExpired`).
    Lost,
    /// Undecided (too few nodes answered): by the extend rule, validity is
    /// now at most this, when the renewal may have reached a node.
    Undecided {
        valid_until_at_most: Option<Instant>,
    },
}

/// A failed extend, and what it leaves of the lock's validity.
#[derive(Debug)]
pub(crate) struct ExtendFailed {
    pub(crate) error: Error,
    /// Set when the renewal may have reached a node: the lock's validity is
    /// now at most this (see [`Quorum::extend`]).
    pub(crate) valid_until_at_most: Option<Instant>,
}

/// What an extend's outcome leaves of a guard's validity, by the rule of
/// [`Quorum::extend`]: renewed, it runs to the new end; `LockLost` is
/// final (`lost` is set); any other failure leaves it at most what the new
/// TTL gives. Shared by every guard (locks and the primitives).
pub(crate) fn settle_extend(
    extended: Result<Instant, ExtendFailed>,
    valid_until: &mut Instant,
    lost: &mut bool,
) -> Result<(), Error> {
    match extended {
        Ok(until) => {
            *valid_until = until;
            Ok(())
        }
        Err(ExtendFailed {
            error: Error::LockLost,
            ..
        }) => {
            *lost = true;
            Err(Error::LockLost)
        }
        Err(ExtendFailed {
            error,
            valid_until_at_most,
        }) => {
            if let Some(at_most) = valid_until_at_most {
                *valid_until = (*valid_until).min(at_most);
            }
            Err(error)
        }
    }
}

impl Quorum {
    /// The quorum over `endpoints`, one node each. Refuses an empty list, too
    /// many nodes, and a server listed twice (it would vote twice): by the
    /// names as written and by every address they resolve to (`localhost`
    /// and `127.0.0.1` are one server); [`connect`](Self::connect) also
    /// compares run ids.
    pub(crate) fn new(
        endpoints: Vec<Endpoint>,
        timeouts: Timeouts,
        pool: NodeConfig,
        drift_factor: f64,
        replicas: Option<(u32, Duration)>,
    ) -> Result<Quorum, Error> {
        if endpoints.is_empty() {
            return Err(Error::invalid("no nodes: add at least one with .node(..)"));
        }
        if endpoints.len() > MAX_NODES {
            return Err(Error::invalid(format!(
                "{} nodes, more than the {MAX_NODES} supported",
                endpoints.len()
            )));
        }
        check_distinct(&endpoints)?;
        Ok(Quorum {
            nodes: endpoints
                .into_iter()
                .map(|e| Arc::new(Node::new(e, timeouts, pool)))
                .collect(),
            drift_ppb: ppb(drift_factor),
            // Capped, so that `start + io_timeout` cannot overflow on the
            // hot path (see `time::FAR`).
            io_timeout: timeouts.io.min(time::FAR),
            replicas,
            asking: false,
        })
    }

    /// A quorum of one node, without the checks `new` makes of a list
    /// (nothing to compare, and no name lookup: a cluster makes these
    /// under its table's lock).
    pub(crate) fn single(
        endpoint: Endpoint,
        timeouts: Timeouts,
        pool: NodeConfig,
        drift_factor: f64,
        replicas: Option<(u32, Duration)>,
    ) -> Quorum {
        Quorum {
            nodes: Box::new([Arc::new(Node::new(endpoint, timeouts, pool))]),
            drift_ppb: ppb(drift_factor),
            io_timeout: timeouts.io.min(time::FAR),
            replicas,
            asking: false,
        }
    }

    /// The same nodes (and pools), every request sent after `ASKING`.
    pub(crate) fn asking_twin(&self) -> Quorum {
        Quorum {
            nodes: self.nodes.clone(),
            drift_ppb: self.drift_ppb,
            io_timeout: self.io_timeout,
            replicas: self.replicas,
            asking: true,
        }
    }

    /// Whether grants wait for replicas (then a lock is never handed over
    /// directly: the handoff would grant without waiting).
    pub(crate) fn waits_for_replicas(&self) -> bool {
        self.replicas.is_some()
    }

    /// Connects to every node at once, learns who each server is, checks
    /// the user's permissions, and opens `preconnect` connections to each.
    /// Fails on configuration errors anywhere (credentials, permissions, a
    /// server that is not Redis, one server under two addresses), or when
    /// fewer than a quorum answer; an unreachable minority is only logged.
    pub(crate) fn connect(&self, preconnect: usize) -> Result<(), Error> {
        self.connect_probing(preconnect, None)
    }

    /// [`connect`](Self::connect), the permission probe's key carrying
    /// `tag` as its hash tag (a cluster master's probe must stay in a slot
    /// it serves).
    pub(crate) fn connect_probing(
        &self,
        preconnect: usize,
        tag: Option<&[u8]>,
    ) -> Result<(), Error> {
        let results: Vec<Result<Option<[u8; 40]>, Error>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .nodes
                .iter()
                .map(|node| {
                    s.spawn(move || {
                        let failed =
                            |failure: crate::error::Failure| failure.into_error(&node.name);
                        let (run_id, tells_start) = probe::identity(node).map_err(failed)?;
                        if node.quarantines() && !tells_start {
                            return Err(Error::Permission {
                                node: Arc::clone(&node.name),
                                message: "INFO server was refused or gave no uptime, and the restart quarantine needs it to see when the server started: allow +info, or build with .restart_quarantine(false)".into(),
                            });
                        }
                        probe::permissions(node, self.replicas.is_some(), tag)?;
                        node.preconnect(preconnect).map_err(failed)?;
                        Ok(run_id)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::invalid("connect thread panicked")))
                })
                .collect()
        });
        let mut reachable = 0;
        let mut first_failure = None;
        let mut run_ids: HashMap<[u8; 40], usize> = HashMap::new();
        for (i, (node, result)) in self.nodes.iter().zip(results).enumerate() {
            match result {
                Ok(run_id) => {
                    reachable += 1;
                    let Some(id) = run_id else { continue };
                    if let Some(&j) = run_ids.get(&id) {
                        return Err(Error::invalid(format!(
                            "duplicate node: {} and {} are the same server (same run_id), which would vote twice",
                            self.nodes[j].name, node.name
                        )));
                    }
                    run_ids.insert(id, i);
                }
                // Wrong credentials or permissions, or something that is not
                // Redis: these do not heal.
                Err(e) if e.is_configuration() => return Err(e),
                Err(e) => {
                    log::warn!("redlease: node {} unreachable at build: {e}", node.name);
                    first_failure.get_or_insert(e);
                }
            }
        }
        if reachable >= self.needed() {
            return Ok(());
        }
        match first_failure {
            Some(error) if self.nodes.len() == 1 => Err(error),
            cause => Err(Error::NoQuorum {
                agreed: reachable,
                nodes: self.nodes.len(),
                cause: cause.map(Box::new),
            }),
        }
    }

    /// The nodes, in the order they were given.
    pub(crate) fn nodes(&self) -> &[Arc<Node>] {
        &self.nodes
    }

    /// Votes needed: a strict majority.
    pub(crate) fn needed(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    /// The clock-drift allowance for a TTL: `ttl × factor + 2 ms`. TTLs
    /// are whole milliseconds by then, so 64-bit arithmetic is exact: a
    /// year of milliseconds times a factor under 0.5 in parts per billion
    /// stays below `u64::MAX` (and saturates if it did not).
    pub(crate) fn drift(&self, ttl: Duration) -> Duration {
        drift(self.drift_ppb, ttl)
    }

    fn all(&self) -> Mask {
        Mask::MAX >> (MAX_NODES - self.nodes.len())
    }

    /// When a TTL set by a round that started at `start` stops protecting
    /// us: `ttl` after the first write, less the drift allowance.
    #[inline]
    fn valid_until(&self, start: Instant, ttl: Duration) -> Instant {
        start + validity(self.drift_ppb, ttl)
    }

    /// A round of `op` over the nodes, not yet run. (Rounds are built
    /// where they are used and run in place: a round is a few hundred
    /// bytes, and moving it would cost the hot path copies.)
    #[inline(always)]
    fn round<'q>(&'q self, op: Op<'q>, key: &'q [u8], token: &'q Token) -> Round<'q> {
        Round::new(&self.nodes, self.io_timeout, op, key, token, self.asking)
    }

    /// One acquisition attempt. On anything but success, whatever it may
    /// have written is released on every node that did not answer "held".
    #[inline]
    pub(crate) fn acquire(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
        attempt: Attempt,
    ) -> Result<Acquired, Error> {
        let ttl_ms = millis(ttl);
        let op = match attempt {
            Attempt::Plain => Op::Acquire { ttl_ms },
            Attempt::Waiting => Op::AcquireOrPttl { ttl_ms },
            Attempt::Fair { enqueue } => Op::FairAcquire { ttl_ms, enqueue },
            Attempt::Fenced { waiting } => Op::FencedAcquire {
                ttl_ms,
                pttl: waiting,
            },
        };
        self.acquire_op(op, key, token, ttl)
    }

    /// One acquisition attempt by `op`, which grants for `ttl` (a lock's,
    /// or a primitive's: a permit, a read or write lock, a multi-key
    /// lock). The rules of [`acquire`](Self::acquire), the clean-up by the
    /// operation's own release.
    #[inline]
    pub(crate) fn acquire_op(
        &self,
        op: Op<'_>,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> Result<Acquired, Error> {
        let mut round = self.round(op, key, token);
        // Nodes in their restart quarantine take no part (see `Round`).
        round.run(self.all());
        let tally = round.tally();
        let valid_until = self.valid_until(tally.start, ttl);
        if tally.yes_count() >= self.needed() && tally.end < valid_until {
            let fence = matches!(op, Op::FencedAcquire { .. }).then_some(tally.fence);
            let Some((replicas, wait)) = self.replicas else {
                return Ok(Acquired::Granted { valid_until, fence });
            };
            let (granted, tally_start) = (tally.yes, tally.start);
            let replicated = round.confirm_replicated(granted, replicas, wait);
            if replicated.yes_count() >= self.needed() {
                if replicated.end < valid_until {
                    return Ok(Acquired::Granted { valid_until, fence });
                }
                round.clean_up(0);
                return Err(Error::ValidityExpired {
                    elapsed: replicated.end - tally_start,
                    ttl,
                });
            }
            // Not safe from a failover: let it go everywhere.
            let acked = replicated.yes_count();
            let cause = replicated
                .first_failure
                .map(|(i, failure)| Box::new(failure.into_error(&self.nodes[i].name)));
            round.clean_up(0);
            return Err(Error::NotReplicated {
                acked,
                needed: self.needed(),
                replicas,
                cause,
            });
        }
        // Failed and timed-out nodes are cleaned too: the SET may have
        // arrived even though its reply did not.
        let skip = tally.no;
        let tally = round.clean_up(skip);
        if tally.yes_count() >= self.needed() {
            Err(Error::ValidityExpired {
                elapsed: tally.end - tally.start,
                ttl,
            })
        } else if tally.no_count() > self.nodes.len() - self.needed() {
            Ok(Acquired::Held {
                retry_in: tally.held_ms.map(Duration::from_millis),
                blocker: tally.blocker,
            })
        } else {
            Err(self.no_quorum(tally))
        }
    }

    /// Hands our lock on `key` (token `ours`) to `theirs` for `ttl`, on
    /// every node, in one round trip: a node swaps the tokens only if it
    /// still holds ours, so the key is never free in between. Granted by the
    /// same rules as an acquisition (a quorum, validity left, measured from
    /// the first write). On failure, the waiter's token is released wherever
    /// it may have been written, and ours everywhere.
    pub(crate) fn handoff(
        &self,
        key: &[u8],
        ours: &Token,
        theirs: &Token,
        ttl: Duration,
    ) -> HandedOff {
        let op = Op::Handoff {
            ttl_ms: millis(ttl),
            to: theirs,
        };
        let mut round = self.round(op, key, ours);
        // Nodes in their restart quarantine take no part (see `Round`).
        round.run(self.all());
        let tally = round.tally();
        let valid_until = self.valid_until(tally.start, ttl);
        if tally.yes_count() >= self.needed() && tally.end < valid_until {
            return HandedOff::Granted { valid_until };
        }
        let (swapped, not_ours) = (tally.yes_count(), tally.no_count());
        let skip = tally.no;
        round.clean_up_token(skip, theirs);
        let release = self.release(key, ours);
        let released = if swapped >= self.needed() {
            Ok(true)
        } else if not_ours > self.nodes.len() - self.needed() {
            Ok(false)
        } else {
            release
        };
        HandedOff::Failed { released }
    }

    /// Makes `fence`, the highest counter a lock's granting nodes gave,
    /// safe to use over a quorum: writes it back to every node, each write
    /// conditional on the key still holding our token there, and succeeds
    /// when a majority took it; returns when the last reply came, for the
    /// caller to check the lock was still valid then. With one node the
    /// counter is the fence already.
    ///
    /// Why the maximum alone is not enough, and why this is: counters drift
    /// apart through partial attempts (counters 100, 5, 5: A wins nodes 1
    /// and 2 and gets 101; B, later, wins 2 and 3 and would get 6). After
    /// the write-back, a majority W holds a counter ≥ A's fence, written
    /// while A's key was there. Any later holder B wins a majority, which
    /// meets W on some node j; B's `SET NX` on j came after A's key left j
    /// (it was there at the write-back, and a node holds one key), so B's
    /// increment on j comes after A's write-back and exceeds A's fence, and
    /// so does B's maximum. Assumes nodes keep their counters, as Redlock
    /// assumes they keep keys (and the counters follow the servers'
    /// clocks, see the acquisition script).
    pub(crate) fn confirm_fence(
        &self,
        key: &[u8],
        token: &Token,
        fence: u64,
    ) -> Result<Instant, Error> {
        if self.nodes.len() == 1 {
            return Ok(Instant::now());
        }
        let mut round = self.round(Op::FenceWrite { fence }, key, token);
        round.run(self.all());
        let tally = round.tally();
        if tally.yes_count() >= self.needed() {
            Ok(tally.end)
        } else if tally.no_count() > self.nodes.len() - self.needed() {
            Err(Error::LockLost)
        } else {
            Err(self.no_quorum(round.into_tally()))
        }
    }

    /// Fair mode: leaves the queue (a waiter giving up), best effort; the
    /// queue's lease would drop it anyway. Returns a node's failure, if
    /// one failed (a cluster follows its redirection).
    pub(crate) fn fair_leave(&self, key: &[u8], token: &Token) -> Option<Error> {
        let mut round = self.round(Op::FairLeave, key, token);
        round.run(self.all());
        round
            .into_tally()
            .first_failure
            .map(|(i, failure)| failure.into_error(&self.nodes[i].name))
    }

    /// Releases on every node. `true` when a quorum deleted our key, `false`
    /// when a majority no longer held our token.
    pub(crate) fn release(&self, key: &[u8], token: &Token) -> Result<bool, Error> {
        self.release_op(Op::Release, key, token)
    }

    /// [`release`](Self::release) by `op` (a primitive's release).
    pub(crate) fn release_op(&self, op: Op<'_>, key: &[u8], token: &Token) -> Result<bool, Error> {
        let mut round = self.round(op, key, token);
        round.run_untimed(self.all());
        let tally = round.tally();
        if tally.yes_count() >= self.needed() {
            Ok(true)
        } else if tally.no_count() > self.nodes.len() - self.needed() {
            Ok(false)
        } else {
            Err(self.no_quorum(round.into_tally()))
        }
    }

    /// Renews on every node; returns the new end of validity.
    ///
    /// On failure, the error says why, and — the rule that keeps two holders
    /// out — what the lock's validity can still be. **Invariant:
    /// `remaining()` never exceeds the TTL that a majority of nodes could
    /// hold.** A renewal that fails may still have reached nodes (a reply
    /// lost or late is no proof the command was not applied), and those now
    /// hold the *new* TTL, shorter or longer; the others keep the old
    /// expiry. So a majority holds the key at least until
    /// `min(previous validity, start + new ttl − drift)`, and no longer can
    /// be promised: that is the validity left. `ValidityExpired` (a quorum
    /// renewed, too late) leaves none. `LockLost` (a majority no longer
    /// holds our token) releases what is left on the others.
    pub(crate) fn extend(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> Result<Instant, ExtendFailed> {
        let op = Op::Extend {
            ttl_ms: millis(ttl),
        };
        self.extend_op(op, key, token, ttl)
    }

    /// [`extend`](Self::extend) by `op`, which renews for `ttl` (a
    /// primitive's renewal); a lock found lost is cleaned up by the
    /// operation's own release.
    pub(crate) fn extend_op(
        &self,
        op: Op<'_>,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> Result<Instant, ExtendFailed> {
        let mut round = self.round(op, key, token);
        round.run(self.all());
        let tally = round.tally();
        let valid_until = self.valid_until(tally.start, ttl);
        if tally.yes_count() >= self.needed() && tally.end < valid_until {
            return Ok(valid_until);
        }
        let valid_until_at_most = (tally.sent != 0).then_some(valid_until);
        let error = if tally.yes_count() >= self.needed() {
            Error::ValidityExpired {
                elapsed: tally.end - tally.start,
                ttl,
            }
        } else if tally.no_count() > self.nodes.len() - self.needed() {
            let skip = tally.no;
            round.clean_up(skip);
            Error::LockLost
        } else {
            self.no_quorum(round.into_tally())
        };
        Err(ExtendFailed {
            error,
            valid_until_at_most,
        })
    }

    /// Renews a batch of locks on every node in one round trip (the lease
    /// keeper's `op`, an [`Op::ExtendMany`] whose lock `j` has TTL
    /// `ttls[j]`), and says what it did for each by the rules of
    /// [`extend`](Self::extend), so that the same invariant holds: a lock's
    /// validity never exceeds what a majority could hold. `token` is any of
    /// the batch's tokens (a round's clean-up would use it; a renewal has
    /// none). Returns the error a failed node gave, if one did (with one
    /// node, a cluster master's redirection).
    pub(crate) fn renew_many(
        &self,
        op: Op<'_>,
        token: &Token,
        ttls: &[Duration],
        mut each: impl FnMut(usize, Renewal),
    ) -> Option<Error> {
        let mut answers = [0u64; MAX_NODES];
        let mut round = self.round(op, b"", token);
        round.record_each(&mut answers[..self.nodes.len()]);
        round.run(self.all());
        let tally = round.tally();
        let spare = self.nodes.len() - self.needed();
        for (j, &ttl) in ttls.iter().enumerate() {
            let renewed = round.renewed(j);
            let yes = crate::round::count(renewed);
            let no = crate::round::count(tally.yes & !renewed);
            let valid_until = self.valid_until(tally.start, ttl);
            let outcome = if yes >= self.needed() && tally.end < valid_until {
                Renewal::Renewed(valid_until)
            } else if yes >= self.needed() || no > spare {
                Renewal::Lost
            } else {
                Renewal::Undecided {
                    valid_until_at_most: (tally.sent != 0).then_some(valid_until),
                }
            };
            each(j, outcome);
        }
        round
            .into_tally()
            .first_failure
            .map(|(i, failure)| failure.into_error(&self.nodes[i].name))
    }

    /// The error for an undecided operation. With one node, that node's own
    /// failure says it best.
    fn no_quorum(&self, tally: Tally) -> Error {
        let agreed = tally.yes_count();
        let cause = tally
            .first_failure
            .map(|(node, failure)| failure.into_error(&self.nodes[node].name));
        match cause {
            Some(cause) if self.nodes.len() == 1 => cause,
            cause => Error::NoQuorum {
                agreed,
                nodes: self.nodes.len(),
                cause: cause.map(Box::new),
            },
        }
    }
}

/// A drift factor in parts per billion.
pub(crate) fn ppb(drift_factor: f64) -> u64 {
    // Cannot truncate: the builder keeps the factor within [0, 0.5).
    (drift_factor * 1e9).round() as u64
}

/// The clock-drift allowance for `ttl` at `drift_ppb` (see
/// [`Quorum::drift`]).
pub(crate) fn drift(drift_ppb: u64, ttl: Duration) -> Duration {
    let nanos = millis(ttl).saturating_mul(drift_ppb) / 1_000;
    Duration::from_nanos(nanos) + DRIFT_FIXED
}

/// Refuses a server listed twice, by name or by a resolved address.
fn check_distinct(endpoints: &[Endpoint]) -> Result<(), Error> {
    let duplicate = |first: usize, second: usize| {
        Error::invalid(format!(
            "duplicate node: {} and {} are the same server, which would vote twice",
            endpoints[first].name(),
            endpoints[second].name()
        ))
    };
    let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
    for (i, e) in endpoints.iter().enumerate() {
        if let Some(j) = endpoints[..i].iter().position(|other| e.same_name(other)) {
            return Err(duplicate(j, i));
        }
        for addr in e.resolved() {
            if let Some(&j) = seen.get(&addr)
                && j != i
            {
                return Err(duplicate(j, i));
            }
            seen.insert(addr, i);
        }
    }
    Ok(())
}

/// A TTL in whole milliseconds, as `PX`/`PEXPIRE` take it. Callers have
/// validated it (at least 1 ms, at most the configured cap).
pub(crate) fn millis(ttl: Duration) -> u64 {
    // `as_millis` in 64 bits (it computes in 128): the same value, or
    // `u64::MAX` where that would not fit.
    ttl.as_secs()
        .saturating_mul(1_000)
        .saturating_add(u64::from(ttl.subsec_millis()))
}

/// `ttl` less its drift allowance ([`drift`]), zero if nothing is left: what
/// a grant at `start` protects until `start + validity`. In 64-bit
/// nanoseconds on the hot path, where `Duration` arithmetic normalises at
/// every step; exact below 584 years (TTLs stop at 365 days).
fn validity(drift_ppb: u64, ttl: Duration) -> Duration {
    let ttl_ns = ttl
        .as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(ttl.subsec_nanos()));
    let drift_ns = (millis(ttl).saturating_mul(drift_ppb) / 1_000)
        .saturating_add(DRIFT_FIXED.as_nanos() as u64);
    Duration::from_nanos(ttl_ns.saturating_sub(drift_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quorum(n: usize) -> Quorum {
        let endpoints = (0..n)
            .map(|i| Endpoint::tcp("127.0.0.1", 1 + i as u16))
            .collect();
        let timeouts = Timeouts {
            connect: Duration::from_millis(10),
            io: Duration::from_millis(10),
        };
        let pool = NodeConfig {
            max_conns: 1,
            wait: Duration::from_millis(10),
            quarantine: None,
        };
        Quorum::new(endpoints, timeouts, pool, 0.01, None).expect("distinct nodes")
    }

    #[test]
    fn quorum_is_a_strict_majority() {
        let needed: Vec<usize> = (1..=7).map(|n| quorum(n).needed()).collect();
        assert_eq!(needed, [1, 2, 2, 3, 3, 4, 4]);
    }

    #[test]
    fn drift_is_one_percent_plus_two_ms() {
        let q = quorum(1);
        assert_eq!(q.drift(Duration::from_secs(10)), Duration::from_millis(102));
        assert_eq!(
            q.drift(Duration::from_millis(100)),
            Duration::from_millis(3)
        );
    }

    /// The 64-bit shortcuts give what `Duration` arithmetic gives, for
    /// TTLs from a millisecond to the 365-day cap, whole or not, at drift
    /// factors from 0 to just under 0.5.
    #[test]
    fn validity_and_millis_match_duration_arithmetic() {
        let mut ttls: Vec<Duration> = (0..2_000).map(Duration::from_micros).collect();
        ttls.extend((0..40).map(|p| Duration::from_nanos(1_000_003u64 << p)));
        ttls.extend([
            Duration::from_secs(365 * 86_400),
            Duration::from_secs(60),
            Duration::new(7, 999_999_999),
        ]);
        for ppb in [0, 1, 10_000_000, 123_456_789, 499_999_999] {
            for &ttl in &ttls {
                assert_eq!(
                    validity(ppb, ttl),
                    ttl.saturating_sub(drift(ppb, ttl)),
                    "{ttl:?} at {ppb} ppb"
                );
                assert_eq!(u128::from(millis(ttl)), ttl.as_millis(), "{ttl:?}");
            }
        }
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn all_mask_covers_exactly_the_nodes() {
        assert_eq!(quorum(1).all(), 0b1);
        assert_eq!(quorum(5).all(), 0b11111);
        assert_eq!(quorum(MAX_NODES).all(), u64::MAX);
    }
}
