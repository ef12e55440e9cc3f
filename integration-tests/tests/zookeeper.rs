//! leasehold-zookeeper against real ZooKeeper: the conformance suite on a
//! standalone server, and the ZooKeeper-specific behaviours of issue 5
//! (handover, partitions, ensemble member and leader loss, ACLs, a hundred
//! candidates without a herd, option checks).
//!
//! Every test starts its own ZooKeeper (standalone or a 3-member ensemble,
//! tickTime 500 ms) on free loopback ports through the harness, which stops it
//! by pid on drop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use leasehold_core::conformance::{Subject, async_trait, run_all};
use leasehold_core::{
    AcquireRequest, Attempt, Backend, ElectionOptions, Elector, Error, Leadership, LossReason,
    QueueOutcome, QueueStore, WatchLeader,
};
use leasehold_integration_tests::{Proxy, ZkEnsemble, ZkServer, create_zk_path, unique_name};
use leasehold_zookeeper::ZkBackend;
use leasehold_zookeeper::zookeeper_client as zk;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

/// The conformance ttl (= session timeout): short, but long enough for a JVM
/// on a busy 2-core machine not to expire healthy sessions.
const TTL: Duration = Duration::from_secs(3);

async fn start_server() -> ZkServer {
    ZkServer::start()
        .await
        .unwrap_or_else(|e| panic!("could not start ZooKeeper: {e}"))
}

async fn connect(connect_string: &str, session: Duration) -> ZkBackend {
    ZkBackend::builder()
        .connect_string(connect_string)
        .session_timeout(session)
        .connect_timeout(Duration::from_secs(15))
        .build()
        .await
        .unwrap_or_else(|e| panic!("connecting to {connect_string} failed: {e}"))
}

fn options(election: &str, candidate: &str, ttl: Duration) -> ElectionOptions {
    ElectionOptions::new(election, candidate).with_ttl(ttl)
}

/// The session for a ttl: the ttl itself (the session is the lease, the
/// ttl the failover bound; the leader's deadline fits inside it).
fn session_for(ttl: Duration) -> Duration {
    ZkBackend::min_session_timeout(&options("any", "any", ttl))
}

async fn elector(connect_string: &str, election: &str, candidate: &str, ttl: Duration) -> Elector {
    let backend: Arc<dyn Backend> = Arc::new(connect(connect_string, session_for(ttl)).await);
    Elector::new(backend, options(election, candidate, ttl))
        .unwrap_or_else(|e| panic!("options refused: {e}"))
}

async fn lock_within(e: &Elector, within: Duration, what: &str) -> Leadership {
    match timeout(within, e.lock()).await {
        Ok(Ok(l)) => l,
        Ok(Err(err)) => panic!("{what}: lock failed: {err}"),
        Err(_) => panic!("{what}: did not lead within {within:?}"),
    }
}

/// A first attempt's request, as the engine would send it.
fn request(election: &str, candidate: &str, value: &[u8], ttl: Duration) -> AcquireRequest {
    AcquireRequest {
        election: election.to_owned(),
        candidate: candidate.to_owned(),
        value: value.to_vec(),
        ttl,
        expired_revision: None,
        permits: 1,
    }
}

/// `e` campaigns in the background; 300 ms later it must still be waiting.
async fn queue_behind(
    e: &Elector,
    holder: &str,
) -> tokio::task::JoinHandle<leasehold_core::Result<Leadership>> {
    let e2 = e.clone();
    let waiting = tokio::spawn(async move { e2.lock().await });
    sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "{} led while {holder} holds",
        e.options().candidate_id
    );
    waiting
}

/// The queued candidate's leadership, once `what` happened.
async fn takes_over(
    waiting: tokio::task::JoinHandle<leasehold_core::Result<Leadership>>,
    what: &str,
) -> Leadership {
    timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap_or_else(|_| panic!("no takeover within 5 s of {what}"))
        .expect("task")
        .unwrap_or_else(|e| panic!("lock after {what}: {e}"))
}

/// A client the subject made (held weakly) and its proxy.
type Link = (Weak<dyn Backend>, Arc<Proxy>);

/// The conformance subject: a standalone server; every client reaches it
/// through its own fault proxy, so that `vanish` can cut one client's link
/// (its session then expires on the server, as a crashed process's would).
struct ZkSubject {
    server: SocketAddr,
    /// Each client made, held weakly (a dropped client's entry never
    /// matches again, even when a new client gets its address), and its
    /// proxy.
    links: Mutex<Vec<Link>>,
}

impl ZkSubject {
    fn link(&self, client: &Arc<dyn Backend>) -> Arc<Proxy> {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links
            .iter()
            .find(|(c, _)| c.upgrade().is_some_and(|c| Arc::ptr_eq(&c, client)))
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| panic!("vanish/revive of a client this subject did not make"))
    }
}

#[async_trait]
impl Subject for ZkSubject {
    async fn client(&self) -> Arc<dyn Backend> {
        let proxy = Arc::new(Proxy::start(self.server).await);
        let client: Arc<dyn Backend> =
            Arc::new(connect(&proxy.addr().to_string(), session_for(TTL)).await);
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        // The proxies of dropped clients go (their connections are closed).
        links.retain(|(c, _)| c.strong_count() > 0);
        links.push((Arc::downgrade(&client), proxy));
        drop(links);
        client
    }

    fn options(&self, election: &str, candidate: &str) -> ElectionOptions {
        options(election, candidate, TTL)
    }

    fn slack(&self) -> Duration {
        // The session is the ttl (session_for); the server expires
        // sessions on tick boundaries (500 ms); then a watch
        // notification and one round trip; the rest is room for a loaded
        // machine.
        Duration::from_secs(3)
    }

    async fn vanish(&self, client: &Arc<dyn Backend>) {
        self.link(client).blackhole();
    }

    async fn revive(&self, client: &Arc<dyn Backend>) {
        self.link(client).heal();
    }

    /// Deletes the leader's node through a session of its own.
    async fn delete_by_hand(&self, election: &str) {
        let admin = connect(&self.server.to_string(), session_for(TTL)).await;
        let dir = format!("/{election}");
        let leader = first_in_line(&admin.client(), &dir).await;
        admin
            .client()
            .delete(&format!("{dir}/{leader}"), None)
            .await
            .expect("delete the leader's node");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_on_a_standalone_server() {
    let server = start_server().await;
    let subject = ZkSubject {
        server: server.client_addr(),
        links: Mutex::new(Vec::new()),
    };
    timeout(Duration::from_secs(300), run_all(&subject))
        .await
        .expect("the conformance suite did not finish within 300 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_longer_than_the_session_is_refused() {
    let server = start_server().await;
    // tickTime 500 ms: the server grants at most 10 s.
    let backend = connect(&server.connect_string(), Duration::from_secs(30)).await;
    assert_eq!(backend.session_timeout(), Duration::from_secs(10));
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let err = Elector::new(backend.clone(), options("e", "c", Duration::from_secs(15)))
        .expect_err("a ttl above the negotiated session timeout must be refused");
    let text = err.to_string();
    assert!(
        matches!(err, Error::InvalidOption { field: "ttl", .. })
            && text.contains("10s")
            && text.contains("session"),
        "{text}"
    );
    // A ttl up to the session fits: the session is the lease, and the
    // leader's deadline (ttl - margin - renew interval) comes inside it.
    // Curator's own setting, session = ttl, is accepted.
    let fits = options("e", "c", Duration::from_secs(10));
    assert_eq!(
        ZkBackend::min_session_timeout(&fits),
        Duration::from_secs(10)
    );
    Elector::new(backend.clone(), fits.clone()).expect("ttl 10s fits a 10s session");
    // One backend is one session: an own session is refused, with the way out.
    let err = Elector::new(backend.clone(), fits.with_own_session())
        .expect_err("own_session cannot split one ZooKeeper session");
    assert!(
        matches!(
            err,
            Error::InvalidOption {
                field: "own_session",
                ..
            }
        ) && err.to_string().contains("ZkBackend of its own"),
        "{err}"
    );
    let err = Elector::new(backend, options("a/../b", "c", Duration::from_secs(10)))
        .expect_err("a path ZooKeeper refuses must be refused");
    assert!(
        matches!(
            err,
            Error::InvalidOption {
                field: "election",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_an_error_not_a_hang() {
    // A port nothing listens on (a server started and stopped).
    let addr = {
        let server = start_server().await;
        server.client_addr()
    };
    let started = Instant::now();
    let result = timeout(
        Duration::from_secs(20),
        ZkBackend::builder()
            .connect_string(addr.to_string())
            .session_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(3))
            .build(),
    )
    .await
    .expect("connect must respect its connect timeout");
    match result {
        Err(e) => assert!(e.is_transient(), "{e}"),
        Ok(b) => panic!("connected to a dead server: {b:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handover_on_unlock_on_guard_drop_and_on_client_drop() {
    let server = start_server().await;
    let cs = server.connect_string();
    let election = unique_name("handover");
    let ttl = Duration::from_secs(8);
    let a = elector(&cs, &election, "alpha", ttl).await;
    let b = elector(&cs, &election, "beta", ttl).await;

    let la = lock_within(&a, Duration::from_secs(10), "alpha first").await;
    let waiting = queue_behind(&b, "alpha").await;
    let ta = la.fencing_token();
    let released = Instant::now();
    la.unlock().await.expect("unlock");
    let lb = takes_over(waiting, "alpha's unlock").await;
    let on_unlock = released.elapsed();
    let tb = lb.fencing_token();
    assert!(tb > ta, "token {tb} after {ta}");
    assert_eq!(
        b.leader().await.expect("leader").map(|l| l.id),
        Some("beta".to_owned())
    );

    // Dropping the guard releases in the background.
    let waiting = queue_behind(&a, "beta").await;
    let dropped = Instant::now();
    drop(lb);
    let la = takes_over(waiting, "beta's guard being dropped").await;
    let on_drop = dropped.elapsed();
    let ta2 = la.fencing_token();
    assert!(ta2 > tb);
    la.unlock().await.expect("unlock");

    // A client that goes away without releasing (its last handle dropped):
    // its session is closed, the server deletes its node at once, long
    // before the session could expire.
    let ghost = connect(&cs, ttl).await;
    let ghost_claim = match ghost
        .join(&request(&election, "ghost", b"", ttl), ghost.session_id())
        .await
    {
        Ok(QueueOutcome::Acquired(c)) => c,
        other => panic!("ghost should lead a free election: {other:?}"),
    };
    assert!(ghost_claim.token > ta2);
    let waiting = queue_behind(&a, "the ghost").await;
    let gone = Instant::now();
    drop(ghost);
    let la = takes_over(waiting, "the ghost client being dropped").await;
    let on_client_drop = gone.elapsed();
    assert!(la.fencing_token() > ghost_claim.token);
    eprintln!(
        "handover on unlock: {on_unlock:?}, on guard drop: {on_drop:?}, on client drop: {on_client_drop:?}"
    );
    la.unlock().await.expect("unlock");
    assert_eq!(a.leader().await.expect("leader"), None);
}

/// A leader whose link is black-holed steps down on its own clock before
/// the server can expire its session; the follower wins only after the
/// server expired it; the old leader later campaigns on a new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blackholed_leader_steps_down_before_the_server_expires_it() {
    let server = start_server().await;
    let proxy = Proxy::start(server.client_addr()).await;
    let election = unique_name("partition");
    let leader = elector(&proxy.addr().to_string(), &election, "cut-off", TTL).await;
    let follower = elector(&server.connect_string(), &election, "follower", TTL).await;
    let l = lock_within(&leader, Duration::from_secs(10), "first leader").await;
    let f2 = follower.clone();
    let waiting = tokio::spawn(async move {
        let l = f2.lock().await;
        (l, Instant::now())
    });
    sleep(TTL).await;
    assert!(
        !waiting.is_finished(),
        "the follower led while the leader holds"
    );
    assert!(!l.is_lost(), "lost before the cut: {:?}", l.loss_reason());

    let cut = Instant::now();
    proxy.blackhole();
    let reason = timeout(TTL * 3, l.lost())
        .await
        .expect("the cut-off leader never reported leadership lost");
    let lost_at = Instant::now();
    let (fl, won_at) = timeout(TTL * 4, waiting)
        .await
        .expect("the follower did not take over after the session expired")
        .expect("task");
    let fl = fl.expect("follower lock");
    eprintln!(
        "partition: leader lost after {:?} ({reason}), follower won after {:?}",
        lost_at - cut,
        won_at - cut
    );
    assert!(
        matches!(reason, LossReason::Unreachable { .. }),
        "a partition must read as unreachable: {reason}"
    );
    assert!(
        lost_at <= won_at,
        "TWO LEADERS: the follower won {:?} before the old leader stepped down",
        lost_at - won_at
    );
    assert!(
        lost_at - cut <= TTL + Duration::from_millis(500),
        "the local deadline came late: {:?} after the cut",
        lost_at - cut
    );
    assert!(fl.fencing_token() > l.fencing_token());

    // Healed: the old session is expired; the old leader campaigns again on
    // a new session and is told who leads.
    proxy.heal();
    let attempt = timeout(Duration::from_secs(30), async {
        loop {
            match leader.try_lock().await {
                Ok(a) => break a,
                Err(e) if e.is_transient() => sleep(Duration::from_millis(200)).await,
                Err(e) => panic!("campaigning after the partition failed: {e}"),
            }
        }
    })
    .await
    .expect("the old leader could not campaign again after the partition healed");
    match attempt {
        Attempt::Held(Some(info)) => assert_eq!(info.token, fl.fencing_token()),
        Attempt::Held(None) => panic!("refused but not told who leads"),
        Attempt::Leader(_) => panic!("TWO LEADERS: the old leader won again"),
    }
    fl.unlock().await.expect("unlock");
}

/// Waits until exactly one of `proxies` carries a connection; its index.
async fn connected_via(proxies: &[Proxy], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let open: Vec<usize> = (0..proxies.len())
            .filter(|&i| proxies[i].connections() > 0)
            .collect();
        if open.len() == 1 {
            return open[0];
        }
        assert!(
            Instant::now() < deadline,
            "the client is not connected through exactly one member after {within:?}: {open:?}"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

async fn zk_leader_index(ensemble: &ZkEnsemble, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        for (i, m) in ensemble.members().iter().enumerate() {
            if m.is_running() && m.mode().await.ok().as_deref() == Some("leader") {
                return i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no ZooKeeper leader within {within:?}"
        );
        sleep(Duration::from_millis(200)).await;
    }
}

/// Kill the member a leader is connected to: its session moves to another
/// member and leadership is kept. Then kill the ensemble's leader: same.
/// The other candidate never leads meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ensemble_member_and_leader_loss_keep_the_leadership() {
    let ensemble = ZkEnsemble::start(3)
        .await
        .unwrap_or_else(|e| panic!("could not start a ZooKeeper ensemble: {e}"));
    let mut proxies = Vec::new();
    for m in ensemble.members() {
        proxies.push(Proxy::start(m.client_addr()).await);
    }
    let via_proxies = proxies
        .iter()
        .map(|p| p.addr().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let ttl = Duration::from_secs(8);
    let election = unique_name("ensemble");
    let a = elector(&via_proxies, &election, "alpha", ttl).await;
    let b = elector(&ensemble.connect_string(), &election, "beta", ttl).await;
    let la = lock_within(&a, Duration::from_secs(30), "alpha").await;
    let b2 = b.clone();
    let waiting = tokio::spawn(async move {
        let l = b2.lock().await;
        (l, Instant::now())
    });
    sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "beta led while alpha holds");

    // 1. The member alpha's session is connected to.
    let first = connected_via(&proxies, Duration::from_secs(10)).await;
    ensemble.member(first).kill();
    let killed = Instant::now();
    let moved_to = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let i = connected_via(&proxies, Duration::from_secs(20)).await;
            if i != first {
                break i;
            }
            assert!(
                Instant::now() < deadline,
                "the session never left the killed member"
            );
            sleep(Duration::from_millis(100)).await;
        }
    };
    eprintln!(
        "member {} killed; session moved to member {} after {:?}",
        first + 1,
        moved_to + 1,
        killed.elapsed()
    );
    // Two renewals on the new member.
    sleep(ttl / 3 * 2 + Duration::from_millis(500)).await;
    assert!(
        !la.is_lost(),
        "leadership lost after a member loss: {:?}",
        la.loss_reason()
    );
    assert!(
        !waiting.is_finished(),
        "TWO LEADERS: beta led after the member loss"
    );
    let seen = b.leader().await.expect("leader");
    assert_eq!(seen.map(|l| l.token), Some(la.fencing_token()));

    // 2. Back to three members, then kill the ensemble's leader.
    ensemble
        .member(first)
        .restart()
        .await
        .unwrap_or_else(|e| panic!("restarting member {}: {e}", first + 1));
    let zk_leader = zk_leader_index(&ensemble, Duration::from_secs(30)).await;
    ensemble.member(zk_leader).kill();
    let killed = Instant::now();
    // A new ZooKeeper leader among the two left, and alpha's session on it.
    let new_leader = zk_leader_index(&ensemble, Duration::from_secs(30)).await;
    let on = connected_via(&proxies, Duration::from_secs(30)).await;
    eprintln!(
        "ZooKeeper leader (member {}) killed; member {} leads after {:?}; alpha's session on member {}",
        zk_leader + 1,
        new_leader + 1,
        killed.elapsed(),
        on + 1
    );
    sleep(ttl / 3 * 2 + Duration::from_millis(500)).await;
    assert!(
        !la.is_lost(),
        "leadership lost after the ZooKeeper leader's loss: {:?}",
        la.loss_reason()
    );
    assert!(
        !waiting.is_finished(),
        "TWO LEADERS: beta led after the leader loss"
    );

    let released = Instant::now();
    let ta = la.fencing_token();
    la.unlock().await.expect("unlock");
    let (lb, won_at) = timeout(Duration::from_secs(20), waiting)
        .await
        .expect("beta did not take over after alpha's unlock")
        .expect("task");
    let lb = lb.expect("beta lock");
    assert!(won_at >= released);
    assert!(lb.fencing_token() > ta);
    lb.unlock().await.expect("unlock");
}

/// With digest ACLs, a client without the credentials (or with a wrong
/// password) can read who leads but cannot delete or overwrite the leader's
/// node, nor queue in the election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_keep_unauthenticated_clients_out() {
    let server = start_server().await;
    let cs = format!("{}/{}", server.connect_string(), unique_name("acl-root"));
    // The operator creates the chroot; leasehold never does.
    create_zk_path(
        &server.connect_string(),
        &cs[cs.find('/').expect("chroot")..],
    )
    .await
    .expect("create the chroot");
    let election = unique_name("acl");
    let owner = ZkBackend::builder()
        .connect_string(&cs)
        .session_timeout(session_for(TTL))
        .digest_auth("alice", "s3cret")
        .build()
        .await
        .expect("owner connects");
    let owner: Arc<dyn Backend> = Arc::new(owner);
    let alice = Elector::new(owner.clone(), options(&election, "alice", TTL)).expect("options");
    let l = lock_within(&alice, Duration::from_secs(10), "alice").await;

    let stranger = connect(&cs, session_for(TTL)).await;
    let imposter = ZkBackend::builder()
        .connect_string(&cs)
        .session_timeout(session_for(TTL))
        .digest_auth("alice", "wrong password")
        .build()
        .await
        .expect("imposter connects");
    let dir = format!("/{election}");
    let children = stranger
        .client()
        .list_children(&dir)
        .await
        .expect("the election is readable");
    assert_eq!(children.len(), 1, "{children:?}");
    let node = format!("{dir}/{}", children[0]);
    for (who, backend) in [("stranger", &stranger), ("imposter", &imposter)] {
        let c = backend.client();
        assert_eq!(
            c.delete(&node, None).await,
            Err(zk::Error::NoAuth),
            "{who} could delete the leader's node"
        );
        assert_eq!(
            c.set_data(&node, b"mallory", None).await.map(|_| ()),
            Err(zk::Error::NoAuth),
            "{who} could overwrite the leader's node"
        );
        let info = backend
            .leader(&election)
            .await
            .expect("leader() with public read");
        assert_eq!(info.map(|i| i.id), Some("alice".to_owned()));
    }
    let stranger: Arc<dyn Backend> = Arc::new(stranger);
    let mallory =
        Elector::new(stranger.clone(), options(&election, "mallory", TTL)).expect("options");
    match mallory.try_lock().await {
        Err(e @ Error::PermissionDenied { .. }) => {
            assert!(
                e.to_string().contains(&dir),
                "the error must name {dir}: {e}"
            );
        }
        other => panic!("an unauthenticated candidate must be refused: {other:?}"),
    }
    assert!(!l.is_lost(), "{:?}", l.loss_reason());
    assert_eq!(
        owner
            .leader(&election)
            .await
            .expect("leader")
            .map(|i| i.token),
        Some(l.fencing_token())
    );
    l.unlock().await.expect("unlock");

    // Without public read, strangers cannot even see who leads.
    let private = ZkBackend::builder()
        .connect_string(&cs)
        .session_timeout(session_for(TTL))
        .digest_auth("alice", "s3cret")
        .public_read(false)
        .build()
        .await
        .expect("owner connects");
    let secret_election = unique_name("acl-private");
    let carol =
        Elector::new(Arc::new(private), options(&secret_election, "carol", TTL)).expect("options");
    let lc = lock_within(&carol, Duration::from_secs(10), "carol").await;
    match stranger.leader(&secret_election).await {
        Err(e @ Error::PermissionDenied { .. }) => {
            assert!(
                e.to_string().contains(&secret_election),
                "the error must name the election's node: {e}"
            );
        }
        other => panic!("a private election must not be readable: {other:?}"),
    }
    lc.unlock().await.expect("unlock");
}

/// A hundred candidates queue; each leader hands over to the next. Each
/// handover wakes only the successor (it watches only its predecessor), so
/// the server's packets per handover stay flat instead of growing with the
/// queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_candidates_hand_over_one_by_one_without_a_herd() {
    const N: usize = 100;
    let server = start_server().await;
    let cs = server.connect_string();
    let election = unique_name("hundred");
    let ttl = Duration::from_secs(8);
    let mut electors = Vec::with_capacity(N);
    for i in 0..N {
        electors.push(elector(&cs, &election, &format!("c{i:03}"), ttl).await);
    }
    // Everyone queues behind a gate holder first.
    let gate = elector(&cs, &election, "gate", ttl).await;
    let gate_lead = lock_within(&gate, Duration::from_secs(10), "gate").await;
    let current = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for e in electors {
        let (current, overlaps, tx) = (current.clone(), overlaps.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let l = e.lock().await.expect("lock");
            if current.fetch_add(1, Ordering::SeqCst) != 0 {
                overlaps.fetch_add(1, Ordering::SeqCst);
            }
            let _ = tx.send(l.fencing_token());
            sleep(Duration::from_millis(5)).await;
            current.fetch_sub(1, Ordering::SeqCst);
            l.unlock().await.expect("unlock");
        }));
    }
    drop(tx);
    // Let all queue, then measure the background (pings, renewals) rate.
    let observer = connect(&cs, ttl).await;
    let queued_by = Instant::now() + Duration::from_secs(60);
    loop {
        let leader = observer.leader(&election).await.expect("leader");
        assert_eq!(leader.map(|l| l.id), Some("gate".to_owned()));
        let n = observer
            .client()
            .list_children(&format!("/{election}"))
            .await
            .expect("list")
            .len();
        if n == N + 1 {
            break;
        }
        assert!(Instant::now() < queued_by, "only {n} of {} queued", N + 1);
        sleep(Duration::from_millis(200)).await;
    }
    let idle = Duration::from_secs(2);
    let p0 = server.packets_received().await.expect("mntr");
    sleep(idle).await;
    let p1 = server.packets_received().await.expect("mntr");
    let background_per_sec = (p1 - p0) as f64 / idle.as_secs_f64();

    let start = Instant::now();
    gate_lead.unlock().await.expect("unlock");
    for t in tasks {
        timeout(Duration::from_secs(120), t)
            .await
            .expect("the queue did not drain within 120 s")
            .expect("candidate task");
    }
    let elapsed = start.elapsed();
    let p2 = server.packets_received().await.expect("mntr");
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "TWO LEADERS at once");
    let mut tokens = Vec::new();
    while let Some(t) = rx.recv().await {
        tokens.push(t);
    }
    assert_eq!(tokens.len(), N, "not every candidate led once");
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens not increasing in order of leadership"
    );
    let total = (p2 - p1) as f64;
    let handover_packets = (total - background_per_sec * elapsed.as_secs_f64()).max(0.0) / N as f64;
    eprintln!(
        "{N} handovers in {elapsed:?} ({:?} each); {total} packets, background {background_per_sec:.0}/s, ~{handover_packets:.1} packets per handover",
        elapsed / N as u32
    );
    // A herd would cost every waiter a listing per handover (about N/2 on
    // average); the predecessor watch costs a handful.
    assert!(
        handover_packets < 25.0,
        "{handover_packets:.1} packets per handover: waiters other than the successor are woken"
    );
}

/// A `try_acquire` cancelled after its node was created (the reply was still
/// on its way) leaves nothing in the line: the node is found by its
/// protected name and deleted in the background, and the next attempt
/// queues (here: leads) with a node of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_acquire_leaves_no_orphan_in_the_line() {
    let server = start_server().await;
    let proxy = Proxy::start(server.client_addr()).await;
    let backend = connect(&proxy.addr().to_string(), TTL).await;
    let election = unique_name("orphan");
    let req = request(&election, "once", b"v", TTL);
    // Make the directory first, so that the cancelled call's only write is
    // the node itself.
    match backend.join(&req, backend.session_id()).await {
        Ok(QueueOutcome::Acquired(c)) => backend.release(&c).await.expect("release"),
        other => panic!("first acquire: {other:?}"),
    }
    proxy.delay(Duration::from_millis(400));
    let cancelled = timeout(
        Duration::from_millis(150),
        backend.join(&req, backend.session_id()),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "the slowed call should have been cancelled"
    );
    proxy.pass();
    let observer = connect(&server.connect_string(), TTL).await;
    let dir = format!("/{election}");
    // The cancelled creation reaches the server, and its node is deleted.
    sleep(Duration::from_secs(1)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children = observer
            .client()
            .list_children(&dir)
            .await
            .unwrap_or_default();
        if children.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cancelled creation's node was left in the line: {children:?}"
        );
        sleep(Duration::from_millis(50)).await;
    }
    let claim = match backend.join(&req, backend.session_id()).await {
        Ok(QueueOutcome::Acquired(c)) => c,
        other => panic!("the retry must lead (no one else is in line): {other:?}"),
    };
    let children = observer.client().list_children(&dir).await.expect("list");
    assert_eq!(children.len(), 1, "{children:?}");
    assert!(
        claim.key.ends_with(&children[0]),
        "{} vs {children:?}",
        claim.key
    );
    backend.release(&claim).await.expect("release");
    assert_eq!(observer.leader(&election).await.expect("leader"), None);
}

/// The leader watch keeps its armed watch across cancelled `next` calls:
/// a change made while no `next` was running is still reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_watch_survives_cancelled_next_calls() {
    let server = start_server().await;
    let cs = server.connect_string();
    let election = unique_name("watch");
    let observer = connect(&cs, TTL).await;
    let mut w = observer.watch(&election).await.expect("watch");
    assert_eq!(w.next().await.expect("first"), None);
    for _ in 0..3 {
        assert!(
            timeout(Duration::from_millis(20), w.next()).await.is_err(),
            "nothing changed yet"
        );
    }
    let a = elector(&cs, &election, "alpha", TTL).await;
    let la = lock_within(&a, Duration::from_secs(10), "alpha").await;
    let seen = timeout(Duration::from_secs(5), w.next())
        .await
        .expect("the change was lost")
        .expect("next");
    assert_eq!(seen.map(|l| l.token), Some(la.fencing_token()));
    la.unlock().await.expect("unlock");
    let seen = timeout(Duration::from_secs(5), async {
        loop {
            if w.next().await.expect("next").is_none() {
                break;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "the vacancy was not reported");
}

/// Issue 11, part 1. A 3-member ensemble whose members reach each other only
/// through fault proxies. Leader A's client talks to one follower alone, B's
/// to the other two members. That follower is cut off from its peers: it
/// keeps answering A's reads from its own copy until it gives up on the
/// ensemble (syncLimit x tickTime = 5 s), while the quorum expires A's
/// session and lets B lead. A's renewals must prove the session alive at the
/// quorum, so A reports lost before B leads (monotonic clock, one process).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_on_a_member_cut_off_from_its_peers_steps_down_before_anyone_else_leads() {
    let ensemble = ZkEnsemble::start_with_peer_proxies(3)
        .await
        .unwrap_or_else(|e| panic!("could not start a ZooKeeper ensemble: {e}"));
    let zk_leader = zk_leader_index(&ensemble, Duration::from_secs(30)).await;
    let cut = (0..3).find(|&i| i != zk_leader).expect("a follower");
    let others = (0..3)
        .filter(|&i| i != cut)
        .map(|i| ensemble.member(i).connect_string())
        .collect::<Vec<_>>()
        .join(",");
    let election = unique_name("cut-off-member");
    let a = elector(
        &ensemble.member(cut).connect_string(),
        &election,
        "alpha",
        TTL,
    )
    .await;
    let b = elector(&others, &election, "beta", TTL).await;
    let la = lock_within(&a, Duration::from_secs(20), "alpha").await;
    let b2 = b.clone();
    let waiting = tokio::spawn(async move {
        let l = b2.lock().await;
        (l, Instant::now())
    });
    // A few renewals in good health first.
    sleep(TTL).await;
    assert!(!waiting.is_finished(), "beta led while alpha holds");
    assert!(!la.is_lost(), "lost before the cut: {:?}", la.loss_reason());

    let cut_at = Instant::now();
    ensemble.isolate(cut);
    let la2 = la.clone();
    let lost = tokio::spawn(async move {
        let reason = la2.lost().await;
        (reason, Instant::now())
    });
    let (lb, won_at) = timeout(Duration::from_secs(30), waiting)
        .await
        .expect(
            "beta did not lead within 30 s of the cut (the quorum should expire alpha's session)",
        )
        .expect("task");
    let lb = lb.expect("beta lock");
    let (reason, lost_at) = timeout(Duration::from_secs(30), lost)
        .await
        .expect("alpha never reported leadership lost")
        .expect("task");
    eprintln!(
        "cut-off member: alpha lost after {:?} ({reason}), beta led after {:?}",
        lost_at - cut_at,
        won_at - cut_at
    );
    assert!(
        lost_at <= won_at,
        "TWO LEADERS for {:?}: beta led {:?} after the cut, alpha reported lost only {:?} after it",
        lost_at - won_at,
        won_at - cut_at,
        lost_at - cut_at
    );
    assert!(lb.fencing_token() > la.fencing_token());
    lb.unlock().await.expect("unlock");
}

/// The line of `election`, as seen by a fresh session on `cs`.
async fn line(cs: &str, election: &str) -> Vec<String> {
    let observer = connect(cs, TTL).await;
    let mut children = observer
        .client()
        .list_children(&format!("/{election}"))
        .await
        .unwrap_or_default();
    children.sort();
    children
}

/// Alpha unlocks; beta, queued behind it, must lead within ttl plus slack
/// (a phantom node of a live session in between would stop it for good),
/// alone in the line.
async fn next_leads_after_unlock(
    la: Leadership,
    waiting: tokio::task::JoinHandle<leasehold_core::Result<Leadership>>,
    cs: &str,
    election: &str,
    what: &str,
) {
    let released = Instant::now();
    la.unlock().await.expect("unlock");
    let slack = Duration::from_secs(2);
    let lb = match timeout(TTL + slack, waiting).await {
        Ok(l) => l.expect("task").expect("beta lock"),
        Err(_) => panic!(
            "{what}: nobody led for {:?} after alpha's unlock; the line is {:?} (gamma's client still runs, so its session and any node of it stay)",
            released.elapsed(),
            line(cs, election).await
        ),
    };
    eprintln!(
        "{what}: beta led {:?} after alpha's unlock",
        released.elapsed()
    );
    assert_eq!(line(cs, election).await.len(), 1);
    lb.unlock().await.expect("unlock");
}

/// Issue 11, part 3. A queued candidate withdraws, and its delete is lost in
/// a connection reset (the request never reaches the server). Its session
/// survives the reset, so its node would stay in the line for as long as
/// the process lives; the delete must be retried until it lands. The next
/// candidate then leads within ttl plus slack of the leader's unlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_withdrawal_lost_in_a_connection_reset_leaves_no_phantom_in_the_line() {
    let server = start_server().await;
    let cs = server.connect_string();
    let proxy = Proxy::start(server.client_addr()).await;
    let election = unique_name("lost-delete");
    let a = elector(&cs, &election, "alpha", TTL).await;
    let c = elector(&proxy.addr().to_string(), &election, "gamma", TTL).await;
    let b = elector(&cs, &election, "beta", TTL).await;
    let la = lock_within(&a, Duration::from_secs(10), "alpha").await;
    // gamma queues second, beta third.
    let stop_c = CancellationToken::new();
    let c2 = c.clone();
    let stop = stop_c.clone();
    let c_task = tokio::spawn(async move { c2.lock_cancellable(&stop).await });
    let queued_by = Instant::now() + Duration::from_secs(10);
    while line(&cs, &election).await.len() < 2 {
        assert!(Instant::now() < queued_by, "gamma never queued");
        sleep(Duration::from_millis(50)).await;
    }
    let waiting = queue_behind(&b, "alpha").await;
    assert_eq!(line(&cs, &election).await.len(), 3);

    // gamma withdraws; its delete sits in the slowed proxy and is reset.
    proxy.delay(Duration::from_millis(500));
    stop_c.cancel();
    sleep(Duration::from_millis(150)).await;
    proxy.reset_all();
    proxy.pass();
    let withdrawn = timeout(Duration::from_secs(20), c_task)
        .await
        .expect("gamma's campaign did not end")
        .expect("task");
    assert!(
        matches!(withdrawn, Ok(None)),
        "gamma should have withdrawn: {withdrawn:?}"
    );

    next_leads_after_unlock(la, waiting, &cs, &election, "lost withdrawal").await;
    // gamma's session was alive all along (its client was never dropped).
    drop(c);
}

/// Issue 11, part 3. A campaign whose create answer never arrived (the call
/// timed out while the reply was on its way) ends: the node the server
/// created must be found and deleted, not left ahead of the next candidate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_campaign_ended_while_its_create_was_in_flight_leaves_no_node_behind() {
    let server = start_server().await;
    let cs = server.connect_string();
    let proxy = Proxy::start(server.client_addr()).await;
    let election = unique_name("lost-create");
    let a = elector(&cs, &election, "alpha", TTL).await;
    // gamma gives every call 300 ms; its link delays each way by 250 ms, so
    // its create lands on the server but the answer comes too late.
    let mut gamma = options(&election, "gamma", TTL);
    gamma.request_timeout = Duration::from_millis(300);
    let c_backend: Arc<dyn Backend> =
        Arc::new(connect(&proxy.addr().to_string(), session_for(TTL)).await);
    let c = Elector::new(c_backend, gamma).expect("options");
    let b = elector(&cs, &election, "beta", TTL).await;
    let la = lock_within(&a, Duration::from_secs(10), "alpha").await;
    proxy.delay(Duration::from_millis(250));
    match timeout(Duration::from_secs(10), c.try_lock()).await {
        Ok(Err(e)) if e.is_transient() => {}
        other => panic!("the slowed try_lock should have timed out: {other:?}"),
    }
    proxy.pass();
    // Whatever was still on its way has arrived.
    sleep(Duration::from_secs(1)).await;
    eprintln!(
        "line after the timed-out try_lock: {:?}",
        line(&cs, &election).await
    );
    let waiting = queue_behind(&b, "alpha").await;
    next_leads_after_unlock(la, waiting, &cs, &election, "lost create").await;
    drop(c);
}

/// Issue 11, part 6. A chroot that does not exist is an operator error that
/// names the path, for readers (`leader`, `observe`) and candidates alike;
/// never "nobody leads". An election node missing under an existing chroot is
/// simply an election nobody has joined yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_chroot_is_an_error_that_names_it_not_no_leader() {
    let server = start_server().await;
    let missing = format!("/{}", unique_name("no-such-chroot"));
    let cs = format!("{}{missing}", server.connect_string());
    let backend: Arc<dyn Backend> = Arc::new(connect(&cs, session_for(TTL)).await);
    let e = Elector::new(backend.clone(), options("orders", "c", TTL)).expect("options");
    let names_it = |what: &str, r: leasehold_core::Result<String>| match r {
        Err(err) => {
            let text = err.to_string();
            assert!(
                text.contains(&missing) && text.contains("does not exist"),
                "{what}: the error must name the missing chroot {missing}: {text}"
            );
            assert!(!err.is_transient(), "{what}: not worth retrying: {err}");
        }
        Ok(v) => panic!("{what} against a missing chroot answered {v}"),
    };
    names_it("leader()", e.leader().await.map(|l| format!("{l:?}")));
    names_it(
        "observe()",
        e.observe().await.map(|r| format!("{:?}", *r.borrow())),
    );
    names_it(
        "try_lock()",
        timeout(Duration::from_secs(10), e.try_lock())
            .await
            .expect("try_lock must not hang on a missing chroot")
            .map(|a| format!("{a:?}")),
    );
    names_it(
        "lock()",
        timeout(Duration::from_secs(10), e.lock())
            .await
            .expect("lock must fail, not wait, on a missing chroot")
            .map(|l| format!("leading with {}", l.fencing_token())),
    );
    // leasehold did not create it behind the operator's back.
    let root = connect(&server.connect_string(), session_for(TTL)).await;
    assert_eq!(
        root.client().check_stat(&missing).await.expect("exists"),
        None,
        "the chroot was created"
    );

    // Once the operator creates it, the same backend works, and an election
    // nobody joined yet is "no leader", not an error.
    create_zk_path(&server.connect_string(), &missing)
        .await
        .expect("create the chroot");
    assert_eq!(e.leader().await.expect("leader"), None);
    let l = lock_within(&e, Duration::from_secs(10), "after the chroot exists").await;
    l.unlock().await.expect("unlock");
}

/// Server packets per second over `window`.
async fn packet_rate(server: &ZkServer, window: Duration) -> f64 {
    let p0 = server.packets_received().await.expect("mntr");
    sleep(window).await;
    let p1 = server.packets_received().await.expect("mntr");
    (p1 - p0) as f64 / window.as_secs_f64()
}

/// The client's idle ping rate for a session of `session`: zookeeper-client
/// pings after 3/20 of the session timeout without a request.
fn ping_rate(session: Duration) -> f64 {
    20.0 / (3.0 * session.as_secs_f64())
}

/// Issue 15: an idle queued candidate sends nothing but its client's pings
/// (no periodic re-read, no `sync` + `exists` renewal of its node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_waiter_sends_only_its_sessions_pings() {
    let server = start_server().await;
    let cs = server.connect_string();
    let election = unique_name("idle");
    let leader = elector(&cs, &election, "leader", TTL).await;
    let ll = lock_within(&leader, Duration::from_secs(10), "leader").await;
    let window = TTL * 3;
    sleep(Duration::from_secs(1)).await;
    let alone = packet_rate(&server, window).await;
    let waiter = elector(&cs, &election, "waiter", TTL).await;
    let waiting = queue_behind(&waiter, "leader").await;
    sleep(Duration::from_secs(1)).await;
    let both = packet_rate(&server, window).await;
    let waiter_rate = both - alone;
    let pings = ping_rate(session_for(TTL));
    eprintln!(
        "idle ZooKeeper waiter, ttl {TTL:?}: {waiter_rate:.2} packets/s (leader alone {alone:.2}/s, with the waiter {both:.2}/s; pings alone {pings:.2}/s)"
    );
    assert!(
        waiter_rate <= pings * 1.3 + 0.3,
        "an idle waiter sends {waiter_rate:.2} packets/s, more than its pings ({pings:.2}/s)"
    );
    ll.unlock().await.expect("unlock");
    takes_over(waiting, "the unlock")
        .await
        .unlock()
        .await
        .expect("unlock");
}

/// Issue 15: 200 electors on one backend, each leading an election of its
/// own: one session proven once per renew interval (plus pings), not 200
/// `sync` + `exists` renewals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_leaders_on_one_backend_prove_one_session() {
    const N: usize = 200;
    let server = start_server().await;
    let cs = server.connect_string();
    let backend: Arc<dyn Backend> = Arc::new(connect(&cs, session_for(TTL)).await);
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
        held.push(
            timeout(Duration::from_secs(60), t)
                .await
                .expect("a shard was not acquired within 60 s")
                .expect("task")
                .expect("lock"),
        );
    }
    sleep(Duration::from_secs(1)).await;
    let rate = packet_rate(&server, TTL * 2).await;
    let renew = options("x", "y", TTL).renew_interval.as_secs_f64();
    let one_session = 1.0 / renew + ping_rate(session_for(TTL));
    eprintln!(
        "{N} ZooKeeper leaders on one backend: {rate:.2} packets/s (one session's proof and pings: {one_session:.2}/s)"
    );
    assert!(
        rate <= one_session * 1.5 + 0.5,
        "{N} leaders send {rate:.2} packets/s; one session sends about {one_session:.2}/s"
    );
    assert!(held.iter().all(|l| !l.is_lost()));
    for l in held {
        l.unlock().await.expect("unlock");
    }
}

/// Issue 15: the shared session expires (closed from another connection
/// with its id and password while its own link is cut, as an operator or the
/// server would end it): every term on it ends, each with its own done
/// signal, and a waiter on it campaigns again on a new session and leads
/// later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_shared_session_ends_every_term_and_restarts_its_waiters() {
    let server = start_server().await;
    let cs = server.connect_string();
    let proxy = Proxy::start(server.client_addr()).await;
    let shared = Arc::new(connect(&proxy.addr().to_string(), session_for(TTL)).await);
    let shared_dyn: Arc<dyn Backend> = shared.clone();
    let base = unique_name("expire");
    let (e1, e2, e3) = (
        format!("{base}-1"),
        format!("{base}-2"),
        format!("{base}-3"),
    );
    let mk = |b: &Arc<dyn Backend>, e: &str, c: &str| {
        Elector::new(b.clone(), options(e, c, TTL)).expect("options")
    };
    let l1 = lock_within(&mk(&shared_dyn, &e1, "x"), Duration::from_secs(10), "l1").await;
    let l2 = lock_within(&mk(&shared_dyn, &e2, "x"), Duration::from_secs(10), "l2").await;
    let z = elector(&cs, &e3, "z", TTL).await;
    let lz = lock_within(&z, Duration::from_secs(10), "z").await;
    let waiting = queue_behind(&mk(&shared_dyn, &e3, "x"), "z").await;
    let old = shared.session_id();
    assert_eq!(l1.session_id(), Some(old));

    // With the shared client's link cut (else it takes its session back),
    // take the session over from a second connection and close it.
    proxy.blackhole();
    let info = shared.client().session().clone();
    let thief = zk::Client::connector()
        .with_session(info)
        .with_session_timeout(session_for(TTL))
        .with_connection_timeout(Duration::from_secs(10))
        .connect(&cs)
        .await
        .expect("connect with the shared session's id");
    drop(thief);
    sleep(Duration::from_millis(300)).await;
    proxy.heal();
    for (l, what) in [(&l1, "first"), (&l2, "second")] {
        let reason = timeout(TTL * 2, l.lost())
            .await
            .unwrap_or_else(|_| panic!("the {what} term did not end after the session expired"));
        // LeaseLost when the client hears of the expiry before the local
        // deadline of the last proof (the usual case), else Unreachable.
        assert!(
            matches!(
                reason,
                LossReason::LeaseLost(_) | LossReason::Unreachable { .. }
            ),
            "{reason:?}"
        );
        eprintln!("the {what} term ended: {reason}");
    }
    sleep(TTL).await;
    assert!(!waiting.is_finished(), "the waiter led while z holds");
    lz.unlock().await.expect("unlock");
    let lw = takes_over(waiting, "z's unlock").await;
    assert_ne!(lw.session_id(), Some(old), "it leads on a new session");
    assert!(lw.fencing_token() > l1.fencing_token());
    lw.unlock().await.expect("unlock");
}

/// Issue 15: a leader's node deleted by hand ends its term at once, through
/// its exists-watch rather than at its next renewal; the other term on the
/// same session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_deleted_by_hand_ends_its_term_at_once() {
    // Renewals 2.7 s apart (the longest session this server grants is 10 s).
    let ttl = Duration::from_secs(8);
    let server = start_server().await;
    let cs = server.connect_string();
    let shared = Arc::new(connect(&cs, session_for(ttl)).await);
    let backend: Arc<dyn Backend> = shared.clone();
    let base = unique_name("deleted");
    let (e1, e2) = (format!("{base}-1"), format!("{base}-2"));
    let a1 = Elector::new(backend.clone(), options(&e1, "a", ttl)).expect("options");
    let a2 = Elector::new(backend, options(&e2, "a", ttl)).expect("options");
    let l1 = lock_within(&a1, Duration::from_secs(10), "l1").await;
    let l2 = lock_within(&a2, Duration::from_secs(10), "l2").await;
    sleep(Duration::from_millis(300)).await;
    let admin = connect(&cs, session_for(ttl)).await;
    let dir = format!("/{e1}");
    let nodes = admin.client().list_children(&dir).await.expect("list");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let deleted_at = Instant::now();
    admin
        .client()
        .delete(&format!("{dir}/{}", nodes[0]), None)
        .await
        .expect("delete");
    let reason = timeout(Duration::from_millis(1500), l1.lost())
        .await
        .expect("the term did not end within 1.5 s of the delete (renewals are 2.7 s apart)");
    assert!(matches!(reason, LossReason::LeaseLost(_)), "{reason:?}");
    eprintln!("the term ended {:?} after the delete", deleted_at.elapsed());
    sleep(Duration::from_secs(1)).await;
    assert!(!l2.is_lost(), "the other term on the session ended too");
    l2.unlock().await.expect("unlock");
}

/// Creates and deletes nodes in `dir` (the line of an election, under the
/// default lock name) every ~3 ms until `stop`, at most 30,000 times or for
/// 120 s: a third client churning the line. Returns how many it created.
fn churn_the_line(
    client: zk::Client,
    dir: String,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let began = Instant::now();
        let mode = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
        let prefix = format!("{dir}/_c_churn-latch-");
        let mut created = 0;
        while created < 30_000 && began.elapsed() < Duration::from_secs(120) && !stop.is_cancelled()
        {
            match timeout(
                Duration::from_secs(2),
                client.create(&prefix, b"churn", &mode),
            )
            .await
            {
                Ok(Ok((_, sequence))) => {
                    created += 1;
                    let _ = timeout(
                        Duration::from_secs(2),
                        client.delete(&format!("{prefix}{sequence}"), None),
                    )
                    .await;
                }
                // The directory is gone between rounds, or the server is busy.
                _ => sleep(Duration::from_millis(20)).await,
            }
            sleep(Duration::from_millis(3)).await;
        }
        created
    })
}

/// The first node in line of `dir` (by sequence): the leader's. Synced
/// first: on an ensemble, `client`'s member may lag the leader's.
async fn first_in_line(client: &zk::Client, dir: &str) -> String {
    client.sync(dir).await.expect("sync the line");
    let mut nodes = client.list_children(dir).await.expect("list the line");
    nodes.sort_by(|a, b| a[a.len() - 10..].cmp(&b[b.len() - 10..]));
    nodes.first().cloned().expect("nobody in line")
}

/// Issue 20 §3: while a third client creates and deletes nodes in the
/// election's line every few milliseconds, a leader's node deleted by hand
/// still ends its term at once: the line's events must not use up the
/// leader's own-node watch, and a watch that ends is re-armed at once (a
/// retry interval of 2.5 s makes a blind back-off plain to see). The deposed
/// leader's done signal must come within 1 s of each delete (renewals are
/// 2 s apart), and the next leader's token is higher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_deleted_by_hand_under_churn_in_the_line_ends_its_term_at_once() {
    let server = start_server().await;
    let cs = server.connect_string();
    let clients = ChurnClients::all_on("standalone", &cs);
    node_deleted_by_hand_under_churn(&clients, 6).await;
}

/// Where the clients of the churn tests connect: the leader's, the next
/// candidate's, the one that deletes by hand and the one that churns.
struct ChurnClients<'a> {
    what: &'a str,
    leader: &'a str,
    next: &'a str,
    admin: &'a str,
    churner: &'a str,
}

impl<'a> ChurnClients<'a> {
    /// Every client on `cs`.
    fn all_on(what: &'a str, cs: &'a str) -> Self {
        ChurnClients {
            what,
            leader: cs,
            next: cs,
            admin: cs,
            churner: cs,
        }
    }
}

/// The body of the churn-and-delete tests, `rounds` times (each takes 2 to
/// 4 s): see [`a_node_deleted_by_hand_under_churn_in_the_line_ends_its_term_at_once`].
async fn node_deleted_by_hand_under_churn(clients: &ChurnClients<'_>, rounds: usize) {
    let what = clients.what;
    let ttl = Duration::from_secs(8);
    let a_backend: Arc<dyn Backend> = Arc::new(connect(clients.leader, session_for(ttl)).await);
    let b_backend: Arc<dyn Backend> = Arc::new(connect(clients.next, session_for(ttl)).await);
    let admin = connect(clients.admin, session_for(ttl)).await;
    let churner = connect(clients.churner, session_for(ttl)).await;
    let base = unique_name("churn-del");
    let started = Instant::now();
    let mut late = Vec::new();
    let mut overlaps = 0;
    for round in 0..rounds {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{what}: the rounds took too long"
        );
        let election = format!("{base}-{round}");
        let dir = format!("/{election}");
        let mut a_options = options(&election, "a", ttl);
        a_options.retry_interval = Duration::from_millis(2500);
        let a = Elector::new(a_backend.clone(), a_options).expect("options");
        let la = lock_within(&a, Duration::from_secs(10), "a").await;
        let b = Elector::new(b_backend.clone(), options(&election, "b", ttl)).expect("options");
        let b_task = tokio::spawn(async move {
            let lb = b.lock().await.expect("b: lock");
            (Instant::now(), lb)
        });
        let stop = CancellationToken::new();
        let churn = churn_the_line(churner.client(), dir.clone(), stop.clone());
        // 1.5 to 2.5 s of churn before the delete.
        sleep(Duration::from_millis(1500 + 200 * round as u64)).await;
        assert!(
            !la.is_lost(),
            "{what}, round {round}: churn alone ended the term"
        );
        let node = first_in_line(&admin.client(), &dir).await;
        // The done signal's instant, taken as it fires.
        let lost = la.lost();
        let lost = tokio::spawn(async move {
            let reason = lost.await;
            (Instant::now(), reason)
        });
        let deleting = Instant::now();
        admin
            .client()
            .delete(&format!("{dir}/{node}"), None)
            .await
            .expect("delete the leader's node");
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
        stop.cancel();
        let created = churn.await.expect("the churn task");
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let after_delete = done.saturating_duration_since(deleting);
        let (sign, gap) = if done >= b_led {
            overlaps += 1;
            ("after", done - b_led)
        } else {
            ("before", b_led - done)
        };
        eprintln!(
            "{what}, round {round}: {created} churn nodes; the deposed leader's done signal came {:.1} ms after the delete ({reason}), {:.1} ms {sign} the next leader led ({:.1} ms after the delete)",
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
    eprintln!(
        "{what}: the next leader led before the deposed leader's done signal in {overlaps} of {rounds} rounds"
    );
    assert!(
        late.is_empty(),
        "{what}: the deposed leader's done signal came more than 1 s after the delete (round, delay): {late:?}"
    );
}

/// Issue 20 §3, the backend's part: a leader's own-node watch
/// (`Backend::watch_claim`) is not used up by events in the election's line.
/// Under 3 s of churn (hundreds of line events) it must still be watching,
/// and then resolve when the node is deleted by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_own_node_watch_is_not_used_up_by_churn_in_the_line() {
    let server = start_server().await;
    let cs = server.connect_string();
    let clients = ChurnClients::all_on("standalone", &cs);
    own_node_watch_under_churn(&clients).await;
}

/// The body of the own-node watch tests (about 3.5 s; `clients.next` is not
/// used): see [`the_own_node_watch_is_not_used_up_by_churn_in_the_line`].
async fn own_node_watch_under_churn(clients: &ChurnClients<'_>) {
    let what = clients.what;
    let ttl = Duration::from_secs(8);
    let backend = connect(clients.leader, session_for(ttl)).await;
    let admin = connect(clients.admin, session_for(ttl)).await;
    let churner = connect(clients.churner, session_for(ttl)).await;
    let election = unique_name("churn-watch");
    let dir = format!("/{election}");
    let claim = match backend
        .join(&request(&election, "a", b"", ttl), backend.session_id())
        .await
        .expect("try_acquire")
    {
        QueueOutcome::Acquired(claim) => claim,
        other => panic!("did not lead an empty election: {other:?}"),
    };
    let stop = CancellationToken::new();
    let churn = churn_the_line(churner.client(), dir.clone(), stop.clone());
    let watch = backend.watch_claim(&claim);
    tokio::pin!(watch);
    if let Ok(ended) = timeout(Duration::from_secs(3), &mut watch).await {
        stop.cancel();
        let created = churn.await.expect("the churn task");
        panic!(
            "{what}: the own-node watch ended under churn alone ({created} churn nodes created and deleted in the line), the node still there: {ended:?}"
        );
    }
    let node = first_in_line(&admin.client(), &dir).await;
    assert_eq!(format!("{dir}/{node}"), claim.key);
    let deleted_at = Instant::now();
    admin
        .client()
        .delete(&claim.key, None)
        .await
        .expect("delete the leader's node");
    let ended = timeout(Duration::from_secs(2), &mut watch)
        .await
        .unwrap_or_else(|_| {
            panic!("{what}: the own-node watch did not resolve within 2 s of the delete")
        });
    let took = deleted_at.elapsed();
    stop.cancel();
    let created = churn.await.expect("the churn task");
    eprintln!(
        "{what}: after {created} churn nodes the own-node watch was still armed; it resolved {:.1} ms after the delete",
        took.as_secs_f64() * 1000.0
    );
    ended.unwrap_or_else(|e| {
        panic!("{what}: the own-node watch ended with an error instead of the delete: {e}")
    });
}

/// Issue 20 §3 on a 3-member ensemble: both churn tests above, with every
/// client on a member of its own where there are enough: the leader's
/// client on one follower, the next candidate's and the deleting client on
/// the other follower, the churning client on ZooKeeper's leader. So the
/// deletion and the churn reach the leader's member only as commits from
/// ZooKeeper's leader. One ensemble serves both bodies (a start costs a few
/// seconds and three JVMs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensemble_under_churn_in_the_line_a_node_deleted_by_hand_ends_its_term_at_once() {
    let began = Instant::now();
    let ensemble = ZkEnsemble::start(3)
        .await
        .unwrap_or_else(|e| panic!("could not start a ZooKeeper ensemble: {e}"));
    let zk_leader = zk_leader_index(&ensemble, Duration::from_secs(30)).await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != zk_leader).collect();
    let cs = |i: usize| ensemble.member(i).connect_string();
    let (leader, other, churner) = (cs(followers[0]), cs(followers[1]), cs(zk_leader));
    eprintln!(
        "ensemble up after {:?}: the leader's client on member {}, the next candidate and the deleting client on member {}, the churn on member {} (ZooKeeper's leader)",
        began.elapsed(),
        followers[0] + 1,
        followers[1] + 1,
        zk_leader + 1
    );
    let clients = ChurnClients {
        what: "ensemble",
        leader: &leader,
        next: &other,
        admin: &other,
        churner: &churner,
    };
    own_node_watch_under_churn(&clients).await;
    node_deleted_by_hand_under_churn(&clients, 4).await;
    eprintln!("ensemble: {:?} in all", began.elapsed());
}

/// Issue 20 §4: a replacement session, opened after the last one expired, is
/// held to the minimum `validate` enforces (`min_session_timeout`, the
/// longest ttl of the elections validated on the backend), not only to the
/// ttl of the campaign at hand. The server is restarted without its data (so
/// the session is expired) and with a `maxSessionTimeout` of 6.5 s: enough
/// for the campaign's ttl of 6 s, less than the 7.4 s another election
/// validated on the backend needs. The next campaign must be refused with an
/// error that says so, never lead on that session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_session_shorter_than_the_safe_minimum_is_refused() {
    let ttl = Duration::from_secs(6);
    let server = start_server().await;
    let cs = server.connect_string();
    let backend: Arc<dyn Backend> = Arc::new(connect(&cs, Duration::from_secs(8)).await);
    let election = unique_name("replacement");
    let longer = options(
        &unique_name("replacement-b"),
        "b",
        Duration::from_millis(7400),
    );
    let needed = ZkBackend::min_session_timeout(&longer);
    assert_eq!(needed, Duration::from_millis(7400));
    let _b = Elector::new(backend.clone(), longer).expect("an 8 s session is enough for ttl 7.4 s");
    let a = Elector::new(backend, options(&election, "a", ttl))
        .expect("an 8 s session is enough for ttl 6 s");
    let la = lock_within(&a, Duration::from_secs(10), "a").await;

    // The server comes back without the session, granting at most 6.5 s.
    server.kill();
    let data = server.data_dir();
    std::fs::remove_dir_all(data.join("version-2")).expect("remove the server's data");
    let config = data.parent().expect("the server's dir").join("zoo.cfg");
    let mut text = std::fs::read_to_string(&config).expect("read zoo.cfg");
    text.push_str("maxSessionTimeout=6500\n");
    std::fs::write(&config, text).expect("write zoo.cfg");
    server
        .restart()
        .await
        .unwrap_or_else(|e| panic!("restarting ZooKeeper: {e}"));
    let reason = timeout(Duration::from_secs(15), la.lost())
        .await
        .expect("the term outlived its expired session");
    eprintln!("the term ended: {reason}");

    let began = Instant::now();
    match timeout(Duration::from_secs(30), a.lock()).await {
        Err(_) => panic!("the campaign on the replacement session neither led nor failed in 30 s"),
        Ok(Ok(l)) => panic!(
            "led on a replacement session of {:?} (the election needs {needed:?}), token {}",
            Duration::from_millis(6500),
            l.fencing_token()
        ),
        Ok(Err(e)) => {
            eprintln!("refused after {:?}: {e}", began.elapsed());
            assert!(
                matches!(
                    e,
                    Error::InvalidOption {
                        field: "session_timeout",
                        ..
                    }
                ),
                "{e:?}"
            );
            let text = e.to_string();
            assert!(
                text.contains("6.5s") && text.contains("7.4s"),
                "the error must name the session granted and the one needed: {text}"
            );
        }
    }
}

/// Issue 24: a `multi` guarded by `leader_check` lands while the term lasts
/// and never after it: not after a proclaim (a new version: take the check
/// again), not after the node is deleted by hand, not after an unlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_multi_lands_only_while_the_term_lasts() {
    let ttl = Duration::from_secs(3);
    let server = start_server().await;
    let cs = server.connect_string();
    let backend = Arc::new(connect(&cs, session_for(ttl)).await);
    let shared: Arc<dyn Backend> = backend.clone();
    let election = unique_name("guarded");
    let data = format!("/app-data-{election}");
    let client = backend.client();
    client
        .create(
            &data,
            b"",
            &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
        )
        .await
        .expect("the application's node");
    let e = Elector::new(shared, options(&election, "a", ttl)).expect("options");
    let guarded_set = |check: leasehold_zookeeper::LeaderCheck, value: &'static [u8]| {
        let client = backend.client();
        let data = data.clone();
        async move {
            let mut multi = client.new_multi_writer();
            check.add_to(&mut multi).expect("check op");
            multi.add_set_data(&data, value, None).expect("set op");
            multi.commit().await.is_ok()
        }
    };

    let l1 = lock_within(&e, Duration::from_secs(5), "l1").await;
    let check = leasehold_zookeeper::leader_check(&l1);
    assert!(
        guarded_set(check.clone(), b"term 1").await,
        "the leader's multi did not land"
    );
    // A proclaim changes the node's version: the old check no longer holds,
    // a new one does.
    l1.proclaim("v2").await.expect("proclaim");
    assert!(
        !guarded_set(check, b"stale check").await,
        "a check of an old version held"
    );
    assert!(guarded_set(leasehold_zookeeper::leader_check(&l1), b"term 1 again").await);
    l1.clone().unlock().await.expect("unlock");
    assert!(
        !guarded_set(leasehold_zookeeper::leader_check(&l1), b"after unlock").await,
        "a multi guarded by an ended term landed"
    );

    let l2 = lock_within(&e, Duration::from_secs(5), "l2").await;
    let check = leasehold_zookeeper::leader_check(&l2);
    assert!(guarded_set(check.clone(), b"term 2").await);
    let admin = connect(&cs, session_for(ttl)).await;
    admin
        .client()
        .delete(&check.path, None)
        .await
        .expect("delete the leader's node by hand");
    assert!(
        !guarded_set(check, b"after delete").await,
        "a multi guarded by a deleted node's term landed"
    );
    let (value, _) = backend.client().get_data(&data).await.expect("read");
    assert_eq!(value, b"term 2", "only the writes of live terms landed");
    let _ = timeout(Duration::from_secs(3), l2.lost()).await;
}
