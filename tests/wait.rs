//! Waiting without polling: a release wakes waiters in other processes (by
//! the servers' messages) and hands the lock to waiters of the same manager
//! (directly); holders that never publish cost at most their TTL or the
//! wake cap; lost messages are recovered; fair mode serves in order and
//! survives dead waiters; deadlines are kept. (Leaks: `wait_leaks.rs`, a
//! process of its own so that other tests' threads cannot blur the count.)
//!
//! Waits here use a wake cap far longer than the outcome they expect, so
//! that an outcome within the bound can only come from the mechanism under
//! test, not from the cap.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use redlease::{Error, RetryPolicy};
use support::RedisServer;

const TTL: Duration = Duration::from_secs(30);
/// Far beyond any outcome these tests expect.
const LONG_CAP: Duration = Duration::from_secs(10);
/// Generous for one wake-up and one round trip on a loaded machine, and
/// still far below `LONG_CAP` and `TTL`.
const PROMPTLY: Duration = Duration::from_secs(1);

/// Waits by being woken, never by the cap.
fn woken_only() -> RetryPolicy {
    RetryPolicy::exponential(Duration::from_millis(5))
        .wake_cap(LONG_CAP)
        .max_wait(Duration::from_secs(20))
}

const CHILD_ENV: &str = "REDLEASE_WAIT_CHILD";

/// A release in one process wakes a waiter in another at once: the waiter,
/// with a 10 s wake cap and the holder's TTL at 30 s, has the lock within a
/// second of the release.
#[test]
fn a_release_wakes_another_process() {
    let server = RedisServer::start();
    let locks = support::manager([server.url()]);
    let lock = locks.try_lock("x", TTL).expect("try_lock").expect("free");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_waiter", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_ENV, format!("{}|x", server.url()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the waiting process");
    support::eventually(Duration::from_secs(10), "the child listening", || {
        support::listeners(&server, "x") >= 1
    });
    let released = Instant::now();
    assert!(lock.release().expect("release"));
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let got = lines
        .find_map(|line| line.ok().filter(|l| l.contains("acquired after")))
        .expect("the child reports");
    let took = released.elapsed();
    assert!(child.wait().expect("child").success(), "{got}");
    assert!(took < PROMPTLY, "the other process waited {took:?}");
}

/// The waiting process of `a_release_wakes_another_process`.
#[test]
#[ignore = "run by a_release_wakes_another_process in a child process"]
fn child_waiter() {
    let spec = std::env::var(CHILD_ENV).expect("run only by a_release_wakes_another_process");
    let (url, key) = spec.split_once('|').expect("url|key");
    let locks = support::manager([url.to_string()]);
    let lock = locks
        .lock_with(key, TTL, &woken_only())
        .expect("woken, not timed out");
    println!("acquired after {} attempts", lock.attempts());
    assert!(lock.release().expect("release"));
}

/// A release by one thread hands the lock to another thread of the same
/// manager directly, without the server's message: here the user may not
/// publish or subscribe at all, so only the direct handoff can explain a
/// wait shorter than the 10 s cap.
#[test]
fn a_release_hands_over_to_a_waiting_thread() {
    let server = RedisServer::start();
    let _: () = server.cmd(&[
        b"ACL",
        b"SETUSER",
        b"deaf",
        b"on",
        b">pw",
        b"~*",
        b"resetchannels",
        b"+@all",
    ]);
    let locks = support::manager([format!("redis://deaf:pw@127.0.0.1:{}", server.port)]);
    for round in 0..20 {
        let lock = locks.try_lock("h", TTL).expect("try_lock").expect("free");
        let waiting = Barrier::new(2);
        let took = thread::scope(|s| {
            let waiter = s.spawn(|| {
                waiting.wait();
                let lock = locks.lock_with("h", TTL, &woken_only()).expect("lock");
                let got = Instant::now();
                assert!(lock.release().expect("release"));
                got
            });
            waiting.wait();
            // Let the waiter find the lock held and go to sleep.
            thread::sleep(Duration::from_millis(30));
            let released = Instant::now();
            assert!(lock.release().expect("release"));
            waiter
                .join()
                .expect("waiter")
                .saturating_duration_since(released)
        });
        assert!(took < PROMPTLY, "round {round}: the waiter waited {took:?}");
    }
}

/// A handoff between threads never leaves the key free: a rival polling as
/// fast as it can while one thread hands the lock to another never gets
/// in. (Twenty rounds; in each the waiter is the key's only one, so the
/// release is a handoff, not one of the real releases that come every 8th
/// handoff in a row.)
#[test]
fn a_handoff_leaves_no_gap() {
    let server = RedisServer::start();
    let locks = support::manager([server.url()]);
    let rival = support::manager([server.url()]);
    for round in 0..20 {
        let lock = locks.try_lock("g", TTL).expect("try_lock").expect("free");
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            let waiter = s.spawn(|| locks.lock_with("g", TTL, &woken_only()).expect("lock"));
            support::eventually(Duration::from_secs(5), "the waiter listening", || {
                support::listeners(&server, "g") == 1
            });
            let rival = s.spawn(|| {
                let mut wins = 0;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(Some(theirs)) = rival.try_lock("g", TTL) {
                        wins += 1;
                        drop(theirs);
                    }
                }
                wins
            });
            thread::sleep(Duration::from_millis(5));
            assert!(lock.release().expect("release"));
            let handed = waiter.join().expect("waiter");
            stop.store(true, Ordering::Relaxed);
            let wins = rival.join().expect("rival");
            assert_eq!(wins, 0, "round {round}: the rival got in during a handoff");
            assert!(handed.release().expect("release"));
        });
    }
}

/// Many threads passing one key around by handoff keep mutual exclusion.
#[test]
fn handoffs_keep_mutual_exclusion() {
    let server = RedisServer::start();
    let oracle = support::oracle::Oracle::new("handoff");
    let locks = support::manager_with([server.url()], support::builder().pool_size(16));
    let verdict = oracle.run(8, 40, Duration::from_micros(200), |_| {
        Some(locks.lock_with("g", TTL, &woken_only()).expect("lock"))
    });
    println!("{verdict:?}");
    assert!(verdict.clean(), "{verdict:?}");
    assert_eq!(verdict.sections, 320);
}

/// A holder that never publishes (another Redlock client, `SET NX PX` and
/// plain `DEL`): a waiter gets the lock as the key expires (it learned the
/// TTL in the same round trip as the attempt that found it held), or
/// within the wake cap of a silent `DEL`.
#[test]
fn holders_that_never_publish_cost_at_most_their_ttl_or_the_cap() {
    let server = RedisServer::start();
    let locks = support::manager([server.url()]);
    let cap = Duration::from_millis(50);
    let policy = RetryPolicy::default().wake_cap(cap);

    // Expiry: a 400 ms foreign key; the waiter's sleeps are capped at 50 ms
    // anyway, so the bound is 400 ms plus a cap plus scheduling.
    let _: () = server.cmd(&[b"SET", b"e", b"foreign", b"NX", b"PX", b"400"]);
    let started = Instant::now();
    let lock = locks.lock_with("e", TTL, &policy).expect("lock");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_millis(700),
        "waited {took:?} for a 400 ms key"
    );
    drop(lock);

    // A silent early release: DEL at 100 ms of a 30 s key.
    let _: () = server.cmd(&[b"SET", b"d", b"foreign", b"NX", b"PX", b"30000"]);
    let deleter = thread::spawn({
        let url = server.url();
        move || {
            thread::sleep(Duration::from_millis(100));
            let mut con = redis::Client::open(url)
                .expect("url")
                .get_connection()
                .expect("con");
            let _: () = redis::cmd("DEL").arg("d").query(&mut con).expect("DEL");
            Instant::now()
        }
    });
    let lock = locks.lock_with("d", TTL, &policy).expect("lock");
    let got = Instant::now();
    let deleted = deleter.join().expect("deleter");
    let late = got.saturating_duration_since(deleted);
    assert!(
        late < cap + Duration::from_millis(250),
        "{late:?} after a silent DEL, with a {cap:?} cap"
    );
    drop(lock);
}

/// Lost wake-ups are recovered: the subscriber's connection killed
/// (`CLIENT KILL TYPE pubsub`) wakes the waiters to look for themselves and
/// reconnects, so a release after it still wakes at once; a holder's node
/// restarted (the key gone with it) frees the waiter at once too.
#[test]
fn lost_subscriptions_are_recovered() {
    let mut server = RedisServer::start();
    let locks = support::manager([server.url()]);
    let holder = support::manager([server.url()]);
    let lock = holder.try_lock("s", TTL).expect("try_lock").expect("free");
    thread::scope(|s| {
        let waiter = s.spawn(|| {
            let lock = locks.lock_with("s", TTL, &woken_only()).expect("lock");
            let got = Instant::now();
            drop(lock);
            got
        });
        support::eventually(Duration::from_secs(5), "the waiter listening", || {
            support::listeners(&server, "s") == 1
        });
        let killed: i64 = server.cmd(&[b"CLIENT", b"KILL", b"TYPE", b"pubsub"]);
        assert_eq!(killed, 1);
        support::eventually(Duration::from_secs(5), "the subscriber back", || {
            support::listeners(&server, "s") == 1
        });
        let released = Instant::now();
        assert!(lock.release().expect("release"));
        let took = waiter
            .join()
            .expect("waiter")
            .saturating_duration_since(released);
        assert!(took < PROMPTLY, "woken {took:?} after the release");
    });

    let lock = holder.try_lock("r", TTL).expect("try_lock").expect("free");
    thread::scope(|s| {
        let waiter = s.spawn(|| {
            let lock = locks.lock_with("r", TTL, &woken_only()).expect("lock");
            let got = Instant::now();
            drop(lock);
            got
        });
        support::eventually(Duration::from_secs(5), "the waiter listening", || {
            support::listeners(&server, "r") == 1
        });
        server.restart();
        let restarted = Instant::now();
        let took = waiter
            .join()
            .expect("waiter")
            .saturating_duration_since(restarted);
        assert!(
            took < PROMPTLY,
            "the waiter took {took:?} after the restart"
        );
    });
    drop(lock);
}

/// Fair mode serves waiters in the order they came: 8 threads on one key
/// get nearly equal shares; `try_lock` does not jump the queue.
#[test]
fn fair_mode_serves_in_order() {
    let server = RedisServer::start();
    let fair = support::manager_with([server.url()], support::builder().fair(true));
    let deadline = Instant::now() + Duration::from_secs(2);
    let shares: Vec<u32> = thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0;
                    while Instant::now() < deadline {
                        let lock = fair.lock("f", TTL).expect("lock");
                        thread::sleep(Duration::from_millis(1));
                        assert!(lock.release().expect("release"));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    let (min, max) = (shares.iter().min().copied(), shares.iter().max().copied());
    println!("fair shares: {shares:?}");
    let (min, max) = (min.expect("workers"), max.expect("workers"));
    assert!(
        min > 0 && f64::from(max) / f64::from(min) <= 1.3,
        "{shares:?}"
    );

    // Someone queued: try_lock does not jump ahead of them.
    let lock = fair.try_lock("q", TTL).expect("try_lock").expect("free");
    thread::scope(|s| {
        let queued = s.spawn(|| fair.lock("q", TTL).expect("lock"));
        support::eventually(Duration::from_secs(5), "a waiter queued", || {
            server.cmd::<i64>(&[b"ZCARD", b"{q}:redlease:queue"]) == 1
        });
        assert!(lock.release().expect("release"));
        // The queued waiter is woken and takes it; meanwhile a newcomer's
        // try_lock finds the queue or the lock, never the key free for it.
        let newcomer = fair.try_lock("q", TTL).expect("try_lock");
        let theirs = queued.join().expect("queued waiter");
        assert!(newcomer.is_none(), "try_lock jumped the queue");
        drop(theirs);
    });
}

/// A waiter that died stalls a fair queue for a fraction of a second, not
/// minutes: its lease runs out and the next waiter gets the lock.
#[test]
fn fair_mode_skips_dead_waiters() {
    let server = RedisServer::start();
    let fair = support::manager_with([server.url()], support::builder().fair(true));
    let lock = fair.try_lock("z", TTL).expect("try_lock").expect("free");
    // A waiter at the head of the queue that will never come back: its
    // lease is renewed by nobody.
    let now_ms = {
        let time: Vec<String> = server.cmd(&[b"TIME"]);
        time[0].parse::<u64>().expect("secs") * 1000 + time[1].parse::<u64>().expect("µs") / 1000
    };
    let lease = (now_ms + 250).to_string();
    let _: () = server.cmd(&[b"ZADD", b"{z}:redlease:queue", b"0", b"dead"]);
    let _: () = server.cmd(&[b"ZADD", b"{z}:redlease:leases", lease.as_bytes(), b"dead"]);
    thread::scope(|s| {
        let waiter = s.spawn(|| {
            let started = Instant::now();
            let lock = fair.lock("z", TTL).expect("lock");
            let took = started.elapsed();
            drop(lock);
            took
        });
        thread::sleep(Duration::from_millis(20));
        assert!(lock.release().expect("release"));
        let took = waiter.join().expect("waiter");
        assert!(
            took < PROMPTLY,
            "a dead waiter stalled the queue for {took:?}"
        );
    });
    let left: i64 = server.cmd(&[b"ZCARD", b"{z}:redlease:queue"]);
    assert_eq!(left, 0, "the dead waiter was not dropped");
}

/// Fair mode is one node only, and says why.
#[test]
fn fair_mode_refuses_a_quorum() {
    match support::builder()
        .nodes([
            "redis://127.0.0.1:1",
            "redis://127.0.0.1:2",
            "redis://127.0.0.1:3",
        ])
        .fair(true)
        .connect_lazily(true)
        .build()
    {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("one node"), "{msg}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// Deadlines keep their meaning while waiting to be woken: `try_lock_for`
/// and a wait bound return at the deadline (within a few milliseconds on a
/// loaded machine; the README quotes the measured figure), not at the next
/// wake-up.
#[test]
fn deadlines_are_kept() {
    let server = RedisServer::start();
    let locks = support::manager([server.url()]);
    let lock = locks.try_lock("w", TTL).expect("try_lock").expect("free");
    let wait = Duration::from_millis(200);
    let mut overshoots = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        assert!(
            locks
                .try_lock_for("w", TTL, wait)
                .expect("try_lock_for")
                .is_none()
        );
        overshoots.push(started.elapsed().saturating_sub(wait));
        let started = Instant::now();
        let policy = woken_only().max_wait(wait);
        assert!(matches!(
            locks.lock_with("w", TTL, &policy),
            Err(Error::WaitTimedOut { .. })
        ));
        overshoots.push(started.elapsed().saturating_sub(wait));
    }
    overshoots.sort();
    println!(
        "overshoot past the deadline: median {:?}, max {:?}",
        overshoots[5], overshoots[9]
    );
    assert!(overshoots[9] < Duration::from_millis(50), "{overshoots:?}");
    drop(lock);
}
