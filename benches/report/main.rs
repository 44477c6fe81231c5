//! The performance report: every comparison in one process, interleaved
//! rounds, one table, ratios against the targets.
//!
//! ```text
//! cargo bench --bench report                      # about two minutes
//! cargo bench --bench report -- --quick           # a few seconds (CI)
//! cargo bench --bench report -- --callgrind       # + instructions per cycle under valgrind
//! cargo bench -p redlease --bench report --features metrics -- --metrics-only   # a recorder's cost
//! ```
//!
//! Wall time is per cycle (median and p99 over all cycles of all rounds);
//! client CPU is this thread's on-CPU time (`/proc/thread-self/schedstat`,
//! nanoseconds) per cycle, median over rounds; allocations are exact (a
//! counting global allocator). Contestants run in a rotating order each
//! round so that none always goes first.

mod cluster;
#[path = "../common/mod.rs"]
mod common;
mod contended;
mod keepalive;
mod primitives;
#[cfg(feature = "metrics")]
mod recorder;
#[path = "../../tests/support/mod.rs"]
mod support;
mod transports;

use std::process::Command;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use common::{ByHand, Floor, Sequential, TTL, ours_cycle};
use redlease::LockManager;
use support::RedisServer;
use support::alloc::CountingAllocator;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

struct Settings {
    rounds: usize,
    cycles: usize,
    throughput_time: Duration,
    callgrind: bool,
    quick: bool,
}

/// One contestant's measurements.
struct Sample {
    name: &'static str,
    wall_ns: Vec<u64>,
    cpu_ns_per_cycle: Vec<f64>,
    /// CPU the servers spent per cycle (all of them), per round.
    server_cpu_ns_per_cycle: Vec<f64>,
    allocations: u64,
    cycles: u64,
}

impl Sample {
    fn new(name: &'static str) -> Sample {
        Sample {
            name,
            wall_ns: Vec::new(),
            cpu_ns_per_cycle: Vec::new(),
            server_cpu_ns_per_cycle: Vec::new(),
            allocations: 0,
            cycles: 0,
        }
    }

    fn median_us(&self) -> f64 {
        quantile(&self.wall_ns, 0.5) / 1000.0
    }

    fn p99_us(&self) -> f64 {
        quantile(&self.wall_ns, 0.99) / 1000.0
    }

    fn cpu_us(&self) -> f64 {
        median(&self.cpu_ns_per_cycle) / 1000.0
    }

    fn server_cpu_us(&self) -> f64 {
        median(&self.server_cpu_ns_per_cycle) / 1000.0
    }

    fn allocs_per_cycle(&self) -> f64 {
        self.allocations as f64 / self.cycles.max(1) as f64
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn quantile(v: &[u64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q).round() as usize] as f64
}

/// On-CPU time in nanoseconds of a task, from its `schedstat`.
fn schedstat_ns(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// This thread's on-CPU time in nanoseconds.
fn thread_cpu_ns() -> Option<u64> {
    schedstat_ns("/proc/thread-self/schedstat")
}

/// The servers' main threads' on-CPU time, summed.
fn servers_cpu_ns(pids: &[u32]) -> Option<u64> {
    pids.iter()
        .map(|pid| schedstat_ns(&format!("/proc/{pid}/schedstat")))
        .sum()
}

/// Runs `cycles` cycles, recording per-cycle wall time, CPU and allocations.
fn measure(sample: &mut Sample, cycles: usize, servers: &[u32], mut cycle: impl FnMut()) {
    for _ in 0..cycles / 20 {
        cycle(); // warm-up
    }
    sample.wall_ns.reserve(cycles);
    let servers_before = servers_cpu_ns(servers);
    let cpu_before = thread_cpu_ns();
    let allocs_before = support::alloc::allocations_so_far();
    for _ in 0..cycles {
        let t = Instant::now();
        cycle();
        sample.wall_ns.push(t.elapsed().as_nanos() as u64);
    }
    let allocs_after = support::alloc::allocations_so_far();
    let cpu_after = thread_cpu_ns();
    let servers_after = servers_cpu_ns(servers);
    if let (Some(a), Some(b)) = (servers_before, servers_after) {
        sample
            .server_cpu_ns_per_cycle
            .push((b - a) as f64 / cycles as f64);
    }
    // The Vec had room reserved: its pushes did not allocate.
    sample.allocations += allocs_after - allocs_before;
    sample.cycles += cycles as u64;
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        sample.cpu_ns_per_cycle.push((b - a) as f64 / cycles as f64);
    }
}

/// A table of samples measured side by side, each against the first:
/// `what` heads the first column, `base` names the first sample in the
/// ratio columns; `server_cpu` adds the servers' CPU per cycle.
fn ratio_table(
    what: &str,
    base: &str,
    samples: &[Sample],
    instructions: &[Option<f64>],
    server_cpu: bool,
) {
    let server = if server_cpu {
        " server CPU µs/cycle |"
    } else {
        ""
    };
    println!(
        "| {what} | wall µs/cycle (median) | p99 | client CPU µs/cycle |{server} allocations/cycle | instructions/cycle | wall ÷ {base} | CPU ÷ {base} |"
    );
    let columns = 8 + usize::from(server_cpu);
    println!("| --- |{}", " ---: |".repeat(columns - 1));
    let (wall, cpu) = (samples[0].median_us(), samples[0].cpu_us());
    for (sample, instructions) in samples.iter().zip(instructions) {
        let instructions = instructions.map_or("—".to_owned(), |n| format!("{n:.0}"));
        let server = if server_cpu {
            format!(" {:.2} |", sample.server_cpu_us())
        } else {
            String::new()
        };
        println!(
            "| {} | {:.1} | {:.1} | {:.2} |{server} {:.2} | {instructions} | {:.3} | {:.3} |",
            sample.name,
            sample.median_us(),
            sample.p99_us(),
            sample.cpu_us(),
            sample.allocs_per_cycle(),
            sample.median_us() / wall,
            sample.cpu_us() / cpu,
        );
    }
}

/// Our cycle on each manager (the samples' order), in rounds with a
/// rotating order, against one server.
fn interleave(
    s: &Settings,
    server: &RedisServer,
    samples: &mut [Sample],
    managers: &[LockManager],
    key: &[u8],
) {
    let pids: Vec<u32> = server.pid().into_iter().collect();
    for round in 0..s.rounds {
        for k in 0..samples.len() {
            let i = (k + round) % samples.len();
            measure(&mut samples[i], s.cycles, &pids, || {
                ours_cycle(&managers[i], key)
            });
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--only") {
        // Child mode for --callgrind: one contestant, no measurement.
        let cycles: usize = args[i + 3].parse().expect("cycles");
        run_only(&args[i + 1], &args[i + 2], cycles);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let settings = Settings {
        rounds: if quick { 3 } else { 15 },
        cycles: if quick { 200 } else { 2000 },
        throughput_time: if quick {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(2)
        },
        callgrind: args.iter().any(|a| a == "--callgrind"),
        quick,
    };
    // With the metrics feature, `--metrics-only` runs just that section.
    #[cfg(feature = "metrics")]
    if args.iter().any(|a| a == "--metrics-only") {
        let server = RedisServer::start();
        recorder::report(&settings, &server);
        return;
    }
    report(&settings);
}

fn report(s: &Settings) {
    let servers = RedisServer::start_many(5);
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let build = |n: usize| {
        LockManager::builder()
            // A fresh private server: nothing for the restart quarantine to protect.
            .restart_quarantine(false)
            .nodes(urls[..n].iter().map(String::as_str))
            .pool_size(16)
            .preconnect(16)
            .build()
            .expect("build")
    };
    let (one, five) = (build(1), build(5));
    let mut floor = Floor::connect(servers[0].port, b"floor");
    let mut safe_floor = Floor::connect_safe(servers[0].port, b"safe-floor");
    let pids: Vec<u32> = servers.iter().filter_map(RedisServer::pid).collect();
    let (one_pid, five_pids) = (&pids[..1], &pids[..]);
    let mut by_hand = ByHand::connect(&urls[0]);
    let sequential = Sequential::connect(&urls);

    let mut samples = [
        Sample::new("floor: raw socket, pre-encoded"),
        Sample::new("floor + read timeout + getrandom token"),
        Sample::new("redlease, 1 node"),
        Sample::new("redis-rs by hand, 1 node"),
        Sample::new("redlease, Redlock N=5"),
        Sample::new("one node after another, N=5"),
    ];
    for round in 0..s.rounds {
        for k in 0..samples.len() {
            let i = (k + round) % samples.len();
            let sample = &mut samples[i];
            match i {
                0 => measure(sample, s.cycles, one_pid, || floor.cycle()),
                1 => measure(sample, s.cycles, one_pid, || safe_floor.cycle()),
                2 => measure(sample, s.cycles, one_pid, || ours_cycle(&one, b"ours")),
                3 => measure(sample, s.cycles, one_pid, || by_hand.cycle(b"by-hand")),
                4 => measure(sample, s.cycles, five_pids, || ours_cycle(&five, b"ours-5")),
                _ => measure(sample, s.cycles, five_pids, || {
                    sequential.cycle(b"sequential-5")
                }),
            }
        }
    }

    let (ours_tp, implied) = throughput(s, &one, &servers[0]);
    let instructions = if s.callgrind {
        callgrind(servers[0].port)
    } else {
        None
    };

    let cpus = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("## redlease performance report\n");
    println!(
        "{} rounds × {} cycles per contestant, interleaved; redis {} on loopback; {cpus} cores; 1 cycle = acquire + release\n",
        s.rounds,
        s.cycles,
        redis_version(&urls[0])
    );
    println!(
        "| contestant | wall µs/cycle (median) | p99 | client CPU µs/cycle | server CPU µs/cycle | allocations/cycle |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for sample in &samples {
        println!(
            "| {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} |",
            sample.name,
            sample.median_us(),
            sample.p99_us(),
            sample.cpu_us(),
            sample.server_cpu_us(),
            sample.allocs_per_cycle()
        );
    }
    let [floor_s, safe_s, ours_s, hand_s, five_s, seq_s] = &samples;
    println!("\n| ratio | measured | target | |");
    println!("| --- | ---: | ---: | --- |");
    let row = |name: &str, value: f64, target: &str, ok: bool| {
        println!(
            "| {name} | {value:.3} | {target} | {} |",
            if ok { "met" } else { "**missed**" }
        );
    };
    let wall = ours_s.median_us() / floor_s.median_us();
    row("redlease / floor, wall", wall, "≤ 1.03", wall <= 1.03);
    let cpu = ours_s.cpu_us() / floor_s.cpu_us();
    row("redlease / floor, client CPU", cpu, "≤ 1.08", cpu <= 1.08);
    let wall = ours_s.median_us() / safe_s.median_us();
    row(
        "redlease / floor with timeout + token, wall",
        wall,
        "(diagnostic)",
        true,
    );
    let cpu = ours_s.cpu_us() / safe_s.cpu_us();
    row(
        "redlease / floor with timeout + token, client CPU",
        cpu,
        "(diagnostic)",
        true,
    );
    let wall = ours_s.median_us() / hand_s.median_us();
    row("redlease / redis-rs by hand, wall", wall, "< 1", wall < 1.0);
    let cpu = ours_s.cpu_us() / hand_s.cpu_us();
    row(
        "redlease / redis-rs by hand, client CPU",
        cpu,
        "< 1",
        cpu < 1.0,
    );
    if let Some((ours_ir, hand_ir, floor_ir)) = instructions {
        let r = ours_ir / hand_ir;
        row(
            "redlease / redis-rs by hand, instructions (callgrind)",
            r,
            "≤ 0.5",
            r <= 0.5,
        );
        println!(
            "| (instructions per cycle: floor {floor_ir:.0}, redlease {ours_ir:.0}, redis-rs {hand_ir:.0}) | | | |"
        );
    }
    let r = five_s.median_us() / ours_s.median_us();
    row("Redlock N=5 / 1 node, wall", r, "≤ 1.6", r <= 1.6);
    // With more runnable work than cores, wall time cannot drop below the
    // CPU it needs divided by the cores.
    let bound = (five_s.cpu_us() + five_s.server_cpu_us()) / cpus.max(1) as f64;
    println!(
        "| (N=5: client + server CPU per cycle / {cpus} cores = {bound:.1} µs, a floor under its {:.1} µs wall) | | | |",
        five_s.median_us()
    );
    let r = seq_s.median_us() / ours_s.median_us();
    row(
        "one after another N=5 / 1 node, wall",
        r,
        "~5 (for comparison)",
        true,
    );
    let r = ours_tp / implied;
    row(
        "8 threads, distinct keys / redis-benchmark -c 8",
        r,
        "≥ 0.8",
        r >= 0.8,
    );
    println!(
        "| (cycles/s at 8 threads: redlease {ours_tp:.0}, implied by redis-benchmark {implied:.0}) | | | |"
    );
    transports::report(s);
    cluster::report(s);
    primitives::report(s, &servers[0]);
    contended::report(&urls, s.throughput_time);
    keepalive::report(&urls, &pids, s.quick);
    #[cfg(feature = "metrics")]
    recorder::report(s, &servers[0]);
}

/// Cycles per second with 8 threads on distinct keys, against the cycle rate
/// `redis-benchmark -c 8` implies for SET NX PX plus EVALSHA on the same
/// server, interleaved twice; medians.
fn throughput(s: &Settings, locks: &LockManager, server: &RedisServer) -> (f64, f64) {
    let mut ours = Vec::new();
    let mut implied = Vec::new();
    for _ in 0..2 {
        implied.push(redis_benchmark_cycle_rate(server.port, s));
        ours.push(threads_cycle_rate(locks, 8, s.throughput_time));
    }
    ours.sort_by(f64::total_cmp);
    implied.sort_by(f64::total_cmp);
    (ours[ours.len() / 2], implied[implied.len() / 2])
}

fn threads_cycle_rate(locks: &LockManager, threads: usize, time: Duration) -> f64 {
    let start = Barrier::new(threads);
    let total: u64 = thread::scope(|sc| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let start = &start;
                sc.spawn(move || {
                    let key = format!("tp-{t}");
                    start.wait();
                    let began = Instant::now();
                    let mut n = 0u64;
                    while began.elapsed() < time {
                        ours_cycle(locks, key.as_bytes());
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).sum()
    });
    total as f64 / time.as_secs_f64()
}

fn redis_benchmark_cycle_rate(port: u16, s: &Settings) -> f64 {
    let sha = redis::Script::new(common::RELEASE).get_hash().to_string();
    let n = if s.rounds < 5 { "20000" } else { "100000" };
    let rps = |command: &[&str]| -> f64 {
        let out = Command::new("redis-benchmark")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-c",
                "8",
                "-n",
                n,
                "-r",
                "100000",
                "--csv",
            ])
            .args(command)
            .output()
            .expect("run redis-benchmark (it comes with redis-server)");
        // CSV: a header line, then "name","rps",...
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .nth(1)
            .and_then(|line| line.split(',').nth(1))
            .and_then(|field| field.trim_matches('"').parse().ok())
            .unwrap_or_else(|| panic!("cannot read redis-benchmark output: {text}"))
    };
    let set = rps(&[
        "SET",
        "key:__rand_int__",
        "0123456789abcdef0123456789abcdef",
        "NX",
        "PX",
        "10000",
    ]);
    let release = rps(&[
        "EVALSHA",
        &sha,
        "1",
        "key:__rand_int__",
        "0123456789abcdef0123456789abcdef",
    ]);
    1.0 / (1.0 / set + 1.0 / release)
}

fn redis_version(url: &str) -> String {
    let mut con = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("connect");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut con)
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string()
}

/// Instructions per cycle in user space for floor, ours and by-hand: this
/// binary under `valgrind --tool=callgrind`, collecting only inside the
/// measured loop.
fn callgrind(port: u16) -> Option<(f64, f64, f64)> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("(valgrind not found: skipping instruction counts)");
        return None;
    }
    let port = port.to_string();
    Some((
        callgrind_count("ours", &port, None)?,
        callgrind_count("by-hand", &port, None)?,
        callgrind_count("floor", &port, None)?,
    ))
}

/// Instructions per cycle of one contestant, counted by callgrind in a
/// child process (`target`: a port, or a URL for `ours-url`; `ca`: the CA
/// file a `rediss://` URL needs).
fn callgrind_count(who: &str, target: &str, ca: Option<&std::path::Path>) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let cycles = 5000;
    let out_file = std::env::temp_dir().join(format!(
        "redlease-callgrind-{who}-{}-{}",
        std::process::id(),
        target.len()
    ));
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg("--toggle-collect=*measured_loop*")
        .arg(&exe)
        .args(["--only", who, target, &cycles.to_string()]);
    if let Some(ca) = ca {
        command.env(CA_ENV, ca);
    }
    let status = command.output().ok()?;
    if !status.status.success() {
        return None;
    }
    let text = std::fs::read_to_string(&out_file).ok()?;
    let _ = std::fs::remove_file(&out_file);
    let total: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })?
        .trim()
        .parse()
        .ok()?;
    Some(total / cycles as f64)
}

/// Where a callgrind child finds the CA of a `rediss://` URL.
const CA_ENV: &str = "REDLEASE_BENCH_CA";

/// Child mode: run one contestant's loop so callgrind can count it.
fn run_only(who: &str, target: &str, cycles: usize) {
    if primitives::is_shape(who) {
        let locks = LockManager::builder()
            .restart_quarantine(false)
            .node(target)
            .build()
            .expect("build");
        let mut cycle = primitives::cycle(who, &locks);
        cycle();
        measured_loop(cycles, cycle);
        return;
    }
    if who == "ours-url" || who == "ours-cluster" {
        let builder = LockManager::builder().restart_quarantine(false);
        let mut builder = if who == "ours-cluster" {
            builder.cluster([target])
        } else {
            builder.node(target)
        };
        if let Ok(ca) = std::env::var(CA_ENV) {
            builder = builder.tls_ca_file(ca);
        }
        let locks = builder.build().expect("build");
        ours_cycle(&locks, b"cg-ours");
        measured_loop(cycles, || ours_cycle(&locks, b"cg-ours"));
        return;
    }
    let port: u16 = target.parse().expect("port");
    let url = format!("redis://127.0.0.1:{port}");
    match who {
        "ours" => {
            let locks = LockManager::builder()
                // A fresh private server: nothing for the restart quarantine to protect.
                .restart_quarantine(false)
                .node(url.as_str())
                .build()
                .expect("build");
            ours_cycle(&locks, b"cg-ours");
            measured_loop(cycles, || ours_cycle(&locks, b"cg-ours"));
        }
        "by-hand" => {
            let mut by_hand = ByHand::connect(&url);
            by_hand.cycle(b"cg-by-hand");
            measured_loop(cycles, || by_hand.cycle(b"cg-by-hand"));
        }
        _ => {
            let mut floor = Floor::connect(port, b"cg-floor");
            floor.cycle();
            measured_loop(cycles, || floor.cycle());
        }
    }
    let _ = TTL;
}

#[inline(never)]
fn measured_loop(cycles: usize, mut cycle: impl FnMut()) {
    for _ in 0..cycles {
        cycle();
    }
}
