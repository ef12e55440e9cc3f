//! The fenced register (the resource the leaders protect), its worker, the
//! store forwarders, and the CLOCK_MONOTONIC clock they all stamp with.
//!
//! Protocol, one line each way: the worker sends `TOKEN PID SENT_NS\n`, the
//! register answers `ok\n` or `stale\n`. A write is accepted when its token
//! is at least the highest accepted so far; in semaphore mode (N permits),
//! when it is at least the lowest of the N highest distinct tokens accepted
//! so far (N writers may hold at once, each fenced against older ones).
//! Arrival, decision and log entry happen under one lock, so the log's
//! order is the register's order.

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// Nanoseconds on CLOCK_MONOTONIC: one clock for every process on this
/// machine (the runner, the register, the workers).
pub(crate) fn mono_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => (t.tv_sec() as u64) * 1_000_000_000 + t.tv_nsec() as u64,
        // CLOCK_MONOTONIC cannot fail on Linux; a zero would only make a
        // check stricter, never hide a violation.
        Err(_) => 0,
    }
}

/// One write the register received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Write {
    /// The writer's fencing token.
    pub(crate) token: u64,
    /// The worker's pid.
    pub(crate) pid: u32,
    /// When the worker sent it (its own stamp).
    pub(crate) sent: u64,
    /// When the register received it.
    pub(crate) arrival: u64,
    /// Whether it was accepted.
    pub(crate) accepted: bool,
}

#[derive(Debug, Default)]
struct State {
    /// The highest distinct tokens accepted so far, at most `permits`.
    top: std::collections::BTreeSet<u64>,
    /// How many writers may hold at once: 1 (an election) or N (a
    /// semaphore of N permits).
    permits: usize,
    log: Vec<Write>,
}

impl State {
    /// Accept `token` if it is at least the lowest of the `permits` highest
    /// tokens accepted so far (or fewer than `permits` were accepted).
    fn accept(&mut self, token: u64) -> bool {
        let full = self.top.len() >= self.permits.max(1);
        if full && self.top.first().is_some_and(|low| token < *low) {
            return false;
        }
        self.top.insert(token);
        while self.top.len() > self.permits.max(1) {
            self.top.pop_first();
        }
        true
    }
}

/// The register service; stops serving when dropped.
#[derive(Debug)]
pub(crate) struct Register {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl Register {
    /// Serves on `listener` (already bound, non-blocking), for `permits`
    /// writers at once (1: an election).
    pub(crate) fn start(listener: std::net::TcpListener, permits: u32) -> Result<Register, String> {
        let addr = listener
            .local_addr()
            .map_err(|e| format!("register address: {e}"))?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| format!("register listener: {e}"))?;
        let state = Arc::new(Mutex::new(State {
            permits: permits.max(1) as usize,
            ..State::default()
        }));
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of file descriptors or the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                tokio::spawn(serve(stream, s.clone()));
            }
        });
        Ok(Register { addr, state, task })
    }

    /// Where workers write.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A copy of the log so far.
    pub(crate) fn log(&self) -> Vec<Write> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .log
            .clone()
    }
}

impl Drop for Register {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: tokio::net::TcpStream, state: Arc<Mutex<State>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut parts = line.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(token)), Some(Ok(pid)), Some(Ok(sent))) =
            (parts.next(), parts.next(), parts.next())
        else {
            let _ = write.write_all(b"bad\n").await;
            return;
        };
        let accepted = {
            let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
            let arrival = mono_ns();
            let accepted = s.accept(token);
            s.log.push(Write {
                token,
                pid: pid as u32,
                sent,
                arrival,
                accepted,
            });
            accepted
        };
        let answer: &[u8] = if accepted { b"ok\n" } else { b"stale\n" };
        if write.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// Forwards every connection accepted on `listener` to `target`; the
/// forwarder stops when dropped (open connections end with it).
#[derive(Debug)]
pub(crate) struct Forwarder {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Forwarder {
    /// Starts forwarding from `listener` (bound, non-blocking) to `target`.
    pub(crate) fn start(
        listener: std::net::TcpListener,
        target: SocketAddr,
    ) -> Result<Forwarder, String> {
        let addr = listener
            .local_addr()
            .map_err(|e| format!("forwarder address: {e}"))?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| format!("forwarder listener: {e}"))?;
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    // Out of file descriptors or the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                // Reap finished connections so the set stays small.
                while connections.try_join_next().is_some() {}
                connections.spawn(async move {
                    let Ok(Ok(mut outbound)) = tokio::time::timeout(
                        Duration::from_secs(2),
                        tokio::net::TcpStream::connect(target),
                    )
                    .await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Ok(Forwarder { addr, task })
    }

    /// The address candidates connect to.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // open connection.
        self.task.abort();
    }
}

/// `chaos worker`: write `LEASEHOLD_TOKEN` to the register every `period`
/// until killed (or `max_life` passes), stamping each write before it is sent.
pub(crate) fn worker(
    register: SocketAddr,
    period: Duration,
    max_life: Duration,
) -> Result<(), String> {
    let token: u64 = std::env::var("LEASEHOLD_TOKEN")
        .map_err(|_| "LEASEHOLD_TOKEN is not set: run the worker under `leasehold run`".to_owned())?
        .parse()
        .map_err(|e| format!("LEASEHOLD_TOKEN is not a number: {e}"))?;
    let pid = std::process::id();
    let end = Instant::now() + max_life;
    let mut conn: Option<(std::net::TcpStream, BufReader<std::net::TcpStream>)> = None;
    let mut answer = String::new();
    while Instant::now() < end {
        if conn.is_none() {
            match std::net::TcpStream::connect_timeout(&register, Duration::from_millis(500)) {
                Ok(s) => {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = s.set_nodelay(true);
                    match s.try_clone() {
                        Ok(r) => conn = Some((s, BufReader::new(r))),
                        Err(_) => {
                            std::thread::sleep(period);
                            continue;
                        }
                    }
                }
                Err(_) => {
                    std::thread::sleep(period);
                    continue;
                }
            }
        }
        if let Some((w, r)) = conn.as_mut() {
            let line = format!("{token} {pid} {}\n", mono_ns());
            answer.clear();
            if w.write_all(line.as_bytes()).is_err() || r.read_line(&mut answer).unwrap_or(0) == 0 {
                conn = None;
            }
        }
        std::thread::sleep(period);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::State;

    #[test]
    fn one_permit_accepts_only_the_highest_token_or_above() {
        let mut s = State {
            permits: 1,
            ..State::default()
        };
        assert!(s.accept(5));
        assert!(s.accept(5));
        assert!(s.accept(7));
        assert!(!s.accept(6));
        assert!(!s.accept(5));
        assert!(s.accept(8));
    }

    #[test]
    fn two_permits_accept_the_two_highest_tokens_and_fence_older_ones() {
        let mut s = State {
            permits: 2,
            ..State::default()
        };
        assert!(s.accept(5));
        assert!(s.accept(9));
        // Both holders write, interleaved.
        assert!(s.accept(5));
        assert!(s.accept(9));
        // A third, newer holder: the oldest is fenced off.
        assert!(s.accept(12));
        assert!(!s.accept(5));
        assert!(s.accept(9));
        assert!(s.accept(12));
        // 10 is above 9, the lower of {9, 12}: accepted, and it fences 9 off.
        assert!(s.accept(10));
        assert!(!s.accept(9));
    }
}
