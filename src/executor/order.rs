//! Expand's place in the order of migrations on one database, kept in the database: before
//! its own, an expand executor waits until the ledger records as applied the expand of every
//! earlier migration the operator named (`PHASEGATE_EXPAND_AFTER`, see
//! [`crate::planner::order`]). Their Jobs start together; the ledger row that commits with
//! each one's DDL lets the next one go.

use std::time::{Duration, Instant};

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::error::{or_stop, ApplyError};
use super::stop::Stop;
use super::waits::{Kind, Waits};

/// How often the ledger is asked while earlier expands are still to be applied.
const POLL: Duration = Duration::from_millis(200);

/// Waits until every one of `names` (migrations of `namespace`) has its expand applied
/// according to the ledger; returns how long it waited. No ledger yet means none is.
pub(super) async fn wait_for_earlier(
    client: &Client,
    namespace: &str,
    names: &[String],
    stop: &Stop,
    waits: &mut Waits,
) -> Result<Duration, ApplyError> {
    let started = Instant::now();
    if names.is_empty() {
        return Ok(Duration::ZERO);
    }
    let mut announced: Option<String> = None;
    loop {
        let pending = not_applied(client, namespace, names).await?;
        let Some(nearest) = pending.last() else {
            waits.done(Kind::EarlierMigration);
            return Ok(started.elapsed());
        };
        // Named by the nearest one still pending, which changes only when it applies: the
        // status that shows this line is not rewritten each time the line moves further ahead.
        let detail = match pending.len() {
            1 => nearest.clone(),
            _ => format!("{nearest} and the ones before it"),
        };
        if announced.as_ref().is_some_and(|a| *a != detail) {
            waits.done(Kind::EarlierMigration);
        }
        announced = Some(detail.clone());
        if waits.announce(
            Kind::EarlierMigration,
            detail.clone(),
            "waiting for the expand of earlier migrations on this database",
            &detail,
        ) {
            tracing::info!(namespace, waiting_for = %detail, "expand waits for earlier migrations on this database");
        }
        or_stop(stop, async {
            tokio::time::sleep(POLL).await;
            Ok(())
        })
        .await?;
    }
}

/// Those of `names` whose expand the ledger does not record as applied, in the given order.
async fn not_applied(
    client: &Client,
    namespace: &str,
    names: &[String],
) -> Result<Vec<String>, ApplyError> {
    let rows = client
        .query_typed(
            "SELECT name FROM phasegate.ledger
              WHERE namespace = $1 AND phase = 'expand' AND status = 'applied'
                AND name = ANY($2)",
            &[(&namespace, Type::TEXT), (&names, Type::TEXT_ARRAY)],
        )
        .await;
    let applied: Vec<String> = match rows {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        // undefined_table, invalid_schema_name: no migration has run here yet.
        Err(e) if matches!(e.code().map(|c| c.code()), Some("42P01" | "3F000")) => Vec::new(),
        Err(e) => return Err(ApplyError::db(&e, None)),
    };
    Ok(names
        .iter()
        .filter(|n| !applied.contains(n))
        .cloned()
        .collect())
}
