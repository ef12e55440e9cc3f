//! The one error type of leasehold.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A leasehold result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
///
/// Losing an election is *not* an error: "someone else holds it" is the
/// [`Attempt::Held`](crate::Attempt::Held) outcome. An error means that a
/// step could not be carried out, and [`Error::Lost`] means that a lease this
/// candidate believed it held is gone.
///
/// Errors are `Clone` and `PartialEq` so they can be stored, broadcast and
/// compared in tests. A store's failure keeps the store client's own error
/// as its [`source`](std::error::Error::source) ([`Source`]) beside a
/// message in the user's words; equality compares kinds and messages only.
///
/// Which errors the engine retries is [`Error::is_transient`]: the store
/// could not be reached or did not answer in time. Everything else (a
/// refusal, a configuration error, an error a backend could not classify,
/// [`Error::Backend`]) ends a campaign with the error rather than retrying
/// it for ever.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option is out of range or inconsistent with another one.
    #[error("invalid option `{field}`: {reason}")]
    InvalidOption {
        /// The offending field, as named in the builder (`ttl`, `renew_interval`, ...).
        field: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },

    /// Configuration that is not a single option is wrong (a URL, a config file).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The lease or claim this call was made for no longer exists on the
    /// store: it expired, was deleted, or another candidate took over.
    #[error("lease lost: {0}")]
    Lost(String),

    /// The store could not be reached or did not answer in time. Retried by
    /// the engine; counts against the leader's local deadline.
    #[error("{backend} store unavailable: {message}")]
    Unavailable {
        /// The backend name (`etcd`, `zookeeper`, `gcs`, `memory`).
        backend: &'static str,
        /// The store's or the transport's message.
        message: String,
        /// The store client's error, when there is one.
        #[source]
        source: Option<Source>,
    },

    /// A call took longer than allowed.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        operation: &'static str,
        /// The bound that was exceeded.
        after: Duration,
    },

    /// The backend cannot do this operation.
    #[error("operation `{operation}` is not supported by the {backend} backend")]
    NotSupported {
        /// The operation (`watch`, ...).
        operation: &'static str,
        /// The backend name.
        backend: &'static str,
    },

    /// The store refused the credentials or the caller lacks permission.
    #[error("{backend}: permission denied: {message}")]
    PermissionDenied {
        /// The backend name.
        backend: &'static str,
        /// The store's message.
        message: String,
        /// The store client's error, when there is one.
        #[source]
        source: Option<Source>,
    },

    /// Data found on the store at a path leasehold uses is not what
    /// leasehold writes there (another program's data, a corrupt record).
    /// It is never overwritten silently.
    #[error("{backend}: unexpected data at `{path}`: {message}")]
    InvalidRecord {
        /// The backend name.
        backend: &'static str,
        /// The key, znode or object at fault.
        path: String,
        /// What is wrong with it.
        message: String,
    },

    /// The operation was cancelled (the elector or its caller shut down).
    #[error("cancelled")]
    Cancelled,

    /// Any other store error, with the store's message: one the backend
    /// could not classify. Not retried ([`is_transient`](Error::is_transient)
    /// is false): a campaign ends with it.
    #[error("{backend}: {message}")]
    Backend {
        /// The backend name.
        backend: &'static str,
        /// The store's message.
        message: String,
        /// The store client's error, when there is one.
        #[source]
        source: Option<Source>,
    },
}

/// Errors compare by kind and by what they say (their message and fields,
/// as [`Display`](std::fmt::Display) shows them), not by their source.
impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl Eq for Error {}

/// A store client's error, kept as the [`source`](std::error::Error::source)
/// of an [`Error`]. Cheap to clone (shared).
#[derive(Clone)]
pub struct Source(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Source {
    /// Keep `error`.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Source(Arc::new(error))
    }

    /// The error kept.
    pub fn get(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.0.as_ref()
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Source {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl Error {
    /// `true` when the error says the lease is gone (as opposed to the store
    /// being unreachable).
    pub fn is_lost(&self) -> bool {
        matches!(self, Error::Lost(_))
    }

    /// `true` for errors worth retrying: the store is unreachable or slow
    /// ([`Error::Unavailable`], [`Error::Timeout`]). An error a backend
    /// could not classify ([`Error::Backend`]) is not: retrying it could
    /// last for ever.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Timeout { .. })
    }

    /// Shorthand for [`Error::Unavailable`] without a source.
    pub fn unavailable(backend: &'static str, message: impl Into<String>) -> Self {
        Error::Unavailable {
            backend,
            message: message.into(),
            source: None,
        }
    }

    /// Shorthand for [`Error::PermissionDenied`] without a source.
    pub fn permission_denied(backend: &'static str, message: impl Into<String>) -> Self {
        Error::PermissionDenied {
            backend,
            message: message.into(),
            source: None,
        }
    }

    /// Shorthand for [`Error::Backend`] without a source.
    pub fn backend(backend: &'static str, message: impl Into<String>) -> Self {
        Error::Backend {
            backend,
            message: message.into(),
            source: None,
        }
    }

    /// The same error, with `error` (the store client's) as its source where
    /// the kind keeps one ([`Error::Unavailable`],
    /// [`Error::PermissionDenied`], [`Error::Backend`]).
    #[must_use]
    pub fn caused_by(mut self, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        match &mut self {
            Error::Unavailable { source, .. }
            | Error::PermissionDenied { source, .. }
            | Error::Backend { source, .. } => *source = Some(Source::new(error)),
            _ => {}
        }
        self
    }

    /// Shorthand for [`Error::InvalidOption`].
    pub fn invalid_option(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidOption {
            field,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreachable_and_slow_are_retried() {
        assert!(Error::unavailable("etcd", "connection refused").is_transient());
        assert!(
            Error::Timeout {
                operation: "renew",
                after: Duration::from_secs(1),
            }
            .is_transient()
        );
        // An error the backend could not classify ends a campaign instead
        // of being retried for ever.
        assert!(!Error::backend("etcd", "something unexpected").is_transient());
        assert!(!Error::permission_denied("etcd", "no").is_transient());
    }

    #[test]
    fn the_store_clients_error_is_the_source_and_equality_ignores_it() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e = Error::unavailable("zookeeper", "list candidates: connection loss").caused_by(io);
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("reset by peer"));
        assert_eq!(
            e,
            Error::unavailable("zookeeper", "list candidates: connection loss"),
            "errors compare by kind and message"
        );
        let copy = e.clone();
        assert!(std::error::Error::source(&copy).is_some(), "clones keep it");
    }
}
