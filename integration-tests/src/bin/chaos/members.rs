//! An etcd cluster whose members live in network namespaces of their own
//! (see `net.rs`), so that a member can be cut from its peers while its
//! clients still reach it. Each member is `ip netns exec lhc<pid>-m<k> etcd`,
//! stopped by its pid (on drop too), with SIGKILL as its parent-death signal
//! and a pid file in the harness's pid directory (so `scripts/test` reports
//! one left behind).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::net::Net;

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

#[derive(Debug)]
struct Member {
    ns: String,
    args: Vec<String>,
    log: PathBuf,
    pid_file: PathBuf,
    child: Mutex<Option<Child>>,
}

/// The cluster; every member is killed on drop.
#[derive(Debug)]
pub(crate) struct NsEtcdCluster {
    etcd: PathBuf,
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

fn etcd_binary() -> Result<PathBuf, String> {
    let candidates = match std::env::var_os("LEASEHOLD_ETCD") {
        Some(p) => vec![PathBuf::from(p)],
        None => std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join("etcd")).collect())
            .unwrap_or_default(),
    };
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .ok_or_else(|| {
            "etcd not found (LEASEHOLD_ETCD or PATH): apt-get install -y etcd-server etcd-client (or: bash scripts/setup)".to_owned()
        })
}

impl NsEtcdCluster {
    /// Starts `n` members in the namespaces `net` made for them.
    pub(crate) fn start(net: &Net, n: usize) -> Result<NsEtcdCluster, String> {
        let etcd = etcd_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("leasehold-chaos-etcd-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir for etcd: {e}"))?;
        let cluster: Vec<String> = (0..n)
            .map(|k| format!("n{k}=http://{}:{PEER_PORT}", Net::member_peer_ip(k)))
            .collect();
        let token = leasehold_integration_tests::unique_name("chaos-etcd");
        let pid_dir = leasehold_integration_tests::pid_dir();
        let _ = std::fs::create_dir_all(&pid_dir);
        let mut members = Vec::new();
        for k in 0..n {
            let client = format!("http://{}:{CLIENT_PORT}", Net::member_client_ip(k));
            let peer = format!("http://{}:{PEER_PORT}", Net::member_peer_ip(k));
            let data = dir.path().join(format!("n{k}"));
            let args = vec![
                "--name".to_owned(),
                format!("n{k}"),
                "--data-dir".to_owned(),
                data.to_string_lossy().into_owned(),
                "--listen-client-urls".to_owned(),
                client.clone(),
                "--advertise-client-urls".to_owned(),
                client,
                "--listen-peer-urls".to_owned(),
                peer.clone(),
                "--initial-advertise-peer-urls".to_owned(),
                peer,
                "--initial-cluster".to_owned(),
                cluster.join(","),
                "--initial-cluster-state".to_owned(),
                "new".to_owned(),
                "--initial-cluster-token".to_owned(),
                token.clone(),
            ];
            members.push(Member {
                ns: net.member_ns(k).to_owned(),
                args,
                log: dir.path().join(format!("n{k}.log")),
                pid_file: pid_dir.join(format!("chaos-{}-etcd-n{k}.pid", std::process::id())),
                child: Mutex::new(None),
            });
        }
        let cluster = NsEtcdCluster {
            etcd,
            members,
            _dir: dir,
        };
        for k in 0..n {
            cluster.spawn(k)?;
        }
        Ok(cluster)
    }

    #[allow(unsafe_code)]
    fn spawn(&self, k: usize) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let m = &self.members[k];
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|e| format!("cannot open {}: {e}", m.log.display()))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("cannot duplicate a file handle: {e}"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &m.ns])
            .arg(&self.etcd)
            .args(&m.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        // SAFETY: the closure runs in the forked child before exec and only
        // makes the prctl(2) system call, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start etcd in {}: {e}", m.ns))?;
        let _ = std::fs::write(
            &m.pid_file,
            format!("{}\n{}\n", child.id(), self.etcd.display()),
        );
        *m.child.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
        Ok(())
    }

    /// The client addresses (inside the namespaces).
    pub(crate) fn client_addrs(&self) -> Vec<SocketAddr> {
        (0..self.members.len())
            .filter_map(|k| {
                format!("{}:{CLIENT_PORT}", Net::member_client_ip(k))
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// How many members.
    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    /// SIGKILLs member `k` (all when `None`) and reaps it.
    pub(crate) fn kill(&self, k: Option<usize>) {
        for (i, m) in self.members.iter().enumerate() {
            if k.is_some_and(|k| k != i) {
                continue;
            }
            let mut child = m.child.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(mut c) = child.take() {
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
                let _ = c.wait();
                let _ = std::fs::remove_file(&m.pid_file);
            }
        }
    }

    /// Starts every member that is not running (same data, same addresses).
    pub(crate) fn restart_stopped(&self) -> Result<(), String> {
        for (k, m) in self.members.iter().enumerate() {
            let running = m
                .child
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
            if !running {
                self.kill(Some(k));
                self.spawn(k)?;
            }
        }
        Ok(())
    }
}

impl Drop for NsEtcdCluster {
    fn drop(&mut self) {
        self.kill(None);
    }
}
