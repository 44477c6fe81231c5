//! Lock cycles against real redis-server instances (started by the test
//! fixture on free loopback ports): ours against the raw-socket floor and
//! against redis-rs by hand; Redlock with scatter/gather against one node
//! after another; contended attempts, extend; throughput by thread count.
//!
//! `cargo bench --bench roundtrip` (the side-by-side table with ratios is
//! `cargo bench --bench report`).

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use common::{ByHand, Floor, Sequential, TTL, ours_cycle};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use redlease::LockManager;
use support::RedisServer;

fn manager(servers: &[RedisServer]) -> LockManager {
    support::manager_with(
        servers.iter().map(RedisServer::url),
        LockManager::builder()
            // A fresh private server: nothing for the restart quarantine to protect.
            .restart_quarantine(false)
            .pool_size(16)
            .preconnect(8),
    )
}

fn one_node(c: &mut Criterion) {
    let server = RedisServer::start();
    let locks = manager(std::slice::from_ref(&server));
    let mut floor = Floor::connect(server.port, b"floor");
    let mut by_hand = ByHand::connect(&server.url());
    let mut group = c.benchmark_group("cycle, 1 node");
    group.bench_function("floor (raw socket)", |b| b.iter(|| floor.cycle()));
    group.bench_function("redlease", |b| b.iter(|| ours_cycle(&locks, b"ours")));
    group.bench_function("redis-rs by hand", |b| b.iter(|| by_hand.cycle(b"by-hand")));
    group.finish();

    let _held = locks
        .try_lock("held", Duration::from_secs(60))
        .expect("try_lock")
        .expect("free");
    c.bench_function("contended try_lock, 1 node", |b| {
        b.iter(|| assert!(locks.try_lock("held", TTL).expect("try_lock").is_none()))
    });
    let mut lock = locks
        .try_lock("extended", TTL)
        .expect("try_lock")
        .expect("free");
    c.bench_function("extend, 1 node", |b| {
        b.iter(|| lock.extend(TTL).expect("extend"))
    });
}

fn redlock(c: &mut Criterion) {
    let servers = RedisServer::start_many(5);
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let mut group = c.benchmark_group("cycle, redlock");
    for n in [3, 5] {
        let locks = manager(&servers[..n]);
        group.bench_function(BenchmarkId::new("redlease scatter/gather", n), |b| {
            b.iter(|| ours_cycle(&locks, b"redlock"))
        });
        let sequential = Sequential::connect(&urls[..n]);
        group.bench_function(BenchmarkId::new("one node after another", n), |b| {
            b.iter(|| sequential.cycle(b"sequential"))
        });
    }
    group.finish();

    let locks = manager(&servers);
    let _held = locks
        .try_lock("held", Duration::from_secs(60))
        .expect("try_lock")
        .expect("free");
    c.bench_function("contended try_lock, 5 nodes", |b| {
        b.iter(|| assert!(locks.try_lock("held", TTL).expect("try_lock").is_none()))
    });
}

/// Successful cycles per thread count, on distinct keys (no contention) and
/// on one shared key (contended attempts retried at once, counted in the
/// time of the successful cycle).
fn throughput(c: &mut Criterion) {
    let server = RedisServer::start();
    let locks = manager(std::slice::from_ref(&server));
    let mut group = c.benchmark_group("throughput, 1 node");
    for shared in [false, true] {
        for threads in [1usize, 2, 4, 8] {
            let name = if shared {
                "one shared key"
            } else {
                "distinct keys"
            };
            group.bench_function(BenchmarkId::new(name, threads), |b| {
                b.iter_custom(|iters| {
                    let per_thread = iters.div_ceil(threads as u64);
                    let start = Barrier::new(threads);
                    thread::scope(|s| {
                        let workers: Vec<_> = (0..threads)
                            .map(|t| {
                                let (locks, start) = (&locks, &start);
                                s.spawn(move || {
                                    let key = if shared {
                                        "shared".to_string()
                                    } else {
                                        format!("key-{t}")
                                    };
                                    start.wait();
                                    let began = Instant::now();
                                    for _ in 0..per_thread {
                                        loop {
                                            if let Some(lock) =
                                                locks.try_lock(&key, TTL).expect("try_lock")
                                            {
                                                let _ = lock.release().expect("release");
                                                break;
                                            }
                                        }
                                    }
                                    began.elapsed()
                                })
                            })
                            .collect();
                        let slowest = workers.into_iter().map(|w| w.join().expect("worker")).max();
                        // Wall time for `threads × per_thread` cycles, scaled
                        // to `iters` cycles.
                        slowest
                            .unwrap_or_default()
                            .mul_f64(iters as f64 / (per_thread * threads as u64) as f64)
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, one_node, redlock, throughput);
criterion_main!(benches);
