//! The ZooKeeper store's registration with the `leasehold` facade: `zk://`
//! and `zookeeper://` URLs and `kind = "zookeeper"` config tables.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leasehold_core::driver::{
    DynBackend, Key, StoreParams, StoreUrl, Value, election_name, host_list, parse_duration,
};
use leasehold_core::{ElectionOptions, Error, Result};

use crate::ZkBackend;

/// The ZooKeeper [`Driver`](leasehold_core::driver::Driver).
#[derive(Debug, Clone, Copy, Default)]
pub struct ZkDriver;

/// How long a store built from a URL or a config waits to open its session
/// when no `connect_timeout` is given: an unreachable server fails in
/// seconds (as etcd's default), not after a whole session timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The [`ZkDriver`], for the facade's list of stores.
pub const DRIVER: ZkDriver = ZkDriver;

const KEYS: &[Key] = &[
    // `host:port` of each server (the URL's host list).
    Key::list("hosts").required(),
    // The chroot elections live under (the URL's path before the election).
    Key::text("chroot"),
    Key::text("session_timeout").url(),
    // Bound on opening the session (default CONNECT_TIMEOUT).
    Key::text("connect_timeout").url(),
    // `latch-` or `lock-` (docs/interop.md).
    Key::text("lock_name").url(),
    Key::text("user"),
    Key::secret("password"),
];

#[async_trait]
impl leasehold_core::driver::Driver for ZkDriver {
    fn name(&self) -> &'static str {
        "zookeeper"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["zk", "zookeeper"]
    }

    fn keys(&self) -> &'static [Key] {
        KEYS
    }

    fn crate_name(&self) -> &'static str {
        env!("CARGO_CRATE_NAME")
    }

    fn read_url(&self, url: &StoreUrl, params: &mut StoreParams) -> Result<Option<String>> {
        let hosts = host_list(&url.host, 2181, "zk://HOST:PORT/ELECTION")?;
        let (chroot, name) = match url.path.rsplit_once('/') {
            Some((c, n)) => (Some(format!("/{c}")), n),
            None => (None, url.path.as_str()),
        };
        if let Some(c) = &chroot
            && c.split('/').skip(1).any(str::is_empty)
        {
            return Err(Error::Config(format!(
                "chroot {c:?} has an empty path segment"
            )));
        }
        let election = election_name(name)?;
        if url.password.is_some() != url.user.is_some() {
            return Err(Error::Config(
                "digest authentication needs both user and password (user:password@host)".into(),
            ));
        }
        params.insert("hosts", Value::List(hosts));
        if let Some(c) = chroot {
            params.insert("chroot", Value::Text(c));
        }
        if let Some(user) = &url.user {
            params.insert("user", Value::Text(user.clone()));
        }
        if let Some(password) = &url.password {
            params.insert("password", Value::Secret(password.clone()));
        }
        Ok(election)
    }

    /// Given only a session timeout, the ttl is the session timeout: the
    /// session is the lease, and the ttl the failover bound
    /// (docs/zookeeper.md).
    fn default_ttl(&self, params: &StoreParams) -> Result<Option<Duration>> {
        params
            .text("session_timeout")
            .map(|s| parse_duration("session_timeout", s))
            .transpose()
    }

    async fn build(&self, params: &StoreParams, options: &ElectionOptions) -> Result<DynBackend> {
        let mut connect = params.list("hosts").unwrap_or_default().join(",");
        if let Some(c) = params.text("chroot") {
            connect.push_str(c);
        }
        // The session is the lease: unless given on its own, the ttl (see
        // docs/zookeeper.md).
        let session = match params.text("session_timeout") {
            Some(t) => parse_duration("session_timeout", t)?,
            None => ZkBackend::min_session_timeout(options),
        };
        let connect_timeout = match params.text("connect_timeout") {
            Some(t) => parse_duration("connect_timeout", t)?,
            None => CONNECT_TIMEOUT,
        };
        let mut b = ZkBackend::builder()
            .connect_string(connect)
            .session_timeout(session)
            .connect_timeout(connect_timeout)
            .request_timeout(options.request_timeout);
        if let Some(name) = params.text("lock_name") {
            b = b.lock_name(name.parse()?);
        }
        if let (Some(u), Some(p)) = (params.text("user"), params.secret("password")) {
            b = b.digest_auth(u, p.expose());
        }
        Ok(Arc::new(b.build().await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasehold_core::driver::Driver;

    #[test]
    fn urls_become_params_and_the_session_implies_the_ttl() {
        let url = StoreUrl::parse("zk://u:p@h1,h2:2182/apps/x/e").unwrap();
        let mut p = StoreParams::new().with("session_timeout", Value::Text("37s".into()));
        let election = DRIVER.read_url(&url, &mut p).unwrap();
        assert_eq!(election.as_deref(), Some("e"));
        assert_eq!(p.list("hosts").unwrap(), ["h1:2181", "h2:2182"]);
        assert_eq!(p.text("chroot"), Some("/apps/x"));
        assert_eq!(
            DRIVER.default_ttl(&p).unwrap(),
            Some(Duration::from_secs(37))
        );
        let url = StoreUrl::parse("zk://h/a//e").unwrap();
        let e = DRIVER.read_url(&url, &mut StoreParams::new()).unwrap_err();
        assert!(e.to_string().contains("empty path segment"), "{e}");
    }
}
