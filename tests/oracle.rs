//! Mutual exclusion under contention, judged by the oracle
//! (`support/oracle.rs`): many threads, and several processes, on one key;
//! and proof that the oracle catches a lock that is broken.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use redlease::{LockManager, RetryPolicy};
use support::RedisServer;
use support::oracle::{self, BrokenLock, Oracle};

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

/// 16 threads × 100 acquisitions on one key, on 1, 3 and 5 nodes.
#[test]
fn contention_is_clean_on_1_3_and_5_nodes() {
    let oracle = Oracle::default();
    let servers = RedisServer::start_many(5);
    for n in [1, 3, 5] {
        let locks = manager(&servers[..n]);
        let verdict = oracle.run(16, 100, Duration::from_micros(100), |_| {
            Some(locks.lock("contended", TTL).expect("lock within 30 s"))
        });
        println!("{n} node(s): {verdict:?}");
        assert_eq!(verdict.sections, 1600, "n = {n}");
        assert!(verdict.clean(), "n = {n}: {verdict:?}");
    }
}

/// The oracle is able to fail: a lock with a plain `DEL` release and a TTL
/// shorter than the critical section lets holders in together, and the
/// oracle reports lost updates and overlaps.
#[test]
fn oracle_catches_a_broken_lock() {
    let oracle = Oracle::default();
    let server = RedisServer::start();
    let url = server.url();
    let verdict = oracle.run(8, 25, Duration::from_millis(2), |_| {
        // 1 ms TTL, 2 ms critical section: the lock expires mid-section.
        BrokenLock::acquire(&url, "broken", 1, 1000)
    });
    println!("broken lock: {verdict:?}");
    assert!(verdict.sections > 0);
    assert!(verdict.lost_updates > 0, "{verdict:?}");
    assert!(
        verdict.gauge_overlaps > 0 && verdict.interval_overlaps > 0,
        "{verdict:?}"
    );
    assert!(!verdict.clean());
}

/// The interval check on its own: touching intervals are fine, crossing
/// ones are not.
#[test]
fn interval_overlap_counting() {
    let t = std::time::Instant::now();
    let ms = |n| t + Duration::from_millis(n);
    assert_eq!(
        oracle::overlaps(&mut [(0, ms(0), ms(1)), (0, ms(1), ms(2)), (0, ms(3), ms(4))]),
        0
    );
    assert_eq!(
        oracle::overlaps(&mut [(0, ms(0), ms(5)), (0, ms(1), ms(2)), (0, ms(3), ms(4))]),
        2
    );
    // Sections on different keys never overlap each other.
    assert_eq!(
        oracle::overlaps(&mut [(1, ms(0), ms(5)), (2, ms(1), ms(2)), (3, ms(3), ms(4))]),
        0
    );
}

const CHILD_ENV: &str = "REDLEASE_ORACLE_CHILD";

/// Several processes, each with several threads, on one key over 3 nodes.
/// Overlaps across processes are caught by the server-side gauge; lost
/// updates by the counter.
#[test]
fn processes_on_one_key_are_clean() {
    let oracle = Oracle::default();
    let servers = RedisServer::start_many(3);
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let exe = std::env::current_exe().expect("test binary");
    let (processes, threads, rounds) = (4, 4, 25);
    let children: Vec<_> = (0..processes)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "child_process_worker",
                    "--ignored",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(
                    CHILD_ENV,
                    format!("{}|{}|{threads}|{rounds}", oracle.url(), urls.join(",")),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn a child process")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("child");
        assert!(
            out.status.success(),
            "child process failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let expected = (processes * threads * rounds) as u64;
    assert_eq!(oracle.count(), expected, "lost updates across processes");
    let overlaps: Option<i64> = redis::cmd("GET")
        .arg("processes:overlaps")
        .query(
            &mut redis::Client::open(oracle.url())
                .expect("url")
                .get_connection()
                .expect("connect"),
        )
        .expect("GET");
    assert_eq!(
        overlaps.unwrap_or(0),
        0,
        "overlapping holders across processes"
    );
}

/// One child process of `processes_on_one_key_are_clean`; does nothing
/// useful on its own, hence ignored (the parent runs it with `--ignored`).
#[test]
#[ignore = "run by processes_on_one_key_are_clean in child processes"]
fn child_process_worker() {
    let spec = std::env::var(CHILD_ENV).expect("run only by processes_on_one_key_are_clean");
    let parts: Vec<&str> = spec.split('|').collect();
    let (oracle_url, urls, threads, rounds) = (parts[0], parts[1], parts[2], parts[3]);
    let threads: usize = threads.parse().expect("threads");
    let rounds: usize = rounds.parse().expect("rounds");
    let locks = support::builder()
        .nodes(urls.split(','))
        .retry(patient())
        .build()
        .expect("build");
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut con = redis::Client::open(oracle_url)
                    .expect("url")
                    .get_connection()
                    .expect("connect");
                for _ in 0..rounds {
                    let lock = locks.lock("cross-process", TTL).expect("lock");
                    let (_, _, company) = oracle::section(
                        &mut con,
                        "oracle:counter",
                        "oracle:in-flight",
                        Duration::from_micros(200),
                    );
                    if company {
                        let _: i64 = redis::cmd("INCR")
                            .arg("processes:overlaps")
                            .query(&mut con)
                            .expect("INCR");
                    }
                    assert!(lock.release().expect("release"));
                }
            });
        }
    });
}
