//! The executor against real PostgreSQL servers started by the tests (see support/postgres.rs),
//! through the library and through the real `phasegate apply` binary.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use phasegate::executor::{self, Config, Outcome, Phase, Report};
use support::postgres::{TestPostgres, PASSWORD};
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_phasegate");

async fn setup(pg: &TestPostgres) -> tokio_postgres::Client {
    let c = pg.client().await;
    c.batch_execute(
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL);
         INSERT INTO users (email) SELECT 'u' || g || '@example.com' FROM generate_series(1, 100) g;",
    )
    .await
    .expect("setup schema");
    c
}

fn cfg(pg: &TestPostgres, sql: &str) -> Config {
    let mut c = Config::new(pg.url(), Phase::Expand, sql);
    c.identity.namespace = "shop".into();
    c.identity.name = "users-email-verified".into();
    c.identity.uid = "uid-1".into();
    c.identity.app_version = "2.4.0".into();
    c
}

async fn columns(c: &tokio_postgres::Client, table: &str) -> Vec<String> {
    c.query(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        &[&table],
    )
    .await
    .expect("columns")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn ledger_rows(c: &tokio_postgres::Client) -> Vec<(String, String, String, i32, i32)> {
    let exists: bool = c
        .query_one("SELECT to_regclass('phasegate.ledger') IS NOT NULL", &[])
        .await
        .expect("regclass")
        .get(0);
    if !exists {
        return Vec::new();
    }
    c.query("SELECT name, phase, status, statements_done, attempts FROM phasegate.ledger ORDER BY name, phase", &[])
        .await
        .expect("ledger")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

fn assert_outcome(r: &Report, want: Outcome) {
    assert_eq!(r.outcome, want, "report: {}", r.to_json_line());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_once_then_reports_already_applied() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let sql = "ALTER TABLE users ADD COLUMN email_verified boolean;\nCREATE INDEX users_email_idx ON users (email);";
    let r = executor::execute(&cfg(&pg, sql)).await;
    assert_outcome(&r, Outcome::Applied);
    assert_eq!((r.statements, r.attempts, r.lock_retries), (2, 1, 0));
    assert!(columns(&c, "users")
        .await
        .contains(&"email_verified".to_string()));
    assert_eq!(
        ledger_rows(&c).await,
        vec![(
            "users-email-verified".into(),
            "expand".into(),
            "applied".into(),
            2,
            1
        )]
    );

    let again = executor::execute(&cfg(&pg, &format!("  {sql}\n\n"))).await;
    assert_outcome(&again, Outcome::AlreadyApplied);
    assert_eq!(again.statements, 0);
    assert_eq!(again.checksum, r.checksum);

    // The same name in another namespace is another migration; contract is another phase.
    let mut other = cfg(&pg, "ALTER TABLE users ADD COLUMN other boolean");
    other.phase = Phase::Contract;
    assert_outcome(&executor::execute(&other).await, Outcome::Applied);
    assert_eq!(ledger_rows(&c).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_mismatch_is_refused_without_running_anything() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    assert_outcome(
        &executor::execute(&cfg(&pg, "ALTER TABLE users ADD COLUMN a int")).await,
        Outcome::Applied,
    );
    let r = executor::execute(&cfg(&pg, "ALTER TABLE users ADD COLUMN b int")).await;
    assert_outcome(&r, Outcome::Failed);
    let msg = r
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(
        msg.contains("checksum") && msg.contains("shop/users-email-verified"),
        "{msg}"
    );
    assert!(!columns(&c, "users").await.contains(&"b".to_string()));

    // A recreated object (new uid) with the same SQL is already applied, not re-run.
    let mut recreated = cfg(&pg, "ALTER TABLE users ADD COLUMN a int");
    recreated.identity.uid = "uid-2".into();
    assert_outcome(
        &executor::execute(&recreated).await,
        Outcome::AlreadyApplied,
    );

    // A recreated object (new uid) with other SQL is another migration: its SQL runs, once,
    // and the ledger row is now its own.
    let mut renewed = cfg(&pg, "ALTER TABLE users ADD COLUMN c int");
    renewed.identity.uid = "uid-3".into();
    assert_outcome(&executor::execute(&renewed).await, Outcome::Applied);
    assert!(columns(&c, "users").await.contains(&"c".to_string()));
    assert_outcome(&executor::execute(&renewed).await, Outcome::AlreadyApplied);
    // The same object with yet other SQL is still refused.
    let mut edited = cfg(&pg, "ALTER TABLE users ADD COLUMN d int");
    edited.identity.uid = "uid-3".into();
    assert_outcome(&executor::execute(&edited).await, Outcome::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_statement_rolls_back_the_whole_phase() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let r = executor::execute(&cfg(
        &pg,
        "ALTER TABLE users ADD COLUMN a int;\nSELECT * FROM nope;",
    ))
    .await;
    assert_outcome(&r, Outcome::Failed);
    let e = r.error.clone().expect("error");
    assert_eq!(e.sqlstate.as_deref(), Some("42P01"));
    assert_eq!(e.statement, Some(2));
    assert!(
        e.message.contains("relation \"nope\" does not exist"),
        "{}",
        e.message
    );
    assert_eq!(
        r.summary(),
        "failed: ERROR 42P01: relation \"nope\" does not exist (statement 2)"
    );
    assert!(!columns(&c, "users").await.contains(&"a".to_string()));
    assert!(ledger_rows(&c).await.is_empty());
    // Fixing the SQL afterwards is allowed: nothing was recorded.
    assert_outcome(
        &executor::execute(&cfg(&pg, "ALTER TABLE users ADD COLUMN a int")).await,
        Outcome::Applied,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syntax_errors_are_caught_before_connecting() {
    // Port 9 on loopback: nothing listens; a connection attempt would fail differently.
    let mut c = Config::new(
        "postgres://u:pw@127.0.0.1:9/db",
        Phase::Expand,
        "ALTER TABLE users ADD COLUMN",
    );
    c.connect_timeout = Duration::from_secs(1);
    let r = executor::execute(&c).await;
    assert_outcome(&r, Outcome::Failed);
    let e = r.error.expect("error");
    assert_eq!(e.sqlstate.as_deref(), Some("42601"));
    assert!(e.message.contains("syntax error"), "{}", e.message);

    c.sql = "BEGIN; ALTER TABLE users ADD COLUMN a int; COMMIT;".into();
    let e = executor::execute(&c).await.error.expect("error");
    assert_eq!(e.statement, Some(1));
    assert!(e.message.contains("transaction control"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_fails_fast_with_a_clear_message() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let mut c = Config::new(
        format!("postgres://u:{PASSWORD}@127.0.0.1:{port}/db"),
        Phase::Expand,
        "SELECT 1",
    );
    c.connect_timeout = Duration::from_secs(2);
    let start = Instant::now();
    let r = executor::execute(&c).await;
    assert_outcome(&r, Outcome::Failed);
    assert!(start.elapsed() < Duration::from_secs(5));
    let msg = r.error.expect("error").message;
    assert!(msg.contains("could not connect"), "{msg}");
    assert!(!msg.contains(PASSWORD));
}

/// Runs the real binary; returns (exit success, stdout, stderr).
async fn run_bin(envs: &[(&str, &str)]) -> (bool, String, String) {
    let out = tokio::process::Command::new(BIN)
        .arg("apply")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(envs.iter().copied())
        .output()
        .await
        .expect("run phasegate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reports_and_never_leaks_the_password() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let term = dir.path().join("termination-log");
    let term_s = term.to_string_lossy().to_string();

    let wrong = pg.url_with_password("not-the-pw-9");
    let (ok, out, err) = run_bin(&[
        ("PHASEGATE_DATABASE_URL", &wrong),
        ("PHASEGATE_PHASE", "expand"),
        ("PHASEGATE_SQL", "ALTER TABLE users ADD COLUMN a int"),
        ("PHASEGATE_TERMINATION_LOG", &term_s),
    ])
    .await;
    assert!(!ok);
    let r = Report::parse(last_line(&out)).unwrap_or_else(|| panic!("no report in {out}"));
    assert_outcome(&r, Outcome::Failed);
    assert_eq!(
        r.error.as_ref().and_then(|e| e.sqlstate.as_deref()),
        Some("28P01"),
        "{out}"
    );
    for s in [&out, &err] {
        assert!(
            !s.contains("not-the-pw-9") && !s.contains(&wrong),
            "leak in {s}"
        );
    }
    let written = std::fs::read_to_string(&term).expect("termination log");
    assert_eq!(Report::parse(&written), Some(r));

    let (ok, out, err) = run_bin(&[
        ("PHASEGATE_DATABASE_URL", &pg.url()),
        ("PHASEGATE_PHASE", "expand"),
        ("PHASEGATE_SQL", "ALTER TABLE users ADD COLUMN a int"),
        ("PHASEGATE_MIGRATION_NAMESPACE", "shop"),
        ("PHASEGATE_MIGRATION_NAME", "m1"),
        (
            "PHASEGATE_TERMINATION_LOG",
            "/nonexistent-dir/termination-log",
        ),
    ])
    .await;
    assert!(ok, "{out}\n{err}");
    assert_outcome(
        &Report::parse(last_line(&out)).expect("report"),
        Outcome::Applied,
    );
    assert!(
        !out.contains(PASSWORD) && !err.contains(PASSWORD),
        "leak: {out}{err}"
    );
    assert!(columns(&c, "users").await.contains(&"a".to_string()));

    // --help must not print the URL from the environment either.
    let help = tokio::process::Command::new(BIN)
        .args(["apply", "--help"])
        .env("PHASEGATE_DATABASE_URL", pg.url())
        .output()
        .await
        .expect("help");
    assert!(!String::from_utf8_lossy(&help.stdout).contains(PASSWORD));
}

/// Starts the binary with a failpoint, waits until it is reached, then SIGKILLs the process.
async fn kill_at(pg: &TestPostgres, sql: &str, failpoint: &str) {
    let mut child = tokio::process::Command::new(BIN)
        .arg("apply")
        .env("PHASEGATE_DATABASE_URL", pg.url())
        .env("PHASEGATE_PHASE", "expand")
        .env("PHASEGATE_SQL", sql)
        .env("PHASEGATE_MIGRATION_NAME", "killed")
        .env("PHASEGATE_TERMINATION_LOG", "/nonexistent-dir/x")
        .env("PHASEGATE_FAILPOINT", failpoint)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let reached = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("failpoint") && line.contains(failpoint) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(reached, "failpoint {failpoint} not reached");
    child.start_kill().expect("SIGKILL"); // std/tokio kill() is SIGKILL on Unix
    let _ = child.wait().await;
}

fn killed_cfg(pg: &TestPostgres, sql: &str) -> Config {
    let mut c = Config::new(pg.url(), Phase::Expand, sql);
    c.identity.name = "killed".into();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_before_commit_leaves_nothing_and_rerun_applies_once() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let sql = "ALTER TABLE users ADD COLUMN a int; UPDATE users SET a = 1;";
    kill_at(&pg, sql, "pause-before-commit").await;
    // The server rolls the orphaned transaction back once it sees the closed socket.
    let r = executor::execute(&killed_cfg(&pg, sql)).await;
    assert_outcome(&r, Outcome::Applied);
    assert_eq!(r.statements, 2);
    let n: i64 = c
        .query_one("SELECT count(*) FROM users WHERE a = 1", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 100);
    assert_outcome(
        &executor::execute(&killed_cfg(&pg, sql)).await,
        Outcome::AlreadyApplied,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_commit_is_already_applied() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let sql = "ALTER TABLE users ADD COLUMN a int";
    kill_at(&pg, sql, "pause-after-commit").await;
    assert_eq!(
        ledger_rows(&c).await,
        vec![("killed".into(), "expand".into(), "applied".into(), 1, 1)]
    );
    let r = executor::execute(&killed_cfg(&pg, sql)).await;
    assert_outcome(&r, Outcome::AlreadyApplied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_non_transactional_statements_resumes() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let sql = "CREATE INDEX CONCURRENTLY users_email_idx ON users (email);\nALTER TABLE users ADD COLUMN a int;";
    // Killed after the index was built but before the ledger recorded it.
    kill_at(&pg, sql, "pause-before-commit").await;
    let r = executor::execute(&killed_cfg(&pg, sql)).await;
    assert_outcome(&r, Outcome::Applied);
    assert_eq!(
        r.statements,
        1,
        "the finished index build is not repeated: {}",
        r.to_json_line()
    );
    let valid: bool = c
        .query_one(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_email_idx'::regclass",
            &[],
        )
        .await
        .expect("index")
        .get(0);
    assert!(valid);
    assert_eq!(
        ledger_rows(&c).await,
        vec![("killed".into(), "expand".into(), "applied".into(), 2, 2)]
    );
}

/// A list-partitioned `events` with partitions `events_1` and `events_2`.
async fn partitioned(c: &tokio_postgres::Client) {
    c.batch_execute(
        "CREATE TABLE events (kind int, at timestamptz DEFAULT now()) PARTITION BY LIST (kind);
         CREATE TABLE events_1 PARTITION OF events FOR VALUES IN (1);
         CREATE TABLE events_2 PARTITION OF events FOR VALUES IN (2);
         INSERT INTO events (kind) VALUES (1), (2);",
    )
    .await
    .expect("partitioned table");
}

/// (attached, detach pending) of `events_1` under `events`.
async fn events_1_state(c: &tokio_postgres::Client) -> Option<bool> {
    c.query_opt(
        "SELECT inhdetachpending FROM pg_inherits
          WHERE inhrelid = 'events_1'::regclass AND inhparent = 'events'::regclass",
        &[],
    )
    .await
    .expect("pg_inherits")
    .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_a_concurrent_detach_skips_it_on_rerun() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    partitioned(&c).await;
    let sql = "ALTER TABLE events DETACH PARTITION events_1 CONCURRENTLY;\nALTER TABLE users ADD COLUMN a int;";
    // Killed after the detach committed (by itself: it cannot run in a transaction) but before
    // the ledger recorded it.
    kill_at(&pg, sql, "pause-before-commit").await;
    assert_eq!(events_1_state(&c).await, None, "the detach is done");
    let r = executor::execute(&killed_cfg(&pg, sql)).await;
    assert_outcome(&r, Outcome::Applied);
    assert_eq!(
        r.statements,
        1,
        "the detach is not run again: {}",
        r.to_json_line()
    );
    assert!(
        r.recovered
            .iter()
            .any(|n| n.starts_with("statement 1:") && n.contains("already detached")),
        "the report says what was skipped: {}",
        r.to_json_line()
    );
    assert_eq!(columns(&c, "users").await, ["id", "email", "a"]);
    assert_eq!(
        ledger_rows(&c).await,
        vec![("killed".into(), "expand".into(), "applied".into(), 2, 2)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_concurrent_detach_is_finalized_on_rerun() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    partitioned(&c).await;
    // DETACH … CONCURRENTLY commits its first transaction (the partition is marked pending),
    // then waits for snapshots older than that; cancelled there, it stays pending.
    let reader = pg.client().await;
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM events;")
        .await
        .expect("old snapshot");
    let detacher = pg.client().await;
    let pid: i32 = detacher
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let sql = "ALTER TABLE events DETACH PARTITION events_1 CONCURRENTLY";
    let detach = tokio::spawn(async move { detacher.batch_execute(sql).await.map(|_| detacher) });
    let deadline = Instant::now() + Duration::from_secs(20);
    while events_1_state(&c).await != Some(true) {
        assert!(Instant::now() < deadline, "the detach never became pending");
        support::postgres::sleep_ms(50).await;
    }
    c.query_one("SELECT pg_cancel_backend($1)", &[&pid])
        .await
        .expect("cancel");
    let cancelled = detach.await.expect("join");
    assert!(cancelled.is_err(), "the detach was cancelled while waiting");
    reader.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(events_1_state(&c).await, Some(true), "pending detach");

    // The plain statement would now fail ("already pending detach … use FINALIZE").
    let r = executor::execute(&cfg(&pg, sql)).await;
    assert_outcome(&r, Outcome::Applied);
    assert_eq!(events_1_state(&c).await, None, "detached");
    assert!(
        r.recovered
            .iter()
            .any(|n| n.starts_with("statement 1:") && n.contains("FINALIZE")),
        "the report says the detach was finished: {}",
        r.to_json_line()
    );
    let rows: i64 = c
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 1, "only events_2 is left under events");
    assert_eq!(
        ledger_rows(&c).await,
        vec![(
            "users-email-verified".into(),
            "expand".into(),
            "applied".into(),
            1,
            1
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeouts_are_retried_with_backoff() {
    let pg = TestPostgres::start();
    let _c = setup(&pg).await;
    let holder = pg.client().await;
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM users;")
        .await
        .expect("hold");
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        holder.batch_execute("COMMIT").await.expect("commit");
        holder
    });
    let mut c = cfg(&pg, "ALTER TABLE users ADD COLUMN a int");
    c.lock_timeout = Duration::from_millis(100);
    c.lock_wait_timeout = Duration::ZERO; // blind retries: no waiting outside the queue
    c.max_lock_retries = 30;
    let r = executor::execute(&c).await;
    assert_outcome(&r, Outcome::Applied);
    assert!(r.lock_retries >= 1, "{}", r.to_json_line());
    assert_eq!(r.attempts, r.lock_retries + 1);
    let _ = release.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_retries_exhausted_fail_with_55p03() {
    let pg = TestPostgres::start();
    let _c = setup(&pg).await;
    let holder = pg.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE users IN ACCESS SHARE MODE;")
        .await
        .expect("hold");
    let mut c = cfg(&pg, "ALTER TABLE users ADD COLUMN a int");
    c.lock_timeout = Duration::from_millis(50);
    c.lock_wait_timeout = Duration::ZERO;
    c.max_lock_retries = 2;
    let r = executor::execute(&c).await;
    assert_outcome(&r, Outcome::Failed);
    assert_eq!((r.attempts, r.lock_retries), (3, 2));
    let e = r.error.expect("error");
    assert_eq!(
        (e.sqlstate.as_deref(), e.statement),
        (Some("55P03"), Some(1))
    );

    // With lock-aware waiting and a bounded budget the message names the blocker.
    let mut c = cfg(&pg, "ALTER TABLE users ADD COLUMN a int");
    c.lock_wait_timeout = Duration::from_millis(300);
    let r = executor::execute(&c).await;
    let e = r.error.expect("error");
    assert!(
        e.message.contains("holds AccessShareLock on users"),
        "{}",
        e.message
    );
    assert_eq!(r.attempts, 0, "never queued for the lock");
    holder.batch_execute("COMMIT").await.expect("commit");
}

/// Application queries keep flowing while the executor waits for an old transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_aware_waiting_does_not_block_application_queries() {
    let pg = TestPostgres::start();
    let _c = setup(&pg).await;
    let holder = pg.client().await;
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM users;")
        .await
        .expect("hold");
    let app = pg.client().await;
    let app_task = tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        let until = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < until {
            let t = Instant::now();
            app.query_one("SELECT email FROM users WHERE id = 1", &[])
                .await
                .expect("app query");
            worst = worst.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        worst
    });
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        holder.batch_execute("COMMIT").await.expect("commit");
    });
    let r = executor::execute(&cfg(&pg, "ALTER TABLE users ADD COLUMN a int")).await;
    assert_outcome(&r, Outcome::Applied);
    assert_eq!(r.lock_retries, 0, "{}", r.to_json_line());
    assert!(r.lock_wait_ms >= 1000, "{}", r.to_json_line());
    let worst = app_task.await.expect("app");
    let _ = release.await;
    assert!(
        worst < Duration::from_millis(500),
        "an application query waited {worst:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_executors_apply_exactly_once() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let sql = "ALTER TABLE users ADD COLUMN a int; INSERT INTO users (email) VALUES ('race@example.com');";
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let cfg = cfg(&pg, sql);
            tokio::spawn(async move { executor::execute(&cfg).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for r in runs {
        outcomes.push(r.await.expect("join").outcome);
    }
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(
        outcomes,
        vec![
            Outcome::AlreadyApplied,
            Outcome::AlreadyApplied,
            Outcome::AlreadyApplied,
            Outcome::Applied
        ]
    );
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM users WHERE email = 'race@example.com'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1);

    // Different migrations on one database are serialised by the advisory lock, both apply.
    let mut a = cfg(&pg, "ALTER TABLE users ADD COLUMN b int");
    a.identity.name = "a".into();
    let mut b = cfg(&pg, "ALTER TABLE users ADD COLUMN c int");
    b.identity.name = "b".into();
    let (ra, rb) = tokio::join!(executor::execute(&a), executor::execute(&b));
    assert_outcome(&ra, Outcome::Applied);
    assert_outcome(&rb, Outcome::Applied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advisory_lock_wait_is_bounded() {
    let pg = TestPostgres::start();
    let _c = setup(&pg).await;
    let other = pg.client().await;
    other
        .query_one(
            "SELECT pg_advisory_lock($1, $2)",
            &[
                &executor::locks::ADVISORY_CLASS,
                &executor::locks::ADVISORY_OBJ,
            ],
        )
        .await
        .expect("lock");
    let mut c = cfg(&pg, "ALTER TABLE users ADD COLUMN a int");
    c.advisory_lock_timeout = Duration::from_millis(500);
    let r = executor::execute(&c).await;
    assert_outcome(&r, Outcome::Failed);
    let msg = r.error.expect("error").message;
    assert!(
        msg.contains("another migration holds the Phasegate lock") && msg.contains("backend pid"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_index_builds_are_idempotent_and_clean_up_invalid_indexes() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    c.batch_execute("INSERT INTO users (email) VALUES ('u1@example.com')")
        .await
        .expect("dup");
    let sql = "CREATE UNIQUE INDEX CONCURRENTLY users_email_key ON users (email);";

    // The build fails on the duplicate; the invalid index it leaves is dropped.
    let r = executor::execute(&cfg(&pg, sql)).await;
    assert_outcome(&r, Outcome::Failed);
    assert_eq!(
        r.error.as_ref().and_then(|e| e.sqlstate.as_deref()),
        Some("23505")
    );
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'users_email_key'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0);

    // An invalid index left by someone else (e.g. a killed run) is detected, dropped, rebuilt.
    let _ = c.batch_execute(sql).await; // fails, leaves an invalid index
    c.batch_execute("DELETE FROM users WHERE id > 100")
        .await
        .expect("dedupe");
    let r = executor::execute(&cfg(&pg, sql)).await;
    assert_outcome(&r, Outcome::Applied);
    let valid: bool = c
        .query_one(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_email_key'::regclass",
            &[],
        )
        .await
        .expect("index")
        .get(0);
    assert!(valid);

    // DROP INDEX CONCURRENTLY in another migration, re-run after an interruption, is a no-op.
    let mut drop = cfg(&pg, "DROP INDEX CONCURRENTLY users_email_key");
    drop.identity.name = "drop".into();
    assert_outcome(&executor::execute(&drop).await, Outcome::Applied);
    c.batch_execute("DELETE FROM phasegate.ledger WHERE name = 'drop'")
        .await
        .expect("forget");
    assert_outcome(&executor::execute(&drop).await, Outcome::Applied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_require_and_verify_full() {
    let pg = TestPostgres::start_with_tls();
    let c = setup(&pg).await;
    let ca = pg.ca_cert().to_string_lossy().to_string();
    // The phase records whether its own connection was encrypted.
    let probe = |name: &str| {
        format!("CREATE TABLE {name} AS SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    };
    let cases = [
        ("t_require", pg.url_with("127.0.0.1", "sslmode=require")),
        (
            "t_full_name",
            pg.url_with(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
        ),
        (
            "t_full_ip",
            pg.url_with(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
        ),
        (
            "t_ca",
            pg.url_with("localhost", &format!("sslmode=verify-ca&sslrootcert={ca}")),
        ),
    ];
    for (name, url) in &cases {
        let mut cfg = Config::new(url.clone(), Phase::Expand, probe(name));
        cfg.identity.name = name.to_string();
        let r = executor::execute(&cfg).await;
        assert_outcome(&r, Outcome::Applied);
        let ssl: bool = c
            .query_one(&format!("SELECT ssl FROM {name}"), &[])
            .await
            .expect("probe")
            .get(0);
        assert!(ssl, "{name} was not encrypted");
    }

    // A server certificate from another CA is rejected under verify-full.
    let other = TestPostgres::start_with_tls();
    let wrong_ca = other.ca_cert().to_string_lossy().to_string();
    let cfg = Config::new(
        pg.url_with(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={wrong_ca}"),
        ),
        Phase::Expand,
        "SELECT 1",
    );
    let r = executor::execute(&cfg).await;
    assert_outcome(&r, Outcome::Failed);
    let msg = r.error.expect("error").message;
    assert!(
        msg.contains("could not connect") && msg.to_lowercase().contains("certificate"),
        "{msg}"
    );
    assert!(!msg.contains(PASSWORD));
}

// ---------------------------------------------------------------------------------------------
// Stopping: SIGTERM/SIGINT never let a phase commit (the operator deletes the Job of an attempt
// whose gate closed; Kubernetes then sends SIGTERM to the executor).
// ---------------------------------------------------------------------------------------------

use support::apply;

const DROP_EMAIL: &str = "ALTER TABLE users DROP COLUMN email";

/// A contract run of shop/m needing 2.4.0 (see [`apply::contract_envs`]).
fn contract_envs<'a>(url: &'a str, sql: &'a str, term: &'a str) -> Vec<(&'a str, &'a str)> {
    apply::contract_envs(url, sql, "2.4.0", term)
}

/// A session holding a lock that conflicts with DDL on `users` (an open read transaction).
async fn hold_users(pg: &TestPostgres) -> tokio_postgres::Client {
    let holder = pg.client().await;
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM users;")
        .await
        .expect("hold");
    holder
}

/// Asserts the report and exit of a run stopped by SIGTERM before COMMIT.
fn assert_stopped(f: &apply::Finished, elapsed: Duration, term: &std::path::Path) {
    eprintln!("stopped {elapsed:?} after the signal:\n{}", f.output());
    assert_eq!(f.code, Some(143), "exit code; {}", f.output());
    assert!(
        elapsed < Duration::from_millis(1000),
        "took {elapsed:?} to stop"
    );
    let r = f.report();
    assert_outcome(r, Outcome::Failed);
    assert_eq!(f.report_json()["stoppedBy"], "SIGTERM", "{}", f.stdout);
    assert_eq!(r.statements, 0);
    let msg = &r.error.as_ref().expect("error").message;
    assert!(
        msg.contains("stopped by SIGTERM before COMMIT") && msg.contains("nothing was applied"),
        "{msg}"
    );
    let written = std::fs::read_to_string(term).expect("termination log");
    assert_eq!(Report::parse(&written).as_ref(), Some(r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_waiting_outside_the_lock_queue_stops_at_once() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let holder = hold_users(&pg).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let term = dir.path().join("termination-log");
    let (url, term_s) = (pg.url(), term.to_string_lossy().to_string());
    let envs = contract_envs(&url, DROP_EMAIL, &term_s);

    let run = apply::spawn(&envs);
    assert!(
        run.wait_for_stderr(|l| l.contains("waiting"), Duration::from_secs(20))
            .await,
        "never waited: {}",
        run.stderr_so_far()
    );
    run.signal("TERM");
    let (f, elapsed) = run.finish(Duration::from_secs(10)).await;
    assert_stopped(&f, elapsed, &term);
    // The wait was announced once, as a JSON line naming the blocker.
    let waits = f.waits();
    assert_eq!(waits.len(), 1, "{}", f.stderr);
    assert_eq!(waits[0]["waiting"], "table-lock", "{}", f.stderr);
    assert!(columns(&c, "users").await.contains(&"email".to_string()));
    assert!(
        ledger_rows(&c).await.is_empty(),
        "{:?}",
        ledger_rows(&c).await
    );

    // Released, the same Job applies once.
    holder.batch_execute("COMMIT").await.expect("commit");
    let f = apply::run(&envs).await;
    assert_eq!(f.code, Some(0), "{}", f.output());
    assert_outcome(f.report(), Outcome::Applied);
    assert!(f.report_json().get("stoppedBy").is_none(), "{}", f.stdout);
    assert!(!columns(&c, "users").await.contains(&"email".to_string()));
    assert_eq!(
        ledger_rows(&c).await,
        vec![("m".into(), "contract".into(), "applied".into(), 1, 1)]
    );
    let f = apply::run(&envs).await;
    assert_outcome(f.report(), Outcome::AlreadyApplied);
}

/// Without lock-aware waiting the executor queues for the lock inside its transaction; a stop
/// takes it out of the queue at once (application queries must not keep queueing behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_the_lock_queue_rolls_back_at_once() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let holder = hold_users(&pg).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let term = dir.path().join("termination-log");
    let (url, term_s) = (pg.url(), term.to_string_lossy().to_string());
    let mut envs = contract_envs(&url, DROP_EMAIL, &term_s);
    envs.push(("PHASEGATE_LOCK_WAIT_TIMEOUT", "0"));
    envs.push(("PHASEGATE_LOCK_TIMEOUT", "60s"));

    let run = apply::spawn(&envs);
    let queued = "SELECT count(*) FROM pg_locks WHERE relation = 'users'::regclass AND NOT granted";
    run.wait_queued(&c, "users").await;
    run.signal("TERM");
    let (f, elapsed) = run.finish(Duration::from_secs(10)).await;
    assert_stopped(&f, elapsed, &term);
    // Nothing of ours is left in the lock queue.
    let n: i64 = c.query_one(queued, &[]).await.expect("locks").get(0);
    assert_eq!(n, 0);
    assert!(columns(&c, "users").await.contains(&"email".to_string()));
    assert!(
        !ledger_rows(&c).await.iter().any(|r| r.1 == "contract"),
        "{:?}",
        ledger_rows(&c).await
    );
    holder.batch_execute("COMMIT").await.expect("commit");
}

/// Waits until the child reaches `failpoint` (it prints a line there).
async fn at_failpoint(run: &apply::Running, failpoint: &str) {
    assert!(
        run.wait_for_stderr(
            |l| l.contains("failpoint") && l.contains(failpoint),
            Duration::from_secs(20)
        )
        .await,
        "failpoint {failpoint} not reached: {}",
        run.stderr_so_far()
    );
}

/// A stop that arrives with everything done but COMMIT never commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_just_before_commit_never_commits() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let term = dir.path().join("termination-log");
    let (url, term_s) = (pg.url(), term.to_string_lossy().to_string());
    let mut envs = contract_envs(&url, DROP_EMAIL, &term_s);
    envs.push(("PHASEGATE_FAILPOINT", "pause-before-commit"));
    let run = apply::spawn(&envs);
    at_failpoint(&run, "pause-before-commit").await;
    run.signal("TERM");
    let (f, elapsed) = run.finish(Duration::from_secs(10)).await;
    assert_stopped(&f, elapsed, &term);
    assert!(columns(&c, "users").await.contains(&"email".to_string()));
    assert!(
        ledger_rows(&c).await.is_empty(),
        "{:?}",
        ledger_rows(&c).await
    );
}

/// After COMMIT was sent the ledger decides: the report tells the truth (applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_after_commit_reports_applied() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let term = dir.path().join("termination-log");
    let (url, term_s) = (pg.url(), term.to_string_lossy().to_string());
    let mut envs = contract_envs(&url, DROP_EMAIL, &term_s);
    envs.push(("PHASEGATE_FAILPOINT", "pause-after-commit"));
    let run = apply::spawn(&envs);
    at_failpoint(&run, "pause-after-commit").await;
    run.signal("INT");
    let (f, _) = run.finish(Duration::from_secs(10)).await;
    assert_eq!(f.code, Some(0), "{}", f.output());
    let r = f.report();
    assert_outcome(r, Outcome::Applied);
    assert_eq!(f.report_json()["stoppedBy"], "SIGINT", "{}", f.stdout);
    assert!(!columns(&c, "users").await.contains(&"email".to_string()));
    assert_eq!(
        ledger_rows(&c).await,
        vec![("m".into(), "contract".into(), "applied".into(), 1, 1)]
    );
}

// ---------------------------------------------------------------------------------------------
// Redaction of server messages.
// ---------------------------------------------------------------------------------------------

/// A NOTICE or WARNING (or an error) carrying the password never reaches any output: here the
/// URL sets a custom setting to the password and the SQL raises it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_notices_and_errors_are_scrubbed() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let term = dir.path().join("termination-log");
    let term_s = term.to_string_lossy().to_string();
    let url = format!("{}&options=-c%20phasegate.leak%3D{PASSWORD}", pg.url());
    let sql = "DO $$ BEGIN
                 RAISE NOTICE 'notice: %', current_setting('phasegate.leak');
                 RAISE WARNING 'warning: %', current_setting('phasegate.leak');
               END $$;
               ALTER TABLE users ADD COLUMN a int;";
    let f = apply::run(&[
        ("PHASEGATE_DATABASE_URL", &url),
        ("PHASEGATE_PHASE", "expand"),
        ("PHASEGATE_SQL", sql),
        ("PHASEGATE_TERMINATION_LOG", &term_s),
    ])
    .await;
    assert_eq!(f.code, Some(0), "{}", f.output());
    assert_outcome(f.report(), Outcome::Applied);
    assert!(columns(&c, "users").await.contains(&"a".to_string()));
    // The notices are logged, with the secret replaced.
    assert!(
        f.stderr.contains("notice: ***") && f.stderr.contains("warning: ***"),
        "{}",
        f.stderr
    );
    let written = std::fs::read_to_string(&term).expect("termination log");
    for s in [&f.stdout, &f.stderr, &written] {
        assert!(!s.contains(PASSWORD), "leak in {s}");
    }

    // An error raised with the secret in its message, detail and hint.
    let sql = "DO $$ BEGIN
                 RAISE NOTICE 'before: %', current_setting('phasegate.leak');
                 RAISE EXCEPTION 'boom: %', current_setting('phasegate.leak')
                   USING DETAIL = current_setting('phasegate.leak'),
                         HINT = current_setting('phasegate.leak');
               END $$";
    let f = apply::run(&[
        ("PHASEGATE_DATABASE_URL", &url),
        ("PHASEGATE_PHASE", "expand"),
        ("PHASEGATE_SQL", sql),
        ("PHASEGATE_MIGRATION_NAME", "boom"),
        ("PHASEGATE_TERMINATION_LOG", &term_s),
    ])
    .await;
    assert_eq!(f.code, Some(1), "{}", f.output());
    assert_outcome(f.report(), Outcome::Failed);
    let msg = &f.report().error.as_ref().expect("error").message;
    assert!(msg.contains("boom: ***"), "{msg}");
    let written = std::fs::read_to_string(&term).expect("termination log");
    for s in [&f.stdout, &f.stderr, &written] {
        assert!(!s.contains(PASSWORD), "leak in {s}");
    }
}

/// Waiting for another migration's advisory lock, and between lock retries: a stop ends either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_advisory_lock_wait_and_the_retry_backoff() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let term = dir.path().join("termination-log");
    let (url, term_s) = (pg.url(), term.to_string_lossy().to_string());

    let other = pg.client().await;
    other
        .query_one(
            "SELECT pg_advisory_lock($1, $2)",
            &[
                &executor::locks::ADVISORY_CLASS,
                &executor::locks::ADVISORY_OBJ,
            ],
        )
        .await
        .expect("lock");
    let run = apply::spawn(&contract_envs(&url, DROP_EMAIL, &term_s));
    assert!(
        run.wait_for_stderr(|l| l.contains("\"advisory-lock\""), Duration::from_secs(20))
            .await,
        "never waited: {}",
        run.stderr_so_far()
    );
    run.signal("TERM");
    let (f, elapsed) = run.finish(Duration::from_secs(10)).await;
    assert_stopped(&f, elapsed, &term);
    drop(other);

    // Blind retries (no lock-aware waiting): short lock timeouts, then backoff sleeps.
    let holder = hold_users(&pg).await;
    let mut envs = contract_envs(&url, DROP_EMAIL, &term_s);
    envs.push(("PHASEGATE_LOCK_WAIT_TIMEOUT", "0"));
    envs.push(("PHASEGATE_LOCK_TIMEOUT", "20ms"));
    envs.push(("PHASEGATE_MAX_LOCK_RETRIES", "1000"));
    let run = apply::spawn(&envs);
    assert!(
        run.wait_for_stderr(|l| l.contains("will retry"), Duration::from_secs(20))
            .await,
        "never retried: {}",
        run.stderr_so_far()
    );
    run.signal("TERM");
    let (f, elapsed) = run.finish(Duration::from_secs(10)).await;
    assert_stopped(&f, elapsed, &term);
    assert!(f.report().lock_retries >= 1, "{}", f.stdout);
    assert!(columns(&c, "users").await.contains(&"email".to_string()));
    assert!(
        ledger_rows(&c).await.is_empty(),
        "{:?}",
        ledger_rows(&c).await
    );
    holder.batch_execute("COMMIT").await.expect("commit");
}

/// A statement outside a transaction block (here CREATE INDEX CONCURRENTLY waiting for an old
/// snapshot) is cancelled on stop; the invalid index it leaves is rebuilt by the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cancels_a_concurrent_index_build_and_the_rerun_completes_it() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let term = dir.path().join("termination-log");
    let (url, term_s) = (pg.url(), term.to_string_lossy().to_string());
    let old = pg.client().await;
    old.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM users;")
        .await
        .expect("old snapshot");
    let envs = [
        ("PHASEGATE_DATABASE_URL", url.as_str()),
        ("PHASEGATE_PHASE", "expand"),
        (
            "PHASEGATE_SQL",
            "CREATE INDEX CONCURRENTLY users_email_idx ON users (email)",
        ),
        ("PHASEGATE_MIGRATION_NAME", "idx"),
        ("PHASEGATE_TERMINATION_LOG", term_s.as_str()),
    ];
    let run = apply::spawn(&envs);
    // The build is running (waiting for the old snapshot) once the index exists, invalid.
    let exists = "SELECT count(*) FROM pg_class WHERE relname = 'users_email_idx'";
    let until = Instant::now() + Duration::from_secs(20);
    while c
        .query_one(exists, &[])
        .await
        .expect("index")
        .get::<_, i64>(0)
        == 0
    {
        assert!(Instant::now() < until, "no build: {}", run.stderr_so_far());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    run.signal("TERM");
    let (f, elapsed) = run.finish(Duration::from_secs(10)).await;
    assert_stopped(&f, elapsed, &term);
    assert!(ledger_rows(&c).await.iter().all(|r| r.0 != "idx"));
    // The backend sends the cancel's error before it shows itself idle: give it a moment (an
    // uncancelled build would stay active, waiting for `old`, which is still open).
    let until = Instant::now() + Duration::from_secs(3);
    let building = loop {
        let building: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE state = 'active' AND query LIKE 'CREATE INDEX CONCURRENTLY%'",
                &[],
            )
            .await
            .expect("activity")
            .get(0);
        if building == 0 || Instant::now() > until {
            break building;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(building, 0, "the build was cancelled");

    old.batch_execute("COMMIT").await.expect("commit");
    let f = apply::run(&envs).await;
    assert_eq!(f.code, Some(0), "{}", f.output());
    assert_outcome(f.report(), Outcome::Applied);
    let valid: bool = c
        .query_one(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'users_email_idx'::regclass",
            &[],
        )
        .await
        .expect("index")
        .get(0);
    assert!(valid);
}

/// Exactly once in the ledger itself: a phase's row is claimed inside the transaction that
/// applies it, so a second executor of the phase — one that never saw the first's advisory
/// lock, as behind a transaction pooler — waits for the first to end, then sees what it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_claim_of_a_phase_waits_for_the_first_and_sees_its_outcome() {
    use phasegate::executor::ledger;
    let pg = TestPostgres::start();
    let mut a = pg.client().await;
    let mut b = pg.client().await;
    ledger::ensure(&a).await.expect("ledger");
    let id = executor::Identity {
        namespace: "shop".into(),
        name: "m".into(),
        uid: "uid-1".into(),
        app_version: "2.0.0".into(),
    };
    for commit in [false, true] {
        let ta = a.transaction().await.expect("begin a");
        assert_eq!(
            ledger::claim(&ta, &id, "contract", "sum", 1)
                .await
                .expect("claim a"),
            0
        );
        // B claims meanwhile: it must wait for A's transaction.
        let (id_b, started) = (id.clone(), Instant::now());
        let second = tokio::spawn(async move {
            let tb = b.transaction().await.expect("begin b");
            let done = ledger::claim(&tb, &id_b, "contract", "sum", 1)
                .await
                .expect("claim b");
            tb.rollback().await.expect("rollback b");
            (done, started.elapsed(), b)
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !second.is_finished(),
            "the second claim waits for the first"
        );
        if commit {
            ledger::record(
                &ta,
                &id,
                &ledger::Progress {
                    phase: "contract",
                    checksum: "sum",
                    total: 1,
                    done: 1,
                    attempts: 1,
                },
            )
            .await
            .expect("record");
            ta.commit().await.expect("commit a");
        } else {
            ta.rollback().await.expect("rollback a");
        }
        let (done, waited, back) = second.await.expect("second claim");
        b = back;
        assert!(waited >= Duration::from_millis(500), "{waited:?}");
        assert_eq!(
            done,
            usize::from(commit),
            "after a commit the statement is done; after a rollback nothing is"
        );
    }
    let rows = ledger_rows(&a).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
}

/// Migrations of one database start together; each expand waits in the ledger for the ones
/// the operator named before it (`PHASEGATE_EXPAND_AFTER`), whatever order their pods start in.
#[tokio::test]
async fn an_expand_waits_for_the_earlier_expands_it_is_given_and_a_stop_ends_the_wait() {
    let pg = TestPostgres::start();
    let c = setup(&pg).await;
    let named = |name: &str, sql: &str, after: &[&str]| {
        let mut x = cfg(&pg, sql);
        x.identity.name = name.into();
        x.expand_after = after.iter().map(|s| s.to_string()).collect();
        x
    };
    // The later migration's executor starts first, before any ledger exists.
    let later = named(
        "b-comment",
        "COMMENT ON COLUMN users.verified IS 'set at sign-up';",
        &["a-add"],
    );
    let waiting = tokio::spawn(async move { executor::execute(&later).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "it waits for a-add");
    assert!(!columns(&c, "users").await.contains(&"verified".to_string()));

    let first = named(
        "a-add",
        "ALTER TABLE users ADD COLUMN verified boolean;",
        &[],
    );
    assert_outcome(&executor::execute(&first).await, Outcome::Applied);
    let r = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("ends once a-add is applied")
        .expect("join");
    assert_outcome(&r, Outcome::Applied);
    let order: Vec<String> = c
        .query(
            "SELECT name FROM phasegate.ledger WHERE phase = 'expand' ORDER BY applied_at, name",
            &[],
        )
        .await
        .expect("ledger")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(order, ["a-add", "b-comment"]);

    // Waiting for one that never comes, a stop ends the run with nothing applied.
    let stuck = named(
        "c-index",
        "CREATE INDEX users_verified ON users (verified);",
        &["ghost"],
    );
    let stop = stuck.stop.clone();
    let run = tokio::spawn(async move { executor::execute(&stuck).await });
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.request(executor::Signal::Term);
    let r = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the stop ends the wait at once")
        .expect("join");
    assert_outcome(&r, Outcome::Failed);
    let idx: bool = c
        .query_one("SELECT to_regclass('users_verified') IS NOT NULL", &[])
        .await
        .expect("regclass")
        .get(0);
    assert!(!idx, "nothing applied");
}
