//! Observing an election: the task that feeds [`Elector::observe`](crate::Elector::observe)'s
//! receivers, from the store's leader watch or by polling, and the leader
//! reads of this elector's own campaigns that an observer follows instead
//! of polling twice.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::{Instant, sleep};

use crate::backend::Backend;
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

/// Feed an observer's watch channel until every receiver is gone, or until
/// an error that retrying cannot fix (then the sender is dropped and the
/// receivers see the channel closed).
pub(crate) async fn observe_task(
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
    let watchable = backend.leader_watch().is_some();
    // When the current run of failures began, and whether it was reported.
    let mut failing: Option<(Instant, bool)> = None;
    loop {
        if watchable && stream.is_none() {
            // The watch broke earlier: try to reopen it (polling meanwhile).
            match open_watch(backend.as_ref(), &options).await {
                Ok(s) => stream = Some(s),
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

/// Open `backend`'s leader watch of the election, bounded by the request
/// timeout; [`Error::NotSupported`] for a store without one.
pub(crate) async fn open_watch(
    backend: &dyn Backend,
    options: &ElectionOptions,
) -> Result<Box<dyn crate::backend::LeaderWatch>> {
    let Some(w) = backend.leader_watch() else {
        return Err(Error::NotSupported {
            operation: "watch",
            backend: backend.name(),
        });
    };
    bounded(options.request_timeout, "watch", w.watch(&options.election)).await
}
