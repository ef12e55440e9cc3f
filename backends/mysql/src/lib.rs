//! The MySQL/MariaDB backend of leasehold: one lease row per election,
//! changed only by conditional statements and judged by the database's own
//! clock; fencing tokens from an `AUTO_INCREMENT` counter that survives the
//! row's deletion. See `docs/mysql.md` for the design.

mod backend;
mod builder;
mod driver;
mod error;
mod guard;
pub mod table;

use std::sync::Arc;

pub use builder::{MysqlBackendBuilder, TlsMode};
pub use driver::{DRIVER, MysqlDriver};
pub use guard::LeaderGuard;
/// The MySQL client crate the backend is built on, for the application's
/// own statements ([`MysqlBackend::pool`], [`MysqlBackendBuilder::pool`],
/// [`LeaderGuard`]).
pub use mysql_async;
pub use table::LeaseTable;

/// Leader election over MySQL or MariaDB. Build one with
/// [`MysqlBackend::builder`]; clones share one connection pool.
#[derive(Debug, Clone)]
pub struct MysqlBackend {
    table: Arc<LeaseTable>,
}

impl MysqlBackend {
    /// A builder: server, credentials, TLS, database and table names.
    pub fn builder() -> MysqlBackendBuilder {
        MysqlBackendBuilder::new()
    }

    pub(crate) fn from_table(table: Arc<LeaseTable>) -> Self {
        MysqlBackend { table }
    }

    /// The lease table this backend works on (its statements, for tests and
    /// repairs by hand).
    pub fn table(&self) -> &LeaseTable {
        &self.table
    }

    /// The backend's connection pool, for the application's own statements
    /// and transactions (one pool to the database for the elections and
    /// the data). Each connection taken from it is the taker's alone until
    /// it goes back, so a transaction on it never mixes with the backend's
    /// statements.
    pub fn pool(&self) -> &mysql_async::Pool {
        self.table.pool()
    }

    /// The condition that holds exactly while `leadership`'s term lasts,
    /// for the application's own statements on this server: fencing
    /// without a cooperating resource, since the guard and the write are
    /// one statement or one transaction. See [`LeaderGuard`] for the two
    /// ways to use it.
    ///
    /// Take it from the backend the term was won on: the guard names this
    /// backend's lease table, and the term's owner identity (random per
    /// term) appears in no other table, so the guard of a term won
    /// elsewhere never holds.
    ///
    /// ```no_run
    /// # async fn demo(backend: leasehold_mysql::MysqlBackend, leadership: leasehold_core::Leadership) -> Result<(), Box<dyn std::error::Error>> {
    /// use leasehold_mysql::mysql_async::{TxOpts, prelude::Queryable};
    /// let guard = backend.leader_guard(&leadership);
    /// let mut tx = backend.pool().start_transaction(TxOpts::default()).await?;
    /// guard.hold(&mut tx).await?; // Err(Lost) once the term is over
    /// tx.exec_drop("UPDATE `app_config` SET `value` = ? WHERE `key` = ?", ("v2", "mode")).await?;
    /// tx.commit().await?; // lands before any next term starts
    /// # Ok(()) }
    /// ```
    pub fn leader_guard(&self, leadership: &leasehold_core::Leadership) -> LeaderGuard {
        let claim = leadership.claim();
        self.table.leader_guard(&table::Term {
            election: claim.election,
            owner: claim.owner,
            token: claim.token.get(),
            version: 0,
        })
    }
}
