//! Contract's database check behind PgBouncer (`spec.database.pooler`): in transaction pooling
//! an idle client holds no server connection, so the server's `pg_stat_activity` cannot show
//! an old application version that is still connected. PgBouncer's admin console can:
//! `SHOW CLIENTS` lists every client with its `application_name`, idle ones included (column
//! present in PgBouncer 1.18, checked on Debian's package). On each look of the check (while
//! waiting, and inside the transaction right before COMMIT) every address the pooler's host
//! name resolves to is asked — a headless Service lists every PgBouncer pod — and each client
//! is judged by the same version rule as a session ([`Checker::judged`], `VersionRule`).
//!
//! Fail-safe: a pooler whose clients cannot be read (unreachable, authentication refused, not a
//! stats user, no such column) is a blocker with the reason, so contract waits and then fails
//! with it; it never passes unseen. The transaction rule does not apply here: a client in a
//! transaction holds a server connection, which `pg_stat_activity` shows.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::connect::{self, ConnSettings, Scrubber};
use super::dbcheck::{app_version_of, Blocker, Checker, MoreSessions, Reason};
use crate::protocol::env::Secret;

/// The admin console's virtual database.
const ADMIN_DATABASE: &str = "pgbouncer";
/// The longest one address may take to answer a look (connect and `SHOW CLIENTS`): the
/// look before COMMIT runs with the contract's locks held.
const LOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// `spec.database.pooler` as the executor gets it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolerConfig {
    /// `PHASEGATE_POOLER_ADMIN_URL`; None: the database URL with the database `pgbouncer`.
    pub admin_url: Option<Secret>,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolerError {
    #[error("invalid pooler admin URL: {0}")]
    Url(#[from] connect::ConnectError),
    #[error("the pooler admin URL must name exactly one host, not {0}")]
    Hosts(usize),
    #[error("cannot resolve the host name: {0}")]
    Resolve(String),
    #[error("no answer within {} s", LOOK_TIMEOUT.as_secs())]
    Timeout,
    #[error("{0}")]
    Query(String),
    #[error("SHOW CLIENTS has no {0} column (PgBouncer 1.18 or later is needed)")]
    Column(&'static str),
}

/// The admin console's connection settings: `admin_url`, else `database_url` with the
/// database name `pgbouncer` (same host, port, user, password and TLS settings).
pub fn admin_settings(
    database_url: &Secret,
    admin_url: Option<&Secret>,
) -> Result<ConnSettings, PoolerError> {
    let mut settings = connect::parse(&admin_url.unwrap_or(database_url).0)?;
    if admin_url.is_none() {
        settings.config.dbname(ADMIN_DATABASE);
    }
    let hosts = settings.config.get_hosts().len();
    if hosts != 1 {
        return Err(PoolerError::Hosts(hosts));
    }
    Ok(settings)
}

/// With no pooler declared: a warning when the server's own port (`inet_server_port()`, read by
/// [`server_port`]) is not the one the URL connects to, which is what PgBouncer (conventionally
/// on 6432) in between looks like. Cheap (one query) but partial: a pooler on the server's port
/// (CloudNativePG's Poolers listen on 5432) is not noticed, and a Service that maps ports is
/// taken for one.
pub fn undeclared_pooler_warning(
    server_port: Option<i32>,
    settings: &ConnSettings,
) -> Option<String> {
    let [_] = settings.config.get_hosts() else {
        return None; // several hosts: which one answered is unknown
    };
    let url_port = settings.config.get_ports().first().copied().unwrap_or(5432);
    let server_port = server_port?;
    (server_port != i32::from(url_port)).then(|| {
        format!(
            "the server listens on port {server_port} but the database URL connects to port \
             {url_port}: probably through a connection pooler, whose idle clients the database \
             check cannot see in pg_stat_activity; declare spec.database.pooler \
             (PHASEGATE_POOLER) so that it reads them from PgBouncer's SHOW CLIENTS"
        )
    })
}

/// The port the server listens on (`inet_server_port()`); None over a Unix socket, or when it
/// cannot be read.
pub async fn server_port(client: &Client) -> Option<i32> {
    let row = client
        .query_typed_one("SELECT inet_server_port()", &[])
        .await
        .ok()?;
    row.get::<_, Option<i32>>(0)
}

/// One pooler address: its name in messages, and the settings that reach exactly it.
struct Address {
    label: String,
    settings: ConnSettings,
}

/// The pooler's admin consoles, with one connection kept open per address between looks (the
/// look before COMMIT then costs one round trip, not a login).
pub struct PoolerClients {
    settings: Result<ConnSettings, String>,
    scrub: Scrubber,
    connect_timeout: Duration,
    open: HashMap<String, Client>,
}

impl PoolerClients {
    pub fn new(
        cfg: &PoolerConfig,
        database_url: &Secret,
        connect_timeout: Duration,
        scrub: Scrubber,
    ) -> PoolerClients {
        let settings =
            admin_settings(database_url, cfg.admin_url.as_ref()).map_err(|e| e.to_string());
        PoolerClients {
            settings,
            scrub,
            connect_timeout: connect_timeout.min(LOOK_TIMEOUT),
            open: HashMap::new(),
        }
    }

    /// Every blocker on every address of the pooler now.
    async fn blockers(&mut self, checker: &Checker) -> Vec<Blocker> {
        let addresses = match self.addresses().await {
            Ok(a) => a,
            Err((label, e)) => return vec![self.unreadable(label, &e)],
        };
        let mut out = Vec::new();
        for a in addresses {
            match self.clients(&a).await {
                Ok(clients) => out.extend(judge(checker, &a.label, &clients)),
                Err(e) => {
                    // A broken connection is opened again on the next look.
                    self.open.remove(&a.label);
                    out.push(self.unreadable(a.label, &e));
                }
            }
        }
        out
    }

    /// The pooler's addresses, resolved anew on every look: PgBouncer pods come and go.
    async fn addresses(&self) -> Result<Vec<Address>, (String, PoolerError)> {
        let base = self
            .settings
            .as_ref()
            .map_err(|e| ("pooler".to_string(), PoolerError::Query(e.clone())))?;
        let port = base.config.get_ports().first().copied().unwrap_or(5432);
        let host = match base.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            // A Unix socket: one PgBouncer, as configured.
            _ => return Ok(vec![address(base, format!("pooler port {port}"), None)]),
        };
        if let Some(ip) = base.config.get_hostaddrs().first() {
            let label = format!("pooler {}", SocketAddr::new(*ip, port));
            return Ok(vec![address(base, label, None)]);
        }
        let label = format!("pooler {host}:{port}");
        let found = tokio::time::timeout(LOOK_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| (label.clone(), PoolerError::Timeout))?
            .map_err(|e| (label.clone(), PoolerError::Resolve(e.to_string())))?;
        let mut ips: Vec<IpAddr> = found.map(|a| a.ip()).collect();
        ips.sort();
        ips.dedup();
        Ok(ips
            .into_iter()
            .map(|ip| {
                let label = format!("pooler {}", SocketAddr::new(ip, port));
                address(base, label, Some(ip))
            })
            .collect())
    }

    /// `SHOW CLIENTS` on one address, over the connection kept for it.
    async fn clients(&mut self, a: &Address) -> Result<Vec<ClientRow>, PoolerError> {
        if !self.open.contains_key(&a.label) {
            let connected = tokio::time::timeout(
                LOOK_TIMEOUT,
                connect::connect(&a.settings, self.connect_timeout, &self.scrub),
            )
            .await
            .map_err(|_| PoolerError::Timeout)?
            .map_err(login_error)?;
            self.open.insert(a.label.clone(), connected);
        }
        let Some(client) = self.open.get(&a.label) else {
            return Err(PoolerError::Timeout);
        };
        // The admin console speaks only the simple query protocol.
        let messages = tokio::time::timeout(LOOK_TIMEOUT, client.simple_query("SHOW CLIENTS"))
            .await
            .map_err(|_| PoolerError::Timeout)?
            .map_err(|e| PoolerError::Query(connect::describe(&e).1))?;
        parse_clients(&messages)
    }

    fn unreadable(&self, label: String, e: &PoolerError) -> Blocker {
        Blocker {
            pid: 0,
            place: Some(label),
            application: String::new(),
            state: String::new(),
            xact_ms: None,
            reason: Reason::PoolerUnreadable(self.scrub.scrub(&e.to_string())),
        }
    }
}

impl MoreSessions for PoolerClients {
    fn look<'a>(&'a mut self, checker: &'a Checker) -> BoxFuture<'a, Vec<Blocker>> {
        Box::pin(self.blockers(checker))
    }
}

/// PgBouncer's own words (the wrapper would speak of "the database"), with what its terse
/// refusal of a user outside `stats_users`/`admin_users` means.
fn login_error(e: connect::ConnectError) -> PoolerError {
    let message = match e {
        connect::ConnectError::Connect { message, .. } => message,
        other => other.to_string(),
    };
    if message.trim() == "not allowed" {
        return PoolerError::Query(
            "not allowed (the user is in neither stats_users nor admin_users of PgBouncer)".into(),
        );
    }
    PoolerError::Query(message)
}

fn address(base: &ConnSettings, label: String, ip: Option<IpAddr>) -> Address {
    let mut config = base.config.clone();
    if let Some(ip) = ip {
        // The host name stays for TLS verification; the address picks one PgBouncer.
        config.hostaddr(ip);
    }
    Address {
        label,
        settings: ConnSettings {
            config,
            ssl_mode: base.ssl_mode,
            root_cert: base.root_cert.clone(),
        },
    }
}

/// One row of `SHOW CLIENTS`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRow {
    pub database: String,
    pub state: String,
    pub addr: String,
    pub port: String,
    pub application_name: String,
}

/// The rows of `SHOW CLIENTS`, by column name (the columns' order changes between versions).
pub fn parse_clients(messages: &[SimpleQueryMessage]) -> Result<Vec<ClientRow>, PoolerError> {
    let mut out = Vec::new();
    for m in messages {
        let SimpleQueryMessage::Row(row) = m else {
            continue;
        };
        let col = |name: &'static str| -> Result<String, PoolerError> {
            match row.try_get(name) {
                Ok(v) => Ok(v.unwrap_or_default().to_string()),
                Err(_) => Err(PoolerError::Column(name)),
            }
        };
        out.push(ClientRow {
            database: col("database")?,
            state: col("state")?,
            addr: col("addr")?,
            port: col("port")?,
            application_name: col("application_name")?,
        });
    }
    Ok(out)
}

/// The clients of one pooler that block contract: an `<app>@<version>` the check judges,
/// older than the app version. Admin console clients (the executor's own look among them) are
/// not application sessions; the executor's pooled connections are named `phasegate` unless its
/// URL says otherwise, and are judged like any client then, as on the server.
fn judge(checker: &Checker, label: &str, clients: &[ClientRow]) -> Vec<Blocker> {
    if checker.want.is_empty() {
        return Vec::new();
    }
    clients
        .iter()
        .filter(|c| c.database != ADMIN_DATABASE && checker.judged(&c.application_name))
        .filter_map(|c| {
            let version = app_version_of(&c.application_name)?;
            (!checker.rule.satisfied_by(version)).then(|| Blocker {
                pid: 0,
                place: Some(format!("{label} client {}:{}", c.addr, c.port)),
                application: c.application_name.clone(),
                state: c.state.clone(),
                xact_ms: None,
                reason: Reason::OldVersion {
                    version: version.to_string(),
                    want: checker.want.clone(),
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(db: &str, app: &str) -> ClientRow {
        ClientRow {
            database: db.into(),
            state: "idle".into(),
            addr: "10.1.2.3".into(),
            port: "54012".into(),
            application_name: app.into(),
        }
    }

    #[test]
    fn clients_are_judged_like_sessions() {
        let checker = Checker::new(
            "2.0.0",
            None,
            super::super::dbcheck::parse_application_names("shop-api"),
        );
        let clients = [
            client("shop", "shop-api@1.0.0"),
            client("shop", "shop-api@2.0.0"),
            client("shop", "billing@1.0.0"),
            client("shop", "shop-api@1.0.0 - 10.1.2.3:54012"),
            client("pgbouncer", "shop-api@1.0.0"),
            client("shop", "phasegate"),
        ];
        let found = judge(&checker, "pooler 10.0.0.5:6432", &clients);
        let text: Vec<String> = found.iter().map(|b| b.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "pooler 10.0.0.5:6432 client 10.1.2.3:54012 (shop-api@1.0.0, idle): application version 1.0.0 is older than 2.0.0",
                "pooler 10.0.0.5:6432 client 10.1.2.3:54012 (shop-api@1.0.0 - 10.1.2.3:54012, idle): application version 1.0.0 is older than 2.0.0",
            ]
        );
        // No app version: the version rule is off, here as on the server.
        assert!(judge(&Checker::new("", None, None), "p", &clients).is_empty());
    }

    #[test]
    fn the_admin_url_defaults_to_the_database_url_on_database_pgbouncer() {
        let db = Secret("postgresql://app:pw@shop-pooler:5432/shop?sslmode=require".into());
        let s = admin_settings(&db, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.config.get_dbname(), Some("pgbouncer"));
        assert_eq!(s.config.get_user(), Some("app"));
        assert_eq!(s.config.get_ports(), &[5432]);
        let admin = Secret("postgres://stats:x@10.0.0.5:6432/pgbouncer".into());
        let s = admin_settings(&db, Some(&admin)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.config.get_user(), Some("stats"));
        let two = Secret("host=a,b user=u dbname=pgbouncer".into());
        assert!(matches!(
            admin_settings(&db, Some(&two)),
            Err(PoolerError::Hosts(2))
        ));
    }

    #[test]
    fn an_unreadable_pooler_says_so_without_the_password() {
        let db = Secret("postgres://app:hunter2@127.0.0.1:6432/shop".into());
        let p = PoolerClients::new(
            &PoolerConfig::default(),
            &db,
            Duration::from_secs(1),
            Scrubber::for_url(&db.0),
        );
        let b = p.unreadable(
            "pooler 127.0.0.1:6432".into(),
            &PoolerError::Query("password authentication failed for hunter2".into()),
        );
        assert_eq!(
            b.to_string(),
            "pooler 127.0.0.1:6432: clients cannot be read: password authentication failed for ***"
        );
    }
}
