//! `leasehold run` supervises the whole process tree of its command, against
//! real stores (etcd, and ZooKeeper as the second): after SIGTERM to
//! leasehold, an admin lease revoke, a black-holed store link and `kill -9`
//! of leasehold, every process of the old command is gone before the next
//! leader's command starts; a waiting `run` withdraws its claim before it
//! exits; `--timeout` gives up with its own status; exit statuses follow the
//! shell's convention.
//!
//! The work is a small Python loop that logs `start`/`alive` lines with its
//! pid and `time.monotonic_ns()` (CLOCK_MONOTONIC, comparable across the
//! processes of this host), so "A's work stopped before B's started" is read
//! off the work's own log; the pids it records are checked in /proc.
// etcd and ZooKeeper: in the `full` feature (the default).
#![cfg(feature = "full")]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{CommandLog, cli, signal, wait_exit};
use leasehold_integration_tests::{EtcdNode, Proxy, ZkServer, unique_name};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgid, getpgrp};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

/// The work: logs `start WHO PID NS TOKEN` once, then `alive WHO PID NS`
/// every 20 ms (bounded: about 10 minutes). `stubborn` ignores SIGTERM.
const WORKER: &str = r#"
import os, signal, sys, time
log, who = sys.argv[1], sys.argv[2]
if len(sys.argv) > 3 and sys.argv[3] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(log, "a", buffering=1) as f:
    f.write(f"start {who} {os.getpid()} {time.monotonic_ns()} {os.environ.get('LEASEHOLD_TOKEN')}\n")
    for _ in range(30000):
        f.write(f"alive {who} {os.getpid()} {time.monotonic_ns()}\n")
        time.sleep(0.02)
"#;

/// How the command does its work.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// `sh -c 'worker & wait'`: the work is a background grandchild.
    Grandchild,
    /// The shell double-forks the work into a session of its own with
    /// `setsid` (it leaves the process group), and the work ignores SIGTERM.
    Setsid,
    /// Like `Grandchild`, but the shell and the work both ignore SIGTERM:
    /// only SIGKILL ends them.
    Stubborn,
}

/// One test's files: the work's log and the worker script.
struct Work {
    _dir: tempfile::TempDir,
    log: CommandLog,
    worker: PathBuf,
}

impl Work {
    fn new() -> Work {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = CommandLog::new(dir.path().join("work.log"));
        let worker = dir.path().join("worker.py");
        std::fs::write(&worker, WORKER).expect("write worker.py");
        Work {
            _dir: dir,
            log,
            worker,
        }
    }

    /// The command's argv for `who`; the shells record their pids as
    /// `pid WHO PID 0`.
    fn command(&self, who: &str, shape: Shape) -> Vec<String> {
        let (log, worker) = (self.log.path().display(), self.worker.display());
        let script = match shape {
            Shape::Grandchild => {
                format!("echo \"pid {who} $$ 0\" >> {log}; python3 {worker} {log} {who} & wait")
            }
            Shape::Setsid => format!(
                "echo \"pid {who} $$ 0\" >> {log}; \
                 setsid sh -c 'echo \"pid {who} $$ 0\" >> {log}; python3 {worker} {log} {who} stubborn &'; \
                 exec sleep 600"
            ),
            Shape::Stubborn => format!(
                "trap '' TERM; echo \"pid {who} $$ 0\" >> {log}; python3 {worker} {log} {who} stubborn & wait"
            ),
        };
        vec!["sh".into(), "-c".into(), script]
    }

    /// Every pid `who`'s command recorded (shells and workers).
    fn pids(&self, who: &str) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .log
            .lines()
            .iter()
            .filter(|l| l.who == who && (l.kind == "pid" || l.kind == "start"))
            .map(|l| l.pid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// `who`'s processes that still exist (not zombies, and still ours: the
    /// command line names this test's files).
    fn alive(&self, who: &str) -> Vec<i32> {
        self.pids(who)
            .into_iter()
            .filter(|&p| self.is_ours_and_alive(p))
            .collect()
    }

    fn is_ours_and_alive(&self, pid: i32) -> bool {
        if !common::alive(pid.unsigned_abs()) {
            return false;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let marker = self.log.path().display().to_string();
        String::from_utf8_lossy(&cmdline).contains(&marker)
    }

    /// Asserts that everything `who` started is gone and its last line
    /// predates `next`'s start (both read the moment `next` started).
    fn assert_gone_before(&self, who: &str, next: &str, next_start: u64, case: &str) {
        let alive = self.alive(who);
        assert!(
            alive.is_empty(),
            "{case}: {who}'s processes {alive:?} (of {:?}) are still alive after {next}'s command started",
            self.pids(who)
        );
        let last = self.log.last_alive(who);
        assert!(
            last < next_start,
            "{case}: OVERLAP: {who}'s work was alive {} ms after {next}'s started",
            (last - next_start) / 1_000_000
        );
        println!(
            "{case}: {who}'s last sign of life {} ms before {next}'s start",
            (next_start - last) / 1_000_000
        );
    }
}

impl Drop for Work {
    /// Kill whatever escaped (by the recorded pids, and their process groups).
    fn drop(&mut self) {
        let mut pids: Vec<i32> = self.log.lines().iter().map(|l| l.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            if self.is_ours_and_alive(pid) {
                let p = Pid::from_raw(pid);
                // Never this test's own group (on a leasehold that does not
                // give its command a group of its own, they share it).
                if let Ok(g) = getpgid(Some(p))
                    && g.as_raw() > 1
                    && g != getpgrp()
                {
                    let _ = killpg(g, Signal::SIGKILL);
                }
                let _ = kill(p, Signal::SIGKILL);
            }
        }
    }
}

fn spawn_run(store: &str, election: &str, who: &str, extra: &[&str], command: &[String]) -> Child {
    cli()
        .args(["--store", store, "run", "--name", election, "--id", who])
        .args(extra)
        .arg("--")
        .args(command)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start leasehold run")
}

/// Stops a `leasehold run` that is still running (SIGTERM, then kill).
async fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        signal(child, Signal::SIGTERM);
        if timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

fn etcd_url(addr: impl std::fmt::Display, prefix: &str, ttl: &str) -> String {
    format!("etcd://{addr}?ttl={ttl}&prefix={prefix}")
}

fn zk_url(addr: impl std::fmt::Display, ttl: &str) -> String {
    format!("zk://{addr}?session_timeout={ttl}")
}

/// Revokes the etcd lease of the election's leader (the key with the lowest
/// create revision under `<prefix>/<election>/`; its last segment is the lease
/// id in hex), as an administrator would with etcdctl.
async fn revoke_leader_lease(etcd: &EtcdNode, prefix: &str, election: &str) {
    let endpoint = format!("http://{}", etcd.client_addr());
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &endpoint, "get", "--prefix"])
        .arg(format!("{prefix}/{election}/"))
        .args([
            "--sort-by=CREATE",
            "--order=ASCEND",
            "--keys-only",
            "--limit=1",
        ])
        .output()
        .await
        .expect("run etcdctl (install: bash scripts/setup)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let key = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("no leader key under {prefix}/{election}/: {text}"));
    let lease = key.rsplit('/').next().expect("lease segment");
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &endpoint, "lease", "revoke", lease])
        .output()
        .await
        .expect("run etcdctl");
    assert!(
        out.status.success(),
        "etcdctl lease revoke {lease}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How the leader's term is ended.
enum Ending<'a> {
    /// SIGTERM to the leader's leasehold.
    Sigterm,
    /// An administrator revokes the leader's etcd lease.
    Revoke(&'a EtcdNode, &'a str),
    /// The leader's link to the store is black-holed.
    Blackhole(&'a Proxy),
}

/// A leads (through `via_a`), B waits (through `direct`); A's term is ended;
/// every process of A's command is gone before B's command starts.
async fn handover(via_a: &str, direct: &str, shape: Shape, ending: Ending<'_>, case: &str) {
    let work = Work::new();
    let election = unique_name("supervise");
    let mut a = spawn_run(via_a, &election, "A", &[], &work.command("A", shape));
    work.log.wait_start("A", Duration::from_secs(20)).await;
    // An administrator's revoke hands the lease to B at once, while A learns
    // of it only at its next renewal (ttl 3s: every 1s, answered within the
    // 1s request timeout): B waits that long before starting its command.
    let b_extra: &[&str] = match ending {
        Ending::Revoke(..) => &["--start-delay", "2s"],
        _ => &[],
    };
    let mut b = spawn_run(direct, &election, "B", b_extra, &work.command("B", shape));
    sleep(Duration::from_millis(500)).await;
    assert!(
        work.log.started("B").is_none(),
        "{case}: B started while A leads"
    );
    assert!(
        !work.pids("A").is_empty(),
        "{case}: A's command recorded no pids"
    );

    let ended = monotonic_ns();
    match ending {
        Ending::Sigterm => signal(&a, Signal::SIGTERM),
        Ending::Revoke(etcd, prefix) => revoke_leader_lease(etcd, prefix, &election).await,
        Ending::Blackhole(proxy) => proxy.blackhole(),
    }
    let b_start = work.log.wait_start("B", Duration::from_secs(30)).await;
    work.assert_gone_before("A", "B", b_start, case);
    println!(
        "{case}: A's work stopped {} ms after the term was ended, B's started {} ms after",
        (work.log.last_alive("A").saturating_sub(ended)) / 1_000_000,
        (b_start.saturating_sub(ended)) / 1_000_000
    );

    let a_status = wait_exit(&mut a, Duration::from_secs(15), "A").await;
    if let Ending::Blackhole(proxy) = ending {
        proxy.heal();
    }
    assert!(
        !a_status.success(),
        "{case}: A's term ended, got {a_status}"
    );
    stop(&mut b).await;
    // B's own command is gone once B has exited.
    let left = work.alive("B");
    assert!(
        left.is_empty(),
        "{case}: B's processes {left:?} outlived B's leasehold"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_every_process_of_the_old_command_is_gone_before_the_next_starts() {
    let etcd = EtcdNode::start()
        .await
        .expect("start etcd (install: bash scripts/setup)");
    let proxy = Proxy::start(etcd.client_addr()).await;
    for shape in [Shape::Grandchild, Shape::Setsid] {
        let prefix = unique_name("/supervise");
        let direct = etcd_url(etcd.client_addr(), &prefix, "3s");
        let case = format!("etcd {shape:?} SIGTERM");
        handover(&direct, &direct, shape, Ending::Sigterm, &case).await;
        let case = format!("etcd {shape:?} lease revoke");
        let revoke = Ending::Revoke(&etcd, &prefix);
        handover(&direct, &direct, shape, revoke, &case).await;
        let case = format!("etcd {shape:?} black-holed link");
        let via_proxy = etcd_url(proxy.addr(), &prefix, "3s");
        let cut = Ending::Blackhole(&proxy);
        handover(&via_proxy, &direct, shape, cut, &case).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_every_process_of_the_old_command_is_gone_before_the_next_starts() {
    let zk = ZkServer::start()
        .await
        .expect("start ZooKeeper (install: bash scripts/setup)");
    let proxy = Proxy::start(zk.client_addr()).await;
    let direct = zk_url(zk.client_addr(), "3s");
    let via_proxy = zk_url(proxy.addr(), "3s");
    for shape in [Shape::Grandchild, Shape::Setsid] {
        let case = format!("zookeeper {shape:?} SIGTERM");
        handover(&direct, &direct, shape, Ending::Sigterm, &case).await;
        let case = format!("zookeeper {shape:?} black-holed link");
        let cut = Ending::Blackhole(&proxy);
        handover(&via_proxy, &direct, shape, cut, &case).await;
    }
}

/// `kill -9` of A's leasehold: its command (the shell and its background
/// worker, or the worker it double-forked into a session of its own) is
/// gone within a second, before B's starts.
async fn kill_9(store: &str, shape: Shape, case: &str) {
    let work = Work::new();
    let election = unique_name("kill9");
    let mut a = spawn_run(store, &election, "A", &[], &work.command("A", shape));
    work.log.wait_start("A", Duration::from_secs(20)).await;
    if let Shape::Setsid = shape {
        // leasehold looks for escaped groups every second and tells its
        // guardian; give it that second.
        sleep(Duration::from_millis(1500)).await;
    }
    let mut b = spawn_run(store, &election, "B", &[], &work.command("B", shape));
    sleep(Duration::from_millis(500)).await;
    assert!(
        work.log.started("B").is_none(),
        "{case}: B started while A leads"
    );

    signal(&a, Signal::SIGKILL);
    let killed = Instant::now();
    let _ = wait_exit(&mut a, Duration::from_secs(5), "A after SIGKILL").await;
    while !work.alive("A").is_empty() && killed.elapsed() < Duration::from_secs(1) {
        sleep(Duration::from_millis(10)).await;
    }
    let alive = work.alive("A");
    assert!(
        alive.is_empty(),
        "{case}: A's processes {alive:?} (of {:?}) survived its leasehold's SIGKILL by more than 1 s",
        work.pids("A")
    );
    println!(
        "{case}: A's command gone {:?} after the SIGKILL",
        killed.elapsed()
    );
    let b_start = work.log.wait_start("B", Duration::from_secs(30)).await;
    work.assert_gone_before("A", "B", b_start, case);
    stop(&mut b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_leasehold_takes_its_command_with_it() {
    let (etcd, zk) = tokio::join!(EtcdNode::start(), ZkServer::start());
    let etcd = etcd.expect("start etcd (install: bash scripts/setup)");
    let zk = zk.expect("start ZooKeeper (install: bash scripts/setup)");
    let prefix = unique_name("/kill9");
    let etcd = etcd_url(etcd.client_addr(), &prefix, "3s");
    let zk = zk_url(zk.client_addr(), "3s");
    kill_9(&etcd, Shape::Grandchild, "etcd kill -9").await;
    kill_9(&etcd, Shape::Setsid, "etcd kill -9, setsid").await;
    kill_9(&zk, Shape::Grandchild, "zookeeper kill -9").await;
    kill_9(&zk, Shape::Setsid, "zookeeper kill -9, setsid").await;
}

/// A leads, B and then C wait; SIGTERM to the waiting B; then A releases.
/// C must lead right after A's release, not after B's lease (10 s) expires.
async fn waiting_run_withdraws(store: &str, case: &str) {
    let work = Work::new();
    let election = unique_name("withdraw");
    let shape = Shape::Grandchild;
    let mut a = spawn_run(store, &election, "A", &[], &work.command("A", shape));
    work.log.wait_start("A", Duration::from_secs(20)).await;
    let mut b = spawn_run(store, &election, "B", &[], &work.command("B", shape));
    sleep(Duration::from_millis(1000)).await;
    let mut c = spawn_run(store, &election, "C", &[], &work.command("C", shape));
    sleep(Duration::from_millis(1000)).await;

    signal(&b, Signal::SIGTERM);
    let b_status = wait_exit(&mut b, Duration::from_secs(10), "waiting B").await;
    assert_eq!(
        b_status.code(),
        Some(143),
        "{case}: a run stopped by SIGTERM exits 143"
    );
    assert!(work.log.started("B").is_none(), "{case}: B never led");

    signal(&a, Signal::SIGTERM);
    let _ = wait_exit(&mut a, Duration::from_secs(10), "A").await;
    let released = monotonic_ns();
    let c_start = work.log.wait_start("C", Duration::from_secs(30)).await;
    let took = Duration::from_nanos(c_start.saturating_sub(released));
    println!("{case}: C's command started {took:?} after A's leasehold exited (ttl 10s)");
    assert!(
        took < Duration::from_secs(3),
        "{case}: C led {took:?} after A released: B's claim was left behind for its ttl"
    );
    stop(&mut c).await;
}

fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock_gettime");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_a_waiting_run_withdraws_its_claim_before_it_exits() {
    let (etcd, zk) = tokio::join!(EtcdNode::start(), ZkServer::start());
    let etcd = etcd.expect("start etcd (install: bash scripts/setup)");
    let zk = zk.expect("start ZooKeeper (install: bash scripts/setup)");
    let prefix = unique_name("/withdraw");
    let store = etcd_url(etcd.client_addr(), &prefix, "10s");
    waiting_run_withdraws(&store, "etcd").await;
    waiting_run_withdraws(&zk_url(zk.client_addr(), "10s"), "zookeeper").await;
}

/// A "lease lost" while `run` is stopping its command (SIGTERM sent, the
/// command ignores it, the grace running) kills the command at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_lost_while_stopping_kills_at_once() {
    let etcd = EtcdNode::start()
        .await
        .expect("start etcd (install: bash scripts/setup)");
    let prefix = unique_name("/stopping");
    // Renewals every 500 ms: A learns of the revoke within about that, long
    // before its 5 s grace ends.
    let store = format!(
        "{}&renew_interval=500ms",
        etcd_url(etcd.client_addr(), &prefix, "10s")
    );
    let work = Work::new();
    let election = unique_name("stopping");
    let stubborn = work.command("A", Shape::Stubborn);
    let mut a = spawn_run(&store, &election, "A", &["--grace", "5s"], &stubborn);
    work.log.wait_start("A", Duration::from_secs(20)).await;
    // B waits out A's detection of the revoke (see `handover`).
    let mut b = spawn_run(
        &store,
        &election,
        "B",
        &["--start-delay", "2s"],
        &work.command("B", Shape::Grandchild),
    );
    sleep(Duration::from_millis(500)).await;

    let term = monotonic_ns();
    signal(&a, Signal::SIGTERM);
    sleep(Duration::from_millis(300)).await;
    revoke_leader_lease(&etcd, &prefix, &election).await;
    let b_start = work.log.wait_start("B", Duration::from_secs(30)).await;
    work.assert_gone_before("A", "B", b_start, "lost while stopping");
    let last_a = work.log.last_alive("A");
    let after_term = Duration::from_nanos(last_a.saturating_sub(term));
    println!("A's work was killed {after_term:?} after SIGTERM (grace 5s, revoked at 300ms)");
    assert!(
        after_term < Duration::from_millis(4000),
        "A's work lived {after_term:?} after SIGTERM: the revoke did not kill it at once"
    );
    let _ = wait_exit(&mut a, Duration::from_secs(10), "A").await;
    stop(&mut b).await;
}

/// A second signal while `run` waits out the grace kills the command at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_kills_at_once() {
    let etcd = EtcdNode::start()
        .await
        .expect("start etcd (install: bash scripts/setup)");
    let prefix = unique_name("/again");
    // Renewals every 500 ms leave room for a 5 s grace.
    let store = format!(
        "{}&renew_interval=500ms",
        etcd_url(etcd.client_addr(), &prefix, "10s")
    );
    let work = Work::new();
    let election = unique_name("again");
    let stubborn = work.command("A", Shape::Stubborn);
    let mut a = spawn_run(&store, &election, "A", &["--grace", "5s"], &stubborn);
    work.log.wait_start("A", Duration::from_secs(20)).await;
    let first = monotonic_ns();
    signal(&a, Signal::SIGINT);
    sleep(Duration::from_millis(300)).await;
    assert!(
        !work.alive("A").is_empty(),
        "the stubborn command ignores SIGTERM and lives through the grace"
    );
    signal(&a, Signal::SIGINT);
    let status = wait_exit(&mut a, Duration::from_secs(10), "A after two SIGINTs").await;
    assert_eq!(
        status.code(),
        Some(130),
        "the first signal decides the status"
    );
    let alive = work.alive("A");
    assert!(alive.is_empty(), "{alive:?} outlived leasehold");
    let lived = Duration::from_nanos(work.log.last_alive("A").saturating_sub(first));
    println!("A's work lived {lived:?} after the first SIGINT (second at 300ms, grace 5s)");
    assert!(
        lived < Duration::from_secs(4),
        "A's work lived {lived:?} after the first SIGINT: the second did not kill at once"
    );
}

/// Exit statuses: 130/143/129/131 when leasehold was signalled, the command's
/// own status otherwise (128+N if it died of signal N).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_statuses_follow_the_shell_convention() {
    let etcd = EtcdNode::start()
        .await
        .expect("start etcd (install: bash scripts/setup)");
    let prefix = unique_name("/status");
    let store = etcd_url(etcd.client_addr(), &prefix, "3s");
    let work = Work::new();
    for (sig, code) in [
        (Signal::SIGINT, 130),
        (Signal::SIGTERM, 143),
        (Signal::SIGHUP, 129),
        (Signal::SIGQUIT, 131),
    ] {
        let who = format!("{sig}");
        let election = unique_name("status");
        let mut a = spawn_run(
            &store,
            &election,
            &who,
            &[],
            &work.command(&who, Shape::Grandchild),
        );
        work.log.wait_start(&who, Duration::from_secs(20)).await;
        signal(&a, sig);
        let status = wait_exit(&mut a, Duration::from_secs(10), &who).await;
        assert_eq!(status.code(), Some(code), "leasehold run after {sig}");
        let alive = work.alive(&who);
        assert!(alive.is_empty(), "{sig}: {alive:?} outlived leasehold");
    }
    for (script, code) in [("exit 7", 7), ("kill -9 $$", 137), ("exit 0", 0)] {
        let election = unique_name("status");
        let command = ["sh".to_owned(), "-c".to_owned(), script.to_owned()];
        let mut a = spawn_run(&store, &election, "x", &[], &command);
        let status = wait_exit(&mut a, Duration::from_secs(20), script).await;
        assert_eq!(
            status.code(),
            Some(code),
            "leasehold run -- sh -c {script:?}"
        );
    }
}

/// `--timeout`: give up acquiring after D with status 124, the command never
/// started, the claim withdrawn; `campaign --timeout` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_gives_up_acquiring_with_its_own_status() {
    let etcd = EtcdNode::start()
        .await
        .expect("start etcd (install: bash scripts/setup)");
    let prefix = unique_name("/timeout");
    let store = etcd_url(etcd.client_addr(), &prefix, "10s");
    let work = Work::new();
    let election = unique_name("timeout");
    let mut a = spawn_run(
        &store,
        &election,
        "A",
        &[],
        &work.command("A", Shape::Grandchild),
    );
    work.log.wait_start("A", Duration::from_secs(20)).await;

    let started = Instant::now();
    let mut b = spawn_run(
        &store,
        &election,
        "B",
        &["--timeout", "1s"],
        &work.command("B", Shape::Grandchild),
    );
    let status = wait_exit(&mut b, Duration::from_secs(15), "run --timeout 1s").await;
    assert_eq!(status.code(), Some(124), "run --timeout gives up with 124");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "gave up before the timeout"
    );
    assert!(
        work.log.started("B").is_none(),
        "B's command must not start"
    );

    let out = timeout(
        Duration::from_secs(15),
        cli()
            .args([
                "--store", &store, "campaign", "--name", &election, "--id", "C",
            ])
            .args(["--timeout", "1s"])
            .output(),
    )
    .await
    .expect("campaign --timeout 1s did not exit")
    .expect("run campaign");
    assert_eq!(
        out.status.code(),
        Some(124),
        "campaign --timeout gives up with 124: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Neither left a claim behind: D leads right after A releases.
    let mut d = spawn_run(
        &store,
        &election,
        "D",
        &[],
        &work.command("D", Shape::Grandchild),
    );
    sleep(Duration::from_millis(500)).await;
    signal(&a, Signal::SIGTERM);
    let _ = wait_exit(&mut a, Duration::from_secs(10), "A").await;
    let released = monotonic_ns();
    let d_start = work.log.wait_start("D", Duration::from_secs(30)).await;
    let took = Duration::from_nanos(d_start.saturating_sub(released));
    assert!(
        took < Duration::from_secs(3),
        "D led {took:?} after A released (ttl 10s): a timed-out claim was left behind"
    );
    stop(&mut d).await;
}
