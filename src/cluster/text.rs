//! What cluster servers say, read: redirections in error replies, and the
//! topology in `CLUSTER NODES`.

use super::SLOTS;

/// What a server's error reply asks of a cluster client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Redirect {
    /// The slot moved to this master for good.
    Moved { slot: u16, host: String, port: u16 },
    /// Ask this node, this once, preceded by `ASKING`.
    Ask { host: String, port: u16 },
    /// `TRYAGAIN` or `CLUSTERDOWN`: the same again shortly.
    Later,
    /// A redirection whose text was cut short (a very long host name):
    /// the topology says where the slot went.
    Unclear,
}

/// Reads a redirection from an error reply's text; `from` is the host of
/// the node that said it, for addresses given without one (`:6380`).
pub(super) fn redirect(message: &str, from: &str) -> Option<Redirect> {
    if message.starts_with("TRYAGAIN") || message.starts_with("CLUSTERDOWN") {
        return Some(Redirect::Later);
    }
    // Error texts are kept to `SERVER_TEXT_MAX` bytes: a longer one may
    // have lost digits of its port.
    if message.len() >= crate::error::SERVER_TEXT_MAX
        && (message.starts_with("MOVED ") || message.starts_with("ASK "))
    {
        return Some(Redirect::Unclear);
    }
    let mut words = message.split_ascii_whitespace();
    let verb = words.next()?;
    let slot: u16 = words
        .next()?
        .parse()
        .ok()
        .filter(|&s| usize::from(s) < SLOTS)?;
    let (host, port) = host_port(words.next()?, from)?;
    match verb {
        "MOVED" => Some(Redirect::Moved { slot, host, port }),
        "ASK" => Some(Redirect::Ask { host, port }),
        _ => None,
    }
}

/// `host:port` (IPv6 hosts have colons: the port is after the last one);
/// an empty host is `from`'s.
fn host_port(addr: &str, from: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok().filter(|&p| p != 0)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() { from } else { host };
    Some((host.to_owned(), port))
}

/// One node of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Listed {
    /// The node's id: what stays the same when its address changes.
    pub(super) id: String,
    pub(super) host: String,
    pub(super) port: u16,
    /// The host name it announces (`cluster-announce-hostname`), which
    /// `MOVED` may name instead of the IP.
    pub(super) hostname: Option<String>,
    pub(super) master: bool,
    /// Flagged `fail` or `fail?`: its line may be stale.
    pub(super) failed: bool,
    /// The configuration epoch: its own for a master, its master's for a
    /// replica (a newer view of who serves what has a higher one).
    pub(super) epoch: u64,
    /// Slot ranges it serves, inclusive (migration entries left out).
    pub(super) slots: Vec<(u16, u16)>,
}

/// Parses `CLUSTER NODES`: one line per node, `<id> <ip:port@cport[,hostname]>
/// <flags> <master> <ping> <pong> <epoch> <link> <slot>…`. `from` is the
/// host asked (a node that does not know its own address says `:port`).
/// Nodes flagged `noaddr` or `handshake` are left out.
pub(super) fn parse_nodes(text: &[u8], from: &str) -> Result<Vec<Listed>, &'static str> {
    let text = std::str::from_utf8(text).map_err(|_| "CLUSTER NODES is not UTF-8")?;
    let mut listed = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if fields.len() < 8 {
            return Err("a CLUSTER NODES line has fewer than 8 fields");
        }
        let flags: Vec<&str> = fields[2].split(',').collect();
        if flags.iter().any(|f| matches!(*f, "noaddr" | "handshake")) {
            continue;
        }
        let addr = fields[1].split(['@', ',']).next().unwrap_or("");
        let (host, port) =
            host_port(addr, from).ok_or("a CLUSTER NODES address is not host:port")?;
        let hostname = fields[1]
            .split_once(',')
            .map(|(_, h)| h.split(',').next().unwrap_or(""))
            .filter(|h| !h.is_empty() && !h.eq_ignore_ascii_case(&host))
            .map(str::to_owned);
        let mut slots = Vec::new();
        for range in &fields[8..] {
            if range.starts_with('[') {
                continue; // a slot being migrated or imported
            }
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) else {
                return Err("a CLUSTER NODES slot is not a number");
            };
            if a > b || usize::from(b) >= SLOTS {
                return Err("a CLUSTER NODES slot range is out of bounds");
            }
            slots.push((a, b));
        }
        listed.push(Listed {
            id: fields[0].to_owned(),
            host,
            port,
            hostname,
            master: flags.contains(&"master"),
            failed: flags.iter().any(|f| matches!(*f, "fail" | "fail?")),
            epoch: fields[6]
                .parse()
                .map_err(|_| "a CLUSTER NODES config epoch is not a number")?,
            slots,
        });
    }
    if listed.is_empty() {
        return Err("CLUSTER NODES listed no node");
    }
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirections() {
        assert_eq!(
            redirect("MOVED 3999 127.0.0.1:6381", "x"),
            Some(Redirect::Moved {
                slot: 3999,
                host: "127.0.0.1".into(),
                port: 6381
            })
        );
        assert_eq!(
            redirect("ASK 3999 ::1:6381", "x"),
            Some(Redirect::Ask {
                host: "::1".into(),
                port: 6381
            })
        );
        assert_eq!(
            redirect("MOVED 1 :7000", "10.0.0.1"),
            Some(Redirect::Moved {
                slot: 1,
                host: "10.0.0.1".into(),
                port: 7000
            })
        );
        assert_eq!(
            redirect(
                "TRYAGAIN Multiple keys request during rehashing of slot",
                "x"
            ),
            Some(Redirect::Later)
        );
        assert_eq!(
            redirect("CLUSTERDOWN Hash slot not served", "x"),
            Some(Redirect::Later)
        );
        // Cut short at the kept length: its port cannot be trusted.
        let long = format!("MOVED 1 {}:6379", "h".repeat(200));
        let cut = &long[..crate::error::SERVER_TEXT_MAX];
        assert_eq!(redirect(cut, "x"), Some(Redirect::Unclear));
        for bad in [
            "MOVED",
            "MOVED 99999 h:1",
            "MOVED 1 h",
            "MOVED 1 h:0",
            "MOVED x h:1",
            "OOM command not allowed",
            "ASK 1 h:port",
        ] {
            assert_eq!(redirect(bad, "x"), None, "{bad}");
        }
    }

    #[test]
    fn cluster_nodes_parse() {
        let text = b"07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host-4 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected\n\
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922\n\
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383\n\
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca :30001@31001 myself,master - 0 0 1 connected 0-5460 [5461->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1] 17\n\
aaaa 127.0.0.1:30009@31009 master,noaddr - 0 0 0 disconnected\n";
        let listed = parse_nodes(text, "10.1.1.1").unwrap();
        assert_eq!(listed.len(), 4);
        assert_eq!(
            (listed[0].host.as_str(), listed[0].port, listed[0].master),
            ("127.0.0.1", 30004, false)
        );
        assert_eq!(listed[1].slots, vec![(5461, 10922)]);
        assert_eq!(listed[3].host, "10.1.1.1");
        assert_eq!(listed[0].hostname.as_deref(), Some("host-4"));
        assert_eq!(listed[1].hostname, None);
        assert_eq!(listed[1].id, "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1");
        assert!(!listed[1].failed);
        let failed =
            parse_nodes(b"ab 1.2.3.4:5@6 slave,fail cd 0 0 1 disconnected\n", "h").unwrap();
        assert!(failed[0].failed && !failed[0].master);
        assert_eq!(listed[3].slots, vec![(0, 5460), (17, 17)]);
        for bad in [
            &b""[..],
            b"id 1.2.3.4:1@2 master - 0 0",
            b"id 1.2.3.4:1@2 master - 0 0 1 connected 9-2",
            b"id 1.2.3.4:1@2 master - 0 0 1 connected 0-16384",
            b"id nowhere master - 0 0 1 connected",
            b"\xff\xfe",
        ] {
            assert!(parse_nodes(bad, "h").is_err(), "{bad:?}");
        }
    }
}
