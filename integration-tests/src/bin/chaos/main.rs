//! `chaos`: leasehold under faults, checked over the whole history.
//!
//! ```text
//! chaos quick                                   # fixed seeds, every backend, ~5 minutes
//! chaos soak --backend etcd --members 3 --minutes 30 --seed 7
//! chaos soak --backend zookeeper --members 3 --candidates 4 --permits 2   # semaphore mode
//! chaos soak --backend gcs --seconds 40 --seed 3 --faults cut-leader
//! chaos worker --register 10.202.0.1:PORT       # what `leasehold run` supervises
//! chaos candidate --store URL --side NAME --register ADDR   # two electors, one session
//! chaos churn --backend etcd --endpoints H:P --election NAME  # claims in the line
//! ```
//!
//! For one backend the runner starts the store (one node, or a 3-member etcd
//! cluster / ZooKeeper ensemble), a fenced register, and N candidates, each
//! `leasehold run --forever -- chaos worker` in a network namespace of its own
//! (see `net.rs`). Each worker writes its `LEASEHOLD_TOKEN` to the register
//! every 20 ms. Faults are drawn from the printed seed: SIGKILL of the
//! leader's supervisor, SIGSTOP of supervisor and worker for longer than the
//! ttl, the leader's store link cut (both ways, or one way only), store
//! restarts, member kill/restart, a release whose answer is lost while
//! another elector keeps the shared session alive (`candidate.rs`), the
//! leader's key / node deleted by hand while a churn client (`churn.rs`)
//! fills the line, and, for Cloud Storage, PostgreSQL and MySQL, the lease
//! object / row deleted by hand. Then `checker.rs` reads the history and prints a table;
//! the exit status is 1 on any violation, 2 when the run itself failed.
//!
//! It needs root (network namespaces) and the stores `scripts/setup`
//! installs, and the `leasehold` binary (`cargo build -p leasehold-cli`; by
//! default the one next to this binary, else `--cli PATH`).

mod candidate;
mod checker;
mod churn;
mod members;
mod net;
mod register;
mod runner;
mod stores;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use runner::{FaultKind, RunConfig};
use stores::Backend;

#[derive(Parser, Debug)]
#[command(
    name = "chaos",
    about = "leasehold under real faults, checked over the whole history"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Fixed seeds, every backend, a few minutes in all (the test command runs it).
    Quick {
        /// The `leasehold` binary (default: next to this one).
        #[arg(long)]
        cli: Option<PathBuf>,
    },
    /// One backend for as long as asked, with any seed.
    Soak(SoakArgs),
    /// Write LEASEHOLD_TOKEN to the register until killed.
    Worker {
        /// The register's address.
        #[arg(long)]
        register: SocketAddr,
        /// Time between writes.
        #[arg(long, default_value_t = 20)]
        period_ms: u64,
        /// Exit after this long at the latest.
        #[arg(long, default_value_t = 86_400)]
        max_seconds: u64,
    },
    /// A candidate with two electors on one store (one shared session): it
    /// holds `--side` for its whole life and campaigns for the URL's
    /// election, running `chaos worker` while it leads (see candidate.rs).
    Candidate {
        /// The store URL with the election, `id` and `ttl`.
        #[arg(long)]
        store: String,
        /// The side election held for the process's whole life.
        #[arg(long)]
        side: String,
        /// The register's address (for the worker).
        #[arg(long)]
        register: SocketAddr,
        /// Stop the worker this long before the local deadline when
        /// renewals fail.
        #[arg(long, default_value_t = 300)]
        grace_ms: u64,
        /// Hold one of this many permits (a semaphore) instead of leading.
        #[arg(long, default_value_t = 1)]
        permits: u32,
    },
    /// Create and delete claims in an election's line every few ms; delete
    /// the leader's claim on a line `delete-leader` on stdin (see churn.rs).
    Churn {
        /// The store (etcd or zookeeper).
        #[arg(long, value_enum)]
        backend: Backend,
        /// `host:port` of the members, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        /// The election.
        #[arg(long)]
        election: String,
        /// Time between two claims.
        #[arg(long, default_value_t = 3)]
        period_ms: u64,
        /// Exit after this long at the latest.
        #[arg(long, default_value_t = 60)]
        max_seconds: u64,
    },
}

#[derive(Args, Debug)]
struct SoakArgs {
    /// The store.
    #[arg(long, value_enum)]
    backend: Backend,
    /// Store members: 1, or 3 for an etcd cluster / ZooKeeper ensemble.
    #[arg(long, default_value_t = 1)]
    members: usize,
    /// Candidate processes.
    #[arg(long, default_value_t = 3)]
    candidates: usize,
    /// The seed of the fault schedule (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// How long to inject faults, in minutes.
    #[arg(long, conflicts_with = "seconds")]
    minutes: Option<u64>,
    /// How long to inject faults, in seconds (default 60).
    #[arg(long)]
    seconds: Option<u64>,
    /// Lease ttl in milliseconds (etcd's minimum is 2000; Cloud Storage's
    /// one renewal a second needs 4000 with the derived ttl/4).
    #[arg(long, default_value_t = 4000)]
    ttl_ms: u64,
    /// `leasehold run --grace`, in milliseconds.
    #[arg(long, default_value_t = 300)]
    grace_ms: u64,
    /// Recovery bound = ttl + this slack, in milliseconds: the longest a
    /// fault's heal may go without an accepted write, and the election
    /// without a live term (see checker.rs, `Limits::recover_ns`).
    #[arg(long, default_value_t = 6000)]
    slack_ms: u64,
    /// A leader whose claim is deleted by hand must end its term and stop
    /// writing within this, in milliseconds (default: 250 on etcd and
    /// ZooKeeper, whose leaders watch their own claim; on PostgreSQL and
    /// MySQL, whose leaders learn it at their next renewal, a renew
    /// interval plus its request timeout, 2/3 of the ttl).
    #[arg(long)]
    deposed_ms: Option<u64>,
    /// Only these fault kinds (comma-separated; default: all that apply).
    #[arg(long, value_enum, value_delimiter = ',')]
    faults: Vec<FaultKind>,
    /// The `leasehold` binary (default: next to this one).
    #[arg(long)]
    cli: Option<PathBuf>,
    /// Run the candidates with LEASEHOLD_UNSAFE_NO_DEADLINE set: with a CLI
    /// built with RUSTFLAGS="--cfg leasehold_unsafe_no_deadline" (test-only)
    /// the leaders never step down on their own clock (the checker must fail).
    #[arg(long)]
    unsafe_no_deadline: bool,
    /// Semaphore mode: the candidates hold one of N permits (`leasehold run
    /// -n N`), and the register and the checker allow N writers at once
    /// (at most N distinct live tokens writing). 1: an election.
    #[arg(long, default_value_t = 1)]
    permits: u32,
}

fn default_cli(given: Option<PathBuf>) -> Result<PathBuf, String> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find my own binary: {e}"))?
            .with_file_name("leasehold"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "the leasehold CLI is not at {}: build it with `cargo build -p leasehold-cli` or pass --cli PATH",
            path.display()
        ))
    }
}

fn config(a: SoakArgs) -> Result<RunConfig, String> {
    let seconds = match (a.minutes, a.seconds) {
        (Some(m), _) => m * 60,
        (None, Some(s)) => s,
        (None, None) => 60,
    };
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000)
            .unwrap_or(1)
    });
    let applicable = a.backend.fault_kinds(a.members);
    let kinds = if a.faults.is_empty() {
        applicable
    } else if let Some(k) = a.faults.iter().find(|k| !applicable.contains(k)) {
        let names: Vec<&str> = applicable.iter().map(|k| k.name()).collect();
        return Err(format!(
            "--faults {} does not apply to {} with --members {}; these do: {}",
            k.name(),
            a.backend.name(),
            a.members,
            names.join(",")
        ));
    } else {
        a.faults
    };
    if a.candidates == 0 || a.candidates > 200 {
        return Err(format!("--candidates {} must be 1..=200", a.candidates));
    }
    if a.permits == 0 || a.permits > 16 {
        return Err(format!("--permits {} must be 1..=16", a.permits));
    }
    if a.permits > 1 && a.backend == Backend::Gcs {
        return Err(format!(
            "--permits {}: Cloud Storage has no counting semaphore (one holder per object); use etcd or zookeeper",
            a.permits
        ));
    }
    Ok(RunConfig {
        backend: a.backend,
        members: a.members,
        candidates: a.candidates,
        seed,
        duration: Duration::from_secs(seconds),
        ttl: Duration::from_millis(a.ttl_ms),
        grace: Duration::from_millis(a.grace_ms),
        slack: Duration::from_millis(a.slack_ms),
        deposed: a.deposed_ms.map(Duration::from_millis).unwrap_or_else(|| {
            a.backend
                .hand_deletion_notice(Duration::from_millis(a.ttl_ms))
                .unwrap_or(Duration::from_millis(250))
        }),
        kinds,
        cli: default_cli(a.cli)?,
        log_dir: PathBuf::new(),
        unsafe_no_deadline: a.unsafe_no_deadline,
        permits: a.permits,
    })
}

/// The quick mode's runs: fixed seeds, a 3-member etcd cluster, a 3-member
/// ZooKeeper ensemble, Cloud Storage, PostgreSQL and MariaDB, 20 to 60 s of
/// faults each; the runner always finishes the first round, so every fault
/// kind (ten on etcd and ZooKeeper, with release-lost and delete-leader;
/// seven on the SQL stores) runs at least once. Then semaphore mode (`run -n
/// 2`, four candidates) on etcd and ZooKeeper, one round of the faults that
/// hit a holder (the store-wide ones are the election runs' and the soak's),
/// to keep quick mode quick.
fn quick(cli: Option<PathBuf>) -> Result<Vec<RunConfig>, String> {
    // (store, members, seed, seconds, permits)
    let runs = [
        (Backend::Etcd, 3, 11, 60, 1),
        (Backend::Zookeeper, 3, 12, 60, 1),
        (Backend::Gcs, 1, 13, 45, 1),
        // One round of their seven kinds takes about 40 s.
        (Backend::Postgres, 1, 14, 20, 1),
        (Backend::Mysql, 1, 15, 20, 1),
        (Backend::Etcd, 3, 21, 20, 2),
        (Backend::Zookeeper, 3, 22, 20, 2),
    ];
    let cli = default_cli(cli)?;
    runs.into_iter()
        .map(|(backend, members, seed, seconds, permits)| {
            config(SoakArgs {
                backend,
                members,
                candidates: if permits > 1 { 4 } else { 3 },
                seed: Some(seed),
                minutes: None,
                seconds: Some(seconds),
                ttl_ms: 4000,
                grace_ms: 300,
                slack_ms: 6000,
                deposed_ms: None,
                faults: Vec::new(),
                cli: Some(cli.clone()),
                unsafe_no_deadline: false,
                permits,
            })
            .map(|mut c| {
                if permits > 1 {
                    c.kinds.retain(|k| {
                        matches!(
                            k,
                            FaultKind::KillLeader
                                | FaultKind::PauseLeader
                                | FaultKind::CutLeader
                                | FaultKind::DropLeaderOut
                                | FaultKind::DeleteLeader
                                | FaultKind::ReleaseLost
                        )
                    });
                }
                c
            })
        })
        .collect()
}

async fn run_all(configs: Vec<RunConfig>) -> ExitCode {
    let mut reports = Vec::new();
    let mut failed = false;
    for mut cfg in configs {
        let dir = std::env::temp_dir().join(format!(
            "leasehold-chaos-{}-{:?}-{}",
            std::process::id(),
            cfg.backend,
            cfg.seed
        ));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("chaos: cannot create {}: {e}", dir.display());
            return ExitCode::from(2);
        }
        cfg.log_dir = dir.clone();
        let kinds: Vec<&str> = cfg.kinds.iter().map(|k| k.name()).collect();
        eprintln!(
            "chaos: {:?} x{}{} seed {} for {}s, ttl {:?}, recovery bound ttl + {:?} (replay: chaos soak --backend {} --members {} --candidates {} --permits {} --seed {} --seconds {} --faults {})",
            cfg.backend,
            cfg.members,
            if cfg.permits > 1 {
                format!(" semaphore -n {}", cfg.permits)
            } else {
                String::new()
            },
            cfg.seed,
            cfg.duration.as_secs(),
            cfg.ttl,
            cfg.slack,
            cfg.backend.name(),
            cfg.members,
            cfg.candidates,
            cfg.permits,
            cfg.seed,
            cfg.duration.as_secs(),
            kinds.join(",")
        );
        match runner::run(&cfg).await {
            Ok(report) => {
                if report.violations.is_empty() {
                    let _ = std::fs::remove_dir_all(&dir);
                } else {
                    failed = true;
                    eprintln!("chaos: candidate logs kept in {}", dir.display());
                }
                reports.push(report);
            }
            Err(e) => {
                eprintln!(
                    "chaos: the {:?} run failed: {e} (candidate logs in {})",
                    cfg.backend,
                    dir.display()
                );
                println!("{}", checker::table(&reports));
                return ExitCode::from(2);
            }
        }
    }
    println!("{}", checker::table(&reports));
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let configs = match cli.command {
        Cmd::Worker {
            register,
            period_ms,
            max_seconds,
        } => {
            return match register::worker(
                register,
                Duration::from_millis(period_ms.max(1)),
                Duration::from_secs(max_seconds),
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("chaos worker: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Cmd::Candidate {
            store,
            side,
            register,
            grace_ms,
            permits,
        } => {
            // Its logs (RUST_LOG, from CHAOS_RUST_LOG) go to stderr, which
            // the runner keeps as the candidate's log.
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_writer(std::io::stderr)
                .init();
            let args = candidate::CandidateArgs {
                store,
                side,
                register,
                grace: Duration::from_millis(grace_ms),
                permits,
            };
            return match candidate::main(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("chaos candidate: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Cmd::Churn {
            backend,
            endpoints,
            election,
            period_ms,
            max_seconds,
        } => {
            let args = churn::ChurnArgs {
                backend,
                endpoints,
                election,
                period: Duration::from_millis(period_ms.max(1)),
                max_life: Duration::from_secs(max_seconds.min(3600)),
            };
            return match churn::main(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("chaos churn: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Cmd::Quick { cli } => quick(cli),
        Cmd::Soak(a) => config(a).map(|c| vec![c]),
    };
    let configs = match configs {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaos: cannot start tokio: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async {
        // On SIGINT / SIGTERM drop the run: its guards delete the
        // namespaces and stop the stores and candidates.
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("chaos: cannot listen for SIGTERM: {e}");
                return ExitCode::from(2);
            }
        };
        tokio::select! {
            code = run_all(configs) => code,
            _ = tokio::signal::ctrl_c() => { eprintln!("chaos: interrupted; cleaning up"); ExitCode::from(130) }
            _ = term.recv() => { eprintln!("chaos: terminated; cleaning up"); ExitCode::from(143) }
        }
    })
}
