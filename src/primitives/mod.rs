//! More lock shapes beside the plain lock: a [semaphore](Semaphore) with
//! expiring permits, a [read-write lock](RwLock) with writer preference,
//! and an all-or-nothing [multi-key lock](crate::LockManager::try_lock_all).
//!
//! Each is an acquisition op (`primitives/script.rs`) run by the same
//! quorum rules as a lock (`Quorum::acquire_op`: votes, validity from the
//! first write less the drift allowance, clean-up by the op's own release),
//! waited for by the same loop (`LockManager::wait_for`: woken by releases,
//! the holder's TTL, the retry policy), and held by one guard type inside
//! ([`Held`]), whose `remaining`, `extend` and `release` keep a lock's
//! rules: `remaining()` never exceeds what a majority of nodes could still
//! hold.
//!
//! Where they run: the semaphore on one node (or a cluster's slot master)
//! only — over a Redlock quorum, majorities do not bound the holders of k
//! permits (3 nodes, 2 permits: A on {1,2}, B on {2,3}, C on {1,3} each win
//! a majority, and no node ever sees more than 2), so it is refused there.
//! The read-write lock and the multi-key lock keep the Redlock argument
//! (two majorities share a node, and that node's script refuses the second
//! holder), so they run over a quorum too.

mod held;
mod multi;
mod rwlock;
pub(crate) mod script;
mod semaphore;

pub use held::{Permit, ReadLock, WriteLock};
pub use multi::MultiLock;
pub use rwlock::RwLock;
pub use semaphore::Semaphore;

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::manager::{Attempts, LockManager, Waited, observing};
use crate::quorum::{Acquired, millis};
use crate::retry::RetryPolicy;
use crate::script::Op;
use crate::time;
use crate::token::Token;
use crate::wait::{Handed, Wants};
use held::{Held, One};
use script::Shaped;

/// One attempt (a `try_…` call), counted in the metrics.
fn try_once<A: Attempts>(manager: &LockManager, attempts: &mut A) -> Result<Option<A::Got>> {
    let started = observing();
    let result = attempts.attempt(1, false).map(Result::ok);
    manager.observe_call(started, &result);
    result
}

/// Waits by `policy` (a blocking call: `acquire`, `read`, `write`,
/// `lock_all`).
fn wait_by<A: Attempts>(
    manager: &LockManager,
    attempts: &mut A,
    ttl: Duration,
    policy: &RetryPolicy,
) -> Result<A::Got> {
    let started = Instant::now();
    let deadline = policy
        .wait_bound()
        .map(|wait| time::deadline(started, wait));
    let waited = manager.wait_for(attempts, ttl, policy, deadline);
    manager.waited(waited, started)
}

/// Tries until `wait` has passed (a `try_…_for` call).
fn wait_up_to<A: Attempts>(
    manager: &LockManager,
    attempts: &mut A,
    ttl: Duration,
    wait: Duration,
) -> Result<Option<A::Got>> {
    let started = observing();
    let policy = manager.try_for_policy();
    let result = match manager.wait_for(attempts, ttl, &policy, Some(time::deadline_in(wait))) {
        Waited::Got(got) => Ok(Some(got)),
        Waited::Held { .. } | Waited::TimedOut { .. } => Ok(None),
        Waited::Failed(e) => Err(e),
    };
    manager.observe_call(started, &result);
    result
}

/// A fresh token, or the error that says the OS could not give one.
fn token() -> Result<Token> {
    Token::random().map_err(|e| Error::RandomSource(e.to_string().into()))
}

/// What a lock handed over by another thread of the manager means to a
/// primitive: the key is used both as a plain lock and as a primitive. The
/// handed lock is released, never kept.
fn not_a_lock<T>(manager: &LockManager, key: &[u8], handed: Handed) -> Result<T> {
    let _ = manager.route().release(key, &handed.0);
    Err(Error::invalid(format!(
        "key {:?} is used both as a plain lock and as a semaphore or read-write lock",
        key.escape_ascii().to_string()
    )))
}

/// The attempts of a one-key primitive (a permit, a read or write lock),
/// for [`LockManager::wait_for`].
struct Try<'a> {
    manager: &'a LockManager,
    shape: One,
    /// The primitive's key; a multi-key lock's keys as sent.
    key: &'a [u8],
    ttl: Duration,
    /// A semaphore's permits.
    permits: u32,
    /// A waiting writer's one token (it names the writer's turn); else a
    /// fresh token per attempt.
    kept: Option<Token>,
}

impl<'a> Try<'a> {
    fn new(manager: &'a LockManager, shape: One, key: &'a [u8], ttl: Duration) -> Try<'a> {
        Try {
            manager,
            shape,
            key,
            ttl,
            permits: 0,
            kept: None,
        }
    }
}

impl Attempts for Try<'_> {
    type Got = Held;

    fn attempt(
        &mut self,
        attempt: u32,
        _registered: bool,
    ) -> Result<Result<Held, Option<Duration>>> {
        let token = match self.kept {
            Some(token) => token,
            None => token()?,
        };
        let ttl_ms = millis(self.ttl);
        let op = match self.shape {
            One::Permit => Shaped::SemAcquire {
                ttl_ms,
                permits: self.permits,
            },
            One::Read => Shaped::ReadAcquire { ttl_ms },
            One::Write => Shaped::WriteAcquire {
                ttl_ms,
                waits: self.kept.is_some(),
            },
        };
        let acquired =
            self.manager
                .route()
                .acquire_op(Op::Shaped(op), self.key, &token, self.ttl)?;
        match acquired {
            Acquired::Granted { valid_until, .. } => Ok(Ok(Held::new(
                self.manager,
                self.shape.into(),
                self.key,
                token,
                self.ttl,
                valid_until,
                attempt,
            ))),
            Acquired::Held { retry_in, .. } => Ok(Err(retry_in)),
        }
    }

    fn wake_key(&self) -> &[u8] {
        self.key
    }

    fn wants(&self) -> Wants {
        Wants {
            // Readers can all get in at once; a writer must hear of every
            // reader's leaving.
            all: matches!(self.shape, One::Read | One::Write),
            // A plain lock handed over is not a permit, a read or write
            // lock, nor a whole set.
            handoff: false,
            // Each permit released can go to another waiter, even before
            // the one woken for the last has tried.
            each_release: self.shape == One::Permit,
        }
    }

    fn cap(&self, policy_cap: Duration) -> Duration {
        self.max_nap()
            .map_or(policy_cap, |most| policy_cap.min(most))
    }

    fn max_nap(&self) -> Option<Duration> {
        // Often enough to keep the writer's turn.
        self.kept
            .is_some()
            .then(|| Duration::from_millis(script::TURN_MS / 4))
    }

    fn handed(&mut self, handed: Handed, _attempts: u32) -> Result<Held> {
        not_a_lock(self.manager, self.wake_key(), handed)
    }
}
