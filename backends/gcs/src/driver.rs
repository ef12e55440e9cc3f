//! The Cloud Storage store's registration with the `leasehold` facade:
//! `gs://` URLs and `kind = "gcs"` config tables.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use leasehold_core::driver::{
    DynBackend, Key, StoreParams, StoreUrl, Value, election_name, percent_decode,
};
use leasehold_core::{ElectionOptions, Error, Result};

use crate::GcsBackend;

/// The Cloud Storage [`Driver`](leasehold_core::driver::Driver).
#[derive(Debug, Clone, Copy, Default)]
pub struct GcsDriver;

/// The [`GcsDriver`], for the facade's list of stores.
pub const DRIVER: GcsDriver = GcsDriver;

const KEYS: &[Key] = &[
    // The bucket (the URL's host).
    Key::text("bucket").required(),
    // The object name prefix (the URL's path before the election).
    Key::text("prefix"),
    // An emulator, a private or regional endpoint; independent of the credentials.
    Key::text("endpoint").url(),
    // `default`, `none` / `anonymous`, or a key file: GcsCredentials.
    Key::text("credentials").url(),
];

/// How a Cloud Storage store authenticates. Independent of its endpoint: a
/// private or regional endpoint works with any of these.
///
/// Written as one string in URLs (`credentials=`) and config files
/// (`credentials = "..."`): `default`, `none` (or `anonymous`), or the path
/// of a service account key file (`./none` for a key file named `none`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GcsCredentials {
    /// Application default credentials (`GOOGLE_APPLICATION_CREDENTIALS`,
    /// gcloud's login, the metadata server). Written `default`.
    Default,
    /// No credentials, for emulators. Written `none` or `anonymous`.
    Anonymous,
    /// A service account key file (JSON): any other value.
    KeyFile(PathBuf),
}

impl GcsCredentials {
    /// Parse the string form (see the type's documentation).
    ///
    /// # Errors
    /// [`Error::Config`] for an empty string.
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "" => Err(Error::Config(
                "`credentials` is empty; use `none` (an emulator), `default` (application default credentials) or the path of a service account key file".to_owned(),
            )),
            "default" => Ok(GcsCredentials::Default),
            "none" | "anonymous" => Ok(GcsCredentials::Anonymous),
            path => Ok(GcsCredentials::KeyFile(PathBuf::from(path))),
        }
    }
}

#[async_trait]
impl leasehold_core::driver::Driver for GcsDriver {
    fn name(&self) -> &'static str {
        "gcs"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["gs"]
    }

    fn keys(&self) -> &'static [Key] {
        KEYS
    }

    fn crate_name(&self) -> &'static str {
        env!("CARGO_CRATE_NAME")
    }

    fn read_url(&self, url: &StoreUrl, params: &mut StoreParams) -> Result<Option<String>> {
        if url.user.is_some() {
            return Err(Error::Config(
                "gs:// takes no user or password in the URL; use `credentials=/path/key.json` or application default credentials".into(),
            ));
        }
        if url.host.is_empty() {
            return Err(Error::Config(
                "missing bucket: write gs://BUCKET[/prefix]/ELECTION".into(),
            ));
        }
        let (prefix, name) = match url.path.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, url.path.as_str()),
        };
        let election = election_name(name)?;
        params.insert("bucket", Value::Text(percent_decode("bucket", &url.host)?));
        if let Some(p) = prefix {
            params.insert("prefix", Value::Text(p.to_owned()));
        }
        Ok(election)
    }

    fn check(&self, params: &StoreParams) -> Result<()> {
        if let Some(c) = params.text("credentials") {
            GcsCredentials::parse(c)?;
        }
        Ok(())
    }

    async fn build(&self, params: &StoreParams, _options: &ElectionOptions) -> Result<DynBackend> {
        let mut b = GcsBackend::builder().bucket(params.text("bucket").unwrap_or_default());
        if let Some(p) = params.text("prefix") {
            b = b.prefix(p);
        }
        // The endpoint and the credentials are independent: an endpoint alone
        // (a private or regional one) keeps application default credentials.
        if let Some(e) = params.text("endpoint") {
            b = b.endpoint(e);
        }
        match params
            .text("credentials")
            .map(GcsCredentials::parse)
            .transpose()?
        {
            Some(GcsCredentials::Default) => b = b.application_default_credentials(),
            Some(GcsCredentials::Anonymous) => b = b.anonymous(),
            Some(GcsCredentials::KeyFile(file)) => b = b.service_account_key_file(file),
            // The builder's default: application default credentials, or
            // anonymous for the emulator named by STORAGE_EMULATOR_HOST.
            None => {}
        }
        Ok(Arc::new(b.build().await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasehold_core::driver::Driver;

    #[test]
    fn urls_become_params() {
        let url = StoreUrl::parse("gs://my%2Dbucket/locks/prod/e").unwrap();
        let mut p = StoreParams::new();
        let election = DRIVER.read_url(&url, &mut p).unwrap();
        assert_eq!(election.as_deref(), Some("e"));
        assert_eq!(p.text("bucket"), Some("my-bucket"));
        assert_eq!(p.text("prefix"), Some("locks/prod"));
        let e = DRIVER
            .check(&StoreParams::new().with("credentials", Value::Text(String::new())))
            .unwrap_err();
        assert!(e.to_string().contains("`credentials` is empty"), "{e}");
        assert_eq!(
            GcsCredentials::parse("./none").unwrap(),
            GcsCredentials::KeyFile("./none".into())
        );
    }
}
