//! Redis Sentinel, with real sentinels (`redis-server --sentinel`) the
//! fixture starts: the master found by name, failovers (forced, and a
//! killed master) followed under load, and what a failover can lose.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use redlease::{Error, LockManager};
use support::sentinel::{Deployment, MASTER};

const TTL: Duration = Duration::from_secs(10);

/// One deployment at a time: each is five processes and failovers are
/// timed; in parallel on two cores the sentinels' own pings run late and
/// they abort failovers.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn manager(deployment: &Deployment) -> LockManager {
    support::builder()
        .sentinel(format!("redis://{MASTER}"), deployment.sentinel_urls())
        .io_timeout(Duration::from_millis(200))
        .build()
        .expect("build through the sentinels")
}

#[test]
fn the_master_is_found_by_name() {
    let _serial = serial();
    let deployment = Deployment::start(1, 3, 5_000);
    let locks = manager(&deployment);
    let lock = locks.try_lock("found", TTL).unwrap().expect("free");
    assert!(
        deployment.servers[0].get(b"found").is_some(),
        "on the master"
    );
    assert!(lock.release().unwrap());
    assert!(format!("{locks:?}").contains("sentinel:mymaster"));

    // The first sentinel down: the others answer.
    let mut deployment = deployment;
    drop(deployment.sentinels.remove(0));
    let locks = manager(&deployment);
    drop(locks.try_lock("second", TTL).unwrap().expect("free"));
}

#[test]
fn unknown_master_or_no_sentinel_is_a_clear_error() {
    let _serial = serial();
    let deployment = Deployment::start(0, 1, 5_000);
    let err = support::builder()
        .sentinel("redis://nosuchmaster", deployment.sentinel_urls())
        .build()
        .expect_err("no such master");
    let msg = err.to_string();
    assert!(
        msg.contains("no sentinel knows a master named \"nosuchmaster\""),
        "{msg}"
    );
    assert!(msg.contains("sentinel:nosuchmaster"), "{msg}");

    let port = support::free_port();
    let err = support::builder()
        .sentinel(
            format!("redis://{MASTER}"),
            [format!("redis://127.0.0.1:{port}")],
        )
        .build()
        .expect_err("no sentinel listening");
    assert!(err.is_retryable(), "{err:?}");

    let invalid = |b: redlease::LockManagerBuilder| match b.connect_lazily(true).build() {
        Err(Error::InvalidArgument(msg)) => msg.to_string(),
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    let none: [&str; 0] = [];
    assert!(invalid(support::builder().sentinel("redis://m", none)).contains("no sentinel given"));
    assert!(
        invalid(support::builder().sentinel("unix:///tmp/x.sock", ["redis://127.0.0.1:1"]))
            .contains("redis://[user:password@]NAME")
    );
}

/// A sentinel manager dropped leaves nothing behind: its watch thread, its
/// subscription and its pooled connections end with it.
#[test]
fn a_dropped_sentinel_manager_leaks_no_thread_or_descriptor() {
    let _serial = serial();
    let deployment = Deployment::start(1, 3, 5_000);
    // Warm up what the process keeps anyway (the first build's one-offs).
    drop(manager(&deployment));
    thread::sleep(Duration::from_millis(1_500));
    let before = support::resources();
    for _ in 0..5 {
        let locks = manager(&deployment);
        drop(locks.try_lock("leak", TTL).unwrap().expect("free"));
        drop(locks);
    }
    support::eventually(
        Duration::from_secs(5),
        "threads and descriptors back",
        || support::resources() == before,
    );
}

/// Sentinels that never complete a TCP handshake: asking them all takes
/// one connect timeout, not one each.
#[test]
fn hung_sentinels_cost_one_connect_timeout() {
    let _serial = serial();
    let hung: Vec<_> = (0..3).map(|_| support::connect_hangs()).collect();
    let urls: Vec<String> = hung
        .iter()
        .map(|(_, _, port)| format!("redis://127.0.0.1:{port}"))
        .collect();
    let started = Instant::now();
    let err = support::builder()
        .sentinel(format!("redis://{MASTER}"), urls)
        .connect_timeout(Duration::from_millis(300))
        .build()
        .expect_err("no sentinel answers");
    let took = started.elapsed();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(
        took < Duration::from_millis(700),
        "took {took:?} for 3 sentinels"
    );
    drop(hung);
}

/// Cycles on `threads` threads until stopped; the longest time no thread
/// completed a cycle, and the failed cycles.
struct Load {
    stop: Arc<AtomicBool>,
    last_ok_ns: Arc<AtomicU64>,
    longest_gap_ns: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    cycles: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
    start: Instant,
}

impl Load {
    fn start(locks: &LockManager, threads: usize) -> Load {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let last_ok_ns = Arc::new(AtomicU64::new(0));
        let longest_gap_ns = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let cycles = Arc::new(AtomicU64::new(0));
        let handles = (0..threads)
            .map(|t| {
                let (locks, stop) = (locks.clone(), Arc::clone(&stop));
                let (last_ok_ns, longest_gap_ns) =
                    (Arc::clone(&last_ok_ns), Arc::clone(&longest_gap_ns));
                let (errors, cycles) = (Arc::clone(&errors), Arc::clone(&cycles));
                thread::spawn(move || {
                    let key = format!("load-{t}");
                    // Bounded: at most 60 s of load whatever the caller does.
                    while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60)
                    {
                        let ok = match locks.try_lock(&key, TTL) {
                            Ok(Some(lock)) => lock.release().is_ok(),
                            Ok(None) => true, // our previous key, released on a lost master
                            Err(_) => false,
                        };
                        if ok {
                            let now = start.elapsed().as_nanos() as u64;
                            let before = last_ok_ns.swap(now, Ordering::Relaxed);
                            longest_gap_ns.fetch_max(now.saturating_sub(before), Ordering::Relaxed);
                            cycles.fetch_add(1, Ordering::Relaxed);
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                            thread::sleep(Duration::from_millis(5));
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            last_ok_ns,
            longest_gap_ns,
            errors,
            cycles,
            threads: handles,
            start,
        }
    }

    /// Stops the load; (longest gap, failed cycles, cycles).
    fn stop(self) -> (Duration, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("load thread");
        }
        let _ = (self.last_ok_ns, self.start);
        (
            Duration::from_nanos(self.longest_gap_ns.load(Ordering::Relaxed)),
            self.errors.load(Ordering::Relaxed),
            self.cycles.load(Ordering::Relaxed),
        )
    }
}

/// A forced failover (`SENTINEL FAILOVER`): the old master is demoted and
/// answers `READONLY`; locks go on at the new master almost at once.
#[test]
fn a_forced_failover_is_followed_under_load() {
    let _serial = serial();
    let deployment = Deployment::start(1, 3, 5_000);
    let locks = manager(&deployment);
    let load = Load::start(&locks, 4);
    thread::sleep(Duration::from_millis(500));
    deployment.fail_over_to(1, Duration::from_secs(30));
    // New locks land on the new master soon after the sentinels name it
    // (the old one still takes writes until they reconfigure it).
    let promoted = Instant::now();
    support::eventually(Duration::from_secs(5), "locks on the new master", || {
        let lock = locks.try_lock("moved", TTL).ok().flatten();
        let there = deployment.servers[1].get(b"moved").is_some();
        drop(lock);
        there
    });
    let followed = promoted.elapsed();
    thread::sleep(Duration::from_millis(500));
    let (gap, errors, cycles) = load.stop();
    println!(
        "forced failover: new locks on the new master {followed:?} after the promotion was visible"
    );
    assert!(followed < Duration::from_secs(2), "{followed:?}");
    println!(
        "forced failover: longest gap {gap:?}, {errors} failed cycles of {}",
        cycles + errors
    );
    assert!(cycles > 0);
    assert!(
        gap < Duration::from_secs(3),
        "locks stopped for {gap:?} during the failover"
    );
    // New locks are on the new master.
    drop(locks.try_lock("after", TTL).unwrap().expect("free"));
    let lock = locks.try_lock("after-2", TTL).unwrap().expect("free");
    assert!(deployment.servers[1].get(b"after-2").is_some());
    drop(lock);
}

/// The master killed: the sentinels notice (down-after 1 s), elect a
/// leader and promote the replica; locks resume soon after.
#[test]
fn a_killed_master_is_followed_under_load() {
    let _serial = serial();
    let mut deployment = Deployment::start(1, 3, 1_000);
    let locks = manager(&deployment);
    let load = Load::start(&locks, 4);
    thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    deployment.servers[0].kill();
    support::eventually(Duration::from_secs(20), "the replica promoted", || {
        deployment.master() == Some(1)
    });
    let promoted = killed.elapsed();
    support::eventually(Duration::from_secs(10), "locks resume", || {
        matches!(locks.try_lock("probe", TTL), Ok(Some(_)))
    });
    let resumed = killed.elapsed();
    let (_, errors, cycles) = load.stop();
    println!(
        "killed master: promoted after {promoted:?}, locks resumed after {resumed:?} \
         ({:?} after the promotion); {errors} failed cycles of {}",
        resumed.saturating_sub(promoted),
        cycles + errors
    );
    assert!(
        resumed.saturating_sub(promoted) < Duration::from_millis(1_500),
        "locks resumed {:?} after the promotion",
        resumed.saturating_sub(promoted)
    );
}

/// What a failover can lose, measured, and what `wait_for_replicas`
/// keeps: a lock the master granted but its replica never received is gone
/// once the replica is promoted, and another client gets it while the first
/// still holds it. With `WAIT`, no lock is granted that the replica did not
/// acknowledge, and one it did survives the failover.
#[test]
fn a_failover_double_grant_without_wait_and_none_with_it() {
    let _serial = serial();
    let build = |d: &Deployment, wait: bool| {
        let mut builder = support::builder()
            .sentinel(format!("redis://{MASTER}"), d.sentinel_urls())
            .io_timeout(Duration::from_millis(200));
        if wait {
            builder = builder.wait_for_replicas(1, Duration::from_millis(100));
        }
        builder.build().expect("build")
    };
    // The master dies and the replica is promoted; then a second client
    // asks for the key: `Some` is a grant.
    let fail_over_and_ask = |d: &mut Deployment, resume_replica: bool| {
        d.servers[0].kill();
        if resume_replica {
            d.servers[1].signal("CONT");
        }
        support::eventually(Duration::from_secs(20), "the replica promoted", || {
            d.master() == Some(1)
        });
        let other = manager(d);
        let mut second = None;
        support::eventually(
            Duration::from_secs(10),
            "the second client answered",
            || match other.try_lock("contested", TTL) {
                Ok(lock) => {
                    second = Some(lock);
                    true
                }
                Err(_) => false,
            },
        );
        second.expect("answered")
    };

    // Replication cut: the replica stopped, and the master's end of the
    // link closed (else what the kernel already took would still reach the
    // replica when it resumes).
    let cut_replication = |d: &Deployment| {
        d.servers[1].signal("STOP");
        let killed = d.servers[0]
            .raw(b"CLIENT KILL TYPE replica", Duration::from_secs(1))
            .unwrap_or_default();
        assert!(
            killed.starts_with(":1"),
            "CLIENT KILL TYPE replica: {killed}"
        );
    };

    // Without WAIT, replication cut: granted, lost in the failover,
    // granted again.
    let mut d = Deployment::start(1, 3, 1_000);
    let first = build(&d, false);
    cut_replication(&d);
    let a = first
        .try_lock("contested", TTL)
        .unwrap()
        .expect("granted by the master");
    let second = fail_over_and_ask(&mut d, true);
    let left = a.remaining();
    assert!(
        second.is_some() && left > Duration::ZERO,
        "expected the double grant of asynchronous replication"
    );
    println!("without WAIT: a second holder while the first had {left:?} left");
    drop(d);

    // With WAIT, replication cut: refused (and nothing left behind).
    let d = Deployment::start(1, 3, 1_000);
    let first = build(&d, true);
    cut_replication(&d);
    let err = first
        .try_lock("contested", TTL)
        .expect_err("the replica did not acknowledge");
    assert!(
        matches!(err, Error::NotReplicated { acked: 0, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(d.servers[0].get(b"contested").is_none(), "released");
    println!("with WAIT, replication cut: {err}");
    d.servers[1].signal("CONT");
    drop(d);

    // With WAIT, replication running: granted, and it survives the
    // failover: the second client is refused while the first holds it.
    let mut d = Deployment::start(1, 3, 1_000);
    let first = build(&d, true);
    let a = first.try_lock("contested", TTL).unwrap().expect("granted");
    let second = fail_over_and_ask(&mut d, false);
    assert!(
        second.is_none(),
        "the promoted replica lost an acknowledged lock"
    );
    println!(
        "with WAIT: no second holder; the first had {:?} left",
        a.remaining()
    );
}

/// With the restart quarantine on (the default), a failover is a restart:
/// the node now leads to another server, which may lack locks the old one
/// granted, so it grants nothing for the maximum lease.
#[test]
fn a_failover_quarantines_the_node() {
    let _serial = serial();
    let deployment = Deployment::start(1, 3, 5_000);
    let max_ttl = Duration::from_secs(2);
    let locks = redlease::LockManager::builder()
        .sentinel(format!("redis://{MASTER}"), deployment.sentinel_urls())
        .max_ttl(max_ttl)
        .build()
        .expect("build");
    // The servers are new: wait out their own start quarantine first.
    support::eventually(
        Duration::from_secs(10),
        "out of the start quarantine",
        || matches!(locks.try_lock("before", TTL.min(max_ttl)), Ok(Some(_))),
    );
    deployment.fail_over_to(1, Duration::from_secs(30));
    support::eventually(Duration::from_secs(10), "the switch seen", || {
        matches!(
            locks.try_lock("after", max_ttl),
            Err(Error::Quarantined { .. })
        )
    });
    let quarantined = Instant::now();
    support::eventually(Duration::from_secs(10), "granting again", || {
        matches!(locks.try_lock("after", max_ttl), Ok(Some(_)))
    });
    let waited = quarantined.elapsed();
    println!("failover quarantine: granted again after {waited:?}");
    assert!(
        waited >= max_ttl - Duration::from_millis(500),
        "quarantined only {waited:?}"
    );
}

/// `wait_for_replicas` on plain nodes: a master with a replica grants, one
/// without refuses (leaving nothing); bad settings are refused; a quorum
/// counts the nodes whose replicas acknowledged.
#[test]
fn wait_for_replicas_on_plain_nodes() {
    let _serial = serial();
    use support::RedisServer;
    let master = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    support::eventually(Duration::from_secs(10), "replica in sync", || {
        replica
            .raw(b"INFO replication", Duration::from_secs(1))
            .is_some_and(|info| info.contains("master_link_status:up"))
    });
    let lonely = RedisServer::start();
    let waiting = |urls: &[String]| {
        support::builder()
            .nodes(urls.iter().map(String::as_str))
            .wait_for_replicas(1, Duration::from_millis(50))
            .build()
            .expect("build")
    };
    let locks = waiting(&[master.url()]);
    let lock = locks.try_lock("replicated", TTL).unwrap().expect("granted");
    assert!(
        replica.get(b"replicated").is_some(),
        "on the replica before granted"
    );
    assert!(lock.release().unwrap());

    let locks = waiting(&[lonely.url()]);
    let err = locks.try_lock("alone", TTL).expect_err("no replica");
    assert!(
        matches!(
            err,
            Error::NotReplicated {
                acked: 0,
                needed: 1,
                replicas: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(lonely.get(b"alone").is_none(), "released");
    // `lock` retries it like any passing failure, within its wait bound.
    let err = locks
        .try_lock_for("alone", TTL, Duration::from_millis(200))
        .expect_err("never replicated");
    assert!(matches!(err, Error::NotReplicated { .. }), "{err:?}");

    // A quorum of 3 where only one node has a replica: 1 of 2 needed.
    let others = [RedisServer::start(), RedisServer::start()];
    let locks = waiting(&[master.url(), others[0].url(), others[1].url()]);
    let err = locks
        .try_lock("quorum", TTL)
        .expect_err("one node replicated");
    assert!(
        matches!(
            err,
            Error::NotReplicated {
                acked: 1,
                needed: 2,
                ..
            }
        ),
        "{err:?}"
    );
    for server in [&master, &others[0], &others[1]] {
        assert!(server.get(b"quorum").is_none(), "released everywhere");
    }

    // A user that may not WAIT is refused at build, naming it.
    let url = master.acl_user("nowait", &["~*", "&*", "+@all", "-wait"]);
    let err = support::builder()
        .node(url.as_str())
        .wait_for_replicas(1, Duration::from_millis(50))
        .build()
        .expect_err("WAIT denied");
    assert!(matches!(err, Error::Permission { .. }), "{err:?}");
    assert!(err.to_string().contains("WAIT"), "{err}");
    // Denied after the build: not replicated, and not worth retrying.
    let url = master.acl_user("latewait", &["~*", "&*", "+@all"]);
    let locks = waiting(&[url]);
    master.acl_user("latewait", &["-wait"]);
    let err = locks.try_lock("denied", TTL).expect_err("WAIT refused");
    assert!(
        matches!(err, Error::NotReplicated { cause: Some(_), .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable(), "{err:?}");

    for (replicas, wait) in [
        (0, Duration::from_millis(10)),
        (1, Duration::ZERO),
        (1, Duration::from_nanos(1)),
        (1, Duration::MAX),
    ] {
        match support::builder()
            .node(master.url())
            .wait_for_replicas(replicas, wait)
            .build()
        {
            Err(Error::InvalidArgument(msg)) => assert!(msg.contains("wait_for_replicas"), "{msg}"),
            other => panic!("({replicas}, {wait:?}): expected InvalidArgument, got {other:?}"),
        }
    }
}
