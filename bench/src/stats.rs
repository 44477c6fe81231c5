//! What the workers count, merged into one summary, and how it is shown.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use redlease::Error;
use serde_json::{Value, json};

/// One worker's tally; merged at the end.
pub struct Stats {
    pub acquired: u64,
    /// Attempts that found the lock held (or failed and were retried).
    pub contended: u64,
    /// Attempts beyond the first of each `lock` call.
    pub retries: u64,
    /// `lock` calls that ran out of patience (or `try_lock` found it held).
    pub gave_up: u64,
    /// Releases that found the lock already expired.
    pub released_after_expiry: u64,
    /// Critical sections that ended after the lock's validity.
    pub outlived_lock: u64,
    pub errors: BTreeMap<&'static str, u64>,
    /// Acquire latency, µs, from the call to the lock in hand.
    pub latency: Histogram<u64>,
    /// Open loop: from when the cycle should have started to the lock in
    /// hand, µs (coordinated omission corrected).
    pub response: Histogram<u64>,
    /// From the previous holder letting go to the next holder having it, µs.
    pub handoff: Histogram<u64>,
    /// Heap allocations inside lock/release calls, after warm-up.
    pub allocations: u64,
    pub measured_cycles: u64,
    /// (key index, begin ns, end ns) of each critical section.
    pub intervals: Vec<(usize, u64, u64)>,
    /// Time locks were held, from the lock in hand to its release done, ns.
    pub held_ns: u64,
    /// Acquisitions by each worker thread, in thread order.
    pub per_thread: Vec<u64>,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            acquired: 0,
            contended: 0,
            retries: 0,
            gave_up: 0,
            released_after_expiry: 0,
            outlived_lock: 0,
            errors: BTreeMap::new(),
            latency: histogram(),
            response: histogram(),
            handoff: histogram(),
            allocations: 0,
            measured_cycles: 0,
            intervals: Vec::new(),
            held_ns: 0,
            per_thread: Vec::new(),
        }
    }

    pub fn error(&mut self, e: &Error) {
        *self.errors.entry(error_kind(e)).or_default() += 1;
    }

    pub fn merge(&mut self, other: Stats) {
        self.acquired += other.acquired;
        self.contended += other.contended;
        self.retries += other.retries;
        self.gave_up += other.gave_up;
        self.released_after_expiry += other.released_after_expiry;
        self.outlived_lock += other.outlived_lock;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.response.add(&other.response);
        let _ = self.handoff.add(&other.handoff);
        self.allocations += other.allocations;
        self.measured_cycles += other.measured_cycles;
        self.intervals.extend(other.intervals);
        self.held_ns += other.held_ns;
        self.per_thread.push(other.acquired);
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Pairs of critical sections on the same key that overlap in time.
    pub fn overlaps(&mut self) -> u64 {
        crate::support::oracle::overlaps(&mut self.intervals)
    }
}

/// 1 µs to 1 hour, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// A short, stable label per error kind.
pub fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::InvalidArgument(_) => "invalid_argument",
        Error::Unsupported(_) => "unsupported",
        Error::Held { .. } => "held",
        Error::WaitTimedOut { .. } => "wait_timed_out",
        Error::NoQuorum { .. } => "no_quorum",
        Error::ValidityExpired { .. } => "validity_expired",
        Error::LockLost => "lock_lost",
        Error::Io { .. } => "io",
        Error::Timeout { .. } => "timeout",
        Error::Protocol { .. } => "protocol",
        Error::Server { .. } => "server",
        Error::Auth { .. } => "auth",
        Error::PoolTimeout { .. } => "pool_timeout",
        Error::NodeDown { .. } => "node_down",
        _ => "other",
    }
}

/// How the run was set up, for the summary's heading.
pub struct Setup {
    pub threads: u32,
    pub keys: u32,
    pub nodes: usize,
    pub embedded: bool,
    /// How the nodes are reached: tcp, unix socket, tls, sentinel,
    /// cluster, given.
    pub topology: String,
    pub redis_version: String,
    pub ttl: Duration,
    pub hold: Duration,
    /// `fixed` or `exponential` (mean `hold`).
    pub hold_dist: &'static str,
    /// Open loop: cycles started per second.
    pub rate: Option<f64>,
    pub retry: &'static str,
    pub fair: bool,
    /// Median `PING` round trip to the first node.
    pub rtt: Duration,
}

/// The whole result: setup, tallies, and the mutual-exclusion check.
pub struct Summary {
    pub setup: Setup,
    pub elapsed: Duration,
    pub stats: Stats,
    pub overlaps: u64,
    /// Counters off from their key's critical sections, summed: lost
    /// updates (or counts that came from elsewhere, which would make the
    /// check unsound; both fail the run).
    pub lost_updates: u64,
    /// (seconds since the start, acquisitions/s), every quarter second.
    pub timeline: Vec<(f64, f64)>,
}

impl Summary {
    /// The waiting strategy, as the comparison names it.
    pub fn strategy(&self) -> &'static str {
        if self.setup.fair {
            "fair"
        } else {
            self.setup.retry
        }
    }

    pub fn exclusion_ok(&self) -> bool {
        self.overlaps == 0 && self.lost_updates == 0
    }

    fn throughput(&self) -> f64 {
        self.stats.acquired as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Time the keys were held ÷ (keys × run time): how much of what the
    /// keys allow the workers used.
    fn key_utilisation(&self) -> f64 {
        let possible = f64::from(self.setup.keys) * self.elapsed.as_secs_f64();
        (self.stats.held_ns as f64 / 1e9 / possible.max(1e-9)).min(1.0)
    }

    /// Fewest and most acquisitions of one thread.
    fn shares(&self) -> (u64, u64) {
        let shares = &self.stats.per_thread;
        (
            shares.iter().copied().min().unwrap_or(0),
            shares.iter().copied().max().unwrap_or(0),
        )
    }

    /// A duration in round trips.
    fn rtts(&self, us: u64) -> f64 {
        us as f64 / (self.setup.rtt.as_secs_f64() * 1e6).max(1e-3)
    }

    fn allocations_per_cycle(&self) -> f64 {
        self.stats.allocations as f64 / self.stats.measured_cycles.max(1) as f64
    }

    pub fn to_json(&self) -> Value {
        let s = &self.stats;
        json!({
            "setup": {
                "threads": self.setup.threads,
                "keys": self.setup.keys,
                "nodes": self.setup.nodes,
                "embedded": self.setup.embedded,
                "topology": self.setup.topology,
                "redis_version": self.setup.redis_version,
                "ttl_ms": self.setup.ttl.as_millis() as u64,
                "hold_us": self.setup.hold.as_micros() as u64,
                "hold_distribution": self.setup.hold_dist,
                "rate_per_s": self.setup.rate,
                "retry": self.setup.retry,
                "fair": self.setup.fair,
            },
            "rtt_us": self.setup.rtt.as_secs_f64() * 1e6,
            "key_utilisation": self.key_utilisation(),
            "thread_share": {
                "min": self.shares().0,
                "max": self.shares().1,
                "max_over_min": self.shares().1 as f64 / self.shares().0.max(1) as f64,
            },
            "elapsed_s": self.elapsed.as_secs_f64(),
            "acquisitions": s.acquired,
            "throughput_per_s": self.throughput(),
            "contended_attempts": s.contended,
            "retries": s.retries,
            "gave_up": s.gave_up,
            "released_after_expiry": s.released_after_expiry,
            "sections_outliving_lock": s.outlived_lock,
            "errors": s.errors,
            "acquire_latency_us": percentiles(&s.latency),
            "response_latency_us": percentiles(&s.response),
            "started_per_s": s.response.len() as f64 / self.elapsed.as_secs_f64().max(1e-9),
            "handoff_us": percentiles(&s.handoff),
            "allocations_per_cycle": self.allocations_per_cycle(),
            "mutual_exclusion": {
                "ok": self.exclusion_ok(),
                "critical_sections": s.intervals.len(),
                "overlaps": self.overlaps,
                "lost_updates": self.lost_updates,
            },
        })
    }

    pub fn to_table(&self) -> String {
        let s = &self.stats;
        let setup = &self.setup;
        let nodes = if setup.topology.starts_with("cluster") {
            format!("{} masters", setup.nodes)
        } else if setup.nodes == 1 {
            "1 node".to_string()
        } else {
            format!("{} nodes (Redlock)", setup.nodes)
        };
        let origin = match (setup.embedded, setup.topology.as_str()) {
            (true, "tcp") => "embedded".to_owned(),
            (true, topology) => format!("embedded ({topology})"),
            (false, _) => "given".to_owned(),
        };
        let plural =
            |n: u32, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let hold = match setup.hold_dist {
            "fixed" => format!("{:?}", setup.hold),
            dist => format!("{dist} mean {:?}", setup.hold),
        };
        let open_loop = setup
            .rate
            .map_or(String::new(), |r| format!(", open loop {r}/s"));
        let mut out = format!(
            "redlease workers: {} on {}, {nodes}, {origin} redis {}\n\
             ttl {:?}, hold {hold}, retry {}{}{open_loop}, ran {:.2?}, round trip {}\n\n",
            plural(setup.threads, "thread", "threads"),
            plural(setup.keys, "key", "keys"),
            setup.redis_version,
            setup.ttl,
            setup.retry,
            if setup.fair { " (fair)" } else { "" },
            self.elapsed,
            format_us(setup.rtt.as_micros() as u64),
        );
        let row = |out: &mut String, name: &str, value: String| {
            out.push_str(&format!("  {name:<26}{value}\n"));
        };
        row(
            &mut out,
            "acquisitions",
            format!("{} ({:.0}/s)", s.acquired, self.throughput()),
        );
        row(
            &mut out,
            "key utilisation",
            format!(
                "{:.2} (time held ÷ keys × run time)",
                self.key_utilisation()
            ),
        );
        let (fewest, most) = self.shares();
        row(
            &mut out,
            "per-thread share",
            format!(
                "min {fewest}  max {most}  (max/min {:.2})",
                most as f64 / fewest.max(1) as f64
            ),
        );
        row(&mut out, "contended attempts", s.contended.to_string());
        row(&mut out, "retries", s.retries.to_string());
        row(&mut out, "gave up", s.gave_up.to_string());
        let errors = if s.errors.is_empty() {
            "0".to_string()
        } else {
            let kinds: Vec<String> = s.errors.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            format!("{} ({})", s.error_count(), kinds.join(", "))
        };
        row(&mut out, "errors", errors);
        row(
            &mut out,
            "released after expiry",
            s.released_after_expiry.to_string(),
        );
        row(&mut out, "acquire latency", latency_line(&s.latency));
        if let Some(rate) = setup.rate {
            row(
                &mut out,
                "from intended start",
                format!("{} (open loop, corrected)", latency_line(&s.response)),
            );
            let started = s.response.len() as f64 / self.elapsed.as_secs_f64().max(1e-9);
            row(
                &mut out,
                "offered vs started",
                format!(
                    "{rate}/s offered, {started:.0}/s started{}",
                    if started < 0.9 * rate {
                        " (SATURATED: the lock could not keep up; latencies above include the queue)"
                    } else {
                        ""
                    }
                ),
            );
        }
        row(&mut out, "handoff to next holder", latency_line(&s.handoff));
        if !s.handoff.is_empty() {
            row(
                &mut out,
                "handoff in round trips",
                format!(
                    "p50 {:.1}  p99 {:.1}",
                    self.rtts(s.handoff.value_at_quantile(0.5)),
                    self.rtts(s.handoff.value_at_quantile(0.99))
                ),
            );
        }
        row(
            &mut out,
            "allocations per cycle",
            format!(
                "{:.3} ({} in {} cycles after warm-up)",
                self.allocations_per_cycle(),
                s.allocations,
                s.measured_cycles
            ),
        );
        let verdict = if self.exclusion_ok() {
            "ok"
        } else {
            "VIOLATED"
        };
        row(
            &mut out,
            "mutual exclusion",
            format!(
                "{verdict}: {} overlaps, {} lost updates in {} critical sections",
                self.overlaps,
                self.lost_updates,
                s.intervals.len()
            ),
        );
        if s.outlived_lock > 0 {
            row(
                &mut out,
                "sections outliving lock",
                format!("{} (hold too close to ttl?)", s.outlived_lock),
            );
        }
        out
    }
}

/// Several runs of one workload side by side (`--compare`).
pub fn compare_table(runs: &[Summary]) -> String {
    let Some(first) = runs.first() else {
        return String::new();
    };
    let setup = &first.setup;
    let mut out = format!(
        "redlease workers --compare: {} threads on {} keys, {} node(s), hold {:?} {}, ttl {:?}, {:.1?} each\n\n",
        setup.threads,
        setup.keys,
        setup.nodes,
        setup.hold,
        setup.hold_dist,
        setup.ttl,
        first.elapsed
    );
    out.push_str(
        "| waiting | acq/s | key utilisation | acquire p50 | acquire p99 | handoff p50 | handoff p99 | share max/min | errors | exclusion |\n",
    );
    out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");
    for run in runs {
        let s = &run.stats;
        let q = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                "-".to_owned()
            } else {
                format_us(h.value_at_quantile(q))
            }
        };
        let (fewest, most) = run.shares();
        // Open loop: latency from each cycle's intended start.
        let latency = if run.setup.rate.is_some() {
            &s.response
        } else {
            &s.latency
        };
        out.push_str(&format!(
            "| {} | {:.0} | {:.2} | {} | {} | {} | {} | {:.2} | {} | {} |\n",
            run.strategy(),
            run.throughput(),
            run.key_utilisation(),
            q(latency, 0.5),
            q(latency, 0.99),
            q(&s.handoff, 0.5),
            q(&s.handoff, 0.99),
            most as f64 / fewest.max(1) as f64,
            s.error_count(),
            if run.exclusion_ok() { "ok" } else { "VIOLATED" },
        ));
    }
    out
}

fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p99.9": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

fn latency_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "-".into();
    }
    let us = |q: f64| format_us(h.value_at_quantile(q));
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n = {})",
        us(0.50),
        us(0.90),
        us(0.99),
        us(0.999),
        format_us(h.max()),
        h.len()
    )
}

fn format_us(us: u64) -> String {
    if us < 10_000 {
        format!("{us}µs")
    } else {
        format!("{:.1}ms", us as f64 / 1000.0)
    }
}
