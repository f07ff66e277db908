//! The executor's report: one compact JSON line that the operator reads back from the Job's
//! termination message (limited to 4096 bytes by Kubernetes).

use serde::{Deserialize, Serialize};

/// Kubernetes truncates termination messages at 4096 bytes; stay well below.
pub const MAX_REPORT_BYTES: usize = 4000;
/// Notes in [`Report::recovered`], each cut to [`MAX_NOTE_BYTES`], so they always fit.
pub const MAX_RECOVERED: usize = 8;
pub const MAX_NOTE_BYTES: usize = 160;
/// Error text is cut to this many bytes before the report is serialised.
const MAX_MESSAGE_BYTES: usize = 1500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Applied,
    AlreadyApplied,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReportError {
    /// PostgreSQL SQLSTATE (or the closest one for errors detected before reaching the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    pub message: String,
    /// 1-based index of the failing statement within the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub outcome: Outcome,
    pub phase: String,
    /// Statements applied by this run (0 when already applied).
    pub statements: usize,
    /// Transaction attempts made by this run.
    pub attempts: u32,
    /// Attempts rolled back because a lock could not be taken in time (55P03) or a deadlock.
    pub lock_retries: u32,
    /// Time spent waiting outside the lock queue and for the migration advisory lock.
    pub lock_wait_ms: u64,
    pub duration_ms: u64,
    /// First 12 hex digits of the SHA-256 of the phase's SQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Contract only, when the database check ran: time spent waiting for sessions of older
    /// application versions and transactions begun before the rollout completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_check_wait_ms: Option<u64>,
    /// Set when the executor could not see everything: its role lacks `pg_read_all_stats`
    /// (checked once at start), or the database check met sessions it could not see into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_check_warning: Option<String>,
    /// Contract only, when not zero: transactions rolled back because the database check, run
    /// again inside the transaction right before COMMIT, found a new blocker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_check_rollbacks: Option<u32>,
    /// Contract only, when not zero: transactions rolled back because no valid commit grant
    /// from the operator was held right before COMMIT (a gate closed, the operator silent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_rollbacks: Option<u32>,
    /// Microseconds from the last look at the gates (the database re-check, the stop flag) to
    /// COMMIT's acknowledgement, the longest over the run's transactions: the race window left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_to_commit_us: Option<u64>,
    /// `SIGTERM` or `SIGINT` when a stop was requested during the run. With outcome `failed`
    /// the run stopped before COMMIT (the error says what, if anything, it had committed
    /// earlier); with `applied` the signal came after COMMIT was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    /// Statements outside a transaction that an interrupted earlier run had finished, or left
    /// half done, and what this run did instead of running them again (at most
    /// [`MAX_RECOVERED`]), e.g. `statement 1: partition "events_1" is already detached from
    /// "events"; skipped`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recovered: Vec<String>,
    /// With tenants: what the run did across them (counts and the first failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<crate::api::TenantsStatus>,
    /// An expand batch: how far it got (see [`super::batch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<super::batch::BatchOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ReportError>,
}

impl Report {
    /// A report of `outcome` for `phase` with nothing counted yet: the fields a run does not
    /// fill stay empty.
    pub fn new(outcome: Outcome, phase: &str) -> Report {
        Report {
            outcome,
            phase: phase.to_string(),
            statements: 0,
            attempts: 0,
            lock_retries: 0,
            lock_wait_ms: 0,
            duration_ms: 0,
            checksum: None,
            db_check_wait_ms: None,
            db_check_warning: None,
            db_check_rollbacks: None,
            grant_rollbacks: None,
            gate_to_commit_us: None,
            stopped_by: None,
            recovered: Vec::new(),
            tenants: None,
            batch: None,
            error: None,
        }
    }

    pub fn parse(s: &str) -> Option<Report> {
        // The termination message may carry other lines (e.g. a shell wrapper); take the last JSON one.
        s.lines()
            .rev()
            .map(str::trim)
            .filter(|l| l.starts_with('{'))
            .find_map(|l| serde_json::from_str(l).ok())
    }

    pub fn is_success(&self) -> bool {
        matches!(self.outcome, Outcome::Applied | Outcome::AlreadyApplied)
    }

    /// Serialises to one line that always fits the termination message.
    pub fn to_json_line(&self) -> String {
        let mut r = self.clone();
        if let Some(e) = r.error.as_mut() {
            e.message = truncate(&e.message, MAX_MESSAGE_BYTES);
        }
        let mut line = serde_json::to_string(&r).unwrap_or_else(|_| fallback_json(&r));
        // Escaping can inflate the message (e.g. many quotes); shrink until it fits.
        let mut budget = MAX_MESSAGE_BYTES;
        while line.len() > MAX_REPORT_BYTES && budget > 16 {
            budget /= 2;
            if let Some(e) = r.error.as_mut() {
                e.message = truncate(&e.message, budget);
            }
            if let Some(t) = r.tenants.as_mut() {
                for f in &mut t.failures {
                    f.error = truncate(&f.error, budget / 4);
                }
            }
            line = serde_json::to_string(&r).unwrap_or_else(|_| fallback_json(&r));
        }
        line
    }

    /// One line of human text for status conditions. A successful run's `dbCheckWarning` (the
    /// executor could not see everything, e.g. a pooler it was not told of) is part of it, so
    /// status and the Event say it.
    pub fn summary(&self) -> String {
        let base = match &self.tenants {
            Some(t) => self.tenants_summary(t),
            None => self.outcome_summary(),
        };
        // A batch that applied every migration: the counts above are the whole Job's.
        let base = match &self.batch {
            Some(b) if self.is_success() && b.total > 1 => {
                format!(
                    "{base}; its expand batch applied all {} migrations",
                    b.total
                )
            }
            _ => base,
        };
        match &self.db_check_warning {
            Some(w) if self.is_success() && !w.is_empty() => {
                truncate(&format!("{base}; warning: {w}"), 1024)
            }
            _ => base,
        }
    }

    /// E.g. `applied on 48 of 50 tenants; 2 failed (tenant_07: ERROR 42P01: …); halted: …`.
    fn tenants_summary(&self, t: &crate::api::TenantsStatus) -> String {
        let mut s = format!(
            "{} on {} of {} tenants in {} ms",
            match self.phase.as_str() {
                "contract" => "contracted",
                "backfill" => "backfill done",
                _ => "applied",
            },
            t.applied,
            t.total,
            self.duration_ms
        );
        if t.expanded_late > 0 {
            s.push_str(&format!(
                " ({} created since expand got expand first)",
                t.expanded_late
            ));
        }
        if t.failed > 0 {
            let first: Vec<String> = t
                .failures
                .iter()
                .take(3)
                .map(|f| format!("{}: {}", f.tenant, f.error))
                .collect();
            s.push_str(&format!("; {} failed ({})", t.failed, first.join("; ")));
        }
        if t.not_run > 0 {
            s.push_str(&format!("; {} not run", t.not_run));
        }
        if let Some(h) = &t.halted {
            s.push_str(&format!("; halted: {h}"));
        }
        truncate(&s, 1024)
    }

    fn outcome_summary(&self) -> String {
        let plural = |n: u64, w: &str| {
            if n == 1 {
                format!("{n} {w}")
            } else {
                format!("{n} {w}s")
            }
        };
        match self.outcome {
            Outcome::Applied if self.phase == "backfill" => format!(
                "backfill done: this run committed {} in {} ms ({})",
                plural(self.statements as u64, "batch").replace("batchs", "batches"),
                self.duration_ms,
                plural(self.lock_retries.into(), "lock retry").replace("retrys", "retries"),
            ),
            Outcome::AlreadyApplied if self.phase == "backfill" => {
                "backfill already done in this rollout epoch; nothing to do".to_string()
            }
            Outcome::Applied => format!(
                "applied {} in {} ms ({}, {}{}{}{})",
                plural(self.statements as u64, "statement"),
                self.duration_ms,
                plural(self.attempts.into(), "attempt"),
                plural(self.lock_retries.into(), "lock retry").replace("retrys", "retries"),
                if self.lock_wait_ms > 0 {
                    format!(", waited {} ms for locks", self.lock_wait_ms)
                } else {
                    String::new()
                },
                match self.db_check_wait_ms {
                    Some(ms) if ms > 0 => format!(", waited {ms} ms for old sessions"),
                    _ => String::new(),
                },
                match self.db_check_rollbacks {
                    Some(n) if n > 0 => format!(
                        ", rolled back {n} time(s) for a session that arrived before COMMIT"
                    ),
                    _ => String::new(),
                },
            ),
            Outcome::AlreadyApplied => {
                "already applied with the same checksum; nothing to do".to_string()
            }
            Outcome::Failed => {
                let Some(e) = &self.error else {
                    return "failed".to_string();
                };
                let mut s = String::from("failed: ");
                if let Some(code) = &e.sqlstate {
                    s.push_str(&format!("ERROR {code}: "));
                }
                s.push_str(&e.message);
                if let Some(n) = e.statement {
                    s.push_str(&format!(" (statement {n})"));
                }
                truncate(&s, 1024)
            }
        }
    }
}

fn fallback_json(r: &Report) -> String {
    format!(
        r#"{{"outcome":"failed","phase":"{}","statements":0,"attempts":0,"lockRetries":0,"lockWaitMs":0,"durationMs":0}}"#,
        r.phase.replace('"', "")
    )
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            statements: 2,
            attempts: 1,
            duration_ms: 31,
            ..Report::new(Outcome::Applied, "expand")
        }
    }

    #[test]
    fn json_shape_and_roundtrip() {
        let r = sample();
        let line = r.to_json_line();
        assert_eq!(
            line,
            r#"{"outcome":"applied","phase":"expand","statements":2,"attempts":1,"lockRetries":0,"lockWaitMs":0,"durationMs":31}"#
        );
        assert_eq!(Report::parse(&format!("noise\n{line}\n")), Some(r));
        assert_eq!(Report::parse("not json"), None);
    }

    #[test]
    fn summaries() {
        assert_eq!(
            sample().summary(),
            "applied 2 statements in 31 ms (1 attempt, 0 lock retries)"
        );
        let mut f = sample();
        f.outcome = Outcome::Failed;
        f.error = Some(ReportError {
            sqlstate: Some("42P01".into()),
            message: "relation \"nope\" does not exist".into(),
            statement: Some(1),
        });
        assert_eq!(
            f.summary(),
            "failed: ERROR 42P01: relation \"nope\" does not exist (statement 1)"
        );
        let mut late = sample();
        late.db_check_rollbacks = Some(1);
        assert!(late.summary().ends_with(
            "lock retries, rolled back 1 time(s) for a session that arrived before COMMIT)"
        ));
        let mut a = sample();
        a.outcome = Outcome::AlreadyApplied;
        assert!(a.summary().starts_with("already applied"));
        // What the executor could not see reaches status with the summary.
        let mut w = sample();
        w.db_check_warning = Some("probably behind a connection pooler".into());
        assert_eq!(
            w.summary(),
            "applied 2 statements in 31 ms (1 attempt, 0 lock retries); warning: probably behind a connection pooler"
        );
        assert_eq!(
            crate::controller::jobs::summarise(&w.to_json_line()),
            w.summary()
        );
    }

    #[test]
    fn huge_errors_fit_the_termination_message() {
        let mut f = sample();
        f.outcome = Outcome::Failed;
        f.error = Some(ReportError {
            sqlstate: Some("XX000".into()),
            message: "\"é\\".repeat(5000),
            statement: None,
        });
        let line = f.to_json_line();
        assert!(line.len() <= MAX_REPORT_BYTES, "{}", line.len());
        let back = Report::parse(&line).expect("parses");
        assert_eq!(back.outcome, Outcome::Failed);
    }
}
