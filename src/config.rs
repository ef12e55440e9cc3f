//! One configuration for every store: from a URL, a TOML file, or code, with
//! `LEASEHOLD_*` environment overrides, all through the same builder.

use std::fmt;
use std::path::Path;

use leasehold_core::driver::{Driver, KeyKind, StoreParams, Value};
use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::stores::{self, name_list};
use crate::{ElectionOptions, Error, Result};

pub use leasehold_core::driver::{Secret, parse_duration};

/// Which store, and how to reach it: the store's name (its `kind`) and its
/// own settings, checked against what its driver accepts.
///
/// In a config file, the `[store]` table: `kind` and the store's keys
/// (for etcd `endpoints`, `tls`, `prefix`, `layout`, `user`, `password`,
/// `ca`, `cert`, `key`, `connect_timeout`; for ZooKeeper `hosts`, `chroot`,
/// `session_timeout`, `lock_name`, `user`, `password`; for Cloud Storage
/// `bucket`, `prefix`, `endpoint`, `credentials`; memory has none). Each
/// store's driver lists them ([`Driver::keys`]). `Debug` never shows a
/// password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    kind: &'static str,
    params: StoreParams,
}

impl StoreConfig {
    /// The store named `kind` (`"etcd"`) with `params`.
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown store, a store whose cargo feature is
    /// off (naming the feature), a key the store does not take (naming the
    /// keys it does), a value of the wrong type, a missing required key, or
    /// settings the store refuses together.
    pub fn new(kind: &str, params: StoreParams) -> Result<StoreConfig> {
        let (name, driver) = store_driver(kind)?;
        for (key, value) in params.iter() {
            let spec = driver
                .keys()
                .iter()
                .find(|k| k.name == key)
                .ok_or_else(|| unknown_key(name, driver, key))?;
            if value.kind() != spec.kind {
                return Err(wrong_type(name, key, spec.kind));
            }
        }
        if let Some(missing) = driver
            .keys()
            .iter()
            .find(|k| k.required && params.get(k.name).is_none())
        {
            return Err(Error::Config(format!(
                "the {name} store needs `{}`",
                missing.name
            )));
        }
        driver.check(&params)?;
        Ok(StoreConfig { kind: name, params })
    }

    /// The in-process memory store (one per process, shared by every
    /// elector of the process): for tests and demos.
    pub fn memory() -> StoreConfig {
        StoreConfig {
            kind: "memory",
            params: StoreParams::new(),
        }
    }

    /// The store's name (`memory`, `etcd`, `zookeeper`, `gcs`).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The store's own settings.
    pub fn params(&self) -> &StoreParams {
        &self.params
    }

    /// The store's driver.
    ///
    /// # Errors
    /// Never for a `StoreConfig` built in this process (its store was
    /// checked then); [`Error::Config`] naming the cargo feature otherwise.
    pub fn driver(&self) -> Result<&'static dyn Driver> {
        store_driver(self.kind).map(|(_, d)| d)
    }

    /// From a `[store]` table's values.
    fn from_table(mut table: toml::Table) -> Result<StoreConfig> {
        let kind = match table.remove("kind") {
            Some(toml::Value::String(kind)) => kind,
            Some(other) => {
                return Err(Error::Config(format!(
                    "`kind` must be a string: one of {}, not {other}",
                    name_list()
                )));
            }
            None => {
                return Err(Error::Config(format!(
                    "the [store] table needs `kind`: one of {}",
                    name_list()
                )));
            }
        };
        let (name, driver) = store_driver(&kind)?;
        let mut params = StoreParams::new();
        for (key, value) in table {
            let spec = driver
                .keys()
                .iter()
                .find(|k| k.name == key.as_str())
                .ok_or_else(|| unknown_key(name, driver, &key))?;
            let value = match (spec.kind, value) {
                (KeyKind::Text, toml::Value::String(s)) => Value::Text(s),
                (KeyKind::Secret, toml::Value::String(s)) => Value::Secret(Secret::new(s)),
                (KeyKind::Flag, toml::Value::Boolean(b)) => Value::Flag(b),
                (KeyKind::List, toml::Value::Array(items)) => Value::List(
                    items
                        .into_iter()
                        .map(|item| match item {
                            toml::Value::String(s) => Ok(s),
                            _ => Err(wrong_type(name, &key, KeyKind::List)),
                        })
                        .collect::<Result<_>>()?,
                ),
                (kind, _) => return Err(wrong_type(name, &key, kind)),
            };
            params.insert(key, value);
        }
        StoreConfig::new(name, params)
    }
}

/// The store named `kind` and its driver.
fn store_driver(kind: &str) -> Result<(&'static str, &'static dyn Driver)> {
    let entry = stores::by_name(kind).ok_or_else(|| {
        Error::Config(format!(
            "unknown store kind {kind:?}; use one of {}",
            name_list()
        ))
    })?;
    Ok((entry.name, entry.driver()?))
}

fn unknown_key(store: &str, driver: &dyn Driver, key: &str) -> Error {
    let allowed: Vec<&str> = driver.keys().iter().map(|k| k.name).collect();
    let allowed = if allowed.is_empty() {
        "none but `kind`".to_owned()
    } else {
        format!("kind, {}", allowed.join(", "))
    };
    Error::Config(format!(
        "unknown key `{key}` for the {store} store; allowed: {allowed}"
    ))
}

fn wrong_type(store: &str, key: &str, kind: KeyKind) -> Error {
    Error::Config(format!(
        "`{key}` of the {store} store must be {}",
        kind.describe()
    ))
}

impl<'de> Deserialize<'de> for StoreConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let table = toml::Table::deserialize(deserializer)?;
        StoreConfig::from_table(table).map_err(|e| match e {
            Error::Config(m) => D::Error::custom(m),
            other => D::Error::custom(other),
        })
    }
}

impl Serialize for StoreConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("kind", self.kind)?;
        for (key, value) in self.params.iter() {
            match value {
                Value::Text(t) => map.serialize_entry(key, t)?,
                Value::Flag(b) => map.serialize_entry(key, b)?,
                Value::List(l) => map.serialize_entry(key, l)?,
                Value::Secret(s) => map.serialize_entry(key, s.expose())?,
                _ => {}
            }
        }
        map.end()
    }
}

/// Everything needed to build an [`Elector`](crate::Elector): the store and
/// the election's options. Every field but the store and the election name
/// is optional.
///
/// From a TOML file:
///
/// ```toml
/// election = "orders-worker"
/// ttl = "10s"
/// [store]
/// kind = "etcd"
/// endpoints = ["10.0.0.5:2379", "10.0.0.6:2379"]
/// ```
///
/// or with a URL (`url = "etcd://10.0.0.5:2379/orders-worker?ttl=10s"`);
/// explicit fields override what the URL says. Then
/// [`with_env`](Self::with_env) applies `LEASEHOLD_URL`, `LEASEHOLD_ELECTION`,
/// `LEASEHOLD_ID`, `LEASEHOLD_VALUE`, `LEASEHOLD_TTL`,
/// `LEASEHOLD_RENEW_INTERVAL`, `LEASEHOLD_RETRY_INTERVAL`,
/// `LEASEHOLD_SAFETY_MARGIN` and `LEASEHOLD_REQUEST_TIMEOUT`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElectionConfig {
    /// A store URL (see [`crate::connect`]); sets the store, the election
    /// and any options it carries, under the explicit fields.
    #[serde(default)]
    pub url: Option<String>,
    /// The store.
    #[serde(default)]
    pub store: Option<StoreConfig>,
    /// The election name.
    #[serde(default)]
    pub election: Option<String>,
    /// This candidate's id (default: `<hostname>-<pid>`).
    #[serde(default)]
    pub id: Option<String>,
    /// The value published while leading (text).
    #[serde(default)]
    pub value: Option<String>,
    /// Lease ttl, e.g. `"10s"`; the other timings derive from it.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Renew interval, e.g. `"3s"`.
    #[serde(default)]
    pub renew_interval: Option<String>,
    /// Retry / poll interval, e.g. `"1s"`.
    #[serde(default)]
    pub retry_interval: Option<String>,
    /// Safety margin, e.g. `"1s"`.
    #[serde(default)]
    pub safety_margin: Option<String>,
    /// Bound on each store call, e.g. `"3s"`.
    #[serde(default)]
    pub request_timeout: Option<String>,
}

/// Every field, with the password of `url` (`user:password@`) hidden as
/// the store's own `Secret` is.
impl fmt::Debug for ElectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElectionConfig")
            .field("url", &self.url.as_deref().map(redact_password))
            .field("store", &self.store)
            .field("election", &self.election)
            .field("id", &self.id)
            .field("value", &self.value)
            .field("ttl", &self.ttl)
            .field("renew_interval", &self.renew_interval)
            .field("retry_interval", &self.retry_interval)
            .field("safety_margin", &self.safety_margin)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// `url` with the password of its `user:password@` part replaced by `***`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{hosts}{tail}")
        }
        None => url.to_owned(),
    }
}

/// The environment variables [`ElectionConfig::with_env`] reads.
pub const ENV_VARS: [&str; 9] = [
    "LEASEHOLD_URL",
    "LEASEHOLD_ELECTION",
    "LEASEHOLD_ID",
    "LEASEHOLD_VALUE",
    "LEASEHOLD_TTL",
    "LEASEHOLD_RENEW_INTERVAL",
    "LEASEHOLD_RETRY_INTERVAL",
    "LEASEHOLD_SAFETY_MARGIN",
    "LEASEHOLD_REQUEST_TIMEOUT",
];

impl ElectionConfig {
    /// A config from a store URL.
    ///
    /// # Errors
    /// [`Error::Config`] naming the offending part of the URL.
    pub fn from_url(url: &str) -> Result<Self> {
        crate::url::parse(url)
    }

    /// A config from TOML text.
    ///
    /// # Errors
    /// [`Error::Config`] with the TOML parser's message (unknown fields
    /// included).
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::Config(format!("bad leasehold config: {e}")))
    }

    /// A config from a TOML file.
    ///
    /// # Errors
    /// [`Error::Config`] if the file cannot be read or parsed.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Apply the `LEASEHOLD_*` environment variables ([`ENV_VARS`]) over
    /// this config.
    pub fn with_env(self) -> Self {
        self.with_vars(|k| std::env::var(k).ok())
    }

    /// Apply overrides from `get` (the environment, in
    /// [`with_env`](Self::with_env)).
    pub fn with_vars(mut self, get: impl Fn(&str) -> Option<String>) -> Self {
        let set = |field: &mut Option<String>, var: &str| {
            if let Some(v) = get(var) {
                *field = Some(v);
            }
        };
        set(&mut self.url, "LEASEHOLD_URL");
        set(&mut self.election, "LEASEHOLD_ELECTION");
        set(&mut self.id, "LEASEHOLD_ID");
        set(&mut self.value, "LEASEHOLD_VALUE");
        set(&mut self.ttl, "LEASEHOLD_TTL");
        set(&mut self.renew_interval, "LEASEHOLD_RENEW_INTERVAL");
        set(&mut self.retry_interval, "LEASEHOLD_RETRY_INTERVAL");
        set(&mut self.safety_margin, "LEASEHOLD_SAFETY_MARGIN");
        set(&mut self.request_timeout, "LEASEHOLD_REQUEST_TIMEOUT");
        self
    }

    /// Fill the unset fields of `self` from `other`.
    fn or(self, other: ElectionConfig) -> ElectionConfig {
        ElectionConfig {
            url: None,
            store: self.store.or(other.store),
            election: self.election.or(other.election),
            id: self.id.or(other.id),
            value: self.value.or(other.value),
            ttl: self.ttl.or(other.ttl),
            renew_interval: self.renew_interval.or(other.renew_interval),
            retry_interval: self.retry_interval.or(other.retry_interval),
            safety_margin: self.safety_margin.or(other.safety_margin),
            request_timeout: self.request_timeout.or(other.request_timeout),
        }
    }

    /// Check everything and work out the store and the election options,
    /// without connecting.
    ///
    /// # Errors
    /// [`Error::Config`] or [`Error::InvalidOption`] naming what is wrong.
    pub fn resolve(&self) -> Result<(StoreConfig, ElectionOptions)> {
        let (store, options) = self.resolve_unchecked()?;
        options.validate()?;
        Ok((store, options))
    }

    /// [`resolve`](Self::resolve) checking only the names, not the timings
    /// (for [`connect_observer`](Self::connect_observer)).
    pub(crate) fn resolve_for_reading(&self) -> Result<(StoreConfig, ElectionOptions)> {
        let (store, options) = self.resolve_unchecked()?;
        options.validate_names()?;
        Ok((store, options))
    }

    fn resolve_unchecked(&self) -> Result<(StoreConfig, ElectionOptions)> {
        let mut cfg = self.clone();
        if let Some(url) = cfg.url.take() {
            cfg = cfg.or(ElectionConfig::from_url(&url)?);
        }
        let store = cfg.store.ok_or_else(|| {
            Error::Config(
                "no store given: set `url` (e.g. etcd://127.0.0.1:2379/my-election) or a [store] section with `kind`"
                    .into(),
            )
        })?;
        let election = cfg.election.ok_or_else(|| {
            Error::Config("no election name given: set `election` or put it in the URL path".into())
        })?;
        let id = cfg.id.unwrap_or_else(default_candidate_id);
        let mut options = ElectionOptions::new(election, id);
        if let Some(ttl) = cfg.ttl.as_deref() {
            options = options.with_ttl(parse_duration("ttl", ttl)?);
        } else if let Some(ttl) = store.driver()?.default_ttl(store.params())? {
            // The store implies one (ZooKeeper: from its session timeout).
            options = options.with_ttl(ttl);
        }
        let fields = [
            (
                "renew_interval",
                &cfg.renew_interval,
                &mut options.renew_interval,
            ),
            (
                "retry_interval",
                &cfg.retry_interval,
                &mut options.retry_interval,
            ),
            (
                "safety_margin",
                &cfg.safety_margin,
                &mut options.safety_margin,
            ),
            (
                "request_timeout",
                &cfg.request_timeout,
                &mut options.request_timeout,
            ),
        ];
        for (name, text, slot) in fields {
            if let Some(t) = text {
                *slot = parse_duration(name, t)?;
            }
        }
        if let Some(v) = cfg.value {
            options.value = v.into_bytes();
        }
        Ok((store, options))
    }
}

/// `<hostname>-<pid>`: unique per process on a host.
pub fn default_candidate_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "leasehold".to_owned());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("ttl", "10s").unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(
            parse_duration("ttl", "1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            parse_duration("ttl", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_duration("ttl", "2m").unwrap(),
            Duration::from_secs(120)
        );
        // As Go's time.ParseDuration, etcdctl and consul write them.
        for (text, want) in [
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("1h2m3.5s", Duration::from_millis(3_723_500)),
            ("1.5m", Duration::from_secs(90)),
            ("0.25s", Duration::from_millis(250)),
            ("1 minute 30 seconds", Duration::from_secs(90)),
        ] {
            assert_eq!(parse_duration("ttl", text).unwrap(), want, "{text}");
        }
        for bad in [
            "",
            "10",
            "s",
            "ten s",
            "10 parsecs",
            "-1s",
            "1e99h",
            "1..2s",
        ] {
            let e = parse_duration("ttl", bad).unwrap_err().to_string();
            assert!(e.contains("`ttl`") && e.contains("\"10s\""), "{bad}: {e}");
        }
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn toml_with_a_store_section() {
        let cfg = ElectionConfig::from_toml(
            r#"
            election = "orders"
            id = "w1"
            ttl = "6s"
            [store]
            kind = "etcd"
            endpoints = ["127.0.0.1:2379"]
            password = "hunter2"
            "#,
        )
        .unwrap();
        let (store, options) = cfg.resolve().unwrap();
        assert_eq!(store.kind(), "etcd");
        assert_eq!(options.ttl, Duration::from_secs(6));
        assert_eq!(options.candidate_id, "w1");
        assert!(!format!("{store:?}").contains("hunter2"));
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn toml_etcd_layout() {
        let cfg = ElectionConfig::from_toml(
            r#"
            election = "billing"
            [store]
            kind = "etcd"
            endpoints = ["127.0.0.1:2379"]
            layout = "go"
            "#,
        )
        .unwrap();
        let (store, _) = cfg.resolve().unwrap();
        assert_eq!(store.params().text("layout"), Some("go"));
    }

    #[test]
    fn toml_unknown_fields_are_refused() {
        let e = ElectionConfig::from_toml("election = \"x\"\nttll = \"5s\"\n").unwrap_err();
        assert!(e.to_string().contains("ttll"), "{e}");
        let e = ElectionConfig::from_toml("[store]\nkind = \"redis\"\n").unwrap_err();
        assert!(e.to_string().contains("redis"), "{e}");
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn explicit_fields_and_env_override_the_url() {
        let cfg = ElectionConfig {
            url: Some("etcd://127.0.0.1:2379/orders?ttl=10s&id=from-url".into()),
            ttl: Some("4s".into()),
            ..Default::default()
        }
        .with_vars(|k| (k == "LEASEHOLD_ID").then(|| "from-env".to_owned()));
        let (_, options) = cfg.resolve().unwrap();
        assert_eq!(options.ttl, Duration::from_secs(4));
        assert_eq!(options.candidate_id, "from-env");
        assert_eq!(options.election, "orders");
    }

    #[cfg(feature = "gcs")]
    #[test]
    fn gcs_credentials_in_toml_are_independent_of_the_endpoint() {
        use leasehold_gcs::GcsCredentials;
        let store = |extra: &str| {
            let cfg = ElectionConfig::from_toml(&format!(
                "election = \"e\"\n[store]\nkind = \"gcs\"\nbucket = \"b-b\"\nendpoint = \"https://storage.example:443\"\n{extra}"
            ))
            .unwrap();
            let (store, _) = cfg.resolve().unwrap();
            let p = store.params();
            assert_eq!(p.text("endpoint"), Some("https://storage.example:443"));
            p.text("credentials")
                .map(|c| GcsCredentials::parse(c).unwrap())
        };
        assert_eq!(store(""), None);
        assert_eq!(
            store("credentials = \"none\"\n"),
            Some(GcsCredentials::Anonymous)
        );
        assert_eq!(
            store("credentials = \"default\"\n"),
            Some(GcsCredentials::Default)
        );
        assert_eq!(
            store("credentials = \"/etc/key.json\"\n"),
            Some(GcsCredentials::KeyFile("/etc/key.json".into()))
        );
        let e = ElectionConfig::from_toml(
            "election = \"e\"\n[store]\nkind = \"gcs\"\nbucket = \"b-b\"\ncredentials = \"\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`credentials` is empty"), "{e}");
    }

    #[cfg(all(feature = "etcd", feature = "zookeeper"))]
    #[test]
    fn store_tables_are_checked_against_their_driver() {
        let bad = |table: &str| {
            ElectionConfig::from_toml(&format!("election = \"e\"\n[store]\n{table}"))
                .unwrap_err()
                .to_string()
        };
        let e = bad("kind = \"etcd\"\nendpoints = [\"h:1\"]\nsession_timeout = \"5s\"\n");
        assert!(
            e.contains("unknown key `session_timeout` for the etcd store; allowed: kind, endpoints, tls, prefix"),
            "{e}"
        );
        let e = bad("kind = \"etcd\"\nendpoints = \"h:1\"\n");
        assert!(
            e.contains("`endpoints` of the etcd store must be a list of strings"),
            "{e}"
        );
        let e = bad("kind = \"etcd\"\nendpoints = [\"h:1\"]\ntls = \"yes\"\n");
        assert!(
            e.contains("`tls` of the etcd store must be true or false"),
            "{e}"
        );
        let e = bad("kind = \"zookeeper\"\nchroot = \"/x\"\n");
        assert!(e.contains("the zookeeper store needs `hosts`"), "{e}");
        let e = bad("endpoints = [\"h:1\"]\n");
        assert!(
            e.contains("needs `kind`: one of memory, etcd, zookeeper, gcs"),
            "{e}"
        );
        let e = bad("kind = \"memory\"\nttl = \"5s\"\n");
        assert!(
            e.contains("unknown key `ttl` for the memory store; allowed: none but `kind`"),
            "{e}"
        );
        // The password stays hidden, and a table round-trips through serde.
        let cfg = ElectionConfig::from_toml(
            "election = \"e\"\n[store]\nkind = \"zookeeper\"\nhosts = [\"h:2181\"]\nuser = \"u\"\npassword = \"hunter2\"\n",
        )
        .unwrap();
        assert!(!format!("{cfg:?}").contains("hunter2"));
        // A URL given as is (the CLI's --store, LEASEHOLD_URL) too.
        for url in [
            "etcd://root:hunter2@h:2379/e",
            "zk://u:hunter2@h1:2181,h2:2181/apps/e?session_timeout=6s",
            "postgres://app:hunt%40er2@db/e",
            "mysql://app:hunter2@db:3306/app/e",
        ] {
            let cfg = ElectionConfig {
                url: Some(url.to_owned()),
                ..ElectionConfig::default()
            };
            let shown = format!("{cfg:?}");
            assert!(
                !shown.contains("hunter2") && !shown.contains("hunt%40er2"),
                "{shown}"
            );
            assert!(shown.contains(":***@"), "{shown}");
        }
        assert_eq!(redact_password("memory://e"), "memory://e");
        assert_eq!(redact_password("etcd://u@h/e"), "etcd://u@h/e");
        let again = ElectionConfig::from_toml(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(again, cfg);
    }

    /// Meaningful in builds without the backend features.
    #[test]
    fn a_store_table_whose_feature_is_off_says_which_feature() {
        for store in crate::STORES.iter().filter(|s| s.driver.is_none()) {
            let feature = store.feature.unwrap_or(store.name);
            let e = ElectionConfig::from_toml(&format!("[store]\nkind = \"{}\"\n", store.name))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("`{feature}` cargo feature")), "{e}");
        }
    }

    #[test]
    fn missing_store_or_election_is_explained() {
        let e = ElectionConfig::default().resolve().unwrap_err().to_string();
        assert!(e.contains("no store given"), "{e}");
        let e = ElectionConfig {
            store: Some(StoreConfig::memory()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.contains("no election name"), "{e}");
    }
}
