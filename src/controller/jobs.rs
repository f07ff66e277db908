//! Executor Jobs: built from the spec (pure), created (their UID recorded), and read back.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::{Job, JobSpec as K8sJobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, Pod, PodSecurityContext, PodSpec,
    PodTemplateSpec, ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext,
    Toleration,
};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{ListParams, PostParams};
use kube::{Api, Resource, ResourceExt};

use crate::api::{
    DatabaseMigration, DatabaseMigrationStatus, ANNOTATION_MIGRATION, LABEL_EXECUTOR,
    LABEL_MIGRATION, LABEL_MIGRATION_UID, LABEL_PHASE, LABEL_SQL_CHECKSUM,
};
use crate::executor::report::Report;
use crate::planner::{job_name, migration_label, phase_code, validate, Holdup, JobPhase, JobState};
use crate::protocol::env as penv;

use super::cache::Caches;
use super::error::{Error, KubeContext};
use super::views::{ContainerTerminatedView, ExecutorPodView, JobView};

/// How executor Jobs are run.
#[derive(Clone, Debug, Default)]
pub struct ExecutorConfig {
    /// Image holding the `phasegate` binary, for inline `sql`.
    pub image: String,
    /// What user-supplied `job` templates may ask for (set by the cluster admin).
    pub job_policy: crate::policy::JobPolicy,
    /// Pod settings the cluster admin gives every executor Job.
    pub pod: ExecutorPod,
    /// Where contract executors ask the operator for their commit grant.
    pub grant_url: String,
}

/// Pod settings the cluster admin gives every executor Job, Phasegate's own (inline `sql`)
/// and those built from a migration's `job` template alike: where they may run and what they
/// may use (chart value `executor.pod`, passed as JSON in `PHASEGATE_EXECUTOR_POD`).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ExecutorPod {
    /// Merged into the pod's nodeSelector; the admin's keys win over a template's.
    pub node_selector: BTreeMap<String, String>,
    /// Added to the pod's tolerations.
    pub tolerations: Vec<Toleration>,
    /// Pod annotations (e.g. `sidecar.istio.io/inject: "false"`); the admin's keys win.
    pub annotations: BTreeMap<String, String>,
    /// The pod's priorityClassName (empty: none set; a template's own is replaced).
    pub priority_class_name: String,
    /// Resources of Phasegate's executor container, and of every container of a `job`
    /// template that sets none itself.
    pub resources: Option<ResourceRequirements>,
}

impl ExecutorPod {
    /// Parse the JSON (or YAML) the chart renders; empty text is "no settings".
    pub fn from_json(text: &str) -> Result<ExecutorPod, String> {
        if text.trim().is_empty() {
            return Ok(ExecutorPod::default());
        }
        let mut pod: ExecutorPod = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        // The chart's default `resources: {}` sets nothing.
        if pod.resources == Some(ResourceRequirements::default()) {
            pod.resources = None;
        }
        for (k, v) in pod.node_selector.iter().chain(&pod.annotations) {
            if k.is_empty() {
                return Err(format!("an empty key (value {v:?})"));
            }
        }
        Ok(pod)
    }

    /// Apply the settings to an executor pod template.
    fn apply(&self, template: &mut PodTemplateSpec) {
        if !self.annotations.is_empty() {
            template
                .metadata
                .get_or_insert_with(ObjectMeta::default)
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .extend(self.annotations.clone());
        }
        let Some(ps) = template.spec.as_mut() else {
            return;
        };
        if !self.node_selector.is_empty() {
            ps.node_selector
                .get_or_insert_with(BTreeMap::new)
                .extend(self.node_selector.clone());
        }
        if !self.tolerations.is_empty() {
            let tolerations = ps.tolerations.get_or_insert_with(Vec::new);
            for t in &self.tolerations {
                if !tolerations.contains(t) {
                    tolerations.push(t.clone());
                }
            }
        }
        if !self.priority_class_name.is_empty() {
            ps.priority_class_name = Some(self.priority_class_name.clone());
            // The admission plugin fills the priority from the class; a stale one is refused.
            ps.priority = None;
        }
        if let Some(resources) = &self.resources {
            for c in &mut ps.containers {
                if c.resources.is_none() {
                    c.resources = Some(resources.clone());
                }
            }
        }
    }
}

/// Variables of `phasegate apply` (and of users' own Jobs) that `phasegate backfill` does not
/// read.
const APPLY_ONLY: &[&str] = &[
    penv::PHASE,
    penv::APP_VERSION,
    crate::protocol::grant::ENV_ATTEMPT,
    penv::LOCK_TIMEOUT,
    penv::STATEMENT_TIMEOUT,
    penv::YOUNG_TRANSACTION,
    penv::LOCK_WAIT_ATTEMPT_AFTER,
    penv::MAX_LOCK_RETRIES,
];

/// The name of the executor's container in its pod.
const EXECUTOR_CONTAINER: &str = "executor";

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

    let url_ref = &spec.database.url_secret_ref;
    let mut env = vec![
        EnvVar {
            name: penv::DATABASE_URL.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: url_ref.name.clone(),
                    key: url_ref.key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        plain(penv::PHASE, phase.as_str()),
        plain(penv::MIGRATION_NAMESPACE, &namespace),
        plain(penv::MIGRATION_NAME, &name),
        plain(penv::MIGRATION_UID, &uid),
        plain(penv::APP_VERSION, &spec.app_version),
        plain(crate::protocol::grant::ENV_ATTEMPT, &attempt.to_string()),
        plain(penv::LOCK_TIMEOUT, &spec.safety.lock_timeout),
        plain(penv::STATEMENT_TIMEOUT, &spec.safety.statement_timeout),
        plain(penv::YOUNG_TRANSACTION, &spec.safety.young_transaction),
        plain(
            penv::LOCK_WAIT_ATTEMPT_AFTER,
            &spec.safety.lock_wait_attempt_after,
        ),
        plain(
            penv::MAX_LOCK_RETRIES,
            &spec.safety.max_lock_retries.to_string(),
        ),
    ];
    if phase == JobPhase::Contract {
        env.push(plain(
            penv::DATABASE_CHECK,
            if spec.safety.database_check {
                "true"
            } else {
                "false"
            },
        ));
        // Transactions older than this may still run the old code's queries.
        if let Some(at) = status.rollout_completed_at.as_ref() {
            env.push(plain(penv::ROLLOUT_COMPLETED_AT, &at.0.to_string()));
        }
        // Only the migration's own applications are judged by version.
        let mut apps: Vec<String> = if spec.safety.application_names.is_empty() {
            status.targets.iter().map(|t| t.name.clone()).collect()
        } else {
            spec.safety.application_names.clone()
        };
        apps.sort();
        apps.dedup();
        env.push(plain(penv::APPLICATION_NAMES, &apps.join(",")));
        let rule = crate::planner::version_rule(spec, status);
        if rule.order != crate::api::VersionOrder::SemVer {
            env.push(plain(penv::VERSION_ORDER, &format!("{:?}", rule.order)));
        }
        if let Some(previous) = &rule.previous {
            env.push(plain(penv::PREVIOUS_VERSIONS, &previous.join(",")));
        }
        // Phasegate's own expand left a ledger row: contract must find it on this database.
        if spec.expand.sql.is_some() {
            env.push(plain(penv::REQUIRE_EXPAND, "true"));
        }
    }
    if phase == JobPhase::Backfill {
        // `phasegate backfill` has settings of its own (tests/protocol.rs checks that every
        // variable set here is one the executor reads).
        env.retain(|e| !APPLY_ONLY.contains(&e.name.as_str()));
        env.extend(backfill_env(spec, status));
    }

    let (mut template, backoff_limit) = match (sql, user_job) {
        (Some(_), _) if phase == JobPhase::Backfill => {
            let mut t = executor_template(cfg, env);
            if let Some(c) = t.spec.as_mut().and_then(|ps| ps.containers.first_mut()) {
                c.args = Some(vec!["backfill".into()]);
            }
            (t, 0)
        }
        (Some(sql), _) => {
            env.push(plain(penv::SQL, sql));
            // Phasegate's own contract executor never commits without the operator's grant.
            if phase == JobPhase::Contract {
                env.push(plain(crate::protocol::grant::ENV_URL, &cfg.grant_url));
            }
            (executor_template(cfg, env), 0)
        }
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

/// The settings of `phasegate backfill` (see [`crate::executor::backfill::BackfillArgs`]).
fn backfill_env(
    spec: &crate::api::DatabaseMigrationSpec,
    status: &DatabaseMigrationStatus,
) -> Vec<EnvVar> {
    let Some(b) = &spec.backfill else {
        return Vec::new();
    };
    let mut env = vec![
        plain(penv::BACKFILL_TABLE, &b.table),
        plain(penv::BACKFILL_KEY, &b.key),
        plain(penv::BACKFILL_SQL, &b.sql),
        plain(
            penv::BACKFILL_STATEMENT_TIMEOUT,
            &spec.safety.statement_timeout,
        ),
        // The rollout epoch, exactly as status stores it: another epoch restarts the scan.
        plain(penv::BACKFILL_EPOCH, &backfill_epoch(status)),
    ];
    let opt = [
        (
            penv::BACKFILL_BATCH_SIZE,
            b.batch_size.map(|n| n.to_string()),
        ),
        (
            penv::BACKFILL_MAX_BATCH_SIZE,
            b.max_batch_size.map(|n| n.to_string()),
        ),
        (
            penv::BACKFILL_TARGET_BATCH_DURATION,
            b.target_batch_duration.clone(),
        ),
        (penv::BACKFILL_PAUSE, b.pause.clone()),
        (penv::BACKFILL_LOCK_TIMEOUT, b.lock_timeout.clone()),
        (
            penv::BACKFILL_MAX_REPLICATION_LAG,
            b.max_replication_lag.clone(),
        ),
    ];
    env.extend(opt.into_iter().filter_map(|(k, v)| Some(plain(k, &v?))));
    env
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

/// The label value identifying an inline-SQL phase's SQL (the first 16 hex digits of the
/// executor's checksum); `None` for a user Job.
pub fn sql_checksum(dbm: &DatabaseMigration, phase: JobPhase) -> Option<String> {
    let sql = phase_code(&dbm.spec, phase).0?;
    Some(crate::executor::checksum(sql)[..16].to_string())
}

/// Whether a Job was created for this migration's phase: the migration controls it (Phasegate
/// creates every Job with that owner) and it carries the migration's UID (and, for inline SQL,
/// the SQL's checksum). Labels alone prove nothing: whoever may create Jobs can copy them onto
/// a no-op Job, and an adopted one would pass for the phase (issue 23).
fn created_for(job: &ObjectMeta, uid: &str, checksum: Option<&str>) -> bool {
    let label = |k: &str| job.labels.as_ref()?.get(k).map(String::as_str);
    let labelled = label(LABEL_MIGRATION_UID) == Some(uid)
        && checksum.is_none_or(|c| label(LABEL_SQL_CHECKSUM) == Some(c));
    labelled && claims(job, uid)
}

/// Whether a Job names this migration (UID `uid`) as its controller: what it claims, not
/// proof that the operator created it (only the UID recorded in status is).
fn claims(job: &ObjectMeta, uid: &str) -> bool {
    !uid.is_empty()
        && job
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// A Job this migration owns (controller reference to its UID) that has not finished and is
/// not being deleted: an attempt that may still commit.
pub fn ours_and_running(job: &JobView, uid: &str) -> bool {
    let owned = job
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid);
    let finished = job
        .status
        .conditions
        .iter()
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
    !uid.is_empty() && owned && !finished && job.metadata.deletion_timestamp.is_none()
}

/// The Jobs this process created whose UID status may not record yet (its write failed or is
/// still to come): the one proof of authorship besides status. One entry per Job name, taken
/// out once status records it; lost with the process (a new leader then deletes such a Job and
/// creates it again).
#[derive(Default)]
pub struct CreatedJobs(std::sync::Mutex<std::collections::HashMap<(String, String), String>>);

impl CreatedJobs {
    fn remember(&self, ns: &str, name: &str, uid: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.insert((ns.to_string(), name.to_string()), uid.to_string());
        }
    }

    fn created(&self, ns: &str, name: &str, uid: &str) -> bool {
        self.0.lock().is_ok_and(|m| {
            m.get(&(ns.to_string(), name.to_string()))
                .is_some_and(|u| u == uid)
        })
    }

    /// Status now records `name`'s UID: nothing left to remember.
    pub fn recorded(&self, ns: &str, name: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&(ns.to_string(), name.to_string()));
        }
    }
}

/// Create the Job; its UID, from the API server's answer, is what status records (only the
/// Job of that UID is ever read back). A Job of that name already there is taken up only if
/// this process created it (its status write failed). Nothing else shows who made it —
/// labels, owner references and even the field manager can be copied by anyone who may create
/// Jobs — so one that claims this migration as its controller (our own from before a restart
/// that lost the status write, or a forgery) is deleted and the attempt starts again; anything
/// else is a conflict the user must clear.
pub async fn create(
    jobs: &Api<Job>,
    job: &Job,
    owner: &OwnerReference,
    created: &CreatedJobs,
) -> Result<Job, Error> {
    let name = job.name_any();
    let ns = job.namespace().unwrap_or_default();
    match jobs.create(&PostParams::default(), job).await {
        Ok(j) => {
            created.remember(&ns, &name, j.metadata.uid.as_deref().unwrap_or_default());
            Ok(j)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = jobs
                .get(&name)
                .await
                .during(format!("reading existing Job {name}"))?;
            let uid = existing.metadata.uid.clone().unwrap_or_default();
            if !claims(&existing.metadata, &owner.uid) {
                return Err(Error::JobConflict { job: name });
            }
            if created.created(&ns, &name, &uid) {
                return Ok(existing);
            }
            let dp = kube::api::DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..kube::api::DeleteParams::background()
            };
            match jobs.delete(&name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    return Err(Error::Kube {
                        action: format!("deleting unrecorded Job {name}"),
                        source: e,
                    })
                }
            }
            Err(Error::UnrecordedJob { job: name })
        }
        Err(e) => Err(Error::Kube {
            action: format!("creating Job {name}"),
            source: e,
        }),
    }
}

/// Stop a running attempt: delete its Job; the pod goes with it (the kubelet sends SIGTERM
/// and the executor rolls back). Gone already is fine.
pub async fn stop(
    jobs: &Api<Job>,
    dbm: &DatabaseMigration,
    phase: JobPhase,
    attempt: u32,
) -> Result<(), Error> {
    let name = job_name(
        &dbm.name_any(),
        dbm.uid().as_deref().unwrap_or_default(),
        phase,
        attempt,
    );
    match jobs
        .delete(&name, &kube::api::DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube {
            action: format!("deleting Job {name}"),
            source: e,
        }),
    }
}

/// A namespace's API endpoints for what the caches cannot tell (yet).
pub struct JobApis {
    pub jobs: Api<JobView>,
    pub pods: Api<ExecutorPodView>,
    /// `pods/log` is served on the full Pod API.
    pub pod_logs: Api<Pod>,
    pub events: Api<Event>,
}

impl JobApis {
    pub fn new(client: &kube::Client, ns: &str) -> JobApis {
        JobApis {
            jobs: Api::namespaced(client.clone(), ns),
            pods: Api::namespaced(client.clone(), ns),
            pod_logs: Api::namespaced(client.clone(), ns),
            events: Api::namespaced(client.clone(), ns),
        }
    }
}

/// The state of the Job of a phase's current attempt, with the executor's structured report
/// when the Job finished and its termination message carries one (for metrics: lock retries
/// and lock waits).
///
/// A user Job's own output (termination message, log tail) reaches status only when
/// `show_user_output`: it may print whatever its environment holds, the database URL too.
pub async fn observe_reported(
    caches: &Caches,
    apis: &JobApis,
    dbm: &DatabaseMigration,
    phase: JobPhase,
    rec: Option<&crate::api::PhaseStatus>,
    show_user_output: bool,
) -> Result<(JobState, Option<Report>), Error> {
    observe(
        caches,
        apis,
        dbm,
        phase,
        rec,
        show_user_output,
        Detail::Explained,
    )
    .await
}

/// How much [`observe`] says of a running Job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// What holds it up too: its pod's Events and its executor's log through the kubelet (up
    /// to 3 s when the kubelet hangs).
    Explained,
    /// Only that it runs: what the fence decides on, which must not wait for a kubelet. The
    /// plan that keeps the Job then asks [`explain_running`].
    Unexplained,
}

/// What holds up the running Job of `phase`'s current attempt, once the plan keeps it
/// running; `None` when nothing does, or it no longer runs.
pub async fn explain_running(
    caches: &Caches,
    apis: &JobApis,
    dbm: &DatabaseMigration,
    phase: JobPhase,
    rec: Option<&crate::api::PhaseStatus>,
    show_user_output: bool,
) -> Result<Option<Holdup>, Error> {
    let (state, _) = observe(
        caches,
        apis,
        dbm,
        phase,
        rec,
        show_user_output,
        Detail::Explained,
    )
    .await?;
    Ok(match state {
        JobState::Running(holdup) => holdup,
        _ => None,
    })
}

/// [`observe_reported`], with the detail asked for.
#[allow(clippy::too_many_arguments)]
pub async fn observe(
    caches: &Caches,
    apis: &JobApis,
    dbm: &DatabaseMigration,
    phase: JobPhase,
    rec: Option<&crate::api::PhaseStatus>,
    show_user_output: bool,
    detail: Detail,
) -> Result<(JobState, Option<Report>), Error> {
    let user_job = phase_code(&dbm.spec, phase).1.is_some();
    let hide = user_job && !show_user_output;
    let uid = dbm.uid().unwrap_or_default();
    let attempt = rec.map_or(1, |r| r.attempts.max(1));
    let name = job_name(&dbm.name_any(), &uid, phase, attempt);
    let ns = dbm.namespace().unwrap_or_default();
    // From the cache. A Job not seen there yet is absent, unless status says its attempt
    // runs: the Jobs watch may trail the migrations watch by a moment under load, and
    // "absent" would then read as "deleted by hand" and start another attempt beside it
    // (seen in the bench: up to 14 expand attempts of one migration). The API server says.
    // A Job of an attempt not recorded yet is deleted and started again (`create`).
    let recorded_running =
        rec.is_some_and(|r| r.attempts > 0 && r.finished_at.is_none() && !r.succeeded);
    let job = match caches.job(&ns, &name) {
        Some(job) => job,
        None if recorded_running => match apis
            .jobs
            .get_opt(&name)
            .await
            .during(format!("reading Job {name}"))?
        {
            Some(job) => Arc::new(job),
            None => return Ok((JobState::Absent, None)),
        },
        None => return Ok((JobState::Absent, None)),
    };
    // A Job of that name this migration did not create is not ours to read: only the one
    // whose UID status recorded at its creation is.
    let recorded = rec.and_then(|r| r.job_uid.as_deref());
    if recorded.is_none()
        || recorded != job.metadata.uid.as_deref()
        || !created_for(&job.metadata, &uid, sql_checksum(dbm, phase).as_deref())
    {
        return Ok((JobState::Absent, None));
    }
    let cond = |t: &str| {
        job.status
            .conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
            .cloned()
    };
    let finished = cond("Complete").is_some() || cond("Failed").is_some();
    let job_uid = job.metadata.uid.clone().unwrap_or_default();
    let mut job_pods = caches.job_pods(&ns, &name, &job_uid);
    // The pods watch may trail the Jobs watch: a finished Job whose pod's end the cache has
    // not seen yet is read from the API server, or a failure would look like a dead executor.
    if finished && last_termination(&job_pods).is_none() {
        job_pods = apis
            .pods
            .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}")))
            .await
            .during(format!("listing pods of Job {name}"))?
            .items
            .into_iter()
            .filter(|p| super::cache::controlled_by(&p.metadata, &job_uid))
            .map(Arc::new)
            .collect();
    }
    if cond("Complete").is_some() {
        if hide {
            return Ok((JobState::Succeeded(None), None));
        }
        let raw = last_termination(&job_pods)
            .and_then(|t| t.message)
            .filter(|m| !m.trim().is_empty());
        let report = raw.as_deref().and_then(Report::parse);
        return Ok((JobState::Succeeded(raw.map(|m| summarise(&m))), report));
    }
    if let Some(failed) = cond("Failed") {
        let last = last_termination(&job_pods);
        let how = last.as_ref().map(|t| {
            format!(
                "container exited with code {}{}",
                t.exit_code,
                describe_exit(t.exit_code, t.reason.as_deref())
            )
        });
        // A container that could not start has the runtime's message, not its own output.
        let runtime_says = last.as_ref().is_some_and(|t| {
            matches!(
                t.reason.as_deref(),
                Some("StartError" | "ContainerCannotRun")
            )
        });
        // Hidden too when the runtime says it: `$(VAR)` in command, args and subPathExpr is
        // expanded from the container's env (any Secret of the namespace) before the runtime
        // quotes it back, e.g. `exec: "/<the Secret's value>": no such file` (issue 23).
        let raw = last
            .and_then(|t| t.message)
            .filter(|m| !m.trim().is_empty() && !hide);
        let report = raw.as_deref().and_then(Report::parse);
        // Phasegate's own executor always writes its report, unless it was killed first.
        if !user_job && report.is_none() && !runtime_says {
            let how = how.unwrap_or_else(|| {
                format!(
                    "no container status left ({})",
                    failed.reason.as_deref().unwrap_or("Failed")
                )
            });
            return Ok((
                JobState::Died(format!(
                    "the executor of Job {name} died without its report ({how}). PostgreSQL \
                     rolls back the transaction a dead client had open: nothing was committed \
                     by this attempt unless the ledger (phasegate.ledger) says otherwise (a \
                     COMMIT already sent, or a statement that runs outside a transaction, such \
                     as CREATE INDEX CONCURRENTLY, may have taken effect; the next attempt \
                     resumes from the ledger). Its log: kubectl logs job/{name}"
                )),
                None,
            ));
        }
        let msg = match (raw, how) {
            (Some(m), _) => summarise(&m),
            (None, Some(how)) if hide && runtime_says => format!(
                "Job {name} failed: {how}: its container could not start; the runtime's message \
                 is not copied into status (the cluster's jobPolicy.showJobOutput is off), see \
                 its pod's events: kubectl describe pod -n {ns} -l batch.kubernetes.io/job-name={name}"
            ),
            (None, Some(how)) if hide => format!(
                "Job {name} failed: {how}; its output is not copied into status \
                 (the cluster's jobPolicy.showJobOutput is off): kubectl logs job/{name}"
            ),
            (None, how) => format!(
                "Job {name} failed: {}",
                how.or(failed.message).or(failed.reason).unwrap_or_default()
            ),
        };
        return Ok((JobState::Failed(msg), report));
    }
    if detail == Detail::Unexplained {
        return Ok((JobState::Running(None), None));
    }
    let created = job.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let holdup = match stuck_reason(&job_pods, created, &apis.events, &name, hide).await? {
        Some(why) => Some(Holdup::Stuck(why)),
        // Only Phasegate's own executor writes wait lines; a user Job's log is not ours to read.
        // A backfill's log also carries its progress.
        None if !user_job && phase == JobPhase::Backfill => executor_log(&apis.pod_logs, &job_pods)
            .await
            .and_then(|log| {
                crate::executor::waits::current(&log)
                    .map(Holdup::Waiting)
                    .or_else(|| crate::executor::backfill::progress(&log).map(Holdup::Progress))
            }),
        None if !user_job => executor_wait(&apis.pod_logs, &job_pods)
            .await
            .map(Holdup::Waiting),
        None => None,
    };
    Ok((JobState::Running(holdup), None))
}

/// Most of the executor's log read to find what it waits on: its wait lines are short and
/// printed once per reason, so the tail holds the current ones.
const WAIT_LOG_TAIL_LINES: i64 = 50;
const WAIT_LOG_LIMIT_BYTES: i64 = 32 * 1024;
/// A kubelet that does not answer (node lost) must not hold up the reconcile.
const WAIT_LOG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// What the running executor waits on, from the tail of its log (see
/// [`crate::executor::waits::current`]); `None` when it does not wait, or its log cannot be
/// read (no `pods/log` permission, a kubelet that does not answer): only the explanation is
/// lost, never the fence.
async fn executor_wait(pods: &Api<Pod>, job_pods: &[Arc<ExecutorPodView>]) -> Option<String> {
    crate::executor::waits::current(&executor_log(pods, job_pods).await?)
}

/// The tail of the running executor's log; `None` when it cannot be read.
async fn executor_log(pods: &Api<Pod>, job_pods: &[Arc<ExecutorPodView>]) -> Option<String> {
    let running = job_pods.iter().find(|p| {
        p.metadata.deletion_timestamp.is_none() && p.status.phase.as_deref() == Some("Running")
    })?;
    let params = kube::api::LogParams {
        container: Some(EXECUTOR_CONTAINER.into()),
        tail_lines: Some(WAIT_LOG_TAIL_LINES),
        limit_bytes: Some(WAIT_LOG_LIMIT_BYTES),
        ..Default::default()
    };
    let name = running.name_any();
    match tokio::time::timeout(WAIT_LOG_TIMEOUT, pods.logs(&name, &params)).await {
        Ok(Ok(log)) => Some(log),
        Ok(Err(e)) => {
            tracing::debug!(pod = %name, error = %e, "could not read the executor's log");
            None
        }
        Err(_) => {
            tracing::debug!(pod = %name, "reading the executor's log timed out");
            None
        }
    }
}

/// How long a Job may have no pod before the operator looks for why (the running-Job poll
/// looks again after it).
const PODLESS_GRACE: jiff::SignedDuration = jiff::SignedDuration::from_secs(5);

/// Why a running Job's pod cannot make progress, as the kubelet or scheduler reports it
/// (a missing Secret, a bad image, an unschedulable pod), or as the Job controller does when
/// the API server refuses its pod (Pod Security admission, a ResourceQuota); `None` while it
/// is fine. With `hide` (a user Job, output not allowed) a container's waiting message is not
/// copied: the kubelet quotes what `$(VAR)` expanded to (`subPath … <a Secret's value>`) and
/// which Secrets and keys exist; the reason and where to look are given instead.
async fn stuck_reason(
    job_pods: &[Arc<ExecutorPodView>],
    job_created: Option<jiff::Timestamp>,
    events: &Api<Event>,
    job: &str,
    hide: bool,
) -> Result<Option<String>, Error> {
    if job_pods.is_empty() {
        // The Job controller creates the pod within moments; until then nothing is refused.
        // Listing Events by field selector makes the API server scan the namespace's Events
        // (1–3 s each during a rollout wave, holding a reconcile slot; docs/scale.md).
        let young =
            job_created.is_some_and(|t| jiff::Timestamp::now().duration_since(t) < PODLESS_GRACE);
        if young {
            return Ok(None);
        }
        return refused_pods(events, job).await;
    }
    for p in job_pods {
        let status = &p.status;
        let waiting = status
            .container_statuses
            .iter()
            .filter_map(|cs| cs.state.waiting.as_ref())
            .find(|w| {
                !matches!(
                    w.reason.as_deref(),
                    None | Some("ContainerCreating" | "PodInitializing")
                )
            });
        if let Some(w) = waiting {
            let reason = w.reason.clone().unwrap_or_default();
            return Ok(Some(match &w.message {
                Some(_) if hide => format!(
                    "pod waiting: {reason}; the kubelet's message is not copied into status (the \
                     cluster's jobPolicy.showJobOutput is off): kubectl describe pod -n {} {}",
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    p.metadata.name.as_deref().unwrap_or_default()
                ),
                Some(m) => format!("pod waiting: {reason}: {m}"),
                None => format!("pod waiting: {reason}"),
            }));
        }
        let unschedulable = status.conditions.iter().find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        });
        if let Some(c) = unschedulable {
            return Ok(Some(format!(
                "pod waiting: Unschedulable: {}",
                c.message.clone().unwrap_or_default()
            )));
        }
    }
    Ok(None)
}

/// A Job without pods: the newest `FailedCreate` Event the Job controller recorded for it.
/// Kubernetes (1.34) sets no Job condition for this, only the Event: `Error creating: pods
/// "…" is forbidden: violates PodSecurity "restricted:latest": …` or `… exceeded quota: …`.
async fn refused_pods(events: &Api<Event>, job: &str) -> Result<Option<String>, Error> {
    let lp = ListParams::default().fields(&format!("regarding.name={job},reason=FailedCreate"));
    let list = match events.list(&lp).await {
        Ok(list) => list,
        // An older Role without `list` on Events: only this explanation is lost.
        Err(kube::Error::Api(e)) if e.code == 403 => {
            tracing::warn!(job, error = %e.message, "cannot list Events: pods the API server refuses go unexplained");
            return Ok(None);
        }
        Err(e) => {
            return Err(Error::Kube {
                action: format!("listing Events of Job {job}"),
                source: e,
            })
        }
    };
    let when = |e: &Event| {
        e.series
            .as_ref()
            .map(|s| s.last_observed_time.0)
            .or(e.event_time.as_ref().map(|t| t.0))
            .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0))
            .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    Ok(list
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Job"))
        .max_by_key(|e| when(e))
        .map(|e| {
            let note = e.note.as_deref().unwrap_or_default();
            let note = note.strip_prefix("Error creating: ").unwrap_or(note);
            format!("pods refused: FailedCreate: {}", note.trim())
        }))
}

/// What an exit code and the runtime's reason say about how a container ended, e.g.
/// ` (OOMKilled; killed by signal 9, SIGKILL)`; empty when they say nothing more.
fn describe_exit(code: i32, reason: Option<&str>) -> String {
    let mut parts: Vec<String> = reason
        .filter(|r| !r.is_empty() && *r != "Error")
        .map(str::to_string)
        .into_iter()
        .collect();
    // Runtimes report a process ended by signal N as exit code 128 + N.
    if (129..=128 + 31).contains(&code) {
        let signal = code - 128;
        let name = match signal {
            2 => Some("SIGINT"),
            6 => Some("SIGABRT"),
            9 => Some("SIGKILL"),
            11 => Some("SIGSEGV"),
            15 => Some("SIGTERM"),
            _ => None,
        };
        parts.push(match name {
            Some(n) => format!("killed by signal {signal}, {n}"),
            None => format!("killed by signal {signal}"),
        });
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join("; "))
    }
}

/// How the newest terminated container of a Job ended: exit code, reason and termination
/// message (the executor's report line, or a user Job's own message), as written.
fn last_termination(job_pods: &[Arc<ExecutorPodView>]) -> Option<ContainerTerminatedView> {
    job_pods
        .iter()
        .flat_map(|p| p.status.container_statuses.iter())
        .filter_map(|cs| cs.state.terminated.as_ref())
        .max_by(|a, b| a.finished_at.cmp(&b.finished_at))
        .cloned()
}

/// Turn a termination message into one line for status: the executor's report summary, or
/// the message itself for a user Job.
pub fn summarise(message: &str) -> String {
    match crate::executor::report::Report::parse(message) {
        // The planner says which phase failed; keep just the cause.
        Some(r) => r.summary().trim_start_matches("failed: ").to_string(),
        None => message.trim().chars().take(1024).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DatabaseMigrationSpec, TargetStatus};
    use jiff::Timestamp;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn migration(name: &str) -> DatabaseMigration {
        let spec: DatabaseMigrationSpec = serde_json::from_value(serde_json::json!({
            "appVersion": "2.0.0",
            "database": {"urlSecretRef": {"name": "db", "key": "url"}},
            "expand": {"sql": "ALTER TABLE users ADD COLUMN a int;"},
            "contract": {"sql": "ALTER TABLE users DROP COLUMN b;"},
            "rollout": {"targets": [{"kind": "Deployment", "name": "shop-api"}]}
        }))
        .expect("spec");
        let mut m = DatabaseMigration::new(name, spec);
        m.metadata.namespace = Some("shop".into());
        m.metadata.uid = Some("0a1b2c3d-0000-4000-8000-000000000000".into());
        m
    }

    fn env_of(job: &Job) -> BTreeMap<String, String> {
        job.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec")
            .containers[0]
            .env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect()
    }

    #[test]
    fn backfill_job_runs_phasegate_backfill_in_the_rollout_epoch() {
        let mut m = migration("fill");
        m.spec.backfill = serde_json::from_value(serde_json::json!({
            "table": "users", "key": "id", "pause": "10ms", "batchSize": 200,
            "sql": "UPDATE users SET a = b WHERE id > $1 AND id <= $2"
        }))
        .expect("backfill spec");
        let mut status = DatabaseMigrationStatus {
            rollout_completed_at: Some(Time(Timestamp::from_second(1_700_000_000).expect("ts"))),
            ..DatabaseMigrationStatus::default()
        };
        let job = build_job(
            &m,
            &status,
            JobPhase::Backfill,
            2,
            &ExecutorConfig::default(),
        )
        .expect("job");
        assert_eq!(job.metadata.name.as_deref(), Some("fill-backfill-2-0a1b2"));
        let pod = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod");
        assert_eq!(pod.containers[0].args, Some(vec!["backfill".to_string()]));
        let env = env_of(&job);
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get(penv::BACKFILL_TABLE), Some("users"));
        assert_eq!(get(penv::BACKFILL_KEY), Some("id"));
        assert_eq!(get(penv::BACKFILL_PAUSE), Some("10ms"));
        assert_eq!(get(penv::BACKFILL_BATCH_SIZE), Some("200"));
        assert_eq!(
            get(penv::BACKFILL_LOCK_TIMEOUT),
            None,
            "unset: the executor's default"
        );
        assert_eq!(get(penv::SQL), None);
        assert_eq!(get(penv::BACKFILL_EPOCH), Some("2023-11-14T22:13:20Z/0"));
        // The epoch is the stored form: a status read back from the API server gives the same.
        let stored: DatabaseMigrationStatus =
            serde_json::from_value(serde_json::to_value(&status).expect("json")).expect("back");
        assert_eq!(backfill_epoch(&stored), backfill_epoch(&status));
        // Also when the plan that starts the Job holds a sub-second timestamp.
        let fine = DatabaseMigrationStatus {
            rollout_completed_at: Some(Time(
                Timestamp::new(1_700_000_000, 123_456_789).expect("ts"),
            )),
            ..DatabaseMigrationStatus::default()
        };
        let fine_stored: DatabaseMigrationStatus =
            serde_json::from_value(serde_json::to_value(&fine).expect("json")).expect("back");
        assert_eq!(backfill_epoch(&fine_stored), backfill_epoch(&fine));
        status.backfill = Some(crate::api::BackfillStatus {
            regressions: 1,
            ..Default::default()
        });
        assert_eq!(backfill_epoch(&status), "2023-11-14T22:13:20Z/1");
        assert!(created_for(
            &job.metadata,
            m.metadata.uid.as_deref().unwrap_or_default(),
            sql_checksum(&m, JobPhase::Backfill).as_deref()
        ));
    }

    #[test]
    fn contract_job_carries_what_the_plan_knows_and_its_identity() {
        let m = migration(&"m".repeat(200));
        let status = DatabaseMigrationStatus {
            rollout_completed_at: Some(Time(Timestamp::from_second(1_700_000_000).expect("ts"))),
            targets: vec![TargetStatus {
                kind: "Deployment".into(),
                name: "shop-api".into(),
                ..TargetStatus::default()
            }],
            ..DatabaseMigrationStatus::default()
        };
        let cfg = ExecutorConfig::default();
        let job = build_job(&m, &status, JobPhase::Contract, 1, &cfg).expect("job");
        let env = env_of(&job);
        assert_eq!(
            env.get(penv::ROLLOUT_COMPLETED_AT).map(String::as_str),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(
            env.get(penv::APPLICATION_NAMES).map(String::as_str),
            Some("shop-api")
        );
        assert_eq!(
            env.get(penv::REQUIRE_EXPAND).map(String::as_str),
            Some("true")
        );
        let labels = job.metadata.labels.clone().expect("labels");
        assert!(labels.values().all(|v| v.len() <= 63), "{labels:?}");
        assert!(created_for(
            &job.metadata,
            m.metadata.uid.as_deref().unwrap_or_default(),
            sql_checksum(&m, JobPhase::Contract).as_deref()
        ));
        assert!(
            !created_for(&job.metadata, "another-uid", None),
            "another migration's Job"
        );
        assert!(
            !created_for(
                &job.metadata,
                m.metadata.uid.as_deref().unwrap_or_default(),
                Some("0000000000000000")
            ),
            "a Job running other SQL"
        );
    }

    #[test]
    fn starvation_settings_reach_the_executor() {
        let status = DatabaseMigrationStatus::default();
        let cfg = ExecutorConfig::default();
        // Unset in the spec: the CRD's defaults, which are the executor's own.
        let job = build_job(&migration("m"), &status, JobPhase::Expand, 1, &cfg).expect("job");
        let env = env_of(&job);
        let get = |k: &str| env.get(k).cloned();
        assert_eq!(get(penv::YOUNG_TRANSACTION).as_deref(), Some("30ms"));
        assert_eq!(get(penv::LOCK_WAIT_ATTEMPT_AFTER).as_deref(), Some("10s"));
        let mut m = migration("m");
        m.spec.safety.young_transaction = "100ms".into();
        m.spec.safety.lock_wait_attempt_after = "0s".into();
        for phase in [JobPhase::Expand, JobPhase::Contract] {
            let env = env_of(&build_job(&m, &status, phase, 1, &cfg).expect("job"));
            let get = |k: &str| env.get(k).map(String::as_str);
            assert_eq!(get(penv::YOUNG_TRANSACTION), Some("100ms"), "{phase}");
            assert_eq!(get(penv::LOCK_WAIT_ATTEMPT_AFTER), Some("0s"), "{phase}");
        }
    }

    fn pod_spec(job: &Job) -> &PodSpec {
        job.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec")
    }

    fn admin_pod() -> ExecutorPod {
        ExecutorPod::from_json(
            r#"{"nodeSelector": {"pool": "migrations"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db",
                                 "effect": "NoSchedule"}],
                "annotations": {"sidecar.istio.io/inject": "false"},
                "priorityClassName": "migrations",
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                              "limits": {"memory": "128Mi"}}}"#,
        )
        .expect("settings")
    }

    #[test]
    fn the_admins_pod_settings_reach_the_inline_sql_executor() {
        let cfg = ExecutorConfig {
            pod: admin_pod(),
            ..ExecutorConfig::default()
        };
        let job = build_job(
            &migration("m"),
            &DatabaseMigrationStatus::default(),
            JobPhase::Expand,
            1,
            &cfg,
        )
        .expect("job");
        let ps = pod_spec(&job);
        assert_eq!(
            ps.node_selector.clone().unwrap_or_default(),
            [("pool".to_string(), "migrations".to_string())].into()
        );
        assert_eq!(
            ps.tolerations.clone().unwrap_or_default(),
            cfg.pod.tolerations
        );
        assert_eq!(ps.priority_class_name.as_deref(), Some("migrations"));
        assert_eq!(ps.containers[0].resources, cfg.pod.resources);
        let annotations = job.spec.as_ref().and_then(|s| s.template.metadata.as_ref());
        let annotations = annotations
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default();
        assert_eq!(
            annotations
                .get("sidecar.istio.io/inject")
                .map(String::as_str),
            Some("false")
        );
        // Phasegate's own annotation stays.
        assert!(
            annotations.contains_key(ANNOTATION_MIGRATION),
            "{annotations:?}"
        );
        // The restricted profile is untouched.
        assert_eq!(ps.automount_service_account_token, Some(false));

        // No settings: nothing added.
        let plain = build_job(
            &migration("m"),
            &DatabaseMigrationStatus::default(),
            JobPhase::Expand,
            1,
            &ExecutorConfig::default(),
        )
        .expect("job");
        let ps = pod_spec(&plain);
        assert!(ps.node_selector.is_none() && ps.tolerations.is_none());
        assert!(ps.priority_class_name.is_none() && ps.containers[0].resources.is_none());
    }

    #[test]
    fn the_admins_pod_settings_win_over_a_job_template() {
        let mut m = migration("m");
        m.spec = serde_json::from_value(serde_json::json!({
            "appVersion": "2.0.0",
            "database": {"urlSecretRef": {"name": "db", "key": "url"}},
            "expand": {"job": {"template": {
                "metadata": {"annotations": {"sidecar.istio.io/inject": "true", "mine": "x"}},
                "spec": {
                    "nodeSelector": {"pool": "general", "zone": "a"},
                    "tolerations": [{"key": "other", "operator": "Exists"}],
                    "priorityClassName": "high",
                    "containers": [
                        {"name": "a", "image": "migrate:1",
                         "resources": {"requests": {"cpu": "1"}}},
                        {"name": "b", "image": "migrate:1"}
                    ]}}}},
            "contract": {"sql": "SELECT 1;"},
            "rollout": {"targets": [{"kind": "Deployment", "name": "shop-api"}]}
        }))
        .expect("spec");
        let cfg = ExecutorConfig {
            pod: admin_pod(),
            ..ExecutorConfig::default()
        };
        let job = build_job(
            &m,
            &DatabaseMigrationStatus::default(),
            JobPhase::Expand,
            1,
            &cfg,
        )
        .expect("job");
        let ps = pod_spec(&job);
        let selector = ps.node_selector.clone().unwrap_or_default();
        assert_eq!(selector.get("pool").map(String::as_str), Some("migrations"));
        assert_eq!(selector.get("zone").map(String::as_str), Some("a"));
        let tolerations = ps.tolerations.clone().unwrap_or_default();
        assert_eq!(tolerations.len(), 2, "{tolerations:?}");
        assert!(tolerations.contains(&cfg.pod.tolerations[0]));
        assert_eq!(ps.priority_class_name.as_deref(), Some("migrations"));
        // A container's own resources stay; one without gets the admin's.
        let cpu = |c: &Container| {
            c.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("cpu"))
                .map(|q| q.0.clone())
        };
        assert_eq!(cpu(&ps.containers[0]).as_deref(), Some("1"));
        assert_eq!(cpu(&ps.containers[1]).as_deref(), Some("100m"));
        let annotations = job
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default();
        assert_eq!(
            annotations
                .get("sidecar.istio.io/inject")
                .map(String::as_str),
            Some("false")
        );
        assert_eq!(annotations.get("mine").map(String::as_str), Some("x"));
    }

    /// A template cannot pose as another migration's pod or drop Phasegate's labels, even
    /// with the Job policy off (issue 23).
    #[test]
    fn phasegates_labels_win_over_a_job_template() {
        let mut m = migration("m");
        m.spec = serde_json::from_value(serde_json::json!({
            "appVersion": "2.0.0",
            "database": {"urlSecretRef": {"name": "db", "key": "url"}},
            "expand": {"job": {"template": {
                "metadata": {"labels": {"phasegate.dev/migration-uid": "someone-else",
                    "phasegate.dev/sql-checksum": "0123456789abcdef",
                    "phasegate.dev/executor": "false", "app": "migrate"}},
                "spec": {"containers": [{"name": "a", "image": "migrate:1"}]}}}},
            "contract": {"sql": "SELECT 1;"},
            "rollout": {"targets": [{"kind": "Deployment", "name": "shop-api"}]}
        }))
        .expect("spec");
        let job = build_job(
            &m,
            &DatabaseMigrationStatus::default(),
            JobPhase::Expand,
            1,
            &ExecutorConfig::default(),
        )
        .expect("job");
        let labels = job
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let uid = m.metadata.uid.clone().unwrap_or_default();
        assert_eq!(labels.get(LABEL_MIGRATION_UID), Some(&uid));
        assert_eq!(labels.get(LABEL_EXECUTOR).map(String::as_str), Some("true"));
        assert_eq!(labels.get(LABEL_SQL_CHECKSUM), None, "{labels:?}");
        // Other labels are the Job policy's to judge.
        assert_eq!(labels.get("app").map(String::as_str), Some("migrate"));
    }

    #[test]
    fn executor_pod_settings_parse_strictly() {
        assert_eq!(ExecutorPod::from_json(""), Ok(ExecutorPod::default()));
        // What the chart renders with its defaults.
        assert_eq!(
            ExecutorPod::from_json(
                r#"{"annotations":{},"nodeSelector":{},"priorityClassName":"","resources":{},"tolerations":[]}"#
            )
            .map(|p| p == ExecutorPod::default()),
            Ok(true)
        );
        let err = ExecutorPod::from_json(r#"{"nodeSelectors": {"a": "b"}}"#).expect_err("typo");
        assert!(err.contains("nodeSelectors"), "{err}");
        assert!(ExecutorPod::from_json(r#"{"tolerations": "all"}"#).is_err());
        assert!(ExecutorPod::from_json(r#"{"nodeSelector": {"": "x"}}"#).is_err());
    }

    #[test]
    fn exits_say_how_the_container_died() {
        assert_eq!(
            describe_exit(137, Some("OOMKilled")),
            " (OOMKilled; killed by signal 9, SIGKILL)"
        );
        assert_eq!(
            describe_exit(137, Some("Error")),
            " (killed by signal 9, SIGKILL)"
        );
        assert_eq!(describe_exit(1, Some("Error")), "");
        assert_eq!(describe_exit(3, None), "");
        assert_eq!(describe_exit(128, Some("StartError")), " (StartError)");
    }

    #[test]
    fn the_newest_termination_of_a_job_is_the_one_reported() {
        let pod = |state: serde_json::Value| {
            Arc::new(
                serde_json::from_value::<ExecutorPodView>(serde_json::json!({
                    "metadata": {"name": "p", "namespace": "shop"},
                    "status": {"containerStatuses": [{"name": "executor", "state": state}]}
                }))
                .expect("pod"),
            )
        };
        let ended = |code: i32, at: &str| {
            pod(
                serde_json::json!({"terminated": {"exitCode": code, "finishedAt": at, "message": format!("exit {code}")}}),
            )
        };
        let pods = [
            ended(1, "2026-11-30T12:00:05Z"),
            ended(0, "2026-11-30T12:00:09Z"),
            pod(serde_json::json!({"running": {"startedAt": "2026-11-30T12:00:10Z"}})),
            ended(2, "2026-11-30T12:00:07Z"),
        ];
        let last = last_termination(&pods).expect("a terminated container");
        assert_eq!(
            (last.exit_code, last.message.as_deref()),
            (0, Some("exit 0"))
        );
        assert_eq!(last_termination(&pods[2..3]), None);
    }

    /// A user-Job migration (expand runs the author's template) and its attempt-1 Job, as
    /// the caches hold them, with one pod of `pod_status` and the Job's `conditions`.
    fn user_job_caches(
        pod_status: serde_json::Value,
        conditions: serde_json::Value,
    ) -> (DatabaseMigration, Caches) {
        let mut m = migration("m");
        m.spec.expand = serde_json::from_value(serde_json::json!({"job": {"template": {
            "spec": {"containers": [{"name": "leak", "image": "busybox"}]}}}}))
        .expect("expand");
        let job = build_job(
            &m,
            &DatabaseMigrationStatus::default(),
            JobPhase::Expand,
            1,
            &ExecutorConfig::default(),
        )
        .expect("job");
        let name = job.metadata.name.clone().expect("name");
        let mut job = serde_json::to_value(&job).expect("json");
        job["metadata"]["creationTimestamp"] = serde_json::json!("2026-01-01T00:00:00Z");
        job["metadata"]["uid"] = serde_json::json!(JOB_UID);
        job["status"] = serde_json::json!({"conditions": conditions});
        let job: JobView = serde_json::from_value(job).expect("job view");
        let pod = job_pod(&name, "abcde", Some(JOB_UID), pod_status);
        let mut caches = Caches::for_tests(vec![], vec![]);
        caches.jobs = crate::controller::test_support::test_store(vec![job]);
        caches.executor_pods = crate::controller::test_support::test_store(vec![pod]);
        (m, caches)
    }

    const JOB_UID: &str = "0b1c2d3e-0000-4000-8000-00000000000j";

    /// A pod labelled as Job `job`'s, controlled by the Job of `owner` (none: ownerless).
    fn job_pod(
        job: &str,
        suffix: &str,
        owner: Option<&str>,
        status: serde_json::Value,
    ) -> ExecutorPodView {
        let owners = owner.map_or(serde_json::json!([]), |uid| {
            serde_json::json!([{"apiVersion": "batch/v1", "kind": "Job", "name": job,
                "uid": uid, "controller": true}])
        });
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{job}-{suffix}"), "namespace": "shop",
                "labels": {"batch.kubernetes.io/job-name": job, LABEL_EXECUTOR: "true"},
                "ownerReferences": owners},
            "status": status}))
        .expect("pod view")
    }

    /// Trust only what the operator created (issue 23): a pod that only carries a Job's
    /// `job-name` label cannot plant what status reports, and a Job that only carries the
    /// migration's labels is neither adopted nor read.
    #[tokio::test]
    async fn pods_and_jobs_the_operator_did_not_create_are_not_read() {
        let running = crate::api::PhaseStatus {
            attempts: 1,
            job_uid: Some(JOB_UID.into()),
            ..Default::default()
        };
        let ended = |message: &str, at: &str| {
            serde_json::json!({"phase": "Failed", "containerStatuses": [{"state": {"terminated":
                {"exitCode": 3, "reason": "Error", "message": message, "finishedAt": at}}}]})
        };
        let failed = serde_json::json!([{"type": "Failed", "status": "True"}]);
        let (m, mut caches) =
            user_job_caches(ended("the real output", "2026-01-01T00:00:05Z"), failed);
        let name = job_name("m", &m.uid().expect("uid"), JobPhase::Expand, 1);
        let mut pods = caches.executor_pods.state();
        pods.push(Arc::new(job_pod(
            &name,
            "plant",
            None,
            ended("PLANTED", "2026-01-01T00:00:09Z"),
        )));
        caches.executor_pods = crate::controller::test_support::test_store(
            pods.iter().map(|p| p.as_ref().clone()).collect(),
        );
        let (apis, _) = api_answering(vec![]);
        let (state, _) =
            observe_reported(&caches, &apis, &m, JobPhase::Expand, Some(&running), true)
                .await
                .expect("observe");
        assert!(
            matches!(&state, JobState::Failed(msg) if msg == "the real output"),
            "{state:?}"
        );

        // An ownerless Job with the migration's labels: not ours to read or to adopt.
        let mut job = build_job(
            &m,
            &DatabaseMigrationStatus::default(),
            JobPhase::Expand,
            1,
            &ExecutorConfig::default(),
        )
        .expect("job");
        let owner = job.metadata.owner_references.take().expect("owner")[0].clone();
        assert!(!created_for(&job.metadata, &m.uid().expect("uid"), None));
        let mut planted = serde_json::to_value(&job).expect("json");
        planted["status"] =
            serde_json::json!({"conditions": [{"type": "Complete", "status": "True"}]});
        let view: JobView = serde_json::from_value(planted.clone()).expect("view");
        caches.jobs = crate::controller::test_support::test_store(vec![view]);
        let (apis, _) = api_answering(vec![]);
        let (state, _) =
            observe_reported(&caches, &apis, &m, JobPhase::Expand, Some(&running), true)
                .await
                .expect("observe");
        assert!(matches!(state, JobState::Absent), "{state:?}");
        let (client, served) =
            crate::controller::test_support::mock_api(vec![already_exists(), (200, planted)]);
        let jobs: Api<Job> = Api::namespaced(client, "shop");
        let mut ours = job.clone();
        ours.metadata.owner_references = Some(vec![owner.clone()]);
        let err = create(&jobs, &ours, &owner, &CreatedJobs::default())
            .await
            .expect_err("not adopted");
        assert!(matches!(err, Error::JobConflict { .. }), "{err:?}");
        assert_eq!(served.await.expect("mock").len(), 2, "no adopting PATCH");
    }

    /// The API server's answer to creating a Job whose name is taken.
    fn already_exists() -> (u16, serde_json::Value) {
        let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "AlreadyExists", "code": 409, "message": "exists"});
        (409, status)
    }

    /// A Job that copies everything (labels, the controller owner reference) but whose UID
    /// status never recorded is neither read nor taken up: creating the attempt deletes it
    /// (only that very Job: a UID precondition) and starts again (issue 23).
    #[tokio::test]
    async fn a_job_whose_uid_status_did_not_record_is_neither_read_nor_adopted() {
        let m = migration("m");
        let mut job = build_job(
            &m,
            &DatabaseMigrationStatus::default(),
            JobPhase::Expand,
            1,
            &ExecutorConfig::default(),
        )
        .expect("job");
        job.metadata.uid = Some("forged-0000".into());
        let owner = job.metadata.owner_references.clone().expect("owner")[0].clone();
        assert!(created_for(&job.metadata, &m.uid().expect("uid"), None));
        let mut done = serde_json::to_value(&job).expect("json");
        done["status"] =
            serde_json::json!({"conditions": [{"type": "Complete", "status": "True"}]});
        let view: JobView = serde_json::from_value(done.clone()).expect("view");
        let mut caches = Caches::for_tests(vec![], vec![]);
        caches.jobs = crate::controller::test_support::test_store(vec![view]);
        for recorded in [None, Some(JOB_UID)] {
            let rec = crate::api::PhaseStatus {
                attempts: 1,
                job_uid: recorded.map(String::from),
                ..Default::default()
            };
            let (apis, _) = api_answering(vec![]);
            let (state, _) =
                observe_reported(&caches, &apis, &m, JobPhase::Expand, Some(&rec), true)
                    .await
                    .expect("observe");
            assert!(matches!(state, JobState::Absent), "{recorded:?}: {state:?}");
        }
        let done_again = done.clone();
        let (client, served) = crate::controller::test_support::mock_api(vec![
            already_exists(),
            (200, done.clone()),
            (200, done),
        ]);
        let jobs: Api<Job> = Api::namespaced(client, "shop");
        let err = create(&jobs, &job, &owner, &CreatedJobs::default())
            .await
            .expect_err("not adopted");
        assert!(matches!(err, Error::UnrecordedJob { .. }), "{err:?}");
        let served = served.await.expect("mock");
        assert_eq!(served.len(), 3, "{served:?}");
        assert!(served[2].starts_with("DELETE "), "{served:?}");

        // Created by this very process, its status write lost: taken up, not deleted (a
        // delete would make the next watch event create it again, and so on).
        let ours = CreatedJobs::default();
        ours.remember("shop", &job.name_any(), "forged-0000");
        let (client, served) =
            crate::controller::test_support::mock_api(vec![already_exists(), (200, done_again)]);
        let jobs: Api<Job> = Api::namespaced(client, "shop");
        let taken = create(&jobs, &job, &owner, &ours).await.expect("taken up");
        assert_eq!(taken.metadata.uid.as_deref(), Some("forged-0000"));
        assert_eq!(served.await.expect("mock").len(), 2);
    }

    /// What a user container's runtime says may quote a Secret: `$(K)` in its command is
    /// expanded from env before the runtime reports `exec: "/<value>"`, and the kubelet's
    /// waiting messages quote subPaths and name Secrets and keys. Not copied unless the admin
    /// allows output; the reason and where to look are (issue 23).
    #[tokio::test]
    async fn a_user_containers_runtime_messages_stay_out_of_status() {
        const SECRET: &str = "sk_live_9f8e7d6c5b4a";
        let running = crate::api::PhaseStatus {
            attempts: 1,
            job_uid: Some(JOB_UID.into()),
            ..Default::default()
        };
        let start_error = serde_json::json!({"phase": "Failed", "containerStatuses": [{"state": {
            "terminated": {"exitCode": 128, "reason": "StartError",
                "message": format!("failed to create containerd task: exec: \"/{SECRET}\": stat /{SECRET}: no such file or directory"),
                "finishedAt": "2026-01-01T00:00:05Z"}}}]});
        let failed = serde_json::json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]);
        let (m, caches) = user_job_caches(start_error.clone(), failed.clone());
        let (apis, _) = api_answering(vec![]);
        let (state, _) =
            observe_reported(&caches, &apis, &m, JobPhase::Expand, Some(&running), false)
                .await
                .expect("observe");
        let JobState::Failed(msg) = state else {
            panic!("{state:?}")
        };
        assert!(!msg.contains(SECRET), "{msg}");
        assert!(
            msg.contains("exited with code 128 (StartError)")
                && msg.contains("kubectl describe pod -n shop -l batch.kubernetes.io/job-name="),
            "{msg}"
        );
        // The admin allows output: the runtime's message is shown.
        let (apis, _) = api_answering(vec![]);
        let (state, _) =
            observe_reported(&caches, &apis, &m, JobPhase::Expand, Some(&running), true)
                .await
                .expect("observe");
        assert!(
            matches!(&state, JobState::Failed(m) if m.contains(SECRET)),
            "{state:?}"
        );

        let waiting = serde_json::json!({"phase": "Pending", "containerStatuses": [{"state": {
            "waiting": {"reason": "CreateContainerConfigError",
                "message": format!("failed to prepare subPath for volumeMount \"v\" of container \"leak\": {SECRET}")}}}]});
        let (m, caches) = user_job_caches(waiting, serde_json::json!([]));
        let (apis, served) = api_answering(vec![]);
        let (state, _) =
            observe_reported(&caches, &apis, &m, JobPhase::Expand, Some(&running), false)
                .await
                .expect("observe");
        let JobState::Running(Some(Holdup::Stuck(why))) = state else {
            panic!("{state:?}")
        };
        assert!(!why.contains(SECRET), "{why}");
        assert!(
            why.starts_with("pod waiting: CreateContainerConfigError;")
                && why.contains("kubectl describe pod -n shop "),
            "{why}"
        );
        assert!(served.await.expect("mock").is_empty(), "no log is read");
    }

    /// `JobApis` on a mocked API server (see `test_support::mock_api`).
    fn api_answering(
        answers: Vec<(u16, serde_json::Value)>,
    ) -> (JobApis, tokio::task::JoinHandle<Vec<String>>) {
        let (client, served) = crate::controller::test_support::mock_api(answers);
        (JobApis::new(&client, "shop"), served)
    }

    #[tokio::test]
    async fn a_recorded_attempt_the_cache_has_not_seen_is_read_from_the_api_server() {
        let m = migration("m");
        let uid = m.uid().expect("uid");
        let cfg = ExecutorConfig::default();
        let mut job = build_job(
            &m,
            &DatabaseMigrationStatus::default(),
            JobPhase::Expand,
            1,
            &cfg,
        )
        .expect("job");
        job.metadata.creation_timestamp = Some(Time(Timestamp::now()));
        job.metadata.uid = Some(JOB_UID.into());
        let name = job_name("m", &uid, JobPhase::Expand, 1);
        let caches = Caches::for_tests(vec![], vec![]);
        let running = crate::api::PhaseStatus {
            attempts: 1,
            job_uid: Some(JOB_UID.into()),
            ..Default::default()
        };

        // Status says attempt 1 runs; the Jobs cache trails: the API server has the Job.
        let (apis, served) = api_answering(vec![(200, serde_json::to_value(&job).expect("json"))]);
        let (state, _) =
            observe_reported(&caches, &apis, &m, JobPhase::Expand, Some(&running), false)
                .await
                .expect("observe");
        assert!(matches!(state, JobState::Running(None)), "{state:?}");
        assert_eq!(
            served.await.expect("mock"),
            [format!("GET /apis/batch/v1/namespaces/shop/jobs/{name}")]
        );

        // The API server has no such Job either: it is gone.
        let not_found = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": format!("jobs.batch \"{name}\" not found")});
        let (apis, served) = api_answering(vec![(404, not_found)]);
        let (state, _) =
            observe_reported(&caches, &apis, &m, JobPhase::Expand, Some(&running), false)
                .await
                .expect("observe");
        assert!(matches!(state, JobState::Absent), "{state:?}");
        assert_eq!(served.await.expect("mock").len(), 1);

        // No attempt recorded yet, or a finished one: absent from the cache is absent, unasked.
        let finished = crate::api::PhaseStatus {
            attempts: 1,
            finished_at: Some(Time(Timestamp::now())),
            ..Default::default()
        };
        for rec in [None, Some(&finished)] {
            let (apis, served) = api_answering(vec![]);
            let (state, _) = observe_reported(&caches, &apis, &m, JobPhase::Expand, rec, false)
                .await
                .expect("observe");
            assert!(matches!(state, JobState::Absent), "{state:?}");
            assert!(served.await.expect("mock").is_empty());
        }
    }
}
