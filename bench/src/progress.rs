//! The live line (in place on a terminal, a line a second otherwise; runs
//! longer than a few seconds also show what is left), and the throughput
//! timeline a plot draws.

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crate::work::Shared;
use crate::{INTERRUPTED, Options};

/// Throughput is sampled this often for the timeline.
const SAMPLE: Duration = Duration::from_millis(250);

/// Runs until the run ends (its time, its count, or a Ctrl-C), then stops
/// the workers; returns (seconds since the start, acquisitions/s) samples.
pub fn progress(shared: &Shared, o: &Options, started: Instant) -> Vec<(f64, f64)> {
    let tty = std::io::stderr().is_terminal();
    let tick = if tty {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };
    let mut last = (Instant::now(), 0u64);
    let mut next_line = Instant::now() + tick;
    let mut timeline = Vec::new();
    let mut sampled = (Instant::now(), 0u64);
    loop {
        if INTERRUPTED.load(Ordering::Relaxed) {
            shared.stop.store(true, Ordering::Relaxed);
        }
        let done = shared.stop.load(Ordering::Relaxed)
            || started.elapsed() >= o.duration
            || o.count
                .is_some_and(|c| shared.acquired.load(Ordering::Relaxed) >= c);
        if done {
            break;
        }
        thread::sleep(Duration::from_millis(20).min(tick));
        if sampled.0.elapsed() >= SAMPLE {
            let acquired = shared.acquired.load(Ordering::Relaxed);
            let rate = (acquired - sampled.1) as f64 / sampled.0.elapsed().as_secs_f64();
            sampled = (Instant::now(), acquired);
            timeline.push((started.elapsed().as_secs_f64(), rate));
        }
        if Instant::now() < next_line {
            continue;
        }
        next_line += tick;
        let acquired = shared.acquired.load(Ordering::Relaxed);
        let rate = (acquired - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-9);
        last = (Instant::now(), acquired);
        let elapsed = started.elapsed();
        let clock = if o.duration > Duration::from_secs(5) {
            format!(
                "{:>6.1}s / {:.0}s ({:.0}s left)",
                elapsed.as_secs_f64(),
                o.duration.as_secs_f64(),
                o.duration.saturating_sub(elapsed).as_secs_f64()
            )
        } else {
            format!("{:>6.1}s", elapsed.as_secs_f64())
        };
        let line = format!(
            "{clock}  {:>9.0} acq/s  {acquired} acquired  {} contended  {} errors",
            rate,
            shared.contended.load(Ordering::Relaxed),
            shared.errors.load(Ordering::Relaxed),
        );
        let mut err = std::io::stderr().lock();
        let _ = if tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
    shared.stop.store(true, Ordering::Relaxed);
    if tty {
        eprint!("\r\x1b[2K");
    }
    timeline
}
