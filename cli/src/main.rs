//! `leasehold`: leader election from the shell.
//!
//! ```text
//! leasehold --store etcd://127.0.0.1:2379 campaign --name jobs --id a
//! leasehold --store zk://127.0.0.1:2181 run --name jobs -- ./worker --flag
//! leasehold --store gs://bucket/locks/ leader --name jobs
//! leasehold --config leasehold.toml observe --name jobs
//! ```
//!
//! Events are printed as one JSON object per line on stdout.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use leasehold::config::parse_duration;
use leasehold::{CancellationToken, ElectionConfig, Elector, LeaderInfo, Leadership, LossReason};
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, sleep_until};

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

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Become a candidate and stay one; print an event per line (elected,
    /// lost, leader changes); resign cleanly on SIGTERM or Ctrl-C.
    Campaign(Election),
    /// Run a command only while leading; stop it before anyone else can lead.
    Run {
        #[command(flatten)]
        election: Election,
        /// Time between SIGTERM and SIGKILL; it must end before the local
        /// deadline (default: the largest that fits, at most 5s).
        #[arg(long)]
        grace: Option<String>,
        /// Campaign again after each term instead of exiting.
        #[arg(long)]
        forever: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print the current leader and token; exit 1 if there is none.
    Leader(Election),
    /// Print every leader change as a JSON line until interrupted.
    Observe(Election),
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
    /// `run`'s command ended.
    Exited {
        status: Option<i32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        token: u64,
    },
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

fn print_json(value: &impl Serialize) {
    match serde_json::to_string(value) {
        Ok(text) => println!("{text}"),
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

/// Cancelled on SIGTERM or SIGINT.
fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("leasehold: cannot listen for SIGTERM: {e}");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        t.cancel();
    });
    token
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
    cfg.connect().await
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let election = match &cli.command {
        Cmd::Campaign(e) | Cmd::Leader(e) | Cmd::Observe(e) => e.clone(),
        Cmd::Run { election, .. } => election.clone(),
    };
    let elector = match build(&cli, &election).await {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
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
        Cmd::Observe(_) => observe(&elector, shutdown_token()).await,
        Cmd::Campaign(_) => campaign(&elector).await,
        Cmd::Run {
            grace,
            forever,
            command,
            ..
        } => {
            let grace = match grace_for(&elector, grace.as_deref()) {
                Ok(g) => g,
                Err(e) => return fail(e),
            };
            run(&elector, command, grace, *forever).await
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
            r = rx.changed() => if r.is_err() { return ExitCode::SUCCESS },
        }
    }
}

async fn campaign(elector: &Elector) -> ExitCode {
    let stop = shutdown_token();
    let watcher = {
        let elector = elector.clone();
        let stop = stop.clone();
        tokio::spawn(async move { observe(&elector, stop).await })
    };
    let id = elector.options().candidate_id.clone();
    let result = elector
        .run(stop.clone(), |l: Leadership| {
            let id = id.clone();
            async move {
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
    stop.cancel();
    let _ = watcher.await;
    match result {
        Ok(()) => {
            emit(Event::Resigned {
                id: &elector.options().candidate_id,
            });
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// The SIGTERM-to-SIGKILL grace: it must end by the local deadline, and a
/// healthy leader (renewing on time) must never come near it.
fn grace_for(elector: &Elector, given: Option<&str>) -> Result<Duration, String> {
    let o = elector.options();
    let room = o
        .deadline_after_renewal()
        .saturating_sub(o.renew_interval + o.request_timeout.min(o.renew_interval));
    let grace = match given {
        Some(g) => parse_duration("grace", g).map_err(|e| e.to_string())?,
        None => (room / 2).min(Duration::from_secs(5)),
    };
    if grace.is_zero() || grace >= room {
        return Err(format!(
            "--grace {grace:?} must be above zero and below {room:?} (ttl - safety_margin - renew_interval - request_timeout), so that a healthy leader never starts stopping its command; raise --ttl or lower --grace"
        ));
    }
    Ok(grace)
}

fn signal_child(child: &Child, sig: nix::sys::signal::Signal) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        if let Err(e) = nix::sys::signal::kill(pid, sig) {
            eprintln!("leasehold: cannot send {sig} to the command: {e}");
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        (None, Some(s)) => ExitCode::from(u8::try_from(128 + s).unwrap_or(1)),
        _ => ExitCode::from(1),
    }
}

/// Stop the child: SIGTERM, then SIGKILL at `kill_at`.
async fn stop_child(
    child: &mut Child,
    kill_at: Instant,
) -> std::io::Result<std::process::ExitStatus> {
    signal_child(child, nix::sys::signal::Signal::SIGTERM);
    tokio::select! {
        s = child.wait() => s,
        _ = sleep_until(kill_at) => {
            let _ = child.start_kill();
            child.wait().await
        }
    }
}

async fn run(elector: &Elector, command: &[String], grace: Duration, forever: bool) -> ExitCode {
    let stop = shutdown_token();
    let id = elector.options().candidate_id.clone();
    loop {
        let leadership = tokio::select! {
            _ = stop.cancelled() => return ExitCode::from(143),
            l = elector.lock() => match l {
                Ok(l) => l,
                Err(e) => return fail(e),
            },
        };
        let token = leadership.fencing_token().get();
        let mut child = match Command::new(&command[0])
            .args(&command[1..])
            .env("LEASEHOLD_TOKEN", token.to_string())
            .env("LEASEHOLD_LEADER_ID", &id)
            .env("LEASEHOLD_ELECTION", &elector.options().election)
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                let _ = leadership.unlock().await;
                return fail(format!("cannot start {:?}: {e}", command[0]));
            }
        };
        emit(Event::Elected {
            id: &id,
            token,
            pid: child.id(),
        });
        // Start stopping the command when the deadline comes within the
        // grace (renewals failing); kill it at the deadline at the latest.
        let status = loop {
            let warn_at = leadership.deadline() - grace;
            tokio::select! {
                s = child.wait() => break Outcome::Exited(s),
                _ = stop.cancelled() => {
                    let s = stop_child(&mut child, Instant::now() + grace.min(leadership.deadline() - Instant::now())).await;
                    break Outcome::Stopped(s);
                }
                reason = leadership.lost() => {
                    // The store says someone else may lead already: kill now.
                    let _ = child.start_kill();
                    let s = child.wait().await;
                    emit(lost(&reason));
                    break Outcome::Lost(s);
                }
                _ = sleep_until(warn_at) => {
                    if leadership.deadline() - grace > Instant::now() {
                        continue; // renewed meanwhile
                    }
                    emit(Event::SteppingDown { reason: "renewals failing; stopping the command before the local deadline" });
                    let s = stop_child(&mut child, leadership.deadline()).await;
                    // The done signal fires at the deadline at the latest,
                    // unless a renewal got through meanwhile.
                    let wait = grace + Duration::from_millis(200);
                    match tokio::time::timeout(wait, leadership.lost()).await {
                        Ok(r) => emit(lost(&r)),
                        Err(_) => emit(Event::Lost { reason: Reason::SteppedDown, detail: "renewals were failing; the command was stopped before the local deadline".into() }),
                    }
                    break Outcome::Lost(s);
                }
            }
        };
        let status = match status {
            Outcome::Exited(s) | Outcome::Stopped(s) | Outcome::Lost(s) => s,
        };
        // The command is gone: only now may the lease go to someone else.
        if let Err(e) = leadership.unlock().await {
            eprintln!("leasehold: release failed ({e}); the lease will expire");
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
        if stop.is_cancelled() || !forever {
            return code;
        }
        sleep(elector.options().retry_interval).await;
    }
}

enum Outcome {
    Exited(std::io::Result<std::process::ExitStatus>),
    Stopped(std::io::Result<std::process::ExitStatus>),
    Lost(std::io::Result<std::process::ExitStatus>),
}
