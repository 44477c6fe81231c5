//! A Redis Cluster on loopback for tests: masters with the slots split
//! evenly, replicas of them, each server on a free port and killed by its
//! pid when dropped. Built the way `redis-cli --cluster create` does it
//! (config epochs, slots, `CLUSTER MEET`, `CLUSTER REPLICATE`), with
//! `redis-server` alone.

use std::time::{Duration, Instant};

use super::{RedisServer, eventually};

/// Slots in a cluster.
pub const SLOTS: u16 = 16_384;

/// How long a node may be unreachable before the cluster fails it over.
pub const NODE_TIMEOUT_MS: u64 = 1_000;

pub struct Cluster {
    /// Masters first (`masters` of them), then their replicas in order
    /// (replica `r` of master `m` is `masters + m * replicas + r`).
    pub servers: Vec<RedisServer>,
    pub masters: usize,
    pub replicas: usize,
}

impl Cluster {
    /// `masters` masters, each with `replicas` replicas, the slots split in
    /// even ranges; returns once every node sees the cluster as ok.
    pub fn start(masters: usize, replicas: usize) -> Cluster {
        Cluster::start_with(masters, replicas, &[])
    }

    /// [`start`](Self::start), every server with `extra` arguments too.
    pub fn start_with(masters: usize, replicas: usize, extra: &[&str]) -> Cluster {
        let timeout = NODE_TIMEOUT_MS.to_string();
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            &timeout,
            // Replicas take over without waiting on their data's age.
            "--cluster-replica-validity-factor",
            "0",
        ];
        args.extend_from_slice(extra);
        let servers: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| RedisServer::try_start_detached(&args).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let cluster = Cluster {
            servers,
            masters,
            replicas,
        };
        for (i, server) in cluster.servers.iter().enumerate() {
            let _: () = server.cmd(&[
                b"CLUSTER",
                b"SET-CONFIG-EPOCH",
                (i + 1).to_string().as_bytes(),
            ]);
        }
        for m in 0..masters {
            let (first, last) = cluster.range(m);
            let _: () = cluster.servers[m].cmd(&[
                b"CLUSTER",
                b"ADDSLOTSRANGE",
                first.to_string().as_bytes(),
                last.to_string().as_bytes(),
            ]);
        }
        let port0 = cluster.servers[0].port.to_string();
        for server in &cluster.servers[1..] {
            let _: () = server.cmd(&[b"CLUSTER", b"MEET", b"127.0.0.1", port0.as_bytes()]);
        }
        let n = cluster.servers.len();
        eventually(
            Duration::from_secs(20),
            "every node knows every node",
            || {
                cluster.servers.iter().all(|s| {
                    let nodes: String = s.cmd(&[b"CLUSTER", b"NODES"]);
                    nodes.lines().filter(|l| !l.contains("handshake")).count() == n
                })
            },
        );
        for m in 0..masters {
            let id = cluster.id(m);
            for r in 0..replicas {
                let replica = &cluster.servers[masters + m * replicas + r];
                let _: () = replica.cmd(&[b"CLUSTER", b"REPLICATE", id.as_bytes()]);
            }
        }
        cluster.wait_ok(Duration::from_secs(30));
        eventually(Duration::from_secs(20), "replicas in sync", || {
            cluster.servers[masters..].iter().all(|r| {
                r.raw(b"INFO replication", Duration::from_secs(1))
                    .is_some_and(|info| info.contains("master_link_status:up"))
            })
        });
        cluster
    }

    /// Master `m`'s slots at creation, inclusive.
    pub fn range(&self, m: usize) -> (u16, u16) {
        let per = usize::from(SLOTS) / self.masters;
        let first = m * per;
        let last = if m + 1 == self.masters {
            usize::from(SLOTS) - 1
        } else {
            first + per - 1
        };
        (first as u16, last as u16)
    }

    /// Waits until every live node says `cluster_state:ok` and they all
    /// agree on which master serves which slots.
    pub fn wait_ok(&self, limit: Duration) {
        eventually(limit, "cluster state ok and agreed", || {
            let live: Vec<usize> = (0..self.servers.len())
                .filter(|&i| self.servers[i].pid().is_some())
                .collect();
            live.iter().all(|&i| {
                self.servers[i]
                    .raw(b"CLUSTER INFO", Duration::from_secs(1))
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            }) && live
                .windows(2)
                .all(|w| self.slot_map(w[0]) == self.slot_map(w[1]))
        });
    }

    /// Server `asked`'s view of who serves what: (port, slot ranges) of
    /// every live master, sorted.
    fn slot_map(&self, asked: usize) -> Vec<String> {
        let nodes: String = self.servers[asked].cmd(&[b"CLUSTER", b"NODES"]);
        let mut map: Vec<String> = nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                    return None;
                }
                let addr = fields[1].split('@').next()?;
                // Migration marks differ between source and target views.
                let slots: Vec<&str> = fields[8..]
                    .iter()
                    .copied()
                    .filter(|r| !r.starts_with('['))
                    .collect();
                Some(format!("{addr} {}", slots.join(" ")))
            })
            .collect();
        map.sort();
        map
    }

    /// Server `i`'s node id.
    pub fn id(&self, i: usize) -> String {
        self.servers[i].cmd(&[b"CLUSTER", b"MYID"])
    }

    pub fn seed(&self) -> String {
        self.servers[0].url()
    }

    /// The server that serves `slot` now, as server `asked` says.
    pub fn owner_of(&self, slot: u16, asked: usize) -> Option<usize> {
        let nodes: String = self.servers[asked].cmd(&[b"CLUSTER", b"NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|r| {
                if r.starts_with('[') {
                    return false;
                }
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                let (a, b): (u16, u16) = (a.parse().unwrap(), b.parse().unwrap());
                (a..=b).contains(&slot)
            });
            if serves {
                let port = port_of(fields[1])?;
                return self.servers.iter().position(|s| s.port == port);
            }
        }
        None
    }

    /// The servers that are masters now, as server `asked` says.
    pub fn masters_now(&self, asked: usize) -> Vec<usize> {
        self.listed(asked, |flags, _| {
            flags.contains("master") && !flags.contains("fail")
        })
    }

    /// The replicas of server `master` now, as server `asked` says.
    pub fn replicas_of(&self, master: usize, asked: usize) -> Vec<usize> {
        let id = self.id(master);
        self.listed(asked, |flags, of| flags.contains("slave") && of == id)
    }

    /// The servers whose `CLUSTER NODES` line (flags, master id) passes.
    fn listed(&self, asked: usize, pick: impl Fn(&str, &str) -> bool) -> Vec<usize> {
        let nodes: String = self.servers[asked].cmd(&[b"CLUSTER", b"NODES"]);
        nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 8 || !pick(fields[2], fields[3]) {
                    return None;
                }
                let port = port_of(fields[1])?;
                self.servers.iter().position(|s| s.port == port)
            })
            .collect()
    }

    /// Whether server `i` runs and says it is a master (`ROLE`).
    pub fn is_master(&self, i: usize) -> bool {
        if self.servers[i].pid().is_none() {
            return false;
        }
        let role: Vec<redis::Value> = self.servers[i].cmd(&[b"ROLE"]);
        matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master")
    }

    /// Promotes `replica` with `CLUSTER FAILOVER` (its master hands over
    /// once the replica has caught up: nothing is lost) and waits until it
    /// says it is master and every node agrees the cluster is ok.
    pub fn manual_failover(&self, replica: usize) {
        let _: () = self.servers[replica].cmd(&[b"CLUSTER", b"FAILOVER"]);
        eventually(Duration::from_secs(20), "manual failover", || {
            self.is_master(replica)
        });
        self.wait_ok(Duration::from_secs(20));
    }

    /// The slot of `key`, as the server says.
    pub fn slot(&self, key: &[u8]) -> u16 {
        let slot: i64 = self.servers[0].cmd(&[b"CLUSTER", b"KEYSLOT", key]);
        slot as u16
    }

    /// Keys on master `m` (all slots).
    pub fn keys_on(&self, m: usize) -> i64 {
        self.servers[m].cmd(&[b"DBSIZE"])
    }

    /// Moves `slot` from server `from` to server `to` the way
    /// `redis-cli --cluster reshard` does, pausing `pause` between steps so
    /// that clients meet every stage: `IMPORTING`/`MIGRATING`, then the keys
    /// one `MIGRATE` at a time, then `SETSLOT … NODE` everywhere. Returns
    /// the keys moved.
    pub fn migrate(&self, slot: u16, from: usize, to: usize, pause: Duration) -> usize {
        self.try_migrate(slot, from, to, pause)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`migrate`](Self::migrate), or why it could not begin (a server
    /// that is no longer a master: the cluster failed it over meanwhile).
    pub fn try_migrate(
        &self,
        slot: u16,
        from: usize,
        to: usize,
        pause: Duration,
    ) -> Result<usize, String> {
        // Views can lag a failover: both ends must be masters now, and the
        // source must say it serves the slot, or a `SETSLOT` could hand the
        // slot's keys to a server that does not hold them.
        if !self.is_master(from) || !self.is_master(to) || self.owner_of(slot, from) != Some(from) {
            return Err(format!(
                "server {from} does not serve slot {slot} now, or {to} is not a master"
            ));
        }
        self.try_begin_migration(slot, from, to)?;
        std::thread::sleep(pause);
        let moved = self.migrate_keys(slot, from, to, usize::MAX, pause / 10);
        std::thread::sleep(pause);
        self.finish_migration(slot, from, to);
        Ok(moved)
    }

    /// Marks `slot` importing on `to` and migrating on `from`.
    pub fn begin_migration(&self, slot: u16, from: usize, to: usize) {
        self.try_begin_migration(slot, from, to)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    fn setslot(&self, server: usize, slot: u16, args: &[&str]) -> Result<(), String> {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(slot);
        for arg in args {
            cmd.arg(*arg);
        }
        cmd.query::<()>(&mut self.servers[server].client())
            .map_err(|e| format!("SETSLOT {slot} {args:?} on server {server}: {e}"))
    }

    fn try_begin_migration(&self, slot: u16, from: usize, to: usize) -> Result<(), String> {
        let (from_id, to_id) = (self.id(from), self.id(to));
        self.setslot(to, slot, &["IMPORTING", &from_id])?;
        if let Err(e) = self.setslot(from, slot, &["MIGRATING", &to_id]) {
            let _ = self.setslot(to, slot, &["STABLE"]);
            return Err(e);
        }
        Ok(())
    }

    /// Moves up to `at_most` of the slot's keys, one `MIGRATE` each,
    /// `pause` apart; returns how many.
    pub fn migrate_keys(
        &self,
        slot: u16,
        from: usize,
        to: usize,
        at_most: usize,
        pause: Duration,
    ) -> usize {
        let slot_text = slot.to_string();
        let to_port = self.servers[to].port.to_string();
        let mut moved = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while moved < at_most {
            assert!(Instant::now() < deadline, "slot {slot} did not empty");
            let keys: Vec<Vec<u8>> =
                self.servers[from].cmd(&[b"CLUSTER", b"GETKEYSINSLOT", slot_text.as_bytes(), b"1"]);
            let Some(key) = keys.first() else { break };
            // The target may briefly see the cluster down after a failover
            // elsewhere: asked again until the deadline.
            let migrated: redis::RedisResult<redis::Value> = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to_port.as_bytes())
                .arg(key)
                .arg(0)
                .arg(5000)
                .query(&mut self.servers[from].client());
            if let Err(e) = migrated {
                assert!(Instant::now() < deadline, "MIGRATE kept failing: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            moved += 1;
            std::thread::sleep(pause);
        }
        moved
    }

    /// Moves these keys (of a slot being migrated) from `from` to `to`.
    pub fn migrate_these(&self, from: usize, to: usize, keys: &[&str]) {
        let to_port = self.servers[to].port.to_string();
        for key in keys {
            let _: redis::Value = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to_port.as_bytes())
                .arg(*key)
                .arg(0)
                .arg(5000)
                .query(&mut self.servers[from].client())
                .unwrap_or_else(|e| panic!("MIGRATE {key}: {e}"));
        }
    }

    /// Gives `slot` to `to`: the target first, then the source, then every
    /// master (as redis-cli).
    pub fn finish_migration(&self, slot: u16, from: usize, to: usize) {
        let to_id = self.id(to);
        let masters =
            (0..self.servers.len()).filter(|&i| i != to && i != from && self.is_master(i));
        for i in std::iter::once(to)
            .chain(std::iter::once(from))
            .chain(masters)
        {
            // A server demoted meanwhile refuses; the others spread it.
            let _ = self.setslot(i, slot, &["NODE", &to_id]);
        }
    }
}

/// The client port of a `CLUSTER NODES` address (`ip:port@cport[,host]`).
fn port_of(addr: &str) -> Option<u16> {
    addr.split(['@', ','])
        .next()?
        .rsplit_once(':')?
        .1
        .parse()
        .ok()
}
