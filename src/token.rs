//! Lock tokens: 128 random bits from the operating system's CSPRNG, written as
//! 32 lowercase hex digits, on the stack.
//!
//! A token is the only thing that tells our lock from someone else's, so it is
//! fresh for every acquisition and never derived from time, pid or a counter.
//! We call `getrandom` each time (about 0.3 µs here) rather than keep a
//! user-space generator: a generator's state is copied by `fork`, and two
//! processes handing out the same tokens could release each other's locks.

use std::fmt;

/// Random bytes per token: 128 bits, as the Redlock spec asks.
const RANDOM_BYTES: usize = 16;

/// Length of a token on the wire.
pub(crate) const TOKEN_LEN: usize = RANDOM_BYTES * 2;

/// The two hex digits of every byte value, built at compile time.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [HEX[i >> 4], HEX[i & 0x0f]];
        i += 1;
    }
    table
};

/// Fills `raw` from the kernel's CSPRNG. On Linux the `getrandom` system
/// call is made by rustix, straight: glibc's wrapper is a cancellation
/// point in a threaded process, which doubled its cost. Anything short of
/// a whole fill (a signal, a kernel or sandbox without the call) goes to the
/// getrandom crate, which handles every case (and every other system); a
/// call the kernel refuses is not tried again.
#[inline(always)]
fn fill(raw: &mut [u8; RANDOM_BYTES]) -> Result<(), getrandom::Error> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        /// Set when the kernel or a seccomp filter refuses the call. Only
        /// whether the call exists is kept: no random state, so nothing a
        /// `fork` could share.
        static REFUSED: AtomicBool = AtomicBool::new(false);
        if !REFUSED.load(Ordering::Relaxed) {
            match rustix::rand::getrandom(&mut raw[..], rustix::rand::GetRandomFlags::empty()) {
                Ok(got) if got == RANDOM_BYTES => return Ok(()),
                Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
                    REFUSED.store(true, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }
    getrandom::fill(raw)
}

/// A lock token as sent to Redis: ASCII hex, so it reads well in `redis-cli`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token([u8; TOKEN_LEN]);

impl Token {
    /// A fresh token from the OS CSPRNG.
    #[inline(always)]
    pub(crate) fn random() -> Result<Token, getrandom::Error> {
        let mut raw = [0u8; RANDOM_BYTES];
        fill(&mut raw)?;
        Ok(Token::from_random(raw))
    }

    #[inline]
    fn from_random(raw: [u8; RANDOM_BYTES]) -> Token {
        let mut hex = [0u8; TOKEN_LEN];
        for (pair, byte) in hex.chunks_exact_mut(2).zip(raw) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
        }
        Token(hex)
    }

    /// The token's bytes as sent to Redis.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The same, at their constant length.
    pub(crate) fn as_array(&self) -> &[u8; TOKEN_LEN] {
        &self.0
    }
}

/// Shows only the first 4 hex digits: enough to correlate log lines, too few
/// to forge a release.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = std::str::from_utf8(&self.0[..4]).unwrap_or("?");
        write!(f, "Token({prefix}…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn hex_encoding_is_lowercase_and_complete() {
        let token = Token::from_random([
            0x00, 0x01, 0xab, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x9c,
        ]);
        assert_eq!(token.as_bytes(), b"0001abff00000000000000000000009c");
    }

    /// 100,000 tokens drawn in a row are all distinct and all well formed.
    #[test]
    fn tokens_are_distinct() {
        let mut seen = HashSet::new();
        for _ in 0..100_000 {
            let token = Token::random().expect("getrandom");
            assert!(token.as_bytes().iter().all(|b| b.is_ascii_hexdigit()));
            assert!(seen.insert(token.0), "duplicate token");
        }
    }

    #[test]
    fn debug_shows_only_a_prefix() {
        let token = Token::random().expect("getrandom");
        let shown = format!("{token:?}");
        let full = std::str::from_utf8(token.as_bytes()).expect("hex");
        assert!(!shown.contains(full));
        assert!(shown.contains(&full[..4]));
    }
}
