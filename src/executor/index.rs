//! Statements outside a transaction block, made idempotent: a `CREATE INDEX CONCURRENTLY` that
//! failed or was killed leaves an invalid index behind (dropped and built again; a valid one
//! means the build finished before the ledger was updated), and `DROP INDEX CONCURRENTLY` of an
//! index already gone is done.

use tokio_postgres::Client;

use super::error::ApplyError;
use crate::sql::{self, Statement};

/// Before running `s` (statement `n`) outside a transaction, under the advisory lock: cleans up
/// what an interrupted run of it left; true when it is already done.
pub(super) async fn already_done(
    client: &Client,
    s: &Statement,
    n: usize,
) -> Result<bool, ApplyError> {
    let mut done = false;
    if let Some(ci) = &s.concurrent_index {
        match index_state(client, ci)
            .await
            .map_err(|e| ApplyError::db(&e, Some(n)))?
        {
            Some((true, _)) => {
                tracing::info!(index = %ci.index, "index already exists and is valid; skipping its build");
                done = true;
            }
            Some((false, qname)) => {
                tracing::warn!(index = %qname, "dropping invalid index left by an interrupted concurrent build");
                client
                    .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {qname}"))
                    .await
                    .map_err(|e| ApplyError::db(&e, Some(n)))?;
            }
            None => {}
        }
    }
    if s.kind == "DropStmt" && s.concurrent {
        // Re-running DROP INDEX CONCURRENTLY after it succeeded must not fail.
        let mut any = false;
        for t in &s.tables {
            let row = client
                .query_one(
                    "SELECT to_regclass($1) IS NOT NULL",
                    &[&qualified(&t.schema, &t.name)],
                )
                .await
                .map_err(|e| ApplyError::db(&e, Some(n)))?;
            any |= row.get::<_, bool>(0);
        }
        done = !any;
    }
    Ok(done)
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
        .query_opt(
            "SELECT i.indisvalid AND i.indisready, quote_ident(n.nspname) || '.' || quote_ident(c.relname)
               FROM pg_class c
               JOIN pg_index i ON i.indexrelid = c.oid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relname = $1
                AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = to_regclass($2))",
            &[&ci.index, &table],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}
