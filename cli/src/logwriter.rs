//! leasehold's log (stderr) written by a thread of its own, never by the
//! threads that run the election and the supervisor.
//!
//! A write to stderr can block for as long as the reader or the disk
//! pleases: a log file on a disk under heavy I/O, a pipe to a log collector
//! that stalls, a terminal paused with Ctrl-S. Written from the tokio
//! runtime's threads, such a write held the thread (and stderr's lock, so
//! every other thread that logged queued behind it): the timers that end a
//! term at its local deadline and the task that kills the command then did
//! not run, and the command outlived the deadline by as long as the write
//! took. Now an event is formatted on the thread that logs it and handed to
//! the writer thread through a bounded queue; when the queue is full (the
//! writer is stuck), the event is dropped and counted, and the count is
//! written once the writer gets through again. Logging never waits.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

/// Lines waiting for the writer thread, at most.
const QUEUE: usize = 1024;

/// How long [`LogGuard`]'s drop waits for the queued lines to be written.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

enum Msg {
    Line(Vec<u8>),
    /// Answer on the channel once every line before it is written.
    Flush(SyncSender<()>),
}

/// The `MakeWriter` for tracing-subscriber: each event goes to the writer
/// thread as one message.
#[derive(Clone)]
pub(crate) struct NonBlocking {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

/// Flushes the queue when dropped (at the end of `main`), so the last
/// lines are not lost on exit, waiting at most [`FLUSH_WAIT`].
pub(crate) struct LogGuard {
    tx: SyncSender<Msg>,
}

/// Starts the writer thread over `out` (stderr). If the thread cannot be
/// started, returns `None`: log to stderr directly then.
pub(crate) fn spawn<W: Write + Send + 'static>(out: W) -> Option<(NonBlocking, LogGuard)> {
    let (tx, rx) = sync_channel::<Msg>(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = dropped.clone();
    std::thread::Builder::new()
        .name("leasehold-log".into())
        .spawn(move || write_all(out, rx, counter))
        .ok()?;
    Some((
        NonBlocking {
            tx: tx.clone(),
            dropped,
        },
        LogGuard { tx },
    ))
}

/// The writer thread: until every sender is gone.
fn write_all<W: Write>(mut out: W, rx: Receiver<Msg>, dropped: Arc<AtomicU64>) {
    // Bounded by the channel: it ends when the last sender goes.
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Line(line) => {
                let lost = dropped.swap(0, Ordering::Relaxed);
                if lost > 0 {
                    let _ = writeln!(
                        out,
                        "leasehold: {lost} log line(s) dropped: stderr was not taking writes"
                    );
                }
                let _ = out.write_all(&line);
            }
            Msg::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        }
    }
    let _ = out.flush();
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        let (done_tx, done_rx) = sync_channel(1);
        let deadline = std::time::Instant::now() + FLUSH_WAIT;
        let mut msg = Msg::Flush(done_tx);
        // The queue may be full: retry until the deadline.
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let _ = done_rx.recv_timeout(left);
    }
}

/// One event's bytes, sent as one message when the event is done.
pub(crate) struct EventWriter {
    buf: Vec<u8>,
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl Write for EventWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buf);
        if self.tx.try_send(Msg::Line(line)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for NonBlocking {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            buf: Vec::with_capacity(256),
            tx: self.tx.clone(),
            dropped: self.dropped.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Mutex, PoisonError};
    use tracing_subscriber::fmt::MakeWriter;

    /// A writer that a test can stall: bytes go to a shared buffer, and each
    /// write first waits for the gate (a mutex the test holds).
    struct Gated {
        gate: Arc<Mutex<()>>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
            self.out
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_writer_never_blocks_the_logging_thread_and_the_drops_are_counted() {
        let gate = Arc::new(Mutex::new(()));
        let out = Arc::new(Mutex::new(Vec::new()));
        let (writer, guard) = spawn(Gated {
            gate: gate.clone(),
            out: out.clone(),
        })
        .expect("writer thread");
        let stuck = gate.lock().unwrap_or_else(PoisonError::into_inner);
        let started = std::time::Instant::now();
        let n = QUEUE * 3;
        for i in 0..n {
            let mut w = writer.make_writer();
            writeln!(w, "line {i}").expect("buffered");
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "logging waited for a stuck stderr: {:?}",
            started.elapsed()
        );
        drop(stuck);
        drop(guard);
        let text = String::from_utf8(out.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .expect("utf-8");
        assert!(text.contains("line 0\n"), "{text:.200}");
        assert!(text.contains("log line(s) dropped"), "{text:.200}");
        let written = text.lines().filter(|l| l.starts_with("line ")).count();
        assert!(written < n && written >= QUEUE, "{written} of {n} written");
    }

    #[test]
    fn lines_come_out_whole_and_in_order() {
        let gate = Arc::new(Mutex::new(()));
        let out = Arc::new(Mutex::new(Vec::new()));
        let (writer, guard) = spawn(Gated {
            gate,
            out: out.clone(),
        })
        .expect("writer thread");
        for i in 0..100 {
            let mut w = writer.make_writer();
            write!(w, "a{i} ").expect("buffered");
            writeln!(w, "b{i}").expect("buffered");
        }
        drop(guard);
        let text = String::from_utf8(out.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .expect("utf-8");
        let want: String = (0..100).map(|i| format!("a{i} b{i}\n")).collect();
        assert_eq!(text, want);
    }
}
