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
//! Which store is used is configuration: [`connect`] takes a URL, and
//! [`ElectionConfig`] a TOML section with `LEASEHOLD_*` environment
//! overrides; both go through the same builder.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> leasehold::Result<()> {
//! // etcd://h1:2379,h2:2379/billing-export?ttl=10s, zk://..., gs://... alike
//! let elector = leasehold::connect("memory://billing-export?ttl=5s&id=replica-a").await?;
//! let leadership = elector.lock().await?;
//! println!("leading with token {}", leadership.fencing_token());
//! leadership.unlock().await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Cargo features
//!
//! The defaults are lean: the engine and the in-memory store. `etcd`,
//! `zookeeper` and `gcs` each bring one backend and its URL schemes; `full`
//! brings all three. A URL whose backend is compiled out is an error naming
//! the feature to turn on. [`STORES`] lists every store, with its schemes
//! and feature; each store's crate registers itself with a
//! [`Driver`](leasehold_core::driver::Driver) (docs/backends.md). The `etcd` feature builds etcd's gRPC definitions
//! and needs `protoc` with the protobuf well-known types (Debian:
//! `apt-get install protobuf-compiler libprotobuf-dev`; macOS: `brew install
//! protobuf`; or point `PROTOC=` at a protoc binary).
//!
//! The `leasehold` command-line tool is its own package, `leasehold-cli`,
//! with every backend on.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use leasehold_core::{
    AcquireRequest, Attempt, Backend, CancellationToken, Claim, ElectionOptions, Elector, Error,
    Expiry, Family, FencingToken, Health, LeaderHealth, LeaderInfo, LeaderWatch, Leadership,
    ListParticipants, LossReason, MAX_PERMITS, ParticipantsWatch, Permit, Proclaim, QueueOutcome,
    QueueStore, RecordOutcome, RecordStore, Result, Semaphore, SessionScope, StoreContact,
    WatchLeader, faulty, memory,
};

/// The engine crate, for backend authors.
pub use leasehold_core as core;

#[cfg(feature = "etcd")]
#[cfg_attr(docsrs, doc(cfg(feature = "etcd")))]
pub use leasehold_etcd as etcd;
#[cfg(feature = "gcs")]
#[cfg_attr(docsrs, doc(cfg(feature = "gcs")))]
pub use leasehold_gcs as gcs;
#[cfg(feature = "mysql")]
#[cfg_attr(docsrs, doc(cfg(feature = "mysql")))]
pub use leasehold_mysql as mysql;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use leasehold_postgres as postgres;
#[cfg(feature = "zookeeper")]
#[cfg_attr(docsrs, doc(cfg(feature = "zookeeper")))]
pub use leasehold_zookeeper as zookeeper;

pub mod config;
mod store;
mod stores;
mod url;

pub use config::{ElectionConfig, Secret, StoreConfig};
pub use leasehold_core::driver::{DynBackend, process_memory_store};
pub use store::Store;
pub use stores::{STORES, StoreEntry, drivers};

/// Build an elector from a store URL.
///
/// ```text
/// etcd://[user:password@]host:port[,host:port...]/ELECTION[?options]
/// etcd+https://...?ca=ca.pem&cert=client.pem&key=client.key
/// zk://[user:password@]host:port[,...][/chroot]/ELECTION[?session_timeout=6s]
/// gs://BUCKET[/prefix]/ELECTION[?endpoint=URL&credentials=none|default|key.json]
/// memory://ELECTION
/// ```
///
/// Options for every store: `id` (candidate id, default `<hostname>-<pid>`),
/// `value`, `ttl`, `renew_interval`, `retry_interval`, `safety_margin`,
/// `request_timeout` (durations such as `500ms`, `10s`, `2m`). etcd also
/// takes `prefix`, `connect_timeout` and `layout=go`: the keys of etcd's Go
/// `concurrency.Election` and `etcdctl elect`, to share their elections
/// (docs/interop.md). ZooKeeper takes `session_timeout`, `lock_name` and
/// `connect_timeout` (default 5 s: how long opening the session may take).
///
/// # Errors
/// [`Error::Config`] naming the offending part of the URL (unknown scheme, a
/// scheme whose cargo feature is off, bad host or port, bad duration, unknown
/// option, missing bucket or election); [`Error::InvalidOption`] for timings
/// that do not fit together; the store's error if it cannot be reached.
///
/// # Cancel safety
/// Cancel safe: nothing is left behind but a dropped connection.
pub async fn connect(url: &str) -> Result<Elector> {
    ElectionConfig::from_url(url)?.connect().await
}

impl ElectionConfig {
    /// Connect to the store and build the elector.
    ///
    /// # Errors
    /// As [`connect`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn connect(&self) -> Result<Elector> {
        let (store, options) = self.resolve()?;
        let backend = build_backend(&store, &options).await?;
        Elector::new(backend, options)
    }

    /// Connect to the store and build an elector for reading the election
    /// ([`Elector::observer`]): who leads, its changes, the candidates. The
    /// lease timings are not checked against the store (a reader holds no
    /// lease), so a ttl the server would refuse does not hide the store's
    /// answer; they are checked if the elector campaigns.
    ///
    /// # Errors
    /// As [`connect`], but never for timings.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn connect_observer(&self) -> Result<Elector> {
        let (store, options) = self.resolve_for_reading()?;
        let backend = build_backend(&store, &options).await?;
        Elector::observer(backend, options)
    }
}

/// Build the backend a [`StoreConfig`] describes, for `options`, with the
/// store's driver.
///
/// # Errors
/// As [`connect`].
///
/// # Cancel safety
/// Cancel safe: nothing is left behind but a dropped connection.
pub async fn build_backend(store: &StoreConfig, options: &ElectionOptions) -> Result<DynBackend> {
    store.driver()?.build(store.params(), options).await
}

/// The README and every page of docs/: their code compiles (and, where it
/// needs no server, runs) with the doc tests (`cargo test --features full
/// --doc`; they name every store). A block that only shows a fragment hides the lines that make it
/// a program (`# ` lines, rustdoc's convention).
#[cfg(all(doctest, feature = "full"))]
mod docs {
    #[doc = include_str!("../README.md")]
    struct Readme;
    #[doc = include_str!("../docs/backends.md")]
    struct Backends;
    #[doc = include_str!("../docs/etcd.md")]
    struct Etcd;
    #[doc = include_str!("../docs/gcs.md")]
    struct Gcs;
    #[doc = include_str!("../docs/guarded-writes.md")]
    struct GuardedWrites;
    #[doc = include_str!("../docs/interop.md")]
    struct Interop;
    #[doc = include_str!("../docs/mysql.md")]
    struct Mysql;
    #[doc = include_str!("../docs/postgres.md")]
    struct Postgres;
    #[doc = include_str!("../docs/safety.md")]
    struct Safety;
    #[doc = include_str!("../docs/zookeeper.md")]
    struct Zookeeper;
}

/// docs/semaphore.md: its code compiles and runs with the doc tests.
#[cfg(doctest)]
#[doc = include_str!("../docs/semaphore.md")]
struct SemaphoreGuide;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_urls_connect_and_share_one_store_per_process() {
        let a = connect("memory://facade-test?id=a&ttl=2s").await.unwrap();
        let b = connect("memory://facade-test?id=b&ttl=2s").await.unwrap();
        let l = a.lock().await.unwrap();
        let seen = b.leader().await.unwrap().map(|l| l.id);
        assert_eq!(seen.as_deref(), Some("a"));
        l.unlock().await.unwrap();
    }

    #[tokio::test]
    async fn timings_that_do_not_fit_are_refused() {
        let e = connect("memory://x?ttl=2s&renew_interval=2s")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("renew_interval"), "{e}");
        let e = connect("memory://x?ttl=soon").await.unwrap_err();
        assert!(e.to_string().contains("`ttl`"), "{e}");
    }

    /// Meaningful in builds without the backend features (scripts/test runs
    /// `cargo test -p leasehold --no-default-features --lib`).
    #[tokio::test]
    async fn a_scheme_whose_feature_is_off_says_which_feature() {
        for store in STORES.iter().filter(|s| s.driver.is_none()) {
            let feature = store.feature.unwrap_or(store.name);
            for scheme in store.schemes {
                let url = format!("{scheme}://127.0.0.1:1/e");
                let e = connect(&url).await.unwrap_err().to_string();
                assert!(
                    e.contains(&format!("`{feature}` cargo feature")),
                    "{url}: {e}"
                );
            }
        }
    }
}
