//! What an idle `leasehold serve` costs: requests to the store per second and
//! resident memory, for a leading sidecar and a following one, on etcd and
//! ZooKeeper. It prints a markdown table (BENCHMARKS.md) and asserts nothing
//! about the figures; the test command runs it with a short window only to
//! prove it still runs. For the published figures:
//! `LEASEHOLD_SERVE_IDLE_WINDOW=30 cargo test --release -p leasehold-cli --test serve_idle -- --nocapture`.
#![cfg(feature = "full")]

#[allow(dead_code)]
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{cli, free_addr, signal, wait_exit};
use leasehold_integration_tests::bench::sum_counter;
use leasehold_integration_tests::{EtcdNode, ZkServer, create_zk_path, http, unique_name};
use nix::sys::signal::Signal;
use tokio::process::Child;
use tokio::time::{Instant, sleep};

fn window() -> Duration {
    let secs = std::env::var("LEASEHOLD_SERVE_IDLE_WINDOW")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    Duration::from_secs(secs)
}

fn serve(store: &str, id: &str, listen: &str) -> Child {
    cli()
        .args(["--store", store, "serve", "--name", "idle", "--id", id])
        .args(["--ttl", "6s", "--listen", listen])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start leasehold serve")
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Waits until `addr`'s /status says `state` (30 s).
async fn wait_state(addr: &str, state: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let a = addr.parse().expect("addr");
        if let Ok(r) = http::get(a, "/status").await
            && r.body.contains(&format!("\"state\":\"{state}\""))
        {
            return;
        }
        sleep(Duration::from_millis(100)).await;
    }
    panic!("{addr} did not reach {state} within 30s");
}

/// The store's request count, as `count` reads it, over `window`: per second.
async fn rate<F, Fut>(count: &F, window: Duration) -> f64
where
    F: Fn() -> Fut,
    Fut: Future<Output = u64>,
{
    let before = count().await;
    let started = Instant::now();
    sleep(window).await;
    let after = count().await;
    after.saturating_sub(before) as f64 / started.elapsed().as_secs_f64()
}

/// Base, then one leading sidecar, then a following one too: one row each.
async fn measure<F, Fut>(store_name: &str, store: &str, count: F) -> Vec<String>
where
    F: Fn() -> Fut,
    Fut: Future<Output = u64>,
{
    let w = window();
    let base = rate(&count, w).await;
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut a = serve(store, "A", &addr_a);
    wait_state(&addr_a, "leading").await;
    sleep(Duration::from_secs(1)).await;
    let with_leader = rate(&count, w).await;
    let rss_a = rss_kib(a.id().expect("A's pid"));
    let mut b = serve(store, "B", &addr_b);
    wait_state(&addr_b, "following").await;
    sleep(Duration::from_secs(1)).await;
    let with_both = rate(&count, w).await;
    let rss_b = rss_kib(b.id().expect("B's pid"));
    for (child, who) in [(&mut a, "A"), (&mut b, "B")] {
        signal(child, Signal::SIGTERM);
        let status = wait_exit(child, Duration::from_secs(15), who).await;
        assert!(status.success(), "{who}: {status}");
    }
    vec![
        format!(
            "| {store_name} | leading | {:.2} | {} |",
            with_leader - base,
            rss_a
        ),
        format!(
            "| {store_name} | following | {:.2} | {} |",
            with_both - with_leader,
            rss_b
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_idle_cost() {
    let (etcd, zk) = tokio::join!(EtcdNode::start(), ZkServer::start());
    let etcd = etcd.expect("start etcd (install: bash scripts/setup)");
    let zk = zk.expect("start ZooKeeper (install: bash scripts/setup)");
    let chroot = format!("/{}", unique_name("idle"));
    create_zk_path(&zk.connect_string(), &chroot)
        .await
        .expect("create the chroot");
    let etcd_store = format!(
        "etcd://{}?prefix={}",
        etcd.client_addr(),
        unique_name("/idle")
    );
    let zk_store = format!("zk://{}{chroot}/idle?session_timeout=8s", zk.client_addr());
    let etcd_addr = etcd.client_addr();
    let etcd_count = || async move {
        let r = http::get(etcd_addr, "/metrics")
            .await
            .expect("etcd /metrics");
        sum_counter(&r.body, "grpc_server_msg_received_total").expect("msg_received") as u64
    };
    let zk_count = || async { zk.packets_received().await.expect("zk mntr") };
    let mut rows = measure("etcd", &etcd_store, etcd_count).await;
    rows.extend(measure("ZooKeeper", &zk_store, zk_count).await);
    println!(
        "\nleasehold serve, idle, ttl 6s, window {:?} per figure\n\n| store | sidecar | requests to the store per second | resident memory (KiB) |\n| --- | --- | --- | --- |",
        window()
    );
    for r in &rows {
        println!("{r}");
    }
    assert_eq!(rows.len(), 4);
}
