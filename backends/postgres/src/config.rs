//! Connection settings, table names, and the builder of [`LeaseTable`]s.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use leasehold_core::{Error, Result};

use crate::conn::Db;
use crate::table::LeaseTable;
use crate::tls::SslMode;

/// How long a renewal waits for others to share its statement, by default.
pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(25);

/// The default table name.
pub const DEFAULT_TABLE: &str = "leasehold_leases";

/// PostgreSQL's limit on identifier length, in bytes.
const MAX_IDENTIFIER: usize = 63;

/// The sequence's name is the table's with this suffix.
const SEQUENCE_SUFFIX: &str = "_token_seq";

/// A table or schema name: letters, digits, `_` and `$`, not starting with a
/// digit or `$`, at most 63 bytes. Always used double-quoted, so its case is
/// kept (`Locks` and `locks` are two tables).
fn check_identifier(what: &str, name: &str, max: usize) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if !first_ok || !rest_ok {
        return Err(Error::Config(format!(
            "postgres `{what}` {name:?}: use letters, digits, `_` and `$`, starting with a letter or `_`"
        )));
    }
    if name.len() > max {
        return Err(Error::Config(format!(
            "postgres `{what}` {name:?} is {} bytes; at most {max} fit (PostgreSQL's identifiers are at most 63 bytes{})",
            name.len(),
            if what == "table" {
                ", and the sequence adds \"_token_seq\""
            } else {
                ""
            }
        )));
    }
    Ok(())
}

/// The names the backend's statements use, quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    /// `"schema"."table"` or `"table"`.
    pub(crate) table: String,
    /// `"schema"."table_token_seq"` or `"table_token_seq"`.
    pub(crate) sequence: String,
    /// The NOTIFY channel (an identifier of at most 63 bytes).
    pub(crate) channel: String,
    /// The table's name for `to_regclass` (quoted like the others).
    pub(crate) display: String,
}

impl Names {
    pub(crate) fn new(schema: Option<&str>, table: &str) -> Result<Names> {
        if let Some(s) = schema {
            check_identifier("schema", s, MAX_IDENTIFIER)?;
        }
        check_identifier("table", table, MAX_IDENTIFIER - SEQUENCE_SUFFIX.len())?;
        let prefix = schema.map(|s| format!("\"{s}\".")).unwrap_or_default();
        let table_q = format!("{prefix}\"{table}\"");
        let sequence = format!("{prefix}\"{table}{SEQUENCE_SUFFIX}\"");
        let mut channel = match schema {
            Some(s) => format!("leasehold.{s}.{table}"),
            None => format!("leasehold.{table}"),
        };
        channel.truncate(MAX_IDENTIFIER);
        Ok(Names {
            display: table_q.clone(),
            table: table_q,
            sequence,
            channel,
        })
    }
}

/// A builder of [`PostgresBackend`](crate::PostgresBackend)s (`build`) and
/// of bare [`LeaseTable`]s (`build_table`): where the database is, how to
/// log in, and which table to keep leases in.
///
/// ```no_run
/// # async fn f() -> leasehold_core::Result<()> {
/// let table = leasehold_postgres::PostgresBuilder::new()
///     .host("127.0.0.1", 5432)
///     .user("app")
///     .password("secret")
///     .dbname("app")
///     .schema("locks")
///     .build_table()?;
/// table.ensure_schema().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct PostgresBuilder {
    pub(crate) hosts: Vec<(String, u16)>,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) dbname: Option<String>,
    pub(crate) schema: Option<String>,
    pub(crate) table: String,
    pub(crate) ssl_mode: SslMode,
    pub(crate) ssl_root_cert: Option<PathBuf>,
    pub(crate) ssl_cert: Option<PathBuf>,
    pub(crate) ssl_key: Option<PathBuf>,
    pub(crate) listen: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) create_table: bool,
    pub(crate) batch_window: Duration,
    /// The application's own connection settings, instead of hosts, user,
    /// password and database.
    pub(crate) pg_config: Option<tokio_postgres::Config>,
    /// Whether `ssl_mode` was set (else a `pg_config`'s own mode applies).
    pub(crate) ssl_mode_set: bool,
}

impl fmt::Debug for PostgresBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBuilder")
            .field("hosts", &self.hosts)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("dbname", &self.dbname)
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("listen", &self.listen)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("create_table", &self.create_table)
            .field("batch_window", &self.batch_window)
            // tokio-postgres's Config redacts the password in its Debug.
            .field("config", &self.pg_config)
            .finish_non_exhaustive()
    }
}

impl Default for PostgresBuilder {
    fn default() -> Self {
        PostgresBuilder {
            hosts: Vec::new(),
            user: None,
            password: None,
            dbname: None,
            schema: None,
            table: DEFAULT_TABLE.to_owned(),
            ssl_mode: SslMode::Prefer,
            ssl_root_cert: None,
            ssl_cert: None,
            ssl_key: None,
            listen: true,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            create_table: true,
            batch_window: DEFAULT_BATCH_WINDOW,
            pg_config: None,
            ssl_mode_set: false,
        }
    }
}

impl PostgresBuilder {
    /// The defaults: table `leasehold_leases` in the connection's current
    /// schema, `sslmode=prefer`, LISTEN/NOTIFY on, 5 s connect and request
    /// timeouts, the table created when missing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a server (several: tried in order, the first that accepts writes
    /// is used). Default: `localhost:5432`.
    pub fn host(mut self, host: impl Into<String>, port: u16) -> Self {
        self.hosts.push((host.into(), port));
        self
    }

    /// The user name (default: the operating system user, as libpq).
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The password (never shown by `Debug`).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The database (default: the user name).
    pub fn dbname(mut self, dbname: impl Into<String>) -> Self {
        self.dbname = Some(dbname.into());
        self
    }

    /// The schema of the table and its sequence (default: the connection's
    /// current schema, usually `public`).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// The table (default `leasehold_leases`); its sequence is
    /// `<table>_token_seq`.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Connect with the application's own connection settings (the
    /// `tokio_postgres::Config` its own pool or client is made from), so a
    /// service states them once. Hosts, user, password and database then
    /// come from `config` and must not be set on the builder as well. TLS
    /// stays the builder's business (the certificates are its options):
    /// without [`ssl_mode`](Self::ssl_mode), the config's `sslmode`
    /// (`disable`, `prefer`, `require`) is used. The backend makes its own
    /// connections from it (one for statements, one for LISTEN); hand the
    /// statements' one to the application with
    /// [`PostgresBackend::client`](crate::PostgresBackend::client).
    ///
    /// ```no_run
    /// # fn demo() -> leasehold_core::Result<()> {
    /// let config: leasehold_postgres::tokio_postgres::Config =
    ///     "host=10.0.0.5 user=app dbname=app sslmode=require".parse().expect("a config");
    /// let backend = leasehold_postgres::PostgresBuilder::new().config(config).build()?;
    /// # let _ = backend; Ok(()) }
    /// ```
    pub fn config(mut self, config: tokio_postgres::Config) -> Self {
        self.pg_config = Some(config);
        self
    }

    /// TLS, as libpq's `sslmode` (default `prefer`).
    pub fn ssl_mode(mut self, mode: SslMode) -> Self {
        self.ssl_mode = mode;
        self.ssl_mode_set = true;
        self
    }

    /// The PEM file of the CA that signs the server's certificate
    /// (`sslrootcert`); without it `verify-ca` and `verify-full` trust the
    /// system's roots.
    pub fn ssl_root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.ssl_root_cert = Some(path.into());
        self
    }

    /// A client certificate and its key, PEM files (`sslcert`, `sslkey`).
    pub fn ssl_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.ssl_cert = Some(cert.into());
        self.ssl_key = Some(key.into());
        self
    }

    /// Whether waiters and observers wake on `LISTEN/NOTIFY` (default
    /// `true`). Turn it off behind PgBouncer in transaction mode (or any
    /// pooler that does not keep a session): notifications do not reach a
    /// pooled listener, and waiters then poll.
    pub fn listen(mut self, on: bool) -> Self {
        self.listen = on;
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// How long one statement may take, connecting included (default 5 s;
    /// the engine bounds its calls by its own deadlines as well). A
    /// statement that runs out of time drops its connection.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// Whether to create the table and sequence when they are missing
    /// (default `true`). Off: a missing table is an error that gives the DDL.
    pub fn create_table(mut self, on: bool) -> Self {
        self.create_table = on;
        self
    }

    /// How long a renewal waits for the renewals of other electors on this
    /// handle to join its statement (default 25 ms; zero: only renewals that
    /// arrive while another renewal statement runs share it). The wait
    /// delays the statement, not the leader's deadline, which the engine
    /// counts from when it asked for the renewal; keep it far below the
    /// ttl's safety margin. 1,000 locks renewed every second cost about
    /// 1,000 ms / window statements per second instead of 1,000.
    pub fn renew_batch_window(mut self, window: Duration) -> Self {
        self.batch_window = window;
        self
    }

    /// Check the settings and make the table handle. Connects lazily: the
    /// first statement connects (and creates the table when it is missing).
    ///
    /// # Errors
    /// [`Error::Config`] for a bad table or schema name, unreadable TLS
    /// files, a zero timeout.
    pub fn build_table(self) -> Result<LeaseTable> {
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(Error::Config(
                "postgres `connect_timeout` and `request_timeout` must be above zero".into(),
            ));
        }
        if self.ssl_cert.is_some() != self.ssl_key.is_some() {
            return Err(Error::Config(
                "postgres `sslcert` and `sslkey` go together: give both or neither".into(),
            ));
        }
        if self.pg_config.is_some() {
            let beside: Vec<&str> = [
                ("host", !self.hosts.is_empty()),
                ("user", self.user.is_some()),
                ("password", self.password.is_some()),
                ("dbname", self.dbname.is_some()),
            ]
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect();
            if !beside.is_empty() {
                return Err(Error::Config(format!(
                    "postgres: {} set beside an own connection config; put them in the config given to `config(..)` instead",
                    beside.join(", ")
                )));
            }
        }
        let names = Names::new(self.schema.as_deref(), &self.table)?;
        let db = Db::new(&self)?;
        if self.batch_window > Duration::from_secs(1) {
            return Err(Error::Config(format!(
                "postgres `renew_batch_window` {:?} is too long: it delays every renewal; use at most 1 s (default 25 ms)",
                self.batch_window
            )));
        }
        Ok(LeaseTable::new(
            db,
            names,
            self.listen,
            self.create_table,
            self.batch_window,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_quoted() {
        let n = Names::new(Some("Locks"), "leases").unwrap();
        assert_eq!(n.table, "\"Locks\".\"leases\"");
        assert_eq!(n.sequence, "\"Locks\".\"leases_token_seq\"");
        assert_eq!(n.channel, "leasehold.Locks.leases");
        let n = Names::new(None, "t").unwrap();
        assert_eq!(n.table, "\"t\"");
        for bad in ["", "1t", "a-b", "a\"b", "a b", "ä", "$x"] {
            let e = Names::new(None, bad).unwrap_err().to_string();
            assert!(e.contains("letters"), "{bad}: {e}");
            assert!(Names::new(Some(bad), "t").is_err(), "{bad}");
        }
        let long = "a".repeat(54);
        let e = Names::new(None, &long).unwrap_err().to_string();
        assert!(e.contains("at most 53"), "{e}");
        assert!(Names::new(None, &"a".repeat(53)).is_ok());
        let n = Names::new(Some(&"s".repeat(63)), &"a".repeat(53)).unwrap();
        assert_eq!(n.channel.len(), 63);
    }

    #[test]
    fn debug_never_shows_the_password() {
        let b = PostgresBuilder::new().password("hunter2");
        assert!(!format!("{b:?}").contains("hunter2"));
    }
}
