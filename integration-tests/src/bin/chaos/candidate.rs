//! `chaos candidate`: a candidate process whose session is shared by two
//! electors, for the `release-lost` fault.
//!
//! `leasehold run` holds one elector, so its session (etcd lease, ZooKeeper
//! session) ends with its one term's claim. A service that holds several
//! locks builds them from one [`leasehold::Store`]: electors on one backend
//! instance share one etcd lease / one ZooKeeper session, which outlives a
//! release that failed, as long as another elector keeps it alive. This
//! candidate is that service: it holds a side election of its own for its
//! whole life (keeping the shared session renewed) and campaigns for the
//! chaos election with a second elector on the same store, running
//! `chaos worker` as its term's work, exactly as `leasehold run --forever`
//! would: the same JSON event lines on stdout (`elected` with the worker's
//! pid and token, `lost`, `exited`), the worker SIGKILLed when the store says
//! the lease is gone, or `grace` before the local deadline when renewals
//! fail, and the claim released only once the worker is gone.
//!
//! Signals: SIGTERM / SIGINT stop it (worker killed, claim released).
//! SIGUSR1 asks it to hand over: it kills its worker (`exited`), waits for
//! the next renewal of the shared session (so the session's deadline is as
//! far as it gets), prints `handover_ready`, waits for SIGUSR2 (at most 5 s;
//! the runner cuts its link in between), prints `releasing`, unlocks, and
//! prints `released` or `release_failed`. Then it campaigns again, as
//! `Elector::run` and `leasehold run --forever` do after a term.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use leasehold::{CancellationToken, Elector, Leadership, Permit, Semaphore};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep, sleep_until, timeout};

use crate::register::mono_ns;

/// What `chaos candidate` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct CandidateArgs {
    /// The store URL with the chaos election, `id` and `ttl`.
    pub(crate) store: String,
    /// The side election this candidate holds for its whole life.
    pub(crate) side: String,
    /// The register its worker writes to.
    pub(crate) register: SocketAddr,
    /// Stop the worker this long before the local deadline when renewals fail.
    pub(crate) grace: Duration,
    /// Above 1: hold one of this many permits (a semaphore, as `leasehold
    /// run -n N`) instead of leading.
    pub(crate) permits: u32,
}

fn emit(event: serde_json::Value) {
    // One line each, stamped on this machine's monotonic clock (`mono`), so
    // the logs line up with the runner's.
    let mut event = event;
    if let Some(map) = event.as_object_mut() {
        map.insert("mono".into(), json!(mono_ns()));
    }
    println!("{event}");
}

/// Why a term is ending.
enum Ending {
    Lost(leasehold::LossReason),
    SteppingDown,
    Exited,
    Signalled,
    HandOver,
}

fn spawn_worker(register: SocketAddr, token: u64) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["worker", "--register", &register.to_string()])
        .env("LEASEHOLD_TOKEN", token.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    // Spawned from the runtime's only thread (current-thread runtime on the
    // main thread), which lives as long as this process: the parent-death
    // signal then fires exactly when this process dies.
    crate::runner::with_parent_death_signal(&mut cmd);
    cmd.spawn()
        .map_err(|e| format!("cannot start the worker: {e}"))
}

/// SIGKILLs the worker and reaps it (bounded).
async fn stop_worker(worker: &mut Child) {
    if let Some(pid) = worker.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    let _ = timeout(Duration::from_secs(5), worker.wait()).await;
}

/// Holds `side` for as long as this process lives (campaigning again after
/// each loss), so the shared session stays renewed.
async fn hold_side(side: Elector) {
    let retry = side.options().retry_interval;
    // Bounded by the process's life; the count bounds a store that keeps
    // failing at once.
    for _ in 0..100_000 {
        match side.lock().await {
            Ok(l) => {
                emit(json!({"event": "side", "token": l.fencing_token().get()}));
                let reason = l.lost().await;
                emit(json!({"event": "side_lost", "reason": reason.to_string()}));
            }
            Err(e) => eprintln!("chaos candidate: the side election failed: {e}"),
        }
        sleep(retry).await;
    }
}

/// Runs the candidate until SIGTERM / SIGINT.
pub(crate) fn main(args: CandidateArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start tokio: {e}"))?;
    runtime.block_on(run(args))
}

async fn run(a: CandidateArgs) -> Result<(), String> {
    // The handlers go in first: SIGUSR1's default action would kill us.
    let sig = |k: SignalKind| signal(k).map_err(|e| format!("cannot listen for a signal: {e}"));
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut usr1 = sig(SignalKind::user_defined1())?;
    let mut usr2 = sig(SignalKind::user_defined2())?;
    let store = leasehold::Store::connect(&a.store)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", a.store))?;
    let main = store
        .elector(&store.defaults().election)
        .map_err(|e| e.to_string())?;
    let side = store.elector(&a.side).map_err(|e| e.to_string())?;
    // Semaphore mode: a permit of the same name, on the same backend
    // instance (so in the same shared session as the side election).
    let semaphore = if a.permits > 1 {
        Some(
            Semaphore::new(main.backend().clone(), main.options().clone(), a.permits)
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    let id = main.options().candidate_id.clone();
    let retry = main.options().retry_interval;
    let renew = main.options().renew_interval;
    tokio::spawn(hold_side(side));
    let shutdown = CancellationToken::new();
    // Bounded by the runner, which stops this process by its pid; the count
    // backs that up.
    for _ in 0..100_000 {
        // A hand-over request left from a term that ended meanwhile is
        // not for the next one. (`timeout` polls the future once first.)
        let _ = timeout(Duration::ZERO, usr1.recv()).await;
        let got = {
            // On SIGTERM / SIGINT the campaign is cancelled and awaited, so
            // the queued claim is withdrawn before this process exits.
            let campaign = async {
                match &semaphore {
                    Some(s) => s
                        .acquire_cancellable(&shutdown)
                        .await
                        .map(|p| p.map(Permit::into_leadership)),
                    None => main.lock_cancellable(&shutdown).await,
                }
            };
            tokio::pin!(campaign);
            loop {
                tokio::select! {
                    got = &mut campaign => break got,
                    _ = term.recv() => shutdown.cancel(),
                    _ = int.recv() => shutdown.cancel(),
                }
            }
        };
        let l: Leadership = match got {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("campaign failed: {e}")),
        };
        let token = l.fencing_token().get();
        let mut worker = match spawn_worker(a.register, token) {
            Ok(w) => w,
            Err(e) => {
                let _ = l.unlock().await;
                return Err(e);
            }
        };
        emit(json!({"event": "elected", "id": id, "token": token, "pid": worker.id()}));
        let ending = loop {
            let warn_at = l.deadline() - a.grace;
            tokio::select! {
                r = l.lost() => break Ending::Lost(r),
                _ = worker.wait() => break Ending::Exited,
                _ = term.recv() => break Ending::Signalled,
                _ = int.recv() => break Ending::Signalled,
                _ = usr1.recv() => break Ending::HandOver,
                _ = sleep_until(warn_at) => {
                    if l.deadline() - a.grace > Instant::now() {
                        continue; // renewed meanwhile
                    }
                    break Ending::SteppingDown;
                }
            }
        };
        stop_worker(&mut worker).await;
        match ending {
            Ending::Lost(r) => {
                emit(json!({"event": "lost", "reason": r.to_string()}));
            }
            Ending::SteppingDown => {
                emit(json!({"event": "stepping_down"}));
                let r = timeout(a.grace + Duration::from_millis(200), l.lost()).await;
                let reason = r
                    .map(|r| r.to_string())
                    .unwrap_or_else(|_| "stepped down".into());
                emit(json!({"event": "lost", "reason": reason}));
            }
            Ending::Exited | Ending::Signalled => {
                emit(json!({"event": "exited", "token": token}));
                if let Err(e) = l.unlock().await {
                    eprintln!("chaos candidate: release failed: {e}");
                }
                if matches!(ending, Ending::Signalled) {
                    return Ok(());
                }
            }
            Ending::HandOver => {
                emit(json!({"event": "exited", "token": token}));
                // Right after a renewal of the shared session: its deadline
                // is then as far as it gets, so a link cut now heals before
                // the session could be given up.
                let before = l.deadline();
                let wait_until = Instant::now() + renew * 2;
                while l.deadline() == before && !l.is_lost() && Instant::now() < wait_until {
                    sleep(Duration::from_millis(5)).await;
                }
                let _ = timeout(Duration::ZERO, usr2.recv()).await;
                emit(json!({"event": "handover_ready"}));
                let _ = timeout(Duration::from_secs(5), usr2.recv()).await;
                emit(json!({"event": "releasing"}));
                match l.unlock().await {
                    Ok(()) => emit(json!({"event": "released", "token": token})),
                    Err(e) => emit(
                        json!({"event": "release_failed", "token": token, "error": e.to_string()}),
                    ),
                }
            }
        }
        tokio::select! {
            _ = sleep(retry) => {}
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
    Ok(())
}
