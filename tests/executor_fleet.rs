//! `spec.tenants` in the executor, against real PostgreSQL: one phase on every tenant schema or
//! database, canaries, the failure budget, a retry of only the failed and unfinished, a
//! tenant created since expand, and a SIGKILL mid-wave.

mod support;

use std::process::Stdio;
use std::time::Duration;

use phasegate::api::{Canary, TenantsSpec};
use phasegate::executor::{self, Config, Outcome, Phase, Report};
use support::postgres::TestPostgres;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_phasegate");
const EXPAND: &str = "ALTER TABLE users ADD COLUMN verified boolean;";
const CONTRACT: &str = "ALTER TABLE users DROP COLUMN legacy;";

/// `n` tenant schemas `tenant_01`…, each with its own `users` table.
async fn schemas(c: &tokio_postgres::Client, n: usize) {
    for i in 1..=n {
        add_schema(c, &format!("tenant_{i:02}")).await;
    }
}

async fn add_schema(c: &tokio_postgres::Client, s: &str) {
    c.batch_execute(&format!(
        "CREATE SCHEMA {s}; CREATE TABLE {s}.users (id int PRIMARY KEY, legacy text);
         INSERT INTO {s}.users VALUES (1, 'x');"
    ))
    .await
    .expect("tenant schema");
}

fn spec(schemas: &str) -> TenantsSpec {
    TenantsSpec {
        schemas: Some(schemas.into()),
        max_concurrent: 4,
        ..TenantsSpec::default()
    }
}

fn cfg(pg: &TestPostgres, phase: Phase, sql: &str, tenants: TenantsSpec) -> Config {
    let mut c = Config::new(pg.url(), phase, sql);
    c.identity.namespace = "shop".into();
    c.identity.name = "verified".into();
    c.tenants = Some(tenants);
    c
}

/// Tenant schemas whose `users` has `column`.
async fn with_column(c: &tokio_postgres::Client, column: &str) -> Vec<String> {
    c.query(
        "SELECT table_schema::text FROM information_schema.columns
          WHERE table_name = 'users' AND column_name = $1 ORDER BY 1",
        &[&column],
    )
    .await
    .expect("columns")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn tally(r: &Report) -> (u32, u32, u32, u32) {
    let t = r.tenants.as_ref().expect("tenants in the report");
    (t.total, t.applied, t.failed, t.not_run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expand_runs_on_every_tenant_schema_once() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 12).await;
    c.batch_execute("CREATE SCHEMA other; CREATE TABLE other.users (id int);")
        .await
        .expect("other schema");
    let run = cfg(&pg, Phase::Expand, EXPAND, spec("tenant\\_%"));
    let r = executor::execute(&run).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    assert_eq!(tally(&r), (12, 12, 0, 0));
    assert_eq!(with_column(&c, "verified").await.len(), 12);
    assert!(!with_column(&c, "verified")
        .await
        .contains(&"other".to_string()));
    let rows: i64 = c
        .query_one(
            "SELECT count(*) FROM phasegate.ledger WHERE name LIKE 'verified/tenant\\_%' AND status = 'applied'",
            &[],
        )
        .await
        .expect("ledger")
        .get(0);
    assert_eq!(rows, 12, "one ledger row per tenant");
    let again = executor::execute(&run).await;
    assert_eq!(
        again.outcome,
        Outcome::AlreadyApplied,
        "{}",
        again.to_json_line()
    );
    assert_eq!(again.statements, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_halts_every_other_tenant() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 6).await;
    // The canary already has the column: its ALTER fails.
    c.batch_execute("ALTER TABLE tenant_03.users ADD COLUMN verified boolean")
        .await
        .expect("break the canary");
    let mut s = spec("tenant\\_%");
    s.canary = Canary {
        names: vec!["tenant_03".into()],
        count: 1,
    };
    let r = executor::execute(&cfg(&pg, Phase::Expand, EXPAND, s)).await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(tally(&r), (6, 0, 1, 5));
    let t = r.tenants.as_ref().expect("tenants");
    assert_eq!(t.halted.as_deref(), Some("canary tenant tenant_03 failed"));
    assert_eq!(t.failures[0].tenant, "tenant_03");
    assert!(t.failures[0].error.contains("42701"), "{:?}", t.failures);
    assert_eq!(
        with_column(&c, "verified").await,
        ["tenant_03"],
        "nothing else ran"
    );
    assert!(
        r.summary().contains("1 failed (tenant_03"),
        "{}",
        r.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failure_budget_halts_and_a_retry_runs_only_the_failed_and_unfinished() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 10).await;
    for s in ["tenant_02", "tenant_04"] {
        c.batch_execute(&format!("DROP TABLE {s}.users"))
            .await
            .expect("break");
    }
    let mut s = spec("tenant\\_%");
    s.max_concurrent = 1;
    s.failure_budget = 1;
    let run = cfg(&pg, Phase::Expand, EXPAND, s);
    let r = executor::execute(&run).await;
    assert_eq!(r.outcome, Outcome::Failed);
    // tenant_01 applied, 02 failed (within budget), 03 applied, 04 failed: over budget.
    assert_eq!(tally(&r), (10, 2, 2, 6), "{}", r.to_json_line());
    assert!(r.tenants.as_ref().and_then(|t| t.halted.clone()).is_some());
    // Fixed, retried: the two failed and the six not run apply; the two applied are skipped.
    for s in ["tenant_02", "tenant_04"] {
        c.batch_execute(&format!("CREATE TABLE {s}.users (id int, legacy text)"))
            .await
            .expect("fix");
    }
    let retry = executor::execute(&run).await;
    assert_eq!(retry.outcome, Outcome::Applied, "{}", retry.to_json_line());
    assert_eq!(tally(&retry), (10, 10, 0, 0));
    assert_eq!(retry.statements, 8, "only the failed and unfinished ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_databases_each_keep_their_own_ledger() {
    let pg = TestPostgres::start();
    pg.create_tenant_databases(&["shop_a", "shop_b", "shop_c"])
        .await;
    let tenants = TenantsSpec {
        databases: Some("shop\\_%".into()),
        max_concurrent: 2,
        ..TenantsSpec::default()
    };
    let r = executor::execute(&cfg(&pg, Phase::Expand, EXPAND, tenants)).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    assert_eq!(tally(&r), (3, 3, 0, 0));
    for db in ["shop_a", "shop_b", "shop_c"] {
        let d = pg.client_for_db(db).await;
        assert_eq!(with_column(&d, "verified").await, ["public"], "{db}");
        let row: String = d
            .query_one(
                "SELECT name FROM phasegate.ledger WHERE phase = 'expand'",
                &[],
            )
            .await
            .expect("ledger")
            .get(0);
        assert_eq!(row, "verified");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_gives_a_tenant_created_since_expand_its_expand_first() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 3).await;
    let r = executor::execute(&cfg(&pg, Phase::Expand, EXPAND, spec("tenant\\_%"))).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    add_schema(&c, "tenant_04").await;
    let mut contract = cfg(&pg, Phase::Contract, CONTRACT, spec("tenant\\_%"));
    contract.tenant_expand_sql = Some(EXPAND.into());
    contract.require_expand = true;
    contract.identity.uid = String::new();
    let r = executor::execute(&contract).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    let t = r.tenants.as_ref().expect("tenants");
    assert_eq!((t.total, t.applied, t.expanded_late), (4, 4, 1));
    assert_eq!(with_column(&c, "verified").await.len(), 4);
    assert!(
        with_column(&c, "legacy").await.is_empty(),
        "contracted everywhere"
    );
}

/// `phasegate apply` of expand on the tenants `tenants` (JSON) selects, configured as a Job is.
fn fleet_expand(pg: &TestPostgres, tenants: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(BIN);
    c.arg("apply")
        .env("PHASEGATE_DATABASE_URL", pg.url())
        .env("PHASEGATE_PHASE", "expand")
        .env("PHASEGATE_SQL", EXPAND)
        .env("PHASEGATE_MIGRATION_NAME", "verified")
        .env("PHASEGATE_TENANTS", tenants)
        .env("PHASEGATE_TERMINATION_LOG", "/nonexistent-dir/x");
    c
}

/// SIGKILL after the first tenant committed and before it said so: the next run applies
/// every tenant exactly once (an `ADD COLUMN` run twice would fail).
/// `cmd` spawned with the failpoint `name`, once it has reached it (within 30 s).
async fn paused_at(mut cmd: tokio::process::Command, name: &str) -> tokio::process::Child {
    let mut child = cmd
        .env("PHASEGATE_FAILPOINT", name)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let wanted = format!("failpoint {name}");
    let reached = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(&wanted) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(reached, "failpoint {name} not reached");
    // Keep reading: a closed pipe would fail the run's next log line.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_wave_resumes_each_tenant_exactly_once() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 8).await;
    let tenants = r#"{"schemas":"tenant\\_%","maxConcurrent":1}"#;
    let mut child = paused_at(fleet_expand(&pg, tenants), "pause-after-commit").await;
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    assert_eq!(with_column(&c, "verified").await, ["tenant_01"]);

    let out = fleet_expand(&pg, tenants).output().await.expect("rerun");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let r = Report::parse(&stdout).expect("report");
    assert_eq!(tally(&r), (8, 8, 0, 0));
    assert_eq!(r.statements, 7, "tenant_01 was not run again");
    assert_eq!(with_column(&c, "verified").await.len(), 8);
}

/// Through a pooler that drops the `options` startup parameter, a tenant's SQL would run in
/// the default schema: every tenant fails instead, and `public` is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_tenants_refuse_a_pooler_that_drops_their_search_path() {
    use support::pgbouncer::{Options, PoolMode, TestPgBouncer};
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 2).await;
    c.batch_execute("CREATE TABLE public.users (id int, legacy text)")
        .await
        .expect("public table");
    let opts = Options {
        extra: "ignore_startup_parameters = extra_float_digits,options\n".into(),
        ..Options::new(PoolMode::Session, 4)
    };
    let pooler = TestPgBouncer::start_with(&pg, &opts);
    let mut run = cfg(&pg, Phase::Expand, EXPAND, spec("tenant\\_%"));
    run.database_url = executor::Secret(pooler.url());
    let r = executor::execute(&run).await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.to_json_line());
    let error = r
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(error.contains("search_path"), "{error}");
    assert!(
        with_column(&c, "verified").await.is_empty(),
        "nothing ran anywhere"
    );
}

/// Schema tenants pass connections from one tenant's run to the next, with the session's
/// `search_path` set for each: a statement outside a transaction (`CREATE INDEX
/// CONCURRENTLY`) lands in the right schema too, and no tenant's DDL reaches another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_schema_tenant_gets_its_own_objects_on_shared_connections() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 9).await;
    let sql = "ALTER TABLE users ADD COLUMN verified boolean;
               CREATE INDEX CONCURRENTLY users_verified ON users (verified);";
    let mut s = spec("tenant\\_%");
    s.max_concurrent = 2;
    let r = executor::execute(&cfg(&pg, Phase::Expand, sql, s)).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    let indexes: Vec<String> = c
        .query(
            "SELECT schemaname::text FROM pg_indexes WHERE indexname = 'users_verified' ORDER BY 1",
            &[],
        )
        .await
        .expect("indexes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let want: Vec<String> = (1..=9).map(|i| format!("tenant_{i:02}")).collect();
    assert_eq!(indexes, want, "one index per tenant schema, none elsewhere");
    assert_eq!(with_column(&c, "verified").await, want);
}

/// A pattern that matches nothing, or a canary that is not a tenant, fails the phase with a
/// message saying so, before any tenant runs: a typo must not look like success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_matching_nothing_or_a_missing_canary_fails_before_any_tenant() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 3).await;
    let r = executor::execute(&cfg(&pg, Phase::Expand, EXPAND, spec("tenants\\_%"))).await;
    assert_eq!(r.outcome, Outcome::Failed);
    let msg = r
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(
        msg.contains("no tenant matches schemas LIKE 'tenants\\_%'"),
        "{msg}"
    );
    let mut s = spec("tenant\\_%");
    s.canary = Canary {
        names: vec!["tenant_demo".into()],
        count: 0,
    };
    let r = executor::execute(&cfg(&pg, Phase::Expand, EXPAND, s)).await;
    assert_eq!(r.outcome, Outcome::Failed);
    let msg = r
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(
        msg.contains("canary tenant(s) not found: tenant_demo"),
        "{msg}"
    );
    assert!(
        with_column(&c, "verified").await.is_empty(),
        "no tenant ran"
    );
}

/// A stand-in for the operator's grant endpoint (one narrow HTTP exchange): grants every
/// request and counts them.
async fn counting_grant_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    grant_server(r#"{"verdict":"Granted","reason":"every gate holds","validForMs":2000}"#).await
}

/// Contract attempt 1 of migration `shop/verified` asks for its grant at `url`.
fn grant_from(url: String) -> executor::grant::GrantConfig {
    executor::grant::GrantConfig {
        url,
        request: phasegate::protocol::grant::Request {
            namespace: "shop".into(),
            migration: "verified".into(),
            uid: "u-1".into(),
            phase: "contract".into(),
            attempt: 1,
            hold_ms: 0,
        },
        wait: Duration::from_secs(30),
    }
}

/// A grant endpoint that answers every request with `body`; counts the requests.
async fn grant_server(
    body: &'static str,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then a body as long as Content-Length says.
                loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (url, count)
}

/// The commit grant is asked for the attempt, not the tenant: one renewal (twice a second)
/// serves every tenant of a fleet's contract, however many there are, instead of one per
/// tenant loading the operator and the API server with each tenant's run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_contract_asks_for_its_commit_grant_once_for_every_tenant() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 40).await;
    let r = executor::execute(&cfg(&pg, Phase::Expand, EXPAND, spec("tenant\\_%"))).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    let (url, asked) = counting_grant_server().await;
    let mut contract = cfg(&pg, Phase::Contract, CONTRACT, spec("tenant\\_%"));
    contract.database_check = false;
    contract.grant = Some(grant_from(url));
    let started = std::time::Instant::now();
    let r = executor::execute(&contract).await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    assert_eq!(tally(&r), (40, 40, 0, 0));
    let asked = asked.load(std::sync::atomic::Ordering::SeqCst);
    // One renewal every 500 ms for the whole run, plus slack for the first and the last.
    let most = (secs * 2.0).ceil() as usize + 3;
    assert!(
        asked <= most,
        "{asked} grant requests in {secs:.1} s for 40 tenants (at most {most})"
    );
}

/// The operator stops the attempt (its grant is superseded): the fleet halts, saying so, and
/// counts its tenants as not run rather than failing each in turn on the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_fleet_contract_halts_and_fails_no_tenant() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 6).await;
    let r = executor::execute(&cfg(&pg, Phase::Expand, EXPAND, spec("tenant\\_%"))).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    let (url, _) = grant_server(
        r#"{"verdict":"Superseded","reason":"contract attempt 1 stopped before commit: a gate closed"}"#,
    )
    .await;
    let mut tenants = spec("tenant\\_%");
    tenants.failure_budget = 10;
    let mut contract = cfg(&pg, Phase::Contract, CONTRACT, tenants);
    contract.database_check = false;
    contract.grant = Some(grant_from(url));
    let r = executor::execute(&contract).await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.to_json_line());
    assert_eq!(tally(&r), (6, 0, 0, 6), "{}", r.to_json_line());
    let halted = r.tenants.as_ref().and_then(|t| t.halted.clone());
    assert!(
        halted
            .as_deref()
            .is_some_and(|h| h.contains("the operator stopped this attempt")),
        "{halted:?}"
    );
    assert_eq!(with_column(&c, "legacy").await.len(), 6, "nothing dropped");
}

/// A "yes" is valid from the request plus the hold the executor asked for, never more: an
/// answer claiming a longer hold (a confused or hostile operator) does not stretch it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cannot_stretch_a_grant_past_the_hold_asked_for() {
    let (url, _) = grant_server(
        r#"{"verdict":"Granted","reason":"every gate holds","validForMs":300,"heldMs":60000}"#,
    )
    .await;
    // The first ask holds nothing, so it asks for no hold: the grant lasts 300 ms.
    let grant = executor::grant::Grant::start(grant_from(url));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !grant.holds() {
        assert!(std::time::Instant::now() < deadline, "never granted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Renewals (every 500 ms) keep asking; between them the 300 ms run out.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while grant.holds() {
        assert!(
            std::time::Instant::now() < deadline,
            "a 300 ms grant held for 5 s: the claimed 60 s hold stretched it"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `tenants.waves`: a wave's tenants all finish before the next wave starts. The first wave
/// (one tenant) waits for an old reader of its table; no tenant of the next wave runs meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_finishes_before_the_next_wave_starts() {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 8).await;
    let mut reader = pg.client().await;
    let tx = reader.transaction().await.expect("begin");
    tx.batch_execute("SELECT count(*) FROM tenant_01.users")
        .await
        .expect("read");
    let mut tenants = spec("tenant\\_%");
    tenants.waves = vec![IntOrString::Int(1), IntOrString::String("50%".into())];
    let expand = cfg(&pg, Phase::Expand, EXPAND, tenants);
    let run = tokio::spawn(async move { executor::execute(&expand).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        with_column(&c, "verified").await.is_empty(),
        "the second wave waits for the first"
    );
    tx.rollback().await.expect("end the reader");
    let r = run.await.expect("run");
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    assert_eq!(tally(&r), (8, 8, 0, 0));
}

/// Backends of `phasegate` runs on the server (every database), polled until there are `want`
/// or `within` has passed: a connection the executor closed leaves a moment later.
async fn executor_backends(c: &tokio_postgres::Client, want: i64, within: Duration) -> i64 {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'phasegate'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if n == want || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A tenant's run holds one connection while it applies (the advisory lock is taken inside its
/// own transaction; a second connection is opened only for a statement outside a transaction
/// block): `maxConcurrent` tenants at once hold `maxConcurrent` connections, not twice that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_applying_holds_one_connection() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    schemas(&c, 3).await;
    let mut child = paused_at(
        fleet_expand(&pg, r#"{"schemas":"tenant\\_%","maxConcurrent":1}"#),
        "pause-before-commit",
    )
    .await;
    let n = executor_backends(&c, 1, Duration::from_secs(5)).await;
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    assert_eq!(n, 1, "connections of the executor while a tenant applies");
    assert!(
        with_column(&c, "verified").await.is_empty(),
        "nothing committed"
    );
}

/// `sessions` of pg_stat_database (connections ever opened) of each database, by name.
async fn sessions_opened(c: &tokio_postgres::Client, dbs: &[&str]) -> Vec<i64> {
    let mut out = Vec::new();
    for db in dbs {
        let n: i64 = c
            .query_one(
                "SELECT sessions FROM pg_stat_database WHERE datname = $1",
                &[db],
            )
            .await
            .expect("pg_stat_database")
            .get(0);
        out.push(n);
    }
    out
}

/// Connections opened in each database by `run`, once the executor's have all left.
async fn opened_by(c: &tokio_postgres::Client, dbs: &[&str], run: &Config) -> Vec<i64> {
    let before = sessions_opened(c, dbs).await;
    let r = executor::execute(run).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    executor_backends(c, 0, Duration::from_secs(10)).await;
    // A backend's counts reach the shared statistics as it exits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = sessions_opened(c, dbs).await;
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// A database tenant's expand opens one connection in its database, and so does its contract,
/// whose look at expand (for a tenant created since) shares the contract's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_tenant_opens_one_connection_per_phase() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    let dbs = ["shop_a", "shop_b", "shop_c"];
    pg.create_tenant_databases(&dbs).await;
    let tenants = TenantsSpec {
        databases: Some("shop\\_%".into()),
        max_concurrent: 2,
        ..TenantsSpec::default()
    };
    let expand = cfg(&pg, Phase::Expand, EXPAND, tenants.clone());
    assert_eq!(opened_by(&c, &dbs, &expand).await, [1, 1, 1], "expand");
    let mut contract = cfg(&pg, Phase::Contract, CONTRACT, tenants);
    contract.tenant_expand_sql = Some(EXPAND.into());
    contract.require_expand = true;
    assert_eq!(opened_by(&c, &dbs, &contract).await, [1, 1, 1], "contract");
}
