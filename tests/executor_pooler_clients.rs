//! Contract's database check behind a real PgBouncer in transaction pooling
//! (`spec.database.pooler`, src/executor/pooler_clients.rs): an idle client of an old app
//! version holds no server connection, so `pg_stat_activity` cannot see it; the executor reads
//! PgBouncer's `SHOW CLIENTS` on each look of the check, and a pooler it cannot read holds
//! contract and fails it with the reason.

mod support;

use std::time::Duration;

use phasegate::executor::{self, Config, Outcome, Phase, PoolerConfig, Report, Secret};
use support::apply;
use support::pgbouncer::{Options, PoolMode, TestPgBouncer};
use support::postgres::{free_port, sleep_ms, TestPostgres, PASSWORD};
use support::sessions::has_legacy;

const CONTRACT: &str = "ALTER TABLE users DROP COLUMN legacy";
const STATS_USER: &str = "pooler_stats";
const STATS_PASSWORD: &str = "st4ts-Pw-9q";

async fn setup(pg: &TestPostgres) -> tokio_postgres::Client {
    let c = pg.client().await;
    c.batch_execute(
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL, legacy int);
         INSERT INTO users (email) SELECT 'u' || g || '@example.com' FROM generate_series(1, 10) g;",
    )
    .await
    .expect("setup schema");
    c
}

/// A pooler in transaction mode with a stats user of its own (no PostgreSQL role).
fn pooler(pg: &TestPostgres, add_host: bool) -> TestPgBouncer {
    let mut opts = Options::new(PoolMode::Transaction, 4);
    opts.stats_users = vec![STATS_USER.into()];
    opts.extra_users = vec![(STATS_USER.into(), STATS_PASSWORD.into())];
    opts.application_name_add_host = add_host;
    TestPgBouncer::start_with(pg, &opts)
}

/// An application client through the pooler, connected and idle: it has sent no query, so
/// PgBouncer gave it no server connection and no backend carries its name.
async fn app_client(bouncer: &TestPgBouncer, application_name: &str) -> tokio_postgres::Client {
    let url = format!(
        "{}&application_name={}",
        bouncer.url(),
        application_name.replace('@', "%40")
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect through PgBouncer: {e}\n{}", bouncer.log()));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

fn contract(url: String, pooler: Option<PoolerConfig>) -> Config {
    let mut c = Config::new(url, Phase::Contract, CONTRACT);
    c.identity.namespace = "shop".into();
    c.identity.name = "m".into();
    c.identity.app_version = "2.0.0".into();
    c.database_check_timeout = Duration::from_secs(20);
    c.advisory_lock_timeout = Duration::from_secs(10);
    c.pooler = pooler;
    c
}

fn stats_admin(bouncer: &TestPgBouncer) -> Option<PoolerConfig> {
    Some(PoolerConfig {
        admin_url: Some(Secret(bouncer.admin_url(STATS_USER, STATS_PASSWORD))),
    })
}

async fn contract_rows(c: &tokio_postgres::Client) -> i64 {
    let exists: bool = c
        .query_one("SELECT to_regclass('phasegate.ledger') IS NOT NULL", &[])
        .await
        .expect("regclass")
        .get(0);
    if !exists {
        return 0;
    }
    c.query_one(
        "SELECT count(*) FROM phasegate.ledger WHERE phase = 'contract' AND status = 'applied'",
        &[],
    )
    .await
    .expect("ledger")
    .get(0)
}

/// Sessions of the server whose application_name starts with `prefix`.
async fn backends_named(c: &tokio_postgres::Client, prefix: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1 || '%'",
        &[&prefix],
    )
    .await
    .expect("pg_stat_activity")
    .get(0)
}

/// The `application_name` column of `SHOW CLIENTS`, as the stats user reads it.
async fn show_clients_names(bouncer: &TestPgBouncer) -> Vec<String> {
    let url = bouncer.admin_url(STATS_USER, STATS_PASSWORD);
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("admin console");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let rows = c.simple_query("SHOW CLIENTS").await.expect("SHOW CLIENTS");
    rows.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                r.get("application_name").map(str::to_string)
            }
            _ => None,
        })
        .collect()
}

fn message(r: &Report) -> String {
    r.error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default()
}

/// Runs contract in the background; waits `hold_ms`, checks it is still waiting with the
/// schema and ledger untouched, then returns the running task.
async fn still_held_after(
    direct: &tokio_postgres::Client,
    cfg: Config,
    hold_ms: u64,
) -> tokio::task::JoinHandle<Report> {
    let run = tokio::spawn(async move { executor::execute(&cfg).await });
    sleep_ms(hold_ms).await;
    assert!(
        !run.is_finished(),
        "contract did not wait for the pooler's old client: {}",
        run.await.map(|r| r.to_json_line()).unwrap_or_default()
    );
    assert!(has_legacy(direct).await, "the column was dropped");
    assert_eq!(contract_rows(direct).await, 0);
    run
}

async fn finished(run: tokio::task::JoinHandle<Report>) -> Report {
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("contract finishes")
        .expect("task")
}

/// Issue 25: the idle `shop-api@1.0.0` behind transaction pooling holds contract (the default
/// admin URL: the migration's role is an admin user of this PgBouncer), until it disconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_old_client_behind_the_pooler_holds_contract_until_it_leaves() {
    let pg = TestPostgres::start();
    let direct = setup(&pg).await;
    let bouncer = pooler(&pg, false);
    let old = app_client(&bouncer, "shop-api@1.0.0").await;
    // What made it a bug: the server shows no session of the old version.
    assert_eq!(backends_named(&direct, "shop-api@").await, 0);

    let cfg = contract(bouncer.url(), Some(PoolerConfig::default()));
    let run = still_held_after(&direct, cfg, 1500).await;
    drop(old);
    let r = finished(run).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    assert!(!has_legacy(&direct).await);
    assert_eq!(contract_rows(&direct).await, 1);
    assert!(
        r.db_check_wait_ms.unwrap_or(0) >= 1000,
        "waited for the client: {}",
        r.to_json_line()
    );
}

/// Another application's old version, the current version and unnamed clients do not hold
/// contract (application names given, as the operator always gives them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_apps_and_current_clients_do_not_hold_contract() {
    let pg = TestPostgres::start();
    let direct = setup(&pg).await;
    let bouncer = pooler(&pg, false);
    let _billing = app_client(&bouncer, "billing@1.0.0").await;
    let _current = app_client(&bouncer, "shop-api@2.0.0").await;
    let _psql = app_client(&bouncer, "psql").await;

    let mut cfg = contract(bouncer.url(), stats_admin(&bouncer));
    cfg.application_names = Some(vec!["shop-api".into(), "shop-worker".into()]);
    let r = tokio::time::timeout(Duration::from_secs(15), executor::execute(&cfg))
        .await
        .expect("contract does not wait");
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    assert_eq!(r.db_check_wait_ms, Some(0), "{}", r.to_json_line());
    assert!(!has_legacy(&direct).await);
}

/// Without `spec.database.pooler` the idle old client goes unseen (the limitation), but the
/// report warns: the server's port is not the one the URL connects to. Directly, no warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_pooler_is_warned_about() {
    let pg = TestPostgres::start();
    let direct = setup(&pg).await;
    let bouncer = pooler(&pg, false);
    let _old = app_client(&bouncer, "shop-api@1.0.0").await;
    let r = executor::execute(&contract(bouncer.url(), None)).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    let w = r.db_check_warning.clone().unwrap_or_default();
    let want = format!(
        "the server listens on port {} but the database URL connects to port {}",
        pg.port(),
        bouncer.port()
    );
    assert!(
        w.contains(&want) && w.contains("spec.database.pooler"),
        "{w}"
    );
    assert!(r.summary().contains("; warning: "), "{}", r.summary());
    assert!(!has_legacy(&direct).await);

    direct
        .batch_execute("ALTER TABLE users ADD COLUMN legacy int; TRUNCATE phasegate.ledger")
        .await
        .expect("again");
    let r = executor::execute(&contract(pg.url(), None)).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    assert_eq!(r.db_check_warning, None, "{}", r.to_json_line());
}

/// `application_name_add_host = 1`: PgBouncer appends ` - <host>:<port>` to the name; the
/// version is still read, for the old client and the current one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_add_host_suffix_is_understood() {
    let pg = TestPostgres::start();
    let direct = setup(&pg).await;
    let bouncer = pooler(&pg, true);
    let _current = app_client(&bouncer, "shop-api@2.0.0").await;
    let old = app_client(&bouncer, "shop-api@1.0.0").await;
    // PgBouncer 1.18 shows the suffix in SHOW CLIENTS too (seen: "shop-api@1.0.0 -
    // 127.0.0.1:36228").
    let names = show_clients_names(&bouncer).await;
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("shop-api@1.0.0 - 127.0.0.1:")),
        "{names:?}"
    );

    let mut cfg = contract(bouncer.url(), stats_admin(&bouncer));
    cfg.application_names = Some(vec!["shop-api".into()]);
    let run = still_held_after(&direct, cfg, 1500).await;
    drop(old);
    let r = finished(run).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    assert!(!has_legacy(&direct).await);
}

/// A pooler whose clients cannot be read holds contract and then fails it, naming the pooler
/// and the reason, never a password: wrong admin password, a closed port, a role that is no
/// stats user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_pooler_fails_contract_with_the_reason() {
    let pg = TestPostgres::start();
    let direct = setup(&pg).await;
    let bouncer = pooler(&pg, false);
    let mut no_admin = Options::new(PoolMode::Transaction, 4);
    no_admin.admin_users = Vec::new();
    let plain = TestPgBouncer::start_with(&pg, &no_admin);
    let closed = free_port().expect("port");
    let wrong = "wr0ng-Admin-pw";
    let cases = [
        (
            bouncer.url(),
            Some(bouncer.admin_url(STATS_USER, wrong)),
            bouncer.port(),
            "SASL authentication failed",
        ),
        (
            bouncer.url(),
            Some(format!(
                "postgres://{STATS_USER}:{STATS_PASSWORD}@127.0.0.1:{closed}/pgbouncer?sslmode=disable"
            )),
            closed,
            "Connection refused",
        ),
        // The migration's own role, not in admin_users or stats_users here.
        (
            plain.url(),
            None,
            plain.port(),
            "not allowed (the user is in neither stats_users nor admin_users of PgBouncer)",
        ),
    ];
    for (url, admin, port, why) in cases {
        let mut cfg = contract(
            url,
            Some(PoolerConfig {
                admin_url: admin.map(Secret),
            }),
        );
        cfg.database_check_timeout = Duration::from_secs(1);
        let r = executor::execute(&cfg).await;
        let line = r.to_json_line();
        assert_eq!(r.outcome, Outcome::Failed, "{line}");
        let want = format!("pooler 127.0.0.1:{port}: clients cannot be read: ");
        assert!(message(&r).contains(&want), "{want} in {line}");
        assert!(message(&r).contains(why), "{why} in {line}");
        assert!(!line.contains(wrong) && !line.contains(PASSWORD), "{line}");
        assert!(!line.contains(STATS_PASSWORD), "{line}");
        assert!(has_legacy(&direct).await);
        assert_eq!(contract_rows(&direct).await, 0);
    }
}

/// The look right before COMMIT reads the pooler too: an old client that connects while the
/// executor queues for its lock rolls that attempt back; the next commits once it has left.
/// The real binary, with the pooler from its environment as the operator sets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_client_arriving_during_the_lock_wait_is_caught_before_commit() {
    let pg = TestPostgres::start();
    let direct = setup(&pg).await;
    let bouncer = pooler(&pg, false);
    let holder = pg.client().await;
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM users;")
        .await
        .expect("hold");
    let url = bouncer.url();
    let admin = bouncer.admin_url(STATS_USER, STATS_PASSWORD);
    let mut envs = apply::contract_envs(&url, CONTRACT, "2.0.0", "/nonexistent-dir/log");
    envs.extend([
        ("PHASEGATE_POOLER", "true"),
        ("PHASEGATE_POOLER_ADMIN_URL", admin.as_str()),
        // In the lock queue inside the transaction (no lock-aware waiting), long enough.
        ("PHASEGATE_LOCK_WAIT_TIMEOUT", "0"),
        ("PHASEGATE_LOCK_TIMEOUT", "60s"),
        ("PHASEGATE_DATABASE_CHECK_TIMEOUT", "30s"),
    ]);
    let mut run = apply::spawn(&envs);
    run.wait_queued(&direct, "users").await;
    let old = app_client(&bouncer, "shop-api@1.0.0").await;
    holder.batch_execute("COMMIT").await.expect("release");

    sleep_ms(1500).await;
    assert!(!run.exited(), "exited early: {}", run.stderr_so_far());
    assert!(has_legacy(&direct).await);
    assert_eq!(contract_rows(&direct).await, 0);

    drop(old);
    let (f, _) = run.finish(Duration::from_secs(30)).await;
    assert_eq!(f.code, Some(0), "{}", f.output());
    let r = f.report();
    assert_eq!(r.attempts, 2, "one rolled back: {}", r.to_json_line());
    assert_eq!(r.db_check_rollbacks, Some(1), "{}", r.to_json_line());
    assert!(!has_legacy(&direct).await);
    let named = format!("pooler 127.0.0.1:{} client 127.0.0.1:", bouncer.port());
    assert!(
        f.stderr.contains(&named) && f.stderr.contains("(shop-api@1.0.0, "),
        "the client is named: {}",
        f.stderr
    );
    assert!(!f.output().contains(STATS_PASSWORD) && !f.output().contains(PASSWORD));
}

/// CloudNativePG's `<cluster>-app` Secret: its `uri` key is `postgresql://<user>:<password>@
/// <cluster>-rw.<namespace>:5432/<dbname>` (Go's url.URL: password percent-encoded, no query
/// parameters, so libpq's default sslmode `prefer`). That shape, with the host replaced by this
/// test server, runs expand and contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloudnativepg_app_uri_is_accepted() {
    let pg = TestPostgres::start();
    let admin = pg.client().await;
    let password = "9fGx2LkQ7pVn4TcR8wZy1HbJ6sDm3AeU5oKi0XqN7rLt2YvB4cWj8MhS6gPd1FzE";
    admin
        .batch_execute(&format!("CREATE ROLE app LOGIN PASSWORD '{password}'"))
        .await
        .expect("app role");
    admin
        .batch_execute("CREATE DATABASE app OWNER app")
        .await
        .expect("app database");
    let uri = format!("postgresql://app:{password}@127.0.0.1:{}/app", pg.port());
    let (app, conn) = tokio_postgres::connect(&uri, tokio_postgres::NoTls)
        .await
        .expect("connect as app");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    app.batch_execute("CREATE TABLE users (id bigserial PRIMARY KEY, legacy int)")
        .await
        .expect("table");
    let mut expand = Config::new(
        uri.clone(),
        Phase::Expand,
        "ALTER TABLE users ADD COLUMN email text",
    );
    expand.identity.app_version = "2.0.0".into();
    let r = executor::execute(&expand).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    let mut contract = Config::new(uri, Phase::Contract, CONTRACT);
    contract.identity.app_version = "2.0.0".into();
    let r = executor::execute(&contract).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    assert!(!r.to_json_line().contains(password));
}
