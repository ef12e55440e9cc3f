//! Health snapshots, under paused tokio time on the
//! in-memory backend with injected faults.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::faulty::{Fault, FaultyBackend};
use leasehold_core::memory::MemoryStore;
use leasehold_core::{ElectionOptions, Elector, Error, Health, StoreContact};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

const TTL: Duration = Duration::from_secs(3);

fn faulty(
    store: &MemoryStore,
    election: &str,
    candidate: &str,
) -> (Elector, leasehold_core::faulty::FaultHandle) {
    let (backend, faults) = FaultyBackend::wrap(Arc::new(store.client()));
    let options = ElectionOptions::new(election, candidate).with_ttl(TTL);
    (Elector::new(backend, options).unwrap(), faults)
}

/// Spawn `lock` on `e`, returning the task.
fn spawn_lock(e: &Elector) -> JoinHandle<leasehold_core::Result<leasehold_core::Leadership>> {
    let e = e.clone();
    tokio::spawn(async move { e.lock().await })
}

#[tokio::test(start_paused = true)]
async fn a_follower_reports_store_contact_and_being_cut_off() {
    let store = MemoryStore::new();
    let (a, _) = faulty(&store, "h-follow", "a");
    let leader = a.lock().await.unwrap();
    let (b, faults) = faulty(&store, "h-follow", "b");
    assert_eq!(
        b.health(),
        Health::Following {
            contact: StoreContact::Unknown
        }
    );
    assert!(b.health().is_healthy());

    let waiting = spawn_lock(&b);
    sleep(Duration::from_millis(10)).await;
    let Health::Following {
        contact: StoreContact::Ok { at },
    } = b.health()
    else {
        panic!("a waiting follower reached the store: {:?}", b.health());
    };
    assert!(b.health().is_healthy());

    // The store goes away: the follower's next call (the queued claim's
    // renewal, every renew interval) fails and it reports cut off since then.
    faults.set(Fault::Fail);
    let cut = Instant::now();
    sleep(TTL).await;
    match b.health() {
        Health::Following {
            contact: StoreContact::CutOff { since, last_error },
        } => {
            assert!(since > at && since >= cut, "cut off after the fault");
            assert!(
                matches!(last_error, Error::Unavailable { .. }),
                "{last_error:?}"
            );
        }
        other => panic!("expected cut off, got {other:?}"),
    }
    assert!(!b.health().is_healthy());
    let since_before = match b.health() {
        Health::Following {
            contact: StoreContact::CutOff { since, .. },
        } => since,
        _ => unreachable!(),
    };
    sleep(TTL).await;
    match b.health() {
        Health::Following {
            contact: StoreContact::CutOff { since, .. },
        } => {
            assert_eq!(
                since, since_before,
                "the cut-off instant is the first failure's"
            )
        }
        other => panic!("still cut off, got {other:?}"),
    }

    // The store is back: healthy again, and b leads after a's release.
    faults.set(Fault::None);
    sleep(TTL).await;
    assert!(
        matches!(
            b.health(),
            Health::Following {
                contact: StoreContact::Ok { .. }
            }
        ),
        "{:?}",
        b.health()
    );
    leader.unlock().await.unwrap();
    let b_leads = waiting.await.unwrap().unwrap();
    assert!(b.health().is_leading());
    assert!(!a.health().is_leading());
    drop(b_leads);
}

#[tokio::test(start_paused = true)]
async fn a_leader_reports_time_left_and_renewal_errors_until_its_deadline() {
    let store = MemoryStore::new();
    let (a, faults) = faulty(&store, "h-lead", "a");
    let leadership = a.lock().await.unwrap();
    let full = TTL - a.options().safety_margin;
    let Health::Leading(h) = a.health() else {
        panic!("leading: {:?}", a.health())
    };
    assert!(
        h.is_healthy() && h.until_deadline <= full && h.until_deadline > full / 2,
        "{h:?}"
    );
    assert_eq!(h.token, leadership.fencing_token());
    assert_eq!(h.last_error, None);
    assert_eq!(leadership.health(), h);

    // Renewals keep the deadline ahead.
    sleep(TTL * 3).await;
    let h = leadership.health();
    assert!(h.is_healthy() && h.until_deadline > full / 2, "{h:?}");

    // Renewals fail: still leading (healthy) but the time left shrinks and
    // the error shows.
    faults.set(Fault::Fail);
    sleep(a.options().renew_interval + Duration::from_millis(100)).await;
    let h = leadership.health();
    assert!(h.is_healthy(), "{h:?}");
    assert!(h.until_deadline < full / 2, "{h:?}");
    assert!(
        matches!(h.last_error, Some(Error::Unavailable { .. })),
        "{h:?}"
    );
    assert_eq!(a.health(), Health::Leading(h));

    // Past the deadline: not leading, and the elector is cut off.
    let reason = leadership.lost().await;
    assert_eq!(reason.label(), "unreachable");
    let h = leadership.health();
    assert!(
        !h.leading && !h.is_healthy() && h.until_deadline.is_zero(),
        "{h:?}"
    );
    assert!(
        matches!(
            a.health(),
            Health::Following {
                contact: StoreContact::CutOff { .. }
            }
        ),
        "{:?}",
        a.health()
    );
    assert!(!a.health().is_healthy());

    // A renewal that heals clears the error.
    faults.set(Fault::None);
    let again = a.lock().await.unwrap();
    faults.set(Fault::Fail);
    sleep(a.options().renew_interval + Duration::from_millis(100)).await;
    assert!(again.health().last_error.is_some());
    faults.set(Fault::None);
    sleep(a.options().renew_interval).await;
    let h = again.health();
    assert!(h.is_healthy() && h.last_error.is_none(), "{h:?}");
    assert!(a.health().is_healthy());
}
