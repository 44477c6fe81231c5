//! Scenario 12, the soak: Redlock over 5 nodes while a minority keeps
//! failing (SIGSTOP for 50–500 ms, kill and delayed restart, connections
//! cut), 8 threads contending for one lock. The oracle must stay clean; no
//! panics; no threads or file descriptors left behind.
//!
//! Ignored by default. Run it, for `REDLEASE_SOAK_SECS` seconds (default 30):
//!
//! ```text
//! REDLEASE_SOAK_SECS=600 cargo test --release --test soak -- --ignored --nocapture
//! ```

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use redlease::{Error, RetryPolicy};
use support::RedisServer;
use support::oracle::Oracle;
use support::proxy::FaultProxy;

const TTL: Duration = Duration::from_secs(1);

#[test]
#[ignore = "long; run with --ignored (REDLEASE_SOAK_SECS sets the length)"]
fn soak() {
    let secs: u64 = std::env::var("REDLEASE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let length = Duration::from_secs(secs);
    let oracle = Oracle::new("soak");
    let before = support::resources();

    let verdict_and_errors = {
        let mut servers = RedisServer::start_many(5);
        let proxies: Vec<FaultProxy> = servers.iter().map(|s| FaultProxy::start(s.port)).collect();
        let locks = support::builder()
            .nodes(proxies.iter().map(FaultProxy::url))
            .io_timeout(Duration::from_millis(50))
            .connect_timeout(Duration::from_millis(100))
            .retry(
                RetryPolicy::exponential(Duration::from_millis(1))
                    .max_delay(Duration::from_millis(20))
                    .max_wait(Duration::from_secs(3)),
            )
            .build()
            .expect("build");
        let done = AtomicBool::new(false);
        let errors = AtomicU64::new(0);
        let faults = AtomicU64::new(0);

        let verdict = thread::scope(|s| {
            // Two chaos threads, each owning two nodes and faulting at most
            // one at a time: never more than 2 of 5 faulty. Node 4's
            // connections are cut now and then by both.
            let (first, second) = servers.split_at_mut(2);
            let (second, _) = second.split_at_mut(2);
            for (seed, nodes, offset) in [(1u64, first, 0usize), (2, second, 2)] {
                let (proxies, done, faults) = (&proxies, &done, &faults);
                s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(seed);
                    while !done.load(Ordering::Relaxed) {
                        let i = rng.usize(..nodes.len());
                        match rng.u8(..3) {
                            0 => {
                                nodes[i].signal("STOP");
                                thread::sleep(Duration::from_millis(rng.u64(50..=500)));
                                nodes[i].signal("CONT");
                            }
                            1 => {
                                nodes[i].kill();
                                // Delayed restart: longer than any lock's TTL,
                                // so the forgotten keys had expired anyway.
                                thread::sleep(TTL + Duration::from_millis(300));
                                nodes[i].restart();
                            }
                            _ => {
                                proxies[offset + i].reset_all();
                                proxies[4].reset_all();
                            }
                        }
                        faults.fetch_add(1, Ordering::Relaxed);
                        thread::sleep(Duration::from_millis(rng.u64(50..=300)));
                    }
                });
            }
            let verdict = oracle.run_for(8, length, Duration::from_millis(1), |_| {
                match locks.lock("soak", TTL) {
                    Ok(lock) => Some(lock),
                    Err(e) => {
                        assert!(
                            e.is_retryable() || matches!(e, Error::WaitTimedOut { .. }),
                            "{e}"
                        );
                        errors.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                }
            });
            done.store(true, Ordering::Relaxed);
            verdict
        });
        println!(
            "soak {secs}s: {verdict:?}, {} faults injected, {} attempts failed",
            faults.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed)
        );
        verdict
    };
    assert!(verdict_and_errors.sections > 0, "no lock was ever taken");
    assert!(verdict_and_errors.clean(), "{verdict_and_errors:?}");

    // Everything is dropped: servers killed, proxies stopped, pools closed.
    // Threads and descriptors return to where they were (proxy threads
    // notice their stop flag within 50 ms).
    let settled = Instant::now() + Duration::from_secs(5);
    while support::resources() != before && Instant::now() < settled {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        support::resources(),
        before,
        "(fds, threads) before vs after"
    );
}
