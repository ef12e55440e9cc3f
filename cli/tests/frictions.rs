//! The CLI in the operator's words (issue 23, §2): a store that cannot be
//! reached is not a busy lock, and each subcommand's help lists only the
//! options it uses.
#![cfg(feature = "full")]

#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::{cli, free_addr};
use serde_json::Value;
use tokio::time::timeout;

/// The JSON lines of `stdout`.
fn events(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_against_an_unreachable_store_exits_69_not_124() {
    let store = format!("etcd://{}?ttl=3s", free_addr());
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("started");
    let cases: [(&str, Vec<String>); 2] = [
        ("campaign", vec![]),
        (
            "run",
            vec![
                "--".into(),
                "touch".into(),
                marker.to_string_lossy().into_owned(),
            ],
        ),
    ];
    for (command, rest) in cases {
        let out = timeout(
            Duration::from_secs(30),
            cli()
                .args([
                    "--store",
                    &store,
                    command,
                    "--name",
                    "dead",
                    "--timeout",
                    "2s",
                ])
                .args(&rest)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{command} --timeout 2s did not exit within 30s"))
        .expect("run leasehold");
        let lines = events(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(69),
            "{command}: an unreachable store exits 69; stdout {lines:?}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let last = lines.last().expect("an event");
        assert_eq!(last["event"], "unreachable", "{lines:?}");
        assert_eq!(last["after_ms"], 2000, "{last}");
        assert!(
            last["error"].as_str().is_some_and(|e| !e.is_empty()),
            "the event says what failed: {last}"
        );
        assert!(
            !lines.iter().any(|l| l["event"] == "timed_out"),
            "not a busy lock: {lines:?}"
        );
    }
    assert!(!marker.exists(), "run's command must not start");
}

#[tokio::test]
async fn each_subcommand_help_lists_only_its_options() {
    let help = |args: &'static [&'static str]| async move {
        let out = cli()
            .args(args)
            .arg("--help")
            .output()
            .await
            .expect("run leasehold");
        assert!(out.status.success(), "{args:?} --help");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for read_only in [&["leader"][..], &["observe"][..]] {
        let text = help(read_only).await;
        assert!(text.contains("--name"), "{text}");
        for flag in ["--ttl", "--id", "--value", "--timeout", "--listen"] {
            assert!(
                !text.contains(flag),
                "{read_only:?} --help lists {flag}:\n{text}"
            );
        }
    }
    let campaign = help(&["campaign"]).await;
    for flag in ["--name", "--id", "--value", "--ttl", "--timeout"] {
        assert!(
            campaign.contains(flag),
            "campaign --help lacks {flag}:\n{campaign}"
        );
    }
    assert!(!campaign.contains("--listen"), "{campaign}");
    let serve = help(&["serve"]).await;
    for flag in ["--listen", "--observe-only", "--resign-token-file"] {
        assert!(serve.contains(flag), "serve --help lacks {flag}:\n{serve}");
    }
    assert!(!serve.contains("--timeout"), "{serve}");
    // A candidate option on a read-only command is refused, naming it.
    let out = cli()
        .args([
            "--store",
            "memory://x",
            "leader",
            "--name",
            "x",
            "--ttl",
            "5s",
        ])
        .output()
        .await
        .expect("run leasehold");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ttl"), "{err}");
}

/// Arguments, an environment variable, and what stderr must say.
type Case<'a> = (Vec<&'a str>, Option<(&'a str, &'a str)>, &'a str);

/// Errors name what the operator typed: the flag or the environment
/// variable, with its value, not the library's builder method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_flag_or_variable_the_operator_typed() {
    let etcd = format!("etcd://{}", free_addr());
    // (arguments, an environment variable, what stderr must say)
    let cases: [Case<'_>; 5] = [
        (
            vec!["--store", &etcd, "campaign", "--name", "x", "--ttl", "1s"],
            None,
            "--ttl 1s: ttl 1s is below etcd's minimum lease ttl of 2s",
        ),
        (
            vec![
                "--store",
                "memory://x",
                "campaign",
                "--name",
                "x",
                "--ttl",
                "5",
            ],
            None,
            "--ttl 5: \"5\" is not a duration (a number needs a unit)",
        ),
        (
            vec!["--store", "memory://x", "campaign", "--name", "x"],
            Some(("LEASEHOLD_TTL", "5")),
            "LEASEHOLD_TTL=5: \"5\" is not a duration (a number needs a unit)",
        ),
        (
            vec![
                "--store",
                "memory://x",
                "campaign",
                "--name",
                "x",
                "--timeout",
                "5",
            ],
            None,
            "--timeout 5: \"5\" is not a duration",
        ),
        (
            vec![
                "--store",
                "memory://x",
                "run",
                "--name",
                "x",
                "--grace",
                "soon",
                "--",
                "true",
            ],
            None,
            "--grace soon: \"soon\" is not a duration",
        ),
    ];
    for (args, env, want) in cases {
        let mut cmd = cli();
        cmd.args(&args);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = timeout(Duration::from_secs(20), cmd.output())
            .await
            .expect("leasehold did not exit within 20s")
            .expect("run leasehold");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(want),
            "{args:?} {env:?}: want {want:?} in:\n{err}"
        );
        assert!(
            !err.contains("with_ttl"),
            "no Rust in the operator's error: {err}"
        );
    }
}

/// `run --events-to FILE`: the events go to the file, stdout is the
/// command's alone; and a term that ends because the command exited prints
/// `lost` (released), as campaign does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_keeps_events_apart_from_the_commands_stdout_and_says_lost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let events_file = dir.path().join("events.jsonl");
    let out = timeout(
        Duration::from_secs(30),
        cli()
            .args([
                "--store",
                "memory://x?ttl=3s",
                "run",
                "--name",
                "x",
                "--id",
                "a",
            ])
            .arg("--events-to")
            .arg(&events_file)
            .args([
                "--",
                "sh",
                "-c",
                "echo not-json from the command; echo $LEASEHOLD_TOKEN",
            ])
            .output(),
    )
    .await
    .expect("run did not exit within 30s")
    .expect("run leasehold");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "not-json from the command\n1\n",
        "stdout is the command's alone"
    );
    let text = std::fs::read_to_string(&events_file).expect("the events file");
    let lines = events(text.as_bytes());
    let names: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    assert_eq!(names, ["elected", "lost", "exited"], "{text}");
    assert_eq!(lines[1]["reason"], "released", "{text}");
    assert_eq!(lines[2]["status"], 0, "{text}");

    // Without --events-to, the same run prints `lost` too, on stdout.
    let out = timeout(
        Duration::from_secs(30),
        cli()
            .args([
                "--store",
                "memory://x?ttl=3s",
                "run",
                "--name",
                "x",
                "--id",
                "a",
            ])
            .args(["--", "true"])
            .output(),
    )
    .await
    .expect("run did not exit within 30s")
    .expect("run leasehold");
    let lines = events(&out.stdout);
    let names: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    assert_eq!(names, ["elected", "lost", "exited"], "{lines:?}");

    let bad = cli()
        .args([
            "--store",
            "memory://x",
            "run",
            "--name",
            "x",
            "--events-to",
            "/nonexistent/dir/e",
        ])
        .args(["--", "true"])
        .output()
        .await
        .expect("run leasehold");
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("--events-to /nonexistent/dir/e: cannot open it"),
        "{err}"
    );
}

/// A ZooKeeper that cannot be reached fails within its connect timeout (5 s
/// by default for a URL; `connect_timeout=` sets it), not after a session
/// timeout. Generous bounds: the figures are the point, not the exact time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_zookeeper_fails_within_its_connect_timeout() {
    let dead = free_addr();
    for (query, bound) in [
        ("", Duration::from_secs(15)),
        ("?connect_timeout=1s", Duration::from_secs(8)),
    ] {
        let started = tokio::time::Instant::now();
        let out = timeout(
            Duration::from_secs(60),
            cli()
                .args([
                    "--store",
                    &format!("zk://{dead}/x{query}"),
                    "leader",
                    "--name",
                    "x",
                ])
                .output(),
        )
        .await
        .expect("leader did not exit within 60s")
        .expect("run leasehold");
        let took = started.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("ZooKeeper"), "{err}");
        assert!(
            took < bound,
            "zk://{dead}/x{query}: failed after {took:?}, want under {bound:?}: {err}"
        );
        eprintln!("zk://DEAD/x{query}: failed after {took:?}");
    }
}

/// Runs `leasehold ARGS` (bounded) and gives its exit code, stdout and stderr.
async fn leasehold(args: &[&str]) -> (Option<i32>, String, String) {
    let out = timeout(Duration::from_secs(60), cli().args(args).output())
        .await
        .unwrap_or_else(|_| panic!("leasehold {args:?} did not exit within 60s"))
        .expect("run leasehold");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A campaign on `store` still checks the timings: exit 2, `want` on stderr.
async fn campaign_is_refused(store: &str, want: &str) {
    let args = [
        "--store",
        store,
        "campaign",
        "--name",
        "jobs",
        "--timeout",
        "2s",
    ];
    let (code, _, err) = leasehold(&args).await;
    assert_eq!(code, Some(2), "a campaign still checks the timings: {err}");
    assert!(err.contains(want), "want {want:?} in {err}");
}

/// `leader` and `observe` read; they hold no lease, so lease timings that
/// the store refuses must not stop them, nor hide the store's own error.
/// Before: a ZooKeeper that grants 10 s sessions (the harness's, tickTime
/// 500 ms) made `leader` fail with the ttl error, and a missing chroot was
/// reported as that ttl error too. A campaign with the same timings is
/// still refused, with the same words as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_do_not_check_lease_timings_against_the_store() {
    let (etcd, zk) = tokio::join!(
        leasehold_integration_tests::EtcdNode::start(),
        leasehold_integration_tests::ZkServer::start()
    );
    let etcd = etcd.expect("start etcd (install: bash scripts/setup)");
    let zk = zk.expect("start ZooKeeper (install: bash scripts/setup)");
    let chroot = format!("/{}", leasehold_integration_tests::unique_name("ro"));
    leasehold_integration_tests::create_zk_path(&zk.connect_string(), &chroot)
        .await
        .expect("create the ZooKeeper chroot");

    // A leader with timings the stores accept.
    let good = format!("etcd://{}?prefix=/ro&ttl=4s", etcd.client_addr());
    let mut leader = cli()
        .args(["--store", &good, "campaign", "--name", "jobs", "--id", "a"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start a campaign");
    let mut found = String::new();
    for _ in 0..100 {
        let (code, out, _) = leasehold(&["--store", &good, "leader", "--name", "jobs"]).await;
        if code == Some(0) {
            found = out;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found.contains("\"a\""), "the leader is a: {found}");

    // etcd refuses leases under 2 s; reading does not care.
    let short = format!("etcd://{}?prefix=/ro&ttl=1s", etcd.client_addr());
    let (code, out, err) = leasehold(&["--store", &short, "leader", "--name", "jobs"]).await;
    assert_eq!(code, Some(0), "leader with ttl=1s: {err}");
    assert!(out.contains("\"a\""), "{out}");
    campaign_is_refused(&short, "below etcd's minimum").await;
    // observe prints the current leader first.
    let mut observer = cli()
        .args(["--store", &short, "observe", "--name", "jobs"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start observe");
    let stdout = observer.stdout.take().expect("observe's stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let first = timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("observe printed nothing within 20s")
        .expect("read observe's stdout")
        .expect("observe exited");
    assert!(first.contains("\"a\""), "observe with ttl=1s: {first}");
    common::signal(&observer, nix::sys::signal::Signal::SIGTERM);
    common::wait_exit(&mut observer, Duration::from_secs(10), "observe").await;
    common::signal(&leader, nix::sys::signal::Signal::SIGTERM);
    common::wait_exit(&mut leader, Duration::from_secs(10), "campaign").await;

    // ZooKeeper: the server grants at most 10 s; a 15 s ttl needs more.
    let zk15 = format!("zk://{}{chroot}/jobs?ttl=15s", zk.client_addr());
    let (code, out, err) = leasehold(&["--store", &zk15, "leader", "--name", "jobs"]).await;
    assert_eq!(
        code,
        Some(1),
        "no leader yet, and no ttl error: {out} {err}"
    );
    campaign_is_refused(&zk15, "session").await;
    // A chroot that does not exist is what `leader` reports, not the ttl.
    let missing = format!(
        "zk://{}/no-such-chroot-{}/jobs?ttl=15s",
        zk.client_addr(),
        std::process::id()
    );
    let (code, out, err) = leasehold(&["--store", &missing, "leader", "--name", "jobs"]).await;
    assert_eq!(code, Some(2), "{out}");
    let error = err.lines().last().unwrap_or_default();
    assert!(
        error.contains("does not exist") && !error.contains("ttl"),
        "the missing chroot is the error, not the ttl: {err}"
    );
    eprintln!("leader on a missing chroot: exit {code:?}: {err}");
}

/// Cloud Storage's credential errors say what is wrong once, in plain words,
/// with the URL's and the builder's way out. Before: "cannot create the
/// authentication headers cannot create auth headers and future attempts
/// will not succeed", and "could not create default credentials" without
/// the file it tried. Both fail before any request, so no store is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_storage_credential_errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("key.json");
    std::fs::write(
        &key,
        r#"{"type":"service_account","client_email":"a@p.iam.gserviceaccount.com","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n","private_key_id":"k","token_uri":"http://127.0.0.1:9/token","project_id":"p"}"#,
    )
    .expect("write the key file");
    let missing = dir.path().join("missing.json");
    let missing = missing.to_string_lossy();
    let dead = free_addr();
    let cases = [
        (
            format!(
                "gs://bkt/e?endpoint=http://{dead}&credentials={}",
                key.display()
            ),
            None,
            "failed to parse private key",
        ),
        (
            format!("gs://bkt/e?endpoint=http://{dead}&credentials=default"),
            Some(missing.as_ref()),
            "GOOGLE_APPLICATION_CREDENTIALS",
        ),
    ];
    for (store, adc, want) in cases {
        let mut cmd = cli();
        cmd.args(["--store", &store, "leader", "--name", "e"]);
        if let Some(path) = adc {
            cmd.env("GOOGLE_APPLICATION_CREDENTIALS", path);
        }
        let out = timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("leader did not exit within 60s")
            .expect("run leasehold");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{store}: {err}");
        assert!(err.contains(want), "{store}: want {want:?} in {err}");
        if let Some(path) = adc {
            assert!(err.contains(path), "names the file it tried: {err}");
        }
        assert!(err.contains("credentials=none"), "the URL's way: {err}");
        assert!(!err.contains("future attempts"), "{err}");
        assert!(!err.contains(".;"), "{err}");
    }
}
