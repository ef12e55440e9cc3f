//! One store process: spawn, signal, stop by pid, pid files, logs, readiness.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::HarnessError;

/// How many log lines are shown when a test fails or a store does not start.
const LOG_TAIL_LINES: usize = 80;

/// How many times a store start is retried with fresh ports when a process
/// exits during startup (most likely a port another process grabbed first).
pub(crate) const START_ATTEMPTS: usize = 3;

/// Runs `attempt` (one start of a store: fresh ports, spawn, wait until it
/// answers) up to [`START_ATTEMPTS`] times while the process exits during
/// start-up (most likely a port another process took first); any other
/// error ends it at once. `what` names the store in the error when every
/// attempt failed without one.
pub(crate) async fn start_retrying<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, HarnessError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, HarnessError>>,
{
    let mut last_error = None;
    for _ in 0..START_ATTEMPTS {
        match attempt().await {
            Ok(started) => return Ok(started),
            Err(e @ HarnessError::Exited { .. }) => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| HarnessError::Protocol(format!("{what} did not start"))))
}

/// A store process the harness started, stopped by its pid on drop.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    label: String,
    program: PathBuf,
    /// What the pid runs once started: `program`, or the binary `program`
    /// execs into (`setpriv ... -- postgres`); recorded in the pid file.
    exe: PathBuf,
    args: Vec<OsString>,
    log_path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    child: Option<Child>,
    pid: u32,
    pid_file: Option<PathBuf>,
}

impl ServerProcess {
    /// Starts `program args...` with stdout and stderr appended to `log_path`.
    pub(crate) fn spawn(
        label: impl Into<String>,
        program: &Path,
        args: Vec<OsString>,
        log_path: PathBuf,
    ) -> Result<Self, HarnessError> {
        Self::spawn_exec(label, program, args, program, log_path)
    }

    /// As [`spawn`](Self::spawn), for a `program` that execs into `exe`
    /// (`setpriv`): the pid file records `exe`, which is what
    /// `/proc/PID/exe` shows once the server runs, so that `scripts/test`
    /// can tell the server left behind from a reused pid.
    pub(crate) fn spawn_exec(
        label: impl Into<String>,
        program: &Path,
        args: Vec<OsString>,
        exe: &Path,
        log_path: PathBuf,
    ) -> Result<Self, HarnessError> {
        let program = fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf());
        let exe = fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
        let process = ServerProcess {
            label: label.into(),
            program,
            exe,
            args,
            log_path,
            state: Mutex::new(State {
                child: None,
                pid: 0,
                pid_file: None,
            }),
        };
        {
            let mut state = process.lock();
            process.spawn_locked(&mut state)?;
        }
        Ok(process)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent enough to stop the process.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn_locked(&self, state: &mut State) -> Result<(), HarnessError> {
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| HarnessError::io(format!("open log {}", self.log_path.display()), e))?;
        let _ = writeln!(
            log,
            "===== leasehold harness: starting {}: {} {}",
            self.label,
            self.program.display(),
            self.args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let stderr = log
            .try_clone()
            .map_err(|e| HarnessError::io("duplicate log file handle", e))?;
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        set_parent_death_signal(&mut command);
        let child = spawn_from_long_lived_thread(command)
            .map_err(|e| HarnessError::io(format!("spawn {}", self.program.display()), e))?;
        state.pid = child.id();
        state.child = Some(child);
        state.pid_file = write_pid_file(&self.label, state.pid, &self.exe);
        Ok(())
    }

    /// The pid of the most recently started process (it may have been stopped since).
    pub(crate) fn pid(&self) -> u32 {
        self.lock().pid
    }

    /// The process's label, e.g. "etcd n1".
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// The log file (stdout and stderr of every start).
    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Whether the process is alive (a paused process is alive).
    pub(crate) fn is_running(&self) -> bool {
        let mut state = self.lock();
        match state.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// If the process has exited on its own, its exit status.
    pub(crate) fn exit_status(&self) -> Option<String> {
        let mut state = self.lock();
        match state.child.as_mut() {
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(format!("unknown: {e}")),
            },
            None => Some("stopped by the harness".to_string()),
        }
    }

    /// SIGKILL, then wait for it (no zombie), then remove the pid file. A no-op
    /// when the process is already stopped.
    pub(crate) fn kill(&self) {
        let mut state = self.lock();
        Self::kill_locked(&mut state);
    }

    fn kill_locked(state: &mut State) {
        if let Some(mut child) = state.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = kill(Pid::from_raw(state.pid as i32), Signal::SIGKILL);
            }
            let _ = child.wait();
        }
        if let Some(pid_file) = state.pid_file.take() {
            let _ = fs::remove_file(pid_file);
        }
    }

    /// Sends `signal` to the running process.
    ///
    /// # Panics
    ///
    /// If the process is not running: a fault test that pauses a dead store is wrong.
    pub(crate) fn signal(&self, signal: Signal) {
        let mut state = self.lock();
        let alive = match state.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        };
        assert!(
            alive,
            "cannot send {signal} to {}: it is not running (pid {})",
            self.label, state.pid
        );
        if let Err(e) = kill(Pid::from_raw(state.pid as i32), signal) {
            panic!("kill -{signal} {} ({}): {e}", state.pid, self.label);
        }
        // Signals are delivered asynchronously: wait until every thread has
        // actually stopped (or left the stopped state), so that a test's next
        // request meets the state it asked for.
        match signal {
            Signal::SIGSTOP => wait_for_thread_states(state.pid, true),
            Signal::SIGCONT => wait_for_thread_states(state.pid, false),
            _ => {}
        }
    }

    /// Kills the process (if running) and starts it again with the same arguments.
    pub(crate) fn respawn(&self) -> Result<(), HarnessError> {
        let mut state = self.lock();
        Self::kill_locked(&mut state);
        self.spawn_locked(&mut state)
    }

    /// The last `LOG_TAIL_LINES` lines of the log.
    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log_path, LOG_TAIL_LINES)
    }

    /// Polls `check` until it returns `Ok(())`, the process exits, or `timeout` passes.
    ///
    /// `check` should bound its own duration (a few seconds at most).
    pub(crate) async fn wait_ready<F, Fut>(
        &self,
        timeout: Duration,
        mut check: F,
    ) -> Result<(), HarnessError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let started = Instant::now();
        let mut pause = Duration::from_millis(25);
        loop {
            if let Some(status) = self.exit_status() {
                return Err(HarnessError::Exited {
                    label: self.label.clone(),
                    status,
                    log_tail: self.log_tail(),
                });
            }
            let last_check = match check().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if started.elapsed() >= timeout {
                return Err(HarnessError::NotReady {
                    label: self.label.clone(),
                    waited: started.elapsed(),
                    last_check,
                    log_tail: self.log_tail(),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- {} (pid {}): last {} lines of {} -----\n{}\n----- end of {} log -----",
                self.label,
                self.pid(),
                LOG_TAIL_LINES,
                self.log_path.display(),
                self.log_tail(),
                self.label
            );
        }
        self.kill();
    }
}

/// Waits (at most 2 s) until all threads of `pid` are stopped (`T` in
/// `/proc/PID/task/*/stat`), or none is.
fn wait_for_thread_states(pid: u32, stopped: bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            return;
        };
        let all_match = tasks.filter_map(|t| t.ok()).all(|task| {
            let stat = fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // The state is the first field after the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("");
            (state == "T" || state == "t") == stopped
        });
        if all_match {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The last `lines` lines of the file at `path` (or a note saying why not).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    let mut tail = VecDeque::with_capacity(lines + 1);
    for line in BufReader::new(file).split(b'\n') {
        let Ok(line) = line else { break };
        tail.push_back(String::from_utf8_lossy(&line).into_owned());
        if tail.len() > lines {
            tail.pop_front();
        }
    }
    Vec::from(tail).join("\n")
}

/// Asks the kernel to SIGKILL the child when the thread that forked it dies.
///
/// The harness forks from one long-lived thread (see `spawn_from_long_lived_thread`),
/// so the signal fires exactly when the test process dies, even if it is killed
/// without running destructors (a timeout, `SIGKILL`, a panic in a static).
#[allow(unsafe_code)]
fn set_parent_death_signal(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // prctl(2) system call, which is async-signal-safe; it allocates nothing and
    // touches no lock or state shared with the parent.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `command` from a thread that lives as long as the test process.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits. Test
/// threads (and tokio's blocking threads) come and go, and a store shared by
/// several tests outlives the test that started it, so all forks happen here.
fn spawn_from_long_lived_thread(command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("leasehold-harness-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the harness's spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply_tx))
        .map_err(|_| std::io::Error::other("the harness's spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the harness's spawner thread did not answer"))?
}

/// Records a started process in [`pid_dir`](crate::pid_dir) as
/// `<pid>\n<exe>\n<pid of the test process>\n`.
///
/// Failing to write it is not fatal (the process is still stopped on drop);
/// it only means `scripts/test` cannot see this process.
fn write_pid_file(label: &str, pid: u32, exe: &Path) -> Option<PathBuf> {
    let dir = crate::pid_dir();
    fs::create_dir_all(&dir).ok()?;
    let safe_label: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let path = dir.join(format!("{safe_label}-{pid}.pid"));
    fs::write(
        &path,
        format!("{pid}\n{}\n{}\n", exe.display(), std::process::id()),
    )
    .ok()?;
    Some(path)
}

/// `n` distinct free TCP ports on 127.0.0.1, never handed out before by this process.
///
/// The ports are free when this returns; another process could still take one
/// before the store binds it, which is why store starts are retried.
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>, HarnessError> {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    let mut listeners = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n * 50 {
        if ports.len() == n {
            break;
        }
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| HarnessError::io("bind 127.0.0.1:0 to find a free port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| HarnessError::io("local_addr of a probe listener", e))?
            .port();
        if handed_out.insert(port) {
            ports.push(port);
        }
        // Keep every probe open until all are picked, so the kernel hands out distinct ports.
        listeners.push(listener);
    }
    if ports.len() < n {
        return Err(HarnessError::Protocol(format!(
            "could not find {n} unused loopback ports"
        )));
    }
    Ok(ports)
}

/// Startup timeout: `LEASEHOLD_START_TIMEOUT_SECS` if set, else `default`.
pub(crate) fn start_timeout(default: Duration) -> Duration {
    std::env::var("LEASEHOLD_START_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(default)
}

/// Finds `name` on `PATH`, as an executable file.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_never_repeat() {
        let a = free_ports(5).unwrap();
        let b = free_ports(5).unwrap();
        let all: HashSet<u16> = a.iter().chain(b.iter()).copied().collect();
        assert_eq!(all.len(), 10);
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (0..200).map(|i| format!("line {i}\n")).collect();
        fs::write(&path, text).unwrap();
        let tail = log_tail(&path, 3);
        assert_eq!(tail, "line 197\nline 198\nline 199");
    }

    #[test]
    fn a_failing_test_still_stops_its_processes() {
        let dir = tempfile::tempdir().unwrap();
        let sleep = find_on_path("sleep").expect("sleep(1) on PATH");
        let log = dir.path().join("log");
        let process = ServerProcess::spawn("sleeper", &sleep, vec!["30".into()], log).unwrap();
        let pid = process.pid();
        // Drop runs while unwinding: it prints the log tail and kills the process.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _process = process;
            panic!("a failing test");
        }));
        assert!(outcome.is_err());
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    /// What `scripts/test`'s leftover check compares: the pid file's exe
    /// with `/proc/PID/exe`. Through a program that execs (`env`, as
    /// `setpriv` for PostgreSQL), the record must be the exec'd binary.
    #[test]
    fn the_pid_file_records_what_the_pid_runs_after_an_exec() {
        let dir = tempfile::tempdir().unwrap();
        let env = find_on_path("env").expect("env(1) on PATH");
        let sleep = find_on_path("sleep").expect("sleep(1) on PATH");
        let process = ServerProcess::spawn_exec(
            "execer",
            &env,
            vec![sleep.clone().into_os_string(), "30".into()],
            &sleep,
            dir.path().join("log"),
        )
        .unwrap();
        let pid = process.pid();
        let pid_file = process.lock().pid_file.clone().expect("pid file written");
        let recorded = fs::read_to_string(&pid_file).unwrap();
        let recorded = recorded.lines().nth(1).unwrap().to_owned();
        // env execs into sleep at once; give it up to 5 s on a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut actual = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        while actual != Path::new(&recorded) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            actual = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        }
        assert_eq!(actual, Path::new(&recorded), "pid file: {recorded}");
        assert_eq!(actual, fs::canonicalize(&sleep).unwrap());
    }

    #[test]
    fn a_process_is_stopped_and_reaped_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let sleep = find_on_path("sleep").expect("sleep(1) on PATH");
        let process =
            ServerProcess::spawn("sleeper", &sleep, vec!["30".into()], dir.path().join("log"))
                .unwrap();
        let pid = process.pid();
        assert!(process.is_running());
        let pid_file = process.lock().pid_file.clone().expect("pid file written");
        assert!(pid_file.is_file());
        process.signal(Signal::SIGSTOP);
        process.signal(Signal::SIGCONT);
        drop(process);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert!(!pid_file.exists());
    }
}
