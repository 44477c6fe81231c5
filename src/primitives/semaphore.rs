//! A distributed semaphore: at most `permits` holders of a key at once,
//! each for a TTL.

use std::fmt;
use std::time::Duration;

use smallvec::SmallVec;

use super::held::{One, Permit};
use super::{Try, try_once, wait_by, wait_up_to};
use crate::error::{Error, Result};
use crate::lock::INLINE_KEY;
use crate::manager::LockManager;
use crate::retry::RetryPolicy;

/// Most permits a semaphore may have.
pub(crate) const MAX_PERMITS: u32 = 1 << 20;

/// At most `permits` holders of one key at once, each holding a
/// [`Permit`] for a TTL: a permit whose holder died (or forgot to renew
/// it) expires, and the next acquisition reclaims it; the structure itself
/// expires with its last permit, so nothing is left behind. Made by
/// [`LockManager::semaphore`]; cheap to make (no I/O), and to clone.
///
/// One node (or a Redis Cluster's slot master) only: over a Redlock
/// quorum, majorities cannot bound k > 1 holders (see the README).
///
/// ```no_run
/// use std::time::Duration;
/// # let locks = redlease::LockManager::builder().node("redis://127.0.0.1:6379").build()?;
/// // At most 4 exports at once, across every process.
/// let exports = locks.semaphore("exports", 4)?;
/// let permit = exports.acquire(Duration::from_secs(30))?;
/// // ... one of at most 4; permit.remaining() says for how long
/// permit.release()?;
/// # Ok::<(), redlease::Error>(())
/// ```
///
/// Every holder of a key must use the same number of permits: each
/// acquisition checks the count it is given, so a handle made with 5
/// admits a fifth holder beside handles made with 4.
#[derive(Clone)]
pub struct Semaphore {
    manager: LockManager,
    key: SmallVec<[u8; INLINE_KEY]>,
    permits: u32,
}

impl LockManager {
    /// The semaphore of `permits` places on `key`. Refused: an empty or
    /// oversized key, zero or more than 2²⁰ permits, a manager over a
    /// Redlock quorum (see [`Semaphore`]).
    pub fn semaphore(&self, key: impl AsRef<[u8]>, permits: u32) -> Result<Semaphore> {
        let key = key.as_ref();
        self.check_key(key)?;
        if permits == 0 || permits > MAX_PERMITS {
            return Err(Error::invalid(format!(
                "a semaphore needs 1 to {MAX_PERMITS} permits, not {permits}"
            )));
        }
        if self.quorum() > 1 {
            return Err(Error::Unsupported(
                "a semaphore over a Redlock quorum: majorities cannot bound more than one holder (use one node, or a Redis Cluster)",
            ));
        }
        Ok(Semaphore {
            manager: self.clone(),
            key: SmallVec::from_slice(key),
            permits,
        })
    }
}

impl Semaphore {
    /// The semaphore's key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Its number of permits.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    fn attempts(&self, ttl: Duration) -> Result<Try<'_>> {
        let ttl = self.manager.check_ttl(ttl)?;
        let mut attempts = Try::new(&self.manager, One::Permit, &self.key, ttl);
        attempts.permits = self.permits;
        Ok(attempts)
    }

    /// One attempt to take a permit for `ttl`: `Ok(None)` when all are
    /// held. Blocks for one round trip. Expired permits are reclaimed
    /// first.
    pub fn try_acquire(&self, ttl: Duration) -> Result<Option<Permit>> {
        let mut attempts = self.attempts(ttl)?;
        Ok(try_once(&self.manager, &mut attempts)?.map(Permit))
    }

    /// Takes a permit, waiting as [`LockManager::lock`] does (woken when a
    /// holder releases one, or when the first permit held expires).
    pub fn acquire(&self, ttl: Duration) -> Result<Permit> {
        self.acquire_with(ttl, self.manager.retry_policy())
    }

    /// [`acquire`](Self::acquire) with a retry policy for this call only.
    pub fn acquire_with(&self, ttl: Duration, policy: &RetryPolicy) -> Result<Permit> {
        let mut attempts = self.attempts(ttl)?;
        let ttl = attempts.ttl;
        wait_by(&self.manager, &mut attempts, ttl, policy).map(Permit)
    }

    /// Tries to take a permit until `wait` has passed; `Ok(None)` when all
    /// were still held at the last attempt.
    pub fn try_acquire_for(&self, ttl: Duration, wait: Duration) -> Result<Option<Permit>> {
        let mut attempts = self.attempts(ttl)?;
        let ttl = attempts.ttl;
        Ok(wait_up_to(&self.manager, &mut attempts, ttl, wait)?.map(Permit))
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("key", &self.key.escape_ascii().to_string())
            .field("permits", &self.permits)
            .finish()
    }
}
