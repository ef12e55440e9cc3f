//! mysql_async errors in the user's words, as [`leasehold_core::Error`]s.

use leasehold_core::Error;
use mysql_async::{DriverError, IoError};

/// The backend's name in errors and metrics.
pub(crate) const BACKEND: &str = "mysql";

pub(crate) fn unavailable(message: impl Into<String>) -> Error {
    Error::unavailable(BACKEND, message)
}

pub(crate) fn backend(message: impl Into<String>) -> Error {
    Error::backend(BACKEND, message)
}

// MySQL/MariaDB server error codes this module tells apart.
const ER_DBACCESS_DENIED: u16 = 1044;
const ER_ACCESS_DENIED: u16 = 1045;
const ER_BAD_DB: u16 = 1049;
const ER_SERVER_SHUTDOWN: u16 = 1053;
const ER_CON_COUNT: u16 = 1040;
const ER_TOO_MANY_USER_CONNECTIONS: u16 = 1203;
const ER_TABLEACCESS_DENIED: u16 = 1142;
const ER_COLUMNACCESS_DENIED: u16 = 1143;
const ER_NO_SUCH_TABLE: u16 = 1146;
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
const ER_LOCK_DEADLOCK: u16 = 1213;
const ER_SPECIFIC_ACCESS_DENIED: u16 = 1227;
const ER_OPTION_PREVENTS_STATEMENT: u16 = 1290;
const ER_QUERY_INTERRUPTED: u16 = 1317;
const ER_ACCESS_DENIED_NO_PASSWORD: u16 = 1698;
const ER_CONNECTION_KILLED: u16 = 1927;
/// Duplicate entry for a key.
pub(crate) const ER_DUP_ENTRY: u16 = 1062;

/// Whether `e` is the server's "no such table".
pub(crate) fn is_missing_table(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if s.code == ER_NO_SUCH_TABLE)
}

/// Whether `e` is the server refusing a statement for lack of privilege.
pub(crate) fn is_denied(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if matches!(
        s.code,
        ER_DBACCESS_DENIED | ER_TABLEACCESS_DENIED | ER_COLUMNACCESS_DENIED | ER_SPECIFIC_ACCESS_DENIED
    ))
}

/// Whether `e` is InnoDB giving up on a lock (deadlock victim, lock wait timeout).
pub(crate) fn is_contention(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if matches!(s.code, ER_LOCK_DEADLOCK | ER_LOCK_WAIT_TIMEOUT))
}

/// Whether `e` is a duplicate-key error.
pub(crate) fn is_duplicate(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if s.code == ER_DUP_ENTRY)
}

/// `e`, met while doing `what`, as a leasehold error: transport and
/// transient server conditions are [`Error::Unavailable`] (the engine
/// retries), refused credentials and privileges
/// [`Error::PermissionDenied`], the rest [`Error::Backend`].
pub(crate) fn map(what: &str, e: mysql_async::Error) -> Error {
    classify(what, &e).caused_by(e)
}

fn classify(what: &str, e: &mysql_async::Error) -> Error {
    match e {
        mysql_async::Error::Io(IoError::Io(io)) => {
            let tls = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            match tls {
                Some(t) => unavailable(format!(
                    "{what}: TLS handshake failed: {t} (check `ca`: it must be the CA that signed the server's certificate, and the certificate must name the host)"
                )),
                None => unavailable(format!("{what}: cannot talk to the server: {io}")),
            }
        }
        mysql_async::Error::Io(tls) => unavailable(format!("{what}: TLS: {tls}")),
        mysql_async::Error::Driver(
            d @ (DriverError::ConnectionClosed
            | DriverError::PoolDisconnected
            | DriverError::PacketOutOfOrder
            | DriverError::UnexpectedPacket { .. }
            | DriverError::BadCompressedPacketHeader),
        ) => unavailable(format!("{what}: the connection broke: {d}")),
        // A pool or protocol state the driver could not classify: most
        // likely a connection in trouble, so worth another try.
        mysql_async::Error::Driver(d) => unavailable(format!("{what}: {d}")),
        mysql_async::Error::Server(s) => {
            let msg = format!("{what}: {} (error {})", s.message, s.code);
            match s.code {
                ER_ACCESS_DENIED | ER_ACCESS_DENIED_NO_PASSWORD => Error::permission_denied(
                    BACKEND,
                    format!("{msg}; check the user name and password"),
                ),
                ER_DBACCESS_DENIED
                | ER_TABLEACCESS_DENIED
                | ER_COLUMNACCESS_DENIED
                | ER_SPECIFIC_ACCESS_DENIED => Error::permission_denied(BACKEND, msg),
                ER_BAD_DB => backend(format!(
                    "{msg}; create the database first (CREATE DATABASE ...) or name another one"
                )),
                ER_SERVER_SHUTDOWN
                | ER_CON_COUNT
                | ER_TOO_MANY_USER_CONNECTIONS
                | ER_LOCK_WAIT_TIMEOUT
                | ER_LOCK_DEADLOCK
                | ER_QUERY_INTERRUPTED
                | ER_CONNECTION_KILLED => unavailable(msg),
                ER_OPTION_PREVENTS_STATEMENT => unavailable(format!(
                    "{msg}; the server refuses writes (--read-only: a replica, or a primary during failover)"
                )),
                _ => backend(msg),
            }
        }
        mysql_async::Error::Url(u) => Error::Config(format!("mysql: {u}")),
        mysql_async::Error::Other(o) => backend(format!("{what}: {o}")),
    }
}
