//! Figures for the Cloud Storage backend against the fake-gcs-server emulator
//! (in memory, loopback): uncontended acquire latency, handover latency on
//! unlock as a function of the poll interval, crash failover time as a ratio
//! of the ttl, and the requests per second an idle follower sends.
//!
//! Run: `cargo run --release -p leasehold-integration-tests --example bench_gcs`
//! (needs the emulator: `bash scripts/setup`). Prints figures; asserts nothing.
//! The emulator answers in well under a millisecond; real Cloud Storage
//! adds tens of milliseconds per request, so read the latencies as the
//! backend's and the engine's own cost plus a floor.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{
    AcquireOutcome, AcquireRequest, Backend, ElectionOptions, Elector, Leadership,
};
use leasehold_gcs::GcsBackend;
use leasehold_integration_tests::{FAKE_GCS_BUCKET, FakeGcs, bench::report, unique_name};
use tokio::time::{Instant, sleep, timeout};

async fn client(gcs: &FakeGcs) -> Arc<dyn Backend> {
    let backend = GcsBackend::builder()
        .bucket(FAKE_GCS_BUCKET)
        .prefix("bench")
        .endpoint(gcs.endpoint())
        .anonymous()
        .ignore_environment()
        .build()
        .await
        .unwrap_or_else(|e| panic!("gcs client: {e}"));
    Arc::new(backend)
}

async fn elector(gcs: &FakeGcs, options: ElectionOptions) -> Elector {
    Elector::new(client(gcs).await, options).unwrap_or_else(|e| panic!("options: {e}"))
}

async fn lock(e: &Elector) -> Leadership {
    timeout(Duration::from_secs(60), e.lock())
        .await
        .expect("lock timed out")
        .expect("lock failed")
}

/// Requests the emulator logged so far for objects under `path_part`.
fn logged_requests(gcs: &FakeGcs, path_part: &str) -> (usize, usize) {
    let log = std::fs::read_to_string(gcs.log_path()).unwrap_or_default();
    let mut reads = 0;
    let mut writes = 0;
    for line in log.lines().filter(|l| l.contains(path_part)) {
        if line.contains("\\\"GET ") {
            reads += 1;
        } else if line.contains("\\\"POST ") {
            writes += 1;
        }
    }
    (reads, writes)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let gcs = FakeGcs::start()
        .await
        .unwrap_or_else(|e| panic!("fake-gcs-server: {e}"));
    let ttl = Duration::from_secs(3);
    println!("leasehold-gcs against fake-gcs-server 1.54 on loopback, ttl {ttl:?} unless said");

    // 1. Uncontended acquire: one read (404) + one conditional create, and
    //    the same through the elector (plus its bookkeeping), then release.
    let backend = client(&gcs).await;
    let mut raw = Vec::new();
    let mut via_elector = Vec::new();
    let mut release = Vec::new();
    for _ in 0..50 {
        let election = unique_name("uncontended");
        let req = AcquireRequest {
            election: election.clone(),
            candidate: "bench".into(),
            value: b"10.0.0.1:80".to_vec(),
            ttl,
            claim: None,
            expired_revision: None,
        };
        let t = Instant::now();
        let claim = match backend.try_acquire(&req).await {
            Ok(AcquireOutcome::Acquired(c)) => c,
            other => panic!("not acquired: {other:?}"),
        };
        raw.push(t.elapsed());
        let t = Instant::now();
        backend.release(&claim).await.expect("release");
        release.push(t.elapsed());

        let e = elector(
            &gcs,
            ElectionOptions::new(unique_name("uncontended"), "bench").with_ttl(ttl),
        )
        .await;
        let t = Instant::now();
        let l = lock(&e).await;
        via_elector.push(t.elapsed());
        l.unlock().await.expect("unlock");
    }
    report("acquire, free election (backend call)", raw);
    report("acquire, free election (Elector::lock)", via_elector);
    report("release (backend call)", release);

    // 2. Handover on unlock: a follower polls every retry interval
    //    (jittered +-20 %); a released record is taken at its next poll.
    for poll_ms in [100u64, 250, 500, 1000] {
        let election = unique_name("handover");
        let mut options_a = ElectionOptions::new(&election, "alpha").with_ttl(ttl);
        let mut options_b = ElectionOptions::new(&election, "beta").with_ttl(ttl);
        options_a.retry_interval = Duration::from_millis(poll_ms);
        options_b.retry_interval = Duration::from_millis(poll_ms);
        let a = Arc::new(elector(&gcs, options_a).await);
        let b = Arc::new(elector(&gcs, options_b).await);
        let mut samples = Vec::new();
        let mut leader = lock(&a).await;
        let mut waiting_is_b = true;
        for _ in 0..10 {
            let next = if waiting_is_b { b.clone() } else { a.clone() };
            let waiter = tokio::spawn(async move {
                let l = lock(&next).await;
                (Instant::now(), l)
            });
            sleep(Duration::from_millis(poll_ms * 2)).await;
            let t = Instant::now();
            leader.unlock().await.expect("unlock");
            let (won, l) = waiter.await.expect("waiter");
            samples.push(won - t);
            leader = l;
            waiting_is_b = !waiting_is_b;
        }
        leader.unlock().await.expect("unlock");
        report(&format!("handover on unlock, poll {poll_ms} ms"), samples);
    }

    // 3. Crash failover: the holder's last write, then silence; the follower
    //    must see the same generation for a full ttl before taking over.
    for ttl_s in [3u64, 6] {
        let ttl = Duration::from_secs(ttl_s);
        let mut ratios = Vec::new();
        let mut samples = Vec::new();
        for _ in 0..3 {
            let election = unique_name("failover");
            let ghost = client(&gcs).await;
            let req = AcquireRequest {
                election: election.clone(),
                candidate: "ghost".into(),
                value: Vec::new(),
                ttl,
                claim: None,
                expired_revision: None,
            };
            let _claim = match ghost.try_acquire(&req).await {
                Ok(AcquireOutcome::Acquired(c)) => c,
                other => panic!("not acquired: {other:?}"),
            };
            let crashed = Instant::now();
            let b = elector(&gcs, ElectionOptions::new(&election, "beta").with_ttl(ttl)).await;
            let l = lock(&b).await;
            let took = crashed.elapsed();
            samples.push(took);
            ratios.push(took.as_secs_f64() / ttl.as_secs_f64());
            l.unlock().await.expect("unlock");
        }
        let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        report(&format!("crash failover, ttl {ttl_s} s"), samples);
        println!("{:<44} mean {mean:.2} x ttl (poll ttl/6, jittered)", "");
    }

    // 4. Requests per second of an idle follower (and of the leader), as
    //    logged by the emulator, over 10 s with the default poll (ttl/6).
    for ttl_s in [3u64, 15] {
        let ttl = Duration::from_secs(ttl_s);
        let election = unique_name("idle");
        let a = elector(&gcs, ElectionOptions::new(&election, "alpha").with_ttl(ttl)).await;
        let la = lock(&a).await;
        let b = elector(&gcs, ElectionOptions::new(&election, "beta").with_ttl(ttl)).await;
        let window = Duration::from_secs(10);
        let before = logged_requests(&gcs, &election);
        let follower = tokio::spawn(async move { timeout(window, b.lock()).await.is_err() });
        let stayed_follower = follower.await.expect("follower");
        // The log is written asynchronously; give it a moment.
        sleep(Duration::from_millis(200)).await;
        let after = logged_requests(&gcs, &election);
        let secs = window.as_secs_f64();
        println!(
            "idle follower, ttl {ttl_s:>2} s (poll {:?}){:<14} {:.2} reads/s; leader {:.2} writes/s{}",
            ElectionOptions::new("e", "c").with_ttl(ttl).retry_interval,
            "",
            (after.0 - before.0) as f64 / secs,
            (after.1 - before.1) as f64 / secs,
            if stayed_follower {
                ""
            } else {
                " (follower led: figure invalid)"
            }
        );
        la.unlock().await.expect("unlock");
    }
}
