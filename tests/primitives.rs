//! The semaphore, the read-write lock and the multi-key lock against real
//! servers: what each grants and refuses, that expired holders are
//! reclaimed and nothing is left behind, and the oracles (generalised to k
//! holders, and to readers and writers) under contention. Faults are in
//! `tests/primitives_faults.rs`.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use redlease::{Error, LockManager, RetryPolicy};
use support::RedisServer;
use support::oracle::{self, Oracle};

const TTL: Duration = Duration::from_secs(5);

fn patient() -> RetryPolicy {
    RetryPolicy::exponential(Duration::from_millis(1))
        .max_delay(Duration::from_millis(20))
        .max_wait(Duration::from_secs(30))
}

fn manager(servers: &[RedisServer]) -> LockManager {
    support::manager_with(
        servers.iter().map(RedisServer::url),
        support::builder().retry(patient()).pool_size(16),
    )
}

fn exists(server: &RedisServer, key: &str) -> bool {
    server.cmd::<i64>(&[b"EXISTS", key.as_bytes()]) == 1
}

/// A semaphore grants exactly its permits; a release frees one; the set
/// carries a TTL; extend and release say whether the permit was still ours.
#[test]
fn semaphore_grants_at_most_its_permits() {
    let server = RedisServer::start();
    let locks = manager(std::slice::from_ref(&server));
    let sem = locks.semaphore("pool", 3).expect("semaphore");
    assert_eq!((sem.key(), sem.permits()), (&b"pool"[..], 3));
    let mut held: Vec<_> = (0..3)
        .map(|_| sem.try_acquire(TTL).expect("try").expect("a permit free"))
        .collect();
    assert!(sem.try_acquire(TTL).expect("try").is_none(), "a 4th permit");
    assert_eq!(server.cmd::<i64>(&[b"ZCARD", b"pool"]), 3);
    let pttl = server.pttl(b"pool");
    assert!(pttl > 4000 && pttl <= 5000, "the set's TTL: {pttl}");
    // A longer extend raises the set's TTL with it.
    held[0].extend(Duration::from_secs(20)).expect("extend");
    assert!(held[0].remaining() > Duration::from_secs(19));
    assert!(server.pttl(b"pool") > 19_000);
    let first = held.remove(0);
    assert!(first.release().expect("release"));
    let again = sem
        .try_acquire(TTL)
        .expect("try")
        .expect("the freed permit");
    assert_eq!(again.key(), b"pool");
    // A different count on the same key is that caller's own bound.
    let wider = locks.semaphore("pool", 4).expect("semaphore");
    assert!(wider.try_acquire(TTL).expect("try").is_some());
    for permit in held {
        assert!(permit.release().expect("release"));
    }
    drop(again);
    thread::sleep(Duration::from_millis(20));
    assert!(!exists(&server, "pool"), "the set outlived its permits");
}

/// A holder that dies never leaks its permit: the next acquisition after
/// its TTL reclaims it, its own extend and release report it lost, and the
/// structure expires by itself.
#[test]
fn expired_permits_are_reclaimed_and_nothing_leaks() {
    let server = RedisServer::start();
    let locks = manager(std::slice::from_ref(&server));
    let sem = locks.semaphore("leaky", 2).expect("semaphore");
    let short = Duration::from_millis(150);
    let mut late = sem.try_acquire(short).expect("try").expect("free");
    // A holder that vanished without releasing.
    std::mem::forget(sem.try_acquire(short).expect("try").expect("free"));
    assert!(sem.try_acquire(TTL).expect("try").is_none());
    thread::sleep(short + Duration::from_millis(50));
    assert!(late.is_lost());
    assert!(matches!(late.extend(TTL), Err(Error::LockLost)));
    let a = sem.try_acquire(TTL).expect("try").expect("reclaimed");
    let b = sem.try_acquire(TTL).expect("try").expect("reclaimed");
    assert_eq!(server.cmd::<i64>(&[b"ZCARD", b"leaky"]), 2);
    drop((a, b));
    // Forgotten permits only: the set expires with the last of them.
    std::mem::forget(sem.try_acquire(short).expect("try").expect("free"));
    assert!(exists(&server, "leaky"));
    thread::sleep(short + Duration::from_millis(50));
    assert!(
        !exists(&server, "leaky"),
        "an expired semaphore's key stayed"
    );
}

/// A permit extended after it expired is lost even when no one reclaimed
/// it yet; a release of it says it was not ours any more.
#[test]
fn an_expired_permit_is_not_revived() {
    let server = RedisServer::start();
    let locks = manager(std::slice::from_ref(&server));
    let sem = locks.semaphore("revive", 1).expect("semaphore");
    let permit = sem
        .try_acquire(Duration::from_millis(100))
        .expect("try")
        .expect("free");
    // Keep the set alive past the permit (a second member, far out).
    server.cmd::<i64>(&[b"ZADD", b"revive", b"99999999999999", b"other"]);
    server.cmd::<i64>(&[b"PEXPIRE", b"revive", b"10000"]);
    thread::sleep(Duration::from_millis(150));
    assert!(
        !permit.release().expect("release"),
        "an expired permit released as ours"
    );
}

/// 8 threads share a semaphore of 3 permits: never more than 3 holders by
/// the server-side gauge or by the threads' own intervals, and 3 at once
/// did happen (it is not a mutex). On one node.
#[test]
fn semaphore_holders_never_exceed_permits() {
    let server = RedisServer::start();
    let books = RedisServer::start();
    let locks = manager(std::slice::from_ref(&server));
    let sem = locks.semaphore("capacity", 3).expect("semaphore");
    let intervals = std::sync::Mutex::new(Vec::new());
    thread::scope(|s| {
        for _ in 0..8 {
            let (sem, books, intervals) = (&sem, &books, &intervals);
            s.spawn(move || {
                let mut con = books.client();
                for _ in 0..40 {
                    let permit = sem.acquire(TTL).expect("acquire within 30 s");
                    let begin = Instant::now();
                    let over = oracle::enter_k(&mut con, "sem", 3);
                    thread::sleep(Duration::from_millis(2));
                    oracle::leave(&mut con, "sem");
                    let end = Instant::now();
                    assert!(!over, "more than 3 holders inside");
                    assert!(permit.remaining() > Duration::ZERO);
                    assert!(permit.release().expect("release"));
                    intervals.lock().expect("intervals").push(((), begin, end));
                }
            });
        }
    });
    let intervals = intervals.into_inner().expect("intervals");
    let most = oracle::most_at_once(&intervals);
    let seen = oracle::most_inside(&mut books.client(), "sem");
    println!("most holders at once: {most} (intervals), {seen} (gauge)");
    assert!(most <= 3 && seen <= 3);
    assert_eq!(seen, 3, "3 permits were never used at once");
}

/// The k-holder oracle fails when it should: 4 holders of "3 permits"
/// without a semaphore are seen by both of its checks.
#[test]
fn the_k_holder_oracle_catches_too_many_holders() {
    let books = RedisServer::start();
    let barrier = std::sync::Barrier::new(4);
    let intervals = std::sync::Mutex::new(Vec::new());
    let over = std::sync::atomic::AtomicUsize::new(0);
    thread::scope(|s| {
        for _ in 0..4 {
            let (books, barrier, intervals, over) = (&books, &barrier, &intervals, &over);
            s.spawn(move || {
                let mut con = books.client();
                barrier.wait();
                let begin = Instant::now();
                if oracle::enter_k(&mut con, "broken", 3) {
                    over.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(50));
                oracle::leave(&mut con, "broken");
                intervals
                    .lock()
                    .expect("intervals")
                    .push(((), begin, Instant::now()));
            });
        }
    });
    assert_eq!(over.into_inner(), 1);
    assert_eq!(
        oracle::most_at_once(&intervals.into_inner().expect("intervals")),
        4
    );
    // And the read-write check: a writer entering beside a reader clashes,
    // and so does a second writer; readers together do not.
    let mut con = books.client();
    assert!(!oracle::enter_rw(&mut con, "rw", false));
    assert!(!oracle::enter_rw(&mut con, "rw", false));
    assert!(oracle::enter_rw(&mut con, "rw", true));
    oracle::leave_rw(&mut con, "rw", false);
    oracle::leave_rw(&mut con, "rw", false);
    assert!(oracle::enter_rw(&mut con, "rw", true), "second writer");
    oracle::leave_rw(&mut con, "rw", true);
    oracle::leave_rw(&mut con, "rw", true);
    assert!(!oracle::enter_rw(&mut con, "rw", true));
}

/// Readers share, writers exclude both ways; each side extends and
/// releases; the companion keys carry TTLs and are gone afterwards.
#[test]
fn readers_share_and_writers_exclude() {
    let server = RedisServer::start();
    let locks = manager(std::slice::from_ref(&server));
    let rw = locks.rwlock("doc").expect("rwlock");
    let mut r1 = rw.try_read(TTL).expect("try").expect("free");
    let r2 = rw.try_read(TTL).expect("try").expect("readers share");
    assert!(
        rw.try_write(TTL).expect("try").is_none(),
        "writer beside readers"
    );
    let readers = "{doc}:redlease:readers";
    assert_eq!(server.cmd::<i64>(&[b"ZCARD", readers.as_bytes()]), 2);
    assert!(server.pttl(readers.as_bytes()) > 0);
    r1.extend(Duration::from_secs(10))
        .expect("extend a read lock");
    assert!(r1.remaining() > Duration::from_secs(9));
    assert!(r1.release().expect("release") && r2.release().expect("release"));
    let mut w = rw.try_write(TTL).expect("try").expect("no reader left");
    assert_eq!(w.key(), b"doc");
    assert!(
        rw.try_read(TTL).expect("try").is_none(),
        "reader beside a writer"
    );
    assert!(rw.try_write(TTL).expect("try").is_none(), "two writers");
    w.extend(Duration::from_secs(10))
        .expect("extend a write lock");
    assert!(server.pttl(b"doc") > 9000);
    assert!(w.release().expect("release"));
    let r = rw.try_read(TTL).expect("try").expect("free again");
    drop(r);
    for key in ["doc", readers, "{doc}:redlease:turn"] {
        assert!(!exists(&server, key), "{key} left behind");
    }
}

/// Writer preference: a writer waiting for readers takes the writers'
/// turn, so new readers are refused until it has written, even while old
/// readers still hold; it gets in as soon as they leave.
#[test]
fn a_waiting_writer_keeps_new_readers_out() {
    let server = RedisServer::start();
    let locks = manager(std::slice::from_ref(&server));
    let rw = locks.rwlock("pref").expect("rwlock");
    let reader = rw.try_read(TTL).expect("try").expect("free");
    let got = thread::scope(|s| {
        let writer = s.spawn(|| {
            let started = Instant::now();
            let w = rw.write(TTL).expect("write");
            (started.elapsed(), w.release().expect("release"))
        });
        support::eventually(Duration::from_secs(2), "the writer's turn", || {
            exists(&server, "{pref}:redlease:turn")
        });
        // A new reader is refused although only a reader holds.
        assert!(
            rw.try_read(TTL).expect("try").is_none(),
            "a reader got past a waiting writer"
        );
        thread::sleep(Duration::from_millis(300));
        assert!(
            rw.try_read(TTL).expect("try").is_none(),
            "the turn lapsed while the writer waited"
        );
        let released = Instant::now();
        assert!(reader.release().expect("release"));
        let (_, ok) = writer.join().expect("writer");
        (released.elapsed(), ok)
    });
    // In right after the last reader left (a liveness bound: its attempts
    // also renew its turn every 125 ms).
    assert!(got.1);
    assert!(
        got.0 < Duration::from_millis(500),
        "writer got in {:?} after",
        got.0
    );
    assert!(
        !exists(&server, "{pref}:redlease:turn"),
        "the turn outlived the write"
    );
    assert!(rw.try_read(TTL).expect("try").is_some());
}

/// A policy that never polls: a waiter that is not woken sleeps 10 s.
fn woken_only() -> RetryPolicy {
    patient().wake_cap(Duration::from_secs(10))
}

/// A waiting writer keeps one token for its wait; an earlier attempt's
/// grant whose reply was lost leaves the key holding it, with what is left
/// of that attempt's TTL. The attempt that finds it must renew it for its
/// own TTL, from which its validity is measured.
#[test]
fn a_writer_granted_on_its_own_token_holds_for_its_ttl() {
    let server = RedisServer::start();
    let locks = manager(std::slice::from_ref(&server));
    let rw = locks.rwlock("own").expect("rwlock");
    let reader = rw.try_read(TTL).expect("try").expect("free");
    let ttl = Duration::from_secs(10);
    let write = thread::scope(|s| {
        let writer = s.spawn(|| rw.write(ttl).expect("write"));
        support::eventually(Duration::from_secs(2), "the writer's turn", || {
            exists(&server, "{own}:redlease:turn")
        });
        let token = server
            .get(b"{own}:redlease:turn")
            .expect("the waiting writer's token");
        // As if an attempt of this writer had been granted (the reader
        // gone) and its reply lost: the key holds its token, 1 s left.
        let planted: i64 = redis::cmd("EVAL")
            .arg(r#"redis.call("del", KEYS[1]) redis.call("set", KEYS[2], ARGV[1], "PX", 1000) return 1"#)
            .arg(2)
            .arg("{own}:redlease:readers")
            .arg("own")
            .arg(&token)
            .query(&mut server.client())
            .expect("plant");
        assert_eq!(planted, 1);
        writer.join().expect("writer")
    });
    let pttl = Duration::from_millis(server.pttl(b"own").max(0) as u64);
    assert!(
        write.remaining() <= pttl + Duration::from_millis(5),
        "the writer counts on {:?}, the server keeps its key {pttl:?}",
        write.remaining()
    );
    assert!(pttl > Duration::from_secs(9), "{pttl:?}");
    assert!(
        !reader.release().expect("release"),
        "the reader was removed"
    );
    assert!(write.release().expect("release"));
}

/// Readers kept out only by a waiting writer's turn are woken when the
/// writer gives up, not when the turn would have lapsed.
#[test]
fn readers_are_woken_when_a_writer_gives_up() {
    let server = RedisServer::start();
    let locks = manager(std::slice::from_ref(&server));
    let rw = locks.rwlock("giveup").expect("rwlock");
    let first = rw.try_read(TTL).expect("try").expect("free");
    let latency = thread::scope(|s| {
        let writer = s.spawn(|| {
            let gave_up = rw
                .try_write_for(TTL, Duration::from_millis(700))
                .expect("try_write_for");
            assert!(gave_up.is_none());
            Instant::now()
        });
        support::eventually(Duration::from_secs(2), "the writer's turn", || {
            exists(&server, "{giveup}:redlease:turn")
        });
        let reader = s.spawn(|| {
            let read = rw.read_with(TTL, &woken_only()).expect("read");
            (Instant::now(), read)
        });
        let gave_up_at = writer.join().expect("writer");
        let (got_at, read) = reader.join().expect("reader");
        drop(read);
        got_at.saturating_duration_since(gave_up_at)
    });
    println!("reader in {latency:?} after the writer gave up");
    assert!(latency < Duration::from_millis(100), "{latency:?}");
    drop(first);
}

/// Permits freed together go to as many waiters at once: each release
/// wakes one more waiter, even before the one woken for the last has
/// tried. The holders are another process's (the waiters hear the
/// server's messages, all at once).
#[test]
fn several_released_permits_wake_several_waiters() {
    let server = RedisServer::start();
    let holders = manager(std::slice::from_ref(&server));
    let waiters = manager(std::slice::from_ref(&server));
    let long = Duration::from_secs(30);
    let held: Vec<_> = (0..3)
        .map(|_| {
            holders
                .semaphore("burst", 3)
                .expect("semaphore")
                .try_acquire(long)
                .expect("try")
                .expect("free")
        })
        .collect();
    let sem = waiters.semaphore("burst", 3).expect("semaphore");
    let latencies = thread::scope(|s| {
        let threads: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let permit = sem.acquire_with(long, &woken_only()).expect("acquire");
                    (Instant::now(), permit)
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(300));
        let released = Instant::now();
        // The three holders release at the same moment: one script does
        // what their three releases would (the messages arrive together).
        let freed: i64 = redis::cmd("EVAL")
            .arg(
                r#"local m = redis.call("zrange", KEYS[1], 0, -1)
redis.call("del", KEYS[1])
for _, t in ipairs(m) do redis.call("publish", "redlease:wake:" .. KEYS[1], string.sub(t, 1, 8)) end
return #m"#,
            )
            .arg(1)
            .arg("burst")
            .query(&mut server.client())
            .expect("release all three");
        assert_eq!(freed, 3);
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .expect("waiter")
                    .0
                    .saturating_duration_since(released)
            })
            .collect::<Vec<_>>()
    });
    println!("waiters in after {latencies:?}");
    drop(held);
    assert!(
        latencies.iter().all(|l| *l < Duration::from_secs(1)),
        "{latencies:?}"
    );
}

/// A multi-key waiter listens for the key in its way: when the first
/// blocking key is released and another still blocks, it listens for that
/// one, and is woken by its release.
#[test]
fn a_set_waiter_follows_the_key_in_its_way() {
    let server = RedisServer::start();
    let holders = manager(std::slice::from_ref(&server));
    let locks = manager(std::slice::from_ref(&server));
    let long = Duration::from_secs(30);
    let a = holders
        .try_lock("follow:a", long)
        .expect("try")
        .expect("free");
    let b = holders
        .try_lock("follow:b", long)
        .expect("try")
        .expect("free");
    let latency = thread::scope(|s| {
        let waiter = s.spawn(|| {
            let set = locks
                .lock_all_with(&["follow:a", "follow:b"], long, &woken_only())
                .expect("lock_all");
            (Instant::now(), set)
        });
        thread::sleep(Duration::from_millis(300));
        assert!(a.release().expect("release"));
        thread::sleep(Duration::from_millis(300));
        let released = Instant::now();
        assert!(b.release().expect("release"));
        let (got_at, set) = waiter.join().expect("waiter");
        drop(set);
        got_at.saturating_duration_since(released)
    });
    println!("set in {latency:?} after its last blocker left");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
}

/// Writers do not starve: 4 threads read without pause, their holds
/// overlapping so that the lock is hardly ever free of readers (single
/// `try_write` attempts beside them mostly fail: the premise, checked), yet
/// a waiting writer gets in within a few holds: its turn keeps new readers
/// out, and those inside leave.
#[test]
fn a_stream_of_readers_does_not_starve_a_writer() {
    let server = RedisServer::start();
    let locks = manager(std::slice::from_ref(&server));
    let rw = locks.rwlock("stream").expect("rwlock");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let hold = Duration::from_millis(20);
    let waited = thread::scope(|s| {
        for t in 0..4u64 {
            let (rw, stop) = (&rw, &stop);
            s.spawn(move || {
                // Staggered, so that some reader always holds.
                thread::sleep(hold / 4 * t as u32);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let read = rw.read(TTL).expect("read");
                    thread::sleep(hold);
                    drop(read);
                }
            });
        }
        thread::sleep(Duration::from_millis(300));
        // Without the turn a writer would need a moment with no reader.
        let tries = (0..20)
            .filter(|_| {
                thread::sleep(Duration::from_millis(5));
                rw.try_write(TTL).expect("try_write").is_some()
            })
            .count();
        println!("plain try_write beside the stream: {tries} of 20 got in");
        assert!(tries <= 10, "the readers left gaps: {tries} of 20 got in");
        let started = Instant::now();
        let write = rw.write(TTL).expect("write");
        let waited = started.elapsed();
        drop(write);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        waited
    });
    println!("a waiting writer got in after {waited:?}");
    assert!(waited < Duration::from_secs(1), "{waited:?}");
}

/// A writer that gave up waiting gives its turn back at once; one that
/// died waiting keeps readers out only until the turn lapses.
#[test]
fn a_writers_turn_ends_with_its_wait() {
    let server = RedisServer::start();
    let locks = manager(std::slice::from_ref(&server));
    let rw = locks.rwlock("turn").expect("rwlock");
    let reader = rw.try_read(TTL).expect("try").expect("free");
    let gave_up = rw
        .try_write_for(TTL, Duration::from_millis(100))
        .expect("try_write_for");
    assert!(gave_up.is_none());
    let second = rw
        .try_read(TTL)
        .expect("try")
        .expect("the turn was given back");
    drop((reader, second));
    // A dead writer's turn (written as a waiting writer leaves it).
    server.cmd::<String>(&[
        b"SET",
        b"{turn}:redlease:turn",
        b"dead-writer",
        b"PX",
        b"400",
    ]);
    assert!(rw.try_read(TTL).expect("try").is_none());
    let started = Instant::now();
    let r = rw.read(TTL).expect("read after the turn lapsed");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
    drop(r);
}

/// Readers and writers on one lock, 8 threads at random, on 1 and 3
/// nodes: no writer ever beside anyone, readers did share.
#[test]
fn rw_lock_oracle_on_1_and_3_nodes() {
    let servers = RedisServer::start_many(3);
    let books = RedisServer::start();
    for n in [1, 3] {
        let locks = manager(&servers[..n]);
        let rw = locks.rwlock("rw-oracle").expect("rwlock");
        let name = format!("rw{n}");
        let intervals = std::sync::Mutex::new(Vec::new());
        thread::scope(|s| {
            for t in 0..8u64 {
                let (rw, books, name, intervals) = (&rw, &books, &name, &intervals);
                s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(t);
                    let mut con = books.client();
                    for _ in 0..30 {
                        let write = rng.u32(0..4) == 0;
                        let guard = if write {
                            Ok(rw.write(TTL).expect("write"))
                        } else {
                            Err(rw.read(TTL).expect("read"))
                        };
                        let begin = Instant::now();
                        let clash = oracle::enter_rw(&mut con, name, write);
                        thread::sleep(Duration::from_millis(rng.u64(1..4)));
                        oracle::leave_rw(&mut con, name, write);
                        let end = Instant::now();
                        assert!(
                            !clash,
                            "{} clashed",
                            if write { "writer" } else { "reader" }
                        );
                        intervals
                            .lock()
                            .expect("intervals")
                            .push((u8::from(write), begin, end));
                        match guard {
                            Ok(w) => assert!(w.release().expect("release")),
                            Err(r) => assert!(r.release().expect("release")),
                        }
                    }
                });
            }
        });
        let intervals = intervals.into_inner().expect("intervals");
        let writes: Vec<_> = intervals.iter().filter(|i| i.0 == 1).collect();
        let reads: Vec<_> = intervals.iter().filter(|i| i.0 == 0).copied().collect();
        // No write interval meets any other interval.
        for w in &writes {
            let others = intervals
                .iter()
                .filter(|o| *o != *w && o.1 < w.2 && w.1 < o.2)
                .count();
            assert_eq!(others, 0, "{n} node(s): a write overlapped");
        }
        let most_readers = oracle::most_at_once(&reads);
        println!(
            "{n} node(s): {} writes, {} reads, most readers at once {most_readers}",
            writes.len(),
            reads.len()
        );
        assert!(most_readers > 1, "{n} node(s): readers never shared");
    }
}

/// All or nothing: a set is refused if any key is held, and then takes
/// none of them; a plain lock and a set exclude each other; extend and
/// release cover every key; a key stolen from the set makes the set lost,
/// and the rest is released.
#[test]
fn multi_key_lock_is_all_or_nothing() {
    let server = RedisServer::start();
    let locks = manager(std::slice::from_ref(&server));
    let mut set = locks
        .try_lock_all(&["a", "b", "c"], TTL)
        .expect("try_lock_all")
        .expect("free");
    assert_eq!(set.keys().collect::<Vec<_>>(), [b"a", b"b", b"c"]);
    assert!(locks.try_lock("b", TTL).expect("try_lock").is_none());
    assert!(locks.try_lock_all(&["d", "c"], TTL).expect("try").is_none());
    assert!(!exists(&server, "d"), "a refused set took one of its keys");
    set.extend(Duration::from_secs(10)).expect("extend");
    for key in [b"a", b"b", b"c"] {
        assert!(server.pttl(key) > 9000);
    }
    assert!(set.release().expect("release"));
    for key in ["a", "b", "c"] {
        assert!(!exists(&server, key));
    }
    // A plain lock stands in the way of a set, and the set waits for it.
    let plain = locks.try_lock("y", TTL).expect("try_lock").expect("free");
    let waited = thread::scope(|s| {
        let waiter = s.spawn(|| {
            let started = Instant::now();
            let set = locks.lock_all(&["x", "y", "z"], TTL).expect("lock_all");
            (started.elapsed(), set)
        });
        thread::sleep(Duration::from_millis(100));
        assert!(!exists(&server, "x"), "a waiting set holds some keys");
        assert!(plain.release().expect("release"));
        waiter.join().expect("waiter")
    });
    assert!(waited.0 < Duration::from_secs(1), "{:?}", waited.0);
    let mut set = waited.1;
    // Someone deletes and retakes one key: the set is lost as a whole.
    server.cmd::<i64>(&[b"DEL", b"z"]);
    server.cmd::<String>(&[b"SET", b"z", b"someone-else"]);
    assert!(matches!(set.extend(TTL), Err(Error::LockLost)));
    assert!(set.is_lost());
    assert!(
        !exists(&server, "x") && !exists(&server, "y"),
        "the rest was kept"
    );
    assert_eq!(server.get(b"z").as_deref(), Some(&b"someone-else"[..]));
    drop(set);
    assert_eq!(server.get(b"z").as_deref(), Some(&b"someone-else"[..]));
}

/// 8 threads take random overlapping sets of 2 to 4 of 8 keys, in random
/// order, waiting for each: all finish (no deadlock), and no key ever has
/// two holders, on 1 and 3 nodes.
#[test]
fn random_overlapping_sets_never_deadlock_or_overlap() {
    let servers = RedisServer::start_many(3);
    let books = RedisServer::start();
    for n in [1, 3] {
        let locks = manager(&servers[..n]);
        let intervals = std::sync::Mutex::new(Vec::new());
        let started = Instant::now();
        thread::scope(|s| {
            for t in 0..8u64 {
                let (locks, books, intervals) = (&locks, &books, &intervals);
                s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(100 + t);
                    let mut con = books.client();
                    for _ in 0..30 {
                        let mut keys: Vec<u8> = (0..8).collect();
                        rng.shuffle(&mut keys);
                        keys.truncate(rng.usize(2..=4));
                        let names: Vec<String> = keys.iter().map(|k| format!("m{n}:{k}")).collect();
                        let set = locks.lock_all(&names, TTL).expect("lock_all within 30 s");
                        let begin = Instant::now();
                        let clashes: Vec<bool> = names
                            .iter()
                            .map(|name| oracle::enter_k(&mut con, name, 1))
                            .collect();
                        thread::sleep(Duration::from_millis(1));
                        for name in &names {
                            oracle::leave(&mut con, name);
                        }
                        let end = Instant::now();
                        assert!(!clashes.contains(&true), "a key had two holders");
                        assert!(set.release().expect("release"));
                        let mut intervals = intervals.lock().expect("intervals");
                        intervals.extend(keys.iter().map(|&k| (k, begin, end)));
                    }
                });
            }
        });
        let mut intervals = intervals.into_inner().expect("intervals");
        println!(
            "{n} node(s): 240 sets in {:?}, {} key sections",
            started.elapsed(),
            intervals.len()
        );
        assert_eq!(oracle::overlaps(&mut intervals), 0, "{n} node(s)");
    }
}

/// Bad input is refused with a clear error, before any I/O, and takes
/// nothing.
#[test]
fn bad_input_is_refused() {
    let servers = RedisServer::start_many(3);
    let one = manager(&servers[..1]);
    let three = manager(&servers);
    let invalid = |r: Result<_, Error>, says: &str| match r {
        Err(Error::InvalidArgument(text)) => assert!(text.contains(says), "{text}"),
        other => panic!("expected InvalidArgument ({says}), got {other:?}"),
    };
    invalid(one.semaphore("", 2).map(|_| ()), "empty");
    invalid(one.semaphore("s", 0).map(|_| ()), "permits");
    invalid(one.semaphore("s", u32::MAX).map(|_| ()), "permits");
    invalid(one.semaphore(vec![b'k'; 100_000], 2).map(|_| ()), "cap");
    match three.semaphore("s", 2) {
        Err(Error::Unsupported(text)) => assert!(text.contains("quorum"), "{text}"),
        other => panic!("a semaphore over a quorum: {other:?}"),
    }
    let sem = one.semaphore("s", 2).expect("semaphore");
    invalid(sem.try_acquire(Duration::ZERO).map(|_| ()), "ttl");
    invalid(sem.acquire(Duration::from_secs(1 << 40)).map(|_| ()), "ttl");
    invalid(one.rwlock("").map(|_| ()), "empty");
    let rw = one.rwlock("r").expect("rwlock");
    invalid(rw.try_write(Duration::ZERO).map(|_| ()), "ttl");
    invalid(rw.read(Duration::from_millis(1)).map(|_| ()), "ttl");
    let none: [&str; 0] = [];
    invalid(one.try_lock_all(&none, TTL).map(|_| ()), "1 to 64 keys");
    let many: Vec<String> = (0..65).map(|i| format!("k{i}")).collect();
    invalid(one.try_lock_all(&many, TTL).map(|_| ()), "1 to 64 keys");
    invalid(
        one.try_lock_all(&["a", "b", "a"], TTL).map(|_| ()),
        "listed twice",
    );
    invalid(one.lock_all(&["a", ""], TTL).map(|_| ()), "empty");
    invalid(one.try_lock_all(&["a"], Duration::ZERO).map(|_| ()), "ttl");
    // Nothing was written by any of them.
    for server in &servers {
        assert_eq!(server.cmd::<i64>(&[b"DBSIZE"]), 0);
    }
    // 64 keys is fine, over a quorum too.
    let most: Vec<String> = (0..64).map(|i| format!("k{i}")).collect();
    let set = three
        .try_lock_all(&most, TTL)
        .expect("64 keys")
        .expect("free");
    assert_eq!(set.keys().count(), 64);
    assert!(set.release().expect("release"));
}

/// A key written over with another type by someone else is an error the
/// caller can read, not a grant and not a hang.
#[test]
fn a_key_of_another_type_is_a_clear_error() {
    let server = RedisServer::start();
    let locks = manager(std::slice::from_ref(&server));
    server.cmd::<String>(&[b"SET", b"str", b"x"]);
    let sem = locks.semaphore("str", 2).expect("semaphore");
    let err = sem
        .try_acquire(TTL)
        .expect_err("a string is not a semaphore");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    let err = sem.acquire(TTL).expect_err("not retried for ever");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    server.cmd::<i64>(&[b"HSET", b"{h}:redlease:readers", b"f", b"v"]);
    let err = locks
        .rwlock("h")
        .expect("rwlock")
        .try_read(TTL)
        .expect_err("a hash is not a readers' set");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
}

/// Oracle-sized check that the `Oracle` type itself still works with a
/// guard from a primitive (a permit of 1 is a mutex).
#[test]
fn a_semaphore_of_one_is_a_mutex() {
    let oracle = Oracle::default();
    let server = RedisServer::start();
    let locks = manager(std::slice::from_ref(&server));
    let sem = locks.semaphore("one", 1).expect("semaphore");
    let verdict = oracle.run(8, 25, Duration::from_micros(200), |_| {
        Some(sem.acquire(TTL).expect("acquire"))
    });
    println!("{verdict:?}");
    assert_eq!(verdict.sections, 200);
    assert!(verdict.clean(), "{verdict:?}");
}
