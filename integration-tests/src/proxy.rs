//! A fault-injecting TCP proxy between a client and a store.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the proxy does with the bytes of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward every byte as it comes.
    Pass,
    /// Forward each chunk read after this delay (latency, per direction).
    Delay(Duration),
    /// Accept connections but move no byte either way: nothing is read from
    /// either side, so the bytes wait in the kernel's buffers, as behind a
    /// network partition. New connections are accepted and held too.
    Blackhole,
}

/// A TCP proxy on a free 127.0.0.1 port that forwards to one target and can
/// delay, black-hole or reset its connections on command.
///
/// Point the client under test at [`addr`](Self::addr) instead of the store.
/// Every task stops, and every connection closes, when the proxy is dropped.
///
/// # Examples
///
/// ```no_run
/// # async fn example(store: std::net::SocketAddr) {
/// use leasehold_integration_tests::Proxy;
///
/// let proxy = Proxy::start(store).await;
/// let client_endpoint = format!("http://{}", proxy.addr());
/// proxy.blackhole(); // a partition: the client's requests go unanswered
/// proxy.heal(); // held connections carry bytes again
/// proxy.reset_all(); // every open connection is reset (RST)
/// # let _ = client_endpoint;
/// # }
/// ```
#[derive(Debug)]
pub struct Proxy {
    acceptor: Acceptor,
    target: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Open connections: id -> the token that resets it.
    connections: Mutex<HashMap<u64, CancellationToken>>,
    accepted: AtomicU64,
}

impl Shared {
    fn connections(&self) -> MutexGuard<'_, HashMap<u64, CancellationToken>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Proxy {
    /// Listens on a free 127.0.0.1 port and forwards every connection to
    /// `target`, in [`ProxyMode::Pass`].
    ///
    /// Must be called inside a tokio runtime; the proxy's tasks run on it.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound (the machine is out of ports).
    pub async fn start(target: SocketAddr) -> Proxy {
        let (mode, mode_rx) = watch::channel(ProxyMode::Pass);
        let shared = Arc::new(Shared::default());
        let mut next_id = 0u64;
        let serve = {
            let shared = Arc::clone(&shared);
            move |client, reset: CancellationToken| {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                let id = next_id;
                next_id += 1;
                shared.connections().insert(id, reset.clone());
                let shared = Arc::clone(&shared);
                let mode = mode_rx.clone();
                tokio::spawn(async move {
                    run_connection(client, target, mode, reset).await;
                    shared.connections().remove(&id);
                });
            }
        };
        Proxy {
            acceptor: Acceptor::start("the proxy", serve).await,
            target,
            mode,
            shared,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr()
    }

    /// The address the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    /// Sets the mode; it applies at once to open and new connections.
    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    /// Forwards every byte as it comes.
    pub fn pass(&self) {
        self.set_mode(ProxyMode::Pass);
    }

    /// Forwards each chunk after `delay`.
    pub fn delay(&self, delay: Duration) {
        self.set_mode(ProxyMode::Delay(delay));
    }

    /// Stops moving bytes both ways, holding connections open (a partition).
    pub fn blackhole(&self) {
        self.set_mode(ProxyMode::Blackhole);
    }

    /// Back to [`pass`](Self::pass): held connections carry their waiting bytes on.
    pub fn heal(&self) {
        self.pass();
    }

    /// Closes every open connection abruptly: both the client's and the
    /// target's side get a TCP reset (`SO_LINGER` 0). New connections are
    /// accepted as usual afterwards.
    pub fn reset_all(&self) {
        for token in self.shared.connections().values() {
            token.cancel();
        }
    }

    /// How many connections are open through the proxy now.
    pub fn connections(&self) -> usize {
        self.shared.connections().len()
    }

    /// How many connections the proxy has accepted since it started.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

/// A task accepting TCP connections on a free 127.0.0.1 port, for the
/// harness's proxies. Dropping it stops the task and cancels the token of
/// every connection it handed out.
#[derive(Debug)]
pub(crate) struct Acceptor {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Acceptor {
    /// Listens on a free 127.0.0.1 port and hands every connection (with
    /// `TCP_NODELAY` set) to `serve`, with a token of its own that is
    /// cancelled when the acceptor is dropped. `serve` must not block: it
    /// spawns what serves the connection. `what` names the owner in panics.
    ///
    /// Must be called inside a tokio runtime; the accept task runs on it.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound (the machine is out of ports).
    pub(crate) async fn start<F>(what: &str, mut serve: F) -> Acceptor
    where
        F: FnMut(TcpStream, CancellationToken) + Send + 'static,
    {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap_or_else(|e| panic!("bind {what} on 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{what}'s local address: {e}"));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => {
                            // Out of file descriptors or similar: back off instead of spinning.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = client.set_nodelay(true);
                serve(client, stop.child_token());
            }
        });
        Acceptor {
            addr,
            shutdown,
            task,
        }
    }

    /// The address clients connect to.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
    }
}

/// Serves one client connection until either side closes, an error, or `reset`.
async fn run_connection(
    mut client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<ProxyMode>,
    reset: CancellationToken,
) {
    // Connect to the target only once bytes may flow: a black-holed connection
    // reaches nothing behind the proxy.
    let connect = async {
        wait_forwarding(&mut mode).await.ok()?;
        TcpStream::connect(target).await.ok()
    };
    let mut upstream = tokio::select! {
        _ = reset.cancelled() => {
            abort(&client);
            return;
        }
        upstream = connect => match upstream {
            Some(upstream) => upstream,
            None => {
                // The target refuses: the client sees a reset, as it would directly.
                abort(&client);
                return;
            }
        },
    };
    let _ = upstream.set_nodelay(true);
    let outcome = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let both_ways = async {
            tokio::try_join!(
                pipe(client_read, upstream_write, mode.clone()),
                pipe(upstream_read, client_write, mode.clone()),
            )
        };
        tokio::select! {
            _ = reset.cancelled() => Err(()),
            result = both_ways => result.map(|_| ()).map_err(|_| ()),
        }
    };
    if outcome.is_err() {
        // Reset on command, or one side failed: tear both sides down abruptly.
        abort(&client);
        abort(&upstream);
    }
}

/// Arranges for `stream` to send RST instead of FIN when it is dropped.
fn abort(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Waits until the mode lets bytes through. Fails when the proxy is gone.
async fn wait_forwarding(mode: &mut watch::Receiver<ProxyMode>) -> Result<(), ()> {
    loop {
        if *mode.borrow_and_update() != ProxyMode::Blackhole {
            return Ok(());
        }
        mode.changed().await.map_err(|_| ())?;
    }
}

/// Copies `from` to `to` chunk by chunk, obeying the mode, until EOF (then
/// half-closes `to`) or an error.
async fn pipe(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut mode: watch::Receiver<ProxyMode>,
) -> std::io::Result<()> {
    let gone = || std::io::Error::other("the proxy was dropped");
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        wait_forwarding(&mut mode).await.map_err(|_| gone())?;
        // Read only while forwarding: if a black hole starts meanwhile, stop
        // reading (the read is cancel safe) and leave the bytes in the kernel.
        let read = tokio::select! {
            read = from.read(&mut buffer) => read?,
            changed = mode.changed() => {
                changed.map_err(|_| gone())?;
                continue;
            }
        };
        if read == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let current = *mode.borrow_and_update();
        match current {
            ProxyMode::Pass => {}
            ProxyMode::Delay(delay) => tokio::time::sleep(delay).await,
            // Read just before the black hole started: hold the chunk until healed.
            ProxyMode::Blackhole => wait_forwarding(&mut mode).await.map_err(|_| gone())?,
        }
        to.write_all(&buffer[..read]).await?;
    }
}
