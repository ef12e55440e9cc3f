//! One shared connection, made again when it breaks.
//!
//! tokio-postgres pipelines concurrent statements on one connection, so one
//! connection serves every elector of a backend; through PgBouncer it is one
//! client connection, whose statements PgBouncer spreads over its pool. Only
//! unnamed statements are sent (`query_typed`: Parse, Bind, Execute and Sync
//! in one go) and nothing is ever set on the session, so a pooler in
//! transaction mode loses nothing between statements.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold_core::{Error, Result};
use tokio::task::AbortHandle;
use tokio_postgres::config::{SslMode as PgSslMode, TargetSessionAttrs};
use tokio_postgres::{Client, Config, Connection, Socket};

use crate::config::PostgresBuilder;
use crate::error::{NAME, breaks_connection, map};
use crate::tls::{MakeRustls, RustlsStream, SslMode, client_config};

/// A live connection: its client, the task that drives it, and a number
/// that tells it from the ones before.
struct Live {
    client: Arc<Client>,
    task: AbortHandle,
    id: u64,
}

/// Connecting, and the connection statements share.
pub(crate) struct Db {
    config: Config,
    tls: MakeRustls,
    request_timeout: Duration,
    live: Mutex<Option<Live>>,
    connecting: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-postgres's Config redacts the password in its Debug.
        f.debug_struct("Db")
            .field("hosts", &self.config.get_hosts())
            .field("ports", &self.config.get_ports())
            .field("user", &self.config.get_user())
            .field("dbname", &self.config.get_dbname())
            .field("ssl_mode", &self.config.get_ssl_mode())
            .finish_non_exhaustive()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(live) = self.live.lock().unwrap_or_else(|e| e.into_inner()).take() {
            live.task.abort();
        }
    }
}

impl Db {
    pub(crate) fn new(b: &PostgresBuilder) -> Result<Db> {
        let mut ssl_mode = b.ssl_mode;
        let config = if let Some(own) = &b.pg_config {
            let mut config = own.clone();
            if !b.ssl_mode_set {
                ssl_mode = match own.get_ssl_mode() {
                    PgSslMode::Disable => SslMode::Disable,
                    PgSslMode::Prefer => SslMode::Prefer,
                    _ => SslMode::Require,
                };
            }
            if own.get_hosts().len() > 1 {
                config.target_session_attrs(TargetSessionAttrs::ReadWrite);
            }
            if own.get_connect_timeout().is_none() {
                config.connect_timeout(b.connect_timeout);
            }
            config
        } else {
            let mut config = Config::new();
            if b.hosts.is_empty() {
                config.host("localhost").port(5432);
            }
            for (host, port) in &b.hosts {
                config.host(host).port(*port);
            }
            if b.hosts.len() > 1 {
                // Several servers: the one that takes writes (the primary).
                config.target_session_attrs(TargetSessionAttrs::ReadWrite);
            }
            if let Some(u) = &b.user {
                config.user(u);
            } else if let Ok(u) = std::env::var("USER") {
                config.user(u);
            }
            if let Some(p) = &b.password {
                config.password(p.as_bytes());
            }
            if let Some(d) = &b.dbname {
                config.dbname(d);
            }
            config
                .application_name("leasehold")
                .connect_timeout(b.connect_timeout)
                .keepalives(true)
                .keepalives_idle(Duration::from_secs(10));
            config
        };
        let mut config = config;
        let tls_config = if ssl_mode == SslMode::Disable {
            // Never used (the server is not asked for TLS), but the
            // connection's type wants a connector.
            client_config(SslMode::Require, None, None)?
        } else {
            client_config(
                ssl_mode,
                b.ssl_root_cert.as_deref(),
                b.ssl_cert.as_deref().zip(b.ssl_key.as_deref()),
            )?
        };
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            _ => PgSslMode::Require,
        });
        Ok(Db {
            config,
            tls: MakeRustls::new(tls_config),
            request_timeout: b.request_timeout,
            live: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
        })
    }

    /// The bound of one statement.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// A new connection of its own (the listener's), and its driver.
    pub(crate) async fn connect_raw(
        &self,
    ) -> Result<(Client, Connection<Socket, RustlsStream<Socket>>)> {
        self.config
            .connect(self.tls.clone())
            .await
            .map_err(|e| map("connect", e))
    }

    fn current(&self) -> Option<(Arc<Client>, u64)> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.as_ref()
            .filter(|l| !l.client.is_closed())
            .map(|l| (l.client.clone(), l.id))
    }

    async fn client(&self) -> Result<(Arc<Client>, u64)> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let (client, connection) = self.connect_raw().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(target: "leasehold_postgres", "connection {id} ended: {e}");
            }
        })
        .abort_handle();
        let client = Arc::new(client);
        let old = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(Live {
                client: client.clone(),
                task,
                id,
            });
        if let Some(old) = old {
            old.task.abort();
        }
        Ok((client, id))
    }

    /// The shared connection, connecting when there is none, within the
    /// request timeout (for the application's own statements).
    pub(crate) async fn shared_client(&self) -> Result<Arc<Client>> {
        match tokio::time::timeout(self.request_timeout, self.client()).await {
            Ok(c) => c.map(|(client, _)| client),
            Err(_) => Err(Error::Timeout {
                operation: "connect",
                after: self.request_timeout,
            }),
        }
    }

    /// Drop connection `id` if it is still the current one.
    fn discard(&self, id: u64) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.as_ref().is_some_and(|l| l.id == id)
            && let Some(l) = live.take()
        {
            l.task.abort();
        }
    }

    /// Run one statement (`f` gets the client), connecting first if need
    /// be, within the request timeout. A statement that runs out of time, or
    /// whose connection broke, drops the connection: the next one connects
    /// afresh.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves the statement to finish (or not)
    /// on the server, and the connection in use.
    pub(crate) async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    {
        let used = AtomicU64::new(0);
        let attempt = async {
            let (client, id) = self.client().await?;
            used.store(id, Ordering::Relaxed);
            f(client).await.map_err(|e| {
                if breaks_connection(&e) {
                    self.discard(id);
                }
                map(op, e)
            })
        };
        match tokio::time::timeout(self.request_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                let id = used.load(Ordering::Relaxed);
                if id != 0 {
                    self.discard(id);
                }
                Err(Error::Timeout {
                    operation: op,
                    after: self.request_timeout,
                })
            }
        }
    }
}

/// `Unavailable` with `message`.
pub(crate) fn unavailable(message: impl Into<String>) -> Error {
    Error::unavailable(NAME, message)
}
