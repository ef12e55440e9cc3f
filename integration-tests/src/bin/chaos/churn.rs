//! `chaos churn`: a third client in the election's line, for the
//! `delete-leader` fault.
//!
//! It talks to the store with the store's own client (the `etcd-client`
//! crate, `zookeeper-client`), not through leasehold, as an operator's tool
//! or another service would. Every `--period-ms` it creates a claim in the
//! election's line and deletes it again: on etcd a key
//! `<prefix>/<election>/<its lease id, 16 hex digits>` holding a record
//! leasehold can read, on its own lease (so nothing outlives it by more than
//! the lease's 2 s); on ZooKeeper an ephemeral sequential node
//! `/<election>/_c_churn-<pid>-latch-<sequence>` (Curator's naming, as
//! leasehold's). Each round is two events in the line, which every watcher
//! of the line sees.
//!
//! On a line `delete-leader` on stdin it deletes the leader's claim by hand:
//! the first claim in line that is not its own (etcd: the lowest create
//! revision, deleted only if its create revision is still the one read;
//! ZooKeeper: the first by Curator's sort), and prints
//! `{"event":"deleted","token":T,"key":K,"sent":NS,"done":NS}` (the token is
//! the claim's create revision / czxid, which is the leader's fencing token;
//! the stamps are CLOCK_MONOTONIC before the delete was sent and after it
//! was answered), or `{"event":"no_leader"}`. stdin closed, or
//! `--max-seconds`, ends it (its own claim deleted).

use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio::time::{Instant, MissedTickBehavior, interval, timeout};

use crate::register::mono_ns;
use crate::stores::Backend;

/// What `chaos churn` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct ChurnArgs {
    pub(crate) backend: Backend,
    /// `host:port` of every member.
    pub(crate) endpoints: Vec<String>,
    pub(crate) election: String,
    pub(crate) period: Duration,
    pub(crate) max_life: Duration,
}

/// Each store call is bounded by this.
const CALL: Duration = Duration::from_secs(2);

fn emit(event: serde_json::Value) {
    println!("{event}");
}

/// The key range of an election in leasehold's etcd layout (default prefix).
fn etcd_range(election: &str) -> String {
    let escaped = election.replace('%', "%25").replace('/', "%2F");
    format!("/leasehold/{escaped}/")
}

enum Churner {
    Etcd {
        client: Box<etcd_client::Client>,
        range: String,
        key: String,
        record: Vec<u8>,
        lease: i64,
        keeper: etcd_client::LeaseKeeper,
        last_keep_alive: Instant,
    },
    Zk {
        client: leasehold_zookeeper::zookeeper_client::Client,
        dir: String,
        prefix: String,
        marker: String,
    },
}

/// What a hand deletion found and did.
struct Deleted {
    key: String,
    token: u64,
    sent: u64,
    done: u64,
}

impl Churner {
    async fn connect(a: &ChurnArgs) -> Result<Churner, String> {
        match a.backend {
            Backend::Etcd => {
                let mut client =
                    timeout(CALL * 5, etcd_client::Client::connect(&a.endpoints, None))
                        .await
                        .map_err(|_| "connecting to etcd timed out".to_owned())?
                        .map_err(|e| format!("cannot connect to etcd: {e}"))?;
                // The cluster may still be recovering from the last fault (a
                // member just restarted, a new raft leader): try a few times.
                let mut attempt = 0;
                let lease = loop {
                    attempt += 1;
                    let error = match timeout(CALL, client.lease_grant(2, None)).await {
                        Ok(Ok(grant)) => break grant.id(),
                        Ok(Err(e)) => format!("lease grant failed: {e}"),
                        Err(_) => "lease grant timed out".to_owned(),
                    };
                    if attempt >= 5 {
                        return Err(format!("{error} ({attempt} attempts)"));
                    }
                    eprintln!("chaos churn: {error}; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                };
                let (keeper, mut stream) = client
                    .lease_keep_alive(lease)
                    .await
                    .map_err(|e| format!("lease keep-alive failed: {e}"))?;
                // Drain the keep-alive answers in the background.
                tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
                let range = etcd_range(&a.election);
                let key = format!("{range}{:016x}", lease as u64);
                let record = br#"{"v":1,"id":"churn","value":""}"#.to_vec();
                Ok(Churner::Etcd {
                    client: Box::new(client),
                    range,
                    key,
                    record,
                    lease,
                    keeper,
                    last_keep_alive: Instant::now(),
                })
            }
            Backend::Zookeeper => {
                let hosts = a.endpoints.join(",");
                // Right after a restart-store the ensemble may need longer
                // than one session timeout to serve again (a loaded
                // machine): try again, as the etcd churner does its grant.
                let mut attempt = 0;
                let client = loop {
                    attempt += 1;
                    let error = match timeout(
                        CALL * 5,
                        leasehold_zookeeper::zookeeper_client::Client::connector()
                            .with_session_timeout(Duration::from_secs(4))
                            .connect(&hosts),
                    )
                    .await
                    {
                        Ok(Ok(client)) => break client,
                        Ok(Err(e)) => format!("cannot connect to ZooKeeper at {hosts}: {e}"),
                        Err(_) => "connecting to ZooKeeper timed out".to_owned(),
                    };
                    if attempt >= 5 {
                        return Err(format!("{error} ({attempt} attempts)"));
                    }
                    eprintln!("chaos churn: {error}; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                };
                let dir = format!("/{}", a.election);
                let marker = format!("_c_churn-{}-", std::process::id());
                let prefix = format!("{dir}/{marker}latch-");
                Ok(Churner::Zk {
                    client,
                    dir,
                    prefix,
                    marker,
                })
            }
            other => Err(format!(
                "churn is for etcd and ZooKeeper, not {}",
                other.name()
            )),
        }
    }

    /// One claim created and deleted again.
    async fn churn_once(&mut self) -> Result<(), String> {
        match self {
            Churner::Etcd {
                client,
                key,
                record,
                lease,
                keeper,
                last_keep_alive,
                ..
            } => {
                if last_keep_alive.elapsed() > Duration::from_millis(500) {
                    *last_keep_alive = Instant::now();
                    let _ = timeout(CALL, keeper.keep_alive()).await;
                }
                let put = etcd_client::PutOptions::new().with_lease(*lease);
                timeout(CALL, client.put(key.as_str(), record.clone(), Some(put)))
                    .await
                    .map_err(|_| "put timed out".to_owned())?
                    .map_err(|e| format!("put failed: {e}"))?;
                timeout(CALL, client.delete(key.as_str(), None))
                    .await
                    .map_err(|_| "delete timed out".to_owned())?
                    .map_err(|e| format!("delete failed: {e}"))?;
                Ok(())
            }
            Churner::Zk { client, prefix, .. } => {
                let mode = leasehold_zookeeper::zookeeper_client::CreateMode::EphemeralSequential
                    .with_acls(leasehold_zookeeper::zookeeper_client::Acls::anyone_all());
                let (_, sequence) = timeout(CALL, client.create(prefix, b"churn", &mode))
                    .await
                    .map_err(|_| "create timed out".to_owned())?
                    .map_err(|e| format!("create failed: {e}"))?;
                let path = format!("{prefix}{sequence}");
                timeout(CALL, client.delete(&path, None))
                    .await
                    .map_err(|_| "delete timed out".to_owned())?
                    .map_err(|e| format!("delete failed: {e}"))?;
                Ok(())
            }
        }
    }

    /// Deletes the first claim in line that is not ours.
    async fn delete_leader(&mut self) -> Result<Option<Deleted>, String> {
        match self {
            Churner::Etcd {
                client, range, key, ..
            } => {
                let get = etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_sort(
                        etcd_client::SortTarget::Create,
                        etcd_client::SortOrder::Ascend,
                    )
                    .with_limit(4);
                let answer = timeout(CALL, client.get(range.as_str(), Some(get)))
                    .await
                    .map_err(|_| "get timed out".to_owned())?
                    .map_err(|e| format!("get failed: {e}"))?;
                let Some(kv) = answer.kvs().iter().find(|kv| kv.key() != key.as_bytes()) else {
                    return Ok(None);
                };
                let leader = String::from_utf8_lossy(kv.key()).into_owned();
                let revision = kv.create_revision();
                let txn = etcd_client::Txn::new()
                    .when([etcd_client::Compare::create_revision(
                        leader.as_str(),
                        etcd_client::CompareOp::Equal,
                        revision,
                    )])
                    .and_then([etcd_client::TxnOp::delete(leader.as_str(), None)]);
                let sent = mono_ns();
                let done = timeout(CALL, client.txn(txn))
                    .await
                    .map_err(|_| "delete timed out".to_owned())?
                    .map_err(|e| format!("delete failed: {e}"))?;
                let at = mono_ns();
                if !done.succeeded() {
                    return Ok(None);
                }
                Ok(Some(Deleted {
                    key: leader,
                    token: revision as u64,
                    sent,
                    done: at,
                }))
            }
            Churner::Zk {
                client,
                dir,
                marker,
                ..
            } => {
                let children = timeout(CALL, client.list_children(dir))
                    .await
                    .map_err(|_| "list timed out".to_owned())?
                    .map_err(|e| format!("list failed: {e}"))?;
                // Curator's order: the text after the last `latch-`.
                let mut line: Vec<&String> = children
                    .iter()
                    .filter(|c| !c.contains(marker.as_str()) && c.rfind("latch-").is_some())
                    .collect();
                line.sort_by_key(|c| c.rfind("latch-").map(|at| c[at..].to_owned()));
                let Some(first) = line.first() else {
                    return Ok(None);
                };
                let path = format!("{dir}/{first}");
                let stat = timeout(CALL, client.check_stat(&path))
                    .await
                    .map_err(|_| "stat timed out".to_owned())?
                    .map_err(|e| format!("stat failed: {e}"))?;
                let Some(stat) = stat else {
                    return Ok(None);
                };
                let sent = mono_ns();
                let done = timeout(CALL, client.delete(&path, Some(stat.version)))
                    .await
                    .map_err(|_| "delete timed out".to_owned())?;
                let at = mono_ns();
                match done {
                    Ok(()) => Ok(Some(Deleted {
                        key: path,
                        token: stat.czxid as u64,
                        sent,
                        done: at,
                    })),
                    Err(
                        leasehold_zookeeper::zookeeper_client::Error::NoNode
                        | leasehold_zookeeper::zookeeper_client::Error::BadVersion,
                    ) => Ok(None),
                    Err(e) => Err(format!("delete failed: {e}")),
                }
            }
        }
    }

    async fn close(self) {
        match self {
            Churner::Etcd {
                mut client,
                key,
                lease,
                ..
            } => {
                let _ = timeout(CALL, client.delete(key.as_str(), None)).await;
                let _ = timeout(CALL, client.lease_revoke(lease)).await;
            }
            Churner::Zk { client, .. } => {
                // Closing the session deletes its ephemeral nodes.
                drop(client);
            }
        }
    }
}

/// Runs the churn client until stdin closes or `max_life` passes.
pub(crate) fn main(args: ChurnArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start tokio: {e}"))?;
    runtime.block_on(run(args))
}

async fn run(a: ChurnArgs) -> Result<(), String> {
    let mut churner = Churner::connect(&a).await?;
    emit(json!({"event": "ready"}));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut tick = interval(a.period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let end = Instant::now() + a.max_life;
    let (mut rounds, mut errors) = (0u64, 0u64);
    // Bounded by max_life (and the count: at most one round a millisecond).
    let max_rounds = a.max_life.as_millis() as u64 + 1;
    while Instant::now() < end && rounds + errors < max_rounds {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) if l.trim() == "delete-leader" => match churner.delete_leader().await {
                    Ok(Some(d)) => emit(json!({"event": "deleted", "key": d.key, "token": d.token, "sent": d.sent, "done": d.done})),
                    Ok(None) => emit(json!({"event": "no_leader"})),
                    Err(e) => emit(json!({"event": "delete_failed", "error": e})),
                },
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            },
            _ = tick.tick() => match churner.churn_once().await {
                Ok(()) => rounds += 1,
                Err(e) => {
                    errors += 1;
                    if errors <= 3 {
                        eprintln!("chaos churn: {e}");
                    }
                }
            },
        }
    }
    churner.close().await;
    emit(json!({"event": "done", "rounds": rounds, "errors": errors}));
    Ok(())
}
