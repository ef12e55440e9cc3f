//! On a backend without a watch, an observer on an elector that is
//! campaigning follows the campaign's reads instead of polling beside it
//! (what `leasehold campaign` does: one read per poll interval, not two).
//! Paused tokio time, on the in-memory polling store (Cloud Storage's model).

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::faulty::FaultyBackend;
use leasehold_core::memory::MemoryStore;
use leasehold_core::{ElectionOptions, Elector};
use tokio::time::{sleep, timeout};

const TTL: Duration = Duration::from_secs(3);

#[tokio::test(start_paused = true)]
async fn a_campaigning_observer_reads_nothing_of_its_own() {
    let store = MemoryStore::polling();
    let leader = Elector::new(
        Arc::new(store.client()),
        ElectionOptions::new("jobs", "a").with_ttl(TTL),
    )
    .unwrap();
    let held = leader.lock().await.unwrap();
    let (backend, faults) = FaultyBackend::wrap(Arc::new(store.client()));
    let options = ElectionOptions::new("jobs", "b").with_ttl(TTL);
    let poll = options.retry_interval;
    let follower = Elector::new(backend, options).unwrap();
    let mut seen = follower.observe().await.unwrap();
    let campaign = {
        let f = follower.clone();
        tokio::spawn(async move { f.lock().await })
    };
    let before = faults.calls();
    sleep(poll * 20).await;
    let calls = faults.calls();
    let (reads, attempts) = (calls.leader - before.leader, calls.acquire - before.acquire);
    // The campaign polls about every interval (jittered 0.8..1.2); the
    // observer adds no read of its own while it runs.
    assert!(
        attempts >= 10,
        "the campaign polled {attempts} times in 20 intervals"
    );
    assert_eq!(
        reads, 0,
        "the observer read {reads} times beside the campaign's {attempts} polls"
    );
    assert_eq!(
        seen.borrow_and_update().as_ref().map(|l| l.id.clone()),
        Some("a".to_owned())
    );

    // It still follows: after the handover it shows the new leader.
    held.unlock().await.unwrap();
    let won = timeout(TTL * 4, campaign).await.unwrap().unwrap().unwrap();
    timeout(
        TTL * 4,
        seen.wait_for(|l| l.as_ref().is_some_and(|l| l.id == "b")),
    )
    .await
    .expect("the observer never showed the new leader")
    .unwrap();
    won.unlock().await.unwrap();
}
