//! The in-memory backend: a simulated store inside this process.
//!
//! Two kinds of store, to exercise both paths of the engine:
//!
//! * [`MemoryStore::new`] is a queue store ([`QueueStore`]) like etcd or
//!   ZooKeeper: every candidate holds a claim in a first-come-first-served
//!   queue, in a session that the *store* expires when it is not kept alive
//!   for a ttl; waiters are woken when the claim ahead of them goes (a
//!   watch, no polling).
//! * [`MemoryStore::polling`] is a record store ([`RecordStore`]) like Cloud
//!   Storage: one record per election changed only by conditional writes on
//!   its generation, expiry observed by the followers
//!   ([`Expiry::Observed`]), no watch (the engine polls).
//!
//! Each [`MemoryStore::client`] is an independent client (think: its own
//! connection and session), so many candidates can run in one process. It is
//! the backend of the engine's deterministic tests (it works under paused
//! tokio time) and of the quickstart demo; it is not shared between
//! processes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::{Duration, Instant, sleep_until};

use crate::backend::{
    Backend, Expiry, Family, LeaderWatch, ListParticipants, ParticipantsWatch, Proclaim,
    QueueStore, RecordStore, SessionScope, WatchLeader,
};
use crate::error::{Error, Result};
use crate::types::{AcquireRequest, Claim, FencingToken, LeaderInfo, QueueOutcome, RecordOutcome};

const NAME: &str = "memory";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Queue,
    Record,
}

/// A simulated store shared by its clients. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    kind: Kind,
    state: Mutex<State>,
    /// Bumped (to the store revision) on every change.
    changed: watch::Sender<i64>,
}

#[derive(Debug, Default)]
struct State {
    revision: i64,
    next_token: u64,
    next_lease: i64,
    leases: HashMap<i64, LeaseEntry>,
    queues: HashMap<String, Vec<Entry>>,
    records: HashMap<String, Record>,
}

#[derive(Debug)]
struct LeaseEntry {
    ttl: Duration,
    expires_at: Instant,
}

#[derive(Debug, Clone)]
struct Entry {
    key: String,
    candidate: String,
    value: Vec<u8>,
    token: u64,
    lease: i64,
}

impl Entry {
    fn info(&self) -> LeaderInfo {
        LeaderInfo {
            id: self.candidate.clone(),
            value: self.value.clone(),
            token: FencingToken(self.token),
        }
    }
}

#[derive(Debug, Clone)]
struct Record {
    holder: String,
    /// The owner identity of the term (checked by renew and release).
    owner: String,
    value: Vec<u8>,
    term: u64,
    generation: i64,
    released: bool,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store like etcd or ZooKeeper: fair queue, server-side expiry, watch.
    pub fn new() -> Self {
        Self::with_kind(Kind::Queue)
    }

    /// A store like Cloud Storage: one record per election, conditional
    /// writes on a generation, no server-side expiry, no watch.
    pub fn polling() -> Self {
        Self::with_kind(Kind::Record)
    }

    fn with_kind(kind: Kind) -> Self {
        MemoryStore {
            shared: Arc::new(Shared {
                kind,
                state: Mutex::new(State::default()),
                changed: watch::channel(0).0,
            }),
        }
    }

    /// A new independent client of this store. Electors built on the same
    /// client (or its clones) share its sessions, as they would share one
    /// etcd lease; each client has sessions of its own.
    pub fn client(&self) -> MemoryBackend {
        MemoryBackend {
            shared: self.shared.clone(),
            client: Arc::new(()),
        }
    }

    /// How many sessions the store holds now.
    pub fn lease_count(&self) -> usize {
        let mut st = self.shared.lock();
        st.expire(Instant::now());
        st.leases.len()
    }

    /// The lease (session) behind `candidate`'s claim in `election`, if it
    /// has one.
    pub fn session_of(&self, election: &str, candidate: &str) -> Option<i64> {
        let mut st = self.shared.lock();
        st.expire(Instant::now());
        st.queues
            .get(election)
            .and_then(|q| q.iter().find(|e| e.candidate == candidate))
            .map(|e| e.lease)
    }

    /// Delete `candidate`'s claim in `election` as an operator would by hand,
    /// leaving its session alive. Returns whether there was one.
    pub fn delete_claim(&self, election: &str, candidate: &str) -> bool {
        let mut st = self.shared.lock();
        let Some(q) = st.queues.get_mut(election) else {
            return false;
        };
        let before = q.len();
        q.retain(|e| e.candidate != candidate);
        let removed = q.len() != before;
        st.queues.retain(|_, q| !q.is_empty());
        if removed {
            self.shared.bump(&mut st);
        }
        removed
    }

    /// Delete the leader's claim of `election` (its record, on a record
    /// store) as an operator would by hand. Returns whether there was one.
    pub fn delete_by_hand(&self, election: &str) -> bool {
        let mut st = self.shared.lock();
        let removed = match self.shared.kind {
            Kind::Queue => {
                let removed = st.queues.get_mut(election).is_some_and(|q| {
                    !q.is_empty() && {
                        q.remove(0);
                        true
                    }
                });
                st.queues.retain(|_, q| !q.is_empty());
                removed
            }
            Kind::Record => st.records.remove(election).is_some(),
        };
        if removed {
            self.shared.bump(&mut st);
        }
        removed
    }

    /// Expire a lease (session) now, as the server would after its ttl:
    /// every claim attached to it goes. For tests of a candidate whose
    /// session dies. Returns whether the lease existed.
    pub fn expire_session(&self, session: i64) -> bool {
        let mut st = self.shared.lock();
        let existed = st.leases.remove(&session).is_some();
        if existed {
            st.drop_lease_entries(&[session]);
            self.shared.bump(&mut st);
        }
        existed
    }

    /// Expire the session of `candidate`'s claim in `election` now (queue
    /// stores), as if its client had vanished: the claim goes, and the
    /// candidate learns it at its next call. Returns whether there was one.
    pub fn expire_candidate(&self, election: &str, candidate: &str) -> bool {
        let lease = {
            let st = self.shared.lock();
            st.queues
                .get(election)
                .and_then(|q| q.iter().find(|e| e.candidate == candidate))
                .map(|e| e.lease)
        };
        lease.is_some_and(|l| self.expire_session(l))
    }

    /// How many claims (leader and waiters) an election has now.
    pub fn queue_len(&self, election: &str) -> usize {
        let mut st = self.shared.lock();
        st.expire(Instant::now());
        st.queues.get(election).map_or(0, Vec::len)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self, st: &mut State) {
        st.revision += 1;
        self.changed.send_replace(st.revision);
    }

    /// Lock and apply server-side expiry, notifying if anything expired.
    fn lock_expired(&self) -> MutexGuard<'_, State> {
        let mut st = self.lock();
        if st.expire(Instant::now()) {
            self.bump(&mut st);
        }
        st
    }
}

impl State {
    /// Remove leases past their expiry and their claims; true if any.
    fn expire(&mut self, now: Instant) -> bool {
        let dead: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        if dead.is_empty() {
            return false;
        }
        for id in &dead {
            self.leases.remove(id);
        }
        self.drop_lease_entries(&dead);
        true
    }

    fn drop_lease_entries(&mut self, leases: &[i64]) {
        for q in self.queues.values_mut() {
            q.retain(|e| !leases.contains(&e.lease));
        }
        self.queues.retain(|_, q| !q.is_empty());
    }

    fn find(&self, claim: &Claim) -> Option<(usize, &Entry)> {
        let q = self.queues.get(&claim.election)?;
        q.iter().enumerate().find(|(_, e)| {
            e.key == claim.key && e.token == claim.token.0 && e.lease == claim.session
        })
    }

    /// Put `req`'s candidate at the end of its election's line, in `lease`,
    /// with fencing token `token`; its claim.
    fn enqueue(&mut self, req: &AcquireRequest, lease: i64, token: u64) -> Claim {
        let key = session_key(&req.election, lease);
        self.queues
            .entry(req.election.clone())
            .or_default()
            .push(Entry {
                key: key.clone(),
                candidate: req.candidate.clone(),
                value: req.value.clone(),
                token,
                lease,
            });
        Claim {
            election: req.election.clone(),
            key,
            session: lease,
            owner: String::new(),
            token: FencingToken(token),
            version: 0,
        }
    }

    fn lease_expiry(&self, lease: i64) -> Option<Instant> {
        self.leases.get(&lease).map(|l| l.expires_at)
    }

    fn leader(&self, kind: Kind, election: &str) -> Option<LeaderInfo> {
        match kind {
            Kind::Queue => self.queues.get(election)?.first().map(Entry::info),
            Kind::Record => {
                let r = self.records.get(election)?;
                (!r.released).then(|| LeaderInfo {
                    id: r.holder.clone(),
                    value: r.value.clone(),
                    token: FencingToken(r.term),
                })
            }
        }
    }
}

/// One client of a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
    /// This client's identity: its clones share sessions.
    client: Arc<()>,
}

/// The key of `session`'s claim in `election` (one per session).
fn session_key(election: &str, session: i64) -> String {
    format!("{election}/{session:016x}")
}

fn lost(claim: &Claim) -> Error {
    Error::Lost(format!(
        "claim {} (token {}) no longer exists",
        claim.key, claim.token
    ))
}

impl MemoryBackend {
    /// Where `claim` stands in its line: holding when among the first
    /// `permits`.
    fn check_claim(&self, claim: &Claim, permits: u32) -> Result<QueueOutcome> {
        let st = self.shared.lock_expired();
        let Some((position, _)) = st.find(claim) else {
            return Err(lost(claim));
        };
        if position < permits as usize {
            return Ok(QueueOutcome::Acquired(claim.clone()));
        }
        let head = st.queues.get(&claim.election).and_then(|q| q.first());
        Ok(QueueOutcome::Queued {
            leader: head.map(Entry::info),
            claim: claim.clone(),
        })
    }

    /// Apply `f` to the record if `claim` still owns it; the new generation.
    fn write_record(&self, claim: &Claim, f: impl FnOnce(&mut Record)) -> Option<i64> {
        let mut st = self.shared.lock();
        let owned = st.records.get(&claim.election).is_some_and(|r| {
            r.generation == claim.version && r.owner == claim.owner && !r.released
        });
        if !owned {
            return None;
        }
        st.revision += 1;
        let generation = st.revision;
        if let Some(r) = st.records.get_mut(&claim.election) {
            r.generation = generation;
            f(r);
        }
        self.shared.changed.send_replace(generation);
        Some(generation)
    }

    fn session_lost(session: i64) -> Error {
        Error::Lost(format!(
            "session {session:x} no longer exists (it expired or was closed)"
        ))
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn family(&self) -> Family<'_> {
        match self.shared.kind {
            Kind::Queue => Family::Queue(self),
            Kind::Record => Family::Record(self),
        }
    }

    async fn leader(&self, election: &str) -> Result<Option<LeaderInfo>> {
        let st = self.shared.lock_expired();
        Ok(st.leader(self.shared.kind, election))
    }

    fn proclaimer(&self) -> Option<&dyn Proclaim> {
        Some(self)
    }

    fn leader_watch(&self) -> Option<&dyn WatchLeader> {
        match self.shared.kind {
            Kind::Queue => Some(self),
            Kind::Record => None,
        }
    }

    fn participants(&self) -> Option<&dyn ListParticipants> {
        match self.shared.kind {
            Kind::Queue => Some(self),
            Kind::Record => None,
        }
    }
}

#[async_trait]
impl ListParticipants for MemoryBackend {
    async fn participants(&self, election: &str) -> Result<Vec<LeaderInfo>> {
        let st = self.shared.lock_expired();
        Ok(st
            .queues
            .get(election)
            .map(|q| q.iter().map(Entry::info).collect())
            .unwrap_or_default())
    }

    /// Woken by the store's change notification (and by the earliest lease
    /// expiry of the line): no polling, no extra reads.
    async fn watch_participants(&self, election: &str) -> Result<Box<dyn ParticipantsWatch>> {
        Ok(Box::new(self.memory_watch(election, |st, election| {
            let line = st.queues.get(election).map(Vec::as_slice).unwrap_or(&[]);
            (
                line.iter().map(Entry::info).collect(),
                line.iter().filter_map(|e| st.lease_expiry(e.lease)).min(),
            )
        })))
    }
}

#[async_trait]
impl RecordStore for MemoryBackend {
    fn expiry(&self) -> Expiry {
        Expiry::Observed
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<RecordOutcome> {
        let mut st = self.shared.lock();
        st.revision += 1;
        let generation = st.revision;
        let current = st.records.get(&req.election).cloned();
        // The token is the write's store revision, which only grows: a
        // record deleted by hand and made again never gets an old token.
        let term = match &current {
            None => u64::try_from(generation).unwrap_or(0),
            Some(r) if r.released || req.expired_revision == Some(r.generation) => {
                u64::try_from(generation).unwrap_or(0)
            }
            Some(r) => {
                st.revision -= 1;
                return Ok(RecordOutcome::Held {
                    leader: Some(LeaderInfo {
                        id: r.holder.clone(),
                        value: r.value.clone(),
                        token: FencingToken(r.term),
                    }),
                    revision: r.generation,
                });
            }
        };
        let owner = format!("{generation:016x}");
        st.records.insert(
            req.election.clone(),
            Record {
                holder: req.candidate.clone(),
                owner: owner.clone(),
                value: req.value.clone(),
                term,
                generation,
                released: false,
            },
        );
        self.shared.changed.send_replace(generation);
        Ok(RecordOutcome::Acquired(Claim {
            election: req.election.clone(),
            key: req.election.clone(),
            session: 0,
            owner,
            token: FencingToken(term),
            version: generation,
        }))
    }

    async fn renew(&self, claim: &Claim) -> Result<Claim> {
        match self.write_record(claim, |_| {}) {
            Some(generation) => Ok(Claim {
                version: generation,
                ..claim.clone()
            }),
            None => Err(lost(claim)),
        }
    }

    async fn release(&self, claim: &Claim) -> Result<()> {
        self.write_record(claim, |r| r.released = true);
        Ok(())
    }
}

#[async_trait]
impl QueueStore for MemoryBackend {
    fn scope(&self) -> SessionScope {
        SessionScope::of(&self.client)
    }

    async fn open_session(&self, ttl: Duration) -> Result<i64> {
        let mut st = self.shared.lock_expired();
        st.next_lease += 1;
        let lease = st.next_lease;
        st.leases.insert(
            lease,
            LeaseEntry {
                ttl,
                expires_at: Instant::now() + ttl,
            },
        );
        Ok(lease)
    }

    async fn keep_alive(&self, session: i64) -> Result<()> {
        let mut st = self.shared.lock_expired();
        match st.leases.get_mut(&session) {
            Some(l) => {
                l.expires_at = Instant::now() + l.ttl;
                Ok(())
            }
            None => Err(Self::session_lost(session)),
        }
    }

    async fn close_session(&self, session: i64) -> Result<()> {
        let mut st = self.shared.lock_expired();
        if st.leases.remove(&session).is_some() {
            st.drop_lease_entries(&[session]);
            self.shared.bump(&mut st);
        }
        Ok(())
    }

    async fn join(&self, req: &AcquireRequest, session: i64) -> Result<QueueOutcome> {
        let claim = {
            let mut st = self.shared.lock_expired();
            if !st.leases.contains_key(&session) {
                return Err(Error::Lost(format!(
                    "session {session:x} no longer exists (it expired or was closed); open a new one"
                )));
            }
            // A claim this session already has in the election is left by a
            // create whose answer was lost: never adopted, replaced (a new
            // token, at the end of the line).
            let key = session_key(&req.election, session);
            if let Some(q) = st.queues.get_mut(&req.election) {
                q.retain(|e| e.key != key);
            }
            st.queues.retain(|_, q| !q.is_empty());
            st.next_token += 1;
            let token = st.next_token;
            let claim = st.enqueue(req, session, token);
            self.shared.bump(&mut st);
            claim
        };
        self.check_claim(&claim, req.permits)
    }

    async fn check(&self, claim: &Claim, permits: u32) -> Result<QueueOutcome> {
        self.check_claim(claim, permits)
    }

    async fn release(&self, claim: &Claim) -> Result<()> {
        let mut st = self.shared.lock_expired();
        if st.find(claim).is_some() {
            // Only this claim: the session keeps the others.
            if let Some(q) = st.queues.get_mut(&claim.election) {
                q.retain(|e| e.key != claim.key);
            }
            st.queues.retain(|_, q| !q.is_empty());
            self.shared.bump(&mut st);
        }
        Ok(())
    }

    async fn withdraw_in(&self, election: &str, session: i64) -> Result<()> {
        let key = session_key(election, session);
        let mut st = self.shared.lock_expired();
        let before = st.queues.get(election).map_or(0, |q| q.len());
        if let Some(q) = st.queues.get_mut(election) {
            q.retain(|e| e.key != key);
        }
        st.queues.retain(|_, q| !q.is_empty());
        if st.queues.get(election).map_or(0, |q| q.len()) != before {
            self.shared.bump(&mut st);
        }
        Ok(())
    }

    async fn wait(&self, claim: &Claim, permits: u32) -> Result<()> {
        let election = &claim.election;
        let mut rx = self.shared.changed.subscribe();
        // The `permits` claims just ahead of ours: only their end can let
        // ours hold.
        let permits = permits.max(1) as usize;
        let ahead: Vec<String> = {
            let st = self.shared.lock_expired();
            let Some(q) = st.queues.get(election) else {
                return Ok(());
            };
            match q.iter().position(|e| e.key == claim.key) {
                Some(i) if i >= permits => {
                    q[i - permits..i].iter().map(|e| e.key.clone()).collect()
                }
                _ => return Ok(()),
            }
        };
        loop {
            let expiry = {
                let st = self.shared.lock_expired();
                let mut first_expiry = None;
                for key in &ahead {
                    let entry = st
                        .queues
                        .get(election)
                        .and_then(|q| q.iter().find(|e| &e.key == key));
                    match entry.and_then(|e| st.lease_expiry(e.lease)) {
                        None => return Ok(()),
                        Some(t) => {
                            first_expiry = Some(first_expiry.map_or(t, |f: Instant| f.min(t)));
                        }
                    }
                }
                first_expiry.unwrap_or_else(Instant::now)
            };
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Ok(()) },
                _ = sleep_until(expiry) => {}
            }
        }
    }

    async fn watch_claim(&self, claim: &Claim) -> Result<()> {
        let mut rx = self.shared.changed.subscribe();
        loop {
            let expiry = {
                let st = self.shared.lock_expired();
                if st.find(claim).is_none() {
                    return Ok(());
                }
                st.lease_expiry(claim.session)
            };
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                r = rx.changed() => if r.is_err() { return Ok(()) },
                _ = sleep_until(expiry.unwrap_or(far)) => {}
            }
        }
    }
}

#[async_trait]
impl Proclaim for MemoryBackend {
    async fn proclaim(&self, claim: &Claim, value: &[u8]) -> Result<Claim> {
        match self.shared.kind {
            Kind::Queue => {
                let mut st = self.shared.lock_expired();
                let leads = st
                    .queues
                    .get(&claim.election)
                    .and_then(|q| q.first())
                    .is_some_and(|e| e.key == claim.key && e.token == claim.token.get());
                if !leads {
                    return Err(lost(claim));
                }
                if let Some(e) = st
                    .queues
                    .get_mut(&claim.election)
                    .and_then(|q| q.first_mut())
                {
                    e.value = value.to_vec();
                }
                self.shared.bump(&mut st);
                Ok(claim.clone())
            }
            Kind::Record => match self.write_record(claim, |r| r.value = value.to_vec()) {
                Some(generation) => Ok(Claim {
                    version: generation,
                    ..claim.clone()
                }),
                None => Err(lost(claim)),
            },
        }
    }
}

#[async_trait]
impl WatchLeader for MemoryBackend {
    async fn watch(&self, election: &str) -> Result<Box<dyn LeaderWatch>> {
        Ok(Box::new(self.memory_watch(election, |st, election| {
            let first = st.queues.get(election).and_then(|q| q.first());
            (
                first.map(Entry::info),
                first.and_then(|e| st.lease_expiry(e.lease)),
            )
        })))
    }
}

impl MemoryBackend {
    fn memory_watch<T>(&self, election: &str, look: Look<T>) -> MemoryWatch<T> {
        MemoryWatch {
            shared: self.shared.clone(),
            rx: self.shared.changed.subscribe(),
            election: election.to_owned(),
            look,
            last: None,
        }
    }
}

/// What a watch follows in the state, and when the lease it hangs on next
/// expires (the store expires leases when it is next touched, so a watch
/// wakes itself then).
type Look<T> = fn(&State, &str) -> (T, Option<Instant>);

/// A watch on a queue store's election: its leader, or its line.
struct MemoryWatch<T> {
    shared: Arc<Shared>,
    rx: watch::Receiver<i64>,
    election: String,
    look: Look<T>,
    /// The last value reported; `None` before the first call.
    last: Option<T>,
}

impl<T: Clone + PartialEq + Send> MemoryWatch<T> {
    /// The value after the next change (the first call: the value now).
    /// Cancel safe: the state is read afresh on every call.
    async fn next_value(&mut self) -> Result<T> {
        loop {
            let (value, expiry) = {
                let st = self.shared.lock_expired();
                (self.look)(&st, &self.election)
            };
            if self.last.as_ref() != Some(&value) {
                self.last = Some(value.clone());
                return Ok(value);
            }
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                r = self.rx.changed() => if r.is_err() {
                    return Err(Error::unavailable(NAME, "store dropped"));
                },
                _ = sleep_until(expiry.unwrap_or(far)) => {}
            }
        }
    }
}

#[async_trait]
impl LeaderWatch for MemoryWatch<Option<LeaderInfo>> {
    async fn next(&mut self) -> Result<Option<LeaderInfo>> {
        self.next_value().await
    }
}

#[async_trait]
impl ParticipantsWatch for MemoryWatch<Vec<LeaderInfo>> {
    async fn next(&mut self) -> Result<Vec<LeaderInfo>> {
        self.next_value().await
    }
}
