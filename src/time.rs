//! Deadlines that cannot overflow. `Instant + Duration` panics past the
//! clock's range, and callers may pass `Duration::MAX` to mean "no bound";
//! a panic inside `Drop` while unwinding would abort the process. Every
//! deadline in the crate is computed here.

use std::time::{Duration, Instant};

/// Farther than any wait that means anything (about 100 years), and well
/// inside `Instant`'s range on every platform: a duration capped at this can
/// be added to `Instant::now()` without a check (the hot path's reply
/// deadline does, with the I/O timeout capped when the quorum is built).
pub(crate) const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `from + after`, saturating at about a century from `from`.
pub(crate) fn deadline(from: Instant, after: Duration) -> Instant {
    // `checked_add` of a century cannot fail where `Instant` counts
    // nanoseconds in 64 bits; `from` is only the fallback that cannot panic.
    from.checked_add(after.min(FAR)).unwrap_or(from)
}

/// `now + after`, saturating; see [`deadline`].
pub(crate) fn deadline_in(after: Duration) -> Instant {
    deadline(Instant::now(), after)
}

/// A reply deadline kept as its parts: when it was set from, and how long
/// after. Adding them costs a few instructions per operation that most
/// operations never need (their first read is told the time left, see
/// `Conn::send_with_time_left`), so [`at`](Self::at) adds them only when
/// asked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    from: Instant,
    after: Duration,
}

impl Deadline {
    /// `after` from `from`; `after` must be capped at [`FAR`] (the quorum
    /// caps its I/O timeout), so that [`at`](Self::at) cannot overflow.
    #[inline(always)]
    pub(crate) fn new(from: Instant, after: Duration) -> Deadline {
        debug_assert!(after <= FAR);
        Deadline { from, after }
    }

    /// The deadline.
    #[inline]
    pub(crate) fn at(self) -> Instant {
        self.from + self.after
    }
}

impl From<Instant> for Deadline {
    fn from(at: Instant) -> Deadline {
        Deadline {
            from: at,
            after: Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(
            deadline(now, Duration::from_millis(5)),
            now + Duration::from_millis(5)
        );
        assert!(deadline(now, Duration::MAX) > now + Duration::from_secs(50 * 365 * 24 * 3600));
        assert!(deadline_in(Duration::MAX) > now);
        let later = Deadline::new(now, Duration::from_millis(5));
        assert_eq!(later.at(), now + Duration::from_millis(5));
        assert_eq!(Deadline::from(now).at(), now);
        assert_eq!(Deadline::new(now, FAR).at(), deadline(now, Duration::MAX));
    }
}
