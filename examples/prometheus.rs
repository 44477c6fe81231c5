//! redlease's metrics exposed to Prometheus: threads take locks while
//! `http://127.0.0.1:9898/metrics` serves what the `metrics` feature
//! records, in Prometheus's text format.
//!
//! ```text
//! cargo run --example prometheus                      # an embedded redis-server, 10 s
//! cargo run --example prometheus -- redis://10.0.0.5:6379 30
//! ```
//!
//! The exporter is `metrics-exporter-prometheus` without its HTTP server
//! (which needs an async runtime): its handle renders the text, and a few
//! lines of `std::net` serve it. The recorder is installed before the
//! manager is built, so the manager's handles (registered at build) record
//! into it.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusBuilder;
use redlease::LockManager;
use support::RedisServer;

const ADDR: &str = "127.0.0.1:9898";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args.next();
    let seconds: u64 = args.next().map_or(Ok(10), |s| s.parse())?;

    // First the recorder, then the manager.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let server = match url {
        Some(_) => None,
        None => Some(RedisServer::try_start_detached(&[])?),
    };
    let url = match (&server, url) {
        (Some(server), _) => server.url(),
        (None, url) => url.unwrap_or_default(),
    };
    let locks = LockManager::builder()
        .node(url.as_str())
        .restart_quarantine(server.is_none())
        .build()?;

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let (locks, stop) = (locks.clone(), Arc::clone(&stop));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("prometheus-demo:{}", i % 2);
                    if let Ok(lock) = locks.lock(&key, Duration::from_secs(5)) {
                        thread::sleep(Duration::from_millis(2));
                        drop(lock);
                    }
                }
            })
        })
        .collect();

    let listener = TcpListener::bind(ADDR)?;
    listener.set_nonblocking(true)?;
    println!("serving http://{ADDR}/metrics for {seconds} s (redis at {url})");
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        // Histogram samples wait in blocks until upkeep folds them in.
        metrics.run_upkeep();
        match listener.accept() {
            Ok((stream, _)) => {
                // A client that misbehaves costs its own request, not the demo.
                if let Err(e) = serve(stream, &metrics.render()) {
                    eprintln!("a /metrics request failed: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
    stop.store(true, Ordering::Relaxed);
    metrics.run_upkeep();
    for worker in workers {
        let _ = worker.join();
    }
    println!("{}", metrics.render());
    println!("{}", locks.status());
    Ok(())
}

/// Answers one request (any path) with the metrics, within a second.
fn serve(mut stream: std::net::TcpStream, body: &str) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    // The request line is enough.
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}
