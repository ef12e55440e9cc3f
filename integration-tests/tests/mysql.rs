//! leasehold-mysql against a real MariaDB started by the harness: the lease
//! table's statements (acquire, renew, release, leader), the token across a
//! hand deletion, answers lost after their statement landed, a restart while
//! a leader holds the lease, password auth, TLS, and the missing-privilege
//! error.

use std::time::Duration;

use leasehold_core::Error;
use leasehold_integration_tests::{MariaDb, unique_name};
use leasehold_mysql::table::{Acquired, LeaseTable, Request, Term};
use leasehold_mysql::{MysqlBackend, TlsMode};
use mysql_async::prelude::Queryable;
use tokio::time::{Instant, sleep, timeout};

const DB: &str = "leasehold";
const USER: &str = "app";
const PASSWORD: &str = "s3cret-pw";

/// A server with database `leasehold` and user `app` (password) allowed everything in it.
async fn server() -> MariaDb {
    let db = MariaDb::start()
        .await
        .unwrap_or_else(|e| panic!("could not start MariaDB: {e}"));
    setup_user(&db, "").await;
    db
}

async fn setup_user(db: &MariaDb, require: &str) {
    db.create_database(DB).await.expect("create database");
    db.sql(&format!(
        "CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}' {require}; \
         GRANT ALL ON `{DB}`.* TO '{USER}'@'127.0.0.1'"
    ))
    .await
    .expect("create user");
}

fn builder(port: u16) -> leasehold_mysql::MysqlBackendBuilder {
    MysqlBackend::builder()
        .host("127.0.0.1")
        .port(port)
        .auth(USER, PASSWORD)
        .database(DB)
        .request_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(5))
}

async fn connect(port: u16) -> MysqlBackend {
    builder(port)
        .build()
        .await
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
}

fn req<'a>(election: &'a str, candidate: &'a str, ttl: Duration) -> Request<'a> {
    Request {
        election,
        candidate,
        value: candidate.as_bytes(),
        ttl,
    }
}

async fn won(t: &LeaseTable, r: &Request<'_>) -> Term {
    match t.acquire(r).await {
        Ok(Acquired::Won(term)) => term,
        other => panic!("{} should lead {}: {other:?}", r.candidate, r.election),
    }
}

/// Acquire until it is won, at most `within`.
async fn won_within(t: &LeaseTable, r: &Request<'_>, within: Duration) -> Term {
    let start = Instant::now();
    for _ in 0..10_000 {
        match t.acquire(r).await {
            Ok(Acquired::Won(term)) => return term,
            Ok(Acquired::Held { .. }) | Err(_) if start.elapsed() < within => {
                sleep(Duration::from_millis(100)).await;
            }
            other => panic!("{} did not lead within {within:?}: {other:?}", r.candidate),
        }
    }
    panic!("{} did not lead within 10000 attempts", r.candidate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acquire_renew_release_and_leader() {
    let db = server().await;
    let backend = connect(db.port()).await;
    let t = backend.table();
    let e = unique_name("basic");
    let ttl = Duration::from_secs(10);
    assert_eq!(t.leader(&e).await.unwrap(), None);

    let a = won(t, &req(&e, "a", ttl)).await;
    let leader = t.leader(&e).await.unwrap().expect("a leads");
    assert_eq!((leader.holder.as_str(), leader.token), ("a", a.token));
    assert_eq!(leader.value, b"a");

    // A second candidate is refused and told who leads.
    match t.acquire(&req(&e, "b", ttl)).await.unwrap() {
        Acquired::Held { leader, version } => {
            assert_eq!(
                leader.map(|l| (l.holder, l.token)),
                Some(("a".into(), a.token))
            );
            assert_eq!(version, a.version);
        }
        other => panic!("b should be refused: {other:?}"),
    }

    // Renewals move the version on and keep owner and token.
    let a2 = t.renew(&a).await.unwrap();
    assert_eq!((a2.token, &a2.owner), (a.token, &a.owner));
    assert_eq!(a2.version, a.version + 1);
    let a3 = t.renew(&a2).await.unwrap();
    assert_eq!(a3.version, a2.version + 1);

    // Release marks the row released; b leads at once with a greater token.
    t.release(&a3).await.unwrap();
    t.release(&a3).await.unwrap(); // twice is harmless
    assert_eq!(t.leader(&e).await.unwrap(), None);
    let b = won(t, &req(&e, "b", ttl)).await;
    assert!(b.token > a.token, "{} > {}", b.token, a.token);

    // The old term can neither renew nor release b's term.
    let lost = t.renew(&a3).await.unwrap_err();
    assert!(lost.is_lost(), "{lost}");
    t.release(&a3).await.unwrap();
    assert_eq!(t.leader(&e).await.unwrap().map(|l| l.token), Some(b.token));

    // The row is still there after a release (never deleted).
    let rows = db
        .sql(&format!(
            "SELECT released FROM `{DB}`.leasehold_leases WHERE election = '{e}'"
        ))
        .await
        .unwrap();
    assert_eq!(rows.trim(), "0");
    t.release(&b).await.unwrap();
    let rows = db
        .sql(&format!(
            "SELECT released FROM `{DB}`.leasehold_leases WHERE election = '{e}'"
        ))
        .await
        .unwrap();
    assert_eq!(rows.trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_is_judged_by_the_database_clock() {
    let db = server().await;
    let backend = connect(db.port()).await;
    let t = backend.table();
    let e = unique_name("expiry");
    let ttl = Duration::from_secs(1);
    let a = won(t, &req(&e, "a", ttl)).await;
    let b = won_within(t, &req(&e, "b", ttl), Duration::from_secs(10)).await;
    assert!(b.token > a.token);
    let lost = t.renew(&a).await.unwrap_err();
    assert!(lost.is_lost(), "{lost}");
    assert!(lost.to_string().contains("another term"), "{lost}");
    // An expired lease cannot be renewed even when nobody took it.
    let e2 = unique_name("expiry-alone");
    let c = won(t, &req(&e2, "c", ttl)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.leader(&e2).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the lease of {e2} never expired");
        sleep(Duration::from_millis(100)).await;
    }
    let lost = t.renew(&c).await.unwrap_err();
    assert!(lost.to_string().contains("expired"), "{lost}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_candidates_exactly_one_wins() {
    let db = server().await;
    let backend = connect(db.port()).await;
    let e = unique_name("race");
    for round in 0..5 {
        let mut tasks = Vec::new();
        for i in 0..10 {
            let b = backend.clone();
            let e = e.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("c{i}");
                b.table()
                    .acquire(&req(&e, &id, Duration::from_secs(30)))
                    .await
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            if let Acquired::Won(term) = task.await.unwrap().unwrap() {
                winners.push(term);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        backend.table().release(&winners[0]).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_deleted_by_hand_does_not_reset_the_token() {
    let db = server().await;
    let backend = connect(db.port()).await;
    let t = backend.table();
    let e = unique_name("deleted");
    let ttl = Duration::from_secs(30);
    let a = won(t, &req(&e, "a", ttl)).await;
    db.sql(&format!(
        "DELETE FROM `{DB}`.leasehold_leases WHERE election = '{e}'; DELETE FROM `{DB}`.leasehold_tokens"
    ))
    .await
    .unwrap();
    // The holder learns at its next renewal.
    let lost = t.renew(&a).await.unwrap_err();
    assert!(lost.to_string().contains("gone"), "{lost}");
    let b = won(t, &req(&e, "b", ttl)).await;
    assert!(b.token > a.token, "{} > {}", b.token, a.token);
    // The old term cannot release the new one.
    t.release(&a).await.unwrap();
    assert_eq!(t.leader(&e).await.unwrap().map(|l| l.token), Some(b.token));
    // Again, after a server restart (InnoDB keeps its AUTO_INCREMENT counter).
    db.sql(&format!(
        "DELETE FROM `{DB}`.leasehold_leases; DELETE FROM `{DB}`.leasehold_tokens"
    ))
    .await
    .unwrap();
    db.restart().await.expect("restart MariaDB");
    let c = won_within(t, &req(&e, "c", ttl), Duration::from_secs(10)).await;
    assert!(c.token > b.token, "{} > {}", c.token, b.token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_emptied_token_table_is_reported_not_reused() {
    let db = server().await;
    let backend = connect(db.port()).await;
    let t = backend.table();
    let e = unique_name("truncated");
    let a = won(t, &req(&e, "a", Duration::from_secs(30))).await;
    t.release(&a).await.unwrap();
    // TRUNCATE resets AUTO_INCREMENT: the counter now starts below a's token.
    db.sql(&format!("TRUNCATE TABLE `{DB}`.leasehold_tokens"))
        .await
        .unwrap();
    let err = t
        .acquire(&req(&e, "b", Duration::from_secs(30)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidRecord { .. }) && err.to_string().contains("AUTO_INCREMENT"),
        "{err}"
    );
    assert_eq!(t.leader(&e).await.unwrap(), None);
}

/// The term-starting UPDATE waits on a row lock held by another session;
/// the caller gives up (its future is dropped); the lock goes, the
/// statement lands unseen. The same candidate's next attempt takes that
/// term instead of waiting a ttl for its own ghost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acquire_whose_answer_was_lost_is_found_again() {
    let db = server().await;
    let backend = connect(db.port()).await;
    let t = backend.table();
    let e = unique_name("lost-acquire");
    let ttl = Duration::from_secs(30);
    let a = won(t, &req(&e, "a", ttl)).await;
    t.release(&a).await.unwrap();

    let mut holder = locker(&db, &e).await;
    let b = req(&e, "b", ttl);
    let gave_up = timeout(Duration::from_millis(1500), t.acquire(&b)).await;
    assert!(
        gave_up.is_err(),
        "the acquire should wait on the lock: {gave_up:?}"
    );
    holder.query_drop("COMMIT").await.unwrap();
    // The UPDATE lands now, with nobody listening.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leader = t.leader(&e).await.unwrap();
        if leader.as_ref().map(|l| l.holder.as_str()) == Some("b") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lost UPDATE never landed: {leader:?}"
        );
        sleep(Duration::from_millis(50)).await;
    }
    let landed = t.leader(&e).await.unwrap().unwrap().token;
    let again = won(t, &b).await;
    assert_eq!(
        again.token, landed,
        "the landed term is taken, not a new one"
    );
    assert!(again.token > a.token);
    let renewed = t.renew(&again).await.unwrap();
    t.release(&renewed).await.unwrap();
    assert_eq!(t.leader(&e).await.unwrap(), None);
    // Another candidate never adopts b's term.
    let c = won(t, &req(&e, "c", ttl)).await;
    assert!(c.token > again.token);
}

/// A renewal waits on a row lock held by another session; the caller gives
/// up (its future is dropped, as the engine drops a call past its
/// deadline); the lock goes and the renewal lands unseen. The next renewal,
/// with the claim the engine still has (the old version), works: renewals
/// match on owner and token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewal_whose_answer_was_lost_does_not_lose_the_lease() {
    let db = server().await;
    let backend = connect(db.port()).await;
    let t = backend.table();
    let e = unique_name("lost-renew");
    let a = won(t, &req(&e, "a", Duration::from_secs(30))).await;
    assert_eq!(version_of(&db, &e).await, a.version);
    let mut holder = locker(&db, &e).await;
    let gave_up = timeout(Duration::from_millis(1000), t.renew(&a)).await;
    assert!(
        gave_up.is_err(),
        "the renewal should wait on the lock: {gave_up:?}"
    );
    holder.query_drop("COMMIT").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while version_of(&db, &e).await == a.version {
        assert!(Instant::now() < deadline, "the lost renewal never landed");
        sleep(Duration::from_millis(50)).await;
    }
    let renewed = t.renew(&a).await.expect("renew with the old claim");
    assert_eq!(renewed.version, a.version + 2, "{renewed:?} after {a:?}");
    assert_eq!(t.leader(&e).await.unwrap().map(|l| l.token), Some(a.token));
    // A release whose answer is lost, then retried, is harmless too.
    let mut locker2 = locker(&db, &e).await;
    let gave_up = timeout(Duration::from_millis(1000), t.release(&renewed)).await;
    assert!(gave_up.is_err(), "the release should wait on the lock");
    locker2.query_drop("COMMIT").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.leader(&e).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the lost release never landed");
        sleep(Duration::from_millis(50)).await;
    }
    t.release(&renewed)
        .await
        .expect("a second release is harmless");
}

/// A session of its own that holds the row lock of `election`'s lease row.
async fn locker(db: &MariaDb, election: &str) -> mysql_async::Conn {
    let url = format!("mysql://{USER}:{PASSWORD}@127.0.0.1:{}/{DB}", db.port());
    let mut conn = mysql_async::Conn::from_url(url)
        .await
        .expect("locker connects");
    conn.query_drop("BEGIN").await.unwrap();
    conn.exec_drop(
        "SELECT * FROM leasehold_leases WHERE election = ? FOR UPDATE",
        (election,),
    )
    .await
    .unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_while_a_leader_holds_the_lease() {
    let db = server().await;
    let backend = connect(db.port()).await;
    let t = backend.table();
    let e = unique_name("restart");
    let ttl = Duration::from_secs(30);
    let a = won(t, &req(&e, "a", ttl)).await;
    db.kill();
    let err = t.renew(&a).await.unwrap_err();
    assert!(err.is_transient(), "an outage is not a loss: {err}");
    db.restart().await.expect("restart MariaDB");
    // The row survived the crash: the leader renews on, nobody else leads.
    let renewed = timeout(Duration::from_secs(15), async {
        for _ in 0..100 {
            match t.renew(&a).await {
                Ok(c) => return c,
                Err(e) if e.is_transient() => sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("renew after the restart: {e}"),
            }
        }
        panic!("no renewal after the restart");
    })
    .await
    .expect("renew within 15 s of the restart");
    assert_eq!(renewed.token, a.token);
    match t.acquire(&req(&e, "b", ttl)).await.unwrap() {
        Acquired::Held { leader, .. } => assert_eq!(leader.map(|l| l.holder), Some("a".into())),
        other => panic!("b must not lead: {other:?}"),
    }
    t.release(&renewed).await.unwrap();
    let b = won(t, &req(&e, "b", ttl)).await;
    assert!(b.token > a.token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_auth_and_tls_with_a_test_ca() {
    let db = MariaDb::start_tls()
        .await
        .unwrap_or_else(|e| panic!("could not start MariaDB with TLS: {e}"));
    setup_user(&db, "REQUIRE SSL").await;
    let ca = db.tls_files().expect("tls files").ca.clone();

    // Verified TLS with the test's CA and the right password.
    let backend = builder(db.port())
        .tls_ca(&ca)
        .tls(TlsMode::VerifyFull)
        .build()
        .await
        .unwrap_or_else(|e| panic!("TLS connect: {e}"));
    let e = unique_name("tls");
    let a = won(backend.table(), &req(&e, "a", Duration::from_secs(5))).await;
    backend.table().release(&a).await.unwrap();
    let debug = format!("{backend:?} {:?}", builder(db.port()));
    assert!(!debug.contains(PASSWORD), "{debug}");
    let cipher = db
        .sql("SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'Ssl_accepts'")
        .await
        .unwrap();
    assert!(cipher.trim().parse::<u64>().unwrap() >= 1, "{cipher}");

    // The user requires TLS: plain TCP is refused, in the user's words.
    let err = builder(db.port()).build().await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err}");
    // A wrong password.
    let err = MysqlBackend::builder()
        .port(db.port())
        .auth(USER, "wrong")
        .database(DB)
        .tls_ca(&ca)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::PermissionDenied { .. }) && err.to_string().contains("password"),
        "{err}"
    );
    assert!(!err.to_string().contains("wrong"), "{err}");
    // A CA that did not sign the server's certificate.
    let other = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-days",
            "1",
            "-subj",
            "/CN=other",
            "-newkey",
            "ec",
        ])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .arg("-keyout")
        .arg(other.path().join("k"))
        .arg("-out")
        .arg(other.path().join("ca.crt"))
        .output()
        .expect("openssl");
    assert!(status.status.success());
    let err = builder(db.port())
        .tls_ca(other.path().join("ca.crt"))
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_create_privilege_the_error_gives_the_ddl() {
    let db = server().await;
    db.sql(&format!(
        "CREATE USER 'limited'@'127.0.0.1' IDENTIFIED BY 'pw'; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON `{DB}`.* TO 'limited'@'127.0.0.1'"
    ))
    .await
    .unwrap();
    let limited = || {
        MysqlBackend::builder()
            .port(db.port())
            .auth("limited", "pw")
            .database(DB)
            .table("elections")
            .tokens_table("election_tokens")
    };
    let err = limited().build().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::PermissionDenied { .. }), "{msg}");
    assert!(
        msg.contains("CREATE TABLE IF NOT EXISTS `leasehold`.`elections`"),
        "{msg}"
    );
    assert!(msg.contains("`leasehold`.`election_tokens`"), "{msg}");
    // An administrator runs exactly what the message says.
    let ddl = msg.split_once("run:\n").expect("the statements").1;
    db.sql(ddl).await.expect("the DDL from the message runs");
    let backend = limited().build().await.expect("the tables exist now");
    let e = unique_name("limited");
    let a = won(backend.table(), &req(&e, "a", Duration::from_secs(5))).await;
    backend.table().release(&a).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_server_is_unavailable_not_a_panic() {
    let db = server().await;
    let port = db.port();
    drop(db);
    let err = builder(port).build().await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    let err = builder(1).database("bad name").build().await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

async fn version_of(db: &MariaDb, e: &str) -> u64 {
    let sql = format!("SELECT version FROM `{DB}`.leasehold_leases WHERE election = '{e}'");
    db.sql(&sql).await.unwrap().trim().parse::<u64>().unwrap()
}

/// The conformance subject: one MariaDB, 2 s leases, each client its own pool.
struct MysqlSubject<'a> {
    port: u16,
    db: &'a MariaDb,
}

#[leasehold_core::conformance::async_trait]
impl leasehold_core::conformance::Subject for MysqlSubject<'_> {
    async fn client(&self) -> std::sync::Arc<dyn leasehold_core::Backend> {
        std::sync::Arc::new(connect(self.port).await)
    }

    fn options(&self, election: &str, candidate: &str) -> leasehold_core::ElectionOptions {
        leasehold_core::ElectionOptions::new(election, candidate).with_ttl(Duration::from_secs(2))
    }

    fn slack(&self) -> Duration {
        // Expiry is exact (the database's clock in the statement); the rest
        // is room for a loaded machine.
        Duration::from_millis(1500)
    }

    async fn delete_by_hand(&self, election: &str) {
        self.db
            .sql(&format!(
                "DELETE FROM `{DB}`.leasehold_leases WHERE election = '{election}'"
            ))
            .await
            .expect("delete the lease row by hand");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_on_mariadb() {
    let db = server().await;
    leasehold_core::conformance::run_all(&MysqlSubject {
        port: db.port(),
        db: &db,
    })
    .await;
}

/// Through the facade: a `mysql://` URL and a `kind = "mysql"` config table
/// reach the same election; a release hands over within a poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_facade_reads_urls_and_config_tables() {
    let db = server().await;
    let e = unique_name("facade");
    let url = format!(
        "mysql://{USER}:{PASSWORD}@127.0.0.1:{}/{DB}/{e}?id=a&ttl=3s&table=facade_leases&tokens_table=facade_tokens",
        db.port()
    );
    let a = leasehold::connect(&url)
        .await
        .unwrap_or_else(|err| panic!("connect {url}: {err}"));
    let toml = format!(
        r#"
        election = "{e}"
        id = "b"
        ttl = "3s"
        [store]
        kind = "mysql"
        host = "127.0.0.1:{port}"
        database = "{DB}"
        user = "{USER}"
        password = "{PASSWORD}"
        table = "facade_leases"
        tokens_table = "facade_tokens"
        "#,
        port = db.port()
    );
    let config = leasehold::config::ElectionConfig::from_toml(&toml).expect("config parses");
    assert!(!format!("{config:?}").contains(PASSWORD));
    let b = config.connect().await.expect("connect from the config");

    let la = timeout(Duration::from_secs(10), a.lock())
        .await
        .expect("a leads within 10 s")
        .expect("a's lock");
    let token_a = la.fencing_token();
    let waiter = tokio::spawn(async move { b.lock().await });
    sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "b must wait while a leads");
    let released = Instant::now();
    la.unlock().await.expect("a releases");
    let lb = timeout(Duration::from_secs(10), waiter)
        .await
        .expect("b leads within 10 s of the release")
        .unwrap()
        .expect("b's lock");
    println!("handover after release: {:?}", released.elapsed());
    assert!(lb.fencing_token() > token_a);
    let rows = db
        .sql(&format!(
            "SELECT holder FROM `{DB}`.facade_leases WHERE election = '{e}'"
        ))
        .await
        .unwrap();
    assert_eq!(rows.trim(), "b");
    lb.unlock().await.expect("b releases");
}

/// Renewals that meet share statements: 200 leases renewed at once cost far
/// fewer than 200 statements, each lease gets its own answer, and a stale
/// term among them is told it lost while the others renew.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_renewals_share_statements() {
    let db = server().await;
    let backend = connect(db.port()).await;
    let t = backend.table();
    let ttl = Duration::from_secs(30);
    let mut terms = Vec::new();
    for i in 0..200 {
        let e = unique_name(&format!("batch{i}"));
        terms.push(won(t, &req(&e, "a", ttl)).await);
    }
    // One of them is taken over behind its holder's back.
    let stale = terms[7].clone();
    t.release(&stale).await.unwrap();
    let _thief = won(t, &req(&stale.election, "thief", ttl)).await;

    let (statements_before, _) = t.renewal_counts();
    for round in 0..3 {
        let mut tasks = tokio::task::JoinSet::new();
        for term in terms.clone() {
            let b = backend.clone();
            tasks.spawn(async move { (term.clone(), b.table().renew(&term).await) });
        }
        let mut renewed = 0;
        while let Some(joined) = tasks.join_next().await {
            let (term, result) = joined.unwrap();
            match result {
                Ok(new) => {
                    assert_ne!(
                        term.election, stale.election,
                        "round {round}: the stale term renewed"
                    );
                    assert_eq!((new.owner, new.token), (term.owner.clone(), term.token));
                    assert!(new.version > term.version);
                    renewed += 1;
                }
                Err(e) => {
                    assert_eq!(term.election, stale.election, "round {round}: {e}");
                    assert!(e.is_lost(), "{e}");
                }
            }
        }
        assert_eq!(renewed, 199, "round {round}");
    }
    let (statements, renewals) = t.renewal_counts();
    let used = statements - statements_before;
    println!(
        "600 renewals (3 rounds of 200 at once) took {used} statements; {renewals} renewals in all"
    );
    assert!(used < 600, "renewals were not batched: {used} statements");
    // Every live row's version moved on by exactly three.
    for term in terms.iter().filter(|x| x.election != stale.election) {
        assert_eq!(version_of(&db, &term.election).await, term.version + 3);
    }
}

/// 1,000 locks held by one process on one backend: every one stays held
/// across several renew intervals, and the figures (statements the server
/// executed per renew interval, against 1,000 for one statement per lock)
/// are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_locks_in_one_process() {
    const N: usize = 1000;
    let db = server().await;
    let backend: std::sync::Arc<dyn leasehold_core::Backend> = std::sync::Arc::new(
        builder(db.port())
            .max_connections(20)
            .build()
            .await
            .unwrap(),
    );
    // Cost, not timing, is measured here: a ttl with room for a loaded machine.
    let ttl = Duration::from_secs(6);
    let mut locking = tokio::task::JoinSet::new();
    for i in 0..N {
        let b = backend.clone();
        let e = unique_name(&format!("k{i}"));
        locking.spawn(async move {
            let el = leasehold_core::Elector::new(
                b,
                leasehold_core::ElectionOptions::new(&e, "holder").with_ttl(ttl),
            )
            .unwrap();
            timeout(Duration::from_secs(60), el.lock())
                .await
                .expect("lock within 60 s")
                .expect("lock")
        });
    }
    let mut held = Vec::with_capacity(N);
    while let Some(l) = locking.join_next().await {
        held.push(l.unwrap());
    }
    let questions = || async {
        let out = db.sql("SHOW GLOBAL STATUS LIKE 'Questions'").await.unwrap();
        out.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let renew_interval = leasehold_core::ElectionOptions::new("x", "y")
        .with_ttl(ttl)
        .renew_interval;
    let window = renew_interval * 5;
    let before = questions().await;
    sleep(window).await;
    let after = questions().await;
    // One of the two SHOW STATUS statements falls inside the window.
    let per_interval = (after - before - 1) as f64 / 5.0;
    println!(
        "{N} locks, renew interval {renew_interval:?}: {per_interval:.0} statements per renew interval \
         (one statement per lock would be {N})"
    );
    for l in &held {
        assert!(
            !l.is_lost(),
            "{} lost its lease: {:?}",
            l.election(),
            l.loss_reason()
        );
    }
    let tokens: std::collections::HashSet<_> = held.iter().map(|l| l.fencing_token()).collect();
    assert_eq!(tokens.len(), N);
    for l in held {
        l.unlock().await.unwrap();
    }
}

/// The application's own pool, as a service would make it.
fn app_pool(port: u16) -> mysql_async::Pool {
    mysql_async::Pool::new(
        mysql_async::OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(port)
            .user(Some(USER))
            .pass(Some(PASSWORD))
            .db_name(Some(DB))
            .prefer_socket(false),
    )
}

async fn app_table(pool: &mysql_async::Pool, name: &str) {
    let mut conn = pool.get_conn().await.expect("connect");
    conn.query_drop(format!(
        "CREATE TABLE `{name}` (`k` VARCHAR(64) PRIMARY KEY, `v` VARCHAR(255) NOT NULL) ENGINE=InnoDB"
    ))
    .await
    .expect("the application's table");
    conn.query_drop(format!("INSERT INTO `{name}` VALUES ('config', 'initial')"))
        .await
        .expect("insert");
}

/// One guarded statement: rows it matched (1 while the term lasts, else 0).
async fn guarded_update(
    pool: &mysql_async::Pool,
    guard: &leasehold_mysql::LeaderGuard,
    table: &str,
    value: &str,
) -> u64 {
    let mut conn = pool.get_conn().await.expect("connect");
    let sql = format!(
        "UPDATE `{table}` SET `v` = ? WHERE `k` = ? AND {}",
        guard.condition()
    );
    let mut params: Vec<mysql_async::Value> = vec![value.into(), "config".into()];
    params.extend(guard.params());
    conn.exec_drop(sql, mysql_async::Params::Positional(params))
        .await
        .expect("the guarded statement runs");
    conn.affected_rows()
}

/// One guarded transaction: `hold`, write, commit; `Err` when the guard
/// refused (the transaction is rolled back).
async fn guarded_transaction(
    pool: &mysql_async::Pool,
    guard: &leasehold_mysql::LeaderGuard,
    table: &str,
    value: &str,
) -> Result<(), Error> {
    let mut tx = pool
        .start_transaction(mysql_async::TxOpts::default())
        .await
        .expect("begin");
    guard.hold(&mut tx).await?;
    tx.exec_drop(
        format!("UPDATE `{table}` SET `v` = ? WHERE `k` = 'config'"),
        (value,),
    )
    .await
    .expect("the write");
    tx.commit().await.expect("commit");
    Ok(())
}

async fn app_value(pool: &mysql_async::Pool, table: &str) -> String {
    let mut conn = pool.get_conn().await.expect("connect");
    conn.query_first(format!("SELECT `v` FROM `{table}` WHERE `k` = 'config'"))
        .await
        .expect("read")
        .expect("the row")
}

/// Issue 24: a write guarded by `leader_guard` lands while the term lasts,
/// as one statement and as a transaction (`hold`), and the first one after
/// the term ends fails: after an unlock, after the lease row is deleted by
/// hand, and after the lease expires while the leader is cut off from the
/// database (its renewals go unanswered past its ttl) and another candidate
/// takes over. The backend runs on the application's own pool (`pool`) and
/// hands it out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_write_lands_only_while_the_term_lasts() {
    use leasehold_core::{ElectionOptions, Elector};
    use leasehold_integration_tests::Proxy;
    use std::sync::Arc;
    let db = server().await;
    let backend = MysqlBackend::builder()
        .pool(app_pool(db.port()))
        .database(DB)
        .request_timeout(Duration::from_secs(2))
        .build()
        .await
        .expect("a backend on the application's pool");
    let pool = backend.pool().clone();
    let data = unique_name("app_data").replace('-', "_");
    app_table(&pool, &data).await;
    let e = unique_name("guarded");
    let elector = Elector::new(
        Arc::new(backend.clone()),
        ElectionOptions::new(&e, "alpha").with_ttl(Duration::from_secs(3)),
    )
    .expect("elector");
    let lock = || async {
        timeout(Duration::from_secs(10), elector.lock())
            .await
            .expect("lock in time")
            .expect("lock")
    };

    // While leading: both ways land.
    let l1 = lock().await;
    let g1 = backend.leader_guard(&l1);
    assert_eq!(g1.token(), l1.fencing_token().get());
    assert_eq!(
        guarded_update(&pool, &g1, &data, "term 1 statement").await,
        1
    );
    guarded_transaction(&pool, &g1, &data, "term 1 transaction")
        .await
        .expect("the leader's transaction lands");
    // After unlock: neither does.
    l1.clone().unlock().await.expect("unlock");
    assert_eq!(guarded_update(&pool, &g1, &data, "after unlock").await, 0);
    let refused = guarded_transaction(&pool, &g1, &data, "after unlock")
        .await
        .expect_err("a transaction guarded by an ended term landed");
    assert!(refused.is_lost(), "{refused:?}");
    assert_eq!(app_value(&pool, &data).await, "term 1 transaction");

    // After the row is deleted by hand.
    let l2 = lock().await;
    let g2 = backend.leader_guard(&l2);
    assert!(g2.token() > g1.token());
    assert_eq!(guarded_update(&pool, &g2, &data, "term 2").await, 1);
    let mut conn = pool.get_conn().await.expect("connect");
    conn.exec_drop(
        "DELETE FROM `leasehold_leases` WHERE `election` = ?",
        (e.as_str(),),
    )
    .await
    .expect("delete by hand");
    assert_eq!(conn.affected_rows(), 1);
    drop(conn);
    assert_eq!(guarded_update(&pool, &g2, &data, "after delete").await, 0);
    assert!(
        guarded_transaction(&pool, &g2, &data, "after delete")
            .await
            .expect_err("landed after the delete")
            .is_lost()
    );
    assert_eq!(app_value(&pool, &data).await, "term 2");
    timeout(Duration::from_secs(10), l2.lost())
        .await
        .expect("the term ends after its row is deleted");

    // After the lease expires: alpha's link to the database is cut while
    // beta waits; beta takes over once the database's clock says the lease
    // ran out, and alpha's guard refuses from then on.
    let proxy = Proxy::start(db.addr()).await;
    let cut_off = builder(proxy.addr().port())
        .request_timeout(Duration::from_secs(1))
        .build()
        .await
        .expect("alpha's backend");
    let alpha = Elector::new(
        Arc::new(cut_off.clone()),
        ElectionOptions::new(&e, "alpha").with_ttl(Duration::from_secs(2)),
    )
    .expect("alpha");
    let beta = Elector::new(
        Arc::new(backend.clone()),
        ElectionOptions::new(&e, "beta").with_ttl(Duration::from_secs(2)),
    )
    .expect("beta");
    let la = timeout(Duration::from_secs(10), alpha.lock())
        .await
        .expect("alpha leads in time")
        .expect("lock");
    let ga = cut_off.leader_guard(&la);
    assert_eq!(guarded_update(&pool, &ga, &data, "alpha").await, 1);
    let waiting = tokio::spawn(async move { beta.lock().await });
    proxy.blackhole();
    let lb = timeout(Duration::from_secs(15), waiting)
        .await
        .expect("beta leads after alpha's lease expired")
        .expect("task")
        .expect("lock");
    assert!(lb.fencing_token() > la.fencing_token());
    assert_eq!(guarded_update(&pool, &ga, &data, "alpha, stale").await, 0);
    assert!(
        guarded_transaction(&pool, &ga, &data, "alpha, stale")
            .await
            .expect_err("a stale leader's transaction landed")
            .is_lost()
    );
    let gb = backend.leader_guard(&lb);
    assert_eq!(guarded_update(&pool, &gb, &data, "beta").await, 1);
    assert_eq!(app_value(&pool, &data).await, "beta");
    timeout(Duration::from_secs(5), la.lost())
        .await
        .expect("alpha stepped down on its own deadline");
    lb.unlock().await.expect("unlock");
    drop(proxy);

    // Connection settings beside an own pool are refused in the user's words.
    let err = MysqlBackend::builder()
        .pool(pool.clone())
        .database(DB)
        .host("10.0.0.1")
        .auth("x", "y")
        .build_table()
        .expect_err("settings beside a pool");
    let text = err.to_string();
    assert!(
        text.contains("auth, host") && text.contains("own connection pool"),
        "{text}"
    );
}

/// Issue 24, the adversarial half: a transaction that took the guard keeps
/// the term lasting until it commits. Alpha holds the guard and writes, then
/// sits on the open transaction past its lease's expiry while beta tries to
/// take over; beta's takeover waits on the row lock (or gives up and tries
/// again), so it wins only after alpha's transaction committed. Without the
/// guard's `LOCK IN SHARE MODE` beta would lead while alpha's write is still
/// to commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_transaction_commits_before_the_next_term() {
    let db = server().await;
    let (a, b) = (connect(db.port()).await, connect(db.port()).await);
    let pool = app_pool(db.port());
    let data = unique_name("app_data").replace('-', "_");
    app_table(&pool, &data).await;
    let e = unique_name("guard-order");
    let ta = won(a.table(), &req(&e, "alpha", Duration::from_secs(1))).await;
    let guard = a.table().leader_guard(&ta);

    let mut tx = pool
        .start_transaction(mysql_async::TxOpts::default())
        .await
        .expect("begin");
    guard.hold(&mut tx).await.expect("alpha's term lasts");
    tx.exec_drop(
        format!("UPDATE `{data}` SET `v` = 'alpha' WHERE `k` = 'config'"),
        (),
    )
    .await
    .expect("write");
    let e2 = e.clone();
    let takeover = tokio::spawn(async move {
        won_within(
            b.table(),
            &req(&e2, "beta", Duration::from_secs(10)),
            Duration::from_secs(30),
        )
        .await
    });
    // Three times the ttl: by the database's clock alpha's lease is long over.
    sleep(Duration::from_secs(3)).await;
    assert!(
        !takeover.is_finished(),
        "beta took over while alpha's guarded transaction was open"
    );
    let committed = Instant::now();
    tx.commit().await.expect("alpha's transaction commits");
    let tb = timeout(Duration::from_secs(35), takeover)
        .await
        .expect("beta leads after the commit")
        .expect("task");
    eprintln!("beta led {:?} after alpha's commit", committed.elapsed());
    assert!(tb.token > ta.token);
    assert_eq!(app_value(&pool, &data).await, "alpha");
    assert_eq!(guarded_update(&pool, &guard, &data, "alpha, late").await, 0);
    pool.disconnect().await.expect("disconnect");
}
