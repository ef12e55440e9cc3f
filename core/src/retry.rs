//! Retry timing: exponential backoff with "equal jitter" (on `backon`), the
//! renewal schedule that keeps trying until just before a deadline, and
//! jittered polling.
//!
//! A note on `backon`: its `with_jitter` *adds* a random part of the delay
//! (a delay `d` becomes one in `[d, 2d)`), it is not "full jitter". The
//! engine does not use it; it draws its own jitter below so that no delay
//! ever exceeds the retry interval.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

use crate::options::ElectionOptions;

/// Delays between retries after store errors, for ever (the engine's
/// deadlines bound it, not a count).
///
/// The base delay starts at a quarter of the retry interval and doubles up
/// to the retry interval; each delay is drawn uniformly from
/// `[base / 2, base]` ("equal jitter"). So no delay is longer than the retry
/// interval, and many clients that failed together spread out.
#[derive(Debug)]
pub(crate) struct Backoff {
    builder: ExponentialBuilder,
    current: backon::ExponentialBackoff,
    cap: Duration,
}

impl Backoff {
    pub(crate) fn new(retry_interval: Duration) -> Self {
        let cap = retry_interval.max(Duration::from_millis(1));
        let min = (retry_interval / 4).max(Duration::from_millis(1)).min(cap);
        // No backon jitter: it would push delays up to twice the cap.
        let builder = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(cap)
            .with_factor(2.0)
            .without_max_times();
        Backoff {
            current: builder.build(),
            builder,
            cap,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.current.next().unwrap_or(self.cap).min(self.cap);
        base.mul_f64(0.5 + 0.5 * fastrand::f64())
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.builder.build();
    }
}

/// When to try a failed lease renewal again (a leader's heartbeat, or a
/// queued claim in a campaign), given the local deadline of that lease.
///
/// While the deadline has not passed, an attempt starts at most one retry
/// interval after the previous one failed ([`Backoff`]), and one attempt
/// starts at the *last call* instant, `deadline - last_call_lead` with
/// `last_call_lead = min(retry_interval, request_timeout) / 2`: late enough
/// to catch a store that came back just before the deadline, early enough
/// that its answer can arrive before the deadline and count (an answer
/// after the deadline is ignored: the done signal has fired). The lease
/// itself lives on at the store until at least `deadline + safety_margin`, so
/// a renewal sent then still finds it.
///
/// Each call is bounded by the request timeout, and a call still in flight
/// at the last call instant is abandoned then and the last attempt sent at
/// once, so that a request lost in a partition that has since healed does
/// not take the last attempt's place. Only failing renewals get there: a
/// renewal sent on the regular schedule has until at least
/// `lifetime - renew_interval - last_call_lead` (half the lifetime less a
/// quarter retry interval; the lifetime is the store's
/// [`LeasePlan::lifetime`](crate::LeasePlan::lifetime)) before it would be cut.
#[derive(Debug)]
pub(crate) struct RenewSchedule {
    backoff: Backoff,
    request_timeout: Duration,
    last_call_lead: Duration,
}

impl RenewSchedule {
    pub(crate) fn new(options: &ElectionOptions) -> Self {
        RenewSchedule {
            backoff: Backoff::new(options.retry_interval),
            request_timeout: options.request_timeout,
            last_call_lead: options.retry_interval.min(options.request_timeout) / 2,
        }
    }

    /// The last call instant for a lease whose local deadline is `deadline`.
    fn last_call(&self, deadline: Instant) -> Instant {
        deadline
            .checked_sub(self.last_call_lead)
            .unwrap_or(deadline)
    }

    /// How long a renewal sent at `sent` may take.
    pub(crate) fn call_bound(&self, sent: Instant, deadline: Instant) -> Duration {
        let last = self.last_call(deadline);
        if sent < last {
            self.request_timeout.min(last - sent)
        } else {
            self.request_timeout
        }
    }

    /// When to try again after a renewal sent at `sent` failed at `now`.
    pub(crate) fn retry_at(&mut self, sent: Instant, now: Instant, deadline: Instant) -> Instant {
        let last = self.last_call(deadline);
        if now < last {
            (now + self.backoff.next_delay()).min(last)
        } else if sent < last {
            // The call was cut at (or failed after) the last call instant:
            // make the last attempt now.
            now
        } else {
            now + self.backoff.next_delay()
        }
    }

    /// A renewal succeeded: start the backoff over.
    pub(crate) fn reset(&mut self) {
        self.backoff.reset();
    }
}

/// The longest [`jittered`] delay for `interval`: a follower's poll at worst.
pub(crate) fn poll_bound(interval: Duration) -> Duration {
    interval * 6 / 5
}

/// `interval` give or take 20 %, so that many followers do not poll in step.
pub(crate) fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.8 + 0.4 * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_delays_never_exceed_the_retry_interval() {
        let retry = Duration::from_millis(500);
        let mut b = Backoff::new(retry);
        let first = b.next_delay();
        assert!(
            first >= retry / 8 && first <= retry / 4,
            "first delay {first:?}"
        );
        for _ in 0..1000 {
            let d = b.next_delay();
            assert!(d <= retry, "{d:?} is longer than the retry interval");
        }
        // After growing, the delays sit in [retry / 2, retry].
        assert!(b.next_delay() >= retry / 2);
        b.reset();
        assert!(b.next_delay() <= retry / 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_schedule_keeps_trying_until_just_before_the_deadline() {
        let o = ElectionOptions::new("e", "c").with_ttl(Duration::from_secs(3));
        let lead = o.retry_interval.min(o.request_timeout) / 2;
        let start = Instant::now();
        let deadline = start + o.deadline_after_renewal();
        let last = deadline - lead;
        for _ in 0..200 {
            let mut s = RenewSchedule::new(&o);
            let mut now = start + o.renew_interval;
            let mut attempts = vec![now];
            for _ in 0..100 {
                let next = s.retry_at(now, now, deadline);
                if next >= deadline {
                    break;
                }
                assert!(next > now && next - now <= o.retry_interval);
                now = next;
                attempts.push(now);
            }
            assert!(
                attempts.contains(&last),
                "no attempt at the last call instant: {attempts:?}"
            );
        }
        let mut s = RenewSchedule::new(&o);
        // A call in flight at the last call instant gives way to it ...
        let early = last - Duration::from_millis(300);
        assert_eq!(s.call_bound(early, deadline), Duration::from_millis(300));
        assert_eq!(s.retry_at(early, last, deadline), last);
        // ... the last call itself is not cut short (the deadline cuts it),
        // and after it the backoff goes on.
        assert_eq!(s.call_bound(last, deadline), o.request_timeout);
        assert!(s.retry_at(last, last, deadline) > last);
        // A regular renewal has its full request timeout.
        assert_eq!(
            s.call_bound(start + o.renew_interval, deadline),
            o.request_timeout
        );
    }
}
