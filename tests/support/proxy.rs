//! A fault-injecting TCP proxy on loopback, between the library and a
//! `redis-server`: how the network fails in tests (no `tc`, iptables or nft
//! here). Switchable at run time; every connection it carries can be cut.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Forward both ways, each chunk after this delay.
    Delay(Duration),
    /// Accept connections, forward nothing either way: a server that never
    /// answers.
    Blackhole,
    /// Forward requests, swallow replies: the server acts, the client never
    /// hears.
    DropReplies,
    /// Stop listening: new connections are refused (existing ones stay).
    Refuse,
    /// Forward requests; at the next reply, cut that connection instead of
    /// forwarding it, and go back to `Pass`: the server acted, then the
    /// connection died before the client heard (a kill or reset at the
    /// worst moment).
    CutOnNextReply,
    /// Forward requests; replies a byte at a time, this long apart: a
    /// server whose replies arrive in pieces, slowly.
    Trickle(Duration),
}

struct Shared {
    mode: Mutex<Mode>,
    /// Both ends of every connection carried, to cut them on demand.
    streams: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
    /// Whether the accept loop has a listener right now.
    listening: AtomicBool,
}

/// A running proxy; stops and cuts its connections when dropped.
pub struct FaultProxy {
    /// The port clients connect to, on 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Proxies 127.0.0.1:`port` (a free port) to 127.0.0.1:`target`.
    pub fn start(target: u16) -> FaultProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind the proxy");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            streams: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            listening: AtomicBool::new(true),
        });
        let accept_shared = Arc::clone(&shared);
        thread::spawn(move || accept_loop(Some(listener), port, target, &accept_shared));
        FaultProxy { port, shared }
    }

    /// `redis://127.0.0.1:port`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Switches the mode for all traffic from now on.
    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().expect("mode") = mode;
        // Wait for the accept loop to close or reopen its listener.
        let want = mode != Mode::Refuse;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.shared.listening.load(Ordering::Relaxed) != want {
            assert!(
                std::time::Instant::now() < deadline,
                "the proxy did not switch to {mode:?}"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Cuts every connection carried so far (both ends get EOF).
    pub fn reset_all(&self) {
        for stream in self.shared.streams.lock().expect("streams").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.reset_all();
    }
}

fn mode(shared: &Shared) -> Mode {
    *shared.mode.lock().expect("mode")
}

fn accept_loop(mut listener: Option<TcpListener>, port: u16, target: u16, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        let refusing = mode(shared) == Mode::Refuse;
        if refusing && listener.is_some() {
            listener = None;
        } else if !refusing && listener.is_none() {
            // std sets SO_REUSEADDR on listeners, so the port comes back.
            listener = TcpListener::bind(("127.0.0.1", port)).ok();
        }
        shared
            .listening
            .store(listener.is_some(), Ordering::Relaxed);
        let Some(l) = &listener else {
            thread::sleep(Duration::from_millis(2));
            continue;
        };
        let _ = l.set_nonblocking(true);
        match l.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue; // the client sees the connection close
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let mut streams = shared.streams.lock().expect("streams");
                for s in [&client, &server] {
                    if let Ok(clone) = s.try_clone() {
                        streams.push(clone);
                    }
                }
                drop(streams);
                for (from, to, is_reply) in [(&client, &server, false), (&server, &client, true)] {
                    let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    let shared = Arc::clone(shared);
                    thread::spawn(move || pump(from, to, is_reply, &shared));
                }
            }
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Copies one direction, applying the mode to each chunk.
fn pump(mut from: TcpStream, mut to: TcpStream, is_reply: bool, shared: &Shared) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 16 * 1024];
    while !shared.stop.load(Ordering::Relaxed) {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => break,
        };
        let forward = match mode(shared) {
            Mode::CutOnNextReply if is_reply => {
                *shared.mode.lock().expect("mode") = Mode::Pass;
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                break;
            }
            Mode::Pass | Mode::Refuse | Mode::CutOnNextReply => true,
            Mode::Delay(d) => {
                thread::sleep(d);
                true
            }
            Mode::Blackhole => false,
            Mode::DropReplies => !is_reply,
            Mode::Trickle(d) if is_reply => {
                for byte in &buf[..n] {
                    thread::sleep(d);
                    if to.write_all(std::slice::from_ref(byte)).is_err() {
                        break;
                    }
                }
                false
            }
            Mode::Trickle(_) => true,
        };
        if forward && to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
