//! The lease table and its statements, apart from the engine's traits.
//!
//! One row per election. Every change of ownership is one statement that
//! lands only on the condition it states, judged by the database inside the
//! statement (row lock, then the condition evaluated on the newest row
//! version), never a read followed by a blind write:
//!
//! * **acquire**: `INSERT ... ON CONFLICT (election) DO UPDATE ... WHERE
//!   released OR expires_at <= clock_timestamp() OR owner = ANY(ghosts)`,
//!   with a new token from the table's sequence (`nextval`);
//! * **renew**: `UPDATE ... WHERE election, owner and token match AND NOT
//!   released AND expires_at > clock_timestamp()`, for any number of rows at
//!   once (`unnest` of arrays): concurrent renewals share one statement;
//! * **release**: `UPDATE ... SET released = true WHERE election, owner and
//!   token match`; the row stays (its token came from the sequence anyway).
//!
//! Acquire and release also `pg_notify` the table's channel with the
//! election's name, in the same statement (delivered when it commits).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold_core::{Error, Result};
use tokio::sync::oneshot;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::config::Names;
use crate::conn::Db;
use crate::error::NAME;
use crate::listen::Listener;

/// At most this many renewals go in one statement.
const MAX_BATCH: usize = 1000;

/// At most this many unresolved acquisitions are remembered per candidate.
const MAX_GHOSTS: usize = 8;

/// A term this process holds: what renew and release need.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Term {
    /// The election.
    pub election: String,
    /// The random identity written into the row with the term; only this
    /// process knows it.
    pub owner: String,
    /// The fencing token (from the sequence).
    pub token: u64,
    /// The row's version after the last write of this term.
    pub version: i64,
}

/// Who holds an election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The candidate id.
    pub id: String,
    /// Its value.
    pub value: Vec<u8>,
    /// Its fencing token.
    pub token: u64,
}

/// The answer of [`LeaseTable::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This candidate leads with this term.
    Won(Term),
    /// Someone else leads.
    Held {
        /// The holder, when the row says (a row freed in the same instant
        /// reads as no holder).
        holder: Option<Holder>,
        /// The row's version (0: no row).
        version: i64,
    },
}

/// The current holder, and how long the database gives its lease yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The holder, `None` when the row is missing, released or expired.
    pub holder: Option<Holder>,
    /// Time left on the holder's lease by the database's clock (zero
    /// without a holder); a hint of when to look again, never compared with
    /// another clock.
    pub remaining: Duration,
}

/// A random owner identity: 128 bits, hex.
fn new_owner() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness (never on Linux): fall back to time and address
        // entropy, still unique per process and term.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mix =
            nanos ^ ((&bytes as *const _ as usize as u128) << 64) ^ u128::from(std::process::id());
        bytes = mix.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The statements, with the names filled in.
#[derive(Debug)]
struct Sql {
    acquire: String,
    renew: String,
    release: String,
    leader: String,
    ddl: String,
    exists: String,
}

impl Sql {
    fn new(n: &Names) -> Sql {
        let (t, s, ch) = (&n.table, &n.sequence, &n.channel);
        // The payload is the election's name when it fits NOTIFY's limit
        // (8000 bytes); an empty payload wakes every waiter of the table.
        let payload = "CASE WHEN octet_length($1) <= 4000 THEN $1 ELSE '' END";
        Sql {
            acquire: format!(
                "WITH acq AS (\
                 INSERT INTO {t} AS l (election, holder, owner, value, token, version, ttl_ms, acquired_at, renewed_at, expires_at, released) \
                 VALUES ($1, $2, $3, $4, nextval('{s}'), 1, $5, clock_timestamp(), clock_timestamp(), clock_timestamp() + $5 * interval '1 millisecond', false) \
                 ON CONFLICT (election) DO UPDATE SET holder = excluded.holder, owner = excluded.owner, value = excluded.value, \
                 token = excluded.token, version = l.version + 1, ttl_ms = excluded.ttl_ms, acquired_at = excluded.acquired_at, \
                 renewed_at = excluded.renewed_at, expires_at = excluded.expires_at, released = false \
                 WHERE l.released OR l.expires_at <= clock_timestamp() OR l.owner = ANY($6) \
                 RETURNING l.token, l.version) \
                 SELECT true AS won, a.token, a.version, NULL::text AS holder, NULL::bytea AS value FROM acq a \
                 CROSS JOIN LATERAL (SELECT pg_notify('{ch}', {payload})) n \
                 UNION ALL \
                 SELECT false, c.token, c.version, \
                 CASE WHEN c.released OR c.expires_at <= clock_timestamp() THEN NULL ELSE c.holder END, c.value \
                 FROM {t} c WHERE c.election = $1 AND NOT EXISTS (SELECT 1 FROM acq)"
            ),
            renew: format!(
                "UPDATE {t} AS l SET version = l.version + 1, renewed_at = clock_timestamp(), \
                 expires_at = clock_timestamp() + l.ttl_ms * interval '1 millisecond' \
                 FROM unnest($1::text[], $2::text[], $3::int8[]) AS r(election, owner, token) \
                 WHERE l.election = r.election AND l.owner = r.owner AND l.token = r.token \
                 AND NOT l.released AND l.expires_at > clock_timestamp() \
                 RETURNING l.election, l.owner, l.version"
            ),
            release: format!(
                "WITH rel AS (UPDATE {t} SET released = true, version = version + 1, expires_at = clock_timestamp() \
                 WHERE election = $1 AND owner = $2 AND token = $3 AND NOT released RETURNING version) \
                 SELECT r.version FROM rel r CROSS JOIN LATERAL (SELECT pg_notify('{ch}', {payload})) n"
            ),
            leader: format!(
                "SELECT holder, value, token, \
                 GREATEST(0, ceil(extract(epoch FROM expires_at - clock_timestamp()) * 1000))::int8 \
                 FROM {t} WHERE election = $1 AND NOT released AND expires_at > clock_timestamp()"
            ),
            ddl: format!(
                "CREATE SEQUENCE IF NOT EXISTS {s};\n\
                 CREATE TABLE IF NOT EXISTS {t} (\n    \
                 election    text PRIMARY KEY,\n    \
                 holder      text NOT NULL,\n    \
                 owner       text NOT NULL,\n    \
                 value       bytea NOT NULL,\n    \
                 token       bigint NOT NULL,\n    \
                 version     bigint NOT NULL,\n    \
                 ttl_ms      bigint NOT NULL,\n    \
                 acquired_at timestamptz NOT NULL,\n    \
                 renewed_at  timestamptz NOT NULL,\n    \
                 expires_at  timestamptz NOT NULL,\n    \
                 released    boolean NOT NULL\n);"
            ),
            exists: "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL".to_owned(),
        }
    }
}

type Pending = (Term, oneshot::Sender<Result<Option<i64>>>);

#[derive(Default)]
struct Batch {
    pending: Vec<Pending>,
    flushing: bool,
}

struct Inner {
    db: Db,
    names: Names,
    sql: Sql,
    create_table: bool,
    ensured: AtomicBool,
    /// Acquisitions whose answer never came (an error, a timeout, a dropped
    /// call), by (election, candidate): the owner identities they wrote, if
    /// they landed. The candidate's next acquisition may take such a row over
    /// at once: no one was ever told it leads.
    ghosts: Mutex<HashMap<(String, String), Vec<String>>>,
    batch: Mutex<Batch>,
    /// How long the first renewal of a batch waits for others to join it.
    batch_window: Duration,
    listener: Option<Listener>,
    /// Statements sent, by kind, for the benchmark's figures.
    counts: Counts,
}

/// How many statements a [`LeaseTable`] sent.
#[derive(Debug, Default)]
struct Counts {
    acquire: std::sync::atomic::AtomicU64,
    renew_calls: std::sync::atomic::AtomicU64,
    renew_statements: std::sync::atomic::AtomicU64,
    release: std::sync::atomic::AtomicU64,
    read: std::sync::atomic::AtomicU64,
}

/// Statements a [`LeaseTable`] has sent since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Statements {
    /// Acquisition attempts.
    pub acquire: u64,
    /// Renewals asked for.
    pub renew_calls: u64,
    /// Statements those renewals took (several renewals share one).
    pub renew_statements: u64,
    /// Releases.
    pub release: u64,
    /// Reads of the holder.
    pub read: u64,
}

/// The lease table of one database: acquire, renew, release, read.
///
/// Cheap to clone; clones share the connection, the listener and the
/// renewal batch.
#[derive(Clone)]
pub struct LeaseTable {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LeaseTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseTable")
            .field("db", &self.inner.db)
            .field("table", &self.inner.names.table)
            .field("listen", &self.inner.listener.is_some())
            .finish_non_exhaustive()
    }
}

fn ghost_guard_key(election: &str, candidate: &str) -> (String, String) {
    (election.to_owned(), candidate.to_owned())
}

/// Records an acquisition as unresolved unless [`disarm`](Self::disarm)ed:
/// dropped (cancelled) or failed calls leave their owner identity behind.
struct GhostGuard<'a> {
    inner: &'a Inner,
    key: Option<(String, String)>,
    owner: String,
}

impl GhostGuard<'_> {
    fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for GhostGuard<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut ghosts = self.inner.ghosts.lock().unwrap_or_else(|e| e.into_inner());
            let list = ghosts.entry(key).or_default();
            list.push(std::mem::take(&mut self.owner));
            if list.len() > MAX_GHOSTS {
                list.remove(0);
            }
        }
    }
}

impl LeaseTable {
    pub(crate) fn new(
        db: Db,
        names: Names,
        listen: bool,
        create_table: bool,
        batch_window: Duration,
    ) -> LeaseTable {
        let sql = Sql::new(&names);
        let listener = listen.then(|| Listener::new(names.channel.clone()));
        LeaseTable {
            inner: Arc::new(Inner {
                db,
                names,
                sql,
                create_table,
                ensured: AtomicBool::new(false),
                ghosts: Mutex::new(HashMap::new()),
                batch: Mutex::new(Batch::default()),
                batch_window,
                listener,
                counts: Counts::default(),
            }),
        }
    }

    /// The DDL that makes the table and its sequence (what
    /// [`ensure_schema`](Self::ensure_schema) runs).
    pub fn ddl(&self) -> &str {
        &self.inner.sql.ddl
    }

    /// The quoted table name.
    pub fn table_name(&self) -> &str {
        &self.inner.names.table
    }

    /// The NOTIFY channel of the table.
    pub fn channel(&self) -> &str {
        &self.inner.names.channel
    }

    /// Whether this table wakes waiters through LISTEN/NOTIFY.
    pub fn listens(&self) -> bool {
        self.inner.listener.is_some()
    }

    /// Statements sent so far.
    pub fn statements(&self) -> Statements {
        let c = &self.inner.counts;
        Statements {
            acquire: c.acquire.load(Ordering::Relaxed),
            renew_calls: c.renew_calls.load(Ordering::Relaxed),
            renew_statements: c.renew_statements.load(Ordering::Relaxed),
            release: c.release.load(Ordering::Relaxed),
            read: c.read.load(Ordering::Relaxed),
        }
    }

    /// Make the table and its sequence if they are missing (when the
    /// builder's `create_table` is on; else only check that they exist).
    /// Every other method calls it first until it has succeeded once.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`] when the user may not create them, with
    /// the DDL to run by hand; [`Error::Config`] when they are missing and
    /// `create_table` is off; connection failures as
    /// [`Error::Unavailable`].
    ///
    /// # Cancel safety
    /// Cancel safe (the DDL is idempotent).
    pub async fn ensure_schema(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.ensured.load(Ordering::Acquire) {
            return Ok(());
        }
        let seq_name = inner.names.sequence.clone();
        let table_name = inner.names.display.clone();
        let sql = &inner.sql;
        let exists: bool = inner
            .db
            .run("look for the lease table", |c| async move {
                let row = c
                    .query_typed_one(
                        &sql.exists,
                        &[(&table_name, Type::TEXT), (&seq_name, Type::TEXT)],
                    )
                    .await?;
                row.try_get(0)
            })
            .await?;
        if !exists {
            if !inner.create_table {
                return Err(Error::Config(format!(
                    "postgres: the lease table {} or its sequence is missing (create_table is off); run:\n{}",
                    inner.names.table, sql.ddl
                )));
            }
            let created = inner
                .db
                .run("create the lease table", |c| async move {
                    c.batch_execute(&sql.ddl).await
                })
                .await;
            match created {
                Ok(()) => {}
                Err(Error::PermissionDenied {
                    message, source, ..
                }) => {
                    return Err(Error::PermissionDenied {
                        backend: NAME,
                        source,
                        message: format!(
                            "{message}. Ask an administrator to run, as a user who may create them:\n{}\n\
                             and to let this user use them:\nGRANT SELECT, INSERT, UPDATE ON {} TO <user>;\n\
                             GRANT USAGE ON SEQUENCE {} TO <user>;",
                            sql.ddl, inner.names.table, inner.names.sequence
                        ),
                    });
                }
                // Two processes creating it at once: one of them meets the
                // other's catalog row; the table is there either way.
                Err(Error::Backend { message, .. })
                    if message.contains(SqlState::UNIQUE_VIOLATION.code())
                        || message.contains(SqlState::DUPLICATE_TABLE.code()) => {}
                Err(e) => return Err(e),
            }
        }
        inner.ensured.store(true, Ordering::Release);
        Ok(())
    }

    /// A missing table (dropped by hand) makes the next call create it again.
    fn note(&self, e: Error) -> Error {
        if let Error::Unavailable { message, .. } = &e
            && message.contains(SqlState::UNDEFINED_TABLE.code())
        {
            self.inner.ensured.store(false, Ordering::Release);
        }
        if let Error::PermissionDenied {
            message, source, ..
        } = &e
            && !message.contains("GRANT")
        {
            return Error::PermissionDenied {
                backend: NAME,
                source: source.clone(),
                message: format!(
                    "{message}. The user needs: GRANT SELECT, INSERT, UPDATE ON {} TO <user>; GRANT USAGE ON SEQUENCE {} TO <user>;",
                    self.inner.names.table, self.inner.names.sequence
                ),
            };
        }
        e
    }

    /// Try once to lead `election` as `candidate` with `value` for `ttl`:
    /// one statement that takes the row when it is missing, released, or
    /// expired by the database's clock, with a new token from the sequence.
    ///
    /// # Errors
    /// Store failures ([`Error::Unavailable`], [`Error::Timeout`] are
    /// transient). An attempt whose answer was lost may have landed: its
    /// row names an owner no one knows, and the same candidate's next
    /// attempt on this table takes it over at once (with a new token).
    ///
    /// # Cancel safety
    /// Cancel safe, in the same way.
    pub async fn acquire(
        &self,
        election: &str,
        candidate: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<Acquired> {
        self.ensure_schema().await?;
        let inner = &*self.inner;
        inner.counts.acquire.fetch_add(1, Ordering::Relaxed);
        let key = ghost_guard_key(election, candidate);
        let ghosts: Vec<String> = inner
            .ghosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
            .unwrap_or_default();
        let owner = new_owner();
        let guard = GhostGuard {
            inner,
            key: Some(key.clone()),
            owner: owner.clone(),
        };
        let ttl_ms = i64::try_from(ttl.as_millis().max(1)).unwrap_or(i64::MAX);
        let sql = &inner.sql;
        let (e, c, o, v) = (
            election.to_owned(),
            candidate.to_owned(),
            owner.clone(),
            value.to_vec(),
        );
        let g = ghosts.clone();
        let rows = inner
            .db
            .run("acquire", |client| async move {
                client
                    .query_typed(
                        &sql.acquire,
                        &[
                            (&e, Type::TEXT),
                            (&c, Type::TEXT),
                            (&o, Type::TEXT),
                            (&v, Type::BYTEA),
                            (&ttl_ms, Type::INT8),
                            (&g, Type::TEXT_ARRAY),
                        ],
                    )
                    .await
            })
            .await
            .map_err(|e| self.note(e))?;
        // The answer came: this attempt is settled, and so are the ghosts it
        // was allowed to take over (won: replaced; held: they are no longer
        // the row's owner, or were never written).
        guard.disarm();
        {
            let mut map = inner.ghosts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(list) = map.get_mut(&key) {
                list.retain(|g| !ghosts.contains(g));
                if list.is_empty() {
                    map.remove(&key);
                }
            }
        }
        let Some(row) = rows.first() else {
            return Ok(Acquired::Held {
                holder: None,
                version: 0,
            });
        };
        let parse = |row: &Row| -> std::result::Result<Acquired, tokio_postgres::Error> {
            let won: bool = row.try_get(0)?;
            let token: i64 = row.try_get(1)?;
            let version: i64 = row.try_get(2)?;
            let token = u64::try_from(token).unwrap_or(0);
            Ok(if won {
                Acquired::Won(Term {
                    election: election.to_owned(),
                    owner: owner.clone(),
                    token,
                    version,
                })
            } else {
                let holder: Option<String> = row.try_get(3)?;
                let value: Option<Vec<u8>> = row.try_get(4)?;
                Acquired::Held {
                    holder: holder.map(|id| Holder {
                        id,
                        value: value.unwrap_or_default(),
                        token,
                    }),
                    version,
                }
            })
        };
        parse(row).map_err(|e| crate::error::map("acquire: read the answer", e))
    }

    /// Extend `term` by the ttl it was acquired with, from the database's
    /// clock now: one conditional statement on owner and token, shared with
    /// the renewals other electors of this table ask for within the batch
    /// window (default 25 ms) or while the previous renewal statement runs.
    ///
    /// The window delays the statement, never the term's deadline: the
    /// engine counts the deadline from when it called `renew`, and the
    /// database extends the lease from when the statement runs, later.
    ///
    /// # Errors
    /// [`Error::Lost`] when the row no longer has this term (released,
    /// expired, taken over, deleted); store failures otherwise.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped renewal may still land (it only extends this
    /// term).
    pub async fn renew(&self, term: &Term) -> Result<Term> {
        self.ensure_schema().await?;
        let inner = &self.inner;
        inner.counts.renew_calls.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut batch = inner.batch.lock().unwrap_or_else(|e| e.into_inner());
            batch.pending.push((term.clone(), tx));
            !std::mem::replace(&mut batch.flushing, true)
        };
        if start {
            let inner = self.inner.clone();
            tokio::spawn(async move { flush(&inner).await });
        }
        let answer = rx
            .await
            .map_err(|_| crate::conn::unavailable("renew: the renewal task ended"))?;
        match answer.map_err(|e| self.note(e))? {
            Some(version) => Ok(Term {
                version: version.max(term.version),
                ..term.clone()
            }),
            None => Err(Error::Lost(format!(
                "the lease row of election {:?} no longer has this term (token {}): it expired by the database's clock, was released, taken over or deleted",
                term.election, term.token
            ))),
        }
    }

    /// Give `term` up: mark its row released (never delete it) and notify
    /// waiters. Releasing a term that is already gone is not an error.
    ///
    /// # Errors
    /// Store failures: the row then expires after its ttl.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn release(&self, term: &Term) -> Result<()> {
        self.ensure_schema().await?;
        let inner = &self.inner;
        inner.counts.release.fetch_add(1, Ordering::Relaxed);
        let sql = &inner.sql;
        let (e, o) = (term.election.clone(), term.owner.clone());
        let token = i64::try_from(term.token).unwrap_or(i64::MAX);
        inner
            .db
            .run("release", |c| async move {
                c.query_typed(
                    &sql.release,
                    &[(&e, Type::TEXT), (&o, Type::TEXT), (&token, Type::INT8)],
                )
                .await
            })
            .await
            .map_err(|e| self.note(e))?;
        Ok(())
    }

    /// The holder of `election` by the database's clock, and the time its
    /// lease has left.
    ///
    /// # Errors
    /// Store failures.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn lookup(&self, election: &str) -> Result<Lookup> {
        self.ensure_schema().await?;
        let inner = &self.inner;
        inner.counts.read.fetch_add(1, Ordering::Relaxed);
        let sql = &inner.sql;
        let e = election.to_owned();
        let row = inner
            .db
            .run("read the leader", |c| async move {
                c.query_typed_opt(&sql.leader, &[(&e, Type::TEXT)]).await
            })
            .await
            .map_err(|e| self.note(e))?;
        let Some(row) = row else {
            return Ok(Lookup {
                holder: None,
                remaining: Duration::ZERO,
            });
        };
        let parse = |row: &Row| -> std::result::Result<Lookup, tokio_postgres::Error> {
            let id: String = row.try_get(0)?;
            let value: Vec<u8> = row.try_get(1)?;
            let token: i64 = row.try_get(2)?;
            let ms: i64 = row.try_get(3)?;
            Ok(Lookup {
                holder: Some(Holder {
                    id,
                    value,
                    token: u64::try_from(token).unwrap_or(0),
                }),
                remaining: Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
            })
        };
        parse(&row).map_err(|e| crate::error::map("read the leader: the answer", e))
    }

    /// The holder of `election`, `None` when the row is missing, released
    /// or expired by the database's clock.
    ///
    /// # Errors
    /// Store failures.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn leader(&self, election: &str) -> Result<Option<Holder>> {
        Ok(self.lookup(election).await?.holder)
    }

    /// The condition that holds exactly while `term` lasts, for the
    /// application's own statements (see [`LeaderGuard`]).
    pub fn leader_guard(&self, term: &Term) -> crate::LeaderGuard {
        crate::LeaderGuard::new(
            &self.inner.names.table,
            &term.election,
            &term.owner,
            term.token,
        )
    }

    pub(crate) fn downgrade(&self) -> WeakTable {
        WeakTable(Arc::downgrade(&self.inner))
    }

    pub(crate) fn db(&self) -> &Db {
        &self.inner.db
    }

    pub(crate) fn listener(&self) -> Option<&Listener> {
        self.inner.listener.as_ref()
    }
}

/// A table handle that does not keep the table alive (the listener's).
#[derive(Clone)]
pub(crate) struct WeakTable(std::sync::Weak<Inner>);

impl WeakTable {
    pub(crate) fn upgrade(&self) -> Option<LeaseTable> {
        self.0.upgrade().map(|inner| LeaseTable { inner })
    }
}

/// Send the pending renewals, a statement at a time, until none is left.
/// The first statement waits the batch window for more renewals to join;
/// the ones after it take what arrived while the one before was in flight.
async fn flush(inner: &Arc<Inner>) {
    if !inner.batch_window.is_zero() {
        tokio::time::sleep(inner.batch_window).await;
    }
    loop {
        let batch: Vec<Pending> = {
            let mut b = inner.batch.lock().unwrap_or_else(|e| e.into_inner());
            // Callers that gave up need no answer.
            b.pending.retain(|(_, tx)| !tx.is_closed());
            if b.pending.is_empty() {
                b.flushing = false;
                return;
            }
            let n = b.pending.len().min(MAX_BATCH);
            b.pending.drain(..n).collect()
        };
        inner
            .counts
            .renew_statements
            .fetch_add(1, Ordering::Relaxed);
        let elections: Vec<&str> = batch.iter().map(|(t, _)| t.election.as_str()).collect();
        let owners: Vec<&str> = batch.iter().map(|(t, _)| t.owner.as_str()).collect();
        let tokens: Vec<i64> = batch
            .iter()
            .map(|(t, _)| i64::try_from(t.token).unwrap_or(i64::MAX))
            .collect();
        let sql = &inner.sql;
        let result = inner
            .db
            .run("renew", |c| {
                let (elections, owners, tokens) = (&elections, &owners, &tokens);
                async move {
                    c.query_typed(
                        &sql.renew,
                        &[
                            (elections, Type::TEXT_ARRAY),
                            (owners, Type::TEXT_ARRAY),
                            (tokens, Type::INT8_ARRAY),
                        ],
                    )
                    .await
                }
            })
            .await;
        match result {
            Ok(rows) => {
                let mut versions: HashMap<(String, String), i64> =
                    HashMap::with_capacity(rows.len());
                for row in &rows {
                    if let (Ok(e), Ok(o), Ok(v)) = (
                        row.try_get::<_, String>(0),
                        row.try_get::<_, String>(1),
                        row.try_get::<_, i64>(2),
                    ) {
                        versions.insert((e, o), v);
                    }
                }
                for (term, tx) in batch {
                    let v = versions.get(&(term.election, term.owner)).copied();
                    let _ = tx.send(Ok(v));
                }
            }
            Err(e) => {
                for (_, tx) in batch {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_random_and_hex() {
        let a = new_owner();
        let b = new_owner();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn statements_name_the_quoted_table() {
        let sql = Sql::new(&Names::new(Some("s"), "t").unwrap());
        assert!(sql.acquire.contains("INSERT INTO \"s\".\"t\""));
        assert!(sql.acquire.contains("nextval('\"s\".\"t_token_seq\"')"));
        assert!(
            sql.ddl
                .contains("CREATE SEQUENCE IF NOT EXISTS \"s\".\"t_token_seq\"")
        );
        assert!(sql.release.contains("pg_notify('leasehold.s.t'"));
    }
}
