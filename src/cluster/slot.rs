//! Which slot a key is in (Redis Cluster's rule), and names that share a
//! key's slot.

/// Hash slots in a Redis Cluster.
pub(crate) const SLOTS: usize = 16_384;

/// The part of a key that picks its slot: the hash tag, the bytes between
/// the first `{` and the first `}` after it, when there are some; else the
/// whole key (Redis's rule).
pub(crate) fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let len = key[open + 1..].iter().position(|&b| b == b'}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

/// The key's hash slot: CRC16 (XMODEM) of its hash tag or of itself, the
/// same crate redis-rs uses.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let hashed = hash_tag(key).unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) & (SLOTS as u16 - 1)
}

/// Whether a lock's companion keys (fence counter, fair queue), named
/// `<key><suffix>` or `{<key>}<suffix>`, can share its slot: always,
/// except for a key with a `}` and no hash tag (no tag could hold it).
pub(crate) fn companions_fit(key: &[u8]) -> bool {
    hash_tag(key).is_some() || !key.contains(&b'}')
}

/// A hash tag whose slot is `slot` (for a probe key on the master that
/// serves it): the first decimal number that hashes there.
pub(crate) fn tag_for(wanted: u16) -> Vec<u8> {
    let mut buf = itoa::Buffer::new();
    let n = (0u32..)
        .find(|&n| slot(buf.format(n).as_bytes()) == wanted)
        .expect("every slot has a decimal tag");
    buf.format(n).as_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
        assert_eq!(slot(b""), 0);
    }

    #[test]
    fn companions_share_the_slot() {
        for key in [
            &b"orders:42"[..],
            b"{user}:x",
            b"a{b",
            b"{",
            b"x{y}z}",
            b"{{",
        ] {
            assert!(companions_fit(key), "{key:?}");
            let fence = crate::script::companion(key, b":redlease:fence");
            assert_eq!(
                slot(&fence),
                slot(key),
                "{:?}",
                fence.escape_ascii().to_string()
            );
        }
        assert!(!companions_fit(b"a}b"));
        assert!(!companions_fit(b"a{}b}"));
        // `{}` is no tag (empty): the whole key is hashed, and it has a `}`.
        assert!(!companions_fit(b"a{}b{c}"));
    }

    #[test]
    fn tags_for_every_slot() {
        for s in [0u16, 1, 5460, 12182, 16383] {
            assert_eq!(slot(&tag_for(s)), s);
        }
    }
}
