//! `leasehold serve`: leader election as a local HTTP service, for services
//! in any language (the sidecar pattern of Kubernetes' `leader-elector`).
//!
//! It campaigns (unless `--observe-only`), follows the election's leader, and
//! serves on `--listen` (loopback by default):
//!
//! * `GET /`: a status page that updates itself from `/events`;
//! * `GET /leader`: `{"name", "value", "token"}` of the current leader
//!   (`name` null when nobody leads);
//! * `GET /status`: this candidate's state, token and health, the leader,
//!   and the last leaders seen;
//! * `GET /events`: Server-Sent Events of leader changes and of this
//!   candidate's terms;
//! * `POST /resign`: hand the lease over now (refused from non-loopback
//!   addresses unless `--resign-token-file` or `LEASEHOLD_RESIGN_TOKEN` is
//!   set and the request carries `Authorization: Bearer <token>`);
//! * `/healthz`, `/readyz`, `/metrics`: as the exporter (client-go's health
//!   meaning).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use leasehold::{CancellationToken, Elector, LeaderInfo, Leadership, LossReason};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::sleep;

use crate::exporter::{self, Exporter, Probe, ReadyQuery};
use crate::{Event, LeaderView, Shutdown, emit, lost};

/// How many leaders `/status` and the page remember.
const HISTORY: usize = 20;

/// The page at `/`: one file, no external assets.
const PAGE: &str = include_str!("status.html");

/// `serve`'s options, parsed.
pub(crate) struct Options {
    /// Follow the election without campaigning.
    pub(crate) observe_only: bool,
    /// The bearer token that lets a non-loopback caller resign.
    pub(crate) resign_token: Option<String>,
}

/// This candidate's state, as `/status` shows it.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Role {
    /// Reading the election for the first time.
    Starting,
    /// Campaigning or waiting in line.
    Following,
    /// Leading a term.
    Leading,
    /// Sat out after a resign, for one ttl or until someone else leads.
    Resigned,
    /// `--observe-only`: not a candidate.
    Observing,
    /// Stopping (a signal).
    Stopping,
}

/// One leader seen by the observer.
#[derive(Serialize, Debug, Clone)]
struct Seen {
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    /// When it was first seen (RFC 3339).
    since: String,
}

/// What the handlers share.
struct Shared {
    elector: Elector,
    options: Options,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The mutable part, under one lock.
    now: Mutex<Now>,
    /// Events to `/events` subscribers (JSON text, by event name).
    events: broadcast::Sender<(&'static str, String)>,
    /// Resign requests to the campaign loop: the term's token, and where to
    /// answer.
    resign: mpsc::Sender<(u64, oneshot::Sender<Result<u64, String>>)>,
    /// Cancelled at shutdown: ends event streams.
    stop: CancellationToken,
}

struct Now {
    state: Role,
    /// The token of this candidate's current term.
    token: Option<u64>,
    terms_won: u64,
    leader: Option<LeaderInfo>,
    history: VecDeque<Seen>,
}

/// Resign requests to the campaign loop: the term's token, and where to
/// answer.
type ResignRx = mpsc::Receiver<(u64, oneshot::Sender<Result<u64, String>>)>;

impl Shared {
    /// The state of a sidecar that is starting, and the campaign loop's end
    /// of the resign channel.
    fn new(
        elector: Elector,
        options: Options,
        metrics: metrics_exporter_prometheus::PrometheusHandle,
        stop: CancellationToken,
    ) -> (Arc<Shared>, ResignRx) {
        let (events, _) = broadcast::channel(64);
        let (resign, resign_rx) = mpsc::channel(8);
        let shared = Arc::new(Shared {
            elector,
            options,
            metrics,
            now: Mutex::new(Now {
                state: Role::Starting,
                token: None,
                terms_won: 0,
                leader: None,
                history: VecDeque::new(),
            }),
            events,
            resign,
            stop,
        });
        (shared, resign_rx)
    }

    fn now(&self) -> std::sync::MutexGuard<'_, Now> {
        self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `value` as the SSE event `name` (nobody listening is fine).
    fn publish(&self, name: &'static str, value: serde_json::Value) {
        let _ = self.events.send((name, value.to_string()));
    }

    fn set_state(&self, state: Role, token: Option<u64>) {
        {
            let mut now = self.now();
            now.state = state;
            now.token = token;
        }
        self.publish("state", json!({ "state": state, "token": token }));
    }

    fn status(&self) -> serde_json::Value {
        let health = self.elector.health();
        let o = self.elector.options();
        let now = self.now();
        let history: Vec<&Seen> = now.history.iter().rev().collect();
        json!({
            "election": o.election,
            "id": o.candidate_id,
            "observe_only": self.options.observe_only,
            "state": now.state,
            "token": now.token,
            "terms_won": now.terms_won,
            "leader": leader_json(&now.leader),
            "live": health.is_live(),
            "health": exporter::health_json(&health),
            "ttl_ms": crate::millis(o.ttl),
            "history": history,
        })
    }
}

/// The leader-elector shape plus the token.
fn leader_json(l: &Option<LeaderInfo>) -> serde_json::Value {
    let v = LeaderView::of(l);
    json!({ "name": v.leader, "value": v.value, "token": v.token })
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Millisecond)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

/// Runs `serve` until a signal: the observer, the campaign (unless
/// observe-only) and the HTTP server on `exporter`'s listener.
pub(crate) async fn serve(elector: Elector, exporter: Exporter, options: Options) -> ExitCode {
    let shutdown = Shutdown::listen();
    let stop = shutdown.token.clone();
    let Exporter { listener, handle } = exporter;
    let local = listener.local_addr().ok();
    let observe_only = options.observe_only;
    let (shared, resign_rx) = Shared::new(elector.clone(), options, handle, stop.clone());

    let app = router(shared.clone());
    if let Some(addr) = local {
        tracing::info!(%addr, "serving the election on http://{addr}/");
    }
    let server = {
        let stop = stop.clone();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
        })
    };

    // The first read of the election (the HTTP server already answers:
    // live, not ready): retried while the store is unreachable, fatal when
    // retrying cannot help.
    let mut watch = {
        let mut backoff = elector.options().retry_interval;
        loop {
            match elector.observe().await {
                Ok(rx) => break rx,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "reading the election failed; retrying");
                    tokio::select! {
                        _ = sleep(backoff) => {}
                        _ = stop.cancelled() => {
                            shutdown.announce();
                            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
                            return ExitCode::SUCCESS;
                        }
                    }
                    backoff = (backoff * 2).min(elector.options().ttl);
                }
                Err(e) => {
                    stop.cancel();
                    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
                    return crate::fail(e);
                }
            }
        }
    };

    // Follow the leader.
    let observer = {
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let leader = watch.borrow_and_update().clone();
                seen(&shared, leader);
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    r = watch.changed() => if r.is_err() {
                        return match shared.elector.leader().await {
                            Err(e) => Err(e.to_string()),
                            Ok(_) => Err("observing the election stopped on an error that retrying cannot fix (RUST_LOG=leasehold_core=warn shows it)".to_owned()),
                        };
                    },
                }
            }
        })
    };

    let result = if observe_only {
        shared.set_state(Role::Observing, None);
        tokio::select! {
            _ = stop.cancelled() => Ok(()),
            r = observer => r.unwrap_or_else(|e| Err(e.to_string())),
        }
    } else {
        shared.set_state(Role::Following, None);
        let campaign = campaign(shared.clone(), resign_rx, stop.clone());
        tokio::pin!(campaign);
        tokio::select! {
            r = &mut campaign => r.map_err(|e| e.to_string()),
            r = observer => {
                // The observer failed: stop campaigning (releasing a term).
                stop.cancel();
                let _ = campaign.await;
                r.unwrap_or_else(|e| Err(e.to_string()))
            }
        }
    };
    shared.set_state(Role::Stopping, None);
    stop.cancel();
    shutdown.announce();
    // Event streams end with `stop`; requests in flight get a few seconds.
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the HTTP server failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server task failed"),
        Err(_) => tracing::warn!("the HTTP server did not stop within 5s"),
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail(e),
    }
}

/// The observer saw `leader`: remember it and tell subscribers.
fn seen(shared: &Shared, leader: Option<LeaderInfo>) {
    let view = leader_json(&leader);
    {
        let mut now = shared.now();
        let changed = now.leader.as_ref().map(|l| (&l.id, l.token))
            != leader.as_ref().map(|l| (&l.id, l.token))
            || now.history.is_empty();
        now.leader = leader.clone();
        if changed {
            let v = LeaderView::of(&leader);
            now.history.push_back(Seen {
                name: v.leader,
                token: v.token,
                value: v.value,
                since: now_rfc3339(),
            });
            while now.history.len() > HISTORY {
                now.history.pop_front();
            }
        }
    }
    emit(Event::Leader(LeaderView::of(&leader)));
    shared.publish("leader", view);
}

/// Campaign, lead, campaign again, until `stop`; resign on request.
async fn campaign(
    shared: Arc<Shared>,
    mut resign: ResignRx,
    stop: CancellationToken,
) -> leasehold::Result<()> {
    let elector = shared.elector.clone();
    let id = elector.options().candidate_id.clone();
    // Bounded by `stop` (a signal) and by errors that retrying cannot fix.
    loop {
        let Some(leadership) = elector.lock_cancellable(&stop).await? else {
            return Ok(());
        };
        let token = leadership.fencing_token().get();
        shared.now().terms_won += 1;
        shared.set_state(Role::Leading, Some(token));
        emit(Event::Elected {
            id: &id,
            token,
            pid: None,
        });
        shared.publish("elected", json!({ "id": id, "token": token }));
        let resigned = lead(&leadership, &mut resign, &stop).await;
        let was_resign = resigned.is_some();
        let reason = match resigned {
            Some(reply) => {
                let r = leadership.unlock().await.map_err(|e| e.to_string());
                let _ = reply.send(r.clone().map(|()| token));
                if let Err(e) = r {
                    tracing::warn!(%token, error = %e, "release after a resign failed; the next candidate waits until the store ends the lease (its ttl)");
                }
                LossReason::Released
            }
            None if stop.is_cancelled() && !leadership.is_lost() => {
                if let Err(e) = leadership.unlock().await {
                    tracing::warn!(%token, error = %e, "release at shutdown failed; the next candidate waits until the store ends the lease (its ttl)");
                }
                LossReason::Released
            }
            None => leadership.lost().await,
        };
        // Resigns that arrived as the term ended on its own: answer now.
        while let Ok((for_token, reply)) = resign.try_recv() {
            let _ = reply.send(Err(format!(
                "the term with token {for_token} ended ({reason}) before the resign was taken"
            )));
        }
        emit(lost(&reason));
        shared.publish(
            "lost",
            json!({ "token": token, "reason": reason.label(), "detail": reason.to_string() }),
        );
        if stop.is_cancelled() {
            return Ok(());
        }
        if was_resign {
            // Sit out one ttl, or until someone else leads, so that the lease
            // goes to another candidate (a record store's follower polls).
            shared.set_state(Role::Resigned, None);
            let until = tokio::time::Instant::now() + elector.options().ttl;
            // Bounded by the ttl.
            while tokio::time::Instant::now() < until {
                let other = shared
                    .now()
                    .leader
                    .as_ref()
                    .is_some_and(|l| l.token.get() != token);
                if other {
                    break;
                }
                tokio::select! {
                    _ = sleep(Duration::from_millis(100)) => {}
                    _ = stop.cancelled() => return Ok(()),
                }
            }
        }
        shared.set_state(Role::Following, None);
    }
}

/// Leads until the term ends, `stop`, or a resign request for this term
/// (returned, to answer once released).
async fn lead(
    leadership: &Leadership,
    resign: &mut ResignRx,
    stop: &CancellationToken,
) -> Option<oneshot::Sender<Result<u64, String>>> {
    let token = leadership.fencing_token().get();
    // Bounded by the term.
    loop {
        tokio::select! {
            _ = leadership.lost() => return None,
            _ = stop.cancelled() => return None,
            request = resign.recv() => match request {
                Some((for_token, reply)) if for_token == token => {
                    return Some(reply);
                }
                Some((for_token, reply)) => {
                    // A request for a term that ended before it arrived.
                    let _ = reply.send(Err(format!("the term with token {for_token} has ended; this candidate now leads with token {token}: resign again to end it")));
                }
                None => return None,
            },
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let probe = Probe {
        elector: shared.elector.clone(),
        metrics: shared.metrics.clone(),
    };
    let probes = Router::new()
        .route("/metrics", get(exporter::metrics))
        .route("/healthz", get(exporter::healthz))
        .with_state(probe);
    Router::new()
        .route("/", get(page))
        .route("/leader", get(leader))
        .route("/status", get(status))
        .route("/events", get(events))
        .route("/resign", post(resign))
        .route("/readyz", get(readyz))
        .with_state(shared)
        .merge(probes)
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: try /, /leader, /status, /events, POST /resign, /healthz, /readyz or /metrics\n",
            )
        })
}

/// `/readyz`: the exporter's readiness, but not ready before the first read
/// of the election (`/leader` would not know yet).
async fn readyz(State(shared): State<Arc<Shared>>, Query(query): Query<ReadyQuery>) -> Response {
    let health = shared.elector.health();
    let starting = shared.now().state == Role::Starting;
    match exporter::readiness(&health, query.role.as_deref()) {
        Ok(ready) => {
            let mut body = exporter::health_json(&health);
            if starting {
                body["starting"] = json!(true);
            }
            exporter::json_status(ready && !starting, body)
        }
        Err(message) => (StatusCode::BAD_REQUEST, message).into_response(),
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn leader(State(shared): State<Arc<Shared>>) -> Response {
    let body = leader_json(&shared.now().leader);
    axum::Json(body).into_response()
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.status()).into_response()
}

async fn events(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = shared.events.subscribe();
    let first = shared.status().to_string();
    let stop = shared.stop.clone();
    // First a snapshot, then every event until shutdown; a subscriber that
    // fell behind gets a fresh snapshot instead of what it missed.
    let stream = futures_util::stream::unfold(
        (Some(first), rx, stop, shared),
        |(first, mut rx, stop, shared)| async move {
            if let Some(text) = first {
                let ev = SseEvent::default().event("status").data(text);
                return Some((Ok(ev), (None, rx, stop, shared)));
            }
            let ev = tokio::select! {
                _ = stop.cancelled() => return None,
                r = rx.recv() => match r {
                    Ok((name, text)) => SseEvent::default().event(name).data(text),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        SseEvent::default().event("status").data(shared.status().to_string())
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            Some((Ok(ev), (None, rx, stop, shared)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// May a caller at `peer` presenting `presented` resign? Loopback callers
/// may; others only with the configured token.
fn may_resign(
    peer: IpAddr,
    configured: Option<&str>,
    presented: Option<&str>,
) -> Result<(), String> {
    if peer.to_canonical().is_loopback() {
        return Ok(());
    }
    match (configured, presented) {
        (None, _) => Err(format!(
            "POST /resign from {peer} refused: only loopback callers may resign unless a token is set (--resign-token-file FILE or LEASEHOLD_RESIGN_TOKEN) and sent as 'Authorization: Bearer <token>'\n"
        )),
        (Some(_), None) => Err(format!(
            "POST /resign from {peer} refused: send the resign token as 'Authorization: Bearer <token>'\n"
        )),
        (Some(want), Some(got)) if same(want.as_bytes(), got.as_bytes()) => Ok(()),
        (Some(_), Some(_)) => Err(format!(
            "POST /resign from {peer} refused: the bearer token does not match\n"
        )),
    }
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn resign(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let Err(message) = may_resign(peer.ip(), shared.options.resign_token.as_deref(), presented) {
        return (StatusCode::FORBIDDEN, message).into_response();
    }
    if shared.options.observe_only {
        return (
            StatusCode::CONFLICT,
            axum::Json(json!({ "resigned": false, "reason": "observe-only: this process is not a candidate" })),
        )
            .into_response();
    }
    let token = {
        let now = shared.now();
        match (now.state, now.token) {
            (Role::Leading, Some(t)) => t,
            _ => {
                return (
                    StatusCode::CONFLICT,
                    axum::Json(json!({ "resigned": false, "reason": "not leading" })),
                )
                    .into_response();
            }
        }
    };
    let (tx, rx) = oneshot::channel();
    if shared.resign.send((token, tx)).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping\n").into_response();
    }
    // The release is one store call, bounded by the request timeout.
    let wait = shared.elector.options().request_timeout * 2 + Duration::from_secs(1);
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(Ok(token))) => {
            axum::Json(json!({ "resigned": true, "token": token })).into_response()
        }
        Ok(Ok(Err(e))) => (
            StatusCode::CONFLICT,
            axum::Json(json!({ "resigned": false, "reason": e })),
        )
            .into_response(),
        // The term ended on its own before the request was taken.
        Ok(Err(_)) => (
            StatusCode::CONFLICT,
            axum::Json(json!({ "resigned": false, "reason": "the term ended before the resign was taken" })),
        )
            .into_response(),
        Err(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            axum::Json(json!({ "resigned": false, "reason": format!("the release did not finish within {wait:?}; the lease expires with its ttl") })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::{Options, Role, Shared, may_resign, router};
    use std::net::{IpAddr, SocketAddr};
    use std::sync::Arc;

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::{Request, StatusCode, header};
    use leasehold::memory::MemoryStore;
    use leasehold::{CancellationToken, ElectionOptions, Elector};
    use tower::ServiceExt;

    /// A sidecar's router over a memory store, leading (as far as the
    /// handlers can tell), with `token` configured.
    fn leading_sidecar(token: Option<&str>) -> axum::Router {
        let store = MemoryStore::new();
        let elector = Elector::new(
            Arc::new(store.client()),
            ElectionOptions::new("resign", "a"),
        )
        .expect("elector");
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let options = Options {
            observe_only: false,
            resign_token: token.map(str::to_owned),
        };
        let (shared, _rx) = Shared::new(elector, options, handle, CancellationToken::new());
        {
            let mut now = shared.now();
            now.state = Role::Leading;
            now.token = Some(7);
        }
        router(shared)
    }

    async fn post_resign(
        app: axum::Router,
        from: &str,
        bearer: Option<&str>,
    ) -> (StatusCode, String) {
        let mut req = Request::post("/resign");
        if let Some(b) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {b}"));
        }
        let mut req = req.body(Body::empty()).expect("request");
        let peer: SocketAddr = from.parse().expect("peer");
        req.extensions_mut().insert(ConnectInfo(peer));
        let res = app.oneshot(req).await.expect("answer");
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 64 * 1024)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Through the real router: a caller from another address is refused
    /// before anything reaches the campaign, with or without a token
    /// configured, unless it sends the right one.
    #[tokio::test]
    async fn resign_from_another_address_is_refused_through_the_router() {
        let (code, body) = post_resign(leading_sidecar(None), "10.1.2.3:40000", None).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("LEASEHOLD_RESIGN_TOKEN"), "{body}");
        let (code, body) = post_resign(
            leading_sidecar(Some("s3cret")),
            "10.1.2.3:40000",
            Some("wrong"),
        )
        .await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
        assert!(body.contains("does not match"), "{body}");
        // The right token passes the check; the request then goes to the
        // campaign loop (gone here: the receiver was dropped), which answers
        // 503, not 403.
        let (code, body) = post_resign(
            leading_sidecar(Some("s3cret")),
            "10.1.2.3:40000",
            Some("s3cret"),
        )
        .await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let (code, body) = post_resign(leading_sidecar(None), "127.0.0.1:40000", None).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_callers_may_resign_without_a_token() {
        assert_eq!(may_resign(ip("127.0.0.1"), None, None), Ok(()));
        assert_eq!(may_resign(ip("::1"), None, None), Ok(()));
        assert_eq!(
            may_resign(ip("::ffff:127.0.0.1"), Some("s3cret"), None),
            Ok(())
        );
    }

    #[test]
    fn other_callers_need_the_configured_token() {
        let e = may_resign(ip("10.1.2.3"), None, Some("anything")).unwrap_err();
        assert!(
            e.contains("--resign-token-file") && e.contains("LEASEHOLD_RESIGN_TOKEN"),
            "{e}"
        );
        assert!(may_resign(ip("10.1.2.3"), Some("s3cret"), None).is_err());
        assert!(may_resign(ip("10.1.2.3"), Some("s3cret"), Some("s3cres")).is_err());
        assert!(may_resign(ip("10.1.2.3"), Some("s3cret"), Some("s3cret-")).is_err());
        assert_eq!(
            may_resign(ip("10.1.2.3"), Some("s3cret"), Some("s3cret")),
            Ok(())
        );
        assert!(may_resign(ip("::ffff:10.1.2.3"), None, None).is_err());
    }
}
