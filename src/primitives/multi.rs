//! All of a set of keys, or none: one script per node takes every key at
//! once. In a Redis Cluster a script reaches one slot, so a set across
//! slots is taken slot group by slot group, in slot order, and what was
//! taken is released when a later group is held. Either way an attempt
//! never holds some keys while it waits for others: no deadlock, whatever
//! the sets and their order.

use std::fmt;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use super::held::{self, Held, INLINE_KEYS, Shape};
use super::script::{MAX_KEYS, Shaped};
use super::{not_a_lock, token, try_once, wait_by, wait_up_to};
use crate::error::{Error, Result};
use crate::manager::{Attempts, LockManager};
use crate::quorum::{Acquired, millis};
use crate::retry::RetryPolicy;
use crate::script::Op;
use crate::token::Token;
use crate::wait::{Handed, Wants};

/// The keys of one slot group as the scripts take them: each a RESP bulk
/// string.
type Encoded = SmallVec<[u8; INLINE_KEYS]>;

/// A set's keys by slot group, in slot order (one group off a cluster, or
/// when they share a slot): each group's keys as sent, and how many.
type Groups = SmallVec<[(Encoded, usize); 1]>;

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
    /// oversized key. In a Redis Cluster, keys that share a hash slot (a
    /// common hash tag, `{…}`) are taken in one round trip; keys across
    /// slots are taken one slot after another, in slot order, and released
    /// again if a later slot's keys are held (one round trip per slot).
    ///
    /// ```no_run
    /// use std::time::{Duration, Instant};
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
        let (groups, ttl) = self.check_keys(keys, ttl)?;
        let mut attempts = SetAttempts::new(self, &groups, ttl);
        try_once(self, &mut attempts)
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
        let (groups, ttl) = self.check_keys(keys, ttl)?;
        let mut attempts = SetAttempts::new(self, &groups, ttl);
        wait_by(self, &mut attempts, ttl, policy)
    }

    /// Tries to lock every key in `keys` until `wait` has passed.
    pub fn try_lock_all_for<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        ttl: Duration,
        wait: Duration,
    ) -> Result<Option<MultiLock>> {
        let (groups, ttl) = self.check_keys(keys, ttl)?;
        let mut attempts = SetAttempts::new(self, &groups, ttl);
        wait_up_to(self, &mut attempts, ttl, wait)
    }

    /// Validates a multi-key lock's keys and TTL; returns the keys as
    /// sent, by slot group, and the TTL in whole milliseconds.
    fn check_keys<K: AsRef<[u8]>>(&self, keys: &[K], ttl: Duration) -> Result<(Groups, Duration)> {
        if keys.is_empty() || keys.len() > MAX_KEYS {
            return Err(Error::invalid(format!(
                "a multi-key lock takes 1 to {MAX_KEYS} keys, not {}",
                keys.len()
            )));
        }
        let ttl = self.check_ttl(ttl)?;
        for (i, key) in keys.iter().enumerate() {
            let key = key.as_ref();
            self.check_key(key)?;
            if keys[..i].iter().any(|other| other.as_ref() == key) {
                return Err(Error::invalid(format!(
                    "key {:?} is listed twice",
                    key.escape_ascii().to_string()
                )));
            }
        }
        let mut groups = Groups::new();
        if !self.route().is_cluster() {
            let mut encoded = Encoded::new();
            keys.iter()
                .for_each(|key| put_bulk(&mut encoded, key.as_ref()));
            groups.push((encoded, keys.len()));
            return Ok((groups, ttl));
        }
        // Slot order: two sets that share slots take them in one order.
        let mut slots: SmallVec<[u16; 8]> = keys
            .iter()
            .map(|key| crate::cluster::slot(key.as_ref()))
            .collect();
        slots.sort_unstable();
        slots.dedup();
        for slot in slots {
            let mut encoded = Encoded::new();
            let mut count = 0;
            for key in keys
                .iter()
                .filter(|k| crate::cluster::slot(k.as_ref()) == slot)
            {
                put_bulk(&mut encoded, key.as_ref());
                count += 1;
            }
            groups.push((encoded, count));
        }
        Ok((groups, ttl))
    }
}

/// A multi-key lock's attempts: every slot group in order, all or none.
struct SetAttempts<'a> {
    manager: &'a LockManager,
    groups: &'a Groups,
    ttl: Duration,
    /// The group, and the key in it, that the last attempt found held.
    blocker: (usize, usize),
    /// One token for the whole wait: keys an earlier attempt failed to
    /// release again (a later slot group was held) are the set's own, not
    /// in its way.
    token: Option<Token>,
}

impl<'a> SetAttempts<'a> {
    fn new(manager: &'a LockManager, groups: &'a Groups, ttl: Duration) -> SetAttempts<'a> {
        SetAttempts {
            manager,
            groups,
            ttl,
            blocker: (0, 0),
            token: None,
        }
    }
}

impl Attempts for SetAttempts<'_> {
    type Got = MultiLock;

    fn attempt(
        &mut self,
        attempt: u32,
        _registered: bool,
    ) -> Result<Result<MultiLock, Option<Duration>>> {
        let token = match self.token {
            Some(token) => token,
            None => *self.token.insert(token()?),
        };
        let started = Instant::now();
        let ttl_ms = millis(self.ttl);
        // Groups taken so far; dropped (released) if a later one fails.
        let mut parts: SmallVec<[Held; 1]> = SmallVec::new();
        for (g, (keys, count)) in self.groups.iter().enumerate() {
            let op = Op::Shaped(Shaped::MultiAcquire {
                ttl_ms,
                keys,
                count: *count,
            });
            let place = held::bulks(keys).next().unwrap_or_default();
            match self
                .manager
                .route()
                .acquire_op(op, place, &token, self.ttl)?
            {
                Acquired::Granted { valid_until, .. } => parts.push(Held::new(
                    self.manager,
                    Shape::Multi { count: *count },
                    keys,
                    token,
                    self.ttl,
                    valid_until,
                    attempt,
                )),
                Acquired::Held { retry_in, blocker } => {
                    self.blocker = (g, blocker.map_or(0, usize::from));
                    return Ok(Err(retry_in));
                }
            }
        }
        let set = MultiLock { parts };
        // Each group's validity was checked as it was taken; the first may
        // have run out while the others were (across slots).
        if set.parts.len() > 1 && set.is_lost() {
            let _ = set.release();
            return Err(Error::ValidityExpired {
                elapsed: started.elapsed(),
                ttl: self.ttl,
            });
        }
        Ok(Ok(set))
    }

    fn wake_key(&self) -> &[u8] {
        let (g, i) = self.blocker;
        let keys = &self.groups[g].0;
        held::bulks(keys)
            .nth(i)
            .or_else(|| held::bulks(keys).next())
            .unwrap_or_default()
    }

    fn wants(&self) -> Wants {
        // A plain lock handed over is not the whole set.
        Wants {
            all: false,
            handoff: false,
            each_release: false,
        }
    }

    fn handed(&mut self, handed: Handed, _attempts: u32) -> Result<MultiLock> {
        not_a_lock(self.manager, self.wake_key(), handed)
    }
}

/// All the keys of a [multi-key lock](LockManager::try_lock_all), taken
/// together and released together. Released when dropped.
///
/// Its methods mean what a [`Lock`](crate::Lock)'s do, for the set as a
/// whole: the set is valid while every key is, and lost when any is.
#[must_use = "the multi-key lock is released as soon as the guard is dropped"]
pub struct MultiLock {
    /// One per slot group (one off a cluster).
    parts: SmallVec<[Held; 1]>,
}

impl MultiLock {
    /// How long every key is still valid by this process's monotonic clock
    /// (the least of them); zero once one expired, was found lost, or could
    /// not be confirmed renewed in time. Does not block.
    pub fn remaining(&self) -> Duration {
        self.parts
            .iter()
            .map(Held::remaining)
            .min()
            .unwrap_or(Duration::ZERO)
    }

    /// Whether the set is lost: `remaining().is_zero()`.
    pub fn is_lost(&self) -> bool {
        self.remaining().is_zero()
    }

    /// `Err(Error::LockLost)` when the set is lost.
    pub fn check(&self) -> Result<()> {
        if self.is_lost() {
            Err(Error::LockLost)
        } else {
            Ok(())
        }
    }

    /// How many attempts it took: 1 when every key was free at once.
    pub fn attempts(&self) -> u32 {
        self.parts.first().map_or(0, Held::attempts)
    }

    /// The locked keys: in the order given; in a Redis Cluster, grouped by
    /// hash slot, in slot order.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.parts.iter().flat_map(Held::keys)
    }

    /// Renews every key for `ttl` from now: if any key is no longer ours,
    /// the set is lost (`Err(Error::LockLost)`, final) and what is left of
    /// it is released. Another error leaves [`remaining`](Self::remaining)
    /// at most what the new `ttl` gives from this call (across cluster
    /// slots, some slot groups may have been renewed and others not: the
    /// least of them counts). One round trip (one per slot group in a
    /// cluster).
    pub fn extend(&mut self, ttl: Duration) -> Result<()> {
        let mut outcome = Ok(());
        for part in &mut self.parts {
            match part.extend(ttl) {
                Ok(()) => {}
                Err(Error::LockLost) => {
                    for part in &mut self.parts {
                        let _ = part.finish();
                    }
                    return Err(Error::LockLost);
                }
                Err(e) => {
                    if outcome.is_ok() {
                        outcome = Err(e);
                    }
                }
            }
        }
        outcome
    }

    /// Releases every key. `Ok(true)`: all were still ours; `Ok(false)`:
    /// some had expired or were taken (those are left alone); an error:
    /// too few nodes answered to tell for some (they expire by their TTL).
    pub fn release(mut self) -> Result<bool> {
        // Every part is released, whatever the others said.
        let outcomes: SmallVec<[Result<bool>; 1]> =
            self.parts.drain(..).map(Held::release).collect();
        outcomes.into_iter().fold(Ok(true), held::all_released)
    }
}

impl fmt::Debug for MultiLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("MultiLock").field(&self.parts).finish()
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
