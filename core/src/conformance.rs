//! The conformance suite: one set of behaviours every backend must show.
//!
//! A backend's integration tests implement [`Subject`] for a real store and
//! call [`run_all`] (or the behaviours one by one). Each behaviour uses its
//! own election name, so many can share one server and run at once. Every
//! check panics with a message saying what was expected and what happened.
//!
//! Timing checks are bounds, not measurements: a takeover must come no
//! earlier than the old leader's local deadline (safety) and no later than
//! ttl + poll + [`Subject::slack`] (liveness).
//!
//! The suite reads what the store is from the store itself: its family
//! ([`Backend::family`]: the few behaviours that call the store directly
//! speak the family's protocol) and its extras ([`Backend::proclaimer`],
//! [`Backend::leader_watch`]: a store without one must answer a typed
//! [`Error::NotSupported`] through the engine, one with it must work).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// The macro [`Subject`] implementations need (`#[async_trait]` on the
/// `impl`), re-exported so a backend's tests need no dependency of their own.
pub use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};

use crate::{
    AcquireRequest, Attempt, Backend, Claim, ElectionOptions, Elector, Error, Family, FencingToken,
    LeaderInfo, Permit, QueueOutcome, RecordOutcome, Semaphore,
};

/// A store under test.
#[async_trait]
pub trait Subject: Send + Sync {
    /// A new client of the store with its own connection and session,
    /// independent of every other client.
    async fn client(&self) -> Arc<dyn Backend>;

    /// Options for `candidate` in `election`, with the shortest ttl the
    /// store allows (the suite's run time is a few ttls).
    fn options(&self, election: &str, candidate: &str) -> ElectionOptions;

    /// Time allowed on top of the ttl (and one poll) for the store to expire
    /// a lease and a waiter to notice.
    fn slack(&self) -> Duration;

    /// A fresh election name for `behaviour`, unique across processes and
    /// runs sharing the store.
    fn election(&self, behaviour: &str) -> String {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!(
            "conf-{behaviour}-{}-{}-{nanos:x}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Make `client` stop keeping its session alive, as a crashed process
    /// would, without releasing anything. Backends whose leases live only
    /// through the engine's renew calls need nothing here (the default);
    /// session-based ones (ZooKeeper) cut the client's link.
    async fn vanish(&self, client: &Arc<dyn Backend>) {
        let _ = client;
    }

    /// Undo [`vanish`](Self::vanish): the client can reach the store again.
    async fn revive(&self, client: &Arc<dyn Backend>) {
        let _ = client;
    }

    /// Delete the leader's claim of `election` as an operator would by hand
    /// (`etcdctl del`, a znode delete, a deleted object or row), through a
    /// client of its own. The election has exactly one candidate when this
    /// is called.
    async fn delete_by_hand(&self, election: &str);
}

/// Run every behaviour of the suite, a few at a time.
pub async fn run_all(s: &dyn Subject) {
    tokio::join!(
        acquire_then_release(s),
        second_candidate_is_refused(s),
        renewal_keeps_the_lease(s),
        vanished_holder_is_replaced(s),
        electors_on_one_client_release_independently(s),
        a_release_that_never_landed_does_not_block(s),
        a_claim_deleted_by_hand_ends_the_term(s),
    );
    tokio::join!(
        tokens_strictly_increase(s),
        racing_candidates_one_wins(s, 10),
        release_is_idempotent_and_owned(s),
        observer_sees_every_change(s),
        unsupported_operations_are_typed(s),
        participants_in_line_order(s),
        watched_line_follows_the_candidates(s),
    );
    tokio::join!(
        semaphore_admits_n_and_hands_over_on_release(s),
        semaphore_frees_a_vanished_holders_permit(s),
        semaphore_permit_ends_when_its_claim_is_deleted_by_hand(s),
    );
}

/// A semaphore of `permits` on `client`; `None` on a record store, which
/// must refuse it with a typed `NotSupported` (checked here).
fn semaphore(
    client: Arc<dyn Backend>,
    options: ElectionOptions,
    permits: u32,
    what: &str,
) -> Option<Semaphore> {
    let name = client.name();
    let record = matches!(client.family(), Family::Record(_));
    match (record, Semaphore::new(client, options, permits)) {
        (false, Ok(s)) => Some(s),
        (true, Err(Error::NotSupported { operation, .. })) => {
            assert_eq!(operation, "semaphore", "{what}");
            None
        }
        (record, other) => panic!(
            "{what}: Semaphore::new on {name} ({} store): {other:?}",
            if record { "a record" } else { "a queue" }
        ),
    }
}

async fn must_acquire(sem: &Semaphore, within: Duration, what: &str) -> Permit {
    match sem.acquire_timeout(within).await {
        Ok(Some(p)) => p,
        Ok(None) => panic!(
            "{what}: {} got no permit within {within:?}",
            sem.options().candidate_id
        ),
        Err(err) => panic!("{what}: acquire failed: {err}"),
    }
}

fn elector(client: Arc<dyn Backend>, options: ElectionOptions) -> Elector {
    let name = client.name();
    Elector::new(client, options)
        .unwrap_or_else(|e| panic!("{name}: the subject's options are refused: {e}"))
}

async fn new_elector(s: &dyn Subject, election: &str, candidate: &str) -> Elector {
    elector(s.client().await, s.options(election, candidate))
}

/// How long a free election may take to acquire, and a takeover after a
/// release: generous, it is a bound.
fn quick(s: &dyn Subject, o: &ElectionOptions) -> Duration {
    o.ttl + o.retry_interval + s.slack()
}

async fn must_lock(e: &Elector, within: Duration, what: &str) -> crate::Leadership {
    match e.lock_timeout(within).await {
        Ok(Some(l)) => l,
        Ok(None) => panic!(
            "{what}: candidate {} did not lead within {within:?}",
            e.options().candidate_id
        ),
        Err(err) => panic!("{what}: lock failed: {err}"),
    }
}

async fn leader_of(e: &Elector, what: &str) -> Option<LeaderInfo> {
    e.leader()
        .await
        .unwrap_or_else(|err| panic!("{what}: leader() failed: {err}"))
}

/// Acquire, see yourself as leader with your value, release, see no leader,
/// acquire again with a greater token.
pub async fn acquire_then_release(s: &dyn Subject) {
    const W: &str = "acquire_then_release";
    let election = s.election("acquire");
    let mut options = s.options(&election, "alpha");
    options.value = b"alpha:8080".to_vec();
    let a = elector(s.client().await, options.clone());
    let l = must_lock(&a, quick(s, &options), W).await;
    let info = leader_of(&a, W)
        .await
        .unwrap_or_else(|| panic!("{W}: no leader while holding"));
    assert_eq!(info.id, "alpha", "{W}: leader() names the wrong candidate");
    assert_eq!(
        info.value, b"alpha:8080",
        "{W}: leader() returns the wrong value"
    );
    assert_eq!(
        info.token,
        l.fencing_token(),
        "{W}: leader() token differs from the guard's"
    );
    let first = l.fencing_token();
    l.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
    assert_eq!(
        leader_of(&a, W).await,
        None,
        "{W}: a leader remains after release"
    );
    let l = must_lock(&a, quick(s, &options), W).await;
    assert!(
        l.fencing_token() > first,
        "{W}: second term's token {} is not above the first's {first}",
        l.fencing_token()
    );
    l.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
}

/// While one candidate leads, another's `try_lock` is refused and told who
/// leads; its queued claim (if any) is withdrawn.
pub async fn second_candidate_is_refused(s: &dyn Subject) {
    const W: &str = "second_candidate_is_refused";
    let election = s.election("refused");
    let a = new_elector(s, &election, "alpha").await;
    let b = new_elector(s, &election, "beta").await;
    let l = must_lock(&a, quick(s, a.options()), W).await;
    match b.try_lock().await {
        Ok(Attempt::Held(Some(info))) => {
            assert_eq!(info.id, "alpha", "{W}: told the wrong leader");
            assert_eq!(info.token, l.fencing_token(), "{W}: told the wrong token");
        }
        Ok(Attempt::Held(None)) => panic!("{W}: refused but not told who leads"),
        Ok(Attempt::Leader(_)) => panic!("{W}: TWO LEADERS: beta won while alpha holds"),
        Err(e) => panic!("{W}: try_lock failed: {e}"),
    }
    l.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
    // beta withdrew: nobody leads now.
    assert_eq!(
        leader_of(&b, W).await,
        None,
        "{W}: a refused try_lock left a claim that now leads"
    );
}

/// Renewal keeps the lease across several ttls; others stay refused.
pub async fn renewal_keeps_the_lease(s: &dyn Subject) {
    const W: &str = "renewal_keeps_the_lease";
    let election = s.election("renewal");
    let a = new_elector(s, &election, "alpha").await;
    let b = new_elector(s, &election, "beta").await;
    let l = must_lock(&a, quick(s, a.options()), W).await;
    sleep(a.options().ttl * 3).await;
    assert!(
        !l.is_lost(),
        "{W}: leadership lost while renewing: {:?}",
        l.loss_reason()
    );
    let info = leader_of(&b, W).await;
    assert_eq!(
        info.map(|i| i.token),
        Some(l.fencing_token()),
        "{W}: the store shows another leader"
    );
    assert!(
        matches!(b.try_lock().await, Ok(Attempt::Held(_))),
        "{W}: another candidate was not refused after 3 ttls"
    );
    l.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
}

/// A holder that vanishes without releasing is replaced no earlier than its
/// local deadline and within the ttl + slack (the ttl is the failover
/// bound; the slack is the store's expiry tick and a waiter's notice);
/// afterwards its stale claim
/// renews as lost and releasing it does not remove the new leader.
pub async fn vanished_holder_is_replaced(s: &dyn Subject) {
    const W: &str = "vanished_holder_is_replaced";
    let election = s.election("vanish");
    let ghost = s.client().await;
    let options = s.options(&election, "ghost");
    let req = request(ghost.as_ref(), &election, "ghost", &options);
    let sent = Instant::now();
    let claim = match raw_acquire(ghost.as_ref(), &req).await {
        Ok(Raw::Won(c)) => c,
        other => panic!("{W}: the first candidate of a free election did not win: {other:?}"),
    };
    let replied = Instant::now();
    s.vanish(&ghost).await;
    let b = new_elector(s, &election, "beta").await;
    let bound = options.ttl + s.slack();
    let l = must_lock(&b, bound + options.ttl, W).await;
    let won = Instant::now();
    let lifetime = ghost.lease_plan(&options).lifetime(&options);
    let earliest = sent + lifetime;
    assert!(
        won >= earliest,
        "{W}: UNSAFE: beta won {:?} after the ghost's acquire was sent, before the ghost's local deadline (lifetime {lifetime:?})",
        won - sent,
    );
    assert!(
        won - replied <= bound,
        "{W}: takeover took {:?}, more than the ttl + slack = {bound:?} (the ttl is the failover bound)",
        won - replied
    );
    assert!(
        l.fencing_token() > claim.token,
        "{W}: the new term's token is not above the ghost's"
    );
    s.revive(&ghost).await;
    match timeout(
        options.ttl * 2 + s.slack(),
        raw_renew(ghost.as_ref(), &claim),
    )
    .await
    {
        Ok(Err(Error::Lost(_))) => {}
        Ok(other) => panic!("{W}: renewing a replaced claim must fail as Lost, got {other:?}"),
        Err(_) => panic!("{W}: renewing a replaced claim did not answer"),
    }
    match timeout(
        options.ttl * 2 + s.slack(),
        raw_release(ghost.as_ref(), &claim),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{W}: releasing a stale claim must be harmless, got {e}"),
        Err(_) => panic!("{W}: releasing a stale claim did not answer"),
    }
    let info = leader_of(&b, W).await;
    assert_eq!(
        info.map(|i| i.token),
        Some(l.fencing_token()),
        "{W}: releasing the ghost's stale claim removed the new leader"
    );
    assert!(
        !l.is_lost(),
        "{W}: the new leader lost its lease: {:?}",
        l.loss_reason()
    );
    l.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
}

/// Two electors on one client (sharing its session where the backend has
/// sessions) lead two elections; releasing one term hands that election
/// over and leaves the other term, and its lease, alone.
pub async fn electors_on_one_client_release_independently(s: &dyn Subject) {
    const W: &str = "electors_on_one_client_release_independently";
    let (e1, e2) = (s.election("shared-1"), s.election("shared-2"));
    let client = s.client().await;
    let a1 = elector(client.clone(), s.options(&e1, "alpha"));
    let a2 = elector(client, s.options(&e2, "alpha"));
    let q = quick(s, a1.options());
    let l1 = must_lock(&a1, q, W).await;
    let l2 = must_lock(&a2, q, W).await;
    let b1 = new_elector(s, &e1, "beta").await;
    l1.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
    let lb = must_lock(&b1, q, W).await;
    // Past a few renewals: the other term lives on.
    tokio::time::sleep(a2.options().ttl).await;
    assert!(
        !l2.is_lost(),
        "{W}: releasing one term ended the other one on the same client: {:?}",
        l2.loss_reason()
    );
    assert_eq!(
        leader_of(&a2, W).await.map(|i| i.token),
        Some(l2.fencing_token()),
        "{W}: the second election lost its leader"
    );
    for l in [l2, lb] {
        l.unlock()
            .await
            .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
    }
}

/// A release that never reaches the store (the link goes silent for the
/// delete, then heals), by one of two electors on one client (sharing its
/// session where the backend has sessions, which the other keeps alive),
/// does not block the election: the waiting candidate leads within a ttl
/// and a poll, with a higher token, and the other term goes on.
pub async fn a_release_that_never_landed_does_not_block(s: &dyn Subject) {
    const W: &str = "a_release_that_never_landed_does_not_block";
    let (e1, e2) = (s.election("lost-release-1"), s.election("lost-release-2"));
    let (client, faults) = crate::faulty::FaultyBackend::wrap(s.client().await);
    let client: Arc<dyn Backend> = client;
    let a1 = elector(client.clone(), s.options(&e1, "alpha"));
    let a2 = elector(client, s.options(&e2, "alpha"));
    let q = quick(s, a1.options());
    let l1 = must_lock(&a1, q, W).await;
    let l2 = must_lock(&a2, q, W).await;
    let b1 = new_elector(s, &e1, "beta").await;
    let waiting = tokio::spawn(async move {
        let l = b1.lock().await;
        (Instant::now(), l)
    });
    sleep(Duration::from_millis(100)).await;
    faults.set(crate::faulty::Fault::BlackHole);
    let token = l1.fencing_token();
    let unlocked = l1.unlock().await;
    assert!(
        unlocked.is_err(),
        "{W}: a release into a silent link reported success"
    );
    faults.set(crate::faulty::Fault::None);
    let healed = Instant::now();
    let bound = a1.options().ttl + q;
    let (led_at, lb) = timeout(bound, waiting)
        .await
        .unwrap_or_else(|_| {
            panic!("{W}: the waiting candidate did not lead within {bound:?} of the heal: the unreleased claim blocks the election")
        })
        .unwrap_or_else(|e| panic!("{W}: task: {e}"));
    let lb = lb.unwrap_or_else(|e| panic!("{W}: lock failed: {e}"));
    assert!(
        lb.fencing_token() > token,
        "{W}: the next term's token {} is not above {token}",
        lb.fencing_token()
    );
    assert!(
        !l2.is_lost(),
        "{W}: the other term on the client ended: {:?}",
        l2.loss_reason()
    );
    tracing::info!(after = ?led_at - healed, "{W}: the next candidate led after the heal");
    for l in [l2, lb] {
        l.unlock()
            .await
            .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
    }
}

/// Tokens strictly increase across terms, whoever wins them.
pub async fn tokens_strictly_increase(s: &dyn Subject) {
    const W: &str = "tokens_strictly_increase";
    let election = s.election("tokens");
    let a = new_elector(s, &election, "alpha").await;
    let b = new_elector(s, &election, "beta").await;
    let mut last = FencingToken(0);
    for round in 0..6 {
        let e = if round % 3 == 0 { &b } else { &a };
        let l = must_lock(e, quick(s, e.options()), W).await;
        assert!(
            l.fencing_token() > last,
            "{W}: term {round} token {} is not above the previous {last}",
            l.fencing_token()
        );
        last = l.fencing_token();
        l.unlock()
            .await
            .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
    }
}

/// `n` candidates race: exactly one wins a free election, and when each
/// leader releases in turn there is never more than one leader, with
/// tokens increasing.
pub async fn racing_candidates_one_wins(s: &dyn Subject, n: usize) {
    const W: &str = "racing_candidates_one_wins";
    let election = s.election("race");
    let mut electors = Vec::with_capacity(n);
    for i in 0..n {
        electors.push(new_elector(s, &election, &format!("c{i}")).await);
    }
    // One round of try_lock on a free election.
    let attempts = futures_join_all(electors.iter().map(|e| e.try_lock())).await;
    let mut winners = Vec::new();
    for a in attempts {
        match a {
            Ok(Attempt::Leader(l)) => winners.push(l),
            Ok(Attempt::Held(_)) => {}
            Err(e) => panic!("{W}: try_lock failed: {e}"),
        }
    }
    assert!(
        winners.len() <= 1,
        "{W}: {} candidates won at once",
        winners.len()
    );
    for w in winners {
        w.unlock()
            .await
            .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
    }
    // Everyone campaigns; each leader holds briefly and hands over.
    let current = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let per = quick(s, electors[0].options());
    let bound = per * (n as u32 + 1);
    let runs = electors.iter().map(|e| {
        let current = current.clone();
        let overlaps = overlaps.clone();
        let tx = tx.clone();
        async move {
            let l = must_lock(e, bound, W).await;
            if current.fetch_add(1, Ordering::SeqCst) != 0 {
                overlaps.fetch_add(1, Ordering::SeqCst);
            }
            let _ = tx.send(l.fencing_token());
            sleep(Duration::from_millis(20)).await;
            assert!(
                !l.is_lost(),
                "{W}: lost while holding briefly: {:?}",
                l.loss_reason()
            );
            current.fetch_sub(1, Ordering::SeqCst);
            l.unlock()
                .await
                .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
        }
    });
    futures_join_all(runs).await;
    drop(tx);
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "{W}: TWO LEADERS at once"
    );
    let mut tokens = Vec::new();
    while let Some(t) = rx.recv().await {
        tokens.push(t);
    }
    assert_eq!(tokens.len(), n, "{W}: not every candidate led once");
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "{W}: tokens not strictly increasing in order of leadership: {tokens:?}"
    );
}

/// Releasing twice is harmless (guard and claim); a waiting candidate's
/// withdrawal does not remove the leader.
pub async fn release_is_idempotent_and_owned(s: &dyn Subject) {
    const W: &str = "release_is_idempotent_and_owned";
    let election = s.election("release");
    let a = new_elector(s, &election, "alpha").await;
    let l = must_lock(&a, quick(s, a.options()), W).await;
    let twin = l.clone();
    l.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
    twin.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: a second unlock must be harmless: {e}"));

    let holder = s.client().await;
    let other = s.client().await;
    let options = s.options(&election, "holder");
    let mut req = request(holder.as_ref(), &election, "holder", &options);
    let claim = match raw_acquire(holder.as_ref(), &req).await {
        Ok(Raw::Won(c)) => c,
        other => panic!("{W}: acquire of a free election: {other:?}"),
    };
    req.candidate = "other".into();
    match raw_acquire(other.as_ref(), &req).await {
        Ok(Raw::Held { queued, leader }) => {
            assert_eq!(
                leader.map(|l| l.id),
                Some("holder".into()),
                "{W}: told the wrong leader"
            );
            if let Some(q) = queued {
                raw_release(other.as_ref(), &q)
                    .await
                    .unwrap_or_else(|e| panic!("{W}: withdrawing failed: {e}"));
                raw_release(other.as_ref(), &q)
                    .await
                    .unwrap_or_else(|e| panic!("{W}: withdrawing twice failed: {e}"));
                raw_end(other.as_ref(), &q).await;
            }
        }
        other => panic!("{W}: a second candidate must be held: {other:?}"),
    }
    let now = holder
        .leader(&election)
        .await
        .unwrap_or_else(|e| panic!("{W}: leader() failed: {e}"));
    assert_eq!(
        now.map(|l| l.token),
        Some(claim.token),
        "{W}: a non-holder's release removed the leader"
    );
    raw_release(holder.as_ref(), &claim)
        .await
        .unwrap_or_else(|e| panic!("{W}: release failed: {e}"));
    raw_release(holder.as_ref(), &claim)
        .await
        .unwrap_or_else(|e| panic!("{W}: a second release must be harmless: {e}"));
    raw_end(holder.as_ref(), &claim).await;
    assert_eq!(
        holder
            .leader(&election)
            .await
            .unwrap_or_else(|e| panic!("{W}: leader() failed: {e}")),
        None,
        "{W}: a leader remains after release"
    );
}

async fn wait_for(
    rx: &mut watch::Receiver<Option<LeaderInfo>>,
    within: Duration,
    what: &str,
    want: impl Fn(&Option<LeaderInfo>) -> bool,
) {
    let r = timeout(within, rx.wait_for(|v| want(v)))
        .await
        .map(|seen| seen.map(|_| ()));
    match r {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => panic!("observer_sees_every_change: the observer stopped before {what}"),
        Err(_) => panic!(
            "observer_sees_every_change: {what} not observed within {within:?}; last seen {:?}",
            *rx.borrow()
        ),
    }
}

/// An observer (not a candidate) sees each leader and each vacancy.
pub async fn observer_sees_every_change(s: &dyn Subject) {
    const W: &str = "observer_sees_every_change";
    let election = s.election("observe");
    let watcher = new_elector(s, &election, "watcher").await;
    let a = new_elector(s, &election, "alpha").await;
    let b = new_elector(s, &election, "beta").await;
    let within = quick(s, watcher.options()) * 2;
    let mut rx = watcher
        .observe()
        .await
        .unwrap_or_else(|e| panic!("{W}: observe failed: {e}"));
    wait_for(&mut rx, within, "the initial vacancy", Option::is_none).await;
    let la = must_lock(&a, quick(s, a.options()), W).await;
    let ta = la.fencing_token();
    wait_for(&mut rx, within, "alpha leading", |v| {
        v.as_ref().is_some_and(|l| l.id == "alpha" && l.token == ta)
    })
    .await;
    la.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
    wait_for(&mut rx, within, "the vacancy after alpha", Option::is_none).await;
    let lb = must_lock(&b, quick(s, b.options()), W).await;
    let tb = lb.fencing_token();
    wait_for(&mut rx, within, "beta leading", |v| {
        v.as_ref().is_some_and(|l| l.id == "beta" && l.token == tb)
    })
    .await;
    lb.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
    wait_for(&mut rx, within, "the vacancy after beta", Option::is_none).await;
}

/// A leader's claim deleted by hand ends its term (the done signal fires,
/// as lease lost) before the ttl is out, so before a successor could lead;
/// another term on the same client goes on; the successor's token is above
/// the deleted term's, as every later term's is, deletion or not.
pub async fn a_claim_deleted_by_hand_ends_the_term(s: &dyn Subject) {
    const W: &str = "a_claim_deleted_by_hand_ends_the_term";
    let (e1, e2) = (s.election("deleted-1"), s.election("deleted-2"));
    let client = s.client().await;
    let a1 = elector(client.clone(), s.options(&e1, "alpha"));
    let a2 = elector(client, s.options(&e2, "alpha"));
    let l1 = must_lock(&a1, quick(s, a1.options()), W).await;
    let l2 = must_lock(&a2, quick(s, a2.options()), W).await;
    let ttl = a1.options().ttl;
    s.delete_by_hand(&e1).await;
    let deleted_at = Instant::now();
    let reason = timeout(ttl, l1.lost()).await.unwrap_or_else(|_| {
        panic!("{W}: UNSAFE: the term still leads a ttl ({ttl:?}) after its claim was deleted")
    });
    assert!(
        matches!(reason, crate::LossReason::LeaseLost(_)),
        "{W}: the term must end as lease lost, got {reason:?}"
    );
    let ended = deleted_at.elapsed();
    let b = new_elector(s, &e1, "beta").await;
    // Record stores whose followers observe expiry wait out a ttl of
    // absence before they make the record again.
    let lb = must_lock(&b, quick(s, b.options()) + ttl, W).await;
    assert!(
        lb.fencing_token() > l1.fencing_token(),
        "{W}: the successor's token {} is not above the deleted term's {}",
        lb.fencing_token(),
        l1.fencing_token()
    );
    assert!(
        !l2.is_lost(),
        "{W}: the other term on the client ended too: {:?} (the deleted one ended {ended:?} after the delete)",
        l2.loss_reason()
    );
    lb.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
    l2.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
}

/// What a store does not have is a typed `NotSupported` through the engine,
/// never a panic; what it says it has works: a leader watch first reports
/// the current leader, a proclaim keeps the token and shows the new value.
pub async fn unsupported_operations_are_typed(s: &dyn Subject) {
    const W: &str = "unsupported_operations_are_typed";
    let election = s.election("caps");
    let c = s.client().await;
    if let Some(w) = c.leader_watch() {
        let mut w = w
            .watch(&election)
            .await
            .unwrap_or_else(|e| panic!("{W}: watch failed: {e}"));
        let first = timeout(Duration::from_secs(10), w.next()).await;
        assert!(
            matches!(first, Ok(Ok(None))),
            "{W}: a new watch must first report the current leader (none): {first:?}"
        );
    }
    let e = elector(c.clone(), s.options(&election, "alpha"));
    let l = must_lock(&e, quick(s, e.options()), W).await;
    let token = l.fencing_token();
    match (c.proclaimer().is_some(), l.proclaim("new value").await) {
        (true, Ok(())) => {
            let info = leader_of(&e, W).await;
            assert_eq!(
                info.as_ref().map(|i| (i.token, i.value.as_slice())),
                Some((token, b"new value".as_slice())),
                "{W}: a proclaim must keep the token and show the new value"
            );
        }
        (false, Err(Error::NotSupported { operation, .. })) => assert_eq!(operation, "proclaim"),
        (has, other) => panic!(
            "{W}: proclaim on a store that {} it: {other:?}",
            if has { "has" } else { "lacks" }
        ),
    }
    l.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
}

/// A store that lists its candidates lists them in line order with the
/// leader first, and follows a handover; one that does not answers a typed
/// `NotSupported`.
pub async fn participants_in_line_order(s: &dyn Subject) {
    const W: &str = "participants_in_line_order";
    let election = s.election("participants");
    let a = new_elector(s, &election, "alpha").await;
    if s.client().await.participants().is_none() {
        match a.participants().await {
            Err(Error::NotSupported { operation, .. }) => assert_eq!(operation, "participants"),
            other => panic!("{W}: a store without a list must answer NotSupported: {other:?}"),
        }
        return;
    }
    let within = quick(s, a.options());
    let la = must_lock(&a, within, W).await;
    let ids = |list: &[LeaderInfo]| list.iter().map(|p| p.id.clone()).collect::<Vec<_>>();
    // Wait (bounded) until the list has `n` candidates; the list then.
    let until_len = |n: usize| {
        let a = a.clone();
        async move {
            let deadline = Instant::now() + within;
            loop {
                let list = a
                    .participants()
                    .await
                    .unwrap_or_else(|e| panic!("{W}: participants() failed: {e}"));
                if list.len() == n || Instant::now() >= deadline {
                    return list;
                }
                sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let b = new_elector(s, &election, "beta").await;
    let waiting_b = tokio::spawn(async move { b.lock().await });
    until_len(2).await;
    let c = new_elector(s, &election, "gamma").await;
    let waiting_c = tokio::spawn(async move { c.lock().await });
    let list = until_len(3).await;
    assert_eq!(
        ids(&list),
        ["alpha", "beta", "gamma"],
        "{W}: candidates in line order"
    );
    assert_eq!(
        list[0].token,
        la.fencing_token(),
        "{W}: the first is the leader"
    );
    la.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
    let lb = timeout(within, waiting_b)
        .await
        .unwrap_or_else(|_| panic!("{W}: beta did not lead after alpha's release"))
        .unwrap_or_else(|e| panic!("{W}: beta's task: {e}"))
        .unwrap_or_else(|e| panic!("{W}: beta's lock: {e}"));
    let list = until_len(2).await;
    assert_eq!(ids(&list), ["beta", "gamma"], "{W}: after the handover");
    assert_eq!(
        list[0].token,
        lb.fencing_token(),
        "{W}: beta leads the list"
    );
    lb.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
    let lc = timeout(within, waiting_c)
        .await
        .unwrap_or_else(|_| panic!("{W}: gamma did not lead after beta's release"))
        .unwrap_or_else(|e| panic!("{W}: gamma's task: {e}"))
        .unwrap_or_else(|e| panic!("{W}: gamma's lock: {e}"));
    lc.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
}

/// The ids of a line, in order.
fn ids_of(line: &[LeaderInfo]) -> Vec<String> {
    line.iter().map(|p| p.id.clone()).collect()
}

/// Wait (bounded) until the watched line holds exactly `want`, in order.
async fn wait_for_line(
    rx: &mut watch::Receiver<Vec<LeaderInfo>>,
    within: Duration,
    want: &[&str],
    what: &str,
) -> Vec<LeaderInfo> {
    const W: &str = "watched_line_follows_the_candidates";
    let seen = timeout(within, rx.wait_for(|line| ids_of(line) == want))
        .await
        .map(|r| r.map(|line| line.clone()));
    match seen {
        Ok(Ok(line)) => line,
        Ok(Err(_)) => panic!("{W}: the line watch stopped before {what}"),
        Err(_) => panic!(
            "{W}: {what}: the line {want:?} not observed within {within:?}; last seen {:?}",
            ids_of(&rx.borrow())
        ),
    }
}

/// A watched line ([`Elector::observe_participants`]) follows the live
/// candidates, each on a client of its own: it shows each one that joins,
/// drops one whose session dies (it vanished without leaving) within about
/// a ttl, and shows the next leader first after a release. A store that
/// keeps no line answers a typed `NotSupported`.
pub async fn watched_line_follows_the_candidates(s: &dyn Subject) {
    const W: &str = "watched_line_follows_the_candidates";
    let election = s.election("line-watch");
    let watcher = new_elector(s, &election, "watcher").await;
    if s.client().await.participants().is_none() {
        match watcher.observe_participants().await {
            Err(Error::NotSupported { operation, .. }) => assert_eq!(operation, "participants"),
            other => panic!(
                "{W}: a store without a list must answer NotSupported: {:?}",
                other.map(|rx| ids_of(&rx.borrow()))
            ),
        }
        return;
    }
    let mut rx = watcher
        .observe_participants()
        .await
        .unwrap_or_else(|e| panic!("{W}: observe_participants failed: {e}"));
    let within = quick(s, watcher.options()) * 2;
    wait_for_line(&mut rx, within, &[], "nobody yet").await;

    let a = new_elector(s, &election, "alpha").await;
    let la = must_lock(&a, quick(s, a.options()), W).await;
    let line = wait_for_line(&mut rx, within, &["alpha"], "alpha leading").await;
    assert_eq!(line[0].token, la.fencing_token(), "{W}: alpha's token");

    let b = new_elector(s, &election, "beta").await;
    let waiting_b = tokio::spawn(async move { b.lock().await });
    wait_for_line(&mut rx, within, &["alpha", "beta"], "beta joining").await;

    // A candidate that joins and then dies without leaving (no keep-alive,
    // its link cut): the store ends its session, and the line drops it.
    let ghost = s.client().await;
    let options = s.options(&election, "ghost");
    let queued = match raw_acquire(
        ghost.as_ref(),
        &request(ghost.as_ref(), &election, "ghost", &options),
    )
    .await
    {
        Ok(Raw::Held {
            queued: Some(claim),
            ..
        }) => claim,
        other => panic!("{W}: the ghost must queue behind alpha: {other:?}"),
    };
    wait_for_line(
        &mut rx,
        within,
        &["alpha", "beta", "ghost"],
        "ghost joining",
    )
    .await;
    s.vanish(&ghost).await;
    let vanished = Instant::now();
    wait_for_line(
        &mut rx,
        within + options.ttl,
        &["alpha", "beta"],
        "ghost gone",
    )
    .await;
    let gone_after = vanished.elapsed();

    la.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
    let lb = timeout(within, waiting_b)
        .await
        .unwrap_or_else(|_| panic!("{W}: beta did not lead after alpha's release"))
        .unwrap_or_else(|e| panic!("{W}: beta's task: {e}"))
        .unwrap_or_else(|e| panic!("{W}: beta's lock: {e}"));
    let line = wait_for_line(&mut rx, within, &["beta"], "beta leading").await;
    assert_eq!(line[0].token, lb.fencing_token(), "{W}: beta's token");

    let c = new_elector(s, &election, "gamma").await;
    let waiting_c = tokio::spawn(async move { c.lock().await });
    wait_for_line(&mut rx, within, &["beta", "gamma"], "gamma joining").await;
    lb.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
    let lc = timeout(within, waiting_c)
        .await
        .unwrap_or_else(|_| panic!("{W}: gamma did not lead after beta's release"))
        .unwrap_or_else(|e| panic!("{W}: gamma's task: {e}"))
        .unwrap_or_else(|e| panic!("{W}: gamma's lock: {e}"));
    wait_for_line(&mut rx, within, &["gamma"], "gamma leading").await;
    lc.unlock()
        .await
        .unwrap_or_else(|e| panic!("{W}: unlock failed: {e}"));
    wait_for_line(&mut rx, within, &[], "everyone gone").await;
    assert!(
        gone_after <= options.ttl * 2 + s.slack(),
        "{W}: the ghost stayed in the line {gone_after:?} after it vanished (ttl {:?})",
        options.ttl
    );
    s.revive(&ghost).await;
    drop(queued);
}

/// A semaphore of 2 permits: two holders at once, each with a token above
/// the one before; a third waits (refused by `try_acquire`, not admitted
/// while both hold) and gets a permit when one is released, with a greater
/// token; `holders` names the two. A record store refuses the semaphore
/// with a typed `NotSupported`.
pub async fn semaphore_admits_n_and_hands_over_on_release(s: &dyn Subject) {
    const W: &str = "semaphore_admits_n_and_hands_over_on_release";
    let name = s.election("sem-n");
    let make = |client: Arc<dyn Backend>, id: &str| semaphore(client, s.options(&name, id), 2, W);
    let Some(a) = make(s.client().await, "alpha") else {
        return;
    };
    let b = make(s.client().await, "beta").expect("a queue store");
    let c = make(s.client().await, "gamma").expect("a queue store");
    let within = quick(s, a.options());
    let pa = must_acquire(&a, within, W).await;
    let pb = must_acquire(&b, within, W).await;
    assert!(
        pb.fencing_token() > pa.fencing_token(),
        "{W}: the second permit's token {} is not above the first's {}",
        pb.fencing_token(),
        pa.fencing_token()
    );
    match c.try_acquire().await {
        Ok(None) => {}
        other => panic!("{W}: a third holder of 2 permits: {other:?}"),
    }
    let holders: Vec<String> = a
        .holders()
        .await
        .unwrap_or_else(|e| panic!("{W}: holders failed: {e}"))
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(holders, ["alpha", "beta"], "{W}: the holders");
    // The third waits in line while both permits are held.
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move { c.acquire_timeout(within * 4).await })
    };
    sleep(a.options().retry_interval * 2).await;
    assert!(
        !waiter.is_finished(),
        "{W}: UNSAFE: a third holder got in while two permits were held: {:?}",
        waiter.await
    );
    let line = a
        .line()
        .await
        .unwrap_or_else(|e| panic!("{W}: line failed: {e}"));
    assert_eq!(line.len(), 3, "{W}: two holders and a waiter: {line:?}");
    let beta_token = pb.fencing_token();
    pb.release()
        .await
        .unwrap_or_else(|e| panic!("{W}: release failed: {e}"));
    let pc = match waiter.await {
        Ok(Ok(Some(p))) => p,
        other => panic!("{W}: the waiter got no permit after a release: {other:?}"),
    };
    assert!(
        pc.fencing_token() > beta_token,
        "{W}: the third permit's token {} is not above the second's {beta_token}",
        pc.fencing_token()
    );
    assert!(
        !pa.is_lost(),
        "{W}: the first permit ended when another was released: {:?}",
        pa.loss_reason()
    );
    for p in [pa, pc] {
        p.release()
            .await
            .unwrap_or_else(|e| panic!("{W}: release failed: {e}"));
    }
}

/// A semaphore of 2 permits whose first holder vanishes (its session no
/// longer kept alive, as a crashed process): the waiter gets its permit
/// within ttl + poll + slack, never before the vanished holder's local
/// deadline, with a greater token, and the other holder keeps its permit.
pub async fn semaphore_frees_a_vanished_holders_permit(s: &dyn Subject) {
    const W: &str = "semaphore_frees_a_vanished_holders_permit";
    let name = s.election("sem-vanish");
    let make = |client: Arc<dyn Backend>, id: &str| semaphore(client, s.options(&name, id), 2, W);
    let Some(b) = make(s.client().await, "beta") else {
        return;
    };
    let c = make(s.client().await, "gamma").expect("a queue store");
    let ghost = s.client().await;
    let options = s.options(&name, "ghost");
    let req = AcquireRequest {
        permits: 2,
        ..request(ghost.as_ref(), &name, "ghost", &options)
    };
    let sent = Instant::now();
    let claim = match raw_acquire(ghost.as_ref(), &req).await {
        Ok(Raw::Won(c)) => c,
        other => {
            panic!("{W}: the first holder of a free semaphore did not get a permit: {other:?}")
        }
    };
    let replied = Instant::now();
    let within = quick(s, b.options());
    let pb = must_acquire(&b, within, W).await;
    s.vanish(&ghost).await;
    let bound = options.ttl + c.options().retry_interval + s.slack();
    let pc = must_acquire(&c, bound + options.ttl, W).await;
    let won = Instant::now();
    let lifetime = ghost.lease_plan(&options).lifetime(&options);
    let earliest = sent + lifetime;
    assert!(
        won >= earliest,
        "{W}: UNSAFE: gamma got a permit {:?} after the ghost's acquire was sent, before the ghost's local deadline (lifetime {lifetime:?})",
        won - sent,
    );
    assert!(
        won - replied <= bound + within,
        "{W}: the vanished holder's permit came free only after {:?}, more than ttl + poll + slack = {bound:?} (+ {within:?} to acquire)",
        won - replied
    );
    assert!(
        pc.fencing_token() > claim.token && pc.fencing_token() > pb.fencing_token(),
        "{W}: gamma's token {} is not above the ghost's {} and beta's {}",
        pc.fencing_token(),
        claim.token,
        pb.fencing_token()
    );
    assert!(
        !pb.is_lost(),
        "{W}: beta's permit ended when the ghost vanished: {:?}",
        pb.loss_reason()
    );
    s.revive(&ghost).await;
    let _ = timeout(
        options.ttl * 2 + s.slack(),
        raw_release(ghost.as_ref(), &claim),
    )
    .await;
    for p in [pb, pc] {
        p.release()
            .await
            .unwrap_or_else(|e| panic!("{W}: release failed: {e}"));
    }
}

/// A permit whose claim an operator deletes by hand ends (lost, within a
/// ttl), and the next permit has a greater token.
pub async fn semaphore_permit_ends_when_its_claim_is_deleted_by_hand(s: &dyn Subject) {
    const W: &str = "semaphore_permit_ends_when_its_claim_is_deleted_by_hand";
    let name = s.election("sem-deleted");
    let Some(a) = semaphore(s.client().await, s.options(&name, "alpha"), 2, W) else {
        return;
    };
    let ttl = a.options().ttl;
    let pa = must_acquire(&a, quick(s, a.options()), W).await;
    s.delete_by_hand(&name).await;
    let reason = timeout(ttl, pa.lost()).await.unwrap_or_else(|_| {
        panic!("{W}: UNSAFE: the permit is still held a ttl ({ttl:?}) after its claim was deleted")
    });
    assert!(
        matches!(reason, crate::LossReason::LeaseLost(_)),
        "{W}: the permit must end as lease lost, got {reason:?}"
    );
    let b = semaphore(s.client().await, s.options(&name, "beta"), 2, W).expect("a queue store");
    let pb = must_acquire(&b, quick(s, b.options()), W).await;
    assert!(
        pb.fencing_token() > pa.fencing_token(),
        "{W}: the next permit's token {} is not above the deleted one's {}",
        pb.fencing_token(),
        pa.fencing_token()
    );
    pb.release()
        .await
        .unwrap_or_else(|e| panic!("{W}: release failed: {e}"));
}

/// A request of `candidate` in `election` with the lease `backend` plans
/// for `options` (as the engine makes it).
fn request(
    backend: &dyn Backend,
    election: &str,
    candidate: &str,
    options: &ElectionOptions,
) -> AcquireRequest {
    AcquireRequest {
        election: election.to_owned(),
        candidate: candidate.to_owned(),
        value: Vec::new(),
        ttl: backend.lease_plan(options).lease.min(options.ttl),
        expired_revision: None,
        permits: 1,
    }
}

/// One acquire made by hand, outside the engine.
#[derive(Debug)]
enum Raw {
    Won(Claim),
    Held {
        leader: Option<LeaderInfo>,
        /// The queued claim (queue stores).
        queued: Option<Claim>,
    },
}

/// Acquire by hand in the store's family: a record store's conditional
/// write, or a queue store's claim in a session of its own that nobody
/// keeps alive (as a process that then vanishes would leave it).
async fn raw_acquire(b: &dyn Backend, req: &AcquireRequest) -> crate::Result<Raw> {
    match b.family() {
        Family::Record(r) => Ok(match r.try_acquire(req).await? {
            RecordOutcome::Acquired(c) => Raw::Won(c),
            RecordOutcome::Held { leader, .. } => Raw::Held {
                leader,
                queued: None,
            },
        }),
        Family::Queue(q) => {
            let session = q.open_session(req.ttl).await?;
            Ok(match q.join(req, session).await? {
                QueueOutcome::Acquired(c) => Raw::Won(c),
                QueueOutcome::Queued { leader, claim } => Raw::Held {
                    leader,
                    queued: Some(claim),
                },
            })
        }
    }
}

/// Renew a claim made by [`raw_acquire`]: the record, or the session and a
/// look at the claim.
async fn raw_renew(b: &dyn Backend, claim: &Claim) -> crate::Result<()> {
    match b.family() {
        Family::Record(r) => r.renew(claim).await.map(|_| ()),
        Family::Queue(q) => {
            q.keep_alive(claim.session).await?;
            q.check(claim, 1).await.map(|_| ())
        }
    }
}

/// Release a claim made by [`raw_acquire`].
async fn raw_release(b: &dyn Backend, claim: &Claim) -> crate::Result<()> {
    match b.family() {
        Family::Record(r) => r.release(claim).await,
        Family::Queue(q) => q.release(claim).await,
    }
}

/// Close the session of a released claim made by [`raw_acquire`], if any.
async fn raw_end(b: &dyn Backend, claim: &Claim) {
    if let Family::Queue(q) = b.family() {
        let _ = q.close_session(claim.session).await;
    }
}

/// Await every future, concurrently, keeping their order.
async fn futures_join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
