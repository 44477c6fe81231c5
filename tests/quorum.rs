//! Redlock over 3 and 5 real redis-servers: the quorum rules, dead and hung
//! minorities, dead majorities, split votes, and clean-up.

mod support;

use std::time::{Duration, Instant};

use redlease::{Error, LockManager};
use support::RedisServer;

const TTL: Duration = Duration::from_secs(10);

fn manager(servers: &[RedisServer]) -> LockManager {
    support::manager_with(
        servers.iter().map(RedisServer::url),
        support::builder().io_timeout(Duration::from_millis(200)),
    )
}

/// The value at `key` on every node.
fn values(servers: &[RedisServer], key: &[u8]) -> Vec<Option<Vec<u8>>> {
    servers.iter().map(|s| s.get(key)).collect()
}

/// A granted lock holds the same token on every node, and release removes
/// it from all of them.
#[test]
fn lock_is_written_to_every_node() {
    for n in [3, 5] {
        let servers = RedisServer::start_many(n);
        let locks = manager(&servers);
        assert_eq!((locks.nodes(), locks.quorum()), (n, n / 2 + 1));
        let lock = locks.try_lock("k", TTL).expect("try_lock").expect("free");
        let vals = values(&servers, b"k");
        assert!(vals[0].is_some());
        assert!(vals.iter().all(|v| *v == vals[0]), "{vals:?}");
        assert!(locks.try_lock("k", TTL).expect("try_lock").is_none());
        assert!(lock.release().expect("release"));
        assert!(values(&servers, b"k").iter().all(Option::is_none));
    }
}

/// With a minority of nodes killed, locking, extending and releasing work.
#[test]
fn dead_minority_does_not_stop_the_lock() {
    for n in [3, 5] {
        let mut servers = RedisServer::start_many(n);
        let locks = manager(&servers);
        for server in &mut servers[..(n - 1) / 2] {
            server.kill();
        }
        let mut lock = locks.try_lock("k", TTL).expect("try_lock").expect("free");
        lock.extend(TTL).expect("extend");
        assert!(locks.try_lock("k", TTL).expect("try_lock").is_none());
        assert!(lock.release().expect("release"), "n = {n}");
    }
}

/// With a majority killed, the attempt fails with a no-quorum error that
/// says how many agreed, and no key of ours is left on the living nodes.
#[test]
fn dead_majority_is_no_quorum_and_leaves_nothing() {
    for n in [3, 5] {
        let mut servers = RedisServer::start_many(n);
        let locks = manager(&servers);
        let dead = n / 2 + 1;
        for server in &mut servers[..dead] {
            server.kill();
        }
        match locks.try_lock("k", TTL) {
            Err(Error::NoQuorum {
                agreed,
                nodes,
                cause,
            }) => {
                assert_eq!((agreed, nodes), (n - dead, n));
                assert!(cause.is_some());
            }
            other => panic!("n = {n}: expected NoQuorum, got {other:?}"),
        }
        for server in &servers[dead..] {
            assert_eq!(server.get(b"k"), None, "n = {n}: our key survived");
        }
    }
}

/// Another owner on a minority: we still win. On a majority: `None`, and
/// what we wrote on the rest is cleaned up.
#[test]
fn split_votes() {
    let servers = RedisServer::start_many(3);
    let locks = manager(&servers);
    let _: () = servers[0].cmd(&[b"SET", b"minority", b"other", b"PX", b"10000"]);
    let lock = locks
        .try_lock("minority", TTL)
        .expect("try_lock")
        .expect("2 of 3");
    assert_eq!(servers[0].get(b"minority").as_deref(), Some(&b"other"[..]));
    assert!(lock.release().expect("release"));
    assert_eq!(servers[0].get(b"minority").as_deref(), Some(&b"other"[..]));

    for s in &servers[..2] {
        let _: () = s.cmd(&[b"SET", b"majority", b"other", b"PX", b"10000"]);
    }
    assert!(locks.try_lock("majority", TTL).expect("try_lock").is_none());
    assert_eq!(
        servers[2].get(b"majority"),
        None,
        "our key was not cleaned up"
    );
    for s in &servers[..2] {
        assert_eq!(s.get(b"majority").as_deref(), Some(&b"other"[..]));
    }
}

/// Held on one node and failed on another of three: failures made the
/// difference, so it is an error, not "held".
#[test]
fn held_plus_failure_is_no_quorum_not_held() {
    let mut servers = RedisServer::start_many(3);
    let locks = manager(&servers);
    let _: () = servers[1].cmd(&[b"SET", b"k", b"other", b"PX", b"10000"]);
    servers[0].kill();
    match locks.try_lock("k", TTL) {
        Err(Error::NoQuorum {
            agreed: 1,
            nodes: 3,
            ..
        }) => {}
        other => panic!("expected NoQuorum with 1 of 3, got {other:?}"),
    }
    assert_eq!(servers[2].get(b"k"), None);
}

/// A hung minority (SIGSTOP) costs at most one I/O timeout, then is
/// skipped while its reconnect backoff lasts.
#[test]
fn hung_minority_costs_one_timeout() {
    let servers = RedisServer::start_many(3);
    let locks = manager(&servers);
    servers[0].signal("STOP");
    let started = Instant::now();
    let lock = locks.try_lock("k", TTL).expect("try_lock").expect("2 of 3");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // The next operation skips the hung node instead of waiting again.
    let started = Instant::now();
    assert!(lock.release().expect("release"));
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    servers[0].signal("CONT");
}

/// A script cache flushed on one node, and a node restarted empty, are
/// recovered without the caller noticing.
#[test]
fn script_flush_and_restart_on_one_node() {
    let mut servers = RedisServer::start_many(3);
    let locks = manager(&servers);
    let mut lock = locks.try_lock("k", TTL).expect("try_lock").expect("free");
    let _: () = servers[1].cmd(&[b"SCRIPT", b"FLUSH"]);
    lock.extend(TTL).expect("extend");
    servers[2].restart();
    // Two of three still hold it; the restarted one lost it.
    lock.extend(TTL).expect("extend with one node restarted");
    assert!(lock.release().expect("release"));
    assert!(values(&servers, b"k").iter().all(Option::is_none));
}

/// Keys expired early on a majority show up as a lost lock at the next
/// extend; on a minority they make no difference.
#[test]
fn early_expiry_minority_and_majority() {
    let servers = RedisServer::start_many(3);
    let locks = manager(&servers);
    let mut lock = locks.try_lock("k", TTL).expect("try_lock").expect("free");
    // A server clock jumping ahead, simulated: the key expires early there.
    let expire_now = |s: &RedisServer| {
        let _: () = s.cmd(&[b"PEXPIRE", b"k", b"1"]);
        support::eventually(Duration::from_secs(1), "the key expired", || {
            s.get(b"k").is_none()
        });
    };
    expire_now(&servers[0]);
    lock.extend(TTL).expect("extend with a minority expired");
    expire_now(&servers[1]);
    assert!(matches!(lock.extend(TTL), Err(Error::LockLost)));
    assert_eq!(lock.remaining(), Duration::ZERO);
    // What was renewed on the remaining node has been released.
    assert!(values(&servers, b"k").iter().all(Option::is_none));
}
