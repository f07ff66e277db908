use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DatabaseMigrationStatus;

/// A PostgreSQL schema change run with the expand/contract pattern: expand, wait until every
/// target workload runs `appVersion` or newer, then contract.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.backfill) == has(oldSelf.backfill)").message("backfill cannot be added or removed after creation; create a new DatabaseMigration"))]
#[x_kube(validation = Rule::new("has(self.tenants) == has(oldSelf.tenants)").message("tenants cannot be added or removed after creation; create a new DatabaseMigration"))]
#[kube(
    group = "phasegate.dev",
    version = "v1alpha1",
    kind = "DatabaseMigration",
    plural = "databasemigrations",
    shortname = "dbm",
    namespaced,
    status = "DatabaseMigrationStatus",
    category = "phasegate",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.appVersion"}"#,
    printcolumn = r#"{"name":"Targets","type":"string","jsonPath":".status.targetsReady","description":"Targets whose rollout is complete / all targets"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].message"}"#,
    validation = Rule::new("self.spec.expand == oldSelf.spec.expand || (has(oldSelf.status) && has(oldSelf.status.phase) && oldSelf.status.phase == 'Failed' && (!has(oldSelf.status.expand) || oldSelf.status.expand.attempts == 0))").message("expand is immutable once the migration may have run it; create a new DatabaseMigration (expand can be edited only while the migration is Failed before any expand attempt, e.g. refused by the linter)"),
    validation = Rule::new("((has(self.spec.contract.sql) ? self.spec.contract.sql : '') == (has(oldSelf.spec.contract.sql) ? oldSelf.spec.contract.sql : '') && has(self.spec.contract.job) == has(oldSelf.spec.contract.job) && (!has(self.spec.contract.job) || self.spec.contract.job == oldSelf.spec.contract.job)) || (has(oldSelf.status) && has(oldSelf.status.phase) && oldSelf.status.phase == 'Failed' && (!has(oldSelf.status.expand) || oldSelf.status.expand.attempts == 0))").message("contract.sql and contract.job are immutable once the migration may have run; approval and delay may change (sql and job can be edited only while the migration is Failed before any expand attempt, e.g. refused by the linter)"),
    doc = "A PostgreSQL schema change run with the expand/contract pattern: expand (additive SQL) runs at once; contract (the DROPs) runs only once every target workload has rolled out `appVersion` and no pod of an older version is left, and never commits while a gate is closed."
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseMigrationSpec {
    /// The application code version that needs this schema. Contract runs only once every
    /// target runs this version or a newer one. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("appVersion is immutable; create a new DatabaseMigration"))]
    #[schemars(length(min = 1, max = 128))]
    pub app_version: String,

    /// The database to migrate. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("database is immutable; create a new DatabaseMigration"))]
    pub database: DatabaseSpec,

    /// The additive, backward-compatible change, applied before the new code rolls out.
    /// Immutable, except while the migration is Failed before any expand attempt started
    /// (refused by the linter, invalid, refused by the Job policy): fix it in place then.
    pub expand: PhaseSpec,

    /// The change that removes what the old code needed, applied only after every target
    /// has rolled out `appVersion`.
    pub contract: ContractSpec,

    /// The workloads that must run `appVersion` before contract.
    pub rollout: RolloutSpec,

    /// Migrations (by name, in this namespace) whose expand must be applied before this
    /// one's expand starts, e.g. one that adds a column this one comments on. Without it,
    /// migrations on the same database start their expand in creation order (then by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub depends_on: Vec<String>,

    /// Lock and statement limits for the executor.
    #[serde(default)]
    pub safety: SafetySpec,

    /// Data to fill between expand and contract, in small throttled, resumable batches once
    /// the rollout is complete; contract waits until it is done. Cannot be added or removed
    /// after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<super::BackfillSpec>,

    /// Run every phase on each tenant of the server — its schemas or its databases that
    /// match a pattern — and of the more servers it lists, with canaries first, a concurrency
    /// limit per server and a failure budget (see docs/fleet.md). Cannot be added or removed
    /// after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<super::TenantsSpec>,
}

/// Where the database is.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// A key of a Secret in the migration's namespace holding a PostgreSQL connection URL
    /// (`postgres://user:password@host:5432/db?sslmode=require`). Only the executor Job
    /// reads it; the operator never does.
    pub url_secret_ref: SecretKeyRef,
    /// Hot standbys that contract's database check looks at too: old code reading from a
    /// standby holds contract like old code on the primary, and a standby that cannot be
    /// reached or read holds it as well. Checked by Phasegate's own executor (inline
    /// `contract.sql`); a contract `job` gets none of this. Standbys are named in status by
    /// `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<super::ReplicasSpec>,
    /// PgBouncer in front of the database (`pooler: {}` when the defaults fit). Behind
    /// transaction pooling an idle client holds no server connection, so `pg_stat_activity`
    /// cannot show an old application version's idle clients; with this set, contract's
    /// database check also reads `SHOW CLIENTS` on every address the pooler's host name resolves
    /// to (a headless Service lists every PgBouncer pod; a ClusterIP Service in front of several
    /// instances shows only one of them) and waits while a client of an older version is
    /// connected. A pooler whose clients cannot be read holds contract and fails it with the
    /// reason. For Phasegate's own contract executor (inline `sql`). Immutable with the rest of
    /// `database`; the Secrets' contents may change (each contract attempt reads them anew).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooler: Option<PoolerSpec>,
}

/// PgBouncer in front of the database (see `DatabaseSpec.pooler`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PoolerSpec {
    /// A key of a Secret in the migration's namespace holding a URL of PgBouncer's admin
    /// console: a user listed in PgBouncer's `stats_users` or `admin_users`, database
    /// `pgbouncer` (`postgresql://stats:password@shop-pooler:5432/pgbouncer`). Unset: the
    /// migration's own URL with the database name replaced by `pgbouncer`, which works where
    /// the migration's role is a stats user. Only the executor Job reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_url_secret_ref: Option<SecretKeyRef>,
}

/// A key in a Secret of the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What one phase runs: exactly one of `sql` or `job`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("has(self.sql) != has(self.job)").message("exactly one of sql or job must be set"))]
#[serde(rename_all = "camelCase")]
pub struct PhaseSpec {
    /// SQL run by Phasegate's executor in one transaction, with the lock safety of
    /// `spec.safety`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 131072))]
    #[x_kube(validation = Rule::new("size(bytes(self)) <= 131057").message("sql may be at most 131057 bytes: the executor gets it in one environment variable, which Linux limits to 128 KiB; split it across migrations, or run it from a job whose image holds the files"))]
    pub sql: Option<String>,
    /// A Job of your own (Flyway, Atlas, golang-migrate, psql, …) that runs this phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobSpec>,
}

/// A user-supplied executor.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// A pod template (as in a Job's `spec.template`). Phasegate sets `restartPolicy: Never`
    /// and adds `PHASEGATE_*` environment variables naming the migration and phase.
    #[schemars(schema_with = "crate::api::spec::preserve_unknown_object")]
    pub template: serde_json::Value,
    /// Retries of the Job's pod before the phase fails (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub backoff_limit: Option<i32>,
}

/// The contract phase and its gates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.sql) != has(self.job)").message("exactly one of contract.sql or contract.job must be set"))]
#[serde(rename_all = "camelCase")]
pub struct ContractSpec {
    /// SQL run by Phasegate's executor in one transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 131072))]
    #[x_kube(validation = Rule::new("size(bytes(self)) <= 131057").message("sql may be at most 131057 bytes: the executor gets it in one environment variable, which Linux limits to 128 KiB; split it across migrations, or run it from a job whose image holds the files"))]
    pub sql: Option<String>,
    /// A Job of your own that runs contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobSpec>,
    /// `Automatic` contracts as soon as the gates allow; `Manual` also waits for the
    /// annotation `phasegate.dev/approve: "true"`.
    #[serde(default)]
    pub approval: Approval,
    /// Soak time after the rollout completed and before contract, e.g. `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub delay: Option<String>,
}

/// How contract is approved.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Approval {
    /// Contract runs once the rollout is complete and the delay has passed.
    #[default]
    Automatic,
    /// Contract additionally waits for the `phasegate.dev/approve: "true"` annotation.
    Manual,
}

/// The workloads whose rollout gates contract.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Workloads in the migration's namespace, by name or label selector.
    #[schemars(length(min = 1, max = 32))]
    pub targets: Vec<TargetSpec>,
    /// Where a pod template's version is read from (default: the
    /// `app.kubernetes.io/version` label).
    #[serde(default)]
    pub version_from: VersionFrom,
    /// How a workload's version is compared with `appVersion`: `SemVer` (default: semantic
    /// order where both parse, equality otherwise), `Exact` (equality only), or `NotPrevious`
    /// (`appVersion` or any version the targets did not run when the migration was first
    /// observed — for git SHAs or CalVer; create the migration before rolling out).
    #[serde(default)]
    pub version_order: VersionOrder,
    /// How long to wait for the rollout before the migration fails, e.g. `1h`. Unset waits
    /// forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub timeout: Option<String>,
}

/// One target: a workload by name, or every workload of a kind matching a selector.
/// How versions are ordered (see `spec.rollout.versionOrder`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum VersionOrder {
    #[default]
    SemVer,
    Exact,
    NotPrevious,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.name) != has(self.selector)").message("a target needs exactly one of name or selector"))]
#[serde(rename_all = "camelCase")]
pub struct TargetSpec {
    /// The workload kind.
    pub kind: TargetKind,
    /// The workload's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A label selector; it must match at least one workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Workload kinds that can gate contract.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum TargetKind {
    /// An `apps/v1` Deployment.
    Deployment,
    /// An `apps/v1` StatefulSet.
    StatefulSet,
    /// An `apps/v1` DaemonSet.
    DaemonSet,
    /// An Argo Rollouts `argoproj.io/v1alpha1` Rollout (canary or blueGreen): complete once
    /// fully promoted (the stable ReplicaSet is the current one) and no old pod is left.
    Rollout,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Deployment => "Deployment",
            TargetKind::StatefulSet => "StatefulSet",
            TargetKind::DaemonSet => "DaemonSet",
            TargetKind::Rollout => "Rollout",
        }
    }
}

impl std::fmt::Display for TargetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a pod template's version is read from: exactly one of `label`, `annotation` or
/// `image`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.label) ? 1 : 0) + (has(self.annotation) ? 1 : 0) + (has(self.image) ? 1 : 0) == 1").message("versionFrom needs exactly one of label, annotation or image"))]
#[serde(rename_all = "camelCase")]
pub struct VersionFrom {
    /// A pod-template label key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// A pod-template annotation key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotation: Option<String>,
    /// The tag of a container's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageVersion>,
}

impl Default for VersionFrom {
    fn default() -> Self {
        Self {
            label: Some("app.kubernetes.io/version".into()),
            annotation: None,
            image: None,
        }
    }
}

/// Read the version from a container's image tag.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ImageVersion {
    /// The container's name.
    pub container: String,
}

/// Limits the executor applies to every phase.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SafetySpec {
    /// `lock_timeout` of each attempt, e.g. `2s`.
    #[serde(default = "default_lock_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub lock_timeout: String,
    /// `statement_timeout` of the phase, e.g. `10m`.
    #[serde(default = "default_statement_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub statement_timeout: String,
    /// Waiting outside the lock queue, transactions younger than this are ordinary short
    /// application work and are not waited for: the attempt's `lockTimeout` bounds what it
    /// costs them. At most `lockTimeout`; `0s` waits for every transaction. E.g. `30ms`.
    #[serde(default = "default_young_transaction")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub young_transaction: String,
    /// After waiting this long outside the lock queue with only transactions younger than
    /// `lockTimeout` in the way (a steady stream of short ones), attempt anyway: the attempt
    /// queues at most `lockTimeout`. Never before `lockTimeout` has passed; at most `10m`;
    /// `0s` never attempts past a blocker. E.g. `10s`.
    #[serde(default = "default_lock_wait_attempt_after")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub lock_wait_attempt_after: String,
    /// Attempts after a lock timeout before the phase fails.
    #[serde(default = "default_max_lock_retries")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_lock_retries: u32,
    /// Refuse lock-dangerous statements (non-concurrent index builds, constraints without
    /// NOT VALID, table rewrites, …) instead of only warning about them.
    #[serde(default)]
    pub strict: bool,
    /// Lint rules explicitly overridden for this migration, e.g. `[drop-column]`; each
    /// override is recorded in status and an Event. docs/lint-rules.md lists the rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allow: Vec<String>,
    /// Before contract, the executor checks the database itself: no session whose
    /// `application_name` (`<app>@<version>`) carries an older version, and no transaction
    /// that began before the rollout finished. It waits for them, then fails.
    #[serde(default = "default_true")]
    pub database_check: bool,
    /// The `<app>` names whose sessions the database check judges by version. Sessions of
    /// other applications sharing the database (e.g. `billing@1.3.0`) are not judged by
    /// version. Default: the names of the target workloads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub application_names: Vec<String>,
}

impl Default for SafetySpec {
    fn default() -> Self {
        Self {
            lock_timeout: default_lock_timeout(),
            statement_timeout: default_statement_timeout(),
            young_transaction: default_young_transaction(),
            lock_wait_attempt_after: default_lock_wait_attempt_after(),
            max_lock_retries: default_max_lock_retries(),
            strict: false,
            allow: Vec::new(),
            database_check: true,
            application_names: Vec::new(),
        }
    }
}

fn default_lock_timeout() -> String {
    "2s".into()
}
fn default_statement_timeout() -> String {
    "10m".into()
}
// The executor's own defaults (`phasegate apply`), so a Job of an older spec runs the same.
fn default_young_transaction() -> String {
    "30ms".into()
}
fn default_lock_wait_attempt_after() -> String {
    "10s".into()
}
fn default_max_lock_retries() -> u32 {
    10
}
fn default_true() -> bool {
    true
}

/// Schema of an embedded object Phasegate passes through (a pod template).
pub(crate) fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Labels of a workload or pod, as observed.
pub type Labels = BTreeMap<String, String>;
