//! Blocking distributed locks on Redis: one node, a Redlock quorum over
//! several independent masters, a master found through Sentinel, or a Redis
//! Cluster (each key on its slot's master), with no async runtime and no
//! heap allocation per lock in steady state.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! let locks = redlease::LockManager::builder()
//!     .node("redis://127.0.0.1:6379") // repeat for a Redlock quorum (3 or 5 nodes)
//!     .build()?;
//!
//! // One attempt: `None` when another owner holds it.
//! if let Some(lock) = locks.try_lock("orders:42", Duration::from_secs(10))? {
//!     // ... critical section; lock.remaining() says how long it stays valid
//!     let still_ours: bool = lock.release()?;
//!     # let _ = still_ours;
//! }
//!
//! // Waits by the retry policy; released when dropped.
//! let mut lock = locks.lock("orders:42", Duration::from_secs(10))?;
//! lock.extend(Duration::from_secs(10))?;
//! drop(lock);
//! # Ok::<(), redlease::Error>(())
//! ```
//!
//! # Guarantees and their limits
//!
//! While [`Lock::remaining`] is above zero, no other client of this crate
//! (or of any correct Redlock implementation) holds the same key, provided
//! the servers' clocks do not jump and a majority of them keep their data:
//! `remaining()` never exceeds the TTL a majority of the nodes could still
//! hold, even after an [`extend`](Lock::extend) whose outcome is unknown.
//! A node restarted without persistence (it forgot its locks) grants nothing
//! until the manager's maximum lease has passed since it started (see
//! [`restart_quarantine`](LockManagerBuilder::restart_quarantine)). Not
//! covered, as with every Redis lock: failover to a replica that had not yet
//! received the key (replication is asynchronous), and a process that pauses
//! (GC, swap, SIGSTOP) past its lock's validity — for that, have the
//! protected resource check [fencing tokens](Lock::fence).
//!
//! # Long work
//!
//! [`Lock::keep_alive`] hands a lock to the manager's keeper thread, which
//! renews it until it is released and reports its loss
//! ([`Lock::is_lost`], [`Lock::wait_lost`], [`Lock::on_lost`]);
//! [`LockManagerBuilder::fencing`] gives every lock a [fence](Lock::fence).
//!
//! # Logging
//!
//! The crate never prints. It logs through the [`log`] facade: a node marked
//! down or back up, a best-effort release on drop that failed, a script sent
//! again after `NOSCRIPT`. Tokens and passwords never appear in log records.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
// The library never prints: it logs through `log`.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod builder;
mod cluster;
mod conn;
mod endpoint;
mod error;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals;
mod keeper;
mod lock;
mod manager;
mod node;
mod observe;
mod primitives;
mod probe;
mod quorum;
mod resp;
mod retry;
mod round;
mod route;
mod script;
mod sentinel;
mod status;
mod subscriber;
mod time;
#[cfg(feature = "tls")]
mod tls;
mod token;
mod transport;
mod wait;

pub use builder::LockManagerBuilder;
pub use error::{Error, Result};
pub use lock::Lock;
pub use manager::LockManager;
pub use primitives::{MultiLock, Permit, ReadLock, RwLock, Semaphore, WriteLock};
pub use retry::RetryPolicy;
pub use status::{NodeStatus, Status};

/// Compiles the README's examples as doctests, so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
