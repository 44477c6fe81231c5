//! Where a node is and how to log in: what we keep of a redis-rs
//! `ConnectionInfo`, parsed once when the manager is built.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use redis::{ConnectionAddr, ConnectionInfo};

use crate::error::{Error, Result};
use crate::sentinel::Sentinels;
use crate::transport::Tls;

/// A password that never shows up in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a node listens.
#[derive(Debug, Clone)]
pub(crate) enum Addr {
    /// A host name or IP literal, and a port; with the manager's TLS
    /// configuration for `rediss://`.
    Tcp {
        host: String,
        port: u16,
        tls: Option<Tls>,
    },
    /// A unix domain socket (`redis+unix://` or `unix://`).
    Unix(PathBuf),
    /// Whichever server the sentinels name as the master now; with the
    /// manager's TLS configuration if the master is reached over TLS.
    Sentinel {
        sentinels: Arc<Sentinels>,
        tls: Option<Tls>,
    },
}

/// One node's address and credentials.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) addr: Addr,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Secret>,
    pub(crate) db: i64,
}

impl Endpoint {
    /// A plain TCP node without credentials (tests and benches).
    #[cfg(any(test, feature = "internals"))]
    pub(crate) fn tcp(host: &str, port: u16) -> Endpoint {
        Endpoint {
            addr: Addr::Tcp {
                host: host.to_owned(),
                port,
                tls: None,
            },
            username: None,
            password: None,
            db: 0,
        }
    }

    /// A node found through sentinels: `master` is a parsed address whose
    /// host is the master's name (its credentials, database and scheme are
    /// the master's), `sentinels` the sentinels' own addresses.
    pub(crate) fn sentinel(
        index: usize,
        master: &redis::RedisResult<ConnectionInfo>,
        sentinels: &[redis::RedisResult<ConnectionInfo>],
        tls: Option<&Tls>,
    ) -> Result<Endpoint> {
        let named = Endpoint::parse(index, master, tls)?;
        let Addr::Tcp {
            host,
            tls: master_tls,
            ..
        } = named.addr
        else {
            return Err(Error::invalid(format!(
                "node {index}: a sentinel master is named by a redis:// or rediss:// address (redis://[user:password@]NAME[/db])"
            )));
        };
        if sentinels.is_empty() {
            return Err(Error::invalid(format!(
                "node {index} (sentinel master {host:?}): no sentinel given"
            )));
        }
        let sentinels = sentinels
            .iter()
            .map(|s| Endpoint::parse(index, s, tls))
            .collect::<Result<Vec<_>>>()?;
        Ok(Endpoint {
            addr: Addr::Sentinel {
                sentinels: Arc::new(Sentinels::new(host, sentinels)),
                tls: master_tls,
            },
            ..named
        })
    }

    /// Whether the node's server is found through sentinels (and may
    /// change under it).
    pub(crate) fn follows_failover(&self) -> bool {
        matches!(self.addr, Addr::Sentinel { .. })
    }

    /// Whether a parsed address asks for TLS.
    #[cfg(feature = "tls")]
    pub(crate) fn wants_tls(info: &redis::RedisResult<ConnectionInfo>) -> bool {
        matches!(info, Ok(info) if matches!(info.addr(), ConnectionAddr::TcpTls { .. }))
    }

    /// Keeps what we use of the `index`th node's parsed address, refusing
    /// what this build cannot do. `tls` is the manager's TLS configuration,
    /// there when some node asks for TLS.
    pub(crate) fn parse(
        index: usize,
        info: &redis::RedisResult<ConnectionInfo>,
        tls: Option<&Tls>,
    ) -> Result<Endpoint> {
        let info = match info {
            Ok(info) => info,
            // redis-rs refuses rediss:// itself when built without TLS.
            Err(e) if e.to_string().contains("TLS") => return Err(tls_unsupported()),
            // redis-rs's parse errors name the problem, never the password.
            Err(e) => return Err(Error::invalid(format!("node {index}: {e}"))),
        };
        let addr = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Addr::Tcp {
                host: host.clone(),
                port: *port,
                tls: None,
            },
            ConnectionAddr::TcpTls {
                insecure: true,
                host,
                port,
                ..
            } => {
                return Err(Error::invalid(format!(
                    "node {index} ({host}:{port}): #insecure is refused: certificates are always verified; give your CA with tls_ca_file"
                )));
            }
            #[cfg(feature = "tls")]
            ConnectionAddr::TcpTls { host, port, .. } => Addr::Tcp {
                host: host.clone(),
                port: *port,
                tls: Some(tls.cloned().ok_or_else(tls_unsupported)?),
            },
            #[cfg(not(feature = "tls"))]
            ConnectionAddr::TcpTls { .. } => {
                let _ = tls;
                return Err(tls_unsupported());
            }
            ConnectionAddr::Unix(path) => {
                if path.as_os_str().is_empty() {
                    return Err(Error::invalid(format!(
                        "node {index}: empty unix socket path"
                    )));
                }
                Addr::Unix(path.clone())
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
            addr,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(|p| Secret(p.to_owned())),
            db: settings.db(),
        })
    }

    /// The host and port of a TCP address (plain or TLS).
    pub(crate) fn tcp_addr(&self) -> Option<(&str, u16)> {
        match &self.addr {
            Addr::Tcp { host, port, .. } => Some((host, *port)),
            _ => None,
        }
    }

    /// Another server reached as this one is (credentials, TLS, database):
    /// a cluster's node learnt from its topology.
    pub(crate) fn at(&self, host: &str, port: u16) -> Endpoint {
        let mut endpoint = self.clone();
        match &mut endpoint.addr {
            Addr::Tcp {
                host: h, port: p, ..
            } => {
                *h = host.to_owned();
                *p = port;
            }
            other => {
                *other = Addr::Tcp {
                    host: host.to_owned(),
                    port,
                    tls: None,
                }
            }
        }
        endpoint
    }

    /// `host:port` (brackets around IPv6 literals) or `unix:/path`: how
    /// nodes are named in errors and logs (no credentials, no database).
    pub(crate) fn name(&self) -> String {
        match &self.addr {
            Addr::Tcp { host, port, .. } if host.contains(':') => format!("[{host}]:{port}"),
            Addr::Tcp { host, port, .. } => format!("{host}:{port}"),
            Addr::Unix(path) => format!("unix:{}", path.display()),
            Addr::Sentinel { sentinels, .. } => format!("sentinel:{}", sentinels.master),
        }
    }

    /// Whether both name the same place as written (a unix socket also
    /// after resolving links).
    pub(crate) fn same_name(&self, other: &Endpoint) -> bool {
        match (&self.addr, &other.addr) {
            (
                Addr::Tcp { host, port, .. },
                Addr::Tcp {
                    host: h, port: p, ..
                },
            ) => host.eq_ignore_ascii_case(h) && port == p,
            (Addr::Sentinel { sentinels: a, .. }, Addr::Sentinel { sentinels: b, .. }) => {
                a.master == b.master
                    && a.sentinels()
                        .iter()
                        .any(|s| b.sentinels().iter().any(|t| s.same_name(t)))
            }
            (Addr::Unix(a), Addr::Unix(b)) => {
                a == b
                    || matches!(
                        (a.canonicalize(), b.canonicalize()),
                        (Ok(a), Ok(b)) if a == b
                    )
            }
            _ => false,
        }
    }

    /// Every address the host resolves to now; none if it does not resolve
    /// (which connecting reports, not this), nor for a unix socket.
    pub(crate) fn resolved(&self) -> Vec<SocketAddr> {
        match &self.addr {
            Addr::Tcp { host, port, .. } => (host.as_str(), *port)
                .to_socket_addrs()
                .map(Iterator::collect)
                .unwrap_or_default(),
            Addr::Unix(_) | Addr::Sentinel { .. } => Vec::new(),
        }
    }
}

fn tls_unsupported() -> Error {
    Error::Unsupported("tls (rediss://) needs redlease's `tls` cargo feature")
}
