//! PostgreSQL and PgBouncer on loopback, from Debian's packages.
//!
//! `initdb`, `postgres` and `pgbouncer` refuse to run as root, so when the
//! tests run as root the harness runs them as the `postgres` user the
//! packages create, through `setpriv` (which execs: the pid the harness keeps
//! is the server's own, it is stopped by that pid, and its pid file records
//! the server's binary, not setpriv's, for `scripts/test`'s leftover check). The temporary
//! directory is handed to that user.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::process::{ServerProcess, free_ports, start_retrying, start_timeout};
use crate::{HarnessError, unique_name};

/// Debian's PostgreSQL 15 binaries.
pub const POSTGRES_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The install line for what these servers need.
const INSTALL: &str = "apt-get install -y postgresql-15 pgbouncer (or: bash scripts/setup)";

/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The superuser every harness server has.
pub const POSTGRES_USER: &str = "postgres";

/// How a [`PgServer`] is set up.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Password authentication (`scram-sha-256`) for every TCP connection,
    /// with this password for [`POSTGRES_USER`]; `None`: trust.
    pub password: Option<String>,
    /// TLS with a certificate for `localhost` and `127.0.0.1` signed by a CA
    /// the harness makes ([`PgServer::ca_path`]). Connections without TLS
    /// are still accepted unless [`tls_only`](Self::tls_only).
    pub tls: bool,
    /// Refuse connections without TLS (`hostssl` only).
    pub tls_only: bool,
    /// `max_connections`; `None`: 200.
    pub max_connections: Option<u32>,
}

/// The uid and gid of the `postgres` user, when the harness runs as root.
fn service_user() -> Result<Option<(u32, u32)>, HarnessError> {
    // /proc/self belongs to the process's effective user.
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !root {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| HarnessError::io("read /etc/passwd", e))?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&POSTGRES_USER) && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .map(Some)
        .ok_or_else(|| HarnessError::MissingBinary {
            what: "the `postgres` user (PostgreSQL refuses to run as root)".into(),
            looked: "/etc/passwd".into(),
            install: INSTALL.into(),
        })
}

fn binary(path: &str) -> Result<PathBuf, HarnessError> {
    let p = PathBuf::from(path);
    if p.is_file() {
        Ok(p)
    } else {
        Err(HarnessError::MissingBinary {
            what: p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            looked: path.into(),
            install: INSTALL.into(),
        })
    }
}

/// `program args` as the service user: through setpriv when root.
fn as_service_user(
    user: Option<(u32, u32)>,
    program: &Path,
    args: Vec<OsString>,
) -> Result<(PathBuf, Vec<OsString>), HarnessError> {
    match user {
        None => Ok((program.to_path_buf(), args)),
        Some((uid, gid)) => {
            let setpriv = binary("/usr/bin/setpriv")?;
            let mut all: Vec<OsString> = vec![
                format!("--reuid={uid}").into(),
                format!("--regid={gid}").into(),
                "--clear-groups".into(),
                "--".into(),
                program.as_os_str().to_owned(),
            ];
            all.extend(args);
            Ok((setpriv, all))
        }
    }
}

fn chown_tree(path: &Path, user: Option<(u32, u32)>) -> Result<(), HarnessError> {
    let Some((uid, gid)) = user else {
        return Ok(());
    };
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| HarnessError::io(format!("chown {}", path.display()), e))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)
            .map_err(|e| HarnessError::io(format!("read {}", path.display()), e))?
            .flatten()
        {
            chown_tree(&entry.path(), user)?;
        }
    }
    Ok(())
}

/// Run a short command to completion (initdb, openssl), with its output in
/// the error when it fails.
fn run_to_end(what: &str, program: &Path, args: &[OsString]) -> Result<(), HarnessError> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HarnessError::io(format!("run {}", program.display()), e))?;
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

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// A CA and a server certificate for `localhost` / `127.0.0.1`, made with
/// openssl in `dir`: (ca.crt, server.crt, server.key).
fn make_certificates(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), HarnessError> {
    let openssl =
        crate::process::find_on_path("openssl").ok_or_else(|| HarnessError::MissingBinary {
            what: "openssl".into(),
            looked: "PATH".into(),
            install: "apt-get install -y openssl".into(),
        })?;
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (ca_key, ca_crt, key, csr, crt, ext) = (
        p("ca.key"),
        p("ca.crt"),
        p("server.key"),
        p("server.csr"),
        p("server.crt"),
        p("server.ext"),
    );
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| HarnessError::io("write server.ext", e))?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=leasehold test CA",
    ];
    args.extend(ec);
    args.extend(["-keyout", &ca_key, "-out", &ca_crt]);
    run_to_end("openssl (CA)", &openssl, &os(&args))?;
    let mut args = vec!["req", "-subj", "/CN=localhost"];
    args.extend(ec);
    args.extend(["-keyout", &key, "-out", &csr]);
    run_to_end("openssl (server key)", &openssl, &os(&args))?;
    let args = [
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &csr,
        "-CA",
        &ca_crt,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-extfile",
        &ext,
        "-out",
        &crt,
    ];
    run_to_end("openssl (server certificate)", &openssl, &os(&args))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| HarnessError::io("chmod server.key", e))?;
    Ok((ca_crt.into(), crt.into(), key.into()))
}

async fn pg_isready(port: u16) -> Result<(), String> {
    let out = tokio::process::Command::new("pg_isready")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "2"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("pg_isready: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// A PostgreSQL 15 server of its own: `initdb` in a temporary directory,
/// `postgres` on a free loopback port, stopped by its pid on drop.
#[derive(Debug)]
pub struct PgServer {
    process: ServerProcess,
    port: u16,
    password: Option<String>,
    ca: Option<PathBuf>,
    data_dir: PathBuf,
    _dir: TempDir,
}

impl PgServer {
    /// A server that trusts every loopback connection, without TLS.
    ///
    /// # Errors
    /// PostgreSQL is not installed (the message gives the apt-get line), or
    /// it did not start (the message carries its log).
    ///
    /// # Cancel safety
    /// Cancel safe: a process started so far is stopped when dropped.
    pub async fn start() -> Result<PgServer, HarnessError> {
        Self::start_with(PgOptions::default()).await
    }

    /// A server set up as `options` say.
    ///
    /// # Errors
    /// As [`start`](Self::start); openssl failing to make the certificates.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn start_with(options: PgOptions) -> Result<PgServer, HarnessError> {
        let initdb = binary(&format!("{POSTGRES_BIN_DIR}/initdb"))?;
        let postgres = binary(&format!("{POSTGRES_BIN_DIR}/postgres"))?;
        let user = service_user()?;
        let dir = tempfile::Builder::new()
            .prefix("leasehold-postgres-")
            .tempdir()
            .map_err(|e| HarnessError::io("create a temp dir for postgres", e))?;
        let data_dir = dir.path().join("data");
        let mut init_args = os(&[
            "-D",
            &data_dir.to_string_lossy(),
            "-U",
            POSTGRES_USER,
            "--no-sync",
            "--no-instructions",
        ]);
        if let Some(pw) = &options.password {
            let pwfile = dir.path().join("pwfile");
            std::fs::write(&pwfile, format!("{pw}\n"))
                .map_err(|e| HarnessError::io("write the password file", e))?;
            init_args.extend(os(&["-A", "scram-sha-256", "--pwfile"]));
            init_args.push(pwfile.into_os_string());
        } else {
            init_args.extend(os(&["-A", "trust"]));
        }
        let certs = if options.tls || options.tls_only {
            Some(make_certificates(dir.path())?)
        } else {
            None
        };
        chown_tree(dir.path(), user)?;
        let (program, args) = as_service_user(user, &initdb, init_args)?;
        run_to_end("initdb", &program, &args)?;
        if options.tls_only {
            let method = if options.password.is_some() {
                "scram-sha-256"
            } else {
                "trust"
            };
            std::fs::write(
                data_dir.join("pg_hba.conf"),
                format!("local all all trust\nhostssl all all 127.0.0.1/32 {method}\n"),
            )
            .map_err(|e| HarnessError::io("write pg_hba.conf", e))?;
        }
        let (postgres, data, base, certs, max_connections) = (
            &postgres,
            &data_dir,
            dir.path(),
            &certs,
            options.max_connections.unwrap_or(200),
        );
        let (process, port) = start_retrying("postgres", move || async move {
            let port = free_ports(1)?[0];
            let mut pg_args = os(&[
                "-D",
                &data.to_string_lossy(),
                "-p",
                &port.to_string(),
                "-k",
                &base.to_string_lossy(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                &format!("max_connections={max_connections}"),
            ]);
            if let Some((_, crt, key)) = certs {
                pg_args.extend(os(&[
                    "-c",
                    "ssl=on",
                    "-c",
                    &format!("ssl_cert_file={}", crt.display()),
                    "-c",
                    &format!("ssl_key_file={}", key.display()),
                ]));
            }
            let (program, args) = as_service_user(user, postgres, pg_args)?;
            let process = ServerProcess::spawn_exec(
                format!("postgres {}", unique_name("pg")),
                &program,
                args,
                postgres,
                base.join("postgres.log"),
            )?;
            process
                .wait_ready(start_timeout(READY_TIMEOUT), || pg_isready(port))
                .await?;
            Ok((process, port))
        })
        .await?;
        Ok(PgServer {
            process,
            port,
            password: options.password.clone(),
            ca: certs.as_ref().map(|c| c.0.clone()),
            data_dir,
            _dir: dir,
        })
    }

    async fn wait_ready(&self) -> Result<(), HarnessError> {
        let port = self.port;
        self.process
            .wait_ready(start_timeout(READY_TIMEOUT), || pg_isready(port))
            .await
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address (for a [`Proxy`](crate::Proxy) target).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The superuser's password, when the server asks for one.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The CA certificate (PEM) that signed the server's, with TLS.
    pub fn ca_path(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// A `postgres://` URL of the `postgres` database for `election`
    /// (with the password when there is one), options appended as given
    /// (`"sslmode=disable"`).
    pub fn url(&self, election: &str, options: &str) -> String {
        url_for(self.port, self.password.as_deref(), election, options)
    }

    /// The pid of the postmaster.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Whether the postmaster runs.
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// Kill the postmaster (SIGKILL); its backends end when they notice.
    pub fn kill(&self) {
        self.process.kill();
    }

    /// A crash without the start: SIGQUIT (PostgreSQL's immediate shutdown;
    /// see [`restart`](Self::restart), which then waits for the server to
    /// be gone and starts it again). Unlike [`kill`](Self::kill) it leaves
    /// no backend holding the shared memory the next start needs.
    pub fn crash(&self) {
        if self.process.is_running() {
            self.process.signal(Signal::SIGQUIT);
        }
    }

    /// A crash and a start: SIGQUIT (PostgreSQL's immediate shutdown: every
    /// backend ends at once, no checkpoint, recovery at the next start),
    /// then the same server again on the same port and data.
    ///
    /// # Errors
    /// It did not stop within 10 s, or did not come back.
    ///
    /// # Cancel safety
    /// Cancel safe: the server keeps running if the wait is dropped.
    pub async fn restart(&self) -> Result<(), HarnessError> {
        if self.process.is_running() {
            self.process.signal(Signal::SIGQUIT);
            let started = Instant::now();
            while self.process.is_running() {
                if started.elapsed() > Duration::from_secs(10) {
                    return Err(HarnessError::Protocol(
                        "postgres did not stop within 10 s of SIGQUIT".into(),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.process.respawn()?;
        self.wait_ready().await
    }
}

fn url_for(port: u16, password: Option<&str>, election: &str, options: &str) -> String {
    let auth = match password {
        Some(pw) => format!("{POSTGRES_USER}:{pw}@"),
        None => format!("{POSTGRES_USER}@"),
    };
    let query = if options.is_empty() {
        String::new()
    } else {
        format!("?{options}")
    };
    format!("postgres://{auth}127.0.0.1:{port}/postgres/{election}{query}")
}

/// PgBouncer in front of a [`PgServer`], in transaction pooling mode.
#[derive(Debug)]
pub struct PgBouncer {
    process: ServerProcess,
    port: u16,
    _dir: TempDir,
}

impl PgBouncer {
    /// Start PgBouncer for `server`'s `postgres` database, transaction
    /// pooling, trust authentication (the server must trust too), at most
    /// `pool_size` server connections.
    ///
    /// # Errors
    /// PgBouncer is not installed (the message gives the apt-get line), or
    /// it did not start.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn start(server: &PgServer, pool_size: u32) -> Result<PgBouncer, HarnessError> {
        let pgbouncer = binary("/usr/sbin/pgbouncer")?;
        let user = service_user()?;
        let pgbouncer = &pgbouncer;
        start_retrying("pgbouncer", move || async move {
            let dir = tempfile::Builder::new()
                .prefix("leasehold-pgbouncer-")
                .tempdir()
                .map_err(|e| HarnessError::io("create a temp dir for pgbouncer", e))?;
            let port = free_ports(1)?[0];
            let d = dir.path().display();
            let ini = format!(
                "[databases]\n\
                 postgres = host=127.0.0.1 port={pg} dbname=postgres user={POSTGRES_USER}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {d}/users.txt\n\
                 pool_mode = transaction\n\
                 default_pool_size = {pool_size}\n\
                 max_client_conn = 500\n\
                 logfile = {d}/pgbouncer-own.log\n\
                 pidfile = {d}/pgbouncer.pid\n\
                 ignore_startup_parameters = extra_float_digits\n",
                pg = server.port()
            );
            std::fs::write(dir.path().join("pgbouncer.ini"), ini)
                .map_err(|e| HarnessError::io("write pgbouncer.ini", e))?;
            std::fs::write(
                dir.path().join("users.txt"),
                format!("\"{POSTGRES_USER}\" \"\"\n"),
            )
            .map_err(|e| HarnessError::io("write users.txt", e))?;
            chown_tree(dir.path(), user)?;
            let (program, args) = as_service_user(
                user,
                pgbouncer,
                vec![dir.path().join("pgbouncer.ini").into_os_string()],
            )?;
            let process = ServerProcess::spawn_exec(
                format!("pgbouncer {}", unique_name("pgb")),
                &program,
                args,
                pgbouncer,
                dir.path().join("pgbouncer.log"),
            )?;
            let bouncer = PgBouncer {
                process,
                port,
                _dir: dir,
            };
            bouncer
                .process
                .wait_ready(start_timeout(READY_TIMEOUT), || pg_isready(port))
                .await?;
            Ok(bouncer)
        })
        .await
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A `postgres://` URL through PgBouncer for `election`, options
    /// appended as given.
    pub fn url(&self, election: &str, options: &str) -> String {
        url_for(self.port, None, election, options)
    }

    /// The pid of PgBouncer.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}
