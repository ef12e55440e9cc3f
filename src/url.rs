//! Store URLs: `SCHEME://[user:password@]HOSTS[/PATH][?OPTIONS]`, one
//! scheme or more per store of [`STORES`](crate::STORES).
//!
//! ```text
//! etcd://[user:password@]host:port[,host:port...]/ELECTION[?options]
//! etcd+https://...                     (TLS: ca=, cert=, key=)
//! zk://[user:password@]host:port[,...][/chroot/path]/ELECTION[?session_timeout=6s&lock_name=lock-]
//! gs://BUCKET[/prefix/path]/ELECTION[?endpoint=URL&credentials=none|default|key.json]
//! memory://ELECTION
//! ```
//!
//! This module reads the scheme and the options every store shares (`id`,
//! `value`, `ttl`, `renew_interval`, `retry_interval`, `safety_margin`,
//! `request_timeout`); the store's driver reads the rest (its hosts, user,
//! path, and its own options, e.g. etcd's `prefix`). Values are
//! percent-decoded. Nothing here ever echoes a password.

use leasehold_core::driver::{KeyKind, Secret, StoreParams, StoreUrl, Value};

use crate::config::{ElectionConfig, StoreConfig};
use crate::stores::{self, scheme_list};
use crate::{Error, Result};

/// The options every store takes, in URLs and config files alike.
pub(crate) const COMMON: [&str; 7] = [
    "id",
    "value",
    "ttl",
    "renew_interval",
    "retry_interval",
    "safety_margin",
    "request_timeout",
];

fn err(msg: impl Into<String>) -> Error {
    Error::Config(msg.into())
}

/// Parse a store URL into a config.
pub(crate) fn parse(input: &str) -> Result<ElectionConfig> {
    let Some((scheme, _)) = input.trim().split_once("://") else {
        return Err(err(format!(
            "not a store URL (no \"://\"): expected SCHEME://..., e.g. etcd://127.0.0.1:2379/my-election; schemes: {}",
            scheme_list()
        )));
    };
    let scheme = scheme.to_ascii_lowercase();
    let Some(entry) = stores::by_scheme(&scheme) else {
        return Err(err(format!(
            "unknown scheme {scheme:?}; use one of {}",
            scheme_list()
        )));
    };
    let driver = entry.driver()?;
    let mut url = StoreUrl::parse(input)?;
    let mut options = std::mem::take(&mut url.options);
    let mut cfg = ElectionConfig {
        id: options.remove("id"),
        value: options.remove("value"),
        ttl: options.remove("ttl"),
        renew_interval: options.remove("renew_interval"),
        retry_interval: options.remove("retry_interval"),
        safety_margin: options.remove("safety_margin"),
        request_timeout: options.remove("request_timeout"),
        ..ElectionConfig::default()
    };
    let mut params = StoreParams::new();
    for (name, text) in options {
        let Some(key) = driver
            .keys()
            .iter()
            .find(|k| k.in_url && k.name == name.as_str())
        else {
            let mut allowed: Vec<&str> = COMMON.to_vec();
            allowed.extend(driver.keys().iter().filter(|k| k.in_url).map(|k| k.name));
            return Err(err(format!(
                "unknown option `{name}` for {}; allowed: {}",
                entry.name,
                allowed.join(", ")
            )));
        };
        let value = match key.kind {
            KeyKind::Flag => match text.as_str() {
                "true" => Value::Flag(true),
                "false" => Value::Flag(false),
                _ => {
                    return Err(err(format!(
                        "option `{name}`: {text:?} is not true or false"
                    )));
                }
            },
            KeyKind::List => Value::List(text.split(',').map(str::to_owned).collect()),
            KeyKind::Secret => Value::Secret(Secret::new(text)),
            _ => Value::Text(text),
        };
        params.insert(name, value);
    }
    cfg.election = driver.read_url(&url, &mut params)?;
    cfg.store = Some(StoreConfig::new(entry.name, params)?);
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(url: &str) -> String {
        match parse(url) {
            Ok(c) => panic!("{url} parsed: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn etcd_urls() {
        let cfg = parse("etcd://h1:2379,h2/my-election?ttl=10s&prefix=/leasehold&id=w1").unwrap();
        assert_eq!(cfg.election.as_deref(), Some("my-election"));
        assert_eq!(cfg.ttl.as_deref(), Some("10s"));
        assert_eq!(cfg.id.as_deref(), Some("w1"));
        let store = cfg.store.unwrap();
        assert_eq!(store.kind(), "etcd");
        let p = store.params();
        assert_eq!(p.list("endpoints").unwrap(), ["h1:2379", "h2:2379"]);
        assert_eq!(p.text("prefix"), Some("/leasehold"));
        assert!(!p.flag("tls"));
        let store = parse("etcd://h/billing?layout=go&prefix=/services/")
            .unwrap()
            .store
            .unwrap();
        assert_eq!(store.params().text("layout"), Some("go"));
        assert_eq!(store.params().text("prefix"), Some("/services/"));
        let store =
            parse("etcd+https://app:s3cr%40t@[::1]:2379/e?ca=/ca.pem&cert=/c.pem&key=/k.pem")
                .unwrap()
                .store
                .unwrap();
        let p = store.params();
        assert_eq!(p.list("endpoints").unwrap(), ["[::1]:2379"]);
        assert!(p.flag("tls"));
        assert_eq!(p.text("user"), Some("app"));
        assert_eq!(p.secret("password").map(Secret::expose), Some("s3cr@t"));
        assert_eq!(p.text("ca"), Some("/ca.pem"));
    }

    #[cfg(all(feature = "zookeeper", feature = "gcs"))]
    #[test]
    fn zookeeper_gcs_and_memory_urls() {
        let cfg = parse(
            "zk://h1:2181,h2:2181/apps/leasehold/my-election?session_timeout=6s&lock_name=lock-",
        )
        .unwrap();
        assert_eq!(cfg.election.as_deref(), Some("my-election"));
        let store = cfg.store.unwrap();
        assert_eq!(store.kind(), "zookeeper");
        let p = store.params();
        assert_eq!(p.list("hosts").unwrap(), ["h1:2181", "h2:2181"]);
        assert_eq!(p.text("chroot"), Some("/apps/leasehold"));
        assert_eq!(p.text("session_timeout"), Some("6s"));
        assert_eq!(p.text("lock_name"), Some("lock-"));
        let cfg =
            parse("gs://my-bucket/locks/prod/my-election?endpoint=http://127.0.0.1:4443").unwrap();
        assert_eq!(cfg.election.as_deref(), Some("my-election"));
        let store = cfg.store.unwrap();
        assert_eq!(store.kind(), "gcs");
        let p = store.params();
        assert_eq!(p.text("bucket"), Some("my-bucket"));
        assert_eq!(p.text("prefix"), Some("locks/prod"));
        assert_eq!(p.text("endpoint"), Some("http://127.0.0.1:4443"));
        // The endpoint does not choose the credentials: each is given on its own.
        let credentials = |url: &str| {
            let store = parse(url).unwrap().store.unwrap();
            let p = store.params();
            (
                p.text("endpoint").map(str::to_owned),
                p.text("credentials").map(str::to_owned),
            )
        };
        let private = Some("https://storage-eu.p.example".to_owned());
        assert_eq!(
            credentials("gs://b-b/e?endpoint=https://storage-eu.p.example"),
            (private.clone(), None)
        );
        assert_eq!(
            credentials("gs://b-b/e?endpoint=https://storage-eu.p.example&credentials=default"),
            (private, Some("default".to_owned()))
        );
        assert_eq!(
            credentials("gs://b-b/e?endpoint=http://127.0.0.1:4443&credentials=none"),
            (
                Some("http://127.0.0.1:4443".to_owned()),
                Some("none".to_owned())
            )
        );
        assert_eq!(
            credentials("gs://b-b/e?credentials=/keys/sa.json"),
            (None, Some("/keys/sa.json".to_owned()))
        );
        let e = parse("gs://b-b/e?credentials=").unwrap_err().to_string();
        assert!(e.contains("`credentials` is empty"), "{e}");
    }

    #[test]
    fn memory_urls() {
        let cfg = parse("memory://my-election?value=10.0.0.1%3A80").unwrap();
        assert_eq!(cfg.election.as_deref(), Some("my-election"));
        assert_eq!(cfg.value.as_deref(), Some("10.0.0.1:80"));
        assert_eq!(cfg.store.unwrap().kind(), "memory");
        let cfg = parse("MEMORY://a/b").unwrap();
        assert_eq!(cfg.election.as_deref(), Some("a/b"));
        for (url, want) in [
            ("127.0.0.1:2379/e", "no \"://\""),
            ("redis://h/e", "unknown scheme \"redis\""),
            ("memory://u@e", "takes no user"),
            ("memory://e?ttl", "has no value"),
            ("memory://e?ttl=1s&ttl=2s", "given twice"),
            (
                "memory://e?prefix=x",
                "unknown option `prefix` for memory; allowed: id, value, ttl, renew_interval, retry_interval, safety_margin, request_timeout",
            ),
            ("memory://e#frag", "no fragment"),
            ("memory://e?value=%zz", "bad percent-escape"),
        ] {
            let e = error(url);
            assert!(e.contains(want), "{url}: {e:?} does not contain {want:?}");
        }
        let e = error("redis://h/e");
        assert!(
            e.contains(
                "memory://, etcd://, etcd+http://, etcd+https://, zk://, zookeeper://, gs://"
            ),
            "{e}"
        );
    }

    #[cfg(all(feature = "etcd", feature = "zookeeper", feature = "gcs"))]
    #[test]
    fn bad_urls_say_what_is_wrong() {
        let cases = [
            ("127.0.0.1:2379/e", "no \"://\""),
            ("redis://h/e", "unknown scheme \"redis\""),
            ("etcd:///e", "missing host"),
            ("etcd://h:99999/e", "port \"99999\""),
            ("etcd://h:x/e", "port \"x\""),
            ("etcd://h1,,h2/e", "empty host"),
            ("etcd://h/e?ttl", "has no value"),
            ("etcd://h/e?ttl=1s&ttl=2s", "given twice"),
            (
                "etcd://h/e?tls=1",
                "unknown option `tls` for etcd; allowed: id, value, ttl",
            ),
            ("etcd://h/e?ca=/x", "need TLS"),
            ("etcd+https://h/e?cert=/x", "go together"),
            ("etcd://h/e?value=%zz", "bad percent-escape"),
            (
                "zk://h/e?prefix=/x",
                "unknown option `prefix` for zookeeper",
            ),
            ("zk://u@h/e", "both user and password"),
            ("gs:///e", "missing bucket"),
            ("gs://u:p@b/e", "no user or password"),
            ("etcd://h/e#frag", "no fragment"),
        ];
        for (url, want) in cases {
            let e = error(url);
            assert!(e.contains(want), "{url}: {e:?} does not contain {want:?}");
        }
    }

    #[cfg(all(feature = "etcd", feature = "zookeeper", feature = "gcs"))]
    #[test]
    fn the_election_may_come_from_elsewhere() {
        for url in [
            "etcd://h:2379",
            "etcd://h:2379/",
            "zk://h/apps/x/",
            "gs://b/p/",
            "memory://",
        ] {
            let cfg = parse(url).unwrap();
            assert_eq!(cfg.election, None, "{url}");
            let e = cfg.resolve().unwrap_err().to_string();
            assert!(e.contains("no election name"), "{url}: {e}");
        }
        let store = parse("zk://h:2181/apps/x/").unwrap().store.unwrap();
        assert_eq!(store.params().text("chroot"), Some("/apps/x"));
    }

    #[cfg(all(feature = "etcd", feature = "zookeeper"))]
    #[test]
    fn passwords_never_show() {
        for url in [
            "etcd://root:hunter2@h:2379/e",
            "zk://u:hunter2@h:2181/e",
            "etcd://root:hunter2@h:2379/e?bogus=1",
            "etcd://root:hunter2@h:99999/e",
        ] {
            let shown = match parse(url) {
                Ok(c) => format!("{c:?}"),
                Err(e) => format!("{e} {e:?}"),
            };
            assert!(!shown.contains("hunter2"), "{url}: {shown}");
        }
    }

    #[test]
    fn random_input_never_panics() {
        // A small deterministic fuzz: random strings built from the URL
        // alphabet and mutations of valid URLs.
        let seeds = [
            "etcd://h1:2379,h2:2379/e?ttl=10s&prefix=/x",
            "etcd+https://u:p@[::1]:2379/e?ca=/a&cert=/b&key=/c",
            "zk://h:2181/a/b/c?session_timeout=6s",
            "gs://bucket/p/q/e?endpoint=http://x:1",
            "memory://e",
        ];
        let alphabet: Vec<char> = "aez019:/?&=%@[],.#+-_ \u{e9}\u{0}".chars().collect();
        let mut rng = fastrand::Rng::with_seed(0x1ea5e);
        for i in 0..20_000 {
            let s: String = if i % 2 == 0 {
                let len = rng.usize(0..40);
                (0..len)
                    .map(|_| alphabet[rng.usize(..alphabet.len())])
                    .collect()
            } else {
                let mut chars: Vec<char> = seeds[rng.usize(..seeds.len())].chars().collect();
                for _ in 0..rng.usize(1..4) {
                    let at = rng.usize(..=chars.len());
                    match rng.u8(0..3) {
                        0 if at < chars.len() => {
                            chars.remove(at);
                        }
                        1 => chars.insert(at, alphabet[rng.usize(..alphabet.len())]),
                        _ if at < chars.len() => chars[at] = alphabet[rng.usize(..alphabet.len())],
                        _ => {}
                    }
                }
                chars.into_iter().collect()
            };
            if let Ok(cfg) = parse(&s) {
                // Whatever parses must also resolve without panicking.
                let _ = cfg.resolve();
            }
        }
    }
}
