//! Single-node behaviour against a real redis-server: acquire, contend,
//! release, expire, extend, drop, recovery, and many threads on one key.

mod support;

use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use redlease::{Error, Lock, LockManager, RetryPolicy};
use support::RedisServer;

/// Takes a lock that must be free.
fn take(locks: &LockManager, key: &str, ttl: Duration) -> Lock {
    locks.try_lock(key, ttl).expect("try_lock").expect("free")
}

fn manager(server: &RedisServer) -> LockManager {
    support::manager([server.url()])
}

/// The manager and the guard have the auto traits users rely on.
#[test]
fn manager_is_send_sync_clone_and_lock_is_send() {
    fn send_sync_clone<T: Send + Sync + Clone>() {}
    fn send<T: Send>() {}
    send_sync_clone::<LockManager>();
    send::<Lock>();
}

/// A lock excludes a second taker until released, and then is free again.
#[test]
fn acquire_contend_release() {
    let server = RedisServer::start();
    let locks = manager(&server);
    let ttl = Duration::from_secs(10);

    let lock = locks
        .try_lock("orders:42", ttl)
        .expect("try_lock")
        .expect("free");
    assert!(lock.remaining() > Duration::from_secs(9));
    assert!(lock.remaining() <= ttl);
    assert_eq!(lock.key(), b"orders:42");
    assert_eq!(lock.attempts(), 1);
    let pttl = server.pttl(b"orders:42");
    assert!(pttl > 9_000 && pttl <= 10_000, "pttl {pttl}");

    assert!(
        locks
            .try_lock("orders:42", ttl)
            .expect("try_lock")
            .is_none()
    );
    // Another key is independent.
    let other = locks
        .try_lock("orders:43", ttl)
        .expect("try_lock")
        .expect("free");

    assert!(lock.release().expect("release"));
    assert_eq!(server.get(b"orders:42"), None);
    assert!(
        locks
            .try_lock("orders:42", ttl)
            .expect("try_lock")
            .is_some()
    );
    drop(other);
}

/// The value stored is a fresh 32-hex-digit token for each acquisition.
#[test]
fn token_is_fresh_per_acquisition() {
    let server = RedisServer::start();
    let locks = manager(&server);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let lock = take(&locks, "k", Duration::from_secs(5));
        let token = server.get(b"k").expect("key set");
        assert_eq!(token.len(), 32);
        assert!(token.iter().all(u8::is_ascii_hexdigit));
        assert!(seen.insert(token));
        assert!(lock.release().expect("release"));
    }
}

/// Releasing after expiry reports `false` and leaves the new holder's key
/// (value and TTL) alone.
#[test]
fn release_after_expiry_returns_false_and_spares_the_new_holder() {
    let server = RedisServer::start();
    let locks = manager(&server);
    let old = take(&locks, "k", Duration::from_millis(50));
    thread::sleep(Duration::from_millis(80));
    assert_eq!(old.remaining(), Duration::ZERO);

    let new = locks
        .try_lock("k", Duration::from_secs(30))
        .expect("try_lock")
        .expect("expired");
    let value = server.get(b"k");
    let pttl = server.pttl(b"k");
    assert!(!old.release().expect("release"));
    assert_eq!(server.get(b"k"), value);
    assert!(server.pttl(b"k") <= pttl && server.pttl(b"k") > pttl - 1000);
    assert!(new.release().expect("release"));
}

/// When another owner's value replaced ours, extend reports the lock lost
/// and release reports false; neither touches that value or its TTL.
#[test]
fn foreign_token_is_never_touched() {
    let server = RedisServer::start();
    let locks = manager(&server);
    let mut lock = take(&locks, "k", Duration::from_secs(10));
    let _: () = server.cmd(&[b"SET", b"k", b"someone-else", b"PX", b"20000"]);

    assert!(matches!(
        lock.extend(Duration::from_secs(60)),
        Err(Error::LockLost)
    ));
    assert_eq!(lock.remaining(), Duration::ZERO);
    assert_eq!(server.get(b"k").as_deref(), Some(&b"someone-else"[..]));
    assert!(server.pttl(b"k") <= 20_000 && server.pttl(b"k") > 15_000);
    // Once lost, always lost.
    assert!(matches!(
        lock.extend(Duration::from_secs(60)),
        Err(Error::LockLost)
    ));
    assert!(!lock.release().expect("release"));
    assert_eq!(server.get(b"k").as_deref(), Some(&b"someone-else"[..]));
}

/// Extend renews the TTL on the server and the validity in the guard.
#[test]
fn extend_grows_the_ttl() {
    let server = RedisServer::start();
    let locks = manager(&server);
    let mut lock = take(&locks, "k", Duration::from_secs(1));
    assert!(lock.remaining() <= Duration::from_secs(1));
    lock.extend(Duration::from_secs(30)).expect("extend");
    assert!(lock.remaining() > Duration::from_secs(29));
    assert!(server.pttl(b"k") > 29_000);
    // Extending can shorten too: it sets, it does not add.
    lock.extend(Duration::from_secs(5)).expect("extend");
    assert!(server.pttl(b"k") <= 5_000);
    assert!(lock.release().expect("release"));
}

/// Extending a lock that has expired by our clock reports it lost.
#[test]
fn extend_after_expiry_is_lock_lost() {
    let server = RedisServer::start();
    let locks = manager(&server);
    let mut lock = take(&locks, "k", Duration::from_millis(20));
    thread::sleep(Duration::from_millis(30));
    assert!(matches!(
        lock.extend(Duration::from_secs(5)),
        Err(Error::LockLost)
    ));
    assert_eq!(server.get(b"k"), None);
}

/// Dropping the guard releases the lock.
#[test]
fn drop_releases() {
    let server = RedisServer::start();
    let locks = manager(&server);
    {
        let _lock = take(&locks, "k", Duration::from_secs(10));
        assert!(server.get(b"k").is_some());
    }
    assert_eq!(server.get(b"k"), None);
    assert!(
        locks
            .try_lock("k", Duration::from_secs(10))
            .expect("try_lock")
            .is_some()
    );
}

/// Keys are bytes: CR, LF, NUL, 0xFF and Lua-looking text are just keys.
#[test]
fn binary_and_hostile_keys_work() {
    let server = RedisServer::start();
    let locks = manager(&server);
    let _: () = server.cmd(&[b"SET", b"canary", b"alive"]);
    let keys: [&[u8]; 5] = [
        b"a\r\nb",
        b"\0",
        b"\xff\xfe",
        b"$3",
        br#"x") redis.call("flushall") --"#,
    ];
    for key in keys {
        let lock = locks
            .try_lock(key, Duration::from_secs(5))
            .expect("try_lock")
            .expect("free");
        assert_eq!(server.get(key).map(|v| v.len()), Some(32), "{key:?}");
        // An owned Vec<u8> works as a key too.
        let owned: Vec<u8> = key.into();
        assert!(
            locks
                .try_lock(owned, Duration::from_secs(5))
                .expect("try_lock")
                .is_none()
        );
        assert!(lock.release().expect("release"), "{key:?}");
        assert_eq!(server.get(key), None);
    }
    assert_eq!(server.get(b"canary").as_deref(), Some(&b"alive"[..]));
}

/// `lock` waits for the holder to let go.
#[test]
fn lock_waits_for_the_holder() {
    let server = RedisServer::start();
    let locks = manager(&server);
    let held = take(&locks, "k", Duration::from_secs(10));
    let releaser = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        assert!(held.release().expect("release"));
    });
    let started = Instant::now();
    let lock = locks
        .lock("k", Duration::from_secs(10))
        .expect("lock after release");
    assert!(started.elapsed() >= Duration::from_millis(90));
    assert!(lock.attempts() > 1, "it had to wait: {lock:?}");
    releaser.join().expect("releaser");
    drop(lock);
}

/// `lock` gives up by attempts (`Held`) or by time (`WaitTimedOut`), and
/// `try_lock_for` returns `None` at its deadline.
#[test]
fn waiting_gives_up_as_configured() {
    let server = RedisServer::start();
    let locks = manager(&server);
    let _held = take(&locks, "k", Duration::from_secs(10));
    let ttl = Duration::from_secs(1);

    let started = Instant::now();
    let seed_like = RetryPolicy::fixed(Duration::from_millis(10)).max_attempts(4);
    match locks.lock_with("k", ttl, &seed_like) {
        Err(Error::Held { attempts: 4, .. }) => {}
        other => panic!("expected Held after 4 attempts, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(15));

    let started = Instant::now();
    let bounded =
        RetryPolicy::fixed(Duration::from_millis(10)).max_wait(Duration::from_millis(100));
    match locks.lock_with("k", ttl, &bounded) {
        Err(e @ Error::WaitTimedOut { .. }) => assert!(e.is_contended()),
        other => panic!("expected WaitTimedOut, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_secs(2),
        "{took:?}"
    );

    let started = Instant::now();
    let none = locks
        .try_lock_for("k", ttl, Duration::from_millis(100))
        .expect("try_lock_for");
    assert!(none.is_none());
    assert!(started.elapsed() >= Duration::from_millis(100));

    match locks.lock_with("k", ttl, &RetryPolicy::no_retry()) {
        Err(Error::Held { attempts: 1, .. }) => {}
        other => panic!("expected Held after 1 attempt, got {other:?}"),
    }
}

/// Many threads on one key: the recorded holding intervals never overlap.
#[test]
fn threads_on_one_key_never_overlap() {
    let server = RedisServer::start();
    let locks = manager(&server);
    let threads = 8;
    let rounds = 40;
    let intervals = Arc::new(Mutex::new(Vec::new()));
    let start = Arc::new(Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (locks, intervals, start) = (locks.clone(), intervals.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                for _ in 0..rounds {
                    let lock = locks
                        .lock_with(
                            "shared",
                            Duration::from_secs(5),
                            &RetryPolicy::fixed(Duration::from_millis(1))
                                .max_wait(Duration::from_secs(30)),
                        )
                        .expect("lock");
                    let begin = Instant::now();
                    thread::sleep(Duration::from_micros(200));
                    let end = Instant::now();
                    assert!(lock.remaining() > Duration::ZERO, "held past validity");
                    intervals.lock().expect("poisoned").push((begin, end));
                    assert!(lock.release().expect("release"));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let mut intervals = intervals.lock().expect("poisoned").clone();
    assert_eq!(intervals.len(), threads * rounds);
    intervals.sort();
    for pair in intervals.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlapping holders: {pair:?}");
    }
}

/// `SCRIPT FLUSH` is invisible to the caller: release and extend fall back
/// to sending the script, which also reloads it.
#[test]
fn script_flush_is_recovered() {
    let server = RedisServer::start();
    let locks = manager(&server);
    let mut lock = take(&locks, "k", Duration::from_secs(10));
    let _: () = server.cmd(&[b"SCRIPT", b"FLUSH"]);
    lock.extend(Duration::from_secs(20))
        .expect("extend after SCRIPT FLUSH");
    assert!(server.pttl(b"k") > 19_000);
    let _: () = server.cmd(&[b"SCRIPT", b"FLUSH"]);
    assert!(lock.release().expect("release after SCRIPT FLUSH"));
    assert_eq!(server.get(b"k"), None);
}

/// A restarted server (empty, no scripts, pooled connections dead) is
/// reconnected to without the caller seeing an error.
#[test]
fn restart_is_recovered() {
    let mut server = RedisServer::start();
    let locks = manager(&server);
    let lock = take(&locks, "k", Duration::from_secs(10));
    assert!(lock.release().expect("release"));
    server.restart();
    let lock = locks
        .try_lock("k", Duration::from_secs(10))
        .expect("try_lock after restart")
        .expect("free");
    assert!(server.get(b"k").is_some());
    assert!(lock.release().expect("release"));

    // A lock held across a restart is gone on the server: release says so.
    let lock = take(&locks, "k", Duration::from_secs(10));
    server.restart();
    assert!(!lock.release().expect("release after restart"));
}

/// A connection killed while idle in the pool is replaced transparently.
#[test]
fn killed_idle_connections_are_replaced() {
    let server = RedisServer::start();
    let locks = manager(&server);
    drop(
        locks
            .try_lock("k", Duration::from_secs(1))
            .expect("warm up"),
    );
    let killed: i64 = server.cmd(&[b"CLIENT", b"KILL", b"TYPE", b"normal", b"SKIPME", b"yes"]);
    assert!(killed >= 1);
    let lock = locks
        .try_lock("k", Duration::from_secs(5))
        .expect("try_lock after CLIENT KILL")
        .expect("free");
    assert!(lock.release().expect("release"));
}

/// Database selection from the URL is honoured.
#[test]
fn database_from_url() {
    let server = RedisServer::start();
    let locks = support::builder()
        .node(format!("{}/3", server.url()))
        .build()
        .expect("build");
    let lock = take(&locks, "k", Duration::from_secs(5));
    assert_eq!(server.get(b"k"), None, "db 0 must stay empty");
    let in_db3: Option<Vec<u8>> = {
        let mut con = redis::Client::open(format!("{}/3", server.url()))
            .expect("url")
            .get_connection()
            .expect("connect");
        redis::cmd("GET").arg("k").query(&mut con).expect("GET")
    };
    assert_eq!(in_db3.map(|v| v.len()), Some(32));
    assert!(lock.release().expect("release"));
}
