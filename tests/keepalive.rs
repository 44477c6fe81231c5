//! Locks kept alive by the manager's keeper: renewed past their TTL while
//! held, reported lost in time when deleted or taken, never renewed after
//! release, capped by `max_hold`, and gone within their TTL when their
//! process dies. (Allocations: `no_alloc_keeper.rs`; mutual exclusion under
//! faults: `keepalive_invariant.rs`.)

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use redlease::Error;
use support::RedisServer;

const CHILD_ENV: &str = "REDLEASE_KEEPALIVE_CHILD";

/// Samples `lock` every few milliseconds for `span`: it must never report
/// lost, and the servers must hold its key all along.
/// A lock on `key`, which must be free, kept alive.
fn kept(locks: &redlease::LockManager, key: impl AsRef<[u8]>, ttl: Duration) -> redlease::Lock {
    locks
        .try_lock(key, ttl)
        .expect("try_lock")
        .expect("free")
        .keep_alive()
        .expect("keep_alive")
}

fn stays_alive(lock: &redlease::Lock, server: &RedisServer, key: &[u8], span: Duration) {
    let end = Instant::now() + span;
    let mut samples = 0;
    while Instant::now() < end {
        assert!(!lock.is_lost(), "reported lost after {samples} samples");
        assert!(lock.check().is_ok());
        assert!(server.pttl(key) > 0, "key gone on the server");
        samples += 1;
        thread::sleep(Duration::from_millis(10));
    }
}

/// A lock with a 300 ms TTL held for 1.5 s (five TTLs) stays valid all
/// along, others cannot take it, and release says it was still ours.
#[test]
fn kept_alive_past_its_ttl_and_released() {
    let server = RedisServer::start();
    let locks = support::manager([server.url()]);
    let other = support::manager([server.url()]);
    let ttl = Duration::from_millis(300);
    let lock = kept(&locks, "ka", ttl);
    assert!(lock.is_kept_alive());
    stays_alive(&lock, &server, b"ka", Duration::from_millis(1500));
    assert!(other.try_lock("ka", ttl).expect("rival").is_none());
    assert!(lock.remaining() <= ttl);
    assert!(lock.release().expect("release"));
    assert_eq!(server.get(b"ka"), None);
    // Nothing renews it afterwards: the rival gets it and keeps it, its
    // own TTL untouched through several of our renewal periods.
    let rival = other
        .try_lock("ka", Duration::from_secs(5))
        .expect("rival")
        .expect("free now");
    thread::sleep(ttl * 2);
    assert!(
        server.pttl(b"ka") <= 5_000 - 2 * 300 + 50,
        "the rival's TTL was renewed"
    );
    assert!(
        rival.release().expect("rival release"),
        "the rival's key was disturbed"
    );
}

/// Deleted behind its back, the lock is reported lost within a third of
/// its TTL plus a round trip (with slack for a loaded machine): by
/// `wait_lost`, `is_lost`, `check`, and the callback; release then says it
/// was not ours.
#[test]
fn external_delete_is_detected_in_time() {
    let server = RedisServer::start();
    let locks = support::manager([server.url()]);
    let ttl = Duration::from_millis(900);
    let lock = locks
        .lock("del", ttl)
        .expect("lock")
        .keep_alive()
        .expect("keep_alive");
    let (tx, rx) = mpsc::channel();
    lock.on_lost(move || {
        let _ = tx.send(Instant::now());
    })
    .expect("on_lost");
    assert!(!lock.wait_lost(Duration::from_millis(50)));
    let deleted = Instant::now();
    let _: i64 = server.cmd(&[b"DEL", b"del"]);
    assert!(
        lock.wait_lost(Duration::from_secs(5)),
        "never reported lost"
    );
    let seen = deleted.elapsed();
    assert!(
        seen <= ttl / 3 + Duration::from_millis(250),
        "loss seen after {seen:?}, a third of the TTL is {:?}",
        ttl / 3
    );
    let called = rx
        .recv_timeout(Duration::from_secs(1))
        .expect("callback ran");
    assert!(called >= deleted);
    assert!(lock.is_lost());
    assert!(matches!(lock.check(), Err(Error::LockLost)));
    assert_eq!(lock.remaining(), Duration::ZERO);
    // A callback registered after the loss runs at once.
    let late = Arc::new(AtomicU32::new(0));
    let late2 = Arc::clone(&late);
    lock.on_lost(move || {
        late2.fetch_add(1, Ordering::SeqCst);
    })
    .expect("on_lost");
    assert_eq!(late.load(Ordering::SeqCst), 1);
    assert!(!lock.release().expect("release"));
}

/// Taken by another owner after an expiry it could not prevent (its node
/// stopped answering past the validity), the lock is reported lost, and
/// the keeper's clean-up leaves the new owner's key alone.
#[test]
fn taken_by_another_is_lost_and_left_alone() {
    let server = RedisServer::start();
    let locks = support::manager([server.url()]);
    let ttl = Duration::from_millis(600);
    let lock = kept(&locks, "taken", ttl);
    // Another client overwrites it (as an expiry and a rival's SET would).
    let _: () = server.cmd(&[b"SET", b"taken", b"someone-else", b"PX", b"60000"]);
    assert!(
        lock.wait_lost(Duration::from_secs(5)),
        "never reported lost"
    );
    thread::sleep(Duration::from_millis(50));
    assert_eq!(server.get(b"taken").as_deref(), Some(&b"someone-else"[..]));
    assert!(
        server.pttl(b"taken") > 50_000,
        "the other owner's TTL was touched"
    );
    drop(lock);
    assert_eq!(server.get(b"taken").as_deref(), Some(&b"someone-else"[..]));
}

/// A holder that never lets go (a stuck thread in a live process) keeps
/// the lock only until `max_hold`: then renewal stops, the lock is reported
/// lost, and the key expires by its TTL, so others get it.
#[test]
fn max_hold_caps_a_stuck_holder() {
    let server = RedisServer::start();
    let max_hold = Duration::from_millis(900);
    let locks = support::manager_with([server.url()], support::builder().max_hold(max_hold));
    let other = support::manager([server.url()]);
    let ttl = Duration::from_millis(300);
    let started = Instant::now();
    let lock = kept(&locks, "stuck", ttl);
    // Renewed well past its TTL…
    stays_alive(&lock, &server, b"stuck", Duration::from_millis(600));
    // …until max_hold.
    assert!(
        lock.wait_lost(Duration::from_secs(5)),
        "never reported lost"
    );
    let lost_after = started.elapsed();
    assert!(
        lost_after >= max_hold - Duration::from_millis(20)
            && lost_after <= max_hold + Duration::from_millis(500),
        "reported lost after {lost_after:?}, max_hold {max_hold:?}"
    );
    support::eventually(ttl + Duration::from_secs(1), "the key expiring", || {
        server.get(b"stuck").is_none()
    });
    let expired_after = started.elapsed();
    assert!(expired_after <= max_hold + ttl + Duration::from_millis(700));
    let rival = other.try_lock("stuck", ttl).expect("rival").expect("free");
    assert!(rival.release().expect("rival release"));
    drop(lock);

    // Per lock: keep_alive_for overrides the manager's default.
    let lock = other
        .try_lock("stuck2", ttl)
        .expect("try_lock")
        .expect("free")
        .keep_alive_for(Duration::from_millis(200))
        .expect("keep_alive_for");
    assert!(lock.wait_lost(Duration::from_secs(5)));
}

/// An explicit extend on a kept-alive lock changes the TTL the keeper
/// renews with; the lock stays kept alive.
#[test]
fn extend_on_a_kept_alive_lock() {
    let server = RedisServer::start();
    let locks = support::manager([server.url()]);
    let mut lock = kept(&locks, "ext", Duration::from_millis(300));
    lock.extend(Duration::from_secs(20)).expect("extend");
    assert!(lock.remaining() > Duration::from_secs(19));
    assert!(server.pttl(b"ext") > 19_000);
    thread::sleep(Duration::from_millis(100));
    assert!(lock.is_kept_alive() && !lock.is_lost());
    // Deleted: the explicit extend says lost, like the keeper would.
    let _: i64 = server.cmd(&[b"DEL", b"ext"]);
    assert!(matches!(
        lock.extend(Duration::from_secs(1)),
        Err(Error::LockLost)
    ));
    assert!(lock.is_lost());
    assert!(!lock.release().expect("release"));
}

/// On a plain lock the loss API works from validity alone, and on_lost is
/// refused with a message saying what to do.
#[test]
fn plain_locks_report_loss_by_validity() {
    let server = RedisServer::start();
    let locks = support::manager([server.url()]);
    let lock = locks
        .try_lock("plain", Duration::from_millis(100))
        .expect("try_lock")
        .expect("free");
    assert!(!lock.is_kept_alive());
    assert!(lock.check().is_ok());
    let err = lock.on_lost(|| {}).expect_err("refused");
    assert!(err.to_string().contains("keep_alive"), "{err}");
    assert!(lock.wait_lost(Duration::from_secs(1)));
    assert!(lock.is_lost());
}

/// On three nodes with one stopped (SIGSTOP), a kept-alive lock keeps
/// being renewed on the other two: never lost, never taken.
#[test]
fn renewal_goes_on_with_a_node_stopped() {
    let servers = RedisServer::start_many(3);
    let urls = || servers.iter().map(RedisServer::url);
    let builder = || support::builder().io_timeout(Duration::from_millis(50));
    let locks = support::manager_with(urls(), builder());
    let other = support::manager_with(urls(), builder());
    let ttl = Duration::from_millis(400);
    let lock = kept(&locks, "q", ttl);
    servers[0].signal("STOP");
    let end = Instant::now() + Duration::from_millis(1600);
    while Instant::now() < end {
        assert!(!lock.is_lost(), "lost with one node of three stopped");
        assert!(servers[1].pttl(b"q") > 0 && servers[2].pttl(b"q") > 0);
        thread::sleep(Duration::from_millis(20));
    }
    assert!(matches!(other.try_lock("q", ttl), Ok(None) | Err(_)));
    servers[0].signal("CONT");
    assert!(lock.release().expect("release"));
}

/// Keep-alive cycles whose holds straddle renewals (TTL 30 ms, renewed
/// every 10 ms, held 0–15 ms), on 4 threads: right after each release the
/// key is gone (a renewal never brings it back), and after all of them no
/// key is left. `REDLEASE_KEEPALIVE_CYCLES` sets cycles per thread
/// (default 400; 25000 makes the 100,000).
#[test]
fn no_renewal_after_release() {
    let cycles: u32 = std::env::var("REDLEASE_KEEPALIVE_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let server = RedisServer::start();
    let locks = support::manager_with(
        [server.url()],
        support::builder().io_timeout(Duration::from_millis(500)),
    );
    let ttl = Duration::from_millis(30);
    let straddled = AtomicU32::new(0);
    // A stall of the machine longer than the TTL loses a lock honestly
    // (the keeper reports it): counted, and bounded below.
    let stalled = AtomicU32::new(0);
    thread::scope(|s| {
        for t in 0..4u32 {
            let (locks, server) = (&locks, &server);
            let (straddled, stalled) = (&straddled, &stalled);
            s.spawn(move || {
                let key = format!("cycle:{t}");
                let mut rng = t.wrapping_mul(2_654_435_761).max(1);
                for i in 0..cycles {
                    rng ^= rng << 13;
                    rng ^= rng >> 17;
                    rng ^= rng << 5;
                    let hold = Duration::from_micros(u64::from(rng % 15_000));
                    let lock = match locks.try_lock(&key, ttl).map(|l| l.map(|l| l.keep_alive())) {
                        Ok(Some(Ok(lock))) => lock,
                        // Too slow to be valid, or lost before it was kept.
                        Err(_) | Ok(Some(Err(_))) => {
                            stalled.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Ok(None) => panic!("cycle {i}: own key held"),
                    };
                    thread::sleep(hold);
                    if hold > ttl / 3 {
                        straddled.fetch_add(1, Ordering::Relaxed);
                    }
                    let reported_lost = lock.is_lost();
                    let still_ours = lock.release().expect("release");
                    if !still_ours {
                        assert!(
                            reported_lost,
                            "cycle {i}: not ours at release, never reported lost"
                        );
                        stalled.fetch_add(1, Ordering::Relaxed);
                    }
                    let exists: i64 = server.cmd(&[b"EXISTS", key.as_bytes()]);
                    assert_eq!(exists, 0, "cycle {i}: key back after release");
                }
            });
        }
    });
    let keys: i64 = server.cmd(&[b"DBSIZE"]);
    assert_eq!(keys, 0, "keys left after the cycles");
    let straddled = straddled.load(Ordering::Relaxed);
    let stalled = stalled.load(Ordering::Relaxed);
    println!(
        "{} cycles, {straddled} held past a renewal period, {stalled} lost to a stall",
        cycles * 4
    );
    assert!(
        stalled * 100 <= cycles * 4,
        "{stalled} locks lost: more than 1 %"
    );
    assert!(
        straddled * 10 >= cycles * 4,
        "too few cycles met a renewal to test anything"
    );
}

/// A process killed while holding a kept-alive lock: the key outlives
/// several TTLs while the process lives, then expires within a TTL of the
/// kill (plus slack), so others get it.
#[test]
fn killed_holder_expires_within_its_ttl() {
    let server = RedisServer::start();
    let ttl = Duration::from_millis(500);
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_holder", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_ENV, server.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the holding process");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    loop {
        let line = lines.next().expect("child said something").expect("read");
        if line.contains("held") {
            break;
        }
    }
    // Alive for three TTLs while its process lives.
    let end = Instant::now() + ttl * 3;
    while Instant::now() < end {
        assert!(server.pttl(b"crash") > 0, "key gone while its holder lives");
        thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill the holder");
    let killed = Instant::now();
    let _ = child.wait();
    support::eventually(ttl + Duration::from_secs(2), "the key expiring", || {
        server.get(b"crash").is_none()
    });
    let gone = killed.elapsed();
    assert!(
        gone <= ttl + Duration::from_millis(300),
        "key lived {gone:?} after the kill"
    );
}

/// Holds a kept-alive lock until killed; run only by
/// `killed_holder_expires_within_its_ttl`, hence ignored.
#[test]
#[ignore = "run by killed_holder_expires_within_its_ttl"]
fn child_holder() {
    let url = std::env::var(CHILD_ENV).expect("run only by the parent test");
    let locks = support::manager([url]);
    let lock = kept(&locks, "crash", Duration::from_millis(500));
    println!("held");
    thread::sleep(Duration::from_secs(60));
    drop(lock);
}

/// Callbacks run on the keeper's thread once it lets go of every lock of
/// the batch: a callback that looks at another kept-alive lock lost in the
/// same round does not deadlock the keeper.
#[test]
fn a_callback_may_touch_another_lock() {
    let server = RedisServer::start();
    let locks = support::manager([server.url()]);
    let ttl = Duration::from_millis(600);
    let take = |key: &str| kept(&locks, key, ttl);
    let first = take("cb:1");
    let second = Arc::new(take("cb:2"));
    let (tx, rx) = mpsc::channel();
    let other = Arc::clone(&second);
    first
        .on_lost(move || {
            let _ = tx.send(other.wait_lost(Duration::from_secs(1)));
        })
        .expect("on_lost");
    let _: i64 = server.cmd(&[b"DEL", b"cb:1", b"cb:2"]);
    let saw_other_lost = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the callback ran without deadlocking");
    assert!(saw_other_lost);
    assert!(first.wait_lost(Duration::from_secs(1)));
    // The keeper still works: a new lock is kept alive past its TTL.
    let third = take("cb:3");
    thread::sleep(ttl + Duration::from_millis(200));
    assert!(!third.is_lost());
    assert!(third.release().expect("release"));
}

/// A TTL shorter than three retry intervals (12 ms) whose renewal cannot
/// be decided (its node blackholed) is lost — and the keeper lives on to
/// keep other locks alive.
#[test]
fn a_tiny_ttl_undecided_renewal_does_not_stop_the_keeper() {
    let server = RedisServer::start();
    let proxy = support::proxy::FaultProxy::start(server.port);
    let locks = support::manager_with(
        [proxy.url()],
        support::builder().io_timeout(Duration::from_millis(5)),
    );
    let tiny = kept(&locks, "tiny", Duration::from_millis(12));
    proxy.set(support::proxy::Mode::Blackhole);
    assert!(tiny.wait_lost(Duration::from_secs(2)));
    proxy.set(support::proxy::Mode::Pass);
    drop(tiny);
    let ttl = Duration::from_millis(300);
    support::eventually(Duration::from_secs(3), "a lock again", || {
        locks.try_lock("after", ttl).is_ok_and(|l| l.is_some())
    });
    let _: i64 = server.cmd(&[b"DEL", b"after"]);
    let lock = kept(&locks, "after", ttl);
    stays_alive(&lock, &server, b"after", ttl * 3);
    assert!(lock.release().expect("release"));
}

/// A callback goes with its lock: released, the lock drops it (what it
/// captured is freed at once, a channel closes), without waiting for the
/// slot to be reused.
#[test]
fn a_released_lock_drops_its_callback() {
    let server = RedisServer::start();
    let locks = support::manager([server.url()]);
    let lock = kept(&locks, "cb", Duration::from_secs(3));
    let (tx, rx) = mpsc::channel::<()>();
    let manager = locks.clone();
    lock.on_lost(move || {
        let _ = tx.send(());
        drop(manager);
    })
    .expect("on_lost");
    assert!(lock.release().expect("release"));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(1)),
        Err(mpsc::RecvTimeoutError::Disconnected),
        "the callback (and its sender) outlived the release"
    );
}

/// Kept alive late (most of its TTL gone) or extended to a shorter TTL,
/// a lock's next renewal comes in time for what is left.
#[test]
fn renewals_follow_validity_left_and_shorter_ttls() {
    let server = RedisServer::start();
    let locks = support::manager([server.url()]);
    let late = locks
        .try_lock("late", Duration::from_millis(600))
        .expect("try_lock")
        .expect("free");
    thread::sleep(Duration::from_millis(420));
    let late = late.keep_alive().expect("keep_alive");
    stays_alive(&late, &server, b"late", Duration::from_millis(1200));
    assert!(late.release().expect("release"));

    let mut shorter = kept(&locks, "shorter", Duration::from_secs(3));
    shorter.extend(Duration::from_millis(300)).expect("extend");
    stays_alive(&shorter, &server, b"shorter", Duration::from_millis(1200));
    assert!(server.pttl(b"shorter") <= 300);
    assert!(shorter.release().expect("release"));
}

/// A key written over with another type (a list) fails only its own lock:
/// the other locks of the same renewal batch stay alive.
#[test]
fn a_key_written_over_fails_only_its_own_lock() {
    let server = RedisServer::start();
    let locks = support::manager([server.url()]);
    let ttl = Duration::from_millis(400);
    let take = |key: &str| kept(&locks, key, ttl);
    let (victim, bystander) = (take("over:1"), take("over:2"));
    let _: i64 = server.cmd(&[b"DEL", b"over:1"]);
    let _: i64 = server.cmd(&[b"LPUSH", b"over:1", b"not a lock"]);
    assert!(victim.wait_lost(Duration::from_secs(2)));
    stays_alive(&bystander, &server, b"over:2", ttl * 3);
    assert!(bystander.release().expect("release"));
    assert!(!victim.release().expect("release"));
    let kind: String = server.cmd(&[b"TYPE", b"over:1"]);
    assert_eq!(kind, "list", "the other owner's key was touched");
}
