//! Guarded writes: the condition that holds exactly while a term lasts, for
//! the application's own statements in the same database.
//!
//! The condition is an `EXISTS` over the term's lease row (election, owner,
//! token, not released, `expires_at > clock_timestamp()`: the backend's own
//! judgment of "this term still runs") that takes a `FOR SHARE` row lock.
//! The lock is what makes it exact: a takeover (`INSERT ... ON CONFLICT DO
//! UPDATE`), a release, a renewal and a `DELETE` by hand all lock the row
//! for update, so none of them can commit between the check and the end of
//! the transaction that made it. The guarded write therefore commits before
//! the next term starts, or does not happen at all.

use leasehold_core::{Error, Result};
use tokio_postgres::Transaction;
use tokio_postgres::types::{ToSql, Type};

use crate::error::{NAME, map};

/// The condition that holds exactly while one term lasts, for the
/// application's own statements on the database of the lease table
/// ([`PostgresBackend::leader_guard`](crate::PostgresBackend::leader_guard)).
///
/// Use it in one of two ways:
///
/// * **in one statement**: put [`condition`](Self::condition) in its `WHERE`
///   and pass [`params`](Self::params) (or [`typed_params`](Self::typed_params)
///   for `query_typed` / `execute_typed`) after the statement's own
///   parameters. The statement then changes rows only while the term lasts;
///   after the term it changes none (check its row count).
/// * **in a transaction**: call [`hold`](Self::hold) first. It fails with
///   [`Error::Lost`] once the term is over; while the term lasts it locks
///   the lease row in share mode until the transaction ends, so no other
///   term can start before the transaction commits.
///
/// Both are injection-safe: the table name was checked when the backend
/// was built (letters, digits, `_`, `$`) and is double-quoted; the term's
/// election, owner and token are parameters, never spliced into the text.
///
/// While a guarded statement or transaction runs it holds the lease row's
/// share lock: the leader's own renewals (and every renewal batched with
/// them) wait for it to end. Keep guarded transactions short, far below the
/// ttl's safety margin, or the leader steps down on its own deadline while
/// its renewal waits.
#[derive(Clone, PartialEq, Eq)]
pub struct LeaderGuard {
    /// The quoted lease table.
    table: String,
    election: String,
    owner: String,
    token: i64,
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
    pub(crate) fn new(table: &str, election: &str, owner: &str, token: u64) -> LeaderGuard {
        LeaderGuard {
            table: table.to_owned(),
            election: election.to_owned(),
            owner: owner.to_owned(),
            // Tokens come from a bigint sequence; one above it never matches.
            token: i64::try_from(token).unwrap_or(i64::MAX),
        }
    }

    /// The election this guard is for.
    pub fn election(&self) -> &str {
        &self.election
    }

    /// The fencing token of the term.
    pub fn token(&self) -> u64 {
        u64::try_from(self.token).unwrap_or(0)
    }

    /// A boolean SQL expression that is true exactly while the term lasts,
    /// and locks the lease row in share mode (until the transaction ends)
    /// when it is. `params_before` is the number of parameters the statement
    /// has before it: the expression uses `$(params_before + 1)` to
    /// `$(params_before + 3)`, whose values are [`params`](Self::params).
    ///
    /// ```
    /// # fn demo(guard: &leasehold_postgres::LeaderGuard) {
    /// let sql = format!(
    ///     "UPDATE app_config SET value = $1 WHERE key = $2 AND {}",
    ///     guard.condition(2)
    /// );
    /// assert!(sql.contains("$3") && sql.contains("$5") && !sql.contains("$6"));
    /// # }
    /// ```
    pub fn condition(&self, params_before: usize) -> String {
        let (e, o, t) = (params_before + 1, params_before + 2, params_before + 3);
        format!(
            "EXISTS (SELECT 1 FROM {} AS leasehold_guard \
             WHERE leasehold_guard.election = ${e}::text AND leasehold_guard.owner = ${o}::text \
             AND leasehold_guard.token = ${t}::int8 AND NOT leasehold_guard.released \
             AND leasehold_guard.expires_at > clock_timestamp() FOR SHARE)",
            self.table
        )
    }

    /// The values of [`condition`](Self::condition)'s three parameters, in
    /// order: put them after the statement's own.
    pub fn params(&self) -> [&(dyn ToSql + Sync); 3] {
        [&self.election, &self.owner, &self.token]
    }

    /// [`params`](Self::params) with their types, for `query_typed` and
    /// `execute_typed` (unnamed statements: what works through PgBouncer in
    /// transaction mode).
    pub fn typed_params(&self) -> [(&(dyn ToSql + Sync), Type); 3] {
        [
            (&self.election, Type::TEXT),
            (&self.owner, Type::TEXT),
            (&self.token, Type::INT8),
        ]
    }

    /// Check, inside `transaction`, that the term still lasts, and keep it
    /// lasting until the transaction ends: the lease row is locked in share
    /// mode, so a takeover, a release, a renewal or a deletion of the row
    /// waits for this transaction's commit or rollback. Call it before the
    /// transaction's writes; they then commit before any next term starts.
    ///
    /// # Errors
    /// [`Error::Lost`] when the term is over (released, expired by the
    /// database's clock, taken over, row deleted): roll back. In
    /// `REPEATABLE READ` or `SERIALIZABLE` a row changed since the
    /// transaction's snapshot is a serialization failure
    /// ([`Error::Unavailable`], retry the transaction). Other failures as
    /// the backend maps them.
    ///
    /// # Cancel safety
    /// Cancel safe, as the statement it sends; a transaction left with an
    /// unfinished statement is rolled back when dropped.
    pub async fn hold(&self, transaction: &Transaction<'_>) -> Result<()> {
        let sql = format!("SELECT {}", self.condition(0));
        let row = transaction
            .query_typed_one(&sql, &self.typed_params())
            .await
            .map_err(|e| map("check the leader guard", e))?;
        let lasts: bool = row
            .try_get(0)
            .map_err(|e| map("check the leader guard: the answer", e))?;
        if lasts {
            Ok(())
        } else {
            Err(Error::Lost(format!(
                "{NAME}: the term of election {:?} with token {} is over (released, expired by the database's clock, taken over, or its row deleted); roll the transaction back",
                self.election, self.token
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_condition_numbers_its_parameters_after_the_statements() {
        let g = LeaderGuard::new("\"s\".\"t\"", "e'; DROP TABLE x; --", "o", 7);
        let c = g.condition(2);
        assert!(c.starts_with("EXISTS (SELECT 1 FROM \"s\".\"t\" AS leasehold_guard"));
        assert!(c.contains("$3::text") && c.contains("$4::text") && c.contains("$5::int8"));
        assert!(!c.contains("$6") && !c.contains("$2"));
        assert!(c.ends_with("FOR SHARE)"));
        // Values never reach the text.
        assert!(!c.contains("DROP"));
        assert_eq!(g.params().len(), 3);
        assert_eq!(g.typed_params()[2].1, Type::INT8);
        // The owner is the term's secret: Debug leaves it out.
        assert!(!format!("{g:?}").contains("owner"));
        assert_eq!(LeaderGuard::new("t", "e", "o", u64::MAX).token, i64::MAX);
    }
}
