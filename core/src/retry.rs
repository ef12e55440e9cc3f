//! Jittered exponential backoff (on `backon`) and jittered polling.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Delays between retries after store errors: start at a quarter of the
/// retry interval, double up to four retry intervals, with full jitter, for
/// ever (the engine's deadlines bound it, not a count).
#[derive(Debug)]
pub(crate) struct Backoff {
    builder: ExponentialBuilder,
    current: backon::ExponentialBackoff,
    cap: Duration,
}

impl Backoff {
    pub(crate) fn new(retry_interval: Duration) -> Self {
        let min = (retry_interval / 4).max(Duration::from_millis(1));
        let cap = retry_interval * 4;
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(cap)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Backoff {
            current: builder.build(),
            builder,
            cap,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        self.current.next().unwrap_or(self.cap)
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.builder.build();
    }
}

/// `interval` give or take 20 %, so that many followers do not poll in step.
pub(crate) fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.8 + 0.4 * fastrand::f64())
}
