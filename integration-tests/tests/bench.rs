//! A smoke run of the benchmark program (src/bin/bench.rs) with tiny counts
//! on every backend (MariaDB and PostgreSQL included): it runs to the end, prints its tables, writes every
//! figure (each present and a finite number), and leaves no process behind.
//! It asserts nothing about the figures' sizes: they are measurements.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Figures every backend reports.
const FIGURES: &[&str] = &[
    "acquire_p50_ms",
    "acquire_p99_ms",
    "handover_p50_ms",
    "handover_p99_ms",
    "failover_ttl_s",
    "failover_ratio_min",
    "failover_ratio_p50",
    "failover_ratio_max",
    "idle_leader_store_rps",
    "idle_waiter_store_rps",
    "herd_waiters",
    "herd_store_requests_per_handover",
    "herd_watch_events_per_handover",
    "locks",
    "locks_acquire_all_s",
    "locks_store_rps",
    "locks_rss_kib_per_lock",
    "locks_acquire_cpu_ms_per_lock",
    "locks_cpu_us_per_s_per_lock",
    "locks_lost_while_held",
    "locks_release_failures",
];

/// Figures a backend does not measure (the program writes them as not a
/// number): PostgreSQL's NOTIFY deliveries are not counted.
const NOT_MEASURED: &[(&str, &str)] = &[("postgres", "herd_watch_events_per_handover")];

/// Figures only etcd reports (its client-side counters).
const ETCD_FIGURES: &[&str] = &[
    "idle_leader_client_rps",
    "idle_waiter_client_rps",
    "locks_client_rps",
];

/// Running, and not a zombie waiting to be reaped.
fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[test]
fn bench_smoke_run_reports_every_figure_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("figures.json");
    let stdout_path = dir.path().join("stdout");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args([
            "--backends",
            "etcd,zookeeper,gcs,mysql,postgres",
            "--waiters",
            "3",
            "--locks",
            "20",
            "--rounds",
            "2",
            "--failover-rounds",
            "1",
            "--herd-rounds",
            "1",
            "--window",
            "1",
            "--ttl",
            // Cloud Storage needs a renewal interval (ttl/4) of 1 s or more.
            "4",
            "--json",
        ])
        .arg(&json)
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Bounded: the run takes about a minute; kill it by its pid after five.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the benchmark's smoke run did not end within 300 s (killed)");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    assert!(
        status.success(),
        "bench failed ({status}); stdout:\n{stdout}"
    );
    for heading in [
        "### Latency",
        "### Crash failover",
        "### Idle traffic",
        "### Handover with",
        "elections held by one process",
    ] {
        assert!(
            stdout.contains(heading),
            "no table {heading:?} in:\n{stdout}"
        );
    }

    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for backend in ["etcd", "zookeeper", "gcs", "mysql", "postgres"] {
        let figures = &doc["backends"][backend];
        let expected = FIGURES
            .iter()
            .chain(if backend == "etcd" { ETCD_FIGURES } else { &[] });
        for name in expected {
            if NOT_MEASURED.contains(&(backend, *name)) {
                continue;
            }
            let value = figures[*name].as_f64();
            assert!(
                value.is_some_and(f64::is_finite),
                "{backend}: figure {name} is {:?}, not a finite number; all: {figures}",
                figures[*name]
            );
        }
    }
    let pids: Vec<u64> = doc["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    // Five stores and two candidate processes per backend.
    assert!(pids.len() >= 15, "pids recorded: {pids:?}");
    let left: Vec<u64> = pids.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
}
