//! Workers competing for shared resources: the seed's demo grown into a
//! load generator for locks ("redis-benchmark, but for locks").
//!
//! ```text
//! cargo run --release --example workers                      # 1 embedded redis-server
//! cargo run --release --example workers -- --nodes 3         # Redlock over 3 embedded servers
//! cargo run --release --example workers -- --transport unix      # the same over a unix socket
//! cargo run --release --example workers -- --transport tls       # ... over TLS (certificates made on the spot)
//! cargo run --release --example workers -- --sentinel            # a master, a replica and 3 sentinels
//! cargo run --release --example workers -- --url redis://10.0.0.5:6379 --threads 32 --json
//! ```
//!
//! Each worker takes a random resource's lock, and while holding it does a
//! deliberately non-atomic read–sleep–write on that resource's counter in
//! Redis and records its interval by the monotonic clock. The summary checks
//! that no two intervals on a resource overlap and no update was lost.

mod stats;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use redlease::{LockManager, RetryPolicy};
use stats::{Setup, Stats, Summary};
use support::RedisServer;
use support::alloc::CountingAllocator;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Each worker's first cycles open connections and warm up; allocations are
/// counted after them.
const WARM_UP_CYCLES: u64 = 100;

/// Workers competing for shared locks: a load generator for redlease.
///
/// With no --url (and no REDIS_URL), starts its own throwaway redis-server
/// instance(s) on free loopback ports and stops them at the end.
#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Options {
    /// Worker threads.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    threads: u32,
    /// Distinct resources (lock keys) the workers compete for.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    keys: u32,
    /// Lock TTL (e.g. 2s, 500ms; a bare number is seconds).
    #[arg(long, default_value = "2s", value_parser = duration)]
    ttl: Duration,
    /// Time spent inside the critical section, besides the counter's
    /// read and write.
    #[arg(long, default_value = "1ms", value_parser = duration)]
    hold: Duration,
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
enum Transport {
    /// TCP on loopback.
    Tcp,
    /// The servers' unix sockets.
    Unix,
    /// TLS on loopback, with a CA and certificates made for the run.
    Tls,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
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
    fn name(self) -> &'static str {
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
    match run(&options) {
        Ok(summary) => {
            if options.json {
                println!("{}", summary.to_json());
            } else {
                print!("{}", summary.to_table());
            }
            if summary.exclusion_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(msg) => fail(&msg),
    }
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
    Ok(())
}

/// What every worker shares.
struct Shared {
    locks: LockManager,
    keys: Vec<String>,
    counters: Vec<String>,
    stop: AtomicBool,
    acquired: AtomicU64,
    contended: AtomicU64,
    errors: AtomicU64,
    /// Per key: when its last holder began releasing, in ns since `epoch`.
    last_release: Vec<AtomicU64>,
    epoch: Instant,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

fn run(o: &Options) -> Result<Summary, String> {
    // Embedded servers live until the end of `run`, then are killed by pid.
    let mut servers = Vec::new();
    let mut deployment = None;
    let certs =
        (o.urls.is_empty() && o.transport == Transport::Tls).then(support::tls::Certs::make);
    let embedded = o.urls.is_empty();
    let mut builder = LockManager::builder();
    let (urls, counter_url, topology) = if o.sentinel {
        let d = support::sentinel::Deployment::start(1, 3, 5_000);
        let master = format!("redis://{}", support::sentinel::MASTER);
        builder = builder.sentinel(master, d.sentinel_urls());
        let counter = d.servers[0].url();
        deployment = Some(d);
        (
            Vec::new(),
            counter,
            "sentinel: a master, 1 replica, 3 sentinels".to_owned(),
        )
    } else if embedded {
        for _ in 0..o.nodes {
            let server = match &certs {
                None if o.transport == Transport::Unix => RedisServer::start_unix(),
                None => RedisServer::try_start_detached(&[])?,
                Some(certs) => {
                    let args = certs.server_args(
                        support::free_port(),
                        support::tls::ServerCert::Good,
                        false,
                    );
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    RedisServer::try_start_detached(&args)?
                }
            };
            servers.push(server);
        }
        let urls: Vec<String> = servers
            .iter()
            .map(|s| match o.transport {
                Transport::Tcp => s.url(),
                Transport::Unix => s.unix_url(),
                Transport::Tls => format!("rediss://localhost:{}", s.tls_port().expect("tls")),
            })
            .collect();
        if let Some(certs) = &certs {
            builder = builder.tls_ca_file(certs.ca());
        }
        let label = match o.transport {
            Transport::Tcp => "tcp",
            Transport::Unix => "unix socket",
            Transport::Tls => "tls",
        };
        (urls, servers[0].url(), label.to_owned())
    } else {
        if let Some(ca) = &o.tls_ca {
            builder = builder.tls_ca_file(ca);
        }
        let counter = o.counter_url.clone().unwrap_or_else(|| o.urls[0].clone());
        if counter.starts_with("rediss:") {
            return Err(
                "the counters need a redis:// or unix:// address: give --counter-url".into(),
            );
        }
        (o.urls.clone(), counter, "given".to_owned())
    };
    if let Some(n) = o.wait_replicas {
        builder = builder.wait_for_replicas(n, Duration::from_millis(100));
    }
    let locks = builder
        .nodes(urls.iter().map(String::as_str))
        // Servers this run started are fresh and private: no one's locks to
        // protect, so no restart quarantine. Given servers keep it on.
        .restart_quarantine(!embedded && !o.no_quarantine)
        // The maximum lease (60 s by default) must admit the TTL asked for.
        .max_ttl(o.ttl.max(Duration::from_secs(60)))
        .pool_size(o.threads.min(1024) as usize)
        .preconnect(o.threads.min(1024) as usize)
        .fair(o.fair)
        .build()
        .map_err(|e| e.to_string())?;
    let nodes = locks.nodes();
    let counter_url = &counter_url;
    let redis_version = redis_version(counter_url).unwrap_or_else(|| "(version unknown)".into());
    let rtt = round_trip(counter_url)?;

    let run_id = std::process::id();
    let shared = Arc::new(Shared {
        locks,
        keys: (0..o.keys)
            .map(|i| format!("redlease:workers:{run_id}:lock:{i}"))
            .collect(),
        counters: (0..o.keys)
            .map(|i| format!("redlease:workers:{run_id}:counter:{i}"))
            .collect(),
        stop: AtomicBool::new(false),
        acquired: AtomicU64::new(0),
        contended: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        last_release: (0..o.keys).map(|_| AtomicU64::new(0)).collect(),
        epoch: Instant::now(),
    });
    {
        let shared = Arc::clone(&shared);
        let pids: Vec<u32> = servers
            .iter()
            .chain(deployment.iter().flat_map(|d| &d.servers))
            .filter_map(RedisServer::pid)
            .collect();
        // A first Ctrl-C ends the run early: the summary still prints and
        // the embedded servers (in their own process group, so the Ctrl-C
        // did not reach them) are stopped after. A second one does not wait.
        let _ = ctrlc::set_handler(move || {
            if shared.stop.swap(true, Ordering::Relaxed) {
                for pid in &pids {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
                std::process::exit(130);
            }
        });
    }

    let started = Instant::now();
    let workers: Vec<_> = (0..o.threads)
        .map(|i| {
            let shared = Arc::clone(&shared);
            let (o, url) = (o.clone(), counter_url.clone());
            thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || work(&shared, &o, &url, u64::from(i)))
                .map_err(|e| format!("cannot start a worker thread: {e}"))
        })
        .collect::<Result<_, _>>()?;

    progress(&shared, o, started);
    let mut stats = Stats::new();
    for worker in workers {
        match worker.join() {
            Ok(Ok(s)) => stats.merge(s),
            Ok(Err(msg)) => return Err(msg),
            Err(_) => return Err("a worker panicked".into()),
        }
    }
    let elapsed = started.elapsed();

    let counted = read_counters(counter_url, &shared.counters)?;
    let lost_updates = stats.intervals.len() as u64 - counted.min(stats.intervals.len() as u64);
    let overlaps = stats.overlaps();
    cleanup(counter_url, &shared);
    drop(servers);
    drop(deployment);
    drop(certs);
    Ok(Summary {
        setup: Setup {
            threads: o.threads,
            keys: o.keys,
            nodes,
            embedded,
            topology,
            redis_version,
            ttl: o.ttl,
            hold: o.hold,
            retry: o.retry.name(),
            fair: o.fair,
            rtt,
        },
        elapsed,
        stats,
        overlaps,
        lost_updates,
    })
}

/// One worker: lock a random resource, bump its counter non-atomically,
/// release; until the time or the count runs out.
fn work(shared: &Shared, o: &Options, counter_url: &str, seed: u64) -> Result<Stats, String> {
    let mut redis = redis::Client::open(counter_url)
        .and_then(|c| c.get_connection())
        .map_err(|e| format!("counter connection: {e}"))?;
    let policy = match o.retry {
        Retry::None | Retry::Fixed => RetryPolicy::fixed(o.retry_delay).wake_on_release(false),
        Retry::Poll => RetryPolicy::exponential(o.retry_delay)
            .max_delay(Duration::from_millis(50))
            .wake_on_release(false),
        Retry::Wake => RetryPolicy::exponential(o.retry_delay).max_delay(Duration::from_millis(50)),
    }
    .max_wait(o.max_wait);
    let mut rng = fastrand::Rng::with_seed(
        seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(std::process::id()),
    );
    let mut stats = Stats::new();
    let deadline = shared.epoch + o.duration;
    let mut cycles = 0u64;

    while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if o.count
            .is_some_and(|count| shared.acquired.load(Ordering::Relaxed) >= count)
        {
            break;
        }
        let k = rng.usize(..shared.keys.len());
        let key = shared.keys[k].as_bytes();
        let measured = cycles >= WARM_UP_CYCLES;
        let asked = Instant::now();
        let asked_ns = shared.now_ns();
        // Waiting never runs past the end of the run.
        let wait = o.max_wait.min(deadline.saturating_duration_since(asked));
        let policy = policy.clone().max_wait(wait);
        let (allocs, result) = support::alloc::count(|| match o.retry {
            Retry::None => shared
                .locks
                .try_lock(key, o.ttl)
                .map(|lock| lock.ok_or(1u32)),
            _ => match shared.locks.lock_with(key, o.ttl, &policy) {
                Ok(lock) => Ok(Ok(lock)),
                Err(
                    redlease::Error::Held { attempts, .. }
                    | redlease::Error::WaitTimedOut { attempts, .. },
                ) => Ok(Err(attempts)),
                Err(e) => Err(e),
            },
        });
        let lock = match result {
            Ok(Ok(lock)) => lock,
            Ok(Err(_)) if Instant::now() >= deadline => break, // cut short by the end of the run
            Ok(Err(attempts)) => {
                stats.gave_up += 1;
                stats.contended += u64::from(attempts);
                shared
                    .contended
                    .fetch_add(u64::from(attempts), Ordering::Relaxed);
                continue;
            }
            Err(e) => {
                stats.error(&e);
                shared.errors.fetch_add(1, Ordering::Relaxed);
                // Do not spin on a persistent failure.
                thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        let latency = asked.elapsed();
        let waited = u64::from(lock.attempts() - 1);
        stats.acquired += 1;
        stats.retries += waited;
        stats.contended += waited;
        shared.acquired.fetch_add(1, Ordering::Relaxed);
        shared.contended.fetch_add(waited, Ordering::Relaxed);
        let _ = stats.latency.record((latency.as_micros() as u64).max(1));
        let released_at = shared.last_release[k].load(Ordering::Relaxed);
        let got_ns = shared.now_ns();
        if waited > 0 && released_at > asked_ns {
            let _ = stats.handoff.record(((got_ns - released_at) / 1000).max(1));
        }

        // The critical section: a read–sleep–write that loses updates
        // unless the lock really excludes everyone else.
        let counter = &shared.counters[k];
        let begin = shared.now_ns();
        let value: u64 = redis::cmd("GET")
            .arg(counter)
            .query::<Option<u64>>(&mut redis)
            .map_err(|e| format!("counter read: {e}"))?
            .unwrap_or(0);
        if !o.hold.is_zero() {
            thread::sleep(o.hold);
        }
        redis::cmd("SET")
            .arg(counter)
            .arg(value + 1)
            .query::<()>(&mut redis)
            .map_err(|e| format!("counter write: {e}"))?;
        let end = shared.now_ns();
        if lock.remaining().is_zero() {
            stats.outlived_lock += 1;
        }
        stats.intervals.push((k, begin, end));

        shared.last_release[k].store(shared.now_ns(), Ordering::Relaxed);
        let (release_allocs, released) = support::alloc::count(|| lock.release());
        stats.held_ns += shared.now_ns().saturating_sub(got_ns);
        match released {
            Ok(true) => {}
            Ok(false) => stats.released_after_expiry += 1,
            Err(e) => {
                stats.error(&e);
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if measured {
            stats.allocations += allocs + release_allocs;
            stats.measured_cycles += 1;
        }
        cycles += 1;
    }
    Ok(stats)
}

/// The live line: in place on a terminal, a line a second otherwise.
fn progress(shared: &Shared, o: &Options, started: Instant) {
    let tty = std::io::stderr().is_terminal();
    let tick = if tty {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };
    let mut last = (Instant::now(), 0u64);
    let mut next_line = Instant::now() + tick;
    loop {
        let done = shared.stop.load(Ordering::Relaxed)
            || started.elapsed() >= o.duration
            || o.count
                .is_some_and(|c| shared.acquired.load(Ordering::Relaxed) >= c);
        if done {
            break;
        }
        thread::sleep(Duration::from_millis(20).min(tick));
        if Instant::now() < next_line {
            continue;
        }
        next_line += tick;
        let acquired = shared.acquired.load(Ordering::Relaxed);
        let rate = (acquired - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-9);
        last = (Instant::now(), acquired);
        let line = format!(
            "{:>6.1}s  {:>9.0} acq/s  {acquired} acquired  {} contended  {} errors",
            started.elapsed().as_secs_f64(),
            rate,
            shared.contended.load(Ordering::Relaxed),
            shared.errors.load(Ordering::Relaxed),
        );
        let mut err = std::io::stderr().lock();
        let _ = if tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
    shared.stop.store(true, Ordering::Relaxed);
    if tty {
        eprint!("\r\x1b[2K");
    }
}

/// The median of 51 `PING` round trips to `url`.
fn round_trip(url: &str) -> Result<Duration, String> {
    let mut con = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .map_err(|e| format!("ping connection: {e}"))?;
    let mut times: Vec<Duration> = (0..51)
        .map(|_| {
            let started = Instant::now();
            let _: redis::RedisResult<String> = redis::cmd("PING").query(&mut con);
            started.elapsed()
        })
        .collect();
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

fn redis_version(url: &str) -> Option<String> {
    let mut con = redis::Client::open(url).ok()?.get_connection().ok()?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut con).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_string())
}

fn read_counters(url: &str, counters: &[String]) -> Result<u64, String> {
    let mut con = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .map_err(|e| format!("counter connection: {e}"))?;
    let mut total = 0;
    for counter in counters {
        let n: Option<u64> = redis::cmd("GET")
            .arg(counter)
            .query(&mut con)
            .map_err(|e| format!("counter read: {e}"))?;
        total += n.unwrap_or(0);
    }
    Ok(total)
}

/// Removes the counters (locks are gone already) from a server we were
/// given; embedded ones are thrown away anyway.
fn cleanup(url: &str, shared: &Shared) {
    if let Ok(mut con) = redis::Client::open(url).and_then(|c| c.get_connection()) {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&shared.counters).query(&mut con);
    }
}
