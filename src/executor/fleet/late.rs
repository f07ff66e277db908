//! A tenant created since expand ran: contract and the backfill run expand there first (where
//! it is applied already: a ledger read, no SQL), so that no tenant is silently skipped.

use super::super::{Config, Outcome, Phase, Report};

/// Runs `expand_sql` as this migration's expand on the tenant `one` is configured for
/// ([`super::target::config_for`]): `Ok(true)` when it applied it now (the tenant was created
/// since expand), `Ok(false)` when it was applied already, `Err` with expand's failed report.
pub(super) async fn expand_first(
    one: &Config,
    expand_sql: &str,
    tenant: &str,
) -> Result<bool, Report> {
    let mut expand = one.clone();
    expand.phase = Phase::Expand;
    expand.sql = expand_sql.to_string();
    expand.tenants = None;
    expand.grant = None;
    expand.shared_grant = None;
    expand.database_check = false;
    expand.require_expand = false;
    // Nearly every tenant has it: one ledger read then, not a whole run.
    if super::super::recorded_applied(&expand).await {
        return Ok(false);
    }
    let r = super::super::execute_one(&expand).await;
    if !r.is_success() {
        return Err(r);
    }
    let late = r.outcome == Outcome::Applied;
    if late {
        tracing::info!(
            tenant,
            "tenants: created since expand; expand applied there first"
        );
    }
    Ok(late)
}

/// The schema tenants whose expand (this SQL, this object) the database's ledger records as
/// applied: one read for all of them, so that only the others take [`expand_first`]. Empty
/// when the ledger cannot be read: every tenant then takes the full run, which tells.
pub(super) async fn expanded_schemas(
    client: &tokio_postgres::Client,
    base: &Config,
    expand_sql: &str,
) -> std::collections::HashSet<String> {
    use tokio_postgres::types::Type;
    let prefix = format!("{}/", base.identity.name);
    let sum = super::super::checksum(expand_sql);
    let rows = client
        .query_typed(
            "SELECT substr(name, length($2) + 1) FROM phasegate.ledger
              WHERE namespace = $1 AND left(name, length($2)) = $2 AND phase = 'expand'
                AND status = 'applied' AND uid = $3 AND checksum = $4",
            &[
                (&base.identity.namespace, Type::TEXT),
                (&prefix, Type::TEXT),
                (&base.identity.uid, Type::TEXT),
                (&sum, Type::TEXT),
            ],
        )
        .await;
    match rows {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(e) => {
            tracing::debug!(error = %e, "tenants: cannot read the ledger; every tenant checks its expand");
            std::collections::HashSet::new()
        }
    }
}
