//! A service that campaigns and serves its health and metrics over HTTP
//! with axum, with client-go's meaning of health: `/healthz` (liveness: 503
//! only for a leader still leading at its local deadline, a stuck process),
//! `/readyz` (200 while the elector runs, whether or not the store answers,
//! so that a store outage does not take every replica out of a Service),
//! `/leader` (200 only on the leader, for a Service that routes to the
//! leader alone) and `/metrics` (Prometheus text from the engine's
//! `metrics` feature, through metrics-exporter-prometheus). Each body is the
//! [`Health`] snapshot's JSON.
//!
//! It lives in the CLI's package, which already has axum and the exporter,
//! so that the library's own examples (the newcomer's demo among them) do
//! not build them.
//!
//! Run: `cargo run -p leasehold-cli --example metrics_health -- [STORE_URL] [HOST:PORT]`
//! (default `memory://metrics-demo?ttl=3s` and `127.0.0.1:9464`), then
//! `curl -i 127.0.0.1:9464/healthz` and `curl 127.0.0.1:9464/metrics`.
//! Against etcd: `cargo run -p leasehold-cli --example metrics_health --
//! etcd://127.0.0.1:2379/metrics-demo`; start two on different ports and stop
//! the leader to watch `leasehold_leader_is_leader` move. Ctrl-C stops it.
//! (`leasehold serve` does all this and more without writing a service.)

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use leasehold::{CancellationToken, Elector, Health, Leadership, StoreContact};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// The leader's work: stop when the term ends.
async fn work(leadership: Leadership) {
    println!("leading (token {})", leadership.fencing_token());
    leadership.lost().await;
    println!("not leading any more");
}

/// Liveness as client-go's `HealthzAdaptor`: only a leader past its own
/// deadline (the engine should have ended the term by then) is not live.
fn is_live(health: &Health) -> bool {
    !matches!(health, Health::Leading(l) if l.leading && l.until_deadline.is_zero())
}

/// The snapshot as a small JSON object.
fn describe(health: &Health) -> serde_json::Value {
    let store = match health {
        Health::Following {
            contact: StoreContact::CutOff { last_error, .. },
        } => {
            format!("cut off: {last_error}")
        }
        Health::Following {
            contact: StoreContact::Ok { .. },
        } => "ok".to_owned(),
        _ => "unknown".to_owned(),
    };
    serde_json::json!({
        "live": is_live(health),
        "leading": health.is_leading(),
        "store": store,
    })
}

fn answer(ok: bool, health: &Health) -> (StatusCode, axum::Json<serde_json::Value>) {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(describe(health)))
}

#[derive(Clone)]
struct App {
    elector: Elector,
    metrics: PrometheusHandle,
}

fn routes(app: App) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|State(a): State<App>| async move {
                let h = a.elector.health();
                answer(is_live(&h), &h)
            }),
        )
        .route(
            "/readyz",
            get(|State(a): State<App>| async move {
                let h = a.elector.health();
                answer(is_live(&h), &h)
            }),
        )
        .route(
            "/leader",
            get(|State(a): State<App>| async move {
                let h = a.elector.health();
                answer(h.is_leading(), &h)
            }),
        )
        .route(
            "/metrics",
            get(|State(a): State<App>| async move { a.metrics.render() }),
        )
        .with_state(app)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "memory://metrics-demo?ttl=3s".to_owned());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9464".to_owned());
    // The recorder first: the elector records its is-leader gauge (0) when
    // it is created.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let elector = leasehold::connect(&url).await?;
    let listener = TcpListener::bind(&addr).await?;
    println!(
        "candidate {} in {:?}; http://{addr}/healthz, /readyz, /leader, /metrics; Ctrl-C to stop",
        elector.options().candidate_id,
        elector.options().election
    );

    let app = routes(App {
        elector: elector.clone(),
        metrics: metrics.clone(),
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    // Summaries need upkeep now and then.
    let upkeep = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                metrics.run_upkeep();
            }
        })
    };

    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.cancel();
    });
    elector.run(shutdown, work).await?;
    server.abort();
    upkeep.abort();
    println!("released; bye");
    Ok(())
}
