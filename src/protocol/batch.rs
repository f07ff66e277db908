//! An expand batch: migrations of one database that are ready together ride in the expand Job
//! of the first one in line (the lead) and one executor applies them after it, in creation
//! order, each with its own ledger row, SQL and safety settings. A Job and pod start costs
//! seconds; a GitOps bootstrap of a service's history is then a few Jobs, not one per
//! migration (issue 24).
//!
//! The operator names the members in the Job's environment ([`BatchMember`], JSON in
//! `PHASEGATE_EXPAND_BATCH`) and in its annotation ([`Seat`], read back by each member); the
//! executor says in its report how far it got ([`BatchOutcome`]).

use serde::{Deserialize, Serialize};

use super::env::ExecutorEnv;

/// The annotation on a batch Job listing its members after the lead, in order (JSON
/// [`Seat`]s). A member takes the Job for its expand only when the lead's status records the
/// Job's UID: the annotation alone proves nothing.
pub const ANNOTATION_EXPAND_BATCH: &str = "phasegate.dev/expand-batch";

/// One migration applied after the lead, as its executor needs it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BatchMember {
    pub name: String,
    pub uid: String,
    pub app_version: String,
    pub sql: String,
    pub lock_timeout: String,
    pub statement_timeout: String,
    pub young_transaction: String,
    pub lock_wait_attempt_after: String,
    pub max_lock_retries: u32,
}

impl BatchMember {
    /// The lead's environment made this member's: its identity, SQL and safety settings; no
    /// batch of its own.
    pub fn environment<U>(&self, lead: ExecutorEnv<U>) -> ExecutorEnv<U> {
        let some = |s: &str| Some(s.to_string());
        ExecutorEnv {
            migration_name: some(&self.name),
            migration_uid: some(&self.uid),
            app_version: some(&self.app_version),
            sql: some(&self.sql),
            lock_timeout: some(&self.lock_timeout),
            statement_timeout: some(&self.statement_timeout),
            young_transaction: some(&self.young_transaction),
            lock_wait_attempt_after: some(&self.lock_wait_attempt_after),
            max_lock_retries: Some(self.max_lock_retries),
            expand_batch: None,
            expand_after: None,
            ..lead
        }
    }
}

/// A member's place in a batch Job, as its annotation lists it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Seat {
    pub name: String,
    pub uid: String,
    /// The label checksum of the SQL the Job runs for it: an edit since makes the seat not
    /// this member's any more.
    pub checksum: String,
}

/// Parses [`ANNOTATION_EXPAND_BATCH`]; `None` when it is not a list of seats.
pub fn seats(annotation: &str) -> Option<Vec<Seat>> {
    serde_json::from_str(annotation).ok()
}

/// How far a batch's executor got, in its report: the first `applied` of `total` migrations
/// (the lead first) are applied; `failed` names the one after them that failed, if one did
/// (the report's error is its); the rest did not run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BatchOutcome {
    pub applied: usize,
    pub total: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// What a batch did for the migration at `index` (0: the lead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeatOutcome {
    Applied,
    /// It ran and failed: the report's error is its.
    Failed,
    /// An earlier one failed, or the run was stopped first.
    NotRun,
}

impl BatchOutcome {
    pub fn of(&self, index: usize, name: &str) -> SeatOutcome {
        if index < self.applied {
            SeatOutcome::Applied
        } else if index == self.applied && self.failed.as_deref() == Some(name) {
            SeatOutcome::Failed
        } else {
            SeatOutcome::NotRun
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seat_is_applied_failed_or_not_run_by_its_place() {
        let o = BatchOutcome {
            applied: 2,
            total: 4,
            failed: Some("c".into()),
        };
        assert_eq!(o.of(0, "a"), SeatOutcome::Applied);
        assert_eq!(o.of(1, "b"), SeatOutcome::Applied);
        assert_eq!(o.of(2, "c"), SeatOutcome::Failed);
        assert_eq!(o.of(3, "d"), SeatOutcome::NotRun);
        // A stop: nothing failed, the rest did not run.
        let stopped = BatchOutcome { failed: None, ..o };
        assert_eq!(stopped.of(2, "c"), SeatOutcome::NotRun);
    }

    #[test]
    fn seats_round_trip_and_garbage_is_none() {
        let s = vec![Seat {
            name: "b".into(),
            uid: "u".into(),
            checksum: "0123456789abcdef".into(),
        }];
        let text = serde_json::to_string(&s).expect("json");
        assert_eq!(seats(&text), Some(s));
        assert_eq!(seats("b,c"), None);
    }
}
