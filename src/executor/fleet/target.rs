//! Where one tenant lives: its connection URL and the ledger key of its run.

use super::super::Config;
use crate::api::TenantsSpec;

/// What the tenants are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantKind {
    /// Schemas of the database whose names are `LIKE` the pattern.
    Schemas(String),
    /// Databases of the server whose names are `LIKE` the pattern.
    Databases(String),
}

impl TenantKind {
    pub fn of(spec: &TenantsSpec) -> Result<TenantKind, String> {
        match (&spec.schemas, &spec.databases) {
            (Some(p), None) => Ok(TenantKind::Schemas(p.clone())),
            (None, Some(p)) => Ok(TenantKind::Databases(p.clone())),
            _ => Err("tenants: set exactly one of schemas or databases".into()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            TenantKind::Schemas(p) => format!("schemas LIKE '{p}'"),
            TenantKind::Databases(p) => format!("databases LIKE '{p}'"),
        }
    }
}

/// A tenant name the executor can put into a URL and a `search_path` as it is: an unquoted
/// PostgreSQL identifier (lower case), or for databases also `-`.
pub(super) fn plain_name(kind: &TenantKind, name: &str) -> bool {
    let extra: &[u8] = match kind {
        TenantKind::Schemas(_) => b"_$",
        TenantKind::Databases(_) => b"_$-",
    };
    !name.is_empty()
        && name.len() <= 63
        && !name.as_bytes()[0].is_ascii_digit()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
}

/// A tenant's error when its name is not a [`plain_name`].
pub(super) fn check_plain(kind: &TenantKind, tenant: &str) -> Result<(), String> {
    if plain_name(kind, tenant) {
        return Ok(());
    }
    Err(format!(
        "tenant name {tenant:?} is not a plain lower-case identifier; such tenants are not supported yet"
    ))
}

/// The run of one tenant. A schema tenant runs on the server's URL with its `search_path` set
/// on the session (connections pass from one tenant to the next, see
/// [`super::super::sessions::Sessions`]), its own advisory key, and a ledger row of its own,
/// `<migration>/<schema>` (a Kubernetes name has no `/`, so it cannot collide). A database
/// tenant runs on its database's URL and keeps its own ledger, with the migration's own name.
pub(super) fn config_for(cfg: &Config, kind: &TenantKind, tenant: &str) -> Result<Config, String> {
    check_plain(kind, tenant)?;
    let mut one = cfg.clone();
    one.tenants = None;
    one.tenant_expand_sql = None;
    match kind {
        TenantKind::Schemas(_) => {
            one.search_path = Some(tenant.to_string());
            one.identity.name = format!("{}/{tenant}", cfg.identity.name);
            one.advisory_obj = super::super::locks::tenant_advisory_obj(tenant);
        }
        TenantKind::Databases(_) => {
            // Its own: contract's look at expand and contract itself share a connection; no
            // other database's tenant gets it. Nothing is set on its session.
            one.sessions = Some(super::super::sessions::Sessions::default());
            one.database_url.0 = with_database(&cfg.database_url.0, tenant)?;
            // The standbys' sessions of this tenant are in its database there too.
            for r in &mut one.replica_urls {
                r.0 = with_database(&r.0, tenant)?;
            }
        }
    }
    Ok(one)
}

/// `url` with `search_path` set to `schema` by the startup `options`: whether that reaches the
/// server tells a real session from a pooler's (see `discover::check_search_path`).
pub(super) fn with_search_path(url: &str, schema: &str) -> Result<String, String> {
    let url = postgres_url(url)?;
    if url.contains("options=") {
        return Err(
            "tenants.schemas sets the URL's options parameter; remove it from the URL".into(),
        );
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{sep}options=-c%20search_path%3D{schema}"))
}

/// `url` with its database replaced by `db`.
pub(super) fn with_database(url: &str, db: &str) -> Result<String, String> {
    let url = postgres_url(url)?;
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    // The host part ends at the first `/` after the credentials (whose `@` may not appear
    // unencoded in the password).
    let after_at = base[scheme_end..]
        .rfind('@')
        .map_or(scheme_end, |i| scheme_end + i + 1);
    let host_end = base[after_at..]
        .find('/')
        .map_or(base.len(), |i| after_at + i);
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

fn postgres_url(url: &str) -> Result<&str, String> {
    let url = url.trim();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(url)
    } else {
        Err("tenants need a postgres:// URL (not the key=value form)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_per_tenant() {
        assert_eq!(
            with_database("postgres://u:p%40ss@db:5432/shop?sslmode=require", "shop_7"),
            Ok("postgres://u:p%40ss@db:5432/shop_7?sslmode=require".into())
        );
        assert_eq!(
            with_database("postgresql://db", "t"),
            Ok("postgresql://db/t".into())
        );
        assert_eq!(
            with_search_path("postgres://u@db/shop", "tenant_1"),
            Ok("postgres://u@db/shop?options=-c%20search_path%3Dtenant_1".into())
        );
        assert!(with_search_path("postgres://db/s?options=-cfoo%3D1", "t").is_err());
        assert!(with_database("host=db dbname=shop", "t").is_err());
    }

    #[test]
    fn a_database_tenant_checks_its_own_database_on_the_standbys() {
        let mut cfg = Config::new(
            "postgres://u@db/shop",
            super::super::super::Phase::Contract,
            "",
        );
        cfg.replica_urls = vec![crate::executor::Secret("postgres://u@standby/shop".into())];
        let one = config_for(&cfg, &TenantKind::Databases("shop_%".into()), "shop_7");
        let urls: Vec<String> = one
            .map(|c| c.replica_urls.into_iter().map(|u| u.0).collect())
            .unwrap_or_default();
        assert_eq!(urls, ["postgres://u@standby/shop_7"]);
        let one = config_for(&cfg, &TenantKind::Schemas("t_%".into()), "t_1");
        let urls: Vec<String> = one
            .map(|c| c.replica_urls.into_iter().map(|u| u.0).collect())
            .unwrap_or_default();
        assert_eq!(
            urls,
            ["postgres://u@standby/shop"],
            "a schema tenant is in the same database"
        );
    }

    #[test]
    fn only_plain_names() {
        let s = TenantKind::Schemas("t%".into());
        assert!(plain_name(&s, "tenant_01"));
        assert!(!plain_name(&s, "Tenant"));
        assert!(!plain_name(&s, "t 1"));
        assert!(!plain_name(&s, "t-1"));
        assert!(plain_name(&TenantKind::Databases("t%".into()), "shop-7"));
    }
}
