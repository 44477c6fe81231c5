//! The lock guard: how long it stays valid, renewing it, releasing it.

use std::fmt;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use crate::error::{Error, Result};
use crate::keeper::{Began, LeaseRef};
use crate::manager::LockManager;
use crate::quorum::{ExtendFailed, settle_extend};
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
/// it, and [`extend`](Lock::extend) the lock well before it reaches zero —
/// or let the manager do that: [`keep_alive`](Lock::keep_alive).
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct Lock {
    manager: LockManager,
    key: SmallVec<[u8; INLINE_KEY]>,
    token: Token,
    /// The TTL it was taken (or last extended) for, in whole milliseconds.
    ttl: Duration,
    /// End of validity; a kept-alive lock's lives in its lease instead.
    valid_until: Instant,
    /// Set while the manager's keeper keeps the lock alive.
    lease: Option<LeaseRef>,
    /// Fencing mode: the fence, and whether it is safe to use yet (over a
    /// quorum it must first be written back to a majority).
    fence: Option<(u64, bool)>,
    /// Attempts it took to acquire.
    attempts: u32,
    /// Set once the lock is known not to be ours any more, or was released:
    /// `Drop` then has nothing to do.
    done: bool,
    /// When it was granted: for the hold-time metric.
    #[cfg(feature = "metrics")]
    granted_at: Instant,
}

impl Lock {
    #[inline]
    pub(crate) fn new(
        manager: LockManager,
        key: &[u8],
        token: Token,
        ttl: Duration,
        valid_until: Instant,
        attempts: u32,
        fence: Option<u64>,
    ) -> Lock {
        // One voter (one node, or a cluster's slot master): its fence is
        // final as given.
        let one_node = manager.quorum() == 1;
        Lock {
            manager,
            key: SmallVec::from_slice(key),
            token,
            ttl,
            valid_until,
            lease: None,
            fence: fence.map(|f| (f, one_node)),
            attempts,
            done: false,
            #[cfg(feature = "metrics")]
            granted_at: Instant::now(),
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
        match &self.lease {
            Some(lease) => lease.remaining(),
            None => self.valid_until.saturating_duration_since(Instant::now()),
        }
    }

    /// Whether the lock is lost: it expired, was found taken or gone, or
    /// (kept alive) its keeper reported it lost. The same as
    /// `remaining().is_zero()`. Does not block.
    pub fn is_lost(&self) -> bool {
        self.remaining().is_zero()
    }

    /// `Err(Error::LockLost)` when the lock [is lost](Lock::is_lost): for
    /// `?` before work that must not run unprotected. Does not block.
    pub fn check(&self) -> Result<()> {
        if self.is_lost() {
            Err(Error::LockLost)
        } else {
            Ok(())
        }
    }

    /// Blocks until the lock is lost or `timeout` passes; returns whether
    /// it is lost. With the guard shared (`&Lock`) between a worker and a
    /// watcher thread, the watcher can wait for "done or lost" and stop the
    /// work at once. A lock that is not kept alive is lost when its
    /// validity runs out.
    pub fn wait_lost(&self, timeout: Duration) -> bool {
        match &self.lease {
            Some(lease) if !self.done => lease.wait_lost(timeout),
            _ => {
                let left = self.remaining();
                std::thread::sleep(left.min(timeout));
                self.is_lost()
            }
        }
    }

    /// The lock's fencing token: a number that strictly increases from one
    /// holder of this key to the next, for the protected resource to check
    /// (it refuses writes carrying a fence lower than one it has seen), so
    /// that a holder paused past its validity (GC, swap, SIGSTOP) cannot
    /// do harm when it wakes up. Needs
    /// [`fencing`](crate::LockManagerBuilder::fencing) on the manager.
    ///
    /// With one node it comes with the acquisition and costs nothing. Over
    /// a quorum the first call writes it back to a majority of the nodes
    /// (one round trip; see the README for why the highest counter alone
    /// would not be monotonic), and later calls cost nothing.
    ///
    /// Errors: [`Error::InvalidArgument`] when fencing is off;
    /// [`Error::LockLost`] when the lock is no longer ours on a majority,
    /// or its validity ran out before the write-back was confirmed; other
    /// errors when too few nodes answered (the fence is then not safe to
    /// use, and calling again may confirm it).
    pub fn fence(&mut self) -> Result<u64> {
        let Some((fence, confirmed)) = self.fence else {
            return Err(Error::invalid(
                "no fence: build the manager with .fencing(true)",
            ));
        };
        if confirmed {
            return Ok(fence);
        }
        if self.is_lost() {
            self.give_up();
            return Err(Error::LockLost);
        }
        let confirmed = self.manager.confirm_fence(&self.key, &self.token, fence);
        // Usable only if the lock was still valid when the write-back was
        // confirmed (a kept-alive lock's validity may have moved meanwhile).
        let valid_until = match &self.lease {
            Some(lease) => lease.valid_until(),
            None => self.valid_until,
        };
        match confirmed {
            Ok(end) if end < valid_until && !self.is_lost() => {
                self.fence = Some((fence, true));
                Ok(fence)
            }
            Ok(_) | Err(Error::LockLost) => {
                self.give_up();
                Err(Error::LockLost)
            }
            Err(e) => Err(e),
        }
    }

    /// The fence as the acquisition found it, before any write-back: for
    /// the test that shows why the write-back is needed.
    #[cfg(feature = "internals")]
    pub(crate) fn unconfirmed_fence(&self) -> Option<u64> {
        self.fence.map(|(fence, _)| fence)
    }

    /// Keeps the lock alive in the background until it is released or
    /// dropped: the manager's keeper thread (one per manager, whatever the
    /// number of locks) renews it for its TTL about every third of the TTL,
    /// so the TTL is the time the others wait after this process crashes.
    /// Renewal stops, and the lock is reported lost, when a majority no
    /// longer holds it (deleted or taken by someone else), when no quorum
    /// could renew it before its validity ran out, or once the manager's
    /// [`max_hold`](crate::LockManagerBuilder::max_hold) has passed since
    /// this call. Loss is seen within a third of the TTL plus a round trip:
    /// watch for it with [`is_lost`](Lock::is_lost), [`check`](Lock::check),
    /// [`wait_lost`](Lock::wait_lost) or [`on_lost`](Lock::on_lost).
    ///
    /// The TTL should be well above three round trips (and the I/O
    /// timeout) to the nodes. Renewals never re-create a missing key, and
    /// none starts once release has begun (one already under way can only
    /// renew a key that still holds our token, which the release deletes).
    /// Loss is final: a lock whose validity ran out before a renewal was
    /// confirmed stays lost.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # let locks = redlease::LockManager::builder().node("redis://127.0.0.1:6379").build()?;
    /// let lock = locks.lock("jobs:7", Duration::from_secs(3))?.keep_alive()?;
    /// while !lock.is_lost() {
    ///     // ... a step of a long job
    ///     # break;
    /// }
    /// lock.check()?; // before committing its result
    /// lock.release()?;
    /// # Ok::<(), redlease::Error>(())
    /// ```
    ///
    /// Fails with [`Error::LockLost`] if the lock is already lost (the guard
    /// is then released), and with [`Error::Thread`] if the keeper thread
    /// could not be started. Calling it on a kept-alive lock does nothing.
    pub fn keep_alive(self) -> Result<Lock> {
        let max_hold = self.manager.max_hold();
        self.keep(max_hold)
    }

    /// [`keep_alive`](Lock::keep_alive), renewed for at most `max_hold` from
    /// now (instead of the manager's default).
    pub fn keep_alive_for(self, max_hold: Duration) -> Result<Lock> {
        self.keep(Some(max_hold))
    }

    /// Whether the manager's keeper keeps this lock alive.
    pub fn is_kept_alive(&self) -> bool {
        self.lease.is_some()
    }

    /// Runs `f` once when the keeper reports the lock lost, on the keeper's
    /// thread (keep it short: other locks' renewals wait for it), or at once
    /// on this thread if it is lost already. Replaces an earlier callback;
    /// never runs after release begins. Only kept-alive locks are watched:
    /// on another lock it returns `Err(Error::InvalidArgument)`.
    pub fn on_lost(&self, f: impl FnOnce() + Send + 'static) -> Result<()> {
        match &self.lease {
            Some(lease) => {
                lease.on_lost(Box::new(f));
                Ok(())
            }
            None => Err(Error::invalid(
                "on_lost needs a kept-alive lock: call keep_alive() first",
            )),
        }
    }

    fn keep(mut self, max_hold: Option<Duration>) -> Result<Lock> {
        if self.lease.is_some() {
            return Ok(self);
        }
        if self.is_lost() {
            self.give_up();
            return Err(Error::LockLost);
        }
        let lease =
            self.manager
                .keep(&self.key, &self.token, self.ttl, self.valid_until, max_hold)?;
        self.lease = Some(lease);
        Ok(self)
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
        let result = self.extend_inner(ttl);
        self.manager.observe().extended(result.as_ref().map(|_| ()));
        result
    }

    fn extend_inner(&mut self, ttl: Duration) -> Result<()> {
        let ttl = self.manager.check_ttl(ttl)?;
        if self.done || self.remaining().is_zero() {
            self.give_up();
            return Err(Error::LockLost);
        }
        if let Some(lease) = &self.lease {
            // The keeper must not renew in between: the lease's own lock is
            // held across the round trip, and the validity it leaves is the
            // lease's.
            let mut outcome = Err(Error::LockLost);
            let (manager, key, token) = (&self.manager, &self.key, &self.token);
            let kept = lease.renew_with(ttl, || match manager.extend(key, token, ttl) {
                Ok(valid_until) => {
                    outcome = Ok(());
                    (Some(valid_until), true)
                }
                Err(ExtendFailed {
                    error,
                    valid_until_at_most,
                }) => {
                    let lost = matches!(error, Error::LockLost | Error::ValidityExpired { .. });
                    outcome = Err(error);
                    let until = valid_until_at_most.map_or(lease.valid_until(), |at_most| {
                        at_most.min(lease.valid_until())
                    });
                    ((!lost).then_some(until), false)
                }
            });
            if kept {
                self.ttl = ttl;
                if outcome.is_ok() {
                    self.manager.requeue_lease(lease);
                }
            }
            return outcome;
        }
        let extended = self.manager.extend(&self.key, &self.token, ttl);
        let settled = settle_extend(extended, &mut self.valid_until, &mut self.done);
        if settled.is_ok() {
            self.ttl = ttl;
        }
        settled
    }

    /// Releases the lock on every node. Blocks for one round trip (bounded
    /// by the I/O timeout).
    ///
    /// `Ok(true)`: it was still ours and is now gone. `Ok(false)`: it had
    /// expired or been taken by another owner, whose lock is left alone. An
    /// error means too few nodes answered to tell; the lock then expires by
    /// its TTL.
    #[inline]
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
    #[inline]
    fn finish(&mut self) -> Option<Result<bool>> {
        if self.done {
            return None;
        }
        self.done = true;
        let released = self.release_now();
        // Held until now only if it was still ours: a lock lost or expired
        // long before it was dropped was not held all that time.
        #[cfg(feature = "metrics")]
        if let Ok(true) = released {
            self.manager.observe().held(self.granted_at.elapsed());
        }
        Some(released)
    }

    /// Releases on the nodes; `Ok(true)` when it was still ours.
    fn release_now(&mut self) -> Result<bool> {
        let Some(lease) = self.lease.take() else {
            return self.manager.release(&self.key, &self.token);
        };
        // Releasing before anything is sent: the keeper renews no more.
        let began = lease.begin_release();
        let released = self.manager.release(&self.key, &self.token);
        self.manager.finish_lease(lease);
        match began {
            Began::Held => released,
            // Reported lost: whatever was left is cleaned up, and the work
            // was not protected.
            Began::Lost => released.map(|_| false),
        }
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
            .field("kept_alive", &self.lease.is_some())
            .finish()
    }
}
