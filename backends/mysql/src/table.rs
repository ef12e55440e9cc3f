//! The lease table: every statement the backend sends, and nothing of the
//! engine's traits (the adapter in `backend.rs` maps these types onto them).
//!
//! Two tables, in the database the connection names:
//!
//! * the **lease table** (`leasehold_leases` by default): one row per
//!   election, never deleted by leasehold. A term is the row's `(owner,
//!   token)`; `version` goes up by one with every write; `expires_at` is
//!   `UTC_TIMESTAMP(6) + ttl` as of the last write, judged only against the
//!   database's own `UTC_TIMESTAMP(6)`.
//! * the **token table** (`leasehold_tokens` by default): an `AUTO_INCREMENT`
//!   counter. Every attempt to start a term on a free row first takes a new
//!   value from it (`REPLACE INTO`, one row per election, so the table stays
//!   small); InnoDB never hands out a value twice, even after the rows are
//!   deleted, and keeps its counter across restarts (MariaDB 10.2.4+, MySQL
//!   8.0+).
//!
//! Every ownership change is one conditional statement, checked by its
//! affected-row count (the connection sets `CLIENT_FOUND_ROWS`, so a matched
//! row counts even when nothing in it changed):
//!
//! * a new term on a free row: `UPDATE ... WHERE election = ? AND version = ?
//!   AND (released OR expires_at < UTC_TIMESTAMP(6)) AND token < ?new`: the
//!   version the read saw, the database's clock, and a token that only goes
//!   up (a token taken before a row was deleted by hand and made again can
//!   never land, because the new row's token was taken after the deletion);
//! * a new term where there is no row: `INSERT` (a duplicate key means
//!   another candidate made it first);
//! * renew: `UPDATE ... SET version = LAST_INSERT_ID(version + 1) ... WHERE
//!   election = ? AND owner = ? AND token = ? AND NOT released AND expires_at
//!   >= UTC_TIMESTAMP(6)`; the new version comes back in the OK packet;
//! * release: `UPDATE ... SET released = 1 ... WHERE election = ? AND owner =
//!   ? AND token = ? AND NOT released` (never a `DELETE`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold_core::{Error, Result};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Pool};
use tokio::sync::oneshot;

use crate::error::{self, BACKEND};

/// The longest election name and candidate id, in characters (the columns
/// are `VARCHAR(255)`).
pub const MAX_NAME_CHARS: usize = 255;

/// The largest leader value, in bytes (the column is a `BLOB`).
pub const MAX_VALUE_BYTES: usize = 65_535;

/// The longest ttl a row can carry (the column counts microseconds in a
/// `BIGINT`; a day is far more than any election needs).
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// A table or database name: 1 to 64 ASCII letters, digits, `_` or `$`, not
/// all digits. Anything else is refused rather than quoted, so a name can
/// never change a statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ident(String);

impl Ident {
    /// Check `name` as the identifier `what` (`table`, `database`).
    ///
    /// # Errors
    /// [`Error::Config`] naming `what` and the allowed characters.
    pub fn new(what: &str, name: &str) -> Result<Ident> {
        let ok_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
        if name.is_empty()
            || name.len() > 64
            || !ok_chars
            || name.chars().all(|c| c.is_ascii_digit())
        {
            return Err(Error::Config(format!(
                "mysql `{what}`: {name:?} is not a plain identifier: use 1 to 64 ASCII letters, digits, `_` or `$` (not only digits)"
            )));
        }
        Ok(Ident(name.to_owned()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where the two tables are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Names {
    /// The database (schema) holding both tables.
    pub database: Ident,
    /// The lease table.
    pub leases: Ident,
    /// The token table.
    pub tokens: Ident,
}

impl Names {
    /// The default table names in `database`.
    pub fn new(database: Ident) -> Names {
        Names {
            database,
            leases: Ident("leasehold_leases".into()),
            tokens: Ident("leasehold_tokens".into()),
        }
    }

    pub(crate) fn leases(&self) -> String {
        format!("`{}`.`{}`", self.database.0, self.leases.0)
    }

    fn tokens(&self) -> String {
        format!("`{}`.`{}`", self.database.0, self.tokens.0)
    }

    /// The statements that make both tables, as an administrator would run
    /// them: what the error says when the backend may not run them itself.
    pub fn ddl(&self) -> [String; 2] {
        [
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\
                 `election` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
                 `token` BIGINT UNSIGNED NOT NULL, \
                 `owner` CHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL, \
                 `holder` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
                 `value` BLOB NOT NULL, \
                 `version` BIGINT UNSIGNED NOT NULL, \
                 `ttl_us` BIGINT UNSIGNED NOT NULL, \
                 `released` BOOLEAN NOT NULL, \
                 `acquired_at` DATETIME(6) NOT NULL, \
                 `renewed_at` DATETIME(6) NOT NULL, \
                 `expires_at` DATETIME(6) NOT NULL, \
                 `renewal` BIGINT UNSIGNED NOT NULL DEFAULT 0, \
                 PRIMARY KEY (`election`)) ENGINE=InnoDB",
                self.leases()
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (\
                 `token` BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, \
                 `election` VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
                 `issued_at` DATETIME(6) NOT NULL, \
                 PRIMARY KEY (`token`), UNIQUE KEY `election` (`election`)) ENGINE=InnoDB",
                self.tokens()
            ),
        ]
    }
}

/// A term this process started: what renew and release name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Term {
    /// The election.
    pub election: String,
    /// The random identity of the term, known only to its maker.
    pub owner: String,
    /// The fencing token.
    pub token: u64,
    /// The row's version after this process's last write to it.
    pub version: u64,
}

/// Who leads, as the row says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Leader {
    /// The leader's candidate id.
    pub holder: String,
    /// The leader's value.
    pub value: Vec<u8>,
    /// The leader's fencing token.
    pub token: u64,
}

/// The outcome of one [`LeaseTable::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This candidate leads.
    Won(Term),
    /// Someone else does (or did, an instant ago).
    Held {
        /// The leader, when the row names a live one.
        leader: Option<Leader>,
        /// The row's version (0 when there is no row).
        version: u64,
    },
}

/// What one candidate asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The election.
    pub election: &'a str,
    /// The candidate id.
    pub candidate: &'a str,
    /// The leader value.
    pub value: &'a [u8],
    /// The lease time to live.
    pub ttl: Duration,
}

/// A term-starting write whose answer never came (an error, a timeout, a
/// dropped future): the next attempt of the same candidate finds it again
/// if it landed, instead of waiting a ttl for its own ghost.
#[derive(Debug, Clone)]
struct Pending {
    owner: String,
    token: u64,
    value: Vec<u8>,
    ttl_us: u64,
}

/// One row as [`LeaseTable`] reads it.
#[derive(Debug, Clone)]
struct Row {
    token: u64,
    owner: String,
    holder: String,
    value: Vec<u8>,
    version: u64,
    ttl_us: u64,
    released: bool,
    expired: bool,
}

impl Row {
    fn is_free(&self) -> bool {
        self.released || self.expired
    }

    fn leader(&self) -> Option<Leader> {
        (!self.is_free()).then(|| Leader {
            holder: self.holder.clone(),
            value: self.value.clone(),
            token: self.token,
        })
    }
}

type RowTuple = (u64, String, String, Vec<u8>, u64, u64, bool, bool);

/// The lease and token tables behind a connection pool, with every
/// statement the backend sends.
///
/// Every method is one bounded call (at most the request timeout); each is
/// cancel safe in the engine's sense: a dropped call may or may not have
/// taken effect, and the next call copes with both.
pub struct LeaseTable {
    pool: Pool,
    names: Names,
    request_timeout: Duration,
    sql: Statements,
    pending: Mutex<HashMap<(String, String), Pending>>,
    renewals: Arc<Renewals>,
}

impl std::fmt::Debug for LeaseTable {
    // The pool's own Debug shows the connection options, password included.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseTable")
            .field("names", &self.names)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// The statements, with the table names filled in once.
#[derive(Debug)]
struct Statements {
    read: String,
    leader: String,
    token: String,
    take: String,
    insert: String,
    renew: String,
    release: String,
}

impl Statements {
    fn new(names: &Names) -> Statements {
        let (l, t) = (names.leases(), names.tokens());
        Statements {
            read: format!(
                "SELECT `token`, `owner`, `holder`, `value`, `version`, `ttl_us`, `released`, \
                 `expires_at` < UTC_TIMESTAMP(6) FROM {l} WHERE `election` = ?"
            ),
            leader: format!(
                "SELECT `holder`, `value`, `token` FROM {l} \
                 WHERE `election` = ? AND NOT `released` AND `expires_at` >= UTC_TIMESTAMP(6)"
            ),
            token: format!(
                "REPLACE INTO {t} (`election`, `issued_at`) VALUES (?, UTC_TIMESTAMP(6))"
            ),
            take: format!(
                "UPDATE {l} SET `token` = ?, `owner` = ?, `holder` = ?, `value` = ?, \
                 `version` = `version` + 1, `ttl_us` = ?, `released` = FALSE, \
                 `acquired_at` = UTC_TIMESTAMP(6), `renewed_at` = UTC_TIMESTAMP(6), \
                 `expires_at` = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
                 WHERE `election` = ? AND `version` = ? \
                 AND (`released` OR `expires_at` < UTC_TIMESTAMP(6)) AND `token` < ?"
            ),
            insert: format!(
                "INSERT INTO {l} (`election`, `token`, `owner`, `holder`, `value`, `version`, \
                 `ttl_us`, `released`, `acquired_at`, `renewed_at`, `expires_at`) \
                 VALUES (?, ?, ?, ?, ?, 1, ?, FALSE, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), \
                 UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND)"
            ),
            renew: format!(
                "UPDATE {l} SET `version` = LAST_INSERT_ID(`version` + 1), \
                 `renewed_at` = UTC_TIMESTAMP(6), \
                 `expires_at` = UTC_TIMESTAMP(6) + INTERVAL `ttl_us` MICROSECOND \
                 WHERE `election` = ? AND `owner` = ? AND `token` = ? AND NOT `released` \
                 AND `expires_at` >= UTC_TIMESTAMP(6)"
            ),
            release: format!(
                "UPDATE {l} SET `released` = TRUE, `version` = `version` + 1, \
                 `expires_at` = UTC_TIMESTAMP(6) \
                 WHERE `election` = ? AND `owner` = ? AND `token` = ? AND NOT `released`"
            ),
        }
    }
}

fn new_owner() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn ttl_micros(ttl: Duration) -> Result<u64> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(Error::invalid_option(
            "ttl",
            format!(
                "{ttl:?} is out of range for the mysql store (above zero, at most {MAX_TTL:?})"
            ),
        ));
    }
    Ok(u64::try_from(ttl.as_micros()).unwrap_or(u64::MAX).max(1))
}

fn check_name(what: &'static str, name: &str) -> Result<()> {
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS {
        return Err(Error::invalid_option(
            what,
            format!("{chars} characters; the mysql store takes 1 to {MAX_NAME_CHARS}"),
        ));
    }
    Ok(())
}

/// Check what a request would write, before any statement.
///
/// # Errors
/// [`Error::InvalidOption`] naming the field.
pub fn check_request(req: &Request<'_>) -> Result<()> {
    check_name("election", req.election)?;
    check_name("id", req.candidate)?;
    if req.value.len() > MAX_VALUE_BYTES {
        return Err(Error::invalid_option(
            "value",
            format!(
                "{} bytes; the mysql store keeps at most {MAX_VALUE_BYTES}",
                req.value.len()
            ),
        ));
    }
    ttl_micros(req.ttl).map(|_| ())
}

impl LeaseTable {
    /// The tables `names` behind `pool`; every call is bounded by
    /// `request_timeout`. Makes no connection (see
    /// [`ensure_schema`](Self::ensure_schema)).
    pub fn new(pool: Pool, names: Names, request_timeout: Duration) -> LeaseTable {
        LeaseTable {
            sql: Statements::new(&names),
            renewals: Arc::new(Renewals {
                pool: pool.clone(),
                leases: names.leases(),
                single: Statements::new(&names).renew,
                timeout: request_timeout,
                state: Mutex::new(RenewalQueue::default()),
            }),
            pool,
            names,
            request_timeout,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// The table names.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The connection pool (shared with the application:
    /// [`MysqlBackend::pool`](crate::MysqlBackend::pool)).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The condition that holds exactly while `term` lasts, for the
    /// application's own statements (see [`LeaderGuard`](crate::LeaderGuard)).
    pub fn leader_guard(&self, term: &Term) -> crate::LeaderGuard {
        crate::LeaderGuard::new(self.names.leases(), &term.election, &term.owner, term.token)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Pending>> {
        // Every update is a single insert or remove: a poisoned lock is consistent.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn bounded<T>(
        &self,
        operation: &'static str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                operation,
                after: self.request_timeout,
            }),
        }
    }

    async fn conn(&self) -> Result<Conn> {
        self.pool
            .get_conn()
            .await
            .map_err(|e| error::map("connecting", e))
    }

    /// Make both tables if they are missing (`CREATE TABLE IF NOT EXISTS`),
    /// then check that they have the columns this backend uses.
    ///
    /// # Errors
    /// [`Error::PermissionDenied`] with the exact statements to run when the
    /// user may not create tables and they are missing; store failures.
    ///
    /// # Cancel safety
    /// Cancel safe: both statements are idempotent.
    pub async fn ensure_schema(&self) -> Result<()> {
        self.bounded("creating the tables", async {
            let mut conn = self.conn().await?;
            let ddl = self.names.ddl();
            for stmt in &ddl {
                if let Err(e) = conn.query_drop(stmt).await {
                    if error::is_denied(&e) && self.tables_usable(&mut conn).await {
                        // Made by an administrator; we only lack CREATE.
                        return Ok(());
                    }
                    if error::is_denied(&e) {
                        return Err(Error::permission_denied(
                            BACKEND,
                            format!(
                                "the user may not create leasehold's tables ({e}); have an administrator run:\n{};\n{};",
                                ddl[0], ddl[1]
                            ),
                        )
                        .caused_by(e));
                    }
                    return Err(error::map("creating the tables", e));
                }
            }
            self.check_columns(&mut conn).await
        })
        .await
    }

    async fn tables_usable(&self, conn: &mut Conn) -> bool {
        self.check_columns(conn).await.is_ok()
    }

    async fn check_columns(&self, conn: &mut Conn) -> Result<()> {
        let probes = [
            (
                self.names.leases(),
                format!(
                    "SELECT `election`, `token`, `owner`, `holder`, `value`, `version`, `ttl_us`, \
                     `released`, `acquired_at`, `renewed_at`, `expires_at`, `renewal` FROM {} LIMIT 0",
                    self.names.leases()
                ),
            ),
            (
                self.names.tokens(),
                format!(
                    "SELECT `token`, `election`, `issued_at` FROM {} LIMIT 0",
                    self.names.tokens()
                ),
            ),
        ];
        for (table, probe) in probes {
            if let Err(e) = conn.query_drop(&probe).await {
                return Err(match e {
                    mysql_async::Error::Server(s) if s.code == 1054 => Error::InvalidRecord {
                        backend: BACKEND,
                        path: table,
                        message: format!(
                            "the table exists but is not leasehold's ({}); name another table, or make it with: {}",
                            s.message,
                            self.names.ddl().join("; ")
                        ),
                    },
                    e => error::map("checking the tables", e),
                });
            }
        }
        Ok(())
    }

    async fn read(&self, conn: &mut Conn, election: &str) -> Result<Option<Row>> {
        let row: Option<RowTuple> = conn
            .exec_first(&self.sql.read, (election,))
            .await
            .map_err(|e| self.map_table_error("reading the lease", e))?;
        Ok(row.map(
            |(token, owner, holder, value, version, ttl_us, released, expired)| Row {
                token,
                owner,
                holder,
                value,
                version,
                ttl_us,
                released,
                expired,
            },
        ))
    }

    fn map_table_error(&self, what: &str, e: mysql_async::Error) -> Error {
        if error::is_missing_table(&e) {
            return error::backend(format!(
                "{what}: {e}; leasehold's tables are gone (dropped by hand?). Make them again with: {}; \
                 and set the token table's AUTO_INCREMENT above every token handed out before, or tokens go back",
                self.names.ddl().join("; ")
            ));
        }
        error::map(what, e)
    }

    /// A new token: a value the token table's counter never handed out.
    ///
    /// `None` when InnoDB chose this statement as a deadlock victim: another
    /// candidate is taking a token for the same election at this very
    /// moment (the `REPLACE` of one election's token row), so this attempt
    /// stands back and the engine tries again after its retry interval.
    async fn new_token(&self, conn: &mut Conn, election: &str) -> Result<Option<u64>> {
        match conn.exec_drop(&self.sql.token, (election,)).await {
            Ok(()) => {}
            Err(e) if error::is_contention(&e) => return Ok(None),
            Err(e) => return Err(self.map_table_error("taking a fencing token", e)),
        }
        conn.last_insert_id()
            .filter(|t| *t > 0)
            .map(Some)
            .ok_or_else(|| {
                error::backend(
                    "taking a fencing token: the server returned no AUTO_INCREMENT value",
                )
            })
    }

    /// Try once to lead: read the row; when it is free (no row, released,
    /// or expired by the database's clock), take a new token and start a
    /// term with one conditional statement.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for a request the columns cannot hold;
    /// [`Error::InvalidRecord`] when the token table's counter went below
    /// the row's token (the token table was emptied with `TRUNCATE` or made
    /// again); store failures.
    ///
    /// # Cancel safety
    /// Cancel safe: a write whose answer was lost is remembered, and the
    /// next call of the same candidate takes its term if it landed.
    pub async fn acquire(&self, req: &Request<'_>) -> Result<Acquired> {
        check_request(req)?;
        let ttl_us = ttl_micros(req.ttl)?;
        self.bounded("acquire", async {
            let mut conn = self.conn().await?;
            let mut row = self.read(&mut conn, req.election).await?;
            let key = (req.election.to_owned(), req.candidate.to_owned());
            let pending = self.pending().get(&key).cloned();
            if let Some(p) = pending {
                match &row {
                    // Our own write landed and its term still runs: it was
                    // never reported to anyone, so it is this attempt's term.
                    Some(r) if r.owner == p.owner && !r.is_free() => {
                        if p.value == req.value && p.ttl_us == ttl_us {
                            self.pending().remove(&key);
                            return Ok(Acquired::Won(Term {
                                election: req.election.to_owned(),
                                owner: p.owner,
                                token: r.token,
                                version: r.version,
                            }));
                        }
                        // It landed with another value or ttl: give it up
                        // and start over.
                        let ghost = Term {
                            election: req.election.to_owned(),
                            owner: p.owner,
                            token: p.token,
                            version: r.version,
                        };
                        self.release_on(&mut conn, &ghost).await?;
                        self.pending().remove(&key);
                        row = self.read(&mut conn, req.election).await?;
                    }
                    // Someone else's row, or ours ended: it can never land now
                    // (a later write would need the version or token it saw).
                    _ => {
                        self.pending().remove(&key);
                    }
                }
            }
            match row {
                Some(r) if !r.is_free() => Ok(Acquired::Held {
                    leader: r.leader(),
                    version: r.version,
                }),
                Some(r) => self.take(&mut conn, req, &key, ttl_us, r).await,
                None => self.create(&mut conn, req, &key, ttl_us).await,
            }
        })
        .await
    }

    async fn take(
        &self,
        conn: &mut Conn,
        req: &Request<'_>,
        key: &(String, String),
        ttl_us: u64,
        seen: Row,
    ) -> Result<Acquired> {
        let Some(token) = self.new_token(conn, req.election).await? else {
            return Ok(Acquired::Held {
                leader: None,
                version: seen.version,
            });
        };
        let owner = new_owner();
        self.pending().insert(
            key.clone(),
            Pending {
                owner: owner.clone(),
                token,
                value: req.value.to_vec(),
                ttl_us,
            },
        );
        let params = mysql_async::Params::Positional(vec![
            token.into(),
            owner.clone().into(),
            req.candidate.into(),
            req.value.into(),
            ttl_us.into(),
            ttl_us.into(),
            req.election.into(),
            seen.version.into(),
            token.into(),
        ]);
        match conn.exec_drop(&self.sql.take, params).await {
            Ok(()) => {}
            Err(e) if error::is_contention(&e) => {
                // Rolled back: it did not land.
                self.pending().remove(key);
                return Ok(Acquired::Held {
                    leader: None,
                    version: seen.version,
                });
            }
            Err(e) => return Err(self.map_table_error("starting a term", e)),
        }
        let landed = conn.affected_rows() == 1;
        self.pending().remove(key);
        if landed {
            return Ok(Acquired::Won(Term {
                election: req.election.to_owned(),
                owner,
                token,
                version: seen.version + 1,
            }));
        }
        // Someone else was faster, or the row's token is not below ours.
        let now = self.read(conn, req.election).await?;
        if let Some(r) = &now
            && r.is_free()
            && r.token >= token
        {
            return Err(Error::InvalidRecord {
                backend: BACKEND,
                path: self.names.tokens(),
                message: format!(
                    "the token counter is at {token} but election {:?} already had token {}: the token table was emptied or made again. \
                     Run: ALTER TABLE {} AUTO_INCREMENT = {}",
                    req.election,
                    r.token,
                    self.names.tokens(),
                    r.token + 1
                ),
            });
        }
        Ok(held(now))
    }

    async fn create(
        &self,
        conn: &mut Conn,
        req: &Request<'_>,
        key: &(String, String),
        ttl_us: u64,
    ) -> Result<Acquired> {
        // Taken after the row was seen missing: greater than the token of
        // every term that row ever had, and than any token an attempt still
        // in flight took before it was deleted.
        let Some(token) = self.new_token(conn, req.election).await? else {
            return Ok(held(None));
        };
        let owner = new_owner();
        self.pending().insert(
            key.clone(),
            Pending {
                owner: owner.clone(),
                token,
                value: req.value.to_vec(),
                ttl_us,
            },
        );
        let params = mysql_async::Params::Positional(vec![
            req.election.into(),
            token.into(),
            owner.clone().into(),
            req.candidate.into(),
            req.value.into(),
            ttl_us.into(),
            ttl_us.into(),
        ]);
        match conn.exec_drop(&self.sql.insert, params).await {
            Ok(()) => {
                self.pending().remove(key);
                Ok(Acquired::Won(Term {
                    election: req.election.to_owned(),
                    owner,
                    token,
                    version: 1,
                }))
            }
            Err(e) if error::is_contention(&e) => {
                self.pending().remove(key);
                Ok(held(None))
            }
            Err(e) if error::is_duplicate(&e) => {
                self.pending().remove(key);
                let now = self.read(conn, req.election).await?;
                Ok(held(now))
            }
            Err(e) => Err(self.map_table_error("starting a term", e)),
        }
    }

    /// Extend `term` by the ttl it was started with, judged by the
    /// database's clock: lands only while the row is still this term's and
    /// has not expired.
    ///
    /// # Errors
    /// [`Error::Lost`] when the row is not this term's any more (released,
    /// expired, taken over, deleted); store failures.
    ///
    /// # Cancel safety
    /// Cancel safe: a renewal that landed unseen only moves the expiry
    /// later, and the next renewal matches on owner and token, not version.
    pub async fn renew(&self, term: &Term) -> Result<Term> {
        self.bounded("renew", async {
            let (tx, rx) = oneshot::channel();
            Renewals::enqueue(&self.renewals, term.clone(), tx);
            let renewed = rx.await.map_err(|_| {
                error::unavailable("renewing the lease: the renewal task ended without an answer")
            })??;
            if let Some(version) = renewed {
                return Ok(Term {
                    version,
                    ..term.clone()
                });
            }
            let mut conn = self.conn().await?;
            let why = match self.read(&mut conn, &term.election).await? {
                None => "the lease row is gone (deleted by hand?)".to_owned(),
                Some(r) if r.owner != term.owner => format!(
                    "another term holds it now (token {}, held by {:?})",
                    r.token, r.holder
                ),
                Some(r) if r.released => "it was released".to_owned(),
                Some(_) => "it expired by the database's clock before this renewal".to_owned(),
            };
            Err(Error::Lost(format!(
                "mysql lease of {:?} (token {}): {why}",
                term.election, term.token
            )))
        })
        .await
    }

    /// How many renewal statements this table has sent, and how many
    /// renewals they carried (for benchmarks).
    pub fn renewal_counts(&self) -> (u64, u64) {
        let q = self.renewals.queue();
        (q.statements, q.renewed)
    }

    async fn release_on(&self, conn: &mut Conn, term: &Term) -> Result<()> {
        conn.exec_drop(&self.sql.release, (&term.election, &term.owner, term.token))
            .await
            .map_err(|e| self.map_table_error("releasing the lease", e))
    }

    /// Mark `term`'s row released, so the next candidate leads at once. A
    /// term that is already gone or released is left alone; nothing else
    /// is ever touched.
    ///
    /// # Errors
    /// Store failures (the row then expires after its ttl).
    ///
    /// # Cancel safety
    /// Cancel safe: idempotent.
    pub async fn release(&self, term: &Term) -> Result<()> {
        self.bounded("release", async {
            let mut conn = self.conn().await?;
            self.release_on(&mut conn, term).await
        })
        .await
    }

    /// The live leader of `election`, if any, by the database's clock.
    ///
    /// # Errors
    /// Store failures.
    ///
    /// # Cancel safety
    /// Cancel safe: a read.
    pub async fn leader(&self, election: &str) -> Result<Option<Leader>> {
        self.bounded("leader", async {
            let mut conn = self.conn().await?;
            let row: Option<(String, Vec<u8>, u64)> = conn
                .exec_first(&self.sql.leader, (election,))
                .await
                .map_err(|e| self.map_table_error("reading the leader", e))?;
            Ok(row.map(|(holder, value, token)| Leader {
                holder,
                value,
                token,
            }))
        })
        .await
    }

    /// The ttl a row was started with, and whether its term is over; for
    /// tests.
    #[doc(hidden)]
    pub async fn inspect(&self, election: &str) -> Result<Option<(Duration, bool)>> {
        let mut conn = self.conn().await?;
        Ok(self
            .read(&mut conn, election)
            .await?
            .map(|r| (Duration::from_micros(r.ttl_us), r.is_free())))
    }
}

/// The most renewals one statement carries.
pub const MAX_RENEWAL_BATCH: usize = 256;

type RenewalAnswer = oneshot::Sender<Result<Option<u64>>>;

/// Renewals coalesced into shared statements: while batches are on their
/// way (at most [`RENEWAL_BATCHES_IN_FLIGHT`]), the renewals that arrive
/// wait and go together in the next one. A
/// batch is one `UPDATE` of every row still held by its term, tagged with a
/// random batch id; when fewer rows matched than terms were sent, one
/// `SELECT` of the rows carrying the tag tells which renewed. Nothing waits for a timer: a batch goes as soon as the previous
/// one is answered.
struct Renewals {
    pool: Pool,
    leases: String,
    single: String,
    timeout: Duration,
    state: Mutex<RenewalQueue>,
}

/// How many batches may be on their way at once (each on a connection of
/// its own): one slow commit (an fsync on a busy disk) then holds up only
/// the renewals in its own batch.
const RENEWAL_BATCHES_IN_FLIGHT: usize = 4;

#[derive(Default)]
struct RenewalQueue {
    waiting: Vec<(Term, RenewalAnswer)>,
    running: usize,
    statements: u64,
    renewed: u64,
}

impl Renewals {
    fn queue(&self) -> std::sync::MutexGuard<'_, RenewalQueue> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn enqueue(this: &Arc<Renewals>, term: Term, answer: RenewalAnswer) {
        let start = {
            let mut q = this.queue();
            q.waiting.push((term, answer));
            let start = q.running < RENEWAL_BATCHES_IN_FLIGHT;
            if start {
                q.running += 1;
            }
            start
        };
        if start {
            // A task of its own, so that a caller that gives up (a dropped
            // future) never strands the renewals queued behind it.
            tokio::spawn(Arc::clone(this).drain());
        }
    }

    async fn drain(self: Arc<Self>) {
        for _ in 0..usize::MAX {
            let batch: Vec<(Term, RenewalAnswer)> = {
                let mut q = self.queue();
                // Answers nobody waits for any more (a caller that gave up)
                // are not sent.
                q.waiting.retain(|(_, answer)| !answer.is_closed());
                if q.waiting.is_empty() {
                    q.running -= 1;
                    return;
                }
                let n = q.waiting.len().min(MAX_RENEWAL_BATCH);
                q.waiting.drain(..n).collect()
            };
            let terms: Vec<&Term> = batch.iter().map(|(t, _)| t).collect();
            let mut statements = 1;
            let outcome = match tokio::time::timeout(self.timeout, self.send(&terms)).await {
                Ok(Ok((versions, n))) => {
                    statements = n;
                    Ok(versions)
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(Error::Timeout {
                    operation: "renew",
                    after: self.timeout,
                }),
            };
            {
                let mut q = self.queue();
                q.statements += statements;
                if let Ok(v) = &outcome {
                    q.renewed += v.iter().filter(|v| v.is_some()).count() as u64;
                }
            }
            for (i, (_, answer)) in batch.into_iter().enumerate() {
                let _ = answer.send(match &outcome {
                    Ok(versions) => Ok(versions[i]),
                    Err(e) => Err(e.clone()),
                });
            }
        }
    }

    /// One batch: for each term, its new version, or `None` when its row
    /// is not its any more.
    /// Also returns how many statements it took.
    async fn send(&self, terms: &[&Term]) -> Result<(Vec<Option<u64>>, u64)> {
        let mut conn = self
            .pool
            .get_conn()
            .await
            .map_err(|e| error::map("connecting", e))?;
        if let [term] = terms {
            conn.exec_drop(&self.single, (&term.election, &term.owner, term.token))
                .await
                .map_err(|e| error::map("renewing the lease", e))?;
            return Ok((
                vec![
                    (conn.affected_rows() == 1)
                        .then(|| conn.last_insert_id().unwrap_or(term.version + 1)),
                ],
                1,
            ));
        }
        // Pad to a power of two (repeating the last term), so that a few
        // statement shapes cover every batch and stay prepared.
        let slots = terms.len().next_power_of_two();
        let padded: Vec<&Term> = (0..slots).map(|i| terms[i.min(terms.len() - 1)]).collect();
        let tag: u64 = rand::random::<u64>() | 1;
        let marks = vec!["?"; slots].join(", ");
        let tuples = vec!["(?, ?, ?)"; slots].join(", ");
        let update = format!(
            "UPDATE {l} SET `version` = `version` + 1, `renewal` = ?, \
             `renewed_at` = UTC_TIMESTAMP(6), \
             `expires_at` = UTC_TIMESTAMP(6) + INTERVAL `ttl_us` MICROSECOND \
             WHERE `election` IN ({marks}) AND (`election`, `owner`, `token`) IN ({tuples}) \
             AND NOT `released` AND `expires_at` >= UTC_TIMESTAMP(6)",
            l = self.leases
        );
        let mut params: Vec<mysql_async::Value> = vec![tag.into()];
        params.extend(padded.iter().map(|t| t.election.as_str().into()));
        for t in &padded {
            params.push(t.election.as_str().into());
            params.push(t.owner.as_str().into());
            params.push(t.token.into());
        }
        conn.exec_drop(&update, mysql_async::Params::Positional(params))
            .await
            .map_err(|e| error::map("renewing leases", e))?;
        let distinct: std::collections::HashSet<(&str, &str, u64)> = terms
            .iter()
            .map(|t| (t.election.as_str(), t.owner.as_str(), t.token))
            .collect();
        if conn.affected_rows() == distinct.len() as u64 {
            // Every term matched its row (CLIENT_FOUND_ROWS counts matched
            // rows): all renewed, each version up by one from the last one
            // this process saw (renewals match on owner and token, never on
            // the version, so a version that lags after a lost answer does
            // no harm).
            return Ok((terms.iter().map(|t| Some(t.version + 1)).collect(), 1));
        }
        // Some did not match: ask which did.
        let select = format!(
            "SELECT `election`, `owner`, `token`, `version` FROM {l} \
             WHERE `election` IN ({marks}) AND `renewal` = ?",
            l = self.leases
        );
        let mut params: Vec<mysql_async::Value> =
            padded.iter().map(|t| t.election.as_str().into()).collect();
        params.push(tag.into());
        let rows: Vec<(String, String, u64, u64)> = conn
            .exec(&select, mysql_async::Params::Positional(params))
            .await
            .map_err(|e| error::map("reading renewed leases", e))?;
        let renewed: HashMap<(&str, &str, u64), u64> = rows
            .iter()
            .map(|(e, o, t, v)| ((e.as_str(), o.as_str(), *t), *v))
            .collect();
        let versions = terms
            .iter()
            .map(|t| {
                renewed
                    .get(&(t.election.as_str(), t.owner.as_str(), t.token))
                    .copied()
            })
            .collect();
        Ok((versions, 2))
    }
}

fn held(row: Option<Row>) -> Acquired {
    match row {
        Some(r) => Acquired::Held {
            leader: r.leader(),
            version: r.version,
        },
        None => Acquired::Held {
            leader: None,
            version: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_plain() {
        assert!(Ident::new("table", "leasehold_leases").is_ok());
        assert!(Ident::new("table", "a$1").is_ok());
        for bad in ["", "123", "a`b", "a b", "a.b", "é", &"x".repeat(65)] {
            let e = Ident::new("table", bad).unwrap_err().to_string();
            assert!(e.contains("`table`"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn requests_are_checked_before_any_statement() {
        let ok = Request {
            election: "e",
            candidate: "c",
            value: b"v",
            ttl: Duration::from_secs(2),
        };
        assert!(check_request(&ok).is_ok());
        let long = "é".repeat(256);
        let big = vec![0u8; MAX_VALUE_BYTES + 1];
        for (req, field) in [
            (
                Request {
                    election: "",
                    ..ok.clone()
                },
                "election",
            ),
            (
                Request {
                    election: &long,
                    ..ok.clone()
                },
                "election",
            ),
            (
                Request {
                    candidate: &long,
                    ..ok.clone()
                },
                "id",
            ),
            (
                Request {
                    value: &big,
                    ..ok.clone()
                },
                "value",
            ),
            (
                Request {
                    ttl: Duration::ZERO,
                    ..ok.clone()
                },
                "ttl",
            ),
            (
                Request {
                    ttl: MAX_TTL * 2,
                    ..ok.clone()
                },
                "ttl",
            ),
        ] {
            let e = check_request(&req).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidOption { field: f, .. } if *f == field),
                "{field}: {e}"
            );
        }
        // 255 four-byte characters fit.
        let max = "😀".repeat(255);
        assert!(
            check_request(&Request {
                election: &max,
                ..ok
            })
            .is_ok()
        );
    }

    #[test]
    fn ddl_quotes_every_name() {
        let names = Names::new(Ident::new("database", "app").unwrap());
        let ddl = names.ddl();
        assert!(ddl[0].contains("`app`.`leasehold_leases`"), "{}", ddl[0]);
        assert!(ddl[1].contains("`app`.`leasehold_tokens`"), "{}", ddl[1]);
        assert!(ddl[1].contains("AUTO_INCREMENT"));
    }

    #[test]
    fn owners_are_random_and_fixed_width() {
        let (a, b) = (new_owner(), new_owner());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }
}
