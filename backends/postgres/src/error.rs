//! PostgreSQL's errors in leasehold's words.

use leasehold_core::Error;
use tokio_postgres::error::SqlState;

/// The backend name in errors and metrics.
pub(crate) const NAME: &str = "postgres";

/// The error and its sources, one line (tokio-postgres's own `Display` says
/// only "db error" or "error connecting to server").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    let mut depth = 0;
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
        depth += 1;
        if depth > 8 {
            break;
        }
    }
    text
}

/// Map a tokio-postgres error met while doing `op`.
///
/// * refused credentials, missing privileges: [`Error::PermissionDenied`];
/// * no connection, a connection lost or refused, a server shutting down or
///   restarting, too many connections, a read-only server (a standby after a
///   failover), a serialization failure or deadlock: [`Error::Unavailable`]
///   (the engine retries);
/// * a lease table that is missing (dropped by hand after this handle
///   created it): [`Error::Unavailable`], and the next call creates it;
/// * a database that does not exist: [`Error::Config`];
/// * anything else: [`Error::Backend`] with the server's message.
pub(crate) fn map(op: &str, e: tokio_postgres::Error) -> Error {
    let Some(db) = e.as_db_error() else {
        return Error::unavailable(NAME, format!("{op}: {}", chain(&e))).caused_by(e);
    };
    let code = db.code();
    let mut message = format!("{op}: {} (SQLSTATE {})", db.message(), code.code());
    if let Some(detail) = db.detail() {
        message.push_str("; ");
        message.push_str(detail);
    }
    if let Some(hint) = db.hint() {
        message.push_str("; hint: ");
        message.push_str(hint);
    }
    let class = &code.code()[..2];
    let mapped = if *code == SqlState::INSUFFICIENT_PRIVILEGE
        || *code == SqlState::INVALID_PASSWORD
        || class == "28"
    {
        Error::permission_denied(NAME, message)
    } else if *code == SqlState::INVALID_CATALOG_NAME {
        return Error::Config(format!("postgres: {message}"));
    } else if matches!(class, "08" | "53" | "57" | "40")
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        || *code == SqlState::LOCK_NOT_AVAILABLE
        // The lease table dropped by hand: the next call creates it again.
        || *code == SqlState::UNDEFINED_TABLE
    {
        Error::unavailable(NAME, message)
    } else {
        Error::backend(NAME, message)
    };
    mapped.caused_by(e)
}

/// Whether the connection that gave `e` should be dropped (it is closed or
/// in an unknown state); a database error leaves it usable.
pub(crate) fn breaks_connection(e: &tokio_postgres::Error) -> bool {
    e.is_closed() || e.as_db_error().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_keeps_every_distinct_message() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error connecting to server")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert_eq!(chain(&Outer(io)), "error connecting to server: refused");
    }
}
