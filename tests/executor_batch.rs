//! An expand batch (`PHASEGATE_EXPAND_BATCH`) through the real `phasegate apply` binary against
//! a real PostgreSQL: later migrations of the database applied after the lead, in order, each
//! exactly once with its own ledger row; the first failure ends the batch; a SIGKILL mid-batch
//! loses nothing and a rerun applies the rest once.

mod support;

use std::time::Duration;

use phasegate::executor::{Outcome, Report};
use phasegate::protocol::batch::{BatchMember, BatchOutcome};
use support::postgres::TestPostgres;

const BIN: &str = env!("CARGO_BIN_EXE_phasegate");

fn member(name: &str, sql: &str) -> BatchMember {
    BatchMember {
        name: name.into(),
        uid: format!("uid-{name}"),
        app_version: "2.0.0".into(),
        sql: sql.into(),
        lock_timeout: "200ms".into(),
        statement_timeout: "10s".into(),
        young_transaction: "30ms".into(),
        lock_wait_attempt_after: "10s".into(),
        max_lock_retries: 3,
    }
}

/// The batch Job's command: lead `a-add` (adds `other.verified`), then `members`.
fn command(pg: &TestPostgres, members: &[BatchMember]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(BIN);
    c.arg("apply")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PHASEGATE_DATABASE_URL", pg.url())
        .env("PHASEGATE_PHASE", "expand")
        .env("PHASEGATE_MIGRATION_NAMESPACE", "shop")
        .env("PHASEGATE_MIGRATION_NAME", "a-add")
        .env("PHASEGATE_MIGRATION_UID", "uid-a-add")
        .env("PHASEGATE_APP_VERSION", "2.0.0")
        .env(
            "PHASEGATE_SQL",
            "ALTER TABLE other ADD COLUMN verified boolean;",
        )
        .env("PHASEGATE_LOCK_TIMEOUT", "200ms")
        .env("PHASEGATE_TERMINATION_LOG", "/nonexistent/termination-log")
        .env(
            "PHASEGATE_EXPAND_BATCH",
            serde_json::to_string(members).expect("json"),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c
}

/// Runs the batch to its end: (exit code, its report).
async fn run(pg: &TestPostgres, members: &[BatchMember]) -> (i32, Report) {
    let out = command(pg, members).output().await.expect("run phasegate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = stdout
        .lines()
        .last()
        .and_then(Report::parse)
        .unwrap_or_else(|| {
            panic!(
                "no report in {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (out.status.code().unwrap_or(-1), report)
}

async fn setup(pg: &TestPostgres) -> tokio_postgres::Client {
    let c = pg.client().await;
    c.batch_execute("CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL); CREATE TABLE other (id int)")
        .await
        .expect("setup");
    c
}

/// (name, uid, status, attempts) of every expand in the ledger, in the order they applied.
async fn ledger(c: &tokio_postgres::Client) -> Vec<(String, String, String, i32)> {
    c.query(
        "SELECT name, uid, status, attempts FROM phasegate.ledger WHERE phase = 'expand'
          ORDER BY applied_at NULLS LAST, name",
        &[],
    )
    .await
    .expect("ledger")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

fn applied(names: &[&str]) -> Vec<(String, String, String, i32)> {
    names
        .iter()
        .map(|n| (n.to_string(), format!("uid-{n}"), "applied".into(), 1))
        .collect()
}

/// Each member needs what the one before it adds: only the order works.
fn chain() -> Vec<BatchMember> {
    vec![
        member(
            "b-index",
            "CREATE INDEX other_verified ON other (verified);",
        ),
        member(
            "c-comment",
            "COMMENT ON INDEX other_verified IS 'who verified';",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_applies_every_member_in_order_each_with_its_own_ledger_row() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let (code, r) = run(&pg, &chain()).await;
    assert_eq!(code, 0, "{}", r.to_json_line());
    assert_eq!(r.outcome, Outcome::Applied);
    assert_eq!(
        r.batch,
        Some(BatchOutcome {
            applied: 3,
            total: 3,
            failed: None
        })
    );
    assert_eq!(r.statements, 3, "every member's statements are counted");
    assert_eq!(
        ledger(&c).await,
        applied(&["a-add", "b-index", "c-comment"])
    );
    // Again: each is already applied, nothing runs twice.
    let (code, r) = run(&pg, &chain()).await;
    assert_eq!(code, 0);
    assert_eq!(r.statements, 0, "{}", r.to_json_line());
    assert_eq!(r.batch.map(|b| b.applied), Some(3));
    assert_eq!(
        ledger(&c).await,
        applied(&["a-add", "b-index", "c-comment"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_failing_member_ends_the_batch_and_the_ones_after_it_do_not_run() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let members = vec![
        member(
            "b-index",
            "CREATE INDEX other_verified ON other (verified);",
        ),
        member(
            "c-broken",
            "ALTER TABLE users ADD COLUMN note text; ALTER TABLE nope ADD COLUMN x int;",
        ),
        member("d-comment", "COMMENT ON TABLE users IS 'people';"),
    ];
    let (code, r) = run(&pg, &members).await;
    assert_eq!(code, 1, "{}", r.to_json_line());
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(
        r.batch,
        Some(BatchOutcome {
            applied: 2,
            total: 4,
            failed: Some("c-broken".into())
        })
    );
    let error = r.error.expect("the failing member's error");
    assert_eq!(error.sqlstate.as_deref(), Some("42P01"), "{error:?}");
    assert_eq!(ledger(&c).await[..2], applied(&["a-add", "b-index"])[..]);
    let names: Vec<String> = ledger(&c).await.into_iter().map(|r| r.0).collect();
    assert!(
        !names.contains(&"d-comment".to_string()),
        "d-comment ran after the failure: {names:?}"
    );
    let note: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'users'::regclass AND attname = 'note')",
            &[],
        )
        .await
        .expect("column")
        .get(0);
    assert!(!note, "the failing member's transaction is rolled back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_killed_mid_way_loses_nothing_and_a_rerun_applies_the_rest_once() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    // An old transaction holds users: the member that alters it waits outside the lock queue
    // after the lead and the member before it have applied.
    let holder = pg.client().await;
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM users;")
        .await
        .expect("hold users");
    let members = vec![
        member("b-other", "ALTER TABLE other ADD COLUMN x int;"),
        member("c-users", "ALTER TABLE users ADD COLUMN note text;"),
        member("d-comment", "COMMENT ON COLUMN users.note IS 'free text';"),
    ];
    let mut child = command(&pg, &members).spawn().expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !applied_names(&c).await.contains(&"b-other".to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "b-other never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.start_kill().expect("SIGKILL");
    let status = child.wait().await.expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "killed while c-users waited"
    );
    assert_eq!(ledger(&c).await, applied(&["a-add", "b-other"]));
    holder.batch_execute("COMMIT").await.expect("release users");
    // The rerun applies what is left, once each; what was applied is not run again.
    let (code, r) = run(&pg, &members).await;
    assert_eq!(code, 0, "{}", r.to_json_line());
    assert_eq!(
        r.statements,
        2,
        "only c-users and d-comment ran: {}",
        r.to_json_line()
    );
    assert_eq!(
        ledger(&c).await,
        applied(&["a-add", "b-other", "c-users", "d-comment"])
    );
}

/// The names of the expands the ledger records as applied (none before it exists).
async fn applied_names(c: &tokio_postgres::Client) -> Vec<String> {
    c.query(
        "SELECT name FROM phasegate.ledger WHERE phase = 'expand' AND status = 'applied'",
        &[],
    )
    .await
    .map(|rows| rows.iter().map(|r| r.get(0)).collect())
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refuses_one_sql_for_all_given_by_flag() {
    let pg = TestPostgres::start();
    let out = command(&pg, &chain())
        .args(["--sql", "SELECT 1"])
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PHASEGATE_EXPAND_BATCH"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_an_invalid_setting_fails_in_its_turn_naming_the_setting() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let mut bad = member("c-bad", "COMMENT ON TABLE users IS 'people';");
    bad.lock_timeout = "soon".into();
    let members = vec![
        member(
            "b-index",
            "CREATE INDEX other_verified ON other (verified);",
        ),
        bad,
        member("d-comment", "COMMENT ON TABLE other IS 'other';"),
    ];
    let (code, r) = run(&pg, &members).await;
    assert_eq!(code, 1, "{}", r.to_json_line());
    assert_eq!(
        r.batch,
        Some(BatchOutcome {
            applied: 2,
            total: 4,
            failed: Some("c-bad".into())
        })
    );
    let error = r.error.expect("its error");
    assert!(
        error.message.contains("PHASEGATE_LOCK_TIMEOUT"),
        "{error:?}"
    );
    assert_eq!(ledger(&c).await, applied(&["a-add", "b-index"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_is_not_a_list_of_members_is_refused_naming_the_variable() {
    let pg = TestPostgres::start();
    let out = command(&pg, &[])
        .env("PHASEGATE_EXPAND_BATCH", "b-index,c-comment")
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PHASEGATE_EXPAND_BATCH") && err.contains("not a list of batch members"),
        "{err}"
    );
}
