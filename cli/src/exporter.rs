//! `--metrics-addr HOST:PORT`: a tiny HTTP/1.1 server on a tokio listener
//! that answers `GET /metrics` (Prometheus text, from
//! metrics-exporter-prometheus's recorder) and `GET /healthz` (the elector's
//! health snapshot as JSON: 200 when healthy, 503 when not). One request per
//! connection, bounded in size and time, so a stuck client cannot hold
//! anything but its own connection.

use std::time::Duration;

use leasehold::{Elector, Health, StoreContact};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

/// The most a request head may take, in bytes and in time.
const MAX_HEAD: usize = 8 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Histogram buckets, in seconds: renewal latencies (milliseconds to the
/// request timeout) and campaign waits (up to minutes).
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The bound listener and the installed recorder, before the elector exists
/// (so that the metrics it registers when created are recorded).
pub(crate) struct Exporter {
    listener: TcpListener,
    handle: PrometheusHandle,
}

/// Binds `addr` and installs the Prometheus recorder as the global one.
///
/// # Errors
/// A message naming the address when it cannot be bound, or when a recorder
/// was installed already.
pub(crate) async fn bind(addr: &str) -> Result<Exporter, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--metrics-addr {addr}: cannot listen there: {e}"))?;
    // Histograms (aggregatable across candidates), not the default summaries.
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("--metrics-addr {addr}: cannot install the metrics recorder: {e}"))?;
    Ok(Exporter { listener, handle })
}

/// Serves `/metrics` and `/healthz` of `elector` in a background task for
/// the life of the process.
pub(crate) fn serve(exporter: Exporter, elector: Elector) {
    let Exporter { listener, handle } = exporter;
    if let Ok(local) = listener.local_addr() {
        tracing::info!(addr = %local, "serving /metrics and /healthz");
    }
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let (handle, elector) = (handle.clone(), elector.clone());
                    tokio::spawn(async move {
                        if let Err(e) = answer(stream, &handle, &elector).await {
                            tracing::debug!(error = %e, "metrics connection failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "--metrics-addr: accepting a connection failed");
                    // Out of file descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
}

/// Reads one request head and writes one response.
async fn answer(
    mut stream: TcpStream,
    handle: &PrometheusHandle,
    elector: &Elector,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    match timeout(HEAD_TIMEOUT, read).await {
        Ok(r) => r?,
        Err(_) => return Ok(()),
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => {
            handle.run_upkeep();
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                handle.render(),
            )
        }
        ("GET", "/healthz") => {
            let health = elector.health();
            let status = if health.is_healthy() {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (status, "application/json", health_json(&health).to_string())
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try /metrics or /healthz\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET is served\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The health snapshot as the JSON body of `/healthz`.
fn health_json(health: &Health) -> serde_json::Value {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let ago = |t: Instant| ms(Instant::now().saturating_duration_since(t));
    match health {
        Health::Leading(l) => json!({
            "healthy": health.is_healthy(),
            "state": "leading",
            "token": l.token.get(),
            "until_deadline_ms": ms(l.until_deadline),
            "last_error": l.last_error.as_ref().map(|e| e.to_string()),
        }),
        Health::Following { contact } => match contact {
            StoreContact::Unknown => json!({
                "healthy": health.is_healthy(),
                "state": "following",
                "store": "unknown",
            }),
            StoreContact::Ok { at } => json!({
                "healthy": health.is_healthy(),
                "state": "following",
                "store": "ok",
                "last_contact_ms_ago": ago(*at),
            }),
            StoreContact::CutOff { since, last_error } => json!({
                "healthy": health.is_healthy(),
                "state": "following",
                "store": "cut_off",
                "cut_off_for_ms": ago(*since),
                "last_error": last_error.to_string(),
            }),
            // StoreContact is non-exhaustive.
            _ => json!({
                "healthy": health.is_healthy(),
                "state": "following",
            }),
        },
        _ => json!({ "healthy": health.is_healthy() }),
    }
}
