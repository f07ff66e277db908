//! Finding the tenants on the server, when the phase runs (a tenant created since the last
//! phase is found by the next).

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::super::connect::{self, Scrubber};
use super::super::Config;
use super::{FleetError, TenantKind};

/// A connection to the server's URL, for discovery and the ledger's creation.
pub(super) async fn connect(cfg: &Config, scrub: &Scrubber) -> Result<Client, FleetError> {
    let fail = |e: String| FleetError::Discover(scrub.scrub(&e));
    let settings = connect::parse(&cfg.database_url.0).map_err(|e| fail(e.to_string()))?;
    connect::connect(&settings, cfg.connect_timeout, scrub)
        .await
        .map_err(|e| fail(e.to_string()))
}

/// The tenants, sorted by name.
pub(super) async fn tenants(
    client: &Client,
    kind: &TenantKind,
    scrub: &Scrubber,
) -> Result<Vec<String>, FleetError> {
    let fail = |e: String| FleetError::Discover(scrub.scrub(&e));
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

/// What tells one PostgreSQL server from another whatever address or Secret reached it: when
/// its postmaster started, to the microsecond; for schema tenants also the database (another
/// database of the same server holds other schemas).
pub(super) async fn identity(
    client: &Client,
    kind: &TenantKind,
    scrub: &Scrubber,
) -> Result<String, FleetError> {
    let sql = match kind {
        TenantKind::Schemas(_) => {
            "SELECT extract(epoch FROM pg_postmaster_start_time())::text || '/' || current_database()"
        }
        TenantKind::Databases(_) => "SELECT extract(epoch FROM pg_postmaster_start_time())::text",
    };
    let row = client
        .query_typed_one(sql, &[])
        .await
        .map_err(|e| FleetError::Discover(scrub.scrub(&connect::describe(&e).1)))?;
    Ok(row.get(0))
}

/// Schema tenants set `search_path` on the session and pass connections from one tenant to
/// the next: that needs a real server session per connection. A connection whose startup
/// `options` reach the server is one; PgBouncer refuses them, or drops them when told to ignore
/// them (then a session setting would also reach other clients of a transaction pooler).
pub(super) async fn check_search_path(cfg: &Config, tenant: &str) -> Result<(), String> {
    let url = super::target::with_search_path(&cfg.database_url.0, tenant)?;
    let scrub = Scrubber::for_url(&cfg.database_url.0);
    let settings = connect::parse(&url).map_err(|e| scrub.scrub(&e.to_string()))?;
    let client = connect::connect(&settings, cfg.connect_timeout, &scrub)
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

/// Creates the ledger, if missing, under the database's advisory lock before schema tenants
/// run: they apply at once under keys of their own, and would race on its creation.
pub(super) async fn ensure_ledger(client: &mut Client, scrub: &Scrubber) -> Result<(), FleetError> {
    use super::super::{ledger, locks};
    let fail = |e: String| FleetError::Discover(scrub.scrub(&e));
    let db = |e: tokio_postgres::Error| fail(connect::describe(&e).1);
    let tx = client.transaction().await.map_err(db)?;
    tx.batch_execute(&format!(
        "SELECT pg_advisory_xact_lock({}, {})",
        locks::ADVISORY_CLASS,
        locks::ADVISORY_OBJ
    ))
    .await
    .map_err(db)?;
    ledger::ensure(&tx).await.map_err(db)?;
    tx.commit().await.map_err(db)
}
