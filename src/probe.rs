//! What `build()` learns from each node before the first lock: which server
//! it is (its `run_id`, so that one server listed under two addresses is
//! refused), and whether the user may run every command a lock needs (so
//! that a user who could take locks but never release them fails at once,
//! not at the first release).

use std::sync::Arc;

use smallvec::SmallVec;

use crate::error::{Error, Failure, ServerError, ServerText};
use crate::node::{Node, Take};
use crate::resp::{self, Reply};
use crate::script::{Form, Op};
use crate::time;
use crate::token::Token;

/// The probe's commands, in the order they are sent, named as the user
/// would grant them: `SET`, `GET`, `PEXPIRE`, the extend script by source
/// and by SHA, the release script by SHA, `DEL`.
const PROBE: [&str; 7] = ["SET", "GET", "PEXPIRE", "EVAL", "EVALSHA", "EVALSHA", "DEL"];

/// TTL of the probe's key, in case the probe cannot delete it (a user
/// without `DEL`): long enough for the probe's one round trip.
const PROBE_TTL_MS: u64 = 2_000;

/// What the handshake's `INFO server` said about the server: its
/// `run_id`, which tells two addresses of one server apart from two
/// servers, and whether it told its uptime, which the restart quarantine
/// needs. `None` and `false` when it would not say (an ACL user without
/// `INFO`).
pub(crate) fn identity(node: &Arc<Node>) -> Result<(Option<[u8; 40]>, bool), Failure> {
    let conn = node.checkout(Take::Pooled)?;
    Ok((conn.server_run_id(), conn.server_uptime().is_some()))
}

/// One `PING`'s round trip on a pooled connection (for `status()`);
/// `None` if the node is down or did not answer in time.
pub(crate) fn round_trip(node: &Arc<Node>) -> Option<std::time::Duration> {
    let mut conn = node.checkout(Take::Pooled).ok()?;
    resp::encode(conn.request(), &[b"PING"]);
    let start = std::time::Instant::now();
    conn.send().ok()?;
    let deadline = time::deadline_in(node.io_timeout());
    // `had_time` false: a slow PING here is no reason to mark it down.
    conn.recv(deadline.into(), false, |reply| match reply {
        Reply::Simple(b"PONG") => Ok(()),
        Reply::Error(text) => Err(Failure::from_server(text)),
        _ => Err(Failure::Protocol("unexpected reply to PING")),
    })
    .ok()?;
    Some(start.elapsed())
}

/// Runs every command a lock needs once, on a fresh key of its own that
/// expires by itself, in one round trip: `SET NX PX`, `GET`, `PEXPIRE`,
/// both scripts by source and by SHA, `DEL`. A command the user may not run
/// is an [`Error::Permission`] naming it. A user limited to some key
/// patterns is refused the probe's key, which says nothing about the keys
/// it will lock: only what was refused as a command counts. Other errors
/// (`OOM`, `READONLY`, …) are passing trouble for the lock calls to report.
/// With `wait` (the manager waits for replicas), `WAIT 0 0` too.
/// With `tag`, the key carries it as its hash tag (a cluster master must
/// serve the key's slot).
pub(crate) fn permissions(node: &Arc<Node>, wait: bool, tag: Option<&[u8]>) -> Result<(), Error> {
    let failed = |failure: Failure| failure.into_error(&node.name);
    let token = Token::random().map_err(|e| Error::RandomSource(e.to_string().into()))?;
    let mut key = b"redlease:probe:".to_vec();
    if let Some(tag) = tag {
        key.push(b'{');
        key.extend_from_slice(tag);
        key.extend_from_slice(b"}:");
    }
    key.extend_from_slice(token.as_bytes());
    let ttl = itoa::Buffer::new().format(PROBE_TTL_MS).to_owned();
    let extend = Op::Extend {
        ttl_ms: PROBE_TTL_MS,
    };

    let mut conn = node.checkout(Take::Pooled).map_err(failed)?;
    let buf = conn.request();
    resp::encode(
        buf,
        &[b"SET", &key, token.as_bytes(), b"NX", b"PX", ttl.as_bytes()],
    );
    resp::encode(buf, &[b"GET", &key]);
    resp::encode(buf, &[b"PEXPIRE", &key, ttl.as_bytes()]);
    extend.encode(buf, &key, &token, Form::Source);
    extend.encode(buf, &key, &token, Form::Sha);
    Op::Release.encode(buf, &key, &token, Form::Sha);
    resp::encode(buf, &[b"DEL", &key]);
    if wait {
        resp::encode(buf, &[b"WAIT", b"0", b"0"]);
    }
    let probed: SmallVec<[&str; 8]> = PROBE
        .iter()
        .copied()
        .chain(wait.then_some("WAIT"))
        .collect();
    conn.send_many(probed.len() as u32).map_err(failed)?;

    let deadline = time::deadline_in(node.io_timeout());
    let mut denied: Vec<&str> = Vec::new();
    let mut first_text = None;
    for what in probed {
        let refused = conn
            .recv_next_with(deadline.into(), |reply| match reply {
                Reply::Error(text) => Some(ServerText::new(text)),
                _ => None,
            })
            .map_err(failed)?;
        let Some(text) = refused else { continue };
        match text.kind() {
            ServerError::CommandDenied => {
                // A script refused a command it runs: the direct command of
                // the same name is refused too, and names it.
                let what = if text.starts_with(b"ERR") {
                    "a command the lock scripts run"
                } else {
                    what
                };
                if !denied.contains(&what) {
                    denied.push(what);
                }
                first_text.get_or_insert(text);
            }
            ServerError::KeyDenied | ServerError::NoScript => {}
            _ => log::debug!(
                "redlease: permission probe on {}: {what} answered {text:?}",
                node.name
            ),
        }
    }
    match first_text {
        None => Ok(()),
        Some(text) => Err(Error::Permission {
            node: Arc::clone(&node.name),
            message: format!(
                "the user may not run {}, which locks need: {}",
                denied.join(", "),
                String::from_utf8_lossy(text.as_bytes())
            )
            .into(),
        }),
    }
}
