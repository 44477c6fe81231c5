//! Bad input gets a clear error and loses nothing: bad keys and TTLs,
//! unreachable and duplicate nodes, wrong credentials, servers that are not
//! Redis.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use redlease::{Error, LockManager, LockManagerBuilder, RetryPolicy};
use support::RedisServer;

const TTL: Duration = Duration::from_secs(10);

fn invalid<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Err(Error::InvalidArgument(msg)) => msg.into(),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// Empty and oversized keys, and zero, sub-millisecond, too-short and
/// over-the-cap TTLs are refused before anything is sent; a lock already
/// held is unaffected and a refused `extend` leaves it as it was (a
/// `PEXPIRE 0` would have deleted the key).
#[test]
fn bad_keys_and_ttls_are_refused_and_lose_nothing() {
    let server = RedisServer::start();
    let locks = support::builder()
        .node(server.url())
        .max_key_len(100)
        .max_ttl(Duration::from_secs(60))
        .build()
        .expect("build");
    let mut lock = locks.try_lock("k", TTL).expect("try_lock").expect("free");
    let value = server.get(b"k");

    assert!(invalid(locks.try_lock("", TTL)).contains("empty"));
    assert!(invalid(locks.try_lock([b'x'; 101], TTL)).contains("over the 100 byte cap"));
    assert!(
        locks
            .try_lock([b'x'; 100], TTL)
            .expect("100 bytes is fine")
            .is_some()
    );
    for ttl in [
        Duration::ZERO,
        Duration::from_micros(999),
        Duration::from_millis(2),
    ] {
        assert!(
            invalid(locks.try_lock("other", ttl)).contains("no validity"),
            "{ttl:?}"
        );
        assert!(
            invalid(locks.lock("other", ttl)).contains("no validity"),
            "{ttl:?}"
        );
        assert!(invalid(lock.extend(ttl)).contains("no validity"), "{ttl:?}");
    }
    assert!(invalid(locks.try_lock("other", Duration::from_secs(61))).contains("cap"));
    assert!(invalid(locks.try_lock_for("other", Duration::MAX, TTL)).contains("cap"));
    assert!(invalid(lock.extend(Duration::from_secs(3600))).contains("cap"));

    assert_eq!(server.get(b"other"), None);
    assert_eq!(server.get(b"k"), value);
    assert!(server.pttl(b"k") > 9_000);
    assert!(lock.remaining() > Duration::from_secs(9));
    lock.extend(TTL).expect("still extendable");
    assert!(lock.release().expect("still ours"));
}

/// An unreachable node at build time: the eager default fails fast naming
/// the node; a lazy manager builds and reports the failure per call.
#[test]
fn unreachable_node_at_build() {
    let port = support::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    match support::builder().node(url.as_str()).build() {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains(&port.to_string()), "{e}"),
        other => panic!("expected an i/o error, got {other:?}"),
    }
    let locks = support::builder()
        .node(url.as_str())
        .connect_lazily(true)
        .build()
        .expect("lazy build");
    match locks.try_lock("k", TTL) {
        Err(Error::Io { .. } | Error::NodeDown { .. }) => {}
        other => panic!("expected a node failure, got {other:?}"),
    }
}

/// One server reachable under two addresses is refused: it would vote
/// twice. Caught by comparing run ids when the addresses differ.
#[test]
fn same_server_under_two_addresses_is_refused() {
    let server = RedisServer::start_with(&["--bind", "127.0.0.1", "127.0.0.2"]);
    let result = support::builder()
        .node(("127.0.0.1", server.port))
        .node(("127.0.0.2", server.port))
        .node(RedisServer::start().url())
        .build();
    let msg = invalid(result);
    assert!(msg.contains("same run_id"), "{msg}");
}

/// Wrong password, no password, and a right one for an ACL user: clear
/// errors, and the password never shows up in them.
#[test]
fn credentials() {
    const SENTINEL: &str = "s3ntinel-Passw0rd";
    let server = RedisServer::start_with(&["--requirepass", SENTINEL]);
    let wrong = format!("redis://:wrong-{SENTINEL}@127.0.0.1:{}", server.port);
    let none = format!("redis://127.0.0.1:{}", server.port);
    for url in [&wrong, &none] {
        match support::builder().node(url.as_str()).build() {
            Err(e @ Error::Auth { .. }) => {
                assert!(!e.is_retryable());
                for shown in [e.to_string(), format!("{e:?}")] {
                    assert!(!shown.contains(SENTINEL), "password leaked: {shown}");
                }
            }
            other => panic!("expected Auth, got {other:?}"),
        }
    }
    let right = format!("redis://:{SENTINEL}@127.0.0.1:{}", server.port);
    let locks = support::builder()
        .node(right.as_str())
        .build()
        .expect("right password");
    assert!(!format!("{locks:?}").contains(SENTINEL));
    let lock = locks.try_lock("k", TTL).expect("try_lock").expect("free");
    assert!(lock.release().expect("release"));

    // An ACL user with its own password.
    let acl: String = redis::cmd("ACL")
        .arg(&["SETUSER", "locker", "on", ">locker-pw", "~*", "+@all"])
        .query(
            &mut redis::Client::open(right.as_str())
                .expect("url")
                .get_connection()
                .expect("connect"),
        )
        .expect("ACL SETUSER");
    assert_eq!(acl, "OK");
    let user = format!("redis://locker:locker-pw@127.0.0.1:{}", server.port);
    let locks = support::builder()
        .node(user.as_str())
        .build()
        .expect("acl user");
    assert!(locks.try_lock("k", TTL).expect("try_lock").is_some());
}

/// Starts a fake server that answers every connection with `reply`.
fn fake_server(reply: &'static [u8]) -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(reply);
                thread::sleep(Duration::from_millis(500));
            });
        }
    });
    port
}

/// A server that is not Redis fails the build with a protocol error.
#[test]
fn garbage_server_is_a_protocol_error() {
    for reply in [
        &b"HTTP/1.1 400 Bad Request\r\n\r\n"[..],
        b"+OK\r\n+OK\r\n+OK\r\n",
        b"$-5\r\n",
    ] {
        let port = fake_server(reply);
        match support::builder().node(("127.0.0.1", port)).build() {
            Err(Error::Protocol { .. }) => {}
            other => panic!(
                "{:?}: expected Protocol, got {other:?}",
                String::from_utf8_lossy(reply)
            ),
        }
    }
}

/// A server that accepts and never answers times out at build.
#[test]
fn silent_server_times_out() {
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let result = support::within(Duration::from_secs(5), move || {
        support::builder()
            .node(("127.0.0.1", port))
            .io_timeout(Duration::from_millis(100))
            .build()
    });
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    drop(listener);
}

/// Durations at the edges: zero, the smallest, a millisecond, and the
/// largest values a caller could pass to mean "no bound".
const EDGE_DURATIONS: [Duration; 5] = [
    Duration::ZERO,
    Duration::from_nanos(1),
    Duration::from_millis(1),
    Duration::from_secs(u64::MAX),
    Duration::MAX,
];

/// Runs `f`, failing the test (with `what`) if it panics.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(out) => out,
        Err(_) => panic!("{what} panicked"),
    }
}

/// Every public method of a built manager and its guards, with the edge
/// durations; errors are fine, panics are not. The waits that could last
/// for ever are given a bound.
fn exercise(locks: &LockManager, what: &str) {
    no_panic(&format!("{what}: try_lock + release"), || {
        if let Ok(Some(lock)) = locks.try_lock("edge", TTL) {
            let _ = lock.release();
        }
    });
    no_panic(&format!("{what}: lock + drop"), || {
        drop(locks.lock("edge", TTL))
    });
    for d in EDGE_DURATIONS {
        no_panic(&format!("{what}: try_lock({d:?})"), || {
            drop(locks.try_lock("edge", d))
        });
        no_panic(&format!("{what}: try_lock_for(free, {d:?})"), || {
            drop(locks.try_lock_for("edge", TTL, d))
        });
        no_panic(&format!("{what}: extend({d:?}) + drop"), || {
            if let Ok(Some(mut lock)) = locks.try_lock("edge", TTL) {
                let _ = lock.extend(d);
                let _ = lock.remaining();
                drop(lock);
            }
        });
    }
    let held = locks.try_lock("held", TTL);
    for d in &EDGE_DURATIONS[..3] {
        no_panic(&format!("{what}: try_lock_for(held, {d:?})"), || {
            drop(locks.try_lock_for("held", TTL, *d))
        });
    }
    let bound = Duration::from_millis(5);
    for d in EDGE_DURATIONS {
        let policies = [
            RetryPolicy::fixed(d).max_wait(bound),
            RetryPolicy::exponential(d).max_wait(bound),
            RetryPolicy::exponential(d)
                .factor(f64::MAX)
                .max_delay(d)
                .max_wait(bound),
            RetryPolicy::exponential(Duration::from_millis(1))
                .factor(f64::INFINITY)
                .max_wait(bound),
            RetryPolicy::fixed(Duration::from_millis(1))
                .max_delay(d)
                .max_attempts(u32::MAX)
                .max_wait(bound),
            RetryPolicy::fixed(Duration::from_millis(1))
                .max_attempts(0)
                .max_wait(d),
        ];
        for policy in policies {
            no_panic(&format!("{what}: lock_with(held, {policy:?})"), || {
                drop(locks.lock_with("held", TTL, &policy))
            });
            no_panic(&format!("{what}: lock_with(free, {policy:?})"), || {
                drop(locks.lock_with("free", TTL, &policy))
            });
        }
        no_panic(&format!("{what}: lock_with(free, max_wait {d:?})"), || {
            drop(locks.lock_with("free", TTL, &RetryPolicy::default().max_wait(d)))
        });
    }
    drop(held);
}

/// Defect 4: no setting or argument value can make the library panic (in
/// `Drop`, a panic while unwinding aborts the process). Every duration and
/// count setter gets 0, 1 ns, 1 ms and the largest values: `build()`
/// either refuses the value with `InvalidArgument` or the manager works.
#[test]
fn edge_values_never_panic() {
    let server = RedisServer::start();
    let proxy = support::proxy::FaultProxy::start(server.port);
    type DurationSetter = fn(LockManagerBuilder, Duration) -> LockManagerBuilder;
    let duration_setters: [(&str, DurationSetter); 4] = [
        ("connect_timeout", |b, d| b.connect_timeout(d)),
        ("io_timeout", |b, d| b.io_timeout(d)),
        ("pool_wait", |b, d| b.pool_wait(d)),
        ("max_ttl", |b, d| b.max_ttl(d)),
    ];
    let mut built = 0;
    for (name, set) in duration_setters {
        for d in EDGE_DURATIONS {
            let what = format!("{name}({d:?})");
            let result = no_panic(&what, || {
                set(support::builder().node(server.url()), d).build()
            });
            match result {
                Ok(locks) => {
                    built += 1;
                    exercise(&locks, &what);
                }
                Err(Error::InvalidArgument(msg)) => assert!(msg.contains(name), "{what}: {msg}"),
                // A millisecond is a legal timeout, and may well pass.
                Err(Error::Timeout { .. }) if d == Duration::from_millis(1) => {}
                Err(e) => panic!("{what}: expected a manager or InvalidArgument, got {e:?}"),
            }
        }
        // A pool of one connection behind a slow proxy, two threads: one
        // waits for the pool with this setting's value.
        for d in EDGE_DURATIONS {
            let what = format!("{name}({d:?}), pool exhausted");
            let Ok(locks) = set(
                support::builder()
                    .node(proxy.url())
                    .pool_size(1)
                    .io_timeout(Duration::from_secs(1)),
                d,
            )
            .build() else {
                continue;
            };
            proxy.set(support::proxy::Mode::Delay(Duration::from_millis(20)));
            no_panic(&what, || {
                thread::scope(|s| {
                    for i in 0..2 {
                        let locks = &locks;
                        s.spawn(move || drop(locks.try_lock(format!("pool{i}"), TTL)));
                    }
                });
            });
            proxy.set(support::proxy::Mode::Pass);
        }
    }
    assert!(built >= 8, "too few settings were accepted: {built}");

    type CountSetter = fn(LockManagerBuilder, usize) -> LockManagerBuilder;
    let count_setters: [(&str, CountSetter); 3] = [
        ("pool_size", |b, n| b.pool_size(n)),
        ("preconnect", |b, n| b.preconnect(n)),
        ("max_key_len", |b, n| b.max_key_len(n)),
    ];
    for (name, set) in count_setters {
        for n in [0, 1, usize::from(u16::MAX), u32::MAX as usize, usize::MAX] {
            let what = format!("{name}({n})");
            match no_panic(&what, || {
                set(support::builder().node(server.url()), n).build()
            }) {
                Ok(locks) => exercise(&locks, &what),
                Err(Error::InvalidArgument(msg)) => assert!(msg.contains(name), "{what}: {msg}"),
                Err(e) => panic!("{what}: expected a manager or InvalidArgument, got {e:?}"),
            }
        }
    }
    for factor in [
        0.0,
        -0.0,
        f64::MIN_POSITIVE,
        0.4999,
        -1.0,
        f64::NAN,
        f64::INFINITY,
    ] {
        let what = format!("drift_factor({factor})");
        match no_panic(&what, || {
            support::builder()
                .node(server.url())
                .drift_factor(factor)
                .build()
        }) {
            Ok(locks) => exercise(&locks, &what),
            Err(Error::InvalidArgument(msg)) => assert!(msg.contains("drift_factor"), "{msg}"),
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
}
