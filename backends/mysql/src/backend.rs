//! The engine's traits over the lease table: a thin adapter.

use async_trait::async_trait;
use leasehold_core::{
    AcquireRequest, Backend, Claim, ElectionOptions, Error, Expiry, Family, FencingToken,
    LeaderInfo, RecordOutcome, RecordStore, Result,
};

use crate::MysqlBackend;
use crate::error::BACKEND;
use crate::table::{Acquired, Leader, Request, Term, check_request};

fn leader_info(l: Leader) -> LeaderInfo {
    LeaderInfo {
        id: l.holder,
        value: l.value,
        token: FencingToken(l.token),
    }
}

fn claim(term: Term) -> Claim {
    Claim {
        key: term.election.clone(),
        election: term.election,
        session: 0,
        owner: term.owner,
        token: FencingToken(term.token),
        version: i64::try_from(term.version).unwrap_or(i64::MAX),
    }
}

fn term(claim: &Claim) -> Result<Term> {
    if claim.owner.is_empty() {
        return Err(Error::Lost(format!(
            "mysql: the claim of {:?} names no owner; it is not a claim this backend made",
            claim.election
        )));
    }
    Ok(Term {
        election: claim.election.clone(),
        owner: claim.owner.clone(),
        token: claim.token.get(),
        version: u64::try_from(claim.version).unwrap_or(0),
    })
}

#[async_trait]
impl Backend for MysqlBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn family(&self) -> Family<'_> {
        Family::Record(self)
    }

    fn validate(&self, options: &ElectionOptions) -> Result<()> {
        check_request(&Request {
            election: &options.election,
            candidate: &options.candidate_id,
            value: &options.value,
            ttl: options.ttl,
        })
    }

    /// One read; the database's clock says whether the row's term still runs.
    async fn leader(&self, election: &str) -> Result<Option<LeaderInfo>> {
        Ok(self.table().leader(election).await?.map(leader_info))
    }
}

#[async_trait]
impl RecordStore for MysqlBackend {
    /// The database judges expiry, with `UTC_TIMESTAMP(6)`, inside the
    /// conditional statement that takes a row over.
    fn expiry(&self) -> Expiry {
        Expiry::Store
    }

    /// One read; on a free row a new token and one conditional statement.
    async fn try_acquire(&self, req: &AcquireRequest) -> Result<RecordOutcome> {
        let r = Request {
            election: &req.election,
            candidate: &req.candidate,
            value: &req.value,
            ttl: req.ttl,
        };
        Ok(match self.table().acquire(&r).await? {
            Acquired::Won(t) => RecordOutcome::Acquired(claim(t)),
            Acquired::Held { leader, version } => RecordOutcome::Held {
                leader: leader.map(leader_info),
                revision: i64::try_from(version).unwrap_or(i64::MAX),
            },
        })
    }

    /// One conditional statement on owner and token.
    async fn renew(&self, claim_in: &Claim) -> Result<Claim> {
        let renewed = self.table().renew(&term(claim_in)?).await?;
        Ok(Claim {
            key: claim_in.key.clone(),
            ..claim(renewed)
        })
    }

    /// One conditional statement marking the row released.
    async fn release(&self, claim: &Claim) -> Result<()> {
        match term(claim) {
            Ok(t) => self.table().release(&t).await,
            // Not ours to release: nothing to do.
            Err(_) => Ok(()),
        }
    }
}
