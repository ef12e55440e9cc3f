//! The etcd store's registration with the `leasehold` facade: `etcd://`,
//! `etcd+http://`, `etcd+https://` URLs and `kind = "etcd"` config tables.

use std::path::Path;

use async_trait::async_trait;
use leasehold_core::driver::{
    DynBackend, Key, StoreParams, StoreUrl, Value, election_name, host_list, parse_duration,
};
use leasehold_core::{ElectionOptions, Error, Result};

use crate::EtcdBackend;

/// The etcd [`Driver`](leasehold_core::driver::Driver).
#[derive(Debug, Clone, Copy, Default)]
pub struct EtcdDriver;

/// The [`EtcdDriver`], for the facade's list of stores.
pub const DRIVER: EtcdDriver = EtcdDriver;

const KEYS: &[Key] = &[
    // `host:port` of each member (the URL's host list).
    Key::list("endpoints").required(),
    // TLS (the etcd+https scheme).
    Key::flag("tls"),
    Key::text("prefix").url(),
    // `leasehold` or `go` (docs/interop.md).
    Key::text("layout").url(),
    Key::text("ca").url(),
    Key::text("cert").url(),
    Key::text("key").url(),
    Key::text("connect_timeout").url(),
    Key::text("user"),
    Key::secret("password"),
];

fn err(msg: &str) -> Error {
    Error::Config(msg.to_owned())
}

fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::Config(format!(
            "etcd `{what}`: cannot read {}: {e}",
            path.display()
        ))
    })
}

#[async_trait]
impl leasehold_core::driver::Driver for EtcdDriver {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["etcd", "etcd+http", "etcd+https"]
    }

    fn keys(&self) -> &'static [Key] {
        KEYS
    }

    fn crate_name(&self) -> &'static str {
        env!("CARGO_CRATE_NAME")
    }

    fn read_url(&self, url: &StoreUrl, params: &mut StoreParams) -> Result<Option<String>> {
        let endpoints = host_list(&url.host, 2379, "etcd://HOST:PORT/ELECTION")?;
        let election = election_name(&url.path)?;
        let tls = url.scheme == "etcd+https";
        let files = ["ca", "cert", "key"].map(|k| params.get(k).is_some());
        if !tls && files.iter().any(|f| *f) {
            return Err(err(
                "`ca`, `cert` and `key` need TLS: use the etcd+https:// scheme",
            ));
        }
        if files[1] != files[2] {
            return Err(err("`cert` and `key` go together: give both or neither"));
        }
        if url.password.is_some() && url.user.is_none() {
            return Err(err("a password needs a user name (user:password@host)"));
        }
        params.insert("endpoints", Value::List(endpoints));
        params.insert("tls", Value::Flag(tls));
        if let Some(user) = &url.user {
            params.insert("user", Value::Text(user.clone()));
        }
        if let Some(password) = &url.password {
            params.insert("password", Value::Secret(password.clone()));
        }
        Ok(election)
    }

    async fn build(&self, params: &StoreParams, options: &ElectionOptions) -> Result<DynBackend> {
        let scheme = if params.flag("tls") { "https" } else { "http" };
        let endpoints = params.list("endpoints").unwrap_or_default();
        let mut b = EtcdBackend::builder()
            .endpoints(endpoints.iter().map(|e| format!("{scheme}://{e}")))
            .request_timeout(options.request_timeout);
        if let Some(p) = params.text("prefix") {
            b = b.prefix(p);
        }
        if let Some(l) = params.text("layout") {
            b = b.layout(l.parse()?);
        }
        if let Some(t) = params.text("connect_timeout") {
            b = b.connect_timeout(parse_duration("connect_timeout", t)?);
        }
        match (params.text("user"), params.secret("password")) {
            (Some(u), Some(p)) => b = b.auth(u, p.expose()),
            (Some(u), None) => b = b.auth(u, ""),
            _ => {}
        }
        if let Some(ca) = params.text("ca") {
            b = b.tls_ca_pem(read_pem("ca", Path::new(ca))?);
        }
        if let (Some(cert), Some(key)) = (params.text("cert"), params.text("key")) {
            b = b.tls_client_identity_pem(
                read_pem("cert", Path::new(cert))?,
                read_pem("key", Path::new(key))?,
            );
        }
        Ok(std::sync::Arc::new(b.build().await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasehold_core::driver::Driver;

    fn read(url: &str) -> Result<(Option<String>, StoreParams)> {
        let mut url = StoreUrl::parse(url)?;
        let mut params = StoreParams::new();
        for (k, v) in std::mem::take(&mut url.options) {
            params.insert(k, Value::Text(v));
        }
        let election = DRIVER.read_url(&url, &mut params)?;
        Ok((election, params))
    }

    #[test]
    fn urls_become_params() {
        let (election, p) = read("etcd+https://app:pw@h1,[::1]:2380/e?ca=/ca.pem").unwrap();
        assert_eq!(election.as_deref(), Some("e"));
        assert_eq!(p.list("endpoints").unwrap(), ["h1:2379", "[::1]:2380"]);
        assert!(p.flag("tls"));
        assert_eq!(p.text("user"), Some("app"));
        assert_eq!(p.secret("password").map(|s| s.expose()), Some("pw"));
        assert_eq!(p.text("ca"), Some("/ca.pem"));
        let e = read("etcd://:pw@h/e").unwrap_err().to_string();
        assert!(e.contains("empty user name"), "{e}");
        let e = read("etcd+https://h/e?key=/k").unwrap_err().to_string();
        assert!(e.contains("go together"), "{e}");
    }
}
