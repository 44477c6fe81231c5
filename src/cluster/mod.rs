//! Redis Cluster: every key's lock lives on the master that owns the key's
//! hash slot, as a single-node lock there (the cluster's masters are not
//! independent Redlock voters: each slot has exactly one). This file owns
//! the slot table and how it changes; what a lock does on its master is
//! `quorum.rs`, as for one node.
//!
//! - **Routing:** CRC16 of the key (of its hash tag, `{…}`, when it has
//!   one) picks one of 16,384 slots, and the table its master. The table is
//!   read under a shared lock for one array index and an `Arc` clone.
//! - **Redirections**, followed inside the call, never shown to the user
//!   unless they do not stop: `MOVED` (the slot has a new master: the table
//!   learns it at once, and the whole topology is asked again), `ASK` (the
//!   slot is being migrated and this key is already at the target: the same
//!   operation again there, preceded by `ASKING` on the same connection),
//!   `TRYAGAIN` (a multi-key script met a half-migrated key set) and
//!   `CLUSTERDOWN` (no master for the slot yet): again after a short sleep.
//!   A redirected request was not executed (the server refused it before
//!   running it), so sending it elsewhere cannot apply it twice.
//! - **Topology** comes from `CLUSTER NODES` (one bulk string), asked of the
//!   known nodes in turn: at build, then by the manager's refresher thread
//!   after a `MOVED` or a failure on a master (a failover may have
//!   happened), at most once per [`REFRESH_GAP`]. Callers do not wait for
//!   it, except one whose request surely was not sent (it may then go to
//!   the slot's new master), for at most one I/O timeout.
//! - **Failover** (a replica promoted to master): the replica may not have
//!   received every lock its old master granted (replication is
//!   asynchronous), so a master that was a replica in the previous topology
//!   gets the restart quarantine (`max_ttl` and its drift) before it grants,
//!   like a restarted node. A manager that never saw it as a replica cannot
//!   know; `wait_for_replicas` narrows that window as with Sentinel.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::conn::Timeouts;
use crate::endpoint::Endpoint;
use crate::error::{Error, Failure};
use crate::node::{Node, NodeConfig, Take};
use crate::quorum::Quorum;
use crate::resp::{self, Reply};
use crate::time;

mod slot;
mod text;

pub(crate) use slot::{SLOTS, companions_fit, hash_tag, slot, tag_for};
use text::{Listed, Redirect, parse_nodes, redirect};

/// Most redirections one operation follows before its error is returned.
const MAX_HOPS: u32 = 8;

/// How many servers a topology refresh asks for their view.
const VIEWS: usize = 3;

/// Least time between two topology refreshes.
pub(crate) const REFRESH_GAP: Duration = Duration::from_millis(100);

/// A slot without a known master.
const NO_OWNER: u16 = u16::MAX;

/// One server the manager knows in the cluster, master or not: its lock
/// quorum of one, and a twin of it that sends `ASKING` first (both over
/// the same node and pool).
struct Shard {
    /// The `host:port` it connects to (its identity: a shard is whatever
    /// server answers there), then the host name the latest topology says
    /// that server announces, if any (`MOVED` may name it).
    names: Vec<(String, u16)>,
    /// The node id the latest topology gave the server at that address.
    id: Option<String>,
    direct: Arc<Quorum>,
    asking: Arc<Quorum>,
}

impl Shard {
    fn node(&self) -> &Arc<Node> {
        &self.direct.nodes()[0]
    }

    fn host(&self) -> &str {
        &self.names[0].0
    }

    fn is_named(&self, host: &str, port: u16) -> bool {
        self.names
            .iter()
            .any(|(h, p)| *p == port && h.eq_ignore_ascii_case(host))
    }

    fn dials(&self, host: &str, port: u16) -> bool {
        let (h, p) = &self.names[0];
        *p == port && h.eq_ignore_ascii_case(host)
    }
}

/// The slot table.
struct Map {
    /// Each slot's master, an index into `shards`, or [`NO_OWNER`].
    owner: Box<[u16]>,
    /// Every server seen, in the order seen; never removed (a server that
    /// left keeps its pool until the manager goes, and owns no slot).
    shards: Vec<Shard>,
    /// Node ids seen as replicas and not seen as masters since, to
    /// recognise a promotion (a view that leaves a replica out does not
    /// make the manager forget it).
    replicas: HashSet<String>,
    /// The highest configuration epoch each node id was seen serving
    /// slots at: a replica line for it at that epoch or older is a view
    /// from before its promotion (a lagging node), not a demotion.
    served: HashMap<String, u64>,
    /// The highest configuration epoch among the masters of the adopted
    /// topology: a view with a lower one is older (a lagging node's).
    epoch: u64,
}

impl Map {
    /// A server the latest topology listed, by any of its names; else the
    /// shard that connects to `host:port`.
    fn find(&self, host: &str, port: u16) -> Option<usize> {
        self.shards
            .iter()
            .position(|s| s.id.is_some() && s.is_named(host, port))
            .or_else(|| self.shards.iter().position(|s| s.dials(host, port)))
    }

    /// Whether the shard was last seen as a replica.
    fn was_replica(&self, i: usize) -> bool {
        self.shards[i]
            .id
            .as_ref()
            .is_some_and(|id| self.replicas.contains(id))
    }
}

/// What every new node is made with.
struct Template {
    seed: Endpoint,
    timeouts: Timeouts,
    pool: NodeConfig,
    drift_factor: f64,
    replicas: Option<(u32, Duration)>,
}

/// A lock manager's view of one Redis Cluster: the shared view, and the
/// thread that refreshes it (stopped and joined when dropped).
pub(crate) struct Cluster {
    inner: Arc<Inner>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

/// What the refresher thread is asked.
#[derive(Debug, Default)]
struct Signal {
    /// A refresh is wanted.
    asked: bool,
    /// The manager is gone.
    stop: bool,
    /// Refreshes done (or given up) so far, for callers waiting for one.
    done: u64,
}

/// The view itself, shared with the refresher thread.
pub(crate) struct Inner {
    template: Template,
    /// See `Quorum`'s: the same for every master.
    drift_ppb: u64,
    map: RwLock<Map>,
    /// When the topology was last asked for (held while asking: one
    /// refresh at a time).
    refreshed: Mutex<Option<Instant>>,
    /// Requests to the refresher thread, and its answers.
    signal: Mutex<Signal>,
    /// Signalled on every change of `signal`.
    wake: Condvar,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

/// The view's operations (`on`, `connect`, `nodes`, …) are the cluster's.
impl std::ops::Deref for Cluster {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.inner.signal.lock().stop = true;
        self.inner.wake.notify_all();
        if let Some(thread) = self.refresher.take() {
            let _ = thread.join();
        }
    }
}

impl Cluster {
    /// A cluster known by its seed nodes (any of its servers; the rest is
    /// discovered), and its refresher thread. Connects to nothing yet.
    pub(crate) fn new(
        seeds: Vec<Endpoint>,
        timeouts: Timeouts,
        pool: NodeConfig,
        drift_factor: f64,
        replicas: Option<(u32, Duration)>,
    ) -> Result<Cluster, Error> {
        let inner = Arc::new(Inner::new(seeds, timeouts, pool, drift_factor, replicas)?);
        let weak = Arc::downgrade(&inner);
        let refresher = std::thread::Builder::new()
            .name("redlease-cluster".into())
            .spawn(move || refresher(&weak))
            .map_err(|e| {
                Error::Thread(format!("cannot start the cluster refresher: {e}").into())
            })?;
        Ok(Cluster {
            inner,
            refresher: Some(refresher),
        })
    }
}

/// The refresher thread: a refresh each time one is asked for, at most one
/// per [`REFRESH_GAP`], until the manager is dropped. Holds the view only
/// weakly between refreshes.
fn refresher(view: &std::sync::Weak<Inner>) {
    loop {
        let Some(inner) = view.upgrade() else { return };
        {
            let mut signal = inner.signal.lock();
            while !signal.asked && !signal.stop {
                inner.wake.wait(&mut signal);
            }
            if signal.stop {
                return;
            }
            signal.asked = false;
        }
        // The gap since the last refresh, cut short by a drop.
        let since = inner.refreshed.lock().map(|at| at.elapsed());
        if let Some(wait) = since.and_then(|s| REFRESH_GAP.checked_sub(s)) {
            let until = time::deadline_in(wait);
            let mut signal = inner.signal.lock();
            while !signal.stop && !inner.wake.wait_until(&mut signal, until).timed_out() {}
            if signal.stop {
                return;
            }
        }
        if let Err(e) = inner.refresh_now() {
            log::warn!("redlease: cluster topology refresh failed: {e}");
        }
        inner.signal.lock().done += 1;
        inner.wake.notify_all();
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.map.read();
        f.debug_struct("Cluster")
            .field(
                "nodes",
                &map.shards
                    .iter()
                    .map(|s| &s.node().name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Inner {
    /// The view of a cluster known by its seed nodes.
    fn new(
        seeds: Vec<Endpoint>,
        timeouts: Timeouts,
        pool: NodeConfig,
        drift_factor: f64,
        replicas: Option<(u32, Duration)>,
    ) -> Result<Inner, Error> {
        let Some(first) = seeds.first() else {
            return Err(Error::invalid("cluster: no seed node given"));
        };
        if seeds.iter().any(|s| s.db != 0) {
            return Err(Error::invalid(
                "cluster: Redis Cluster has database 0 only; drop the /db from the seed addresses",
            ));
        }
        let cluster = Inner {
            drift_ppb: crate::quorum::ppb(drift_factor),
            template: Template {
                seed: first.clone(),
                timeouts,
                pool,
                drift_factor,
                replicas,
            },
            map: RwLock::new(Map {
                owner: vec![NO_OWNER; SLOTS].into_boxed_slice(),
                shards: Vec::new(),
                replicas: HashSet::new(),
                served: HashMap::new(),
                epoch: 0,
            }),
            refreshed: Mutex::new(None),
            signal: Mutex::new(Signal::default()),
            wake: Condvar::new(),
        };
        {
            let mut map = cluster.map.write();
            for seed in seeds {
                let Some((host, port)) = seed.tcp_addr() else {
                    return Err(Error::invalid(
                        "cluster: seed nodes are redis:// or rediss:// addresses (a cluster names its nodes by IP and port)",
                    ));
                };
                let (host, port) = (host.to_owned(), port);
                if map.find(&host, port).is_some() {
                    return Err(Error::invalid(format!(
                        "cluster: seed {} is listed twice",
                        seed.name()
                    )));
                }
                let shard = cluster.shard(seed, host, port);
                map.shards.push(shard);
            }
        }
        Ok(cluster)
    }

    /// A shard for a server at `host:port`, reached as `endpoint` (no
    /// name lookup: made under the table's lock).
    fn shard(&self, endpoint: Endpoint, host: String, port: u16) -> Shard {
        let t = &self.template;
        let direct = Quorum::single(endpoint, t.timeouts, t.pool, t.drift_factor, t.replicas);
        let asking = direct.asking_twin();
        Shard {
            names: vec![(host, port)],
            id: None,
            direct: Arc::new(direct),
            asking: Arc::new(asking),
        }
    }

    /// The shard at `host:port`, made (with the seeds' credentials and
    /// TLS) if it is new.
    fn shard_at(&self, map: &mut Map, host: &str, port: u16) -> Result<usize, Error> {
        if let Some(i) = map.find(host, port) {
            return Ok(i);
        }
        if map.shards.len() >= usize::from(NO_OWNER) {
            return Err(Error::invalid("cluster: too many nodes"));
        }
        let endpoint = self.template.seed.at(host, port);
        let shard = self.shard(endpoint, host.to_owned(), port);
        map.shards.push(shard);
        Ok(map.shards.len() - 1)
    }

    /// Learns the topology (a seed must answer) and connects to every
    /// master as `Quorum::connect` does for a node: who it is, what the
    /// user may run (on a key of a slot it serves), `preconnect`
    /// connections. Configuration errors fail; an unreachable master is
    /// logged (its slots fail until the cluster replaces it).
    pub(crate) fn connect(&self, preconnect: usize) -> Result<(), Error> {
        self.refresh_now()?;
        let masters: Vec<(Arc<Quorum>, u16)> = {
            let map = self.map.read();
            let mut first_slot = vec![None; map.shards.len()];
            for (slot, &owner) in map.owner.iter().enumerate() {
                if owner != NO_OWNER {
                    first_slot[usize::from(owner)].get_or_insert(slot as u16);
                }
            }
            first_slot
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.map(|s| (Arc::clone(&map.shards[i].direct), s)))
                .collect()
        };
        if masters.is_empty() {
            return Err(Error::invalid(
                "cluster: no master serves any slot yet (is the cluster created?)",
            ));
        }
        // A master that cannot be reached now only costs its slots until
        // the cluster fails it over: logged. What does not heal fails.
        for (quorum, slot) in masters {
            match quorum.connect_probing(preconnect, Some(&tag_for(slot))) {
                Ok(()) => {}
                Err(e) if e.is_configuration() => return Err(e),
                Err(e) => log::warn!("redlease: cluster master unreachable at build: {e}"),
            }
        }
        Ok(())
    }

    /// See `Quorum::drift`.
    #[inline]
    pub(crate) fn drift(&self, ttl: Duration) -> Duration {
        crate::quorum::drift(self.drift_ppb, ttl)
    }

    pub(crate) fn waits_for_replicas(&self) -> bool {
        self.template.replicas.is_some()
    }

    /// Every master that serves a slot, else every server known.
    pub(crate) fn nodes(&self) -> Vec<Arc<Node>> {
        let map = self.map.read();
        let mut serving = vec![false; map.shards.len()];
        for &owner in map.owner.iter() {
            if owner != NO_OWNER {
                serving[usize::from(owner)] = true;
            }
        }
        let any = serving.contains(&true);
        map.shards
            .iter()
            .zip(serving)
            .filter(|(_, s)| *s || !any)
            .map(|(shard, _)| Arc::clone(shard.node()))
            .collect()
    }

    /// The quorum (of one) for `slot` now; an unowned slot goes to the
    /// first server known, whose `MOVED` or `CLUSTERDOWN` then says more.
    fn owner(&self, slot: u16) -> Arc<Quorum> {
        let map = self.map.read();
        let i = match map.owner[usize::from(slot)] {
            // Rare (before the first topology, or a slot no one serves):
            // any master serving slots, else the first seed.
            NO_OWNER => map
                .owner
                .iter()
                .find(|&&o| o != NO_OWNER)
                .map_or(0, |&o| usize::from(o)),
            i => usize::from(i),
        };
        Arc::clone(&map.shards[i].direct)
    }

    /// Runs `op` on the master of `key`'s slot, following redirections;
    /// `error` reads the outcome's error, if it has one. Returns the last
    /// outcome: the first without a redirection, or the last of
    /// [`MAX_HOPS`]. `patient`: `TRYAGAIN` and `CLUSTERDOWN` are asked again
    /// for up to one I/O timeout (else returned at once).
    pub(crate) fn on<T>(
        &self,
        key: &[u8],
        mut op: impl FnMut(&Quorum) -> T,
        error: impl Fn(&T) -> Option<&Error>,
        patient: bool,
    ) -> T {
        let slot = slot(key);
        let mut quorum = self.owner(slot);
        let mut hops = 0;
        let mut rerouted = false;
        let mut later: Option<Instant> = None;
        loop {
            let out = op(&quorum);
            let Some(e) = error(&out) else { return out };
            if hops >= MAX_HOPS {
                return out;
            }
            hops += 1;
            let next = match e {
                Error::Server { message, .. } => {
                    let from = quorum.nodes()[0]
                        .endpoint()
                        .tcp_addr()
                        .map_or("", |(h, _)| h);
                    match redirect(message, from) {
                        Some(Redirect::Moved { slot, host, port }) => self.moved(slot, &host, port),
                        Some(Redirect::Ask { host, port }) => self.asking(&host, port),
                        // Only the topology can say: once, if it moved.
                        Some(Redirect::Unclear) => {
                            self.refresh_and_wait();
                            let now = self.owner(slot);
                            (!Arc::ptr_eq(&now, &quorum)).then_some(now)
                        }
                        // Waits at most one I/O timeout in all, in growing
                        // naps (a migration's key batch, an election).
                        Some(Redirect::Later) if patient => {
                            let began = *later.get_or_insert_with(Instant::now);
                            let nap = Duration::from_millis(2 << hops.min(6));
                            let budget = self.template.timeouts.io.saturating_sub(began.elapsed());
                            if budget.is_zero() {
                                None
                            } else {
                                std::thread::sleep(nap.min(budget));
                                Some(self.owner(slot))
                            }
                        }
                        Some(Redirect::Later) | None => None,
                    }
                }
                // The master may be gone (a failover): the topology is
                // asked again, and a request that surely was not sent goes
                // once more to the slot's master if that changed. (One that
                // may have been applied is not sent elsewhere: its own
                // effect could answer it.)
                // (Only such a request waits for the refresh, within one I/O
                // timeout; others are answered at once.)
                e if e.is_retryable() && !matches!(e, Error::Quarantined { .. }) => {
                    if !rerouted && unsent(e) {
                        rerouted = true;
                        self.refresh_and_wait();
                        let now = self.owner(slot);
                        (!Arc::ptr_eq(&now, &quorum)).then_some(now)
                    } else {
                        self.refresh();
                        None
                    }
                }
                _ => None,
            };
            match next {
                Some(next) => quorum = next,
                None => return out,
            }
        }
    }

    /// After a `MOVED`: the slot's new master, learnt at once; then the
    /// rest of the topology (a migration seldom moves one slot). A replica
    /// named as a slot's master was promoted: it is quarantined before the
    /// table names it, so no request reaches it first.
    fn moved(&self, slot: u16, host: &str, port: u16) -> Option<Arc<Quorum>> {
        let (quorum, promoted) = {
            let mut map = self.map.write();
            let i = self.shard_at(&mut map, host, port).ok()?;
            let promoted = self.promote(&mut map, i);
            map.owner[usize::from(slot)] = i as u16;
            (Arc::clone(&map.shards[i].direct), promoted)
        };
        if let Some((node, quarantine)) = promoted {
            log_promoted(&node, quarantine);
        }
        self.refresh();
        Some(quorum)
    }

    /// After an `ASK`: the target's twin that sends `ASKING` first (an
    /// importing master; one last seen as a replica is quarantined first,
    /// as for `MOVED`).
    fn asking(&self, host: &str, port: u16) -> Option<Arc<Quorum>> {
        if let Some(quorum) = {
            let map = self.map.read();
            map.find(host, port)
                .filter(|&i| !map.was_replica(i))
                .map(|i| Arc::clone(&map.shards[i].asking))
        } {
            return Some(quorum);
        }
        let (quorum, promoted) = {
            let mut map = self.map.write();
            let i = self.shard_at(&mut map, host, port).ok()?;
            (Arc::clone(&map.shards[i].asking), self.promote(&mut map, i))
        };
        if let Some((node, quarantine)) = promoted {
            log_promoted(&node, quarantine);
        }
        Some(quorum)
    }

    /// Shard `i` is named as a slot's master: if it was last seen as a
    /// replica, it was promoted, and its quarantine starts now (before the
    /// caller publishes anything naming it). Returns what to log.
    fn promote(&self, map: &mut Map, i: usize) -> Option<(Arc<Node>, Duration)> {
        let id = map.shards[i].id.clone()?;
        if !map.replicas.remove(&id) {
            return None;
        }
        let node = Arc::clone(map.shards[i].node());
        node.quarantine_now().map(|d| (node, d))
    }

    /// Asks the refresher thread for the topology (at once; the refresh
    /// happens there, at most once per [`REFRESH_GAP`]).
    fn refresh(&self) {
        self.signal.lock().asked = true;
        self.wake.notify_all();
    }

    /// Asks for the topology and waits for the refresher's answer, at most
    /// one I/O timeout.
    fn refresh_and_wait(&self) {
        let until = time::deadline_in(self.template.timeouts.io);
        let mut signal = self.signal.lock();
        let asked_at = signal.done;
        signal.asked = true;
        self.wake.notify_all();
        while signal.done == asked_at && !signal.stop {
            if self.wake.wait_until(&mut signal, until).timed_out() {
                return;
            }
        }
    }

    /// Asks for the topology now, waiting for a refresh under way (at build,
    /// and in the refresher thread).
    fn refresh_now(&self) -> Result<(), Error> {
        let mut last = self.refreshed.lock();
        *last = Some(Instant::now());
        self.ask_topology()
    }

    /// `CLUSTER NODES` from the first [`VIEWS`] known servers that answer
    /// (those serving slots first, seeds and the rest after), the table
    /// rebuilt from the newest view (a master that has not yet heard of its
    /// own demotion describes an older one, and is often the one asked
    /// first). Servers are asked one after another until enough answer or
    /// one connect and one I/O timeout have passed (a server in its
    /// reconnect backoff costs nothing).
    fn ask_topology(&self) -> Result<(), Error> {
        let candidates: Vec<(Arc<Node>, String)> = {
            let serving = self.nodes();
            let map = self.map.read();
            let mut all: Vec<(Arc<Node>, String)> = Vec::with_capacity(map.shards.len());
            for shard in &map.shards {
                if serving.iter().any(|n| Arc::ptr_eq(n, shard.node())) {
                    all.push((Arc::clone(shard.node()), shard.host().to_owned()));
                }
            }
            for shard in &map.shards {
                if !all.iter().any(|(n, _)| Arc::ptr_eq(n, shard.node())) {
                    all.push((Arc::clone(shard.node()), shard.host().to_owned()));
                }
            }
            all
        };
        let t = self.template.timeouts;
        let deadline = time::deadline_in(t.connect.saturating_add(t.io));
        let mut first_error = None;
        let mut views = 0;
        let mut adopted = false;
        for (node, host) in candidates {
            if views == VIEWS
                || (views + usize::from(first_error.is_some()) > 0 && Instant::now() >= deadline)
            {
                break;
            }
            match ask_nodes(&node).map_err(|f| f.into_error(&node.name)) {
                Ok(text) => match parse_nodes(&text, &host) {
                    Ok(listed) => {
                        views += 1;
                        adopted |= self.adopt(&listed)?;
                    }
                    Err(detail) => {
                        first_error.get_or_insert(Error::Protocol {
                            node: Arc::clone(&node.name),
                            detail,
                        });
                    }
                },
                // Not a cluster, wrong password: these do not heal.
                Err(e @ (Error::Auth { .. } | Error::Permission { .. } | Error::Tls { .. })) => {
                    return Err(e);
                }
                Err(Error::Server { node, message })
                    if message.contains("cluster support disabled") =>
                {
                    return Err(Error::invalid(format!(
                        "cluster: {node} is not in cluster mode ({message}); use .node() for a standalone server"
                    )));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if views > 0 {
            if !adopted {
                log::debug!("redlease: every cluster view asked was older than the one in use");
            }
            return Ok(());
        }
        Err(first_error.unwrap_or_else(|| Error::invalid("cluster: no node known")))
    }

    /// Makes `listed` the topology. A shard is the server at an address:
    /// its id and announced host name are what this view says. A master
    /// serving slots that was last seen as a replica was promoted by a
    /// failover: it may lack locks its old master granted, so its restart
    /// quarantine starts before the new table is published. Lines flagged
    /// failed may be stale: they change no id, name or role.
    /// Returns `false`, changing nothing, for a view older than the one in
    /// use (its masters' highest epoch is lower: a node that has not heard
    /// of a failover yet).
    fn adopt(&self, listed: &[Listed]) -> Result<bool, Error> {
        let mut promoted = Vec::new();
        let mut map = self.map.write();
        let epoch = listed
            .iter()
            .filter(|n| n.master && !n.failed)
            .map(|n| n.epoch)
            .max()
            .unwrap_or(0);
        if epoch < map.epoch {
            return Ok(false);
        }
        map.epoch = epoch;
        let mut owner = vec![NO_OWNER; SLOTS].into_boxed_slice();
        // Names are this view's: an address that changed hands, or a host
        // name that moved, leaves nothing behind.
        for shard in &mut map.shards {
            shard.names.truncate(1);
        }
        for node in listed {
            let i = match map
                .shards
                .iter()
                .position(|s| s.dials(&node.host, node.port))
            {
                Some(i) => i,
                None => self.shard_at(&mut map, &node.host, node.port)?,
            };
            if !node.failed {
                // The id belongs to this address now, and to no other.
                for shard in &mut map.shards {
                    if shard.id.as_deref() == Some(node.id.as_str()) {
                        shard.id = None;
                    }
                }
                let shard = &mut map.shards[i];
                shard.id = Some(node.id.clone());
                if let Some(name) = &node.hostname {
                    shard.names.push((name.clone(), node.port));
                }
                if node.master {
                    if !node.slots.is_empty() {
                        let served = map.served.entry(node.id.clone()).or_insert(0);
                        *served = (*served).max(node.epoch);
                        if let Some(p) = self.promote(&mut map, i) {
                            promoted.push(p);
                        }
                    }
                    map.replicas.remove(&node.id);
                } else if map.served.get(&node.id).is_none_or(|&e| node.epoch > e) {
                    map.replicas.insert(node.id.clone());
                }
            }
            if node.master {
                for &(a, b) in &node.slots {
                    owner[usize::from(a)..=usize::from(b)].fill(i as u16);
                }
            }
        }
        map.owner = owner;
        drop(map);
        for (node, quarantine) in promoted {
            log_promoted(&node, quarantine);
        }
        Ok(true)
    }
}

/// Whether a failed request surely never reached its server (so it may go
/// to another): the node was in its reconnect backoff, or no connection
/// was free. (A refused connection is not enough: a request on an earlier
/// connection may have landed before the server went.)
fn unsent(e: &Error) -> bool {
    matches!(e, Error::NodeDown { .. } | Error::PoolTimeout { .. })
}

/// Logs a promoted replica's quarantine (outside the table's lock).
fn log_promoted(node: &Node, quarantine: Duration) {
    log::warn!(
        "redlease: node {} was a replica and now serves slots (a failover): it grants no lock for {quarantine:?}",
        node.name
    );
}

/// `CLUSTER NODES` on one node.
fn ask_nodes(node: &Arc<Node>) -> Result<Vec<u8>, Failure> {
    let mut conn = node.checkout(Take::Pooled)?;
    resp::encode(conn.request(), &[b"CLUSTER", b"NODES"]);
    conn.send()?;
    let deadline = time::deadline_in(node.io_timeout());
    conn.recv(deadline.into(), true, |reply| match reply {
        Reply::Bulk(text) => Ok(text.to_vec()),
        Reply::Error(text) => Err(Failure::from_server(text)),
        _ => Err(Failure::Protocol("unexpected reply to CLUSTER NODES")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(id: &str, port: u16, master: bool, epoch: u64, slots: &[(u16, u16)]) -> Listed {
        Listed {
            id: id.into(),
            host: "127.0.0.1".into(),
            port,
            hostname: None,
            master,
            failed: false,
            epoch,
            slots: slots.to_vec(),
        }
    }

    /// A view without its refresher thread (nothing here asks for one).
    fn cluster() -> Inner {
        Inner::new(
            vec![Endpoint::tcp("127.0.0.1", 7000)],
            Timeouts {
                connect: Duration::from_millis(100),
                io: Duration::from_millis(100),
            },
            NodeConfig {
                max_conns: 1,
                wait: Duration::from_millis(1),
                quarantine: Some(Duration::from_secs(60)),
            },
            0.01,
            None,
        )
        .unwrap()
    }

    /// Whether the shard connecting to `port` is quarantined.
    fn quarantined(c: &Inner, port: u16) -> bool {
        let map = c.map.read();
        let i = map.find("127.0.0.1", port).unwrap();
        map.shards[i].node().quarantined().is_some()
    }

    const ALL: &[(u16, u16)] = &[(0, 16383)];

    #[test]
    fn promotions_are_quarantined_and_stale_views_ignored() {
        let c = cluster();
        // A serves everything, B replicates it.
        assert!(
            c.adopt(&[
                listed("a", 7000, true, 1, ALL),
                listed("b", 7001, false, 1, &[])
            ])
            .unwrap()
        );
        assert!(!quarantined(&c, 7000) && !quarantined(&c, 7001));
        // B promoted (epoch 2), A now its replica.
        assert!(
            c.adopt(&[
                listed("a", 7000, false, 2, &[]),
                listed("b", 7001, true, 2, ALL)
            ])
            .unwrap()
        );
        assert!(quarantined(&c, 7001), "the promoted replica");
        assert!(!quarantined(&c, 7000));
        // A node that has not heard of the failover: its view is older.
        assert!(
            !c.adopt(&[
                listed("a", 7000, true, 1, ALL),
                listed("b", 7001, false, 1, &[])
            ])
            .unwrap()
        );
        assert!(
            !quarantined(&c, 7000),
            "a stale view promoted the old master"
        );
        assert_eq!(c.owner(5).nodes()[0].name.as_ref(), "127.0.0.1:7001");
        // A failed replica line with a current master's address changes
        // nothing about it.
        let mut stale = listed("old", 7001, false, 3, &[]);
        stale.failed = true;
        assert!(
            c.adopt(&[
                listed("a", 7000, false, 2, &[]),
                listed("b", 7001, true, 2, ALL),
                stale
            ])
            .unwrap()
        );
        assert_eq!(c.map.read().shards[1].id.as_deref(), Some("b"));
        // A master without slots that was a replica is no longer one: a
        // migration giving it slots later is no promotion.
        let c = cluster();
        assert!(
            c.adopt(&[
                listed("a", 7000, true, 1, ALL),
                listed("c", 7002, false, 1, &[])
            ])
            .unwrap()
        );
        assert!(
            c.adopt(&[
                listed("a", 7000, true, 1, ALL),
                listed("c", 7002, true, 3, &[])
            ])
            .unwrap()
        );
        assert!(
            c.adopt(&[
                listed("a", 7000, true, 4, &[(0, 99)]),
                listed("c", 7002, true, 4, &[(100, 16383)])
            ])
            .unwrap()
        );
        assert!(!quarantined(&c, 7002), "a migration is no failover");
    }

    #[test]
    fn moved_to_a_replica_quarantines_it_first() {
        let c = cluster();
        assert!(
            c.adopt(&[
                listed("a", 7000, true, 1, ALL),
                listed("b", 7001, false, 1, &[])
            ])
            .unwrap()
        );
        let q = c.moved(9, "127.0.0.1", 7001).unwrap();
        assert!(q.nodes()[0].quarantined().is_some());
        // Named by its announced host name: the same server.
        let c = cluster();
        let mut b = listed("b", 7001, false, 1, &[]);
        b.hostname = Some("b.example".into());
        assert!(c.adopt(&[listed("a", 7000, true, 1, ALL), b]).unwrap());
        let q = c.moved(9, "B.EXAMPLE", 7001).unwrap();
        assert_eq!(q.nodes()[0].name.as_ref(), "127.0.0.1:7001");
        assert!(q.nodes()[0].quarantined().is_some());
    }

    #[test]
    fn a_server_is_its_address() {
        let c = cluster();
        let mut b = listed("b", 7001, true, 1, &[(0, 99)]);
        b.hostname = Some("b.example".into());
        assert!(
            c.adopt(&[listed("a", 7000, true, 1, &[(100, 16383)]), b.clone()])
                .unwrap()
        );
        // B comes back at another address with its id and host name: a new
        // shard connects there, and the old address keeps no name.
        let mut moved = b.clone();
        moved.port = 7005;
        assert!(
            c.adopt(&[listed("a", 7000, true, 1, &[(100, 16383)]), moved])
                .unwrap()
        );
        assert_eq!(c.owner(5).nodes()[0].name.as_ref(), "127.0.0.1:7005");
        let map = c.map.read();
        let old = map
            .shards
            .iter()
            .find(|s| s.dials("127.0.0.1", 7001))
            .unwrap();
        assert_eq!(old.id, None);
        assert_eq!(old.names.len(), 1);
        drop(map);
        let q = c.asking("b.example", 7005).unwrap();
        assert_eq!(q.nodes()[0].name.as_ref(), "127.0.0.1:7005");
    }
}
