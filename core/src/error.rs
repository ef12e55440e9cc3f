//! The one error type of leasehold.

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
/// compared in tests; a backend keeps its store's own message as text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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

    /// Any other store error, with the store's message.
    #[error("{backend}: {message}")]
    Backend {
        /// The backend name.
        backend: &'static str,
        /// The store's message.
        message: String,
    },
}

impl Error {
    /// `true` when the error says the lease is gone (as opposed to the store
    /// being unreachable).
    pub fn is_lost(&self) -> bool {
        matches!(self, Error::Lost(_))
    }

    /// `true` for errors worth retrying: the store is unreachable or slow.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::Timeout { .. } | Error::Backend { .. }
        )
    }

    /// Shorthand for [`Error::InvalidOption`].
    pub fn invalid_option(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidOption {
            field,
            reason: reason.into(),
        }
    }
}
