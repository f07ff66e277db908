//! Checks the API server cannot do itself, turned into values the planner uses.

use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;

use crate::api::{DatabaseMigrationSpec, JobSpec, PhaseSpec};
use crate::lint::{self, LintPhase, Policy};

/// A spec the planner can act on.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidSpec {
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
    pub young_transaction: Duration,
    pub lock_wait_attempt_after: Duration,
    pub contract_delay: Option<Duration>,
    pub rollout_timeout: Option<Duration>,
    /// Lock-dangerous statements allowed through as warnings, e.g.
    /// `spec.expand.sql line 2: [create-index-non-concurrently] …`.
    pub lint_warnings: Vec<String>,
    /// Findings an explicit `spec.safety.allow` let through.
    pub lint_overrides: Vec<String>,
}

/// Why a spec cannot be acted on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The SQL linter refused a statement; nothing has run.
    #[error("{field} refused before anything ran: {detail}")]
    Refused { field: &'static str, detail: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// What a fleet migration (`spec.tenants`) cannot have: a user job (the executor runs each
/// tenant, which it does for inline SQL only), and a schema-qualified backfill table with
/// schema tenants (every tenant walks its own, unqualified).
fn check_tenants(spec: &DatabaseMigrationSpec) -> Result<(), SpecError> {
    let schemas = spec.tenants.as_ref().is_some_and(|t| t.schemas.is_some());
    if let Some(b) = spec
        .backfill
        .as_ref()
        .filter(|b| schemas && b.table.contains('.'))
    {
        return Err(invalid(
            "spec.backfill.table",
            format!(
                "{:?} is schema-qualified: with tenants.schemas each tenant's own table is \
                 walked, in its schema; name it unqualified",
                b.table
            ),
        ));
    }
    if let Some(t) = &spec.tenants {
        crate::api::wave_ends(&t.waves, 100).map_err(|why| invalid("spec.tenants.waves", why))?;
    }
    if spec.expand.job.is_some() || spec.contract.job.is_some() {
        return Err(invalid(
            "spec.tenants",
            "a user job cannot be run per tenant: use inline sql in expand and contract",
        ));
    }
    check_tenant_servers(spec)
}

/// `spec.tenants.servers`: what names one server only (`spec.database`'s) cannot go with them.
fn check_tenant_servers(spec: &DatabaseMigrationSpec) -> Result<(), SpecError> {
    let Some(t) = spec.tenants.as_ref().filter(|t| !t.servers.is_empty()) else {
        return Ok(());
    };
    t.check_servers()
        .map_err(|e| invalid("spec.tenants.servers", e))?;
    let db = &spec.database;
    if db
        .replicas
        .as_ref()
        .is_some_and(|r| !r.url_secret_refs.is_empty())
    {
        return Err(invalid(
            "spec.database.replicas.urlSecretRefs",
            "lists standbys of one server and cannot go with spec.tenants.servers; use \
             replicas.discover, which finds each server's own standbys",
        ));
    }
    if db
        .pooler
        .as_ref()
        .is_some_and(|p| p.admin_url_secret_ref.is_some())
    {
        return Err(invalid(
            "spec.database.pooler.adminUrlSecretRef",
            "names one pooler's admin console and cannot go with spec.tenants.servers; leave \
             it unset: each server's own URL with the database pgbouncer is used",
        ));
    }
    let mut refs = vec![&db.url_secret_ref];
    for s in &t.servers {
        if refs.contains(&&s.url_secret_ref) {
            return Err(invalid(
                "spec.tenants.servers",
                format!(
                    "server {} uses the Secret key {}/{} of spec.database or of another server: \
                     its tenants would run twice",
                    s.name, s.url_secret_ref.name, s.url_secret_ref.key
                ),
            ));
        }
        refs.push(&s.url_secret_ref);
    }
    Ok(())
}

/// Validate what the CRD schema cannot express. `expand_pending` is false once expand is
/// applied: what has run is not judged again (a later lint rule must not fail it).
pub fn validate(
    spec: &DatabaseMigrationSpec,
    expand_pending: bool,
) -> Result<ValidSpec, SpecError> {
    if spec.app_version.trim().is_empty() {
        return Err(invalid("spec.appVersion", "must not be empty"));
    }
    if expand_pending {
        check_phase("spec.expand", &spec.expand)?;
    }
    check_phase(
        "spec.contract",
        &PhaseSpec {
            sql: spec.contract.sql.clone(),
            job: spec.contract.job.clone(),
        },
    )?;
    if spec.rollout.targets.is_empty() {
        return Err(invalid("spec.rollout.targets", "needs at least one target"));
    }
    for t in &spec.rollout.targets {
        if t.name.is_some() == t.selector.is_some() {
            return Err(invalid(
                "spec.rollout.targets",
                "each target needs exactly one of name or selector",
            ));
        }
        if let Some(sel) = &t.selector {
            if sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty())
            {
                return Err(invalid(
                    "spec.rollout.targets",
                    "an empty selector would match everything; name the labels",
                ));
            }
        }
    }
    if let Some(b) = &spec.backfill {
        // Refused before expand rather than by the executor after the rollout.
        if b.key.contains(',') || b.key.contains('(') {
            return Err(invalid(
                "spec.backfill.key",
                "names several columns: composite keys are not supported; walk one unique \
                 column (e.g. a surrogate id)",
            ));
        }
    }
    if spec.tenants.is_some() {
        check_tenants(spec)?;
    }
    let vf = &spec.rollout.version_from;
    let sources = usize::from(vf.label.is_some())
        + usize::from(vf.annotation.is_some())
        + usize::from(vf.image.is_some());
    if sources != 1 {
        return Err(invalid(
            "spec.rollout.versionFrom",
            "needs exactly one of label, annotation or image",
        ));
    }
    for rule in &spec.safety.allow {
        if !lint::is_known_rule(rule) {
            return Err(invalid(
                "spec.safety.allow",
                format!("unknown lint rule {rule:?} (docs/lint-rules.md lists them)"),
            ));
        }
    }
    let policy = Policy {
        strict: spec.safety.strict,
        allow: spec.safety.allow.clone(),
    };
    let mut lint_warnings = Vec::new();
    let mut lint_overrides = Vec::new();
    for (field, phase, sql) in [
        (
            "spec.expand.sql",
            LintPhase::Expand,
            spec.expand.sql.as_deref().filter(|_| expand_pending),
        ),
        (
            "spec.contract.sql",
            LintPhase::Contract,
            spec.contract.sql.as_deref(),
        ),
    ] {
        let Some(sql) = sql else { continue };
        let findings = lint::lint(sql).map_err(|e| SpecError::Refused {
            field,
            detail: format!("[{}] {e}", e.rule),
        })?;
        let verdict = lint::judge(&findings, phase, &policy);
        if let Some(first) = verdict.refused.first() {
            let more = verdict.refused.len() - 1;
            let detail = if more > 0 {
                format!("{first} (and {more} more)")
            } else {
                first.to_string()
            };
            return Err(SpecError::Refused { field, detail });
        }
        lint_warnings.extend(verdict.warnings.iter().map(|f| format!("{field} {f}")));
        lint_overrides.extend(verdict.overridden.iter().map(|f| format!("{field} {f}")));
    }
    let lock_timeout = bounded(
        "spec.safety.lockTimeout",
        &spec.safety.lock_timeout,
        Duration::from_millis(1),
        MAX_LOCK_TIMEOUT,
    )?;
    Ok(ValidSpec {
        lint_warnings,
        lint_overrides,
        lock_timeout,
        // A transaction older than lockTimeout is not short: an attempt past it would only
        // queue for lockTimeout, stall the application that long, and time out.
        young_transaction: bounded(
            "spec.safety.youngTransaction",
            &spec.safety.young_transaction,
            Duration::ZERO,
            lock_timeout,
        )?,
        lock_wait_attempt_after: bounded(
            "spec.safety.lockWaitAttemptAfter",
            &spec.safety.lock_wait_attempt_after,
            Duration::ZERO,
            MAX_LOCK_WAIT_ATTEMPT_AFTER,
        )?,
        statement_timeout: bounded(
            "spec.safety.statementTimeout",
            &spec.safety.statement_timeout,
            Duration::from_secs(1),
            MAX_STATEMENT_TIMEOUT,
        )?,
        contract_delay: spec
            .contract
            .delay
            .as_deref()
            .map(|d| duration("spec.contract.delay", d))
            .transpose()?,
        rollout_timeout: spec
            .rollout
            .timeout
            .as_deref()
            .map(|d| duration("spec.rollout.timeout", d))
            .transpose()?,
    })
}

fn check_phase(field: &'static str, p: &PhaseSpec) -> Result<(), SpecError> {
    match (&p.sql, &p.job) {
        (Some(sql), None) if sql.trim().is_empty() => Err(invalid(field, "sql is empty")),
        (Some(sql), None) if sql.len() > MAX_INLINE_SQL_BYTES => Err(invalid(
            field,
            format!(
                "sql is {} bytes; inline SQL reaches the executor as one environment variable \
                 (PHASEGATE_SQL), which Linux limits to 128 KiB (MAX_ARG_STRLEN), so at most \
                 {MAX_INLINE_SQL_BYTES} bytes: split it across migrations, or run it from a \
                 `job` whose image holds the files",
                sql.len()
            ),
        )),
        (Some(_), None) => Ok(()),
        (None, Some(job)) => pod_template(job).map(|_| ()).map_err(|r| invalid(field, r)),
        _ => Err(invalid(field, "exactly one of sql or job must be set")),
    }
}

/// Linux refuses to exec a process with one `NAME=value` environment string longer than
/// MAX_ARG_STRLEN (32 pages: 131072 bytes, the NUL included), so the pod could never start.
pub const MAX_INLINE_SQL_BYTES: usize = 131_072 - "PHASEGATE_SQL=".len() - 1;

/// A user Job's pod template, as JSON, may be at most this large. The CRD cannot bound it
/// (CEL does not see a free-form object's fields), and the operator caches every
/// migration: without a bound, a few hundred large templates exhaust its memory (issue 23).
/// Real templates are a few KiB.
pub const MAX_TEMPLATE_BYTES: usize = 32 * 1024;

/// The key of what the operator's cache keeps of a template over [`MAX_TEMPLATE_BYTES`]:
/// only its size (`controller::cache::prune_migration`).
pub const PRUNED_TEMPLATE_KEY: &str = "phasegate.dev/template-bytes";

/// The size of a template as JSON (or the size the cache recorded when it dropped it).
pub fn template_bytes(template: &serde_json::Value) -> usize {
    match template.get(PRUNED_TEMPLATE_KEY).and_then(|v| v.as_u64()) {
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => serde_json::to_vec(template).map_or(usize::MAX, |v| v.len()),
    }
}

/// The pod template of a user Job, checked.
pub fn pod_template(job: &JobSpec) -> Result<PodTemplateSpec, String> {
    let bytes = template_bytes(&job.template);
    if bytes > MAX_TEMPLATE_BYTES {
        return Err(format!(
            "job.template is {bytes} bytes of JSON, more than the {MAX_TEMPLATE_BYTES} Phasegate \
             keeps per template; move scripts and data into the image or a ConfigMap"
        ));
    }
    let t: PodTemplateSpec = serde_json::from_value(job.template.clone())
        .map_err(|e| format!("job.template is not a pod template: {e}"))?;
    let containers = t.spec.as_ref().map(|s| s.containers.len()).unwrap_or(0);
    if containers == 0 {
        return Err("job.template.spec.containers must name at least one container".into());
    }
    Ok(t)
}

/// Longer lock waits would queue application queries behind the DDL for that long.
pub const MAX_LOCK_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// The executor gives up waiting outside the lock queue after 10 minutes
/// (`PHASEGATE_LOCK_WAIT_TIMEOUT`); a later attempt would never come (`0s` says "never").
pub const MAX_LOCK_WAIT_ATTEMPT_AFTER: Duration = Duration::from_secs(10 * 60);
/// PostgreSQL's own limit for `statement_timeout` is about 24.8 days; a day is plenty.
pub const MAX_STATEMENT_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// A duration within `[min, max]`: `0s` would switch PostgreSQL's limit off silently, and a
/// value beyond PostgreSQL's range would only fail once the executor runs.
fn bounded(
    field: &'static str,
    s: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, SpecError> {
    let d = duration(field, s)?;
    if d < min || d > max {
        return Err(invalid(
            field,
            format!(
                "{s:?} is out of range: use between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

fn duration(field: &'static str, s: &str) -> Result<Duration, SpecError> {
    humantime::parse_duration(s)
        .map_err(|e| invalid(field, format!("{s:?} is not a duration: {e}")))
}
