//! The [`Backend`] implementation: reads and generation-conditional writes
//! of one lease object per election.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use google_cloud_storage::client::Storage;
use leasehold_core::{
    AcquireRequest, Backend, Claim, ElectionOptions, Error, Expiry, Family, FencingToken,
    LeaderInfo, RecordOutcome, RecordStore, Result,
};

use crate::builder::GcsBackendBuilder;
use crate::record::{MAX_RECORD_BYTES, Record, unix_ms};

const NAME: &str = "gcs";

/// Cloud Storage accepts about one write per second to one object.
pub const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(1);

/// The object a bucket check writes to, under the prefix. Nothing is ever
/// written there: the check's write is conditioned on generation 1, which
/// no Cloud Storage object has (generations are microsecond timestamps).
const BUCKET_PROBE: &str = ".leasehold-bucket-check";

/// How many times release re-reads after a conflict before it concludes that
/// the record is not this claim's any more.
const RELEASE_ATTEMPTS: usize = 3;

/// What the holder of a term writes, so that renewals need one write, not a
/// read and a write.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holding {
    holder: String,
    value: Vec<u8>,
    ttl: Duration,
    acquired_at_ms: u64,
}

impl Holding {
    /// Whether this is what `req`'s candidate would write.
    fn is_for(&self, req: &AcquireRequest) -> bool {
        self.holder == req.candidate && self.value == req.value && self.ttl == req.ttl
    }
}

/// A write that starts a term and whose outcome is not known yet (sent, no
/// answer: a timeout, a reset, a dropped future). Kept so that the next
/// attempt recognises the record by its owner if the write landed.
#[derive(Debug, Clone)]
struct Pending {
    owner: u64,
    holding: Holding,
    /// The generation the write was conditioned on: once the object is at
    /// another generation that is not ours, the write can never land.
    precondition: i64,
}

/// What this backend remembers between calls.
#[derive(Debug, Default)]
struct State {
    /// (object, owner) -> what that term's holder writes.
    holdings: HashMap<(String, u64), Holding>,
    /// object -> this backend's term-starting write whose answer is unknown.
    pending: HashMap<String, Pending>,
    /// Objects this backend has read a lease record from or written one to:
    /// when one of them is gone, it was deleted, and the deletion is treated as a change to
    /// observe for a full ttl before creating it again.
    seen: HashSet<String>,
    /// The bucket is known to exist (or cannot be checked with these
    /// credentials): a 404 on a read means "no such object".
    bucket_checked: bool,
}

/// The result of one conditional write.
enum Write {
    /// Written; the object's new generation.
    Done(i64),
    /// The precondition failed (HTTP 412): someone else wrote first.
    Conflict,
}

/// Leader election over Google Cloud Storage: one object per election, every
/// change a write conditioned on the object's generation.
///
/// See the crate documentation for the design. Build one with
/// [`GcsBackend::builder`]; share it as `Arc<dyn Backend>`.
#[derive(Debug)]
pub struct GcsBackend {
    client: Storage,
    /// `projects/_/buckets/<bucket>`, as the client wants it.
    bucket_path: String,
    bucket: String,
    prefix: String,
    state: Mutex<State>,
}

impl GcsBackend {
    /// A builder: bucket, prefix, endpoint, credentials.
    pub fn builder() -> GcsBackendBuilder {
        GcsBackendBuilder::new()
    }

    pub(crate) fn new(client: Storage, bucket: String, prefix: String) -> Self {
        GcsBackend {
            client,
            bucket_path: format!("projects/_/buckets/{bucket}"),
            bucket,
            prefix,
            state: Mutex::new(State::default()),
        }
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The bucket as the client addresses it (`projects/_/buckets/<bucket>`).
    pub fn bucket_path(&self) -> &str {
        &self.bucket_path
    }

    /// The underlying Cloud Storage client (to inspect or repair lease
    /// objects by hand; never write a lease object while candidates run).
    pub fn client(&self) -> &Storage {
        &self.client
    }

    /// The name of the object holding `election`'s lease record:
    /// `<prefix>/<election>`, or `<election>` with an empty prefix.
    pub fn object_name(&self, election: &str) -> String {
        if self.prefix.is_empty() {
            election.to_owned()
        } else {
            format!("{}/{election}", self.prefix)
        }
    }

    fn gs_url(&self, object: &str) -> String {
        format!("gs://{}/{object}", self.bucket)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent
        // (every update is a single insert or remove), so a poisoned lock is
        // still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keep what a holder writes; the object now counts as seen (a backend
    /// that only ever wrote it knows it exists as well as one that read it).
    fn remember(&self, object: &str, owner: u64, holding: Holding) {
        let mut state = self.state();
        state.seen.insert(object.to_owned());
        state.holdings.insert((object.to_owned(), owner), holding);
    }

    fn forget(&self, object: &str, owner: u64) {
        self.state().holdings.remove(&(object.to_owned(), owner));
    }

    fn holding(&self, object: &str, owner: u64) -> Option<Holding> {
        self.state()
            .holdings
            .get(&(object.to_owned(), owner))
            .cloned()
    }

    fn pending(&self, object: &str) -> Option<Pending> {
        self.state().pending.get(object).cloned()
    }

    fn set_pending(&self, object: &str, pending: Pending) {
        self.state().pending.insert(object.to_owned(), pending);
    }

    fn clear_pending(&self, object: &str, owner: u64) {
        let mut state = self.state();
        if state.pending.get(object).is_some_and(|p| p.owner == owner) {
            state.pending.remove(object);
        }
    }

    fn has_seen(&self, object: &str) -> bool {
        self.state().seen.contains(object)
    }

    /// Read the lease record and its generation; `None` when there is no object.
    async fn read(&self, object: &str) -> Result<Option<(Record, i64)>> {
        let mut resp = match self
            .client
            .read_object(&self.bucket_path, object)
            .send()
            .await
        {
            Ok(resp) => resp,
            Err(e) if is_not_found(&e) => {
                self.check_bucket(object, &e).await?;
                return Ok(None);
            }
            Err(e) => return Err(self.map_err(e, "read", object)),
        };
        let meta = resp.object();
        let invalid = |message: String| Error::InvalidRecord {
            backend: NAME,
            path: self.gs_url(object),
            message,
        };
        if usize::try_from(meta.size).map_or(true, |s| s > MAX_RECORD_BYTES) {
            return Err(invalid(format!(
                "the object is {} bytes, larger than any lease record; move it away or use another prefix",
                meta.size
            )));
        }
        let generation = meta.generation;
        let mut body = Vec::new();
        while let Some(chunk) = resp.next().await {
            let chunk = chunk.map_err(|e| self.map_err(e, "read", object))?;
            body.extend_from_slice(&chunk);
            if body.len() > MAX_RECORD_BYTES {
                return Err(invalid(
                    "the object is larger than any lease record; move it away or use another prefix"
                        .to_owned(),
                ));
            }
        }
        let record = Record::decode(&body).map_err(invalid)?;
        self.state().seen.insert(object.to_owned());
        Ok(Some((record, generation)))
    }

    /// After a 404 on a read of `object`: make sure it means "no object",
    /// not "no bucket" (Cloud Storage and emulators answer 404 for both).
    /// Checked once per backend: from the error's message when it says so,
    /// else with one write that cannot succeed in an existing bucket (412)
    /// and fails with 404 in a missing one.
    async fn check_bucket(&self, object: &str, e: &google_cloud_storage::Error) -> Result<()> {
        if self.state().bucket_checked {
            return Ok(());
        }
        let missing = |how: String| {
            Error::Config(format!(
                "bucket {} does not exist ({how}); check the bucket name in the URL or configuration, or create the bucket",
                self.bucket
            ))
        };
        if e.to_string()
            .to_ascii_lowercase()
            .contains("bucket does not exist")
        {
            return Err(missing(format!("reading {}: {e}", self.gs_url(object))));
        }
        let probe = self.object_name(BUCKET_PROBE);
        let result = self
            .client
            .write_object(&self.bucket_path, &probe, Bytes::new())
            .set_if_generation_match(1)
            .with_idempotency(false)
            .send_buffered()
            .await;
        match result {
            // The precondition was checked, so the bucket exists (and an
            // object at generation 1 would prove it too).
            Ok(_) => {}
            Err(e) if e.http_status_code() == Some(412) => {}
            Err(e) if is_not_found(&e) => {
                return Err(missing(format!(
                    "reading {} and a conditional write to {} both answered 404",
                    self.gs_url(object),
                    self.gs_url(&probe)
                )));
            }
            // Read-only credentials cannot run the check; reads were
            // allowed, so take the 404 as "no object".
            Err(e) if matches!(e.http_status_code(), Some(401 | 403)) => {
                tracing::debug!(bucket = %self.bucket, error = %e, "cannot check that the bucket exists with these credentials");
            }
            Err(e) => return Err(self.map_err(e, "bucket check (write)", &probe)),
        }
        self.state().bucket_checked = true;
        Ok(())
    }

    /// Write `record` if the object's generation is `generation` (0: if
    /// there is no object). Never retried by the client.
    async fn write(&self, object: &str, record: &Record, generation: i64) -> Result<Write> {
        let body = Bytes::from(record.encode());
        let result = self
            .client
            .write_object(&self.bucket_path, object, body)
            .set_if_generation_match(generation)
            .set_content_type("application/json")
            .set_cache_control("no-store")
            .with_idempotency(false)
            .send_buffered()
            .await;
        match result {
            Ok(obj) => Ok(Write::Done(obj.generation)),
            Err(e) if e.http_status_code() == Some(412) => Ok(Write::Conflict),
            Err(e) => Err(self.map_err(e, "write", object)),
        }
    }

    /// After a lost race: who holds the election now.
    async fn held_now(&self, object: &str) -> Result<RecordOutcome> {
        Ok(match self.read(object).await? {
            Some((record, generation)) => RecordOutcome::Held {
                leader: record.leader(generation),
                revision: generation,
            },
            None => RecordOutcome::Held {
                leader: None,
                revision: 0,
            },
        })
    }

    fn map_err(&self, e: google_cloud_storage::Error, op: &'static str, object: &str) -> Error {
        let what = format!("{op} of {}", self.gs_url(object));
        let code = e.http_status_code();
        let mapped = match code {
            Some(401 | 403) => Error::permission_denied(
                NAME,
                format!(
                    "{what}: {e}; the credentials need storage.objects.get and storage.objects.create (e.g. roles/storage.objectUser) on bucket {}",
                    self.bucket
                ),
            ),
            Some(404) => Error::Config(format!(
                "{what}: {e}; does bucket {} exist? create it first",
                self.bucket
            )),
            Some(429) => Error::unavailable(
                NAME,
                format!(
                    "{what}: {e}; Cloud Storage allows about one write per second to one object, so this is retried (a longer ttl makes it rarer)"
                ),
            ),
            Some(408 | 500..=599) => Error::unavailable(NAME, format!("{what}: {e}")),
            None if e.is_timeout() || e.is_io() || e.is_connect() || e.is_transport() => {
                Error::unavailable(NAME, format!("{what}: {e}"))
            }
            // The client's own words for this are a chain of half
            // sentences ("cannot create auth headers and future attempts
            // will not succeed"); the innermost cause says what is wrong.
            _ if e.is_authentication() => Error::permission_denied(
                NAME,
                format!(
                    "{what}: cannot authenticate: {}; {AUTH_HINT}",
                    root_cause(&e)
                ),
            ),
            _ => Error::backend(NAME, format!("{what}: {e}")),
        };
        mapped.caused_by(e)
    }

    fn claim(election: &str, object: &str, owner: u64, token: u64, generation: i64) -> Claim {
        Claim {
            election: election.to_owned(),
            key: object.to_owned(),
            session: 0,
            owner: format!("{owner:016x}"),
            token: FencingToken(token),
            version: generation,
        }
    }

    /// Renew when this backend does not know the claim's holding, or after a
    /// conflict: read, check that the record is still this claim's (its
    /// owner) and not released, rewrite it under the generation just read.
    async fn renew_slow(&self, claim: &Claim) -> Result<Claim> {
        let owner = owner_of(claim).ok_or_else(|| not_ours(claim))?;
        let token = claim.token.get();
        let object = claim.key.as_str();
        let read = match self.read(object).await {
            // Whatever overwrote the record, this term's lease is gone.
            Err(Error::InvalidRecord { path, message, .. }) => {
                return Err(Error::Lost(format!(
                    "{path} no longer holds a lease record ({message})"
                )));
            }
            other => other?,
        };
        let Some((record, generation)) = read else {
            return Err(Error::Lost(format!(
                "{} was deleted; candidates that saw it wait a full ttl before creating it again",
                self.gs_url(object)
            )));
        };
        if record.owner != owner {
            return Err(Error::Lost(format!(
                "{} was replaced: {} by {:?} (token {}), not this claim's term (token {token})",
                self.gs_url(object),
                if record.released { "released" } else { "held" },
                record.holder,
                record.token_at(generation)
            )));
        }
        if record.released {
            return Err(Error::Lost(format!(
                "the term with token {token} of {} was released",
                self.gs_url(object)
            )));
        }
        // Only this term's holder knows its owner: this generation is ours
        // (an earlier write whose answer was lost, or a renewal by another
        // client of the same claim).
        let holding = Holding {
            holder: record.holder,
            value: record.value,
            ttl: record.ttl,
            acquired_at_ms: record.acquired_at_ms,
        };
        let fresh = record_of(&holding, owner, Some(token), false, unix_ms());
        match self.write(object, &fresh, generation).await? {
            Write::Done(g) => {
                self.remember(object, owner, holding);
                Ok(Claim {
                    version: g,
                    ..claim.clone()
                })
            }
            Write::Conflict => Err(Error::Lost(format!(
                "{} changed while renewing the term with token {token}; another candidate took over",
                self.gs_url(object)
            ))),
        }
    }

    /// The record read is this backend's own term-starting write whose answer
    /// was lost: rewrite it under the generation read (so the term's
    /// deadline counts from a write sent during this call) and lead.
    async fn adopt(
        &self,
        req: &AcquireRequest,
        object: &str,
        pending: &Pending,
        record: &Record,
        generation: i64,
    ) -> Result<RecordOutcome> {
        let token = record.token_at(generation);
        let fresh = record_of(
            &pending.holding,
            pending.owner,
            Some(token),
            false,
            unix_ms(),
        );
        match self.write(object, &fresh, generation).await? {
            Write::Done(g) => {
                self.clear_pending(object, pending.owner);
                self.remember(object, pending.owner, pending.holding.clone());
                tracing::info!(object = %self.gs_url(object), token, "found this candidate's own write whose answer was lost; leading");
                Ok(RecordOutcome::Acquired(Self::claim(
                    &req.election,
                    object,
                    pending.owner,
                    token,
                    g,
                )))
            }
            Write::Conflict => self.held_now(object).await,
        }
    }
}

/// A new per-term owner identity: 64 random bits (never 0), from the
/// standard library's randomly keyed SipHash over a process-wide counter
/// and the time.
/// What to check when Cloud Storage credentials do not work, in the words
/// of both the URL and the builder.
pub(crate) const AUTH_HINT: &str = "check the application default credentials (`gcloud auth application-default login`, or GOOGLE_APPLICATION_CREDENTIALS naming a readable key file), or give a key file (URL: credentials=/path/key.json; builder: service_account_key_file), or for an emulator no credentials (URL: credentials=none; builder: anonymous())";

/// The innermost error of `e`'s source chain, in its own words.
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string().trim_end_matches('.').to_owned()
}

fn new_owner() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u64(unix_ms());
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let owner = hasher.finish();
        if owner != 0 {
            return owner;
        }
    }
}

/// The owner identity of `claim` (its `owner`, in hex); `None` for a claim
/// this backend did not make.
fn owner_of(claim: &Claim) -> Option<u64> {
    u64::from_str_radix(&claim.owner, 16).ok()
}

fn not_ours(claim: &Claim) -> Error {
    Error::Lost(format!(
        "claim {} has no Cloud Storage owner identity ({:?}); it is not this backend's",
        claim.key, claim.owner
    ))
}

fn is_not_found(e: &google_cloud_storage::Error) -> bool {
    e.http_status_code() == Some(404)
        || e.status()
            .is_some_and(|s| s.code == google_cloud_gax::error::rpc::Code::NotFound)
}

#[async_trait]
impl Backend for GcsBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn family(&self) -> Family<'_> {
        Family::Record(self)
    }

    fn validate(&self, options: &ElectionOptions) -> Result<()> {
        if options.renew_interval < MIN_RENEW_INTERVAL {
            return Err(Error::invalid_option(
                "renew_interval",
                format!(
                    "{:?} is below Cloud Storage's limit of about one write per second per object; use at least 1s (ElectionOptions::with_ttl(4s) or more gives that: it renews every ttl/4; 6s or more leaves room for handovers)",
                    options.renew_interval
                ),
            ));
        }
        let object = self.object_name(&options.election);
        if object.len() > 1024 {
            return Err(Error::invalid_option(
                "election",
                format!(
                    "the object name {object:?} is {} bytes, more than Cloud Storage's 1024; use a shorter election name or prefix",
                    object.len()
                ),
            ));
        }
        Ok(())
    }

    /// One read. A record whose holder stopped renewing still names it
    /// until a candidate takes over: Cloud Storage does not expire records.
    async fn leader(&self, election: &str) -> Result<Option<LeaderInfo>> {
        let object = self.object_name(election);
        Ok(self
            .read(&object)
            .await?
            .and_then(|(record, generation)| record.leader(generation)))
    }
}

#[async_trait]
impl RecordStore for GcsBackend {
    /// Cloud Storage expires nothing: followers observe.
    fn expiry(&self) -> Expiry {
        Expiry::Observed
    }

    /// One read, then at most one conditional write: create (generation 0),
    /// take over a released record, or take over the record at
    /// `req.expired_revision` (a new owner; the token is the new
    /// generation). A missing object that this backend has seen before was
    /// deleted: it is created only once the engine has observed its absence
    /// (revision 0) for a full ttl. A record this backend wrote in an
    /// earlier call whose answer was lost is recognised by its owner and
    /// rewritten: this candidate leads at once.
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<RecordOutcome> {
        let object = self.object_name(&req.election);
        let now = unix_ms();
        let read = self.read(&object).await?;
        let pending = self.pending(&object);
        if let (Some((record, generation)), Some(p)) = (&read, &pending) {
            if record.owner == p.owner && !record.released && p.holding.is_for(req) {
                return self.adopt(req, &object, p, record, *generation).await;
            }
            if *generation != p.precondition {
                // The object moved on without our write: it can never land.
                self.clear_pending(&object, p.owner);
            }
        }
        let precondition = match read {
            None => {
                if self.has_seen(&object) && req.expired_revision != Some(0) {
                    // Deleted (by hand, or by a lifecycle rule) while its
                    // holder may still lead: wait a full ttl, as for a
                    // record seen unchanged.
                    return Ok(RecordOutcome::Held {
                        leader: None,
                        revision: 0,
                    });
                }
                0
            }
            Some((record, generation)) => {
                let expired = req.expired_revision == Some(generation);
                if !record.released && !expired {
                    return Ok(RecordOutcome::Held {
                        leader: record.leader(generation),
                        revision: generation,
                    });
                }
                if !record.released && record.ttl > req.ttl {
                    return Err(Error::invalid_option(
                        "ttl",
                        format!(
                            "the holder of {} uses a lease of {:?}, longer than this candidate's {:?}; every candidate of one election must use the same ttl and retry_interval (the lease is the ttl less one poll), else a takeover may come too early; a leasehold from before issue 25 records its whole ttl here: upgrade every candidate of the election",
                            self.gs_url(&object),
                            record.ttl,
                            req.ttl
                        ),
                    ));
                }
                generation
            }
        };
        let holding = Holding {
            holder: req.candidate.clone(),
            value: req.value.clone(),
            ttl: req.ttl,
            acquired_at_ms: now,
        };
        // Retrying a write whose answer is unknown, under the same
        // precondition: keep its owner, so that whichever attempt lands is
        // recognised as ours.
        let owner = match &pending {
            Some(p) if p.precondition == precondition && p.holding.is_for(req) => p.owner,
            _ => new_owner(),
        };
        // Registered before the write is sent: the call may be dropped
        // while the write is in flight.
        self.set_pending(
            &object,
            Pending {
                owner,
                holding: holding.clone(),
                precondition,
            },
        );
        let record = record_of(&holding, owner, None, false, now);
        match self.write(&object, &record, precondition).await? {
            Write::Done(g) => {
                self.clear_pending(&object, owner);
                self.remember(&object, owner, holding);
                let token = u64::try_from(g).unwrap_or(0);
                Ok(RecordOutcome::Acquired(Self::claim(
                    &req.election,
                    &object,
                    owner,
                    token,
                    g,
                )))
            }
            // An earlier attempt of ours may have landed: the next call
            // recognises it by its owner.
            Write::Conflict => self.held_now(&object).await,
        }
    }

    /// One conditional write under the claim's generation; after a conflict,
    /// one read and at most one more write (see [`GcsBackend`] docs).
    async fn renew(&self, claim: &Claim) -> Result<Claim> {
        let owner = owner_of(claim).ok_or_else(|| not_ours(claim))?;
        let object = claim.key.as_str();
        let result = match self.holding(object, owner) {
            Some(holding) => {
                let record = record_of(&holding, owner, Some(claim.token.get()), false, unix_ms());
                match self.write(object, &record, claim.version).await? {
                    Write::Done(g) => Ok(Claim {
                        version: g,
                        ..claim.clone()
                    }),
                    Write::Conflict => self.renew_slow(claim).await,
                }
            }
            None => self.renew_slow(claim).await,
        };
        if matches!(result, Err(Error::Lost(_))) {
            self.forget(object, owner);
        }
        result
    }

    /// Write the record back as released under the claim's generation. A
    /// record of another owner, a released one, no object or foreign data
    /// means there is nothing left to release.
    async fn release(&self, claim: &Claim) -> Result<()> {
        // A claim without an owner of ours is not ours to release.
        let Some(owner) = owner_of(claim) else {
            return Ok(());
        };
        let token = claim.token.get();
        let object = claim.key.as_str();
        if let Some(holding) = self.holding(object, owner) {
            let record = record_of(&holding, owner, Some(token), true, unix_ms());
            if let Write::Done(_) = self.write(object, &record, claim.version).await? {
                self.forget(object, owner);
                return Ok(());
            }
        }
        for _ in 0..RELEASE_ATTEMPTS {
            let read = match self.read(object).await {
                // Foreign data replaced the record: the term is over, and
                // the data is not ours to touch.
                Err(Error::InvalidRecord { .. }) => break,
                other => other?,
            };
            let Some((record, generation)) = read else {
                break;
            };
            if record.owner != owner || record.released {
                break;
            }
            let released = Record {
                released: true,
                token: Some(record.token_at(generation)),
                renewed_at_ms: unix_ms(),
                ..record
            };
            if let Write::Done(_) = self.write(object, &released, generation).await? {
                break;
            }
        }
        self.forget(object, owner);
        Ok(())
    }
}

fn record_of(
    holding: &Holding,
    owner: u64,
    token: Option<u64>,
    released: bool,
    now: u64,
) -> Record {
    Record {
        holder: holding.holder.clone(),
        owner,
        token,
        value: holding.value.clone(),
        ttl: holding.ttl,
        released,
        acquired_at_ms: holding.acquired_at_ms,
        renewed_at_ms: now,
    }
}
