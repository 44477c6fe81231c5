//! [`Status`]: what [`LockManager::status`](crate::LockManager::status)
//! tells an operator, node by node, for a health endpoint or a log line.

use std::fmt;
use std::time::Duration;

/// The manager's view of its nodes, taken now.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Status {
    /// One entry per node, in the order they were given.
    pub nodes: Vec<NodeStatus>,
    /// Nodes that must grant a lock: a strict majority.
    pub quorum: usize,
}

/// One node's health.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeStatus {
    /// `host:port`, `unix:/path` or `sentinel:name`: as errors name it.
    pub name: String,
    /// Not in a reconnect backoff after a failure. A node that is up may
    /// still be [`quarantined`](Self::quarantined).
    pub up: bool,
    /// How long it has been up, or down (since the manager was built, if it
    /// never changed).
    pub since: Duration,
    /// The latest failure seen on it, and how long ago (failures are noted
    /// at most once a second).
    pub last_error: Option<(String, Duration)>,
    /// How long it still grants no lock after a restart.
    pub quarantined: Option<Duration>,
    /// A `PING` round trip measured by this call; `None` if it failed or
    /// the node is down.
    pub round_trip: Option<Duration>,
    /// Connections open, and of those idle in the pool.
    pub connections: usize,
    /// See [`connections`](Self::connections).
    pub idle: usize,
}

impl NodeStatus {
    /// Up and not quarantined: it can grant locks.
    pub fn can_grant(&self) -> bool {
        self.up && self.quarantined.is_none()
    }
}

impl Status {
    /// Whether enough nodes can grant locks to make a quorum.
    pub fn healthy(&self) -> bool {
        self.nodes.iter().filter(|n| n.can_grant()).count() >= self.quorum
    }
}

impl fmt::Display for Status {
    /// One line per node:
    /// `127.0.0.1:6379 up 12.5s rtt 48µs conns 3/2 idle`, then what is
    /// wrong, if anything.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({} of {} nodes can grant, {} needed)",
            if self.healthy() {
                "healthy"
            } else {
                "UNHEALTHY"
            },
            self.nodes.iter().filter(|n| n.can_grant()).count(),
            self.nodes.len(),
            self.quorum
        )?;
        for node in &self.nodes {
            write!(
                f,
                "  {} {} for {:.1?}",
                node.name,
                if node.up { "up" } else { "DOWN" },
                node.since
            )?;
            if let Some(rtt) = node.round_trip {
                write!(f, ", rtt {rtt:.0?}")?;
            }
            write!(f, ", {} conns ({} idle)", node.connections, node.idle)?;
            if let Some(left) = node.quarantined {
                write!(f, ", quarantined {left:.1?} more")?;
            }
            if let Some((error, ago)) = &node.last_error {
                write!(f, ", last error {ago:.1?} ago: {error}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
