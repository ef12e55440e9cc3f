//! `--metrics-addr` against a real etcd: scrape two candidates' /metrics and
//! /healthz through a leader change caused by a store outage (candidate A
//! reaches etcd through a proxy that is black-holed), and see the is-leader
//! gauge, the counters and the health change (client-go's meaning: the
//! follower cut off from the store stays live and ready). Also: without RUST_LOG the
//! store errors show on stderr, without colour codes (stderr is a pipe).
// etcd: in the `full` feature (the default).
#![cfg(feature = "full")]

#[allow(dead_code)]
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{cli, free_addr, signal, wait_exit};
use leasehold_integration_tests::{EtcdNode, Proxy, unique_name};
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::time::{Instant, sleep, timeout};

/// One GET: the status code and the body, or None when nothing answered.
async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let fetch = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).await.ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_string();
        Some((status, body))
    };
    timeout(Duration::from_secs(5), fetch).await.ok().flatten()
}

/// The value of the sample of `name` whose labels include `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Scrapes `addr` every 100 ms until `ok(metrics, healthz status, healthz
/// body)` holds; panics with the last scrape if it has not within `within`.
async fn wait_for(
    addr: &str,
    what: &str,
    within: Duration,
    ok: impl Fn(&str, u16, &serde_json::Value) -> bool,
) -> (String, serde_json::Value) {
    let until = Instant::now() + within;
    let mut last = None;
    while Instant::now() < until {
        if let (Some((200, metrics)), Some((code, body))) =
            (get(addr, "/metrics").await, get(addr, "/healthz").await)
        {
            let health: serde_json::Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("/healthz is not JSON ({e}): {body}"));
            if ok(&metrics, code, &health) {
                return (metrics, health);
            }
            last = Some((metrics, code, health));
        }
        sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not seen within {within:?}; last scrape of {addr}: {last:#?}");
}

fn campaign(store: &str, name: &str, id: &str, metrics_addr: &str) -> Child {
    cli()
        .args(["--store", store, "--metrics-addr", metrics_addr, "campaign"])
        .args(["--name", name, "--id", id])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start leasehold campaign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_follow_a_leader_change_and_a_store_outage() {
    let etcd = EtcdNode::start()
        .await
        .expect("start etcd (install: bash scripts/setup)");
    let proxy = Proxy::start(etcd.client_addr()).await;
    let prefix = unique_name("/metrics");
    let via_proxy = format!("etcd://{}?ttl=3s&prefix={prefix}", proxy.addr());
    let direct = format!("etcd://{}?ttl=3s&prefix={prefix}", etcd.client_addr());
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let a_is = [("election", "m"), ("candidate", "A")];
    let b_is = [("election", "m"), ("candidate", "B")];
    let gauge = "leasehold_leader_is_leader";

    let mut a = campaign(&via_proxy, "m", "A", &addr_a);
    let (_, health) = wait_for(&addr_a, "A leads", Duration::from_secs(20), |m, code, h| {
        sample(m, gauge, &a_is) == Some(1.0) && code == 200 && h["state"] == "leading"
    })
    .await;
    assert!(
        health["until_deadline_ms"].as_u64().unwrap() > 0,
        "{health}"
    );
    let mut b = campaign(&direct, "m", "B", &addr_b);
    wait_for(
        &addr_b,
        "B follows, store reachable",
        Duration::from_secs(20),
        |m, code, h| sample(m, gauge, &b_is) == Some(0.0) && code == 200 && h["store"] == "ok",
    )
    .await;

    // The outage: A is cut off. It steps down at its local deadline
    // (unreachable), B takes over when etcd ends A's lease.
    proxy.blackhole();
    let (metrics, health) = wait_for(
        &addr_a,
        "A lost, cut off",
        Duration::from_secs(20),
        |m, code, h| {
            // client-go's meaning: a follower cut off from the store is
            // alive (its `healthy` field says the store is not reached).
            sample(m, gauge, &a_is) == Some(0.0)
                && code == 200
                && h["live"] == true
                && h["healthy"] == false
                && h["store"] == "cut_off"
                && sample(
                    m,
                    "leasehold_terms_lost_total",
                    &[("candidate", "A"), ("reason", "unreachable")],
                ) == Some(1.0)
        },
    )
    .await;
    let errors = sample(
        &metrics,
        "leasehold_store_errors_total",
        &[
            ("candidate", "A"),
            ("backend", "etcd"),
            ("operation", "renew"),
        ],
    );
    assert!(
        errors.is_some_and(|n| n >= 1.0),
        "A's failed renewals are counted:\n{metrics}"
    );
    assert!(health["last_error"].is_string(), "{health}");
    assert_eq!(
        get(&addr_a, "/readyz").await.map(|r| r.0),
        Some(200),
        "a follower cut off from the store stays ready"
    );
    assert_eq!(
        get(&addr_a, "/readyz?role=leader").await.map(|r| r.0),
        Some(503)
    );
    assert_eq!(
        sample(&metrics, "leasehold_terms_started_total", &a_is),
        Some(1.0)
    );
    let (metrics, _) = wait_for(&addr_b, "B leads", Duration::from_secs(20), |m, code, h| {
        sample(m, gauge, &b_is) == Some(1.0)
            && code == 200
            && h["state"] == "leading"
            && sample(m, "leasehold_renewal_duration_seconds_count", &b_is).is_some()
    })
    .await;
    assert_eq!(
        sample(&metrics, "leasehold_terms_started_total", &b_is),
        Some(1.0)
    );
    assert!(
        sample(&metrics, "leasehold_campaign_wait_seconds_count", &b_is).is_some_and(|n| n >= 1.0),
        "B's campaign wait is recorded:\n{metrics}"
    );
    assert!(
        metrics.contains("leasehold_renewal_duration_seconds_bucket{"),
        "renewal latency is a histogram:\n{metrics}"
    );
    for name in [
        "leasehold_leader_is_leader",
        "leasehold_terms_started_total",
        "leasehold_renewal_duration_seconds",
        "leasehold_campaign_wait_seconds",
    ] {
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "{name} has its # HELP text:\n{metrics}"
        );
    }

    // The store is back for A: healthy again, following.
    proxy.heal();
    wait_for(
        &addr_a,
        "A reaches the store again",
        Duration::from_secs(20),
        |m, code, h| sample(m, gauge, &a_is) == Some(0.0) && code == 200 && h["store"] == "ok",
    )
    .await;
    assert_eq!(get(&addr_a, "/nothing").await.map(|r| r.0), Some(404));

    for (child, who) in [(&mut a, "A"), (&mut b, "B")] {
        signal(child, Signal::SIGTERM);
        wait_exit(child, Duration::from_secs(10), who).await;
    }
    let mut stderr = String::new();
    a.stderr
        .take()
        .expect("A's stderr")
        .read_to_string(&mut stderr)
        .await
        .expect("read A's stderr");
    assert!(
        stderr.contains("WARN") && stderr.contains("election=m") && stderr.contains("candidate=A"),
        "without RUST_LOG A's store errors show, naming election and candidate:\n{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes when stderr is not a terminal:\n{stderr}"
    );
}
