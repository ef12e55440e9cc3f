//! # leasehold-core
//!
//! The backend-agnostic heart of leasehold: the [`Backend`] trait a store
//! adapter implements (with [`RecordStore`] or [`QueueStore`], its
//! family's protocol; see [`Family`]), the election engine ([`Elector`]) that owns time
//! (heartbeat, lease renewal, retries with backoff, the step-down deadline),
//! the [`Leadership`] guard, counting semaphores ([`Semaphore`], built on the
//! same engine over queue stores), the in-memory backend ([`memory`]), the
//! registration of stores with the `leasehold` facade ([`driver`]), a
//! fault-injecting wrapper ([`faulty`]) and, behind the `conformance`
//! feature, the conformance suite every backend runs.
//!
//! ## The safety model
//!
//! * Every term has a [`FencingToken`] strictly greater than every earlier
//!   term's token of the same election.
//! * A leader steps down on its own monotonic clock: leadership is reported
//!   lost no later than `time the last successful renewal was SENT + ttl -
//!   safety_margin`, even when the store cannot be reached at all.
//! * Followers never compare wall clocks across hosts: where the store
//!   expires leases itself they wait for the store; where it does not, they
//!   take over only after seeing the same record unchanged for a full ttl on
//!   their own clock.
//! * One heartbeat per session, not per lock: on backends with sessions
//!   (etcd leases, ZooKeeper sessions) the electors on one backend instance
//!   share a session kept alive by one engine task; a waiting candidate
//!   costs nothing more, and losing the session ends every term on it (see
//!   [`ElectionOptions::own_session`] to isolate one election). A claim
//!   whose release (or create) went unanswered in a session is never
//!   forgotten: the engine retries in the background until the store
//!   confirms it, or gives the session up within a ttl so the store ends it;
//!   a new claim never adopts an old one, so every term has a new token.
//! * Losing is not an error: "someone else holds it" is
//!   [`Attempt::Held`]; a store outage is an [`Error`] that counts against
//!   the deadline; [`LossReason`] tells "the lease is gone" from "the store
//!   could not be reached in time".
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod campaign;
pub mod driver;
mod elector;
mod error;
pub mod faulty;
mod health;
mod leadership;
mod lease;
pub mod memory;
mod observer;
mod options;
mod retry;
mod semaphore;
mod types;

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;

pub use backend::{
    Backend, Expiry, Family, LeaderWatch, ListParticipants, ParticipantsWatch, Proclaim,
    QueueStore, RecordStore, SessionScope, WatchLeader,
};
pub use elector::{Attempt, Elector};
pub use error::{Error, Result, Source};
pub use health::{Health, LeaderHealth, StoreContact};
pub use leadership::{Leadership, LossReason};
pub use lease::shared_sessions;
pub use options::{ElectionOptions, LeasePlan, MAX_NAME_LEN, MAX_VALUE_LEN};
pub use semaphore::{MAX_PERMITS, Permit, Semaphore};
pub use types::{AcquireRequest, Claim, FencingToken, LeaderInfo, QueueOutcome, RecordOutcome};

pub use tokio_util::sync::CancellationToken;
