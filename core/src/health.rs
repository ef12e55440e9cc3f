//! Health snapshots for readiness probes and, behind the `metrics` feature,
//! the engine's metrics (through the [`metrics`](https://docs.rs/metrics)
//! facade: no exporter is installed by the library).
//!
//! One [`Monitor`] is shared by an [`Elector`](crate::Elector), its clones
//! and the heartbeats of the terms it wins. Every store call the engine makes
//! for the campaign or the heartbeat reports here, so the snapshot is as
//! fresh as the last call and costs one mutex lock to read.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::options::ElectionOptions;
use crate::types::FencingToken;

/// Whether the store answered the last call of an elector.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StoreContact {
    /// No store call has finished yet.
    Unknown,
    /// The last call was answered (an answer such as "someone else holds
    /// it" counts: the store was reached).
    Ok {
        /// When that answer arrived.
        at: Instant,
    },
    /// Every call has failed since `since` (unreachable, timed out, refused).
    CutOff {
        /// When the first failure of this run of failures arrived.
        since: Instant,
        /// The last error.
        last_error: Error,
    },
}

/// A leader's view of its term, from [`Leadership::health`](crate::Leadership::health)
/// or [`Health::Leading`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LeaderHealth {
    /// `false` once the term has ended (the done signal fired).
    pub leading: bool,
    /// The term's fencing token.
    pub token: FencingToken,
    /// Time left to the local deadline (zero once it passed): unless a
    /// renewal succeeds before then, leadership is reported lost.
    pub until_deadline: Duration,
    /// The last renewal error, cleared by the next successful renewal.
    pub last_error: Option<Error>,
}

impl LeaderHealth {
    /// Leading with time left before the local deadline.
    pub fn is_healthy(&self) -> bool {
        self.leading && !self.until_deadline.is_zero()
    }
}

/// A snapshot of an [`Elector`](crate::Elector): leading, or following with
/// the state of its contact with the store. See
/// [`Elector::health`](crate::Elector::health).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Health {
    /// This candidate leads a term.
    Leading(LeaderHealth),
    /// This candidate does not lead (campaigning, between terms, or idle).
    Following {
        /// The last store contact of this elector.
        contact: StoreContact,
    },
}

impl Health {
    /// Healthy for a readiness probe: leading with time left to the local
    /// deadline, or following with the store's last answer good (or no call
    /// made yet). A follower cut off from the store is not healthy.
    pub fn is_healthy(&self) -> bool {
        match self {
            Health::Leading(l) => l.is_healthy(),
            Health::Following { contact } => !matches!(contact, StoreContact::CutOff { .. }),
        }
    }

    /// `true` when this candidate leads.
    pub fn is_leading(&self) -> bool {
        matches!(self, Health::Leading(l) if l.leading)
    }

    /// Healthy for a liveness probe, with client-go's meaning (its
    /// `HealthzAdaptor`): false only for a leader still leading at its
    /// local deadline. The engine ends every term by then, so such a leader
    /// is stuck and restarting the process is the cure. A follower is live
    /// whatever the store does: when the store is down every replica is cut
    /// off, and restarting them all would not bring it back.
    pub fn is_live(&self) -> bool {
        match self {
            Health::Leading(l) => !(l.leading && l.until_deadline.is_zero()),
            Health::Following { .. } => true,
        }
    }
}

/// The snapshot as a health endpoint answers it (feature `serde`, on in the
/// `leasehold` facade). Every form has `live` ([`Health::is_live`]),
/// `healthy` ([`Health::is_healthy`]) and `state`:
///
/// - `{"state":"leading","token":7,"until_deadline_ms":2400,"last_error":null}`;
/// - `{"state":"following","store":"ok","last_contact_ms_ago":120}`, or
///   `"store":"unknown"` before the first store call, or
///   `"store":"cut_off","cut_off_for_ms":5200,"last_error":"..."`.
///
/// Times are relative to the moment of serializing (an [`Instant`] means
/// nothing to another process).
#[cfg(feature = "serde")]
impl serde::Serialize for Health {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let ago = |t: Instant| ms(Instant::now().saturating_duration_since(t));
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("live", &self.is_live())?;
        map.serialize_entry("healthy", &self.is_healthy())?;
        match self {
            Health::Leading(l) => {
                map.serialize_entry("state", "leading")?;
                map.serialize_entry("token", &l.token.get())?;
                map.serialize_entry("until_deadline_ms", &ms(l.until_deadline))?;
                map.serialize_entry("last_error", &l.last_error.as_ref().map(Error::to_string))?;
            }
            Health::Following { contact } => {
                map.serialize_entry("state", "following")?;
                match contact {
                    StoreContact::Unknown => map.serialize_entry("store", "unknown")?,
                    StoreContact::Ok { at } => {
                        map.serialize_entry("store", "ok")?;
                        map.serialize_entry("last_contact_ms_ago", &ago(*at))?;
                    }
                    StoreContact::CutOff { since, last_error } => {
                        map.serialize_entry("store", "cut_off")?;
                        map.serialize_entry("cut_off_for_ms", &ago(*since))?;
                        map.serialize_entry("last_error", &last_error.to_string())?;
                    }
                }
            }
        }
        map.end()
    }
}

/// The stable name of an error's kind, used as the `kind` metric label.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::InvalidOption { .. } => "invalid_option",
        Error::Config(_) => "config",
        Error::Lost(_) => "lost",
        Error::Unavailable { .. } => "unavailable",
        Error::Timeout { .. } => "timeout",
        Error::NotSupported { .. } => "not_supported",
        Error::PermissionDenied { .. } => "permission_denied",
        Error::InvalidRecord { .. } => "invalid_record",
        Error::Cancelled => "cancelled",
        Error::Backend { .. } => "backend",
    }
}

#[derive(Debug)]
struct State {
    contact: StoreContact,
    /// The current term: token, local deadline, last renewal error.
    term: Option<(FencingToken, Instant, Option<Error>)>,
}

/// Shared by an elector, its clones and its terms' heartbeats.
#[derive(Debug)]
pub(crate) struct Monitor {
    state: Mutex<State>,
    #[cfg(feature = "metrics")]
    labels: [(&'static str, String); 2],
    #[cfg(feature = "metrics")]
    backend: &'static str,
}

impl Monitor {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(options: &ElectionOptions, backend: &'static str) -> Self {
        Monitor {
            state: Mutex::new(State {
                contact: StoreContact::Unknown,
                term: None,
            }),
            #[cfg(feature = "metrics")]
            labels: [
                ("election", options.election.clone()),
                ("candidate", options.candidate_id.clone()),
            ],
            #[cfg(feature = "metrics")]
            backend,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The snapshot.
    pub(crate) fn health(&self) -> Health {
        let s = self.state();
        match &s.term {
            Some((token, deadline, last_error)) => Health::Leading(LeaderHealth {
                leading: true,
                token: *token,
                until_deadline: deadline.saturating_duration_since(Instant::now()),
                last_error: last_error.clone(),
            }),
            None => Health::Following {
                contact: s.contact.clone(),
            },
        }
    }

    /// The store answered a call.
    pub(crate) fn store_ok(&self) {
        let leading = {
            let mut s = self.state();
            s.contact = StoreContact::Ok { at: Instant::now() };
            s.term.is_some()
        };
        self.follower_gauge(leading);
    }

    /// A follower's is-leader gauge, set again at each of its store calls:
    /// a recorder installed after the elector was built (the `metrics`
    /// crate has no hook for that) sees every candidate from its next call.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn follower_gauge(&self, leading: bool) {
        #[cfg(feature = "metrics")]
        if !leading {
            metrics::gauge!("leasehold_leader_is_leader", &self.labels).set(0.0);
        }
    }

    /// A store call failed (`operation`: acquire, renew, release, ...).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn store_error(&self, operation: &'static str, e: &Error) {
        if matches!(e, Error::Cancelled | Error::Lost(_)) {
            return;
        }
        let leading = {
            let mut s = self.state();
            let since = match &s.contact {
                StoreContact::CutOff { since, .. } => *since,
                _ => Instant::now(),
            };
            s.contact = StoreContact::CutOff {
                since,
                last_error: e.clone(),
            };
            s.term.is_some()
        };
        self.follower_gauge(leading);
        #[cfg(feature = "metrics")]
        metrics::counter!(
            "leasehold_store_errors_total",
            &[
                self.labels[0].clone(),
                self.labels[1].clone(),
                ("backend", self.backend.to_string()),
                ("operation", operation.to_string()),
                ("kind", error_kind(e).to_string()),
            ]
        )
        .increment(1);
    }

    /// A campaign won a term after waiting `waited`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn term_started(&self, token: FencingToken, deadline: Instant, waited: Duration) {
        self.state().term = Some((token, deadline, None));
        #[cfg(feature = "metrics")]
        {
            metrics::counter!("leasehold_terms_started_total", &self.labels).increment(1);
            metrics::histogram!("leasehold_campaign_wait_seconds", &self.labels)
                .record(waited.as_secs_f64());
            self.deadline_gauge(deadline);
        }
    }

    /// The leader's gauges, set at the term's start and again at every
    /// renewal attempt: a recorder installed mid-term (after the elector was
    /// built) shows the leader within one renew interval.
    #[cfg(feature = "metrics")]
    fn deadline_gauge(&self, deadline: Instant) {
        metrics::gauge!("leasehold_leader_is_leader", &self.labels).set(1.0);
        metrics::gauge!("leasehold_leader_deadline_seconds", &self.labels).set(
            deadline
                .saturating_duration_since(Instant::now())
                .as_secs_f64(),
        );
    }

    /// A renewal of the term `token` succeeded after `latency`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn renewed(&self, token: FencingToken, deadline: Instant, latency: Duration) {
        self.store_ok();
        let current = match &mut self.state().term {
            Some(t) if t.0 == token => {
                t.1 = deadline;
                t.2 = None;
                true
            }
            _ => false,
        };
        #[cfg(feature = "metrics")]
        {
            metrics::histogram!("leasehold_renewal_duration_seconds", &self.labels)
                .record(latency.as_secs_f64());
            // Not for a term that ended meanwhile.
            if current {
                self.deadline_gauge(deadline);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = current;
    }

    /// A renewal of the term `token` failed (not with "lost").
    pub(crate) fn renew_failed(&self, token: FencingToken, deadline: Instant, e: &Error) {
        self.store_error("renew", e);
        let current = match &mut self.state().term {
            Some(t) if t.0 == token => {
                t.2 = Some(e.clone());
                true
            }
            _ => false,
        };
        #[cfg(feature = "metrics")]
        if current {
            self.deadline_gauge(deadline);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (deadline, current);
    }

    /// The term `token` ended; `reason` is `released`, `lease_lost` or
    /// `unreachable`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn term_ended(&self, token: FencingToken, reason: &'static str) {
        let ended = {
            let mut s = self.state();
            let ours = s.term.as_ref().is_some_and(|t| t.0 == token);
            if ours {
                s.term = None;
            }
            ours
        };
        #[cfg(feature = "metrics")]
        if ended {
            metrics::gauge!("leasehold_leader_is_leader", &self.labels).set(0.0);
            metrics::gauge!("leasehold_leader_deadline_seconds", &self.labels).set(0.0);
            metrics::counter!(
                "leasehold_terms_lost_total",
                &[
                    self.labels[0].clone(),
                    self.labels[1].clone(),
                    ("reason", reason.to_string()),
                ]
            )
            .increment(1);
        }
    }

    /// Set the is-leader gauge to 0 for an elector that has not led yet,
    /// so that `sum(leasehold_leader_is_leader)` counts every candidate.
    pub(crate) fn register(&self) {
        #[cfg(feature = "metrics")]
        if self.state().term.is_none() {
            metrics::gauge!("leasehold_leader_is_leader", &self.labels).set(0.0);
        }
    }
}

#[cfg(all(test, feature = "serde"))]
mod tests {
    use super::*;

    fn json(h: &Health) -> serde_json::Value {
        serde_json::to_value(h).expect("serialize")
    }

    #[tokio::test(start_paused = true)]
    async fn every_form_serializes_with_live_healthy_and_state() {
        let leading = Health::Leading(LeaderHealth {
            leading: true,
            token: FencingToken(7),
            until_deadline: Duration::from_millis(2400),
            last_error: None,
        });
        assert_eq!(
            json(&leading),
            serde_json::json!({"live": true, "healthy": true, "state": "leading", "token": 7, "until_deadline_ms": 2400, "last_error": null})
        );
        let stuck = Health::Leading(LeaderHealth {
            leading: true,
            token: FencingToken(8),
            until_deadline: Duration::ZERO,
            last_error: Some(Error::unavailable("etcd", "connection refused")),
        });
        let v = json(&stuck);
        assert_eq!(
            (v["live"].as_bool(), v["healthy"].as_bool()),
            (Some(false), Some(false))
        );
        assert!(
            v["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("connection refused")),
            "{v}"
        );

        let unknown = Health::Following {
            contact: StoreContact::Unknown,
        };
        assert_eq!(
            json(&unknown),
            serde_json::json!({"live": true, "healthy": true, "state": "following", "store": "unknown"})
        );
        let at = Instant::now();
        tokio::time::advance(Duration::from_millis(120)).await;
        let ok = Health::Following {
            contact: StoreContact::Ok { at },
        };
        assert_eq!(
            json(&ok),
            serde_json::json!({"live": true, "healthy": true, "state": "following", "store": "ok", "last_contact_ms_ago": 120})
        );
        let cut = Health::Following {
            contact: StoreContact::CutOff {
                since: at,
                last_error: Error::unavailable("etcd", "down"),
            },
        };
        let v = json(&cut);
        assert_eq!(
            (v["live"].as_bool(), v["healthy"].as_bool()),
            (Some(true), Some(false)),
            "a follower cut off is live, not ready: {v}"
        );
        assert_eq!(
            (v["store"].as_str(), v["cut_off_for_ms"].as_u64()),
            (Some("cut_off"), Some(120))
        );
    }
}
