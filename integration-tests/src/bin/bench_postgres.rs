//! PostgreSQL figures (issue 22), apart from the main benchmark program so
//! that the MySQL work can add its own beside it: starts its own PostgreSQL
//! 15 (and PgBouncer) on loopback and prints a markdown table:
//!
//! * uncontended acquire, p50/p99 (`lock` then `unlock` on a free election);
//! * handover on `unlock` to a waiting candidate, p50/p99, with
//!   LISTEN/NOTIFY (direct connection) and polling (through PgBouncer,
//!   `listen=false`);
//! * failover when the leader's link is cut (a black-holed proxy): from the
//!   cut to the other candidate leading, as a ratio of the ttl;
//! * transactions per second at the database (`pg_stat_database`) for an
//!   idle leader and an idle waiter;
//! * `--locks` elections held by one process: statements per renew interval
//!   (client count and the database's), against one statement per lock.
//!
//! Run: `cargo run --release -p leasehold-integration-tests --bin bench_postgres`.
//! Every loop is bounded by a count and a time; every process started is
//! stopped by its pid. It prints figures and asserts nothing about them.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use leasehold_core::{Backend, ElectionOptions, Elector, Leadership};
use leasehold_integration_tests::bench::percentile;
use leasehold_integration_tests::{PgBouncer, PgServer, Proxy, unique_name};
use leasehold_postgres::{PostgresBackend, SslMode};
use tokio::time::{Instant, sleep, timeout};

/// Bound on any single wait for an election.
const LONG: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
#[command(
    about = "leasehold's PostgreSQL figures: starts its own servers, prints a markdown table"
)]
struct Args {
    /// Rounds of uncontended acquire and of each handover.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Failovers (link cuts).
    #[arg(long, default_value_t = 3)]
    failover_rounds: usize,
    /// Elections held by one process.
    #[arg(long, default_value_t = 1000)]
    locks: usize,
    /// The ttl, in seconds.
    #[arg(long, default_value_t = 3.0)]
    ttl: f64,
    /// Measuring window of the idle figures, in seconds.
    #[arg(long, default_value_t = 15.0)]
    window: f64,
}

fn backend(port: u16, listen: bool) -> Arc<dyn Backend> {
    let b: PostgresBackend = PostgresBackend::builder()
        .host("127.0.0.1", port)
        .user("postgres")
        .dbname("postgres")
        .ssl_mode(SslMode::Disable)
        .listen(listen)
        .build()
        .unwrap_or_else(|e| panic!("builder: {e}"));
    Arc::new(b)
}

fn elector(b: Arc<dyn Backend>, election: &str, id: &str, ttl: Duration) -> Elector {
    Elector::new(b, ElectionOptions::new(election, id).with_ttl(ttl))
        .unwrap_or_else(|e| panic!("options: {e}"))
}

async fn lock(e: &Elector) -> Leadership {
    timeout(LONG, e.lock())
        .await
        .unwrap_or_else(|_| panic!("no lock within {LONG:?}"))
        .unwrap_or_else(|e| panic!("lock: {e}"))
}

async fn unlock(l: Leadership) {
    timeout(LONG, l.unlock())
        .await
        .unwrap_or_else(|_| panic!("no unlock within {LONG:?}"))
        .unwrap_or_else(|e| panic!("unlock: {e}"));
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn p50_p99(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n = {})",
        ms(percentile(&v, 0.50)),
        ms(percentile(&v, 0.99)),
        ms(v.last().copied().unwrap_or_default()),
        v.len()
    )
}

/// Committed transactions of the `postgres` database so far (each of the
/// backend's statements is one), less the query asking.
async fn commits(admin: &tokio_postgres::Client) -> f64 {
    let row = admin
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("pg_stat_database: {e}"));
    let n: i64 = row.get(0);
    n as f64
}

/// Transactions per second at the database over `window`, the stats
/// flushed first and the asking queries taken out.
async fn rate(admin: &tokio_postgres::Client, window: Duration) -> f64 {
    let _ = admin
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await;
    sleep(Duration::from_millis(600)).await;
    let a = commits(admin).await;
    sleep(window).await;
    let _ = admin
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await;
    sleep(Duration::from_millis(600)).await;
    let b = commits(admin).await;
    // The asking side: one commit, one flush call, per sample.
    ((b - a - 2.0).max(0.0)) / window.as_secs_f64()
}

async fn handover(port: u16, listen: bool, rounds: usize, ttl: Duration) -> Vec<Duration> {
    let election = unique_name("handover");
    let a = elector(backend(port, listen), &election, "alpha", ttl);
    let b = elector(backend(port, listen), &election, "beta", ttl);
    let mut out = Vec::with_capacity(rounds);
    let mut holder = lock(&a).await;
    let mut waiting_is_b = true;
    for _ in 0..rounds {
        let next = if waiting_is_b { b.clone() } else { a.clone() };
        let waiter = tokio::spawn(async move { lock(&next).await });
        // Let the waiter find the election held and start waiting.
        sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        unlock(holder).await;
        holder = waiter.await.expect("waiter");
        out.push(started.elapsed());
        waiting_is_b = !waiting_is_b;
    }
    unlock(holder).await;
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let ttl = Duration::from_secs_f64(args.ttl);
    let pg = PgServer::start()
        .await
        .unwrap_or_else(|e| panic!("could not start PostgreSQL: {e}"));
    let bouncer = PgBouncer::start(&pg, 4)
        .await
        .unwrap_or_else(|e| panic!("could not start PgBouncer: {e}"));
    let (admin, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(pg.port())
        .user("postgres")
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("admin connection: {e}"));
    tokio::spawn(conn);
    let mut rows: Vec<(String, String)> = Vec::new();
    let retry = ElectionOptions::new("x", "y").with_ttl(ttl).retry_interval;

    // Uncontended acquire.
    let b = backend(pg.port(), true);
    let mut acquire = Vec::new();
    for _ in 0..args.rounds {
        let e = elector(b.clone(), &unique_name("acquire"), "alpha", ttl);
        let started = Instant::now();
        let l = lock(&e).await;
        acquire.push(started.elapsed());
        unlock(l).await;
    }
    rows.push(("Uncontended acquire (`lock()`)".into(), p50_p99(acquire)));

    let notify = handover(pg.port(), true, args.rounds, ttl).await;
    rows.push((
        "Handover on `unlock()`, LISTEN/NOTIFY (direct)".into(),
        p50_p99(notify),
    ));
    let polled = handover(bouncer.port(), false, args.rounds.min(20), ttl).await;
    rows.push((
        format!(
            "Handover on `unlock()`, polling through PgBouncer (retry interval {:?}, jittered)",
            retry
        ),
        p50_p99(polled),
    ));

    // Failover: the leader's link is cut; the other candidate leads once the
    // database's clock has expired the row.
    let mut ratios = Vec::new();
    for _ in 0..args.failover_rounds {
        let election = unique_name("failover");
        let proxy = Proxy::start(pg.addr()).await;
        let a = elector(backend(proxy.addr().port(), true), &election, "alpha", ttl);
        let b = elector(backend(pg.port(), true), &election, "beta", ttl);
        let la = lock(&a).await;
        // Wait for a renewal to land, then cut.
        sleep(ttl / 2).await;
        let waiter = tokio::spawn(async move { lock(&b).await });
        sleep(Duration::from_millis(200)).await;
        proxy.blackhole();
        let cut = Instant::now();
        let lb = waiter.await.expect("waiter");
        ratios.push(cut.elapsed().as_secs_f64() / ttl.as_secs_f64());
        drop(la);
        unlock(lb).await;
    }
    ratios.sort_by(f64::total_cmp);
    rows.push((
        format!("Failover after a link cut, ttl {ttl:?} (cut → successor leads, / ttl)"),
        format!(
            "{:.2} – {:.2} (n = {}; the cut comes up to a renew interval after the last renewal)",
            ratios.first().copied().unwrap_or(0.0),
            ratios.last().copied().unwrap_or(0.0),
            ratios.len()
        ),
    ));

    // Idle costs, at the database.
    let window = Duration::from_secs_f64(args.window);
    let baseline = rate(&admin, window).await;
    let election = unique_name("idle");
    let leader_e = elector(backend(pg.port(), true), &election, "alpha", ttl);
    let leader = lock(&leader_e).await;
    let with_leader = rate(&admin, window).await;
    let waiter_e = elector(backend(pg.port(), true), &election, "beta", ttl);
    let waiter = tokio::spawn(async move { lock(&waiter_e).await });
    sleep(Duration::from_millis(500)).await;
    let with_waiter = rate(&admin, window).await;
    rows.push((
        format!("Idle leader, ttl {ttl:?} (transactions/s at the database)"),
        format!(
            "{:.2} (baseline without it {baseline:.2})",
            with_leader - baseline
        ),
    ));
    rows.push((
        format!("Idle waiter with NOTIFY, ttl {ttl:?} (transactions/s)"),
        format!("{:.2}", with_waiter - with_leader),
    ));
    waiter.abort();
    unlock(leader).await;

    // Many locks in one process.
    let many = PostgresBackend::builder()
        .host("127.0.0.1", pg.port())
        .user("postgres")
        .dbname("postgres")
        .ssl_mode(SslMode::Disable)
        .build()
        .unwrap_or_else(|e| panic!("builder: {e}"));
    let shared: Arc<dyn Backend> = Arc::new(many.clone());
    let prefix = unique_name("many");
    let started = Instant::now();
    let mut held = Vec::with_capacity(args.locks);
    for i in 0..args.locks {
        let e = elector(shared.clone(), &format!("{prefix}-{i}"), "alpha", ttl);
        held.push(lock(&e).await);
    }
    let took = started.elapsed();
    let renew_interval = ElectionOptions::new("x", "y").with_ttl(ttl).renew_interval;
    let before = many.table().statements();
    let db = rate(&admin, window).await;
    let after = many.table().statements();
    let intervals = window.as_secs_f64() / renew_interval.as_secs_f64();
    let calls = (after.renew_calls - before.renew_calls) as f64 / intervals;
    let statements = (after.renew_statements - before.renew_statements) as f64 / intervals;
    rows.push((
        format!("{} locks held by one process: acquire all", args.locks),
        format!("{:.2} s", took.as_secs_f64()),
    ));
    rows.push((
        format!(
            "{} locks held: statements per renew interval ({renew_interval:?})",
            args.locks
        ),
        format!(
            "{statements:.1} renewal statements for {calls:.0} renewals (one statement per lock would be {calls:.0}); database: {:.1} transactions per interval",
            db * renew_interval.as_secs_f64()
        ),
    ));
    for l in held {
        drop(l);
    }

    println!("| Figure (PostgreSQL 15, loopback) | Result |");
    println!("| --- | --- |");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
}
