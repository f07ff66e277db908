//! The gates a user sets from git: manual approval, soak delay, retry, rollout timeout.

use std::time::Duration;

use phasegate::api::Phase;
use serde_json::json;

use crate::harness::{condition, wait_metric, Env};
use crate::{expanded, migration_spec, seed_users_table, T};

#[tokio::test(flavor = "multi_thread")]
async fn manual_approval_waits_for_the_annotation() {
    let mut env = expanded("approval", json!({"approval": "Manual"})).await;
    let (_operator, port) = env.operator_with_metrics().await;
    env.set_version("shop-api", "2.0.0", json!({})).await;
    let m = env
        .wait_phase("users-email-verified", Phase::AwaitingApproval, T)
        .await;
    // How long approval has been awaited, for the alert PhasegateApprovalWaitTooLong.
    let approval = format!(
        "phasegate_approval_wait_seconds{{namespace=\"{}\"}}",
        env.ns
    );
    wait_metric(port, &approval, |v| v >= 2.0).await;
    let (ready, _, msg) = condition(&m, "Ready").expect("Ready");
    assert_eq!(ready, "True");
    assert!(
        msg.contains("phasegate.dev/approve"),
        "says how to approve: {msg}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        env.job_names("contract").await.is_empty(),
        "no contract before approval"
    );
    assert!(env.column_exists("users", "legacy_flag").await);
    env.annotate("users-email-verified", "phasegate.dev/approve", "true")
        .await;
    env.wait_phase("users-email-verified", Phase::Succeeded, T)
        .await;
    assert!(!env.column_exists("users", "legacy_flag").await);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn soak_delay_holds_contract_after_the_rollout() {
    let env = expanded("soak", json!({"delay": "8s"})).await;
    env.set_version("shop-api", "2.0.0", json!({})).await;
    let m = env
        .wait_phase("users-email-verified", Phase::Soaking, T)
        .await;
    assert!(
        env.job_names("contract").await.is_empty(),
        "no contract while soaking"
    );
    assert!(condition(&m, "RolloutComplete").is_some_and(|c| c.0 == "True"));
    let m = env
        .wait_phase("users-email-verified", Phase::Succeeded, T)
        .await;
    let s = m.status.expect("status");
    let completed = s.rollout_completed_at.expect("rollout_completed_at").0;
    let contract_started = s
        .contract
        .and_then(|c| c.started_at)
        .expect("contract started_at")
        .0;
    let soaked = contract_started.duration_since(completed);
    assert!(
        soaked.as_secs() >= 8,
        "contract began {soaked:?} after the rollout, before the 8s soak ended"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_annotation_reruns_a_failed_expand() {
    let env = Env::new("retry").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    let spec = migration_spec("ALTER TABLE audit ADD COLUMN actor text;", json!({}));
    env.create_migration("audit-actor", spec)
        .await
        .expect("create");
    let m = env.wait_phase("audit-actor", Phase::Failed, T).await;
    assert!(condition(&m, "Stalled").is_some_and(|c| c.2.contains("42P01")));
    // Fix the cause, then ask for a retry the way git would: a new annotation value.
    env.pg
        .client()
        .await
        .batch_execute("CREATE TABLE audit (id bigserial PRIMARY KEY);")
        .await
        .expect("create audit");
    env.annotate("audit-actor", "phasegate.dev/retry", "1")
        .await;
    let m = env
        .wait_phase("audit-actor", Phase::AwaitingRollout, T)
        .await;
    let s = m.status.expect("status");
    assert_eq!(
        s.expand.as_ref().map(|e| e.attempts),
        Some(2),
        "a second expand attempt"
    );
    assert_eq!(s.observed_retry.as_deref(), Some("1"));
    assert!(env.column_exists("audit", "actor").await);
    assert_eq!(
        env.job_names("expand").await.len(),
        2,
        "the failed Job is kept for inspection"
    );
    // One Event per attempt, each with its own message (not a series folded into the first).
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    let expanding: Vec<String> = events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("audit-actor")
                && e.reason.as_deref() == Some("Expanding")
        })
        .filter_map(|e| e.note)
        .collect();
    assert_eq!(
        expanding.len(),
        2,
        "one Expanding Event per attempt: {expanding:?}"
    );
    assert_ne!(expanding[0], expanding[1], "each with its own message");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollout_timeout_fails_and_blocks_contract_until_retry() {
    let env = Env::new("timeout").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 2, "1.0.0").await;
    let mut spec = migration_spec(crate::EXPAND, json!({}));
    spec["rollout"]["timeout"] = json!("6s");
    env.create_migration("users-email-verified", spec)
        .await
        .expect("create");
    let m = env
        .wait_phase("users-email-verified", Phase::Failed, T)
        .await;
    // Expand is applied: Ready stays True and says what failed; Stalled stays False, so
    // kstatus (Flux) does not hold back the app's fix behind this migration.
    let (ready, reason, msg) = condition(&m, "Ready").expect("Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("True", "RolloutTimeout")
    );
    assert!(msg.contains("shop-api"), "{msg}");
    let (stalled, reason, _) = condition(&m, "Stalled").expect("Stalled");
    assert_eq!(
        (stalled.as_str(), reason.as_str()),
        ("False", "FailedAfterExpand")
    );
    // The rollout completing late must not contract on its own.
    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_rolled_out("shop-api").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let m = env
        .migrations()
        .get("users-email-verified")
        .await
        .expect("get");
    assert_eq!(m.status.as_ref().and_then(|s| s.phase), Some(Phase::Failed));
    assert!(
        env.job_names("contract").await.is_empty(),
        "no contract after a timeout"
    );
    env.annotate(
        "users-email-verified",
        "phasegate.dev/retry",
        "after-timeout",
    )
    .await;
    env.wait_phase("users-email-verified", Phase::Succeeded, T)
        .await;
    assert!(!env.column_exists("users", "legacy_flag").await);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn database_check_waits_for_old_version_sessions() {
    let mut env = expanded("dbcheck", json!({})).await;
    let (_operator, port) = env.operator_with_metrics().await;
    // An old pod's connection, named by the documented convention `<app>@<version>`.
    let url = format!("{}&application_name=shop-api%401.0.0", env.pg.url());
    let (old_app, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("old app connects");
    let conn = tokio::spawn(conn);
    old_app
        .simple_query("SELECT 1")
        .await
        .expect("old app query");

    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_phase("users-email-verified", Phase::Contracting, T)
        .await;
    // Status says what the running contract waits on: the old session, by name.
    let m = env
        .wait_migration("users-email-verified", T, "status names the wait", |m| {
            condition(m, "Ready")
                .is_some_and(|(_, _, msg)| msg.contains("waiting for old sessions or transactions"))
        })
        .await;
    let (_, reason, msg) = condition(&m, "Ready").expect("Ready");
    assert_eq!(reason, "Contracting", "{msg}");
    assert!(msg.contains("shop-api@1.0.0"), "names the session: {msg}");
    // How long contract has been held by old sessions, for PhasegateContractHeldByOldSessions.
    let held = format!(
        "phasegate_executor_wait_seconds{{namespace=\"{}\",phase=\"contract\",waiting=\"database-check\"}}",
        env.ns
    );
    wait_metric(port, &held, |v| v >= 1.0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = env
        .migrations()
        .get("users-email-verified")
        .await
        .expect("get");
    assert_eq!(
        m.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Contracting),
        "contract waits for the old session"
    );
    assert!(
        env.column_exists("users", "legacy_flag").await,
        "nothing dropped while an old session is connected"
    );

    drop(old_app);
    let _ = conn.await;
    let m = env
        .wait_phase("users-email-verified", Phase::Succeeded, T)
        .await;
    assert!(!env.column_exists("users", "legacy_flag").await);
    let report = m
        .status
        .and_then(|s| s.contract)
        .and_then(|c| c.message)
        .unwrap_or_default();
    assert!(
        report.contains("old sessions"),
        "the wait is reported: {report}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_secret_is_explained_and_recovers_once_created() {
    let env = Env::new("nosecret").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    let mut spec = migration_spec(crate::EXPAND, json!({}));
    spec["database"]["urlSecretRef"]["name"] = json!("late-db");
    env.create_migration("m", spec).await.expect("create");
    let m = env
        .wait_migration("m", T, "the stuck pod explained", |m| {
            condition(m, "Reconciling").is_some_and(|c| c.2.contains("CreateContainerConfigError"))
        })
        .await;
    let (_, _, msg) = condition(&m, "Reconciling").expect("Reconciling");
    assert!(msg.contains("late-db"), "names the Secret: {msg}");
    assert_eq!(
        m.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Expanding)
    );

    env.create_secret("late-db", &env.pg.url()).await;
    let m = env.wait_phase("m", Phase::AwaitingRollout, T).await;
    assert_eq!(
        m.status.and_then(|s| s.expand).map(|e| e.attempts),
        Some(1),
        "the same attempt went through"
    );
    assert!(env.column_exists("users", "email_verified").await);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_the_api_server_rejects_fails_with_its_reason() {
    let mut env = Env::new("rejected").await;
    let (_operator, port) = env.operator_with_metrics().await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    let mut spec = migration_spec(crate::EXPAND, json!({}));
    // The CRD keeps pod templates opaque; the API server judges them when the Job is created.
    spec["expand"] = json!({"job": {"template": {"spec": {
        "securityContext": {"runAsNonRoot": true, "runAsUser": 70},
        "containers": [{"name": "Not_A_DNS_Label", "image": "postgres:17",
            "securityContext": {"allowPrivilegeEscalation": false}}]}}}});
    env.create_migration("m", spec).await.expect("create");
    let m = env.wait_phase("m", Phase::Failed, T).await;
    let (stalled, _, msg) = condition(&m, "Stalled").expect("Stalled");
    assert_eq!(stalled, "True");
    assert!(
        msg.contains("rejected by the API server") && msg.contains("Not_A_DNS_Label"),
        "{msg}"
    );
    assert!(env.job_names("expand").await.is_empty());
    env.wait_event("m", "JobRejected").await;
    // Counted for the alert PhasegateExecutorJobRefused.
    wait_metric(
        port,
        "phasegate_warning_events_total{reason=\"JobRejected\"}",
        |v| v >= 1.0,
    )
    .await;
    env.cleanup().await;
}
