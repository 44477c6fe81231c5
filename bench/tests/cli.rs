//! The load generator end to end: its embedded servers, its JSON summary,
//! its mutual-exclusion check, and its errors for bad options.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// The binary cargo built for this test.
fn workers_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_redlease-bench"))
}

fn run(args: &[&str]) -> Output {
    Command::new(workers_binary())
        .args(args)
        .env_remove("REDIS_URL")
        .output()
        .expect("run redlease-bench")
}

fn summary(args: &[&str]) -> Value {
    let out = run(args);
    assert!(
        out.status.success(),
        "workers {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the JSON summary")
}

fn check_clean(s: &Value, nodes: u64) {
    assert_eq!(s["setup"]["nodes"], nodes);
    assert_eq!(s["setup"]["embedded"], true);
    assert!(s["acquisitions"].as_u64().expect("acquisitions") > 0, "{s}");
    let mx = &s["mutual_exclusion"];
    assert_eq!(mx["ok"], true, "{s}");
    assert_eq!(mx["overlaps"], 0, "{s}");
    assert_eq!(mx["lost_updates"], 0, "{s}");
    assert_eq!(mx["critical_sections"], s["acquisitions"], "{s}");
    assert!(s["acquire_latency_us"]["p50"].as_u64().is_some(), "{s}");
}

/// One embedded node, contended keys, a couple of seconds.
#[test]
fn one_node_end_to_end() {
    // A bare number of seconds, as load generators take it.
    let s = summary(&["--duration", "2", "--threads", "4", "--keys", "2", "--json"]);
    check_clean(&s, 1);
    assert!(
        s["contended_attempts"].as_u64().expect("count") > 0,
        "4 threads on 2 keys must contend: {s}"
    );
}

/// Three embedded nodes (Redlock), bounded by a count.
#[test]
fn three_nodes_end_to_end() {
    let s = summary(&[
        "--nodes",
        "3",
        "--duration",
        "5s",
        "--count",
        "300",
        "--retry",
        "fixed",
        "--json",
    ]);
    check_clean(&s, 3);
    let n = s["acquisitions"].as_u64().expect("count");
    assert!((300..300 + 8).contains(&n), "count bounds the run: {n}");
}

/// The embedded transports and the Sentinel deployment, each bounded by a
/// count: clean, and labelled.
#[test]
fn transports_and_sentinel_end_to_end() {
    for (args, topology) in [
        (&["--transport", "unix"][..], "unix socket"),
        (&["--transport", "tls"][..], "tls"),
        (
            &["--sentinel", "--wait-replicas", "1"][..],
            "sentinel: a master, 1 replica, 3 sentinels",
        ),
    ] {
        let mut all = args.to_vec();
        all.extend(["--duration", "5s", "--count", "200", "--json"]);
        let s = summary(&all);
        check_clean(&s, 1);
        assert_eq!(s["setup"]["topology"], topology, "{s}");
    }
}

/// An embedded Redis Cluster: keys spread over its masters, clean; and a
/// given cluster without a server for the counters is refused.
#[test]
fn cluster_end_to_end() {
    let s = summary(&[
        "--cluster",
        "3",
        "--keys",
        "16",
        "--threads",
        "4",
        "--duration",
        "5s",
        "--count",
        "400",
        "--json",
    ]);
    check_clean(&s, 3);
    assert_eq!(s["setup"]["topology"], "cluster: 3 masters", "{s}");
    let out = run(&[
        "--cluster",
        "--url",
        "redis://127.0.0.1:1",
        "--duration",
        "1",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--counter-url"), "{stderr}");
}

/// `--compare` runs each waiting strategy on the same servers and prints
/// one summary each; `--plot` draws them; `--rate` runs open loop and
/// counts latency from each cycle's intended start too.
#[test]
fn compare_plot_and_open_loop() {
    let svg = std::env::temp_dir().join(format!("redlease-workers-{}.svg", std::process::id()));
    let svg_arg = svg.display().to_string();
    let s = summary(&[
        "--compare",
        "--duration",
        "1",
        "--threads",
        "4",
        "--keys",
        "2",
        "--plot",
        &svg_arg,
        "--json",
    ]);
    let runs = s.as_array().expect("one summary per strategy");
    let strategies: Vec<(&str, bool)> = runs
        .iter()
        .map(|r| {
            check_clean(r, 1);
            (
                r["setup"]["retry"].as_str().expect("retry"),
                r["setup"]["fair"].as_bool().expect("fair"),
            )
        })
        .collect();
    assert_eq!(
        strategies,
        [("poll", false), ("wake", false), ("wake", true)]
    );
    let drawn = std::fs::read_to_string(&svg).expect("the plot");
    assert!(
        drawn.starts_with("<svg") && drawn.contains("polyline"),
        "{}",
        &drawn[..200.min(drawn.len())]
    );
    let _ = std::fs::remove_file(&svg);

    let s = summary(&[
        "--rate",
        "400",
        "--hold-dist",
        "exp",
        "--duration",
        "1",
        "--threads",
        "4",
        "--json",
    ]);
    check_clean(&s, 1);
    assert_eq!(s["setup"]["rate_per_s"], 400.0);
    assert_eq!(s["setup"]["hold_distribution"], "exponential");
    let n = s["acquisitions"].as_u64().expect("count");
    // 400/s for a second, give or take the start.
    assert!((300..=401).contains(&n), "open loop ran {n} cycles");
    assert_eq!(s["response_latency_us"]["count"], n, "{s}");

    // Far above what one hot key can do: the queue shows in the corrected
    // latency, not in the uncorrected one.
    let s = summary(&[
        "--rate",
        "20000",
        "--keys",
        "1",
        "--hold",
        "2ms",
        "--duration",
        "1",
        "--threads",
        "4",
        "--json",
    ]);
    check_clean(&s, 1);
    let started = s["started_per_s"].as_f64().expect("started");
    assert!(
        started < 1000.0,
        "a 2 ms hold allows at most 500/s: {started}"
    );
    let corrected = s["response_latency_us"]["p99"].as_u64().expect("p99");
    let raw = s["acquire_latency_us"]["p99"].as_u64().expect("p99");
    assert!(
        corrected > 10 * raw.max(1),
        "corrected p99 {corrected} µs vs {raw} µs"
    );
}

/// `--uncontended`: a key per thread, so no attempt ever finds one held.
#[test]
fn uncontended_never_waits() {
    let s = summary(&[
        "--uncontended",
        "--threads",
        "4",
        "--duration",
        "1",
        "--json",
    ]);
    check_clean(&s, 1);
    assert_eq!(s["setup"]["keys"], 4);
    assert_eq!(s["contended_attempts"], 0, "{s}");
}

/// Without retries a held lock is a gave-up, not an error.
#[test]
fn no_retry_counts_gave_ups() {
    let s = summary(&[
        "--duration",
        "1s",
        "--threads",
        "4",
        "--keys",
        "1",
        "--retry",
        "none",
        "--json",
    ]);
    check_clean(&s, 1);
    assert!(s["gave_up"].as_u64().expect("count") > 0, "{s}");
    assert_eq!(s["errors"], serde_json::json!({}), "{s}");
}

/// Bad options: one line on stderr, exit status 2, no panic.
#[test]
fn bad_options_fail_cleanly() {
    let cases: [&[&str]; 11] = [
        &["--threads", "0"],
        &["--rate", "0"],
        &["--compare", "--fair"],
        &["--duration", "-1"],
        &["--duration", "soon"],
        &["--ttl", "1e400"],
        &["--ttl", "0s"],
        &["--ttl", "1s", "--hold", "1s"],
        &["--url", "redis://127.0.0.1:1"],
        &["--url", "not a url"],
        &["--no-such-option"],
    ];
    for args in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
