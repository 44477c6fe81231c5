//! Where a node is and how to log in: what we keep of a redis-rs
//! `ConnectionInfo`, parsed once when the manager is built.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use redis::{ConnectionAddr, ConnectionInfo};

use crate::error::{Error, Result};

/// A password that never shows up in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One node's address and credentials.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Secret>,
    pub(crate) db: i64,
}

impl Endpoint {
    /// Keeps what we use of the `index`th node's parsed address, refusing
    /// what this version cannot do.
    pub(crate) fn parse(
        index: usize,
        info: &redis::RedisResult<ConnectionInfo>,
    ) -> Result<Endpoint> {
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

    /// `host:port`, with brackets around IPv6 literals: how nodes are named in
    /// errors and logs (no credentials, no database).
    pub(crate) fn name(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether both name the same host and port as written.
    pub(crate) fn same_name(&self, other: &Endpoint) -> bool {
        self.host.eq_ignore_ascii_case(&other.host) && self.port == other.port
    }

    /// Every address the host resolves to now; none if it does not resolve
    /// (which connecting reports, not this).
    pub(crate) fn resolved(&self) -> impl Iterator<Item = SocketAddr> + use<> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .into_iter()
            .flatten()
    }
}

fn tls_unsupported() -> Error {
    Error::Unsupported("tls (rediss://) is not supported yet")
}
