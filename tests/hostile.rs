//! Security and hostile input: token quality, forged releases, a server that
//! sends garbage, credentials that must never leak (not in errors, not in
//! `Debug`, not in log records), least-privilege ACL users.

mod support;

use std::collections::HashSet;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use redlease::Error;
use redlease::internals::{BenchToken, RELEASE_SCRIPT};
use support::RedisServer;
use support::alloc::CountingAllocator;
use support::fake::{Answer, FakeRedis, redis_like};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const TTL: Duration = Duration::from_secs(10);

/// Every log record any test here produced, formatted.
static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        LOGS.lock()
            .expect("logs")
            .push(format!("{} {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&Capture).expect("install the capturing logger");
        log::set_max_level(log::LevelFilter::Trace);
    });
}

fn logs_contain(needle: &str) -> bool {
    LOGS.lock()
        .expect("logs")
        .iter()
        .any(|line| line.contains(needle))
}

/// 10⁶ tokens: all distinct, every bit position set about half the time,
/// and consecutive tokens differing in about half their bits, as they
/// would not if derived from a counter, the time or the pid.
#[test]
fn a_million_tokens_are_distinct_and_unstructured() {
    const N: usize = 1_000_000;
    let mut seen = HashSet::with_capacity(N);
    let mut ones = [0u32; 128];
    let mut previous = 0u128;
    let mut differing_bits = 0u64;
    for _ in 0..N {
        let token = BenchToken::random();
        let hex = std::str::from_utf8(token.as_bytes()).expect("hex");
        let bits = u128::from_str_radix(hex, 16).expect("hex digits");
        assert!(seen.insert(bits), "duplicate token");
        for (i, count) in ones.iter_mut().enumerate() {
            *count += ((bits >> i) & 1) as u32;
        }
        differing_bits += u64::from((bits ^ previous).count_ones());
        previous = bits;
    }
    // Binomial(10⁶, ½): σ = 500; 6σ bounds.
    for (i, count) in ones.iter().enumerate() {
        assert!(
            (497_000..=503_000).contains(count),
            "bit {i} set {count} times"
        );
    }
    let mean = differing_bits as f64 / N as f64;
    assert!(
        (63.9..=64.1).contains(&mean),
        "consecutive tokens differ in {mean} bits on average"
    );
}

/// A release with a guessed, empty, shortened, extended or NUL-laced token
/// deletes nothing; only the real token does.
#[test]
fn forged_releases_delete_nothing() {
    let server = RedisServer::start();
    let locks = support::builder()
        .node(server.url())
        .build()
        .expect("build");
    let lock = locks.try_lock("k", TTL).expect("try_lock").expect("free");
    let real = server.get(b"k").expect("locked");
    let mut forgeries: Vec<Vec<u8>> = vec![
        Vec::new(),
        real[..16].to_vec(),
        real[..31].to_vec(),
        [&real[..], b"\0"].concat(),
        [b"\0", &real[..]].concat(),
        real.to_ascii_uppercase(),
        b"0123456789abcdef0123456789abcdef".to_vec(),
    ];
    let mut flipped = real.clone();
    flipped[31] = if flipped[31] == b'0' { b'1' } else { b'0' };
    forgeries.push(flipped);
    let mut con = server.client();
    for forged in &forgeries {
        let deleted: i64 = redis::cmd("EVAL")
            .arg(RELEASE_SCRIPT)
            .arg(1)
            .arg("k")
            .arg(forged.as_slice())
            .query(&mut con)
            .expect("EVAL");
        assert_eq!(deleted, 0, "forged token {forged:?} deleted the lock");
        assert_eq!(server.get(b"k").as_ref(), Some(&real));
    }
    assert!(lock.release().expect("release"));
}

/// Starts a fake server that behaves like Redis except that it answers the
/// lock commands (SET or EVALSHA, per `on`) with `reply`; `build()`'s
/// permission probe, on a key of its own, gets normal answers.
fn hostile(on: &'static [u8], reply: Answer) -> FakeRedis {
    FakeRedis::start(move |command, _| {
        let name = command
            .first()
            .map(|c| c.to_ascii_uppercase())
            .unwrap_or_default();
        let probe = command
            .iter()
            .any(|arg| arg.starts_with(b"redlease:probe:"));
        if name == on && !probe {
            reply.clone()
        } else {
            redis_like(command)
        }
    })
}

/// Hostile replies to our commands: each is a protocol error or a timeout,
/// never a panic or a vote; memory stays bounded (the fixed read buffer is
/// all we hold); the connection is discarded (the next call reconnects).
#[test]
fn hostile_replies_are_refused_with_bounded_memory() {
    let nested = b"*1\r\n"
        .repeat(20)
        .into_iter()
        .chain(b":1\r\n".iter().copied())
        .collect::<Vec<u8>>();
    let cases: Vec<(&str, &'static [u8], Answer)> = vec![
        (
            "huge bulk",
            b"SET",
            Answer::Send(b"$10000000000\r\n".to_vec()),
        ),
        (
            "huge array",
            b"SET",
            Answer::Send(b"*2147483648\r\n".to_vec()),
        ),
        ("negative length", b"SET", Answer::Send(b"$-5\r\n".to_vec())),
        ("deep nesting", b"SET", Answer::Send(nested)),
        ("endless line", b"SET", Answer::Send(vec![b'+'; 20_000])),
        ("wrong type", b"SET", Answer::Send(b":1\r\n".to_vec())),
        (
            "half a reply, then close",
            b"SET",
            Answer::SendAndClose(b"$5\r\nab".to_vec()),
        ),
        (
            "one byte at a time",
            b"SET",
            Answer::Drip(b"+OK\r\n".to_vec(), Duration::from_millis(150)),
        ),
        ("silence", b"SET", Answer::Silence),
    ];
    for (what, on, reply) in cases {
        let fake = hostile(on, reply);
        let locks = support::builder()
            .node(fake.url())
            .io_timeout(Duration::from_millis(200))
            .build()
            .expect("the handshake is normal");
        let accepted = fake.accepted.load(std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let before = support::alloc::bytes_so_far();
        let result = locks.try_lock("k", TTL);
        let allocated = support::alloc::bytes_so_far() - before;
        assert!(
            matches!(
                result,
                Err(Error::Protocol { .. } | Error::Timeout { .. } | Error::Io { .. })
            ),
            "{what}: {result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what}: took {:?}",
            started.elapsed()
        );
        assert!(allocated < 64 * 1024, "{what}: allocated {allocated} bytes");
        // The connection was thrown away: later calls open another (once
        // the node's reconnect backoff is over, in the background).
        let deadline = Instant::now() + Duration::from_secs(3);
        while fake.accepted.load(std::sync::atomic::Ordering::Relaxed) == accepted {
            assert!(
                Instant::now() < deadline,
                "{what}: no new connection, the old one must have been reused"
            );
            let _ = locks.try_lock("k2", TTL);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// `+OK` to EVALSHA (release) is a protocol error, not "released".
#[test]
fn wrong_reply_type_to_release_is_a_protocol_error() {
    let fake = hostile(b"EVALSHA", Answer::Send(b"+OK\r\n".to_vec()));
    let locks = support::builder().node(fake.url()).build().expect("build");
    let lock = locks
        .try_lock("k", TTL)
        .expect("try_lock")
        .expect("the fake grants it");
    assert!(matches!(lock.release(), Err(Error::Protocol { .. })));
}

const SENTINEL: &str = "Sentinel-Pa55word-x9";

/// Wrong password, no password, and a user without a needed permission:
/// three clear, distinct errors; the password never shows in any error,
/// any `Debug` output or any log record, and neither does a whole token.
#[test]
fn credentials_and_tokens_never_leak() {
    capture_logs();
    let server = RedisServer::start_with(&["--requirepass", SENTINEL]);
    let port = server.port;
    let admin = format!("redis://:{SENTINEL}@127.0.0.1:{port}");

    let wrong = support::builder()
        .node(format!("redis://:not-{SENTINEL}@127.0.0.1:{port}"))
        .build();
    let missing = support::builder()
        .node(format!("redis://127.0.0.1:{port}"))
        .build();
    let (wrong, missing) = (
        wrong.expect_err("wrong password"),
        missing.expect_err("no password"),
    );
    assert!(
        matches!(&wrong, Error::Auth { message, .. } if message.starts_with("WRONGPASS")),
        "{wrong:?}"
    );
    assert!(
        matches!(&missing, Error::Auth { message, .. } if message.starts_with("NOAUTH")),
        "{missing:?}"
    );

    // A user that may lock but not run scripts: release fails, clearly.
    let mut con = redis::Client::open(admin.as_str())
        .expect("url")
        .get_connection()
        .expect("connect");
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "noscripts",
            "on",
            &format!(">{SENTINEL}"),
            "~*",
            "-@all",
            "+set",
            "+ping",
            "+script|load",
        ])
        .query(&mut con)
        .expect("ACL SETUSER");
    // `build()` probes for that and refuses the user at once...
    let refused = support::builder()
        .node(format!("redis://noscripts:{SENTINEL}@127.0.0.1:{port}"))
        .build()
        .expect_err("build as the limited user");
    assert!(
        matches!(&refused, Error::Permission { message, .. } if message.contains("EVALSHA")),
        "{refused:?}"
    );
    // ... and a lazy manager, which cannot probe, reports it at release.
    let limited = support::builder()
        .node(format!("redis://noscripts:{SENTINEL}@127.0.0.1:{port}"))
        .connect_lazily(true)
        .build()
        .expect("lazy build as the limited user");
    let lock = limited.try_lock("k", TTL).expect("try_lock").expect("free");
    let token = server_value(&mut con, "k");
    let denied = lock
        .release()
        .expect_err("release without EVALSHA permission");
    assert!(
        matches!(&denied, Error::Server { message, .. } if message.starts_with("NOPERM")),
        "{denied:?}"
    );

    // A lock whose release on drop fails (server gone) logs a warning.
    let working = support::builder()
        .node(admin.as_str())
        .build()
        .expect("build");
    let doomed = working
        .try_lock("doomed", TTL)
        .expect("try_lock")
        .expect("free");
    let doomed_token = server_value(&mut con, "doomed");
    drop(server);
    drop(doomed);
    assert!(
        logs_contain("when dropped failed"),
        "the failed release on drop was not logged"
    );

    for shown in [
        wrong.to_string(),
        format!("{wrong:?}"),
        missing.to_string(),
        format!("{missing:?}"),
        denied.to_string(),
        format!("{denied:?}"),
        refused.to_string(),
        format!("{refused:?}"),
        format!("{limited:?}"),
        format!("{working:?}"),
    ] {
        assert!(!shown.contains(SENTINEL), "password shown: {shown}");
        assert!(
            !shown.contains(&token) && !shown.contains(&doomed_token),
            "token shown: {shown}"
        );
    }
    assert!(!logs_contain(SENTINEL), "password in the logs");
    assert!(
        !logs_contain(&token) && !logs_contain(&doomed_token),
        "token in the logs"
    );
}

fn server_value(con: &mut redis::Connection, key: &str) -> String {
    redis::cmd("GET").arg(key).query(con).expect("GET")
}

/// A least-privilege user (only the commands the library needs, only its
/// own key prefix, no INFO) can lock, extend and release.
#[test]
fn least_privilege_user_works() {
    let server = RedisServer::start();
    let _: () = server.cmd(&[
        b"ACL",
        b"SETUSER",
        b"locker",
        b"on",
        b">locker-pw",
        b"resetkeys",
        b"~lock:*",
        b"-@all",
        b"+set",
        b"+get",
        b"+del",
        b"+pexpire",
        b"+evalsha",
        b"+eval",
        b"+script|load",
        b"+ping",
    ]);
    let locks = support::builder()
        .node(format!(
            "redis://locker:locker-pw@127.0.0.1:{}",
            server.port
        ))
        .build()
        .expect("build as the least-privilege user");
    let mut lock = locks
        .try_lock("lock:orders", TTL)
        .expect("try_lock")
        .expect("free");
    lock.extend(TTL).expect("extend");
    assert!(lock.release().expect("release"));
    // Outside its key pattern: a clear permission error.
    match locks.try_lock("elsewhere", TTL) {
        Err(Error::Server { message, .. }) => assert!(message.starts_with("NOPERM"), "{message}"),
        other => panic!("expected NOPERM, got {other:?}"),
    }
}
