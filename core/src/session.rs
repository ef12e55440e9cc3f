//! Sessions: one lease (etcd) or client session (ZooKeeper) that keeps many
//! claims alive, kept by the engine with one heartbeat.
//!
//! A backend that supports sessions ([`Capabilities::sessions`]) holds a
//! [`SessionRegistry`]. Every [`Elector`](crate::Elector) built on that
//! backend instance joins a session of the registry for its timings (the
//! same ttl, renew interval, retry interval, safety margin and request
//! timeout), unless [`ElectionOptions::own_session`] asks for one of its own.
//! So N electors on one backend cost one keep-alive per renew interval, as
//! with Go's `concurrency.Session`. One session holds at most one claim per
//! election (etcd's key is named after the lease); a second elector of the
//! same election on the same backend gets a session of its own.
//!
//! The engine keeps each session alive from one task: a keep-alive every
//! renew interval on the same schedule as a leader's heartbeat
//! ([`RenewSchedule`]), and the session's local deadline
//! `last successful keep-alive SENT + ttl - safety_margin`. The session is
//! **lost** when the store says it is gone (a revoked or expired lease, an
//! expired ZooKeeper session) or when the deadline passes without a
//! successful keep-alive. Losing it ends every term on it (each term's done
//! signal fires, with the session's reason) and makes every waiter on it
//! start over with a new session. The session is closed (the etcd lease
//! revoked) when its last user goes.
//!
//! A claim's end that the store did not confirm (a release, a withdrawal or
//! a create whose answer was lost) keeps its election's place in the
//! session and is retried in the background until it is confirmed; when it
//! cannot be within a ttl, the session is given up (marked lost, so the
//! store ends it). See [`SessionUse::settle`].
//!
//! On backends whose client keeps the session alive by itself
//! ([`Capabilities::self_kept_sessions`]: ZooKeeper's pings), the engine
//! sends keep-alives only while a leader is on the session, to prove its
//! deadline at the quorum; waiters cost nothing but the client's pings.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::leadership::LossReason;
use crate::options::ElectionOptions;
use crate::retry::{Backoff, RenewSchedule};
use crate::types::Claim;

/// The engine's sessions on one backend instance. A backend that supports
/// sessions owns one (a field, returned by
/// [`Backend::sessions`](crate::Backend::sessions)), so sharing follows the
/// backend instance: clones of a backend that share their connection share
/// it too.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    /// Shared sessions, by timings; dead entries are pruned on each join.
    shared: Mutex<Vec<Weak<SessionCore>>>,
    /// One join opens a session at a time, so that many electors starting
    /// together share one session rather than each opening its own.
    opening: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The timings a session is kept with; only electors with equal timings share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timing {
    ttl: Duration,
    renew_interval: Duration,
    retry_interval: Duration,
    safety_margin: Duration,
    request_timeout: Duration,
}

impl Timing {
    fn of(o: &ElectionOptions) -> Self {
        Timing {
            ttl: o.ttl,
            renew_interval: o.renew_interval,
            retry_interval: o.retry_interval,
            safety_margin: o.safety_margin,
            request_timeout: o.request_timeout,
        }
    }
}

/// The outcome of one keep-alive, as published to the session's users.
#[derive(Debug, Clone)]
pub(crate) struct Beat {
    /// The session's local deadline after it.
    pub(crate) deadline: Instant,
    /// How long the keep-alive took (zero before the first).
    pub(crate) latency: Duration,
    /// The error of a failed keep-alive (the deadline is then unchanged).
    pub(crate) error: Option<Error>,
}

/// The state the keeper task and the users share.
#[derive(Debug)]
pub(crate) struct SessionState {
    id: i64,
    timing: Timing,
    beat: watch::Sender<Beat>,
    lost: CancellationToken,
    reason: Mutex<Option<LossReason>>,
    /// Elections with a claim in this session.
    elections: Mutex<HashSet<String>>,
    /// Leaders on this session (for self-kept sessions: keep-alives prove
    /// their deadline; none are sent without a leader).
    leaders: watch::Sender<usize>,
}

impl SessionState {
    /// Record the reason (the first one wins) and fire the lost signal.
    pub(crate) fn mark_lost(&self, reason: LossReason) {
        {
            let mut r = lock(&self.reason);
            if r.is_none() {
                tracing::warn!(session = %format_args!("{:#x}", self.id), %reason, "session lost; every term on it ends and its waiters start over");
                *r = Some(reason);
            }
        }
        self.lost.cancel();
    }
}

/// One session and its keeper; closed on the store when dropped (the last
/// user went).
#[derive(Debug)]
pub(crate) struct SessionCore {
    state: Arc<SessionState>,
    backend: Arc<dyn Backend>,
    stop: CancellationToken,
}

impl Drop for SessionCore {
    fn drop(&mut self) {
        self.stop.cancel();
        let id = self.state.id;
        let backend = self.backend.clone();
        let bound = self.state.timing.request_timeout;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                match timeout(bound, backend.close_session(id)).await {
                    Ok(Ok(())) => tracing::debug!(session = %format_args!("{id:#x}"), "session closed"),
                    Ok(Err(e)) => tracing::debug!(session = %format_args!("{id:#x}"), error = %e, "closing the session failed; the store ends it after its ttl"),
                    Err(_) => tracing::debug!(session = %format_args!("{id:#x}"), "closing the session timed out; the store ends it after its ttl"),
                }
            });
        }
    }
}

/// One user's (one campaign's or term's) hold on a session, for one
/// election. Clones share the hold; the election's place in the session is
/// freed when the last clone goes, the session closed when its last user
/// goes.
#[derive(Debug, Clone)]
pub(crate) struct SessionUse {
    hold: Arc<Hold>,
}

#[derive(Debug)]
struct Hold {
    core: Arc<SessionCore>,
    election: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        lock(&self.core.state.elections).remove(&self.election);
    }
}

/// A leader on a session, counted while it lives.
#[derive(Debug)]
pub(crate) struct LeaderMark {
    state: Arc<SessionState>,
}

impl Drop for LeaderMark {
    fn drop(&mut self) {
        self.state.leaders.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl SessionUse {
    fn state(&self) -> &Arc<SessionState> {
        &self.hold.core.state
    }

    /// The store's id of the session (etcd lease id, ZooKeeper session id).
    pub(crate) fn id(&self) -> i64 {
        self.state().id
    }

    /// The current local deadline.
    pub(crate) fn deadline(&self) -> Instant {
        self.state().beat.borrow().deadline
    }

    /// Keep-alive outcomes, for the terms and waiters on the session.
    pub(crate) fn beats(&self) -> watch::Receiver<Beat> {
        self.state().beat.subscribe()
    }

    /// Fires when the session is lost.
    pub(crate) fn lost_token(&self) -> CancellationToken {
        self.state().lost.clone()
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.state().lost.is_cancelled()
    }

    /// Why the session was lost (once it was).
    pub(crate) fn reason(&self) -> LossReason {
        lock(&self.state().reason)
            .clone()
            .unwrap_or_else(|| LossReason::LeaseLost("the session ended".into()))
    }

    /// Count a leader on the session until the mark is dropped.
    pub(crate) fn lead(&self) -> LeaderMark {
        self.state().leaders.send_modify(|n| *n += 1);
        LeaderMark {
            state: self.state().clone(),
        }
    }

    /// One keep-alive now, outside the keeper's schedule: proves a
    /// self-kept session's deadline before a term starts on it. Returns the
    /// new deadline.
    pub(crate) async fn prove(&self) -> Result<Instant> {
        let state = self.state();
        let lifetime = state.timing.ttl.saturating_sub(state.timing.safety_margin);
        let sent = Instant::now();
        let bound = state.timing.request_timeout;
        let result = match timeout(bound, self.hold.core.backend.keep_alive(state.id)).await {
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
    /// A create ([`Backend::try_acquire_in`]) whose answer was lost: the
    /// claim may exist without the engine knowing it.
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

impl SessionUse {
    /// Resolve `what` in the background: the session stays alive, and this
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
    /// could lead its election.
    pub(crate) fn settle(self, what: Unsettled, error: Error) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            // No runtime to retry on: give up the session now.
            self.give_up(&what, &error);
            return;
        };
        let span = tracing::info_span!("settle", session = %format_args!("{:#x}", self.id()));
        handle.spawn(self.settle_task(what, error).instrument(span));
    }

    async fn settle_task(self, what: Unsettled, mut error: Error) {
        let state = self.state().clone();
        let backend = self.hold.core.backend.clone();
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
                match &what {
                    Unsettled::Release(claim) => backend.release(claim).await,
                    Unsettled::Create { election } => backend.withdraw_in(election, state.id).await,
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

impl SessionRegistry {
    /// A new, empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many shared sessions are open now (for tests and metrics).
    pub fn open_sessions(&self) -> usize {
        lock(&self.shared)
            .iter()
            .filter(|w| w.upgrade().is_some_and(|c| !c.state.lost.is_cancelled()))
            .count()
    }

    /// Join a shared session with `options`' timings that has no claim in
    /// `options.election` yet, or open one.
    pub(crate) async fn join(
        &self,
        backend: &Arc<dyn Backend>,
        options: &ElectionOptions,
    ) -> Result<SessionUse> {
        let timing = Timing::of(options);
        let _one = self.opening.lock().await;
        {
            let mut shared = lock(&self.shared);
            shared.retain(|w| w.upgrade().is_some_and(|c| !c.state.lost.is_cancelled()));
            for core in shared.iter().filter_map(Weak::upgrade) {
                if core.state.timing != timing {
                    continue;
                }
                if lock(&core.state.elections).insert(options.election.clone()) {
                    return Ok(SessionUse {
                        hold: Arc::new(Hold {
                            core,
                            election: options.election.clone(),
                        }),
                    });
                }
            }
        }
        let session = open(backend, options, true).await?;
        lock(&self.shared).push(Arc::downgrade(&session.hold.core));
        Ok(session)
    }
}

/// Open a session of its own for one elector (not in any registry).
pub(crate) async fn open_own(
    backend: &Arc<dyn Backend>,
    options: &ElectionOptions,
) -> Result<SessionUse> {
    open(backend, options, false).await
}

async fn open(
    backend: &Arc<dyn Backend>,
    options: &ElectionOptions,
    shared: bool,
) -> Result<SessionUse> {
    let timing = Timing::of(options);
    let sent = Instant::now();
    let bound = options.request_timeout;
    let id = match timeout(bound, backend.open_session(options.ttl)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(Error::Timeout {
                operation: "open session",
                after: bound,
            });
        }
    };
    let self_kept = backend.capabilities().self_kept_sessions;
    let lifetime = options.deadline_after_renewal();
    let state = Arc::new(SessionState {
        id,
        timing,
        beat: watch::channel(Beat {
            deadline: sent + lifetime,
            latency: sent.elapsed(),
            error: None,
        })
        .0,
        lost: CancellationToken::new(),
        reason: Mutex::new(None),
        elections: Mutex::new(HashSet::from([options.election.clone()])),
        leaders: watch::channel(0).0,
    });
    let stop = CancellationToken::new();
    let span = tracing::info_span!("session", backend = backend.name(), session = %format_args!("{id:#x}"), ttl = ?options.ttl);
    tracing::debug!(parent: &span, shared, "session opened");
    tokio::spawn(
        keeper(
            state.clone(),
            backend.clone(),
            options.clone(),
            stop.clone(),
            sent,
            self_kept,
        )
        .instrument(span),
    );
    let core = Arc::new(SessionCore {
        state,
        backend: backend.clone(),
        stop,
    });
    Ok(SessionUse {
        hold: Arc::new(Hold {
            core,
            election: options.election.clone(),
        }),
    })
}

/// Keep the session alive: a keep-alive every renew interval; after an
/// error try again at least every retry interval, with a last attempt
/// shortly before the local deadline (see [`RenewSchedule`]); lost when the
/// store says so or at the local deadline. Self-kept sessions are only
/// proven while a leader is on them.
async fn keeper(
    state: Arc<SessionState>,
    backend: Arc<dyn Backend>,
    options: ElectionOptions,
    stop: CancellationToken,
    anchor: Instant,
    self_kept: bool,
) {
    let lifetime = options.kept_lifetime();
    let mut deadline = anchor + lifetime;
    let mut next = anchor + options.renew_interval;
    let mut schedule = RenewSchedule::new(&options);
    let mut last_error: Option<Error> = None;
    let mut leaders = state.leaders.subscribe();
    loop {
        if self_kept && *leaders.borrow_and_update() == 0 {
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
        let call = timeout(bound, backend.keep_alive(state.id));
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
                tracing::trace!("session kept alive");
                continue;
            }
            Ok(Err(Error::Lost(message))) => {
                state.mark_lost(LossReason::LeaseLost(message));
                return;
            }
            Ok(Err(e)) => e,
            Err(_) => Error::Timeout {
                operation: "keep session alive",
                after: bound,
            },
        };
        let now = Instant::now();
        next = schedule.retry_at(sent, now, deadline);
        tracing::warn!(error = %failed, retry_in = ?next - now, left = ?deadline - now, "session keep-alive failed; retrying");
        state.beat.send_modify(|b| b.error = Some(failed.clone()));
        last_error = Some(failed);
    }
    // The local deadline passed without a successful keep-alive.
    state.mark_lost(LossReason::Unreachable { last_error });
}
