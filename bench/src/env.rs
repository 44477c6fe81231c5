//! Where the workers' locks live: servers the tool starts itself (over TCP,
//! unix sockets or TLS, a Sentinel deployment, or a Redis Cluster) or the
//! nodes it was given; and the manager built over them. Lives for the whole
//! run (every run of `--compare` shares it); embedded servers are stopped
//! by their pids when it is dropped.

use std::time::{Duration, Instant};

use redlease::LockManager;

use crate::support::cluster::Cluster;
use crate::support::sentinel::{self, Deployment};
use crate::support::tls::{Certs, ServerCert};
use crate::support::{self, RedisServer};
use crate::{Options, Transport};

pub struct Env {
    servers: Vec<RedisServer>,
    deployment: Option<Deployment>,
    cluster: Option<Cluster>,
    certs: Option<Certs>,
    /// Lock nodes (empty for Sentinel: the manager finds the master).
    urls: Vec<String>,
    /// Where the workers keep their counters (plain TCP or unix).
    pub counter_url: String,
    /// How the nodes are reached, for the summary.
    pub topology: String,
    pub embedded: bool,
}

impl Env {
    pub fn start(o: &Options) -> Result<Env, String> {
        let embedded = o.urls.is_empty();
        let mut env = Env {
            servers: Vec::new(),
            deployment: None,
            cluster: None,
            certs: (embedded && o.transport == Transport::Tls).then(Certs::make),
            urls: Vec::new(),
            counter_url: String::new(),
            topology: String::new(),
            embedded,
        };
        if let (Some(masters), true) = (o.cluster, embedded) {
            let cluster = Cluster::start(masters as usize, 0);
            env.urls = vec![cluster.seed()];
            // The counters' keys would be spread over the masters: they
            // live on a server of their own.
            let counters = RedisServer::try_start_detached(&[])?;
            env.counter_url = counters.url();
            env.servers.push(counters);
            env.topology = format!("cluster: {masters} masters");
            env.cluster = Some(cluster);
        } else if o.sentinel {
            let d = Deployment::start(1, 3, 5_000);
            env.counter_url = d.servers[0].url();
            env.topology = "sentinel: a master, 1 replica, 3 sentinels".into();
            env.deployment = Some(d);
        } else if embedded {
            for _ in 0..o.nodes {
                let server = match &env.certs {
                    None if o.transport == Transport::Unix => RedisServer::start_unix(),
                    None => RedisServer::try_start_detached(&[])?,
                    Some(certs) => {
                        let args = certs.server_args(support::free_port(), ServerCert::Good, false);
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        RedisServer::try_start_detached(&args)?
                    }
                };
                env.servers.push(server);
            }
            env.urls = env
                .servers
                .iter()
                .map(|s| match o.transport {
                    Transport::Tcp => s.url(),
                    Transport::Unix => s.unix_url(),
                    Transport::Tls => {
                        format!("rediss://localhost:{}", s.tls_port().expect("a tls port"))
                    }
                })
                .collect();
            env.counter_url = env.servers[0].url();
            env.topology = match o.transport {
                Transport::Tcp => "tcp",
                Transport::Unix => "unix socket",
                Transport::Tls => "tls",
            }
            .into();
        } else {
            env.urls = o.urls.clone();
            if o.cluster.is_some() && o.counter_url.is_none() {
                return Err("with --cluster and --url, give --counter-url: a server outside the cluster for the counters".into());
            }
            env.counter_url = o.counter_url.clone().unwrap_or_else(|| o.urls[0].clone());
            if env.counter_url.starts_with("rediss:") {
                return Err(
                    "the counters need a redis:// or unix:// address: give --counter-url".into(),
                );
            }
            env.topology = "given".into();
        }
        Ok(env)
    }

    /// A manager over the nodes, for one run.
    pub fn manager(&self, o: &Options, fair: bool) -> Result<LockManager, String> {
        let mut builder = LockManager::builder();
        if let Some(d) = &self.deployment {
            let master = format!("redis://{}", sentinel::MASTER);
            builder = builder.sentinel(master, d.sentinel_urls());
        }
        if let Some(certs) = &self.certs {
            builder = builder.tls_ca_file(certs.ca());
        } else if let Some(ca) = &o.tls_ca {
            builder = builder.tls_ca_file(ca);
        }
        if let Some(n) = o.wait_replicas {
            builder = builder.wait_for_replicas(n, Duration::from_millis(100));
        }
        builder = if o.cluster.is_some() {
            builder.cluster(self.urls.iter().map(String::as_str))
        } else {
            builder.nodes(self.urls.iter().map(String::as_str))
        };
        builder
            // Servers this run started are fresh and private: no one's
            // locks to protect, so no restart quarantine. Given servers
            // keep it on.
            .restart_quarantine(!self.embedded && !o.no_quarantine)
            // The maximum lease (60 s by default) must admit the TTL.
            .max_ttl(o.ttl.max(Duration::from_secs(60)))
            .pool_size(o.threads.min(1024) as usize)
            .preconnect(o.threads.min(1024) as usize)
            .fair(fair)
            .build()
            .map_err(|e| e.to_string())
    }

    /// The embedded servers' pids (for a second Ctrl-C).
    pub fn pids(&self) -> Vec<u32> {
        self.servers
            .iter()
            .chain(self.deployment.iter().flat_map(|d| &d.servers))
            .chain(self.cluster.iter().flat_map(|c| &c.servers))
            .filter_map(RedisServer::pid)
            .chain(
                self.deployment
                    .iter()
                    .flat_map(|d| d.sentinels.iter().map(sentinel::Sentinel::pid)),
            )
            .collect()
    }

    /// The median of 51 `PING` round trips to the counters' server.
    pub fn round_trip(&self) -> Result<Duration, String> {
        let mut con = redis::Client::open(self.counter_url.as_str())
            .and_then(|c| c.get_connection())
            .map_err(|e| format!("ping connection: {e}"))?;
        let mut times: Vec<Duration> = (0..51)
            .map(|_| {
                let started = Instant::now();
                let _: redis::RedisResult<String> = redis::cmd("PING").query(&mut con);
                started.elapsed()
            })
            .collect();
        times.sort_unstable();
        Ok(times[times.len() / 2])
    }

    pub fn redis_version(&self) -> String {
        let version = || -> Option<String> {
            let mut con = redis::Client::open(self.counter_url.as_str())
                .ok()?
                .get_connection()
                .ok()?;
            let info: String = redis::cmd("INFO").arg("server").query(&mut con).ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .map(|v| v.trim().to_string())
        };
        version().unwrap_or_else(|| "(version unknown)".into())
    }
}
