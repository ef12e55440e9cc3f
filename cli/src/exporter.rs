//! `--metrics-addr HOST:PORT` (and `serve`'s own listener): an axum router
//! that answers `GET /metrics` (Prometheus text, from
//! metrics-exporter-prometheus's recorder), `GET /healthz` (liveness) and
//! `GET /readyz` (readiness), both with the elector's health snapshot as
//! JSON.
//!
//! Health has client-go's meaning (its `HealthzAdaptor`):
//!
//! * `/healthz` fails (503) only for a leader stuck past its local deadline:
//!   the engine should have ended the term by then, so the process is wedged
//!   and restarting it is the cure. A follower cut off from the store is
//!   alive: restarting it would not bring the store back.
//! * `/readyz` answers 200 for every candidate whose elector runs, leader
//!   or follower, reachable store or not, so that a store outage does not take
//!   every replica out of a Service at once; `/readyz?role=leader` answers
//!   200 only on a leader with time left before its deadline (a Service that
//!   routes to the leader alone).

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use leasehold::{Elector, Health};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tokio::net::TcpListener;

/// Histogram buckets, in seconds: renewal latencies (milliseconds to the
/// request timeout) and campaign waits (up to minutes).
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The bound listener and the installed recorder, before the elector exists
/// (so that the metrics it registers when created are recorded).
pub(crate) struct Exporter {
    pub(crate) listener: TcpListener,
    pub(crate) handle: PrometheusHandle,
}

/// Binds `addr` and installs the Prometheus recorder as the global one;
/// `flag` is the option the operator typed it with (`--metrics-addr`,
/// `--listen`), for the error message.
///
/// # Errors
/// A message naming the flag and the address when it cannot be bound, or
/// when a recorder was installed already.
pub(crate) async fn bind(flag: &str, addr: &str) -> Result<Exporter, String> {
    if !addr.contains(':') {
        return Err(format!(
            "{flag} {addr}: give an address and a port, such as 127.0.0.1:9464 or [::1]:9464"
        ));
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{flag} {addr}: cannot listen there: {e}"))?;
    // Histograms (aggregatable across candidates), not the default summaries.
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("{flag} {addr}: cannot install the metrics recorder: {e}"))?;
    describe();
    Ok(Exporter { listener, handle })
}

/// The `# HELP` text (and unit) of every metric the engine records, as the
/// README's "Metrics" table says.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "leasehold_leader_is_leader",
        "1 while this candidate leads the election, else 0"
    );
    describe_counter!("leasehold_terms_started_total", "Terms won");
    describe_counter!(
        "leasehold_terms_lost_total",
        "Terms ended, by reason: released, lease_lost, unreachable"
    );
    describe_histogram!(
        "leasehold_renewal_duration_seconds",
        Unit::Seconds,
        "Time from sending a successful renewal to its answer"
    );
    describe_gauge!(
        "leasehold_leader_deadline_seconds",
        Unit::Seconds,
        "Time left to the local deadline at the last renewal attempt; 0 when not leading"
    );
    describe_counter!(
        "leasehold_store_errors_total",
        "Failed store calls of campaigns and heartbeats, by backend, operation and kind"
    );
    describe_histogram!(
        "leasehold_campaign_wait_seconds",
        Unit::Seconds,
        "Time from the start of a campaign to winning it"
    );
}

/// What the health routes read.
#[derive(Clone)]
pub(crate) struct Probe {
    pub(crate) elector: Elector,
    pub(crate) metrics: PrometheusHandle,
}

/// `/metrics`, `/healthz` and `/readyz` of `probe`'s elector.
pub(crate) fn router(probe: Probe) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(probe)
}

/// Serves [`router`] on the exporter's listener in a background task for the
/// life of the process (`--metrics-addr` of campaign, run and observe).
pub(crate) fn serve(exporter: Exporter, elector: Elector) {
    let Exporter { listener, handle } = exporter;
    if let Ok(local) = listener.local_addr() {
        tracing::info!(addr = %local, "serving /metrics, /healthz and /readyz");
    }
    let app = router(Probe {
        elector,
        metrics: handle,
    })
    .fallback(not_found);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "--metrics-addr: the HTTP server stopped");
        }
    });
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found: try /metrics, /healthz or /readyz\n",
    )
        .into_response()
}

pub(crate) async fn metrics(State(probe): State<Probe>) -> Response {
    probe.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        probe.metrics.render(),
    )
        .into_response()
}

pub(crate) async fn healthz(State(probe): State<Probe>) -> Response {
    let health = probe.elector.health();
    let live = health.is_live();
    json_status(live, health_json(&health))
}

/// `/readyz`'s query: `role=leader` for a leader-only readiness.
#[derive(Deserialize, Default)]
pub(crate) struct ReadyQuery {
    pub(crate) role: Option<String>,
}

async fn readyz(State(probe): State<Probe>, Query(query): Query<ReadyQuery>) -> Response {
    let health = probe.elector.health();
    match readiness(&health, query.role.as_deref()) {
        Ok(ready) => json_status(ready, health_json(&health)),
        Err(message) => (StatusCode::BAD_REQUEST, message).into_response(),
    }
}

/// 200 or 503 with a JSON body.
pub(crate) fn json_status(ok: bool, body: serde_json::Value) -> Response {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// Readiness for `role`: `None` (every live candidate is ready, the store
/// reachable or not) or `Some("leader")` (only a healthy leader).
///
/// # Errors
/// An unknown role, in the words of the query.
pub(crate) fn readiness(health: &Health, role: Option<&str>) -> Result<bool, String> {
    match role {
        None | Some("" | "any") => Ok(health.is_live()),
        Some("leader") => Ok(matches!(health, Health::Leading(l) if l.is_healthy())),
        Some(other) => Err(format!(
            "/readyz?role={other}: unknown role; use role=leader (ready only while leading) or no role (ready while running)\n"
        )),
    }
}

/// The health snapshot as JSON (core's `Serialize` of [`Health`]: `live`,
/// `healthy`, `state`, and per state the token and time to the deadline, or
/// the store contact).
pub(crate) fn health_json(health: &Health) -> serde_json::Value {
    serde_json::to_value(health).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use leasehold::faulty::{Fault, FaultyBackend};
    use leasehold::memory::MemoryStore;
    use leasehold::{ElectionOptions, Elector, Health};

    use super::{health_json, readiness};

    /// A leader whose runtime is starved past its deadline (the thread is
    /// blocked, so the engine cannot end the term) fails liveness; once the
    /// engine runs again it ends the term and the candidate is live.
    #[tokio::test(flavor = "current_thread")]
    async fn only_a_leader_stuck_past_its_deadline_fails_liveness() {
        let store = MemoryStore::new();
        let ttl = Duration::from_millis(600);
        let options = ElectionOptions::new("stuck", "a").with_ttl(ttl);
        let elector = Elector::new(Arc::new(store.client()), options).expect("elector");
        let leadership = elector.lock().await.expect("lead");
        let healthy = elector.health();
        assert!(healthy.is_live(), "{healthy:?}");
        assert_eq!(readiness(&healthy, Some("leader")), Ok(true));
        // Stuck: nothing else on this runtime runs while the thread sleeps.
        std::thread::sleep(ttl + Duration::from_millis(200));
        let stuck = elector.health();
        assert!(
            matches!(&stuck, Health::Leading(l) if l.until_deadline.is_zero()),
            "{stuck:?}"
        );
        assert!(!stuck.is_live(), "{stuck:?}");
        assert_eq!(readiness(&stuck, None), Ok(false));
        assert_eq!(readiness(&stuck, Some("leader")), Ok(false));
        assert_eq!(health_json(&stuck)["live"], false);
        // Unstuck: the engine ends the term at once (bounded wait).
        let reason = tokio::time::timeout(Duration::from_secs(5), leadership.lost())
            .await
            .expect("the term ends once the engine runs");
        let after = elector.health();
        assert!(after.is_live(), "{after:?} after {reason}");
        assert_eq!(readiness(&after, Some("leader")), Ok(false));
    }

    /// A follower cut off from the store is live and ready (a store outage
    /// must not take every replica out of a Service), but not ready for
    /// role=leader.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_follower_cut_off_from_the_store_stays_live_and_ready() {
        let store = MemoryStore::new();
        let options = ElectionOptions::new("cut-off", "b").with_ttl(Duration::from_secs(3));
        let leader = Elector::new(
            Arc::new(store.client()),
            ElectionOptions::new("cut-off", "a").with_ttl(Duration::from_secs(3)),
        )
        .expect("elector a");
        let _held = leader.lock().await.expect("a leads");
        let (backend, faults) = FaultyBackend::wrap(Arc::new(store.client()));
        let follower = Elector::new(backend, options).expect("elector b");
        faults.set(Fault::Fail);
        let campaign = {
            let follower = follower.clone();
            tokio::spawn(async move { follower.lock().await })
        };
        // Bounded: 100 steps of 100 ms of paused time.
        for _ in 0..100 {
            if matches!(follower.health(), Health::Following { .. })
                && !follower.health().is_healthy()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let cut_off = follower.health();
        assert!(
            !cut_off.is_healthy(),
            "the follower is cut off: {cut_off:?}"
        );
        assert!(cut_off.is_live(), "{cut_off:?}");
        assert_eq!(readiness(&cut_off, None), Ok(true));
        assert_eq!(readiness(&cut_off, Some("leader")), Ok(false));
        assert!(
            readiness(&cut_off, Some("boss"))
                .unwrap_err()
                .contains("role=boss")
        );
        assert_eq!(health_json(&cut_off)["store"], "cut_off");
        campaign.abort();
    }
}
