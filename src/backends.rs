//! From a [`StoreConfig`] to a connected backend, one function per store.

#[cfg(feature = "gcs")]
use crate::config::GcsCredentials;
use crate::config::StoreConfig;
#[cfg(any(feature = "etcd", feature = "zookeeper"))]
use crate::config::parse_duration;
#[allow(unused_imports)]
use crate::{Backend, ElectionOptions, Error, Result};
#[allow(unused_imports)]
use std::sync::Arc;

#[cfg(feature = "etcd")]
fn read_pem(what: &str, path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::Config(format!(
            "etcd `{what}`: cannot read {}: {e}",
            path.display()
        ))
    })
}

#[cfg(feature = "etcd")]
pub(crate) async fn etcd(
    store: &StoreConfig,
    options: &ElectionOptions,
) -> Result<Arc<dyn Backend>> {
    let StoreConfig::Etcd {
        endpoints,
        tls,
        prefix,
        layout,
        user,
        password,
        ca,
        cert,
        key,
        connect_timeout,
    } = store
    else {
        return Err(Error::Config("not an etcd store".into()));
    };
    let scheme = if *tls { "https" } else { "http" };
    let mut b = leasehold_etcd::EtcdBackend::builder()
        .endpoints(endpoints.iter().map(|e| format!("{scheme}://{e}")))
        .request_timeout(options.request_timeout);
    if let Some(p) = prefix {
        b = b.prefix(p.clone());
    }
    if let Some(l) = layout {
        b = b.layout(l.parse()?);
    }
    if let Some(t) = connect_timeout {
        b = b.connect_timeout(parse_duration("connect_timeout", t)?);
    }
    match (user, password) {
        (Some(u), Some(p)) => b = b.auth(u.clone(), p.expose()),
        (Some(u), None) => b = b.auth(u.clone(), ""),
        _ => {}
    }
    if let Some(ca) = ca {
        b = b.tls_ca_pem(read_pem("ca", ca)?);
    }
    if let (Some(cert), Some(key)) = (cert, key) {
        b = b.tls_client_identity_pem(read_pem("cert", cert)?, read_pem("key", key)?);
    }
    Ok(Arc::new(b.connect().await?))
}

#[cfg(feature = "zookeeper")]
pub(crate) async fn zookeeper(
    store: &StoreConfig,
    options: &ElectionOptions,
) -> Result<Arc<dyn Backend>> {
    let StoreConfig::Zookeeper {
        hosts,
        chroot,
        session_timeout,
        lock_name,
        user,
        password,
    } = store
    else {
        return Err(Error::Config("not a ZooKeeper store".into()));
    };
    let mut connect = hosts.join(",");
    if let Some(c) = chroot {
        connect.push_str(c);
    }
    // The session is the lease: unless given on its own, the shortest one
    // that covers the election's timings (ttl - safety_margin +
    // renew_interval; see docs/zookeeper.md).
    let session = match session_timeout {
        Some(t) => parse_duration("session_timeout", t)?,
        None => leasehold_zookeeper::ZkBackend::min_session_timeout(options),
    };
    let mut b = leasehold_zookeeper::ZkBackend::builder()
        .connect_string(connect)
        .session_timeout(session)
        .request_timeout(options.request_timeout);
    if let Some(name) = lock_name {
        b = b.lock_name(name.parse()?);
    }
    if let (Some(u), Some(p)) = (user, password) {
        b = b.digest_auth(u.clone(), p.expose());
    }
    Ok(Arc::new(b.connect().await?))
}

#[cfg(feature = "gcs")]
pub(crate) async fn gcs(
    store: &StoreConfig,
    options: &ElectionOptions,
) -> Result<Arc<dyn Backend>> {
    let _ = options;
    let StoreConfig::Gcs {
        bucket,
        prefix,
        endpoint,
        credentials,
    } = store
    else {
        return Err(Error::Config("not a Cloud Storage store".into()));
    };
    let mut b = leasehold_gcs::GcsBackend::builder().bucket(bucket.clone());
    if let Some(p) = prefix {
        b = b.prefix(p.clone());
    }
    // The endpoint and the credentials are independent: an endpoint alone
    // (a private or regional one) keeps application default credentials.
    if let Some(e) = endpoint {
        b = b.endpoint(e.clone());
    }
    match credentials {
        Some(GcsCredentials::Default) => b = b.application_default_credentials(),
        Some(GcsCredentials::Anonymous) => b = b.anonymous(),
        Some(GcsCredentials::KeyFile(file)) => b = b.service_account_key_file(file.clone()),
        // The builder's default: application default credentials, or
        // anonymous for the emulator named by STORAGE_EMULATOR_HOST.
        None => {}
    }
    Ok(Arc::new(b.build().await?))
}
