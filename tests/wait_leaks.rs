//! Waiting leaks nothing and loses no wake-up: no wait of 10,000 runs into
//! the 10 s wake cap, and after them no subscription is left
//! once the last waiter is gone, and with the manager dropped no thread or
//! descriptor. A test binary of its own, so that no other test's threads or
//! descriptors blur the count.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use redlease::RetryPolicy;
use support::RedisServer;

const TTL: Duration = Duration::from_secs(30);

fn woken_only() -> RetryPolicy {
    RetryPolicy::exponential(Duration::from_millis(5))
        .wake_cap(Duration::from_secs(10))
        .max_wait(Duration::from_secs(20))
}

/// 10,000 wait cycles (two threads passing a key back and forth, each
/// `lock` a wait) leave no subscription once the last waiter is gone, and,
/// with the manager dropped, no thread or descriptor, on 1 and 3 nodes.
#[test]
fn nothing_leaks_after_many_waits() {
    let servers = RedisServer::start_many(3);
    for (n, cycles) in [(1, 5_000), (3, 1_000)] {
        leaves_nothing(&servers[..n], cycles);
    }
}

fn leaves_nothing(servers: &[RedisServer], cycles: usize) {
    let before = support::resources();
    {
        let locks = support::manager(servers.iter().map(RedisServer::url));
        thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..cycles {
                        let asked = Instant::now();
                        let lock = locks.lock_with("p", TTL, &woken_only()).expect("lock");
                        // The cap is 10 s: a wait anywhere near it was a lost wake-up.
                        let waited = asked.elapsed();
                        assert!(waited < Duration::from_secs(2), "a wait took {waited:?}");
                        drop(lock);
                    }
                });
            }
        });
        for server in servers {
            support::eventually(Duration::from_secs(2), "no listener left", || {
                support::listeners(server, "p") == 0
            });
        }
    }
    let settled = Instant::now() + Duration::from_secs(5);
    while support::resources() != before && Instant::now() < settled {
        thread::sleep(Duration::from_millis(10));
    }
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .collect();
    assert_eq!(
        support::resources(),
        before,
        "(threads, fds) before vs after; threads now: {names:?}"
    );
}
