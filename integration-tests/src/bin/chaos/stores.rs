//! The stores the chaos runner drives. A store registers itself here, in
//! one place: its entry in [`Backend::spec`] (the faults it takes, how
//! many members it may have, how long a leader deposed by hand may take
//! to learn it) and an implementation of [`ChaosStore`] (start, stop,
//! restart, its URL, its record deleted by hand). The runner knows stores
//! only through these two.

use std::net::SocketAddr;
use std::time::Duration;

use leasehold_core::conformance::async_trait;
use leasehold_integration_tests::{EtcdNode, FakeGcs, HarnessError, MariaDb, PgServer, ZkServer};

use crate::members::NsCluster;
use crate::net::Net;
use crate::runner::FaultKind;

/// Which store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Backend {
    Etcd,
    Zookeeper,
    Gcs,
    Postgres,
    Mysql,
}

/// What the runner needs to know of a store before it starts.
pub(crate) struct Spec {
    /// Fault kinds on top of the ones every store takes (kill, pause, cut,
    /// the two one-way drops), with one member.
    extra: &'static [FaultKind],
    /// Whether it runs as a cluster of members in network namespaces of
    /// their own (`--members 3`): then kill-member and isolate-member too.
    cluster: bool,
    /// How long a leader whose record was deleted by hand (`delete-lease`)
    /// may keep acting after the next term began, given the ttl; `None`
    /// when nobody else can lead until the deposed leader's lease is over
    /// anyway (the store's waiters stay out for a ttl).
    hand_deletion_notice: Option<fn(Duration) -> Duration>,
}

/// A record store's leader learns that its record is gone at its next
/// renewal: a renew interval (ttl / 3) plus that statement's request
/// timeout (ttl / 3), the CLI's defaults. Its waiters may take the missing
/// record at once, so until then only the fencing token keeps the resource
/// safe.
fn next_renewal(ttl: Duration) -> Duration {
    ttl * 2 / 3
}

impl Backend {
    /// The store's entry: the one place a store's facts are told.
    pub(crate) fn spec(self) -> Spec {
        use FaultKind::*;
        match self {
            Backend::Etcd | Backend::Zookeeper => Spec {
                extra: &[RestartStore, ReleaseLost, DeleteLeader],
                cluster: true,
                hand_deletion_notice: None,
            },
            // fake-gcs-server keeps objects in memory: a restart is a
            // deletion. Waiters observe a deleted object for a ttl.
            Backend::Gcs => Spec {
                extra: &[DeleteLease],
                cluster: false,
                hand_deletion_notice: None,
            },
            Backend::Postgres | Backend::Mysql => Spec {
                extra: &[RestartStore, DeleteLease],
                cluster: false,
                hand_deletion_notice: Some(next_renewal),
            },
        }
    }

    /// Its name on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Etcd => "etcd",
            Backend::Zookeeper => "zookeeper",
            Backend::Gcs => "gcs",
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
        }
    }

    /// The fault kinds that apply with `members` store members.
    pub(crate) fn fault_kinds(self, members: usize) -> Vec<FaultKind> {
        let spec = self.spec();
        let mut kinds = vec![
            FaultKind::KillLeader,
            FaultKind::PauseLeader,
            FaultKind::CutLeader,
            FaultKind::DropLeaderOut,
            FaultKind::DropLeaderIn,
        ];
        kinds.extend_from_slice(spec.extra);
        if spec.cluster && members > 1 {
            kinds.extend([FaultKind::KillMember, FaultKind::IsolateMember]);
        }
        kinds
    }

    /// Whether `members` members run in network namespaces of their own.
    pub(crate) fn in_netns(self, members: usize) -> bool {
        self.spec().cluster && members > 1
    }

    /// The notice bound for a record deleted by hand, if the store's
    /// waiters may take it at once (see [`Spec::hand_deletion_notice`]).
    pub(crate) fn hand_deletion_notice(self, ttl: Duration) -> Option<Duration> {
        self.spec().hand_deletion_notice.map(|f| f(ttl))
    }

    /// Starts the store with `members` members.
    pub(crate) async fn start(
        self,
        members: usize,
        net: &Net,
    ) -> Result<Box<dyn ChaosStore>, String> {
        let e = |e: HarnessError| e.to_string();
        if members != 1 && !self.spec().cluster {
            return Err(format!(
                "{} runs as one server here: use --members 1, not {members}",
                self.name()
            ));
        }
        Ok(match (self, members) {
            (Backend::Etcd, 1) => Box::new(EtcdNode::start().await.map_err(e)?),
            (Backend::Etcd, n) => Box::new(Cluster(NsCluster::etcd(net, n)?, "etcd")),
            (Backend::Zookeeper, 1) => Box::new(ZkServer::start().await.map_err(e)?),
            (Backend::Zookeeper, n) => Box::new(Cluster(NsCluster::zookeeper(net, n)?, "zk")),
            (Backend::Gcs, _) => Box::new(FakeGcs::start().await.map_err(e)?),
            (Backend::Postgres, _) => Box::new(PgServer::start().await.map_err(e)?),
            (Backend::Mysql, _) => Box::new(Mysql::start().await?),
        })
    }
}

/// A running store, as the runner drives it.
#[async_trait]
pub(crate) trait ChaosStore: Send + Sync {
    /// Where clients reach it: in the root namespace (the runner puts a
    /// forwarder in the hub for each), or inside the members' namespaces.
    fn client_addrs(&self) -> Vec<SocketAddr>;

    /// The URL of `election` for the candidates, who reach the store at
    /// `hosts` (`host:port`, one per client address).
    fn url(&self, hosts: &[String], election: &str) -> String;

    /// Members that `isolate-member` can cut from their peers.
    fn isolatable_members(&self) -> usize {
        0
    }

    /// Stops member `member` (every member when `None`) as a crash does.
    fn kill(&self, member: Option<usize>);

    /// Starts again whatever is stopped, with the same data and addresses.
    async fn restart_stopped(&self) -> Result<(), String>;

    /// `delete-lease`: deletes the election's record by hand. Returns the
    /// deleted record's token when the store says it (`None`: no record,
    /// or a store that does not tell).
    async fn delete_lease(&self, election: &str) -> Result<Option<u64>, String> {
        let _ = election;
        Err("this store has no record to delete by hand".to_owned())
    }
}

fn restarting(e: HarnessError) -> String {
    format!("restarting the store: {e}")
}

#[async_trait]
impl ChaosStore for EtcdNode {
    fn client_addrs(&self) -> Vec<SocketAddr> {
        vec![self.client_addr()]
    }
    fn url(&self, hosts: &[String], election: &str) -> String {
        format!("etcd://{}/{election}", hosts.join(","))
    }
    fn kill(&self, _: Option<usize>) {
        EtcdNode::kill(self);
    }
    async fn restart_stopped(&self) -> Result<(), String> {
        self.restart().await.map_err(restarting)
    }
}

#[async_trait]
impl ChaosStore for ZkServer {
    fn client_addrs(&self) -> Vec<SocketAddr> {
        vec![self.client_addr()]
    }
    fn url(&self, hosts: &[String], election: &str) -> String {
        format!("zk://{}/{election}", hosts.join(","))
    }
    fn kill(&self, _: Option<usize>) {
        ZkServer::kill(self);
    }
    async fn restart_stopped(&self) -> Result<(), String> {
        self.restart().await.map_err(restarting)
    }
}

/// An etcd cluster or ZooKeeper ensemble in namespaces, with its URL scheme.
struct Cluster(NsCluster, &'static str);

#[async_trait]
impl ChaosStore for Cluster {
    fn client_addrs(&self) -> Vec<SocketAddr> {
        self.0.client_addrs()
    }
    fn url(&self, hosts: &[String], election: &str) -> String {
        format!("{}://{}/{election}", self.1, hosts.join(","))
    }
    fn isolatable_members(&self) -> usize {
        self.0.len()
    }
    fn kill(&self, member: Option<usize>) {
        self.0.kill(member);
    }
    async fn restart_stopped(&self) -> Result<(), String> {
        self.0.restart_stopped()
    }
}

/// The object's name in the bucket for `election`.
fn gcs_object(election: &str) -> String {
    format!("chaos/{election}")
}

#[async_trait]
impl ChaosStore for FakeGcs {
    fn client_addrs(&self) -> Vec<SocketAddr> {
        vec![self.addr()]
    }
    fn url(&self, hosts: &[String], election: &str) -> String {
        format!(
            "gs://{}/{}?endpoint=http://{}&credentials=none",
            self.bucket(),
            gcs_object(election),
            hosts[0]
        )
    }
    fn kill(&self, _: Option<usize>) {
        FakeGcs::kill(self);
    }
    async fn restart_stopped(&self) -> Result<(), String> {
        self.restart().await.map_err(restarting)
    }
    async fn delete_lease(&self, election: &str) -> Result<Option<u64>, String> {
        self.delete_object(self.bucket(), &gcs_object(election))
            .await
            .map_err(|e| format!("deleting the lease object: {e}"))?;
        Ok(None)
    }
}

#[async_trait]
impl ChaosStore for PgServer {
    fn client_addrs(&self) -> Vec<SocketAddr> {
        vec![self.addr()]
    }
    fn url(&self, hosts: &[String], election: &str) -> String {
        // A direct connection: waiters wake through LISTEN/NOTIFY.
        format!(
            "postgres://{}@{}/postgres/{election}?sslmode=disable",
            leasehold_integration_tests::POSTGRES_USER,
            hosts[0]
        )
    }
    /// A crash: SIGQUIT, PostgreSQL's immediate shutdown (every backend
    /// ends at once, no checkpoint; recovery at the next start). A SIGKILL
    /// of the postmaster would leave its backends holding the shared
    /// memory the next start needs.
    fn kill(&self, _: Option<usize>) {
        self.crash();
    }
    async fn restart_stopped(&self) -> Result<(), String> {
        // Waits for the crashed server to be gone, then starts it.
        self.restart().await.map_err(restarting)
    }
    async fn delete_lease(&self, election: &str) -> Result<Option<u64>, String> {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port())
            .user(leasehold_integration_tests::POSTGRES_USER)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5))
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connecting to delete the lease row: {e}"))?;
        let task = tokio::spawn(connection);
        let sql = format!(
            "DELETE FROM {} WHERE election = $1 RETURNING token",
            leasehold_postgres::DEFAULT_TABLE
        );
        let rows = tokio::time::timeout(Duration::from_secs(10), client.query(&sql, &[&election]))
            .await
            .map_err(|_| "deleting the lease row timed out".to_owned())?
            .map_err(|e| format!("deleting the lease row: {e}"))?;
        drop(client);
        let _ = task.await;
        Ok(rows
            .first()
            .map(|r| r.get::<_, i64>(0))
            .and_then(|t| u64::try_from(t).ok()))
    }
}

/// MariaDB with the database and the account the candidates use.
struct Mysql(MariaDb);

const MYSQL_DB: &str = "chaos";
const MYSQL_USER: &str = "chaos";
const MYSQL_PASSWORD: &str = "chaos-pw";

impl Mysql {
    async fn start() -> Result<Mysql, String> {
        let db = MariaDb::start().await.map_err(|e| e.to_string())?;
        db.create_database(MYSQL_DB)
            .await
            .map_err(|e| e.to_string())?;
        // The candidates come through the hub's forwarder, from 127.0.0.1.
        db.sql(&format!(
            "CREATE USER '{MYSQL_USER}'@'127.0.0.1' IDENTIFIED BY '{MYSQL_PASSWORD}'; \
             GRANT ALL ON `{MYSQL_DB}`.* TO '{MYSQL_USER}'@'127.0.0.1'"
        ))
        .await
        .map_err(|e| e.to_string())?;
        Ok(Mysql(db))
    }
}

#[async_trait]
impl ChaosStore for Mysql {
    fn client_addrs(&self) -> Vec<SocketAddr> {
        vec![self.0.addr()]
    }
    fn url(&self, hosts: &[String], election: &str) -> String {
        format!(
            "mysql://{MYSQL_USER}:{MYSQL_PASSWORD}@{}/{MYSQL_DB}/{election}",
            hosts[0]
        )
    }
    fn kill(&self, _: Option<usize>) {
        self.0.kill();
    }
    async fn restart_stopped(&self) -> Result<(), String> {
        self.0.restart().await.map_err(restarting)
    }
    async fn delete_lease(&self, election: &str) -> Result<Option<u64>, String> {
        // One transaction: the token read is the row's that is deleted.
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            self.0.sql(&format!(
                "START TRANSACTION; \
                 SELECT token FROM `{MYSQL_DB}`.leasehold_leases WHERE election = '{election}' FOR UPDATE; \
                 DELETE FROM `{MYSQL_DB}`.leasehold_leases WHERE election = '{election}'; \
                 COMMIT"
            )),
        )
        .await
        .map_err(|_| "deleting the lease row timed out".to_owned())?
        .map_err(|e| format!("deleting the lease row: {e}"))?;
        Ok(out.trim().parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_store_takes_the_faults_its_entry_names() {
        let common = [
            FaultKind::KillLeader,
            FaultKind::PauseLeader,
            FaultKind::CutLeader,
            FaultKind::DropLeaderOut,
            FaultKind::DropLeaderIn,
        ];
        for backend in [
            Backend::Etcd,
            Backend::Zookeeper,
            Backend::Gcs,
            Backend::Postgres,
            Backend::Mysql,
        ] {
            let kinds = backend.fault_kinds(1);
            assert!(common.iter().all(|k| kinds.contains(k)), "{backend:?}");
            assert!(!kinds.contains(&FaultKind::KillMember), "{backend:?} x1");
        }
        for sql in [Backend::Postgres, Backend::Mysql] {
            let kinds = sql.fault_kinds(1);
            assert!(kinds.contains(&FaultKind::RestartStore), "{sql:?}");
            assert!(kinds.contains(&FaultKind::DeleteLease), "{sql:?}");
            assert!(!kinds.contains(&FaultKind::ReleaseLost), "{sql:?}");
            assert!(!sql.in_netns(3), "{sql:?} runs as one server");
            // Their leaders learn a hand deletion at the next renewal.
            assert_eq!(
                sql.hand_deletion_notice(Duration::from_secs(3)),
                Some(Duration::from_secs(2))
            );
        }
        let etcd3 = Backend::Etcd.fault_kinds(3);
        assert!(etcd3.contains(&FaultKind::IsolateMember));
        assert!(Backend::Etcd.in_netns(3));
        assert_eq!(
            Backend::Gcs.hand_deletion_notice(Duration::from_secs(3)),
            None
        );
    }
}
