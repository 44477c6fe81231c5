//! Scenario 8: server error replies (OOM, READONLY, NOPERM, BUSY) are that
//! node's failure, with the server's text, never "held by another owner";
//! and release still works under OOM.

mod support;

use std::time::Duration;

use redlease::Error;
use support::RedisServer;

const TTL: Duration = Duration::from_secs(10);

/// Expects a server error whose text starts with `prefix`.
fn server_error<T: std::fmt::Debug>(result: Result<T, Error>, prefix: &str) -> Error {
    match result {
        Err(e @ Error::Server { .. }) => {
            let Error::Server { message, .. } = &e else {
                unreachable!()
            };
            assert!(
                message.starts_with(prefix),
                "expected {prefix}, got {message}"
            );
            e
        }
        other => panic!("expected a {prefix} server error, got {other:?}"),
    }
}

/// OOM: a node out of memory refuses the SET; it is a retryable node
/// failure. A held lock can still be released (and extended) under OOM.
#[test]
fn oom() {
    let server = RedisServer::start();
    let locks = support::manager([server.url()]);
    let lock = locks
        .try_lock("held-before", TTL)
        .expect("try_lock")
        .expect("free");
    let _: () = server.cmd(&[b"CONFIG", b"SET", b"maxmemory-policy", b"noeviction"]);
    let _: () = server.cmd(&[b"CONFIG", b"SET", b"maxmemory", b"1"]);

    let e = server_error(locks.try_lock("k", TTL), "OOM");
    assert!(e.is_retryable());
    assert!(e.to_string().contains("OOM"), "{e}");
    assert!(
        lock.release().expect("release under OOM"),
        "release must work under OOM"
    );
    let _: () = server.cmd(&[b"CONFIG", b"SET", b"maxmemory", b"0"]);
}

/// One OOM node of three: the lock is still granted; two of three: a
/// no-quorum error whose cause is the OOM, not "held".
#[test]
fn oom_on_a_minority_and_a_majority() {
    let servers = RedisServer::start_many(3);
    let locks = support::manager(servers.iter().map(RedisServer::url));
    let oom = |s: &RedisServer| {
        let _: () = s.cmd(&[b"CONFIG", b"SET", b"maxmemory-policy", b"noeviction"]);
        let _: () = s.cmd(&[b"CONFIG", b"SET", b"maxmemory", b"1"]);
    };
    oom(&servers[0]);
    let lock = locks.try_lock("k", TTL).expect("try_lock").expect("2 of 3");
    assert!(lock.release().expect("release"));
    oom(&servers[1]);
    match locks.try_lock("k", TTL) {
        Err(Error::NoQuorum {
            agreed: 1,
            nodes: 3,
            cause: Some(cause),
        }) => {
            assert!(cause.to_string().contains("OOM"), "{cause}");
        }
        other => panic!("expected NoQuorum caused by OOM, got {other:?}"),
    }
    assert_eq!(
        servers[2].get(b"k"),
        None,
        "the one granted node was not cleaned up"
    );
}

/// READONLY: a replica refuses writes.
#[test]
fn readonly_replica() {
    let primary = RedisServer::start();
    let replica = RedisServer::start();
    let port = primary.port.to_string();
    let _: () = replica.cmd(&[b"REPLICAOF", b"127.0.0.1", port.as_bytes()]);
    let locks = support::manager([replica.url()]);
    let e = server_error(locks.try_lock("k", TTL), "READONLY");
    assert!(e.to_string().contains("read only replica"), "{e}");
}

/// NOPERM: a user without SET gets a clear, non-retryable error: at build
/// (which probes for it), and on first use when connecting lazily.
#[test]
fn noperm() {
    let server = RedisServer::start();
    let url = server.acl_user("noset", &["~*", "+@all", "-set"]);
    match support::builder().node(url.as_str()).build() {
        Err(e @ Error::Permission { .. }) => {
            assert!(e.to_string().contains("SET"), "{e}");
            assert!(!e.is_retryable());
        }
        other => panic!("expected a permission error at build, got {other:?}"),
    }
    let locks = support::builder()
        .node(url)
        .connect_lazily(true)
        .build()
        .expect("lazy build");
    let e = server_error(locks.try_lock("k", TTL), "NOPERM");
    assert!(
        !e.is_retryable(),
        "a permission error does not heal by waiting"
    );
    // `lock` gives up at once rather than retrying for its whole wait.
    let started = std::time::Instant::now();
    server_error(locks.lock("k", TTL), "NOPERM");
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// BUSY: a server stuck in a long script answers BUSY to everyone else.
#[test]
fn busy() {
    let server = RedisServer::start();
    let locks = support::manager([server.url()]);
    let _: () = server.cmd(&[b"CONFIG", b"SET", b"busy-reply-threshold", b"20"]);
    // Ends with an error once SCRIPT KILL stops it.
    let script = server.run_blocking(&["EVAL", "while true do end", "0"]);
    support::eventually(Duration::from_secs(2), "the script busy", || {
        server
            .raw(b"GET x", Duration::from_secs(1))
            .is_some_and(|reply| reply.starts_with("-BUSY"))
    });
    let e = server_error(locks.try_lock("k", TTL), "BUSY");
    assert!(e.is_retryable());
    let _: () = server.cmd(&[b"SCRIPT", b"KILL"]);
    script.join().expect("script thread");
    let lock = locks
        .try_lock("k", TTL)
        .expect("try_lock after SCRIPT KILL")
        .expect("free");
    assert!(lock.release().expect("release"));
}
