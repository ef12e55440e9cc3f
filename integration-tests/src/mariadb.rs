//! MariaDB: one server on loopback, with its own data directory, optionally
//! with TLS from a CA the harness makes.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::HarnessError;
use crate::process::{ServerProcess, find_on_path, free_ports, start_retrying, start_timeout};

/// How long the server may take to answer a ping (override with `LEASEHOLD_START_TIMEOUT_SECS`).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

const INSTALL: &str = "apt-get install -y mariadb-server (or: bash scripts/setup)";

/// The files of a test certificate authority and the server's certificate.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate (PEM): what a client trusts.
    pub ca: PathBuf,
    /// The server's certificate (PEM), for `127.0.0.1` and `localhost`.
    pub server_cert: PathBuf,
    /// The server's private key (PEM).
    pub server_key: PathBuf,
}

/// One `mariadbd` process, started by the harness and killed (by pid) on drop.
///
/// Root has no password and reaches the server through its Unix socket
/// (what [`sql`](Self::sql) uses); clients under test use TCP on
/// [`addr`](Self::addr).
#[derive(Debug)]
pub struct MariaDb {
    process: ServerProcess,
    port: u16,
    socket: PathBuf,
    tls: Option<TlsFiles>,
    _dir: TempDir,
}

impl MariaDb {
    /// Starts MariaDB on a free loopback port and waits until it answers.
    ///
    /// # Errors
    ///
    /// MariaDB is not installed (the message names `apt-get install -y
    /// mariadb-server`), or it did not start (the message carries its log).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a process started so far is killed when the future is dropped.
    pub async fn start() -> Result<MariaDb, HarnessError> {
        Self::start_inner(false).await
    }

    /// As [`start`](Self::start), with TLS on: a CA and a server certificate
    /// made for this server ([`tls_files`](Self::tls_files)).
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start), and `openssl` failing.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn start_tls() -> Result<MariaDb, HarnessError> {
        Self::start_inner(true).await
    }

    async fn start_inner(tls: bool) -> Result<MariaDb, HarnessError> {
        let server = binary("mariadbd", &["/usr/sbin/mariadbd"])?;
        let install = binary("mariadb-install-db", &["/usr/bin/mariadb-install-db"])?;
        let (server, install) = (&server, &install);
        start_retrying("MariaDB", move || async move {
            let dir = tempfile::Builder::new()
                .prefix("leasehold-mariadb-")
                .tempdir()
                .map_err(|e| HarnessError::io("create a temp dir for MariaDB", e))?;
            let data = dir.path().join("data");
            // A temp dir of its own: concurrent bootstraps sharing /tmp
            // collide on their temporary tables ("Unknown table
            // 'mysql.tmp_user_sys'").
            let tmp = dir.path().join("tmp");
            std::fs::create_dir(&tmp)
                .map_err(|e| HarnessError::io("create MariaDB's tmpdir", e))?;
            let tmpdir = format!("--tmpdir={}", tmp.display());
            run(
                install,
                &[
                    "--no-defaults".as_ref(),
                    format!("--datadir={}", data.display()).as_ref(),
                    tmpdir.as_ref(),
                    "--user=root".as_ref(),
                    "--auth-root-authentication-method=normal".as_ref(),
                    "--skip-test-db".as_ref(),
                ],
                Some(&tmp),
                "mariadb-install-db",
            )
            .await?;
            let tls_files = if tls {
                Some(make_tls_files(dir.path()).await?)
            } else {
                None
            };
            let port = free_ports(1)?[0];
            let socket = dir.path().join("sock");
            let mut args: Vec<OsString> = vec![
                "--no-defaults".into(),
                "--user=root".into(),
                format!("--datadir={}", data.display()).into(),
                tmpdir.clone().into(),
                format!("--port={port}").into(),
                "--bind-address=127.0.0.1".into(),
                format!("--socket={}", socket.display()).into(),
                format!("--pid-file={}", dir.path().join("pid").display()).into(),
                "--skip-log-bin".into(),
                "--skip-name-resolve".into(),
                "--performance-schema=OFF".into(),
                "--innodb-buffer-pool-size=32M".into(),
                "--max-connections=1000".into(),
            ];
            if let Some(t) = &tls_files {
                args.push(format!("--ssl-ca={}", t.ca.display()).into());
                args.push(format!("--ssl-cert={}", t.server_cert.display()).into());
                args.push(format!("--ssl-key={}", t.server_key.display()).into());
            }
            let process =
                ServerProcess::spawn("mariadb", server, args, dir.path().join("mariadb.log"))?;
            let db = MariaDb {
                process,
                port,
                socket,
                tls: tls_files,
                _dir: dir,
            };
            db.wait_ready().await?;
            Ok(db)
        })
        .await
    }

    async fn wait_ready(&self) -> Result<(), HarnessError> {
        let socket = self.socket.clone();
        self.process
            .wait_ready(start_timeout(READY_TIMEOUT), || {
                let socket = socket.clone();
                async move { ping(&socket).await }
            })
            .await
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client address (for a [`Proxy`](crate::Proxy) target).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The TLS files, when started with [`start_tls`](Self::start_tls).
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The pid of the current process (after a restart, the new one).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The log file (stdout and stderr of every start).
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Runs `sql` as root over the Unix socket with the `mariadb` client;
    /// returns its output (tab-separated, no column names).
    ///
    /// # Errors
    ///
    /// The client is missing or the statement failed (the message carries
    /// the server's error).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (the client process is killed when dropped).
    pub async fn sql(&self, sql: &str) -> Result<String, HarnessError> {
        let client = binary("mariadb", &["/usr/bin/mariadb"])?;
        let out = tokio::process::Command::new(&client)
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "-N", "-B", "-e", sql])
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| HarnessError::io("run the mariadb client", e))?;
        if !out.status.success() {
            return Err(HarnessError::Protocol(format!(
                "mariadb -e {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates database `name` if it is missing.
    ///
    /// # Errors
    ///
    /// As [`sql`](Self::sql).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn create_database(&self, name: &str) -> Result<(), HarnessError> {
        self.sql(&format!("CREATE DATABASE IF NOT EXISTS `{name}`"))
            .await
            .map(|_| ())
    }

    /// Kills the server with SIGKILL and reaps it. A no-op if it is not running.
    pub fn kill(&self) {
        self.process.kill();
    }

    /// Freezes the server with SIGSTOP: connections stay open, nothing answers.
    ///
    /// # Panics
    ///
    /// If the process is not running.
    pub fn pause(&self) {
        self.process.signal(Signal::SIGSTOP);
    }

    /// Thaws a paused server with SIGCONT.
    ///
    /// # Panics
    ///
    /// If the process is not running.
    pub fn resume(&self) {
        self.process.signal(Signal::SIGCONT);
    }

    /// Kills the server (if running) and starts it again on the same port
    /// with the same data directory (crash recovery), then waits until it answers.
    ///
    /// # Errors
    ///
    /// It could not be spawned or did not answer in time.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the process keeps running if the wait is dropped.
    pub async fn restart(&self) -> Result<(), HarnessError> {
        self.process.respawn()?;
        self.wait_ready().await
    }
}

async fn ping(socket: &Path) -> Result<(), String> {
    let admin = binary("mariadb-admin", &["/usr/bin/mariadb-admin"]).map_err(|e| e.to_string())?;
    let out = tokio::process::Command::new(admin)
        .arg("--no-defaults")
        .arg(format!("--socket={}", socket.display()))
        .args(["-uroot", "--connect-timeout=2", "ping"])
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("run mariadb-admin: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mariadb-admin ping: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

async fn run(
    program: &Path,
    args: &[&std::ffi::OsStr],
    tmpdir: Option<&Path>,
    what: &str,
) -> Result<(), HarnessError> {
    let mut command = tokio::process::Command::new(program);
    if let Some(tmp) = tmpdir {
        command.env("TMPDIR", tmp);
    }
    let out = command
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| HarnessError::io(format!("run {what}"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Protocol(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// Makes a CA and a server certificate for 127.0.0.1 in `dir` with `openssl`.
async fn make_tls_files(dir: &Path) -> Result<TlsFiles, HarnessError> {
    let openssl = find_on_path("openssl").ok_or_else(|| HarnessError::MissingBinary {
        what: "openssl".into(),
        looked: "PATH".into(),
        install: "apt-get install -y openssl (or: bash scripts/setup)".into(),
    })?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| HarnessError::io("write server.ext", e))?;
    let p = |name: &str| dir.join(name).into_os_string();
    let ec: [OsString; 5] = [
        "-newkey".into(),
        "ec".into(),
        "-pkeyopt".into(),
        "ec_paramgen_curve:prime256v1".into(),
        "-nodes".into(),
    ];
    let mut ca: Vec<OsString> = [
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=leasehold-test-ca",
    ]
    .map(OsString::from)
    .to_vec();
    ca.extend(ec.iter().cloned());
    ca.extend(["-keyout".into(), p("ca.key"), "-out".into(), p("ca.crt")]);
    let mut req: Vec<OsString> = ["req", "-subj", "/CN=127.0.0.1"]
        .map(OsString::from)
        .to_vec();
    req.extend(ec.iter().cloned());
    req.extend([
        "-keyout".into(),
        p("server.key"),
        "-out".into(),
        p("server.csr"),
    ]);
    let sign: Vec<OsString> = vec![
        "x509".into(),
        "-req".into(),
        "-in".into(),
        p("server.csr"),
        "-CA".into(),
        p("ca.crt"),
        "-CAkey".into(),
        p("ca.key"),
        "-CAcreateserial".into(),
        "-days".into(),
        "2".into(),
        "-extfile".into(),
        p("server.ext"),
        "-out".into(),
        p("server.crt"),
    ];
    for args in [ca, req, sign] {
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        run(&openssl, &refs, None, "openssl").await?;
    }
    Ok(TlsFiles {
        ca: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    })
}

fn binary(name: &str, fallbacks: &[&str]) -> Result<PathBuf, HarnessError> {
    find_on_path(name)
        .or_else(|| fallbacks.iter().map(PathBuf::from).find(|p| p.is_file()))
        .ok_or_else(|| HarnessError::MissingBinary {
            what: name.into(),
            looked: format!("PATH and {}", fallbacks.join(", ")),
            install: INSTALL.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_install_command() {
        let message = binary("leasehold-no-such-mariadbd", &["/nonexistent/mariadbd"])
            .expect_err("no binary there")
            .to_string();
        assert!(
            message.contains("apt-get install -y mariadb-server"),
            "{message}"
        );
    }
}
