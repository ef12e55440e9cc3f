//! Three candidates, one in-memory store, one process: election, a crash
//! and failover, then a graceful handover — in about five seconds.
//!
//! Run: `cargo run --example quickstart`

use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold::faulty::{Fault, FaultyBackend};
use leasehold::memory::MemoryStore;
use leasehold::{CancellationToken, ElectionOptions, Elector, Leadership};
use tokio::time::{Instant, sleep};

const TTL: Duration = Duration::from_secs(2);

fn say(start: Instant, who: &str, what: impl std::fmt::Display) {
    let t = start.elapsed().as_secs_f64();
    println!("[{t:6.3}s] {who:<8} {what}");
}

/// When each candidate was elected and stepped down.
type Events = Arc<Mutex<Vec<(&'static str, &'static str, Instant)>>>;

fn when(events: &Events, name: &str, what: &str) -> Option<Instant> {
    let events = events.lock().unwrap_or_else(|e| e.into_inner());
    events
        .iter()
        .rev()
        .find(|(n, w, _)| *n == name && *w == what)
        .map(|e| e.2)
}

/// A service's work while it leads: here, just wait for the done signal.
async fn work(start: Instant, events: Events, name: &'static str, leadership: Leadership) {
    let record = |what| {
        events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name, what, Instant::now()))
    };
    record("elected");
    say(
        start,
        name,
        format!("ELECTED  token={}", leadership.fencing_token()),
    );
    let reason = leadership.lost().await;
    record("lost");
    say(start, name, format!("stepped down: {reason}"));
}

#[tokio::main]
async fn main() -> leasehold::Result<()> {
    let start = Instant::now();
    let events = Events::default();
    let store = MemoryStore::new();
    println!("leasehold quickstart: 3 candidates, in-memory store, ttl {TTL:?}\n");

    let mut stops = Vec::new();
    let mut faults = Vec::new();
    let mut tasks = Vec::new();
    for (i, name) in ["alpha", "beta", "gamma"].into_iter().enumerate() {
        let (backend, fault) = FaultyBackend::wrap(Arc::new(store.client()));
        let mut options = ElectionOptions::new("quickstart", name).with_ttl(TTL);
        options.value = format!("10.0.0.{}:8080", i + 1).into_bytes();
        let elector = Elector::new(backend, options)?;
        let stop = CancellationToken::new();
        let s = stop.clone();
        let ev = events.clone();
        tasks.push(tokio::spawn(async move {
            elector
                .run(s, move |l| work(start, ev.clone(), name, l))
                .await
        }));
        stops.push(stop);
        faults.push(fault);
        // Arrive in order, so the queue is alpha, beta, gamma.
        sleep(Duration::from_millis(50)).await;
    }

    // An observer that is not a candidate.
    let observer = Elector::new(
        Arc::new(store.client()),
        ElectionOptions::new("quickstart", "observer").with_ttl(TTL),
    )?;
    let mut leaders = observer.observe().await?;
    tokio::spawn(async move {
        loop {
            let now = leaders.borrow_and_update().clone();
            match now {
                Some(l) => say(
                    start,
                    "observer",
                    format!(
                        "leader is {} at {} (token {})",
                        l.id,
                        l.value_str().unwrap_or("?"),
                        l.token
                    ),
                ),
                None => say(start, "observer", "no leader"),
            }
            if leaders.changed().await.is_err() {
                break;
            }
        }
    });

    sleep(Duration::from_millis(800)).await;
    println!("\n-- crash: alpha's link to the store goes silent; it cannot release --");
    let crashed = Instant::now();
    faults[0].set(Fault::BlackHole);
    // alpha steps down on its own clock (ttl - margin after its last renewal);
    // the store expires its lease after the ttl; beta, next in line, leads.
    sleep(TTL + Duration::from_millis(700)).await;
    if let (Some(lost), Some(elected)) = (
        when(&events, "alpha", "lost"),
        when(&events, "beta", "elected"),
    ) {
        say(
            start,
            "demo",
            format!(
                "failover {:?} after the crash (ttl {TTL:?}); alpha's done signal fired {:?} before beta led",
                elected - crashed,
                elected.saturating_duration_since(lost)
            ),
        );
    }

    println!("\n-- graceful handover: beta shuts down (its run() is cancelled) --");
    let handover = Instant::now();
    stops[1].cancel();
    sleep(Duration::from_millis(300)).await;
    if let Some(elected) = when(&events, "gamma", "elected") {
        say(
            start,
            "demo",
            format!("handover to gamma took {:?}", elected - handover),
        );
    }
    let now = observer.leader().await?;
    say(
        start,
        "demo",
        format!(
            "the store says the leader is {}",
            now.as_ref().map_or("nobody", |l| l.id.as_str())
        ),
    );

    println!("\n-- shutting down --");
    faults[0].set(Fault::None);
    for stop in &stops {
        stop.cancel();
    }
    for task in tasks {
        task.await.expect("candidate task panicked")?;
    }
    sleep(Duration::from_millis(50)).await;
    Ok(())
}
