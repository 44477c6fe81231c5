//! All of a set of keys, or none: one script per node takes every key at
//! once, so an attempt never holds some keys while it waits for others
//! (no deadlock, whatever the sets and their order).

use std::time::Duration;

use smallvec::SmallVec;

use super::held::{INLINE_KEYS, MultiLock, Shape};
use super::script::MAX_KEYS;
use super::{Try, try_once, wait_by, wait_up_to};
use crate::error::{Error, Result};
use crate::manager::LockManager;
use crate::retry::RetryPolicy;

/// The keys as the scripts take them: each a RESP bulk string.
type Encoded = SmallVec<[u8; INLINE_KEYS]>;

impl LockManager {
    /// One attempt to lock every key in `keys` for `ttl`, all or none:
    /// `Ok(None)` when any of them is held by another owner (and then none
    /// was taken). One round trip: each node sets all the keys in one
    /// script, and the quorum rules of [`try_lock`](Self::try_lock) apply
    /// to the set as a whole. The keys are plain lock keys: a plain
    /// [`Lock`](crate::Lock) on one of them excludes the set, and the set
    /// excludes it.
    ///
    /// Refused: no keys, more than 64, a key listed twice, an empty or
    /// oversized key; in a Redis Cluster, keys in different hash slots
    /// (give them a common hash tag, `{…}`).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # let locks = redlease::LockManager::builder().node("redis://127.0.0.1:6379").build()?;
    /// // A transfer between two accounts, whichever order others name them in.
    /// if let Some(both) = locks.try_lock_all(&["account:7", "account:3"], Duration::from_secs(5))? {
    ///     // ... both accounts are ours
    ///     both.release()?;
    /// }
    /// # Ok::<(), redlease::Error>(())
    /// ```
    pub fn try_lock_all<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        ttl: Duration,
    ) -> Result<Option<MultiLock>> {
        let (encoded, ttl) = self.check_keys(keys, ttl)?;
        let mut attempts = Try::new(self, Shape::Multi { count: keys.len() }, &encoded, ttl);
        Ok(try_once(self, &mut attempts)?.map(MultiLock))
    }

    /// Locks every key in `keys`, waiting as [`lock`](Self::lock) does
    /// (woken when the key that stood in the way is released). Waits
    /// holding none of them.
    pub fn lock_all<K: AsRef<[u8]>>(&self, keys: &[K], ttl: Duration) -> Result<MultiLock> {
        self.lock_all_with(keys, ttl, self.retry_policy())
    }

    /// [`lock_all`](Self::lock_all) with a retry policy for this call only.
    pub fn lock_all_with<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        ttl: Duration,
        policy: &RetryPolicy,
    ) -> Result<MultiLock> {
        let (encoded, ttl) = self.check_keys(keys, ttl)?;
        let mut attempts = Try::new(self, Shape::Multi { count: keys.len() }, &encoded, ttl);
        wait_by(self, &mut attempts, ttl, policy).map(MultiLock)
    }

    /// Tries to lock every key in `keys` until `wait` has passed.
    pub fn try_lock_all_for<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<MultiLock>> {
        let (encoded, ttl) = self.check_keys(keys, ttl)?;
        let mut attempts = Try::new(self, Shape::Multi { count: keys.len() }, &encoded, ttl);
        Ok(wait_up_to(self, &mut attempts, ttl, wait)?.map(MultiLock))
    }

    /// Validates a multi-key lock's keys and TTL; returns the keys as sent
    /// and the TTL in whole milliseconds.
    fn check_keys<K: AsRef<[u8]>>(&self, keys: &[K], ttl: Duration) -> Result<(Encoded, Duration)> {
        if keys.is_empty() || keys.len() > MAX_KEYS {
            return Err(Error::invalid(format!(
                "a multi-key lock takes 1 to {MAX_KEYS} keys, not {}",
                keys.len()
            )));
        }
        let ttl = self.check_ttl(ttl)?;
        let mut encoded = Encoded::new();
        for (i, key) in keys.iter().enumerate() {
            let key = key.as_ref();
            self.check_key(key)?;
            if keys[..i].iter().any(|other| other.as_ref() == key) {
                return Err(Error::invalid(format!(
                    "key {:?} is listed twice",
                    key.escape_ascii().to_string()
                )));
            }
            put_bulk(&mut encoded, key);
        }
        if self.route().is_cluster() {
            let first = crate::cluster::slot(keys[0].as_ref());
            if let Some(other) = keys
                .iter()
                .find(|k| crate::cluster::slot(k.as_ref()) != first)
            {
                return Err(Error::invalid(format!(
                    "keys {:?} and {:?} are in different cluster hash slots: give the keys a common hash tag ({{…}})",
                    keys[0].as_ref().escape_ascii().to_string(),
                    other.as_ref().escape_ascii().to_string()
                )));
            }
        }
        Ok((encoded, ttl))
    }
}

/// `$<len>\r\n<key>\r\n`.
fn put_bulk(buf: &mut Encoded, key: &[u8]) {
    buf.push(b'$');
    buf.extend_from_slice(itoa::Buffer::new().format(key.len()).as_bytes());
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(key);
    buf.extend_from_slice(b"\r\n");
}
