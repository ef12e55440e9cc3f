//! The Cloud Storage backend against the fake-gcs-server emulator.
//!
//! Every test starts its own emulator (in memory, a free loopback port) and
//! first runs the precondition canary: if the emulator stopped enforcing
//! `ifGenerationMatch`, every compare-and-swap test below would pass
//! vacuously, so the canary fails loudly instead.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::conformance::{self, Subject, async_trait};
use leasehold_core::{
    AcquireRequest, Attempt, Backend, ElectionOptions, Elector, Error, Family, FencingToken,
    Leadership, LossReason, RecordOutcome, RecordStore,
};

/// The record protocol of a Cloud Storage backend.
fn rec(b: &dyn Backend) -> &dyn RecordStore {
    match b.family() {
        Family::Record(r) => r,
        Family::Queue(_) => panic!("the Cloud Storage backend must be a record store"),
    }
}
use leasehold_gcs::GcsBackend;
use leasehold_gcs::google_cloud_storage::client::Storage;
use leasehold_integration_tests::{AnswerDropper, FakeGcs, Proxy, unique_name};
use tokio::time::{Instant, sleep, timeout};

/// The shortest ttl the backend allows: renew every ttl/4 = 1 s, Cloud
/// Storage's one write per second per object.
const TTL: Duration = Duration::from_secs(4);
/// Time on top of ttl + one poll for a takeover (slow CI machines).
const SLACK: Duration = Duration::from_secs(3);
/// Bound on any single wait in these tests.
const LONG: Duration = Duration::from_secs(60);
/// The object name prefix of these tests.
const PREFIX: &str = "leasehold-it";

/// Start an emulator and prove that it enforces generation preconditions.
async fn emulator() -> FakeGcs {
    let gcs = FakeGcs::start()
        .await
        .unwrap_or_else(|e| panic!("cannot start fake-gcs-server: {e}"));
    canary(&gcs).await;
    gcs
}

async fn backend_at(endpoint: &str) -> GcsBackend {
    GcsBackend::builder()
        .bucket(leasehold_integration_tests::FAKE_GCS_BUCKET)
        .prefix(PREFIX)
        .endpoint(endpoint)
        .anonymous()
        .ignore_environment()
        .build()
        .await
        .unwrap_or_else(|e| panic!("cannot build a gcs backend for {endpoint}: {e}"))
}

async fn client(gcs: &FakeGcs) -> Arc<dyn Backend> {
    Arc::new(backend_at(&gcs.endpoint()).await)
}

fn options(election: &str, candidate: &str) -> ElectionOptions {
    ElectionOptions::new(election, candidate).with_ttl(TTL)
}

/// The lease the engine asks Cloud Storage for with `options`: the ttl less
/// one follower poll (`Backend::lease_plan`), what a raw request must carry
/// to stand for an elector of these options.
fn lease() -> Duration {
    let o = options("any", "any");
    o.ttl - o.retry_interval * 6 / 5
}

fn request(election: &str, candidate: &str, expired_revision: Option<i64>) -> AcquireRequest {
    AcquireRequest {
        election: election.to_owned(),
        candidate: candidate.to_owned(),
        value: candidate.as_bytes().to_vec(),
        ttl: lease(),
        expired_revision,
        permits: 1,
    }
}

/// Campaign in a task of its own; the task ends with the instant this
/// candidate led and its leadership.
fn campaign(elector: Elector) -> tokio::task::JoinHandle<(Instant, Leadership)> {
    tokio::spawn(async move {
        let l = timeout(LONG, elector.lock()).await.unwrap().unwrap();
        (Instant::now(), l)
    })
}

fn bucket_path() -> String {
    format!(
        "projects/_/buckets/{}",
        leasehold_integration_tests::FAKE_GCS_BUCKET
    )
}

/// Write `body` with the precondition `generation`; `Ok(Some(new))`,
/// `Ok(None)` on 412, `Err` on anything else.
async fn raw_write(
    storage: &Storage,
    object: &str,
    body: &'static str,
    generation: i64,
) -> Result<Option<i64>, String> {
    match storage
        .write_object(bucket_path(), object, body)
        .set_if_generation_match(generation)
        .with_idempotency(false)
        .send_buffered()
        .await
    {
        Ok(o) => Ok(Some(o.generation)),
        Err(e) if e.http_status_code() == Some(412) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

async fn raw_read(storage: &Storage, object: &str) -> Vec<u8> {
    let mut resp = storage
        .read_object(bucket_path(), object)
        .send()
        .await
        .unwrap_or_else(|e| panic!("reading {object}: {e}"));
    let mut body = Vec::new();
    while let Some(chunk) = resp.next().await {
        body.extend_from_slice(&chunk.unwrap_or_else(|e| panic!("reading {object}: {e}")));
    }
    body
}

const NOT_ENFORCED: &str = "the emulator does not enforce ifGenerationMatch preconditions: every compare-and-swap test of the gcs backend would pass vacuously; use fake-gcs-server 1.54 (bash scripts/setup)";

/// A stale-generation write must be rejected with 412.
async fn canary(gcs: &FakeGcs) {
    let backend = backend_at(&gcs.endpoint()).await;
    let storage = backend.client();
    let object = unique_name("canary");
    let g1 = raw_write(storage, &object, "one", 0)
        .await
        .unwrap_or_else(|e| panic!("canary: creating {object} failed: {e}"))
        .unwrap_or_else(|| {
            panic!("canary: creating a new object with ifGenerationMatch=0 was refused")
        });
    let again = raw_write(storage, &object, "again", 0)
        .await
        .unwrap_or_else(|e| panic!("canary: {e}"));
    assert_eq!(
        again, None,
        "{NOT_ENFORCED} (a create over an existing object succeeded)"
    );
    let g2 = raw_write(storage, &object, "two", g1)
        .await
        .unwrap_or_else(|e| panic!("canary: {e}"))
        .unwrap_or_else(|| panic!("canary: a write with the current generation was refused"));
    assert_ne!(g1, g2, "canary: the generation did not change on a write");
    let stale = raw_write(storage, &object, "stale", g1)
        .await
        .unwrap_or_else(|e| panic!("canary: {e}"));
    assert_eq!(
        stale, None,
        "{NOT_ENFORCED} (a write with a stale generation succeeded)"
    );
    assert_eq!(raw_read(storage, &object).await, b"two", "{NOT_ENFORCED}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_stale_generation_write_is_rejected() {
    let gcs = FakeGcs::start()
        .await
        .unwrap_or_else(|e| panic!("cannot start fake-gcs-server: {e}"));
    canary(&gcs).await;
}

struct GcsSubject {
    gcs: FakeGcs,
}

#[async_trait]
impl Subject for GcsSubject {
    async fn client(&self) -> Arc<dyn Backend> {
        client(&self.gcs).await
    }

    fn options(&self, election: &str, candidate: &str) -> ElectionOptions {
        options(election, candidate)
    }

    fn slack(&self) -> Duration {
        SLACK
    }

    /// Deletes the election's object, as an operator (or a lifecycle rule)
    /// would.
    async fn delete_by_hand(&self, election: &str) {
        let object = backend_at(&self.gcs.endpoint()).await.object_name(election);
        assert!(
            self.gcs
                .delete_object(self.gcs.bucket(), &object)
                .await
                .expect("delete the object"),
            "{object} was not there to delete"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite() {
    let subject = GcsSubject {
        gcs: emulator().await,
    };
    conformance::run_all(&subject).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handover_on_unlock() {
    let gcs = emulator().await;
    let election = unique_name("handover");
    let a = Elector::new(client(&gcs).await, options(&election, "alpha")).unwrap();
    let b = Elector::new(client(&gcs).await, options(&election, "beta")).unwrap();
    let la = timeout(LONG, a.lock()).await.unwrap().unwrap();
    let poll = b.options().retry_interval;
    let waiting = campaign(b);
    // Let beta poll a few times and see alpha leading.
    sleep(poll * 3).await;
    assert!(
        !waiting.is_finished(),
        "beta led while alpha held the lease"
    );
    let token_a = la.fencing_token();
    let unlocked = Instant::now();
    la.unlock().await.unwrap();
    let (won, lb) = waiting.await.unwrap();
    let handover = won - unlocked;
    // A released record is taken at the next poll: well before a ttl.
    assert!(
        handover < poll * 2 + SLACK,
        "handover took {handover:?} (poll interval {poll:?})"
    );
    assert!(lb.fencing_token() > token_a);
    assert_eq!(lb.leader().id, "beta");
    lb.unlock().await.unwrap();
}

/// A holder that stops renewing (a crash: no release) is replaced no earlier
/// than the lease (the ttl less one poll) after its last renewal was sent,
/// and within the ttl + slack after that renewal was seen to succeed (the
/// ttl is the failover bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn takeover_after_leader_vanishes() {
    let gcs = emulator().await;
    let election = unique_name("vanish");
    let ghost = client(&gcs).await;
    let mut claim = match rec(ghost.as_ref())
        .try_acquire(&request(&election, "ghost", None))
        .await
    {
        Ok(RecordOutcome::Acquired(c)) => c,
        other => panic!("a free election was not won: {other:?}"),
    };
    let b = Elector::new(client(&gcs).await, options(&election, "beta")).unwrap();
    let follower = campaign(b);
    // The ghost renews twice, a second apart, then vanishes.
    let mut last_sent = Instant::now();
    let mut last_seen = Instant::now();
    for _ in 0..2 {
        sleep(Duration::from_secs(1)).await;
        last_sent = Instant::now();
        claim = rec(ghost.as_ref()).renew(&claim).await.unwrap();
        last_seen = Instant::now();
    }
    assert!(
        !follower.is_finished(),
        "beta took over a lease that was being renewed"
    );
    let (won, l) = follower.await.unwrap();
    // The ghost's deadline was its last renewal's send + the lease - the
    // margin; beta must see that renewal unchanged for the whole lease.
    assert!(
        won >= last_sent + lease(),
        "UNSAFE: beta took over {:?} after the ghost's last renewal was sent, less than the lease {:?}",
        won - last_sent,
        lease()
    );
    // The ttl is the failover bound: the lease plus the poll that first
    // saw the renewal fit inside it.
    let bound = TTL + SLACK;
    assert!(
        won - last_seen <= bound,
        "takeover came {:?} after the last renewal, more than ttl + slack = {bound:?}",
        won - last_seen
    );
    assert!(l.fencing_token() > claim.token);
    // The ghost's claim is gone for good.
    assert!(matches!(
        rec(ghost.as_ref()).renew(&claim).await,
        Err(Error::Lost(_))
    ));
    rec(ghost.as_ref()).release(&claim).await.unwrap();
    assert_eq!(
        l.leader().id,
        ghost_leader_id(&ghost, &election).await,
        "the ghost's stale release removed the new leader"
    );
    l.unlock().await.unwrap();
}

async fn ghost_leader_id(backend: &Arc<dyn Backend>, election: &str) -> String {
    backend
        .leader(election)
        .await
        .unwrap()
        .map(|l| l.id)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_strictly_increase_across_takeovers_and_releases() {
    let gcs = emulator().await;
    let election = unique_name("tokens");
    let a = client(&gcs).await;
    let b = client(&gcs).await;
    let mut last = FencingToken(0);
    let mut expired = None;
    for round in 0..6 {
        let me = if round % 2 == 0 { &a } else { &b };
        let claim = match rec(me.as_ref())
            .try_acquire(&request(&election, "x", expired))
            .await
        {
            Ok(RecordOutcome::Acquired(c)) => c,
            other => panic!("round {round}: not acquired: {other:?}"),
        };
        assert!(
            claim.token > last,
            "round {round}: {} after {last}",
            claim.token
        );
        last = claim.token;
        let claim = rec(me.as_ref()).renew(&claim).await.unwrap();
        if round % 3 == 2 {
            // End the term by takeover (as after an observed expiry) ...
            expired = Some(claim.version);
        } else {
            // ... or by release.
            rec(me.as_ref()).release(&claim).await.unwrap();
            expired = None;
        }
    }
}

/// A leader cut off from the store by the proxy reports its loss on its own
/// clock before a follower can take over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_leader_steps_down_before_takeover() {
    let gcs = emulator().await;
    let proxy = Proxy::start(gcs.addr()).await;
    let election = unique_name("partition");
    let mut cut_options = options(&election, "cut");
    // Keep the client's own timeouts short so the engine sees failures.
    cut_options.request_timeout = Duration::from_millis(800);
    let cut_backend = GcsBackend::builder()
        .bucket(gcs.bucket())
        .prefix(PREFIX)
        .endpoint(format!("http://{}", proxy.addr()))
        .anonymous()
        .ignore_environment()
        .retry_time_limit(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let a = Elector::new(Arc::new(cut_backend), cut_options).unwrap();
    let la = timeout(LONG, a.lock()).await.unwrap().unwrap();
    let b = Elector::new(client(&gcs).await, options(&election, "beta")).unwrap();
    let follower = campaign(b);
    sleep(Duration::from_millis(1500)).await;
    assert!(
        !la.is_lost(),
        "alpha lost its lease before the partition: {:?}",
        la.loss_reason()
    );
    proxy.blackhole();
    proxy.reset_all();
    let cut_at = Instant::now();
    let reason = timeout(LONG, la.lost())
        .await
        .expect("alpha never noticed the partition");
    let lost_at = Instant::now();
    assert!(
        matches!(reason, LossReason::Unreachable { .. }),
        "alpha should lose for unreachability, got {reason}"
    );
    assert!(
        lost_at - cut_at <= TTL + SLACK,
        "alpha took {:?} to step down",
        lost_at - cut_at
    );
    let (won_at, lb) = follower.await.unwrap();
    assert!(
        lost_at < won_at,
        "UNSAFE: beta led {:?} before alpha stepped down",
        lost_at - won_at
    );
    assert!(lb.fencing_token() > la.fencing_token());
    proxy.heal();
    lb.unlock().await.unwrap();
}

/// Ten candidates race for a free election, term after term: exactly one
/// wins each term, with a greater token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_candidates_one_winner_per_term() {
    let gcs = emulator().await;
    let election = unique_name("race");
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(client(&gcs).await);
    }
    let mut last = FencingToken(0);
    for term in 0..5 {
        let mut set = tokio::task::JoinSet::new();
        for (i, c) in clients.iter().enumerate() {
            let c = c.clone();
            let req = request(&election, &format!("c{i}"), None);
            set.spawn(async move { rec(c.as_ref()).try_acquire(&req).await.map(|o| (i, o)) });
        }
        let mut winners = Vec::new();
        while let Some(joined) = set.join_next().await {
            match joined.unwrap() {
                Ok((i, RecordOutcome::Acquired(claim))) => winners.push((i, claim)),
                Ok((_, RecordOutcome::Held { .. })) => {}
                Err(e) => panic!("term {term}: try_acquire failed: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "term {term}: winners {winners:?}");
        let (i, claim) = winners.pop().unwrap();
        assert!(
            claim.token > last,
            "term {term}: token {} is not above {last}",
            claim.token
        );
        last = claim.token;
        let leader = clients[0].leader(&election).await.unwrap().unwrap();
        assert_eq!((leader.id, leader.token), (format!("c{i}"), claim.token));
        rec(clients[i].as_ref()).release(&claim).await.unwrap();
    }
}

/// An object at the lease path that is not a lease record is reported,
/// naming the object, and never overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn foreign_object_is_a_clear_error_and_left_alone() {
    let gcs = emulator().await;
    let backend = backend_at(&gcs.endpoint()).await;
    for (i, body) in ["hello world", "{\"some\":\"json\"}", ""]
        .into_iter()
        .enumerate()
    {
        let election = unique_name(&format!("foreign{i}"));
        let object = backend.object_name(&election);
        raw_write(backend.client(), &object, body, 0)
            .await
            .unwrap()
            .unwrap();
        let shared: Arc<dyn Backend> = Arc::new(backend_at(&gcs.endpoint()).await);
        let e = Elector::new(shared.clone(), options(&election, "alpha")).unwrap();
        for result in [
            e.try_lock().await.map(|a| matches!(a, Attempt::Leader(_))),
            shared.leader(&election).await.map(|l| l.is_some()),
            rec(shared.as_ref())
                .try_acquire(&request(&election, "x", Some(1)))
                .await
                .map(|o| matches!(o, RecordOutcome::Acquired(_))),
        ] {
            match result {
                Err(Error::InvalidRecord { path, message, .. }) => {
                    assert!(path.ends_with(&object), "{path} does not name {object}");
                    assert!(!message.is_empty());
                }
                other => panic!("{body:?} at {object}: expected InvalidRecord, got {other:?}"),
            }
        }
        assert_eq!(
            raw_read(backend.client(), &object).await,
            body.as_bytes(),
            "the foreign object was overwritten"
        );
    }
}

/// A renewal whose answer was lost (the caller still has the old
/// generation) is recognised as this term's, and so is a claim renewed
/// through another client; a released claim cannot be renewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renew_recovers_from_a_lost_answer() {
    let gcs = emulator().await;
    let election = unique_name("lost-answer");
    let a = client(&gcs).await;
    let first = match rec(a.as_ref())
        .try_acquire(&request(&election, "alpha", None))
        .await
    {
        Ok(RecordOutcome::Acquired(c)) => c,
        other => panic!("{other:?}"),
    };
    let second = rec(a.as_ref()).renew(&first).await.unwrap();
    assert_ne!(first.version, second.version);
    // Renew with the stale claim, as after a dropped renew call.
    let third = rec(a.as_ref()).renew(&first).await.unwrap();
    assert_eq!(third.token, first.token);
    // Another client (no cached holding) renews it too.
    let other = client(&gcs).await;
    let fourth = rec(other.as_ref()).renew(&third).await.unwrap();
    let info = other.leader(&election).await.unwrap().unwrap();
    assert_eq!(
        (info.id.as_str(), info.value.as_slice()),
        ("alpha", &b"alpha"[..])
    );
    rec(a.as_ref()).release(&fourth).await.unwrap();
    assert!(matches!(
        rec(a.as_ref()).renew(&fourth).await,
        Err(Error::Lost(_))
    ));
    assert_eq!(a.leader(&election).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn options_below_the_write_rate_are_refused() {
    let gcs = emulator().await;
    let err = Elector::new(
        client(&gcs).await,
        ElectionOptions::new("e", "c").with_ttl(Duration::from_secs(2)),
    )
    .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::InvalidOption {
                field: "renew_interval",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("one write per second"), "{err}");
}

/// A misspelled bucket is a clear error naming it, never "nobody leads".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_bucket_is_a_configuration_error() {
    let gcs = emulator().await;
    let backend: Arc<dyn Backend> = Arc::new(
        GcsBackend::builder()
            .bucket("no-such-bucket")
            .endpoint(gcs.endpoint())
            .anonymous()
            .ignore_environment()
            .build()
            .await
            .unwrap(),
    );
    match backend.leader("e").await {
        Err(Error::Config(m)) => assert!(m.contains("no-such-bucket"), "{m}"),
        other => {
            panic!("leader(): expected a configuration error naming the bucket, got {other:?}")
        }
    }
    match rec(backend.as_ref())
        .try_acquire(&request("e", "c", None))
        .await
    {
        Err(Error::Config(m)) => assert!(m.contains("no-such-bucket"), "{m}"),
        other => panic!("expected a configuration error naming the bucket, got {other:?}"),
    }
    let e = Elector::new(backend, options("e", "c")).unwrap();
    match e.observe().await {
        Err(Error::Config(m)) => assert!(m.contains("no-such-bucket"), "{m}"),
        Err(other) => panic!("observe(): expected a configuration error, got {other:?}"),
        Ok(rx) => panic!("observe() on a missing bucket reported {:?}", *rx.borrow()),
    }
    // The bucket that exists still reads as "no leader" for a new election.
    let real = client(&gcs).await;
    assert_eq!(real.leader(&unique_name("fresh")).await.unwrap(), None);
}

/// A lease record overwritten by another program ends the term (renew is
/// `Lost`), and nobody overwrites the foreign data afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overwritten_record_ends_the_term() {
    let gcs = emulator().await;
    let election = unique_name("overwritten");
    let backend = backend_at(&gcs.endpoint()).await;
    let object = backend.object_name(&election);
    let claim = match backend
        .try_acquire(&request(&election, "alpha", None))
        .await
    {
        Ok(RecordOutcome::Acquired(c)) => c,
        other => panic!("{other:?}"),
    };
    raw_write(backend.client(), &object, "not a lease", claim.version)
        .await
        .unwrap()
        .expect("overwriting at the current generation");
    match backend.renew(&claim).await {
        Err(Error::Lost(m)) => assert!(m.contains(&object), "{m}"),
        other => panic!("expected Lost, got {other:?}"),
    }
    // Nothing of this term is left to release; the foreign data stays.
    backend.release(&claim).await.unwrap();
    assert_eq!(raw_read(backend.client(), &object).await, b"not a lease");
}

/// The bound on how long a leader may go on after its record was deleted:
/// it must learn at its next renewal (every ttl/3), so this is generous.
const LOST_BOUND: Duration = Duration::from_secs(15);

/// The lease object is deleted by hand (or by a lifecycle rule) while alpha
/// leads and beta waits: alpha must report lost, beta must not lead before
/// alpha's lost fired, and beta's token must be greater than alpha's.
/// `earlier_terms` terms are won and released before alpha's.
async fn deleted_record_while_leading(name: &str, earlier_terms: usize) {
    let gcs = emulator().await;
    let election = unique_name(name);
    let warm = client(&gcs).await;
    for i in 0..earlier_terms {
        let claim = match rec(warm.as_ref())
            .try_acquire(&request(&election, &format!("warm{i}"), None))
            .await
        {
            Ok(RecordOutcome::Acquired(c)) => c,
            other => panic!("warm-up term {i} not won: {other:?}"),
        };
        rec(warm.as_ref()).release(&claim).await.unwrap();
    }
    let a = Elector::new(client(&gcs).await, options(&election, "alpha")).unwrap();
    let la = timeout(LONG, a.lock()).await.unwrap().unwrap();
    let token_a = la.fencing_token();
    let b = Elector::new(client(&gcs).await, options(&election, "beta")).unwrap();
    let poll = b.options().retry_interval;
    let follower = campaign(b);
    // Let beta see alpha's record a few times.
    sleep(poll * 3).await;
    assert!(
        !follower.is_finished(),
        "beta led while alpha held the lease"
    );
    let object = backend_at(&gcs.endpoint()).await.object_name(&election);
    let deleted_at = Instant::now();
    assert!(
        gcs.delete_object(gcs.bucket(), &object).await.unwrap(),
        "{object} was not there to delete"
    );
    let reason = timeout(LOST_BOUND, la.lost()).await.unwrap_or_else(|_| {
        panic!(
            "UNSAFE: alpha (token {token_a}) still leads {LOST_BOUND:?} after its record was deleted (beta led: {})",
            follower.is_finished()
        )
    });
    let lost_at = Instant::now();
    assert!(
        matches!(reason, LossReason::LeaseLost(_)),
        "alpha should learn at a renewal that its lease is gone, got {reason}"
    );
    let (won_at, lb) = follower.await.unwrap();
    eprintln!(
        "{name}: alpha (token {token_a}) lost {:?} after the deletion, beta (token {}) led {:?} after it",
        lost_at - deleted_at,
        lb.fencing_token(),
        won_at.saturating_duration_since(deleted_at)
    );
    assert!(
        lost_at < won_at,
        "UNSAFE: beta led {:?} before alpha's lost fired",
        lost_at - won_at
    );
    assert!(
        lb.fencing_token() > token_a,
        "UNSAFE: beta's token {} is not above alpha's {token_a} after the deletion",
        lb.fencing_token()
    );
    assert_eq!(
        a.leader().await.unwrap().map(|l| (l.id, l.token)),
        Some(("beta".to_owned(), lb.fencing_token()))
    );
    lb.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_record_while_leading_a_later_term() {
    deleted_record_while_leading("deleted-later", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_record_while_leading_the_first_term() {
    deleted_record_while_leading("deleted-first", 0).await;
}

/// A backend that only ever wrote the record (its leader created it and
/// renews without reading) knows it existed: after a deletion, another
/// elector on the same backend does not create it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_record_is_waited_out_by_the_backend_that_wrote_it() {
    let gcs = emulator().await;
    let election = unique_name("deleted-writer");
    let shared = client(&gcs).await;
    let a = Elector::new(shared.clone(), options(&election, "alpha")).unwrap();
    let la = timeout(LONG, a.lock()).await.unwrap().unwrap();
    let object = backend_at(&gcs.endpoint()).await.object_name(&election);
    assert!(gcs.delete_object(gcs.bucket(), &object).await.unwrap());
    let z = Elector::new(shared, options(&election, "zeta")).unwrap();
    match z.try_lock().await.unwrap() {
        Attempt::Held(None) => {}
        Attempt::Held(Some(l)) => panic!("the deleted record came back: {l:?}"),
        Attempt::Leader(l) => panic!(
            "UNSAFE: zeta led at once (token {}) after the record of alpha (token {}, lost yet: {}) was deleted",
            l.fencing_token(),
            la.fencing_token(),
            la.is_lost()
        ),
    }
    let reason = timeout(LOST_BOUND, la.lost())
        .await
        .expect("alpha never learned that its record was deleted");
    assert!(matches!(reason, LossReason::LeaseLost(_)), "{reason}");
}

/// A create whose write landed but whose answer was lost is recognised by
/// the candidate that wrote it (and only by it: another process with the
/// same candidate id is told the election is held), which leads at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acquire_whose_answer_was_lost_is_recognised() {
    let gcs = emulator().await;
    let dropper = AnswerDropper::start(gcs.addr()).await;
    let election = unique_name("lost-acquire");
    let a = backend_at(&format!("http://{}", dropper.addr())).await;
    // The first 404 makes the backend check the bucket with a write: let it
    // happen before the fault, which is meant for the lease write.
    assert_eq!(a.leader(&election).await.unwrap(), None);
    dropper.drop_upload_answers(1);
    let first = a.try_acquire(&request(&election, "alpha", None)).await;
    assert_eq!(dropper.dropped(), 1, "no answer was dropped: {first:?}");
    assert!(
        matches!(first, Err(ref e) if e.is_transient()),
        "a lost answer must be a transient error, got {first:?}"
    );
    let direct = client(&gcs).await;
    let landed = direct
        .leader(&election)
        .await
        .unwrap()
        .expect("the write whose answer was lost did not land");
    assert_eq!(landed.id, "alpha");
    // Same candidate id, another process: not its write.
    match rec(direct.as_ref())
        .try_acquire(&request(&election, "alpha", None))
        .await
    {
        Ok(RecordOutcome::Held { leader, .. }) => {
            assert_eq!(leader.map(|l| l.id).as_deref(), Some("alpha"));
        }
        other => panic!("another process with the same id took alpha's term: {other:?}"),
    }
    // The writer recognises its own write at its next attempt.
    let claim = match a.try_acquire(&request(&election, "alpha", None)).await {
        Ok(RecordOutcome::Acquired(c)) => c,
        other => panic!(
            "the candidate whose write landed must lead at once, not wait a ttl behind itself: {other:?}"
        ),
    };
    assert_eq!(claim.token, landed.token);
    let claim = a.renew(&claim).await.unwrap();
    a.release(&claim).await.unwrap();
    assert_eq!(direct.leader(&election).await.unwrap(), None);
}

/// Through the engine: a lost answer to the winning write costs one retry,
/// not a ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn elector_leads_at_once_after_a_lost_acquire_answer() {
    let gcs = emulator().await;
    let dropper = AnswerDropper::start(gcs.addr()).await;
    let election = unique_name("lost-acquire-engine");
    // A long ttl, so that "at once" and "after a ttl" are far apart.
    let ttl = Duration::from_secs(12);
    let backend: Arc<dyn Backend> =
        Arc::new(backend_at(&format!("http://{}", dropper.addr())).await);
    // Let the backend's one bucket check (a write) pass before the fault.
    assert_eq!(backend.leader(&election).await.unwrap(), None);
    let a = Elector::new(
        backend,
        ElectionOptions::new(&election, "alpha").with_ttl(ttl),
    )
    .unwrap();
    dropper.drop_upload_answers(1);
    let started = Instant::now();
    let la = timeout(LONG, a.lock()).await.unwrap().unwrap();
    let took = started.elapsed();
    eprintln!("led {took:?} after a lost acquire answer (ttl {ttl:?})");
    assert_eq!(dropper.dropped(), 1, "no answer was dropped");
    assert!(
        took < ttl,
        "alpha waited {took:?}, a ttl ({ttl:?}) behind its own write"
    );
    la.unlock().await.unwrap();
}

/// Real Cloud Storage answers 429 beyond about one write per second to an
/// object (a handover or a lost-answer recovery at the smallest ttl can get
/// there). A 429 is a transient error: it costs a retry, never the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_costs_a_retry_never_the_lease() {
    let gcs = emulator().await;
    let dropper = AnswerDropper::start(gcs.addr()).await;
    let endpoint = format!("http://{}", dropper.addr());
    let election = unique_name("throttled");
    let a = backend_at(&endpoint).await;
    let transient = |what: &str, e: &Error| {
        assert!(
            e.is_transient() && !e.is_lost() && matches!(e, Error::Unavailable { .. }),
            "{what}: a 429 must be a transient Unavailable error, got {e:?}"
        );
    };
    // Let the backend's one bucket check (a write) pass first.
    assert_eq!(a.leader(&election).await.unwrap(), None);
    dropper.throttle_uploads(1);
    let e = a
        .try_acquire(&request(&election, "alpha", None))
        .await
        .unwrap_err();
    transient("try_acquire", &e);
    let claim = match a.try_acquire(&request(&election, "alpha", None)).await {
        Ok(RecordOutcome::Acquired(c)) => c,
        other => panic!("the retry after a 429 should win the free election: {other:?}"),
    };
    dropper.throttle_uploads(1);
    transient("renew", &a.renew(&claim).await.unwrap_err());
    let claim = a.renew(&claim).await.unwrap();
    dropper.throttle_uploads(1);
    transient("release", &a.release(&claim).await.unwrap_err());
    a.release(&claim).await.unwrap();
    assert_eq!(a.leader(&election).await.unwrap(), None);
    assert_eq!(dropper.throttled(), 3);

    // Through the engine: a throttled renewal is retried; the term goes on.
    let backend: Arc<dyn Backend> = Arc::new(backend_at(&endpoint).await);
    let e = Elector::new(backend, options(&election, "alpha")).unwrap();
    let la = timeout(LONG, e.lock()).await.unwrap().unwrap();
    dropper.throttle_uploads(1);
    for _ in 0..100 {
        if dropper.throttled() == 4 {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dropper.throttled(), 4, "no renewal was throttled");
    // Two more renew intervals: the retried renewal and the next one.
    sleep(e.options().renew_interval * 2).await;
    assert!(
        !la.is_lost(),
        "one 429 cost the lease: {:?}",
        la.loss_reason()
    );
    assert_eq!(
        e.leader().await.unwrap().map(|l| l.token),
        Some(la.fencing_token())
    );
    la.unlock().await.unwrap();
}

/// A follower that campaigns and observes on one elector (what `leasehold
/// campaign` does) reads the record once per poll interval, not twice: the
/// observer follows the campaign's reads. Counted at the emulator. With
/// polls jittered to 0.8..1.2 of the interval, one reader makes at most
/// `window / (0.8 x interval) + 1` reads in a window; two readers average
/// twice the window over the interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_campaigning_observer_polls_once() {
    use leasehold_integration_tests::bench::{emulator_requests_during, most_polls};
    let gcs = emulator().await;
    let election = unique_name("poll-once");
    let poll = Duration::from_millis(500);
    let leader = Elector::new(client(&gcs).await, options(&election, "alpha")).unwrap();
    let held = timeout(LONG, leader.lock()).await.unwrap().unwrap();
    let mut follower_options = options(&election, "beta");
    follower_options.retry_interval = poll;
    let follower = Elector::new(client(&gcs).await, follower_options).unwrap();
    let mut seen = follower.observe().await.unwrap();
    let waiting = campaign(follower.clone());
    // Settle: the campaign's first attempt and the observer's first read.
    sleep(poll * 2).await;
    let object = format!("{PREFIX}%2F{election}");
    let window = Duration::from_secs(6);
    let reads = emulator_requests_during(gcs.log_path(), &object, window)
        .await
        .reads;
    let one_reader_at_most = most_polls(window, poll);
    assert!(
        reads <= one_reader_at_most,
        "{reads} reads of the record in {window:?} with a {poll:?} poll: more than one reader's \
         {one_reader_at_most} at most, so the observer polls beside the campaign"
    );
    eprintln!("{reads} reads of the record in {window:?} (poll {poll:?})");
    assert!(reads > 0, "the follower never read the record");
    assert_eq!(
        seen.borrow_and_update().as_ref().map(|l| l.id.clone()),
        Some("alpha".to_owned())
    );

    // The observer still follows: after the handover it shows the follower.
    held.unlock().await.unwrap();
    let (_, won) = waiting.await.unwrap();
    timeout(
        LONG,
        seen.wait_for(|l| l.as_ref().is_some_and(|l| l.id == "beta")),
    )
    .await
    .expect("the observer never showed the new leader")
    .unwrap();
    won.unlock().await.unwrap();
}
