//! One blocking connection to a Redis node (TCP, unix socket or TLS): the handshake, timeouts, and
//! the two buffers it owns and reuses for its whole life.
//!
//! Rules that keep a lock library honest:
//! - `TCP_NODELAY` is on, and each request goes out in one `write` call.
//! - A connection that saw a timeout, an I/O error or a malformed reply is
//!   marked broken and closed by the pool, never reused: its stream may hold a
//!   late reply that would be read as the answer to the next command.
//! - Reads wait until one shared deadline, so an operation over several nodes
//!   is bounded by one timeout, not one per node.
//!
//! The connection owns its broken/healthy state: it marks itself broken on
//! any failure it sees, and on a reply that breaks the stream's framing or
//! type expectations. The pool only asks [`Conn::is_clean`].

use std::fmt;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use smallvec::SmallVec;

use crate::endpoint::Endpoint;
use crate::error::{Failure, ServerError, ServerText};
use crate::resp::{self, ReadBuf, Reply};
use crate::script::{self, SCRIPTS};
use crate::time::{self, Deadline};
use crate::transport::Stream;

/// Write buffer capacity reserved at connect: fits every lock command for
/// keys far beyond the 64 bytes the zero-allocation promise covers.
const WRITE_CAPACITY: usize = 1024;

/// How far the socket's read timeout may differ from the time left before the
/// deadline without being reset. Resetting costs a system call, so the common
/// case (reply well before the deadline) makes none; a read can overrun the
/// deadline by at most this much.
const TIMEOUT_SLACK: Duration = Duration::from_millis(1);

/// Per-connection timeouts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// Bound on establishing the TCP connection, per resolved address, and
    /// on the TLS handshake.
    pub(crate) connect: Duration,
    /// Bound on each write, and on waiting for each operation's replies.
    pub(crate) io: Duration,
}

/// A live connection with its buffers.
pub(crate) struct Conn {
    stream: Stream,
    /// Requests are encoded here, then written in one call. Cleared, never
    /// freed, between uses.
    wbuf: BytesMut,
    /// Replies are read here. Fixed size: replies to our commands are tiny,
    /// and a fixed buffer is also the cap on what a hostile server can make
    /// us hold.
    rbuf: ReadBuf,
    /// The read timeout currently set on the socket.
    read_timeout: Duration,
    /// Set on any failure that leaves the stream in an unknown state.
    broken: bool,
    /// Whether this connection sat idle in the pool before its current use:
    /// the server may have closed it meanwhile.
    reused: bool,
    /// Whether any reply byte arrived since the last request was sent.
    got_reply_bytes: bool,
    /// Time left until the reply deadline, as the sender knew it, while
    /// nothing has waited since: set by a send that went out at once, taken
    /// by the next read (see [`send_with_time_left`](Self::send_with_time_left)).
    left_at_send: Option<Duration>,
    /// Replies the server owes us: requests sent minus replies read. Only
    /// a connection that owes nothing goes back to the pool.
    owed: u32,
    /// The server's uptime as its `INFO` told the handshake, and when we
    /// had the reply; `None` when it would not say.
    uptime: Option<Uptime>,
    /// The server's `run_id` (new at every start), if it said.
    run_id: Option<[u8; 40]>,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("stream", &self.stream)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects, then logs in, selects the database and loads both scripts,
    /// all in one round trip.
    pub(crate) fn connect(endpoint: &Endpoint, timeouts: Timeouts) -> Result<Conn, Failure> {
        let stream = Stream::open(endpoint, timeouts.connect, timeouts.io)?;
        let mut conn = Conn::over(stream, timeouts.io);
        conn.handshake(endpoint, timeouts.io)?;
        Ok(conn)
    }

    /// A connection over an open `stream` whose read timeout is
    /// `read_timeout`, before any handshake.
    fn over(stream: Stream, read_timeout: Duration) -> Conn {
        Conn {
            stream,
            wbuf: BytesMut::with_capacity(WRITE_CAPACITY),
            rbuf: ReadBuf::new(),
            read_timeout,
            broken: false,
            reused: false,
            got_reply_bytes: false,
            left_at_send: None,
            owed: 0,
            uptime: None,
            run_id: None,
        }
    }

    /// How long the server had been up (since it last started) when the
    /// handshake asked, if it said.
    pub(crate) fn server_uptime(&self) -> Option<Uptime> {
        self.uptime
    }

    /// Which server this is (its `run_id`), if it said.
    pub(crate) fn server_run_id(&self) -> Option<[u8; 40]> {
        self.run_id
    }

    fn handshake(&mut self, endpoint: &Endpoint, io_timeout: Duration) -> Result<(), Failure> {
        // SCRIPT LOAD for each script, INFO server (when the server
        // started, for the restart quarantine) and PING, plus AUTH and
        // SELECT when configured.
        let mut commands = SCRIPTS.all().len() as u32 + 2;
        if encode_auth(&mut self.wbuf, endpoint) {
            commands += 1;
        }
        if endpoint.db != 0 {
            commands += 1;
            let mut num = itoa::Buffer::new();
            resp::encode(
                &mut self.wbuf,
                &[b"SELECT", num.format(endpoint.db).as_bytes()],
            );
        }
        script::encode_load(&mut self.wbuf);
        // A server the sentinels named may have been demoted since.
        let check_role = endpoint.follows_failover();
        if check_role {
            commands += 1;
            resp::encode(&mut self.wbuf, &[b"ROLE"]);
        }
        resp::encode(&mut self.wbuf, &[b"INFO", b"server"]);
        resp::encode(&mut self.wbuf, &[b"PING"]);
        // A server that refuses us outright (maxclients) writes its reason
        // and closes: our write may then fail, but the reason is still there
        // to read, and it is what the user needs to see.
        let sent = self.send_many(commands);
        if let Err(failure) = &sent
            && !failure.is_disconnect()
        {
            return Err(self.fail(sent.unwrap_err()));
        }

        let deadline = time::deadline_in(io_timeout).into();
        let mut expected: SmallVec<[Handshake; 8]> = SmallVec::new();
        if endpoint.password.is_some() {
            expected.push(Handshake::Ok);
        }
        if endpoint.db != 0 {
            expected.push(Handshake::Ok);
        }
        expected.extend(SCRIPTS.all().map(|script| Handshake::Loaded(&script.sha)));
        if check_role {
            expected.push(Handshake::Role);
        }
        expected.push(Handshake::Info);
        expected.push(Handshake::Pong);
        // Read every reply even after a failure, so that the first failure
        // reported is the root cause (a bad AUTH, not the NOAUTH after it);
        // stop at the first transport failure.
        let mut first_failure = None;
        let mut info = ServerInfo::default();
        for step in expected {
            match self.recv_next_raw(deadline, |reply, raw| step.check(reply, raw, &mut info)) {
                Ok(Ok(())) => {}
                Ok(Err(failure)) => {
                    first_failure.get_or_insert(failure);
                }
                Err(failure) => {
                    first_failure.get_or_insert(failure);
                    break;
                }
            }
        }
        match (first_failure, sent) {
            // The server's own words come first, then the socket's.
            (Some(failure @ (Failure::Server(_) | Failure::Auth(_))), _) => Err(self.fail(failure)),
            (_, Err(failure)) => Err(self.fail(failure)),
            (Some(failure), Ok(())) => Err(self.fail(failure)),
            (None, Ok(())) => {
                let seen_at = Instant::now();
                self.run_id = info.run_id;
                self.uptime = info.uptime_s.map(|up| Uptime {
                    // Redis subtracts two wall-clock seconds, each
                    // truncated: the figure may overstate the uptime by up
                    // to a second. A second less never does.
                    up: Duration::from_secs(up.saturating_sub(1)),
                    seen_at,
                });
                Ok(())
            }
        }
    }

    /// The stream, once the handshake is done, for a connection that will
    /// speak pub/sub (the subscriber reads it its own way).
    pub(crate) fn into_stream(self) -> Stream {
        self.stream
    }

    /// The write buffer, cleared, for the next request.
    pub(crate) fn request(&mut self) -> &mut BytesMut {
        self.wbuf.clear();
        &mut self.wbuf
    }

    /// Writes the encoded request (one command) in one call.
    pub(crate) fn send(&mut self) -> Result<(), Failure> {
        self.send_many(1)
    }

    /// Writes the write buffer, holding `commands` commands, in one call.
    #[inline(always)]
    pub(crate) fn send_many(&mut self, commands: u32) -> Result<(), Failure> {
        self.send_timed(commands, None)
    }

    /// [`send_many`](Self::send_many) for a caller that read the clock
    /// after anything that could wait (a checkout) and before encoding this
    /// request, and has `left` from that reading until its reply deadline.
    /// If the write goes out without waiting, nothing between that reading
    /// and the reply's first read could wait, so that read takes `left` as
    /// the time remaining, with no clock reading of its own (two fewer per
    /// lock cycle). Like any reading, it is late by what the CPU spends
    /// between it and the read, nothing more.
    #[inline(always)]
    pub(crate) fn send_with_time_left(
        &mut self,
        commands: u32,
        left: Duration,
    ) -> Result<(), Failure> {
        self.send_timed(commands, Some(left))
    }

    #[inline(always)]
    fn send_timed(&mut self, commands: u32, left: Option<Duration>) -> Result<(), Failure> {
        self.got_reply_bytes = false;
        let result = self.stream.send_request(&self.wbuf);
        self.wbuf.clear();
        match result {
            Ok(at_once) => {
                self.owed += commands;
                self.left_at_send = left.filter(|_| at_once);
                Ok(())
            }
            Err(e) => {
                self.left_at_send = None;
                Err(self.fail(e.into()))
            }
        }
    }

    /// Waits (until `deadline`) for the next reply and hands it to `read`.
    #[inline]
    pub(crate) fn recv_next_with<T>(
        &mut self,
        deadline: Deadline,
        mut read: impl FnMut(Reply<'_>) -> T,
    ) -> Result<T, Failure> {
        self.recv_next_raw(deadline, |reply, _| read(reply))
    }

    /// Like [`recv_next_with`](Self::recv_next_with), also handing over
    /// the reply's bytes (for the handshake's `ROLE`).
    #[inline]
    fn recv_next_raw<T>(
        &mut self,
        deadline: Deadline,
        mut read: impl FnMut(Reply<'_>, &[u8]) -> T,
    ) -> Result<T, Failure> {
        loop {
            match self.rbuf.take_raw(&mut read) {
                Ok(Some(out)) => {
                    self.owed = self.owed.saturating_sub(1);
                    return Ok(out);
                }
                Ok(None) => {
                    if let Err(failure) = self.fill(deadline) {
                        return Err(self.fail(failure));
                    }
                }
                Err(e) => return Err(self.fail(e.into())),
            }
        }
    }

    /// Waits (until `deadline`) for the reply to the latest request and
    /// hands it to `read`, discarding the late replies to earlier ones (a
    /// request that timed out, then a clean-up sent behind it).
    #[inline(always)]
    fn recv_latest_with<T>(
        &mut self,
        deadline: Deadline,
        read: impl FnMut(Reply<'_>) -> T,
    ) -> Result<T, Failure> {
        while self.owed > 1 {
            self.recv_next_with(deadline, |_| ())?;
        }
        self.recv_next_with(deadline, read)
    }

    /// Waits (until `deadline`) for the reply to the latest request and
    /// interprets it. The outer error is the transport's; the inner one is
    /// the reply's meaning: an error reply leaves the connection usable, a
    /// reply of the wrong kind does not (the stream is no longer trusted).
    #[inline(always)]
    pub(crate) fn recv_latest<T>(
        &mut self,
        deadline: Deadline,
        interpret: impl FnMut(Reply<'_>) -> Result<T, Failure>,
    ) -> Result<Result<T, Failure>, Failure> {
        let reply = self.recv_latest_with(deadline, interpret)?;
        if let Err(failure) = &reply
            && failure.breaks_connection()
        {
            self.broken = true;
        }
        Ok(reply)
    }

    /// Reads and drops whatever has already arrived, without waiting. Before
    /// closing a connection that still expects replies: closing with unread
    /// data makes the kernel reset the connection, and a reset can make the
    /// server drop requests it has not read yet (a clean-up, say).
    pub(crate) fn discard_arrived(&mut self) {
        if self.stream.set_nonblocking(true).is_ok() {
            let mut scratch = [0u8; 1024];
            while matches!(self.stream.read(&mut scratch), Ok(n) if n > 0) {}
            let _ = self.stream.set_nonblocking(false);
        }
    }

    /// Reads more bytes into the buffer.
    #[inline(always)]
    fn fill(&mut self, deadline: Deadline) -> Result<(), Failure> {
        // The first read after a send that did not wait may use the time
        // left the caller gave with it (see `send_with_time_left`); every
        // later read reads the clock.
        let remaining = match self.left_at_send.take() {
            Some(left) => left,
            None => deadline.at().saturating_duration_since(Instant::now()),
        };
        if remaining.is_zero() {
            self.stream.set_nonblocking(true)?;
            let result = read_into(&mut self.stream, &mut self.rbuf, &mut self.got_reply_bytes);
            self.stream.set_nonblocking(false)?;
            // Past the deadline a reply may still be waiting in the socket:
            // take it if it is there, never block for it.
            result?;
        } else {
            if self.read_timeout.abs_diff(remaining) > TIMEOUT_SLACK {
                self.stream.set_read_timeout(remaining)?;
                self.read_timeout = remaining;
            }
            read_into(&mut self.stream, &mut self.rbuf, &mut self.got_reply_bytes)?;
        }
        Ok(())
    }

    /// Records a failure; every failure seen here breaks the connection.
    fn fail(&mut self, failure: Failure) -> Failure {
        self.broken = true;
        failure
    }

    /// Called by the pool when the connection goes back idle: the server may
    /// close it before its next use.
    pub(crate) fn returned_to_pool(&mut self) {
        self.reused = true;
    }

    /// Whether `failure` only shows that the server had closed this idle
    /// connection before our request reached it, so the request can be sent
    /// again on a new connection.
    pub(crate) fn was_stale(&self, failure: &Failure) -> bool {
        self.reused && !self.got_reply_bytes && failure.is_disconnect()
    }

    /// Whether the connection saw a failure that rules out reuse.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Ready for the pool: not broken, owing nothing, no stray bytes.
    pub(crate) fn is_clean(&self) -> bool {
        !self.broken && self.owed == 0 && self.rbuf.is_empty()
    }
}

/// Appends `AUTH` with the endpoint's credentials, if it has any; says
/// whether it did (a reply more to read).
pub(crate) fn encode_auth(buf: &mut BytesMut, endpoint: &Endpoint) -> bool {
    let Some(password) = &endpoint.password else {
        return false;
    };
    match &endpoint.username {
        Some(user) => resp::encode(buf, &[b"AUTH", user.as_bytes(), password.0.as_bytes()]),
        None => resp::encode(buf, &[b"AUTH", password.0.as_bytes()]),
    }
    true
}

/// One `read` into the buffer's free space; end of stream is a failure.
/// An interrupted read (a signal, or TLS with part of a record) reads
/// nothing: the caller tries again with the time it has left. Sets `got`
/// when bytes arrived: only bytes count, for a read a signal cut short says
/// nothing about whether the server had closed the connection (see
/// `Conn::was_stale`).
#[inline(always)]
fn read_into(stream: &mut Stream, rbuf: &mut ReadBuf, got: &mut bool) -> Result<(), Failure> {
    let spare = rbuf.spare()?;
    let n = match stream.read(spare) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
        other => other?,
    };
    if n == 0 {
        return Err(Failure::Closed);
    }
    rbuf.filled(n);
    *got = true;
    Ok(())
}

/// A reply the handshake expects, in order.
#[derive(Debug, Clone, Copy)]
enum Handshake {
    /// `+OK` to `AUTH` or `SELECT`.
    Ok,
    /// The SHA of a script we asked the server to load.
    Loaded(&'static [u8; 40]),
    /// `INFO server`'s text; an error (a user without `INFO`) or anything
    /// else only means the server would not say.
    Info,
    /// `ROLE`'s first item is `master`, for a server the sentinels named.
    Role,
    /// `+PONG`.
    Pong,
}

/// A server's uptime, at most what it really was at `seen_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Uptime {
    pub(crate) up: Duration,
    pub(crate) seen_at: Instant,
}

/// What a server's `INFO server` says about who it is and since when.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServerInfo {
    /// The server's `run_id`: it changes with every start.
    pub(crate) run_id: Option<[u8; 40]>,
    /// `uptime_in_seconds`.
    pub(crate) uptime_s: Option<u64>,
}

impl ServerInfo {
    /// Reads the fields from `INFO` text; missing or malformed ones are
    /// `None`.
    pub(crate) fn parse(info: &[u8]) -> ServerInfo {
        let field = |name: &[u8]| {
            info.split(|&b| b == b'\n')
                .find_map(|line| line.strip_prefix(name))
                .map(|value| value.strip_suffix(b"\r").unwrap_or(value))
        };
        ServerInfo {
            run_id: field(b"run_id:").and_then(|id| id.try_into().ok()),
            uptime_s: field(b"uptime_in_seconds:")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse().ok()),
        }
    }
}

impl Handshake {
    fn check(self, reply: Reply<'_>, raw: &[u8], info: &mut ServerInfo) -> Result<(), Failure> {
        match (self, reply) {
            (Handshake::Role, Reply::Array(_)) => match resp::items(raw).as_deref() {
                Some([Reply::Bulk(b"master"), ..]) => Ok(()),
                // Transient: the sentinels will name the new master soon.
                Some([Reply::Bulk(role), ..]) => Err(Failure::Server(ServerText::new(
                    format!(
                        "READONLY the sentinels' master is a {} now (failover under way)",
                        String::from_utf8_lossy(role)
                    )
                    .as_bytes(),
                ))),
                _ => Err(Failure::Protocol("malformed reply to ROLE")),
            },
            (Handshake::Info, Reply::Bulk(text)) => {
                *info = ServerInfo::parse(text);
                Ok(())
            }
            (Handshake::Info, _) => Ok(()),
            (Handshake::Loaded(sha), reply) => match script::check_loaded(reply, sha) {
                // Without SCRIPT (not permitted, or renamed away) the scripts
                // still run: EVALSHA answers NOSCRIPT and we send the source.
                Err(failure)
                    if matches!(
                        failure.server_error(),
                        Some(ServerError::CommandDenied | ServerError::UnknownCommand)
                    ) =>
                {
                    log::debug!("redlease: SCRIPT LOAD unavailable, scripts will go by source");
                    Ok(())
                }
                other => other,
            },
            (_, Reply::Error(text)) => Err(Failure::from_server(text)),
            (Handshake::Ok, Reply::Simple(b"OK")) | (Handshake::Pong, Reply::Simple(b"PONG")) => {
                Ok(())
            }
            _ => Err(Failure::Protocol("unexpected reply during the handshake")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    const IO: Duration = Duration::from_millis(300);

    /// A connection to a listener that never answers, with no handshake;
    /// socket buffers small enough that a request of a megabyte must wait
    /// for the peer to read. The peer waits `read_after`, then reads `expect`
    /// bytes, then stays silent a while.
    fn silent_peer(read_after: Duration, expect: usize) -> (Conn, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let tcp = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut peer, _) = listener.accept().expect("accept");
        socket2::SockRef::from(&tcp)
            .set_send_buffer_size(4096)
            .expect("sndbuf");
        socket2::SockRef::from(&peer)
            .set_recv_buffer_size(64 * 1024)
            .expect("rcvbuf");
        tcp.set_read_timeout(Some(IO)).expect("timeout");
        tcp.set_write_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let handle = std::thread::spawn(move || {
            std::thread::sleep(read_after);
            let mut sink = vec![0u8; 64 * 1024];
            let mut got = 0;
            while got < expect {
                match peer.read(&mut sink) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
            }
            std::thread::sleep(IO * 3);
        });
        (Conn::over(Stream::Tcp(tcp), IO), handle)
    }

    /// Sends `len` bytes with `left` as the time left, then waits for a
    /// reply that never comes, against a deadline of [`IO`] from the
    /// start; returns how long until the timeout.
    fn time_out(conn: &mut Conn, len: usize, left: Duration) -> Duration {
        let start = Instant::now();
        let deadline = start + IO;
        conn.request().extend_from_slice(&vec![b'x'; len]);
        conn.send_with_time_left(1, left).expect("send");
        let reply = conn.recv_latest(deadline.into(), |_| Ok::<(), Failure>(()));
        assert!(matches!(reply, Err(Failure::Timeout)), "{reply:?}");
        start.elapsed()
    }

    /// A request that goes out at once: the reply's first read takes the
    /// time left the sender gave, and reads no clock (given 100 ms of a
    /// 300 ms deadline, it gives up near 100 ms). Where std makes the
    /// calls, a send never says it did not wait, and the read reads the
    /// clock.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_send_at_once_hands_its_time_left_to_the_read() {
        let (mut conn, peer) = silent_peer(Duration::ZERO, 64);
        let waited = time_out(&mut conn, 64, IO / 3);
        assert!(
            waited >= IO / 3 && waited < IO - IO / 6,
            "waited {waited:?}"
        );
        peer.join().expect("peer");
    }

    /// A request that had to wait for the peer (200 ms here) leaves the
    /// read to read the clock: the whole exchange still ends at its 300 ms
    /// deadline, not 300 ms after the write.
    #[test]
    fn a_send_that_waited_leaves_the_read_to_the_clock() {
        let len = 1 << 20;
        let (mut conn, peer) = silent_peer(IO * 2 / 3, len);
        let waited = time_out(&mut conn, len, IO);
        assert!(
            waited >= IO * 2 / 3 && waited < IO + IO / 3,
            "waited {waited:?}: the read should have ended at the deadline"
        );
        peer.join().expect("peer");
    }

    #[test]
    fn server_info_fields() {
        let id = "a".repeat(40);
        let text =
            format!("# Server\r\nredis_version:7.0.15\r\nrun_id:{id}\r\nuptime_in_seconds:42\r\n");
        let info = ServerInfo::parse(text.as_bytes());
        assert_eq!(info.run_id.as_ref().map(|r| &r[..]), Some(id.as_bytes()));
        assert_eq!(info.uptime_s, Some(42));
    }

    /// Missing, short, long or garbled fields are unknown, never a panic.
    #[test]
    fn hostile_server_info_is_unknown() {
        for text in [
            &b""[..],
            b"run_id:short\r\nuptime_in_seconds:-1\r\n",
            b"uptime_in_seconds:\r\n",
            b"uptime_in_seconds:99999999999999999999999\r\n",
            b"uptime_in_seconds:12abc",
            b"\xff\xfe\n\n\r",
        ] {
            let info = ServerInfo::parse(text);
            assert_eq!(
                info,
                ServerInfo::default(),
                "{:?}",
                text.escape_ascii().to_string()
            );
        }
        let long = format!("run_id:{}\n", "b".repeat(41));
        assert_eq!(ServerInfo::parse(long.as_bytes()).run_id, None);
        // Without the carriage return, as some proxies send it.
        assert_eq!(ServerInfo::parse(b"uptime_in_seconds:7").uptime_s, Some(7));
    }
}
