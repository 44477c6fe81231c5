//! Node health: a sick minority costs the healthy majority nothing, and a
//! node that answers well is trusted again at once.
//!
//! `REDLEASE_HEALTH_SECS` sets how long each hung-minority run lasts
//! (default 2 s, as in CI).

mod support;

use std::thread;
use std::time::{Duration, Instant};

use redlease::{Error, LockManager};
use support::RedisServer;
use support::fake::{Answer, FakeRedis};
use support::proxy::{FaultProxy, Mode};

const TTL: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// Well under the connect timeout that the defect made callers wait for,
/// well over any scheduling stall of a loaded machine.
const SLOWEST: Duration = Duration::from_millis(250);

fn run_length() -> Duration {
    let secs = std::env::var("REDLEASE_HEALTH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    Duration::from_secs(secs)
}

/// Defect 2: one node of three accepts TCP but never answers the handshake,
/// or never completes the TCP handshake at all. Every acquire and release
/// on the other two succeeds, none waits for the sick node's connect, and
/// `Drop` never blocks for it, for as long as the run lasts (the sick
/// node's reconnect backoff runs out many times); also with a pool of one
/// connection, which the background reconnect occupies.
#[test]
fn hung_minority_at_connect_costs_the_majority_nothing() {
    let servers = RedisServer::start_many(2);
    let silent = FakeRedis::start(|_, _| Answer::Silence);
    let (_listener, _filler, hung_port) = support::connect_hangs();
    let hung_url = format!("redis://127.0.0.1:{hung_port}");
    for (what, third, pool) in [
        ("never answers", silent.url(), 8),
        ("never completes the TCP handshake", hung_url.clone(), 8),
        ("never answers, pool of 1", silent.url(), 1),
        ("never completes the TCP handshake, pool of 1", hung_url, 1),
    ] {
        let locks = support::manager_with(
            servers.iter().map(RedisServer::url).chain([third]),
            support::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .io_timeout(IO_TIMEOUT)
                .pool_size(pool),
        );
        let deadline = Instant::now() + run_length();
        let (mut cycles, mut failures) = (0u32, Vec::new());
        let (mut slowest_acquire, mut slowest_drop) = (Duration::ZERO, Duration::ZERO);
        while Instant::now() < deadline {
            cycles += 1;
            let started = Instant::now();
            match locks.try_lock("k", TTL) {
                Ok(Some(lock)) => {
                    slowest_acquire = slowest_acquire.max(started.elapsed());
                    let dropping = Instant::now();
                    drop(lock);
                    slowest_drop = slowest_drop.max(dropping.elapsed());
                }
                other => failures.push(format!("{other:?}")),
            }
        }
        println!(
            "{what}: {cycles} cycles, slowest acquire {slowest_acquire:?}, slowest drop {slowest_drop:?}"
        );
        assert!(
            failures.is_empty(),
            "{what}: {} of {cycles} cycles failed, first: {}",
            failures.len(),
            failures[0]
        );
        assert!(cycles > 100, "{what}: only {cycles} cycles");
        assert!(
            slowest_acquire < SLOWEST,
            "{what}: an acquire took {slowest_acquire:?}"
        );
        assert!(
            slowest_drop < SLOWEST,
            "{what}: a drop took {slowest_drop:?}"
        );
        // Every key was released: nothing is left on the healthy nodes.
        for server in &servers {
            assert_eq!(server.get(b"k"), None);
        }
    }
}

/// How long after a failure the node keeps refusing work (`NodeDown`):
/// polled, since the backoff's length is private.
fn down_window(locks: &LockManager) -> Duration {
    let started = Instant::now();
    loop {
        match locks.try_lock("k", TTL) {
            Ok(Some(lock)) => {
                assert!(lock.release().expect("release"));
                return started.elapsed();
            }
            Err(Error::NodeDown { .. }) => thread::sleep(Duration::from_millis(1)),
            other => panic!("expected NodeDown or a lock, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the node never came back"
        );
    }
}

/// Defect 3: isolated timeouts separated by runs of successes each cost one
/// short backoff: a good reply makes the node healthy again, so the
/// backoff does not keep doubling (50, 100, 200, 400 ms …) across blips.
#[test]
fn health_recovers_on_success() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port);
    let locks = support::manager_with(
        [proxy.url()],
        support::builder()
            .io_timeout(Duration::from_millis(50))
            .pool_size(8)
            .preconnect(8),
    );
    support::warm(&locks);
    let mut windows = Vec::new();
    for _ in 0..6 {
        for _ in 0..50 {
            let lock = locks.try_lock("k", TTL).expect("try_lock").expect("free");
            assert!(lock.release().expect("release"));
        }
        proxy.set(Mode::Blackhole);
        let blip = locks.try_lock("k", TTL);
        assert!(matches!(blip, Err(Error::Timeout { .. })), "{blip:?}");
        proxy.set(Mode::Pass);
        windows.push(down_window(&locks));
    }
    println!("down after each blip: {windows:?}");
    assert!(
        windows.iter().all(|w| *w < Duration::from_millis(150)),
        "the backoff grew across isolated blips: {windows:?}"
    );
}
