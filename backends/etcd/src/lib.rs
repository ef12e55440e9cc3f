//! # leasehold-etcd
//!
//! The etcd backend of leasehold: leader election and distributed locks with
//! fencing tokens over etcd v3 (KV, lease and watch APIs), fair and
//! watch-based like etcd's own Go `concurrency` package.
//!
//! ```no_run
//! # async fn demo() -> leasehold_core::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use leasehold_core::{ElectionOptions, Elector};
//! use leasehold_etcd::EtcdBackend;
//!
//! let backend = EtcdBackend::builder()
//!     .endpoints(["http://127.0.0.1:2379"])
//!     .build()
//!     .await?;
//! let options = ElectionOptions::new("orders-worker", "node-1").with_ttl(Duration::from_secs(10));
//! let elector = Elector::new(Arc::new(backend), options)?;
//! let leadership = elector.lock().await?;
//! println!("leading with fencing token {}", leadership.fencing_token());
//! # Ok(()) }
//! ```
//!
//! ## How it works
//!
//! * **Keys.** Each candidate grants a lease of the election's ttl and owns
//!   one key `<prefix>/<election>/<lease id, 16 hex digits>` attached to it,
//!   created by a transaction that compares `create_revision == 0`. The
//!   election name is escaped (`%` → `%25`, `/` → `%2F`) so that elections
//!   never share a range. The value is JSON:
//!   `{"v":1,"id":"<candidate id>","value":"<leader value, base64>"}`.
//!   (That is the default [`Layout::Leasehold`]; [`Layout::Go`] below.)
//! * **Leader and token.** The key with the lowest create revision leads;
//!   the fencing token is that create revision. etcd's revision only grows,
//!   so every later term has a greater token.
//! * **Queue.** A waiting candidate watches only its predecessor (greatest
//!   create revision below its own) for deletion: one watch event per
//!   handover, whatever the queue length.
//! * **Lease.** etcd leases are whole seconds of at least 2: a ttl below 2 s
//!   is refused, a fractional ttl is rounded up (the server then expires a
//!   little after the engine's own deadline, never before). Renewal is one
//!   message on the lease's keep-alive stream (kept open between renewals,
//!   reopened after an error) plus a read of the own key; a lease etcd no
//!   longer knows, or a missing key, is [`Error::Lost`](leasehold_core::Error::Lost).
//! * **Release.** Deletes the own key (conditional on its create revision)
//!   and revokes the lease, so the successor's watch fires at once.
//! * **Proclaim.** [`Leadership::proclaim`](leasehold_core::Leadership::proclaim)
//!   puts a new value on the own key in one transaction comparing its create
//!   revision with the token (as Go's `Election.Proclaim`), keeping the
//!   lease: same term, same token; observers report the new value.
//!
//! ## Sharing elections with Go services and `etcdctl elect`
//!
//! With [`Layout::Go`] (`EtcdBuilder::layout`, or `layout=go` in a facade
//! URL) the keys are those of etcd's Go `concurrency.Election`:
//! `<prefix><election>/<lease id in hex>` holding the raw leader value, so
//! leasehold candidates and observers take part in the elections that Go
//! services and `etcdctl elect <election>` run. Ordering and the fencing
//! token (Go's `Election.Rev()`) agree; leaders read from the store are
//! named by their key, since Go stores no candidate id. See docs/interop.md.

mod backend;
mod builder;
mod driver;
mod error;
mod layout;

pub use backend::{EtcdBackend, EtcdStats, MIN_TTL_SECS, lease_ttl_secs};
pub use builder::{DEFAULT_PREFIX, EtcdBuilder};
pub use driver::{DRIVER, EtcdDriver};
pub use layout::Layout;

/// The condition that holds exactly while `leadership`'s term lasts, for
/// the application's own etcd transactions (etcd's `Mutex.IsOwner()`): the
/// leader's key still exists with the create revision that is the term's
/// fencing token. A transaction `Txn::new().when([leader_guard(&l)])
/// .and_then([..your writes..])` lands only while the term lasts; once the
/// key is deleted (an unlock, a hand deletion) or its lease ends (expired,
/// revoked), it fails (`succeeded() == false`) and writes nothing: fencing
/// without a cooperating resource, for data kept in the same etcd.
///
/// Build it from a term won on an [`EtcdBackend`]; the condition of a term
/// of another store names no etcd key and never holds.
///
/// ```no_run
/// # async fn demo(backend: leasehold_etcd::EtcdBackend, leadership: leasehold_core::Leadership) -> Result<(), etcd_client::Error> {
/// use etcd_client::{Txn, TxnOp};
/// let txn = Txn::new()
///     .when([leasehold_etcd::leader_guard(&leadership)])
///     .and_then([TxnOp::put("app/config", "v2", None)]);
/// let landed = backend.client().kv_client().txn(txn).await?.succeeded();
/// # let _ = landed;
/// # Ok(()) }
/// ```
pub fn leader_guard(leadership: &leasehold_core::Leadership) -> etcd_client::Compare {
    let claim = leadership.claim();
    let token = i64::try_from(claim.token.get()).unwrap_or(i64::MAX);
    etcd_client::Compare::create_revision(claim.key, etcd_client::CompareOp::Equal, token)
}

/// The etcd client crate, for the application's own requests
/// ([`EtcdBackend::client`], [`EtcdBuilder::client`]).
pub use etcd_client;
