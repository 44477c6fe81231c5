//! The primitives' commands: Lua scripts for the semaphore, the read-write
//! lock and the multi-key lock, their encoding and their replies. Same
//! rules as `script.rs`: constant script text, keys and tokens as
//! `KEYS`/`ARGV`, by SHA with `EVAL` as the fallback, and every grant
//! recognises its own token (an acquisition sent again after a connection
//! died finds its first sending's effect and says granted).
//!
//! Time is the server's (`TIME`, in milliseconds): a permit or a reader is a
//! member of a sorted set scored by the server time at which it expires, so
//! one server's clock orders them all. A member that expired is dropped by
//! the next acquisition (nothing is ever leaked by a holder that died), and
//! every set carries a TTL of its latest member's expiry, so a structure no
//! one uses disappears by itself.
//!
//! Every release publishes on `redlease:wake:<key>` (the primitive's key),
//! with the token's first 8 digits, as a lock's release does, so that the
//! waiting of `wait.rs` serves them unchanged.

use bytes::{BufMut, BytesMut};

use crate::error::Failure;
use crate::resp::{self, Reply};
use crate::script::{Form, Op, SCRIPTS, Script, Vote, put_companion};
use crate::token::Token;

/// Server time in milliseconds, as a Lua prelude.
macro_rules! now_ms {
    () => {
        r#"local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#
    };
}

/// Sets a sorted set's TTL to its latest member's expiry (members are
/// scored by expiry; `now` in scope).
macro_rules! expire_set {
    ($key:literal) => {
        concat!(
            r#"local last = redis.call("zrange", "#,
            $key,
            r#", -1, -1, "WITHSCORES")[2]
if last then redis.call("pexpire", "#,
            $key,
            r#", math.max(1, tonumber(last) - now)) end
"#
        )
    };
}

/// Semaphore acquisition. KEYS: the semaphore (a sorted set, token →
/// expiry). ARGV: token, ttl ms, permits. Drops expired permits; grants
/// when fewer than `permits` are held (or the token already holds one: the
/// acquisition sent again, renewed). Replies `+OK`, or how long until the
/// first permit held expires.
pub(crate) const SEM_ACQUIRE: &str = concat!(
    now_ms!(),
    r#"redis.call("zremrangebyscore", KEYS[1], "-inf", now)
if redis.call("zscore", KEYS[1], ARGV[1]) or redis.call("zcard", KEYS[1]) < tonumber(ARGV[3]) then
  redis.call("zadd", KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
"#,
    expire_set!(r#"KEYS[1]"#),
    r#"  return redis.status_reply("OK")
end
return tonumber(redis.call("zrange", KEYS[1], 0, 0, "WITHSCORES")[2]) - now"#
);

/// Renews one member of a sorted set of holders (a permit, or a reader):
/// KEYS: the set. ARGV: token, ttl ms. Only a member that has not expired
/// is renewed (an expired one is lost, even if no one reclaimed it yet);
/// never re-creates one. Replies 1 when renewed, else 0.
pub(crate) const MEMBER_EXTEND: &str = concat!(
    now_ms!(),
    r#"local s = redis.call("zscore", KEYS[1], ARGV[1])
if not s or tonumber(s) <= now then return 0 end
redis.call("zadd", KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
"#,
    expire_set!(r#"KEYS[1]"#),
    "return 1"
);

/// Releases one member of a sorted set of holders. KEYS: the set. ARGV:
/// token, the primitive's key (its wake channel's name). Replies 1 when the
/// member was there and had not expired, else 0; removes it either way,
/// and tells waiters when it removed one.
pub(crate) const MEMBER_RELEASE: &str = concat!(
    now_ms!(),
    r#"local s = redis.call("zscore", KEYS[1], ARGV[1])
if not s then return 0 end
redis.call("zrem", KEYS[1], ARGV[1])
redis.pcall("publish", "redlease:wake:" .. ARGV[2], string.sub(ARGV[1], 1, 8))
if tonumber(s) > now then return 1 end
return 0"#
);

/// Read lock. KEYS: the lock (the writer's key: a string holding the
/// writer's token), the readers (sorted set), the writers' turn (a string:
/// the token of a writer waiting for the readers to leave). ARGV: token,
/// ttl ms. A reader is refused while a writer holds the lock or waits for
/// its turn (writer preference); replies `+OK`, or how long the writer's
/// key (or the waiting writer's turn) still lives.
pub(crate) const READ_ACQUIRE: &str = concat!(
    now_ms!(),
    r#"local s = redis.call("zscore", KEYS[2], ARGV[1])
if not (s and tonumber(s) > now) then
  local w = redis.call("pttl", KEYS[1])
  if w ~= -2 then return w end
  w = redis.call("pttl", KEYS[3])
  if w ~= -2 then return w end
end
redis.call("zremrangebyscore", KEYS[2], "-inf", now)
redis.call("zadd", KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
"#,
    expire_set!(r#"KEYS[2]"#),
    r#"return redis.status_reply("OK")"#
);

/// Write lock. KEYS and the first two ARGV as [`READ_ACQUIRE`]; ARGV[3]:
/// how long a waiting writer's turn lasts unless renewed (ms); ARGV[4]: 1
/// when the writer waits (it takes the turn, if no other writer has it, so
/// that no new reader gets in). Grants when no writer and no reader holds
/// it and the turn is free or ours; takes the lock as a plain string key
/// with a TTL (so the writer's extend and release are a lock's). Finding
/// its own token (a waiting writer keeps one for its whole wait: an
/// earlier attempt's grant whose reply was lost), it renews the key for
/// this attempt's TTL: the grant is measured from this attempt, so the key
/// must live that long from now. Replies `+OK`, or how
/// long until trying again is worth it (the writer's key's PTTL, the first
/// reader's expiry, or another writer's turn's PTTL), or -1 when unknown.
pub(crate) const WRITE_ACQUIRE: &str = concat!(
    r#"if redis.pcall("get", KEYS[1]) == ARGV[1] then
  redis.call("pexpire", KEYS[1], ARGV[2])
  return redis.status_reply("OK")
end
"#,
    now_ms!(),
    r#"redis.call("zremrangebyscore", KEYS[2], "-inf", now)
local turn = redis.call("get", KEYS[3])
local mine = (not turn) or turn == ARGV[1]
if mine and redis.call("exists", KEYS[1]) == 0 and redis.call("zcard", KEYS[2]) == 0 then
  redis.call("set", KEYS[1], ARGV[1], "PX", ARGV[2])
  if turn then redis.call("del", KEYS[3]) end
  return redis.status_reply("OK")
end
if mine and ARGV[4] == "1" then redis.call("set", KEYS[3], ARGV[1], "PX", ARGV[3]) end
local p = redis.call("pttl", KEYS[1])
if p ~= -2 then return p end
if not mine then return redis.call("pttl", KEYS[3]) end
local first = redis.call("zrange", KEYS[2], 0, 0, "WITHSCORES")[2]
if first then return tonumber(first) - now end
return -1"#
);

/// A waiting writer gives up its turn. KEYS: the writers' turn. ARGV:
/// token, the lock's key (its wake channel's name). Deletes the turn if it
/// is ours, and tells waiters (readers kept out by it may go). Replies 1
/// when the turn was ours, else 0. (A writer that holds the lock has no
/// turn: its grant deleted it. Its release is a lock's.)
pub(crate) const TURN_LEAVE: &str = r#"if redis.pcall("get", KEYS[1]) ~= ARGV[1] then return 0 end
redis.call("del", KEYS[1])
redis.pcall("publish", "redlease:wake:" .. ARGV[2], string.sub(ARGV[1], 1, 8))
return 1"#;

/// Multi-key lock: all of KEYS, or none. ARGV: token, ttl ms. Grants when
/// every key is free or already holds our token (sent again), setting them
/// all; else replies `+<i> <pttl>`: the first key that another owner holds
/// (counted from 0) and how long it lives there.
pub(crate) const MULTI_ACQUIRE: &str = r#"for i = 1, #KEYS do
  if redis.call("exists", KEYS[i]) == 1 and redis.pcall("get", KEYS[i]) ~= ARGV[1] then
    return redis.status_reply((i - 1) .. " " .. redis.call("pttl", KEYS[i]))
  end
end
for i = 1, #KEYS do redis.call("set", KEYS[i], ARGV[1], "PX", ARGV[2]) end
return redis.status_reply("OK")"#;

/// Renews every key of a multi-key lock, or none: only when all of KEYS
/// still hold our token. ARGV: token, ttl ms. Replies 1, or 0 when a key
/// is no longer ours: the set is lost, and the keys still ours are
/// released then and there (and their waiters told), so that a node's "no"
/// leaves nothing of the set behind, as it does for every other operation.
pub(crate) const MULTI_EXTEND: &str = r#"for i = 1, #KEYS do
  if redis.pcall("get", KEYS[i]) ~= ARGV[1] then
    for j = 1, #KEYS do
      if redis.pcall("get", KEYS[j]) == ARGV[1] then
        redis.call("del", KEYS[j])
        redis.pcall("publish", "redlease:wake:" .. KEYS[j], string.sub(ARGV[1], 1, 8))
      end
    end
    return 0
  end
end
for i = 1, #KEYS do redis.call("pexpire", KEYS[i], ARGV[2]) end
return 1"#;

/// Releases a multi-key lock: deletes each of KEYS that holds our token
/// (and tells its waiters). ARGV: token. Replies 1 when every key was
/// ours, else 0.
pub(crate) const MULTI_RELEASE: &str = r#"local all = 1
for i = 1, #KEYS do
  if redis.pcall("get", KEYS[i]) == ARGV[1] then
    redis.call("del", KEYS[i])
    redis.pcall("publish", "redlease:wake:" .. KEYS[i], string.sub(ARGV[1], 1, 8))
  else
    all = 0
  end
end
return all"#;

/// The suffixes of a read-write lock's companion keys.
pub(crate) const READERS_SUFFIX: &[u8] = b":redlease:readers";
pub(crate) const TURN_SUFFIX: &[u8] = b":redlease:turn";

/// How long a waiting writer's turn lasts unless its next attempt renews
/// it: a writer that died while waiting keeps new readers out this long.
pub(crate) const TURN_MS: u64 = 500;

/// Most keys in one multi-key lock.
pub(crate) const MAX_KEYS: usize = 64;

/// The primitives' scripts, loaded on each connection with the locks'.
pub(crate) struct Scripts {
    pub(crate) sem_acquire: Script,
    pub(crate) member_extend: Script,
    pub(crate) member_release: Script,
    pub(crate) read_acquire: Script,
    pub(crate) write_acquire: Script,
    pub(crate) turn_leave: Script,
    pub(crate) multi_acquire: Script,
    pub(crate) multi_extend: Script,
    pub(crate) multi_release: Script,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        Scripts {
            // EVALSHA sha 1 key token ttl permits
            sem_acquire: Script::new(SEM_ACQUIRE, 1, 7),
            // EVALSHA sha 1 set token ttl
            member_extend: Script::new(MEMBER_EXTEND, 1, 6),
            // EVALSHA sha 1 set token name
            member_release: Script::new(MEMBER_RELEASE, 1, 6),
            // EVALSHA sha 3 key readers turn token ttl
            read_acquire: Script::new(READ_ACQUIRE, 3, 8),
            // EVALSHA sha 3 key readers turn token ttl turn-ms waits
            write_acquire: Script::new(WRITE_ACQUIRE, 3, 10),
            // EVALSHA sha 1 turn token key
            turn_leave: Script::new(TURN_LEAVE, 1, 6),
            // The counts vary with the keys: see `encode_multi`.
            multi_acquire: Script::new(MULTI_ACQUIRE, 0, 3),
            multi_extend: Script::new(MULTI_EXTEND, 0, 3),
            multi_release: Script::new(MULTI_RELEASE, 0, 3),
        }
    }

    pub(crate) fn all(&self) -> [&Script; 9] {
        [
            &self.sem_acquire,
            &self.member_extend,
            &self.member_release,
            &self.read_acquire,
            &self.write_acquire,
            &self.turn_leave,
            &self.multi_acquire,
            &self.multi_extend,
            &self.multi_release,
        ]
    }
}

/// One primitive operation (inside [`crate::script::Op::Shaped`]); the
/// round's key is the primitive's key (a multi-key lock's first key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shaped<'a> {
    /// A permit of a semaphore of `permits`.
    SemAcquire {
        ttl_ms: u64,
        permits: u32,
    },
    /// Renews a permit (`readers`: a reader's place instead).
    MemberExtend {
        ttl_ms: u64,
        readers: bool,
    },
    /// Releases a permit (`readers`: a reader's place instead).
    MemberRelease {
        readers: bool,
    },
    ReadAcquire {
        ttl_ms: u64,
    },
    /// `waits`: take the writers' turn if not granted.
    WriteAcquire {
        ttl_ms: u64,
        waits: bool,
    },
    /// A waiting writer gives up its turn.
    TurnLeave,
    /// `keys`: `count` keys, each a RESP bulk string.
    MultiAcquire {
        ttl_ms: u64,
        keys: &'a [u8],
        count: usize,
    },
    MultiExtend {
        ttl_ms: u64,
        keys: &'a [u8],
        count: usize,
    },
    MultiRelease {
        keys: &'a [u8],
        count: usize,
    },
}

impl<'a> Shaped<'a> {
    /// Whether it can grant (a node in its restart quarantine takes no
    /// part).
    pub(crate) fn grants(self) -> bool {
        matches!(
            self,
            Shaped::SemAcquire { .. }
                | Shaped::ReadAcquire { .. }
                | Shaped::WriteAcquire { .. }
                | Shaped::MultiAcquire { .. }
        )
    }

    /// What undoes it: the release that cleans up after an acquisition or
    /// renewal that failed (or found the holder lost). A write lock's is a
    /// plain lock's release (its key holds our token).
    pub(crate) fn undo(self) -> Op<'a> {
        Op::Shaped(match self {
            Shaped::WriteAcquire { .. } => return Op::Release,
            Shaped::SemAcquire { .. } => Shaped::MemberRelease { readers: false },
            Shaped::MemberExtend { readers, .. } | Shaped::MemberRelease { readers } => {
                Shaped::MemberRelease { readers }
            }
            Shaped::ReadAcquire { .. } => Shaped::MemberRelease { readers: true },
            Shaped::TurnLeave => Shaped::TurnLeave,
            Shaped::MultiAcquire { keys, count, .. }
            | Shaped::MultiExtend { keys, count, .. }
            | Shaped::MultiRelease { keys, count } => Shaped::MultiRelease { keys, count },
        })
    }

    /// Appends the command to `buf`.
    pub(crate) fn encode(self, buf: &mut BytesMut, key: &[u8], token: &Token, form: Form) {
        let scripts = &SCRIPTS.shaped;
        let mut num = itoa::Buffer::new();
        let t = token.as_bytes();
        match self {
            Shaped::SemAcquire { ttl_ms, permits } => {
                buf.extend_from_slice(scripts.sem_acquire.head(form));
                resp::put_bulk(buf, key);
                resp::put_bulk(buf, t);
                resp::put_bulk(buf, num.format(ttl_ms).as_bytes());
                resp::put_bulk(buf, itoa::Buffer::new().format(permits).as_bytes());
            }
            Shaped::MemberExtend { ttl_ms, readers } => {
                buf.extend_from_slice(scripts.member_extend.head(form));
                put_set(buf, key, readers);
                resp::put_bulk(buf, t);
                resp::put_bulk(buf, num.format(ttl_ms).as_bytes());
            }
            Shaped::MemberRelease { readers } => {
                buf.extend_from_slice(scripts.member_release.head(form));
                put_set(buf, key, readers);
                resp::put_bulk(buf, t);
                resp::put_bulk(buf, key);
            }
            Shaped::ReadAcquire { ttl_ms } => {
                buf.extend_from_slice(scripts.read_acquire.head(form));
                put_rw_keys(buf, key);
                resp::put_bulk(buf, t);
                resp::put_bulk(buf, num.format(ttl_ms).as_bytes());
            }
            Shaped::WriteAcquire { ttl_ms, waits } => {
                buf.extend_from_slice(scripts.write_acquire.head(form));
                put_rw_keys(buf, key);
                resp::put_bulk(buf, t);
                resp::put_bulk(buf, num.format(ttl_ms).as_bytes());
                resp::put_bulk(buf, itoa::Buffer::new().format(TURN_MS).as_bytes());
                resp::put_bulk(buf, if waits { b"1" } else { b"0" });
            }
            Shaped::TurnLeave => {
                buf.extend_from_slice(scripts.turn_leave.head(form));
                put_companion(buf, key, TURN_SUFFIX);
                resp::put_bulk(buf, t);
                resp::put_bulk(buf, key);
            }
            Shaped::MultiAcquire {
                ttl_ms,
                keys,
                count,
            } => encode_multi(
                buf,
                &scripts.multi_acquire,
                keys,
                count,
                t,
                Some(ttl_ms),
                form,
            ),
            Shaped::MultiExtend {
                ttl_ms,
                keys,
                count,
            } => encode_multi(
                buf,
                &scripts.multi_extend,
                keys,
                count,
                t,
                Some(ttl_ms),
                form,
            ),
            Shaped::MultiRelease { keys, count } => {
                encode_multi(buf, &scripts.multi_release, keys, count, t, None, form)
            }
        }
    }

    /// Reads a node's reply as a vote.
    pub(crate) fn interpret(self, reply: Reply<'_>) -> Result<Vote, Failure> {
        match (self, reply) {
            (_, Reply::Error(text)) => Err(Failure::from_server(text)),
            (
                Shaped::SemAcquire { .. }
                | Shaped::ReadAcquire { .. }
                | Shaped::WriteAcquire { .. }
                | Shaped::MultiAcquire { .. },
                Reply::Simple(b"OK"),
            ) => Ok(Vote::Yes),
            (
                Shaped::SemAcquire { .. }
                | Shaped::ReadAcquire { .. }
                | Shaped::WriteAcquire { .. },
                Reply::Integer(ms),
            ) => Ok(Vote::No {
                held_ms: held_for(ms),
            }),
            (Shaped::MultiAcquire { count, .. }, Reply::Simple(text)) => blocked(text, count)
                .ok_or(Failure::Protocol(
                    "unexpected reply to the multi-key lock script",
                )),
            (
                Shaped::MemberExtend { .. }
                | Shaped::MemberRelease { .. }
                | Shaped::TurnLeave
                | Shaped::MultiExtend { .. }
                | Shaped::MultiRelease { .. },
                Reply::Integer(n @ (0 | 1)),
            ) => Ok(if n == 1 { Vote::Yes } else { Vote::NO }),
            (_, _) => Err(Failure::Protocol(
                "unexpected reply to a primitive's script",
            )),
        }
    }
}

/// A PTTL-like reply as how long the holder keeps it: `-2` gone (try now),
/// `-1` and other negatives unknown (wait to be woken).
fn held_for(ms: i64) -> Option<u64> {
    match ms {
        0.. => Some(ms.unsigned_abs()),
        -2 => Some(0),
        _ => None,
    }
}

/// The multi-key lock's "held" reply: `<index> <pttl>`.
fn blocked(text: &[u8], count: usize) -> Option<Vote> {
    let text = std::str::from_utf8(text).ok()?;
    let (index, pttl) = text.split_once(' ')?;
    let index: u16 = index.parse().ok()?;
    let pttl: i64 = pttl.parse().ok()?;
    (usize::from(index) < count).then_some(Vote::Blocked {
        held_ms: held_for(pttl),
        index,
    })
}

/// The set of holders: the semaphore's key, or a read-write lock's readers.
fn put_set(buf: &mut BytesMut, key: &[u8], readers: bool) {
    if readers {
        put_companion(buf, key, READERS_SUFFIX);
    } else {
        resp::put_bulk(buf, key);
    }
}

/// A read-write lock's three keys.
fn put_rw_keys(buf: &mut BytesMut, key: &[u8]) {
    resp::put_bulk(buf, key);
    put_companion(buf, key, READERS_SUFFIX);
    put_companion(buf, key, TURN_SUFFIX);
}

/// A multi-key script: its front (the counts depend on the keys), the
/// keys as encoded, the token and the TTL if any.
fn encode_multi(
    buf: &mut BytesMut,
    script: &Script,
    keys: &[u8],
    count: usize,
    token: &[u8],
    ttl_ms: Option<u64>,
    form: Form,
) {
    let mut num = itoa::Buffer::new();
    let argc = 4 + count + usize::from(ttl_ms.is_some());
    buf.reserve(96 + keys.len());
    buf.put_u8(b'*');
    buf.put_slice(num.format(argc).as_bytes());
    buf.put_slice(b"\r\n");
    script.put_call(buf, form);
    resp::put_bulk(buf, num.format(count).as_bytes());
    buf.put_slice(keys);
    resp::put_bulk(buf, token);
    if let Some(ttl_ms) = ttl_ms {
        resp::put_bulk(buf, num.format(ttl_ms).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_lock_held_replies() {
        let op = |count| Shaped::MultiAcquire {
            ttl_ms: 1,
            keys: b"",
            count,
        };
        assert_eq!(
            op(3).interpret(Reply::Simple(b"2 150")).ok(),
            Some(Vote::Blocked {
                held_ms: Some(150),
                index: 2
            })
        );
        assert_eq!(
            op(3).interpret(Reply::Simple(b"0 -1")).ok(),
            Some(Vote::Blocked {
                held_ms: None,
                index: 0
            })
        );
        // An index out of range, or text that is not the format, is a
        // protocol error, not a vote.
        for bad in [&b"3 1"[..], b"x 1", b"1", b"", b"1 2 3"] {
            assert!(op(3).interpret(Reply::Simple(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(op(3).interpret(Reply::Simple(b"OK")).ok(), Some(Vote::Yes));
    }

    #[test]
    fn holders_replies() {
        let sem = Shaped::SemAcquire {
            ttl_ms: 1,
            permits: 2,
        };
        assert_eq!(sem.interpret(Reply::Simple(b"OK")).ok(), Some(Vote::Yes));
        assert_eq!(
            sem.interpret(Reply::Integer(40)).ok(),
            Some(Vote::No { held_ms: Some(40) })
        );
        assert_eq!(
            sem.interpret(Reply::Integer(-1)).ok(),
            Some(Vote::No { held_ms: None })
        );
        assert!(sem.interpret(Reply::Nil).is_err());
        let release = Shaped::MemberRelease { readers: true };
        assert_eq!(release.interpret(Reply::Integer(1)).ok(), Some(Vote::Yes));
        assert_eq!(
            release.interpret(Reply::Integer(0)).ok(),
            Some(Vote::No { held_ms: None })
        );
        assert!(release.interpret(Reply::Integer(2)).is_err());
    }
}
