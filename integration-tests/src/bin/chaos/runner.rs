//! One chaos run: a store, N `leasehold run --forever` candidates in their
//! own network namespaces, the register, a seeded fault schedule, then the
//! checker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use leasehold_integration_tests::unique_name;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use crate::checker::{self, Deletion, Ev, Event, Fault, Limits, Report};
use crate::net::{HUB_REGISTER_IP, HUB_STORE_IP, Net, sweep_leftovers};
use crate::register::{Forwarder, Register, mono_ns};
use crate::stores::{Backend, ChaosStore};

/// The kinds of fault the runner injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FaultKind {
    /// SIGKILL the leader's supervisor (`leasehold run`).
    KillLeader,
    /// SIGSTOP the leader's supervisor and worker for longer than the ttl.
    PauseLeader,
    /// Take the leader's store link down (both directions).
    CutLeader,
    /// Drop what the leader sends to the store (it still hears the store).
    DropLeaderOut,
    /// Drop what the store sends to the leader (the leader's requests arrive).
    DropLeaderIn,
    /// Kill every store member, then start them again.
    RestartStore,
    /// Kill one member of a cluster / ensemble, restart it later.
    KillMember,
    /// Cut one cluster / ensemble member from its peers; its clients still
    /// reach it.
    IsolateMember,
    /// Delete the election's record by hand (Cloud Storage's lease object,
    /// a SQL store's lease row).
    DeleteLease,
    /// A release whose answer is lost: the leader (a `chaos candidate`,
    /// whose session another elector of its process keeps alive) unlocks
    /// while its store link drops what it sends (the delete never lands) or
    /// what it receives (the answer never arrives); once the unlock has
    /// failed its connections are reset and the link heals, before the
    /// shared session's deadline (etcd, ZooKeeper).
    ReleaseLost,
    /// While a churn client creates and deletes claims in the election's
    /// line every few ms, delete the leader's key / node by hand, twice
    /// (etcd, ZooKeeper).
    DeleteLeader,
}

impl FaultKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::CutLeader => "cut-leader",
            FaultKind::DropLeaderOut => "drop-leader-out",
            FaultKind::DropLeaderIn => "drop-leader-in",
            FaultKind::RestartStore => "restart-store",
            FaultKind::KillMember => "kill-member",
            FaultKind::IsolateMember => "isolate-member",
            FaultKind::DeleteLease => "delete-lease",
            FaultKind::ReleaseLost => "release-lost",
            FaultKind::DeleteLeader => "delete-leader",
        }
    }
}

/// One run's settings.
#[derive(Debug, Clone)]
pub(crate) struct RunConfig {
    pub(crate) backend: Backend,
    pub(crate) members: usize,
    pub(crate) candidates: usize,
    pub(crate) seed: u64,
    pub(crate) duration: Duration,
    pub(crate) ttl: Duration,
    pub(crate) grace: Duration,
    pub(crate) slack: Duration,
    /// A leader whose claim is deleted by hand must stop within this.
    pub(crate) deposed: Duration,
    pub(crate) kinds: Vec<FaultKind>,
    pub(crate) cli: PathBuf,
    pub(crate) log_dir: PathBuf,
    /// Set LEASEHOLD_UNSAFE_NO_DEADLINE for the candidates (a CLI built with
    /// `--cfg leasehold_unsafe_no_deadline` then never steps down on its own).
    pub(crate) unsafe_no_deadline: bool,
    /// Semaphore mode when above 1: the candidates hold one of this many
    /// permits (`leasehold run -n N`) and the register and checker allow
    /// this many writers at once.
    pub(crate) permits: u32,
}

/// A running candidate (through `nsenter --net`): `leasehold run --forever`,
/// or, in the shared slot, `chaos candidate` (two electors on one session).
struct Candidate {
    slot: usize,
    generation: usize,
    child: Child,
    pid: u32,
    shared: bool,
}

/// A line of a candidate that is no term event (`handover_ready`,
/// `release_failed`, ...), stamped on arrival.
#[derive(Debug, Clone)]
struct Note {
    sup: u32,
    event: String,
    t: u64,
}

/// The shared history the reader tasks append to.
#[derive(Default)]
struct History {
    events: Vec<Event>,
    /// Supervisor pid -> (its current token, its worker's pid).
    terms: HashMap<u32, (u64, Option<u32>)>,
    /// Supervisor pids whose term is live (elected, not yet lost/exited/killed).
    leading: Vec<u32>,
    /// Every worker an elected line named.
    workers: Vec<WorkerProc>,
    /// The candidates' other lines.
    notes: Vec<Note>,
}

/// A worker process as first seen: pids get reused (pid_max is 32768 here,
/// and parallel runs start workers too), so the kernel's start time of the
/// process tells this worker from a later process with the same pid.
#[derive(Debug, Clone, Copy)]
struct WorkerProc {
    pid: u32,
    token: u64,
    /// `starttime` from /proc/PID/stat when the elected line arrived; `None`
    /// if the worker was already gone.
    start: Option<u64>,
}

type Shared = Arc<Mutex<History>>;

fn lock(h: &Shared) -> std::sync::MutexGuard<'_, History> {
    h.lock().unwrap_or_else(PoisonError::into_inner)
}

fn record(h: &Shared, sup: u32, ev: Ev) {
    let mut h = lock(h);
    let t = mono_ns();
    match ev {
        Ev::Elected { token, worker } => {
            h.terms.insert(sup, (token, worker));
            h.leading.retain(|p| *p != sup);
            h.leading.push(sup);
            if let Some(pid) = worker {
                h.workers.push(WorkerProc {
                    pid,
                    token,
                    start: proc_start_time(pid),
                });
            }
        }
        Ev::Lost | Ev::Exited | Ev::Killed => h.leading.retain(|p| *p != sup),
        Ev::Stopped | Ev::Continued => {}
    }
    h.events.push(Event { t, sup, ev });
}

/// Spawns `program` with SIGKILL as its parent-death signal, so a runner
/// killed without running destructors takes its candidates with it.
#[allow(unsafe_code)]
pub(crate) fn with_parent_death_signal(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only makes
    // the prctl(2) system call, which is async-signal-safe; it allocates
    // nothing and touches no lock or state shared with the parent.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

struct Run<'a> {
    cfg: &'a RunConfig,
    net: &'a Net,
    url: String,
    register: SocketAddr,
    history: Shared,
    candidates: Vec<Candidate>,
    chaos: PathBuf,
    /// The slot whose candidate is a `chaos candidate` (shared session).
    shared_slot: Option<usize>,
    /// The election's name, and the store's addresses as seen from the hub.
    election: String,
    hosts: Vec<String>,
    /// The leaders' claims deleted by hand.
    deletions: Vec<Deletion>,
    /// How many `release-lost` faults were injected (they alternate between
    /// a lost request and a lost answer).
    releases_lost: usize,
}

impl Run<'_> {
    /// Wait (at most about 120 s) until the ZooKeeper ensemble serves: its
    /// JVMs start just before the candidates, and on a loaded machine they
    /// may not form a quorum within a first session's timeout (the ttl),
    /// after which a candidate exits. Probed with `leasehold leader` from a
    /// candidate's namespace: exit 0 (a leader) or 1 (none) means served.
    async fn wait_for_zookeeper(&self) -> Result<(), String> {
        let began = Instant::now();
        for _ in 0..120 {
            let sep = if self.url.contains('?') { '&' } else { '?' };
            let url = format!("{}{sep}ttl={}ms", self.url, self.cfg.ttl.as_millis());
            let mut cmd = Command::from(crate::net::in_netns(self.net.candidate_ns(0)));
            cmd.arg(&self.cfg.cli)
                .args(["--store", &url, "leader"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            let status = tokio::time::timeout(Duration::from_secs(30), cmd.status()).await;
            if let Ok(Ok(s)) = status
                && matches!(s.code(), Some(0 | 1))
            {
                eprintln!("chaos: the ensemble serves after {:.1?}", began.elapsed());
                return Ok(());
            }
            if began.elapsed() > Duration::from_secs(120) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(format!(
            "the ZooKeeper ensemble did not serve within {:.0?} of its start",
            began.elapsed()
        ))
    }

    fn spawn(&self, slot: usize, generation: usize) -> Result<Candidate, String> {
        let cfg = self.cfg;
        let stderr_path = cfg
            .log_dir
            .join(format!("candidate-{slot}-{generation}.log"));
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| format!("cannot create {}: {e}", stderr_path.display()))?;
        let mut cmd = Command::from(crate::net::in_netns(self.net.candidate_ns(slot)));
        let id = format!("c{slot}-{generation}");
        let shared = self.shared_slot == Some(slot);
        if shared {
            // The same store, election, id and ttl as the CLI gets, in the URL.
            let sep = if self.url.contains('?') { '&' } else { '?' };
            let url = format!("{}{sep}id={id}&ttl={}ms", self.url, cfg.ttl.as_millis());
            cmd.arg(&self.chaos)
                .args(["candidate", "--store", &url])
                .args(["--side", &format!("{}-side-{id}", self.election)])
                .args(["--register", &self.register.to_string()])
                .args(["--grace-ms", &cfg.grace.as_millis().to_string()])
                .args(["--permits", &cfg.permits.to_string()]);
        } else {
            cmd.arg(&cfg.cli)
                .args(["--store", &self.url, "run"])
                .args(["--id", &id])
                .args(["--ttl", &format!("{}ms", cfg.ttl.as_millis())])
                .args(["--grace", &format!("{}ms", cfg.grace.as_millis())])
                .arg("--forever");
            if cfg.permits > 1 {
                cmd.args(["-n", &cfg.permits.to_string()]);
            }
            cmd.arg("--").arg(&self.chaos).args([
                "worker",
                "--register",
                &self.register.to_string(),
            ]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            // CHAOS_RUST_LOG, when set, is the candidates' RUST_LOG (their
            // logs are kept when a run finds a violation).
            .env(
                "RUST_LOG",
                std::env::var("CHAOS_RUST_LOG")
                    .unwrap_or_else(|_| "leasehold=info,leasehold_core=info".to_owned()),
            )
            .kill_on_drop(true);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("LEASEHOLD_") {
                cmd.env_remove(k);
            }
        }
        if cfg.unsafe_no_deadline {
            cmd.env("LEASEHOLD_UNSAFE_NO_DEADLINE", "1");
        }
        with_parent_death_signal(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", cfg.cli.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| "the candidate exited at once".to_owned())?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| "no stdout pipe".to_owned())?;
        let history = self.history.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let ev = match v.get("event").and_then(|e| e.as_str()) {
                    Some("elected") => Ev::Elected {
                        token: v.get("token").and_then(|t| t.as_u64()).unwrap_or(0),
                        worker: v.get("pid").and_then(|p| p.as_u64()).map(|p| p as u32),
                    },
                    Some("lost") => Ev::Lost,
                    Some("exited") => Ev::Exited,
                    Some(other) => {
                        let note = Note {
                            sup: pid,
                            event: other.to_owned(),
                            t: mono_ns(),
                        };
                        lock(&history).notes.push(note);
                        continue;
                    }
                    None => continue,
                };
                record(&history, pid, ev);
            }
        });
        Ok(Candidate {
            slot,
            generation,
            child,
            pid,
            shared,
        })
    }

    /// A fresh candidate in candidate `i`'s slot (the old one is reaped in
    /// the background).
    fn replace(&mut self, i: usize) -> Result<(), String> {
        let generation = self.candidates[i].generation + 1;
        let slot = self.candidates[i].slot;
        let fresh = self.spawn(slot, generation)?;
        let mut old = std::mem::replace(&mut self.candidates[i], fresh);
        tokio::spawn(async move {
            let _ = old.child.wait().await;
        });
        Ok(())
    }

    /// The leader, once it is another supervisor than `old` (waiting up to
    /// `wait`).
    async fn leader_other_than(
        &self,
        old: u32,
        wait: Duration,
    ) -> Option<(usize, u32, Option<u32>)> {
        let end = Instant::now() + wait;
        // Bounded by `wait`.
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.leader(left).await {
                Some(l) if l.1 != old => return Some(l),
                _ if Instant::now() >= end => return None,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// The first of `events` that supervisor `sup` printed after `since`,
    /// waiting up to `wait`.
    async fn note(&self, sup: u32, events: &[&str], since: u64, wait: Duration) -> Option<Note> {
        let end = Instant::now() + wait;
        // Bounded by `wait`.
        loop {
            let found = lock(&self.history)
                .notes
                .iter()
                .find(|n| n.sup == sup && n.t >= since && events.contains(&n.event.as_str()))
                .cloned();
            if found.is_some() || Instant::now() >= end {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Brings the lead to the shared candidate: while a `leasehold run`
    /// candidate leads, SIGTERM it (it stops its worker and releases) and
    /// start a fresh one in its slot, at the back of the line. Returns the
    /// shared candidate's index and pid once it leads.
    async fn lead_to_shared(&mut self) -> Result<Option<(usize, u32)>, String> {
        let ttl = self.cfg.ttl;
        // Each hand-over moves the lead one place down the line.
        for _ in 0..=self.candidates.len() {
            let Some((i, sup, _)) = self.leader(ttl * 3).await else {
                return Ok(None);
            };
            if self.candidates[i].shared {
                return Ok(Some((i, sup)));
            }
            let _ = kill(Pid::from_raw(sup as i32), Signal::SIGTERM);
            if tokio::time::timeout(Duration::from_secs(5), self.candidates[i].child.wait())
                .await
                .is_err()
            {
                let _ = self.candidates[i].child.start_kill();
            }
            self.replace(i)?;
            if self.leader_other_than(sup, ttl * 3).await.is_none() {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Starts `chaos churn` in the hub namespace and waits for it to connect.
    async fn start_churn(&self) -> Result<Churn, String> {
        let backend = self.cfg.backend.name();
        let log = self.cfg.log_dir.join(format!("churn-{}.log", mono_ns()));
        let stderr = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut cmd = Command::from(crate::net::in_netns(self.net.hub_ns()));
        cmd.arg(&self.chaos)
            .args(["churn", "--backend", backend])
            .args(["--endpoints", &self.hosts.join(",")])
            .args(["--election", &self.election])
            .args(["--period-ms", "3", "--max-seconds", "60"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        with_parent_death_signal(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the churn client: {e}"))?;
        let stdin = child
            .stdin
            .take()
            .ok_or("no stdin pipe to the churn client")?;
        let stdout = child
            .stdout
            .take()
            .ok_or("no stdout pipe from the churn client")?;
        let mut churn = Churn {
            child,
            stdin: Some(stdin),
            lines: tokio::io::BufReader::new(stdout).lines(),
        };
        match churn.next(Duration::from_secs(30)).await {
            Some(v) if v.get("event").and_then(|e| e.as_str()) == Some("ready") => Ok(churn),
            other => {
                churn.stop().await;
                Err(format!(
                    "the churn client did not connect ({other:?}); its log: {}",
                    log.display()
                ))
            }
        }
    }

    /// The leading candidate's index, waiting up to `wait` for one.
    async fn leader(&self, wait: Duration) -> Option<(usize, u32, Option<u32>)> {
        let end = Instant::now() + wait;
        loop {
            {
                let h = lock(&self.history);
                if let Some(sup) = h.leading.last()
                    && let Some(i) = self.candidates.iter().position(|c| c.pid == *sup)
                {
                    let worker = h.terms.get(sup).and_then(|(_, w)| *w);
                    return Some((i, *sup, worker));
                }
            }
            if Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn inject(
        &mut self,
        kind: FaultKind,
        store: &dyn ChaosStore,
        rng: &mut fastrand::Rng,
        members: usize,
    ) -> Result<Option<Fault>, String> {
        let ttl = self.cfg.ttl;
        let start = mono_ns();
        let needs_leader = matches!(
            kind,
            FaultKind::KillLeader
                | FaultKind::PauseLeader
                | FaultKind::CutLeader
                | FaultKind::DropLeaderOut
                | FaultKind::DropLeaderIn
        );
        let leader = if needs_leader {
            match self.leader(ttl * 3).await {
                Some(l) => Some(l),
                None => return Ok(None),
            }
        } else {
            None
        };
        let hold = ttl * 2 + Duration::from_millis(rng.u64(0..1000));
        match (kind, leader) {
            (FaultKind::KillLeader, Some((i, sup, _))) => {
                let _ = kill(Pid::from_raw(sup as i32), Signal::SIGKILL);
                record(&self.history, sup, Ev::Killed);
                let heal = mono_ns();
                self.replace(i)?;
                return Ok(Some(Fault {
                    kind: kind.name(),
                    start,
                    heal,
                }));
            }
            (FaultKind::PauseLeader, Some((_, sup, worker))) => {
                let pids: Vec<Pid> = [Some(sup), worker]
                    .into_iter()
                    .flatten()
                    .map(|p| Pid::from_raw(p as i32))
                    .collect();
                for p in &pids {
                    let _ = kill(*p, Signal::SIGSTOP);
                }
                record(&self.history, sup, Ev::Stopped);
                tokio::time::sleep(ttl + Duration::from_millis(500 + rng.u64(0..1500))).await;
                record(&self.history, sup, Ev::Continued);
                for p in pids.iter().rev() {
                    let _ = kill(*p, Signal::SIGCONT);
                }
            }
            (FaultKind::CutLeader, Some((i, _, _))) => {
                self.net.cut(i)?;
                tokio::time::sleep(hold).await;
                self.net.uncut(i)?;
            }
            (FaultKind::DropLeaderOut, Some((i, _, _))) => {
                self.net.drop_outgoing(i)?;
                tokio::time::sleep(hold).await;
                self.net.undrop_outgoing(i)?;
            }
            (FaultKind::DropLeaderIn, Some((i, _, _))) => {
                self.net.drop_incoming(i)?;
                tokio::time::sleep(hold).await;
                self.net.undrop_incoming(i)?;
            }
            (FaultKind::RestartStore, _) => {
                store.kill(None);
                tokio::time::sleep(Duration::from_millis(200 + rng.u64(0..800))).await;
                store.restart_stopped().await?;
            }
            (FaultKind::IsolateMember, _) => {
                let n = store.isolatable_members();
                if n == 0 {
                    return Ok(None);
                }
                let k = rng.usize(0..n);
                self.net.isolate_member(k)?;
                tokio::time::sleep(hold).await;
                self.net.rejoin_member(k)?;
            }
            (FaultKind::KillMember, _) => {
                store.kill(Some(rng.usize(0..members)));
                tokio::time::sleep(hold).await;
                store.restart_stopped().await?;
            }
            (FaultKind::DeleteLease, _) => {
                let notice = self.cfg.backend.hand_deletion_notice(ttl);
                let mut deposed = None;
                if notice.is_some() {
                    // Past a ttl after the last fault's heal, the deposed
                    // leader is held to the store's notice bound rather
                    // than its own deadline (the checker's `notice`).
                    tokio::time::sleep(ttl + Duration::from_millis(200 + rng.u64(0..500))).await;
                    let Some((_, sup, _)) = self.leader(ttl * 3).await else {
                        return Ok(None);
                    };
                    deposed = Some(sup);
                }
                let at = mono_ns();
                let token = store.delete_lease(&self.election).await?;
                // Where the store's waiters may take the missing record at
                // once, the deposed leader is held to the store's notice
                // bound (the checker's `deposed` count).
                if let (Some(token), Some(bound)) = (token, notice) {
                    self.deletions.push(Deletion { at, token });
                    // The fault lasts until the deposed leader has learned
                    // it (its term ended) or its bound has passed: a next
                    // fault (a store restart) must not keep it from hearing.
                    let end = Instant::now() + bound + Duration::from_millis(500);
                    while let Some(sup) = deposed
                        && lock(&self.history).leading.contains(&sup)
                        && Instant::now() < end
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                eprintln!(
                    "chaos:          delete-lease: {}",
                    token.map_or_else(|| "deleted".to_owned(), |t| format!("deleted token {t}"))
                );
                return Ok(Some(Fault {
                    kind: kind.name(),
                    start: at,
                    heal: mono_ns(),
                }));
            }
            (FaultKind::ReleaseLost, _) => {
                let Some((i, sup)) = self.lead_to_shared().await? else {
                    return Ok(None);
                };
                // The candidate hands over right after its session's next
                // renewal: the link drops between that and its unlock.
                let asked = mono_ns();
                let _ = kill(Pid::from_raw(sup as i32), Signal::SIGUSR1);
                if self
                    .note(sup, &["handover_ready"], asked, ttl * 2)
                    .await
                    .is_none()
                {
                    return Ok(None);
                }
                let request_lost = self.releases_lost.is_multiple_of(2);
                self.releases_lost += 1;
                let start = mono_ns();
                if request_lost {
                    self.net.drop_outgoing(i)?;
                } else {
                    self.net.drop_incoming(i)?;
                }
                let _ = kill(Pid::from_raw(sup as i32), Signal::SIGUSR2);
                // The unlock is bounded by the request timeout (ttl / 3 by
                // default); wait a little longer, but heal within the ttl.
                let outcome = self
                    .note(sup, &["release_failed", "released"], start, ttl / 2)
                    .await;
                let reset = self.net.reset_store_connections(i);
                if request_lost {
                    self.net.undrop_outgoing(i)?;
                } else {
                    self.net.undrop_incoming(i)?;
                }
                reset?;
                eprintln!(
                    "chaos:          release-lost: the {} was dropped; the leader's unlock: {}",
                    if request_lost { "request" } else { "answer" },
                    outcome
                        .map(|n| n.event)
                        .unwrap_or_else(|| "still waiting".into())
                );
                return Ok(Some(Fault {
                    kind: kind.name(),
                    start,
                    heal: mono_ns(),
                }));
            }
            (FaultKind::DeleteLeader, _) => {
                if self.leader(ttl * 3).await.is_none() {
                    return Ok(None);
                }
                let mut churn = self.start_churn().await?;
                let mut first = None;
                let mut last = start;
                let mut found = Vec::new();
                for _ in 0..2 {
                    tokio::time::sleep(Duration::from_millis(300 + rng.u64(0..500))).await;
                    let Some((_, sup, _)) = self.leader(ttl * 3).await else {
                        break;
                    };
                    let Some(answer) = churn.delete_leader().await else {
                        break;
                    };
                    found.push(answer.to_string());
                    if let (Some(token), Some(at)) = (
                        answer.get("token").and_then(|t| t.as_u64()),
                        answer.get("sent").and_then(|t| t.as_u64()),
                    ) {
                        self.deletions.push(Deletion { at, token });
                        first.get_or_insert(at);
                        last = at;
                    }
                    // Under churn until the next leader leads, and a while.
                    let _ = self.leader_other_than(sup, ttl * 3).await;
                    tokio::time::sleep(Duration::from_millis(1300 + rng.u64(0..1000))).await;
                }
                churn.stop().await;
                eprintln!("chaos:          delete-leader: {}", found.join(" "));
                return Ok(Some(Fault {
                    kind: kind.name(),
                    start: first.unwrap_or(start),
                    heal: last,
                }));
            }
            _ => return Ok(None),
        }
        Ok(Some(Fault {
            kind: kind.name(),
            start,
            heal: mono_ns(),
        }))
    }

    /// SIGCONT everyone, SIGTERM the supervisors, SIGKILL those still there
    /// after a few seconds; then the workers still alive are orphans: report
    /// and kill them.
    async fn stop_all(&mut self) -> Vec<(u32, Option<u64>)> {
        let workers = lock(&self.history).workers.clone();
        for w in &workers {
            if is_our_worker(w) {
                let _ = kill(Pid::from_raw(w.pid as i32), Signal::SIGCONT);
            }
        }
        for c in &self.candidates {
            let _ = kill(Pid::from_raw(c.pid as i32), Signal::SIGCONT);
            let _ = kill(Pid::from_raw(c.pid as i32), Signal::SIGTERM);
        }
        for c in &mut self.candidates {
            if tokio::time::timeout(Duration::from_secs(5), c.child.wait())
                .await
                .is_err()
            {
                let _ = c.child.start_kill();
                let _ = c.child.wait().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut orphans = Vec::new();
        for w in workers {
            if is_our_worker(&w) {
                orphans.push((w.pid, Some(w.token)));
                let _ = kill(Pid::from_raw(w.pid as i32), Signal::SIGKILL);
            }
        }
        orphans
    }
}

/// A running `chaos churn` (in the hub namespace).
struct Churn {
    child: Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Churn {
    /// Its next JSON line, waiting up to `wait`.
    async fn next(&mut self, wait: Duration) -> Option<serde_json::Value> {
        let end = Instant::now() + wait;
        // Bounded by `wait`.
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    if let Ok(v) = serde_json::from_str(&line) {
                        return Some(v);
                    }
                }
                _ => return None,
            }
        }
    }

    /// Asks it to delete the leader's claim; its answer.
    async fn delete_leader(&mut self) -> Option<serde_json::Value> {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut()?;
        stdin.write_all(b"delete-leader\n").await.ok()?;
        stdin.flush().await.ok()?;
        self.next(Duration::from_secs(10)).await
    }

    /// Closes its stdin (it deletes its claim and exits); SIGKILL by pid if
    /// it is still there after 5 s.
    async fn stop(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

impl Drop for Run<'_> {
    /// On an early exit (an error, SIGINT): the supervisors die with their
    /// `Child` handles (SIGKILL), which leaves their workers running on
    /// today's CLI, so kill every worker of ours still alive first.
    fn drop(&mut self) {
        let workers = lock(&self.history).workers.clone();
        for w in workers {
            if is_our_worker(&w) {
                let _ = kill(Pid::from_raw(w.pid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// The state letter and the kernel's start time (field 22, clock ticks
/// since boot) of `pid` from /proc/PID/stat, if it runs.
fn proc_state(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: the state is field 3, so starttime (22) is the 20th of these.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// The kernel's start time of `pid`, if it runs.
fn proc_start_time(pid: u32) -> Option<u64> {
    proc_state(pid).map(|(_, start)| start)
}

/// Whether the worker `w` still runs: the same process (pid and start time;
/// pids get reused), not a zombie (dead, only not reaped yet), running
/// `chaos worker`.
fn is_our_worker(w: &WorkerProc) -> bool {
    match (w.start, proc_state(w.pid)) {
        (Some(start), Some((state, now))) if now == start && state != 'Z' => {}
        _ => return false,
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", w.pid)) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.iter().any(|a| *a == b"worker") && args.iter().any(|a| *a == b"--register")
}

/// Runs one backend under faults and checks the history.
pub(crate) async fn run(cfg: &RunConfig) -> Result<Report, String> {
    let swept = sweep_leftovers();
    if swept > 0 {
        eprintln!("chaos: deleted {swept} network namespace(s) left by earlier runs");
    }
    let in_netns = cfg.backend.in_netns(cfg.members);
    let net = Net::create(cfg.candidates, if in_netns { cfg.members } else { 0 })?;
    let store = cfg.backend.start(cfg.members, &net).await?;
    // Stores in the root namespace are reached through forwarders in the hub;
    // members in namespaces directly.
    let mut forwarders = Vec::new();
    let mut hosts: Vec<String> = Vec::new();
    for target in store.client_addrs() {
        if in_netns {
            hosts.push(target.to_string());
        } else {
            let f = Forwarder::start(net.bind_in_hub(HUB_STORE_IP)?, target)?;
            hosts.push(f.addr().to_string());
            forwarders.push(f);
        }
    }
    let register = Register::start(net.bind_in_hub(HUB_REGISTER_IP)?, cfg.permits)?;
    let election = unique_name("chaos");
    let url = store.url(&hosts, &election);
    let chaos = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    // With release-lost the last slot is a shared-session candidate.
    let shared_slot = cfg
        .kinds
        .contains(&FaultKind::ReleaseLost)
        .then(|| cfg.candidates - 1);
    let mut run = Run {
        cfg,
        net: &net,
        url,
        register: register.addr(),
        history: Shared::default(),
        candidates: Vec::new(),
        chaos,
        shared_slot,
        election: election.clone(),
        hosts: hosts.clone(),
        deletions: Vec::new(),
        releases_lost: 0,
    };
    if in_netns && cfg.backend == Backend::Zookeeper {
        run.wait_for_zookeeper().await?;
    }
    for slot in 0..cfg.candidates {
        let c = run.spawn(slot, 0)?;
        run.candidates.push(c);
    }
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let started = Instant::now();
    let limits = Limits {
        orphan_ns: (cfg.grace + Duration::from_millis(250)).as_nanos() as u64,
        resume_ns: (cfg.grace + Duration::from_millis(500)).as_nanos() as u64,
        recover_ns: (cfg.ttl + cfg.slack).as_nanos() as u64,
        deposed_ns: cfg.deposed.as_nanos() as u64,
        ttl_ns: cfg.ttl.as_nanos() as u64,
        origin: mono_ns(),
        permits: cfg.permits as usize,
    };
    let mut faults = Vec::new();
    let mut error = None;
    if run.leader(Duration::from_secs(30)).await.is_none() {
        error = Some("no candidate was elected within 30s of the start".to_owned());
    }
    // At most one fault a second: the count bound backs the time bound.
    let max_faults = cfg.duration.as_secs() as usize + 1;
    // Every kind once per round, in a seeded random order; the first round
    // is always finished, so that even a short run covers them all.
    let max_faults = max_faults.max(cfg.kinds.len());
    let mut round: Vec<FaultKind> = Vec::new();
    let mut rounds = 0usize;
    while error.is_none()
        && (started.elapsed() < cfg.duration || (rounds == 1 && !round.is_empty()))
        && faults.len() < max_faults
    {
        if round.is_empty() {
            round = cfg.kinds.clone();
            rng.shuffle(&mut round);
            rounds += 1;
        }
        let kind = round.remove(0);
        eprintln!(
            "chaos: {:>6.1}s {:?}: {}",
            started.elapsed().as_secs_f64(),
            cfg.backend,
            kind.name()
        );
        match run
            .inject(kind, store.as_ref(), &mut rng, cfg.members)
            .await
        {
            Ok(Some(f)) => {
                // Wait for the recovery (bounded), then a little calm.
                let bound = Instant::now() + cfg.ttl + cfg.slack;
                while Instant::now() < bound
                    && !register
                        .log()
                        .iter()
                        .rev()
                        .any(|w| w.accepted && w.arrival >= f.heal)
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                faults.push(f);
            }
            Ok(None) => eprintln!("chaos: no leader to hit; skipped"),
            Err(e) => error = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(300 + rng.u64(0..1200))).await;
    }
    let end = mono_ns();
    let orphans = run.stop_all().await;
    drop(forwarders);
    drop(store);
    if let Some(e) = error {
        return Err(e);
    }
    let events = lock(&run.history).events.clone();
    let mut report = checker::check(
        &register.log(),
        &events,
        &faults,
        &run.deletions,
        end,
        &orphans,
        limits,
    );
    report.backend = format!("{:?} x{}", cfg.backend, cfg.members).to_lowercase();
    if cfg.permits > 1 {
        report.backend.push_str(&format!(" -n {}", cfg.permits));
    }
    report.seed = cfg.seed;
    report.seconds = started.elapsed().as_secs();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_pid_is_not_our_worker() {
        let me = std::process::id();
        let start = proc_start_time(me).expect("my own start time");
        assert!(start > 0);
        // This test process is no `chaos worker`, whatever its start time.
        let mine = WorkerProc {
            pid: me,
            token: 1,
            start: Some(start),
        };
        assert!(!is_our_worker(&mine));
        // The same pid with another start time is another process.
        let older = WorkerProc {
            start: Some(start.saturating_sub(1)),
            ..mine
        };
        assert!(proc_start_time(older.pid) != older.start);
        assert!(!is_our_worker(&older));
    }
}
