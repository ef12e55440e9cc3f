//! `leasehold run -n N` (a counting semaphore, as `consul lock -n N`) against
//! real stores: with N = 2 and three candidates that each run a short command
//! again and again (`--forever`), never three commands at once, even when a
//! holder is killed with SIGKILL; and both permits are used.
//!
//! Each command logs `start WHO PID NS`, then `alive WHO PID NS` every 20 ms,
//! then `stop WHO PID NS`, with `time.monotonic_ns()` (CLOCK_MONOTONIC, one
//! clock for every process of this host); the overlap is read off that log.
// etcd and ZooKeeper: in the `full` feature (the default).
#![cfg(feature = "full")]

#[allow(dead_code)] // not every helper of the shared module is used here
mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use common::{CommandLog, cli, signal, wait_exit};
use leasehold_integration_tests::{EtcdNode, ZkServer, unique_name};
use nix::sys::signal::Signal;
use tokio::process::Child;
use tokio::time::{Instant, sleep};

/// The command: about 0.6 s of work, logged, then exit (so the permits change
/// hands many times).
const WORK: &str = r#"
import os, sys, time
log, who = sys.argv[1], sys.argv[2]
with open(log, "a", buffering=1) as f:
    f.write(f"start {who} {os.getpid()} {time.monotonic_ns()}\n")
    for _ in range(30):
        f.write(f"alive {who} {os.getpid()} {time.monotonic_ns()}\n")
        time.sleep(0.02)
    f.write(f"stop {who} {os.getpid()} {time.monotonic_ns()}\n")
"#;

fn spawn(store: &str, name: &str, who: &str, log: &CommandLog, work: &std::path::Path) -> Child {
    cli()
        .args(["--store", store, "run", "--name", name, "--id", who])
        .args(["-n", "2", "--forever"])
        .arg("--")
        .args(["python3", &work.display().to_string()])
        .arg(log.path())
        .arg(who)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start leasehold run -n 2")
}

/// Each command run (by pid): from its `start` to its last line.
fn spans(log: &CommandLog) -> Vec<(u64, u64, String)> {
    let mut by_pid: BTreeMap<i32, (u64, u64, String)> = BTreeMap::new();
    for l in log.lines() {
        let e = by_pid
            .entry(l.pid)
            .or_insert((l.nanos, l.nanos, l.who.clone()));
        e.0 = e.0.min(l.nanos);
        e.1 = e.1.max(l.nanos);
    }
    by_pid.into_values().collect()
}

/// The most commands running at one instant, and when.
fn most_at_once(spans: &[(u64, u64, String)]) -> (usize, u64) {
    let mut points: Vec<(u64, i64)> = Vec::new();
    for (a, b, _) in spans {
        points.push((*a, 1));
        points.push((*b, -1));
    }
    // At one instant a start after an end: touching is not overlapping.
    points.sort_by_key(|(t, d)| (*t, *d));
    let (mut live, mut most, mut when) = (0i64, 0i64, 0u64);
    for (t, d) in points {
        live += d;
        if live > most {
            most = live;
            when = t;
        }
    }
    (most as usize, when)
}

async fn never_three_at_once(store: &str, what: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = CommandLog::new(dir.path().join("work.log"));
    let work = dir.path().join("work.py");
    std::fs::write(&work, WORK).expect("write work.py");
    let name = unique_name("sem");
    let mut runs: Vec<Child> = ["a", "b", "c"]
        .iter()
        .map(|who| spawn(store, &name, who, &log, &work))
        .collect();
    // Let the permits change hands for a while (bounded by time).
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        sleep(Duration::from_millis(200)).await;
    }
    // A holder that vanishes: SIGKILL the supervisor of a running command.
    // Its command goes with it (the guard), and its permit when the store
    // ends its session; then a fresh candidate takes its place.
    // The candidate whose command logged last is running one now.
    let running = spans(&log)
        .into_iter()
        .max_by_key(|(_, end, _)| *end)
        .map(|(_, _, who)| who)
        .unwrap_or_else(|| panic!("{what}: no command ran; log:\n{}", log.text()));
    let slot = ["a", "b", "c"]
        .iter()
        .position(|w| *w == running)
        .expect("a known candidate");
    signal(&runs[slot], Signal::SIGKILL);
    let _ = wait_exit(&mut runs[slot], Duration::from_secs(10), "the killed run").await;
    let fresh = format!("{running}2");
    runs[slot] = spawn(store, &name, &fresh, &log, &work);
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        sleep(Duration::from_millis(200)).await;
    }
    for r in &runs {
        signal(r, Signal::SIGTERM);
    }
    for r in &mut runs {
        let _ = wait_exit(r, Duration::from_secs(15), "leasehold run -n 2").await;
    }
    let spans = spans(&log);
    let (most, when) = most_at_once(&spans);
    assert!(
        most <= 2,
        "{what}: UNSAFE: {most} commands ran at once (at {when} ns) with 2 permits; log:\n{}",
        log.text()
    );
    assert_eq!(
        most,
        2,
        "{what}: two permits, but never two commands at once; log:\n{}",
        log.text()
    );
    for who in ["a", "b", "c", &fresh] {
        assert!(
            spans.iter().any(|(_, _, w)| w == who),
            "{what}: {who}'s command never ran; log:\n{}",
            log.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_n_2_on_etcd_never_runs_three_commands_at_once() {
    let etcd = EtcdNode::start()
        .await
        .expect("start etcd (install: bash scripts/setup)");
    let store = format!("etcd://{}?ttl=2s", etcd.client_addr());
    never_three_at_once(&store, "etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_n_2_on_zookeeper_never_runs_three_commands_at_once() {
    let zk = ZkServer::start()
        .await
        .expect("start ZooKeeper (install: bash scripts/setup)");
    let store = format!("zk://{}?session_timeout=3s", zk.client_addr());
    never_three_at_once(&store, "zookeeper").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_n_on_a_record_store_says_it_has_no_semaphore() {
    let out = cli()
        // Cloud Storage, on an address nothing listens on: refused before
        // any request.
        .args([
            "--store",
            "gs://bucket/lock?endpoint=http://127.0.0.1:1&credentials=none",
        ])
        .args(["run", "--id", "a"])
        .args(["-n", "2", "--", "true"])
        .output()
        .await
        .expect("run leasehold");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("-n 2") && stderr.contains("no counting semaphore"),
        "the error must name -n and say why: {stderr}"
    );
}
