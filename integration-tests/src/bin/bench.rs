//! The benchmark program (issue 15): starts its own stores (a single etcd
//! node, a standalone ZooKeeper with tickTime 500 ms, fake-gcs-server in
//! memory; with `--backends mysql,postgres,postgres-pgbouncer` MariaDB,
//! PostgreSQL 15 on a direct connection (waiters woken by LISTEN/NOTIFY)
//! and PostgreSQL through PgBouncer in transaction mode (waiters poll), all
//! on loopback) and prints, per backend, markdown tables ready to paste into
//! BENCHMARKS.md:
//!
//! * uncontended acquire, p50/p99 (`lock` then `unlock` on a free election);
//! * graceful handover, p50/p99 (`unlock` called to the queued candidate's
//!   `lock` returning);
//! * each store's own floor for a handover, in the same run: one write, the
//!   watch notification it causes and one read, made by a minimal client of
//!   the crate leasehold uses (etcd-client, zookeeper-client,
//!   google-cloud-storage; Cloud Storage has no watch: a write and a read),
//!   and leasehold's handover as a ratio of it;
//! * crash failover as a ratio of the ttl (the failover bound; p100 too),
//!   the candidates separate processes (this program's `candidate`
//!   subcommand): the leader is killed with SIGKILL by its pid; the time
//!   runs to the next one reporting it leads;
//! * store requests per second per idle leader and per idle waiter,
//!   measured at the store (etcd's `grpc_server_msg_received_total`,
//!   ZooKeeper's `mntr` `zk_packets_received`, the emulator's access log,
//!   MariaDB's `Questions`, the statements PostgreSQL logs),
//!   with etcd's client-side counters as a second column;
//! * store requests and watch events per handover with `--waiters` queued
//!   candidates;
//! * `--locks` elections held by one process on one backend instance: time
//!   to acquire all, store messages per second while holding them, resident
//!   memory (VmRSS) and CPU (utime + stime) per held lock.
//!
//! Run (about twelve minutes with the defaults):
//! `cargo run --release -p leasehold-integration-tests --bin bench`
//! (`-- --help` lists the flags; `--json FILE` also writes every figure as
//! JSON). Every loop is bounded by a count and a time; every process started
//! is stopped by its pid. It prints figures and asserts nothing about them.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use leasehold_core::{Backend, ElectionOptions, Elector, Leadership};
use leasehold_etcd::EtcdBackend;
use leasehold_gcs::GcsBackend;
use leasehold_integration_tests::bench::{emulator_requests, percentile, sum_counter};
use leasehold_integration_tests::{
    EtcdNode, FAKE_GCS_BUCKET, FakeGcs, MariaDb, PgBouncer, PgOptions, PgServer, ZkServer, http,
    unique_name,
};
use leasehold_mysql::MysqlBackend;
use leasehold_postgres::{PostgresBackend, SslMode};
use leasehold_zookeeper::ZkBackend;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};

/// Bound on any single wait for an election (a lock, a handover, a failover).
const LONG: Duration = Duration::from_secs(120);

#[derive(Parser, Debug)]
#[command(about = "leasehold's benchmark: starts its own stores, prints markdown tables")]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// The backends to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "etcd,zookeeper,gcs")]
    backends: Vec<Kind>,
    /// Queued candidates for the idle-waiter and handover-with-waiters figures.
    #[arg(long, default_value_t = 100)]
    waiters: usize,
    /// Elections held by one process for the many-locks figures.
    #[arg(long, default_value_t = 1000)]
    locks: usize,
    /// Rounds of uncontended acquire and of graceful handover.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Crash failovers (each starts two candidate processes).
    #[arg(long, default_value_t = 5)]
    failover_rounds: usize,
    /// Handovers measured with the waiters queued.
    #[arg(long, default_value_t = 5)]
    herd_rounds: usize,
    /// Measuring window of each request-rate figure, in seconds (rounded
    /// to a whole number of ttls when longer than one).
    #[arg(long, default_value_t = 20.0)]
    window: f64,
    /// The ttl of every figure but the failover, in seconds (at most 10:
    /// the harness's ZooKeeper, tickTime 500 ms, grants sessions of at most
    /// 10 s, and the session is the ttl).
    #[arg(long, default_value_t = 8.0)]
    ttl: f64,
    /// The ttl of the crash failover, in seconds (etcd's minimum is 2,
    /// Cloud Storage's 4).
    #[arg(long, default_value_t = 4.0)]
    failover_ttl: f64,
    /// Also write every figure (and the pids of every process started) as
    /// JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// One candidate (a separate process, for the crash failover): prints
    /// `campaigning`, then `leading TOKEN` once elected; unlocks and exits
    /// when its stdin closes.
    Candidate {
        #[arg(long)]
        backend: Kind,
        /// etcd endpoint, ZooKeeper connect string or emulator endpoint.
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        election: String,
        #[arg(long)]
        id: String,
        /// The ttl in milliseconds.
        #[arg(long)]
        ttl_ms: u64,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Etcd,
    Zookeeper,
    Gcs,
    Mysql,
    /// A direct connection: waiters wake through LISTEN/NOTIFY.
    Postgres,
    /// Through PgBouncer in transaction mode: waiters poll.
    PostgresPgbouncer,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Etcd => "etcd",
            Kind::Zookeeper => "zookeeper",
            Kind::Gcs => "gcs",
            Kind::Mysql => "mysql",
            Kind::Postgres => "postgres",
            Kind::PostgresPgbouncer => "postgres-pgbouncer",
        }
    }
}

/// A running store and how to count what it was asked.
enum Store {
    Etcd(EtcdNode),
    Zk(ZkServer),
    Gcs(FakeGcs),
    Mysql(MariaDb),
    /// PostgreSQL, and PgBouncer in front of it when the clients use it.
    Postgres(PgServer, Option<PgBouncer>),
}

/// What a store counted so far.
#[derive(Debug, Clone, Copy, Default)]
struct Counted {
    /// etcd: gRPC messages received (unary requests, keep-alives, watch
    /// requests); ZooKeeper: packets received; the emulator: requests logged.
    requests: f64,
    /// etcd: messages sent on Watch streams; ZooKeeper: packets sent minus
    /// packets received (notifications, roughly); the emulator: 0 (no watch).
    watch_events: f64,
}

impl Store {
    async fn start(kind: Kind) -> Store {
        let started = match kind {
            Kind::Etcd => EtcdNode::start().await.map(Store::Etcd),
            Kind::Zookeeper => ZkServer::start().await.map(Store::Zk),
            Kind::Gcs => FakeGcs::start().await.map(Store::Gcs),
            Kind::Mysql => start_mariadb().await.map(Store::Mysql),
            Kind::Postgres => start_postgres(false).await,
            Kind::PostgresPgbouncer => start_postgres(true).await,
        };
        started.unwrap_or_else(|e| {
            panic!(
                "could not start {}: {e} (install the stores with `bash scripts/setup`)",
                kind.name()
            )
        })
    }

    fn endpoint(&self) -> String {
        match self {
            Store::Etcd(n) => n.endpoint(),
            Store::Zk(z) => z.connect_string(),
            Store::Gcs(g) => g.endpoint(),
            Store::Mysql(m) => m.addr().to_string(),
            Store::Postgres(_, Some(b)) => format!("127.0.0.1:{}", b.port()),
            Store::Postgres(p, None) => p.addr().to_string(),
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Store::Etcd(n) => n.pid(),
            Store::Zk(z) => z.pid(),
            Store::Gcs(g) => g.pid(),
            Store::Mysql(m) => m.pid(),
            Store::Postgres(p, _) => p.pid(),
        }
    }

    async fn counted(&self) -> Counted {
        match self {
            Store::Etcd(n) => {
                let r = http::get(n.client_addr(), "/metrics")
                    .await
                    .unwrap_or_else(|e| panic!("etcd /metrics: {e}"));
                let requests = sum_counter(&r.body, "grpc_server_msg_received_total")
                    .unwrap_or_else(|| {
                        panic!("etcd /metrics has no grpc_server_msg_received_total")
                    });
                let watch_events: f64 = r
                    .body
                    .lines()
                    .filter(|l| {
                        l.starts_with("grpc_server_msg_sent_total{")
                            && l.contains("grpc_method=\"Watch\"")
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum();
                Counted {
                    requests,
                    watch_events,
                }
            }
            Store::Zk(z) => {
                let mntr = z
                    .four_letter("mntr")
                    .await
                    .unwrap_or_else(|e| panic!("zookeeper mntr: {e}"));
                let value = |key: &str| {
                    mntr.lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once('\t')?;
                            (k.trim() == key).then(|| v.trim().parse::<f64>().ok())?
                        })
                        .unwrap_or_else(|| panic!("mntr has no {key}: {mntr}"))
                };
                let received = value("zk_packets_received");
                let sent = value("zk_packets_sent");
                Counted {
                    requests: received,
                    watch_events: sent - received,
                }
            }
            Store::Mysql(m) => {
                // Statements the server executed (this SHOW included).
                let out = m
                    .sql("SHOW GLOBAL STATUS LIKE 'Questions'")
                    .await
                    .unwrap_or_else(|e| panic!("mariadb status: {e}"));
                let questions = out
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or_else(|| panic!("no Questions in {out:?}"));
                Counted {
                    requests: questions,
                    watch_events: 0.0,
                }
            }
            Store::Postgres(p, _) => {
                // The server logs each statement as it starts it.
                sleep(Duration::from_millis(100)).await;
                Counted {
                    requests: postgres_statements(p.log_path()),
                    // NOTIFY deliveries are not counted.
                    watch_events: f64::NAN,
                }
            }
            Store::Gcs(g) => {
                // The emulator writes its log as it answers: let it catch up.
                sleep(Duration::from_millis(100)).await;
                Counted {
                    requests: emulator_requests(g.log_path(), "").total() as f64,
                    watch_events: 0.0,
                }
            }
        }
    }
}

/// A backend instance, with etcd's client-side counters when it is etcd's
/// (and the Cloud Storage backend, whose client the floor uses).
#[derive(Clone)]
struct Client {
    backend: Arc<dyn Backend>,
    etcd: Option<EtcdBackend>,
    gcs: Option<Arc<GcsBackend>>,
}

impl Client {
    async fn connect(kind: Kind, endpoint: &str, ttl: Duration) -> Client {
        match kind {
            Kind::Etcd => {
                let b = EtcdBackend::builder()
                    .endpoints([endpoint])
                    .build()
                    .await
                    .unwrap_or_else(|e| panic!("etcd at {endpoint}: {e}"));
                Client {
                    backend: Arc::new(b.clone()),
                    etcd: Some(b),
                    gcs: None,
                }
            }
            Kind::Zookeeper => {
                let session = ZkBackend::min_session_timeout(&options("e", "c", ttl));
                let b = ZkBackend::builder()
                    .connect_string(endpoint)
                    .session_timeout(session)
                    .build()
                    .await
                    .unwrap_or_else(|e| panic!("zookeeper at {endpoint}: {e}"));
                Client {
                    backend: Arc::new(b),
                    etcd: None,
                    gcs: None,
                }
            }
            Kind::Mysql => {
                let (host, port) = endpoint
                    .rsplit_once(':')
                    .unwrap_or_else(|| panic!("mysql endpoint {endpoint:?} is not host:port"));
                let b = MysqlBackend::builder()
                    .host(host)
                    .port(port.parse().unwrap_or_else(|e| panic!("port {port}: {e}")))
                    .auth(MYSQL_USER, MYSQL_PASSWORD)
                    .database(MYSQL_DATABASE)
                    .max_connections(20)
                    .build()
                    .await
                    .unwrap_or_else(|e| panic!("mysql at {endpoint}: {e}"));
                Client {
                    backend: Arc::new(b),
                    etcd: None,
                    gcs: None,
                }
            }
            Kind::Postgres | Kind::PostgresPgbouncer => {
                let (host, port) = endpoint
                    .rsplit_once(':')
                    .unwrap_or_else(|| panic!("postgres endpoint {endpoint:?} is not host:port"));
                let b = PostgresBackend::builder()
                    .host(
                        host,
                        port.parse().unwrap_or_else(|e| panic!("port {port}: {e}")),
                    )
                    .user(leasehold_integration_tests::POSTGRES_USER)
                    .dbname("postgres")
                    .ssl_mode(SslMode::Disable)
                    .listen(kind == Kind::Postgres)
                    .build()
                    .unwrap_or_else(|e| panic!("postgres at {endpoint}: {e}"));
                Client {
                    backend: Arc::new(b),
                    etcd: None,
                    gcs: None,
                }
            }
            Kind::Gcs => {
                let b = GcsBackend::builder()
                    .bucket(FAKE_GCS_BUCKET)
                    .prefix("bench")
                    .endpoint(endpoint)
                    .anonymous()
                    .ignore_environment()
                    .build()
                    .await
                    .unwrap_or_else(|e| panic!("emulator at {endpoint}: {e}"));
                let b = Arc::new(b);
                Client {
                    backend: b.clone(),
                    etcd: None,
                    gcs: Some(b),
                }
            }
        }
    }

    fn elector(&self, election: &str, id: &str, ttl: Duration) -> Elector {
        Elector::new(self.backend.clone(), options(election, id, ttl))
            .unwrap_or_else(|e| panic!("options: {e}"))
    }

    /// etcd's client-side requests + keep-alive messages so far.
    fn client_messages(&self) -> Option<f64> {
        self.etcd
            .as_ref()
            .map(|b| (b.stats().requests + b.stats().keep_alives) as f64)
    }
}

const MYSQL_USER: &str = "bench";
const MYSQL_PASSWORD: &str = "bench";
const MYSQL_DATABASE: &str = "leasehold";

/// MariaDB with the benchmark's database and user.
async fn start_mariadb() -> Result<MariaDb, leasehold_integration_tests::HarnessError> {
    let db = MariaDb::start().await?;
    db.create_database(MYSQL_DATABASE).await?;
    db.sql(&format!(
        "CREATE USER '{MYSQL_USER}'@'127.0.0.1' IDENTIFIED BY '{MYSQL_PASSWORD}'; \
         GRANT ALL ON `{MYSQL_DATABASE}`.* TO '{MYSQL_USER}'@'127.0.0.1'"
    ))
    .await?;
    Ok(db)
}

/// PostgreSQL logging every statement it runs (what the figures count),
/// with room for the waiters' connections (each backend instance has one,
/// and one more to LISTEN on), and PgBouncer in front of it if `bouncer`.
async fn start_postgres(bouncer: bool) -> Result<Store, leasehold_integration_tests::HarnessError> {
    let pg = PgServer::start_with(PgOptions {
        max_connections: Some(500),
        ..PgOptions::default()
    })
    .await?;
    let (admin, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(pg.port())
        .user(leasehold_integration_tests::POSTGRES_USER)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("postgres admin connection: {e}"));
    let driver = tokio::spawn(connection);
    // ALTER SYSTEM runs outside a transaction: two simple queries.
    for sql in [
        "ALTER SYSTEM SET log_statement = 'all'",
        "SELECT pg_reload_conf()",
    ] {
        admin
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("postgres: {sql}: {e}"));
    }
    drop(admin);
    let _ = driver.await;
    // The postmaster hands the reload to the backends on their next start.
    sleep(Duration::from_millis(500)).await;
    let bouncer = if bouncer {
        Some(PgBouncer::start(&pg, 20).await?)
    } else {
        None
    };
    Ok(Store::Postgres(pg, bouncer))
}

/// The statements PostgreSQL logged so far (`log_statement = all`: one
/// `statement:` line per simple query, one `execute` line per extended
/// query, which is how the backend sends every statement).
fn postgres_statements(log: &std::path::Path) -> f64 {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    text.lines()
        .filter(|l| l.contains("LOG:  statement: ") || l.contains("LOG:  execute "))
        .count() as f64
}

fn options(election: &str, id: &str, ttl: Duration) -> ElectionOptions {
    ElectionOptions::new(election, id).with_ttl(ttl)
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

/// Every figure of one backend, by name, in the order measured.
#[derive(Default)]
struct Figures(Vec<(&'static str, f64)>);

impl Figures {
    fn put(&mut self, name: &'static str, value: f64) {
        self.0.push((name, value));
    }

    fn get(&self, name: &str) -> f64 {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(f64::NAN, |(_, v)| *v)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Bench<'a> {
    args: &'a Args,
    kind: Kind,
    store: &'a Store,
    ttl: Duration,
    window: Duration,
    figures: Figures,
    /// Pids of the candidate processes started.
    pids: Vec<u32>,
    /// The store's own request rate with no client of ours (measured once).
    base: Option<f64>,
}

impl Bench<'_> {
    async fn client(&self) -> Client {
        Client::connect(self.kind, &self.store.endpoint(), self.ttl).await
    }

    /// The store's request rate with no election running (measured once).
    async fn base(&mut self) -> f64 {
        if let Some(b) = self.base {
            return b;
        }
        let (b, _) = self.rate(&[]).await;
        self.base = Some(b);
        b
    }

    fn settle(&self) -> Duration {
        self.window.min(Duration::from_secs(2))
    }

    async fn uncontended(&mut self) {
        let c = self.client().await;
        let e = c.elector(&unique_name("bench-acquire"), "solo", self.ttl);
        let mut samples = Vec::with_capacity(self.args.rounds);
        for _ in 0..self.args.rounds {
            let t = Instant::now();
            let l = lock(&e).await;
            samples.push(t.elapsed());
            unlock(l).await;
        }
        samples.sort();
        self.figures
            .put("acquire_p50_ms", ms(percentile(&samples, 0.5)));
        self.figures
            .put("acquire_p99_ms", ms(percentile(&samples, 0.99)));
    }

    async fn handover(&mut self) {
        let election = unique_name("bench-handover");
        let (ca, cb) = (self.client().await, self.client().await);
        let a = ca.elector(&election, "a", self.ttl);
        let b = cb.elector(&election, "b", self.ttl);
        let mut holder = lock(&a).await;
        let mut samples = Vec::with_capacity(self.args.rounds);
        for round in 0..self.args.rounds {
            let next = if round % 2 == 0 { b.clone() } else { a.clone() };
            let waiting = tokio::spawn(async move {
                let l = lock(&next).await;
                (Instant::now(), l)
            });
            // Let the other candidate queue up (or poll once).
            sleep(Duration::from_millis(100)).await;
            let t = Instant::now();
            unlock(holder).await;
            let (won, l) = waiting.await.unwrap_or_else(|e| panic!("task: {e}"));
            holder = l;
            samples.push(won - t);
        }
        unlock(holder).await;
        samples.sort();
        self.figures
            .put("handover_p50_ms", ms(percentile(&samples, 0.5)));
        self.figures
            .put("handover_p99_ms", ms(percentile(&samples, 0.99)));
    }

    /// The store's own floor for a handover, `--rounds` times: one write
    /// (the leader's delete), the watch notification it causes to a second
    /// client, and that client's one read, timed from the write's send to
    /// the read's answer. Two connections, as two processes would have;
    /// setting the watch up is not timed (a queued candidate has it armed).
    async fn floor(&mut self) {
        let mut samples = Vec::with_capacity(self.args.rounds);
        match self.kind {
            Kind::Etcd => {
                use leasehold_etcd::etcd_client::{
                    Client as Etcd, EventType, GetOptions, WatchOptions,
                };
                let ep = self.store.endpoint();
                let mut writer = Etcd::connect([ep.as_str()], None)
                    .await
                    .unwrap_or_else(|e| panic!("etcd-client: {e}"));
                let mut reader = writer.clone();
                let mut watcher = Etcd::connect([ep.as_str()], None)
                    .await
                    .unwrap_or_else(|e| panic!("etcd-client: {e}"));
                let prefix = format!("/{}/", unique_name("bench-floor"));
                for i in 0..self.args.rounds {
                    let key = format!("{prefix}{i:04}");
                    let put = writer
                        .put(key.as_str(), "x", None)
                        .await
                        .unwrap_or_else(|e| panic!("etcd put: {e}"));
                    let rev = put.header().map_or(0, |h| h.revision());
                    let mut stream = watcher
                        .watch(
                            key.as_str(),
                            Some(WatchOptions::new().with_start_revision(rev + 1)),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("etcd watch: {e}"));
                    // Armed: etcd confirmed the watch.
                    let created = timeout(LONG, stream.message()).await;
                    assert!(
                        matches!(created, Ok(Ok(Some(ref r))) if r.created()),
                        "etcd: the watch on {key} was not created"
                    );
                    let t = Instant::now();
                    writer
                        .delete(key.as_str(), None)
                        .await
                        .unwrap_or_else(|e| panic!("etcd delete: {e}"));
                    let seen = timeout(LONG, async {
                        while let Ok(Some(resp)) = stream.message().await {
                            if resp
                                .events()
                                .iter()
                                .any(|e| e.event_type() == EventType::Delete)
                            {
                                return true;
                            }
                        }
                        false
                    })
                    .await;
                    assert!(matches!(seen, Ok(true)), "etcd: no delete event for {key}");
                    reader
                        .get(
                            prefix.as_str(),
                            Some(GetOptions::new().with_prefix().with_limit(1)),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("etcd get: {e}"));
                    samples.push(t.elapsed());
                    drop(stream);
                }
            }
            Kind::Zookeeper => {
                use leasehold_zookeeper::zookeeper_client::{Acls, Client as Zk, CreateMode};
                let cs = self.store.endpoint();
                let connect = || async {
                    Zk::connector()
                        .with_session_timeout(self.ttl)
                        .connect(&cs)
                        .await
                        .unwrap_or_else(|e| panic!("zookeeper-client: {e}"))
                };
                let (writer, reader) = (connect().await, connect().await);
                let dir = format!("/{}", unique_name("bench-floor"));
                writer
                    .create(
                        &dir,
                        b"",
                        &CreateMode::Persistent.with_acls(Acls::anyone_all()),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("zookeeper create {dir}: {e}"));
                for i in 0..self.args.rounds {
                    let path = format!("{dir}/n{i:04}");
                    writer
                        .create(
                            &path,
                            b"x",
                            &CreateMode::Ephemeral.with_acls(Acls::anyone_all()),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("zookeeper create {path}: {e}"));
                    let (_, watcher) = reader
                        .check_and_watch_stat(&path)
                        .await
                        .unwrap_or_else(|e| panic!("zookeeper exists {path}: {e}"));
                    let t = Instant::now();
                    writer
                        .delete(&path, None)
                        .await
                        .unwrap_or_else(|e| panic!("zookeeper delete {path}: {e}"));
                    timeout(LONG, watcher.changed())
                        .await
                        .unwrap_or_else(|_| panic!("zookeeper: no event for {path}"));
                    reader
                        .list_children(&dir)
                        .await
                        .unwrap_or_else(|e| panic!("zookeeper list {dir}: {e}"));
                    samples.push(t.elapsed());
                }
                let _ = writer.delete(&dir, None).await;
            }
            Kind::Gcs => {
                // No watch: a write, then a read of it by another client.
                let (a, b) = (self.client().await, self.client().await);
                let gcs = |c: &Client| -> Arc<GcsBackend> {
                    c.gcs
                        .clone()
                        .unwrap_or_else(|| panic!("not a Cloud Storage client"))
                };
                let (writer, reader) = (gcs(&a), gcs(&b));
                let object = format!("bench/{}", unique_name("bench-floor"));
                for i in 0..self.args.rounds {
                    let t = Instant::now();
                    writer
                        .client()
                        .write_object(writer.bucket_path(), &object, format!("{i}"))
                        .send_buffered()
                        .await
                        .unwrap_or_else(|e| panic!("gcs write: {e}"));
                    let mut resp = reader
                        .client()
                        .read_object(reader.bucket_path(), &object)
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("gcs read: {e}"));
                    while let Some(chunk) = resp.next().await {
                        chunk.unwrap_or_else(|e| panic!("gcs read: {e}"));
                    }
                    samples.push(t.elapsed());
                }
            }
            // The SQL stores have no floor here yet.
            Kind::Mysql | Kind::Postgres | Kind::PostgresPgbouncer => return,
        }
        samples.sort();
        let p50 = ms(percentile(&samples, 0.5));
        self.figures.put("floor_p50_ms", p50);
        self.figures
            .put("floor_p99_ms", ms(percentile(&samples, 0.99)));
        self.figures.put(
            "handover_floor_ratio",
            self.figures.get("handover_p50_ms") / p50,
        );
    }

    async fn spawn_candidate(&mut self, election: &str, id: &str, ttl: Duration) -> Candidate {
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
        let mut child = Command::new(exe)
            .args([
                "candidate",
                "--backend",
                self.kind.name(),
                "--endpoint",
                &self.store.endpoint(),
                "--election",
                election,
                "--id",
                id,
                "--ttl-ms",
                &ttl.as_millis().to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn a candidate: {e}"));
        let pid = child.id().unwrap_or_else(|| panic!("candidate has no pid"));
        self.pids.push(pid);
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        Candidate {
            child,
            pid,
            lines: BufReader::new(stdout),
        }
    }

    async fn failover(&mut self) {
        let ttl = Duration::from_secs_f64(self.args.failover_ttl);
        let mut ratios = Vec::new();
        for _ in 0..self.args.failover_rounds {
            let election = unique_name("bench-crash");
            let mut leader = self.spawn_candidate(&election, "doomed", ttl).await;
            leader.expect("campaigning").await;
            leader.expect("leading").await;
            let mut heir = self.spawn_candidate(&election, "heir", ttl).await;
            heir.expect("campaigning").await;
            // Let the heir queue (or read the record once).
            sleep(Duration::from_secs(1)).await;
            let killed = Instant::now();
            leader.kill().await;
            heir.expect("leading").await;
            ratios.push(killed.elapsed().as_secs_f64() / ttl.as_secs_f64());
            heir.stop().await;
        }
        ratios.sort_by(f64::total_cmp);
        let p = |q: f64| {
            let i = ((ratios.len().max(1) - 1) as f64 * q).round() as usize;
            ratios.get(i).copied().unwrap_or(f64::NAN)
        };
        self.figures.put("failover_ttl_s", ttl.as_secs_f64());
        self.figures.put("failover_ratio_min", p(0.0));
        self.figures.put("failover_ratio_p50", p(0.5));
        self.figures.put("failover_ratio_max", p(1.0));
        // How many of the failovers came within the ttl (the failover bound).
        let within = ratios.iter().filter(|r| **r <= 1.0).count();
        self.figures.put(
            "failover_within_ttl",
            within as f64 / ratios.len().max(1) as f64,
        );
    }

    /// Store requests/s over the window.
    async fn rate(&self, clients: &[Client]) -> (f64, Option<f64>) {
        let s0 = self.store.counted().await;
        let c0: Option<f64> = clients.iter().map(Client::client_messages).sum();
        let t = Instant::now();
        sleep(self.window).await;
        let s1 = self.store.counted().await;
        let c1: Option<f64> = clients.iter().map(Client::client_messages).sum();
        let secs = t.elapsed().as_secs_f64();
        (
            (s1.requests - s0.requests) / secs,
            c0.zip(c1).map(|(a, b)| (b - a) / secs),
        )
    }

    /// Idle leader and idle waiters, then handovers with the waiters queued.
    async fn idle_and_herd(&mut self) {
        let n = self.args.waiters;
        let election = unique_name("bench-idle");
        let base = self.base().await;
        let leader_client = self.client().await;
        let leader_elector = leader_client.elector(&election, "leader", self.ttl);
        let mut leader = lock(&leader_elector).await;
        sleep(self.settle()).await;
        let (with_leader, leader_side) = self.rate(std::slice::from_ref(&leader_client)).await;
        // Each waiter its own backend instance: N processes, one candidate each.
        let mut clients = Vec::with_capacity(n);
        let (won_tx, mut won_rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let c = self.client().await;
            let e = c.elector(&election, &format!("waiter-{i}"), self.ttl);
            clients.push(c);
            let tx = won_tx.clone();
            tasks.push(tokio::spawn(async move {
                let l = lock(&e).await;
                let _ = tx.send((Instant::now(), l));
            }));
        }
        sleep(self.settle()).await;
        let (with_waiters, waiters_side) = self.rate(&clients).await;
        self.figures
            .put("idle_leader_store_rps", with_leader - base);
        self.figures.put(
            "idle_waiter_store_rps",
            (with_waiters - with_leader) / n.max(1) as f64,
        );
        if let (Some(l), Some(w)) = (leader_side, waiters_side) {
            self.figures.put("idle_leader_client_rps", l);
            self.figures
                .put("idle_waiter_client_rps", w / n.max(1) as f64);
        }
        // Handovers with the waiters queued. Each round counts one ttl
        // without a handover, then one ttl from an unlock (a whole number of
        // every periodic interval: renewals, re-checks, so both spans hold
        // the same idle traffic); the handover's own cost is the difference.
        let mut requests = Vec::new();
        let mut events = Vec::new();
        for _ in 0..self.args.herd_rounds.min(n) {
            let i0 = self.store.counted().await;
            let t = Instant::now();
            sleep(self.ttl).await;
            let i1 = self.store.counted().await;
            let idle_secs = t.elapsed().as_secs_f64();
            let s0 = self.store.counted().await;
            let t = Instant::now();
            unlock(leader).await;
            let (_, next) = timeout(LONG, won_rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no successor within {LONG:?}"))
                .unwrap_or_else(|| panic!("the waiters are gone"));
            leader = next;
            let span = self.ttl.max(t.elapsed() + Duration::from_millis(500));
            sleep(span.saturating_sub(t.elapsed())).await;
            let s1 = self.store.counted().await;
            let scale = t.elapsed().as_secs_f64() / idle_secs;
            requests.push((s1.requests - s0.requests) - (i1.requests - i0.requests) * scale);
            events.push(
                (s1.watch_events - s0.watch_events) - (i1.watch_events - i0.watch_events) * scale,
            );
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        self.figures.put("herd_waiters", n as f64);
        self.figures
            .put("herd_store_requests_per_handover", mean(&requests));
        self.figures
            .put("herd_watch_events_per_handover", mean(&events));
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        unlock(leader).await;
        // Queued claims withdraw themselves in the background: give them a
        // moment before the next section counts.
        sleep(self.settle()).await;
    }

    /// `--locks` elections held by one process on one backend instance.
    async fn many_locks(&mut self) {
        let n = self.args.locks;
        let base = self.base().await;
        let rss0 = rss_kib();
        let cpu0 = cpu_seconds();
        let client = self.client().await;
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let e = client.elector(&unique_name("bench-many"), &format!("holder-{i}"), self.ttl);
            set.spawn(async move { lock(&e).await });
        }
        let mut held = Vec::with_capacity(n);
        while let Some(r) = set.join_next().await {
            held.push(r.unwrap_or_else(|e| panic!("lock task: {e}")));
        }
        let acquire = t.elapsed();
        let cpu1 = cpu_seconds();
        sleep(self.settle()).await;
        let cpu2 = cpu_seconds();
        let (holding, client_side) = self.rate(std::slice::from_ref(&client)).await;
        let cpu3 = cpu_seconds();
        let rss1 = rss_kib();
        let secs = self.window.as_secs_f64();
        self.figures.put("locks", n as f64);
        self.figures
            .put("locks_acquire_all_s", acquire.as_secs_f64());
        self.figures.put("locks_store_rps", holding - base);
        if let Some(c) = client_side {
            self.figures.put("locks_client_rps", c);
        }
        self.figures
            .put("locks_rss_kib_per_lock", (rss1 - rss0) / n.max(1) as f64);
        self.figures.put(
            "locks_acquire_cpu_ms_per_lock",
            (cpu1 - cpu0) * 1000.0 / n.max(1) as f64,
        );
        self.figures.put(
            "locks_cpu_us_per_s_per_lock",
            (cpu3 - cpu2) * 1e6 / secs / n.max(1) as f64,
        );
        // Terms that ended while held (renewals that could not keep up):
        // reported, not fatal.
        let lost = held.iter().filter(|l| l.is_lost()).count();
        self.figures.put("locks_lost_while_held", lost as f64);
        // Released a hundred at a time (a thousand at once can outrun the
        // emulator); a release that fails is counted (its lease then
        // expires), not fatal.
        let mut failed = 0usize;
        let mut held = held.into_iter();
        for _ in 0..n.div_ceil(100) {
            let mut set = tokio::task::JoinSet::new();
            for l in held.by_ref().take(100) {
                set.spawn(async move { timeout(LONG, l.unlock()).await });
            }
            while let Some(r) = set.join_next().await {
                if !matches!(r, Ok(Ok(Ok(())))) {
                    failed += 1;
                }
            }
        }
        self.figures.put("locks_release_failures", failed as f64);
    }
}

/// The window, rounded to a whole number of ttls when it is longer than
/// one: every periodic interval of the engine (renew ttl/3, re-check ttl)
/// then fits a whole number of times, and a rate does not depend on how
/// many synchronised renewals happen to fall inside.
fn whole_ttls(window: f64, ttl: f64) -> Duration {
    if window > ttl && ttl > 0.0 {
        Duration::from_secs_f64((window / ttl).round() * ttl)
    } else {
        Duration::from_secs_f64(window)
    }
}

/// A candidate process and its stdout.
struct Candidate {
    child: Child,
    pid: u32,
    lines: BufReader<ChildStdout>,
}

impl Candidate {
    /// Wait for a line starting with `word`.
    async fn expect(&mut self, word: &str) {
        let pid = self.pid;
        let read = async {
            for _ in 0..100 {
                let mut line = String::new();
                match self.lines.read_line(&mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line.starts_with(word) => return true,
                    Ok(_) => {}
                }
            }
            false
        };
        match timeout(LONG, read).await {
            Ok(true) => {}
            _ => panic!("candidate {pid} never said `{word}`"),
        }
    }

    /// SIGKILL by pid, then reap.
    async fn kill(mut self) {
        self.child
            .kill()
            .await
            .unwrap_or_else(|e| panic!("kill candidate {}: {e}", self.pid));
    }

    /// Close its stdin (it unlocks and exits); SIGKILL by pid if it has not
    /// exited within the bound.
    async fn stop(mut self) {
        drop(self.child.stdin.take());
        if timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// This process's resident memory, KiB (`VmRSS` in /proc/self/status).
fn rss_kib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

/// This process's CPU time so far, seconds (utime + stime in
/// /proc/self/stat, in USER_HZ = 100 ticks per second on Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces) start at
    // the state, field 3; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (tick(11), tick(12)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

async fn candidate(kind: Kind, endpoint: &str, election: &str, id: &str, ttl: Duration) {
    let client = Client::connect(kind, endpoint, ttl).await;
    let e = client.elector(election, id, ttl);
    println!("campaigning");
    let l = lock(&e).await;
    println!("leading {}", l.fencing_token().get());
    let lost = l.lost();
    // stdin closes when the benchmark stops this candidate.
    let closed = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    });
    tokio::select! {
        _ = closed => {}
        _ = lost => {}
    }
    let _ = timeout(ttl, l.unlock()).await;
    // Not waiting for the stdin thread (the runtime would).
    std::process::exit(0);
}

fn f(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "–".to_owned()
    }
}

/// One markdown table: a row per backend, a column per (header, figure,
/// decimals).
fn table(title: &str, columns: &[(&str, &str, usize)], all: &[(Kind, Figures)]) {
    println!("\n### {title}\n");
    let headers: Vec<&str> = columns.iter().map(|c| c.0).collect();
    println!("| backend | {} |", headers.join(" | "));
    println!("| --- |{}", " ---: |".repeat(columns.len()));
    for (kind, figures) in all {
        let cells: Vec<String> = columns
            .iter()
            .map(|&(_, name, digits)| f(figures.get(name), digits))
            .collect();
        println!("| {} | {} |", kind.name(), cells.join(" | "));
    }
}

fn print_tables(args: &Args, all: &[(Kind, Figures)]) {
    let ttl = args.ttl;
    table(
        &format!("Latency (ttl {ttl} s; {} rounds)", args.rounds),
        &[
            ("acquire p50 (ms)", "acquire_p50_ms", 2),
            ("acquire p99 (ms)", "acquire_p99_ms", 2),
            ("handover p50 (ms)", "handover_p50_ms", 2),
            ("handover p99 (ms)", "handover_p99_ms", 2),
            ("floor p50 (ms)", "floor_p50_ms", 2),
            ("floor p99 (ms)", "floor_p99_ms", 2),
            ("handover ÷ floor (p50)", "handover_floor_ratio", 2),
        ],
        all,
    );
    table(
        &format!(
            "Crash failover in ttls (the failover bound; separate processes, SIGKILL; ttl {} s; {} rounds)",
            args.failover_ttl, args.failover_rounds
        ),
        &[
            ("min × ttl", "failover_ratio_min", 2),
            ("p50 × ttl", "failover_ratio_p50", 2),
            ("p100 × ttl", "failover_ratio_max", 2),
            ("within the ttl", "failover_within_ttl", 2),
        ],
        all,
    );
    table(
        &format!(
            "Idle traffic (ttl {ttl} s; {} waiters, each its own backend instance; {:.0} s windows)",
            args.waiters,
            whole_ttls(args.window, args.ttl).as_secs_f64()
        ),
        &[
            ("store req/s per idle leader", "idle_leader_store_rps", 3),
            ("store req/s per idle waiter", "idle_waiter_store_rps", 3),
            ("client msg/s per leader", "idle_leader_client_rps", 3),
            ("client msg/s per waiter", "idle_waiter_client_rps", 3),
        ],
        all,
    );
    table(
        &format!(
            "Handover with {} waiters queued ({} handovers; beyond idle traffic)",
            args.waiters, args.herd_rounds
        ),
        &[
            (
                "store requests per handover",
                "herd_store_requests_per_handover",
                1,
            ),
            (
                "watch events per handover",
                "herd_watch_events_per_handover",
                1,
            ),
        ],
        all,
    );
    table(
        &format!(
            "{} elections held by one process on one backend instance (ttl {ttl} s)",
            args.locks
        ),
        &[
            ("acquire all (s)", "locks_acquire_all_s", 2),
            ("store msg/s while held", "locks_store_rps", 1),
            ("client msg/s", "locks_client_rps", 1),
            ("RSS per lock (KiB)", "locks_rss_kib_per_lock", 1),
            (
                "CPU to acquire per lock (ms)",
                "locks_acquire_cpu_ms_per_lock",
                3,
            ),
            ("CPU per held lock (µs/s)", "locks_cpu_us_per_s_per_lock", 1),
            ("terms lost while held", "locks_lost_while_held", 0),
            ("releases failed", "locks_release_failures", 0),
        ],
        all,
    );
    println!(
        "\nStore-side counts: etcd `grpc_server_msg_received_total` (watch events: \
         `grpc_server_msg_sent_total` of Watch); ZooKeeper `mntr` `zk_packets_received` \
         (watch events: packets sent − received); fake-gcs-server's access log (no watch); \
         MariaDB's `Questions` (statements executed, each reading's own SHOW included; no watch); \
         PostgreSQL's statements logged with `log_statement = all` (NOTIFY deliveries not counted). \
         Client-side columns: etcd's `EtcdBackend::stats()` (requests + keep-alives) only."
    );
    println!(
        "\nFloor: the store's own cost of a handover, timed by a minimal client of the crate \
         leasehold uses: one write (etcd: a delete; ZooKeeper: a delete of an ephemeral node), \
         the watch notification it causes to a second client (etcd: a watch on the key; \
         ZooKeeper: an exists-watch) and that client's one read (a one-key range; a \
         getChildren); Cloud Storage has no watch: one write, then a read by a second client. \
         Crash failover in ttls: from the SIGKILL to the next candidate leading, divided by the \
         ttl, which is the failover bound (a store's expiry tick comes on top: etcd 500 ms, \
         ZooKeeper one tickTime, 500 ms here)."
    );
}

async fn bench(args: &Args) {
    let mut all = Vec::new();
    let mut pids = Vec::new();
    for &kind in &args.backends {
        let store = Store::start(kind).await;
        pids.push(store.pid());
        eprintln!("[bench] {} at {}", kind.name(), store.endpoint());
        let mut b = Bench {
            args,
            kind,
            store: &store,
            ttl: Duration::from_secs_f64(args.ttl),
            window: whole_ttls(args.window, args.ttl),
            figures: Figures::default(),
            pids: Vec::new(),
            base: None,
        };
        let started = Instant::now();
        eprintln!("[bench] {}: uncontended acquire", kind.name());
        b.uncontended().await;
        eprintln!("[bench] {}: handover", kind.name());
        b.handover().await;
        eprintln!("[bench] {}: the store's floor for a handover", kind.name());
        b.floor().await;
        eprintln!("[bench] {}: crash failover", kind.name());
        b.failover().await;
        eprintln!(
            "[bench] {}: idle leader, idle waiters, handovers with waiters",
            kind.name()
        );
        b.idle_and_herd().await;
        eprintln!("[bench] {}: many locks", kind.name());
        b.many_locks().await;
        eprintln!("[bench] {} done in {:.0?}", kind.name(), started.elapsed());
        let figures: BTreeMap<&str, f64> = b.figures.0.iter().copied().collect();
        eprintln!("[bench] {}: {}", kind.name(), serde_json::json!(figures));
        pids.extend(b.pids);
        all.push((kind, b.figures));
        drop(store); // stopped by its pid
    }
    print_tables(args, &all);
    if let Some(path) = &args.json {
        let backends: BTreeMap<&str, BTreeMap<&str, f64>> = all
            .iter()
            .map(|(k, x)| (k.name(), x.0.iter().copied().collect()))
            .collect();
        let doc = serde_json::json!({ "backends": backends, "pids": pids });
        std::fs::write(path, doc.to_string())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    match &args.command {
        Some(Sub::Candidate {
            backend,
            endpoint,
            election,
            id,
            ttl_ms,
        }) => {
            candidate(
                *backend,
                endpoint,
                election,
                id,
                Duration::from_millis(*ttl_ms),
            )
            .await;
        }
        None => bench(&args).await,
    }
}
