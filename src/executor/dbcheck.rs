//! The database-side check before contract: no session of an older application version and no
//! transaction that began before the rollout completed may still be connected to the database.
//!
//! Convention for applications: set `application_name` to `<app>@<version>` (libpq URL
//! parameter `application_name=shop-api%401.4.2`, `PGAPPNAME`, or `SET application_name`). A
//! backend whose name has that form with a version that is not at least the migration's
//! `appVersion` (semantic-version order where both parse, equality otherwise) blocks contract.
//! With `PHASEGATE_APPLICATION_NAMES` only sessions whose `<app>` is one of the migration's own
//! applications are judged by version (another application sharing the database has its own
//! versions); the transaction rule applies to every session either way.
//!
//! Visibility (checked on PostgreSQL 15): for sessions of roles the executor's role is not a
//! member of, `pg_stat_activity` shows only `pid`, `datid`/`datname`, `usesysid`/`usename`,
//! `application_name`, `backend_xid` and `backend_xmin`; `backend_type`, `state`, `xact_start`,
//! `backend_start`, `query_start`, `leader_pid` and wait events are NULL and `query` reads
//! `<insufficient privilege>`, unless the role has `pg_read_all_stats` (or is superuser).
//! `pg_locks` is not filtered. So the version rule always works; for the transaction rule a
//! hidden session's start time is unknown, and we fall back to a barrier, as
//! `CREATE INDEX CONCURRENTLY` does: every transaction such a session had open when the check
//! first looked (its virtual transaction id in `pg_locks`) must end. That is safe but may wait
//! for young transactions too; the report carries a warning recommending the grant.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient};

use super::waits::{Kind, Waits};
use crate::planner::version::VersionRule;

/// Poll interval while blockers exist.
pub const POLL: Duration = Duration::from_millis(200);
/// Blockers named in the failure message.
pub const MAX_NAMED: usize = 5;

/// The version part of an `<app>@<version>` application name (split at the last `@`), if any.
/// A ` - <host>:<port>` suffix, which PgBouncer appends with `application_name_add_host`, is
/// not part of it.
pub fn app_version_of(application_name: &str) -> Option<&str> {
    let (app, version) = without_pooler_host(application_name).rsplit_once('@')?;
    let version = version.trim();
    if app.trim().is_empty() || version.is_empty() || version.contains(char::is_whitespace) {
        return None;
    }
    Some(version)
}

/// The `<app>` part of an `<app>@<version>` application name, if it has that form.
pub fn app_of(application_name: &str) -> Option<&str> {
    app_version_of(application_name)?;
    without_pooler_host(application_name)
        .rsplit_once('@')
        .map(|(app, _)| app.trim())
}

/// `application_name` without the ` - <host>:<port>` PgBouncer's `application_name_add_host`
/// appends (the client's address; the port is digits, the address has no spaces).
fn without_pooler_host(application_name: &str) -> &str {
    let Some((name, host)) = application_name.rsplit_once(" - ") else {
        return application_name;
    };
    let port_ok = host.rsplit_once(':').is_some_and(|(addr, port)| {
        !addr.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
    });
    if port_ok && !host.contains(char::is_whitespace) {
        name
    } else {
        application_name
    }
}

/// Parses `PHASEGATE_APPLICATION_NAMES`: comma-separated `<app>` names; None when there are none.
pub fn parse_application_names(list: &str) -> Option<Vec<String>> {
    let names: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    (!names.is_empty()).then_some(names)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// `application_name` carries this version, older than the one contract needs.
    OldVersion { version: String, want: String },
    /// The transaction began before the rollout completed.
    OldTransaction,
    /// A session pg_stat_activity hides from us had this transaction open when we first looked.
    HiddenTransaction,
    /// The clients of a pooler (`place`) cannot be read: fail-safe, it blocks like an old
    /// session (the error, scrubbed).
    PoolerUnreadable(String),
    /// A server that must be checked (a hot standby, `place`) could not be: it may serve old
    /// code (fail-safe; the error, scrubbed).
    Unchecked { why: String },
}

/// A session in the way (no query text: it may hold user data).
#[derive(Debug, Clone, PartialEq)]
pub struct Blocker {
    pub pid: i32,
    /// Where it is when not a backend of this server (a pooler's client, `pid N on standby
    /// <host>:<port>`): named instead of the pid.
    pub place: Option<String>,
    pub application: String,
    pub state: String,
    /// Age of its transaction, when it has one and we may see it.
    pub xact_ms: Option<f64>,
    pub reason: Reason,
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Reason::Unchecked { why } = &self.reason {
            let place = self.place.as_deref().unwrap_or("server");
            return write!(f, "{place} could not be checked: {why}");
        }
        let app = if self.application.is_empty() {
            "no application_name"
        } else {
            &self.application
        };
        if let (Some(place), Reason::PoolerUnreadable(e)) = (&self.place, &self.reason) {
            return write!(f, "{place}: clients cannot be read: {e}");
        }
        match &self.place {
            Some(place) => write!(f, "{place} ({app}")?,
            None => write!(f, "pid {} ({app}", self.pid)?,
        }
        if !self.state.is_empty() {
            write!(f, ", {}", self.state)?;
        }
        f.write_str("): ")?;
        match &self.reason {
            Reason::OldVersion { version, want } => {
                write!(f, "application version {version} is older than {want}")?
            }
            Reason::OldTransaction => f.write_str("transaction began before the rollout completed")?,
            Reason::HiddenTransaction => f.write_str(
                "transaction of another role, open since before the check began (start time hidden without pg_read_all_stats)",
            )?,
            Reason::PoolerUnreadable(e) => write!(f, "clients cannot be read: {e}")?,
            Reason::Unchecked { why } => write!(f, "could not be checked: {why}")?,
        }
        if let Some(ms) = self.xact_ms {
            write!(f, ", transaction open for {:.1} s", ms / 1000.0)?;
        }
        Ok(())
    }
}

/// What one look at the database found.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub blockers: Vec<Blocker>,
    /// Sessions in this database whose details pg_stat_activity hides from us.
    pub hidden: usize,
}

/// The sessions of this database but ours ([`Checker::sessions`]), with the virtual transaction
/// id of each one's open transaction from `pg_locks`, for the sessions whose details are hidden.
const SESSIONS_AND_VXIDS: &str = "WITH v AS (
         SELECT pid, virtualxid FROM pg_locks
          WHERE locktype = 'virtualxid' AND granted AND pid IS NOT NULL
            AND virtualxid = virtualtransaction)
     SELECT a.pid, coalesce(a.application_name, ''), a.backend_type, coalesce(a.state, ''),
            (extract(epoch FROM clock_timestamp() - a.xact_start) * 1000)::float8,
            a.xact_start < $1::text::timestamptz,
            v.virtualxid::text,
            clock_timestamp() < $1::text::timestamptz
       FROM pg_stat_activity a
       LEFT JOIN v ON v.pid = a.pid
      WHERE a.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND a.pid <> pg_backend_pid()
        AND a.usesysid IS NOT NULL
      ORDER BY a.pid";

/// [`SESSIONS_AND_VXIDS`] for a role that sees every session: the same columns, no virtual
/// transaction ids, and the function under `pg_stat_activity` read directly (a third of the
/// planning, which a fleet pays twice per tenant).
const SESSIONS: &str = "SELECT a.pid, coalesce(a.application_name, ''), a.backend_type,
            coalesce(a.state, ''),
            (extract(epoch FROM clock_timestamp() - a.xact_start) * 1000)::float8,
            a.xact_start < $1::text::timestamptz,
            NULL::text,
            clock_timestamp() < $1::text::timestamptz
       FROM pg_stat_get_activity(NULL) a
      WHERE a.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND a.pid <> pg_backend_pid()
        AND a.usesysid IS NOT NULL
      ORDER BY a.pid";

/// State of the check across polls and attempts within one run.
#[derive(Debug, Clone)]
pub struct Checker {
    /// `PHASEGATE_APP_VERSION`; empty disables the version rule.
    pub want: String,
    /// RFC 3339 text of `PHASEGATE_ROLLOUT_COMPLETED_AT`; None disables the transaction rule.
    pub rollout_completed_at: Option<String>,
    /// `PHASEGATE_APPLICATION_NAMES`: the applications judged by version; None judges all.
    pub applications: Option<Vec<String>>,
    /// When a session's version is new enough (`PHASEGATE_VERSION_ORDER`,
    /// `PHASEGATE_PREVIOUS_VERSIONS`); semantic order by default.
    pub rule: VersionRule,
    /// Virtual transaction ids of hidden sessions that may predate the rollout.
    suspects: HashSet<String>,
    looked: bool,
    /// Highest number of hidden sessions seen (for the warning).
    pub max_hidden: usize,
    /// The role sees every session's details (superuser, or `pg_read_all_stats`): a look need
    /// not read `pg_locks` for hidden sessions' transactions. A look that finds a hidden
    /// session anyway (the grant was revoked meanwhile) looks again the full way.
    pub sees_all: bool,
}

impl Checker {
    pub fn new(
        want: &str,
        rollout_completed_at: Option<String>,
        applications: Option<Vec<String>>,
    ) -> Checker {
        Checker {
            want: want.trim().to_string(),
            rule: VersionRule::semver(want.trim()),
            rollout_completed_at,
            applications,
            suspects: HashSet::new(),
            looked: false,
            max_hidden: 0,
            sees_all: false,
        }
    }

    /// Whether any rule is active.
    pub fn active(&self) -> bool {
        !self.want.is_empty() || self.rollout_completed_at.is_some()
    }

    /// The warning for the report when the check could not see everything it needed.
    pub fn warning(&self) -> Option<String> {
        (self.rollout_completed_at.is_some() && self.max_hidden > 0).then(|| {
            format!(
                "database check limited: {} session(s) of other roles hide their transaction start; their open transactions were waited out (GRANT pg_read_all_stats for an exact check)",
                self.max_hidden
            )
        })
    }

    /// Whether a session with this application name is judged by its version. Names are
    /// compared ignoring ASCII case: judging too many sessions only makes contract wait.
    pub fn judged(&self, application_name: &str) -> bool {
        match (&self.applications, app_of(application_name)) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(list), Some(app)) => list.iter().any(|a| a.eq_ignore_ascii_case(app)),
        }
    }

    /// Looks once inside the caller's transaction, right before COMMIT (see
    /// [`Checker::observe`]). PostgreSQL keeps one snapshot of `pg_stat_activity` per
    /// transaction; clear it so the look is current. Both are sent at once (the server runs
    /// them in order): one round trip while the transaction holds its locks, not two.
    pub async fn recheck<C: GenericClient>(
        &mut self,
        tx: &C,
    ) -> Result<Observation, tokio_postgres::Error> {
        let (cleared, seen) = futures::future::join(
            tx.batch_execute("SELECT pg_stat_clear_snapshot()"),
            self.observe(tx),
        )
        .await;
        cleared?;
        seen
    }

    /// Looks once. Never takes a lock.
    pub async fn observe<C: GenericClient>(
        &mut self,
        client: &C,
    ) -> Result<Observation, tokio_postgres::Error> {
        let mut rows = self.sessions(client).await?;
        if self.sees_all && rows.iter().any(|r| r.get::<_, Option<String>>(2).is_none()) {
            self.sees_all = false;
            rows = self.sessions(client).await?;
        }
        Ok(self.judge(rows))
    }

    /// The sessions of this database but ours, with the virtual transaction ids of their open
    /// transactions unless [`Checker::sees_all`] (reading `pg_locks` costs the server).
    async fn sessions<C: GenericClient>(
        &self,
        client: &C,
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let sql = if self.sees_all {
            SESSIONS
        } else {
            SESSIONS_AND_VXIDS
        };
        client
            .query_typed(sql, &[(&self.rollout_completed_at, Type::TEXT)])
            .await
    }

    /// What the sessions [`Checker::sessions`] found come to.
    fn judge(&mut self, rows: Vec<tokio_postgres::Row>) -> Observation {
        let first = !self.looked;
        self.looked = true;
        let mut out = Observation::default();
        for r in rows {
            let pid: i32 = r.get(0);
            let application: String = r.get(1);
            let backend_type: Option<String> = r.get(2);
            let state: String = r.get(3);
            let xact_ms: Option<f64> = r.get(4);
            let before: Option<bool> = r.get(5);
            let vxid: Option<String> = r.get(6);
            let db_clock_before_rollout: Option<bool> = r.get(7);
            // Without privileges backend_type is NULL for the session (see the module comment).
            let hidden = backend_type.is_none();
            if backend_type.as_deref() == Some("parallel worker") {
                continue; // its leader is listed too
            }
            if hidden {
                out.hidden += 1;
            }
            let blocker = |reason| Blocker {
                pid,
                place: None,
                application: application.clone(),
                state: state.clone(),
                xact_ms,
                reason,
            };
            if !self.want.is_empty() && self.judged(&application) {
                if let Some(version) = app_version_of(&application) {
                    if !self.rule.satisfied_by(version) {
                        out.blockers.push(blocker(Reason::OldVersion {
                            version: version.to_string(),
                            want: self.want.clone(),
                        }));
                        continue;
                    }
                }
            }
            if self.rollout_completed_at.is_none() {
                continue;
            }
            if !hidden {
                if backend_type.as_deref() == Some("client backend") && before == Some(true) {
                    out.blockers.push(blocker(Reason::OldTransaction));
                }
                continue;
            }
            let Some(vxid) = vxid else {
                continue; // not in a transaction
            };
            // Transactions seen for the first time after the rollout completed (by the server's
            // clock) began after it; those present at the first look may be older.
            if first || db_clock_before_rollout == Some(true) {
                self.suspects.insert(vxid.clone());
            }
            if self.suspects.contains(&vxid) {
                out.blockers.push(blocker(Reason::HiddenTransaction));
            }
        }
        self.max_hidden = self.max_hidden.max(out.hidden);
        out
    }

    /// Polls every [`POLL`] until no blocker is left or `budget` runs out; returns the time
    /// waited and the blockers still there. Logs every change of the blocker set.
    pub async fn wait_until_clear(
        &mut self,
        client: &Client,
        budget: Duration,
        waits: &mut Waits,
        more: &mut [&mut dyn MoreSessions],
    ) -> Result<(Duration, Vec<Blocker>), tokio_postgres::Error> {
        let start = Instant::now();
        let mut last: Vec<Blocker> = Vec::new();
        let mut warned = self.max_hidden > 0;
        loop {
            let mut seen = self.observe(client).await?;
            for m in more.iter_mut() {
                seen.blockers.extend(m.look(self).await);
            }
            if !warned {
                if let Some(w) = self.warning() {
                    tracing::warn!(hidden = self.max_hidden, "{w}");
                    warned = true;
                }
            }
            if seen.blockers.is_empty() {
                waits.done(Kind::DatabaseCheck);
                if !last.is_empty() {
                    tracing::info!(
                        waited_ms = start.elapsed().as_millis() as u64,
                        "database check passed: no old sessions or transactions left"
                    );
                }
                // Only time spent waiting for a blocker counts, not the look itself.
                let waited = if last.is_empty() {
                    Duration::ZERO
                } else {
                    start.elapsed()
                };
                return Ok((waited, Vec::new()));
            }
            if start.elapsed() >= budget {
                return Ok((start.elapsed(), seen.blockers));
            }
            for b in &seen.blockers {
                announce(waits, b);
            }
            last = seen.blockers;
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Another place whose sessions `pg_stat_activity` of this server does not show (a pooler's
/// idle clients, a standby's sessions), looked at on every look of the check, the one before
/// COMMIT included. Trouble reading it is a blocker too (fail-safe), never an error.
pub trait MoreSessions: Send {
    /// The blockers there now, judged by `checker`'s rules.
    fn look<'a>(&'a mut self, checker: &'a Checker)
        -> futures::future::BoxFuture<'a, Vec<Blocker>>;
}

/// Announces a blocker once per run (per session and reason).
pub fn announce(waits: &mut Waits, b: &Blocker) {
    let reason = match b.reason {
        Reason::OldVersion { .. } => "version",
        Reason::OldTransaction => "transaction",
        Reason::HiddenTransaction => "hidden",
        Reason::PoolerUnreadable(_) => "unreadable",
        Reason::Unchecked { .. } => "unchecked",
    };
    let message = match b.reason {
        Reason::Unchecked { .. } => "contract waits: a standby cannot be checked",
        _ => "contract waits: an old session or transaction is still in the database",
    };
    // Pids are per server: a place names the server too.
    let who = b.place.clone().unwrap_or_else(|| b.pid.to_string());
    waits.announce(
        Kind::DatabaseCheck,
        format!("{who} {reason}"),
        message,
        &b.to_string(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_name_convention() {
        assert_eq!(app_version_of("shop-api@1.4.2"), Some("1.4.2"));
        assert_eq!(app_version_of("shop@eu@v2.0.0"), Some("v2.0.0"));
        assert_eq!(app_version_of("worker@3f2a9c1"), Some("3f2a9c1"));
        assert_eq!(app_version_of("psql"), None);
        assert_eq!(app_version_of(""), None);
        assert_eq!(app_version_of("shop-api@"), None);
        assert_eq!(app_version_of("@1.0.0"), None);
        // PgBouncer's application_name_add_host suffix.
        assert_eq!(
            app_version_of("shop-api@1.4.2 - 10.1.2.3:54012"),
            Some("1.4.2")
        );
        assert_eq!(app_of("shop-api@1.4.2 - 10.1.2.3:54012"), Some("shop-api"));
        assert_eq!(app_version_of("shop-api@1.4.2 - ::1:5432"), Some("1.4.2"));
        assert_eq!(app_version_of("psql - 127.0.0.1:5000"), None);
        // Not a host suffix: left alone (and no version).
        assert_eq!(app_version_of("shop-api@1.4.2 - canary"), None);
        assert_eq!(app_version_of("x@1.0 beta"), None);
    }

    #[test]
    fn blocker_text() {
        let b = Blocker {
            pid: 42,
            place: None,
            application: "shop-api@1.0.0".into(),
            state: "idle".into(),
            xact_ms: None,
            reason: Reason::OldVersion {
                version: "1.0.0".into(),
                want: "2.0.0".into(),
            },
        };
        assert_eq!(
            b.to_string(),
            "pid 42 (shop-api@1.0.0, idle): application version 1.0.0 is older than 2.0.0"
        );
        let b = Blocker {
            pid: 7,
            place: None,
            application: String::new(),
            state: "idle in transaction".into(),
            xact_ms: Some(12_345.0),
            reason: Reason::OldTransaction,
        };
        assert_eq!(
            b.to_string(),
            "pid 7 (no application_name, idle in transaction): transaction began before the rollout completed, transaction open for 12.3 s"
        );
        let on_standby = Blocker {
            place: Some("pid 7 on standby 10.0.0.5:5432".into()),
            ..b
        };
        assert_eq!(
            on_standby.to_string(),
            "pid 7 on standby 10.0.0.5:5432 (no application_name, idle in transaction): transaction began before the rollout completed, transaction open for 12.3 s"
        );
    }

    #[test]
    fn warning_only_when_the_transaction_rule_is_blind() {
        let mut c = Checker::new("2.0.0", None, None);
        c.max_hidden = 3;
        assert_eq!(c.warning(), None);
        c.rollout_completed_at = Some("2026-11-26T01:42:35Z".into());
        assert!(c.warning().is_some_and(|w| w.contains("pg_read_all_stats")));
        assert!(!Checker::new("", None, None).active());
    }

    #[test]
    fn application_names_limit_the_version_rule() {
        assert_eq!(app_of("shop-api@1.0.0"), Some("shop-api"));
        assert_eq!(app_of("psql"), None);
        assert_eq!(
            parse_application_names(" shop-api, ,worker "),
            Some(vec!["shop-api".to_string(), "worker".to_string()])
        );
        assert_eq!(parse_application_names(" , "), None);
        let all = Checker::new("2.0.0", None, None);
        assert!(all.judged("billing@1.3.0") && !all.judged("psql"));
        let own = Checker::new("2.0.0", None, parse_application_names("shop-api"));
        assert!(own.judged("shop-api@1.0.0") && own.judged("Shop-API@1.0.0"));
        assert!(!own.judged("billing@1.3.0") && !own.judged("shop-api"));
    }
}
