//! `phasegate backfill` with `spec.tenants`, against real PostgreSQL, run as a Job runs it (the
//! binary, configured by its environment): every tenant schema's and every tenant database's
//! rows filled once, each tenant from its own checkpoint; a SIGKILL mid-fleet resumes each
//! tenant where it stopped; a failing canary halts the others; the failure budget halts; a
//! retry runs only the unfinished; a stop ends every tenant's walk between batches; schema
//! tenants through a transaction pooler.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use phasegate::api::TenantsStatus;
use phasegate::executor::{Outcome, Report};
use support::backfill::{spawn, BIN, COUNTER_SQL};
use support::postgres::TestPostgres;

/// `n` tenant schemas `tenant_01`…, each with its own `items` of `rows` rows (counter `n` 0).
async fn schemas(c: &tokio_postgres::Client, n: usize, rows: i64) {
    for i in 1..=n {
        add_schema(c, &format!("tenant_{i:02}"), rows).await;
    }
}

async fn add_schema(c: &tokio_postgres::Client, s: &str, rows: i64) {
    c.batch_execute(&format!(
        "CREATE SCHEMA {s};
         CREATE TABLE {s}.items (id bigserial PRIMARY KEY, n integer NOT NULL DEFAULT 0);
         INSERT INTO {s}.items (n) SELECT 0 FROM generate_series(1, {rows});
         ANALYZE {s}.items;"
    ))
    .await
    .expect("tenant schema");
}

/// (min n, max n, rows with n = 1) of `table`.
async fn counters(c: &tokio_postgres::Client, table: &str) -> (i32, i32, i64) {
    let r = c
        .query_one(
            &format!("SELECT min(n), max(n), count(*) FILTER (WHERE n = 1) FROM {table}"),
            &[],
        )
        .await
        .expect("counters");
    (r.get(0), r.get(1), r.get(2))
}

/// (status, last_key, rows_done, batches) of the checkpoint row `name` of migration `shop/…`.
async fn checkpoint(
    c: &tokio_postgres::Client,
    name: &str,
) -> Option<(String, Option<i64>, i64, i64)> {
    c.query_opt(
        "SELECT status, last_key, rows_done, batches FROM phasegate.backfill
          WHERE namespace = 'shop' AND name = $1",
        &[&name],
    )
    .await
    // Before the first tenant starts the table does not exist yet: no checkpoint.
    .ok()
    .flatten()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
}

/// Sessions opened on the database so far (once the count reached `at_least`, or after 5 s:
/// the executor's counts reach the statistics when its connections close).
async fn sessions(c: &tokio_postgres::Client, at_least: i64) -> i64 {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let n: i64 = c
            .query_one(
                "SELECT pg_stat_clear_snapshot()::text, sessions FROM pg_stat_database
                  WHERE datname = current_database()",
                &[],
            )
            .await
            .expect("pg_stat_database")
            .get(1);
        if n >= at_least || Instant::now() > until {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One complete run of `phasegate backfill` on the tenants `tenants` (JSON selects), configured
/// as a Job is: its report, exit status and stderr.
async fn run(pg: &TestPostgres, tenants: &str, extra: &[(&str, &str)]) -> (Report, i32, String) {
    let out = tokio::process::Command::new(BIN)
        .arg("backfill")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PHASEGATE_DATABASE_URL", pg.url())
        .env("PHASEGATE_BACKFILL_TABLE", "items")
        .env("PHASEGATE_BACKFILL_KEY", "id")
        .env("PHASEGATE_BACKFILL_SQL", COUNTER_SQL)
        .env("PHASEGATE_BACKFILL_EPOCH", "epoch-1")
        .env("PHASEGATE_MIGRATION_NAMESPACE", "shop")
        .env("PHASEGATE_MIGRATION_NAME", "fill")
        .env("PHASEGATE_MIGRATION_UID", "uid-1")
        .env("PHASEGATE_TERMINATION_LOG", "/nonexistent-dir/x")
        .env("PHASEGATE_TENANTS", tenants)
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run phasegate backfill");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report = Report::parse(&stdout)
        .unwrap_or_else(|| panic!("no report on stdout: {stdout}\nstderr: {stderr}"));
    (report, out.status.code().unwrap_or(-1), stderr)
}

fn tally(r: &Report) -> (u32, u32, u32, u32) {
    let t = r
        .tenants
        .as_ref()
        .unwrap_or_else(|| panic!("no tenants in the report: {}", r.to_json_line()));
    (t.total, t.applied, t.failed, t.not_run)
}

/// The newest aggregate progress line in `log`, and its tenant counts.
fn last_progress(log: &str) -> (phasegate::api::BackfillProgress, TenantsStatus) {
    let p = phasegate::protocol::log::progress(log).expect("a progress line");
    let t = p
        .tenants
        .clone()
        .expect("tenant counts in the progress line");
    (p, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_every_schema_tenant_once_from_its_own_checkpoint_and_nothing_else() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 6, 500).await;
    // Not a tenant: the unqualified table name must not reach it.
    add_schema(&c, "other", 50).await;
    c.batch_execute(
        "CREATE TABLE public.items (id bigserial PRIMARY KEY, n integer NOT NULL DEFAULT 0);
         INSERT INTO public.items (n) SELECT 0 FROM generate_series(1, 50);",
    )
    .await
    .expect("public items");
    let tenants = r#"{"schemas":"tenant\\_%","canary":{"count":1},"maxConcurrent":3}"#;
    let small = [
        ("PHASEGATE_BACKFILL_BATCH_SIZE", "100"),
        ("PHASEGATE_BACKFILL_MAX_BATCH_SIZE", "100"),
    ];
    let sessions_before = sessions(&c, 0).await;
    let (r, code, log) = run(&pg, tenants, &small).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}\n{log}", r.to_json_line());
    assert_eq!(code, 0);
    assert_eq!(r.phase, "backfill");
    assert_eq!(tally(&r), (6, 6, 0, 0));
    assert_eq!(r.statements, 6 * 5, "every tenant's batches");
    for i in 1..=6 {
        let s = format!("tenant_{i:02}");
        assert_eq!(
            counters(&c, &format!("{s}.items")).await,
            (1, 1, 500),
            "{s}"
        );
        let cp = checkpoint(&c, &format!("fill/{s}"))
            .await
            .expect("checkpoint");
        assert_eq!((cp.0.as_str(), cp.1, cp.2), ("done", Some(500), 500), "{s}");
    }
    assert_eq!(counters(&c, "other.items").await, (0, 0, 0), "not a tenant");
    assert_eq!(
        counters(&c, "public.items").await,
        (0, 0, 0),
        "not a tenant"
    );
    assert!(
        checkpoint(&c, "fill").await.is_none(),
        "no database-wide checkpoint"
    );
    // Schema tenants pass their connections on: one for discovery, then one per tenant at
    // once (3), not one per tenant (6).
    let opened = sessions(&c, sessions_before + 4).await - sessions_before;
    assert!(opened <= 4, "{opened} sessions for 6 tenants");
    // One aggregate progress line for the operator, with the tenants' counts.
    let (p, t) = last_progress(&log);
    assert_eq!((t.total, t.applied, t.failed), (6, 6, 0), "{log}");
    assert_eq!((p.rows_done, p.key_range_done_permille), (3000, 1000));
    assert!(
        r.summary().contains("backfill done on 6 of 6 tenants"),
        "{}",
        r.summary()
    );

    // Done in this epoch on every tenant: nothing more.
    let (again, code, _) = run(&pg, tenants, &small).await;
    assert_eq!(
        again.outcome,
        Outcome::AlreadyApplied,
        "{}",
        again.to_json_line()
    );
    assert_eq!((code, again.statements), (0, 0));
    assert_eq!(tally(&again), (6, 6, 0, 0));
    assert_eq!(counters(&c, "tenant_01.items").await, (1, 1, 500));

    // After a rollback and a new complete rollout (a new epoch), every tenant's scan starts
    // over from its first key, as a single database's does: old code may have written rows
    // behind each checkpoint.
    let mut epoch2 = small.to_vec();
    epoch2.push(("PHASEGATE_BACKFILL_EPOCH", "epoch-2"));
    let (r, code, _) = run(&pg, tenants, &epoch2).await;
    assert_eq!(
        (r.outcome, code),
        (Outcome::Applied, 0),
        "{}",
        r.to_json_line()
    );
    for i in 1..=6 {
        let s = format!("tenant_{i:02}.items");
        assert_eq!(counters(&c, &s).await, (2, 2, 0), "{s}: walked again, once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_every_database_tenant_with_its_own_checkpoint_table() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    for db in ["shop_a", "shop_b", "shop_c"] {
        c.batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .expect("db");
        support::backfill::setup_db(&pg, db, 300).await;
    }
    let tenants = r#"{"databases":"shop\\_%","maxConcurrent":2}"#;
    let (r, code, log) = run(&pg, tenants, &[("PHASEGATE_BACKFILL_BATCH_SIZE", "50")]).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}\n{log}", r.to_json_line());
    assert_eq!((code, tally(&r)), (0, (3, 3, 0, 0)));
    for db in ["shop_a", "shop_b", "shop_c"] {
        let d = pg.client_for_db(db).await;
        assert_eq!(counters(&d, "items").await, (1, 1, 300), "{db}");
        let cp = checkpoint(&d, "fill").await.expect("checkpoint");
        assert_eq!((cp.0.as_str(), cp.2), ("done", 300), "{db}");
    }
}

/// SIGKILL while tenants are mid-scan and others done: the next run resumes each tenant from
/// its own checkpoint; a finished tenant is not walked again; every row's counter ends at 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_fleet_resumes_each_tenant_where_it_stopped_and_updates_every_row_once() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    const ROWS: i64 = 2_000;
    schemas(&c, 5, ROWS).await;
    let tenants = r#"{"schemas":"tenant\\_%","maxConcurrent":2}"#;
    let slow = [
        ("PHASEGATE_BACKFILL_BATCH_SIZE", "100"),
        ("PHASEGATE_BACKFILL_MAX_BATCH_SIZE", "100"),
        ("PHASEGATE_BACKFILL_PAUSE", "10ms"),
    ];
    let mut env = slow.to_vec();
    env.push(("PHASEGATE_TENANTS", tenants));
    let mut child = spawn(&pg.url(), "epoch-1", &env);
    // Until one tenant is done and another is part-way.
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        let rows = c
            .query(
                "SELECT status, batches FROM phasegate.backfill WHERE name LIKE 'fill/%'",
                &[],
            )
            .await
            .unwrap_or_default();
        let done = rows
            .iter()
            .filter(|r| r.get::<_, String>(0) == "done")
            .count();
        let midway = rows
            .iter()
            .any(|r| r.get::<_, String>(0) == "running" && r.get::<_, i64>(1) >= 3);
        if done >= 1 && midway {
            break;
        }
        assert!(Instant::now() < until, "no progress: {}", child.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.child.start_kill().expect("SIGKILL");
    let _ = child.child.wait().await;
    // What each checkpoint says is exactly what is applied in its tenant.
    let mut finished = Vec::new();
    let mut partway = 0;
    for i in 1..=5 {
        let s = format!("tenant_{i:02}");
        let (min, max, ones) = counters(&c, &format!("{s}.items")).await;
        match checkpoint(&c, &format!("fill/{s}")).await {
            Some((status, last_key, rows_done, batches)) => {
                assert_eq!(ones, rows_done, "{s}");
                assert_eq!(
                    ones,
                    last_key.unwrap_or(0),
                    "{s}: up to the checkpoint, none after"
                );
                assert!(max <= 1, "{s}");
                if status == "done" {
                    finished.push((s, batches));
                } else if ones < ROWS {
                    partway += 1;
                }
            }
            None => assert_eq!((min, max), (0, 0), "{s}: not started, untouched"),
        }
    }
    assert!(
        !finished.is_empty() && partway >= 1,
        "{finished:?} {partway}"
    );

    let (r, code, log) = run(&pg, tenants, &slow).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}\n{log}", r.to_json_line());
    assert_eq!((code, tally(&r)), (0, (5, 5, 0, 0)));
    for i in 1..=5 {
        let s = format!("tenant_{i:02}");
        assert_eq!(
            counters(&c, &format!("{s}.items")).await,
            (1, 1, ROWS),
            "{s}"
        );
    }
    for (s, batches) in finished {
        let after = checkpoint(&c, &format!("fill/{s}"))
            .await
            .expect("checkpoint");
        assert_eq!(after.3, batches, "{s} was done: not walked again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_halts_every_other_tenant() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 5, 100).await;
    // The canary's table lacks the column the batch SQL sets.
    c.batch_execute("ALTER TABLE tenant_03.items DROP COLUMN n")
        .await
        .expect("break the canary");
    let tenants = r#"{"schemas":"tenant\\_%","canary":{"names":["tenant_03"]},"maxConcurrent":4}"#;
    let (r, code, _) = run(&pg, tenants, &[]).await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.to_json_line());
    assert_eq!(code, 1);
    assert_eq!(tally(&r), (5, 0, 1, 4));
    let t = r.tenants.as_ref().expect("tenants");
    assert_eq!(t.halted.as_deref(), Some("canary tenant tenant_03 failed"));
    assert_eq!(t.failures[0].tenant, "tenant_03");
    assert!(t.failures[0].error.contains("42703"), "{:?}", t.failures);
    for s in ["tenant_01", "tenant_02", "tenant_04", "tenant_05"] {
        assert_eq!(
            counters(&c, &format!("{s}.items")).await,
            (0, 0, 0),
            "{s} ran"
        );
        assert!(checkpoint(&c, &format!("fill/{s}")).await.is_none(), "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failure_budget_halts_and_a_retry_runs_only_the_unfinished_tenants() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 8, 200).await;
    for s in ["tenant_02", "tenant_04"] {
        c.batch_execute(&format!("DROP TABLE {s}.items"))
            .await
            .expect("break");
    }
    let tenants = r#"{"schemas":"tenant\\_%","maxConcurrent":1,"failureBudget":1}"#;
    let (r, code, _) = run(&pg, tenants, &[]).await;
    assert_eq!(
        (r.outcome, code),
        (Outcome::Failed, 1),
        "{}",
        r.to_json_line()
    );
    // 01 done, 02 failed (within the budget), 03 done, 04 failed: over it; 4 not run.
    assert_eq!(tally(&r), (8, 2, 2, 4), "{}", r.to_json_line());
    assert!(r.tenants.as_ref().and_then(|t| t.halted.clone()).is_some());
    let before: Vec<i64> = {
        let mut v = Vec::new();
        for s in ["tenant_01", "tenant_03"] {
            v.push(checkpoint(&c, &format!("fill/{s}")).await.expect("done").3);
        }
        v
    };
    for s in ["tenant_05", "tenant_08"] {
        assert_eq!(
            counters(&c, &format!("{s}.items")).await,
            (0, 0, 0),
            "{s} ran"
        );
    }
    // Fixed and retried: the failed and the not run are walked; 01 and 03 are not again.
    for s in ["tenant_02", "tenant_04"] {
        c.batch_execute(&format!(
            "CREATE TABLE {s}.items (id bigserial PRIMARY KEY, n integer NOT NULL DEFAULT 0);
             INSERT INTO {s}.items (n) SELECT 0 FROM generate_series(1, 200);"
        ))
        .await
        .expect("fix");
    }
    let (retry, code, _) = run(&pg, tenants, &[]).await;
    assert_eq!(
        (retry.outcome, code),
        (Outcome::Applied, 0),
        "{}",
        retry.to_json_line()
    );
    assert_eq!(tally(&retry), (8, 8, 0, 0));
    for i in 1..=8 {
        let s = format!("tenant_{i:02}");
        assert_eq!(
            counters(&c, &format!("{s}.items")).await,
            (1, 1, 200),
            "{s}"
        );
    }
    for (s, b) in ["tenant_01", "tenant_03"].iter().zip(before) {
        assert_eq!(
            checkpoint(&c, &format!("fill/{s}")).await.expect("cp").3,
            b,
            "{s}"
        );
    }
}

/// The fence's stop (a rollback, a pause: SIGTERM to the Job's pod) ends every running
/// tenant's walk between batches and starts no other; the next run resumes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_mid_fleet_ends_every_walk_and_starts_no_other_tenant() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 6, 3_000).await;
    let tenants = r#"{"schemas":"tenant\\_%","maxConcurrent":2}"#;
    let out = tokio::process::Command::new(BIN)
        .arg("backfill")
        .env("PHASEGATE_DATABASE_URL", pg.url())
        .env("PHASEGATE_BACKFILL_TABLE", "items")
        .env("PHASEGATE_BACKFILL_KEY", "id")
        .env("PHASEGATE_BACKFILL_SQL", COUNTER_SQL)
        .env("PHASEGATE_BACKFILL_EPOCH", "epoch-1")
        .env("PHASEGATE_MIGRATION_NAMESPACE", "shop")
        .env("PHASEGATE_MIGRATION_NAME", "fill")
        .env("PHASEGATE_MIGRATION_UID", "uid-1")
        .env("PHASEGATE_TERMINATION_LOG", "/nonexistent-dir/x")
        .env("PHASEGATE_TENANTS", tenants)
        .env("PHASEGATE_BACKFILL_BATCH_SIZE", "100")
        .env("PHASEGATE_BACKFILL_MAX_BATCH_SIZE", "100")
        .env("PHASEGATE_BACKFILL_PAUSE", "20ms")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let until = Instant::now() + Duration::from_secs(60);
    while checkpoint(&c, "fill/tenant_01")
        .await
        .is_none_or(|cp| cp.3 < 3)
    {
        assert!(Instant::now() < until, "no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = out.id().expect("pid").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    let done = out.wait_with_output().await.expect("wait");
    let r = Report::parse(&String::from_utf8_lossy(&done.stdout)).expect("report");
    assert_eq!(done.status.code(), Some(143), "{}", r.to_json_line());
    assert_eq!(r.stopped_by.as_deref(), Some("SIGTERM"));
    let (total, applied, failed, not_run) = tally(&r);
    assert_eq!(
        (total, failed),
        (6, 0),
        "a stop is no failure: {}",
        r.to_json_line()
    );
    assert!(
        not_run >= 4 && applied + not_run == 6,
        "{}",
        r.to_json_line()
    );
    for s in ["tenant_05", "tenant_06"] {
        assert!(
            checkpoint(&c, &format!("fill/{s}")).await.is_none(),
            "{s} started"
        );
    }
    // Every committed batch is in its tenant's checkpoint; the next run finishes the rest.
    let (again, code, _) = run(&pg, tenants, &[]).await;
    assert_eq!(
        (again.outcome, code),
        (Outcome::Applied, 0),
        "{}",
        again.to_json_line()
    );
    for i in 1..=6 {
        let s = format!("tenant_{i:02}");
        assert_eq!(
            counters(&c, &format!("{s}.items")).await,
            (1, 1, 3_000),
            "{s}"
        );
    }
}

/// Schema tenants set their `search_path` per transaction (`SET LOCAL`), as every other
/// setting of the backfill: through PgBouncer in transaction pooling they work, and no setting
/// stays on a pooled server connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_tenants_backfill_through_a_transaction_pooler() {
    use support::pgbouncer::{PoolMode, TestPgBouncer};
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 4, 300).await;
    let pooler = TestPgBouncer::start(&pg, PoolMode::Transaction, 2);
    let tenants = r#"{"schemas":"tenant\\_%","maxConcurrent":3}"#;
    let out = tokio::process::Command::new(BIN)
        .arg("backfill")
        .env("PHASEGATE_DATABASE_URL", pooler.url())
        .env("PHASEGATE_BACKFILL_TABLE", "items")
        .env("PHASEGATE_BACKFILL_KEY", "id")
        .env("PHASEGATE_BACKFILL_SQL", COUNTER_SQL)
        .env("PHASEGATE_BACKFILL_EPOCH", "epoch-1")
        .env("PHASEGATE_MIGRATION_NAMESPACE", "shop")
        .env("PHASEGATE_MIGRATION_NAME", "fill")
        .env("PHASEGATE_TERMINATION_LOG", "/nonexistent-dir/x")
        .env("PHASEGATE_TENANTS", tenants)
        .env("PHASEGATE_BACKFILL_BATCH_SIZE", "50")
        .output()
        .await
        .expect("run");
    let r = Report::parse(&String::from_utf8_lossy(&out.stdout)).expect("report");
    assert_eq!(
        r.outcome,
        Outcome::Applied,
        "{}\n{}",
        r.to_json_line(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tally(&r), (4, 4, 0, 0));
    for i in 1..=4 {
        let s = format!("tenant_{i:02}");
        assert_eq!(
            counters(&c, &format!("{s}.items")).await,
            (1, 1, 300),
            "{s}"
        );
    }
    pooler.assert_no_settings_left().await;
}

/// A tenant created since expand ran (by old code, from the old schema) is found by the
/// backfill's discovery: expand runs there first (a ledger read where it is applied), then its
/// backfill, so contract finds it expanded and backfilled. Without it, the batch SQL fails there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_created_since_expand_gets_expand_first() {
    const EXPAND: &str = "ALTER TABLE items ADD COLUMN m integer NOT NULL DEFAULT 0;";
    const FILL: &str = "UPDATE items SET m = m + 1 WHERE id > $1 AND id <= $2";
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 3, 100).await;
    let tenants = r#"{"schemas":"tenant\\_%","maxConcurrent":2}"#;
    let expand = tokio::process::Command::new(BIN)
        .arg("apply")
        .env("PHASEGATE_DATABASE_URL", pg.url())
        .env("PHASEGATE_PHASE", "expand")
        .env("PHASEGATE_SQL", EXPAND)
        .env("PHASEGATE_MIGRATION_NAMESPACE", "shop")
        .env("PHASEGATE_MIGRATION_NAME", "fill")
        .env("PHASEGATE_MIGRATION_UID", "uid-1")
        .env("PHASEGATE_TENANTS", tenants)
        .env("PHASEGATE_TERMINATION_LOG", "/nonexistent-dir/x")
        .output()
        .await
        .expect("expand");
    assert!(
        expand.status.success(),
        "{}",
        String::from_utf8_lossy(&expand.stdout)
    );
    add_schema(&c, "tenant_04", 100).await;
    let env = [
        ("PHASEGATE_BACKFILL_SQL", FILL),
        ("PHASEGATE_TENANT_EXPAND_SQL", EXPAND),
    ];
    let (r, code, log) = run(&pg, tenants, &env).await;
    assert_eq!(
        (r.outcome, code),
        (Outcome::Applied, 0),
        "{}\n{log}",
        r.to_json_line()
    );
    assert_eq!(tally(&r), (4, 4, 0, 0));
    assert_eq!(r.tenants.as_ref().map(|t| t.expanded_late), Some(1));
    for i in 1..=4 {
        let s = format!("tenant_{i:02}");
        let (min, max): (i32, i32) = {
            let row = c
                .query_one(&format!("SELECT min(m), max(m) FROM {s}.items"), &[])
                .await
                .expect("m");
            (row.get(0), row.get(1))
        };
        assert_eq!(
            (min, max),
            (1, 1),
            "{s}: expanded once, every row filled once"
        );
    }
    let late: String = c
        .query_one(
            "SELECT status FROM phasegate.ledger WHERE name = 'fill/tenant_04' AND phase = 'expand'",
            &[],
        )
        .await
        .expect("ledger row of the late tenant")
        .get(0);
    assert_eq!(late, "applied");
}

/// `tenants.servers`: the backfill walks the tenants of every server, each server's tenants
/// with checkpoints in that server's database; a listed server's tenant is named
/// `<server>/<tenant>` in the counts' failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfills_the_tenants_of_every_server() {
    let main = TestPostgres::start();
    let eu2 = TestPostgres::start();
    let (cm, ce) = (main.client().await, eu2.client().await);
    schemas(&cm, 3, 200).await;
    schemas(&ce, 3, 200).await;
    ce.batch_execute("ALTER TABLE tenant_02.items DROP COLUMN n")
        .await
        .expect("break one tenant of eu-2");
    let tenants = r#"{"schemas":"tenant\\_%","maxConcurrent":2,"failureBudget":5,
        "servers":[{"name":"eu-2","urlSecretRef":{"name":"shop-db-eu-2","key":"url"}}]}"#;
    let eu2_url = eu2.url();
    let (r, code, log) = run(&main, tenants, &[("PHASEGATE_SERVER_URL_0", &eu2_url)]).await;
    assert_eq!(
        (r.outcome, code),
        (Outcome::Failed, 1),
        "{}\n{log}",
        r.to_json_line()
    );
    assert_eq!(tally(&r), (6, 5, 1, 0));
    let t = r.tenants.as_ref().expect("tenants");
    assert_eq!(t.failures[0].tenant, "eu-2/tenant_02");
    for (c, server) in [(&cm, "main"), (&ce, "eu-2")] {
        for s in ["tenant_01", "tenant_03"] {
            assert_eq!(
                counters(c, &format!("{s}.items")).await,
                (1, 1, 200),
                "{server} {s}"
            );
            let cp = checkpoint(c, &format!("fill/{s}"))
                .await
                .expect("checkpoint");
            assert_eq!(
                cp.0, "done",
                "{server} {s}: its checkpoint in its own server"
            );
        }
    }
    assert!(!log.contains(&eu2_url), "no URL in the log");
}

/// The checkpoint table is created once however many tenants of one database start at once
/// (`CREATE TABLE IF NOT EXISTS` run concurrently fails with `type "backfill" already exists`):
/// 16 tenants, 16 at once, five times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_starting_at_once_create_the_checkpoint_table_once() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 16, 10).await;
    let tenants = r#"{"schemas":"tenant\\_%","maxConcurrent":16}"#;
    for round in 0..5 {
        // The schema exists (expand's ledger is in it); the checkpoint table does not yet.
        c.batch_execute(
            "CREATE SCHEMA IF NOT EXISTS phasegate; DROP TABLE IF EXISTS phasegate.backfill",
        )
        .await
        .expect("no checkpoint table");
        let epoch = format!("epoch-{round}");
        let (r, code, _) = run(&pg, tenants, &[("PHASEGATE_BACKFILL_EPOCH", &epoch)]).await;
        assert_eq!(
            (r.outcome, code),
            (Outcome::Applied, 0),
            "round {round}: {}",
            r.to_json_line()
        );
    }
}
