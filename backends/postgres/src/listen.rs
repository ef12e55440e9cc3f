//! LISTEN/NOTIFY: one listening connection per table handle, shared by
//! every watch on it, started with the first watch and ended with the last.
//!
//! A notification only says "look again": every watch reads the row after
//! one (and when the listening connection is lost it answers an error, so
//! the engine re-opens it from a fresh read). A lease that expires without
//! a statement sends nothing; a watch therefore also looks again when the
//! holder's lease runs out, as the database counted it at the last read.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use leasehold_core::{Error, Result};
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;

use crate::conn::unavailable;
use crate::table::{Holder, LeaseTable, WeakTable};

/// What the listener tells its watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// `LISTEN` is in force (after a connect or reconnect): look again.
    Up,
    /// A notification with this payload (an election, or empty for all).
    Notify(String),
    /// The listening connection broke; notifications may have been missed.
    Down(String),
}

/// The shared listening connection of a table handle.
#[derive(Debug)]
pub(crate) struct Listener {
    channel: String,
    state: Mutex<Option<Running>>,
}

#[derive(Debug)]
struct Running {
    tx: broadcast::Sender<Event>,
    up: Arc<Mutex<bool>>,
    /// Cleared by the task when it ends.
    running: Arc<std::sync::atomic::AtomicBool>,
}

impl Listener {
    pub(crate) fn new(channel: String) -> Listener {
        Listener {
            channel,
            state: Mutex::new(None),
        }
    }

    /// Subscribe, starting the listening task if none runs. Returns the
    /// receiver and whether LISTEN is in force already.
    fn subscribe(&self, table: &LeaseTable) -> (broadcast::Receiver<Event>, bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = state.as_ref()
            && r.running.load(std::sync::atomic::Ordering::Acquire)
        {
            let up = *r.up.lock().unwrap_or_else(|e| e.into_inner());
            return (r.tx.subscribe(), up);
        }
        let (tx, rx) = broadcast::channel(1024);
        let up = Arc::new(Mutex::new(false));
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let task_tx = tx.downgrade();
        let task_running = running.clone();
        let (weak, channel, task_up) = (table.downgrade(), self.channel.clone(), up.clone());
        tokio::spawn(async move {
            run(weak, channel, task_tx, task_up).await;
            task_running.store(false, std::sync::atomic::Ordering::Release);
        });
        *state = Some(Running { tx, up, running });
        (rx, false)
    }
}

/// How long the listening connection stays open with no watch: the engine
/// opens a watch for each wait of a waiter, so the connection outlives the
/// gaps between them.
const IDLE: Duration = Duration::from_secs(30);

/// Keep a LISTEN connection while anyone watches: connect, `LISTEN`, pass
/// notifications on; after a failure, tell the watches and try again after
/// a pause (1 s). Ends when the table handle is gone, or when no watch has
/// been open for [`IDLE`] (checked every 2 s).
async fn run(
    table: WeakTable,
    channel: String,
    tx: broadcast::WeakSender<Event>,
    up: Arc<Mutex<bool>>,
) {
    let watched = Mutex::new(tokio::time::Instant::now());
    // Whether to go on: the table is there and a watch was open recently.
    let alive = || {
        let sender = tx.upgrade()?;
        let mut last = watched.lock().unwrap_or_else(|e| e.into_inner());
        if sender.receiver_count() > 0 {
            *last = tokio::time::Instant::now();
        }
        (last.elapsed() < IDLE).then_some(())
    };
    let send = |event: Event| {
        if let Some(s) = tx.upgrade() {
            let _ = s.send(event);
        }
    };
    let set_up = |v: bool| *up.lock().unwrap_or_else(|e| e.into_inner()) = v;
    let listen_sql = format!("LISTEN \"{channel}\"");
    loop {
        if alive().is_none() {
            return;
        }
        let Some(t) = table.upgrade() else { return };
        let connected = tokio::time::timeout(t.db().request_timeout(), t.db().connect_raw()).await;
        drop(t);
        let failure = match connected {
            Err(_) => "connecting timed out".to_owned(),
            Ok(Err(e)) => e.to_string(),
            Ok(Ok((client, mut connection))) => {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let listen = client.batch_execute(&listen_sql);
                tokio::pin!(listen);
                let mut listening = false;
                let mut tick = tokio::time::interval(Duration::from_secs(2));
                loop {
                    tokio::select! {
                        r = &mut listen, if !listening => match r {
                            Ok(()) => {
                                listening = true;
                                set_up(true);
                                send(Event::Up);
                            }
                            Err(e) => break format!("LISTEN: {e}"),
                        },
                        m = messages.next() => match m {
                            Some(Ok(AsyncMessage::Notification(n))) => {
                                send(Event::Notify(n.payload().to_owned()));
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => break e.to_string(),
                            None => break "the connection closed".to_owned(),
                        },
                        _ = tick.tick() => {
                            if alive().is_none() {
                                return;
                            }
                        }
                    }
                }
            }
        };
        set_up(false);
        tracing::debug!(target: "leasehold_postgres", "LISTEN {channel}: {failure}");
        send(Event::Down(failure));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A stream of an election's holder, woken by NOTIFY.
#[derive(Debug)]
pub struct Watch {
    table: LeaseTable,
    election: String,
    rx: broadcast::Receiver<Event>,
    /// A change was announced but not read yet (kept across a dropped call).
    dirty: bool,
    /// The first call answers at once.
    started: bool,
    /// When the holder's lease runs out (by the database's count at the
    /// last read), on this host's monotonic clock: only a time to look again.
    recheck: Option<tokio::time::Instant>,
}

impl LeaseTable {
    /// Watch the holder of `election` through LISTEN/NOTIFY.
    ///
    /// # Errors
    /// [`Error::NotSupported`] when the table was built with `listen` off.
    pub fn watch(&self, election: &str) -> Result<Watch> {
        let Some(listener) = self.listener() else {
            return Err(Error::NotSupported {
                operation: "watch (listen=false)",
                backend: crate::error::NAME,
            });
        };
        let (rx, _up) = listener.subscribe(self);
        Ok(Watch {
            table: self.clone(),
            election: election.to_owned(),
            rx,
            dirty: true,
            started: false,
            recheck: None,
        })
    }
}

impl Watch {
    /// The holder after the next change (the first call: the holder now).
    /// Changes may be reported more than once.
    ///
    /// # Errors
    /// The listening connection was lost (notifications may have been
    /// missed: open a new watch), or the read failed.
    ///
    /// # Cancel safety
    /// Cancel safe: a change announced before the call was dropped is read
    /// by the next call.
    pub async fn next(&mut self) -> Result<Option<Holder>> {
        if !self.started {
            self.started = true;
            self.dirty = true;
        }
        loop {
            if self.dirty {
                let found = self.table.lookup(&self.election).await?;
                self.dirty = false;
                self.recheck = found.holder.as_ref().map(|_| {
                    tokio::time::Instant::now() + found.remaining + Duration::from_millis(1)
                });
                return Ok(found.holder);
            }
            let expiry = async {
                match self.recheck {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = self.rx.recv() => match event {
                    Ok(Event::Notify(p)) if p.is_empty() || p == self.election => self.dirty = true,
                    Ok(Event::Notify(_)) => {}
                    Ok(Event::Up) => self.dirty = true,
                    Ok(Event::Down(why)) => {
                        self.dirty = true;
                        return Err(unavailable(format!("LISTEN connection lost: {why}")));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.dirty = true,
                    Err(broadcast::error::RecvError::Closed) => {
                        self.dirty = true;
                        return Err(unavailable("the LISTEN task ended"));
                    }
                },
                () = expiry => self.dirty = true,
            }
        }
    }
}
