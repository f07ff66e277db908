//! The backfill phase (`spec.backfill`) in the plan.
//!
//! It runs once the rollout gate holds (no old code left that could write rows without the
//! new column behind the scan), before the soak, the approval and contract, and is fenced
//! like contract: when the rollout gate closes (a rollback, an old pod), its Job is stopped.
//! The backfill counts as done only in the *rollout epoch* (`status.rolloutCompletedAt`) it
//! finished in: a regression clears the epoch, so after the next complete rollout the
//! backfill runs again, and its executor restarts the scan from the first key (its checkpoint
//! is keyed by the epoch). A stop without regression (pause, killed pod, vanished Job) resumes
//! from the checkpoint in the same epoch.

use super::{reason, JobPhase, JobState, Phase, Planner, Transition};

impl Planner<'_> {
    /// No backfill, or it succeeded in the current rollout epoch. Contract never starts (and a
    /// running contract is stopped) otherwise.
    pub(super) fn backfill_done_in_epoch(&self) -> bool {
        if self.input.spec.backfill.is_none() {
            return true;
        }
        let epoch = self.status.rollout_completed_at.as_ref();
        // The Job of the recorded attempt succeeded: done, even if the status write that
        // said so was lost.
        let job_done = matches!(self.input.backfill_job, JobState::Succeeded(_));
        self.status.backfill.as_ref().is_some_and(|b| {
            (b.run.succeeded || job_done) && epoch.is_some() && b.epoch.as_ref() == epoch
        })
    }

    /// Drives the backfill once the rollout gate holds; true once it is done in this epoch.
    pub(super) fn backfill(&mut self) -> bool {
        if self.input.spec.backfill.is_none() {
            return true;
        }
        if self.backfill_done_in_epoch()
            && self
                .status
                .backfill
                .as_ref()
                .is_some_and(|b| b.run.succeeded)
        {
            return true;
        }
        let rec = self.status.backfill.clone().unwrap_or_default();
        let epoch = self.status.rollout_completed_at.clone();
        let same_epoch = rec.epoch.is_some() && rec.epoch == epoch;
        let attempt = rec.run.attempts.max(1);
        let paused = self.input.backfill_paused;
        let running = matches!(self.input.backfill_job, JobState::Running(_));
        let stopped = rec.run.finished_at.is_some()
            && matches!(
                rec.run.reason.as_deref(),
                Some(reason::GATE_CLOSED | reason::BACKFILL_PAUSED)
            );
        if !same_epoch {
            // A Job of an earlier epoch still running is stopped first: its scan may have
            // passed rows old code wrote since.
            if rec.run.attempts > 0 && running {
                self.stop_backfill(
                    attempt,
                    reason::GATE_CLOSED,
                    "the rollout regressed since this attempt started; the scan restarts from the first key"
                        .to_string(),
                );
                return false;
            }
            if paused {
                self.paused_outcome();
                return false;
            }
            // A fresh epoch (first run, or after a regression) is no retry of an old failure.
            self.start_backfill(rec.run.attempts + 1);
            return false;
        }
        match self.input.backfill_job.clone() {
            JobState::Succeeded(report) => {
                self.job_succeeded(JobPhase::Backfill, attempt, report);
                if let Some(b) = self.status.backfill.as_mut() {
                    if let Some(p) = b.progress.as_mut() {
                        p.key_range_done_permille = 1000;
                        p.eta_seconds = Some(0);
                        p.throttled = None;
                    }
                }
                return true;
            }
            JobState::Running(holdup) => {
                if stopped {
                    // Stopped already: keep asking until its Job is gone.
                    let why = if rec.run.reason.as_deref() == Some(reason::GATE_CLOSED) {
                        reason::GATE_CLOSED
                    } else {
                        reason::BACKFILL_PAUSED
                    };
                    self.stop_backfill(attempt, why, rec.run.message.clone().unwrap_or_default());
                } else if paused {
                    self.stop_backfill(
                        attempt,
                        reason::BACKFILL_PAUSED,
                        format!(
                            "backfill attempt {attempt} paused ({}=\"true\"); remove the annotation to resume from the checkpoint",
                            crate::api::ANNOTATION_BACKFILL_PAUSED
                        ),
                    );
                } else {
                    self.job_running(JobPhase::Backfill, attempt, holdup.as_ref());
                    // Progress in status is refreshed while the Job runs.
                    self.requeue_after = Some(std::time::Duration::from_secs(15));
                }
            }
            JobState::Failed(msg) => {
                // Paused: the failure stands, and a retry waits until the pause ends.
                if self.retry_requested() && !paused {
                    self.consume_retry();
                    self.start_backfill(attempt + 1);
                } else {
                    self.job_failed(JobPhase::Backfill, attempt, &format!(
                        "{msg}; the checkpoint keeps every committed batch: set {} to a new value to resume",
                        crate::api::ANNOTATION_RETRY
                    ));
                }
            }
            JobState::Died(msg) => {
                if paused {
                    self.paused_outcome();
                } else if self.retry_requested() {
                    self.consume_retry();
                    self.start_backfill(attempt + 1);
                } else if rec.run.reason.as_deref() != Some(reason::EXECUTOR_DIED) {
                    // Batches are exactly-once through the checkpoint: one automatic retry
                    // in a row; a second death in a row needs a look (memory limit?).
                    self.died = Some((JobPhase::Backfill, attempt, msg));
                    self.start_backfill(attempt + 1);
                } else {
                    self.death_final(JobPhase::Backfill, attempt, &msg);
                }
            }
            JobState::Absent => {
                if paused {
                    self.paused_outcome();
                } else if rec.run.attempts == 0 || stopped {
                    self.start_backfill(rec.run.attempts + 1);
                } else if rec.run.finished_at.is_some() {
                    if self.retry_requested() {
                        self.consume_retry();
                        self.start_backfill(rec.run.attempts + 1);
                    } else {
                        self.recorded_failure(JobPhase::Backfill, &rec.run);
                    }
                } else {
                    // The running Job vanished: the checkpoint makes a new attempt safe.
                    self.start_backfill(rec.run.attempts + 1);
                }
            }
        }
        false
    }

    /// The rollout gate closed after having held: whatever the backfill did in that epoch
    /// may have missed rows old code wrote since; it must run again, from the first key.
    pub(super) fn backfill_regressed(&mut self) {
        if self.input.spec.backfill.is_none() {
            return;
        }
        if let Some(b) = self.status.backfill.as_mut() {
            if b.epoch.is_some() || b.run.succeeded {
                b.regressions += 1;
                b.epoch = None;
                b.run.succeeded = false;
            }
        }
    }

    fn start_backfill(&mut self, attempt: u32) {
        // A retry waiting for the gates of a failed contract stays for contract (`start`
        // spends it only for contract).
        self.start(JobPhase::Backfill, attempt);
        let epoch = self.status.rollout_completed_at.clone();
        let b = self.status.backfill.get_or_insert_with(Default::default);
        b.epoch = epoch;
        b.progress = None;
    }

    fn paused_outcome(&mut self) {
        self.set(
            Phase::Backfilling,
            reason::BACKFILL_PAUSED,
            format!(
                "backfill paused ({}=\"true\"); remove the annotation to resume from the checkpoint",
                crate::api::ANNOTATION_BACKFILL_PAUSED
            ),
        );
    }

    /// The rollout gate closed: a running backfill attempt is stopped, and the next one (in
    /// the next epoch) restarts the scan.
    pub(super) fn stop_backfill_on_closed_gate(&mut self, why: &str) {
        let Some(rec) = self.status.backfill.clone() else {
            return;
        };
        if rec.run.attempts == 0
            || rec.run.succeeded
            || !matches!(self.input.backfill_job, JobState::Running(_))
        {
            return;
        }
        let attempt = rec.run.attempts.max(1);
        let message = if rec.run.reason.as_deref() == Some(reason::GATE_CLOSED) {
            rec.run.message.unwrap_or_default()
        } else {
            format!("backfill attempt {attempt} stopped: {why}")
        };
        self.stop_backfill(attempt, reason::GATE_CLOSED, message);
    }

    /// Ask for the backfill Job of `attempt` to go; record why once. The outcome is left to
    /// the caller's path (AwaitingRollout) unless it is a pause.
    fn stop_backfill(&mut self, attempt: u32, why: &'static str, message: String) {
        let now = self.now();
        self.adopt(JobPhase::Backfill, attempt);
        let rec = super::record_mut(&mut self.status, JobPhase::Backfill);
        if rec.reason.as_deref() != Some(why) || rec.finished_at.is_none() {
            rec.finished_at = Some(now);
            rec.succeeded = false;
            rec.reason = Some(why.to_string());
            rec.message = Some(message.clone());
            self.extra_notices.push(Transition {
                warning: why == reason::GATE_CLOSED,
                reason: why.into(),
                message: message.clone(),
            });
        }
        self.action = super::Action::StopJob {
            phase: JobPhase::Backfill,
            attempt,
        };
        self.set(Phase::Backfilling, why, message);
    }
}
