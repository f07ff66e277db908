//! The planner: a pure function from (spec, status, observed Jobs, observed targets, clock)
//! to the next status and the one action to take. All of Phasegate's safety lives here; it
//! does no I/O, so it is tested exhaustively.
//!
//! The plan is level-triggered: it is derived from durable facts (the status' per-phase
//! records and the Jobs that exist), never from the previous phase alone, so a lost status
//! write or an operator restart cannot skip a gate.

mod backfill;
pub mod conditions;
pub mod grant;
pub mod order;
pub mod regression;
pub mod rollout;
pub mod validate;
pub mod version;
pub mod writes;

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{
    Approval, DatabaseMigrationSpec, DatabaseMigrationStatus, LintStatus, Phase, PhaseStatus,
    TargetStatus,
};

pub use validate::{validate, SpecError, ValidSpec};

/// The phases that run a Job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobPhase {
    Expand,
    Contract,
    /// `spec.backfill`: after the rollout completed, before soak, approval and contract.
    Backfill,
}

impl JobPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            JobPhase::Expand => "expand",
            JobPhase::Contract => "contract",
            JobPhase::Backfill => "backfill",
        }
    }
}

impl JobPhase {
    /// The migration phase while this phase's Job runs, and its condition reason.
    fn running(self) -> (Phase, &'static str) {
        match self {
            JobPhase::Expand => (Phase::Expanding, reason::EXPANDING),
            JobPhase::Contract => (Phase::Contracting, reason::CONTRACTING),
            JobPhase::Backfill => (Phase::Backfilling, reason::BACKFILLING),
        }
    }

    /// The condition reason when this phase's Job failed.
    fn failed_reason(self) -> &'static str {
        match self {
            JobPhase::Expand => reason::EXPAND_FAILED,
            JobPhase::Contract => reason::CONTRACT_FAILED,
            JobPhase::Backfill => reason::BACKFILL_FAILED,
        }
    }
}

/// A phase's inline SQL or user Job, as the spec gives it (exactly one is set).
pub fn phase_code(
    spec: &DatabaseMigrationSpec,
    phase: JobPhase,
) -> (Option<&str>, Option<&crate::api::JobSpec>) {
    match phase {
        JobPhase::Expand => (spec.expand.sql.as_deref(), spec.expand.job.as_ref()),
        JobPhase::Contract => (spec.contract.sql.as_deref(), spec.contract.job.as_ref()),
        JobPhase::Backfill => (spec.backfill.as_ref().map(|b| b.sql.as_str()), None),
    }
}

/// The status record of a phase, created on first use.
pub fn record_mut(status: &mut DatabaseMigrationStatus, phase: JobPhase) -> &mut PhaseStatus {
    match phase {
        JobPhase::Expand => status.expand.get_or_insert_with(PhaseStatus::default),
        JobPhase::Contract => status.contract.get_or_insert_with(PhaseStatus::default),
        JobPhase::Backfill => &mut status.backfill.get_or_insert_with(Default::default).run,
    }
}

impl std::fmt::Display for JobPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Job of a phase's current attempt, as observed.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum JobState {
    /// No Job of that attempt exists.
    #[default]
    Absent,
    /// The Job exists and has not finished; what holds it up, if anything is known.
    Running(Option<Holdup>),
    /// The Job completed; the executor's one-line report, if any.
    Succeeded(Option<String>),
    /// The Job failed; why (the executor's report or the Job's condition).
    Failed(String),
    /// Phasegate's own executor (inline `sql`) ended without its report: killed (OOM, a
    /// signal, a lost node) before it could say what happened; how it ended.
    Died(String),
}

/// What holds up a running Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holdup {
    /// Its pod cannot make progress, as the kubelet, scheduler or API server says (e.g.
    /// `pod waiting: CreateContainerConfigError: secret "shop-db" not found`).
    Stuck(String),
    /// Phasegate's executor runs and waits for the database, as its log says (e.g. `waiting
    /// for an older transaction's lock since …: pid 42 (…) holds AccessShareLock on …`).
    Waiting(String),
    /// A backfill Job makes progress, as its executor's log says (no Event: it changes often).
    Progress(crate::api::BackfillProgress),
    /// A fleet's Job runs its tenants: those so far, as its executor's log says (no Event).
    Tenants(crate::api::TenantsStatus),
}

/// Attempts in total, automatic ones included, after which an executor that keeps dying
/// without a report is left failed: each death may have been an OOM kill that will recur.
pub const MAX_AUTOMATIC_ATTEMPTS: u32 = 3;

/// Everything the planner looks at.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    pub now: Timestamp,
    /// The migration's name and UID (Job names derive from both).
    pub name: &'a str,
    pub uid: &'a str,
    pub generation: i64,
    pub spec: &'a DatabaseMigrationSpec,
    pub status: &'a DatabaseMigrationStatus,
    /// The `phasegate.dev/approve` annotation is `"true"`.
    pub approved: bool,
    /// The `phasegate.dev/retry` annotation's value.
    pub retry: Option<&'a str>,
    /// The Job of expand's attempt `max(attempts, 1)`.
    pub expand_job: JobState,
    /// The Job of contract's attempt `max(attempts, 1)`.
    pub contract_job: JobState,
    /// The Job of the backfill's attempt `max(attempts, 1)` (Absent without `spec.backfill`).
    pub backfill_job: JobState,
    /// The `phasegate.dev/backfill-paused` annotation is `"true"`.
    pub backfill_paused: bool,
    /// Every target, judged (see [`rollout::evaluate`]); a target that could not be
    /// observed is present and incomplete.
    pub targets: Vec<TargetStatus>,
    /// The cluster admin's policy for user Job templates.
    pub job_policy: &'a crate::policy::JobPolicy,
    /// Why expand may not start yet: each migration this one waits for (its `dependsOn`, and
    /// migrations on the same database created earlier whose expand has not run), e.g.
    /// `add-email (dependsOn; Expanding)`.
    pub waits_for: Vec<String>,
    /// Expand runs (or ran) in another migration's batch Job, which status records or is to
    /// record (see [`order::batch`]); `expand_job` is what that Job did for this migration.
    pub expand_seat: Option<Seat>,
    /// The later migrations of the database a new expand attempt's Job applies after this
    /// one, by name (see [`order::batch`]).
    pub expand_batch: Vec<String>,
    /// With `spec.tenants`: what the reports of the observed expand and contract attempts say
    /// across the tenants.
    pub expand_tenants: Option<crate::api::TenantsStatus>,
    pub contract_tenants: Option<crate::api::TenantsStatus>,
    /// The same for the backfill's observed attempt, once it finished.
    pub backfill_tenants: Option<crate::api::TenantsStatus>,
    /// Every target workload's kept revisions (ReplicaSets, ControllerRevisions), when the
    /// controller read them (see [`regression`]); `None` on most reconciles.
    pub history: Option<Vec<regression::TargetHistory>>,
    /// A contract attempt recorded as stopped whose executor pod has not ended yet (the
    /// kubelet has not confirmed the stop), described, e.g. `pod m-contract-1-x7k2p is still
    /// Running`. The next attempt waits for it.
    pub unconfirmed_stop: Option<String>,
}

/// A seat in another migration's expand batch Job: that Job applies this one's expand after
/// its lead's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seat {
    pub job_name: String,
    pub job_uid: String,
    /// The migration that leads the batch.
    pub lead: String,
}

/// Whether expand's latest attempt, as `rec` records it, is a seat in another migration's
/// batch Job: its Job is not this migration's (`name`, `uid`) own Job of that attempt.
pub fn expand_in_a_seat(name: &str, uid: &str, rec: &PhaseStatus) -> bool {
    rec.attempts > 0
        && rec
            .job_name
            .as_deref()
            .is_some_and(|n| n != job_name(name, uid, JobPhase::Expand, rec.attempts))
}

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to change outside the status.
    None,
    /// Create (or adopt) the Job of `phase`'s attempt number `attempt`.
    StartJob { phase: JobPhase, attempt: u32 },
    /// Stop the Job of that attempt at once (delete it; its pod gets SIGTERM and the executor
    /// rolls back): a gate closed before the attempt committed.
    StopJob { phase: JobPhase, attempt: u32 },
}

/// A Kubernetes Event to publish because the phase changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// The planner's decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub status: DatabaseMigrationStatus,
    pub action: Action,
    /// Wake up after this long even without a watch event (soak delay, rollout timeout).
    pub requeue_after: Option<Duration>,
    /// Set when the phase changed.
    pub transition: Option<Transition>,
    /// Other Events, each published once: new lint warnings and overrides, a stuck pod.
    pub notices: Vec<Transition>,
}

/// Low-cardinality reasons used in conditions, Events and metrics.
pub mod reason {
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const SQL_REFUSED: &str = "SqlRefused";
    pub const LINT_WARNING: &str = "LintWarning";
    pub const LINT_OVERRIDE: &str = "LintOverride";
    pub const EXPANDING: &str = "Expanding";
    pub const EXPAND_FAILED: &str = "ExpandFailed";
    pub const EXPANDED: &str = "Expanded";
    pub const AWAITING_ROLLOUT: &str = "AwaitingRollout";
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    pub const ROLLOUT_TIMEOUT: &str = "RolloutTimeout";
    pub const SOAKING: &str = "Soaking";
    pub const AWAITING_APPROVAL: &str = "AwaitingApproval";
    pub const CONTRACTING: &str = "Contracting";
    pub const CONTRACT_FAILED: &str = "ContractFailed";
    pub const CONTRACTED: &str = "Contracted";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const PENDING: &str = "Pending";
    pub const RETRYING: &str = "Retrying";
    pub const JOB_REJECTED: &str = "JobRejected";
    /// A Job of the attempt's name exists that this migration did not create.
    pub const JOB_CONFLICT: &str = "JobConflict";
    /// A gate closed (rollback, old pod, revoked approval) while contract ran; the attempt
    /// was stopped before it could commit.
    pub const GATE_CLOSED: &str = "GateClosed";
    /// A stopped contract attempt's executor pod has not ended: the next attempt waits.
    pub const STOP_UNCONFIRMED: &str = "StopUnconfirmed";
    /// A user Job template breaks the cluster admin's Job policy.
    pub const POLICY_REFUSED: &str = "PolicyRefused";
    /// A target does not exist (likely a typo in its name or selector).
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    /// Expand waits for other migrations (`dependsOn`, or earlier on the same database).
    pub const WAITING_FOR_MIGRATION: &str = "WaitingForMigration";
    /// The executor died without its report; the phase is retried automatically (bounded).
    pub const EXECUTOR_DIED: &str = "ExecutorDied";
    /// A running attempt's pod cannot start or was refused (`FailedCreate`); an Event only.
    pub const JOB_STUCK: &str = "JobStuck";
    /// A running attempt's executor waits for the database (a lock, old sessions, another
    /// migration); an Event only.
    pub const EXECUTOR_WAITING: &str = "ExecutorWaiting";
    /// The backfill Job runs.
    pub const BACKFILLING: &str = "Backfilling";
    pub const BACKFILL_FAILED: &str = "BackfillFailed";
    /// The backfill was paused by annotation (its Job stopped; resuming continues from the
    /// checkpoint).
    pub const BACKFILL_PAUSED: &str = "BackfillPaused";
    /// `Stalled` is False although the phase is Failed: expand is applied, so GitOps tools
    /// must not hold back what depends on the migration.
    pub const FAILED_AFTER_EXPAND: &str = "FailedAfterExpand";
    /// The rollout history (ReplicaSet / ControllerRevision revisions) shows old code was
    /// rolled out after the rollout completed, e.g. while the operator was down; an Event.
    pub const REGRESSION_IN_HISTORY: &str = "RegressionInHistory";
}

/// The `phasegate.dev/retry` annotation within one plan. A value differing from
/// `status.observedRetry` asks for one retry; acting on it records the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retry {
    /// Nothing new asked for.
    Absent,
    /// A new value, not acted on yet. If nothing has failed when the plan ends, it is
    /// recorded unused, so that a stale value in git never retries a later failure.
    Fresh,
    /// A new value retrying a failed contract, held until the gates let the next attempt
    /// start.
    AwaitingGates,
    /// Acted on (or recorded) in this plan.
    Spent,
}

impl Retry {
    fn from_input(input: &Input<'_>) -> Retry {
        match input.retry {
            Some(token)
                if !token.is_empty() && input.status.observed_retry.as_deref() != Some(token) =>
            {
                Retry::Fresh
            }
            _ => Retry::Absent,
        }
    }
}

/// Decide the next step.
pub fn plan(input: &Input<'_>) -> Plan {
    let mut p = Planner::new(input);
    p.run();
    p.finish()
}

struct Planner<'a> {
    input: &'a Input<'a>,
    status: DatabaseMigrationStatus,
    action: Action,
    requeue_after: Option<Duration>,
    /// (phase, condition reason, message) of the outcome.
    outcome: Option<(Phase, &'static str, String)>,
    /// Where this plan stands with the `phasegate.dev/retry` annotation.
    retry: Retry,
    /// Events beyond the transition, each published once (see [`Plan::notices`]).
    extra_notices: Vec<Transition>,
    /// An attempt whose executor died without a report, to be retried automatically by the
    /// next start of that phase: (phase, attempt, how it died).
    died: Option<(JobPhase, u32, String)>,
}

impl<'a> Planner<'a> {
    fn new(input: &'a Input<'a>) -> Self {
        let mut status = input.status.clone();
        status.observed_generation = Some(input.generation);
        Self {
            input,
            status,
            action: Action::None,
            requeue_after: None,
            outcome: None,
            retry: Retry::from_input(input),
            extra_notices: Vec::new(),
            died: None,
        }
    }

    fn now(&self) -> Time {
        Time(self.input.now)
    }

    /// A retry was asked for that this plan has not acted on yet.
    fn retry_requested(&self) -> bool {
        matches!(self.retry, Retry::Fresh | Retry::AwaitingGates)
    }

    /// Act on the retry: record its value, so it is never acted on again.
    fn consume_retry(&mut self) {
        self.status.observed_retry = self.input.retry.map(str::to_owned);
        self.retry = Retry::Spent;
    }

    /// A retry of a failed contract passes through the gates; it is spent only when the new
    /// attempt starts, so a closed gate keeps it for later.
    fn defer_retry_to_gates(&mut self) {
        if self.retry == Retry::Fresh {
            self.retry = Retry::AwaitingGates;
        }
    }

    fn set(&mut self, phase: Phase, reason: &'static str, message: impl Into<String>) {
        self.outcome = Some((phase, reason, message.into()));
    }

    fn run(&mut self) {
        self.steps();
        // A retry annotation seen while nothing had failed is recorded, so that it cannot
        // trigger an unasked-for retry of a later failure.
        if self.retry == Retry::Fresh && !matches!(self.outcome, Some((Phase::Failed, _, _))) {
            self.consume_retry();
        }
    }

    fn steps(&mut self) {
        // Finished is finished: a later operator version (a new lint rule) or a later edit
        // never turns a migration that has applied both phases into a failure.
        if self.status.contract.as_ref().is_some_and(|c| c.succeeded) {
            self.set(
                Phase::Succeeded,
                reason::SUCCEEDED,
                "expand and contract applied",
            );
            return;
        }
        // Only what is still to run is validated and linted.
        let expand_applied = self.status.expand.as_ref().is_some_and(|e| e.succeeded);
        let valid = match validate(self.input.spec, !expand_applied) {
            Ok(v) => v,
            Err(e) => {
                let why = match e {
                    SpecError::Refused { .. } => reason::SQL_REFUSED,
                    SpecError::Invalid { .. } => reason::INVALID_SPEC,
                };
                self.fence_refused(&e.to_string());
                self.set(Phase::Failed, why, e.to_string());
                return;
            }
        };
        if self
            .input
            .spec
            .depends_on
            .iter()
            .any(|d| d == self.input.name)
        {
            let why = "spec.dependsOn: a migration cannot depend on itself";
            self.fence_refused(why);
            self.set(Phase::Failed, reason::INVALID_SPEC, why);
            return;
        }
        // The admin's Job policy, for every user template still to run, before any Job.
        if let Some(refusal) = self.policy_refusal(!expand_applied) {
            self.fence_refused(&refusal);
            self.set(Phase::Failed, reason::POLICY_REFUSED, refusal);
            return;
        }
        let mut lint = LintStatus {
            warnings: valid.lint_warnings.clone(),
            overrides: valid.lint_overrides.clone(),
        };
        if expand_applied {
            // Keep the record of what expand was let through with.
            let old = self.input.status.lint.clone().unwrap_or_default();
            let expand_only = |v: Vec<String>| -> Vec<String> {
                v.into_iter()
                    .filter(|w| w.starts_with("spec.expand"))
                    .collect()
            };
            let mut warnings = expand_only(old.warnings);
            warnings.append(&mut lint.warnings);
            let mut overrides = expand_only(old.overrides);
            overrides.append(&mut lint.overrides);
            lint = LintStatus {
                warnings,
                overrides,
            };
        }
        self.status.lint = (lint != LintStatus::default()).then_some(lint);
        self.record_previous_versions();
        if self.expand() {
            self.rollout_and_contract(&valid);
        }
    }

    /// The spec is refused while a fenced attempt may run: a plan that judges no gate cannot
    /// vouch for it, so a running contract (or backfill) attempt is stopped before anything
    /// else. Fixing the spec resumes through the gates with a new attempt.
    fn fence_refused(&mut self, why: &str) {
        let rec = self.status.contract.clone().unwrap_or_default();
        if rec.attempts > 0
            && !rec.succeeded
            && matches!(self.input.contract_job, JobState::Running(_))
        {
            let attempt = rec.attempts;
            let stopped =
                rec.reason.as_deref() == Some(reason::GATE_CLOSED) && rec.finished_at.is_some();
            if !stopped {
                let now = self.now();
                let message = format!(
                    "contract attempt {attempt} stopped before commit: the spec is refused: {why}"
                );
                let rec = record_mut(&mut self.status, JobPhase::Contract);
                rec.finished_at = Some(now);
                rec.reason = Some(reason::GATE_CLOSED.to_string());
                rec.message = Some(message.clone());
                self.extra_notices.push(Transition {
                    warning: true,
                    reason: reason::GATE_CLOSED.into(),
                    message,
                });
            }
            self.action = Action::StopJob {
                phase: JobPhase::Contract,
                attempt,
            };
            return;
        }
        self.stop_backfill_on_closed_gate(&format!("the spec is refused: {why}"));
    }

    /// Why a user Job template still to run is refused by the admin's policy, if one is.
    fn policy_refusal(&self, expand_pending: bool) -> Option<String> {
        let spec = self.input.spec;
        let phases = [
            (
                "spec.expand.job.template.",
                spec.expand.job.as_ref().filter(|_| expand_pending),
            ),
            ("spec.contract.job.template.", spec.contract.job.as_ref()),
        ];
        let found: Vec<(&str, Vec<crate::policy::Violation>)> = phases
            .into_iter()
            .filter_map(|(prefix, job)| {
                let template = validate::pod_template(job?).ok()?;
                let violations = crate::policy::check(
                    &template,
                    self.input.job_policy,
                    &spec.database.url_secret_ref.name,
                );
                (!violations.is_empty()).then_some((prefix, violations))
            })
            .collect();
        if found.is_empty() {
            return None;
        }
        let head = "refused by the cluster's Job policy before any Job ran: ";
        let full: Vec<String> = found
            .iter()
            .map(|(prefix, v)| crate::policy::describe(prefix, v))
            .collect();
        let full = format!("{head}{}", full.join("; "));
        // Conditions keep 1,024 characters, Events 1,000.
        if full.chars().count() <= 1000 {
            return Some(full);
        }
        // Too long for a condition: every field and rule still fits, without the advice.
        let short: Vec<String> = found
            .iter()
            .flat_map(|(prefix, v)| {
                v.iter()
                    .map(move |v| format!("{prefix}{} [{}]", v.field, v.rule))
            })
            .collect();
        Some(format!(
            "{head}{} (how to fix each: docs/security.md#rules)",
            short.join("; ")
        ))
    }

    /// `appVersion` and how versions compare to it.
    fn version_rule(&self) -> version::VersionRule {
        version_rule(self.input.spec, &self.status)
    }

    /// With `versionOrder: NotPrevious`, record once what the targets run before anything
    /// ran: those versions count as old.
    fn record_previous_versions(&mut self) {
        if self.input.spec.rollout.version_order != crate::api::VersionOrder::NotPrevious
            || self.status.previous_versions.is_some()
        {
            return;
        }
        let mut seen: Vec<String> = self
            .input
            .targets
            .iter()
            .filter_map(|t| t.version.clone())
            .filter(|v| v != &self.input.spec.app_version)
            .collect();
        seen.sort();
        seen.dedup();
        if !seen.is_empty() {
            self.status.previous_versions = Some(seen);
        }
    }

    /// Drives expand; true once expand is applied.
    fn expand(&mut self) -> bool {
        if self.status.expand.as_ref().is_some_and(|e| e.succeeded) {
            return true;
        }
        self.take_seat();
        let rec = self.status.expand.clone().unwrap_or_default();
        let attempt = rec.attempts.max(1);
        match &self.input.expand_job {
            JobState::Succeeded(report) => {
                self.job_succeeded(JobPhase::Expand, attempt, report.clone());
                true
            }
            JobState::Running(holdup) => {
                self.job_running(JobPhase::Expand, attempt, holdup.as_ref());
                false
            }
            JobState::Failed(msg) => {
                if self.retry_requested() {
                    self.consume_retry();
                    self.start(JobPhase::Expand, attempt + 1);
                } else {
                    self.job_failed(JobPhase::Expand, attempt, msg);
                }
                false
            }
            JobState::Died(msg) => {
                if self.retry_requested() {
                    self.consume_retry();
                    self.start(JobPhase::Expand, attempt + 1);
                } else if self.may_retry_death(JobPhase::Expand, attempt) {
                    self.died = Some((JobPhase::Expand, attempt, msg.clone()));
                    self.start(JobPhase::Expand, attempt + 1);
                } else {
                    self.death_final(JobPhase::Expand, attempt, msg);
                }
                false
            }
            JobState::Absent => {
                // In line: never started, or its seat in a batch ended before its turn (an
                // earlier one failed, the executor died or was stopped).
                let in_line = rec.attempts == 0 || self.seat_ended(&rec);
                if in_line && !self.input.waits_for.is_empty() {
                    // A phase change of the ones it waits for wakes it
                    // (controller/wakes.rs); this is the fallback.
                    self.requeue_after = Some(Duration::from_secs(5));
                    self.set(
                        Phase::Pending,
                        reason::WAITING_FOR_MIGRATION,
                        format!("expand waits for: {}", self.input.waits_for.join("; ")),
                    );
                } else if in_line {
                    self.start(JobPhase::Expand, rec.attempts + 1);
                } else if rec.finished_at.is_some() {
                    // The failed Job is gone but its failure is recorded: still failed.
                    if self.retry_requested() {
                        self.consume_retry();
                        self.start(JobPhase::Expand, rec.attempts + 1);
                    } else {
                        self.recorded_failure(JobPhase::Expand, &rec);
                    }
                } else {
                    // The running Job vanished (deleted by hand); the executor's ledger makes
                    // a new attempt safe.
                    self.start(JobPhase::Expand, rec.attempts + 1);
                }
                false
            }
        }
    }

    /// A batch Job not recorded yet carries this migration's expand: its next attempt is that
    /// seat.
    fn take_seat(&mut self) {
        let Some(seat) = &self.input.expand_seat else {
            return;
        };
        let now = self.now();
        let rec = record_mut(&mut self.status, JobPhase::Expand);
        if rec.job_uid.as_deref() == Some(seat.job_uid.as_str()) {
            return;
        }
        rec.attempts += 1;
        rec.job_name = Some(seat.job_name.clone());
        rec.job_uid = Some(seat.job_uid.clone());
        rec.started_at = Some(now);
        rec.finished_at = None;
        rec.succeeded = false;
        rec.message = None;
        rec.reason = None;
    }

    /// The latest expand attempt was a seat in another migration's batch Job (not this
    /// migration's own Job), it did not finish, and no Job says what became of it now.
    fn seat_ended(&self, rec: &PhaseStatus) -> bool {
        self.input.expand_seat.is_none()
            && rec.finished_at.is_none()
            && !rec.succeeded
            && expand_in_a_seat(self.input.name, self.input.uid, rec)
    }

    /// A failure recorded in status whose Job is gone (deleted, or never created because the
    /// API server rejected it): still failed, with the same reason as when it happened.
    fn recorded_failure(&mut self, phase: JobPhase, rec: &PhaseStatus) {
        let msg = rec.message.as_deref().unwrap_or("the Job failed");
        let refused = [reason::JOB_REJECTED, reason::JOB_CONFLICT]
            .into_iter()
            .find(|r| rec.reason.as_deref() == Some(*r));
        if let Some(r) = refused {
            self.set(Phase::Failed, r, msg.to_string());
        } else {
            self.set(
                Phase::Failed,
                phase.failed_reason(),
                format!("{phase} failed: {msg}"),
            );
        }
    }

    /// What the observed attempt of `phase` did across the tenants, if it said.
    fn tenants_of(&self, phase: JobPhase) -> Option<crate::api::TenantsStatus> {
        match phase {
            JobPhase::Expand => self.input.expand_tenants.clone(),
            JobPhase::Contract => self.input.contract_tenants.clone(),
            JobPhase::Backfill => self.input.backfill_tenants.clone(),
        }
    }

    /// The Job of `attempt` completed.
    fn job_succeeded(&mut self, phase: JobPhase, attempt: u32, report: Option<String>) {
        let now = self.now();
        self.adopt(phase, attempt);
        let tenants = self.tenants_of(phase);
        let rec = record_mut(&mut self.status, phase);
        rec.succeeded = true;
        rec.finished_at = Some(now);
        rec.message = report;
        rec.tenants = tenants;
        if rec.reason.as_deref() == Some(reason::EXECUTOR_DIED) {
            rec.reason = None;
        }
    }

    /// The Job of `attempt` runs; say so, and what holds it up if anything does: one Event
    /// when that first appears or changes, not per reconcile (the Ready condition carries the
    /// last message, cut as conditions cut it).
    fn job_running(&mut self, phase: JobPhase, attempt: u32, holdup: Option<&Holdup>) {
        self.adopt(phase, attempt);
        let mut suffix = match holdup {
            Some(Holdup::Stuck(w) | Holdup::Waiting(w)) => format!("; {w}"),
            Some(Holdup::Progress(p)) => format!("; {}", p.summary()),
            Some(Holdup::Tenants(t)) => format!("; {}", t.summary()),
            None => String::new(),
        };
        if let Some(Holdup::Progress(p)) = holdup {
            if phase == JobPhase::Backfill {
                if let Some(b) = self.status.backfill.as_mut() {
                    // A fleet's counts so far go where its final counts will be.
                    let mut p = p.clone();
                    if let Some(t) = p.tenants.take() {
                        b.run.tenants = Some(t);
                    }
                    b.progress = Some(p);
                }
            }
        }
        let rec = record_mut(&mut self.status, phase);
        if let Some(Holdup::Tenants(t)) = holdup {
            rec.tenants = Some(t.clone());
        }
        if rec.reason.as_deref() == Some(reason::EXECUTOR_DIED) {
            if let Some(m) = &rec.message {
                suffix.push_str(&format!(" (retried automatically: {m})"));
            }
        }
        let message = match (&self.input.expand_seat, phase) {
            (Some(seat), JobPhase::Expand) => format!(
                "expand attempt {attempt} runs in Job {}, the expand batch of {}{suffix}",
                seat.job_name, seat.lead
            ),
            _ => format!(
                "{phase} Job attempt {attempt} is running{suffix}{}",
                self.signal_only_note(phase)
            ),
        };
        let no_detail = String::new();
        if let Some(h) = holdup.filter(|h| !matches!(h, Holdup::Progress(_) | Holdup::Tenants(_))) {
            let cut: String = message
                .chars()
                .take(conditions::MAX_MESSAGE_CHARS)
                .collect();
            let before = self
                .input
                .status
                .conditions
                .iter()
                .find(|c| c.type_ == conditions::READY)
                .map(|c| c.message.as_str());
            if before != Some(cut.as_str()) {
                let (warning, why, w) = match h {
                    Holdup::Stuck(w) => (true, reason::JOB_STUCK, w),
                    Holdup::Waiting(w) => (false, reason::EXECUTOR_WAITING, w),
                    Holdup::Progress(_) | Holdup::Tenants(_) => {
                        (false, reason::EXECUTOR_WAITING, &no_detail)
                    }
                };
                self.extra_notices.push(Transition {
                    warning,
                    reason: why.into(),
                    message: format!("{phase} Job attempt {attempt}: {w}"),
                });
            }
        }
        let (running, why) = phase.running();
        self.set(running, why, message);
    }

    /// The Job of `attempt` failed: record when (once per distinct failure) and why, and fail.
    fn job_failed(&mut self, phase: JobPhase, attempt: u32, msg: &str) {
        let now = self.now();
        self.adopt(phase, attempt);
        let tenants = self.tenants_of(phase);
        let rec = record_mut(&mut self.status, phase);
        if rec.finished_at.is_none() || rec.message.as_deref() != Some(msg) {
            rec.finished_at = Some(now);
        }
        if tenants.is_some() {
            rec.tenants = tenants;
        }
        rec.message = Some(msg.to_string());
        rec.reason = Some(phase.failed_reason().to_string());
        self.set(
            Phase::Failed,
            phase.failed_reason(),
            format!("{phase} failed: {msg}"),
        );
    }

    /// Record the Job of `attempt` as the phase's current one (also heals a lost status
    /// write: the Job exists but the status never said so).
    fn adopt(&mut self, phase: JobPhase, attempt: u32) {
        let now = self.now();
        let name = match (&self.input.expand_seat, phase) {
            (Some(seat), JobPhase::Expand) => seat.job_name.clone(),
            _ => job_name(self.input.name, self.input.uid, phase, attempt),
        };
        let rec = record_mut(&mut self.status, phase);
        rec.attempts = attempt;
        if rec.job_name.as_deref() != Some(name.as_str()) {
            rec.job_name = Some(name);
        }
        rec.started_at.get_or_insert(now);
    }

    fn start(&mut self, phase: JobPhase, attempt: u32) {
        if phase == JobPhase::Contract && self.retry == Retry::AwaitingGates {
            self.consume_retry();
        }
        let now = self.now();
        let rec = record_mut(&mut self.status, phase);
        rec.attempts = attempt;
        rec.started_at = Some(now);
        rec.finished_at = None;
        rec.succeeded = false;
        rec.message = None;
        rec.job_name = Some(job_name(self.input.name, self.input.uid, phase, attempt));
        // Filled in from the API server's answer once the Job is created.
        rec.job_uid = None;
        rec.tenants = None;
        rec.reason = None;
        self.action = Action::StartJob { phase, attempt };
        let (running, why) = phase.running();
        let mut message = format!(
            "{phase} Job attempt {attempt} started{}{}",
            self.signal_only_note(phase),
            self.batch_note(phase)
        );
        if let Some((_, died, how)) = self.died.take().filter(|(p, _, _)| *p == phase) {
            let why_retry = format!("attempt {died} died: {how}");
            let rec = record_mut(&mut self.status, phase);
            rec.reason = Some(reason::EXECUTOR_DIED.to_string());
            rec.message = Some(why_retry.clone());
            message = format!(
                "{message} automatically ({attempt} of {MAX_AUTOMATIC_ATTEMPTS}): {why_retry}"
            );
            self.extra_notices.push(Transition {
                warning: true,
                reason: reason::EXECUTOR_DIED.into(),
                message: message.clone(),
            });
        }
        self.set(running, why, message);
    }

    /// An expand Job that carries later migrations says which (the first few).
    fn batch_note(&self, phase: JobPhase) -> String {
        let members = &self.input.expand_batch;
        if phase != JobPhase::Expand || members.is_empty() {
            return String::new();
        }
        const SHOWN: usize = 5;
        let mut names = members
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if members.len() > SHOWN {
            names.push_str(&format!(" and {} more", members.len() - SHOWN));
        }
        format!(
            "; it applies the next {} migrations of this database after this one, in order: {names}",
            members.len()
        )
    }

    /// A user Job's contract cannot ask for the commit grant: only its stop holds it.
    fn signal_only_note(&self, phase: JobPhase) -> &'static str {
        if phase == JobPhase::Contract && phase_code(self.input.spec, phase).1.is_some() {
            " (your own Job: fenced by SIGTERM only, it cannot hold a commit grant; see docs/guarantees.md)"
        } else {
            ""
        }
    }

    /// An executor death without a report is retried automatically: only Phasegate's own
    /// executor (inline `sql`, all-or-nothing per transaction through the ledger), never a
    /// user Job, and at most up to [`MAX_AUTOMATIC_ATTEMPTS`] attempts in total.
    fn may_retry_death(&self, phase: JobPhase, attempt: u32) -> bool {
        let inline = phase_code(self.input.spec, phase).0.is_some();
        inline && attempt < MAX_AUTOMATIC_ATTEMPTS
    }

    /// A death not retried automatically (any more): failed, with the retry hint.
    fn death_final(&mut self, phase: JobPhase, attempt: u32, how: &str) {
        let msg = if attempt >= MAX_AUTOMATIC_ATTEMPTS {
            format!(
                "{how}; attempt {attempt} of {MAX_AUTOMATIC_ATTEMPTS} retried automatically, \
                 no more: find the cause (memory limit?), then set {} to a new value to retry",
                crate::api::ANNOTATION_RETRY
            )
        } else {
            format!(
                "{how}; set {} to a new value to retry",
                crate::api::ANNOTATION_RETRY
            )
        };
        self.job_failed(phase, attempt, &msg);
    }

    fn rollout_and_contract(&mut self, valid: &ValidSpec) {
        let rec = self.status.contract.clone().unwrap_or_default();
        // Targets are judged in every phase up to Succeeded: a rollback while contract runs
        // stops it, and one while contract has failed restarts the soak before any retry.
        let rollout = self.judge_rollout();
        let attempt = rec.attempts.max(1);
        let stopped =
            rec.reason.as_deref() == Some(reason::GATE_CLOSED) && rec.finished_at.is_some();
        match &self.input.contract_job {
            JobState::Succeeded(report) => {
                self.job_succeeded(JobPhase::Contract, attempt, report.clone());
                self.set(
                    Phase::Succeeded,
                    reason::SUCCEEDED,
                    "expand and contract applied",
                );
                return;
            }
            JobState::Running(holdup) => {
                // The fence: the gates must still hold while the attempt runs, until it
                // commits. A stopped attempt stays stopped until its Job is gone.
                let closed = if stopped {
                    Some(rec.message.clone().unwrap_or_default())
                } else {
                    self.closed_gate(&rollout)
                };
                match closed {
                    Some(why) => {
                        let why = format!("{why}{}", self.unconfirmed_note());
                        self.stop_contract(attempt, &rollout, why, !stopped)
                    }
                    None => self.job_running(JobPhase::Contract, attempt, holdup.as_ref()),
                }
                return;
            }
            JobState::Failed(msg) => {
                if !self.retry_requested() {
                    self.job_failed(JobPhase::Contract, attempt, msg);
                    return;
                }
                // A retry of contract passes through the rollout gates again below.
                self.defer_retry_to_gates();
            }
            JobState::Died(msg) => {
                if self.retry_requested() {
                    self.defer_retry_to_gates();
                } else if self.may_retry_death(JobPhase::Contract, attempt) {
                    // Automatic, but through the gates like any other attempt.
                    self.died = Some((JobPhase::Contract, attempt, msg.clone()));
                } else {
                    self.death_final(JobPhase::Contract, attempt, msg);
                    return;
                }
            }
            JobState::Absent => {
                // A stopped attempt is no failure: the next one waits for the gates.
                if rec.attempts > 0 && rec.finished_at.is_some() && !stopped {
                    if !self.retry_requested() {
                        self.recorded_failure(JobPhase::Contract, &rec);
                        return;
                    }
                    self.defer_retry_to_gates();
                }
            }
        }
        // A first attempt, a retry after a failure, a new attempt after a stopped one, or
        // after the running Job vanished (the executor's ledger keeps the phase exactly-once).
        let next_attempt = rec.attempts + 1;
        self.gate_contract(valid, rollout, next_attempt);
    }

    /// Why a running contract attempt must stop now, if a gate closed.
    fn closed_gate(&self, rollout: &Result<(), String>) -> Option<String> {
        if let Err(why) = rollout {
            return Some(why.clone());
        }
        if let Some(why) = self.contract_predates_epoch() {
            return Some(why);
        }
        if !self.backfill_done_in_epoch() {
            return Some("the backfill has not finished in this rollout epoch".to_string());
        }
        if self.input.spec.contract.approval == Approval::Manual && !self.input.approved {
            return Some(format!(
                "the approval was withdrawn ({} is no longer \"true\")",
                crate::api::ANNOTATION_APPROVE
            ));
        }
        None
    }

    /// What status adds while a stopped attempt's pod has not ended.
    fn unconfirmed_note(&self) -> String {
        match &self.input.unconfirmed_stop {
            Some(pod) => format!(
                " (stop not confirmed yet: {pod}; it cannot commit without the operator's grant)"
            ),
            None => String::new(),
        }
    }

    /// Stop the running contract attempt: record why (once) and ask for its Job to go.
    fn stop_contract(
        &mut self,
        attempt: u32,
        rollout: &Result<(), String>,
        why: String,
        first: bool,
    ) {
        let now = self.now();
        self.adopt(JobPhase::Contract, attempt);
        let rec = record_mut(&mut self.status, JobPhase::Contract);
        let message = if first {
            let m = format!("contract attempt {attempt} stopped before commit: {why}");
            rec.finished_at = Some(now);
            rec.succeeded = false;
            rec.reason = Some(reason::GATE_CLOSED.to_string());
            rec.message = Some(m.clone());
            m
        } else {
            why
        };
        self.action = Action::StopJob {
            phase: JobPhase::Contract,
            attempt,
        };
        let phase = if rollout.is_err() {
            Phase::AwaitingRollout
        } else {
            Phase::AwaitingApproval
        };
        self.set(phase, reason::GATE_CLOSED, message);
    }

    /// Copy the judged targets into status and judge the rollout gate: `Ok` while it holds,
    /// else why not. It opens once every target is complete; from then on it holds while
    /// no old code can run (every template at or above `appVersion`, no old pod), so an
    /// availability dip of the new version neither fails nor restarts anything. When it
    /// closes after having held (a rollback), the soak and the timeout clock restart.
    fn judge_rollout(&mut self) -> Result<(), String> {
        let input = self.input;
        let targets = &input.targets;
        let ready = targets.iter().filter(|t| t.complete).count();
        self.status.targets_ready = Some(format!("{ready}/{}", targets.len()));
        self.status.targets.clone_from(targets);
        // Old code rolled out since the rollout completed, as the kept revisions show: the
        // gate is closed for this plan, like for a rollback seen live.
        if let Some(why) = self.regression_from_history() {
            return Err(why);
        }
        let named_present = self
            .input
            .spec
            .rollout
            .targets
            .iter()
            .all(|spec| match &spec.name {
                Some(name) => targets
                    .iter()
                    .any(|t| t.kind == spec.kind.as_str() && &t.name == name),
                None => true,
            });
        let observed = named_present && !targets.is_empty();
        let all_complete = observed && ready == targets.len();
        let rule = self.version_rule();
        let only_new_code = observed
            && targets
                .iter()
                .all(|t| rollout::runs_only_new_code(t, &rule));
        let held = self.status.rollout_completed_at.is_some();
        if all_complete || (held && only_new_code) {
            self.status.rollout_completed_at.get_or_insert(self.now());
            self.record_epoch_revisions();
            return Ok(());
        }
        if held {
            self.rollout_regressed(regression::live(targets, &rule));
        }
        let waiting: Vec<String> = targets
            .iter()
            .filter(|t| !t.complete)
            .map(|t| {
                t.message
                    .clone()
                    .unwrap_or_else(|| format!("{} {} not complete", t.kind, t.name))
            })
            .collect();
        Err(if targets.is_empty() {
            "no rollout targets".to_string()
        } else {
            format!(
                "waiting for {}/{} target(s): {}",
                targets.len() - ready,
                targets.len(),
                waiting.join("; ")
            )
        })
    }

    /// The rollout gates; starts contract only when every one is open.
    fn gate_contract(&mut self, valid: &ValidSpec, rollout: Result<(), String>, attempt: u32) {
        let now = self.input.now;

        // A timed-out rollout stays failed until a retry, whatever happens to the spec.
        if let Some(at) = self.input.status.rollout_timed_out_at.clone() {
            if self.retry_requested() {
                self.consume_retry();
                self.status.rollout_timed_out_at = None;
                self.status.rollout_started_at = Some(Time(now));
            } else {
                // Keep the message written when it timed out (Ready carries the failure).
                let msg = conditions::get(&self.input.status.conditions, conditions::READY)
                    .filter(|c| c.reason == reason::ROLLOUT_TIMEOUT && !c.message.is_empty())
                    .map(|c| c.message.clone())
                    .unwrap_or_else(|| {
                        format!(
                            "rollout timed out at {}; set {} to a new value to wait again",
                            at.0,
                            crate::api::ANNOTATION_RETRY
                        )
                    });
                self.set(Phase::Failed, reason::ROLLOUT_TIMEOUT, msg);
                return;
            }
        }

        let started = self.status.rollout_started_at.get_or_insert(Time(now)).0;
        if let Err(msg) = rollout {
            // The fence of the backfill: old code may write rows behind its checkpoint.
            self.stop_backfill_on_closed_gate(&msg);
            if let Some(timeout) = valid.rollout_timeout {
                let elapsed = elapsed(started, now);
                if elapsed >= timeout {
                    self.status.rollout_timed_out_at = Some(Time(now));
                    // A retry that was waiting for the gates, or one first seen now (set
                    // while the operator was away), was asked before this timeout: it is
                    // used up, and only a new value waits again.
                    if matches!(self.retry, Retry::AwaitingGates | Retry::Fresh) {
                        self.consume_retry();
                    }
                    self.set(
                        Phase::Failed,
                        reason::ROLLOUT_TIMEOUT,
                        format!(
                            "rollout not complete after {}: {msg}",
                            humantime::format_duration(timeout)
                        ),
                    );
                    return;
                }
                self.requeue_after = Some(timeout - elapsed);
            }
            let msg = format!("{msg}{}", self.unconfirmed_note());
            self.set(Phase::AwaitingRollout, reason::AWAITING_ROLLOUT, msg);
            return;
        }

        let completed = self.status.rollout_completed_at.get_or_insert(Time(now)).0;
        // The backfill runs once no old code is left, and contract waits for it.
        if !self.backfill() {
            return;
        }
        if let Some(delay) = valid.contract_delay {
            let soaked = elapsed(completed, now);
            if soaked < delay {
                let left = delay - soaked;
                self.requeue_after = Some(left);
                // The deadline, not a countdown: the message (and so status) stays the same
                // for the whole soak.
                let not_before = completed
                    .checked_add(jiff::SignedDuration::try_from(delay).unwrap_or_default())
                    .unwrap_or(completed);
                self.status.contract_not_before = Some(Time(not_before));
                self.set(
                    Phase::Soaking,
                    reason::SOAKING,
                    format!(
                        "rollout complete; soaking for {}, contract not before {}",
                        humantime::format_duration(delay),
                        not_before.round(jiff::Unit::Second).unwrap_or(not_before)
                    ),
                );
                return;
            }
        }
        if self.input.spec.contract.approval == Approval::Manual && !self.input.approved {
            self.set(
                Phase::AwaitingApproval,
                reason::AWAITING_APPROVAL,
                format!(
                    "rollout complete; approve contract with the annotation {}=\"true\"",
                    crate::api::ANNOTATION_APPROVE
                ),
            );
            return;
        }
        // The stop of the previous attempt is confirmed only once its pod has ended.
        if let Some(pod) = &self.input.unconfirmed_stop {
            self.requeue_after = Some(Duration::from_secs(5));
            self.set(
                Phase::Contracting,
                reason::STOP_UNCONFIRMED,
                format!(
                    "contract attempt {attempt} waits until the stopped attempt {} has ended \
                     ({pod}; its node has not confirmed the stop; it cannot commit without \
                     the operator's grant)",
                    attempt - 1
                ),
            );
            return;
        }
        self.start(JobPhase::Contract, attempt);
    }

    fn finish(mut self) -> Plan {
        let (phase, why, message) = self.outcome.clone().unwrap_or((
            Phase::Pending,
            reason::PENDING,
            "waiting".to_string(),
        ));
        let old_phase = self.input.status.phase;
        self.status.phase = Some(phase);
        if phase != Phase::Expanding && phase != Phase::Pending {
            if let Some(e) = self.status.expand.as_mut() {
                if e.succeeded && e.finished_at.is_none() {
                    e.finished_at = Some(Time(self.input.now));
                }
            }
        }
        conditions::apply(
            &mut self.status,
            phase,
            why,
            &message,
            self.input.generation,
            self.input.now,
        );
        let alarm = phase == Phase::Failed || why == reason::GATE_CLOSED;
        let transition = (old_phase != Some(phase)).then(|| Transition {
            warning: alarm,
            reason: if alarm {
                why.to_string()
            } else {
                phase.as_str().to_string()
            },
            message: message.clone(),
        });
        let mut notices = self.notices();
        notices.append(&mut self.extra_notices);
        Plan {
            status: self.status,
            action: self.action,
            requeue_after: self.requeue_after,
            transition,
            notices,
        }
    }
}

impl Planner<'_> {
    /// One Event per lint warning or override not yet recorded in status.
    fn notices(&self) -> Vec<Transition> {
        let old = self.input.status.lint.clone().unwrap_or_default();
        let new = self.status.lint.clone().unwrap_or_default();
        let fresh = |new: &[String], old: &[String]| {
            new.iter()
                .filter(|w| !old.contains(w))
                .cloned()
                .collect::<Vec<_>>()
        };
        let mut out: Vec<Transition> = fresh(&new.warnings, &old.warnings)
            .into_iter()
            .map(|message| Transition {
                warning: true,
                reason: reason::LINT_WARNING.into(),
                message,
            })
            .collect();
        let missing_now = conditions::not_found(&self.status);
        let missing_before = conditions::not_found(self.input.status);
        out.extend(
            fresh(&missing_now, &missing_before)
                .into_iter()
                .map(|message| Transition {
                    warning: true,
                    reason: reason::TARGET_NOT_FOUND.into(),
                    message: format!(
                        "{message}: check the target's name or selector in spec.rollout.targets"
                    ),
                }),
        );
        out.extend(
            fresh(&new.overrides, &old.overrides)
                .into_iter()
                .map(|message| Transition {
                    warning: true,
                    reason: reason::LINT_OVERRIDE.into(),
                    message: format!("overridden by spec.safety.allow: {message}"),
                }),
        );
        out
    }
}

/// `appVersion` and how versions compare to it, as the spec and status say.
pub fn version_rule(
    spec: &DatabaseMigrationSpec,
    status: &DatabaseMigrationStatus,
) -> version::VersionRule {
    version::VersionRule {
        want: spec.app_version.clone(),
        order: spec.rollout.version_order,
        previous: status.previous_versions.clone(),
    }
}

/// Why the Job a plan asked for could not be created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobRefusal {
    /// The API server refused it (e.g. an invalid pod template): no retry can fix that.
    Rejected,
    /// A Job of that name exists that this migration did not create.
    Conflict,
}

/// The Job a plan asked for could not be created: record the attempt as failed (so the next
/// plan stays Failed until a retry) and fail now, with the reason.
pub fn job_refused(
    mut plan: Plan,
    phase: JobPhase,
    refusal: JobRefusal,
    reason_text: &str,
    now: Timestamp,
    generation: i64,
) -> Plan {
    let (why, message) = match refusal {
        JobRefusal::Rejected => (
            reason::JOB_REJECTED,
            format!("{phase} Job rejected by the API server: {reason_text}"),
        ),
        JobRefusal::Conflict => (
            reason::JOB_CONFLICT,
            format!("{phase} Job not started: {reason_text}"),
        ),
    };
    let rec = record_mut(&mut plan.status, phase);
    rec.finished_at = Some(Time(now));
    rec.succeeded = false;
    rec.message = Some(message.clone());
    rec.reason = Some(why.to_string());
    plan.status.phase = Some(Phase::Failed);
    plan.action = Action::None;
    conditions::apply(
        &mut plan.status,
        Phase::Failed,
        why,
        &message,
        generation,
        now,
    );
    plan.transition = Some(Transition {
        warning: true,
        reason: why.into(),
        message,
    });
    plan
}

/// The deterministic name of a phase's Job: `<migration>-<phase>-<attempt>-<uid5>`, with the
/// first five characters of the migration's UID, so that a Job left behind by a deleted
/// migration of the same name is never mistaken for this one's. Shortened with a stable hash
/// when the name is long (Job names feed 63-character labels).
pub fn job_name(migration: &str, uid: &str, phase: JobPhase, attempt: u32) -> String {
    let uid: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(5)
        .collect::<String>()
        .to_ascii_lowercase();
    let suffix = if uid.is_empty() {
        format!("-{}-{attempt}", phase.as_str())
    } else {
        format!("-{}-{attempt}-{uid}", phase.as_str())
    };
    // Job names feed the 63-character `batch.kubernetes.io/job-name` label of pods named
    // `<job>-<5 random>`.
    const MAX: usize = 52;
    format!("{}{suffix}", shortened(migration, MAX - suffix.len()))
}

/// `name` if it has at most `room` characters, else a prefix and a stable hash of the whole
/// name that together fit.
fn shortened(name: &str, room: usize) -> String {
    use sha2::{Digest, Sha256};
    if name.len() <= room {
        return name.to_string();
    }
    let hash = hex::encode(&Sha256::digest(name.as_bytes())[..4]);
    let head: String = name.chars().take(room - hash.len() - 1).collect();
    format!("{}-{hash}", head.trim_end_matches(['-', '.']))
}

/// A label value naming the migration: its name when that fits the 63 characters a label
/// value may have, else a prefix and a stable hash. The full name is in an annotation.
pub fn migration_label(migration: &str) -> String {
    shortened(migration, 63)
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    let d: SignedDuration = now.duration_since(since);
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests;
