//! The contestants the round-trip benches and the report compare, each doing
//! one acquire + release cycle on one key:
//!
//! - **floor**: the least a client can do. Raw `TcpStream`, `TCP_NODELAY`,
//!   SET NX PX and EVALSHA encoded once up front (same token every time), a
//!   fixed stack buffer, no parsing beyond counting bytes.
//! - **ours**: `LockManager::try_lock` + `Lock::release`.
//! - **by hand**: what a user writes with redis-rs: a random token, then
//!   `redis::cmd("SET")…query()` and `redis::Script::invoke` for the
//!   compare-and-delete.
//! - **sequential**: Redlock done one node after another (N single-node
//!   managers in turn): what scatter/gather saves.
#![allow(dead_code)] // each bench uses a different subset

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use redlease::LockManager;

/// TTL used by every contestant.
pub const TTL: Duration = Duration::from_secs(10);

/// Same script text as the library's release script.
pub const RELEASE: &str = r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end"#;

fn bulk_array(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The floor: pre-encoded requests over a raw socket. With `safe`, it also
/// pays for what a lock library must not skip: a read/write timeout on the
/// socket and a fresh 128-bit token from the OS CSPRNG per cycle (written
/// into the pre-encoded requests in place).
pub struct Floor {
    stream: TcpStream,
    set: Vec<u8>,
    release: Vec<u8>,
    /// Where the token sits in `set` and `release`, with `safe`.
    token_at: Option<(usize, usize)>,
}

/// Offset of the token in a pre-encoded request.
fn token_offset(request: &[u8], token: &[u8]) -> usize {
    request
        .windows(token.len())
        .position(|w| w == token)
        .expect("token in request")
}

impl Floor {
    pub fn connect(port: u16, key: &[u8]) -> Floor {
        Floor::connect_with(port, key, false)
    }

    pub fn connect_safe(port: u16, key: &[u8]) -> Floor {
        Floor::connect_with(port, key, true)
    }

    fn connect_with(port: u16, key: &[u8], safe: bool) -> Floor {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        if safe {
            stream
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            stream
                .set_write_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
        }
        let token = b"0123456789abcdef0123456789abcdef";
        let sha = redis::Script::new(RELEASE).get_hash().to_string();
        // Load the script on the server (the reply is the SHA as a bulk).
        stream
            .write_all(&bulk_array(&[b"SCRIPT", b"LOAD", RELEASE.as_bytes()]))
            .expect("write");
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < 47 {
            got += stream.read(&mut buf[got..]).expect("read");
        }
        let set = bulk_array(&[b"SET", key, token, b"NX", b"PX", b"10000"]);
        let release = bulk_array(&[b"EVALSHA", sha.as_bytes(), b"1", key, token]);
        let token_at = safe.then(|| (token_offset(&set, token), token_offset(&release, token)));
        Floor {
            stream,
            set,
            release,
            token_at,
        }
    }

    /// One cycle; replies are `+OK\r\n` (5 bytes) and `:1\r\n` (4 bytes).
    #[inline(never)]
    pub fn cycle(&mut self) {
        let mut buf = [0u8; 16];
        if let Some((s, r)) = self.token_at {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut raw = [0u8; 16];
            getrandom::fill(&mut raw).expect("random");
            for (i, byte) in raw.iter().enumerate() {
                let pair = [HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]];
                self.set[s + 2 * i..s + 2 * i + 2].copy_from_slice(&pair);
                self.release[r + 2 * i..r + 2 * i + 2].copy_from_slice(&pair);
            }
        }
        self.stream.write_all(&self.set).expect("write");
        read_exactly(&mut self.stream, &mut buf[..5]);
        debug_assert_eq!(&buf[..5], b"+OK\r\n");
        self.stream.write_all(&self.release).expect("write");
        read_exactly(&mut self.stream, &mut buf[..4]);
        debug_assert_eq!(&buf[..4], b":1\r\n");
    }
}

fn read_exactly(stream: &mut TcpStream, buf: &mut [u8]) {
    let mut got = 0;
    while got < buf.len() {
        let n = stream.read(&mut buf[got..]).expect("read");
        assert!(n > 0, "server closed the connection");
        got += n;
    }
}

/// Ours.
#[inline(never)]
pub fn ours_cycle(locks: &LockManager, key: &[u8]) {
    let lock = locks.try_lock(key, TTL).expect("try_lock").expect("free");
    assert!(lock.release().expect("release"));
}

/// What a user writes by hand with redis-rs.
pub struct ByHand {
    con: redis::Connection,
    script: redis::Script,
}

impl ByHand {
    pub fn connect(url: &str) -> ByHand {
        ByHand {
            con: redis::Client::open(url)
                .expect("url")
                .get_connection()
                .expect("connect"),
            script: redis::Script::new(RELEASE),
        }
    }

    #[inline(never)]
    pub fn cycle(&mut self, key: &[u8]) {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).expect("random");
        let token = format!("{:032x}", u128::from_le_bytes(raw));
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(TTL.as_millis() as u64)
            .query(&mut self.con)
            .expect("SET");
        assert!(set.is_some(), "key was free");
        let released: i64 = self
            .script
            .key(key)
            .arg(&token)
            .invoke(&mut self.con)
            .expect("release");
        assert_eq!(released, 1);
    }
}

/// Redlock one node after another: N single-node managers in turn.
pub struct Sequential {
    nodes: Vec<LockManager>,
}

impl Sequential {
    pub fn connect(urls: &[String]) -> Sequential {
        Sequential {
            nodes: urls
                .iter()
                .map(|url| {
                    LockManager::builder()
                        // A fresh private server: nothing for the restart quarantine to protect.
                        .restart_quarantine(false)
                        .node(url.as_str())
                        .build()
                        .expect("build")
                })
                .collect(),
        }
    }

    #[inline(never)]
    pub fn cycle(&self, key: &[u8]) {
        let locks: Vec<_> = self
            .nodes
            .iter()
            .map(|m| m.try_lock(key, TTL).expect("try_lock").expect("free"))
            .collect();
        for lock in locks {
            assert!(lock.release().expect("release"));
        }
    }
}
