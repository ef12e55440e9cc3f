//! One configuration for every store: from a URL, a TOML file, or code, with
//! `LEASEHOLD_*` environment overrides, all through the same builder.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ElectionOptions, Error, Result};

/// A secret (a password): never shown by `Debug`, `Display` or logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
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

/// How a Cloud Storage store authenticates. Independent of its endpoint: a
/// private or regional endpoint works with any of these.
///
/// Written as one string in URLs (`credentials=`) and config files
/// (`credentials = "..."`): `default`, `none` (or `anonymous`), or the path
/// of a service account key file (`./none` for a key file named `none`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[non_exhaustive]
pub enum GcsCredentials {
    /// Application default credentials (`GOOGLE_APPLICATION_CREDENTIALS`,
    /// gcloud's login, the metadata server). Written `default`.
    Default,
    /// No credentials, for emulators. Written `none` or `anonymous`.
    Anonymous,
    /// A service account key file (JSON): any other value.
    KeyFile(PathBuf),
}

impl GcsCredentials {
    /// Parse the string form (see the type's documentation).
    ///
    /// # Errors
    /// [`Error::Config`] for an empty string.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "" => Err(Error::Config(
                "`credentials` is empty; use `none` (an emulator), `default` (application default credentials) or the path of a service account key file".to_owned(),
            )),
            "default" => Ok(GcsCredentials::Default),
            "none" | "anonymous" => Ok(GcsCredentials::Anonymous),
            path => Ok(GcsCredentials::KeyFile(PathBuf::from(path))),
        }
    }
}

impl TryFrom<String> for GcsCredentials {
    type Error = Error;

    fn try_from(text: String) -> Result<Self> {
        GcsCredentials::parse(&text)
    }
}

impl From<GcsCredentials> for String {
    fn from(c: GcsCredentials) -> String {
        match c {
            GcsCredentials::Default => "default".to_owned(),
            GcsCredentials::Anonymous => "none".to_owned(),
            GcsCredentials::KeyFile(path) => path.display().to_string(),
        }
    }
}

/// Which store, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum StoreConfig {
    /// The in-process memory store (one per process, shared by every
    /// elector of the process): for tests and demos.
    Memory,
    /// etcd v3.
    Etcd {
        /// `host:port` of each member.
        endpoints: Vec<String>,
        /// Use TLS (`etcd+https://`).
        #[serde(default)]
        tls: bool,
        /// The key prefix elections live under (default `/leasehold`; with
        /// `layout = "go"`, empty and taken verbatim).
        #[serde(default)]
        prefix: Option<String>,
        /// The key layout: `"leasehold"` (the default) or `"go"`, the keys
        /// and raw values of etcd's Go `concurrency.Election` and `etcdctl
        /// elect`, to share elections with them (see docs/interop.md).
        #[serde(default)]
        layout: Option<String>,
        /// User for etcd authentication.
        #[serde(default)]
        user: Option<String>,
        /// Password for etcd authentication.
        #[serde(default)]
        password: Option<Secret>,
        /// PEM file of the CA that signed the server certificates.
        #[serde(default)]
        ca: Option<PathBuf>,
        /// PEM file of the client certificate (with `key`).
        #[serde(default)]
        cert: Option<PathBuf>,
        /// PEM file of the client key (with `cert`).
        #[serde(default)]
        key: Option<PathBuf>,
        /// How long to try to connect, e.g. `"5s"`.
        #[serde(default)]
        connect_timeout: Option<String>,
    },
    /// Apache ZooKeeper.
    Zookeeper {
        /// `host:port` of each server.
        hosts: Vec<String>,
        /// The chroot path elections live under (e.g. `/leasehold`).
        #[serde(default)]
        chroot: Option<String>,
        /// The session timeout, e.g. `"6s"`: the lease. Default: the shortest
        /// that covers the election's timings (ttl - safety_margin +
        /// renew_interval); given without `ttl`, the ttl is 30/37 of it.
        #[serde(default)]
        session_timeout: Option<String>,
        /// The lock name in candidate node names: `latch-` (the default,
        /// Apache Curator's LeaderLatch) or `lock-` (Curator's
        /// LeaderSelector and InterProcessMutex). Every participant of an
        /// election must use the same (docs/interop.md).
        #[serde(default)]
        lock_name: Option<String>,
        /// User for digest authentication (nodes get ACLs for this user).
        #[serde(default)]
        user: Option<String>,
        /// Password for digest authentication.
        #[serde(default)]
        password: Option<Secret>,
    },
    /// Google Cloud Storage.
    Gcs {
        /// The bucket.
        bucket: String,
        /// The object name prefix elections live under.
        #[serde(default)]
        prefix: Option<String>,
        /// A custom endpoint (an emulator, a private or regional endpoint),
        /// e.g. `http://127.0.0.1:4443`. It does not change the credentials.
        #[serde(default)]
        endpoint: Option<String>,
        /// How to authenticate; default: application default credentials
        /// (anonymous when `STORAGE_EMULATOR_HOST` names the emulator and
        /// no endpoint is given). An emulator at `endpoint` needs
        /// [`GcsCredentials::Anonymous`] (`credentials = "none"`).
        #[serde(default)]
        credentials: Option<GcsCredentials>,
    },
}

impl StoreConfig {
    /// The scheme name (`memory`, `etcd`, `zookeeper`, `gcs`).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreConfig::Memory => "memory",
            StoreConfig::Etcd { .. } => "etcd",
            StoreConfig::Zookeeper { .. } => "zookeeper",
            StoreConfig::Gcs { .. } => "gcs",
        }
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
        // Given only a ZooKeeper session timeout, the ttl is the longest one
        // the session covers with the derived timings: the session must
        // cover ttl - ttl/10 + ttl/3 = 37/30 ttl (docs/zookeeper.md).
        let zk_session = match &store {
            StoreConfig::Zookeeper {
                session_timeout, ..
            } => session_timeout.clone(),
            _ => None,
        };
        if let Some(ttl) = cfg.ttl.as_deref() {
            options = options.with_ttl(parse_duration("ttl", ttl)?);
        } else if let Some(session) = zk_session.as_deref() {
            options = options.with_ttl(parse_duration("session_timeout", session)? * 30 / 37);
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
        options.validate()?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
        match store {
            StoreConfig::Etcd { layout, .. } => assert_eq!(layout.as_deref(), Some("go")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn toml_unknown_fields_are_refused() {
        let e = ElectionConfig::from_toml("election = \"x\"\nttll = \"5s\"\n").unwrap_err();
        assert!(e.to_string().contains("ttll"), "{e}");
        let e = ElectionConfig::from_toml("[store]\nkind = \"redis\"\n").unwrap_err();
        assert!(e.to_string().contains("redis"), "{e}");
    }

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

    #[test]
    fn gcs_credentials_in_toml_are_independent_of_the_endpoint() {
        let store = |extra: &str| {
            let cfg = ElectionConfig::from_toml(&format!(
                "election = \"e\"\n[store]\nkind = \"gcs\"\nbucket = \"b-b\"\nendpoint = \"https://storage.example:443\"\n{extra}"
            ))
            .unwrap();
            match cfg.resolve().unwrap().0 {
                StoreConfig::Gcs {
                    endpoint,
                    credentials,
                    ..
                } => {
                    assert_eq!(endpoint.as_deref(), Some("https://storage.example:443"));
                    credentials
                }
                other => panic!("{other:?}"),
            }
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

    #[test]
    fn missing_store_or_election_is_explained() {
        let e = ElectionConfig::default().resolve().unwrap_err().to_string();
        assert!(e.contains("no store given"), "{e}");
        let e = ElectionConfig {
            store: Some(StoreConfig::Memory),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.contains("no election name"), "{e}");
    }
}
