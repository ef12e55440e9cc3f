//! leasehold and etcd's own Go election (`concurrency.Election`, driven here
//! through `etcdctl elect`, Debian's etcd-client package) sharing one
//! election on a real etcd (issue 16).
//!
//! The etcdctl processes are started by pid against the harness's etcd
//! (`ETCDCTL_API=3 etcdctl --endpoints ...`), read line by line (etcdctl
//! prints the leader key and the proposal when it wins, and every leader
//! change in listen mode `-l`), and stopped by pid. Every wait is bounded by
//! a generous timeout; nothing asserts on timing.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Backend, ElectionOptions, Elector, Error, FencingToken, LeaderInfo};
use leasehold_etcd::{EtcdBackend, Layout};
use leasehold_integration_tests::{EtcdNode, unique_name};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};

/// Bound on anything a test waits for: a win, a line, a process exit.
const WITHIN: Duration = Duration::from_secs(20);

async fn start_node() -> EtcdNode {
    EtcdNode::start()
        .await
        .unwrap_or_else(|e| panic!("could not start etcd: {e}"))
}

async fn backend(node: &EtcdNode, layout: Layout) -> EtcdBackend {
    EtcdBackend::builder()
        .endpoints([node.endpoint()])
        .layout(layout)
        .request_timeout(Duration::from_secs(3))
        .build()
        .await
        .unwrap_or_else(|e| panic!("connecting to {} failed: {e}", node.endpoint()))
}

async fn elector(
    node: &EtcdNode,
    layout: Layout,
    election: &str,
    id: &str,
    value: &str,
) -> Elector {
    let backend: Arc<dyn Backend> = Arc::new(backend(node, layout).await);
    let mut options = ElectionOptions::new(election, id).with_ttl(Duration::from_secs(2));
    options.value = value.as_bytes().to_vec();
    Elector::new(backend, options).unwrap_or_else(|e| panic!("options refused: {e}"))
}

/// The lines a child prints on its (piped) stdout, read by a thread that
/// ends with the output.
fn read_lines(child: &mut Child) -> mpsc::UnboundedReceiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// One `etcdctl` process, its stdout read line by line; stopped by pid on drop.
struct Etcdctl {
    what: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Etcdctl {
    /// `ETCDCTL_API=3 etcdctl --endpoints <node> <args...>`.
    fn spawn(node: &EtcdNode, args: &[&str]) -> Etcdctl {
        let what = format!("etcdctl {}", args.join(" "));
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", node.endpoint()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `{what}` ({e}): install it with apt-get install -y etcd-client (or: bash scripts/setup)")
            });
        let lines = read_lines(&mut child);
        Etcdctl { what, child, lines }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"))
    }

    /// The next line printed, within [`WITHIN`].
    async fn line(&mut self) -> String {
        match timeout(WITHIN, self.lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("`{}` ended its output", self.what),
            Err(_) => panic!("`{}` printed nothing within {WITHIN:?}", self.what),
        }
    }

    /// A line printed already, without waiting.
    fn printed(&mut self) -> Option<String> {
        self.lines.try_recv().ok()
    }

    /// The leader key and value `etcdctl elect` prints when it wins (or
    /// `elect -l` for each leader it observes).
    async fn leader_lines(&mut self) -> (String, String) {
        let key = self.line().await;
        let value = self.line().await;
        (key, value)
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap_or_else(|e| panic!("kill -{signal} {}: {e}", self.pid()));
    }

    /// Waits (bounded) for the process to exit.
    async fn exited(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WITHIN;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for etcdctl") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "`{}` did not exit within {WITHIN:?}",
                self.what
            );
            sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Etcdctl {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A key as `etcdctl get -w json` shows it: create revision and lease.
#[derive(Debug)]
struct KeyInfo {
    create_revision: u64,
    lease: i64,
}

/// Runs `etcdctl <args>` to its end (an admin's command); its stdout.
fn etcdctl(node: &EtcdNode, args: &[&str]) -> Vec<u8> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", node.endpoint()))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}; apt-get install -y etcd-client"));
    assert!(out.status.success(), "etcdctl {args:?} failed: {out:?}");
    out.stdout
}

/// Reads every key under `prefix` with `etcdctl get --prefix -w json`.
fn keys(node: &EtcdNode, prefix: &str) -> Vec<(String, KeyInfo)> {
    let out = etcdctl(node, &["get", "--prefix", prefix, "-w", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out).expect("etcdctl get -w json");
    let Some(kvs) = json.get("kvs").and_then(|k| k.as_array()) else {
        return Vec::new();
    };
    kvs.iter()
        .map(|kv| {
            let key = kv["key"].as_str().expect("key");
            let key = base64_decode(key);
            let info = KeyInfo {
                create_revision: kv["create_revision"].as_u64().expect("create_revision"),
                lease: kv.get("lease").and_then(|l| l.as_i64()).unwrap_or(0),
            };
            (String::from_utf8(key).expect("utf-8 key"), info)
        })
        .collect()
}

fn key(node: &EtcdNode, key: &str) -> Option<KeyInfo> {
    keys(node, key)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, i)| i)
}

/// Waits (bounded) until `prefix` holds `n` keys.
async fn until_keys(node: &EtcdNode, prefix: &str, n: usize) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let now = keys(node, prefix).len();
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{prefix:?} holds {now} keys after {WITHIN:?}, expected {n}"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// A tiny base64 decoder (etcdctl's JSON shows keys in base64).
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64 digit") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Waits (bounded) for an observer to show what `want` accepts.
async fn observed(
    rx: &mut tokio::sync::watch::Receiver<Option<LeaderInfo>>,
    what: &str,
    want: impl FnMut(&Option<LeaderInfo>) -> bool,
) {
    let result = timeout(WITHIN, rx.wait_for(want))
        .await
        .map(|r| r.map(|_| ()));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("the observer stopped before showing {what}"),
        Err(_) => panic!(
            "the observer did not show {what} within {WITHIN:?}; it shows {:?}",
            *rx.borrow()
        ),
    }
}

/// Regression (issue 16): in leasehold's default layout an `etcdctl elect`
/// candidate writing into leasehold's range leaves a record leasehold cannot
/// read. Once it leads, `leader()` must say so (an error naming the key),
/// and `observe()` must stop (its channel closes) rather than keep showing
/// the leasehold leader that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreadable_leader_is_reported_not_hidden() {
    let node = start_node().await;
    let election = unique_name("unreadable");
    let range = format!("/leasehold/{election}/");
    let a = elector(&node, Layout::Leasehold, &election, "rust-a", "a").await;
    let watcher = elector(&node, Layout::Leasehold, &election, "watcher", "").await;
    let leading = timeout(WITHIN, a.lock())
        .await
        .expect("a leads in time")
        .expect("a leads");
    let mut rx = watcher.observe().await.expect("observe");
    observed(&mut rx, "rust-a leading", |l| {
        l.as_ref().is_some_and(|l| l.id == "rust-a")
    })
    .await;

    // A Go candidate in the same range (what `etcdctl elect /leasehold/NAME` writes).
    let go_name = format!("/leasehold/{election}");
    let mut go = Etcdctl::spawn(&node, &["elect", &go_name, "go-1"]);
    until_keys(&node, &range, 2).await;
    leading.unlock().await.expect("unlock");
    let (go_key, go_value) = go.leader_lines().await;
    assert_eq!(go_value, "go-1");
    assert!(go_key.starts_with(&range), "{go_key}");

    match watcher.leader().await {
        Err(Error::InvalidRecord { path, .. }) => assert_eq!(path, go_key),
        other => panic!("leader() must refuse the Go record at {go_key}, got {other:?}"),
    }
    // The observer must not keep showing rust-a: it stops, and its receivers
    // see the channel closed.
    match timeout(WITHIN, async {
        loop {
            if rx.changed().await.is_err() {
                return None;
            }
            let now = rx.borrow_and_update().clone();
            if now.is_some() {
                return Some(now);
            }
        }
    })
    .await
    {
        Ok(None) => {}
        Ok(Some(shown)) => panic!("the observer shows {shown:?} while an unreadable record leads"),
        Err(_) => panic!(
            "the observer still runs {WITHIN:?} after an unreadable record took the lead, showing {:?}",
            *rx.borrow()
        ),
    }
    match watcher.observe().await {
        Err(Error::InvalidRecord { path, .. }) => assert_eq!(path, go_key),
        other => panic!("observe() must refuse the Go record at {go_key}, got {other:?}"),
    }
    go.signal(Signal::SIGINT);
    go.exited().await;
}

/// The `leasehold` binary of the same build (next to the `chaos` binary:
/// `cargo test --workspace` builds both; alone: `cargo build -p leasehold-cli`).
fn cli_binary() -> std::path::PathBuf {
    let cli = Path::new(env!("CARGO_BIN_EXE_chaos")).with_file_name("leasehold");
    assert!(
        cli.exists(),
        "{} is missing: build it with `cargo build -p leasehold-cli` (cargo test --workspace --all-targets does)",
        cli.display()
    );
    cli
}

/// A `leasehold campaign` process on the Go layout, stopped by pid on drop.
struct Campaigner {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Campaigner {
    fn spawn(node: &EtcdNode, election: &str, id: &str) -> Campaigner {
        let url = format!("etcd://{}/{election}?layout=go&ttl=2s", node.client_addr());
        let mut child = Command::new(cli_binary())
            .args(["--store", &url, "campaign", "--id", id, "--value", id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start leasehold campaign: {e}"));
        let lines = read_lines(&mut child);
        Campaigner { child, lines }
    }

    /// The token of the `elected` event, waiting for it (bounded).
    async fn elected(&mut self) -> u64 {
        let deadline = Instant::now() + WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match timeout(left, self.lines.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) => panic!("leasehold campaign ended before it was elected"),
                Err(_) => panic!("leasehold campaign was not elected within {WITHIN:?}"),
            };
            let event: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            if event["event"] == "elected" {
                return event["token"].as_u64().expect("token");
            }
        }
    }

    fn has_been_elected(&mut self) -> bool {
        while let Ok(line) = self.lines.try_recv() {
            if line.contains("\"elected\"") {
                return true;
            }
        }
        false
    }

    fn kill(&mut self) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"));
        kill(pid, Signal::SIGKILL).expect("kill -9 leasehold");
        let _ = self.child.wait();
    }
}

impl Drop for Campaigner {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill();
        }
    }
}

/// Who leads, by the participants' own reports (etcdctl's win lines,
/// leasehold's `lock()` / `elected`): a new leader is accepted only once the
/// previous one has stepped down and its key is gone.
struct Leaders<'a> {
    node: &'a EtcdNode,
    current: Option<(String, String)>,
    tokens: Vec<u64>,
}

impl Leaders<'_> {
    /// `who` reports leading with key `key`.
    fn won(&mut self, who: &str, key: &str) -> u64 {
        if let Some((before, before_key)) = &self.current {
            panic!("{who} leads while {before} still does (its key {before_key})");
        }
        let token = crate::key(self.node, key)
            .unwrap_or_else(|| panic!("{who} leads but its key {key} is missing"))
            .create_revision;
        if let Some(last) = self.tokens.last() {
            assert!(token > *last, "{who}'s token {token} is not above {last}");
        }
        self.tokens.push(token);
        self.current = Some((who.to_owned(), key.to_owned()));
        token
    }

    /// The current leader has stepped down: its key must be gone.
    fn stepped_down(&mut self) {
        let (who, key) = self.current.take().expect("someone leads");
        assert!(
            crate::key(self.node, &key).is_none(),
            "{who} stepped down but its key {key} is still there"
        );
    }
}

async fn shows(
    rx: &mut tokio::sync::watch::Receiver<Option<LeaderInfo>>,
    key: &str,
    value: &str,
    token: u64,
) {
    observed(rx, &format!("{key} = {value:?} with token {token}"), |l| {
        l.as_ref().is_some_and(|l| {
            l.id == key && l.value == value.as_bytes() && l.token == FencingToken(token)
        })
    })
    .await;
}

/// leasehold's observer and `etcdctl elect -l` both show this leader.
async fn everyone_sees(
    rx: &mut tokio::sync::watch::Receiver<Option<LeaderInfo>>,
    listen: &mut Etcdctl,
    key: &str,
    value: &str,
    token: u64,
) {
    shows(rx, key, value, token).await;
    assert_eq!(
        listen.leader_lines().await,
        (key.to_owned(), value.to_owned())
    );
}

/// A leasehold candidate campaigning in a task, once its key is queued
/// behind the `ahead` keys already in `range`.
async fn queued(
    node: &EtcdNode,
    range: &str,
    ahead: usize,
    candidate: Elector,
) -> tokio::task::JoinHandle<leasehold_core::Result<leasehold_core::Leadership>> {
    let task = tokio::spawn(async move { candidate.lock().await });
    until_keys(node, range, ahead + 1).await;
    task
}

/// The one key under `range`, waiting (bounded) until there is exactly one.
async fn only_key(node: &EtcdNode, range: &str) -> (String, KeyInfo) {
    until_keys(node, range, 1).await;
    keys(node, range).pop().expect("one key")
}

/// Issue 16: `etcdctl elect` candidates (Go's concurrency.Election) and
/// leasehold candidates on the Go layout share one election through
/// graceful handovers (SIGINT to etcdctl, `unlock()` on leasehold), a
/// proclaim, and leader kills (kill -9 of an etcdctl leader whose 60 s
/// session lease an admin then revokes; kill -9 of a leasehold leader, whose
/// 2 s lease runs out). At most one leader at any time; leasehold's
/// `leader()` / `observe()` and `etcdctl elect -l` both name every leader
/// with its value, and the token is the leader key's create revision on both
/// sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_elect_and_leasehold_share_one_election() {
    let node = start_node().await;
    let name = unique_name("billing");
    let range = format!("{name}/");
    let mut leaders = Leaders {
        node: &node,
        current: None,
        tokens: Vec::new(),
    };
    let watcher = elector(&node, Layout::Go, &name, "watcher", "").await;
    let mut rx = watcher.observe().await.expect("observe");
    assert_eq!(*rx.borrow(), None, "nobody leads yet");
    let mut listen = Etcdctl::spawn(&node, &["elect", "-l", &name]);

    // 1. An etcdctl candidate leads; leasehold names it.
    let mut go1 = Etcdctl::spawn(&node, &["elect", &name, "go-1"]);
    let (go1_key, value) = go1.leader_lines().await;
    assert_eq!(value, "go-1");
    let go1_token = leaders.won("etcdctl go-1", &go1_key);
    let info = key(&node, &go1_key).expect("go-1's key");
    assert_eq!(
        go1_key,
        format!("{name}/{:x}", info.lease),
        "Go's key format"
    );
    let leader = watcher.leader().await.expect("leader()").expect("a leader");
    assert_eq!(
        (leader.id.as_str(), leader.value.as_slice(), leader.token),
        (go1_key.as_str(), &b"go-1"[..], FencingToken(go1_token))
    );
    everyone_sees(&mut rx, &mut listen, &go1_key, "go-1", go1_token).await;

    // 2. A leasehold candidate queues behind it; SIGINT hands over.
    let a = elector(&node, Layout::Go, &name, "rust-a", "rust-a").await;
    let a_lock = queued(&node, &range, 1, a).await;
    assert!(
        !a_lock.is_finished(),
        "rust-a must not lead while go-1 does"
    );
    go1.signal(Signal::SIGINT);
    let a_lead = timeout(WITHIN, a_lock)
        .await
        .expect("rust-a leads after go-1 resigns")
        .expect("task")
        .expect("lock");
    leaders.stepped_down();
    go1.exited().await;
    let (a_key, a_info) = only_key(&node, &range).await;
    assert_eq!(
        a_key,
        format!("{name}/{:x}", a_info.lease),
        "Go's key format"
    );
    let a_token = leaders.won("leasehold rust-a", &a_key);
    assert_eq!(
        a_lead.fencing_token(),
        FencingToken(a_token),
        "token = Rev()"
    );
    everyone_sees(&mut rx, &mut listen, &a_key, "rust-a", a_token).await;

    // 3. Proclaim: same key, same token, new value; both observers see it.
    a_lead.proclaim("rust-a2").await.expect("proclaim");
    assert_eq!(a_lead.fencing_token(), FencingToken(a_token));
    assert_eq!(
        key(&node, &a_key).map(|k| k.create_revision),
        Some(a_token),
        "the key was not recreated"
    );
    everyone_sees(&mut rx, &mut listen, &a_key, "rust-a2", a_token).await;
    let leader = watcher.leader().await.expect("leader()").expect("a leader");
    assert_eq!(leader.value, b"rust-a2");

    // 4. An etcdctl candidate queues behind rust-a; unlock() hands over.
    let mut go2 = Etcdctl::spawn(&node, &["elect", &name, "go-2"]);
    until_keys(&node, &range, 2).await;
    assert_eq!(go2.printed(), None, "go-2 must not lead while rust-a does");
    a_lead.unlock().await.expect("unlock");
    leaders.stepped_down();
    let (go2_key, value) = go2.leader_lines().await;
    assert_eq!(value, "go-2");
    let go2_token = leaders.won("etcdctl go-2", &go2_key);
    everyone_sees(&mut rx, &mut listen, &go2_key, "go-2", go2_token).await;

    // 5. kill -9 of the etcdctl leader. etcdctl's session lease is 60 s and
    // outlives the process: rust-b keeps waiting until an admin revokes it.
    let b = elector(&node, Layout::Go, &name, "rust-b", "rust-b").await;
    let b_lock = queued(&node, &range, 1, b).await;
    go2.signal(Signal::SIGKILL);
    go2.exited().await;
    let go2_lease = key(&node, &go2_key).expect("go-2's key outlives it").lease;
    assert!(!b_lock.is_finished(), "rust-b must wait for go-2's lease");
    etcdctl(&node, &["lease", "revoke", &format!("{go2_lease:x}")]);
    let b_lead = timeout(WITHIN, b_lock)
        .await
        .expect("rust-b leads once go-2's lease is revoked")
        .expect("task")
        .expect("lock");
    leaders.stepped_down();
    let (b_key, _) = only_key(&node, &range).await;
    let b_token = leaders.won("leasehold rust-b", &b_key);
    assert_eq!(b_lead.fencing_token(), FencingToken(b_token));
    everyone_sees(&mut rx, &mut listen, &b_key, "rust-b", b_token).await;

    // 6. A leasehold leader in its own process (the CLI), then kill -9 of
    // it: its 2 s lease runs out and the etcdctl candidate behind it wins.
    let mut c = Campaigner::spawn(&node, &name, "rust-c");
    until_keys(&node, &range, 2).await;
    assert!(
        !c.has_been_elected(),
        "rust-c must not lead while rust-b does"
    );
    b_lead.unlock().await.expect("unlock");
    leaders.stepped_down();
    let c_token = c.elected().await;
    let (c_key, _) = only_key(&node, &range).await;
    assert_eq!(leaders.won("leasehold CLI rust-c", &c_key), c_token);
    everyone_sees(&mut rx, &mut listen, &c_key, "rust-c", c_token).await;
    let mut go3 = Etcdctl::spawn(&node, &["elect", &name, "go-3"]);
    until_keys(&node, &range, 2).await;
    c.kill();
    let (go3_key, value) = go3.leader_lines().await;
    assert_eq!(value, "go-3");
    leaders.stepped_down();
    let go3_token = leaders.won("etcdctl go-3", &go3_key);
    everyone_sees(&mut rx, &mut listen, &go3_key, "go-3", go3_token).await;

    go3.signal(Signal::SIGTERM);
    go3.exited().await;
    leaders.stepped_down();
    observed(&mut rx, "no leader", Option::is_none).await;
    listen.signal(Signal::SIGINT);
    listen.exited().await;
}

/// `Leadership::proclaim` in leasehold's own layout: same token, the value
/// in the JSON record changes (the candidate id stays), observers see it; a
/// claim whose key was deleted under it (an admin's `etcdctl del`) is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proclaim_in_the_leasehold_layout() {
    let node = start_node().await;
    let election = unique_name("proclaim");
    let a = elector(&node, Layout::Leasehold, &election, "rust-a", "v1").await;
    let watcher = elector(&node, Layout::Leasehold, &election, "watcher", "").await;
    let leading = timeout(WITHIN, a.lock())
        .await
        .expect("in time")
        .expect("lock");
    let token = leading.fencing_token();
    let mut rx = watcher.observe().await.expect("observe");
    leading.proclaim(b"v2".to_vec()).await.expect("proclaim");
    observed(&mut rx, "v2", |l| {
        l.as_ref()
            .is_some_and(|l| l.id == "rust-a" && l.value == b"v2" && l.token == token)
    })
    .await;
    let leader = watcher.leader().await.expect("leader()").expect("a leader");
    assert_eq!(
        (leader.id.as_str(), leader.value.as_slice()),
        ("rust-a", &b"v2"[..])
    );
    assert_eq!(leading.fencing_token(), token);

    let (own_key, _) = only_key(&node, &format!("/leasehold/{election}/")).await;
    etcdctl(&node, &["del", &own_key]);
    match leading.proclaim(b"v3".to_vec()).await {
        Err(Error::Lost(message)) => assert!(message.contains(&own_key), "{message}"),
        other => panic!("proclaim on a deleted key must be Lost, got {other:?}"),
    }
    assert!(leading.is_lost(), "the term ended");
}

/// `etcdctl lock NAME` (Go's concurrency.Mutex) uses the same keys as
/// `etcdctl elect NAME`, so it waits behind a leasehold leader of election
/// NAME in the Go layout; and the `ETCD_LOCK_REV` it hands its command is
/// not the lock key's create revision when it had to wait (docs/interop.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_lock_waits_behind_leasehold_and_its_rev_is_another_number() {
    let node = start_node().await;
    let name = unique_name("lock");
    let range = format!("{name}/");
    let a = elector(&node, Layout::Go, &name, "rust-a", "rust-a").await;
    let leading = timeout(WITHIN, a.lock())
        .await
        .expect("in time")
        .expect("lock");
    let own = key(&node, &keys(&node, &range)[0].0).expect("own key");
    assert_eq!(leading.fencing_token(), FencingToken(own.create_revision));
    let mut lock = Etcdctl::spawn(
        &node,
        &[
            "lock",
            &name,
            "--",
            "sh",
            "-c",
            "echo \"$ETCD_LOCK_KEY $ETCD_LOCK_REV\"",
        ],
    );
    until_keys(&node, &range, 2).await;
    let (lock_key, lock_info) = keys(&node, &range)
        .into_iter()
        .find(|(_, i)| i.create_revision != own.create_revision)
        .expect("the lock's key");
    assert_eq!(lock.printed(), None, "etcdctl lock must wait for rust-a");
    leading.unlock().await.expect("unlock");
    let line = lock.line().await;
    let (printed_key, rev) = line.split_once(' ').expect("KEY REV");
    assert_eq!(printed_key, lock_key);
    let rev: u64 = rev.parse().expect("ETCD_LOCK_REV is a number");
    assert!(
        rev > lock_info.create_revision,
        "ETCD_LOCK_REV {rev} should be the revision the lock was won at, after its key's create revision {}",
        lock_info.create_revision
    );
    assert!(lock.exited().await.success(), "etcdctl lock failed");
}

/// One participant of a mixed queue.
enum Participant {
    Go(Etcdctl),
    Rust(tokio::task::JoinHandle<leasehold_core::Result<leasehold_core::Leadership>>),
}

/// Three `etcdctl elect` and three leasehold candidates queue alternately in
/// one election; each leader in turn resigns (SIGTERM / `unlock()`). The
/// queue is fair across both kinds (they lead in arrival order, the order of
/// their keys' create revisions) and, whenever one reports leading, none of
/// the others has reported it and every earlier leader's key is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_queue_hands_over_in_arrival_order() {
    let node = start_node().await;
    let name = unique_name("mixed");
    let range = format!("{name}/");
    let mut queue: Vec<(String, Participant)> = Vec::new();
    for i in 0..6 {
        let before: Vec<String> = keys(&node, &range).into_iter().map(|(k, _)| k).collect();
        let value = format!("p{i}");
        let participant = if i % 2 == 0 {
            Participant::Go(Etcdctl::spawn(&node, &["elect", &name, &value]))
        } else {
            let e = elector(&node, Layout::Go, &name, &value, &value).await;
            Participant::Rust(tokio::spawn(async move { e.lock().await }))
        };
        until_keys(&node, &range, i + 1).await;
        let key = keys(&node, &range)
            .into_iter()
            .map(|(k, _)| k)
            .find(|k| !before.contains(k))
            .expect("the new candidate's key");
        queue.push((key, participant));
    }
    let mut last_token = 0;
    for turn in 0..queue.len() {
        let (key, _) = &queue[turn];
        let key = key.clone();
        let value = format!("p{turn}");
        // The head of the queue reports leading ...
        let leadership = match &mut queue[turn].1 {
            Participant::Go(go) => {
                assert_eq!(go.leader_lines().await, (key.clone(), value.clone()));
                None
            }
            Participant::Rust(task) => {
                let l = timeout(WITHIN, task)
                    .await
                    .unwrap_or_else(|_| panic!("{value} did not lead within {WITHIN:?}"))
                    .expect("task")
                    .expect("lock");
                Some(l)
            }
        };
        // ... with the lowest key, every earlier key gone, nobody else leading.
        let now = keys(&node, &range);
        assert_eq!(now.len(), queue.len() - turn, "earlier keys are gone");
        let first = now
            .iter()
            .min_by_key(|(_, i)| i.create_revision)
            .expect("a key");
        assert_eq!(first.0, key, "{value} leads in arrival order");
        assert!(first.1.create_revision > last_token, "tokens increase");
        last_token = first.1.create_revision;
        if let Some(l) = &leadership {
            assert_eq!(l.fencing_token(), FencingToken(last_token));
        }
        for (other_key, other) in &mut queue[turn + 1..] {
            let reported = match other {
                Participant::Go(go) => go.printed().is_some(),
                Participant::Rust(task) => task.is_finished(),
            };
            assert!(!reported, "{other_key} reports leading while {key} does");
        }
        // Hand over.
        match (&mut queue[turn].1, leadership) {
            (Participant::Go(go), _) => {
                go.signal(Signal::SIGTERM);
                go.exited().await;
            }
            (Participant::Rust(_), Some(l)) => l.unlock().await.expect("unlock"),
            (Participant::Rust(_), None) => unreachable!("a leasehold leader has its leadership"),
        }
    }
    until_keys(&node, &range, 0).await;
}

/// The conformance behaviours that do not compare candidate ids (which the
/// Go layout does not store: a leader read from the store is named by its
/// key), on the Go layout.
struct GoLayout {
    node: EtcdNode,
}

#[leasehold_core::conformance::async_trait]
impl leasehold_core::conformance::Subject for GoLayout {
    async fn client(&self) -> Arc<dyn Backend> {
        Arc::new(backend(&self.node, Layout::Go).await)
    }

    fn options(&self, election: &str, candidate: &str) -> ElectionOptions {
        ElectionOptions::new(election, candidate).with_ttl(Duration::from_secs(2))
    }

    fn slack(&self) -> Duration {
        // As for the default layout (tests/etcd.rs): etcd's lessor looks for
        // expired leases every 500 ms; the rest is room for a loaded machine.
        Duration::from_millis(1500)
    }

    /// Deletes the election's keys (`<prefix><election>/`) with a client of
    /// its own, as `etcdctl del --prefix` would.
    async fn delete_by_hand(&self, election: &str) {
        let b = backend(&self.node, Layout::Go).await;
        let mut kv = etcd_client::Client::connect([self.node.endpoint()], None)
            .await
            .expect("connect")
            .kv_client();
        let deleted = kv
            .delete(
                b.election_prefix(election),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .expect("delete");
        assert_eq!(deleted.deleted(), 1, "the leader's key was not there");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_behaviours_on_the_go_layout() {
    use leasehold_core::conformance as c;
    let subject = GoLayout {
        node: start_node().await,
    };
    tokio::join!(
        c::renewal_keeps_the_lease(&subject),
        c::vanished_holder_is_replaced(&subject),
        c::tokens_strictly_increase(&subject),
        c::racing_candidates_one_wins(&subject, 10),
        c::unsupported_operations_are_typed(&subject),
        c::a_claim_deleted_by_hand_ends_the_term(&subject),
    );
}
