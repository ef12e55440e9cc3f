//! The engine's metrics (feature `metrics`), read with metrics-util's
//! debugging recorder under paused time. One test: the recorder is global
//! and a snapshot resets what it read (counters and gauges to 0, histograms
//! drained), so each snapshot below holds what happened since the previous.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::faulty::{Fault, FaultyBackend};
use leasehold_core::memory::MemoryStore;
use leasehold_core::{ElectionOptions, Elector};
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::time::sleep;

const TTL: Duration = Duration::from_secs(3);

/// One metric: kind, name, labels, value.
type Metric = (MetricKind, String, Vec<(String, String)>, DebugValue);

struct Seen(Vec<Metric>);

impl Seen {
    fn take(s: &Snapshotter) -> Seen {
        Seen(
            s.snapshot()
                .into_vec()
                .into_iter()
                .map(|(ck, _, _, v)| {
                    let labels = ck
                        .key()
                        .labels()
                        .map(|l| (l.key().to_string(), l.value().to_string()))
                        .collect();
                    (ck.kind(), ck.key().name().to_string(), labels, v)
                })
                .collect(),
        )
    }

    /// The value of `name` whose labels include every one of `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        self.0
            .iter()
            .find(|(_, n, ls, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, _, v)| v)
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.get(name, labels) {
            Some(DebugValue::Counter(c)) => *c,
            None => 0,
            other => panic!("{name} is not a counter: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.get(name, labels) {
            Some(DebugValue::Gauge(g)) => Some(g.into_inner()),
            None => None,
            other => panic!("{name} is not a gauge: {other:?}"),
        }
    }

    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.get(name, labels) {
            Some(DebugValue::Histogram(h)) => h.iter().map(|v| v.into_inner()).collect(),
            None => Vec::new(),
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }
}

fn faulty(store: &MemoryStore, candidate: &str) -> (Elector, leasehold_core::faulty::FaultHandle) {
    let (backend, faults) = FaultyBackend::wrap(Arc::new(store.client()));
    let options = ElectionOptions::new("m-jobs", candidate).with_ttl(TTL);
    (Elector::new(backend, options).unwrap(), faults)
}

#[tokio::test(start_paused = true)]
async fn metrics_follow_terms_losses_renewals_errors_and_waits() {
    let recorder = DebuggingRecorder::new();
    let snapshots = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");
    const A: &[(&str, &str)] = &[("election", "m-jobs"), ("candidate", "a")];
    const B: &[(&str, &str)] = &[("election", "m-jobs"), ("candidate", "b")];

    let store = MemoryStore::new();
    let (a, faults_a) = faulty(&store, "a");
    let (b, _) = faulty(&store, "b");
    let seen = Seen::take(&snapshots);
    // Every candidate shows in the gauge from the start, at 0.
    assert_eq!(seen.gauge("leasehold_leader_is_leader", A), Some(0.0));
    assert_eq!(seen.gauge("leasehold_leader_is_leader", B), Some(0.0));

    let la = a.lock().await.unwrap();
    let b_wins = {
        let b = b.clone();
        tokio::spawn(async move { b.lock().await })
    };
    sleep(TTL * 2).await;
    let seen = Seen::take(&snapshots);
    assert_eq!(seen.gauge("leasehold_leader_is_leader", A), Some(1.0));
    assert_eq!(seen.counter("leasehold_terms_started_total", A), 1);
    assert_eq!(
        seen.histogram("leasehold_campaign_wait_seconds", A).len(),
        1
    );
    let renewals = seen.histogram("leasehold_renewal_duration_seconds", A);
    assert!(
        renewals.len() >= 4,
        "renewed every second for 6 s: {renewals:?}"
    );
    let left = seen
        .gauge("leasehold_leader_deadline_seconds", A)
        .expect("time left is set at each renewal");
    let full = (TTL - a.options().safety_margin).as_secs_f64();
    assert!(left > 0.0 && left <= full, "{left}");
    assert_eq!(seen.counter("leasehold_terms_started_total", B), 0);

    // The store fails for a: errors by kind and backend, then the loss.
    faults_a.set(Fault::Fail);
    let reason = la.lost().await;
    assert_eq!(reason.label(), "unreachable");
    let seen = Seen::take(&snapshots);
    let errors = seen.counter(
        "leasehold_store_errors_total",
        &[
            ("candidate", "a"),
            ("backend", "memory"),
            ("operation", "renew"),
            ("kind", "unavailable"),
        ],
    );
    assert!(errors >= 2, "failed renewals are counted: {errors}");
    assert_eq!(seen.gauge("leasehold_leader_is_leader", A), Some(0.0));
    assert_eq!(
        seen.gauge("leasehold_leader_deadline_seconds", A),
        Some(0.0)
    );
    let lost = |seen: &Seen, who: &str, reason: &str| {
        seen.counter(
            "leasehold_terms_lost_total",
            &[("candidate", who), ("reason", reason)],
        )
    };
    assert_eq!(lost(&seen, "a", "unreachable"), 1);
    assert_eq!(lost(&seen, "a", "released"), 0);

    // b takes over once a's lease ends; its wait is recorded.
    faults_a.set(Fault::None);
    let lb = b_wins.await.unwrap().unwrap();
    let seen = Seen::take(&snapshots);
    assert_eq!(seen.counter("leasehold_terms_started_total", B), 1);
    assert_eq!(seen.gauge("leasehold_leader_is_leader", B), Some(1.0));
    let waited = seen.histogram("leasehold_campaign_wait_seconds", B);
    assert!(
        waited.len() == 1 && waited[0] >= 2.0 * TTL.as_secs_f64(),
        "b waited through a's term: {waited:?}"
    );

    // The store says b's lease is gone: lease_lost. Then a released term.
    assert!(store.expire_candidate("m-jobs", "b"));
    assert_eq!(lb.lost().await.label(), "lease_lost");
    let la = a.lock().await.unwrap();
    la.unlock().await.unwrap();
    let seen = Seen::take(&snapshots);
    assert_eq!(lost(&seen, "b", "lease_lost"), 1);
    assert_eq!(lost(&seen, "a", "released"), 1);
    assert_eq!(seen.gauge("leasehold_leader_is_leader", B), Some(0.0));
    assert_eq!(seen.gauge("leasehold_leader_is_leader", A), Some(0.0));
    assert_eq!(seen.counter("leasehold_terms_started_total", A), 1);
}
