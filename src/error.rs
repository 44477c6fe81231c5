//! The crate's one public error type, and the small allocation-free record of
//! what went wrong on one node ([`Failure`]) that becomes it.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Shorthand for `Result<T, redlease::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong. Not being able to take a lock because
/// someone else holds it is *not* an error for [`try_lock`]: that is
/// `Ok(None)`. It becomes one ([`Error::Held`], [`Error::WaitTimedOut`]) only
/// when [`lock`] runs out of patience.
///
/// Messages are lowercase and never contain passwords or whole lock tokens.
///
/// [`try_lock`]: crate::LockManager::try_lock
/// [`lock`]: crate::LockManager::lock
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A key, a TTL or a builder setting was refused before anything was sent.
    InvalidArgument(Box<str>),
    /// The address asks for something this build cannot do (`rediss://`
    /// without the `tls` feature).
    Unsupported(&'static str),
    /// [`lock`](crate::LockManager::lock) used all the attempts its retry
    /// policy allows; at the last one the lock was held by another owner.
    Held {
        /// Attempts made.
        attempts: u32,
        /// Time spent, sleeping included.
        waited: Duration,
    },
    /// The wait bound ([`RetryPolicy::max_wait`](crate::RetryPolicy::max_wait)
    /// or [`try_lock_for`](crate::LockManager::try_lock_for)'s argument)
    /// passed while the lock was held by another owner.
    WaitTimedOut {
        /// Attempts made.
        attempts: u32,
        /// Time spent, sleeping included.
        waited: Duration,
    },
    /// Too few nodes answered for the outcome to be decided: fewer than a
    /// quorum agreed, and failures (not other owners) made the difference.
    /// Anything this attempt may have written has been cleaned up.
    NoQuorum {
        /// Nodes that agreed (granted, released or extended).
        agreed: usize,
        /// Nodes in the quorum.
        nodes: usize,
        /// The first node failure, for the details.
        cause: Option<Box<Error>>,
    },
    /// A quorum granted the lock, but so slowly that no validity was left
    /// after the clock-drift allowance; the lock was released again.
    ValidityExpired {
        /// Time the attempt took.
        elapsed: Duration,
        /// The TTL asked for.
        ttl: Duration,
    },
    /// A quorum granted the lock, but on too few of its nodes did the
    /// replicas asked for
    /// ([`wait_for_replicas`](crate::LockManagerBuilder::wait_for_replicas))
    /// acknowledge it in time: a failover could lose it, so it was released.
    NotReplicated {
        /// Nodes whose replicas acknowledged.
        acked: usize,
        /// Nodes needed.
        needed: usize,
        /// Replicas asked for, per node.
        replicas: u32,
        /// A node's failure while asking, if any.
        cause: Option<Box<Error>>,
    },
    /// The lock expired or was taken by another owner: it can no longer be
    /// extended. Work protected by it must stop.
    LockLost,
    /// An I/O error talking to a node; the connection was closed.
    Io {
        /// The node, as `host:port`.
        node: Arc<str>,
        /// What the operating system said.
        source: io::Error,
    },
    /// A node did not answer within the configured timeout; the connection
    /// was closed.
    Timeout {
        /// The node, as `host:port`.
        node: Arc<str>,
    },
    /// A node sent something that is not a valid reply to our command; the
    /// connection was closed.
    Protocol {
        /// The node, as `host:port`.
        node: Arc<str>,
        /// What was wrong with it.
        detail: &'static str,
    },
    /// A node answered with an error (`OOM`, `READONLY`, `NOPERM`, `BUSY`…).
    Server {
        /// The node, as `host:port`.
        node: Arc<str>,
        /// The server's own text, possibly shortened.
        message: Box<str>,
    },
    /// `build()` found that the user may not run a command that taking,
    /// renewing or releasing a lock needs (it probes each node once): locks
    /// could be taken but never released. Not retryable.
    Permission {
        /// The node, as `host:port`.
        node: Arc<str>,
        /// What was refused, and the server's own text.
        message: Box<str>,
    },
    /// A node refused our credentials, or wants some and got none.
    Auth {
        /// The node, as `host:port`.
        node: Arc<str>,
        /// The server's own text (it never echoes the password).
        message: Box<str>,
    },
    /// Every pooled connection to a node stayed busy for the whole pool wait.
    PoolTimeout {
        /// The node, as `host:port`.
        node: Arc<str>,
        /// How long we waited.
        waited: Duration,
    },
    /// A node failed recently and is skipped until its reconnect backoff ends.
    NodeDown {
        /// The node, as `host:port`.
        node: Arc<str>,
    },
    /// The node started (restarted) less than the manager's maximum lease
    /// ago: it may have lost locks it held, so it grants no new lock until
    /// `remaining` has passed (see
    /// [`restart_quarantine`](crate::LockManagerBuilder::restart_quarantine)).
    /// Passing: `lock` keeps waiting, and other nodes may make a quorum.
    Quarantined {
        /// The node, as `host:port`.
        node: Arc<str>,
        /// How long it stays quarantined.
        remaining: Duration,
    },
    /// TLS failed on a node: its certificate was refused (unknown issuer,
    /// expired, not valid for the name), or the server refused ours or
    /// wanted one. Not retryable: a setting or a certificate must change.
    Tls {
        /// The node, as `host:port`.
        node: Arc<str>,
        /// rustls's words, with a hint at the setting involved.
        message: Box<str>,
    },
    /// The operating system's random source failed, so no token could be made.
    RandomSource(Box<str>),
    /// A background thread the operation needs (the lease keeper) could
    /// not be started.
    Thread(Box<str>),
}

impl Error {
    /// Whether trying again later can help: true for contention, timeouts,
    /// I/O and quorum failures, and transient server errors (`OOM`, `BUSY`,
    /// `LOADING`, …); false for bad arguments, unsupported addresses,
    /// authentication, permission and TLS failures.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::InvalidArgument(_)
            | Error::Unsupported(_)
            | Error::Auth { .. }
            | Error::Permission { .. }
            | Error::Tls { .. }
            | Error::RandomSource(_)
            | Error::LockLost => false,
            Error::Server { message, .. } => ServerError::of(message.as_bytes()).may_pass(),
            // Retrying cannot help if asking was refused (`WAIT` denied).
            Error::NotReplicated {
                cause: Some(cause), ..
            } => cause.is_retryable(),
            _ => true,
        }
    }

    /// Whether this error means "someone else holds the lock".
    pub fn is_contended(&self) -> bool {
        matches!(self, Error::Held { .. } | Error::WaitTimedOut { .. })
    }

    /// A configuration error, which waiting will not heal: wrong
    /// credentials or permissions, something that is not Redis, certificate
    /// trouble, a bad setting (`build()` fails on these, and reports the
    /// rest of its nodes' failures only as unreachable).
    pub(crate) fn is_configuration(&self) -> bool {
        matches!(
            self,
            Error::Auth { .. }
                | Error::Permission { .. }
                | Error::Protocol { .. }
                | Error::Tls { .. }
                | Error::InvalidArgument(_)
                | Error::RandomSource(_)
        )
    }

    pub(crate) fn invalid(msg: impl Into<Box<str>>) -> Error {
        Error::InvalidArgument(msg.into())
    }
}

/// What a server's error reply means to a lock. Decided here and nowhere
/// else, from the reply's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerError {
    /// `NOSCRIPT`: the server's script cache lost our script; sending its
    /// source fixes it.
    NoScript,
    /// `NOAUTH`, `WRONGPASS`: credentials refused, or missing.
    Auth,
    /// The user may not run a command, directly (`NOPERM … command`) or from
    /// a script ("can't run this command").
    CommandDenied,
    /// The user may not touch this key (`NOPERM … keys`, or from a script).
    KeyDenied,
    /// `ERR unknown command`: renamed away, or a server too old.
    UnknownCommand,
    /// `READONLY`: the server is a replica now (a failover demoted it).
    ReadOnly,
    /// Will not heal by waiting: `WRONGTYPE` and the like.
    Permanent,
    /// May pass: `OOM`, `BUSY`, `LOADING`, `READONLY`, max clients…
    Transient,
}

impl ServerError {
    /// Classifies an error reply's text (without its `-`).
    pub(crate) fn of(text: &[u8]) -> ServerError {
        let has = |needle: &[u8]| text.windows(needle.len()).any(|w| w == needle);
        if text.starts_with(b"NOSCRIPT") {
            ServerError::NoScript
        } else if text.starts_with(b"NOAUTH") || text.starts_with(b"WRONGPASS") {
            ServerError::Auth
        } else if text.starts_with(b"NOPERM")
            || has(b"The user executing the script can't")
            || has(b"ACL failure in script")
        {
            // Redis 6.2, 7.0 and 7.2 word these differently; all name what
            // was refused.
            if has(b"command") && !has(b"keys mentioned") {
                ServerError::CommandDenied
            } else {
                ServerError::KeyDenied
            }
        } else if text.starts_with(b"ERR unknown command") {
            ServerError::UnknownCommand
        } else if text.starts_with(b"READONLY") {
            ServerError::ReadOnly
        } else if text.starts_with(b"WRONGTYPE") || text.starts_with(b"CROSSSLOT") {
            ServerError::Permanent
        } else {
            ServerError::Transient
        }
    }

    /// Whether waiting and trying again can help.
    pub(crate) fn may_pass(self) -> bool {
        matches!(
            self,
            ServerError::Transient | ServerError::NoScript | ServerError::ReadOnly
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(msg) => write!(f, "invalid argument: {msg}"),
            Error::Unsupported(what) => write!(f, "unsupported: {what}"),
            Error::Held { attempts, waited } => write!(
                f,
                "lock held by another owner: gave up after {attempts} attempts in {waited:?}"
            ),
            Error::WaitTimedOut { attempts, waited } => write!(
                f,
                "wait timed out after {waited:?} ({attempts} attempts): lock held by another owner"
            ),
            Error::NoQuorum {
                agreed,
                nodes,
                cause,
            } => {
                write!(
                    f,
                    "no quorum: {agreed} of {nodes} nodes agreed, {} needed",
                    nodes / 2 + 1
                )?;
                if let Some(cause) = cause {
                    write!(f, " (first failure: {cause})")?;
                }
                Ok(())
            }
            Error::ValidityExpired { elapsed, ttl } => write!(
                f,
                "validity expired: the quorum answered after {elapsed:?}, leaving nothing of the {ttl:?} ttl after drift"
            ),
            Error::NotReplicated {
                acked,
                needed,
                replicas,
                cause,
            } => {
                write!(
                    f,
                    "not replicated: the lock needed {replicas} replica(s) to acknowledge it in time on {needed} node(s), and had that on {acked}; it was released"
                )?;
                if let Some(cause) = cause {
                    write!(f, " (first failure: {cause})")?;
                }
                Ok(())
            }
            Error::LockLost => f.write_str("lock lost: it expired or was taken by another owner"),
            Error::Io { node, source } => write!(f, "i/o error on {node}: {source}"),
            Error::Timeout { node } => write!(f, "timed out waiting for {node}"),
            Error::Protocol { node, detail } => write!(f, "protocol error from {node}: {detail}"),
            Error::Server { node, message } => write!(f, "server error from {node}: {message}"),
            Error::Auth { node, message } => {
                write!(f, "authentication failed on {node}: {message}")
            }
            Error::Permission { node, message } => {
                write!(f, "permission denied on {node}: {message}")
            }
            Error::PoolTimeout { node, waited } => write!(
                f,
                "pool exhausted: no free connection to {node} within {waited:?}"
            ),
            Error::NodeDown { node } => write!(
                f,
                "node down: {node} failed recently and is skipped until its reconnect backoff ends"
            ),
            Error::Tls { node, message } => write!(f, "tls failed on {node}: {message}"),
            Error::RandomSource(msg) => write!(f, "random source failed: {msg}"),
            Error::Thread(msg) => f.write_str(msg),
            Error::Quarantined { node, remaining } => write!(
                f,
                "node quarantined: {node} started recently and may have lost the locks it held, so it grants none for {remaining:?} more (the manager's max_ttl since its start; see restart_quarantine)"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::NoQuorum {
                cause: Some(cause), ..
            }
            | Error::NotReplicated {
                cause: Some(cause), ..
            } => Some(&**cause),
            _ => None,
        }
    }
}

/// Longest server error text kept per node failure; longer text is cut.
pub(crate) const SERVER_TEXT_MAX: usize = 120;

/// A server's error message, cut to [`SERVER_TEXT_MAX`] bytes. Shared, so
/// that [`Failure`] stays small (every reply's result is moved through the
/// hot path, and a failure's size is its size), and interned per thread, so
/// that a node that keeps answering with the same error (`OOM` while the
/// others grant, `READONLY` until a failover ends) allocates for its text
/// once, not on every lock: see [`ServerText::new`].
#[derive(Clone)]
pub(crate) struct ServerText(Arc<[u8]>);

/// How many recent error texts each thread keeps for reuse: one per sick
/// node of a 5-node quorum, each with its own steady complaint.
const RECENT_TEXTS: usize = 5;

thread_local! {
    /// The error texts this thread saw last, newest first.
    static RECENT: std::cell::RefCell<[Option<Arc<[u8]>>; RECENT_TEXTS]> =
        const { std::cell::RefCell::new([const { None }; RECENT_TEXTS]) };
}

impl ServerText {
    /// The text of an error reply: the same text seen recently on this
    /// thread is shared (no allocation), a new one is allocated once and
    /// remembered in place of the oldest.
    pub(crate) fn new(text: &[u8]) -> ServerText {
        let text = &text[..text.len().min(SERVER_TEXT_MAX)];
        let intern = |recent: &mut [Option<Arc<[u8]>>; RECENT_TEXTS]| {
            let found = recent.iter().position(|seen| seen.as_deref() == Some(text));
            let shared = match found {
                Some(i) => recent[i].clone().expect("found"),
                None => Arc::from(text),
            };
            // Newest first: what is seen again stays, the oldest goes.
            let end = found.unwrap_or(RECENT_TEXTS - 1);
            recent[..=end].rotate_right(1);
            recent[0] = Some(Arc::clone(&shared));
            shared
        };
        // A thread being torn down (its locals gone) still gets its text.
        let shared = RECENT
            .try_with(|recent| recent.try_borrow_mut().ok().map(|mut r| intern(&mut r)))
            .ok()
            .flatten()
            .unwrap_or_else(|| Arc::from(text));
        ServerText(shared)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn starts_with(&self, prefix: &[u8]) -> bool {
        self.as_bytes().starts_with(prefix)
    }

    /// What the server meant.
    pub(crate) fn kind(&self) -> ServerError {
        ServerError::of(self.as_bytes())
    }

    pub(crate) fn to_boxed_str(&self) -> Box<str> {
        String::from_utf8_lossy(self.as_bytes()).into()
    }
}

/// The text, with anything not UTF-8 replaced (borrowed, not copied, when
/// it is UTF-8 already).
impl fmt::Display for ServerText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl fmt::Debug for ServerText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// What went wrong on one node during one operation. Kept small (three
/// words) and allocation-free in steady state (a server's error text is
/// allocated once per new text, see [`ServerText`]): a quorum with a node
/// down, hung or answering errors does not allocate on every lock just to
/// record the sickness.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The socket failed.
    Io(io::Error),
    /// No reply before the deadline.
    Timeout,
    /// The server closed the connection.
    Closed,
    /// The reply was malformed or of the wrong type.
    Protocol(&'static str),
    /// The server answered with an error.
    Server(ServerText),
    /// The server refused our credentials.
    Auth(ServerText),
    /// The node is in its reconnect backoff.
    Down,
    /// No pooled connection became free in time.
    PoolTimeout(Duration),
    /// The node restarted recently and grants nothing for this long.
    Quarantined(Duration),
    /// The TLS handshake failed, or the session broke (rustls's words).
    /// Only at connect time in practice, so the text may be allocated.
    #[cfg(feature = "tls")]
    Tls(Box<str>),
}

impl Failure {
    /// A server's error reply: credentials problems are told apart because
    /// they are configuration errors, not passing trouble.
    pub(crate) fn from_server(text: &[u8]) -> Failure {
        let text = ServerText::new(text);
        match text.kind() {
            ServerError::Auth => Failure::Auth(text),
            _ => Failure::Server(text),
        }
    }

    /// What a server error reply meant; `None` for other failures.
    pub(crate) fn server_error(&self) -> Option<ServerError> {
        match self {
            Failure::Server(text) | Failure::Auth(text) => Some(text.kind()),
            _ => None,
        }
    }

    /// Whether the connection that saw this failure must be closed. Only a
    /// clean error reply leaves the stream in a known state.
    pub(crate) fn breaks_connection(&self) -> bool {
        !matches!(
            self,
            Failure::Server(_) | Failure::Down | Failure::PoolTimeout(_) | Failure::Quarantined(_)
        )
    }

    /// Whether the failure shows the server had already closed an idle
    /// connection before our request: EOF, reset or broken pipe.
    pub(crate) fn is_disconnect(&self) -> bool {
        match self {
            Failure::Closed => true,
            Failure::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }

    /// The public error, naming the node.
    pub(crate) fn into_error(self, node: &Arc<str>) -> Error {
        let node = Arc::clone(node);
        match self {
            Failure::Io(source) => Error::Io { node, source },
            Failure::Timeout => Error::Timeout { node },
            Failure::Closed => Error::Io {
                node,
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed by the server",
                ),
            },
            Failure::Protocol(detail) => Error::Protocol { node, detail },
            Failure::Server(text) => Error::Server {
                node,
                message: text.to_boxed_str(),
            },
            Failure::Auth(text) => Error::Auth {
                node,
                message: text.to_boxed_str(),
            },
            Failure::Down => Error::NodeDown { node },
            Failure::PoolTimeout(waited) => Error::PoolTimeout { node, waited },
            Failure::Quarantined(remaining) => Error::Quarantined { node, remaining },
            #[cfg(feature = "tls")]
            Failure::Tls(message) => Error::Tls { node, message },
        }
    }
}

/// What went wrong, in words, without the node's name (for `status()`).
/// Writing it allocates nothing of its own but for an I/O error's text, so a
/// node can keep its latest failure in a reused string.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Io(e) => write!(f, "i/o error: {e}"),
            Failure::Timeout => f.write_str("timed out"),
            Failure::Closed => f.write_str("connection closed by the server"),
            Failure::Protocol(detail) => write!(f, "protocol error: {detail}"),
            Failure::Server(text) => write!(f, "server error: {text}"),
            Failure::Auth(text) => write!(f, "authentication failed: {text}"),
            Failure::Down => f.write_str("node down"),
            Failure::PoolTimeout(waited) => write!(f, "pool exhausted for {waited:?}"),
            Failure::Quarantined(left) => write!(f, "quarantined for {left:?} more"),
            #[cfg(feature = "tls")]
            Failure::Tls(message) => write!(f, "tls: {message}"),
        }
    }
}

impl From<crate::resp::ProtocolError> for Failure {
    fn from(e: crate::resp::ProtocolError) -> Failure {
        Failure::Protocol(e.0)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::Timeout,
            #[cfg(feature = "tls")]
            io::ErrorKind::InvalidData => crate::tls::failure_of(&e).unwrap_or(Failure::Io(e)),
            _ => Failure::Io(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Results travel through every call; keep the error small.
    #[test]
    fn error_is_small() {
        assert!(
            std::mem::size_of::<Error>() <= 40,
            "{}",
            std::mem::size_of::<Error>()
        );
        // Every reply's result carries a possible failure through the hot
        // path: 128 bytes of inline text cost a 1-node cycle 190 of its
        // 4,007 instructions (callgrind).
        assert!(
            std::mem::size_of::<Failure>() <= 24,
            "{}",
            std::mem::size_of::<Failure>()
        );
    }

    #[test]
    fn messages_are_lowercase_what_colon_detail() {
        let node: Arc<str> = Arc::from("127.0.0.1:7000");
        let e = Failure::Server(ServerText::new(b"OOM command not allowed")).into_error(&node);
        assert_eq!(
            e.to_string(),
            "server error from 127.0.0.1:7000: OOM command not allowed"
        );
        let e = Error::NoQuorum {
            agreed: 1,
            nodes: 3,
            cause: Some(Box::new(Failure::Timeout.into_error(&node))),
        };
        assert_eq!(
            e.to_string(),
            "no quorum: 1 of 3 nodes agreed, 2 needed (first failure: timed out waiting for 127.0.0.1:7000)"
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn server_text_is_cut_not_refused() {
        let long = [b'x'; 500];
        assert_eq!(ServerText::new(&long).as_bytes().len(), SERVER_TEXT_MAX);
        assert_eq!(ServerText::new(b"BUSY").as_bytes(), b"BUSY");
    }

    /// A text seen again on the same thread is shared, not copied; the
    /// last [`RECENT_TEXTS`] texts are kept, newest first, and a text seen
    /// again is kept longer.
    #[test]
    fn server_texts_are_interned_per_thread() {
        let same = |a: &ServerText, b: &ServerText| Arc::ptr_eq(&a.0, &b.0);
        let texts: Vec<Vec<u8>> = (0..=RECENT_TEXTS)
            .map(|i| format!("OOM number {i}").into_bytes())
            .collect();
        let first = ServerText::new(&texts[0]);
        assert!(same(&first, &ServerText::new(&texts[0])));
        assert_eq!(first.as_bytes(), &texts[0][..]);
        // Fill the rest of the cache, seeing the first again halfway.
        let second = ServerText::new(&texts[1]);
        for text in &texts[2..RECENT_TEXTS - 1] {
            ServerText::new(text);
        }
        assert!(same(&first, &ServerText::new(&texts[0])));
        ServerText::new(&texts[RECENT_TEXTS - 1]);
        ServerText::new(&texts[RECENT_TEXTS]);
        // The first was seen lately, so it stays; the second was the oldest.
        assert!(same(&first, &ServerText::new(&texts[0])));
        assert!(!same(&second, &ServerText::new(&texts[1])));
        // Another thread has its own.
        let elsewhere = std::thread::spawn(|| ServerText::new(b"OOM number 0"))
            .join()
            .unwrap();
        assert!(!same(&first, &elsewhere));
        assert_eq!(first.as_bytes(), elsewhere.as_bytes());
        // Cut texts are interned by what is kept.
        let long = [b'y'; 300];
        assert!(same(
            &ServerText::new(&long),
            &ServerText::new(&long[..200])
        ));
    }

    /// The texts Redis 7.0 sends, each classified as a lock needs it.
    #[test]
    fn server_error_classification() {
        let cases: [(&[u8], ServerError); 11] = [
            (
                b"ERR ACL failure in script: User limited has no permissions to run the 'del' command script: 98b2, on @user_script:1.",
                ServerError::CommandDenied,
            ),
            (
                b"ERR ACL failure in script: No permissions to access a key script: 51c1, on @user_script:1.",
                ServerError::KeyDenied,
            ),
            (b"NOSCRIPT No matching script. Please use EVAL.", ServerError::NoScript),
            (b"WRONGPASS invalid username-password pair or user is disabled.", ServerError::Auth),
            (b"NOAUTH Authentication required.", ServerError::Auth),
            (
                b"NOPERM this user has no permissions to run the 'evalsha' command",
                ServerError::CommandDenied,
            ),
            (
                b"NOPERM this user has no permissions to access one of the keys used as arguments",
                ServerError::KeyDenied,
            ),
            (
                b"ERR The user executing the script can't run this command or subcommand script: 98b2, on @user_script:1.",
                ServerError::CommandDenied,
            ),
            (
                b"ERR The user executing the script can't access at least one of the keys mentioned in the command arguments script: 51c1, on @user_script:1.",
                ServerError::KeyDenied,
            ),
            (b"ERR unknown command 'SCRIPT', with args beginning with: 'LOAD'", ServerError::UnknownCommand),
            (b"OOM command not allowed when used memory > 'maxmemory'.", ServerError::Transient),
        ];
        for (text, kind) in cases {
            assert_eq!(
                ServerError::of(text),
                kind,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        assert!(matches!(
            Failure::from_server(b"WRONGPASS x"),
            Failure::Auth(_)
        ));
        assert!(matches!(
            Failure::from_server(b"BUSY x"),
            Failure::Server(_)
        ));
    }

    #[test]
    fn retryable_classification() {
        let node: Arc<str> = Arc::from("n");
        let server = |m: &[u8]| Failure::Server(ServerText::new(m)).into_error(&node);
        assert!(server(b"OOM command not allowed").is_retryable());
        assert!(server(b"BUSY Redis is busy").is_retryable());
        assert!(!server(b"NOPERM this user has no permissions").is_retryable());
        assert!(!server(b"ERR unknown command 'SCRIPT'").is_retryable());
        assert!(server(b"ERR max number of clients reached").is_retryable());
        assert!(!Error::invalid("key is empty").is_retryable());
        assert!(Failure::Timeout.into_error(&node).is_retryable());
        assert!(
            Error::Held {
                attempts: 1,
                waited: Duration::ZERO
            }
            .is_contended()
        );
    }
}
