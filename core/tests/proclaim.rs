//! `Leadership::proclaim` on the memory store, under paused time: a new
//! value in the same term, seen by observers, refused once the term is over.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::memory::MemoryStore;
use leasehold_core::{ElectionOptions, Elector, Error, LossReason};

fn elector(store: &MemoryStore, candidate: &str) -> Elector {
    let mut options =
        ElectionOptions::new("proclaimed", candidate).with_ttl(Duration::from_secs(3));
    options.value = b"v1".to_vec();
    Elector::new(Arc::new(store.client()), options).expect("elector")
}

async fn check_value_changes_in_the_same_term(store: MemoryStore) {
    let a = elector(&store, "a");
    let b = elector(&store, "b");
    let leadership = a.lock().await.expect("a leads");
    let token = leadership.fencing_token();
    let mut seen = b.observe().await.expect("observe");
    assert_eq!(
        seen.borrow().as_ref().map(|l| l.value.clone()),
        Some(b"v1".to_vec())
    );

    leadership.proclaim(b"v2".to_vec()).await.expect("proclaim");
    assert_eq!(leadership.value(), b"v2".to_vec());
    assert_eq!(leadership.leader().value, b"v2".to_vec());
    assert_eq!(leadership.fencing_token(), token, "same term");
    let now = b.leader().await.expect("leader").expect("a leads");
    assert_eq!(
        (now.id.as_str(), now.token, now.value.as_slice()),
        ("a", token, &b"v2"[..])
    );
    // Observers on watch backends see it; on the polling store the observer
    // polls every retry interval (time is paused, so this is immediate).
    tokio::time::timeout(
        Duration::from_secs(30),
        seen.wait_for(|l| {
            l.as_ref()
                .is_some_and(|l| l.value == b"v2" && l.token == token)
        }),
    )
    .await
    .expect("the observer sees the proclaimed value within 30 s")
    .expect("observer still running");

    // The term goes on: it renews past several ttls with the new value.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!leadership.is_lost());
    assert_eq!(
        b.leader().await.expect("leader").map(|l| l.value),
        Some(b"v2".to_vec())
    );

    leadership.clone().unlock().await.expect("unlock");
    let err = leadership
        .proclaim(b"v3".to_vec())
        .await
        .expect_err("a released term cannot proclaim");
    assert!(matches!(err, Error::Lost(_)), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn queue_store_proclaims_in_the_same_term() {
    check_value_changes_in_the_same_term(MemoryStore::new()).await;
}

#[tokio::test(start_paused = true)]
async fn polling_store_proclaims_in_the_same_term() {
    check_value_changes_in_the_same_term(MemoryStore::polling()).await;
}

#[tokio::test(start_paused = true)]
async fn proclaim_on_a_claim_the_store_ended_reports_the_loss() {
    let store = MemoryStore::new();
    let a = elector(&store, "a");
    let leadership = a.lock().await.expect("a leads");
    assert!(
        store.expire_candidate("proclaimed", "a"),
        "a's claim expired by hand"
    );
    let err = leadership
        .proclaim(b"v2".to_vec())
        .await
        .expect_err("the claim is gone");
    assert!(matches!(err, Error::Lost(_)), "{err:?}");
    assert!(leadership.is_lost(), "the done signal fired");
    assert!(
        matches!(leadership.loss_reason(), Some(LossReason::LeaseLost(_))),
        "{:?}",
        leadership.loss_reason()
    );
}
