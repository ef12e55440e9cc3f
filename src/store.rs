//! [`Store`]: one connection to a store, shared by many electors.

use std::sync::Arc;

use leasehold_core::{Backend, ElectionOptions, Elector, Result};

use crate::config::ElectionConfig;

/// One connection to a store (one etcd client, one ZooKeeper session, one
/// Cloud Storage client), shared by every elector built from it.
///
/// A service that holds many locks (one per shard, per queue, per job)
/// builds them from one `Store` rather than calling [`crate::connect`] once
/// per lock: electors on one backend instance share its connection and, on
/// etcd and ZooKeeper, its session, so N locks cost one heartbeat stream
/// rather than N (as etcd's Go `concurrency.Session` is shared by the
/// elections and mutexes of a process).
///
/// The URL (or config) gives the store and the default options; its
/// election name is the default election, which [`elector`](Self::elector)
/// replaces.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> leasehold::Result<()> {
/// let store = leasehold::Store::connect("memory://shards?ttl=5s&id=replica-a").await?;
/// let mut held = Vec::new();
/// for shard in 0..8 {
///     let elector = store.elector(&format!("shard-{shard}"))?;
///     held.push(elector.lock().await?);
/// }
/// assert_eq!(held.len(), 8);
/// for leadership in held {
///     leadership.unlock().await?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    defaults: ElectionOptions,
}

impl Store {
    /// Connect to the store a URL names (see [`crate::connect`] for the
    /// forms and options); the URL's election and options are the defaults
    /// of the electors built from it.
    ///
    /// # Errors
    /// As [`crate::connect`].
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is left behind but a dropped connection.
    pub async fn connect(url: &str) -> Result<Store> {
        ElectionConfig::from_url(url)?.store().await
    }

    /// A store for an already built backend, with `defaults` as the options
    /// of the electors built from it.
    ///
    /// # Errors
    /// [`Error::InvalidOption`](crate::Error::InvalidOption) when the
    /// defaults do not fit together or the backend refuses them.
    pub fn from_backend(backend: Arc<dyn Backend>, defaults: ElectionOptions) -> Result<Store> {
        defaults.validate()?;
        backend.validate(&defaults)?;
        Ok(Store { backend, defaults })
    }

    /// An elector for `election`, with the store's default options (the
    /// candidate id, value and timings of the URL or config).
    ///
    /// # Errors
    /// [`Error::InvalidOption`](crate::Error::InvalidOption) for an empty
    /// election name.
    pub fn elector(&self, election: &str) -> Result<Elector> {
        let mut options = self.defaults.clone();
        options.election = election.to_owned();
        Elector::new(self.backend.clone(), options)
    }

    /// An elector with options of its own (another candidate id, value or
    /// ttl) on this store's connection.
    ///
    /// # Errors
    /// [`Error::InvalidOption`](crate::Error::InvalidOption) from the options
    /// or the backend's limits (e.g. a ttl longer than the ZooKeeper session
    /// allows).
    pub fn elector_with(&self, options: ElectionOptions) -> Result<Elector> {
        Elector::new(self.backend.clone(), options)
    }

    /// The default options (from the URL or config).
    pub fn defaults(&self) -> &ElectionOptions {
        &self.defaults
    }

    /// The backend every elector of this store shares.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
}

impl ElectionConfig {
    /// Connect to the store and keep the connection for many electors
    /// (see [`Store`]).
    ///
    /// # Errors
    /// As [`crate::connect`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn store(&self) -> Result<Store> {
        let (store, options) = self.resolve()?;
        let backend = crate::build_backend(&store, &options).await?;
        Store::from_backend(backend, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn electors_of_one_store_share_its_backend() {
        let store = Store::connect("memory://store-default?id=a&ttl=2s")
            .await
            .unwrap();
        let one = store.elector("store-one").unwrap();
        let two = store.elector("store-two").unwrap();
        assert!(Arc::ptr_eq(one.backend(), two.backend()));
        assert_eq!(one.options().candidate_id, "a");
        assert_eq!(two.options().election, "store-two");
        let l1 = one.lock().await.unwrap();
        let l2 = two.lock().await.unwrap();
        assert_ne!(l1.fencing_token(), l2.fencing_token());
        l1.unlock().await.unwrap();
        l2.unlock().await.unwrap();
        let e = store.elector("").unwrap_err();
        assert!(e.to_string().contains("election"), "{e}");
    }
}
