//! Mapping etcd-client errors into leasehold's error type, keeping etcd's message.

use std::future::Future;
use std::time::Duration;

use leasehold_core::Error;
use tonic::Code;

pub(crate) const BACKEND: &str = "etcd";

/// Maps an etcd-client error met while doing `operation`, keeping it as
/// the source. Only the failures of reaching etcd in time are transient
/// ([`Error::Unavailable`]); an error this does not recognise is
/// [`Error::Backend`], which the engine does not retry.
pub(crate) fn map(operation: &str, e: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    let message = format!("{operation}: {e}");
    let mapped = match &e {
        E::GRpcStatus(status) => match status.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Unknown => unavailable(message),
            Code::PermissionDenied | Code::Unauthenticated => {
                Error::permission_denied(BACKEND, message)
            }
            // etcd reports a missing or refused login as an invalid argument.
            Code::InvalidArgument
                if status.message().contains("user name is empty")
                    || status.message().contains("authentication failed") =>
            {
                Error::permission_denied(
                    BACKEND,
                    format!(
                        "{message} (give the user and password of an etcd user with .auth(user, password))"
                    ),
                )
            }
            Code::NotFound if status.message().contains("lease not found") => Error::Lost(message),
            _ => Error::backend(BACKEND, message),
        },
        E::LeaseKeepAliveError(m) if m.contains("lease not found") => Error::Lost(message),
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::LeaseKeepAliveError(_) => {
            unavailable(message)
        }
        E::InvalidArgs(_) | E::InvalidUri(_) | E::EndpointError(_) => Error::Config(message),
        _ => Error::backend(BACKEND, message),
    };
    mapped.caused_by(e)
}

/// An [`Error::Unavailable`] of this backend.
pub(crate) fn unavailable(message: String) -> Error {
    Error::unavailable(BACKEND, message)
}

/// Runs one store call bounded by `after`, mapping its error.
pub(crate) async fn bounded<T>(
    operation: &'static str,
    after: Duration,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(after, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(map(operation, e)),
        Err(_) => Err(Error::Timeout { operation, after }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        let e = map(
            "renew",
            etcd_client::Error::GRpcStatus(tonic::Status::not_found(
                "etcdserver: requested lease not found",
            )),
        );
        assert!(e.is_lost(), "{e}");
        assert!(e.to_string().contains("requested lease not found"), "{e}");
        let e = map(
            "get",
            etcd_client::Error::GRpcStatus(tonic::Status::unavailable("connection refused")),
        );
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert!(
            source
                .as_deref()
                .is_some_and(|s| s.contains("connection refused")),
            "the etcd-client error is kept as the source: {source:?}"
        );
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");
        let e = map(
            "get",
            etcd_client::Error::GRpcStatus(tonic::Status::permission_denied(
                "etcdserver: permission denied",
            )),
        );
        assert!(matches!(e, Error::PermissionDenied { .. }), "{e}");
        let e = map(
            "get",
            etcd_client::Error::GRpcStatus(tonic::Status::invalid_argument(
                "etcdserver: user name is empty",
            )),
        );
        assert!(matches!(e, Error::PermissionDenied { .. }), "{e}");
        let e = map(
            "keep-alive",
            etcd_client::Error::LeaseKeepAliveError("lease not found".into()),
        );
        assert!(e.is_lost(), "{e}");
        let e = map(
            "put",
            etcd_client::Error::GRpcStatus(tonic::Status::invalid_argument(
                "etcdserver: request is too large",
            )),
        );
        assert!(matches!(e, Error::Backend { .. }), "{e}");
    }
}
