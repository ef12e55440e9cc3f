//! The connection settings and their builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use leasehold_core::{Error, Result};
use zookeeper_client::{Acl, AuthId, Permission};

use crate::ZkBackend;
use crate::node::{LockName, path_problem};

/// The session timeout asked for when none is set: the default ttl of
/// `ElectionOptions`.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(15);

/// Digest credentials. The password never appears in `Debug` output.
#[derive(Clone)]
pub(crate) struct Digest {
    pub(crate) user: String,
    pub(crate) password: String,
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Digest")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Everything needed to open (and re-open) a session.
#[derive(Debug)]
pub(crate) struct Config {
    /// `host:port[,host:port...]`, without the chroot.
    pub(crate) hosts: String,
    /// The chroot (`/app`), if any.
    pub(crate) chroot: Option<String>,
    pub(crate) session_timeout: Duration,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) digest: Option<Digest>,
    /// ACLs of every node leasehold creates.
    pub(crate) acls: Vec<Acl>,
    /// The lock name in candidate node names.
    pub(crate) lock_name: LockName,
}

/// Builder of a [`ZkBackend`]: `ZkBackend::builder().connect_string(..).build().await`.
///
/// ```no_run
/// # async fn demo() -> leasehold_core::Result<()> {
/// use std::time::Duration;
/// use leasehold_zookeeper::ZkBackend;
///
/// let backend = ZkBackend::builder()
///     .connect_string("zk1:2181,zk2:2181,zk3:2181/services/leasehold")
///     .session_timeout(Duration::from_secs(10))
///     .digest_auth("orders", "s3cret")
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ZkBackendBuilder {
    connect_string: Option<String>,
    session_timeout: Duration,
    request_timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    digest: Option<Digest>,
    public_read: bool,
    lock_name: LockName,
}

impl fmt::Debug for ZkBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkBackendBuilder")
            .field("connect_string", &self.connect_string)
            .field("session_timeout", &self.session_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("digest", &self.digest)
            .field("public_read", &self.public_read)
            .field("lock_name", &self.lock_name)
            .finish()
    }
}

impl Default for ZkBackendBuilder {
    fn default() -> Self {
        ZkBackendBuilder {
            connect_string: None,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
            request_timeout: None,
            connect_timeout: None,
            digest: None,
            public_read: true,
            lock_name: LockName::Latch,
        }
    }
}

impl ZkBackendBuilder {
    /// A builder with the defaults (no connect string yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// The ZooKeeper connect string: comma-separated `host:port` pairs,
    /// optionally followed by a chroot (`zk1:2181,zk2:2181/app/locks`). The
    /// chroot must exist: leasehold never creates it, and a missing one is
    /// an [`Error::Config`] naming it (from `leader`, `observe` and every
    /// campaign), never "no leader".
    pub fn connect_string(mut self, connect_string: impl Into<String>) -> Self {
        self.connect_string = Some(connect_string.into());
        self
    }

    /// The session timeout to ask the server for (default 15 s). The server
    /// clamps it to 2..20 × its tickTime; the negotiated value is
    /// [`ZkBackend::session_timeout`]. The session is the lease: it must
    /// cover `ttl - safety_margin + renew_interval` of every election run
    /// through the backend ([`ZkBackend::min_session_timeout`]).
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Bound on every single request (default: a third of the negotiated
    /// session timeout). A request made while the client is disconnected
    /// would otherwise wait until the session expires.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Bound on opening a session (default: the session timeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Authenticate with ZooKeeper's `digest` scheme and protect every node
    /// leasehold creates (election directories, candidate nodes)
    /// with ACLs: all rights for this identity, nothing (or read, see
    /// [`public_read`](Self::public_read)) for anyone else. Clients without
    /// these credentials then cannot delete, overwrite or add candidates.
    pub fn digest_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.digest = Some(Digest {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// With [`digest_auth`](Self::digest_auth): whether clients without the
    /// credentials may read the election (who leads) (default `true`).
    /// Without digest auth every node is open to everyone (`world:anyone`).
    pub fn public_read(mut self, public_read: bool) -> Self {
        self.public_read = public_read;
        self
    }

    /// The lock name of candidate nodes (default [`LockName::Latch`],
    /// `latch-`): which Apache Curator recipe this backend's elections can
    /// share a path with. `latch-` for Curator's `LeaderLatch`, `lock-` for
    /// `LeaderSelector` and `InterProcessMutex`. Every participant of one
    /// election must use the same; a child of the election path under
    /// another name makes campaigns, `leader` and `observe` fail with
    /// [`Error::InvalidRecord`] naming it (Curator would not agree on who
    /// leads). See docs/interop.md.
    pub fn lock_name(mut self, lock_name: LockName) -> Self {
        self.lock_name = lock_name;
        self
    }

    /// Check the settings without connecting.
    pub(crate) fn into_config(self) -> Result<Config> {
        let connect_string = self.connect_string.ok_or_else(|| {
            Error::Config(
                "no ZooKeeper connect string; call .connect_string(\"host:2181[,host2:2181][/chroot]\")"
                    .into(),
            )
        })?;
        let (hosts, chroot) = split_connect_string(&connect_string)?;
        if self.session_timeout.is_zero() {
            return Err(Error::invalid_option(
                "session_timeout",
                "must be above zero; ZooKeeper allows 2 to 20 x the server's tickTime",
            ));
        }
        for (field, t) in [
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if t.is_some_and(|t| t.is_zero()) {
                return Err(Error::invalid_option(field, "must be above zero"));
            }
        }
        if let Some(d) = &self.digest
            && (d.user.is_empty() || d.user.contains(':'))
        {
            return Err(Error::invalid_option(
                "digest_auth",
                format!(
                    "user {:?} must be non-empty and contain no ':' (the digest scheme joins user:password)",
                    d.user
                ),
            ));
        }
        let acls = match (&self.digest, self.public_read) {
            (None, _) => vec![Acl::new(Permission::ALL, AuthId::anyone())],
            (Some(_), true) => vec![
                Acl::new(Permission::ALL, AuthId::authed()),
                Acl::new(Permission::READ, AuthId::anyone()),
            ],
            (Some(_), false) => vec![Acl::new(Permission::ALL, AuthId::authed())],
        };
        Ok(Config {
            hosts,
            chroot,
            session_timeout: self.session_timeout,
            request_timeout: self.request_timeout,
            connect_timeout: self.connect_timeout,
            digest: self.digest,
            acls,
            lock_name: self.lock_name,
        })
    }

    /// Open the session.
    ///
    /// # Errors
    /// [`Error::Config`] / [`Error::InvalidOption`] for bad settings,
    /// [`Error::Timeout`] or [`Error::Unavailable`] when no server answers
    /// in time, [`Error::PermissionDenied`] when the credentials are refused.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves no session behind.
    pub async fn build(self) -> Result<ZkBackend> {
        let config = Arc::new(self.into_config()?);
        ZkBackend::open(config).await
    }
}

/// Split `h1:2181,h2:2181/chroot` into hosts and chroot. Hosts may carry a
/// `tcp://` scheme, whose slashes are not the chroot's.
pub(crate) fn split_connect_string(s: &str) -> Result<(String, Option<String>)> {
    let bytes = s.as_bytes();
    let mut at = None;
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'/' {
            continue;
        }
        let after_colon = i >= 1 && bytes[i - 1] == b':';
        let second_of_scheme = i >= 2 && bytes[i - 1] == b'/' && bytes[i - 2] == b':';
        if !after_colon && !second_of_scheme {
            at = Some(i);
            break;
        }
    }
    let (hosts, chroot) = match at {
        Some(i) => (&s[..i], Some(&s[i..])),
        None => (s, None),
    };
    if hosts.split(',').any(|h| h.trim().is_empty()) {
        return Err(Error::Config(format!(
            "ZooKeeper connect string {s:?} has an empty host; expected \"host:port[,host:port...][/chroot]\""
        )));
    }
    let chroot = match chroot {
        None | Some("/") => None,
        Some(c) => {
            if let Some(problem) = path_problem(&c[1..]) {
                return Err(Error::Config(format!(
                    "ZooKeeper connect string {s:?}: chroot {c:?} {problem}"
                )));
            }
            Some(c.to_owned())
        }
    };
    Ok((hosts.to_owned(), chroot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_strings() {
        assert_eq!(
            split_connect_string("127.0.0.1:2181").unwrap(),
            ("127.0.0.1:2181".into(), None)
        );
        assert_eq!(
            split_connect_string("a:1,b:2/x/y").unwrap(),
            ("a:1,b:2".into(), Some("/x/y".into()))
        );
        assert_eq!(split_connect_string("a:1/").unwrap(), ("a:1".into(), None));
        assert_eq!(
            split_connect_string("tcp://a:1,tcp://b:2/app").unwrap(),
            ("tcp://a:1,tcp://b:2".into(), Some("/app".into()))
        );
        for bad in ["", "a:1,,b:2", "a:1/x/", "a:1//x", "a:1/x/../y"] {
            assert!(
                matches!(split_connect_string(bad), Err(Error::Config(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn settings_are_checked_and_secrets_hidden() {
        let b = ZkBackendBuilder::new()
            .connect_string("127.0.0.1:2181")
            .digest_auth("user", "hunter2");
        let shown = format!("{b:?}");
        assert!(
            shown.contains("user") && !shown.contains("hunter2"),
            "{shown}"
        );
        let c = b.clone().into_config().unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.acls.len(), 2);
        assert_eq!(b.public_read(false).into_config().unwrap().acls.len(), 1);
        assert!(matches!(
            ZkBackendBuilder::new().into_config(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            ZkBackendBuilder::new()
                .connect_string("h:1")
                .session_timeout(Duration::ZERO)
                .into_config(),
            Err(Error::InvalidOption {
                field: "session_timeout",
                ..
            })
        ));
        assert!(matches!(
            ZkBackendBuilder::new()
                .connect_string("h:1")
                .digest_auth("a:b", "p")
                .into_config(),
            Err(Error::InvalidOption {
                field: "digest_auth",
                ..
            })
        ));
    }
}
