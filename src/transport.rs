//! The byte stream under a connection: TCP, a unix socket, or TLS over TCP.
//! Opening one (resolve, connect with a timeout, `TCP_NODELAY`, the TLS
//! handshake) and the few socket settings a connection changes.
//!
//! `Conn` speaks RESP over a [`Stream`] and never asks which kind it is. The
//! subscriber needs to read on one thread and write from others:
//! [`Stream::split`] gives it a [`Reader`] and a [`Writer`].

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::endpoint::{Addr, Endpoint};
use crate::error::Failure;
#[cfg(feature = "tls")]
use crate::tls::{self, TlsConnector, TlsStream};

/// What a `rediss://` node connects with: the manager's TLS client
/// configuration. Without the `tls` feature no value exists.
#[cfg(feature = "tls")]
pub(crate) type Tls = TlsConnector;
#[cfg(not(feature = "tls"))]
pub(crate) type Tls = std::convert::Infallible;

/// An open connection's byte stream.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    #[cfg(feature = "tls")]
    Tls(Box<TlsStream>),
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stream::Tcp(s) => write!(f, "tcp {:?}", s.peer_addr().ok()),
            Stream::Unix(_) => f.write_str("unix"),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => write!(f, "tls {:?}", s.socket().peer_addr().ok()),
        }
    }
}

impl Stream {
    /// Connects to `endpoint` within `connect_timeout` (per resolved
    /// address; the TLS handshake has its own), with both I/O timeouts set
    /// to `io_timeout`.
    pub(crate) fn open(
        endpoint: &Endpoint,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<Stream, Failure> {
        match &endpoint.addr {
            Addr::Unix(path) => {
                let stream = connect_unix(path, connect_timeout)?;
                stream.set_read_timeout(Some(io_timeout))?;
                stream.set_write_timeout(Some(io_timeout))?;
                Ok(Stream::Unix(stream))
            }
            Addr::Tcp { host, port, tls } => {
                open_tcp_or_tls(host, *port, tls.as_ref(), connect_timeout, io_timeout)
            }
            Addr::Sentinel { sentinels, tls } => {
                let (host, port) = sentinels.master_addr(connect_timeout, io_timeout)?;
                open_tcp_or_tls(&host, port, tls.as_ref(), connect_timeout, io_timeout)
            }
        }
    }

    /// Writes a whole request; says whether it went without waiting (on
    /// TLS, never said: its writes may wait inside rustls).
    #[inline(always)]
    pub(crate) fn send_request(&mut self, buf: &[u8]) -> io::Result<bool> {
        match self {
            Stream::Tcp(s) => sys::send_all(s, buf),
            Stream::Unix(s) => sys::send_all(s, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.write_all(buf).map(|()| false),
        }
    }

    pub(crate) fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(timeout)),
            Stream::Unix(s) => s.set_read_timeout(Some(timeout)),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.socket().set_read_timeout(Some(timeout)),
        }
    }

    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.socket().set_nonblocking(on),
        }
    }

    /// Splits the stream for a reader thread and writers on other threads;
    /// reads wake every `tick` to let the reader look up.
    pub(crate) fn split(self, tick: Duration) -> io::Result<(Reader, Writer)> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(tick))?;
                Ok((Reader::Tcp(s.try_clone()?), Writer::Tcp(s)))
            }
            Stream::Unix(s) => {
                s.set_read_timeout(Some(tick))?;
                Ok((Reader::Unix(s.try_clone()?), Writer::Unix(s)))
            }
            #[cfg(feature = "tls")]
            Stream::Tls(s) => {
                s.socket().set_read_timeout(Some(tick))?;
                let (reader, writer) = tls::split(*s)?;
                Ok((Reader::Tls(reader), Writer::Tls(writer)))
            }
        }
    }
}

/// TCP and unix-socket reads and writes go through [`sys`]: on Linux, `recv`
/// and `send` system calls made by rustix rather than by std through libc
/// (see there).
impl Read for Stream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => sys::recv(s, buf),
            Stream::Unix(s) => sys::recv(s, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => sys::send(s, buf),
            Stream::Unix(s) => sys::send(s, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.write(buf),
        }
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.send_request(buf).map(drop)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The socket calls themselves.
///
/// On Linux they are made by rustix, straight into the kernel: glibc makes
/// every socket call of a threaded process a thread-cancellation point (two
/// more calls around each), and std's wrappers add their own layers; on the
/// 1-node cycle that was about 300 of 3,000 instructions (callgrind). Sends
/// carry `MSG_NOSIGNAL` (std's TCP sends did too; its unix-socket writes
/// were `write(2)`, which a closed peer answers with `SIGPIPE`), and the
/// socket timeouts apply alike. Elsewhere, std's own calls.
#[cfg(any(target_os = "linux", target_os = "android"))]
mod sys {
    use std::io;
    use std::os::fd::AsFd;

    use rustix::io::Errno;
    use rustix::net::{RecvFlags, SendFlags};

    #[inline(always)]
    pub(super) fn recv(socket: &impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
        match rustix::net::recv(socket, buf, RecvFlags::empty()) {
            Ok((n, _)) => Ok(n),
            Err(errno) => Err(errno.into()),
        }
    }

    #[inline]
    pub(super) fn send(socket: &impl AsFd, buf: &[u8]) -> io::Result<usize> {
        Ok(rustix::net::send(socket, buf, SendFlags::NOSIGNAL)?)
    }

    /// Writes all of `buf`, as `write_all` does: again after a short write
    /// or a signal, an error on a write of nothing. Says whether it all
    /// went in one call that did not wait: the first try does not wait
    /// (`MSG_DONTWAIT`); only what the kernel would not take at once waits,
    /// under the socket's write timeout.
    #[inline(always)]
    pub(super) fn send_all(socket: &impl AsFd, mut buf: &[u8]) -> io::Result<bool> {
        let fd = socket.as_fd();
        match rustix::net::send(fd, buf, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
            Ok(n) if n >= buf.len() => return Ok(true),
            Ok(n) => buf = &buf[n..],
            Err(Errno::AGAIN | Errno::INTR) => {}
            Err(errno) => return Err(errno.into()),
        }
        while !buf.is_empty() {
            match rustix::net::send(fd, buf, SendFlags::NOSIGNAL) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n.min(buf.len())..],
                Err(Errno::INTR) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
        Ok(false)
    }
}

/// The socket calls by std, where rustix's are not used (see the Linux
/// [`sys`]). A send never says it did not wait, so the first read always
/// reads the clock.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod sys {
    use std::io::{self, Read, Write};

    pub(super) fn recv<S>(socket: &S, buf: &mut [u8]) -> io::Result<usize>
    where
        for<'a> &'a S: Read,
    {
        let mut socket = socket;
        socket.read(buf)
    }

    pub(super) fn send<S>(socket: &S, buf: &[u8]) -> io::Result<usize>
    where
        for<'a> &'a S: Write,
    {
        let mut socket = socket;
        socket.write(buf)
    }

    pub(super) fn send_all<S>(socket: &S, buf: &[u8]) -> io::Result<bool>
    where
        for<'a> &'a S: Write,
    {
        let mut socket = socket;
        socket.write_all(buf).map(|()| false)
    }
}

/// The reading half of a split stream.
pub(crate) enum Reader {
    Tcp(TcpStream),
    Unix(UnixStream),
    #[cfg(feature = "tls")]
    Tls(tls::Reader),
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Reader::Tcp(s) => s.read(buf),
            Reader::Unix(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Reader::Tls(s) => s.read(buf),
        }
    }
}

/// The writing half of a split stream; shutting it down ends the reader's
/// blocking read at once.
pub(crate) enum Writer {
    Tcp(TcpStream),
    Unix(UnixStream),
    #[cfg(feature = "tls")]
    Tls(tls::Writer),
}

impl Writer {
    pub(crate) fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Writer::Tcp(s) => sys::send_all(s, buf).map(drop),
            Writer::Unix(s) => sys::send_all(s, buf).map(drop),
            #[cfg(feature = "tls")]
            Writer::Tls(s) => s.write_all(buf),
        }
    }

    pub(crate) fn shutdown(&self) {
        let _ = match self {
            Writer::Tcp(s) => s.shutdown(Shutdown::Both),
            Writer::Unix(s) => s.shutdown(Shutdown::Both),
            #[cfg(feature = "tls")]
            Writer::Tls(s) => s.shutdown(),
        };
    }
}

/// Connects to a unix socket within `timeout`. A unix connect does not
/// wait for the server: it succeeds at once, or fails, or (the server's
/// listen backlog full: a stalled server) would block, which std's connect
/// does without end; here it is tried again until the timeout.
fn connect_unix(path: &std::path::Path, timeout: Duration) -> Result<UnixStream, Failure> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    let addr = SockAddr::unix(path)?;
    socket.set_nonblocking(true)?;
    let deadline = crate::time::deadline_in(timeout);
    loop {
        match socket.connect(&addr) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= deadline {
                    return Err(Failure::Timeout);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    socket.set_nonblocking(false)?;
    Ok(socket.into())
}

/// TCP to `host:port`, then TLS over it when `tls` is given.
fn open_tcp_or_tls(
    host: &str,
    port: u16,
    tls: Option<&Tls>,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> Result<Stream, Failure> {
    let stream = open_tcp(host, port, connect_timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(io_timeout))?;
    stream.set_write_timeout(Some(io_timeout))?;
    let Some(tls) = tls else {
        return Ok(Stream::Tcp(stream));
    };
    #[cfg(feature = "tls")]
    {
        // The handshake is bounded by the connect timeout.
        stream.set_read_timeout(Some(connect_timeout))?;
        stream.set_write_timeout(Some(connect_timeout))?;
        let stream = tls.handshake(host, stream)?;
        stream.socket().set_read_timeout(Some(io_timeout))?;
        stream.socket().set_write_timeout(Some(io_timeout))?;
        Ok(Stream::Tls(Box::new(stream)))
    }
    #[cfg(not(feature = "tls"))]
    match *tls {}
}

/// Resolves the host and connects to the first address that answers.
fn open_tcp(host: &str, port: u16, connect_timeout: Duration) -> Result<TcpStream, Failure> {
    let mut last_error = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, connect_timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(e) => e.into(),
        None => Failure::Io(io::Error::new(
            io::ErrorKind::NotFound,
            "host name resolved to no address",
        )),
    })
}
