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
