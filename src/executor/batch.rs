//! An expand batch (see [`crate::protocol::batch`]): the lead's expand, then each member's, in
//! creation order, each exactly as a Job of its own would run it (its ledger row, SQL, safety
//! settings, lock-aware waiting), on the connections the one before gave back. The first that
//! does not apply ends the batch: the ones after it did not run, and say so.

use std::time::{Duration, Instant};

use crate::protocol::batch::BatchOutcome;

use super::connect::Scrubber;
use super::sessions::Sessions;
use super::stats::Stats;
use super::{execute_one, failed_report, ApplyError, Config, Phase, Report};

/// A member by name, and its run's settings; one that did not resolve fails in its turn, with
/// that error.
pub(super) type MemberConfig = (String, Result<Config, ApplyError>);

/// Runs the lead's expand, then the members' in order, until one does not apply; one report
/// for the Job: the counts of every run, the error of the one that failed, and how far it got.
pub(super) async fn execute_batch(lead: &Config, members: Vec<MemberConfig>) -> Report {
    let started = Instant::now();
    let sessions = Sessions::default();
    let total = members.len() + 1;
    let mut lead = lead.clone();
    lead.sessions = Some(sessions.clone());
    tracing::info!(
        migrations = total,
        "expand batch: this migration, then {} later ones of this database, in order",
        members.len()
    );
    let mut report = execute_one(&lead).await;
    let mut outcome = BatchOutcome {
        applied: 0,
        total,
        failed: None,
    };
    let mut sum = Counts::default();
    sum.add(&report);
    if report.is_success() {
        outcome.applied = 1;
        for (i, (name, member)) in members.into_iter().enumerate() {
            if lead.stop.requested().is_some() {
                break;
            }
            let next = match member {
                Ok(mut cfg) => {
                    tracing::info!(migration = %name, "expand batch: {} of {total}", i + 2);
                    cfg.sessions = Some(sessions.clone());
                    cfg.facts = lead.facts.clone();
                    cfg.stop = lead.stop.clone();
                    execute_one(&cfg).await
                }
                Err(e) => {
                    tracing::error!(migration = %name, "expand batch: its settings are invalid");
                    failed_report(
                        Phase::Expand,
                        e,
                        Duration::ZERO,
                        Stats::default(),
                        None,
                        &Scrubber::default(),
                    )
                }
            };
            sum.add(&next);
            report = next;
            if !report.is_success() {
                if lead.stop.requested().is_none() {
                    outcome.failed = Some(name);
                }
                break;
            }
            outcome.applied += 1;
        }
    } else if lead.stop.requested().is_none() {
        outcome.failed = Some(lead.identity.name.clone());
    }
    sum.apply(&mut report);
    report.duration_ms = started.elapsed().as_millis() as u64;
    report.stopped_by = lead.stop.requested().map(|s| s.name().to_string());
    tracing::info!(
        applied = outcome.applied,
        total,
        failed = outcome.failed.as_deref().unwrap_or(""),
        "expand batch done"
    );
    report.batch = Some(outcome);
    report
}

/// What every run of the batch did, summed for the Job's report (its metrics).
#[derive(Default)]
struct Counts {
    statements: usize,
    attempts: u32,
    lock_retries: u32,
    lock_wait_ms: u64,
}

impl Counts {
    fn add(&mut self, r: &Report) {
        self.statements += r.statements;
        self.attempts += r.attempts;
        self.lock_retries += r.lock_retries;
        self.lock_wait_ms += r.lock_wait_ms;
    }

    fn apply(&self, r: &mut Report) {
        r.statements = self.statements;
        r.attempts = self.attempts;
        r.lock_retries = self.lock_retries;
        r.lock_wait_ms = self.lock_wait_ms;
    }
}
