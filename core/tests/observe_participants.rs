//! `Elector::observe_participants` on the in-memory store under paused
//! time: what it answers on a store without a line, on a first read that
//! fails, through an outage (retried, the last line kept) and a refusal
//! (the end), and that its task ends with its receivers.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::faulty::{Fault, FaultyBackend};
use leasehold_core::memory::MemoryStore;
use leasehold_core::{ElectionOptions, Elector, Error, LeaderInfo};
use tokio::sync::watch;
use tokio::time::{sleep, timeout};

const TTL: Duration = Duration::from_secs(3);

fn options(candidate: &str) -> ElectionOptions {
    ElectionOptions::new("jobs", candidate).with_ttl(TTL)
}

fn ids(rx: &watch::Receiver<Vec<LeaderInfo>>) -> Vec<String> {
    rx.borrow().iter().map(|p| p.id.clone()).collect()
}

async fn wait_ids(rx: &mut watch::Receiver<Vec<LeaderInfo>>, want: &[&str]) {
    let seen = timeout(
        TTL * 2,
        rx.wait_for(|l| l.iter().map(|p| p.id.as_str()).eq(want.iter().copied())),
    )
    .await
    .map(|r| r.is_ok());
    match seen {
        Ok(true) => {}
        Ok(false) => panic!("the line watch stopped before {want:?}"),
        Err(_) => panic!("the line never became {want:?}; last {:?}", ids(rx)),
    }
}

#[tokio::test(start_paused = true)]
async fn a_record_store_keeps_no_line() {
    let store = MemoryStore::polling();
    let e = Elector::observer(Arc::new(store.client()), options("w")).unwrap();
    match e.observe_participants().await {
        Err(Error::NotSupported { operation, backend }) => {
            assert_eq!((operation, backend), ("participants", "memory"));
        }
        other => panic!("expected NotSupported, got {:?}", other.map(|rx| ids(&rx))),
    }
}

#[tokio::test(start_paused = true)]
async fn a_first_read_that_fails_is_returned() {
    let store = MemoryStore::new();
    let (backend, faults) = FaultyBackend::wrap(Arc::new(store.client()));
    let e = Elector::observer(backend, options("w")).unwrap();
    faults.set(Fault::Fail);
    let err = e
        .observe_participants()
        .await
        .map(|rx| ids(&rx))
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    let denied = Error::permission_denied("memory", "no read permission on the election");
    faults.set(Fault::Error(denied.clone()));
    assert_eq!(
        e.observe_participants().await.map(|rx| ids(&rx)),
        Err(denied)
    );
}

/// Joins, a leader's release and a leaving waiter show; an outage keeps
/// the last line and the channel open while it retries, and the line is
/// followed again after it; a refusal ends the observation, keeping the
/// last line; dropping the receiver ends the task.
#[tokio::test(start_paused = true)]
async fn the_line_survives_an_outage_and_ends_on_a_refusal() {
    let store = MemoryStore::new();
    let (backend, faults) = FaultyBackend::wrap(Arc::new(store.client()));
    let observer = Elector::observer(backend.clone(), options("w")).unwrap();
    let mut rx = observer.observe_participants().await.unwrap();
    assert!(ids(&rx).is_empty());

    let a = Elector::new(Arc::new(store.client()), options("a")).unwrap();
    let la = a.lock().await.unwrap();
    wait_ids(&mut rx, &["a"]).await;
    assert_eq!(rx.borrow()[0].token, la.fencing_token());

    faults.set(Fault::Fail);
    let b = Elector::new(Arc::new(store.client()), options("b")).unwrap();
    let b2 = b.clone();
    let waiting_b = tokio::spawn(async move { b2.lock().await });
    let watches = faults.calls().watch;
    assert!(
        timeout(TTL * 5, rx.changed()).await.is_err(),
        "an outage must neither close the channel nor change the line shown"
    );
    assert_eq!(ids(&rx), ["a"], "the last line stays");
    assert!(
        faults.calls().watch > watches + 5,
        "the watch is reopened with backoff ({} opens)",
        faults.calls().watch - watches
    );

    faults.set(Fault::None);
    wait_ids(&mut rx, &["a", "b"]).await;
    la.unlock().await.unwrap();
    wait_ids(&mut rx, &["b"]).await;
    let lb = waiting_b.await.unwrap().unwrap();

    let denied = Error::permission_denied("memory", "no read permission on the election");
    faults.set(Fault::Error(denied.clone()));
    let r = timeout(TTL, rx.changed())
        .await
        .expect("a refusal must end the observation");
    assert!(r.is_err(), "the channel is closed, not changed");
    assert_eq!(ids(&rx), ["b"], "the last line seen stays");
    assert_eq!(observer.participants().await, Err(denied));
    let calls = faults.calls();
    sleep(TTL * 3).await;
    assert_eq!(
        faults.calls().watch,
        calls.watch,
        "a stopped observer reopens nothing"
    );
    assert_eq!(
        faults.calls().leader,
        calls.leader,
        "a stopped observer reads nothing"
    );
    lb.unlock().await.unwrap();

    // A running observation holds the backend; it lets go when its only
    // receiver is dropped.
    faults.set(Fault::None);
    let before = Arc::strong_count(&backend);
    let rx = observer.observe_participants().await.unwrap();
    assert!(
        Arc::strong_count(&backend) > before,
        "the task holds the backend"
    );
    drop(rx);
    sleep(Duration::from_millis(10)).await;
    assert_eq!(
        Arc::strong_count(&backend),
        before,
        "the observer's task ended with its receiver"
    );
}
