//! Tracing fields and health snapshots, under paused tokio time on the
//! in-memory backend with injected faults.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold_core::faulty::{Fault, FaultyBackend};
use leasehold_core::memory::MemoryStore;
use leasehold_core::{ElectionOptions, Elector, Error, Health, StoreContact};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

const TTL: Duration = Duration::from_secs(3);

fn faulty(
    store: &MemoryStore,
    election: &str,
    candidate: &str,
) -> (Elector, leasehold_core::faulty::FaultHandle) {
    let (backend, faults) = FaultyBackend::wrap(Arc::new(store.client()));
    let options = ElectionOptions::new(election, candidate).with_ttl(TTL);
    (Elector::new(backend, options).unwrap(), faults)
}

/// The fields of an event, with those of its enclosing spans (innermost
/// first wins), as an info-level subscriber sees them.
#[derive(Debug, Default, Clone)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Fields>>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        fields
            .0
            .insert("level".into(), event.metadata().level().to_string());
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(f) = span.extensions().get::<Fields>() {
                    for (k, v) in &f.0 {
                        fields.0.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
        }
        self.0.lock().unwrap().push(fields);
    }
}

impl Capture {
    fn with_message(&self, prefix: &str) -> Vec<Fields> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter(|f| f.0.get("message").is_some_and(|m| m.starts_with(prefix)))
            .cloned()
            .collect()
    }
}

fn assert_names(events: &[Fields], what: &str, token: &str) {
    assert!(!events.is_empty(), "no {what:?} event was logged");
    for e in events {
        assert_eq!(
            e.0.get("election").map(String::as_str),
            Some("tr-jobs"),
            "{what}: {e:?}"
        );
        assert_eq!(
            e.0.get("candidate").map(String::as_str),
            Some("worker-a"),
            "{what}: {e:?}"
        );
        assert_eq!(
            e.0.get("token").map(String::as_str),
            Some(token),
            "{what}: {e:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn every_term_event_names_election_candidate_and_token_at_info_level() {
    let capture = Capture::default();
    let subscriber =
        tracing_subscriber::registry().with(capture.clone().with_filter(LevelFilter::INFO));
    let _default = tracing::subscriber::set_default(subscriber);

    let store = MemoryStore::new();
    let (a, faults) = faulty(&store, "tr-jobs", "worker-a");
    let leadership = a.lock().await.unwrap();
    let token = leadership.fencing_token().to_string();
    faults.set(Fault::Fail);
    let reason = leadership.lost().await;
    assert_eq!(reason.label(), "unreachable");

    assert_names(
        &capture.with_message("acquired leadership"),
        "acquired",
        &token,
    );
    assert_names(
        &capture.with_message("renewal failed"),
        "renewal failed",
        &token,
    );
    assert_names(
        &capture.with_message("leadership lost"),
        "leadership lost",
        &token,
    );

    // A released term says so in its span too.
    faults.set(Fault::None);
    let second = a.lock().await.unwrap();
    let token2 = second.fencing_token().to_string();
    second.unlock().await.unwrap();
    let released = capture.with_message("leadership released");
    assert_names(&released, "leadership released", &token2);
}

/// Spawn `lock` on `e`, returning the task.
fn spawn_lock(e: &Elector) -> JoinHandle<leasehold_core::Result<leasehold_core::Leadership>> {
    let e = e.clone();
    tokio::spawn(async move { e.lock().await })
}

#[tokio::test(start_paused = true)]
async fn a_follower_reports_store_contact_and_being_cut_off() {
    let store = MemoryStore::new();
    let (a, _) = faulty(&store, "h-follow", "a");
    let leader = a.lock().await.unwrap();
    let (b, faults) = faulty(&store, "h-follow", "b");
    assert_eq!(
        b.health(),
        Health::Following {
            contact: StoreContact::Unknown
        }
    );
    assert!(b.health().is_healthy());

    let waiting = spawn_lock(&b);
    sleep(Duration::from_millis(10)).await;
    let Health::Following {
        contact: StoreContact::Ok { at },
    } = b.health()
    else {
        panic!("a waiting follower reached the store: {:?}", b.health());
    };
    assert!(b.health().is_healthy());

    // The store goes away: the follower's next call (the queued claim's
    // renewal, every renew interval) fails and it reports cut off since then.
    faults.set(Fault::Fail);
    let cut = Instant::now();
    sleep(TTL).await;
    match b.health() {
        Health::Following {
            contact: StoreContact::CutOff { since, last_error },
        } => {
            assert!(since > at && since >= cut, "cut off after the fault");
            assert!(
                matches!(last_error, Error::Unavailable { .. }),
                "{last_error:?}"
            );
        }
        other => panic!("expected cut off, got {other:?}"),
    }
    assert!(!b.health().is_healthy());
    let since_before = match b.health() {
        Health::Following {
            contact: StoreContact::CutOff { since, .. },
        } => since,
        _ => unreachable!(),
    };
    sleep(TTL).await;
    match b.health() {
        Health::Following {
            contact: StoreContact::CutOff { since, .. },
        } => {
            assert_eq!(
                since, since_before,
                "the cut-off instant is the first failure's"
            )
        }
        other => panic!("still cut off, got {other:?}"),
    }

    // The store is back: healthy again, and b leads after a's release.
    faults.set(Fault::None);
    sleep(TTL).await;
    assert!(
        matches!(
            b.health(),
            Health::Following {
                contact: StoreContact::Ok { .. }
            }
        ),
        "{:?}",
        b.health()
    );
    leader.unlock().await.unwrap();
    let b_leads = waiting.await.unwrap().unwrap();
    assert!(b.health().is_leading());
    assert!(!a.health().is_leading());
    drop(b_leads);
}

#[tokio::test(start_paused = true)]
async fn a_leader_reports_time_left_and_renewal_errors_until_its_deadline() {
    let store = MemoryStore::new();
    let (a, faults) = faulty(&store, "h-lead", "a");
    let leadership = a.lock().await.unwrap();
    let full = TTL - a.options().safety_margin;
    let Health::Leading(h) = a.health() else {
        panic!("leading: {:?}", a.health())
    };
    assert!(
        h.is_healthy() && h.until_deadline <= full && h.until_deadline > full / 2,
        "{h:?}"
    );
    assert_eq!(h.token, leadership.fencing_token());
    assert_eq!(h.last_error, None);
    assert_eq!(leadership.health(), h);

    // Renewals keep the deadline ahead.
    sleep(TTL * 3).await;
    let h = leadership.health();
    assert!(h.is_healthy() && h.until_deadline > full / 2, "{h:?}");

    // Renewals fail: still leading (healthy) but the time left shrinks and
    // the error shows.
    faults.set(Fault::Fail);
    sleep(a.options().renew_interval + Duration::from_millis(100)).await;
    let h = leadership.health();
    assert!(h.is_healthy(), "{h:?}");
    assert!(h.until_deadline < full / 2, "{h:?}");
    assert!(
        matches!(h.last_error, Some(Error::Unavailable { .. })),
        "{h:?}"
    );
    assert_eq!(a.health(), Health::Leading(h));

    // Past the deadline: not leading, and the elector is cut off.
    let reason = leadership.lost().await;
    assert_eq!(reason.label(), "unreachable");
    let h = leadership.health();
    assert!(
        !h.leading && !h.is_healthy() && h.until_deadline.is_zero(),
        "{h:?}"
    );
    assert!(
        matches!(
            a.health(),
            Health::Following {
                contact: StoreContact::CutOff { .. }
            }
        ),
        "{:?}",
        a.health()
    );
    assert!(!a.health().is_healthy());

    // A renewal that heals clears the error.
    faults.set(Fault::None);
    let again = a.lock().await.unwrap();
    faults.set(Fault::Fail);
    sleep(a.options().renew_interval + Duration::from_millis(100)).await;
    assert!(again.health().last_error.is_some());
    faults.set(Fault::None);
    sleep(a.options().renew_interval).await;
    let h = again.health();
    assert!(h.is_healthy() && h.last_error.is_none(), "{h:?}");
    assert!(a.health().is_healthy());
}
