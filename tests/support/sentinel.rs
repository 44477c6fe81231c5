//! A Sentinel deployment on loopback for tests: a master, replicas of it,
//! and sentinels watching it (`redis-server <conf> --sentinel`), each on a
//! free port, each killed by its pid when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{INSTALL_HINT, RedisServer, SERVER_ENV, free_port};

/// The name the sentinels know the master by.
pub const MASTER: &str = "mymaster";

/// One `redis-server --sentinel`.
pub struct Sentinel {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Sentinel {
    fn start(master_port: u16, quorum: usize, down_after_ms: u64) -> Sentinel {
        let dir = super::temp_dir("sentinel");
        for _ in 0..20 {
            let port = free_port();
            // Sentinel rewrites its configuration file: it must be its own.
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel.log\n\
                     sentinel monitor {MASTER} 127.0.0.1 {master_port} {quorum}\n\
                     sentinel down-after-milliseconds {MASTER} {down_after_ms}\n\
                     sentinel failover-timeout {MASTER} 10000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir = dir.display()
                ),
            )
            .expect("sentinel.conf");
            let binary = std::env::var(SERVER_ENV).unwrap_or_else(|_| "redis-server".into());
            let mut command = Command::new(&binary);
            command
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // Its own process group: a Ctrl-C at the terminal reaches only
            // the parent, which stops it by its pid.
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
            let child = match command.spawn() {
                Ok(child) => child,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
                Err(e) => panic!("cannot run {binary}: {e}"),
            };
            let mut sentinel = Sentinel {
                child,
                port,
                dir: dir.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = sentinel.child.try_wait() {
                    break;
                }
                if sentinel.ask("PING").is_some_and(|r| r.contains("PONG")) {
                    return sentinel;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // Port taken, or slow: try another port.
            let _ = sentinel.child.kill();
            let _ = sentinel.child.wait();
        }
        panic!("sentinel did not start; see {}", dir.display());
    }

    /// One inline command; the raw reply, if any came within a second.
    pub fn ask(&self, command: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// The master's port as this sentinel sees it now.
    pub fn master_port(&self) -> Option<u16> {
        let reply = self.ask(&format!("SENTINEL get-master-addr-by-name {MASTER}"))?;
        // *2 $9 127.0.0.1 $5 PORT
        reply.lines().nth(4)?.trim().parse().ok()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A master, `replicas` replicas of it, and `sentinels` sentinels.
pub struct Deployment {
    /// The servers: the first starts as the master.
    pub servers: Vec<RedisServer>,
    pub sentinels: Vec<Sentinel>,
}

impl Deployment {
    pub fn start(replicas: usize, sentinels: usize, down_after_ms: u64) -> Deployment {
        let master = RedisServer::try_start_detached(&[]).unwrap_or_else(|e| panic!("{e}"));
        let port = master.port.to_string();
        let mut servers = vec![master];
        for _ in 0..replicas {
            servers.push(
                RedisServer::try_start_detached(&[
                    "--replicaof",
                    "127.0.0.1",
                    &port,
                    // Promotable, and quick to notice a dead master.
                    "--repl-ping-replica-period",
                    "1",
                ])
                .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        let quorum = sentinels / 2 + 1;
        let sentinels: Vec<Sentinel> = (0..sentinels)
            .map(|_| Sentinel::start(servers[0].port, quorum, down_after_ms))
            .collect();
        let deployment = Deployment { servers, sentinels };
        // Every sentinel sees every replica, in sync, and the others.
        super::eventually(Duration::from_secs(20), "sentinels ready", || {
            deployment.sentinels.iter().all(|s| {
                let master = s
                    .ask(&format!("SENTINEL master {MASTER}"))
                    .unwrap_or_default();
                field(&master, "num-slaves") == Some(replicas)
                    && field(&master, "num-other-sentinels") == Some(deployment.sentinels.len() - 1)
            }) && deployment.servers[1..].iter().all(|r| {
                r.raw(b"INFO replication", Duration::from_secs(1))
                    .is_some_and(|info| info.contains("master_link_status:up"))
            })
        });
        deployment
    }

    /// The index of the server that is master now, as the sentinels say.
    pub fn master(&self) -> Option<usize> {
        let port = self.sentinels.iter().find_map(Sentinel::master_port)?;
        self.servers.iter().position(|s| s.port == port)
    }

    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(Sentinel::url).collect()
    }

    /// Asks the sentinels to fail over now (no need for the master to
    /// fail) until server `to` is the master: a sentinel may abort a
    /// failover (no replica it deems good, on a loaded machine) or be
    /// busy with one, and is then asked again.
    pub fn fail_over_to(&self, to: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        for attempt in 0.. {
            let sentinel = &self.sentinels[attempt % self.sentinels.len()];
            let reply = sentinel
                .ask(&format!("SENTINEL FAILOVER {MASTER}"))
                .unwrap_or_default();
            let tried = Instant::now();
            while tried.elapsed() < Duration::from_secs(5) {
                if self.master() == Some(to) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                Instant::now() < deadline,
                "server {to} not promoted within {limit:?} (last SENTINEL FAILOVER: {reply:?})"
            );
        }
    }
}

/// An integer field of `SENTINEL master`'s flat reply (name, value, …).
fn field(reply: &str, name: &str) -> Option<usize> {
    let lines: Vec<&str> = reply.lines().collect();
    let at = lines.iter().position(|l| *l == name)?;
    lines.get(at + 2)?.trim().parse().ok()
}
