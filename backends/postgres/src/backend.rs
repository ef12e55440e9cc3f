//! The engine's view of the lease table: a record store whose expiry the
//! database judges ([`Expiry::Store`]), with a leader watch fed by
//! LISTEN/NOTIFY when `listen` is on.

use async_trait::async_trait;
use leasehold_core::driver::DynBackend;
use leasehold_core::{
    AcquireRequest, Backend, Claim, Expiry, Family, FencingToken, LeaderInfo, LeaderWatch,
    RecordOutcome, RecordStore, Result, WatchLeader,
};

use crate::config::PostgresBuilder;
use crate::guard::LeaderGuard;
use crate::listen::Watch;
use crate::table::{Acquired, Holder, LeaseTable, Term};

/// The PostgreSQL [`Backend`]: a [`LeaseTable`] for the engine.
///
/// Cheap to clone; clones share the connection, the listener and the
/// renewal batch.
#[derive(Debug, Clone)]
pub struct PostgresBackend {
    table: LeaseTable,
}

impl PostgresBackend {
    /// A builder (connection settings, table name); finish it with
    /// [`PostgresBuilder::build`].
    pub fn builder() -> PostgresBuilder {
        PostgresBuilder::new()
    }

    /// The backend over `table`.
    pub fn new(table: LeaseTable) -> Self {
        PostgresBackend { table }
    }

    /// The lease table underneath (statements, counts, the DDL).
    pub fn table(&self) -> &LeaseTable {
        &self.table
    }

    /// The condition that holds exactly while `leadership`'s term lasts,
    /// for the application's own statements on this database: fencing
    /// without a cooperating resource, since the guard and the write are
    /// one statement or one transaction. See [`LeaderGuard`] for the two
    /// ways to use it.
    ///
    /// Take it from the backend the term was won on: the guard names this
    /// backend's table, and the term's owner identity (random per term)
    /// appears in no other table, so the guard of a term won elsewhere
    /// never holds.
    ///
    /// ```no_run
    /// # async fn demo(backend: leasehold_postgres::PostgresBackend, leadership: leasehold_core::Leadership) -> Result<(), Box<dyn std::error::Error>> {
    /// use leasehold_postgres::tokio_postgres::types::{ToSql, Type};
    /// let guard = backend.leader_guard(&leadership);
    /// let sql = format!(
    ///     "UPDATE app_config SET value = $1 WHERE key = $2 AND {}",
    ///     guard.condition(2)
    /// );
    /// let (value, key) = ("v2", "mode");
    /// let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![(&value, Type::TEXT), (&key, Type::TEXT)];
    /// params.extend(guard.typed_params());
    /// let client = backend.client().await?;
    /// if client.execute_typed(&sql, &params).await? == 0 {
    ///     // The term is over (or there is no such key): nothing was written.
    /// }
    /// # Ok(()) }
    /// ```
    pub fn leader_guard(&self, leadership: &leasehold_core::Leadership) -> LeaderGuard {
        self.table.leader_guard(&term(&leadership.claim()))
    }

    /// The backend's own connection, for the application's single
    /// statements (one connection to the database for the elections and
    /// the data). Connects when there is none yet; a broken connection is
    /// replaced, so take it again for each use rather than keeping it.
    ///
    /// tokio-postgres pipelines the statements of every user of a
    /// connection, the backend's renewals included. **Never open a
    /// transaction on it** (`BEGIN` through `batch_execute` or `query`):
    /// the backend's own statements would run inside it. For a guarded
    /// transaction ([`LeaderGuard::hold`]) use a connection of your own,
    /// made from the same settings ([`PostgresBuilder::config`]). Through
    /// PgBouncer in transaction mode, send unnamed statements
    /// (`query_typed`, `execute_typed`): a named prepared statement does
    /// not survive the pooler moving the connection (PgBouncer before
    /// 1.21). The LISTEN connection is a separate one and never handed out.
    ///
    /// # Errors
    /// As the backend's statements: [`Error::Unavailable`](leasehold_core::Error::Unavailable)
    /// or [`Error::Timeout`](leasehold_core::Error::Timeout) when the server
    /// cannot be reached, [`Error::PermissionDenied`](leasehold_core::Error::PermissionDenied)
    /// for refused credentials.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn client(&self) -> Result<std::sync::Arc<tokio_postgres::Client>> {
        self.table.db().shared_client().await
    }
}

impl PostgresBuilder {
    /// Check the settings and make the backend (connects lazily: the first
    /// statement connects, and creates the table when it is missing).
    ///
    /// # Errors
    /// As [`build_table`](Self::build_table).
    pub fn build(self) -> Result<PostgresBackend> {
        Ok(PostgresBackend::new(self.build_table()?))
    }
}

fn info(h: Holder) -> LeaderInfo {
    LeaderInfo {
        id: h.id,
        value: h.value,
        token: FencingToken(h.token),
    }
}

fn term(claim: &Claim) -> Term {
    Term {
        election: claim.election.clone(),
        owner: claim.owner.clone(),
        token: claim.token.get(),
        version: claim.version,
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    fn name(&self) -> &'static str {
        crate::error::NAME
    }

    fn family(&self) -> Family<'_> {
        Family::Record(self)
    }

    async fn leader(&self, election: &str) -> Result<Option<LeaderInfo>> {
        Ok(self.table.leader(election).await?.map(info))
    }

    fn leader_watch(&self) -> Option<&dyn WatchLeader> {
        if self.table.listens() {
            Some(self)
        } else {
            None
        }
    }
}

#[async_trait]
impl RecordStore for PostgresBackend {
    fn expiry(&self) -> Expiry {
        Expiry::Store
    }

    async fn try_acquire(&self, req: &AcquireRequest) -> Result<RecordOutcome> {
        let answer = self
            .table
            .acquire(&req.election, &req.candidate, &req.value, req.ttl)
            .await?;
        Ok(match answer {
            Acquired::Won(t) => RecordOutcome::Acquired(Claim {
                key: format!("{}/{}", self.table.table_name(), t.election),
                election: t.election,
                session: 0,
                owner: t.owner,
                token: FencingToken(t.token),
                version: t.version,
            }),
            Acquired::Held { holder, version } => RecordOutcome::Held {
                leader: holder.map(info),
                revision: version,
            },
        })
    }

    async fn renew(&self, claim: &Claim) -> Result<Claim> {
        let renewed = self.table.renew(&term(claim)).await?;
        Ok(Claim {
            version: renewed.version,
            ..claim.clone()
        })
    }

    async fn release(&self, claim: &Claim) -> Result<()> {
        self.table.release(&term(claim)).await
    }
}

/// A [`Watch`] as the engine's [`LeaderWatch`].
struct Stream(Watch);

#[async_trait]
impl LeaderWatch for Stream {
    async fn next(&mut self) -> Result<Option<LeaderInfo>> {
        Ok(self.0.next().await?.map(info))
    }
}

#[async_trait]
impl WatchLeader for PostgresBackend {
    async fn watch(&self, election: &str) -> Result<Box<dyn LeaderWatch>> {
        Ok(Box::new(Stream(self.table.watch(election)?)))
    }
}

/// The backend for the facade's driver.
pub(crate) fn dyn_backend(table: LeaseTable) -> Result<DynBackend> {
    Ok(std::sync::Arc::new(PostgresBackend::new(table)))
}
