//! Building a [`GcsBackend`]: bucket, prefix, endpoint and credentials.

use std::path::PathBuf;
use std::time::Duration;

use google_cloud_auth::credentials::{Credentials, anonymous, service_account};
use google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder;
use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_storage::client::Storage;
use google_cloud_storage::retry_policy::RetryableErrors;
use leasehold_core::{Error, Result};

use crate::backend::GcsBackend;

/// The environment variable other Cloud Storage clients read to talk to an
/// emulator (`host:port` or a URL). When set and no endpoint was given, the
/// backend uses it with anonymous credentials.
pub const EMULATOR_HOST_ENV: &str = "STORAGE_EMULATOR_HOST";

/// The default object name prefix.
pub const DEFAULT_PREFIX: &str = "leasehold";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    /// Application default credentials (also the default).
    Default,
    /// No credentials, for emulators and public test buckets.
    Anonymous,
    /// A service account key file (JSON).
    KeyFile(PathBuf),
}

/// A builder of [`GcsBackend`]s.
///
/// ```no_run
/// # async fn f() -> leasehold_core::Result<()> {
/// let backend = leasehold_gcs::GcsBackend::builder()
///     .bucket("my-locks")
///     .prefix("leasehold")
///     .endpoint("http://127.0.0.1:4443")
///     .anonymous()
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct GcsBackendBuilder {
    bucket: Option<String>,
    prefix: String,
    endpoint: Option<String>,
    auth: Option<Auth>,
    retry_time_limit: Duration,
    use_env: bool,
}

impl Default for GcsBackendBuilder {
    fn default() -> Self {
        GcsBackendBuilder {
            bucket: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            endpoint: None,
            auth: None,
            retry_time_limit: Duration::from_secs(2),
            use_env: true,
        }
    }
}

impl GcsBackendBuilder {
    /// A builder with the defaults: prefix `leasehold`, application default
    /// credentials (or the emulator named by `STORAGE_EMULATOR_HOST`).
    pub fn new() -> Self {
        Self::default()
    }

    /// The bucket holding the lease objects (`my-bucket` or `gs://my-bucket`).
    /// Required; it must exist.
    pub fn bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = Some(bucket.into());
        self
    }

    /// The object name prefix: election `e` lives in object `<prefix>/e`.
    /// Default `leasehold`; an empty prefix puts elections at the bucket root.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// A custom endpoint (`http://127.0.0.1:4443` for an emulator, a private
    /// service connect address). Default: Google's, or `STORAGE_EMULATOR_HOST`.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Send no credentials (emulators).
    pub fn anonymous(mut self) -> Self {
        self.auth = Some(Auth::Anonymous);
        self
    }

    /// Authenticate with this service account key file (JSON).
    pub fn service_account_key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth = Some(Auth::KeyFile(path.into()));
        self
    }

    /// Authenticate with application default credentials
    /// (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's login, the metadata
    /// server). This is the default unless `STORAGE_EMULATOR_HOST` is set.
    pub fn application_default_credentials(mut self) -> Self {
        self.auth = Some(Auth::Default);
        self
    }

    /// How long the client may retry one read on transient errors (timeouts,
    /// 5xx, 429) before giving the error to the engine, which retries on its
    /// own schedule. Default 2 s; keep it below the election's
    /// `request_timeout`. Conditional writes are never retried by the client
    /// (a lost precondition is an answer, and a repeated write could
    /// misreport its own success as a conflict).
    pub fn retry_time_limit(mut self, limit: Duration) -> Self {
        self.retry_time_limit = limit;
        self
    }

    /// Ignore `STORAGE_EMULATOR_HOST` (on by default).
    pub fn ignore_environment(mut self) -> Self {
        self.use_env = false;
        self
    }

    /// Build the client.
    ///
    /// # Errors
    /// [`Error::Config`] when the bucket is missing or malformed, the key
    /// file cannot be read, or the credentials cannot be set up. Nothing is
    /// sent to the store yet: a wrong endpoint or a missing bucket shows on
    /// the first call.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is shared until it returns.
    pub async fn build(self) -> Result<GcsBackend> {
        let bucket = check_bucket(self.bucket.as_deref())?;
        let prefix = self.prefix.trim_matches('/').to_owned();
        if prefix.chars().any(char::is_control) {
            return Err(Error::Config(format!(
                "gcs prefix {prefix:?} contains a control character"
            )));
        }
        let env_host = if self.use_env {
            std::env::var(EMULATOR_HOST_ENV)
                .ok()
                .filter(|h| !h.trim().is_empty())
        } else {
            None
        };
        let (endpoint, auth) = match (self.endpoint, env_host) {
            (Some(ep), _) => (Some(ep), self.auth.unwrap_or(Auth::Default)),
            (None, Some(host)) => (
                Some(emulator_url(host.trim())),
                self.auth.unwrap_or(Auth::Anonymous),
            ),
            (None, None) => (None, self.auth.unwrap_or(Auth::Default)),
        };

        let backoff = ExponentialBackoffBuilder::new()
            .with_initial_delay(Duration::from_millis(100))
            .with_maximum_delay(Duration::from_secs(1))
            .with_scaling(2.0)
            .build()
            .map_err(|e| Error::Config(format!("gcs backoff policy: {e}")))?;
        let mut builder = Storage::builder()
            .with_retry_policy(
                RetryableErrors
                    .with_attempt_limit(3)
                    .with_time_limit(self.retry_time_limit),
            )
            .with_backoff_policy(backoff);
        if let Some(ep) = &endpoint {
            builder = builder.with_endpoint(ep.trim_end_matches('/'));
        }
        if let Some(creds) = credentials(&auth)? {
            builder = builder.with_credentials(creds);
        }
        let client = builder.build().await.map_err(|e| {
            Error::Config(format!(
                "cannot set up the Cloud Storage client: {}; {}",
                crate::backend::root_cause(&e),
                crate::backend::AUTH_HINT
            ))
        })?;
        Ok(GcsBackend::new(client, bucket, prefix))
    }
}

fn credentials(auth: &Auth) -> Result<Option<Credentials>> {
    match auth {
        Auth::Default => Ok(None),
        Auth::Anonymous => Ok(Some(anonymous::Builder::new().build())),
        Auth::KeyFile(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::Config(format!(
                    "cannot read the service account key file {}: {e}",
                    path.display()
                ))
            })?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                Error::Config(format!(
                    "the service account key file {} is not JSON: {e}",
                    path.display()
                ))
            })?;
            service_account::Builder::new(json)
                .build()
                .map(Some)
                .map_err(|e| {
                    Error::Config(format!(
                        "the service account key file {} is not usable: {e}",
                        path.display()
                    ))
                })
        }
    }
}

/// `host:port` or a URL, as `STORAGE_EMULATOR_HOST` may hold either.
fn emulator_url(host: &str) -> String {
    if host.starts_with("http://") || host.starts_with("https://") {
        host.to_owned()
    } else {
        format!("http://{host}")
    }
}

fn check_bucket(bucket: Option<&str>) -> Result<String> {
    let Some(raw) = bucket else {
        return Err(Error::Config(
            "no gcs bucket given; call .bucket(\"my-bucket\") on the builder".to_owned(),
        ));
    };
    let name = raw
        .strip_prefix("gs://")
        .unwrap_or(raw)
        .trim_end_matches('/');
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    if name.len() < 3 || name.len() > 222 || !name.chars().all(valid_char) {
        return Err(Error::Config(format!(
            "{raw:?} is not a Cloud Storage bucket name: use 3 to 222 lowercase letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        assert_eq!(check_bucket(Some("gs://my-bucket/")).unwrap(), "my-bucket");
        assert_eq!(
            check_bucket(Some("locks.example")).unwrap(),
            "locks.example"
        );
        for bad in ["", "ab", "My-Bucket", "a/b", "gs://"] {
            let err = check_bucket(Some(bad)).unwrap_err().to_string();
            assert!(err.contains("bucket"), "{err}");
        }
        assert!(
            check_bucket(None)
                .unwrap_err()
                .to_string()
                .contains(".bucket(")
        );
    }

    #[test]
    fn emulator_host_forms() {
        assert_eq!(emulator_url("127.0.0.1:4443"), "http://127.0.0.1:4443");
        assert_eq!(emulator_url("https://h:1"), "https://h:1");
    }

    #[tokio::test]
    async fn key_file_errors_name_the_file() {
        let err = GcsBackendBuilder::new()
            .bucket("b-b")
            .service_account_key_file("/nonexistent/key.json")
            .ignore_environment()
            .build()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/key.json"), "{err}");
    }
}
