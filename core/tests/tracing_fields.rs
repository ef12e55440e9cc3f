//! Tracing fields of the engine's events, seen by an info-level subscriber,
//! under paused tokio time on the in-memory backend with injected faults.
//! A test binary of its own: the capture is the global subscriber (a
//! thread-local one races with other tests' threads over tracing's
//! per-callsite interest cache).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold_core::faulty::{Fault, FaultyBackend};
use leasehold_core::memory::MemoryStore;
use leasehold_core::{ElectionOptions, Elector};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

const TTL: Duration = Duration::from_secs(3);

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
    tracing::subscriber::set_global_default(subscriber)
        .expect("the only subscriber of this binary");

    let store = MemoryStore::new();
    let (backend, faults) = FaultyBackend::wrap(Arc::new(store.client()));
    let options = ElectionOptions::new("tr-jobs", "worker-a").with_ttl(TTL);
    let a = Elector::new(backend, options).unwrap();
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

    // "released" only once the store confirmed it: a release into a silent
    // link logs the step-down, not the release.
    let third = a.lock().await.unwrap();
    let token3 = third.fencing_token().to_string();
    faults.set(Fault::BlackHole);
    assert!(third.unlock().await.is_err());
    faults.set(Fault::None);
    let steps = capture.with_message("leadership ends");
    assert_names(&steps[steps.len() - 1..], "leadership ends", &token3);
    let released_now = capture.with_message("leadership released");
    assert_eq!(
        released_now.len(),
        released.len(),
        "a release the store never confirmed was logged as released"
    );
}
