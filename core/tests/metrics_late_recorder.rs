//! Metrics whatever the order of set-up: a recorder installed after the
//! electors were built, and after one of them began a term, still sees the
//! leader's gauge at 1 within one renew interval and a polling follower's at
//! 0 from its next store call. Before: the leader's `is_leader` was set only
//! when its term began, so a recorder installed later showed no leader at
//! all (`sum(leasehold_leader_is_leader)` was 0) until the next term. A test
//! binary of its own: the recorder is global.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::memory::MemoryStore;
use leasehold_core::{ElectionOptions, Elector};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::time::sleep;

const TTL: Duration = Duration::from_secs(3);

#[tokio::test(start_paused = true)]
async fn a_recorder_installed_late_sees_the_leader_and_the_followers() {
    // A record store: followers poll it, so they call the store while waiting.
    let store = MemoryStore::polling();
    let elector = |id: &str| {
        let options = ElectionOptions::new("late", id).with_ttl(TTL);
        Elector::new(Arc::new(store.client()), options).unwrap()
    };
    let (a, b) = (elector("a"), elector("b"));
    let leadership = a.lock().await.expect("a leads");
    let follower = tokio::spawn(async move { b.lock().await });
    sleep(Duration::from_millis(100)).await;

    let recorder = DebuggingRecorder::new();
    let snapshots = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");
    // One renew interval (ttl / 3) and a follower's poll.
    sleep(TTL / 3 + Duration::from_millis(100)).await;

    let gauges: Vec<(String, f64)> = snapshots
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(ck, ..)| ck.key().name() == "leasehold_leader_is_leader")
        .filter_map(|(ck, _, _, v)| {
            let candidate = ck
                .key()
                .labels()
                .find(|l| l.key() == "candidate")?
                .value()
                .to_owned();
            match v {
                DebugValue::Gauge(g) => Some((candidate, g.into_inner())),
                _ => None,
            }
        })
        .collect();
    let of = |id: &str| gauges.iter().find(|(c, _)| c == id).map(|(_, v)| *v);
    assert_eq!(of("a"), Some(1.0), "the leader, mid-term: {gauges:?}");
    assert_eq!(of("b"), Some(0.0), "the polling follower: {gauges:?}");
    assert!(!leadership.is_lost());
    leadership.unlock().await.unwrap();
    let won = follower.await.unwrap().expect("b leads after the handover");
    won.unlock().await.unwrap();
}
