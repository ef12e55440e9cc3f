//! A fault-injecting wrapper around any backend, for engine and
//! application tests: delay, fail or black-hole calls, or pause the client.
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use leasehold_core::{faulty::{Fault, FaultyBackend}, memory::MemoryStore};
//!
//! let store = MemoryStore::new();
//! let (backend, faults) = FaultyBackend::wrap(Arc::new(store.client()));
//! faults.set(Fault::BlackHole); // every call from now on hangs
//! faults.set(Fault::Delay(Duration::from_millis(50)));
//! faults.set(Fault::None);
//! # let _ = backend;
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::backend::{
    Backend, Expiry, Family, LeaderWatch, ListParticipants, ParticipantsWatch, Proclaim,
    QueueStore, RecordStore, SessionScope, WatchLeader,
};
use crate::error::{Error, Result};
use crate::lease::{queue_of, record_of};
use crate::options::ElectionOptions;
use crate::types::{AcquireRequest, Claim, LeaderInfo, QueueOutcome, RecordOutcome};

/// What happens to calls through a [`FaultyBackend`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Calls pass through.
    None,
    /// Each call waits this long first.
    Delay(Duration),
    /// Each call fails at once with [`Error::Unavailable`].
    Fail,
    /// Each call fails at once with this error (for example
    /// [`Error::PermissionDenied`], as when credentials lose their rights).
    Error(Error),
    /// Calls never complete (a partition that swallows requests).
    BlackHole,
    /// Calls wait until the fault changes, then proceed (a paused client
    /// process, as with SIGSTOP).
    Pause,
    /// Each call reaches the store and takes effect, but its answer is lost:
    /// the caller gets [`Error::Unavailable`] (a reply dropped after the
    /// write landed).
    LoseReplies,
    /// Releases (`release`, `withdraw_in`) fail at once with
    /// [`Error::Unavailable`]; every other call passes (a store that keeps
    /// a session alive but refuses the delete).
    RefuseReleases,
}

/// Controls the faults of one [`FaultyBackend`] and counts its calls.
#[derive(Debug, Clone)]
pub struct FaultHandle {
    tx: Arc<watch::Sender<Fault>>,
    calls: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    acquire: AtomicU64,
    renew: AtomicU64,
    release: AtomicU64,
    proclaim: AtomicU64,
    leader: AtomicU64,
    wait: AtomicU64,
    watch: AtomicU64,
    /// Sessions opened and closed (not in [`CallCounts`]: no claim's
    /// acquire or release).
    sessions: AtomicU64,
}

/// How many calls of each kind went through a [`FaultyBackend`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// `try_acquire` calls.
    pub acquire: u64,
    /// `renew` calls.
    pub renew: u64,
    /// `release` calls.
    pub release: u64,
    /// `proclaim` calls.
    pub proclaim: u64,
    /// `leader` calls.
    pub leader: u64,
    /// `wait` calls.
    pub wait: u64,
    /// `watch` calls.
    pub watch: u64,
}

impl CallCounts {
    /// All calls together.
    pub fn total(&self) -> u64 {
        self.acquire
            + self.renew
            + self.release
            + self.proclaim
            + self.leader
            + self.wait
            + self.watch
    }
}

impl FaultHandle {
    /// Change the fault for calls from now on (and wake paused calls).
    pub fn set(&self, fault: Fault) {
        self.tx.send_replace(fault);
    }

    /// The current fault.
    pub fn get(&self) -> Fault {
        self.tx.borrow().clone()
    }

    /// Calls made so far.
    pub fn calls(&self) -> CallCounts {
        let c = &self.calls;
        CallCounts {
            acquire: c.acquire.load(Ordering::Relaxed),
            renew: c.renew.load(Ordering::Relaxed),
            release: c.release.load(Ordering::Relaxed),
            proclaim: c.proclaim.load(Ordering::Relaxed),
            leader: c.leader.load(Ordering::Relaxed),
            wait: c.wait.load(Ordering::Relaxed),
            watch: c.watch.load(Ordering::Relaxed),
        }
    }
}

/// A backend whose calls suffer the fault set through its [`FaultHandle`].
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    /// This wrapper's identity: electors on one wrapper share sessions
    /// (not the inner backend's).
    scope: Arc<()>,
    rx: watch::Receiver<Fault>,
    calls: Arc<Counters>,
}

impl fmt::Debug for FaultyBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyBackend")
            .field("inner", &self.inner)
            .field("fault", &*self.rx.borrow())
            .finish()
    }
}

impl FaultyBackend {
    /// Wrap `inner`; the handle sets faults (none at first).
    pub fn wrap(inner: Arc<dyn Backend>) -> (Arc<FaultyBackend>, FaultHandle) {
        let (tx, rx) = watch::channel(Fault::None);
        let calls = Arc::new(Counters::default());
        let backend = Arc::new(FaultyBackend {
            inner,
            scope: Arc::new(()),
            rx,
            calls: calls.clone(),
        });
        (
            backend,
            FaultHandle {
                tx: Arc::new(tx),
                calls,
            },
        )
    }

    /// Apply the current fault before a call.
    async fn gate(&self, counter: &AtomicU64) -> Result<()> {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut rx = self.rx.clone();
        loop {
            let fault = rx.borrow_and_update().clone();
            match fault {
                Fault::None | Fault::LoseReplies | Fault::RefuseReleases => return Ok(()),
                Fault::Delay(d) => {
                    tokio::time::sleep(d).await;
                    return Ok(());
                }
                Fault::Fail => {
                    return Err(Error::unavailable(self.inner.name(), "injected failure"));
                }
                Fault::Error(e) => return Err(e),
                Fault::BlackHole => return std::future::pending().await,
                Fault::Pause => {
                    if rx.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                }
            }
        }
    }
}

impl FaultyBackend {
    fn refuse_release(&self) -> Result<()> {
        if *self.rx.borrow() == Fault::RefuseReleases {
            return Err(Error::unavailable(
                self.inner.name(),
                "injected refusal of a release",
            ));
        }
        Ok(())
    }

    /// Apply the current fault to a call's answer.
    fn answer<T>(&self, result: Result<T>) -> Result<T> {
        if *self.rx.borrow() == Fault::LoseReplies {
            return Err(Error::unavailable(
                self.inner.name(),
                "injected loss of the answer (the call took effect)",
            ));
        }
        result
    }
}

#[async_trait]
impl Backend for FaultyBackend {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn family(&self) -> Family<'_> {
        match self.inner.family() {
            Family::Record(_) => Family::Record(self),
            Family::Queue(_) => Family::Queue(self),
        }
    }

    fn validate(&self, options: &ElectionOptions) -> Result<()> {
        self.inner.validate(options)
    }

    fn lease_plan(&self, options: &ElectionOptions) -> crate::LeasePlan {
        self.inner.lease_plan(options)
    }

    async fn leader(&self, election: &str) -> Result<Option<LeaderInfo>> {
        self.gate(&self.calls.leader).await?;
        let result = self.inner.leader(election).await;
        self.answer(result)
    }

    fn proclaimer(&self) -> Option<&dyn Proclaim> {
        self.inner.proclaimer().map(|_| self as &dyn Proclaim)
    }

    fn leader_watch(&self) -> Option<&dyn WatchLeader> {
        self.inner.leader_watch().map(|_| self as &dyn WatchLeader)
    }

    fn participants(&self) -> Option<&dyn ListParticipants> {
        self.inner
            .participants()
            .map(|_| self as &dyn ListParticipants)
    }
}

#[async_trait]
impl ListParticipants for FaultyBackend {
    /// Faulted and counted as a leader read.
    async fn participants(&self, election: &str) -> Result<Vec<LeaderInfo>> {
        self.gate(&self.calls.leader).await?;
        let result = match self.inner.participants() {
            Some(p) => p.participants(election).await,
            None => Err(Error::NotSupported {
                operation: "participants",
                backend: self.inner.name(),
            }),
        };
        self.answer(result)
    }

    /// Faulted and counted as a watch.
    async fn watch_participants(&self, election: &str) -> Result<Box<dyn ParticipantsWatch>> {
        self.gate(&self.calls.watch).await?;
        let result = match self.inner.participants() {
            Some(p) => p.watch_participants(election).await,
            None => Err(Error::NotSupported {
                operation: "participants",
                backend: self.inner.name(),
            }),
        };
        self.answer(result).map(|inner| {
            Box::new(FaultyLineWatch {
                inner,
                name: self.inner.name(),
                rx: self.rx.clone(),
            }) as Box<dyn ParticipantsWatch>
        })
    }
}

/// A line watch that breaks when its backend is set to fail: a
/// [`Fault::Fail`] or [`Fault::Error`] set while it waits (or before a
/// call) ends the call with that error, as a broken watch stream would.
struct FaultyLineWatch {
    inner: Box<dyn ParticipantsWatch>,
    name: &'static str,
    rx: watch::Receiver<Fault>,
}

impl FaultyLineWatch {
    /// The error the current fault injects into a watch, if any (marking
    /// the fault seen).
    fn injected(&mut self) -> Option<Error> {
        match &*self.rx.borrow_and_update() {
            Fault::Fail => Some(Error::unavailable(self.name, "injected watch failure")),
            Fault::Error(e) => Some(e.clone()),
            _ => None,
        }
    }
}

#[async_trait]
impl ParticipantsWatch for FaultyLineWatch {
    async fn next(&mut self) -> Result<Vec<LeaderInfo>> {
        loop {
            if let Some(e) = self.injected() {
                return Err(e);
            }
            tokio::select! {
                r = self.inner.next() => return r,
                changed = self.rx.changed() => if changed.is_err() {
                    // The handle is gone: no more faults.
                    return self.inner.next().await;
                },
            }
        }
    }
}

#[async_trait]
impl RecordStore for FaultyBackend {
    fn expiry(&self) -> Expiry {
        record_of(self.inner.as_ref()).map_or(Expiry::Observed, |r| r.expiry())
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<RecordOutcome> {
        self.gate(&self.calls.acquire).await?;
        let result = record_of(self.inner.as_ref())?.try_acquire(req).await;
        self.answer(result)
    }

    async fn renew(&self, claim: &Claim) -> Result<Claim> {
        self.gate(&self.calls.renew).await?;
        let result = record_of(self.inner.as_ref())?.renew(claim).await;
        self.answer(result)
    }

    async fn release(&self, claim: &Claim) -> Result<()> {
        self.gate(&self.calls.release).await?;
        self.refuse_release()?;
        let result = record_of(self.inner.as_ref())?.release(claim).await;
        self.answer(result)
    }
}

#[async_trait]
impl QueueStore for FaultyBackend {
    /// The wrapper's own: electors on it share sessions with each other,
    /// not with electors on the backend it wraps.
    fn scope(&self) -> SessionScope {
        SessionScope::of(&self.scope)
    }

    fn self_kept_sessions(&self) -> bool {
        queue_of(self.inner.as_ref()).is_ok_and(|q| q.self_kept_sessions())
    }

    /// Faulted, not counted in [`CallCounts`].
    async fn open_session(&self, ttl: Duration) -> Result<i64> {
        self.gate(&self.calls.sessions).await?;
        let result = queue_of(self.inner.as_ref())?.open_session(ttl).await;
        self.answer(result)
    }

    /// Counted (and faulted) as a renewal: it is the session's.
    async fn keep_alive(&self, session: i64) -> Result<()> {
        self.gate(&self.calls.renew).await?;
        let result = queue_of(self.inner.as_ref())?.keep_alive(session).await;
        self.answer(result)
    }

    async fn close_session(&self, session: i64) -> Result<()> {
        self.gate(&self.calls.sessions).await?;
        let result = queue_of(self.inner.as_ref())?.close_session(session).await;
        self.answer(result)
    }

    async fn join(&self, req: &AcquireRequest, session: i64) -> Result<QueueOutcome> {
        self.gate(&self.calls.acquire).await?;
        let result = queue_of(self.inner.as_ref())?.join(req, session).await;
        self.answer(result)
    }

    async fn check(&self, claim: &Claim, permits: u32) -> Result<QueueOutcome> {
        self.gate(&self.calls.acquire).await?;
        let result = queue_of(self.inner.as_ref())?.check(claim, permits).await;
        self.answer(result)
    }

    async fn release(&self, claim: &Claim) -> Result<()> {
        self.gate(&self.calls.release).await?;
        self.refuse_release()?;
        let result = queue_of(self.inner.as_ref())?.release(claim).await;
        self.answer(result)
    }

    async fn withdraw_in(&self, election: &str, session: i64) -> Result<()> {
        self.gate(&self.calls.release).await?;
        self.refuse_release()?;
        let result = queue_of(self.inner.as_ref())?
            .withdraw_in(election, session)
            .await;
        self.answer(result)
    }

    async fn wait(&self, claim: &Claim, permits: u32) -> Result<()> {
        self.gate(&self.calls.wait).await?;
        let result = queue_of(self.inner.as_ref())?.wait(claim, permits).await;
        self.answer(result)
    }

    async fn watch_claim(&self, claim: &Claim) -> Result<()> {
        self.gate(&self.calls.wait).await?;
        let result = queue_of(self.inner.as_ref())?.watch_claim(claim).await;
        self.answer(result)
    }
}

#[async_trait]
impl Proclaim for FaultyBackend {
    async fn proclaim(&self, claim: &Claim, value: &[u8]) -> Result<Claim> {
        self.gate(&self.calls.proclaim).await?;
        let result = match self.inner.proclaimer() {
            Some(p) => p.proclaim(claim, value).await,
            None => Err(Error::NotSupported {
                operation: "proclaim",
                backend: self.inner.name(),
            }),
        };
        self.answer(result)
    }
}

#[async_trait]
impl WatchLeader for FaultyBackend {
    async fn watch(&self, election: &str) -> Result<Box<dyn LeaderWatch>> {
        self.gate(&self.calls.watch).await?;
        let result = match self.inner.leader_watch() {
            Some(w) => w.watch(election).await,
            None => Err(Error::NotSupported {
                operation: "watch",
                backend: self.inner.name(),
            }),
        };
        self.answer(result)
    }
}
