//! The MySQL/MariaDB store's registration with the `leasehold` facade:
//! `mysql://` URLs and `kind = "mysql"` config tables.

use std::path::PathBuf;

use async_trait::async_trait;
use leasehold_core::driver::{
    DynBackend, Key, StoreParams, StoreUrl, Value, host_list, parse_duration, percent_decode,
};
use leasehold_core::{ElectionOptions, Error, Result};

use crate::{MysqlBackend, TlsMode};

/// The MySQL/MariaDB [`Driver`](leasehold_core::driver::Driver).
#[derive(Debug, Clone, Copy, Default)]
pub struct MysqlDriver;

/// The [`MysqlDriver`], for the facade's list of stores.
pub const DRIVER: MysqlDriver = MysqlDriver;

const FORM: &str = "mysql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE[/ELECTION]";

const KEYS: &[Key] = &[
    // `host` or `host:port` (the URL's host).
    Key::text("host").required(),
    // The database holding the tables (the URL path's first segment).
    Key::text("database").required(),
    Key::text("user"),
    Key::secret("password"),
    Key::text("table").url(),
    Key::text("tokens_table").url(),
    // off | required | verify-ca | verify-full
    Key::text("tls").url(),
    Key::text("ca").url(),
    Key::text("cert").url(),
    Key::text("key").url(),
    Key::text("connect_timeout").url(),
    Key::text("max_connections").url(),
];

fn err(msg: impl Into<String>) -> Error {
    Error::Config(msg.into())
}

/// `host:port` (IPv6 in brackets) into its parts, 3306 by default.
fn host_port(text: &str) -> Result<(String, u16)> {
    let hosts = host_list(text, 3306, FORM)?;
    let [one] = hosts.as_slice() else {
        return Err(err(format!(
            "mysql: one server only ({text:?} names {}); point it at the primary",
            hosts.len()
        )));
    };
    let (name, port) = one
        .rsplit_once(':')
        .ok_or_else(|| err(format!("mysql: bad host {one:?}")))?;
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let port = port
        .parse::<u16>()
        .map_err(|_| err(format!("mysql: bad port in {one:?}")))?;
    Ok((name.to_owned(), port))
}

#[async_trait]
impl leasehold_core::driver::Driver for MysqlDriver {
    fn name(&self) -> &'static str {
        "mysql"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["mysql"]
    }

    fn keys(&self) -> &'static [Key] {
        KEYS
    }

    fn crate_name(&self) -> &'static str {
        env!("CARGO_CRATE_NAME")
    }

    fn read_url(&self, url: &StoreUrl, params: &mut StoreParams) -> Result<Option<String>> {
        host_port(&url.host)?;
        let (database, election) = match url.path.split_once('/') {
            Some((d, e)) => (d, e),
            None => (url.path.as_str(), ""),
        };
        let database = percent_decode("database", database)?;
        if database.is_empty() {
            return Err(err(format!(
                "mysql: the URL names no database: write {FORM}"
            )));
        }
        if url.password.is_some() && url.user.is_none() {
            return Err(err("a password needs a user name (user:password@host)"));
        }
        params.insert("host", Value::Text(url.host.clone()));
        params.insert("database", Value::Text(database));
        if let Some(user) = &url.user {
            params.insert("user", Value::Text(user.clone()));
        }
        if let Some(password) = &url.password {
            params.insert("password", Value::Secret(password.clone()));
        }
        leasehold_core::driver::election_name(election)
    }

    fn check(&self, params: &StoreParams) -> Result<()> {
        if let Some(h) = params.text("host") {
            host_port(h)?;
        }
        if let Some(t) = params.text("tls") {
            t.parse::<TlsMode>()?;
        }
        if params.text("cert").is_some() != params.text("key").is_some() {
            return Err(err(
                "mysql: `cert` and `key` go together: give both or neither",
            ));
        }
        if params.secret("password").is_some() && params.text("user").is_none() {
            return Err(err("mysql: a `password` needs a `user`"));
        }
        if let Some(n) = params.text("max_connections") {
            n.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                err(format!(
                    "mysql `max_connections`: {n:?} is not a positive number"
                ))
            })?;
        }
        if let Some(t) = params.text("connect_timeout") {
            parse_duration("connect_timeout", t)?;
        }
        for (key, what) in [
            ("database", "database"),
            ("table", "table"),
            ("tokens_table", "tokens_table"),
        ] {
            if let Some(name) = params.text(key) {
                crate::table::Ident::new(what, name)?;
            }
        }
        Ok(())
    }

    async fn build(&self, params: &StoreParams, options: &ElectionOptions) -> Result<DynBackend> {
        self.check(params)?;
        let (host, port) = host_port(params.text("host").unwrap_or_default())?;
        let mut b = MysqlBackend::builder()
            .host(host)
            .port(port)
            .request_timeout(options.request_timeout);
        if let Some(d) = params.text("database") {
            b = b.database(d);
        }
        match (params.text("user"), params.secret("password")) {
            (Some(u), Some(p)) => b = b.auth(u, p.expose()),
            (Some(u), None) => b = b.user(u),
            _ => {}
        }
        if let Some(t) = params.text("table") {
            b = b.table(t);
        }
        if let Some(t) = params.text("tokens_table") {
            b = b.tokens_table(t);
        }
        if let Some(t) = params.text("tls") {
            b = b.tls(t.parse()?);
        }
        if let Some(ca) = params.text("ca") {
            b = b.tls_ca(PathBuf::from(ca));
        }
        if let (Some(cert), Some(key)) = (params.text("cert"), params.text("key")) {
            b = b.tls_client_identity(PathBuf::from(cert), PathBuf::from(key));
        }
        if let Some(t) = params.text("connect_timeout") {
            b = b.connect_timeout(parse_duration("connect_timeout", t)?);
        }
        if let Some(n) = params.text("max_connections").and_then(|n| n.parse().ok()) {
            b = b.max_connections(n);
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
        DRIVER.check(&params)?;
        Ok((election, params))
    }

    #[test]
    fn urls_become_params() {
        let (election, p) =
            read("mysql://app:p%40ss@db.internal:3307/appdb/jobs%2Fnightly?table=elections&tls=verify-ca&ca=/ca.pem")
                .unwrap();
        assert_eq!(election.as_deref(), Some("jobs/nightly"));
        assert_eq!(p.text("host"), Some("db.internal:3307"));
        assert_eq!(p.text("database"), Some("appdb"));
        assert_eq!(p.text("user"), Some("app"));
        assert_eq!(p.secret("password").map(|s| s.expose()), Some("p@ss"));
        assert_eq!(p.text("table"), Some("elections"));
        assert!(!format!("{p:?}").contains("p@ss"));
        assert_eq!(host_port("[::1]").unwrap(), ("::1".to_owned(), 3306));
        let (election, _) = read("mysql://h/appdb").unwrap();
        assert_eq!(election, None);
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, says) in [
            ("mysql://h", "names no database"),
            ("mysql://h/", "names no database"),
            ("mysql://h1,h2/db/e", "one server only"),
            ("mysql://h:0/db/e", "port"),
            ("mysql://h/db/e?tls=maybe", "not a TLS mode"),
            ("mysql://h/db/e?table=a%60b", "plain identifier"),
            ("mysql://h/bad-db/e", "plain identifier"),
            ("mysql://h/db/e?cert=/c", "go together"),
            ("mysql://h/db/e?max_connections=0", "positive"),
        ] {
            let e = read(url).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
        }
    }
}
