//! Election options, with their validation.

use std::time::Duration;

use crate::error::{Error, Result};

/// The timing and identity of one candidate in one election.
///
/// `ttl` is the failover bound: a leader that crashes is replaced within the
/// ttl (plus the store's own expiry tick), as client-go's `LeaseDuration`
/// promises. The store's lease and the leader's local deadline are derived
/// from it per store ([`LeasePlan`]), so that the safety margin and any
/// slack the store's timing needs sit inside the ttl, not on top of it.
///
/// The defaults: a ttl of 15 s, renewed every 3.75 s (ttl/4), retried every
/// 2 s, with a 1.5 s safety margin for clock drift between this host and the
/// store.
///
/// The invariants (checked by [`validate`](Self::validate), and per store by
/// [`validate_plan`](Self::validate_plan)): `0 < safety_margin < ttl / 2`,
/// and `renew_interval <= lifetime / 2` so that at least two renewals can be
/// tried before the local deadline, where the lifetime is what a renewal
/// gives the leader on the store (`ttl - safety_margin` where the store
/// needs nothing more; see [`LeasePlan::lifetime`]).
///
/// The struct is `#[non_exhaustive]`: build it with [`new`](Self::new) and
/// the `with_*` methods (or assign its public fields).
///
/// ```
/// use std::time::Duration;
/// use leasehold_core::ElectionOptions;
///
/// let options = ElectionOptions::new("orders", "worker-1")
///     .with_ttl(Duration::from_secs(10)) // renew 3.33 s, retry 1.67 s, margin 1 s, timeout 3.33 s
///     .with_value("10.0.0.7:8080")
///     .with_request_timeout(Duration::from_secs(2))
///     .with_own_session();
/// options.validate().unwrap();
/// assert_eq!(options.value, b"10.0.0.7:8080");
///
/// // A renew interval that leaves no room for a second try is refused,
/// // naming the field.
/// let err = options.clone().with_renew_interval(Duration::from_secs(6)).validate().unwrap_err();
/// assert!(err.to_string().contains("renew_interval"), "{err}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ElectionOptions {
    /// The election name (the lock's name). Non-empty, at most 256 bytes,
    /// no control characters and no `/` at either end.
    pub election: String,
    /// This candidate's id, shown to the others as the leader's id.
    pub candidate_id: String,
    /// Bytes published while leading (an address, a JSON blob), at most 64 KiB.
    pub value: Vec<u8>,
    /// The failover bound: how long a crashed leader can block the
    /// election. The store's lease (an etcd lease, a ZooKeeper session, a
    /// record's expiry) and the leader's local deadline are derived from it
    /// ([`LeasePlan`]) and fit inside it.
    pub ttl: Duration,
    /// How often the lease is renewed: the session's keep-alive on backends
    /// with sessions (one for every claim in it), else the leader's (and a
    /// queued candidate's) renewal of its claim.
    pub renew_interval: Duration,
    /// The longest wait before trying again after a store error, and how
    /// often to poll on backends without a watch (give or take 20 %).
    ///
    /// Retries back off exponentially from a quarter of this interval up to
    /// the whole of it, each delay drawn from `[d/2, d]` ("equal jitter",
    /// never longer than the interval). A lease renewal (the leader's, or a
    /// queued candidate's claim) that keeps failing is tried again at least
    /// this often until its local deadline, and once more
    /// `min(retry_interval, request_timeout) / 2` before the deadline, so that
    /// its answer can still arrive in time (a renewal still unanswered at
    /// that moment is abandoned for this last attempt).
    pub retry_interval: Duration,
    /// Subtracted from the store's lease to get the local deadline: a leader
    /// whose last successful renewal was *sent* at `t` reports leadership
    /// lost at `t + lifetime` at the latest, where the lifetime is the
    /// store's lease less this margin (and less any proof gap of the store:
    /// [`LeasePlan::lifetime`]); `t + ttl - safety_margin` at most.
    pub safety_margin: Duration,
    /// Bound on any single store call.
    pub request_timeout: Duration,
    /// On backends with sessions ([`Capabilities::sessions`](crate::Capabilities::sessions)):
    /// keep this election's claim in a session of its own instead of the
    /// session shared by every elector on the backend instance (with the
    /// same timings). A shared session costs one heartbeat for all of them,
    /// but when it is lost (revoked by an admin, unreachable past its
    /// deadline) every term and waiting claim on it ends together; an own
    /// session isolates this election from that. On ZooKeeper one backend
    /// is one client session: the ZooKeeper backend refuses this option
    /// (isolate with a backend of its own). Backends without sessions
    /// (Cloud Storage) have nothing to share and ignore it. Default `false`.
    pub own_session: bool,
}

/// Largest accepted leader value.
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Largest accepted election name or candidate id.
pub const MAX_NAME_LEN: usize = 256;

impl ElectionOptions {
    /// Options for `election` with candidate id `candidate_id` and default
    /// timings.
    pub fn new(election: impl Into<String>, candidate_id: impl Into<String>) -> Self {
        ElectionOptions {
            election: election.into(),
            candidate_id: candidate_id.into(),
            value: Vec::new(),
            ttl: Duration::from_secs(15),
            renew_interval: Duration::from_millis(3750),
            retry_interval: Duration::from_secs(2),
            safety_margin: Duration::from_millis(1500),
            request_timeout: Duration::from_secs(5),
            own_session: false,
        }
    }

    /// Keep this election's claim in a session of its own (see
    /// [`own_session`](Self::own_session)).
    pub fn with_own_session(mut self) -> Self {
        self.own_session = true;
        self
    }

    /// Publish `value` while leading (an address, a JSON blob; at most
    /// [`MAX_VALUE_LEN`] bytes, checked by [`validate`](Self::validate)).
    pub fn with_value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = value.into();
        self
    }

    /// Set [`renew_interval`](Self::renew_interval) alone (call after
    /// [`with_ttl`](Self::with_ttl), which derives it).
    pub fn with_renew_interval(mut self, interval: Duration) -> Self {
        self.renew_interval = interval;
        self
    }

    /// Set [`retry_interval`](Self::retry_interval) alone (call after
    /// [`with_ttl`](Self::with_ttl), which derives it).
    pub fn with_retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// Set [`safety_margin`](Self::safety_margin) alone (call after
    /// [`with_ttl`](Self::with_ttl), which derives it).
    pub fn with_safety_margin(mut self, margin: Duration) -> Self {
        self.safety_margin = margin;
        self
    }

    /// Set [`request_timeout`](Self::request_timeout) alone (call after
    /// [`with_ttl`](Self::with_ttl), which derives it).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Set the ttl and derive the other timings from it: renew every ttl/4,
    /// retry every ttl/6 (at most 2 s), margin ttl/10, request timeout ttl/3.
    /// These fit every store's [`LeasePlan`] (ZooKeeper's, which keeps a
    /// renew interval of the ttl for its quorum proof, is the tightest).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self.renew_interval = ttl / 4;
        self.retry_interval = (ttl / 6).min(Duration::from_secs(2));
        self.safety_margin = ttl / 10;
        self.request_timeout = ttl / 3;
        self
    }

    /// Check what naming and reading an election needs (the election name,
    /// the candidate id, the value), not the lease timings: what
    /// [`Elector::observer`](crate::Elector::observer) checks.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] naming the field and what is allowed.
    pub fn validate_names(&self) -> Result<()> {
        check_name("election", &self.election)?;
        check_name("candidate_id", &self.candidate_id)?;
        if self.election.starts_with('/') || self.election.ends_with('/') {
            return Err(Error::invalid_option(
                "election",
                format!(
                    "{:?} must not start or end with '/'; use a plain name such as \"orders-worker\"",
                    self.election
                ),
            ));
        }
        if self.value.len() > MAX_VALUE_LEN {
            return Err(Error::invalid_option(
                "value",
                format!(
                    "{} bytes is more than the {MAX_VALUE_LEN} allowed; publish a pointer (an address, a key) instead",
                    self.value.len()
                ),
            ));
        }
        Ok(())
    }

    /// Check every field; the error names the first offending one.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] naming the field and what is allowed.
    pub fn validate(&self) -> Result<()> {
        self.validate_names()?;
        if self.ttl < Duration::from_millis(10) {
            return Err(Error::invalid_option(
                "ttl",
                format!(
                    "{:?} is too short; use at least 10ms (stores need seconds)",
                    self.ttl
                ),
            ));
        }
        if self.safety_margin.is_zero() || self.safety_margin >= self.ttl / 2 {
            return Err(Error::invalid_option(
                "safety_margin",
                format!(
                    "{:?} must be above zero and below half the ttl ({:?}); ttl/10 is a good choice",
                    self.safety_margin, self.ttl
                ),
            ));
        }
        self.validate_plan(&LeasePlan::whole(self))
    }

    /// Check the timings against what a store's [`LeasePlan`] leaves a
    /// leader: two renewals (and two retries) must fit in the lifetime, a
    /// request in it. [`Elector::new`](crate::Elector::new) calls it with the
    /// backend's plan.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] naming the field and what is allowed.
    pub fn validate_plan(&self, plan: &LeasePlan) -> Result<()> {
        let lifetime = plan.lifetime(self);
        let what = if plan.lease == self.ttl && plan.proof_gap.is_zero() {
            format!("ttl - safety_margin ({lifetime:?})")
        } else {
            format!(
                "the lifetime of a renewal on this store ({lifetime:?}: its lease {:?} - safety_margin {:?} - proof gap {:?}; the store's timing fits inside the ttl {:?})",
                plan.lease, self.safety_margin, plan.proof_gap, self.ttl
            )
        };
        if lifetime.is_zero() {
            return Err(Error::invalid_option(
                "ttl",
                format!(
                    "{:?} leaves no time to lead on this store: {what}; use a longer ttl",
                    self.ttl
                ),
            ));
        }
        if self.renew_interval.is_zero() || self.renew_interval > lifetime / 2 {
            return Err(Error::invalid_option(
                "renew_interval",
                format!(
                    "{:?} must be above zero and at most half of {what}, so that two renewals fit before the deadline; ttl/4 is a good choice",
                    self.renew_interval
                ),
            ));
        }
        if self.retry_interval.is_zero() || self.retry_interval > lifetime / 2 {
            return Err(Error::invalid_option(
                "retry_interval",
                format!(
                    "{:?} must be above zero and at most half of {what}",
                    self.retry_interval
                ),
            ));
        }
        if self.request_timeout.is_zero() || self.request_timeout > lifetime {
            return Err(Error::invalid_option(
                "request_timeout",
                format!(
                    "{:?} must be above zero and at most {what}",
                    self.request_timeout
                ),
            ));
        }
        Ok(())
    }

    /// The time from the send of the last successful renewal to the local
    /// deadline on a store that needs no time of its own inside the ttl
    /// ([`LeasePlan::whole`]): `ttl - safety_margin`. On other stores it is
    /// shorter: [`LeasePlan::lifetime`] of the backend's
    /// [`lease_plan`](crate::Backend::lease_plan).
    pub fn deadline_after_renewal(&self) -> Duration {
        LeasePlan::whole(self).lifetime(self)
    }

    /// What the engine's heartbeats (a leader's, a session's) keep a lease
    /// for after each successful renewal: `lifetime`, the plan's
    /// [`LeasePlan::lifetime`].
    ///
    /// Test-only breakage for the chaos suite's self-test, never for
    /// production: built with `--cfg leasehold_unsafe_no_deadline` (a
    /// RUSTFLAGS cfg, not a cargo feature) AND run with the variable
    /// `LEASEHOLD_UNSAFE_NO_DEADLINE` set, the deadline is a day away, i.e.
    /// none.
    pub(crate) fn kept_lifetime(lifetime: Duration) -> Duration {
        #[cfg(leasehold_unsafe_no_deadline)]
        if std::env::var_os("LEASEHOLD_UNSAFE_NO_DEADLINE").is_some() {
            return Duration::from_secs(86_400);
        }
        lifetime
    }
}

/// How a store's own timing fits inside the ttl: the lease the store keeps
/// after a renewal, and the leader's local deadline after it.
///
/// `ttl` is the failover bound, so whatever the store needs besides the
/// safety margin comes out of it, never on top of it:
///
/// * `lease`: how long the store keeps a lease after a renewal reaches it
///   (an etcd lease of whole seconds, a ZooKeeper session), or how long a
///   record lives without renewal (a SQL row's expiry, the time a Cloud
///   Storage follower waits on an unchanged record). At most the ttl; less
///   where detecting the expiry takes time of its own (a follower's poll).
/// * `proof_gap`: how much earlier than the renewal's send the store may
///   count the lease from (ZooKeeper: a member cut off just after a renewal
///   may never pass its session touch on to the ZooKeeper leader, which then
///   counts from the touch before).
///
/// The leader's local deadline is `last renewal sent + lifetime`, with
/// `lifetime = lease - safety_margin - proof_gap`: strictly before anyone
/// else can lead, by the margin.
///
/// ```
/// use std::time::Duration;
/// use leasehold_core::{ElectionOptions, LeasePlan};
///
/// let options = ElectionOptions::new("orders", "node-1").with_ttl(Duration::from_secs(4));
/// let plan = LeasePlan::whole(&options);
/// assert_eq!(plan.lifetime(&options), Duration::from_millis(3600));
/// // A store whose leader's renewal may be counted from 1 s earlier.
/// let plan = LeasePlan::new(options.ttl, Duration::from_secs(1));
/// assert_eq!(plan.lifetime(&options), Duration::from_millis(2600));
/// options.validate_plan(&plan).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeasePlan {
    /// How long the store keeps a lease after a renewal (at most the ttl).
    pub lease: Duration,
    /// How much earlier than a renewal's send the store may count from.
    pub proof_gap: Duration,
}

impl LeasePlan {
    /// The store keeps the lease for the full ttl from each renewal and
    /// needs nothing more: the lifetime is `ttl - safety_margin`.
    pub fn whole(options: &ElectionOptions) -> Self {
        LeasePlan {
            lease: options.ttl,
            proof_gap: Duration::ZERO,
        }
    }

    /// A lease of `lease` (capped at the ttl when used), counted from up to
    /// `proof_gap` before a renewal's send.
    pub fn new(lease: Duration, proof_gap: Duration) -> Self {
        LeasePlan { lease, proof_gap }
    }

    /// The leader's local deadline after a renewal's send:
    /// `min(lease, ttl) - safety_margin - proof_gap` (zero when nothing is
    /// left).
    pub fn lifetime(&self, options: &ElectionOptions) -> Duration {
        self.lease
            .min(options.ttl)
            .saturating_sub(options.safety_margin)
            .saturating_sub(self.proof_gap)
    }
}

fn check_name(field: &'static str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid_option(field, "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid_option(
            field,
            format!(
                "{} bytes is longer than the {MAX_NAME_LEN} allowed",
                name.len()
            ),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid_option(
            field,
            format!("{name:?} contains a control character"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(r: Result<()>) -> &'static str {
        match r {
            Err(Error::InvalidOption { field, .. }) => field,
            other => panic!("expected an InvalidOption error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        ElectionOptions::new("e", "c").validate().unwrap();
        for secs in [1, 2, 5, 10, 60] {
            ElectionOptions::new("e", "c")
                .with_ttl(Duration::from_secs(secs))
                .validate()
                .unwrap();
        }
    }

    #[test]
    fn bad_options_name_the_field() {
        let base = ElectionOptions::new("e", "c");
        let mut o = base.clone();
        o.election = String::new();
        assert_eq!(field_of(o.validate()), "election");
        let mut o = base.clone();
        o.election = "/x".into();
        assert_eq!(field_of(o.validate()), "election");
        let mut o = base.clone();
        o.candidate_id = "a\nb".into();
        assert_eq!(field_of(o.validate()), "candidate_id");
        let mut o = base.clone();
        o.value = vec![0; MAX_VALUE_LEN + 1];
        assert_eq!(field_of(o.validate()), "value");
        let mut o = base.clone();
        o.ttl = Duration::ZERO;
        assert_eq!(field_of(o.validate()), "ttl");
        let mut o = base.clone();
        o.safety_margin = o.ttl;
        assert_eq!(field_of(o.validate()), "safety_margin");
        let mut o = base.clone();
        o.renew_interval = o.ttl;
        let err = o.validate().unwrap_err().to_string();
        assert!(
            err.contains("renew_interval") && err.contains("two renewals"),
            "{err}"
        );
        let mut o = base.clone();
        o.retry_interval = Duration::ZERO;
        assert_eq!(field_of(o.validate()), "retry_interval");
        let mut o = base;
        o.request_timeout = Duration::from_secs(60);
        assert_eq!(field_of(o.validate()), "request_timeout");
    }
}
