//! Running a phase's statements and watching what they do: the locks each one holds (read from
//! `pg_locks` by a second session while the statement's transaction is still open), the
//! relations whose file changed (a rewrite) and the indexes that appeared.
//!
//! Each statement runs once in a transaction to be observed, which is rolled back, then once
//! more and committed, so the next statement and phase see its schema. All of it happens in
//! the plan's own database (a throwaway server, or a scratch copy made on `--url`).

use std::collections::{BTreeSet, HashMap};

use tokio_postgres::Client;

/// OIDs below this belong to the system catalogs (PostgreSQL's `FirstNormalObjectId`).
const FIRST_USER_OID: i64 = 16384;

/// A relation as the phase's own session sees it (its uncommitted catalog included).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rel {
    filenode: i64,
    kind: String,
    /// `schema.name`.
    name: String,
    /// For an index: its table's `schema.name`.
    table: Option<String>,
}

type Rels = HashMap<i64, Rel>;

/// A lock a statement took.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct LockTaken {
    /// `schema.name`, or the OID when the relation is gone.
    pub relation: String,
    /// `table`, `index`, `sequence`, `view`, `materialized view`, `partitioned table`, …
    pub kind: String,
    /// As `pg_locks.mode` spells it, e.g. `AccessExclusiveLock`.
    pub mode: String,
    /// The relation was created in this transaction: no other session can see it, so the
    /// lock blocks nobody.
    pub new_relation: bool,
}

/// An index a statement built.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IndexBuild {
    pub index: String,
    pub table: Option<String>,
    /// An existing index built anew (a table rewrite or REINDEX), not a new one.
    pub rebuilt: bool,
}

/// What one statement was seen doing.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Observed {
    /// Locks taken by this statement (not held before it in the same transaction).
    pub locks: Vec<LockTaken>,
    /// Tables whose data file was replaced: the statement rewrote them.
    pub rewrites: Vec<String>,
    pub index_builds: Vec<IndexBuild>,
}

/// One statement to run.
#[derive(Debug, Clone)]
pub struct Step {
    pub sql: String,
    /// Cannot run in a transaction block (`… CONCURRENTLY`): run alone, not observed.
    pub own_transaction: bool,
    /// Starts a new transaction (a `-- phasegate:commit` line before it).
    pub new_transaction: bool,
}

/// The outcome for one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Observed {
        transaction: usize,
        seen: Observed,
    },
    /// Ran on its own outside a transaction block: nothing sampled.
    RanAlone {
        transaction: usize,
    },
    Failed {
        transaction: usize,
        error: String,
    },
    /// Not run: an earlier statement failed.
    Skipped,
}

/// The session running the SQL, and a second one that reads `pg_locks`.
pub struct Sessions<'a> {
    pub runner: &'a Client,
    pub runner_pid: i32,
    pub observer: &'a Client,
}

/// Runs the steps of a phase. Each statement is observed in a transaction of its own that is
/// rolled back, then run again and committed, so the next one builds on it: the locks reported
/// are exactly the statement's, even where an earlier statement of the executor's transaction
/// already holds them. A database error ends the phase (the remaining steps are `Skipped`); a
/// lost connection is returned as the error.
pub async fn run_phase(
    s: &Sessions<'_>,
    steps: &[Step],
) -> Result<Vec<Outcome>, tokio_postgres::Error> {
    let mut out: Vec<Outcome> = Vec::with_capacity(steps.len());
    let mut transaction = 0;
    // Relations that existed when the executor's current transaction began.
    let mut at_start = Rels::new();
    for (i, step) in steps.iter().enumerate() {
        let after_alone = i > 0 && steps[i - 1].own_transaction;
        if i == 0 || step.own_transaction || step.new_transaction || after_alone {
            transaction += 1;
            at_start = relations(s.runner).await?;
        }
        let outcome = if step.own_transaction {
            match s.runner.batch_execute(&step.sql).await {
                Ok(()) => Outcome::RanAlone { transaction },
                Err(e) => failed(e, transaction)?,
            }
        } else {
            observe_one(s, &step.sql, transaction, &at_start).await?
        };
        let stop = matches!(outcome, Outcome::Failed { .. });
        out.push(outcome);
        if stop {
            break;
        }
    }
    out.resize(steps.len(), Outcome::Skipped);
    Ok(out)
}

/// Observes one statement (rolled back), then commits it.
async fn observe_one(
    s: &Sessions<'_>,
    sql: &str,
    transaction: usize,
    at_start: &Rels,
) -> Result<Outcome, tokio_postgres::Error> {
    s.runner.batch_execute("BEGIN").await?;
    let before = relations(s.runner).await?;
    let held = locks(s).await?;
    if let Err(e) = s.runner.batch_execute(sql).await {
        let outcome = failed(e, transaction)?;
        s.runner.batch_execute("ROLLBACK").await?;
        return Ok(outcome);
    }
    let after = relations(s.runner).await?;
    let now = locks(s).await?;
    s.runner.batch_execute("ROLLBACK").await?;
    let seen = describe(&held, &now, &before, &after, at_start);
    // Again, for real: what follows builds on this schema.
    s.runner.batch_execute(sql).await?;
    Ok(Outcome::Observed { transaction, seen })
}

/// A database error is the statement's outcome; anything else (a lost connection) is fatal.
fn failed(e: tokio_postgres::Error, transaction: usize) -> Result<Outcome, tokio_postgres::Error> {
    match e.as_db_error() {
        Some(db) => {
            let mut error = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                error.push_str(&format!(" DETAIL: {d}"));
            }
            Ok(Outcome::Failed { transaction, error })
        }
        None => Err(e),
    }
}

fn describe(
    held: &BTreeSet<(i64, String)>,
    now: &BTreeSet<(i64, String)>,
    before: &Rels,
    after: &Rels,
    at_start: &Rels,
) -> Observed {
    let name_of = |oid: i64| after.get(&oid).or_else(|| before.get(&oid));
    let mut locks: Vec<LockTaken> = Vec::new();
    for (oid, mode) in now.difference(held) {
        // Gone before the statement ended: a rewrite's transient heap or an index it replaced.
        let Some(rel) = name_of(*oid) else { continue };
        // Every write takes these on each index; they block only DDL on that index.
        let weak = matches!(
            mode.as_str(),
            "AccessShareLock" | "RowShareLock" | "RowExclusiveLock"
        );
        if rel.kind == "i" && weak {
            continue;
        }
        let lock = LockTaken {
            relation: rel.name.clone(),
            kind: kind_name(&rel.kind).to_string(),
            mode: mode.clone(),
            new_relation: !at_start.contains_key(oid),
        };
        // A rebuilt index has a new OID under the old name: report the name once.
        if !locks
            .iter()
            .any(|l| l.relation == lock.relation && l.mode == lock.mode)
        {
            locks.push(lock);
        }
    }
    locks.sort();
    let mut rewrites = Vec::new();
    let mut index_builds = Vec::new();
    for (oid, rel) in after {
        let old = before.get(oid);
        let changed = old.is_some_and(|o| o.filenode != rel.filenode && rel.filenode != 0);
        match rel.kind.as_str() {
            "r" | "m" if changed && at_start.contains_key(oid) => rewrites.push(rel.name.clone()),
            "i" if old.is_none() || changed => index_builds.push(IndexBuild {
                index: rel.name.clone(),
                table: rel.table.clone(),
                // Same OID with a new file, or a new OID under a name that existed (rebuilt
                // by a column type change).
                rebuilt: old.is_some() || before.values().any(|b| b.name == rel.name),
            }),
            _ => {}
        }
    }
    rewrites.sort();
    index_builds.sort_by(|a, b| a.index.cmp(&b.index));
    Observed {
        locks,
        rewrites,
        index_builds,
    }
}

fn kind_name(relkind: &str) -> &'static str {
    match relkind {
        "r" => "table",
        "i" => "index",
        "S" => "sequence",
        "v" => "view",
        "m" => "materialized view",
        "c" => "composite type",
        "t" => "TOAST table",
        "f" => "foreign table",
        "p" => "partitioned table",
        "I" => "partitioned index",
        _ => "relation",
    }
}

/// The user relations the runner's session sees, with their data files.
async fn relations(c: &Client) -> Result<Rels, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT c.oid::int8, c.relfilenode::int8, c.relkind::text, n.nspname || '.' || c.relname, \
                    (SELECT tn.nspname || '.' || t.relname FROM pg_index i \
                       JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace \
                      WHERE i.indexrelid = c.oid) \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.oid::int8 >= $1 AND n.nspname NOT LIKE 'pg\\_toast%'",
            &[&FIRST_USER_OID],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                Rel {
                    filenode: r.get(1),
                    kind: r.get(2),
                    name: r.get(3),
                    table: r.get(4),
                },
            )
        })
        .collect())
}

/// The relation locks the runner's backend holds now, seen from the observer's session.
async fn locks(s: &Sessions<'_>) -> Result<BTreeSet<(i64, String)>, tokio_postgres::Error> {
    let rows = s
        .observer
        .query(
            "SELECT relation::int8, mode FROM pg_locks \
              WHERE pid = $1 AND locktype = 'relation' AND granted AND relation::int8 >= $2 \
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&s.runner_pid, &FIRST_USER_OID],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
