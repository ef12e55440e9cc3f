//! The facade against real stores: the same example binary elects a leader
//! on etcd, ZooKeeper and Cloud Storage chosen by configuration alone, and
//! `leasehold run` stops its command before another candidate's starts.
//!
//! The stores are started by the integration harness on free loopback ports
//! (install them with `bash scripts/setup`).
// Every store: the `full` feature (the default).
#![cfg(feature = "full")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{CommandLog, cli, signal, wait_exit};
use leasehold_integration_tests::{
    EtcdNode, FakeGcs, Proxy, ZkServer, create_zk_path, unique_name,
};
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

/// The example binaries sit next to the test binaries' `deps` folder.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> folder");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: build the examples first (cargo test --all-targets does, or cargo build --examples)",
        path.display()
    );
    path
}

async fn run_config_switch(config: &Path, envs: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(example("config_switch"));
    cmd.arg(config).kill_on_drop(true);
    for v in leasehold::config::ENV_VARS {
        cmd.env_remove(v);
    }
    cmd.env_remove("STORAGE_EMULATOR_HOST");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("config_switch did not finish within 60s")
        .expect("config_switch could not start");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "config_switch failed with {}:\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_example_elects_on_every_store_chosen_by_config_alone() {
    let (etcd, zk, gcs) = tokio::join!(EtcdNode::start(), ZkServer::start(), FakeGcs::start());
    let etcd = etcd.expect("start etcd (install: bash scripts/setup)");
    let zk = zk.expect("start ZooKeeper (install: bash scripts/setup)");
    let gcs = gcs.expect("start fake-gcs-server (install: bash scripts/setup)");
    // A chroot is the operator's to create; leasehold does not.
    create_zk_path(&zk.connect_string(), "/leasehold-test")
        .await
        .expect("create the ZooKeeper chroot");
    let dir = tempfile::tempdir().expect("temp dir");
    let election = unique_name("config-switch");
    let stores = [
        (
            "etcd",
            format!(
                "[store]\nkind = \"etcd\"\nendpoints = [\"{}\"]\n",
                etcd.client_addr()
            ),
        ),
        (
            "zookeeper",
            format!(
                "[store]\nkind = \"zookeeper\"\nhosts = [\"{}\"]\nchroot = \"/leasehold-test\"\nsession_timeout = \"5s\"\n",
                zk.client_addr()
            ),
        ),
        (
            "gcs",
            format!(
                "[store]\nkind = \"gcs\"\nbucket = \"{}\"\nendpoint = \"{}\"\ncredentials = \"none\"\nprefix = \"locks\"\n",
                gcs.bucket(),
                gcs.endpoint()
            ),
        ),
    ];
    for (kind, store) in &stores {
        // Only the [store] section differs between the runs.
        let text = format!("election = \"{election}\"\nid = \"switcher\"\nttl = \"4s\"\n{store}");
        let path = dir.path().join(format!("{kind}.toml"));
        std::fs::write(&path, text).expect("write config");
        let out = run_config_switch(&path, &[]).await;
        assert!(
            out.contains(&format!("\"store\":\"{kind}\"")) && out.contains("\"store_agrees\":true"),
            "{kind}: unexpected output {out}"
        );
    }
    // The environment alone can switch the store too.
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").expect("write config");
    let url = format!("etcd://{}/{election}-env?ttl=4s&id=env", etcd.client_addr());
    let out = run_config_switch(&empty, &[("LEASEHOLD_URL", &url)]).await;
    assert!(
        out.contains("\"store\":\"etcd\"") && out.contains("\"leader\":\"env\""),
        "{out}"
    );
}

/// A `leasehold run` whose command logs `start` once and `alive` every 20 ms
/// to `log`, each line with the candidate id (from the environment leasehold
/// gives the command), the shell's pid and a nanosecond wall-clock stamp.
fn spawn_run(store: &str, id: &str, log: &CommandLog) -> Child {
    let script = format!(
        "echo \"start $LEASEHOLD_LEADER_ID $$ $(date +%s%N) $LEASEHOLD_TOKEN\" >> {log}; \
         while :; do echo \"alive $LEASEHOLD_LEADER_ID $$ $(date +%s%N)\" >> {log}; sleep 0.02; done",
        log = log.path().display()
    );
    cli()
        .args([
            "--store",
            store,
            "run",
            "--name",
            "run-handover",
            "--id",
            id,
            "--",
        ])
        .args(["sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start leasehold run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leasehold_run_stops_its_command_before_another_candidates_starts() {
    let etcd = EtcdNode::start()
        .await
        .expect("start etcd (install: bash scripts/setup)");
    let proxy = Proxy::start(etcd.client_addr()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = CommandLog::new(dir.path().join("commands.log"));
    let prefix = unique_name("/run");
    let via_proxy = format!("etcd://{}?ttl=3s&prefix={prefix}", proxy.addr());
    let direct = format!("etcd://{}?ttl=3s&prefix={prefix}", etcd.client_addr());

    let mut a = spawn_run(&via_proxy, "A", &log);
    log.wait_start("A", Duration::from_secs(20)).await;
    let mut b = spawn_run(&direct, "B", &log);
    sleep(Duration::from_millis(500)).await;
    assert!(
        log.started("B").is_none(),
        "B's command started while A leads"
    );

    // Cut A off from etcd: it must stop its command before its lease can
    // expire on the server, so B's command starts only after A's is gone.
    let cut = Instant::now();
    proxy.blackhole();
    let first_b = log.wait_start("B", Duration::from_secs(20)).await;
    let took = cut.elapsed();
    let last_a = log.last_alive("A");
    assert!(
        last_a < first_b,
        "OVERLAP: A's command was alive {} ms after B's started",
        (last_a - first_b) / 1_000_000
    );
    println!(
        "handover after the cut: {took:?}; gap between A's last sign of life and B's start: {} ms",
        (first_b - last_a) / 1_000_000
    );

    // A (not --forever) exits once its command is gone; its events say why.
    let a_status = wait_exit(
        &mut a,
        Duration::from_secs(10),
        "leasehold run A (after losing)",
    )
    .await;
    assert!(
        !a_status.success(),
        "A's command was killed, so A reports failure"
    );
    let mut a_out = String::new();
    if let Some(out) = a.stdout.take() {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            a_out.push_str(&l);
            a_out.push('\n');
        }
    }
    assert!(
        a_out.contains("\"event\":\"elected\"") && a_out.contains("\"event\":\"lost\""),
        "A's events: {a_out}"
    );

    // B resigns on SIGTERM and exits with its command's status.
    signal(&b, Signal::SIGTERM);
    let b_status = wait_exit(
        &mut b,
        Duration::from_secs(10),
        "leasehold run B (on SIGTERM)",
    )
    .await;
    assert!(!b_status.success(), "B's command was stopped by SIGTERM");
    let leader = cli()
        .args(["--store", &direct, "leader", "--name", "run-handover"])
        .output()
        .await
        .expect("leasehold leader");
    assert_eq!(
        leader.status.code(),
        Some(1),
        "nobody leads after B resigned: {}",
        String::from_utf8_lossy(&leader.stdout)
    );
}

/// `leasehold campaign` runs an observer beside its campaign; on Cloud
/// Storage a follower must still read the record once per poll interval,
/// not twice (the observer follows the campaign's reads). Counted at the
/// emulator's access log; the leader runs under `leasehold run`, which
/// writes its renewals and reads nothing. With polls jittered to 0.8..1.2 of the interval,
/// one reader makes at most `window / (0.8 x interval) + 1` reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leasehold_campaign_follower_on_cloud_storage_reads_once_per_poll() {
    use leasehold_integration_tests::bench::{emulator_requests_during, most_polls};
    let gcs = FakeGcs::start()
        .await
        .expect("start fake-gcs-server (install: bash scripts/setup)");
    let dir = tempfile::tempdir().expect("temp dir");
    let election = unique_name("campaign-poll");
    // ttl 4 s: a poll every 667 ms (ttl/6) plus up to 20 % jitter.
    let config = dir.path().join("gcs.toml");
    std::fs::write(
        &config,
        format!(
            "election = \"{election}\"\nttl = \"4s\"\n[store]\nkind = \"gcs\"\nbucket = \"{}\"\nendpoint = \"{}\"\ncredentials = \"none\"\nprefix = \"locks\"\n",
            gcs.bucket(),
            gcs.endpoint()
        ),
    )
    .expect("write config");
    let start = |args: &[&str]| {
        cli()
            .arg("--config")
            .arg(&config)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start leasehold")
    };
    // The leader under `run`, which observes nothing: only the follower reads.
    let mut leader = start(&["run", "--id", "alpha", "--", "sleep", "600"]);
    let mut lines = BufReader::new(leader.stdout.take().expect("stdout")).lines();
    timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if line.contains("\"event\":\"elected\"") {
                return;
            }
        }
        panic!("leasehold run ended without being elected");
    })
    .await
    .expect("the first candidate was not elected within 60s");
    let mut follower = start(&["campaign", "--id", "beta"]);
    // Settle: the follower's first attempt and its observer's first read.
    sleep(Duration::from_secs(2)).await;
    let object = format!("locks%2F{election}");
    let window = Duration::from_secs(6);
    let reads = emulator_requests_during(gcs.log_path(), &object, window)
        .await
        .reads;
    signal(&follower, Signal::SIGTERM);
    signal(&leader, Signal::SIGTERM);
    wait_exit(&mut follower, Duration::from_secs(30), "the follower").await;
    wait_exit(&mut leader, Duration::from_secs(30), "the leader").await;
    // Counted against a shorter poll than the real one (a looser bound),
    // which two readers (one observer polling beside the campaign) still
    // exceed.
    let poll = Duration::from_millis(500);
    let one_reader_at_most = most_polls(window, poll);
    eprintln!("{reads} reads of the record in {window:?} (poll {poll:?})");
    assert!(reads > 0, "the follower never read the record");
    assert!(
        reads <= one_reader_at_most,
        "{reads} reads of the record in {window:?} with a {poll:?} poll: more than one \
         reader's {one_reader_at_most} at most, so the observer polls beside the campaign"
    );
}
