//! One pub/sub connection per node, and the thread that reads it: release
//! messages wake this manager's waiters (`wait.rs`).
//!
//! - Started when a key is first waited on, with the node's credentials and
//!   timeouts; it closes itself after [`IDLE_CLOSE`] with no waiter, and is
//!   started again on demand. At most one thread and one connection per node
//!   per manager, however many keys are waited on (a subscription per key,
//!   counted by the waiters table: subscribed by the first waiter,
//!   unsubscribed by the last).
//! - Subscribing writes on the connection from the waiter's thread and
//!   returns; the reader thread sees the confirmation and tells the table,
//!   which wakes the waiter that is waiting for it.
//! - When the connection fails (`CLIENT KILL`, a restart, a cut), every
//!   waiter is woken to look for itself (a release may have been missed),
//!   and the thread reconnects with a backoff (50 ms doubling to 1 s) and
//!   subscribes every key still waited on.
//! - Dropping the manager stops the thread at once (its socket is shut
//!   down); the thread holds nothing that keeps the manager alive.

use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use parking_lot::{Condvar, Mutex};

use crate::conn::{Conn, Timeouts};
use crate::endpoint::Endpoint;
use crate::error::Failure;
use crate::resp::{self, Push, Pushed, ReadBuf, Reply};
use crate::script::WAKE_PREFIX;
use crate::transport::{Reader, Stream, Writer};
use crate::wait::Waiters;

/// Longest key whose channel is subscribed: its messages must fit the read
/// buffer with room to spare. Waiters on longer keys wake at the holder's
/// TTL or the wake cap.
pub(crate) const MAX_WAKE_KEY: usize = 4096;

/// A subscriber with no waiter for this long closes its connection.
pub(crate) const IDLE_CLOSE: Duration = Duration::from_secs(5);

/// How often the reader looks up from a quiet connection (to close it when
/// idle).
const TICK: Duration = Duration::from_secs(1);

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// One node's subscriber; stops its thread when dropped.
pub(crate) struct Subscriber {
    link: Arc<Link>,
}

/// What the subscriber and its thread share.
struct Link {
    /// The node's index in the quorum (its bit in confirmation masks).
    node: usize,
    name: Arc<str>,
    endpoint: Endpoint,
    timeouts: Timeouts,
    waiters: Arc<Waiters>,
    state: Mutex<LinkState>,
    /// Signalled to cut a reconnect backoff short when stopping.
    changed: Condvar,
}

struct LinkState {
    /// The write half of the connection, while connected.
    writer: Option<Writer>,
    /// Commands are encoded here; reused.
    wbuf: BytesMut,
    /// A reader thread exists (connecting, reading, or backing off).
    running: bool,
    stop: bool,
    /// A refusal (NOPERM on the channel) was logged for this connection.
    refusal_logged: bool,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("node", &self.link.name)
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    pub(crate) fn new(
        node: usize,
        name: Arc<str>,
        endpoint: Endpoint,
        timeouts: Timeouts,
        waiters: Arc<Waiters>,
    ) -> Subscriber {
        Subscriber {
            link: Arc::new(Link {
                node,
                name,
                endpoint,
                timeouts,
                waiters,
                state: Mutex::new(LinkState {
                    writer: None,
                    wbuf: BytesMut::with_capacity(MAX_WAKE_KEY + 64),
                    running: false,
                    stop: false,
                    refusal_logged: false,
                }),
                changed: Condvar::new(),
            }),
        }
    }

    /// Asks for `key`'s wake channel. `true` when the request went out now
    /// (a confirmation will follow); `false` when the connection is not up
    /// (its thread subscribes every waited-on key once it connects) or the
    /// key is too long to listen for. Called under the waiters table's lock.
    pub(crate) fn subscribe(&self, key: &[u8]) -> bool {
        if key.len() > MAX_WAKE_KEY {
            return false;
        }
        let mut state = self.link.state.lock();
        if state.stop {
            return false;
        }
        if !state.running {
            let link = Arc::clone(&self.link);
            match thread::Builder::new()
                .name("redlease-subscriber".into())
                .spawn(move || run(&link))
            {
                Ok(_) => state.running = true,
                Err(e) => log::warn!(
                    "redlease: cannot start a subscriber thread for {}: {e}",
                    self.link.name
                ),
            }
            return false;
        }
        state.send(b"SUBSCRIBE", key)
    }

    /// Drops `key`'s wake channel. Called under the waiters table's lock.
    pub(crate) fn unsubscribe(&self, key: &[u8]) {
        if key.len() <= MAX_WAKE_KEY {
            self.link.state.lock().send(b"UNSUBSCRIBE", key);
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let mut state = self.link.state.lock();
        state.stop = true;
        if let Some(writer) = state.writer.take() {
            // Unblocks the reader at once.
            writer.shutdown();
        }
        drop(state);
        self.link.changed.notify_all();
    }
}

impl LinkState {
    /// Writes `verb <channel of key>`; on failure the connection is shut
    /// down, and the reader reconnects.
    fn send(&mut self, verb: &[u8], key: &[u8]) -> bool {
        let Some(writer) = &mut self.writer else {
            return false;
        };
        self.wbuf.clear();
        self.wbuf.put_slice(b"*2\r\n");
        resp::put_bulk(&mut self.wbuf, verb);
        self.wbuf.put_u8(b'$');
        self.wbuf.put_slice(
            itoa::Buffer::new()
                .format(WAKE_PREFIX.len() + key.len())
                .as_bytes(),
        );
        self.wbuf.put_slice(b"\r\n");
        self.wbuf.put_slice(WAKE_PREFIX);
        self.wbuf.put_slice(key);
        self.wbuf.put_slice(b"\r\n");
        if writer.write_all(&self.wbuf).is_ok() {
            return true;
        }
        writer.shutdown();
        self.writer = None;
        false
    }
}

/// The reader thread: connect, subscribe what is waited on, read; on
/// failure reconnect after a backoff; end when stopped or idle.
fn run(link: &Link) {
    let mut backoff = BACKOFF_MIN;
    let mut rbuf = ReadBuf::new();
    loop {
        match Conn::connect(&link.endpoint, link.timeouts).map(Conn::into_stream) {
            Ok(stream) => {
                backoff = BACKOFF_MIN;
                if let Some(reader) = install(link, stream) {
                    match read(link, reader, &mut rbuf) {
                        // Already marked not running, under the table's
                        // lock: a new thread may own the link by now.
                        Ended::Idle => return,
                        Ended::Stopped => {}
                        Ended::Failed(failure) => {
                            log::debug!(
                                "redlease: subscriber to {} failed: {failure:?}",
                                link.name
                            );
                        }
                    }
                }
                link.state.lock().writer = None;
                // Messages may have been missed while the link was down.
                link.waiters.lost(link.node);
            }
            Err(failure) => {
                log::debug!(
                    "redlease: subscriber cannot connect to {}: {failure:?}",
                    link.name
                );
            }
        }
        if link.waiters.if_idle(|| link.state.lock().running = false) {
            // As above: the link may be another thread's from now on.
            return;
        }
        let mut state = link.state.lock();
        if state.stop {
            state.running = false;
            return;
        }
        link.changed.wait_for(&mut state, backoff);
        if state.stop {
            state.running = false;
            return;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Puts a new connection in place and subscribes every key waited on, in
/// order with the waiters' own (un)subscriptions; returns the read half.
fn install(link: &Link, stream: Stream) -> Option<Reader> {
    let (reader, writer) = stream.split(TICK).ok()?;
    link.waiters.with_keys(|keys| {
        let mut state = link.state.lock();
        if state.stop {
            return None;
        }
        state.writer = Some(writer);
        state.refusal_logged = false;
        for key in keys.filter(|k| k.len() <= MAX_WAKE_KEY) {
            state.send(b"SUBSCRIBE", key);
        }
        state.writer.is_some().then_some(reader)
    })
}

/// Why reading stopped.
#[derive(Debug)]
enum Ended {
    Stopped,
    Idle,
    Failed(Failure),
}

/// Reads pushes until the connection fails, the subscriber is stopped, or
/// no one has waited for [`IDLE_CLOSE`].
fn read(link: &Link, mut stream: Reader, rbuf: &mut ReadBuf) -> Ended {
    let mut busy = Instant::now();
    loop {
        loop {
            match rbuf.take_push(|pushed| handle(link, pushed)) {
                Ok(Some(())) => {}
                Ok(None) => break,
                Err(e) => return Ended::Failed(e.into()),
            }
        }
        let spare = match rbuf.spare() {
            Ok(spare) => spare,
            Err(e) => return Ended::Failed(e.into()),
        };
        match stream.read(spare) {
            Ok(0) => return Ended::Failed(Failure::Closed),
            Ok(n) => rbuf.filled(n),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if link.state.lock().stop {
                    return Ended::Stopped;
                }
                if !link.waiters.is_idle() {
                    busy = Instant::now();
                } else if busy.elapsed() >= IDLE_CLOSE {
                    // Closed for idleness only if still idle under the
                    // table's lock: a waiter arriving now finds no writer
                    // and no thread, and starts a new one.
                    let closed = link.waiters.if_idle(|| {
                        let mut state = link.state.lock();
                        state.writer = None;
                        state.running = false;
                    });
                    if closed {
                        return Ended::Idle;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if link.state.lock().stop {
                    return Ended::Stopped;
                }
                return Ended::Failed(e.into());
            }
        }
    }
}

/// One push: a release wakes the key's waiters; a confirmation tells them
/// they are listening.
fn handle(link: &Link, pushed: Pushed<'_>) {
    match pushed {
        Pushed::Push(Push {
            kind,
            channel,
            payload,
        }) => {
            let Some(key) = channel.strip_prefix(WAKE_PREFIX) else {
                return;
            };
            match kind {
                b"message" => {
                    let prefix = match payload {
                        Reply::Bulk(prefix) => prefix,
                        _ => b"",
                    };
                    link.waiters.message(key, prefix);
                }
                b"subscribe" => link.waiters.confirmed(key, link.node),
                _ => {}
            }
        }
        Pushed::Other(Reply::Error(text)) => {
            let mut state = link.state.lock();
            if !std::mem::replace(&mut state.refusal_logged, true) {
                log::warn!(
                    "redlease: {} refused a wake-up subscription ({}); waiters there wake at the holder's ttl or the wake cap",
                    link.name,
                    String::from_utf8_lossy(text)
                );
            }
        }
        Pushed::Other(_) => {}
    }
}
