//! The MySQL/MariaDB backend of leasehold: one lease row per election,
//! changed only by conditional statements and judged by the database's own
//! clock; fencing tokens from an `AUTO_INCREMENT` counter that survives the
//! row's deletion. See `docs/mysql.md` for the design.

mod backend;
mod builder;
mod driver;
mod error;
pub mod table;

use std::sync::Arc;

pub use builder::{MysqlBackendBuilder, TlsMode};
pub use driver::{DRIVER, MysqlDriver};
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
}
