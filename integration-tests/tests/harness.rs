//! Self-tests of the real-store harness: every store starts, answers, survives
//! faults and leaves no process behind; the proxy passes, delays, black-holes,
//! heals and resets.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use leasehold_integration_tests::{
    EtcdCluster, EtcdNode, FakeGcs, Proxy, ProxyMode, ZkEnsemble, ZkServer, http,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Whether `pid` is gone for good: no `/proc` entry (the harness reaps its
/// children, so not even a zombie remains).
fn process_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn pid_files_for(pid: u32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(leasehold_integration_tests::pid_dir()) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(&format!("-{pid}.pid")))
        .collect()
}

/// `"key"` and `"value"` in base64, for etcd's JSON gateway.
const KEY_B64: &str = "a2V5";
const VALUE_B64: &str = "dmFsdWU=";

async fn etcd_put_and_get(endpoint_addr: SocketAddr) {
    let put = http::post(
        endpoint_addr,
        "/v3/kv/put",
        "application/json",
        format!(r#"{{"key":"{KEY_B64}","value":"{VALUE_B64}"}}"#).as_bytes(),
    )
    .await
    .expect("put through the JSON gateway");
    assert_eq!(put.status, 200, "put answered {put:?}");
    let range = http::post(
        endpoint_addr,
        "/v3/kv/range",
        "application/json",
        format!(r#"{{"key":"{KEY_B64}"}}"#).as_bytes(),
    )
    .await
    .expect("range through the JSON gateway");
    assert_eq!(range.status, 200, "range answered {range:?}");
    assert!(
        range.body.contains(VALUE_B64),
        "range did not return the value: {}",
        range.body
    );
}

#[tokio::test]
async fn etcd_node_starts_serves_pauses_restarts_and_stops() {
    let started = Instant::now();
    let node = EtcdNode::start().await.expect("start etcd");
    eprintln!("etcd node ready in {:?}", started.elapsed());
    assert!(node.endpoint().starts_with("http://127.0.0.1:"));
    etcd_put_and_get(node.client_addr()).await;
    let handled = node.requests_handled().await.expect("metrics");
    assert!(handled >= 2, "grpc_server_handled_total = {handled}");

    let pid = node.pid();
    assert_eq!(pid_files_for(pid).len(), 1, "pid file recorded");

    node.pause();
    assert!(
        !node.is_healthy().await,
        "a paused etcd should not answer /health"
    );
    node.resume();
    node.wait_healthy(Duration::from_secs(10))
        .await
        .expect("healthy after resume");

    node.restart().await.expect("restart");
    assert_ne!(node.pid(), pid);
    assert!(process_gone(pid), "the old process is gone after restart");
    assert!(pid_files_for(pid).is_empty(), "the old pid file is removed");
    // Same data directory: the key written before the restart is still there.
    let range = http::post(
        node.client_addr(),
        "/v3/kv/range",
        "application/json",
        format!(r#"{{"key":"{KEY_B64}"}}"#).as_bytes(),
    )
    .await
    .unwrap();
    assert!(range.body.contains(VALUE_B64), "{}", range.body);

    let pid = node.pid();
    drop(node);
    assert!(process_gone(pid), "etcd {pid} is still there after drop");
    assert!(pid_files_for(pid).is_empty());
}

#[tokio::test]
async fn etcd_cluster_survives_a_member_kill_and_the_member_restarts() {
    let started = Instant::now();
    let cluster = EtcdCluster::start(3).await.expect("start etcd cluster");
    eprintln!("etcd 3-node cluster ready in {:?}", started.elapsed());
    assert_eq!(cluster.endpoints().len(), 3);

    let victim = cluster.member(0);
    let victim_pid = victim.pid();
    victim.kill();
    assert!(!victim.is_running());
    assert!(process_gone(victim_pid));
    for member in &cluster.members()[1..] {
        member
            .wait_healthy(Duration::from_secs(20))
            .await
            .expect("the two remaining members stay healthy");
    }
    etcd_put_and_get(cluster.member(1).client_addr()).await;

    victim.restart().await.expect("restart the killed member");
    assert!(victim.is_running());

    // A full outage: every member killed, then all started again on their data.
    for member in cluster.members() {
        member.kill();
    }
    cluster
        .restart_stopped()
        .await
        .expect("restart the whole cluster");
    let range = http::post(
        cluster.member(2).client_addr(),
        "/v3/kv/range",
        "application/json",
        format!(r#"{{"key":"{KEY_B64}"}}"#).as_bytes(),
    )
    .await
    .unwrap();
    assert!(range.body.contains(VALUE_B64), "{}", range.body);

    let pids: Vec<u32> = cluster.members().iter().map(EtcdNode::pid).collect();
    drop(cluster);
    for pid in pids {
        assert!(process_gone(pid), "etcd member {pid} left behind");
    }
}

#[tokio::test]
async fn zookeeper_standalone_answers_and_stops() {
    let started = Instant::now();
    let zk = ZkServer::start().await.expect("start zookeeper");
    eprintln!("zookeeper standalone ready in {:?}", started.elapsed());
    assert!(zk.connect_string().starts_with("127.0.0.1:"));
    assert_eq!(zk.four_letter("ruok").await.unwrap(), "imok");
    assert_eq!(zk.mode().await.unwrap(), "standalone");
    let before = zk.packets_received().await.expect("mntr");
    zk.four_letter("srvr").await.unwrap();
    // Four-letter words are not packets; the counter is readable and monotonic.
    assert!(zk.packets_received().await.unwrap() >= before);

    zk.pause();
    assert!(zk.four_letter("ruok").await.is_err() || zk.mode().await.is_err());
    zk.resume();
    zk.wait_serving(Duration::from_secs(10))
        .await
        .expect("serving after resume");

    let pid = zk.pid();
    drop(zk);
    assert!(process_gone(pid), "zookeeper {pid} left behind");
    assert!(pid_files_for(pid).is_empty());
}

#[tokio::test]
async fn zookeeper_ensemble_survives_a_member_kill_and_the_member_restarts() {
    let started = Instant::now();
    let ensemble = ZkEnsemble::start(3)
        .await
        .expect("start zookeeper ensemble");
    eprintln!("zookeeper 3-node ensemble ready in {:?}", started.elapsed());
    assert_eq!(ensemble.connect_string().split(',').count(), 3);
    let leader = ensemble.leader().await.expect("a leader");

    // Kill the leader: the other two elect a new one and keep serving.
    let victim_id = leader.id();
    leader.kill();
    let victim = ensemble.member(victim_id - 1);
    assert!(!victim.is_running());
    ensemble
        .wait_serving(Duration::from_secs(30))
        .await
        .expect("the two remaining members serve");
    let new_leader = ensemble.leader().await.expect("a new leader");
    assert_ne!(new_leader.id(), victim_id);

    victim.restart().await.expect("restart the killed member");
    assert_eq!(victim.mode().await.unwrap(), "follower");

    // A full outage: every member killed, then all started again.
    for member in ensemble.members() {
        member.kill();
    }
    ensemble
        .restart_stopped()
        .await
        .expect("restart the whole ensemble");
    assert!(ensemble.leader().await.is_some());

    let pids: Vec<u32> = ensemble.members().iter().map(ZkServer::pid).collect();
    drop(ensemble);
    for pid in pids {
        assert!(process_gone(pid), "zookeeper member {pid} left behind");
    }
}

#[tokio::test]
async fn fake_gcs_has_its_bucket_and_restarts() {
    let started = Instant::now();
    let gcs = FakeGcs::start().await.expect("start fake-gcs-server");
    eprintln!("fake-gcs-server ready in {:?}", started.elapsed());
    assert!(gcs.endpoint().starts_with("http://127.0.0.1:"));
    let list = http::get(gcs.addr(), "/storage/v1/b").await.unwrap();
    assert_eq!(list.status, 200);
    assert!(
        list.body
            .contains(&format!("\"name\":\"{}\"", gcs.bucket())),
        "{}",
        list.body
    );

    gcs.pause();
    assert!(http::get(gcs.addr(), "/storage/v1/b").await.is_err());
    gcs.resume();

    let pid = gcs.pid();
    gcs.restart().await.expect("restart");
    assert!(process_gone(pid));
    let list = http::get(gcs.addr(), "/storage/v1/b").await.unwrap();
    assert!(list.body.contains(gcs.bucket()), "{}", list.body);

    let pid = gcs.pid();
    drop(gcs);
    assert!(process_gone(pid), "fake-gcs-server {pid} left behind");
}

/// A tiny echo server for the proxy tests; returns its address.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

/// Reads exactly `expected.len()` bytes within `within`, or returns what it got.
async fn read_within(stream: &mut TcpStream, len: usize, within: Duration) -> Option<Vec<u8>> {
    let mut buffer = vec![0u8; len];
    match tokio::time::timeout(within, stream.read_exact(&mut buffer)).await {
        Ok(Ok(_)) => Some(buffer),
        _ => None,
    }
}

#[tokio::test]
async fn proxy_passes_delays_blackholes_heals_and_resets() {
    let proxy = Proxy::start(echo_server().await).await;
    assert_eq!(proxy.mode(), ProxyMode::Pass);
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();

    client.write_all(b"ping").await.unwrap();
    assert_eq!(
        read_within(&mut client, 4, Duration::from_secs(5))
            .await
            .as_deref(),
        Some(&b"ping"[..])
    );
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.accepted(), 1);

    // Delay: a round trip crosses the proxy twice.
    proxy.delay(Duration::from_millis(100));
    let sent = Instant::now();
    client.write_all(b"slow").await.unwrap();
    assert_eq!(
        read_within(&mut client, 4, Duration::from_secs(5))
            .await
            .as_deref(),
        Some(&b"slow"[..])
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(200),
        "{:?}",
        sent.elapsed()
    );
    proxy.pass();

    // Black hole: bytes are held, on open and on new connections.
    proxy.blackhole();
    client.write_all(b"lost").await.unwrap();
    assert_eq!(
        read_within(&mut client, 4, Duration::from_millis(500)).await,
        None,
        "a black-holed connection carried bytes"
    );
    let mut late = TcpStream::connect(proxy.addr()).await.unwrap();
    late.write_all(b"late").await.unwrap();
    assert_eq!(
        read_within(&mut late, 4, Duration::from_millis(300)).await,
        None
    );

    // Heal: the held bytes flow again, on both connections.
    proxy.heal();
    assert_eq!(
        read_within(&mut client, 4, Duration::from_secs(5))
            .await
            .as_deref(),
        Some(&b"lost"[..])
    );
    assert_eq!(
        read_within(&mut late, 4, Duration::from_secs(5))
            .await
            .as_deref(),
        Some(&b"late"[..])
    );
    assert_eq!(proxy.connections(), 2);

    // Reset: every open connection is torn down abruptly.
    proxy.reset_all();
    for stream in [&mut client, &mut late] {
        let mut buffer = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("a reset connection does not hang");
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "expected a reset, got {read:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(proxy.connections(), 0);

    // New connections work after a reset.
    let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
    again.write_all(b"back").await.unwrap();
    assert_eq!(
        read_within(&mut again, 4, Duration::from_secs(5))
            .await
            .as_deref(),
        Some(&b"back"[..])
    );

    // Dropping the proxy closes its port and its connections.
    let addr = proxy.addr();
    drop(proxy);
    let mut buffer = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), again.read(&mut buffer))
        .await
        .expect("a dropped proxy's connection does not hang");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the proxy still listens"
    );
}

#[tokio::test]
async fn proxy_in_front_of_a_real_store() {
    let zk = ZkServer::start().await.expect("start zookeeper");
    let proxy = Proxy::start(zk.client_addr()).await;
    assert_eq!(
        leasehold_integration_tests::four_letter_word(proxy.addr(), "ruok")
            .await
            .unwrap(),
        "imok"
    );
    proxy.blackhole();
    assert!(
        leasehold_integration_tests::four_letter_word(proxy.addr(), "ruok")
            .await
            .is_err(),
        "a black-holed store answered"
    );
    proxy.heal();
    assert_eq!(
        leasehold_integration_tests::four_letter_word(proxy.addr(), "ruok")
            .await
            .unwrap(),
        "imok"
    );
}
