//! `phasegate backfill` through a real PgBouncer (Debian's package; see support/pgbouncer.rs)
//! in front of a throwaway PostgreSQL, with nothing but the pooled URL, in transaction and in
//! session pooling: a run killed with SIGKILL mid-scan resumes with every row filled exactly
//! once, two runs of one backfill at once neither fill a row twice nor deadlock, and nothing
//! they leave on a pooled server connection (an advisory lock, a setting) holds up or changes
//! what runs there next.

mod support;

use std::time::{Duration, Instant};

use phasegate::executor::backfill::{self, BackfillConfig};
use phasegate::executor::{self, Config, Outcome, Phase};
use support::backfill::{checkpoint, checkpoint_of, counters, setup, spawn};
use support::pgbouncer::{advisory_locks, PoolMode, TestPgBouncer};
use support::postgres::TestPostgres;

const ROWS: i64 = 20_000;

/// Small fixed batches: the kill lands mid-scan, and two runs at once interleave.
fn small_batches(mut c: BackfillConfig) -> BackfillConfig {
    c.batch_size = 200;
    c.max_batch_size = 200;
    c.pause = Duration::from_millis(5);
    c
}

/// Through the pooler: no advisory lock is left on any server connection, the executor's
/// settings do not reach the next client of a server connection, and a later migration and a
/// later backfill run without waiting.
async fn nothing_left_behind(direct: &tokio_postgres::Client, pooler: &TestPgBouncer) {
    let left = advisory_locks(direct).await;
    assert_eq!(left, 0, "advisory locks left on pooled server connections");
    pooler.assert_no_settings_left().await;
    let mut later = Config::new(
        pooler.url(),
        Phase::Expand,
        "ALTER TABLE items ADD COLUMN x int",
    );
    later.identity.name = "later".into();
    later.advisory_lock_timeout = Duration::from_secs(5);
    let r = executor::execute(&later).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.to_json_line());
    assert_eq!(r.lock_wait_ms, 0, "{}", r.to_json_line());
    // Another migration's backfill (its own advisory key) does not wait either.
    let mut other = backfill::BackfillConfig::new(
        pooler.url(),
        "items",
        "id",
        "UPDATE items SET x = 1 WHERE id > $1 AND id <= $2",
    );
    other.name = "other".into();
    other.batch_size = 50_000;
    let start = Instant::now();
    let r = backfill::execute(&other).await;
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(10), "{r:?}");
}

/// SIGKILL of the real binary mid-scan through the pooler, then a run to the end: the
/// checkpoint matches what is applied at the kill, and every row is filled exactly once.
async fn sigkill_and_resume(mode: PoolMode) {
    let pg = TestPostgres::start();
    let db = setup(&pg, ROWS).await;
    let pooler = TestPgBouncer::start_round_robin(&pg, mode, 2);
    let url = pooler.url();
    let mut child = spawn(
        &url,
        "epoch-1",
        &[
            ("PHASEGATE_BACKFILL_BATCH_SIZE", "200"),
            ("PHASEGATE_BACKFILL_MAX_BATCH_SIZE", "200"),
            ("PHASEGATE_BACKFILL_PAUSE", "20ms"),
        ],
    );
    let until = Instant::now() + Duration::from_secs(60);
    while checkpoint(&db).await.is_none_or(|c| c.3 < 10) {
        assert!(
            Instant::now() < until,
            "no progress: {}\n--- pgbouncer ---\n{}",
            child.log(),
            pooler.log()
        );
        if let Ok(Some(status)) = child.child.try_wait() {
            panic!("the backfill ended early ({status}): {}", child.log());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.child.start_kill().expect("SIGKILL");
    let _ = child.child.wait().await;
    // The killed run's batch in flight is rolled back once PgBouncer drops its server
    // connection; wait for that before comparing the checkpoint with the rows.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, last_key, rows_done, _, _) = checkpoint(&db).await.expect("checkpoint");
    assert_eq!(status, "running");
    let last_key = last_key.expect("last key");
    assert!(last_key < ROWS, "killed too late: {last_key}");
    let (min, max, ones) = counters(&db).await;
    assert_eq!((min, max), (0, 1));
    assert_eq!(
        (ones, ones),
        (rows_done, last_key),
        "rows up to the checkpoint once"
    );

    let start = Instant::now();
    let r = backfill::execute(&support::backfill::cfg(&url, "epoch-1")).await;
    assert_eq!(r.outcome, Outcome::Applied, "{r:?}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "resumed late: {r:?}"
    );
    assert_eq!(counters(&db).await, (1, 1, ROWS));
    let cp = checkpoint(&db).await.expect("checkpoint");
    assert_eq!(
        (cp.0.as_str(), cp.1, cp.2, cp.4),
        ("done", Some(ROWS), ROWS, 0)
    );
    let r = backfill::execute(&support::backfill::cfg(&url, "epoch-1")).await;
    assert_eq!(r.outcome, Outcome::AlreadyApplied, "{r:?}");
    nothing_left_behind(&db, &pooler).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_backfill_resumes_exactly_once_through_transaction_pooling() {
    sigkill_and_resume(PoolMode::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_backfill_resumes_exactly_once_through_session_pooling() {
    sigkill_and_resume(PoolMode::Session).await;
}

/// Two runs of one backfill at once, through the pooler, first in one epoch, then both in a
/// new one (both find the scan to restart): each ends applied or already applied, and every
/// row is filled exactly once per epoch.
async fn two_at_once(mode: PoolMode) {
    let pg = TestPostgres::start();
    let db = setup(&pg, ROWS).await;
    let pooler = TestPgBouncer::start_round_robin(&pg, mode, 2);
    for (round, epoch) in ["epoch-1", "epoch-2"].iter().enumerate() {
        let c = small_batches(support::backfill::cfg(&pooler.url(), epoch));
        let run = tokio::time::timeout(
            Duration::from_secs(120),
            futures::future::join(backfill::execute(&c), backfill::execute(&c)),
        );
        let (a, b) = run.await.expect("both runs end (no deadlock)");
        for r in [&a, &b] {
            assert!(
                matches!(r.outcome, Outcome::Applied | Outcome::AlreadyApplied),
                "{r:?}\n--- pgbouncer ---\n{}",
                pooler.log()
            );
        }
        // Which run did how much: both, when their batches took turns.
        eprintln!(
            "{mode:?} {epoch}: batches {} + {}",
            a.statements, b.statements
        );
        let n = round as i32 + 1;
        assert_eq!(counters(&db).await.0, n, "{a:?} {b:?}");
        assert_eq!(counters(&db).await.1, n, "a row filled twice: {a:?} {b:?}");
        let cp = checkpoint_of(&db, "fill").await.expect("checkpoint");
        assert_eq!((cp.0.as_str(), cp.2, cp.4), ("done", ROWS, round as i32));
        assert_eq!(
            cp.3,
            (a.statements + b.statements) as i64,
            "batches recorded are the runs' batches"
        );
    }
    nothing_left_behind(&db, &pooler).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backfills_at_once_through_transaction_pooling() {
    two_at_once(PoolMode::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_backfills_at_once_through_session_pooling() {
    two_at_once(PoolMode::Session).await;
}
