//! `leasehold serve` against real etcd and ZooKeeper, read with curl (a real
//! HTTP client): two sidecars through a resign (the lease changes hands), a
//! store outage (the leader steps down at its deadline; followers stay
//! ready and live, client-go's meaning), the store's return (someone leads
//! again), and a clean stop. One more curl follows `/events` throughout and
//! must see every term.
//!
//! The stores are started by the integration harness on free loopback ports
//! (install them with `bash scripts/setup`; curl: `apt-get install -y curl`).
#![cfg(feature = "full")]

#[allow(dead_code)]
mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{cli, free_addr, signal, wait_exit};
use leasehold_integration_tests::{EtcdNode, ZkServer, create_zk_path, unique_name};
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

/// One request with curl: the status code and the body; `None` when nothing
/// answered. `args` are curl's (method, headers).
async fn curl(url: &str, args: &[&str]) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .kill_on_drop(true)
        .output();
    let out = match timeout(Duration::from_secs(10), out).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => panic!("cannot run curl ({e}); install it: apt-get install -y curl"),
        Err(_) => return None,
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    match code.trim().parse() {
        Ok(0) | Err(_) => None,
        Ok(c) => Some((c, body.to_owned())),
    }
}

/// GET `path` on `addr` as JSON; `None` when nothing answered.
async fn get_json(addr: &str, path: &str) -> Option<(u16, Value)> {
    let (code, body) = curl(&format!("http://{addr}{path}"), &[]).await?;
    let v = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{path} on {addr} is not JSON ({e}): {body}"));
    Some((code, v))
}

/// Polls `/status` of `addr` every 100 ms until `ok` holds; panics with the
/// last answer if it has not within `within`.
async fn wait_status(
    addr: &str,
    what: &str,
    within: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let until = Instant::now() + within;
    let mut last = None;
    while Instant::now() < until {
        if let Some((200, v)) = get_json(addr, "/status").await {
            if ok(&v) {
                return v;
            }
            last = Some(v);
        }
        sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{what}: not seen within {within:?}; last /status of {addr}: {last:#?}\n{}",
        logs()
    );
}

/// Where the sidecars of this test binary write their stderr.
static LOGS: Mutex<Vec<std::path::PathBuf>> = Mutex::new(Vec::new());

/// Every sidecar's stderr so far, for failure messages.
fn logs() -> String {
    let mut text = String::new();
    for p in LOGS.lock().unwrap().iter() {
        text.push_str(&format!(
            "----- {} -----\n{}\n",
            p.display(),
            std::fs::read_to_string(p).unwrap_or_default()
        ));
    }
    text
}

/// The status code of GET `path` (0 when nothing answered).
async fn code(addr: &str, path: &str) -> u16 {
    curl(&format!("http://{addr}{path}"), &[])
        .await
        .map_or(0, |r| r.0)
}

fn serve(store: &str, name: &str, id: &str, listen: &str) -> Child {
    // Under the target directory, not /tmp: kept for a failure's message,
    // named by the test process's pid.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-logs");
    std::fs::create_dir_all(&dir).expect("create target/tmp/serve-logs");
    let log = dir.join(format!(
        "leasehold-serve-{}-{id}-{}.log",
        std::process::id(),
        listen.replace([':', '.'], "-")
    ));
    let file = std::fs::File::create(&log).expect("create the sidecar's log");
    LOGS.lock().unwrap().push(log);
    cli()
        .args(["--store", store, "serve", "--name", name, "--id", id])
        .args(["--ttl", "4s", "--listen", listen])
        .stdout(Stdio::piped())
        .stderr(file)
        .spawn()
        .expect("start leasehold serve")
}

/// `curl -N` on `/events`: the lines it printed so far, and the process.
fn follow_events(addr: &str) -> (Arc<Mutex<Vec<String>>>, Child) {
    let mut child = Command::new("curl")
        .args(["-sN", "--max-time", "300", &format!("http://{addr}/events")])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run curl (install: apt-get install -y curl)");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().expect("curl's stdout");
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut r = BufReader::new(out).lines();
        while let Ok(Some(l)) = r.next_line().await {
            sink.lock().unwrap().push(l);
        }
    });
    (lines, child)
}

/// The SSE events `(name, data)` in `lines`.
fn sse_events(lines: &[String]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut name = None;
    for l in lines {
        if let Some(n) = l.strip_prefix("event: ") {
            name = Some(n.to_owned());
        } else if let Some(d) = l.strip_prefix("data: ") {
            let v = serde_json::from_str(d)
                .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {d}"));
            out.push((name.take().unwrap_or_default(), v));
        }
    }
    out
}

/// The scenario, on any store: `pause` / `resume` make the store stop
/// answering and answer again.
async fn sidecars_through_a_resign_and_an_outage(
    store: &str,
    name: &str,
    pause: impl Fn(),
    resume: impl Fn(),
) {
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut a = serve(store, name, "A", &addr_a);
    let first = wait_status(&addr_a, "A leads", Duration::from_secs(30), |s| {
        s["state"] == "leading"
    })
    .await;
    let token_a = first["token"].as_u64().expect("A's token");
    let mut b = serve(store, name, "B", &addr_b);
    wait_status(&addr_b, "B follows A", Duration::from_secs(30), |s| {
        s["state"] == "following" && s["leader"]["name"] == "A"
    })
    .await;
    let (events, mut events_curl) = follow_events(&addr_b);

    // The leader-elector shape plus the token, on both sidecars.
    for addr in [&addr_a, &addr_b] {
        let (code, leader) = get_json(addr, "/leader").await.expect("/leader answers");
        assert_eq!(code, 200);
        assert_eq!(leader["name"], "A", "{leader}");
        assert_eq!(leader["token"].as_u64(), Some(token_a), "{leader}");
    }
    assert_eq!(code(&addr_a, "/readyz?role=leader").await, 200);
    assert_eq!(code(&addr_b, "/readyz?role=leader").await, 503);

    // A resign from a follower is refused; from the leader it hands over.
    let (c, body) = curl(&format!("http://{addr_b}/resign"), &["-X", "POST"])
        .await
        .expect("B answers /resign");
    assert_eq!(c, 409, "{body}");
    let (c, body) = curl(&format!("http://{addr_a}/resign"), &["-X", "POST"])
        .await
        .expect("A answers /resign");
    assert_eq!(c, 200, "{body}");
    let resigned: Value = serde_json::from_str(&body).expect("resign answers JSON");
    assert_eq!(resigned["resigned"], true, "{resigned}");
    assert_eq!(resigned["token"].as_u64(), Some(token_a), "{resigned}");
    let b_leads = wait_status(
        &addr_b,
        "B leads after A resigned",
        Duration::from_secs(30),
        |s| s["state"] == "leading",
    )
    .await;
    let token_b = b_leads["token"].as_u64().expect("B's token");
    assert!(
        token_b > token_a,
        "tokens increase: {token_a} then {token_b}"
    );
    wait_status(&addr_a, "A sees B lead", Duration::from_secs(30), |s| {
        s["leader"]["name"] == "B" && s["state"] != "leading"
    })
    .await;

    // The outage: the leader steps down at its deadline and stays live (it
    // is not stuck); every sidecar stays live and ready.
    pause();
    let down = wait_status(
        &addr_b,
        "B steps down, store unreachable",
        Duration::from_secs(30),
        |s| s["state"] == "following",
    )
    .await;
    assert_eq!(down["live"], true, "{down}");
    for addr in [&addr_a, &addr_b] {
        for path in ["/healthz", "/readyz"] {
            let (c, body) = get_json(addr, path)
                .await
                .expect("the sidecar answers during the outage");
            assert_eq!(c, 200, "{path} on {addr} during the outage: {body}");
        }
        assert_eq!(
            code(addr, "/readyz?role=leader").await,
            503,
            "nobody can lead during the outage"
        );
    }

    // The store is back: someone leads again, and both sidecars say who.
    resume();
    // (During the outage an observer keeps the last leader it saw: wait for
    // a term after B's.)
    let again = wait_status(
        &addr_a,
        "a leader after the outage",
        Duration::from_secs(40),
        |s| s["leader"]["name"].is_string() && s["leader"]["token"].as_u64() > Some(token_b),
    )
    .await;
    let who = again["leader"]["name"].as_str().unwrap().to_owned();
    let token = again["leader"]["token"].as_u64();
    let leader_addr = if who == "A" { &addr_a } else { &addr_b };
    wait_status(
        leader_addr,
        "the new leader says it leads",
        Duration::from_secs(30),
        |s| s["state"] == "leading" && s["token"].as_u64() == token,
    )
    .await;

    // B's event stream saw B elected with its token, and B's term end.
    let seen = sse_events(&events.lock().unwrap());
    assert_eq!(
        seen.first().map(|e| e.0.as_str()),
        Some("status"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(n, v)| n == "elected" && v["token"].as_u64() == Some(token_b)),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|(n, v)| n == "lost"
            && v["token"].as_u64() == Some(token_b)
            && v["reason"] == "unreachable"),
        "B's term ended unreachable during the outage: {seen:?}"
    );
    assert!(
        seen.iter().any(|(n, v)| n == "leader" && v["name"] == "B"),
        "{seen:?}"
    );

    // A clean stop: both exit 0 at SIGTERM; the event stream ends with them.
    for (child, who) in [(&mut a, "A"), (&mut b, "B")] {
        signal(child, Signal::SIGTERM);
        let status = wait_exit(child, Duration::from_secs(15), who).await;
        assert!(
            status.success(),
            "{who} exited with {status}; stderr:\n{}",
            logs()
        );
    }
    let curl_status = wait_exit(&mut events_curl, Duration::from_secs(10), "curl on /events").await;
    assert!(
        curl_status.success(),
        "the event stream ends cleanly: {curl_status}"
    );
    let mut out = String::new();
    a.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    for line in out.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
        assert!(v["event"].is_string(), "{line}");
    }
    assert!(out.contains("\"event\":\"elected\""), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_etcd_through_a_resign_and_an_outage() {
    let etcd = EtcdNode::start()
        .await
        .expect("start etcd (install: bash scripts/setup)");
    let prefix = unique_name("/serve");
    let store = format!("etcd://{}?prefix={prefix}", etcd.client_addr());
    sidecars_through_a_resign_and_an_outage(&store, "jobs", || etcd.pause(), || etcd.resume())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_zookeeper_through_a_resign_and_an_outage() {
    let zk = ZkServer::start()
        .await
        .expect("start ZooKeeper (install: bash scripts/setup)");
    let chroot = format!("/{}", unique_name("serve"));
    create_zk_path(&zk.connect_string(), &chroot)
        .await
        .expect("create the ZooKeeper chroot");
    let store = format!("zk://{}{chroot}/jobs?session_timeout=6s", zk.client_addr());
    sidecars_through_a_resign_and_an_outage(&store, "jobs", || zk.pause(), || zk.resume()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_serves_the_leader_and_refuses_to_resign() {
    let etcd = EtcdNode::start()
        .await
        .expect("start etcd (install: bash scripts/setup)");
    let prefix = unique_name("/serve-observe");
    let store = format!("etcd://{}?prefix={prefix}", etcd.client_addr());
    let (addr_a, addr_o) = (free_addr(), free_addr());
    let mut o = cli()
        .args([
            "--store",
            &store,
            "serve",
            "--name",
            "jobs",
            "--observe-only",
        ])
        .args(["--listen", &addr_o])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start leasehold serve --observe-only");
    wait_status(
        &addr_o,
        "the observer starts",
        Duration::from_secs(30),
        |s| s["state"] == "observing" && s["leader"]["name"].is_null(),
    )
    .await;
    let mut a = serve(&store, "jobs", "A", &addr_a);
    let v = wait_status(
        &addr_o,
        "the observer sees A",
        Duration::from_secs(30),
        |s| s["leader"]["name"] == "A",
    )
    .await;
    assert_eq!(v["terms_won"], 0, "{v}");
    let (c, body) = curl(&format!("http://{addr_o}/resign"), &["-X", "POST"])
        .await
        .expect("answer");
    assert_eq!(c, 409, "{body}");
    assert!(body.contains("observe-only"), "{body}");
    assert_eq!(code(&addr_o, "/nothing").await, 404);
    assert_eq!(code(&addr_o, "/metrics").await, 200);
    for (child, who) in [(&mut a, "A"), (&mut o, "observer")] {
        signal(child, Signal::SIGTERM);
        let status = wait_exit(child, Duration::from_secs(15), who).await;
        assert!(status.success(), "{who}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_names_the_flag_that_is_wrong() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().unwrap().to_string();
    for (args, want) in [
        (
            vec!["--listen", addr.as_str()],
            format!("--listen {addr}: cannot listen there"),
        ),
        (
            vec!["--listen", "localhost"],
            "--listen localhost: give an address and a port".to_owned(),
        ),
    ] {
        let out = cli()
            .args(["--store", "memory://x", "serve", "--name", "x"])
            .args(&args)
            .output()
            .await
            .expect("run leasehold serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(&want), "want {want:?} in:\n{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("token");
    std::fs::write(&empty, "\n").unwrap();
    let out = cli()
        .args([
            "--store",
            "memory://x",
            "serve",
            "--name",
            "x",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--resign-token-file")
        .arg(&empty)
        .output()
        .await
        .expect("run leasehold serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--resign-token-file") && err.contains("empty"),
        "{err}"
    );
}

/// Started while the store is down: the sidecar answers at once, live but
/// not ready (it cannot say who leads yet), and stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_started_while_the_store_is_down_is_live_not_ready() {
    let dead = free_addr();
    let addr = free_addr();
    let mut s = serve(&format!("etcd://{dead}"), "down", "A", &addr);
    let until = Instant::now() + Duration::from_secs(20);
    let mut live = 0;
    // Bounded by count and time.
    while Instant::now() < until && live < 3 {
        live = code(&addr, "/healthz").await;
        if live == 200 {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(live, 200, "live while the store is down\n{}", logs());
    let (c, body) = get_json(&addr, "/readyz").await.expect("/readyz answers");
    assert_eq!(c, 503, "{body}");
    assert_eq!(body["starting"], true, "{body}");
    let (_, status) = get_json(&addr, "/status").await.expect("/status answers");
    assert_eq!(status["state"], "starting", "{status}");
    signal(&s, Signal::SIGTERM);
    let status = wait_exit(&mut s, Duration::from_secs(15), "serve").await;
    assert!(status.success(), "{status}\n{}", logs());
}
