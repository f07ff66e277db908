//! Regressions seen from durable facts (issue 22): a rollback and a roll-forward while the
//! operator is down leave the targets looking as complete as before; the Deployment's
//! ReplicaSet revisions still tell, and the soak starts again. (The backfill case is in
//! backfill.rs.)

use std::time::Duration;

use kube::api::{ApiResource, DynamicObject};
use kube::Api;
use phasegate::api::{DatabaseMigration, Phase};
use serde_json::json;

use crate::harness::{wait_until, Env};
use crate::{migration_spec, seed_users_table, EXPAND, T};

/// The migration's status as the API server stores it (untyped).
pub async fn raw_status(env: &Env, name: &str) -> serde_json::Value {
    let ar = ApiResource::erase::<DatabaseMigration>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &ar);
    let m = api.get(name).await.expect("migration");
    m.data.get("status").cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_while_the_operator_was_down_restarts_the_soak() {
    let mut env = Env::new("soak-unseen").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 2, "1.0.0").await;
    const NAME: &str = "users-email-verified";
    const SOAK: u64 = 30;
    env.create_migration(
        NAME,
        migration_spec(EXPAND, json!({"delay": format!("{SOAK}s")})),
    )
    .await
    .expect("create migration");
    env.wait_phase(NAME, Phase::AwaitingRollout, T).await;
    env.set_version("shop-api", "2.0.0", json!({})).await;
    let m = env.wait_phase(NAME, Phase::Soaking, T).await;
    let first_epoch = m
        .status
        .as_ref()
        .and_then(|s| s.rollout_completed_at.clone())
        .expect("epoch")
        .0;

    // The operator is killed; behind its back the app goes back to 1.0.0 and forward again.
    env.kill_operator().await;
    env.set_version("shop-api", "1.0.0", json!({})).await;
    env.wait_rolled_out("shop-api").await;
    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_rolled_out("shop-api").await;
    // The first soak is over by the time it comes back.
    let soaked = first_epoch
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
            SOAK as i64 + 1,
        ))
        .expect("time");
    wait_until(
        Duration::from_secs(SOAK + 10),
        "the first soak to be over",
        || async { k8s_openapi::jiff::Timestamp::now() > soaked },
    )
    .await;
    let back = k8s_openapi::jiff::Timestamp::now();
    env.start_operator();

    // It soaks again, from the new epoch (no contract meanwhile).
    let m = env
        .wait_migration(NAME, T, "a new rollout epoch, or contract", |m| {
            m.status.as_ref().is_some_and(|s| {
                s.rollout_completed_at
                    .as_ref()
                    .is_some_and(|t| t.0 != first_epoch)
                    || matches!(s.phase, Some(Phase::Contracting | Phase::Succeeded))
            })
        })
        .await;
    let status = m.status.clone().expect("status");
    assert_eq!(
        status.phase,
        Some(Phase::Soaking),
        "the soak restarts after a rollback seen in the rollout history: {status:?}"
    );
    let second_epoch = status.rollout_completed_at.clone().expect("epoch").0;
    assert!(
        second_epoch.duration_since(back).as_secs() >= -2,
        "the new epoch ({second_epoch}) began when the operator came back ({back})"
    );
    assert!(
        env.job_names("contract").await.is_empty(),
        "no contract Job inside the new soak"
    );
    env.wait_event(NAME, "RegressionInHistory").await;
    let raw = raw_status(&env, NAME).await;
    let why = raw["lastRegression"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains("rollout history") && why.contains("version 1.0.0"),
        "status.lastRegression: {raw}"
    );
    // The revision the new epoch began at is recorded (the ReplicaSet of 2.0.0, re-used: 4).
    assert_eq!(
        raw["rolloutRevisions"],
        json!([{"kind": "Deployment", "name": "shop-api", "uid": raw["rolloutRevisions"][0]["uid"], "revision": 4}]),
        "{raw}"
    );

    // Then contract, once the new soak is over.
    let m = env
        .wait_phase(NAME, Phase::Succeeded, Duration::from_secs(SOAK + 60))
        .await;
    let started = m
        .status
        .as_ref()
        .and_then(|s| s.contract.as_ref())
        .and_then(|c| c.started_at.clone())
        .expect("contract started")
        .0;
    assert!(
        started.duration_since(second_epoch).as_secs() >= SOAK as i64,
        "contract started {}s into the new soak",
        started.duration_since(second_epoch).as_secs()
    );
    env.cleanup().await;
}

/// The same with a StatefulSet: its history is in ControllerRevisions (`revision`, the pod
/// template in `data`), which its controller re-uses and renumbers on a rollback too.
#[tokio::test(flavor = "multi_thread")]
async fn a_statefulset_rolled_back_while_the_operator_was_down_restarts_the_soak() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use kube::api::{Patch, PatchParams, PostParams};
    let mut env = Env::new("sts-unseen").await;
    seed_users_table(&env).await;
    let api: Api<StatefulSet> = Api::namespaced(env.client.clone(), &env.ns);
    let template = |v: &str| {
        json!({
            "metadata": {"labels": {"app": "ledger", "app.kubernetes.io/version": v}},
            "spec": {"containers": [{"name": "api", "image": format!("shop/ledger:{v}")}]}
        })
    };
    let sts = json!({"metadata": {"name": "ledger"}, "spec": {
        "replicas": 2, "serviceName": "ledger", "selector": {"matchLabels": {"app": "ledger"}},
        "template": template("1.0.0")}});
    api.create(
        &PostParams::default(),
        &serde_json::from_value(sts).expect("sts"),
    )
    .await
    .expect("create sts");
    let set_version = |v: &'static str| {
        let api = api.clone();
        let patch = json!({"spec": {"template": template(v)}});
        async move {
            api.patch("ledger", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("update sts");
            wait_until(T, &format!("StatefulSet ledger rolled out {v}"), || async {
                let Ok(s) = api.get("ledger").await else {
                    return false;
                };
                let st = s.status.unwrap_or_default();
                st.observed_generation == s.metadata.generation
                    && st.updated_replicas == Some(2)
                    && st.ready_replicas == Some(2)
                    && st.current_revision == st.update_revision
            })
            .await;
        }
    };
    const NAME: &str = "m";
    const SOAK: u64 = 20;
    let mut spec = migration_spec(EXPAND, json!({"delay": format!("{SOAK}s")}));
    spec["rollout"]["targets"] = json!([{"kind": "StatefulSet", "name": "ledger"}]);
    env.create_migration(NAME, spec).await.expect("create");
    env.wait_phase(NAME, Phase::AwaitingRollout, T).await;
    set_version("2.0.0").await;
    let m = env.wait_phase(NAME, Phase::Soaking, T).await;
    let first_epoch = m
        .status
        .as_ref()
        .and_then(|s| s.rollout_completed_at.clone())
        .expect("epoch")
        .0;
    env.kill_operator().await;
    set_version("1.0.0").await;
    set_version("2.0.0").await;
    let soaked = first_epoch
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
            SOAK as i64 + 1,
        ))
        .expect("time");
    wait_until(
        Duration::from_secs(SOAK + 10),
        "the first soak to be over",
        || async { k8s_openapi::jiff::Timestamp::now() > soaked },
    )
    .await;
    env.start_operator();
    let m = env
        .wait_migration(NAME, T, "a new rollout epoch, or contract", |m| {
            m.status.as_ref().is_some_and(|s| {
                s.rollout_completed_at
                    .as_ref()
                    .is_some_and(|t| t.0 != first_epoch)
                    || matches!(s.phase, Some(Phase::Contracting | Phase::Succeeded))
            })
        })
        .await;
    let status = m.status.clone().expect("status");
    assert_eq!(status.phase, Some(Phase::Soaking), "{status:?}");
    let raw = raw_status(&env, NAME).await;
    let why = raw["lastRegression"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains("StatefulSet ledger: revision 3") && why.contains("version 1.0.0"),
        "status.lastRegression: {raw}"
    );
    assert_eq!(raw["rolloutRevisions"][0]["revision"], json!(4), "{raw}");
    env.wait_phase(NAME, Phase::Succeeded, Duration::from_secs(SOAK + 60))
        .await;
    env.cleanup().await;
}

/// The commit grant reads the rollout history too: a contract executor that waited (behind a
/// reader) through a rollback and a roll-forward while the operator was down gets no grant
/// from the operator that comes back, although the targets look complete and the first soak
/// is over; the attempt is stopped, the soak restarts, and a new attempt contracts after it.
#[tokio::test(flavor = "multi_thread")]
async fn a_contract_that_waited_through_an_unseen_rollback_never_commits() {
    const NAME: &str = "users-email-verified";
    const SOAK: u64 = 15;
    let mut env = crate::expanded("grant-unseen", json!({"delay": format!("{SOAK}s")})).await;
    // An operator whose grant port survives its restart (executors keep the URL they got).
    env.kill_operator().await;
    let grant = format!("127.0.0.1:{}", crate::harness::free_port());
    let mut operator = env.spawn_operator("op-a", &["--grant-addr", &grant]);
    let db = env.pg.client().await;
    let reader = env.pg.client().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM users;")
        .await
        .expect("reader transaction");
    env.set_version("shop-api", "2.0.0", json!({})).await;
    let m = env
        .wait_phase(NAME, Phase::Contracting, Duration::from_secs(SOAK + 60))
        .await;
    let first_epoch = m
        .status
        .and_then(|s| s.rollout_completed_at)
        .expect("epoch")
        .0;
    env.wait_migration(NAME, T, "contract waits behind the reader", |m| {
        crate::harness::condition(m, "Ready")
            .is_some_and(|(_, _, msg)| msg.contains("waiting for an older transaction's lock"))
    })
    .await;

    // The operator dies; the app goes back to 1.0.0 and forward again; the reader ends.
    operator.kill().await.expect("kill operator");
    // The last grant it issued expires (3 s): what a rollback inside that window can do is
    // the fence's measured race (guarantees.md), not this test's.
    tokio::time::sleep(Duration::from_secs(4)).await;
    env.set_version("shop-api", "1.0.0", json!({})).await;
    env.wait_rolled_out("shop-api").await;
    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_rolled_out("shop-api").await;
    reader.batch_execute("COMMIT").await.expect("commit reader");
    drop(reader);
    let back = k8s_openapi::jiff::Timestamp::now();
    let _operator = env.spawn_operator("op-b", &["--grant-addr", &grant]);

    // Attempt 1 never commits: the new soak holds contract.
    let m = env
        .wait_migration(NAME, T, "a new rollout epoch, or contract applied", |m| {
            m.status.as_ref().is_some_and(|s| {
                s.rollout_completed_at
                    .as_ref()
                    .is_some_and(|t| t.0 != first_epoch)
                    || s.phase == Some(Phase::Succeeded)
            })
        })
        .await;
    let status = m.status.clone().expect("status");
    assert_ne!(
        status.phase,
        Some(Phase::Succeeded),
        "contract committed after a rollback behind the operator's back: {status:?}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let within_soak = k8s_openapi::jiff::Timestamp::now()
        .duration_since(back)
        .as_secs()
        < SOAK as i64;
    let exists: bool = db
        .query_one(
            "SELECT count(*) = 1 FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'legacy_flag'",
            &[],
        )
        .await
        .expect("column")
        .get(0);
    if within_soak {
        assert!(exists, "the DROP committed inside the new soak");
    }
    let raw = raw_status(&env, NAME).await;
    let why = raw["lastRegression"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("rollout history"), "{raw}");

    // After the new soak, a new attempt contracts.
    let m = env
        .wait_phase(NAME, Phase::Succeeded, Duration::from_secs(SOAK + 90))
        .await;
    let status = m.status.expect("status");
    let c = status.contract.expect("contract record");
    let epoch = status.rollout_completed_at.expect("epoch").0;
    assert!(c.attempts >= 2, "attempt 1 was stopped: {c:?}");
    assert!(
        c.started_at
            .expect("started")
            .0
            .duration_since(epoch)
            .as_secs()
            >= SOAK as i64,
        "the new attempt started after the new soak"
    );
    assert!(!env.column_exists("users", "legacy_flag").await);
    env.cleanup().await;
}

/// The same with a DaemonSet, selected by label (its ControllerRevisions too).
#[tokio::test(flavor = "multi_thread")]
async fn a_daemonset_rolled_back_while_the_operator_was_down_restarts_the_soak() {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use kube::api::{Patch, PatchParams, PostParams};
    let mut env = Env::new("ds-unseen").await;
    seed_users_table(&env).await;
    let api: Api<DaemonSet> = Api::namespaced(env.client.clone(), &env.ns);
    let template = |v: &str| {
        json!({
            "metadata": {"labels": {"app": "agent", "app.kubernetes.io/version": v}},
            "spec": {"containers": [{"name": "api", "image": format!("shop/agent:{v}")}]}
        })
    };
    let ds = json!({"metadata": {"name": "agent", "labels": {"app.kubernetes.io/part-of": "shop"}},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": template("1.0.0")}});
    api.create(
        &PostParams::default(),
        &serde_json::from_value(ds).expect("ds"),
    )
    .await
    .expect("create ds");
    let set_version = |v: &'static str| {
        let api = api.clone();
        let patch = json!({"spec": {"template": template(v)}});
        async move {
            api.patch("agent", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("update ds");
            wait_until(T, &format!("DaemonSet agent rolled out {v}"), || async {
                let Ok(d) = api.get("agent").await else {
                    return false;
                };
                let st = d.status.unwrap_or_default();
                st.observed_generation == d.metadata.generation
                    && st.desired_number_scheduled > 0
                    && st.updated_number_scheduled == Some(st.desired_number_scheduled)
                    && st.number_available == Some(st.desired_number_scheduled)
                    && st.current_number_scheduled == st.desired_number_scheduled
            })
            .await;
        }
    };
    const NAME: &str = "m";
    const SOAK: u64 = 20;
    let mut spec = migration_spec(EXPAND, json!({"delay": format!("{SOAK}s")}));
    spec["rollout"]["targets"] = json!([{"kind": "DaemonSet", "selector": {"matchLabels": {"app.kubernetes.io/part-of": "shop"}}}]);
    env.create_migration(NAME, spec).await.expect("create");
    env.wait_phase(NAME, Phase::AwaitingRollout, T).await;
    set_version("2.0.0").await;
    let m = env.wait_phase(NAME, Phase::Soaking, T).await;
    let first_epoch = m
        .status
        .as_ref()
        .and_then(|s| s.rollout_completed_at.clone())
        .expect("epoch")
        .0;
    env.kill_operator().await;
    set_version("1.0.0").await;
    set_version("2.0.0").await;
    let soaked = first_epoch
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
            SOAK as i64 + 1,
        ))
        .expect("time");
    wait_until(
        Duration::from_secs(SOAK + 10),
        "the first soak to be over",
        || async { k8s_openapi::jiff::Timestamp::now() > soaked },
    )
    .await;
    env.start_operator();
    let m = env
        .wait_migration(NAME, T, "a new rollout epoch, or contract", |m| {
            m.status.as_ref().is_some_and(|s| {
                s.rollout_completed_at
                    .as_ref()
                    .is_some_and(|t| t.0 != first_epoch)
                    || matches!(s.phase, Some(Phase::Contracting | Phase::Succeeded))
            })
        })
        .await;
    let status = m.status.clone().expect("status");
    assert_eq!(status.phase, Some(Phase::Soaking), "{status:?}");
    let raw = raw_status(&env, NAME).await;
    let why = raw["lastRegression"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains("DaemonSet agent: revision 3") && why.contains("version 1.0.0"),
        "status.lastRegression: {raw}"
    );
    assert_eq!(raw["rolloutRevisions"][0]["revision"], json!(4), "{raw}");
    env.wait_phase(NAME, Phase::Succeeded, Duration::from_secs(SOAK + 60))
        .await;
    env.cleanup().await;
}
