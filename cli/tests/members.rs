//! `leasehold members`: the live candidates of an election, listed from
//! real etcd and ZooKeeper while `leasehold campaign` processes take part.
//! The list matches the processes alive, in the order they joined, the
//! first leading; a candidate killed with SIGKILL (no release) drops out
//! once its session ends. `members --watch --json` follows the same
//! changes as they happen, one JSON line per change. Record stores say in
//! words that they keep no list.

// The command log is for `run`'s tests; these use the rest.
#[allow(dead_code)]
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{cli, signal, wait_exit};
use leasehold_integration_tests::{EtcdNode, ZkServer, create_zk_path, unique_name};
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tokio::time::{Instant, sleep, timeout};

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

/// A running `members --watch --json` and its output lines.
struct Watch {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every list printed so far (ids in order, the leader's flag per id).
    seen: Vec<Vec<(String, bool)>>,
}

impl Watch {
    fn start(store: &str, name: &str) -> Watch {
        let mut child = cli()
            .args(["--store", store, "members", "--name", name])
            .args(["--watch", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start leasehold members --watch");
        let stdout = child.stdout.take().expect("the watch's stdout");
        Watch {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        }
    }

    /// Read printed lists until one lists exactly `want` (the first one
    /// leading); panics after `within` with what was printed.
    async fn until(&mut self, want: &[&str], within: Duration) -> Duration {
        let started = Instant::now();
        for _ in 0..1000 {
            let left = within.saturating_sub(started.elapsed());
            let line = match timeout(left, self.lines.next_line()).await {
                Ok(Ok(Some(line))) => line,
                Ok(Ok(None)) => panic!("members --watch ended; printed {:?}", self.seen),
                Ok(Err(e)) => panic!("reading members --watch: {e}"),
                Err(_) => break,
            };
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("members --watch printed a line that is not JSON ({e}): {line}")
            });
            let list: Vec<(String, bool)> = v["members"]
                .as_array()
                .unwrap_or_else(|| panic!("no members array: {line}"))
                .iter()
                .map(|m| {
                    (
                        m["id"].as_str().expect("id").to_owned(),
                        m["leader"].as_bool().expect("leader"),
                    )
                })
                .collect();
            let ids: Vec<&str> = list.iter().map(|m| m.0.as_str()).collect();
            let done = ids == want;
            if done {
                for (i, (_, leader)) in list.iter().enumerate() {
                    assert_eq!(*leader, i == 0, "only the first leads: {line}");
                }
            }
            self.seen.push(list);
            if done {
                return started.elapsed();
            }
        }
        panic!(
            "members --watch never printed {want:?} within {within:?}; printed {:?}",
            self.seen
        );
    }
}

/// `members --watch --json` follows three candidate processes: each one
/// joining, one killed with SIGKILL dropping out once its session ends
/// (within its ttl and the store's expiry), the leader resigning and the
/// next leading, a fourth joining; each list equals the processes alive.
/// Two lists in a row are never equal (repeats are dropped), and SIGINT
/// ends the watch with exit 0.
async fn watched_members_follow_the_processes(store: &str, name: &str, ttl: Duration) {
    let mut watch = Watch::start(store, name);
    watch.until(&[], Duration::from_secs(20)).await;
    let mut alive: Vec<(String, Child)> = Vec::new();
    for id in ["c1", "c2", "c3"] {
        alive.push((id.to_owned(), campaign(store, name, id)));
        let want: Vec<&str> = alive.iter().map(|(id, _)| id.as_str()).collect();
        watch.until(&want, Duration::from_secs(20)).await;
    }

    let (_, mut c2) = alive.remove(1);
    let killed = Instant::now();
    signal(&c2, Signal::SIGKILL);
    wait_exit(&mut c2, Duration::from_secs(5), "the killed candidate").await;
    // Its session ends within its ttl (ZooKeeper: the session timeout)
    // after its last keep-alive; a few seconds on top for the store.
    watch
        .until(&["c1", "c3"], ttl * 2 + Duration::from_secs(5))
        .await;
    eprintln!(
        "{store}: members --watch showed the killed candidate gone {:?} after SIGKILL",
        killed.elapsed()
    );

    let (_, mut c1) = alive.remove(0);
    signal(&c1, Signal::SIGTERM);
    wait_exit(&mut c1, Duration::from_secs(10), "c1 on SIGTERM").await;
    watch.until(&["c3"], Duration::from_secs(10)).await;

    alive.push(("c4".to_owned(), campaign(store, name, "c4")));
    watch.until(&["c3", "c4"], Duration::from_secs(20)).await;
    for (id, mut child) in alive {
        signal(&child, Signal::SIGTERM);
        wait_exit(&mut child, Duration::from_secs(10), &id).await;
    }
    watch.until(&[], Duration::from_secs(10)).await;
    for pair in watch.seen.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "a list printed twice in a row: {:?}",
            watch.seen
        );
    }
    signal(&watch.child, Signal::SIGINT);
    let status = wait_exit(
        &mut watch.child,
        Duration::from_secs(10),
        "members --watch on SIGINT",
    )
    .await;
    assert!(
        status.success(),
        "members --watch exits 0 on SIGINT: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_members_on_etcd_follow_the_processes() {
    let etcd = EtcdNode::start()
        .await
        .expect("start etcd (install: bash scripts/setup)");
    let prefix = unique_name("/members-watch");
    let store = format!("etcd://{}?prefix={prefix}", etcd.client_addr());
    watched_members_follow_the_processes(&store, "jobs", Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_members_on_zookeeper_follow_the_processes() {
    let zk = ZkServer::start()
        .await
        .expect("start ZooKeeper (install: bash scripts/setup)");
    let chroot = format!("/{}", unique_name("members-watch"));
    create_zk_path(&zk.connect_string(), &chroot)
        .await
        .expect("create the ZooKeeper chroot");
    let store = format!("zk://{}{chroot}/jobs?session_timeout=6s", zk.client_addr());
    watched_members_follow_the_processes(&store, "jobs", Duration::from_secs(6)).await;
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

/// `members --watch` on a record store answers as `members` does, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_members_on_a_record_store_says_it_keeps_no_list() {
    let out = cli()
        .args(["--store", "postgres://app@127.0.0.1:1/app/jobs"])
        .args(["members", "--name", "jobs", "--watch", "--json"])
        .output()
        .await
        .expect("leasehold members --watch");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(out.stdout.is_empty());
    assert!(
        err.contains("the postgres store cannot list the candidates of \"jobs\"")
            && err.contains("leasehold leader --name jobs"),
        "{err}"
    );
}
