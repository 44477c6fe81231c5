//! The lease keeper's costs, measured in a process of its own (one test),
//! so that no other test's threads or allocations blur the counts: one
//! thread per manager, stopped with it; renewal rounds and keep-alive
//! cycles that allocate nothing in steady state.

mod support;

use std::thread;
use std::time::Duration;

use support::RedisServer;
use support::alloc::{CountingAllocator, allocations_everywhere};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[test]
fn keeper_threads_and_allocations() {
    let server = RedisServer::start();
    let locks = support::manager([server.url()]);
    support::warm(&locks);
    let (threads_before, fds_before) = support::resources();

    // 200 kept-alive locks, renewed every 20 ms: one keeper thread.
    let ttl = Duration::from_millis(60);
    let held: Vec<_> = (0..200)
        .map(|i| {
            locks
                .try_lock(format!("many:{i}"), ttl)
                .expect("try_lock")
                .expect("free")
                .keep_alive()
                .expect("keep_alive")
        })
        .collect();
    let (threads_during, _) = support::resources();
    assert_eq!(threads_during, threads_before + 1, "one keeper thread");

    // Renewal rounds in steady state allocate nothing, on any thread (this
    // one only sleeps meanwhile): about 25 rounds of 7 batches here.
    thread::sleep(Duration::from_millis(500));
    let before = allocations_everywhere();
    thread::sleep(Duration::from_millis(500));
    let during = allocations_everywhere() - before;
    assert!(
        held.iter().all(|l| !l.is_lost()),
        "a kept-alive lock was lost"
    );
    assert_eq!(during, 0, "allocations during 500 ms of renewals");

    // Keep-alive cycles (try_lock, keep_alive, release) reuse lease slots:
    // none on this thread or the keeper's once warm.
    let cycle = || {
        let lock = locks
            .try_lock("cycle", ttl)
            .expect("try_lock")
            .expect("free")
            .keep_alive()
            .expect("keep_alive");
        assert!(lock.release().expect("release"));
    };
    for _ in 0..200 {
        cycle();
    }
    let before = allocations_everywhere();
    for _ in 0..2_000 {
        cycle();
    }
    let cycles = allocations_everywhere() - before;
    assert_eq!(cycles, 0, "allocations over 2,000 keep-alive cycles");

    for lock in held {
        assert!(lock.release().expect("release"));
    }
    drop(locks);
    support::eventually(Duration::from_secs(2), "the keeper stopping", || {
        support::resources().0 < threads_during
    });
    let _ = fds_before;
}
