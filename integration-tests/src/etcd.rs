//! etcd: a single node or a cluster on loopback.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::process::{START_ATTEMPTS, ServerProcess, find_on_path, free_ports, start_timeout};
use crate::{HarnessError, http, unique_name};

/// How long a node may take to report healthy (override with `LEASEHOLD_START_TIMEOUT_SECS`).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One etcd server process, started by the harness and killed (by pid) on drop.
///
/// Alone ([`EtcdNode::start`]) it is a one-member cluster; inside an
/// [`EtcdCluster`] it is one member. Its data directory and log live in a
/// temporary directory removed on drop.
#[derive(Debug)]
pub struct EtcdNode {
    process: ServerProcess,
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    _dir: TempDir,
}

impl EtcdNode {
    /// Starts a single-node etcd on free loopback ports and waits until
    /// `GET /health` answers `{"health":"true"}`.
    ///
    /// # Errors
    ///
    /// etcd is not installed (the message names `apt-get install -y etcd-server`),
    /// or it did not become healthy in time (the message carries its log tail).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a process started so far is killed when the future is dropped.
    pub async fn start() -> Result<EtcdNode, HarnessError> {
        let binary = etcd_binary()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let ports = free_ports(2)?;
            let (client_port, peer_port) = (ports[0], ports[1]);
            let initial_cluster = format!("n1=http://127.0.0.1:{peer_port}");
            let node = EtcdNode::spawn(
                &binary,
                "n1",
                client_port,
                peer_port,
                &initial_cluster,
                &unique_name("etcd"),
            )?;
            match node.wait_healthy(start_timeout(READY_TIMEOUT)).await {
                Ok(()) => return Ok(node),
                // Exited: most likely a port race; try again with fresh ports.
                Err(e @ HarnessError::Exited { .. }) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| HarnessError::Protocol("etcd did not start".into())))
    }

    fn spawn(
        binary: &Path,
        name: &str,
        client_port: u16,
        peer_port: u16,
        initial_cluster: &str,
        cluster_token: &str,
    ) -> Result<EtcdNode, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("leasehold-etcd-{name}-"))
            .tempdir()
            .map_err(|e| HarnessError::io("create a temp dir for etcd", e))?;
        let data_dir = dir.path().join("data");
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let args: Vec<OsString> = [
            "--name",
            name,
            "--data-dir",
            &data_dir.to_string_lossy(),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            cluster_token,
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let process = ServerProcess::spawn(
            format!("etcd {name}"),
            binary,
            args,
            dir.path().join("etcd.log"),
        )?;
        Ok(EtcdNode {
            process,
            name: name.to_string(),
            client_port,
            peer_port,
            data_dir,
            _dir: dir,
        })
    }

    /// The client endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client address (for a [`Proxy`](crate::Proxy) target).
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port))
    }

    /// The peer (raft) address.
    pub fn peer_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.peer_port))
    }

    /// The member name, `n1`, `n2`, ...
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid of the current process (after a restart, the new one).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Whether the process is alive (a paused process is alive).
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// The data directory (kept across restarts, removed on drop).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The log file: stdout and stderr of every start of this member.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Kills the process with SIGKILL and reaps it. A no-op if it is not running.
    pub fn kill(&self) {
        self.process.kill();
    }

    /// Freezes the process with SIGSTOP: its sockets stay open but nothing answers.
    /// Returns once every thread of the process has stopped.
    ///
    /// # Panics
    ///
    /// If the process is not running.
    pub fn pause(&self) {
        self.process.signal(Signal::SIGSTOP);
    }

    /// Thaws a paused process with SIGCONT.
    ///
    /// # Panics
    ///
    /// If the process is not running.
    pub fn resume(&self) {
        self.process.signal(Signal::SIGCONT);
    }

    /// Kills the process (if running) and starts it again on the same ports with
    /// the same data directory, then waits until it reports healthy (a cluster
    /// member needs a quorum of running members for that).
    ///
    /// # Errors
    ///
    /// The process could not be spawned or did not become healthy in time.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the process keeps running if the wait is dropped.
    pub async fn restart(&self) -> Result<(), HarnessError> {
        self.process.respawn()?;
        self.wait_healthy(start_timeout(READY_TIMEOUT)).await
    }

    /// One `GET /health` probe: whether this member says `{"health":"true"}`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn is_healthy(&self) -> bool {
        health(self.client_addr()).await.is_ok()
    }

    /// Waits until `GET /health` answers `{"health":"true"}`.
    ///
    /// # Errors
    ///
    /// The process exited, or it was not healthy within `timeout`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<(), HarnessError> {
        let addr = self.client_addr();
        self.process.wait_ready(timeout, || health(addr)).await
    }

    /// Requests this member has handled: the sum of `grpc_server_handled_total`
    /// over all methods and codes in `GET /metrics` (for benchmarks).
    ///
    /// # Errors
    ///
    /// The member does not answer, or its metrics have no such counter.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn requests_handled(&self) -> Result<u64, HarnessError> {
        let response = http::get(self.client_addr(), "/metrics").await?;
        if response.status != 200 {
            return Err(HarnessError::Protocol(format!(
                "{}: GET /metrics answered {}",
                self.process.label(),
                response.status
            )));
        }
        sum_metric(&response.body, "grpc_server_handled_total").ok_or_else(|| {
            HarnessError::Protocol(format!(
                "{}: /metrics has no grpc_server_handled_total",
                self.process.label()
            ))
        })
    }
}

/// A cluster of etcd members on loopback, each its own [`EtcdNode`].
///
/// Dropping it kills every member.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<EtcdNode>,
}

impl EtcdCluster {
    /// Starts an `n`-member cluster (use 3) and waits until every member is healthy.
    ///
    /// # Errors
    ///
    /// As for [`EtcdNode::start`].
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: processes started so far are killed when the future is dropped.
    pub async fn start(n: usize) -> Result<EtcdCluster, HarnessError> {
        assert!(n > 0, "an etcd cluster needs at least one member");
        let binary = etcd_binary()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let ports = free_ports(2 * n)?;
            let initial_cluster = (0..n)
                .map(|i| format!("n{}=http://127.0.0.1:{}", i + 1, ports[2 * i + 1]))
                .collect::<Vec<_>>()
                .join(",");
            let token = unique_name("etcd-cluster");
            let mut members = Vec::with_capacity(n);
            for i in 0..n {
                members.push(EtcdNode::spawn(
                    &binary,
                    &format!("n{}", i + 1),
                    ports[2 * i],
                    ports[2 * i + 1],
                    &initial_cluster,
                    &token,
                )?);
            }
            let cluster = EtcdCluster { members };
            match cluster.wait_healthy(start_timeout(READY_TIMEOUT)).await {
                Ok(()) => return Ok(cluster),
                Err(e @ HarnessError::Exited { .. }) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| HarnessError::Protocol("etcd cluster did not start".into())))
    }

    /// The client endpoints of all members, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdNode::endpoint).collect()
    }

    /// All members, `n1` first.
    pub fn members(&self) -> &[EtcdNode] {
        &self.members
    }

    /// Member `i` (0-based; its name is `n{i+1}`).
    ///
    /// # Panics
    ///
    /// If `i` is out of range.
    pub fn member(&self, i: usize) -> &EtcdNode {
        &self.members[i]
    }

    /// Waits until every running member is healthy.
    ///
    /// # Errors
    ///
    /// A member exited or was not healthy within `timeout` (each member gets `timeout`).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<(), HarnessError> {
        for member in self.members.iter().filter(|m| m.is_running()) {
            member.wait_healthy(timeout).await?;
        }
        Ok(())
    }

    /// Starts every stopped member again (same ports and data) and waits until
    /// all members are healthy: the way back from a full-cluster outage.
    ///
    /// # Errors
    ///
    /// As for [`EtcdNode::restart`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn restart_stopped(&self) -> Result<(), HarnessError> {
        for member in self.members.iter().filter(|m| !m.is_running()) {
            member.process.respawn()?;
        }
        self.wait_healthy(start_timeout(READY_TIMEOUT)).await
    }
}

async fn health(addr: SocketAddr) -> Result<(), String> {
    let response = http::get(addr, "/health")
        .await
        .map_err(|e| e.to_string())?;
    let compact: String = response
        .body
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if response.status == 200 && compact.contains(r#""health":"true""#) {
        Ok(())
    } else {
        Err(format!(
            "GET /health answered {} {}",
            response.status,
            response.body.trim()
        ))
    }
}

/// Sums every sample of the Prometheus metric `name` in `text`.
fn sum_metric(text: &str, name: &str) -> Option<u64> {
    let mut found = false;
    let mut sum = 0f64;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue; // a longer metric name sharing the prefix
        }
        if let Some(value) = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            found = true;
            sum += value;
        }
    }
    found.then_some(sum as u64)
}

fn etcd_binary() -> Result<PathBuf, HarnessError> {
    resolve_etcd_binary(std::env::var_os("LEASEHOLD_ETCD"))
}

fn resolve_etcd_binary(override_path: Option<OsString>) -> Result<PathBuf, HarnessError> {
    if let Some(path) = override_path {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(HarnessError::MissingBinary {
                what: "etcd".into(),
                looked: format!("LEASEHOLD_ETCD={}", path.display()),
                install: "apt-get install -y etcd-server etcd-client (or: bash scripts/setup)"
                    .into(),
            })
        };
    }
    find_on_path("etcd")
        .or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|p| p.is_file()))
        .ok_or_else(|| HarnessError::MissingBinary {
            what: "etcd".into(),
            looked: "PATH and /usr/bin/etcd".into(),
            install: "apt-get install -y etcd-server etcd-client (or: bash scripts/setup)".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_counter_over_its_labels() {
        let text = "# HELP grpc_server_handled_total x\n\
            # TYPE grpc_server_handled_total counter\n\
            grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\"} 7\n\
            grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\"} 3\n\
            grpc_server_handled_total_other 100\n\
            grpc_server_started_total{grpc_method=\"Put\"} 4\n";
        assert_eq!(sum_metric(text, "grpc_server_handled_total"), Some(10));
        assert_eq!(sum_metric(text, "nope"), None);
    }

    #[test]
    fn a_missing_binary_names_the_install_command() {
        let message = resolve_etcd_binary(Some("/nonexistent/etcd".into()))
            .expect_err("no binary there")
            .to_string();
        assert!(
            message.contains("apt-get install -y etcd-server"),
            "{message}"
        );
    }
}
