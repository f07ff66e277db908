//! `spec.backfill` and `status.backfill`: filling data between expand and contract in small,
//! throttled, resumable batches (see docs/backfill.md).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::PhaseStatus;

/// Annotation pausing a backfill: `"true"` stops its Job; removing it (or any other value)
/// starts a new attempt that resumes from the checkpoint.
pub const ANNOTATION_BACKFILL_PAUSED: &str = "phasegate.dev/backfill-paused";

/// A backfill run by Phasegate's executor once the rollout is complete (no old code left to
/// write rows without the new column) and before the soak, approval and contract. The batch
/// SQL runs once per key range in its own short transaction, with the checkpoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.table == oldSelf.table && self.key == oldSelf.key && self.sql == oldSelf.sql").message("backfill.table, backfill.key and backfill.sql are immutable; the tuning fields may change (they apply from the next attempt)"))]
#[serde(rename_all = "camelCase")]
pub struct BackfillSpec {
    /// The table to walk, e.g. `users` or `app.users` (names as stored: lower case unless
    /// created quoted).
    #[schemars(length(min = 1, max = 127), regex(pattern = r#"^[^".]+(\.[^".]+)?$"#))]
    pub table: String,
    /// A unique column of the table, walked in order, usually the primary key: smallint,
    /// integer or bigint, or text, varchar, char, citext, bytea, uuid, date, timestamp,
    /// timestamptz, numeric, real or double precision (or a domain over one).
    /// One column: composite keys are not supported.
    #[schemars(length(min = 1, max = 63), regex(pattern = r#"^[^".]+$"#))]
    pub key: String,
    /// The SQL of one batch: `$1` is the exclusive lower and `$2` the inclusive upper bound
    /// of the batch's key range (bigint for an integer key, the key's type otherwise), e.g.
    /// `UPDATE users SET email_address = email WHERE id > $1 AND id <= $2 AND email_address IS
    /// NULL`. Make it idempotent (the `IS NULL`): after a rollback of the app the scan starts
    /// over.
    #[x_kube(validation = Rule::new("self.contains('$1') && self.contains('$2')").message("backfill.sql must use $1 (exclusive lower bound) and $2 (inclusive upper bound) of the key range"))]
    #[schemars(length(min = 1, max = 65536))]
    pub sql: String,
    /// Keys in the first batch (default 1000); later batches adapt toward
    /// `targetBatchDuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub batch_size: Option<i64>,
    /// The largest batch the adaptation may reach (default 50000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_batch_size: Option<i64>,
    /// How long one batch's transaction should take (default `200ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub target_batch_duration: Option<String>,
    /// Sleep between batches (default `50ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub pause: Option<String>,
    /// `lock_timeout` of each batch (default `1s`); a batch that times out is rolled back
    /// and retried smaller after a backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub lock_timeout: Option<String>,
    /// Throttle while a standby's lag in `pg_stat_replication` exceeds this (default `10s`;
    /// `0s` turns it off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub max_replication_lag: Option<String>,
}

/// The backfill's executions and progress.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackfillStatus {
    /// Attempts, Job, times, success and message, as for expand and contract.
    #[serde(flatten)]
    pub run: PhaseStatus,
    /// The rollout epoch (`rolloutCompletedAt`) the latest attempt ran in. The backfill
    /// counts as done only in the epoch it finished in: after a rollback of the app and a new
    /// rollout, it runs again from the first key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Time>,
    /// Regressions of the rollout seen after the backfill had started (each one makes the
    /// next run scan from the first key; part of the epoch the executor is given).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub regressions: u32,
    /// Progress of the running attempt, as its executor last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<BackfillProgress>,
}

/// Progress of a running backfill: printed by the executor, copied into status by the operator.
/// With `spec.tenants`, summed over the tenants: rows, batches and estimates of the tenants
/// walked so far, and the share of the whole work done (tenants done, plus the running ones'
/// share of their key ranges).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackfillProgress {
    /// Rows the batch SQL changed in this rollout epoch.
    pub rows_done: i64,
    /// The table's estimated row count (`pg_class.reltuples`).
    pub estimated_rows: i64,
    /// Share of the key range walked, in per mille (0–1000).
    pub key_range_done_permille: i64,
    /// Batches committed in this rollout epoch.
    pub batches: i64,
    /// The current batch size.
    pub batch_size: i64,
    /// Rows per second over the current attempt.
    pub rows_per_second: i64,
    /// Estimated seconds left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<i64>,
    /// Why the backfill slows down now, if it does (replication lag, lock waits, lock
    /// timeouts, slow batches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttled: Option<String>,
    /// With `spec.tenants`, in the executor's progress line only: the tenants' counts so far
    /// (`notRun`: not started yet). The operator keeps them in `status.backfill.tenants`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub tenants: Option<super::TenantsStatus>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
