//! leasehold-postgres against real PostgreSQL 15 (and PgBouncer in
//! transaction mode): the lease table's statements, password and TLS, a
//! table without privileges, a row deleted by hand, an answer lost after
//! the statement landed, a database restart while a leader holds its lease,
//! LISTEN/NOTIFY wake-ups, and renewal batching.
//!
//! Every test starts its own server through the harness (initdb + postgres
//! on a free loopback port, as the `postgres` user) and stops it by pid.

use std::sync::Arc;
use std::time::Duration;

use leasehold_core::conformance::{Subject, async_trait, run_all};
use leasehold_core::{Backend, ElectionOptions, Error};
use leasehold_integration_tests::{PgBouncer, PgOptions, PgServer, Proxy, ProxyMode, unique_name};
use leasehold_postgres::{Acquired, LeaseTable, PostgresBackend, PostgresBuilder, SslMode, Term};
use tokio::time::{Instant, sleep, timeout};

async fn start(options: PgOptions) -> PgServer {
    PgServer::start_with(options)
        .await
        .unwrap_or_else(|e| panic!("could not start PostgreSQL: {e}"))
}

fn builder(port: u16) -> PostgresBuilder {
    PostgresBuilder::new()
        .host("127.0.0.1", port)
        .user("postgres")
        .dbname("postgres")
        .ssl_mode(SslMode::Disable)
        .request_timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_secs(3))
}

fn table(port: u16) -> LeaseTable {
    builder(port).build_table().expect("builder")
}

/// A plain tokio-postgres client of the test's own (as an administrator).
async fn admin(port: u16) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("admin connection");
    tokio::spawn(connection);
    client
}

/// The conformance subject: one server (or PgBouncer in front of it), a
/// backend of its own per client, 2 s leases.
struct PgSubject {
    port: u16,
    /// The server itself, for the test's own statements.
    admin_port: u16,
    listen: bool,
}

#[async_trait]
impl Subject for PgSubject {
    async fn client(&self) -> Arc<dyn Backend> {
        let backend: PostgresBackend = builder(self.port)
            .listen(self.listen)
            .request_timeout(Duration::from_secs(2))
            .build()
            .expect("builder");
        Arc::new(backend)
    }

    fn options(&self, election: &str, candidate: &str) -> ElectionOptions {
        ElectionOptions::new(election, candidate).with_ttl(Duration::from_secs(2))
    }

    fn slack(&self) -> Duration {
        // The database expires on its own clock at once; the rest is room
        // for a loaded machine.
        Duration::from_millis(1500)
    }

    async fn delete_by_hand(&self, election: &str) {
        let sql = admin(self.admin_port).await;
        let n = sql
            .execute(
                &format!(
                    "DELETE FROM {} WHERE election = $1",
                    leasehold_postgres::DEFAULT_TABLE
                ),
                &[&election],
            )
            .await
            .expect("delete the row");
        assert_eq!(n, 1, "the row of {election} was not there to delete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_direct_with_notify() {
    let pg = start(PgOptions::default()).await;
    let subject = PgSubject {
        port: pg.port(),
        admin_port: pg.port(),
        listen: true,
    };
    timeout(Duration::from_secs(240), run_all(&subject))
        .await
        .expect("the conformance suite did not finish within 240 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_suite_through_pgbouncer_polling() {
    let pg = start(PgOptions::default()).await;
    let bouncer = PgBouncer::start(&pg, 4)
        .await
        .unwrap_or_else(|e| panic!("could not start PgBouncer: {e}"));
    let subject = PgSubject {
        port: bouncer.port(),
        admin_port: pg.port(),
        listen: false,
    };
    timeout(Duration::from_secs(240), run_all(&subject))
        .await
        .expect("the conformance suite did not finish within 240 s");
}

async fn won(t: &LeaseTable, election: &str, who: &str, ttl: Duration) -> Term {
    match t.acquire(election, who, who.as_bytes(), ttl).await {
        Ok(Acquired::Won(term)) => term,
        other => panic!("{who} should lead {election}: {other:?}"),
    }
}

async fn held(t: &LeaseTable, election: &str, who: &str) -> Option<String> {
    match t.acquire(election, who, b"", Duration::from_secs(10)).await {
        Ok(Acquired::Held { holder, .. }) => holder.map(|h| h.id),
        other => panic!("{who} should be refused {election}: {other:?}"),
    }
}

/// Acquire as `who` until it wins, at most `within` (polls every 50 ms).
async fn win_within(t: &LeaseTable, election: &str, who: &str, within: Duration) -> Term {
    let started = Instant::now();
    loop {
        match t.acquire(election, who, b"", Duration::from_secs(10)).await {
            Ok(Acquired::Won(term)) => return term,
            Ok(Acquired::Held { .. }) | Err(_) if started.elapsed() < within => {
                sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{who} did not lead {election} within {within:?}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_renew_release_and_tokens() {
    let pg = start(PgOptions::default()).await;
    let (a, b) = (table(pg.port()), table(pg.port()));
    let e = unique_name("basic");
    let ttl = Duration::from_secs(10);

    let ta = won(&a, &e, "alpha", ttl).await;
    assert_eq!(held(&b, &e, "beta").await.as_deref(), Some("alpha"));
    let leader = b.leader(&e).await.expect("leader").expect("a leader");
    assert_eq!((leader.id.as_str(), leader.token), ("alpha", ta.token));
    assert_eq!(leader.value, b"alpha");

    let ta2 = a.renew(&ta).await.expect("renew");
    assert_eq!(ta2.token, ta.token);
    assert!(ta2.version > ta.version, "{ta2:?} after {ta:?}");

    a.release(&ta2).await.expect("release");
    a.release(&ta2).await.expect("a second release is harmless");
    assert_eq!(b.leader(&e).await.expect("leader"), None);
    let tb = won(&b, &e, "beta", ttl).await;
    assert!(tb.token > ta.token, "{tb:?} after {ta:?}");

    // The old term is gone: its renewal is Lost, its release touches nothing.
    let lost = a
        .renew(&ta2)
        .await
        .expect_err("a released term cannot renew");
    assert!(lost.is_lost(), "{lost:?}");
    a.release(&ta2).await.expect("release of a gone term");
    assert_eq!(
        b.leader(&e).await.expect("leader").map(|h| h.id).as_deref(),
        Some("beta")
    );
    // A forged term with beta's token but another owner cannot release it.
    let forged = Term {
        owner: "not-beta".into(),
        ..tb.clone()
    };
    a.release(&forged).await.expect("release");
    assert!(a.renew(&forged).await.expect_err("forged").is_lost());
    assert_eq!(
        b.leader(&e).await.expect("leader").map(|h| h.token),
        Some(tb.token)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_clock_expires_a_silent_holder() {
    let pg = start(PgOptions::default()).await;
    let (a, b) = (table(pg.port()), table(pg.port()));
    let e = unique_name("expiry");
    let ta = won(&a, &e, "alpha", Duration::from_millis(600)).await;
    assert_eq!(held(&b, &e, "beta").await.as_deref(), Some("alpha"));
    let started = Instant::now();
    let tb = win_within(&b, &e, "beta", Duration::from_secs(10)).await;
    println!("takeover after {:?} (ttl 600 ms)", started.elapsed());
    assert!(tb.token > ta.token);
    assert!(a.renew(&ta).await.expect_err("expired").is_lost());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_deleted_by_hand_keeps_tokens_increasing() {
    let pg = start(PgOptions::default()).await;
    let a = table(pg.port());
    let e = unique_name("deleted");
    let t1 = won(&a, &e, "alpha", Duration::from_secs(30)).await;
    let sql = admin(pg.port()).await;
    let n = sql
        .execute(
            &format!("DELETE FROM {} WHERE election = $1", a.table_name()),
            &[&e],
        )
        .await
        .expect("delete");
    assert_eq!(n, 1);
    assert!(a.renew(&t1).await.expect_err("row gone").is_lost());
    let t2 = won(&a, &e, "beta", Duration::from_secs(30)).await;
    assert!(t2.token > t1.token, "{t2:?} after {t1:?}");
    // Even the same candidate gets a new owner and a greater token.
    a.release(&t2).await.expect("release");
    let t3 = won(&a, &e, "beta", Duration::from_secs(30)).await;
    assert!(t3.token > t2.token && t3.owner != t2.owner);
    assert!(a.renew(&t2).await.expect_err("old term").is_lost());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_candidates_exactly_one_wins() {
    let pg = start(PgOptions::default()).await;
    let e = unique_name("race");
    let shared = table(pg.port());
    shared.ensure_schema().await.expect("schema");
    let mut tasks = Vec::new();
    for i in 0..20 {
        // Half on their own connections, half sharing one.
        let t = if i % 2 == 0 {
            table(pg.port())
        } else {
            shared.clone()
        };
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            t.acquire(&e, &format!("c{i}"), b"", Duration::from_secs(30))
                .await
        }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(Acquired::Won(_)) => winners += 1,
            Ok(Acquired::Held { .. }) => {}
            Err(err) => panic!("an attempt failed: {err}"),
        }
    }
    assert_eq!(winners, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_pgbouncer_in_transaction_mode() {
    let pg = start(PgOptions::default()).await;
    let bouncer = PgBouncer::start(&pg, 2)
        .await
        .unwrap_or_else(|e| panic!("could not start PgBouncer: {e}"));
    let t = builder(bouncer.port())
        .listen(false)
        .build_table()
        .expect("builder");
    assert!(t.watch("x").is_err(), "no watch with listen=false");
    // Many statements, concurrently, over 2 server connections: named
    // prepared statements or session state would break here.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let e = format!("bouncer-{i}");
            let mut last = 0;
            for round in 0..5 {
                let term = match t
                    .acquire(&e, "alpha", b"v", Duration::from_secs(10))
                    .await
                    .unwrap_or_else(|err| panic!("acquire {e} round {round}: {err}"))
                {
                    Acquired::Won(term) => term,
                    held => panic!("{e} round {round}: {held:?}"),
                };
                assert!(term.token > last);
                last = term.token;
                let term = t.renew(&term).await.expect("renew");
                assert_eq!(
                    t.leader(&e).await.expect("leader").map(|h| h.token),
                    Some(term.token)
                );
                t.release(&term).await.expect("release");
            }
        }));
    }
    for task in tasks {
        task.await.expect("a task panicked");
    }
    let s = t.statements();
    println!("through PgBouncer: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_tls() {
    let pg = start(PgOptions {
        password: Some("s3cret pass".into()),
        tls: true,
        tls_only: true,
        ..PgOptions::default()
    })
    .await;
    let ca = pg.ca_path().expect("a CA").to_path_buf();
    let e = unique_name("tls");
    let good = builder(pg.port())
        .password("s3cret pass")
        .ssl_mode(SslMode::VerifyFull)
        .ssl_root_cert(&ca)
        .build_table()
        .expect("builder");
    assert!(!format!("{good:?}").contains("s3cret"));
    won(&good, &e, "alpha", Duration::from_secs(10)).await;

    // prefer (libpq's default) takes TLS when offered.
    let prefer = builder(pg.port())
        .password("s3cret pass")
        .ssl_mode(SslMode::Prefer)
        .build_table()
        .expect("builder");
    assert_eq!(held(&prefer, &e, "beta").await.as_deref(), Some("alpha"));

    let wrong = builder(pg.port())
        .password("wrong")
        .ssl_mode(SslMode::VerifyFull)
        .ssl_root_cert(&ca)
        .build_table()
        .expect("builder");
    let err = wrong.leader(&e).await.expect_err("a wrong password");
    assert!(
        matches!(err, Error::PermissionDenied { .. }),
        "wrong password: {err:?}"
    );
    assert!(!err.to_string().contains("wrong\""), "{err}");

    let plain = builder(pg.port())
        .password("s3cret pass")
        .build_table()
        .expect("builder");
    let err = plain.leader(&e).await.expect_err("no TLS: no pg_hba entry");
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");

    // verify-full against the system's roots: the test CA is unknown.
    let untrusted = builder(pg.port())
        .password("s3cret pass")
        .ssl_mode(SslMode::VerifyFull)
        .build_table();
    if let Ok(untrusted) = untrusted {
        let err = untrusted
            .leader(&e)
            .await
            .expect_err("an unknown CA must be refused");
        println!("unknown CA: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_privilege_the_error_gives_the_ddl() {
    let pg = start(PgOptions::default()).await;
    let sql = admin(pg.port()).await;
    sql.batch_execute(
        "CREATE ROLE app LOGIN; CREATE SCHEMA locks; GRANT USAGE ON SCHEMA locks TO app;",
    )
    .await
    .expect("role");
    let app = builder(pg.port())
        .user("app")
        .schema("locks")
        .table("Leases")
        .build_table()
        .expect("builder");
    let err = app.ensure_schema().await.expect_err("app may not create");
    let text = err.to_string();
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    assert!(text.contains(app.ddl()), "{text}");
    assert!(text.contains("GRANT"), "{text}");
    assert!(text.contains("\"locks\".\"Leases\""), "{text}");

    // The administrator runs what the error says; then app works.
    sql.batch_execute(app.ddl())
        .await
        .expect("the DDL as given");
    sql.batch_execute(
        "GRANT SELECT, INSERT, UPDATE ON \"locks\".\"Leases\" TO app; \
         GRANT USAGE ON SEQUENCE \"locks\".\"Leases_token_seq\" TO app;",
    )
    .await
    .expect("grants");
    let e = unique_name("grants");
    let t = won(&app, &e, "alpha", Duration::from_secs(10)).await;
    app.release(&t).await.expect("release");

    // Without create_table, a missing table is a Config error with the DDL.
    let missing = builder(pg.port())
        .table("nothing_here")
        .create_table(false)
        .build_table()
        .expect("builder");
    let err = missing.leader("x").await.expect_err("missing table");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("CREATE TABLE IF NOT EXISTS"));
}

/// A statement whose answer is lost after it landed: the proxy delays every
/// chunk by 1.5 s, the client gives up after 1 s; the row was written with
/// an owner the client never learned. Another candidate is refused until it
/// expires, but the same candidate takes it over at once on its next try,
/// with a greater token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquisition_whose_answer_was_lost() {
    let pg = start(PgOptions::default()).await;
    let proxy = Proxy::start(pg.addr()).await;
    let t = PostgresBuilder::new()
        .host("127.0.0.1", proxy.addr().port())
        .user("postgres")
        .dbname("postgres")
        .ssl_mode(SslMode::Disable)
        .request_timeout(Duration::from_secs(1))
        .build_table()
        .expect("builder");
    let other = table(pg.port());
    let e = unique_name("lost-answer");
    t.ensure_schema().await.expect("schema through the proxy");

    proxy.set_mode(ProxyMode::Delay(Duration::from_millis(1500)));
    let err = t
        .acquire(&e, "alpha", b"", Duration::from_secs(30))
        .await
        .expect_err("the answer comes too late");
    assert!(err.is_transient(), "{err:?}");
    proxy.pass();
    // The statement landed (give it the delay to arrive).
    let started = Instant::now();
    let ghost = loop {
        if let Some(h) = other.leader(&e).await.expect("leader") {
            break h;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the delayed statement never landed"
        );
        sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ghost.id, "alpha");
    assert_eq!(held(&other, &e, "beta").await.as_deref(), Some("alpha"));
    // alpha's next attempt takes its own unanswered row over, new token.
    let term = timeout(
        Duration::from_secs(10),
        win_within(&t, &e, "alpha", Duration::from_secs(5)),
    )
    .await
    .expect("alpha takes its ghost over");
    assert!(term.token > ghost.token, "{term:?} after {ghost:?}");
    t.renew(&term).await.expect("the new term renews");
}

/// PostgreSQL crashes (SIGQUIT: immediate shutdown) and starts again while a
/// leader holds a 20 s lease: the row is durable, the leader renews once the
/// server is back, nobody else gets in, and tokens keep increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_while_a_leader_holds() {
    let pg = start(PgOptions::default()).await;
    let (a, b) = (table(pg.port()), table(pg.port()));
    let e = unique_name("restart");
    let ta = won(&a, &e, "alpha", Duration::from_secs(20)).await;
    pg.restart().await.expect("restart");
    let started = Instant::now();
    let ta = loop {
        match a.renew(&ta).await {
            Ok(t) => break t,
            Err(err) => {
                assert!(err.is_transient(), "a restart is transient: {err:?}");
                assert!(started.elapsed() < Duration::from_secs(15), "{err}");
                sleep(Duration::from_millis(100)).await;
            }
        }
    };
    println!("renewed {:?} after the restart", started.elapsed());
    assert_eq!(held(&b, &e, "beta").await.as_deref(), Some("alpha"));
    a.release(&ta).await.expect("release");
    let tb = won(&b, &e, "beta", Duration::from_secs(20)).await;
    assert!(tb.token > ta.token);
}

/// The next holder `w` reports that differs from `current` (a watch may
/// report a value twice), within 5 s.
async fn next_change(
    w: &mut leasehold_postgres::Watch,
    current: Option<u64>,
    what: &str,
) -> Option<u64> {
    let started = Instant::now();
    loop {
        let left = Duration::from_secs(5).saturating_sub(started.elapsed());
        let h = timeout(left, w.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: no change within 5 s"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let token = h.map(|h| h.token);
        if token != current {
            return token;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_a_watch() {
    let pg = start(PgOptions::default()).await;
    let (a, b) = (table(pg.port()), table(pg.port()));
    let e = unique_name("notify");
    let mut w = b.watch(&e).expect("watch");
    assert_eq!(w.next().await.expect("first").map(|h| h.token), None);
    let ta = won(&a, &e, "alpha", Duration::from_secs(30)).await;
    assert_eq!(
        next_change(&mut w, None, "acquisition").await,
        Some(ta.token)
    );
    let released = Instant::now();
    a.release(&ta).await.expect("release");
    assert_eq!(next_change(&mut w, Some(ta.token), "release").await, None);
    println!("watch woke {:?} after the release", released.elapsed());
    // A lease that expires sends nothing; the watch looks again when the
    // database said it would run out.
    let ta = won(&a, &e, "alpha", Duration::from_millis(800)).await;
    assert_eq!(
        next_change(&mut w, None, "acquisition").await,
        Some(ta.token)
    );
    assert_eq!(next_change(&mut w, Some(ta.token), "expiry").await, None);

    // Watches opened and dropped one after another (the engine opens one
    // per wait) share one listening connection.
    drop(w);
    for _ in 0..5 {
        let mut w = b.watch(&e).expect("watch");
        w.next().await.expect("first");
    }
    let sql = admin(pg.port()).await;
    let listening: i64 = sql
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .get(0);
    assert_eq!(listening, 1, "one LISTEN connection for the handle");
}

/// 1,000 terms renewed at once by one process: the renewals share
/// statements. Prints the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewals_of_many_locks_share_statements() {
    let pg = start(PgOptions::default()).await;
    let t = table(pg.port());
    let prefix = unique_name("many");
    let mut terms = Vec::new();
    for i in 0..1000 {
        terms.push(
            won(
                &t,
                &format!("{prefix}-{i}"),
                "alpha",
                Duration::from_secs(60),
            )
            .await,
        );
    }
    let before = t.statements();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for term in terms {
        let t = t.clone();
        tasks.push(tokio::spawn(async move { t.renew(&term).await }));
    }
    let terms: Vec<Term> = futures_join(tasks).await;
    let took = started.elapsed();
    let after = t.statements();
    let calls = after.renew_calls - before.renew_calls;
    let statements = after.renew_statements - before.renew_statements;
    println!("1000 renewals at once: {statements} statements, {took:?}");
    assert_eq!(calls, 1000);
    assert!(
        statements >= 1 && statements < calls,
        "{statements} statements"
    );
    // Every term was extended, and is still ours.
    for term in terms.iter().step_by(97) {
        t.renew(term).await.expect("still ours");
    }
    let shared = Arc::new(t);
    drop(shared);
}

async fn futures_join(
    tasks: Vec<tokio::task::JoinHandle<leasehold_core::Result<Term>>>,
) -> Vec<Term> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.expect("task").expect("renew"));
    }
    out
}

/// A `postgres://` URL through the facade (`leasehold::connect`): the driver
/// reads it, builds the backend, and two candidates hand over through it,
/// one with NOTIFY and one polling (`listen=false`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_url_through_the_facade() {
    let pg = start(PgOptions::default()).await;
    let e = unique_name("facade");
    let a = leasehold::connect(&pg.url(
        &e,
        "sslmode=disable&ttl=3s&id=alpha&schema=public&table=facade_leases",
    ))
    .await
    .expect("connect alpha");
    let b = leasehold::connect(&pg.url(
        &e,
        "sslmode=disable&ttl=3s&id=beta&listen=false&table=facade_leases",
    ))
    .await
    .expect("connect beta");
    let la = timeout(Duration::from_secs(10), a.lock())
        .await
        .expect("alpha leads in time")
        .expect("lock");
    assert!(
        matches!(b.try_lock().await, Ok(leasehold_core::Attempt::Held { .. })),
        "beta must be refused"
    );
    assert_eq!(
        b.leader().await.expect("leader").map(|l| l.id).as_deref(),
        Some("alpha")
    );
    let token = la.fencing_token();
    la.unlock().await.expect("unlock");
    let lb = timeout(Duration::from_secs(10), b.lock())
        .await
        .expect("beta leads after the release")
        .expect("lock");
    assert!(lb.fencing_token() > token);
    let sql = admin(pg.port()).await;
    let rows: i64 = sql
        .query_one(
            "SELECT count(*) FROM public.facade_leases WHERE election = $1",
            &[&e],
        )
        .await
        .expect("the URL's table holds the row")
        .get(0);
    assert_eq!(rows, 1);
    lb.unlock().await.expect("unlock");
}

/// The same restart under the engine: a leader (ttl 8 s) whose database
/// crashes and comes back within about a second keeps its term (its
/// renewals fail meanwhile, transiently), and the other candidate, waiting
/// with NOTIFY across the restart, never leads until the leader unlocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_keeps_its_term_across_a_database_restart() {
    let pg = start(PgOptions::default()).await;
    let subject = PgSubject {
        port: pg.port(),
        admin_port: pg.port(),
        listen: true,
    };
    let e = unique_name("engine-restart");
    let options = |id: &str| ElectionOptions::new(&e, id).with_ttl(Duration::from_secs(8));
    let a = leasehold_core::Elector::new(subject.client().await, options("alpha")).expect("a");
    let b = leasehold_core::Elector::new(subject.client().await, options("beta")).expect("b");
    let la = timeout(Duration::from_secs(10), a.lock())
        .await
        .expect("alpha leads in time")
        .expect("lock");
    let b2 = b.clone();
    let waiting = tokio::spawn(async move { b2.lock().await });
    sleep(Duration::from_millis(300)).await;
    pg.restart().await.expect("restart");
    // Two renew intervals after the restart: the leader renewed on the new
    // server and never lost its term.
    sleep(Duration::from_secs(6)).await;
    assert!(
        !la.is_lost(),
        "the leader lost its term: {:?}",
        la.loss_reason()
    );
    assert!(!waiting.is_finished(), "beta led while alpha holds");
    let token = la.fencing_token();
    la.unlock().await.expect("unlock");
    let lb = timeout(Duration::from_secs(10), waiting)
        .await
        .expect("beta leads after the release")
        .expect("task")
        .expect("lock");
    assert!(lb.fencing_token() > token);
    lb.unlock().await.expect("unlock");
}

/// The application's table the guarded-write tests write to.
async fn app_table(app: &tokio_postgres::Client, name: &str) {
    app.batch_execute(&format!(
        "CREATE TABLE \"{name}\" (k text PRIMARY KEY, v text NOT NULL); \
         INSERT INTO \"{name}\" VALUES ('config', 'initial')"
    ))
    .await
    .expect("the application's table");
}

/// One guarded statement: rows it changed (1 while the term lasts, else 0).
async fn guarded_update(
    client: &tokio_postgres::Client,
    guard: &leasehold_postgres::LeaderGuard,
    table: &str,
    value: &str,
) -> u64 {
    use tokio_postgres::types::{ToSql, Type};
    let sql = format!(
        "UPDATE \"{table}\" SET v = $1 WHERE k = $2 AND {}",
        guard.condition(2)
    );
    let key = "config";
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> =
        vec![(&value, Type::TEXT), (&key, Type::TEXT)];
    params.extend(guard.typed_params());
    client
        .execute_typed(&sql, &params)
        .await
        .expect("the guarded statement runs")
}

/// One guarded transaction: `hold`, write, commit. `Err` when the guard
/// refused (the transaction is rolled back).
async fn guarded_transaction(
    client: &mut tokio_postgres::Client,
    guard: &leasehold_postgres::LeaderGuard,
    table: &str,
    value: &str,
) -> Result<(), Error> {
    let tx = client.transaction().await.expect("begin");
    guard.hold(&tx).await?;
    tx.execute(
        &format!("UPDATE \"{table}\" SET v = $1 WHERE k = 'config'"),
        &[&value],
    )
    .await
    .expect("the write");
    tx.commit().await.expect("commit");
    Ok(())
}

async fn app_value(app: &tokio_postgres::Client, table: &str) -> String {
    app.query_one(
        &format!("SELECT v FROM \"{table}\" WHERE k = 'config'"),
        &[],
    )
    .await
    .expect("read")
    .get(0)
}

/// Issue 24: a write guarded by `leader_guard` lands while the term lasts,
/// as one statement (on the backend's own connection, `client()`) and as a
/// transaction (`hold`), and the first one after the term ends fails: after
/// an unlock, after the lease row is deleted by hand, and after the lease
/// expires while the leader is cut off from the database (its renewals go
/// unanswered past its ttl) and another candidate takes over. The backend is
/// built from the application's own connection settings (`config`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_write_lands_only_while_the_term_lasts() {
    use leasehold_core::Elector;
    let pg = start(PgOptions::default()).await;
    let config: tokio_postgres::Config = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
        pg.port()
    )
    .parse()
    .expect("config");
    let backend = PostgresBuilder::new()
        .config(config.clone())
        .request_timeout(Duration::from_secs(3))
        .build()
        .expect("a backend on the application's settings");
    let mut app = admin(pg.port()).await;
    let data = unique_name("app_data").replace('-', "_");
    app_table(&app, &data).await;
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
    let shared = backend.client().await.expect("the backend's connection");
    assert_eq!(
        guarded_update(&shared, &g1, &data, "term 1 statement").await,
        1
    );
    guarded_transaction(&mut app, &g1, &data, "term 1 transaction")
        .await
        .expect("the leader's transaction lands");
    // After unlock: neither does.
    l1.clone().unlock().await.expect("unlock");
    assert_eq!(guarded_update(&shared, &g1, &data, "after unlock").await, 0);
    let refused = guarded_transaction(&mut app, &g1, &data, "after unlock")
        .await
        .expect_err("a transaction guarded by an ended term landed");
    assert!(refused.is_lost(), "{refused:?}");
    assert_eq!(app_value(&app, &data).await, "term 1 transaction");

    // After the row is deleted by hand.
    let l2 = lock().await;
    let g2 = backend.leader_guard(&l2);
    assert!(g2.token() > g1.token());
    assert_eq!(guarded_update(&shared, &g2, &data, "term 2").await, 1);
    let n = app
        .execute(
            &format!(
                "DELETE FROM {} WHERE election = $1",
                backend.table().table_name()
            ),
            &[&e],
        )
        .await
        .expect("delete by hand");
    assert_eq!(n, 1);
    assert_eq!(guarded_update(&shared, &g2, &data, "after delete").await, 0);
    assert!(
        guarded_transaction(&mut app, &g2, &data, "after delete")
            .await
            .expect_err("landed after the delete")
            .is_lost()
    );
    assert_eq!(app_value(&app, &data).await, "term 2");
    timeout(Duration::from_secs(10), l2.lost())
        .await
        .expect("the term ends after its row is deleted");

    // After the lease expires: alpha's link to the database is cut (its
    // renewals go unanswered) while beta waits; beta takes over once the
    // database's clock says the lease ran out.
    let proxy = Proxy::start(pg.addr()).await;
    let cut_off = builder(proxy.addr().port())
        .request_timeout(Duration::from_secs(1))
        .build()
        .expect("builder");
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
    assert_eq!(guarded_update(&shared, &ga, &data, "alpha").await, 1);
    let waiting = tokio::spawn(async move { beta.lock().await });
    proxy.blackhole();
    let lb = timeout(Duration::from_secs(15), waiting)
        .await
        .expect("beta leads after alpha's lease expired")
        .expect("task")
        .expect("lock");
    assert!(lb.fencing_token() > la.fencing_token());
    // Alpha, frozen past its ttl, still holds its guard: its writes fail.
    assert_eq!(guarded_update(&shared, &ga, &data, "alpha, stale").await, 0);
    assert!(
        guarded_transaction(&mut app, &ga, &data, "alpha, stale")
            .await
            .expect_err("a stale leader's transaction landed")
            .is_lost()
    );
    let gb = backend.leader_guard(&lb);
    assert_eq!(guarded_update(&shared, &gb, &data, "beta").await, 1);
    assert_eq!(app_value(&app, &data).await, "beta");
    timeout(Duration::from_secs(5), la.lost())
        .await
        .expect("alpha stepped down on its own deadline");
    lb.unlock().await.expect("unlock");
    drop(proxy);
}

/// Issue 24, the adversarial half: a transaction that took the guard keeps
/// the term lasting until it commits. Alpha holds the guard and writes,
/// then sits on the open transaction past its lease's expiry while beta
/// tries to take over; beta's takeover waits for the row lock, so it can
/// only win after alpha's transaction committed, and alpha's write is
/// never seen to land inside beta's term. Without the guard's `FOR SHARE`
/// beta would lead while alpha's write is still to commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_transaction_commits_before_the_next_term() {
    let pg = start(PgOptions::default()).await;
    let (a, b) = (table(pg.port()), table(pg.port()));
    let mut app = admin(pg.port()).await;
    let data = unique_name("app_data").replace('-', "_");
    app_table(&app, &data).await;
    let e = unique_name("guard-order");
    let ta = won(&a, &e, "alpha", Duration::from_secs(1)).await;
    let guard = a.leader_guard(&ta);

    let tx = app.transaction().await.expect("begin");
    guard.hold(&tx).await.expect("alpha's term lasts");
    tx.execute(
        &format!("UPDATE \"{data}\" SET v = 'alpha' WHERE k = 'config'"),
        &[],
    )
    .await
    .expect("write");
    let b2 = b.clone();
    let e2 = e.clone();
    let takeover =
        tokio::spawn(async move { win_within(&b2, &e2, "beta", Duration::from_secs(20)).await });
    // Three times the ttl: by the database's clock alpha's lease is long over.
    sleep(Duration::from_secs(3)).await;
    assert!(
        !takeover.is_finished(),
        "beta took over while alpha's guarded transaction was open"
    );
    let committed = Instant::now();
    tx.commit().await.expect("alpha's transaction commits");
    let tb = timeout(Duration::from_secs(25), takeover)
        .await
        .expect("beta leads after the commit")
        .expect("task");
    eprintln!("beta led {:?} after alpha's commit", committed.elapsed());
    assert!(tb.token > ta.token);
    assert_eq!(app_value(&app, &data).await, "alpha");
    // Now alpha's guard refuses.
    assert_eq!(guarded_update(&app, &guard, &data, "alpha, late").await, 0);
}
