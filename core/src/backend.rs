//! The contract between the engine and a store adapter.
//!
//! Stores come in two families, each with a trait of its own:
//!
//! * [`RecordStore`]: one record per election, changed only by a
//!   compare-and-swap on a version the store keeps (Cloud Storage, a SQL
//!   lease row, the memory store's record mode; client-go's shape). A term
//!   rests on the record itself, which the engine renews.
//! * [`QueueStore`]: one claim per candidate, made in a *session* (an etcd
//!   lease, a ZooKeeper session) that the engine keeps alive; the earliest
//!   claim leads and each waiter watches the one ahead (etcd, ZooKeeper, the
//!   memory store's queue mode; etcd concurrency's and Curator's shape).
//!
//! Every store implements [`Backend`], which names its family
//! ([`Backend::family`]) and carries what both families share. Extras a
//! store may have are told once, by returning `Some` from
//! [`Backend::proclaimer`] or [`Backend::leader_watch`].

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::options::{ElectionOptions, LeasePlan};
use crate::types::{AcquireRequest, Claim, LeaderInfo, QueueOutcome, RecordOutcome};

/// A store adapter. One call is one atomic step on the store (a
/// compare-and-swap or the store's equivalent, or a read); a backend never
/// sleeps or loops on its own timer. The engine ([`Elector`](crate::Elector))
/// owns time: when to renew, when a lease is presumed gone, when to retry.
///
/// Every method here and in the family traits must be **cancel safe**: the
/// engine drops a call's future when the call outlives its deadline. A
/// dropped call may or may not have taken effect on the store; the engine
/// copes with both.
///
/// Implementations are shared (`Arc<dyn Backend>`) between the elector and
/// its background tasks, so they take `&self`.
#[async_trait]
pub trait Backend: Send + Sync + Debug + 'static {
    /// A short name for messages and metrics (`etcd`, `zookeeper`, `gcs`, `memory`).
    fn name(&self) -> &'static str;

    /// The store's family, and its protocol: `Family::Record(self)` or
    /// `Family::Queue(self)`.
    fn family(&self) -> Family<'_>;

    /// Refuse options this store cannot honour (e.g. a ttl below etcd's
    /// minimum), with a message naming the field. Called when an elector is
    /// built to campaign.
    ///
    /// # Errors
    /// [`Error::InvalidOption`](crate::Error::InvalidOption).
    fn validate(&self, options: &ElectionOptions) -> Result<()> {
        let _ = options;
        Ok(())
    }

    /// How this store's timing fits inside `options.ttl` (the failover
    /// bound): the lease it keeps after a renewal and any proof gap, from
    /// which the engine derives the leader's local deadline. The engine asks
    /// the store for a lease of [`LeasePlan::lease`] (the session it opens,
    /// [`AcquireRequest::ttl`]), and on [`Expiry::Observed`] followers wait
    /// that long on an unchanged record.
    ///
    /// Default: on a queue store, the whole ttl, no gap (the store's watch
    /// tells the next candidate at once). On a record store, the ttl less
    /// one follower poll (`retry_interval` + its 20 % jitter): a crashed
    /// holder sends nothing, so followers find the expiry by polling, and
    /// the poll must fit inside the ttl. With [`Expiry::Observed`] a
    /// follower also first sees a record up to a poll after it was written
    /// and then waits exactly the lease ([`Elector`](crate::Elector) wakes
    /// it at that moment), so both ways a crashed leader is replaced within
    /// the ttl.
    fn lease_plan(&self, options: &ElectionOptions) -> LeasePlan {
        match self.family() {
            Family::Queue(_) => LeasePlan::whole(options),
            Family::Record(_) => LeasePlan::new(
                options
                    .ttl
                    .saturating_sub(crate::retry::poll_bound(options.retry_interval)),
                Duration::ZERO,
            ),
        }
    }

    /// The current leader of `election`, if any.
    ///
    /// # Errors
    /// Store failures.
    async fn leader(&self, election: &str) -> Result<Option<LeaderInfo>>;

    /// The store's way to publish a new value within a term, if it has one
    /// (etcd, ZooKeeper, memory). `None` (the default) where a value change
    /// would start a new term (Cloud Storage: every write makes a new
    /// generation, which is the token): [`Leadership::proclaim`](crate::Leadership::proclaim)
    /// then answers [`Error::NotSupported`](crate::Error::NotSupported).
    fn proclaimer(&self) -> Option<&dyn Proclaim> {
        None
    }

    /// The store's watch of an election's leader, if it has one. `None`
    /// (the default): observers poll [`leader`](Self::leader), and waiters
    /// of a record store poll its record.
    fn leader_watch(&self) -> Option<&dyn WatchLeader> {
        None
    }

    /// The store's list of an election's candidates, if it keeps one (the
    /// queue stores: every waiting candidate has a claim). `None` (the
    /// default): [`Elector::participants`](crate::Elector::participants)
    /// answers [`Error::NotSupported`](crate::Error::NotSupported) (a record
    /// store knows only its leader).
    fn participants(&self) -> Option<&dyn ListParticipants> {
        None
    }
}

/// A store's family: which protocol the engine speaks with it.
#[derive(Clone, Copy)]
pub enum Family<'a> {
    /// One record per election, changed by compare-and-swap.
    Record(&'a dyn RecordStore),
    /// Claims in sessions, first come first served.
    Queue(&'a dyn QueueStore),
}

impl Debug for Family<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::Record(_) => "Record",
            Family::Queue(_) => "Queue",
        })
    }
}

/// Who judges that a record's holder stopped renewing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expiry {
    /// The store, on its own clock: [`RecordStore::try_acquire`] takes over
    /// a record its holder has not renewed for a ttl, in the same
    /// conditional write (a SQL row compared with the database's
    /// `clock_timestamp()`). The engine never sets
    /// [`AcquireRequest::expired_revision`].
    Store,
    /// The followers, on their own monotonic clocks (Cloud Storage keeps no
    /// clock for us): a follower that has seen the same record revision for
    /// a full ttl sets [`AcquireRequest::expired_revision`], and the store
    /// takes the record over with one conditional write on exactly that
    /// revision.
    Observed,
}

/// The record family: one record per election, changed only by
/// compare-and-swap on a version the store keeps.
///
/// A term's claim is the record itself; the engine renews it every renew
/// interval ([`renew`](Self::renew)) and counts the leader's local deadline
/// from when the last successful renewal was sent.
#[async_trait]
pub trait RecordStore: Send + Sync {
    /// Who judges expiry (see [`Expiry`]).
    fn expiry(&self) -> Expiry;

    /// Try once to lead `req.election`: one conditional write that lands
    /// only when the record is free (absent, released, or expired as
    /// [`expiry`](Self::expiry) says). The fencing token of a new term is
    /// strictly greater than every earlier term's of the election, even
    /// when the record was deleted in between.
    ///
    /// # Errors
    /// Store failures as [`Error::Unavailable`](crate::Error::Unavailable)
    /// (the engine retries) or other [`Error`](crate::Error)s.
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<RecordOutcome>;

    /// Extend the term behind `claim` by its ttl: one conditional write that
    /// lands only while the record is still this claim's (its owner and
    /// version). Returns the claim as it now is (its `version` may change).
    ///
    /// # Errors
    /// [`Error::Lost`](crate::Error::Lost) when the record is gone or
    /// another candidate holds it; the engine ends the term at once. Other
    /// errors are retried until the local deadline.
    async fn renew(&self, claim: &Claim) -> Result<Claim>;

    /// Give the record up so that the next candidate can lead at once:
    /// mark it released (never delete it to release, or a token source kept
    /// in it could reset). Releasing a claim that is already gone, or twice,
    /// is not an error; releasing never touches someone else's term.
    ///
    /// # Errors
    /// Store failures: the record then expires after its ttl.
    async fn release(&self, claim: &Claim) -> Result<()>;
}

/// Tells sessions that can be shared apart: backends whose scopes are equal
/// share their sessions (one connection, one client). Build it from the
/// state that clones of a backend share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionScope(usize);

impl SessionScope {
    /// The scope of everything that shares `shared` (clones of a backend
    /// that hold the same `Arc`).
    pub fn of<T: ?Sized>(shared: &Arc<T>) -> Self {
        SessionScope(Arc::as_ptr(shared).cast::<()>() as usize)
    }
}

/// The queue family: one claim per candidate, made in a session the engine
/// keeps alive; the earliest claim leads, and each waiter wakes when the
/// claim just ahead of it goes.
///
/// Sessions are the engine's: it opens them, keeps them alive (one
/// keep-alive per renew interval for every claim in the session, shared by
/// the electors whose backends have the same [`scope`](Self::scope) and
/// timings), and closes them when their last user goes. Every claim lives
/// in one session; losing the session ends every term on it.
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Which backends share sessions: those with equal scopes.
    fn scope(&self) -> SessionScope;

    /// The client keeps its session alive on its own (ZooKeeper's pings):
    /// the engine then sends keep-alives only while a leader is on the
    /// session, to prove its deadline at the quorum.
    fn self_kept_sessions(&self) -> bool {
        false
    }

    /// Open a session (an etcd lease, the ZooKeeper client session) of
    /// `ttl`. Returns the session's id.
    ///
    /// # Errors
    /// Store failures.
    async fn open_session(&self, ttl: Duration) -> Result<i64>;

    /// Keep `session` alive for another ttl and prove, at the quorum, that
    /// it still is: the local deadline of every claim in the session counts
    /// from when this call was sent.
    ///
    /// # Errors
    /// [`Error::Lost`](crate::Error::Lost) when the store says the session is
    /// gone (every claim in it went with it); other errors are retried until
    /// the session's local deadline.
    async fn keep_alive(&self, session: i64) -> Result<()>;

    /// End `session` (revoke the etcd lease), after its last user's claims
    /// were released. Ending a session that is already gone is not an
    /// error; a store whose session is its connection's may do nothing.
    ///
    /// # Errors
    /// Store failures: the store ends the session after its ttl.
    async fn close_session(&self, session: i64) -> Result<()>;

    /// Make this candidate's claim of `req.election` in `session` and tell
    /// whether it is among the first `req.permits` in line
    /// ([`QueueOutcome::Acquired`]; first in line for an election) or waits
    /// ([`QueueOutcome::Queued`]). The engine never asks for two claims of
    /// one election in one session.
    ///
    /// **Never adopt.** A claim of `req.election` that already exists in
    /// `session` can only be left by an earlier call whose answer was lost
    /// (the engine keeps the election's place in the session until such a
    /// claim is resolved). It is never taken as the new claim: it is removed
    /// and a new claim made, so every claim, and so every term, gets a new
    /// fencing token.
    ///
    /// # Errors
    /// [`Error::Lost`](crate::Error::Lost) when the session is gone; store
    /// failures otherwise (the engine settles a create whose answer was
    /// lost, see [`withdraw_in`](Self::withdraw_in)).
    async fn join(&self, req: &AcquireRequest, session: i64) -> Result<QueueOutcome>;

    /// Look again at a queued `claim`: among the first `permits` in line now
    /// (first in line for an election), or still waiting.
    ///
    /// # Errors
    /// [`Error::Lost`](crate::Error::Lost) when the claim no longer exists
    /// (deleted, or its session ended): the engine starts over.
    async fn check(&self, claim: &Claim, permits: u32) -> Result<QueueOutcome>;

    /// Take `claim` out of the line: a leader steps down so that the next
    /// candidate leads at once, a waiter leaves. Releasing a claim that is
    /// already gone, or twice, is not an error; it must never remove
    /// someone else's claim, and it leaves the session alive. The engine
    /// calls it again in the background when an answer was lost, while the
    /// session lives.
    ///
    /// # Errors
    /// Store failures.
    async fn release(&self, claim: &Claim) -> Result<()>;

    /// Remove the claim, if any, that a [`join`](Self::join) of `election`
    /// in `session` made but whose answer never arrived (lost in a
    /// connection reset, timed out, dropped). The engine calls it while it
    /// still keeps the election's place in the session, so no other claim of
    /// `election` can be there. Removing nothing is not an error.
    ///
    /// # Errors
    /// Store failures: the engine retries in the background for up to a
    /// ttl, then gives the session up (stops keeping it alive and ends every
    /// term on it) so that the store ends it, and the claim, within a ttl.
    async fn withdraw_in(&self, election: &str, session: i64) -> Result<()>;

    /// Wait until one of the `permits` claims just ahead of `claim` may
    /// have gone (for an election, the one just ahead). Those are the only
    /// claims whose end can let `claim` hold: one further ahead going
    /// leaves `permits` claims ahead of it. Watching only them, no herd:
    /// a claim going wakes at most the `permits` waiters right behind it.
    /// Resolves at once when fewer than `permits` claims are ahead.
    /// Spurious wake-ups are allowed; the engine calls
    /// [`check`](Self::check) after each and bounds the wait by its own
    /// timers.
    ///
    /// # Errors
    /// Store failures: the engine looks again after a retry interval.
    async fn wait(&self, claim: &Claim, permits: u32) -> Result<()>;

    /// Resolve when `claim` no longer exists on the store (deleted by hand,
    /// its session ended): how a leader learns at once that its claim went,
    /// without a read per renew interval. Returns at once when the claim is
    /// already gone.
    ///
    /// # Errors
    /// [`Error::Lost`](crate::Error::Lost) when the claim still exists but
    /// can no longer be trusted to lead (ZooKeeper: a node under another
    /// lock name joined the line): the engine ends the term with that
    /// message. Other failures (a broken or exhausted watch): the engine
    /// calls again at once, and waits (at most a retry interval) only when
    /// that fails too. So each call must start from a fresh look at the
    /// claim (a read, or a watch from its creation): a deletion between two
    /// calls must not be missed.
    async fn watch_claim(&self, claim: &Claim) -> Result<()>;
}

/// Publishing a new leader value within a term (etcd's `Proclaim`).
#[async_trait]
pub trait Proclaim: Send + Sync {
    /// Publish `value` as the leader value of the term behind `claim`: one
    /// conditional write that lands only while the claim still leads, so the
    /// fencing token stays the same. Returns the claim as it now is (its
    /// `version` may change).
    ///
    /// # Errors
    /// [`Error::Lost`](crate::Error::Lost) when the claim is gone. Store
    /// failures as for a renewal.
    async fn proclaim(&self, claim: &Claim, value: &[u8]) -> Result<Claim>;
}

/// Listing an election's candidates.
#[async_trait]
pub trait ListParticipants: Send + Sync {
    /// The live candidates of `election` in line order, each with its id,
    /// value and token: the first leads. Empty when nobody takes part. One
    /// consistent read where the store has one (etcd: one range; ZooKeeper:
    /// a listing, then each node's data, leaving out nodes gone in between).
    ///
    /// # Errors
    /// Store failures.
    async fn participants(&self, election: &str) -> Result<Vec<LeaderInfo>>;

    /// Open a stream of the line of `election`, driven by the store's
    /// watch (no polling): the first item is the line when the watch
    /// starts, each later one the line after a candidate joined or left or
    /// the leader's value changed. Every store that keeps a line watches it
    /// (etcd: a prefix watch; ZooKeeper: a children watch), so this is not
    /// optional.
    ///
    /// # Errors
    /// Store failures; the engine opens it again later.
    async fn watch_participants(&self, election: &str) -> Result<Box<dyn ParticipantsWatch>>;
}

/// A stream of an election's line, from
/// [`ListParticipants::watch_participants`].
#[async_trait]
pub trait ParticipantsWatch: Send {
    /// The line after the next change (the first call returns the current
    /// one), in line order, the leader first. Consecutive equal lines are
    /// allowed; the engine drops repeats.
    ///
    /// # Cancel safety
    /// Must be cancel safe: no change may be lost when the future is dropped.
    ///
    /// # Errors
    /// Store failures; the engine reopens the watch after an error.
    async fn next(&mut self) -> crate::Result<Vec<LeaderInfo>>;
}

/// Watching an election's leader.
#[async_trait]
pub trait WatchLeader: Send + Sync {
    /// Open a stream of leader changes of `election`. The first item is the
    /// leader at the time the watch starts.
    ///
    /// # Errors
    /// Store failures; the engine opens it again later.
    async fn watch(&self, election: &str) -> Result<Box<dyn LeaderWatch>>;
}

/// A stream of leader changes, from [`WatchLeader::watch`].
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
