//! The `Backend` implementation.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use leasehold_core::{
    AcquireRequest, Backend, Claim, ElectionOptions, Error, Family, FencingToken, LeaderInfo,
    LeaderWatch, LeasePlan, ListParticipants, ParticipantsWatch, Proclaim, QueueOutcome,
    QueueStore, Result, SessionScope, WatchLeader,
};
use zookeeper_client as zk;
use zookeeper_client::{Acls, Client, CreateMode, Stat};

use crate::builder::{Config, ZkBackendBuilder};
use crate::cleanup::{Delete, Target};
use crate::line::ZkLineWatch;
use crate::node::{base_name, decode, election_dir, encode, node_prefix, sorted_candidates};
use crate::watch::ZkLeaderWatch;

pub(crate) const NAME: &str = "zookeeper";

/// How many times one call re-reads when the line changes under it (a
/// leader node deleted between listing and reading it).
const MAX_REREADS: usize = 5;

/// How many events of its own node (a proclaim's data change) one
/// [`QueueStore::watch_claim`] call re-arms after; the line's events do not count.
const MAX_OWN_NODE_EVENTS: usize = 100;

/// The ZooKeeper backend: one client session, shared by every election run
/// through it. The session is the lease: the server deletes this backend's
/// candidate nodes when the session expires (no heartbeat for the negotiated
/// session timeout) or closes (the backend is dropped).
///
/// The client's pings keep the session alive. A waiting candidate sends
/// nothing else (its predecessor's exists-watch and the session's events
/// wake it). While electors lead through this backend, the engine proves
/// the session at the quorum once per renew interval for all of them (one
/// `sync`, [`QueueStore::keep_alive`]), and each leader's exists-watch on its
/// own node ends its term at once when the node is deleted.
///
/// Build it with [`ZkBackend::builder`]. Cloning is not offered: share it as
/// `Arc<dyn Backend>`; one `ZkBackend` is one session.
pub struct ZkBackend {
    config: Arc<Config>,
    current: Mutex<Client>,
    reconnect: tokio::sync::Mutex<()>,
    /// The shortest `request_timeout` of the elections validated on this
    /// backend (nanoseconds; `u64::MAX`: none yet): the engine's bound on
    /// `release`, which answers well within it.
    engine_bound: AtomicU64,
    /// The longest [`ZkBackend::min_session_timeout`] of the elections
    /// validated on this backend (nanoseconds; 0: none yet): a replacement
    /// session opened after an expiry must be granted at least this.
    needed_session: AtomicU64,
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
    /// As [`ZkBackendBuilder::build`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn connect(connect_string: &str) -> Result<ZkBackend> {
        Self::builder().connect_string(connect_string).build().await
    }

    pub(crate) async fn open(config: Arc<Config>) -> Result<ZkBackend> {
        let client = open_session(&config).await?;
        Ok(ZkBackend {
            config,
            current: Mutex::new(client),
            reconnect: tokio::sync::Mutex::new(()),
            engine_bound: AtomicU64::new(u64::MAX),
            needed_session: AtomicU64::new(0),
        })
    }

    /// The session timeout the server granted (it clamps the requested one
    /// to 2..20 × its tickTime). It must cover
    /// [`min_session_timeout`](Self::min_session_timeout) of every election
    /// run through this backend.
    pub fn session_timeout(&self) -> Duration {
        self.current().session_timeout()
    }

    /// The session timeout for `options`: the ttl (rounded up to the
    /// millisecond). The ttl is the failover bound, and the session is the
    /// lease: a crashed leader's session expires a session timeout after its
    /// last touch (plus the server's tick). `Backend::validate` refuses a
    /// ttl longer than the session the server granted; a longer session is
    /// safe but makes failover take that long.
    ///
    /// The leader's local deadline comes out of the ttl instead
    /// ([`LeasePlan`]): `ttl - safety_margin - max(renew_interval, ttl x
    /// 3/20)`. A renewal's session touch reaches the ZooKeeper leader only
    /// with the member's next ping reply; a member cut off from its peers
    /// right after a renewal passed never delivers it, and the ZooKeeper
    /// leader then counts the session from the touch before (one renew
    /// interval, or one idle ping of the client, earlier). See
    /// docs/zookeeper.md.
    ///
    /// ```
    /// use std::time::Duration;
    /// use leasehold_core::ElectionOptions;
    /// use leasehold_zookeeper::ZkBackend;
    ///
    /// let options = ElectionOptions::new("orders", "node-1").with_ttl(Duration::from_secs(4));
    /// assert_eq!(ZkBackend::min_session_timeout(&options), Duration::from_secs(4));
    /// // The leader's deadline: 4 s - 400 ms margin - 1 s renew interval.
    /// assert_eq!(ZkBackend::lease_plan_for(&options).lifetime(&options), Duration::from_millis(2600));
    /// ```
    pub fn min_session_timeout(options: &ElectionOptions) -> Duration {
        round_up_ms(options.ttl)
    }

    /// The [`LeasePlan`] of `options` on ZooKeeper (what
    /// [`Backend::lease_plan`] returns): a session of the ttl, counted from
    /// up to `max(renew_interval, ttl x 3/20)` before a renewal's send.
    pub fn lease_plan_for(options: &ElectionOptions) -> LeasePlan {
        LeasePlan::new(options.ttl, proof_gap(options))
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

    /// `path` as the server knows it (with the chroot), for messages.
    fn full_path(&self, path: &str) -> String {
        format!("{}{path}", self.config.chroot.as_deref().unwrap_or(""))
    }

    /// The children of `dir` in Curator's order, first (the leader) first.
    ///
    /// # Errors
    /// [`Error::InvalidRecord`] when a child is not a candidate node under
    /// this backend's lock name.
    fn line(&self, children: Vec<String>, dir: &str) -> Result<Vec<String>> {
        sorted_candidates(children, self.config.lock_name, &self.full_path(dir))
    }

    /// Map an error of a request on `path`, naming the path.
    fn at(&self, operation: &'static str, path: &str, e: zk::Error) -> Error {
        with_path(map_err(operation, e), &self.full_path(path))
    }

    /// [`Error::Config`] naming the chroot when it does not exist on the
    /// server: the operator creates it, leasehold never does (a misspelled
    /// chroot must not read as an election nobody has joined).
    async fn check_chroot(&self, client: &Client) -> Result<()> {
        check_chroot(
            client,
            self.config.chroot.as_deref(),
            self.request_timeout(client),
        )
        .await
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

    /// The client of session `session`, or [`Error::Lost`] when that session
    /// has ended.
    fn session_client(&self, session: i64) -> Result<Client> {
        let client = self.current();
        let state = client.state();
        if client.session_id().0 != session || state.is_terminated() {
            return Err(Error::Lost(format!(
                "the ZooKeeper session {session:#x} has ended (this backend's session is now {} and {state}); campaign again",
                client.session_id()
            )));
        }
        Ok(client)
    }

    /// Create a candidate node for `req` in `client`'s session, then where it
    /// stands.
    async fn create_and_evaluate(
        &self,
        client: Client,
        dir: String,
        req: &AcquireRequest,
    ) -> Result<QueueOutcome> {
        self.check_session(&client, req.ttl)?;
        // Until the engine has the claim, a node this call creates
        // is nobody's: if the call fails after the create may have
        // been applied, or is cancelled, the guard finds the node by
        // its protected name and deletes it in the background.
        let protect = uuid::Uuid::new_v4().to_string();
        let guard = Unclaimed(Some(Delete::new(
            client.clone(),
            Target::Created {
                dir: dir.clone(),
                protect: protect.clone(),
            },
            self.request_timeout(&client),
        )));
        let outcome = match self.create_claim(&client, &dir, &protect, req).await {
            Ok(claim) => self.evaluate(&client, &dir, claim, req.permits).await,
            // Refused (no permission, no chroot, ...): nothing was
            // created. Only an unanswered create may have been applied.
            Err(e) if !e.is_transient() => {
                guard.disarm();
                return Err(e);
            }
            Err(e) => Err(e),
        };
        // Handed to the engine, or gone with its session.
        if matches!(outcome, Ok(_) | Err(Error::Lost(_))) {
            guard.disarm();
        }
        outcome
    }

    fn check_ttl(&self, client: &Client, ttl: Duration) -> Result<()> {
        let negotiated = client.session_timeout();
        if round_up_ms(ttl) > negotiated {
            return Err(Error::invalid_option(
                "ttl",
                format!(
                    "{ttl:?} is longer than the ZooKeeper session timeout the server granted ({negotiated:?}, {:?} was requested): the session is the lease and must last the ttl; use a ttl of at most {negotiated:?}, or ask for a session_timeout of {:?} (the server allows 2 to 20 x its tickTime)",
                    self.config.session_timeout,
                    round_up_ms(ttl)
                ),
            ));
        }
        Ok(())
    }

    /// [`check_ttl`](Self::check_ttl), and that `client`'s session (a
    /// replacement, when the one `validate` checked expired) is still as
    /// long as every election validated on this backend needs: the server
    /// may grant a new session less than the last (its `maxSessionTimeout`
    /// or `tickTime` changed, or another member of the ensemble is
    /// configured differently).
    fn check_session(&self, client: &Client, ttl: Duration) -> Result<()> {
        self.check_ttl(client, ttl)?;
        let needed = Duration::from_nanos(self.needed_session.load(Ordering::Relaxed));
        let granted = client.session_timeout();
        if granted < needed {
            return Err(Error::invalid_option(
                "session_timeout",
                format!(
                    "the ZooKeeper server granted session {} a timeout of {granted:?} ({:?} was requested), but the elections on this backend need at least {needed:?} (their longest ttl, ZkBackend::min_session_timeout; the session the elections were checked against was long enough, so the server now grants less: its maxSessionTimeout or tickTime changed, or the members of the ensemble are configured differently); no candidate node was created; make the server allow a session of {needed:?} or more (maxSessionTimeout, by default 20 x tickTime), or lower the ttl",
                    client.session_id(),
                    self.config.session_timeout
                ),
            ));
        }
        Ok(())
    }

    /// Create this candidate's node `<dir>/_c_<protect>-<lock name><seq>`,
    /// creating the election directory when it is missing.
    async fn create_claim(
        &self,
        client: &Client,
        dir: &str,
        protect: &str,
        req: &AcquireRequest,
    ) -> Result<Claim> {
        let data = encode(&req.candidate, &req.value);
        let session = client.session_id().0;
        let prefix = node_prefix(dir, protect, self.config.lock_name);
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
                    return Ok(Claim {
                        election: req.election.clone(),
                        key: format!("{prefix}{sequence}"),
                        session,
                        owner: String::new(),
                        token: token_of(&stat, &prefix)?,
                        version: i64::from(stat.version),
                    });
                }
                Err(zk::Error::NoNode) => {
                    // The election directory does not exist (yet, or any
                    // more: an empty container is reaped by the server).
                    // `mkdir` creates it and its parents below the chroot,
                    // never the chroot itself.
                    match self
                        .call(
                            client,
                            "create election directory",
                            client.mkdir(dir, &dir_mode),
                        )
                        .await?
                    {
                        Ok(()) => {}
                        Err(zk::Error::NoNode) => {
                            self.check_chroot(client).await?;
                            return Err(self.at(
                                "create election directory",
                                dir,
                                zk::Error::NoNode,
                            ));
                        }
                        Err(e) => return Err(self.at("create election directory", dir, e)),
                    }
                }
                Err(e) => return Err(self.at("create candidate node in", dir, e)),
            }
        }
        Err(Error::unavailable(
            NAME,
            format!(
                "the election directory {} kept disappearing while creating a candidate node; retry",
                self.full_path(dir)
            ),
        ))
    }

    /// Where `claim` stands: among the first `permits` in line (holding;
    /// first in line for an election) or behind them.
    async fn evaluate(
        &self,
        client: &Client,
        dir: &str,
        claim: Claim,
        permits: u32,
    ) -> Result<QueueOutcome> {
        let own = base_name(&claim.key).to_owned();
        for _ in 0..MAX_REREADS {
            let children = match self
                .call(client, "list candidates", client.list_children(dir))
                .await?
            {
                Ok(children) => children,
                Err(zk::Error::NoNode) => return Err(node_gone(&claim)),
                Err(zk::Error::SessionExpired) => {
                    return Err(claim_err(
                        "list candidates",
                        &claim,
                        zk::Error::SessionExpired,
                    ));
                }
                Err(e) => return Err(self.at("list candidates of", dir, e)),
            };
            let line = self.line(children, dir)?;
            let Some(position) = line.iter().position(|name| *name == own) else {
                return Err(node_gone(&claim));
            };
            if position < permits.max(1) as usize {
                return Ok(QueueOutcome::Acquired(claim));
            }
            let leader_path = format!("{dir}/{}", line[0]);
            match self
                .call(client, "read leader node", client.get_data(&leader_path))
                .await?
            {
                Ok((data, stat)) => {
                    let leader = leader_info(&data, &stat, &leader_path)?;
                    return Ok(QueueOutcome::Queued {
                        leader: Some(leader),
                        claim,
                    });
                }
                // The leader left between the two reads: look again.
                Err(zk::Error::NoNode) => continue,
                Err(zk::Error::SessionExpired) => {
                    return Err(claim_err(
                        "read leader node",
                        &claim,
                        zk::Error::SessionExpired,
                    ));
                }
                Err(e) => return Err(self.at("read leader node", &leader_path, e)),
            }
        }
        // The line keeps moving; report the place without a leader, the
        // engine waits (on the predecessor) and asks again.
        Ok(QueueOutcome::Queued {
            leader: None,
            claim,
        })
    }

    /// Watch the line of `dir` for a node under another lock name, for as
    /// long as the caller polls: each event of the line is a fresh listing
    /// and a new children watch. Resolves `Ok` when the line or the session
    /// is gone (so is the caller's node), [`Error::Lost`] when a foreign node
    /// joined, or with the error of a listing that failed.
    async fn watch_line(&self, client: &Client, dir: &str) -> Result<()> {
        loop {
            let watcher = match self
                .call(
                    client,
                    "watch candidates",
                    client.get_and_watch_children(dir),
                )
                .await?
            {
                Ok((children, _, watcher)) => {
                    if let Err(e) = self.line(children, dir) {
                        return Err(Error::Lost(format!(
                            "{e}; this term ends rather than lead beside a participant that counts the line differently"
                        )));
                    }
                    watcher
                }
                Err(zk::Error::SessionExpired | zk::Error::NoNode) => return Ok(()),
                Err(e) => return Err(map_err("watch candidates", e)),
            };
            watcher.changed().await;
            if client.state().is_terminated() {
                return Ok(());
            }
        }
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
                Err(zk::Error::NoNode) => {
                    // Nobody joined this election yet, unless the chroot
                    // itself is missing.
                    self.check_chroot(client).await?;
                    return Ok(None);
                }
                Err(e) => return Err(self.at("list candidates of", dir, e)),
            };
            let line = self.line(children, dir)?;
            let Some(first) = line.first() else {
                return Ok(None);
            };
            let path = format!("{dir}/{first}");
            match self
                .call(client, "read leader node", client.get_data(&path))
                .await?
            {
                Ok((data, stat)) => return Ok(Some(leader_info(&data, &stat, &path)?)),
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(self.at("read leader node", &path, e)),
            }
        }
        Err(Error::unavailable(
            NAME,
            format!("the leader of {dir} changed {MAX_REREADS} times while being read; retry"),
        ))
    }
}

#[async_trait]
impl Backend for ZkBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn family(&self) -> Family<'_> {
        Family::Queue(self)
    }

    fn validate(&self, options: &ElectionOptions) -> Result<()> {
        self.dir(&options.election)?;
        if options.own_session {
            return Err(Error::invalid_option(
                "own_session",
                "a ZkBackend is one ZooKeeper client session, shared by every elector built on it; to give an election a session of its own, build a ZkBackend of its own for it (ZkBackend::builder()...build(), or leasehold::connect(url) per election) instead of setting own_session",
            ));
        }
        let bound = u64::try_from(options.request_timeout.as_nanos()).unwrap_or(u64::MAX);
        self.engine_bound.fetch_min(bound, Ordering::Relaxed);
        let client = self.current();
        self.check_ttl(&client, options.ttl)?;
        // A replacement session (after an expiry) is held to this too.
        let safe = u64::try_from(Self::min_session_timeout(options).as_nanos()).unwrap_or(u64::MAX);
        self.needed_session.fetch_max(safe, Ordering::Relaxed);
        Ok(())
    }

    /// A session of the ttl; the leader's deadline leaves out the safety
    /// margin and the proof gap (see [`ZkBackend::min_session_timeout`]).
    fn lease_plan(&self, options: &ElectionOptions) -> LeasePlan {
        Self::lease_plan_for(options)
    }

    async fn leader(&self, election: &str) -> Result<Option<LeaderInfo>> {
        let dir = self.dir(election)?;
        let client = self.live_client().await?;
        self.read_leader(&client, &dir).await
    }

    fn proclaimer(&self) -> Option<&dyn Proclaim> {
        Some(self)
    }

    fn leader_watch(&self) -> Option<&dyn WatchLeader> {
        Some(self)
    }

    fn participants(&self) -> Option<&dyn ListParticipants> {
        Some(self)
    }
}

#[async_trait]
impl ListParticipants for ZkBackend {
    /// A listing of the line, then each node's data in line order; a node
    /// gone in between (it left) is left out.
    async fn participants(&self, election: &str) -> Result<Vec<LeaderInfo>> {
        let dir = self.dir(election)?;
        let client = self.live_client().await?;
        let children = match self
            .call(&client, "list candidates", client.list_children(&dir))
            .await?
        {
            Ok(children) => children,
            Err(zk::Error::NoNode) => {
                self.check_chroot(&client).await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(self.at("list candidates of", &dir, e)),
        };
        let mut out = Vec::new();
        for name in self.line(children, &dir)? {
            let path = format!("{dir}/{name}");
            match self
                .call(&client, "read candidate node", client.get_data(&path))
                .await?
            {
                Ok((data, stat)) => out.push(leader_info(&data, &stat, &path)?),
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(self.at("read candidate node", &path, e)),
            }
        }
        Ok(out)
    }

    /// A children watch on the election node and a data watch on the
    /// leader's node; each change costs one listing and one read per
    /// candidate node.
    async fn watch_participants(&self, election: &str) -> Result<Box<dyn ParticipantsWatch>> {
        let dir = self.dir(election)?;
        let client = self.live_client().await?;
        let timeout = self.request_timeout(&client);
        Ok(Box::new(ZkLineWatch::new(
            client,
            dir,
            self.config.chroot.clone(),
            self.config.lock_name,
            timeout,
        )))
    }
}

#[async_trait]
impl QueueStore for ZkBackend {
    /// One `ZkBackend` is one ZooKeeper session: every elector on it shares
    /// it.
    fn scope(&self) -> SessionScope {
        SessionScope::of(&self.config)
    }

    /// The client's pings keep the session alive.
    fn self_kept_sessions(&self) -> bool {
        true
    }

    /// This backend's ZooKeeper session (a new one when the last has
    /// ended). Cancel safe.
    async fn open_session(&self, ttl: Duration) -> Result<i64> {
        let client = self.live_client().await?;
        self.check_session(&client, ttl)?;
        Ok(client.session_id().0)
    }

    /// Proves the session alive at the quorum: one `sync`, which goes
    /// through the ZooKeeper leader and is answered only after any close of
    /// this session the leader has committed (a member cut off from the
    /// quorum cannot answer it). The client's pings keep the session alive
    /// by themselves; the engine calls this only while a leader is on the
    /// session. Cancel safe.
    async fn keep_alive(&self, session: i64) -> Result<()> {
        let client = self.session_client(session)?;
        match self
            .call(&client, "prove the session at the quorum", client.sync("/"))
            .await?
        {
            Ok(()) => Ok(()),
            Err(zk::Error::SessionExpired) => Err(Error::Lost(format!(
                "the ZooKeeper session {session:#x} expired"
            ))),
            Err(e) => Err(map_err("prove the session at the quorum (sync)", e)),
        }
    }

    /// Nothing to do: the session is this backend's connection, and ends
    /// with it (its nodes go then).
    async fn close_session(&self, _session: i64) -> Result<()> {
        Ok(())
    }

    /// Cancel safe: a node whose create answer was lost is found by its
    /// protected name and deleted in the background.
    async fn join(&self, req: &AcquireRequest, session: i64) -> Result<QueueOutcome> {
        let dir = self.dir(&req.election)?;
        let client = self.session_client(session)?;
        self.create_and_evaluate(client, dir, req).await
    }

    /// Nothing to do here: a create whose answer was lost is found by its
    /// protected name and deleted in the background by
    /// [`join`](QueueStore::join) itself (Curator's
    /// protection mode), and a new create makes a new sequential node, so a
    /// leftover is never adopted.
    async fn withdraw_in(&self, _election: &str, _session: i64) -> Result<()> {
        Ok(())
    }

    /// An exists-watch on the own node: resolves when the node is deleted
    /// or the session ends. Costs one request to arm, nothing while armed.
    /// Beside it, a children watch on the election's line (a node under
    /// another lock name joined: a Curator participant would then lead beside
    /// this leader, so the term ends loudly). The line is watched on its own:
    /// its events (any number of candidates coming and going) never use up
    /// nor hold up the own-node watch. Cancel safe.
    async fn watch_claim(&self, claim: &Claim) -> Result<()> {
        let Ok(client) = self.claim_client(claim) else {
            return Ok(());
        };
        let dir = self.dir(&claim.election)?;
        let line = self.watch_line(&client, &dir);
        tokio::pin!(line);
        // Each arming is a fresh read of the own node. Only the own node's
        // events that are not its end (a proclaim's data change) re-arm it;
        // bounded: after that many the engine watches again, at once.
        for _ in 0..MAX_OWN_NODE_EVENTS {
            let own = match self
                .call(
                    &client,
                    "watch own node",
                    client.check_and_watch_stat(&claim.key),
                )
                .await?
            {
                Ok((None, _)) => return Ok(()),
                Ok((Some(stat), _)) if stat.ephemeral_owner != claim.session => return Ok(()),
                Ok((Some(_), watcher)) => watcher,
                Err(zk::Error::SessionExpired | zk::Error::NoNode) => return Ok(()),
                Err(e) => return Err(map_err("watch own node", e)),
            };
            tokio::select! {
                // The own node first: when both are ready, its end wins.
                biased;
                event = own.changed() => {
                    if event.event_type == zk::EventType::NodeDeleted
                        || client.state().is_terminated()
                    {
                        return Ok(());
                    }
                }
                ended = &mut line => return ended,
            }
        }
        Err(Error::unavailable(
            NAME,
            format!(
                "the watch on {} fired {MAX_OWN_NODE_EVENTS} times without the node going; watch again",
                claim.key
            ),
        ))
    }

    async fn check(&self, claim: &Claim, permits: u32) -> Result<QueueOutcome> {
        let dir = self.dir(&claim.election)?;
        let client = self.claim_client(claim)?;
        self.evaluate(&client, &dir, claim.clone(), permits).await
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
        // The delete runs in a task of its own and is retried until the node
        // is gone or the session ends: a delete lost in a connection reset
        // would otherwise leave the node in the line for as long as this
        // process keeps the session alive.
        let bound = self.request_timeout(&client);
        let done = Delete::new(
            client,
            Target::Node {
                path: claim.key.clone(),
                version: i32::try_from(claim.version).ok(),
            },
            bound,
        )
        .spawn();
        // Answer well within the engine's bound on this call, so that the
        // engine never gives up on it (it would log that the lease will
        // expire, which a pinging ZooKeeper session does not).
        let engine = Duration::from_nanos(self.engine_bound.load(Ordering::Relaxed));
        let wait = bound.min(engine / 2);
        match tokio::time::timeout(wait, done).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(Error::backend(
                NAME,
                format!("the task deleting {} ended without an answer", claim.key),
            )),
            Err(_) => {
                // Handed over: the node goes when the delete lands or the
                // session ends, whichever comes first.
                tracing::warn!(
                    node = %claim.key,
                    session = %format_args!("{:#x}", claim.session),
                    "delete not confirmed within {wait:?}; it is retried in the background until it succeeds or the session ends"
                );
                Ok(())
            }
        }
    }

    /// Watches only the `permits` nodes just ahead (the node just ahead,
    /// for an election): no herd when a holder goes. Cancel safe.
    async fn wait(&self, claim: &Claim, permits: u32) -> Result<()> {
        let dir = self.dir(&claim.election)?;
        // A dead claim wakes at once: try_acquire then says it is lost.
        let Ok(client) = self.claim_client(claim) else {
            return Ok(());
        };
        let own = base_name(&claim.key);
        let permits = permits.max(1) as usize;
        'reread: for _ in 0..MAX_REREADS {
            let children = match self
                .call(&client, "list candidates", client.list_children(&dir))
                .await?
            {
                Ok(children) => children,
                Err(zk::Error::NoNode | zk::Error::SessionExpired) => return Ok(()),
                Err(e) => return Err(map_err("list candidates", e)),
            };
            // A child under another lock name: wake, and let try_acquire
            // say so.
            let Ok(line) = self.line(children, &dir) else {
                return Ok(());
            };
            let Some(position) = line.iter().position(|name| name == own) else {
                return Ok(());
            };
            if position < permits {
                return Ok(());
            }
            // Watch only the `permits` nodes just ahead: the only ones
            // whose end can let this claim hold.
            let mut watchers = tokio::task::JoinSet::new();
            for name in &line[position - permits..position] {
                let ahead = format!("{dir}/{name}");
                match self
                    .call(
                        &client,
                        "watch a node ahead",
                        client.check_and_watch_stat(&ahead),
                    )
                    .await?
                {
                    Ok((Some(_), watcher)) => {
                        watchers.spawn(async move {
                            watcher.changed().await;
                        });
                    }
                    // Gone already: look again (maybe it holds now, maybe
                    // there are new nodes ahead).
                    Ok((None, _)) => continue 'reread,
                    Err(zk::Error::SessionExpired) => return Ok(()),
                    Err(e) => return Err(map_err("watch a node ahead", e)),
                }
            }
            // The first event on any of them (aborts the others' waits when
            // dropped; their one-shot watches then fire unheard).
            let _ = watchers.join_next().await;
            return Ok(());
        }
        Ok(())
    }
}

#[async_trait]
impl Proclaim for ZkBackend {
    /// Write `<candidate id>\0<value>` (just the id when `value` is empty)
    /// into the claim's own node: a `setData` conditional on the version
    /// read just before, after checking that the node is this session's and
    /// first in line. The write goes through the ZooKeeper leader, so it
    /// lands only while the session is alive at the quorum. The czxid, the
    /// fencing token, does not change.
    async fn proclaim(&self, claim: &Claim, value: &[u8]) -> Result<Claim> {
        let client = self.claim_client(claim)?;
        let dir = self.dir(&claim.election)?;
        let own = base_name(&claim.key);
        for _ in 0..MAX_REREADS {
            let (data, stat) = match self
                .call(&client, "read own node", client.get_data(&claim.key))
                .await?
            {
                Ok(read) => read,
                Err(zk::Error::NoNode) => return Err(node_gone(claim)),
                Err(e) => return Err(claim_err("read own node", claim, e)),
            };
            if stat.ephemeral_owner != claim.session {
                return Err(Error::Lost(format!(
                    "{} now belongs to session {:#x}, not {:#x}",
                    claim.key, stat.ephemeral_owner, claim.session
                )));
            }
            let children = match self
                .call(&client, "list candidates", client.list_children(&dir))
                .await?
            {
                Ok(children) => children,
                Err(zk::Error::NoNode) => return Err(node_gone(claim)),
                Err(e) => return Err(claim_err("list candidates", claim, e)),
            };
            let line = self.line(children, &dir)?;
            if line.first().map(String::as_str) != Some(own) {
                return Err(Error::Lost(format!(
                    "{} is not first in line (the leader is {}); nothing was proclaimed",
                    claim.key,
                    line.first().map_or("nobody", String::as_str)
                )));
            }
            let (id, _) = decode(&data);
            let written = self
                .call(
                    &client,
                    "write leader value",
                    client.set_data(&claim.key, &encode(&id, value), Some(stat.version)),
                )
                .await?;
            match written {
                Ok(stat) => {
                    return Ok(Claim {
                        version: i64::from(stat.version),
                        ..claim.clone()
                    });
                }
                // Written in between (an earlier proclaim whose answer was
                // lost landing late): read again.
                Err(zk::Error::BadVersion) => continue,
                Err(zk::Error::NoNode) => return Err(node_gone(claim)),
                Err(e) => return Err(claim_err("write leader value", claim, e)),
            }
        }
        Err(Error::unavailable(
            NAME,
            format!(
                "{} kept changing while its value was being written; retry",
                claim.key
            ),
        ))
    }
}

#[async_trait]
impl WatchLeader for ZkBackend {
    async fn watch(&self, election: &str) -> Result<Box<dyn LeaderWatch>> {
        let dir = self.dir(election)?;
        let client = self.live_client().await?;
        let timeout = self.request_timeout(&client);
        Ok(Box::new(ZkLeaderWatch::new(
            client,
            dir,
            self.config.chroot.clone(),
            self.config.lock_name,
            timeout,
        )))
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
        .map_err(|e| {
            Error::unavailable(
                NAME,
                format!("cannot open a session with {}: {e}", config.hosts),
            )
        })?;
    let negotiated = client.session_timeout();
    if negotiated != config.session_timeout {
        tracing::warn!(
            requested = ?config.session_timeout,
            ?negotiated,
            "the ZooKeeper server changed the session timeout (it allows 2 to 20 x its tickTime); it must be at least the ttl of every election (ZkBackend::min_session_timeout)"
        );
    }
    let Some(chroot) = &config.chroot else {
        return Ok(client);
    };
    // The chroot is not created here: it is the operator's (a misspelled one
    // must be an error, not an empty election). Requests report it missing.
    client
        .chroot(chroot.clone())
        .map_err(|_| Error::Config(format!("ZooKeeper refused the chroot {chroot:?}")))
}

/// [`Error::Config`] naming `chroot` when it does not exist on the server.
pub(crate) async fn check_chroot(
    client: &Client,
    chroot: Option<&str>,
    bound: Duration,
) -> Result<()> {
    let Some(chroot) = chroot else {
        return Ok(());
    };
    let operation = "check the chroot";
    match tokio::time::timeout(bound, client.check_stat("/")).await {
        Err(_) => Err(Error::Timeout {
            operation,
            after: bound,
        }),
        Ok(Ok(Some(_))) => Ok(()),
        Ok(Ok(None)) => Err(Error::Config(format!(
            "ZooKeeper path {chroot} does not exist; create it (zkCli.sh create {chroot}) or fix the chroot in the connect string (leasehold does not create chroots)"
        ))),
        Ok(Err(e)) => Err(with_path(map_err(operation, e), chroot)),
    }
}

/// How much earlier than a renewal's send the ZooKeeper leader may count
/// the session from: the touch before it, one renew interval earlier, or
/// one idle ping of the client (3/20 of a session of the ttl; a longer
/// session only moves its expiry later).
fn proof_gap(options: &ElectionOptions) -> Duration {
    round_up_ms(options.renew_interval.max(options.ttl * 3 / 20))
}

fn round_up_ms(d: Duration) -> Duration {
    let ms = d.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// A create whose claim has not reached the engine yet; dropped armed, it
/// deletes the node the create may have made.
struct Unclaimed(Option<Delete>);

impl Unclaimed {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Unclaimed {
    fn drop(&mut self) {
        if let Some(delete) = self.0.take() {
            delete.spawn_detached();
        }
    }
}

/// Name `path` in a permission error (the store's message does not).
fn with_path(e: Error, path: &str) -> Error {
    match e {
        Error::PermissionDenied {
            backend,
            message,
            source,
        } => Error::PermissionDenied {
            backend,
            message: format!("{path}: {message}"),
            source,
        },
        Error::Backend {
            backend,
            message,
            source,
        } => Error::Backend {
            backend,
            message: format!("{path}: {message}"),
            source,
        },
        e => e,
    }
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

pub(crate) fn leader_info(data: &[u8], stat: &Stat, path: &str) -> Result<LeaderInfo> {
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
    let mapped = match &e {
        Z::ConnectionLoss
        | Z::Timeout
        | Z::NoHosts
        | Z::Throttled
        | Z::ClientClosed
        | Z::SessionMoved
        | Z::SessionExpired
        | Z::NotReadOnly => Error::unavailable(NAME, format!("{operation}: {e}")),
        // The client makes its `Custom` errors only in its connection layer:
        // a connection aborted or reset while a request was on it (over an
        // io::Error), "no response from connection in ..ms", a writable
        // server found while read-only: the store could not be reached, as
        // ConnectionLoss.
        Z::Custom(_) => Error::unavailable(NAME, format!("{operation}: {e}")),
        Z::NoAuth => Error::permission_denied(
            NAME,
            format!(
                "{operation}: {e}: the node's ACL does not grant this client the right; connect with the digest credentials that created the election (ZkBackend::builder().digest_auth(..))"
            ),
        ),
        Z::AuthFailed => Error::permission_denied(
            NAME,
            format!("{operation}: {e}: check the digest credentials"),
        ),
        Z::InvalidAcl => Error::permission_denied(
            NAME,
            format!(
                "{operation}: {e}: the server refused the ACL leasehold asked for (`auth` ACLs need an authenticated session)"
            ),
        ),
        Z::NoChildrenForEphemerals => Error::InvalidRecord {
            backend: NAME,
            path: String::new(),
            message: format!(
                "{operation}: {e}: a parent of the election directory is an ephemeral node; use another election name"
            ),
        },
        e => Error::backend(NAME, format!("{operation}: {e}")),
    };
    mapped.caused_by(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_is_the_ttl_and_the_deadline_fits_inside_it() {
        for ms in [2000, 3000, 4000, 4321, 6000, 8000, 15000, 60000] {
            let options = ElectionOptions::new("e", "c").with_ttl(Duration::from_millis(ms));
            let session = ZkBackend::min_session_timeout(&options);
            assert_eq!(session, Duration::from_millis(ms));
            let plan = ZkBackend::lease_plan_for(&options);
            // The derived timings fit: two renewals before the deadline.
            options.validate_plan(&plan).unwrap();
            // The deadline, counted from a renewal's send, comes a margin
            // before the earliest expiry the ZooKeeper leader may apply:
            // a session after the touch before, up to the gap earlier.
            let lifetime = plan.lifetime(&options);
            assert!(
                lifetime + options.safety_margin + proof_gap(&options) <= session,
                "ttl {ms} ms"
            );
        }
        // A renew interval shorter than 3/20 of the session: the client's idle
        // ping is the older proven touch.
        let mut options = ElectionOptions::new("e", "c").with_ttl(Duration::from_secs(10));
        options.renew_interval = Duration::from_millis(100);
        assert_eq!(proof_gap(&options), Duration::from_millis(1500));
        // The default ElectionOptions fit too, with Curator's proportions
        // (a session of the ttl).
        let options = ElectionOptions::new("e", "c");
        options
            .validate_plan(&ZkBackend::lease_plan_for(&options))
            .unwrap();
    }

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
            owner: String::new(),
            token: FencingToken(1),
            version: 0,
        };
        assert!(claim_err("x", &claim, zk::Error::SessionExpired).is_lost());
        assert!(!claim_err("x", &claim, zk::Error::ConnectionLoss).is_lost());
        let denied = with_path(map_err("list candidates", zk::Error::NoAuth), "/apps/e");
        assert!(denied.to_string().contains("/apps/e"), "{denied}");
        let msg = map_err("delete candidate node", zk::Error::NoAuth).to_string();
        assert!(
            msg.contains("delete candidate node") && msg.contains("digest_auth"),
            "{msg}"
        );
    }
}
