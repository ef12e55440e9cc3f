//! An etcd cluster or ZooKeeper ensemble whose members live in network
//! namespaces of their own (see `net.rs`), so that a member can be cut from
//! its peers while its clients still reach it. Each member is
//! `nsenter --net=/run/netns/lhc<pid>-m<k> -- etcd|java ...`,
//! stopped by its pid (on drop too), with SIGKILL as its parent-death signal
//! and a pid file in the harness's pid directory (so `scripts/test` reports
//! one left behind).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Mutex, PoisonError};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::net::Net;

const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
const ZK_CLIENT_PORT: u16 = 2181;

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
pub(crate) struct NsCluster {
    program: PathBuf,
    client_port: u16,
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

fn temp_dir(what: &str) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix(&format!("leasehold-chaos-{what}-"))
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir for {what}: {e}"))
}

fn pid_file(what: &str, k: usize) -> PathBuf {
    let dir = leasehold_integration_tests::pid_dir();
    let _ = std::fs::create_dir_all(&dir);
    dir.join(format!("chaos-{}-{what}-m{k}.pid", std::process::id()))
}

impl NsCluster {
    /// Starts an `n`-member ZooKeeper ensemble (tickTime 500 ms, as the
    /// harness) in the namespaces `net` made for them.
    pub(crate) fn zookeeper(net: &Net, n: usize) -> Result<NsCluster, String> {
        let (java, classpath) =
            leasehold_integration_tests::zookeeper_java().map_err(|e| e.to_string())?;
        let java = std::fs::canonicalize(&java).unwrap_or(java);
        let dir = temp_dir("zookeeper")?;
        let servers: String = (0..n)
            .map(|k| {
                let peer = Net::member_peer_ip(k);
                format!("server.{}={peer}:2888:3888\n", k + 1)
            })
            .collect();
        let mut members = Vec::new();
        for k in 0..n {
            let data = dir.path().join(format!("m{k}"));
            std::fs::create_dir_all(&data)
                .map_err(|e| format!("cannot create {}: {e}", data.display()))?;
            std::fs::write(data.join("myid"), format!("{}\n", k + 1))
                .map_err(|e| format!("cannot write myid: {e}"))?;
            let config = format!(
                "tickTime={}\ninitLimit=20\nsyncLimit=10\ndataDir={}\nclientPort={ZK_CLIENT_PORT}\nclientPortAddress={}\nadmin.enableServer=false\n4lw.commands.whitelist=ruok,srvr,stat,mntr\nmaxClientCnxns=0\n{servers}",
                leasehold_integration_tests::ZK_TICK_TIME.as_millis(),
                data.display(),
                Net::member_client_ip(k)
            );
            let config_path = dir.path().join(format!("zoo-{k}.cfg"));
            std::fs::write(&config_path, config)
                .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
            let args = [
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Djava.net.preferIPv4Stack=true",
                "-Dzookeeper.snapshot.trust.empty=true",
                "-cp",
                &classpath,
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                &config_path.to_string_lossy(),
            ]
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
            members.push(Member {
                ns: net.member_ns(k).to_owned(),
                args,
                log: dir.path().join(format!("m{k}.log")),
                pid_file: pid_file("zookeeper", k),
                child: Mutex::new(None),
            });
        }
        let cluster = NsCluster {
            program: java,
            client_port: ZK_CLIENT_PORT,
            members,
            _dir: dir,
        };
        for k in 0..n {
            cluster.spawn(k)?;
        }
        Ok(cluster)
    }

    /// Starts an `n`-member etcd cluster in the namespaces `net` made for them.
    pub(crate) fn etcd(net: &Net, n: usize) -> Result<NsCluster, String> {
        let etcd = etcd_binary()?;
        let dir = temp_dir("etcd")?;
        let cluster: Vec<String> = (0..n)
            .map(|k| format!("n{k}=http://{}:{ETCD_PEER_PORT}", Net::member_peer_ip(k)))
            .collect();
        let token = leasehold_integration_tests::unique_name("chaos-etcd");
        let mut members = Vec::new();
        for k in 0..n {
            let client = format!("http://{}:{ETCD_CLIENT_PORT}", Net::member_client_ip(k));
            let peer = format!("http://{}:{ETCD_PEER_PORT}", Net::member_peer_ip(k));
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
                pid_file: pid_file("etcd", k),
                child: Mutex::new(None),
            });
        }
        let cluster = NsCluster {
            program: etcd,
            client_port: ETCD_CLIENT_PORT,
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
        let mut cmd = crate::net::in_netns(&m.ns);
        cmd.arg(&self.program)
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
            .map_err(|e| format!("cannot start {} in {}: {e}", self.program.display(), m.ns))?;
        let _ = std::fs::write(
            &m.pid_file,
            format!("{}\n{}\n", child.id(), self.program.display()),
        );
        *m.child.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
        Ok(())
    }

    /// The client addresses (inside the namespaces).
    pub(crate) fn client_addrs(&self) -> Vec<SocketAddr> {
        (0..self.members.len())
            .filter_map(|k| {
                format!("{}:{}", Net::member_client_ip(k), self.client_port)
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

impl Drop for NsCluster {
    fn drop(&mut self) {
        self.kill(None);
    }
}
