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
    /// Record stores with [`Expiry::Observed`](crate::Expiry::Observed):
    /// the holder whose record had this revision has been seen unchanged
    /// for a full ttl, so the store may take the record over with one
    /// conditional write on exactly this revision. Always `None` for other
    /// stores.
    pub expired_revision: Option<i64>,
    /// Queue stores: how many claims at the head of the line hold at once:
    /// 1 for an election, N for a counting
    /// [`Semaphore`](crate::Semaphore) of N permits. Record stores are only
    /// ever asked for 1.
    pub permits: u32,
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
    /// The session the claim lives in (queue stores: etcd lease id,
    /// ZooKeeper session id, memory session id); 0 for record stores.
    pub session: i64,
    /// Record stores: an identity only this claim's maker knows (a random
    /// id written into the record with the term), checked by renew and
    /// release, since two writers can hold the same term number (a record
    /// deleted by hand and made again). Empty for queue stores, whose
    /// session says who owns a claim.
    pub owner: String,
    /// The fencing token this claim leads with.
    pub token: FencingToken,
    /// The version the next conditional write must match (object
    /// generation, mod revision, znode version); backend-defined, but it
    /// never decreases during a claim's life: when a renewal and a
    /// [`proclaim`](crate::Backend::proclaim) race, the engine keeps the
    /// claim with the greater version.
    pub version: i64,
}

/// The outcome of one [`RecordStore::try_acquire`](crate::RecordStore::try_acquire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// This candidate leads with this claim.
    Acquired(Claim),
    /// Someone else leads.
    Held {
        /// Who leads, when the store says.
        leader: Option<LeaderInfo>,
        /// The revision of the record observed (its version), for
        /// [`Expiry::Observed`](crate::Expiry::Observed).
        revision: i64,
    },
}

/// The outcome of one [`QueueStore::join`](crate::QueueStore::join) or
/// [`QueueStore::check`](crate::QueueStore::check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueOutcome {
    /// This candidate's claim is first in line: it leads.
    Acquired(Claim),
    /// Someone else leads; this candidate's claim waits in line.
    Queued {
        /// Who leads, when the store says.
        leader: Option<LeaderInfo>,
        /// This candidate's claim, to be passed to the next
        /// [`check`](crate::QueueStore::check) and
        /// [`wait`](crate::QueueStore::wait).
        claim: Claim,
    },
}
