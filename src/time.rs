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
    }
}
