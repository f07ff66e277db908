//! `phasegate backfill` in tests: a table `items` whose counter `n` each batch increments, the
//! checkpoint row, and the real binary as a child process whose stderr is collected.
#![allow(dead_code)]

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phasegate::executor::backfill::BackfillConfig;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::postgres::TestPostgres;

pub const BIN: &str = env!("CARGO_BIN_EXE_phasegate");
/// No idempotency filter on purpose: a batch applied twice shows as a counter of 2.
pub const COUNTER_SQL: &str = "UPDATE items SET n = n + 1 WHERE id > $1 AND id <= $2";

pub async fn setup(pg: &TestPostgres, rows: i64) -> tokio_postgres::Client {
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

/// The same table in database `db` of `pg` (a tenant database).
pub async fn setup_db(pg: &TestPostgres, db: &str, rows: i64) -> tokio_postgres::Client {
    let c = pg.client_for_db(db).await;
    c.batch_execute(&format!(
        "CREATE TABLE items (id bigserial PRIMARY KEY, n integer NOT NULL DEFAULT 0);
         INSERT INTO items (n) SELECT 0 FROM generate_series(1, {rows});
         ANALYZE items;"
    ))
    .await
    .expect("setup");
    c
}

pub fn cfg(url: &str, epoch: &str) -> BackfillConfig {
    let mut c = BackfillConfig::new(url, "items", "id", COUNTER_SQL);
    c.namespace = "shop".into();
    c.name = "fill".into();
    c.uid = "uid-1".into();
    c.epoch = epoch.into();
    c
}

/// (min n, max n, rows with n = 1).
pub async fn counters(c: &tokio_postgres::Client) -> (i32, i32, i64) {
    let r = c
        .query_one(
            "SELECT min(n), max(n), count(*) FILTER (WHERE n = 1) FROM items",
            &[],
        )
        .await
        .expect("counters");
    (r.get(0), r.get(1), r.get(2))
}

/// (status, last_key, rows_done, batches, restarts) of the checkpoint of `shop/fill`.
pub async fn checkpoint(
    c: &tokio_postgres::Client,
) -> Option<(String, Option<i64>, i64, i64, i32)> {
    checkpoint_of(c, "fill").await
}

/// The same for the backfill of migration `shop/<name>`.
pub async fn checkpoint_of(
    c: &tokio_postgres::Client,
    name: &str,
) -> Option<(String, Option<i64>, i64, i64, i32)> {
    c.query_opt(
        "SELECT status, last_key, rows_done, batches, restarts FROM phasegate.backfill
          WHERE namespace = 'shop' AND name = $1",
        &[&name],
    )
    .await
    .ok()
    .flatten()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
}

pub struct Child {
    pub child: tokio::process::Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

pub fn spawn(url: &str, epoch: &str, extra: &[(&str, &str)]) -> Child {
    let mut child = tokio::process::Command::new(BIN)
        .arg("backfill")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PHASEGATE_DATABASE_URL", url)
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
    pub async fn wait_for(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self.stderr.lock().expect("lines").iter().any(|l| pred(l)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn log(&self) -> String {
        self.stderr.lock().expect("lines").join("\n")
    }
}
