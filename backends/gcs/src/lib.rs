//! # leasehold-gcs
//!
//! The Google Cloud Storage backend of leasehold, on the official
//! [`google-cloud-storage`](google_cloud_storage) crate.
//!
//! ## Design
//!
//! * **One object per election**, `gs://<bucket>/<prefix>/<election>`,
//!   holding a small JSON lease record: holder id, a per-term random owner
//!   identity, the fencing token, leader value, ttl, a released flag and
//!   informational timestamps.
//! * **Every change is one conditional write** with `ifGenerationMatch`:
//!   create with generation 0, renew / take over / release with the
//!   generation last read or written. A failed precondition (HTTP 412) is an
//!   outcome, never retried: someone else won ([`RecordOutcome::Held`] from
//!   `try_acquire`, [`Error::Lost`] from `renew`, `Ok` from `release`). No
//!   blind writes, no deletes, no metadata patches.
//! * **Fencing token** = the object generation of the write that started
//!   the term. Generations of one object name only increase, across
//!   overwrites and across deletions, so tokens strictly increase across
//!   terms even when the object is deleted by hand.
//! * **Owner identity**: each term draws a random 64-bit owner, kept in the
//!   record and in [`Claim::owner`](leasehold_core::Claim) (in hex). Renew and
//!   release act only on a record with their owner, so a leader whose record
//!   was replaced (even at an equal token, even by a candidate with the same
//!   id) learns it at its next renewal.
//! * **Expiry without trusting clocks**: Cloud Storage does not expire
//!   anything, so its expiry is [`Expiry::Observed`]. A follower (the
//!   engine in leasehold-core) polls; after it has seen the same generation,
//!   not released, for a full ttl on its own monotonic clock it calls
//!   `try_acquire` with `expired_revision`, and the backend takes over with
//!   one write conditioned on exactly that generation. A released record is
//!   taken at once. A deleted record (missing, after this backend has read
//!   or written it) is observed the same way: created again only after a
//!   full ttl of absence (revision 0).
//! * **Renewal** rewrites the record under its generation (one request).
//!   If the answer to an earlier write was lost, the precondition fails; the
//!   backend then reads the record and, when it still has this claim's owner
//!   and is not released, rewrites it under the generation it read.
//!
//! No watch ([`Backend::leader_watch`] is `None`): followers poll every
//! retry interval, with one
//! read per poll (an observer on an elector that is campaigning follows the
//! campaign's reads rather than polling beside it).
//!
//! ```no_run
//! # async fn f() -> leasehold_core::Result<()> {
//! use std::sync::Arc;
//! use leasehold_core::Backend;
//!
//! let backend: Arc<dyn Backend> = Arc::new(
//!     leasehold_gcs::GcsBackend::builder()
//!         .bucket("my-locks")
//!         .build() // application default credentials
//!         .await?,
//! );
//! // Hand `backend` to `leasehold_core::Elector::new(backend, options)`.
//! # Ok(()) }
//! ```

mod backend;
mod builder;
mod driver;
mod record;

pub use backend::{GcsBackend, MIN_RENEW_INTERVAL};
pub use builder::{DEFAULT_PREFIX, EMULATOR_HOST_ENV, GcsBackendBuilder};
pub use driver::{DRIVER, GcsCredentials, GcsDriver};
/// The Cloud Storage client crate this backend uses, re-exported so that
/// tools and tests can inspect lease objects with the same version.
pub use google_cloud_storage;

#[cfg(doc)]
use leasehold_core::{Backend, Error, Expiry, RecordOutcome};
