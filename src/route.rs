//! Where a key's lock lives: on every node of one Redlock quorum (one node
//! is a quorum of one), or, in a Redis Cluster, on the master of the key's
//! hash slot (`cluster/`). The manager and the keeper ask this, never a
//! quorum directly; each operation's meaning stays the quorum's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::error::Error;
use crate::node::Node;
use crate::quorum::{Acquired, Attempt, ExtendFailed, HandedOff, Quorum, Renewal, millis};
use crate::script::Op;
use crate::token::Token;

/// The nodes behind a manager.
#[derive(Debug)]
pub(crate) enum Route {
    /// The same nodes for every key.
    Quorum(Quorum),
    /// The slot's master for each key (boxed: it is larger, and matched
    /// second).
    Cluster(Box<Cluster>),
}

impl Route {
    /// The nodes now (a cluster's masters that serve slots).
    pub(crate) fn nodes(&self) -> Vec<Arc<Node>> {
        match self {
            Route::Quorum(q) => q.nodes().to_vec(),
            Route::Cluster(c) => c.nodes(),
        }
    }

    /// How many nodes [`nodes`](Self::nodes) would list (without
    /// allocating, for a quorum).
    pub(crate) fn node_count(&self) -> usize {
        match self {
            Route::Quorum(q) => q.nodes().len(),
            Route::Cluster(c) => c.nodes().len(),
        }
    }

    /// Votes a lock needs: a majority of a quorum; one, the slot's master,
    /// in a cluster.
    pub(crate) fn needed(&self) -> usize {
        match self {
            Route::Quorum(q) => q.needed(),
            Route::Cluster(_) => 1,
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Route::Cluster(_))
    }

    /// See [`Quorum::drift`].
    #[inline]
    pub(crate) fn drift(&self, ttl: Duration) -> Duration {
        match self {
            Route::Quorum(q) => q.drift(ttl),
            Route::Cluster(c) => c.drift(ttl),
        }
    }

    pub(crate) fn waits_for_replicas(&self) -> bool {
        match self {
            Route::Quorum(q) => q.waits_for_replicas(),
            Route::Cluster(c) => c.waits_for_replicas(),
        }
    }

    /// What `build()` checks before the first lock.
    pub(crate) fn connect(&self, preconnect: usize) -> Result<(), Error> {
        match self {
            Route::Quorum(q) => q.connect(preconnect),
            Route::Cluster(c) => c.connect(preconnect),
        }
    }

    /// Runs `op` on `key`'s quorum: the one, or the key's slot's master
    /// (following the cluster's redirections, read by `error`).
    #[inline]
    fn on<T>(
        &self,
        key: &[u8],
        op: impl FnMut(&Quorum) -> T,
        error: impl Fn(&T) -> Option<&Error>,
    ) -> T {
        self.on_with(key, op, error, true)
    }

    /// [`on`](Self::on); not `patient`: a cluster's `TRYAGAIN` and
    /// `CLUSTERDOWN` are returned at once rather than asked again.
    #[inline]
    fn on_with<T>(
        &self,
        key: &[u8],
        op: impl FnMut(&Quorum) -> T,
        error: impl Fn(&T) -> Option<&Error>,
        patient: bool,
    ) -> T {
        match self {
            Route::Quorum(q) => {
                let mut op = op;
                op(q)
            }
            Route::Cluster(c) => c.on(key, op, error, patient),
        }
    }

    /// See [`Quorum::acquire`].
    #[inline]
    pub(crate) fn acquire(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
        attempt: Attempt,
    ) -> Result<Acquired, Error> {
        self.on(
            key,
            |q| q.acquire(key, token, ttl, attempt),
            |r| r.as_ref().err(),
        )
    }

    /// See [`Quorum::acquire_op`]; `key` places it (a primitive's key, a
    /// multi-key lock's first).
    pub(crate) fn acquire_op(
        &self,
        op: Op<'_>,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> Result<Acquired, Error> {
        self.on(
            key,
            |q| q.acquire_op(op, key, token, ttl),
            |r| r.as_ref().err(),
        )
    }

    /// See [`Quorum::extend_op`].
    pub(crate) fn extend_op(
        &self,
        op: Op<'_>,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> Result<Instant, ExtendFailed> {
        self.on(
            key,
            |q| q.extend_op(op, key, token, ttl),
            |r| r.as_ref().err().map(|f| &f.error),
        )
    }

    /// See [`Quorum::release_op`].
    pub(crate) fn release_op(&self, op: Op<'_>, key: &[u8], token: &Token) -> Result<bool, Error> {
        self.on(key, |q| q.release_op(op, key, token), |r| r.as_ref().err())
    }

    /// See [`Quorum::handoff`].
    pub(crate) fn handoff(
        &self,
        key: &[u8],
        ours: &Token,
        theirs: &Token,
        ttl: Duration,
    ) -> HandedOff {
        self.on(
            key,
            |q| q.handoff(key, ours, theirs, ttl),
            |r| match r {
                HandedOff::Failed { released: Err(e) } => Some(e),
                _ => None,
            },
        )
    }

    /// See [`Quorum::confirm_fence`].
    pub(crate) fn confirm_fence(
        &self,
        key: &[u8],
        token: &Token,
        fence: u64,
    ) -> Result<Instant, Error> {
        self.on(
            key,
            |q| q.confirm_fence(key, token, fence),
            |r| r.as_ref().err(),
        )
    }

    /// See [`Quorum::fair_leave`].
    pub(crate) fn fair_leave(&self, key: &[u8], token: &Token) {
        self.on(key, |q| q.fair_leave(key, token), Option::as_ref);
    }

    /// See [`Quorum::release`].
    #[inline]
    pub(crate) fn release(&self, key: &[u8], token: &Token) -> Result<bool, Error> {
        self.release_op(Op::Release, key, token)
    }

    /// See [`Quorum::extend`].
    pub(crate) fn extend(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> Result<Instant, ExtendFailed> {
        let op = Op::Extend {
            ttl_ms: millis(ttl),
        };
        self.extend_op(op, key, token, ttl)
    }

    /// [`extend`](Self::extend) without waiting out a cluster's `TRYAGAIN`
    /// or `CLUSTERDOWN` (the keeper's, which holds other leases meanwhile).
    pub(crate) fn extend_now(
        &self,
        key: &[u8],
        token: &Token,
        ttl: Duration,
    ) -> Result<Instant, ExtendFailed> {
        self.on_with(
            key,
            |q| q.extend(key, token, ttl),
            |r| r.as_ref().err().map(|f| &f.error),
            false,
        )
    }

    /// See [`Quorum::renew_many`]; in a cluster every key of the batch is
    /// in the slot of `key` (the keeper batches by slot). Returns the error
    /// that left the batch undecided, if one did: in a cluster, a batch
    /// whose slot is being migrated is refused (`TRYAGAIN`, or `ASK` for
    /// keys already moved) and the keeper renews its locks one by one (see
    /// [`needs_one_by_one`]).
    pub(crate) fn renew_many(
        &self,
        key: &[u8],
        op: Op<'_>,
        token: &Token,
        ttls: &[Duration],
        mut each: impl FnMut(usize, Renewal),
    ) -> Option<Error> {
        match self {
            Route::Quorum(q) => q.renew_many(op, token, ttls, each),
            // A redirected batch is renewed again where it went; its
            // outcomes replace the first's. Not patient: the keeper holds
            // its leases meanwhile.
            Route::Cluster(c) => c.on(
                key,
                |q| q.renew_many(op, token, ttls, &mut each),
                Option::as_ref,
                false,
            ),
        }
    }
}

/// Whether a cluster batch's error means its slot is being migrated, so
/// that its locks are renewed one by one (each follows its own `ASK`).
pub(crate) fn needs_one_by_one(error: &Error) -> bool {
    matches!(error, Error::Server { message, .. }
        if message.starts_with("TRYAGAIN") || message.starts_with("ASK "))
}

/// What a single extend's outcome means for a renewal, by the batch's
/// rules (see [`Quorum::renew_many`]).
pub(crate) fn renewal_of(extended: Result<Instant, ExtendFailed>) -> Renewal {
    match extended {
        Ok(until) => Renewal::Renewed(until),
        Err(ExtendFailed {
            error: Error::LockLost | Error::ValidityExpired { .. },
            ..
        }) => Renewal::Lost,
        Err(ExtendFailed {
            valid_until_at_most,
            ..
        }) => Renewal::Undecided {
            valid_until_at_most,
        },
    }
}
