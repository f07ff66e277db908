//! Tests of executor Jobs: building, ownership, creating and reading them back.

use super::apply::*;
use super::build::*;
use super::config::*;
use super::observe::*;
use super::ownership::*;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use kube::{Api, ResourceExt};

use crate::api::{
    DatabaseMigration, DatabaseMigrationStatus, ANNOTATION_MIGRATION, LABEL_EXECUTOR,
    LABEL_MIGRATION_UID, LABEL_SQL_CHECKSUM,
};
use crate::planner::{job_name, Holdup, JobPhase, JobState};
use crate::protocol::env as penv;

use crate::api::{DatabaseMigrationSpec, TargetStatus};
use crate::controller::cache::Caches;
use crate::controller::error::Error;
use crate::controller::views::{ExecutorPodView, JobView};
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

/// A fleet migration on several servers: each phase's Job reads each listed server's URL from
/// its own Secret key (`secretKeyRef`, never a value: the operator never reads Secrets), in the
/// list's order; the names travel in `PHASEGATE_TENANTS`.
#[test]
fn a_fleet_job_reads_each_servers_url_from_its_secret() {
    let mut m = migration("shards");
    m.spec.tenants = Some(
        serde_json::from_value(serde_json::json!({
            "schemas": "tenant\\_%",
            "servers": [
                {"name": "eu-2", "urlSecretRef": {"name": "shop-db-eu-2", "key": "url"}},
                {"name": "us-1", "urlSecretRef": {"name": "shop-db-us-1", "key": "uri"}}
            ]
        }))
        .expect("tenants"),
    );
    let status = DatabaseMigrationStatus::default();
    for phase in [JobPhase::Expand, JobPhase::Contract] {
        let job = build_job(&m, &status, phase, 1, &ExecutorConfig::default()).expect("job");
        let vars = &pod_spec(&job).containers[0].env;
        let from_secret = |name: &str| {
            vars.iter()
                .flatten()
                .find(|e| e.name == name)
                .and_then(|e| {
                    let k = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
                    Some((e.value.is_none(), k.name.clone(), k.key.clone()))
                })
        };
        assert_eq!(
            from_secret("PHASEGATE_SERVER_URL_0"),
            Some((true, "shop-db-eu-2".into(), "url".into())),
            "{phase}"
        );
        assert_eq!(
            from_secret("PHASEGATE_SERVER_URL_1"),
            Some((true, "shop-db-us-1".into(), "uri".into())),
            "{phase}"
        );
        assert_eq!(from_secret("PHASEGATE_SERVER_URL_2"), None, "{phase}");
        let tenants = env_of(&job).get(penv::TENANTS).cloned().unwrap_or_default();
        assert!(tenants.contains(r#""name":"eu-2""#), "{tenants}");
    }
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
    let (m, mut caches) = user_job_caches(ended("the real output", "2026-01-01T00:00:05Z"), failed);
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
    let (state, _) = observe_reported(&caches, &apis, &m, JobPhase::Expand, Some(&running), true)
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
    planted["status"] = serde_json::json!({"conditions": [{"type": "Complete", "status": "True"}]});
    let view: JobView = serde_json::from_value(planted.clone()).expect("view");
    caches.jobs = crate::controller::test_support::test_store(vec![view]);
    let (apis, _) = api_answering(vec![]);
    let (state, _) = observe_reported(&caches, &apis, &m, JobPhase::Expand, Some(&running), true)
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
    done["status"] = serde_json::json!({"conditions": [{"type": "Complete", "status": "True"}]});
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
        let (state, _) = observe_reported(&caches, &apis, &m, JobPhase::Expand, Some(&rec), true)
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
    let failed =
        serde_json::json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]);
    let (m, caches) = user_job_caches(start_error.clone(), failed.clone());
    let (apis, _) = api_answering(vec![]);
    let (state, _) = observe_reported(&caches, &apis, &m, JobPhase::Expand, Some(&running), false)
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
    let (state, _) = observe_reported(&caches, &apis, &m, JobPhase::Expand, Some(&running), true)
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
    let (state, _) = observe_reported(&caches, &apis, &m, JobPhase::Expand, Some(&running), false)
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
    let (state, _) = observe_reported(&caches, &apis, &m, JobPhase::Expand, Some(&running), false)
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
    let (state, _) = observe_reported(&caches, &apis, &m, JobPhase::Expand, Some(&running), false)
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
