//! `redlease-bench`: workers competing for shared resources, the seed's
//! demo grown into a load generator for locks ("redis-benchmark, but for
//! locks"). Install it with `cargo install --path bench`.
//!
//! ```text
//! redlease-bench                                  # 1 embedded redis-server
//! redlease-bench --nodes 3                        # Redlock over 3 embedded servers
//! redlease-bench --transport unix                 # the same over a unix socket
//! redlease-bench --transport tls                  # ... over TLS (certificates made on the spot)
//! redlease-bench --sentinel                       # a master, a replica and 3 sentinels
//! redlease-bench --cluster 3 --keys 64            # a Redis Cluster of 3 masters
//! redlease-bench --compare --plot workers.svg     # wake vs poll vs fair
//! redlease-bench --rate 2000 --hold-dist exp      # open loop, latency at a load
//! redlease-bench --uncontended                    # each thread its own key: the lock's own cost
//! redlease-bench --url redis://10.0.0.5:6379 --threads 32 --json
//! ```
//!
//! Each worker takes a random resource's lock, and while holding it does a
//! deliberately non-atomic read–sleep–write on that resource's counter in
//! Redis and records its interval by the monotonic clock. The summary checks
//! that no two intervals on a resource overlap and no update was lost.

mod env;
mod plot;
mod progress;
mod stats;
#[path = "../../tests/support/mod.rs"]
mod support;
mod work;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use env::Env;
use stats::Summary;
use support::alloc::CountingAllocator;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Set by a first Ctrl-C: the run ends early, and its summary still prints.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Workers competing for shared locks: a load generator for redlease.
///
/// With no --url (and no REDIS_URL), starts its own throwaway redis-server
/// instance(s) on free loopback ports and stops them at the end.
#[derive(Parser, Debug, Clone)]
#[command(name = "redlease-bench", version)]
pub struct Options {
    /// Worker threads.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    threads: u32,
    /// Distinct resources (lock keys) the workers compete for.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub keys: u32,
    /// Lock TTL (e.g. 2s, 500ms; a bare number is seconds).
    #[arg(long, default_value = "2s", value_parser = duration)]
    ttl: Duration,
    /// Time spent inside the critical section, besides the counter's
    /// read and write.
    #[arg(long, default_value = "1ms", value_parser = duration)]
    hold: Duration,
    /// Each thread locks a key of its own (as many keys as threads): the
    /// lock's own cost, with no one to wait for (and so nothing for the
    /// mutual-exclusion check to catch). Overrides --keys.
    #[arg(long, conflicts_with = "compare")]
    uncontended: bool,
    /// How the time inside the critical section is drawn: fixed at --hold,
    /// or exponential with mean --hold (capped at 10× the mean and half the
    /// TTL).
    #[arg(long, value_enum, default_value_t = HoldDist::Fixed)]
    hold_dist: HoldDist,
    /// Open loop: start this many cycles per second in all, on a schedule,
    /// whatever the lock does (latency is then also counted from when each
    /// cycle should have started: coordinated omission corrected). Without
    /// it, each worker starts its next cycle when the last ends.
    #[arg(long)]
    rate: Option<f64>,
    /// Run the workload once per waiting strategy (wake, poll, and fair on
    /// one node) and print one table.
    #[arg(long, conflicts_with_all = ["fair", "retry"])]
    compare: bool,
    /// Also draw the latency percentiles and the throughput over time, as
    /// SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// How long to run (e.g. 10s, 1m; a bare number is seconds, as in
    /// `--duration 10`).
    #[arg(long, default_value = "5s", value_parser = duration)]
    duration: Duration,
    /// Stop after this many acquisitions in total (the duration still
    /// bounds the run).
    #[arg(long)]
    count: Option<u64>,
    /// How a worker waits for a held lock.
    #[arg(long, value_enum, default_value_t = Retry::Wake)]
    retry: Retry,
    /// First (or only) delay between attempts, for --retry fixed/exponential.
    #[arg(long, default_value = "1ms", value_parser = duration)]
    retry_delay: Duration,
    /// Longest wait for one lock before giving up.
    #[arg(long, default_value = "10s", value_parser = duration)]
    max_wait: Duration,
    /// Embedded redis-server instances to start: 1, or 3/5 for Redlock.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9))]
    nodes: u32,
    /// How the embedded servers are reached.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    transport: Transport,
    /// Embedded Sentinel deployment: a master, one replica and three
    /// sentinels; locks find the master through the sentinels.
    #[arg(long, conflicts_with_all = ["nodes", "urls"])]
    sentinel: bool,
    /// Embedded Redis Cluster of this many masters (3 when no number is
    /// given), the slots split evenly; each key's lock lives on its slot's
    /// master. With --url, the URLs are seeds of an existing cluster (give
    /// --counter-url: a server outside it for the counters).
    #[arg(long, num_args = 0..=1, default_missing_value = "3",
          value_parser = clap::value_parser!(u32).range(1..=9),
          conflicts_with_all = ["nodes", "sentinel", "transport"])]
    cluster: Option<u32>,
    /// With --sentinel (or any node): grant only what this many replicas
    /// acknowledged (WAIT), within 100 ms.
    #[arg(long)]
    wait_replicas: Option<u32>,
    /// Redis node URL; repeat (or comma-separate) for a Redlock quorum.
    #[arg(long = "url", env = "REDIS_URL", value_delimiter = ',')]
    urls: Vec<String>,
    /// CA certificate (PEM) for rediss:// --url nodes.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Where the workers keep their counters (redis:// or unix://);
    /// defaults to the first --url.
    #[arg(long)]
    counter_url: Option<String>,
    /// First come, first served (one node only): waiters get the lock in
    /// the order they asked.
    #[arg(long)]
    fair: bool,
    /// No restart quarantine on the --url servers (for servers just
    /// started, which otherwise grant no lock for a minute). Servers the
    /// tool starts itself never have one.
    #[arg(long)]
    no_quarantine: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// A duration as humantime writes it (`1ms`, `2s`, `1m 30s`), or a bare
/// number of seconds (`10`, `0.5`), as load generators take it.
fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{text} is not a number of seconds we can wait"));
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (or give a number of seconds)"))
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum HoldDist {
    Fixed,
    /// Exponential, mean --hold.
    Exp,
}

impl HoldDist {
    fn name(self) -> &'static str {
        match self {
            HoldDist::Fixed => "fixed",
            HoldDist::Exp => "exponential",
        }
    }

    /// One hold time with mean `mean`.
    fn draw(self, mean: Duration, ttl: Duration, rng: &mut fastrand::Rng) -> Duration {
        match self {
            HoldDist::Fixed => mean,
            HoldDist::Exp => {
                let draw = -(1.0 - rng.f64()).ln() * mean.as_secs_f64();
                Duration::from_secs_f64(draw).min(mean * 10).min(ttl / 2)
            }
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP on loopback.
    Tcp,
    /// The servers' unix sockets.
    Unix,
    /// TLS on loopback, with a CA and certificates made for the run.
    Tls,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// `lock`, woken when the lock is released (the library's default).
    Wake,
    /// `lock`, polling with a doubling, jittered delay capped at 50 ms: what
    /// other Redlock clients do.
    #[value(alias = "exponential")]
    Poll,
    /// `lock`, polling with a fixed, jittered delay.
    Fixed,
    /// One attempt (`try_lock`); a held lock counts as gave-up.
    None,
}

impl Retry {
    pub fn name(self) -> &'static str {
        match self {
            Retry::Wake => "wake",
            Retry::Poll => "poll",
            Retry::Fixed => "fixed",
            Retry::None => "none",
        }
    }
}

fn main() -> ExitCode {
    let options = match Options::try_parse() {
        Ok(options) => options,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(e.to_string().lines().next().unwrap_or("bad arguments")),
    };
    if let Err(msg) = check(&options) {
        return fail(&msg);
    }
    match run_all(&options) {
        Ok(summaries) => {
            if let Some(path) = &options.plot
                && let Err(msg) = plot::draw(path, &summaries)
            {
                return fail(&msg);
            }
            if options.json {
                let json = match &summaries[..] {
                    [one] => one.to_json(),
                    all => serde_json::Value::Array(all.iter().map(Summary::to_json).collect()),
                };
                println!("{json}");
            } else if summaries.len() == 1 {
                print!("{}", summaries[0].to_table());
            } else {
                print!("{}", stats::compare_table(&summaries));
            }
            if summaries.iter().all(Summary::exclusion_ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(msg) => fail(&msg),
    }
}

/// The run, or with --compare one run per waiting strategy, on the same
/// nodes.
fn run_all(o: &Options) -> Result<Vec<Summary>, String> {
    let mut o = o.clone();
    if o.uncontended {
        o.keys = o.threads;
    }
    let o = &o;
    // Installed before any server starts. A first Ctrl-C ends the run
    // early: the summary still prints and the embedded servers (in process
    // groups of their own, so the Ctrl-C did not reach them) are stopped
    // after. A second one does not wait.
    let pids: Arc<Mutex<Vec<u32>>> = Arc::default();
    let handler_pids = Arc::clone(&pids);
    let _ = ctrlc::set_handler(move || {
        if INTERRUPTED.swap(true, Ordering::Relaxed) {
            let pids = handler_pids.lock().map(|p| p.clone()).unwrap_or_default();
            for pid in &pids {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            std::process::exit(130);
        }
    });
    let env = Env::start(o)?;
    if let Ok(mut p) = pids.lock() {
        *p = env.pids();
    }
    let runs: Vec<(Retry, bool)> = if o.compare {
        let mut runs = vec![(Retry::Poll, false), (Retry::Wake, false)];
        // Fair mode on one node or a cluster (each key's queue is on its
        // master), not over Redlock or with WAIT.
        if o.urls.len() <= 1 && o.nodes == 1 && !o.sentinel && o.wait_replicas.is_none()
            || o.cluster.is_some()
        {
            runs.push((Retry::Wake, true));
        }
        runs
    } else {
        vec![(o.retry, o.fair)]
    };
    let mut summaries = Vec::new();
    for (retry, fair) in runs {
        if INTERRUPTED.load(Ordering::Relaxed) {
            break;
        }
        summaries.push(work::run(&env, o, retry, fair)?);
    }
    Ok(summaries)
}

/// One line on stderr, exit status 2.
fn fail(msg: &str) -> ExitCode {
    let msg = msg.strip_prefix("error: ").unwrap_or(msg);
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

fn check(o: &Options) -> Result<(), String> {
    if o.ttl.is_zero() {
        return Err("--ttl must be above zero".into());
    }
    if o.hold >= o.ttl {
        return Err(format!(
            "--hold {:?} must be shorter than --ttl {:?}",
            o.hold, o.ttl
        ));
    }
    if o.duration.is_zero() {
        return Err("--duration must be above zero".into());
    }
    if o.count == Some(0) {
        return Err("--count must be above zero".into());
    }
    if o.rate.is_some_and(|r| !(0.01..=1e7).contains(&r)) {
        return Err("--rate must be between 0.01 and 10000000 cycles per second".into());
    }
    Ok(())
}
