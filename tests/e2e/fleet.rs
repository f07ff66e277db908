//! Fleet migrations (`spec.tenants`) end to end: one migration on every tenant schema (50),
//! database (10) or schema of two servers, the rollout gate between expand and contract, a
//! tenant created mid-migration, a failing canary that halts the rest and is retried, the
//! kubectl plugin listing failing tenants, an executor SIGKILLed mid-wave that resumes exactly
//! once per tenant, rollbacks that hold every tenant's contract, and progress in status.

use phasegate::api::{DatabaseMigration, Phase};
use serde_json::json;

use crate::harness::Env;
use crate::T;

const TENANTS: usize = 50;
const DATABASES: usize = 10;

async fn tenant_schema(env: &Env, s: &str) {
    env.pg
        .client()
        .await
        .batch_execute(&format!(
            "CREATE SCHEMA {s}; CREATE TABLE {s}.users (id int PRIMARY KEY, legacy text);"
        ))
        .await
        .expect("tenant schema");
}

/// Tenant schemas whose `users` has `column`.
async fn with_column(env: &Env, column: &str) -> usize {
    columns_on(&env.pg.client().await, column).await
}

/// Tenant schemas of the database `c` is connected to whose `users` has `column`.
async fn columns_on(c: &tokio_postgres::Client, column: &str) -> usize {
    c.query(
        "SELECT 1 FROM information_schema.columns
              WHERE table_name = 'users' AND column_name = $1 AND table_schema LIKE 'tenant\\_%'",
        &[&column],
    )
    .await
    .expect("columns")
    .len()
}

fn fleet_spec(canary: serde_json::Value) -> serde_json::Value {
    json!({
        "appVersion": "2.0.0",
        "database": {"urlSecretRef": {"name": "shop-db", "key": "url"}},
        "expand": {"sql": "ALTER TABLE users ADD COLUMN verified boolean;"},
        "contract": {"sql": "ALTER TABLE users DROP COLUMN legacy;"},
        "rollout": {"targets": [{"kind": "Deployment", "name": "shop-api"}]},
        "safety": {"lockTimeout": "1s", "statementTimeout": "30s", "maxLockRetries": 3},
        "tenants": {"schemas": "tenant\\_%", "canary": canary, "maxConcurrent": 4}
    })
}

fn tenants_of(m: &DatabaseMigration, contract: bool) -> phasegate::api::TenantsStatus {
    let s = m.status.as_ref().expect("status");
    let p = if contract { &s.contract } else { &s.expand };
    p.as_ref()
        .and_then(|p| p.tenants.clone())
        .expect("tenants in status")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_migration_expands_every_tenant_waits_for_the_rollout_and_contracts_each() {
    let env = Env::new("fleet").await;
    for i in 1..=TENANTS {
        tenant_schema(&env, &format!("tenant_{i:02}")).await;
    }
    env.create_deployment("shop-api", 1, "1.0.0").await;
    env.create_migration("verified", fleet_spec(json!({"count": 2})))
        .await
        .expect("create");
    let m = env.wait_phase("verified", Phase::AwaitingRollout, T).await;
    let t = tenants_of(&m, false);
    assert_eq!(
        (t.total, t.applied, t.failed),
        (TENANTS as u32, TENANTS as u32, 0)
    );
    assert_eq!(with_column(&env, "verified").await, TENANTS);
    assert!(
        env.job_names("contract").await.is_empty(),
        "the rollout gate holds"
    );

    // A tenant signs up mid-migration: contract finds it and gives it expand first.
    tenant_schema(&env, "tenant_99").await;
    env.set_version("shop-api", "2.0.0", json!({})).await;
    let m = env.wait_phase("verified", Phase::Succeeded, T).await;
    let t = tenants_of(&m, true);
    assert_eq!(
        (t.total, t.applied, t.expanded_late),
        (TENANTS as u32 + 1, TENANTS as u32 + 1, 1)
    );
    assert_eq!(with_column(&env, "verified").await, TENANTS + 1);
    assert_eq!(
        with_column(&env, "legacy").await,
        0,
        "contracted on every tenant"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_canary_halts_the_fleet_and_a_retry_finishes_it() {
    let env = Env::new("fleet-canary").await;
    for i in 1..=TENANTS {
        tenant_schema(&env, &format!("tenant_{i:02}")).await;
    }
    // The canary tenant is broken: its ALTER fails.
    let db = env.pg.client().await;
    db.batch_execute("ALTER TABLE tenant_07.users ADD COLUMN verified int")
        .await
        .expect("break the canary");
    env.create_deployment("shop-api", 1, "1.0.0").await;
    env.create_migration("verified", fleet_spec(json!({"names": ["tenant_07"]})))
        .await
        .expect("create");
    let m = env.wait_phase("verified", Phase::Failed, T).await;
    let t = tenants_of(&m, false);
    assert_eq!((t.failed, t.not_run), (1, TENANTS as u32 - 1), "{t:?}");
    assert_eq!(t.failures[0].tenant, "tenant_07");
    assert_eq!(
        with_column(&env, "verified").await,
        1,
        "no other tenant ran"
    );

    let (ok, out, err) = env
        .phasegate_cli(&["status", "verified", "-n", &env.ns], None)
        .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("halted:    canary tenant tenant_07 failed"),
        "{out}"
    );
    assert!(out.contains("failed:    tenant_07"), "{out}");

    db.batch_execute("ALTER TABLE tenant_07.users DROP COLUMN verified")
        .await
        .expect("fix");
    env.annotate("verified", "phasegate.dev/retry", "1").await;
    let m = env.wait_phase("verified", Phase::AwaitingRollout, T).await;
    assert_eq!(tenants_of(&m, false).applied, TENANTS as u32);
    assert_eq!(with_column(&env, "verified").await, TENANTS);
    env.cleanup().await;
}

/// A rollback while a fleet's contract runs: the tenants that committed before it stay
/// contracted (as a single database that committed does); the tenant whose DROP waits for a
/// lock and every tenant after it keep their column; rolled forward, contract finishes.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_mid_fleet_contract_stops_it_before_the_next_tenant_commits() {
    let env = Env::new("fleet-rollback").await;
    for i in 1..=TENANTS {
        tenant_schema(&env, &format!("tenant_{i:02}")).await;
    }
    env.create_deployment("shop-api", 1, "1.0.0").await;
    let mut spec = fleet_spec(json!({}));
    spec["tenants"]["maxConcurrent"] = json!(1);
    // The reader below began before the rollout completed: the database check would hold
    // contract on every tenant; this test is about the lock wait at one tenant.
    spec["safety"]["databaseCheck"] = json!(false);
    env.create_migration("verified", spec)
        .await
        .expect("create");
    env.wait_phase("verified", Phase::AwaitingRollout, T).await;
    // A long reader of tenant_05: contract's DROP there waits outside the lock queue.
    let mut reader = env.pg.client().await;
    let tx = reader.transaction().await.expect("begin");
    tx.batch_execute("SELECT count(*) FROM tenant_05.users")
        .await
        .expect("read");
    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_phase("verified", Phase::Contracting, T).await;
    crate::harness::wait_until(T, "tenant_04 contracted", || async {
        with_legacy(&env, "tenant_04").await == Some(false)
    })
    .await;
    env.set_version("shop-api", "1.0.0", json!({})).await;
    env.wait_migration("verified", T, "the contract attempt stopped", |m| {
        m.status.as_ref().and_then(|s| s.phase) != Some(Phase::Contracting)
    })
    .await;
    // The reader ends the instant status says the attempt stopped: the grant was recalled
    // before that, so a "yes" from just before the rollback cannot be used (before the recall,
    // tenant_05 committed this way in CI, its executor not yet reached by SIGTERM).
    tx.rollback().await.expect("end the reader");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    for i in 5..=TENANTS {
        let t = format!("tenant_{i:02}");
        assert_eq!(
            with_legacy(&env, &t).await,
            Some(true),
            "{t} kept its column"
        );
    }
    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_phase("verified", Phase::Succeeded, T).await;
    assert_eq!(
        with_column(&env, "legacy").await,
        0,
        "contracted on every tenant"
    );
    env.cleanup().await;
}

/// Whether `schema.users` has `legacy` (None: no such table).
async fn with_legacy(env: &Env, schema: &str) -> Option<bool> {
    let row = env
        .pg
        .client()
        .await
        .query_one(
            "SELECT count(*) FILTER (WHERE column_name = 'legacy') > 0, count(*) > 0
               FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'users'",
            &[&schema],
        )
        .await
        .ok()?;
    row.get::<_, bool>(1).then(|| row.get(0))
}

async fn tenant_database(env: &Env, db: &str) {
    env.pg
        .client()
        .await
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .expect("tenant database");
    env.pg
        .client_for_db(db)
        .await
        .batch_execute(
            "CREATE TABLE users (id int PRIMARY KEY, legacy text);
             CREATE TABLE runs (phase text NOT NULL);",
        )
        .await
        .expect("tenant tables");
}

/// The phases whose SQL ran in tenant database `db`, in order (each run inserts one row in
/// the same transaction as its DDL: a phase applied twice shows twice).
async fn runs(env: &Env, db: &str) -> Vec<String> {
    env.pg
        .client_for_db(db)
        .await
        .query("SELECT phase FROM runs ORDER BY ctid", &[])
        .await
        .expect("runs")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn databases_with_runs(env: &Env, phases: &[&str]) -> usize {
    let mut n = 0;
    for i in 1..=DATABASES {
        if runs(env, &format!("shop_{i:02}")).await == phases {
            n += 1;
        }
    }
    n
}

/// Ten tenant databases. The expand executor is SIGKILLed mid-wave (some databases applied,
/// others running or not started): the next attempt applies each remaining database once and
/// skips the applied ones. A rollback during contract's soak delay holds contract on every
/// database; rolled forward, each is contracted once.
#[tokio::test(flavor = "multi_thread")]
async fn database_tenants_resume_exactly_once_after_a_sigkill_and_a_rollback_holds_every_contract()
{
    let env = Env::new("fleet-databases").await;
    for i in 1..=DATABASES {
        tenant_database(&env, &format!("shop_{i:02}")).await;
    }
    env.create_deployment("shop-api", 1, "1.0.0").await;
    let mut spec = fleet_spec(json!({}));
    spec["tenants"] = json!({"databases": "shop\\_%", "maxConcurrent": 2});
    // Slow enough per tenant to kill the executor mid-wave.
    spec["expand"]["sql"] = json!(
        "ALTER TABLE users ADD COLUMN verified boolean; INSERT INTO runs VALUES ('expand'); SELECT pg_sleep(1);"
    );
    spec["contract"]["sql"] =
        json!("ALTER TABLE users DROP COLUMN legacy; INSERT INTO runs VALUES ('contract');");
    spec["contract"]["delay"] = json!("8s");
    env.create_migration("verified", spec)
        .await
        .expect("create");

    let pid = std::cell::Cell::new(None);
    crate::harness::wait_until(T, "3 tenant databases expanded", || async {
        if pid.get().is_none() {
            pid.set(crate::harness::executor_pid(&env.ns, "expand", 1));
        }
        pid.get().is_some() && databases_with_runs(&env, &["expand"]).await >= 3
    })
    .await;
    let pid = pid.get().expect("the expand executor");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success(), "killed executor {pid}");
    let done_at_kill = databases_with_runs(&env, &["expand"]).await;
    assert!(
        done_at_kill < DATABASES,
        "killed mid-wave: {done_at_kill} done"
    );

    let m = env.wait_phase("verified", Phase::AwaitingRollout, T).await;
    let expand = m
        .status
        .as_ref()
        .and_then(|s| s.expand.clone())
        .expect("expand");
    assert_eq!(
        expand.attempts, 2,
        "resumed by a second attempt: {expand:?}"
    );
    let t = tenants_of(&m, false);
    assert_eq!(
        (t.total, t.applied, t.failed),
        (DATABASES as u32, DATABASES as u32, 0)
    );
    assert_eq!(
        databases_with_runs(&env, &["expand"]).await,
        DATABASES,
        "expand ran exactly once in every tenant database"
    );

    // Rolled out, then rolled back while contract waits out its soak delay.
    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_migration("verified", T, "the soak delay counts", |m| {
        m.status
            .as_ref()
            .is_some_and(|s| s.rollout_completed_at.is_some())
    })
    .await;
    env.set_version("shop-api", "1.0.0", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    assert!(
        env.job_names("contract").await.is_empty(),
        "no contract Job"
    );
    assert_eq!(
        databases_with_runs(&env, &["expand"]).await,
        DATABASES,
        "no tenant database contracted after the rollback"
    );

    env.set_version("shop-api", "2.0.0", json!({})).await;
    let m = env.wait_phase("verified", Phase::Succeeded, T).await;
    let t = tenants_of(&m, true);
    assert_eq!((t.total, t.applied), (DATABASES as u32, DATABASES as u32));
    assert_eq!(
        databases_with_runs(&env, &["expand", "contract"]).await,
        DATABASES,
        "each tenant database expanded once and contracted once"
    );
    env.cleanup().await;
}

/// While a fleet's expand runs, status shows the tenants so far (read from the executor's
/// progress lines), not only when the Job ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_running_fleet_phase_shows_its_progress_in_status() {
    let env = Env::new("fleet-progress").await;
    for i in 1..=TENANTS {
        tenant_schema(&env, &format!("tenant_{i:02}")).await;
    }
    env.create_deployment("shop-api", 1, "1.0.0").await;
    let mut spec = fleet_spec(json!({}));
    spec["tenants"]["maxConcurrent"] = json!(1);
    spec["expand"]["sql"] =
        json!("ALTER TABLE users ADD COLUMN verified boolean; SELECT pg_sleep(0.3);");
    env.create_migration("verified", spec)
        .await
        .expect("create");
    let m = env
        .wait_migration("verified", T, "some tenants applied, not all", |m| {
            let s = m.status.as_ref();
            s.and_then(|s| s.phase) == Some(Phase::Expanding)
                && s.and_then(|s| s.expand.as_ref())
                    .and_then(|e| e.tenants.as_ref())
                    .is_some_and(|t| t.applied > 0 && t.applied < TENANTS as u32)
        })
        .await;
    let (_, _, message) = crate::harness::condition(&m, "Ready").expect("Ready");
    assert!(
        message.contains(&format!("of {TENANTS} tenant(s) applied so far")),
        "{message}"
    );
    let m = env.wait_phase("verified", Phase::AwaitingRollout, T).await;
    let t = tenants_of(&m, false);
    assert_eq!((t.applied, t.not_run), (TENANTS as u32, 0));
    env.cleanup().await;
}

/// Tenants on two servers (`tenants.servers`): the Job gets the second server's URL from its
/// Secret; expand reaches every tenant of both, the rollout gate holds contract, and contract
/// reaches every tenant of both; status counts both.
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_migration_runs_on_the_tenants_of_two_servers() {
    let env = Env::new("fleet-servers").await;
    let eu2 = tokio::task::spawn_blocking(crate::postgres::TestPostgres::start)
        .await
        .expect("second PostgreSQL");
    env.create_secret("shop-db-eu-2", &eu2.url()).await;
    let second = eu2.client().await;
    for i in 1..=10 {
        let s = format!("tenant_{i:02}");
        tenant_schema(&env, &s).await;
        second
            .batch_execute(&format!(
                "CREATE SCHEMA {s}; CREATE TABLE {s}.users (id int PRIMARY KEY, legacy text);"
            ))
            .await
            .expect("tenant schema on eu-2");
    }
    env.create_deployment("shop-api", 1, "1.0.0").await;
    let mut spec = fleet_spec(json!({"names": ["eu-2/tenant_01"]}));
    spec["tenants"]["servers"] =
        json!([{"name": "eu-2", "urlSecretRef": {"name": "shop-db-eu-2", "key": "url"}}]);
    env.create_migration("verified", spec)
        .await
        .expect("create");
    let m = env.wait_phase("verified", Phase::AwaitingRollout, T).await;
    assert_eq!(tenants_of(&m, false).applied, 20);
    assert_eq!(columns_on(&second, "verified").await, 10, "expand on eu-2");
    assert_eq!(
        with_column(&env, "verified").await,
        10,
        "expand on the first server"
    );
    env.set_version("shop-api", "2.0.0", json!({})).await;
    let m = env.wait_phase("verified", Phase::Succeeded, T).await;
    assert_eq!(tenants_of(&m, true).applied, 20);
    assert_eq!(columns_on(&second, "legacy").await, 0, "contract on eu-2");
    assert_eq!(
        with_column(&env, "legacy").await,
        0,
        "contract on the first"
    );
    env.cleanup().await;
}

/// A fleet migration with a backfill, through the operator: expand on every tenant, the
/// rollout, the backfill of every tenant's rows (counts in status), then contract (which
/// fails on a tenant with a row left unfilled).
#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_backfill_fills_every_tenant_between_the_rollout_and_contract() {
    let env = Env::new("fleet-backfill").await;
    let db = env.pg.client().await;
    for i in 1..=10 {
        let s = format!("tenant_{i:02}");
        tenant_schema(&env, &s).await;
        db.batch_execute(&format!(
            "INSERT INTO {s}.users SELECT g, 'x' || g FROM generate_series(1, 300) g"
        ))
        .await
        .expect("rows");
    }
    env.create_deployment("shop-api", 1, "1.0.0").await;
    let mut spec = fleet_spec(json!({"count": 1}));
    spec["expand"]["sql"] = json!("ALTER TABLE users ADD COLUMN legacy_copy text;");
    // Fails on a tenant with a row the backfill missed.
    spec["contract"]["sql"] = json!("ALTER TABLE users ALTER COLUMN legacy_copy SET NOT NULL;");
    spec["backfill"] = json!({
        "table": "users",
        "key": "id",
        "sql": "UPDATE users SET legacy_copy = legacy WHERE id > $1 AND id <= $2 AND legacy_copy IS NULL",
        "batchSize": 100
    });
    env.create_migration("copy", spec).await.expect("create");
    env.wait_phase("copy", Phase::AwaitingRollout, T).await;
    env.set_version("shop-api", "2.0.0", json!({})).await;
    let m = env.wait_phase("copy", Phase::Succeeded, T).await;
    let b = m
        .status
        .as_ref()
        .and_then(|s| s.backfill.as_ref())
        .and_then(|b| b.run.tenants.clone())
        .expect("backfill tenants in status");
    assert_eq!((b.total, b.applied, b.failed), (10, 10, 0), "{b:?}");
    for i in 1..=10 {
        let n: i64 = db
            .query_one(
                &format!("SELECT count(*) FROM tenant_{i:02}.users WHERE legacy_copy IS DISTINCT FROM legacy"),
                &[],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 0, "tenant_{i:02} backfilled");
    }
    env.cleanup().await;
}
