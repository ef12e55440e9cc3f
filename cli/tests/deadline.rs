//! `leasehold run` kills its command by the leader's local deadline when the
//! store stops answering, against a real PostgreSQL behind a proxy, even when
//! leasehold's own stderr stops taking writes at the same moment (a log file
//! on a disk under heavy load, a log pipe whose reader stalls): the kill at
//! the deadline must not wait for a log line to be written.
//!
//! The bound needs no output of leasehold's: every renewal that succeeded was
//! sent before the proxy black-holed the link, so the local deadline (last
//! successful renewal sent + ttl - safety margin) is at most the cut + ttl -
//! margin. The command ignores SIGTERM, so only the SIGKILL at the deadline
//! ends it.
// PostgreSQL: in the `full` feature (the default).
#![cfg(feature = "full")]

#[allow(dead_code)]
mod common;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{alive, cli, signal};
use leasehold_integration_tests::{PgServer, Proxy, unique_name};
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::{Instant, sleep, timeout};

/// The child's stderr: a pipe the test drains until it is told to stop
/// (then fills it, so that every write to it blocks), and drains again when
/// told to resume.
struct LogPipe {
    /// The write end, given to the child as its stderr.
    child_end: Option<std::io::PipeWriter>,
    /// Draining is paused while set.
    paused: Arc<AtomicBool>,
    /// Stops the drain thread.
    done: Arc<AtomicBool>,
    /// A write end of our own, opened non-blocking (its own open file
    /// description: the child's end stays blocking), to fill the pipe.
    filler: std::fs::File,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogPipe {
    fn new() -> LogPipe {
        // Both ends close-on-exec: only the end given as stderr is inherited.
        let (read, write) = std::io::pipe().expect("pipe");
        let filler = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc_nonblock())
            .open(format!("/proc/self/fd/{}", write.as_raw_fd()))
            .expect("open the pipe's write end again, non-blocking");
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc_nonblock())
            .open(format!("/proc/self/fd/{}", read.as_raw_fd()))
            .expect("open the pipe's read end again, non-blocking");
        drop(read);
        let paused = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (p, d) = (paused.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let mut reader = reader;
            let mut buf = vec![0u8; 1 << 16];
            let mut err = std::io::stderr();
            // Bounded by `done`, which the test sets on drop.
            while !d.load(Ordering::Relaxed) {
                if !p.load(Ordering::Relaxed) {
                    loop {
                        match reader.read(&mut buf) {
                            Ok(0) => return,
                            // The child's log, passed on (the fill's zeros left out).
                            Ok(n) => {
                                let text: Vec<u8> =
                                    buf[..n].iter().copied().filter(|b| *b != 0).collect();
                                let _ = err.write_all(&text);
                            }
                            Err(_) => break,
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        LogPipe {
            child_end: Some(write),
            paused,
            done,
            filler,
            thread: Some(thread),
        }
    }

    /// Stop draining and fill the pipe: the child's next write to its
    /// stderr blocks until [`resume`](Self::resume).
    fn block(&mut self) {
        self.paused.store(true, Ordering::SeqCst);
        // Let a read in progress finish.
        std::thread::sleep(Duration::from_millis(20));
        let chunk = [0u8; 4096];
        let mut filled = 0usize;
        // Bounded: a pipe holds at most 1 MiB by default (/proc/sys/fs/pipe-max-size).
        for size in [4096usize, 1] {
            for _ in 0..(1 << 20) {
                match self.filler.write(&chunk[..size]) {
                    Ok(n) => filled += n,
                    Err(_) => break,
                }
            }
        }
        assert!(filled > 0, "the log pipe could not be filled");
    }

    fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
}

impl Drop for LogPipe {
    fn drop(&mut self) {
        self.paused.store(false, Ordering::SeqCst);
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `O_NONBLOCK` (Linux).
fn libc_nonblock() -> i32 {
    0o4000
}

use std::os::unix::fs::OpenOptionsExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_leader_cut_off_kills_its_command_by_the_local_deadline_while_its_log_blocks() {
    let pg = PgServer::start()
        .await
        .expect("start PostgreSQL (install: bash scripts/setup)");
    let proxy = Proxy::start(pg.addr()).await;
    let election = unique_name("deadline");
    let url = pg
        .url(&election, "sslmode=disable")
        .replace(&pg.addr().to_string(), &proxy.addr().to_string());
    assert!(url.contains(&proxy.addr().to_string()), "{url}");
    let ttl = Duration::from_secs(3);
    // ttl / 10, as `--ttl` sets it.
    let margin = ttl / 10;

    let mut log = LogPipe::new();
    let mut run = cli()
        .args(["--store", &url, "run", "--id", "A", "--ttl", "3s"])
        .args(["--grace", "300ms", "--"])
        .args(["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"])
        // The chaos suite's filter.
        .env("RUST_LOG", "leasehold=info,leasehold_core=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log.child_end.take().expect("the child's end")))
        .spawn()
        .expect("start leasehold run");
    let stdout = run.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let pid = timeout(Duration::from_secs(30), async {
        // Bounded by the timeout.
        loop {
            let line = lines
                .next_line()
                .await
                .expect("read leasehold's stdout")
                .expect("leasehold ended before it was elected");
            let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON event");
            if v["event"] == "elected" {
                return v["pid"].as_u64().expect("the command's pid") as u32;
            }
        }
    })
    .await
    .expect("elected within 30 s");
    // Let a few renewals go through.
    sleep(Duration::from_millis(1500)).await;
    assert!(alive(pid), "the command died before the cut");

    let cut = Instant::now();
    proxy.blackhole();
    log.block();
    let bound = cut + ttl - margin;
    // Watch the command until well past the bound.
    let until = cut + ttl * 3;
    let mut gone_at = None;
    // Bounded by `until`.
    while Instant::now() < until {
        if !alive(pid) {
            gone_at = Some(Instant::now());
            break;
        }
        sleep(Duration::from_millis(5)).await;
    }
    // Let leasehold write (and so go on) again, and let it reach the store.
    log.resume();
    proxy.heal();
    let status = timeout(Duration::from_secs(20), run.wait()).await;
    if status.is_err() {
        signal(&run, Signal::SIGKILL);
        let _ = run.wait().await;
    }
    let mut rest = Vec::new();
    while let Ok(Ok(Some(l))) = timeout(Duration::from_millis(200), lines.next_line()).await {
        rest.push(l);
    }
    println!("leasehold's events after the election: {rest:?}");
    match gone_at {
        Some(t) => {
            let after_cut = t - cut;
            println!(
                "the command was gone {after_cut:?} after the cut (bound {:?})",
                bound - cut
            );
            // Slack for the 5 ms watch, the stop's 10 ms poll and reaping.
            assert!(
                t <= bound + Duration::from_millis(300),
                "the command outlived the local deadline: gone {after_cut:?} after the cut, the deadline was at most {:?} after it",
                bound - cut
            );
        }
        None => panic!(
            "the command was still alive {:?} after the cut, the local deadline was at most {:?} after it (the log pipe was full meanwhile)",
            ttl * 3,
            bound - cut
        ),
    }
    drop(log);
}
