//! The restart quarantine: a server that started less than the manager's
//! maximum lease ago grants no lock, since it may have lost locks it held.
//! The scenario it exists for (a holder's node restarted without
//! persistence, a second client about to win a majority with it) is shown
//! to double-grant with the quarantine off, and not with it on.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use redlease::{Error, LockManager};
use support::RedisServer;
use support::proxy::{FaultProxy, Mode};

/// The maximum lease of the managers under test: every TTL here is below it.
const MAX_TTL: Duration = Duration::from_secs(2);

/// The defaults (quarantine on), with a short maximum lease.
fn quarantined() -> redlease::LockManagerBuilder {
    LockManager::builder().max_ttl(MAX_TTL)
}

/// Waits until `server` has been up for longer than the quarantine.
fn older_than_the_quarantine(server: &RedisServer) {
    support::eventually(MAX_TTL + Duration::from_secs(3), "the server aging", || {
        let info: String = server.cmd(&[b"INFO", b"server"]);
        info.lines()
            .find_map(|l| l.strip_prefix("uptime_in_seconds:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|up| Duration::from_secs(up) > MAX_TTL + Duration::from_secs(1))
    });
}

/// A server started just now grants nothing until the quarantine has
/// passed: `try_lock` fails with `Error::Quarantined`, retryable, whose
/// message says why and names the option; `lock` waits it out.
#[test]
fn a_fresh_server_grants_after_the_quarantine() {
    let server = RedisServer::start();
    let started = Instant::now();
    let locks = support::manager_with([server.url()], quarantined());
    let err = locks
        .try_lock("fresh", Duration::from_secs(1))
        .expect_err("quarantined");
    assert!(matches!(err, Error::Quarantined { .. }), "{err}");
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains("restart_quarantine") && text.contains("started recently"),
        "{text}"
    );
    // `lock` retries through it, and is granted once the maximum lease has
    // passed (plus up to two seconds: INFO gives whole seconds, and the
    // quarantine takes one off, since the figure can overstate by one).
    let lock = locks.lock("fresh", Duration::from_secs(1)).expect("lock");
    let waited = started.elapsed();
    assert!(
        waited >= MAX_TTL && waited <= MAX_TTL + Duration::from_millis(2500),
        "granted {waited:?} after the start, quarantine {MAX_TTL:?}"
    );
    assert!(lock.release().expect("release"));
    // With the quarantine off, a fresh server grants at once.
    let server = RedisServer::start();
    let off = support::manager_with([server.url()], quarantined().restart_quarantine(false));
    assert!(
        off.try_lock("fresh", Duration::from_secs(1))
            .expect("try_lock")
            .is_some()
    );
}

/// The scenario, on three nodes without persistence. A holds the
/// key on nodes 1 and 2 (node 3 was out of its reach); node 1 is killed
/// (SIGKILL) and restarted empty. B then asks: with the quarantine, node 1
/// grants nothing until the quarantine has passed, so B never holds the
/// key while A does; without it, B wins nodes 1 and 3 while A still holds
/// it — two holders.
#[test]
fn a_restarted_node_cannot_grant_a_second_holder() {
    let mut servers = RedisServer::start_many(3);
    for server in &servers {
        older_than_the_quarantine(server);
    }
    let proxy = FaultProxy::start(servers[2].port);
    let a_urls = [servers[0].url(), servers[1].url(), proxy.url()];
    let b_urls = |servers: &[RedisServer]| servers.iter().map(RedisServer::url).collect::<Vec<_>>();
    // TTLs within B's maximum lease, as the quarantine's contract asks.
    let ttl = Duration::from_millis(1500);

    for quarantine in [true, false] {
        let key = if quarantine { "guarded" } else { "unguarded" };
        let a = support::manager_with(
            a_urls.clone(),
            support::builder().io_timeout(Duration::from_millis(50)),
        );
        // Node 3 never sees A's request.
        proxy.set(Mode::Blackhole);
        let held = a
            .try_lock(key, ttl)
            .expect("A's try_lock")
            .expect("A wins nodes 1 and 2");
        proxy.set(Mode::Pass);
        assert_eq!(servers[2].get(key.as_bytes()), None, "node 3 must be free");
        servers[0].restart();
        let b = support::manager_with(
            b_urls(&servers),
            quarantined().restart_quarantine(quarantine),
        );
        let restarted = Instant::now();
        let mut double_grant = None;
        while !held.is_lost() {
            if let Ok(Some(theirs)) = b.try_lock(key, ttl) {
                if !held.is_lost() {
                    double_grant = Some(held.remaining());
                }
                drop(theirs);
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        if quarantine {
            assert_eq!(double_grant, None, "B got the lock while A held it");
            // Once A's key is gone, nodes 2 and 3 grant B (node 1 may still
            // be in quarantine: the quorum size is what it was).
            support::eventually(MAX_TTL + Duration::from_secs(3), "B's grant", || {
                matches!(b.try_lock(key, ttl), Ok(Some(_)))
            });
            assert!(restarted.elapsed() >= ttl - Duration::from_millis(100));
        } else {
            let left = double_grant.expect("without the quarantine B should get in while A holds");
            println!("without the quarantine: B granted while A had {left:?} left");
        }
        drop(held);
    }
}

/// On a node in quarantine, release and extend still work (they grant
/// nothing), and a quorum of the other nodes still grants: the quorum size
/// is unchanged, not the nodes that may vote.
#[test]
fn quarantine_keeps_release_and_extend_and_the_rest_of_the_quorum() {
    let mut servers = RedisServer::start_many(3);
    for server in &servers {
        older_than_the_quarantine(server);
    }
    let urls = || servers.iter().map(RedisServer::url).collect::<Vec<_>>();
    let locks = support::manager_with(urls(), quarantined().io_timeout(Duration::from_millis(100)));
    let mut lock = locks
        .try_lock("both", Duration::from_millis(1500))
        .expect("try_lock")
        .expect("free");
    servers[0].restart();
    // The manager reconnects to node 1 (its old connections died) and
    // learns of the restart; extend goes on with nodes 2 and 3.
    support::eventually(Duration::from_secs(2), "the extend", || {
        lock.extend(Duration::from_millis(1500)).is_ok()
    });
    let fresh = locks
        .try_lock("other", Duration::from_millis(1500))
        .expect("two of three grant")
        .expect("free");
    assert_eq!(
        servers[0].get(b"other"),
        None,
        "the quarantined node took a SET"
    );
    assert!(servers[1].get(b"other").is_some() && servers[2].get(b"other").is_some());
    assert!(fresh.release().expect("release"));
    assert!(lock.release().expect("release"));
    // With a second node unreachable, the quarantined one is not counted.
    let mut servers = servers;
    servers[1].kill();
    let err = locks
        .try_lock("third", Duration::from_millis(1500))
        .expect_err("one vote of three");
    assert!(matches!(err, Error::NoQuorum { agreed: 1, .. }), "{err}");
}

/// A user not allowed `INFO` cannot be checked for restarts: with the
/// quarantine on, `build` says so (naming the way out); with it off, it
/// builds.
#[test]
fn a_user_without_info_needs_the_quarantine_off() {
    let server = RedisServer::start();
    let url = server.acl_user("noinfo", &["~*", "+@all", "-info"]);
    let err = LockManager::builder()
        .node(url.as_str())
        .build()
        .expect_err("no INFO, quarantine on");
    assert!(matches!(err, Error::Permission { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("INFO") && text.contains("restart_quarantine(false)"),
        "{text}"
    );
    let locks = support::builder()
        .node(url.as_str())
        .build()
        .expect("quarantine off");
    let lock = locks
        .try_lock("k", Duration::from_secs(1))
        .expect("try_lock")
        .expect("free");
    assert!(lock.release().expect("release"));
    // Built lazily with the quarantine on, such a server is quarantined in
    // full from when it was first seen silent, not again from every new
    // connection: 4 threads growing the pool still get locks after it.
    let lazy = quarantined()
        .node(url.as_str())
        .connect_lazily(true)
        .build()
        .expect("lazy");
    let err = lazy
        .try_lock("k", Duration::from_secs(1))
        .expect_err("quarantined");
    assert!(matches!(err, Error::Quarantined { .. }), "{err}");
    let first_seen = Instant::now();
    support::eventually(MAX_TTL + Duration::from_secs(2), "a grant", || {
        thread::scope(|s| {
            let tries: Vec<_> = (0..4)
                .map(|t| {
                    let lazy = &lazy;
                    s.spawn(move || {
                        matches!(
                            lazy.try_lock(format!("k{t}"), Duration::from_secs(1)),
                            Ok(Some(_))
                        )
                    })
                })
                .collect();
            tries.into_iter().all(|t| t.join().expect("try"))
        })
    });
    assert!(first_seen.elapsed() >= MAX_TTL - Duration::from_millis(50));
}

/// A manager whose pooled connection to a node died with the node's
/// restart learns of the restart from the reconnect inside the very
/// acquisition, and the restarted node does not vote in it.
#[test]
fn a_reconnect_inside_an_acquisition_sees_the_restart() {
    let mut servers = RedisServer::start_many(3);
    for server in &servers {
        older_than_the_quarantine(server);
    }
    let locks = support::manager_with(
        servers.iter().map(RedisServer::url),
        quarantined().pool_size(1),
    );
    support::warm(&locks);
    let _: () = servers[2].cmd(&[b"SET", b"x", b"someone", b"PX", b"60000"]);
    servers[0].restart();
    let attempt = locks.try_lock("x", Duration::from_secs(1));
    assert!(
        !matches!(attempt, Ok(Some(_))),
        "granted with the vote of a node restarted a moment ago"
    );
    assert_eq!(
        servers[0].get(b"x"),
        None,
        "the restarted node took the SET"
    );
}
