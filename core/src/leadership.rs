//! The [`Leadership`] guard and the term task that keeps its state.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::{Backend, Family};
use crate::error::{Error, Result};
use crate::health::{LeaderHealth, Monitor};
use crate::lease::{LeaderMark, LeaseUse, Unsettled};
use crate::options::ElectionOptions;
use crate::retry::Backoff;
use crate::types::{Claim, FencingToken, LeaderInfo};

/// Why a term ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LossReason {
    /// This candidate gave the lease up: [`Leadership::unlock`], the last
    /// guard was dropped, or [`Elector::run`](crate::Elector::run) was
    /// cancelled.
    Released,
    /// The store says the lease is gone: it expired on the server, the
    /// claim was deleted, or another candidate holds the election. Someone
    /// else may lead already.
    LeaseLost(String),
    /// The lease could not be renewed before the local deadline
    /// (`last renewal sent + ttl - safety_margin`): the store was unreachable
    /// or too slow. Nobody else can have taken over yet, but someone may soon.
    Unreachable {
        /// The last error seen while renewing, if any (none when the calls
        /// simply never answered).
        last_error: Option<Error>,
    },
}

impl LossReason {
    /// The reason's label in metrics: `released`, `lease_lost` or
    /// `unreachable`.
    pub fn label(&self) -> &'static str {
        match self {
            LossReason::Released => "released",
            LossReason::LeaseLost(_) => "lease_lost",
            LossReason::Unreachable { .. } => "unreachable",
        }
    }
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LossReason::Released => f.write_str("released"),
            LossReason::LeaseLost(m) => write!(f, "lease lost: {m}"),
            LossReason::Unreachable {
                last_error: Some(e),
            } => {
                write!(f, "store unreachable until the local deadline: {e}")
            }
            LossReason::Unreachable { last_error: None } => {
                f.write_str("store unreachable until the local deadline (no answer)")
            }
        }
    }
}

/// State shared by the guard and its term task.
#[derive(Debug)]
struct TermState {
    info: LeaderInfo,
    /// The term's span (info level: election, candidate, token); the
    /// term task, the lease's keeper and the end of the term log inside it.
    span: tracing::Span,
    monitor: Arc<Monitor>,
    /// The last renewal error, cleared by a successful renewal.
    last_error: Mutex<Option<Error>>,
    /// The term's claim; on a record store shared with the lease that
    /// renews it.
    claim: Arc<Mutex<Claim>>,
    /// The value published now: `info.value` until a
    /// [`Leadership::proclaim`] changes it.
    value: Mutex<Vec<u8>>,
    deadline: Mutex<Instant>,
    reason: Mutex<Option<LossReason>>,
    /// Fired when leadership ends (the "done" signal).
    lost: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TermState {
    /// The state of a term that starts now with `claim`, reported to the
    /// monitor with its first `deadline`.
    fn begin(
        options: &ElectionOptions,
        claim: Arc<Mutex<Claim>>,
        deadline: Instant,
        monitor: Arc<Monitor>,
        waited: std::time::Duration,
    ) -> Arc<Self> {
        let token = lock(&claim).token;
        let info = LeaderInfo {
            id: options.candidate_id.clone(),
            value: options.value.clone(),
            token,
        };
        let span = tracing::info_span!(
            "term",
            election = %options.election,
            candidate = %options.candidate_id,
            token = %token,
        );
        monitor.term_started(token, deadline, waited);
        Arc::new(TermState {
            info,
            span,
            monitor,
            last_error: Mutex::new(None),
            claim,
            value: Mutex::new(options.value.clone()),
            deadline: Mutex::new(deadline),
            reason: Mutex::new(None),
            lost: CancellationToken::new(),
        })
    }

    fn claim(&self) -> Claim {
        lock(&self.claim).clone()
    }

    /// Record the reason (the first one wins) and fire the done signal, then
    /// log it. The signal goes first: whoever waits for it (a supervisor
    /// that kills its command when the term ends) must not wait for a log
    /// line to be written, and a subscriber's write can block (a log file
    /// on a busy disk, a stalled log pipe).
    fn fire_lost(&self, reason: LossReason) {
        let first = {
            let mut r = lock(&self.reason);
            if r.is_none() {
                self.monitor.term_ended(self.info.token, reason.label());
                *r = Some(reason.clone());
                true
            } else {
                false
            }
        };
        self.lost.cancel();
        if first {
            let _e = self.span.enter();
            match &reason {
                // "leadership released" is logged once the store
                // confirmed the release (unlock, or the drop's task).
                LossReason::Released => tracing::info!("leadership ends: stepping down"),
                other => tracing::warn!(reason = %other, "leadership lost"),
            }
        }
    }

    fn reason(&self) -> LossReason {
        lock(&self.reason).clone().unwrap_or(LossReason::Released)
    }
}

/// The part that releases the lease when the last [`Leadership`] clone goes.
#[derive(Debug)]
struct TermGuard {
    state: Arc<TermState>,
    backend: Arc<dyn Backend>,
    options: ElectionOptions,
    /// Stops the term task.
    stop: CancellationToken,
    /// Set once a release was started, so it happens once.
    released: std::sync::atomic::AtomicBool,
    /// The lease keeping the claim alive (a session, shared or own, or the
    /// record), held until the claim is released: the last user's going
    /// ends it.
    lease: Mutex<Option<(LeaseUse, LeaderMark)>>,
}

impl TermGuard {
    fn take_release(&self) -> bool {
        !self
            .released
            .swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    /// The lease, taken to be let go once the release is confirmed. A
    /// record's renewals stop now: one racing the release could make the
    /// release's conditional write miss.
    fn take_lease(&self) -> Option<(LeaseUse, LeaderMark)> {
        let taken = lock(&self.lease).take();
        if let Some((lease, _)) = &taken {
            lease.stop_renewing_record();
        }
        taken
    }
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        // Fire the done signal before the lease can go to anyone else.
        self.state.fire_lost(LossReason::Released);
        self.stop.cancel();
        let lease = self.take_lease();
        if !self.take_release() {
            return;
        }
        let claim = self.state.claim();
        let backend = self.backend.clone();
        let bound = self.options.request_timeout;
        let span = self.state.span.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let in_flight = InFlight {
                    lease,
                    claim: claim.clone(),
                    backend: backend.name(),
                    span: span.clone(),
                };
                handle.spawn(async move {
                    let result = match timeout(bound, release(backend.as_ref(), &claim)).await {
                        Ok(r) => r,
                        Err(_) => Err(Error::Timeout { operation: "release", after: bound }),
                    };
                    in_flight.finish(&result, "release on drop");
                }.instrument(span));
            }
            Err(_) => span.in_scope(|| {
                tracing::warn!(
                    key = %claim.key,
                    "leadership dropped outside a tokio runtime: not released; the next candidate waits until the store ends the lease (its ttl; on a shared session, the session is given up)"
                );
                settle_failed_release(
                    lease,
                    claim,
                    Error::Cancelled,
                    "release on drop outside a runtime",
                );
            }),
        }
    }
}

/// Proof of leadership for one term, returned by
/// [`Elector::lock`](crate::Elector::lock).
///
/// While you hold it, a heartbeat renews the lease in the background (on
/// backends with sessions: the session's keep-alives, shared with the other
/// terms and waiters on it; losing the session ends every term on it, each
/// firing its own done signal). Watch
/// [`lost`](Self::lost) (or hand [`cancellation_token`](Self::cancellation_token)
/// to your tasks): it fires when leadership ends, before anyone else can
/// take over, whether the store said so or could not be reached in time.
/// Pass [`fencing_token`](Self::fencing_token) to the resource you protect.
///
/// Clones share the term. [`unlock`](Self::unlock) on any clone releases the
/// lease at once (fast handover) and returns when the store has answered.
///
/// # Dropping without `unlock`
///
/// When the last clone is dropped the done signal fires at once and the
/// release is *started* in the background: a task spawned on the current
/// tokio runtime, bounded by the request timeout. Nothing waits for it. If
/// the process exits (or the runtime shuts down) right after the drop, the
/// release may never reach the store, and the next candidate waits until
/// the store expires the lease (the ttl; ZooKeeper removes it when the
/// session is closed or times out). Dropped outside a tokio runtime, the lease
/// is not released at all. To know the lease is gone before you exit, call
/// `unlock().await`; that is what [`Elector::run`](crate::Elector::run)
/// does.
#[derive(Debug, Clone)]
pub struct Leadership {
    guard: Arc<TermGuard>,
}

impl Leadership {
    /// Start a term on a claim kept alive by `lease` (a session, or the
    /// record itself): one task mirrors the lease's refreshes into the
    /// term's deadline and health and ends the term when the lease is lost;
    /// on a queue store it also watches the claim, so that a claim deleted
    /// on the store ends the term at once. Its deadline is the lease's.
    pub(crate) fn start(
        backend: Arc<dyn Backend>,
        options: ElectionOptions,
        claim: Claim,
        lease: LeaseUse,
        monitor: Arc<Monitor>,
        waited: std::time::Duration,
    ) -> Self {
        let mark = lease.lead();
        let cell = lease
            .record_claim()
            .unwrap_or_else(|| Arc::new(Mutex::new(claim)));
        let state = TermState::begin(&options, cell, lease.deadline(), monitor, waited);
        let span = state.span.clone();
        let stop = CancellationToken::new();
        let task_span = tracing::info_span!(parent: &span, "term_task");
        tokio::spawn(
            term_task(
                state.clone(),
                backend.clone(),
                options.clone(),
                stop.clone(),
                lease.clone(),
            )
            .instrument(task_span),
        );
        Leadership {
            guard: Arc::new(TermGuard {
                state,
                backend,
                options,
                stop,
                released: false.into(),
                lease: Mutex::new(Some((lease, mark))),
            }),
        }
    }

    /// The fencing token of this term.
    pub fn fencing_token(&self) -> FencingToken {
        self.guard.state.info.token
    }

    /// The term's claim on the store as it is now (its key, node or object,
    /// token and version): what a backend's guard for writes in the store's
    /// own transactions is made from (`leasehold_etcd::leader_guard`,
    /// `leasehold_zookeeper::leader_check`).
    pub fn claim(&self) -> Claim {
        self.guard.state.claim()
    }

    /// This leader as the others see it: id, value (the last one
    /// [proclaimed](Self::proclaim)) and token.
    pub fn leader(&self) -> LeaderInfo {
        LeaderInfo {
            value: self.value(),
            ..self.guard.state.info.clone()
        }
    }

    /// The store's id of the session this term's claim lives in (etcd
    /// lease id, ZooKeeper session id), when the claim is kept alive by a
    /// session (possibly shared with other terms: see
    /// [`ElectionOptions::own_session`](crate::ElectionOptions::own_session));
    /// `None` on backends without sessions. For operators and tests.
    pub fn session_id(&self) -> Option<i64> {
        lock(&self.guard.lease)
            .as_ref()
            .and_then(|(lease, _)| lease.session_id())
    }

    /// The value this candidate publishes: the elector's value, or the last
    /// one [proclaimed](Self::proclaim).
    pub fn value(&self) -> Vec<u8> {
        lock(&self.guard.state.value).clone()
    }

    /// Publish a new leader value without giving up the term (etcd's
    /// `Election.Proclaim`): one conditional write on the store that lands
    /// only while this term's claim is still there, so the fencing token
    /// does not change. Observers ([`Elector::observe`](crate::Elector::observe),
    /// [`Elector::leader`](crate::Elector::leader)) then report the new value.
    ///
    /// Supported on etcd, ZooKeeper and the memory store. On Cloud Storage
    /// every write makes a new object generation, which is the fencing
    /// token, so a value change there would be a new term: it answers
    /// [`Error::NotSupported`] (release and campaign with the new value
    /// instead).
    ///
    /// # Errors
    /// [`Error::Lost`] when the term has already ended (nothing is written),
    /// or when the store says the claim is gone (the done signal then
    /// fires, as for a failed renewal). [`Error::NotSupported`] as above.
    /// Store failures and [`Error::Timeout`] (bounded by the request
    /// timeout): the value may or may not have landed; the term goes on.
    ///
    /// # Cancel safety
    /// Cancel safe in the sense of every store call: a dropped call may or
    /// may not have landed, and [`value`](Self::value) keeps the old value.
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<()> {
        let state = &self.guard.state;
        if self.is_lost() {
            return Err(Error::Lost(format!(
                "the term with token {} has ended ({}); nothing was proclaimed",
                state.info.token,
                state.reason()
            )));
        }
        let Some(proclaimer) = self.guard.backend.proclaimer() else {
            return Err(Error::NotSupported {
                operation: "proclaim",
                backend: self.guard.backend.name(),
            });
        };
        let value = value.into();
        let claim = state.claim();
        let bound = self.guard.options.request_timeout;
        let result = match timeout(bound, proclaimer.proclaim(&claim, &value)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                operation: "proclaim",
                after: bound,
            }),
        };
        match result {
            Ok(updated) => {
                {
                    // A renewal that read the claim before this write may
                    // store it after: keep the newer version.
                    let mut current = lock(&state.claim);
                    if updated.version >= current.version {
                        *current = updated;
                    }
                }
                *lock(&state.value) = value;
                state.monitor.store_ok();
                Ok(())
            }
            Err(Error::Lost(message)) => {
                state.fire_lost(LossReason::LeaseLost(message.clone()));
                self.guard.stop.cancel();
                Err(Error::Lost(message))
            }
            Err(e) => {
                state.monitor.store_error("proclaim", &e);
                Err(e)
            }
        }
    }

    /// The election name.
    pub fn election(&self) -> &str {
        &self.guard.options.election
    }

    /// The current local deadline: leadership is reported lost at this
    /// instant at the latest unless a renewal succeeds before it.
    pub fn deadline(&self) -> Instant {
        *lock(&self.guard.state.deadline)
    }

    /// A snapshot for a readiness probe: leading or not, time left to the
    /// local deadline, the last renewal error. Cheap (two mutex locks), never
    /// waits for the store.
    pub fn health(&self) -> LeaderHealth {
        let state = &self.guard.state;
        LeaderHealth {
            leading: !self.is_lost(),
            token: state.info.token,
            until_deadline: self.deadline().saturating_duration_since(Instant::now()),
            last_error: lock(&state.last_error).clone(),
        }
    }

    /// `true` once leadership has ended.
    pub fn is_lost(&self) -> bool {
        self.guard.state.lost.is_cancelled()
    }

    /// Why leadership ended, once it has.
    pub fn loss_reason(&self) -> Option<LossReason> {
        lock(&self.guard.state.reason).clone()
    }

    /// Resolves when leadership ends, with the reason. Can be awaited from
    /// many places at once; it does not borrow the guard.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future has no effect.
    pub fn lost(&self) -> impl Future<Output = LossReason> + Send + 'static {
        let state = self.guard.state.clone();
        async move {
            state.lost.cancelled().await;
            state.reason()
        }
    }

    /// A token cancelled when leadership ends: the Rust form of Go's done
    /// channel, to hand to the tasks that must stop when this candidate no
    /// longer leads. Cancelling it yourself affects nobody else.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.guard.state.lost.child_token()
    }

    /// Signal the end of the term (fire the done signal with
    /// [`LossReason::Released`]) while keeping the lease renewed, so the
    /// work can wind down before anyone else can take over. Used by
    /// [`Elector::run`](crate::Elector::run) on shutdown.
    pub(crate) fn signal_step_down(&self) {
        self.guard.state.fire_lost(LossReason::Released);
    }

    /// Release the lease now so that the next candidate can lead at once.
    /// The done signal fires first. Releasing after leadership was already
    /// lost is harmless.
    ///
    /// # Errors
    /// The store's error if the release could not be confirmed. On a
    /// session (etcd, ZooKeeper) the release is then retried in the
    /// background for as long as the session lives; when it cannot land
    /// within a ttl the session is given up (every term on it ends) so that
    /// the store ends it within a ttl. Without a session, the lease expires
    /// on its own after the ttl.
    ///
    /// # Cancel safety
    /// The done signal fires and the heartbeat stops at the first poll;
    /// dropping the future before it completes leaves the release to the
    /// background, as for an error.
    pub async fn unlock(self) -> Result<()> {
        let g = &self.guard;
        g.state.fire_lost(LossReason::Released);
        g.stop.cancel();
        // Let go of a session only once the claim is released.
        let lease = g.take_lease();
        if !g.take_release() {
            return Ok(());
        }
        let claim = g.state.claim();
        // Dropped before the store answers, the release is settled in the
        // background.
        let in_flight = InFlight {
            lease,
            claim: claim.clone(),
            backend: g.backend.name(),
            span: g.state.span.clone(),
        };
        let bound = g.options.request_timeout;
        let span = tracing::info_span!(parent: &g.state.span, "release");
        // A store that pushes back ("etcdserver: too many requests", a
        // ZooKeeper throttle, a 429) or blips answers with a transient
        // error: back off and try again within the request timeout rather
        // than fail the unlock (a release is idempotent).
        let mut last: Option<Error> = None;
        let retried = async {
            let mut backoff = crate::retry::Backoff::new(g.options.retry_interval);
            loop {
                match release(g.backend.as_ref(), &claim).await {
                    Err(e) if e.is_transient() => {
                        tracing::debug!(error = %e, "release pushed back; backing off");
                        last = Some(e);
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    r => return r,
                }
            }
        };
        let result = match timeout(bound, retried).instrument(span).await {
            Ok(r) => r,
            Err(_) => Err(last.unwrap_or(Error::Timeout {
                operation: "release",
                after: bound,
            })),
        };
        match &result {
            Ok(()) => g.state.monitor.store_ok(),
            Err(e) => g.state.monitor.store_error("release", e),
        }
        in_flight.finish(&result, "release");
        result
    }
}

/// Release `claim` in its store's family.
pub(crate) async fn release(backend: &dyn Backend, claim: &Claim) -> Result<()> {
    match backend.family() {
        Family::Record(r) => r.release(claim).await,
        Family::Queue(q) => q.release(claim).await,
    }
}

/// A release on its way: the lease keeping the claim is let go once the
/// store confirmed it; otherwise, and when the release's future is dropped
/// before the answer, the claim is settled in the background.
struct InFlight {
    lease: Option<(LeaseUse, LeaderMark)>,
    claim: Claim,
    backend: &'static str,
    span: tracing::Span,
}

impl InFlight {
    fn finish(mut self, result: &Result<()>, what: &str) {
        let lease = self.lease.take();
        let _e = self.span.enter();
        match result {
            Ok(()) => tracing::info!(key = %self.claim.key, "leadership released"),
            Err(e) => settle_failed_release(lease, self.claim.clone(), e.clone(), what),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            let _e = self.span.enter();
            let error = Error::unavailable(
                self.backend,
                "the release was dropped before the store answered",
            );
            settle_failed_release(Some(lease), self.claim.clone(), error, "release");
        }
    }
}

/// A release that failed (its outcome unknown): in a session, resolved in
/// the background while the session lives (see [`LeaseUse::settle`]); a
/// record's lease ends at the store after its ttl, since nobody renews it
/// any more.
fn settle_failed_release(
    lease: Option<(LeaseUse, LeaderMark)>,
    claim: Claim,
    error: Error,
    what: &str,
) {
    match lease {
        Some((lease, mark)) => {
            drop(mark);
            lease.settle(Unsettled::Release(claim), error);
        }
        None => {
            tracing::warn!(key = %claim.key, %error, "{what} failed; unless it landed, the next candidate waits until the store ends the lease (its ttl)")
        }
    }
}

/// A term's task: mirror the lease's refreshes into the term's deadline and
/// health, end the term when the lease is lost, and, on a queue store, watch
/// the own claim so that a claim deleted on the store (by hand, or with a
/// lease an admin revoked) ends the term at once rather than at a read.
///
/// No blind gap: a watch that fails (a broken stream, an exhausted watch) is
/// watched again at once, and each `watch_claim` call starts from a fresh
/// look at the claim, so a deletion in between is seen. Only repeated
/// failures wait ([`Backoff`], at most a retry interval), and the back-off
/// starts over after a success: a watch that held for a retry interval, or a
/// refresh of the lease that the store answered (which also ends a pending
/// wait: the store answers again, so watch now).
async fn term_task(
    state: Arc<TermState>,
    backend: Arc<dyn Backend>,
    options: ElectionOptions,
    stop: CancellationToken,
    lease: LeaseUse,
) {
    let lost = lease.lost_token();
    let mut beats = lease.beats();
    let mut backoff = Backoff::new(options.retry_interval);
    // Watch failures in a row (none since the last success).
    let mut failures: u32 = 0;
    // A record store has no claim to watch: its renewals tell.
    let watchable = matches!(backend.family(), Family::Queue(_));
    loop {
        let claim = state.claim();
        let armed = Instant::now();
        let watch = async {
            match backend.family() {
                Family::Queue(q) => q.watch_claim(&claim).await,
                Family::Record(_) => std::future::pending().await,
            }
        };
        tokio::pin!(watch);
        let mut retry_at: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = lost.cancelled() => {
                    state.fire_lost(lease.reason());
                    stop.cancel();
                    return;
                }
                r = beats.changed() => {
                    if r.is_err() {
                        // The session is gone without a reason: only when
                        // the term is over anyway.
                        return;
                    }
                    let beat = beats.borrow_and_update().clone();
                    *lock(&state.deadline) = beat.deadline;
                    match beat.error {
                        None => {
                            *lock(&state.last_error) = None;
                            state.monitor.renewed(state.info.token, beat.deadline, beat.latency);
                            failures = 0;
                            backoff.reset();
                            if retry_at.is_some() {
                                tracing::debug!("the store answers again; watching the own claim now");
                                break;
                            }
                        }
                        Some(e) => {
                            let left = beat.deadline.saturating_duration_since(Instant::now());
                            tracing::warn!(error = %e, ?left, "renewal failed; retrying");
                            state.monitor.renew_failed(state.info.token, beat.deadline, &e);
                            *lock(&state.last_error) = Some(e);
                        }
                    }
                }
                r = &mut watch, if watchable && retry_at.is_none() => match r {
                    Ok(()) => {
                        state.fire_lost(LossReason::LeaseLost(format!(
                            "the claim {} is gone from the store (deleted, or its session ended)",
                            claim.key
                        )));
                        stop.cancel();
                        return;
                    }
                    Err(Error::Lost(message)) => {
                        // The store says this claim can no longer lead (e.g.
                        // a participant that orders the line differently
                        // joined): end the term now.
                        state.fire_lost(LossReason::LeaseLost(message));
                        stop.cancel();
                        return;
                    }
                    Err(e) => {
                        if armed.elapsed() >= options.retry_interval {
                            // It held that long: it was watching, this is a
                            // first failure.
                            failures = 0;
                            backoff.reset();
                        }
                        failures += 1;
                        if failures == 1 {
                            tracing::debug!(error = %e, "watching the own claim failed; watching again at once");
                            break;
                        }
                        let delay = backoff.next_delay();
                        tracing::debug!(error = %e, failures, retry_in = ?delay, "watching the own claim failed again; watching again after a back-off");
                        retry_at = Some(Instant::now() + delay);
                    }
                },
                _ = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => break,
            }
        }
    }
}
