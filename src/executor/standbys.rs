//! Contract's database check on hot standbys (`spec.database.replicas`): old code reading from a
//! streaming standby never shows in the primary's `pg_stat_activity`, yet it reads the columns
//! contract drops. Each look of the check (the waiting pass and the re-check right before
//! COMMIT) judges every standby's own `pg_stat_activity` by the same rules ([`dbcheck::Checker`],
//! one per standby: virtual transaction ids are per server).
//!
//! Checked on PostgreSQL 15 and 17 standbys: `pg_stat_activity` lists the standby's own
//! sessions with the same visibility rules as on a primary (roles and grants are replicated);
//! its `pg_locks` shows each backend's own virtualxid lock, so the barrier for hidden
//! transactions works the same (the startup process holds a virtualxid of another
//! virtual transaction and is not a client backend of the database).
//!
//! Fail-safe: a standby that cannot be reached or read counts as a blocker (it may serve old
//! code), named by address, never by URL. Discovery reads the primary's `pg_stat_replication`:
//! physical walsenders whose receiver replays WAL (`replay_lsn` set), not logical replication
//! (the walsender is connected to a database), `pg_basebackup` (state `backup`) or
//! `pg_receivewal` (no replay position). A walsender whose details are hidden (no
//! `pg_read_all_stats`) or that has no address (Unix socket) is a blocker too.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio_postgres::config::Host;
use tokio_postgres::{Client, GenericClient};

use super::connect::{self, ConnSettings, Scrubber};
use super::dbcheck::{self, Blocker, Reason};
use super::error::InvalidUrl;
use super::waits::{Kind, Waits};
use super::{Config, Secret};
use crate::protocol::env::REPLICA_URLS;

/// Connecting to a standby while waiting (at most; `PHASEGATE_CONNECT_TIMEOUT` if shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One look at a standby (connecting included) while waiting outside the locks.
const LOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// One look at every standby inside the transaction, locks held: short, so that a standby that
/// stopped answering stalls the application's queries on the primary for no longer than this.
const RECHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One standby: where it is, its connection (kept between looks) and its own check state.
struct Standby {
    /// `standby <host>:<port>`, with ` (PHASEGATE_REPLICA_URL_<i>)` or ` (discovered)` in errors.
    label: String,
    origin: &'static str,
    settings: ConnSettings,
    client: Option<Client>,
    checker: dbcheck::Checker,
}

/// The standbys of one run.
pub(super) struct Standbys {
    listed: Vec<Standby>,
    /// With discovery: the primary's connection settings, for the standbys it finds.
    discover: Option<ConnSettings>,
    /// Discovered standbys by address, kept for the run once found.
    found: BTreeMap<String, Standby>,
    /// A fresh checker (no state yet) for each new standby.
    template: dbcheck::Checker,
    connect_timeout: Duration,
    recheck_timeout: Duration,
    scrub: Scrubber,
}

impl Standbys {
    /// The standbys to check, or None when none are configured.
    pub(super) fn new(
        cfg: &Config,
        template: &dbcheck::Checker,
    ) -> Result<Option<Standbys>, InvalidUrl> {
        if cfg.replica_urls.is_empty() && !cfg.replica_discover {
            return Ok(None);
        }
        let mut secrets = Vec::new();
        let mut listed = Vec::new();
        for (i, Secret(url)) in cfg.replica_urls.iter().enumerate() {
            let name = REPLICA_URLS.get(i).copied().unwrap_or("--replica-url");
            let settings = connect::parse(url).map_err(|_| InvalidUrl { name })?;
            secrets.extend(settings.secrets(url));
            listed.push(Standby::new(settings, name, template));
        }
        let discover = if cfg.replica_discover {
            let primary = connect::parse(&cfg.database_url.0).map_err(|_| InvalidUrl {
                name: "PHASEGATE_DATABASE_URL",
            })?;
            secrets.extend(primary.secrets(&cfg.database_url.0));
            Some(primary)
        } else {
            None
        };
        tracing::info!(
            listed = listed.len(),
            discover = discover.is_some(),
            "database check: hot standbys are checked too"
        );
        Ok(Some(Standbys {
            listed,
            discover,
            found: BTreeMap::new(),
            template: template.clone(),
            connect_timeout: cfg.connect_timeout.min(CONNECT_TIMEOUT),
            // Within lock_timeout: what an attempt may cost the application anyway.
            recheck_timeout: cfg
                .lock_timeout
                .clamp(Duration::from_millis(200), RECHECK_TIMEOUT),
            scrub: Scrubber::new(secrets),
        }))
    }

    /// The warning for the report when a standby hid sessions from the check.
    pub(super) fn warning(&self) -> Option<String> {
        self.all()
            .find_map(|s| s.checker.warning())
            .map(|w| w.replacen("database check", "database check on a standby", 1))
    }

    fn all(&self) -> impl Iterator<Item = &Standby> {
        self.listed.iter().chain(self.found.values())
    }

    /// Looks once at every standby (discovering them first, on `primary`), all at once, each
    /// within `limit`. A standby that cannot be read is a blocker too.
    pub(super) async fn look<C: GenericClient>(
        &mut self,
        primary: &C,
        limit: Duration,
    ) -> Result<Vec<Blocker>, tokio_postgres::Error> {
        let mut out = Vec::new();
        if self.discover.is_some() {
            let rows = discover(primary).await?;
            out.extend(self.update_found(rows));
        }
        let connect_timeout = self.connect_timeout.min(limit);
        let scrub = &self.scrub;
        let looks = self
            .listed
            .iter_mut()
            .chain(self.found.values_mut())
            .map(|s| s.look(connect_timeout, limit, scrub));
        for seen in futures::future::join_all(looks).await {
            out.extend(seen);
        }
        Ok(out)
    }

    /// Inside the transaction, right before COMMIT: one short look.
    pub(super) async fn recheck<C: GenericClient>(
        &mut self,
        tx: &C,
    ) -> Result<Vec<Blocker>, tokio_postgres::Error> {
        let limit = self.recheck_timeout;
        self.look(tx, limit).await
    }

    /// Polls every [`dbcheck::POLL`] until no standby has a blocker or `budget` runs out;
    /// returns the time waited and the blockers still there.
    pub(super) async fn wait_until_clear(
        &mut self,
        primary: &Client,
        budget: Duration,
        waits: &mut Waits,
    ) -> Result<(Duration, Vec<Blocker>), tokio_postgres::Error> {
        let start = Instant::now();
        let mut waited = false;
        loop {
            let seen = self.look(primary, LOOK_TIMEOUT).await?;
            if seen.is_empty() {
                waits.done(Kind::DatabaseCheck);
                // Only time spent waiting for a blocker counts, not the look itself.
                let w = if waited {
                    start.elapsed()
                } else {
                    Duration::ZERO
                };
                return Ok((w, Vec::new()));
            }
            if start.elapsed() >= budget {
                return Ok((start.elapsed(), seen));
            }
            for b in &seen {
                dbcheck::announce(waits, b);
            }
            waited = true;
            tokio::time::sleep(dbcheck::POLL).await;
        }
    }

    /// Keeps the discovered standbys in step with the primary's walsenders; returns blockers
    /// for walsenders that cannot be checked.
    /// Adds the standbys the primary streams to now; returns blockers for walsenders that
    /// cannot be checked. A standby found once stays for the run: one whose replication
    /// connection dropped may still serve old code (fail-safe: unreachable, it holds contract).
    fn update_found(&mut self, rows: Vec<Walsender>) -> Vec<Blocker> {
        let Some(primary) = &self.discover else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for w in rows {
            match w.target() {
                Target::Skip => {}
                Target::Unchecked(why) => out.push(unreachable(&w.label(), why)),
                Target::Addr(addr) if !self.found.contains_key(&addr) => {
                    let settings = at_address(primary, &addr);
                    let label = format!("standby {}", address(&settings.config));
                    if self.listed.iter().any(|l| l.label == label) {
                        continue; // listed too: checked once
                    }
                    let s = Standby::new(settings, "discovered", &self.template);
                    self.found.insert(addr, s);
                }
                Target::Addr(_) => {}
            }
        }
        out
    }
}

impl Standby {
    fn new(settings: ConnSettings, origin: &'static str, template: &dbcheck::Checker) -> Standby {
        let label = format!("standby {}", address(&settings.config));
        Standby {
            label,
            origin,
            settings,
            client: None,
            checker: template.clone(),
        }
    }

    /// One look within `limit`: its blockers, or itself as one when it cannot be read.
    async fn look(
        &mut self,
        connect_timeout: Duration,
        limit: Duration,
        scrub: &Scrubber,
    ) -> Vec<Blocker> {
        let result = tokio::time::timeout(limit, self.observe(connect_timeout, scrub)).await;
        let why = match result {
            Ok(Ok(seen)) => {
                return seen
                    .blockers
                    .into_iter()
                    .map(|mut b| {
                        b.place = Some(format!("pid {} on {}", b.pid, self.label));
                        b
                    })
                    .collect()
            }
            Ok(Err(why)) => why,
            Err(_) => format!("no answer within {}", humantime::format_duration(limit)),
        };
        // The connection may be stuck or broken: open a new one next time.
        self.client = None;
        vec![unreachable(
            &format!("{} ({})", self.label, self.origin),
            scrub.scrub(&why),
        )]
    }

    async fn observe(
        &mut self,
        connect_timeout: Duration,
        scrub: &Scrubber,
    ) -> Result<dbcheck::Observation, String> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let client = connect::connect(&self.settings, connect_timeout, scrub)
                .await
                .map_err(|e| e.to_string())?;
            // Reads only; a standby refuses writes anyway, this says so for anything else.
            client
                .batch_execute("SET default_transaction_read_only = on")
                .await
                .map_err(|e| connect::describe(&e).1)?;
            self.client = Some(client);
        }
        let Some(client) = self.client.as_ref() else {
            return Err("not connected".into());
        };
        self.checker
            .observe(client)
            .await
            .map_err(|e| connect::describe(&e).1)
    }
}

/// `host:port` of the first host of a connection config (no user, password or database).
fn address(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => config
            .get_hostaddrs()
            .first()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "localhost".into()),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The primary's settings with another host: the same user, password, database, port,
/// options and TLS settings.
fn at_address(primary: &ConnSettings, addr: &str) -> ConnSettings {
    let p = &primary.config;
    let mut c = tokio_postgres::Config::new();
    c.host(addr);
    if let Some(port) = p.get_ports().first() {
        c.port(*port);
    }
    if let Some(u) = p.get_user() {
        c.user(u);
    }
    if let Some(pw) = p.get_password() {
        c.password(pw);
    }
    if let Some(db) = p.get_dbname() {
        c.dbname(db);
    }
    if let Some(o) = p.get_options() {
        c.options(o);
    }
    if let Some(a) = p.get_application_name() {
        c.application_name(a);
    }
    c.ssl_mode(p.get_ssl_mode());
    c.channel_binding(p.get_channel_binding());
    ConnSettings {
        config: c,
        ssl_mode: primary.ssl_mode,
        root_cert: primary.root_cert.clone(),
    }
}

/// A standby (or walsender) that cannot be checked, as a blocker.
fn unreachable(server: &str, why: String) -> Blocker {
    Blocker {
        pid: 0,
        application: String::new(),
        state: String::new(),
        xact_ms: None,
        reason: Reason::Unchecked { why },
        place: Some(server.to_string()),
    }
}

/// One row of the primary's `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq)]
struct Walsender {
    pid: i32,
    application: String,
    /// `host(client_addr)`.
    addr: Option<String>,
    state: Option<String>,
    replays: bool,
    /// Connected to a database: logical replication.
    logical: bool,
}

enum Target {
    Skip,
    Unchecked(String),
    Addr(String),
}

impl Walsender {
    fn label(&self) -> String {
        format!("walsender pid {} ({})", self.pid, self.application)
    }

    /// Whether and where this walsender's receiver is checked.
    fn target(&self) -> Target {
        let Some(state) = &self.state else {
            return Target::Unchecked(
                "pg_stat_replication hides its address and state from the migration role (GRANT pg_read_all_stats to it, or list the standbys in urlSecretRefs and turn discover off)".into(),
            );
        };
        if self.logical || state == "backup" || !self.replays {
            return Target::Skip;
        }
        match &self.addr {
            Some(a) => Target::Addr(a.clone()),
            None => Target::Unchecked(
                "it is connected over a Unix socket, so it has no address to check (list it in urlSecretRefs and turn discover off)".into(),
            ),
        }
    }
}

/// The primary's walsenders (`pg_stat_replication`, with `pg_stat_activity`'s database).
async fn discover<C: GenericClient>(primary: &C) -> Result<Vec<Walsender>, tokio_postgres::Error> {
    let rows = primary
        .query_typed(
            "SELECT r.pid, coalesce(r.application_name, ''), host(r.client_addr), r.state,
                    r.replay_lsn IS NOT NULL, a.datid IS NOT NULL
               FROM pg_stat_replication r
               LEFT JOIN pg_stat_activity a ON a.pid = r.pid
              ORDER BY r.pid",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Walsender {
            pid: r.get(0),
            application: r.get(1),
            addr: r.get(2),
            state: r.get(3),
            replays: r.get(4),
            logical: r.get::<_, Option<bool>>(5).unwrap_or(false),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(addr: Option<&str>, state: Option<&str>, replays: bool, logical: bool) -> Walsender {
        Walsender {
            pid: 7,
            application: "walreceiver".into(),
            addr: addr.map(str::to_string),
            state: state.map(str::to_string),
            replays,
            logical,
        }
    }

    #[test]
    fn which_walsenders_are_standbys() {
        let t = |w: Walsender| match w.target() {
            Target::Skip => "skip".to_string(),
            Target::Unchecked(why) => format!("unchecked: {why}"),
            Target::Addr(a) => a,
        };
        assert_eq!(
            t(ws(Some("10.0.0.5"), Some("streaming"), true, false)),
            "10.0.0.5"
        );
        assert_eq!(
            t(ws(Some("10.0.0.5"), Some("catchup"), true, false)),
            "10.0.0.5"
        );
        // Logical replication, pg_basebackup, pg_receivewal.
        assert_eq!(
            t(ws(Some("10.0.0.6"), Some("streaming"), true, true)),
            "skip"
        );
        assert_eq!(
            t(ws(Some("10.0.0.7"), Some("backup"), false, false)),
            "skip"
        );
        assert_eq!(
            t(ws(Some("10.0.0.8"), Some("streaming"), false, false)),
            "skip"
        );
        // Hidden without pg_read_all_stats; over a Unix socket.
        assert!(t(ws(None, None, false, false)).contains("pg_read_all_stats"));
        assert!(t(ws(None, Some("streaming"), true, false)).contains("Unix socket"));
    }

    #[test]
    fn discovered_standbys_use_the_primarys_settings_at_their_address() {
        let p = connect::parse("postgres://mig:s3cret@db.example:6432/shop?sslmode=disable")
            .expect("parses");
        let s = at_address(&p, "10.0.0.5");
        assert_eq!(address(&s.config), "10.0.0.5:6432");
        assert_eq!(s.config.get_user(), Some("mig"));
        assert_eq!(s.config.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(s.config.get_dbname(), Some("shop"));
        assert_eq!(s.ssl_mode, connect::SslMode::Disable);
        assert_eq!(address(&at_address(&p, "fd00::5").config), "[fd00::5]:6432");
    }

    #[test]
    fn a_discovered_standby_stays_for_the_run_and_a_listed_one_is_not_added_twice() {
        let mut cfg = Config::new("postgres://u:pw@db/shop", super::super::Phase::Contract, "");
        cfg.replica_discover = true;
        cfg.replica_urls = vec![Secret("postgres://u:pw@10.0.0.9/shop".into())];
        let checker = dbcheck::Checker::new("2.0.0", None, None);
        let Ok(Some(mut s)) = Standbys::new(&cfg, &checker) else {
            panic!("standbys configured");
        };
        let rows = vec![
            ws(Some("10.0.0.5"), Some("streaming"), true, false),
            ws(Some("10.0.0.9"), Some("streaming"), true, false),
        ];
        assert!(s.update_found(rows).is_empty());
        assert_eq!(s.found.keys().collect::<Vec<_>>(), ["10.0.0.5"]);
        // Its replication connection dropped: still checked.
        assert!(s.update_found(Vec::new()).is_empty());
        assert_eq!(s.found.len(), 1);
        let hidden = s.update_found(vec![ws(None, None, false, false)]);
        assert!(hidden[0]
            .to_string()
            .starts_with("walsender pid 7 (walreceiver) could not be checked"));
    }

    #[test]
    fn a_bad_standby_url_is_named_by_its_variable_only() {
        let mut cfg = Config::new("postgres://u:pw@db/shop", super::super::Phase::Contract, "");
        let checker = dbcheck::Checker::new("2.0.0", None, None);
        assert!(Standbys::new(&cfg, &checker).is_ok_and(|s| s.is_none()));
        cfg.replica_urls = vec![
            Secret("postgres://u:pw@standby-0/shop".into()),
            Secret("hunter2 s3cret=".into()),
        ];
        let e = Standbys::new(&cfg, &checker).err().map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(
            e.starts_with("PHASEGATE_REPLICA_URL_1 is not a valid"),
            "{e}"
        );
        assert!(!e.contains("hunter2") && !e.contains("s3cret"), "{e}");
    }

    #[test]
    fn an_unreadable_standby_is_named_by_address_only() {
        let b = unreachable(
            "standby 10.0.0.5:5432 (PHASEGATE_REPLICA_URL_0)",
            "could not connect to the database: Connection refused".into(),
        );
        assert_eq!(
            b.to_string(),
            "standby 10.0.0.5:5432 (PHASEGATE_REPLICA_URL_0) could not be checked: could not connect to the database: Connection refused"
        );
    }
}
