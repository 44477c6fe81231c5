//! What `build()` learns from each node before the first lock: permissions
//! that would make locks impossible to release fail fast, servers with
//! `SCRIPT` renamed away still work, and a full server says so.

mod support;

use std::time::Duration;

use redlease::Error;
use support::RedisServer;

const TTL: Duration = Duration::from_secs(10);

/// Expects `build()` to fail with a permission error whose text contains
/// every one of `needles`.
fn permission_denied(url: &str, needles: &[&str]) {
    match support::builder().node(url).build() {
        Err(e @ Error::Permission { .. }) => {
            assert!(!e.is_retryable(), "{e}");
            let text = e.to_string().to_lowercase();
            for needle in needles {
                assert!(text.contains(needle), "{text:?} does not name {needle:?}");
            }
        }
        other => panic!("expected a permission error, got {other:?}"),
    }
}

/// Defect 5a: a user allowed `SET` but not the scripts (or not a command
/// the release script runs) could take locks and never release them. The
/// build fails at once, naming what is missing; nothing is left behind.
#[test]
fn users_who_could_not_release_fail_at_build() {
    let server = RedisServer::start();
    let keys = || -> Vec<Vec<u8>> { server.cmd(&[b"KEYS", b"*"]) };
    for (name, rule, needle) in [
        ("noscripts", "-@scripting", "eval"),
        ("noevalsha", "-evalsha", "evalsha"),
        ("nopexpire", "-pexpire", "pexpire"),
        ("noset", "-set", "set"),
        ("noget", "-get", "get"),
    ] {
        let url = server.acl_user(name, &["~*", "+@all", rule]);
        permission_denied(&url, &[needle]);
        assert!(keys().is_empty(), "{name}: the probe left keys behind");
    }
    // Without DEL the probe cannot delete its key; it expires by itself.
    let no_del = server.acl_user("nodel", &["~*", "+@all", "-del"]);
    permission_denied(&no_del, &["del"]);
    for key in keys() {
        let pttl = server.pttl(&key);
        assert!(pttl > 0 && pttl <= 2_000, "probe key left with pttl {pttl}");
    }
    let no_set = server.acl_user("noset", &["~*", "+@all", "-set"]);

    // A lazy manager cannot probe at build; the same user then gets the
    // server's error on first use, and it is not retried.
    let lazy = support::builder()
        .node(no_set.as_str())
        .connect_lazily(true)
        .build()
        .expect("lazy build");
    match lazy.lock("k", TTL) {
        Err(e @ Error::Server { .. }) => {
            assert!(e.to_string().contains("NOPERM"), "{e}");
            assert!(!e.is_retryable());
        }
        other => panic!("expected NOPERM, got {other:?}"),
    }
}

/// A user limited to its own key prefix passes the build even though the
/// probe cannot touch a key of its own: what can be checked without a key
/// still is (here the scripts are missing, and that is caught).
#[test]
fn key_limited_users_are_probed_without_keys() {
    let server = RedisServer::start();
    let limited = server.acl_user(
        "limited",
        &[
            "resetkeys",
            "~lock:*",
            "-@all",
            "+set",
            "+get",
            "+del",
            "+pexpire",
            "+evalsha",
            "+eval",
            "+script|load",
            "+ping",
        ],
    );
    let locks = support::builder()
        .node(limited.as_str())
        .build()
        .expect("a key-limited user with every command it needs");
    let lock = locks
        .try_lock("lock:a", TTL)
        .expect("try_lock")
        .expect("free");
    assert!(lock.release().expect("release"));

    let limited_no_scripts = server.acl_user(
        "limited-no-scripts",
        &[
            "resetkeys",
            "~lock:*",
            "-@all",
            "+set",
            "+get",
            "+del",
            "+pexpire",
            "+ping",
        ],
    );
    permission_denied(&limited_no_scripts, &["evalsha"]);
}

/// Defect 5b: a server with `SCRIPT` renamed away (but `EVAL` allowed) is
/// used by sending the scripts' source, not refused.
#[test]
fn script_command_renamed_away() {
    let server = RedisServer::start_with(&["--rename-command", "SCRIPT", ""]);
    let locks = support::manager([server.url()]);
    let mut lock = locks.try_lock("k", TTL).expect("try_lock").expect("free");
    lock.extend(TTL).expect("extend");
    assert!(lock.release().expect("release"));
    let lock = locks.try_lock("k", TTL).expect("try_lock").expect("free");
    drop(lock);
    assert_eq!(server.get(b"k"), None);
}

/// Defect 5c: a server at `maxclients` answers a new connection with an
/// error and closes it. The user sees that error, not the "connection
/// reset" that follows it.
#[test]
fn max_clients_reached_is_reported() {
    let server = RedisServer::start();
    let mut admin = server.client();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(1)
        .query(&mut admin)
        .expect("CONFIG SET maxclients");
    let result = support::builder().node(server.url()).build();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(100)
        .query(&mut admin)
        .expect("CONFIG SET maxclients back");
    match result {
        Err(e @ Error::Server { .. }) => {
            assert!(
                e.to_string().contains("max number of clients reached"),
                "{e}"
            );
            assert!(e.is_retryable());
        }
        other => panic!("expected the server's maxclients error, got {other:?}"),
    }
    support::manager([server.url()]);
}
