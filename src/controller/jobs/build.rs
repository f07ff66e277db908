//! The executor Job of an attempt, built from the spec (pure): its labels, its environment
//! ([`ExecutorEnv`], the operator↔executor contract) and its pod.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec as K8sJobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    SeccompProfile, SecretKeySelector, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

use crate::api::{
    DatabaseMigration, DatabaseMigrationStatus, ANNOTATION_MIGRATION, LABEL_EXECUTOR,
    LABEL_MIGRATION, LABEL_MIGRATION_UID, LABEL_PHASE, LABEL_SQL_CHECKSUM,
};
use crate::planner::{job_name, migration_label, phase_code, validate, JobPhase};
use crate::protocol::env::{self as penv, ExecutorEnv, SecretKey, Value};

use super::config::ExecutorConfig;
use crate::controller::error::Error;

/// The name of the executor's container in its pod.
pub(super) const EXECUTOR_CONTAINER: &str = "executor";

/// The Job of `phase`'s attempt `attempt` (pure). `status` is the one the plan that asked
/// for the Job will write (it may already say when the rollout completed).
pub fn build_job(
    dbm: &DatabaseMigration,
    status: &DatabaseMigrationStatus,
    phase: JobPhase,
    attempt: u32,
    cfg: &ExecutorConfig,
) -> Result<Job, Error> {
    let name = dbm
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let namespace = dbm
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let uid = dbm.metadata.uid.clone().unwrap_or_default();
    let owner = dbm
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))?;
    let spec = &dbm.spec;
    let (sql, user_job) = phase_code(spec, phase);
    let mut labels: BTreeMap<String, String> = [
        (LABEL_EXECUTOR.to_string(), "true".to_string()),
        (LABEL_MIGRATION.to_string(), migration_label(&name)),
        (LABEL_MIGRATION_UID.to_string(), uid.clone()),
        (LABEL_PHASE.to_string(), phase.as_str().to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "phasegate".to_string(),
        ),
    ]
    .into();
    if let Some(sum) = sql_checksum(dbm, phase) {
        labels.insert(LABEL_SQL_CHECKSUM.to_string(), sum);
    }

    let ids = (namespace.as_str(), name.as_str(), uid.as_str());
    let env = env_vars(&executor_env(
        dbm,
        status,
        phase,
        attempt,
        ids,
        &cfg.grant_url,
    ));

    let (mut template, backoff_limit) = match (sql, user_job) {
        (Some(_), _) if phase == JobPhase::Backfill => {
            let mut t = executor_template(cfg, env);
            if let Some(c) = t.spec.as_mut().and_then(|ps| ps.containers.first_mut()) {
                c.args = Some(vec!["backfill".into()]);
            }
            (t, 0)
        }
        (Some(_), _) => (executor_template(cfg, env), 0),
        (None, Some(job)) => {
            let mut t = validate::pod_template(job).map_err(|reason| Error::Selector {
                target: format!("{phase} job"),
                reason,
            })?;
            crate::policy::enforce(&mut t, &cfg.job_policy);
            if let Some(ps) = t.spec.as_mut() {
                for c in &mut ps.containers {
                    c.env
                        .get_or_insert_with(Vec::new)
                        .extend(env.iter().cloned());
                }
            }
            (t, job.backoff_limit.unwrap_or(0))
        }
        (None, None) => return Err(Error::MissingField("sql or job")),
    };
    cfg.pod.apply(&mut template);
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    let pod_labels = meta.labels.get_or_insert_with(BTreeMap::new);
    // Phasegate's keys are the operator's alone, also where the policy is off.
    pod_labels.retain(|k, _| !k.starts_with(crate::policy::PHASEGATE_PREFIX));
    pod_labels.extend(labels.clone());
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION_MIGRATION.to_string(), name.clone());
    if let Some(ps) = template.spec.as_mut() {
        ps.restart_policy = Some("Never".into());
    }

    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name(&name, &uid, phase, attempt)),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: Some([(ANNOTATION_MIGRATION.to_string(), name.clone())].into()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(K8sJobSpec {
            backoff_limit: Some(backoff_limit),
            template,
            ..Default::default()
        }),
        status: None,
    })
}

/// The executor environment of `phase`'s attempt `attempt` (pure), for the migration
/// `(namespace, name, uid)`.
pub fn executor_env(
    dbm: &DatabaseMigration,
    status: &DatabaseMigrationStatus,
    phase: JobPhase,
    attempt: u32,
    (namespace, name, uid): (&str, &str, &str),
    grant_url: &str,
) -> ExecutorEnv {
    let spec = &dbm.spec;
    let url_ref = &spec.database.url_secret_ref;
    let some = |s: &str| Some(s.to_string());
    let mut env = ExecutorEnv {
        database_url: Some(SecretKey {
            name: url_ref.name.clone(),
            key: url_ref.key.clone(),
        }),
        phase: some(phase.as_str()),
        migration_namespace: some(namespace),
        migration_name: some(name),
        migration_uid: some(uid),
        app_version: some(&spec.app_version),
        attempt: Some(attempt),
        lock_timeout: some(&spec.safety.lock_timeout),
        statement_timeout: some(&spec.safety.statement_timeout),
        young_transaction: some(&spec.safety.young_transaction),
        lock_wait_attempt_after: some(&spec.safety.lock_wait_attempt_after),
        max_lock_retries: Some(spec.safety.max_lock_retries),
        sql: phase_code(spec, phase).0.map(str::to_string),
        tenants: spec.tenants.clone(),
        server_urls: tenant_servers_env(spec),
        ..ExecutorEnv::default()
    };
    match phase {
        JobPhase::Contract => {
            contract_env(&mut env, spec, status);
            if spec.tenants.is_some() {
                env.tenant_expand_sql = spec.expand.sql.clone();
            }
            // Phasegate's own contract executor never commits without the operator's grant.
            if env.sql.is_some() {
                env.grant_url = Some(grant_url.to_string());
                replicas_env(&mut env, spec);
                pooler_env(&mut env, &spec.database);
            }
        }
        JobPhase::Backfill => {
            env.sql = None;
            let apply = env.clone();
            env = env.without_apply_only();
            backfill_env(&mut env, spec, status);
            if spec.tenants.is_some() {
                tenant_expand_env(&mut env, &apply, spec);
            }
        }
        JobPhase::Expand => {}
    }
    env
}

/// Contract's database check and identity check settings.
fn contract_env(
    env: &mut ExecutorEnv,
    spec: &crate::api::DatabaseMigrationSpec,
    status: &DatabaseMigrationStatus,
) {
    env.database_check = Some(penv::bool_text(spec.safety.database_check));
    // Transactions older than this may still run the old code's queries.
    env.rollout_completed_at = status
        .rollout_completed_at
        .as_ref()
        .map(|at| at.0.to_string());
    // Only the migration's own applications are judged by version.
    let mut apps: Vec<String> = if spec.safety.application_names.is_empty() {
        status.targets.iter().map(|t| t.name.clone()).collect()
    } else {
        spec.safety.application_names.clone()
    };
    apps.sort();
    apps.dedup();
    env.application_names = Some(apps);
    let rule = crate::planner::version_rule(spec, status);
    if rule.order != crate::api::VersionOrder::SemVer {
        env.version_order = Some(format!("{:?}", rule.order));
    }
    env.previous_versions = rule.previous.clone();
    // Phasegate's own expand left a ledger row: contract must find it on this database.
    if spec.expand.sql.is_some() {
        env.require_expand = Some(penv::bool_text(true));
    }
}

/// The hot standbys of `spec.database.replicas`, for Phasegate's own contract executor only:
/// a user's Job runs no database check, and its container must not receive Secrets that the
/// admin's Job policy never allowed it (the policy vets only the template).
fn replicas_env(env: &mut ExecutorEnv, spec: &crate::api::DatabaseMigrationSpec) {
    let Some(r) = &spec.database.replicas else {
        return;
    };
    env.replica_urls = r
        .url_secret_refs
        .iter()
        .take(penv::REPLICA_URLS.len())
        .map(|k| SecretKey {
            name: k.name.clone(),
            key: k.key.clone(),
        })
        .collect();
    if r.discover {
        env.replica_discover = Some(penv::bool_text(true));
    }
}

/// The URL of each of `spec.tenants.servers`, in their order, from its Secret by the kubelet:
/// the operator never reads it. Every phase of a fleet migration runs on every server.
fn tenant_servers_env(spec: &crate::api::DatabaseMigrationSpec) -> Vec<SecretKey> {
    let servers = spec.tenants.as_ref().map_or(&[][..], |t| &t.servers[..]);
    servers
        .iter()
        .take(penv::SERVER_URLS.len())
        .map(|s| SecretKey {
            name: s.url_secret_ref.name.clone(),
            key: s.url_secret_ref.key.clone(),
        })
        .collect()
}

/// `spec.database.pooler`, for Phasegate's own contract executor only: a user Job runs no
/// database check, and the admin URL's Secret is not one its template may read.
fn pooler_env(env: &mut ExecutorEnv, database: &crate::api::DatabaseSpec) {
    let Some(pooler) = &database.pooler else {
        return;
    };
    env.pooler = Some(penv::bool_text(true));
    // From the Secret by the kubelet, like the database URL: the operator never reads it.
    env.pooler_admin_url = pooler.admin_url_secret_ref.as_ref().map(|r| SecretKey {
        name: r.name.clone(),
        key: r.key.clone(),
    });
}

/// The settings of `phasegate backfill`.
fn backfill_env(
    env: &mut ExecutorEnv,
    spec: &crate::api::DatabaseMigrationSpec,
    status: &DatabaseMigrationStatus,
) {
    let Some(b) = &spec.backfill else {
        return;
    };
    env.backfill_table = Some(b.table.clone());
    env.backfill_key = Some(b.key.clone());
    env.backfill_sql = Some(b.sql.clone());
    env.backfill_statement_timeout = Some(spec.safety.statement_timeout.clone());
    // The rollout epoch, exactly as status stores it: another epoch restarts the scan.
    env.backfill_epoch = Some(backfill_epoch(status));
    env.backfill_batch_size = b.batch_size;
    env.backfill_max_batch_size = b.max_batch_size;
    env.backfill_target_batch_duration = b.target_batch_duration.clone();
    env.backfill_pause = b.pause.clone();
    env.backfill_lock_timeout = b.lock_timeout.clone();
    env.backfill_max_replication_lag = b.max_replication_lag.clone();
}

/// A fleet backfill runs expand first on a tenant created since expand ran (as contract
/// does): expand's SQL, and the settings `phasegate apply` runs it with.
fn tenant_expand_env(
    env: &mut ExecutorEnv,
    apply: &ExecutorEnv,
    spec: &crate::api::DatabaseMigrationSpec,
) {
    env.tenant_expand_sql = spec.expand.sql.clone();
    env.app_version = apply.app_version.clone();
    env.lock_timeout = apply.lock_timeout.clone();
    env.statement_timeout = apply.statement_timeout.clone();
    env.young_transaction = apply.young_transaction.clone();
    env.lock_wait_attempt_after = apply.lock_wait_attempt_after.clone();
    env.max_lock_retries = apply.max_lock_retries;
}

/// The Job's `env` of an [`ExecutorEnv`]: the database URL from its Secret key.
fn env_vars(env: &ExecutorEnv) -> Vec<EnvVar> {
    env.to_env()
        .into_iter()
        .map(|v| match v.value {
            Value::Plain(value) => plain(v.name, &value),
            Value::Secret(k) => EnvVar {
                name: v.name.into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: k.name,
                        key: k.key,
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        })
        .collect()
}

/// The rollout epoch a backfill attempt runs in: when the rollout completed, as status stores
/// it, and how many regressions the backfill has seen (two completions within one second
/// still differ).
pub fn backfill_epoch(status: &DatabaseMigrationStatus) -> String {
    let at = status
        .rollout_completed_at
        .as_ref()
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let regressions = status.backfill.as_ref().map_or(0, |b| b.regressions);
    format!("{at}/{regressions}")
}

fn plain(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// Phasegate's own executor pod, under the restricted pod security standard.
fn executor_template(cfg: &ExecutorConfig, env: Vec<EnvVar>) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta::default()),
        spec: Some(PodSpec {
            automount_service_account_token: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            containers: vec![Container {
                name: EXECUTOR_CONTAINER.into(),
                image: Some(cfg.image.clone()),
                args: Some(vec!["apply".into()]),
                env: Some(env),
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    run_as_non_root: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

/// The label value identifying an inline-SQL phase's SQL (see
/// [`crate::protocol::checksum::label`]); `None` for a user Job.
pub fn sql_checksum(dbm: &DatabaseMigration, phase: JobPhase) -> Option<String> {
    Some(crate::protocol::checksum::label(
        phase_code(&dbm.spec, phase).0?,
    ))
}
