//! Guarded writes: the condition that holds exactly while a term lasts, for
//! the application's own statements in the same database.
//!
//! The condition is an `EXISTS` over the term's lease row (election, owner,
//! token, not released, `expires_at >= UTC_TIMESTAMP(6)`: the backend's own
//! judgment of "this term still runs", as its renewals make it) read with
//! `LOCK IN SHARE MODE`. The locking read is what makes it exact: it reads
//! the newest committed row (never an older snapshot of a `REPEATABLE
//! READ` transaction), and the share lock it takes makes a takeover, a
//! release, a renewal and a `DELETE` by hand (each an exclusive row lock)
//! wait until the guarded statement or transaction ends. The guarded write
//! therefore commits before the next term starts, or does not happen.

use leasehold_core::{Error, Result};
use mysql_async::prelude::Queryable;
use mysql_async::{Transaction, Value};

use crate::error::{self, BACKEND};

/// The condition that holds exactly while one term lasts, for the
/// application's own statements on the server of the lease table
/// ([`MysqlBackend::leader_guard`](crate::MysqlBackend::leader_guard)).
///
/// Use it in one of two ways:
///
/// * **in one statement**: put [`condition`](Self::condition) in its `WHERE`
///   and its [`params`](Self::params) at the place of its three `?` among
///   the statement's own parameters (after them, when the condition ends
///   the statement). The statement then changes rows only while the term
///   lasts; after it, none (check `affected_rows()`).
/// * **in a transaction**: call [`hold`](Self::hold) first. It fails with
///   [`Error::Lost`] once the term is over; while the term lasts it keeps the
///   lease row share-locked until the transaction ends, so no other term can
///   start before the transaction commits.
///
/// Both are injection-safe: database and table names were checked when the
/// backend was built (ASCII letters, digits, `_`, `$`) and are
/// backquoted; the term's election, owner and token are parameters.
///
/// While a guarded statement or transaction runs it holds the lease row's
/// share lock: the leader's own renewals wait for it. Keep guarded
/// transactions short, far below the ttl's safety margin (and below
/// `innodb_lock_wait_timeout`), or the leader steps down on its own
/// deadline while its renewal waits.
#[derive(Clone, PartialEq, Eq)]
pub struct LeaderGuard {
    /// `` `database`.`table` ``.
    table: String,
    election: String,
    owner: String,
    token: u64,
}

impl std::fmt::Debug for LeaderGuard {
    // The owner identity is the term's secret (renew and release check it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderGuard")
            .field("table", &self.table)
            .field("election", &self.election)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl LeaderGuard {
    pub(crate) fn new(table: String, election: &str, owner: &str, token: u64) -> LeaderGuard {
        LeaderGuard {
            table,
            election: election.to_owned(),
            owner: owner.to_owned(),
            token,
        }
    }

    /// The election this guard is for.
    pub fn election(&self) -> &str {
        &self.election
    }

    /// The fencing token of the term.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// A boolean SQL expression that is true exactly while the term lasts,
    /// and share-locks the lease row (until the statement's transaction
    /// ends) when it is. It has three `?` placeholders, whose values are
    /// [`params`](Self::params), in order.
    ///
    /// ```
    /// # fn demo(guard: &leasehold_mysql::LeaderGuard) {
    /// let sql = format!(
    ///     "UPDATE `app_config` SET `value` = ? WHERE `key` = ? AND {}",
    ///     guard.condition()
    /// );
    /// assert_eq!(sql.matches('?').count(), 5);
    /// # }
    /// ```
    pub fn condition(&self) -> String {
        format!(
            "EXISTS (SELECT 1 FROM {} AS `leasehold_guard` \
             WHERE `leasehold_guard`.`election` = ? AND `leasehold_guard`.`owner` = ? \
             AND `leasehold_guard`.`token` = ? AND NOT `leasehold_guard`.`released` \
             AND `leasehold_guard`.`expires_at` >= UTC_TIMESTAMP(6) LOCK IN SHARE MODE)",
            self.table
        )
    }

    /// The values of [`condition`](Self::condition)'s three placeholders, in
    /// order.
    pub fn params(&self) -> [Value; 3] {
        [
            Value::from(self.election.as_str()),
            Value::from(self.owner.as_str()),
            Value::from(self.token),
        ]
    }

    /// Check, inside `transaction`, that the term still lasts, and keep it
    /// lasting until the transaction ends: the lease row is share-locked, so
    /// a takeover, a release, a renewal or a deletion of the row waits for
    /// this transaction's commit or rollback. Call it before the
    /// transaction's writes; they then commit before any next term starts.
    ///
    /// # Errors
    /// [`Error::Lost`] when the term is over (released, expired by the
    /// database's clock, taken over, row deleted): roll back. A lock wait
    /// that times out or a deadlock is [`Error::Unavailable`] (retry the
    /// transaction); other failures as the backend maps them.
    ///
    /// # Cancel safety
    /// Cancel safe, as the statement it sends; a transaction dropped
    /// unfinished is rolled back.
    pub async fn hold(&self, transaction: &mut Transaction<'_>) -> Result<()> {
        let sql = format!("SELECT {}", self.condition());
        let lasts: Option<bool> = transaction
            .exec_first(sql, mysql_async::Params::Positional(self.params().to_vec()))
            .await
            .map_err(|e| error::map("checking the leader guard", e))?;
        if lasts == Some(true) {
            Ok(())
        } else {
            Err(Error::Lost(format!(
                "{BACKEND}: the term of election {:?} with token {} is over (released, expired by the database's clock, taken over, or its row deleted); roll the transaction back",
                self.election, self.token
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_condition_has_three_placeholders_and_no_values() {
        let g = LeaderGuard::new("`app`.`t`".into(), "e'; DROP TABLE x; --", "o", 7);
        let c = g.condition();
        assert!(c.starts_with("EXISTS (SELECT 1 FROM `app`.`t` AS `leasehold_guard`"));
        assert_eq!(c.matches('?').count(), 3);
        assert!(c.ends_with("LOCK IN SHARE MODE)"));
        assert!(!c.contains("DROP"));
        assert_eq!(g.params()[2], Value::from(7u64));
        assert!(!format!("{g:?}").contains("owner"));
    }
}
