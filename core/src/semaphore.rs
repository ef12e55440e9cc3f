//! Counting semaphores: at most N holders at once ([`Semaphore`], [`Permit`]).
//!
//! A semaphore runs on the election engine: each acquirer makes one claim
//! in the line of the semaphore's name, as a candidate does, and holds a
//! permit while its claim is among the first N in line. So a permit has
//! everything a term has: its own fencing token, a local deadline counted
//! from the last keep-alive sent, a done signal, and a holder that vanishes
//! frees its permit when the store ends its session (etcd lease, ZooKeeper
//! session), as a leader that vanishes frees the election.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Family};
use crate::elector::{Attempt, Elector};
use crate::error::{Error, Result};
use crate::leadership::{Leadership, LossReason};
use crate::options::ElectionOptions;
use crate::types::{Claim, FencingToken, LeaderInfo};

/// The largest number of permits a semaphore may have.
pub const MAX_PERMITS: u32 = 1024;

/// A counting semaphore of N permits over a queue store (etcd, ZooKeeper,
/// the memory queue store): at most N [`Permit`]s are held at once, across
/// every process that uses the same name on the same store.
///
/// The first N claims in line hold a permit; a waiter watches only the N
/// claims just ahead of it (the only ones whose end can let it in), so a
/// permit given back wakes at most N waiters, never the whole line. Each
/// permit has its own [`FencingToken`], strictly greater than the token of
/// every permit acquired before it (etcd: the claim's create revision;
/// ZooKeeper: its node's czxid); pass it to the resource you protect, which
/// must then allow up to N writers (keep the N highest tokens seen, say).
///
/// Every holder must use the same number of permits: a holder counts the
/// first N claims in line by its own N. The name is a line of its own: do
/// not use one name both as an election and as a semaphore.
///
/// Record stores (Cloud Storage, PostgreSQL, MySQL) keep one record per
/// name, not a line: [`new`](Self::new) answers [`Error::NotSupported`].
///
/// Cheap to clone; clones share the backend and options, and each
/// [`acquire`](Self::acquire) takes one more permit.
///
/// # Examples
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use leasehold_core::{ElectionOptions, Semaphore, memory::MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> leasehold_core::Result<()> {
/// let store = MemoryStore::new(); // the queue store; etcd and ZooKeeper work alike
/// let options = ElectionOptions::new("nightly-export", "worker-1").with_ttl(Duration::from_secs(3));
/// let semaphore = Semaphore::new(Arc::new(store.client()), options, 2)?;
///
/// let first = semaphore.acquire().await?;
/// let second = semaphore.acquire().await?;
/// // Both permits are taken: a third waits.
/// assert!(semaphore.try_acquire().await?.is_none());
/// assert!(second.fencing_token() > first.fencing_token());
///
/// let done = first.cancellation_token(); // fires if the permit is lost
/// assert!(!done.is_cancelled());
/// first.release().await?; // hand it over at once
/// let third = semaphore.acquire().await?;
/// # second.release().await?;
/// # third.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Semaphore {
    elector: Elector,
    permits: u32,
}

impl Semaphore {
    /// A semaphore of `permits` permits named `options.election` on
    /// `backend`, acquired as `options.candidate_id` (shown to the others in
    /// [`holders`](Self::holders)) with `options`' timings.
    ///
    /// # Errors
    /// [`Error::NotSupported`] on a record store (Cloud Storage, PostgreSQL,
    /// MySQL); [`Error::InvalidOption`] for `permits` of 0 or above
    /// [`MAX_PERMITS`], or bad options (as [`Elector::new`]).
    pub fn new(backend: Arc<dyn Backend>, options: ElectionOptions, permits: u32) -> Result<Self> {
        if permits == 0 || permits > MAX_PERMITS {
            return Err(Error::invalid_option(
                "permits",
                format!("a semaphore needs between 1 and {MAX_PERMITS} permits, not {permits}"),
            ));
        }
        if let Family::Record(_) = backend.family() {
            return Err(Error::NotSupported {
                operation: "semaphore",
                backend: backend.name(),
            });
        }
        let elector = Elector::new(backend, options)?.with_permits(permits);
        Ok(Semaphore { elector, permits })
    }

    /// How many permits the semaphore has.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// The options acquirers run with.
    pub fn options(&self) -> &ElectionOptions {
        self.elector.options()
    }

    /// Wait until a permit is free and take it.
    ///
    /// Store errors that may pass are retried with backoff for as long as
    /// it takes.
    ///
    /// # Errors
    /// As [`Elector::lock`]: errors that retrying cannot fix.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Elector::lock`]: dropping the future withdraws the
    /// waiting claim in the background. Use
    /// [`acquire_cancellable`](Self::acquire_cancellable) to wait until it
    /// is gone.
    pub async fn acquire(&self) -> Result<Permit> {
        self.elector.lock().await.map(Permit::new)
    }

    /// Take a permit if one is free now; `None` when all are held.
    ///
    /// # Errors
    /// Any store error (nothing is retried).
    ///
    /// # Cancel safety
    /// Cancel safe, as [`acquire`](Self::acquire).
    pub async fn try_acquire(&self) -> Result<Option<Permit>> {
        match self.elector.try_lock().await? {
            Attempt::Leader(l) => Ok(Some(Permit::new(l))),
            Attempt::Held(_) => Ok(None),
        }
    }

    /// Wait for a permit for at most `wait`; `None` if none came free.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    /// Cancel safe, as [`acquire`](Self::acquire).
    pub async fn acquire_timeout(&self, wait: Duration) -> Result<Option<Permit>> {
        Ok(self.elector.lock_timeout(wait).await?.map(Permit::new))
    }

    /// Wait for a permit until `cancel` fires; `Ok(None)` then, once the
    /// waiting claim is withdrawn from the store (as
    /// [`Elector::lock_cancellable`]).
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    /// Cancel safe, as [`acquire`](Self::acquire).
    pub async fn acquire_cancellable(&self, cancel: &CancellationToken) -> Result<Option<Permit>> {
        Ok(self
            .elector
            .lock_cancellable(cancel)
            .await?
            .map(Permit::new))
    }

    /// The claims in line now, first first: the first
    /// [`permits`](Self::permits) hold, the rest wait. Read from the store,
    /// bounded by the request timeout.
    ///
    /// # Errors
    /// Store errors.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn line(&self) -> Result<Vec<LeaderInfo>> {
        self.elector.participants().await
    }

    /// The holders now: the first [`permits`](Self::permits) claims of
    /// [`line`](Self::line).
    ///
    /// # Errors
    /// Store errors.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn holders(&self) -> Result<Vec<LeaderInfo>> {
        let mut line = self.line().await?;
        line.truncate(self.permits as usize);
        Ok(line)
    }

    /// Hold a permit for as long as `cancel` is not cancelled: acquire, run
    /// `work` with each permit, acquire again after each loss (as
    /// [`Elector::run`]).
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    /// As [`Elector::run`].
    pub async fn run<F, Fut>(&self, cancel: CancellationToken, mut work: F) -> Result<()>
    where
        F: FnMut(Permit) -> Fut,
        Fut: Future<Output = ()>,
    {
        self.elector.run(cancel, |l| work(Permit::new(l))).await
    }
}

/// One held permit of a [`Semaphore`]: a term of its own, with a fencing
/// token, a local deadline and a done signal.
///
/// Dropping the last clone gives the permit back in the background, as
/// dropping a [`Leadership`]; call [`release`](Self::release) to know it is
/// back before you exit.
#[derive(Debug, Clone)]
pub struct Permit {
    term: Leadership,
}

impl Permit {
    fn new(term: Leadership) -> Self {
        Permit { term }
    }

    /// This permit's fencing token: strictly greater than the token of
    /// every permit of the semaphore acquired before this one.
    pub fn fencing_token(&self) -> FencingToken {
        self.term.fencing_token()
    }

    /// The permit's claim on the store (its key or node and session).
    pub fn claim(&self) -> Claim {
        self.term.claim()
    }

    /// The semaphore's name.
    pub fn name(&self) -> &str {
        self.term.election()
    }

    /// The local deadline: the permit is reported lost at this instant at
    /// the latest unless a keep-alive succeeds before it.
    pub fn deadline(&self) -> Instant {
        self.term.deadline()
    }

    /// `true` once the permit has ended.
    pub fn is_lost(&self) -> bool {
        self.term.is_lost()
    }

    /// Why the permit ended, once it has.
    pub fn loss_reason(&self) -> Option<LossReason> {
        self.term.loss_reason()
    }

    /// Resolves when the permit ends, with the reason.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future has no effect.
    pub fn lost(&self) -> impl Future<Output = LossReason> + Send + 'static {
        self.term.lost()
    }

    /// A token cancelled when the permit ends (the done signal), for the
    /// tasks that must stop then.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.term.cancellation_token()
    }

    /// The term under this permit, for what a [`Leadership`] offers beyond
    /// the above (its health, the store's guard for writes on etcd and
    /// ZooKeeper).
    pub fn as_leadership(&self) -> &Leadership {
        &self.term
    }

    /// The term under this permit, as a [`Leadership`] (for code written
    /// for terms: releasing it with [`unlock`](Leadership::unlock) gives
    /// the permit back).
    pub fn into_leadership(self) -> Leadership {
        self.term
    }

    /// Give the permit back now so that a waiter can take it at once. The
    /// done signal fires first. Releasing a permit already lost is harmless.
    ///
    /// # Errors
    /// As [`Leadership::unlock`].
    ///
    /// # Cancel safety
    /// As [`Leadership::unlock`].
    pub async fn release(self) -> Result<()> {
        self.term.unlock().await
    }
}
