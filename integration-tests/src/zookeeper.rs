//! ZooKeeper: a standalone server or an ensemble on loopback.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::HarnessError;
use crate::process::{START_ATTEMPTS, ServerProcess, find_on_path, free_ports, start_timeout};
use crate::proxy::Proxy;

/// The `tickTime` every harness ZooKeeper runs with. ZooKeeper clamps session
/// timeouts to 2..20 ticks, so sessions of 1 s to 10 s are allowed.
pub const ZK_TICK_TIME: Duration = Duration::from_millis(500);

/// How long a server may take to serve (override with `LEASEHOLD_START_TIMEOUT_SECS`).
/// A JVM on two busy cores is slow to start; an ensemble must also elect a leader.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one four-letter-word exchange may take.
const FOUR_LETTER_TIMEOUT: Duration = Duration::from_secs(3);

const INSTALL: &str = "apt-get install -y zookeeper default-jre-headless (or: bash scripts/setup)";

/// Dependency jars of Debian's `zookeeper.jar`, added to the classpath when present
/// (its manifest names most of them too; `slf4j-simple` is the logging binding).
const DEPENDENCY_JARS: &[&str] = &[
    "zookeeper-jute.jar",
    "slf4j-api.jar",
    "slf4j-simple.jar",
    "netty-buffer.jar",
    "netty-codec.jar",
    "netty-common.jar",
    "netty-handler.jar",
    "netty-resolver.jar",
    "netty-transport.jar",
    "netty-transport-native-unix-common.jar",
    "netty-transport-native-epoll.jar",
    "commons-cli.jar",
    "commons-io.jar",
    "jackson-annotations.jar",
    "jackson-core.jar",
    "jackson-databind.jar",
    "metrics-core.jar",
    "snappy-java.jar",
];

/// One ZooKeeper server process, started by the harness and killed (by pid) on drop.
///
/// Alone ([`ZkServer::start`]) it runs standalone; inside a [`ZkEnsemble`] it is
/// one quorum peer. Its config, data directory and log live in a temporary
/// directory removed on drop.
#[derive(Debug)]
pub struct ZkServer {
    process: ServerProcess,
    id: usize,
    client_port: u16,
    standalone: bool,
    data_dir: PathBuf,
    _dir: TempDir,
}

impl ZkServer {
    /// Starts a standalone ZooKeeper (`tickTime` = [`ZK_TICK_TIME`]) on a free
    /// loopback port and waits until `ruok` answers `imok` and `srvr` reports
    /// `Mode: standalone`.
    ///
    /// # Errors
    ///
    /// Java or Debian's ZooKeeper jars are missing (the message names the
    /// install command), or the server did not serve in time (the message
    /// carries its log tail).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a process started so far is killed when the future is dropped.
    pub async fn start() -> Result<ZkServer, HarnessError> {
        let java = java_binary()?;
        let classpath = classpath()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let ports = free_ports(1)?;
            let server = ZkServer::spawn(&java, &classpath, 1, ports[0], None)?;
            match server.wait_serving(start_timeout(READY_TIMEOUT)).await {
                Ok(()) => return Ok(server),
                Err(e @ HarnessError::Exited { .. }) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| HarnessError::Protocol("zookeeper did not start".into())))
    }

    /// Writes the config and starts the JVM. `peers` is `None` for a standalone
    /// server, else the `server.N=...` lines of the ensemble.
    fn spawn(
        java: &Path,
        classpath: &str,
        id: usize,
        client_port: u16,
        peers: Option<&str>,
    ) -> Result<ZkServer, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("leasehold-zk-{id}-"))
            .tempdir()
            .map_err(|e| HarnessError::io("create a temp dir for zookeeper", e))?;
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| HarnessError::io("create the zookeeper data dir", e))?;
        let mut config = format!(
            "tickTime={}\n\
             initLimit=20\n\
             syncLimit=10\n\
             dataDir={}\n\
             clientPort={client_port}\n\
             clientPortAddress=127.0.0.1\n\
             admin.enableServer=false\n\
             4lw.commands.whitelist=ruok,srvr,stat,mntr\n\
             maxClientCnxns=0\n",
            ZK_TICK_TIME.as_millis(),
            data_dir.display()
        );
        let main_class = match peers {
            Some(peers) => {
                config.push_str(peers);
                std::fs::write(data_dir.join("myid"), format!("{id}\n"))
                    .map_err(|e| HarnessError::io("write the zookeeper myid file", e))?;
                "org.apache.zookeeper.server.quorum.QuorumPeerMain"
            }
            None => "org.apache.zookeeper.server.ZooKeeperServerMain",
        };
        let config_path = dir.path().join("zoo.cfg");
        std::fs::write(&config_path, config).map_err(|e| HarnessError::io("write zoo.cfg", e))?;
        let args: Vec<OsString> = vec![
            "-Xmx256m".into(),
            // One GC thread and the quick JIT tier: faster start on two shared cores.
            "-XX:+UseSerialGC".into(),
            "-XX:TieredStopAtLevel=1".into(),
            "-Djava.net.preferIPv4Stack=true".into(),
            "-Dzookeeper.snapshot.trust.empty=true".into(),
            "-Dorg.slf4j.simpleLogger.showDateTime=true".into(),
            "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS".into(),
            "-cp".into(),
            classpath.into(),
            main_class.into(),
            config_path.into_os_string(),
        ];
        let process = ServerProcess::spawn(
            format!("zookeeper {id}"),
            java,
            args,
            dir.path().join("zookeeper.log"),
        )?;
        Ok(ZkServer {
            process,
            id,
            client_port,
            standalone: peers.is_none(),
            data_dir,
            _dir: dir,
        })
    }

    /// The connect string of this server alone, `127.0.0.1:PORT`.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Same as [`connect_string`](Self::connect_string): `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.connect_string()
    }

    /// The client address (for a [`Proxy`](crate::Proxy) target).
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.client_port))
    }

    /// The server id (`myid`): 1 for a standalone server, 1..=n in an ensemble.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The pid of the current JVM (after a restart, the new one).
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

    /// The log file: stdout and stderr of every start of this server.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Kills the JVM with SIGKILL and reaps it. A no-op if it is not running.
    pub fn kill(&self) {
        self.process.kill();
    }

    /// Freezes the JVM with SIGSTOP: its sockets stay open but nothing answers.
    /// Returns once every thread of the process has stopped.
    ///
    /// # Panics
    ///
    /// If the process is not running.
    pub fn pause(&self) {
        self.process.signal(Signal::SIGSTOP);
    }

    /// Thaws a paused JVM with SIGCONT.
    ///
    /// # Panics
    ///
    /// If the process is not running.
    pub fn resume(&self) {
        self.process.signal(Signal::SIGCONT);
    }

    /// Kills the JVM (if running) and starts it again with the same config,
    /// ports and data, then waits until it serves (an ensemble member needs a
    /// quorum of running peers for that).
    ///
    /// # Errors
    ///
    /// The process could not be spawned or did not serve in time.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the process keeps running if the wait is dropped.
    pub async fn restart(&self) -> Result<(), HarnessError> {
        self.process.respawn()?;
        self.wait_serving(start_timeout(READY_TIMEOUT)).await
    }

    /// Sends a four-letter command (`ruok`, `srvr`, `stat`, `mntr`) and returns the answer.
    ///
    /// # Errors
    ///
    /// The server does not answer within a few seconds.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn four_letter(&self, command: &str) -> Result<String, HarnessError> {
        four_letter_word(self.client_addr(), command).await
    }

    /// The server's mode from `srvr`: `standalone`, `leader` or `follower`.
    ///
    /// # Errors
    ///
    /// The server does not answer, or it is not serving (for an ensemble
    /// member: it has no quorum).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn mode(&self) -> Result<String, HarnessError> {
        let answer = self.four_letter("srvr").await?;
        parse_mode(&answer).map(str::to_string).ok_or_else(|| {
            HarnessError::Protocol(format!(
                "zookeeper {} is not serving; srvr answered: {}",
                self.id,
                answer.trim()
            ))
        })
    }

    /// Waits until `ruok` answers `imok` and `srvr` shows the server serving
    /// (`standalone`, or `leader` / `follower` in an ensemble).
    ///
    /// # Errors
    ///
    /// The process exited, or it was not serving within `timeout`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_serving(&self, timeout: Duration) -> Result<(), HarnessError> {
        let addr = self.client_addr();
        let standalone = self.standalone;
        self.process
            .wait_ready(timeout, || serving(addr, standalone))
            .await
    }

    /// Packets this server has received: `zk_packets_received` from `mntr`
    /// (for benchmarks).
    ///
    /// # Errors
    ///
    /// The server does not answer, or `mntr` has no such line.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn packets_received(&self) -> Result<u64, HarnessError> {
        let answer = self.four_letter("mntr").await?;
        parse_mntr(&answer, "zk_packets_received").ok_or_else(|| {
            HarnessError::Protocol(format!(
                "zookeeper {}: mntr has no zk_packets_received: {}",
                self.id,
                answer.trim()
            ))
        })
    }
}

/// A ZooKeeper ensemble on loopback (`QuorumPeerMain` with `myid` files), each
/// member its own [`ZkServer`]. Dropping it kills every member.
#[derive(Debug)]
pub struct ZkEnsemble {
    members: Vec<ZkServer>,
    /// With [`ZkEnsemble::start_with_peer_proxies`]: the fault proxies every
    /// member reaches every other member's quorum and election ports through.
    peer_links: Vec<PeerLink>,
}

/// The two proxies member `from` reaches member `to` through (its quorum and
/// its leader-election port).
#[derive(Debug)]
struct PeerLink {
    from: usize,
    to: usize,
    quorum: Proxy,
    election: Proxy,
}

impl ZkEnsemble {
    /// Starts an `n`-member ensemble (use 3) and waits until every member is
    /// a leader or a follower.
    ///
    /// # Errors
    ///
    /// As for [`ZkServer::start`].
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: processes started so far are killed when the future is dropped.
    pub async fn start(n: usize) -> Result<ZkEnsemble, HarnessError> {
        ZkEnsemble::start_inner(n, false).await
    }

    /// Like [`start`](Self::start), but every member reaches every other
    /// member's quorum and leader-election ports through a fault
    /// [`Proxy`] of its own (each member's `zoo.cfg` names the proxies for its
    /// peers), so that [`isolate`](Self::isolate) can cut one member off from
    /// its peers while its clients stay connected to it. The proxies run on
    /// the caller's tokio runtime.
    ///
    /// # Errors
    ///
    /// As for [`ZkServer::start`].
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: processes started so far are killed when the future is dropped.
    pub async fn start_with_peer_proxies(n: usize) -> Result<ZkEnsemble, HarnessError> {
        ZkEnsemble::start_inner(n, true).await
    }

    async fn start_inner(n: usize, proxied: bool) -> Result<ZkEnsemble, HarnessError> {
        assert!(n > 0, "a zookeeper ensemble needs at least one member");
        let java = java_binary()?;
        let classpath = classpath()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            // Per member: client, quorum and leader-election ports.
            let ports = free_ports(3 * n)?;
            let real = |i: usize| (ports[3 * i + 1], ports[3 * i + 2]);
            let mut peer_links = Vec::new();
            if proxied {
                for from in 0..n {
                    for to in (0..n).filter(|&to| to != from) {
                        let (quorum, election) = real(to);
                        peer_links.push(PeerLink {
                            from,
                            to,
                            quorum: Proxy::start(loopback(quorum)).await,
                            election: Proxy::start(loopback(election)).await,
                        });
                    }
                }
            }
            // Member `from`'s view of member `to`: its own ports for itself,
            // the proxies of the link otherwise.
            let ports_seen = |from: usize, to: usize| -> (u16, u16) {
                peer_links
                    .iter()
                    .find(|l| l.from == from && l.to == to)
                    .map_or(real(to), |l| {
                        (l.quorum.addr().port(), l.election.addr().port())
                    })
            };
            let mut members = Vec::with_capacity(n);
            for i in 0..n {
                let peers: String = (0..n)
                    .map(|to| {
                        let (quorum, election) = ports_seen(i, to);
                        format!("server.{}=127.0.0.1:{quorum}:{election}\n", to + 1)
                    })
                    .collect();
                members.push(ZkServer::spawn(
                    &java,
                    &classpath,
                    i + 1,
                    ports[3 * i],
                    Some(&peers),
                )?);
            }
            let ensemble = ZkEnsemble {
                members,
                peer_links,
            };
            match ensemble.wait_serving(start_timeout(READY_TIMEOUT)).await {
                Ok(()) => return Ok(ensemble),
                Err(e @ HarnessError::Exited { .. }) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| HarnessError::Protocol("zookeeper ensemble did not start".into())))
    }

    /// The connect string of all members, `127.0.0.1:P1,127.0.0.1:P2,...`.
    pub fn connect_string(&self) -> String {
        self.members
            .iter()
            .map(ZkServer::connect_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// All members, id 1 first.
    pub fn members(&self) -> &[ZkServer] {
        &self.members
    }

    /// Member `i` (0-based; its id is `i + 1`).
    ///
    /// # Panics
    ///
    /// If `i` is out of range.
    pub fn member(&self, i: usize) -> &ZkServer {
        &self.members[i]
    }

    /// The member that currently reports `Mode: leader`, if any.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn leader(&self) -> Option<&ZkServer> {
        for member in self.members.iter().filter(|m| m.is_running()) {
            if member.mode().await.ok().as_deref() == Some("leader") {
                return Some(member);
            }
        }
        None
    }

    /// Waits until every running member is a leader or a follower.
    ///
    /// # Errors
    ///
    /// A member exited or was not serving within `timeout` (each member gets `timeout`).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn wait_serving(&self, timeout: Duration) -> Result<(), HarnessError> {
        for member in self.members.iter().filter(|m| m.is_running()) {
            member.wait_serving(timeout).await?;
        }
        Ok(())
    }

    /// Starts every stopped member again (same config and data) and waits until
    /// all members serve: the way back from a full-ensemble outage.
    ///
    /// # Errors
    ///
    /// As for [`ZkServer::restart`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn restart_stopped(&self) -> Result<(), HarnessError> {
        for member in self.members.iter().filter(|m| !m.is_running()) {
            member.process.respawn()?;
        }
        self.wait_serving(start_timeout(READY_TIMEOUT)).await
    }

    /// Cuts member `i` (0-based) off from its peers: every proxy on a link
    /// from or to it black-holes (a partition; connections stay open, no
    /// byte moves). Its clients stay connected to it; it keeps answering
    /// them from its own copy until it gives up on the ensemble's leader
    /// (after `syncLimit` x `tickTime`).
    ///
    /// # Panics
    ///
    /// If the ensemble was not started with
    /// [`start_with_peer_proxies`](Self::start_with_peer_proxies), or `i` is
    /// out of range.
    pub fn isolate(&self, i: usize) {
        self.peer_links_of(i).for_each(|l| {
            l.quorum.blackhole();
            l.election.blackhole();
        });
    }

    /// Undoes [`isolate`](Self::isolate): the links of member `i` carry bytes again.
    ///
    /// # Panics
    ///
    /// As for [`isolate`](Self::isolate).
    pub fn reconnect(&self, i: usize) {
        self.peer_links_of(i).for_each(|l| {
            l.quorum.heal();
            l.election.heal();
        });
    }

    fn peer_links_of(&self, i: usize) -> impl Iterator<Item = &PeerLink> {
        assert!(
            !self.peer_links.is_empty(),
            "isolate/reconnect need an ensemble from ZkEnsemble::start_with_peer_proxies"
        );
        assert!(i < self.members.len(), "no member {i}");
        self.peer_links
            .iter()
            .filter(move |l| l.from == i || l.to == i)
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Creates `path` and its missing parents (persistent, open ACL) on the
/// ZooKeeper at `connect_string`, as an operator creates a chroot
/// (`zkCli.sh create /apps`) before pointing leasehold at it.
///
/// # Errors
///
/// The server cannot be reached or refuses the creation.
///
/// # Cancel safety
///
/// Cancel safe; a dropped call may have created some of the nodes.
pub async fn create_zk_path(connect_string: &str, path: &str) -> Result<(), HarnessError> {
    use leasehold_zookeeper::zookeeper_client as zk;
    let work = async {
        let client = zk::Client::connect(connect_string)
            .await
            .map_err(|e| format!("connect to {connect_string}: {e}"))?;
        let mode = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        client
            .mkdir(path, &mode)
            .await
            .map_err(|e| format!("create {path}: {e}"))
    };
    match tokio::time::timeout(Duration::from_secs(20), work).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(HarnessError::Protocol(format!("zookeeper: {message}"))),
        Err(_) => Err(HarnessError::Protocol(format!(
            "zookeeper: creating {path} on {connect_string} took over 20s"
        ))),
    }
}

/// Sends a ZooKeeper four-letter command to `addr` and returns the whole answer.
///
/// # Errors
///
/// The connection fails, or the server does not answer within a few seconds.
///
/// # Cancel safety
///
/// Cancel safe.
pub async fn four_letter_word(addr: SocketAddr, command: &str) -> Result<String, HarnessError> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(command.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(FOUR_LETTER_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => Ok(String::from_utf8_lossy(&answer).into_owned()),
        Ok(Err(e)) => Err(HarnessError::io(
            format!("zookeeper {command} on {addr}"),
            e,
        )),
        Err(_) => Err(HarnessError::Protocol(format!(
            "zookeeper {command} on {addr}: no answer within {FOUR_LETTER_TIMEOUT:?}"
        ))),
    }
}

async fn serving(addr: SocketAddr, standalone: bool) -> Result<(), String> {
    let ruok = four_letter_word(addr, "ruok")
        .await
        .map_err(|e| e.to_string())?;
    if ruok.trim() != "imok" {
        return Err(format!("ruok answered {:?}", ruok.trim()));
    }
    let srvr = four_letter_word(addr, "srvr")
        .await
        .map_err(|e| e.to_string())?;
    match (parse_mode(&srvr), standalone) {
        (Some("standalone"), true) | (Some("leader" | "follower"), false) => Ok(()),
        _ => Err(format!("srvr answered {:?}", srvr.trim())),
    }
}

fn parse_mode(srvr: &str) -> Option<&str> {
    srvr.lines()
        .find_map(|line| line.strip_prefix("Mode:"))
        .map(str::trim)
}

fn parse_mntr(mntr: &str, key: &str) -> Option<u64> {
    mntr.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next() == Some(key))
            .then(|| fields.next()?.parse().ok())
            .flatten()
    })
}

/// The java binary and the ZooKeeper class path the harness starts servers
/// with, for tools that start ZooKeeper themselves (the chaos suite starts
/// ensemble members in network namespaces of their own).
///
/// # Errors
///
/// Java or ZooKeeper is not installed; the message says how to install them.
pub fn zookeeper_java() -> Result<(PathBuf, String), HarnessError> {
    Ok((java_binary()?, classpath()?))
}

fn java_binary() -> Result<PathBuf, HarnessError> {
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        let java = PathBuf::from(home).join("bin/java");
        if java.is_file() {
            return Ok(java);
        }
    }
    find_on_path("java").ok_or_else(|| HarnessError::MissingBinary {
        what: "java".into(),
        looked: "$JAVA_HOME/bin/java and PATH".into(),
        install: INSTALL.into(),
    })
}

/// `LEASEHOLD_ZOOKEEPER_CLASSPATH` if set, else Debian's `zookeeper.jar` plus
/// those of its dependency jars that exist in `/usr/share/java`.
fn classpath() -> Result<String, HarnessError> {
    if let Ok(classpath) = std::env::var("LEASEHOLD_ZOOKEEPER_CLASSPATH") {
        return Ok(classpath);
    }
    let java_dir = Path::new("/usr/share/java");
    let zookeeper = java_dir.join("zookeeper.jar");
    if !zookeeper.is_file() {
        return Err(HarnessError::MissingBinary {
            what: "ZooKeeper".into(),
            looked: zookeeper.display().to_string(),
            install: INSTALL.into(),
        });
    }
    let mut jars = vec![zookeeper];
    jars.extend(
        DEPENDENCY_JARS
            .iter()
            .map(|jar| java_dir.join(jar))
            .filter(|jar| jar.is_file()),
    );
    Ok(jars
        .iter()
        .map(|jar| jar.display().to_string())
        .collect::<Vec<_>>()
        .join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mode_and_mntr() {
        let srvr = "Zookeeper version: 3.8.0\nLatency min/avg/max: 0/0.0/0\nMode: follower\nNode count: 5\n";
        assert_eq!(parse_mode(srvr), Some("follower"));
        assert_eq!(
            parse_mode("This ZooKeeper instance is not currently serving requests"),
            None
        );
        let mntr = "zk_version\t3.8.0\nzk_packets_received\t42\nzk_packets_sent\t41\n";
        assert_eq!(parse_mntr(mntr, "zk_packets_received"), Some(42));
        assert_eq!(parse_mntr(mntr, "zk_nope"), None);
    }
}
