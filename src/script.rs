//! The lock operations as Redis commands. Acquire is `SET NX PX`, exactly as
//! every Redlock client does it, so mixed fleets exclude each other; the
//! rest are Lua scripts called by SHA (`EVALSHA`), with `EVAL` as the
//! fallback when a server answers `NOSCRIPT` (restarted without persistence,
//! `SCRIPT FLUSH`, failover). `EVAL` also puts the script back in the
//! server's cache, so the next `EVALSHA` works again.
//!
//! Script text is constant: keys and tokens travel as `KEYS`/`ARGV`, never
//! spliced into Lua. Values stay what other clients expect (our token, with
//! a TTL); what waiting adds lives beside the lock key, never in its value:
//! a message on the channel `redlease:wake:<key>` when a lock is released,
//! and, in fair mode only, a queue under `{<key>}:redlease:…` (named by
//! [`companion`], in the key's cluster slot).

use std::sync::LazyLock;

use bytes::{BufMut, BytesMut};

use crate::error::Failure;
use crate::primitives::script::Shaped;
use crate::resp::{self, Padded, Reply};
use crate::token::Token;

/// Every script reads the lock's key with `pcall`: a key written over with
/// another type by someone else is simply not ours (no `WRONGTYPE` error).
///
/// Compare-and-delete: deletes the key only if it still holds our token,
/// then tells waiters (a message on the key's wake channel carrying the
/// token's first 8 digits, so that the releasing process can tell its own
/// releases apart). `pcall`: a user not allowed to publish still releases.
pub(crate) const RELEASE: &str = r#"if redis.pcall("get", KEYS[1]) == ARGV[1] then redis.call("del", KEYS[1]) redis.pcall("publish", "redlease:wake:" .. KEYS[1], string.sub(ARGV[1], 1, 8)) return 1 else return 0 end"#;

/// Compare-and-pexpire: renews the key only if it still holds our token.
/// Never re-creates a missing key.
pub(crate) const EXTEND: &str = r#"if redis.pcall("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end"#;

/// Compare-and-pexpire for many keys at once (the lease keeper's batched
/// renewal): KEYS are the locks, ARGV their tokens and TTLs in pairs.
/// Replies with a bit mask: bit `i` set when `KEYS[i + 1]` still held its
/// token and was renewed. At most [`RENEW_BATCH`] keys, so the mask is
/// exact in Lua's numbers. Never re-creates a missing key. `pcall`: a key
/// that is no longer a string (written over by someone else) is not renewed,
/// and does not fail the batch's other locks.
pub(crate) const EXTEND_MANY: &str = r#"local bits, bit = 0, 1
for i = 1, #KEYS do
  if redis.pcall("get", KEYS[i]) == ARGV[2 * i - 1] then
    redis.call("pexpire", KEYS[i], ARGV[2 * i])
    bits = bits + bit
  end
  bit = bit * 2
end
return bits"#;

/// An acquisition with a fencing token (fencing mode): `SET NX PX`, and
/// when granted, the key's fence counter (`KEYS[2]`, no TTL) goes up by one
/// — and to the server's clock in microseconds if that is ahead, so that a
/// counter lost with a server's data cannot go backwards while its clock
/// does not. Replies `+<fence>` when granted, or when the key already holds
/// our token (an acquisition sent again: the counter as it is); else, when
/// `ARGV[3]` is 1, the holder's PTTL, or nil.
pub(crate) const FENCED_ACQUIRE: &str = r#"if redis.call("set", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
  local t = redis.call("time")
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local fence = redis.call("incr", KEYS[2])
  if fence < now then
    fence = now
    redis.call("set", KEYS[2], string.format("%.0f", fence))
  end
  return redis.status_reply(string.format("%.0f", fence))
end
if redis.pcall("get", KEYS[1]) == ARGV[1] then
  return redis.status_reply(string.format("%.0f", tonumber(redis.call("get", KEYS[2]) or "0")))
end
if ARGV[3] == "1" then return redis.call("pttl", KEYS[1]) end
return false"#;

/// The fence write-back (fencing over a quorum): raises the key's fence
/// counter to `ARGV[2]` only while the key holds our token (`ARGV[1]`).
/// Replies 1 when the key was ours, else 0.
pub(crate) const FENCE_WRITE: &str = r#"if redis.pcall("get", KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(redis.call("get", KEYS[2]) or "0") < tonumber(ARGV[2]) then
  redis.call("set", KEYS[2], ARGV[2])
end
return 1"#;

/// The suffix of a key's fence counter, after the lock's key.
pub(crate) const FENCE_SUFFIX: &[u8] = b":redlease:fence";

/// Most keys one [`EXTEND_MANY`] call renews.
pub(crate) const RENEW_BATCH: usize = 32;

/// Direct handoff to a waiting thread of the same manager: the key goes
/// from our token (`ARGV[1]`) to the waiter's (`ARGV[2]`, for `ARGV[3]` ms)
/// in one step, only if it still holds ours; it is never free in between,
/// so no one else can slip in, and no one is told (nothing was released).
/// Idempotent: finding the waiter's token, it says the handoff is done.
pub(crate) const HANDOFF: &str = r#"local v = redis.pcall("get", KEYS[1]) if v == ARGV[1] then redis.call("set", KEYS[1], ARGV[2], "PX", ARGV[3]) return 1 elseif v == ARGV[2] then return 1 else return 0 end"#;

/// An acquisition attempt by a waiter: `SET NX PX`, or when the key is held,
/// how long it stays held (`PTTL`), in the same round trip. Finding our own
/// token it says granted: the attempt is also how an acquisition is sent
/// again after a connection died (the first sending may have landed).
pub(crate) const ACQUIRE_OR_PTTL: &str = r#"local ok = redis.call("set", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) if ok then return ok end if redis.pcall("get", KEYS[1]) == ARGV[1] then return redis.status_reply("OK") end return redis.call("pttl", KEYS[1])"#;

/// Fair mode (one node): first come, first served. KEYS: the lock, the queue
/// (token → ticket), the leases (token → deadline, server time in ms), the
/// ticket counter. ARGV: token, ttl ms, lease ms, enqueue (1 or 0).
///
/// Waiters whose lease ran out (dead, or gone without a word) are dropped
/// first; then the lock goes to the head of the queue, or to anyone when the
/// queue is empty. Finding its own token (an earlier attempt of the same
/// wait was granted but its reply lost), it renews the key for this
/// attempt's TTL, from which the grant is measured. A waiter that did not
/// get it joins the queue (once) and
/// renews its lease; the queue's keys expire by themselves when no one
/// renews them. Replies `+OK` when granted (or already ours: a waiter keeps
/// one token), else the lock's PTTL, or -3 when it is free but the head's
/// turn.
pub(crate) const FAIR_ACQUIRE: &str = r#"if redis.pcall("get", KEYS[1]) == ARGV[1] then
  redis.call("pexpire", KEYS[1], ARGV[2])
  return redis.status_reply("OK")
end
local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, w in ipairs(redis.call("zrangebyscore", KEYS[3], "-inf", now)) do
  redis.call("zrem", KEYS[2], w)
  redis.call("zrem", KEYS[3], w)
end
local head = redis.call("zrange", KEYS[2], 0, 0)[1]
if (head == nil or head == ARGV[1]) and redis.call("set", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
  redis.call("zrem", KEYS[2], ARGV[1])
  redis.call("zrem", KEYS[3], ARGV[1])
  return redis.status_reply("OK")
end
if ARGV[4] == "1" then
  if not redis.call("zscore", KEYS[2], ARGV[1]) then
    redis.call("zadd", KEYS[2], redis.call("incr", KEYS[4]), ARGV[1])
  end
  redis.call("zadd", KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
  for i = 2, 4 do redis.call("pexpire", KEYS[i], 4 * tonumber(ARGV[3]) + tonumber(ARGV[2])) end
end
local pttl = redis.call("pttl", KEYS[1])
if pttl == -2 then return -3 end
return pttl"#;

/// Fair mode: a waiter that gives up leaves the queue at once (the lease
/// would drop it anyway, later). Same KEYS and ARGV as [`FAIR_ACQUIRE`].
pub(crate) const FAIR_LEAVE: &str =
    r#"redis.call("zrem", KEYS[2], ARGV[1]) redis.call("zrem", KEYS[3], ARGV[1]) return 1"#;

/// The suffixes of the fair queue's keys, after the lock's key.
pub(crate) const FAIR_SUFFIXES: [&[u8]; 3] = [
    b":redlease:queue",
    b":redlease:leases",
    b":redlease:tickets",
];

/// The prefix of a key's wake channel (the key follows).
pub(crate) const WAKE_PREFIX: &[u8] = b"redlease:wake:";

/// How long a fair-mode waiter stays in the queue without renewing.
pub(crate) const FAIR_LEASE_MS: u64 = 250;

/// Length of a hex SHA1.
const SHA_LEN: usize = 40;

/// One Lua script: its source, its SHA1 (computed once per process by the
/// `redis` crate), and the constant front of its calls, encoded once.
pub(crate) struct Script {
    pub(crate) source: &'static str,
    pub(crate) sha: [u8; SHA_LEN],
    /// `EVALSHA <sha> <numkeys>` and `EVAL <source> <numkeys>`, as RESP,
    /// behind the array header for `argc` arguments in all.
    by_sha: Vec<u8>,
    by_source: Vec<u8>,
    /// `by_sha` again, padded for a constant-size copy.
    by_sha_padded: Option<Padded<HEAD_PAD>>,
}

/// Room for a script's `EVALSHA` front (about 72 bytes) in a padded copy.
const HEAD_PAD: usize = 96;

impl Script {
    pub(crate) fn new(source: &'static str, keys: usize, argc: usize) -> Script {
        let mut sha = [0u8; SHA_LEN];
        sha.copy_from_slice(redis::Script::new(source).get_hash().as_bytes());
        let head = |verb: &[u8], script: &[u8]| {
            let mut buf = BytesMut::new();
            buf.extend_from_slice(format!("*{argc}\r\n").as_bytes());
            resp::put_bulk(&mut buf, verb);
            resp::put_bulk(&mut buf, script);
            resp::put_bulk(&mut buf, keys.to_string().as_bytes());
            buf.to_vec()
        };
        let by_sha = head(b"EVALSHA", &sha);
        Script {
            by_sha_padded: Padded::new(&by_sha),
            by_sha,
            by_source: head(b"EVAL", source.as_bytes()),
            source,
            sha,
        }
    }

    #[inline]
    pub(crate) fn head(&self, form: Form) -> &[u8] {
        match form {
            Form::Sha => &self.by_sha,
            Form::Source => &self.by_source,
        }
    }

    /// Appends [`head`](Self::head) to `buf`.
    #[inline]
    pub(crate) fn put_head(&self, buf: &mut BytesMut, form: Form) {
        match (form, &self.by_sha_padded) {
            (Form::Sha, Some(padded)) => padded.put(buf),
            _ => buf.extend_from_slice(self.head(form)),
        }
    }

    /// Appends `EVALSHA <sha>` or `EVAL <source>`, for a call whose front
    /// is not constant (the argument count varies).
    pub(crate) fn put_call(&self, buf: &mut BytesMut, form: Form) {
        match form {
            Form::Sha => {
                resp::put_bulk(buf, b"EVALSHA");
                resp::put_bulk(buf, &self.sha);
            }
            Form::Source => {
                resp::put_bulk(buf, b"EVAL");
                resp::put_bulk(buf, self.source.as_bytes());
            }
        }
    }
}

/// Every script, loaded on each connection by `SCRIPT LOAD`.
pub(crate) struct Scripts {
    pub(crate) release: Script,
    pub(crate) extend: Script,
    pub(crate) acquire_or_pttl: Script,
    pub(crate) handoff: Script,
    pub(crate) fair_acquire: Script,
    pub(crate) fair_leave: Script,
    pub(crate) extend_many: Script,
    pub(crate) fenced_acquire: Script,
    pub(crate) fence_write: Script,
    /// The semaphore's, the read-write lock's, the multi-key lock's.
    pub(crate) shaped: crate::primitives::script::Scripts,
}

impl Scripts {
    pub(crate) fn all(&self) -> [&Script; 18] {
        let [a, b, c, d, e, f, g, h, i] = self.shaped.all();
        [
            a,
            b,
            c,
            d,
            e,
            f,
            g,
            h,
            i,
            &self.release,
            &self.extend,
            &self.acquire_or_pttl,
            &self.handoff,
            &self.fair_acquire,
            &self.fair_leave,
            &self.extend_many,
            &self.fenced_acquire,
            &self.fence_write,
        ]
    }
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    // EVALSHA sha 1 key token
    release: Script::new(RELEASE, 1, 5),
    // EVALSHA sha 1 key token ttl
    extend: Script::new(EXTEND, 1, 6),
    acquire_or_pttl: Script::new(ACQUIRE_OR_PTTL, 1, 6),
    // EVALSHA sha 1 key token new-token ttl
    handoff: Script::new(HANDOFF, 1, 7),
    // EVALSHA sha 4 key queue leases tickets token ttl lease enqueue
    fair_acquire: Script::new(FAIR_ACQUIRE, 4, 11),
    // EVALSHA sha 4 key queue leases tickets token
    fair_leave: Script::new(FAIR_LEAVE, 4, 8),
    // EVALSHA sha n key… (token ttl)…: the counts vary, see `encode_many`.
    extend_many: Script::new(EXTEND_MANY, 0, 3),
    // EVALSHA sha 2 key fence-key token ttl want-pttl
    fenced_acquire: Script::new(FENCED_ACQUIRE, 2, 8),
    // EVALSHA sha 2 key fence-key token fence
    fence_write: Script::new(FENCE_WRITE, 2, 7),
    shaped: crate::primitives::script::Scripts::new(),
});

/// `SET` with its 6 arguments' count, as RESP.
const SET_HEAD: &[u8; 13] = b"*6\r\n$3\r\nSET\r\n";
/// `NX PX`, as RESP.
const NX_PX: &[u8; 16] = b"$2\r\nNX\r\n$2\r\nPX\r\n";
/// The longest tail [`Op::encode`] writes after a key: a handoff's two
/// tokens (41 and 39 bytes) and a TTL of up to 8 digits (16).
const TAIL_MAX: usize = 96;

/// One lock operation, with what it needs besides the key and token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op<'a> {
    /// `SET key token NX PX ttl`
    Acquire { ttl_ms: u64 },
    /// A waiter's attempt: `SET NX PX`, or the holder's PTTL.
    AcquireOrPttl { ttl_ms: u64 },
    /// Direct handoff: our key to the waiter's token `to`, for `ttl_ms`.
    Handoff { ttl_ms: u64, to: &'a Token },
    /// Fair mode's attempt; `enqueue`: join the queue if not granted.
    FairAcquire { ttl_ms: u64, enqueue: bool },
    /// Fair mode: leave the queue.
    FairLeave,
    /// The release script.
    Release,
    /// The extend script with a new TTL.
    Extend { ttl_ms: u64 },
    /// The batched renewal of `keys` locks: `args` holds the keys, then
    /// the (token, ttl) pairs, each a RESP bulk string (see
    /// [`RenewArgs`]).
    ExtendMany { keys: usize, args: &'a [u8] },
    /// Fencing mode's acquisition; `pttl`: a waiter's, which also learns
    /// how long the holder keeps the key.
    FencedAcquire { ttl_ms: u64, pttl: bool },
    /// The fence write-back: the key's counter up to `fence`, if ours.
    FenceWrite { fence: u64 },
    /// `WAIT replicas timeout_ms`, on the connection that just wrote the
    /// lock: yes when at least `replicas` replicas acknowledged it.
    WaitReplicas { replicas: u32, timeout_ms: u64 },
    /// A semaphore's, read-write lock's or multi-key lock's operation.
    Shaped(Shaped<'a>),
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
    /// Not: the key is held by another token, or is gone. `held_ms`, when
    /// the node said, is how long the holder's key still lives there.
    No { held_ms: Option<u64> },
    /// A batched renewal's answer: bit `i` set for each lock renewed.
    Each(u64),
    /// Granted, with this node's fence.
    Fenced(u64),
    /// Not granted (a multi-key lock): key `index` of the set is held by
    /// another owner, for `held_ms` when known.
    Blocked { held_ms: Option<u64>, index: u16 },
}

impl Vote {
    pub(crate) const NO: Vote = Vote::No { held_ms: None };
}

impl<'a> Op<'a> {
    /// Whether the operation can grant a lock (a node in its restart
    /// quarantine must not take part in it).
    #[inline]
    pub(crate) fn grants(self) -> bool {
        matches!(
            self,
            Op::Acquire { .. }
                | Op::AcquireOrPttl { .. }
                | Op::Handoff { .. }
                | Op::FairAcquire { .. }
                | Op::FencedAcquire { .. }
        ) || matches!(self, Op::Shaped(shaped) if shaped.grants())
    }

    /// The release that cleans up after this operation failed (or found
    /// the lock lost): a lock's release, or a primitive's own.
    #[inline]
    pub(crate) fn undo(self) -> Op<'a> {
        match self {
            Op::Shaped(shaped) => shaped.undo(),
            _ => Op::Release,
        }
    }

    /// The operation to send again after a connection died before its
    /// reply: one that recognises its own first effect where it can
    /// (`SET NX` would answer "held" to our own key).
    pub(crate) fn resent(self) -> Op<'a> {
        match self {
            Op::Acquire { ttl_ms } => Op::AcquireOrPttl { ttl_ms },
            other => other,
        }
    }

    /// Appends the command to `buf`, scripts in the given form (`SET` has
    /// only one).
    ///
    /// This is the hot path's encoder: the constant front of each command is
    /// encoded once (see [`Script`]), so a call copies the key, the token and
    /// the TTL and formats two numbers. The same bytes as `resp::encode` of
    /// the whole argument list (checked by the tests and the fuzz target).
    pub(crate) fn encode(self, buf: &mut BytesMut, key: &[u8], token: &Token, form: Form) {
        let scripts = &*SCRIPTS;
        let (head, ttl_ms): (Option<&Script>, Option<u64>) = match self {
            Op::Acquire { ttl_ms } => (None, Some(ttl_ms)),
            Op::AcquireOrPttl { ttl_ms } => (Some(&scripts.acquire_or_pttl), Some(ttl_ms)),
            Op::Handoff { ttl_ms, .. } => (Some(&scripts.handoff), Some(ttl_ms)),
            Op::Release => (Some(&scripts.release), None),
            Op::Extend { ttl_ms } => (Some(&scripts.extend), Some(ttl_ms)),
            Op::FairAcquire { .. } | Op::FairLeave => {
                return self.encode_fair(buf, key, token, form);
            }
            Op::ExtendMany { keys, args } => return encode_many(buf, keys, args, form),
            Op::FencedAcquire { .. } | Op::FenceWrite { .. } => {
                return self.encode_fenced(buf, key, token, form);
            }
            Op::Shaped(shaped) => return shaped.encode(buf, key, token, form),
            Op::WaitReplicas {
                replicas,
                timeout_ms,
            } => {
                let (mut n, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
                return resp::encode(
                    buf,
                    &[
                        b"WAIT",
                        n.format(replicas).as_bytes(),
                        t.format(timeout_ms).as_bytes(),
                    ],
                );
            }
        };
        // One copy of a length known only at run time (the key's); every
        // other piece is copied at a constant size (see `resp::Padded`).
        buf.reserve(key.len() + 256);
        match head {
            Some(script) => script.put_head(buf, form),
            None => buf.extend_from_slice(SET_HEAD),
        }
        resp::put_len_line(buf, key.len());
        buf.extend_from_slice(key);
        // What follows the key is written in place, at constant offsets,
        // into one zeroed block as long as the longest tail (a handoff's),
        // then cut back: one capacity check for up to seven pieces.
        let start = buf.len();
        buf.extend_from_slice(&[0; TAIL_MAX]);
        let Ok(tail) = <&mut [u8; TAIL_MAX]>::try_from(&mut buf[start..]) else {
            unreachable!("resized to hold the tail")
        };
        tail[..7].copy_from_slice(b"\r\n$32\r\n");
        tail[7..39].copy_from_slice(token.as_array());
        tail[39..41].copy_from_slice(b"\r\n");
        let at = match self {
            Op::Acquire { .. } => {
                tail[41..57].copy_from_slice(NX_PX);
                57
            }
            Op::Handoff { to, .. } => {
                tail[41..46].copy_from_slice(b"$32\r\n");
                tail[46..78].copy_from_slice(to.as_array());
                tail[78..80].copy_from_slice(b"\r\n");
                80
            }
            _ => 41,
        };
        let end = match ttl_ms {
            None => at,
            Some(ms) => match resp::short_num(ms) {
                Some(ttl) => {
                    tail[at..at + 16].copy_from_slice(&ttl.bytes);
                    at + ttl.len
                }
                // Over 8 digits: appended after the cut.
                None => {
                    buf.truncate(start + at);
                    return resp::num_bulk(ms).put(buf);
                }
            },
        };
        buf.truncate(start + end);
    }

    /// The fencing scripts: the lock's key and its fence counter's.
    fn encode_fenced(self, buf: &mut BytesMut, key: &[u8], token: &Token, form: Form) {
        let scripts = &*SCRIPTS;
        let script = match self {
            Op::FencedAcquire { .. } => &scripts.fenced_acquire,
            _ => &scripts.fence_write,
        };
        buf.extend_from_slice(script.head(form));
        resp::put_bulk(buf, key);
        put_companion(buf, key, FENCE_SUFFIX);
        resp::put_bulk(buf, token.as_bytes());
        let mut num = itoa::Buffer::new();
        match self {
            Op::FencedAcquire { ttl_ms, pttl } => {
                resp::put_bulk(buf, num.format(ttl_ms).as_bytes());
                resp::put_bulk(buf, if pttl { b"1" } else { b"0" });
            }
            Op::FenceWrite { fence } => resp::put_bulk(buf, num.format(fence).as_bytes()),
            _ => {}
        }
    }

    /// The fair-mode scripts: four keys derived from the lock's.
    fn encode_fair(self, buf: &mut BytesMut, key: &[u8], token: &Token, form: Form) {
        let scripts = &*SCRIPTS;
        let script = match self {
            Op::FairAcquire { .. } => &scripts.fair_acquire,
            _ => &scripts.fair_leave,
        };
        buf.extend_from_slice(script.head(form));
        resp::put_bulk(buf, key);
        for suffix in FAIR_SUFFIXES {
            put_companion(buf, key, suffix);
        }
        resp::put_bulk(buf, token.as_bytes());
        if let Op::FairAcquire { ttl_ms, enqueue } = self {
            resp::put_bulk(buf, itoa::Buffer::new().format(ttl_ms).as_bytes());
            resp::put_bulk(buf, itoa::Buffer::new().format(FAIR_LEASE_MS).as_bytes());
            resp::put_bulk(buf, if enqueue { b"1" } else { b"0" });
        }
    }

    /// Reads a node's reply as a vote, or as the reason it is not one.
    #[inline(always)]
    pub(crate) fn interpret(self, reply: Reply<'_>) -> Result<Vote, Failure> {
        match (self, reply) {
            // The hot path's two answers first: a granted lock and a
            // released one.
            (Op::Acquire { .. }, Reply::Simple(b"OK")) => Ok(Vote::Yes),
            (Op::Release, Reply::Integer(1)) => Ok(Vote::Yes),
            (_, Reply::Error(text)) => Err(Failure::from_server(text)),
            (Op::Shaped(shaped), reply) => shaped.interpret(reply),
            (Op::Acquire { .. }, Reply::Nil) => Ok(Vote::NO),
            (Op::Acquire { .. }, _) => Err(Failure::Protocol("unexpected reply to SET NX PX")),
            (Op::AcquireOrPttl { .. } | Op::FairAcquire { .. }, Reply::Simple(b"OK")) => {
                Ok(Vote::Yes)
            }
            (
                Op::AcquireOrPttl { .. } | Op::FairAcquire { .. } | Op::FencedAcquire { .. },
                Reply::Integer(pttl),
            ) => {
                Ok(Vote::No {
                    held_ms: match pttl {
                        // Held: for this long.
                        0.. => Some(pttl.unsigned_abs()),
                        // Gone by now.
                        -2 => Some(0),
                        // Held without a TTL, or free for the head of the
                        // queue: no telling when; wait to be woken.
                        _ => None,
                    },
                })
            }
            (Op::FairLeave, Reply::Integer(_)) => Ok(Vote::Yes),
            (Op::WaitReplicas { replicas, .. }, Reply::Integer(acked)) => {
                Ok(if acked >= i64::from(replicas) {
                    Vote::Yes
                } else {
                    Vote::NO
                })
            }
            (Op::ExtendMany { keys, .. }, Reply::Integer(bits))
                if bits >= 0 && (keys >= 63 || bits >> keys == 0) =>
            {
                Ok(Vote::Each(bits.unsigned_abs()))
            }
            (Op::ExtendMany { .. }, _) => {
                Err(Failure::Protocol("unexpected reply to the renewal script"))
            }
            (Op::FencedAcquire { .. }, Reply::Simple(digits)) => std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse().ok())
                .map(Vote::Fenced)
                .ok_or(Failure::Protocol("unexpected fence in a reply")),
            (Op::FencedAcquire { .. }, Reply::Nil) => Ok(Vote::NO),
            (_, Reply::Integer(1)) => Ok(Vote::Yes),
            (_, Reply::Integer(0)) => Ok(Vote::NO),
            (_, _) => Err(Failure::Protocol("unexpected reply to the lock script")),
        }
    }
}

/// The batched renewal: the call's front (its argument count depends on
/// the batch), then the arguments the keeper assembled.
fn encode_many(buf: &mut BytesMut, keys: usize, args: &[u8], form: Form) {
    let script = &SCRIPTS.extend_many;
    let mut num = itoa::Buffer::new();
    buf.reserve(64 + args.len());
    buf.put_u8(b'*');
    buf.put_slice(num.format(3 + 3 * keys).as_bytes());
    buf.put_slice(b"\r\n");
    script.put_call(buf, form);
    resp::put_bulk(buf, num.format(keys).as_bytes());
    buf.put_slice(args);
}

/// The arguments of one batched renewal, assembled lock by lock into
/// buffers that are cleared and reused, never freed.
#[derive(Debug, Default)]
pub(crate) struct RenewArgs {
    keys: BytesMut,
    pairs: BytesMut,
    all: BytesMut,
    count: usize,
}

impl RenewArgs {
    pub(crate) fn clear(&mut self) {
        self.keys.clear();
        self.pairs.clear();
        self.count = 0;
    }

    /// Adds one lock to renew for `ttl_ms`.
    pub(crate) fn push(&mut self, key: &[u8], token: &Token, ttl_ms: u64) {
        resp::put_bulk(&mut self.keys, key);
        resp::put_bulk(&mut self.pairs, token.as_bytes());
        resp::put_bulk(
            &mut self.pairs,
            itoa::Buffer::new().format(ttl_ms).as_bytes(),
        );
        self.count += 1;
    }

    /// The operation renewing every lock added since the last clear.
    pub(crate) fn op(&mut self) -> Op<'_> {
        self.all.clear();
        self.all.extend_from_slice(&self.keys);
        self.all.extend_from_slice(&self.pairs);
        Op::ExtendMany {
            keys: self.count,
            args: &self.all,
        }
    }
}

/// Whether `key`'s companion keys are named `{<key>}<suffix>`: when it
/// has no hash tag of its own and none of its bytes would end the tag
/// early. Else `<key><suffix>`, which keeps a key's hash tag.
fn wraps(key: &[u8]) -> bool {
    crate::cluster::hash_tag(key).is_none() && !key.contains(&b'}')
}

/// The name of one of `key`'s companion keys (its fence counter, its fair
/// queue's keys): `<key><suffix>` for a key with a hash tag, else
/// `{<key>}<suffix>`, so that in a Redis Cluster it hashes to the lock's
/// own slot (see [`crate::cluster::companions_fit`] for the one kind of key
/// where no name can).
#[cfg(any(test, feature = "internals"))]
pub(crate) fn companion(key: &[u8], suffix: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    put_companion(&mut buf, key, suffix);
    let start = buf.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    buf[start..buf.len() - 2].to_vec()
}

/// Appends [`companion`]`(key, suffix)` as one bulk string.
pub(crate) fn put_companion(buf: &mut BytesMut, key: &[u8], suffix: &[u8]) {
    let wrap = wraps(key);
    let len = key.len() + suffix.len() + if wrap { 2 } else { 0 };
    buf.put_u8(b'$');
    buf.put_slice(itoa::Buffer::new().format(len).as_bytes());
    buf.put_slice(b"\r\n");
    if wrap {
        buf.put_u8(b'{');
        buf.put_slice(key);
        buf.put_u8(b'}');
    } else {
        buf.put_slice(key);
    }
    buf.put_slice(suffix);
    buf.put_slice(b"\r\n");
}

/// Appends `SCRIPT LOAD` for every script (sent when a connection is made).
pub(crate) fn encode_load(buf: &mut BytesMut) {
    for script in SCRIPTS.all() {
        resp::encode(buf, &[b"SCRIPT", b"LOAD", script.source.as_bytes()]);
    }
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
        for sha in SCRIPTS.all().map(|s| s.sha) {
            assert!(
                sha.iter()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            );
        }
        let shas: std::collections::HashSet<_> = SCRIPTS.all().map(|s| s.sha).into_iter().collect();
        assert_eq!(shas.len(), SCRIPTS.all().len());
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
        assert!(buf.windows(40).any(|w| w == SCRIPTS.release.sha));
        buf.clear();
        Op::Extend { ttl_ms: 7 }.encode(&mut buf, b"k", &token, Form::Source);
        assert!(buf.starts_with(b"*6\r\n$4\r\nEVAL\r\n"));
        assert!(buf.ends_with(b"$1\r\n7\r\n"));
    }

    /// The hot-path encoder writes exactly what the generic one would.
    #[test]
    fn fast_encoding_matches_the_generic_encoder() {
        let token = Token::random().expect("rng");
        let other = Token::random().expect("rng");
        let keys: [&[u8]; 4] = [b"k", b"", &[b'x'; 300], b"a\r\n\0\xff"];
        for key in keys {
            for form in [Form::Sha, Form::Source] {
                let full = form == Form::Source;
                for ttl_ms in [1, 10_000, 99_999_999, 100_000_000, u64::MAX] {
                    let t = token.as_bytes();
                    let n = itoa::Buffer::new().format(ttl_ms).to_owned();
                    let pick = |script: &'static Script| -> &'static [u8] {
                        if full {
                            script.source.as_bytes()
                        } else {
                            &script.sha
                        }
                    };
                    let scripts = &*SCRIPTS;
                    let verb: &[u8] = if full { b"EVAL" } else { b"EVALSHA" };
                    let fair_keys: Vec<Vec<u8>> =
                        FAIR_SUFFIXES.iter().map(|s| companion(key, s)).collect();
                    let lease = FAIR_LEASE_MS.to_string();
                    let fair = |script, extra: &[&'static [u8]]| -> Vec<Vec<u8>> {
                        let mut args: Vec<Vec<u8>> = vec![
                            verb.to_vec(),
                            pick(script).to_vec(),
                            b"4".to_vec(),
                            key.to_vec(),
                        ];
                        args.extend(fair_keys.iter().cloned());
                        args.push(t.to_vec());
                        args.extend(extra.iter().map(|a| a.to_vec()));
                        args
                    };
                    let mut fair_acquire = fair(&scripts.fair_acquire, &[]);
                    fair_acquire.extend([
                        n.as_bytes().to_vec(),
                        lease.clone().into_bytes(),
                        b"1".to_vec(),
                    ]);
                    let cases: Vec<(Op, Vec<Vec<u8>>)> = vec![
                        (
                            Op::Acquire { ttl_ms },
                            [b"SET", key, t, b"NX", b"PX", n.as_bytes()]
                                .map(<[u8]>::to_vec)
                                .to_vec(),
                        ),
                        (
                            Op::AcquireOrPttl { ttl_ms },
                            [
                                verb,
                                pick(&scripts.acquire_or_pttl),
                                b"1",
                                key,
                                t,
                                n.as_bytes(),
                            ]
                            .map(<[u8]>::to_vec)
                            .to_vec(),
                        ),
                        (
                            Op::Release,
                            [verb, pick(&scripts.release), b"1", key, t]
                                .map(<[u8]>::to_vec)
                                .to_vec(),
                        ),
                        (
                            Op::Handoff { ttl_ms, to: &other },
                            [
                                verb,
                                pick(&scripts.handoff),
                                b"1",
                                key,
                                t,
                                other.as_bytes(),
                                n.as_bytes(),
                            ]
                            .map(<[u8]>::to_vec)
                            .to_vec(),
                        ),
                        (
                            Op::Extend { ttl_ms },
                            [verb, pick(&scripts.extend), b"1", key, t, n.as_bytes()]
                                .map(<[u8]>::to_vec)
                                .to_vec(),
                        ),
                        (
                            Op::FairAcquire {
                                ttl_ms,
                                enqueue: true,
                            },
                            fair_acquire,
                        ),
                        (Op::FairLeave, fair(&scripts.fair_leave, &[])),
                    ];
                    for (op, args) in cases {
                        let (mut fast, mut generic) = (BytesMut::new(), BytesMut::new());
                        op.encode(&mut fast, key, &token, form);
                        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                        resp::encode(&mut generic, &args);
                        assert_eq!(fast, generic, "{op:?}, {form:?}");
                        // Behind bytes already in the buffer (a cluster's
                        // `ASKING`), as behind nothing.
                        let mut behind = BytesMut::new();
                        resp::encode(&mut behind, &[b"ASKING"]);
                        let asking = behind.len();
                        op.encode(&mut behind, key, &token, form);
                        assert_eq!(&behind[asking..], &generic[..], "{op:?}, {form:?}, behind");
                    }
                }
            }
        }
    }

    /// A waiter's attempts report how long the holder keeps the key.
    #[test]
    fn waiting_votes_carry_the_holders_pttl() {
        for op in [
            Op::AcquireOrPttl { ttl_ms: 1 },
            Op::FairAcquire {
                ttl_ms: 1,
                enqueue: true,
            },
        ] {
            assert_eq!(op.interpret(Reply::Simple(b"OK")).ok(), Some(Vote::Yes));
            let held = |pttl| op.interpret(Reply::Integer(pttl)).ok();
            assert_eq!(
                held(1500),
                Some(Vote::No {
                    held_ms: Some(1500)
                })
            );
            assert_eq!(held(-2), Some(Vote::No { held_ms: Some(0) }));
            assert_eq!(held(-1), Some(Vote::NO));
            assert_eq!(held(-3), Some(Vote::NO));
            assert!(op.interpret(Reply::Nil).is_err());
        }
    }

    #[test]
    fn votes_and_failures() {
        let acquire = Op::Acquire { ttl_ms: 1 };
        assert_eq!(
            acquire.interpret(Reply::Simple(b"OK")).ok(),
            Some(Vote::Yes)
        );
        assert_eq!(acquire.interpret(Reply::Nil).ok(), Some(Vote::NO));
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
            Some(Vote::NO)
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
