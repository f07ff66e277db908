//! What a run is told: the `phasegate apply` arguments (flags and `PHASEGATE_*` variables) and
//! the [`Config`] they become, checked before anything touches the database.

use std::path::PathBuf;
use std::time::Duration;

use super::dbcheck;
use super::error::ApplyError;
use super::ledger::Identity;
use super::stop::Stop;

/// A phase of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Expand,
    Contract,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Expand => "expand",
            Phase::Contract => "contract",
        }
    }
}

/// A string that never shows in `Debug` output (the database URL holds the password).
#[derive(Clone, Default)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        // PostgreSQL's own convention: a bare number of a timeout setting is milliseconds.
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Arguments of `phasegate apply`; every flag can also come from the environment (the Job sets it).
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Exit status: 0 when the phase is applied (or was already); 1 when it failed; \
143 (SIGTERM) or 130 (SIGINT) when a stop signal ended the run before COMMIT: nothing it had not \
committed yet was applied. A signal after COMMIT was sent changes nothing: the report says applied. \
The JSON report is the last line on stdout and goes to --termination-log."
)]
pub struct ApplyArgs {
    /// PostgreSQL URL (postgres://user:password@host:port/db?sslmode=verify-full&sslrootcert=...).
    #[arg(long, env = crate::protocol::env::DATABASE_URL, hide_env_values = true)]
    pub database_url: Secret,
    /// Which phase to run.
    #[arg(long, env = crate::protocol::env::PHASE, value_enum)]
    pub phase: Phase,
    /// The phase's SQL.
    #[arg(
        long,
        env = crate::protocol::env::SQL,
        hide_env_values = true,
        conflicts_with = "file"
    )]
    pub sql: Option<String>,
    /// Read the phase's SQL from a file instead.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Namespace of the migration: with name and phase, the key of its ledger row.
    #[arg(long, env = crate::protocol::env::MIGRATION_NAMESPACE, default_value = "default")]
    pub migration_namespace: String,
    /// Name of the migration (ledger key).
    #[arg(long, env = crate::protocol::env::MIGRATION_NAME, default_value = "local")]
    pub migration_name: String,
    /// UID of the DatabaseMigration object, recorded in the ledger.
    #[arg(long, env = crate::protocol::env::MIGRATION_UID, default_value = "")]
    pub migration_uid: String,
    /// The migration's `appVersion`: recorded in the ledger; contract's database check
    /// compares sessions' versions with it.
    #[arg(long, env = crate::protocol::env::APP_VERSION, default_value = "")]
    pub app_version: String,
    /// `lock_timeout` of each attempt.
    #[arg(long, env = crate::protocol::env::LOCK_TIMEOUT, default_value = "2s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    /// `statement_timeout` of each statement.
    #[arg(long, env = crate::protocol::env::STATEMENT_TIMEOUT, default_value = "10m", value_parser = parse_duration)]
    pub statement_timeout: Duration,
    /// Retries after a lock timeout (SQLSTATE 55P03) or deadlock.
    #[arg(long, env = crate::protocol::env::MAX_LOCK_RETRIES, default_value_t = 10)]
    pub max_lock_retries: u32,
    /// How long to wait, outside the lock queue, for older transactions to release the tables
    /// (0 disables lock-aware waiting: plain retries on lock timeouts).
    #[arg(long, env = crate::protocol::env::LOCK_WAIT_TIMEOUT, default_value = "10m", value_parser = parse_duration)]
    pub lock_wait_timeout: Duration,
    /// Waiting outside the lock queue, transactions younger than this are short application work
    /// and attempted past (the attempt's lock_timeout bounds what it costs them).
    #[arg(long, env = crate::protocol::env::YOUNG_TRANSACTION, default_value = "30ms", value_parser = parse_duration)]
    pub young_transaction: Duration,
    /// After waiting this long outside the lock queue with only transactions younger than
    /// lock_timeout in the way (a steady stream of short ones), attempt anyway with lock_timeout
    /// (never before lock_timeout has passed; 0: never).
    #[arg(long, env = crate::protocol::env::LOCK_WAIT_ATTEMPT_AFTER, default_value = "10s", value_parser = parse_duration)]
    pub lock_wait_attempt_after: Duration,
    /// How long to wait for another migration on the same database to finish.
    #[arg(long, env = crate::protocol::env::ADVISORY_LOCK_TIMEOUT, default_value = "10m", value_parser = parse_duration)]
    pub advisory_lock_timeout: Duration,
    /// How long to wait for the database connection.
    #[arg(long, env = crate::protocol::env::CONNECT_TIMEOUT, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Where the JSON report goes (skipped when the directory does not exist).
    #[arg(
        long,
        env = crate::protocol::env::TERMINATION_LOG,
        default_value = "/dev/termination-log"
    )]
    pub termination_log: PathBuf,
    /// Test hook: `pause-before-commit` or `pause-after-commit` makes the process sleep there
    /// (until a stop signal).
    #[arg(long, env = crate::protocol::env::FAILPOINT, hide = true)]
    pub failpoint: Option<String>,
    /// Settings of contract's database check and identity check (ignored for expand); last,
    /// because their help heading applies to every argument after them.
    #[command(flatten, next_help_heading = "Contract only")]
    pub contract: Box<ContractArgs>,
}

/// Contract-only arguments of `phasegate apply` (boxed in [`ApplyArgs`]: they are many).
#[derive(clap::Args, Debug, Clone)]
pub struct ContractArgs {
    /// Refuse to run while sessions of older application versions (`application_name`
    /// `<app>@<version>`) or transactions begun before the rollout completed are in the
    /// database, here and again right before COMMIT (`true`/`false`; default true).
    #[arg(long, env = crate::protocol::env::DATABASE_CHECK)]
    pub database_check: Option<String>,
    /// When the rollout completed (RFC 3339); older transactions block contract.
    #[arg(long, env = crate::protocol::env::ROLLOUT_COMPLETED_AT)]
    pub rollout_completed_at: Option<String>,
    /// How long contract waits for old sessions and transactions to end before failing.
    #[arg(long, env = crate::protocol::env::DATABASE_CHECK_TIMEOUT, default_value = "5m", value_parser = parse_duration)]
    pub database_check_timeout: Duration,
    /// The applications the database check judges by version, as comma-separated
    /// `<app>` names of `application_name` `<app>@<version>` (compared ignoring ASCII case).
    /// Sessions of other applications are not judged by version (the transaction rule still
    /// applies to them). Unset or empty: every `<app>@<version>` session is judged.
    #[arg(long, env = crate::protocol::env::APPLICATION_NAMES, value_name = "APP,...")]
    pub application_names: Option<String>,
    /// How a session's version compares with PHASEGATE_APP_VERSION: `SemVer` (default;
    /// semantic order where both parse, equality otherwise), `Exact`, or `NotPrevious`
    /// (only the versions in PHASEGATE_PREVIOUS_VERSIONS are old).
    #[arg(long, env = crate::protocol::env::VERSION_ORDER, value_name = "ORDER")]
    pub version_order: Option<String>,
    /// With `NotPrevious`: the comma-separated versions that count as old.
    #[arg(long, env = crate::protocol::env::PREVIOUS_VERSIONS, value_name = "V,...")]
    pub previous_versions: Option<String>,
    /// Refuse (nothing applied) unless this database's ledger records the applied
    /// expand of the same migration — namespace, name and PHASEGATE_MIGRATION_UID — e.g. when the
    /// Secret was repointed to another database (`true`/`false`; default false).
    #[arg(long, env = crate::protocol::env::REQUIRE_EXPAND)]
    pub require_expand: Option<String>,
    /// The operator's commit-grant endpoint (base URL). When set, contract never COMMITs
    /// without a fresh grant for this attempt from the leading operator (the operator sets
    /// it on every contract Job; without it, a run by hand is not fenced by the operator).
    #[arg(long, env = crate::protocol::grant::ENV_URL, value_name = "URL")]
    pub grant_url: Option<String>,
    /// The attempt this run is (its Job's attempt number), for the grant.
    #[arg(long, env = crate::protocol::grant::ENV_ATTEMPT, default_value_t = 0)]
    pub attempt: u32,
    /// How long the run waits for a grant, in all, before it gives up (exit 1, report
    /// `no commit grant`).
    #[arg(long, env = crate::protocol::grant::ENV_WAIT, default_value = "10m", value_parser = parse_duration)]
    pub grant_wait: Duration,
}

/// Everything a run needs, independent of clap.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: Secret,
    pub phase: Phase,
    pub sql: String,
    pub identity: Identity,
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
    pub max_lock_retries: u32,
    pub lock_wait_timeout: Duration,
    /// Waiting outside the lock queue: see [`super::locks::Patience`].
    pub young_transaction: Duration,
    pub lock_wait_attempt_after: Duration,
    pub advisory_lock_timeout: Duration,
    pub connect_timeout: Duration,
    /// Contract only: run the database-side check (see [`dbcheck`]).
    pub database_check: bool,
    /// When the rollout completed; transactions that began earlier block contract.
    pub rollout_completed_at: Option<jiff::Timestamp>,
    pub database_check_timeout: Duration,
    /// Contract only: the applications judged by version; None judges every application.
    pub application_names: Option<Vec<String>>,
    /// Contract only: how session versions compare with the app version.
    pub version_order: crate::api::VersionOrder,
    /// Contract only, with `NotPrevious`: the versions that count as old.
    pub previous_versions: Option<Vec<String>>,
    /// Contract only: refuse unless the ledger holds this migration's applied expand.
    pub require_expand: bool,
    /// Contract only: where to ask for the commit grant; None when run without an operator.
    pub grant: Option<super::grant::GrantConfig>,
    /// Set by SIGTERM/SIGINT (see [`stop`]); a run never commits after it is requested.
    pub stop: Stop,
    pub failpoint: Option<String>,
}

impl Config {
    /// Sensible defaults for library use and tests.
    pub fn new(database_url: impl Into<String>, phase: Phase, sql: impl Into<String>) -> Config {
        Config {
            database_url: Secret(database_url.into()),
            phase,
            sql: sql.into(),
            identity: Identity {
                namespace: "default".into(),
                name: "local".into(),
                uid: String::new(),
                app_version: String::new(),
            },
            lock_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(600),
            max_lock_retries: 10,
            lock_wait_timeout: Duration::from_secs(600),
            young_transaction: super::locks::YOUNG_TRANSACTION,
            lock_wait_attempt_after: Duration::from_secs(10),
            advisory_lock_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            database_check: true,
            rollout_completed_at: None,
            database_check_timeout: Duration::from_secs(300),
            application_names: None,
            version_order: crate::api::VersionOrder::SemVer,
            previous_versions: None,
            require_expand: false,
            grant: None,
            stop: Stop::new(),
            failpoint: None,
        }
    }
}

/// `true`/`false` (and the usual spellings) of a boolean setting; None when unset or empty.
fn parse_bool(name: &str, value: Option<&str>) -> Result<Option<bool>, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Some(true)),
            "false" | "0" | "no" | "off" => Ok(Some(false)),
            _ => Err(format!("{name} must be true or false, not {v:?}")),
        },
    }
}

pub(super) fn config_from_args(args: ApplyArgs) -> Result<Config, (Phase, Box<ApplyError>)> {
    let phase = args.phase;
    let fail = |e: ApplyError| (phase, Box::new(e));
    let setting = |e: String| fail(ApplyError::Setting(e));
    let sql = match (&args.sql, &args.file) {
        (Some(s), _) => s.clone(),
        (None, Some(path)) => std::fs::read_to_string(path).map_err(|source| {
            fail(ApplyError::ReadFile {
                path: path.clone(),
                source,
            })
        })?,
        (None, None) => return Err(fail(ApplyError::NoSql)),
    };
    // Contract only; expand ignores these settings entirely.
    let contract = phase == Phase::Contract;
    let database_check = contract
        && parse_bool(
            "PHASEGATE_DATABASE_CHECK",
            args.contract.database_check.as_deref(),
        )
        .map_err(setting)?
        .unwrap_or(true);
    let require_expand = contract
        && parse_bool(
            "PHASEGATE_REQUIRE_EXPAND",
            args.contract.require_expand.as_deref(),
        )
        .map_err(setting)?
        .unwrap_or(false);
    if require_expand && args.migration_uid.trim().is_empty() {
        return Err(fail(ApplyError::Setting(
            "PHASEGATE_REQUIRE_EXPAND=true needs PHASEGATE_MIGRATION_UID: the expand to require is identified by it".into(),
        )));
    }
    let rollout_completed_at = match args.contract.rollout_completed_at.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(_) if !database_check => None,
        Some(v) => Some(v.parse::<jiff::Timestamp>().map_err(|e| {
            fail(ApplyError::Setting(format!(
                "PHASEGATE_ROLLOUT_COMPLETED_AT must be an RFC 3339 timestamp, not {v:?}: {e}"
            )))
        })?),
    };
    let application_names = args
        .contract
        .application_names
        .as_deref()
        .filter(|_| database_check)
        .and_then(dbcheck::parse_application_names);
    let version_order = match args.contract.version_order.as_deref().map(str::trim) {
        None | Some("") | Some("SemVer") => crate::api::VersionOrder::SemVer,
        Some("Exact") => crate::api::VersionOrder::Exact,
        Some("NotPrevious") => crate::api::VersionOrder::NotPrevious,
        Some(other) => {
            return Err(fail(ApplyError::Setting(format!(
                "PHASEGATE_VERSION_ORDER must be SemVer, Exact or NotPrevious, not {other:?}"
            ))))
        }
    };
    let previous_versions = args.contract.previous_versions.as_deref().map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    });
    let grant = args
        .contract
        .grant_url
        .as_deref()
        .map(str::trim)
        .filter(|u| contract && !u.is_empty())
        .map(|url| super::grant::GrantConfig {
            url: url.to_string(),
            request: crate::protocol::grant::Request {
                namespace: args.migration_namespace.clone(),
                migration: args.migration_name.clone(),
                uid: args.migration_uid.clone(),
                phase: phase.as_str().to_string(),
                attempt: args.contract.attempt,
            },
            wait: args.contract.grant_wait,
        });
    Ok(Config {
        database_url: args.database_url,
        phase,
        sql,
        identity: Identity {
            namespace: args.migration_namespace,
            name: args.migration_name,
            uid: args.migration_uid,
            app_version: args.app_version,
        },
        lock_timeout: args.lock_timeout,
        statement_timeout: args.statement_timeout,
        max_lock_retries: args.max_lock_retries,
        lock_wait_timeout: args.lock_wait_timeout,
        young_transaction: args.young_transaction,
        lock_wait_attempt_after: args.lock_wait_attempt_after,
        advisory_lock_timeout: args.advisory_lock_timeout,
        connect_timeout: args.connect_timeout,
        database_check,
        rollout_completed_at,
        database_check_timeout: args.contract.database_check_timeout,
        application_names,
        version_order,
        previous_versions,
        require_expand,
        grant,
        stop: Stop::new(),
        failpoint: args.failpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s: Secret = "postgres://u:pw@h/db".parse().unwrap_or_default();
        assert_eq!(format!("{s:?}"), "\"***\"");
    }
}
