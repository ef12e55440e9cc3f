//! A service that campaigns and serves its health and metrics over HTTP:
//! `/healthz` (readiness: 200 when [`Elector::health`] is healthy, 503 when
//! not, JSON body), `/leader` (200 only on the leader, for a Service that
//! routes to the leader alone) and `/metrics` (Prometheus text from the
//! engine's `metrics` feature, through metrics-exporter-prometheus). Plain
//! tokio: one request per connection.
//!
//! It lives in the CLI's package, which already has the exporter, so that the
//! library's own examples (the newcomer's demo among them) do not build it.
//!
//! Run: `cargo run -p leasehold-cli --example metrics_health -- [STORE_URL] [HOST:PORT]`
//! (default `memory://metrics-demo?ttl=3s` and `127.0.0.1:9464`), then
//! `curl -i 127.0.0.1:9464/healthz` and `curl 127.0.0.1:9464/metrics`.
//! Against etcd: `cargo run -p leasehold-cli --example metrics_health --
//! etcd://127.0.0.1:2379/metrics-demo`; start two on different ports and stop
//! the leader to watch `leasehold_leader_is_leader` move. Ctrl-C stops it.

use std::time::Duration;

use leasehold::{CancellationToken, Elector, Health, Leadership};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The leader's work: stop when the term ends.
async fn work(leadership: Leadership) {
    println!("leading (token {})", leadership.fencing_token());
    leadership.lost().await;
    println!("not leading any more");
}

/// Answer one request: `/healthz`, `/leader`, `/metrics`, else 404.
async fn answer(mut stream: TcpStream, elector: &Elector, metrics: &PrometheusHandle) {
    let mut buf = [0u8; 2048];
    let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
    else {
        return;
    };
    let request = String::from_utf8_lossy(&buf[..n]);
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let health = elector.health();
    let (status, body) = match path {
        "/healthz" => (
            if health.is_healthy() { 200 } else { 503 },
            format!(
                "{{\"healthy\":{},\"state\":{:?}}}\n",
                health.is_healthy(),
                describe(&health)
            ),
        ),
        "/leader" => (
            if health.is_leading() { 200 } else { 503 },
            format!("{{\"leading\":{}}}\n", health.is_leading()),
        ),
        "/metrics" => (200, metrics.render()),
        _ => (404, "try /healthz, /leader or /metrics\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        if status == 200 { "OK" } else { "Not OK" },
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
}

/// One line for a health snapshot.
fn describe(health: &Health) -> String {
    match health {
        Health::Leading(l) => format!("leading, {:?} to the deadline", l.until_deadline),
        Health::Following { contact } => format!("following, store: {contact:?}"),
        other => format!("{other:?}"),
    }
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
        "candidate {} in {:?}; http://{addr}/healthz, /leader, /metrics; Ctrl-C to stop",
        elector.options().candidate_id,
        elector.options().election
    );

    let server = {
        let (elector, metrics) = (elector.clone(), metrics.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (elector, metrics) = (elector.clone(), metrics.clone());
                tokio::spawn(async move { answer(stream, &elector, &metrics).await });
            }
        })
    };
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
