//! The ledger: one row per (namespace, name, phase) in the `phasegate` schema of the target
//! database. The row commits in the same transaction as the phase's statements, so a phase is
//! applied exactly once whatever crashes or retries.

use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

// Every call here is an unnamed statement with its parameter types given (`query_typed`,
// `execute_typed`): a transaction pooler cannot keep named prepared statements between
// transactions (see docs/executor.md, "Through a connection pooler").

/// Run only when the ledger does not exist yet (see [`ensure`]), under the advisory lock, so
/// concurrent executors never race on `IF NOT EXISTS`.
pub const SCHEMA_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS phasegate;
CREATE TABLE IF NOT EXISTS phasegate.ledger (
    namespace        text        NOT NULL,
    name             text        NOT NULL,
    phase            text        NOT NULL CHECK (phase IN ('expand', 'contract')),
    uid              text        NOT NULL DEFAULT '',
    app_version      text        NOT NULL DEFAULT '',
    checksum         text        NOT NULL,
    status           text        NOT NULL CHECK (status IN ('in_progress', 'applied')),
    statements_total integer     NOT NULL,
    statements_done  integer     NOT NULL,
    attempts         integer     NOT NULL DEFAULT 0,
    executor_version text        NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    applied_at       timestamptz,
    PRIMARY KEY (namespace, name, phase)
);
COMMENT ON TABLE phasegate.ledger IS 'Phases applied by the Phasegate executor; do not edit by hand.';
"#;

pub const EXECUTOR_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Creates the ledger unless it exists. An existing ledger is left alone: another migration
/// role may own it, and `CREATE … IF NOT EXISTS` still needs CREATE privilege and `COMMENT ON`
/// needs ownership, so running them every time would fail every phase of a role that only has
/// been granted the use of the ledger. Looks in the catalog, which every role may read (whether
/// it may use the ledger shows on first use, with PostgreSQL's own message).
pub async fn ensure<C: GenericClient>(c: &C) -> Result<(), tokio_postgres::Error> {
    let exists: bool = c
        .query_typed_one(
            "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                             WHERE n.nspname = 'phasegate' AND c.relname = 'ledger')",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        // One implicit transaction: the comment comes with the table, or neither does.
        c.batch_execute(SCHEMA_SQL).await?;
    }
    Ok(())
}

/// Whether `e` says the ledger does not exist (undefined table or schema).
pub fn is_missing(e: &tokio_postgres::Error) -> bool {
    matches!(e.code().map(|c| c.code()), Some("42P01" | "3F000"))
}

/// Identity of the migration a phase belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub app_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub uid: String,
    pub checksum: String,
    pub applied: bool,
    pub statements_total: i32,
    pub statements_done: i32,
    pub attempts: i32,
}

pub async fn get<C: GenericClient>(
    c: &C,
    id: &Identity,
    phase: &str,
) -> Result<Option<Entry>, tokio_postgres::Error> {
    let row = c
        .query_typed_opt(
            "SELECT uid, checksum, status = 'applied', statements_total, statements_done, attempts
               FROM phasegate.ledger WHERE namespace = $1 AND name = $2 AND phase = $3",
            &[
                (&id.namespace, Type::TEXT),
                (&id.name, Type::TEXT),
                (&phase, Type::TEXT),
            ],
        )
        .await?;
    Ok(row.map(|r| Entry {
        uid: r.get(0),
        checksum: r.get(1),
        applied: r.get(2),
        statements_total: r.get(3),
        statements_done: r.get(4),
        attempts: r.get(5),
    }))
}

/// What a phase's ledger row records: `done` of the `total` statements of the SQL whose
/// checksum is `checksum`, and `attempts` more attempts.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    pub phase: &'a str,
    pub checksum: &'a str,
    pub total: usize,
    pub done: usize,
    pub attempts: u32,
}

/// Records progress: `applied` when every statement is done, else `in_progress`.
pub async fn record<C: GenericClient>(
    c: &C,
    id: &Identity,
    p: &Progress<'_>,
) -> Result<(), tokio_postgres::Error> {
    let (phase, checksum) = (p.phase, p.checksum);
    let total = i32::try_from(p.total).unwrap_or(i32::MAX);
    let done_i = i32::try_from(p.done).unwrap_or(i32::MAX);
    let attempts = i32::try_from(p.attempts).unwrap_or(i32::MAX);
    let status = if done_i >= total {
        "applied"
    } else {
        "in_progress"
    };
    c.execute_typed(
        "INSERT INTO phasegate.ledger AS l
             (namespace, name, phase, uid, app_version, checksum, status, statements_total,
              statements_done, attempts, executor_version, applied_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                 CASE WHEN $7 = 'applied' THEN clock_timestamp() END)
         ON CONFLICT (namespace, name, phase) DO UPDATE SET
             uid = EXCLUDED.uid, app_version = EXCLUDED.app_version, status = EXCLUDED.status,
             checksum = EXCLUDED.checksum, statements_total = EXCLUDED.statements_total,
             statements_done = EXCLUDED.statements_done, attempts = l.attempts + EXCLUDED.attempts,
             executor_version = EXCLUDED.executor_version, updated_at = clock_timestamp(),
             applied_at = EXCLUDED.applied_at",
        &[
            (&id.namespace, Type::TEXT),
            (&id.name, Type::TEXT),
            (&phase, Type::TEXT),
            (&id.uid, Type::TEXT),
            (&id.app_version, Type::TEXT),
            (&checksum, Type::TEXT),
            (&status, Type::TEXT),
            (&total, Type::INT4),
            (&done_i, Type::INT4),
            (&attempts, Type::INT4),
            (&EXECUTOR_VERSION, Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}

/// Claims the phase's ledger row inside the transaction that will apply `checksum`'s
/// statements, and returns how many of them are recorded as done. The row (inserted as
/// `in_progress` when missing; gone again if the transaction rolls back) is locked until the
/// transaction ends, so a second executor of the same phase — whatever its connection path,
/// advisory lock or not — waits here until the first commits or rolls back, then sees what
/// the first applied. Statements recorded under another checksum count as none done.
pub async fn claim<C: GenericClient>(
    c: &C,
    id: &Identity,
    phase: &str,
    checksum: &str,
    total: usize,
) -> Result<usize, tokio_postgres::Error> {
    let (inserted, row) = futures::future::join(
        insert_claim(c, id, phase, checksum, total),
        lock_row(c, id, phase),
    )
    .await;
    inserted?;
    Ok(done_under(&row?, checksum))
}

/// [`claim`], then [`record`] of `p`, all sent at once (the server runs them in this order, in
/// the caller's transaction): one round trip. Returns what [`claim`] returns; when that is
/// `p.done` or more, the caller rolls back (the record goes with it).
pub async fn claim_and_record<C: GenericClient>(
    c: &C,
    id: &Identity,
    p: &Progress<'_>,
) -> Result<usize, tokio_postgres::Error> {
    let (phase, checksum) = (p.phase, p.checksum);
    let (inserted, row, recorded) = futures::future::join3(
        insert_claim(c, id, phase, checksum, p.total),
        lock_row(c, id, phase),
        record(c, id, p),
    )
    .await;
    inserted?;
    let before = done_under(&row?, checksum);
    recorded?;
    Ok(before)
}

async fn insert_claim<C: GenericClient>(
    c: &C,
    id: &Identity,
    phase: &str,
    checksum: &str,
    total: usize,
) -> Result<u64, tokio_postgres::Error> {
    let total = i32::try_from(total).unwrap_or(i32::MAX);
    c.execute_typed(
        "INSERT INTO phasegate.ledger
             (namespace, name, phase, uid, app_version, checksum, status, statements_total,
              statements_done, attempts, executor_version)
         VALUES ($1, $2, $3, $4, $5, $6, 'in_progress', $7, 0, 0, $8)
         ON CONFLICT (namespace, name, phase) DO NOTHING",
        &[
            (&id.namespace, Type::TEXT),
            (&id.name, Type::TEXT),
            (&phase, Type::TEXT),
            (&id.uid, Type::TEXT),
            (&id.app_version, Type::TEXT),
            (&checksum, Type::TEXT),
            (&total, Type::INT4),
            (&EXECUTOR_VERSION, Type::TEXT),
        ],
    )
    .await
}

async fn lock_row<C: GenericClient>(
    c: &C,
    id: &Identity,
    phase: &str,
) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
    c.query_typed_one(
        "SELECT checksum, statements_done FROM phasegate.ledger
          WHERE namespace = $1 AND name = $2 AND phase = $3 FOR UPDATE",
        &[
            (&id.namespace, Type::TEXT),
            (&id.name, Type::TEXT),
            (&phase, Type::TEXT),
        ],
    )
    .await
}

/// Statements done according to the locked row, none when recorded under another checksum.
fn done_under(row: &tokio_postgres::Row, checksum: &str) -> usize {
    let recorded: String = row.get(0);
    let done: i32 = row.get(1);
    if recorded == checksum {
        usize::try_from(done).unwrap_or(0)
    } else {
        0
    }
}

/// Re-attributes an applied phase to the object `id` (same namespace and name, a new uid), once
/// this object found its own SQL (same checksum) already applied in this database.
pub async fn adopt<C: GenericClient>(
    c: &C,
    id: &Identity,
    phase: &str,
) -> Result<(), tokio_postgres::Error> {
    c.execute_typed(
        "UPDATE phasegate.ledger SET uid = $4, updated_at = clock_timestamp()
          WHERE namespace = $1 AND name = $2 AND phase = $3",
        &[
            (&id.namespace, Type::TEXT),
            (&id.name, Type::TEXT),
            (&phase, Type::TEXT),
            (&id.uid, Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}
