//! The `metrics` feature: with a recorder installed, each operation is
//! counted where the README says, and the hot path still allocates nothing
//! (handles are registered when the manager is built). The recorder here is
//! a test's own: atomics behind each handle, so that what allocates is ours
//! to see.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use support::RedisServer;
use support::alloc::CountingAllocator;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const TTL: Duration = Duration::from_secs(10);

/// A histogram that keeps its count and sum.
#[derive(Default)]
struct Summary {
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl HistogramFn for Summary {
    fn record(&self, value: f64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add((value * 1e9) as u64, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct TestRecorder {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
    gauges: Mutex<HashMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<HashMap<String, Arc<Summary>>>,
}

/// `name{label=value,…}`, labels in order.
fn name_of(key: &Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    if labels.is_empty() {
        key.name().to_owned()
    } else {
        format!("{}{{{}}}", key.name(), labels.join(","))
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let handle = Arc::clone(
            self.counters
                .lock()
                .unwrap()
                .entry(name_of(key))
                .or_default(),
        );
        Counter::from_arc(handle)
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let handle = Arc::clone(self.gauges.lock().unwrap().entry(name_of(key)).or_default());
        Gauge::from_arc(handle)
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let handle = Arc::clone(
            self.histograms
                .lock()
                .unwrap()
                .entry(name_of(key))
                .or_default(),
        );
        Histogram::from_arc(handle)
    }
}

impl TestRecorder {
    fn counter(&self, name: &str) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
    fn gauge(&self, name: &str) -> Option<f64> {
        self.gauges
            .lock()
            .unwrap()
            .get(name)
            .map(|g| f64::from_bits(g.load(Ordering::Relaxed)))
    }
    fn histogram_count(&self, name: &str) -> u64 {
        self.histograms
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |h| h.count.load(Ordering::Relaxed))
    }
}

// The trait impls metrics wants for the handles above.
#[allow(dead_code)]
fn _assert_handles(c: &AtomicU64)
where
    AtomicU64: CounterFn + GaugeFn,
{
    let _ = c;
}

#[test]
fn operations_are_counted_and_cost_no_allocation() {
    let recorder: &'static TestRecorder = Box::leak(Box::default());
    metrics::set_global_recorder(recorder).expect("the only recorder");
    let mut servers = RedisServer::start_many(3);
    let one = support::manager([servers[0].url()]);
    let node = format!("127.0.0.1:{}", servers[0].port);
    assert_eq!(
        recorder.gauge(&format!("redlease_node_up{{node={node}}}")),
        Some(1.0)
    );

    // Steady state: nothing allocated, recorder and all.
    let cycle = || {
        let lock = one.try_lock("m", TTL).expect("try_lock").expect("free");
        assert!(lock.release().expect("release"));
    };
    for _ in 0..200 {
        cycle();
    }
    let held = one.try_lock("m-held", TTL).unwrap().expect("free");
    let (allocations, ()) = support::alloc::count(|| {
        for _ in 0..2_000 {
            cycle();
            assert!(one.try_lock("m-held", TTL).unwrap().is_none());
        }
    });
    assert_eq!(allocations, 0, "the hot path allocated with metrics on");
    assert_eq!(
        recorder.counter("redlease_acquire_total{outcome=granted}"),
        2_201
    );
    assert_eq!(
        recorder.counter("redlease_acquire_total{outcome=held}"),
        2_000
    );
    assert_eq!(
        recorder.histogram_count("redlease_acquire_wait_seconds"),
        2_201
    );
    assert_eq!(recorder.histogram_count("redlease_hold_seconds"), 2_200);

    // Extends: one that works, one on a lock taken from under us.
    let mut held = held;
    held.extend(TTL).expect("extend");
    let _: () = servers[0].cmd(&[b"SET", b"m-held", b"someone else"]);
    assert!(held.extend(TTL).is_err());
    assert_eq!(
        recorder.counter("redlease_extend_total{outcome=extended}"),
        1
    );
    assert_eq!(recorder.counter("redlease_extend_total{outcome=lost}"), 1);
    drop(held);

    // Waits that give up (try_lock_for: held at its last look; lock with
    // a wait bound: timed out), then one that is handed the lock.
    let blocker = one.try_lock("m-wait", TTL).unwrap().expect("free");
    assert!(
        one.try_lock_for("m-wait", TTL, Duration::from_millis(50))
            .unwrap()
            .is_none()
    );
    let err = one
        .lock_with(
            "m-wait",
            TTL,
            &redlease::RetryPolicy::default().max_wait(Duration::from_millis(50)),
        )
        .expect_err("held");
    assert!(err.is_contended());
    assert_eq!(
        recorder.counter("redlease_acquire_total{outcome=held}"),
        2_001
    );
    assert_eq!(
        recorder.counter("redlease_acquire_total{outcome=timeout}"),
        1
    );
    // A waiter parked on the key gets it handed over by the release.
    let waiter = {
        let one = one.clone();
        std::thread::spawn(move || drop(one.lock("m-wait", TTL).expect("handed over")))
    };
    std::thread::sleep(Duration::from_millis(300));
    drop(blocker);
    waiter.join().expect("waiter");
    assert_eq!(recorder.histogram_count("redlease_handoff_seconds"), 1);

    // A kept-alive lock found lost.
    let lock = one
        .try_lock("m-kept", Duration::from_millis(600))
        .unwrap()
        .expect("free");
    let lock = lock.keep_alive().expect("keep alive");
    let _: () = servers[0].cmd(&[b"DEL", b"m-kept"]);
    assert!(lock.wait_lost(Duration::from_secs(3)), "found lost");
    assert_eq!(recorder.counter("redlease_locks_lost_total"), 1);
    drop(lock);

    // A node that fails: its errors, and its gauge down.
    let three = support::manager(servers.iter().map(RedisServer::url));
    let dead = format!("127.0.0.1:{}", servers[2].port);
    servers[2].kill();
    for _ in 0..3 {
        drop(three.try_lock("m-3", TTL));
    }
    assert!(recorder.counter(&format!("redlease_node_errors_total{{node={dead}}}")) >= 1);
    assert_eq!(
        recorder.gauge(&format!("redlease_node_up{{node={dead}}}")),
        Some(0.0)
    );
    let granted = recorder.counter("redlease_acquire_total{outcome=granted}");
    assert!(granted >= 2_205, "{granted}");
    // Locks lost or taken before they were dropped record no hold.
    let holds = recorder.histogram_count("redlease_hold_seconds");
    assert!(holds <= granted - 2, "{holds} holds of {granted} grants");
}
