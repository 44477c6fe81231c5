//! The transports section: one server reached over TCP loopback, its unix
//! socket and its TLS port, interleaved rounds, medians; what each costs
//! per cycle against TCP.

use redlease::LockManager;

use super::support::RedisServer;
use super::support::tls::{Certs, ServerCert};
use super::{Sample, Settings};

pub(crate) fn report(s: &Settings) {
    let certs = Certs::make();
    let tls_port = super::support::free_port();
    let args = certs.server_args(tls_port, ServerCert::Good, false);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = RedisServer::start_unix_with(&args);
    let build = |url: String| {
        LockManager::builder()
            // A fresh private server: nothing for the restart quarantine to protect.
            .restart_quarantine(false)
            .node(url)
            .tls_ca_file(certs.ca())
            .build()
    };
    // The CA setting is refused without a rediss:// node: only TLS gets it.
    let plain = |url: String| {
        LockManager::builder()
            .restart_quarantine(false)
            .node(url)
            .build()
            .expect("build")
    };
    let urls = [
        server.url(),
        server.unix_url(),
        format!("rediss://localhost:{tls_port}"),
    ];
    let managers = [
        plain(urls[0].clone()),
        plain(urls[1].clone()),
        build(urls[2].clone()).expect("build tls"),
    ];
    let mut samples = [
        Sample::new("redlease, TCP loopback"),
        Sample::new("redlease, unix socket"),
        Sample::new("redlease, TLS 1.3 over loopback"),
    ];
    super::interleave(s, &server, &mut samples, &managers, b"transport");
    let instructions: Vec<Option<f64>> = if s.callgrind {
        urls.iter()
            .map(|url| {
                let ca = url.starts_with("rediss:").then(|| certs.ca());
                super::callgrind_count("ours-url", url, ca.as_deref())
            })
            .collect()
    } else {
        vec![None; urls.len()]
    };
    println!("\n#### Transports: one server, three ways in\n");
    println!(
        "{} rounds × {} cycles each, interleaved; the same redis-server's TCP port, unix socket and TLS port\n",
        s.rounds, s.cycles
    );
    super::ratio_table("transport", "TCP", &samples, &instructions, true);
}
