//! The keep-alive section: what many kept-alive locks cost. One keeper
//! thread renews them all; its CPU time and the servers' are read from
//! `/proc` while it works, after a warm-up of one and a half renewal
//! periods. (Allocations are counted exactly by `tests/keepalive_alone.rs`,
//! in a process of its own: none per renewal round.)

use std::thread;
use std::time::{Duration, Instant};

use redlease::LockManager;

/// Renewed every third of this.
const TTL: Duration = Duration::from_secs(3);

/// The keeper threads of this process (named by the library).
fn keeper_tids() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "redlease-keeper")
                })
                .map(|t| t.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn task_cpu_ns(tid: &str) -> u64 {
    super::schedstat_ns(&format!("/proc/self/task/{tid}/schedstat")).unwrap_or(0)
}

pub(crate) fn report(urls: &[String], pids: &[u32], quick: bool) {
    let (locks_n, span) = if quick {
        (1_000, Duration::from_secs(1))
    } else {
        (10_000, Duration::from_secs(6))
    };
    println!(
        "\n### Keep-alive: {locks_n} locks kept alive, TTL {TTL:?} (renewed every {:?})\n",
        TTL / 3
    );
    println!(
        "| nodes | renewals/s | keeper CPU, % of one core | keeper CPU per renewal | server CPU per renewal, per node |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for nodes in [1, 3] {
        let locks = LockManager::builder()
            // A fresh private server: nothing for the restart quarantine to protect.
            .restart_quarantine(false)
            .nodes(urls[..nodes].iter().map(String::as_str))
            .build()
            .expect("build");
        let held: Vec<_> = (0..locks_n)
            .map(|i| {
                locks
                    .try_lock(format!("kept:{i}"), TTL)
                    .expect("try_lock")
                    .expect("free")
                    .keep_alive()
                    .expect("keep_alive")
            })
            .collect();
        let tids = keeper_tids();
        assert_eq!(tids.len(), 1, "one keeper thread");
        // Every lock renewed once (buffers grown to a full batch) before
        // measuring.
        thread::sleep(TTL / 3 + TTL / 6);
        let keeper_before = task_cpu_ns(&tids[0]);
        let servers_before = super::servers_cpu_ns(&pids[..nodes]).unwrap_or(0);
        let started = Instant::now();
        thread::sleep(span);
        let elapsed = started.elapsed();
        let keeper_ns = task_cpu_ns(&tids[0]) - keeper_before;
        let servers_ns = super::servers_cpu_ns(&pids[..nodes]).unwrap_or(0) - servers_before;
        assert!(
            held.iter().all(|l| !l.is_lost()),
            "a kept-alive lock was lost"
        );
        let renewals = locks_n as f64 * elapsed.as_secs_f64() / (TTL / 3).as_secs_f64();
        println!(
            "| {nodes} | {:.0} | {:.2} % | {:.2} µs | {:.2} µs |",
            renewals / elapsed.as_secs_f64(),
            keeper_ns as f64 / elapsed.as_nanos() as f64 * 100.0,
            keeper_ns as f64 / renewals / 1_000.0,
            servers_ns as f64 / renewals / nodes as f64 / 1_000.0,
        );
        for lock in held {
            drop(lock);
        }
    }
}
