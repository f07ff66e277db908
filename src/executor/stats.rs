//! What a run of `phasegate apply` counts for its report.

use std::time::Duration;

/// Counters that end up in the report.
#[derive(Debug, Default, Clone)]
pub(super) struct Stats {
    pub(super) statements: usize,
    pub(super) attempts: u32,
    pub(super) lock_retries: u32,
    pub(super) lock_wait: Duration,
    /// Set when the database check ran.
    pub(super) db_check_wait: Option<Duration>,
    pub(super) db_check_warning: Option<String>,
    /// Transactions rolled back because the re-check before COMMIT found a blocker.
    pub(super) db_check_rollbacks: u32,
    /// Transactions rolled back because no valid commit grant was held at COMMIT.
    pub(super) grant_rollbacks: u32,
    /// Longest time from the last look at the gates to COMMIT's acknowledgement.
    pub(super) gate_to_commit: Option<Duration>,
    /// What an interrupted earlier run left and this one finished or skipped (see [`super::rerun`]).
    pub(super) recovered: Vec<String>,
}

impl Stats {
    /// Adds a warning to the report's `dbCheckWarning`, after any already there.
    pub(super) fn add_warning(&mut self, w: String) {
        self.db_check_warning = Some(match self.db_check_warning.take() {
            Some(first) => format!("{first}; {w}"),
            None => w,
        });
    }
}
