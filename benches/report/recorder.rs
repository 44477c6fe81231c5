//! The metrics section (built with `--features metrics`): what recording
//! costs per cycle, with the Prometheus exporter's recorder installed,
//! against the same build with no recorder. Runs last: the recorder it
//! installs is global.

use redlease::LockManager;

use super::support::RedisServer;
use super::{Sample, Settings};

pub(crate) fn report(s: &Settings, server: &RedisServer) {
    let build = || {
        LockManager::builder()
            .restart_quarantine(false)
            .node(server.url())
            .build()
            .expect("build")
    };
    // Built before the recorder is installed: its handles are no-ops.
    let silent = build();
    let handle = match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        Ok(handle) => handle,
        Err(e) => {
            println!("(cannot install the Prometheus recorder: {e}; skipping the metrics section)");
            return;
        }
    };
    let recorded = build();
    let managers = [silent, recorded];
    let mut samples = [
        Sample::new("redlease, 1 node, metrics feature, no recorder"),
        Sample::new("redlease, 1 node, Prometheus recorder installed"),
    ];
    super::interleave(s, server, &mut samples, &managers, b"metrics");
    println!("\n#### Metrics: the cost of a recorder\n");
    println!(
        "{} rounds × {} cycles each, interleaved, one server; `metrics-exporter-prometheus` 0.17 (its histograms keep samples in blocks of 64: a block per 32 cycles of 2 samples)\n",
        s.rounds, s.cycles,
    );
    println!(
        "| contestant | wall µs/cycle (median) | client CPU µs/cycle | allocations/cycle | wall ÷ no recorder | CPU ÷ no recorder |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let (wall, cpu) = (samples[0].median_us(), samples[0].cpu_us());
    for sample in &samples {
        println!(
            "| {} | {:.1} | {:.2} | {:.3} | {:.3} | {:.3} |",
            sample.name,
            sample.median_us(),
            sample.cpu_us(),
            sample.allocs_per_cycle(),
            sample.median_us() / wall,
            sample.cpu_us() / cpu,
        );
    }
    let text = handle.render();
    let series = text.lines().filter(|l| l.starts_with("redlease_")).count();
    println!("\n({series} redlease series rendered by the exporter after the run)");
}
