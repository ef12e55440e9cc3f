//! Figures for the benchmark program (`src/bin/bench.rs`): latency
//! percentiles, and store-side request counts (etcd's `/metrics`,
//! fake-gcs-server's access log).

use std::path::Path;
use std::time::Duration;

/// The `q`-quantile (0.0 to 1.0) of sorted samples, nearest rank; zero
/// when there are none.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Print one line: count, p50, p99, min and max of `samples`.
pub fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what:<44} n={:<4} p50={:>9.3?} p99={:>9.3?} min={:>9.3?} max={:>9.3?}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        samples.first().copied().unwrap_or_default(),
        samples.last().copied().unwrap_or_default()
    );
}

/// Requests fake-gcs-server logged (its access log at `-log-level info`,
/// which [`FakeGcs`](crate::FakeGcs) turns on), by method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoggedRequests {
    /// `GET` requests (object reads, listings).
    pub reads: u64,
    /// `POST`, `PUT` and `PATCH` requests (uploads, metadata changes).
    pub writes: u64,
    /// `DELETE` requests.
    pub deletes: u64,
}

impl LoggedRequests {
    /// Every request counted.
    pub fn total(&self) -> u64 {
        self.reads + self.writes + self.deletes
    }

    /// What was logged between `earlier` and `self`.
    pub fn since(&self, earlier: &LoggedRequests) -> LoggedRequests {
        LoggedRequests {
            reads: self.reads.saturating_sub(earlier.reads),
            writes: self.writes.saturating_sub(earlier.writes),
            deletes: self.deletes.saturating_sub(earlier.deletes),
        }
    }
}

/// Count the requests in fake-gcs-server's log at `log` whose line contains
/// `path_part` (an object name, say; `""` counts every request). The
/// emulator writes its log as it answers; a caller that wants every request
/// of a finished step counted waits a moment (100 ms is plenty on loopback).
///
/// A missing or unreadable log counts as empty.
pub fn emulator_requests(log: &Path, path_part: &str) -> LoggedRequests {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    count_logged(&text, path_part)
}

/// The requests the emulator logged for paths containing `path_part`
/// during the next `window` (plus 200 ms for the log to catch up).
pub async fn emulator_requests_during(
    log: &Path,
    path_part: &str,
    window: std::time::Duration,
) -> LoggedRequests {
    let before = emulator_requests(log, path_part);
    tokio::time::sleep(window + std::time::Duration::from_millis(200)).await;
    emulator_requests(log, path_part).since(&before)
}

fn count_logged(text: &str, path_part: &str) -> LoggedRequests {
    let mut counts = LoggedRequests::default();
    for line in text.lines().filter(|l| l.contains(path_part)) {
        // The access-log line quotes the request inside the log's own
        // quoted msg: `msg="127.0.0.1 - - [..] \"GET /storage/v1/..`.
        let Some(at) = line.find("\\\"") else {
            continue;
        };
        let request = &line[at + 2..];
        match request.split(' ').next() {
            Some("GET" | "HEAD") => counts.reads += 1,
            Some("POST" | "PUT" | "PATCH") => counts.writes += 1,
            Some("DELETE") => counts.deletes += 1,
            _ => {}
        }
    }
    counts
}

/// The sum of every series of the Prometheus counter `name` in a
/// `/metrics` text (etcd's `grpc_server_handled_total`, say); `None` when
/// there is no such series.
pub fn sum_counter(metrics: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue; // another metric whose name starts with this one
        }
        if let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            found = true;
            sum += value;
        }
    }
    found.then_some(sum)
}

/// The most polls one poller can make in `window` when it polls every
/// `interval` jittered by ±20 % (the engine's retry-interval jitter): one
/// per shortest gap, plus one at each edge of the window.
pub fn most_polls(window: Duration, interval: Duration) -> u64 {
    (window.as_secs_f64() / (interval.as_secs_f64() * 0.8)).floor() as u64 + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let ms: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&ms, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&ms, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&ms, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn emulator_log_lines_are_counted_by_method() {
        let log = concat!(
            r#"time=1 level=INFO msg="127.0.0.1 - - [29/Nov/2026:12:19:03 +0000] \"GET /storage/v1/b/t/o/p%2Fa?alt=media HTTP/1.1\" 200 0\n""#,
            "\n",
            r#"time=2 level=INFO msg="127.0.0.1 - - [29/Nov/2026:12:19:03 +0000] \"POST /upload/storage/v1/b/t/o?name=p%2Fa HTTP/1.1\" 200 9\n""#,
            "\n",
            r#"time=3 level=INFO msg="127.0.0.1 - - [29/Nov/2026:12:19:03 +0000] \"GET /storage/v1/b/t/o/p%2Fb?alt=media HTTP/1.1\" 404 0\n""#,
            "\n",
            "time=4 level=INFO msg=\"server started\"\n",
        );
        let a = count_logged(log, "p%2Fa");
        assert_eq!((a.reads, a.writes, a.deletes), (1, 1, 0));
        assert_eq!(count_logged(log, "").total(), 3);
    }

    #[test]
    fn counters_are_summed_over_their_series() {
        let text = "# TYPE x_total counter\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3.5\nx_total_more 100\ny 1\n";
        assert_eq!(sum_counter(text, "x_total"), Some(5.5));
        assert_eq!(sum_counter(text, "z"), None);
    }
}
