//! One campaign: from the first attempt until this candidate leads, gives
//! up or is cancelled.
//!
//! The same loop serves both families of store. Each turn makes one attempt
//! in the store's family ([`Campaign::attempt`]): a record store's
//! conditional write, or a queue store's claim (made in a session, or
//! looked at again). A win starts a term on the lease that keeps the claim
//! ([`Campaign::start_term`]); otherwise the campaign waits for a reason to
//! try again ([`Campaign::wait`]): the claim ahead going, the record
//! changing (a watch, or a poll), or the lease of its own queued claim lost.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, Expiry, Family, QueueStore, RecordStore};
use crate::elector::{Attempt, bounded};
use crate::error::{Error, Result};
use crate::health::Monitor;
use crate::leadership::{Leadership, release};
use crate::lease::{self, LeaseUse, Unsettled};
use crate::observer::{Running, open_watch};
use crate::options::ElectionOptions;
use crate::retry::{Backoff, jittered};
use crate::types::{AcquireRequest, Claim, LeaderInfo, QueueOutcome, RecordOutcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Until this candidate leads.
    Block,
    /// One attempt.
    Try,
    /// Until this candidate leads or the instant passes.
    Until(Instant),
}

/// One campaign's state.
pub(crate) struct Campaign {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) options: ElectionOptions,
    pub(crate) monitor: Arc<Monitor>,
    pub(crate) cancel: CancellationToken,
    /// Publishes the leaders this campaign reads to the elector's observers.
    pub(crate) reads: Running,
    /// How many claims at the head of a queue store's line hold at once: 1
    /// for an election, N for a semaphore of N permits.
    pub(crate) permits: u32,
}

/// This candidate's own claim in a queue store's line, held while waiting
/// (not to be confused with [`Attempt::Held`], someone else leading), with
/// the session that keeps it.
struct QueuedClaim {
    claim: Claim,
    lease: LeaseUse,
}

/// What one attempt came to.
enum Turn {
    /// This candidate leads with `claim`, kept by `lease`; `proof` is the
    /// outcome of a proof of a self-kept session made together with the
    /// check that won (else `start_term` proves it).
    Won {
        claim: Claim,
        lease: LeaseUse,
        proof: Option<Result<Instant>>,
    },
    /// Someone else leads.
    Held(Option<LeaderInfo>),
}

/// What a campaign carries from turn to turn.
#[derive(Default)]
struct Carry {
    /// The queued claim (queue stores).
    queued: Option<QueuedClaim>,
    /// The session of a create whose answer was lost, with its error, until
    /// a later create in the same session resolves it: that session keeps
    /// the election's place, so the claim the lost create may have made is
    /// never adopted by anyone else.
    unanswered: Option<(LeaseUse, Error)>,
    /// Record stores with [`Expiry::Observed`]: the revision seen last and
    /// when it was first seen.
    observed: Option<(i64, Instant)>,
    /// The leader seen last.
    leader: Option<LeaderInfo>,
}

enum WaitEnd {
    /// Try to acquire again.
    Retry,
    /// Cancelled or out of time.
    Stop,
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

    /// Withdraw a queued claim, bounded. A withdrawal the store did not
    /// confirm is resolved in the background while the session lives
    /// ([`LeaseUse::settle`]).
    async fn withdraw(&self, queued: Option<QueuedClaim>) {
        let Some(q) = queued else { return };
        let result = self
            .call("release", release(self.backend.as_ref(), &q.claim))
            .await;
        if let Err(e) = result {
            q.lease.settle(Unsettled::Release(q.claim), e);
        }
    }

    pub(crate) async fn run(self, mode: Mode) -> Result<Attempt> {
        let mut carry = Carry::default();
        let result = self.campaign_loop(mode, &mut carry).await;
        // The campaign ended while a create in a session went unanswered:
        // remove whatever it may have made, in the background.
        if let Some((session, error)) = carry.unanswered.take() {
            session.settle(
                Unsettled::Create {
                    election: self.options.election.clone(),
                },
                error,
            );
        }
        result
    }

    async fn campaign_loop(&self, mode: Mode, carry: &mut Carry) -> Result<Attempt> {
        let mut backoff = Backoff::new(self.options.retry_interval);
        let started = Instant::now();
        loop {
            if self.cancel.is_cancelled() {
                self.withdraw(carry.queued.take()).await;
                return Err(Error::Cancelled);
            }
            match self.attempt(carry).await {
                Ok(Turn::Won {
                    claim,
                    lease,
                    proof,
                }) => match self.start_term(claim, lease, proof, started).await {
                    Ok(leadership) => return Ok(Attempt::Leader(leadership)),
                    Err(e) if !e.is_lost() && (mode == Mode::Try || !e.is_transient()) => {
                        return Err(e);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "won, but the lease could not be proven alive; campaigning again");
                        if !e.is_lost() && !self.pause(mode, backoff.next_delay()).await {
                            return self.stopped(mode);
                        }
                    }
                },
                Ok(Turn::Held(leader)) => {
                    backoff.reset();
                    self.reads.saw(&leader);
                    carry.leader = leader.clone();
                    if mode == Mode::Try {
                        self.withdraw(carry.queued.take()).await;
                        return Ok(Attempt::Held(leader));
                    }
                    tracing::debug!(leader = ?leader.as_ref().map(|l| &l.id), "held by another; waiting");
                    if let WaitEnd::Stop = self.wait(mode, carry).await {
                        self.withdraw(carry.queued.take()).await;
                        return match mode {
                            Mode::Until(_) if !self.cancel.is_cancelled() => {
                                Ok(Attempt::Held(leader))
                            }
                            _ => Err(Error::Cancelled),
                        };
                    }
                }
                // The queued claim (or its session) is gone: never win with
                // it; start over.
                Err(Error::Lost(message)) => {
                    tracing::warn!(%message, "queued claim lost while waiting; campaigning again");
                }
                Err(e) if mode == Mode::Try || !e.is_transient() => {
                    self.withdraw(carry.queued.take()).await;
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "acquire failed; retrying");
                    if !self.pause(mode, backoff.next_delay()).await {
                        self.withdraw(carry.queued.take()).await;
                        return self.stopped(mode);
                    }
                }
            }
        }
    }

    /// One attempt in the store's family.
    async fn attempt(&self, carry: &mut Carry) -> Result<Turn> {
        match self.backend.family() {
            Family::Record(r) => self.attempt_record(r, carry).await,
            Family::Queue(q) => self.attempt_queue(q, carry).await,
        }
    }

    fn request(&self, expired_revision: Option<i64>) -> AcquireRequest {
        let opts = &self.options;
        AcquireRequest {
            election: opts.election.clone(),
            candidate: opts.candidate_id.clone(),
            value: opts.value.clone(),
            ttl: self.lease(),
            expired_revision,
            permits: self.permits,
        }
    }

    /// The store's lease for these options ([`LeasePlan::lease`](crate::LeasePlan::lease)):
    /// what a session or record is asked to live, and how long a follower
    /// waits on an unchanged record where the followers judge expiry.
    fn lease(&self) -> Duration {
        self.backend
            .lease_plan(&self.options)
            .lease
            .min(self.options.ttl)
    }

    /// A record store: one conditional write; with observed expiry, on the
    /// revision seen unchanged for the store's lease (within the ttl, see
    /// [`Backend::lease_plan`](crate::Backend::lease_plan)).
    async fn attempt_record(&self, store: &dyn RecordStore, carry: &mut Carry) -> Result<Turn> {
        let observed = store.expiry() == Expiry::Observed;
        let expired_revision = match carry.observed {
            Some((rev, first_seen)) if observed && first_seen.elapsed() >= self.lease() => {
                Some(rev)
            }
            _ => None,
        };
        let sent = Instant::now();
        let outcome = self
            .call(
                "acquire",
                store.try_acquire(&self.request(expired_revision)),
            )
            .await?;
        match outcome {
            RecordOutcome::Acquired(claim) => {
                let lease = lease::record_lease(&self.backend, &self.options, claim.clone(), sent);
                Ok(Turn::Won {
                    claim,
                    lease,
                    proof: None,
                })
            }
            RecordOutcome::Held { leader, revision } => {
                if observed && carry.observed.is_none_or(|(r, _)| r != revision) {
                    // Seen now (reply time): the holder wrote it no later.
                    carry.observed = Some((revision, Instant::now()));
                }
                Ok(Turn::Held(leader))
            }
        }
    }

    /// A queue store: make this candidate's claim in a session, or look at
    /// the queued one again.
    async fn attempt_queue(&self, store: &dyn QueueStore, carry: &mut Carry) -> Result<Turn> {
        if let Some(q) = carry.queued.take() {
            // A session lost while a claim waits in it: the claim went with
            // it (or, when the store was unreachable past the deadline, may
            // linger: withdraw it). Never win with it.
            if q.lease.is_lost() {
                let reason = q.lease.reason();
                self.withdraw(Some(q)).await;
                return Err(Error::Lost(format!(
                    "the session of the queued claim was lost ({reason})"
                )));
            }
            // On a self-kept session (ZooKeeper) the session is proven at
            // the quorum together with the re-check, in one round trip: the
            // proof (a `sync`) is sent first, and the store answers a
            // session's requests in order, so the listing after it is as
            // fresh as the proof. A won check then needs no proof of its
            // own after it (the handover's last round trip); the term's
            // deadline counts from the proof's send, before the check.
            let (outcome, proof) = if store.self_kept_sessions() {
                let (proof, outcome) = tokio::join!(
                    q.lease.prove(),
                    self.call("acquire", store.check(&q.claim, self.permits))
                );
                (outcome, Some(proof))
            } else {
                (
                    self.call("acquire", store.check(&q.claim, self.permits))
                        .await,
                    None,
                )
            };
            return match outcome {
                Ok(QueueOutcome::Acquired(claim)) => Ok(Turn::Won {
                    claim,
                    lease: q.lease,
                    proof,
                }),
                Ok(QueueOutcome::Queued { leader, claim }) => {
                    carry.queued = Some(QueuedClaim {
                        claim,
                        lease: q.lease,
                    });
                    Ok(Turn::Held(leader))
                }
                Err(Error::Lost(m)) => Err(Error::Lost(m)),
                Err(e) => {
                    carry.queued = Some(q);
                    Err(e)
                }
            };
        }
        // Retry a create whose answer was lost in the same session: the
        // store replaces what it may have made (never adopts it).
        let session = match carry.unanswered.take() {
            Some((s, _)) if !s.is_lost() => s,
            _ => {
                let joined = lease::join_session(&self.backend, &self.options).await;
                self.note("acquire", &joined);
                joined?
            }
        };
        let Some(id) = session.session_id() else {
            return Err(Error::Config(
                "a queue store's lease is not a session".into(),
            ));
        };
        let outcome = self
            .call("acquire", store.join(&self.request(None), id))
            .await;
        match outcome {
            Ok(QueueOutcome::Acquired(claim)) => Ok(Turn::Won {
                claim,
                lease: session,
                proof: None,
            }),
            Ok(QueueOutcome::Queued { leader, claim }) => {
                carry.queued = Some(QueuedClaim {
                    claim,
                    lease: session,
                });
                Ok(Turn::Held(leader))
            }
            Err(Error::Lost(message)) => {
                // Creating a claim in the session failed as lost: the
                // session may be gone. One keep-alive tells (and marks it
                // lost if so, ending every term on it); a claim that
                // vanished for another reason leaves the session and its
                // other terms alone.
                let proof = session.prove().await;
                self.note("renew", &proof);
                Err(Error::Lost(message))
            }
            Err(e) => {
                if e.is_transient() {
                    // A create whose outcome is unknown (a refusal such as
                    // permission denied made nothing: nothing to settle).
                    carry.unanswered = Some((session, e.clone()));
                }
                Err(e)
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

    /// Start a term on a claim won with `lease`: the term's deadline is the
    /// lease's. A session the client keeps by itself (ZooKeeper) is proven
    /// alive at the quorum first: its waiters sent nothing but the client's
    /// pings.
    async fn start_term(
        &self,
        claim: Claim,
        lease: LeaseUse,
        proof: Option<Result<Instant>>,
        started: Instant,
    ) -> Result<Leadership> {
        let self_kept = match self.backend.family() {
            Family::Queue(q) => q.self_kept_sessions(),
            Family::Record(_) => false,
        };
        let proven = match proof {
            // Proven with the check that won (see `attempt_queue`).
            Some(r) => {
                self.note("renew", &r);
                r.map(|_| ())
            }
            None if self_kept => {
                let r = lease.prove().await;
                self.note("renew", &r);
                r.map(|_| ())
            }
            None => Ok(()),
        };
        let too_old = lease.is_lost() || lease.deadline() <= Instant::now();
        if proven.is_err() || too_old {
            let reason = lease.reason();
            let _ = self
                .call("release", release(self.backend.as_ref(), &claim))
                .await
                .map_err(|e| lease.clone().settle(Unsettled::Release(claim.clone()), e));
            return match proven {
                Err(e) => Err(e),
                Ok(()) => Err(Error::Lost(format!(
                    "won with a lease past its local deadline ({reason})"
                ))),
            };
        }
        match lease.session_id() {
            Some(id) => {
                tracing::info!(token = %claim.token, session = %format_args!("{id:#x}"), "acquired leadership")
            }
            None => tracing::info!(token = %claim.token, "acquired leadership"),
        }
        Ok(Leadership::start(
            self.backend.clone(),
            self.options.clone(),
            claim,
            lease,
            self.monitor.clone(),
            started.elapsed(),
        ))
    }

    /// Wait for a reason to try again: the claim ahead of the queued claim
    /// going (a queue store's watch), or the record changing (a record
    /// store's leader watch, if it has one, and a poll every jittered retry
    /// interval, since a record expires without a write); the queued claim's
    /// session lost; cancellation, or the mode's deadline. No store call of
    /// its own while nothing happens on a queue store (the session's
    /// keep-alives are the only traffic); a failed watch is tried again
    /// after a (jittered) retry interval.
    async fn wait(&self, mode: Mode, carry: &mut Carry) -> WaitEnd {
        let opts = &self.options;
        let until = match mode {
            Mode::Until(t) => Some(t),
            _ => None,
        };
        let lease = carry.queued.as_ref().map(|q| q.lease.clone());
        let lost = lease.as_ref().map(LeaseUse::lost_token);
        let mut beats = lease.as_ref().map(LeaseUse::beats);
        // Observed expiry: try again the moment the record seen has been
        // unchanged for the lease, not a poll later.
        let expires = carry
            .observed
            .map(|(_, first_seen)| first_seen + self.lease());
        let wake = self.wake(
            carry.queued.as_ref().map(|q| q.claim.clone()),
            carry.leader.clone(),
            expires,
        );
        tokio::pin!(wake);
        let mut retry_at: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return WaitEnd::Stop,
                _ = sleep_until(until.unwrap_or_else(Instant::now)), if until.is_some() => return WaitEnd::Stop,
                _ = async {
                    match &lost {
                        Some(t) => t.cancelled().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let reason = lease.as_ref().map(LeaseUse::reason);
                    tracing::warn!(reason = ?reason.map(|r| r.to_string()), "the session of the queued claim was lost while waiting; campaigning again");
                    let dead = carry.queued.take();
                    self.withdraw(dead).await;
                    return WaitEnd::Retry;
                }
                r = &mut wake, if retry_at.is_none() => match r {
                    Ok(()) => return WaitEnd::Retry,
                    Err(e) => {
                        tracing::debug!(error = %e, "wait failed; trying again after a retry interval");
                        retry_at = Some(Instant::now() + jittered(opts.retry_interval));
                    }
                },
                _ = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => return WaitEnd::Retry,
                r = async {
                    match beats.as_mut() {
                        Some(b) => b.changed().await.map(|()| b.borrow_and_update().clone()).ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    let Some(beat) = r else { return WaitEnd::Retry };
                    match &beat.error {
                        None => self.monitor.store_ok(),
                        Some(e) => self.monitor.store_error("renew", e),
                    }
                }
            }
        }
    }

    /// The store's part of a wait: resolves when it may be worth trying
    /// again.
    async fn wake(
        &self,
        queued: Option<Claim>,
        seen: Option<LeaderInfo>,
        expires: Option<Instant>,
    ) -> Result<()> {
        match (self.backend.family(), &queued) {
            (Family::Queue(q), Some(claim)) => q.wait(claim, self.permits).await,
            (Family::Queue(_), None) => Ok(()),
            (Family::Record(_), _) => {
                let mut at = Instant::now() + jittered(self.options.retry_interval);
                if let Some(expires) = expires
                    && expires > Instant::now()
                {
                    at = at.min(expires);
                }
                let poll = sleep_until(at);
                tokio::pin!(poll);
                if self.backend.leader_watch().is_none() {
                    poll.await;
                    return Ok(());
                }
                let changed = async {
                    let mut stream = open_watch(self.backend.as_ref(), &self.options).await?;
                    // The first item is the leader now: a change since the
                    // attempt is news already.
                    if stream.next().await? != seen {
                        return Ok::<(), Error>(());
                    }
                    stream.next().await.map(|_| ())
                };
                tokio::select! {
                    r = changed => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "watching the record failed; polling");
                            poll.await;
                        }
                    }
                    _ = &mut poll => {}
                }
                Ok(())
            }
        }
    }
}
