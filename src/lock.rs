//! The lock guard: how long it stays valid, renewing it, releasing it.

use std::fmt;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::manager::LockManager;
use crate::quorum::ExtendFailed;
use crate::token::Token;

/// Keys up to this many bytes live inside the guard; longer ones cost one
/// allocation per lock.
pub(crate) const INLINE_KEY: usize = 64;

/// A held lock. Released when dropped (best effort), or explicitly with
/// [`release`](Lock::release), which reports whether it was still ours.
///
/// Validity is tracked by the monotonic clock: [`remaining`](Lock::remaining)
/// is the TTL minus the time the acquisition took and the clock-drift
/// allowance, counting down. Work that must not run unprotected should check
/// it, and [`extend`](Lock::extend) the lock well before it reaches zero.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct Lock {
    manager: LockManager,
    key: SmallVec<[u8; INLINE_KEY]>,
    token: Token,
    valid_until: Instant,
    /// Attempts it took to acquire.
    attempts: u32,
    /// Set once the lock is known not to be ours any more, or was released:
    /// `Drop` then has nothing to do.
    done: bool,
}

impl Lock {
    pub(crate) fn new(
        manager: LockManager,
        key: &[u8],
        token: Token,
        valid_until: Instant,
        attempts: u32,
    ) -> Lock {
        Lock {
            manager,
            key: SmallVec::from_slice(key),
            token,
            valid_until,
            attempts,
            done: false,
        }
    }

    /// The locked key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// How many attempts it took to acquire: 1 for `try_lock`, and for a
    /// `lock` that got it at once; more when it had to wait.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How long the lock is still valid by this process's monotonic clock;
    /// zero once it has expired, was found lost, or could not be confirmed
    /// renewed in time. Does not block.
    ///
    /// Invariant: it never exceeds the TTL that a majority of the nodes
    /// could still hold for this lock (see [`extend`](Lock::extend)).
    pub fn remaining(&self) -> Duration {
        if self.done {
            return Duration::ZERO;
        }
        self.valid_until.saturating_duration_since(Instant::now())
    }

    /// Renews the lock for `ttl` from now, on a quorum. Blocks for one round
    /// trip (bounded by the I/O timeout).
    ///
    /// - `Err(Error::LockLost)`: the lock expired or another owner has it;
    ///   it cannot be won back, [`remaining`](Lock::remaining) is now zero,
    ///   and work protected by it must stop.
    /// - `Err(Error::ValidityExpired)`: a quorum renewed it, but too late to
    ///   count; `remaining()` is now zero (the nodes hold the key only for
    ///   the short rest of `ttl`). Extending again reports it lost.
    /// - Any other error (too few nodes answered, say): the renewal may
    ///   still have reached some nodes, so `remaining()` becomes the smaller
    ///   of what it was and what the new `ttl` gives from this call: a
    ///   shorter `ttl` shortens it, a longer one leaves it as it was.
    ///   Retrying while `remaining()` is above zero is reasonable.
    pub fn extend(&mut self, ttl: Duration) -> Result<()> {
        let ttl = self.manager.check_ttl(ttl)?;
        if self.done || self.remaining().is_zero() {
            self.give_up();
            return Err(Error::LockLost);
        }
        match self.manager.extend(&self.key, &self.token, ttl) {
            Ok(valid_until) => {
                self.valid_until = valid_until;
                Ok(())
            }
            Err(ExtendFailed {
                error: Error::LockLost,
                ..
            }) => {
                self.done = true;
                Err(Error::LockLost)
            }
            Err(ExtendFailed {
                error,
                valid_until_at_most,
            }) => {
                if let Some(at_most) = valid_until_at_most {
                    self.valid_until = self.valid_until.min(at_most);
                }
                Err(error)
            }
        }
    }

    /// Releases the lock on every node. Blocks for one round trip (bounded
    /// by the I/O timeout).
    ///
    /// `Ok(true)`: it was still ours and is now gone. `Ok(false)`: it had
    /// expired or been taken by another owner, whose lock is left alone. An
    /// error means too few nodes answered to tell; the lock then expires by
    /// its TTL.
    pub fn release(mut self) -> Result<bool> {
        match self.finish() {
            Some(released) => released,
            None => Ok(false),
        }
    }

    /// Marks the lock lost and cleans up whatever may be left of it.
    fn give_up(&mut self) {
        let _ = self.finish();
    }

    /// The one way out: releases on every node unless that was done
    /// already (then `None`), and marks the guard done.
    fn finish(&mut self) -> Option<Result<bool>> {
        if self.done {
            return None;
        }
        self.done = true;
        Some(self.manager.release(&self.key, &self.token))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        match self.finish() {
            None | Some(Ok(true)) => {}
            Some(Ok(false)) => log::debug!(
                "redlease: lock on {} had already expired when dropped",
                self.key.escape_ascii()
            ),
            Some(Err(e)) => log::warn!(
                "redlease: releasing lock on {} when dropped failed (it expires by its ttl): {e}",
                self.key.escape_ascii()
            ),
        }
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("key", &self.key.escape_ascii().to_string())
            .field("token", &self.token)
            .field("remaining", &self.remaining())
            .field("attempts", &self.attempts)
            .finish()
    }
}
