//! Unstable hooks for the benches and the fuzz targets, behind the
//! `internals` feature. Not part of the API: hidden from the docs, no semver
//! promise.

pub mod properties;
pub mod reference;

use bytes::BytesMut;

use crate::resp::{self, Parse};
use crate::script::{Form, Op};
use crate::token::Token;

/// The largest reply the decoder accepts, in bytes.
pub const MAX_REPLY: usize = crate::resp::MAX_REPLY;

/// The release script's source, as sent by `EVAL` (for the token tests).
pub const RELEASE_SCRIPT: &str = crate::script::RELEASE;

/// A lock's fence as its acquisition found it (the highest counter of the
/// granting nodes), never written back: over a quorum it is **not** safe to
/// use, and the fencing tests use it to show why.
pub fn unconfirmed_fence(lock: &crate::Lock) -> Option<u64> {
    lock.unconfirmed_fence()
}

/// A lock token, for the encoding benches.
#[derive(Debug, Clone, Copy)]
pub struct BenchToken(Token);

impl BenchToken {
    /// A fresh token from the OS CSPRNG (what every acquisition pays).
    pub fn random() -> BenchToken {
        BenchToken(Token::random().expect("os random source"))
    }

    /// The token as sent.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Encodes `SET key token NX PX ttl_ms`.
pub fn encode_acquire(buf: &mut BytesMut, key: &[u8], token: &BenchToken, ttl_ms: u64) {
    Op::Acquire { ttl_ms }.encode(buf, key, &token.0, Form::Sha);
}

/// Encodes the release script call by SHA.
pub fn encode_release(buf: &mut BytesMut, key: &[u8], token: &BenchToken) {
    Op::Release.encode(buf, key, &token.0, Form::Sha);
}

/// Encodes the extend script call by SHA.
pub fn encode_extend(buf: &mut BytesMut, key: &[u8], token: &BenchToken, ttl_ms: u64) {
    Op::Extend { ttl_ms }.encode(buf, key, &token.0, Form::Sha);
}

/// Decodes one reply; returns the bytes it used, `None` when incomplete or
/// invalid. Allocation-free, like the real path.
pub fn decode_len(buf: &[u8]) -> Option<usize> {
    match resp::parse(buf) {
        Ok(Parse::Complete(_, used)) => Some(used),
        _ => None,
    }
}

/// A node's pool without the network: for the checkout/return bench.
pub struct BenchPool(std::sync::Arc<crate::node::Node>);

impl BenchPool {
    /// A pool of `size` connections to the Redis-speaking server at
    /// 127.0.0.1:`port` (a real one, or a fake that answers the handshake).
    pub fn connect(port: u16, size: usize) -> BenchPool {
        let node = std::sync::Arc::new(crate::node::Node::new(
            crate::endpoint::Endpoint::tcp("127.0.0.1", port),
            crate::conn::Timeouts {
                connect: std::time::Duration::from_secs(1),
                io: std::time::Duration::from_secs(1),
            },
            crate::node::NodeConfig {
                max_conns: size,
                wait: std::time::Duration::from_secs(1),
                quarantine: None,
            },
        ));
        node.preconnect(size).expect("connect the bench pool");
        BenchPool(node)
    }

    /// Takes a connection and puts it back.
    pub fn checkout_return(&self) {
        drop(
            self.0
                .checkout(crate::node::Take::Pooled)
                .expect("checkout"),
        );
    }
}

impl std::fmt::Debug for BenchPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BenchPool").field(&self.0.name).finish()
    }
}
