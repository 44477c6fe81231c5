//! Scenario 11, a documented limit reproduced: failover to a replica that
//! had not yet received the lock's key grants the lock a second time.
//! Replication is asynchronous; no client library can prevent this. (The
//! README's "Correctness and its limits" says so, and what to do instead.)

mod support;

use std::thread;
use std::time::{Duration, Instant};

use support::RedisServer;
use support::proxy::{FaultProxy, Mode};

fn link_up(replica: &RedisServer) -> bool {
    let info: String = replica.cmd(&[b"INFO", b"replication"]);
    info.contains("master_link_status:up")
}

#[test]
fn failover_before_replication_double_grants() {
    // No 5 s wait before the first full sync.
    let primary = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
    let replica = RedisServer::start();
    // The replica follows the primary through a proxy, so replication can
    // be stalled like a slow network would.
    let link = FaultProxy::start(primary.port);
    let port = link.port.to_string();
    let _: () = replica.cmd(&[b"REPLICAOF", b"127.0.0.1", port.as_bytes()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !link_up(&replica) {
        assert!(Instant::now() < deadline, "replication did not start");
        thread::sleep(Duration::from_millis(20));
    }

    let ttl = Duration::from_secs(30);
    let clients_of_primary = support::builder()
        .node(primary.url())
        .build()
        .expect("build");
    link.set(Mode::Blackhole);
    let first = clients_of_primary
        .try_lock("orders:42", ttl)
        .expect("try_lock")
        .expect("free");
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        replica.get(b"orders:42"),
        None,
        "the key must not have replicated yet"
    );

    // Failover: the replica is promoted and clients move to it.
    let _: () = replica.cmd(&[b"REPLICAOF", b"NO", b"ONE"]);
    let clients_of_new_primary = support::builder()
        .node(replica.url())
        .build()
        .expect("build");
    let second = clients_of_new_primary
        .try_lock("orders:42", ttl)
        .expect("try_lock")
        .expect("the promoted replica grants the lock again");

    // Both believe they hold it: the limit, reproduced.
    assert!(first.remaining() > Duration::ZERO && second.remaining() > Duration::ZERO);
    assert!(first.release().expect("release"));
    assert!(second.release().expect("release"));
}
