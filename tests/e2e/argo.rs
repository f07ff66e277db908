//! Argo Rollouts targets, judged against the real Argo Rollouts controller (built from its Go
//! module by `hack/argo-rollouts.sh`; `make e2e` sets PHASEGATE_ARGO_ROLLOUTS_BIN and
//! PHASEGATE_ARGO_ROLLOUTS_CRDS). Pods are kwok's, as everywhere in this suite.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use phasegate::api::Phase;
use phasegate::controller::argo::Rollout;
use serde_json::json;

use crate::harness::{spawn, wait_crd_established, wait_until, Env};
use crate::{migration_spec, seed_users_table, EXPAND, T};

fn from_env(var: &str) -> PathBuf {
    PathBuf::from(std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the e2e suite with `make e2e` (it builds the Argo Rollouts controller)")
    }))
}

/// The Argo Rollouts CRDs, installed before the test's operator starts (it looks for the
/// Rollout API once, at start).
async fn install_argo_crds() {
    let client = crate::harness::client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for entry in std::fs::read_dir(from_env("PHASEGATE_ARGO_ROLLOUTS_CRDS")).expect("CRD dir") {
        let path = entry.expect("CRD file").path();
        let text = std::fs::read_to_string(&path).expect("read CRD");
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("parse CRD");
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("phasegate-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply Argo Rollouts CRD");
    }
    wait_crd_established(&crds, "rollouts.argoproj.io").await;
}

fn rollout(version: &str, steps: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "shop-api"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "shop-api"}},
            "template": {
                "metadata": {"labels": {"app": "shop-api", "app.kubernetes.io/version": version}},
                "spec": {"containers": [{"name": "api", "image": format!("shop/api:{version}")}]}
            },
            "strategy": {"canary": {"steps": steps}}
        }
    })
}

/// A namespace with the operator, the Argo Rollouts controller (namespaced) and a Rollout at
/// 1.0.0 targeted by a migration that expanded and waits.
async fn rolled_out_v1(
    test: &str,
    steps: serde_json::Value,
) -> (Env, Api<Rollout>, tokio::process::Child) {
    install_argo_crds().await;
    let env = Env::new(test).await;
    let ns = env.ns.clone();
    let controller = spawn(
        &env.kubeconfig().to_path_buf(),
        &from_env("PHASEGATE_ARGO_ROLLOUTS_BIN")
            .display()
            .to_string(),
        &[
            "--namespaced",
            "--namespace",
            &ns,
            "--leader-elect=false",
            "--healthzPort",
            "0",
            "--metricsPort",
            "0",
        ],
        &env.logs.join(format!("{ns}-argo-rollouts.log")),
    );
    seed_users_table(&env).await;
    let rollouts: Api<Rollout> = Api::namespaced(env.client.clone(), &ns);
    rollouts
        .patch(
            "shop-api",
            &PatchParams::apply("phasegate-e2e"),
            &Patch::Apply(&rollout("1.0.0", steps)),
        )
        .await
        .expect("create Rollout");
    // 1.0.0 must be the Rollout's stable revision before the test moves on: Argo Rollouts skips
    // the canary steps for a change made while its first revision is still rolling out (there
    // is no stable ReplicaSet to fall back on), and 2.0.0 would then be fully promoted at once.
    let api = rollouts.clone();
    wait_until(T, "Rollout shop-api stable at 1.0.0", || {
        let api = api.clone();
        async move {
            let Ok(r) = api.get("shop-api").await else {
                return false;
            };
            let s = r.status.unwrap_or_default();
            s.stable_rs.is_some()
                && s.stable_rs == s.current_pod_hash
                && s.available_replicas == Some(2)
        }
    })
    .await;
    let mut spec = migration_spec(EXPAND, json!({}));
    spec["rollout"]["targets"] = json!([{"kind": "Rollout", "name": "shop-api"}]);
    env.create_migration("m", spec).await.expect("create");
    env.wait_phase("m", Phase::AwaitingRollout, T).await;
    (env, rollouts, controller)
}

async fn set_version(rollouts: &Api<Rollout>, version: &str, steps: serde_json::Value) {
    rollouts
        .patch(
            "shop-api",
            &PatchParams::apply("phasegate-e2e"),
            &Patch::Apply(&rollout(version, steps)),
        )
        .await
        .expect("update Rollout");
}

fn target_message(m: &phasegate::api::DatabaseMigration) -> String {
    m.status
        .as_ref()
        .and_then(|s| s.targets.first())
        .and_then(|t| t.message.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_contracts_only_after_full_promotion() {
    // A canary that stops at 50 % until promoted.
    let steps = json!([{"setWeight": 50}, {"pause": {}}]);
    let (env, rollouts, _controller) = rolled_out_v1("argo-canary", steps.clone()).await;
    set_version(&rollouts, "2.0.0", steps).await;
    // Paused at the canary step: a 2.0.0 pod and a 1.0.0 pod serve; no contract. The Argo
    // controller records the pause a moment after the new ReplicaSet exists, so the message
    // first says only "not fully promoted".
    env.wait_migration("m", T, "the paused canary step is named", |m| {
        let msg = target_message(m);
        msg.contains("not fully promoted") && msg.contains("paused")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = env.migrations().get("m").await.expect("get");
    assert_eq!(m.status.and_then(|s| s.phase), Some(Phase::AwaitingRollout));
    assert!(
        env.job_names("contract").await.is_empty(),
        "no contract during the canary"
    );

    // Promote as `kubectl argo rollouts promote` does: unpause.
    rollouts
        .patch_status(
            "shop-api",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"pauseConditions": null}})),
        )
        .await
        .expect("promote");
    let m = env.wait_phase("m", Phase::Succeeded, T).await;
    let t = m
        .status
        .and_then(|s| s.targets.first().cloned())
        .expect("target");
    assert_eq!((t.kind.as_str(), t.complete), ("Rollout", true));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aborted_rollout_keeps_contract_closed() {
    let steps = json!([{"setWeight": 50}, {"pause": {}}]);
    let (env, rollouts, _controller) = rolled_out_v1("argo-abort", steps.clone()).await;
    set_version(&rollouts, "2.0.0", steps).await;
    env.wait_migration("m", T, "the canary step is named", |m| {
        target_message(m).contains("not fully promoted")
    })
    .await;
    // Abort as `kubectl argo rollouts abort` does: the controller goes back to the stable pods.
    rollouts
        .patch_status(
            "shop-api",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"abort": true}})),
        )
        .await
        .expect("abort");
    env.wait_migration("m", T, "the abort is named", |m| {
        target_message(m).contains("rollout aborted")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = env.migrations().get("m").await.expect("get");
    assert_eq!(m.status.and_then(|s| s.phase), Some(Phase::AwaitingRollout));
    assert!(
        env.job_names("contract").await.is_empty(),
        "no contract after an abort"
    );
    assert!(env.column_exists("users", "legacy_flag").await);
    env.cleanup().await;
}
