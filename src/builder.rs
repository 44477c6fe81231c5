//! [`LockManagerBuilder`]: the nodes and every setting, each with its
//! default, validated in one place by [`build`](LockManagerBuilder::build).
//! (Its own file so that `manager.rs` stays about using locks.)

use std::time::Duration;

use redis::{ConnectionInfo, IntoConnectionInfo};

use crate::cluster::Cluster;
use crate::conn::Timeouts;
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};
use crate::manager::{Limits, LockManager};
use crate::node::NodeConfig;
use crate::quorum::Quorum;
use crate::retry::RetryPolicy;
use crate::route::Route;

/// Largest key cap that may be configured: far below Redis's own
/// `proto-max-bulk-len`, past which the server drops the connection.
const MAX_KEY_CAP: usize = 1 << 20;

/// Largest TTL cap that may be configured.
const MAX_TTL_CAP: Duration = Duration::from_secs(365 * 24 * 3600);

/// A node as the builder was told it.
#[derive(Debug)]
enum NodeSpec {
    /// Its address.
    Direct(redis::RedisResult<ConnectionInfo>),
    /// A master's name (and credentials), and the sentinels that know it.
    Sentinel {
        master: redis::RedisResult<ConnectionInfo>,
        sentinels: Vec<redis::RedisResult<ConnectionInfo>>,
    },
    /// A Redis Cluster, known by some of its nodes.
    Cluster(Vec<redis::RedisResult<ConnectionInfo>>),
}

/// Builds a [`LockManager`]. Every setter documents its default.
#[derive(Debug)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct LockManagerBuilder {
    nodes: Vec<NodeSpec>,
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
    fair: bool,
    max_hold: Option<Duration>,
    fencing: bool,
    restart_quarantine: bool,
    replicas: Option<(u32, Duration)>,
    #[cfg(feature = "tls")]
    tls: crate::tls::TlsSettings,
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
            max_ttl: Duration::from_secs(60),
            max_key_len: 1024,
            lazy: false,
            preconnect: 1,
            fair: false,
            max_hold: None,
            fencing: false,
            restart_quarantine: true,
            replicas: None,
            #[cfg(feature = "tls")]
            tls: crate::tls::TlsSettings::default(),
        }
    }
}

impl LockManagerBuilder {
    /// Adds a Redis node: a URL (`redis://[user][:password@]host[:port][/db]`;
    /// `rediss://…` for TLS, with the `tls` feature; `redis+unix:///path`
    /// or `unix:///path` for a unix socket, with `?db=N&user=U&pass=P`) or a
    /// `(host, port)` tuple, anything redis-rs's `IntoConnectionInfo`
    /// takes. One node gives a single-instance lock; add 3 or 5 independent
    /// masters (not replicas of each other) for a Redlock quorum. Errors in
    /// the address are reported by [`build`](Self::build).
    pub fn node(mut self, addr: impl IntoConnectionInfo) -> Self {
        self.nodes
            .push(NodeSpec::Direct(addr.into_connection_info()));
        self
    }

    /// Adds several nodes; see [`node`](Self::node).
    pub fn nodes<A: IntoConnectionInfo>(mut self, addrs: impl IntoIterator<Item = A>) -> Self {
        for addr in addrs {
            self = self.node(addr);
        }
        self
    }

    /// Adds a node found through Redis Sentinel: whichever server the
    /// sentinels name as master `master` now. `master` is an address whose
    /// host is the master's name and which carries the master's
    /// credentials and database (`redis://[user:password@]mymaster[/db]`,
    /// `rediss://…` for TLS to the master; its port is ignored);
    /// `sentinels` are the sentinels' own addresses (`redis://host:26379`,
    /// with their own credentials if they have any).
    ///
    /// Each new connection asks the sentinels for the master's address and
    /// checks with `ROLE` that the server is a master. A failover is
    /// followed as connections see it: a dead master's connections fail
    /// and are replaced, and a demoted master's `READONLY` closes its
    /// connections and sends the request once more, to the new master, in
    /// the same call. What a failover can still lose (a lock granted but not
    /// yet replicated) is in the README.
    ///
    /// One sentinel node is a single-instance lock; it can also be one
    /// member of a Redlock quorum (each member its own master).
    ///
    /// ```no_run
    /// let locks = redlease::LockManager::builder()
    ///     .sentinel(
    ///         "redis://:secret@mymaster/0",
    ///         ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379", "redis://10.0.0.3:26379"],
    ///     )
    ///     .build()?;
    /// # Ok::<(), redlease::Error>(())
    /// ```
    pub fn sentinel<A: IntoConnectionInfo>(
        mut self,
        master: impl IntoConnectionInfo,
        sentinels: impl IntoIterator<Item = A>,
    ) -> Self {
        self.nodes.push(NodeSpec::Sentinel {
            master: master.into_connection_info(),
            sentinels: sentinels
                .into_iter()
                .map(IntoConnectionInfo::into_connection_info)
                .collect(),
        });
        self
    }

    /// Locks over a Redis Cluster, known by one or more of its nodes
    /// (`redis://…` or `rediss://…`; the rest is discovered with
    /// `CLUSTER NODES`, and the seeds' credentials and TLS settings are used
    /// for every node). Each key's lock lives on the master of the key's
    /// hash slot, as a single-node lock there: a cluster's masters are not
    /// a Redlock quorum (each slot has one). Slot migrations (`MOVED`,
    /// `ASK`) and failovers are followed inside each call. A lock's fence
    /// counter and fair queue are named to share its slot
    /// (`{<key>}:redlease:fence`; a key with a hash tag keeps it).
    ///
    /// A replica promoted by a failover may lack locks its master granted
    /// just before (replication is asynchronous): a master the manager last
    /// saw as a replica grants nothing for the restart quarantine's time
    /// (see [`restart_quarantine`](Self::restart_quarantine)), and
    /// [`wait_for_replicas`](Self::wait_for_replicas) narrows the window.
    /// Cannot be combined with [`node`](Self::node) or
    /// [`sentinel`](Self::sentinel).
    ///
    /// ```no_run
    /// let locks = redlease::LockManager::builder()
    ///     .cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
    ///     .build()?;
    /// # Ok::<(), redlease::Error>(())
    /// ```
    pub fn cluster<A: IntoConnectionInfo>(mut self, seeds: impl IntoIterator<Item = A>) -> Self {
        self.nodes.push(NodeSpec::Cluster(
            seeds
                .into_iter()
                .map(IntoConnectionInfo::into_connection_info)
                .collect(),
        ));
        self
    }

    /// Grants a lock only once `replicas` replicas of each granting node
    /// acknowledged it, waiting at most `wait` (`WAIT replicas wait`, on
    /// the connection that wrote the lock, one more round trip); otherwise
    /// the lock is released and the attempt fails with
    /// [`Error::NotReplicated`] (retryable). Narrows what a failover can
    /// lose (see the README's Sentinel section): a replica promoted after
    /// acknowledging has the lock. Locks are then never handed over
    /// directly to a waiter (the handoff would not wait). Extends and
    /// renewals do not wait. `replicas` from 1; `wait` at least 1 ms.
    /// Defaults to off.
    pub fn wait_for_replicas(mut self, replicas: u32, wait: Duration) -> Self {
        self.replicas = Some((replicas, wait));
        self
    }

    /// How [`lock`](LockManager::lock) waits. Defaults to
    /// [`RetryPolicy::default`]: exponential from 10 ms, capped at 200 ms,
    /// with jitter, for at most 10 s.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Bound on opening a TCP connection to a node, and separately on its
    /// TLS handshake. At least 1 ms; `Duration::MAX` means no bound.
    /// Defaults to 1 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on each write to a node, and on waiting for the replies of one
    /// operation (all nodes share one deadline). Keep it small compared with
    /// your TTLs: a lock is only valid for `ttl - elapsed - drift`. At least
    /// 1 ms; `Duration::MAX` means no bound. Defaults to 100 ms.
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
    /// then the node counts as failed for that operation. Zero means no
    /// wait; `Duration::MAX` means no bound. Defaults to 1 s.
    pub fn pool_wait(mut self, wait: Duration) -> Self {
        self.pool_wait = wait;
        self
    }

    /// Longest TTL accepted by `try_lock`, `lock` and `extend`: the
    /// manager's maximum lease. It bounds how long any key of ours can live
    /// on a server without being renewed, which is what the
    /// [restart quarantine](Self::restart_quarantine) waits out, and it
    /// catches unit mistakes. Locks for long work need no long TTL: see
    /// [`Lock::keep_alive`](crate::Lock::keep_alive). From 10 ms to 365
    /// days. Defaults to 60 s.
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

    /// First come, first served: with `true`, threads and processes waiting
    /// for a key get it in the order they asked (a queue on the server,
    /// beside the key), so no waiter starves; `try_lock` then succeeds only
    /// when no one is queued. A waiter that dies or gives up leaves the
    /// queue within a quarter of a second. Every client of a key must use
    /// fair mode for the order to hold: a plain `SET NX` does not queue.
    /// One node only (`build` refuses more): over independent Redlock
    /// masters the queues can disagree, each node putting a different
    /// waiter first, and no waiter would win a majority; agreeing on one
    /// order takes consensus, which Redlock does not have. Costs a script
    /// with a few sorted-set commands per attempt instead of a `SET`.
    /// Defaults to `false`.
    pub fn fair(mut self, fair: bool) -> Self {
        self.fair = fair;
        self
    }

    /// Longest a kept-alive lock (see [`Lock::keep_alive`]) is renewed,
    /// counted from `keep_alive()`: after that its renewal stops, it is
    /// reported lost, and its key expires by its TTL — so a holder stuck for
    /// good (a deadlocked thread in a live process) does not hold the lock
    /// for ever. [`Lock::keep_alive_for`] sets it per lock. At least 1 ms;
    /// defaults to no cap.
    ///
    /// [`Lock::keep_alive`]: crate::Lock::keep_alive
    /// [`Lock::keep_alive_for`]: crate::Lock::keep_alive_for
    pub fn max_hold(mut self, max: Duration) -> Self {
        self.max_hold = Some(max);
        self
    }

    /// Gives every lock a fencing token ([`Lock::fence`]): each key gets a
    /// counter beside it (`{<key>}:redlease:fence`, or
    /// `<key>:redlease:fence` for a key with a hash tag, so that it shares
    /// the key's Redis Cluster slot; without a TTL: one small key per lock
    /// key ever taken), raised by every acquisition in the same
    /// round trip, by a script instead of a plain `SET NX PX`. Waiters are
    /// woken on release rather than handed the lock directly. Not with
    /// [`fair`](Self::fair) mode. Defaults to `false`.
    ///
    /// [`Lock::fence`]: crate::Lock::fence
    pub fn fencing(mut self, fencing: bool) -> Self {
        self.fencing = fencing;
        self
    }

    /// Keeps a restarted server from granting locks until the manager's
    /// maximum lease ([`max_ttl`](Self::max_ttl), plus its clock-drift
    /// allowance) has passed since it started. A server restarted without
    /// persistence has forgotten the locks it held, and could otherwise
    /// give a second holder a majority; once every key it could have held
    /// has expired everywhere, its vote is safe again. Every connection's
    /// handshake reads the server's uptime (`INFO server`), so restarts are
    /// seen on reconnect, and a server that started recently is quarantined
    /// at `build` too. The quorum size is unchanged: with one node
    /// quarantined of three, the other two must both grant; with a single
    /// node, no lock is granted until the quarantine ends
    /// ([`Error::Quarantined`](crate::Error::Quarantined)). Release and
    /// extend are not affected.
    ///
    /// Every client of the same keys should use the same or a smaller
    /// `max_ttl`. Turn it off for servers that cannot lose acknowledged
    /// writes (`appendonly yes` with `appendfsync always`), or for private
    /// servers known to hold no one's locks (a test's or a demo's freshly
    /// started server). With it on, `build` needs the user to be allowed
    /// `INFO`. Defaults to `true`.
    pub fn restart_quarantine(mut self, on: bool) -> Self {
        self.restart_quarantine = on;
        self
    }

    /// The CA certificate(s), a PEM file, that `rediss://` nodes'
    /// certificates must chain to, instead of the system's roots. Read by
    /// [`build`](Self::build). Needs the `tls` feature.
    #[cfg(feature = "tls")]
    pub fn tls_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// A client certificate chain and its private key (PEM files), for
    /// servers that require one (`tls-auth-clients yes`). Read by
    /// [`build`](Self::build). Needs the `tls` feature.
    #[cfg(feature = "tls")]
    pub fn tls_client_cert(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.tls.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// The name every `rediss://` node's certificate must be valid for,
    /// instead of the host in its address (for nodes reached by IP whose
    /// certificates name a host, say). Needs the `tls` feature.
    #[cfg(feature = "tls")]
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls.server_name = Some(name.into());
        self
    }

    /// A rustls client configuration of your own for `rediss://` nodes, in
    /// place of [`tls_ca_file`](Self::tls_ca_file) and
    /// [`tls_client_cert`](Self::tls_client_cert) (a custom verifier, other
    /// protocol versions, session resumption settings). Needs the `tls`
    /// feature; ties you to redlease's rustls version.
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls.config = Some(config);
        self
    }

    /// Validates the settings and the nodes and, unless
    /// [`connect_lazily`](Self::connect_lazily), connects.
    pub fn build(self) -> Result<LockManager> {
        self.check_settings()?;
        let tls = self.tls_connector()?;
        let seeds = match self.nodes.as_slice() {
            [NodeSpec::Cluster(seeds)] => Some(
                seeds
                    .iter()
                    .enumerate()
                    .map(|(i, seed)| Endpoint::parse(i, seed, tls.as_ref()))
                    .collect::<Result<Vec<_>>>()?,
            ),
            nodes if nodes.iter().any(|n| matches!(n, NodeSpec::Cluster(_))) => {
                return Err(Error::invalid(
                    "a cluster is given once, with all its seeds in one .cluster(..), and not beside .node(..) or .sentinel(..)",
                ));
            }
            _ => None,
        };
        let endpoints = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, node)| match node {
                NodeSpec::Direct(info) => Some(Endpoint::parse(i, info, tls.as_ref())),
                NodeSpec::Sentinel { master, sentinels } => {
                    Some(Endpoint::sentinel(i, master, sentinels, tls.as_ref()))
                }
                NodeSpec::Cluster(_) => None,
            })
            .collect::<Result<Vec<_>>>()?;
        let timeouts = Timeouts {
            connect: self.connect_timeout,
            io: self.io_timeout,
        };
        // The longest any key of ours can outlive a restart elsewhere: the
        // maximum lease and its drift allowance.
        let drift = Duration::from_secs_f64(self.max_ttl.as_secs_f64() * self.drift_factor);
        let pool = NodeConfig {
            max_conns: self.pool_size,
            wait: self.pool_wait,
            quarantine: self
                .restart_quarantine
                .then(|| self.max_ttl + drift + Duration::from_millis(2)),
        };
        if self.fair && self.replicas.is_some() {
            return Err(Error::invalid(
                "fair mode and wait_for_replicas cannot be combined: a fair waiter keeps its token, and WAIT cannot prove a grant that wrote nothing new",
            ));
        }
        if self.fair && endpoints.len() > 1 {
            return Err(Error::invalid(format!(
                "fair mode needs exactly one node, not {}: independent Redlock masters cannot agree on one queue",
                endpoints.len()
            )));
        }
        let route = match seeds {
            Some(seeds) => Route::Cluster(Box::new(Cluster::new(
                seeds,
                timeouts,
                pool,
                self.drift_factor,
                self.replicas,
            )?)),
            None => Route::Quorum(Quorum::new(
                endpoints,
                timeouts,
                pool,
                self.drift_factor,
                self.replicas,
            )?),
        };
        if !self.lazy {
            route.connect(self.preconnect)?;
        }
        let limits = Limits {
            max_ttl: self.max_ttl,
            max_key_len: self.max_key_len,
        };
        Ok(LockManager::new(
            route,
            self.retry,
            limits,
            self.fair,
            self.io_timeout,
            self.max_hold,
            self.fencing,
        ))
    }

    /// The TLS configuration, built when some node asks for TLS; TLS
    /// settings without such a node are a mistake worth saying.
    #[cfg(feature = "tls")]
    fn tls_connector(&self) -> Result<Option<crate::transport::Tls>> {
        if self.nodes.iter().any(|node| match node {
            NodeSpec::Direct(info) => Endpoint::wants_tls(info),
            NodeSpec::Sentinel { master, sentinels } => {
                Endpoint::wants_tls(master) || sentinels.iter().any(Endpoint::wants_tls)
            }
            NodeSpec::Cluster(seeds) => seeds.iter().any(Endpoint::wants_tls),
        }) {
            return self.tls.connector().map(Some);
        }
        if self.tls.is_set() {
            return Err(Error::invalid(
                "tls settings were given, but no node is a rediss:// address",
            ));
        }
        Ok(None)
    }

    #[cfg(not(feature = "tls"))]
    fn tls_connector(&self) -> Result<Option<crate::transport::Tls>> {
        Ok(None)
    }

    fn check_settings(&self) -> Result<()> {
        if let Some((replicas, wait)) = self.replicas {
            if replicas == 0 {
                return Err(Error::invalid(
                    "wait_for_replicas: replicas must be at least 1",
                ));
            }
            if wait < Duration::from_millis(1) || wait > MAX_TTL_CAP {
                return Err(Error::invalid(format!(
                    "wait_for_replicas: wait {wait:?} is outside [1ms, 1 year]"
                )));
            }
        }
        if self.connect_timeout < Duration::from_millis(1) {
            return Err(Error::invalid("connect_timeout must be at least 1ms"));
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
        if self.fair && self.fencing {
            return Err(Error::invalid(
                "fair mode and fencing cannot be combined (yet): choose one",
            ));
        }
        if self
            .max_hold
            .is_some_and(|hold| hold < Duration::from_millis(1))
        {
            return Err(Error::invalid("max_hold must be at least 1ms"));
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
    fn insecure_tls_and_empty_paths_are_refused() {
        let msg = invalid(lazy().node("rediss://127.0.0.1:6380/#insecure"));
        assert!(msg.contains("#insecure is refused"), "{msg}");
        let msg = invalid(lazy().node("unix://"));
        assert!(!msg.is_empty(), "{msg}");
    }

    #[test]
    fn fair_mode_with_wait_for_replicas_is_refused() {
        let msg = invalid(
            lazy()
                .node("redis://127.0.0.1:7000")
                .fair(true)
                .wait_for_replicas(1, Duration::from_millis(10)),
        );
        assert!(msg.contains("fair mode and wait_for_replicas"), "{msg}");
    }

    #[test]
    fn tls_settings_without_a_tls_node_are_refused() {
        let msg = invalid(lazy().tls_server_name("redis.example"));
        assert!(msg.contains("no node is a rediss://"), "{msg}");
        let msg = invalid(
            lazy()
                .node("rediss://127.0.0.1:6380")
                .tls_ca_file("/nonexistent/ca.pem"),
        );
        assert!(msg.contains("/nonexistent/ca.pem"), "{msg}");
        let msg = invalid(
            lazy()
                .node("rediss://127.0.0.1:6380")
                .tls_server_name("not a name!"),
        );
        assert!(msg.contains("tls_server_name"), "{msg}");
    }

    #[test]
    fn unix_and_tls_addresses_are_named_for_errors() {
        let manager = lazy()
            .node("redis+unix:///run/redis/redis.sock?db=2")
            .build()
            .expect("lazy build");
        assert!(
            format!("{manager:?}").contains("unix:/run/redis/redis.sock"),
            "{manager:?}"
        );
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
        let check = |ttl| m.check_ttl(ttl);
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
