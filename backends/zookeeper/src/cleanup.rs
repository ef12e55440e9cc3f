//! Deletes that must happen even when the call that wanted them cannot wait
//! (Apache Curator's "guaranteed delete").
//!
//! A ZooKeeper session outlives connection resets: the client reconnects
//! with the same session and keeps pinging, so an ephemeral node whose
//! delete was lost stays in the line for as long as the process runs, and
//! the next candidate waits behind it forever. Two cases:
//!
//! * a release or a withdrawal whose delete outcome is unknown (the
//!   connection broke with the request in flight, the call timed out or was
//!   cancelled): [`Target::Node`];
//! * a create whose answer never reached the engine (lost in a reset, timed
//!   out, cancelled, or an error after it): the node may exist without the
//!   engine knowing it. Its protected name `_c_<uuid>-latch-<seq>` finds it:
//!   [`Target::Created`]. A session's requests are answered in order, so a
//!   listing sent after the create sees the node if the create was applied.
//!
//! A [`Delete`] runs in a task of its own until the node is gone or its
//! session has ended (the server then deletes the session's ephemeral
//! nodes), retrying transient failures with a capped backoff.

use std::time::Duration;

use leasehold_core::{Error, Result};
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep, timeout};
use zookeeper_client as zk;
use zookeeper_client::Client;

use crate::backend::{NAME, map_err};

/// Attempts before giving up on a session that stays alive but keeps failing.
const MAX_ATTEMPTS: u32 = 10_000;
/// Time before giving up on a session that stays alive but keeps failing.
const MAX_TIME: Duration = Duration::from_secs(3600);
const FIRST_DELAY: Duration = Duration::from_millis(50);
const MAX_DELAY: Duration = Duration::from_secs(1);

/// What to delete.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// One candidate node. `version` guards against a node recreated under
    /// the same name (`None`: any version).
    Node { path: String, version: Option<i32> },
    /// The node, if any, that a create of `dir/_c_<protect>-latch-` made.
    Created { dir: String, protect: String },
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Node { path, .. } => path.clone(),
            Target::Created { dir, protect } => format!("{dir}/_c_{protect}-*"),
        }
    }
}

/// One guaranteed delete on one session.
pub(crate) struct Delete {
    client: Client,
    session: i64,
    target: Target,
    request_timeout: Duration,
}

enum Step {
    /// The node is gone (or never existed, or went with its session).
    Done,
    /// Try again after the backoff.
    Retry(Error),
    /// Try again at once (the target was narrowed down).
    Again,
    /// Retrying cannot help.
    Fatal(Error),
}

impl Delete {
    pub(crate) fn new(client: Client, target: Target, request_timeout: Duration) -> Delete {
        Delete {
            session: client.session_id().0,
            client,
            target,
            request_timeout,
        }
    }

    /// Start the delete in a task of its own; the receiver gets its outcome.
    /// Dropping the receiver does not stop it.
    pub(crate) fn spawn(self) -> oneshot::Receiver<Result<()>> {
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(self.run().await);
        });
        rx
    }

    /// Start the delete from a destructor: in a task when a tokio runtime is
    /// at hand, else log what is left behind.
    pub(crate) fn spawn_detached(self) {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(self.run());
            }
            Err(_) => tracing::warn!(
                node = %self.target.describe(),
                session = %format_args!("{:#x}", self.session),
                "no tokio runtime to delete a candidate node whose create answer was lost; it stays until the session ends"
            ),
        }
    }

    /// Delete until the node is gone or the session has ended; logs the
    /// outcome.
    async fn run(mut self) -> Result<()> {
        let started = Instant::now();
        let what = self.target.describe();
        let mut delay = FIRST_DELAY;
        let mut last = None;
        for attempt in 1..=MAX_ATTEMPTS {
            let state = self.client.state();
            if state.is_terminated() {
                tracing::debug!(node = %what, %state, "session ended; the server deletes its nodes");
                return Ok(());
            }
            match self.step().await {
                Step::Done => {
                    if attempt > 1 {
                        tracing::info!(node = %what, attempt, elapsed = ?started.elapsed(), "deleted after retrying");
                    }
                    return Ok(());
                }
                Step::Again => continue,
                Step::Fatal(e) => {
                    tracing::error!(node = %what, error = %e, "cannot delete the candidate node; it stays until its session ends");
                    return Err(e);
                }
                Step::Retry(e) => {
                    tracing::debug!(node = %what, attempt, error = %e, "delete not confirmed; retrying");
                    last = Some(e);
                }
            }
            if started.elapsed() + delay > MAX_TIME {
                break;
            }
            sleep(delay).await;
            delay = (delay * 2).min(MAX_DELAY);
        }
        let message = format!(
            "gave up deleting {what} after {:?} (last error: {}); it stays until ZooKeeper session {:#x} ends (drop the ZkBackend to end it)",
            started.elapsed(),
            last.map_or_else(|| "none".to_owned(), |e| e.to_string()),
            self.session
        );
        tracing::error!("{message}");
        Err(Error::unavailable(NAME, message))
    }

    async fn step(&mut self) -> Step {
        let bound = self.request_timeout;
        let timed_out = |operation| {
            Step::Retry(Error::Timeout {
                operation,
                after: bound,
            })
        };
        match self.target.clone() {
            Target::Node { path, version } => {
                match timeout(bound, self.client.delete(&path, version)).await {
                    Err(_) => timed_out("delete candidate node"),
                    Ok(Ok(())) => Step::Done,
                    Ok(Err(zk::Error::BadVersion)) => self.recheck(&path).await,
                    Ok(Err(e)) => classify("delete candidate node", e),
                }
            }
            Target::Created { dir, protect } => {
                match timeout(bound, self.client.list_children(&dir)).await {
                    Err(_) => timed_out("list candidates"),
                    Ok(Ok(children)) => {
                        let prefix = format!("_c_{protect}-");
                        match children.iter().find(|n| n.starts_with(&prefix)) {
                            None => Step::Done,
                            Some(name) => {
                                tracing::debug!(dir = %dir, node = %name, "found a candidate node whose create answer was lost; deleting it");
                                self.target = Target::Node {
                                    path: format!("{dir}/{name}"),
                                    version: None,
                                };
                                Step::Again
                            }
                        }
                    }
                    Ok(Err(e)) => classify("list candidates", e),
                }
            }
        }
    }

    /// The node's version changed: delete it only while it is still this
    /// session's node.
    async fn recheck(&mut self, path: &str) -> Step {
        match timeout(self.request_timeout, self.client.check_stat(path)).await {
            Err(_) => Step::Retry(Error::Timeout {
                operation: "check candidate node",
                after: self.request_timeout,
            }),
            Ok(Ok(Some(stat))) if stat.ephemeral_owner == self.session => {
                self.target = Target::Node {
                    path: path.to_owned(),
                    version: Some(stat.version),
                };
                Step::Again
            }
            Ok(Ok(_)) => Step::Done,
            Ok(Err(e)) => classify("check candidate node", e),
        }
    }
}

/// What a failed request means for the delete.
fn classify(operation: &'static str, e: zk::Error) -> Step {
    match e {
        // Gone already, or gone with its session.
        zk::Error::NoNode | zk::Error::SessionExpired | zk::Error::ClientClosed => Step::Done,
        e => {
            let err = map_err(operation, e);
            if err.is_transient() {
                Step::Retry(err)
            } else {
                Step::Fatal(err)
            }
        }
    }
}
