//! A fake RESP server on loopback whose answers a test chooses, command by
//! command: for hostile replies, half replies, silence and slow drips, and
//! for benches that need a connection but not a real server.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use redlease::internals::reference::{self, RefParse, RefReply};

/// What the fake server does with one command.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Write these bytes one at a time, pausing between them.
    Drip(Vec<u8>, Duration),
    /// Write these bytes, then close the connection.
    SendAndClose(Vec<u8>),
    /// Close the connection without answering.
    Close,
    /// Never answer (the connection stays open).
    Silence,
}

/// A running fake server; stops (and closes its connections) when dropped.
pub struct FakeRedis {
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
}

/// Answers a real server would give to the handshake and lock commands:
/// `SCRIPT LOAD` gets the script's SHA, `PING` gets `PONG`, `SET` gets `OK`,
/// scripts get `:1`, anything else `OK`.
pub fn redis_like(command: &[Vec<u8>]) -> Answer {
    let name = command
        .first()
        .map(|c| c.to_ascii_uppercase())
        .unwrap_or_default();
    let reply = match name.as_slice() {
        b"SCRIPT" => {
            let source = command
                .get(2)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .unwrap_or_default();
            let sha = redis::Script::new(&source).get_hash().to_string();
            format!("${}\r\n{sha}\r\n", sha.len()).into_bytes()
        }
        b"PING" => b"+PONG\r\n".to_vec(),
        b"EVAL" | b"EVALSHA" => b":1\r\n".to_vec(),
        b"INFO" => b"$0\r\n\r\n".to_vec(),
        _ => b"+OK\r\n".to_vec(),
    };
    Answer::Send(reply)
}

impl FakeRedis {
    /// Starts a server that answers each command (as its arguments) with
    /// `answer(command, index of the command on its connection)`.
    pub fn start(
        answer: impl Fn(&[Vec<u8>], usize) -> Answer + Send + Sync + 'static,
    ) -> FakeRedis {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind the fake server");
        let port = listener.local_addr().expect("local addr").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(answer);
        {
            let (stop, accepted) = (Arc::clone(&stop), Arc::clone(&accepted));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            let (stop, answer) = (Arc::clone(&stop), Arc::clone(&answer));
                            thread::spawn(move || serve(stream, &stop, &*answer));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(1)),
                    }
                }
            });
        }
        FakeRedis {
            port,
            stop,
            accepted,
        }
    }

    /// A fake that behaves like Redis for everything this crate sends.
    pub fn redis_like() -> FakeRedis {
        FakeRedis::start(|command, _| redis_like(command))
    }

    /// `redis://127.0.0.1:port`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for FakeRedis {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    mut stream: TcpStream,
    stop: &AtomicBool,
    answer: &(dyn Fn(&[Vec<u8>], usize) -> Answer + Send + Sync),
) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut index = 0;
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        // Answer every whole command buffered so far.
        while let RefParse::Complete(RefReply::Array(items), used) = reference::parse(&buf) {
            buf.drain(..used);
            let command: Vec<Vec<u8>> = items
                .into_iter()
                .map(|item| match item {
                    RefReply::Bulk(arg) => arg,
                    _ => Vec::new(),
                })
                .collect();
            let ok = match answer(&command, index) {
                Answer::Send(bytes) => stream.write_all(&bytes).is_ok(),
                Answer::Drip(bytes, pause) => bytes.iter().all(|b| {
                    thread::sleep(pause);
                    !stop.load(Ordering::Relaxed) && stream.write_all(&[*b]).is_ok()
                }),
                Answer::SendAndClose(bytes) => {
                    let _ = stream.write_all(&bytes);
                    false
                }
                Answer::Close => false,
                Answer::Silence => true,
            };
            if !ok {
                return;
            }
            index += 1;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}
