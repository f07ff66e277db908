//! The database-side check before contract (see src/executor/dbcheck.rs), against real
//! PostgreSQL servers started by the tests, through the library and the real binary.

mod support;

use std::time::Duration;

use phasegate::executor::{self, Config, Outcome, Phase, Report};
use support::postgres::{sleep_ms, TestPostgres};
use support::sessions::{connect, session};

const BIN: &str = env!("CARGO_BIN_EXE_phasegate");
const CONTRACT: &str = "ALTER TABLE users DROP COLUMN legacy";

async fn setup(pg: &TestPostgres) -> tokio_postgres::Client {
    let c = pg.client().await;
    c.batch_execute(
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL, legacy int, legacy2 int);
         INSERT INTO users (email) SELECT 'u' || g || '@example.com' FROM generate_series(1, 10) g;",
    )
    .await
    .expect("setup schema");
    c
}

/// Opens a transaction (xact_start = now) and leaves it open.
async fn begin(c: &tokio_postgres::Client) {
    c.batch_execute("BEGIN; SELECT 1;").await.expect("begin");
}

fn contract(url: String, sql: &str) -> Config {
    let mut c = Config::new(url, Phase::Contract, sql);
    c.identity.namespace = "shop".into();
    c.identity.name = "m".into();
    c.identity.app_version = "2.0.0".into();
    c.database_check_timeout = Duration::from_secs(20);
    c
}

async fn columns(c: &tokio_postgres::Client) -> Vec<String> {
    c.query(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = 'users'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        &[],
    )
    .await
    .expect("columns")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn ledger_phases(c: &tokio_postgres::Client) -> Vec<(String, String, String)> {
    let exists: bool = c
        .query_one("SELECT to_regclass('phasegate.ledger') IS NOT NULL", &[])
        .await
        .expect("regclass")
        .get(0);
    if !exists {
        return Vec::new();
    }
    c.query(
        "SELECT name, phase, status FROM phasegate.ledger ORDER BY name, phase",
        &[],
    )
    .await
    .expect("ledger")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

fn assert_outcome(r: &Report, want: Outcome) {
    assert_eq!(r.outcome, want, "report: {}", r.to_json_line());
}

fn message(r: &Report) -> String {
    r.error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default()
}

/// Releases `c` after `ms`: drops it (closes the session) or commits.
fn close_after(c: tokio_postgres::Client, ms: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        sleep_ms(ms).await;
        drop(c);
    })
}

fn commit_after(
    c: tokio_postgres::Client,
    ms: u64,
) -> tokio::task::JoinHandle<tokio_postgres::Client> {
    tokio::spawn(async move {
        sleep_ms(ms).await;
        c.batch_execute("COMMIT").await.expect("commit");
        c
    })
}

/// Runs the real binary with `PHASEGATE_*` settings; returns (success, report, stdout+stderr).
async fn run_bin(envs: &[(&str, &str)]) -> (bool, Report, String) {
    let out = tokio::process::Command::new(BIN)
        .arg("apply")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "PHASEGATE_TERMINATION_LOG",
            "/nonexistent-dir/termination-log",
        )
        .envs(envs.iter().copied())
        .output()
        .await
        .expect("run phasegate");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report = Report::parse(&stdout).unwrap_or_else(|| panic!("no report: {stdout}\n{stderr}"));
    (out.status.success(), report, format!("{stdout}\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_version_session_blocks_contract_until_it_closes() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let (old, _) = session(&pg.url(), "shop-api@1.0.0").await;
    // Closed 2.5 s from now; the check must have waited for most of it. (At 1 s, connecting and
    // the steps before the check took more than 300 ms on a machine at load 20.)
    let release = close_after(old, 2500);
    let r = executor::execute(&contract(pg.url(), CONTRACT)).await;
    assert_outcome(&r, Outcome::Applied);
    let waited = r.db_check_wait_ms.expect("dbCheckWaitMs");
    assert!(waited >= 1500, "{}", r.to_json_line());
    assert!(r.summary().contains("for old sessions"), "{}", r.summary());
    assert_eq!(r.db_check_warning, None);
    assert!(!columns(&c).await.contains(&"legacy".to_string()));
    release.await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_version_and_unversioned_sessions_do_not_block() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let mut keep = Vec::new();
    for name in [
        "shop-api@2.0.0",
        "shop-api@v2.1.0",
        "worker@3.0.0",
        "psql",
        "shop-api@",
        "",
    ] {
        keep.push(session(&pg.url(), name).await.0);
    }
    // A transaction of today's code is fine too (no rollout time: only versions are checked).
    begin(&keep[3]).await;
    let r = executor::execute(&contract(pg.url(), CONTRACT)).await;
    assert_outcome(&r, Outcome::Applied);
    assert!(
        r.db_check_wait_ms.is_some_and(|ms| ms < 150),
        "{}",
        r.to_json_line()
    );
    assert!(!columns(&c).await.contains(&"legacy".to_string()));
    drop(keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_begun_before_the_rollout_block_until_they_end() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let (before, before_pid) = session(&pg.url(), "psql").await;
    begin(&before).await;
    sleep_ms(100).await;
    let completed = jiff::Timestamp::now();
    sleep_ms(100).await;
    let (after, _) = session(&pg.url(), "shop-api@2.0.0").await;
    begin(&after).await;
    let idle = session(&pg.url(), "psql").await.0; // no transaction at all

    // Bounded first: the old transaction is named; the young one is not.
    let mut cfg = contract(pg.url(), CONTRACT);
    cfg.rollout_completed_at = Some(completed);
    cfg.database_check_timeout = Duration::from_millis(300);
    let r = executor::execute(&cfg).await;
    assert_outcome(&r, Outcome::Failed);
    let msg = message(&r);
    assert!(
        msg.contains(&format!("pid {before_pid} (psql, idle in transaction): transaction began before the rollout completed"))
            && msg.contains("still 1 old session"),
        "{msg}"
    );

    let release = commit_after(before, 1000);
    cfg.database_check_timeout = Duration::from_secs(20);
    let r = executor::execute(&cfg).await;
    assert_outcome(&r, Outcome::Applied);
    assert!(
        r.db_check_wait_ms.is_some_and(|ms| ms >= 500),
        "{}",
        r.to_json_line()
    );
    assert!(!columns(&c).await.contains(&"legacy".to_string()));
    let _before = release.await.expect("release");
    after.batch_execute("COMMIT").await.expect("commit");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_fails_after_the_check_timeout_naming_blockers_and_a_retry_succeeds() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let (old, old_pid) = session(&pg.url(), "shop-api@1.0.0").await;
    let (tx, tx_pid) = session(&pg.url(), "psql").await;
    begin(&tx).await;
    sleep_ms(50).await;
    let completed = jiff::Timestamp::now().to_string();
    let url = pg.url();
    let envs = [
        ("PHASEGATE_DATABASE_URL", url.as_str()),
        ("PHASEGATE_PHASE", "contract"),
        ("PHASEGATE_SQL", CONTRACT),
        ("PHASEGATE_MIGRATION_NAMESPACE", "shop"),
        ("PHASEGATE_MIGRATION_NAME", "m"),
        ("PHASEGATE_APP_VERSION", "2.0.0"),
        ("PHASEGATE_ROLLOUT_COMPLETED_AT", completed.as_str()),
        ("PHASEGATE_DATABASE_CHECK_TIMEOUT", "600"), // bare number: milliseconds
    ];
    let (ok, r, output) = run_bin(&envs).await;
    assert!(!ok, "{output}");
    assert_outcome(&r, Outcome::Failed);
    let e = r.error.clone().expect("error");
    assert_eq!((e.sqlstate.as_deref(), e.statement), (None, None));
    assert!(
        e.message.contains(&format!(
            "pid {old_pid} (shop-api@1.0.0, idle): application version 1.0.0 is older than 2.0.0"
        )) && e
            .message
            .contains(&format!("pid {tx_pid} (psql, idle in transaction)"))
            && e.message.contains("nothing was applied"),
        "{}",
        e.message
    );
    assert!(
        r.db_check_wait_ms.is_some_and(|ms| ms >= 600),
        "{}",
        r.to_json_line()
    );
    assert!(r.to_json_line().contains("\"dbCheckWaitMs\":"));
    assert!(
        output.contains("contract waits"),
        "the wait is logged: {output}"
    );
    assert_eq!(r.attempts, 0, "no attempt was made");
    assert!(columns(&c).await.contains(&"legacy".to_string()));
    assert!(
        !ledger_phases(&c)
            .await
            .iter()
            .any(|(_, p, _)| p == "contract"),
        "{:?}",
        ledger_phases(&c).await
    );

    // Once they are gone, the retry applies.
    drop(old);
    tx.batch_execute("COMMIT").await.expect("commit");
    let (ok, r, output) = run_bin(&envs).await;
    assert!(ok, "{output}");
    assert_outcome(&r, Outcome::Applied);
    assert!(!columns(&c).await.contains(&"legacy".to_string()));
    assert_eq!(
        ledger_phases(&c).await,
        vec![("m".into(), "contract".into(), "applied".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_with_database_check_false_skips_the_check() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let (_old, _) = session(&pg.url(), "shop-api@1.0.0").await;
    let url = pg.url();
    let completed = jiff::Timestamp::now().to_string();
    let mut envs = vec![
        ("PHASEGATE_DATABASE_URL", url.as_str()),
        ("PHASEGATE_PHASE", "contract"),
        ("PHASEGATE_SQL", CONTRACT),
        ("PHASEGATE_APP_VERSION", "2.0.0"),
        ("PHASEGATE_ROLLOUT_COMPLETED_AT", completed.as_str()),
        ("PHASEGATE_DATABASE_CHECK_TIMEOUT", "300ms"),
        ("PHASEGATE_DATABASE_CHECK", "maybe"),
    ];
    // An invalid value is refused for contract before anything runs.
    let (ok, r, output) = run_bin(&envs).await;
    assert!(!ok, "{output}");
    assert!(
        message(&r).contains("PHASEGATE_DATABASE_CHECK"),
        "{}",
        message(&r)
    );

    envs.pop();
    envs.push(("PHASEGATE_DATABASE_CHECK", "false"));
    let (ok, r, output) = run_bin(&envs).await;
    assert!(ok, "{output}");
    assert_outcome(&r, Outcome::Applied);
    assert_eq!(r.db_check_wait_ms, None);
    assert!(!r.to_json_line().contains("dbCheck"));
    assert!(!columns(&c).await.contains(&"legacy".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expand_never_runs_the_database_check() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let (_old, _) = session(&pg.url(), "shop-api@1.0.0").await;
    let (tx, _) = session(&pg.url(), "psql").await;
    begin(&tx).await;
    sleep_ms(50).await;
    let mut cfg = contract(pg.url(), "ALTER TABLE users ADD COLUMN fresh int");
    cfg.phase = Phase::Expand;
    cfg.rollout_completed_at = Some(jiff::Timestamp::now());
    cfg.database_check = true;
    cfg.database_check_timeout = Duration::from_millis(100);
    let r = executor::execute(&cfg).await;
    assert_outcome(&r, Outcome::Applied);
    assert_eq!(r.db_check_wait_ms, None);
    assert!(columns(&c).await.contains(&"fresh".to_string()));

    // Through the binary, even an invalid PHASEGATE_DATABASE_CHECK is ignored for expand.
    let url = pg.url();
    let (ok, r, output) = run_bin(&[
        ("PHASEGATE_DATABASE_URL", url.as_str()),
        ("PHASEGATE_PHASE", "expand"),
        ("PHASEGATE_SQL", "ALTER TABLE users ADD COLUMN fresh2 int"),
        ("PHASEGATE_APP_VERSION", "2.0.0"),
        ("PHASEGATE_ROLLOUT_COMPLETED_AT", "2020-01-01T00:00:00Z"),
        ("PHASEGATE_DATABASE_CHECK", "maybe"),
    ])
    .await;
    assert!(ok, "{output}");
    assert_outcome(&r, Outcome::Applied);
    assert_eq!(r.db_check_wait_ms, None);
    tx.batch_execute("COMMIT").await.expect("commit");
}

/// Without pg_read_all_stats, pg_stat_activity hides other roles' xact_start but not their
/// application_name: versions are still checked exactly; transactions conservatively.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprivileged_role_sees_versions_and_waits_out_hidden_transactions() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    c.batch_execute(
        "CREATE ROLE app LOGIN PASSWORD 'app-pw';
         CREATE ROLE migr LOGIN PASSWORD 'migr-pw';
         GRANT CREATE ON DATABASE postgres TO migr;
         ALTER TABLE users OWNER TO migr;
         GRANT ALL ON users TO app;",
    )
    .await
    .expect("roles");
    let port = pg.port();
    let app_url = format!("postgres://app:app-pw@127.0.0.1:{port}/postgres?sslmode=disable");
    let migr_url = format!("postgres://migr:migr-pw@127.0.0.1:{port}/postgres?sslmode=disable");

    // What the migration role sees of the application's sessions.
    let (old, old_pid) = session(&app_url, "shop-api@1.0.0").await;
    begin(&old).await;
    let migr = connect(&migr_url).await;
    let row = migr
        .query_one(
            "SELECT application_name, backend_type, state, xact_start, query FROM pg_stat_activity WHERE pid = $1",
            &[&old_pid],
        )
        .await
        .expect("activity");
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("shop-api@1.0.0")
    );
    assert_eq!(
        row.get::<_, Option<String>>(1),
        None,
        "backend_type is hidden"
    );
    assert_eq!(row.get::<_, Option<String>>(2), None, "state is hidden");
    assert!(
        row.get::<_, Option<std::time::SystemTime>>(3).is_none(),
        "xact_start is hidden"
    );
    assert_eq!(
        row.get::<_, Option<String>>(4).as_deref(),
        Some("<insufficient privilege>")
    );

    // 1. The version rule works without privileges.
    let mut cfg = contract(migr_url.clone(), CONTRACT);
    cfg.database_check_timeout = Duration::from_millis(300);
    let r = executor::execute(&cfg).await;
    assert_outcome(&r, Outcome::Failed);
    assert!(
        message(&r).contains(&format!(
            "pid {old_pid} (shop-api@1.0.0): application version 1.0.0"
        )),
        "{}",
        message(&r)
    );
    old.batch_execute("COMMIT").await.expect("commit");
    drop(old);

    // 2. A hidden transaction that was open when the check began is waited out, even a young
    //    one (its start is unknown), and the report says the check was limited.
    let (tx, _) = session(&app_url, "psql").await;
    sleep_ms(50).await;
    cfg.rollout_completed_at = Some(jiff::Timestamp::now());
    sleep_ms(50).await;
    begin(&tx).await; // began after the rollout, but we cannot tell
    let r = executor::execute(&cfg).await;
    assert_outcome(&r, Outcome::Failed);
    assert!(
        message(&r).contains("start time hidden without pg_read_all_stats"),
        "{}",
        message(&r)
    );
    assert!(
        r.db_check_warning
            .as_deref()
            .is_some_and(|w| w.contains("GRANT pg_read_all_stats")),
        "{}",
        r.to_json_line()
    );
    let release = commit_after(tx, 1000);
    cfg.database_check_timeout = Duration::from_secs(20);
    let r = executor::execute(&cfg).await;
    assert_outcome(&r, Outcome::Applied);
    assert!(
        r.db_check_wait_ms.is_some_and(|ms| ms >= 500),
        "{}",
        r.to_json_line()
    );
    assert!(r.db_check_warning.is_some(), "{}", r.to_json_line());
    let tx = release.await.expect("release");

    // 3. With pg_read_all_stats the check is exact: a young transaction does not block.
    c.batch_execute("GRANT pg_read_all_stats TO migr")
        .await
        .expect("grant");
    let mut cfg = contract(migr_url, "ALTER TABLE users DROP COLUMN legacy2");
    cfg.identity.name = "m2".into();
    cfg.rollout_completed_at = Some(jiff::Timestamp::now());
    sleep_ms(50).await;
    begin(&tx).await;
    cfg.database_check_timeout = Duration::from_millis(300);
    let r = executor::execute(&cfg).await;
    assert_outcome(&r, Outcome::Applied);
    assert_eq!(r.db_check_warning, None);
    tx.batch_execute("COMMIT").await.expect("commit");
    drop(migr);
}

use support::apply;

/// A contract run of shop/m needing 2.0.0 (see [`apply::contract_envs`]).
fn bin_contract_envs<'a>(url: &'a str, sql: &'a str) -> Vec<(&'a str, &'a str)> {
    apply::contract_envs(url, sql, "2.0.0", "/nonexistent-dir/termination-log")
}

/// The check passed, then the executor queued for its lock; an old-version session connects
/// meanwhile. The re-check inside the transaction, right before COMMIT, must catch it: the
/// transaction rolls back and contract waits (outside the locks) until the session is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_session_arriving_during_the_lock_wait_is_caught_before_commit() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let holder = connect(&pg.url()).await;
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM users;")
        .await
        .expect("hold");
    let url = pg.url();
    let mut envs = bin_contract_envs(&url, CONTRACT);
    // In the lock queue inside the transaction (no lock-aware waiting), for long enough.
    envs.push(("PHASEGATE_LOCK_WAIT_TIMEOUT", "0"));
    envs.push(("PHASEGATE_LOCK_TIMEOUT", "60s"));
    envs.push(("PHASEGATE_DATABASE_CHECK_TIMEOUT", "30s"));
    let mut run = apply::spawn(&envs);
    run.wait_queued(&c, "users").await;
    let (old, old_pid) = session(&pg.url(), "shop-api@1.0.0").await;
    holder.batch_execute("COMMIT").await.expect("release");

    // While the old session is connected, contract does not commit.
    sleep_ms(1500).await;
    assert!(!run.exited(), "exited early: {}", run.stderr_so_far());
    assert!(columns(&c).await.contains(&"legacy".to_string()));
    assert!(ledger_phases(&c).await.is_empty());

    drop(old);
    let (f, _) = run.finish(Duration::from_secs(30)).await;
    assert_eq!(f.code, Some(0), "{}", f.output());
    let r = f.report();
    assert_outcome(r, Outcome::Applied);
    assert_eq!(
        r.attempts,
        2,
        "one rolled back, one committed: {}",
        r.to_json_line()
    );
    assert!(!columns(&c).await.contains(&"legacy".to_string()));
    assert_eq!(
        ledger_phases(&c).await,
        vec![("m".into(), "contract".into(), "applied".into())]
    );
    assert!(
        f.stderr.contains(&format!("pid {old_pid} (shop-api@1.0.0")),
        "the late blocker is named: {}",
        f.stderr
    );
}

/// PHASEGATE_APPLICATION_NAMES: only the migration's own applications are judged by version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_migrations_own_applications_are_judged() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let (billing, billing_pid) = session(&pg.url(), "billing@1.3.0").await;
    let (shop, shop_pid) = session(&pg.url(), "shop-api@1.0.0").await;
    let url = pg.url();
    let mut envs = bin_contract_envs(&url, CONTRACT);
    envs.push(("PHASEGATE_APPLICATION_NAMES", "shop-api, shop-worker"));
    envs.push(("PHASEGATE_DATABASE_CHECK_TIMEOUT", "700ms"));

    let f = apply::run(&envs).await;
    assert_eq!(f.code, Some(1), "{}", f.output());
    let r = f.report();
    assert_outcome(r, Outcome::Failed);
    let msg = message(r);
    assert!(
        msg.contains(&format!("pid {shop_pid} (shop-api@1.0.0")) && msg.contains("still 1 old"),
        "{msg}"
    );
    assert!(!msg.contains("billing"), "{msg}");
    // The wait was announced once per blocker, as a JSON line, though the check polled often.
    let waits = f.waits();
    assert_eq!(waits.len(), 1, "{}", f.stderr);
    assert_eq!(waits[0]["waiting"], "database-check");
    assert!(
        waits[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&shop_pid.to_string())),
        "{}",
        f.stderr
    );
    assert!(columns(&c).await.contains(&"legacy".to_string()));

    // The shop's old session leaves; billing's stays and does not matter.
    drop(shop);
    let f = apply::run(&envs).await;
    assert_eq!(f.code, Some(0), "{}", f.output());
    assert_outcome(f.report(), Outcome::Applied);
    assert!(!columns(&c).await.contains(&"legacy".to_string()));
    let still: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
            &[&billing_pid],
        )
        .await
        .expect("activity")
        .get(0);
    assert!(still);

    // Unset: every `<app>@<version>` session is judged, as before.
    let envs = bin_contract_envs(&url, "ALTER TABLE users DROP COLUMN legacy2");
    let mut envs: Vec<_> = envs
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                if k == "PHASEGATE_MIGRATION_NAME" {
                    "m2"
                } else {
                    v
                },
            )
        })
        .collect();
    envs.push(("PHASEGATE_DATABASE_CHECK_TIMEOUT", "300ms"));
    let f = apply::run(&envs).await;
    assert_outcome(f.report(), Outcome::Failed);
    assert!(
        message(f.report()).contains("billing@1.3.0"),
        "{}",
        message(f.report())
    );
    drop(billing);
}

/// PHASEGATE_REQUIRE_EXPAND: contract runs only on the database whose ledger holds this
/// migration's expand (same namespace, name and uid).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_requires_the_expand_of_the_same_migration_in_this_database() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    c.batch_execute("CREATE DATABASE other").await.expect("db");
    let other = connect(&pg.url_for_db("other")).await;
    other
        .batch_execute("CREATE TABLE users (id int, legacy int, legacy2 int)")
        .await
        .expect("other schema");
    let url = pg.url();
    let other_url = pg.url_for_db("other");

    let f = apply::run(&[
        ("PHASEGATE_DATABASE_URL", &url),
        ("PHASEGATE_PHASE", "expand"),
        ("PHASEGATE_SQL", "ALTER TABLE users ADD COLUMN fresh int"),
        ("PHASEGATE_MIGRATION_NAMESPACE", "shop"),
        ("PHASEGATE_MIGRATION_NAME", "m"),
        ("PHASEGATE_MIGRATION_UID", "uid-1"),
    ])
    .await;
    assert_outcome(f.report(), Outcome::Applied);

    // Contract settings for `url` as object `uid`, optionally requiring expand.
    let contract_run = |url: &str, uid: &str, require: bool| {
        let mut envs: Vec<(&str, &str)> = bin_contract_envs(url, CONTRACT)
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    if k == "PHASEGATE_MIGRATION_UID" {
                        uid
                    } else {
                        v
                    },
                )
            })
            .collect();
        if require {
            envs.push(("PHASEGATE_REQUIRE_EXPAND", "true"));
        }
        let owned: Vec<(String, String)> = envs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        async move {
            let envs: Vec<(&str, &str)> = owned
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            apply::run(&envs).await
        }
    };

    // The Secret now points at another database: refused, nothing applied there.
    let f = contract_run(&other_url, "uid-1", true).await;
    assert_eq!(f.code, Some(1), "{}", f.output());
    assert_outcome(f.report(), Outcome::Failed);
    let msg = message(f.report());
    assert!(
        msg.contains("no record of expand") && msg.contains("shop/m"),
        "{msg}"
    );
    let cols: Vec<String> = other
        .query("SELECT attname::text FROM pg_attribute WHERE attrelid = 'users'::regclass AND attnum > 0 AND NOT attisdropped", &[])
        .await
        .expect("columns")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(cols.contains(&"legacy".to_string()), "{cols:?}");
    let ledger: bool = other
        .query_one("SELECT to_regclass('phasegate.ledger') IS NOT NULL", &[])
        .await
        .expect("regclass")
        .get(0);
    assert!(
        !ledger,
        "no ledger is created in a database that is not ours"
    );

    // Same name, another object (uid): refused too.
    let f = contract_run(&url, "uid-2", true).await;
    assert_outcome(f.report(), Outcome::Failed);
    let msg = message(f.report());
    assert!(msg.contains("uid-1") && msg.contains("uid-2"), "{msg}");
    assert!(columns(&c).await.contains(&"legacy".to_string()));

    // The right database and object: applied.
    let f = contract_run(&url, "uid-1", true).await;
    assert_eq!(f.code, Some(0), "{}", f.output());
    assert_outcome(f.report(), Outcome::Applied);
    assert!(!columns(&c).await.contains(&"legacy".to_string()));

    // Without the setting, the other database is not protected (today's behaviour).
    let f = contract_run(&other_url, "uid-1", false).await;
    assert_outcome(f.report(), Outcome::Applied);
}

/// A stop while contract waits in the database check ends the wait at once; nothing applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_the_database_check_stops_at_once() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let (old, _) = session(&pg.url(), "shop-api@1.0.0").await;
    let url = pg.url();
    let run = apply::spawn(&bin_contract_envs(&url, CONTRACT));
    assert!(
        run.wait_for_stderr(
            |l| l.contains("\"database-check\""),
            Duration::from_secs(20)
        )
        .await,
        "never waited: {}",
        run.stderr_so_far()
    );
    run.signal("TERM");
    let (f, elapsed) = run.finish(Duration::from_secs(10)).await;
    assert_eq!(f.code, Some(143), "{}", f.output());
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert_outcome(f.report(), Outcome::Failed);
    assert_eq!(f.report_json()["stoppedBy"], "SIGTERM");
    assert_eq!(f.report().attempts, 0);
    assert!(columns(&c).await.contains(&"legacy".to_string()));
    assert!(ledger_phases(&c).await.is_empty());
    drop(old);
}

/// The report measures what is left of the race: from the last look at the gates (the
/// re-check inside the transaction, the stop flag) to COMMIT's acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_race_window_before_commit_is_measured() {
    let pg = TestPostgres::start();
    let _c = setup(&pg).await;
    let url = pg.url();
    let mut windows = Vec::new();
    for (i, col) in ["legacy", "legacy2"].iter().enumerate() {
        let sql = format!("ALTER TABLE users DROP COLUMN {col}");
        let name = format!("m{i}");
        let mut envs = bin_contract_envs(&url, &sql);
        envs.retain(|(k, _)| *k != "PHASEGATE_MIGRATION_NAME");
        envs.push(("PHASEGATE_MIGRATION_NAME", &name));
        let f = apply::run(&envs).await;
        assert_outcome(f.report(), Outcome::Applied);
        let us = f.report_json()["gateToCommitUs"]
            .as_u64()
            .unwrap_or_else(|| panic!("no gateToCommitUs: {}", f.stdout));
        windows.push(us);
    }
    eprintln!("gate-to-commit windows (µs): {windows:?}");
    assert!(windows.iter().all(|us| *us < 1_000_000), "{windows:?}");
}

/// A role that sees every session (pg_read_all_stats) has its look skip `pg_locks`; if a
/// session is hidden after all (the grant was revoked since the run began), the look reads
/// `pg_locks` at once and waits out that session's transaction as without the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_hidden_since_the_run_began_is_still_waited_out() {
    use phasegate::executor::dbcheck::{Checker, Reason};
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    c.batch_execute(
        "CREATE ROLE app LOGIN PASSWORD 'app-pw';
         CREATE ROLE migr LOGIN PASSWORD 'migr-pw';",
    )
    .await
    .expect("roles");
    let port = pg.port();
    let app_url = format!("postgres://app:app-pw@127.0.0.1:{port}/postgres?sslmode=disable");
    let migr_url = format!("postgres://migr:migr-pw@127.0.0.1:{port}/postgres?sslmode=disable");
    let (tx, tx_pid) = session(&app_url, "psql").await;
    begin(&tx).await;
    let migr = connect(&migr_url).await;
    // The run began with the grant (sees_all); it is not there now.
    let mut checker = Checker::new("2.0.0", Some(jiff::Timestamp::now().to_string()), None);
    checker.sees_all = true;
    let seen = checker.observe(&migr).await.expect("observe");
    assert_eq!(
        seen.blockers
            .iter()
            .map(|b| (b.pid, b.reason.clone()))
            .collect::<Vec<_>>(),
        [(tx_pid, Reason::HiddenTransaction)],
        "{seen:?}"
    );
    assert!(!checker.sees_all, "later looks read pg_locks too");
    tx.batch_execute("COMMIT").await.expect("commit");
}
