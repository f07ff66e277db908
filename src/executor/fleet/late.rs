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
    expand.database_check = false;
    expand.require_expand = false;
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
