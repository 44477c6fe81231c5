//! The three lock operations as Redis commands: acquire is `SET NX PX`,
//! release and extend are Lua scripts called by SHA (`EVALSHA`), with `EVAL`
//! as the fallback when a server answers `NOSCRIPT` (restarted without
//! persistence, `SCRIPT FLUSH`, failover). `EVAL` also puts the script back in
//! the server's cache, so the next `EVALSHA` works again.
//!
//! Script text is constant: keys and tokens travel as `KEYS`/`ARGV`, never
//! spliced into Lua.

use std::sync::LazyLock;

use bytes::BytesMut;

use crate::error::Failure;
use crate::resp::{self, Reply};
use crate::token::Token;

/// Compare-and-delete: deletes the key only if it still holds our token.
pub(crate) const RELEASE: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end"#;

/// Compare-and-pexpire: renews the key only if it still holds our token.
pub(crate) const EXTEND: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end"#;

/// Length of a hex SHA1.
const SHA_LEN: usize = 40;

/// The SHA1 of each script, computed once per process by the `redis` crate,
/// and the constant front of each script call, encoded once.
pub(crate) struct Shas {
    pub(crate) release: [u8; SHA_LEN],
    pub(crate) extend: [u8; SHA_LEN],
    /// `EVALSHA <sha> 1` and `EVAL <source> 1`, as RESP, for release
    /// (5 arguments in all) and extend (6).
    release_by_sha: Vec<u8>,
    release_by_source: Vec<u8>,
    extend_by_sha: Vec<u8>,
    extend_by_source: Vec<u8>,
}

pub(crate) static SHAS: LazyLock<Shas> = LazyLock::new(|| {
    let (release, extend) = (sha_of(RELEASE), sha_of(EXTEND));
    let head = |argc: usize, verb: &[u8], script: &[u8]| {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(format!("*{argc}\r\n").as_bytes());
        resp::put_bulk(&mut buf, verb);
        resp::put_bulk(&mut buf, script);
        resp::put_bulk(&mut buf, b"1");
        buf.to_vec()
    };
    Shas {
        release_by_sha: head(5, b"EVALSHA", &release),
        release_by_source: head(5, b"EVAL", RELEASE.as_bytes()),
        extend_by_sha: head(6, b"EVALSHA", &extend),
        extend_by_source: head(6, b"EVAL", EXTEND.as_bytes()),
        release,
        extend,
    }
});

fn sha_of(src: &str) -> [u8; SHA_LEN] {
    let mut sha = [0u8; SHA_LEN];
    sha.copy_from_slice(redis::Script::new(src).get_hash().as_bytes());
    sha
}

/// `SET` with its 6 arguments' count, as RESP.
const SET_HEAD: &[u8] = b"*6\r\n$3\r\nSET\r\n";
/// `NX PX`, as RESP.
const NX_PX: &[u8] = b"$2\r\nNX\r\n$2\r\nPX\r\n";

// The tail below frames the token as `$32`.
const _: () = assert!(crate::token::TOKEN_LEN == 32);

/// A small stack buffer for assembling the fixed-size parts of a command.
/// 96 bytes hold the longest tail: CRLF, a 32-byte token, `NX PX` and a
/// 20-digit TTL with their framing (85 bytes).
struct Stack {
    bytes: [u8; 96],
    len: usize,
}

impl Stack {
    fn new() -> Stack {
        Stack {
            bytes: [0; 96],
            len: 0,
        }
    }

    fn put(&mut self, part: &[u8]) {
        self.bytes[self.len..self.len + part.len()].copy_from_slice(part);
        self.len += part.len();
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// One lock operation, with what it needs besides the key and token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// `SET key token NX PX ttl`
    Acquire { ttl_ms: u64 },
    /// The release script.
    Release,
    /// The extend script with a new TTL.
    Extend { ttl_ms: u64 },
}

/// How a script travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// `EVALSHA`: the normal case, the script is in the server's cache.
    Sha,
    /// `EVAL` with the source: after `NOSCRIPT`, and where a reply cannot be
    /// waited for (a clean-up that must work even on a flushed cache).
    Source,
}

/// A node's definite answer to an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vote {
    /// Granted, released or extended.
    Yes,
    /// Not: the key is held by another token, or is gone.
    No,
}

impl Op {
    /// Appends the command to `buf`, scripts in the given form (`SET` has
    /// only one).
    ///
    /// This is the hot path's encoder: the constant front of each command is
    /// encoded once (see [`Shas`]), so a call copies the key, the token and
    /// the TTL and formats two numbers. The same bytes as `resp::encode` of
    /// the whole argument list (checked by the tests and the fuzz target).
    pub(crate) fn encode(self, buf: &mut BytesMut, key: &[u8], token: &Token, form: Form) {
        let shas = &*SHAS;
        let head: &[u8] = match (self, form) {
            (Op::Acquire { .. }, _) => SET_HEAD,
            (Op::Release, Form::Sha) => &shas.release_by_sha,
            (Op::Release, Form::Source) => &shas.release_by_source,
            (Op::Extend { .. }, Form::Sha) => &shas.extend_by_sha,
            (Op::Extend { .. }, Form::Source) => &shas.extend_by_source,
        };
        // Four copies in all: the constant head, the key's length line, the
        // key, and everything after the key assembled on the stack.
        let mut key_len = Stack::new();
        key_len.put(b"$");
        key_len.put(itoa::Buffer::new().format(key.len()).as_bytes());
        key_len.put(b"\r\n");
        let mut tail = Stack::new();
        tail.put(b"\r\n$32\r\n");
        tail.put(token.as_bytes());
        tail.put(b"\r\n");
        if let Op::Acquire { .. } = self {
            tail.put(NX_PX);
        }
        if let Op::Acquire { ttl_ms } | Op::Extend { ttl_ms } = self {
            let mut num = itoa::Buffer::new();
            let ttl = num.format(ttl_ms).as_bytes();
            tail.put(b"$");
            tail.put(itoa::Buffer::new().format(ttl.len()).as_bytes());
            tail.put(b"\r\n");
            tail.put(ttl);
            tail.put(b"\r\n");
        }
        buf.reserve(head.len() + key_len.len + key.len() + tail.len);
        buf.extend_from_slice(head);
        buf.extend_from_slice(key_len.bytes());
        buf.extend_from_slice(key);
        buf.extend_from_slice(tail.bytes());
    }

    /// Reads a node's reply as a vote, or as the reason it is not one.
    pub(crate) fn interpret(self, reply: Reply<'_>) -> Result<Vote, Failure> {
        match (self, reply) {
            (_, Reply::Error(text)) => Err(Failure::from_server(text)),
            (Op::Acquire { .. }, Reply::Simple(b"OK")) => Ok(Vote::Yes),
            (Op::Acquire { .. }, Reply::Nil) => Ok(Vote::No),
            (Op::Acquire { .. }, _) => Err(Failure::Protocol("unexpected reply to SET NX PX")),
            (_, Reply::Integer(1)) => Ok(Vote::Yes),
            (_, Reply::Integer(0)) => Ok(Vote::No),
            (_, _) => Err(Failure::Protocol("unexpected reply to the lock script")),
        }
    }
}

/// Appends `SCRIPT LOAD` for both scripts (sent when a connection is made).
pub(crate) fn encode_load(buf: &mut BytesMut) {
    resp::encode(buf, &[b"SCRIPT", b"LOAD", RELEASE.as_bytes()]);
    resp::encode(buf, &[b"SCRIPT", b"LOAD", EXTEND.as_bytes()]);
}

/// Checks a `SCRIPT LOAD` reply: the server must report the SHA we will use.
pub(crate) fn check_loaded(reply: Reply<'_>, expected: &[u8; SHA_LEN]) -> Result<(), Failure> {
    match reply {
        Reply::Bulk(sha) if sha.eq_ignore_ascii_case(expected) => Ok(()),
        Reply::Error(text) => Err(Failure::from_server(text)),
        _ => Err(Failure::Protocol("unexpected reply to SCRIPT LOAD")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ServerError;

    /// The SHAs are those Redis computes (checked against redis-server 7.0
    /// by the integration tests too; here against redis-rs's own hashing).
    #[test]
    fn shas_are_lowercase_hex_sha1() {
        for sha in [SHAS.release, SHAS.extend] {
            assert!(
                sha.iter()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            );
        }
        assert_ne!(SHAS.release, SHAS.extend);
    }

    /// SET NX PX is sent with the token and the TTL in milliseconds.
    #[test]
    fn acquire_encoding() {
        let token = Token::random().expect("rng");
        let mut buf = BytesMut::new();
        Op::Acquire { ttl_ms: 1500 }.encode(&mut buf, b"k", &token, Form::Sha);
        let mut expected = b"*6\r\n$3\r\nSET\r\n$1\r\nk\r\n$32\r\n".to_vec();
        expected.extend_from_slice(token.as_bytes());
        expected.extend_from_slice(b"\r\n$2\r\nNX\r\n$2\r\nPX\r\n$4\r\n1500\r\n");
        assert_eq!(&buf[..], &expected[..]);
    }

    /// Release goes by SHA normally and by source after NOSCRIPT.
    #[test]
    fn release_encoding_by_sha_and_by_source() {
        let token = Token::random().expect("rng");
        let mut buf = BytesMut::new();
        Op::Release.encode(&mut buf, b"k", &token, Form::Sha);
        assert!(buf.starts_with(b"*5\r\n$7\r\nEVALSHA\r\n$40\r\n"));
        assert!(buf.windows(40).any(|w| w == SHAS.release));
        buf.clear();
        Op::Extend { ttl_ms: 7 }.encode(&mut buf, b"k", &token, Form::Source);
        assert!(buf.starts_with(b"*6\r\n$4\r\nEVAL\r\n"));
        assert!(buf.ends_with(b"$1\r\n7\r\n"));
    }

    /// The hot-path encoder writes exactly what the generic one would.
    #[test]
    fn fast_encoding_matches_the_generic_encoder() {
        let token = Token::random().expect("rng");
        let keys: [&[u8]; 4] = [b"k", b"", &[b'x'; 300], b"a\r\n\0\xff"];
        for key in keys {
            for form in [Form::Sha, Form::Source] {
                let full = form == Form::Source;
                for ttl_ms in [1, 10_000, u64::MAX] {
                    let t = token.as_bytes();
                    let n = itoa::Buffer::new().format(ttl_ms).to_owned();
                    let (rs, es): (&[u8], &[u8]) = if full {
                        (RELEASE.as_bytes(), EXTEND.as_bytes())
                    } else {
                        (&SHAS.release, &SHAS.extend)
                    };
                    let verb: &[u8] = if full { b"EVAL" } else { b"EVALSHA" };
                    let cases: [(Op, Vec<&[u8]>); 3] = [
                        (
                            Op::Acquire { ttl_ms },
                            vec![b"SET", key, t, b"NX", b"PX", n.as_bytes()],
                        ),
                        (Op::Release, vec![verb, rs, b"1", key, t]),
                        (
                            Op::Extend { ttl_ms },
                            vec![verb, es, b"1", key, t, n.as_bytes()],
                        ),
                    ];
                    for (op, args) in cases {
                        let (mut fast, mut generic) = (BytesMut::new(), BytesMut::new());
                        op.encode(&mut fast, key, &token, form);
                        resp::encode(&mut generic, &args);
                        assert_eq!(fast, generic, "{op:?}, {form:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn votes_and_failures() {
        let acquire = Op::Acquire { ttl_ms: 1 };
        assert_eq!(
            acquire.interpret(Reply::Simple(b"OK")).ok(),
            Some(Vote::Yes)
        );
        assert_eq!(acquire.interpret(Reply::Nil).ok(), Some(Vote::No));
        assert!(matches!(
            acquire.interpret(Reply::Integer(1)),
            Err(Failure::Protocol(_))
        ));
        assert_eq!(
            Op::Release.interpret(Reply::Integer(1)).ok(),
            Some(Vote::Yes)
        );
        assert_eq!(
            Op::Release.interpret(Reply::Integer(0)).ok(),
            Some(Vote::No)
        );
        // `+OK` to EVALSHA is a protocol error, not a vote.
        assert!(matches!(
            Op::Release.interpret(Reply::Simple(b"OK")),
            Err(Failure::Protocol(_))
        ));
        let noscript = Op::Release
            .interpret(Reply::Error(b"NOSCRIPT No matching script."))
            .expect_err("error reply");
        assert_eq!(noscript.server_error(), Some(ServerError::NoScript));
        let auth = acquire
            .interpret(Reply::Error(b"NOAUTH Authentication required."))
            .expect_err("error reply");
        assert!(matches!(auth, Failure::Auth(_)));
    }
}
