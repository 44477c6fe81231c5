//! The validity invariant: `remaining()` never exceeds the TTL that a
//! majority of the nodes could still hold for our token. If it did, the
//! servers could drop the key while the holder still believes it is safe,
//! and another client would be let in: two holders at once.
//!
//! Scenario tests for the ways an `extend` that fails can still reach the
//! nodes (delayed, dropped replies), and a randomized test that runs random
//! acquire / extend / release steps under random faults on random nodes
//! (the proxy's delays, lost replies, blackholes and refusals, and servers
//! paused with SIGSTOP), checking the invariant after every step, and that a
//! competing client is never let in while `remaining()` says we hold it.
//!
//! `REDLEASE_INVARIANT_STEPS` sets the number of random steps per node count
//! (default 100, as in CI); `REDLEASE_INVARIANT_SEED` replays a run.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use redlease::{Error, Lock, LockManager};
use support::RedisServer;
use support::proxy::{FaultProxy, Mode};

/// Compare-and-PTTL: the PTTL of `key` if it holds `token`, else -2.
const PTTL_IF_OURS: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pttl", KEYS[1]) else return -2 end"#;

/// Servers, each behind a fault proxy, and a manager that reaches them only
/// through the proxies.
struct Nodes {
    servers: Vec<RedisServer>,
    proxies: Vec<FaultProxy>,
    locks: LockManager,
    /// A second client straight to the servers, to try to get in.
    rival: LockManager,
}

impl Nodes {
    fn new(n: usize, io_timeout: Duration) -> Nodes {
        let servers = RedisServer::start_many(n);
        let proxies: Vec<FaultProxy> = servers.iter().map(|s| FaultProxy::start(s.port)).collect();
        let locks = support::manager_with(
            proxies.iter().map(FaultProxy::url),
            support::builder()
                .io_timeout(io_timeout)
                .connect_timeout(Duration::from_millis(200))
                .pool_size(2),
        );
        let rival = support::manager(servers.iter().map(RedisServer::url));
        Nodes {
            servers,
            proxies,
            locks,
            rival,
        }
    }

    fn needed(&self) -> usize {
        self.servers.len() / 2 + 1
    }

    /// A lock on `key` for `ttl`, which must be free, and its token.
    fn take(&self, key: &str, ttl: Duration) -> (Lock, Vec<u8>) {
        let lock = self
            .locks
            .try_lock(key, ttl)
            .expect("try_lock")
            .expect("free");
        let token = self.token_of(&lock, key.as_bytes());
        (lock, token)
    }

    /// Our token: the value a majority holds right after a grant.
    fn token_of(&self, lock: &Lock, key: &[u8]) -> Vec<u8> {
        let values: Vec<Option<Vec<u8>>> = self.servers.iter().map(|s| s.get(key)).collect();
        let token = values
            .iter()
            .flatten()
            .find(|v| values.iter().filter(|w| w.as_ref() == Some(*v)).count() >= self.needed())
            .unwrap_or_else(|| panic!("no majority value right after a grant: {values:?}"))
            .clone();
        let shown = format!("{lock:?}");
        let prefix = std::str::from_utf8(&token[..4]).expect("hex token");
        assert!(shown.contains(prefix), "{shown} vs {token:?}");
        token
    }

    /// The longest time a majority of nodes still holds `token`, from the
    /// moment this is called; and how long the reading took.
    fn majority_pttl(&self, key: &[u8], token: &[u8]) -> (Duration, Duration) {
        let started = Instant::now();
        let mut pttls: Vec<i64> = self
            .servers
            .iter()
            .map(|s| {
                let pttl: i64 = redis::cmd("EVAL")
                    .arg(PTTL_IF_OURS)
                    .arg(1)
                    .arg(key)
                    .arg(token)
                    .query(&mut s.client())
                    .expect("EVAL pttl");
                pttl
            })
            .collect();
        pttls.sort_unstable_by(|a, b| b.cmp(a));
        let held = pttls[self.needed() - 1].max(0) as u64;
        (Duration::from_millis(held), started.elapsed())
    }

    /// Checks the invariant for `lock` (whose token is `token`).
    fn check(&self, lock: &Lock, key: &[u8], token: &[u8], context: &str) {
        let remaining = lock.remaining();
        let (held, reading) = self.majority_pttl(key, token);
        // PTTL is in whole milliseconds on both ends: 2 ms of rounding.
        let slack = reading + Duration::from_millis(2);
        assert!(
            remaining <= held + slack,
            "{context}: remaining() is {remaining:?} but a majority holds the key for only {held:?}"
        );
    }

    /// The rival must not get in while `remaining()` says we hold the lock:
    /// if it does, its grant came after our validity ended.
    fn rival_stays_out(&self, lock: &Lock, key: &[u8], context: &str) {
        let ours_until = Instant::now() + lock.remaining();
        let theirs = self
            .rival
            .try_lock(key, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{context}: the rival failed: {e}"));
        if let Some(theirs) = theirs {
            let granted_by = Instant::now();
            assert!(
                ours_until <= granted_by + Duration::from_millis(1),
                "{context}: a rival got the lock {:?} before ours ran out",
                ours_until - granted_by
            );
            assert!(theirs.release().expect("rival release"));
        }
    }

    /// One step's random faults: a mode for every proxy, and maybe one
    /// server paused (SIGSTOP; the caller continues it). Returns the
    /// longest delay set, and the paused server.
    fn random_faults(&self, rng: &mut fastrand::Rng) -> (Duration, Option<usize>) {
        let mut longest_delay = Duration::ZERO;
        for proxy in &self.proxies {
            let mode = match rng.u32(0..100) {
                0..65 => Mode::Pass,
                65..80 => {
                    let d = Duration::from_millis(rng.u64(1..=20));
                    longest_delay = longest_delay.max(d);
                    Mode::Delay(d)
                }
                80..90 => Mode::DropReplies,
                90..97 => Mode::Blackhole,
                _ => Mode::Refuse,
            };
            proxy.set(mode);
        }
        let paused = (rng.u32(0..100) < 10).then(|| rng.usize(0..self.servers.len()));
        if let Some(i) = paused {
            self.servers[i].signal("STOP");
        }
        (longest_delay, paused)
    }

    fn all(&self, mode: Mode) {
        for proxy in &self.proxies {
            proxy.set(mode);
        }
    }
}

/// Defect 1a: one node behind a 10 ms delay; `extend(5ms)` cannot be
/// confirmed in time (`ValidityExpired`), yet the server applied it. The
/// guard must then report nothing left, and the rival may take the key.
#[test]
fn extend_validity_expired_leaves_nothing() {
    let nodes = Nodes::new(1, Duration::from_millis(200));
    let (mut lock, token) = nodes.take("k", Duration::from_secs(10));
    nodes.all(Mode::Delay(Duration::from_millis(10)));
    let result = lock.extend(Duration::from_millis(5));
    assert!(
        matches!(result, Err(Error::ValidityExpired { .. })),
        "{result:?}"
    );
    assert_eq!(lock.remaining(), Duration::ZERO);
    thread::sleep(Duration::from_millis(50));
    nodes.check(&lock, b"k", &token, "after a late extend");
    let theirs = nodes
        .rival
        .try_lock("k", Duration::from_secs(5))
        .expect("rival try_lock")
        .expect("the key expired by the servers' clocks");
    assert_eq!(lock.remaining(), Duration::ZERO);
    assert!(theirs.release().expect("release"));
}

/// A grant that comes back after the lock's validity is over is no lock:
/// `ValidityExpired`, and what it wrote is deleted at once, on one node
/// (whose round keeps its connection aside, out of the slot vector, for
/// such a clean-up) as on three. The servers hang in `DEBUG SLEEP` for
/// 1.5 s, longer than the validity of a 2 s TTL at drift factor 0.4
/// (1,198 ms), so the key would otherwise stay about 2 s past the call.
#[test]
fn a_grant_too_late_is_deleted_at_once() {
    for n in [1, 3] {
        let servers = RedisServer::start_many(n);
        let locks = support::manager_with(
            servers.iter().map(RedisServer::url),
            support::builder()
                .io_timeout(Duration::from_secs(4))
                .drift_factor(0.4),
        );
        support::warm(&locks);
        let sleepers: Vec<_> = servers
            .iter()
            .map(|server| {
                let sleeper = server.run_blocking(&["DEBUG", "SLEEP", "1.5"]);
                // Asleep: a PING unanswered for 100 ms (an idle server
                // answers in well under a millisecond).
                support::eventually(Duration::from_secs(1), "DEBUG SLEEP under way", || {
                    !server.answers_ping_within(Duration::from_millis(100))
                });
                sleeper
            })
            .collect();
        let result = locks.try_lock("k", Duration::from_secs(2));
        assert!(
            matches!(result, Err(Error::ValidityExpired { .. })),
            "{n} nodes: {result:?}"
        );
        for (i, server) in servers.iter().enumerate() {
            assert_eq!(server.get(b"k"), None, "{n} nodes: node {i} still holds it");
        }
        for sleeper in sleepers {
            sleeper.join().expect("sleeper");
        }
    }
}

/// Defect 1b: three nodes, replies dropped on two; `extend(200ms)` fails
/// with no quorum, but every node applied the shorter TTL. The guard's
/// validity must shrink to it.
#[test]
fn extend_without_quorum_still_shortens_validity() {
    let nodes = Nodes::new(3, Duration::from_millis(50));
    let (mut lock, token) = nodes.take("k", Duration::from_secs(10));
    nodes.proxies[0].set(Mode::DropReplies);
    nodes.proxies[1].set(Mode::DropReplies);
    let result = lock.extend(Duration::from_millis(200));
    assert!(
        matches!(result, Err(Error::NoQuorum { agreed: 1, .. })),
        "{result:?}"
    );
    assert!(
        lock.remaining() <= Duration::from_millis(200),
        "remaining {:?}",
        lock.remaining()
    );
    nodes.check(&lock, b"k", &token, "after an extend without quorum");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(lock.remaining(), Duration::ZERO);
    let theirs = nodes
        .rival
        .try_lock("k", Duration::from_secs(5))
        .expect("rival try_lock");
    assert!(theirs.is_some(), "the servers dropped the key by now");
}

/// A longer TTL that fails to reach a quorum keeps the previous validity
/// (the nodes that did not apply it still hold the old expiry); one that
/// reaches a quorum despite a minority's lost replies takes effect.
#[test]
fn longer_extend_keeps_or_grows_validity() {
    let nodes = Nodes::new(3, Duration::from_millis(50));
    let (mut lock, token) = nodes.take("k", Duration::from_secs(3));
    let before = lock.remaining();
    nodes.proxies[0].set(Mode::DropReplies);
    nodes.proxies[1].set(Mode::DropReplies);
    assert!(matches!(
        lock.extend(Duration::from_secs(30)),
        Err(Error::NoQuorum { .. })
    ));
    assert!(lock.remaining() <= before);
    assert!(lock.remaining() > Duration::from_secs(2));
    nodes.check(&lock, b"k", &token, "longer extend, no quorum");

    // Node 1 answers again once its reconnect backoff (private, well under
    // a second) has passed.
    nodes.proxies[1].set(Mode::Pass);
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Err(e) = lock.extend(Duration::from_secs(30)) {
        assert!(matches!(e, Error::NoQuorum { .. }), "{e:?}");
        assert!(Instant::now() < deadline, "2 of 3 never answered: {e}");
        thread::sleep(Duration::from_millis(5));
    }
    assert!(lock.remaining() > Duration::from_secs(29));
    nodes.check(&lock, b"k", &token, "longer extend, quorum");
    nodes.all(Mode::Pass);
    assert!(lock.release().expect("release"));
}

/// The run's seed (`REDLEASE_INVARIANT_SEED`, else random; printed so that
/// a failure can be replayed) and its generator.
fn seeded() -> (u64, fastrand::Rng) {
    let seed = std::env::var("REDLEASE_INVARIANT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("seed {seed} (REDLEASE_INVARIANT_SEED={seed} replays it)");
    (seed, fastrand::Rng::with_seed(seed))
}

fn steps() -> usize {
    std::env::var("REDLEASE_INVARIANT_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}

/// The invariant under random operations and random faults, on 1, 3 and 5
/// nodes.
#[test]
fn remaining_never_exceeds_what_a_majority_holds() {
    let (seed, mut rng) = seeded();
    for n in [1, 3, 5] {
        let nodes = Nodes::new(n, Duration::from_millis(40));
        let mut held: Option<(Lock, Vec<u8>)> = None;
        let key = b"inv";
        let (mut grants, mut failed_extends, mut checks) = (0, 0, 0);
        for step in 0..steps() {
            // This step's faults.
            let (longest_delay, paused) = nodes.random_faults(&mut rng);

            let ttl = Duration::from_millis(match rng.u32(0..3) {
                0 => rng.u64(5..40),
                1 => rng.u64(40..300),
                _ => rng.u64(300..1500),
            });
            let action;
            let mut granted = None;
            match held.take() {
                None => {
                    action = format!("try_lock({ttl:?})");
                    granted = nodes.locks.try_lock(key, ttl).ok().flatten();
                }
                Some((mut lock, token)) => match rng.u32(0..10) {
                    0..6 => {
                        let result = lock.extend(ttl);
                        failed_extends += usize::from(result.is_err());
                        action = format!("extend({ttl:?}) = {result:?}");
                        held = Some((lock, token));
                    }
                    6..8 => {
                        action = "release".into();
                        let _ = lock.release();
                    }
                    _ => {
                        action = "wait".into();
                        thread::sleep(Duration::from_millis(rng.u64(0..30)));
                        held = Some((lock, token));
                    }
                },
            }

            if let Some(i) = paused {
                nodes.servers[i].signal("CONT");
            }
            if let Some(lock) = granted {
                grants += 1;
                // A grant with almost no validity left may be gone from the
                // servers before its token can be read: let it go.
                if lock.remaining() > Duration::from_millis(30) {
                    let token = nodes.token_of(&lock, key);
                    held = Some((lock, token));
                }
            }
            // Let whatever the proxies still carry land before looking.
            thread::sleep(longest_delay + Duration::from_millis(5));
            if let Some((lock, token)) = &held {
                let context = format!("n = {n}, step {step}, seed {seed}, {action}");
                nodes.check(lock, key, token, &context);
                nodes.rival_stays_out(lock, key, &context);
                checks += 1;
            }
        }
        println!(
            "n = {n}: {grants} grants, {failed_extends} failed extends, invariant checked {checks} times"
        );
        assert!(grants > 0 && checks > 0, "n = {n}: the run tested nothing");
        nodes.all(Mode::Pass);
    }
}

/// The invariant for kept-alive locks, renewed by the keeper in the
/// background while random faults come and go: checked at random moments
/// (a renewal may be under way) while the proxies' faults are still on,
/// with a rival trying to get in each time.
/// Steps are counted by `REDLEASE_INVARIANT_STEPS` too.
#[test]
fn kept_alive_remaining_never_exceeds_what_a_majority_holds() {
    let (seed, mut rng) = seeded();
    for n in [1, 3] {
        let nodes = Nodes::new(n, Duration::from_millis(40));
        let mut held: Option<(Lock, Vec<u8>)> = None;
        let key = b"kept";
        let (mut grants, mut lost, mut checks) = (0, 0, 0);
        for step in 0..steps() {
            // This step's faults.
            let (longest_delay, paused) = nodes.random_faults(&mut rng);
            let mut granted = None;
            let action = match held.take() {
                None => {
                    let ttl = Duration::from_millis(rng.u64(60..600));
                    let lock = nodes.locks.try_lock(key, ttl).ok().flatten();
                    match lock.and_then(|l| l.keep_alive().ok()) {
                        Some(lock) => {
                            grants += 1;
                            granted = Some(lock);
                        }
                        // Held by what an earlier release left behind, or
                        // failed under the faults: give it time.
                        None => thread::sleep(Duration::from_millis(rng.u64(0..100))),
                    }
                    format!("try_lock({ttl:?}).keep_alive()")
                }
                Some((mut lock, token)) => match rng.u32(0..10) {
                    0..7 => {
                        let nap = Duration::from_millis(rng.u64(0..200));
                        thread::sleep(nap);
                        if lock.is_lost() {
                            lost += 1;
                            let _ = lock.release();
                        } else {
                            held = Some((lock, token));
                        }
                        format!("kept alive for {nap:?}")
                    }
                    7 => {
                        let ttl = Duration::from_millis(rng.u64(60..600));
                        let result = lock.extend(ttl);
                        let action = format!("extend({ttl:?}) = {result:?}");
                        held = Some((lock, token));
                        action
                    }
                    _ => {
                        let _ = lock.release();
                        "release".into()
                    }
                },
            };
            // The checks read the servers directly: a paused one would not
            // answer. The proxies' faults stay on while the keeper renews.
            if let Some(i) = paused {
                nodes.servers[i].signal("CONT");
            }
            // A grant with almost no validity left may be gone from the
            // servers before its token can be read: let it go.
            if let Some(lock) = granted.filter(|l| l.remaining() > Duration::from_millis(30)) {
                let token = nodes.token_of(&lock, key);
                held = Some((lock, token));
            }
            if let Some((lock, token)) = &held {
                let context = format!("n = {n}, step {step}, seed {seed}, {action}");
                nodes.check(lock, key, token, &context);
                nodes.rival_stays_out(lock, key, &context);
                checks += 1;
            }
            thread::sleep(longest_delay);
        }
        drop(held);
        println!(
            "n = {n}: {grants} kept-alive grants, {lost} lost, invariant checked {checks} times"
        );
        assert!(grants > 0 && checks > 0, "n = {n}: the run tested nothing");
        nodes.all(Mode::Pass);
    }
}
