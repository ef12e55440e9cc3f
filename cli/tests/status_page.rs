//! The status page of `leasehold serve` in a real browser: headless Chromium
//! (Debian's `chromium`) driven by playwright-core (both installed by
//! `bash scripts/setup`). Two sidecars on a real etcd; the page of B's shows
//! A leading, then, after A resigns and without a reload, B leading: it
//! updates itself from `/events`. Screenshots are saved under the target
//! directory (`target/tmp/status-page-{before,after}.png`), and every request
//! the page made is to its own sidecar (no external assets).
#![cfg(feature = "full")]

#[allow(dead_code)]
mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{cli, free_addr, signal, wait_exit};
use leasehold_integration_tests::{EtcdNode, build_dir, unique_name};
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

fn serve(store: &str, id: &str, listen: &str) -> Child {
    cli()
        .args(["--store", store, "serve", "--name", "page", "--id", id])
        .args([
            "--ttl",
            "4s",
            "--value",
            &format!("http://{id}.example:8080"),
        ])
        .args(["--listen", listen])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start leasehold serve")
}

/// Waits until `addr`'s /status says `state` (curl, every 100 ms, 30 s).
async fn wait_state(addr: &str, state: &str) {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", &format!("http://{addr}/status")])
            .output()
            .await
            .expect("run curl (install: apt-get install -y curl)");
        if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout)
            && v["state"] == state
        {
            return;
        }
        sleep(Duration::from_millis(100)).await;
    }
    panic!("{addr} did not reach state {state} within 30s");
}

/// playwright-core's folder, as scripts/setup installs it.
fn playwright_modules() -> PathBuf {
    let modules = build_dir().join("node").join("node_modules");
    assert!(
        modules.join("playwright-core").exists()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "the status page test needs Chromium and playwright-core: run `bash scripts/setup` (apt-get install -y chromium nodejs npm; npm install playwright-core in .build/node)"
    );
    modules
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_updates_itself_in_chromium() {
    let modules = playwright_modules();
    let etcd = EtcdNode::start()
        .await
        .expect("start etcd (install: bash scripts/setup)");
    let prefix = unique_name("/page");
    let store = format!("etcd://{}?prefix={prefix}", etcd.client_addr());
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut a = serve(&store, "A", &addr_a);
    wait_state(&addr_a, "leading").await;
    let mut b = serve(&store, "B", &addr_b);
    wait_state(&addr_b, "following").await;

    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for shot in ["status-page-before.png", "status-page-after.png"] {
        let _ = std::fs::remove_file(out_dir.join(shot));
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/status_page.cjs");
    let run = Command::new("node")
        .arg(&script)
        .arg(format!("http://{addr_b}/"))
        .arg(format!("http://{addr_a}/resign"))
        .arg(&out_dir)
        .env("NODE_PATH", &modules)
        .kill_on_drop(true)
        .output();
    let out = timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser run did not finish within 120s")
        .expect("run node (install: bash scripts/setup)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the browser run failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the browser run printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });

    let before = &report["before"];
    assert_eq!(before["leader"], "A", "{report:#}");
    assert_eq!(before["election"], "page", "{report:#}");
    assert_eq!(before["state"], "following", "{report:#}");
    assert_eq!(before["live"], "live", "{report:#}");
    assert_eq!(report["resign"]["status"], 200, "{report:#}");
    let after = &report["after"];
    assert_eq!(after["leader"], "B", "{report:#}");
    assert_eq!(after["state"], "leading", "{report:#}");
    assert_ne!(after["token"], "–", "B's token shows: {report:#}");
    let timeline: Vec<&str> = after["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        timeline.first().is_some_and(|t| t.starts_with("B · token")),
        "the newest term first: {timeline:?}"
    );
    assert!(
        timeline.iter().any(|t| t.starts_with("A · token")),
        "A's term is in the timeline: {timeline:?}"
    );
    assert_eq!(
        report["errors"],
        serde_json::json!([]),
        "no script errors: {report:#}"
    );
    // One page load (it updated itself), and nothing but its own sidecar.
    let requests: Vec<&str> = report["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let origin = format!("http://{addr_b}/");
    assert!(
        requests.iter().all(|u| u.starts_with(&origin)),
        "every request to the sidecar itself: {requests:?}"
    );
    assert_eq!(
        requests.iter().filter(|u| **u == origin).count(),
        1,
        "the page was loaded once: {requests:?}"
    );
    assert!(
        requests.iter().any(|u| u.ends_with("/events")),
        "{requests:?}"
    );
    for shot in ["status-page-before.png", "status-page-after.png"] {
        let path = out_dir.join(shot);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is a PNG",
            path.display()
        );
        println!("screenshot: {}", path.display());
    }

    for (child, who) in [(&mut a, "A"), (&mut b, "B")] {
        signal(child, Signal::SIGTERM);
        let status = wait_exit(child, Duration::from_secs(15), who).await;
        assert!(status.success(), "{who}: {status}");
    }
}
