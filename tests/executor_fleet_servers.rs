//! `spec.tenants.servers` in the executor, against several real PostgreSQL servers (shards):
//! every tenant of every server applied once, tenants of a listed server named
//! `<server>/<tenant>`, a canary there halting every server, an unreachable server failing the
//! phase before any tenant runs (named, never by its URL), a retry of only what is left,
//! `maxConcurrent` per server, and contract giving a newly listed server's tenants expand first.

mod support;

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use phasegate::api::{Canary, SecretKeyRef, TenantServer, TenantsSpec};
use phasegate::executor::{self, Config, Outcome, Phase, Report, Secret};
use support::postgres::{TestPostgres, PASSWORD};

const BIN: &str = env!("CARGO_BIN_EXE_phasegate");
const EXPAND: &str = "ALTER TABLE users ADD COLUMN verified boolean;";
const CONTRACT: &str = "ALTER TABLE users DROP COLUMN legacy;";

async fn add_schema(c: &tokio_postgres::Client, s: &str) {
    c.batch_execute(&format!(
        "CREATE SCHEMA {s}; CREATE TABLE {s}.users (id int PRIMARY KEY, legacy text);
         INSERT INTO {s}.users VALUES (1, 'x');"
    ))
    .await
    .expect("tenant schema");
}

/// A server with `n` tenant schemas `tenant_01`…
async fn shard(n: usize) -> TestPostgres {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    for i in 1..=n {
        add_schema(&c, &format!("tenant_{i:02}")).await;
    }
    pg
}

/// Tenant schemas of `pg` whose `users` has `column`.
async fn with_column(pg: &TestPostgres, column: &str) -> Vec<String> {
    pg.client()
        .await
        .query(
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

fn server(name: &str) -> TenantServer {
    TenantServer {
        name: name.into(),
        url_secret_ref: SecretKeyRef {
            name: format!("shop-db-{name}"),
            key: "url".into(),
        },
    }
}

/// A run of `phase` on the schemas `tenant\_%` of `main` and of each listed `(name, url)`.
fn cfg(main: &TestPostgres, phase: Phase, sql: &str, listed: &[(&str, String)]) -> Config {
    let mut c = Config::new(main.url(), phase, sql);
    c.identity.namespace = "shop".into();
    c.identity.name = "verified".into();
    c.tenants = Some(TenantsSpec {
        schemas: Some("tenant\\_%".into()),
        servers: listed.iter().map(|(n, _)| server(n)).collect(),
        max_concurrent: 4,
        ..TenantsSpec::default()
    });
    c.server_urls = listed.iter().map(|(_, u)| Secret(u.clone())).collect();
    c
}

fn tenants_mut(c: &mut Config) -> &mut TenantsSpec {
    c.tenants.as_mut().expect("tenants")
}

fn tally(r: &Report) -> (u32, u32, u32, u32) {
    let t = r.tenants.as_ref().expect("tenants in the report");
    (t.total, t.applied, t.failed, t.not_run)
}

fn error_of(r: &Report) -> String {
    r.error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default()
}

async fn ledger_rows(pg: &TestPostgres) -> i64 {
    pg.client()
        .await
        .query_one(
            "SELECT count(*) FROM phasegate.ledger
              WHERE name LIKE 'verified/tenant\\_%' AND phase = 'expand' AND status = 'applied'",
            &[],
        )
        .await
        .expect("ledger")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tenant_on_every_server_is_applied_exactly_once() {
    let (main, eu2, us1, empty) = (
        shard(3).await,
        shard(4).await,
        shard(2).await,
        shard(0).await,
    );
    let listed = [
        ("eu-2", eu2.url()),
        ("us-1", us1.url()),
        ("empty", empty.url()),
    ];
    let run = cfg(&main, Phase::Expand, EXPAND, &listed);
    let r = executor::execute(&run).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    assert_eq!(tally(&r), (9, 9, 0, 0), "a server without tenants is fine");
    for (pg, n) in [(&main, 3), (&eu2, 4), (&us1, 2)] {
        assert_eq!(with_column(pg, "verified").await.len(), n);
        assert_eq!(
            ledger_rows(pg).await,
            n as i64,
            "each server keeps its own ledger"
        );
    }
    let again = executor::execute(&run).await;
    assert_eq!(
        again.outcome,
        Outcome::AlreadyApplied,
        "{}",
        again.to_json_line()
    );
    assert_eq!((again.statements, tally(&again)), (0, (9, 9, 0, 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_tenant_of_a_listed_server_is_named_by_it_and_a_retry_runs_only_what_is_left() {
    let (main, eu2) = (shard(4).await, shard(4).await);
    eu2.client()
        .await
        .batch_execute("DROP TABLE tenant_02.users")
        .await
        .expect("break eu-2/tenant_02");
    let mut run = cfg(&main, Phase::Expand, EXPAND, &[("eu-2", eu2.url())]);
    tenants_mut(&mut run).max_concurrent = 1;
    let r = executor::execute(&run).await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.to_json_line());
    let (total, applied, failed, not_run) = tally(&r);
    assert_eq!((total, failed), (8, 1), "{}", r.to_json_line());
    assert!(
        not_run > 0,
        "the failure budget of 0 halted: {}",
        r.to_json_line()
    );
    let t = r.tenants.as_ref().expect("tenants");
    assert_eq!(t.failures[0].tenant, "eu-2/tenant_02");
    assert!(t.failures[0].error.contains("42P01"), "{:?}", t.failures);
    assert!(
        r.summary().contains("1 failed (eu-2/tenant_02: "),
        "{}",
        r.summary()
    );
    assert!(!with_column(&eu2, "verified")
        .await
        .contains(&"tenant_03".into()));

    eu2.client()
        .await
        .batch_execute("CREATE TABLE tenant_02.users (id int, legacy text)")
        .await
        .expect("fix");
    let retry = executor::execute(&run).await;
    assert_eq!(retry.outcome, Outcome::Applied, "{}", retry.to_json_line());
    assert_eq!(tally(&retry), (8, 8, 0, 0));
    assert_eq!(
        retry.statements as u32,
        failed + not_run,
        "only the failed and unfinished ran ({applied} were applied)"
    );
    assert_eq!(with_column(&main, "verified").await.len(), 4);
    assert_eq!(with_column(&eu2, "verified").await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_of_a_listed_server_runs_first_and_its_failure_halts_every_server() {
    let (main, eu2, us1) = (shard(3).await, shard(3).await, shard(3).await);
    // The canary already has the column: its ALTER fails.
    eu2.client()
        .await
        .batch_execute("ALTER TABLE tenant_02.users ADD COLUMN verified boolean")
        .await
        .expect("break the canary");
    let listed = [("eu-2", eu2.url()), ("us-1", us1.url())];
    let mut run = cfg(&main, Phase::Expand, EXPAND, &listed);
    tenants_mut(&mut run).canary = Canary {
        names: vec!["eu-2/tenant_02".into()],
        count: 0,
    };
    let r = executor::execute(&run).await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(tally(&r), (9, 0, 1, 8), "{}", r.to_json_line());
    let t = r.tenants.as_ref().expect("tenants");
    assert_eq!(
        t.halted.as_deref(),
        Some("canary tenant eu-2/tenant_02 failed")
    );
    assert_eq!(t.failures[0].tenant, "eu-2/tenant_02");
    assert!(
        with_column(&main, "verified").await.is_empty(),
        "nothing else ran"
    );
    assert!(
        with_column(&us1, "verified").await.is_empty(),
        "nothing else ran"
    );
    assert_eq!(with_column(&eu2, "verified").await, ["tenant_02"]);

    // A plain name is a tenant of spec.database's server; there is no tenant_02 on eu-2 alone.
    tenants_mut(&mut run).canary.names = vec!["eu-2/tenant_09".into()];
    let r = executor::execute(&run).await;
    assert!(
        error_of(&r).contains("canary tenant(s) not found: eu-2/tenant_09"),
        "{}",
        error_of(&r)
    );
}

/// Servers take turns in the order tenants run: canaries by count, and each wave, reach every
/// server (in discovery's order server by server, both canaries would be spec.database's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_by_count_and_waves_take_every_server_in_turn() {
    let (main, eu2) = (shard(3).await, shard(3).await);
    eu2.client()
        .await
        .batch_execute("DROP TABLE tenant_01.users")
        .await
        .expect("break eu-2/tenant_01");
    let mut run = cfg(&main, Phase::Expand, EXPAND, &[("eu-2", eu2.url())]);
    tenants_mut(&mut run).canary.count = 2;
    let r = executor::execute(&run).await;
    assert_eq!(tally(&r), (6, 1, 1, 4), "{}", r.to_json_line());
    let t = r.tenants.as_ref().expect("tenants");
    assert_eq!(
        t.halted.as_deref(),
        Some("canary tenant eu-2/tenant_01 failed")
    );
    assert_eq!(with_column(&main, "verified").await, ["tenant_01"]);

    // Another migration, no canaries, a first wave of half the tenants: tenant_01 of each
    // server and main's tenant_02, both servers at once; eu-2/tenant_01 fails in it, and the
    // budget halts before the second wave.
    let mut run = cfg(
        &main,
        Phase::Expand,
        "ALTER TABLE users ADD COLUMN waved boolean;",
        &[("eu-2", eu2.url())],
    );
    run.identity.name = "waved".into();
    tenants_mut(&mut run).waves = vec![IntOrString::String("50%".into())];
    let r = executor::execute(&run).await;
    assert_eq!(tally(&r), (6, 2, 1, 3), "{}", r.to_json_line());
    let t = r.tenants.as_ref().expect("tenants");
    assert_eq!(t.failures[0].tenant, "eu-2/tenant_01");
    assert_eq!(
        with_column(&main, "waved").await,
        ["tenant_01", "tenant_02"]
    );
    assert!(with_column(&eu2, "waved").await.is_empty());
}

/// A listed server that cannot be reached, and one that refuses the password: the phase fails
/// before any tenant of any server runs, naming both servers, never their URLs or passwords.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_fails_the_phase_before_any_tenant_runs() {
    let (main, eu2, eu4) = (shard(2).await, shard(2).await, shard(1).await);
    let port = support::postgres::free_port().expect("free port");
    let dead = format!("postgres://phasegate_test:{PASSWORD}@127.0.0.1:{port}/postgres");
    let wrong_password = "wrong-Pw-9x7-s3cret";
    let refused = eu4.url_with_password(wrong_password);
    let listed = [
        ("eu-2", eu2.url()),
        ("eu-3", dead.clone()),
        ("eu-4", refused.clone()),
    ];
    let mut run = cfg(&main, Phase::Expand, EXPAND, &listed);
    run.connect_timeout = Duration::from_secs(3);
    let r = executor::execute(&run).await;
    assert_eq!(r.outcome, Outcome::Failed);
    let msg = error_of(&r);
    assert!(msg.contains("server eu-3: discovering tenants"), "{msg}");
    assert!(msg.contains("server eu-4: discovering tenants"), "{msg}");
    assert!(!msg.contains("eu-2"), "eu-2 was fine: {msg}");
    for secret in [PASSWORD, wrong_password, dead.as_str(), refused.as_str()] {
        assert!(!r.to_json_line().contains(secret), "{secret} leaked: {msg}");
    }
    for pg in [&main, &eu2, &eu4] {
        assert!(
            with_column(pg, "verified").await.is_empty(),
            "no tenant ran"
        );
    }
}

/// Two entries that reach one server (two Secrets with the same URL, or a second address of
/// it) would count and walk its tenants twice: the phase fails before any tenant runs, naming
/// both entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_listed_twice_fails_the_phase_before_any_tenant_runs() {
    let (main, eu2) = (shard(2).await, shard(2).await);
    let again = eu2.url().replace("127.0.0.1", "localhost");
    let listed = [("eu-2", eu2.url()), ("eu-3", again)];
    let r = executor::execute(&cfg(&main, Phase::Expand, EXPAND, &listed)).await;
    assert_eq!(r.outcome, Outcome::Failed);
    let msg = error_of(&r);
    assert!(
        msg.contains("server eu-2 and server eu-3 are the same PostgreSQL server"),
        "{msg}"
    );
    for pg in [&main, &eu2] {
        assert!(
            with_column(pg, "verified").await.is_empty(),
            "no tenant ran"
        );
    }
    // spec.database's server listed again, too.
    let listed = [("eu-2", main.url())];
    let r = executor::execute(&cfg(&main, Phase::Expand, EXPAND, &listed)).await;
    assert_eq!(r.outcome, Outcome::Failed);
    let msg = error_of(&r);
    assert!(
        msg.contains("spec.database's server and server eu-2 are the same PostgreSQL server"),
        "{msg}"
    );
    assert!(
        with_column(&main, "verified").await.is_empty(),
        "no tenant ran"
    );
}

/// A server without a matching tenant is fine when another has one; none anywhere fails with
/// the pattern, as on one server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tenant_on_any_server_fails_with_the_pattern() {
    let (main, eu2) = (shard(0).await, shard(0).await);
    let r = executor::execute(&cfg(&main, Phase::Expand, EXPAND, &[("eu-2", eu2.url())])).await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert!(
        error_of(&r).contains("no tenant matches schemas LIKE 'tenant\\_%'"),
        "{}",
        error_of(&r)
    );
    add_schema(&eu2.client().await, "tenant_01").await;
    let r = executor::execute(&cfg(&main, Phase::Expand, EXPAND, &[("eu-2", eu2.url())])).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    assert_eq!(tally(&r), (1, 1, 0, 0));
}

/// The most tenants seen running (in their `pg_sleep`) on one server at once, and the most
/// connections of the executor there, sampled every 10 ms until `done`.
async fn sample(pg: &TestPostgres, done: tokio::sync::watch::Receiver<bool>) -> Vec<(i64, i64)> {
    let c = pg.client().await;
    let mut seen = Vec::new();
    while !*done.borrow() {
        let row = c
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'active' AND query LIKE '%pg_sleep%'),
                        count(*)
                   FROM pg_stat_activity
                  WHERE application_name = 'phasegate' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_activity");
        seen.push((row.get(0), row.get(1)));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen
}

/// `maxConcurrent` bounds each server, not the run: with 2, each of three servers runs two
/// tenants at once (four connections), side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_concurrent_tenants_run_on_each_server_at_once() {
    let shards = [shard(6).await, shard(6).await, shard(6).await];
    let listed = [("eu-2", shards[1].url()), ("us-1", shards[2].url())];
    let sql = "ALTER TABLE users ADD COLUMN verified boolean; SELECT pg_sleep(0.3);";
    let mut run = cfg(&shards[0], Phase::Expand, sql, &listed);
    tenants_mut(&mut run).max_concurrent = 2;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let samplers = futures::future::join_all(shards.iter().map(|pg| sample(pg, rx.clone())));
    let (r, seen) = tokio::join!(
        async {
            let r = executor::execute(&run).await;
            let _ = tx.send(true);
            r
        },
        samplers
    );
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    assert_eq!(tally(&r), (18, 18, 0, 0));
    for (i, s) in seen.iter().enumerate() {
        let running = s.iter().map(|x| x.0).max().unwrap_or(0);
        let connections = s.iter().map(|x| x.1).max().unwrap_or(0);
        assert_eq!(
            running, 2,
            "server {i}: at most 2 at once, and 2 reached: {s:?}"
        );
        assert!(
            connections <= 4,
            "server {i}: {connections} connections: {s:?}"
        );
    }
    let together = (0..seen.iter().map(Vec::len).min().unwrap_or(0))
        .map(|k| seen.iter().map(|s| s[k].0).sum::<i64>())
        .max()
        .unwrap_or(0);
    assert!(
        together > 2,
        "servers ran side by side, not 2 in all: {together}"
    );
}

/// Contract on a server listed since expand (and on a tenant created since, on another
/// server): expand runs there first, then contract, everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_gives_the_tenants_of_a_server_listed_since_expand_their_expand_first() {
    let (main, eu2, us1) = (shard(2).await, shard(2).await, shard(3).await);
    let r = executor::execute(&cfg(&main, Phase::Expand, EXPAND, &[("eu-2", eu2.url())])).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    add_schema(&eu2.client().await, "tenant_03").await;
    let listed = [("eu-2", eu2.url()), ("us-1", us1.url())];
    let mut contract = cfg(&main, Phase::Contract, CONTRACT, &listed);
    contract.tenant_expand_sql = Some(EXPAND.into());
    contract.require_expand = true;
    let r = executor::execute(&contract).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    let t = r.tenants.as_ref().expect("tenants");
    assert_eq!((t.total, t.applied, t.expanded_late), (8, 8, 4));
    for (pg, n) in [(&main, 2), (&eu2, 3), (&us1, 3)] {
        assert_eq!(with_column(pg, "verified").await.len(), n, "expanded");
        assert!(with_column(pg, "legacy").await.is_empty(), "contracted");
    }
}

/// Database tenants of the same names on two servers: each keeps its own ledger in its own
/// database, and they are told apart by their server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_tenants_of_the_same_name_on_two_servers_are_two_tenants() {
    let (main, eu2) = (TestPostgres::start(), TestPostgres::start());
    for pg in [&main, &eu2] {
        pg.create_tenant_databases(&["shop_a", "shop_b"]).await;
    }
    eu2.client_for_db("shop_b")
        .await
        .batch_execute("DROP TABLE users")
        .await
        .expect("break eu-2/shop_b");
    let mut run = cfg(&main, Phase::Expand, EXPAND, &[("eu-2", eu2.url())]);
    let t = tenants_mut(&mut run);
    t.schemas = None;
    t.databases = Some("shop\\_%".into());
    t.failure_budget = 1;
    let r = executor::execute(&run).await;
    assert_eq!(tally(&r), (4, 3, 1, 0), "{}", r.to_json_line());
    let failures = &r.tenants.as_ref().expect("tenants").failures;
    assert_eq!(failures[0].tenant, "eu-2/shop_b");
    for (pg, db) in [(&main, "shop_a"), (&main, "shop_b"), (&eu2, "shop_a")] {
        let rows: i64 = pg
            .client_for_db(db)
            .await
            .query_one(
                "SELECT count(*) FROM phasegate.ledger WHERE name = 'verified'",
                &[],
            )
            .await
            .expect("ledger")
            .get(0);
        assert_eq!(rows, 1, "{db}");
    }
}

/// `phasegate apply` as a Job runs it: the names in `PHASEGATE_TENANTS`, each server's URL in
/// `PHASEGATE_SERVER_URL_<i>`; the log names a listed server's failed tenant
/// `<server>/<tenant>`. A missing variable fails the phase naming the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_binary_each_servers_url_comes_from_its_own_variable() {
    let (main, eu2) = (shard(1).await, shard(2).await);
    let tenants = r#"{"schemas":"tenant\\_%","servers":[{"name":"eu-2","urlSecretRef":{"name":"shop-db-eu-2","key":"url"}}]}"#;
    let apply = || {
        let mut c = tokio::process::Command::new(BIN);
        c.arg("apply")
            .env("PHASEGATE_DATABASE_URL", main.url())
            .env("PHASEGATE_PHASE", "expand")
            .env("PHASEGATE_SQL", EXPAND)
            .env("PHASEGATE_MIGRATION_NAME", "verified")
            .env("PHASEGATE_TENANTS", tenants)
            .env("PHASEGATE_TERMINATION_LOG", "/nonexistent-dir/x")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let out = apply().output().await.expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    let r = Report::parse(&stdout).expect("report");
    assert!(
        error_of(&r).contains("server eu-2 has no URL (PHASEGATE_SERVER_URL_0"),
        "{}",
        error_of(&r)
    );

    eu2.client()
        .await
        .batch_execute("DROP TABLE tenant_02.users")
        .await
        .expect("break eu-2/tenant_02");
    let out = apply()
        .env("PHASEGATE_SERVER_URL_0", eu2.url())
        .output()
        .await
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let r = Report::parse(&stdout).expect("report");
    assert_eq!(tally(&r), (3, 2, 1, 0), "{stdout}");
    let failed = stderr
        .lines()
        .find(|l| l.contains("failed on this tenant"))
        .unwrap_or_default();
    assert!(failed.contains("eu-2/tenant_02"), "{stderr}");
    assert!(!stderr.contains(PASSWORD) && !stdout.contains(PASSWORD));
    assert_eq!(with_column(&main, "verified").await, ["tenant_01"]);
    assert_eq!(with_column(&eu2, "verified").await, ["tenant_01"]);
}
