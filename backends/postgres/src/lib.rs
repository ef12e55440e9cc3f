//! # leasehold-postgres
//!
//! The PostgreSQL backend of leasehold: one row per election in a lease
//! table, changed only by single conditional statements that the database
//! judges on its own clock (`clock_timestamp()`), fencing tokens from a
//! sequence, waiters woken by `LISTEN/NOTIFY` on direct connections. Works
//! through PgBouncer in transaction mode (no session state; `listen=false`
//! there). See docs/postgres.md for the design.

mod backend;
mod config;
mod conn;
mod driver;
mod error;
mod guard;
mod listen;
mod table;
mod tls;

pub use backend::PostgresBackend;
pub use config::{DEFAULT_BATCH_WINDOW, DEFAULT_TABLE, PostgresBuilder};
pub use driver::{DRIVER, PostgresDriver};
pub use guard::LeaderGuard;
pub use listen::Watch;
pub use table::{Acquired, Holder, LeaseTable, Lookup, Statements, Term};
pub use tls::SslMode;
/// The PostgreSQL client crate the backend is built on, for the
/// application's own statements ([`PostgresBackend::client`],
/// [`PostgresBuilder::config`], [`LeaderGuard`]).
pub use tokio_postgres;
