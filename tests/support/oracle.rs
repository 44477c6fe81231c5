//! The mutual-exclusion oracle. Holders of a lock run a critical section
//! that breaks visibly unless the lock really excludes everyone else:
//!
//! - a deliberately non-atomic read–sleep–write on a counter (two holders at
//!   once lose an increment: "lost updates");
//! - an in-flight gauge (`INCR` on entry, `DECR` on exit; entering at more
//!   than 1 is an overlap, seen by the server, so it works across processes);
//! - each section's (start, end) by this process's monotonic clock (any two
//!   that intersect are an overlap).
//!
//! The bookkeeping lives on a `redis-server` of its own, so faults injected
//! into the lock's nodes never touch it.

use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::RedisServer;

/// What the oracle saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Critical sections run.
    pub sections: u64,
    /// Increments lost to concurrent holders.
    pub lost_updates: u64,
    /// Sections that started while another was in flight (server-side gauge).
    pub gauge_overlaps: u64,
    /// Pairs of sections whose intervals intersect (monotonic clock).
    pub interval_overlaps: u64,
    /// Attempts that did not get the lock.
    pub gave_up: u64,
}

impl Verdict {
    /// Mutual exclusion held.
    pub fn clean(&self) -> bool {
        self.lost_updates == 0 && self.gauge_overlaps == 0 && self.interval_overlaps == 0
    }
}

/// An oracle with its own server; `name` keeps several apart.
pub struct Oracle {
    server: RedisServer,
    counter: String,
    gauge: String,
}

impl Default for Oracle {
    fn default() -> Self {
        Oracle::new("oracle")
    }
}

impl Oracle {
    /// Starts the oracle's own server.
    pub fn new(name: &str) -> Oracle {
        Oracle::on(RedisServer::start(), name)
    }

    /// An oracle keeping its books on `server`.
    pub fn on(server: RedisServer, name: &str) -> Oracle {
        Oracle {
            server,
            counter: format!("{name}:counter"),
            gauge: format!("{name}:in-flight"),
        }
    }

    /// The oracle server's URL (for child processes).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// One critical section: enter the gauge, read, hold, write, leave.
    /// Returns the interval and whether the gauge saw company.
    pub fn section(&self, con: &mut redis::Connection, hold: Duration) -> (Instant, Instant, bool) {
        section(con, &self.counter, &self.gauge, hold)
    }

    /// The counter's value now.
    pub fn count(&self) -> u64 {
        let n: Option<u64> = self.server.cmd(&[b"GET", self.counter.as_bytes()]);
        n.unwrap_or(0)
    }

    /// Runs `threads` threads, each trying `rounds` times to `acquire` and,
    /// when it gets a guard, running one critical section of `hold` before
    /// dropping it (which must release the lock).
    pub fn run<G>(
        &self,
        threads: usize,
        rounds: usize,
        hold: Duration,
        acquire: impl Fn(usize) -> Option<G> + Sync,
    ) -> Verdict {
        self.run_while(threads, hold, |round| round < rounds, acquire)
    }

    /// Like [`run`](Self::run), for `length` of time instead of a number of
    /// rounds.
    pub fn run_for<G>(
        &self,
        threads: usize,
        length: Duration,
        hold: Duration,
        acquire: impl Fn(usize) -> Option<G> + Sync,
    ) -> Verdict {
        let deadline = Instant::now() + length;
        self.run_while(threads, hold, |_| Instant::now() < deadline, acquire)
    }

    fn run_while<G>(
        &self,
        threads: usize,
        hold: Duration,
        go_on: impl Fn(usize) -> bool + Sync,
        acquire: impl Fn(usize) -> Option<G> + Sync,
    ) -> Verdict {
        let start = Barrier::new(threads);
        let intervals = Mutex::new(Vec::new());
        let verdict = Mutex::new(Verdict::default());
        let before = self.count();
        thread::scope(|s| {
            for t in 0..threads {
                let (start, intervals, verdict, acquire, go_on) =
                    (&start, &intervals, &verdict, &acquire, &go_on);
                s.spawn(move || {
                    let mut con = self.server.client();
                    start.wait();
                    let mut round = 0;
                    while go_on(round) {
                        round += 1;
                        let Some(guard) = acquire(t) else {
                            verdict.lock().expect("verdict").gave_up += 1;
                            continue;
                        };
                        let (begin, end, company) = self.section(&mut con, hold);
                        drop(guard);
                        intervals.lock().expect("intervals").push(((), begin, end));
                        let mut v = verdict.lock().expect("verdict");
                        v.sections += 1;
                        v.gauge_overlaps += u64::from(company);
                    }
                });
            }
        });
        let mut verdict = verdict.into_inner().expect("verdict");
        verdict.lost_updates = verdict.sections - (self.count() - before).min(verdict.sections);
        verdict.interval_overlaps = overlaps(&mut intervals.into_inner().expect("intervals"));
        verdict
    }
}

/// The critical section itself, usable from a child process too.
pub fn section(
    con: &mut redis::Connection,
    counter: &str,
    gauge: &str,
    hold: Duration,
) -> (Instant, Instant, bool) {
    let begin = Instant::now();
    let inside: i64 = redis::cmd("INCR")
        .arg(gauge)
        .query(con)
        .expect("INCR gauge");
    let value: Option<u64> = redis::cmd("GET")
        .arg(counter)
        .query(con)
        .expect("GET counter");
    if !hold.is_zero() {
        thread::sleep(hold);
    }
    let _: () = redis::cmd("SET")
        .arg(counter)
        .arg(value.unwrap_or(0) + 1)
        .query(con)
        .expect("SET counter");
    let _: i64 = redis::cmd("DECR")
        .arg(gauge)
        .query(con)
        .expect("DECR gauge");
    (begin, Instant::now(), inside > 1)
}

/// Critical sections, as `(key, begin, end)`, that began before an earlier
/// one on the same key had ended: zero means mutual exclusion held.
/// Touching intervals (one ends as the next begins) are fine. Sorts
/// `intervals` in place. Shared by the tests, the oracle and the workers
/// tool, so that all three judge overlaps the same way.
pub fn overlaps<K: Ord + Copy, T: Ord + Copy>(intervals: &mut [(K, T, T)]) -> u64 {
    intervals.sort_unstable();
    let mut overlaps = 0;
    let mut latest: Option<(K, T)> = None;
    for &(key, begin, end) in intervals.iter() {
        latest = match latest {
            Some((k, latest_end)) if k == key => {
                overlaps += u64::from(begin < latest_end);
                Some((key, latest_end.max(end)))
            }
            _ => Some((key, end)),
        };
    }
    overlaps
}

/// A deliberately broken lock, for showing that the oracle can fail: SET NX
/// with a tiny TTL and a plain `DEL` to release (no token check).
pub struct BrokenLock {
    con: redis::Connection,
    key: String,
}

impl BrokenLock {
    /// Takes `key` on `server` with a `ttl_ms` expiry, retrying every 100 µs
    /// up to `attempts` times.
    pub fn acquire(url: &str, key: &str, ttl_ms: u64, attempts: usize) -> Option<BrokenLock> {
        let mut con = redis::Client::open(url).ok()?.get_connection().ok()?;
        for _ in 0..attempts {
            let set: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg("x")
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query(&mut con)
                .ok()?;
            if set.is_some() {
                return Some(BrokenLock {
                    con,
                    key: key.to_string(),
                });
            }
            thread::sleep(Duration::from_micros(100));
        }
        None
    }
}

impl Drop for BrokenLock {
    fn drop(&mut self) {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&self.key).query(&mut self.con);
    }
}

/// Enters a section of `name` that admits `k` holders at once (a
/// semaphore's): `INCR` of its gauge, which reports how many were inside
/// with this one. `name:max` keeps the highest count seen. Returns whether
/// more than `k` were inside. Leave with [`leave`].
pub fn enter_k(con: &mut redis::Connection, name: &str, k: i64) -> bool {
    const ENTER: &str = r#"local n = redis.call("incr", KEYS[1])
if n > tonumber(redis.call("get", KEYS[2]) or "0") then redis.call("set", KEYS[2], n) end
return n"#;
    let inside: i64 = redis::cmd("EVAL")
        .arg(ENTER)
        .arg(2)
        .arg(format!("{name}:in"))
        .arg(format!("{name}:max"))
        .query(con)
        .expect("enter");
    inside > k
}

/// Leaves a section entered by [`enter_k`].
pub fn leave(con: &mut redis::Connection, name: &str) {
    let _: i64 = redis::cmd("DECR")
        .arg(format!("{name}:in"))
        .query(con)
        .expect("leave");
}

/// The most holders [`enter_k`] saw inside `name` at once.
pub fn most_inside(con: &mut redis::Connection, name: &str) -> i64 {
    let max: Option<i64> = redis::cmd("GET")
        .arg(format!("{name}:max"))
        .query(con)
        .expect("GET max");
    max.unwrap_or(0)
}

/// Enters a read-write section of `name`, as a writer or a reader, in one
/// step on the server; returns whether it clashed: a writer with anyone
/// inside, a reader with a writer inside. Any overlap shows at the later
/// entry. Leave with [`leave_rw`].
pub fn enter_rw(con: &mut redis::Connection, name: &str, write: bool) -> bool {
    const ENTER: &str = r#"local mine = redis.call("incr", KEYS[1])
local other = tonumber(redis.call("get", KEYS[2]) or "0")
if ARGV[1] == "w" then return (mine > 1 or other > 0) and 1 or 0 end
return other > 0 and 1 or 0"#;
    let (mine, other) = rw_keys(name, write);
    let clash: i64 = redis::cmd("EVAL")
        .arg(ENTER)
        .arg(2)
        .arg(mine)
        .arg(other)
        .arg(if write { "w" } else { "r" })
        .query(con)
        .expect("enter rw");
    clash == 1
}

/// Leaves a section entered by [`enter_rw`].
pub fn leave_rw(con: &mut redis::Connection, name: &str, write: bool) {
    let _: i64 = redis::cmd("DECR")
        .arg(rw_keys(name, write).0)
        .query(con)
        .expect("leave rw");
}

fn rw_keys(name: &str, write: bool) -> (String, String) {
    let (w, r) = (format!("{name}:writers"), format!("{name}:readers"));
    if write { (w, r) } else { (r, w) }
}

/// The most intervals, as `(key, begin, end)`, open at one instant on any
/// one key (touching intervals do not count as open together): at most
/// `k` for a semaphore of `k` permits.
pub fn most_at_once<K: Ord + Copy, T: Ord + Copy>(intervals: &[(K, T, T)]) -> usize {
    // Ends sort before beginnings at the same instant (false < true).
    let mut events: Vec<(K, T, bool)> = intervals
        .iter()
        .flat_map(|&(k, b, e)| [(k, b, true), (k, e, false)])
        .collect();
    events.sort_unstable();
    let (mut most, mut open, mut key) = (0, 0usize, None);
    for (k, _, begins) in events {
        if key != Some(k) {
            key = Some(k);
            open = 0;
        }
        if begins {
            open += 1;
            most = most.max(open);
        } else {
            open = open.saturating_sub(1);
        }
    }
    most
}
