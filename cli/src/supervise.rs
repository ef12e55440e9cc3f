//! Process supervision for `leasehold run`: the command and everything it
//! starts, as one unit that is stopped as a whole.
//!
//! * The command runs in a process group of its own (`setpgid(0, 0)`), so one
//!   `killpg` reaches its shell, its pipelines and its background jobs.
//! * leasehold is a child subreaper (`PR_SET_CHILD_SUBREAPER`): a descendant
//!   that leaves the group (a double fork, `setsid`) is reparented to
//!   leasehold instead of PID 1, so it is still found, as a descendant of
//!   leasehold in `/proc`, signalled, and reaped.
//! * The command gets `PR_SET_PDEATHSIG(SIGKILL)`: it dies with leasehold even
//!   when leasehold is killed with SIGKILL. The rest of its process group, and
//!   the groups of escaped descendants leasehold has seen, are killed by a
//!   guardian: a small `leasehold` process outside the command's group that
//!   waits on a pipe from leasehold and kills them when the pipe closes
//!   without a "done" (leasehold died).
//!
//! "The command is gone" means: no descendant of leasehold (other than the
//! guardian) is alive. Zombies count as gone: they cannot run.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::{Pid, getpid};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::{Instant, sleep, timeout};

/// How long processes may take to disappear after SIGKILL before leasehold
/// gives up on them (a process in uninterruptible sleep, e.g. on a dead NFS
/// mount, dies only when its I/O ends).
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(10);

/// How often the tree is scanned while it is being stopped.
const STOP_POLL: Duration = Duration::from_millis(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes this process a child subreaper: orphaned descendants are reparented
/// to it instead of to PID 1.
pub(crate) fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// Arranges for `cmd` to start in a process group of its own and to receive
/// SIGKILL when leasehold dies.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, so
/// this must be spawned from a thread that lives as long as leasehold: `run`
/// is awaited directly by `main` (the runtime's `block_on` thread).
#[allow(unsafe_code)]
fn own_group_and_death_signal(cmd: &mut Command) {
    cmd.process_group(0);
    let parent = getpid();
    // SAFETY: the closure runs in the forked child between fork and exec,
    // where only async-signal-safe calls are allowed. It makes two system
    // calls, prctl(PR_SET_PDEATHSIG) and getppid, both async-signal-safe; it
    // allocates nothing, takes no lock and touches no shared state
    // (`io::Error::from_raw_os_error` only stores the number).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
            // The classic race: leasehold may have died between the fork and
            // the prctl, and then the signal will never come. The child was
            // reparented, so its parent is no longer leasehold.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from_raw_os_error(Errno::ESRCH as i32));
            }
            Ok(())
        });
    }
}

/// One process as `/proc/PID/stat` shows it.
#[derive(Debug, Clone, Copy)]
struct Proc {
    pid: i32,
    ppid: i32,
    pgrp: i32,
    zombie: bool,
}

fn read_proc(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut f = rest.split_whitespace();
    let state = f.next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        pgrp,
        zombie: state == "Z" || state == "X",
    })
}

/// Every process on the machine (that is still there while being read).
fn all_procs() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(read_proc)
        .collect()
}

/// The descendants of `root`, leaving out the subtree of `skip`.
fn descendants(root: i32, skip: Option<i32>) -> Vec<Proc> {
    let procs = all_procs();
    let mut children: HashMap<i32, Vec<Proc>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    // Bounded: each process is visited once (pids are unique in one scan).
    while let Some(parent) = todo.pop() {
        for p in children.remove(&parent).unwrap_or_default() {
            if Some(p.pid) == skip {
                continue;
            }
            todo.push(p.pid);
            out.push(p);
        }
    }
    out
}

/// The command `leasehold run` started, its process group and every
/// descendant, until all of them are gone.
pub(crate) struct Tree {
    child: Child,
    /// The command's pid, which is also its process group id.
    pgid: i32,
    me: i32,
    guardian: Option<Guardian>,
    /// Process groups of escaped descendants already told to the guardian
    /// (shared with the deadline watch, which kills them too).
    groups: Arc<Mutex<BTreeSet<i32>>>,
    status: Option<ExitStatus>,
}

impl Tree {
    /// Starts `cmd` in its own process group with a parent-death signal, and
    /// its guardian.
    ///
    /// # Errors
    /// When the command cannot be started. A guardian that cannot be started
    /// is reported on stderr and leaves the command running without it.
    pub(crate) fn spawn(mut cmd: Command) -> io::Result<Tree> {
        own_group_and_death_signal(&mut cmd);
        cmd.kill_on_drop(true);
        let child = cmd.spawn()?;
        let pgid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| io::Error::other("the command exited before its pid was read"))?;
        let guardian = match Guardian::spawn(pgid) {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!(
                    "leasehold: cannot start the guardian that kills the command's process group if leasehold is killed ({e}); running without it"
                );
                None
            }
        };
        Ok(Tree {
            child,
            pgid,
            me: getpid().as_raw(),
            guardian,
            groups: Arc::new(Mutex::new(BTreeSet::new())),
            status: None,
        })
    }

    /// The command's process id (and process group id).
    pub(crate) fn pid(&self) -> u32 {
        self.pgid as u32
    }

    /// Kills the command at the local deadline from a thread of its own,
    /// whatever the async runtime is doing: SIGKILL to its process group and
    /// to the groups of escaped descendants seen so far, once `deadline()`
    /// (read again at each wake-up: renewals move it) has passed. The
    /// supervisor's own kill at the deadline runs on the runtime, whose
    /// threads a blocking call (a log write to a stalled stderr, a CPU
    /// starved of time) can hold past the deadline; this one cannot be held
    /// so. Disarmed when the returned watch is dropped.
    pub(crate) fn watch_deadline(
        &self,
        deadline: impl Fn() -> std::time::Instant + Send + 'static,
    ) -> DeadlineWatch {
        let disarmed = Arc::new((Mutex::new(false), Condvar::new()));
        let (d, pgid, groups) = (disarmed.clone(), self.pgid, self.groups.clone());
        let thread = std::thread::Builder::new()
            .name("leasehold-deadline".into())
            .spawn(move || {
                let (flag, wake) = &*d;
                let mut off = lock(flag);
                // Bounded: each round sleeps until the deadline, which only
                // moves forward; it ends at the deadline or when disarmed.
                loop {
                    if *off {
                        return;
                    }
                    let now = std::time::Instant::now();
                    let at = deadline();
                    if now >= at {
                        break;
                    }
                    off = wake
                        .wait_timeout(off, at - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                drop(off);
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                for &g in lock(&groups).iter() {
                    let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
                }
            });
        match thread {
            Ok(t) => DeadlineWatch {
                disarmed,
                thread: Some(t),
            },
            Err(e) => {
                eprintln!(
                    "leasehold: cannot start the thread that kills the command at the local deadline ({e}); the supervisor's own kill remains"
                );
                DeadlineWatch {
                    disarmed,
                    thread: None,
                }
            }
        }
    }

    /// Waits for the command's own process (not its descendants) to exit.
    ///
    /// # Cancel safety
    /// Cancel safe: the status is kept once read.
    pub(crate) async fn main_exited(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let s = self.child.wait().await?;
        self.status = Some(s);
        Ok(s)
    }

    fn guardian_pid(&self) -> Option<i32> {
        self.guardian.as_ref().map(|g| g.pid)
    }

    /// Live descendants (the command's tree), after reaping the zombies that
    /// are leasehold's own children (escaped descendants reparented to it).
    fn live(&mut self) -> Vec<Proc> {
        let tree = descendants(self.me, self.guardian_pid());
        for p in &tree {
            // The command itself is reaped by tokio; only reap reparented
            // orphans, each by its own pid (never waitpid(-1)).
            if p.zombie && p.ppid == self.me && p.pid != self.pgid {
                let _ = waitpid(Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG));
            }
        }
        tree.into_iter().filter(|p| !p.zombie).collect()
    }

    /// Reaps escaped descendants that exited and tells the guardian about
    /// process groups that left the command's. Call it now and then while
    /// the command runs.
    ///
    /// # Cancel safety
    /// Cancel safe in effect: a group whose line to the guardian was
    /// interrupted is not sent again (the guardian then misses it).
    pub(crate) async fn housekeep(&mut self) {
        let live = self.live();
        let new: Vec<i32> = {
            let mut groups = lock(&self.groups);
            let new: Vec<i32> = live
                .iter()
                .map(|p| p.pgrp)
                .filter(|&g| g != self.pgid && g > 1 && !groups.contains(&g))
                .collect();
            groups.extend(new.iter().copied());
            new
        };
        for g in new {
            if let Some(guardian) = &mut self.guardian {
                guardian.watch_group(g).await;
            }
        }
    }

    /// Sends `sig` to the command's process group and to every live
    /// descendant (escaped ones included).
    fn signal(&mut self, sig: Signal) {
        match killpg(Pid::from_raw(self.pgid), sig) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => eprintln!("leasehold: cannot send {sig} to the command's process group: {e}"),
        }
        for p in self.live() {
            match kill(Pid::from_raw(p.pid), sig) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => eprintln!("leasehold: cannot send {sig} to process {}: {e}", p.pid),
            }
        }
    }

    /// Stops the whole tree: SIGTERM (and SIGCONT, for stopped processes)
    /// now, SIGKILL at `kill_at` or as soon as `kill_now` completes,
    /// whichever comes first. Returns once no process of the command is left;
    /// `Err` with the pids still alive when they outlive SIGKILL by
    /// [`KILL_WAIT`].
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping it leaves the tree half stopped.
    pub(crate) async fn stop(
        &mut self,
        kill_at: Instant,
        kill_now: impl Future<Output = ()>,
    ) -> Result<(), Vec<i32>> {
        let mut kill_now = std::pin::pin!(kill_now);
        let mut killing = Instant::now() >= kill_at;
        if killing {
            self.signal(Signal::SIGKILL);
        } else {
            self.signal(Signal::SIGTERM);
            self.signal(Signal::SIGCONT);
        }
        let mut kill_now_done = false;
        let mut given_up = None;
        // Bounded by time (kill_at, then KILL_WAIT) and by count.
        let max_rounds = 1_000_000u32;
        for _ in 0..max_rounds {
            let live = self.live();
            if live.is_empty() {
                // Read the command's status if it is not read yet (it is gone).
                let _ = timeout(Duration::from_secs(1), self.main_exited()).await;
                return Ok(());
            }
            let now = Instant::now();
            if !killing && now >= kill_at {
                killing = true;
            }
            if killing {
                // Again every round: a process forked meanwhile dies too.
                self.signal(Signal::SIGKILL);
                let until = *given_up.get_or_insert(now + KILL_WAIT);
                if now >= until {
                    return Err(live.iter().map(|p| p.pid).collect());
                }
            }
            tokio::select! {
                _ = &mut kill_now, if !kill_now_done => {
                    kill_now_done = true;
                    killing = true;
                }
                _ = self.child.wait(), if self.status.is_none() => {}
                _ = sleep(STOP_POLL) => {}
            }
            if self.status.is_none()
                && let Ok(Some(s)) = self.child.try_wait()
            {
                self.status = Some(s);
            }
        }
        Err(self.live().iter().map(|p| p.pid).collect())
    }

    /// Once the tree is gone: lets the guardian go and returns the command's
    /// exit status.
    ///
    /// # Cancel safety
    /// Not cancel safe.
    pub(crate) async fn finish(mut self) -> io::Result<ExitStatus> {
        if let Some(g) = self.guardian.take() {
            g.dismiss().await;
        }
        self.main_exited().await
    }
}

/// The thread of [`Tree::watch_deadline`]; dropping it disarms the thread
/// and waits for it to end (at once: it only sleeps or sends signals).
pub(crate) struct DeadlineWatch {
    disarmed: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for DeadlineWatch {
    fn drop(&mut self) {
        let (flag, wake) = &*self.disarmed;
        *lock(flag) = true;
        wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The process that kills the command's process group (and the groups of
/// escaped descendants) if leasehold dies without saying "done".
struct Guardian {
    child: Child,
    stdin: ChildStdin,
    pid: i32,
}

/// The hidden subcommand the guardian runs as.
pub(crate) const GUARD_COMMAND: &str = "__guard";

impl Guardian {
    fn spawn(pgid: i32) -> io::Result<Guardian> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg(GUARD_COMMAND)
            .arg(pgid.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            // Its own group: a Ctrl-C at the terminal does not reach it.
            .process_group(0);
        let mut child = cmd.spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("no pipe to the guardian"))?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| io::Error::other("the guardian exited at once"))?;
        Ok(Guardian { child, stdin, pid })
    }

    async fn watch_group(&mut self, pgid: i32) {
        if let Err(e) = self.stdin.write_all(format!("g {pgid}\n").as_bytes()).await {
            eprintln!("leasehold: cannot reach the guardian ({e})");
        }
    }

    async fn dismiss(mut self) {
        let _ = self.stdin.write_all(b"done\n").await;
        drop(self.stdin);
        if timeout(Duration::from_secs(2), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// The guardian's main: reads `g PGID` lines and `done` from stdin; when
/// stdin closes without `done` (leasehold died), SIGKILLs every group it
/// knows, the command's first. It ignores SIGTERM, SIGINT, SIGHUP and SIGQUIT
/// (they are for leasehold, which stops the command itself).
///
/// # Cancel safety
/// Not meant to be cancelled: it is the guardian process's whole life.
pub(crate) async fn guard_main(pgid: &str) -> std::process::ExitCode {
    use tokio::io::AsyncBufReadExt;
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(pgid) = pgid.parse::<i32>() else {
        eprintln!("leasehold {GUARD_COMMAND}: {pgid:?} is not a process group id");
        return std::process::ExitCode::from(2);
    };
    // Listening replaces the default action (exit) with "deliver to a
    // stream nobody reads", which ignores them.
    let _held: Vec<_> = [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::quit(),
    ]
    .into_iter()
    .filter_map(|k| signal(k).ok())
    .collect();
    let mut groups = vec![pgid];
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    // Bounded by the pipe: it ends when leasehold closes it or dies.
    loop {
        match lines.next_line().await {
            Ok(Some(l)) if l == "done" => return std::process::ExitCode::SUCCESS,
            Ok(Some(l)) => {
                if let Some(g) = l.strip_prefix("g ").and_then(|g| g.parse::<i32>().ok())
                    && g > 1
                {
                    groups.push(g);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    for g in groups {
        let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
    }
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The deadline watch kills the command while the runtime's only thread
    /// is held (as a blocking write held it), without the runtime's help.
    #[tokio::test(flavor = "current_thread")]
    async fn the_deadline_watch_kills_the_command_while_the_runtime_is_held() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; while :; do sleep 0.05; done"])
            .stdout(Stdio::null());
        let mut tree = Tree::spawn(cmd).expect("start the command");
        let pid = tree.pgid;
        let at = std::time::Instant::now() + Duration::from_millis(200);
        let watch = tree.watch_deadline(move || at);
        // Hold the runtime's only thread well past the deadline.
        std::thread::sleep(Duration::from_millis(900));
        let gone = read_proc(pid).is_none_or(|p| p.zombie);
        drop(watch);
        let _ = tree
            .stop(tokio::time::Instant::now(), std::future::pending())
            .await;
        assert!(
            gone,
            "the command outlived the deadline by 700 ms while the runtime was held"
        );
    }

    /// Disarmed before the deadline, the watch kills nothing.
    #[tokio::test(flavor = "current_thread")]
    async fn a_disarmed_deadline_watch_kills_nothing() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut tree = Tree::spawn(cmd).expect("start the command");
        let pid = tree.pgid;
        let at = std::time::Instant::now() + Duration::from_millis(300);
        drop(tree.watch_deadline(move || at));
        std::thread::sleep(Duration::from_millis(600));
        let alive = read_proc(pid).is_some_and(|p| !p.zombie);
        let _ = tree
            .stop(tokio::time::Instant::now(), std::future::pending())
            .await;
        assert!(alive, "a disarmed watch killed the command");
    }
}
