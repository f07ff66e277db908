//! `phasegate backfill` against real PostgreSQL servers (15 by default; 17 with
//! `PHASEGATE_PG_BINDIR=$(hack/install-postgres17.sh)`): SIGKILL mid-backfill resumes from the
//! checkpoint with every row updated exactly once; throttling engages under lock waits.

mod support;

use std::time::{Duration, Instant};

use phasegate::executor::backfill::{self, BackfillConfig};
use phasegate::executor::Outcome;
use support::backfill::{checkpoint, counters, setup, COUNTER_SQL};
use support::postgres::TestPostgres;

fn cfg(pg: &TestPostgres, epoch: &str) -> BackfillConfig {
    support::backfill::cfg(&pg.url(), epoch)
}

fn spawn(pg: &TestPostgres, epoch: &str, extra: &[(&str, &str)]) -> support::backfill::Child {
    support::backfill::spawn(&pg.url(), epoch, extra)
}

#[tokio::test]
async fn sigkill_mid_backfill_resumes_from_the_checkpoint_and_updates_every_row_once() {
    let pg = TestPostgres::start();
    let db = setup(&pg, 20_000).await;
    // Small fixed batches with a pause: the kill lands mid-scan.
    let mut child = spawn(
        &pg,
        "epoch-1",
        &[
            ("PHASEGATE_BACKFILL_BATCH_SIZE", "200"),
            ("PHASEGATE_BACKFILL_MAX_BATCH_SIZE", "200"),
            ("PHASEGATE_BACKFILL_PAUSE", "20ms"),
        ],
    );
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((_, _, _, batches, _)) = checkpoint(&db).await {
            if batches >= 10 {
                break;
            }
        }
        assert!(Instant::now() < until, "no progress: {}", child.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.child.start_kill().expect("SIGKILL");
    let _ = child.child.wait().await;
    // What the checkpoint says is exactly what is applied: rows up to last_key once, none after.
    let (status, last_key, rows_done, batches, _) = checkpoint(&db).await.expect("checkpoint");
    assert_eq!(status, "running");
    let last_key = last_key.expect("last key");
    assert!(last_key < 20_000, "killed too late: {last_key}");
    let (min, max, ones) = counters(&db).await;
    assert_eq!((min, max), (0, 1));
    assert_eq!(ones, rows_done);
    assert_eq!(
        ones, last_key,
        "every row up to the checkpoint exactly once, none after"
    );
    assert!(child.log().contains("backfill progress"), "{}", child.log());

    // A second run resumes after the checkpoint and finishes: every row exactly once.
    let r = backfill::execute(&cfg(&pg, "epoch-1")).await;
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert!(r.statements as i64 > 0);
    assert!((r.statements as i64) < 20_000 / 1000 + 20_000, "{r:?}");
    assert_eq!(counters(&db).await, (1, 1, 20_000));
    let (status, last_key, rows_done, batches_after, restarts) =
        checkpoint(&db).await.expect("checkpoint");
    assert_eq!(
        (status.as_str(), last_key, rows_done, restarts),
        ("done", Some(20_000), 20_000, 0)
    );
    assert_eq!(batches_after, batches + r.statements as i64);

    // Done in this epoch: nothing more.
    let r = backfill::execute(&cfg(&pg, "epoch-1")).await;
    assert_eq!(r.outcome, Outcome::AlreadyApplied, "{r:?}");
    assert_eq!(counters(&db).await, (1, 1, 20_000));

    // A new rollout epoch (the rollout regressed and completed again): the scan restarts.
    let r = backfill::execute(&cfg(&pg, "epoch-2")).await;
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert_eq!(counters(&db).await.0, 2);
    assert_eq!(counters(&db).await.1, 2);
    let (status, _, rows_done, _, restarts) = checkpoint(&db).await.expect("checkpoint");
    assert_eq!((status.as_str(), rows_done, restarts), ("done", 20_000, 1));
}

#[tokio::test]
async fn rows_inserted_after_the_scan_began_are_not_chased_and_sparse_keys_work() {
    let pg = TestPostgres::start();
    let db = setup(&pg, 0).await;
    db.batch_execute(
        "INSERT INTO items (id, n) SELECT g * 7, 0 FROM generate_series(1, 3000) g;
         ALTER TABLE items ADD COLUMN filled boolean;",
    )
    .await
    .expect("sparse keys");
    let mut c = cfg(&pg, "e");
    c.sql = "UPDATE items SET n = n + 1, filled = true WHERE id > $1 AND id <= $2".into();
    c.batch_size = 100;
    let r = backfill::execute(&c).await;
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    let (min, max, ones) = counters(&db).await;
    assert_eq!((min, max, ones), (1, 1, 3000));
    // An empty table is done at once; a key type without a known smallest value is refused
    // before anything runs, and so is a composite key.
    db.batch_execute(
        "CREATE TABLE empty_t (id int PRIMARY KEY, v int); CREATE TABLE t_key (k boolean PRIMARY KEY)",
    )
    .await
    .expect("tables");
    let mut e = BackfillConfig::new(
        pg.url(),
        "empty_t",
        "id",
        "UPDATE empty_t SET v = 1 WHERE id > $1 AND id <= $2",
    );
    e.name = "empty".into();
    assert_eq!(backfill::execute(&e).await.outcome, Outcome::Applied);
    let mut t = BackfillConfig::new(
        pg.url(),
        "t_key",
        "k",
        "UPDATE t_key SET k = k WHERE k > $1 AND k <= $2",
    );
    t.name = "bool-key".into();
    let r = backfill::execute(&t).await;
    assert_eq!(r.outcome, Outcome::Failed);
    let msg = &r.error.as_ref().expect("error").message;
    assert!(msg.contains("boolean") && msg.contains("uuid"), "{r:?}");
    let mut t = BackfillConfig::new(pg.url(), "items", "id, n", COUNTER_SQL);
    t.name = "composite".into();
    let r = backfill::execute(&t).await;
    assert_eq!(r.outcome, Outcome::Failed);
    let msg = &r.error.as_ref().expect("error").message;
    assert!(msg.contains("composite"), "{r:?}");
}

/// A table `items` keyed by `id` of `key_type` (filled by `gen`), with the counter `n`.
async fn setup_keyed(
    pg: &TestPostgres,
    key_type: &str,
    gen: &str,
    rows: i64,
) -> tokio_postgres::Client {
    let c = pg.client().await;
    c.batch_execute(&format!(
        "CREATE TABLE items (id {key_type} PRIMARY KEY, n integer NOT NULL DEFAULT 0);
         INSERT INTO items (id) SELECT {gen} FROM generate_series(1, {rows}) g;
         ANALYZE items;"
    ))
    .await
    .expect("setup");
    c
}

/// (status, last_key_text, rows_done, keys_done, batches) of a checkpoint over a non-integer key.
async fn text_checkpoint(
    c: &tokio_postgres::Client,
    name: &str,
) -> Option<(String, Option<String>, i64, i64, i64)> {
    c.query_opt(
        "SELECT status, last_key_text, rows_done, keys_done, batches FROM phasegate.backfill
          WHERE namespace = 'shop' AND name = $1",
        &[&name],
    )
    .await
    .ok()
    .flatten()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
}

#[tokio::test]
async fn uuid_key_sigkill_mid_backfill_resumes_and_updates_every_row_once() {
    let pg = TestPostgres::start();
    let db = setup_keyed(&pg, "uuid", "gen_random_uuid()", 20_000).await;
    let mut child = spawn(
        &pg,
        "epoch-1",
        &[
            ("PHASEGATE_BACKFILL_BATCH_SIZE", "200"),
            ("PHASEGATE_BACKFILL_MAX_BATCH_SIZE", "200"),
            ("PHASEGATE_BACKFILL_PAUSE", "20ms"),
        ],
    );
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((_, _, _, _, batches)) = text_checkpoint(&db, "fill").await {
            if batches >= 10 {
                break;
            }
        }
        assert!(Instant::now() < until, "no progress: {}", child.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.child.start_kill().expect("SIGKILL");
    let _ = child.child.wait().await;
    let (status, last_key, rows_done, keys_done, batches) =
        text_checkpoint(&db, "fill").await.expect("checkpoint");
    assert_eq!(status, "running");
    let last_key = last_key.expect("last key");
    // Exactly the keys up to the checkpoint (in uuid order) are applied, once; none after.
    let r = db
        .query_one(
            "SELECT count(*) FILTER (WHERE id <= $1::text::uuid AND n = 1),
                    count(*) FILTER (WHERE id <= $1::text::uuid),
                    count(*) FILTER (WHERE id > $1::text::uuid AND n <> 0)
               FROM items",
            &[&last_key],
        )
        .await
        .expect("applied");
    let (ones_before, before, after): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
    assert_eq!((ones_before, before, after), (rows_done, keys_done, 0));
    assert_eq!(rows_done, keys_done);
    assert!(keys_done < 20_000, "killed too late");
    assert!(batches >= 10);
    assert!(child.log().contains("backfill progress"), "{}", child.log());

    let r = backfill::execute(&cfg(&pg, "epoch-1")).await;
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert_eq!(counters(&db).await, (1, 1, 20_000));
    let (status, _, rows_done, keys_done, _) =
        text_checkpoint(&db, "fill").await.expect("checkpoint");
    assert_eq!(
        (status.as_str(), rows_done, keys_done),
        ("done", 20_000, 20_000)
    );
    let r = backfill::execute(&cfg(&pg, "epoch-1")).await;
    assert_eq!(r.outcome, Outcome::AlreadyApplied, "{r:?}");
    // A new epoch walks again from the first key.
    let r = backfill::execute(&cfg(&pg, "epoch-2")).await;
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert_eq!(counters(&db).await, (2, 2, 0));
}

#[tokio::test]
async fn text_and_timestamp_keys_walk_in_the_columns_order_exactly_once() {
    let pg = TestPostgres::start();
    // Mixed case, digits, accents and spaces: the column's collation orders them, not bytes.
    let db = setup_keyed(
        &pg,
        "text",
        "(ARRAY['a','B','é','Z ',' z','10','9'])[1 + g % 7] || '-' || g",
        3_000,
    )
    .await;
    let mut c = cfg(&pg, "e");
    c.batch_size = 100;
    c.max_batch_size = 100;
    // Never shrink on a slow machine: exactly 30 batches of 100 keys.
    c.target_batch_duration = Duration::from_secs(60);
    let r = backfill::execute(&c).await;
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert_eq!(counters(&db).await, (1, 1, 3_000));
    assert_eq!(r.statements, 30, "{r:?}");
    let (status, _, rows_done, keys_done, _) = text_checkpoint(&db, "fill").await.expect("cp");
    assert_eq!(
        (status.as_str(), rows_done, keys_done),
        ("done", 3_000, 3_000)
    );

    // timestamptz, whatever the server's TimeZone: the bounds round-trip exactly.
    db.batch_execute(
        "ALTER DATABASE postgres SET TimeZone = 'America/St_Johns';
         CREATE TABLE events (at timestamptz PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO events (at) SELECT timestamptz '2024-03-10 01:00:00.123456+00' + g * interval '1.000001 s'
           FROM generate_series(1, 2000) g;",
    )
    .await
    .expect("events");
    let mut e = BackfillConfig::new(
        pg.url(),
        "events",
        "at",
        "UPDATE events SET n = n + 1 WHERE at > $1 AND at <= $2",
    );
    e.namespace = "shop".into();
    e.name = "events".into();
    e.batch_size = 150;
    let r = backfill::execute(&e).await;
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    let r = db
        .query_one("SELECT min(n), max(n) FROM events", &[])
        .await
        .expect("events counters");
    assert_eq!((r.get::<_, i32>(0), r.get::<_, i32>(1)), (1, 1));

    // A key equal to the type's smallest value cannot be walked after: refused, nothing done.
    db.batch_execute("CREATE TABLE odd (k text PRIMARY KEY, n int NOT NULL DEFAULT 0); INSERT INTO odd (k) VALUES (''), ('a')")
        .await
        .expect("odd");
    let mut o = BackfillConfig::new(
        pg.url(),
        "odd",
        "k",
        "UPDATE odd SET n = n + 1 WHERE k > $1 AND k <= $2",
    );
    o.name = "odd".into();
    let r = backfill::execute(&o).await;
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert!(
        r.error
            .as_ref()
            .expect("error")
            .message
            .contains("smallest"),
        "{r:?}"
    );
}

/// The checkpoint table as executors before text keys created it.
const OLD_SCHEMA_SQL: &str = "
CREATE SCHEMA IF NOT EXISTS phasegate;
CREATE TABLE phasegate.backfill (
    namespace text NOT NULL, name text NOT NULL, uid text NOT NULL DEFAULT '',
    checksum text NOT NULL, epoch text NOT NULL,
    status text NOT NULL CHECK (status IN ('running', 'done')),
    min_key bigint, end_key bigint, last_key bigint,
    rows_done bigint NOT NULL DEFAULT 0, batches bigint NOT NULL DEFAULT 0,
    restarts integer NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (namespace, name)
);";

#[tokio::test]
async fn an_integer_checkpoint_of_the_previous_version_resumes_where_it_stopped() {
    let pg = TestPostgres::start();
    let db = setup(&pg, 5_000).await;
    // The previous executor committed batches up to key 2000, then died.
    db.batch_execute(OLD_SCHEMA_SQL).await.expect("old schema");
    let c = cfg(&pg, "e");
    db.execute(
        "INSERT INTO phasegate.backfill
            (namespace, name, uid, checksum, epoch, status, min_key, end_key, last_key, rows_done, batches)
         VALUES ('shop', 'fill', 'uid-1', $1, 'e', 'running', 0, 5000, 2000, 2000, 20)",
        &[&c.checksum()],
    )
    .await
    .expect("old checkpoint");
    db.batch_execute("UPDATE items SET n = 1 WHERE id <= 2000")
        .await
        .expect("applied part");
    let r = backfill::execute(&c).await;
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert_eq!(
        counters(&db).await,
        (1, 1, 5_000),
        "no row twice, none left"
    );
    let (status, last_key, rows_done, batches, restarts) =
        checkpoint(&db).await.expect("checkpoint");
    assert_eq!(
        (status.as_str(), last_key, rows_done, restarts),
        ("done", Some(5_000), 5_000, 0)
    );
    assert!(batches > 20);
    // An integer key leaves the old table as it was (an older executor keeps working on it).
    let cols: i64 = db
        .query_one(
            "SELECT count(*) FROM information_schema.columns
              WHERE table_schema = 'phasegate' AND table_name = 'backfill'",
            &[],
        )
        .await
        .expect("columns")
        .get(0);
    assert_eq!(cols, 15);
    // A text key on the same database adds what it needs to the old table.
    db.batch_execute(
        "CREATE TABLE tags (name text PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO tags (name) SELECT 'tag' || g FROM generate_series(1, 500) g;",
    )
    .await
    .expect("tags");
    let mut t = BackfillConfig::new(
        pg.url(),
        "tags",
        "name",
        "UPDATE tags SET n = n + 1 WHERE name > $1 AND name <= $2",
    );
    t.namespace = "shop".into();
    t.name = "tags".into();
    t.batch_size = 64;
    let r = backfill::execute(&t).await;
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    let (min, max): (i32, i32) = {
        let r = db
            .query_one("SELECT min(n), max(n) FROM tags", &[])
            .await
            .expect("tags");
        (r.get(0), r.get(1))
    };
    assert_eq!((min, max), (1, 1));
}

#[tokio::test]
async fn throttles_under_lock_waits_and_lock_timeouts_then_finishes() {
    let pg = TestPostgres::start();
    let db = setup(&pg, 5_000).await;
    // 1. A session waits for a lock on the table (queued behind an older reader): the
    //    backfill lets it go first and does not advance.
    let reader = pg.client().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM items;")
        .await
        .expect("reader");
    let ddl = pg.client().await;
    let ddl_task = tokio::spawn(async move {
        ddl.batch_execute(
            "BEGIN; SET lock_timeout = '60s'; LOCK TABLE items IN ACCESS EXCLUSIVE MODE; COMMIT;",
        )
        .await
    });
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE relation = 'items'::regclass AND NOT granted",
                &[],
            )
            .await
            .expect("pg_locks")
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < until, "the DDL never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let child = spawn(
        &pg,
        "e",
        &[
            ("PHASEGATE_BACKFILL_BATCH_SIZE", "500"),
            ("PHASEGATE_BACKFILL_LOCK_TIMEOUT", "100ms"),
        ],
    );
    assert!(
        child
            .wait_for(
                |l| l.contains("throttled") && l.contains("wait for a lock on the table"),
                Duration::from_secs(30)
            )
            .await,
        "no throttle line: {}",
        child.log()
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let rows_done = checkpoint(&db).await.map_or(0, |c| c.2);
    assert_eq!(rows_done, 0, "the backfill advanced while a session waited");
    // 2. The reader ends, the DDL runs; then a lock holder makes batches time out.
    reader.batch_execute("COMMIT").await.expect("commit");
    ddl_task.await.expect("join").expect("ddl");
    let holder = pg.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE items IN SHARE MODE;")
        .await
        .expect("share lock");
    assert!(
        child
            .wait_for(|l| l.contains("lock timeout"), Duration::from_secs(30))
            .await,
        "no lock timeout line: {}",
        child.log()
    );
    let held = checkpoint(&db).await.map_or(0, |c| c.2);
    holder.batch_execute("COMMIT").await.expect("release");
    let mut child = child;
    let status = tokio::time::timeout(Duration::from_secs(60), child.child.wait())
        .await
        .expect("backfill finishes")
        .expect("wait");
    assert!(status.success(), "{}", child.log());
    assert_eq!(counters(&db).await, (1, 1, 5_000));
    let (status, _, rows_done, _, _) = checkpoint(&db).await.expect("checkpoint");
    assert_eq!((status.as_str(), rows_done), ("done", 5_000));
    assert!(held < 5_000);
    let progress = phasegate::protocol::log::progress(&child.log()).expect("progress line");
    assert_eq!(progress.rows_done, 5_000);
    assert_eq!(progress.key_range_done_permille, 1000);
}

#[tokio::test]
async fn sigterm_stops_between_batches_and_reports_it() {
    let pg = TestPostgres::start();
    let db = setup(&pg, 20_000).await;
    let mut child = spawn(
        &pg,
        "e",
        &[
            ("PHASEGATE_BACKFILL_BATCH_SIZE", "100"),
            ("PHASEGATE_BACKFILL_MAX_BATCH_SIZE", "100"),
            ("PHASEGATE_BACKFILL_PAUSE", "20ms"),
        ],
    );
    assert!(
        child
            .wait_for(|l| l.contains("backfill progress"), Duration::from_secs(30))
            .await
    );
    let pid = child.child.id().expect("pid");
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill")
        .success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(status.code(), Some(143), "{}", child.log());
    let (st, last_key, rows_done, _, _) = checkpoint(&db).await.expect("checkpoint");
    assert_eq!(st, "running");
    let (_, max, ones) = counters(&db).await;
    assert_eq!(max, 1);
    assert_eq!((ones, Some(ones)), (rows_done, last_key));
}
