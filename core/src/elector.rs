//! The election engine's public face: [`Elector`] (campaigning, observing,
//! and the long-lived `run` loop). The campaign itself is in
//! [`campaign`](crate::campaign), the observer's task in
//! [`observer`](crate::observer).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::Backend;
use crate::campaign::{Campaign, Mode};
use crate::error::{Error, Result};
use crate::health::{Health, Monitor};
use crate::leadership::Leadership;
use crate::observer::{CampaignReads, Leader, Participants, Running, follow};
use crate::options::ElectionOptions;
use crate::retry::jittered;
use crate::types::LeaderInfo;

/// The outcome of [`Elector::try_lock`].
#[derive(Debug)]
pub enum Attempt {
    /// This candidate leads.
    Leader(Leadership),
    /// Someone else leads (who, when the store says). Not an error.
    Held(Option<LeaderInfo>),
}

impl Attempt {
    /// The leadership, if this candidate won.
    pub fn leadership(self) -> Option<Leadership> {
        match self {
            Attempt::Leader(l) => Some(l),
            Attempt::Held(_) => None,
        }
    }
}

/// One candidate in one election, on one backend.
///
/// On queue stores ([`QueueStore`](crate::QueueStore):
/// etcd, ZooKeeper, the memory queue store) the claim lives in a session
/// shared by every elector on the same backend instance with the same
/// timings (see [`ElectionOptions::own_session`]): one heartbeat for all of
/// them, and a waiting candidate costs nothing but that heartbeat. Losing
/// the session ends every term on it and restarts every waiter on it.
///
/// The elector owns time: it renews leases, retries store errors with
/// exponential backoff capped at the retry interval (equal jitter; see
/// [`ElectionOptions::retry_interval`]), and steps down at the local
/// deadline. The backend only performs single atomic steps.
///
/// Cheap to clone; clones share the backend and options.
///
/// # Examples
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use leasehold_core::{ElectionOptions, Elector, memory::MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> leasehold_core::Result<()> {
/// let store = MemoryStore::new();
/// let options = ElectionOptions::new("orders", "worker-1").with_ttl(Duration::from_secs(3));
/// let elector = Elector::new(Arc::new(store.client()), options)?;
///
/// let leadership = elector.lock().await?;
/// let token = leadership.fencing_token(); // pass it to the resource you write
/// let done = leadership.cancellation_token(); // fires if leadership is lost
/// assert!(!done.is_cancelled());
/// leadership.unlock().await?; // hand over at once
/// # let _ = token;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Elector {
    backend: Arc<dyn Backend>,
    options: ElectionOptions,
    monitor: Arc<Monitor>,
    /// What this elector's campaigns read of the leader, for its observers
    /// (shared by clones).
    reads: Arc<watch::Sender<CampaignReads>>,
    /// False for an elector built by [`observer`](Self::observer): its
    /// lease timings are checked when it first campaigns.
    timings_checked: bool,
    /// How many claims at the head of the line hold at once: 1 for an
    /// election, N for the elector under a [`Semaphore`](crate::Semaphore).
    permits: u32,
}

impl Elector {
    /// An elector for `options` on `backend`.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] naming the first bad field, from
    /// [`ElectionOptions::validate`] or from the backend's own limits.
    pub fn new(backend: Arc<dyn Backend>, options: ElectionOptions) -> Result<Self> {
        options.validate()?;
        backend.validate(&options)?;
        options.validate_plan(&backend.lease_plan(&options))?;
        Ok(Self::build(backend, options, true))
    }

    /// An elector for reading an election: [`leader`](Self::leader),
    /// [`observe`](Self::observe), [`participants`](Self::participants).
    /// Only the names are checked ([`ElectionOptions::validate_names`]), not
    /// the lease timings: a reader holds no lease, so a ttl the store would
    /// refuse (below etcd's minimum, a ZooKeeper session longer than the
    /// server grants) does not stop it from saying who leads. It can still
    /// campaign: the timings are checked then, and a campaign that fails the
    /// check answers the same [`Error::InvalidOption`] as [`new`](Self::new).
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for a bad election name, candidate id or
    /// value.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use leasehold_core::{ElectionOptions, Elector, memory::MemoryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> leasehold_core::Result<()> {
    /// // Timings no lease could run with (renewing less often than the ttl),
    /// // but reading needs no lease.
    /// let options = ElectionOptions::new("orders", "dashboard")
    ///     .with_renew_interval(Duration::from_secs(3600));
    /// let reader = Elector::observer(Arc::new(MemoryStore::new().client()), options)?;
    /// assert!(reader.leader().await?.is_none());
    /// assert!(reader.lock().await.is_err()); // the timings are checked here
    /// # Ok(())
    /// # }
    /// ```
    pub fn observer(backend: Arc<dyn Backend>, options: ElectionOptions) -> Result<Self> {
        options.validate_names()?;
        Ok(Self::build(backend, options, false))
    }

    fn build(backend: Arc<dyn Backend>, options: ElectionOptions, timings_checked: bool) -> Self {
        let monitor = Arc::new(Monitor::new(&options, backend.name()));
        monitor.register();
        Elector {
            backend,
            options,
            monitor,
            reads: Arc::new(watch::Sender::new(CampaignReads::default())),
            timings_checked,
            permits: 1,
        }
    }

    /// The elector under a [`Semaphore`](crate::Semaphore): its campaigns
    /// hold while among the first `permits` claims in line.
    pub(crate) fn with_permits(mut self, permits: u32) -> Self {
        self.permits = permits;
        self
    }

    /// A snapshot for a readiness probe: leading (time left to the local
    /// deadline, last renewal error) or following (the last store contact
    /// of this elector's campaigns and heartbeats: answered, or cut off
    /// since an instant). Cheap and synchronous: one mutex lock, no store
    /// call. Clones of an elector share it.
    ///
    /// A follower's contact is refreshed by its campaign's calls (acquire
    /// attempts, polls, renewals of a queued claim of its own lease) and by
    /// the keep-alives of the session its queued claim lives in. A waiter on
    /// a session the client keeps by itself (ZooKeeper) makes no call while
    /// nothing changes, and keeps its last state, as does an elector that
    /// does not campaign.
    pub fn health(&self) -> Health {
        self.monitor.health()
    }

    /// The options this elector runs with.
    pub fn options(&self) -> &ElectionOptions {
        &self.options
    }

    /// How the store fits its timing inside the ttl for these options: the
    /// lease it keeps and, by [`LeasePlan::lifetime`](crate::LeasePlan::lifetime),
    /// how long after a renewal's send a leader steps down at the latest.
    pub fn lease_plan(&self) -> crate::LeasePlan {
        self.backend.lease_plan(&self.options)
    }

    /// The backend under this elector.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Campaign until this candidate leads.
    ///
    /// Store errors that may pass (unreachable, timeouts) are retried with
    /// backoff for as long as it takes.
    ///
    /// # Errors
    /// Errors that retrying cannot fix: permission denied, a record that is
    /// not leasehold's, an unsupported operation.
    ///
    /// # Cancel safety
    /// Cancel safe. The campaign runs in a task of its own; dropping this
    /// future signals it to stop, and that task then withdraws this
    /// candidate's claim (or releases a lease won at the moment of
    /// cancellation) in the background: nothing waits for it. To end a
    /// campaign and wait until the claim is gone (before a process exits),
    /// use [`lock_cancellable`](Self::lock_cancellable).
    pub async fn lock(&self) -> Result<Leadership> {
        match self.campaign(Mode::Block).await? {
            Attempt::Leader(l) => Ok(l),
            // A blocking campaign only ends as leader or with an error.
            Attempt::Held(_) => Err(Error::Cancelled),
        }
    }

    /// Campaign until this candidate leads or `cancel` fires.
    ///
    /// Unlike dropping a [`lock`](Self::lock) future, which only signals the
    /// campaign to stop, this waits for the campaign to end: when `cancel`
    /// fires first it returns `Ok(None)` once this candidate's queued claim
    /// has been withdrawn from the store (or the withdrawal failed, bounded
    /// by the request timeout; the claim then expires with its lease). A
    /// process that exits right after it leaves no claim behind for the
    /// next candidate to wait out.
    ///
    /// How long that takes after `cancel` fires: a store call already in
    /// flight is let finish (each is bounded by the request timeout), then
    /// the withdrawal (or the release of a lease won meanwhile) is one more
    /// bounded call; so at most about two request timeouts, and one round
    /// trip when the store answers.
    ///
    /// A win that races the cancellation (the store made this candidate the
    /// leader while `cancel` fired) is given back: when `cancel` has fired
    /// by the time the campaign ends, the lease is released (awaited,
    /// bounded by the request timeout) and the result is `Ok(None)`. So
    /// `Ok(Some(_))` always means a term that began before `cancel` fired.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    ///
    /// # Cancel safety
    /// Cancel safe, as [`lock`](Self::lock) (but then nothing waits for the
    /// withdrawal, and a lease won meanwhile is released in the background).
    pub async fn lock_cancellable(&self, cancel: &CancellationToken) -> Result<Option<Leadership>> {
        match self.campaign_with(Mode::Block, cancel.child_token()).await {
            Ok(attempt) => match attempt.leadership() {
                Some(leadership) if cancel.is_cancelled() => {
                    let (election, candidate) =
                        (&self.options.election, &self.options.candidate_id);
                    let token = leadership.fencing_token();
                    tracing::info!(%election, %candidate, %token, "won as the campaign was cancelled; releasing");
                    if let Err(e) = leadership.unlock().await {
                        tracing::warn!(%election, %candidate, %token, error = %e, "releasing a lease won while cancelling failed");
                    }
                    Ok(None)
                }
                other => Ok(other),
            },
            Err(Error::Cancelled) if cancel.is_cancelled() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Try once: lead now if the election is free, else say who leads.
    ///
    /// On a fair-queue backend a queued claim is withdrawn before this
    /// returns `Held`.
    ///
    /// # Errors
    /// Any store error (nothing is retried).
    ///
    /// # Cancel safety
    /// Cancel safe, as [`lock`](Self::lock).
    pub async fn try_lock(&self) -> Result<Attempt> {
        self.campaign(Mode::Try).await
    }

    /// Campaign for at most `wait`; `None` if someone else still leads then.
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    ///
    /// # Cancel safety
    /// Cancel safe, as [`lock`](Self::lock).
    pub async fn lock_timeout(&self, wait: Duration) -> Result<Option<Leadership>> {
        let until = Instant::now() + wait;
        Ok(self.campaign(Mode::Until(until)).await?.leadership())
    }

    /// The current leader, as the store says now.
    ///
    /// # Errors
    /// Store errors; the call is bounded by the request timeout.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>> {
        bounded(
            self.options.request_timeout,
            "leader",
            self.backend.leader(&self.options.election),
        )
        .await
    }

    /// The live candidates of this election in line order, with their ids,
    /// values and tokens; the first leads (Curator's
    /// `LeaderLatch.getParticipants`, tooz's group members): for a leader
    /// that hands out shards or sizes work by the number of candidates.
    /// Read from the store now, bounded by the request timeout.
    ///
    /// # Errors
    /// [`Error::NotSupported`] on stores that keep no line (record stores:
    /// Cloud Storage knows only its leader); store errors.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn participants(&self) -> Result<Vec<LeaderInfo>> {
        let Some(list) = self.backend.participants() else {
            return Err(Error::NotSupported {
                operation: "participants",
                backend: self.backend.name(),
            });
        };
        bounded(
            self.options.request_timeout,
            "participants",
            list.participants(&self.options.election),
        )
        .await
    }

    /// Follow the leader of this election: a watch receiver that holds the
    /// current leader (or `None`) and changes with every change the store
    /// reports, for leaders and followers alike. Uses the backend's watch,
    /// or polls every (jittered) retry interval on backends without one.
    /// A background task feeds it until every receiver is dropped.
    ///
    /// On a backend without a watch, while a campaign of this elector (or a
    /// clone of it) runs, the observer does not poll: it follows the
    /// campaign's own reads of the leader (one per poll), so a follower
    /// that campaigns and observes reads the store once per poll interval,
    /// not twice. Between campaigns (leading, or not campaigning) it polls.
    ///
    /// What the receiver sees when the store fails after the start:
    ///
    /// * Errors that may pass (unreachable, timeouts) are retried for ever
    ///   with backoff; meanwhile the value stays the last leader seen, which
    ///   may be out of date (a warning is logged once failures have lasted a
    ///   ttl, at debug level before).
    /// * Errors that retrying cannot fix (those that are not
    ///   [`Error::is_transient`]: permission denied, a record that is not
    ///   leasehold's, a configuration error) are logged at warn
    ///   level and end the observation: the sender is dropped, so
    ///   `changed()` returns an error. The value is then the last leader
    ///   seen, no longer followed; it never turns into `None` because of an
    ///   error. Call [`leader`](Self::leader) to get the error itself (it
    ///   fails the same way).
    ///
    /// # Errors
    /// The first read of the leader failed: for example
    /// [`Error::PermissionDenied`] when the credentials may not read the
    /// election.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn observe(&self) -> Result<watch::Receiver<Option<LeaderInfo>>> {
        let leader = Leader::new(
            self.backend.clone(),
            self.options.clone(),
            self.reads.subscribe(),
        );
        let span = tracing::info_span!(
            "observe",
            election = %self.options.election,
            candidate = %self.options.candidate_id,
        );
        follow(leader, &self.options, span).await
    }

    /// Follow the line of this election: a watch receiver that holds the
    /// live candidates in line order, the leader first (as
    /// [`participants`](Self::participants) answers), and changes whenever a
    /// candidate joins or leaves, the leader changes, or the leader's value
    /// does. The pair of [`observe`](Self::observe) for the line: for a
    /// leader that hands out shards by the number of candidates, or a
    /// dashboard.
    ///
    /// Driven by the store's watch, not by polling: etcd's prefix watch of
    /// the election (each change costs one watch message and no read: the
    /// line is kept from the events), ZooKeeper's children watch of the
    /// election node and a data watch of the leader's node (each change
    /// costs one listing and one read per candidate node), the memory
    /// store's change notification. A background task feeds it until every
    /// receiver is dropped.
    ///
    /// What the receiver sees when the store fails after the start is as
    /// for [`observe`](Self::observe): errors that may pass are retried for
    /// ever with backoff (the watch is reopened, the line read every retry
    /// interval meanwhile) and the value stays the last line seen; errors
    /// that retrying cannot fix are logged at warn level and end the
    /// observation (the sender is dropped; call
    /// [`participants`](Self::participants) for the error itself).
    ///
    /// # Errors
    /// [`Error::NotSupported`] on stores that keep no line (record stores),
    /// as [`participants`](Self::participants); the first read of the line
    /// failed.
    ///
    /// # Cancel safety
    /// Cancel safe.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use leasehold_core::{ElectionOptions, Elector, memory::MemoryStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> leasehold_core::Result<()> {
    /// let store = MemoryStore::new();
    /// let reader = Elector::observer(
    ///     Arc::new(store.client()),
    ///     ElectionOptions::new("orders", "dashboard"),
    /// )?;
    /// let mut line = reader.observe_participants().await?;
    /// assert!(line.borrow().is_empty());
    ///
    /// let worker = Elector::new(
    ///     Arc::new(store.client()),
    ///     ElectionOptions::new("orders", "worker-1"),
    /// )?;
    /// let leadership = worker.lock().await?;
    /// line.changed().await.expect("still observing");
    /// let ids: Vec<String> = line.borrow().iter().map(|p| p.id.clone()).collect();
    /// assert_eq!(ids, ["worker-1"]);
    /// leadership.unlock().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn observe_participants(&self) -> Result<watch::Receiver<Vec<LeaderInfo>>> {
        if self.backend.participants().is_none() {
            return Err(Error::NotSupported {
                operation: "participants",
                backend: self.backend.name(),
            });
        }
        let line = Participants {
            backend: self.backend.clone(),
            options: self.options.clone(),
        };
        let span = tracing::info_span!(
            "observe_participants",
            election = %self.options.election,
            candidate = %self.options.candidate_id,
        );
        follow(line, &self.options, span).await
    }

    /// Serve as leader for as long as `cancel` is not cancelled: campaign,
    /// run `work` for each term, campaign again after each loss.
    ///
    /// `work` receives the term's [`Leadership`] and must stop when its
    /// [`lost`](Leadership::lost) signal fires. When the work returns the
    /// lease is released. When `cancel` fires during a term, the term's done
    /// signal fires, `run` waits for `work` to return (the lease stays
    /// renewed meanwhile, so nobody else leads before the work has stopped),
    /// then releases and returns.
    ///
    /// # Errors
    /// Errors from campaigning that retrying cannot fix (see [`lock`](Self::lock)).
    ///
    /// # Cancel safety
    /// Prefer cancelling through `cancel`; dropping the future drops the
    /// running work and releases the lease in the background.
    pub async fn run<F, Fut>(&self, cancel: CancellationToken, mut work: F) -> Result<()>
    where
        F: FnMut(Leadership) -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            // Returns only once a queued claim is withdrawn.
            let Some(leadership) = self.lock_cancellable(&cancel).await? else {
                return Ok(());
            };
            let term = leadership.clone();
            let token = term.fencing_token();
            let fut = work(leadership);
            tokio::pin!(fut);
            let mut stopping = false;
            loop {
                tokio::select! {
                    _ = &mut fut => break,
                    _ = cancel.cancelled(), if !stopping => {
                        term.signal_step_down();
                        stopping = true;
                    }
                }
            }
            let ended_early = !term.is_lost();
            if let Err(e) = term.unlock().await {
                tracing::warn!(election = %self.options.election, candidate = %self.options.candidate_id, %token, error = %e, "release after the term failed; on a session it is retried in the background until it lands (or the session is given up within a ttl); else the next candidate waits until the store ends the lease (its ttl)");
            }
            if cancel.is_cancelled() {
                return Ok(());
            }
            if ended_early {
                // The work returned while still leading: do not spin.
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = sleep(jittered(self.options.retry_interval)) => {}
                }
            }
        }
    }

    /// Run one campaign in a task of its own so that dropping the caller's
    /// future can never leave a lease or a queued claim behind.
    async fn campaign(&self, mode: Mode) -> Result<Attempt> {
        self.campaign_with(mode, CancellationToken::new()).await
    }

    /// [`campaign`](Self::campaign) stopped by `cancel` as well as by
    /// dropping the future. When `cancel` fires, the result arrives only
    /// after the campaign task has withdrawn its claim.
    async fn campaign_with(&self, mode: Mode, cancel: CancellationToken) -> Result<Attempt> {
        if !self.timings_checked {
            self.options.validate()?;
            self.backend.validate(&self.options)?;
            self.options
                .validate_plan(&self.backend.lease_plan(&self.options))?;
        }
        let on_drop = cancel.clone().drop_guard();
        let (tx, rx) = oneshot::channel();
        let span = tracing::info_span!(
            "campaign",
            election = %self.options.election,
            candidate = %self.options.candidate_id,
        );
        let task = Campaign {
            backend: self.backend.clone(),
            options: self.options.clone(),
            monitor: self.monitor.clone(),
            cancel,
            reads: Running::start(&self.reads),
            permits: self.permits,
        };
        tokio::spawn(
            async move {
                let result = task.run(mode).await;
                // If the caller is gone, the value is dropped here: a won
                // leadership is then released by its guard.
                let _ = tx.send(result);
            }
            .instrument(span),
        );
        let result = rx.await.unwrap_or(Err(Error::Cancelled));
        on_drop.disarm();
        result
    }
}

pub(crate) async fn bounded<T>(
    after: Duration,
    operation: &'static str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    timeout(after, fut)
        .await
        .unwrap_or(Err(Error::Timeout { operation, after }))
}
