//! leasehold-zookeeper next to Apache Curator (issue 16): node names, sorting
//! and leader values both sides agree on, and a path shared by recipes with
//! different lock names failing loudly instead of electing two leaders.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Backend, ElectionOptions, Elector, Error};
use leasehold_integration_tests::{ZkServer, unique_name};
use leasehold_zookeeper::ZkBackend;
use leasehold_zookeeper::zookeeper_client as zk;
use tokio::time::timeout;

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
    ZkBackend::builder()
        .connect_string(connect_string)
        .session_timeout(ZkBackend::min_session_timeout(&options("any", "any")))
        .connect_timeout(Duration::from_secs(15))
        .connect()
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

    let b: Arc<dyn Backend> = Arc::new(backend(&server.connect_string()).await);
    let e = Elector::new(b, options(&election, "rust-1")).expect("options");
    match timeout(Duration::from_secs(10), e.try_lock()).await {
        Ok(Ok(outcome)) => {
            panic!("campaign on a path holding the foreign node {node} must fail, got {outcome:?}")
        }
        Ok(Err(err)) => assert_mixed_path_error("campaign", &err, &node, "lock-"),
        Err(_) => panic!("campaign did not answer within 10 s"),
    }
    match e.leader().await {
        Ok(l) => panic!("leader() on a mixed path must fail, got {l:?}"),
        Err(err) => assert_mixed_path_error("leader()", &err, &node, "lock-"),
    }
    match e.observe().await {
        Ok(rx) => panic!(
            "observe() on a mixed path must fail, got {:?}",
            *rx.borrow()
        ),
        Err(err) => assert_mixed_path_error("observe()", &err, &node, "lock-"),
    }
    // The failed campaign left nothing behind: only the foreign node is there.
    let mut children = Vec::new();
    for _ in 0..50 {
        children = raw
            .list_children(&format!("/{election}"))
            .await
            .expect("list");
        if children.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(children.len(), 1, "{children:?}");
}
