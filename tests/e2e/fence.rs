//! The contract fence: contract commits only while every gate still holds, and the normal
//! situations that must still contract do.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::ResourceExt;
use phasegate::api::Phase;
use serde_json::json;

use crate::harness::{condition, wait_until, Env};
use crate::{expanded, migration_spec, seed_users_table, EXPAND, T};

const NAME: &str = "users-email-verified";

/// Rows the ledger holds for `phase` of any migration.
async fn ledger_rows(env: &Env, phase: &str) -> i64 {
    let db = env.pg.client().await;
    let exists: bool = db
        .query_one("SELECT to_regclass('phasegate.ledger') IS NOT NULL", &[])
        .await
        .expect("ledger exists?")
        .get(0);
    if !exists {
        return 0;
    }
    db.query_one(
        "SELECT count(*) FROM phasegate.ledger WHERE phase = $1 AND status = 'applied'",
        &[&phase],
    )
    .await
    .expect("ledger rows")
    .get(0)
}

/// A session with an open transaction that has read `users`: contract's DROP waits for it
/// outside the lock queue (and the database check waits for a transaction older than the
/// rollout), which holds the contract executor for as long as the test likes.
async fn open_reader(env: &Env) -> tokio_postgres::Client {
    let db = env.pg.client().await;
    db.batch_execute("BEGIN; SELECT count(*) FROM users;")
        .await
        .expect("reader transaction");
    db
}

/// How long after `since` a line containing `needle` was logged by `process` ("runner" or
/// "operator-1") of this test.
async fn logged_after(
    env: &Env,
    process: &str,
    needle: &str,
    since: std::time::SystemTime,
) -> Option<Duration> {
    let log = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("e2e-logs")
        .join(format!("{}-{process}.log", env.ns));
    for _ in 0..50 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let line = text.lines().find(|l| l.contains(needle));
        if let Some(line) = line {
            let plain: String = strip_ansi(line);
            let stamp = plain.split_whitespace().next()?;
            let at: k8s_openapi::jiff::Timestamp = stamp.parse().ok()?;
            let since = k8s_openapi::jiff::Timestamp::try_from(since).ok()?;
            return Duration::try_from(at.duration_since(since)).ok();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_while_contract_waits_never_commits() {
    let env = expanded("fence-rollback", json!({})).await;
    let reader = open_reader(&env).await;

    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_phase(NAME, Phase::Contracting, T).await;
    // The first contract Job carries the rollout completion time for the database check.
    let jobs = env.jobs();
    let contract_jobs = env.job_names("contract").await;
    assert_eq!(
        contract_jobs.len(),
        1,
        "one contract Job: {contract_jobs:?}"
    );
    let job = jobs.get(&contract_jobs[0]).await.expect("contract Job");
    let env_names: Vec<String> = job
        .spec
        .and_then(|s| s.template.spec)
        .map(|ps| ps.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(
        env_names
            .iter()
            .any(|n| n == "PHASEGATE_ROLLOUT_COMPLETED_AT"),
        "contract Job gets the rollout completion time: {env_names:?}"
    );
    // The executor waits behind the reader, and status says so.
    let m = env
        .wait_migration(NAME, T, "status names the lock wait", |m| {
            condition(m, "Ready")
                .is_some_and(|(_, _, msg)| msg.contains("waiting for an older transaction's lock"))
        })
        .await;
    let (_, _, msg) = condition(&m, "Ready").expect("Ready");
    assert!(msg.contains("users"), "names the table: {msg}");
    assert!(env.column_exists("users", "legacy_flag").await);

    // The app is rolled back while the contract executor waits.
    let rolled_back = std::time::SystemTime::now();
    env.set_version("shop-api", "1.0.0", json!({})).await;
    let m = env
        .wait_migration(NAME, T, "the gate closed and contract stopped", |m| {
            m.status.as_ref().and_then(|s| s.phase) == Some(Phase::AwaitingRollout)
        })
        .await;
    // The figure docs/guarantees.md quotes: rollback written → executor told to stop.
    let ms =
        |d: Option<Duration>| d.map_or("not found".into(), |d| format!("{} ms", d.as_millis()));
    let deleted = logged_after(
        &env,
        "operator-1",
        "stopped the running attempt",
        rolled_back,
    )
    .await;
    let sigterm = logged_after(&env, "runner", "pod deleted: sending SIGTERM", rolled_back).await;
    eprintln!(
        "[fence] rollback written → operator deleted the contract Job: {}; → SIGTERM sent to the executor: {}",
        ms(deleted),
        ms(sigterm)
    );
    wait_until(T, "the stopped contract Job is gone", || async {
        env.job_names("contract").await.is_empty()
    })
    .await;
    let rec = m
        .status
        .as_ref()
        .and_then(|s| s.contract.clone())
        .expect("contract record");
    assert_eq!(rec.reason.as_deref(), Some("GateClosed"), "{rec:?}");
    assert!(
        rec.message.as_deref().unwrap_or_default().contains("1.0.0"),
        "says why the attempt was stopped: {rec:?}"
    );
    let (_, _, msg) = condition(&m, "RolloutComplete").expect("RolloutComplete");
    assert!(msg.contains("1.0.0"), "{msg}");
    env.wait_event(NAME, "GateClosed").await;

    // The reader goes away: nothing may commit now, v1 pods serve.
    reader.batch_execute("COMMIT").await.expect("commit reader");
    drop(reader);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        env.column_exists("users", "legacy_flag").await,
        "the DROP never commits while v1 pods serve"
    );
    assert_eq!(ledger_rows(&env, "contract").await, 0, "no contract row");

    // Roll forward: the next attempt commits, once.
    env.set_version("shop-api", "2.0.0", json!({})).await;
    commits_once_at_attempt_2(&env).await;
    env.cleanup().await;
}

/// The contract executor waits behind a reader with the app on 2.0.0.
async fn contract_waiting(test: &str) -> (Env, tokio_postgres::Client) {
    let env = expanded(test, json!({})).await;
    let reader = open_reader(&env).await;
    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_migration(NAME, T, "contract waits behind the reader", |m| {
        condition(m, "Ready")
            .is_some_and(|(_, _, msg)| msg.contains("waiting for an older transaction's lock"))
    })
    .await;
    (env, reader)
}

/// Rolled forward after a stopped attempt: contract commits once, in attempt 2.
async fn commits_once_at_attempt_2(env: &Env) {
    let m = env.wait_phase(NAME, Phase::Succeeded, T).await;
    assert!(!env.column_exists("users", "legacy_flag").await);
    assert_eq!(ledger_rows(env, "contract").await, 1);
    assert_eq!(
        m.status.and_then(|s| s.contract).map(|c| c.attempts),
        Some(2),
        "the stopped attempt was followed by exactly one more"
    );
}

/// Sessions of Phasegate's executor (its default `application_name`) in the test database.
async fn executor_sessions(env: &Env) -> i64 {
    env.pg
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'phasegate'",
            &[],
        )
        .await
        .expect("sessions")
        .get(0)
}

/// Nothing committed: the column is there and the ledger has no contract row.
async fn contract_not_applied(env: &Env, why: &str) {
    assert!(env.column_exists("users", "legacy_flag").await, "{why}");
    assert_eq!(ledger_rows(env, "contract").await, 0, "{why}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_edit_mid_contract_stops_it() {
    let (env, reader) = contract_waiting("fence-invalid").await;
    // Admitted by the API server, refused by the planner (below youngTransaction).
    let edit = |lock_timeout: &str| json!({"spec": {"safety": {"lockTimeout": lock_timeout}}});
    env.migrations()
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&edit("20ms")))
        .await
        .expect("edit the migration");
    let m = env
        .wait_migration(NAME, T, "the spec refused and the attempt stopped", |m| {
            let s = m.status.as_ref();
            s.and_then(|s| s.phase) == Some(Phase::Failed)
                && s.and_then(|s| s.contract.as_ref())
                    .is_some_and(|c| c.reason.as_deref() == Some("GateClosed"))
        })
        .await;
    let (_, reason, _) = condition(&m, "Ready").expect("Ready");
    assert_eq!(reason, "InvalidSpec");
    wait_until(T, "the stopped contract Job is gone", || async {
        env.job_names("contract").await.is_empty()
    })
    .await;
    reader.batch_execute("COMMIT").await.expect("commit reader");
    tokio::time::sleep(Duration::from_secs(5)).await;
    contract_not_applied(&env, "an invalid spec never lets contract commit").await;

    // Fixed in place: a new attempt, through the gates.
    env.migrations()
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&edit("2s")))
        .await
        .expect("fix the migration");
    commits_once_at_attempt_2(&env).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_operator_never_lets_contract_commit() {
    let (env, reader) = contract_waiting("fence-opstop").await;
    env.signal_operator("STOP");
    // Longer than a grant lives (2 s): whatever the executor held has run out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.set_version("shop-api", "1.0.0", json!({})).await;
    wait_until(T, "the rollback reached the pods", || async {
        env.deployments()
            .get("shop-api")
            .await
            .ok()
            .and_then(|d| d.status)
            .is_some_and(|s| s.updated_replicas.unwrap_or(0) > 0)
    })
    .await;
    reader.batch_execute("COMMIT").await.expect("commit reader");
    drop(reader);
    tokio::time::sleep(Duration::from_secs(8)).await;
    contract_not_applied(&env, "no grant while the operator is stopped, so no COMMIT").await;

    // Back: it sees the rollback and stops the attempt; rolled forward, contract runs once.
    env.signal_operator("CONT");
    let m = env.wait_phase(NAME, Phase::AwaitingRollout, T).await;
    let rec = m.status.and_then(|s| s.contract).expect("contract record");
    assert_eq!(rec.reason.as_deref(), Some("GateClosed"), "{rec:?}");
    contract_not_applied(&env, "still nothing committed").await;
    env.set_version("shop-api", "2.0.0", json!({})).await;
    commits_once_at_attempt_2(&env).await;
    env.cleanup().await;
}

/// Once the operator has deleted the contract Job, nothing commits, even with no SIGTERM and
/// the lock freed that very moment: the operator recalls the attempt's grant before it deletes
/// the Job, so a "yes" the executor got just before the rollback is void.
#[tokio::test(flavor = "multi_thread")]
async fn once_the_job_is_deleted_a_grant_from_before_is_void() {
    let (env, reader) = contract_waiting("fence-recall").await;
    env.signal_runner("STOP");
    env.set_version("shop-api", "1.0.0", json!({})).await;
    let deadline = std::time::Instant::now() + T;
    while !env.job_names("contract").await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the contract Job was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader.batch_execute("COMMIT").await.expect("commit reader");
    drop(reader);
    tokio::time::sleep(Duration::from_secs(3)).await;
    contract_not_applied(&env, "a grant from before the stop was used after it").await;

    env.signal_runner("CONT");
    env.set_version("shop-api", "2.0.0", json!({})).await;
    commits_once_at_attempt_2(&env).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_kubelet_never_lets_contract_commit_and_status_says_so() {
    let (env, reader) = contract_waiting("fence-kubelet").await;
    // The stand-in kubelet stops: a deleted pod's executor gets no SIGTERM.
    env.signal_runner("STOP");
    env.set_version("shop-api", "1.0.0", json!({})).await;
    env.wait_migration(NAME, T, "status says the stop is not confirmed", |m| {
        m.status.as_ref().and_then(|s| s.phase) == Some(Phase::AwaitingRollout)
            && condition(m, "Ready").is_some_and(|(_, _, msg)| msg.contains("stop not confirmed"))
    })
    .await;
    // Told by the recall, the executor leaves the database although no SIGTERM reached it
    // and the reader still holds the table.
    wait_until(
        Duration::from_secs(10),
        "the stopped executor's session to leave the database",
        || async { executor_sessions(&env).await == 0 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    reader.batch_execute("COMMIT").await.expect("commit reader");
    drop(reader);
    tokio::time::sleep(Duration::from_secs(6)).await;
    contract_not_applied(&env, "the executor that never got SIGTERM has no grant").await;

    // Rolled forward while the old executor's pod has not ended: no second attempt beside it.
    env.set_version("shop-api", "2.0.0", json!({})).await;
    let m = env
        .wait_migration(NAME, T, "the next attempt waits for the stop", |m| {
            condition(m, "Ready").is_some_and(|(_, reason, _)| reason == "StopUnconfirmed")
        })
        .await;
    let (_, _, msg) = condition(&m, "Ready").expect("Ready");
    assert!(msg.contains("pod "), "names the pod: {msg}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = env.migrations().get(NAME).await.expect("migration");
    assert_eq!(
        m.status.and_then(|s| s.contract).map(|c| c.attempts),
        Some(1),
        "no attempt 2 while attempt 1's executor may still run"
    );
    contract_not_applied(&env, "still nothing committed").await;

    // The kubelet is back: the old pod ends, the next attempt commits once.
    env.signal_runner("CONT");
    commits_once_at_attempt_2(&env).await;
    env.cleanup().await;
}

/// A contract Job created, and the status write that records its attempt refused (here by
/// taking `patch` on the status away from the operator's Role): the executor gets no grant for
/// an attempt status does not record, so nothing commits until the write lands.
#[tokio::test(flavor = "multi_thread")]
async fn a_contract_attempt_status_does_not_record_never_commits() {
    use k8s_openapi::api::rbac::v1::Role;
    let env = expanded("fence-lostwrite", json!({})).await;
    let roles: Api<Role> = Api::namespaced(env.client.clone(), &env.ns);
    let full = roles.get("phasegate").await.expect("the operator's Role");
    let mut cut = full.clone();
    cut.metadata.managed_fields = None;
    if let Some(rules) = cut.rules.as_mut() {
        rules.retain(|r| {
            !r.resources
                .iter()
                .flatten()
                .any(|res| res == "databasemigrations/status")
        });
    }
    roles
        .replace("phasegate", &Default::default(), &cut)
        .await
        .expect("take status writes away");
    tokio::time::sleep(Duration::from_secs(1)).await;

    env.set_version("shop-api", "2.0.0", json!({})).await;
    wait_until(T, "the contract Job exists", || async {
        !env.job_names("contract").await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let m = env.migrations().get(NAME).await.expect("migration");
    assert_eq!(
        m.status.and_then(|s| s.contract).map(|c| c.attempts),
        None,
        "status never recorded the attempt"
    );
    contract_not_applied(&env, "no grant for an attempt status does not record").await;

    let mut back = roles.get("phasegate").await.expect("role");
    back.rules = full.rules.clone();
    back.metadata.managed_fields = None;
    roles
        .replace("phasegate", &Default::default(), &back)
        .await
        .expect("give status writes back");
    // The refused writes backed the reconciles off; a burst of them counts once, so the
    // operator is back within seconds, not the 5-minute cap.
    let m = env.wait_phase(NAME, Phase::Succeeded, T).await;
    assert!(!env.column_exists("users", "legacy_flag").await);
    assert_eq!(ledger_rows(&env, "contract").await, 1);
    assert_eq!(
        m.status.and_then(|s| s.contract).map(|c| c.attempts),
        Some(1),
        "the attempt created before the write landed is the one that committed"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn availability_dip_after_completion_neither_fails_nor_resets_the_soak() {
    let env = Env::new("fence-dip").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 2, "1.0.0").await;
    let mut spec = migration_spec(EXPAND, json!({"delay": "12s"}));
    spec["rollout"]["timeout"] = json!("8s");
    env.create_migration(NAME, spec).await.expect("create");
    env.wait_phase(NAME, Phase::AwaitingRollout, T).await;
    env.set_version("shop-api", "2.0.0", json!({})).await;
    let m = env.wait_phase(NAME, Phase::Soaking, T).await;
    let completed = m
        .status
        .and_then(|s| s.rollout_completed_at)
        .expect("rollout completed")
        .0;

    // Same version, but new pods never become ready: availability dips, no old code runs.
    env.set_version(
        "shop-api",
        "2.0.0",
        json!({"e2e.phasegate.dev/unready": "true"}),
    )
    .await;
    let m = env.wait_phase(NAME, Phase::Succeeded, T).await;
    let s = m.status.expect("status");
    assert_eq!(
        s.rollout_completed_at.map(|t| t.0),
        Some(completed),
        "the soak was not restarted"
    );
    assert!(s.rollout_timed_out_at.is_none(), "no rollout timeout");
    assert!(!env.column_exists("users", "legacy_flag").await);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pre_created_job_is_never_taken_for_success() {
    let env = expanded("fence-precreated", json!({})).await;
    let expand_job = env.job_names("expand").await.pop().expect("expand Job");
    // Someone who may create Jobs pre-creates the next contract Job's name with a no-op.
    let contract_name = expand_job.replacen("-expand-", "-contract-", 1);
    let fake: Job = serde_json::from_value(json!({
        "metadata": {"name": contract_name, "labels": {"phasegate.dev/executor": "true"}},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "x", "image": "busybox", "command": ["true"]}]}}}
    }))
    .expect("job");
    env.jobs()
        .create(&Default::default(), &fake)
        .await
        .expect("pre-create Job");
    env.set_version("shop-api", "2.0.0", json!({})).await;
    let m = env
        .wait_migration(NAME, T, "a conflict, not a success", |m| {
            m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Failed)
        })
        .await;
    let (_, reason, msg) = condition(&m, "Ready").expect("Ready");
    assert_eq!(reason, "JobConflict", "{msg}");
    assert!(msg.contains(&contract_name), "{msg}");
    assert!(env.column_exists("users", "legacy_flag").await);
    env.cleanup().await;
}

/// The same, by someone who also copies what identifies the operator's Job: the controller
/// owner reference to the migration (anyone who can read the migration knows its UID), its
/// labels and the SQL's checksum, under the name the next attempt will take. Only the Job whose
/// UID the operator recorded when it created it counts: the forged one is deleted and the real
/// attempt runs. (Expand after a failure: nothing else stops a finished Job from waiting there.)
#[tokio::test(flavor = "multi_thread")]
async fn a_pre_created_job_with_forged_ownership_is_never_taken_for_success() {
    const M: &str = "audit-actor";
    const SQL: &str = "ALTER TABLE audit ADD COLUMN actor text;";
    let env = Env::new("fence-forged-owner").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    env.create_migration(M, migration_spec(SQL, json!({})))
        .await
        .expect("create");
    let m = env.wait_phase(M, Phase::Failed, T).await;
    let uid = m.uid().expect("uid");
    let next = phasegate::planner::job_name(M, &uid, phasegate::planner::JobPhase::Expand, 2);
    let fake: Job = serde_json::from_value(json!({
        "metadata": {"name": next, "labels": {
            "phasegate.dev/executor": "true", "phasegate.dev/migration": M,
            "phasegate.dev/migration-uid": uid, "phasegate.dev/phase": "expand",
            "phasegate.dev/sql-checksum": &phasegate::executor::checksum(SQL)[..16]},
            "ownerReferences": [{"apiVersion": "phasegate.dev/v1alpha1",
                "kind": "DatabaseMigration", "name": M, "uid": uid, "controller": true}]},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "x", "image": "busybox", "command": ["true"]}]}}}
    }))
    .expect("job");
    let fake_uid = env
        .jobs()
        .create(&Default::default(), &fake)
        .await
        .expect("pre-create Job")
        .uid()
        .expect("uid");
    wait_until(T, "the forged Job completed", || async {
        env.jobs()
            .get_opt(&next)
            .await
            .ok()
            .flatten()
            .and_then(|j| j.status?.succeeded)
            .unwrap_or(0)
            > 0
    })
    .await;
    // The author fixes the cause and asks for the retry that will take that name.
    env.pg
        .client()
        .await
        .batch_execute("CREATE TABLE audit (id bigserial PRIMARY KEY);")
        .await
        .expect("create audit");
    env.annotate(M, "phasegate.dev/retry", "1").await;
    let m = env.wait_phase(M, Phase::AwaitingRollout, T).await;
    assert!(
        env.column_exists("audit", "actor").await,
        "expand is applied, yet its SQL never ran: the forged Job was taken for the phase"
    );
    assert_eq!(ledger_rows(&env, "expand").await, 1);
    let rec = m.status.and_then(|s| s.expand).expect("expand status");
    assert!(rec.job_uid.is_some(), "the created Job's UID is recorded");
    assert_ne!(rec.job_uid.as_deref(), Some(fake_uid.as_str()));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_200_character_name_works_end_to_end() {
    let env = Env::new("fence-long-name").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    let name = format!("users-{}", "x".repeat(194));
    assert_eq!(name.len(), 200);
    env.create_migration(&name, migration_spec(EXPAND, json!({})))
        .await
        .expect("create");
    env.wait_phase(&name, Phase::AwaitingRollout, T).await;
    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_phase(&name, Phase::Succeeded, T).await;
    assert!(!env.column_exists("users", "legacy_flag").await);
    let lp = ListParams::default().labels("phasegate.dev/phase=contract");
    for j in env.jobs().list(&lp).await.expect("jobs").items {
        assert!(j.name_any().len() <= 63);
    }
    env.cleanup().await;
}
#[tokio::test(flavor = "multi_thread")]
async fn another_apps_older_sessions_do_not_block_contract() {
    let env = expanded("fence-shared-db", json!({})).await;
    // Another application on the same database, at its own (lower) version.
    let url = format!("{}&application_name=billing%401.3.0", env.pg.url());
    let (billing, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("billing connects");
    let conn = tokio::spawn(conn);
    billing
        .simple_query("SELECT 1")
        .await
        .expect("billing query");

    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_phase(NAME, Phase::Succeeded, T).await;
    assert!(!env.column_exists("users", "legacy_flag").await);
    drop(billing);
    let _ = conn.await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn orphaned_job_and_recreated_migration_runs_the_new_sql() {
    let env = expanded("fence-orphan", json!({})).await;
    let old_jobs = env.job_names("expand").await;
    assert_eq!(old_jobs.len(), 1);

    // Delete the migration but keep its Jobs, then recreate it with other expand SQL.
    env.migrations()
        .delete(
            NAME,
            &DeleteParams {
                propagation_policy: Some(PropagationPolicy::Orphan),
                ..DeleteParams::default()
            },
        )
        .await
        .expect("delete orphaning Jobs");
    wait_until(T, "migration gone", || async {
        env.migrations()
            .get_opt(NAME)
            .await
            .ok()
            .flatten()
            .is_none()
    })
    .await;
    assert!(
        env.jobs()
            .get_opt(&old_jobs[0])
            .await
            .expect("get")
            .is_some(),
        "the old Job was orphaned, not deleted"
    );
    let new_expand = "ALTER TABLE users ADD COLUMN nickname text;";
    env.create_migration(NAME, migration_spec(new_expand, json!({})))
        .await
        .expect("recreate");
    env.wait_phase(NAME, Phase::AwaitingRollout, T).await;
    assert!(
        env.column_exists("users", "nickname").await,
        "the recreated migration's expand ran"
    );
    env.cleanup().await;
}
