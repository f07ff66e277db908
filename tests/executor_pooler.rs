//! The executor through a real PgBouncer (Debian's package; see support/pgbouncer.rs) in front
//! of a throwaway PostgreSQL, with nothing but the pooled URL: in transaction and in session
//! pooling, executors of one phase at once each either apply it once or find it applied, and
//! nothing they leave on a pooled server connection holds up a later migration.

mod support;

use std::time::Duration;

use phasegate::executor::{self, Config, Outcome, Phase, Report};
use support::pgbouncer::{advisory_locks, PoolMode, TestPgBouncer};
use support::postgres::TestPostgres;

/// Trials of two executors of one phase at once.
const TRIALS: usize = 6;

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

fn cfg(url: &str, name: &str, sql: &str) -> Config {
    let mut c = Config::new(url.to_string(), Phase::Expand, sql);
    c.identity.namespace = "shop".into();
    c.identity.name = name.into();
    c.identity.uid = format!("uid-{name}");
    c.identity.app_version = "2.0.0".into();
    // A lock left behind would make a run wait this long, then fail: short, so the test says so.
    c.advisory_lock_timeout = Duration::from_secs(10);
    c
}

fn describe(r: &Report) -> String {
    r.to_json_line()
}

/// Two executors of each of [`TRIALS`] phases at once through `url`; every run applies or
/// finds the phase applied, each statement is applied once (by one run, or for a phase of
/// several steps possibly split between the two), and the ledger and the schema agree.
async fn race_phases(direct: &tokio_postgres::Client, url: &str, sql_of: impl Fn(usize) -> String) {
    let mut failures = Vec::new();
    for trial in 0..TRIALS {
        let name = format!("m{trial}");
        let sql = sql_of(trial);
        let (a, b) = (cfg(url, &name, &sql), cfg(url, &name, &sql));
        let (ra, rb) = tokio::join!(executor::execute(&a), executor::execute(&b));
        let mut outcomes = vec![ra.outcome, rb.outcome];
        outcomes.sort_by_key(|o| format!("{o:?}"));
        // A phase of several steps (a statement outside a transaction block between
        // transactional ones) may be finished by both runs between them, each step once:
        // then both say applied and their statement counts add up to the phase's.
        let steps = sql.matches(';').count();
        let shared = outcomes == vec![Outcome::Applied, Outcome::Applied]
            && ra.statements > 0
            && rb.statements > 0
            && ra.statements + rb.statements == steps;
        if outcomes != vec![Outcome::AlreadyApplied, Outcome::Applied] && !shared {
            failures.push(format!(
                "trial {trial}: {} | {}",
                describe(&ra),
                describe(&rb)
            ));
            continue;
        }
        let applied: i64 = direct
            .query_one(
                "SELECT count(*) FROM phasegate.ledger WHERE name = $1 AND status = 'applied' AND statements_done = statements_total",
                &[&name],
            )
            .await
            .expect("ledger")
            .get(0);
        assert_eq!(
            applied, 1,
            "trial {trial}: the ledger records the phase applied"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {TRIALS} trials failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// After the races: no advisory lock is left on any server connection, and a later migration
/// through the pooler applies without waiting for one.
async fn nothing_left_behind(direct: &tokio_postgres::Client, url: &str) {
    let left = advisory_locks(direct).await;
    assert_eq!(left, 0, "advisory locks left on pooled server connections");
    let mut later = cfg(url, "later", "ALTER TABLE users ADD COLUMN later int");
    later.advisory_lock_timeout = Duration::from_secs(2);
    let r = executor::execute(&later).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", describe(&r));
    assert_eq!(
        r.lock_wait_ms,
        0,
        "the later migration waited: {}",
        describe(&r)
    );
}

/// Server connections: in session pooling one per client (two executors, two each).
fn pool_size(mode: PoolMode) -> u32 {
    match mode {
        PoolMode::Session => 4,
        PoolMode::Transaction => 3,
    }
}

async fn transactional_phases_race(mode: PoolMode) {
    let pg = TestPostgres::start();
    let direct = setup(&pg).await;
    // Each executor uses two connections (statements, and the advisory lock's transaction):
    // in transaction pooling four clients share three server connections.
    let pooler = TestPgBouncer::start(&pg, mode, pool_size(mode));
    race_phases(&direct, &pooler.url(), |t| {
        format!(
            "ALTER TABLE users ADD COLUMN c{t} int;\nCREATE INDEX users_c{t}_idx ON users (c{t});"
        )
    })
    .await;
    nothing_left_behind(&direct, &pooler.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_executors_of_one_phase_through_transaction_pooling() {
    transactional_phases_race(PoolMode::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_executors_of_one_phase_through_session_pooling() {
    transactional_phases_race(PoolMode::Session).await;
}

/// A phase with a statement that runs outside a transaction block (CREATE INDEX CONCURRENTLY)
/// between transactional ones, through transaction pooling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_index_phases_through_transaction_pooling() {
    let pg = TestPostgres::start();
    let direct = setup(&pg).await;
    let pooler = TestPgBouncer::start(&pg, PoolMode::Transaction, pool_size(PoolMode::Transaction));
    race_phases(&direct, &pooler.url(), |t| {
        format!(
            "ALTER TABLE users ADD COLUMN d{t} int;\nCREATE INDEX CONCURRENTLY users_d{t}_idx ON users (d{t});\nCOMMENT ON COLUMN users.d{t} IS 'd';"
        )
    })
    .await;
    let invalid: i64 = direct
        .query_one("SELECT count(*) FROM pg_index WHERE NOT indisvalid", &[])
        .await
        .expect("pg_index")
        .get(0);
    assert_eq!(invalid, 0, "no invalid index is left");
    nothing_left_behind(&direct, &pooler.url()).await;
}

/// The executor's settings stay in its own transactions: an application client that gets the
/// executor's pooled server connection afterwards sees the server's defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_settings_leak_to_the_next_client_of_a_pooled_connection() {
    let pg = TestPostgres::start();
    let _direct = setup(&pg).await;
    // Two server connections, the executor's two: application clients get them afterwards.
    let pooler = TestPgBouncer::start(&pg, PoolMode::Transaction, 2);
    let sql =
        "ALTER TABLE users ADD COLUMN x int;\nCREATE INDEX CONCURRENTLY users_x_idx ON users (x);";
    let r = executor::execute(&cfg(&pooler.url(), "settings", sql)).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", describe(&r));
    // Two application transactions open at once: one on each server connection.
    pooler.assert_no_settings_left().await;
}

/// A phase of transactional statements needs one server connection, not two: it takes the
/// advisory lock inside its own transactions (only a statement outside a transaction block
/// opens the guard). Through transaction pooling with a pool of one, a run that held the lock
/// on a second connection would wait for a server connection its own guard holds, until
/// PgBouncer's `query_wait_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_phase_needs_one_server_connection() {
    use support::pgbouncer::Options;
    let pg = TestPostgres::start();
    let direct = setup(&pg).await;
    let opts = Options {
        extra: "query_wait_timeout = 5\n".into(),
        ..Options::new(PoolMode::Transaction, 1)
    };
    let pooler = TestPgBouncer::start_with(&pg, &opts);
    let sql = "ALTER TABLE users ADD COLUMN one int;\nCREATE INDEX users_one_idx ON users (one);";
    let run = cfg(&pooler.url(), "one", sql);
    let r = executor::execute(&run).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", describe(&r));
    let again = executor::execute(&run).await;
    assert_eq!(
        again.outcome,
        Outcome::AlreadyApplied,
        "{}",
        describe(&again)
    );
    assert_eq!(
        advisory_locks(&direct).await,
        0,
        "advisory locks left behind"
    );
}
