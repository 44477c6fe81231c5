//! Test support: real `redis-server` processes on free loopback ports.
//!
//! Shared by the integration tests, the benches and the examples through
//! `#[path = "../tests/support/mod.rs"] mod support;`; not every user needs
//! every helper.
// Each test crate uses a different subset of the helpers, and the helpers are
// `pub` for the crates that include this module.
#![allow(dead_code, unreachable_pub)]

pub mod alloc;
pub mod cluster;
pub mod fake;
pub mod oracle;
pub mod proxy;
pub mod sentinel;
pub mod tls;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redlease::{LockManager, LockManagerBuilder};

/// Environment variable naming the `redis-server` binary to run.
pub const SERVER_ENV: &str = "REDLEASE_REDIS_SERVER";

/// How to get `redis-server` when it is missing.
pub const INSTALL_HINT: &str = "redis-server not found: install it with `sudo apt-get install redis-server` \
     (or `brew install redis`), or point REDLEASE_REDIS_SERVER at the binary";

/// A throwaway `redis-server`: no persistence, its own directory and log
/// file, `DEBUG` allowed from loopback. Killed (by its pid) when dropped.
pub struct RedisServer {
    child: Option<Child>,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    /// Whether the server runs in a process group of its own.
    own_group: bool,
    /// Whether it also listens on `redis.sock` in its directory.
    unix: bool,
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A new directory of this process's own under the system's temporary
/// one: `redlease-<what>-<pid>-<n>`.
pub fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "redlease-{what}-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

impl RedisServer {
    /// Starts a server with the default settings.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments
    /// (`["--requirepass", "x"]`). Panics with the install command when
    /// `redis-server` is missing.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::try_start_with(extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`start_with`](Self::start_with), but returns what went wrong.
    pub fn try_start_with(extra: &[&str]) -> Result<RedisServer, String> {
        RedisServer::try_start_inner(extra, false, false)
    }

    /// Starts a server in a process group of its own, so that a Ctrl-C at
    /// the terminal reaches only the parent, which then stops the server
    /// itself (by its pid) after it has finished its work.
    pub fn try_start_detached(extra: &[&str]) -> Result<RedisServer, String> {
        RedisServer::try_start_inner(extra, true, false)
    }

    /// Starts a server that also listens on a unix socket.
    pub fn start_unix() -> RedisServer {
        RedisServer::start_unix_with(&[])
    }

    /// Like [`start_unix`](Self::start_unix), with extra arguments.
    pub fn start_unix_with(extra: &[&str]) -> RedisServer {
        // In a process group of its own, like `try_start_detached`: the load
        // generator's Ctrl-C must not reach it.
        RedisServer::try_start_inner(extra, true, true).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The unix socket of a server from [`start_unix`](Self::start_unix).
    pub fn socket_path(&self) -> PathBuf {
        assert!(self.unix, "started without a unix socket");
        self.dir.join("redis.sock")
    }

    /// The TLS port, if it was started with `--tls-port`.
    pub fn tls_port(&self) -> Option<u16> {
        let at = self.extra.iter().position(|a| a == "--tls-port")?;
        self.extra.get(at + 1)?.parse().ok()
    }

    /// `redis+unix:///…/redis.sock`.
    pub fn unix_url(&self) -> String {
        format!("redis+unix://{}", self.socket_path().display())
    }

    fn try_start_inner(extra: &[&str], own_group: bool, unix: bool) -> Result<RedisServer, String> {
        let dir = std::env::temp_dir().join(format!(
            "redlease-test-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            own_group,
            unix,
        };
        // A port picked free can be taken before the server binds it: then
        // redis-server exits with "Address already in use" and we try another.
        for _ in 0..20 {
            server.port = free_port();
            if server.spawn()? {
                return Ok(server);
            }
        }
        Err(format!(
            "redis-server did not start in 20 tries; see {}",
            server.log_path().display()
        ))
    }

    /// Starts `n` independent servers.
    pub fn start_many(n: usize) -> Vec<RedisServer> {
        (0..n).map(|_| RedisServer::start()).collect()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Starts the process on `self.port`; `Ok(false)` if the port was taken.
    fn spawn(&mut self) -> Result<bool, String> {
        let binary = std::env::var(SERVER_ENV).unwrap_or_else(|_| "redis-server".into());
        let port = self.port.to_string();
        let log = self.log_path();
        let _ = std::fs::remove_file(&log);
        let mut cmd = Command::new(&binary);
        cmd.args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--daemonize", "no", "--enable-debug-command", "local"])
        .arg("--dir")
        .arg(&self.dir)
        .arg("--logfile")
        .arg(&log)
        .args(&self.extra)
        .args(if self.unix {
            vec![
                "--unixsocket".into(),
                self.dir.join("redis.sock").into_os_string(),
                "--unixsocketperm".into(),
                "700".into(),
            ]
        } else {
            Vec::new()
        })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if self.own_group {
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(INSTALL_HINT.into()),
            Err(e) => return Err(format!("cannot run {binary}: {e}")),
        };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                if log.contains("Address already in use") {
                    return Ok(false);
                }
                return Err(format!(
                    "redis-server exited with {status}; its log:\n{log}"
                ));
            }
            if self.answers_ping() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(format!(
            "redis-server on port {} did not answer PING within 10 s",
            self.port
        ))
    }

    fn answers_ping(&self) -> bool {
        self.answers_ping_within(Duration::from_secs(1))
    }

    /// Whether the server answers a `PING` within `limit` (a server in
    /// `DEBUG SLEEP` or stopped does not). With --requirepass the server
    /// answers NOAUTH: it is up all the same.
    pub fn answers_ping_within(&self, limit: Duration) -> bool {
        self.raw(b"PING", limit).is_some()
    }

    /// Sends one inline command on a new connection, without any
    /// handshake, and returns the start of the reply, if one comes within
    /// `limit`: for looking at a server that is busy or asleep.
    pub fn raw(&self, command: &[u8], limit: Duration) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(limit)).ok()?;
        s.write_all(&[command, b"\r\n"].concat()).ok()?;
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).ok().filter(|&n| n > 0)?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// `redis://127.0.0.1:port`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A redis-rs connection, to look at what the library did.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("url")
            .get_connection()
            .expect("connect to the test server")
    }

    /// Runs one command through redis-rs and returns its reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&[u8]]) -> T {
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).expect("command name"));
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut self.client()).expect("command")
    }

    /// Sends one command that blocks the server (`DEBUG SLEEP`, a script
    /// that loops) through redis-rs from a thread of its own, on a
    /// connection opened here; its reply is dropped (a killed script's is an
    /// error). Join the handle to wait for the command to end.
    pub fn run_blocking(&self, args: &[&str]) -> std::thread::JoinHandle<()> {
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        let mut con = self.client();
        std::thread::spawn(move || {
            let _: redis::RedisResult<()> = cmd.query(&mut con);
        })
    }

    /// The value at `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cmd(&[b"GET", key])
    }

    /// Clients connected now, as `INFO clients` counts them (the one asking
    /// included).
    pub fn connected_clients(&self) -> usize {
        let info: String = self.cmd(&[b"INFO", b"clients"]);
        info.lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("INFO clients has connected_clients")
    }

    /// Creates an ACL user `name` (password `pw`) with these rules;
    /// returns its URL.
    pub fn acl_user(&self, name: &str, rules: &[&str]) -> String {
        let mut args: Vec<&[u8]> = vec![b"ACL", b"SETUSER", name.as_bytes(), b"on", b">pw"];
        args.extend(rules.iter().map(|r| r.as_bytes()));
        let _: () = self.cmd(&args);
        format!("redis://{name}:pw@127.0.0.1:{}", self.port)
    }

    /// `PTTL key`: -2 when missing, -1 without expiry.
    pub fn pttl(&self, key: &[u8]) -> i64 {
        self.cmd(&[b"PTTL", key])
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills and starts again on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn().unwrap_or_else(|e| panic!("{e}")) {
            assert!(Instant::now() < deadline, "port {} stayed taken", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (`STOP`, `CONT`) to the process, by its pid.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("server running");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // A stopped process must be continued to die promptly.
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The builder the tests start from: the defaults, but without the restart
/// quarantine. The servers the tests start are fresh and private: no one
/// held locks on them before, so the quarantine (which would keep every
/// just-started server from granting for `max_ttl`) protects nothing here.
/// `tests/quarantine.rs` tests it with it on.
pub fn builder() -> LockManagerBuilder {
    LockManager::builder().restart_quarantine(false)
}

/// A manager over `urls` with the default settings; connects now.
pub fn manager(urls: impl IntoIterator<Item = String>) -> LockManager {
    manager_with(urls, builder())
}

/// A manager over `urls` with the settings already on `builder`.
pub fn manager_with(
    urls: impl IntoIterator<Item = String>,
    builder: LockManagerBuilder,
) -> LockManager {
    builder.nodes(urls).build().expect("build the lock manager")
}

/// Takes and releases one lock, so that every pool has a warm connection.
pub fn warm(locks: &LockManager) {
    let lock = locks
        .try_lock("warm-up", Duration::from_secs(1))
        .expect("warm-up try_lock")
        .expect("the warm-up key is free");
    assert!(lock.release().expect("warm-up release"));
}

/// Polls `condition` every millisecond until it holds; fails the test,
/// naming `what`, if it does not within `limit`. For waiting on a state
/// the test cannot be told about (a server busy, a connection reset, a key
/// expired), instead of sleeping for a guessed time.
pub fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Subscribers to `key`'s wake channel on `server` (`PUBSUB NUMSUB`).
pub fn listeners(server: &RedisServer, key: &str) -> i64 {
    let channel = format!("redlease:wake:{key}");
    let reply: Vec<redis::Value> = server.cmd(&[b"PUBSUB", b"NUMSUB", channel.as_bytes()]);
    match reply.get(1) {
        Some(redis::Value::Int(n)) => *n,
        other => panic!("PUBSUB NUMSUB: {other:?}"),
    }
}

/// This process's (threads, open file descriptors), for leak checks; run
/// them in a test binary of their own, so that no other test blurs them.
pub fn resources() -> (usize, usize) {
    let count = |dir: &str| std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    (count("/proc/self/task"), count("/proc/self/fd"))
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A listener whose accept queue is full, so that new connections to it hang
/// in the handshake: what a host dropping SYNs looks like, on loopback.
/// Keep both values alive while the port is in use.
pub fn connect_hangs() -> (socket2::Socket, TcpStream, u16) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    listener.bind(&addr.into()).expect("bind");
    listener.listen(0).expect("listen");
    let port = listener
        .local_addr()
        .expect("local addr")
        .as_socket()
        .expect("inet")
        .port();
    // This connection fills the queue; nobody accepts it.
    let filler = TcpStream::connect(("127.0.0.1", port)).expect("fill the backlog");
    (listener, filler, port)
}

/// Runs `f` on a thread and fails the test if it takes longer than `limit`:
/// for tests whose failure mode would be a hang.
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let handle = std::thread::spawn(f);
    let deadline = Instant::now() + limit;
    while !handle.is_finished() {
        assert!(Instant::now() < deadline, "did not finish within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    match handle.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
