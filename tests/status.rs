//! `LockManager::status()`: what an operator's health endpoint prints.

mod support;

use std::time::Duration;

use redlease::LockManager;
use support::RedisServer;

const TTL: Duration = Duration::from_secs(5);

#[test]
fn status_tells_up_down_errors_and_round_trips() {
    let mut servers = RedisServer::start_many(3);
    let locks = support::manager(servers.iter().map(RedisServer::url));
    let status = locks.status();
    assert!(status.healthy(), "{status}");
    assert_eq!(status.quorum, 2);
    for (node, server) in status.nodes.iter().zip(&servers) {
        assert_eq!(node.name, format!("127.0.0.1:{}", server.port));
        assert!(node.up && node.can_grant(), "{status}");
        assert!(
            node.round_trip
                .is_some_and(|rtt| rtt < Duration::from_secs(1)),
            "{status}"
        );
        assert!(
            node.connections >= 1 && node.idle <= node.connections,
            "{status}"
        );
        assert!(node.last_error.is_none(), "{status}");
        assert!(node.quarantined.is_none());
    }

    // One node killed: the next lock fails there, and status says so.
    servers[1].kill();
    let lock = locks
        .try_lock("status", TTL)
        .unwrap()
        .expect("2 of 3 grant");
    drop(lock);
    let status = locks.status();
    let text = status.to_string();
    let down = &status.nodes[1];
    assert!(!down.up && !down.can_grant(), "{text}");
    assert!(
        down.round_trip.is_none(),
        "a down node is not pinged: {text}"
    );
    let (error, ago) = down.last_error.clone().expect("its failure");
    assert!(!error.is_empty() && ago < Duration::from_secs(5), "{text}");
    assert!(status.healthy(), "2 of 3 still grant: {text}");
    assert!(text.contains("DOWN") && text.contains("healthy"), "{text}");
    println!("{text}");

    // A second one: no quorum left, and the text says so first.
    servers[2].kill();
    let _ = locks.try_lock("status", TTL);
    let status = locks.status();
    assert!(!status.healthy(), "{status}");
    assert!(status.to_string().starts_with("UNHEALTHY"), "{status}");

    // Back up: status() alone (no lock call) reconnects it after its
    // backoff, as an application that stops locking while unhealthy would
    // rely on.
    servers[1].restart();
    support::eventually(Duration::from_secs(5), "node 1 back up", || {
        locks.status().nodes[1].up
    });
}

#[test]
fn status_shows_the_restart_quarantine() {
    let server = RedisServer::start();
    // A fresh server with the quarantine on: it grants nothing yet.
    let locks = LockManager::builder()
        .node(server.url())
        .max_ttl(Duration::from_secs(30))
        .build()
        .expect("build");
    let status = locks.status();
    let node = &status.nodes[0];
    assert!(node.up, "{status}");
    let left = node.quarantined.expect("a fresh server is quarantined");
    assert!(
        left > Duration::from_secs(20) && left <= Duration::from_secs(31),
        "{left:?}"
    );
    assert!(!node.can_grant() && !status.healthy(), "{status}");
    assert!(status.to_string().contains("quarantined"), "{status}");
}
