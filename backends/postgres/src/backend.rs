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
