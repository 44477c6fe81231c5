//! Transports: unix sockets and TLS, each against a real `redis-server`
//! (TLS with certificates made at test time): locks, waiting (the
//! subscriber over the same transport), and every TLS refusal as a clear,
//! non-retryable error.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use redlease::{Error, LockManager, LockManagerBuilder};
use support::RedisServer;
use support::tls::{Certs, ServerCert, TlsServer};

const TTL: Duration = Duration::from_secs(5);

/// Takes and releases a lock, checking the key on the server's plain port
/// (in database `db`).
fn lock_cycle(locks: &LockManager, server: &RedisServer, key: &str, db: u8) {
    let lock = locks
        .try_lock(key, TTL)
        .expect("try_lock")
        .expect("the key is free");
    let get = |server: &RedisServer| -> Option<Vec<u8>> {
        let mut client = server.client();
        redis::cmd("SELECT")
            .arg(db)
            .query::<()>(&mut client)
            .unwrap();
        redis::cmd("GET").arg(key).query(&mut client).unwrap()
    };
    assert!(get(server).is_some(), "the lock's key is on the server");
    assert!(lock.release().expect("release"), "we still held it");
    assert!(get(server).is_none(), "release deleted the key");
}

/// A waiter is woken by the release (the subscriber works over this
/// transport): far sooner than the holder's TTL would let it in.
fn waiter_is_woken(locks: &LockManager, key: &str) {
    let held = locks.try_lock(key, TTL).expect("try_lock").expect("free");
    let waiter = {
        let locks = locks.clone();
        let key = key.to_owned();
        thread::spawn(move || {
            let start = Instant::now();
            let lock = locks.lock(&key, TTL).expect("lock after the release");
            let waited = start.elapsed();
            drop(lock);
            waited
        })
    };
    // Let the waiter subscribe and park.
    thread::sleep(Duration::from_millis(300));
    drop(held);
    let waited = waiter.join().expect("waiter");
    assert!(
        waited < TTL / 2,
        "the waiter took {waited:?}: it was not woken by the release"
    );
}

#[test]
fn locks_over_a_unix_socket() {
    let server = RedisServer::start_unix();
    let locks = support::builder()
        .node(server.unix_url())
        .build()
        .expect("build over a unix socket");
    lock_cycle(&locks, &server, "unix-key", 0);
    waiter_is_woken(&locks, "unix-wait");

    // The database and the `unix://` spelling.
    let url = format!("unix://{}?db=3", server.socket_path().display());
    let locks = support::builder().node(url).build().expect("db 3");
    lock_cycle(&locks, &server, "unix-db-key", 3);
}

#[test]
fn a_unix_quorum_mixes_with_tcp() {
    let servers = [
        RedisServer::start_unix(),
        RedisServer::start_unix(),
        RedisServer::start(),
    ];
    let locks = support::builder()
        .node(servers[0].unix_url())
        .node(servers[1].unix_url())
        .node(servers[2].url())
        .build()
        .expect("build a mixed quorum");
    let lock = locks.try_lock("mixed", TTL).unwrap().expect("free");
    for server in &servers {
        assert!(server.get(b"mixed").is_some());
    }
    assert!(lock.release().unwrap());
    for server in &servers {
        assert!(server.get(b"mixed").is_none());
    }
}

#[test]
fn one_server_by_unix_socket_and_tcp_is_refused() {
    let server = RedisServer::start_unix();
    let err = support::builder()
        .node(server.unix_url())
        .node(server.url())
        .build()
        .expect_err("the same server twice");
    assert!(err.to_string().contains("duplicate node"), "{err}");
}

#[test]
fn a_missing_unix_socket_is_an_io_error_naming_it() {
    let err = support::builder()
        .node("redis+unix:///nonexistent/redlease.sock")
        .build()
        .expect_err("no such socket");
    let msg = err.to_string();
    assert!(msg.contains("unix:/nonexistent/redlease.sock"), "{msg}");
    assert!(err.is_retryable(), "the server may come: {err:?}");
}

/// A server that accepts nothing (its listen backlog full): the connect
/// fails within the connect timeout, it does not hang.
#[test]
fn a_unix_socket_that_never_accepts_times_out() {
    use socket2::{Domain, SockAddr, Socket, Type};
    let dir = std::env::temp_dir().join(format!("redlease-backlog-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("full.sock");
    let _ = std::fs::remove_file(&path);
    let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    listener.bind(&SockAddr::unix(&path).unwrap()).unwrap();
    listener.listen(0).unwrap();
    // Fill the backlog with connects nobody accepts.
    let mut fillers = Vec::new();
    for _ in 0..64 {
        let s = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let full = s.connect(&SockAddr::unix(&path).unwrap()).is_err();
        fillers.push(s);
        if full {
            break;
        }
    }
    let url = format!("redis+unix://{}", path.display());
    let started = Instant::now();
    let result = support::within(Duration::from_secs(10), move || {
        support::builder()
            .node(url)
            .connect_timeout(Duration::from_millis(300))
            .build()
            .map(drop)
    });
    let err = result.expect_err("nothing accepts");
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop((listener, fillers));
    let _ = std::fs::remove_dir_all(&dir);
}

fn tls_builder(certs: &Certs) -> LockManagerBuilder {
    support::builder().tls_ca_file(certs.ca())
}

#[test]
fn locks_over_tls() {
    let certs = Certs::make();
    let tls = TlsServer::start(&certs, ServerCert::Good, false);
    // By name and by IP address (the certificate carries both).
    for host in ["localhost", "127.0.0.1"] {
        let locks = tls_builder(&certs)
            .node(tls.url(host))
            .build()
            .unwrap_or_else(|e| panic!("build over tls to {host}: {e}"));
        lock_cycle(&locks, &tls.server, &format!("tls-key-{host}"), 0);
    }
    let locks = tls_builder(&certs)
        .node(format!("{}/2", tls.url("localhost")))
        .build()
        .expect("db 2");
    lock_cycle(&locks, &tls.server, "tls-db-key", 2);
    waiter_is_woken(&locks, "tls-wait");
    // A key far larger than rustls's 64 KiB send buffer.
    let big = tls_builder(&certs)
        .node(tls.url("localhost"))
        .max_key_len(1 << 20)
        .build()
        .expect("build");
    let key = "k".repeat(200_000);
    let lock = big
        .try_lock(&key, TTL)
        .expect("a 200 KB key over tls")
        .expect("free");
    assert!(lock.release().expect("release"));
    // Extend and fencing go through the same stream.
    let fenced = tls_builder(&certs)
        .node(tls.url("localhost"))
        .fencing(true)
        .build()
        .expect("fenced over tls");
    let mut lock = fenced.try_lock("tls-fenced", TTL).unwrap().expect("free");
    assert!(lock.fence().expect("fence") > 0);
    lock.extend(TTL).expect("extend over tls");
    assert!(lock.release().unwrap());
}

/// Builds against `tls` and returns the TLS error's text.
fn tls_refusal(builder: LockManagerBuilder) -> String {
    let started = Instant::now();
    match builder.build() {
        Err(err @ Error::Tls { .. }) => {
            assert!(!err.is_retryable(), "{err}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "refused only after {:?}",
                started.elapsed()
            );
            println!("refused: {err}");
            err.to_string()
        }
        Err(other) => panic!("expected a tls error, got {other:?}"),
        Ok(_) => panic!("expected a tls error, the manager was built"),
    }
}

#[test]
fn a_certificate_from_an_unknown_ca_is_refused() {
    let certs = Certs::make();
    let tls = TlsServer::start(&certs, ServerCert::UnknownCa, false);
    let msg = tls_refusal(tls_builder(&certs).node(tls.url("localhost")));
    assert!(msg.contains("UnknownIssuer"), "{msg}");
    assert!(
        msg.contains("tls_ca_file"),
        "the hint names the setting: {msg}"
    );
    assert!(
        msg.contains(&format!("localhost:{}", tls.tls_port)),
        "{msg}"
    );
    // The system's roots do not know our test CA either.
    let msg = tls_refusal(support::builder().node(tls.url("localhost")));
    assert!(msg.contains("UnknownIssuer"), "{msg}");
}

#[test]
fn an_expired_certificate_is_refused() {
    let certs = Certs::make();
    let tls = TlsServer::start(&certs, ServerCert::Expired, false);
    let msg = tls_refusal(tls_builder(&certs).node(tls.url("localhost")));
    assert!(msg.to_lowercase().contains("expired"), "{msg}");
}

#[test]
fn a_certificate_for_another_name_is_refused_unless_that_name_is_given() {
    let certs = Certs::make();
    let tls = TlsServer::start(&certs, ServerCert::OtherName, false);
    let msg = tls_refusal(tls_builder(&certs).node(tls.url("localhost")));
    assert!(msg.contains("not valid for"), "{msg}");
    assert!(msg.contains("tls_server_name"), "{msg}");
    let locks = tls_builder(&certs)
        .node(tls.url("127.0.0.1"))
        .tls_server_name("redis.other.example")
        .build()
        .expect("the certificate's own name");
    lock_cycle(&locks, &tls.server, "other-name", 0);
}

#[test]
fn a_server_that_wants_a_client_certificate() {
    let certs = Certs::make();
    let tls = TlsServer::start(&certs, ServerCert::Good, true);
    // None given: the server's alert arrives after the client's side of
    // the handshake (TLS 1.3), at the first read, and is reported as such.
    let msg = tls_refusal(tls_builder(&certs).node(tls.url("localhost")));
    assert!(msg.contains("tls_client_cert"), "{msg}");
    // One its CA did not sign.
    let msg = tls_refusal(
        tls_builder(&certs)
            .node(tls.url("localhost"))
            .tls_client_cert(
                certs.path("stranger-client.pem"),
                certs.path("stranger-client.key"),
            ),
    );
    assert!(msg.contains("refused our client certificate"), "{msg}");
    // The right one.
    let locks = tls_builder(&certs)
        .node(tls.url("localhost"))
        .tls_client_cert(certs.path("client.pem"), certs.path("client.key"))
        .build()
        .expect("with a client certificate");
    lock_cycle(&locks, &tls.server, "client-cert", 0);
    waiter_is_woken(&locks, "client-cert-wait");
}

#[test]
fn bad_tls_files_are_refused_at_build() {
    let certs = Certs::make();
    let url = "rediss://localhost:1";
    let invalid = |builder: LockManagerBuilder| match builder.connect_lazily(true).build() {
        Err(Error::InvalidArgument(msg)) => msg.to_string(),
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    // A key where the CA should be, a missing file, a certificate
    // without its key, and a key that is not the certificate's.
    let msg = invalid(
        support::builder()
            .node(url)
            .tls_ca_file(certs.path("client.key")),
    );
    assert!(msg.contains("client.key"), "{msg}");
    let msg = invalid(
        support::builder()
            .node(url)
            .tls_ca_file(certs.path("none.pem")),
    );
    assert!(msg.contains("none.pem"), "{msg}");
    let msg = invalid(
        tls_builder(&certs)
            .node(url)
            .tls_client_cert(certs.path("client.pem"), certs.path("client.pem")),
    );
    assert!(msg.contains("private key"), "{msg}");
    let msg = invalid(
        tls_builder(&certs)
            .node(url)
            .tls_client_cert(certs.path("client.pem"), certs.path("server.key")),
    );
    assert!(msg.contains("tls_client_cert"), "{msg}");
}

#[test]
fn tls_to_a_plain_port_and_plain_to_a_tls_port_fail_fast() {
    let certs = Certs::make();
    let tls = TlsServer::start(&certs, ServerCert::Good, false);
    let started = Instant::now();
    let err = tls_builder(&certs)
        .node(format!("rediss://localhost:{}", tls.server.port))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .expect_err("a plain port does not speak tls");
    // Redis reads the ClientHello as the start of an inline command and
    // waits for its end: the handshake times out (retryable: a slow server
    // looks the same).
    assert!(
        matches!(err, Error::Tls { .. } | Error::Timeout { .. }),
        "{err:?}"
    );
    let err = support::builder()
        .node(format!("redis://localhost:{}", tls.tls_port))
        .io_timeout(Duration::from_millis(300))
        .build()
        .expect_err("a tls port does not speak plain resp");
    assert!(
        matches!(err, Error::Io { .. } | Error::Timeout { .. }),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// Replies that arrive a byte at a time over TLS: a record in pieces. The
/// call still ends at its I/O timeout (each piece used to restart the
/// socket's whole timeout inside one read).
#[test]
fn a_tls_reply_in_pieces_keeps_the_io_timeout() {
    let certs = Certs::make();
    let tls = TlsServer::start(&certs, ServerCert::Good, false);
    let proxy = support::proxy::FaultProxy::start(tls.tls_port);
    let locks = tls_builder(&certs)
        .node(format!("rediss://localhost:{}", proxy.port))
        .io_timeout(Duration::from_millis(200))
        .build()
        .expect("build through the proxy");
    proxy.set(support::proxy::Mode::Trickle(Duration::from_millis(30)));
    let started = Instant::now();
    let result = locks.try_lock("trickled", TTL);
    let took = started.elapsed();
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    // A record of a few dozen bytes at 30 ms each takes over a second.
    assert!(took < Duration::from_millis(600), "took {took:?}");
}

/// A TLS node restarted under a manager: the pool reconnects (a new
/// handshake) and locks go on.
#[test]
fn tls_reconnects_after_a_restart() {
    let certs = Certs::make();
    let mut tls = TlsServer::start(&certs, ServerCert::Good, false);
    let locks = tls_builder(&certs)
        .node(tls.url("localhost"))
        .build()
        .expect("build");
    lock_cycle(&locks, &tls.server, "before", 0);
    tls.server.restart();
    support::eventually(Duration::from_secs(5), "locks over tls again", || {
        matches!(locks.try_lock("after", TTL), Ok(Some(_)))
    });
}
