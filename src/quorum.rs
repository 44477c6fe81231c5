//! Redlock over N independent nodes (N = 1 is the single-node lock, with the
//! same rules): scatter/gather, validity and drift, clean-up after failure.
//!
//! One operation takes a connection from every node, writes every request
//! first and only then reads the replies, all under one deadline: one round
//! trip in total, not one per node, and no thread pool. Two kinds of node
//! failure are retried once inside the operation, on that node only: a
//! `NOSCRIPT` reply (the script is sent again as `EVAL`) and a pooled
//! connection the server had closed while it sat idle (sent again on a new
//! connection). Neither can repeat, so there is no loop.

use std::time::{Duration, Instant};

use smallvec::SmallVec;

use crate::error::{Error, Failure};
use crate::node::{Checkout, Node};
use crate::script::{self, Op, Vote};
use crate::token::Token;

/// Most nodes a quorum may have: node sets are `u64` bit masks.
pub(crate) const MAX_NODES: usize = 64;

/// Fixed part of the clock-drift allowance, as the Redlock spec gives it.
const DRIFT_FIXED: Duration = Duration::from_millis(2);

/// The nodes and the rules for counting their votes.
#[derive(Debug)]
pub(crate) struct Quorum {
    pub(crate) nodes: Box<[Node]>,
    /// Clock-drift allowance per unit of TTL, in parts per billion: integer
    /// arithmetic on the hot path instead of `Duration::mul_f64`.
    drift_ppb: u64,
    /// Deadline for each operation's replies, from its first write.
    io_timeout: Duration,
}

/// Outcome of an acquisition attempt that reached a decision.
#[derive(Debug)]
pub(crate) enum Acquired {
    /// Ours on a quorum, valid until this instant.
    Granted { valid_until: Instant },
    /// Held by another owner on enough nodes that no quorum was possible.
    Held,
}

/// What one operation found, node by node (bit `i` is node `i`).
#[derive(Debug)]
struct Tally {
    yes: u64,
    no: u64,
    /// The first final failure and its node, for the error.
    first_failure: Option<(usize, Failure)>,
    /// Just before the first request was written.
    start: Instant,
    /// Just after the last reply was read.
    end: Instant,
}

impl Tally {
    /// An empty tally whose clock starts at `now`.
    fn at(now: Instant) -> Tally {
        Tally {
            yes: 0,
            no: 0,
            first_failure: None,
            start: now,
            end: now,
        }
    }

    fn yes_count(&self) -> usize {
        self.yes.count_ones() as usize
    }

    fn no_count(&self) -> usize {
        self.no.count_ones() as usize
    }

    fn fail(&mut self, node: usize, failure: Failure) {
        if self.first_failure.is_none() {
            self.first_failure = Some((node, failure));
        }
    }
}

/// Why a node gets a second chance within one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Redo {
    /// The server lost its script cache: send the script source.
    Source,
    /// The pooled connection had been closed by the server: reconnect.
    Reconnect,
}

type Conns<'a> = SmallVec<[Option<Checkout<'a>>; 8]>;

impl Quorum {
    pub(crate) fn new(nodes: Box<[Node]>, drift_factor: f64, io_timeout: Duration) -> Quorum {
        debug_assert!(!nodes.is_empty() && nodes.len() <= MAX_NODES);
        Quorum {
            nodes,
            // Cannot truncate: the builder keeps the factor within [0, 0.5).
            drift_ppb: (drift_factor * 1e9).round() as u64,
            io_timeout,
        }
    }

    /// Votes needed: a strict majority.
    pub(crate) fn needed(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    /// The clock-drift allowance for a TTL: `ttl × factor + 2 ms`.
    pub(crate) fn drift(&self, ttl: Duration) -> Duration {
        let nanos = ttl.as_nanos() * u128::from(self.drift_ppb) / 1_000_000_000;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)) + DRIFT_FIXED
    }

    fn all(&self) -> u64 {
        u64::MAX >> (MAX_NODES - self.nodes.len())
    }

    /// One acquisition attempt. On anything but success, whatever it may
    /// have written is released on every node that did not answer "held".
    pub(crate) fn acquire(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> Result<Acquired, Error> {
        let acquire = Op::Acquire {
            ttl_ms: millis(ttl),
        };
        let (tally, conns, valid_until) = self.timed_round(acquire, key, token, ttl);
        if tally.yes_count() >= self.needed() && tally.end < valid_until {
            return Ok(Acquired::Granted { valid_until });
        }
        // Failed and timed-out nodes are cleaned too: the SET may have
        // arrived even though its reply did not.
        self.clean_up(conns, tally.no, key, token);
        if tally.yes_count() >= self.needed() {
            Err(Error::ValidityExpired {
                elapsed: tally.end - tally.start,
                ttl,
            })
        } else if tally.no_count() > self.nodes.len() - self.needed() {
            Ok(Acquired::Held)
        } else {
            Err(self.no_quorum(tally))
        }
    }

    /// Releases on every node. `true` when a quorum deleted our key, `false`
    /// when a majority no longer held our token.
    pub(crate) fn release(&self, key: &[u8], token: &Token) -> Result<bool, Error> {
        let tally = self.run(Op::Release, key, token, self.all());
        if tally.yes_count() >= self.needed() {
            Ok(true)
        } else if tally.no_count() > self.nodes.len() - self.needed() {
            Ok(false)
        } else {
            Err(self.no_quorum(tally))
        }
    }

    /// Renews on every node; returns the new end of validity. `LockLost`
    /// when a majority no longer holds our token (what was renewed on the
    /// others is released); any other error leaves the previous validity
    /// standing.
    pub(crate) fn extend(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> Result<Instant, Error> {
        let extend = Op::Extend {
            ttl_ms: millis(ttl),
        };
        let (tally, conns, valid_until) = self.timed_round(extend, key, token, ttl);
        if tally.yes_count() >= self.needed() {
            if tally.end < valid_until {
                return Ok(valid_until);
            }
            return Err(Error::ValidityExpired {
                elapsed: tally.end - tally.start,
                ttl,
            });
        }
        if tally.no_count() > self.nodes.len() - self.needed() {
            self.clean_up(conns, tally.no, key, token);
            return Err(Error::LockLost);
        }
        Err(self.no_quorum(tally))
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

    /// Runs an operation that sets a TTL on every node; also returns when
    /// the lock it grants stops being valid: `ttl` after the first write,
    /// less the drift allowance.
    fn timed_round(
        &self,
        op: Op,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> (Tally, Conns<'_>, Instant) {
        let (tally, conns) = self.round(op, key, token, self.all());
        let valid_until = tally.start + ttl.saturating_sub(self.drift(ttl));
        (tally, conns, valid_until)
    }

    /// Runs `op` on the nodes in `targets`; see [`round`](Self::round).
    fn run(&self, op: Op, key: &[u8], token: &Token, targets: u64) -> Tally {
        self.round(op, key, token, targets).0
    }

    /// Runs `op` on the nodes in `targets`: check out, write all, read all.
    /// Also returns the connections, for a clean-up behind the request.
    fn round(&self, op: Op, key: &[u8], token: &Token, targets: u64) -> (Tally, Conns<'_>) {
        let mut conns: Conns<'_> = SmallVec::new();
        // The validity clock starts before anything is sent. Reading it
        // before the checkouts is conservative (validity can only come out
        // shorter) and saves a clock read; it is read again only if a
        // checkout took real time (waited for the pool, or connected).
        let now = Instant::now();
        let mut tally = Tally::at(now);
        let mut slow = false;
        for (i, node) in self.nodes.iter().enumerate() {
            let mut slot = None;
            if targets & (1 << i) != 0 {
                match node.checkout(false) {
                    Ok(mut conn) => {
                        slow |= conn.slow;
                        op.encode(conn.request(), key, token, false);
                        slot = Some(conn);
                    }
                    Err(failure) => tally.fail(i, failure),
                }
            }
            conns.push(slot);
        }
        if slow {
            tally.start = Instant::now();
        }
        let deadline = tally.start + self.io_timeout;
        let mut redo: SmallVec<[(usize, Redo); 8]> = SmallVec::new();
        let pending = self.scatter(&mut conns, &mut tally, &mut redo);
        self.gather(op, &mut conns, pending, deadline, &mut tally, &mut redo);

        if !redo.is_empty() {
            let mut again = 0u64;
            for &(i, why) in &redo {
                let sent = match why {
                    Redo::Source => {
                        log::debug!(
                            "redlease: script missing on {}, sending its source",
                            self.nodes[i].name
                        );
                        conns[i].as_mut().map(|conn| {
                            op.encode(conn.request(), key, token, true);
                            conn.send()
                        })
                    }
                    Redo::Reconnect => {
                        // Return the dead connection before asking for a new one.
                        conns[i] = None;
                        Some(self.nodes[i].checkout(true).and_then(|mut conn| {
                            op.encode(conn.request(), key, token, false);
                            conn.send()?;
                            conns[i] = Some(conn);
                            Ok(())
                        }))
                    }
                };
                match sent {
                    Some(Ok(())) => again |= 1 << i,
                    Some(Err(failure)) => tally.fail(i, failure),
                    None => {}
                }
            }
            redo.clear();
            self.gather(op, &mut conns, again, deadline, &mut tally, &mut redo);
            // A second chance is the last: whatever asks for a third is final.
            for (i, _) in redo.drain(..) {
                tally.fail(i, Failure::Protocol("node asked for a third attempt"));
            }
        }
        tally.end = Instant::now();
        (tally, conns)
    }

    /// Releases whatever a failed operation may have written, on the very
    /// connections it used (nodes in `skip` said nothing was written). On
    /// the same connection the release runs after the request even when the
    /// request's reply never came: a connection that timed out still
    /// carries it, then is closed without waiting for a reply.
    fn clean_up(&self, mut conns: Conns<'_>, skip: u64, key: &[u8], token: &Token) {
        let mut pending = 0u64;
        for (i, slot) in conns.iter_mut().enumerate() {
            let Some(conn) = slot.as_mut().filter(|_| skip & (1 << i) == 0) else {
                continue;
            };
            // By source, so that no NOSCRIPT round is needed.
            Op::Release.encode(conn.request(), key, token, true);
            if conn.send().is_ok() {
                if conn.is_broken() {
                    conn.discard_arrived();
                } else {
                    pending |= 1 << i;
                }
            }
        }
        let now = Instant::now();
        let mut tally = Tally::at(now);
        let mut redo = SmallVec::new();
        self.gather(
            Op::Release,
            &mut conns,
            pending,
            now + self.io_timeout,
            &mut tally,
            &mut redo,
        );
        if let Some((node, failure)) = tally.first_failure {
            log::debug!(
                "redlease: clean-up after a failed operation failed on {}: {failure:?}",
                self.nodes[node].name
            );
        }
    }

    /// Writes every encoded request; returns the nodes that now owe a reply.
    fn scatter(
        &self,
        conns: &mut Conns<'_>,
        tally: &mut Tally,
        redo: &mut SmallVec<[(usize, Redo); 8]>,
    ) -> u64 {
        let mut pending = 0u64;
        for (i, slot) in conns.iter_mut().enumerate() {
            let Some(conn) = slot else { continue };
            match conn.send() {
                Ok(()) => pending |= 1 << i,
                Err(failure) if conn.was_stale(&failure) => redo.push((i, Redo::Reconnect)),
                Err(failure) => self.node_failed(i, failure, tally),
            }
        }
        pending
    }

    /// Reads one reply from each node in `pending`, until `deadline`.
    fn gather(
        &self,
        op: Op,
        conns: &mut Conns<'_>,
        pending: u64,
        deadline: Instant,
        tally: &mut Tally,
        redo: &mut SmallVec<[(usize, Redo); 8]>,
    ) {
        for (i, slot) in conns.iter_mut().enumerate() {
            if pending & (1 << i) == 0 {
                continue;
            }
            let Some(conn) = slot else { continue };
            match conn.recv_latest_with(deadline, |reply| op.interpret(reply)) {
                Ok(Ok(Vote::Yes)) => tally.yes |= 1 << i,
                Ok(Ok(Vote::No)) => tally.no |= 1 << i,
                Ok(Err(failure)) if script::is_noscript(&failure) && !redo_of(redo, i) => {
                    redo.push((i, Redo::Source));
                }
                Ok(Err(failure)) => {
                    if failure.breaks_connection() {
                        conn.mark_broken();
                    }
                    tally.fail(i, failure);
                }
                Err(failure) if conn.was_stale(&failure) => redo.push((i, Redo::Reconnect)),
                Err(failure) => self.node_failed(i, failure, tally),
            }
        }
    }

    fn node_failed(&self, i: usize, failure: Failure, tally: &mut Tally) {
        if matches!(failure, Failure::Timeout) {
            self.nodes[i].mark_down(&failure);
        }
        tally.fail(i, failure);
    }
}

fn redo_of(redo: &SmallVec<[(usize, Redo); 8]>, node: usize) -> bool {
    redo.iter().any(|&(i, _)| i == node)
}

/// A TTL in whole milliseconds, as `PX`/`PEXPIRE` take it. Callers have
/// validated it (at least 1 ms, at most the configured cap).
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{Endpoint, Timeouts};
    use crate::node::PoolConfig;

    fn quorum(n: usize) -> Quorum {
        let nodes = (0..n)
            .map(|i| {
                Node::new(
                    Endpoint {
                        host: "127.0.0.1".into(),
                        port: 1 + i as u16,
                        username: None,
                        password: None,
                        db: 0,
                    },
                    Timeouts {
                        connect: Duration::from_millis(10),
                        io: Duration::from_millis(10),
                    },
                    PoolConfig {
                        max_conns: 1,
                        wait: Duration::from_millis(10),
                    },
                )
            })
            .collect();
        Quorum::new(nodes, 0.01, Duration::from_millis(10))
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

    #[test]
    fn all_mask_covers_exactly_the_nodes() {
        assert_eq!(quorum(1).all(), 0b1);
        assert_eq!(quorum(5).all(), 0b11111);
        assert_eq!(quorum(MAX_NODES).all(), u64::MAX);
    }
}
