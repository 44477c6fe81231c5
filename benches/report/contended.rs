//! The contended section: threads competing for few keys, waiting by being
//! woken (the default) against polling (what other Redlock clients do), in
//! alternating runs; medians of two runs each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use redlease::{LockManager, RetryPolicy};

/// One workload.
struct Workload {
    name: &'static str,
    nodes: usize,
    threads: usize,
    keys: usize,
    hold: Duration,
}

/// What one run of a workload achieved.
#[derive(Clone, Copy, Default)]
struct Outcome {
    per_sec: f64,
    /// Time the keys were held ÷ (keys × run time).
    utilisation: f64,
    /// From a holder starting its release to the next holder having it, µs.
    handoff_p50: f64,
    handoff_p99: f64,
    /// From asking to having, µs.
    acquire_p99: f64,
    acquire_max: f64,
    /// Most acquisitions of one thread ÷ fewest.
    share: f64,
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "8 threads, 4 keys, hold 1 ms, 1 node",
        nodes: 1,
        threads: 8,
        keys: 4,
        hold: Duration::from_millis(1),
    },
    Workload {
        name: "8 threads, 4 keys, hold 1 ms, 3 nodes",
        nodes: 3,
        threads: 8,
        keys: 4,
        hold: Duration::from_millis(1),
    },
    Workload {
        name: "16 threads, 1 key, hold 0, 1 node",
        nodes: 1,
        threads: 16,
        keys: 1,
        hold: Duration::ZERO,
    },
    Workload {
        name: "16 threads, 1 key, hold 0, 3 nodes",
        nodes: 3,
        threads: 16,
        keys: 1,
        hold: Duration::ZERO,
    },
];

/// Polling as other Redlock clients do, at its most eager: 1 ms doubling to
/// 50 ms, with jitter.
fn polling() -> RetryPolicy {
    waking().wake_on_release(false)
}

/// The default way of waiting, with the same backoff for failures.
fn waking() -> RetryPolicy {
    RetryPolicy::exponential(Duration::from_millis(1))
        .max_delay(Duration::from_millis(50))
        .max_wait(Duration::from_secs(30))
}

pub(crate) fn report(urls: &[String], time: Duration) {
    println!("\n### Contended: woken on release vs polling\n");
    println!(
        "{time:?} per run, 2 runs each, alternating; medians. Acquire and handoff in µs; share = most ÷ fewest acquisitions of one thread.\n"
    );
    println!(
        "| workload | waiting | acquisitions/s | key utilisation | handoff p50 | handoff p99 | acquire p99 | acquire max | share |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for w in &WORKLOADS {
        let locks = LockManager::builder()
            // A fresh private server: nothing for the restart quarantine to protect.
            .restart_quarantine(false)
            .nodes(urls[..w.nodes].iter().map(String::as_str))
            .pool_size(w.threads)
            .preconnect(w.threads)
            .build()
            .expect("build");
        let mut runs: [Vec<Outcome>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..2 {
            runs[0].push(run(&locks, &polling(), w, time));
            runs[1].push(run(&locks, &waking(), w, time));
        }
        for (how, outcomes) in ["polling", "woken"].iter().zip(&runs) {
            let m = |f: fn(&Outcome) -> f64| median(outcomes.iter().map(f).collect());
            println!(
                "| {} | {how} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
                w.name,
                m(|o| o.per_sec),
                m(|o| o.utilisation),
                m(|o| o.handoff_p50),
                m(|o| o.handoff_p99),
                m(|o| o.acquire_p99),
                m(|o| o.acquire_max),
                m(|o| o.share),
            );
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn quantile(v: &mut [u64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
}

/// One run: each thread takes a random key, holds it, releases, again.
fn run(locks: &LockManager, policy: &RetryPolicy, w: &Workload, time: Duration) -> Outcome {
    let epoch = Instant::now();
    let now_ns = || epoch.elapsed().as_nanos() as u64;
    // Per key: when its last holder started releasing.
    let released: Vec<AtomicU64> = (0..w.keys).map(|_| AtomicU64::new(0)).collect();
    let keys: Vec<String> = (0..w.keys).map(|k| format!("contended-{k}")).collect();
    let per_thread: Vec<(u64, u64, Vec<u64>, Vec<u64>)> = thread::scope(|s| {
        let workers: Vec<_> = (0..w.threads)
            .map(|t| {
                let (released, keys, now_ns) = (&released, &keys, &now_ns);
                s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(t as u64);
                    let (mut n, mut held_ns) = (0u64, 0u64);
                    let (mut acquire, mut handoff) = (Vec::new(), Vec::new());
                    while epoch.elapsed() < time {
                        let k = rng.usize(..keys.len());
                        let asked = now_ns();
                        let lock = locks.lock_with(&keys[k], Duration::from_secs(10), policy);
                        let Ok(lock) = lock else { continue };
                        let got = now_ns();
                        acquire.push(got - asked);
                        let last = released[k].load(Ordering::Relaxed);
                        if lock.attempts() > 1 && last > asked {
                            handoff.push(got - last);
                        }
                        if !w.hold.is_zero() {
                            thread::sleep(w.hold);
                        }
                        released[k].store(now_ns(), Ordering::Relaxed);
                        let _ = lock.release();
                        held_ns += now_ns() - got;
                        n += 1;
                    }
                    (n, held_ns, acquire, handoff)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|h| h.join().expect("worker"))
            .collect()
    });
    let elapsed = epoch.elapsed().as_secs_f64();
    let total: u64 = per_thread.iter().map(|p| p.0).sum();
    let held: u64 = per_thread.iter().map(|p| p.1).sum();
    let mut acquire: Vec<u64> = per_thread
        .iter()
        .flat_map(|p| p.2.iter().copied())
        .collect();
    let mut handoff: Vec<u64> = per_thread
        .iter()
        .flat_map(|p| p.3.iter().copied())
        .collect();
    let fewest = per_thread.iter().map(|p| p.0).min().unwrap_or(0).max(1);
    let most = per_thread.iter().map(|p| p.0).max().unwrap_or(0);
    Outcome {
        per_sec: total as f64 / elapsed,
        utilisation: held as f64 / 1e9 / (w.keys as f64 * elapsed),
        handoff_p50: quantile(&mut handoff, 0.5),
        handoff_p99: quantile(&mut handoff, 0.99),
        acquire_p99: quantile(&mut acquire, 0.99),
        acquire_max: acquire.iter().copied().max().unwrap_or(0) as f64 / 1000.0,
        share: most as f64 / fewest as f64,
    }
}
