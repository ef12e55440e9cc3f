//! Connection settings of the etcd backend.

use std::fmt;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use leasehold_core::{Error, Result};

use crate::EtcdBackend;
use crate::error::map;
use crate::layout::{Keys, Layout};

/// The key prefix used when none is set.
pub const DEFAULT_PREFIX: &str = "/leasehold";

/// Settings for connecting an [`EtcdBackend`]; from [`EtcdBackend::builder`].
///
/// ```no_run
/// # async fn demo() -> leasehold_core::Result<()> {
/// use std::time::Duration;
/// let backend = leasehold_etcd::EtcdBackend::builder()
///     .endpoints(["http://10.0.0.1:2379", "http://10.0.0.2:2379"])
///     .prefix("/myapp/leasehold")
///     .request_timeout(Duration::from_secs(3))
///     .auth("app", "secret")
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdBuilder {
    endpoints: Vec<String>,
    layout: Layout,
    prefix: Option<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    keep_alive: Option<(Duration, Duration)>,
    user: Option<(String, String)>,
    tls_ca: Option<Vec<u8>>,
    tls_identity: Option<(Vec<u8>, Vec<u8>)>,
    tls_domain: Option<String>,
    /// A client of the application's own, used instead of connecting.
    client: Option<Client>,
}

impl fmt::Debug for EtcdBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdBuilder")
            .field("endpoints", &self.endpoints)
            .field("layout", &self.layout)
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .field("password", &self.user.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.tls_ca.as_ref().map(|pem| pem.len()))
            .field(
                "tls_identity",
                &self.tls_identity.as_ref().map(|_| "<redacted>"),
            )
            .field("tls_domain", &self.tls_domain)
            .field(
                "client",
                &self.client.as_ref().map(|_| "<the application's>"),
            )
            .finish()
    }
}

impl Default for EtcdBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl EtcdBuilder {
    /// Defaults: no endpoint yet, leasehold's own [`Layout`] under the
    /// prefix [`DEFAULT_PREFIX`], connect and
    /// request timeouts of 5 s, HTTP/2 keep-alive pings every 5 s (a
    /// connection that does not answer one within 5 s is dropped and
    /// redialled), no auth, no TLS.
    pub fn new() -> Self {
        EtcdBuilder {
            endpoints: Vec::new(),
            layout: Layout::Leasehold,
            prefix: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            keep_alive: Some((Duration::from_secs(5), Duration::from_secs(5))),
            user: None,
            tls_ca: None,
            tls_identity: None,
            tls_domain: None,
            client: None,
        }
    }

    /// Use the application's own etcd client instead of connecting: a
    /// service keeps one connection to etcd, and its transactions can carry
    /// [`leader_guard`](crate::leader_guard). The client's own connection
    /// settings apply, so endpoints, auth, TLS and the connect timeout must
    /// not be set beside it. For the leaders' deadlines to hold, the client
    /// should be connected with `ConnectOptions::with_require_leader(true)`
    /// (as the backend's own is): then a member cut off from its quorum
    /// fails requests instead of answering them.
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The cluster's client URLs (`http://host:2379`, `https://...` with TLS).
    /// Requests are balanced over the endpoints that answer.
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// The key prefix (namespace) under which every election lives.
    ///
    /// In the leasehold layout (default [`DEFAULT_PREFIX`]) trailing `/` are
    /// dropped and a `/` separates it from the escaped election name. In the
    /// [Go layout](Layout::Go) (default empty) it is put verbatim before the
    /// election name: Go's `NewElection(session, "/services/billing")` is
    /// prefix `/services/` and election `billing`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// How keys and values are laid out (default [`Layout::Leasehold`]).
    /// [`Layout::Go`] shares elections with etcd's Go
    /// `concurrency.Election` and `etcdctl elect`: keys
    /// `<prefix><election>/<lease in hex>` holding the raw leader value.
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Bound on opening a connection to one endpoint.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on each request to etcd (the engine bounds its calls too, by
    /// the election's `request_timeout`).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// HTTP/2 keep-alive: ping every `interval`, drop the connection when a
    /// ping is not answered within `timeout`. `None` turns pings off.
    pub fn keep_alive(mut self, ping: Option<(Duration, Duration)>) -> Self {
        self.keep_alive = ping;
        self
    }

    /// Authenticate as `user` (etcd's built-in auth). The password is never
    /// printed by `Debug`.
    pub fn auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((user.into(), password.into()));
        self
    }

    /// Verify the server with this CA certificate (PEM). Endpoints must be `https://`.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca = Some(pem.into());
        self
    }

    /// Present this client certificate and private key (PEM) to the server.
    pub fn tls_client_identity_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls_identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The name to verify the server certificate against, when it is not the
    /// endpoint's host.
    pub fn tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.tls_domain = Some(domain.into());
        self
    }

    fn uses_tls(&self) -> bool {
        self.tls_ca.is_some() || self.tls_identity.is_some() || self.tls_domain.is_some()
    }

    fn check(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(Error::Config(
                "no etcd endpoint given; call .endpoints([\"http://127.0.0.1:2379\"])".into(),
            ));
        }
        if let Some(bad) = self.endpoints.iter().find(|e| e.trim().is_empty()) {
            return Err(Error::Config(format!("etcd endpoint {bad:?} is empty")));
        }
        if self.uses_tls()
            && let Some(plain) = self.endpoints.iter().find(|e| e.starts_with("http://"))
        {
            return Err(Error::Config(format!(
                "TLS is configured but endpoint {plain:?} is plain http; use https://"
            )));
        }
        if let Some(prefix) = &self.prefix
            && prefix.chars().any(char::is_control)
        {
            return Err(Error::Config(format!(
                "key prefix {prefix:?} contains a control character"
            )));
        }
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::Config(format!("{name} must be above zero")));
            }
        }
        Ok(())
    }

    /// Builds the backend. Without auth, no request is made yet (the
    /// connection is opened by the first call, and an unreachable store shows
    /// up there as [`Error::Unavailable`]); with auth, the credentials are
    /// checked now.
    ///
    /// # Errors
    /// [`Error::Config`] for bad settings (no endpoint, a malformed URL, TLS
    /// with an `http://` endpoint); with auth, [`Error::PermissionDenied`]
    /// for refused credentials and [`Error::Unavailable`] or
    /// [`Error::Timeout`] when no endpoint answers in the connect timeout.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is left behind.
    pub async fn build(self) -> Result<EtcdBackend> {
        if let Some(client) = self.client.clone() {
            if !self.endpoints.is_empty() || self.user.is_some() || self.uses_tls() {
                return Err(Error::Config(
                    "an etcd client was given (.client(..)) beside endpoints, auth or TLS settings; the client's own connection settings apply: set one or the other".into(),
                ));
            }
            if self.request_timeout.is_zero() {
                return Err(Error::Config("request_timeout must be above zero".into()));
            }
            return Ok(EtcdBackend::from_parts(
                client,
                Keys::new(self.layout, self.prefix.as_deref()),
                self.request_timeout,
                Vec::new(),
            ));
        }
        self.check()?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_require_leader(true);
        if let Some((interval, timeout)) = self.keep_alive {
            options = options.with_keep_alive(interval, timeout);
        }
        if let Some((user, password)) = &self.user {
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if self.uses_tls() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.tls_ca {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &self.tls_identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(domain) = &self.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            options = options.with_tls(tls);
        }
        let client = match tokio::time::timeout(
            self.connect_timeout,
            Client::connect(&self.endpoints, Some(options)),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(map("connect", e)),
            Err(_) => {
                return Err(Error::Timeout {
                    operation: "connect",
                    after: self.connect_timeout,
                });
            }
        };
        Ok(EtcdBackend::from_parts(
            client,
            Keys::new(self.layout, self.prefix.as_deref()),
            self.request_timeout,
            self.endpoints,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let b = EtcdBuilder::new()
            .endpoints(["http://127.0.0.1:2379"])
            .auth("alice", "hunter2")
            .tls_client_identity_pem("CERT", "PRIVATE KEY");
        let text = format!("{b:?}");
        assert!(text.contains("alice"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }

    #[test]
    fn bad_settings_are_refused_before_connecting() {
        let err = EtcdBuilder::new().check().unwrap_err();
        assert!(err.to_string().contains("no etcd endpoint"), "{err}");
        let err = EtcdBuilder::new()
            .endpoints(["http://127.0.0.1:2379"])
            .tls_ca_pem("CA")
            .check()
            .unwrap_err();
        assert!(err.to_string().contains("use https://"), "{err}");
        let err = EtcdBuilder::new()
            .endpoints(["http://127.0.0.1:2379"])
            .request_timeout(Duration::ZERO)
            .check()
            .unwrap_err();
        assert!(err.to_string().contains("request_timeout"), "{err}");
    }

    #[tokio::test]
    async fn a_malformed_endpoint_is_a_config_error() {
        let err = EtcdBuilder::new()
            .endpoints(["http://[::1"])
            .build()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
    }
}
