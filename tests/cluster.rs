//! Redis Cluster, with a real local cluster the fixture builds: keys routed
//! to their slot's master, slots migrated under load (`MOVED`, `ASK`,
//! `TRYAGAIN` followed inside the library), and a master killed and its
//! replica promoted.

mod support;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use redlease::{Error, LockManager, RetryPolicy};
use support::cluster::Cluster;
use support::oracle::Oracle;

const TTL: Duration = Duration::from_secs(10);

/// One cluster at a time: each is several processes, and the failover test
/// is timed.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sets its flag when dropped, also by a panic: a scope's workers that
/// loop until the flag stop with the scope's own thread.
struct Stop<'a>(&'a AtomicBool);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn manager(cluster: &Cluster) -> LockManager {
    support::builder()
        .cluster([cluster.seed()])
        .build()
        .expect("cluster manager")
}

#[test]
fn locks_live_on_their_slots_master() {
    let _serial = serial();
    let cluster = Cluster::start(3, 0);
    let locks = manager(&cluster);
    assert_eq!(locks.nodes(), 3);
    assert_eq!(locks.quorum(), 1);
    let keys: Vec<String> = (0..300).map(|i| format!("spread:{i}")).collect();
    let held: Vec<_> = keys
        .iter()
        .map(|k| locks.try_lock(k, TTL).expect("no error").expect("free"))
        .collect();
    // Each lock is on the master that serves its slot, and nowhere else.
    let mut per_master = [0i64; 3];
    for key in &keys {
        let owner = cluster
            .owner_of(cluster.slot(key.as_bytes()), 0)
            .expect("slot served");
        per_master[owner] += 1;
        assert!(
            cluster.servers[owner].get(key.as_bytes()).is_some(),
            "{key} not on its master"
        );
    }
    for (m, &n) in per_master.iter().enumerate() {
        assert_eq!(cluster.keys_on(m), n, "master {m}");
        assert!(n > 50, "master {m} got {n} of 300 keys");
    }
    // Another manager (seeded elsewhere) sees every one held.
    let other = support::builder()
        .cluster([cluster.servers[2].url()])
        .build()
        .unwrap();
    for key in keys.iter().step_by(7) {
        assert!(
            other.try_lock(key, TTL).unwrap().is_none(),
            "{key} granted twice"
        );
    }
    for lock in held {
        assert!(lock.release().unwrap());
    }
    for m in 0..3 {
        assert_eq!(cluster.keys_on(m), 0, "master {m} kept keys");
    }
}

#[test]
fn every_lock_feature_works_across_slots() {
    let _serial = serial();
    let cluster = Cluster::start(3, 0);
    let locks = support::builder()
        .cluster([cluster.seed()])
        .fencing(true)
        .build()
        .unwrap();
    // Fences: the counter shares the lock's slot (plain and tagged keys).
    for key in ["fenced:a", "{user:7}:cart", "fenced:b"] {
        let mut first = locks.try_lock(key, TTL).unwrap().unwrap();
        let f1 = first.fence().unwrap();
        assert!(first.release().unwrap());
        let mut second = locks.try_lock(key, TTL).unwrap().unwrap();
        assert!(second.fence().unwrap() > f1, "{key}: fences must increase");
        second.extend(TTL).unwrap();
        assert!(second.release().unwrap());
    }
    // Kept alive: one renewal batch over many slots and masters.
    let kept: Vec<_> = (0..40)
        .map(|i| {
            locks
                .try_lock(format!("kept:{i}"), Duration::from_secs(1))
                .unwrap()
                .unwrap()
                .keep_alive()
                .unwrap()
        })
        .collect();
    thread::sleep(Duration::from_millis(2_500));
    for lock in &kept {
        assert!(!lock.is_lost(), "{:?} lost while kept alive", lock.key());
        assert!(lock.remaining() > Duration::ZERO);
    }
    for lock in kept {
        assert!(lock.release().unwrap());
    }
    // Waiting: a waiter is woken by a release from another manager (seeded
    // on another node): the release script's PUBLISH, which a cluster
    // carries to every node. The wake cap (5 s) is far above what waking
    // takes, so only the message can wake it in time.
    let other = support::builder()
        .cluster([cluster.servers[2].url()])
        .build()
        .unwrap();
    let held = other.try_lock("wait:x", TTL).unwrap().unwrap();
    let waiter = {
        let locks = locks.clone();
        thread::spawn(move || {
            let policy = RetryPolicy::default()
                .wake_cap(Duration::from_secs(5))
                .max_wait(Duration::from_secs(20));
            let lock = locks
                .lock_with("wait:x", TTL, &policy)
                .expect("woken and granted");
            (Instant::now(), lock.release().unwrap())
        })
    };
    thread::sleep(Duration::from_millis(500));
    let released_at = Instant::now();
    assert!(held.release().unwrap());
    let (granted_at, released) = waiter.join().unwrap();
    assert!(released);
    let waited = granted_at - released_at;
    assert!(
        waited < Duration::from_secs(1),
        "woken {waited:?} after the release"
    );
    // Fair mode over a cluster: each key's queue is on its master.
    let fair = support::builder()
        .cluster([cluster.seed()])
        .fair(true)
        .build()
        .unwrap();
    let a = fair.lock("fair:q", TTL).unwrap();
    let next = {
        let fair = fair.clone();
        thread::spawn(move || fair.lock("fair:q", TTL).map(|l| l.release()))
    };
    thread::sleep(Duration::from_millis(200));
    assert!(a.release().unwrap());
    assert!(next.join().unwrap().unwrap().unwrap());
    let status = locks.status();
    assert_eq!(status.nodes.len(), 3);
    assert!(status.healthy(), "{status}");
}

/// The semaphore, the read-write lock and the multi-key lock in a
/// cluster: each on its key's slot master (companion keys in the same
/// slot, no `CROSSSLOT`), still working after their slot moved to another
/// master while they were held; a set across slots taken all or none (what
/// it took released when a later slot's key is held, the waiter woken by
/// that key's release); a `}` key without a tag refused for a read-write
/// lock.
#[test]
fn primitives_live_on_their_slots_master() {
    let _serial = serial();
    let cluster = Cluster::start(3, 0);
    let locks = manager(&cluster);
    let sem = locks.semaphore("pool:{s}", 2).expect("semaphore");
    let rw = locks.rwlock("doc").expect("rwlock");
    let keys = ["{acct}:7", "{acct}:3"];
    let mut permit = sem.try_acquire(TTL).expect("try").expect("free");
    let mut read = rw.try_read(TTL).expect("try").expect("free");
    let mut set = locks.try_lock_all(&keys, TTL).expect("try").expect("free");
    for (key, what) in [
        ("pool:{s}", "semaphore"),
        ("{doc}:redlease:readers", "readers"),
        ("{acct}:7", "set"),
    ] {
        let owner = cluster
            .owner_of(cluster.slot(key.as_bytes()), 0)
            .expect("served");
        assert_eq!(
            cluster.servers[owner].cmd::<i64>(&[b"EXISTS", key.as_bytes()]),
            1,
            "{what} not on its slot's master"
        );
    }
    // Each slot moves to another master while held.
    for key in ["pool:{s}", "doc", "{acct}:7"] {
        let slot = cluster.slot(key.as_bytes());
        let from = cluster.owner_of(slot, 0).expect("served");
        cluster.migrate(slot, from, (from + 1) % 3, Duration::ZERO);
    }
    permit.extend(TTL).expect("extend a moved permit");
    read.extend(TTL).expect("extend a moved read lock");
    set.extend(TTL).expect("extend a moved set");
    assert!(
        sem.try_acquire(TTL).expect("try").is_some(),
        "the second permit"
    );
    assert!(
        rw.try_write(TTL).expect("try").is_none(),
        "a writer beside a reader"
    );
    assert!(locks.try_lock("{acct}:3", TTL).expect("try").is_none());
    assert!(permit.release().expect("release"));
    assert!(read.release().expect("release"));
    assert!(set.release().expect("release"));
    assert!(rw.try_write(TTL).expect("try").is_some());
    // A set across slots: taken slot by slot, all or none.
    let spread = ["x:1", "x:2", "x:3", "x:4"];
    let slots: std::collections::HashSet<u16> =
        spread.iter().map(|k| cluster.slot(k.as_bytes())).collect();
    assert!(slots.len() > 1, "the test needs keys in several slots");
    let last = spread
        .iter()
        .max_by_key(|k| cluster.slot(k.as_bytes()))
        .expect("keys");
    let blocker = locks.try_lock(last, TTL).expect("try").expect("free");
    assert!(locks.try_lock_all(&spread, TTL).expect("try").is_none());
    for key in spread {
        let owner = cluster
            .owner_of(cluster.slot(key.as_bytes()), 0)
            .expect("served");
        let value = cluster.servers[owner].get(key.as_bytes());
        assert!(
            key == *last || value.is_none(),
            "{key} kept after the set was refused"
        );
    }
    let waiting = thread::scope(|s| {
        let waiter = s.spawn(|| locks.lock_all(&spread, TTL).expect("lock_all"));
        thread::sleep(Duration::from_millis(100));
        assert!(blocker.release().expect("release"));
        waiter.join().expect("waiter")
    });
    let mut all = waiting;
    assert_eq!(all.keys().count(), 4);
    all.extend(TTL).expect("extend across slots");
    assert!(all.remaining() > TTL - Duration::from_secs(1));
    assert!(locks.try_lock(spread[0], TTL).expect("try").is_none());
    assert!(all.release().expect("release"));
    assert!(locks.try_lock_all(&spread, TTL).expect("try").is_some());
    // Random overlapping sets across slots, taken by 6 threads in any
    // order: all finish, and no key has two holders.
    let oracle = Oracle::new("sets");
    let intervals = Mutex::new(Vec::new());
    thread::scope(|s| {
        for t in 0..6u64 {
            let (locks, oracle, intervals) = (&locks, &oracle, &intervals);
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t);
                let mut con = redis::Client::open(oracle.url())
                    .expect("url")
                    .get_connection()
                    .expect("oracle");
                for _ in 0..20 {
                    let mut ids: Vec<u8> = (0..6).collect();
                    rng.shuffle(&mut ids);
                    ids.truncate(rng.usize(2..=3));
                    let names: Vec<String> = ids.iter().map(|i| format!("spread:{i}")).collect();
                    let set = locks.lock_all(&names, TTL).expect("lock_all");
                    let begin = Instant::now();
                    for name in &names {
                        assert!(!support::oracle::enter_k(&mut con, name, 1), "{name} twice");
                    }
                    thread::sleep(Duration::from_millis(1));
                    for name in &names {
                        support::oracle::leave(&mut con, name);
                    }
                    let end = Instant::now();
                    assert!(set.release().expect("release"));
                    let mut intervals = intervals.lock().expect("intervals");
                    intervals.extend(ids.iter().map(|&i| (i, begin, end)));
                }
            });
        }
    });
    let mut intervals = intervals.into_inner().expect("intervals");
    assert_eq!(support::oracle::overlaps(&mut intervals), 0);
    match locks.rwlock("a}b") {
        Err(Error::InvalidArgument(text)) => assert!(text.contains("hash tag"), "{text}"),
        other => panic!("a '}}' key without a tag: {other:?}"),
    }
}

#[test]
fn bad_cluster_settings_are_refused() {
    let _serial = serial();
    let cluster = Cluster::start(1, 0);
    let invalid = |builder: redlease::LockManagerBuilder, needle: &str| match builder.build() {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains(needle), "{msg}"),
        other => panic!("expected InvalidArgument ({needle}), got {other:?}"),
    };
    invalid(
        support::builder()
            .cluster([cluster.seed()])
            .node(cluster.seed()),
        "not beside",
    );
    invalid(support::builder().cluster(Vec::<String>::new()), "no seed");
    invalid(
        support::builder().cluster([format!("{}/1", cluster.seed())]),
        "database 0",
    );
    invalid(
        support::builder().cluster([cluster.seed(), cluster.seed()]),
        "listed twice",
    );
    let standalone = support::RedisServer::start();
    invalid(
        support::builder().cluster([standalone.url()]),
        "not in cluster mode",
    );
    // A key whose fence counter could not share its slot.
    let fenced = support::builder()
        .cluster([cluster.seed()])
        .fencing(true)
        .build()
        .unwrap();
    match fenced.try_lock("a}b", TTL) {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("hash tag"), "{msg}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert!(fenced.try_lock("{a}b}", TTL).unwrap().is_some());
    // Wrong password: a clear error at build (the cluster's helpers cannot
    // log in after this: it comes last).
    let _: () = cluster.servers[0].cmd(&[b"CONFIG", b"SET", b"requirepass", b"s3cret"]);
    let secured = &cluster;
    match support::builder()
        .cluster([secured.seed().replace("redis://", "redis://:wrong@")])
        .build()
    {
        Err(Error::Auth { .. }) => {}
        other => panic!("expected Auth, got {other:?}"),
    }
    let ok = support::builder()
        .cluster([secured.seed().replace("redis://", "redis://:s3cret@")])
        .build()
        .unwrap();
    assert!(ok.try_lock("pw", TTL).unwrap().is_some());
}

/// Asks of each server, by `INFO commandstats`, how many `ASKING` it took.
fn asking_calls(cluster: &Cluster, server: usize) -> u64 {
    let info: String = cluster.servers[server].cmd(&[b"INFO", b"commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_asking:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_slot_migrated_under_load_hides_every_redirection() {
    let _serial = serial();
    let cluster = Cluster::start(3, 0);
    let oracle = Oracle::new("cluster-migration");
    // Fenced acquisitions are two-key scripts: Redis answers TRYAGAIN to
    // those while their slot migrates (until the end, for a free lock: its
    // key is missing on both sides), so they wait by the retry policy; the
    // plain manager's single-key requests follow ASK and never wait.
    let fenced = support::builder()
        .cluster([cluster.seed()])
        .fencing(true)
        .retry(RetryPolicy::default().max_wait(Duration::from_secs(10)))
        .build()
        .unwrap();
    let locks = support::builder()
        .cluster([cluster.seed()])
        .build()
        .unwrap();
    let slot = cluster.slot(b"{hot}");
    let from = cluster.owner_of(slot, 0).unwrap();
    let to = (from + 1) % 3;
    // Long-held locks in the slot must survive the move: extend and
    // release find them on the new master.
    let mut long: Vec<_> = (0..4)
        .map(|i| {
            fenced
                .try_lock(format!("{{hot}}:long:{i}"), Duration::from_secs(30))
                .unwrap()
                .unwrap()
        })
        .collect();
    // Kept alive: one renewal batch of 6 keys of the slot, which the slot's
    // migration refuses (TRYAGAIN) until it ends: renewed one by one.
    let kept: Vec<_> = (0..6)
        .map(|i| {
            fenced
                .try_lock(format!("{{hot}}:kept:{i}"), Duration::from_millis(600))
                .unwrap()
                .unwrap()
                .keep_alive()
                .unwrap()
        })
        .collect();
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let cycles = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (moved, verdict) =
        thread::scope(|s| {
            let _stop = Stop(&stop);
            // 4 threads on other keys of the slot: take, extend, release.
            for t in 0..4 {
                let (locks, errors, cycles, stop) = (&locks, &errors, &cycles, &stop);
                s.spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) && n < 200_000 {
                        n += 1;
                        let key = format!("{{hot}}:k{t}:{}", n % 8);
                        let result = locks.try_lock(&key, TTL).and_then(|lock| match lock {
                            Some(mut lock) => {
                                lock.extend(TTL)?;
                                lock.release().map(|ours| assert!(ours, "{key} lost"))
                            }
                            None => panic!("{key} is this thread's alone, yet held"),
                        });
                        match result {
                            Ok(()) => {
                                cycles.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => errors.lock().unwrap().push(format!("{key}: {e}")),
                        }
                    }
                });
            }
            // 4 threads contending for one key, checked by the oracle.
            let (fenced, errors) = (&fenced, &errors);
            let verdict =
                s.spawn(move || {
                    oracle.run_for(4, Duration::from_secs(4), Duration::from_millis(2), |_| {
                        match fenced.lock("{hot}:oracle", TTL) {
                            Ok(lock) => Some(lock),
                            Err(e) if e.is_contended() => None,
                            Err(e) => {
                                errors.lock().unwrap().push(format!("oracle: {e}"));
                                None
                            }
                        }
                    })
                });
            thread::sleep(Duration::from_millis(400));
            let moved = cluster.migrate(slot, from, to, Duration::from_millis(300));
            let verdict = verdict.join().unwrap();
            stop.store(true, Ordering::Relaxed);
            (moved, verdict)
        });
    let errors = errors.into_inner().unwrap();
    let mut kinds: Vec<&str> = errors
        .iter()
        .map(|e| e.split_once(": ").map_or(e.as_str(), |(_, rest)| rest))
        .collect();
    kinds.dedup();
    if !errors.is_empty() {
        eprintln!("{}", locks.status());
    }
    assert!(
        errors.is_empty(),
        "{} errors escaped: {:?}",
        errors.len(),
        &kinds[..kinds.len().min(8)]
    );
    assert!(verdict.clean(), "{verdict:?}");
    assert!(verdict.sections > 20, "{verdict:?}");
    assert!(moved >= 5, "only {moved} keys were migrated");
    assert!(
        asking_calls(&cluster, to) > 0,
        "no request went to the importing node with ASKING"
    );
    assert_eq!(cluster.owner_of(slot, 0), Some(to));
    for lock in &kept {
        assert!(
            !lock.is_lost(),
            "{:?} (kept alive) was lost in the move",
            lock.key()
        );
    }
    for lock in &mut long {
        lock.extend(Duration::from_secs(30))
            .expect("extend after the move");
    }
    for lock in long {
        assert!(
            lock.release().unwrap(),
            "a long lock did not survive the move"
        );
    }
    for lock in kept {
        assert!(lock.release().unwrap());
    }
    eprintln!(
        "migration: {moved} keys moved, {} cycles and {} oracle sections, 0 errors",
        cycles.load(Ordering::Relaxed),
        verdict.sections
    );
    // Everything of the slot is on the new master now.
    assert!(cluster.keys_on(to) > 0);
    let left: Vec<Vec<u8>> = cluster.servers[from].cmd(&[
        b"CLUSTER",
        b"GETKEYSINSLOT",
        slot.to_string().as_bytes(),
        b"10",
    ]);
    assert!(left.is_empty());
}

/// Kills the master of `key`'s slot; returns when its replica serves the
/// slot (as another master sees it), and that replica's index.
fn kill_and_wait_for_promotion(cluster: &mut Cluster, key: &str, limit: Duration) -> usize {
    let slot = cluster.slot(key.as_bytes());
    let master = cluster.owner_of(slot, 0).unwrap();
    let witness = (master + 1) % cluster.masters;
    cluster.servers[master].kill();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(owner) = cluster.owner_of(slot, witness).filter(|&o| o != master) {
            return owner;
        }
        assert!(
            Instant::now() < deadline,
            "no replica promoted within {limit:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_master_is_followed_to_its_promoted_replica() {
    let _serial = serial();
    let mut cluster = Cluster::start(3, 1);
    let max_ttl = Duration::from_secs(2);
    let build = |quarantine: bool| {
        support::builder()
            .cluster([cluster.servers[1].url(), cluster.servers[2].url()])
            .io_timeout(Duration::from_millis(200))
            .max_ttl(max_ttl)
            .restart_quarantine(quarantine)
            .build()
            .unwrap()
    };
    let (guarded, open) = (build(true), build(false));
    // Two keys of master 0's first slot: one per manager.
    let tag = (0u32..)
        .map(|n| format!("{{t{n}}}"))
        .find(|t| cluster.slot(t.as_bytes()) < cluster.range(0).1)
        .unwrap();
    let (k1, k2) = (format!("{tag}:guarded"), format!("{tag}:open"));
    let held = guarded
        .try_lock(&k1, Duration::from_secs(1))
        .unwrap()
        .unwrap();
    thread::sleep(Duration::from_millis(100)); // replicated
    let killed = Instant::now();
    let promoted_to = kill_and_wait_for_promotion(&mut cluster, &k1, Duration::from_secs(30));
    let promoted = Instant::now();
    // Each manager tries every 20 ms until it is granted.
    let resume = |locks: &LockManager, key: &str| -> (Duration, Vec<String>) {
        let mut seen = Vec::new();
        loop {
            match locks.try_lock(key, Duration::from_secs(1)) {
                Ok(Some(lock)) => {
                    assert!(lock.release().unwrap());
                    return (promoted.elapsed(), seen);
                }
                Ok(None) => seen.push("held".into()),
                Err(e) => {
                    assert!(e.is_retryable(), "{e}");
                    let kind = format!("{e}").split(':').next().unwrap_or("").to_owned();
                    if seen.last() != Some(&kind) {
                        seen.push(kind);
                    }
                }
            }
            assert!(
                promoted.elapsed() < Duration::from_secs(20),
                "never granted again: {seen:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    };
    // Side by side: neither waits for the other.
    let ((open_after, open_seen), (guarded_after, guarded_seen)) = thread::scope(|s| {
        let open = s.spawn(|| resume(&open, &k2));
        let guarded = resume(&guarded, &k1);
        (open.join().unwrap(), guarded)
    });
    eprintln!(
        "failover: promoted {:?} after the kill; without quarantine granted {open_after:?} after, with {guarded_after:?} (saw {guarded_seen:?}; open saw {open_seen:?})",
        promoted - killed
    );
    assert!(
        open_after < Duration::from_millis(1_500),
        "open manager resumed after {open_after:?}"
    );
    // The guarded manager's new master served nothing for max_ttl after it
    // saw the promotion (which is after `promoted`, less the poll's 20 ms).
    assert!(
        guarded_after + Duration::from_millis(50) >= max_ttl,
        "granted {guarded_after:?} after the promotion"
    );
    assert!(
        guarded_after < max_ttl + Duration::from_secs(2),
        "{guarded_after:?}"
    );
    assert!(
        guarded_seen.iter().any(|s| s.contains("quarantine")),
        "{guarded_seen:?}"
    );
    drop(held); // its master is gone: the release on drop fails quietly
    let status = guarded.status();
    assert!(
        status.nodes.iter().any(|n| n
            .name
            .ends_with(&cluster.servers[promoted_to].port.to_string())),
        "{status}"
    );
}

/// The run's seed (`REDLEASE_CLUSTER_SEED`, else random; printed so that a
/// failure can be replayed) and its length (`REDLEASE_CLUSTER_SECS`, 6 s by
/// default).
fn seeded() -> (u64, fastrand::Rng, Duration) {
    let seed = std::env::var("REDLEASE_CLUSTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let secs = std::env::var("REDLEASE_CLUSTER_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    println!("seed {seed} (REDLEASE_CLUSTER_SEED={seed} replays it), {secs} s");
    (
        seed,
        fastrand::Rng::with_seed(seed),
        Duration::from_secs(secs),
    )
}

/// The invariants under random slot migrations and manual failovers:
/// never two holders of a key (the oracle), a lock that is still valid is
/// still held when released, kept-alive locks are never lost, and only
/// retryable errors escape (a failover's pause and quarantine, a fenced
/// lock's TRYAGAIN), each counted.
#[test]
fn random_migrations_and_failovers_keep_every_lock_exclusive() {
    let _serial = serial();
    let (_seed, mut rng, length) = seeded();
    let cluster = Cluster::start(3, 1);
    let oracle = Oracle::new("cluster-random");
    let tags = ["{red}", "{green}", "{blue}"];
    let build = || {
        support::builder()
            .cluster([cluster.seed(), cluster.servers[1].url()])
            // Long enough for the kept-alive lock to outlast a manual
            // failover's pause of writes (up to 2 node timeouts).
            .max_ttl(Duration::from_secs(4))
            .restart_quarantine(true)
            .retry(RetryPolicy::default().max_wait(Duration::from_secs(10)))
    };
    let fenced = build().fencing(true).build().unwrap();
    let locks = build().build().unwrap();
    let kept = locks
        .lock("{green}:kept", Duration::from_secs(3))
        .unwrap()
        .keep_alive()
        .unwrap();
    let retryable: Mutex<std::collections::BTreeMap<String, u64>> = Mutex::default();
    let fatal: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let not_ours = AtomicU64::new(0);
    let note = |e: Error, what: &str| {
        if e.is_retryable() {
            let kind = e
                .to_string()
                .split(':')
                .next()
                .unwrap_or_default()
                .to_owned();
            *retryable.lock().unwrap().entry(kind).or_default() += 1;
        } else {
            fatal.lock().unwrap().push(format!("{what}: {e}"));
        }
    };
    let stop = AtomicBool::new(false);
    let mut faults = Vec::new();
    let verdict = thread::scope(|s| {
        let _stop = Stop(&stop);
        for t in 0..3 {
            let (locks, note, stop, not_ours) = (&locks, &note, &stop, &not_ours);
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && n < 500_000 {
                    n += 1;
                    let key = format!("{}:w{t}:{}", tags[(n % 3) as usize], n % 5);
                    match locks.try_lock(&key, Duration::from_millis(800)) {
                        Ok(Some(mut lock)) => {
                            if let Err(e) = lock.extend(Duration::from_millis(800)) {
                                note(e, "extend");
                            }
                            let valid = lock.remaining() > Duration::from_millis(50);
                            match lock.release() {
                                Ok(false) if valid => {
                                    not_ours.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(_) => {}
                                Err(e) => note(e, "release"),
                            }
                        }
                        Ok(None) => panic!("{key} is this thread's alone, yet held"),
                        Err(e) => note(e, "try_lock"),
                    }
                }
            });
        }
        let (fenced, note) = (&fenced, &note);
        let verdict = s.spawn(|| {
            oracle.run_for(3, length, Duration::from_millis(2), |_| {
                match fenced.lock("{red}:oracle", Duration::from_millis(800)) {
                    Ok(lock) => Some(lock),
                    Err(e) => {
                        if !e.is_contended() {
                            note(e, "oracle lock");
                        }
                        None
                    }
                }
            })
        });
        let deadline = Instant::now() + length;
        while Instant::now() + Duration::from_millis(500) < deadline {
            thread::sleep(Duration::from_millis(rng.u64(100..400)));
            let masters = cluster.masters_now(cluster.masters_now(0)[0]);
            if rng.u8(..4) == 0 {
                let master = masters[rng.usize(..masters.len())];
                if let Some(&replica) = cluster.replicas_of(master, master).first() {
                    cluster.manual_failover(replica);
                    faults.push(format!("failover {master}->{replica}"));
                }
            } else {
                let tag = tags[rng.usize(..tags.len())];
                let slot = cluster.slot(tag.as_bytes());
                let from = cluster.owner_of(slot, masters[0]).unwrap();
                let others: Vec<usize> = masters.iter().copied().filter(|&m| m != from).collect();
                let to = others[rng.usize(..others.len())];
                // The cluster may have failed a master over by itself (a
                // manual failover pauses writes): then this move is skipped.
                let pause = Duration::from_millis(rng.u64(10..60));
                match cluster.try_migrate(slot, from, to, pause) {
                    Ok(_) => faults.push(format!("{tag} {from}->{to}")),
                    Err(e) => faults.push(format!("{tag} {from}->{to} skipped: {e}")),
                }
            }
        }
        let verdict = verdict.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        verdict
    });
    println!(
        "faults: {faults:?}; oracle {verdict:?}; retryable errors: {:?}",
        retryable.lock().unwrap()
    );
    assert!(verdict.clean(), "{verdict:?}");
    assert!(verdict.sections > 10, "{verdict:?}");
    assert!(!faults.is_empty());
    let fatal = fatal.into_inner().unwrap();
    assert!(fatal.is_empty(), "non-retryable errors: {fatal:?}");
    assert_eq!(
        not_ours.load(Ordering::Relaxed),
        0,
        "a valid lock was gone at its release"
    );
    assert!(!kept.is_lost(), "a kept-alive lock was lost");
    assert!(kept.release().unwrap());
}

#[test]
fn a_promoted_replica_is_quarantined_before_its_first_grant() {
    let _serial = serial();
    let cluster = Cluster::start(1, 1);
    let max_ttl = Duration::from_secs(1);
    let locks = support::builder()
        .cluster([cluster.seed()])
        .max_ttl(max_ttl)
        .restart_quarantine(true)
        .build()
        .unwrap();
    let held = locks.try_lock("held", max_ttl).unwrap().unwrap();
    thread::sleep(Duration::from_millis(50)); // replicated
    cluster.manual_failover(1);
    let promoted = Instant::now();
    // The first request goes to the old master, whose MOVED names the
    // replica: quarantined before anything is sent to it.
    match locks.try_lock("free", max_ttl) {
        Err(Error::Quarantined { remaining, .. }) => {
            assert!(remaining > max_ttl / 4, "{remaining:?}")
        }
        other => panic!("expected Quarantined, got {other:?}"),
    }
    assert!(matches!(
        locks.try_lock("held", max_ttl),
        Err(Error::Quarantined { .. })
    ));
    // Release and extend are not quarantined: the lock is found on the new
    // master (a manual failover loses nothing).
    assert!(held.release().unwrap());
    loop {
        match locks.try_lock("free", max_ttl) {
            Ok(Some(lock)) => {
                assert!(
                    promoted.elapsed() >= max_ttl,
                    "granted {:?} after the failover",
                    promoted.elapsed()
                );
                assert!(lock.release().unwrap());
                break;
            }
            Err(Error::Quarantined { .. }) => thread::sleep(Duration::from_millis(20)),
            other => panic!("{other:?}"),
        }
        assert!(promoted.elapsed() < max_ttl * 3, "still quarantined");
    }
}

#[test]
fn lazy_and_partial_seeds_find_the_cluster() {
    let _serial = serial();
    let cluster = Cluster::start(3, 0);
    let dead = format!("redis://127.0.0.1:{}", support::free_port());
    // Eager: a dead first seed is skipped.
    let eager = support::builder()
        .cluster([dead.clone(), cluster.servers[1].url()])
        .build()
        .unwrap();
    assert_eq!(eager.nodes(), 3);
    // Lazy: nothing asked at build; the first calls learn the slots (from
    // MOVED, or from the topology after the dead seed fails).
    let lazy = support::builder()
        .cluster([dead, cluster.servers[2].url()])
        .connect_lazily(true)
        .build()
        .unwrap();
    let mut granted = 0;
    for i in 0..60 {
        match lazy.try_lock(format!("lazy:{i}"), TTL) {
            Ok(Some(lock)) => {
                granted += 1;
                assert!(lock.release().unwrap());
            }
            Ok(None) => panic!("lazy:{i} held"),
            // The dead seed's refused connection, before the topology came.
            Err(e) => assert!(e.is_retryable(), "{e}"),
        }
    }
    assert!(granted >= 55, "only {granted} of 60 granted");
    assert_eq!(lazy.nodes(), 3);
}

/// A slot left half migrated for longer than the locks' TTL: a renewal
/// batch of its keys is refused (`TRYAGAIN`: some keys on each side) for as
/// long as that lasts, so the keeper renews them one by one, each following
/// its own redirection. Without that, every one of them would be lost.
#[test]
fn kept_alive_locks_survive_a_slot_stuck_mid_migration() {
    let _serial = serial();
    let cluster = Cluster::start(2, 0);
    let locks = manager(&cluster);
    let slot = cluster.slot(b"{stuck}");
    let from = cluster.owner_of(slot, 0).unwrap();
    let to = 1 - from;
    let ttl = Duration::from_millis(800);
    let kept: Vec<_> = (0..8)
        .map(|i| {
            locks
                .try_lock(format!("{{stuck}}:{i}"), ttl)
                .unwrap()
                .unwrap()
                .keep_alive()
                .unwrap()
        })
        .collect();
    cluster.begin_migration(slot, from, to);
    assert_eq!(cluster.migrate_keys(slot, from, to, 4, Duration::ZERO), 4);
    // Four keys on each side, for three TTLs.
    thread::sleep(ttl * 3);
    for lock in &kept {
        assert!(
            !lock.is_lost(),
            "{:?} lost while its slot was half migrated",
            lock.key()
        );
        assert!(lock.remaining() > Duration::ZERO);
    }
    cluster.migrate_keys(slot, from, to, usize::MAX, Duration::ZERO);
    cluster.finish_migration(slot, from, to);
    thread::sleep(ttl * 2);
    for lock in kept {
        let key = lock.key().to_vec();
        assert!(lock.release().unwrap(), "{key:?} not held after the move");
    }
}

/// The primitives held while their slot is half migrated (some of their
/// keys moved, some not): each renews and releases (a set key by key, each
/// following its own redirection); a new acquisition there meets only
/// retryable errors (Redis refuses scripts over keys split across the two
/// nodes with `TRYAGAIN`) or succeeds; once the slot has moved, all work.
#[test]
fn primitives_held_through_a_half_migrated_slot() {
    let _serial = serial();
    let cluster = Cluster::start(2, 0);
    let locks = manager(&cluster);
    let slot = cluster.slot(b"{mig}");
    let from = cluster.owner_of(slot, 0).expect("served");
    let to = 1 - from;
    let sem = locks.semaphore("{mig}:sem", 2).expect("semaphore");
    let rw = locks.rwlock("{mig}:rw").expect("rwlock");
    let rw2 = locks.rwlock("{mig}:rw2").expect("rwlock");
    let keys = ["{mig}:a", "{mig}:b", "{mig}:c", "{mig}:d"];
    let mut permit = sem.try_acquire(TTL).expect("try").expect("free");
    let mut read = rw.try_read(TTL).expect("try").expect("free");
    let mut write = rw2.try_write(TTL).expect("try").expect("free");
    let mut set = locks.try_lock_all(&keys, TTL).expect("try").expect("free");
    cluster.begin_migration(slot, from, to);
    // Half of each: the set's keys split, the semaphore moved, the
    // readers' set and the writer's key not.
    cluster.migrate_these(from, to, &["{mig}:a", "{mig}:b", "{mig}:sem"]);
    permit.extend(TTL).expect("extend a permit mid-migration");
    read.extend(TTL).expect("extend a read lock mid-migration");
    write
        .extend(TTL)
        .expect("extend a write lock mid-migration");
    set.extend(TTL).expect("extend a set mid-migration");
    for (what, attempt) in [
        ("permit", sem.try_acquire(TTL).map(|p| p.is_some())),
        ("write", rw.try_write(TTL).map(|w| w.is_some())),
        ("read", rw2.try_read(TTL).map(|r| r.is_some())),
        (
            "set",
            locks
                .try_lock_all(&["{mig}:x", "{mig}:y"], TTL)
                .map(|s| s.is_some()),
        ),
    ] {
        match attempt {
            Ok(got) => println!("{what} mid-migration: {got}"),
            Err(e) => assert!(e.is_retryable(), "{what}: {e}"),
        }
    }
    assert!(permit.release().expect("release a permit mid-migration"));
    assert!(read.release().expect("release a read lock mid-migration"));
    assert!(set.release().expect("release a set mid-migration"));
    cluster.migrate_keys(slot, from, to, usize::MAX, Duration::ZERO);
    cluster.finish_migration(slot, from, to);
    assert!(
        write
            .release()
            .expect("release a write lock after the move")
    );
    let again = locks.lock_all(&keys, TTL).expect("the set after the move");
    assert!(again.release().expect("release"));
    assert!(
        rw.write(TTL)
            .expect("write after the move")
            .release()
            .expect("release")
    );
}

/// Nodes that announce a host name and have redirections name it
/// (`cluster-preferred-endpoint-type hostname`): a `MOVED` to `localhost`
/// is the same server the topology listed by IP, so a promoted replica is
/// still recognised and quarantined.
#[test]
fn host_name_endpoints_are_the_same_servers() {
    let _serial = serial();
    let cluster = Cluster::start_with(
        1,
        1,
        &[
            "--cluster-announce-hostname",
            "localhost",
            "--cluster-preferred-endpoint-type",
            "hostname",
        ],
    );
    let max_ttl = Duration::from_secs(1);
    let locks = support::builder()
        .cluster([cluster.seed()])
        .max_ttl(max_ttl)
        .restart_quarantine(true)
        .build()
        .unwrap();
    assert!(locks.try_lock("before", max_ttl).unwrap().is_some());
    cluster.manual_failover(1);
    match locks.try_lock("after", max_ttl) {
        Err(Error::Quarantined { .. }) => {}
        other => panic!("expected Quarantined (MOVED named localhost), got {other:?}"),
    }
    thread::sleep(max_ttl + Duration::from_millis(100));
    assert!(locks.try_lock("after", max_ttl).unwrap().is_some());
}

/// Each cluster manager has a refresher thread (and subscribers, and
/// pools): dropping the manager ends them all, right after the refresher
/// was asked for a topology (a MOVED) or while it waits idle.
#[test]
fn a_dropped_cluster_manager_leaks_no_thread_or_descriptor() {
    let _serial = serial();
    let cluster = Cluster::start(2, 0);
    let slot = cluster.slot(b"{leak}");
    let owner = cluster.owner_of(slot, 0).unwrap();
    drop(manager(&cluster));
    thread::sleep(Duration::from_millis(500));
    let before = support::resources();
    for round in 0..5 {
        let locks = manager(&cluster);
        drop(locks.try_lock("{leak}:k", TTL).unwrap().expect("free"));
        // Move the slot back and forth: the next call meets MOVED and asks
        // the refresher for the topology; the manager is dropped at once.
        let (from, to) = if round % 2 == 0 {
            (owner, 1 - owner)
        } else {
            (1 - owner, owner)
        };
        cluster.migrate(slot, from, to, Duration::from_millis(50));
        drop(locks.try_lock("{leak}:k", TTL).unwrap().expect("free"));
        // Dropped while the refresher is busy, or (every other round) once
        // it waits idle again.
        if round % 2 == 1 {
            thread::sleep(Duration::from_millis(300));
        }
        drop(locks);
    }
    support::eventually(
        Duration::from_secs(5),
        "threads and descriptors back",
        || support::resources() == before,
    );
}
