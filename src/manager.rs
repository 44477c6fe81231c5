//! The entry point: [`LockManager`] hands out [`Lock`]s.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use retry::OperationResult;

use crate::builder::LockManagerBuilder;
use crate::error::{Error, Result};
use crate::lock::Lock;
use crate::quorum::{Acquired, Quorum};
use crate::retry::RetryPolicy;
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
    inner: Arc<Inner>,
}

/// What every clone shares.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) quorum: Quorum,
    pub(crate) retry: RetryPolicy,
    pub(crate) max_ttl: Duration,
    pub(crate) max_key_len: usize,
}

impl LockManager {
    /// A builder with the defaults documented on each of its setters.
    pub fn builder() -> LockManagerBuilder {
        LockManagerBuilder::default()
    }

    pub(crate) fn from_inner(inner: Inner) -> LockManager {
        LockManager {
            inner: Arc::new(inner),
        }
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.inner.quorum.nodes.len()
    }

    /// Votes needed for a lock: a strict majority of the nodes.
    pub fn quorum(&self) -> usize {
        self.inner.quorum.needed()
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
        let ttl = self.inner.check(key, ttl)?;
        self.attempt(key, ttl, 1)
    }

    /// Takes the lock, waiting by the manager's retry policy while another
    /// owner holds it or transient failures stand in the way. Blocks.
    ///
    /// Gives up with [`Error::Held`] when the policy's attempts run out,
    /// [`Error::WaitTimedOut`] when its wait bound passes, or the last error
    /// when that error is not worth retrying (or was the last attempt's).
    pub fn lock(&self, key: impl AsRef<[u8]>, ttl: Duration) -> Result<Lock> {
        self.lock_with(key, ttl, &self.inner.retry)
    }

    /// [`lock`](Self::lock) with a retry policy for this call only.
    pub fn lock_with(
        &self,
        key: impl AsRef<[u8]>,
        ttl: Duration,
        policy: &RetryPolicy,
    ) -> Result<Lock> {
        let key = key.as_ref();
        let ttl = self.inner.check(key, ttl)?;
        let started = Instant::now();
        let deadline = policy.wait_bound().map(|wait| started + wait);
        match self.wait(key, ttl, policy, deadline)? {
            Ok(lock) => Ok(lock),
            Err(attempts) => {
                let waited = started.elapsed();
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    Err(Error::WaitTimedOut { attempts, waited })
                } else {
                    Err(Error::Held { attempts, waited })
                }
            }
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
        let ttl = self.inner.check(key, ttl)?;
        let policy = self.inner.retry.clone().max_attempts(u32::MAX);
        let deadline = Instant::now().checked_add(wait);
        Ok(self.wait(key, ttl, &policy, deadline)?.ok())
    }

    /// Attempts until one succeeds, or the delays run out (`Ok(Err(attempts))`
    /// when the lock was held at the last attempt), or an error is final.
    fn wait(
        &self,
        key: &[u8],
        ttl: Duration,
        policy: &RetryPolicy,
        deadline: Option<Instant>,
    ) -> Result<Result<Lock, u32>> {
        let outcome = retry::retry_with_index(policy.delays(deadline), |attempt| {
            match self.attempt(key, ttl, attempt) {
                Ok(Some(lock)) => OperationResult::Ok(lock),
                // Contended: retry, remembering no error.
                Ok(None) => OperationResult::Retry(None),
                Err(e) if e.is_retryable() => OperationResult::Retry(Some(e)),
                Err(e) => OperationResult::Err(Some(e)),
            }
        });
        match outcome {
            Ok(lock) => Ok(Ok(lock)),
            Err(retry::Error { error: Some(e), .. }) => Err(e),
            Err(retry::Error { tries, .. }) => Ok(Err(u32::try_from(tries).unwrap_or(u32::MAX))),
        }
    }

    /// One attempt with a fresh token; `attempt` counts from 1.
    fn attempt(&self, key: &[u8], ttl: Duration, attempt: u64) -> Result<Option<Lock>> {
        let token = Token::random().map_err(|e| Error::RandomSource(e.to_string().into()))?;
        match self.inner.quorum.acquire(key, &token, ttl)? {
            Acquired::Granted { valid_until } => {
                let attempts = u32::try_from(attempt).unwrap_or(u32::MAX);
                Ok(Some(Lock::new(
                    self.clone(),
                    key,
                    token,
                    valid_until,
                    attempts,
                )))
            }
            Acquired::Held => Ok(None),
        }
    }
}

impl Inner {
    /// Validates a key and a TTL; returns the TTL in whole milliseconds.
    pub(crate) fn check(&self, key: &[u8], ttl: Duration) -> Result<Duration> {
        if key.is_empty() {
            return Err(Error::invalid("key is empty"));
        }
        if key.len() > self.max_key_len {
            return Err(Error::invalid(format!(
                "key is {} bytes, over the {} byte cap",
                key.len(),
                self.max_key_len
            )));
        }
        self.check_ttl(ttl)
    }

    /// Validates a TTL; returns it rounded down to whole milliseconds, as it
    /// is sent (`PX`, `PEXPIRE`). `PEXPIRE 0` would delete the key, so a TTL
    /// is never let through as zero.
    pub(crate) fn check_ttl(&self, ttl: Duration) -> Result<Duration> {
        if ttl > self.max_ttl {
            return Err(Error::invalid(format!(
                "ttl {ttl:?} is over the {:?} cap",
                self.max_ttl
            )));
        }
        // Cannot truncate: max_ttl is far below u64::MAX milliseconds.
        let ttl = Duration::from_millis(ttl.as_millis() as u64);
        let drift = self.quorum.drift(ttl);
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
            .field("nodes", &self.inner.quorum.nodes)
            .field("quorum", &self.quorum())
            .field("retry", &self.inner.retry)
            .finish_non_exhaustive()
    }
}
