//! The etcd [`Backend`]: a fair queue of candidate keys, one per lease.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, KeyValue, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions,
    WatchRequestSender, WatchResponse, WatchResponseStream, WatchStream,
};
use leasehold_core::{
    AcquireRequest, Backend, Claim, ElectionOptions, Error, Family, FencingToken, LeaderInfo,
    LeaderWatch, LeasePlan, ListParticipants, ParticipantsWatch, Proclaim, QueueOutcome,
    QueueStore, Result, SessionScope, WatchLeader,
};
use tokio::sync::oneshot;

use crate::error::{BACKEND, bounded, map, unavailable};
use crate::layout::{Keys, Layout};

/// How many times one own-key watch is registered again (after its shared
/// stream broke, or etcd cancelled it) before the call gives up.
const MAX_KEY_REWATCHES: usize = 16;

/// etcd's smallest lease ttl, in seconds.
pub const MIN_TTL_SECS: u64 = 2;

/// The lease ttl in whole seconds for an election ttl: etcd leases are whole
/// seconds, so a fractional ttl is rounded **down** (the ttl is the failover
/// bound; the leader's local deadline counts from the lease actually
/// granted, [`EtcdBackend`]'s `lease_plan`).
///
/// # Errors
/// [`Error::InvalidOption`] for a ttl below [`MIN_TTL_SECS`].
pub fn lease_ttl_secs(ttl: Duration) -> Result<i64> {
    if ttl < Duration::from_secs(MIN_TTL_SECS) {
        return Err(Error::invalid_option(
            "ttl",
            format!(
                "ttl {ttl:?} is below etcd's minimum lease ttl of {MIN_TTL_SECS}s; use with_ttl(Duration::from_secs(2)) or more"
            ),
        ));
    }
    let secs = ttl.as_secs();
    i64::try_from(secs).map_err(|_| {
        Error::invalid_option("ttl", format!("ttl {ttl:?} is too large for an etcd lease"))
    })
}

/// Counters of what this backend asked of etcd, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EtcdStats {
    /// Unary requests sent (grant, txn, get, revoke) and streams opened
    /// (keep-alive, watch).
    pub requests: u64,
    /// Keep-alive messages sent on open keep-alive streams.
    pub keep_alives: u64,
    /// Watches created (by [`Backend::wait`], [`Backend::watch`] and
    /// [`QueueStore::watch_claim`]).
    pub watches_opened: u64,
    /// gRPC watch streams opened: one per [`Backend::wait`] and
    /// [`Backend::watch`]; the own-key watches of all the leaders on this
    /// backend ([`QueueStore::watch_claim`]) share one stream.
    pub watch_streams: u64,
    /// Watch events received (by [`Backend::wait`] and [`Backend::watch`]).
    pub watch_events: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    keep_alives: AtomicU64,
    watches_opened: AtomicU64,
    watch_streams: AtomicU64,
    watch_events: AtomicU64,
}

impl Counters {
    fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
    fn watch_opened(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.watches_opened.fetch_add(1, Ordering::Relaxed);
        self.watch_streams.fetch_add(1, Ordering::Relaxed);
    }
    fn events(&self, n: usize) {
        self.watch_events.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// An open keep-alive stream of one lease.
struct Keeper {
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

type KeeperSlot = Arc<tokio::sync::Mutex<Option<Keeper>>>;

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) prefix: String,
    pub(crate) keys: Keys,
    pub(crate) request_timeout: Duration,
    pub(crate) endpoints: Vec<String>,
    keepers: StdMutex<HashMap<i64, KeeperSlot>>,
    counters: Counters,
    /// The open stream of the leaders' own-key watches, all multiplexed on
    /// it by watch id.
    key_watches: tokio::sync::Mutex<Option<Arc<KeyWatchStream>>>,
}

/// The etcd backend: leader election and locks over etcd's KV, lease and
/// watch APIs, in the style of etcd's Go `concurrency` package.
///
/// * Each candidate creates one key `<prefix>/<election>/<lease id in hex>`
///   attached to a lease (a transaction comparing `create_revision == 0`).
///   Through the engine, that lease is a **session** shared by every
///   elector on this backend instance (and its clones) with the same
///   timings, as Go's `concurrency.Session`: N electors cost one lease and
///   one keep-alive per renew interval. Called directly without a session,
///   [`QueueStore::join`] grants a lease of the election ttl for the
///   claim alone. The key holds the candidate id and its leader value
///   (JSON, value in base64). In the [`Layout::Go`] the key is
///   `<prefix><election>/<lease id in hex>` holding the raw value, as etcd's
///   Go `concurrency.Election` writes it.
/// * The key with the lowest create revision leads; its create revision is
///   the fencing token (strictly increasing across terms: etcd's revision
///   only grows).
/// * A waiting candidate watches only its predecessor (the greatest create
///   revision below its own) until that key is deleted: no thundering herd.
/// * A session's keep-alive ([`QueueStore::keep_alive`]) is one message on the
///   lease's keep-alive stream (opened on the first, reopened after
///   errors); the engine drives it, this backend runs no timer. A leader
///   watches its own key ([`QueueStore::watch_claim`]), so a key deleted by
///   hand or a lease revoked by an admin ends its term at once. A claim of
///   its own lease is renewed by [`QueueStore::keep_alive`]: a keep-alive and a
///   read of the own key.
/// * Release deletes the own key (conditional on its create revision), so
///   the successor's watch fires at once, and revokes the lease unless it is
///   a session (the engine revokes a session when its last user goes).
///
/// Build one with [`EtcdBackend::builder`]. Cloning is cheap and shares the
/// connection.
#[derive(Clone)]
pub struct EtcdBackend {
    inner: Arc<Inner>,
}

impl fmt::Debug for EtcdBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdBackend")
            .field("endpoints", &self.inner.endpoints)
            .field("layout", &self.inner.keys.layout)
            .field("prefix", &self.inner.prefix)
            .field("request_timeout", &self.inner.request_timeout)
            .finish_non_exhaustive()
    }
}

impl EtcdBackend {
    /// A builder for the connection: endpoints, key prefix, timeouts, auth, TLS.
    pub fn builder() -> crate::EtcdBuilder {
        crate::EtcdBuilder::new()
    }

    pub(crate) fn from_parts(
        client: Client,
        keys: Keys,
        request_timeout: Duration,
        endpoints: Vec<String>,
    ) -> Self {
        EtcdBackend {
            inner: Arc::new(Inner {
                client,
                prefix: keys.prefix.clone(),
                keys,
                request_timeout,
                endpoints,
                keepers: StdMutex::new(HashMap::new()),
                counters: Counters::default(),
                key_watches: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The etcd client this backend uses (a clone: it shares the
    /// connection), for the application's own requests, such as a
    /// transaction guarded by [`leader_guard`](crate::leader_guard).
    pub fn client(&self) -> Client {
        self.inner.client.clone()
    }

    /// The key prefix (namespace) all keys of this backend live under.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The key layout: leasehold's own, or Go's `concurrency.Election`.
    pub fn layout(&self) -> Layout {
        self.inner.keys.layout
    }

    /// The range holding the candidate keys of `election`
    /// (`<prefix>/<escaped election>/`, or `<prefix><election>/` in the Go
    /// layout); handy for `etcdctl get --prefix`.
    pub fn election_prefix(&self, election: &str) -> String {
        self.inner.keys.range(election)
    }

    /// What this backend has asked of etcd so far.
    pub fn stats(&self) -> EtcdStats {
        let c = &self.inner.counters;
        EtcdStats {
            requests: c.requests.load(Ordering::Relaxed),
            keep_alives: c.keep_alives.load(Ordering::Relaxed),
            watches_opened: c.watches_opened.load(Ordering::Relaxed),
            watch_streams: c.watch_streams.load(Ordering::Relaxed),
            watch_events: c.watch_events.load(Ordering::Relaxed),
        }
    }

    fn timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// Says which keys a "permission denied" was about and what to grant:
    /// etcd's own message names neither. Other errors pass unchanged.
    fn denied(&self, e: Error, election: &str, need: &str) -> Error {
        match e {
            Error::PermissionDenied {
                backend,
                message,
                source,
            } if message.contains("permission denied") => Error::PermissionDenied {
                backend,
                source,
                message: format!(
                    "{message}: the etcd user may not {what} the keys of election {election:?} (range {range:?}); grant its role {need} permission on {scope}: etcdctl role grant-permission <role> --prefix=true {need} {grant}",
                    what = if need == "read" {
                        "read"
                    } else {
                        "read and write"
                    },
                    range = self.inner.keys.range(election),
                    scope = match self.inner.keys.layout {
                        Layout::Leasehold => "that range, or on the whole prefix",
                        Layout::Go => "that range",
                    },
                    grant = match self.inner.keys.layout {
                        Layout::Leasehold => format!("{}/", self.inner.prefix),
                        Layout::Go => self.inner.keys.range(election),
                    },
                ),
            },
            other => other,
        }
    }

    /// The key a claim must have to be one of this backend's claims of its election.
    fn own_key(&self, claim: &Claim) -> String {
        self.inner.keys.candidate(&claim.election, claim.session)
    }

    fn token_of(claim: &Claim) -> i64 {
        i64::try_from(claim.token.get()).unwrap_or(i64::MAX)
    }

    /// Options reading the first key (lowest create revision) of a range.
    fn first_by_create() -> GetOptions {
        Self::head_by_create(1)
    }

    /// Options reading the first `permits` keys (lowest create revisions)
    /// of a range: the holders.
    fn head_by_create(permits: u32) -> GetOptions {
        GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(i64::from(permits.max(1)))
    }

    /// Builds the outcome from the head of the election range (its first
    /// `permits` keys by create revision): holding when the claim's key is
    /// among them.
    fn outcome(&self, claim: Claim, head: &[KeyValue]) -> QueueOutcome {
        if let Some(own) = head
            .iter()
            .find(|kv| kv.create_revision() == Self::token_of(&claim))
        {
            return QueueOutcome::Acquired(Claim {
                version: own.mod_revision(),
                ..claim
            });
        }
        let leader = head.first().and_then(|kv| {
            self.inner
                .keys
                .decode(kv.key(), kv.value(), kv.create_revision())
                .map_err(|e| tracing::warn!(error = %e, "unreadable leader record"))
                .ok()
        });
        QueueOutcome::Queued { leader, claim }
    }

    /// Create the candidate key of `req` in `lease`, then who leads. With
    /// `replace`, a key of this lease that exists already (left by a create
    /// whose answer was lost: the engine keeps the election's place in a
    /// session until that is resolved) is deleted and the key created anew,
    /// never adopted, so that every claim gets a new create revision (token).
    async fn create_in(&self, req: &AcquireRequest, lease: i64) -> Result<QueueOutcome> {
        let t = self.timeout();
        let range = self.inner.keys.range(&req.election);
        let key = self.inner.keys.candidate(&req.election, lease);
        let mut kv = self.inner.client.kv_client();
        // One create, or a leftover's delete and then one create.
        let mut attempts = 0;
        let (resp, revision) = loop {
            attempts += 1;
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([
                    TxnOp::put(
                        key.clone(),
                        self.inner.keys.encode(&req.candidate, &req.value),
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                    TxnOp::get(range.clone(), Some(Self::head_by_create(req.permits))),
                ])
                .or_else([TxnOp::get(key.clone(), None)]);
            self.inner.counters.request();
            let resp = bounded("create candidate key", t, kv.txn(txn)).await?;
            let revision = header_revision(resp.header(), "create candidate key")?;
            if resp.succeeded() {
                break (resp, revision);
            }
            let leftover = first_kv(&resp.op_responses());
            match leftover {
                Some(old) if old.lease() == lease && attempts < 3 => {
                    tracing::debug!(%key, token = old.create_revision(), "a key of this session left by an unanswered create: replacing it");
                    let delete = Txn::new()
                        .when([Compare::create_revision(
                            key.clone(),
                            CompareOp::Equal,
                            old.create_revision(),
                        )])
                        .and_then([TxnOp::delete(key.clone(), None)]);
                    self.inner.counters.request();
                    bounded("delete a leftover candidate key", t, kv.txn(delete)).await?;
                }
                // Gone in between: create again.
                None if attempts < 3 => {}
                _ => {
                    return Err(Error::backend(
                        BACKEND,
                        format!(
                            "candidate key {key} already exists for lease {lease:x}, not written by this candidate; is another program writing under the prefix {:?}?",
                            self.inner.prefix
                        ),
                    ));
                }
            }
        };
        let token = revision;
        let responses = resp.op_responses();
        let head = responses
            .iter()
            .filter_map(|r| match r {
                TxnOpResponse::Get(get) => Some(get),
                _ => None,
            })
            .next_back()
            .map(|get| get.kvs().to_vec())
            .unwrap_or_default();
        let claim = Claim {
            election: req.election.clone(),
            key,
            session: lease,
            owner: String::new(),
            token: FencingToken(u64::try_from(token).unwrap_or(0)),
            version: revision,
        };
        Ok(self.outcome(claim, &head))
    }

    /// Resolve when `claim`'s key is gone: a watch on the key from just
    /// after its creation, so a delete in between is seen too. The watches
    /// of all the leaders on this backend share one watch stream.
    ///
    /// When that stream breaks (a connection reset) or etcd cancels the
    /// watch (a compaction past its start), the key is read again at once
    /// (a linearizable read): gone, or with another create revision, the
    /// claim is gone; else the watch is registered again from that read's
    /// revision + 1, so a delete while the stream was down is never missed.
    /// A failed read is the caller's error (the engine watches again).
    async fn watch_own_key(&self, claim: &Claim) -> Result<()> {
        let token = Self::token_of(claim);
        let mut start = token + 1;
        // Bounded: a stream that keeps breaking while reads succeed ends
        // the call; the engine then watches again (after a back-off when
        // that too fails at once).
        for _ in 0..MAX_KEY_REWATCHES {
            let watch = self.register_key_watch(&claim.key, start).await?;
            match watch.wait().await {
                KeyEvent::Deleted => return Ok(()),
                KeyEvent::Broken(e) => {
                    tracing::debug!(key = %claim.key, error = %e, "the own-key watch stream broke; reading the key and watching again");
                }
                KeyEvent::Canceled => {
                    tracing::debug!(key = %claim.key, "etcd cancelled the own-key watch; reading the key and watching again");
                }
            }
            match self.read_own_key(claim).await? {
                Some(revision) => start = revision + 1,
                None => return Ok(()),
            }
        }
        Err(unavailable(format!(
            "watch own key {}: the watch ended {MAX_KEY_REWATCHES} times without the key going; watch again",
            claim.key
        )))
    }

    /// A fresh (linearizable) read of `claim`'s key: the revision the read
    /// saw when the key is still the claim's, `None` when it is gone or has
    /// another create revision.
    async fn read_own_key(&self, claim: &Claim) -> Result<Option<i64>> {
        let mut kv = self.inner.client.kv_client();
        self.inner.counters.request();
        let got = bounded(
            "read own key",
            self.timeout(),
            kv.get(claim.key.as_str(), Some(GetOptions::new().with_keys_only())),
        )
        .await?;
        match got.kvs().first() {
            Some(kv) if kv.create_revision() == Self::token_of(claim) => {
                Ok(Some(header_revision(got.header(), "read own key")?))
            }
            _ => Ok(None),
        }
    }

    /// Later campaign steps: the claim must still exist; then whether it is
    /// among the first `permits` in line.
    async fn recheck(&self, claim: &Claim, permits: u32) -> Result<QueueOutcome> {
        let key = self.own_key(claim);
        if claim.key != key {
            return Err(Error::Lost(format!(
                "claim {:?} is not an etcd claim of election {:?} under prefix {:?}; campaign again",
                claim.key, claim.election, self.inner.prefix
            )));
        }
        let range = self.inner.keys.range(&claim.election);
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                Self::token_of(claim),
            )])
            .and_then([TxnOp::get(range, Some(Self::head_by_create(permits)))]);
        let mut kv = self.inner.client.kv_client();
        self.inner.counters.request();
        let resp = bounded("check candidate key", self.timeout(), kv.txn(txn)).await?;
        if !resp.succeeded() {
            self.forget_keeper(claim.session);
            return Err(gone(claim));
        }
        let head = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(get) => Some(get.kvs().to_vec()),
                _ => None,
            })
            .unwrap_or_default();
        Ok(self.outcome(claim.clone(), &head))
    }

    fn keeper_slot(&self, lease: i64) -> KeeperSlot {
        let mut map = self
            .inner
            .keepers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(lease).or_default().clone()
    }

    fn forget_keeper(&self, lease: i64) {
        let mut map = self
            .inner
            .keepers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.remove(&lease);
    }

    /// One keep-alive of `lease`: on the open stream, or on a new one when
    /// there is none or the open one fails.
    async fn keep_lease_alive(&self, lease: i64) -> Result<()> {
        let slot = self.keeper_slot(lease);
        let mut held = slot.lock().await;
        // Taken out and put back only after a full exchange: a call dropped
        // half way closes the stream, so no later call can mistake the reply
        // to an older request for its own.
        if let Some(mut k) = held.take() {
            self.inner
                .counters
                .keep_alives
                .fetch_add(1, Ordering::Relaxed);
            if k.keeper.keep_alive().await.is_ok() {
                match k.stream.message().await {
                    Ok(Some(resp)) if resp.ttl() > 0 => {
                        *held = Some(k);
                        return Ok(());
                    }
                    Ok(Some(_)) => {
                        drop(held);
                        self.forget_keeper(lease);
                        return Err(lease_gone(lease));
                    }
                    // The stream broke: fall through and open a new one.
                    Ok(None) | Err(_) => {}
                }
            }
        }
        let mut lease_client = self.inner.client.lease_client();
        self.inner.counters.request();
        match lease_client.keep_alive(lease).await {
            Ok((keeper, stream)) => {
                // keep_alive() has read the first reply and checked its ttl.
                *held = Some(Keeper { keeper, stream });
                Ok(())
            }
            Err(e) => {
                let e = map("open lease keep-alive stream", e);
                if e.is_lost() {
                    drop(held);
                    self.forget_keeper(lease);
                    return Err(lease_gone(lease));
                }
                Err(e)
            }
        }
    }

    /// Waits for the deletion of one of the `permits` keys just ahead of
    /// `claim` (the key just ahead, for an election): one read of them,
    /// then a watch on each from just after that read. Resolves at once
    /// when fewer than `permits` keys are ahead.
    async fn wait_ahead(&self, claim: &Claim, permits: u32) -> Result<()> {
        let range = self.inner.keys.range(&claim.election);
        let token = Self::token_of(claim);
        let options = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_max_create_revision(token.saturating_sub(1))
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_limit(i64::from(permits.max(1)));
        let mut kv = self.inner.client.kv_client();
        self.inner.counters.request();
        let resp = bounded(
            "find the keys ahead",
            self.timeout(),
            kv.get(range, Some(options)),
        )
        .await?;
        if resp.kvs().len() < permits.max(1) as usize {
            // Fewer ahead than permits: the caller's next check finds out.
            return Ok(());
        }
        let start = header_revision(resp.header(), "find the keys ahead")? + 1;
        // One task per key, aborted when this future is dropped.
        let mut watches = tokio::task::JoinSet::new();
        for ahead in resp.kvs() {
            let backend = self.clone();
            let key = ahead.key().to_vec();
            watches.spawn(async move { backend.wait_deleted(key, start).await });
        }
        match watches.join_next().await {
            Some(Ok(result)) => result,
            Some(Err(e)) => Err(unavailable(format!("the watch on a key ahead ended: {e}"))),
            None => Ok(()),
        }
    }

    /// Resolves when `key` is deleted at or after revision `start` (or etcd
    /// cancels the watch).
    async fn wait_deleted(&self, key: Vec<u8>, start: i64) -> Result<()> {
        let options = WatchOptions::new()
            .with_start_revision(start)
            .with_filters([WatchFilterType::NoPut]);
        let mut stream = self.open_watch(key, options).await?;
        loop {
            let resp = self.next_response(&mut stream, "watch a key ahead").await?;
            if resp.canceled()
                || resp
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
            {
                return Ok(());
            }
        }
    }

    /// The next message of a watch, counted; a closed stream is an error.
    /// Cancel safe: a message is taken from the stream only when complete.
    async fn next_response(
        &self,
        stream: &mut WatchStream,
        operation: &str,
    ) -> Result<WatchResponse> {
        let resp = stream
            .message()
            .await
            .map_err(|e| map(operation, e))?
            .ok_or_else(|| unavailable(format!("{operation}: the stream was closed")))?;
        self.inner.counters.events(resp.events().len());
        Ok(resp)
    }

    async fn open_watch(&self, key: Vec<u8>, options: WatchOptions) -> Result<WatchStream> {
        let mut watch = self.inner.client.watch_client();
        self.inner.counters.watch_opened();
        bounded(
            "open watch",
            self.timeout(),
            watch.watch(key, Some(options)),
        )
        .await
    }
}

/// How a multiplexed own-key watch ended.
#[derive(Debug)]
enum KeyEvent {
    /// The key was deleted.
    Deleted,
    /// etcd cancelled the watch (its start revision was compacted).
    Canceled,
    /// The shared stream broke; watch again.
    Broken(Error),
}

/// One watch stream carrying the own-key watches of every leader on a
/// backend, told apart by client-assigned watch ids. A reader task hands
/// each watch its end; the stream closes when its last watch is gone or it
/// breaks (then every watch on it ends with [`KeyEvent::Broken`] at once and
/// is registered again on a new stream, after a fresh read of its key, by
/// [`EtcdBackend::watch_own_key`]).
struct KeyWatchStream {
    sender: tokio::sync::Mutex<Option<WatchRequestSender>>,
    next_id: AtomicI64,
    waiters: StdMutex<HashMap<i64, oneshot::Sender<KeyEvent>>>,
    dead: AtomicBool,
}

impl KeyWatchStream {
    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<i64, oneshot::Sender<KeyEvent>>> {
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Add a waiter for watch `id`, unless the stream is dead.
    fn add(&self, id: i64) -> Option<oneshot::Receiver<KeyEvent>> {
        let mut waiters = self.waiters();
        if self.dead.load(Ordering::SeqCst) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        waiters.insert(id, tx);
        Some(rx)
    }

    /// End every watch on the stream with `error`; the stream is dead.
    fn fail_all(&self, error: &Error) {
        let drained: Vec<_> = {
            let mut waiters = self.waiters();
            self.dead.store(true, Ordering::SeqCst);
            waiters.drain().collect()
        };
        for (_, tx) in drained {
            let _ = tx.send(KeyEvent::Broken(error.clone()));
        }
    }

    /// Cancel watch `id` on the server (its waiter is gone).
    async fn cancel(&self, id: i64) {
        if let Some(sender) = self.sender.lock().await.as_mut() {
            let _ = sender.cancel(id).await;
        }
    }
}

/// Read the shared stream, handing each watch its end.
async fn key_watch_reader(
    conn: Arc<KeyWatchStream>,
    mut responses: WatchResponseStream,
    backend: EtcdBackend,
) {
    loop {
        let resp = match responses.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                conn.fail_all(&unavailable(
                    "watch own keys: the stream was closed".to_owned(),
                ));
                break;
            }
            Err(e) => {
                conn.fail_all(&map("watch own keys", e));
                break;
            }
        };
        backend.inner.counters.events(resp.events().len());
        let id = resp.watch_id();
        let deleted = resp
            .events()
            .iter()
            .any(|e| e.event_type() == EventType::Delete);
        let end = if deleted {
            Some(KeyEvent::Deleted)
        } else if resp.canceled() {
            Some(KeyEvent::Canceled)
        } else {
            None
        };
        if let Some(end) = end {
            let waiter = conn.waiters().remove(&id);
            if let Some(tx) = waiter {
                let _ = tx.send(end);
            }
            if deleted {
                // Nothing more to hear from it.
                conn.cancel(id).await;
            }
        }
        // Close the stream when no watch is left on it.
        let idle = {
            let waiters = conn.waiters();
            if waiters.is_empty() {
                conn.dead.store(true, Ordering::SeqCst);
            }
            waiters.is_empty()
        };
        if idle {
            break;
        }
    }
    *conn.sender.lock().await = None;
}

/// One registered own-key watch; dropped before it ended, it removes itself
/// and cancels the watch on the server.
struct KeyWatch {
    conn: Arc<KeyWatchStream>,
    id: i64,
    rx: Option<oneshot::Receiver<KeyEvent>>,
}

impl KeyWatch {
    async fn wait(mut self) -> KeyEvent {
        let Some(rx) = self.rx.as_mut() else {
            return KeyEvent::Broken(unavailable("watch own key: not registered".to_owned()));
        };
        let end = rx.await.unwrap_or_else(|_| {
            KeyEvent::Broken(unavailable(
                "watch own key: the stream reader ended".to_owned(),
            ))
        });
        self.rx = None;
        end
    }
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        if self.rx.is_none() {
            return;
        }
        if self.conn.waiters().remove(&self.id).is_none() {
            return;
        }
        let conn = self.conn.clone();
        let id = self.id;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { conn.cancel(id).await });
        }
    }
}

impl EtcdBackend {
    /// Register a watch of `key`'s deletion from revision `start` on the
    /// shared stream (opening it when there is none).
    async fn register_key_watch(&self, key: &str, start: i64) -> Result<KeyWatch> {
        let mut slot = self.inner.key_watches.lock().await;
        let options = |id: i64| {
            WatchOptions::new()
                .with_start_revision(start)
                .with_filters([WatchFilterType::NoPut])
                .with_watch_id(id)
        };
        if let Some(conn) = slot
            .as_ref()
            .filter(|c| !c.dead.load(Ordering::SeqCst))
            .cloned()
        {
            let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
            if let Some(rx) = conn.add(id) {
                let watch = KeyWatch {
                    conn: conn.clone(),
                    id,
                    rx: Some(rx),
                };
                self.inner.counters.request();
                self.inner
                    .counters
                    .watches_opened
                    .fetch_add(1, Ordering::Relaxed);
                let sent = {
                    let mut sender = conn.sender.lock().await;
                    match sender.as_mut() {
                        Some(s) => {
                            tokio::time::timeout(self.timeout(), s.watch(key, Some(options(id))))
                                .await
                        }
                        None => Ok(Err(etcd_client::Error::WatchError(
                            "the stream is closed".to_owned(),
                        ))),
                    }
                };
                match sent {
                    Ok(Ok(())) => return Ok(watch),
                    Ok(Err(e)) => {
                        conn.fail_all(&map("watch own key", e));
                    }
                    Err(_) => conn.fail_all(&unavailable(
                        "watch own key: the shared stream did not take the request".to_owned(),
                    )),
                }
                drop(watch);
            }
        }
        // A new stream, opened with this watch as its first.
        let conn = Arc::new(KeyWatchStream {
            sender: tokio::sync::Mutex::new(None),
            next_id: AtomicI64::new(2),
            waiters: StdMutex::new(HashMap::new()),
            dead: AtomicBool::new(false),
        });
        let Some(rx) = conn.add(1) else {
            return Err(unavailable("watch own key: stream closed".to_owned()));
        };
        let stream = self.open_watch(key.as_bytes().to_vec(), options(1)).await?;
        let (sender, responses) = stream.split();
        *conn.sender.lock().await = Some(sender);
        tokio::spawn(key_watch_reader(conn.clone(), responses, self.clone()));
        *slot = Some(conn.clone());
        Ok(KeyWatch {
            conn,
            id: 1,
            rx: Some(rx),
        })
    }
}

/// The error for a claim whose key no longer exists.
fn gone(claim: &Claim) -> Error {
    Error::Lost(format!(
        "candidate key {} is gone (its lease {:x} expired or was revoked, or the key was deleted); campaign again with a new lease",
        claim.key, claim.session
    ))
}

fn lease_gone(lease: i64) -> Error {
    Error::Lost(format!(
        "etcd no longer knows lease {lease:x} (it expired or was revoked); campaign again with a new lease"
    ))
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>, operation: &str) -> Result<i64> {
    header.map(|h| h.revision()).ok_or_else(|| {
        Error::backend(
            BACKEND,
            format!("{operation}: etcd sent a response without a header"),
        )
    })
}

/// The first key of the first range read of a transaction's responses.
fn first_kv(responses: &[TxnOpResponse]) -> Option<KeyValue> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
    })
}

#[async_trait]
impl Backend for EtcdBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn family(&self) -> Family<'_> {
        Family::Queue(self)
    }

    fn validate(&self, options: &ElectionOptions) -> Result<()> {
        lease_ttl_secs(options.ttl).map(|_| ())
    }

    /// A lease of the ttl in whole seconds (rounded down): a crashed
    /// leader's lease expires within the ttl, plus etcd's expiry check
    /// (every 500 ms); the leader's deadline is that lease less the margin.
    fn lease_plan(&self, options: &ElectionOptions) -> LeasePlan {
        let secs = lease_ttl_secs(options.ttl).unwrap_or(0);
        LeasePlan::new(
            Duration::from_secs(u64::try_from(secs).unwrap_or(0)),
            Duration::ZERO,
        )
    }

    async fn leader(&self, election: &str) -> Result<Option<LeaderInfo>> {
        let range = self.inner.keys.range(election);
        let mut kv = self.inner.client.kv_client();
        self.inner.counters.request();
        let resp = bounded(
            "read leader",
            self.timeout(),
            kv.get(range, Some(Self::first_by_create())),
        )
        .await
        .map_err(|e| self.denied(e, election, "read"))?;
        resp.kvs()
            .first()
            .map(|kv| {
                self.inner
                    .keys
                    .decode(kv.key(), kv.value(), kv.create_revision())
            })
            .transpose()
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
impl ListParticipants for EtcdBackend {
    /// One linearizable range read of the election, sorted by create
    /// revision. A key that is not a candidate's record is reported as a
    /// warning and left out.
    async fn participants(&self, election: &str) -> Result<Vec<LeaderInfo>> {
        let range = self.inner.keys.range(election);
        let mut kv = self.inner.client.kv_client();
        self.inner.counters.request();
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend);
        let resp = bounded(
            "read candidates",
            self.timeout(),
            kv.get(range, Some(options)),
        )
        .await
        .map_err(|e| self.denied(e, election, "read"))?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                self.inner
                    .keys
                    .decode(kv.key(), kv.value(), kv.create_revision())
                    .map_err(|e| tracing::warn!(error = %e, "unreadable candidate record"))
                    .ok()
            })
            .collect())
    }

    /// One range read and one prefix watch of the election when opened;
    /// then each change costs one watch message and no read (the line is
    /// kept from the events, as the leader watch keeps its leader).
    async fn watch_participants(&self, election: &str) -> Result<Box<dyn ParticipantsWatch>> {
        Ok(Box::new(EtcdLineWatch {
            keys: ElectionKeys::open(self, election).await?,
            reported: None,
        }))
    }
}

#[async_trait]
impl QueueStore for EtcdBackend {
    /// Clones share their connection, and so their sessions.
    fn scope(&self) -> SessionScope {
        SessionScope::of(&self.inner)
    }

    /// Grants a lease of `ttl` (rounded up to whole seconds). Cancel safe: a
    /// lease granted by a dropped call expires after its ttl.
    async fn open_session(&self, ttl: Duration) -> Result<i64> {
        let secs = lease_ttl_secs(ttl)?;
        let mut lease_client = self.inner.client.lease_client();
        self.inner.counters.request();
        let grant = bounded(
            "grant session lease",
            self.timeout(),
            lease_client.grant(secs, None),
        )
        .await?;
        Ok(grant.id())
    }

    /// One message on the lease's keep-alive stream; its answer (ttl > 0)
    /// proves the lease alive at the quorum. Cancel safe: a call dropped
    /// half way closes the stream; the next call opens a new one.
    async fn keep_alive(&self, session: i64) -> Result<()> {
        self.keep_lease_alive(session).await
    }

    /// Revokes the lease: every key still in it goes. Cancel safe.
    async fn close_session(&self, session: i64) -> Result<()> {
        self.forget_keeper(session);
        let mut lease_client = self.inner.client.lease_client();
        self.inner.counters.request();
        match bounded(
            "revoke session lease",
            self.timeout(),
            lease_client.revoke(session),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_lost() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Cancel safe: a key whose create answer was lost is replaced (never
    /// adopted) by the next attempt in the same session, or removed by
    /// [`withdraw_in`](QueueStore::withdraw_in), or goes when the session
    /// ends.
    async fn join(&self, req: &AcquireRequest, session: i64) -> Result<QueueOutcome> {
        self.create_in(req, session)
            .await
            .map_err(|e| self.denied(e, &req.election, "readwrite"))
    }

    async fn check(&self, claim: &Claim, permits: u32) -> Result<QueueOutcome> {
        self.recheck(claim, permits)
            .await
            .map_err(|e| self.denied(e, &claim.election, "readwrite"))
    }

    /// Deletes the own key if its create revision is still the claim's
    /// token; the lease (a session) lives on. Cancel safe.
    async fn release(&self, claim: &Claim) -> Result<()> {
        if claim.key != self.own_key(claim) {
            // Not a key this backend would have written for this lease:
            // touch nothing.
            return Ok(());
        }
        let txn = Txn::new()
            .when([Compare::create_revision(
                claim.key.as_str(),
                CompareOp::Equal,
                Self::token_of(claim),
            )])
            .and_then([TxnOp::delete(claim.key.as_str(), None)]);
        let mut kv = self.inner.client.kv_client();
        self.inner.counters.request();
        bounded("delete candidate key", self.timeout(), kv.txn(txn))
            .await
            .map_err(|e| self.denied(e, &claim.election, "readwrite"))?;
        Ok(())
    }

    /// Deletes the session's key in the election (named after the lease,
    /// so it can only be the claim of the unanswered create). Cancel safe.
    async fn withdraw_in(&self, election: &str, session: i64) -> Result<()> {
        let key = self.inner.keys.candidate(election, session);
        let mut kv = self.inner.client.kv_client();
        self.inner.counters.request();
        bounded(
            "delete an unanswered candidate key",
            self.timeout(),
            kv.delete(key, None),
        )
        .await
        .map_err(|e| self.denied(e, election, "readwrite"))?;
        Ok(())
    }

    /// Cancel safe: the watch it opened is closed when the future is dropped.
    async fn wait(&self, claim: &Claim, permits: u32) -> Result<()> {
        self.wait_ahead(claim, permits)
            .await
            .map_err(|e| self.denied(e, &claim.election, "read"))
    }

    /// Cancel safe: the watch it opened is closed when the future is dropped.
    async fn watch_claim(&self, claim: &Claim) -> Result<()> {
        if claim.key != self.own_key(claim) {
            return Ok(());
        }
        self.watch_own_key(claim)
            .await
            .map_err(|e| self.denied(e, &claim.election, "read"))
    }
}

#[async_trait]
impl Proclaim for EtcdBackend {
    /// One transaction, as Go's `Election.Proclaim`: put the new value on
    /// the own key if its create revision is still the claim's token,
    /// keeping the key's lease. In the leasehold layout the candidate id is
    /// read from the current record first (a read, then the conditional
    /// write: only the claim's owner writes its key).
    ///
    /// Cancel safe: a dropped call may or may not have landed.
    async fn proclaim(&self, claim: &Claim, value: &[u8]) -> Result<Claim> {
        if claim.key != self.own_key(claim) {
            return Err(Error::Lost(format!(
                "claim {:?} is not an etcd claim under prefix {:?}",
                claim.key, self.inner.prefix
            )));
        }
        let t = self.timeout();
        let mut kv = self.inner.client.kv_client();
        let bytes = match self.inner.keys.layout {
            Layout::Go => value.to_vec(),
            Layout::Leasehold => {
                self.inner.counters.request();
                let resp = bounded("read candidate key", t, kv.get(claim.key.as_str(), None))
                    .await
                    .map_err(|e| self.denied(e, &claim.election, "readwrite"))?;
                let current = match resp.kvs().first() {
                    Some(kv) if kv.create_revision() == Self::token_of(claim) => kv,
                    _ => return Err(gone(claim)),
                };
                let id = self
                    .inner
                    .keys
                    .decode(current.key(), current.value(), current.create_revision())?
                    .id;
                self.inner.keys.encode(&id, value)
            }
        };
        let txn = Txn::new()
            .when([Compare::create_revision(
                claim.key.as_str(),
                CompareOp::Equal,
                Self::token_of(claim),
            )])
            .and_then([TxnOp::put(
                claim.key.as_str(),
                bytes,
                Some(PutOptions::new().with_lease(claim.session)),
            )]);
        self.inner.counters.request();
        let resp = bounded("proclaim", t, kv.txn(txn))
            .await
            .map_err(|e| self.denied(e, &claim.election, "readwrite"))?;
        if !resp.succeeded() {
            return Err(gone(claim));
        }
        Ok(Claim {
            version: header_revision(resp.header(), "proclaim")?,
            ..claim.clone()
        })
    }
}

#[async_trait]
impl WatchLeader for EtcdBackend {
    async fn watch(&self, election: &str) -> Result<Box<dyn LeaderWatch>> {
        Ok(Box::new(EtcdLeaderWatch {
            keys: ElectionKeys::open(self, election).await?,
            reported: None,
        }))
    }
}

/// One candidate key as a watch remembers it.
struct Entry {
    create_revision: i64,
    mod_revision: i64,
    value: Vec<u8>,
}

impl Entry {
    fn of(kv: &KeyValue) -> Entry {
        Entry {
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            value: kv.value().to_vec(),
        }
    }
}

/// The keys of an election followed through one prefix watch: one range
/// read when opened, then a local copy updated by each event, no extra
/// reads.
struct ElectionKeys {
    backend: EtcdBackend,
    stream: WatchStream,
    /// Candidate key -> its create revision, mod revision and value.
    keys: HashMap<Vec<u8>, Entry>,
}

impl ElectionKeys {
    /// Read the election's keys and watch the prefix from the revision
    /// after that read, so no change between the two is missed.
    async fn open(backend: &EtcdBackend, election: &str) -> Result<ElectionKeys> {
        let range = backend.inner.keys.range(election);
        let mut kv = backend.inner.client.kv_client();
        backend.inner.counters.request();
        let resp = bounded(
            "read election",
            backend.timeout(),
            kv.get(range.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await
        .map_err(|e| backend.denied(e, election, "read"))?;
        let start = header_revision(resp.header(), "read election")? + 1;
        let keys = resp
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), Entry::of(kv)))
            .collect();
        let options = WatchOptions::new().with_prefix().with_start_revision(start);
        let stream = backend
            .open_watch(range.into_bytes(), options)
            .await
            .map_err(|e| backend.denied(e, election, "read"))?;
        Ok(ElectionKeys {
            backend: backend.clone(),
            stream,
            keys,
        })
    }

    /// Wait for the next watch message and apply its events. Cancel safe:
    /// events are applied only after a whole message arrived, without
    /// awaiting in between.
    async fn apply_next(&mut self) -> Result<()> {
        let resp = self
            .backend
            .next_response(&mut self.stream, "watch election")
            .await?;
        if resp.canceled() {
            return Err(Error::backend(
                BACKEND,
                format!(
                    "watch election: etcd cancelled the watch ({}; compacted at {}); open a new watch",
                    resp.cancel_reason(),
                    resp.compact_revision()
                ),
            ));
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => {
                    self.keys.insert(kv.key().to_vec(), Entry::of(kv));
                }
                EventType::Delete => {
                    self.keys.remove(kv.key());
                }
            }
        }
        Ok(())
    }

    /// The keys in line order (by create revision).
    fn line(&self) -> Vec<(&[u8], &Entry)> {
        let mut line: Vec<_> = self.keys.iter().map(|(k, e)| (k.as_slice(), e)).collect();
        line.sort_by_key(|(_, e)| e.create_revision);
        line
    }

    fn leader_entry(&self) -> Option<(&[u8], &Entry)> {
        self.keys
            .iter()
            .min_by_key(|(_, e)| e.create_revision)
            .map(|(k, e)| (k.as_slice(), e))
    }

    fn decode(&self, key: &[u8], e: &Entry) -> Result<LeaderInfo> {
        self.backend
            .inner
            .keys
            .decode(key, &e.value, e.create_revision)
    }
}

/// The leader of an election followed through one prefix watch.
struct EtcdLeaderWatch {
    keys: ElectionKeys,
    /// The create and mod revision of the leader key last reported
    /// (`Some(None)`: no leader). A new mod revision of the same key is a
    /// new value (a proclaim): reported too.
    reported: Option<Option<(i64, i64)>>,
}

impl EtcdLeaderWatch {
    fn leader_revisions(&self) -> Option<(i64, i64)> {
        self.keys
            .leader_entry()
            .map(|(_, e)| (e.create_revision, e.mod_revision))
    }

    /// The leader now. A leader key whose value cannot be read is an error
    /// (non-transient): the observer stops and says so rather than keep
    /// showing a leader that is gone.
    fn report(&mut self) -> Result<Option<LeaderInfo>> {
        self.reported = Some(self.leader_revisions());
        self.keys
            .leader_entry()
            .map(|(key, e)| self.keys.decode(key, e))
            .transpose()
    }
}

#[async_trait]
impl LeaderWatch for EtcdLeaderWatch {
    /// Cancel safe, as [`ElectionKeys::apply_next`].
    async fn next(&mut self) -> Result<Option<LeaderInfo>> {
        if self.reported.is_none() {
            return self.report();
        }
        loop {
            self.keys.apply_next().await?;
            if self.reported != Some(self.leader_revisions()) {
                return self.report();
            }
        }
    }
}

/// The line of an election followed through one prefix watch.
struct EtcdLineWatch {
    keys: ElectionKeys,
    /// The create and mod revisions of the keys last reported, in line
    /// order; `None` before the first report.
    reported: Option<Vec<(i64, i64)>>,
}

impl EtcdLineWatch {
    fn revisions(&self) -> Vec<(i64, i64)> {
        self.keys
            .line()
            .iter()
            .map(|(_, e)| (e.create_revision, e.mod_revision))
            .collect()
    }

    /// The line now; a key that is not a candidate's record is reported as
    /// a warning and left out, as [`ListParticipants::participants`] does.
    fn report(&mut self) -> Vec<LeaderInfo> {
        self.reported = Some(self.revisions());
        self.keys
            .line()
            .into_iter()
            .filter_map(|(key, e)| {
                self.keys
                    .decode(key, e)
                    .map_err(|e| tracing::warn!(error = %e, "unreadable candidate record"))
                    .ok()
            })
            .collect()
    }
}

#[async_trait]
impl ParticipantsWatch for EtcdLineWatch {
    /// Cancel safe, as [`ElectionKeys::apply_next`].
    async fn next(&mut self) -> Result<Vec<LeaderInfo>> {
        if self.reported.is_none() {
            return Ok(self.report());
        }
        loop {
            self.keys.apply_next().await?;
            if self.reported.as_ref() != Some(&self.revisions()) {
                return Ok(self.report());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_whole_seconds_of_at_least_two() {
        assert_eq!(lease_ttl_secs(Duration::from_secs(2)).unwrap(), 2);
        assert_eq!(lease_ttl_secs(Duration::from_millis(2900)).unwrap(), 2);
        let err = lease_ttl_secs(Duration::from_secs(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid option `ttl`: ttl 1s is below etcd's minimum lease ttl of 2s; use with_ttl(Duration::from_secs(2)) or more"
        );
    }
}
