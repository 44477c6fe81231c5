//! The primitives under faults: holders killed with SIGKILL, a node
//! restarted without its data (with and without the restart quarantine),
//! and a randomized run of permits, read and write locks and multi-key
//! locks under random proxy faults, paused and restarted servers, checked
//! by the oracles' invariants:
//!
//! - never more than k valid permits at once; no writer beside a reader or
//!   another writer; no key of a multi-key lock with two holders;
//! - only retryable errors escape (or `LockLost` from a renewal);
//! - once the faults stop, every primitive can be taken again (nothing
//!   leaked, no turn or permit stuck);
//!
//! and the validity invariant (`remaining()` never above what a majority of
//! the servers still holds) after every step of random acquisitions,
//! renewals and releases under random faults, on 1 node and over a 3-node
//! quorum.
//!
//! `REDLEASE_PRIMITIVES_SECS` sets the randomized runs' length (default 6,
//! as in CI); `REDLEASE_PRIMITIVES_SEED` replays one.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use redlease::{Error, LockManager, RetryPolicy};
use support::RedisServer;
use support::oracle;
use support::proxy::{FaultProxy, Mode};

const CHILD_ENV: &str = "REDLEASE_PERMIT_CHILD";
const CHILD_TTL: Duration = Duration::from_millis(1500);

/// Holders killed with SIGKILL while they hold permits: their permits come
/// back when their TTL runs out (not before: that would be a k+1st
/// holder), and a waiting `acquire` gets them then, without polling.
#[test]
fn killed_holders_permits_are_reclaimed_at_their_ttl() {
    let server = RedisServer::start();
    let exe = std::env::current_exe().expect("test binary");
    let mut children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "permit_holder_child", "--ignored", "--nocapture"])
                .env(CHILD_ENV, server.url())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn a holder")
        })
        .collect();
    // Each child says when it holds its permit; the first permit held is
    // the first that may come back.
    let mut held_at = Vec::new();
    for child in &mut children {
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        while !line.contains("HELD") {
            line.clear();
            assert!(
                out.read_line(&mut line).expect("read") > 0,
                "a child ended early"
            );
        }
        held_at.push(Instant::now());
    }
    let first_held = *held_at.iter().min().expect("children");
    let last_held = *held_at.iter().max().expect("children");
    let locks = support::manager([server.url()]);
    let sem = locks.semaphore("killed", 3).expect("semaphore");
    let mine = sem
        .try_acquire(CHILD_TTL)
        .expect("try")
        .expect("the third permit");
    assert!(
        sem.try_acquire(CHILD_TTL).expect("try").is_none(),
        "a 4th holder"
    );
    for child in &mut children {
        child.kill().expect("SIGKILL a holder");
        child.wait().expect("reap");
    }
    let killed_at = Instant::now();
    let a = sem.acquire(CHILD_TTL).expect("a dead holder's permit");
    let first = first_held.elapsed();
    let b = sem
        .acquire(CHILD_TTL)
        .expect("the other dead holder's permit");
    println!(
        "dead holders' permits back {first:?} after the first HELD, both {:?} after the last, {:?} after the kill",
        last_held.elapsed(),
        killed_at.elapsed()
    );
    // Not before the first dead holder's TTL (the server's clock; 200 ms
    // for its HELD line to arrive), and the second not long after its own
    // (woken when the first permit held expires: its attempt learned when).
    assert!(first + Duration::from_millis(200) >= CHILD_TTL, "{first:?}");
    assert!(
        last_held.elapsed() < CHILD_TTL + Duration::from_millis(500),
        "{:?}",
        last_held.elapsed()
    );
    drop((mine, a, b));
}

/// One holder of `killed_holders_permits_are_reclaimed_at_their_ttl`: takes
/// a permit, says so, and waits to be killed.
#[test]
#[ignore = "run by killed_holders_permits_are_reclaimed_at_their_ttl in child processes"]
fn permit_holder_child() {
    let url = std::env::var(CHILD_ENV).expect("run only by the parent test");
    let locks = support::manager([url]);
    let sem = locks.semaphore("killed", 3).expect("semaphore");
    let permit = sem.acquire(CHILD_TTL).expect("a permit");
    println!("HELD");
    thread::sleep(Duration::from_secs(30));
    drop(permit);
}

/// A node restarted without its data forgets the permits it held: without
/// the restart quarantine it hands them out again while their holders
/// still count on them (k + 1 valid permits); with it, it grants nothing
/// until the longest TTL has passed.
#[test]
fn a_restarted_node_cannot_grant_a_k_plus_first_permit() {
    let max_ttl = Duration::from_secs(2);
    for quarantine in [false, true] {
        let mut server = RedisServer::start();
        let locks = support::manager_with(
            [server.url()],
            LockManager::builder()
                .restart_quarantine(quarantine)
                .max_ttl(max_ttl)
                .connect_timeout(Duration::from_millis(500)),
        );
        if quarantine {
            // A fresh server is itself quarantined: wait until it is not.
            let sem = locks.semaphore("restart", 2).expect("semaphore");
            support::eventually(max_ttl + Duration::from_secs(4), "the first grant", || {
                sem.try_acquire(max_ttl).is_ok_and(|p| p.is_some())
            });
        }
        let sem = locks.semaphore("restart", 2).expect("semaphore");
        let held: Vec<_> = (0..2)
            .map(|_| {
                sem.try_acquire(Duration::from_millis(1900))
                    .expect("try")
                    .expect("free")
            })
            .collect();
        server.restart();
        // The first call after the restart may meet the dead connection.
        let third = (0..20).find_map(|_| match sem.try_acquire(Duration::from_millis(1900)) {
            Ok(permit) => Some(Ok(permit)),
            Err(e @ Error::Quarantined { .. }) => Some(Err(e)),
            Err(_) => {
                thread::sleep(Duration::from_millis(20));
                None
            }
        });
        let valid = held.iter().filter(|p| !p.is_lost()).count();
        match (quarantine, third) {
            (false, Some(Ok(Some(_)))) => {
                assert_eq!(valid, 2, "the test needs both first permits still valid");
                println!("without the quarantine: {} valid permits of 2", valid + 1);
            }
            (true, Some(Err(e))) => assert!(e.is_retryable(), "{e}"),
            (q, other) => panic!("quarantine {q}: {other:?}"),
        }
    }
}

/// What the randomized run found.
#[derive(Debug, Default)]
struct Seen {
    permit_sections: u64,
    read_sections: u64,
    write_sections: u64,
    set_sections: u64,
    /// Sections whose guard's validity ran out before they ended: not
    /// protected, so not judged.
    late: u64,
    errors: std::collections::BTreeMap<String, u64>,
}

/// The run's seed and length.
fn seeded() -> (u64, Duration) {
    let seed = std::env::var("REDLEASE_PRIMITIVES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let secs = std::env::var("REDLEASE_PRIMITIVES_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    println!("seed {seed} (REDLEASE_PRIMITIVES_SEED={seed} replays it), {secs} s");
    (seed, Duration::from_secs(secs))
}

/// An interval of a section: the primitive's "key" (0: permits, 1: the
/// read-write lock, 10 + i: key i of the sets), begin, end, and whether it
/// wrote (write locks).
type Section = (u8, Instant, Instant, bool);

/// Permits (k = 2), read and write locks, and sets of 2 of 4 keys, taken by
/// 6 threads through a fault proxy, on one node with the restart
/// quarantine, while a chaos thread sets random proxy modes, pauses the
/// server and restarts it. Judged by the invariants in the header.
#[test]
fn random_faults_keep_every_primitive_within_its_bounds() {
    let (seed, length) = seeded();
    let max_ttl = Duration::from_millis(800);
    let mut server = RedisServer::start();
    let proxy = FaultProxy::start(server.port);
    let books = RedisServer::start();
    let locks = support::manager_with(
        [proxy.url()],
        LockManager::builder()
            .max_ttl(max_ttl)
            .io_timeout(Duration::from_millis(100))
            .connect_timeout(Duration::from_millis(200))
            .pool_size(8)
            .retry(
                RetryPolicy::exponential(Duration::from_millis(2))
                    .max_delay(Duration::from_millis(50))
                    .max_wait(Duration::from_millis(600)),
            ),
    );
    // The fresh server's own quarantine passes first.
    let sem = locks.semaphore("chaos:permits", 2).expect("semaphore");
    support::eventually(max_ttl + Duration::from_secs(4), "the first grant", || {
        sem.try_acquire(max_ttl).is_ok_and(|p| p.is_some())
    });
    let rw = locks.rwlock("chaos:rw").expect("rwlock");
    let keys: Vec<String> = (0..4).map(|i| format!("chaos:set:{i}")).collect();
    let stop = AtomicBool::new(false);
    let seen = Mutex::new(Seen::default());
    let sections: Mutex<Vec<Section>> = Mutex::new(Vec::new());
    let deadline = Instant::now() + length;
    let server_port = server.port;
    thread::scope(|s| {
        for t in 0..6u64 {
            let (locks, sem, rw, keys, books, stop, seen, sections) =
                (&locks, &sem, &rw, &keys, &books, &stop, &seen, &sections);
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(seed ^ (t + 1));
                let mut con = books.client();
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let ttl = Duration::from_millis(rng.u64(200..=800));
                    let which = rng.u8(0..4);
                    let section = run_one(which, ttl, &mut rng, locks, sem, rw, keys, &mut con);
                    match section {
                        Ok(Some((mut ivs, late))) => {
                            let mut seen = seen.lock().expect("seen");
                            match which {
                                0 => seen.permit_sections += 1,
                                1 => seen.read_sections += 1,
                                2 => seen.write_sections += 1,
                                _ => seen.set_sections += 1,
                            }
                            if late {
                                seen.late += 1;
                            } else {
                                sections.lock().expect("sections").append(&mut ivs);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => errors.push(e),
                    }
                }
                let mut seen = seen.lock().expect("seen");
                for e in errors {
                    assert!(
                        e.is_retryable() || matches!(e, Error::LockLost),
                        "a final error escaped: {e:?}"
                    );
                    let kind = format!("{e:?}");
                    let kind = kind
                        .split([' ', '(', '{'])
                        .next()
                        .unwrap_or("?")
                        .to_string();
                    *seen.errors.entry(kind).or_default() += 1;
                }
            });
        }
        // Chaos, until the deadline.
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut restarts = 0;
        while Instant::now() < deadline {
            let mode = match rng.u32(0..100) {
                0..60 => Mode::Pass,
                60..75 => Mode::Delay(Duration::from_millis(rng.u64(1..=30))),
                75..83 => Mode::DropReplies,
                83..90 => Mode::Blackhole,
                90..95 => Mode::CutOnNextReply,
                _ => Mode::Refuse,
            };
            proxy.set(mode);
            match rng.u32(0..100) {
                0..8 => {
                    server.signal("STOP");
                    thread::sleep(Duration::from_millis(rng.u64(20..300)));
                    server.signal("CONT");
                }
                // At most one restart per 3 s: each costs the quarantine.
                8..11 if restarts < (length.as_secs() / 3).max(1) => {
                    restarts += 1;
                    server.restart();
                    assert_eq!(server.port, server_port);
                }
                _ => thread::sleep(Duration::from_millis(rng.u64(20..200))),
            }
        }
        proxy.set(Mode::Pass);
        stop.store(true, Ordering::Relaxed);
        println!("chaos over: {restarts} restart(s)");
    });
    let seen = seen.into_inner().expect("seen");
    let sections = sections.into_inner().expect("sections");
    println!("{seen:?}, {} judged sections", sections.len());
    judge(&sections);
    assert!(
        seen.permit_sections + seen.read_sections + seen.write_sections + seen.set_sections > 20,
        "too little got through to judge: {seen:?}"
    );
    // Liveness: with the faults gone, each primitive can be taken whole
    // (within the quarantine and the TTLs of holders lost to faults).
    let patient = RetryPolicy::exponential(Duration::from_millis(5))
        .max_delay(Duration::from_millis(100))
        .max_wait(max_ttl * 2 + Duration::from_secs(5));
    let both = (
        sem.acquire_with(max_ttl, &patient).expect("permit 1"),
        sem.acquire_with(max_ttl, &patient).expect("permit 2"),
    );
    let write = rw.write_with(max_ttl, &patient).expect("write");
    let all = locks
        .lock_all_with(&keys, max_ttl, &patient)
        .expect("every key of the sets");
    drop((both, write, all));
}

/// One random step: take a primitive (waiting a little), maybe extend it,
/// run a short section in the oracle's books, release. Returns the
/// section's intervals and whether its guard ran out before it ended.
#[allow(clippy::too_many_arguments)]
fn run_one(
    which: u8,
    ttl: Duration,
    rng: &mut fastrand::Rng,
    locks: &LockManager,
    sem: &redlease::Semaphore,
    rw: &redlease::RwLock,
    keys: &[String],
    con: &mut redis::Connection,
) -> Result<Option<(Vec<Section>, bool)>, Error> {
    // Mostly short sections; some long enough to straddle a restart.
    let hold = if rng.u32(0..5) == 0 {
        Duration::from_millis(rng.u64(30..=150))
    } else {
        Duration::from_millis(rng.u64(1..=4))
    };
    let extend = rng.bool();
    // The guard's remaining(), extend() and release(), type-erased.
    let section =
        |remaining: &dyn Fn() -> Duration, ids: &[u8], write: bool, con: &mut redis::Connection| {
            let begin = Instant::now();
            for &id in ids {
                let name = format!("oracle:{id}");
                match id {
                    1 => {
                        let _ = oracle::enter_rw(con, &name, write);
                    }
                    _ => {
                        let _ = oracle::enter_k(con, &name, 2);
                    }
                }
            }
            thread::sleep(hold);
            for &id in ids {
                let name = format!("oracle:{id}");
                if id == 1 {
                    oracle::leave_rw(con, &name, write);
                } else {
                    oracle::leave(con, &name);
                }
            }
            let end = Instant::now();
            let late = remaining().is_zero();
            let ivs = ids.iter().map(|&id| (id, begin, end, write)).collect();
            (ivs, late)
        };
    macro_rules! hold {
        ($guard:expr, $ids:expr, $write:expr) => {{
            let Some(mut guard) = $guard else {
                return Ok(None);
            };
            if extend {
                match guard.extend(ttl) {
                    Ok(()) => {}
                    Err(e) => {
                        drop(guard);
                        return Err(e);
                    }
                }
            }
            // Only a section well inside validity is run (and judged).
            if guard.remaining() < hold + Duration::from_millis(100) {
                drop(guard);
                return Ok(None);
            }
            let out = section(&|| guard.remaining(), $ids, $write, con);
            let _ = guard.release()?;
            Ok(Some(out))
        }};
    }
    let wait = Duration::from_millis(rng.u64(10..300));
    match which {
        0 => hold!(sem.try_acquire_for(ttl, wait)?, &[0], false),
        1 => hold!(rw.try_read_for(ttl, wait)?, &[1], false),
        2 => hold!(rw.try_write_for(ttl, wait)?, &[1], true),
        _ => {
            let mut picked: Vec<usize> = (0..keys.len()).collect();
            rng.shuffle(&mut picked);
            picked.truncate(2);
            let names: Vec<&str> = picked.iter().map(|&i| keys[i].as_str()).collect();
            let ids: Vec<u8> = picked.iter().map(|&i| 10 + i as u8).collect();
            hold!(locks.try_lock_all_for(&names, ttl, wait)?, &ids, false)
        }
    }
}

/// The invariants over the judged sections: at most 2 permits at once, no
/// write beside any other section of the read-write lock, at most one
/// holder of each set key.
fn judge(sections: &[Section]) {
    let permits: Vec<(u8, Instant, Instant)> = sections
        .iter()
        .filter(|s| s.0 == 0)
        .map(|s| (s.0, s.1, s.2))
        .collect();
    assert!(
        oracle::most_at_once(&permits) <= 2,
        "more than 2 valid permits at once"
    );
    for w in sections.iter().filter(|s| s.0 == 1 && s.3) {
        let beside = sections
            .iter()
            .filter(|o| o.0 == 1 && *o != w && o.1 < w.2 && w.1 < o.2)
            .count();
        assert_eq!(beside, 0, "a valid write lock overlapped another holder");
    }
    let mut keyed: Vec<(u8, Instant, Instant)> = sections
        .iter()
        .filter(|s| s.0 >= 10)
        .map(|s| (s.0, s.1, s.2))
        .collect();
    assert_eq!(
        oracle::overlaps(&mut keyed),
        0,
        "a set key with two valid holders"
    );
}

/// How long the servers still hold a guard's place, per server, for a
/// token whose first 4 digits are `ARGV[1]`: a string key holding it (its
/// PTTL), or a sorted-set member (its expiry less the server's time); -1
/// when it holds nothing of ours.
const HELD_FOR: &str = r#"local t = redis.call("time")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kind = redis.call("type", KEYS[1])["ok"]
if kind == "string" then
  if string.sub(redis.call("get", KEYS[1]), 1, 4) == ARGV[1] then return redis.call("pttl", KEYS[1]) end
elseif kind == "zset" then
  local m = redis.call("zrange", KEYS[1], 0, -1, "WITHSCORES")
  for i = 1, #m, 2 do
    if string.sub(m[i], 1, 4) == ARGV[1] then return math.max(0, tonumber(m[i + 1]) - now) end
  end
end
return -1"#;

/// A guard of any primitive, for the validity test.
enum Guard {
    Permit(redlease::Permit),
    Read(redlease::ReadLock),
    Write(redlease::WriteLock),
    Set(redlease::MultiLock),
}

impl Guard {
    fn remaining(&self) -> Duration {
        match self {
            Guard::Permit(g) => g.remaining(),
            Guard::Read(g) => g.remaining(),
            Guard::Write(g) => g.remaining(),
            Guard::Set(g) => g.remaining(),
        }
    }

    fn extend(&mut self, ttl: Duration) -> Result<(), Error> {
        match self {
            Guard::Permit(g) => g.extend(ttl),
            Guard::Read(g) => g.extend(ttl),
            Guard::Write(g) => g.extend(ttl),
            Guard::Set(g) => g.extend(ttl),
        }
    }

    fn release(self) -> Result<bool, Error> {
        match self {
            Guard::Permit(g) => g.release(),
            Guard::Read(g) => g.release(),
            Guard::Write(g) => g.release(),
            Guard::Set(g) => g.release(),
        }
    }

    /// The token's first 4 digits, from the guard's `Debug`.
    fn prefix(&self) -> String {
        let shown = match self {
            Guard::Permit(g) => format!("{g:?}"),
            Guard::Read(g) => format!("{g:?}"),
            Guard::Write(g) => format!("{g:?}"),
            Guard::Set(g) => format!("{g:?}"),
        };
        let at = shown.find("Token(").expect("a token in Debug") + 6;
        shown[at..at + 4].to_string()
    }

    /// The keys that hold its place.
    fn keys(&self) -> Vec<&'static str> {
        match self {
            Guard::Permit(_) => vec!["v:sem"],
            Guard::Read(_) => vec!["{v:rw}:redlease:readers"],
            Guard::Write(_) => vec!["v:rw"],
            Guard::Set(_) => vec!["v:a", "v:b", "v:c"],
        }
    }
}

/// The validity invariant for the primitives, as `tests/validity.rs` checks
/// it for locks: after every step of random acquisitions, renewals and
/// releases under random proxy faults (delays, lost replies, blackholes,
/// refusals) on 1 node (every primitive) and 3 (the read-write lock and
/// the multi-key lock), `remaining()` never exceeds what a majority of the
/// servers still holds for the guard. `REDLEASE_PRIMITIVES_SECS` /
/// `REDLEASE_PRIMITIVES_SEED` as for the randomized run.
#[test]
fn remaining_never_exceeds_what_a_majority_holds() {
    let (seed, length) = seeded();
    let mut rng = fastrand::Rng::with_seed(seed);
    for n in [1usize, 3] {
        let servers = RedisServer::start_many(n);
        let proxies: Vec<FaultProxy> = servers.iter().map(|s| FaultProxy::start(s.port)).collect();
        let locks = support::manager_with(
            proxies.iter().map(FaultProxy::url),
            support::builder()
                .io_timeout(Duration::from_millis(50))
                .connect_timeout(Duration::from_millis(200))
                .pool_size(2),
        );
        let sem = (n == 1).then(|| locks.semaphore("v:sem", 2).expect("semaphore"));
        let rw = locks.rwlock("v:rw").expect("rwlock");
        let needed = n / 2 + 1;
        let mut guard: Option<Guard> = None;
        let (mut steps, mut checked, mut failures) = (0u32, 0u32, 0u32);
        let deadline = Instant::now() + length / 2;
        while Instant::now() < deadline {
            steps += 1;
            for proxy in &proxies {
                proxy.set(match rng.u32(0..100) {
                    0..65 => Mode::Pass,
                    65..80 => Mode::Delay(Duration::from_millis(rng.u64(1..=20))),
                    80..90 => Mode::DropReplies,
                    90..96 => Mode::Blackhole,
                    _ => Mode::Refuse,
                });
            }
            let ttl = Duration::from_millis(rng.u64(100..=1500));
            let outcome = match guard.take() {
                None => {
                    let got = match rng.u32(0..4) {
                        0 if sem.is_some() => sem
                            .as_ref()
                            .expect("semaphore")
                            .try_acquire(ttl)
                            .map(|g| g.map(Guard::Permit)),
                        0 | 1 => rw.try_read(ttl).map(|g| g.map(Guard::Read)),
                        2 => rw.try_write(ttl).map(|g| g.map(Guard::Write)),
                        _ => locks
                            .try_lock_all(&["v:a", "v:b", "v:c"], ttl)
                            .map(|g| g.map(Guard::Set)),
                    };
                    got.map(|g| guard = g)
                }
                Some(mut held) => {
                    if rng.bool() {
                        let r = held.extend(ttl);
                        guard = Some(held);
                        r
                    } else {
                        held.release().map(|_| ())
                    }
                }
            };
            for proxy in &proxies {
                proxy.set(Mode::Pass);
            }
            // Let replies still on their way land, and a node that failed
            // come back (its reconnect runs in the background).
            let pause = if outcome.is_err() { 60 } else { 5 };
            thread::sleep(Duration::from_millis(rng.u64(0..=pause)));
            if let Err(e) = outcome {
                failures += 1;
                assert!(e.is_retryable() || matches!(e, Error::LockLost), "{e:?}");
            }
            let Some(held) = &guard else { continue };
            // Read `remaining()` first: what the servers hold can only be
            // read afterwards, and it only shrinks meanwhile.
            let remaining = held.remaining();
            let started = Instant::now();
            let prefix = held.prefix();
            let mut per_server: Vec<i64> = servers
                .iter()
                .map(|server| {
                    held.keys()
                        .iter()
                        .map(|key| {
                            let left: i64 = redis::cmd("EVAL")
                                .arg(HELD_FOR)
                                .arg(1)
                                .arg(*key)
                                .arg(&prefix)
                                .query(&mut server.client())
                                .expect("EVAL");
                            left
                        })
                        .min()
                        .unwrap_or(-1)
                })
                .collect();
            per_server.sort_unstable_by(|a, b| b.cmp(a));
            let held_ms = per_server[needed - 1].max(0) as u64;
            let slack = started.elapsed() + Duration::from_millis(2);
            assert!(
                remaining <= Duration::from_millis(held_ms) + slack,
                "{n} node(s), step {steps}: remaining() is {remaining:?}, a majority holds {held_ms} ms (seed {seed})"
            );
            checked += 1;
            if remaining.is_zero() {
                let _ = guard.take().map(Guard::release);
            }
        }
        println!("{n} node(s): {steps} steps, {checked} checked, {failures} failed calls");
        assert!(checked > 10, "{n} node(s): too few checks");
        if let Some(held) = guard.take() {
            let _ = held.release();
        }
    }
}
