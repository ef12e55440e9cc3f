//! The checker: reads the whole history (the register's log, the
//! supervisors' events as the runner stamped them, the faults) and says
//! whether leasehold kept its promises.
//!
//! All times are CLOCK_MONOTONIC nanoseconds on this one machine.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::register::Write;

/// What happened to a supervisor (a `leasehold run` process), stamped by the
/// runner when it read the line or sent the signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ev {
    /// `{"event":"elected"}`: its worker (`pid`) runs with `token`.
    Elected { token: u64, worker: Option<u32> },
    /// `{"event":"lost"}`: the CLI says it stopped its worker.
    Lost,
    /// `{"event":"exited"}`: the worker ended.
    Exited,
    /// The runner SIGKILLed the supervisor.
    Killed,
    /// The runner SIGSTOPped supervisor and worker.
    Stopped,
    /// The runner SIGCONTed them.
    Continued,
}

/// One supervisor event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Event {
    /// When (monotonic ns).
    pub(crate) t: u64,
    /// The supervisor's pid.
    pub(crate) sup: u32,
    /// What.
    pub(crate) ev: Ev,
}

/// One injected fault: from `start` until `heal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    pub(crate) kind: &'static str,
    pub(crate) start: u64,
    pub(crate) heal: u64,
}

/// A leader's claim deleted by hand (the `delete-leader` fault): an
/// operator's override, which lets the next candidate in at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deletion {
    /// When the delete was sent (monotonic ns).
    pub(crate) at: u64,
    /// The deleted claim's token (etcd: create revision; ZooKeeper: czxid):
    /// the fencing token of the term it deposed.
    pub(crate) token: u64,
}

/// The bounds the checker holds the history to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// A worker may still write this long after its supervisor reported
    /// lost or exited, or was killed: the CLI's grace plus scheduling slack.
    pub(crate) orphan_ns: u64,
    /// A frozen leader's worker may still write this long after SIGCONT,
    /// before its supervisor (thawed at the same instant) stops it. Such
    /// late writes must be rejected by the register, and are counted.
    pub(crate) resume_ns: u64,
    /// After a fault heals, an accepted write must arrive within this, and
    /// the election may be without a live term for no longer than this:
    /// ttl + slack. The slack (6 s by default, `--slack-ms`) covers what
    /// comes on top of the old lease's ttl before a new term's first write:
    /// the store noticing the expiry (etcd checks leases every 500 ms; a
    /// ZooKeeper session's expiry is checked per tick), the store itself
    /// recovering after a restart or a member's return (a new raft or zab
    /// leader, 1 to 3 s here), a candidate's retry interval and reconnect,
    /// and starting the worker.
    pub(crate) recover_ns: u64,
    /// A leader whose claim was deleted by hand must end its term (its
    /// supervisor's `lost` line) and stop acting within this of the
    /// deletion. Its writes in that window after the next term began are
    /// counted (`deposed`), not failed: the store let the next candidate in
    /// at once, so only the fencing token (which the register checks) keeps
    /// the resource safe meanwhile.
    pub(crate) deposed_ns: u64,
    /// The lease ttl. A deletion by hand while another fault is in progress
    /// or within a ttl of its heal (the leader's link to the store may be
    /// down or reconnecting, so it cannot hear the deletion) is held to the
    /// leader's local deadline instead of `deposed_ns`: the deposed term
    /// must end within a ttl of the deletion.
    pub(crate) ttl_ns: u64,
    /// The run's start: times in messages are seconds since then (as in the
    /// runner's progress lines).
    pub(crate) origin: u64,
    /// How many terms may act at once: 1 for an election, N for a
    /// semaphore of N permits (`leasehold run -n N`; the register then
    /// accepts the N highest tokens, see register.rs).
    pub(crate) permits: usize,
}

/// The verdict over one run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    pub(crate) backend: String,
    pub(crate) seed: u64,
    pub(crate) seconds: u64,
    pub(crate) terms: usize,
    pub(crate) faults: BTreeMap<&'static str, usize>,
    pub(crate) accepted: usize,
    pub(crate) stale_rejected: usize,
    pub(crate) late_after_freeze: usize,
    pub(crate) overlaps: usize,
    pub(crate) orphaned: usize,
    pub(crate) worst_recovery_ns: Option<u64>,
    /// Writes of a leader deposed by hand in its `deposed_ns` window, after
    /// the next term began.
    pub(crate) deposed: usize,
    /// The worst time from a hand deletion to the end of the term it
    /// deposed, over the deletions made while no other fault was in progress
    /// or within a ttl of its heal.
    pub(crate) worst_notice_ns: Option<u64>,
    /// Deletions made while another fault was in progress or within a ttl of
    /// its heal (held to the ttl, not counted in `worst_notice_ns`).
    pub(crate) disturbed_deletions: usize,
    /// The longest time the election had no live term while no fault was in
    /// progress (measured from the last heal, or from the end of the last
    /// term).
    pub(crate) longest_leaderless_ns: u64,
    /// The longest time without an accepted write (from the first one to
    /// the end of the fault phase).
    pub(crate) longest_gap_ns: u64,
    pub(crate) recover_bound_ns: u64,
    pub(crate) violations: Vec<String>,
}

#[derive(Debug, Default, Clone)]
struct Term {
    sup: u32,
    token: u64,
    worker: Option<u32>,
    elected: u64,
    ended: Option<u64>,
    continued: Vec<u64>,
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Checks the history. `alive_orphans` are workers the runner found still
/// running after every supervisor was stopped (pid, token).
pub(crate) fn check(
    writes: &[Write],
    events: &[Event],
    faults: &[Fault],
    deletions: &[Deletion],
    end: u64,
    alive_orphans: &[(u32, Option<u64>)],
    limits: Limits,
) -> Report {
    let mut r = Report {
        recover_bound_ns: limits.recover_ns,
        ..Report::default()
    };
    // Terms, in the order they were elected, from the supervisors' events.
    let mut events = events.to_vec();
    events.sort_by_key(|e| e.t);
    let mut terms: Vec<Term> = Vec::new();
    let mut current: HashMap<u32, usize> = HashMap::new();
    let mut by_token: HashMap<u64, (u64, u32)> = HashMap::new();
    // The highest token of a term that had ended (token, when it ended).
    let mut highest_ended: Option<(u64, u64)> = None;
    for e in &events {
        match e.ev {
            Ev::Elected { token, worker } => {
                // A token handed to two terms: two candidates, or one
                // candidate's two separate terms.
                if let Some((before, sup)) = by_token.insert(token, (e.t, e.sup)) {
                    let whom = if sup == e.sup {
                        format!("both times to the same candidate (supervisor pid {sup})")
                    } else {
                        format!("to two candidates (supervisor pids {sup} and {})", e.sup)
                    };
                    r.violations.push(format!(
                        "token {token} was handed out twice, {whom}, at {:.3}s and {:.3}s: every term must get a token of its own, greater than every earlier term's",
                        secs(before.saturating_sub(limits.origin)),
                        secs(e.t.saturating_sub(limits.origin))
                    ));
                } else if let Some((high, ended)) = highest_ended
                    && token < high
                    // A semaphore's holder may learn of its permit after a
                    // later permit (granted after it on the store) began
                    // and ended: its token is checked by the register.
                    && limits.permits <= 1
                {
                    r.violations.push(format!(
                        "token {token} was handed out at {:.3}s, below token {high} of a term that had ended at {:.3}s: tokens must strictly increase across terms",
                        secs(e.t.saturating_sub(limits.origin)),
                        secs(ended.saturating_sub(limits.origin))
                    ));
                }
                current.insert(e.sup, terms.len());
                terms.push(Term {
                    sup: e.sup,
                    token,
                    worker,
                    elected: e.t,
                    ..Term::default()
                });
            }
            Ev::Lost | Ev::Exited | Ev::Killed => {
                if let Some(term) = current.get(&e.sup).map(|i| &mut terms[*i])
                    && term.ended.is_none()
                {
                    term.ended = Some(e.t);
                    if highest_ended.is_none_or(|(h, _)| term.token > h) {
                        highest_ended = Some((term.token, e.t));
                    }
                }
            }
            Ev::Continued => {
                if let Some(term) = current.get(&e.sup).map(|i| &mut terms[*i]) {
                    term.continued.push(e.t);
                }
            }
            Ev::Stopped => {}
        }
    }
    r.terms = terms.len();
    // Which term a write belongs to: its worker's, else the latest term with
    // its token elected before it was sent.
    // A worker writes only its own term's token, so a write is its worker's
    // only with the same token: over a long run pids are reused (pid_max
    // is 32768 here), and a pid alone would tie an early worker's writes to
    // a late term that got the same pid, moving that term's start back.
    let term_of = |w: &Write| -> Option<usize> {
        terms
            .iter()
            .rposition(|t| t.worker == Some(w.pid) && t.token == w.token)
            .or_else(|| {
                terms
                    .iter()
                    .rposition(|t| t.token == w.token && t.elected <= w.sent)
            })
    };

    // 1. The register's own order: never a lower token accepted after a
    // higher one, never two tokens interleaved. For a semaphore of N
    // permits: never a token accepted below the N highest accepted before
    // it (N holders interleave; check 2 counts them).
    let mut highest = 0u64;
    let mut top: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
    let mut seen_runs: Vec<u64> = Vec::new();
    let mut first_accept: BTreeMap<u64, u64> = BTreeMap::new();
    let mut last_accept: Option<u64> = None;
    let permits = limits.permits.max(1);
    for w in writes {
        if !w.accepted {
            r.stale_rejected += 1;
            continue;
        }
        r.accepted += 1;
        if let Some(last) = last_accept {
            r.longest_gap_ns = r.longest_gap_ns.max(w.arrival.saturating_sub(last));
        }
        last_accept = Some(w.arrival);
        first_accept.entry(w.token).or_insert(w.arrival);
        if permits > 1 {
            if top.len() >= permits
                && let Some(low) = top.first()
                && w.token < *low
            {
                r.violations.push(format!(
                    "the register accepted token {} below the {permits} highest tokens accepted before ({top:?}) (at {:.3}s)",
                    w.token,
                    secs(w.arrival.saturating_sub(limits.origin))
                ));
            }
            top.insert(w.token);
            while top.len() > permits {
                top.pop_first();
            }
            continue;
        }
        if w.token < highest {
            r.violations.push(format!(
                "the register accepted token {} after token {highest} (at {:.3}s)",
                w.token,
                secs(w.arrival.saturating_sub(limits.origin))
            ));
        }
        highest = highest.max(w.token);
        if seen_runs.last() != Some(&w.token) {
            if seen_runs.contains(&w.token) {
                r.violations.push(format!(
                    "accepted writes of token {} resumed after token {:?} wrote (at {:.3}s): two leaders interleaved",
                    w.token,
                    seen_runs.last(),
                    secs(w.arrival.saturating_sub(limits.origin))
                ));
            }
            seen_runs.push(w.token);
        }
    }

    if let Some(last) = last_accept {
        r.longest_gap_ns = r.longest_gap_ns.max(end.saturating_sub(last));
    }

    // 2. Overlaps: a worker acting (a write it stamped) after a later
    // term had begun (elected, or its first accepted write), except a frozen
    // leader's late writes just after SIGCONT.
    let mut starts: Vec<u64> = terms.iter().map(|t| t.elected).collect();
    for w in writes.iter().filter(|w| w.accepted) {
        if let Some(i) = term_of(w) {
            starts[i] = starts[i].min(w.arrival);
        }
    }
    // next_start[i] = the earliest start of any term elected after term i.
    let mut next_start: Vec<Option<(usize, u64)>> = vec![None; terms.len()];
    let mut best: Option<(usize, u64)> = None;
    for i in (0..terms.len()).rev() {
        next_start[i] = best;
        if best.is_none_or(|(_, b)| starts[i] < b) {
            best = Some((i, starts[i]));
        }
    }
    // The hand deletions that deposed each term: the term with the deleted
    // token that was elected last before the deletion (or within the
    // window after it: a leader deposed as it was being elected).
    // Each deletion's notice bound: `deposed_ns`, or the ttl while another
    // fault is in progress or within a ttl of its heal.
    let notice_bound = |d: &Deletion| -> u64 {
        let disturbed = faults.iter().any(|f| {
            !matches!(f.kind, "delete-leader" | "delete-lease")
                && f.start <= d.at
                && d.at <= f.heal + limits.ttl_ns
        });
        if disturbed {
            limits.ttl_ns.max(limits.deposed_ns)
        } else {
            limits.deposed_ns
        }
    };
    let mut deposed_at: Vec<Vec<(u64, u64)>> = vec![Vec::new(); terms.len()];
    let mut deposed_term: Vec<Option<usize>> = Vec::new();
    for d in deletions {
        let bound = notice_bound(d);
        let i = terms
            .iter()
            .rposition(|t| t.token == d.token && t.elected <= d.at + bound);
        if let Some(i) = i {
            deposed_at[i].push((d.at, bound));
        }
        deposed_term.push(i);
    }
    let mut overlap_pairs: BTreeMap<(u64, u64), (usize, u64, u64)> = BTreeMap::new();
    let mut orphan_tokens: BTreeMap<u64, (usize, u64)> = BTreeMap::new();
    let excused_at = |i: usize, w: &Write| {
        terms[i]
            .continued
            .iter()
            .any(|c| *c <= w.sent && w.sent <= c + limits.resume_ns)
    };
    let deposed_when = |i: usize, w: &Write| {
        deposed_at[i]
            .iter()
            .any(|(d, bound)| *d <= w.sent && w.sent <= d + bound)
    };
    // A semaphore: each term acts from its start to its last write (its
    // writes a freeze or a hand deletion excuse left out); a write made
    // while `permits` other terms act is one holder too many.
    let mut acting_until: Vec<u64> = starts.clone();
    if permits > 1 {
        for w in writes {
            if let Some(i) = term_of(w)
                && !excused_at(i, w)
                && !deposed_when(i, w)
            {
                acting_until[i] = acting_until[i].max(w.sent);
            }
        }
    }
    let too_many = |i: usize, w: &Write| -> Option<(usize, u64)> {
        if permits <= 1 {
            return next_start[i].filter(|(_, s)| w.sent > *s);
        }
        let others: Vec<usize> = (0..terms.len())
            .filter(|&j| j != i && starts[j] <= w.sent && w.sent <= acting_until[j])
            .collect();
        if others.len() < permits {
            return None;
        }
        // Name the newest of them, from when it began.
        let newest = *others.iter().max_by_key(|&&j| starts[j])?;
        Some((newest, starts[newest]))
    };
    for w in writes {
        let Some(i) = term_of(w) else {
            continue;
        };
        let term = &terms[i];
        let excused = excused_at(i, w);
        let deposed = deposed_when(i, w);
        if let Some((next, s)) = too_many(i, w) {
            if excused {
                r.late_after_freeze += 1;
            } else if deposed {
                r.deposed += 1;
            } else {
                r.overlaps += 1;
                let e = overlap_pairs
                    .entry((w.token, terms[next].token))
                    .or_insert((0, w.sent - s, w.sent));
                e.0 += 1;
            }
        }
        if let Some(ended) = term.ended
            && w.sent > ended + limits.orphan_ns
            && !excused
        {
            let e = orphan_tokens.entry(w.token).or_insert((0, w.sent - ended));
            e.0 += 1;
        }
    }
    for ((old, newer), (n, after, at)) in &overlap_pairs {
        if permits > 1 {
            r.violations.push(format!(
                "more than {permits} holders acting: the worker of token {old} wrote {n} time(s) while {permits} other terms acted (the newest, token {newer}, began {:.3}s before; first at {:.3}s)",
                secs(*after),
                secs(at.saturating_sub(limits.origin))
            ));
            continue;
        }
        r.violations.push(format!(
            "two leaders acting: the worker of token {old} wrote {n} time(s) after a later term (token {newer}) began (first at {:.3}s, {:.3}s after)",
            secs(at.saturating_sub(limits.origin)),
            secs(*after)
        ));
    }
    for (token, (n, after)) in &orphan_tokens {
        r.violations.push(format!(
            "orphaned worker: token {token}'s worker wrote {n} time(s) after its supervisor reported lost/exited or was killed (first {:.3}s after, allowed {:.3}s)",
            secs(*after),
            secs(limits.orphan_ns)
        ));
    }
    r.orphaned = orphan_tokens.len();
    for (pid, token) in alive_orphans {
        r.orphaned += 1;
        r.violations.push(format!(
            "orphaned worker: pid {pid} (token {token:?}) still ran after every supervisor was stopped"
        ));
    }

    // 3. Liveness: an accepted write within the bound after each fault heals.
    for f in faults {
        *r.faults.entry(f.kind).or_default() += 1;
        let next = writes
            .iter()
            .find(|w| w.accepted && w.arrival >= f.heal)
            .map(|w| w.arrival - f.heal);
        match next {
            Some(d) => {
                r.worst_recovery_ns = Some(r.worst_recovery_ns.unwrap_or(0).max(d));
                if d > limits.recover_ns {
                    r.violations.push(format!(
                        "after {} healed at {:.3}s the next accepted write came {:.3}s later (bound {:.3}s)",
                        f.kind,
                        secs(f.heal.saturating_sub(limits.origin)),
                        secs(d),
                        secs(limits.recover_ns)
                    ));
                }
            }
            None if end.saturating_sub(f.heal) > limits.recover_ns => {
                r.worst_recovery_ns = Some(r.worst_recovery_ns.unwrap_or(0).max(end - f.heal));
                r.violations.push(format!(
                    "after {} healed at {:.3}s no write was accepted in the {:.3}s left (bound {:.3}s)",
                    f.kind,
                    secs(f.heal.saturating_sub(limits.origin)),
                    secs(end - f.heal),
                    secs(limits.recover_ns)
                ));
            }
            None => {}
        }
    }

    // 4. A hand deletion ends the deposed term within the bound.
    for (d, i) in deletions.iter().zip(&deposed_term) {
        let Some(i) = *i else {
            continue;
        };
        let term = &terms[i];
        let notice = term.ended.unwrap_or(end.max(d.at)).saturating_sub(d.at);
        let bound = notice_bound(d);
        if bound == limits.deposed_ns {
            r.worst_notice_ns = Some(r.worst_notice_ns.unwrap_or(0).max(notice));
        } else {
            r.disturbed_deletions += 1;
        }
        if notice > bound {
            let how = match term.ended {
                Some(_) => format!("its term ended only {:.3}s later", secs(notice)),
                None => format!("its term had not ended {:.3}s later", secs(notice)),
            };
            r.violations.push(format!(
                "the claim of token {} (supervisor pid {}) was deleted by hand at {:.3}s and {how} (bound {:.3}s): a deposed leader must learn it within the bound",
                d.token,
                term.sup,
                secs(d.at.saturating_sub(limits.origin)),
                secs(bound)
            ));
        }
    }

    // 5. Never leaderless for longer than ttl + slack while no fault is in
    // progress: from the first election on, every stretch without a live
    // term (by the supervisors' lines), less the faults' windows, each
    // measured from where it begins (a term's end, or a fault's heal).
    leaderless(&terms, faults, end, limits, &mut r);
    r
}

/// Check 5: stretches without a live term.
fn leaderless(terms: &[Term], faults: &[Fault], end: u64, limits: Limits, r: &mut Report) {
    let mut points: Vec<(u64, i64)> = Vec::new();
    for t in terms {
        points.push((t.elected, 1));
        if let Some(e) = t.ended {
            points.push((e.max(t.elected), -1));
        }
    }
    // At one instant an election before an end: no false zero-length gap.
    points.sort_by_key(|(t, d)| (*t, -*d));
    let mut gaps: Vec<(u64, u64)> = Vec::new();
    let mut live = 0i64;
    let mut open: Option<u64> = None;
    for (t, d) in points {
        live += d;
        if live == 0 && d < 0 {
            open = Some(t);
        } else if live > 0
            && let Some(a) = open.take()
        {
            gaps.push((a, t));
        }
    }
    if let Some(a) = open {
        gaps.push((a, end));
    }
    let mut windows: Vec<&Fault> = faults.iter().collect();
    windows.sort_by_key(|f| f.start);
    for (a, b) in gaps {
        let b = b.min(end);
        if b <= a {
            continue;
        }
        let mut from = a;
        let mut after: Option<&'static str> = None;
        let mut stretches: Vec<(u64, u64, Option<&'static str>)> = Vec::new();
        for f in windows.iter().filter(|f| f.start < b && f.heal > a) {
            if f.start > from {
                stretches.push((from, f.start, after));
            }
            if f.heal > from {
                from = f.heal;
                after = Some(f.kind);
            }
        }
        if b > from {
            stretches.push((from, b, after));
        }
        for (x, y, after) in stretches {
            let len = y - x;
            r.longest_leaderless_ns = r.longest_leaderless_ns.max(len);
            if len > limits.recover_ns {
                let since = match after {
                    Some(kind) => format!("after {kind} healed"),
                    None => "after the last term ended".to_owned(),
                };
                let until = if y >= end {
                    "until the end of the run".to_owned()
                } else {
                    format!("until {:.3}s", secs(y.saturating_sub(limits.origin)))
                };
                r.violations.push(format!(
                    "the election had no leader for {:.3}s, from {:.3}s ({since}) {until} (bound ttl + slack = {:.3}s)",
                    secs(len),
                    secs(x.saturating_sub(limits.origin)),
                    secs(limits.recover_ns)
                ));
            }
        }
    }
}

/// The table, one row per run, and the violations under it.
pub(crate) fn table(reports: &[Report]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<17} {:>6} {:>5} {:>5} {:>8} {:>6} {:>5} {:>7} {:>7} {:>7} {:>9} {:>8} {:>8} {:>10} {:>8}  faults",
        "backend",
        "seed",
        "secs",
        "terms",
        "accepted",
        "stale",
        "late",
        "deposed",
        "overlap",
        "orphans",
        "recovery",
        "bound",
        "max gap",
        "leaderless",
        "notice"
    );
    for r in reports {
        let faults: Vec<String> = r.faults.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let notice = match r.worst_notice_ns {
            Some(n) => format!("{:.3}s", secs(n)),
            None => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<17} {:>6} {:>5} {:>5} {:>8} {:>6} {:>5} {:>7} {:>7} {:>7} {:>8.2}s {:>7.1}s {:>7.2}s {:>9.2}s {:>8}  {}",
            r.backend,
            r.seed,
            r.seconds,
            r.terms,
            r.accepted,
            r.stale_rejected,
            r.late_after_freeze,
            r.deposed,
            r.overlaps,
            r.orphaned,
            secs(r.worst_recovery_ns.unwrap_or(0)),
            secs(r.recover_bound_ns),
            secs(r.longest_gap_ns),
            secs(r.longest_leaderless_ns),
            notice,
            faults.join(" ")
        );
    }
    let _ = writeln!(
        out,
        "(stale: writes the register rejected; late: a frozen leader's writes just after SIGCONT, all rejected; deposed: writes of a leader whose claim was deleted by hand, within its notice bound after the next term began; recovery: worst time from a fault's heal to the next accepted write, bound: ttl + slack; max gap: longest time without an accepted write; leaderless: longest time without a live term while no fault was in progress, bound ttl + slack; notice: worst time from a hand deletion to the end of the term it deposed)"
    );
    for r in reports {
        for v in &r.violations {
            let _ = writeln!(out, "VIOLATION [{} seed {}]: {v}", r.backend, r.seed);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const LIMITS: Limits = Limits {
        orphan_ns: 300 * MS,
        resume_ns: 500 * MS,
        recover_ns: 5_000 * MS,
        deposed_ns: 250 * MS,
        ttl_ns: 3_000 * MS,
        origin: 0,
        permits: 1,
    };

    fn w(token: u64, sent: u64, arrival: u64, accepted: bool) -> Write {
        Write {
            token,
            pid: token as u32,
            sent: sent * MS,
            arrival: arrival * MS,
            accepted,
        }
    }

    fn ev(t: u64, sup: u32, ev: Ev) -> Event {
        Event { t: t * MS, sup, ev }
    }

    fn handover() -> (Vec<Write>, Vec<Event>) {
        let writes = vec![
            w(5, 100, 101, true),
            w(5, 200, 201, true),
            w(7, 3_000, 3_001, true),
            w(7, 3_100, 3_101, true),
        ];
        let events = vec![
            ev(
                90,
                1,
                Ev::Elected {
                    token: 5,
                    worker: Some(5),
                },
            ),
            ev(250, 1, Ev::Lost),
            ev(
                2_990,
                2,
                Ev::Elected {
                    token: 7,
                    worker: Some(7),
                },
            ),
        ];
        (writes, events)
    }

    #[test]
    fn a_clean_handover_has_no_violation() {
        let (writes, events) = handover();
        let faults = [Fault {
            kind: "kill-leader",
            start: 240 * MS,
            heal: 240 * MS,
        }];
        let r = check(&writes, &events, &faults, &[], 4_000 * MS, &[], LIMITS);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!((r.terms, r.accepted, r.overlaps), (2, 4, 0));
        assert_eq!(r.worst_recovery_ns, Some(2_761 * MS));
    }

    /// Semaphore mode, 2 permits: tokens 5 and 7 hold together; 5 gives
    /// its permit back and 9 takes it while 7 still writes.
    fn two_permits() -> (Vec<Write>, Vec<Event>) {
        let elected = |t: u64, sup: u32, token: u64| {
            ev(
                t,
                sup,
                Ev::Elected {
                    token,
                    worker: Some(token as u32),
                },
            )
        };
        let mut writes = Vec::new();
        for t in (100..1_000).step_by(100) {
            writes.push(w(5, t, t + 1, true));
        }
        for t in (150..3_000).step_by(100) {
            writes.push(w(7, t, t + 1, true));
        }
        for t in (1_200..3_000).step_by(100) {
            writes.push(w(9, t, t + 1, true));
        }
        writes.sort_by_key(|w| w.arrival);
        let events = vec![
            elected(90, 1, 5),
            elected(140, 2, 7),
            ev(1_000, 1, Ev::Exited),
            elected(1_190, 3, 9),
        ];
        (writes, events)
    }

    const TWO: Limits = Limits {
        permits: 2,
        ..LIMITS
    };

    #[test]
    fn two_permits_acting_together_are_no_violation() {
        let (writes, events) = two_permits();
        let r = check(&writes, &events, &[], &[], 3_000 * MS, &[], TWO);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!((r.terms, r.overlaps), (3, 0));
        // The same history is two leaders acting for an election.
        let r = check(&writes, &events, &[], &[], 3_000 * MS, &[], LIMITS);
        assert!(r.overlaps > 0, "{:?}", r.violations);
    }

    #[test]
    fn a_third_holder_acting_with_two_permits_is_a_violation() {
        let (mut writes, events) = two_permits();
        // Token 5's worker keeps writing after 9 began (its supervisor
        // never stopped it): three act at once.
        writes.push(w(5, 1_500, 1_501, true));
        writes.sort_by_key(|w| w.arrival);
        let r = check(&writes, &events, &[], &[], 3_000 * MS, &[], TWO);
        let all = r.violations.join("\n");
        assert!(all.contains("more than 2 holders acting"), "{all}");
        assert!(all.contains("token 5"), "{all}");
        // And the register let a token below the 2 highest (7, 9) in.
        assert!(
            all.contains("accepted token 5 below the 2 highest"),
            "{all}"
        );
    }

    #[test]
    fn a_lower_token_accepted_after_a_higher_one_is_a_violation() {
        let (mut writes, events) = handover();
        writes.push(w(5, 3_200, 3_201, true));
        let r = check(&writes, &events, &[], &[], 4_000 * MS, &[], LIMITS);
        let all = r.violations.join("\n");
        assert!(all.contains("accepted token 5 after token 7"), "{all}");
        assert!(all.contains("interleaved"), "{all}");
    }

    #[test]
    fn an_old_worker_acting_after_a_newer_term_began_is_an_overlap() {
        let (mut writes, mut events) = handover();
        // The old term never reported lost (a leader without its deadline).
        events.retain(|e| e.ev != Ev::Lost);
        writes.push(w(5, 3_050, 3_051, false));
        let r = check(&writes, &events, &[], &[], 4_000 * MS, &[], LIMITS);
        assert_eq!(r.overlaps, 1);
        assert_eq!(r.stale_rejected, 1);
        assert!(r.violations.join("\n").contains("two leaders acting"));
    }

    #[test]
    fn a_frozen_leaders_late_writes_just_after_sigcont_are_counted_not_failed() {
        let (mut writes, mut events) = handover();
        events.retain(|e| e.ev != Ev::Lost);
        events.push(ev(150, 1, Ev::Stopped));
        events.push(ev(3_040, 1, Ev::Continued));
        events.push(ev(3_060, 1, Ev::Lost));
        writes.push(w(5, 3_050, 3_051, false));
        let r = check(&writes, &events, &[], &[], 4_000 * MS, &[], LIMITS);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!((r.late_after_freeze, r.overlaps), (1, 0));
    }

    #[test]
    fn a_worker_writing_after_its_supervisor_was_killed_is_orphaned() {
        let (mut writes, mut events) = handover();
        events.retain(|e| e.ev != Ev::Lost);
        events.push(ev(250, 1, Ev::Killed));
        writes.push(w(5, 1_000, 1_001, true));
        let r = check(
            &writes,
            &events,
            &[],
            &[],
            4_000 * MS,
            &[(5, Some(5))],
            LIMITS,
        );
        assert_eq!(r.orphaned, 2);
        assert!(r.violations.join("\n").contains("orphaned worker"));
    }

    #[test]
    fn a_token_handed_out_again_is_a_violation_but_no_false_overlap() {
        let (mut writes, mut events) = handover();
        // The lease object was deleted: the next term starts at token 1 again.
        events.push(ev(3_150, 2, Ev::Lost));
        events.push(ev(
            3_500,
            3,
            Ev::Elected {
                token: 1,
                worker: Some(11),
            },
        ));
        events.push(ev(
            3_600,
            4,
            Ev::Elected {
                token: 5,
                worker: Some(12),
            },
        ));
        let mut late = w(1, 3_550, 3_551, false);
        late.pid = 11;
        writes.push(late);
        let r = check(&writes, &events, &[], &[], 4_000 * MS, &[], LIMITS);
        assert!(
            r.violations
                .join("\n")
                .contains("token 5 was handed out twice")
        );
        assert_eq!(r.overlaps, 0, "{:?}", r.violations);
    }

    #[test]
    fn no_accepted_write_after_a_fault_heals_is_a_violation() {
        let (writes, events) = handover();
        let faults = [Fault {
            kind: "cut-leader",
            start: 3_200 * MS,
            heal: 3_500 * MS,
        }];
        let r = check(&writes, &events, &faults, &[], 10_000 * MS, &[], LIMITS);
        assert!(r.violations.join("\n").contains("no write was accepted"));
        let text = table(&[r]);
        assert!(text.contains("VIOLATION"), "{text}");
    }

    #[test]
    fn one_candidates_two_terms_with_one_token_is_a_violation() {
        // A release whose answer was lost left the claim in the shared
        // session; the same candidate's next campaign adopted it.
        let writes = vec![w(5, 100, 101, true), w(5, 3_000, 3_001, true)];
        let mut events = handover().1;
        events.truncate(2);
        events.push(ev(
            2_900,
            1,
            Ev::Elected {
                token: 5,
                worker: Some(6),
            },
        ));
        let r = check(&writes, &events, &[], &[], 4_000 * MS, &[], LIMITS);
        let all = r.violations.join("\n");
        assert!(
            all.contains("token 5 was handed out twice, both times to the same candidate"),
            "{all}"
        );
    }

    #[test]
    fn a_token_below_an_ended_terms_token_is_a_violation() {
        let (writes, mut events) = handover();
        events.push(ev(3_200, 2, Ev::Lost));
        events.push(ev(
            3_300,
            3,
            Ev::Elected {
                token: 6,
                worker: Some(13),
            },
        ));
        let r = check(&writes, &events, &[], &[], 4_000 * MS, &[], LIMITS);
        let all = r.violations.join("\n");
        assert!(all.contains("token 6 was handed out at"), "{all}");
        assert!(all.contains("below token 7"), "{all}");
    }

    #[test]
    fn leaderless_longer_than_the_bound_after_a_heal_is_a_violation() {
        let (writes, mut events) = handover();
        events.push(ev(3_200, 2, Ev::Lost));
        // The term of token 7 ends at 3.2 s; the fault heals at 4 s; nobody
        // leads until 12 s: 8 s after the heal, bound 5 s.
        events.push(ev(
            12_000,
            3,
            Ev::Elected {
                token: 9,
                worker: Some(9),
            },
        ));
        let faults = [Fault {
            kind: "release-lost",
            start: 3_100 * MS,
            heal: 4_000 * MS,
        }];
        let r = check(&writes, &events, &faults, &[], 13_000 * MS, &[], LIMITS);
        let all = r.violations.join("\n");
        assert!(
            all.contains("the election had no leader for 8.000s, from 4.000s (after release-lost healed) until 12.000s"),
            "{all}"
        );
        assert_eq!(r.longest_leaderless_ns, 8_000 * MS);
        // The same stretch inside a fault's window is no violation.
        let long = [Fault {
            kind: "restart-store",
            start: 3_100 * MS,
            heal: 11_000 * MS,
        }];
        let r = check(&writes, &events, &long, &[], 13_000 * MS, &[], LIMITS);
        assert!(
            !r.violations.join("\n").contains("no leader"),
            "{:?}",
            r.violations
        );
        // Left: the handover's own 2.74 s (0.25 s to 2.99 s) and 1 s after the heal.
        assert_eq!(r.longest_leaderless_ns, 2_740 * MS);
    }

    #[test]
    fn leaderless_until_the_end_of_the_run_is_a_violation() {
        let (writes, mut events) = handover();
        events.push(ev(3_200, 2, Ev::Exited));
        let r = check(&writes, &events, &[], &[], 9_000 * MS, &[], LIMITS);
        let all = r.violations.join("\n");
        assert!(
            all.contains("from 3.200s (after the last term ended) until the end of the run"),
            "{all}"
        );
    }

    #[test]
    fn a_reused_worker_pid_does_not_move_a_later_terms_start_back() {
        let (mut writes, mut events) = handover();
        // Much later, token 9's term gets a worker with the pid token 5's
        // worker had (pids are reused on a long run).
        events.push(ev(
            20_000,
            3,
            Ev::Elected {
                token: 9,
                worker: Some(5),
            },
        ));
        writes.push(w(9, 20_100, 20_101, true));
        let r = check(&writes, &events, &[], &[], 21_000 * MS, &[], LIMITS);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.overlaps, 0);
    }

    #[test]
    fn a_deletion_during_another_fault_is_held_to_the_ttl() {
        let (mut writes, mut events) = handover();
        // As below, but the store was restarting when the claim was deleted:
        // the deposed leader learns it at its local deadline, within a ttl.
        events.retain(|e| e.ev != Ev::Lost);
        events.push(ev(3_900, 1, Ev::Lost));
        writes.push(w(5, 3_050, 3_051, false));
        let deletions = [Deletion {
            at: 2_900 * MS,
            token: 5,
        }];
        let faults = [Fault {
            kind: "restart-store",
            start: 2_000 * MS,
            heal: 2_500 * MS,
        }];
        let r = check(
            &writes,
            &events,
            &faults,
            &deletions,
            5_000 * MS,
            &[],
            LIMITS,
        );
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!((r.deposed, r.overlaps, r.disturbed_deletions), (1, 0, 1));
        assert_eq!(r.worst_notice_ns, None);
        // Past the ttl it is a violation all the same.
        events.retain(|e| e.ev != Ev::Lost);
        events.push(ev(6_000, 1, Ev::Lost));
        let r = check(
            &writes,
            &events,
            &faults,
            &deletions,
            7_000 * MS,
            &[],
            LIMITS,
        );
        assert!(
            r.violations.join("\n").contains("(bound 3.000s)"),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn a_deposed_leader_may_act_within_its_notice_bound_but_not_after() {
        let (mut writes, mut events) = handover();
        // Token 5's claim is deleted by hand at 2.9 s; token 7 is elected
        // at 2.99 s; token 5's worker writes once more at 3.05 s (rejected)
        // and its term ends at 3.1 s: within the 250 ms bound.
        events.retain(|e| e.ev != Ev::Lost);
        events.push(ev(3_100, 1, Ev::Lost));
        writes.push(w(5, 3_050, 3_051, false));
        let deletions = [Deletion {
            at: 2_900 * MS,
            token: 5,
        }];
        let r = check(&writes, &events, &[], &deletions, 4_000 * MS, &[], LIMITS);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!((r.deposed, r.overlaps), (1, 0));
        assert_eq!(r.worst_notice_ns, Some(200 * MS));
        // Learning it 400 ms late is a violation, and writes past the bound
        // after the next term began are an overlap.
        events.retain(|e| e.ev != Ev::Lost);
        events.push(ev(3_300, 1, Ev::Lost));
        writes.push(w(5, 3_200, 3_201, false));
        let r = check(&writes, &events, &[], &deletions, 4_000 * MS, &[], LIMITS);
        let all = r.violations.join("\n");
        assert!(
            all.contains("the claim of token 5 (supervisor pid 1) was deleted by hand at 2.900s and its term ended only 0.400s later"),
            "{all}"
        );
        assert!(all.contains("two leaders acting"), "{all}");
        assert_eq!((r.deposed, r.overlaps), (1, 1));
    }
}
