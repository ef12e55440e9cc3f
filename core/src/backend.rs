//! The contract between the engine and a store adapter.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::error::Result;
use crate::options::ElectionOptions;
use crate::session::SessionRegistry;
use crate::types::{AcquireOutcome, AcquireRequest, Capabilities, Claim, LeaderInfo};

/// A store adapter. One call is one atomic step on the store (a
/// compare-and-swap or the store's equivalent, or a read); a backend never
/// sleeps or loops on its own timer. The engine ([`Elector`](crate::Elector))
/// owns time: when to renew, when a lease is presumed gone, when to retry.
///
/// Every method must be **cancel safe**: the engine drops a call's future
/// when the call outlives its deadline. A dropped call may or may not have
/// taken effect on the store; the engine copes with both.
///
/// Implementations are shared (`Arc<dyn Backend>`) between the elector and
/// its background tasks, so they take `&self`.
#[async_trait]
pub trait Backend: Send + Sync + Debug + 'static {
    /// A short name for messages and metrics (`etcd`, `zookeeper`, `gcs`, `memory`).
    fn name(&self) -> &'static str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Refuse options this store cannot honour (e.g. a ttl below etcd's
    /// minimum), with a message naming the field. Called when an elector is
    /// built.
    ///
    /// # Errors
    /// [`Error::InvalidOption`](crate::Error::InvalidOption).
    fn validate(&self, options: &ElectionOptions) -> Result<()> {
        let _ = options;
        Ok(())
    }

    /// Try once to lead `req.election`.
    ///
    /// Fair-queue backends create this candidate's claim when `req.claim` is
    /// `None` (attached to a new session/lease of `req.ttl`), or re-check the
    /// given claim, and answer [`AcquireOutcome::Acquired`] when it is first
    /// in line, else [`AcquireOutcome::Held`] with the claim in `queued`.
    ///
    /// # Errors
    /// [`Error::Lost`](crate::Error::Lost) when `req.claim` is given but no
    /// longer exists (its session expired): the engine then starts over with
    /// a new claim. Store failures as [`Error::Unavailable`](crate::Error::Unavailable)
    /// or [`Error::Backend`](crate::Error::Backend).
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<AcquireOutcome>;

    /// Extend the lease behind `claim` by its ttl (leader or waiting
    /// candidate), and confirm that the claim still exists. Returns the claim
    /// as it now is (its `version` may change). The engine calls it for
    /// claims without a session; claims in a session live as long as the
    /// session ([`keep_alive`](Self::keep_alive)).
    ///
    /// # Errors
    /// [`Error::Lost`](crate::Error::Lost) when the store says the claim is
    /// gone or another candidate holds the election; the engine reports
    /// leadership lost at once. Other errors are retried until the local
    /// deadline.
    async fn renew(&self, claim: &Claim) -> Result<Claim>;

    /// Give up `claim`: a leader steps down so the next candidate can lead at
    /// once, a waiting candidate leaves the queue. Releasing a claim that is
    /// already gone, or twice, is not an error; releasing must never remove
    /// someone else's claim. For a claim in a session, the engine calls it
    /// again (in the background, until it succeeds) when an answer was lost,
    /// since the session outlives the claim.
    async fn release(&self, claim: &Claim) -> Result<()>;

    /// Publish `value` as the leader value of the term behind `claim`
    /// (etcd's `Proclaim`): one conditional write that lands only while
    /// the claim is still the store's leader entry for its election, so the
    /// fencing token stays the same. Observers see the new value.
    ///
    /// Returns the claim as it now is (its `version` may change).
    ///
    /// # Errors
    /// [`Error::NotSupported`](crate::Error::NotSupported) (the default)
    /// where a value change would start a new term or cannot be made
    /// conditional (Cloud Storage: the token is the object generation, which
    /// every write changes). [`Error::Lost`](crate::Error::Lost) when the
    /// claim is gone. Store failures as for [`renew`](Self::renew).
    async fn proclaim(&self, claim: &Claim, value: &[u8]) -> Result<Claim> {
        let _ = (claim, value);
        Err(crate::Error::NotSupported {
            operation: "proclaim",
            backend: self.name(),
        })
    }

    /// The current leader of `election`, if any.
    async fn leader(&self, election: &str) -> Result<Option<LeaderInfo>>;

    /// Wait until whatever keeps this candidate from leading may have
    /// changed: with `claim`, the claim just ahead of it in the queue; without,
    /// the election's record (at `revision`, from the last
    /// [`AcquireOutcome::Held`]). Spurious wake-ups are allowed; the engine
    /// calls [`try_acquire`](Self::try_acquire) after each one and bounds the
    /// wait by its own timers.
    ///
    /// # Errors
    /// [`Error::NotSupported`](crate::Error::NotSupported) at once when the
    /// backend has no watch (the engine then polls).
    async fn wait(&self, election: &str, claim: Option<&Claim>, revision: i64) -> Result<()>;

    /// The engine's sessions on this backend instance, for backends with
    /// [`Capabilities::sessions`]: electors built on the same instance share
    /// them. `None` (the default) makes every elector open a session of its
    /// own.
    fn sessions(&self) -> Option<&SessionRegistry> {
        None
    }

    /// Open a session (an etcd lease, the ZooKeeper client session) of `ttl`
    /// that claims can be created in ([`try_acquire_in`](Self::try_acquire_in))
    /// and that the engine keeps alive with [`keep_alive`](Self::keep_alive).
    /// Returns the session's id.
    ///
    /// # Errors
    /// [`Error::NotSupported`](crate::Error::NotSupported) (the default)
    /// without [`Capabilities::sessions`]; store failures otherwise.
    async fn open_session(&self, ttl: std::time::Duration) -> Result<i64> {
        let _ = ttl;
        Err(crate::Error::NotSupported {
            operation: "open_session",
            backend: self.name(),
        })
    }

    /// Keep `session` alive for another ttl and prove, at the quorum, that it
    /// still is: the engine's local deadline of every claim in the session
    /// counts from when this call was sent.
    ///
    /// # Errors
    /// [`Error::Lost`](crate::Error::Lost) when the store says the session is
    /// gone (every claim in it went with it); other errors are retried until
    /// the session's local deadline.
    async fn keep_alive(&self, session: i64) -> Result<()> {
        let _ = session;
        Err(crate::Error::NotSupported {
            operation: "keep_alive",
            backend: self.name(),
        })
    }

    /// End `session` (revoke the etcd lease): called when its last user is
    /// gone, after their claims were released. Ending a session that is
    /// already gone is not an error. The default does nothing (a ZooKeeper
    /// session lives as long as its backend).
    async fn close_session(&self, session: i64) -> Result<()> {
        let _ = session;
        Ok(())
    }

    /// [`try_acquire`](Self::try_acquire) for a candidate without a claim
    /// yet, creating the claim in `session` (from
    /// [`open_session`](Self::open_session)) instead of a lease of its own.
    /// The engine never asks for two claims of one election in one session.
    ///
    /// **Never adopt.** A claim of `req.election` that already exists in
    /// `session` can only be left by an earlier call whose answer was lost
    /// (the engine keeps the election's place in the session until such a
    /// claim is resolved). It is never taken as the new claim: it is removed
    /// and a new claim created, so every claim, and so every term, gets a
    /// new fencing token.
    ///
    /// # Errors
    /// [`Error::Lost`](crate::Error::Lost) when the session is gone;
    /// otherwise as [`try_acquire`](Self::try_acquire).
    async fn try_acquire_in(&self, req: &AcquireRequest, session: i64) -> Result<AcquireOutcome> {
        let _ = (req, session);
        Err(crate::Error::NotSupported {
            operation: "try_acquire_in",
            backend: self.name(),
        })
    }

    /// Remove the claim, if any, that a [`try_acquire_in`](Self::try_acquire_in)
    /// of `election` in `session` made but whose answer never arrived (lost
    /// in a connection reset, timed out, dropped). The engine calls it when a
    /// campaign ends with such a create unresolved, while it still keeps
    /// the election's place in the session, so no other claim of
    /// `election` can be in `session`. Removing nothing is not an error.
    ///
    /// # Errors
    /// [`Error::NotSupported`](crate::Error::NotSupported) (the default): the
    /// engine then gives the session up (stops keeping it alive and ends
    /// every term on it), so that the store ends it and the claim with it
    /// within a ttl. Store failures: the engine retries in the background
    /// for up to a ttl, then gives the session up.
    async fn withdraw_in(&self, election: &str, session: i64) -> Result<()> {
        let _ = (election, session);
        Err(crate::Error::NotSupported {
            operation: "withdraw_in",
            backend: self.name(),
        })
    }

    /// Resolve when `claim` no longer exists on the store (deleted by hand,
    /// its session ended): how a leader on a shared session learns at once
    /// that its own claim went, without a read per renew interval. Returns
    /// at once when the claim is already gone.
    ///
    /// # Errors
    /// [`Error::NotSupported`](crate::Error::NotSupported) (the default)
    /// without a watch; [`Error::Lost`](crate::Error::Lost) when the claim
    /// still exists but can no longer be trusted to lead (ZooKeeper: a node
    /// under another lock name joined the line): the engine ends the term
    /// with that message; other store failures (a broken or exhausted
    /// watch): the engine calls again at once, and waits (a back-off of at
    /// most a retry interval) only when that fails too. So each call must
    /// start from a fresh look at the claim (a read, or a watch from its
    /// creation): a deletion between two calls must not be missed.
    async fn watch_claim(&self, claim: &Claim) -> Result<()> {
        let _ = claim;
        Err(crate::Error::NotSupported {
            operation: "watch_claim",
            backend: self.name(),
        })
    }

    /// Open a stream of leader changes of `election`. The first item is the
    /// leader at the time the watch starts.
    ///
    /// # Errors
    /// [`Error::NotSupported`](crate::Error::NotSupported) when the backend
    /// has no watch (the engine then polls [`leader`](Self::leader)).
    async fn watch(&self, election: &str) -> Result<Box<dyn LeaderWatch>>;
}

/// A stream of leader changes, from [`Backend::watch`].
#[async_trait]
pub trait LeaderWatch: Send {
    /// The leader after the next change (the first call returns the current
    /// one). Consecutive equal values are allowed; the engine drops repeats.
    ///
    /// # Cancel safety
    /// Must be cancel safe: no change may be lost when the future is dropped.
    ///
    /// # Errors
    /// Store failures; the engine reopens the watch after an error.
    async fn next(&mut self) -> crate::Result<Option<LeaderInfo>>;
}
