//! The properties the fuzz targets check, callable on any input. The fuzz
//! targets are one line each around these, and `tests/fuzz_seeds.rs` runs the
//! committed seed corpus through them under plain `cargo test`. A violated
//! property panics.

use std::net::Ipv4Addr;
use std::time::Duration;

use bytes::BytesMut;

use super::reference::{self, RefParse, RefReply};
use crate::LockManager;
use crate::error::Error;
use crate::primitives::script::{READERS_SUFFIX, Shaped, TURN_MS, TURN_SUFFIX};
use crate::resp::{self, MAX_REPLY, Parse, ReadBuf, Reply};
use crate::script::{Form, Op, SCRIPTS};
use crate::token::Token;

/// The decoder on arbitrary bytes: never panics, agrees exactly with the
/// reference decoder, and, fed in arbitrary chunks through a connection's
/// fixed buffer, yields the same replies and never holds more than its cap.
pub fn decode(data: &[u8]) {
    agrees_with_reference(resp::parse, data);
    chunked(data);
}

type Decoder = for<'a> fn(&'a [u8]) -> Result<Parse<'a>, resp::ProtocolError>;

fn agrees_with_reference(parse: Decoder, data: &[u8]) {
    let ours = parse(data);
    let theirs = reference::parse(data);
    match (&ours, &theirs) {
        (Ok(Parse::Complete(reply, used)), RefParse::Complete(expected, expected_used)) => {
            assert_eq!(used, expected_used, "consumed length differs on {data:?}");
            assert!(
                same(reply, expected),
                "{reply:?} != {expected:?} on {data:?}"
            );
        }
        (Ok(Parse::Incomplete), RefParse::Incomplete) | (Err(_), RefParse::Invalid) => {}
        _ => panic!("decoders disagree on {data:?}: ours {ours:?}, reference {theirs:?}"),
    }
}

/// Feeds `data` through a `ReadBuf` in chunks whose sizes come from the data
/// itself, like a socket delivering it piecemeal.
fn chunked(data: &[u8]) {
    let mut buf = ReadBuf::new();
    let mut fed = 0;
    let mut consumed = 0;
    let mut step = 0usize;
    loop {
        // Take every whole reply buffered so far, checking each against the
        // reference decoder at the same offset.
        loop {
            let taken = buf.take(&mut |reply: Reply<'_>| owned(reply));
            match taken {
                Ok(Some(reply)) => match reference::parse(&data[consumed..]) {
                    RefParse::Complete(expected, used) => {
                        assert!(
                            same_owned(&reply, &expected),
                            "chunked: {reply:?} != {expected:?}"
                        );
                        consumed += used;
                    }
                    other => panic!("chunked: ours decoded {reply:?}, reference {other:?}"),
                },
                Ok(None) => break,
                Err(_) => {
                    // Invalid prefixes stay invalid however they continue.
                    assert_eq!(
                        reference::parse(&data[consumed..]),
                        RefParse::Invalid,
                        "chunked: ours refused what the reference accepts"
                    );
                    return;
                }
            }
        }
        if fed == data.len() {
            return;
        }
        let spare = match buf.spare() {
            Ok(spare) => spare,
            Err(_) => {
                // Full of one incomplete reply: only possible past the cap.
                assert!(fed - consumed >= MAX_REPLY, "buffer refused below its cap");
                return;
            }
        };
        assert!(spare.len() <= MAX_REPLY, "the buffer grew past its cap");
        let want = 1 + usize::from(data[step % data.len()]) * 37;
        step += 1;
        let n = want.min(spare.len()).min(data.len() - fed);
        spare[..n].copy_from_slice(&data[fed..fed + n]);
        buf.filled(n);
        fed += n;
    }
}

/// An owned copy of a reply, so it can outlive the buffer it came from.
#[derive(Debug)]
enum Owned {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Integer(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(usize),
}

fn owned(reply: Reply<'_>) -> Owned {
    match reply {
        Reply::Simple(s) => Owned::Simple(s.to_vec()),
        Reply::Error(s) => Owned::Error(s.to_vec()),
        Reply::Integer(n) => Owned::Integer(n),
        Reply::Bulk(s) => Owned::Bulk(s.to_vec()),
        Reply::Nil => Owned::Nil,
        Reply::Array(n) => Owned::Array(n),
    }
}

fn same(ours: &Reply<'_>, theirs: &RefReply) -> bool {
    same_owned(&owned(*ours), theirs)
}

fn same_owned(ours: &Owned, theirs: &RefReply) -> bool {
    match (ours, theirs) {
        (Owned::Simple(a), RefReply::Simple(b))
        | (Owned::Error(a), RefReply::Error(b))
        | (Owned::Bulk(a), RefReply::Bulk(b)) => a == b,
        (Owned::Integer(a), RefReply::Integer(b)) => a == b,
        (Owned::Nil, RefReply::Nil) => true,
        (Owned::Array(n), RefReply::Array(items)) => *n == items.len(),
        _ => false,
    }
}

/// Our commands for arbitrary keys and TTLs: encode, then decode with the
/// reference decoder, and find exactly the arguments we meant to send.
pub fn roundtrip(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (ttl_bytes, key) = rest.split_at(rest.len().min(8));
    let mut ttl = [0u8; 8];
    ttl[..ttl_bytes.len()].copy_from_slice(ttl_bytes);
    let ttl_ms = u64::from_le_bytes(ttl);
    let token = Token::random().expect("os random source");
    let full_script = selector & 0x80 != 0;
    let form = if full_script { Form::Source } else { Form::Sha };
    let enqueue = selector & 0x40 != 0;
    let to = Token::random().expect("os random source");
    // The batched renewal: the key cut in two, renewed with both tokens.
    let (left, right) = key.split_at(key.len() / 2);
    let mut batch = crate::script::RenewArgs::default();
    batch.push(left, &token, ttl_ms);
    batch.push(right, &to, ttl_ms / 2);
    let half_ttl = (ttl_ms / 2).to_string().into_bytes();
    let replicas_text = (ttl_ms % 7).to_string().into_bytes();
    // A multi-key lock over the two halves of the key.
    let mut multi_keys = BytesMut::new();
    crate::resp::put_bulk(&mut multi_keys, left);
    crate::resp::put_bulk(&mut multi_keys, right);
    let permits = (ttl_ms % 1000) as u32;
    let op = match selector % 20 {
        0 => Op::Acquire { ttl_ms },
        1 => Op::Release,
        2 => Op::Extend { ttl_ms },
        3 => Op::AcquireOrPttl { ttl_ms },
        4 => Op::FairAcquire { ttl_ms, enqueue },
        5 => Op::Handoff { ttl_ms, to: &to },
        6 => Op::FairLeave,
        7 => Op::FencedAcquire {
            ttl_ms,
            pttl: enqueue,
        },
        8 => Op::FenceWrite { fence: ttl_ms },
        9 => Op::WaitReplicas {
            replicas: (ttl_ms % 7) as u32,
            timeout_ms: ttl_ms,
        },
        10 => batch.op(),
        11 => Op::Shaped(Shaped::SemAcquire { ttl_ms, permits }),
        12 => Op::Shaped(Shaped::MemberExtend {
            ttl_ms,
            readers: enqueue,
        }),
        13 => Op::Shaped(Shaped::MemberRelease { readers: enqueue }),
        14 => Op::Shaped(Shaped::ReadAcquire { ttl_ms }),
        15 => Op::Shaped(Shaped::WriteAcquire {
            ttl_ms,
            waits: enqueue,
        }),
        16 => Op::Shaped(Shaped::TurnLeave),
        17 => Op::Shaped(Shaped::MultiAcquire {
            ttl_ms,
            keys: &multi_keys,
            count: 2,
        }),
        18 => Op::Shaped(Shaped::MultiExtend {
            ttl_ms,
            keys: &multi_keys,
            count: 2,
        }),
        _ => Op::Shaped(Shaped::MultiRelease {
            keys: &multi_keys,
            count: 2,
        }),
    };
    let mut buf = BytesMut::new();
    op.encode(&mut buf, key, &token, form);

    let ttl_text = ttl_ms.to_string().into_bytes();
    let lease = crate::script::FAIR_LEASE_MS.to_string().into_bytes();
    let scripts = &*SCRIPTS;
    let script = match op {
        Op::Acquire { .. } | Op::Release => &scripts.release,
        Op::Extend { .. } => &scripts.extend,
        Op::AcquireOrPttl { .. } => &scripts.acquire_or_pttl,
        Op::Handoff { .. } => &scripts.handoff,
        Op::FairAcquire { .. } => &scripts.fair_acquire,
        Op::FairLeave => &scripts.fair_leave,
        Op::ExtendMany { .. } => &scripts.extend_many,
        Op::FencedAcquire { .. } => &scripts.fenced_acquire,
        Op::FenceWrite { .. } => &scripts.fence_write,
        // Not a script: its expected command is below.
        Op::WaitReplicas { .. } => &scripts.release,
        Op::Shaped(shaped) => {
            let p = &scripts.shaped;
            match shaped {
                Shaped::SemAcquire { .. } => &p.sem_acquire,
                Shaped::MemberExtend { .. } => &p.member_extend,
                Shaped::MemberRelease { .. } => &p.member_release,
                Shaped::ReadAcquire { .. } => &p.read_acquire,
                Shaped::WriteAcquire { .. } => &p.write_acquire,
                Shaped::TurnLeave => &p.turn_leave,
                Shaped::MultiAcquire { .. } => &p.multi_acquire,
                Shaped::MultiExtend { .. } => &p.multi_extend,
                Shaped::MultiRelease { .. } => &p.multi_release,
            }
        }
    };
    let (verb, first): (&[u8], &[u8]) = if full_script {
        (b"EVAL", script.source.as_bytes())
    } else {
        (b"EVALSHA", &script.sha)
    };
    let fair_keys: Vec<Vec<u8>> = crate::script::FAIR_SUFFIXES
        .iter()
        .map(|suffix| crate::script::companion(key, suffix))
        .collect();
    let fence_key = crate::script::companion(key, crate::script::FENCE_SUFFIX);
    let readers = crate::script::companion(key, READERS_SUFFIX);
    let turn = crate::script::companion(key, TURN_SUFFIX);
    let permits_text = permits.to_string().into_bytes();
    let turn_ms = TURN_MS.to_string().into_bytes();
    let set: &[u8] = if enqueue { &readers } else { key };
    let t = token.as_bytes();
    let expected: Vec<&[u8]> = match op {
        Op::Acquire { .. } => vec![b"SET", key, t, b"NX", b"PX", &ttl_text],
        Op::Release => vec![verb, first, b"1", key, t],
        Op::Extend { .. } | Op::AcquireOrPttl { .. } => vec![verb, first, b"1", key, t, &ttl_text],
        Op::Handoff { .. } => vec![verb, first, b"1", key, t, to.as_bytes(), &ttl_text],
        Op::FairAcquire { .. } | Op::FairLeave => {
            let mut args = vec![verb, first, b"4", key];
            args.extend(fair_keys.iter().map(Vec::as_slice));
            args.push(t);
            if let Op::FairAcquire { enqueue, .. } = op {
                args.extend([&ttl_text[..], &lease, if enqueue { b"1" } else { b"0" }]);
            }
            args
        }
        Op::FencedAcquire { .. } | Op::FenceWrite { .. } => {
            let mut args = vec![verb, first, b"2", key, &fence_key, t, &ttl_text];
            if let Op::FencedAcquire { pttl, .. } = op {
                args.push(if pttl { b"1" } else { b"0" });
            }
            args
        }
        Op::WaitReplicas { .. } => vec![b"WAIT", &replicas_text, &ttl_text],
        Op::Shaped(shaped) => match shaped {
            Shaped::SemAcquire { .. } => vec![verb, first, b"1", key, t, &ttl_text, &permits_text],
            Shaped::MemberExtend { .. } => vec![verb, first, b"1", set, t, &ttl_text],
            Shaped::MemberRelease { .. } => vec![verb, first, b"1", set, t, key],
            Shaped::ReadAcquire { .. } => {
                vec![verb, first, b"3", key, &readers, &turn, t, &ttl_text]
            }
            Shaped::WriteAcquire { waits, .. } => vec![
                verb,
                first,
                b"3",
                key,
                &readers,
                &turn,
                t,
                &ttl_text,
                &turn_ms,
                if waits { b"1" } else { b"0" },
            ],
            Shaped::TurnLeave => vec![verb, first, b"1", &turn, t, key],
            Shaped::MultiAcquire { .. } | Shaped::MultiExtend { .. } => {
                vec![verb, first, b"2", left, right, t, &ttl_text]
            }
            Shaped::MultiRelease { .. } => vec![verb, first, b"2", left, right, t],
        },
        Op::ExtendMany { .. } => vec![
            verb,
            first,
            b"2",
            left,
            right,
            t,
            &ttl_text,
            to.as_bytes(),
            &half_ttl,
        ],
    };
    let expected = RefReply::Array(
        expected
            .into_iter()
            .map(|a| RefReply::Bulk(a.to_vec()))
            .collect(),
    );
    match reference::parse(&buf) {
        // The reference shares the reply cap, which a command with a long
        // key exceeds; such keys are refused before encoding anyway.
        RefParse::Invalid if key.len() > MAX_REPLY => {}
        RefParse::Complete(decoded, used) => {
            assert_eq!(used, buf.len(), "trailing bytes after the command");
            assert_eq!(decoded, expected, "the command does not say what we meant");
        }
        other => panic!("our command does not decode: {other:?}"),
    }
}

/// Builder settings and lock arguments from arbitrary bytes: building never
/// panics, and key/TTL validation accepts exactly what it documents.
pub fn builder(data: &[u8]) {
    let mut bytes = data.iter().copied();
    let mut next = |n: usize| -> u64 {
        (0..n).fold(0u64, |acc, _| {
            acc << 8 | u64::from(bytes.next().unwrap_or(0))
        })
    };
    let port = next(2) as u16;
    let db = next(1) as i64 - 16;
    let io_ms = next(2);
    let pool = next(2) as usize;
    let max_ttl_ms = next(5);
    let max_key = next(3) as usize;
    let drift = next(2) as f64 / 65536.0;
    let ttl_us = next(6);
    let key_len = next(2) as usize;
    let connect_timeout = edge_duration(next(1), next(4));
    let pool_wait = edge_duration(next(1), next(4));
    let max_wait = edge_duration(next(1), next(4));
    let rest: Vec<u8> = bytes.collect();
    // Credentials from the bytes, percent-encoded so the URL stays a URL;
    // the host is always a loopback literal so nothing is resolved.
    let user: String = rest.iter().take(8).map(|b| format!("%{b:02X}")).collect();
    let url = format!("redis://{user}:pw@{}:{port}/{db}", Ipv4Addr::LOCALHOST);

    let built = LockManager::builder()
        .node(url.as_str())
        .connect_lazily(true)
        .io_timeout(Duration::from_millis(io_ms))
        .connect_timeout(connect_timeout)
        .pool_wait(pool_wait)
        .retry(crate::RetryPolicy::default().max_wait(max_wait))
        .pool_size(pool)
        .max_ttl(Duration::from_millis(max_ttl_ms))
        .max_key_len(max_key)
        .drift_factor(drift)
        .build();
    let manager = match built {
        Ok(manager) => manager,
        Err(Error::InvalidArgument(msg)) => {
            assert!(!msg.is_empty());
            return;
        }
        Err(e) => panic!("a lazy build can only refuse arguments, got {e:?}"),
    };
    let key = vec![b'k'; key_len];
    let ttl = Duration::from_micros(ttl_us);
    let limits = manager.limits();
    let ttl_ms = Duration::from_millis(ttl.as_millis() as u64);
    let ok = !key.is_empty()
        && key.len() <= limits.max_key_len
        && ttl <= limits.max_ttl
        && ttl_ms > manager.drift(ttl_ms);
    match manager.check(&key, ttl) {
        Ok(checked) => {
            assert!(ok, "accepted key of {key_len} bytes with ttl {ttl:?}");
            assert_eq!(
                checked, ttl_ms,
                "ttl not rounded down to whole milliseconds"
            );
        }
        Err(Error::InvalidArgument(_)) => {
            assert!(!ok, "refused key of {key_len} bytes with ttl {ttl:?}")
        }
        Err(e) => panic!("validation failed with a non-argument error: {e:?}"),
    }
}

/// A duration from fuzz bytes: one of the edge values a caller might pass
/// to mean "none" or "no bound", or a number of milliseconds.
fn edge_duration(selector: u64, ms: u64) -> Duration {
    match selector % 6 {
        0 => Duration::ZERO,
        1 => Duration::from_nanos(1),
        2 => Duration::MAX,
        3 => Duration::from_secs(u64::MAX),
        _ => Duration::from_millis(ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoder that accepts a bare LF as a line end: the kind of slip the
    /// differential check exists to catch.
    fn lenient(buf: &[u8]) -> Result<Parse<'_>, resp::ProtocolError> {
        match buf {
            [b'+', rest @ ..] => match rest.iter().position(|&b| b == b'\n') {
                Some(i) => Ok(Parse::Complete(Reply::Simple(&rest[..i]), i + 2)),
                None => Ok(Parse::Incomplete),
            },
            _ => resp::parse(buf),
        }
    }

    #[test]
    fn the_differential_check_catches_a_lenient_decoder() {
        agrees_with_reference(lenient, b"+OK\r\n".split_at(3).0); // both incomplete: fine
        let caught = std::panic::catch_unwind(|| agrees_with_reference(lenient, b"+OK\n"));
        assert!(
            caught.is_err(),
            "a decoder accepting bare LF went unnoticed"
        );
    }

    #[test]
    fn chunked_feeding_sees_every_pipelined_reply() {
        // Would panic if a reply were lost or misread between chunks.
        chunked(b"+OK\r\n:1\r\n$3\r\nabc\r\n$-1\r\n*2\r\n:1\r\n:2\r\n");
    }
}
