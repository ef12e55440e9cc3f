//! The contract between the engine and a store adapter.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::error::Result;
use crate::options::ElectionOptions;
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
    /// as it now is (its `version` may change).
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
    /// someone else's claim.
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
