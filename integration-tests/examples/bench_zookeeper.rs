//! Figures for the ZooKeeper backend against a real standalone ZooKeeper
//! (tickTime 500 ms) on loopback: uncontended acquire latency, handover
//! latency on unlock, crash failover against the session timeout, and the
//! packets an idle follower sends.
//!
//! Run: `cargo run --release -p leasehold-integration-tests --example bench_zookeeper`
//! (needs ZooKeeper: `bash scripts/setup`). Prints figures; asserts nothing.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Backend, ElectionOptions, Elector, Leadership};
use leasehold_integration_tests::{Proxy, ZkServer, bench::report, unique_name};
use leasehold_zookeeper::ZkBackend;
use tokio::time::{Instant, sleep, timeout};

async fn connect(connect_string: &str, session: Duration) -> Arc<dyn Backend> {
    let backend = ZkBackend::builder()
        .connect_string(connect_string)
        .session_timeout(session)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {connect_string}: {e}"));
    Arc::new(backend)
}

/// An elector on a session of `session`, with the longest ttl that session
/// covers (`ZkBackend::min_session_timeout`: 37/30 of the ttl with the
/// derived timings).
async fn elector(cs: &str, election: &str, candidate: &str, session: Duration) -> Elector {
    let options = ElectionOptions::new(election, candidate).with_ttl(session * 30 / 37);
    assert!(ZkBackend::min_session_timeout(&options) <= session);
    Elector::new(connect(cs, session).await, options).unwrap_or_else(|e| panic!("options: {e}"))
}

async fn lock(e: &Elector) -> Leadership {
    timeout(Duration::from_secs(60), e.lock())
        .await
        .expect("lock timed out")
        .expect("lock failed")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = ZkServer::start()
        .await
        .unwrap_or_else(|e| panic!("could not start ZooKeeper: {e}"));
    let cs = server.connect_string();
    println!("ZooKeeper {} (standalone, tickTime 500 ms)", cs);
    let ten = Duration::from_secs(10);

    // 1. Uncontended acquire: try_lock on a free election, then unlock.
    {
        let election = unique_name("bench-acquire");
        let e = elector(&cs, &election, "solo", ten).await;
        for _ in 0..20 {
            lock(&e).await.unlock().await.expect("unlock");
        }
        let mut samples = Vec::new();
        for _ in 0..300 {
            let t = Instant::now();
            let l = lock(&e).await;
            samples.push(t.elapsed());
            l.unlock().await.expect("unlock");
        }
        report("uncontended acquire (lock)", samples);
    }

    // 2. Handover on unlock: the waiter's lock() returns after the leader's unlock.
    {
        let election = unique_name("bench-handover");
        let a = elector(&cs, &election, "a", ten).await;
        let b = elector(&cs, &election, "b", ten).await;
        let mut leader = lock(&a).await;
        let mut waiter = b.clone();
        let mut other = a.clone();
        let mut samples = Vec::new();
        for round in 0..220 {
            let w = waiter.clone();
            let task = tokio::spawn(async move { (lock(&w).await, Instant::now()) });
            // Let the waiter queue behind the leader.
            sleep(Duration::from_millis(15)).await;
            let t = Instant::now();
            leader.unlock().await.expect("unlock");
            let (next, won) = task.await.expect("task");
            if round >= 20 {
                samples.push(won - t);
            }
            leader = next;
            std::mem::swap(&mut waiter, &mut other);
        }
        leader.unlock().await.expect("unlock");
        report("handover on unlock", samples);
    }

    // 3. Crash failover: the leader's link goes silent (a dead host); the
    // server expires its session; the follower leads.
    {
        let session = Duration::from_secs(2);
        let mut samples = Vec::new();
        let mut ratios = Vec::new();
        for _ in 0..5 {
            let election = unique_name("bench-failover");
            let proxy = Proxy::start(server.client_addr()).await;
            let a = elector(&proxy.addr().to_string(), &election, "doomed", session).await;
            let b = elector(&cs, &election, "heir", session).await;
            let la = lock(&a).await;
            let b2 = b.clone();
            let task = tokio::spawn(async move { (lock(&b2).await, Instant::now()) });
            sleep(Duration::from_millis(700)).await;
            let cut = Instant::now();
            proxy.blackhole();
            let (lb, won) = task.await.expect("task");
            let took = won - cut;
            samples.push(took);
            ratios.push(took.as_secs_f64() / session.as_secs_f64());
            lb.unlock().await.expect("unlock");
            drop(la);
            proxy.heal();
        }
        report("crash failover (session 2 s)", samples.clone());
        let over: Vec<String> = samples
            .iter()
            .map(|s| format!("{:+.0} ms", (s.as_secs_f64() - 2.0) * 1000.0))
            .collect();
        println!(
            "{:<40} ratios to the session timeout: {:?}; vs timeout: {}",
            "",
            ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>(),
            over.join(", ")
        );
    }

    // 4. Packets from an idle follower: server packets with a leader alone,
    // then with a follower queued behind it.
    {
        let election = unique_name("bench-idle");
        let window = Duration::from_secs(20);
        let a = elector(&cs, &election, "leader", ten).await;
        let la = lock(&a).await;
        sleep(Duration::from_secs(2)).await;
        let p0 = server.packets_received().await.expect("mntr");
        sleep(window).await;
        let p1 = server.packets_received().await.expect("mntr");
        let leader_only = (p1 - p0) as f64 / window.as_secs_f64();
        let b = elector(&cs, &election, "follower", ten).await;
        let b2 = b.clone();
        let task = tokio::spawn(async move { b2.lock().await });
        sleep(Duration::from_secs(2)).await;
        let p2 = server.packets_received().await.expect("mntr");
        sleep(window).await;
        let p3 = server.packets_received().await.expect("mntr");
        let both = (p3 - p2) as f64 / window.as_secs_f64();
        // zookeeper-client pings after 3/20 of the session timeout without
        // sending; the engine renews every ttl/3 and re-checks every ttl.
        let ping_only = 1.0 / (ten.as_secs_f64() * 3.0 / 20.0);
        println!(
            "{:<40} leader alone {leader_only:.2}/s, with a follower {both:.2}/s: follower ~{:.2} packets/s (pings alone would be <= {ping_only:.2}/s; + renew every {:.1} s + re-check every {:.0} s)",
            "idle follower (session 10 s)",
            both - leader_only,
            ten.as_secs_f64() / 3.0,
            ten.as_secs_f64()
        );
        la.unlock().await.expect("unlock");
        let lb = task.await.expect("task").expect("follower lock");
        lb.unlock().await.expect("unlock");
    }
}
