//! Shared sessions under faults (issue 20, section 1): a release or a
//! withdrawal whose answer is lost, in a session that other electors keep
//! alive, is resolved, never forgotten, and a claim left by an ended term is
//! never adopted by a new one.
//!
//! Each test starts its own etcd (a single node, or a 3-member cluster) on
//! free loopback ports and reaches it through a fault-injecting proxy; the
//! harness stops the store by pid.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Backend, ElectionOptions, Elector, Error, Leadership};
use leasehold_etcd::EtcdBackend;
use leasehold_integration_tests::{EtcdCluster, EtcdNode, Proxy, unique_name};
use tokio::time::{Instant, sleep, timeout};

const TTL: u64 = 6;

async fn start_node() -> EtcdNode {
    EtcdNode::start()
        .await
        .unwrap_or_else(|e| panic!("could not start etcd: {e}"))
}

async fn connect(endpoints: &[String]) -> Arc<dyn Backend> {
    Arc::new(
        EtcdBackend::builder()
            .endpoints(endpoints.iter().cloned())
            .request_timeout(Duration::from_secs(1))
            .connect_timeout(Duration::from_secs(1))
            .build()
            .await
            .unwrap_or_else(|e| panic!("connecting to {endpoints:?} failed: {e}")),
    )
}

fn elector(backend: &Arc<dyn Backend>, election: &str, candidate: &str) -> Elector {
    let mut options = ElectionOptions::new(election, candidate).with_ttl(Duration::from_secs(TTL));
    options.request_timeout = Duration::from_secs(1);
    Elector::new(backend.clone(), options).unwrap_or_else(|e| panic!("options refused: {e}"))
}

async fn lock_within(e: &Elector, within: Duration, what: &str) -> Leadership {
    match timeout(within, e.lock()).await {
        Ok(Ok(l)) => l,
        Ok(Err(err)) => panic!("{what}: lock failed: {err}"),
        Err(_) => panic!("{what}: did not lead within {within:?}"),
    }
}

/// Wait until `term`'s local deadline moves (a keep-alive of its session was
/// just answered), so that a fault injected now has most of the session's
/// lifetime before the deadline.
async fn just_after_a_keep_alive(term: &Leadership) {
    let before = term.deadline();
    let started = Instant::now();
    while term.deadline() == before {
        assert!(
            started.elapsed() < Duration::from_secs(TTL),
            "no keep-alive within a ttl"
        );
        sleep(Duration::from_millis(5)).await;
    }
}

/// Electors A (election E) and G (election F) share one backend, so one
/// lease; B waits for E on a backend of its own. A's link goes silent right
/// after a keep-alive, `A.unlock()` times out, then the link heals well
/// within the session's deadline, so G keeps the session (and A's key in it)
/// alive. The release must still land: B leads within ttl + slack of the
/// heal, with a higher token, and a candidate D on A's backend never leads
/// with A's key or token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_a_release_whose_answer_is_lost_is_resolved() {
    let node = start_node().await;
    a_release_whose_answer_is_lost_is_resolved("single node", node.client_addr(), node.endpoint())
        .await;
}

/// The same on a 3-member cluster: A's backend reaches member 1 through the
/// proxy, B and the observers talk to member 2, so the retried release
/// reaches B only through raft.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_cluster_a_release_whose_answer_is_lost_is_resolved() {
    let cluster = EtcdCluster::start(3)
        .await
        .unwrap_or_else(|e| panic!("could not start a 3-member etcd cluster: {e}"));
    a_release_whose_answer_is_lost_is_resolved(
        "cluster",
        cluster.member(0).client_addr(),
        cluster.member(1).endpoint(),
    )
    .await;
}

/// The body of the two tests above: the shared backend reaches `shared_via`
/// through a proxy; B and the observers talk to `direct` without one.
async fn a_release_whose_answer_is_lost_is_resolved(
    what: &str,
    shared_via: SocketAddr,
    direct: String,
) {
    let proxy = Proxy::start(shared_via).await;
    let shared = connect(&[format!("http://{}", proxy.addr())]).await;
    let direct = connect(&[direct]).await;
    let base = unique_name("lost-release");
    let (e, f) = (format!("{base}-e"), format!("{base}-f"));

    let a = elector(&shared, &e, "a");
    let g = elector(&shared, &f, "g");
    let b = elector(&direct, &e, "b");
    let la = lock_within(&a, Duration::from_secs(10), "a").await;
    let lg = lock_within(&g, Duration::from_secs(10), "g").await;
    assert_eq!(
        la.session_id(),
        lg.session_id(),
        "{what}: A and G share one lease"
    );
    let b_waits = {
        let b = b.clone();
        tokio::spawn(async move { b.lock().await })
    };
    sleep(Duration::from_millis(300)).await;
    assert!(!b_waits.is_finished(), "{what}: B led while A holds");

    just_after_a_keep_alive(&la).await;
    proxy.blackhole();
    let a_token = la.fencing_token();
    let unlocked = la.unlock().await;
    eprintln!("{what}: A.unlock() in the silence: {unlocked:?}");
    assert!(
        matches!(
            unlocked,
            Err(Error::Timeout { .. } | Error::Unavailable { .. })
        ),
        "{what}: the release could not have been answered: {unlocked:?}"
    );
    // Heal well within the session's deadline: the session lives on.
    proxy.reset_all();
    proxy.heal();
    let healed = Instant::now();

    // A candidate of the same election on A's backend: it must never lead
    // with A's key (A's token), only after B.
    let d = elector(&shared, &e, "d");
    let d_campaign = tokio::spawn(async move { d.lock().await });

    let within = Duration::from_secs(TTL + 3);
    let lb = match timeout(within, b_waits).await {
        Ok(r) => r.expect("task").expect("B lock"),
        Err(_) => {
            let leader = direct.leader(&e).await;
            panic!(
                "{what}: B did not lead within {within:?} of the heal (ttl {TTL} s + 3 s); the store names {leader:?} as leader; D's campaign finished: {}",
                d_campaign.is_finished()
            );
        }
    };
    let took = healed.elapsed();
    eprintln!(
        "{what}: B led {took:?} after the heal with token {} (A's was {a_token})",
        lb.fencing_token()
    );
    assert!(lb.fencing_token() > a_token);
    assert!(
        !lg.is_lost(),
        "{what}: G's term on the shared session ended"
    );
    assert!(
        !d_campaign.is_finished(),
        "{what}: D led while B holds (D adopted a stale key?)"
    );
    let b_token = lb.fencing_token();
    lb.unlock().await.expect("B unlock");
    let ld = timeout(Duration::from_secs(5), d_campaign)
        .await
        .expect("D did not lead after B left")
        .expect("task")
        .expect("D lock");
    assert!(
        ld.fencing_token() > b_token,
        "{what}: D leads with token {} after B's {b_token}: a token handed out twice",
        ld.fencing_token()
    );
    let leader = direct.leader(&e).await.expect("leader").expect("a leader");
    assert_eq!(leader.id, "d", "observers are told who leads");
    assert_eq!(leader.token, ld.fencing_token());
    ld.unlock().await.expect("D unlock");
    lg.unlock().await.expect("G unlock");
}

/// The same for a waiting claim withdrawn by `lock_timeout` while the link
/// is silent: once the link heals, the withdrawn claim must not stay in the
/// line ahead of a later candidate, and A's next campaign gets a new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_a_withdrawal_whose_answer_is_lost_is_resolved() {
    let node = start_node().await;
    let proxy = Proxy::start(node.client_addr()).await;
    let shared = connect(&[format!("http://{}", proxy.addr())]).await;
    let direct = connect(&[node.endpoint()]).await;
    let base = unique_name("lost-withdraw");
    let (e, f) = (format!("{base}-e"), format!("{base}-f"));

    let z = elector(&direct, &e, "z");
    let lz = lock_within(&z, Duration::from_secs(10), "z").await;
    let z_token = lz.fencing_token();
    let g = elector(&shared, &f, "g");
    let lg = lock_within(&g, Duration::from_secs(10), "g").await;
    let a = elector(&shared, &e, "a");
    // Right after a keep-alive, A queues behind Z in G's session; its
    // lock_timeout runs out in the silence, so its withdrawal cannot be
    // answered.
    just_after_a_keep_alive(&lg).await;
    let a_waits = {
        let a = a.clone();
        tokio::spawn(async move { a.lock_timeout(Duration::from_millis(1200)).await })
    };
    sleep(Duration::from_millis(400)).await;
    proxy.blackhole();
    let waited = timeout(Duration::from_secs(10), a_waits)
        .await
        .expect("lock_timeout did not return")
        .expect("task");
    eprintln!("A.lock_timeout in the silence: {waited:?}");
    assert!(
        matches!(waited, Ok(None)),
        "A must not lead while Z holds: {waited:?}"
    );
    proxy.reset_all();
    proxy.heal();
    let healed = Instant::now();

    // C queues behind A's withdrawn claim; Z hands over.
    let c = elector(&direct, &e, "c");
    let c_waits = tokio::spawn(async move { c.lock().await });
    sleep(Duration::from_millis(500)).await;
    lz.unlock().await.expect("Z unlock");
    let within = Duration::from_secs(TTL + 3);
    let lc = match timeout(within, c_waits).await {
        Ok(r) => r.expect("task").expect("C lock"),
        Err(_) => {
            let leader = direct.leader(&e).await;
            panic!(
                "C did not lead within {within:?} of the heal: A's withdrawn claim stays in the line; the store names {leader:?}"
            );
        }
    };
    eprintln!("C led {:?} after the heal", healed.elapsed());
    let c_token = lc.fencing_token();
    assert!(c_token > z_token);
    lc.unlock().await.expect("C unlock");
    let la = lock_within(&a, Duration::from_secs(5), "a again").await;
    assert!(
        la.fencing_token() > c_token,
        "A's next term has token {} after C's {c_token}: an old claim was adopted",
        la.fencing_token()
    );
    la.unlock().await.expect("A unlock");
    lg.unlock().await.expect("G unlock");
}
