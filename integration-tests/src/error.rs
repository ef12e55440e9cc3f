//! The harness's error type.

use std::time::Duration;

/// Why the harness could not start, reach or control a store.
///
/// Every message says what went wrong and, where it helps, what to do about it
/// (the install command for a missing binary, the tail of the server's log for a
/// server that did not come up).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// A store binary (or jar) is not installed.
    #[error("{what} not found (looked at {looked}); install it with: {install}")]
    MissingBinary {
        /// What is missing, e.g. "etcd".
        what: String,
        /// Where the harness looked.
        looked: String,
        /// The command that installs it.
        install: String,
    },
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A store process exited while the harness waited for it to serve.
    #[error("{label} exited during startup ({status}); last lines of its log:\n{log_tail}")]
    Exited {
        /// Which process, e.g. "etcd n1".
        label: String,
        /// Its exit status.
        status: String,
        /// The last lines of its log.
        log_tail: String,
    },
    /// A store process did not become ready in time.
    #[error(
        "{label} was not ready after {waited:?} (last check: {last_check}); last lines of its log:\n{log_tail}"
    )]
    NotReady {
        /// Which process, e.g. "zookeeper 2".
        label: String,
        /// How long the harness waited.
        waited: Duration,
        /// What the last readiness check saw.
        last_check: String,
        /// The last lines of its log.
        log_tail: String,
    },
    /// A store answered something the harness did not expect.
    #[error("{0}")]
    Protocol(String),
}

impl HarnessError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            context: context.into(),
            source,
        }
    }
}
