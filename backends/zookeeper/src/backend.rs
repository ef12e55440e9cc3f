//! The `Backend` implementation.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use leasehold_core::{
    AcquireOutcome, AcquireRequest, Backend, Capabilities, Claim, ElectionOptions, Error,
    FencingToken, LeaderInfo, LeaderWatch, Result,
};
use zookeeper_client as zk;
use zookeeper_client::{Acls, Client, CreateMode, Stat};

use crate::builder::{Config, ZkBackendBuilder};
use crate::node::{
    base_name, decode, election_dir, encode, node_prefix, sequence_of, sorted_candidates,
};
use crate::watch::ZkLeaderWatch;

pub(crate) const NAME: &str = "zookeeper";

/// How many times one call re-reads when the line changes under it (a
/// leader node deleted between listing and reading it).
const MAX_REREADS: usize = 5;

/// How many possibly-orphaned creations are remembered (see `Pending`).
const MAX_PENDING: usize = 64;

/// A node creation whose outcome is unknown (timed out, connection lost,
/// cancelled): the node may exist, ahead of this candidate's next one.
/// The next creation with the same data in the same directory on the same
/// session adopts it instead of queueing twice.
///
/// While the call that made the node runs, `owner` is alive and the node is
/// not an orphan (two calls of one candidate must not adopt each other's).
#[derive(Clone)]
struct Pending {
    session: i64,
    dir: String,
    /// `_c_<uuid>-latch-`: the node name without its sequence (unique).
    name_prefix: String,
    data: Vec<u8>,
    owner: Weak<()>,
}

/// The ZooKeeper backend: one client session, shared by every election run
/// through it. The session is the lease: the server deletes this backend's
/// candidate nodes when the session expires (no heartbeat for the negotiated
/// session timeout) or closes (the backend is dropped).
///
/// Build it with [`ZkBackend::builder`]. Cloning is not offered: share it as
/// `Arc<dyn Backend>`; one `ZkBackend` is one session.
pub struct ZkBackend {
    config: Arc<Config>,
    current: Mutex<Client>,
    reconnect: tokio::sync::Mutex<()>,
    pending: Mutex<Vec<Pending>>,
}

impl fmt::Debug for ZkBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let client = self.current();
        f.debug_struct("ZkBackend")
            .field("hosts", &self.config.hosts)
            .field("chroot", &self.config.chroot)
            .field("session", &format_args!("{:#x}", client.session_id().0))
            .field("session_state", &client.state())
            .field("session_timeout", &client.session_timeout())
            .field("digest", &self.config.digest)
            .finish()
    }
}

impl ZkBackend {
    /// A builder: connect string, session timeout, credentials.
    pub fn builder() -> ZkBackendBuilder {
        ZkBackendBuilder::new()
    }

    /// Connect with default settings to `connect_string`
    /// (`host:port[,host:port...][/chroot]`).
    ///
    /// # Errors
    /// As [`ZkBackendBuilder::connect`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn connect(connect_string: &str) -> Result<ZkBackend> {
        Self::builder()
            .connect_string(connect_string)
            .connect()
            .await
    }

    pub(crate) async fn open(config: Arc<Config>) -> Result<ZkBackend> {
        let client = open_session(&config).await?;
        Ok(ZkBackend {
            config,
            current: Mutex::new(client),
            reconnect: tokio::sync::Mutex::new(()),
            pending: Mutex::new(Vec::new()),
        })
    }

    /// The session timeout the server granted (it clamps the requested one
    /// to 2..20 × its tickTime). An election's ttl must not exceed it.
    pub fn session_timeout(&self) -> Duration {
        self.current().session_timeout()
    }

    /// The current session's id (it changes when an expired session is
    /// replaced).
    pub fn session_id(&self) -> i64 {
        self.current().session_id().0
    }

    /// The underlying `zookeeper-client` client of the current session, for
    /// whatever leasehold does not do. Nodes you create through it share
    /// this backend's session.
    pub fn client(&self) -> Client {
        self.current()
    }

    fn current(&self) -> Client {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn acls(&self) -> Acls<'_> {
        Acls::new(&self.config.acls)
    }

    fn request_timeout(&self, client: &Client) -> Duration {
        self.config
            .request_timeout
            .unwrap_or_else(|| (client.session_timeout() / 3).max(Duration::from_millis(100)))
    }

    fn dir(&self, election: &str) -> Result<String> {
        election_dir(election, self.config.chroot.is_none())
    }

    /// Run one request, bounded by the request timeout.
    async fn call<T>(
        &self,
        client: &Client,
        operation: &'static str,
        request: impl Future<Output = std::result::Result<T, zk::Error>>,
    ) -> Result<std::result::Result<T, zk::Error>> {
        let after = self.request_timeout(client);
        tokio::time::timeout(after, request)
            .await
            .map_err(|_| Error::Timeout { operation, after })
    }

    /// The current session's client, opening a new session when the current
    /// one has ended (expired, closed): observers and new candidates carry on
    /// after an expiry.
    async fn live_client(&self) -> Result<Client> {
        let client = self.current();
        if !client.state().is_terminated() {
            return Ok(client);
        }
        let _one_at_a_time = self.reconnect.lock().await;
        let client = self.current();
        let state = client.state();
        if !state.is_terminated() {
            return Ok(client);
        }
        tracing::info!(
            session = %client.session_id(),
            %state,
            "ZooKeeper session ended; opening a new one"
        );
        let fresh = open_session(&self.config).await?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = fresh.clone();
        let id = fresh.session_id().0;
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|p| p.session == id);
        Ok(fresh)
    }

    /// The client of the session `claim` lives in, or [`Error::Lost`] when
    /// that session has ended (its ephemeral node is gone with it).
    fn claim_client(&self, claim: &Claim) -> Result<Client> {
        let client = self.current();
        if client.session_id().0 != claim.session {
            return Err(Error::Lost(format!(
                "the ZooKeeper session {:#x} that held {} has ended (this backend now uses session {}); campaign again",
                claim.session,
                claim.key,
                client.session_id()
            )));
        }
        let state = client.state();
        if state.is_terminated() {
            return Err(Error::Lost(format!(
                "the ZooKeeper session {:#x} that held {} is {state}; campaign again",
                claim.session, claim.key
            )));
        }
        Ok(client)
    }

    fn check_ttl(&self, client: &Client, ttl: Duration) -> Result<()> {
        let negotiated = client.session_timeout();
        if ttl > negotiated {
            return Err(Error::invalid_option(
                "ttl",
                format!(
                    "{ttl:?} is longer than the ZooKeeper session timeout the server granted ({negotiated:?}, {:?} was requested): the server could expire the session before the leader's local deadline; use a ttl of at most {negotiated:?}, or ask for a longer session_timeout (the server allows 2 to 20 x its tickTime)",
                    self.config.session_timeout
                ),
            ));
        }
        Ok(())
    }

    /// Create this candidate's node (or adopt one an interrupted attempt
    /// left behind). The node stays remembered as pending until the caller
    /// has handed it to the engine (`forget`), so that a failure or a
    /// cancellation between here and there cannot leave it in the line.
    async fn create_claim(
        &self,
        client: &Client,
        dir: &str,
        req: &AcquireRequest,
        alive: &Arc<()>,
    ) -> Result<(Claim, Pending)> {
        let data = encode(&req.candidate, &req.value);
        let session = client.session_id().0;
        if let Some(adopted) = self
            .adopt_orphan(client, dir, &req.election, &data, alive)
            .await?
        {
            return Ok(adopted);
        }
        let protect = uuid::Uuid::new_v4().to_string();
        let prefix = node_prefix(dir, &protect);
        let pending = Pending {
            session,
            dir: dir.to_owned(),
            name_prefix: base_name(&prefix).to_owned(),
            data: data.clone(),
            owner: Arc::downgrade(alive),
        };
        self.remember(pending.clone());
        let mode = CreateMode::EphemeralSequential.with_acls(self.acls());
        let dir_mode = CreateMode::Container.with_acls(self.acls());
        for _ in 0..3 {
            let outcome = self
                .call(
                    client,
                    "create candidate node",
                    client.create(&prefix, &data, &mode),
                )
                .await?;
            match outcome {
                Ok((stat, sequence)) => {
                    let claim = Claim {
                        election: req.election.clone(),
                        key: format!("{prefix}{sequence}"),
                        session,
                        token: token_of(&stat, &prefix)?,
                        version: i64::from(stat.version),
                    };
                    return Ok((claim, pending));
                }
                Err(zk::Error::NoNode) => {
                    // The election directory does not exist (yet, or any
                    // more: an empty container is reaped by the server).
                    match self
                        .call(
                            client,
                            "create election directory",
                            client.mkdir(dir, &dir_mode),
                        )
                        .await?
                    {
                        Ok(()) => {}
                        Err(e) => {
                            self.forget(&pending);
                            return Err(map_err("create election directory", e));
                        }
                    }
                }
                Err(e) => {
                    if !ambiguous(&e) {
                        self.forget(&pending);
                    }
                    return Err(map_err("create candidate node", e));
                }
            }
        }
        self.forget(&pending);
        Err(Error::Unavailable {
            backend: NAME,
            message: format!(
                "the election directory {dir} kept disappearing while creating a candidate node; retry"
            ),
        })
    }

    fn remember(&self, p: Pending) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.len() >= MAX_PENDING {
            pending.remove(0);
        }
        pending.push(p);
    }

    fn forget(&self, p: &Pending) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|q| q.name_prefix != p.name_prefix);
    }

    /// A node from an earlier attempt of the same candidate that never
    /// reached the engine (the reply was lost, the call timed out or was
    /// cancelled) would sit in the line, owned by this session, until the
    /// session ends. Find it and take it as this candidate's claim.
    async fn adopt_orphan(
        &self,
        client: &Client,
        dir: &str,
        election: &str,
        data: &[u8],
        alive: &Arc<()>,
    ) -> Result<Option<(Claim, Pending)>> {
        let session = client.session_id().0;
        let suspects: Vec<Pending> = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|p| {
                p.session == session
                    && p.dir == dir
                    && p.data == data
                    && p.owner.strong_count() == 0
            })
            .cloned()
            .collect();
        if suspects.is_empty() {
            return Ok(None);
        }
        // Requests of one session are ordered: a creation still in flight is
        // applied before this listing is answered.
        let children = match self
            .call(client, "list candidates", client.list_children(dir))
            .await?
        {
            Ok(children) => children,
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => return Err(map_err("list candidates", e)),
        };
        let mut adopted = None;
        for p in &suspects {
            let found = children
                .iter()
                .find(|n| n.starts_with(&p.name_prefix) && sequence_of(n).is_some());
            if let Some(name) = found {
                let path = format!("{dir}/{name}");
                let stat = match self
                    .call(client, "read candidate node", client.check_stat(&path))
                    .await?
                {
                    Ok(stat) => stat,
                    Err(e) => return Err(map_err("read candidate node", e)),
                };
                if let Some(stat) = stat.filter(|s| s.ephemeral_owner == session) {
                    if adopted.is_none() {
                        tracing::debug!(%path, "adopting a candidate node left by an interrupted attempt");
                        let claim = Claim {
                            election: election.to_owned(),
                            key: path,
                            session,
                            token: token_of(&stat, name)?,
                            version: i64::from(stat.version),
                        };
                        // Stays pending, now owned by this call, until
                        // handed to the engine.
                        let owner = Arc::downgrade(alive);
                        for q in self
                            .pending
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .iter_mut()
                            .filter(|q| q.name_prefix == p.name_prefix)
                        {
                            q.owner = owner.clone();
                        }
                        adopted = Some((claim, p.clone()));
                        continue;
                    } else {
                        // A second orphan of the same candidate: leave the line.
                        let _ = self
                            .call(client, "delete candidate node", client.delete(&path, None))
                            .await;
                    }
                }
            }
            self.forget(p);
        }
        Ok(adopted)
    }

    /// Where `claim` stands: first in line (leader) or behind someone.
    async fn evaluate(&self, client: &Client, dir: &str, claim: Claim) -> Result<AcquireOutcome> {
        let own = base_name(&claim.key).to_owned();
        for _ in 0..MAX_REREADS {
            let children = match self
                .call(client, "list candidates", client.list_children(dir))
                .await?
            {
                Ok(children) => children,
                Err(zk::Error::NoNode) => return Err(node_gone(&claim)),
                Err(e) => return Err(claim_err("list candidates", &claim, e)),
            };
            let line = sorted_candidates(children);
            let Some(position) = line.iter().position(|(_, name)| *name == own) else {
                return Err(node_gone(&claim));
            };
            if position == 0 {
                return Ok(AcquireOutcome::Acquired(claim));
            }
            let leader_path = format!("{dir}/{}", line[0].1);
            match self
                .call(client, "read leader node", client.get_data(&leader_path))
                .await?
            {
                Ok((data, stat)) => {
                    let leader = leader_info(&data, &stat, &leader_path)?;
                    return Ok(AcquireOutcome::Held {
                        leader: Some(leader),
                        queued: Some(claim),
                        revision: stat.czxid,
                    });
                }
                // The leader left between the two reads: look again.
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(claim_err("read leader node", &claim, e)),
            }
        }
        // The line keeps moving; report the place without a leader, the
        // engine waits (on the predecessor) and asks again.
        Ok(AcquireOutcome::Held {
            leader: None,
            queued: Some(claim),
            revision: 0,
        })
    }

    /// The first candidate in `dir`, if any.
    pub(crate) async fn read_leader(
        &self,
        client: &Client,
        dir: &str,
    ) -> Result<Option<LeaderInfo>> {
        for _ in 0..MAX_REREADS {
            let children = match self
                .call(client, "list candidates", client.list_children(dir))
                .await?
            {
                Ok(children) => children,
                Err(zk::Error::NoNode) => return Ok(None),
                Err(e) => return Err(map_err("list candidates", e)),
            };
            let line = sorted_candidates(children);
            let Some((_, first)) = line.first() else {
                return Ok(None);
            };
            let path = format!("{dir}/{first}");
            match self
                .call(client, "read leader node", client.get_data(&path))
                .await?
            {
                Ok((data, stat)) => return Ok(Some(leader_info(&data, &stat, &path)?)),
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(map_err("read leader node", e)),
            }
        }
        Err(Error::Unavailable {
            backend: NAME,
            message: format!(
                "the leader of {dir} changed {MAX_REREADS} times while being read; retry"
            ),
        })
    }
}

#[async_trait]
impl Backend for ZkBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(true, true, true)
    }

    fn validate(&self, options: &ElectionOptions) -> Result<()> {
        self.dir(&options.election)?;
        self.check_ttl(&self.current(), options.ttl)
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<AcquireOutcome> {
        let dir = self.dir(&req.election)?;
        match &req.claim {
            None => {
                let client = self.live_client().await?;
                self.check_ttl(&client, req.ttl)?;
                // Alive for as long as this call runs (dropped if cancelled).
                let alive = Arc::new(());
                let (claim, pending) = self.create_claim(&client, &dir, req, &alive).await?;
                let outcome = self.evaluate(&client, &dir, claim).await;
                // Handed to the engine (or gone): no longer an orphan.
                if matches!(outcome, Ok(_) | Err(Error::Lost(_))) {
                    self.forget(&pending);
                }
                outcome
            }
            Some(claim) => {
                let client = self.claim_client(claim)?;
                if claim.election != req.election {
                    return Err(Error::invalid_option(
                        "claim",
                        format!(
                            "the claim {} belongs to election {:?}, not {:?}",
                            claim.key, claim.election, req.election
                        ),
                    ));
                }
                self.evaluate(&client, &dir, claim.clone()).await
            }
        }
    }

    async fn renew(&self, claim: &Claim) -> Result<Claim> {
        let client = self.claim_client(claim)?;
        // One round trip that proves the session is alive on the server now
        // and that the node is still there (and still ours).
        match self
            .call(
                &client,
                "check candidate node",
                client.check_stat(&claim.key),
            )
            .await?
        {
            Ok(Some(stat)) if stat.ephemeral_owner == claim.session => Ok(Claim {
                version: i64::from(stat.version),
                ..claim.clone()
            }),
            Ok(Some(stat)) => Err(Error::Lost(format!(
                "{} now belongs to session {:#x}, not {:#x}",
                claim.key, stat.ephemeral_owner, claim.session
            ))),
            Ok(None) => Err(node_gone(claim)),
            Err(e) => Err(claim_err("check candidate node", claim, e)),
        }
    }

    async fn release(&self, claim: &Claim) -> Result<()> {
        // A claim of an ended session went with it (the server deletes the
        // ephemeral nodes of expired and closed sessions); a claim of another
        // backend's session is not ours to touch.
        let Ok(client) = self.claim_client(claim) else {
            return Ok(());
        };
        // The path names this claim alone (random uuid + sequence); the
        // version check guards against a node recreated under the same name.
        let version = i32::try_from(claim.version).ok();
        let outcome = self
            .call(
                &client,
                "delete candidate node",
                client.delete(&claim.key, version),
            )
            .await?;
        match outcome {
            Ok(()) | Err(zk::Error::NoNode | zk::Error::SessionExpired) => Ok(()),
            Err(zk::Error::BadVersion) => {
                // Someone rewrote the node's data; delete it only if it is
                // still this session's ephemeral node.
                match self
                    .call(
                        &client,
                        "check candidate node",
                        client.check_stat(&claim.key),
                    )
                    .await?
                {
                    Ok(Some(stat)) if stat.ephemeral_owner == claim.session => {
                        match self
                            .call(
                                &client,
                                "delete candidate node",
                                client.delete(&claim.key, Some(stat.version)),
                            )
                            .await?
                        {
                            Ok(()) | Err(zk::Error::NoNode) => Ok(()),
                            Err(e) => Err(map_err("delete candidate node", e)),
                        }
                    }
                    Ok(_) | Err(zk::Error::NoNode) => Ok(()),
                    Err(e) => Err(map_err("check candidate node", e)),
                }
            }
            Err(e) => Err(map_err("delete candidate node", e)),
        }
    }

    async fn leader(&self, election: &str) -> Result<Option<LeaderInfo>> {
        let dir = self.dir(election)?;
        let client = self.live_client().await?;
        self.read_leader(&client, &dir).await
    }

    async fn wait(&self, election: &str, claim: Option<&Claim>, _revision: i64) -> Result<()> {
        let dir = self.dir(election)?;
        let Some(claim) = claim else {
            // No place in line: wake on any change of the line.
            let client = self.live_client().await?;
            let watcher = match self
                .call(
                    &client,
                    "watch candidates",
                    client.get_and_watch_children(&dir),
                )
                .await?
            {
                Ok((_, _, watcher)) => watcher,
                Err(zk::Error::NoNode) => {
                    match self
                        .call(
                            &client,
                            "watch election directory",
                            client.check_and_watch_stat(&dir),
                        )
                        .await?
                    {
                        Ok((Some(_), _)) => return Ok(()),
                        Ok((None, watcher)) => watcher,
                        Err(e) => return Err(map_err("watch election directory", e)),
                    }
                }
                Err(e) => return Err(map_err("watch candidates", e)),
            };
            watcher.changed().await;
            return Ok(());
        };
        // A dead claim wakes at once: try_acquire then says it is lost.
        let Ok(client) = self.claim_client(claim) else {
            return Ok(());
        };
        let own = base_name(&claim.key);
        for _ in 0..MAX_REREADS {
            let children = match self
                .call(&client, "list candidates", client.list_children(&dir))
                .await?
            {
                Ok(children) => children,
                Err(zk::Error::NoNode | zk::Error::SessionExpired) => return Ok(()),
                Err(e) => return Err(map_err("list candidates", e)),
            };
            let line = sorted_candidates(children);
            let Some(position) = line.iter().position(|(_, name)| name == own) else {
                return Ok(());
            };
            if position == 0 {
                return Ok(());
            }
            // Watch only the node just ahead: no herd when the leader goes.
            let predecessor = format!("{dir}/{}", line[position - 1].1);
            match self
                .call(
                    &client,
                    "watch predecessor",
                    client.check_and_watch_stat(&predecessor),
                )
                .await?
            {
                Ok((Some(_), watcher)) => {
                    watcher.changed().await;
                    return Ok(());
                }
                // Gone already: look again (maybe we lead now, maybe there
                // is a new predecessor).
                Ok((None, _)) => continue,
                Err(zk::Error::SessionExpired) => return Ok(()),
                Err(e) => return Err(map_err("watch predecessor", e)),
            }
        }
        Ok(())
    }

    async fn watch(&self, election: &str) -> Result<Box<dyn LeaderWatch>> {
        let dir = self.dir(election)?;
        let client = self.live_client().await?;
        let timeout = self.request_timeout(&client);
        Ok(Box::new(ZkLeaderWatch::new(client, dir, timeout)))
    }
}

/// Open a session (and create the chroot when missing).
async fn open_session(config: &Config) -> Result<Client> {
    let mut connector = Client::connector().with_session_timeout(config.session_timeout);
    if let Some(d) = &config.digest {
        connector = connector.with_auth("digest", format!("{}:{}", d.user, d.password).as_bytes());
    }
    let bound = config.connect_timeout.unwrap_or(config.session_timeout);
    let client = tokio::time::timeout(bound, connector.connect(&config.hosts))
        .await
        .map_err(|_| Error::Timeout {
            operation: "connect to ZooKeeper",
            after: bound,
        })?
        .map_err(|e| Error::Unavailable {
            backend: NAME,
            message: format!("cannot open a session with {}: {e}", config.hosts),
        })?;
    let negotiated = client.session_timeout();
    if negotiated != config.session_timeout {
        tracing::warn!(
            requested = ?config.session_timeout,
            ?negotiated,
            "the ZooKeeper server changed the session timeout (it allows 2 to 20 x its tickTime); election ttls must not exceed the negotiated value"
        );
    }
    let Some(chroot) = &config.chroot else {
        return Ok(client);
    };
    let request_bound = config.request_timeout.unwrap_or(negotiated / 3);
    let mode = CreateMode::Persistent.with_acls(Acls::new(&config.acls));
    tokio::time::timeout(request_bound, client.mkdir(chroot, &mode))
        .await
        .map_err(|_| Error::Timeout {
            operation: "create chroot",
            after: request_bound,
        })?
        .map_err(|e| map_err("create chroot", e))?;
    client
        .chroot(chroot.clone())
        .map_err(|_| Error::Config(format!("ZooKeeper refused the chroot {chroot:?}")))
}

/// The fencing token of a node: its creation zxid.
fn token_of(stat: &Stat, path: &str) -> Result<FencingToken> {
    u64::try_from(stat.czxid)
        .map(FencingToken)
        .map_err(|_| Error::InvalidRecord {
            backend: NAME,
            path: path.to_owned(),
            message: format!("negative czxid {}", stat.czxid),
        })
}

fn leader_info(data: &[u8], stat: &Stat, path: &str) -> Result<LeaderInfo> {
    let (id, value) = decode(data);
    Ok(LeaderInfo {
        id,
        value,
        token: token_of(stat, path)?,
    })
}

fn node_gone(claim: &Claim) -> Error {
    Error::Lost(format!(
        "the candidate node {} no longer exists (its session {:#x} expired or it was deleted); campaign again",
        claim.key, claim.session
    ))
}

/// `true` when a failed write may still have been applied.
fn ambiguous(e: &zk::Error) -> bool {
    matches!(e, zk::Error::ConnectionLoss | zk::Error::Timeout)
}

/// Map an error of a call made for `claim`: an expired session means the
/// claim is lost.
fn claim_err(operation: &'static str, claim: &Claim, e: zk::Error) -> Error {
    match e {
        zk::Error::SessionExpired => Error::Lost(format!(
            "the ZooKeeper session {:#x} that held {} expired",
            claim.session, claim.key
        )),
        e => map_err(operation, e),
    }
}

/// Map a `zookeeper-client` error into leasehold's, keeping its message.
pub(crate) fn map_err(operation: &'static str, e: zk::Error) -> Error {
    use zk::Error as Z;
    match e {
        Z::ConnectionLoss
        | Z::Timeout
        | Z::NoHosts
        | Z::Throttled
        | Z::ClientClosed
        | Z::SessionMoved
        | Z::SessionExpired
        | Z::NotReadOnly => Error::Unavailable {
            backend: NAME,
            message: format!("{operation}: {e}"),
        },
        Z::NoAuth => Error::PermissionDenied {
            backend: NAME,
            message: format!(
                "{operation}: {e}: the node's ACL does not grant this client the right; connect with the digest credentials that created the election (ZkBackend::builder().digest_auth(..))"
            ),
        },
        Z::AuthFailed => Error::PermissionDenied {
            backend: NAME,
            message: format!("{operation}: {e}: check the digest credentials"),
        },
        Z::InvalidAcl => Error::PermissionDenied {
            backend: NAME,
            message: format!(
                "{operation}: {e}: the server refused the ACL leasehold asked for (`auth` ACLs need an authenticated session)"
            ),
        },
        Z::NoChildrenForEphemerals => Error::InvalidRecord {
            backend: NAME,
            path: String::new(),
            message: format!(
                "{operation}: {e}: a parent of the election directory is an ephemeral node; use another election name"
            ),
        },
        e => Error::Backend {
            backend: NAME,
            message: format!("{operation}: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_right_kind() {
        assert!(map_err("x", zk::Error::ConnectionLoss).is_transient());
        assert!(map_err("x", zk::Error::Timeout).is_transient());
        assert!(matches!(
            map_err("x", zk::Error::NoAuth),
            Error::PermissionDenied { .. }
        ));
        let claim = Claim {
            election: "e".into(),
            key: "/e/n".into(),
            session: 1,
            token: FencingToken(1),
            version: 0,
        };
        assert!(claim_err("x", &claim, zk::Error::SessionExpired).is_lost());
        assert!(!claim_err("x", &claim, zk::Error::ConnectionLoss).is_lost());
        let msg = map_err("delete candidate node", zk::Error::NoAuth).to_string();
        assert!(
            msg.contains("delete candidate node") && msg.contains("digest_auth"),
            "{msg}"
        );
    }
}
