//! Leases: what keeps a term or a queued claim alive, in one shape.
//!
//! A lease is either
//!
//! * a **session** of a [`QueueStore`] (an etcd lease, a ZooKeeper client
//!   session) that keeps many claims alive, shared by the electors whose
//!   backends have the same [`SessionScope`] and the same timings (see
//!   [`ElectionOptions::own_session`]); or
//! * a **record** of a [`RecordStore`], owned by one term: the record
//!   itself is renewed.
//!
//! Either way one task keeps it (the *keeper*): a refresh (a keep-alive, a
//! renewal) every renew interval on the schedule of [`RenewSchedule`], and
//! the lease's local deadline `last successful refresh SENT + lifetime`,
//! where the lifetime is the store's lease less the safety margin and any
//! proof gap ([`LeasePlan`](crate::LeasePlan)): `ttl - safety_margin` at
//! most. The lease is **lost** when the store says it is gone (a
//! revoked or expired lease, an expired ZooKeeper session, a record taken
//! over) or when the deadline passes without a successful refresh. Losing it
//! ends every term on it (each term's done signal fires, with the lease's
//! reason) and makes every waiter on it start over. A session is closed (the
//! etcd lease revoked) when its last user goes.
//!
//! One session holds at most one claim per election (etcd's key is named
//! after the lease); a second elector of the same election on the same
//! backend gets a session of its own. So N electors on one backend cost one
//! keep-alive per renew interval, as with Go's `concurrency.Session`.
//!
//! A claim's end that the store did not confirm in a session (a release, a
//! withdrawal or a create whose answer was lost) keeps its election's place
//! in the session and is retried in the background until it is confirmed;
//! when it cannot be within a ttl, the session is given up (marked lost, so
//! the store ends it). See [`LeaseUse::settle`].
//!
//! On stores whose client keeps the session alive by itself
//! ([`QueueStore::self_kept_sessions`]: ZooKeeper's pings), the engine
//! sends keep-alives only while a leader is on the session, to prove its
//! deadline at the quorum; waiters cost nothing but the client's pings.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::{Backend, Family, QueueStore, RecordStore, SessionScope};
use crate::error::{Error, Result};
use crate::leadership::LossReason;
use crate::options::ElectionOptions;
use crate::retry::{Backoff, RenewSchedule};
use crate::types::Claim;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The queue protocol of `backend`, or an error naming the mix-up (a
/// backend whose family changed under the engine).
pub(crate) fn queue_of(backend: &dyn Backend) -> Result<&dyn QueueStore> {
    match backend.family() {
        Family::Queue(q) => Ok(q),
        Family::Record(_) => Err(family_error(backend, "a queue store")),
    }
}

/// The record protocol of `backend` (see [`queue_of`]).
pub(crate) fn record_of(backend: &dyn Backend) -> Result<&dyn RecordStore> {
    match backend.family() {
        Family::Record(r) => Ok(r),
        Family::Queue(_) => Err(family_error(backend, "a record store")),
    }
}

fn family_error(backend: &dyn Backend, wanted: &str) -> Error {
    Error::Config(format!(
        "the {} backend changed its family: the engine expected {wanted}",
        backend.name()
    ))
}

/// The engine's shared sessions on one backend scope.
#[derive(Debug, Default)]
struct SessionRegistry {
    /// Shared sessions, by timings; dead entries are pruned on each join.
    shared: Mutex<Vec<Weak<LeaseCore>>>,
    /// One join opens a session at a time, so that many electors starting
    /// together share one session rather than each opening its own.
    opening: tokio::sync::Mutex<()>,
}

/// Every registry, by backend name and scope. An entry whose sessions are
/// all gone is pruned; a live session keeps its backend (and so the state
/// its scope is the address of) alive, so a scope is never reused while its
/// registry has sessions.
static REGISTRIES: LazyLock<Mutex<Registries>> = LazyLock::new(Default::default);

/// The registries, by backend name and scope.
type Registries = HashMap<(&'static str, SessionScope), Arc<SessionRegistry>>;

fn registry(name: &'static str, scope: SessionScope) -> Arc<SessionRegistry> {
    let mut all = lock(&REGISTRIES);
    all.retain(|_, r| Arc::strong_count(r) > 1 || r.open() > 0);
    all.entry((name, scope)).or_default().clone()
}

/// How many shared sessions are open on `backend`'s scope now (for tests
/// and operators); 0 for record stores.
pub fn shared_sessions(backend: &dyn Backend) -> usize {
    let Family::Queue(q) = backend.family() else {
        return 0;
    };
    lock(&REGISTRIES)
        .get(&(backend.name(), q.scope()))
        .map_or(0, |r| r.open())
}

impl SessionRegistry {
    fn open(&self) -> usize {
        lock(&self.shared)
            .iter()
            .filter(|w| w.upgrade().is_some_and(|c| !c.state.lost.is_cancelled()))
            .count()
    }
}

/// The timings a lease is kept with; only electors with equal timings share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timing {
    ttl: Duration,
    renew_interval: Duration,
    retry_interval: Duration,
    safety_margin: Duration,
    request_timeout: Duration,
    /// The store's lease ([`LeasePlan::lease`](crate::LeasePlan::lease)).
    lease: Duration,
    /// From a refresh's send to the local deadline
    /// ([`LeasePlan::lifetime`](crate::LeasePlan::lifetime)).
    lifetime: Duration,
}

impl Timing {
    fn of(backend: &dyn Backend, o: &ElectionOptions) -> Self {
        let plan = backend.lease_plan(o);
        Timing {
            ttl: o.ttl,
            renew_interval: o.renew_interval,
            retry_interval: o.retry_interval,
            safety_margin: o.safety_margin,
            request_timeout: o.request_timeout,
            lease: plan.lease.min(o.ttl),
            lifetime: plan.lifetime(o),
        }
    }
}

/// The outcome of one refresh, as published to the lease's users.
#[derive(Debug, Clone)]
pub(crate) struct Beat {
    /// The lease's local deadline after it.
    pub(crate) deadline: Instant,
    /// How long the refresh took (zero before the first).
    pub(crate) latency: Duration,
    /// The error of a failed refresh (the deadline is then unchanged).
    pub(crate) error: Option<Error>,
}

/// What the lease is on the store.
#[derive(Debug, Clone)]
pub(crate) enum LeaseKind {
    /// A session of a queue store, by its id.
    Session(i64),
    /// A record of a record store: the term's claim, renewed in place
    /// (shared with the term, whose proclaims may change it).
    Record(Arc<Mutex<Claim>>),
}

/// The state the keeper task and the users share.
#[derive(Debug)]
pub(crate) struct LeaseState {
    kind: LeaseKind,
    timing: Timing,
    beat: watch::Sender<Beat>,
    lost: CancellationToken,
    reason: Mutex<Option<LossReason>>,
    /// Elections with a claim on this lease.
    elections: Mutex<HashSet<String>>,
    /// Leaders on this lease (self-kept sessions: keep-alives prove their
    /// deadline; none are sent without a leader).
    leaders: watch::Sender<usize>,
}

impl LeaseState {
    /// Record the reason (the first one wins) and fire the lost signal, then
    /// log it (the signal first: see `TermState::fire_lost`).
    pub(crate) fn mark_lost(&self, reason: LossReason) {
        let first = {
            let mut r = lock(&self.reason);
            if r.is_none() {
                *r = Some(reason.clone());
                true
            } else {
                false
            }
        };
        self.lost.cancel();
        if first && let LeaseKind::Session(id) = self.kind {
            tracing::warn!(session = %format_args!("{id:#x}"), %reason, "session lost; every term on it ends and its waiters start over");
        }
    }

    /// One refresh on the store: a keep-alive of the session, or a renewal
    /// of the record (keeping the newer of the renewed claim and one a
    /// proclaim stored meanwhile).
    async fn refresh(&self, backend: &dyn Backend) -> Result<()> {
        match &self.kind {
            LeaseKind::Session(id) => queue_of(backend)?.keep_alive(*id).await,
            LeaseKind::Record(cell) => {
                let claim = lock(cell).clone();
                let renewed = record_of(backend)?.renew(&claim).await?;
                let mut current = lock(cell);
                if renewed.version >= current.version {
                    *current = renewed;
                }
                Ok(())
            }
        }
    }
}

/// One lease and its keeper; a session is closed on the store when its
/// last user goes.
#[derive(Debug)]
pub(crate) struct LeaseCore {
    state: Arc<LeaseState>,
    backend: Arc<dyn Backend>,
    stop: CancellationToken,
}

impl Drop for LeaseCore {
    fn drop(&mut self) {
        self.stop.cancel();
        let LeaseKind::Session(id) = self.state.kind else {
            return;
        };
        let backend = self.backend.clone();
        let bound = self.state.timing.request_timeout;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let close = async { queue_of(backend.as_ref())?.close_session(id).await };
                match timeout(bound, close).await {
                    Ok(Ok(())) => tracing::debug!(session = %format_args!("{id:#x}"), "session closed"),
                    Ok(Err(e)) => tracing::debug!(session = %format_args!("{id:#x}"), error = %e, "closing the session failed; the store ends it after its ttl"),
                    Err(_) => tracing::debug!(session = %format_args!("{id:#x}"), "closing the session timed out; the store ends it after its ttl"),
                }
            });
        }
    }
}

/// One user's (one campaign's or term's) hold on a lease, for one
/// election. Clones share the hold; the election's place in the lease is
/// freed when the last clone goes, the lease ended when its last user goes.
#[derive(Debug, Clone)]
pub(crate) struct LeaseUse {
    hold: Arc<Hold>,
}

#[derive(Debug)]
struct Hold {
    core: Arc<LeaseCore>,
    election: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        lock(&self.core.state.elections).remove(&self.election);
    }
}

/// A leader on a lease, counted while it lives.
#[derive(Debug)]
pub(crate) struct LeaderMark {
    state: Arc<LeaseState>,
}

impl Drop for LeaderMark {
    fn drop(&mut self) {
        self.state.leaders.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl LeaseUse {
    fn state(&self) -> &Arc<LeaseState> {
        &self.hold.core.state
    }

    /// The store's id of the session (etcd lease id, ZooKeeper session id);
    /// `None` for a record.
    pub(crate) fn session_id(&self) -> Option<i64> {
        match self.state().kind {
            LeaseKind::Session(id) => Some(id),
            LeaseKind::Record(_) => None,
        }
    }

    /// The claim a record lease renews (shared with its term).
    pub(crate) fn record_claim(&self) -> Option<Arc<Mutex<Claim>>> {
        match &self.state().kind {
            LeaseKind::Record(cell) => Some(cell.clone()),
            LeaseKind::Session(_) => None,
        }
    }

    /// The current local deadline.
    pub(crate) fn deadline(&self) -> Instant {
        self.state().beat.borrow().deadline
    }

    /// Refresh outcomes, for the terms and waiters on the lease.
    pub(crate) fn beats(&self) -> watch::Receiver<Beat> {
        self.state().beat.subscribe()
    }

    /// Fires when the lease is lost.
    pub(crate) fn lost_token(&self) -> CancellationToken {
        self.state().lost.clone()
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.state().lost.is_cancelled()
    }

    /// Why the lease was lost (once it was).
    pub(crate) fn reason(&self) -> LossReason {
        lock(&self.state().reason)
            .clone()
            .unwrap_or_else(|| LossReason::LeaseLost("the lease ended".into()))
    }

    /// Count a leader on the lease until the mark is dropped.
    pub(crate) fn lead(&self) -> LeaderMark {
        self.state().leaders.send_modify(|n| *n += 1);
        LeaderMark {
            state: self.state().clone(),
        }
    }

    /// Stop refreshing a record lease now (its term is being released: a
    /// renewal racing the release could make the release's conditional
    /// write miss). A session goes on until its last user goes.
    pub(crate) fn stop_renewing_record(&self) {
        if let LeaseKind::Record(_) = self.state().kind {
            self.hold.core.stop.cancel();
        }
    }

    /// One refresh now, outside the keeper's schedule: proves a self-kept
    /// session's deadline before a term starts on it. Returns the new
    /// deadline.
    pub(crate) async fn prove(&self) -> Result<Instant> {
        let state = self.state();
        let lifetime = state.timing.lifetime;
        let sent = Instant::now();
        let bound = state.timing.request_timeout;
        let result = match timeout(bound, state.refresh(self.hold.core.backend.as_ref())).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                operation: "keep session alive",
                after: bound,
            }),
        };
        match result {
            Ok(()) => {
                let deadline = sent + lifetime;
                state.beat.send_modify(|b| {
                    if deadline > b.deadline {
                        b.deadline = deadline;
                    }
                    b.latency = sent.elapsed();
                    b.error = None;
                });
                Ok(deadline)
            }
            Err(Error::Lost(m)) => {
                state.mark_lost(LossReason::LeaseLost(m.clone()));
                Err(Error::Lost(m))
            }
            Err(e) => Err(e),
        }
    }
}

/// A claim in a session whose end the store has not confirmed.
#[derive(Debug, Clone)]
pub(crate) enum Unsettled {
    /// A release (a leader stepping down) or a withdrawal (a waiter leaving
    /// the line) whose answer was lost.
    Release(Claim),
    /// A create ([`QueueStore::join`]) whose answer was lost: the claim may
    /// exist without the engine knowing it.
    Create {
        /// The election it was made for.
        election: String,
    },
}

impl Unsettled {
    fn describe(&self) -> String {
        match self {
            Unsettled::Release(claim) => format!("the release of {}", claim.key),
            Unsettled::Create { election } => {
                format!("the removal of a claim in {election:?} whose create was not answered")
            }
        }
    }
}

impl LeaseUse {
    /// Resolve `what` in the background: a session stays alive, and this
    /// election's place in it stays taken (so no new claim of the election
    /// is made in it), while the release is retried with backoff until the
    /// store confirms it. When that cannot succeed within a ttl (or the
    /// error is one retrying cannot fix), the session is given up: it is
    /// marked lost (every term on it ends, its keep-alives stop) so that the
    /// store ends its lease, and the claim with it, within a ttl. A session
    /// already lost takes the claim with it: nothing to do.
    ///
    /// Without this, a claim left in a session that other electors keep
    /// alive would stay in the line for as long as they run: nobody else
    /// could lead its election. A record lease is not kept any more once
    /// its term ends, so the record expires on its own after its ttl.
    pub(crate) fn settle(self, what: Unsettled, error: Error) {
        if self.session_id().is_none() {
            tracing::warn!(%error, "{} was not confirmed; the record expires after its ttl", what.describe());
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            // No runtime to retry on: give up the session now.
            self.give_up(&what, &error);
            return;
        };
        let span = tracing::info_span!("settle", session = %format_args!("{:#x}", self.session_id().unwrap_or_default()));
        handle.spawn(self.settle_task(what, error).instrument(span));
    }

    async fn settle_task(self, what: Unsettled, mut error: Error) {
        let state = self.state().clone();
        let backend = self.hold.core.backend.clone();
        let session = self.session_id().unwrap_or_default();
        let timing = state.timing;
        let give_up_at = Instant::now() + timing.ttl;
        let mut backoff = Backoff::new(timing.retry_interval);
        tracing::warn!(error = %error, "{} was not confirmed; retrying in the background while the session lives", what.describe());
        loop {
            if !error.is_transient() {
                break;
            }
            tokio::select! {
                biased;
                _ = state.lost.cancelled() => {
                    tracing::debug!("the session ended; the claim went with it");
                    return;
                }
                _ = sleep_until(give_up_at) => break,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
            let bound = timing.request_timeout;
            let call = async {
                let queue = queue_of(backend.as_ref())?;
                match &what {
                    Unsettled::Release(claim) => queue.release(claim).await,
                    Unsettled::Create { election } => queue.withdraw_in(election, session).await,
                }
            };
            let result = tokio::select! {
                biased;
                _ = state.lost.cancelled() => return,
                r = timeout(bound, call) => r,
            };
            match result {
                Ok(Ok(())) => {
                    tracing::info!("{} is confirmed", what.describe());
                    return;
                }
                Ok(Err(e)) => error = e,
                Err(_) => {
                    error = Error::Timeout {
                        operation: "release",
                        after: bound,
                    }
                }
            }
            tracing::debug!(error = %error, "{} failed again", what.describe());
        }
        self.give_up(&what, &error);
    }

    /// End the session here: every term on it ends, its keeper stops, and
    /// the store ends it within a ttl (or at once, when it is closed after
    /// its last user goes).
    fn give_up(&self, what: &Unsettled, error: &Error) {
        self.state().mark_lost(LossReason::LeaseLost(format!(
            "{} could not be confirmed ({error}); the session is given up so that the store ends it, and the claim with it, within a ttl",
            what.describe()
        )));
    }
}

/// A session for a new claim of `options.election` on a queue store: a
/// shared one of the backend's scope with these timings that has no claim
/// in the election yet (or a new one), or one of its own with
/// [`ElectionOptions::own_session`].
pub(crate) async fn join_session(
    backend: &Arc<dyn Backend>,
    options: &ElectionOptions,
) -> Result<LeaseUse> {
    let queue = queue_of(backend.as_ref())?;
    if options.own_session {
        return open_session(backend, options, false).await;
    }
    let registry = registry(backend.name(), queue.scope());
    let timing = Timing::of(backend.as_ref(), options);
    let _one = registry.opening.lock().await;
    {
        let mut shared = lock(&registry.shared);
        shared.retain(|w| w.upgrade().is_some_and(|c| !c.state.lost.is_cancelled()));
        for core in shared.iter().filter_map(Weak::upgrade) {
            if core.state.timing != timing {
                continue;
            }
            if lock(&core.state.elections).insert(options.election.clone()) {
                return Ok(LeaseUse {
                    hold: Arc::new(Hold {
                        core,
                        election: options.election.clone(),
                    }),
                });
            }
        }
    }
    let session = open_session(backend, options, true).await?;
    lock(&registry.shared).push(Arc::downgrade(&session.hold.core));
    Ok(session)
}

async fn open_session(
    backend: &Arc<dyn Backend>,
    options: &ElectionOptions,
    shared: bool,
) -> Result<LeaseUse> {
    let queue = queue_of(backend.as_ref())?;
    let sent = Instant::now();
    let bound = options.request_timeout;
    let lease = Timing::of(backend.as_ref(), options).lease;
    let id = match timeout(bound, queue.open_session(lease)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(Error::Timeout {
                operation: "open session",
                after: bound,
            });
        }
    };
    let idle_without_leader = queue.self_kept_sessions();
    let span = tracing::info_span!("session", backend = backend.name(), session = %format_args!("{id:#x}"), ttl = ?options.ttl);
    tracing::debug!(parent: &span, shared, "session opened");
    Ok(start(
        backend,
        options,
        LeaseKind::Session(id),
        sent,
        idle_without_leader,
        span,
    ))
}

/// The lease of a term won on a record store: the record itself, renewed
/// from `anchor` (when the write that won it was sent).
pub(crate) fn record_lease(
    backend: &Arc<dyn Backend>,
    options: &ElectionOptions,
    claim: Claim,
    anchor: Instant,
) -> LeaseUse {
    let span = tracing::info_span!("record", key = %claim.key);
    start(
        backend,
        options,
        LeaseKind::Record(Arc::new(Mutex::new(claim))),
        anchor,
        false,
        span,
    )
}

/// Spawn the keeper of a new lease, refreshed last at `anchor`.
fn start(
    backend: &Arc<dyn Backend>,
    options: &ElectionOptions,
    kind: LeaseKind,
    anchor: Instant,
    idle_without_leader: bool,
    span: tracing::Span,
) -> LeaseUse {
    let timing = Timing::of(backend.as_ref(), options);
    let state = Arc::new(LeaseState {
        kind,
        timing,
        beat: watch::channel(Beat {
            deadline: anchor + timing.lifetime,
            latency: anchor.elapsed(),
            error: None,
        })
        .0,
        lost: CancellationToken::new(),
        reason: Mutex::new(None),
        elections: Mutex::new(HashSet::from([options.election.clone()])),
        leaders: watch::channel(0).0,
    });
    let stop = CancellationToken::new();
    tokio::spawn(
        keeper(
            state.clone(),
            backend.clone(),
            options.clone(),
            stop.clone(),
            anchor,
            idle_without_leader,
        )
        .instrument(span),
    );
    let core = Arc::new(LeaseCore {
        state,
        backend: backend.clone(),
        stop,
    });
    LeaseUse {
        hold: Arc::new(Hold {
            core,
            election: options.election.clone(),
        }),
    }
}

/// Keep the lease: a refresh every renew interval; after an error try
/// again at least every retry interval, with a last attempt shortly before
/// the local deadline (see [`RenewSchedule`]); lost when the store says so
/// or at the local deadline. A self-kept session is only proven while a
/// leader is on it.
async fn keeper(
    state: Arc<LeaseState>,
    backend: Arc<dyn Backend>,
    options: ElectionOptions,
    stop: CancellationToken,
    anchor: Instant,
    idle_without_leader: bool,
) {
    let lifetime = ElectionOptions::kept_lifetime(state.timing.lifetime);
    let mut deadline = anchor + lifetime;
    let mut next = anchor + options.renew_interval;
    let mut schedule = RenewSchedule::new(&options);
    let mut last_error: Option<Error> = None;
    let mut leaders = state.leaders.subscribe();
    loop {
        if idle_without_leader && *leaders.borrow_and_update() == 0 {
            // Nothing to prove: the client's pings keep the session.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = state.lost.cancelled() => return,
                r = leaders.changed() => if r.is_err() { return },
            }
            // A leader joined; it proved the session just before.
            let b = state.beat.borrow().clone();
            deadline = b.deadline;
            next = deadline - lifetime + options.renew_interval;
            schedule.reset();
            continue;
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = state.lost.cancelled() => return,
            _ = sleep_until(deadline) => break,
            _ = sleep_until(next) => {}
        }
        let sent = Instant::now();
        let bound = schedule.call_bound(sent, deadline);
        let call = timeout(bound, state.refresh(backend.as_ref()));
        let result = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = state.lost.cancelled() => return,
            _ = sleep_until(deadline) => break,
            r = call => r,
        };
        let failed = match result {
            Ok(Ok(())) => {
                deadline = sent + lifetime;
                next = sent + options.renew_interval;
                schedule.reset();
                last_error = None;
                state.beat.send_modify(|b| {
                    b.deadline = deadline.max(b.deadline);
                    deadline = b.deadline;
                    b.latency = sent.elapsed();
                    b.error = None;
                });
                tracing::trace!("lease refreshed");
                continue;
            }
            Ok(Err(Error::Lost(message))) => {
                state.mark_lost(LossReason::LeaseLost(message));
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => Error::Timeout {
                operation: "renew",
                after: bound,
            },
        };
        let now = Instant::now();
        next = schedule.retry_at(sent, now, deadline);
        match state.kind {
            LeaseKind::Session(_) => {
                tracing::warn!(error = %failed, retry_in = ?next - now, left = ?deadline - now, "session keep-alive failed; retrying")
            }
            // The term's task reports it, in the term's span.
            LeaseKind::Record(_) => {
                tracing::debug!(error = %failed, retry_in = ?next - now, left = ?deadline - now, "record renewal failed; retrying")
            }
        }
        state.beat.send_modify(|b| b.error = Some(failed.clone()));
        last_error = Some(failed);
    }
    // The local deadline passed without a successful refresh.
    state.mark_lost(LossReason::Unreachable { last_error });
}
