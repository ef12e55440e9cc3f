//! # leasehold-gcs
//!
//! The Google Cloud Storage backend of leasehold, on the official
//! [`google-cloud-storage`](google_cloud_storage) crate.
//!
//! ## Design
//!
//! * **One object per election**, `gs://<bucket>/<prefix>/<election>`,
//!   holding a small JSON lease record: holder id, leader value, term, ttl,
//!   a released flag and informational timestamps.
//! * **Every change is one conditional write** with `ifGenerationMatch`:
//!   create with generation 0, renew / take over / release with the
//!   generation last read or written. A failed precondition (HTTP 412) is an
//!   outcome, never retried: someone else won ([`AcquireOutcome::Held`] from
//!   `try_acquire`, [`Error::Lost`] from `renew`, `Ok` from `release`). No
//!   blind writes, no deletes, no metadata patches.
//! * **Fencing token** = the record's term, bumped under the precondition on
//!   every takeover, so it strictly increases across terms. The record is
//!   never deleted: releasing writes a released record that keeps the term.
//!   Deleting the object by hand restarts the count at 1, which breaks the
//!   promise to resources that remember older tokens: don't.
//! * **Expiry without trusting clocks**: Cloud Storage does not expire
//!   anything, so [`Capabilities::server_expiry`] is false. A follower (the
//!   engine in leasehold-core) polls; after it has seen the same generation,
//!   not released, for a full ttl on its own monotonic clock it calls
//!   `try_acquire` with `expired_revision`, and the backend takes over with
//!   one write conditioned on exactly that generation. A released record is
//!   taken at once.
//! * **Renewal** rewrites the record under its generation (one request).
//!   If the answer to an earlier write was lost, the precondition fails; the
//!   backend then reads the record and, when it is still this term's and not
//!   released (only the term's holder writes such a record), rewrites it
//!   under the generation it read.
//!
//! No watch ([`Backend::wait`] and [`Backend::watch`] return
//! [`Error::NotSupported`]): followers poll every retry interval, with one
//! read per poll.
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
mod record;

pub use backend::{GcsBackend, MIN_RENEW_INTERVAL};
pub use builder::{DEFAULT_PREFIX, EMULATOR_HOST_ENV, GcsBackendBuilder};
/// The Cloud Storage client crate this backend uses, re-exported so that
/// tools and tests can inspect lease objects with the same version.
pub use google_cloud_storage;

#[cfg(doc)]
use leasehold_core::{AcquireOutcome, Backend, Capabilities, Error};
