//! Target kinds and edge cases: each has a defined outcome, and none is a vacuous success.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;
use phasegate::api::{DatabaseMigration, Phase};
use serde_json::json;

use crate::harness::{condition, wait_until, Env};
use crate::{migration_spec, seed_users_table, EXPAND, T};

fn with_targets(targets: serde_json::Value) -> serde_json::Value {
    let mut spec = migration_spec(EXPAND, json!({}));
    spec["rollout"]["targets"] = targets;
    spec
}

fn pod_template(app: &str, version: &str) -> serde_json::Value {
    json!({
        "metadata": {"labels": {"app": app, "app.kubernetes.io/version": version}},
        "spec": {"containers": [{"name": "api", "image": format!("shop/{app}:{version}")}]}
    })
}

fn first_target_message(m: &DatabaseMigration) -> String {
    m.status
        .as_ref()
        .and_then(|s| s.targets.first())
        .and_then(|t| t.message.clone())
        .unwrap_or_default()
}

async fn wait_target_message(env: &Env, name: &str, needle: &str) -> DatabaseMigration {
    env.wait_migration(
        name,
        T,
        &format!("target message containing {needle:?}"),
        |m| first_target_message(m).contains(needle),
    )
    .await
}

/// Wait a little and prove contract has not started.
async fn assert_no_contract(env: &Env) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        env.job_names("contract").await.is_empty(),
        "contract must not start"
    );
    assert!(env.column_exists("users", "legacy_flag").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn statefulset_target_by_name() {
    let env = Env::new("sts").await;
    seed_users_table(&env).await;
    let api: Api<StatefulSet> = Api::namespaced(env.client.clone(), &env.ns);
    let sts = json!({"metadata": {"name": "ledger"}, "spec": {
        "replicas": 2, "serviceName": "ledger", "selector": {"matchLabels": {"app": "ledger"}},
        "template": pod_template("ledger", "1.0.0")}});
    api.create(
        &PostParams::default(),
        &serde_json::from_value(sts).expect("sts"),
    )
    .await
    .expect("create sts");
    env.create_migration(
        "m",
        with_targets(json!([{"kind": "StatefulSet", "name": "ledger"}])),
    )
    .await
    .expect("create");
    let m = env.wait_phase("m", Phase::AwaitingRollout, T).await;
    assert!(
        first_target_message(&m).contains("StatefulSet ledger"),
        "{}",
        first_target_message(&m)
    );
    let patch = json!({"spec": {"template": pod_template("ledger", "2.0.0")}});
    api.patch("ledger", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("update sts");
    let m = env.wait_phase("m", Phase::Succeeded, T).await;
    assert_eq!(
        m.status
            .and_then(|s| s.targets.first().cloned())
            .map(|t| (t.kind, t.complete)),
        Some(("StatefulSet".into(), true))
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn daemonset_target_by_selector() {
    let env = Env::new("ds").await;
    seed_users_table(&env).await;
    let api: Api<DaemonSet> = Api::namespaced(env.client.clone(), &env.ns);
    let ds = json!({"metadata": {"name": "agent", "labels": {"app.kubernetes.io/part-of": "shop"}}, "spec": {
        "selector": {"matchLabels": {"app": "agent"}}, "template": pod_template("agent", "1.0.0")}});
    api.create(
        &PostParams::default(),
        &serde_json::from_value(ds).expect("ds"),
    )
    .await
    .expect("create ds");
    let spec = with_targets(
        json!([{"kind": "DaemonSet", "selector": {"matchLabels": {"app.kubernetes.io/part-of": "shop"}}}]),
    );
    env.create_migration("m", spec).await.expect("create");
    let m = env.wait_phase("m", Phase::AwaitingRollout, T).await;
    assert!(
        first_target_message(&m).contains("DaemonSet agent runs version 1.0.0"),
        "{}",
        first_target_message(&m)
    );
    let patch = json!({"spec": {"template": pod_template("agent", "2.0.0")}});
    api.patch("agent", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("update ds");
    let m = env.wait_phase("m", Phase::Succeeded, T).await;
    let t = m
        .status
        .and_then(|s| s.targets.first().cloned())
        .expect("target");
    assert_eq!(
        (t.kind.as_str(), t.name.as_str(), t.replicas),
        ("DaemonSet", "agent", 2),
        "one pod per kwok node"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_replicas_completes_on_the_template_version() {
    let env = Env::new("zero").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 0, "1.0.0").await;
    env.create_migration("m", migration_spec(EXPAND, json!({})))
        .await
        .expect("create");
    let m = env.wait_phase("m", Phase::AwaitingRollout, T).await;
    assert!(first_target_message(&m).contains("runs version 1.0.0"));
    assert_no_contract(&env).await;
    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_phase("m", Phase::Succeeded, T).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn paused_rollout_waits_and_says_so() {
    let env = Env::new("paused").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 2, "1.0.0").await;
    env.deployments()
        .patch(
            "shop-api",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"paused": true}})),
        )
        .await
        .expect("pause");
    env.create_migration("m", migration_spec(EXPAND, json!({})))
        .await
        .expect("create");
    env.wait_phase("m", Phase::AwaitingRollout, T).await;
    env.set_version("shop-api", "2.0.0", json!({})).await;
    wait_target_message(&env, "m", "rollout is paused").await;
    assert_no_contract(&env).await;
    env.deployments()
        .patch(
            "shop-api",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"paused": false}})),
        )
        .await
        .expect("resume");
    env.wait_phase("m", Phase::Succeeded, T).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_target_blocks_contract() {
    let env = Env::new("deleted").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    env.create_migration("m", migration_spec(EXPAND, json!({})))
        .await
        .expect("create");
    env.wait_phase("m", Phase::AwaitingRollout, T).await;
    env.deployments()
        .delete("shop-api", &DeleteParams::foreground())
        .await
        .expect("delete");
    let m = wait_target_message(&env, "m", "not found").await;
    assert_eq!(
        m.status
            .as_ref()
            .and_then(|s| s.targets_ready.clone())
            .as_deref(),
        Some("0/1")
    );
    // A missing target looks different from a wait: a condition and a Warning Event.
    let m = env
        .wait_migration("m", T, "TargetsFound False", |m| {
            condition(m, "TargetsFound").is_some_and(|c| c.0 == "False")
        })
        .await;
    let (_, reason, msg) = condition(&m, "TargetsFound").expect("TargetsFound");
    assert_eq!(reason, "TargetNotFound");
    assert!(msg.contains("shop-api not found"), "{msg}");
    // The Event is published right after the status write.
    wait_until(T, "a TargetNotFound Event", || async {
        env.event_reasons("m")
            .await
            .iter()
            .any(|r| r == "TargetNotFound")
    })
    .await;
    assert_no_contract(&env).await;
    // Recreated at the new version, the target completes.
    env.create_deployment("shop-api", 1, "2.0.0").await;
    env.wait_phase("m", Phase::Succeeded, T).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unlabelled_target_and_empty_selector_never_complete() {
    let env = Env::new("nolabel").await;
    seed_users_table(&env).await;
    // A Deployment whose pod template carries no version label at all.
    let d = json!({"metadata": {"name": "legacy"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "legacy"}},
        "template": {"metadata": {"labels": {"app": "legacy"}}, "spec": {"containers": [{"name": "api", "image": "legacy:latest"}]}}}});
    env.deployments()
        .create(
            &PostParams::default(),
            &serde_json::from_value(d).expect("deployment"),
        )
        .await
        .expect("create");
    env.wait_rolled_out("legacy").await;
    env.create_migration(
        "unlabelled",
        with_targets(json!([{"kind": "Deployment", "name": "legacy"}])),
    )
    .await
    .expect("create");
    wait_target_message(&env, "unlabelled", "carries no version").await;
    let mut nothing = with_targets(
        json!([{"kind": "Deployment", "selector": {"matchLabels": {"app": "ghost"}}}]),
    );
    nothing["expand"]["sql"] = json!("ALTER TABLE users ADD COLUMN ghost_flag boolean;");
    env.create_migration("nothing", nothing)
        .await
        .expect("create");
    let m = wait_target_message(&env, "nothing", "matches no Deployment").await;
    assert_eq!(
        m.status.as_ref().and_then(|s| s.phase),
        Some(Phase::AwaitingRollout)
    );
    assert_no_contract(&env).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn version_from_image_tag() {
    let env = Env::new("imagetag").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 2, "1.0.0").await;
    let mut spec = migration_spec(EXPAND, json!({}));
    spec["rollout"]["versionFrom"] = json!({"image": {"container": "api"}});
    env.create_migration("m", spec).await.expect("create");
    let m = env.wait_phase("m", Phase::AwaitingRollout, T).await;
    assert_eq!(
        m.status
            .as_ref()
            .and_then(|s| s.targets.first())
            .and_then(|t| t.version.clone())
            .as_deref(),
        Some("1.0.0"),
        "read from shop/api:1.0.0"
    );
    // Only the image moves: the version label stays at 1.0.0.
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "api", "image": "shop/api:2.0.0"}]}}}});
    env.deployments()
        .patch(
            "shop-api",
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await
        .expect("new image");
    env.wait_phase("m", Phase::Succeeded, T).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn git_sha_versions_with_not_previous_order() {
    let env = Env::new("sha-order").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 2, "9f8e7d6").await;
    let mut spec = migration_spec(EXPAND, json!({}));
    spec["appVersion"] = json!("a1b2c3d");
    spec["rollout"]["versionOrder"] = json!("NotPrevious");
    env.create_migration("m", spec).await.expect("create");
    let m = env.wait_phase("m", Phase::AwaitingRollout, T).await;
    assert_eq!(
        m.status.and_then(|s| s.previous_versions),
        Some(vec!["9f8e7d6".to_string()]),
        "what ran before the migration is recorded"
    );
    // The build that shipped is a later one than appVersion names: any version not seen
    // before counts as new.
    env.set_version("shop-api", "0c0ffee", json!({})).await;
    env.wait_phase("m", Phase::Succeeded, T).await;
    env.cleanup().await;
}
