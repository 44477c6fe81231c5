//! The entry point: [`LockManager`] hands out [`Lock`]s.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::builder::LockManagerBuilder;
use crate::error::{Error, Result};
use crate::lock::Lock;
use crate::quorum::{Acquired, ExtendFailed, Quorum};
use crate::retry::RetryPolicy;
use crate::time;
use crate::token::Token;

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
    quorum: Quorum,
    retry: RetryPolicy,
    limits: Limits,
}

/// What keys and TTLs the manager accepts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_ttl: Duration,
    pub(crate) max_key_len: usize,
}

/// Why waiting for a lock stopped.
enum Waited {
    Got(Lock),
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

impl LockManager {
    /// A builder with the defaults documented on each of its setters.
    pub fn builder() -> LockManagerBuilder {
        LockManagerBuilder::default()
    }

    pub(crate) fn new(quorum: Quorum, retry: RetryPolicy, limits: Limits) -> LockManager {
        LockManager {
            shared: Arc::new(Shared {
                quorum,
                retry,
                limits,
            }),
        }
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.shared.quorum.nodes().len()
    }

    /// Votes needed for a lock: a strict majority of the nodes.
    pub fn quorum(&self) -> usize {
        self.shared.quorum.needed()
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
    pub fn try_lock(&self, key: impl AsRef<[u8]>, ttl: Duration) -> Result<Option<Lock>> {
        let key = key.as_ref();
        let ttl = self.check(key, ttl)?;
        self.attempt(key, ttl, 1)
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
        match self.wait(key, ttl, policy, deadline) {
            Waited::Got(lock) => Ok(lock),
            Waited::Held { attempts } => Err(Error::Held {
                attempts,
                waited: started.elapsed(),
            }),
            Waited::TimedOut { attempts } => Err(Error::WaitTimedOut {
                attempts,
                waited: started.elapsed(),
            }),
            Waited::Failed(e) => Err(e),
        }
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
        let policy = self.shared.retry.clone().max_attempts(u32::MAX);
        match self.wait(key, ttl, &policy, Some(time::deadline_in(wait))) {
            Waited::Got(lock) => Ok(Some(lock)),
            Waited::Held { .. } | Waited::TimedOut { .. } => Ok(None),
            Waited::Failed(e) => Err(e),
        }
    }

    /// Attempts until one succeeds, an error is final, or the policy's
    /// attempts or the deadline run out; says which.
    fn wait(
        &self,
        key: &[u8],
        ttl: Duration,
        policy: &RetryPolicy,
        deadline: Option<Instant>,
    ) -> Waited {
        let mut delays = policy.delays();
        let mut attempts = 0u32;
        loop {
            attempts = attempts.saturating_add(1);
            // `None`: held by another owner; `Some`: a failure worth retrying.
            let trouble = match self.attempt(key, ttl, attempts) {
                Ok(Some(lock)) => return Waited::Got(lock),
                Ok(None) => None,
                Err(e) if e.is_retryable() => Some(e),
                Err(e) => return Waited::Failed(e),
            };
            let stop = |held: Waited| trouble.map_or(held, Waited::Failed);
            let Some(mut delay) = delays.next() else {
                return stop(Waited::Held { attempts });
            };
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return stop(Waited::TimedOut { attempts });
                }
                delay = delay.min(left);
            }
            std::thread::sleep(delay);
        }
    }

    /// One attempt with a fresh token; `attempt` counts from 1.
    fn attempt(&self, key: &[u8], ttl: Duration, attempt: u32) -> Result<Option<Lock>> {
        let token = Token::random().map_err(|e| Error::RandomSource(e.to_string().into()))?;
        match self.shared.quorum.acquire(key, &token, ttl)? {
            Acquired::Granted { valid_until } => Ok(Some(Lock::new(
                self.clone(),
                key,
                token,
                valid_until,
                attempt,
            ))),
            Acquired::Held => Ok(None),
        }
    }

    /// Renews a lock on the quorum; for [`Lock::extend`].
    pub(crate) fn extend(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> Result<Instant, ExtendFailed> {
        self.shared.quorum.extend(key, token, ttl)
    }

    /// Releases a lock on the quorum; for [`Lock::release`] and its `Drop`.
    pub(crate) fn release(&self, key: &[u8], token: &Token) -> Result<bool> {
        self.shared.quorum.release(key, token)
    }

    /// What keys and TTLs this manager accepts.
    #[cfg(feature = "internals")]
    pub(crate) fn limits(&self) -> Limits {
        self.shared.limits
    }

    /// The clock-drift allowance for `ttl`.
    pub(crate) fn drift(&self, ttl: Duration) -> Duration {
        self.shared.quorum.drift(ttl)
    }

    /// Validates a key and a TTL; returns the TTL in whole milliseconds.
    pub(crate) fn check(&self, key: &[u8], ttl: Duration) -> Result<Duration> {
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
        self.check_ttl(ttl)
    }

    /// Validates a TTL; returns it rounded down to whole milliseconds, as it
    /// is sent (`PX`, `PEXPIRE`). `PEXPIRE 0` would delete the key, so a TTL
    /// is never let through as zero.
    pub(crate) fn check_ttl(&self, ttl: Duration) -> Result<Duration> {
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

impl fmt::Debug for LockManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockManager")
            .field("nodes", &self.shared.quorum.nodes())
            .field("quorum", &self.quorum())
            .field("retry", &self.shared.retry)
            .finish_non_exhaustive()
    }
}
