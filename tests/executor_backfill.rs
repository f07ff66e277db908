//! `phasegate backfill` against real PostgreSQL servers (15 by default; 17 with
//! `PHASEGATE_PG_BINDIR=$(hack/install-postgres17.sh)`): SIGKILL mid-backfill resumes from the
//! checkpoint with every row updated exactly once; throttling engages under lock waits.

mod support;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phasegate::executor::backfill::{self, BackfillConfig};
use phasegate::executor::Outcome;
use support::postgres::TestPostgres;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_phasegate");
/// No idempotency filter on purpose: a batch applied twice shows as a counter of 2.
const COUNTER_SQL: &str = "UPDATE items SET n = n + 1 WHERE id > $1 AND id <= $2";

async fn setup(pg: &TestPostgres, rows: i64) -> tokio_postgres::Client {
    let c = pg.client().await;
    c.batch_execute(&format!(
        "CREATE TABLE items (id bigserial PRIMARY KEY, n integer NOT NULL DEFAULT 0);
         INSERT INTO items (n) SELECT 0 FROM generate_series(1, {rows});
         ANALYZE items;"
    ))
    .await
    .expect("setup");
    c
}

fn cfg(pg: &TestPostgres, epoch: &str) -> BackfillConfig {
    let mut c = BackfillConfig::new(pg.url(), "items", "id", COUNTER_SQL);
    c.namespace = "shop".into();
    c.name = "fill".into();
    c.uid = "uid-1".into();
    c.epoch = epoch.into();
    c
}

/// (min n, max n, rows with n = 1).
async fn counters(c: &tokio_postgres::Client) -> (i32, i32, i64) {
    let r = c
        .query_one(
            "SELECT min(n), max(n), count(*) FILTER (WHERE n = 1) FROM items",
            &[],
        )
        .await
        .expect("counters");
    (r.get(0), r.get(1), r.get(2))
}

/// (status, last_key, rows_done, batches, restarts) of the checkpoint.
async fn checkpoint(c: &tokio_postgres::Client) -> Option<(String, Option<i64>, i64, i64, i32)> {
    c.query_opt(
        "SELECT status, last_key, rows_done, batches, restarts FROM phasegate.backfill
          WHERE namespace = 'shop' AND name = 'fill'",
        &[],
    )
    .await
    .ok()
    .flatten()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
}

struct Child {
    child: tokio::process::Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn spawn(pg: &TestPostgres, epoch: &str, extra: &[(&str, &str)]) -> Child {
    let mut child = tokio::process::Command::new(BIN)
        .arg("backfill")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PHASEGATE_DATABASE_URL", pg.url())
        .env("PHASEGATE_BACKFILL_TABLE", "items")
        .env("PHASEGATE_BACKFILL_KEY", "id")
        .env("PHASEGATE_BACKFILL_SQL", COUNTER_SQL)
        .env("PHASEGATE_BACKFILL_EPOCH", epoch)
        .env("PHASEGATE_MIGRATION_NAMESPACE", "shop")
        .env("PHASEGATE_MIGRATION_NAME", "fill")
        .env("PHASEGATE_MIGRATION_UID", "uid-1")
        .env("PHASEGATE_TERMINATION_LOG", "/nonexistent-dir/x")
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn phasegate backfill");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let sink = stderr.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            sink.lock().expect("lines").push(l);
        }
    });
    Child { child, stderr }
}

impl Child {
    async fn wait_for(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self.stderr.lock().expect("lines").iter().any(|l| pred(l)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    fn log(&self) -> String {
        self.stderr.lock().expect("lines").join("\n")
    }
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
    // An empty table is done at once; a non-integer key is refused before anything runs.
    db.batch_execute(
        "CREATE TABLE empty_t (id int PRIMARY KEY, v int); CREATE TABLE t_key (k text PRIMARY KEY)",
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
    t.name = "text-key".into();
    let r = backfill::execute(&t).await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert!(
        r.error.as_ref().unwrap().message.contains("integer key"),
        "{r:?}"
    );
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
    let progress = backfill::progress(&child.log()).expect("progress line");
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
