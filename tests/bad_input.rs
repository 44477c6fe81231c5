//! Bad input gets a clear error and loses nothing: bad keys and TTLs,
//! unreachable and duplicate nodes, wrong credentials, servers that are not
//! Redis.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use redlease::{Error, LockManager};
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
    let locks = LockManager::builder()
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
    match LockManager::builder().node(url.as_str()).build() {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains(&port.to_string()), "{e}"),
        other => panic!("expected an i/o error, got {other:?}"),
    }
    let locks = LockManager::builder()
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
    let result = LockManager::builder()
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
        match LockManager::builder().node(url.as_str()).build() {
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
    let locks = LockManager::builder()
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
    let locks = LockManager::builder()
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
        match LockManager::builder().node(("127.0.0.1", port)).build() {
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
        LockManager::builder()
            .node(("127.0.0.1", port))
            .io_timeout(Duration::from_millis(100))
            .build()
    });
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    drop(listener);
}
