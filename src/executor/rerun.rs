//! Statements outside a transaction block commit by themselves, before the ledger records them,
//! so a run killed in between leaves one finished, or half done, that the ledger says is still
//! to do. Before running such a statement (under the advisory lock), [`prepare`] asks the
//! catalog what an earlier run left:
//!
//! - `CREATE INDEX CONCURRENTLY`: a valid index means the build finished (skipped); an invalid
//!   one is what an interrupted build leaves (dropped, then built again).
//! - `DROP INDEX CONCURRENTLY` of an index already gone is done.
//! - `ALTER TABLE parent DETACH PARTITION p CONCURRENTLY`: a partition no longer attached to the
//!   parent is detached (skipped; run again, the statement would fail); one still pending detach
//!   (the run was interrupted between the statement's two transactions) is finished with
//!   `DETACH PARTITION p FINALIZE` (the statement itself would fail: "already pending detach").

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::error::ApplyError;
use crate::protocol::report::{MAX_NOTE_BYTES, MAX_RECOVERED};
use crate::sql::{self, Statement};

/// What to do with a statement outside a transaction, given what an earlier run left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Rerun {
    /// Run the statement.
    Run,
    /// Already done: only record it in the ledger.
    Skip,
    /// Run this `DETACH PARTITION … FINALIZE` instead. It takes ACCESS EXCLUSIVE on the
    /// partition and then waits for older snapshots, so it runs with the short `lock_timeout`
    /// (a timeout is retried like any other), not unbounded like the concurrent statements.
    Finalize(String),
}

/// Before running `s` (statement `n`) outside a transaction, under the advisory lock: cleans up
/// what an interrupted run of it left and says what to run. Each finding is logged and noted in
/// `recovered` (for the report).
pub(super) async fn prepare(
    client: &Client,
    s: &Statement,
    n: usize,
    server_version: i32,
    recovered: &mut Vec<String>,
) -> Result<Rerun, ApplyError> {
    let db = |e: tokio_postgres::Error| ApplyError::db(&e, Some(n));
    if let Some(ci) = &s.concurrent_index {
        match index_state(client, ci).await.map_err(db)? {
            Some((true, _)) => {
                note(
                    recovered,
                    format!(
                        "statement {n}: index {} already exists and is valid; skipped its build",
                        ci.index
                    ),
                );
                return Ok(Rerun::Skip);
            }
            Some((false, qname)) => {
                note(
                    recovered,
                    format!("statement {n}: dropped the invalid index {qname} an interrupted build left; building it again"),
                );
                client
                    .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {qname}"))
                    .await
                    .map_err(db)?;
            }
            None => {}
        }
    }
    if s.kind == "DropStmt" && s.concurrent {
        // Re-running DROP INDEX CONCURRENTLY after it succeeded must not fail.
        let mut any = false;
        for t in &s.tables {
            let row = client
                .query_typed_one(
                    "SELECT to_regclass($1) IS NOT NULL",
                    &[(&qualified(&t.schema, &t.name), Type::TEXT)],
                )
                .await
                .map_err(db)?;
            any |= row.get::<_, bool>(0);
        }
        if !any {
            return Ok(Rerun::Skip);
        }
    }
    // DETACH … CONCURRENTLY and pg_inherits.inhdetachpending exist from PostgreSQL 14 on; an
    // older server refuses the statement itself, with its own message.
    if let (Some(d), true) = (&s.detach, server_version >= 140_000) {
        let (parent, partition) = (
            qualified(&d.parent.schema, &d.parent.name),
            qualified(&d.partition.schema, &d.partition.name),
        );
        let row = client
            .query_typed_one(
                "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL,
                        (SELECT inhdetachpending FROM pg_inherits
                          WHERE inhparent = to_regclass($1) AND inhrelid = to_regclass($2))",
                &[(&parent, Type::TEXT), (&partition, Type::TEXT)],
            )
            .await
            .map_err(db)?;
        let (both_exist, pending): (bool, Option<bool>) = (row.get(0), row.get(1));
        match pending {
            // A missing table is left to the statement, which names it in its error.
            None if both_exist => {
                note(
                    recovered,
                    format!(
                        "statement {n}: partition {} is already detached from {}; skipped",
                        d.partition, d.parent
                    ),
                );
                return Ok(Rerun::Skip);
            }
            Some(true) => {
                note(
                    recovered,
                    format!(
                        "statement {n}: partition {} was left pending detach from {} by an interrupted run; finished it with DETACH PARTITION … FINALIZE",
                        d.partition, d.parent
                    ),
                );
                return Ok(Rerun::Finalize(format!(
                    "ALTER TABLE {parent} DETACH PARTITION {partition} FINALIZE"
                )));
            }
            _ => {}
        }
    }
    Ok(Rerun::Run)
}

/// After `s` failed: drops the invalid index a failed concurrent build left (best effort).
pub(super) async fn clean_up_after_failure(client: &Client, s: &Statement) {
    if let Some(ci) = &s.concurrent_index {
        if let Ok(Some((false, qname))) = index_state(client, ci).await {
            let _ = client
                .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {qname}"))
                .await;
            tracing::warn!(index = %qname, "dropped the invalid index left by the failed build");
        }
    }
}

/// Logs `text` and keeps it for the report: once (a retry finds the same again), and at most
/// [`MAX_RECOVERED`] notes of [`MAX_NOTE_BYTES`], so the report always fits.
fn note(recovered: &mut Vec<String>, text: String) {
    tracing::warn!("{text}");
    let mut text = text;
    if text.len() > MAX_NOTE_BYTES {
        let mut cut = MAX_NOTE_BYTES - '…'.len_utf8();
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    if recovered.len() < MAX_RECOVERED && !recovered.contains(&text) {
        recovered.push(text);
    }
}

fn qualified(schema: &str, name: &str) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    if schema.is_empty() {
        q(name)
    } else {
        format!("{}.{}", q(schema), q(name))
    }
}

/// State of a named index in the schema of `table`: None if absent, Some(valid) otherwise.
async fn index_state(
    client: &Client,
    ci: &sql::ConcurrentIndex,
) -> Result<Option<(bool, String)>, tokio_postgres::Error> {
    let table = qualified(&ci.table.schema, &ci.table.name);
    let row = client
        .query_typed_opt(
            "SELECT i.indisvalid AND i.indisready, quote_ident(n.nspname) || '.' || quote_ident(c.relname)
               FROM pg_class c
               JOIN pg_index i ON i.indexrelid = c.oid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relname = $1
                AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = to_regclass($2))",
            &[(&ci.index, Type::TEXT), (&table, Type::TEXT)],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_kept_once_short_and_few() {
        let mut notes = Vec::new();
        note(&mut notes, "statement 1: skipped".into());
        note(&mut notes, "statement 1: skipped".into());
        assert_eq!(notes, ["statement 1: skipped"]);
        note(&mut notes, format!("statement 2: {}", "é".repeat(200)));
        assert!(notes[1].len() <= MAX_NOTE_BYTES && notes[1].ends_with('…'));
        for i in 3..20 {
            note(&mut notes, format!("statement {i}"));
        }
        assert_eq!(notes.len(), MAX_RECOVERED);
    }
}
