//! `spec.tenants` and `status.<phase>.tenants`: one migration run on every tenant of one
//! server — the schemas, or the databases, whose names match a pattern (see docs/fleet.md).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Every tenant of the server gets the migration's phases, each with every guarantee of a
/// single-database migration (its own ledger row, lock-aware waiting, the database check and
/// the commit grant). One executor Job per phase runs them all.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new("has(self.schemas) != has(self.databases)").message("tenants: set exactly one of schemas or databases"))]
#[x_kube(validation = Rule::new("(has(self.schemas) ? self.schemas : '') == (has(oldSelf.schemas) ? oldSelf.schemas : '') && (has(self.databases) ? self.databases : '') == (has(oldSelf.databases) ? oldSelf.databases : '')").message("tenants.schemas and tenants.databases are immutable; canary, maxConcurrent and failureBudget may change (they apply from the next attempt)"))]
#[serde(rename_all = "camelCase")]
pub struct TenantsSpec {
    /// Tenants are the schemas of the database whose names match this SQL `LIKE` pattern,
    /// e.g. `tenant\_%`. The phase's SQL runs with the tenant schema as its `search_path`:
    /// write it unqualified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 127))]
    pub schemas: Option<String>,
    /// Tenants are the databases of the server whose names match this SQL `LIKE` pattern,
    /// e.g. `shop\_%` (templates and databases that refuse connections are skipped). Each
    /// keeps its own ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 127))]
    pub databases: Option<String>,
    /// Tenants that run first, one at a time; a failure among them halts every other tenant.
    #[serde(default, skip_serializing_if = "Canary::is_empty")]
    pub canary: Canary,
    /// Tenants run at once after the canaries (each holds one connection). Default 4.
    #[serde(default = "default_max_concurrent")]
    #[schemars(range(min = 1, max = 64))]
    pub max_concurrent: u32,
    /// Failed tenants tolerated before no further tenant starts (the halt). Default 0: the
    /// first failure halts.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100000))]
    pub failure_budget: u32,
}

fn default_max_concurrent() -> u32 {
    4
}

/// The canary tenants: the named ones, then the first `count` others by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Canary {
    /// Tenants by name, e.g. an internal demo tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub names: Vec<String>,
    /// More canaries: the first tenants by name that are not named above.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub count: u32,
}

impl Canary {
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.count == 0
    }
}

/// What one phase's executor did across the tenants (bounded: counts and the first failures).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantsStatus {
    /// Tenants found when the phase ran.
    pub total: u32,
    /// Tenants where the phase is applied (now or before).
    pub applied: u32,
    /// Tenants where it failed.
    pub failed: u32,
    /// Tenants not run: halted by a failed canary or the failure budget, or stopped.
    pub not_run: u32,
    /// Tenants found by contract without expand (created since): expand ran there first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expanded_late: u32,
    /// Why the run halted, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
    /// The first failed tenants and why (at most 10; the ledger has every one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<TenantFailure>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One tenant whose phase failed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantFailure {
    pub tenant: String,
    pub error: String,
}

/// Failures kept in status and in the executor's report.
pub const MAX_TENANT_FAILURES: usize = 10;
