//! leasehold-etcd against real etcd: the conformance suite on one node, and
//! the etcd-specific behaviours of issue 4 (handover, partitions, cluster
//! member loss, zombie candidates, no thundering herd).
//!
//! Every test starts its own etcd (single node or 3-member cluster) on free
//! loopback ports through the harness; the harness stops it by pid on drop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold_core::conformance::{Subject, async_trait, run_all};
use leasehold_core::{
    Attempt, Backend, CancellationToken, ElectionOptions, Elector, Error, FencingToken, LeaderInfo,
    LossReason,
};
use leasehold_etcd::EtcdBackend;
use leasehold_integration_tests::{EtcdCluster, EtcdNode, Proxy, unique_name};
use tokio::time::{Instant, sleep, timeout};

async fn start_node() -> EtcdNode {
    EtcdNode::start()
        .await
        .unwrap_or_else(|e| panic!("could not start etcd: {e}"))
}

async fn connect(endpoints: &[String]) -> EtcdBackend {
    EtcdBackend::builder()
        .endpoints(endpoints.iter().cloned())
        .request_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap_or_else(|e| panic!("connecting to {endpoints:?} failed: {e}"))
}

fn options(election: &str, candidate: &str, ttl_secs: u64) -> ElectionOptions {
    ElectionOptions::new(election, candidate).with_ttl(Duration::from_secs(ttl_secs))
}

async fn elector(endpoints: &[String], election: &str, candidate: &str, ttl: u64) -> Elector {
    let backend: Arc<dyn Backend> = Arc::new(connect(endpoints).await);
    Elector::new(backend, options(election, candidate, ttl))
        .unwrap_or_else(|e| panic!("options refused: {e}"))
}

async fn lock_within(e: &Elector, within: Duration, what: &str) -> leasehold_core::Leadership {
    match timeout(within, e.lock()).await {
        Ok(Ok(l)) => l,
        Ok(Err(err)) => panic!("{what}: lock failed: {err}"),
        Err(_) => panic!("{what}: did not lead within {within:?}"),
    }
}

/// The conformance subject: a single etcd node, 2 s leases (etcd's minimum).
struct EtcdSubject {
    endpoints: Vec<String>,
}

#[async_trait]
impl Subject for EtcdSubject {
    async fn client(&self) -> Arc<dyn Backend> {
        Arc::new(connect(&self.endpoints).await)
    }

    fn options(&self, election: &str, candidate: &str) -> ElectionOptions {
        options(election, candidate, 2)
    }

    fn slack(&self) -> Duration {
        // etcd's lessor looks for expired leases every 500 ms; the rest is
        // room for a loaded machine.
        Duration::from_millis(1500)
    }

    /// `etcdctl del --prefix` on the election's keys, as an operator would.
    async fn delete_by_hand(&self, election: &str) {
        let prefix = connect(&self.endpoints).await.election_prefix(election);
        etcdctl_del(&self.endpoints[0], &["--prefix", &prefix]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_on_a_single_node() {
    let node = start_node().await;
    let subject = EtcdSubject {
        endpoints: vec![node.endpoint()],
    };
    timeout(Duration::from_secs(240), run_all(&subject))
        .await
        .expect("the conformance suite did not finish within 240 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_below_two_seconds_is_refused() {
    let backend: Arc<dyn Backend> = Arc::new(connect(&["http://127.0.0.1:1".to_owned()]).await);
    let err = Elector::new(
        backend,
        ElectionOptions::new("e", "c").with_ttl(Duration::from_millis(1500)),
    )
    .expect_err("a 1.5 s ttl must be refused");
    let text = err.to_string();
    assert!(
        matches!(err, Error::InvalidOption { field: "ttl", .. }) && text.contains("minimum"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_is_unavailable_not_a_panic() {
    // A port nobody listens on: bind, note it, close.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let backend = EtcdBackend::builder()
        .endpoints([format!("http://127.0.0.1:{port}")])
        .request_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
        .build()
        .await
        .expect("connecting is lazy and must not fail without auth");
    let started = Instant::now();
    let err = backend
        .leader("anything")
        .await
        .expect_err("a read from a closed port must fail");
    assert!(
        matches!(err, Error::Unavailable { .. } | Error::Timeout { .. }),
        "expected Unavailable or Timeout, got {err:?}"
    );
    assert!(err.is_transient(), "{err:?} must be retried by the engine");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// `unlock()` hands over at once (no wait for lease expiry), so does dropping
/// the guard; tokens strictly increase.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handover_on_unlock_and_on_drop() {
    const TTL: u64 = 10;
    let node = start_node().await;
    let endpoints = vec![node.endpoint()];
    let election = unique_name("handover");
    let a = elector(&endpoints, &election, "alpha", TTL).await;
    let b = elector(&endpoints, &election, "beta", TTL).await;

    let la = lock_within(&a, Duration::from_secs(10), "alpha first").await;
    let b2 = b.clone();
    let waiting = tokio::spawn(async move { b2.lock().await });
    sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "beta led while alpha holds");

    let released = Instant::now();
    let ta = la.fencing_token();
    la.unlock().await.expect("unlock");
    let lb = timeout(Duration::from_secs(5), waiting)
        .await
        .expect("beta did not take over within 5 s of alpha's unlock (ttl is 10 s)")
        .expect("task")
        .expect("beta lock");
    let handover = released.elapsed();
    assert!(
        lb.fencing_token() > ta,
        "token {} after {ta}",
        lb.fencing_token()
    );
    assert_eq!(
        b.leader().await.expect("leader").map(|l| l.id),
        Some("beta".to_owned())
    );

    let a2 = a.clone();
    let waiting = tokio::spawn(async move { a2.lock().await });
    sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "alpha led while beta holds");
    let tb = lb.fencing_token();
    let dropped = Instant::now();
    drop(lb);
    let la = timeout(Duration::from_secs(5), waiting)
        .await
        .expect("alpha did not take over within 5 s of beta's guard being dropped")
        .expect("task")
        .expect("alpha lock");
    assert!(la.fencing_token() > tb);
    eprintln!(
        "handover on unlock: {handover:?}, on drop: {:?}",
        dropped.elapsed()
    );
    la.unlock().await.expect("unlock");
    assert_eq!(a.leader().await.expect("leader"), None);
}

/// A leader cut off by a partition steps down on its own clock before the
/// server expires its lease; the other candidate wins only after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blackholed_leader_steps_down_before_anyone_takes_over() {
    const TTL: u64 = 3;
    let node = start_node().await;
    let proxy = Proxy::start(node.client_addr()).await;
    let election = unique_name("blackhole");
    let a = elector(
        &[format!("http://{}", proxy.addr())],
        &election,
        "alpha",
        TTL,
    )
    .await;
    let b = elector(&[node.endpoint()], &election, "beta", TTL).await;

    let la = lock_within(&a, Duration::from_secs(10), "alpha").await;
    let b2 = b.clone();
    let waiting = tokio::spawn(async move {
        let l = b2.lock().await;
        (Instant::now(), l)
    });
    sleep(Duration::from_millis(500)).await;
    let lost = la.lost();
    proxy.blackhole();
    let cut = Instant::now();

    let reason = timeout(Duration::from_secs(TTL * 2), lost)
        .await
        .expect("alpha did not report leadership lost within 2 ttl of the partition");
    let lost_at = Instant::now();
    let (won_at, lb) = timeout(Duration::from_secs(TTL * 4), waiting)
        .await
        .expect("beta did not take over after alpha's lease expired")
        .expect("task");
    let lb = lb.expect("beta lock");
    assert!(
        matches!(reason, LossReason::Unreachable { .. }),
        "a partitioned leader cannot hear that its lease is gone: {reason}"
    );
    assert!(
        lost_at - cut <= Duration::from_secs(TTL),
        "alpha stepped down {:?} after the cut, later than its ttl",
        lost_at - cut
    );
    assert!(
        lost_at <= won_at,
        "UNSAFE: beta won {:?} before alpha stepped down",
        lost_at - won_at
    );
    assert!(lb.fencing_token() > la.fencing_token());
    eprintln!(
        "partition: alpha lost after {:?}, beta won after {:?}",
        lost_at - cut,
        won_at - cut
    );
    proxy.heal();
    lb.unlock().await.expect("unlock");
}

/// One term of a candidate, as its campaign loop saw it.
#[derive(Debug, Clone)]
struct Term {
    candidate: usize,
    token: FencingToken,
    start: Instant,
    end: Option<Instant>,
}

type Terms = Arc<Mutex<Vec<Term>>>;

/// Campaigns for ever (until `stop`), recording every term.
fn campaign_loop(
    elector: Elector,
    candidate: usize,
    terms: Terms,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let result = elector
            .run(stop, |l| {
                let terms = terms.clone();
                async move {
                    let index = {
                        let mut t = terms.lock().unwrap_or_else(|p| p.into_inner());
                        t.push(Term {
                            candidate,
                            token: l.fencing_token(),
                            start: Instant::now(),
                            end: None,
                        });
                        t.len() - 1
                    };
                    l.lost().await;
                    let mut t = terms.lock().unwrap_or_else(|p| p.into_inner());
                    t[index].end = Some(Instant::now());
                }
            })
            .await;
        if let Err(e) = result {
            panic!("candidate {candidate}: campaign failed: {e}");
        }
    })
}

fn snapshot(terms: &Terms) -> Vec<Term> {
    terms.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// No two terms overlap, and tokens grow with time.
fn assert_no_overlap(terms: &[Term]) {
    let mut sorted = terms.to_vec();
    sorted.sort_by_key(|t| t.start);
    for pair in sorted.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        let end = prev
            .end
            .unwrap_or_else(|| panic!("TWO LEADERS: {prev:?} never ended but {next:?} started"));
        assert!(end <= next.start, "TWO LEADERS: {prev:?} overlaps {next:?}");
        assert!(
            next.token > prev.token,
            "tokens went down: {prev:?} then {next:?}"
        );
    }
}

/// The candidate leading now (a term without an end), waiting up to `within`
/// for one that started after `after`.
async fn current_leader(terms: &Terms, after: Instant, within: Duration, what: &str) -> Term {
    let until = Instant::now() + within;
    loop {
        if let Some(t) = snapshot(terms)
            .into_iter()
            .find(|t| t.end.is_none() && t.start >= after)
        {
            return t;
        }
        assert!(
            Instant::now() < until,
            "{what}: no new leader within {within:?}; terms: {:?}",
            snapshot(terms)
        );
        sleep(Duration::from_millis(50)).await;
    }
}

async fn raft_leader(cluster: &EtcdCluster) -> Option<usize> {
    for (i, m) in cluster.members().iter().enumerate() {
        if !m.is_running() {
            continue;
        }
        if let Ok(resp) = leasehold_integration_tests::http::get(m.client_addr(), "/metrics").await
            && resp
                .body
                .lines()
                .any(|l| l.trim() == "etcd_server_is_leader 1")
        {
            return Some(i);
        }
    }
    None
}

/// 3-member cluster, each candidate talking to one member: killing the
/// member under the leader makes it step down and another candidate take
/// over; killing the raft leader keeps one leader. Never two at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_member_loss_keeps_one_leader() {
    const TTL: u64 = 3;
    let cluster = EtcdCluster::start(3)
        .await
        .unwrap_or_else(|e| panic!("could not start a 3-member etcd cluster: {e}"));
    let endpoints = cluster.endpoints();
    let election = unique_name("cluster");
    let terms: Terms = Arc::default();
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let e = elector(
            std::slice::from_ref(endpoint),
            &election,
            &format!("c{i}"),
            TTL,
        )
        .await;
        tasks.push(campaign_loop(e, i, terms.clone(), stop.clone()));
    }
    let t0 = Instant::now();
    let first = current_leader(&terms, t0, Duration::from_secs(15), "start").await;

    // Kill the member the leader talks to.
    cluster.member(first.candidate).kill();
    let killed = Instant::now();
    let second = current_leader(&terms, killed, Duration::from_secs(TTL * 6), "member kill").await;
    assert_ne!(
        second.candidate, first.candidate,
        "the cut-off candidate cannot lead"
    );
    eprintln!("member kill: new leader after {:?}", second.start - killed);
    cluster
        .member(first.candidate)
        .restart()
        .await
        .unwrap_or_else(|e| panic!("restarting the killed member failed: {e}"));

    // Kill the raft leader (it may or may not be the leader's member).
    let raft = raft_leader(&cluster)
        .await
        .expect("a healthy cluster has a raft leader");
    cluster.member(raft).kill();
    let killed = Instant::now();
    sleep(Duration::from_secs(TTL * 3)).await;
    let now = snapshot(&terms);
    let leading: Vec<_> = now.iter().filter(|t| t.end.is_none()).collect();
    assert_eq!(
        leading.len(),
        1,
        "after killing the raft leader (member {raft}) there must be exactly one leader: {now:?}"
    );
    let holder = leading[0].clone();
    let store = connect(&[endpoints[(raft + 1) % 3].clone()]).await;
    let seen = timeout(Duration::from_secs(10), store.leader(&election))
        .await
        .expect("leader() answered")
        .expect("leader() on a surviving member");
    assert_eq!(
        seen.map(|l| l.token),
        Some(holder.token),
        "the store and the candidates disagree about the leader"
    );
    eprintln!(
        "raft leader kill: candidate c{} leads {:?} after the kill (term started {:?} after it)",
        holder.candidate,
        killed.elapsed(),
        holder.start.checked_duration_since(killed)
    );

    stop.cancel();
    for t in tasks {
        timeout(Duration::from_secs(TTL * 4), t)
            .await
            .expect("a campaign loop did not stop")
            .expect("campaign loop panicked");
    }
    assert_no_overlap(&snapshot(&terms));
}

/// A queued candidate whose lease expires while it is cut off notices after
/// the partition heals and campaigns again with a new lease: it never wins
/// with its dead claim (etcd issue 19597).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_candidate_whose_lease_expired_while_queued_campaigns_again() {
    const TTL: u64 = 2;
    let node = start_node().await;
    let proxy = Proxy::start(node.client_addr()).await;
    let direct = vec![node.endpoint()];
    let election = unique_name("zombie");
    let leader = elector(&direct, &election, "leader", TTL).await;
    let zombie = elector(
        &[format!("http://{}", proxy.addr())],
        &election,
        "zombie",
        TTL,
    )
    .await;
    let patient = elector(&direct, &election, "patient", TTL).await;

    let ll = lock_within(&leader, Duration::from_secs(10), "leader").await;
    let z = zombie.clone();
    let zombie_run = tokio::spawn(async move { z.lock().await });
    sleep(Duration::from_millis(500)).await;
    let p = patient.clone();
    let patient_run = tokio::spawn(async move { p.lock().await });
    sleep(Duration::from_millis(500)).await;

    // Cut the zombie off well past its ttl: etcd expires its lease and key.
    proxy.blackhole();
    sleep(Duration::from_secs(TTL * 3)).await;
    proxy.heal();
    sleep(Duration::from_millis(500)).await;

    let tl = ll.fencing_token();
    ll.unlock().await.expect("unlock");
    let lp = timeout(Duration::from_secs(10), patient_run)
        .await
        .expect("the patient candidate, next in line, did not lead")
        .expect("task")
        .expect("patient lock");
    assert!(
        !zombie_run.is_finished(),
        "the zombie led (or failed) while the patient candidate was next in line"
    );
    assert!(lp.fencing_token() > tl);
    let tp = lp.fencing_token();
    lp.unlock().await.expect("unlock");
    let lz = timeout(Duration::from_secs(TTL * 5), zombie_run)
        .await
        .expect("the re-campaigned candidate did not lead after the others left")
        .expect("task")
        .expect("zombie lock");
    assert!(
        lz.fencing_token() > tp,
        "STALE WIN: the zombie led with token {} from before the patient candidate's {tp}",
        lz.fencing_token()
    );
    assert_eq!(
        zombie.leader().await.expect("leader").map(|l| l.token),
        Some(lz.fencing_token())
    );
    lz.unlock().await.expect("unlock");
}

/// 100 candidates in one process: each release wakes exactly the next one
/// (one watch event per handover, however long the queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_candidates_hand_over_one_by_one_without_a_herd() {
    const N: usize = 100;
    const TTL: u64 = 10;
    let node = start_node().await;
    let shared = Arc::new(connect(&[node.endpoint()]).await);
    let backend: Arc<dyn Backend> = shared.clone();
    let election = unique_name("herd");
    let holders = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..N {
        let e = Elector::new(backend.clone(), options(&election, &format!("c{i}"), TTL))
            .expect("options");
        let (holders, overlaps, tx, shared) = (
            holders.clone(),
            overlaps.clone(),
            tx.clone(),
            shared.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let l = e.lock().await.expect("lock");
            if holders.fetch_add(1, Ordering::SeqCst) != 0 {
                overlaps.fetch_add(1, Ordering::SeqCst);
            }
            let _ = tx.send((l.fencing_token(), shared.stats().watch_events));
            sleep(Duration::from_millis(5)).await;
            holders.fetch_sub(1, Ordering::SeqCst);
            l.unlock().await.expect("unlock");
        }));
    }
    drop(tx);
    for t in tasks {
        timeout(Duration::from_secs(120), t)
            .await
            .expect("the queue did not drain within 120 s")
            .expect("candidate task panicked");
    }
    let mut seen = Vec::new();
    while let Some(x) = rx.recv().await {
        seen.push(x);
    }
    assert_eq!(seen.len(), N, "not every candidate led once");
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "TWO LEADERS at once");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "leaders did not follow the queue order: {:?}",
        seen.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    // Watch events between consecutive acquisitions.
    let per_handover: Vec<u64> = seen.windows(2).map(|w| w[1].1 - w[0].1).collect();
    let total: u64 = per_handover.iter().sum();
    let max = per_handover.iter().copied().max().unwrap_or(0);
    eprintln!(
        "{N} candidates: {total} watch events over {} handovers (max {max} per handover); stats {:?}",
        per_handover.len(),
        shared.stats()
    );
    assert!(
        max <= 3,
        "a handover woke {max} watchers: a thundering herd ({per_handover:?})"
    );
    assert!(
        total <= 2 * per_handover.len() as u64,
        "{total} watch events for {} handovers",
        per_handover.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_lock_on_a_held_election_reports_the_holder() {
    let node = start_node().await;
    let endpoints = vec![node.endpoint()];
    let election = unique_name("try");
    let a = elector(&endpoints, &election, "alpha", 5).await;
    let b = elector(&endpoints, &election, "beta", 5).await;
    let la = lock_within(&a, Duration::from_secs(10), "alpha").await;
    match b.try_lock().await {
        Ok(Attempt::Held(Some(info))) => {
            assert_eq!(info.id, "alpha");
            assert_eq!(info.token, la.fencing_token());
        }
        other => panic!("expected Held(alpha), got {other:?}"),
    }
    la.unlock().await.expect("unlock");
}

/// etcd's built-in auth: no credentials and a wrong password are refused
/// with a typed error; the right ones carry a whole term (KV, lease
/// keep-alive stream, watch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_auth() {
    let node = start_node().await;
    let endpoints = vec![node.endpoint()];
    enable_auth(&node, &[]).await;

    let anonymous = connect(&endpoints).await;
    let err = anonymous
        .leader("x")
        .await
        .expect_err("a read without credentials must be refused");
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");

    let err = EtcdBackend::builder()
        .endpoints(endpoints.iter().cloned())
        .auth("root", "wrong")
        .build()
        .await
        .expect_err("a wrong password must be refused");
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    assert!(!format!("{err:?}").contains("wrong\""), "{err:?}");

    let backend = EtcdBackend::builder()
        .endpoints(endpoints.iter().cloned())
        .auth("root", "rootpw")
        .build()
        .await
        .unwrap_or_else(|e| panic!("login as root: {e}"));
    let election = unique_name("auth");
    let e = Elector::new(Arc::new(backend), options(&election, "alpha", 2)).expect("options");
    let rx = e.observe().await.expect("observe with auth");
    let l = lock_within(&e, Duration::from_secs(10), "auth").await;
    sleep(Duration::from_secs(3)).await;
    assert!(
        !l.is_lost(),
        "renewal with auth failed: {:?}",
        l.loss_reason()
    );
    assert_eq!(
        rx.borrow().as_ref().map(|i| i.token),
        Some(l.fencing_token()),
        "the watch with auth did not see the leader"
    );
    l.unlock().await.expect("unlock");
}

/// An etcd serving https with client-certificate auth, for the TLS test
/// (the harness starts plain http only). Killed by pid when dropped.
struct TlsEtcd {
    _child: tokio::process::Child,
    dir: tempfile::TempDir,
    endpoint: String,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("running openssl failed ({e}); install it with `apt-get install -y openssl`")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TlsEtcd {
    fn start() -> TlsEtcd {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write");
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("write");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec![
            "req",
            "-x509",
            "-days",
            "1",
            "-subj",
            "/CN=leasehold-test-ca",
        ];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
        openssl(d, &ca);
        for (name, cn) in [("server", "/CN=127.0.0.1"), ("client", "/CN=leasehold")] {
            let (key, csr, crt, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("{name}.ext"),
            );
            let mut req = vec!["req", "-subj", cn];
            req.extend(ec);
            req.extend(["-keyout", key.as_str(), "-out", csr.as_str()]);
            openssl(d, &req);
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "1",
                    "-extfile",
                    &ext,
                    "-out",
                    &crt,
                ],
            );
        }
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("https://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(d.join("etcd.log")).expect("log file");
        let child = tokio::process::Command::new("etcd")
            .args(["--name", "tls", "--data-dir"])
            .arg(d.join("data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("tls={peer_url}")])
            .args(["--initial-cluster-state", "new"])
            .arg("--cert-file")
            .arg(d.join("server.crt"))
            .arg("--key-file")
            .arg(d.join("server.key"))
            .arg("--trusted-ca-file")
            .arg(d.join("ca.crt"))
            .arg("--client-cert-auth")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("could not run etcd ({e}); install it with `apt-get install -y etcd-server`")
            });
        TlsEtcd {
            _child: child,
            dir,
            endpoint,
        }
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(name)).expect("read a generated file")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

/// TLS with a private CA and a client certificate: a term works end to end;
/// a client without a certificate gets an error, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate() {
    let etcd = TlsEtcd::start();
    let connect_tls = || {
        EtcdBackend::builder()
            .endpoints([etcd.endpoint.clone()])
            .tls_ca_pem(etcd.read("ca.crt"))
            .tls_client_identity_pem(etcd.read("client.crt"), etcd.read("client.key"))
            .request_timeout(Duration::from_secs(2))
            .build()
    };
    let backend = connect_tls().await.expect("TLS settings are accepted");
    // Ready when a read succeeds: at most 150 tries, 100 ms apart.
    let mut ready = false;
    for _ in 0..150 {
        if backend.leader("probe").await.is_ok() {
            ready = true;
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ready,
        "etcd with TLS did not answer within 15 s; its log:\n{}",
        etcd.log()
    );

    let election = unique_name("tls");
    let e = Elector::new(Arc::new(backend), options(&election, "alpha", 2)).expect("options");
    let l = lock_within(&e, Duration::from_secs(10), "tls").await;
    sleep(Duration::from_secs(3)).await;
    assert!(
        !l.is_lost(),
        "renewal over TLS failed: {:?}",
        l.loss_reason()
    );
    assert_eq!(
        e.leader().await.expect("leader").map(|i| i.token),
        Some(l.fencing_token())
    );
    l.unlock().await.expect("unlock");

    let no_cert = EtcdBackend::builder()
        .endpoints([etcd.endpoint.clone()])
        .tls_ca_pem(etcd.read("ca.crt"))
        .request_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("settings");
    let err = no_cert
        .leader("x")
        .await
        .expect_err("a client without a certificate must be refused");
    eprintln!("without a client certificate: {err}");
}

/// Turns on etcd's auth through its HTTP gateway: user `root` (password
/// `rootpw`, role `root`), then `before` (more gateway calls, made while
/// auth is still off), then `/v3/auth/enable`.
async fn enable_auth(node: &EtcdNode, before: &[(&str, &str)]) {
    let root = [
        ("/v3/auth/role/add", r#"{"name":"root"}"#),
        (
            "/v3/auth/user/add",
            r#"{"name":"root","password":"rootpw"}"#,
        ),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
    ];
    let enable = [("/v3/auth/enable", "{}")];
    for (path, body) in root.iter().chain(before).chain(&enable) {
        let resp = leasehold_integration_tests::http::post(
            node.client_addr(),
            path,
            "application/json",
            body.as_bytes(),
        )
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(resp.status, 200, "{path} {body}: {}", resp.body);
    }
}

/// Runs `etcdctl` as root against `endpoint`; panics with its output on failure.
fn etcdctl_as_root(endpoint: &str, args: &[&str]) {
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--user=root:rootpw")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "could not run etcdctl ({e}); install it with `apt-get install -y etcd-client` (scripts/setup does)"
            )
        });
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn connect_as(endpoints: &[String], user: &str, password: &str) -> Arc<dyn Backend> {
    let backend = EtcdBackend::builder()
        .endpoints(endpoints.iter().cloned())
        .request_timeout(Duration::from_secs(2))
        .auth(user, password)
        .build()
        .await
        .unwrap_or_else(|e| panic!("login as {user}: {e}"));
    Arc::new(backend)
}

fn assert_denied_naming_the_range(err: &Error, election: &str, what: &str) {
    match err {
        Error::PermissionDenied { message, .. } => {
            assert!(
                message.contains(&format!("/leasehold/{election}/"))
                    && message.contains("grant-permission"),
                "{what}: the error must name the range and what to grant: {message}"
            );
        }
        other => panic!("{what}: expected PermissionDenied, got {other:?}"),
    }
}

/// Issue 11 part 6: a user without read permission on the election's keys
/// gets `Error::PermissionDenied` naming the range and what to grant from
/// `leader()`, `observe()` and every way of campaigning, never "no leader".
/// An observer whose read permission is revoked follows its open watch
/// (etcd checks permissions when a watch is created); once that watch breaks
/// (here: etcd restarts) the observer cannot reopen it, and it stops with its
/// channel closed and the last leader it saw, instead of retrying at debug
/// level for ever (before this change: no change and no error for as long
/// as the test watched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_read_permission_gets_an_error_never_no_leader() {
    let node = start_node().await;
    let endpoint = node.endpoint();
    let endpoints = vec![endpoint.clone()];
    // `nobody` may read nothing; `reader` may read every election (the
    // range /leasehold/ .. /leasehold0, base64 in the gateway's JSON).
    enable_auth(
        &node,
        &[
            ("/v3/auth/role/add", r#"{"name":"nothing"}"#),
            (
                "/v3/auth/user/add",
                r#"{"name":"nobody","password":"nobodypw"}"#,
            ),
            ("/v3/auth/user/grant", r#"{"user":"nobody","role":"nothing"}"#),
            ("/v3/auth/role/add", r#"{"name":"reader"}"#),
            (
                "/v3/auth/role/grant",
                r#"{"name":"reader","perm":{"permType":"READ","key":"L2xlYXNlaG9sZC8=","range_end":"L2xlYXNlaG9sZDA="}}"#,
            ),
            (
                "/v3/auth/user/add",
                r#"{"name":"reader","password":"readerpw"}"#,
            ),
            ("/v3/auth/user/grant", r#"{"user":"reader","role":"reader"}"#),
        ],
    )
    .await;
    let election = unique_name("denied");
    let root = Elector::new(
        connect_as(&endpoints, "root", "rootpw").await,
        options(&election, "alpha", 2),
    )
    .expect("options");
    let la = lock_within(&root, Duration::from_secs(10), "root").await;

    let nobody = Elector::new(
        connect_as(&endpoints, "nobody", "nobodypw").await,
        options(&election, "beta", 2),
    )
    .expect("options");
    let err = nobody.leader().await.expect_err("leader() must fail");
    assert_denied_naming_the_range(&err, &election, "leader()");
    let err = nobody.observe().await.expect_err("observe() must fail");
    assert_denied_naming_the_range(&err, &election, "observe()");
    let err = nobody.try_lock().await.expect_err("try_lock() must fail");
    assert_denied_naming_the_range(&err, &election, "try_lock()");
    let err = nobody
        .lock_timeout(Duration::from_secs(30))
        .await
        .expect_err("lock_timeout() must fail, not wait");
    assert_denied_naming_the_range(&err, &election, "lock_timeout()");

    let reader = Elector::new(
        connect_as(&endpoints, "reader", "readerpw").await,
        options(&election, "gamma", 2),
    )
    .expect("options");
    let mut rx = reader.observe().await.expect("reader may observe");
    let seen = rx.borrow_and_update().clone();
    assert_eq!(seen.as_ref().map(|l| l.token), Some(la.fencing_token()));

    etcdctl_as_root(
        &endpoint,
        &[
            "role",
            "revoke-permission",
            "reader",
            "--prefix=true",
            "/leasehold/",
        ],
    );
    let err = reader
        .leader()
        .await
        .expect_err("revoked: leader() must fail");
    assert_denied_naming_the_range(&err, &election, "leader() after the revoke");
    // Break the open watch: the observer must reopen it, and cannot.
    node.restart().await.expect("restart etcd");
    let ended = timeout(Duration::from_secs(30), async {
        loop {
            if rx.changed().await.is_err() {
                return;
            }
            assert!(
                rx.borrow_and_update().is_some(),
                "an observer without permission must never report \"no leader\""
            );
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the observer kept going silently without read permission"
    );
    assert_eq!(*rx.borrow(), seen, "the last leader seen stays");
    drop(la);
}

/// Issue 15: an idle queued candidate sends nothing but its session's lease
/// keep-alives (no periodic re-read, no renewal of its own claim).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_waiter_costs_only_its_sessions_keep_alives() {
    const TTL: u64 = 3;
    let node = start_node().await;
    let election = unique_name("idle");
    let leader = elector(&[node.endpoint()], &election, "leader", TTL).await;
    let ll = lock_within(&leader, Duration::from_secs(10), "leader").await;
    let waiter_backend = Arc::new(connect(&[node.endpoint()]).await);
    let backend: Arc<dyn Backend> = waiter_backend.clone();
    let waiter = Elector::new(backend, options(&election, "waiter", TTL)).expect("options");
    let w = waiter.clone();
    let waiting = tokio::spawn(async move { w.lock().await });
    // Queued, and past its first keep-alive (which opens the stream).
    let renew = waiter.options().renew_interval;
    sleep(renew + Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the waiter led while held");
    let before = waiter_backend.stats();
    let window = Duration::from_secs(TTL * 3);
    sleep(window).await;
    let after = waiter_backend.stats();
    let secs = window.as_secs_f64();
    let requests = after.requests - before.requests;
    let keep_alives = after.keep_alives - before.keep_alives;
    eprintln!(
        "idle etcd waiter, ttl {TTL} s, over {secs} s: {:.2} requests/s, {:.2} keep-alives/s (stats {after:?})",
        requests as f64 / secs,
        keep_alives as f64 / secs
    );
    assert_eq!(
        requests, 0,
        "an idle waiter made {requests} requests (reads, renewals) beyond its keep-alives"
    );
    let intervals = (window.as_millis() / renew.as_millis()) as u64;
    assert!(
        keep_alives <= intervals + 1,
        "{keep_alives} keep-alives in {intervals} renew intervals"
    );
    ll.unlock().await.expect("unlock");
    let lw = timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiter did not lead after the unlock")
        .expect("task")
        .expect("lock");
    lw.unlock().await.expect("unlock");
}

/// Issue 15: 200 electors on one backend instance, each leading an election
/// of its own, share one lease: one keep-alive per renew interval for all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_leaders_on_one_backend_send_one_sessions_keep_alives() {
    const N: usize = 200;
    const TTL: u64 = 3;
    let node = start_node().await;
    let shared = Arc::new(connect(&[node.endpoint()]).await);
    let backend: Arc<dyn Backend> = shared.clone();
    let base = unique_name("shards");
    let mut tasks = Vec::new();
    for i in 0..N {
        let e = Elector::new(
            backend.clone(),
            options(&format!("{base}-{i}"), "node", TTL),
        )
        .expect("options");
        tasks.push(tokio::spawn(async move { e.lock().await }));
    }
    let mut held = Vec::new();
    for t in tasks {
        let l = timeout(Duration::from_secs(60), t)
            .await
            .expect("a shard was not acquired within 60 s")
            .expect("task")
            .expect("lock");
        held.push(l);
    }
    let renew = options("x", "y", TTL).renew_interval;
    // Let every term open its own-key watch.
    sleep(renew).await;
    let before = shared.stats();
    let window = renew * 6;
    sleep(window).await;
    let after = shared.stats();
    let keep_alives = after.keep_alives - before.keep_alives;
    let requests = after.requests - before.requests;
    eprintln!(
        "{N} etcd leaders on one backend over {window:?}: {keep_alives} keep-alives, {requests} other requests, {:.2} keep-alives per renew interval (before {before:?}, after {after:?})",
        keep_alives as f64 / 6.0
    );
    let sessions: std::collections::HashSet<_> = held
        .iter()
        .map(leasehold_core::Leadership::session_id)
        .collect();
    assert_eq!(
        sessions.len(),
        1,
        "{N} leaders on {} sessions",
        sessions.len()
    );
    assert!(sessions.iter().all(Option::is_some));
    assert!(
        keep_alives <= 7,
        "{keep_alives} keep-alives in 6 renew intervals for {N} leaders (one session sends 6)"
    );
    assert_eq!(requests, 0, "idle leaders made {requests} requests");
    assert!(
        after.watch_streams <= 2,
        "{N} own-key watches on {} watch streams: they share one",
        after.watch_streams
    );
    assert!(held.iter().all(|l| !l.is_lost()));
    for l in held {
        l.unlock().await.expect("unlock");
    }
}

/// Issue 15: revoking the shared lease (an admin, with a second client) ends
/// every term on it at once, each with its own done signal (the own-key
/// watch, not the next renewal), and a waiter on it campaigns again with a
/// new lease and leads later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_shared_lease_ends_every_term_and_restarts_its_waiters() {
    // A long ttl: the next keep-alive is 5 s away, so "at once" means the watch.
    const TTL: u64 = 15;
    let node = start_node().await;
    let shared: Arc<dyn Backend> = Arc::new(connect(&[node.endpoint()]).await);
    let other: Arc<dyn Backend> = Arc::new(connect(&[node.endpoint()]).await);
    let base = unique_name("revoke");
    let (e1, e2, e3) = (
        format!("{base}-1"),
        format!("{base}-2"),
        format!("{base}-3"),
    );
    let mk = |b: &Arc<dyn Backend>, e: &str, c: &str| {
        Elector::new(b.clone(), options(e, c, TTL)).expect("options")
    };
    let l1 = lock_within(&mk(&shared, &e1, "x"), Duration::from_secs(10), "l1").await;
    let l2 = lock_within(&mk(&shared, &e2, "x"), Duration::from_secs(10), "l2").await;
    let lz = lock_within(&mk(&other, &e3, "z"), Duration::from_secs(10), "z").await;
    let w = mk(&shared, &e3, "x");
    let waiting = tokio::spawn(async move { w.lock().await });
    sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished());
    let lease = l1.session_id().expect("a session");
    assert_eq!(l2.session_id(), Some(lease), "the leaders share one lease");

    // The admin revokes it (etcdctl lease revoke, here through a second client).
    let revoked_at = Instant::now();
    let leasehold_core::Family::Queue(queue) = other.family() else {
        panic!("etcd is a queue store");
    };
    queue.close_session(lease).await.expect("revoke");
    for (l, what) in [(&l1, "first"), (&l2, "second")] {
        let reason = timeout(Duration::from_secs(2), l.lost())
            .await
            .unwrap_or_else(|_| panic!("the {what} term did not end within 2 s of the revoke"));
        assert!(matches!(reason, LossReason::LeaseLost(_)), "{reason:?}");
    }
    eprintln!(
        "both terms ended {:?} after the revoke",
        revoked_at.elapsed()
    );
    // The waiter learns at its session's next keep-alive and queues again.
    let renew = options("x", "y", TTL).renew_interval;
    sleep(renew + Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "the waiter led while z holds");
    lz.unlock().await.expect("unlock");
    let lw = timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the restarted waiter did not lead after z left")
        .expect("task")
        .expect("lock");
    assert_ne!(lw.session_id(), Some(lease), "it leads on a new lease");
    lw.unlock().await.expect("unlock");
}

/// Issue 15: a leader's key deleted by hand (`etcdctl del`) ends its term at
/// once, through its own-key watch rather than at its next renewal; the
/// other term on the same session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_by_hand_ends_its_term_at_once() {
    // A long ttl: the next keep-alive is 5 s away.
    const TTL: u64 = 15;
    let node = start_node().await;
    let shared = Arc::new(connect(&[node.endpoint()]).await);
    let backend: Arc<dyn Backend> = shared.clone();
    let base = unique_name("deleted");
    let (e1, e2) = (format!("{base}-1"), format!("{base}-2"));
    let a1 = Elector::new(backend.clone(), options(&e1, "a", TTL)).expect("options");
    let a2 = Elector::new(backend, options(&e2, "a", TTL)).expect("options");
    let l1 = lock_within(&a1, Duration::from_secs(10), "l1").await;
    let l2 = lock_within(&a2, Duration::from_secs(10), "l2").await;
    sleep(Duration::from_millis(300)).await;
    let deleted_at = Instant::now();
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", node.endpoint()))
        .args(["del", "--prefix", &shared.election_prefix(&e1)])
        .output()
        .unwrap_or_else(|e| {
            panic!("could not run etcdctl ({e}); install it with `apt-get install -y etcd-client`")
        });
    assert!(
        out.status.success(),
        "etcdctl del: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reason = timeout(Duration::from_secs(2), l1.lost())
        .await
        .expect("the term did not end within 2 s of the delete (renewals are 5 s apart)");
    assert!(matches!(reason, LossReason::LeaseLost(_)), "{reason:?}");
    eprintln!("the term ended {:?} after the delete", deleted_at.elapsed());
    sleep(Duration::from_secs(1)).await;
    assert!(!l2.is_lost(), "the other term on the session ended too");
    let b = elector(&[node.endpoint()], &e1, "b", TTL).await;
    let lb = lock_within(&b, Duration::from_secs(5), "b").await;
    assert!(lb.fencing_token() > l1.fencing_token());
    lb.unlock().await.expect("unlock");
    l2.unlock().await.expect("unlock");
}

/// Runs `etcdctl del ARGS` against `endpoint` (no auth), as an operator
/// would; panics with its output unless it deleted exactly one key.
async fn etcdctl_del(endpoint: &str, args: &[&str]) {
    let out = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("del")
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "could not run etcdctl ({e}); install it with `apt-get install -y etcd-client` (scripts/setup does)"
            )
        });
    assert!(
        out.status.success(),
        "etcdctl del {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "etcdctl del {args:?} deleted nothing"
    );
}

/// Issue 20 §2: a leader's key deleted by hand while the shared own-key
/// watch stream reconnects ends its term at once. The leader's connection is
/// reset twice (each reset breaks the stream its own-key watch rides), the
/// second time just before `etcdctl del` of its key; a waiting candidate on
/// another connection then leads. The deposed leader's done signal must come
/// within 1 s of the delete (renewals are 5 s apart; a retry interval of 5 s
/// makes a blind back-off after a broken watch plain to see).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_while_the_watch_stream_reconnects_ends_its_term_at_once() {
    let node = start_node().await;
    let proxy = Proxy::start(node.client_addr()).await;
    key_deleted_while_the_watch_stream_reconnects(
        "single node",
        &proxy,
        &node.endpoint(),
        &node.endpoint(),
    )
    .await;
}

/// Issue 20 §2 on a 3-member cluster: the leader talks to member 1 through
/// the proxy, the next candidate to member 2, and `etcdctl del` goes to
/// member 3, so the deletion reaches the leader's member only through raft
/// while its watch stream reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_key_deleted_while_the_watch_stream_reconnects_ends_its_term_at_once() {
    let cluster = EtcdCluster::start(3)
        .await
        .unwrap_or_else(|e| panic!("could not start a 3-member etcd cluster: {e}"));
    let proxy = Proxy::start(cluster.member(0).client_addr()).await;
    key_deleted_while_the_watch_stream_reconnects(
        "cluster",
        &proxy,
        &cluster.member(1).endpoint(),
        &cluster.member(2).endpoint(),
    )
    .await;
}

/// The body of the two tests above. The leader `a` reaches the store
/// through `proxy` only (whose resets break its watch stream); the next
/// candidate `b` talks to `b_endpoint`; the key is deleted with `etcdctl`
/// on `del_endpoint`.
async fn key_deleted_while_the_watch_stream_reconnects(
    what: &str,
    proxy: &Proxy,
    b_endpoint: &str,
    del_endpoint: &str,
) {
    const TTL: u64 = 15;
    const ROUNDS: usize = 3;
    let a_backend = Arc::new(connect(&[format!("http://{}", proxy.addr())]).await);
    let b_backend: Arc<dyn Backend> = Arc::new(connect(&[b_endpoint.to_owned()]).await);
    let base = unique_name("reconnect-del");
    let started = Instant::now();
    let mut late = Vec::new();
    for round in 0..ROUNDS {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{what}: the rounds took too long"
        );
        let election = format!("{base}-{round}");
        let mut a_options = options(&election, "a", TTL);
        a_options.retry_interval = Duration::from_secs(5);
        let a_dyn: Arc<dyn Backend> = a_backend.clone();
        let a = Elector::new(a_dyn, a_options).expect("options");
        let la = lock_within(&a, Duration::from_secs(10), "a").await;
        let key = format!(
            "{}{:016x}",
            a_backend.election_prefix(&election),
            la.session_id().expect("a session") as u64
        );
        let b = Elector::new(b_backend.clone(), options(&election, "b", TTL)).expect("options");
        let b_task = tokio::spawn(async move {
            let lb = b.lock().await.expect("b: lock");
            (Instant::now(), lb)
        });
        sleep(Duration::from_millis(300)).await;
        // The first reset: the watch breaks and is watched again.
        proxy.reset_all();
        sleep(Duration::from_millis(1500)).await;
        assert!(
            !la.is_lost(),
            "{what}, round {round}: a reset alone ended the term"
        );
        // The done signal's instant, taken as it fires (etcdctl takes longer).
        let lost = la.lost();
        let lost = tokio::spawn(async move {
            let reason = lost.await;
            (Instant::now(), reason)
        });
        // The second reset, then the delete while the stream reconnects.
        proxy.reset_all();
        let deleting = Instant::now();
        etcdctl_del(del_endpoint, &[&key]).await;
        let deleted = Instant::now();
        let (done, reason) = timeout(Duration::from_secs(12), lost)
            .await
            .unwrap_or_else(|_| panic!("{what}, round {round}: the term did not end within 12 s"))
            .expect("the done signal's task");
        let (b_led, lb) = timeout(Duration::from_secs(5), b_task)
            .await
            .unwrap_or_else(|_| {
                panic!("{what}, round {round}: b did not lead within 5 s of the delete")
            })
            .expect("b's task");
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let after_delete = done.saturating_duration_since(deleting);
        let (sign, gap) = if done >= b_led {
            ("after", done - b_led)
        } else {
            ("before", b_led - done)
        };
        eprintln!(
            "{what}, round {round}: etcdctl del took {:.1} ms; the deposed leader's done signal came {:.1} ms after the delete was sent ({reason}), {:.1} ms {sign} the next leader led ({:.1} ms after the delete was sent)",
            ms(deleted - deleting),
            ms(after_delete),
            ms(gap),
            ms(b_led.saturating_duration_since(deleting)),
        );
        assert!(
            matches!(reason, LossReason::LeaseLost(_)),
            "{what}, round {round}: {reason:?}"
        );
        assert!(
            lb.fencing_token() > la.fencing_token(),
            "{what}, round {round}: the new term's token {} is not above {}",
            lb.fencing_token(),
            la.fencing_token()
        );
        if after_delete > Duration::from_secs(1) {
            late.push((round, after_delete));
        }
        lb.unlock().await.expect("unlock b");
    }
    assert!(
        late.is_empty(),
        "{what}: the deposed leader's done signal came more than 1 s after the delete (round, delay): {late:?}"
    );
}

/// The index of an endpoint whose member is a raft follower (asked of each
/// member: its id against the leader it knows).
async fn raft_follower(endpoints: &[String]) -> usize {
    for _ in 0..50 {
        for (i, ep) in endpoints.iter().enumerate() {
            let Ok(mut c) = leasehold_etcd::etcd_client::Client::connect([ep.as_str()], None).await
            else {
                continue;
            };
            if let Ok(st) = c.status().await {
                let me = st.header().map_or(0, |h| h.member_id());
                if st.leader() != 0 && st.leader() != me {
                    return i;
                }
            }
        }
        sleep(Duration::from_millis(200)).await;
    }
    panic!("no etcd member reported itself a follower of a known leader within 10 s");
}

/// Issue 20 §4: an own-key watch on a member cut off from its peers sees no
/// deletions made by the others. The client asks etcd to require a leader
/// on its streams (`ConnectOptions::with_require_leader(true)`, the
/// `hasleader` metadata Go's client sends, on every call including Watch),
/// so the cut-off member cancels the shared watch stream after a few
/// election timeouts; but what bounds the term is the keep-alive path: the
/// session's keep-alive needs the raft leader, so the leader's done signal
/// fires at its local deadline (`ttl - safety_margin` after the last
/// keep-alive sent), before etcd can end the lease, and so before anyone
/// else can lead. The harness cannot cut one member off while the others
/// serve, so the two others are frozen (SIGSTOP): the member the leader
/// talks to then has no leader, as behind a partition. That member is a
/// raft follower: a raft leader cut off from its peers still answers
/// keep-alives from its own lessor until it steps down (an election
/// timeout or so), which moves the local deadline on by that much; etcd
/// extends every lease when a new raft leader takes over, so that is safe,
/// but it is not the case this test times.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_on_a_member_cut_off_from_its_peers_steps_down_at_its_deadline() {
    const TTL: u64 = 6;
    let cluster = EtcdCluster::start(3)
        .await
        .unwrap_or_else(|e| panic!("could not start a 3-member etcd cluster: {e}"));
    let endpoints = cluster.endpoints();
    let cut_off = raft_follower(&endpoints).await;
    let election = unique_name("cut-off");
    let a_backend = Arc::new(connect(std::slice::from_ref(&endpoints[cut_off])).await);
    let a_dyn: Arc<dyn Backend> = a_backend.clone();
    let a = Elector::new(a_dyn, options(&election, "a", TTL)).expect("options");
    let la = lock_within(&a, Duration::from_secs(15), "a").await;
    let others: Vec<usize> = (0..3).filter(|&i| i != cut_off).collect();
    let b = elector(
        std::slice::from_ref(&endpoints[others[0]]),
        &election,
        "b",
        TTL,
    )
    .await;
    let b_task = tokio::spawn(async move {
        let lb = b.lock().await.expect("b: lock");
        (Instant::now(), lb)
    });
    sleep(Duration::from_millis(500)).await;
    let before = a_backend.stats();
    let deadline = la.deadline();
    // A follower is cut off: its peers (the raft leader among them) are
    // frozen.
    cluster.member(others[0]).pause();
    cluster.member(others[1]).pause();
    let cut = Instant::now();
    let reason = timeout(Duration::from_secs(TTL + 4), la.lost()).await;
    let done = Instant::now();
    // Let the watch stream's cancellation ("no leader", after 3 election
    // timeouts) show in the counters if it has not yet.
    sleep(Duration::from_secs(1)).await;
    let after = a_backend.stats();
    cluster.member(others[0]).resume();
    cluster.member(others[1]).resume();
    let reason = reason.unwrap_or_else(|_| {
        panic!("the leader on the cut-off member did not step down within {TTL} s + 4 s")
    });
    eprintln!(
        "the done signal came {:?} after the cut ({reason}); {:?} after the deadline known at the cut; own-key watches registered during the cut: {}, watch streams opened: {}",
        done - cut,
        done.saturating_duration_since(deadline),
        after.watches_opened - before.watches_opened,
        after.watch_streams - before.watch_streams,
    );
    assert!(
        matches!(reason, LossReason::Unreachable { .. }),
        "{reason:?}"
    );
    assert!(
        done - cut < Duration::from_secs(TTL),
        "the done signal came {:?} after the cut, not within the ttl",
        done - cut
    );
    let (b_led, lb) = timeout(Duration::from_secs(TTL * 4), b_task)
        .await
        .expect("b did not lead after the heal")
        .expect("b's task");
    eprintln!("b led {:?} after the cut", b_led - cut);
    assert!(b_led > done, "b led before a's done signal");
    assert!(lb.fencing_token() > la.fencing_token());
    lb.unlock().await.expect("unlock b");
}

/// Issue 24: a write guarded by `leader_guard` lands while the term lasts
/// and never after it: not after an unlock, not after the lease is revoked,
/// not after the key is deleted by hand. The backend is built on the
/// application's own client (`EtcdBuilder::client`) and hands it out again
/// (`EtcdBackend::client`): one connection for the elections and the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_write_lands_only_while_the_term_lasts() {
    use leasehold_etcd::etcd_client::{Txn, TxnOp};
    let node = start_node().await;
    let own = leasehold_etcd::etcd_client::Client::connect([node.endpoint()], None)
        .await
        .expect("the application's client");
    let backend = EtcdBackend::builder()
        .client(own)
        .request_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("a backend on the application's client");
    let shared: Arc<dyn Backend> = Arc::new(backend.clone());
    let election = unique_name("guarded");
    let data = format!("app-data/{election}");
    let e = Elector::new(shared.clone(), options(&election, "a", 3)).expect("options");
    let guarded_put = |l: &leasehold_core::Leadership, value: &'static str| {
        let txn = Txn::new()
            .when([leasehold_etcd::leader_guard(l)])
            .and_then([TxnOp::put(data.clone(), value, None)]);
        let mut kv = backend.client().kv_client();
        async move { kv.txn(txn).await.expect("txn").succeeded() }
    };

    // While leading: the write lands.
    let l1 = lock_within(&e, Duration::from_secs(5), "l1").await;
    assert!(
        guarded_put(&l1, "term 1").await,
        "the leader's write did not land"
    );
    // After unlock: it does not.
    l1.clone().unlock().await.expect("unlock");
    assert!(
        !guarded_put(&l1, "after unlock").await,
        "a write guarded by an ended term landed"
    );

    // After the lease is revoked (an admin's `etcdctl lease revoke`).
    let l2 = lock_within(&e, Duration::from_secs(5), "l2").await;
    assert!(guarded_put(&l2, "term 2").await);
    let lease = l2.session_id().expect("a session");
    let admin = connect(&[node.endpoint()]).await;
    let leasehold_core::Family::Queue(queue) = admin.family() else {
        panic!("etcd is a queue store");
    };
    queue.close_session(lease).await.expect("revoke");
    assert!(
        !guarded_put(&l2, "after revoke").await,
        "a write guarded by a revoked lease's term landed"
    );
    timeout(Duration::from_secs(3), l2.lost())
        .await
        .expect("the term did not end after the revoke");

    // After the key is deleted by hand.
    let l3 = lock_within(&e, Duration::from_secs(5), "l3").await;
    assert!(guarded_put(&l3, "term 3").await);
    etcdctl_del(
        &node.endpoint(),
        &["--prefix", &backend.election_prefix(&election)],
    )
    .await;
    assert!(
        !guarded_put(&l3, "after delete").await,
        "a write guarded by a deleted key's term landed"
    );

    let mut kv = backend.client().kv_client();
    let value = kv.get(data.as_str(), None).await.expect("read");
    assert_eq!(
        value.kvs().first().map(|kv| kv.value().to_vec()),
        Some(b"term 3".to_vec()),
        "only the writes of live terms landed"
    );
    let _ = l3.unlock().await;

    // Settings beside an own client are refused in the user's words.
    let err = EtcdBackend::builder()
        .client(backend.client())
        .endpoints([node.endpoint()])
        .build()
        .await
        .expect_err("endpoints beside a client");
    assert!(err.to_string().contains("own connection settings"), "{err}");
}

/// A line observer (`observe_participants`) on etcd costs one range and one
/// watch stream when it starts, then no request at all: idle, and for each
/// change (a candidate joining, the leader leaving), it keeps the line from
/// the watch's events. Counted on the observer's own backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_observer_reads_nothing_per_change() {
    const TTL: u64 = 3;
    let node = start_node().await;
    let election = unique_name("line-cost");
    let observer_backend = Arc::new(connect(&[node.endpoint()]).await);
    let backend: Arc<dyn Backend> = observer_backend.clone();
    let observer =
        Elector::observer(backend, options(&election, "observer", TTL)).expect("options");
    let start = observer_backend.stats();
    let rx = observer
        .observe_participants()
        .await
        .expect("observe_participants");
    let opened = observer_backend.stats();
    assert!(rx.borrow().is_empty(), "nobody yet: {:?}", *rx.borrow());

    let a = elector(&[node.endpoint()], &election, "alpha", TTL).await;
    let b = elector(&[node.endpoint()], &election, "beta", TTL).await;
    let la = lock_within(&a, Duration::from_secs(10), "alpha").await;
    let waiting_b = tokio::spawn(async move { b.lock().await });
    let ids = |rx: &tokio::sync::watch::Receiver<Vec<LeaderInfo>>| {
        rx.borrow().iter().map(|p| p.id.clone()).collect::<Vec<_>>()
    };
    let want = |rx: &tokio::sync::watch::Receiver<Vec<LeaderInfo>>,
                want: &'static [&'static str]| {
        let mut rx = rx.clone();
        async move {
            timeout(
                Duration::from_secs(10),
                rx.wait_for(|l| l.iter().map(|p| p.id.as_str()).eq(want.iter().copied())),
            )
            .await
            .unwrap_or_else(|_| panic!("the line never became {want:?}"))
            .expect("the line watch stopped");
        }
    };
    want(&rx, &["alpha", "beta"]).await;
    la.unlock().await.expect("unlock");
    let lb = timeout(Duration::from_secs(10), waiting_b)
        .await
        .expect("beta leads")
        .expect("beta's task")
        .expect("beta's lock");
    want(&rx, &["beta"]).await;
    lb.unlock().await.expect("unlock");
    want(&rx, &[]).await;
    let changed = observer_backend.stats();
    sleep(Duration::from_secs(TTL)).await;
    let idle = observer_backend.stats();
    eprintln!(
        "etcd line observer: opening {} requests, {} watch streams; 4 changes: {} requests, {} watch events; idle {TTL} s: {} requests",
        opened.requests - start.requests,
        opened.watch_streams - start.watch_streams,
        changed.requests - opened.requests,
        changed.watch_events - opened.watch_events,
        idle.requests - changed.requests,
    );
    assert_eq!(
        changed.requests - opened.requests,
        0,
        "the line observer made requests for its changes (stats {changed:?})"
    );
    assert_eq!(
        idle.requests - changed.requests,
        0,
        "an idle line observer made requests"
    );
    assert!(ids(&rx).is_empty());
}
