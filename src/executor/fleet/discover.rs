//! Finding the tenants on the server, when the phase runs (a tenant created since the last
//! phase is found by the next).

use tokio_postgres::types::Type;

use super::super::connect::{self, Scrubber};
use super::super::Config;
use super::{FleetError, TenantKind};

/// The tenants, sorted by name.
pub(super) async fn tenants(
    cfg: &Config,
    kind: &TenantKind,
    scrub: &Scrubber,
) -> Result<Vec<String>, FleetError> {
    let fail = |e: String| FleetError::Discover(scrub.scrub(&e));
    let settings = connect::parse(&cfg.database_url.0).map_err(|e| fail(e.to_string()))?;
    let client = connect::connect(&settings, cfg.connect_timeout, scrub)
        .await
        .map_err(|e| fail(e.to_string()))?;
    // Unnamed statements only: safe through a transaction pooler.
    let (sql, pattern) = match kind {
        TenantKind::Schemas(p) => (
            "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1 ORDER BY 1",
            p,
        ),
        TenantKind::Databases(p) => (
            "SELECT datname::text FROM pg_database
              WHERE datname LIKE $1 AND datallowconn AND NOT datistemplate ORDER BY 1",
            p,
        ),
    };
    let rows = client
        .query_typed(sql, &[(pattern, Type::TEXT)])
        .await
        .map_err(|e| fail(connect::describe(&e).1))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The tenant's connections really run in its schema: a pooler that drops the `options`
/// startup parameter (PgBouncer with `ignore_startup_parameters = options`) would otherwise
/// run every tenant's SQL in the default schema.
pub(super) async fn check_search_path(one: &Config, tenant: &str) -> Result<(), String> {
    let scrub = Scrubber::for_url(&one.database_url.0);
    let settings = connect::parse(&one.database_url.0).map_err(|e| scrub.scrub(&e.to_string()))?;
    let client = connect::connect(&settings, one.connect_timeout, &scrub)
        .await
        .map_err(|e| scrub.scrub(&e.to_string()))?;
    let path: String = client
        .query_typed_one("SELECT current_setting('search_path')", &[])
        .await
        .map_err(|e| scrub.scrub(&connect::describe(&e).1))?
        .get(0);
    if path.trim() != tenant {
        return Err(format!(
            "the session's search_path is {path:?}, not the tenant schema: the options startup \
             parameter did not reach the server (a pooler that drops it?); connect directly"
        ));
    }
    Ok(())
}
