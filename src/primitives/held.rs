//! The guards of the primitives: one type inside ([`Held`]), four outside,
//! so that a permit cannot be passed where a write lock is meant.

use std::fmt;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use super::script::Shaped;
use crate::error::{Error, Result};
use crate::manager::LockManager;
use crate::quorum::{ExtendFailed, millis, settle_extend};
use crate::route::needs_one_by_one;
use crate::script::Op;
use crate::token::Token;

/// Bytes of key (a multi-key lock's keys, as sent) that live inside the
/// guard; more cost one allocation per guard.
pub(crate) const INLINE_KEYS: usize = 128;

/// What a guard holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Permit,
    Read,
    Write,
    /// `count` keys, in `Held::key` as RESP bulk strings.
    Multi {
        count: usize,
    },
}

/// The primitives of one key (a multi-key lock makes its own attempts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum One {
    Permit,
    Read,
    Write,
}

impl From<One> for Shape {
    fn from(one: One) -> Shape {
        match one {
            One::Permit => Shape::Permit,
            One::Read => Shape::Read,
            One::Write => Shape::Write,
        }
    }
}

/// A held permit, read lock, write lock or multi-key lock.
pub(crate) struct Held {
    manager: LockManager,
    shape: Shape,
    /// The primitive's key; a multi-key lock's keys, each a RESP bulk
    /// string (as the scripts take them).
    key: SmallVec<[u8; INLINE_KEYS]>,
    token: Token,
    /// The TTL it was taken (or last extended) for, in whole milliseconds.
    ttl: Duration,
    valid_until: Instant,
    attempts: u32,
    /// Known not to be ours any more, or released: `Drop` has nothing to do.
    done: bool,
}

impl Held {
    pub(crate) fn new(
        manager: &LockManager,
        shape: Shape,
        key: &[u8],
        token: Token,
        ttl: Duration,
        valid_until: Instant,
        attempts: u32,
    ) -> Held {
        Held {
            manager: manager.clone(),
            shape,
            key: SmallVec::from_slice(key),
            token,
            ttl,
            valid_until,
            attempts,
            done: false,
        }
    }

    /// The key that places it (a cluster's slot): a multi-key lock's first.
    fn place(&self) -> &[u8] {
        match self.shape {
            Shape::Multi { .. } => bulks(&self.key).next().unwrap_or_default(),
            _ => &self.key,
        }
    }

    pub(super) fn remaining(&self) -> Duration {
        if self.done {
            return Duration::ZERO;
        }
        self.valid_until.saturating_duration_since(Instant::now())
    }

    pub(super) fn extend(&mut self, ttl: Duration) -> Result<()> {
        let ttl = self.manager.check_ttl(ttl)?;
        if self.remaining().is_zero() {
            let _ = self.finish();
            return Err(Error::LockLost);
        }
        let ttl_ms = millis(ttl);
        let op = match self.shape {
            Shape::Permit => Op::Shaped(Shaped::MemberExtend {
                ttl_ms,
                readers: false,
            }),
            Shape::Read => Op::Shaped(Shaped::MemberExtend {
                ttl_ms,
                readers: true,
            }),
            // A write lock is a plain key holding our token.
            Shape::Write => Op::Extend { ttl_ms },
            Shape::Multi { count } => Op::Shaped(Shaped::MultiExtend {
                ttl_ms,
                keys: &self.key,
                count,
            }),
        };
        let mut extended = self
            .manager
            .route()
            .extend_op(op, self.place(), &self.token, ttl);
        if let (Err(failed), Shape::Multi { .. }) = (&extended, self.shape)
            && needs_one_by_one(&failed.error)
        {
            extended = self.extend_each(ttl);
        }
        // The rules of `Lock::extend`: lost is final; an undecided renewal
        // leaves at most what the new TTL gives.
        let settled = settle_extend(extended, &mut self.valid_until, &mut self.done);
        if settled.is_ok() {
            self.ttl = ttl;
        }
        settled
    }

    /// A multi-key lock's renewal key by key: in a cluster, while its slot
    /// is being migrated (the set's script is refused with `TRYAGAIN` when
    /// some of its keys have moved), each key follows its own redirection.
    /// Renewed when every key was; lost when one was; else undecided, at
    /// most what the new TTL gives.
    fn extend_each(&self, ttl: Duration) -> std::result::Result<Instant, ExtendFailed> {
        let route = self.manager.route();
        let mut valid_until: Option<Instant> = None;
        let mut first_error = None;
        let mut at_most: Option<Instant> = None;
        for key in bulks(&self.key) {
            match route.extend(key, &self.token, ttl) {
                Ok(until) => valid_until = Some(valid_until.map_or(until, |v| v.min(until))),
                Err(ExtendFailed {
                    error: Error::LockLost,
                    ..
                }) => {
                    // The set is lost: what is left of it goes.
                    let _ = self.release_each();
                    return Err(ExtendFailed {
                        error: Error::LockLost,
                        valid_until_at_most: None,
                    });
                }
                Err(ExtendFailed {
                    error,
                    valid_until_at_most,
                }) => {
                    first_error.get_or_insert(error);
                    if let Some(m) = valid_until_at_most {
                        at_most = Some(at_most.map_or(m, |a| a.min(m)));
                    }
                }
            }
        }
        match (first_error, valid_until) {
            (None, Some(until)) => Ok(until),
            (Some(error), renewed) => Err(ExtendFailed {
                error,
                // A key renewed holds the new TTL now, one not renewed its
                // old one (or the new, if it arrived): the least of them.
                valid_until_at_most: match (at_most, renewed) {
                    (Some(a), Some(r)) => Some(a.min(r)),
                    (a, r) => a.or(r),
                },
            }),
            (None, None) => Err(ExtendFailed {
                error: Error::LockLost,
                valid_until_at_most: None,
            }),
        }
    }

    /// A multi-key lock's release key by key (see [`extend_each`]).
    ///
    /// [`extend_each`]: Self::extend_each
    fn release_each(&self) -> Result<bool> {
        let route = self.manager.route();
        bulks(&self.key)
            .map(|key| route.release(key, &self.token))
            .fold(Ok(true), all_released)
    }

    /// The operation that releases it.
    fn release_op(&self) -> Op<'_> {
        let op = match self.shape {
            Shape::Permit => Shaped::MemberRelease { readers: false },
            Shape::Read => Shaped::MemberRelease { readers: true },
            // A write lock's key holds our token: a lock's release.
            Shape::Write => return Op::Release,
            Shape::Multi { count } => Shaped::MultiRelease {
                keys: &self.key,
                count,
            },
        };
        Op::Shaped(op)
    }

    /// Releases on the nodes unless done already (`None`); marks it done.
    pub(super) fn finish(&mut self) -> Option<Result<bool>> {
        if self.done {
            return None;
        }
        self.done = true;
        let mut released =
            self.manager
                .route()
                .release_op(self.release_op(), self.place(), &self.token);
        if let (Err(e), Shape::Multi { .. }) = (&released, self.shape)
            && needs_one_by_one(e)
        {
            released = self.release_each();
        }
        if let Ok(true) = released {
            // This manager's waiters need no message from the server.
            match self.shape {
                Shape::Multi { .. } => {
                    for key in bulks(&self.key) {
                        self.manager.released_here(key, &self.token);
                    }
                }
                _ => self.manager.released_here(&self.key, &self.token),
            }
        }
        Some(released)
    }

    pub(super) fn release(mut self) -> Result<bool> {
        self.finish().unwrap_or(Ok(false))
    }

    pub(super) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The keys it holds: a multi-key lock's, or the primitive's one.
    pub(super) fn keys(&self) -> impl Iterator<Item = &[u8]> {
        let multi = matches!(self.shape, Shape::Multi { .. });
        let one = (!multi).then_some(&self.key[..]);
        bulks(if multi { &self.key } else { b"" }).chain(one)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        match self.finish() {
            None | Some(Ok(true)) => {}
            Some(Ok(false)) => log::debug!(
                "redlease: {:?} on {} had already expired when dropped",
                self.shape,
                self.place().escape_ascii()
            ),
            Some(Err(e)) => log::warn!(
                "redlease: releasing {:?} on {} when dropped failed (it expires by its ttl): {e}",
                self.shape,
                self.place().escape_ascii()
            ),
        }
    }
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = match self.shape {
            Shape::Multi { .. } => bulks(&self.key)
                .map(|k| k.escape_ascii().to_string())
                .collect(),
            _ => vec![self.key.escape_ascii().to_string()],
        };
        f.debug_struct("Held")
            .field("shape", &self.shape)
            .field("keys", &keys)
            .field("token", &self.token)
            .field("remaining", &self.remaining())
            .field("attempts", &self.attempts)
            .finish()
    }
}

/// Several releases' outcomes as one: `Ok(true)` when each was ours; the
/// first error, else `Ok(false)` when one was not.
pub(crate) fn all_released(all: Result<bool>, one: Result<bool>) -> Result<bool> {
    match (all, one) {
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        (Ok(a), Ok(b)) => Ok(a && b),
    }
}

/// The keys in a buffer of RESP bulk strings (as built by
/// [`super::multi`]: well formed).
pub(crate) fn bulks(mut buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let rest = buf.strip_prefix(b"$")?;
        let line = rest.iter().position(|&b| b == b'\r')?;
        let len: usize = std::str::from_utf8(&rest[..line]).ok()?.parse().ok()?;
        let start = line + 2;
        let key = rest.get(start..start + len)?;
        buf = rest.get(start + len + 2..)?;
        Some(key)
    })
}

/// The methods every guard has, with the same meaning as [`Lock`]'s.
///
/// [`Lock`]: crate::Lock
macro_rules! guard {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[must_use = concat!("the ", $what, " is released as soon as the guard is dropped")]
        pub struct $name(pub(crate) Held);

        impl $name {
            #[doc = concat!("How long the ", $what, " is still valid by this process's monotonic clock; zero once it expired, was found lost, or could not be confirmed renewed in time. Never more than a majority of the nodes could still hold. Does not block.")]
            pub fn remaining(&self) -> Duration {
                self.0.remaining()
            }

            #[doc = concat!("Whether the ", $what, " is lost: `remaining().is_zero()`.")]
            pub fn is_lost(&self) -> bool {
                self.0.remaining().is_zero()
            }

            #[doc = concat!("`Err(Error::LockLost)` when the ", $what, " is lost: for `?` before work that must not run unprotected.")]
            pub fn check(&self) -> Result<()> {
                if self.is_lost() {
                    Err(Error::LockLost)
                } else {
                    Ok(())
                }
            }

            /// How many attempts it took: 1 when it was free at once.
            pub fn attempts(&self) -> u32 {
                self.0.attempts()
            }

            #[doc = concat!("Renews the ", $what, " for `ttl` from now. Blocks for one round trip. The errors and what they leave of [`remaining`](Self::remaining) are [`Lock::extend`](crate::Lock::extend)'s: `LockLost` is final (it expired, or was reclaimed by others); another error leaves it at most what the new `ttl` gives from this call.")]
            pub fn extend(&mut self, ttl: Duration) -> Result<()> {
                self.0.extend(ttl)
            }

            #[doc = concat!("Releases the ", $what, ". `Ok(true)`: it was still ours; `Ok(false)`: it had expired or was reclaimed; an error: too few nodes answered to tell (it then expires by its TTL). Dropping the guard releases it too, best effort.")]
            pub fn release(self) -> Result<bool> {
                self.0.release()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name)).field(&self.0).finish()
            }
        }
    };
}

guard!(
    /// A permit of a [`Semaphore`](crate::Semaphore): one of its `permits`
    /// places, for a TTL. Released when dropped.
    Permit,
    "permit"
);

guard!(
    /// A read lock of an [`RwLock`](crate::RwLock): shared with other
    /// readers, never with a writer. Released when dropped.
    ReadLock,
    "read lock"
);

guard!(
    /// A write lock of an [`RwLock`](crate::RwLock): no reader and no other
    /// writer holds it meanwhile. Released when dropped.
    WriteLock,
    "write lock"
);

impl Permit {
    /// The semaphore's key.
    pub fn key(&self) -> &[u8] {
        &self.0.key
    }
}

impl ReadLock {
    /// The read-write lock's key.
    pub fn key(&self) -> &[u8] {
        &self.0.key
    }
}

impl WriteLock {
    /// The read-write lock's key.
    pub fn key(&self) -> &[u8] {
        &self.0.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn bulks_reads_back_what_was_encoded() {
        let keys: [&[u8]; 4] = [b"a", b"", b"with\r\nnewline", &[b'x'; 300]];
        let mut buf = BytesMut::new();
        for key in keys {
            crate::resp::put_bulk(&mut buf, key);
        }
        assert_eq!(bulks(&buf).collect::<Vec<_>>(), keys);
        assert_eq!(bulks(b"").count(), 0);
    }
}
