use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a DatabaseMigration, written by the operator. Until its first write
/// the API server shows `{observedGeneration: 0}`: not observed yet, which kstatus (Flux)
/// reads as InProgress.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("default" = {"observedGeneration": 0}))]
pub struct DatabaseMigrationStatus {
    /// Where the migration is: Pending, Expanding, AwaitingRollout, Soaking,
    /// AwaitingApproval, Backfilling, Contracting, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus conditions (`Ready`, `Reconciling`, `Stalled`) and Phasegate's own
    /// (`Expanded`, `RolloutComplete`, `Contracted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Rollout progress of every target workload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetStatus>,
    /// Targets whose rollout is complete, out of all targets, e.g. `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets_ready: Option<String>,
    /// The expand phase's executions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expand: Option<PhaseStatus>,
    /// The contract phase's executions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<PhaseStatus>,
    /// When every target first reported a complete rollout; the soak delay counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_completed_at: Option<Time>,
    /// With `contract.delay`: the earliest time contract may start (`rolloutCompletedAt` plus
    /// the delay); cleared when the rollout regresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_not_before: Option<Time>,
    /// When the migration started waiting for the rollout; the rollout timeout counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_started_at: Option<Time>,
    /// When the rollout timed out; contract stays blocked until a retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_timed_out_at: Option<Time>,
    /// With `versionOrder: NotPrevious`: the versions the targets ran when the migration was
    /// first observed; they, and only they, count as old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_versions: Option<Vec<String>>,
    /// What the SQL linter let through: warnings, and findings overridden by
    /// `spec.safety.allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lint: Option<LintStatus>,
    /// The last `phasegate.dev/retry` annotation value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_retry: Option<String>,

    // --- backfill (issue 13) ---
    /// The backfill's executions and progress (with `spec.backfill`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<super::BackfillStatus>,

    // --- regressions seen from durable facts (issue 22) ---
    /// The revision of each target workload when the rollout completed
    /// (`rolloutCompletedAt`). A later revision carrying an older version, found in what the
    /// cluster keeps (ReplicaSets, ControllerRevisions), proves a rollback since, even one
    /// that happened while the operator was not running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollout_revisions: Vec<TargetRevision>,
    /// The last regression of the rollout seen (live, or from the rollout history): the soak
    /// restarted then, and the backfill runs again from its first key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_regression: Option<RegressionStatus>,
}

/// A target workload's revision when the rollout completed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRevision {
    /// The workload kind.
    pub kind: String,
    /// The workload name.
    pub name: String,
    /// The workload's UID: a workload deleted and created again has a history of its own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Its revision (`deployment.kubernetes.io/revision` of its ReplicaSet, the `revision`
    /// of its ControllerRevision, `rollout.argoproj.io/revision`).
    pub revision: i64,
}

/// A regression of the rollout after it had completed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegressionStatus {
    /// When the operator saw it.
    pub seen_at: Time,
    /// What showed it, e.g. `Deployment shop-api: revision 3 (version 1.0.0) was rolled out
    /// after the rollout completed at revision 2`.
    pub message: String,
}

/// The lifecycle of a migration.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Accepted, nothing run yet.
    Pending,
    /// The expand Job is running.
    Expanding,
    /// Expand is applied; waiting for every target to roll out `appVersion`.
    AwaitingRollout,
    /// The rollout is complete; waiting out `contract.delay`.
    Soaking,
    /// The rollout is complete; waiting for manual approval.
    AwaitingApproval,
    /// The contract Job is running.
    Contracting,
    /// The rollout is complete; the backfill Job runs (`spec.backfill`).
    Backfilling,
    /// Both phases are applied.
    Succeeded,
    /// A phase failed, the spec is invalid or the rollout timed out; see the `Stalled`
    /// condition.
    Failed,
}

impl Phase {
    /// The name used in status, Events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Expanding => "Expanding",
            Phase::AwaitingRollout => "AwaitingRollout",
            Phase::Soaking => "Soaking",
            Phase::AwaitingApproval => "AwaitingApproval",
            Phase::Contracting => "Contracting",
            Phase::Backfilling => "Backfilling",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Executions of one phase.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseStatus {
    /// Jobs started for this phase (retries included).
    pub attempts: u32,
    /// The Job of the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// The UID of the Job the operator created for the latest attempt: only that Job is
    /// read. A Job of the same name, labels and owner created by anyone else is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_uid: Option<String>,
    /// When the latest attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the phase last finished, successfully or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Whether the phase is applied.
    #[serde(default)]
    pub succeeded: bool,
    /// The executor's report of the latest attempt, or its error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why the latest attempt failed: `ExpandFailed`, `ContractFailed` or `JobRejected`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// With `spec.tenants`: what the latest attempt did across the tenants (a running
    /// backfill's counts so far, `notRun` being the tenants not started yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<super::TenantsStatus>,
}

/// Rollout progress of one workload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    /// The workload kind.
    pub kind: String,
    /// The workload name.
    pub name: String,
    /// The version its pod template carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Whether its rollout of `appVersion` (or newer) is complete.
    pub complete: bool,
    /// Desired replicas.
    pub replicas: i32,
    /// Replicas running the latest pod template.
    pub updated_replicas: i32,
    /// Available replicas.
    pub available_replicas: i32,
    /// Pods of an older version still present, terminating ones included.
    pub old_pods: i32,
    /// Why the target is not complete yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The target does not exist (a named workload not found, or a selector that matches
    /// nothing): likely a typo, never complete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_found: bool,
}

/// Findings of the SQL linter that did not stop the migration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LintStatus {
    /// Lock-dangerous statements (refused instead when `spec.safety.strict`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Findings let through by an explicit `spec.safety.allow` rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
}
