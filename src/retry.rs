//! How [`LockManager::lock`](crate::LockManager::lock) waits: a retry policy
//! built on the `retry` crate's delay iterators and its retry loop.
//!
//! Delays are never shorter than 1 ms (no busy spin; the floor is applied
//! after the jitter, so it holds for every draw), and jitter is on by default
//! because the Redlock spec asks for it: clients that collided once should
//! not collide again on the same schedule. Any value, `Duration::MAX`
//! included, is accepted without overflow.

use std::time::Duration;

use retry::delay::{Exponential, Fixed};

/// Shortest delay between two attempts.
const MIN_DELAY: Duration = Duration::from_millis(1);

/// When and how often [`lock`](crate::LockManager::lock) tries again while the
/// lock is held by another owner or a transient failure stands in the way.
///
/// ```
/// use std::time::Duration;
/// use redlease::RetryPolicy;
///
/// // The seed's AcquireLock(key, expiration, retryCount: 3, sleepDuration: 50ms):
/// let seed_like = RetryPolicy::fixed(Duration::from_millis(50)).max_attempts(4);
///
/// // Exponential backoff from 5 ms, capped at 100 ms, giving up after 2 s:
/// let patient = RetryPolicy::exponential(Duration::from_millis(5))
///     .max_delay(Duration::from_millis(100))
///     .max_wait(Duration::from_secs(2));
/// # let _ = (seed_like, patient);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    backoff: Backoff,
    max_delay: Duration,
    jitter: bool,
    max_attempts: u32,
    max_wait: Option<Duration>,
    wake: bool,
    wake_cap: Duration,
}

/// Default [`RetryPolicy::wake_cap`].
const WAKE_CAP: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Backoff {
    Fixed(Duration),
    Exponential { base: Duration, factor: f64 },
}

impl Default for RetryPolicy {
    /// Waits to be woken on release (capped at 50 ms a sleep), for at most 10
    /// seconds in total; failures are retried exponentially from 10 ms,
    /// doubling, capped at 200 ms, with jitter; attempts are not otherwise
    /// limited.
    fn default() -> Self {
        RetryPolicy::exponential(Duration::from_millis(10))
            .max_delay(Duration::from_millis(200))
            .max_wait(Duration::from_secs(10))
    }
}

impl RetryPolicy {
    /// One attempt, no waiting: `lock` behaves like `try_lock`, but reports
    /// contention as [`Error::Held`](crate::Error::Held).
    pub fn no_retry() -> Self {
        RetryPolicy::fixed(MIN_DELAY).max_attempts(1)
    }

    /// The same delay before every retry (at least 1 ms), with jitter.
    /// Attempts are unlimited and there is no wait bound until you set one.
    pub fn fixed(delay: Duration) -> Self {
        RetryPolicy {
            backoff: Backoff::Fixed(delay.max(MIN_DELAY)),
            max_delay: Duration::MAX,
            jitter: true,
            max_attempts: u32::MAX,
            max_wait: None,
            wake: true,
            wake_cap: WAKE_CAP,
        }
    }

    /// A delay that doubles after every retry, starting at `base` (at least
    /// 1 ms), with jitter. Set [`max_delay`](Self::max_delay) to cap it.
    /// Attempts are unlimited and there is no wait bound until you set one.
    pub fn exponential(base: Duration) -> Self {
        RetryPolicy {
            backoff: Backoff::Exponential {
                base: base.max(MIN_DELAY),
                factor: 2.0,
            },
            ..RetryPolicy::fixed(base)
        }
    }

    /// Growth factor for [`exponential`](Self::exponential) delays, at least
    /// 1.0 (values below are raised). Defaults to 2.0. No effect on fixed
    /// delays.
    pub fn factor(mut self, factor: f64) -> Self {
        if let Backoff::Exponential { factor: f, .. } = &mut self.backoff {
            *f = if factor.is_finite() {
                factor.max(1.0)
            } else {
                1.0
            };
        }
        self
    }

    /// Longest single delay. Defaults to no cap (200 ms in the default policy).
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay.max(MIN_DELAY);
        self
    }

    /// Randomises each delay to between half and all of its nominal value
    /// ("equal jitter"). Defaults to on.
    pub fn jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }

    /// Most attempts in all, the first included (so 1 means no retry; 0 is
    /// taken as 1). Defaults to unlimited.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Longest total wait, from the first attempt; the last delay is cut
    /// short so the last attempt starts by then. `Duration::MAX` means no
    /// bound. Defaults to none (10 s in the default policy).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = Some(wait);
        self
    }

    /// How a thread waits while another owner holds the lock. With `true`
    /// (the default) it sleeps until the lock is released (the servers
    /// publish each release; a release by another thread of the same
    /// manager wakes it directly), the holder's TTL runs out (learned in the
    /// same round trip as the attempt that found it held), or at most
    /// [`wake_cap`](Self::wake_cap). With `false` it polls on the backoff's
    /// delays, as other Redlock clients do. Either way, failures (a node
    /// down, a timeout) are retried on the backoff's delays.
    pub fn wake_on_release(mut self, wake: bool) -> Self {
        self.wake = wake;
        self
    }

    /// Longest sleep while waiting to be woken, after which the waiter looks
    /// again anyway: what a lost release message, or a holder that does not
    /// publish (another Redlock client releasing early), can cost. At least
    /// 1 ms. Defaults to 50 ms.
    pub fn wake_cap(mut self, cap: Duration) -> Self {
        self.wake_cap = cap.max(MIN_DELAY);
        self
    }

    /// The wait bound, if any.
    pub fn wait_bound(&self) -> Option<Duration> {
        self.max_wait
    }

    /// Most attempts in all.
    pub(crate) fn attempts_bound(&self) -> u32 {
        self.max_attempts
    }

    /// Whether waiters sleep until woken rather than poll.
    pub(crate) fn wakes(&self) -> bool {
        self.wake
    }

    /// See [`wake_cap`](Self::wake_cap).
    pub(crate) fn cap(&self) -> Duration {
        self.wake_cap
    }

    /// The backoff's delays, one per retry, without end (the caller bounds
    /// attempts and time). Allocation-free.
    pub(crate) fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        let nominal = match self.backoff {
            Backoff::Fixed(delay) => Delays::Fixed(Fixed::from(delay)),
            Backoff::Exponential { base, factor } => {
                Delays::Exponential(Exponential::from_millis_with_factor(millis(base), factor))
            }
        };
        let (max_delay, jitter) = (self.max_delay, self.jitter);
        nominal.map(move |d| {
            let d = d.min(max_delay);
            let d = if jitter {
                // Equal jitter: half fixed, half random. `d / 2` twice
                // cannot overflow, and the sum saturates all the same.
                (d / 2).saturating_add(retry::delay::jitter(d / 2))
            } else {
                d
            };
            d.max(MIN_DELAY)
        })
    }
}

/// The `retry` crate's delay iterators behind one type, so the policy's
/// iterator needs no box.
enum Delays {
    Fixed(Fixed),
    Exponential(Exponential),
}

impl Iterator for Delays {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        match self {
            Delays::Fixed(d) => d.next(),
            Delays::Exponential(d) => d.next(),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(policy: &RetryPolicy, n: usize) -> Vec<Duration> {
        policy.delays().take(n).collect()
    }

    #[test]
    fn exponential_doubles_up_to_the_cap() {
        let p = RetryPolicy::exponential(Duration::from_millis(10))
            .max_delay(Duration::from_millis(50))
            .jitter(false);
        let ms: Vec<u128> = take(&p, 5).iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [10, 20, 40, 50, 50]);
    }

    #[test]
    fn jitter_stays_between_half_and_whole() {
        let p = RetryPolicy::fixed(Duration::from_millis(100));
        let delays = take(&p, 200);
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_millis(50) && *d <= Duration::from_millis(100))
        );
        // Not all the same: jitter really varies.
        assert!(delays.iter().any(|d| *d != delays[0]));
    }

    #[test]
    fn attempts_bound_counts_the_first_attempt() {
        assert_eq!(RetryPolicy::no_retry().attempts_bound(), 1);
        let p = RetryPolicy::fixed(Duration::from_millis(1)).max_attempts(4);
        assert_eq!(p.attempts_bound(), 4);
        assert_eq!(p.clone().max_attempts(0).attempts_bound(), 1);
    }

    #[test]
    fn waking_is_the_default_and_the_cap_has_a_floor() {
        let p = RetryPolicy::default();
        assert!(p.wakes());
        assert_eq!(p.cap(), WAKE_CAP);
        assert!(!p.clone().wake_on_release(false).wakes());
        assert_eq!(p.wake_cap(Duration::ZERO).cap(), MIN_DELAY);
    }

    #[test]
    fn no_delay_below_one_millisecond() {
        let p = RetryPolicy::fixed(Duration::ZERO).jitter(false);
        assert_eq!(take(&p, 3), [MIN_DELAY; 3]);
        let p = RetryPolicy::exponential(Duration::ZERO).jitter(false);
        assert!(take(&p, 3).iter().all(|d| *d >= MIN_DELAY));
    }

    /// Defect 6: the 1 ms floor holds after the jitter, for every draw.
    #[test]
    fn jittered_delays_never_go_below_the_floor() {
        let policies = [
            RetryPolicy::fixed(Duration::ZERO),
            RetryPolicy::fixed(MIN_DELAY),
            RetryPolicy::fixed(Duration::from_micros(1500)),
            RetryPolicy::exponential(MIN_DELAY).max_delay(MIN_DELAY),
            RetryPolicy::default(),
        ];
        for p in policies {
            let delays = take(&p, 10_000);
            let shortest = delays.iter().min().copied();
            assert!(
                delays.iter().all(|d| *d >= MIN_DELAY),
                "{p:?}: shortest {shortest:?}"
            );
        }
    }

    /// Values meant as "no bound" are drawn from without overflow.
    #[test]
    fn extreme_values_do_not_overflow() {
        let policies = [
            RetryPolicy::fixed(Duration::MAX),
            RetryPolicy::exponential(Duration::MAX),
            RetryPolicy::exponential(Duration::from_millis(1)).factor(f64::MAX),
            RetryPolicy::exponential(Duration::from_millis(1)).factor(f64::INFINITY),
            RetryPolicy::fixed(Duration::from_secs(u64::MAX)).max_delay(Duration::MAX),
        ];
        for p in policies {
            for jitter in [false, true] {
                let delays = take(&p.clone().jitter(jitter), 100);
                assert_eq!(delays.len(), 100);
                assert!(delays.iter().all(|d| *d >= MIN_DELAY), "{p:?}");
            }
        }
    }

    #[test]
    fn factor_below_one_is_raised() {
        let p = RetryPolicy::exponential(Duration::from_millis(8))
            .factor(0.1)
            .jitter(false);
        assert_eq!(take(&p, 3), [Duration::from_millis(8); 3]);
    }
}
