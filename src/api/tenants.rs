//! `spec.tenants` and `status.<phase>.tenants`: one migration run on every tenant of a server,
//! or of several (shards) — the schemas, or the databases, whose names match a pattern (see
//! docs/fleet.md).

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Every tenant of the server (and of each of `servers`) gets the migration's phases, each with every guarantee of a
/// single-database migration (its own ledger row, lock-aware waiting, the database check and
/// the commit grant). One executor Job per phase runs them all.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new("has(self.schemas) != has(self.databases)").message("tenants: set exactly one of schemas or databases"))]
#[x_kube(validation = Rule::new("(has(self.schemas) ? self.schemas : '') == (has(oldSelf.schemas) ? oldSelf.schemas : '') && (has(self.databases) ? self.databases : '') == (has(oldSelf.databases) ? oldSelf.databases : '')").message("tenants.schemas and tenants.databases are immutable; servers, canary, waves, maxConcurrent and failureBudget may change (they apply from the next attempt)"))]
#[x_kube(validation = Rule::new("!has(self.waves) || self.waves.all(w, type(w) == int ? w > 0 : size(string(w)) <= 4 && string(w).endsWith('%'))").message("tenants.waves: each entry is a count above 0 (10) or a share from 1% to 100% (\"25%\")"))]
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
    /// More servers (shards) whose tenants get the migration too, besides the server of
    /// `spec.database`, with the same pattern on each. Their tenants are named
    /// `<server>/<tenant>` in status, logs and `canary.names` (those of `spec.database`'s
    /// server keep their plain names). Servers may be added or removed between attempts; a
    /// server added after expand gets expand on each of its tenants before contract. Removing
    /// one leaves its tenants as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.name == s.name))").message("tenants.servers: each name must be unique"))]
    pub servers: Vec<TenantServer>,
    /// Tenants that run first, one at a time; a failure among them halts every other tenant.
    #[serde(default, skip_serializing_if = "Canary::is_empty")]
    pub canary: Canary,
    /// Waves after the canaries: each entry is where a wave ends, as a count (`10`) or a share
    /// (`"25%"`, rounded up) of the tenants after the canaries; a last wave takes the rest.
    /// A wave's tenants all finish before the next wave starts, so the failure budget is
    /// judged on whole waves. Empty: one wave.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub waves: Vec<IntOrString>,
    /// Tenants run at once on each server after the canaries (each holds one connection).
    /// Default 4.
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

/// Most servers `tenants.servers` may list (each is one environment variable of the Job).
pub const MAX_TENANT_SERVERS: usize = 32;

/// One more server of a fleet migration (a shard).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TenantServer {
    /// The server's name in status, logs and canary names (`<name>/<tenant>`): lower-case
    /// letters, digits and `-`, like a DNS label.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// A key of a Secret in the migration's namespace holding the server's PostgreSQL URL
    /// (same form as `spec.database.urlSecretRef`; for schema tenants, the database holding
    /// them). Only the executor Job reads it; the operator never does.
    pub url_secret_ref: super::SecretKeyRef,
}

/// The canary tenants: the named ones, then the first `count` others by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Canary {
    /// Tenants by name, e.g. an internal demo tenant; `<server>/<tenant>` for a tenant of one of
    /// `servers`.
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
    /// Tenants found when the phase ran (on every server).
    pub total: u32,
    /// Tenants where the phase is applied (now or before); for the backfill, tenants whose
    /// backfill is done in this rollout epoch.
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
    /// The first failed tenants and why (at most 10; the ledger has every one, and the
    /// executor's log names every one with its error).
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
    /// Its name; `<server>/<tenant>` for a tenant of one of `spec.tenants.servers`.
    pub tenant: String,
    pub error: String,
}

/// Where each wave ends among `n` tenants: counts or shares (rounded up), kept increasing and
/// within `n`; the last wave always ends at `n`. Err: an entry that is neither.
pub fn wave_ends(waves: &[IntOrString], n: usize) -> Result<Vec<usize>, String> {
    let mut ends = Vec::new();
    for w in waves {
        let end = match w {
            IntOrString::Int(i) if *i > 0 => *i as usize,
            IntOrString::String(s) => match s.strip_suffix('%').map(str::parse::<u32>) {
                Some(Ok(p)) if (1..=100).contains(&p) => (n * p as usize).div_ceil(100),
                _ => return Err(format!("tenants.waves: {s:?} is not a share like \"25%\"")),
            },
            IntOrString::Int(i) => {
                return Err(format!("tenants.waves: {i} is not a positive count"))
            }
        };
        let end = end.min(n);
        if ends.last().is_none_or(|last| end > *last) {
            ends.push(end);
        }
    }
    if ends.last() != Some(&n) {
        ends.push(n);
    }
    Ok(ends)
}

/// Failures kept in status and in the executor's report.
pub const MAX_TENANT_FAILURES: usize = 10;

impl TenantsSpec {
    /// What the CRD's schema and rules say of `servers`, for the planner and the executor
    /// (a spec from an older CRD, or `--tenants` by hand): at most 32, names DNS-label-like
    /// and unique, so that `<server>/<tenant>` names one tenant.
    pub fn check_servers(&self) -> Result<(), String> {
        if self.servers.len() > MAX_TENANT_SERVERS {
            return Err(format!(
                "lists {} servers; at most {MAX_TENANT_SERVERS}",
                self.servers.len()
            ));
        }
        for (i, s) in self.servers.iter().enumerate() {
            if !dns_label(&s.name) {
                return Err(format!(
                    "server name {:?} is not lower-case letters, digits and '-' (at most 63, \
                     starting and ending with a letter or digit)",
                    s.name
                ));
            }
            if self.servers[..i].iter().any(|o| o.name == s.name) {
                return Err(format!("server name {:?} is listed twice", s.name));
            }
        }
        Ok(())
    }
}

fn dns_label(name: &str) -> bool {
    let b = name.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(|c| edge(c) || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_servers(names: &[&str]) -> TenantsSpec {
        TenantsSpec {
            servers: names
                .iter()
                .map(|n| TenantServer {
                    name: n.to_string(),
                    url_secret_ref: super::super::SecretKeyRef {
                        name: format!("db-{n}"),
                        key: "url".into(),
                    },
                })
                .collect(),
            ..TenantsSpec::default()
        }
    }

    #[test]
    fn server_names_are_unique_dns_labels() {
        assert_eq!(with_servers(&["eu-2", "us-1", "3"]).check_servers(), Ok(()));
        for bad in [
            &["eu-2", "eu-2"][..],
            &[""],
            &["EU"],
            &["eu/2"],
            &["-eu"],
            &["eu-"],
        ] {
            assert!(with_servers(bad).check_servers().is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..33).map(|i| format!("s{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(with_servers(&many).check_servers().is_err());
    }

    #[test]
    fn waves_end_at_counts_and_shares() {
        let int = IntOrString::Int;
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(wave_ends(&[int(1), pct("50%")], 11), Ok(vec![1, 6, 11]));
        // Not increasing, or past the end: folded into the waves around them.
        assert_eq!(wave_ends(&[int(5), int(3), int(50)], 10), Ok(vec![5, 10]));
        assert_eq!(wave_ends(&[pct("100%")], 4), Ok(vec![4]));
        assert_eq!(wave_ends(&[], 0), Ok(vec![0]));
        assert!(wave_ends(&[int(0)], 4).is_err());
        assert!(wave_ends(&[pct("ten")], 4).is_err());
        assert!(wave_ends(&[pct("0%")], 4).is_err());
    }
}
