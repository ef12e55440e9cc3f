//! What the cli's test binaries share (`mod common;` in each): the
//! `leasehold` command, signalling and reaping it, and the log that the
//! commands run under `leasehold run` write.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

/// The `leasehold` binary, with no `LEASEHOLD_*` variable inherited from the
/// test's environment, killed if the test drops it.
pub(crate) fn cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    for v in leasehold::config::ENV_VARS {
        cmd.env_remove(v);
    }
    cmd.kill_on_drop(true);
    cmd
}

/// Sends `sig` to `child` (nothing if it has been reaped already).
pub(crate) fn signal(child: &Child, sig: Signal) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), sig);
    }
}

/// Waits for `child` to exit; panics naming `what` if it has not within
/// `within`.
pub(crate) async fn wait_exit(child: &mut Child, within: Duration, what: &str) -> ExitStatus {
    timeout(within, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} did not exit within {within:?}"))
        .expect("wait for leasehold")
}

/// One line of a [`CommandLog`]: `KIND WHO PID NS`, anything after is
/// ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogLine {
    /// `start` (once, as the command's work starts), `alive` (while it
    /// runs), or `pid` (a process of the command recording its pid).
    pub(crate) kind: String,
    /// The candidate whose command wrote the line.
    pub(crate) who: String,
    /// The pid of the process that wrote it.
    pub(crate) pid: i32,
    /// When, in nanoseconds on a clock that every process of this host reads
    /// alike.
    pub(crate) nanos: u64,
}

/// The log file that the commands of the candidates in one test append
/// [`LogLine`]s to, so which command ran when is read off the commands' own
/// clock readings.
#[derive(Debug)]
pub(crate) struct CommandLog {
    path: PathBuf,
}

impl CommandLog {
    /// The log at `path` (it need not exist yet).
    pub(crate) fn new(path: PathBuf) -> CommandLog {
        CommandLog { path }
    }

    /// Where the log is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Its text; empty while nothing wrote it.
    pub(crate) fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// Its lines (those that are not `KIND WHO PID NS` are skipped).
    pub(crate) fn lines(&self) -> Vec<LogLine> {
        self.text()
            .lines()
            .filter_map(|l| {
                let mut p = l.split_whitespace();
                Some(LogLine {
                    kind: p.next()?.to_owned(),
                    who: p.next()?.to_owned(),
                    pid: p.next()?.parse().ok()?,
                    nanos: p.next()?.parse().ok()?,
                })
            })
            .collect()
    }

    /// When `who`'s command started its work, if it has.
    pub(crate) fn started(&self, who: &str) -> Option<u64> {
        self.lines()
            .iter()
            .filter(|l| l.kind == "start" && l.who == who)
            .map(|l| l.nanos)
            .min()
    }

    /// Waits until `who`'s command has started its work (reading the log
    /// every 10 ms) and returns when it started; panics with the log if it
    /// has not within `within`.
    pub(crate) async fn wait_start(&self, who: &str, within: Duration) -> u64 {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Some(ns) = self.started(who) {
                return ns;
            }
            sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{who}'s command did not start its work within {within:?}; log:\n{}",
            self.text()
        );
    }

    /// The last sign of life of `who`'s work (its last `alive` or `start`
    /// line); panics if it logged none.
    pub(crate) fn last_alive(&self, who: &str) -> u64 {
        self.lines()
            .iter()
            .filter(|l| l.who == who && (l.kind == "alive" || l.kind == "start"))
            .map(|l| l.nanos)
            .max()
            .unwrap_or_else(|| panic!("{who}'s work logged nothing"))
    }
}

/// Whether `pid` exists and is not a zombie.
#[allow(dead_code)] // not every test binary needs it
pub(crate) fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("?");
    state != "Z" && state != "X"
}

/// A free loopback address (bound then released), for a listener of the
/// command's, or as one nothing listens on.
#[allow(dead_code)] // not every test binary needs one
pub(crate) fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").to_string()
}
