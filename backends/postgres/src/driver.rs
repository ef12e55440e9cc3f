//! The PostgreSQL store's registration with the `leasehold` facade:
//! `postgres://` and `postgresql://` URLs and `kind = "postgres"` config
//! tables.
//!
//! `postgres://USER[:PASSWORD]@HOST[:PORT][,HOST2...]/DATABASE/ELECTION?OPTIONS`
//! with the options `schema`, `table`, `sslmode`, `sslrootcert`, `sslcert`,
//! `sslkey`, `listen` (`false` behind PgBouncer), `connect_timeout`.

use std::time::Duration;

use async_trait::async_trait;
use leasehold_core::driver::{
    DynBackend, Key, StoreParams, StoreUrl, Value, election_name, host_list, parse_duration,
    percent_decode,
};
use leasehold_core::{ElectionOptions, Error, Result};

use crate::config::PostgresBuilder;
use crate::tls::SslMode;

/// The PostgreSQL [`Driver`](leasehold_core::driver::Driver).
#[derive(Debug, Clone, Copy, Default)]
pub struct PostgresDriver;

/// The [`PostgresDriver`], for the facade's list of stores.
pub const DRIVER: PostgresDriver = PostgresDriver;

const KEYS: &[Key] = &[
    // `host:port` of each server (the URL's host list).
    Key::list("hosts").required(),
    Key::text("user"),
    Key::secret("password"),
    // The database (the URL path's first segment).
    Key::text("dbname"),
    Key::text("schema").url(),
    Key::text("table").url(),
    Key::text("sslmode").url(),
    Key::text("sslrootcert").url(),
    Key::text("sslcert").url(),
    Key::text("sslkey").url(),
    // LISTEN/NOTIFY wake-ups; `false` behind PgBouncer in transaction mode.
    Key::flag("listen").url(),
    Key::text("connect_timeout").url(),
    // How long a renewal waits for others to share its statement.
    Key::text("renew_batch_window").url(),
];

fn err(msg: impl Into<String>) -> Error {
    Error::Config(msg.into())
}

/// Split `host[:port]` (IPv6 in brackets) as [`host_list`] wrote it.
fn split_host(h: &str) -> Result<(String, u16)> {
    let (host, port) = h
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty() && (!host.contains(':') || host.ends_with(']')))
        .ok_or_else(|| err(format!("postgres host {h:?}: write HOST:PORT")))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| err(format!("postgres host {h:?}: the port is not a number")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_owned(), port))
}

/// The builder a checked set of params describes.
pub(crate) fn builder(params: &StoreParams, options: &ElectionOptions) -> Result<PostgresBuilder> {
    let mut b = PostgresBuilder::new().request_timeout(options.request_timeout);
    for h in params.list("hosts").unwrap_or_default() {
        let (host, port) = split_host(h)?;
        b = b.host(host, port);
    }
    if let Some(u) = params.text("user") {
        b = b.user(u);
    }
    if let Some(p) = params.secret("password") {
        b = b.password(p.expose());
    }
    if let Some(d) = params.text("dbname") {
        b = b.dbname(d);
    }
    if let Some(s) = params.text("schema") {
        b = b.schema(s);
    }
    if let Some(t) = params.text("table") {
        b = b.table(t);
    }
    let mode = params.text("sslmode").map(SslMode::parse).transpose()?;
    if let Some(m) = mode {
        b = b.ssl_mode(m);
    }
    if let Some(r) = params.text("sslrootcert") {
        b = b.ssl_root_cert(r);
    }
    if let (Some(c), Some(k)) = (params.text("sslcert"), params.text("sslkey")) {
        b = b.ssl_client_cert(c, k);
    }
    if let Some(Value::Flag(on)) = params.get("listen") {
        b = b.listen(*on);
    }
    if let Some(t) = params.text("renew_batch_window") {
        b = b.renew_batch_window(parse_duration("renew_batch_window", t)?);
    }
    if let Some(t) = params.text("connect_timeout") {
        b = b.connect_timeout(parse_duration("connect_timeout", t)?);
    } else {
        b = b.connect_timeout(options.request_timeout.max(Duration::from_secs(1)));
    }
    Ok(b)
}

#[async_trait]
impl leasehold_core::driver::Driver for PostgresDriver {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["postgres", "postgresql"]
    }

    fn keys(&self) -> &'static [Key] {
        KEYS
    }

    fn crate_name(&self) -> &'static str {
        env!("CARGO_CRATE_NAME")
    }

    fn read_url(&self, url: &StoreUrl, params: &mut StoreParams) -> Result<Option<String>> {
        if url.host.is_empty() {
            return Err(err(
                "missing host: write postgres://USER@HOST[:PORT]/DATABASE/ELECTION",
            ));
        }
        let hosts = host_list(
            &url.host,
            5432,
            "postgres://USER@HOST:PORT/DATABASE/ELECTION",
        )?;
        let (db, election) = match url.path.split_once('/') {
            Some((db, rest)) => (db, election_name(rest)?),
            None => (url.path.as_str(), None),
        };
        if url.password.is_some() && url.user.is_none() {
            return Err(err("a password needs a user name (user:password@host)"));
        }
        params.insert("hosts", Value::List(hosts));
        if !db.is_empty() {
            params.insert("dbname", Value::Text(percent_decode("database", db)?));
        }
        if let Some(user) = &url.user {
            params.insert("user", Value::Text(user.clone()));
        }
        if let Some(password) = &url.password {
            params.insert("password", Value::Secret(password.clone()));
        }
        Ok(election)
    }

    fn check(&self, params: &StoreParams) -> Result<()> {
        if let Some(m) = params.text("sslmode") {
            SslMode::parse(m)?;
        }
        if params.get("sslcert").is_some() != params.get("sslkey").is_some() {
            return Err(err(
                "postgres `sslcert` and `sslkey` go together: give both or neither",
            ));
        }
        for h in params.list("hosts").unwrap_or_default() {
            split_host(h)?;
        }
        // Names: checked the way the builder will.
        crate::config::Names::new(
            params.text("schema"),
            params.text("table").unwrap_or(crate::DEFAULT_TABLE),
        )?;
        Ok(())
    }

    async fn build(&self, params: &StoreParams, options: &ElectionOptions) -> Result<DynBackend> {
        let table = builder(params, options)?.build_table()?;
        crate::backend::dyn_backend(table)
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
            let value = match k.as_str() {
                "listen" => Value::Flag(v == "true"),
                _ => Value::Text(v),
            };
            params.insert(k, value);
        }
        let election = DRIVER.read_url(&url, &mut params)?;
        DRIVER.check(&params)?;
        Ok((election, params))
    }

    #[test]
    fn urls_become_params() {
        let (election, p) =
            read("postgres://app:pw@db1,[::1]:6432/locks/my%2Felection?sslmode=verify-full&listen=false&schema=s")
                .unwrap();
        assert_eq!(election.as_deref(), Some("my/election"));
        assert_eq!(p.list("hosts").unwrap(), ["db1:5432", "[::1]:6432"]);
        assert_eq!(p.text("dbname"), Some("locks"));
        assert_eq!(p.text("user"), Some("app"));
        assert_eq!(p.secret("password").map(|s| s.expose()), Some("pw"));
        assert!(!format!("{p:?}").contains("pw\""), "{p:?}");
        let b = builder(&p, &ElectionOptions::new("e", "c")).unwrap();
        assert_eq!(
            b.hosts,
            [("db1".to_owned(), 5432), ("::1".to_owned(), 6432)]
        );
        assert!(!b.listen);
        assert_eq!(b.ssl_mode, SslMode::VerifyFull);
        assert!(!format!("{b:?}").contains("\"pw\""));
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let e = read("postgres:///db/e").unwrap_err().to_string();
        assert!(e.contains("missing host"), "{e}");
        let e = read("postgres://h/db/e?sslmode=allow")
            .unwrap_err()
            .to_string();
        assert!(e.contains("verify-full"), "{e}");
        let e = read("postgres://h/db/e?table=a-b").unwrap_err().to_string();
        assert!(e.contains("letters"), "{e}");
        let e = read("postgres://h/db/e?sslcert=/c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("go together"), "{e}");
        let (election, p) = read("postgresql://h/db").unwrap();
        assert_eq!(election, None);
        assert_eq!(p.text("dbname"), Some("db"));
    }
}
