//! The Redis Cluster section: what routing by slot costs. One server, a
//! cluster of one master that serves every slot, reached two ways: as a
//! plain node (`.node(url)`: it answers every key itself) and as a cluster
//! (`.cluster([url])`: the key's slot looked up, CRC16 and a shared lock,
//! before the same requests). Interleaved rounds, medians.

use redlease::LockManager;

use super::support::cluster::Cluster;
use super::{Sample, Settings};

pub(crate) fn report(s: &Settings) {
    let cluster = Cluster::start(1, 0);
    let url = cluster.seed();
    let build = |as_cluster: bool| {
        let builder = LockManager::builder().restart_quarantine(false);
        let builder = if as_cluster {
            builder.cluster([url.as_str()])
        } else {
            builder.node(url.as_str())
        };
        builder.build().expect("build")
    };
    let managers = [build(false), build(true)];
    let mut samples = [
        Sample::new("redlease, the server as a plain node"),
        Sample::new("redlease, the server as a cluster"),
    ];
    super::interleave(s, &cluster.servers[0], &mut samples, &managers, b"cluster");
    let instructions: Vec<Option<f64>> = if s.callgrind {
        vec![
            super::callgrind_count("ours-url", &url, None),
            super::callgrind_count("ours-cluster", &url, None),
        ]
    } else {
        vec![None, None]
    };
    println!("\n#### Redis Cluster: routing by slot\n");
    println!(
        "{} rounds × {} cycles each, interleaved; one redis-server in cluster mode serving every slot, reached as a plain node and as a cluster\n",
        s.rounds, s.cycles
    );
    super::ratio_table("reached as", "plain", &samples, &instructions, false);
}
