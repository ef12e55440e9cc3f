//! `leasehold`: leader election from the shell.
//!
//! ```text
//! leasehold --store etcd://127.0.0.1:2379 campaign --name jobs --id a
//! leasehold --store zk://127.0.0.1:2181 run --name jobs -- ./worker --flag
//! leasehold --store gs://bucket/locks/ leader --name jobs
//! leasehold --config leasehold.toml observe --name jobs
//! leasehold --store etcd://127.0.0.1:2379 serve --name jobs --listen 127.0.0.1:4040
//! ```
//!
//! Events are printed as one JSON object per line on stdout (`run
//! --events-to FILE`: in FILE). `serve` (src/serve.rs) is the HTTP sidecar.

mod exporter;
mod logwriter;
mod serve;
mod supervise;

use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use leasehold::config::parse_duration;
use leasehold::{
    CancellationToken, ElectionConfig, Elector, LeaderInfo, Leadership, LossReason, Permit,
    Semaphore,
};
use serde::Serialize;
use tokio::process::Command;
use tokio::time::{Instant, sleep, sleep_until};

use crate::supervise::Tree;

/// The exit status when `--timeout` ran out before this candidate was
/// elected (GNU timeout's).
const TIMED_OUT: u8 = 124;

/// The exit status when `--timeout` ran out while the store could not be
/// reached (sysexits' EX_UNAVAILABLE): not a busy lock.
const UNREACHABLE: u8 = 69;

#[derive(Parser, Debug)]
#[command(
    name = "leasehold",
    version,
    about = "Leader election and distributed locks over etcd, ZooKeeper and Cloud Storage"
)]
struct Cli {
    /// Store URL, e.g. etcd://127.0.0.1:2379, zk://127.0.0.1:2181/chroot/,
    /// gs://bucket/prefix/, memory:// (or LEASEHOLD_URL).
    #[arg(long, global = true)]
    store: Option<String>,
    /// A TOML config file (an ElectionConfig), under --store and the flags.
    #[arg(long, global = true)]
    config: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics on /metrics and the health snapshot on
    /// /healthz (200 healthy, 503 not; JSON) at HOST:PORT, e.g.
    /// 127.0.0.1:9464 (campaign, run and observe).
    #[arg(long, global = true, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Debug, Clone)]
struct Election {
    /// The election name.
    #[arg(long)]
    name: Option<String>,
    /// This candidate's id (default: <hostname>-<pid>).
    #[arg(long)]
    id: Option<String>,
    /// The value to publish while leading.
    #[arg(long)]
    value: Option<String>,
    /// Lease ttl, e.g. 10s.
    #[arg(long)]
    ttl: Option<String>,
}

/// The election a read-only command follows (no candidate options: it
/// never campaigns).
#[derive(Args, Debug, Clone)]
struct Target {
    /// The election name.
    #[arg(long)]
    name: Option<String>,
}

impl Target {
    fn election(&self) -> Election {
        Election {
            name: self.name.clone(),
            id: None,
            value: None,
            ttl: None,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Become a candidate and stay one; print an event per line (elected,
    /// lost, leader changes); resign cleanly on SIGTERM, SIGINT, SIGHUP or
    /// SIGQUIT.
    Campaign {
        #[command(flatten)]
        election: Election,
        /// Give up if not elected within this time, e.g. 30s (exit 124; 69
        /// when the store could not be reached).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// Run a command only while leading; stop it, with everything it started,
    /// before anyone else can lead.
    Run {
        #[command(flatten)]
        election: Election,
        /// Give up if not elected within this time, e.g. 30s (exit 124; 69
        /// when the store could not be reached; the command never starts).
        #[arg(long)]
        timeout: Option<String>,
        /// Time between SIGTERM and SIGKILL; it must end before the local
        /// deadline (default: the largest that fits, at most 5s).
        #[arg(long)]
        grace: Option<String>,
        /// Campaign again after each term instead of exiting.
        #[arg(long)]
        forever: bool,
        /// Write the JSON events to this file (appended; /dev/fd/3 for a
        /// descriptor the caller opened) instead of stdout, which is then the
        /// command's alone.
        #[arg(long, value_name = "FILE")]
        events_to: Option<std::path::PathBuf>,
        /// Wait this long after being elected before starting the command,
        /// e.g. 2s, holding the lease: a term that ended without the old
        /// leader's knowing (an administrator revoked its lease) gives the
        /// old leader this long to notice and kill its command (consul's
        /// lock-delay; see the README).
        #[arg(long)]
        start_delay: Option<String>,
        /// Hold one of N permits instead of leading: at most N commands run
        /// at once across every `run -n N` of the name (consul lock -n). A
        /// counting semaphore on etcd, ZooKeeper or memory; every holder must
        /// give the same N.
        #[arg(short = 'n', long = "permits", value_name = "N")]
        permits: Option<u32>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print the current leader and token; exit 1 if there is none.
    Leader(Target),
    /// Print every leader change as a JSON line until interrupted.
    Observe(Target),
    /// List the live candidates in line order, the leader first: id, token
    /// and value (etcd, ZooKeeper; record stores keep no line).
    Members {
        #[command(flatten)]
        target: Target,
        /// Print one JSON object instead of a table (with --watch: one per
        /// line, NDJSON).
        #[arg(long)]
        json: bool,
        /// Print the list now and again on every change (a candidate joins
        /// or leaves, the leader changes) until SIGINT or SIGTERM; driven by
        /// the store's watch, not by polling.
        #[arg(long)]
        watch: bool,
    },
    /// Serve the election over HTTP for services in any language (a
    /// sidecar): GET / (status page), /leader, /status, /events (Server-Sent
    /// Events), POST /resign, /healthz, /readyz, /metrics.
    Serve {
        #[command(flatten)]
        election: Election,
        /// Where to listen. Loopback by default; in a Kubernetes pod, 0.0.0.0:4040
        /// lets the kubelet's probes in (POST /resign stays loopback-only
        /// unless a resign token is set).
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:4040")]
        listen: String,
        /// Follow the election without campaigning.
        #[arg(long)]
        observe_only: bool,
        /// A file holding the bearer token that lets callers from other
        /// addresses POST /resign (or LEASEHOLD_RESIGN_TOKEN).
        #[arg(long, value_name = "FILE")]
        resign_token_file: Option<std::path::PathBuf>,
    },
    /// Internal: the guardian `run` starts next to its command.
    #[command(name = "__guard", hide = true)]
    Guard {
        /// The command's process group.
        pgid: String,
    },
}

/// One line of the CLI's output on stdout: a JSON object with an `event`
/// tag and a `ts` (RFC 3339, UTC, milliseconds).
#[derive(Serialize, Debug)]
struct Line<'a> {
    #[serde(flatten)]
    event: Event<'a>,
    ts: String,
}

/// The events the CLI prints, documented in the README.
#[derive(Serialize, Debug)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event<'a> {
    /// This candidate leads (`pid`: the command's, for `run`).
    Elected {
        id: &'a str,
        token: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    /// This candidate's term ended.
    Lost { reason: Reason, detail: String },
    /// Who leads now (observe, campaign).
    Leader(LeaderView),
    /// Renewals are failing: `run` is stopping its command before the
    /// local deadline.
    SteppingDown { reason: &'static str },
    /// The campaign ended on request; the claim is withdrawn.
    Resigned { id: &'a str },
    /// `run`'s command ended (its own process; everything it started is
    /// gone too by the time this is printed).
    Exited {
        status: Option<i32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        token: u64,
    },
    /// `--timeout` ran out before this candidate was elected; its claim is
    /// withdrawn.
    TimedOut { id: &'a str, after_ms: u64 },
    /// `--timeout` ran out while the store could not be reached (its last
    /// call failed with `error`, or none was answered): not a busy lock.
    Unreachable {
        id: &'a str,
        after_ms: u64,
        error: String,
    },
    /// leasehold got a signal (`signal`: its name) and is stopping.
    Signalled { signal: &'static str },
}

/// Why a term ended.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Reason {
    /// Released on request.
    Released,
    /// The store says the lease is gone.
    LeaseLost,
    /// The store could not be reached before the local deadline.
    Unreachable,
    /// `run` stopped its command early because renewals were failing.
    SteppedDown,
    /// A reason this version does not know.
    Other,
}

/// The current leader, or `{"leader": null}`.
#[derive(Serialize, Debug, Default)]
struct LeaderView {
    leader: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<u64>,
}

impl LeaderView {
    fn of(l: &Option<LeaderInfo>) -> Self {
        match l {
            Some(l) => LeaderView {
                leader: Some(l.id.clone()),
                value: Some(String::from_utf8_lossy(&l.value).into_owned()),
                token: Some(l.token.get()),
            },
            None => LeaderView::default(),
        }
    }
}

/// Where events go when not to stdout (`run --events-to FILE`).
static EVENTS_TO: std::sync::OnceLock<Mutex<std::fs::File>> = std::sync::OnceLock::new();

fn print_json(value: &impl Serialize) {
    match serde_json::to_string(value) {
        Ok(text) => match EVENTS_TO.get() {
            Some(file) => {
                use std::io::Write;
                if let Err(e) = writeln!(locked(file), "{text}") {
                    eprintln!("leasehold: cannot write an event to --events-to: {e}");
                }
            }
            None => println!("{text}"),
        },
        Err(e) => eprintln!("leasehold: cannot encode an event: {e}"),
    }
}

fn emit(event: Event<'_>) {
    let ts = jiff::Timestamp::now()
        .round(jiff::Unit::Millisecond)
        .unwrap_or_else(|_| jiff::Timestamp::now());
    print_json(&Line {
        event,
        ts: ts.to_string(),
    });
}

fn lost(r: &LossReason) -> Event<'static> {
    let reason = match r {
        LossReason::Released => Reason::Released,
        LossReason::LeaseLost(_) => Reason::LeaseLost,
        LossReason::Unreachable { .. } => Reason::Unreachable,
        _ => Reason::Other,
    };
    Event::Lost {
        reason,
        detail: r.to_string(),
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("leasehold: {message}");
    ExitCode::from(2)
}

/// Shutdown on SIGTERM, SIGINT, SIGHUP or SIGQUIT: `token` is cancelled at
/// the first one, and `received` tells which it was; `again` at the second
/// (`run` then kills its command at once instead of waiting out the grace).
#[derive(Clone)]
struct Shutdown {
    token: CancellationToken,
    again: CancellationToken,
    signal: Arc<AtomicI32>,
}

impl Shutdown {
    /// Starts listening (in a task of its own).
    fn listen() -> Shutdown {
        use tokio::signal::unix::{SignalKind, signal};
        let shutdown = Shutdown {
            token: CancellationToken::new(),
            again: CancellationToken::new(),
            signal: Arc::new(AtomicI32::new(0)),
        };
        for (kind, sig) in [
            (SignalKind::terminate(), nix::sys::signal::Signal::SIGTERM),
            (SignalKind::interrupt(), nix::sys::signal::Signal::SIGINT),
            (SignalKind::hangup(), nix::sys::signal::Signal::SIGHUP),
            (SignalKind::quit(), nix::sys::signal::Signal::SIGQUIT),
        ] {
            let mut stream = match signal(kind) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("leasehold: cannot listen for {sig}: {e}");
                    continue;
                }
            };
            let s = shutdown.clone();
            tokio::spawn(async move {
                // Every delivery is taken (the handler stays installed); the
                // first signal decides the exit status.
                while stream.recv().await.is_some() {
                    let first = s
                        .signal
                        .compare_exchange(0, sig as i32, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok();
                    if first {
                        s.token.cancel();
                    } else {
                        s.again.cancel();
                    }
                }
            });
        }
        shutdown
    }

    /// The signal received, if any.
    fn received(&self) -> Option<nix::sys::signal::Signal> {
        nix::sys::signal::Signal::try_from(self.signal.load(Ordering::SeqCst)).ok()
    }

    /// The shell's exit status for the signal received (128 + its number).
    fn exit_code(&self) -> Option<ExitCode> {
        self.received()
            .map(|s| ExitCode::from(u8::try_from(128 + s as i32).unwrap_or(1)))
    }

    fn announce(&self) {
        if let Some(s) = self.received() {
            emit(Event::Signalled { signal: s.as_str() });
        }
    }
}

/// A duration the operator typed as `flag`; the error names the flag and
/// what was typed.
fn flag_duration(flag: &str, text: &str) -> Result<Duration, String> {
    parse_duration(flag, text).map_err(|e| reword(&e, flag, &format!("{flag} {text}")))
}

/// The options whose errors are reworded to name where the operator set
/// them: (the library's field, the flag if any, the environment variable,
/// the config file's key).
const OPTION_SOURCES: [(&str, Option<&str>, &str); 5] = [
    ("ttl", Some("--ttl"), "LEASEHOLD_TTL"),
    ("renew_interval", None, "LEASEHOLD_RENEW_INTERVAL"),
    ("retry_interval", None, "LEASEHOLD_RETRY_INTERVAL"),
    ("safety_margin", None, "LEASEHOLD_SAFETY_MARGIN"),
    ("request_timeout", None, "LEASEHOLD_REQUEST_TIMEOUT"),
];

/// Where the operator set `field`, in their words: `--ttl 1s`,
/// `LEASEHOLD_TTL=5`, `ttl in leasehold.toml`, or the store URL's option.
fn source_of(cli: &Cli, e: &Election, field: &str) -> Option<String> {
    let (_, flag, var) = OPTION_SOURCES.iter().find(|(f, _, _)| *f == field)?;
    if let (Some(flag), Some(v)) = (flag, &e.ttl)
        && field == "ttl"
    {
        return Some(format!("{flag} {v}"));
    }
    if let Ok(v) = std::env::var(var) {
        return Some(format!("{var}={v}"));
    }
    if let Some(path) = &cli.config
        && std::fs::read_to_string(path).is_ok_and(|t| t.contains(field))
    {
        return Some(format!("{field} in {}", path.display()));
    }
    Some(format!("the store URL's {field}"))
}

/// An error of `field` worded with `source` (what the operator typed):
/// the library's own prefix (`invalid option `ttl`:`) and its hint in Rust
/// (`use with_ttl(...)`) give way to the flag or variable.
fn reword(e: &leasehold::Error, field: &str, source: &str) -> String {
    match e {
        leasehold::Error::InvalidOption { reason, .. } => {
            let reason = reason.split("; use with_").next().unwrap_or(reason);
            format!("{source}: {reason}")
        }
        leasehold::Error::Config(m) => match m.split_once(&format!("`{field}`: ")) {
            Some((_, rest)) => format!("{source}: {rest}"),
            None => m.clone(),
        },
        other => other.to_string(),
    }
}

/// [`build`], its error worded in the operator's terms.
async fn build_named(cli: &Cli, e: &Election) -> Result<Elector, String> {
    build(cli, e).await.map_err(|err| {
        let field = match &err {
            leasehold::Error::InvalidOption { field, .. } => Some(*field),
            leasehold::Error::Config(m) => OPTION_SOURCES
                .iter()
                .map(|(f, _, _)| *f)
                .find(|f| m.starts_with(&format!("`{f}`: "))),
            _ => None,
        };
        match field.and_then(|f| Some((f, source_of(cli, e, f)?))) {
            Some((f, source)) => reword(&err, f, &source),
            None => err.to_string(),
        }
    })
}

async fn build(cli: &Cli, e: &Election) -> leasehold::Result<Elector> {
    let mut cfg = match &cli.config {
        Some(path) => ElectionConfig::from_file(path)?,
        None => ElectionConfig::default(),
    }
    .with_env();
    if let Some(url) = &cli.store {
        cfg.url = Some(url.clone());
        // The URL names the store; explicit flags still win below.
        cfg.store = None;
    }
    if let Some(n) = &e.name {
        cfg.election = Some(n.clone());
    }
    if let Some(i) = &e.id {
        cfg.id = Some(i.clone());
    }
    if let Some(v) = &e.value {
        cfg.value = Some(v.clone());
    }
    if let Some(t) = &e.ttl {
        cfg.ttl = Some(t.clone());
    }
    // Reading needs no lease: the timings are not checked against the store
    // (a ZooKeeper server that grants shorter sessions than the ttl needs
    // must not stop `leader` from answering, nor hide the store's own error).
    let reads_only = match &cli.command {
        Cmd::Leader(_) | Cmd::Observe(_) | Cmd::Members { .. } => true,
        Cmd::Serve { observe_only, .. } => *observe_only,
        _ => false,
    };
    if reads_only {
        cfg.connect_observer().await
    } else {
        cfg.connect().await
    }
}

/// The log filter without `RUST_LOG`: warnings from everything, and
/// leasehold's own few info lines (a term won, lost or released; a lost
/// answer recovered) with the spans that name election, candidate and token,
/// from the engine and from every store compiled in.
fn default_log_filter() -> String {
    let mut crates = vec!["leasehold_core"];
    for driver in leasehold::drivers() {
        if !crates.contains(&driver.crate_name()) {
            crates.push(driver.crate_name());
        }
    }
    let mut filter = "warn".to_owned();
    for name in crates {
        filter.push_str(&format!(",{name}=info"));
    }
    filter
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Guard { pgid } = &cli.command {
        return supervise::guard_main(pgid).await;
    }
    // Store errors and retries are warnings: shown without RUST_LOG. leasehold's
    // own crates log at info, so that their info-level spans (election,
    // candidate, token) are enabled and name every warning: under a plain
    // `warn` filter the spans are off and a warning names nothing. Colour
    // only when stderr is a terminal (not in log files).
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => tracing_subscriber::EnvFilter::new(f),
        _ => tracing_subscriber::EnvFilter::new(default_log_filter()),
    };
    // Written by a thread of its own (see logwriter.rs): a log write that
    // blocks (a slow disk, a stalled log pipe) must never hold the threads
    // that end a term at its deadline and kill the command.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _log_guard = match logwriter::spawn(std::io::stderr()) {
        Some((writer, guard)) => {
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(writer)
                .with_ansi(ansi)
                .init();
            Some(guard)
        }
        None => {
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .init();
            None
        }
    };
    let election = match &cli.command {
        Cmd::Leader(t) | Cmd::Observe(t) | Cmd::Members { target: t, .. } => t.election(),
        Cmd::Campaign { election, .. }
        | Cmd::Run { election, .. }
        | Cmd::Serve { election, .. } => election.clone(),
        Cmd::Guard { .. } => return fail("__guard is internal to leasehold run"),
    };
    let timeout = match &cli.command {
        Cmd::Campaign { timeout, .. } | Cmd::Run { timeout, .. } => match timeout {
            Some(t) => match flag_duration("--timeout", t) {
                Ok(d) => Some(d),
                Err(e) => return fail(e),
            },
            None => None,
        },
        _ => None,
    };
    if let Cmd::Run {
        events_to: Some(path),
        ..
    } = &cli.command
    {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(file) => {
                let _ = EVENTS_TO.set(Mutex::new(file));
            }
            Err(e) => {
                return fail(format!(
                    "--events-to {}: cannot open it for writing: {e}",
                    path.display()
                ));
            }
        }
    }
    // The recorder goes in before the elector exists: creating it records
    // the is-leader gauge at 0.
    let exporter = match (&cli.command, &cli.metrics_addr) {
        (Cmd::Serve { .. }, Some(addr)) => {
            return fail(format!(
                "--metrics-addr {addr}: serve answers /metrics, /healthz and /readyz on its --listen address already; drop --metrics-addr"
            ));
        }
        (Cmd::Serve { listen, .. }, None) => match exporter::bind("--listen", listen).await {
            Ok(x) => Some(x),
            Err(e) => return fail(e),
        },
        (Cmd::Leader(_) | Cmd::Members { .. }, _) | (_, None) => None,
        (_, Some(addr)) => match exporter::bind("--metrics-addr", addr).await {
            Ok(x) => Some(x),
            Err(e) => return fail(e),
        },
    };
    let resign_token = match &cli.command {
        Cmd::Serve {
            resign_token_file, ..
        } => match resign_token(resign_token_file.as_deref()) {
            Ok(t) => t,
            Err(e) => return fail(e),
        },
        _ => None,
    };
    let elector = match build_named(&cli, &election).await {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    if let Cmd::Serve { observe_only, .. } = &cli.command {
        let Some(x) = exporter else {
            return fail("serve: no listener");
        };
        let options = serve::Options {
            observe_only: *observe_only,
            resign_token,
        };
        return serve::serve(elector, x, options).await;
    }
    if let Some(x) = exporter {
        exporter::serve(x, elector.clone());
    }
    match &cli.command {
        Cmd::Leader(_) => match elector.leader().await {
            Ok(l) => {
                print_json(&LeaderView::of(&l));
                if l.is_some() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => fail(e),
        },
        Cmd::Observe(_) => observe(&elector, Shutdown::listen().token).await,
        Cmd::Members {
            json, watch: true, ..
        } => members_watch(&elector, *json, Shutdown::listen().token).await,
        Cmd::Members { json, .. } => members(&elector, *json).await,
        Cmd::Campaign { .. } => campaign(&elector, timeout).await,
        Cmd::Run {
            grace,
            forever,
            start_delay,
            permits,
            command,
            ..
        } => {
            let semaphore = match permits {
                None => None,
                Some(n) => {
                    match Semaphore::new(elector.backend().clone(), elector.options().clone(), *n) {
                        Ok(s) => Some(s),
                        Err(leasehold::Error::NotSupported { backend, .. }) => {
                            return fail(format!(
                                "-n {n}: the {backend} store keeps one holder per name, so it has no counting semaphore; use etcd, ZooKeeper or memory for run -n, or drop -n to run while leading"
                            ));
                        }
                        Err(e) => return fail(format!("-n {n}: {e}")),
                    }
                }
            };
            let grace = match grace_for(&elector, grace.as_deref()) {
                Ok(g) => g,
                Err(e) => return fail(e),
            };
            let start_delay = match start_delay
                .as_deref()
                .map(|d| flag_duration("--start-delay", d))
            {
                None => Duration::ZERO,
                Some(Ok(d)) => d,
                Some(Err(e)) => return fail(e),
            };
            let how = How {
                grace,
                forever: *forever,
                wait_for: timeout,
                start_delay,
                semaphore,
            };
            // Awaited here, on the thread that lives as long as the process:
            // the command's parent-death signal is tied to the thread that
            // spawned it (see supervise).
            run(&elector, command, how).await
        }
        Cmd::Serve { .. } => fail("serve is handled above"),
        Cmd::Guard { .. } => fail("__guard is internal to leasehold run"),
    }
}

/// `serve`'s resign token: the file's first line, else
/// `LEASEHOLD_RESIGN_TOKEN`; an empty one is refused.
fn resign_token(file: Option<&std::path::Path>) -> Result<Option<String>, String> {
    let (token, whence) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "--resign-token-file {}: cannot read it: {e}",
                    path.display()
                )
            })?;
            (
                text.lines().next().unwrap_or("").trim().to_owned(),
                format!("--resign-token-file {}", path.display()),
            )
        }
        None => match std::env::var("LEASEHOLD_RESIGN_TOKEN") {
            Ok(t) => (t.trim().to_owned(), "LEASEHOLD_RESIGN_TOKEN".to_owned()),
            Err(_) => return Ok(None),
        },
    };
    if token.is_empty() {
        return Err(format!(
            "{whence}: the resign token is empty; put a secret in it, or leave it unset to allow POST /resign from loopback only"
        ));
    }
    Ok(Some(token))
}

/// One candidate in `members --json`.
#[derive(Serialize, Debug)]
struct MemberView {
    id: String,
    value: String,
    token: u64,
    leader: bool,
}

/// `members --json`: the election and its candidates in line order.
#[derive(Serialize, Debug)]
struct MembersView<'a> {
    election: &'a str,
    members: Vec<MemberView>,
}

fn member_views(list: &[LeaderInfo]) -> Vec<MemberView> {
    list.iter()
        .enumerate()
        .map(|(i, m)| MemberView {
            id: m.id.clone(),
            value: String::from_utf8_lossy(&m.value).into_owned(),
            token: m.token.get(),
            leader: i == 0,
        })
        .collect()
}

/// The candidates as a table: position, role, id, token, value (control
/// characters escaped, so a value cannot break the layout).
fn members_table(election: &str, members: &[MemberView]) -> String {
    if members.is_empty() {
        return format!("election {election:?}: no live candidates\n");
    }
    let rows: Vec<[String; 5]> = members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            [
                (i + 1).to_string(),
                if m.leader { "leader" } else { "waiting" }.to_owned(),
                m.id.escape_debug().to_string(),
                m.token.to_string(),
                m.value.escape_debug().to_string(),
            ]
        })
        .collect();
    let header = ["#", "ROLE", "ID", "TOKEN", "VALUE"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i == 4 {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut out = format!(
        "election {election:?}: {} live candidate{}, in line order\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    out.push_str(&line(header));
    for row in &rows {
        out.push_str(&line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
    }
    out
}

/// `members`: the live candidates, leader first.
async fn members(elector: &Elector, json: bool) -> ExitCode {
    let election = elector.options().election.clone();
    match elector.participants().await {
        Ok(list) => {
            let members = member_views(&list);
            if json {
                print_json(&MembersView {
                    election: &election,
                    members,
                });
            } else {
                print!("{}", members_table(&election, &members));
            }
            ExitCode::SUCCESS
        }
        Err(leasehold::Error::NotSupported { backend, .. }) => cannot_list(backend, &election),
        Err(e) => fail(e),
    }
}

fn cannot_list(backend: &str, election: &str) -> ExitCode {
    fail(format!(
        "members: the {backend} store cannot list the candidates of {election:?}: it keeps one lease record per election, which names only the holder, and waiting candidates leave nothing in it. \
         `leasehold leader --name {election}` shows who leads (`leasehold observe` follows it); the list of candidates is kept by etcd and ZooKeeper."
    ))
}

/// `members --watch`: the list now, then again after every change, until
/// `stop` fires (exit 0).
async fn members_watch(elector: &Elector, json: bool, stop: CancellationToken) -> ExitCode {
    let election = elector.options().election.clone();
    let mut rx = match elector.observe_participants().await {
        Ok(rx) => rx,
        Err(leasehold::Error::NotSupported { backend, .. }) => {
            return cannot_list(backend, &election);
        }
        Err(e) => return fail(e),
    };
    let mut first = true;
    loop {
        let members = member_views(&rx.borrow_and_update());
        if json {
            print_json(&MembersView {
                election: &election,
                members,
            });
        } else {
            // A blank line between two tables.
            let gap = if first { "" } else { "\n" };
            print!("{gap}{}", members_table(&election, &members));
        }
        first = false;
        tokio::select! {
            _ = stop.cancelled() => return ExitCode::SUCCESS,
            r = rx.changed() => if r.is_err() {
                // Stopped on an error that retrying cannot fix: ask the
                // store once more to say which, and fail with it.
                return match elector.participants().await {
                    Err(e) => fail(format!("members --watch: {e}")),
                    Ok(_) => fail("members --watch: following the candidates stopped on an error that retrying cannot fix (RUST_LOG=leasehold_core=warn shows it)"),
                };
            },
        }
    }
}

async fn observe(elector: &Elector, stop: CancellationToken) -> ExitCode {
    let mut rx = match elector.observe().await {
        Ok(rx) => rx,
        Err(e) => return fail(e),
    };
    loop {
        let now = rx.borrow_and_update().clone();
        emit(Event::Leader(LeaderView::of(&now)));
        tokio::select! {
            _ = stop.cancelled() => return ExitCode::SUCCESS,
            r = rx.changed() => if r.is_err() {
                // The observer stopped on an error that retrying cannot fix
                // (permission revoked, the election's path gone): ask the
                // store once more to say which, and fail with it.
                return match elector.leader().await {
                    Err(e) => fail(e),
                    Ok(_) => fail("observing the election stopped on an error that retrying cannot fix (RUST_LOG=leasehold_core=warn shows it)"),
                };
            },
        }
    }
}

/// Locks a mutex even if a panicking thread poisoned it (the data is plain
/// flags).
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn campaign(elector: &Elector, wait_for: Option<Duration>) -> ExitCode {
    let shutdown = Shutdown::listen();
    // Cancelled on a signal, or when --timeout runs out before the election.
    let stop = shutdown.token.child_token();
    let watcher = {
        let elector = elector.clone();
        let stop = stop.clone();
        tokio::spawn(async move { observe(&elector, stop).await })
    };
    // (elected once, timed out): decided under one lock, so a term won at
    // the moment the timeout runs out is either served or given back.
    let state = Arc::new(Mutex::new((false, false)));
    let timer = wait_for.map(|d| {
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            sleep(d).await;
            let mut s = locked(&state);
            if !s.0 {
                s.1 = true;
                stop.cancel();
            }
        })
    });
    let id = elector.options().candidate_id.clone();
    let result = elector
        .run(stop.clone(), |l: Leadership| {
            let id = id.clone();
            let state = state.clone();
            async move {
                {
                    let mut s = locked(&state);
                    if s.1 {
                        return; // timed out just now: give the term back
                    }
                    s.0 = true;
                }
                emit(Event::Elected {
                    id: &id,
                    token: l.fencing_token().get(),
                    pid: None,
                });
                let reason = l.lost().await;
                emit(lost(&reason));
            }
        })
        .await;
    if let Some(t) = timer {
        t.abort();
    }
    stop.cancel();
    let _ = watcher.await;
    let timed_out = locked(&state).1;
    match result {
        Ok(()) if timed_out => gave_up(elector, wait_for),
        Ok(()) => {
            emit(Event::Resigned {
                id: &elector.options().candidate_id,
            });
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `--timeout` ran out: `timed_out` (124) when the store answered and
/// someone else holds the election, `unreachable` (69) when the store's last
/// answer was an error, or it never answered.
fn gave_up(elector: &Elector, wait_for: Option<Duration>) -> ExitCode {
    let id = &elector.options().candidate_id;
    let after_ms = wait_for.map(millis).unwrap_or(0);
    let error = match elector.health() {
        leasehold::Health::Following {
            contact: leasehold::StoreContact::CutOff { last_error, .. },
        } => Some(last_error.to_string()),
        leasehold::Health::Following {
            contact: leasehold::StoreContact::Unknown,
        } => Some("the store answered no call".to_owned()),
        _ => None,
    };
    match error {
        Some(error) => {
            emit(Event::Unreachable {
                id,
                after_ms,
                error,
            });
            ExitCode::from(UNREACHABLE)
        }
        None => {
            emit(Event::TimedOut { id, after_ms });
            ExitCode::from(TIMED_OUT)
        }
    }
}

/// The SIGTERM-to-SIGKILL grace: it must end by the local deadline, and a
/// healthy leader (renewing on time) must never come near it.
fn grace_for(elector: &Elector, given: Option<&str>) -> Result<Duration, String> {
    let o = elector.options();
    let room = elector
        .lease_plan()
        .lifetime(o)
        .saturating_sub(o.renew_interval + o.request_timeout.min(o.renew_interval));
    let grace = match given {
        Some(g) => flag_duration("--grace", g)?,
        None => (room / 2).min(Duration::from_secs(5)),
    };
    if grace.is_zero() || grace >= room {
        return Err(format!(
            "--grace {grace:?} must be above zero and below {room:?} (the store's lifetime of a renewal, at most ttl - safety_margin, less renew_interval and request_timeout), so that a healthy leader never starts stopping its command; raise --ttl or lower --grace"
        ));
    }
    Ok(grace)
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        (None, Some(s)) => ExitCode::from(u8::try_from(128 + s).unwrap_or(1)),
        _ => ExitCode::from(1),
    }
}

/// Why `run` is stopping its command.
enum Ending {
    /// The command's own process exited (what it started is stopped too).
    Exited,
    /// leasehold got a signal.
    Signalled,
    /// The store says the lease is gone: kill at once.
    Lost(LossReason),
    /// Renewals are failing and the local deadline is within the grace.
    SteppingDown,
}

/// Campaign until elected (or, with a semaphore, until a permit is held: a
/// permit's term), a signal, or `wait_for` runs out (`Ok(None)`; then the
/// claim is withdrawn).
async fn acquire(
    elector: &Elector,
    semaphore: Option<&Semaphore>,
    shutdown: &Shutdown,
    wait_for: Option<Duration>,
) -> leasehold::Result<Option<Leadership>> {
    let cancel = shutdown.token.child_token();
    let timer = wait_for.map(|d| {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            sleep(d).await;
            cancel.cancel();
        })
    });
    // Returns `None` only once the queued claim is withdrawn.
    let got = match semaphore {
        Some(s) => s
            .acquire_cancellable(&cancel)
            .await
            .map(|p| p.map(Permit::into_leadership)),
        None => elector.lock_cancellable(&cancel).await,
    };
    if let Some(t) = timer {
        t.abort();
    }
    got
}

/// `run`'s options.
struct How {
    grace: Duration,
    forever: bool,
    /// `--timeout`: the first campaign gives up after this.
    wait_for: Option<Duration>,
    start_delay: Duration,
    /// `-n N`: hold one of N permits instead of leading.
    semaphore: Option<Semaphore>,
}

async fn run(elector: &Elector, command: &[String], how: How) -> ExitCode {
    let How {
        grace,
        forever,
        wait_for,
        start_delay,
        semaphore,
    } = how;
    let shutdown = Shutdown::listen();
    if let Err(e) = supervise::become_subreaper() {
        return fail(format!(
            "cannot become a child subreaper (prctl PR_SET_CHILD_SUBREAPER: {e}); without it, processes that leave the command's process group could outlive it"
        ));
    }
    let id = elector.options().candidate_id.clone();
    let mut first = true;
    // Bounded by the user: without --forever one term; with it, until a signal.
    loop {
        let leadership = match acquire(
            elector,
            semaphore.as_ref(),
            &shutdown,
            wait_for.filter(|_| first),
        )
        .await
        {
            Ok(Some(l)) => l,
            Ok(None) => {
                if let Some(code) = shutdown.exit_code() {
                    shutdown.announce();
                    return code;
                }
                return gave_up(elector, wait_for);
            }
            Err(e) => return fail(e),
        };
        first = false;
        let token = leadership.fencing_token().get();
        if !start_delay.is_zero() {
            tokio::select! {
                _ = sleep(start_delay) => {}
                _ = shutdown.token.cancelled() => {
                    shutdown.announce();
                    if let Err(e) = leadership.unlock().await {
                        eprintln!("leasehold: release failed ({e}); the release is retried in the background while this process's session lives; else the next candidate waits until the store ends the lease (its ttl)");
                    }
                    return shutdown.exit_code().unwrap_or(ExitCode::from(1));
                }
                reason = leadership.lost() => {
                    emit(lost(&reason));
                    if forever {
                        continue;
                    }
                    return fail("the lease was lost during --start-delay, before the command started");
                }
            }
        }
        let mut cmd = Command::new(&command[0]);
        cmd.args(&command[1..])
            .env("LEASEHOLD_TOKEN", token.to_string())
            .env("LEASEHOLD_LEADER_ID", &id)
            .env("LEASEHOLD_ELECTION", &elector.options().election);
        let mut tree = match Tree::spawn(cmd) {
            Ok(t) => t,
            Err(e) => {
                let _ = leadership.unlock().await;
                return fail(format!("cannot start {:?}: {e}", command[0]));
            }
        };
        // The command dies at the local deadline at the latest even if this
        // runtime's threads are held meanwhile (see `Tree::watch_deadline`).
        let deadline_watch = {
            let l = leadership.clone();
            tree.watch_deadline(move || l.deadline().into_std())
        };
        emit(Event::Elected {
            id: &id,
            token,
            pid: Some(tree.pid()),
        });
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        // Start stopping the command when the deadline comes within the
        // grace (renewals failing); kill it at the deadline at the latest.
        let ending = loop {
            let warn_at = leadership.deadline() - grace;
            tokio::select! {
                _ = tree.main_exited() => break Ending::Exited,
                _ = shutdown.token.cancelled() => break Ending::Signalled,
                reason = leadership.lost() => break Ending::Lost(reason),
                _ = sleep_until(warn_at) => {
                    if leadership.deadline() - grace > Instant::now() {
                        continue; // renewed meanwhile
                    }
                    break Ending::SteppingDown;
                }
                _ = housekeeping.tick() => tree.housekeep().await,
            }
        };
        let now = Instant::now();
        let kill_at = match &ending {
            Ending::Exited | Ending::Signalled => (now + grace).min(leadership.deadline()),
            Ending::SteppingDown => leadership.deadline(),
            Ending::Lost(_) => now,
        };
        match &ending {
            Ending::Signalled => shutdown.announce(),
            Ending::SteppingDown => emit(Event::SteppingDown {
                reason: "renewals failing; stopping the command before the local deadline",
            }),
            _ => {}
        }
        // A lost lease kills at once, at any moment of the stop; so does a
        // second signal.
        let lost_signal = leadership.lost();
        let again = shutdown.again.clone();
        let stopped = tree.stop(kill_at, async move {
            tokio::select! {
                _ = lost_signal => {}
                _ = again.cancelled() => {}
            }
        });
        let stopped = stopped.await;
        // The command is gone (or outlived SIGKILL): the watch has nothing
        // left to do, and its copy of the leadership goes with it.
        drop(deadline_watch);
        match &ending {
            Ending::Lost(reason) => emit(lost(reason)),
            Ending::SteppingDown => {
                // The done signal fires at the deadline at the latest,
                // unless a renewal got through meanwhile.
                let wait = grace + Duration::from_millis(200);
                match tokio::time::timeout(wait, leadership.lost()).await {
                    Ok(r) => emit(lost(&r)),
                    Err(_) => emit(Event::Lost {
                        reason: Reason::SteppedDown,
                        detail: "renewals were failing; the command was stopped before the local deadline".into(),
                    }),
                }
            }
            _ => {
                if let Some(r) = leadership.loss_reason() {
                    emit(lost(&r));
                }
            }
        }
        // Every way a term ends prints `lost` (as campaign does); the ones
        // above already did.
        let lost_said = matches!(ending, Ending::Lost(_) | Ending::SteppingDown)
            || leadership.loss_reason().is_some();
        if let Err(left) = stopped {
            // Not releasing: the lease expires on its own after the ttl, the
            // only protection left (with fencing tokens) for those processes.
            eprintln!(
                "leasehold: processes {left:?} of the command are still alive {KILL_WAIT:?} after SIGKILL (uninterruptible sleep?); exiting without releasing the lease, which expires after its ttl",
                KILL_WAIT = supervise::KILL_WAIT
            );
            std::process::exit(1);
        }
        let status = tree.finish().await;
        // The command is gone, all of it: only now may the lease go to
        // someone else.
        if !leadership.is_lost() {
            let released = leadership.unlock().await;
            if let Err(e) = &released {
                eprintln!(
                    "leasehold: release failed ({e}); the release is retried in the background while this process's session lives; else the next candidate waits until the store ends the lease (its ttl)"
                );
            }
            if !lost_said {
                emit(Event::Lost {
                    reason: Reason::Released,
                    detail: match released {
                        Ok(()) => "released once the command had ended".to_owned(),
                        Err(e) => format!("the release failed ({e}); the lease ends with its ttl"),
                    },
                });
            }
        }
        let code = match &status {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                emit(Event::Exited {
                    status: s.code(),
                    signal: s.signal(),
                    token,
                });
                exit_code(*s)
            }
            Err(e) => fail(format!("waiting for the command failed: {e}")),
        };
        if let Some(code) = shutdown.exit_code() {
            return code;
        }
        if !forever {
            return code;
        }
        tokio::select! {
            _ = sleep(elector.options().retry_interval) => {}
            _ = shutdown.token.cancelled() => {
                shutdown.announce();
                return shutdown.exit_code().unwrap_or(code);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_log_filter_names_the_engine_and_every_store_compiled_in() {
        let filter = super::default_log_filter();
        let mut parts = filter.split(',');
        assert_eq!(parts.next(), Some("warn"), "{filter}");
        assert_eq!(parts.next(), Some("leasehold_core=info"), "{filter}");
        let rest: Vec<&str> = parts.collect();
        // Every store of the list is on in the tool (the memory store's
        // crate is the engine's, named once).
        assert_eq!(rest.len(), leasehold::STORES.len() - 1, "{filter}");
        for driver in leasehold::drivers() {
            let directive = format!("{}=info", driver.crate_name());
            assert_eq!(
                filter.split(',').filter(|d| *d == directive).count(),
                1,
                "{filter}"
            );
        }
    }

    #[test]
    fn the_members_table_lines_up_and_escapes_values() {
        use leasehold::{FencingToken, LeaderInfo};
        let list = [
            LeaderInfo {
                id: "replica-a".into(),
                value: b"10.0.0.5:80".to_vec(),
                token: FencingToken(7),
            },
            LeaderInfo {
                id: "b".into(),
                value: b"two\nlines".to_vec(),
                token: FencingToken(12),
            },
        ];
        let views = super::member_views(&list);
        assert!(views[0].leader && !views[1].leader);
        let table = super::members_table("billing", &views);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert_eq!(
            lines[0],
            "election \"billing\": 2 live candidates, in line order"
        );
        assert_eq!(lines[1], "#  ROLE     ID         TOKEN  VALUE");
        assert_eq!(lines[2], "1  leader   replica-a  7      10.0.0.5:80");
        assert_eq!(lines[3], "2  waiting  b          12     two\\nlines");
        assert_eq!(
            super::members_table("x", &[]),
            "election \"x\": no live candidates\n"
        );
    }
}
