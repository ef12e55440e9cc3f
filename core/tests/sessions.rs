//! Shared sessions (issue 15) under paused tokio time on the in-memory
//! backend: a waiter costs only its session's keep-alives, N leaders on one
//! backend instance cost one session, losing a shared session ends every
//! term on it and restarts its waiters, and a claim deleted by hand ends its
//! term at once.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::faulty::{Fault, FaultyBackend};
use leasehold_core::memory::MemoryStore;
use leasehold_core::{Backend, ElectionOptions, Elector, LossReason};
use tokio::time::{sleep, timeout};

const TTL: Duration = Duration::from_secs(3);

fn options(election: &str, candidate: &str) -> ElectionOptions {
    ElectionOptions::new(election, candidate).with_ttl(TTL)
}

#[tokio::test(start_paused = true)]
async fn an_idle_waiter_sends_only_its_sessions_keep_alives() {
    let store = MemoryStore::new();
    let a = Elector::new(Arc::new(store.client()), options("jobs", "a")).unwrap();
    let la = a.lock().await.unwrap();
    let (backend, faults) = FaultyBackend::wrap(Arc::new(store.client()));
    let b = Elector::new(backend, options("jobs", "b")).unwrap();
    let b_task = tokio::spawn(async move { b.lock().await });
    sleep(Duration::from_millis(10)).await;
    let before = faults.calls();
    let window = TTL * 10;
    sleep(window).await;
    let after = faults.calls();
    let intervals = (window.as_millis() / options("jobs", "b").renew_interval.as_millis()) as u64;
    assert_eq!(after.acquire, before.acquire, "no re-read while waiting");
    assert_eq!(after.wait, before.wait, "no new wait while nothing changed");
    assert_eq!(after.leader + after.release + after.watch, 0);
    let keep_alives = after.renew - before.renew;
    assert!(
        keep_alives <= intervals + 1 && keep_alives >= intervals - 1,
        "{keep_alives} keep-alives in {intervals} renew intervals"
    );
    // Still in line and alive: it leads when a goes.
    la.unlock().await.unwrap();
    let lb = timeout(Duration::from_millis(10), b_task)
        .await
        .expect("b leads at once")
        .unwrap()
        .unwrap();
    assert_eq!(lb.leader().id, "b");
}

#[tokio::test(start_paused = true)]
async fn two_hundred_leaders_on_one_backend_share_one_session() {
    const N: usize = 200;
    let store = MemoryStore::new();
    let (backend, faults) = FaultyBackend::wrap(Arc::new(store.client()));
    let backend: Arc<dyn Backend> = backend;
    let mut tasks = Vec::new();
    for i in 0..N {
        let e = Elector::new(backend.clone(), options(&format!("shard-{i}"), "node")).unwrap();
        tasks.push(tokio::spawn(async move { e.lock().await.unwrap() }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap());
    }
    assert_eq!(store.lease_count(), 1, "one session for {N} leaders");
    assert_eq!(leasehold_core::shared_sessions(backend.as_ref()), 1);
    let renew = options("x", "y").renew_interval;
    let before = faults.calls().renew;
    sleep(renew * 6).await;
    let keep_alives = faults.calls().renew - before;
    assert!(
        (5..=7).contains(&keep_alives),
        "{keep_alives} keep-alives in 6 renew intervals for {N} leaders"
    );
    assert!(held.iter().all(|l| !l.is_lost()));
    // The session goes with its last user.
    for l in held {
        l.unlock().await.unwrap();
    }
    sleep(Duration::from_millis(10)).await;
    assert_eq!(store.lease_count(), 0, "the session is closed");
}

#[tokio::test(start_paused = true)]
async fn an_own_session_is_not_shared() {
    let store = MemoryStore::new();
    let backend: Arc<dyn Backend> = Arc::new(store.client());
    let a = Elector::new(backend.clone(), options("e1", "a")).unwrap();
    let b = Elector::new(backend.clone(), options("e2", "b").with_own_session()).unwrap();
    let c = Elector::new(backend, options("e3", "c").with_ttl(TTL * 2)).unwrap();
    let (la, lb, lc) = (
        a.lock().await.unwrap(),
        b.lock().await.unwrap(),
        c.lock().await.unwrap(),
    );
    assert_eq!(store.lease_count(), 3, "own session and other ttl apart");
    let s = store.session_of("e1", "a").unwrap();
    assert!(store.expire_session(s));
    assert!(matches!(
        timeout(TTL, la.lost()).await.unwrap(),
        LossReason::LeaseLost(_)
    ));
    sleep(TTL).await;
    assert!(!lb.is_lost() && !lc.is_lost(), "isolated from a's session");
}

#[tokio::test(start_paused = true)]
async fn losing_a_shared_session_ends_every_term_and_restarts_its_waiters() {
    let store = MemoryStore::new();
    let shared: Arc<dyn Backend> = Arc::new(store.client());
    // On the shared session: two leaders and a waiter behind "z".
    let l1 = Elector::new(shared.clone(), options("e1", "x"))
        .unwrap()
        .lock()
        .await
        .unwrap();
    let l2 = Elector::new(shared.clone(), options("e2", "x"))
        .unwrap()
        .lock()
        .await
        .unwrap();
    let z = Elector::new(Arc::new(store.client()), options("e3", "z"))
        .unwrap()
        .lock()
        .await
        .unwrap();
    let w = Elector::new(shared.clone(), options("e3", "x")).unwrap();
    let w_task = tokio::spawn(async move { w.lock().await });
    // Another client waits in e1.
    let y = Elector::new(Arc::new(store.client()), options("e1", "y")).unwrap();
    let y_task = tokio::spawn(async move { y.lock().await });
    sleep(Duration::from_millis(10)).await;
    assert_eq!(store.queue_len("e3"), 2);
    let old = store.session_of("e1", "x").unwrap();
    assert_eq!(store.session_of("e2", "x"), Some(old));
    assert_eq!(store.session_of("e3", "x"), Some(old));

    // An admin revokes the shared session.
    assert!(store.expire_session(old));
    let renew = options("e1", "x").renew_interval;
    for (l, what) in [(&l1, "e1"), (&l2, "e2")] {
        let reason = timeout(renew + Duration::from_millis(10), l.lost())
            .await
            .unwrap_or_else(|_| panic!("the term of {what} did not end"));
        assert!(matches!(reason, LossReason::LeaseLost(_)), "{reason:?}");
    }
    // y, next in e1, leads; the waiter in e3 queued again in a new session.
    let ly = timeout(TTL, y_task).await.unwrap().unwrap().unwrap();
    assert_eq!(ly.leader().id, "y");
    // The waiter learns from the session's next keep-alive answer.
    sleep(renew + Duration::from_millis(10)).await;
    let new = store
        .session_of("e3", "x")
        .expect("the waiter queued again");
    assert_ne!(new, old);
    assert!(!w_task.is_finished());
    let zt = z.fencing_token();
    z.unlock().await.unwrap();
    let lw = timeout(Duration::from_millis(10), w_task)
        .await
        .expect("the restarted waiter leads when z goes")
        .unwrap()
        .unwrap();
    assert!(lw.fencing_token() > zt);
}

#[tokio::test(start_paused = true)]
async fn a_claim_deleted_by_hand_ends_its_term_at_once() {
    let store = MemoryStore::new();
    let backend: Arc<dyn Backend> = Arc::new(store.client());
    let l1 = Elector::new(backend.clone(), options("e1", "a"))
        .unwrap()
        .lock()
        .await
        .unwrap();
    let l2 = Elector::new(backend, options("e2", "a"))
        .unwrap()
        .lock()
        .await
        .unwrap();
    assert!(store.delete_claim("e1", "a"));
    let reason = timeout(Duration::from_millis(10), l1.lost())
        .await
        .expect("the term ends at once, not at a renewal");
    assert!(matches!(reason, LossReason::LeaseLost(_)), "{reason:?}");
    sleep(TTL).await;
    assert!(!l2.is_lost(), "the other term on the session goes on");
}

/// Issue 20: a release that never reached the store, in a session another elector
/// keeps alive, is retried until it lands; the next candidate then leads
/// with a higher token, and a later candidate on the same backend never
/// adopts the ended term's claim.
#[tokio::test(start_paused = true)]
async fn a_release_whose_answer_is_lost_is_retried_until_it_lands() {
    let store = MemoryStore::new();
    let (shared, faults) = FaultyBackend::wrap(Arc::new(store.client()));
    let shared: Arc<dyn Backend> = shared;
    let a = Elector::new(shared.clone(), options("e", "a")).unwrap();
    let g = Elector::new(shared.clone(), options("f", "g")).unwrap();
    let la = a.lock().await.unwrap();
    let lg = g.lock().await.unwrap();
    let b = Elector::new(Arc::new(store.client()), options("e", "b")).unwrap();
    let b_task = tokio::spawn(async move { b.lock().await });
    sleep(Duration::from_millis(10)).await;

    // The link goes silent for the delete (it never lands), then heals well
    // before the session's deadline.
    faults.set(Fault::BlackHole);
    let a_token = la.fencing_token();
    assert!(la.unlock().await.is_err(), "the release timed out");
    faults.set(Fault::None);
    let lb = timeout(TTL, b_task)
        .await
        .expect("b leads within a ttl")
        .unwrap()
        .unwrap();
    assert!(lb.fencing_token() > a_token);
    assert!(!lg.is_lost(), "the session lives on for g");
    lb.unlock().await.unwrap();
    lg.unlock().await.unwrap();
}

/// Issue 20: a release that keeps failing in a session that stays alive
/// gives the session up after a ttl: every term on it ends, its keep-alives
/// stop, the store ends it (and the claim), and the next candidate leads.
#[tokio::test(start_paused = true)]
async fn a_release_that_keeps_failing_gives_the_session_up() {
    let store = MemoryStore::new();
    let (shared, faults) = FaultyBackend::wrap(Arc::new(store.client()));
    let shared: Arc<dyn Backend> = shared;
    let a = Elector::new(shared.clone(), options("e", "a")).unwrap();
    let g = Elector::new(shared.clone(), options("f", "g")).unwrap();
    let la = a.lock().await.unwrap();
    let lg = g.lock().await.unwrap();
    let b = Elector::new(Arc::new(store.client()), options("e", "b")).unwrap();
    let b_task = tokio::spawn(async move { b.lock().await });
    sleep(Duration::from_millis(10)).await;
    // The store keeps answering keep-alives but refuses every delete.
    faults.set(Fault::RefuseReleases);
    let started = tokio::time::Instant::now();
    assert!(la.unlock().await.is_err());
    let reason = timeout(TTL * 2, lg.lost())
        .await
        .expect("the session is given up within a ttl of the failed release");
    let given_up = started.elapsed();
    assert!(
        matches!(&reason, LossReason::LeaseLost(m) if m.contains("given up")),
        "{reason}"
    );
    assert!(
        given_up >= TTL,
        "given up after {given_up:?}, before a ttl of retries"
    );
    let lb = timeout(TTL * 2, b_task)
        .await
        .expect("b leads once the store ended the given-up session")
        .unwrap()
        .unwrap();
    assert_eq!(lb.leader().id, "b");
    assert!(lb.fencing_token() > lg.fencing_token());
}

/// Issue 20: a create in a shared session whose answer was lost, in a
/// campaign that then ends (`try_lock`), leaves no claim behind in the line,
/// and the next create in that session gets a new token (never adopts it).
#[tokio::test(start_paused = true)]
async fn a_create_whose_answer_is_lost_is_never_adopted() {
    let store = MemoryStore::new();
    let z = Elector::new(Arc::new(store.client()), options("e", "z")).unwrap();
    let lz = z.lock().await.unwrap();
    let (shared, faults) = FaultyBackend::wrap(Arc::new(store.client()));
    let shared: Arc<dyn Backend> = shared;
    let g = Elector::new(shared.clone(), options("f", "g")).unwrap();
    let lg = g.lock().await.unwrap();
    let a = Elector::new(shared.clone(), options("e", "a")).unwrap();
    faults.set(Fault::LoseReplies);
    assert!(a.try_lock().await.is_err(), "the create's answer was lost");
    faults.set(Fault::None);
    // Whatever the lost create made is withdrawn in the background.
    sleep(TTL).await;
    assert_eq!(store.queue_len("e"), 1, "only z is in the line");
    // d, on the same backend (and so the same session), leads after z with a
    // token of its own.
    let d = Elector::new(shared.clone(), options("e", "d")).unwrap();
    let d_task = tokio::spawn(async move { d.lock().await });
    sleep(Duration::from_millis(10)).await;
    let z_token = lz.fencing_token();
    lz.unlock().await.unwrap();
    let ld = timeout(TTL, d_task)
        .await
        .expect("d leads")
        .unwrap()
        .unwrap();
    assert!(ld.fencing_token() > z_token);
    assert_eq!(ld.leader().id, "d");
    ld.unlock().await.unwrap();
    lg.unlock().await.unwrap();
}

/// Issue 20: a create the store refused (permission denied) made nothing:
/// it is not settled, so the shared session (and the other terms on it)
/// is not given up.
#[tokio::test(start_paused = true)]
async fn a_refused_create_does_not_give_the_session_up() {
    let store = MemoryStore::new();
    let (shared, faults) = FaultyBackend::wrap(Arc::new(store.client()));
    let shared: Arc<dyn Backend> = shared;
    let g = Elector::new(shared.clone(), options("f", "g")).unwrap();
    let lg = g.lock().await.unwrap();
    let a = Elector::new(shared.clone(), options("e", "a")).unwrap();
    faults.set(Fault::Error(leasehold_core::Error::permission_denied(
        "memory",
        "no write permission on e",
    )));
    let refused = a.try_lock().await;
    assert!(
        matches!(refused, Err(leasehold_core::Error::PermissionDenied { .. })),
        "{refused:?}"
    );
    faults.set(Fault::None);
    sleep(TTL * 3).await;
    assert!(
        !lg.is_lost(),
        "a refused create gave the shared session up: {:?}",
        lg.loss_reason()
    );
    lg.unlock().await.unwrap();
}
