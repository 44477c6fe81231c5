//! The primitives section: what a permit, a read lock, a write lock and a
//! 3-key lock cost per cycle (acquire + release) against a plain lock, on
//! one server. Interleaved rounds, medians; instructions by callgrind.

use redlease::LockManager;

use super::support::RedisServer;
use super::{Sample, Settings, TTL};

/// The contestants, by name: the plain lock first.
const SHAPES: [(&str, &str); 5] = [
    ("shape-lock", "plain lock (try_lock + release)"),
    ("shape-permit", "semaphore permit (try_acquire + release)"),
    ("shape-read", "read lock (try_read + release)"),
    ("shape-write", "write lock (try_write + release)"),
    ("shape-set", "3-key lock (try_lock_all + release)"),
];

/// One cycle of `shape` on `locks`.
pub(crate) fn cycle(shape: &str, locks: &LockManager) -> impl FnMut() + use<> {
    let sem = locks.semaphore("bench:permits", 4).expect("semaphore");
    let rw = locks.rwlock("bench:rw").expect("rwlock");
    let locks = locks.clone();
    let shape = SHAPES
        .iter()
        .position(|(name, _)| *name == shape)
        .expect("a known shape");
    move || match shape {
        0 => {
            let lock = locks
                .try_lock(b"bench:lock", TTL)
                .expect("try")
                .expect("free");
            assert!(lock.release().expect("release"));
        }
        1 => {
            let permit = sem.try_acquire(TTL).expect("try").expect("free");
            assert!(permit.release().expect("release"));
        }
        2 => {
            let read = rw.try_read(TTL).expect("try").expect("free");
            assert!(read.release().expect("release"));
        }
        3 => {
            let write = rw.try_write(TTL).expect("try").expect("free");
            assert!(write.release().expect("release"));
        }
        _ => {
            let set = locks
                .try_lock_all(&[b"bench:a", b"bench:b", b"bench:c"], TTL)
                .expect("try")
                .expect("free");
            assert!(set.release().expect("release"));
        }
    }
}

/// Whether `who` names a shape (a callgrind child's contestant).
pub(crate) fn is_shape(who: &str) -> bool {
    SHAPES.iter().any(|(name, _)| *name == who)
}

pub(crate) fn report(s: &Settings, server: &RedisServer) {
    let locks = LockManager::builder()
        .restart_quarantine(false)
        .node(server.url())
        .build()
        .expect("build");
    let mut samples: Vec<Sample> = SHAPES.iter().map(|(_, what)| Sample::new(what)).collect();
    let mut cycles: Vec<_> = SHAPES.iter().map(|(name, _)| cycle(name, &locks)).collect();
    let pids: Vec<u32> = server.pid().into_iter().collect();
    for round in 0..s.rounds {
        for k in 0..samples.len() {
            let i = (k + round) % samples.len();
            super::measure(&mut samples[i], s.cycles, &pids, &mut cycles[i]);
        }
    }
    let instructions: Vec<Option<f64>> = SHAPES
        .iter()
        .map(|(name, _)| {
            s.callgrind
                .then(|| super::callgrind_count(name, &server.url(), None))
                .flatten()
        })
        .collect();
    println!("\n#### Primitives: a permit, a read or write lock, a 3-key lock\n");
    println!(
        "{} rounds × {} cycles each, interleaved; one server; each cycle takes and releases (two round trips)\n",
        s.rounds, s.cycles
    );
    super::ratio_table("cycle", "lock", &samples, &instructions, false);
}
