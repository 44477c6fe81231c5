//! One run: the workers, each taking a random resource's lock and doing a
//! deliberately non-atomic read–sleep–write of its counter, closed loop
//! (each worker starts its next cycle when the last ends) or open loop
//! (`--rate`: cycles start on a schedule, late ones counted from when they
//! should have started).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use redlease::{LockManager, RetryPolicy};

use crate::env::Env;
use crate::progress::progress;
use crate::stats::{Setup, Stats, Summary};
use crate::{Options, Retry, support};

/// Each worker's first cycles open connections and warm up; allocations are
/// counted after them.
const WARM_UP_CYCLES: u64 = 100;

/// What every worker shares.
pub struct Shared {
    locks: LockManager,
    keys: Vec<String>,
    counters: Vec<String>,
    pub stop: AtomicBool,
    pub acquired: AtomicU64,
    pub contended: AtomicU64,
    pub errors: AtomicU64,
    /// Open loop: arrivals taken so far.
    arrivals: AtomicU64,
    /// Per key: when its last holder began releasing, in ns since `epoch`.
    last_release: Vec<AtomicU64>,
    epoch: Instant,
}

impl Shared {
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// One run of the workload with `retry` (and `fair`), on `env`'s nodes.
pub fn run(env: &Env, o: &Options, retry: Retry, fair: bool) -> Result<Summary, String> {
    let locks = env.manager(o, fair)?;
    let nodes = locks.nodes();
    let counter_url = &env.counter_url;
    let redis_version = env.redis_version();
    let rtt = env.round_trip()?;

    // Fresh names for every run: nothing an earlier run (of this process,
    // or of another with the same pid) left behind is counted.
    let run_id = format!(
        "{}-{}-{:016x}",
        std::process::id(),
        if fair { "fair" } else { retry.name() },
        fastrand::u64(..)
    );
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
        arrivals: AtomicU64::new(0),
        last_release: (0..o.keys).map(|_| AtomicU64::new(0)).collect(),
        epoch: Instant::now(),
    });

    let started = Instant::now();
    let workers: Vec<_> = (0..o.threads)
        .map(|i| {
            let shared = Arc::clone(&shared);
            let (o, url) = (o.clone(), counter_url.clone());
            thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || work(&shared, &o, retry, &url, u64::from(i)))
                .map_err(|e| format!("cannot start a worker thread: {e}"))
        })
        .collect::<Result<_, _>>()?;

    let timeline = progress(&shared, o, started);
    let mut stats = Stats::new();
    for worker in workers {
        match worker.join() {
            Ok(Ok(s)) => stats.merge(s),
            Ok(Err(msg)) => return Err(msg),
            Err(_) => return Err("a worker panicked".into()),
        }
    }
    let elapsed = started.elapsed();

    // Key by key: each counter must equal its key's critical sections. One
    // short is a lost update; one over is a count that came from elsewhere,
    // which makes the check unsound: both fail the run.
    let counted = read_counters(counter_url, &shared.counters)?;
    let mut sections = vec![0u64; shared.counters.len()];
    for &(k, _, _) in &stats.intervals {
        sections[k] += 1;
    }
    let lost_updates = sections
        .iter()
        .zip(&counted)
        .map(|(&expected, &got)| expected.abs_diff(got))
        .sum();
    let overlaps = stats.overlaps();
    cleanup(counter_url, &shared);
    Ok(Summary {
        setup: Setup {
            threads: o.threads,
            keys: o.keys,
            nodes,
            embedded: env.embedded,
            topology: env.topology.clone(),
            redis_version,
            ttl: o.ttl,
            hold: o.hold,
            hold_dist: o.hold_dist.name(),
            rate: o.rate,
            retry: retry.name(),
            fair,
            rtt,
        },
        elapsed,
        stats,
        overlaps,
        lost_updates,
        timeline,
    })
}

/// One worker: lock a random resource, bump its counter non-atomically,
/// release; until the time or the count runs out.
fn work(
    shared: &Shared,
    o: &Options,
    retry: Retry,
    counter_url: &str,
    seed: u64,
) -> Result<Stats, String> {
    let mut redis = redis::Client::open(counter_url)
        .and_then(|c| c.get_connection())
        .map_err(|e| format!("counter connection: {e}"))?;
    let policy = match retry {
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
        // Open loop: this cycle's arrival is the next on the schedule,
        // whoever takes it; it is waited for, never skipped.
        let intended = match o.rate {
            None => None,
            Some(rate) => {
                let n = shared.arrivals.fetch_add(1, Ordering::Relaxed);
                let at = shared.epoch + Duration::from_secs_f64(n as f64 / rate);
                if at >= deadline {
                    break;
                }
                thread::sleep(at.saturating_duration_since(Instant::now()));
                Some(at)
            }
        };
        let k = if o.uncontended {
            // Its own key: `seed` is the worker's index.
            seed as usize % shared.keys.len()
        } else {
            rng.usize(..shared.keys.len())
        };
        let key = shared.keys[k].as_bytes();
        let measured = cycles >= WARM_UP_CYCLES;
        let asked = Instant::now();
        let asked_ns = shared.now_ns();
        // Waiting never runs past the end of the run.
        let wait = o.max_wait.min(deadline.saturating_duration_since(asked));
        let policy = policy.clone().max_wait(wait);
        let (allocs, result) = support::alloc::count(|| match retry {
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
                // An arrival that never got its lock waited too: leaving it
                // out would flatter the tail.
                if let Some(intended) = intended {
                    let _ = stats
                        .response
                        .record((intended.elapsed().as_micros() as u64).max(1));
                }
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
                if let Some(intended) = intended {
                    let _ = stats
                        .response
                        .record((intended.elapsed().as_micros() as u64).max(1));
                }
                // Do not spin on a persistent failure.
                thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        let latency = asked.elapsed();
        if let Some(intended) = intended {
            // From when the cycle should have started: what a caller
            // arriving on schedule saw (coordinated omission corrected).
            let _ = stats
                .response
                .record((intended.elapsed().as_micros() as u64).max(1));
        }
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
        let hold = o.hold_dist.draw(o.hold, o.ttl, &mut rng);
        if !hold.is_zero() {
            thread::sleep(hold);
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

/// Each counter's value (0 when missing).
fn read_counters(url: &str, counters: &[String]) -> Result<Vec<u64>, String> {
    let mut con = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .map_err(|e| format!("counter connection: {e}"))?;
    counters
        .iter()
        .map(|counter| {
            let n: Option<u64> = redis::cmd("GET")
                .arg(counter)
                .query(&mut con)
                .map_err(|e| format!("counter read: {e}"))?;
            Ok(n.unwrap_or(0))
        })
        .collect()
}

/// Removes the counters (locks are gone already) from a server we were
/// given; embedded ones are thrown away anyway.
fn cleanup(url: &str, shared: &Shared) {
    if let Ok(mut con) = redis::Client::open(url).and_then(|c| c.get_connection()) {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&shared.counters).query(&mut con);
    }
}
