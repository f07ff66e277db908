//! A migration with `spec.backfill` through the real cluster: the backfill Job runs only once
//! the rollout is complete, status shows its progress, and contract waits for it.

use std::time::Duration;

use kube::api::{Patch, PatchParams};
use phasegate::api::Phase;
use serde_json::json;

use crate::harness::{free_port, http_get, Env};
use crate::{migration_spec, T};

#[tokio::test(flavor = "multi_thread")]
async fn backfill_runs_after_the_rollout_shows_progress_and_gates_contract() {
    let mut env = Env::new("backfill").await;
    // An operator whose /metrics this test can reach (the default one listens on port 0).
    env.kill_operator().await;
    let port = free_port();
    let _operator = env.spawn_operator(
        "op-metrics",
        &["--metrics-addr", &format!("127.0.0.1:{port}")],
    );
    let db = env.pg.client().await;
    db.batch_execute(
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text, legacy_flag boolean);
         INSERT INTO users (email) SELECT 'u' || g || '@example.com' FROM generate_series(1, 3000) g;
         ANALYZE users;",
    )
    .await
    .expect("seed");
    env.create_deployment("shop-api", 3, "1.0.0").await;
    let mut spec = migration_spec(
        "ALTER TABLE users ADD COLUMN email_address text;",
        json!({}),
    );
    // 30 batches of 100 keys, a second apart: long enough to be seen running.
    spec["backfill"] = json!({
        "table": "users",
        "key": "id",
        "sql": "UPDATE users SET email_address = email WHERE id > $1 AND id <= $2 AND email_address IS NULL",
        "batchSize": 100,
        "maxBatchSize": 100,
        "pause": "1s"
    });
    env.create_migration("users-email-address", spec)
        .await
        .expect("create migration");
    let m = env
        .wait_phase("users-email-address", Phase::AwaitingRollout, T)
        .await;
    assert!(m.spec.backfill.is_some(), "the CRD keeps spec.backfill");
    // CEL: table, key and sql are immutable, backfill cannot be removed; tuning may change.
    let api = env.migrations();
    let merge = |v: serde_json::Value| {
        let api = api.clone();
        async move {
            api.patch(
                "users-email-address",
                &PatchParams::default(),
                &Patch::Merge(&v),
            )
            .await
            .map_err(|e| e.to_string())
        }
    };
    let err = merge(json!({"spec": {"backfill": {"sql": "UPDATE users SET email_address = 'x' WHERE id > $1 AND id <= $2"}}}))
        .await
        .expect_err("backfill.sql is immutable");
    assert!(err.contains("immutable"), "{err}");
    let err = merge(json!({"spec": {"backfill": null}}))
        .await
        .expect_err("backfill cannot be removed");
    assert!(err.contains("cannot be added or removed"), "{err}");
    let err =
        merge(json!({"spec": {"backfill": {"sql": "UPDATE users SET email_address = email"}}}))
            .await
            .expect_err("the batch SQL needs its bounds");
    assert!(err.contains("$1"), "{err}");
    merge(json!({"spec": {"backfill": {"lockTimeout": "2s"}}}))
        .await
        .expect("tuning fields may change");
    // Old code runs: no backfill yet (it could write rows behind the scan).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        env.job_names("backfill").await.is_empty(),
        "no backfill Job while v1 runs"
    );
    let filled: i64 = db
        .query_one("SELECT count(email_address) FROM users", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(filled, 0);

    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_phase("users-email-address", Phase::Backfilling, T)
        .await;
    // Progress in status while it runs; contract waits.
    let m = env
        .wait_migration(
            "users-email-address",
            T,
            "backfill progress in status",
            |m| {
                m.status
                    .as_ref()
                    .and_then(|s| s.backfill.as_ref())
                    .and_then(|b| b.progress.as_ref())
                    .is_some_and(|p| p.rows_done > 0 && p.key_range_done_permille < 1000)
            },
        )
        .await;
    let status = m.status.clone().expect("status");
    assert_eq!(status.phase, Some(Phase::Backfilling));
    let progress = status.backfill.and_then(|b| b.progress).expect("progress");
    assert!(progress.estimated_rows >= 2000, "{progress:?}");
    assert!(
        env.job_names("contract").await.is_empty(),
        "no contract Job while the backfill runs"
    );
    // The same progress as Prometheus gauges, labelled by the migration.
    let labels = format!(
        "{{namespace=\"{}\",migration=\"users-email-address\"}}",
        env.ns
    );
    let text = backfill_metrics(port).await;
    let rows_done = value(&text, &format!("phasegate_backfill_rows_done{labels}"));
    assert!(rows_done.is_some_and(|v| v > 0.0), "{text}");
    assert!(
        value(&text, &format!("phasegate_backfill_rows_estimated{labels}"))
            .is_some_and(|v| v >= 2000.0),
        "{text}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("phasegate_backfill_throttled{"))
            .count(),
        phasegate::protocol::log::THROTTLE_KINDS.len(),
        "{text}"
    );
    assert!(env.column_exists("users", "legacy_flag").await);

    let m = env
        .wait_phase(
            "users-email-address",
            Phase::Succeeded,
            Duration::from_secs(180),
        )
        .await;
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM users WHERE email_address IS NULL",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "every row filled");
    assert!(
        !env.column_exists("users", "legacy_flag").await,
        "contract ran"
    );
    let b = m
        .status
        .as_ref()
        .and_then(|s| s.backfill.clone())
        .expect("backfill status");
    assert!(b.run.succeeded, "{b:?}");
    let text = backfill_metrics(port).await;
    assert!(
        !text.contains("phasegate_backfill_"),
        "no series once the backfill finished: {text}"
    );
    assert_eq!(b.run.attempts, 1);
    let (done, batches): (String, i64) = {
        let r = db
            .query_one(
                "SELECT status, batches FROM phasegate.backfill WHERE name = 'users-email-address'",
                &[],
            )
            .await
            .expect("checkpoint");
        (r.get(0), r.get(1))
    };
    assert_eq!((done.as_str(), batches), ("done", 30));
    let reasons = env.event_reasons("users-email-address").await;
    assert!(
        reasons.iter().any(|r| r == "Backfilling"),
        "Event Backfilling in {reasons:?}"
    );
    env.cleanup().await;
}

/// Issue 22: the operator is killed mid-backfill; behind its back the app is rolled back to
/// the old version, old code inserts rows inside the key range the backfill already walked
/// (they have the old column only), the app is rolled forward, and the backfill Job finishes.
/// When the operator comes back the targets look as complete as before; only the rollout
/// history (the Deployment's ReplicaSet revisions) shows the regression. No row may be lost
/// when contract drops the old column: the backfill runs again from its first key.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_while_the_operator_was_down_reruns_the_backfill_from_the_first_key() {
    let mut env = Env::new("backfill-unseen").await;
    let db = env.pg.client().await;
    // 3000 rows with even keys 2..6000: old code's rows below fit between them.
    db.batch_execute(
        "CREATE TABLE users (id bigint PRIMARY KEY, email text);
         INSERT INTO users (id, email) SELECT 2 * g, 'u' || g || '@example.com' FROM generate_series(1, 3000) g;
         ANALYZE users;",
    )
    .await
    .expect("seed");
    env.create_deployment("shop-api", 2, "1.0.0").await;
    let mut spec = migration_spec(
        "ALTER TABLE users ADD COLUMN email_address text;",
        json!({"sql": "ALTER TABLE users DROP COLUMN email;"}),
    );
    // 30 batches of 100 keys (200 key units each), half a second apart.
    spec["backfill"] = json!({
        "table": "users",
        "key": "id",
        "sql": "UPDATE users SET email_address = email WHERE id > $1 AND id <= $2 AND email_address IS NULL",
        "batchSize": 100,
        "maxBatchSize": 100,
        "pause": "500ms"
    });
    const NAME: &str = "users-email-address";
    env.create_migration(NAME, spec)
        .await
        .expect("create migration");
    env.wait_phase(NAME, Phase::AwaitingRollout, T).await;
    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_phase(NAME, Phase::Backfilling, T).await;
    let checkpoint = |sql: &'static str| {
        let db = &db;
        async move {
            // No checkpoint table before the executor's first run.
            db.query_opt(sql, &[&NAME])
                .await
                .ok()
                .flatten()
                .map(|r| r.get::<_, i64>(0))
        }
    };
    // The scan has walked past key 1000.
    crate::harness::wait_until(T, "the backfill walked past key 1000", || async {
        checkpoint("SELECT last_key FROM phasegate.backfill WHERE name = $1")
            .await
            .is_some_and(|k| k >= 1000)
    })
    .await;
    let first = env.migrations().get(NAME).await.expect("migration");
    let first_epoch = first
        .status
        .as_ref()
        .and_then(|s| s.rollout_completed_at.clone())
        .expect("epoch");

    // The operator dies; its backfill Job runs on.
    env.kill_operator().await;
    // Rolled back: old code runs and inserts 500 rows inside the walked range, old column only.
    env.set_version("shop-api", "1.0.0", json!({})).await;
    env.wait_rolled_out("shop-api").await;
    db.batch_execute(
        "INSERT INTO users (id, email) SELECT g, 'old' || g || '@example.com' FROM generate_series(1, 999, 2) g;",
    )
    .await
    .expect("old code's rows");
    // Rolled forward again, and the backfill Job finishes its scan.
    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_rolled_out("shop-api").await;
    crate::harness::wait_until(
        Duration::from_secs(120),
        "the first backfill run finished",
        || async {
            checkpoint(
                "SELECT count(*) FROM phasegate.backfill WHERE name = $1 AND status = 'done'",
            )
            .await
            .is_some_and(|n| n == 1)
        },
    )
    .await;

    env.start_operator();
    let m = env
        .wait_phase(NAME, Phase::Succeeded, Duration::from_secs(180))
        .await;
    let (lost, total): (i64, i64) = {
        let r = db
            .query_one(
                "SELECT count(*) FILTER (WHERE email_address IS NULL), count(*) FROM users",
                &[],
            )
            .await
            .expect("count");
        (r.get(0), r.get(1))
    };
    assert_eq!(total, 3500);
    assert_eq!(
        lost, 0,
        "rows written by old code behind the backfill's checkpoint lost when contract dropped the old column"
    );
    assert!(!env.column_exists("users", "email").await, "contract ran");
    let status = m.status.clone().expect("status");
    let b = status.backfill.clone().expect("backfill status");
    assert_eq!((b.run.attempts, b.regressions), (2, 1), "{b:?}");
    assert_ne!(b.epoch, Some(first_epoch), "a new rollout epoch");
    // The second run restarted the scan from the first key (a new epoch in the checkpoint).
    assert_eq!(
        checkpoint("SELECT restarts::bigint FROM phasegate.backfill WHERE name = $1").await,
        Some(1)
    );
    env.wait_event(NAME, "RegressionInHistory").await;
    let raw = crate::regression::raw_status(&env, NAME).await;
    let why = raw["lastRegression"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains("rollout history") && why.contains("version 1.0.0"),
        "status.lastRegression: {raw}"
    );
    env.cleanup().await;
}

async fn backfill_metrics(port: u16) -> String {
    let (code, body) = http_get(port, "/metrics").await.expect("GET /metrics");
    assert_eq!(code, 200, "/metrics: {body}");
    body
}

/// The value of the series `series` (name with its labels, exactly as exposed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
