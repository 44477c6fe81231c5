//! Redis Sentinel: which server is a named master now.
//!
//! A node given by [`sentinel`](crate::LockManagerBuilder::sentinel) has no
//! fixed address: every new connection first asks the sentinels, in the
//! order given (the one that answered last goes first), for the master's
//! address (`SENTINEL get-master-addr-by-name`), connects there, and its
//! handshake checks with `ROLE` that the server is a master indeed (a
//! sentinel may lag behind a failover). A failover is followed by the
//! connections that see it: a connection to the old master fails (it died)
//! or answers `READONLY` (it was demoted), its siblings are closed with it,
//! and the request goes again once on a new connection, that is, to the
//! master the sentinels name now. And a [`Watch`] listens to the
//! sentinels' `+switch-master` announcements, so that connections to a
//! demoted master that still takes writes are closed at once.

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use parking_lot::Mutex;

use crate::conn::{Timeouts, encode_auth};
use crate::endpoint::Endpoint;
use crate::error::{Failure, ServerText};
use crate::resp::{self, Push, Pushed, ReadBuf, Reply};
use crate::time;
use crate::transport::Stream;

/// A master known by name to a set of sentinels.
#[derive(Debug)]
pub(crate) struct Sentinels {
    pub(crate) master: String,
    sentinels: Vec<Endpoint>,
    /// The sentinel that answered last; asked first next time.
    first: Mutex<usize>,
    /// The master's address as the latest `+switch-master` announced it:
    /// a sentinel that still names another one lags behind, and is not
    /// believed.
    announced: Mutex<Option<(String, u16)>>,
}

impl Sentinels {
    pub(crate) fn new(master: String, sentinels: Vec<Endpoint>) -> Sentinels {
        Sentinels {
            master,
            sentinels,
            first: Mutex::new(0),
            announced: Mutex::new(None),
        }
    }

    pub(crate) fn sentinels(&self) -> &[Endpoint] {
        &self.sentinels
    }

    /// The master's address as the first sentinel that knows it says,
    /// asking them in turn within one connect timeout in all.
    pub(crate) fn master_addr(
        &self,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<(String, u16), Failure> {
        let n = self.sentinels.len();
        let first = *self.first.lock();
        // "No such master" outranks a later sentinel's silence: it is the
        // answer that tells the user something.
        let mut unknown = None;
        let mut last = None;
        // All the sentinels together get one connect timeout, not one each.
        let deadline = time::deadline_in(connect_timeout);
        for k in 0..n {
            let i = (first + k) % n;
            let left = deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(1) {
                last = Some(Failure::Timeout);
                break;
            }
            match ask(
                &self.sentinels[i],
                &self.master,
                connect_timeout.min(left),
                io_timeout.min(left),
            ) {
                Ok(Some(addr)) => {
                    let announced = self.announced.lock().clone();
                    if announced.as_ref().is_some_and(|a| *a != addr) {
                        log::debug!(
                            "redlease: sentinel {} still names {}:{} for {}, not the announced new master",
                            self.sentinels[i].name(),
                            addr.0,
                            addr.1,
                            self.master
                        );
                        continue;
                    }
                    *self.first.lock() = i;
                    return Ok(addr);
                }
                Ok(None) => {
                    unknown.get_or_insert_with(|| {
                        Failure::Server(ServerText::new(
                            format!(
                                "no sentinel knows a master named {:?} (SENTINEL get-master-addr-by-name answered nil)",
                                self.master
                            )
                            .as_bytes(),
                        ))
                    });
                }
                Err(failure) => {
                    log::debug!(
                        "redlease: sentinel {} did not answer: {failure:?}",
                        self.sentinels[i].name()
                    );
                    last = Some(failure);
                }
            }
        }
        // Every sentinel lags behind the announcement: go by it.
        if let Some(announced) = self.announced.lock().clone() {
            return Ok(announced);
        }
        Err(unknown
            .or(last)
            .unwrap_or(Failure::Protocol("no sentinel given")))
    }
}

/// One sentinel's answer: the master's address, or `None` if it does not
/// know the name.
fn ask(
    sentinel: &Endpoint,
    master: &str,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> Result<Option<(String, u16)>, Failure> {
    let mut stream = Stream::open(sentinel, connect_timeout, io_timeout)?;
    let mut request = BytesMut::with_capacity(128);
    let mut replies = 1;
    if encode_auth(&mut request, sentinel) {
        replies += 1;
    }
    resp::encode(
        &mut request,
        &[b"SENTINEL", b"get-master-addr-by-name", master.as_bytes()],
    );
    stream.write_all(&request)?;
    let deadline = time::deadline_in(io_timeout);
    let mut rbuf = ReadBuf::new();
    let mut answer = None;
    while replies > 0 {
        let taken = rbuf.take_raw(&mut |reply, raw| match reply {
            Reply::Error(text) => Err(Failure::from_server(text)),
            Reply::Nil => Ok(None),
            Reply::Simple(_) => Ok(None),
            Reply::Array(2) => {
                let items = resp::items(raw).unwrap_or_default();
                match items.as_slice() {
                    [Reply::Bulk(host), Reply::Bulk(port)] => {
                        let host = std::str::from_utf8(host).ok();
                        let port = std::str::from_utf8(port).ok().and_then(|p| p.parse().ok());
                        match (host, port) {
                            (Some(host), Some(port)) => Ok(Some((host.to_owned(), port))),
                            _ => Err(Failure::Protocol("sentinel sent a malformed address")),
                        }
                    }
                    _ => Err(Failure::Protocol("sentinel sent a malformed address")),
                }
            }
            _ => Err(Failure::Protocol("unexpected reply from a sentinel")),
        })?;
        match taken {
            Some(result) => {
                replies -= 1;
                // AUTH's +OK is `None`; the last reply is the answer.
                answer = result?;
            }
            None => {
                if std::time::Instant::now() >= deadline {
                    return Err(Failure::Timeout);
                }
                let spare = rbuf.spare()?;
                let n = match stream.read(spare) {
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    other => other?,
                };
                if n == 0 {
                    return Err(Failure::Closed);
                }
                rbuf.filled(n);
            }
        }
    }
    Ok(answer)
}

/// Watches the sentinels' `+switch-master` channel for one master, in a
/// thread of its own, and counts the switches: the node closes the
/// connections it opened before the latest (see `Node::checkout`). Without
/// it, a master demoted by a forced failover keeps taking writes until the
/// sentinels get round to reconfiguring it (up to their 10 s info period).
/// The thread ends within a second of the watch being dropped.
#[derive(Debug)]
pub(crate) struct Watch {
    epoch: Arc<AtomicU64>,
}

/// How often the watching thread looks up from a quiet subscription.
const WATCH_TICK: Duration = Duration::from_secs(1);

impl Watch {
    pub(crate) fn start(sentinels: Arc<Sentinels>, timeouts: Timeouts) -> Watch {
        let epoch = Arc::new(AtomicU64::new(0));
        let weak = Arc::downgrade(&epoch);
        let spawned = thread::Builder::new()
            .name("redlease-sentinel".into())
            .spawn(move || watch(&weak, &sentinels, timeouts));
        if let Err(e) = spawned {
            // Failovers are still followed, on READONLY and lost
            // connections.
            log::warn!("redlease: cannot start a sentinel watch thread: {e}");
        }
        Watch { epoch }
    }

    /// Switches seen so far (and reconnects of the watch, which may have
    /// missed one).
    #[inline]
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

fn watch(epoch: &Weak<AtomicU64>, sentinels: &Sentinels, timeouts: Timeouts) {
    let mut next = *sentinels.first.lock();
    let mut listened_before = false;
    let mut refusal_logged = false;
    while epoch.strong_count() > 0 {
        let sentinel = &sentinels.sentinels[next % sentinels.sentinels.len()];
        let mut pause = Duration::from_millis(200);
        match subscribe(sentinel, timeouts) {
            Ok(mut stream) => {
                let ended = listen(
                    &mut stream,
                    epoch,
                    sentinels,
                    timeouts,
                    &mut listened_before,
                );
                if ended.server_error().is_some() {
                    // Refused (an ACL without the channel): the node still
                    // follows failovers by READONLY and lost connections.
                    if !std::mem::replace(&mut refusal_logged, true) {
                        log::warn!(
                            "redlease: sentinel {} refused +switch-master ({}); failovers are seen later, by READONLY or lost connections",
                            sentinel.name(),
                            ended
                        );
                    }
                    pause = Duration::from_secs(5);
                } else {
                    log::debug!(
                        "redlease: sentinel watch on {} ended: {ended:?}",
                        sentinel.name()
                    );
                }
            }
            Err(failure) => log::debug!(
                "redlease: cannot watch sentinel {}: {failure:?}",
                sentinel.name()
            ),
        }
        next += 1;
        thread::sleep(pause);
    }
}

fn bump(epoch: &Weak<AtomicU64>) {
    if let Some(epoch) = epoch.upgrade() {
        epoch.fetch_add(1, Ordering::Release);
    }
}

/// A connection to `sentinel` subscribed to `+switch-master`.
fn subscribe(sentinel: &Endpoint, timeouts: Timeouts) -> Result<Stream, Failure> {
    let mut stream = Stream::open(sentinel, timeouts.connect, timeouts.io)?;
    let mut request = BytesMut::with_capacity(128);
    encode_auth(&mut request, sentinel);
    resp::encode(&mut request, &[b"SUBSCRIBE", b"+switch-master"]);
    stream.write_all(&request)?;
    stream.set_read_timeout(WATCH_TICK)?;
    Ok(stream)
}

/// How long a quiet subscription goes before the watch checks its
/// sentinel is alive (a `PING`, answered within the I/O timeout).
const PING_AFTER: Duration = Duration::from_secs(5);

/// Reads pushes until the connection fails, the sentinel goes silent, or
/// the watch is dropped. A switch of our master records the announced
/// address and bumps the epoch. Once subscribed again after an earlier
/// subscription (`listened_before`), the epoch is bumped too: a switch may
/// have passed unheard.
fn listen(
    stream: &mut Stream,
    epoch: &Weak<AtomicU64>,
    sentinels: &Sentinels,
    timeouts: Timeouts,
    listened_before: &mut bool,
) -> Failure {
    let master = sentinels.master.as_bytes();
    let mut rbuf = ReadBuf::new();
    let mut heard = Instant::now();
    let mut pinged: Option<Instant> = None;
    loop {
        loop {
            let taken = rbuf.take_push(|pushed| match pushed {
                Pushed::Push(Push {
                    kind: b"message",
                    payload: Reply::Bulk(text),
                    ..
                }) => {
                    // "<name> <old ip> <old port> <new ip> <new port>"
                    let words: Vec<&[u8]> = text.split(|&b| b == b' ').collect();
                    if let [name, _, _, ip, port] = words[..]
                        && name == master
                    {
                        log::info!(
                            "redlease: sentinel reports a new master for {}: {}",
                            sentinels.master,
                            String::from_utf8_lossy(text)
                        );
                        let port = std::str::from_utf8(port).ok().and_then(|p| p.parse().ok());
                        *sentinels.announced.lock() =
                            port.map(|port| (String::from_utf8_lossy(ip).into_owned(), port));
                        bump(epoch);
                    }
                    None
                }
                Pushed::Push(Push {
                    kind: b"subscribe", ..
                }) => {
                    if std::mem::replace(listened_before, true) {
                        *sentinels.announced.lock() = None;
                        bump(epoch);
                    }
                    None
                }
                Pushed::Other(Reply::Error(text)) => Some(Failure::from_server(text)),
                _ => None,
            });
            match taken {
                Ok(Some(None)) => {}
                Ok(Some(Some(failure))) => return failure,
                Ok(None) => break,
                Err(e) => return e.into(),
            }
        }
        let spare = match rbuf.spare() {
            Ok(spare) => spare,
            Err(e) => return e.into(),
        };
        match stream.read(spare) {
            Ok(0) => return Failure::Closed,
            Ok(n) => {
                rbuf.filled(n);
                heard = Instant::now();
                pinged = None;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if epoch.strong_count() == 0 {
                    return Failure::Closed;
                }
                match pinged {
                    Some(at) if at.elapsed() > timeouts.io + WATCH_TICK => {
                        return Failure::Timeout;
                    }
                    Some(_) => {}
                    None if heard.elapsed() >= PING_AFTER => {
                        let mut ping = BytesMut::with_capacity(16);
                        resp::encode(&mut ping, &[b"PING"]);
                        if let Err(e) = stream.write_all(&ping) {
                            return e.into();
                        }
                        pinged = Some(Instant::now());
                    }
                    None => {}
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return e.into(),
        }
    }
}
