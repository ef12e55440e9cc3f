//! The election engine: campaigning, observing, and the long-lived `run` loop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::health::{Health, Monitor};
use crate::leadership::Leadership;
use crate::options::ElectionOptions;
use crate::retry::{Backoff, RenewSchedule, jittered};
use crate::session::{self, SessionUse, Unsettled};
use crate::types::{AcquireOutcome, AcquireRequest, Claim, LeaderInfo};

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
/// On backends with sessions ([`Capabilities::sessions`](crate::Capabilities::sessions):
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
}

/// The leader as this elector's campaigns read it, so that an observer on a
/// backend without a watch follows those reads instead of polling the store
/// a second time (one read per poll serves both).
#[derive(Debug, Default)]
struct CampaignReads {
    /// Campaigns of this elector (or its clones) running now.
    running: usize,
    /// Reads of the leader so far (each `Held` outcome is one).
    count: u64,
    /// The leader the last of them saw.
    leader: Option<LeaderInfo>,
}

/// Counts a campaign as running until dropped (when its task ends).
struct Running(Arc<watch::Sender<CampaignReads>>);

impl Running {
    fn start(reads: &Arc<watch::Sender<CampaignReads>>) -> Running {
        reads.send_modify(|r| r.running += 1);
        Running(reads.clone())
    }

    /// Publish the leader a campaign read.
    fn saw(&self, leader: &Option<LeaderInfo>) {
        self.0.send_modify(|r| {
            r.count += 1;
            r.leader = leader.clone();
        });
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|r| r.running -= 1);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Until this candidate leads.
    Block,
    /// One attempt.
    Try,
    /// Until this candidate leads or the instant passes.
    Until(Instant),
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
        let monitor = Arc::new(Monitor::new(&options, backend.name()));
        monitor.register();
        Ok(Elector {
            backend,
            options,
            monitor,
            reads: Arc::new(watch::Sender::new(CampaignReads::default())),
        })
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
        let caps = self.backend.capabilities();
        let election = self.options.election.clone();
        let mut stream = if caps.watch {
            Some(
                bounded(
                    self.options.request_timeout,
                    "watch",
                    self.backend.watch(&election),
                )
                .await?,
            )
        } else {
            None
        };
        let first = match &mut stream {
            Some(s) => bounded(self.options.request_timeout, "watch", s.next()).await?,
            None => self.leader().await?,
        };
        let (tx, rx) = watch::channel(first);
        let backend = self.backend.clone();
        let options = self.options.clone();
        let span = tracing::info_span!(
            "observe",
            election = %election,
            candidate = %self.options.candidate_id,
        );
        let reads = self.reads.subscribe();
        tokio::spawn(observe_task(backend, options, stream, tx, reads).instrument(span));
        Ok(rx)
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

async fn bounded<T>(
    after: Duration,
    operation: &'static str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    timeout(after, fut)
        .await
        .unwrap_or(Err(Error::Timeout { operation, after }))
}

/// One campaign's state.
struct Campaign {
    backend: Arc<dyn Backend>,
    options: ElectionOptions,
    monitor: Arc<Monitor>,
    cancel: CancellationToken,
    /// Publishes the leaders this campaign reads to the elector's observers.
    reads: Running,
}

/// This candidate's own claim in the line, held while waiting (not to be
/// confused with [`Attempt::Held`], someone else leading): with the send time of its last refresh
/// (claims of their own lease), or the session that keeps it alive.
struct QueuedClaim {
    claim: Claim,
    anchor: Instant,
    session: Option<SessionUse>,
}

impl Campaign {
    async fn call<T>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let result = bounded(self.options.request_timeout, operation, fut).await;
        self.note(operation, &result);
        result
    }

    /// Report a store call's outcome to the monitor.
    fn note<T>(&self, operation: &'static str, result: &Result<T>) {
        match result {
            Ok(_) | Err(Error::Lost(_)) => self.monitor.store_ok(),
            Err(e) => self.monitor.store_error(operation, e),
        }
    }

    /// A session for a new claim: the backend's shared one for these
    /// timings, or one of this elector's own.
    async fn join_session(&self) -> Result<SessionUse> {
        let result = match self.backend.sessions() {
            Some(registry) if !self.options.own_session => {
                registry.join(&self.backend, &self.options).await
            }
            _ => session::open_own(&self.backend, &self.options).await,
        };
        self.note("acquire", &result);
        result
    }

    /// Withdraw a claim, bounded. A claim in a session whose withdrawal was
    /// not confirmed is resolved in the background while the session lives
    /// ([`SessionUse::settle`]); a claim of its own lease expires with it.
    async fn withdraw(&self, claim: Option<QueuedClaim>) {
        let Some(h) = claim else { return };
        if let Err(e) = self.call("release", self.backend.release(&h.claim)).await {
            match h.session {
                Some(session) => session.settle(Unsettled::Release(h.claim), e),
                None => {
                    tracing::debug!(key = %h.claim.key, error = %e, "withdrawing the claim failed; it stays in the line until the store ends its lease (its ttl)")
                }
            }
        }
    }

    async fn run(self, mode: Mode) -> Result<Attempt> {
        let mut unanswered = None;
        let result = self.campaign_loop(mode, &mut unanswered).await;
        // The campaign ended while a create in a session went unanswered:
        // remove whatever it may have made, in the background.
        if let Some((session, error)) = unanswered {
            session.settle(
                Unsettled::Create {
                    election: self.options.election.clone(),
                },
                error,
            );
        }
        result
    }

    /// The campaign. `unanswered` holds the session of a create whose
    /// answer was lost (with its error) until a later create in the same
    /// session resolves it: that session keeps the election's place, so the
    /// claim the lost create may have made is never adopted by anyone else.
    async fn campaign_loop(
        &self,
        mode: Mode,
        unanswered: &mut Option<(SessionUse, Error)>,
    ) -> Result<Attempt> {
        let caps = self.backend.capabilities();
        let opts = &self.options;
        let lifetime = opts.deadline_after_renewal();
        let mut held: Option<QueuedClaim> = None;
        let use_sessions = caps.sessions;
        // Observed-time expiry (backends without server-side expiry): the
        // revision seen and when it was first seen.
        let mut observed: Option<(i64, Instant)> = None;
        let mut backoff = Backoff::new(opts.retry_interval);
        // While a queued claim is held, failed steps are retried on the
        // claim's renewal schedule (a last attempt shortly before its local
        // deadline); a successful step leads to wait_turn, which renews it.
        let mut claim_schedule = RenewSchedule::new(opts);
        let started = Instant::now();
        loop {
            if self.cancel.is_cancelled() {
                self.withdraw(held).await;
                return Err(Error::Cancelled);
            }
            // A session lost while a claim waits in it: the claim went with
            // it (or, when the store was unreachable past the deadline, may
            // linger: withdraw it). Never win with it.
            if held
                .as_ref()
                .and_then(|h| h.session.as_ref())
                .is_some_and(SessionUse::is_lost)
            {
                tracing::warn!("the session of the queued claim was lost; campaigning again");
                self.withdraw(held.take()).await;
                continue;
            }
            // Retry a create whose answer was lost in the same session: the
            // backend replaces what it may have made (never adopts it).
            let retry_in = unanswered
                .take()
                .map(|(s, _)| s)
                .filter(|s| !s.is_lost() && held.is_none());
            let session = if let Some(s) = retry_in {
                Some(s)
            } else if use_sessions && held.is_none() {
                match self.join_session().await {
                    Ok(s) => Some(s),
                    Err(e) if mode == Mode::Try || !e.is_transient() => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "opening a session failed; retrying");
                        if !self.pause(mode, backoff.next_delay()).await {
                            return self.stopped(mode);
                        }
                        continue;
                    }
                }
            } else {
                None
            };
            let expired_revision = match observed {
                Some((rev, first_seen))
                    if !caps.server_expiry && first_seen.elapsed() >= opts.ttl =>
                {
                    Some(rev)
                }
                _ => None,
            };
            let req = AcquireRequest {
                election: opts.election.clone(),
                candidate: opts.candidate_id.clone(),
                value: opts.value.clone(),
                ttl: opts.ttl,
                claim: held.as_ref().map(|h| h.claim.clone()),
                expired_revision,
            };
            let sent = Instant::now();
            let bound = match &held {
                Some(h) if h.session.is_none() => {
                    claim_schedule.call_bound(sent, h.anchor + lifetime)
                }
                _ => opts.request_timeout,
            };
            let outcome = match &session {
                Some(s) => {
                    bounded(bound, "acquire", self.backend.try_acquire_in(&req, s.id())).await
                }
                None => bounded(bound, "acquire", self.backend.try_acquire(&req)).await,
            };
            self.note("acquire", &outcome);
            let mut session = session;
            if let Err(e) = &outcome
                && e.is_transient()
                && let Some(s) = session.take()
            {
                // A create in a session whose outcome is unknown (a refusal
                // such as permission denied made nothing: nothing to settle).
                *unanswered = Some((s, e.clone()));
            }
            let (leader, revision) = match outcome {
                Ok(AcquireOutcome::Acquired(claim)) => {
                    let session = match held.as_mut() {
                        Some(h) => h.session.take(),
                        None => session,
                    };
                    if let Some(s) = session {
                        held = None;
                        match self.start_in_session(claim, s, &caps, started).await {
                            Ok(leadership) => return Ok(Attempt::Leader(leadership)),
                            Err(e) if !e.is_lost() && (mode == Mode::Try || !e.is_transient()) => {
                                return Err(e);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "won, but the session could not be proven alive; campaigning again");
                                if !e.is_lost() && !self.pause(mode, backoff.next_delay()).await {
                                    return self.stopped(mode);
                                }
                                continue;
                            }
                        }
                    }
                    let anchor = held.as_ref().map_or(sent, |h| h.anchor);
                    if anchor + lifetime <= Instant::now() {
                        // Won with a lease too old to trust: start over.
                        tracing::warn!("won with a lease past its local deadline; starting over");
                        self.withdraw(Some(QueuedClaim {
                            claim,
                            anchor,
                            session: None,
                        }))
                        .await;
                        held = None;
                        continue;
                    }
                    tracing::info!(token = %claim.token, "acquired leadership");
                    let leadership = Leadership::start(
                        self.backend.clone(),
                        opts.clone(),
                        claim,
                        anchor,
                        self.monitor.clone(),
                        started.elapsed(),
                    );
                    return Ok(Attempt::Leader(leadership));
                }
                Ok(AcquireOutcome::Held {
                    leader,
                    queued,
                    revision,
                }) => {
                    backoff.reset();
                    claim_schedule.reset();
                    held = match (queued, held.take()) {
                        (Some(claim), Some(old)) => Some(QueuedClaim {
                            claim,
                            anchor: old.anchor,
                            session: old.session,
                        }),
                        (Some(claim), None) => Some(QueuedClaim {
                            claim,
                            anchor: sent,
                            session,
                        }),
                        (None, _) => None,
                    };
                    self.reads.saw(&leader);
                    if !caps.server_expiry && observed.is_none_or(|(r, _)| r != revision) {
                        // Seen now (reply time): the holder wrote it no later.
                        observed = Some((revision, Instant::now()));
                    }
                    (leader, revision)
                }
                Err(Error::Lost(message)) => {
                    // Our queued claim died while we waited (its session
                    // expired): never win with it; start over.
                    if let Some(s) = &session {
                        // Creating a claim in the session failed as lost:
                        // the session may be gone. One keep-alive tells (and
                        // marks it lost if so, ending every term on it); a
                        // claim that vanished for another reason leaves the
                        // session and its other terms alone.
                        let proof = s.prove().await;
                        self.note("renew", &proof);
                    }
                    tracing::warn!(%message, "queued claim lost while waiting; campaigning again");
                    held = None;
                    continue;
                }
                Err(e) if mode == Mode::Try || !e.is_transient() => {
                    self.withdraw(held).await;
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "acquire failed; retrying");
                    let now = Instant::now();
                    let delay = match &held {
                        Some(h) if h.session.is_none() => {
                            claim_schedule.retry_at(sent, now, h.anchor + lifetime) - now
                        }
                        _ => backoff.next_delay(),
                    };
                    if !self.pause(mode, delay).await {
                        self.withdraw(held).await;
                        return self.stopped(mode);
                    }
                    continue;
                }
            };
            if mode == Mode::Try {
                self.withdraw(held).await;
                return Ok(Attempt::Held(leader));
            }
            tracing::debug!(leader = ?leader.as_ref().map(|l| &l.id), "held by another; waiting");
            let waited = if held.as_ref().is_some_and(|h| h.session.is_some()) {
                self.wait_in_session(mode, &mut held, revision, &caps).await
            } else {
                self.wait_turn(mode, &mut held, revision, &caps).await
            };
            match waited {
                WaitEnd::Retry => {}
                WaitEnd::Stop => {
                    self.withdraw(held).await;
                    return match mode {
                        Mode::Until(_) if !self.cancel.is_cancelled() => Ok(Attempt::Held(leader)),
                        _ => Err(Error::Cancelled),
                    };
                }
            }
        }
    }

    fn stopped(&self, mode: Mode) -> Result<Attempt> {
        match mode {
            Mode::Until(_) if !self.cancel.is_cancelled() => Ok(Attempt::Held(None)),
            _ => Err(Error::Cancelled),
        }
    }

    /// Sleep `delay` unless cancelled or past the mode's deadline; `false`
    /// when the campaign must stop.
    async fn pause(&self, mode: Mode, delay: Duration) -> bool {
        let wake = Instant::now() + delay;
        let until = match mode {
            Mode::Until(t) => t,
            _ => wake + Duration::from_secs(1),
        };
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = sleep_until(until), if until <= wake => false,
            _ = sleep_until(wake) => true,
        }
    }

    /// Start a term on a claim won in `session`: the term's deadline is the
    /// session's. A self-kept session (ZooKeeper) is proven alive at the
    /// quorum first: its waiters sent nothing but the client's pings.
    async fn start_in_session(
        &self,
        claim: Claim,
        session: SessionUse,
        caps: &crate::types::Capabilities,
        started: Instant,
    ) -> Result<Leadership> {
        let proven = if caps.self_kept_sessions {
            let r = session.prove().await;
            self.note("renew", &r);
            r.map(|_| ())
        } else {
            Ok(())
        };
        let too_old = session.is_lost() || session.deadline() <= Instant::now();
        if proven.is_err() || too_old {
            let reason = session.reason();
            self.withdraw(Some(QueuedClaim {
                claim,
                anchor: Instant::now(),
                session: Some(session),
            }))
            .await;
            return match proven {
                Err(e) => Err(e),
                Ok(()) => Err(Error::Lost(format!(
                    "won with a session past its local deadline ({reason})"
                ))),
            };
        }
        tracing::info!(token = %claim.token, session = %format_args!("{:#x}", session.id()), "acquired leadership");
        Ok(Leadership::start_in_session(
            self.backend.clone(),
            self.options.clone(),
            claim,
            session,
            self.monitor.clone(),
            started.elapsed(),
        ))
    }

    /// Wait for a reason to try again with a claim kept alive by its
    /// session: the predecessor's watch and the session's lost signal. No
    /// store call of its own while nothing happens (the session's
    /// keep-alives are the only traffic); after a failed watch, try again
    /// after a (jittered) retry interval.
    async fn wait_in_session(
        &self,
        mode: Mode,
        held: &mut Option<QueuedClaim>,
        revision: i64,
        caps: &crate::types::Capabilities,
    ) -> WaitEnd {
        let Some(session) = held.as_ref().and_then(|h| h.session.clone()) else {
            return WaitEnd::Retry;
        };
        let opts = &self.options;
        let until = match mode {
            Mode::Until(t) => Some(t),
            _ => None,
        };
        let lost = session.lost_token();
        let mut beats = session.beats();
        let wait_claim = held.as_ref().map(|h| h.claim.clone());
        let watch = self
            .backend
            .wait(&opts.election, wait_claim.as_ref(), revision);
        tokio::pin!(watch);
        // Backends without a watch are polled; a failed watch is opened
        // again after a retry interval.
        let mut retry_at = (!caps.watch).then(|| Instant::now() + jittered(opts.retry_interval));
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return WaitEnd::Stop,
                _ = sleep_until(until.unwrap_or_else(Instant::now)), if until.is_some() => return WaitEnd::Stop,
                _ = lost.cancelled() => {
                    tracing::warn!(reason = %session.reason(), "the session of the queued claim was lost while waiting; campaigning again");
                    let dead = held.take();
                    self.withdraw(dead).await;
                    return WaitEnd::Retry;
                }
                r = &mut watch, if retry_at.is_none() => match r {
                    Ok(()) => return WaitEnd::Retry,
                    Err(e) => {
                        tracing::debug!(error = %e, "wait failed; trying again after a retry interval");
                        retry_at = Some(Instant::now() + jittered(opts.retry_interval));
                    }
                },
                _ = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => return WaitEnd::Retry,
                r = beats.changed() => {
                    if r.is_err() {
                        return WaitEnd::Retry;
                    }
                    let beat = beats.borrow_and_update().clone();
                    match &beat.error {
                        None => self.monitor.store_ok(),
                        Some(e) => self.monitor.store_error("renew", e),
                    }
                }
            }
        }
    }

    /// Wait for a reason to try again, keeping a queued claim renewed.
    async fn wait_turn(
        &self,
        mode: Mode,
        held: &mut Option<QueuedClaim>,
        revision: i64,
        caps: &crate::types::Capabilities,
    ) -> WaitEnd {
        let opts = &self.options;
        let lifetime = opts.deadline_after_renewal();
        // Backends with a watch are re-checked every ttl anyway, in case a
        // change was missed; others are polled.
        let poll = if caps.watch {
            opts.ttl
        } else {
            jittered(opts.retry_interval)
        };
        let poll_at = Instant::now() + poll;
        let until = match mode {
            Mode::Until(t) => Some(t),
            _ => None,
        };
        let backend = self.backend.clone();
        let election = opts.election.clone();
        let wait_claim = held.as_ref().map(|h| h.claim.clone());
        let use_watch = caps.watch;
        let watch = async move {
            if !use_watch {
                return std::future::pending().await;
            }
            match backend.wait(&election, wait_claim.as_ref(), revision).await {
                Ok(()) => {}
                Err(Error::NotSupported { .. }) => std::future::pending().await,
                Err(e) => {
                    tracing::debug!(error = %e, "wait failed; falling back to the poll timer");
                    std::future::pending().await
                }
            }
        };
        tokio::pin!(watch);
        // The same schedule as a leader's heartbeat: after an error, try
        // again at least every retry interval and once shortly before the
        // claim's local deadline.
        let mut schedule = RenewSchedule::new(opts);
        let mut next_renew = held.as_ref().map(|h| h.anchor + opts.renew_interval);
        loop {
            let renew_at = next_renew.unwrap_or(poll_at);
            tokio::select! {
                _ = self.cancel.cancelled() => return WaitEnd::Stop,
                _ = sleep_until(until.unwrap_or(poll_at)), if until.is_some() => return WaitEnd::Stop,
                _ = &mut watch => return WaitEnd::Retry,
                _ = sleep_until(poll_at) => return WaitEnd::Retry,
                _ = sleep_until(renew_at), if next_renew.is_some() => {}
            }
            // Renew the queued claim so it survives the wait.
            let Some(h) = held.as_mut() else {
                return WaitEnd::Retry;
            };
            let sent = Instant::now();
            let claim_deadline = h.anchor + lifetime;
            let bound = schedule.call_bound(sent, claim_deadline);
            let renewed = bounded(bound, "renew", self.backend.renew(&h.claim)).await;
            self.note("renew", &renewed);
            match renewed {
                Ok(claim) => {
                    h.claim = claim;
                    h.anchor = sent;
                    next_renew = Some(sent + opts.renew_interval);
                    schedule.reset();
                }
                Err(Error::Lost(message)) => {
                    tracing::warn!(%message, "queued claim expired while waiting; campaigning again");
                    *held = None;
                    return WaitEnd::Retry;
                }
                Err(e) => {
                    if h.anchor + lifetime <= Instant::now() {
                        tracing::warn!(error = %e, "queued claim could not be renewed in time; campaigning again");
                        let dead = held.take();
                        self.withdraw(dead).await;
                        return WaitEnd::Retry;
                    }
                    tracing::warn!(error = %e, "renewing the queued claim failed; retrying");
                    next_renew = Some(schedule.retry_at(sent, Instant::now(), claim_deadline));
                }
            }
        }
    }
}

enum WaitEnd {
    /// Try to acquire again.
    Retry,
    /// Cancelled or out of time.
    Stop,
}

/// Feed an observer's watch channel until every receiver is gone, or until
/// an error that retrying cannot fix (then the sender is dropped and the
/// receivers see the channel closed).
async fn observe_task(
    backend: Arc<dyn Backend>,
    options: ElectionOptions,
    mut stream: Option<Box<dyn crate::backend::LeaderWatch>>,
    tx: watch::Sender<Option<LeaderInfo>>,
    mut reads: watch::Receiver<CampaignReads>,
) {
    let mut backoff = Backoff::new(options.retry_interval);
    // The campaigns' reads so far: only later ones are news to this observer.
    let mut reads_seen = reads.borrow_and_update().count;
    let publish = |next: Option<LeaderInfo>| {
        tx.send_if_modified(|cur| {
            if *cur == next {
                false
            } else {
                tracing::debug!(leader = ?next.as_ref().map(|l| (&l.id, l.token)), "leader changed");
                *cur = next;
                true
            }
        });
    };
    let give_up = |e: &Error| {
        tracing::warn!(
            error = %e,
            "observing stopped: the store refused in a way retrying cannot fix; \
             the receivers see the channel closed (Elector::leader returns the error)"
        );
    };
    let mut watchable = backend.capabilities().watch;
    // When the current run of failures began, and whether it was reported.
    let mut failing: Option<(Instant, bool)> = None;
    loop {
        if watchable && stream.is_none() {
            // The watch broke earlier: try to reopen it (polling meanwhile).
            match bounded(
                options.request_timeout,
                "watch",
                backend.watch(&options.election),
            )
            .await
            {
                Ok(s) => stream = Some(s),
                Err(Error::NotSupported { .. }) => watchable = false,
                Err(e) if !e.is_transient() => return give_up(&e),
                Err(e) => tracing::debug!(error = %e, "reopening the watch failed; polling"),
            }
        }
        let step = async {
            match &mut stream {
                Some(s) => s.next().await,
                // Each turn ends in a read unless a campaign started during
                // the sleep; then its reads are followed until it ends.
                None => loop {
                    if !watchable
                        && let Some(leader) = campaign_read(&mut reads, &mut reads_seen).await
                    {
                        break Ok(leader);
                    }
                    sleep(jittered(options.retry_interval)).await;
                    if watchable || reads.borrow().running == 0 {
                        break bounded(
                            options.request_timeout,
                            "leader",
                            backend.leader(&options.election),
                        )
                        .await;
                    }
                },
            }
        };
        let result = tokio::select! {
            _ = tx.closed() => return,
            r = step => r,
        };
        match result {
            Ok(next) => {
                if let Some((_, true)) = failing {
                    tracing::info!("observing the store again");
                }
                failing = None;
                backoff.reset();
                publish(next);
            }
            Err(e) if !e.is_transient() => return give_up(&e),
            Err(e) => {
                let (since, reported) = failing.get_or_insert((Instant::now(), false));
                if !*reported && since.elapsed() >= options.ttl {
                    *reported = true;
                    tracing::warn!(
                        error = %e,
                        failing_for = ?since.elapsed(),
                        "observing keeps failing; the leader shown may be out of date (retrying)"
                    );
                } else {
                    tracing::debug!(error = %e, "observing failed; reopening");
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = sleep(backoff.next_delay()) => {}
                }
                if watchable {
                    stream = None;
                }
            }
        }
    }
}

/// The leader from the next read of a running campaign of the same elector
/// that this observer has not seen (`seen`: the reads it has), or `None`
/// once no campaign runs: then the observer polls.
async fn campaign_read(
    reads: &mut watch::Receiver<CampaignReads>,
    seen: &mut u64,
) -> Option<Option<LeaderInfo>> {
    loop {
        {
            let r = reads.borrow_and_update();
            if r.count != *seen {
                *seen = r.count;
                return Some(r.leader.clone());
            }
            if r.running == 0 {
                return None;
            }
        }
        reads.changed().await.ok()?;
    }
}
