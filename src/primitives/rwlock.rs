//! A distributed read-write lock with writer preference.

use std::fmt;
use std::time::Duration;

use smallvec::SmallVec;

use super::held::{One, ReadLock, WriteLock};
use super::script::Shaped;
use super::{Try, token, try_once, wait_by, wait_up_to};
use crate::error::{Error, Result};
use crate::lock::INLINE_KEY;
use crate::manager::LockManager;
use crate::retry::RetryPolicy;
use crate::script::Op;

/// Many readers or one writer on a key, each for a TTL. Writers are
/// preferred: a writer that waits for readers to leave takes the writers'
/// turn, and no new reader gets in until it has written (a turn whose
/// writer died lapses after half a second), so a steady stream of readers
/// cannot starve writers. Made by [`LockManager::rwlock`]; cheap to make
/// (no I/O), and to clone.
///
/// ```no_run
/// use std::time::Duration;
/// # let locks = redlease::LockManager::builder().node("redis://127.0.0.1:6379").build()?;
/// let config = locks.rwlock("config")?;
/// {
///     let _read = config.read(Duration::from_secs(5))?; // shared
/// }
/// let write = config.write(Duration::from_secs(5))?; // exclusive
/// write.release()?;
/// # Ok::<(), redlease::Error>(())
/// ```
///
/// The key holds the writer's token (a plain lock key, with a TTL); the
/// readers and the turn live beside it, under `{<key>}:redlease:readers`
/// and `{<key>}:redlease:turn` (`<key>:redlease:…` for a key with a hash
/// tag: in the key's cluster slot either way). Do not use the same key as
/// a plain lock.
///
/// Not re-entrant: a thread that holds a read lock and asks for another
/// while a writer waits, or asks for the write lock (an upgrade), waits
/// for itself until its own read lock expires. Release first.
#[derive(Clone)]
pub struct RwLock {
    manager: LockManager,
    key: SmallVec<[u8; INLINE_KEY]>,
}

impl LockManager {
    /// The read-write lock on `key`. Refused: an empty or oversized key;
    /// in a Redis Cluster, a key with a `}` but no hash tag (its companion
    /// keys could not share its slot).
    pub fn rwlock(&self, key: impl AsRef<[u8]>) -> Result<RwLock> {
        let key = key.as_ref();
        self.check_key(key)?;
        if self.route().is_cluster() && !crate::cluster::companions_fit(key) {
            return Err(Error::invalid(format!(
                "key {:?} has a '}}' but no hash tag, so its readers' key cannot share its cluster slot: give it a hash tag ({{…}})",
                key.escape_ascii().to_string()
            )));
        }
        Ok(RwLock {
            manager: self.clone(),
            key: SmallVec::from_slice(key),
        })
    }
}

impl RwLock {
    /// The lock's key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    fn attempts(&self, shape: One, ttl: Duration) -> Result<Try<'_>> {
        let ttl = self.manager.check_ttl(ttl)?;
        Ok(Try::new(&self.manager, shape, &self.key, ttl))
    }

    /// One attempt at a read lock for `ttl`: `Ok(None)` while a writer
    /// holds the lock or waits for its turn.
    pub fn try_read(&self, ttl: Duration) -> Result<Option<ReadLock>> {
        let mut attempts = self.attempts(One::Read, ttl)?;
        Ok(try_once(&self.manager, &mut attempts)?.map(ReadLock))
    }

    /// A read lock, waiting as [`LockManager::lock`] does (every waiter is
    /// woken when the writer releases: readers can all get in at once).
    pub fn read(&self, ttl: Duration) -> Result<ReadLock> {
        self.read_with(ttl, self.manager.retry_policy())
    }

    /// [`read`](Self::read) with a retry policy for this call only.
    pub fn read_with(&self, ttl: Duration, policy: &RetryPolicy) -> Result<ReadLock> {
        let mut attempts = self.attempts(One::Read, ttl)?;
        let ttl = attempts.ttl;
        wait_by(&self.manager, &mut attempts, ttl, policy).map(ReadLock)
    }

    /// Tries for a read lock until `wait` has passed.
    pub fn try_read_for(&self, ttl: Duration, wait: Duration) -> Result<Option<ReadLock>> {
        let mut attempts = self.attempts(One::Read, ttl)?;
        let ttl = attempts.ttl;
        Ok(wait_up_to(&self.manager, &mut attempts, ttl, wait)?.map(ReadLock))
    }

    /// One attempt at the write lock for `ttl`: `Ok(None)` while a writer
    /// or a reader holds it (or another writer waits for its turn). A
    /// single attempt never takes the writers' turn.
    pub fn try_write(&self, ttl: Duration) -> Result<Option<WriteLock>> {
        let mut attempts = self.attempts(One::Write, ttl)?;
        Ok(try_once(&self.manager, &mut attempts)?.map(WriteLock))
    }

    /// The write lock, waiting as [`LockManager::lock`] does; while it
    /// waits for readers to leave, it holds the writers' turn (renewed by
    /// its attempts, which come at least every 125 ms whatever the policy's
    /// backoff), so that no new reader gets in.
    pub fn write(&self, ttl: Duration) -> Result<WriteLock> {
        self.write_with(ttl, self.manager.retry_policy())
    }

    /// [`write`](Self::write) with a retry policy for this call only.
    pub fn write_with(&self, ttl: Duration, policy: &RetryPolicy) -> Result<WriteLock> {
        self.wait_write(
            ttl,
            |attempts, ttl| wait_by(&self.manager, attempts, ttl, policy),
            |_| true,
        )
        .map(WriteLock)
    }

    /// Tries for the write lock until `wait` has passed (holding the
    /// writers' turn meanwhile, as [`write`](Self::write) does).
    pub fn try_write_for(&self, ttl: Duration, wait: Duration) -> Result<Option<WriteLock>> {
        let waited = self.wait_write(
            ttl,
            |attempts, ttl| wait_up_to(&self.manager, attempts, ttl, wait),
            Option::is_some,
        );
        Ok(waited?.map(WriteLock))
    }

    /// A waiting writer: one token for the whole wait (it names the turn),
    /// and the turn given up unless the wait ended `got` the lock.
    fn wait_write<T>(
        &self,
        ttl: Duration,
        wait: impl FnOnce(&mut Try<'_>, Duration) -> Result<T>,
        got: impl FnOnce(&T) -> bool,
    ) -> Result<T> {
        let mut attempts = self.attempts(One::Write, ttl)?;
        let kept = token()?;
        attempts.kept = Some(kept);
        let ttl = attempts.ttl;
        let result = wait(&mut attempts, ttl);
        if !result.as_ref().is_ok_and(got) {
            let _ =
                self.manager
                    .route()
                    .release_op(Op::Shaped(Shaped::TurnLeave), &self.key, &kept);
        }
        result
    }
}

impl fmt::Debug for RwLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLock")
            .field("key", &self.key.escape_ascii().to_string())
            .finish()
    }
}
