//! Contract's database check on hot standbys (src/executor/standbys.rs): old code that reads
//! from a streaming standby never shows in the primary's `pg_stat_activity`, yet it reads the
//! columns contract drops. Real standbys made with `pg_basebackup -R` from a test primary.

mod support;

use std::time::Duration;

use phasegate::executor::{self, Config, Outcome, Phase, Report, Secret};
use support::apply;
use support::postgres::{free_port, sleep_ms, TestPostgres, PASSWORD};
use support::sessions::{has_legacy, session};

const CONTRACT: &str = "ALTER TABLE users DROP COLUMN legacy";

/// A primary with the `users` table and a hot standby that has replayed it.
async fn pair(primary: TestPostgres, standby_host: &str, port: Option<u16>) -> Pair {
    primary
        .client()
        .await
        .batch_execute(
        "CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL, legacy int);
         INSERT INTO users (email) SELECT 'u' || g || '@example.com' FROM generate_series(1, 10) g;",
    )
    .await
    .expect("setup schema");
    // May restart the primary (see standby_of): connect afterwards.
    let standby = TestPostgres::standby_of(&primary, standby_host, port);
    standby.wait_replayed(&primary).await;
    let c = primary.client().await;
    Pair {
        primary,
        standby,
        c,
    }
}

struct Pair {
    primary: TestPostgres,
    standby: TestPostgres,
    /// A client of the primary.
    c: tokio_postgres::Client,
}

fn contract(url: String) -> Config {
    let mut c = Config::new(url, Phase::Contract, CONTRACT);
    c.identity.namespace = "shop".into();
    c.identity.name = "m".into();
    c.identity.app_version = "2.0.0".into();
    c.database_check_timeout = Duration::from_secs(30);
    c
}

async fn ledger_rows(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "SELECT CASE WHEN to_regclass('phasegate.ledger') IS NULL THEN 0
                ELSE (SELECT count(*) FROM phasegate.ledger WHERE phase = 'contract') END",
        &[],
    )
    .await
    .expect("ledger")
    .get(0)
}

fn message(r: &Report) -> String {
    r.error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default()
}

/// Runs contract in the background; returns its handle.
fn spawn_contract(cfg: Config) -> tokio::task::JoinHandle<Report> {
    tokio::spawn(async move { executor::execute(&cfg).await })
}

/// Old sessions on a listed standby — one idle, one in a long read transaction — hold contract
/// (the column stays on primary and standby) until they are gone; a newer-version session there
/// does not; a transaction that began on the standby before the rollout completed holds it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_sessions_on_a_listed_standby_hold_contract_until_they_end() {
    let p = pair(TestPostgres::start(), "127.0.0.1", None).await;
    let s = p.standby.client().await;
    let surl = p.standby.url();
    let (newer, _) = session(&surl, "shop-api@2.0.0").await;
    let (idle_old, idle_pid) = session(&surl, "shop-api@1.0.0").await;
    let (reader, reader_pid) = session(&surl, "shop-api@1.0.0").await;
    let (report_tx, report_pid) = session(&surl, "reporting").await;
    reader
        .batch_execute("BEGIN; SELECT count(legacy) FROM users;")
        .await
        .expect("read");
    report_tx
        .batch_execute("BEGIN; SELECT count(*) FROM users;")
        .await
        .expect("report");
    sleep_ms(50).await;
    let completed = jiff::Timestamp::now();

    let mut cfg = contract(p.primary.url());
    cfg.replica_urls = vec![Secret(surl.clone())];
    cfg.rollout_completed_at = Some(completed);

    // Bounded first: each blocker on the standby is named, the newer session is not.
    cfg.database_check_timeout = Duration::from_millis(500);
    let r = executor::execute(&cfg).await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.to_json_line());
    let msg = message(&r);
    let on = format!("on standby 127.0.0.1:{}", p.standby.port());
    for want in [
        format!("pid {idle_pid} {on} (shop-api@1.0.0, idle): application version 1.0.0 is older than 2.0.0"),
        format!("pid {reader_pid} {on} (shop-api@1.0.0, idle in transaction): application version 1.0.0"),
        format!("pid {report_pid} {on} (reporting, idle in transaction): transaction began before the rollout completed"),
    ] {
        assert!(msg.contains(&want), "{want} not in {msg}");
    }
    assert!(msg.contains("still 3 old session(s)"), "{msg}");
    assert_eq!(ledger_rows(&p.c).await, 0);

    cfg.database_check_timeout = Duration::from_secs(30);
    let run = spawn_contract(cfg);

    sleep_ms(2000).await;
    assert!(!run.is_finished(), "contract did not wait for the standby");
    assert!(has_legacy(&p.c).await && has_legacy(&s).await);
    drop(idle_old);
    sleep_ms(800).await;
    assert!(
        !run.is_finished(),
        "the standby's reader no longer held contract"
    );
    drop(reader);
    sleep_ms(800).await;
    assert!(
        !run.is_finished(),
        "the pre-rollout transaction no longer held contract"
    );
    assert!(has_legacy(&p.c).await);
    report_tx.batch_execute("COMMIT").await.expect("commit");

    let r = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("contract ends")
        .expect("join");
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    assert!(
        r.db_check_wait_ms.is_some_and(|ms| ms >= 3000),
        "{}",
        r.to_json_line()
    );
    assert!(!has_legacy(&p.c).await);
    p.standby.wait_replayed(&p.primary).await;
    assert!(!has_legacy(&s).await);
    // The newer session was there all along and is untouched.
    newer.batch_execute("SELECT 1").await.expect("newer alive");
}

/// The waits the executor announces (what the operator puts in status) name the standby and
/// the session; the re-check right before COMMIT looks at the standby too: an old session that
/// connects there while contract queues for its lock on the primary rolls the attempt back.
/// Through the binary, with `PHASEGATE_REPLICA_URL_0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_standby_session_arriving_during_the_lock_wait_is_caught_before_commit() {
    let p = pair(TestPostgres::start(), "127.0.0.1", None).await;
    let holder = p.primary.client().await;
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM users;")
        .await
        .expect("hold");
    let (url, surl) = (p.primary.url(), p.standby.url());
    let mut envs = apply::contract_envs(&url, CONTRACT, "2.0.0", "/nonexistent-dir/tl");
    envs.push(("PHASEGATE_REPLICA_URL_0", &surl));
    envs.push(("PHASEGATE_LOCK_WAIT_TIMEOUT", "0"));
    envs.push(("PHASEGATE_LOCK_TIMEOUT", "60s"));
    envs.push(("PHASEGATE_DATABASE_CHECK_TIMEOUT", "30s"));
    let mut run = apply::spawn(&envs);
    run.wait_queued(&p.c, "users").await;
    let (old, old_pid) = session(&surl, "shop-api@1.0.0").await;
    holder.batch_execute("COMMIT").await.expect("release");

    let standby = format!("standby 127.0.0.1:{}", p.standby.port());
    let named = format!("pid {old_pid} on {standby} (shop-api@1.0.0");
    assert!(
        run.wait_for_stderr(
            |l| l.contains("\"waiting\":\"database-check\"") && l.contains(&named),
            Duration::from_secs(10)
        )
        .await,
        "no wait announced naming {named}: {}",
        run.stderr_so_far()
    );
    assert!(!run.exited());
    assert!(has_legacy(&p.c).await);
    // What the operator reads from this log tail and puts in status while the Job runs.
    let status = phasegate::protocol::log::current_wait(&run.stderr_so_far()).unwrap_or_default();
    assert!(
        status.contains("(database check)") && status.contains(&named),
        "{status}"
    );
    drop(old);
    let (f, _) = run.finish(Duration::from_secs(30)).await;
    assert_eq!(f.code, Some(0), "{}", f.output());
    let r = f.report();
    assert_eq!(r.outcome, Outcome::Applied);
    assert_eq!(r.attempts, 2, "{}", r.to_json_line());
    assert_eq!(r.db_check_rollbacks, Some(1), "{}", r.to_json_line());
    assert!(!has_legacy(&p.c).await);
    assert!(!f.output().contains(PASSWORD));
}

/// A listed standby that cannot be reached holds contract; after the check's timeout contract
/// fails with a reason naming the standby (never its URL or password) and commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_listed_standby_fails_contract_with_a_clear_reason() {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    c.batch_execute("CREATE TABLE users (id int, legacy int)")
        .await
        .expect("setup");
    let port = free_port().expect("port");
    let dead =
        format!("postgres://phasegate_test:{PASSWORD}@127.0.0.1:{port}/postgres?sslmode=disable");
    let url = pg.url();
    let mut envs = apply::contract_envs(&url, CONTRACT, "2.0.0", "/nonexistent-dir/tl");
    envs.push(("PHASEGATE_REPLICA_URL_0", &dead));
    envs.push(("PHASEGATE_DATABASE_CHECK_TIMEOUT", "1s"));
    let f = apply::run(&envs).await;
    assert_eq!(f.code, Some(1), "{}", f.output());
    let r = f.report();
    assert_eq!(r.outcome, Outcome::Failed);
    let msg = message(r);
    assert!(
        msg.contains(&format!("standby 127.0.0.1:{port}"))
            && msg.contains("PHASEGATE_REPLICA_URL_0")
            && msg.contains("could not be checked")
            && msg.contains("nothing was applied"),
        "{msg}"
    );
    assert!(!f.output().contains(PASSWORD), "{}", f.output());
    assert!(!f.output().contains(&dead));
    // What the operator puts in status from the Job's termination message.
    let status = phasegate::controller::jobs::summarise(&r.to_json_line());
    assert!(
        status.contains(&format!(
            "standby 127.0.0.1:{port} (PHASEGATE_REPLICA_URL_0) could not be checked"
        )) && !status.contains(PASSWORD),
        "{status}"
    );
    assert!(has_legacy(&c).await);
    assert_eq!(ledger_rows(&c).await, 0);
}

/// `discover`: the standby is found in the primary's `pg_stat_replication` and checked at its
/// `client_addr` on the primary's port. The primary listens on 127.0.0.2 and the standby on
/// 127.0.0.1 with the same port: the standby's replication connection to 127.0.0.2 comes from
/// 127.0.0.1, so that is its `client_addr`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_the_standby_and_its_old_session_holds_contract() {
    let port = free_port().expect("port");
    let p = pair(
        TestPostgres::start_at("127.0.0.2", Some(port)),
        "127.0.0.1",
        Some(port),
    )
    .await;
    let (old, old_pid) = session(&p.standby.url(), "shop-api@1.0.0").await;

    let mut cfg = contract(p.primary.url());
    cfg.replica_discover = true;
    cfg.database_check_timeout = Duration::from_millis(1500);
    let r = executor::execute(&cfg).await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.to_json_line());
    let msg = message(&r);
    assert!(
        msg.contains(&format!(
            "pid {old_pid} on standby 127.0.0.1:{port} (shop-api@1.0.0, idle): application version 1.0.0 is older than 2.0.0"
        )),
        "{msg}"
    );
    assert!(has_legacy(&p.c).await);
    assert_eq!(ledger_rows(&p.c).await, 0);

    // Once the old session is gone, the same contract commits.
    cfg.database_check_timeout = Duration::from_secs(30);
    let run = spawn_contract(cfg);
    sleep_ms(1000).await;
    assert!(!run.is_finished(), "contract did not wait for the standby");
    drop(old);
    let r = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("contract ends")
        .expect("join");
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    assert!(!has_legacy(&p.c).await);
}

/// A migration role without `pg_read_all_stats`: on a standby it sees other roles' sessions as
/// on the primary (name, no transaction start), and waits out the transactions they had open
/// when it first looked (their virtualxid locks in the standby's `pg_locks`); discovery cannot
/// see the standbys' addresses and holds contract, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_role_waits_out_hidden_standby_transactions_and_cannot_discover() {
    let p = pair(TestPostgres::start(), "127.0.0.1", None).await;
    p.c.batch_execute(
        "CREATE ROLE app LOGIN PASSWORD 'app-pw';
         CREATE ROLE migr LOGIN PASSWORD 'migr-pw';
         GRANT CREATE ON DATABASE postgres TO migr;
         ALTER TABLE users OWNER TO migr;
         GRANT ALL ON users TO app;",
    )
    .await
    .expect("roles");
    p.standby.wait_replayed(&p.primary).await;
    let url = |user: &str, pw: &str, pg: &TestPostgres| {
        format!(
            "postgres://{user}:{pw}@127.0.0.1:{}/postgres?sslmode=disable",
            pg.port()
        )
    };
    let (tx, tx_pid) = session(&url("app", "app-pw", &p.standby), "psql").await;
    let mut cfg = contract(url("migr", "migr-pw", &p.primary));
    cfg.replica_urls = vec![Secret(url("migr", "migr-pw", &p.standby))];
    cfg.rollout_completed_at = Some(jiff::Timestamp::now());
    sleep_ms(50).await;
    tx.batch_execute("BEGIN; SELECT count(*) FROM users;")
        .await
        .expect("begin"); // began after the rollout, but the role cannot tell
    cfg.database_check_timeout = Duration::from_millis(500);
    let r = executor::execute(&cfg).await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.to_json_line());
    let msg = message(&r);
    assert!(
        msg.contains(&format!(
            "pid {tx_pid} on standby 127.0.0.1:{} (psql): transaction of another role, open since before the check began",
            p.standby.port()
        )),
        "{msg}"
    );
    assert!(r.db_check_warning.is_some(), "{}", r.to_json_line());

    // Once that transaction ends, contract commits.
    let release = tokio::spawn(async move {
        sleep_ms(1000).await;
        tx.batch_execute("COMMIT").await.expect("commit");
        tx
    });
    cfg.database_check_timeout = Duration::from_secs(30);
    let r = executor::execute(&cfg).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    assert!(
        r.db_check_wait_ms.is_some_and(|ms| ms >= 500),
        "{}",
        r.to_json_line()
    );
    let _tx = release.await.expect("release");

    // Discovery needs pg_read_all_stats to see where the standbys are.
    let mut cfg = contract(url("migr", "migr-pw", &p.primary));
    cfg.identity.name = "m2".into();
    cfg.replica_discover = true;
    cfg.database_check_timeout = Duration::from_millis(300);
    let r = executor::execute(&cfg).await;
    assert_eq!(r.outcome, Outcome::Failed, "{}", r.to_json_line());
    let msg = message(&r);
    assert!(
        msg.contains("walsender pid")
            && msg.contains("pg_stat_replication hides its address")
            && msg.contains("GRANT pg_read_all_stats"),
        "{msg}"
    );
}
