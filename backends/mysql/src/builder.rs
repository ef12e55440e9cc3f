//! [`MysqlBackendBuilder`]: server, credentials, TLS, table names.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::driver::Secret;
use leasehold_core::{Error, Result};
use mysql_async::{ClientIdentity, OptsBuilder, Pool, PoolConstraints, PoolOpts, SslOpts};

use crate::MysqlBackend;
use crate::table::{Ident, LeaseTable, Names};

/// How the connection uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TlsMode {
    /// Plain TCP.
    #[default]
    Off,
    /// TLS, without checking the server's certificate (encryption against a
    /// passive listener only; prefer `VerifyFull`).
    Required,
    /// TLS; the server's certificate must chain to a trusted CA (the `ca`
    /// file, else the built-in web roots), whatever name it carries.
    VerifyCa,
    /// TLS; the certificate must chain to a trusted CA and name the host
    /// connected to.
    VerifyFull,
}

impl std::str::FromStr for TlsMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<TlsMode> {
        match s {
            "off" | "disabled" | "false" => Ok(TlsMode::Off),
            "required" => Ok(TlsMode::Required),
            "verify-ca" => Ok(TlsMode::VerifyCa),
            "verify-full" | "true" => Ok(TlsMode::VerifyFull),
            other => Err(Error::Config(format!(
                "mysql `tls`: {other:?} is not a TLS mode; write off, required, verify-ca or verify-full"
            ))),
        }
    }
}

/// Builds a [`MysqlBackend`]: where the server is, who connects, where the
/// tables are.
///
/// `Debug` never shows the password.
#[derive(Debug, Clone)]
pub struct MysqlBackendBuilder {
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<Secret>,
    database: Option<String>,
    table: Option<String>,
    tokens_table: Option<String>,
    tls: Option<TlsMode>,
    ca: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    connect_timeout: Duration,
    request_timeout: Duration,
    max_connections: usize,
    /// The application's own pool, instead of connecting.
    pool: Option<Pool>,
    /// Connection settings given (refused beside an own pool).
    set: Vec<&'static str>,
}

impl Default for MysqlBackendBuilder {
    fn default() -> Self {
        MysqlBackendBuilder {
            host: "127.0.0.1".into(),
            port: 3306,
            user: None,
            password: None,
            database: None,
            table: None,
            tokens_table: None,
            tls: None,
            ca: None,
            identity: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            max_connections: 10,
            pool: None,
            set: Vec::new(),
        }
    }
}

impl MysqlBackendBuilder {
    /// A builder for `127.0.0.1:3306`, no user, no database yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The server's host name or IP address.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.set.push("host");
        self.host = host.into();
        self
    }

    /// The server's port (3306 unless set).
    pub fn port(mut self, port: u16) -> Self {
        self.set.push("port");
        self.port = port;
        self
    }

    /// The user name and password.
    pub fn auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.set.push("auth");
        self.user = Some(user.into());
        self.password = Some(Secret::new(password));
        self
    }

    /// The user name, without a password.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.set.push("user");
        self.user = Some(user.into());
        self
    }

    /// The database (schema) holding the tables; required.
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// The lease table's name (`leasehold_leases` unless set).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }

    /// The token table's name (`leasehold_tokens` unless set).
    pub fn tokens_table(mut self, table: impl Into<String>) -> Self {
        self.tokens_table = Some(table.into());
        self
    }

    /// How to use TLS (off unless set; `VerifyFull` when a CA is given and
    /// no mode is).
    pub fn tls(mut self, mode: TlsMode) -> Self {
        self.set.push("tls");
        self.tls = Some(mode);
        self
    }

    /// A PEM file of CA certificates to trust (instead of the built-in web
    /// roots).
    pub fn tls_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.set.push("tls_ca");
        self.ca = Some(path.into());
        self
    }

    /// A client certificate chain and its private key, PEM files.
    pub fn tls_client_identity(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.set.push("tls_client_identity");
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// How long the first connection may take (5 s unless set).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one call may take (5 s unless set): the engine's request
    /// timeout when the facade builds it.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The most connections the pool opens (10 unless set).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.set.push("max_connections");
        self.max_connections = n.max(1);
        self
    }

    /// Use the application's own connection pool instead of connecting:
    /// a service keeps one pool to its database, and its transactions can
    /// carry a [`LeaderGuard`](crate::LeaderGuard). The pool's own options
    /// apply (server, credentials, TLS, size), so `host`, `port`, `auth`,
    /// `user`, the TLS settings and `max_connections` must not be set beside
    /// it; `database` still names where leasehold's tables are (the
    /// statements name it, whatever the pool's default database).
    /// [`MysqlBackend::pool`](crate::MysqlBackend::pool) hands it out again.
    ///
    /// Each call takes a connection of the pool for its statement, so size
    /// the pool for the application plus one per batch of renewals in
    /// flight (at most 4) and one per waiting candidate's poll.
    pub fn pool(mut self, pool: Pool) -> Self {
        self.pool = Some(pool);
        self
    }

    fn names(&self) -> Result<Names> {
        let database = self.database.as_deref().ok_or_else(|| {
            Error::Config(
                "mysql: name the database that holds leasehold's tables (mysql://HOST/DATABASE/ELECTION, or `database` in the config)"
                    .into(),
            )
        })?;
        let mut names = Names::new(Ident::new("database", database)?);
        if let Some(t) = &self.table {
            names.leases = Ident::new("table", t)?;
        }
        if let Some(t) = &self.tokens_table {
            names.tokens = Ident::new("tokens_table", t)?;
        }
        if names.leases == names.tokens {
            return Err(Error::Config(
                "mysql: `table` and `tokens_table` must be two different tables".into(),
            ));
        }
        Ok(names)
    }

    fn ssl_opts(&self) -> Result<Option<SslOpts>> {
        let mode = self
            .tls
            .unwrap_or(if self.ca.is_some() || self.identity.is_some() {
                TlsMode::VerifyFull
            } else {
                TlsMode::Off
            });
        if mode == TlsMode::Off {
            if self.ca.is_some() || self.identity.is_some() {
                return Err(Error::Config(
                    "mysql: `ca`, `cert` and `key` need TLS; drop `tls = off`".into(),
                ));
            }
            return Ok(None);
        }
        for path in self
            .ca
            .iter()
            .chain(self.identity.iter().flat_map(|(c, k)| [c, k]))
        {
            if !path.is_file() {
                return Err(Error::Config(format!(
                    "mysql TLS: cannot read {}: no such file",
                    path.display()
                )));
            }
        }
        // mysql_async builds its rustls config from the process's default
        // provider; when none is installed (or two are compiled in and none
        // chosen) that would panic, so install ring's. A provider someone
        // else installed first is kept.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut ssl = SslOpts::default();
        if let Some(ca) = &self.ca {
            ssl = ssl
                .with_root_certs(vec![ca.clone().into()])
                .with_disable_built_in_roots(true);
        }
        if let Some((cert, key)) = &self.identity {
            ssl = ssl.with_client_identity(Some(ClientIdentity::new(
                cert.clone().into(),
                key.clone().into(),
            )));
        }
        ssl = match mode {
            TlsMode::Required => ssl.with_danger_accept_invalid_certs(true),
            TlsMode::VerifyCa => ssl.with_danger_skip_domain_validation(true),
            _ => ssl,
        };
        Ok(Some(ssl))
    }

    /// The connection pool and table handle, without touching the server.
    ///
    /// # Errors
    /// [`Error::Config`] for bad names or TLS files.
    pub fn build_table(&self) -> Result<LeaseTable> {
        let names = self.names()?;
        if let Some(pool) = &self.pool {
            if !self.set.is_empty() {
                let mut set = self.set.clone();
                set.sort_unstable();
                set.dedup();
                return Err(Error::Config(format!(
                    "mysql: {} set beside an own connection pool; the pool's own options apply, so set them where the pool is made",
                    set.join(", ")
                )));
            }
            return Ok(LeaseTable::new(pool.clone(), names, self.request_timeout));
        }
        if self.host.is_empty() {
            return Err(Error::Config("mysql: the host is empty".into()));
        }
        let opts = OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(self.user.clone())
            .pass(self.password.as_ref().map(|p| p.expose().to_owned()))
            .db_name(Some(names.database.as_str().to_owned()))
            // Affected rows = matched rows, so that a conditional UPDATE
            // tells "matched" from "not matched" whatever it changed.
            .client_found_rows(true)
            .tcp_nodelay(true)
            // Stay on the address given: no switch to the server's Unix
            // socket (a different account, `user@localhost`, there).
            .prefer_socket(false)
            .tcp_keepalive(Some(Duration::from_secs(10)))
            .ssl_opts(self.ssl_opts()?)
            .pool_opts(
                // No session state to reset (every statement stands alone):
                // keeping connections as they are saves a round trip per call
                // and keeps the prepared statements cached. Idle connections
                // are kept a minute (the default drops them at once), so that
                // a lone renewal or poll is one statement, not a connect, a
                // prepare and an execute.
                PoolOpts::default()
                    .with_reset_connection(false)
                    .with_inactive_connection_ttl(Duration::from_secs(60))
                    .with_constraints(
                        PoolConstraints::new(0, self.max_connections).unwrap_or_default(),
                    ),
            );
        Ok(LeaseTable::new(
            Pool::new(opts),
            names,
            self.request_timeout,
        ))
    }

    /// Connect, and make the tables if they are missing.
    ///
    /// # Errors
    /// [`Error::Config`] for bad names or TLS files;
    /// [`Error::PermissionDenied`] for refused credentials, or for missing
    /// tables the user may not create (with the statements to run);
    /// [`Error::Unavailable`] / [`Error::Timeout`] when the server cannot be
    /// reached within the connect timeout.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is left behind but a dropped connection.
    pub async fn build(self) -> Result<MysqlBackend> {
        let table = self.build_table()?;
        match tokio::time::timeout(self.connect_timeout, table.ensure_schema()).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::unavailable(
                    crate::error::BACKEND,
                    if self.pool.is_some() {
                        format!(
                            "no answer from the given pool's server within the connect timeout of {:?}",
                            self.connect_timeout
                        )
                    } else {
                        format!(
                            "no answer from {}:{} within the connect timeout of {:?}",
                            self.host, self.port, self.connect_timeout
                        )
                    },
                ));
            }
        }
        Ok(MysqlBackend::from_table(Arc::new(table)))
    }
}
