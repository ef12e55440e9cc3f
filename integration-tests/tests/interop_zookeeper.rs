//! leasehold-zookeeper next to Apache Curator (issue 16): node names, sorting
//! and leader values both sides agree on, a path shared by recipes with
//! different lock names failing loudly instead of electing two leaders, and
//! `proclaim`.
//!
//! The Java participant (integration-tests/java/CuratorParticipant.java) is
//! compiled once per test process with `javac` against Debian's Curator and
//! ZooKeeper jars (`scripts/setup` installs `libcurator-recipes-java` and
//! `openjdk-17-jdk-headless`); a missing one fails the test with the command
//! that installs it. Both sides stamp leadership starts and ends with
//! CLOCK_MONOTONIC (Java's `System.nanoTime`, `clock_gettime` here), and
//! every test checks that no two participants' terms overlap.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use leasehold_core::{Attempt, Backend, ElectionOptions, Elector, Error, LeaderInfo, Leadership};
use leasehold_integration_tests::{Proxy, ZkServer, unique_name};
use leasehold_zookeeper::zookeeper_client as zk;
use leasehold_zookeeper::{LockName, ZkBackend};
use nix::sys::signal::{Signal, kill};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};

const TTL: Duration = Duration::from_secs(3);

async fn start_server() -> ZkServer {
    ZkServer::start()
        .await
        .unwrap_or_else(|e| panic!("could not start ZooKeeper: {e}"))
}

fn options(election: &str, candidate: &str) -> ElectionOptions {
    ElectionOptions::new(election, candidate).with_ttl(TTL)
}

async fn backend(connect_string: &str) -> ZkBackend {
    backend_named(connect_string, LockName::Latch).await
}

async fn backend_named(connect_string: &str, lock_name: LockName) -> ZkBackend {
    ZkBackend::builder()
        .connect_string(connect_string)
        .lock_name(lock_name)
        .session_timeout(ZkBackend::min_session_timeout(&options("any", "any")))
        .connect_timeout(Duration::from_secs(15))
        .build()
        .await
        .unwrap_or_else(|e| panic!("connecting to {connect_string} failed: {e}"))
}

/// A node as Curator's `InterProcessMutex` / `LeaderSelector` creates it:
/// protected, ephemeral sequential, `lock-`, data = the participant id.
async fn curator_style_node(client: &zk::Client, dir: &str, lock_name: &str, id: &str) -> String {
    let mode = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
    let dir_mode = zk::CreateMode::Container.with_acls(zk::Acls::anyone_all());
    client.mkdir(dir, &dir_mode).await.ok();
    let prefix = format!(
        "{dir}/_c_{}-{lock_name}",
        "0b5e2a1c-5f6e-4d2b-9a3c-7e8f9a0b1c2d"
    );
    let (_, sequence) = client
        .create(&prefix, id.as_bytes(), &mode)
        .await
        .unwrap_or_else(|e| panic!("create {prefix}: {e}"));
    format!("{prefix}{sequence}")
}

/// The error a mixed path must give: not transient (retrying cannot help),
/// naming the path, the foreign node and the option to set.
fn assert_mixed_path_error(what: &str, err: &Error, node: &str, option_value: &str) {
    let text = err.to_string();
    let base = node.rsplit('/').next().unwrap_or(node);
    assert!(
        !err.is_transient()
            && text.contains(base)
            && text.contains("lock_name")
            && text.contains(option_value),
        "{what}: expected a non-transient error naming {base} and lock_name {option_value}, got {err:?}"
    );
}

/// A Curator mutex / selector node (`lock-`) on the path of a leasehold
/// election with the default lock name (`latch-`): Curator would sort
/// leasehold's node after its own and leasehold used to ignore Curator's,
/// so both led. Campaign, `leader()` and `observe()` must refuse instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_lock_node_next_to_latch_candidates_fails_loudly() {
    let server = start_server().await;
    let election = unique_name("mixed");
    let raw = zk::Client::connect(&server.connect_string())
        .await
        .expect("raw client");
    let node = curator_style_node(&raw, &format!("/{election}"), "lock-", "java-1").await;

    let b = backend(&server.connect_string()).await;
    refuses_mixed_path(b, &election, &node, "lock-").await;
    // The failed campaign left nothing behind: only the foreign node is there.
    wait_children(&raw, &format!("/{election}"), 1).await;
}

/// A leasehold candidate queued behind a Curator-style leader when a node
/// under the other lock name joins: when the leader goes, the campaign ends
/// with the mixed-path error (and withdraws its node) instead of leading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_candidate_refuses_to_lead_once_a_foreign_node_joined() {
    let server = start_server().await;
    let election = unique_name("queued");
    let dir = format!("/{election}");
    let raw = zk::Client::connect(&server.connect_string())
        .await
        .expect("raw client");
    let leader = curator_style_node(&raw, &dir, "latch-", "java-1").await;
    let e = elector_on(backend(&server.connect_string()).await, &election, "rust-1");
    let h = lock_in_background(&e).await;
    wait_children(&raw, &dir, 2).await;
    let foreign = curator_style_node(&raw, &dir, "lock-", "java-2").await;
    raw.delete(&leader, None)
        .await
        .expect("delete the leader node");
    match timeout(Duration::from_secs(20), h).await {
        Err(_) => panic!("the queued campaign neither led nor failed within 20 s"),
        Ok(r) => match r.expect("task") {
            Ok(l) => panic!(
                "led with token {} next to the foreign node {foreign}",
                l.fencing_token()
            ),
            Err(err) => assert_mixed_path_error("queued campaign", &err, &foreign, "lock-"),
        },
    }
    wait_children(&raw, &dir, 1).await;
}

/// A leasehold leader already leading when a node under the other lock name
/// joins its path: a Curator mutex would sort its own node first and lead
/// too, so the leader's term must end (done signal, with the mixed-path
/// message) at once, not carry on beside it.
/// Failed before the line watch: the term went on for 10 s (renewals do not
/// list the line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sitting_leader_steps_down_when_a_foreign_node_joins() {
    let server = start_server().await;
    let election = unique_name("sitting");
    let dir = format!("/{election}");
    let raw = zk::Client::connect(&server.connect_string())
        .await
        .expect("raw client");
    let e = elector_on(backend(&server.connect_string()).await, &election, "rust-1");
    let leadership = timeout(Duration::from_secs(20), e.lock())
        .await
        .expect("rust-1 leads within 20 s")
        .expect("lock");
    let foreign = curator_style_node(&raw, &dir, "lock-", "java-1").await;
    let reason = timeout(Duration::from_secs(10), leadership.lost())
        .await
        .unwrap_or_else(|_| {
            panic!("the leader still led 10 s after the foreign node {foreign} joined")
        });
    let text = reason.to_string();
    let base = foreign.rsplit('/').next().unwrap_or(&foreign);
    assert!(
        text.contains(base) && text.contains("lock_name"),
        "the loss names the foreign node and the option: {text}"
    );
    leadership.unlock().await.ok();
    wait_children(&raw, &dir, 1).await;
}

/// Campaign, `leader()` and `observe()` of a leasehold candidate on `b` all
/// fail on the mixed path, naming `node` and the lock name to set.
async fn refuses_mixed_path(b: ZkBackend, election: &str, node: &str, option_value: &str) {
    let b: Arc<dyn Backend> = Arc::new(b);
    let e = Elector::new(b, options(election, "rust-1")).expect("options");
    match timeout(Duration::from_secs(10), e.try_lock()).await {
        Ok(Ok(outcome)) => {
            panic!("campaign on a path holding the foreign node {node} must fail, got {outcome:?}")
        }
        Ok(Err(err)) => assert_mixed_path_error("campaign", &err, node, option_value),
        Err(_) => panic!("campaign did not answer within 10 s"),
    }
    match e.leader().await {
        Ok(l) => panic!("leader() on a mixed path must fail, got {l:?}"),
        Err(err) => assert_mixed_path_error("leader()", &err, node, option_value),
    }
    match e.observe().await {
        Ok(rx) => panic!(
            "observe() on a mixed path must fail, got {:?}",
            *rx.borrow()
        ),
        Err(err) => assert_mixed_path_error("observe()", &err, node, option_value),
    }
}

/// Wait (up to 15 s) until `dir` has exactly `n` children; returns them.
async fn wait_children(raw: &zk::Client, dir: &str, n: usize) -> Vec<String> {
    let mut children = Vec::new();
    for _ in 0..150 {
        children = match raw.list_children(dir).await {
            Ok(c) => c,
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => panic!("list {dir}: {e}"),
        };
        if children.len() == n {
            return children;
        }
        sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{dir} has {} children after 15 s, expected {n}: {children:?}",
        children.len()
    );
}

// --- The Java participant ---------------------------------------------------

/// The jars `CuratorParticipant` needs, all from Debian packages.
const JARS: [(&str, &str); 8] = [
    ("curator-recipes.jar", "libcurator-recipes-java"),
    ("curator-framework.jar", "libcurator-framework-java"),
    ("curator-client.jar", "libcurator-client-java"),
    ("zookeeper.jar", "libzookeeper-java"),
    ("zookeeper-jute.jar", "libzookeeper-java"),
    ("guava.jar", "libguava-java"),
    ("slf4j-api.jar", "libslf4j-java"),
    ("slf4j-nop.jar", "libslf4j-java"),
];

const INSTALL: &str =
    "run scripts/setup, or: apt-get install -y libcurator-recipes-java openjdk-17-jdk-headless";

struct JavaSetup {
    classpath: String,
    dir: PathBuf,
}

/// Compile the participant once per test process (into cargo's temp dir
/// for integration tests). Panics, saying how to install, when javac or a
/// jar is missing: never a skip.
fn java() -> &'static JavaSetup {
    static SETUP: OnceLock<Result<JavaSetup, String>> = OnceLock::new();
    let setup = SETUP.get_or_init(|| {
        let java_dir = Path::new("/usr/share/java");
        let mut jars = Vec::new();
        for (jar, package) in JARS {
            let path = java_dir.join(jar);
            if !path.is_file() {
                return Err(format!(
                    "{} is missing (Debian package {package}); {INSTALL}",
                    path.display()
                ));
            }
            jars.push(path.display().to_string());
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("curator-participant-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("java/CuratorParticipant.java");
        let classpath = jars.join(":");
        let out = std::process::Command::new("javac")
            .arg("-d")
            .arg(&dir)
            .arg("-cp")
            .arg(&classpath)
            .arg(&source)
            .output()
            .map_err(|e| format!("cannot run javac: {e}; {INSTALL}"))?;
        if !out.status.success() {
            return Err(format!(
                "javac {} failed: {}",
                source.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(JavaSetup {
            classpath: format!("{classpath}:{}", dir.display()),
            dir,
        })
    });
    match setup {
        Ok(s) => s,
        Err(e) => panic!("the Curator participant cannot be built: {e}"),
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of Java's `System.nanoTime`.
fn mono_nanos() -> i128 {
    let t = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("clock_gettime");
    i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
}

/// Every participant's terms, as each reported them (start, end; nanos).
#[derive(Clone, Default)]
struct Timeline(Arc<Mutex<Vec<Term>>>);

#[derive(Debug, Clone)]
struct Term {
    id: String,
    token: u64,
    start: i128,
    end: Option<i128>,
}

impl Timeline {
    fn start(&self, id: &str, token: u64, at: i128) {
        self.0.lock().unwrap().push(Term {
            id: id.to_owned(),
            token,
            start: at,
            end: None,
        });
    }

    fn end(&self, id: &str, at: i128) {
        let mut terms = self.0.lock().unwrap();
        if let Some(t) = terms
            .iter_mut()
            .rev()
            .find(|t| t.id == id && t.end.is_none())
        {
            t.end = Some(at);
        }
    }

    /// At most one leader at any time, and tokens strictly increase from
    /// term to term. Returns the terms in order.
    fn check(&self) -> Vec<Term> {
        let mut terms = self.0.lock().unwrap().clone();
        terms.sort_by_key(|t| t.start);
        for pair in terms.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let a_end = a.end.unwrap_or(i128::MAX);
            assert!(
                a_end <= b.start,
                "two leaders: {} (until {:?}) and {} (from {}) overlap; terms: {terms:#?}",
                a.id,
                a.end,
                b.id,
                b.start
            );
            assert!(
                b.token > a.token,
                "tokens do not increase from {} to {}: {terms:#?}",
                a.id,
                b.id
            );
        }
        terms
    }
}

#[derive(Debug)]
enum Event {
    Joined,
    Leading { czxid: u64 },
    NotLeading,
    Leader(Vec<u8>),
    Exit,
    Error(String),
}

/// One running `CuratorParticipant`, stopped by its pid (SIGKILL) when
/// dropped while still running.
struct Participant {
    id: String,
    pid: u32,
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::UnboundedReceiver<Event>,
    log: PathBuf,
    timeline: Timeline,
}

impl Participant {
    async fn start(
        server: &ZkServer,
        path: &str,
        mode: &str,
        id: &str,
        timeline: &Timeline,
    ) -> Participant {
        let setup = java();
        let log = setup.dir.join(format!("{id}-{}.log", unique_name("run")));
        let stderr = std::fs::File::create(&log).expect("participant log");
        let mut child = Command::new("java")
            .args([
                "-Xmx64m",
                "-XX:TieredStopAtLevel=1",
                "-cp",
                &setup.classpath,
            ])
            .arg("CuratorParticipant")
            .args([&server.connect_string(), path, mode, id, "2000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start java: {e}; {INSTALL}"));
        let pid = child.id().expect("pid");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (tx, events) = mpsc::unbounded_channel();
        let t = timeline.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            for _ in 0..10_000 {
                let Ok(Some(line)) = lines.next_line().await else {
                    break;
                };
                let f: Vec<&str> = line.split_whitespace().collect();
                let event = match f.as_slice() {
                    ["JOINED", _] => Event::Joined,
                    ["LEADING", id, czxid, at] => {
                        let czxid: u64 = czxid.parse().expect("czxid");
                        t.start(id, czxid, at.parse().expect("nanos"));
                        Event::Leading { czxid }
                    }
                    ["NOT_LEADING", id, at] => {
                        t.end(id, at.parse().expect("nanos"));
                        Event::NotLeading
                    }
                    ["LEADER"] => Event::Leader(Vec::new()),
                    ["LEADER", hex] => Event::Leader(
                        (0..hex.len())
                            .step_by(2)
                            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                            .collect(),
                    ),
                    ["EXIT", _] => Event::Exit,
                    _ => Event::Error(line.clone()),
                };
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        Participant {
            id: id.to_owned(),
            pid,
            child,
            stdin,
            events,
            log,
            timeline: timeline.clone(),
        }
    }

    /// The next event that `pick` accepts (others are dropped), within 20 s.
    async fn expect<T>(&mut self, what: &str, mut pick: impl FnMut(Event) -> Option<T>) -> T {
        let log = self.log.clone();
        let id = self.id.clone();
        let work = async {
            for _ in 0..1000 {
                match self.events.recv().await {
                    Some(Event::Error(line)) => panic!("{id}: {line}"),
                    Some(e) => {
                        if let Some(t) = pick(e) {
                            return t;
                        }
                    }
                    None => panic!(
                        "{id} exited before {what}; its log {}:\n{}",
                        log.display(),
                        std::fs::read_to_string(&log).unwrap_or_default()
                    ),
                }
            }
            panic!("{id}: no {what} in 1000 events");
        };
        timeout(Duration::from_secs(20), work)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{id}: no {what} within 20 s; its log {}:\n{}",
                    log.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
    }

    async fn joined(&mut self) {
        self.expect("JOINED", |e| matches!(e, Event::Joined).then_some(()))
            .await;
    }

    /// Waits for LEADING; returns the czxid Curator's own sort puts first.
    async fn leading(&mut self) -> u64 {
        self.expect("LEADING", |e| match e {
            Event::Leading { czxid } => Some(czxid),
            _ => None,
        })
        .await
    }

    async fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("write to participant");
        stdin.flush().await.expect("flush");
    }

    /// What Curator's `getLeader().getId()` returns, as UTF-8 bytes.
    async fn curator_leader_id(&mut self) -> Vec<u8> {
        self.send("leader").await;
        self.expect("LEADER", |e| match e {
            Event::Leader(id) => Some(id),
            _ => None,
        })
        .await
    }

    /// Graceful: give up leadership (NOT_LEADING first when leading) and exit.
    async fn release(mut self) {
        self.send("release").await;
        self.expect("EXIT", |e| matches!(e, Event::Exit).then_some(()))
            .await;
        timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("participant exits within 20 s of EXIT")
            .expect("wait");
    }

    /// kill -9 by pid; a term it held ends now (it cannot act any more).
    async fn kill9(mut self) {
        self.timeline.end(&self.id, mono_nanos());
        kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL).expect("kill -9");
        timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("killed participant reaped")
            .expect("wait");
    }
}

/// A leasehold candidate's term in the timeline: starts now, ends when the
/// leadership is lost (its own deadline) or released (see `release`).
fn track(timeline: &Timeline, id: &str, l: &Leadership) {
    timeline.start(id, l.fencing_token().get(), mono_nanos());
    let lost = l.lost();
    let (t, id) = (timeline.clone(), id.to_owned());
    tokio::spawn(async move {
        lost.await;
        t.end(&id, mono_nanos());
    });
}

async fn release(timeline: &Timeline, id: &str, l: Leadership) {
    timeline.end(id, mono_nanos());
    l.unlock().await.expect("unlock");
}

fn elector_on(b: ZkBackend, election: &str, id: &str) -> Elector {
    let b: Arc<dyn Backend> = Arc::new(b);
    Elector::new(b, options(election, id)).expect("options")
}

/// Waits (up to 20 s) until `leader()` names `id`; returns it.
async fn leader_becomes(e: &Elector, id: &str) -> LeaderInfo {
    let mut last = None;
    for _ in 0..200 {
        last = e.leader().await.expect("leader()");
        if let Some(l) = &last
            && l.id == id
        {
            return l.clone();
        }
        sleep(Duration::from_millis(100)).await;
    }
    panic!("leader() did not name {id} within 20 s; last {last:?}");
}

/// Waits (up to 20 s) until the observer reports `id`; returns it.
async fn observed(
    rx: &mut tokio::sync::watch::Receiver<Option<LeaderInfo>>,
    id: &str,
    value: &[u8],
) -> LeaderInfo {
    let found = timeout(
        Duration::from_secs(20),
        rx.wait_for(|l| l.as_ref().is_some_and(|l| l.id == id && l.value == value)),
    )
    .await
    .map(|r| r.map(|l| l.clone()));
    match found {
        Ok(Ok(Some(l))) => l,
        Ok(Ok(None)) => unreachable!("wait_for matched a leader"),
        Ok(Err(_)) => panic!("the observer stopped before reporting {id}"),
        Err(_) => panic!(
            "observe() did not report {id} with value {value:?} within 20 s: {:?}",
            *rx.borrow()
        ),
    }
}

async fn lock_in_background(
    e: &Elector,
) -> tokio::task::JoinHandle<leasehold_core::Result<Leadership>> {
    let e = e.clone();
    tokio::spawn(async move { e.lock().await })
}

async fn leads(
    h: tokio::task::JoinHandle<leasehold_core::Result<Leadership>>,
    what: &str,
) -> Leadership {
    timeout(Duration::from_secs(20), h)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not lead within 20 s"))
        .expect("task")
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Curator LeaderLatch participants and leasehold candidates (`latch-`) in
/// one election, through a kill -9 of a Java leader, graceful handovers in
/// both directions and a leasehold leader cut off from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latch_participants_and_leasehold_candidates_share_one_election() {
    let server = start_server().await;
    let cs = server.connect_string();
    let election = unique_name("latch");
    let dir = format!("/{election}");
    let raw = zk::Client::connect(&cs).await.expect("raw client");
    let timeline = Timeline::default();

    let mut j1 = Participant::start(&server, &dir, "latch", "java-1", &timeline).await;
    let czxid1 = j1.leading().await;
    let observer = elector_on(backend(&cs).await, &election, "observer");
    let l = leader_becomes(&observer, "java-1").await;
    assert_eq!(
        l.token.get(),
        czxid1,
        "leasehold and Curator agree on java-1's token"
    );
    let mut rx = observer.observe().await.expect("observe");
    assert_eq!(observed(&mut rx, "java-1", b"").await.token.get(), czxid1);

    // Line: java-1, rust-1, java-2.
    let e1 = elector_on(backend(&cs).await, &election, "rust-1");
    let h1 = lock_in_background(&e1).await;
    wait_children(&raw, &dir, 2).await;
    let mut j2 = Participant::start(&server, &dir, "latch", "java-2", &timeline).await;
    j2.joined().await;
    wait_children(&raw, &dir, 3).await;
    sleep(Duration::from_millis(300)).await;
    assert!(!h1.is_finished(), "rust-1 led while java-1 holds");

    // kill -9 the Java leader: its session expires, rust-1 is next.
    j1.kill9().await;
    let l1 = leads(h1, "rust-1 after java-1 was killed").await;
    track(&timeline, "rust-1", &l1);
    let seen = observed(&mut rx, "rust-1", b"").await;
    assert_eq!(seen.token, l1.fencing_token());
    assert_eq!(
        leader_becomes(&observer, "rust-1").await.token,
        l1.fencing_token()
    );
    // Without a value the node data is exactly the candidate id.
    assert_eq!(j2.curator_leader_id().await, b"rust-1");

    // Graceful handover to Java.
    release(&timeline, "rust-1", l1).await;
    let czxid2 = j2.leading().await;
    assert_eq!(observed(&mut rx, "java-2", b"").await.token.get(), czxid2);
    assert_eq!(
        leader_becomes(&observer, "java-2").await.token.get(),
        czxid2
    );

    // Line: java-2, rust-2 (through a proxy), java-3; graceful handover
    // from Java to leasehold.
    let proxy = Proxy::start(server.client_addr()).await;
    let e2 = elector_on(
        backend(&proxy.addr().to_string()).await,
        &election,
        "rust-2",
    );
    let h2 = lock_in_background(&e2).await;
    wait_children(&raw, &dir, 2).await;
    let mut j3 = Participant::start(&server, &dir, "latch", "java-3", &timeline).await;
    j3.joined().await;
    wait_children(&raw, &dir, 3).await;
    j2.release().await;
    let l2 = leads(h2, "rust-2 after java-2 released").await;
    track(&timeline, "rust-2", &l2);
    assert_eq!(
        observed(&mut rx, "rust-2", b"").await.token,
        l2.fencing_token()
    );

    // The leasehold leader is cut off: it steps down on its own clock, and
    // Java leads once its session has expired.
    proxy.blackhole();
    timeout(Duration::from_secs(20), l2.lost())
        .await
        .expect("rust-2 reports the loss within 20 s");
    let czxid3 = j3.leading().await;
    assert_eq!(observed(&mut rx, "java-3", b"").await.token.get(), czxid3);
    j3.release().await;
    drop(l2);

    let terms = timeline.check();
    let order: Vec<&str> = terms.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(order, ["java-1", "rust-1", "java-2", "rust-2", "java-3"]);
}

/// Curator LeaderSelector and InterProcessMutex participants and leasehold
/// candidates with `lock_name = lock-` in one election.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn selector_and_mutex_participants_share_a_lock_election_with_leasehold() {
    let server = start_server().await;
    let cs = server.connect_string();
    let election = unique_name("lock");
    let dir = format!("/{election}");
    let raw = zk::Client::connect(&cs).await.expect("raw client");
    let timeline = Timeline::default();

    let mut j1 = Participant::start(&server, &dir, "selector", "java-1", &timeline).await;
    let czxid1 = j1.leading().await;
    let observer = elector_on(
        backend_named(&cs, LockName::Lock).await,
        &election,
        "observer",
    );
    assert_eq!(
        leader_becomes(&observer, "java-1").await.token.get(),
        czxid1
    );
    let mut rx = observer.observe().await.expect("observe");

    let e1 = elector_on(
        backend_named(&cs, LockName::Lock).await,
        &election,
        "rust-1",
    );
    let h1 = lock_in_background(&e1).await;
    wait_children(&raw, &dir, 2).await;
    let mut j2 = Participant::start(&server, &dir, "mutex", "java-2", &timeline).await;
    j2.joined().await;
    wait_children(&raw, &dir, 3).await;
    sleep(Duration::from_millis(300)).await;
    assert!(!h1.is_finished(), "rust-1 led while java-1 holds");

    j1.kill9().await;
    let l1 = leads(h1, "rust-1 after java-1 was killed").await;
    track(&timeline, "rust-1", &l1);
    assert_eq!(
        observed(&mut rx, "rust-1", b"").await.token,
        l1.fencing_token()
    );

    release(&timeline, "rust-1", l1).await;
    let czxid2 = j2.leading().await;
    // The mutex node's data is the participant's id (its client's
    // defaultData; Curator's own default is the host's IP address).
    assert_eq!(
        leader_becomes(&observer, "java-2").await.token.get(),
        czxid2
    );
    assert_eq!(observed(&mut rx, "java-2", b"").await.token.get(), czxid2);
    j2.release().await;
    wait_children(&raw, &dir, 0).await;

    let terms = timeline.check();
    let order: Vec<&str> = terms.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(order, ["java-1", "rust-1", "java-2"]);
}

/// leasehold with `latch-` next to a Java InterProcessMutex (and `lock-`
/// next to a LeaderLatch) on one path: refused, naming the node and the
/// option, while the Java participant keeps leading alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_lock_names_with_java_participants_fail_loudly() {
    let server = start_server().await;
    let cs = server.connect_string();
    let raw = zk::Client::connect(&cs).await.expect("raw client");
    let timeline = Timeline::default();
    for (mode, ours, advice) in [
        ("mutex", LockName::Latch, "lock-"),
        ("latch", LockName::Lock, "latch-"),
    ] {
        let election = unique_name(mode);
        let dir = format!("/{election}");
        let mut j = Participant::start(&server, &dir, mode, "java-1", &timeline).await;
        j.leading().await;
        let children = wait_children(&raw, &dir, 1).await;
        let node = format!("{dir}/{}", children[0]);
        refuses_mixed_path(backend_named(&cs, ours).await, &election, &node, advice).await;
        wait_children(&raw, &dir, 1).await;
        j.release().await;
    }
    timeline.check();
}

/// `proclaim` writes the new value into the leader's node in the same term:
/// observers, `leader()` and Curator's `getLeader().getId()` see it; once the
/// node is gone, `proclaim` is `Lost` and the done signal fires, and the
/// Java participant queued behind takes over.
///
/// With a LeaderSelector (`lock-`): a LeaderLatch waiting right behind the
/// leader reacts to nothing but the deletion of the leader's node, and a
/// data change uses up its one-shot watch, so it would not take over (see
/// docs/interop.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proclaim_changes_the_leader_value_in_the_same_term() {
    let server = start_server().await;
    let cs = server.connect_string();
    let election = unique_name("proclaim");
    let dir = format!("/{election}");
    let raw = zk::Client::connect(&cs).await.expect("raw client");
    let timeline = Timeline::default();

    let mut o = options(&election, "rust-1");
    o.value = b"v1".to_vec();
    let b: Arc<dyn Backend> = Arc::new(backend_named(&cs, LockName::Lock).await);
    let e = Elector::new(b, o).expect("options");
    let l = match e.try_lock().await.expect("campaign") {
        Attempt::Leader(l) => l,
        Attempt::Held(h) => panic!("nobody else campaigns, yet {h:?} leads"),
    };
    track(&timeline, "rust-1", &l);
    let token = l.fencing_token();
    let observer = elector_on(
        backend_named(&cs, LockName::Lock).await,
        &election,
        "observer",
    );
    let mut rx = observer.observe().await.expect("observe");
    assert_eq!(observed(&mut rx, "rust-1", b"v1").await.token, token);
    let mut j = Participant::start(&server, &dir, "selector", "java-1", &timeline).await;
    j.joined().await;
    wait_children(&raw, &dir, 2).await;
    assert_eq!(j.curator_leader_id().await, b"rust-1\0v1");

    l.proclaim(b"v2".to_vec()).await.expect("proclaim v2");
    assert_eq!(observed(&mut rx, "rust-1", b"v2").await.token, token);
    let now = observer
        .leader()
        .await
        .expect("leader()")
        .expect("a leader");
    assert_eq!(
        (now.id.as_str(), now.value.as_slice(), now.token),
        ("rust-1", &b"v2"[..], token)
    );
    assert_eq!(j.curator_leader_id().await, b"rust-1\0v2");
    l.proclaim(Vec::new()).await.expect("proclaim empty");
    assert_eq!(observed(&mut rx, "rust-1", b"").await.token, token);
    assert_eq!(j.curator_leader_id().await, b"rust-1");
    assert_eq!(l.value(), b"");

    // The node deleted under the leader: proclaim is Lost, the term ends.
    let children = raw.list_children(&dir).await.expect("list");
    let ours = children
        .iter()
        .find(|c| c.contains("lock-"))
        .and_then(|_| {
            let mut sorted = children.clone();
            sorted.sort_by_key(|c| c.rsplit("lock-").next().map(str::to_owned));
            sorted.into_iter().next()
        })
        .expect("leader node");
    raw.delete(&format!("{dir}/{ours}"), None)
        .await
        .expect("delete leader node");
    let err = l
        .proclaim(b"v3".to_vec())
        .await
        .expect_err("proclaim on a deleted node");
    assert!(err.is_lost(), "{err:?}");
    assert!(l.is_lost());
    j.leading().await;
    j.release().await;
    drop(l);
    let terms = timeline.check();
    let order: Vec<&str> = terms.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(order, ["rust-1", "java-1"]);
}
