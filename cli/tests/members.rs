//! `leasehold members`: the live candidates of an election, listed from
//! real etcd and ZooKeeper while `leasehold campaign` processes take part.
//! The list matches the processes alive, in the order they joined, the
//! first leading; a candidate killed with SIGKILL (no release) drops out
//! once its session ends. Record stores say in words that they keep no
//! list.

// The command log is for `run`'s tests; these use the rest.
#[allow(dead_code)]
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{cli, signal, wait_exit};
use leasehold_integration_tests::{EtcdNode, ZkServer, create_zk_path, unique_name};
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::process::Child;
use tokio::time::{Instant, sleep};

/// A `leasehold campaign` as candidate `id`, publishing `value-<id>`.
fn campaign(store: &str, name: &str, id: &str) -> Child {
    cli()
        .args(["--store", store, "campaign", "--name", name, "--id", id])
        .args(["--value", &format!("value-{id}"), "--ttl", "3s"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start leasehold campaign")
}

/// `members --json`: (id, value, token, leader) per candidate, in order.
async fn members(store: &str, name: &str) -> Vec<(String, String, u64, bool)> {
    let out = cli()
        .args(["--store", store, "members", "--name", name, "--json"])
        .output()
        .await
        .expect("leasehold members");
    assert!(
        out.status.success(),
        "members failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "members --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(v["election"], name, "{v}");
    v["members"]
        .as_array()
        .expect("a members array")
        .iter()
        .map(|m| {
            (
                m["id"].as_str().expect("id").to_owned(),
                m["value"].as_str().expect("value").to_owned(),
                m["token"].as_u64().expect("token"),
                m["leader"].as_bool().expect("leader"),
            )
        })
        .collect()
}

/// The ids `members` lists, polled every 100 ms until they are `want`;
/// panics after `within` with the last list seen.
async fn wait_for_ids(store: &str, name: &str, want: &[&str], within: Duration) -> Duration {
    let started = Instant::now();
    let mut last = Vec::new();
    for _ in 0..1000 {
        last = members(store, name).await;
        let ids: Vec<&str> = last.iter().map(|m| m.0.as_str()).collect();
        if ids == want {
            return started.elapsed();
        }
        if started.elapsed() > within {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    panic!("members never became {want:?} within {within:?}; last seen {last:?}");
}

/// Three candidates join one after another; `members` lists them in that
/// order, values and tokens with them, the first leading (and `leader`
/// agrees). One is killed with SIGKILL: it stays listed while its session
/// lives and drops out once the store ends it. The text form shows the same.
async fn members_match_the_processes_alive(store: &str, name: &str) {
    let mut alive: Vec<(String, Child)> = Vec::new();
    for id in ["c1", "c2", "c3"] {
        alive.push((id.to_owned(), campaign(store, name, id)));
        let want: Vec<&str> = alive.iter().map(|(id, _)| id.as_str()).collect();
        wait_for_ids(store, name, &want, Duration::from_secs(20)).await;
    }
    let list = members(store, name).await;
    for (i, (id, value, token, leader)) in list.iter().enumerate() {
        assert_eq!(value, &format!("value-{id}"), "{list:?}");
        assert_eq!(*leader, i == 0, "{list:?}");
        assert!(*token > 0, "{list:?}");
    }
    let out = cli()
        .args(["--store", store, "leader", "--name", name])
        .output()
        .await
        .expect("leasehold leader");
    let leader: Value = serde_json::from_slice(&out.stdout).expect("leader's JSON");
    assert_eq!(leader["leader"], "c1");
    assert_eq!(leader["token"].as_u64(), Some(list[0].2));

    let text = cli()
        .args(["--store", store, "members", "--name", name])
        .output()
        .await
        .expect("leasehold members");
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[0].contains("3 live candidates"), "{text}");
    assert!(lines[2].starts_with("1  leader   c1"), "{text}");
    assert!(lines[3].starts_with("2  waiting  c2"), "{text}");
    assert!(lines[4].ends_with("value-c3"), "{text}");

    // c2 dies without a word: listed until its session ends, then gone.
    let (_, mut c2) = alive.remove(1);
    let killed = Instant::now();
    signal(&c2, Signal::SIGKILL);
    wait_exit(&mut c2, Duration::from_secs(5), "the killed candidate").await;
    let gone = wait_for_ids(store, name, &["c1", "c3"], Duration::from_secs(20)).await;
    eprintln!(
        "{store}: the killed candidate dropped out of the list {:?} after SIGKILL",
        killed.elapsed().max(gone)
    );

    // The leader resigns (SIGTERM): c3 leads, alone in the list.
    let (_, mut c1) = alive.remove(0);
    signal(&c1, Signal::SIGTERM);
    wait_exit(&mut c1, Duration::from_secs(10), "c1 on SIGTERM").await;
    wait_for_ids(store, name, &["c3"], Duration::from_secs(10)).await;
    assert!(members(store, name).await[0].3, "c3 leads");
    let (_, mut c3) = alive.remove(0);
    signal(&c3, Signal::SIGTERM);
    wait_exit(&mut c3, Duration::from_secs(10), "c3 on SIGTERM").await;
    wait_for_ids(store, name, &[], Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_etcd_match_the_processes_alive() {
    let etcd = EtcdNode::start()
        .await
        .expect("start etcd (install: bash scripts/setup)");
    let prefix = unique_name("/members");
    let store = format!("etcd://{}?prefix={prefix}", etcd.client_addr());
    members_match_the_processes_alive(&store, "jobs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_zookeeper_match_the_processes_alive() {
    let zk = ZkServer::start()
        .await
        .expect("start ZooKeeper (install: bash scripts/setup)");
    let chroot = format!("/{}", unique_name("members"));
    create_zk_path(&zk.connect_string(), &chroot)
        .await
        .expect("create the ZooKeeper chroot");
    // A session the test server grants (at most 20 x its tickTime), for
    // `members` as for the candidates (default ttl 15 s needs 18.5 s).
    let store = format!("zk://{}{chroot}/jobs?session_timeout=6s", zk.client_addr());
    members_match_the_processes_alive(&store, "jobs").await;
}

/// A record store keeps one record naming the holder: `members` says so in
/// the operator's words, points at `leader`, and exits 2 without a panic.
/// The PostgreSQL backend connects lazily, and the list is refused before
/// any statement, so no server is needed for the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_a_record_store_says_it_keeps_no_list() {
    let out = cli()
        .args([
            "--store",
            "postgres://app@127.0.0.1:1/app/jobs",
            "members",
            "--name",
            "jobs",
        ])
        .output()
        .await
        .expect("leasehold members");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(out.stdout.is_empty());
    assert!(
        err.contains("the postgres store cannot list the candidates of \"jobs\"")
            && err.contains("leasehold leader --name jobs")
            && err.contains("etcd and ZooKeeper"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
