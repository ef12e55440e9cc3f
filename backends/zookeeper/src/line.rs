//! The line watch: the live candidates of an election, re-read after every
//! event of a children watch on the election directory (and of a data
//! watch on the leader's node, so that a leader value changed in place is
//! seen).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use leasehold_core::{Error, LeaderInfo, ParticipantsWatch, Result};
use zookeeper_client as zk;
use zookeeper_client::{Client, WatchedEvent};

use crate::backend::{NAME, check_chroot, leader_info, map_err};
use crate::node::{LockName, sorted_candidates};

type Armed = Pin<Box<dyn Future<Output = WatchedEvent> + Send>>;

/// A stream of an election's lines. Each `next` waits for an armed watch
/// to fire, then lists the directory and reads each candidate's node,
/// arming the next watches in the same requests, so no change between two
/// reads goes unseen. Cost per change: one listing and one read per
/// candidate.
pub(crate) struct ZkLineWatch {
    client: Client,
    dir: String,
    chroot: Option<String>,
    lock_name: LockName,
    timeout: Duration,
    /// The armed watch, kept across cancelled `next` calls.
    armed: Option<Armed>,
    /// The watch fired (or nothing was read yet): the next call reads.
    stale: bool,
}

impl ZkLineWatch {
    pub(crate) fn new(
        client: Client,
        dir: String,
        chroot: Option<String>,
        lock_name: LockName,
        timeout: Duration,
    ) -> Self {
        ZkLineWatch {
            client,
            dir,
            chroot,
            lock_name,
            timeout,
            armed: None,
            stale: true,
        }
    }

    /// Read the line, arm the next watch, and return the line.
    async fn read_and_arm(&mut self) -> Result<Vec<LeaderInfo>> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let mut listed = None;
        for _ in 0..5 {
            match bounded(
                timeout,
                "watch candidates",
                client.get_and_watch_children(&self.dir),
            )
            .await?
            {
                Ok((children, _, watcher)) => {
                    listed = Some((children, watcher));
                    break;
                }
                Err(zk::Error::NoNode) => {
                    let operation = "watch election directory";
                    let (stat, watcher) =
                        bounded(timeout, operation, client.check_and_watch_stat(&self.dir))
                            .await?
                            .map_err(|e| map_err(operation, e))?;
                    if stat.is_some() {
                        // Created in between: list it.
                        continue;
                    }
                    // Nobody joined yet, unless the chroot itself is missing.
                    check_chroot(&client, self.chroot.as_deref(), timeout).await?;
                    self.armed = Some(Box::pin(watcher.changed()));
                    return Ok(Vec::new());
                }
                Err(e) => return Err(map_err("watch candidates", e)),
            }
        }
        let Some((children, watcher)) = listed else {
            return Err(Error::unavailable(
                NAME,
                format!(
                    "the election node {} kept appearing and vanishing while being read; retry",
                    self.dir
                ),
            ));
        };
        let full_dir = format!("{}{}", self.chroot.as_deref().unwrap_or(""), self.dir);
        let names = sorted_candidates(children, self.lock_name, &full_dir)?;
        let mut line = Vec::with_capacity(names.len());
        let mut leader_watch = None;
        for name in names {
            let path = format!("{}/{name}", self.dir);
            // The first node read leads: watch its data too (a proclaim).
            let read = if leader_watch.is_none() {
                bounded(
                    timeout,
                    "read leader node",
                    client.get_and_watch_data(&path),
                )
                .await?
                .map(|(data, stat, w)| {
                    leader_watch = Some(w);
                    (data, stat)
                })
            } else {
                bounded(timeout, "read candidate node", client.get_data(&path)).await?
            };
            match read {
                Ok((data, stat)) => line.push(leader_info(&data, &stat, &path)?),
                // It left after the listing: the children watch has fired
                // (or will), and the next call reads again.
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(map_err("read candidate node", e)),
            }
        }
        self.armed = Some(match leader_watch {
            Some(data_watcher) => Box::pin(async move {
                tokio::select! {
                    event = watcher.changed() => event,
                    event = data_watcher.changed() => event,
                }
            }),
            None => Box::pin(watcher.changed()),
        });
        Ok(line)
    }
}

/// `fut` bounded by `after`.
async fn bounded<T>(
    after: Duration,
    operation: &'static str,
    fut: impl Future<Output = std::result::Result<T, zk::Error>>,
) -> Result<std::result::Result<T, zk::Error>> {
    tokio::time::timeout(after, fut)
        .await
        .map_err(|_| Error::Timeout { operation, after })
}

#[async_trait]
impl ParticipantsWatch for ZkLineWatch {
    /// Cancel safe: the armed watch is kept across dropped calls, and a
    /// dropped read leaves the watch stale, so the next call reads again.
    async fn next(&mut self) -> Result<Vec<LeaderInfo>> {
        if !self.stale {
            if let Some(armed) = self.armed.as_mut() {
                let event = armed.await;
                tracing::trace!(?event, "line watch fired");
            }
            self.armed = None;
            self.stale = true;
        }
        let line = self.read_and_arm().await?;
        self.stale = false;
        Ok(line)
    }
}
