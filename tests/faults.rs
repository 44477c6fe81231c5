//! The network and the servers misbehave; the library keeps its promises.
//! Faults come from the in-process proxy (`support/proxy.rs`: delay,
//! blackhole, lost replies, refused and cut connections) and from the
//! servers themselves (SIGSTOP, DEBUG SLEEP, restarts, CONFIG SET).
//! Every test that could hang runs under a time bound.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use redlease::{Error, LockManager, RetryPolicy};
use support::proxy::{FaultProxy, Mode};
use support::{RedisServer, within};

/// Servers, each behind its own proxy.
struct Cluster {
    servers: Vec<RedisServer>,
    proxies: Vec<FaultProxy>,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        let servers = RedisServer::start_many(n);
        let proxies = servers.iter().map(|s| FaultProxy::start(s.port)).collect();
        Cluster { servers, proxies }
    }

    /// A manager that reaches the servers through the proxies, its pools
    /// warm.
    fn manager(&self, io_timeout: Duration) -> LockManager {
        let locks = support::manager_with(
            self.proxies.iter().map(FaultProxy::url),
            support::builder()
                .io_timeout(io_timeout)
                .connect_timeout(Duration::from_millis(500)),
        );
        support::warm(&locks);
        locks
    }

    /// The value and PTTL of `key` on every server, looked at directly.
    fn snapshot(&self, key: &[u8]) -> Vec<(Option<Vec<u8>>, i64)> {
        self.servers
            .iter()
            .map(|s| (s.get(key), s.pttl(key)))
            .collect()
    }

    /// Waits up to a second for `key` to be gone from every server.
    fn absent_everywhere(&self, key: &[u8]) {
        support::eventually(Duration::from_secs(1), "the key gone everywhere", || {
            self.servers.iter().all(|s| s.get(key).is_none())
        });
    }
}

/// A manager straight to `servers`, its pools warm.
fn warm(servers: &[RedisServer], io_timeout: Duration) -> LockManager {
    let locks = support::manager_with(
        servers.iter().map(RedisServer::url),
        support::builder().io_timeout(io_timeout),
    );
    support::warm(&locks);
    locks
}

fn patient() -> RetryPolicy {
    RetryPolicy::fixed(Duration::from_millis(20)).max_wait(Duration::from_secs(5))
}

/// Checks the new holder's key is exactly as it was: same value, TTL only
/// counted down.
fn unchanged(before: &[(Option<Vec<u8>>, i64)], after: &[(Option<Vec<u8>>, i64)]) {
    for ((v0, t0), (v1, t1)) in before.iter().zip(after) {
        assert_eq!(v0, v1, "the new holder's value changed");
        assert!(
            *t1 <= *t0 && *t1 > *t0 - 2_000,
            "the new holder's ttl changed: {t0} -> {t1}"
        );
    }
}

/// Scenario 2: a lock that expired while held cannot be released or
/// extended over its new holder, on one node and on three.
#[test]
fn expired_holder_cannot_touch_the_new_holder() {
    for n in [1, 3] {
        let cluster = Cluster::new(n);
        let locks = cluster.manager(Duration::from_millis(200));
        for use_extend in [false, true] {
            let mut old = locks
                .try_lock("k", Duration::from_millis(60))
                .expect("try_lock")
                .expect("free");
            cluster.absent_everywhere(b"k");
            let new = locks
                .try_lock("k", Duration::from_secs(30))
                .expect("try_lock")
                .expect("expired");
            let before = cluster.snapshot(b"k");
            if use_extend {
                assert!(
                    matches!(old.extend(Duration::from_secs(30)), Err(Error::LockLost)),
                    "n = {n}"
                );
                assert!(!old.release().expect("release of a lost lock"));
            } else {
                assert!(!old.release().expect("release"), "n = {n}");
            }
            unchanged(&before, &cluster.snapshot(b"k"));
            assert!(new.release().expect("release"));
        }
    }
}

/// Scenario 4: the server applies SET but its reply is lost. The caller
/// never sees success; the clean-up, sent behind the SET on the same
/// connection, removes the key; once replies flow again, the next attempt
/// gets the lock (the client did not lock itself out).
#[test]
fn lost_replies_never_succeed_and_are_cleaned_up() {
    for n in [1, 3] {
        let cluster = Cluster::new(n);
        let locks = cluster.manager(Duration::from_millis(100));
        for proxy in &cluster.proxies[..n / 2 + 1] {
            proxy.set(Mode::DropReplies);
        }
        let result = within(Duration::from_secs(5), {
            let locks = locks.clone();
            move || locks.try_lock("k", Duration::from_secs(30))
        });
        // One node: its timeout; three: no quorum, for want of replies.
        assert!(
            match &result {
                Err(Error::Timeout { .. }) => n == 1,
                Err(Error::NoQuorum { agreed, cause, .. }) => {
                    *agreed == n - (n / 2 + 1)
                        && matches!(cause.as_deref(), Some(Error::Timeout { .. }))
                }
                _ => false,
            },
            "n = {n}: an attempt without replies must fail, got {result:?}"
        );
        cluster.absent_everywhere(b"k");
        for proxy in &cluster.proxies {
            proxy.set(Mode::Pass);
        }
        let lock = locks
            .lock_with("k", Duration::from_secs(30), &patient())
            .expect("not locked out");
        assert!(lock.release().expect("release"));
    }
}

/// Scenario 5: a minority hung in `DEBUG SLEEP` does not stop an
/// acquisition, which returns within about one I/O timeout.
#[test]
fn debug_sleep_minority_costs_one_timeout() {
    let servers = RedisServer::start_many(3);
    let locks = warm(&servers, Duration::from_millis(150));
    let sleeping = servers[0].run_blocking(&["DEBUG", "SLEEP", "1"]);
    support::eventually(Duration::from_secs(1), "DEBUG SLEEP under way", || {
        !servers[0].answers_ping_within(Duration::from_millis(20))
    });
    let started = Instant::now();
    let lock = locks
        .try_lock("k", Duration::from_secs(10))
        .expect("try_lock")
        .expect("2 of 3");
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "took {:?}",
        started.elapsed()
    );
    assert!(lock.release().expect("release"));
    sleeping.join().expect("sleeper");
}

/// Scenario 5: every node slower than the TTL. A quorum answers yes, but
/// too late: the result is an error, never a lock with no validity left,
/// and what was written expires or is cleaned up.
#[test]
fn all_nodes_slower_than_the_ttl_never_yield_an_expired_lock() {
    let cluster = Cluster::new(3);
    let locks = cluster.manager(Duration::from_millis(800));
    for proxy in &cluster.proxies {
        proxy.set(Mode::Delay(Duration::from_millis(60)));
    }
    let started = Instant::now();
    let result = locks.try_lock("k", Duration::from_millis(50));
    assert!(
        matches!(result, Err(Error::ValidityExpired { .. })),
        "expected ValidityExpired, got {result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    cluster.absent_everywhere(b"k");
}

/// Scenario 5: every node stopped (SIGSTOP). The attempt fails within its
/// bounds and never returns a lock.
#[test]
fn all_nodes_stopped_is_bounded_failure() {
    let servers = RedisServer::start_many(3);
    let locks = warm(&servers, Duration::from_millis(100));
    for s in &servers {
        s.signal("STOP");
    }
    let started = Instant::now();
    let result = within(Duration::from_secs(5), {
        let locks = locks.clone();
        move || locks.try_lock("k", Duration::from_secs(10))
    });
    let took = started.elapsed();
    for s in &servers {
        s.signal("CONT");
    }
    assert!(
        matches!(result, Err(Error::NoQuorum { agreed: 0, .. })),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    // The SETs were queued in the stopped servers with the clean-up behind
    // them on the same connections: once the servers resume, nothing stays.
    support::eventually(Duration::from_secs(2), "the clean-up ran", || {
        servers.iter().all(|s| s.get(b"k").is_none())
    });
}

/// Scenario 6: a lock lost on a majority of restarted nodes is reported as
/// lost at the next extend; a script cache flushed everywhere is invisible.
#[test]
fn restarts_on_a_majority_lose_the_lock() {
    let mut servers = RedisServer::start_many(3);
    let locks = support::builder()
        .nodes(servers.iter().map(RedisServer::url))
        .build()
        .expect("build");
    let mut lock = locks
        .try_lock("k", Duration::from_secs(10))
        .expect("try_lock")
        .expect("free");
    for s in &servers {
        let _: () = s.cmd(&[b"SCRIPT", b"FLUSH"]);
    }
    lock.extend(Duration::from_secs(10))
        .expect("extend after SCRIPT FLUSH everywhere");
    servers[0].restart();
    servers[1].restart();
    assert!(matches!(
        lock.extend(Duration::from_secs(10)),
        Err(Error::LockLost)
    ));
    assert_eq!(
        servers[2].get(b"k"),
        None,
        "the remaining node was not cleaned up"
    );
}

/// Scenario 7: connections the server closed while idle (`timeout 1`) are
/// replaced without the caller noticing.
#[test]
fn server_idle_timeout_is_transparent() {
    let server = RedisServer::start();
    let locks = support::builder()
        .node(server.url())
        .preconnect(4)
        .build()
        .expect("build");
    let _: () = server.cmd(&[b"CONFIG", b"SET", b"timeout", b"1"]);
    support::eventually(Duration::from_secs(5), "idle connections closed", || {
        server.connected_clients() == 1
    });
    for _ in 0..6 {
        let lock = locks
            .try_lock("k", Duration::from_secs(5))
            .expect("try_lock")
            .expect("free");
        assert!(lock.release().expect("release"));
    }
}

/// Scenario 7: connections cut by the network (proxy reset) are replaced
/// without the caller noticing.
#[test]
fn cut_connections_are_transparent() {
    let cluster = Cluster::new(3);
    let locks = cluster.manager(Duration::from_millis(200));
    for proxy in &cluster.proxies {
        proxy.reset_all();
    }
    let mut lock = locks
        .try_lock("k", Duration::from_secs(5))
        .expect("try_lock after reset")
        .expect("free");
    cluster.proxies[1].reset_all();
    lock.extend(Duration::from_secs(5))
        .expect("extend after reset");
    assert!(lock.release().expect("release"));
}

/// Scenario 7: 64 threads on a pool of 4 connections to a slow node: the
/// wait is bounded, the error says what happened, nothing deadlocks.
#[test]
fn pool_exhaustion_is_bounded() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port);
    let locks = support::builder()
        .node(proxy.url())
        .pool_size(4)
        .pool_wait(Duration::from_millis(50))
        .io_timeout(Duration::from_secs(1))
        .build()
        .expect("build");
    proxy.set(Mode::Delay(Duration::from_millis(100)));
    let results = within(Duration::from_secs(20), move || {
        let handles: Vec<_> = (0..64)
            .map(|i| {
                let locks = locks.clone();
                thread::spawn(move || {
                    locks
                        .try_lock(format!("k{i}"), Duration::from_secs(5))
                        .map(|l| l.is_some())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect::<Vec<_>>()
    });
    let exhausted = results
        .iter()
        .filter(|r| matches!(r, Err(e @ Error::PoolTimeout { .. }) if e.to_string().starts_with("pool exhausted")))
        .count();
    let granted = results.iter().filter(|r| matches!(r, Ok(true))).count();
    assert!(exhausted > 0, "no thread hit the pool bound: {results:?}");
    assert!(granted > 0, "no thread got a connection: {results:?}");
    assert_eq!(exhausted + granted, 64, "unexpected outcomes: {results:?}");
}

/// Scenario 9: unreachable endpoints fail within their timeouts: a closed
/// port and a refusing proxy at once, a blackhole after the I/O timeout, a
/// host that never completes the TCP handshake after the connect timeout.
#[test]
fn unreachable_endpoints_are_bounded() {
    let build = |port: u16| {
        let started = Instant::now();
        let result = support::builder()
            .node(("127.0.0.1", port))
            .connect_timeout(Duration::from_millis(200))
            .io_timeout(Duration::from_millis(150))
            .build();
        (result, started.elapsed())
    };

    let (closed, took) = build(support::free_port());
    assert!(
        matches!(closed, Err(Error::Io { .. })),
        "closed port: {closed:?}"
    );
    assert!(
        took < Duration::from_millis(150),
        "closed port took {took:?}"
    );

    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port);
    proxy.set(Mode::Refuse);
    let (refused, took) = build(proxy.port);
    assert!(
        matches!(refused, Err(Error::Io { .. })),
        "refused: {refused:?}"
    );
    assert!(took < Duration::from_millis(150), "refused took {took:?}");

    proxy.set(Mode::Blackhole);
    let (blackhole, took) = build(proxy.port);
    assert!(
        matches!(blackhole, Err(Error::Timeout { .. })),
        "blackhole: {blackhole:?}"
    );
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(1),
        "blackhole took {took:?}"
    );

    let (_listener, _filler, port) = support::connect_hangs();
    let (hung, took) = build(port);
    assert!(
        matches!(hung, Err(Error::Timeout { .. })),
        "hung handshake: {hung:?}"
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(1),
        "hung handshake took {took:?}"
    );

    // And a working proxy again once it passes traffic.
    proxy.set(Mode::Pass);
    assert!(build(proxy.port).0.is_ok());
}

/// Scenario 10: validity is ttl − elapsed − drift, measured by the
/// monotonic clock: 30 ms of latency each way comes off the lock's life.
#[test]
fn validity_accounts_for_elapsed_time_and_drift() {
    let cluster = Cluster::new(1);
    let locks = cluster.manager(Duration::from_millis(500));
    cluster.proxies[0].set(Mode::Delay(Duration::from_millis(30)));
    let ttl = Duration::from_millis(1000);
    let drift = Duration::from_millis(12); // 1% of 1 s + 2 ms
    let lock = locks.try_lock("k", ttl).expect("try_lock").expect("free");
    let remaining = lock.remaining();
    assert!(
        remaining <= ttl - Duration::from_millis(60) - drift,
        "remaining {remaining:?}"
    );
    assert!(
        remaining >= ttl - Duration::from_millis(300),
        "remaining {remaining:?}"
    );
    assert!(lock.release().expect("release"));
}

/// `CLIENT PAUSE … WRITE` stalls writes (SET, EVALSHA) but not the
/// connection: a paused minority is a timed-out minority; a paused single
/// node is a timeout, and the lock works again once the pause ends.
#[test]
fn client_pause_write() {
    let servers = RedisServer::start_many(3);
    let locks = warm(&servers, Duration::from_millis(100));
    let _: () = servers[0].cmd(&[b"CLIENT", b"PAUSE", b"400", b"WRITE"]);
    let lock = locks
        .try_lock("k", Duration::from_secs(5))
        .expect("try_lock")
        .expect("2 of 3");
    assert!(lock.release().expect("release"));

    let single = support::builder()
        .node(servers[1].url())
        .io_timeout(Duration::from_millis(100))
        .build()
        .expect("build");
    let _: () = servers[1].cmd(&[b"CLIENT", b"PAUSE", b"300", b"WRITE"]);
    assert!(matches!(
        single.try_lock("p", Duration::from_secs(5)),
        Err(Error::Timeout { .. })
    ));
    let lock = single
        .lock_with("p", Duration::from_secs(5), &patient())
        .expect("after the pause");
    assert!(lock.release().expect("release"));
}

/// The server applies a request, then the connection dies before the reply
/// reaches us (a kill or a reset at the worst moment), on a pooled
/// connection that looks merely stale. The request goes again on a new
/// connection and finds its own first effect: that must not be taken for
/// another owner's lock (which would leave our key behind, locking us out
/// for the TTL); a release sent again cannot tell, but leaves nothing.
#[test]
fn cut_after_the_server_acted() {
    for n in [1, 3] {
        let cluster = Cluster::new(n);
        let locks = cluster.manager(Duration::from_millis(200));
        let majority = &cluster.proxies[..n / 2 + 1];
        for proxy in majority {
            proxy.set(Mode::CutOnNextReply);
        }
        match locks.try_lock("k", Duration::from_secs(30)) {
            Ok(None) => panic!("n = {n}: our own first SET was taken for another owner's"),
            Ok(Some(lock)) => drop(lock),
            Err(_) => {}
        }
        cluster.absent_everywhere(b"k");

        let lock = locks
            .try_lock("r", Duration::from_secs(30))
            .expect("try_lock")
            .expect("free");
        for proxy in majority {
            proxy.set(Mode::CutOnNextReply);
        }
        let _ = lock.release();
        cluster.absent_everywhere(b"r");
        // And the next lock goes through at once: nothing of ours was left.
        let lock = locks
            .try_lock("k", Duration::from_secs(30))
            .expect("try_lock")
            .expect("free: no leftover of ours");
        assert!(lock.release().expect("release"));
    }
}
