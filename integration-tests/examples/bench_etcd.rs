//! Figures for the etcd backend on a real single-node etcd on loopback.
//!
//! Run: `cargo run --release -p leasehold-integration-tests --example bench_etcd`
//!
//! Prints, never asserts:
//! * uncontended acquire latency (`Elector::lock` on a free election, p50/p99);
//! * handover latency on unlock (from `unlock()` called to the waiting
//!   candidate's `lock()` returning, p50/p99);
//! * crash failover time: a leader that stops renewing (a crashed process),
//!   from its last lease refresh sent to the waiting candidate leading, as a
//!   ratio of the ttl;
//! * requests per second made by an idle queued candidate and by an idle
//!   observer (client-side counts, and etcd's own `grpc_server_handled_total`).

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{AcquireOutcome, AcquireRequest, Backend, ElectionOptions, Elector};
use leasehold_etcd::EtcdBackend;
use leasehold_integration_tests::{EtcdNode, bench::report, unique_name};
use tokio::time::{Instant, sleep, timeout};

async fn connect(endpoint: &str) -> EtcdBackend {
    EtcdBackend::builder()
        .endpoints([endpoint])
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

fn elector(backend: &EtcdBackend, election: &str, candidate: &str, ttl: Duration) -> Elector {
    Elector::new(
        Arc::new(backend.clone()),
        ElectionOptions::new(election, candidate).with_ttl(ttl),
    )
    .unwrap_or_else(|e| panic!("options: {e}"))
}

async fn uncontended_acquire(endpoint: &str, rounds: usize) {
    let backend = connect(endpoint).await;
    let e = elector(
        &backend,
        &unique_name("bench-acquire"),
        "solo",
        Duration::from_secs(10),
    );
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let l = e.lock().await.unwrap_or_else(|e| panic!("lock: {e}"));
        samples.push(t.elapsed());
        l.unlock().await.unwrap_or_else(|e| panic!("unlock: {e}"));
    }
    report("uncontended acquire (lock on a free election)", samples);
}

async fn handover(endpoint: &str, rounds: usize) {
    let election = unique_name("bench-handover");
    let (ba, bb) = (connect(endpoint).await, connect(endpoint).await);
    let a = elector(&ba, &election, "a", Duration::from_secs(10));
    let b = elector(&bb, &election, "b", Duration::from_secs(10));
    let mut holder = a.lock().await.unwrap_or_else(|e| panic!("lock: {e}"));
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let next = if round % 2 == 0 { b.clone() } else { a.clone() };
        let waiting = tokio::spawn(async move {
            let l = next.lock().await;
            (Instant::now(), l)
        });
        // Let the other candidate queue up and start watching.
        sleep(Duration::from_millis(30)).await;
        let t = Instant::now();
        holder
            .unlock()
            .await
            .unwrap_or_else(|e| panic!("unlock: {e}"));
        let (won, l) = waiting.await.unwrap_or_else(|e| panic!("task: {e}"));
        holder = l.unwrap_or_else(|e| panic!("lock: {e}"));
        samples.push(won - t);
    }
    holder
        .unlock()
        .await
        .unwrap_or_else(|e| panic!("unlock: {e}"));
    report(
        "handover on unlock (unlock called -> successor leads)",
        samples,
    );
}

async fn crash_failover(endpoint: &str, ttl: Duration, rounds: usize) {
    let mut ratios = Vec::with_capacity(rounds);
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let election = unique_name("bench-crash");
        let ghost = connect(endpoint).await;
        let req = AcquireRequest {
            election: election.clone(),
            candidate: "ghost".into(),
            value: Vec::new(),
            ttl,
            claim: None,
            expired_revision: None,
        };
        // The lease is granted by this call and never refreshed again: the
        // holder "crashed" right after acquiring.
        let sent = Instant::now();
        match ghost.try_acquire(&req).await {
            Ok(AcquireOutcome::Acquired(_)) => {}
            other => panic!("ghost acquire: {other:?}"),
        }
        let follower = connect(endpoint).await;
        let f = elector(&follower, &election, "follower", ttl);
        let l = timeout(ttl * 4, f.lock())
            .await
            .unwrap_or_else(|_| panic!("no failover within 4 ttl"))
            .unwrap_or_else(|e| panic!("lock: {e}"));
        let took = sent.elapsed();
        samples.push(took);
        ratios.push(took.as_secs_f64() / ttl.as_secs_f64());
        l.unlock().await.unwrap_or_else(|e| panic!("unlock: {e}"));
    }
    ratios.sort_by(f64::total_cmp);
    let over: Vec<String> = {
        let mut s = samples.clone();
        s.sort();
        s.iter()
            .map(|d| format!("{:.0?}", d.saturating_sub(ttl)))
            .collect()
    };
    report(
        &format!("crash failover, ttl {ttl:?} (last refresh sent -> successor leads)"),
        samples,
    );
    println!(
        "  as a ratio of ttl: min {:.3} max {:.3}; time beyond ttl per round: {}",
        ratios.first().copied().unwrap_or_default(),
        ratios.last().copied().unwrap_or_default(),
        over.join(", ")
    );
}

async fn idle_follower(node: &EtcdNode, window: Duration) {
    let endpoint = node.endpoint();
    let election = unique_name("bench-idle");
    let ttl = Duration::from_secs(10);
    let (bl, bf, bo) = (
        connect(&endpoint).await,
        connect(&endpoint).await,
        connect(&endpoint).await,
    );
    let leader = elector(&bl, &election, "leader", ttl);
    let follower = elector(&bf, &election, "follower", ttl);
    let observer = elector(&bo, &election, "observer", ttl);
    let held = leader.lock().await.unwrap_or_else(|e| panic!("lock: {e}"));
    let queued = tokio::spawn(async move { follower.lock().await });
    let rx = observer
        .observe()
        .await
        .unwrap_or_else(|e| panic!("observe: {e}"));
    sleep(Duration::from_millis(500)).await;
    let (l0, f0, o0) = (bl.stats(), bf.stats(), bo.stats());
    let s0 = node.requests_handled().await.ok();
    sleep(window).await;
    let (l1, f1, o1) = (bl.stats(), bf.stats(), bo.stats());
    let s1 = node.requests_handled().await.ok();
    let secs = window.as_secs_f64();
    let rate = |a: u64, b: u64| (b - a) as f64 / secs;
    println!("idle, ttl {ttl:?}, over {window:?} (requests = unary calls + streams opened):");
    println!(
        "  leader:          {:.2} requests/s + {:.2} keep-alive messages/s",
        rate(l0.requests, l1.requests),
        rate(l0.keep_alives, l1.keep_alives)
    );
    println!(
        "  queued follower: {:.2} requests/s + {:.2} keep-alive messages/s, {} watches opened, {} watch events",
        rate(f0.requests, f1.requests),
        rate(f0.keep_alives, f1.keep_alives),
        f1.watches_opened - f0.watches_opened,
        f1.watch_events - f0.watch_events
    );
    println!(
        "  observer:        {:.2} requests/s, {} watch events",
        rate(o0.requests, o1.requests),
        o1.watch_events - o0.watch_events
    );
    if let (Some(a), Some(b)) = (s0, s1) {
        println!(
            "  etcd grpc_server_handled_total: {:.2}/s for all three (streams count when they end)",
            rate(a, b)
        );
    }
    drop(rx);
    queued.abort();
    held.unlock()
        .await
        .unwrap_or_else(|e| panic!("unlock: {e}"));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let node = EtcdNode::start()
        .await
        .unwrap_or_else(|e| panic!("could not start etcd: {e}"));
    let endpoint = node.endpoint();
    println!("etcd single node at {endpoint}");
    uncontended_acquire(&endpoint, 200).await;
    handover(&endpoint, 200).await;
    crash_failover(&endpoint, Duration::from_secs(2), 5).await;
    crash_failover(&endpoint, Duration::from_secs(5), 3).await;
    idle_follower(&node, Duration::from_secs(30)).await;
}
