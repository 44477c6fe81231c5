//! [`LockManagerBuilder`]: the nodes and every setting, each with its
//! default, validated in one place by [`build`](LockManagerBuilder::build).
//! (Its own file so that `manager.rs` stays about using locks.)

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use crate::conn::{Endpoint, Secret, Timeouts};
use crate::error::{Error, Failure, Result};
use crate::manager::{Inner, LockManager};
use crate::node::{Node, PoolConfig};
use crate::quorum::{MAX_NODES, Quorum};
use crate::retry::RetryPolicy;

/// Largest key cap that may be configured: far below Redis's own
/// `proto-max-bulk-len`, past which the server drops the connection.
const MAX_KEY_CAP: usize = 1 << 20;

/// Largest TTL cap that may be configured.
const MAX_TTL_CAP: Duration = Duration::from_secs(365 * 24 * 3600);

/// Builds a [`LockManager`]. Every setter documents its default.
#[derive(Debug)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct LockManagerBuilder {
    nodes: Vec<redis::RedisResult<ConnectionInfo>>,
    retry: RetryPolicy,
    connect_timeout: Duration,
    io_timeout: Duration,
    drift_factor: f64,
    pool_size: usize,
    pool_wait: Duration,
    max_ttl: Duration,
    max_key_len: usize,
    lazy: bool,
    preconnect: usize,
}

impl Default for LockManagerBuilder {
    fn default() -> Self {
        LockManagerBuilder {
            nodes: Vec::new(),
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_millis(100),
            drift_factor: 0.01,
            pool_size: 8,
            pool_wait: Duration::from_secs(1),
            max_ttl: Duration::from_secs(3600),
            max_key_len: 1024,
            lazy: false,
            preconnect: 1,
        }
    }
}

impl LockManagerBuilder {
    /// Adds a Redis node: a URL (`redis://[user][:password@]host[:port][/db]`)
    /// or a `(host, port)` tuple, anything redis-rs's `IntoConnectionInfo`
    /// takes. One node gives a single-instance lock; add 3 or 5 independent
    /// masters (not replicas of each other) for a Redlock quorum. Errors in
    /// the address are reported by [`build`](Self::build).
    pub fn node(mut self, addr: impl IntoConnectionInfo) -> Self {
        self.nodes.push(addr.into_connection_info());
        self
    }

    /// Adds several nodes; see [`node`](Self::node).
    pub fn nodes<A: IntoConnectionInfo>(mut self, addrs: impl IntoIterator<Item = A>) -> Self {
        for addr in addrs {
            self = self.node(addr);
        }
        self
    }

    /// How [`lock`](LockManager::lock) waits. Defaults to
    /// [`RetryPolicy::default`]: exponential from 10 ms, capped at 200 ms,
    /// with jitter, for at most 10 s.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Bound on opening a TCP connection to a node. Defaults to 1 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on each write to a node, and on waiting for the replies of one
    /// operation (all nodes share one deadline). Keep it small compared with
    /// your TTLs: a lock is only valid for `ttl - elapsed - drift`. At least
    /// 1 ms. Defaults to 100 ms.
    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// Clock-drift allowance per unit of TTL: validity is
    /// `ttl - elapsed - (ttl × factor + 2 ms)`. From 0 up to (not including)
    /// 0.5. Defaults to 0.01, the Redlock spec's value.
    pub fn drift_factor(mut self, factor: f64) -> Self {
        self.drift_factor = factor;
        self
    }

    /// Most connections kept open per node; a thread that finds them all
    /// busy waits for one (see [`pool_wait`](Self::pool_wait)). From 1 to
    /// 1024. Defaults to 8.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Longest wait for a free connection when a node's pool is exhausted;
    /// then the node counts as failed for that operation. Defaults to 1 s.
    pub fn pool_wait(mut self, wait: Duration) -> Self {
        self.pool_wait = wait;
        self
    }

    /// Longest TTL accepted by `try_lock`, `lock` and `extend`: a guard
    /// against unit mistakes (Redis itself takes ~292,000 years). At most
    /// 365 days. Defaults to 1 hour.
    pub fn max_ttl(mut self, max: Duration) -> Self {
        self.max_ttl = max;
        self
    }

    /// Longest key accepted, in bytes. From 1 to 1 MiB. Defaults to 1024.
    /// (Keys up to 64 bytes are kept inside the guard without allocating.)
    pub fn max_key_len(mut self, max: usize) -> Self {
        self.max_key_len = max;
        self
    }

    /// With `true`, [`build`](Self::build) only validates and connects to
    /// nodes on first use. Defaults to `false`: `build` connects to every
    /// node and fails fast on bad credentials, a server that is not Redis,
    /// the same server listed twice, or fewer than a quorum of nodes
    /// reachable (an unreachable minority is only logged: it is what Redlock
    /// is for).
    pub fn connect_lazily(mut self, lazy: bool) -> Self {
        self.lazy = lazy;
        self
    }

    /// Connections [`build`](Self::build) opens to each node up front (when
    /// not connecting lazily), at most the pool size. Opening them all keeps
    /// connection setup, and its allocations, out of the first burst of
    /// locks. Defaults to 1.
    pub fn preconnect(mut self, connections: usize) -> Self {
        self.preconnect = connections;
        self
    }

    /// Validates the settings and the nodes and, unless
    /// [`connect_lazily`](Self::connect_lazily), connects.
    pub fn build(self) -> Result<LockManager> {
        self.check_settings()?;
        if self.nodes.is_empty() {
            return Err(Error::invalid("no nodes: add at least one with .node(..)"));
        }
        if self.nodes.len() > MAX_NODES {
            return Err(Error::invalid(format!(
                "{} nodes, more than the {MAX_NODES} supported",
                self.nodes.len()
            )));
        }
        let endpoints = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, info)| endpoint(i, info))
            .collect::<Result<Vec<_>>>()?;
        check_distinct(&endpoints)?;

        let timeouts = Timeouts {
            connect: self.connect_timeout,
            io: self.io_timeout,
        };
        let pool = PoolConfig {
            max_conns: self.pool_size,
            wait: self.pool_wait,
        };
        let nodes = endpoints
            .into_iter()
            .map(|e| Node::new(e, timeouts, pool))
            .collect();
        let quorum = Quorum::new(nodes, self.drift_factor, self.io_timeout);
        if !self.lazy {
            connect_all(&quorum, self.preconnect)?;
        }
        Ok(LockManager::from_inner(Inner {
            quorum,
            retry: self.retry,
            max_ttl: self.max_ttl,
            max_key_len: self.max_key_len,
        }))
    }

    fn check_settings(&self) -> Result<()> {
        if self.connect_timeout.is_zero() {
            return Err(Error::invalid("connect_timeout must be above zero"));
        }
        if self.io_timeout < Duration::from_millis(1) {
            return Err(Error::invalid("io_timeout must be at least 1ms"));
        }
        if !(self.drift_factor.is_finite() && (0.0..0.5).contains(&self.drift_factor)) {
            return Err(Error::invalid(format!(
                "drift_factor {} is outside [0, 0.5)",
                self.drift_factor
            )));
        }
        if !(1..=1024).contains(&self.pool_size) {
            return Err(Error::invalid(format!(
                "pool_size {} is outside 1..=1024",
                self.pool_size
            )));
        }
        if self.max_ttl < Duration::from_millis(10) || self.max_ttl > MAX_TTL_CAP {
            return Err(Error::invalid(format!(
                "max_ttl {:?} is outside 10ms..=365 days",
                self.max_ttl
            )));
        }
        if self.preconnect > self.pool_size {
            return Err(Error::invalid(format!(
                "preconnect {} is over pool_size {}",
                self.preconnect, self.pool_size
            )));
        }
        if !(1..=MAX_KEY_CAP).contains(&self.max_key_len) {
            return Err(Error::invalid(format!(
                "max_key_len {} is outside 1..={MAX_KEY_CAP}",
                self.max_key_len
            )));
        }
        Ok(())
    }
}

/// What we keep of one parsed address.
fn endpoint(index: usize, info: &redis::RedisResult<ConnectionInfo>) -> Result<Endpoint> {
    let info = match info {
        Ok(info) => info,
        // redis-rs refuses rediss:// itself when built without TLS.
        Err(e) if e.to_string().contains("TLS") => return Err(tls_unsupported()),
        // redis-rs's parse errors name the problem, never the password.
        Err(e) => return Err(Error::invalid(format!("node {index}: {e}"))),
    };
    let (host, port) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
        ConnectionAddr::TcpTls { .. } => return Err(tls_unsupported()),
        ConnectionAddr::Unix(_) => {
            return Err(Error::Unsupported(
                "unix socket addresses (use redis://host:port)",
            ));
        }
        _ => return Err(Error::Unsupported("this kind of address")),
    };
    let settings = info.redis_settings();
    if settings.db() < 0 {
        return Err(Error::invalid(format!(
            "node {index}: negative database number"
        )));
    }
    Ok(Endpoint {
        host,
        port,
        username: settings.username().map(str::to_owned),
        password: settings.password().map(|p| Secret(p.to_owned())),
        db: settings.db(),
    })
}

fn tls_unsupported() -> Error {
    Error::Unsupported("tls (rediss://) is not supported yet")
}

/// Refuses a server listed twice: it would vote twice. Compares the names
/// as written and every address they resolve to (`localhost` and
/// `127.0.0.1` are one server); [`connect_all`] also compares run ids.
fn check_distinct(endpoints: &[Endpoint]) -> Result<()> {
    let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
    for (i, e) in endpoints.iter().enumerate() {
        for (j, other) in endpoints[..i].iter().enumerate() {
            if e.host.eq_ignore_ascii_case(&other.host) && e.port == other.port {
                return Err(duplicate(j, i, endpoints));
            }
        }
        // An unresolvable name is reported when connecting, not here.
        for addr in (e.host.as_str(), e.port)
            .to_socket_addrs()
            .into_iter()
            .flatten()
        {
            if let Some(&j) = seen.get(&addr)
                && j != i
            {
                return Err(duplicate(j, i, endpoints));
            }
            seen.insert(addr, i);
        }
    }
    Ok(())
}

fn duplicate(first: usize, second: usize, endpoints: &[Endpoint]) -> Error {
    Error::invalid(format!(
        "duplicate node: {} and {} are the same server, which would vote twice",
        endpoints[first].name(),
        endpoints[second].name()
    ))
}

/// Opens one connection to every node at once. Fails on configuration
/// errors anywhere, or when fewer than a quorum answer.
fn connect_all(quorum: &Quorum, preconnect: usize) -> Result<()> {
    let results: Vec<std::result::Result<Option<[u8; 40]>, Failure>> = std::thread::scope(|s| {
        let handles: Vec<_> = quorum
            .nodes
            .iter()
            .map(|node| {
                s.spawn(move || {
                    let run_id = node.run_id()?;
                    node.preconnect(preconnect)?;
                    Ok(run_id)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or(Err(Failure::Protocol("connect thread panicked")))
            })
            .collect()
    });
    let mut reachable = 0;
    let mut first_failure = None;
    let mut run_ids: HashMap<[u8; 40], usize> = HashMap::new();
    for (i, (node, result)) in quorum.nodes.iter().zip(results).enumerate() {
        match result {
            Ok(run_id) => {
                reachable += 1;
                if let Some(id) = run_id {
                    if let Some(&j) = run_ids.get(&id) {
                        return Err(Error::invalid(format!(
                            "duplicate node: {} and {} are the same server (same run_id), which would vote twice",
                            quorum.nodes[j].name, node.name
                        )));
                    }
                    run_ids.insert(id, i);
                }
            }
            // Wrong credentials or something that is not Redis will not heal.
            Err(failure @ (Failure::Auth(_) | Failure::Protocol(_))) => {
                return Err(failure.into_error(&node.name));
            }
            Err(failure) => {
                let error = failure.into_error(&node.name);
                log::warn!("redlease: node {} unreachable at build: {error}", node.name);
                first_failure.get_or_insert(error);
            }
        }
    }
    if reachable >= quorum.needed() {
        return Ok(());
    }
    match first_failure {
        Some(error) if quorum.nodes.len() == 1 => Err(error),
        cause => Err(Error::NoQuorum {
            agreed: reachable,
            nodes: quorum.nodes.len(),
            cause: cause.map(Box::new),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(builder: LockManagerBuilder) -> String {
        match builder.build() {
            Err(Error::InvalidArgument(msg)) => msg.into(),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    fn lazy() -> LockManagerBuilder {
        LockManager::builder().connect_lazily(true)
    }

    #[test]
    fn zero_nodes_is_refused() {
        assert!(invalid(LockManager::builder()).contains("no nodes"));
    }

    #[test]
    fn duplicate_nodes_are_refused() {
        let msg = invalid(
            lazy()
                .node("redis://127.0.0.1:7000")
                .node(("127.0.0.1", 7000)),
        );
        assert!(msg.starts_with("duplicate node"), "{msg}");
        // The same server under two names, and under another database.
        let msg = invalid(
            lazy()
                .node("redis://localhost:7000")
                .node("redis://127.0.0.1:7000/3"),
        );
        assert!(msg.starts_with("duplicate node"), "{msg}");
        // Distinct ports are distinct servers.
        lazy()
            .node(("127.0.0.1", 7000))
            .node(("127.0.0.1", 7001))
            .build()
            .expect("distinct");
    }

    #[test]
    fn bad_settings_are_refused() {
        let one = || lazy().node(("127.0.0.1", 7000));
        assert!(invalid(one().io_timeout(Duration::ZERO)).contains("io_timeout"));
        assert!(invalid(one().connect_timeout(Duration::ZERO)).contains("connect_timeout"));
        assert!(invalid(one().drift_factor(0.5)).contains("drift_factor"));
        assert!(invalid(one().drift_factor(f64::NAN)).contains("drift_factor"));
        assert!(invalid(one().pool_size(0)).contains("pool_size"));
        assert!(invalid(one().max_ttl(Duration::from_secs(400 * 86400))).contains("max_ttl"));
        assert!(invalid(one().max_key_len(0)).contains("max_key_len"));
        assert!(invalid(one().pool_size(2).preconnect(3)).contains("preconnect"));
    }

    #[test]
    fn unparsable_address_is_refused_without_echoing_it() {
        let msg = invalid(lazy().node("redis://:sentinel-pw@127.0.0.1:notaport"));
        assert!(!msg.contains("sentinel-pw"), "{msg}");
        assert!(msg.starts_with("node 0:"), "{msg}");
    }

    #[test]
    fn tls_and_unix_are_reported_unsupported() {
        for addr in ["rediss://127.0.0.1:6380", "unix:///tmp/redis.sock"] {
            match lazy().node(addr).build() {
                Err(Error::Unsupported(what)) => assert!(!what.is_empty()),
                other => panic!("{addr}: expected Unsupported, got {other:?}"),
            }
        }
    }

    #[test]
    fn password_never_shows_in_debug() {
        let builder = lazy().node("redis://user:sentinel-pw@127.0.0.1:7000");
        let manager = builder.build().expect("lazy build");
        assert!(!format!("{manager:?}").contains("sentinel-pw"));
    }

    #[test]
    fn ttl_checks() {
        let m = lazy()
            .node(("127.0.0.1", 7000))
            .build()
            .expect("lazy build");
        let check = |ttl| m.inner().check_ttl(ttl);
        assert!(check(Duration::ZERO).is_err());
        assert!(check(Duration::from_micros(900)).is_err());
        // 2 ms is eaten by the fixed 2 ms drift allowance.
        assert!(check(Duration::from_millis(2)).is_err());
        assert_eq!(
            check(Duration::from_millis(3)).ok(),
            Some(Duration::from_millis(3))
        );
        assert_eq!(
            check(Duration::from_micros(10_999)).ok(),
            Some(Duration::from_millis(10))
        );
        assert!(check(Duration::from_secs(3601)).is_err());
        assert!(check(Duration::MAX).is_err());
    }
}
