//! The stores this facade knows, compiled in or not: the one list a new
//! store adds a line to.

use std::fmt;

use leasehold_core::driver::{Driver, MEMORY};

use crate::Error;

/// One store the facade knows: its name, URL schemes and cargo feature, and
/// its [`Driver`] when that feature is on.
///
/// The name and schemes are repeated here (the driver declares them too) so
/// that a URL or config file naming a store whose feature is off can say
/// which feature to turn on.
#[derive(Clone, Copy)]
pub struct StoreEntry {
    /// The store's name: `kind` in config files (`"etcd"`).
    pub name: &'static str,
    /// Its URL schemes (`"etcd"`, `"etcd+https"`).
    pub schemes: &'static [&'static str],
    /// The facade's cargo feature that brings it; `None`: always there.
    pub feature: Option<&'static str>,
    /// Its driver; `None` when its feature is off in this build.
    pub driver: Option<&'static dyn Driver>,
}

impl fmt::Debug for StoreEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreEntry")
            .field("name", &self.name)
            .field("schemes", &self.schemes)
            .field("feature", &self.feature)
            .field("compiled_in", &self.driver.is_some())
            .finish()
    }
}

/// A line of [`STORES`]: a store behind the cargo feature of that name.
macro_rules! store {
    ($name:literal, [$($scheme:literal),+ $(,)?], feature $feature:literal, $driver:path) => {
        StoreEntry {
            name: $name,
            schemes: &[$($scheme),+],
            feature: Some($feature),
            driver: {
                #[cfg(feature = $feature)]
                let driver: Option<&'static dyn Driver> = Some(&$driver);
                #[cfg(not(feature = $feature))]
                let driver: Option<&'static dyn Driver> = None;
                driver
            },
        }
    };
}

/// Every store, in the order error messages list them. Adding a store:
/// its crate, one line here, and its cargo feature in Cargo.toml (and in
/// `full`).
pub const STORES: &[StoreEntry] = &[
    StoreEntry {
        name: "memory",
        schemes: &["memory"],
        feature: None,
        driver: Some(&MEMORY),
    },
    store!("etcd", ["etcd", "etcd+http", "etcd+https"], feature "etcd", leasehold_etcd::DRIVER),
    store!("zookeeper", ["zk", "zookeeper"], feature "zookeeper", leasehold_zookeeper::DRIVER),
    store!("gcs", ["gs"], feature "gcs", leasehold_gcs::DRIVER),
    store!("postgres", ["postgres", "postgresql"], feature "postgres", leasehold_postgres::DRIVER),
    store!("mysql", ["mysql"], feature "mysql", leasehold_mysql::DRIVER),
];

/// The drivers compiled into this build.
pub fn drivers() -> impl Iterator<Item = &'static dyn Driver> {
    STORES.iter().filter_map(|s| s.driver)
}

pub(crate) fn by_scheme(scheme: &str) -> Option<&'static StoreEntry> {
    STORES.iter().find(|s| s.schemes.contains(&scheme))
}

pub(crate) fn by_name(name: &str) -> Option<&'static StoreEntry> {
    STORES.iter().find(|s| s.name == name)
}

/// `memory://, etcd://, ...`
pub(crate) fn scheme_list() -> String {
    STORES
        .iter()
        .flat_map(|s| s.schemes)
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `memory, etcd, ...`
pub(crate) fn name_list() -> String {
    STORES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
}

impl StoreEntry {
    /// The driver, or the error naming the cargo feature to turn on.
    pub(crate) fn driver(&self) -> Result<&'static dyn Driver, Error> {
        self.driver.ok_or_else(|| {
            let feature = self.feature.unwrap_or(self.name);
            Error::Config(format!(
                "the {} store needs leasehold's `{feature}` cargo feature, which this build does not have; enable it in Cargo.toml (features = [\"{feature}\"])",
                self.name
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_agrees_with_its_drivers() {
        for entry in STORES {
            assert_eq!(
                STORES.iter().filter(|s| s.name == entry.name).count(),
                1,
                "{}",
                entry.name
            );
            for scheme in entry.schemes {
                assert_eq!(by_scheme(scheme).map(|s| s.name), Some(entry.name));
                assert_eq!(*scheme, scheme.to_ascii_lowercase());
            }
            if let Some(driver) = entry.driver {
                assert_eq!(driver.name(), entry.name);
                assert_eq!(driver.schemes(), entry.schemes, "{}", entry.name);
            }
        }
    }
}
