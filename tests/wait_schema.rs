//! `phasegate wait-schema` against a real PostgreSQL: the binary an app's init container runs.

mod support;

use std::process::Stdio;
use std::time::Duration;

use phasegate::executor::{self, Config, Outcome, Phase};
use support::postgres::{TestPostgres, PASSWORD};

const BIN: &str = env!("CARGO_BIN_EXE_phasegate");

/// Runs `phasegate wait-schema ARGS` with the URL in the environment, as a pod would.
fn wait_schema(url: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("wait-schema")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PHASEGATE_DATABASE_URL", url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Everything it printed; never the password.
fn printed(out: &std::process::Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(PASSWORD), "the password leaked: {text}");
    text
}

async fn once(url: &str, version: &str) -> (Option<i32>, String) {
    let out = wait_schema(url, &["--version", version, "--once"])
        .output()
        .await
        .expect("run wait-schema");
    (out.status.code(), printed(&out))
}

async fn expand(pg: &TestPostgres, version: &str, sql: &str) {
    let mut c = Config::new(pg.url(), Phase::Expand, sql);
    c.identity.namespace = "shop".into();
    c.identity.name = format!("users-{version}");
    c.identity.uid = "uid-1".into();
    c.identity.app_version = version.into();
    let r = executor::execute(&c).await;
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_until_its_migrations_expand_is_applied() {
    let pg = TestPostgres::start();
    let db = pg.client().await;
    db.batch_execute("CREATE TABLE users (id bigserial PRIMARY KEY); CREATE TABLE audit (id int);")
        .await
        .expect("schema");

    // Before any migration ran: no ledger, not ready.
    let (code, text) = once(&pg.url(), "2.0.0").await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no Phasegate ledger"), "{text}");

    // The pod starts first and waits; an open reader holds expand back.
    let mut waiting = wait_schema(
        &pg.url(),
        &["--migration", "users-email", "--interval", "200ms"],
    )
    .spawn()
    .expect("spawn");
    let reader = pg.client().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM users;")
        .await
        .expect("reader");
    let run = tokio::spawn({
        let url = pg.url();
        async move {
            let pg_url = url;
            let mut c = Config::new(
                pg_url,
                Phase::Expand,
                "ALTER TABLE users ADD COLUMN email text;",
            );
            c.identity.namespace = "shop".into();
            c.identity.name = "users-email".into();
            c.identity.app_version = "2.0.0".into();
            executor::execute(&c).await
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        waiting.try_wait().expect("poll").is_none(),
        "wait-schema returned while expand was still held by the reader"
    );
    // Another app's expand of the same version, on the same database, does not count.
    expand(&pg, "2.0.0", "ALTER TABLE audit ADD COLUMN actor text;").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(waiting.try_wait().expect("poll").is_none());

    reader.batch_execute("COMMIT").await.expect("end reader");
    let r = run.await.expect("expand task");
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    let out = tokio::time::timeout(Duration::from_secs(10), waiting.wait_with_output())
        .await
        .expect("wait-schema returns once expand is applied")
        .expect("output");
    let text = printed(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("schema ready"), "{text}");
    assert!(text.contains("shop/users-email"), "{text}");
    assert_eq!(once(&pg.url(), "2.0.0").await.0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_version_alone_every_recorded_expand_of_it_counts() {
    let pg = TestPostgres::start();
    pg.client()
        .await
        .batch_execute("CREATE TABLE users (id bigserial PRIMARY KEY);")
        .await
        .expect("schema");
    expand(&pg, "1.9.0", "ALTER TABLE users ADD COLUMN a text;").await;
    let (code, text) = once(&pg.url(), "2.0.0").await;
    assert_eq!(
        code,
        Some(1),
        "another version's expand does not count: {text}"
    );
    expand(&pg, "2.0.0", "ALTER TABLE users ADD COLUMN b text;").await;
    assert_eq!(once(&pg.url(), "2.0.0").await.0, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_cannot_read_the_ledger_is_told_what_to_grant() {
    let pg = TestPostgres::start();
    expand(
        &pg,
        "2.0.0",
        "CREATE TABLE users (id bigserial PRIMARY KEY);",
    )
    .await;
    let db = pg.client().await;
    db.batch_execute(&format!(
        "CREATE ROLE app LOGIN PASSWORD '{PASSWORD}'; GRANT CONNECT ON DATABASE postgres TO app;"
    ))
    .await
    .expect("role");
    let url = pg.url().replace("phasegate_test:", "app:");

    let (code, text) = once(&url, "2.0.0").await;
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("GRANT USAGE ON SCHEMA phasegate")
            && text.contains("GRANT SELECT ON phasegate.ledger"),
        "{text}"
    );

    db.batch_execute(
        "GRANT USAGE ON SCHEMA phasegate TO app; GRANT SELECT ON phasegate.ledger TO app;",
    )
    .await
    .expect("grant");
    let (code, text) = once(&url, "2.0.0").await;
    assert_eq!(code, Some(0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_waited_for_and_never_printed() {
    let pg = TestPostgres::start();
    let url = pg.url().replace(&format!(":{}/", pg.port()), ":1/");
    let out = wait_schema(
        &url,
        &[
            "--version",
            "2.0.0",
            "--interval",
            "100ms",
            "--timeout",
            "1s",
        ],
    )
    .output()
    .await
    .expect("run");
    let text = printed(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("database not reachable"), "{text}");
}
