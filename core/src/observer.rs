//! Observing an election: the task that feeds the receivers of
//! [`Elector::observe`](crate::Elector::observe) (the leader) and
//! [`Elector::observe_participants`](crate::Elector::observe_participants)
//! (the line), from the store's watch or by polling, and the leader reads
//! of this elector's own campaigns that a leader observer follows instead
//! of polling twice.
//!
//! One task shape serves both: a [`Followed`] says how to open the store's
//! watch, how to poll without one, and how to describe a change; the task
//! owns the retries (backoff, reopening a broken watch), the end (every
//! receiver gone, or an error retrying cannot fix) and dropping repeats.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::{Instant, sleep};
use tracing::Instrument;

use crate::backend::{Backend, LeaderWatch, ParticipantsWatch};
use crate::elector::bounded;
use crate::error::{Error, Result};
use crate::options::ElectionOptions;
use crate::retry::{Backoff, jittered};
use crate::types::LeaderInfo;

/// The leader as this elector's campaigns read it, so that an observer on a
/// backend without a watch follows those reads instead of polling the store
/// a second time (one read per poll serves both).
#[derive(Debug, Default)]
pub(crate) struct CampaignReads {
    /// Campaigns of this elector (or its clones) running now.
    running: usize,
    /// Reads of the leader so far (each `Held` outcome is one).
    count: u64,
    /// The leader the last of them saw.
    leader: Option<LeaderInfo>,
}

/// Counts a campaign as running until dropped (when its task ends).
pub(crate) struct Running(Arc<watch::Sender<CampaignReads>>);

impl Running {
    pub(crate) fn start(reads: &Arc<watch::Sender<CampaignReads>>) -> Running {
        reads.send_modify(|r| r.running += 1);
        Running(reads.clone())
    }

    /// Publish the leader a campaign read.
    pub(crate) fn saw(&self, leader: &Option<LeaderInfo>) {
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

/// A stream of values from a store's watch: the first call returns the
/// value now, each later one the value after the next change (repeats
/// allowed). Cancel safe, as [`LeaderWatch::next`].
#[async_trait]
pub(crate) trait Changes<T>: Send {
    async fn next(&mut self) -> Result<T>;
}

#[async_trait]
impl Changes<Option<LeaderInfo>> for Box<dyn LeaderWatch> {
    async fn next(&mut self) -> Result<Option<LeaderInfo>> {
        LeaderWatch::next(self.as_mut()).await
    }
}

#[async_trait]
impl Changes<Vec<LeaderInfo>> for Box<dyn ParticipantsWatch> {
    async fn next(&mut self) -> Result<Vec<LeaderInfo>> {
        ParticipantsWatch::next(self.as_mut()).await
    }
}

/// What an observer follows (the leader, the line) and how to get it from
/// one backend.
#[async_trait]
pub(crate) trait Followed: Send + Sync + 'static {
    /// What the receivers hold.
    type Value: Clone + PartialEq + Debug + Send + Sync + 'static;
    /// The call that returns the error that ended an observation, for the
    /// log line (`Elector::leader`).
    const READ_CALL: &'static str;

    /// Whether the backend watches this; else the task polls.
    fn watchable(&self) -> bool;

    /// Open the store's watch (the caller bounds it by the request
    /// timeout).
    async fn open(&self) -> Result<Box<dyn Changes<Self::Value>>>;

    /// Read the value now (bounded by the request timeout).
    async fn read(&self) -> Result<Self::Value>;

    /// Without a watch (or while it is broken): wait for the next poll,
    /// then read. The default sleeps a jittered retry interval.
    async fn poll(&mut self, options: &ElectionOptions) -> Result<Self::Value> {
        sleep(jittered(options.retry_interval)).await;
        self.read().await
    }

    /// Log a change at debug level.
    fn changed(value: &Self::Value);
}

/// The leader of an election.
pub(crate) struct Leader {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) options: ElectionOptions,
    /// The leader reads of this elector's campaigns, followed instead of
    /// polling on a backend without a watch.
    pub(crate) reads: watch::Receiver<CampaignReads>,
    /// The campaigns' reads this observer has seen.
    pub(crate) reads_seen: u64,
}

impl Leader {
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        options: ElectionOptions,
        mut reads: watch::Receiver<CampaignReads>,
    ) -> Self {
        // The campaigns' reads so far: only later ones are news.
        let reads_seen = reads.borrow_and_update().count;
        Leader {
            backend,
            options,
            reads,
            reads_seen,
        }
    }
}

#[async_trait]
impl Followed for Leader {
    type Value = Option<LeaderInfo>;
    const READ_CALL: &'static str = "Elector::leader";

    fn watchable(&self) -> bool {
        self.backend.leader_watch().is_some()
    }

    async fn open(&self) -> Result<Box<dyn Changes<Self::Value>>> {
        Ok(Box::new(
            open_watch(self.backend.as_ref(), &self.options).await?,
        ))
    }

    async fn read(&self) -> Result<Self::Value> {
        bounded(
            self.options.request_timeout,
            "leader",
            self.backend.leader(&self.options.election),
        )
        .await
    }

    /// Each turn ends in a read unless a campaign started during the sleep;
    /// then its reads are followed until it ends (only on a backend without
    /// a watch: with one, a broken watch is polled for until it reopens).
    async fn poll(&mut self, options: &ElectionOptions) -> Result<Self::Value> {
        let watchable = self.watchable();
        loop {
            if !watchable
                && let Some(leader) = campaign_read(&mut self.reads, &mut self.reads_seen).await
            {
                return Ok(leader);
            }
            sleep(jittered(options.retry_interval)).await;
            if watchable || self.reads.borrow().running == 0 {
                return self.read().await;
            }
        }
    }

    fn changed(value: &Self::Value) {
        tracing::debug!(leader = ?value.as_ref().map(|l| (&l.id, l.token)), "leader changed");
    }
}

/// The live candidates of an election, in line order.
pub(crate) struct Participants {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) options: ElectionOptions,
}

#[async_trait]
impl Followed for Participants {
    type Value = Vec<LeaderInfo>;
    const READ_CALL: &'static str = "Elector::participants";

    /// Every store that lists its candidates watches them.
    fn watchable(&self) -> bool {
        true
    }

    async fn open(&self) -> Result<Box<dyn Changes<Self::Value>>> {
        let Some(list) = self.backend.participants() else {
            return Err(not_supported(self.backend.as_ref(), "participants"));
        };
        Ok(Box::new(
            list.watch_participants(&self.options.election).await?,
        ))
    }

    async fn read(&self) -> Result<Self::Value> {
        let Some(list) = self.backend.participants() else {
            return Err(not_supported(self.backend.as_ref(), "participants"));
        };
        bounded(
            self.options.request_timeout,
            "participants",
            list.participants(&self.options.election),
        )
        .await
    }

    fn changed(value: &Self::Value) {
        tracing::debug!(
            line = ?value.iter().map(|p| (&p.id, p.token)).collect::<Vec<_>>(),
            "participants changed"
        );
    }
}

fn not_supported(backend: &dyn Backend, operation: &'static str) -> Error {
    Error::NotSupported {
        operation,
        backend: backend.name(),
    }
}

/// Start following `subject`: open its watch (or read once without one),
/// bounded by the request timeout, and hand the first value to a channel
/// that a background task (in `span`) keeps up to date.
///
/// # Errors
/// The first open or read failed.
pub(crate) async fn follow<F: Followed>(
    subject: F,
    options: &ElectionOptions,
    span: tracing::Span,
) -> Result<watch::Receiver<F::Value>> {
    let mut stream = if subject.watchable() {
        Some(open_stream(&subject, options).await?)
    } else {
        None
    };
    let first = match &mut stream {
        Some(s) => bounded(options.request_timeout, "watch", s.next()).await?,
        None => subject.read().await?,
    };
    let (tx, rx) = watch::channel(first);
    tokio::spawn(follow_task(subject, options.clone(), stream, tx).instrument(span));
    Ok(rx)
}

/// Feed an observer's watch channel until every receiver is gone, or until
/// an error that retrying cannot fix (then the sender is dropped and the
/// receivers see the channel closed).
async fn follow_task<F: Followed>(
    mut subject: F,
    options: ElectionOptions,
    mut stream: Option<Box<dyn Changes<F::Value>>>,
    tx: watch::Sender<F::Value>,
) {
    let mut backoff = Backoff::new(options.retry_interval);
    let publish = |next: F::Value| {
        tx.send_if_modified(|cur| {
            if *cur == next {
                false
            } else {
                F::changed(&next);
                *cur = next;
                true
            }
        });
    };
    let give_up = |e: &Error| {
        tracing::warn!(
            error = %e,
            "observing stopped: the store refused in a way retrying cannot fix; \
             the receivers see the channel closed ({} returns the error)",
            F::READ_CALL,
        );
    };
    let watchable = subject.watchable();
    // When the current run of failures began, and whether it was reported.
    let mut failing: Option<(Instant, bool)> = None;
    loop {
        if watchable && stream.is_none() {
            // The watch broke earlier: try to reopen it (polling meanwhile).
            match open_stream(&subject, &options).await {
                Ok(s) => stream = Some(s),
                Err(e) if !e.is_transient() => return give_up(&e),
                Err(e) => tracing::debug!(error = %e, "reopening the watch failed; polling"),
            }
        }
        let step = async {
            match &mut stream {
                Some(s) => s.next().await,
                None => subject.poll(&options).await,
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
                        "observing keeps failing; what is shown may be out of date (retrying)"
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

/// Open `subject`'s watch, bounded by the request timeout.
async fn open_stream<F: Followed>(
    subject: &F,
    options: &ElectionOptions,
) -> Result<Box<dyn Changes<F::Value>>> {
    bounded(options.request_timeout, "watch", subject.open()).await
}

/// Open `backend`'s leader watch of the election, bounded by the request
/// timeout; [`Error::NotSupported`] for a store without one.
pub(crate) async fn open_watch(
    backend: &dyn Backend,
    options: &ElectionOptions,
) -> Result<Box<dyn LeaderWatch>> {
    let Some(w) = backend.leader_watch() else {
        return Err(not_supported(backend, "watch"));
    };
    bounded(options.request_timeout, "watch", w.watch(&options.election)).await
}
