//! The leader watch: a children watch on the election directory and a data
//! watch on the leader's node, re-armed after every event.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use leasehold_core::{Error, LeaderInfo, LeaderWatch, Result};
use zookeeper_client as zk;
use zookeeper_client::{Client, WatchedEvent};

use crate::backend::{NAME, check_chroot, map_err};
use crate::node::{LockName, decode, sorted_candidates};

type Armed = Pin<Box<dyn Future<Output = WatchedEvent> + Send>>;

/// A stream of an election's leaders. Each `next` waits for an armed
/// watch to fire (children of the election directory, or its existence
/// while it is missing; and the data of the leader's node, so that a
/// leader value changed in place, a `proclaim`, is seen), then reads again
/// and re-arms in the same requests, so no change between two reads goes
/// unseen.
pub(crate) struct ZkLeaderWatch {
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

impl ZkLeaderWatch {
    pub(crate) fn new(
        client: Client,
        dir: String,
        chroot: Option<String>,
        lock_name: LockName,
        timeout: Duration,
    ) -> Self {
        ZkLeaderWatch {
            client,
            dir,
            chroot,
            lock_name,
            timeout,
            armed: None,
            stale: true,
        }
    }

    /// Read the line, arm the next watch, and return the leader.
    async fn read_and_arm(&mut self) -> Result<Option<LeaderInfo>> {
        for _ in 0..5 {
            let client = self.client.clone();
            let listed =
                tokio::time::timeout(self.timeout, client.get_and_watch_children(&self.dir))
                    .await
                    .map_err(|_| Error::Timeout {
                        operation: "watch candidates",
                        after: self.timeout,
                    })?;
            let (children, watcher) = match listed {
                Ok((children, _, watcher)) => (children, watcher),
                Err(zk::Error::NoNode) => {
                    let operation = "watch election directory";
                    let (stat, watcher) =
                        tokio::time::timeout(self.timeout, client.check_and_watch_stat(&self.dir))
                            .await
                            .map_err(|_| Error::Timeout {
                                operation,
                                after: self.timeout,
                            })?
                            .map_err(|e| map_err(operation, e))?;
                    if stat.is_some() {
                        // Created in between: list it.
                        continue;
                    }
                    // Nobody joined yet, unless the chroot itself is missing.
                    check_chroot(&client, self.chroot.as_deref(), self.timeout).await?;
                    self.armed = Some(Box::pin(watcher.changed()));
                    return Ok(None);
                }
                Err(e) => return Err(map_err("watch candidates", e)),
            };
            let full_dir = format!("{}{}", self.chroot.as_deref().unwrap_or(""), self.dir);
            let line = sorted_candidates(children, self.lock_name, &full_dir)?;
            let Some(first) = line.first() else {
                self.armed = Some(Box::pin(watcher.changed()));
                return Ok(None);
            };
            let path = format!("{}/{first}", self.dir);
            match tokio::time::timeout(self.timeout, client.get_and_watch_data(&path)).await {
                Err(_) => {
                    return Err(Error::Timeout {
                        operation: "read leader node",
                        after: self.timeout,
                    });
                }
                Ok(Ok((data, stat, data_watcher))) => {
                    // Whichever fires first: the line changed, or the
                    // leader's node changed (a new value, or deleted).
                    self.armed = Some(Box::pin(async move {
                        tokio::select! {
                            event = watcher.changed() => event,
                            event = data_watcher.changed() => event,
                        }
                    }));
                    let (id, value) = decode(&data);
                    let token = u64::try_from(stat.czxid).map_err(|_| Error::InvalidRecord {
                        backend: NAME,
                        path: path.clone(),
                        message: format!("negative czxid {}", stat.czxid),
                    })?;
                    return Ok(Some(LeaderInfo {
                        id,
                        value,
                        token: token.into(),
                    }));
                }
                // The leader left after the listing: the armed watch has
                // fired or will; read again.
                Ok(Err(zk::Error::NoNode)) => continue,
                Ok(Err(e)) => return Err(map_err("read leader node", e)),
            }
        }
        Err(Error::unavailable(
            NAME,
            format!(
                "the leader of {} changed 5 times while being read; retry",
                self.dir
            ),
        ))
    }
}

#[async_trait]
impl LeaderWatch for ZkLeaderWatch {
    async fn next(&mut self) -> Result<Option<LeaderInfo>> {
        if !self.stale {
            if let Some(armed) = self.armed.as_mut() {
                let event = armed.await;
                tracing::trace!(?event, "leader watch fired");
            }
            self.armed = None;
            self.stale = true;
        }
        let leader = self.read_and_arm().await?;
        self.stale = false;
        Ok(leader)
    }
}
