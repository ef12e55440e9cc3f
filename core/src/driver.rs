//! Store registration: how a backend crate tells the `leasehold` facade its
//! name, URL schemes and config keys, and how to build itself.
//!
//! A backend crate exports one [`Driver`] (a unit struct, by convention in a
//! `DRIVER` constant), as a sqlx driver declares its URL schemes and an
//! object_store builder takes a URL or a config table. The facade keeps the
//! options every store shares (`id`, `value`, `ttl`, ...) and one list of
//! drivers; everything else about a store lives in its crate:
//!
//! * a URL is split by [`StoreUrl::parse`]; the facade takes out the common
//!   options, checks the rest against the driver's [`Key`]s (those marked
//!   [`Key::in_url`]) and puts them in a [`StoreParams`]; then
//!   [`Driver::read_url`] reads the hosts, user and path into the same
//!   params and names the election;
//! * a config file's `[store]` table becomes a [`StoreParams`] directly, each
//!   value checked against the driver's [`Key`]s (its [`KeyKind`], and
//!   [`Key::required`]);
//! * either way, [`Driver::check`] sees the result, and [`Driver::build`]
//!   makes the backend from it and the election's options.
//!
//! The in-memory store registers the same way: [`MemoryDriver`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::memory::MemoryStore;
use crate::{Backend, ElectionOptions, Error, Result};

/// The attribute a [`Driver`] implementation needs (`#[async_trait]`), so a
/// backend crate does not need its own dependency for it.
pub use async_trait::async_trait;

/// What a [`Driver`] builds: the one place that names the backend trait a
/// store is used through.
pub type DynBackend = Arc<dyn Backend>;

/// A store: its name, URL schemes and config keys, and how to build it.
///
/// Implemented by a unit struct in each backend crate. The facade calls the
/// parsing methods while it reads a URL or a config file (no I/O), and
/// [`build`](Self::build) when it connects.
#[async_trait]
pub trait Driver: Send + Sync {
    /// The store's name: the `kind` of a config file's `[store]` table and
    /// the name in error messages (`"etcd"`).
    fn name(&self) -> &'static str;

    /// The URL schemes that select this store, lowercase (`"etcd"`,
    /// `"etcd+https"`).
    fn schemes(&self) -> &'static [&'static str];

    /// The store's own config keys (the options every store shares are the
    /// facade's), in the order error messages list them.
    fn keys(&self) -> &'static [Key];

    /// The crate's name as tracing targets start with it
    /// (`env!("CARGO_CRATE_NAME")`), so that tools can turn its logs on.
    fn crate_name(&self) -> &'static str;

    /// Read what a URL says beyond its options: the hosts, user, password
    /// and path of `url`, into `params` (which holds the URL's store options
    /// already, as [`Value::Text`]). Returns the election name, `None` when
    /// the URL leaves it out.
    ///
    /// # Errors
    /// [`Error::Config`] naming the part of the URL that is wrong.
    fn read_url(&self, url: &StoreUrl, params: &mut StoreParams) -> Result<Option<String>>;

    /// Check settings that must agree with each other, for a URL and a
    /// config file alike (each value already has its key's [`KeyKind`]).
    ///
    /// # Errors
    /// [`Error::Config`] naming the keys.
    fn check(&self, params: &StoreParams) -> Result<()> {
        let _ = params;
        Ok(())
    }

    /// The ttl the store implies when none is given (ZooKeeper derives one
    /// from its session timeout); `None` keeps the engine's default.
    ///
    /// # Errors
    /// [`Error::Config`] for a value that does not parse.
    fn default_ttl(&self, params: &StoreParams) -> Result<Option<Duration>> {
        let _ = params;
        Ok(None)
    }

    /// Connect (or prepare to) and build the backend for elections with
    /// `options`.
    ///
    /// # Errors
    /// [`Error::Config`] for settings the store refuses; the store's error if
    /// it cannot be reached.
    ///
    /// # Cancel safety
    /// Must be cancel safe: nothing is left behind but a dropped connection.
    async fn build(&self, params: &StoreParams, options: &ElectionOptions) -> Result<DynBackend>;
}

/// The type of a store's config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyKind {
    /// A string (durations and paths too).
    Text,
    /// `true` or `false`.
    Flag,
    /// A list of strings.
    List,
    /// A string never shown by `Debug` (a password).
    Secret,
}

impl KeyKind {
    /// How a config file writes a value of this kind, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            KeyKind::Text => "a string",
            KeyKind::Flag => "true or false",
            KeyKind::List => "a list of strings",
            KeyKind::Secret => "a string",
        }
    }
}

/// One config key of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The key as written in a `[store]` table and a URL query.
    pub name: &'static str,
    /// Its type.
    pub kind: KeyKind,
    /// Whether a URL may give it as a query option (the rest come from the
    /// URL's hosts, user and path, or only from config files).
    pub in_url: bool,
    /// Whether a `[store]` table must give it.
    pub required: bool,
}

impl Key {
    /// A key of `kind`, config files only, optional.
    pub const fn new(name: &'static str, kind: KeyKind) -> Key {
        Key {
            name,
            kind,
            in_url: false,
            required: false,
        }
    }

    /// A string key (config files only, optional).
    pub const fn text(name: &'static str) -> Key {
        Key::new(name, KeyKind::Text)
    }

    /// A `true`/`false` key.
    pub const fn flag(name: &'static str) -> Key {
        Key::new(name, KeyKind::Flag)
    }

    /// A list-of-strings key.
    pub const fn list(name: &'static str) -> Key {
        Key::new(name, KeyKind::List)
    }

    /// A secret key (a password).
    pub const fn secret(name: &'static str) -> Key {
        Key::new(name, KeyKind::Secret)
    }

    /// This key may also be a URL query option.
    pub const fn url(mut self) -> Key {
        self.in_url = true;
        self
    }

    /// A `[store]` table must give this key.
    pub const fn required(mut self) -> Key {
        self.required = true;
        self
    }
}

/// A secret (a password): never shown by `Debug`, `Display` or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for handing to a store client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The value of a store's config key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Value {
    /// [`KeyKind::Text`].
    Text(String),
    /// [`KeyKind::Flag`].
    Flag(bool),
    /// [`KeyKind::List`].
    List(Vec<String>),
    /// [`KeyKind::Secret`].
    Secret(Secret),
}

impl Value {
    /// The [`KeyKind`] this value has.
    pub fn kind(&self) -> KeyKind {
        match self {
            Value::Text(_) => KeyKind::Text,
            Value::Flag(_) => KeyKind::Flag,
            Value::List(_) => KeyKind::List,
            Value::Secret(_) => KeyKind::Secret,
        }
    }
}

/// A store's own settings, by key: what a config file's `[store]` table
/// says, or what a URL says once its driver has read it. `Debug` never
/// shows a [`Value::Secret`].
///
/// The typed getters answer `None` for a key that is absent or holds
/// another kind of value; the facade checks kinds against the driver's
/// [`Key`]s before a driver sees the params.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreParams {
    values: BTreeMap<String, Value>,
}

impl StoreParams {
    /// No settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set `key` (builder style).
    pub fn with(mut self, key: impl Into<String>, value: Value) -> Self {
        self.insert(key, value);
        self
    }

    /// Set `key`, returning its previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) -> Option<Value> {
        self.values.insert(key.into(), value)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// Every key and value, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The text of `key`.
    pub fn text(&self, key: &str) -> Option<&str> {
        match self.values.get(key) {
            Some(Value::Text(t)) => Some(t),
            _ => None,
        }
    }

    /// The flag `key` (`false` when absent).
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.values.get(key), Some(Value::Flag(true)))
    }

    /// The list `key`.
    pub fn list(&self, key: &str) -> Option<&[String]> {
        match self.values.get(key) {
            Some(Value::List(l)) => Some(l),
            _ => None,
        }
    }

    /// The secret `key`.
    pub fn secret(&self, key: &str) -> Option<&Secret> {
        match self.values.get(key) {
            Some(Value::Secret(s)) => Some(s),
            _ => None,
        }
    }
}

/// A store URL split into its parts, before any driver reads it:
/// `SCHEME://[user[:password]@]HOST[/PATH][?OPTIONS]`.
///
/// User, password and option names and values are percent-decoded; `host`
/// and `path` are raw (a driver decodes what it takes from them with
/// [`percent_decode`]). Its `Debug` never shows the password.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreUrl {
    /// The scheme, lowercase.
    pub scheme: String,
    /// The user name before `@`, never empty.
    pub user: Option<String>,
    /// The password after `user:`.
    pub password: Option<Secret>,
    /// Everything between `://` (or `@`) and the first `/`.
    pub host: String,
    /// Everything after that `/` up to `?` (empty when there is none).
    pub path: String,
    /// The query options, each given once.
    pub options: BTreeMap<String, String>,
}

impl StoreUrl {
    /// Split a store URL (surrounding whitespace is ignored).
    ///
    /// # Errors
    /// [`Error::Config`]: no `://`, a fragment, an option without a value or
    /// given twice, a bad percent-escape, an empty user name.
    pub fn parse(input: &str) -> Result<StoreUrl> {
        let input = input.trim();
        let Some((scheme, rest)) = input.split_once("://") else {
            return Err(config("not a store URL (no \"://\")"));
        };
        if rest.contains('#') {
            return Err(config(
                "a store URL has no fragment ('#'); percent-encode it as %23 in values",
            ));
        }
        let (head, query) = match rest.split_once('?') {
            Some((h, q)) => (h, q),
            None => (rest, ""),
        };
        let options = parse_query(query)?;
        let (authority, path) = head.split_once('/').unwrap_or((head, ""));
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (name, pass) = match u.split_once(':') {
                    Some((n, p)) => (n, Some(p)),
                    None => (u, None),
                };
                let name = percent_decode("user name", name)?;
                if name.is_empty() {
                    return Err(config("empty user name before '@'"));
                }
                let pass = pass
                    .map(|p| percent_decode("password", p).map(Secret::new))
                    .transpose()?;
                (Some(name), pass)
            }
        };
        Ok(StoreUrl {
            scheme: scheme.to_ascii_lowercase(),
            user,
            password,
            host: host.to_owned(),
            path: path.to_owned(),
            options,
        })
    }
}

fn config(msg: impl Into<String>) -> Error {
    Error::Config(msg.into())
}

fn parse_query(q: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| config(format!("option {pair:?} has no value: write {pair}=VALUE")))?;
        let k = percent_decode("option name", k)?;
        let v = percent_decode(&format!("option `{k}`"), v)?;
        if out.insert(k.clone(), v).is_some() {
            return Err(config(format!("option `{k}` is given twice")));
        }
    }
    Ok(out)
}

/// Percent-decode `s` (`+` stays `+`) as UTF-8; `what` names it in errors.
///
/// # Errors
/// [`Error::Config`] for a `%` not followed by two hex digits, or bytes
/// that are not UTF-8.
pub fn percent_decode(what: &str, s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // A malformed escape is a typo: refuse it rather than guess.
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(byte) = hex else {
                return Err(config(format!(
                    "{what}: bad percent-escape (write %XX with two hex digits)"
                )));
            };
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| config(format!("{what}: percent-escapes do not decode to UTF-8")))
}

/// The election name of a URL from its raw path segment: percent-decoded,
/// `None` when empty (the caller then supplies it, e.g. the CLI's `--name`).
///
/// # Errors
/// As [`percent_decode`].
pub fn election_name(raw: &str) -> Result<Option<String>> {
    let name = percent_decode("election name", raw)?;
    Ok((!name.is_empty()).then_some(name))
}

/// A URL's comma-separated host list as `host:port` each, `default_port`
/// where none is given; IPv6 addresses in brackets. `form` is the URL form
/// to show when the list is empty (`"etcd://HOST:PORT/ELECTION"`).
///
/// # Errors
/// [`Error::Config`] naming the host: empty, a bad name, a port that is not
/// a number from 1 to 65535.
pub fn host_list(hosts: &str, default_port: u16, form: &str) -> Result<Vec<String>> {
    if hosts.is_empty() {
        return Err(config(format!("missing host: write {form}")));
    }
    let mut out = Vec::new();
    for h in hosts.split(',') {
        if h.is_empty() {
            return Err(config(format!("empty host in the host list {hosts:?}")));
        }
        let (name, port) = if let Some(rest) = h.strip_prefix('[') {
            // [v6]:port
            let (addr, after) = rest
                .split_once(']')
                .ok_or_else(|| config(format!("host {h:?}: unclosed '[' in an IPv6 address")))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(config(format!("host {h:?}: expected ':PORT' after ']'"))),
            };
            (format!("[{addr}]"), port)
        } else {
            match h.rsplit_once(':') {
                Some((n, p)) => (n.to_owned(), Some(p)),
                None => (h.to_owned(), None),
            }
        };
        if name.is_empty()
            || name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(config(format!("bad host name {name:?} in {hosts:?}")));
        }
        let port = match port {
            None => default_port,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                config(format!(
                    "host {name}: port {p:?} is not a number from 1 to 65535"
                ))
            })?,
        };
        out.push(format!("{name}:{port}"));
    }
    Ok(out)
}

/// Parse a duration as Go, etcdctl and consul users write it: `"500ms"`,
/// `"10s"`, `"1.5s"`, `"1m30s"`, `"2h"` (jiff's friendly format, so
/// `"1 minute 30 seconds"` and ISO 8601 `"PT1M30S"` work too). Negative
/// durations and calendar units (days and longer) are refused.
///
/// # Errors
/// [`Error::Config`] naming `field` and the accepted forms.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration> {
    let bad = |why: &str| {
        Error::Config(format!(
            "`{field}`: {text:?} is not a duration ({why}); write e.g. \"500ms\", \"10s\", \"1.5s\", \"1m30s\", \"2h\""
        ))
    };
    let t = text.trim();
    if t.is_empty() {
        return Err(bad("it is empty"));
    }
    // A bare number has no unit: "10" could mean seconds or milliseconds.
    if t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad("a number needs a unit"));
    }
    let signed: jiff::SignedDuration = t.parse().map_err(|e: jiff::Error| bad(&e.to_string()))?;
    if signed.is_negative() {
        return Err(bad("it is negative"));
    }
    Duration::try_from(signed).map_err(|_| bad("it is out of range"))
}

/// The in-memory store as a [`Driver`]: `memory://ELECTION`, `kind =
/// "memory"`. Every backend it builds is a client of one
/// [`process_memory_store`], so the electors of a process meet there.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryDriver;

/// The [`MemoryDriver`].
pub const MEMORY: MemoryDriver = MemoryDriver;

/// The memory store shared by every `memory://` elector of this process.
pub fn process_memory_store() -> &'static MemoryStore {
    static STORE: OnceLock<MemoryStore> = OnceLock::new();
    STORE.get_or_init(MemoryStore::new)
}

#[async_trait]
impl Driver for MemoryDriver {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["memory"]
    }

    fn keys(&self) -> &'static [Key] {
        &[]
    }

    fn crate_name(&self) -> &'static str {
        env!("CARGO_CRATE_NAME")
    }

    fn read_url(&self, url: &StoreUrl, _params: &mut StoreParams) -> Result<Option<String>> {
        if url.user.is_some() {
            return Err(config("memory:// takes no user or password"));
        }
        // memory://ELECTION: the "host" is the election name (or its start).
        let name = match (url.host.as_str(), url.path.as_str()) {
            (host, "") => host.to_owned(),
            ("", path) => path.to_owned(),
            (host, path) => format!("{host}/{path}"),
        };
        election_name(&name)
    }

    async fn build(&self, _params: &StoreParams, _options: &ElectionOptions) -> Result<DynBackend> {
        Ok(Arc::new(process_memory_store().client()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_parts() {
        let u =
            StoreUrl::parse(" ETCD+https://app:s3cr%40t@[::1]:2379,h2/a/b?ttl=1s&x=%2F ").unwrap();
        assert_eq!(u.scheme, "etcd+https");
        assert_eq!(u.user.as_deref(), Some("app"));
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("s3cr@t"));
        assert_eq!(u.host, "[::1]:2379,h2");
        assert_eq!(u.path, "a/b");
        assert_eq!(u.options["x"], "/");
        assert!(!format!("{u:?}").contains("s3cr"));
        assert_eq!(
            host_list(&u.host, 2379, "f").unwrap(),
            ["[::1]:2379", "h2:2379"]
        );
    }

    #[test]
    fn decoding_refuses_typos() {
        assert_eq!(percent_decode("v", "a%20b+c").unwrap(), "a b+c");
        for bad in ["%", "%4", "%zz", "%e9"] {
            assert!(percent_decode("v", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn params_hide_secrets_and_type_their_values() {
        let p = StoreParams::new()
            .with("password", Value::Secret(Secret::new("hunter2")))
            .with("tls", Value::Flag(true))
            .with("hosts", Value::List(vec!["h:1".into()]));
        assert!(!format!("{p:?}").contains("hunter2"));
        assert!(p.flag("tls"));
        assert!(!p.flag("password"));
        assert_eq!(p.text("tls"), None);
        assert_eq!(p.list("hosts").map(<[String]>::len), Some(1));
        assert_eq!(p.secret("password").map(Secret::expose), Some("hunter2"));
    }
}
