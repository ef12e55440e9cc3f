//! # leasehold
//!
//! Leader election and distributed locks with fencing tokens over the stores
//! teams already run: etcd, ZooKeeper and Google Cloud Storage, plus an
//! in-memory store for tests and demos.
//!
//! A service calls [`Elector::lock`] (it returns when this replica leads),
//! does its work while watching the [`Leadership`]'s done signal (it fires if
//! leadership is lost, before anyone else can take over), passes the
//! [`FencingToken`] to the resource it protects, and calls
//! [`Leadership::unlock`] to hand over at once.
//!
//! Heartbeats, lease renewal, retries with backoff and the step-down
//! deadline live once in the engine ([`leasehold_core`]); each store is a
//! thin [`Backend`].
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use leasehold::{ElectionOptions, Elector, memory::MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> leasehold::Result<()> {
//! let store = MemoryStore::new();
//! let options = ElectionOptions::new("billing-export", "replica-a").with_ttl(Duration::from_secs(5));
//! let elector = Elector::new(Arc::new(store.client()), options)?;
//! let leadership = elector.lock().await?;
//! println!("leading with token {}", leadership.fencing_token());
//! leadership.unlock().await?;
//! # Ok(())
//! # }
//! ```

pub use leasehold_core::{
    AcquireOutcome, AcquireRequest, Attempt, Backend, CancellationToken, Capabilities, Claim,
    ElectionOptions, Elector, Error, FencingToken, LeaderInfo, LeaderWatch, Leadership, LossReason,
    Result, faulty, memory,
};

/// The engine crate, for backend authors.
pub use leasehold_core as core;
