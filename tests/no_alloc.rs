//! The hot path makes no heap allocation in steady state: counted exactly by
//! a global allocator, in a test binary of its own.
//!
//! See `support/alloc.rs` for how counting works.

mod support;

use std::time::Duration;

use support::RedisServer;
use support::alloc::CountingAllocator;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations made on this thread by `f`.
fn allocations(f: impl FnOnce()) -> u64 {
    support::alloc::count(f).0
}

const CYCLES: u64 = 10_000;
const WARM_UP: u64 = 200;
const TTL: Duration = Duration::from_secs(10);

/// Runs `cycle` WARM_UP times, then counts allocations over CYCLES runs.
fn per_cycle(name: &str, mut cycle: impl FnMut()) -> u64 {
    for _ in 0..WARM_UP {
        cycle();
    }
    let total = allocations(|| {
        for _ in 0..CYCLES {
            cycle();
        }
    });
    println!("{name:<40} {total} allocations in {CYCLES} cycles");
    total
}

fn key_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

#[test]
fn hot_path_does_not_allocate() {
    let servers = RedisServer::start_many(5);
    let quorum = |n: usize| support::manager(servers[..n].iter().map(RedisServer::url));
    let (one, three, five) = (quorum(1), quorum(3), quorum(5));
    let short = key_of(8);
    let long = key_of(64);

    let mut results = Vec::new();
    for (label, locks) in [("1 node", &one), ("3 nodes", &three), ("5 nodes", &five)] {
        for (key_label, key) in [("8-byte key", &short), ("64-byte key", &long)] {
            results.push(per_cycle(
                &format!("try_lock + release, {label}, {key_label}"),
                || {
                    let lock = locks.try_lock(key, TTL).expect("try_lock").expect("free");
                    assert!(lock.release().expect("release"));
                },
            ));
        }
        results.push(per_cycle(&format!("try_lock + drop, {label}"), || {
            let lock = locks
                .try_lock(&short, TTL)
                .expect("try_lock")
                .expect("free");
            drop(lock);
        }));

        let held = locks
            .try_lock(b"held", TTL)
            .expect("try_lock")
            .expect("free");
        results.push(per_cycle(&format!("contended try_lock, {label}"), || {
            assert!(locks.try_lock(b"held", TTL).expect("try_lock").is_none());
        }));

        let mut lock = held;
        results.push(per_cycle(&format!("extend, {label}"), || {
            lock.extend(TTL).expect("extend");
        }));
        assert!(lock.release().expect("release"));

        results.push(per_cycle(&format!("LockManager::clone, {label}"), || {
            let clone = locks.clone();
            drop(clone);
        }));
    }
    assert!(
        results.iter().all(|&n| n == 0),
        "the hot path allocated: {results:?}"
    );
}

/// Fencing mode: acquisitions by script with a fence, the fence confirmed
/// over the quorum (one more round trip), on 1 and 3 nodes.
#[test]
fn fenced_cycles_do_not_allocate() {
    let servers = RedisServer::start_many(3);
    let fencing = || support::builder().fencing(true);
    let one = support::manager_with([servers[0].url()], fencing());
    let three = support::manager_with(servers.iter().map(RedisServer::url), fencing());
    let mut results = Vec::new();
    for (label, locks) in [("1 node", &one), ("3 nodes", &three)] {
        results.push(per_cycle(
            &format!("try_lock + fence + release, {label}"),
            || {
                let mut lock = locks.try_lock(b"f", TTL).expect("try_lock").expect("free");
                assert!(lock.fence().expect("fence") > 0);
                assert!(lock.release().expect("release"));
            },
        ));
    }
    assert!(
        results.iter().all(|&n| n == 0),
        "fenced cycles allocated: {results:?}"
    );
}

/// The primitives: a permit, a read lock, a write lock and a 3-key lock,
/// each taken, extended and released, plus a refused attempt of each; the
/// multi-key lock over 3 nodes too. Keys of 8 bytes: inline.
#[test]
fn primitives_do_not_allocate() {
    let servers = RedisServer::start_many(3);
    let one = support::manager([servers[0].url()]);
    let three = support::manager(servers.iter().map(RedisServer::url));
    let sem = one.semaphore(b"permits1", 2).expect("semaphore");
    let rw = one.rwlock(b"rwlock01").expect("rwlock");
    let keys: [&[u8]; 3] = [b"multi-k1", b"multi-k2", b"multi-k3"];
    let mut results = Vec::new();
    results.push(per_cycle("semaphore acquire + extend + release", || {
        let mut permit = sem.try_acquire(TTL).expect("try").expect("free");
        permit.extend(TTL).expect("extend");
        assert!(permit.release().expect("release"));
    }));
    results.push(per_cycle("read + extend + release", || {
        let mut read = rw.try_read(TTL).expect("try").expect("free");
        read.extend(TTL).expect("extend");
        assert!(read.release().expect("release"));
    }));
    results.push(per_cycle("write + extend + release", || {
        let mut write = rw.try_write(TTL).expect("try").expect("free");
        write.extend(TTL).expect("extend");
        assert!(write.release().expect("release"));
    }));
    for (label, locks) in [("1 node", &one), ("3 nodes", &three)] {
        results.push(per_cycle(
            &format!("3-key lock + extend + release, {label}"),
            || {
                let mut set = locks.try_lock_all(&keys, TTL).expect("try").expect("free");
                set.extend(TTL).expect("extend");
                assert!(set.release().expect("release"));
            },
        ));
    }
    let _full = (
        sem.try_acquire(TTL).expect("try").expect("free"),
        sem.try_acquire(TTL).expect("try").expect("free"),
    );
    let _writer = rw.try_write(TTL).expect("try").expect("free");
    let _set = one.try_lock_all(&keys, TTL).expect("try").expect("free");
    results.push(per_cycle("refused permit, read, write and set", || {
        assert!(sem.try_acquire(TTL).expect("try").is_none());
        assert!(rw.try_read(TTL).expect("try").is_none());
        assert!(rw.try_write(TTL).expect("try").is_none());
        assert!(one.try_lock_all(&keys, TTL).expect("try").is_none());
    }));
    assert!(
        results.iter().all(|&n| n == 0),
        "the primitives allocated: {results:?}"
    );
}

/// Parks the calling thread once on a parking_lot primitive. The first time
/// a thread parks, parking_lot sets up its per-thread data and may create
/// or grow its global table: once per thread (and per doubling of threads),
/// not per lock. Warm-up is where that belongs.
fn park_once() {
    let mutex = parking_lot::Mutex::new(());
    let mut guard = mutex.lock();
    parking_lot::Condvar::new().wait_for(&mut guard, Duration::from_micros(1));
}

/// Contended cycles: two threads passing one key back and forth, each
/// `lock` a real wait (woken by a handoff or a release), on 1 and 3 nodes,
/// in fair mode, and polling. Counted on both threads after a warm-up.
#[test]
fn contended_waits_do_not_allocate() {
    let servers = RedisServer::start_many(3);
    let one = support::manager([servers[0].url()]);
    let three = support::manager(servers.iter().map(RedisServer::url));
    let fair = support::manager_with([servers[1].url()], support::builder().fair(true));
    let wake = redlease::RetryPolicy::default();
    let poll = redlease::RetryPolicy::exponential(Duration::from_millis(1))
        .max_delay(Duration::from_millis(2))
        .wake_on_release(false);
    let mut results = Vec::new();
    for (label, locks, policy) in [
        ("wake, 1 node", &one, &wake),
        ("wake, 3 nodes", &three, &wake),
        ("fair, 1 node", &fair, &wake),
        ("poll, 1 node", &one, &poll),
    ] {
        let cycles = 1_000;
        let counts: Vec<(u64, u32)> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let waited = std::cell::Cell::new(0u32);
                        let cycle = || {
                            let lock = locks.lock_with(b"pass", TTL, policy).expect("lock");
                            waited.set(waited.get() + u32::from(lock.attempts() > 1));
                            std::thread::yield_now();
                            drop(lock);
                        };
                        for _ in 0..WARM_UP {
                            cycle();
                        }
                        park_once();
                        waited.set(0);
                        let n = allocations(|| (0..cycles).for_each(|_| cycle()));
                        (n, waited.get())
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("worker"))
                .collect()
        });
        println!(
            "contended lock + drop, {label:<14} {counts:?} (allocations, cycles that waited) per thread in {cycles} cycles"
        );
        let waited: u32 = counts.iter().map(|c| c.1).sum();
        assert!(waited > 0, "{label}: no cycle waited, nothing was measured");
        results.extend(counts.iter().map(|c| c.0));
    }
    assert!(
        results.iter().all(|&n| n == 0),
        "contended waits allocated: {results:?}"
    );
}

/// A unix socket is as allocation-free as TCP. TLS is not: rustls 0.23
/// allocates for each record it encrypts and each it decrypts (its
/// unbuffered API too, see `src/tls.rs`), which this test counts exactly
/// so that a change on either side shows.
#[test]
fn unix_sockets_do_not_allocate_and_tls_allocations_are_counted() {
    let server = RedisServer::start_unix();
    let unix = support::builder()
        .node(server.unix_url())
        .build()
        .expect("unix");
    let key = key_of(8);
    let n = per_cycle("try_lock + release, unix socket", || {
        let lock = unix.try_lock(&key, TTL).expect("try_lock").expect("free");
        assert!(lock.release().expect("release"));
    });
    assert_eq!(n, 0, "the unix socket path allocated");

    let certs = support::tls::Certs::make();
    let tls = support::tls::TlsServer::start(&certs, support::tls::ServerCert::Good, false);
    let locks = support::builder()
        .node(tls.url("localhost"))
        .tls_ca_file(certs.ca())
        .build()
        .expect("tls");
    let n = per_cycle("try_lock + release, tls", || {
        let lock = locks.try_lock(&key, TTL).expect("try_lock").expect("free");
        assert!(lock.release().expect("release"));
    });
    println!("tls: {} allocations per cycle", n as f64 / CYCLES as f64);
    assert_eq!(
        n,
        TLS_ALLOCATIONS_PER_CYCLE * CYCLES,
        "tls allocations per cycle changed: update the README and this figure"
    );
}

/// Two round trips per cycle (acquire, release), each one record out (an
/// allocation to encrypt it) and one record in (a copy of its plaintext).
const TLS_ALLOCATIONS_PER_CYCLE: u64 = 4;

/// A Redis Cluster: the slot's lookup (a shared lock, an `Arc` clone) and
/// the request allocate nothing, on every master, for plain and fenced
/// locks and kept-alive renewals' extend.
#[test]
fn cluster_cycles_do_not_allocate() {
    let cluster = support::cluster::Cluster::start(3, 0);
    let plain = support::builder()
        .cluster([cluster.seed()])
        .build()
        .unwrap();
    let fenced = support::builder()
        .cluster([cluster.seed()])
        .fencing(true)
        .build()
        .unwrap();
    // Keys on every master (their slots' owners differ).
    let keys: Vec<Vec<u8>> = (0..12)
        .map(|i| format!("cluster:{i}").into_bytes())
        .collect();
    let mut results = Vec::new();
    for (label, locks) in [("plain", &plain), ("fenced", &fenced)] {
        let mut i = 0;
        results.push(per_cycle(
            &format!("cluster try_lock + extend + release, {label}"),
            || {
                i += 1;
                let mut lock = locks
                    .try_lock(&keys[i % keys.len()], TTL)
                    .expect("try_lock")
                    .expect("free");
                lock.extend(TTL).expect("extend");
                if label == "fenced" {
                    lock.fence().expect("fence");
                }
                assert!(lock.release().expect("release"));
            },
        ));
    }
    assert!(
        results.iter().all(|&n| n == 0),
        "cluster cycles allocated: {results:?}"
    );
}

/// Sick nodes that answer with error replies, in a quorum that still
/// grants: one out of memory (`-OOM` to every acquisition) and one turned
/// replica (`-READONLY` to every write, renewals included: it holds the
/// renewed lock, copied from its master). Their texts are allocated once,
/// then shared (see `ServerText`), and the nodes' latest-error strings are
/// reused, so the cycles stay at zero. The test checks that the nodes did
/// refuse, during each measured loop, so that it cannot pass by the errors
/// going away.
#[test]
fn nodes_answering_errors_do_not_allocate() {
    let servers = RedisServer::start_many(6);
    let (oom, replica, master) = (&servers[3], &servers[4], &servers[5]);
    // A replica of a server outside the quorum.
    let master_port = master.port.to_string();
    let _: () = replica.cmd(&[b"REPLICAOF", b"127.0.0.1", master_port.as_bytes()]);
    wait_until("the replica's link to its master", || {
        let info: String = replica.cmd(&[b"INFO", b"replication"]);
        info.contains("master_link_status:up")
    });
    let locks = support::manager(servers[..5].iter().map(RedisServer::url));
    let held_by = |key: &[u8]| servers[..5].iter().filter(|s| s.get(key).is_some()).count();

    // Taken before node 3 runs out of memory, so that node 3 holds it too
    // (renewing takes no memory); the replica gets it, with our token, from
    // its master, so that its renewals reach the write it refuses.
    let mut held = locks
        .try_lock(b"held", TTL)
        .expect("try_lock")
        .expect("free");
    let token = servers[0].get(b"held").expect("the lock's token");
    let _: () = master.cmd(&[b"SET", b"held", &token, b"PX", b"600000"]);
    wait_until("the lock copied to the replica", || {
        replica.get(b"held").as_deref() == Some(&token[..])
    });
    let _: () = oom.cmd(&[b"CONFIG", b"SET", b"maxmemory-policy", b"noeviction"]);
    let _: () = oom.cmd(&[b"CONFIG", b"SET", b"maxmemory", b"1"]);

    let probe = locks
        .try_lock(b"probe", TTL)
        .expect("try_lock")
        .expect("free");
    assert_eq!(held_by(b"probe"), 3, "the sick nodes should have refused");
    drop(probe);

    // Each loop starts more than a second after the last note (a node
    // notes its latest error at most once a second), so that a note within
    // the loop shows the refusals went on in it.
    let refused_within = |what: &str, loop_time: std::time::Duration| {
        let status = locks.status();
        for (i, text) in [(3, "OOM"), (4, "READONLY")] {
            let noted = status.nodes[i].last_error.as_ref();
            assert!(
                noted.is_some_and(|(said, ago)| said.contains(text) && *ago < loop_time),
                "node {i} did not refuse during the {what} loop: {noted:?}"
            );
        }
    };
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let started = std::time::Instant::now();
    let mut results = vec![per_cycle(
        "try_lock + release, 2 of 5 answering errors",
        || {
            let lock = locks.try_lock(b"k", TTL).expect("try_lock").expect("free");
            assert!(lock.release().expect("release"));
        },
    )];
    refused_within("try_lock", started.elapsed());

    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let started = std::time::Instant::now();
    results.push(per_cycle("extend, 1 of 5 answering errors", || {
        held.extend(TTL).expect("extend");
    }));
    let status = locks.status();
    let noted = status.nodes[4].last_error.as_ref();
    assert!(
        noted.is_some_and(|(said, ago)| said.contains("READONLY") && *ago < started.elapsed()),
        "the replica did not refuse the renewals: {noted:?}"
    );
    assert!(held.release().expect("release"));
    assert!(
        results.iter().all(|&n| n == 0),
        "error replies allocated: {results:?}"
    );
}

/// Waits up to 10 s for `ready`.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The counter does see allocations: a test of the test.
#[test]
fn the_counter_counts() {
    let n = allocations(|| {
        let v: Vec<u8> = Vec::with_capacity(10);
        std::hint::black_box(v);
    });
    assert_eq!(n, 1);
    // A key longer than 64 bytes is kept on the heap: one allocation.
    let server = RedisServer::start();
    let locks = support::manager([server.url()]);
    let key = key_of(65);
    drop(locks.try_lock(&key, TTL).expect("warm up"));
    let n = allocations(|| {
        let lock = locks.try_lock(&key, TTL).expect("try_lock").expect("free");
        assert!(lock.release().expect("release"));
    });
    assert_eq!(n, 1, "a 65-byte key should cost exactly its one copy");
}
