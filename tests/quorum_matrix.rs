//! Scenario 3, the quorum matrix: for N = 3 and N = 5, every assignment of
//! the nodes to free, held by another token, down, or blackholed. The lock
//! is granted exactly when a quorum is free and reachable; otherwise the
//! outcome is `None` when other owners make a quorum impossible, and a
//! `NoQuorum` error naming how many agreed when failures did; and no key with
//! our token survives anywhere.

mod support;

use std::time::Duration;

use redlease::Error;
use support::RedisServer;
use support::proxy::{FaultProxy, Mode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    Held,
    /// Server killed (N = 3) or connections refused (N = 5).
    Down,
    Blackhole,
}

const OTHER: &[u8] = b"another-owner";

struct Node {
    server: RedisServer,
    proxy: FaultProxy,
}

/// All assignments of `states` to `n` nodes, in a fixed order.
fn assignments(n: usize, states: &[State]) -> Vec<Vec<State>> {
    let mut all = vec![Vec::new()];
    for _ in 0..n {
        all = all
            .into_iter()
            .flat_map(|prefix| {
                states.iter().map(move |s| {
                    let mut next = prefix.clone();
                    next.push(*s);
                    next
                })
            })
            .collect();
    }
    all
}

fn check(nodes: &mut [Node], states: &[State], kill: bool) {
    let n = nodes.len();
    let needed = n / 2 + 1;
    for (node, state) in nodes.iter_mut().zip(states) {
        node.proxy.set(Mode::Pass);
        node.proxy.reset_all();
        if node.server.pid().is_none() {
            node.server.restart();
        }
        let _: () = node.server.cmd(&[b"DEL", b"k"]);
        match state {
            State::Free => {}
            State::Held => {
                let _: () = node.server.cmd(&[b"SET", b"k", OTHER, b"PX", b"60000"]);
            }
            State::Down if kill => node.server.kill(),
            State::Down => node.proxy.set(Mode::Refuse),
            State::Blackhole => node.proxy.set(Mode::Blackhole),
        }
    }
    let locks = support::builder()
        .nodes(nodes.iter().map(|n| n.proxy.url()))
        .connect_lazily(true)
        .connect_timeout(Duration::from_millis(100))
        .io_timeout(Duration::from_millis(25))
        .build()
        .expect("lazy build");
    let count = |s: State| states.iter().filter(|x| **x == s).count();
    let (free, held) = (count(State::Free), count(State::Held));

    match locks.try_lock("k", Duration::from_secs(10)) {
        Ok(Some(lock)) => {
            assert!(free >= needed, "{states:?}: granted with only {free} free");
            for (node, state) in nodes.iter().zip(states) {
                if *state == State::Free {
                    assert!(
                        node.server.get(b"k").is_some_and(|v| v != OTHER),
                        "{states:?}: not written"
                    );
                }
            }
            assert!(lock.release().expect("release"), "{states:?}");
        }
        Ok(None) => {
            assert!(free < needed, "{states:?}: refused with {free} free");
            assert!(
                held > n - needed,
                "{states:?}: 'held' with only {held} held"
            );
        }
        Err(Error::NoQuorum {
            agreed,
            nodes: total,
            cause,
        }) => {
            assert!(free < needed, "{states:?}: no quorum with {free} free");
            assert!(
                held <= n - needed,
                "{states:?}: failures blamed though {held} held"
            );
            assert_eq!(
                (agreed, total),
                (free, n),
                "{states:?}: the error misreports the vote"
            );
            assert!(cause.is_some(), "{states:?}: no cause given");
        }
        Err(e) => panic!("{states:?}: unexpected error {e:?}"),
    }
    // Nothing of ours survives: every live server has no key, or the other
    // owner's untouched value.
    for (node, state) in nodes.iter().zip(states) {
        if node.server.pid().is_some() {
            let value = node.server.get(b"k");
            match state {
                State::Held => assert_eq!(
                    value.as_deref(),
                    Some(OTHER),
                    "{states:?}: held key touched"
                ),
                _ => assert_eq!(value, None, "{states:?}: our key survived"),
            }
        }
    }
}

fn nodes(n: usize) -> Vec<Node> {
    RedisServer::start_many(n)
        .into_iter()
        .map(|server| {
            let proxy = FaultProxy::start(server.port);
            Node { server, proxy }
        })
        .collect()
}

/// N = 3: all 4³ = 64 assignments; "down" is a killed server.
#[test]
fn matrix_of_three() {
    let mut nodes = nodes(3);
    let all = assignments(
        3,
        &[State::Free, State::Held, State::Down, State::Blackhole],
    );
    assert_eq!(all.len(), 64);
    for states in &all {
        check(&mut nodes, states, true);
    }
}

/// N = 5: all 3⁵ = 243 assignments of free, held and unreachable, where an
/// unreachable node is refused or blackholed in alternation (by position
/// and assignment), so both kinds meet every position.
#[test]
fn matrix_of_five() {
    let mut nodes = nodes(5);
    let all = assignments(5, &[State::Free, State::Held, State::Down]);
    assert_eq!(all.len(), 243);
    for (k, states) in all.iter().enumerate() {
        let states: Vec<State> = states
            .iter()
            .enumerate()
            .map(|(i, s)| match s {
                State::Down if (i + k) % 2 == 0 => State::Blackhole,
                other => *other,
            })
            .collect();
        check(&mut nodes, &states, false);
    }
}
