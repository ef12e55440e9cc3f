//! The values that pass between the engine, the backends and the user.

use std::fmt;
use std::time::Duration;

/// A fencing token: strictly greater for every later term of the same
/// election, on every backend.
///
/// Pass it to the resource you protect with every write; the resource keeps
/// the highest token it has seen and rejects writes with a lower one. Then a
/// leader that was replaced without noticing (a long GC pause, a partition)
/// cannot corrupt anything.
///
/// Sources: etcd, the create revision of the leader's key; ZooKeeper, the
/// czxid of the leader's node; Cloud Storage, the object generation of the
/// write that started the term; memory, a store-wide counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// The token as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for FencingToken {
    fn from(v: u64) -> Self {
        FencingToken(v)
    }
}

/// Who leads an election.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaderInfo {
    /// The leader's candidate id.
    pub id: String,
    /// The leader's value (an address, a JSON blob: whatever the candidate published).
    pub value: Vec<u8>,
    /// The fencing token of the leader's term.
    pub token: FencingToken,
}

impl LeaderInfo {
    /// The value as UTF-8 text, if it is.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }
}

/// What a backend can do. The engine adapts to it: without a watch it polls;
/// without server-side expiry it expires leases by observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The store expires a lease by itself when its holder stops renewing
    /// (etcd leases, ZooKeeper sessions). Without it, a follower takes over
    /// only after it has seen the same record unchanged for a full ttl on its
    /// own monotonic clock.
    pub server_expiry: bool,
    /// [`Backend::wait`](crate::Backend::wait) and
    /// [`Backend::watch`](crate::Backend::watch) are supported; otherwise
    /// the engine polls every retry interval.
    pub watch: bool,
    /// Candidates queue: the earliest waiting candidate is next when the
    /// leader goes (first come, first served), and a waiting candidate keeps
    /// a claim that must stay alive while it waits (its session's
    /// keep-alives, or renewals of the claim).
    pub fair_queue: bool,
    /// Claims can share a session ([`Backend::open_session`](crate::Backend::open_session),
    /// [`Backend::keep_alive`](crate::Backend::keep_alive),
    /// [`Backend::try_acquire_in`](crate::Backend::try_acquire_in)): the
    /// engine keeps one session alive for every elector on the backend
    /// instance instead of renewing each claim.
    pub sessions: bool,
    /// The client keeps its session alive on its own (ZooKeeper's pings):
    /// the engine sends keep-alives only to prove a leader's deadline.
    pub self_kept_sessions: bool,
}

impl Capabilities {
    /// Build a capability set.
    pub const fn new(server_expiry: bool, watch: bool, fair_queue: bool) -> Self {
        Capabilities {
            server_expiry,
            watch,
            fair_queue,
            sessions: false,
            self_kept_sessions: false,
        }
    }

    /// The same, with sessions ([`sessions`](Self::sessions)); `self_kept`
    /// as [`self_kept_sessions`](Self::self_kept_sessions).
    pub const fn with_sessions(mut self, self_kept: bool) -> Self {
        self.sessions = true;
        self.self_kept_sessions = self_kept;
        self
    }
}

/// One candidate's request to lead an election, as the engine sends it to a
/// backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireRequest {
    /// The election name.
    pub election: String,
    /// This candidate's id.
    pub candidate: String,
    /// The value published while leading.
    pub value: Vec<u8>,
    /// The lease time to live.
    pub ttl: Duration,
    /// The claim this candidate already holds in the election's queue, from
    /// an earlier [`AcquireOutcome::Held`] (fair-queue backends), to be
    /// re-checked rather than created again.
    pub claim: Option<Claim>,
    /// Set by the engine on backends without server-side expiry: the holder
    /// whose record had this revision has been seen unchanged for a full ttl,
    /// so the backend may take the record over with one conditional write
    /// on exactly this revision.
    pub expired_revision: Option<i64>,
}

/// A candidate's stake in an election on the store: the key, node or object
/// it wrote, its session, the fencing token it leads with, and the version
/// the next conditional write must match. The fields are the backend's to
/// fill in; the engine only carries the claim from call to call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Claim {
    /// The election name.
    pub election: String,
    /// The store key / znode path / object name of this claim.
    pub key: String,
    /// The session or lease the claim is attached to (etcd lease id,
    /// ZooKeeper session id, memory lease id; Cloud Storage, the term's
    /// random owner identity; 0 where there is none).
    pub session: i64,
    /// The fencing token this claim leads with.
    pub token: FencingToken,
    /// The version the next conditional write must match (object
    /// generation, mod revision, znode version); backend-defined, but it
    /// never decreases during a claim's life: when a renewal and a
    /// [`proclaim`](crate::Backend::proclaim) race, the engine keeps the
    /// claim with the greater version.
    pub version: i64,
}

/// The outcome of one [`Backend::try_acquire`](crate::Backend::try_acquire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireOutcome {
    /// This candidate leads with this claim.
    Acquired(Claim),
    /// Someone else leads.
    Held {
        /// Who leads, when the store says.
        leader: Option<LeaderInfo>,
        /// On fair-queue backends, this candidate's place in the queue, to be
        /// renewed while waiting and passed back in the next request.
        queued: Option<Claim>,
        /// The revision of what was observed (the leader's record version),
        /// for observed-time expiry on backends without server-side expiry.
        revision: i64,
    },
}
