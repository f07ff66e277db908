//! Lock safety beyond the tables a statement names (issue 10): tables PostgreSQL locks
//! implicitly, a lock left by a frozen executor, and a ledger shared by several roles. Real
//! PostgreSQL servers (see support/postgres.rs).

mod support;

use std::time::{Duration, Instant};

use phasegate::executor::{self, Config, Outcome, Phase, Report};
use support::apply;
use support::postgres::TestPostgres;

fn assert_outcome(r: &Report, want: Outcome) {
    assert_eq!(r.outcome, want, "report: {}", r.to_json_line());
}

fn contract(pg: &TestPostgres, sql: &str) -> Config {
    let mut c = Config::new(pg.url(), Phase::Contract, sql);
    c.identity.namespace = "shop".into();
    c.identity.name = "drop-legacy".into();
    c.database_check = false;
    c
}

/// A fresh server with `schema` applied, and a session on it.
async fn database(schema: &str) -> (TestPostgres, tokio_postgres::Client) {
    let pg = TestPostgres::start();
    let c = pg.client().await;
    c.batch_execute(schema).await.expect("schema");
    (pg, c)
}

/// A session inside an open transaction that ran `sql`: it holds what `sql` locked (and its
/// snapshot) until it commits, like a long application transaction.
async fn in_transaction(pg: &TestPostgres, sql: &str) -> tokio_postgres::Client {
    let c = pg.client().await;
    c.batch_execute(&format!("BEGIN; {sql}"))
        .await
        .unwrap_or_else(|e| panic!("BEGIN; {sql}: {e}"));
    c
}

async fn exists(c: &tokio_postgres::Client, table: &str) -> bool {
    c.query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .expect("regclass")
        .get(0)
}

/// `DROP TABLE legacy`, where legacy has a foreign key to users, takes ACCESS EXCLUSIVE on users
/// too (to drop the key's triggers there). While an old transaction reads users, the executor
/// must wait outside the lock queue, or every application query on users queues behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_table_waits_for_readers_of_the_referenced_table() {
    let (pg, c) = database(
        "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);
         INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 100) g;
         CREATE TABLE legacy (id bigint PRIMARY KEY, user_id bigint REFERENCES users (id));",
    )
    .await;
    let reader = in_transaction(&pg, "SELECT count(*) FROM users;").await;
    let cfg = contract(&pg, "DROP TABLE legacy");
    let run = tokio::spawn(async move { executor::execute(&cfg).await });

    // Let the executor look (and, without the fix, queue for users' lock).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let app = pg.client().await;
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        let q = tokio::time::timeout(
            Duration::from_secs(5),
            app.query_one("SELECT email FROM users WHERE id = 1", &[]),
        )
        .await;
        assert!(matches!(q, Ok(Ok(_))), "application query failed: {q:?}");
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !run.is_finished(),
        "the executor did not wait for the reader"
    );
    reader.batch_execute("COMMIT").await.expect("commit");
    let r = run.await.expect("join");
    assert_outcome(&r, Outcome::Applied);
    assert!(
        worst < Duration::from_millis(100),
        "an application query on users waited {worst:?} behind the executor: {}",
        r.to_json_line()
    );
    assert_eq!(r.lock_retries, 0, "{}", r.to_json_line());
    assert!(r.lock_wait_ms >= 600, "{}", r.to_json_line());
    assert!(!exists(&c, "legacy").await);
    eprintln!(
        "worst application query while the executor waited: {:.1} ms; {}",
        worst.as_secs_f64() * 1000.0,
        r.to_json_line()
    );
}

/// Each statement locks a table it does not name; PostgreSQL itself is the oracle (the
/// statement times out behind the reader when run by hand), and the executor must wait for
/// that reader outside the queue, naming the table, without ever attempting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_lock_targets_are_resolved_from_the_catalog() {
    let (pg, c) = database(
        "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);
         CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint CONSTRAINT orders_user_fk REFERENCES users (id), n int);
         CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER users_noop BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION noop();
         CREATE TABLE events (id bigint, at date NOT NULL) PARTITION BY RANGE (at);
         CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');",
    )
    .await;
    let cases = [
        ("DROP TRIGGER users_noop ON users", "users"),
        ("ALTER TABLE orders DROP COLUMN user_id", "users"),
        ("ALTER TABLE orders DROP CONSTRAINT orders_user_fk", "users"),
        ("ALTER TABLE events ADD COLUMN note text", "events_2026"),
        ("DROP TABLE events_2026", "events"),
    ];
    for (sql, held) in cases {
        let reader = in_transaction(
            &pg,
            &format!("LOCK TABLE ONLY {held} IN ACCESS SHARE MODE;"),
        )
        .await;
        let by_hand = c
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = '100ms'; {sql}; ROLLBACK"
            ))
            .await;
        let _ = c.batch_execute("ROLLBACK").await;
        assert_eq!(
            by_hand
                .as_ref()
                .err()
                .and_then(|e| e.code())
                .map(|s| s.code()),
            Some("55P03"),
            "PostgreSQL should lock {held} for {sql}: {by_hand:?}"
        );
        let mut cfg = contract(&pg, sql);
        cfg.lock_wait_timeout = Duration::from_millis(300);
        let r = executor::execute(&cfg).await;
        assert_outcome(&r, Outcome::Failed);
        let msg = r
            .error
            .as_ref()
            .map(|e| e.message.clone())
            .unwrap_or_default();
        assert!(
            msg.contains(&format!("AccessShareLock on public.{held},"))
                || msg.contains(&format!("AccessShareLock on {held},")),
            "{sql}: {msg}"
        );
        assert_eq!(
            r.attempts,
            0,
            "{sql}: queued for a lock: {}",
            r.to_json_line()
        );
        reader.batch_execute("COMMIT").await.expect("commit");
    }

    // A column that is in no foreign key does not make the executor wait for users' readers.
    let reader = in_transaction(&pg, "SELECT count(*) FROM users;").await;
    let mut cfg = contract(&pg, "ALTER TABLE orders DROP COLUMN n");
    cfg.lock_wait_timeout = Duration::from_millis(300);
    let r = executor::execute(&cfg).await;
    assert_outcome(&r, Outcome::Applied);
    assert_eq!(r.lock_wait_ms, 0, "{}", r.to_json_line());
    reader.batch_execute("COMMIT").await.expect("commit");
}

/// The executor froze (SIGSTOP: a node that hangs, a network that drops) right after its DDL
/// ran, inside the transaction, holding ACCESS EXCLUSIVE on users. The server must end the
/// session within idle_in_transaction_session_timeout (3 × lock_timeout, at least 1 s), so an
/// application query on users stalls at most that long; nothing is recorded, and a rerun
/// applies the phase once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_executor_holds_its_lock_for_a_bounded_time() {
    let (pg, c) = database(
        "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);
         INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 100) g;",
    )
    .await;
    let sql = "ALTER TABLE users ADD COLUMN verified boolean";
    let lock_timeout = Duration::from_millis(500);
    let bound = executor::idle_in_transaction_timeout(lock_timeout);
    let url = pg.url();
    let envs = [
        ("PHASEGATE_DATABASE_URL", url.as_str()),
        ("PHASEGATE_PHASE", "expand"),
        ("PHASEGATE_SQL", sql),
        ("PHASEGATE_MIGRATION_NAME", "frozen"),
        ("PHASEGATE_LOCK_TIMEOUT", "500ms"),
        ("PHASEGATE_TERMINATION_LOG", "/nonexistent-dir/x"),
        // Inside the transaction, after the DDL and the ledger row, before COMMIT.
        ("PHASEGATE_FAILPOINT", "pause-before-commit"),
    ];
    let run = apply::spawn(&envs);
    assert!(
        run.wait_for_stderr(
            |l| l.contains("failpoint pause-before-commit"),
            Duration::from_secs(20)
        )
        .await,
        "failpoint not reached: {}",
        run.stderr_so_far()
    );
    run.signal("STOP");
    let frozen = Instant::now();

    let app = pg.client().await;
    let q = tokio::time::timeout(
        Duration::from_secs(20),
        app.query_one("SELECT count(*) FROM users", &[]),
    )
    .await;
    let stall = frozen.elapsed();
    assert!(matches!(q, Ok(Ok(_))), "application query: {q:?}");
    eprintln!(
        "application query on users stalled {:.0} ms behind the frozen executor (bound {} ms)",
        stall.as_secs_f64() * 1000.0,
        bound.as_millis()
    );
    assert!(
        stall < bound + Duration::from_millis(500),
        "stalled {stall:?}, bound {bound:?}"
    );
    let recorded: i64 = c
        .query_one(
            "SELECT count(*) FROM phasegate.ledger WHERE name = 'frozen'",
            &[],
        )
        .await
        .expect("ledger")
        .get(0);
    assert_eq!(recorded, 0, "the phase was recorded");

    // The frozen process never comes back (the failpoint would sleep on): SIGKILL it.
    let _ = run.finish(Duration::ZERO).await;

    let mut again = Config::new(pg.url(), Phase::Expand, sql);
    again.identity.name = "frozen".into();
    let r = executor::execute(&again).await;
    assert_outcome(&r, Outcome::Applied);
    assert_eq!(r.statements, 1);
    assert_outcome(&executor::execute(&again).await, Outcome::AlreadyApplied);
}

/// Two migration roles share a database: the first creates the ledger (and owns it), the second
/// is only granted its use. The second must apply its phases without owning the ledger or
/// having CREATE on the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_role_uses_the_ledger_it_does_not_own() {
    let (pg, admin) = database(
        "CREATE ROLE shop_migrator LOGIN PASSWORD 'pw-shop';
         CREATE ROLE billing_migrator LOGIN PASSWORD 'pw-billing';
         GRANT CREATE ON DATABASE postgres TO shop_migrator;
         CREATE TABLE users (id bigint PRIMARY KEY);
         ALTER TABLE users OWNER TO shop_migrator;
         CREATE TABLE invoices (id bigint PRIMARY KEY);
         ALTER TABLE invoices OWNER TO billing_migrator;",
    )
    .await;
    let url =
        |role: &str, pw: &str| format!("postgres://{role}:{pw}@127.0.0.1:{}/postgres", pg.port());
    let phase = |url: String, name: &str, sql: &str| {
        let mut c = Config::new(url, Phase::Expand, sql);
        c.identity.namespace = name.into();
        c.identity.name = name.into();
        c
    };

    let shop = phase(
        url("shop_migrator", "pw-shop"),
        "shop",
        "ALTER TABLE users ADD COLUMN email text",
    );
    assert_outcome(&executor::execute(&shop).await, Outcome::Applied);
    // What the owner (or an admin) grants a second migration role.
    admin
        .batch_execute(
            "SET ROLE shop_migrator;
             GRANT USAGE ON SCHEMA phasegate TO billing_migrator;
             GRANT SELECT, INSERT, UPDATE ON phasegate.ledger TO billing_migrator;
             RESET ROLE;",
        )
        .await
        .expect("grants");

    let billing = phase(
        url("billing_migrator", "pw-billing"),
        "billing",
        "ALTER TABLE invoices ADD COLUMN total numeric",
    );
    let r = executor::execute(&billing).await;
    assert_outcome(&r, Outcome::Applied);
    assert_outcome(&executor::execute(&billing).await, Outcome::AlreadyApplied);
    assert_outcome(&executor::execute(&shop).await, Outcome::AlreadyApplied);
    let owner: String = admin
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE schemaname = 'phasegate' AND tablename = 'ledger'",
            &[],
        )
        .await
        .expect("owner")
        .get(0);
    assert_eq!(owner, "shop_migrator");
    let comment: Option<String> = admin
        .query_one(
            "SELECT obj_description('phasegate.ledger'::regclass, 'pg_class')",
            &[],
        )
        .await
        .expect("comment")
        .get(0);
    assert!(comment.is_some_and(|c| c.contains("Phasegate")));
}

/// Issue 10, item 4: the lock-aware wait ran before the database check, which can wait for
/// minutes; a reader that took the table meanwhile must be waited out again, not queued behind.
/// Reader A holds users, an old-version session blocks the check; A ends, reader B takes users,
/// the old session leaves: the executor must not enter the lock queue while B holds users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_looked_at_again_after_the_database_check_waited() {
    let (pg, c) = database(
        "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, legacy int);
         INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 100) g;",
    )
    .await;
    let reader_a = in_transaction(&pg, "SELECT count(*) FROM users;").await;
    let old = pg.client().await;
    old.batch_execute("SET application_name = 'shop-api@1.0.0'")
        .await
        .expect("old session");
    let url = pg.url();
    let envs = [
        ("PHASEGATE_DATABASE_URL", url.as_str()),
        ("PHASEGATE_PHASE", "contract"),
        ("PHASEGATE_SQL", "ALTER TABLE users DROP COLUMN legacy"),
        ("PHASEGATE_MIGRATION_NAMESPACE", "shop"),
        ("PHASEGATE_MIGRATION_NAME", "stale"),
        ("PHASEGATE_APP_VERSION", "2.0.0"),
        ("PHASEGATE_APPLICATION_NAMES", "shop-api"),
        // Long enough that queueing behind B would be plain to see.
        ("PHASEGATE_LOCK_TIMEOUT", "5s"),
        ("PHASEGATE_DATABASE_CHECK_TIMEOUT", "30s"),
        ("PHASEGATE_TERMINATION_LOG", "/nonexistent-dir/x"),
    ];
    let run = apply::spawn(&envs);
    assert!(
        run.wait_for_stderr(|l| l.contains("\"table-lock\""), Duration::from_secs(20))
            .await,
        "never waited for reader A: {}",
        run.stderr_so_far()
    );
    reader_a.batch_execute("COMMIT").await.expect("release A");
    assert!(
        run.wait_for_stderr(
            |l| l.contains("\"database-check\""),
            Duration::from_secs(20)
        )
        .await,
        "the old session never blocked the check: {}",
        run.stderr_so_far()
    );
    let reader_b = in_transaction(&pg, "SELECT count(*) FROM users;").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(old);

    // For 2 s while B holds users: no request of ours in the queue, application reads flow.
    let app = pg.client().await;
    let queued = "SELECT count(*) FROM pg_locks WHERE relation = 'users'::regclass AND NOT granted";
    let mut worst = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let n: i64 = c.query_one(queued, &[]).await.expect("locks").get(0);
        assert_eq!(
            n,
            0,
            "the executor queued for users behind reader B: {}",
            run.stderr_so_far()
        );
        let t = Instant::now();
        let q = tokio::time::timeout(
            Duration::from_secs(10),
            app.query_one("SELECT email FROM users WHERE id = 1", &[]),
        )
        .await;
        assert!(matches!(q, Ok(Ok(_))), "application query failed: {q:?}");
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        worst < Duration::from_millis(100),
        "an application query waited {worst:?}"
    );
    reader_b.batch_execute("COMMIT").await.expect("release B");
    let (f, _) = run.finish(Duration::from_secs(30)).await;
    assert_eq!(f.code, Some(0), "{}", f.output());
    let r = f.report();
    assert_outcome(r, Outcome::Applied);
    assert_eq!(r.lock_retries, 0, "{}", r.to_json_line());
    assert_eq!(r.attempts, 1, "{}", r.to_json_line());
    let gone: bool = c
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'users'::regclass AND attname = 'legacy' AND NOT attisdropped)",
            &[],
        )
        .await
        .expect("columns")
        .get(0);
    assert!(gone, "{}", r.to_json_line());
    eprintln!(
        "worst application query while B held users: {:.1} ms; {}",
        worst.as_secs_f64() * 1000.0,
        r.to_json_line()
    );
}

/// Issue 10, item 3: PostgreSQL cancels an ordinary autovacuum that blocks a lock request, so
/// the executor must not wait outside the queue for one (a slow autovacuum can take minutes).
/// A real autovacuum, slowed down by its cost delay, holds SHARE UPDATE EXCLUSIVE on `t`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_autovacuum_is_not_waited_for() {
    let (pg, c) = database("ALTER SYSTEM SET autovacuum_naptime = '1s'").await;
    c.batch_execute(
        "SELECT pg_reload_conf();
         CREATE TABLE t (id bigint PRIMARY KEY, pad text)
           WITH (autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0,
                 autovacuum_vacuum_insert_threshold = 0, autovacuum_vacuum_insert_scale_factor = 0,
                 autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1);
         INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g;
         DELETE FROM t WHERE id % 2 = 0;",
    )
    .await
    .expect("schema");
    let autovacuum = "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                       WHERE l.relation = 't'::regclass AND l.granted
                         AND a.backend_type = 'autovacuum worker'";
    let until = Instant::now() + Duration::from_secs(30);
    while c
        .query_one(autovacuum, &[])
        .await
        .expect("locks")
        .get::<_, i64>(0)
        == 0
    {
        assert!(Instant::now() < until, "no autovacuum of t started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = pg.url();
    let envs = [
        ("PHASEGATE_DATABASE_URL", url.as_str()),
        ("PHASEGATE_PHASE", "expand"),
        ("PHASEGATE_SQL", "ALTER TABLE t ADD COLUMN note text"),
        ("PHASEGATE_MIGRATION_NAME", "autovacuum"),
        // Longer than deadlock_timeout (1 s), after which PostgreSQL cancels the autovacuum.
        ("PHASEGATE_LOCK_TIMEOUT", "3s"),
        ("PHASEGATE_LOCK_WAIT_TIMEOUT", "5s"),
        ("PHASEGATE_TERMINATION_LOG", "/nonexistent-dir/x"),
    ];
    let t = Instant::now();
    let f = apply::run(&envs).await;
    let took = t.elapsed();
    assert_eq!(f.code, Some(0), "{}", f.output());
    let r = f.report();
    assert_outcome(r, Outcome::Applied);
    assert!(
        !f.stderr.contains("\"table-lock\""),
        "waited for the autovacuum: {}",
        f.output()
    );
    assert!(r.lock_wait_ms < 1000, "{}", r.to_json_line());
    let added: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'note')",
            &[],
        )
        .await
        .expect("columns")
        .get(0);
    assert!(added, "{}", r.to_json_line());
    eprintln!(
        "applied behind a running autovacuum in {:.2} s; {}",
        took.as_secs_f64(),
        r.to_json_line()
    );
}

/// Issue 10, item 3: without pg_read_all_stats other roles' sessions are opaque (their
/// transactions look infinitely old). The executor says so once, at start, in the report; a
/// role with the grant gets no warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_pg_read_all_stats_is_warned_once() {
    let (pg, c) = database(
        "CREATE ROLE migr LOGIN PASSWORD 'migr-pw';
         GRANT CREATE ON DATABASE postgres TO migr;
         CREATE TABLE users (id bigint PRIMARY KEY, legacy int);
         ALTER TABLE users OWNER TO migr;",
    )
    .await;
    let url = format!(
        "postgres://migr:migr-pw@127.0.0.1:{}/postgres?sslmode=disable",
        pg.port()
    );
    let mut cfg = Config::new(
        url.clone(),
        Phase::Expand,
        "ALTER TABLE users ADD COLUMN n int",
    );
    cfg.identity.name = "plain".into();
    let r = executor::execute(&cfg).await;
    assert_outcome(&r, Outcome::Applied);
    let w = r.db_check_warning.clone().unwrap_or_default();
    assert!(
        w.contains("role migr lacks pg_read_all_stats")
            && w.contains("GRANT pg_read_all_stats TO migr"),
        "{}",
        r.to_json_line()
    );

    // Contract with the check on: the check's own warning is not added to it.
    let mut cfg = Config::new(
        url.clone(),
        Phase::Contract,
        "ALTER TABLE users DROP COLUMN legacy",
    );
    cfg.identity.name = "plain".into();
    cfg.identity.app_version = "2.0.0".into();
    cfg.rollout_completed_at = Some(jiff::Timestamp::now());
    let r = executor::execute(&cfg).await;
    assert_outcome(&r, Outcome::Applied);
    assert_eq!(
        r.db_check_warning.as_deref(),
        Some(w.as_str()),
        "{}",
        r.to_json_line()
    );

    c.batch_execute("GRANT pg_read_all_stats TO migr")
        .await
        .expect("grant");
    let mut cfg = Config::new(url, Phase::Expand, "ALTER TABLE users ADD COLUMN m int");
    cfg.identity.name = "granted".into();
    let r = executor::execute(&cfg).await;
    assert_outcome(&r, Outcome::Applied);
    assert_eq!(r.db_check_warning, None, "{}", r.to_json_line());
}

/// Issue 10, item 2: PostgreSQL is the oracle for the lock modes. Each statement runs in a
/// transaction and `pg_locks` shows what it took on user tables: the executor must expect the
/// same mode on every table the statement names (not stronger: it would wait for readers it does
/// not conflict with), and at least that mode on every table it locks (named or resolved from
/// the catalog: no blind spot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_modes_match_what_postgresql_takes() {
    use phasegate::executor::locks;
    use phasegate::sql::{self, LockMode};
    let (_pg, c) = database(
        "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);
         CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint, n int, note text);
         ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;
         ALTER TABLE orders ADD CONSTRAINT orders_n_check CHECK (n > 0) NOT VALID;
         CREATE INDEX orders_n ON orders (n);
         CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER orders_noop BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION noop();
         CREATE TABLE events (id bigint, at date NOT NULL, user_id bigint REFERENCES users (id)) PARTITION BY RANGE (at);
         CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         CREATE TABLE events_other PARTITION OF events DEFAULT;
         CREATE TABLE events_2027 (id bigint, at date NOT NULL, user_id bigint);
         CREATE TABLE tmpl (a int);",
    )
    .await;
    let cases = [
        "ALTER TABLE orders VALIDATE CONSTRAINT orders_user_fk",
        "ALTER TABLE orders VALIDATE CONSTRAINT orders_n_check",
        "ALTER TABLE orders ADD CONSTRAINT fk2 FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID",
        "ALTER TABLE orders ADD CONSTRAINT fk3 FOREIGN KEY (user_id) REFERENCES users (id)",
        "ALTER TABLE orders ADD COLUMN owner bigint REFERENCES users (id)",
        "ALTER TABLE orders ALTER COLUMN n SET STATISTICS 500",
        "ALTER TABLE orders ALTER COLUMN n SET (n_distinct = 100)",
        "ALTER TABLE orders SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01)",
        "ALTER TABLE orders CLUSTER ON orders_pkey",
        "ALTER TABLE orders DISABLE TRIGGER orders_noop",
        "ALTER TABLE orders VALIDATE CONSTRAINT orders_n_check, ALTER COLUMN n SET STATISTICS 100",
        "ALTER TABLE orders VALIDATE CONSTRAINT orders_n_check, ADD COLUMN y int",
        "ALTER TABLE orders ADD COLUMN z int",
        "ALTER TABLE orders ALTER COLUMN n SET DEFAULT 1",
        "ALTER TABLE orders DROP CONSTRAINT orders_user_fk",
        "ALTER TABLE events ATTACH PARTITION events_2027 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')",
        "ALTER TABLE events DETACH PARTITION events_2026",
        "ALTER TABLE events ADD COLUMN note text",
        "CREATE INDEX orders_note ON orders (note)",
        "CREATE TRIGGER orders_noop2 BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION noop()",
        "CREATE TABLE invoices (id bigint, user_id bigint REFERENCES users (id), LIKE tmpl)",
        "CREATE TABLE events_2028 PARTITION OF events FOR VALUES FROM ('2028-01-01') TO ('2029-01-01')",
        "COMMENT ON TABLE orders IS 'orders'",
        "COMMENT ON COLUMN orders.n IS 'n'",
        "DROP INDEX orders_n",
        "TRUNCATE events",
        "TRUNCATE ONLY orders",
        "TRUNCATE users CASCADE",
        "DROP TABLE orders",
    ];
    let held_q = "SELECT n.nspname || '.' || r.relname, l.mode FROM pg_locks l
                    JOIN pg_class r ON r.oid = l.relation JOIN pg_namespace n ON n.oid = r.relnamespace
                   WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted
                     AND r.relkind IN ('r', 'p', 'f') AND n.nspname = 'public'";
    let mut checked = 0;
    for sql in cases {
        let stmts = sql::parse_phase(sql).expect("parses");
        let mut expected = locks::lock_targets(&stmts);
        let named: Vec<String> = expected
            .keys()
            .map(|t| format!("public.{}", t.name))
            .collect();
        locks::add_implicit_targets(&c, &stmts, &mut expected)
            .await
            .expect("implicit targets");
        let expected: std::collections::BTreeMap<String, LockMode> = expected
            .into_iter()
            .map(|(t, m)| {
                let schema = if t.schema.is_empty() {
                    "public".to_string()
                } else {
                    t.schema
                };
                (format!("{schema}.{}", t.name), m)
            })
            .collect();
        c.batch_execute(&format!("BEGIN; {sql}"))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let rows = c.query(held_q, &[]).await.expect("pg_locks");
        c.batch_execute("ROLLBACK").await.expect("rollback");
        let mut held: std::collections::BTreeMap<String, LockMode> = Default::default();
        for r in rows {
            let mode = LockMode::from_pg(r.get(1)).expect("mode");
            let e = held.entry(r.get(0)).or_insert(mode);
            *e = (*e).max(mode);
        }
        for (table, mode) in &held {
            let want = expected.get(table).copied();
            assert!(
                want.is_some_and(|w| w >= *mode),
                "{sql}: PostgreSQL took {mode:?} on {table}, the executor expected {want:?} (all: {expected:?})"
            );
            if named.contains(table) {
                assert_eq!(
                    want,
                    Some(*mode),
                    "{sql}: the executor expects {want:?} on {table}, PostgreSQL took {mode:?}"
                );
            }
            checked += 1;
        }
    }
    eprintln!(
        "{checked} table locks of {} statements matched",
        cases.len()
    );
}

/// Issue 10, item 2: `VALIDATE CONSTRAINT` takes SHARE UPDATE EXCLUSIVE (and, for a foreign
/// key, ROW SHARE on the referenced table), which readers do not conflict with; `ADD FOREIGN
/// KEY … NOT VALID` takes SHARE ROW EXCLUSIVE on both tables, which readers do not conflict
/// with either. Under a long reader of both tables both must run at once, without waiting.
/// Before, every ALTER TABLE counted as ACCESS EXCLUSIVE: the executor waited for the reader
/// and failed after PHASEGATE_LOCK_WAIT_TIMEOUT while blocking nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_constraint_proceeds_under_a_long_reader() {
    let (pg, c) = database(
        "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);
         INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 1000) g;
         CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint, n int);
         INSERT INTO orders SELECT g, g, g FROM generate_series(1, 1000) g;
         ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;
         ALTER TABLE orders ADD CONSTRAINT orders_n_check CHECK (n > 0) NOT VALID;",
    )
    .await;
    let reader = in_transaction(
        &pg,
        "SELECT count(*) FROM users; SELECT count(*) FROM orders;",
    )
    .await;
    // The reader is old (not a young transaction the executor would attempt past anyway).
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (name, sql) in [
        ("validate-fk", "ALTER TABLE orders VALIDATE CONSTRAINT orders_user_fk"),
        ("validate-check", "ALTER TABLE orders VALIDATE CONSTRAINT orders_n_check"),
        (
            "add-fk-not-valid",
            "ALTER TABLE orders ADD CONSTRAINT orders_user_fk2 FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID",
        ),
    ] {
        let mut cfg = contract(&pg, sql);
        cfg.identity.name = name.into();
        cfg.lock_wait_timeout = Duration::from_secs(2);
        cfg.lock_timeout = Duration::from_millis(500);
        let t = Instant::now();
        let r = executor::execute(&cfg).await;
        assert_outcome(&r, Outcome::Applied);
        assert_eq!(r.lock_wait_ms, 0, "{sql}: {}", r.to_json_line());
        assert_eq!((r.attempts, r.lock_retries), (1, 0), "{sql}: {}", r.to_json_line());
        eprintln!(
            "{sql}: applied in {:.0} ms under a reader of both tables",
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    let valid: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'orders'::regclass AND convalidated
               AND conname IN ('orders_user_fk', 'orders_n_check')",
            &[],
        )
        .await
        .expect("constraints")
        .get(0);
    assert_eq!(valid, 2, "both constraints validated");
    reader.batch_execute("COMMIT").await.expect("commit");
}

/// Issue 10, item 2, the other side: the executor still waits outside the queue for holders
/// whose mode does conflict. `VALIDATE CONSTRAINT` (SHARE UPDATE EXCLUSIVE) behind a transaction
/// holding SHARE UPDATE EXCLUSIVE (a manual ANALYZE), and `ADD FOREIGN KEY … NOT VALID` (SHARE
/// ROW EXCLUSIVE on users) behind a writer of users (ROW EXCLUSIVE): each waits, never enters
/// the queue, says what it needs, and applies once the holder is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_holder_is_still_waited_for() {
    let (pg, c) = database(
        "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL);
         INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 100) g;
         CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint, n int);
         INSERT INTO orders SELECT g, g, g FROM generate_series(1, 100) g;
         ALTER TABLE orders ADD CONSTRAINT orders_n_check CHECK (n > 0) NOT VALID;",
    )
    .await;
    let url = pg.url();
    let cases = [
        (
            "validate",
            "ANALYZE orders;",
            "ALTER TABLE orders VALIDATE CONSTRAINT orders_n_check",
            "orders",
            "holds ShareUpdateExclusiveLock on orders",
            "we need ShareUpdateExclusiveLock",
        ),
        (
            "add-fk",
            "INSERT INTO users VALUES (1000, 'new');",
            "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID",
            "users",
            "holds RowExclusiveLock on users",
            "we need ShareRowExclusiveLock",
        ),
    ];
    for (name, hold, sql, table, holds, needs) in cases {
        let holder = in_transaction(&pg, hold).await;
        let envs = [
            ("PHASEGATE_DATABASE_URL", url.as_str()),
            ("PHASEGATE_PHASE", "expand"),
            ("PHASEGATE_SQL", sql),
            ("PHASEGATE_MIGRATION_NAME", name),
            ("PHASEGATE_LOCK_TIMEOUT", "5s"),
            ("PHASEGATE_TERMINATION_LOG", "/nonexistent-dir/x"),
        ];
        let run = apply::spawn(&envs);
        assert!(
            run.wait_for_stderr(|l| l.contains("\"table-lock\""), Duration::from_secs(20))
                .await,
            "{sql}: never waited: {}",
            run.stderr_so_far()
        );
        // Waiting outside the queue: no request of ours is pending for a while.
        let queued = format!(
            "SELECT count(*) FROM pg_locks WHERE relation = '{table}'::regclass AND NOT granted"
        );
        for _ in 0..10 {
            let n: i64 = c
                .query_one(queued.as_str(), &[])
                .await
                .expect("locks")
                .get(0);
            assert_eq!(n, 0, "{sql}: queued: {}", run.stderr_so_far());
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        holder.batch_execute("COMMIT").await.expect("release");
        let (f, _) = run.finish(Duration::from_secs(30)).await;
        assert_eq!(f.code, Some(0), "{}", f.output());
        let r = f.report();
        assert_outcome(r, Outcome::Applied);
        assert_eq!((r.attempts, r.lock_retries), (1, 0), "{}", r.to_json_line());
        let waits = f.waits();
        assert_eq!(waits.len(), 1, "{}", f.stderr);
        assert_eq!(waits[0]["waiting"], "table-lock");
        let detail = waits[0]["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(holds) && detail.contains(needs),
            "{sql}: {detail}"
        );
    }
}

/// Issue 10, item 8b: the per-database advisory lock is held only while applying. A contract
/// waiting outside the lock queue for a long reader must not hold up another migration on the
/// same database (another namespace, another table). Before, the advisory lock was held through
/// all waiting: the second migration waited for it and failed after
/// PHASEGATE_ADVISORY_LOCK_TIMEOUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_migration_does_not_hold_up_others() {
    let (pg, c) = database(
        "CREATE TABLE users (id bigint PRIMARY KEY, legacy int);
         CREATE TABLE invoices (id bigint PRIMARY KEY);",
    )
    .await;
    let reader = in_transaction(&pg, "SELECT count(*) FROM users;").await;
    let mut waiting = contract(&pg, "ALTER TABLE users DROP COLUMN legacy");
    waiting.lock_wait_timeout = Duration::from_secs(30);
    let run = tokio::spawn(async move { executor::execute(&waiting).await });
    // Until the first run waits for the reader (its wait, not the advisory lock).
    let waiting_for_users = "SELECT count(*) FROM pg_stat_activity
                              WHERE query LIKE '%pg_locks%' AND pid <> pg_backend_pid()";
    let until = Instant::now() + Duration::from_secs(20);
    while c
        .query_one(waiting_for_users, &[])
        .await
        .expect("activity")
        .get::<_, i64>(0)
        == 0
    {
        assert!(Instant::now() < until, "the first run never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut other = Config::new(
        pg.url(),
        Phase::Expand,
        "ALTER TABLE invoices ADD COLUMN total numeric",
    );
    other.identity.namespace = "billing".into();
    other.identity.name = "add-total".into();
    other.advisory_lock_timeout = Duration::from_secs(1);
    let t = Instant::now();
    let r = executor::execute(&other).await;
    assert_outcome(&r, Outcome::Applied);
    assert!(
        !run.is_finished(),
        "the first run should still wait for the reader"
    );
    eprintln!(
        "another migration applied in {:.0} ms while the first waited; {}",
        t.elapsed().as_secs_f64() * 1000.0,
        r.to_json_line()
    );
    reader.batch_execute("COMMIT").await.expect("commit");
    let r = run.await.expect("join");
    assert_outcome(&r, Outcome::Applied);
}

/// With the advisory lock released while waiting, several executors of the same phase (a stale
/// Job and its retry) can wait side by side; each reads the ledger again under the lock right
/// before its attempt, so the phase still applies exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_waiting_side_by_side_apply_exactly_once() {
    let (pg, c) = database(
        "CREATE TABLE users (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text);",
    )
    .await;
    let reader = in_transaction(&pg, "SELECT count(*) FROM users;").await;
    let sql = "ALTER TABLE users ADD COLUMN a int;
               INSERT INTO users (email) VALUES ('once@example.com');
               CREATE INDEX CONCURRENTLY users_email ON users (email);
               INSERT INTO users (email) VALUES ('twice@example.com');";
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let mut cfg = Config::new(pg.url(), Phase::Expand, sql);
            cfg.identity.name = "side-by-side".into();
            tokio::spawn(async move { executor::execute(&cfg).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    reader.batch_execute("COMMIT").await.expect("commit");
    let mut outcomes = Vec::new();
    for r in runs {
        let r = r.await.expect("join");
        outcomes.push(format!("{:?}", r.outcome));
        assert!(r.outcome != Outcome::Failed, "{}", r.to_json_line());
    }
    outcomes.sort();
    let applied = outcomes.iter().filter(|o| *o == "Applied").count();
    assert!(applied >= 1, "{outcomes:?}");
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM users WHERE email IN ('once@example.com', 'twice@example.com')",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 2, "{outcomes:?}");
    let (status, done): (String, i32) = c
        .query_one(
            "SELECT status, statements_done FROM phasegate.ledger WHERE name = 'side-by-side'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .expect("ledger");
    assert_eq!((status.as_str(), done), ("applied", 4));
    eprintln!("outcomes: {outcomes:?}");
}

/// Issue 10, item 7: a `-- phasegate:commit` line ends the transaction, so a backfill after DDL
/// runs without the DDL's ACCESS EXCLUSIVE lock. Shown by a backfill that fails: the DDL before
/// the marker stays applied and recorded (1 of 2 statements), and a rerun resumes at the backfill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_marker_runs_the_backfill_in_its_own_transaction() {
    let (pg, c) = database(
        "CREATE TABLE users (id bigint PRIMARY KEY, fullname text);
         INSERT INTO users VALUES (1, 'Ada'), (2, NULL);",
    )
    .await;
    let failing = "ALTER TABLE users ADD COLUMN display_name text;
-- phasegate:commit
UPDATE users SET display_name = fullname WHERE display_name IS NULL AND 1 / (id - 2) IS NOT NULL;";
    let mut cfg = Config::new(pg.url(), Phase::Expand, failing);
    cfg.identity.name = "marker".into();
    let r = executor::execute(&cfg).await;
    assert_outcome(&r, Outcome::Failed);
    assert_eq!(r.statements, 1, "{}", r.to_json_line());
    let (status, done): (String, i32) = c
        .query_one(
            "SELECT status, statements_done FROM phasegate.ledger WHERE name = 'marker'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .expect("ledger");
    assert_eq!((status.as_str(), done), ("in_progress", 1));
    assert!(exists(&c, "users").await);
    let added: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'users'::regclass AND attname = 'display_name')",
            &[],
        )
        .await
        .expect("columns")
        .get(0);
    assert!(added, "the DDL before the marker was committed on its own");
    // The data is fixed; the same SQL resumes at the backfill.
    c.batch_execute("DELETE FROM users WHERE id = 2")
        .await
        .expect("fix");
    let r = executor::execute(&cfg).await;
    assert_outcome(&r, Outcome::Applied);
    assert_eq!(r.statements, 1, "{}", r.to_json_line());
    let name: Option<String> = c
        .query_one("SELECT display_name FROM users WHERE id = 1", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(name.as_deref(), Some("Ada"));
}

/// Sessions that each run transactions back to back on `users` (BEGIN, a read, `hold_ms` of
/// sleep, a little more for each further session so they do not fall into step, COMMIT),
/// starting one after another across one transaction's length, until `stop` is set.
fn short_transactions(
    pg: &TestPostgres,
    sessions: usize,
    hold_ms: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let n = sessions as u64;
    (0..n)
        .map(|i| {
            let url = pg.url();
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(hold_ms * i / n)).await;
                let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("connect");
                tokio::spawn(conn);
                let secs = (hold_ms + 7 * i) as f64 / 1000.0;
                let sql =
                    format!("BEGIN; SELECT count(*) FROM users; SELECT pg_sleep({secs}); COMMIT;");
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = c.batch_execute(&sql).await;
                }
            })
        })
        .collect()
}

/// Issue 10, item 10: under a steady stream of short transactions (here 10 sessions × 150 ms,
/// back to back; with 6, their drifting phases now and then all restarted within 30 ms under
/// load, and the "starved" run found its gap — about 1 run in 8 on PostgreSQL 17) some
/// transaction older than 30 ms always holds the table, so the executor
/// waited outside the queue until PHASEGATE_LOCK_WAIT_TIMEOUT and failed without ever
/// attempting. After PHASEGATE_LOCK_WAIT_ATTEMPT_AFTER with only transactions younger than
/// lock_timeout in the way it attempts anyway; the attempt costs them at most lock_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_short_transactions_does_not_starve_the_executor() {
    let (pg, _) =
        database("CREATE TABLE users (id bigint PRIMARY KEY); INSERT INTO users VALUES (1);").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = short_transactions(&pg, 10, 150, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Never attempting past them: starved until the wait limit.
    let mut cfg = contract(&pg, "ALTER TABLE users ADD COLUMN a int");
    cfg.identity.name = "starved".into();
    cfg.lock_timeout = Duration::from_secs(1);
    cfg.lock_wait_timeout = Duration::from_secs(4);
    cfg.lock_wait_attempt_after = Duration::ZERO;
    let starved = executor::execute(&cfg).await;

    // Attempting anyway after 1 s (at least lock_timeout).
    cfg.identity.name = "not-starved".into();
    cfg.lock_wait_attempt_after = Duration::from_secs(1);
    let t = Instant::now();
    let r = executor::execute(&cfg).await;
    let took = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in load {
        let _ = h.await;
    }
    assert_outcome(&starved, Outcome::Failed);
    assert_eq!(starved.attempts, 0, "{}", starved.to_json_line());
    assert_outcome(&r, Outcome::Applied);
    assert!(r.lock_wait_ms >= 900, "{}", r.to_json_line());
    eprintln!(
        "applied under a stream of short transactions in {:.2} s; {}",
        took.as_secs_f64(),
        r.to_json_line()
    );
}
