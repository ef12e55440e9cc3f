//! # leasehold-zookeeper
//!
//! The ZooKeeper backend of [leasehold](https://docs.rs/leasehold-core): a
//! fair, watch-based election on ephemeral sequential znodes.
//!
//! * **Layout.** Every candidate owns one ephemeral sequential node
//!   `<chroot>/<election>/_c_<uuid>-<lock name><sequence>`: Apache Curator's
//!   naming, with the lock name of [`LockName`] (`latch-` for `LeaderLatch`,
//!   the default; `lock-` for `LeaderSelector` and `InterProcessMutex`), sorted
//!   as Curator sorts, so Curator participants with the same lock name share
//!   the line. A child under another name is an error, never skipped (see
//!   docs/interop.md). The first in line leads; each waiter watches only the
//!   node just ahead of it, so a handover wakes one candidate, not the herd.
//! * **Fencing token.** The czxid (creation transaction id) of the leader's
//!   node: every later node has a greater one.
//! * **Lease.** The ZooKeeper session: the server deletes a session's nodes
//!   when it expires (no heartbeat for the negotiated session timeout). The
//!   negotiated session timeout ([`ZkBackend::session_timeout`]) must cover
//!   `ttl - safety_margin + renew_interval`
//!   ([`ZkBackend::min_session_timeout`]), which `Backend::validate` checks,
//!   so that a cut-off leader's local deadline always comes before the
//!   server can expire its session and hand the lead to someone else. The
//!   engine's renewal is a `sync` and an `exists` of the own node: the `sync`
//!   goes through the ZooKeeper leader, so a member cut off from its peers
//!   cannot renew from its stale copy; an expired session is
//!   [`Error::Lost`](leasehold_core::Error::Lost) at once, and the next
//!   campaign opens a new session.
//! * **Deletes are guaranteed.** A release whose delete outcome is unknown,
//!   and a node whose create answer was lost, are deleted in the background
//!   until the node is gone or the session ends (a session outlives
//!   connection resets, so nothing else would remove them).
//! * **Chroot.** The chroot of the connect string must exist; leasehold never
//!   creates it, and reports a missing one as an error naming it.
//! * **Node data.** The candidate id, then (when the leader value is not
//!   empty) a NUL byte and the value: without a value, exactly what Curator
//!   writes (its `getLeader().getId()` shows the candidate id).
//!   `Leadership::proclaim` rewrites it in place (same czxid).
//! * **Security.** With [`ZkBackendBuilder::digest_auth`], every node
//!   leasehold creates carries ACLs that give this identity all rights and
//!   everyone else at most read access.
//!
//! ```no_run
//! # async fn demo() -> leasehold_core::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use leasehold_core::{ElectionOptions, Elector};
//! use leasehold_zookeeper::ZkBackend;
//!
//! let options = ElectionOptions::new("orders", "node-1").with_ttl(Duration::from_secs(8));
//! let backend = ZkBackend::builder()
//!     .connect_string("127.0.0.1:2181/leasehold")
//!     .session_timeout(ZkBackend::min_session_timeout(&options))
//!     .build()
//!     .await?;
//! let elector = Elector::new(Arc::new(backend), options)?;
//! let leadership = elector.lock().await?;
//! println!("leading with token {}", leadership.fencing_token());
//! # Ok(()) }
//! ```

mod backend;
mod builder;
mod cleanup;
mod driver;
mod line;
mod node;
mod watch;

pub use backend::ZkBackend;
pub use builder::{DEFAULT_SESSION_TIMEOUT, ZkBackendBuilder};
pub use driver::{DRIVER, ZkDriver};
pub use node::LockName;
/// The `zookeeper-client` crate this backend is built on, for
/// [`ZkBackend::client`].
pub use zookeeper_client;

/// The check that holds exactly while a term lasts, for the application's
/// own ZooKeeper `multi` (from [`leader_check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderCheck {
    /// The leader's node.
    pub path: String,
    /// Its version now (a proclaim changes it).
    pub version: i32,
}

impl LeaderCheck {
    /// Add the check to `multi`: the whole `multi` then lands only while the
    /// node is there at this version.
    ///
    /// # Errors
    /// The client's error for a path it refuses.
    pub fn add_to(
        &self,
        multi: &mut zookeeper_client::MultiWriter<'_>,
    ) -> Result<(), zookeeper_client::Error> {
        multi.add_check_version(&self.path, self.version)
    }
}

/// The condition that holds exactly while `leadership`'s term lasts, for
/// the application's own ZooKeeper transactions: a `check` of the leader's
/// ephemeral node at its version. A `multi` with it lands only while the
/// term lasts; once the node is deleted (an unlock, a hand deletion) or its
/// session ends, the `multi` fails and writes nothing. Run it on the
/// backend's own client ([`ZkBackend::client`]): the node is that session's.
///
/// Take it again after [`Leadership::proclaim`](leasehold_core::Leadership::proclaim),
/// which changes the node's version.
///
/// ```no_run
/// # async fn demo(backend: &leasehold_zookeeper::ZkBackend, leadership: leasehold_core::Leadership) -> Result<(), zookeeper_client::Error> {
/// let client = backend.client();
/// let mut multi = client.new_multi_writer();
/// leasehold_zookeeper::leader_check(&leadership).add_to(&mut multi)?;
/// multi.add_set_data("/app/config", b"v2", None)?;
/// let landed = multi.commit().await.is_ok();
/// # let _ = landed;
/// # Ok(()) }
/// ```
pub fn leader_check(leadership: &leasehold_core::Leadership) -> LeaderCheck {
    let claim = leadership.claim();
    LeaderCheck {
        path: claim.key,
        version: i32::try_from(claim.version).unwrap_or(i32::MAX),
    }
}
