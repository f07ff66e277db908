//! The servers of a fleet run — `spec.database`'s, then each of `tenants.servers` (shards) —
//! each with its own URL, discovery, ledger, `search_path` check and connections. Every server
//! is discovered before any tenant runs: one that cannot be reached or read fails the phase,
//! named by its name (never its URL).

use futures::future::join_all;
use tokio_postgres::Client;

use super::super::sessions::Sessions;
use super::super::{Config, Secret};
use super::tenant::Tenant;
use super::waves::{self, Waves};
use super::{discover, target, FleetError, TenantKind};
use crate::api::TenantsSpec;
use crate::protocol::env::SERVER_URLS;

/// One server of the run.
pub(super) struct Server {
    /// None: `spec.database`'s server.
    pub name: Option<String>,
    /// Where each tenant's run on this server starts from: the server's URL, and for schema
    /// tenants the connections they pass on (see [`prepare`]).
    pub cfg: Config,
    /// How errors name the server; None when it is the only one (messages as before servers).
    about: Option<String>,
}

impl Server {
    /// `error`, said of this server.
    fn fail(&self, error: FleetError) -> FleetError {
        match &self.about {
            Some(server) => FleetError::Server {
                server: server.clone(),
                error: Box::new(error),
            },
            None => error,
        }
    }
}

/// The servers `spec` names, each with its URL from `cfg` (`cfg.server_urls[i]` is that of
/// `spec.servers[i]`).
pub(super) fn of(cfg: &Config, spec: &TenantsSpec) -> Result<Vec<Server>, FleetError> {
    let spec_error = |e: String| FleetError::Spec(format!("tenants.servers: {e}"));
    spec.check_servers().map_err(spec_error)?;
    if !spec.servers.is_empty() {
        one_server_settings(cfg).map_err(spec_error)?;
    }
    if cfg.server_urls.len() != spec.servers.len() {
        let missing = spec.servers.get(cfg.server_urls.len()).map_or_else(
            || {
                format!(
                    "{} URLs for {} servers",
                    cfg.server_urls.len(),
                    spec.servers.len()
                )
            },
            |s| {
                let var = SERVER_URLS[cfg.server_urls.len()];
                format!("server {} has no URL ({var} or --server-url)", s.name)
            },
        );
        return Err(spec_error(missing));
    }
    let alone = spec.servers.is_empty();
    let mut first = cfg.clone();
    first.server_urls = Vec::new();
    let mut servers = vec![Server {
        name: None,
        cfg: first,
        about: (!alone).then(|| "spec.database's server".to_string()),
    }];
    for (s, url) in spec.servers.iter().zip(&cfg.server_urls) {
        let mut one = cfg.clone();
        one.database_url = Secret(url.0.clone());
        one.server_urls = Vec::new();
        servers.push(Server {
            name: Some(s.name.clone()),
            cfg: one,
            about: Some(format!("server {}", s.name)),
        });
    }
    Ok(servers)
}

/// What names one server only cannot go with more servers (the operator refuses them too).
fn one_server_settings(cfg: &Config) -> Result<(), String> {
    if !cfg.replica_urls.is_empty() {
        return Err("listed hot standbys belong to one server; use replica discovery".into());
    }
    if cfg.pooler.as_ref().is_some_and(|p| p.admin_url.is_some()) {
        return Err(
            "a pooler admin URL names one server's pooler; leave it unset (each server's URL \
             with the database pgbouncer is used)"
                .into(),
        );
    }
    Ok(())
}

/// One server's discovery: its tenants, and the connection that found them (kept for the
/// ledger's creation).
pub(super) struct Found {
    pub tenants: Vec<Tenant>,
    client: Client,
    /// [`discover::identity`].
    identity: String,
}

impl Found {
    /// The connection to this server that found its tenants.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// A run's servers, their tenants (every server discovered before any tenant runs), and the
/// waves those run in.
pub(super) struct Planned {
    pub kind: TenantKind,
    pub servers: Vec<Server>,
    pub found: Vec<Found>,
    pub waves: Waves,
    /// Tenants on all servers.
    pub total: usize,
}

/// Discovers `spec`'s tenants on every server of `cfg` and plans their waves; no tenant at
/// all, or a named canary that is not one, fails before any tenant runs.
pub(super) async fn plan(
    cfg: &Config,
    spec: &TenantsSpec,
    scrub: &super::Scrubber,
) -> Result<Planned, FleetError> {
    let kind = TenantKind::of(spec).map_err(FleetError::Spec)?;
    let servers = of(cfg, spec)?;
    // Every server before any tenant runs: one that cannot be read fails the phase now.
    let found = discover(&servers, &kind, scrub).await?;
    let tenants = waves::interleave(found.iter().map(|f| f.tenants.clone()).collect());
    if tenants.is_empty() {
        return Err(FleetError::NoTenants(kind.describe()));
    }
    let waves = waves::plan(&tenants, &spec.canary, &spec.waves).map_err(|e| match e {
        waves::PlanError::MissingCanary(names) => FleetError::MissingCanary(names),
        waves::PlanError::Spec(why) => FleetError::Spec(why),
    })?;
    Ok(Planned {
        kind,
        servers,
        found,
        waves,
        total: tenants.len(),
    })
}

/// Discovers the tenants of every server at once; fails, naming every server that could not be
/// reached or read, before any tenant runs.
pub(super) async fn discover(
    servers: &[Server],
    kind: &TenantKind,
    scrub: &super::Scrubber,
) -> Result<Vec<Found>, FleetError> {
    let each = servers.iter().enumerate().map(|(i, s)| async move {
        let client = discover::connect(&s.cfg, scrub).await?;
        let names = discover::tenants(&client, kind, scrub).await?;
        let identity = discover::identity(&client, kind, scrub).await?;
        if names.is_empty() && servers.len() > 1 {
            let server = s.about.as_deref().unwrap_or_default();
            tracing::info!(server, "tenants: none matches on this server");
        }
        let tenants = names
            .into_iter()
            .map(|n| Tenant::on(i, s.name.as_deref(), n))
            .collect();
        Ok(Found {
            tenants,
            client,
            identity,
        })
    });
    let results: Vec<Result<Found, FleetError>> = join_all(each).await;
    let found = all_or_errors(servers, results)?;
    listed_once(servers, &found, kind)?;
    Ok(found)
}

/// Two entries that reach one server (two Secrets with the same URL, another address of it)
/// would walk its tenants twice and count them twice: refused before any tenant runs.
fn listed_once(servers: &[Server], found: &[Found], kind: &TenantKind) -> Result<(), FleetError> {
    for (j, f) in found.iter().enumerate() {
        if let Some(i) = found[..j].iter().position(|e| e.identity == f.identity) {
            let name = |k: usize| servers[k].about.clone().unwrap_or_default();
            return Err(FleetError::Spec(format!(
                "{} and {} are the same PostgreSQL server (same postmaster{}): its tenants \
                 would be counted twice; list each server once",
                name(i),
                name(j),
                match kind {
                    TenantKind::Schemas(_) => ", same database",
                    TenantKind::Databases(_) => "",
                }
            )));
        }
    }
    Ok(())
}

/// Before schema tenants run, on each server that has some: the `search_path` check, and the
/// ledger's creation; then their connections to pass on. Connections of discovery end here.
pub(super) async fn prepare(
    servers: &mut [Server],
    found: Vec<Found>,
    kind: &TenantKind,
    scrub: &super::Scrubber,
) -> Result<(), FleetError> {
    if !matches!(kind, TenantKind::Schemas(_)) {
        return Ok(());
    }
    let each = servers.iter().zip(found).map(|(s, mut f)| async move {
        // Once per server: a pooler passes the options startup parameter on for every tenant
        // or for none.
        let Some(t) = f.tenants.iter().find(|t| target::plain_name(kind, &t.name)) else {
            return Ok(());
        };
        discover::check_search_path(&s.cfg, &t.name)
            .await
            .map_err(FleetError::Spec)?;
        discover::ensure_ledger(&mut f.client, scrub).await
    });
    let results: Vec<Result<(), FleetError>> = join_all(each).await;
    all_or_errors(servers, results)?;
    for s in servers.iter_mut() {
        s.cfg.sessions = Some(Sessions::default());
    }
    Ok(())
}

/// Every server's result, or the errors of those that failed, each naming its server.
fn all_or_errors<T>(
    servers: &[Server],
    results: Vec<Result<T, FleetError>>,
) -> Result<Vec<T>, FleetError> {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for (s, r) in servers.iter().zip(results) {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => errors.push(s.fail(e)),
        }
    }
    match errors.len() {
        0 => Ok(ok),
        1 => Err(errors.remove(0)),
        _ => Err(FleetError::Servers(errors)),
    }
}
