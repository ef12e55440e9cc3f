//! Store URLs: `etcd://`, `etcd+https://`, `zk://`, `gs://`, `memory://`.
//!
//! ```text
//! etcd://[user:password@]host:port[,host:port...]/ELECTION[?options]
//! etcd+https://...                     (TLS: ca=, cert=, key=)
//! zk://[user:password@]host:port[,...][/chroot/path]/ELECTION[?session_timeout=6s&lock_name=lock-]
//! gs://BUCKET[/prefix/path]/ELECTION[?endpoint=URL&credentials=none|default|key.json]
//! memory://ELECTION
//! ```
//!
//! Options for every store: `id`, `value`, `ttl`, `renew_interval`,
//! `retry_interval`, `safety_margin`, `request_timeout`; etcd also `prefix`,
//! `layout` (`leasehold` or `go`), `connect_timeout` and the TLS files.
//! Values are percent-decoded. Nothing here ever echoes a password.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::{ElectionConfig, GcsCredentials, Secret, StoreConfig};
use crate::{Error, Result};

const COMMON: [&str; 7] = [
    "id",
    "value",
    "ttl",
    "renew_interval",
    "retry_interval",
    "safety_margin",
    "request_timeout",
];

/// The schemes this parser knows, with the cargo feature each needs.
pub const SCHEMES: [(&str, &str); 7] = [
    ("memory", "(always available)"),
    ("etcd", "etcd"),
    ("etcd+http", "etcd"),
    ("etcd+https", "etcd"),
    ("zk", "zookeeper"),
    ("zookeeper", "zookeeper"),
    ("gs", "gcs"),
];

fn err(msg: impl Into<String>) -> Error {
    Error::Config(msg.into())
}

fn scheme_list() -> String {
    SCHEMES
        .iter()
        .map(|(s, _)| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parse a store URL into a config.
pub(crate) fn parse(input: &str) -> Result<ElectionConfig> {
    let input = input.trim();
    let Some((scheme, rest)) = input.split_once("://") else {
        return Err(err(format!(
            "not a store URL (no \"://\"): expected SCHEME://..., e.g. etcd://127.0.0.1:2379/my-election; schemes: {}",
            scheme_list()
        )));
    };
    let scheme = scheme.to_ascii_lowercase();
    if !SCHEMES.iter().any(|(s, _)| *s == scheme) {
        return Err(err(format!(
            "unknown scheme {scheme:?}; use one of {}",
            scheme_list()
        )));
    }
    if rest.contains('#') {
        return Err(err(
            "a store URL has no fragment ('#'); percent-encode it as %23 in values",
        ));
    }
    let (head, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    let mut params = parse_query(query.unwrap_or(""))?;
    let (authority, path) = match head.split_once('/') {
        Some((a, p)) => (a, p),
        None => (head, ""),
    };
    let (userinfo, hosts) = match authority.rsplit_once('@') {
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
            let name = decode("user name", name)?;
            if name.is_empty() {
                return Err(err("empty user name before '@'"));
            }
            let pass = pass
                .map(|p| decode("password", p).map(Secret::new))
                .transpose()?;
            (Some(name), pass)
        }
    };
    let mut cfg = ElectionConfig::default();
    let store = match scheme.as_str() {
        "memory" => {
            if userinfo.is_some() {
                return Err(err("memory:// takes no user or password"));
            }
            let name = if path.is_empty() {
                hosts.to_owned()
            } else if hosts.is_empty() {
                path.to_owned()
            } else {
                format!("{hosts}/{path}")
            };
            cfg.election = election(&name)?;
            check_known(&params, &COMMON, "memory")?;
            StoreConfig::Memory
        }
        "etcd" | "etcd+http" | "etcd+https" => {
            let endpoints = host_list(hosts, 2379, "etcd://HOST:PORT/ELECTION")?;
            cfg.election = election(path)?;
            check_known(
                &params,
                &["prefix", "layout", "ca", "cert", "key", "connect_timeout"],
                "etcd",
            )?;
            let tls = scheme == "etcd+https";
            let ca = params.remove("ca").map(PathBuf::from);
            let cert = params.remove("cert").map(PathBuf::from);
            let key = params.remove("key").map(PathBuf::from);
            if !tls && (ca.is_some() || cert.is_some() || key.is_some()) {
                return Err(err(
                    "`ca`, `cert` and `key` need TLS: use the etcd+https:// scheme",
                ));
            }
            if cert.is_some() != key.is_some() {
                return Err(err("`cert` and `key` go together: give both or neither"));
            }
            if password.is_some() && user.is_none() {
                return Err(err("a password needs a user name (user:password@host)"));
            }
            StoreConfig::Etcd {
                endpoints,
                tls,
                prefix: params.remove("prefix"),
                layout: params.remove("layout"),
                user,
                password,
                ca,
                cert,
                key,
                connect_timeout: params.remove("connect_timeout"),
            }
        }
        "zk" | "zookeeper" => {
            let hosts = host_list(hosts, 2181, "zk://HOST:PORT/ELECTION")?;
            let (chroot, name) = match path.rsplit_once('/') {
                Some((c, n)) => (Some(format!("/{c}")), n),
                None => (None, path),
            };
            if let Some(c) = &chroot
                && c.split('/').skip(1).any(str::is_empty)
            {
                return Err(err(format!("chroot {c:?} has an empty path segment")));
            }
            cfg.election = election(name)?;
            check_known(&params, &["session_timeout", "lock_name"], "zookeeper")?;
            if password.is_some() != user.is_some() {
                return Err(err(
                    "digest authentication needs both user and password (user:password@host)",
                ));
            }
            StoreConfig::Zookeeper {
                hosts,
                chroot,
                session_timeout: params.remove("session_timeout"),
                lock_name: params.remove("lock_name"),
                user,
                password,
            }
        }
        "gs" => {
            if userinfo.is_some() {
                return Err(err(
                    "gs:// takes no user or password in the URL; use `credentials=/path/key.json` or application default credentials",
                ));
            }
            if hosts.is_empty() {
                return Err(err("missing bucket: write gs://BUCKET[/prefix]/ELECTION"));
            }
            let (prefix, name) = match path.rsplit_once('/') {
                Some((p, n)) => (Some(p.to_owned()), n),
                None => (None, path),
            };
            cfg.election = election(name)?;
            check_known(&params, &["endpoint", "credentials"], "gs")?;
            StoreConfig::Gcs {
                bucket: decode("bucket", hosts)?,
                prefix,
                endpoint: params.remove("endpoint"),
                credentials: params
                    .remove("credentials")
                    .map(|c| GcsCredentials::parse(&c))
                    .transpose()?,
            }
        }
        _ => unreachable_scheme(&scheme)?,
    };
    cfg.store = Some(store);
    cfg.id = params.remove("id");
    cfg.value = params.remove("value");
    cfg.ttl = params.remove("ttl");
    cfg.renew_interval = params.remove("renew_interval");
    cfg.retry_interval = params.remove("retry_interval");
    cfg.safety_margin = params.remove("safety_margin");
    cfg.request_timeout = params.remove("request_timeout");
    Ok(cfg)
}

fn unreachable_scheme(scheme: &str) -> Result<StoreConfig> {
    Err(err(format!(
        "unknown scheme {scheme:?}; use one of {}",
        scheme_list()
    )))
}

/// The election name from the URL; `None` when the URL leaves it out (the
/// caller then supplies it, e.g. the CLI's `--name`).
fn election(raw: &str) -> Result<Option<String>> {
    let name = decode("election name", raw)?;
    Ok((!name.is_empty()).then_some(name))
}

fn check_known(params: &BTreeMap<String, String>, own: &[&str], store: &str) -> Result<()> {
    for k in params.keys() {
        if !COMMON.contains(&k.as_str()) && !own.contains(&k.as_str()) {
            let mut allowed: Vec<&str> = COMMON.to_vec();
            allowed.extend_from_slice(own);
            return Err(err(format!(
                "unknown option `{k}` for {store}; allowed: {}",
                allowed.join(", ")
            )));
        }
    }
    Ok(())
}

fn host_list(hosts: &str, default_port: u16, form: &str) -> Result<Vec<String>> {
    if hosts.is_empty() {
        return Err(err(format!("missing host: write {form}")));
    }
    let mut out = Vec::new();
    for h in hosts.split(',') {
        if h.is_empty() {
            return Err(err(format!("empty host in the host list {hosts:?}")));
        }
        let (name, port) = if let Some(rest) = h.strip_prefix('[') {
            // [v6]:port
            let (addr, after) = rest
                .split_once(']')
                .ok_or_else(|| err(format!("host {h:?}: unclosed '[' in an IPv6 address")))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(err(format!("host {h:?}: expected ':PORT' after ']'"))),
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
            return Err(err(format!("bad host name {name:?} in {hosts:?}")));
        }
        let port = match port {
            None => default_port,
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                err(format!(
                    "host {name}: port {p:?} is not a number from 1 to 65535"
                ))
            })?,
        };
        out.push(format!("{name}:{port}"));
    }
    Ok(out)
}

fn parse_query(q: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| err(format!("option {pair:?} has no value: write {pair}=VALUE")))?;
        let k = decode("option name", k)?;
        let v = decode(&format!("option `{k}`"), v)?;
        if out.insert(k.clone(), v).is_some() {
            return Err(err(format!("option `{k}` is given twice")));
        }
    }
    Ok(out)
}

/// Percent-decode `s` (`+` stays `+`), as UTF-8.
fn decode(what: &str, s: &str) -> Result<String> {
    // percent-encoding passes a malformed escape through as is; a URL with
    // one is a typo, so refuse it with a message rather than guess.
    let bytes = s.as_bytes();
    for (i, _) in s.match_indices('%') {
        let ok = bytes
            .get(i + 1..i + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        if !ok {
            return Err(err(format!(
                "{what}: bad percent-escape (write %XX with two hex digits)"
            )));
        }
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| err(format!("{what}: percent-escapes do not decode to UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(url: &str) -> StoreConfig {
        parse(url).unwrap().store.unwrap()
    }

    fn error(url: &str) -> String {
        match parse(url) {
            Ok(c) => panic!("{url} parsed: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn etcd_urls() {
        let cfg = parse("etcd://h1:2379,h2/my-election?ttl=10s&prefix=/leasehold&id=w1").unwrap();
        assert_eq!(cfg.election.as_deref(), Some("my-election"));
        assert_eq!(cfg.ttl.as_deref(), Some("10s"));
        assert_eq!(cfg.id.as_deref(), Some("w1"));
        match cfg.store.unwrap() {
            StoreConfig::Etcd {
                endpoints,
                prefix,
                tls,
                ..
            } => {
                assert_eq!(endpoints, ["h1:2379", "h2:2379"]);
                assert_eq!(prefix.as_deref(), Some("/leasehold"));
                assert!(!tls);
            }
            other => panic!("{other:?}"),
        }
        match store("etcd://h/billing?layout=go&prefix=/services/") {
            StoreConfig::Etcd { layout, prefix, .. } => {
                assert_eq!(layout.as_deref(), Some("go"));
                assert_eq!(prefix.as_deref(), Some("/services/"));
            }
            other => panic!("{other:?}"),
        }
        match store("etcd+https://app:s3cr%40t@[::1]:2379/e?ca=/ca.pem&cert=/c.pem&key=/k.pem") {
            StoreConfig::Etcd {
                endpoints,
                tls,
                user,
                password,
                ca,
                ..
            } => {
                assert_eq!(endpoints, ["[::1]:2379"]);
                assert!(tls);
                assert_eq!(user.as_deref(), Some("app"));
                assert_eq!(password.as_ref().map(Secret::expose), Some("s3cr@t"));
                assert_eq!(ca, Some(PathBuf::from("/ca.pem")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn zookeeper_gcs_and_memory_urls() {
        let cfg = parse(
            "zk://h1:2181,h2:2181/apps/leasehold/my-election?session_timeout=6s&lock_name=lock-",
        )
        .unwrap();
        assert_eq!(cfg.election.as_deref(), Some("my-election"));
        match cfg.store.unwrap() {
            StoreConfig::Zookeeper {
                hosts,
                chroot,
                session_timeout,
                lock_name,
                ..
            } => {
                assert_eq!(hosts, ["h1:2181", "h2:2181"]);
                assert_eq!(chroot.as_deref(), Some("/apps/leasehold"));
                assert_eq!(session_timeout.as_deref(), Some("6s"));
                assert_eq!(lock_name.as_deref(), Some("lock-"));
            }
            other => panic!("{other:?}"),
        }
        let cfg =
            parse("gs://my-bucket/locks/prod/my-election?endpoint=http://127.0.0.1:4443").unwrap();
        assert_eq!(cfg.election.as_deref(), Some("my-election"));
        match cfg.store.unwrap() {
            StoreConfig::Gcs {
                bucket,
                prefix,
                endpoint,
                ..
            } => {
                assert_eq!(bucket, "my-bucket");
                assert_eq!(prefix.as_deref(), Some("locks/prod"));
                assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:4443"));
            }
            other => panic!("{other:?}"),
        }
        // The endpoint does not choose the credentials: each is given on its own.
        let credentials = |url: &str| match parse(url).unwrap().store.unwrap() {
            StoreConfig::Gcs {
                endpoint,
                credentials,
                ..
            } => (endpoint, credentials),
            other => panic!("{other:?}"),
        };
        let private = Some("https://storage-eu.p.example".to_owned());
        assert_eq!(
            credentials("gs://b-b/e?endpoint=https://storage-eu.p.example"),
            (private.clone(), None)
        );
        assert_eq!(
            credentials("gs://b-b/e?endpoint=https://storage-eu.p.example&credentials=default"),
            (private, Some(GcsCredentials::Default))
        );
        assert_eq!(
            credentials("gs://b-b/e?endpoint=http://127.0.0.1:4443&credentials=none"),
            (
                Some("http://127.0.0.1:4443".to_owned()),
                Some(GcsCredentials::Anonymous)
            )
        );
        assert_eq!(
            credentials("gs://b-b/e?credentials=anonymous"),
            (None, Some(GcsCredentials::Anonymous))
        );
        assert_eq!(
            credentials("gs://b-b/e?credentials=/keys/sa.json"),
            (None, Some(GcsCredentials::KeyFile("/keys/sa.json".into())))
        );
        let e = parse("gs://b-b/e?credentials=").unwrap_err().to_string();
        assert!(e.contains("`credentials` is empty"), "{e}");
        let cfg = parse("memory://my-election?value=10.0.0.1%3A80").unwrap();
        assert_eq!(cfg.election.as_deref(), Some("my-election"));
        assert_eq!(cfg.value.as_deref(), Some("10.0.0.1:80"));
    }

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
        match store("zk://h:2181/apps/x/") {
            StoreConfig::Zookeeper { chroot, .. } => assert_eq!(chroot.as_deref(), Some("/apps/x")),
            other => panic!("{other:?}"),
        }
    }

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
