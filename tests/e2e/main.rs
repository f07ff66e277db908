//! End-to-end suite: the real operator against a real control plane (kube-apiserver, etcd,
//! controller-manager, scheduler; kwok for nodes and pods) and real PostgreSQL servers.
//!
//! Runs only against the cluster named by `PHASEGATE_E2E_KUBECONFIG`; `make e2e` starts a
//! local one. Built only with `--features e2e`.

mod argo;
mod backfill;
mod bench;
mod examples;
mod failures;
mod fence;
mod fleet;
mod gates;
mod gitops;
mod ha;
mod harness;
mod lint;
mod order;
mod plan;
mod plugin;
#[path = "../support/postgres.rs"]
mod postgres;
mod regression;
mod targets;
mod tenant;

use std::time::Duration;

use harness::{condition, Env};
use phasegate::api::Phase;
use serde_json::json;

pub(crate) const T: Duration = Duration::from_secs(90);

pub(crate) async fn seed_users_table(env: &Env) {
    let db = env.pg.client().await;
    db.batch_execute("CREATE TABLE users (id bigserial PRIMARY KEY, email text, legacy_flag boolean); INSERT INTO users (email) VALUES ('a@example.com');")
        .await
        .expect("seed table");
}

pub(crate) fn migration_spec(expand_sql: &str, contract: serde_json::Value) -> serde_json::Value {
    let mut contract = contract;
    if contract.get("sql").is_none() && contract.get("job").is_none() {
        contract["sql"] = json!("ALTER TABLE users DROP COLUMN legacy_flag;");
    }
    json!({
        "appVersion": "2.0.0",
        "database": {"urlSecretRef": {"name": "shop-db", "key": "url"}},
        "expand": {"sql": expand_sql},
        "contract": contract,
        "rollout": {"targets": [{"kind": "Deployment", "name": "shop-api"}]},
        "safety": {"lockTimeout": "1s", "statementTimeout": "30s", "maxLockRetries": 3}
    })
}

pub(crate) const EXPAND: &str = "ALTER TABLE users ADD COLUMN email_verified boolean;";

/// Shared first half: a v1 Deployment and a migration that expands and then waits.
pub(crate) async fn expanded(test: &str, contract: serde_json::Value) -> Env {
    let env = Env::new(test).await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 3, "1.0.0").await;
    env.create_migration("users-email-verified", migration_spec(EXPAND, contract))
        .await
        .expect("create migration");
    let m = env
        .wait_phase("users-email-verified", Phase::AwaitingRollout, T)
        .await;
    assert!(
        env.column_exists("users", "email_verified").await,
        "expand added the column"
    );
    assert!(
        env.column_exists("users", "legacy_flag").await,
        "contract has not run"
    );
    assert!(
        env.job_names("contract").await.is_empty(),
        "no contract Job while v1 runs"
    );
    let (ready, _, _) = condition(&m, "Ready").expect("Ready condition");
    assert_eq!(
        ready, "True",
        "Ready once expand is applied (GitOps gates on it)"
    );
    let (rollout, reason, msg) =
        condition(&m, "RolloutComplete").expect("RolloutComplete condition");
    assert_eq!(
        (rollout.as_str(), reason.as_str()),
        ("False", "AwaitingRollout")
    );
    assert!(
        msg.contains("shop-api") && msg.contains("1.0.0"),
        "says which target waits and why: {msg}"
    );
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn happy_path() {
    let env = expanded("happy", json!({})).await;
    env.set_version("shop-api", "2.0.0", json!({})).await;
    let m = env
        .wait_phase("users-email-verified", Phase::Succeeded, T)
        .await;
    assert!(
        !env.column_exists("users", "legacy_flag").await,
        "contract dropped the old column"
    );
    assert!(env.column_exists("users", "email_verified").await);
    for c in ["Ready", "Expanded", "RolloutComplete", "Contracted"] {
        assert_eq!(
            condition(&m, c).map(|c| c.0).as_deref(),
            Some("True"),
            "{c} is True"
        );
    }
    for c in ["Reconciling", "Stalled"] {
        assert_eq!(
            condition(&m, c).map(|c| c.0).as_deref(),
            Some("False"),
            "{c} is False"
        );
    }
    let status = m.status.clone().expect("status");
    assert_eq!(status.observed_generation, m.metadata.generation);
    assert_eq!(status.targets_ready.as_deref(), Some("1/1"));
    assert_eq!(status.expand.as_ref().map(|e| e.attempts), Some(1));
    assert_eq!(status.contract.as_ref().map(|c| c.attempts), Some(1));
    env.wait_event("users-email-verified", "Succeeded").await;
    let reasons = env.event_reasons("users-email-verified").await;
    for r in ["Expanding", "AwaitingRollout", "Contracting", "Succeeded"] {
        assert!(reasons.iter().any(|x| x == r), "Event {r} in {reasons:?}");
    }
    assert_eq!(
        reasons.iter().filter(|r| *r == "AwaitingRollout").count(),
        1,
        "one Event per transition: {reasons:?}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_rollout_never_contracts() {
    let env = expanded("stalled", json!({})).await;
    // New pods never become ready: the Deployment exceeds its progress deadline.
    env.set_version(
        "shop-api",
        "2.0.0",
        json!({"e2e.phasegate.dev/unready": "true"}),
    )
    .await;
    let m = env
        .wait_migration("users-email-verified", T, "the stall reported", |m| {
            m.status
                .as_ref()
                .and_then(|s| s.targets.first())
                .and_then(|t| t.message.as_deref())
                .is_some_and(|msg| msg.contains("ProgressDeadlineExceeded"))
        })
        .await;
    let status = m.status.expect("status");
    assert_eq!(status.phase, Some(Phase::AwaitingRollout));
    let target = &status.targets[0];
    assert_eq!(target.name, "shop-api");
    assert!(!target.complete);
    assert!(
        target
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("available"),
        "{target:?}"
    );
    assert_eq!(status.targets_ready.as_deref(), Some("0/1"));
    assert!(
        env.job_names("contract").await.is_empty(),
        "no contract Job during a stalled rollout"
    );
    assert!(env.column_exists("users", "legacy_flag").await);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_during_wait_never_contracts() {
    let env = expanded("rollback", json!({"approval": "Manual"})).await;
    env.set_version("shop-api", "2.0.0", json!({})).await;
    let m = env
        .wait_phase("users-email-verified", Phase::AwaitingApproval, T)
        .await;
    assert!(m
        .status
        .as_ref()
        .and_then(|s| s.rollout_completed_at.as_ref())
        .is_some());
    // Roll back to v1, then approve: the rollout gate must hold contract.
    env.set_version("shop-api", "1.0.0", json!({})).await;
    let m = env
        .wait_phase("users-email-verified", Phase::AwaitingRollout, T)
        .await;
    assert!(
        m.status
            .as_ref()
            .and_then(|s| s.rollout_completed_at.as_ref())
            .is_none(),
        "a rollback resets the completed rollout"
    );
    env.wait_rolled_out("shop-api").await;
    env.annotate("users-email-verified", "phasegate.dev/approve", "true")
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let m = env
        .migrations()
        .get("users-email-verified")
        .await
        .expect("get");
    assert_eq!(
        m.status.as_ref().and_then(|s| s.phase),
        Some(Phase::AwaitingRollout)
    );
    assert!(
        env.job_names("contract").await.is_empty(),
        "no contract Job after a rollback"
    );
    assert!(env.column_exists("users", "legacy_flag").await);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_expand_fails_and_contracts_nothing() {
    let env = Env::new("expandfail").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "2.0.0").await;
    env.create_migration(
        "broken",
        migration_spec("ALTER TABLE no_such_table ADD COLUMN x int;", json!({})),
    )
    .await
    .expect("create");
    let m = env.wait_phase("broken", Phase::Failed, T).await;
    let (stalled, reason, msg) = condition(&m, "Stalled").expect("Stalled");
    assert_eq!(
        (stalled.as_str(), reason.as_str()),
        ("True", "ExpandFailed")
    );
    assert!(
        msg.contains("no_such_table") && msg.contains("42P01"),
        "PostgreSQL error in the condition: {msg}"
    );
    assert_eq!(
        condition(&m, "Ready").map(|c| c.0).as_deref(),
        Some("False")
    );
    assert!(env.job_names("contract").await.is_empty());
    assert!(
        env.column_exists("users", "legacy_flag").await,
        "nothing contracted"
    );
    env.wait_event("broken", "ExpandFailed").await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_manifests_are_rejected_by_the_api_server() {
    let env = Env::new("invalid").await;
    let mut both = migration_spec(EXPAND, json!({}));
    both["expand"]["job"] =
        json!({"template": {"spec": {"containers": [{"name": "m", "image": "flyway"}]}}});
    let err = env
        .create_migration("both", both)
        .await
        .expect_err("sql and job together are rejected");
    assert!(
        err.to_string()
            .contains("exactly one of sql or job must be set"),
        "{err}"
    );

    let mut no_target = migration_spec(EXPAND, json!({}));
    no_target["rollout"]["targets"] = json!([{"kind": "Deployment"}]);
    let err = env
        .create_migration("no-target", no_target)
        .await
        .expect_err("a target without name or selector is rejected");
    assert!(
        err.to_string().contains("exactly one of name or selector"),
        "{err}"
    );

    let mut bad_kind = migration_spec(EXPAND, json!({}));
    bad_kind["rollout"]["targets"] = json!([{"kind": "CronJob", "name": "x"}]);
    let err = env
        .create_migration("bad-kind", bad_kind)
        .await
        .expect_err("unsupported kind is rejected");
    assert!(err.to_string().contains("Unsupported value"), "{err}");

    env.create_migration("ok", migration_spec(EXPAND, json!({})))
        .await
        .expect("a valid migration is accepted");
    let patch = json!({"spec": {"expand": {"sql": "ALTER TABLE users ADD COLUMN other int;"}}});
    let err = env
        .migrations()
        .patch(
            "ok",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect_err("expand is immutable");
    assert!(err.to_string().contains("expand is immutable"), "{err}");
    let patch = json!({"spec": {"appVersion": "3.0.0"}});
    let err = env
        .migrations()
        .patch(
            "ok",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect_err("appVersion is immutable");
    assert!(err.to_string().contains("appVersion is immutable"), "{err}");
    let patch = json!({"spec": {"contract": {"delay": "5m"}}});
    env.migrations()
        .patch(
            "ok",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("contract.delay may change");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_restart_resumes_without_rerunning_expand() {
    let mut env = expanded("restart", json!({})).await;
    env.kill_operator().await;
    // The world moves on while no operator runs.
    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_rolled_out("shop-api").await;
    env.start_operator();
    let m = env
        .wait_phase("users-email-verified", Phase::Succeeded, T)
        .await;
    assert_eq!(
        m.status
            .as_ref()
            .and_then(|s| s.expand.as_ref())
            .map(|e| e.attempts),
        Some(1),
        "expand ran once"
    );
    assert_eq!(env.job_names("expand").await.len(), 1, "one expand Job");
    assert!(!env.column_exists("users", "legacy_flag").await);
    env.cleanup().await;
}
