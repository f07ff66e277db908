//! `phasegate plan` against real PostgreSQL (15 by default; 17 with `make executor-pg17`,
//! which sets PHASEGATE_PG_BINDIR): statements with known locks, rewrites and index builds.
//! The plan starts its own throwaway server from the same binaries the other suites use.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use phasegate::plan::{self, MigrationPlan, PhaseKind, PhasePlan, Plan, Request, StatementPlan};
use support::postgres::{self, TestPostgres};

fn request(files: Vec<PathBuf>, schema: Vec<PathBuf>) -> Request {
    Request {
        migrations: files,
        schema,
        pg_bindir: Some(postgres::bindir().expect("PostgreSQL binaries")),
        bytes_per_second: 100.0 * 1024.0 * 1024.0,
        backfill_rows_per_second: 5000.0,
        ..Request::default()
    }
}

fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write test file");
    p
}

const SCHEMA: &str = "\\restrict k\n\
SELECT pg_catalog.set_config('search_path', '', false);\n\
CREATE TABLE public.accounts (id integer PRIMARY KEY, email varchar(10), legacy text);\n\
ALTER TABLE public.accounts OWNER TO role_only_production_has;\n\
\\unrestrict k\n";

const MIGRATION: &str = r#"
apiVersion: phasegate.dev/v1alpha1
kind: DatabaseMigration
metadata: {name: accounts-2-0-0, namespace: shop}
spec:
  appVersion: "2.0.0"
  database: {urlSecretRef: {name: db, key: url}}
  expand:
    sql: |
      ALTER TABLE accounts ALTER COLUMN email TYPE varchar(50);
      ALTER TABLE accounts ALTER COLUMN id TYPE bigint;
      CREATE INDEX accounts_email_idx ON accounts (email);
      CREATE UNIQUE INDEX CONCURRENTLY accounts_legacy_idx ON accounts (legacy);
      ALTER TABLE accounts ADD CONSTRAINT accounts_legacy_key UNIQUE USING INDEX accounts_legacy_idx;
  backfill:
    table: accounts
    key: id
    sql: UPDATE accounts SET email = lower(email) WHERE id > $1 AND id <= $2
  contract:
    sql: |
      ALTER TABLE accounts DROP COLUMN legacy;
  rollout:
    targets: [{kind: Deployment, name: shop-api}]
"#;

fn phase(m: &MigrationPlan, kind: PhaseKind) -> &PhasePlan {
    m.phases
        .iter()
        .find(|p| p.phase == kind)
        .unwrap_or_else(|| panic!("no {kind:?} phase in {m:#?}"))
}

fn has_lock(s: &StatementPlan, relation: &str, mode: &str) -> bool {
    s.observed
        .locks
        .iter()
        .any(|l| l.relation == relation && l.mode == mode)
}

async fn plan_example() -> Plan {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = file(dir.path(), "schema.sql", SCHEMA);
    let migration = file(dir.path(), "migration.yaml", MIGRATION);
    let stats = file(
        dir.path(),
        "stats.csv",
        "schema,table,rows,table_bytes,index_bytes\npublic,accounts,1000000,1048576000,104857600\n",
    );
    let mut req = request(vec![migration], vec![schema]);
    req.stats = Some(stats);
    plan::plan(&req).await.expect("plan")
}

#[tokio::test]
async fn known_locks_rewrites_and_index_builds() {
    let p = plan_example().await;
    // The server is the one under test (15 by default, 17 with PHASEGATE_PG_BINDIR).
    let bindir = postgres::bindir().expect("bindir");
    let version = Command::new(bindir.join("postgres"))
        .arg("--version")
        .output()
        .expect("postgres --version");
    let major = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next().map(str::to_string))
        .expect("version");
    assert!(
        p.server_version.starts_with(&format!("{major}.")),
        "{} vs {major}",
        p.server_version
    );
    assert_eq!(p.schema.statements, 2, "{:?}", p.schema);
    assert_eq!(p.schema.skipped.len(), 1, "the OWNER TO a missing role");
    let m = &p.migrations[0];
    let expand = phase(m, PhaseKind::Expand);
    let s = &expand.statements;
    assert_eq!(s.len(), 5, "{expand:#?}");

    // Widening a varchar is binary compatible: no rewrite (the control for the next one).
    assert!(s[0].sampled && s[0].error.is_none(), "{:#?}", s[0]);
    assert!(s[0].observed.rewrites.is_empty(), "{:#?}", s[0]);
    // integer -> bigint rewrites the table and rebuilds its primary key.
    assert_eq!(s[1].observed.rewrites, ["public.accounts"], "{:#?}", s[1]);
    assert!(has_lock(&s[1], "public.accounts", "AccessExclusiveLock"));
    assert!(s[1]
        .observed
        .index_builds
        .iter()
        .any(|i| i.index == "public.accounts_pkey" && i.rebuilt));
    assert_eq!(s[1].blocks.as_deref(), Some("reads and writes"));
    let e = s[1].estimate.as_ref().expect("estimate of the rewrite");
    assert!(
        (e.seconds - 11.0).abs() < 0.01,
        "1000 + 100 MiB at 100 MiB/s: {e:?}"
    );
    // A plain CREATE INDEX holds SHARE on its table: writes wait, reads do not.
    assert!(
        has_lock(&s[2], "public.accounts", "ShareLock"),
        "{:#?}",
        s[2]
    );
    assert!(!has_lock(&s[2], "public.accounts", "AccessExclusiveLock"));
    assert_eq!(s[2].blocks.as_deref(), Some("writes"));
    assert!(s[2]
        .observed
        .index_builds
        .iter()
        .any(|i| i.index == "public.accounts_email_idx" && !i.rebuilt));
    assert!(s[2]
        .findings
        .iter()
        .any(|f| f.rule == "create-index-non-concurrently" && f.verdict == "warning"));
    // CONCURRENTLY runs outside a transaction block: linted, run, not sampled...
    assert!(!s[3].sampled && s[3].error.is_none(), "{:#?}", s[3]);
    assert!(s[3]
        .note
        .as_deref()
        .unwrap_or("")
        .contains("no locks sampled"));
    // ...and the index it built is there for the next statement.
    assert!(s[4].error.is_none(), "{:#?}", s[4]);
    assert_ne!(s[3].transaction, s[4].transaction);

    // One batch with NULL bounds: ROW EXCLUSIVE on the table, nothing blocked.
    let backfill = phase(m, PhaseKind::Backfill);
    let b = &backfill.statements[0];
    assert!(has_lock(b, "public.accounts", "RowExclusiveLock"), "{b:#?}");
    assert_eq!(b.blocks, None);
    assert_eq!(b.estimate.as_ref().map(|e| e.seconds), Some(200.0));

    // DROP COLUMN: ACCESS EXCLUSIVE, and lint accepts it in contract.
    let contract = phase(m, PhaseKind::Contract);
    let c = &contract.statements[0];
    assert!(
        has_lock(c, "public.accounts", "AccessExclusiveLock"),
        "{c:#?}"
    );
    assert!(
        c.observed.rewrites.is_empty(),
        "DROP COLUMN does not rewrite"
    );
    assert!(c
        .findings
        .iter()
        .any(|f| f.rule == "drop-column" && f.verdict == "accepted"));
    // Lint refuses the type change in expand: the plan reports a problem (exit status 1).
    assert!(s[1]
        .findings
        .iter()
        .any(|f| f.rule == "change-column-type" && f.verdict == "refused"));
    assert!(p.has_problems());

    let md = plan::markdown(&p);
    assert!(md.contains("| 3 | 1 | `CREATE INDEX accounts_email_idx ON accounts (email)` | SHARE on `public.accounts`"), "{md}");
    assert!(md.contains("**rewrites** `public.accounts`"), "{md}");
}

#[tokio::test]
async fn a_failing_statement_stops_the_migration_and_later_phases_are_not_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = file(dir.path(), "schema.sql", "CREATE TABLE t (id int);");
    let yaml = MIGRATION.replace("accounts", "t").replace(
        "ALTER TABLE t ALTER COLUMN email TYPE varchar(50);",
        "ALTER TABLE t ADD COLUMN x int;\n      ALTER TABLE missing ADD COLUMN y int;",
    );
    let migration = file(dir.path(), "m.yaml", &yaml);
    let p = plan::plan(&request(vec![migration], vec![schema]))
        .await
        .expect("plan");
    let m = &p.migrations[0];
    let s = &phase(m, PhaseKind::Expand).statements;
    assert!(s[0].error.is_none() && s[0].sampled);
    let err = s[1].error.as_deref().expect("statement 2 fails");
    assert!(
        err.contains("\"missing\" does not exist") && err.contains("42P01"),
        "{err}"
    );
    assert!(s[2..]
        .iter()
        .all(|st| st.note.as_deref() == Some("not run: an earlier statement failed")));
    let contract = phase(m, PhaseKind::Contract);
    assert!(contract.statements.is_empty());
    assert_eq!(contract.note.as_deref(), Some("not run: expand failed"));
    assert!(p.has_problems());
}

#[tokio::test]
async fn on_a_url_it_plans_in_a_scratch_copy_and_drops_it() {
    let pg = TestPostgres::start();
    let admin = pg.client().await;
    admin
        .batch_execute("CREATE DATABASE app")
        .await
        .expect("create app");
    let connect = || async {
        let (c, conn) = tokio_postgres::connect(&pg.url_for_db("app"), tokio_postgres::NoTls)
            .await
            .expect("connect to app");
        tokio::spawn(conn);
        c
    };
    {
        let app = connect().await;
        app.batch_execute(
            "CREATE TABLE accounts (id integer PRIMARY KEY, email varchar(10), legacy text)",
        )
        .await
        .expect("schema in the URL's database");
    }
    // The copy needs the database idle: let the session above end.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let migration = file(dir.path(), "migration.yaml", MIGRATION);
    let mut req = request(vec![migration], Vec::new());
    req.url = Some(pg.url_for_db("app"));
    let p = plan::plan(&req).await.expect("plan");
    assert!(
        p.database.starts_with("scratch database phasegate_plan_"),
        "{}",
        p.database
    );
    let s = &phase(&p.migrations[0], PhaseKind::Expand).statements;
    assert_eq!(
        s[1].observed.rewrites,
        ["public.accounts"],
        "the copy has the URL's schema: {s:#?}"
    );
    assert!(!p.database.contains(support::postgres::PASSWORD));
    // The URL's database is unchanged and the copy is gone.
    let kept: String = connect()
        .await
        .query_one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'accounts'::regclass AND attname = 'id'", &[])
        .await
        .expect("column")
        .get(0);
    assert_eq!(kept, "integer");
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'phasegate_plan_%'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0);

    // With --schema the scratch database starts empty, so a busy URL database is no obstacle.
    let schema = file(
        dir.path(),
        "schema.sql",
        "CREATE TABLE accounts (id integer PRIMARY KEY, email varchar(10), legacy text);",
    );
    req.url = Some(pg.url());
    req.schema = vec![schema];
    let p = plan::plan(&req)
        .await
        .expect("plan with --schema while the admin session is connected");
    let s = &phase(&p.migrations[0], PhaseKind::Expand).statements;
    assert_eq!(s[1].observed.rewrites, ["public.accounts"], "{s:#?}");
}

/// The documented stats query (examples/plan/table-stats.sql) yields the columns the parser
/// reads, with real sizes.
#[tokio::test]
async fn the_documented_stats_query_feeds_the_estimates() {
    let pg = TestPostgres::start();
    let client = pg.client().await;
    client
        .batch_execute("CREATE TABLE big (id int); INSERT INTO big SELECT generate_series(1, 20000); ANALYZE big;")
        .await
        .expect("table");
    let sql = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plan/table-stats.sql"),
    )
    .expect("query file");
    let rows = client.query(sql.as_str(), &[]).await.expect("stats query");
    let header: Vec<&str> = rows[0].columns().iter().map(|c| c.name()).collect();
    let mut csv = header.join(",") + "\n";
    for r in &rows {
        let (s, t, n, tb, ib): (String, String, i64, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        csv += &format!("{s},{t},{n},{tb},{ib}\n");
    }
    let stats = plan::stats::Stats::parse(&csv, 1024.0 * 1024.0, 1000.0).expect("parse");
    let big = stats.get("public.big").expect("big is listed");
    assert_eq!(big.rows, 20000);
    assert!(big.table_bytes > 500_000, "{big:?}");
}

/// The built binary on the shipped example, as CI runs it.
#[test]
fn cli_plans_the_example_as_markdown_and_json() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bindir = postgres::bindir().expect("PostgreSQL binaries");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_phasegate"))
            .current_dir(root)
            .args([
                "plan",
                "--schema",
                "examples/plan/schema.sql",
                "--stats",
                "examples/plan/table-stats.csv",
            ])
            .arg("--pg-bindir")
            .arg(&bindir)
            .args(extra)
            .arg("examples/plan/migration.yaml")
            .output()
            .expect("run phasegate plan")
    };
    let o = run(&[]);
    let md = String::from_utf8_lossy(&o.stdout);
    // The example's expand changes a column type: lint refuses it, so the exit status is 1.
    assert_eq!(
        o.status.code(),
        Some(1),
        "{md}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(md.starts_with("## Phasegate plan"), "{md}");
    assert!(md.contains("**rewrites** `public.orders`"), "{md}");
    let row = md
        .lines()
        .find(|l| l.contains("`CREATE INDEX orders_customer_idx ON orders (customer_id)`"))
        .expect("a row for the CREATE INDEX");
    assert!(
        row.contains("| SHARE on `public.orders`<br>") && row.contains("| **writes** |"),
        "{row}"
    );
    assert!(md.contains("`ALTER TABLE orders DROP COLUMN note` | ACCESS EXCLUSIVE on `public.orders` | **reads and writes**"), "{md}");
    assert!(md.contains("refused `change-column-type`"), "{md}");

    let o = run(&["-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let contract = &v["migrations"][0]["phases"][2];
    assert_eq!(contract["phase"], "contract");
    assert_eq!(
        contract["statements"][0]["locks"][0]["mode"],
        "AccessExclusiveLock"
    );
    assert_eq!(
        v["migrations"][0]["phases"][0]["statements"][1]["rewrites"][0],
        "public.orders"
    );
}

/// Ctrl-C while a statement runs: the throwaway server is stopped and its directory removed.
#[test]
fn interrupted_plan_removes_its_server() {
    // Let it reach the statement.
    interrupt_plan_after(std::time::Duration::from_secs(2));
}

/// Ctrl-C while the throwaway server still starts (it has written its pid file): the same.
/// Once the signal's default action ended the process there and left the server running.
#[test]
fn plan_interrupted_while_its_server_starts_removes_it() {
    interrupt_plan_after(std::time::Duration::ZERO);
}

/// Runs `phasegate plan` on a slow statement, sends SIGINT `after` its server's pid file
/// appears, and checks it exits 2 leaving no server directory or process behind.
fn interrupt_plan_after(after: std::time::Duration) {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The server may run as `postgres` (tests as root): it must reach its directory.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let sql = file(tmp.path(), "slow.sql", "SELECT pg_sleep(60);");
    let child = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .env("TMPDIR", tmp.path())
        .arg("plan")
        .arg("--pg-bindir")
        .arg(postgres::bindir().expect("PostgreSQL binaries"))
        .arg(&sql)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start phasegate plan");
    let server_dir = || {
        std::fs::read_dir(tmp.path())
            .expect("read tmp")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("phasegate-plan-"))
            })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let pid_file = loop {
        if let Some(p) = server_dir()
            .map(|d| d.join("data/postmaster.pid"))
            .filter(|p| p.exists())
        {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let dir = pid_file
        .parent()
        .and_then(Path::parent)
        .expect("server dir")
        .display()
        .to_string();
    std::thread::sleep(after);
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(server_dir().is_none(), "the server's directory is removed");
    let ps = Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    let left: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains(&dir))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "server processes left: {left:?}");
}

/// A SQL file whose SQL does not parse: reported, nothing run, a problem (exit status 1).
#[tokio::test]
async fn unparseable_sql_is_reported_without_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sql = file(dir.path(), "broken.sql", "ALTER TABLE t ADD COLUMN;");
    let p = plan::plan(&request(vec![sql], Vec::new()))
        .await
        .expect("plan");
    let phase = &p.migrations[0].phases[0];
    assert_eq!(phase.phase, PhaseKind::Expand);
    assert!(phase.statements.is_empty());
    let err = phase.error.as_deref().expect("error");
    assert!(
        err.starts_with("the SQL cannot be run: syntax error"),
        "{err}"
    );
    assert!(p.has_problems());
}
