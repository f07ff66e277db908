//! `phasegate apply`: runs one phase (expand or contract) of a migration against PostgreSQL,
//! exactly once, without stalling application traffic while it waits for locks.
//!
//! Order of work: parse and classify the SQL (before touching the database), connect, take the
//! per-database advisory lock, consult the ledger, then run the statements: consecutive
//! transactional statements as one transaction that also writes the ledger row; statements that
//! cannot run in a transaction block one by one, with the ledger recording progress after each.
//! Contract additionally runs the database-side check ([`dbcheck`]) right before each attempt,
//! and once more inside the transaction, with its locks held, right before COMMIT.
//!
//! The fence: a stop request (SIGTERM, SIGINT; see [`stop`]) ends every wait at once, cancels a
//! statement in flight, rolls the transaction back and is checked again immediately before
//! COMMIT, so a stopped run never commits anything it had not committed already.

pub mod backfill;
pub mod connect;
pub mod dbcheck;
pub mod ledger;
pub mod locks;
pub mod report;
pub mod stop;
pub mod waits;

use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;
use sha2::{Digest, Sha256};
use tokio_postgres::{CancelToken, Client};

use crate::sql::{self, SqlError, Statement};
use connect::{ConnSettings, Scrubber};
pub use ledger::Identity;
pub use report::{Outcome, Report, ReportError};
pub use stop::{Signal, Stop};
use waits::Waits;

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

fn parse_duration(s: &str) -> Result<Duration, String> {
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
    #[arg(long, env = "PHASEGATE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Secret,
    /// Which phase to run.
    #[arg(long, env = "PHASEGATE_PHASE", value_enum)]
    pub phase: Phase,
    /// The phase's SQL.
    #[arg(
        long,
        env = "PHASEGATE_SQL",
        hide_env_values = true,
        conflicts_with = "file"
    )]
    pub sql: Option<String>,
    /// Read the phase's SQL from a file instead.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Namespace of the migration: with name and phase, the key of its ledger row.
    #[arg(long, env = "PHASEGATE_MIGRATION_NAMESPACE", default_value = "default")]
    pub migration_namespace: String,
    /// Name of the migration (ledger key).
    #[arg(long, env = "PHASEGATE_MIGRATION_NAME", default_value = "local")]
    pub migration_name: String,
    /// UID of the DatabaseMigration object, recorded in the ledger.
    #[arg(long, env = "PHASEGATE_MIGRATION_UID", default_value = "")]
    pub migration_uid: String,
    /// The migration's `appVersion`: recorded in the ledger; contract's database check
    /// compares sessions' versions with it.
    #[arg(long, env = "PHASEGATE_APP_VERSION", default_value = "")]
    pub app_version: String,
    /// `lock_timeout` of each attempt.
    #[arg(long, env = "PHASEGATE_LOCK_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    /// `statement_timeout` of each statement.
    #[arg(long, env = "PHASEGATE_STATEMENT_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub statement_timeout: Duration,
    /// Retries after a lock timeout (SQLSTATE 55P03) or deadlock.
    #[arg(long, env = "PHASEGATE_MAX_LOCK_RETRIES", default_value_t = 10)]
    pub max_lock_retries: u32,
    /// How long to wait, outside the lock queue, for older transactions to release the tables
    /// (0 disables lock-aware waiting: plain retries on lock timeouts).
    #[arg(long, env = "PHASEGATE_LOCK_WAIT_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub lock_wait_timeout: Duration,
    /// How long to wait for another migration on the same database to finish.
    #[arg(long, env = "PHASEGATE_ADVISORY_LOCK_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub advisory_lock_timeout: Duration,
    /// How long to wait for the database connection.
    #[arg(long, env = "PHASEGATE_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Where the JSON report goes (skipped when the directory does not exist).
    #[arg(
        long,
        env = "PHASEGATE_TERMINATION_LOG",
        default_value = "/dev/termination-log"
    )]
    pub termination_log: PathBuf,
    /// Test hook: `pause-before-commit` or `pause-after-commit` makes the process sleep there
    /// (until a stop signal).
    #[arg(long, env = "PHASEGATE_FAILPOINT", hide = true)]
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
    #[arg(long, env = "PHASEGATE_DATABASE_CHECK")]
    pub database_check: Option<String>,
    /// When the rollout completed (RFC 3339); older transactions block contract.
    #[arg(long, env = "PHASEGATE_ROLLOUT_COMPLETED_AT")]
    pub rollout_completed_at: Option<String>,
    /// How long contract waits for old sessions and transactions to end before failing.
    #[arg(long, env = "PHASEGATE_DATABASE_CHECK_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub database_check_timeout: Duration,
    /// The applications the database check judges by version, as comma-separated
    /// `<app>` names of `application_name` `<app>@<version>` (compared ignoring ASCII case).
    /// Sessions of other applications are not judged by version (the transaction rule still
    /// applies to them). Unset or empty: every `<app>@<version>` session is judged.
    #[arg(long, env = "PHASEGATE_APPLICATION_NAMES", value_name = "APP,...")]
    pub application_names: Option<String>,
    /// How a session's version compares with PHASEGATE_APP_VERSION: `SemVer` (default;
    /// semantic order where both parse, equality otherwise), `Exact`, or `NotPrevious`
    /// (only the versions in PHASEGATE_PREVIOUS_VERSIONS are old).
    #[arg(long, env = "PHASEGATE_VERSION_ORDER", value_name = "ORDER")]
    pub version_order: Option<String>,
    /// With `NotPrevious`: the comma-separated versions that count as old.
    #[arg(long, env = "PHASEGATE_PREVIOUS_VERSIONS", value_name = "V,...")]
    pub previous_versions: Option<String>,
    /// Refuse (nothing applied) unless this database's ledger records the applied
    /// expand of the same migration — namespace, name and PHASEGATE_MIGRATION_UID — e.g. when the
    /// Secret was repointed to another database (`true`/`false`; default false).
    #[arg(long, env = "PHASEGATE_REQUIRE_EXPAND")]
    pub require_expand: Option<String>,
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
            advisory_lock_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            database_check: true,
            rollout_completed_at: None,
            database_check_timeout: Duration::from_secs(300),
            application_names: None,
            version_order: crate::api::VersionOrder::SemVer,
            previous_versions: None,
            require_expand: false,
            stop: Stop::new(),
            failpoint: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("no SQL given: set PHASEGATE_SQL, --sql or --file")]
    NoSql,
    #[error("invalid setting: {0}")]
    Setting(String),
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error(transparent)]
    Connect(#[from] connect::ConnectError),
    #[error(transparent)]
    Advisory(#[from] locks::AdvisoryError),
    #[error("{message}")]
    Db {
        sqlstate: Option<String>,
        message: String,
        statement: Option<usize>,
    },
    #[error(
        "{phase} of {namespace}/{name} was already {state} with checksum {recorded}, but the SQL now has checksum {current}; an applied phase is immutable: revert the SQL, or create a new migration for further changes"
    )]
    ChecksumMismatch {
        phase: &'static str,
        namespace: String,
        name: String,
        state: &'static str,
        recorded: String,
        current: String,
    },
    #[error("statement {statement}: gave up after {attempts} attempts, the lock could not be taken within lock_timeout {lock_timeout}")]
    LockRetriesExhausted {
        statement: usize,
        attempts: u32,
        lock_timeout: String,
    },
    #[error("statements {first}..{last}: still blocked after waiting {waited} outside the lock queue: {blockers}")]
    LockWaitTimeout {
        first: usize,
        last: usize,
        waited: String,
        blockers: String,
    },
    #[error("contract refused by the database check: still {count} old session(s) or transaction(s) after waiting {waited} (PHASEGATE_DATABASE_CHECK_TIMEOUT): {blockers}; nothing was applied, retry once they are gone")]
    DatabaseCheckTimeout {
        count: usize,
        waited: String,
        blockers: String,
    },
    #[error("contract of {namespace}/{name} refused (PHASEGATE_REQUIRE_EXPAND): {why}; nothing was applied. Check that the database Secret still points at the database expand ran on")]
    ExpandNotRecorded {
        namespace: String,
        name: String,
        why: String,
    },
    /// `committed`: statements this run had committed before the stop (filled in by [`execute`]).
    #[error("{}", stopped_message(*signal, *committed))]
    Stopped { signal: Signal, committed: usize },
}

fn stopped_message(signal: Signal, committed: usize) -> String {
    let s = signal.name();
    if committed == 0 {
        format!("stopped by {s} before COMMIT: nothing was applied by this run and the ledger is unchanged")
    } else {
        format!("stopped by {s}: the {committed} statement(s) this run committed earlier are applied and recorded in the ledger; nothing after them was applied")
    }
}

impl ApplyError {
    fn db(e: &tokio_postgres::Error, statement: Option<usize>) -> ApplyError {
        let (sqlstate, message) = connect::describe(e);
        ApplyError::Db {
            sqlstate,
            message,
            statement,
        }
    }

    fn to_report_error(&self) -> ReportError {
        let (sqlstate, statement) = match self {
            ApplyError::Sql(e) => (Some(e.sqlstate().to_string()), e.statement()),
            ApplyError::Connect(connect::ConnectError::Connect { sqlstate, .. }) => {
                (sqlstate.clone(), None)
            }
            ApplyError::Advisory(locks::AdvisoryError::Db(e)) => {
                (e.code().map(|c| c.code().to_string()), None)
            }
            ApplyError::Advisory(locks::AdvisoryError::Timeout { .. }) => {
                (Some("55P03".into()), None)
            }
            ApplyError::Db {
                sqlstate,
                statement,
                ..
            } => (sqlstate.clone(), *statement),
            ApplyError::LockRetriesExhausted { statement, .. } => {
                (Some("55P03".into()), Some(*statement))
            }
            ApplyError::LockWaitTimeout { first, .. } => (Some("55P03".into()), Some(*first)),
            _ => (None, None),
        };
        ReportError {
            sqlstate,
            message: self.to_string(),
            statement,
        }
    }
}

/// Counters that end up in the report.
#[derive(Debug, Default, Clone)]
struct Stats {
    statements: usize,
    attempts: u32,
    lock_retries: u32,
    lock_wait: Duration,
    /// Set when the database check ran.
    db_check_wait: Option<Duration>,
    db_check_warning: Option<String>,
    /// Transactions rolled back because the re-check before COMMIT found a blocker.
    db_check_rollbacks: u32,
    /// Longest time from the last look at the gates to COMMIT's acknowledgement.
    gate_to_commit: Option<Duration>,
}

/// Entry point of `phasegate apply`: runs the phase, writes the report to the termination log
/// and prints it as the last line on stdout. Exit status: 0 when applied (or already applied),
/// 143 (SIGTERM) or 130 (SIGINT) when stopped before COMMIT, 1 on any other failure.
pub async fn apply(args: ApplyArgs) -> std::process::ExitCode {
    let termination_log = args.termination_log.clone();
    let stop = Stop::new();
    if let Err(e) = stop.on_signals() {
        tracing::warn!(error = %e, "cannot handle SIGTERM/SIGINT; a stop will kill the process instead");
    }
    let report = match config_from_args(args) {
        Ok(mut cfg) => {
            cfg.stop = stop.clone();
            execute(&cfg).await
        }
        Err((phase, e)) => failed_report(
            phase,
            *e,
            Duration::ZERO,
            Stats::default(),
            None,
            &Scrubber::default(),
        ),
    };
    let line = report.to_json_line();
    write_termination_log(&termination_log, &line);
    println!("{line}");
    match (report.is_success(), stop.requested()) {
        (true, _) => std::process::ExitCode::SUCCESS,
        (false, Some(signal)) => std::process::ExitCode::from(signal.exit_code()),
        (false, None) => std::process::ExitCode::FAILURE,
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

fn config_from_args(args: ApplyArgs) -> Result<Config, (Phase, Box<ApplyError>)> {
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
        advisory_lock_timeout: args.advisory_lock_timeout,
        connect_timeout: args.connect_timeout,
        database_check,
        rollout_completed_at,
        database_check_timeout: args.contract.database_check_timeout,
        application_names,
        version_order,
        previous_versions,
        require_expand,
        stop: Stop::new(),
        failpoint: args.failpoint,
    })
}

fn write_termination_log(path: &Path, line: &str) {
    // Outside Kubernetes /dev/termination-log usually cannot be written; that is not an error.
    let dir_exists = path
        .parent()
        .map(|p| p.as_os_str().is_empty() || p.is_dir())
        .unwrap_or(false);
    if !dir_exists {
        tracing::debug!(path = %path.display(), "termination log directory missing; not writing it");
        return;
    }
    if let Err(e) = std::fs::write(path, line) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the termination log");
    }
}

/// SHA-256 of the phase's SQL (surrounding whitespace ignored), hex.
pub fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.trim().as_bytes()))
}

/// Runs one phase and returns its report. Never panics on database errors.
pub async fn execute(cfg: &Config) -> Report {
    let start = Instant::now();
    let mut stats = Stats::default();
    let sum = checksum(&cfg.sql);
    let scrub = Scrubber::for_url(&cfg.database_url.0);
    let result = run(cfg, &sum, &mut stats, &scrub).await;
    let elapsed = start.elapsed();
    let mut report = match result {
        Ok(outcome) => {
            let report = Report {
                outcome,
                phase: cfg.phase.as_str().into(),
                statements: stats.statements,
                attempts: stats.attempts,
                lock_retries: stats.lock_retries,
                lock_wait_ms: stats.lock_wait.as_millis() as u64,
                duration_ms: elapsed.as_millis() as u64,
                checksum: Some(sum[..12].to_string()),
                db_check_wait_ms: stats.db_check_wait.map(|d| d.as_millis() as u64),
                db_check_warning: stats.db_check_warning.as_deref().map(|w| scrub.scrub(w)),
                db_check_rollbacks: (stats.db_check_rollbacks > 0)
                    .then_some(stats.db_check_rollbacks),
                gate_to_commit_us: stats.gate_to_commit.map(|d| d.as_micros() as u64),
                stopped_by: None,
                error: None,
            };
            tracing::info!(summary = %report.summary(), "phase done");
            report
        }
        Err(mut e) => {
            if let ApplyError::Stopped { committed, .. } = &mut e {
                *committed = stats.statements;
            }
            failed_report(cfg.phase, e, elapsed, stats, Some(&sum), &scrub)
        }
    };
    report.stopped_by = cfg.stop.requested().map(|s| s.name().to_string());
    report
}

fn failed_report(
    phase: Phase,
    e: ApplyError,
    elapsed: Duration,
    stats: Stats,
    sum: Option<&str>,
    scrub: &Scrubber,
) -> Report {
    let mut error = e.to_report_error();
    error.message = scrub.scrub(&error.message);
    tracing::error!(sqlstate = error.sqlstate.as_deref().unwrap_or(""), statement = error.statement, error = %error.message, "phase failed");
    Report {
        outcome: Outcome::Failed,
        phase: phase.as_str().into(),
        statements: stats.statements,
        attempts: stats.attempts,
        lock_retries: stats.lock_retries,
        lock_wait_ms: stats.lock_wait.as_millis() as u64,
        duration_ms: elapsed.as_millis() as u64,
        checksum: sum.map(|s| s[..12.min(s.len())].to_string()),
        db_check_wait_ms: stats.db_check_wait.map(|d| d.as_millis() as u64),
        db_check_warning: stats.db_check_warning.as_deref().map(|w| scrub.scrub(w)),
        db_check_rollbacks: (stats.db_check_rollbacks > 0).then_some(stats.db_check_rollbacks),
        gate_to_commit_us: stats.gate_to_commit.map(|d| d.as_micros() as u64),
        stopped_by: None,
        error: Some(error),
    }
}

/// Runs `fut` unless a stop is requested first (then `fut` is dropped where it waits).
async fn or_stop<T>(
    stop: &Stop,
    fut: impl Future<Output = Result<T, ApplyError>>,
) -> Result<T, ApplyError> {
    tokio::select! {
        biased;
        signal = stop.wait() => Err(signal.into()),
        r = fut => r,
    }
}

impl From<Signal> for ApplyError {
    fn from(signal: Signal) -> ApplyError {
        ApplyError::Stopped {
            signal,
            committed: 0,
        }
    }
}

/// Sleeps unless a stop is requested first.
async fn pause(stop: &Stop, d: Duration) -> Result<(), ApplyError> {
    or_stop(stop, async {
        tokio::time::sleep(d).await;
        Ok(())
    })
    .await
}

/// How long a cancelled statement may take to report back before we stop waiting for it.
const CANCEL_GRACE: Duration = Duration::from_millis(700);

/// TCP keepalives, both ends: a dead peer is noticed after about 30 + 3 × 10 = 60 s.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_COUNT: u32 = 3;

/// `idle_in_transaction_session_timeout` of the executor's session: 3 × `lock_timeout`, at
/// least 1 s. The executor never waits inside a transaction, so its session is idle there only
/// for a round trip, unless the process is frozen or gone; the locks it then holds stall the
/// application like a lock attempt does, so the stall is bounded on the same scale.
pub fn idle_in_transaction_timeout(lock_timeout: Duration) -> Duration {
    (lock_timeout * 3).max(Duration::from_secs(1))
}

/// PostgreSQL 17's `transaction_timeout` for a transaction of `statements` statements: each may
/// use its `statement_timeout`, plus one more for the ledger and the check before COMMIT.
fn transaction_timeout(statement_timeout: Duration, statements: usize) -> Duration {
    let n = u32::try_from(statements.saturating_add(1)).unwrap_or(u32::MAX);
    statement_timeout.saturating_mul(n)
}

async fn run(
    cfg: &Config,
    sum: &str,
    stats: &mut Stats,
    scrub: &Scrubber,
) -> Result<Outcome, ApplyError> {
    // Parse first: a syntax error must not even open a connection.
    let statements = sql::parse_phase(&cfg.sql)?;
    let phase = cfg.phase.as_str();
    let id = &cfg.identity;
    tracing::info!(phase, namespace = %id.namespace, name = %id.name, statements = statements.len(), checksum = &sum[..12], "applying phase");

    let mut settings = connect::parse(&cfg.database_url.0)?;
    // Client side: notice a server (or network) that died, instead of waiting on a dead socket.
    settings
        .config
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_COUNT);
    let mut client = or_stop(&cfg.stop, async {
        Ok(connect::connect(&settings, cfg.connect_timeout, scrub).await?)
    })
    .await?;
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| ApplyError::db(&e, None))?
        .get(0);
    if version >= 140_000 {
        // If this process is killed mid-statement, the server notices the dead client within a
        // second and rolls back, instead of holding its locks until the statement ends.
        let _ = client
            .batch_execute("SET client_connection_check_interval = '1s'")
            .await;
    }
    // A frozen or partitioned executor must not hold its locks for hours: the server ends our
    // session once it sits idle inside a transaction (we never wait there: a pause means we are
    // stuck) and probes the connection with TCP keepalives (a dead node or network).
    client
        .batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = '{}'; SET tcp_keepalives_idle = {}; \
             SET tcp_keepalives_interval = {}; SET tcp_keepalives_count = {}",
            pg_ms(idle_in_transaction_timeout(cfg.lock_timeout)),
            KEEPALIVE_IDLE.as_secs(),
            KEEPALIVE_INTERVAL.as_secs(),
            KEEPALIVE_COUNT
        ))
        .await
        .map_err(|e| ApplyError::db(&e, None))?;

    let mut runner = Runner {
        cfg,
        sum,
        server_version: version,
        settings,
        cancel: client.cancel_token(),
        stats,
        gate: Gate::new(cfg),
        waits: Waits::new(),
    };
    if !cfg.lock_wait_timeout.is_zero() || runner.gate.checker.is_some() {
        // Once per run; the database check reuses it rather than adding its own.
        runner.stats.db_check_warning = locks::visibility_warning(&client)
            .await
            .map_err(|e| ApplyError::db(&e, None))?;
        if let Some(w) = &runner.stats.db_check_warning {
            tracing::warn!("{}", scrub.scrub(w));
        }
    }
    let advisory = locks::advisory_lock(&client, cfg.advisory_lock_timeout, &mut runner.waits);
    runner.stats.lock_wait += or_stop(&cfg.stop, async { Ok(advisory.await?) }).await?;
    if cfg.require_expand {
        // Before creating anything: this may not be our database at all.
        require_expand(&client, id).await?;
    }
    ledger::ensure(&client)
        .await
        .map_err(|e| ApplyError::db(&e, None))?;

    let entry = ledger::get(&client, id, phase)
        .await
        .map_err(|e| ApplyError::db(&e, None))?;
    let mut done = 0usize;
    // A row an earlier object of the same name wrote for other SQL (the migration was deleted
    // and created anew with new SQL): this object is another migration and runs its own.
    let entry = entry.filter(|e| {
        let earlier_object = !e.uid.is_empty() && !id.uid.is_empty() && e.uid != id.uid;
        if earlier_object && e.checksum != sum {
            tracing::warn!(recorded_uid = %e.uid, uid = %id.uid, "ledger row of an earlier object of the same name with other SQL; this object's SQL runs and replaces it");
            return false;
        }
        true
    });
    if let Some(entry) = entry {
        if entry.checksum != sum {
            return Err(ApplyError::ChecksumMismatch {
                phase: cfg.phase.as_str(),
                namespace: id.namespace.clone(),
                name: id.name.clone(),
                state: if entry.applied {
                    "applied"
                } else {
                    "partially applied"
                },
                recorded: entry.checksum[..12.min(entry.checksum.len())].to_string(),
                current: sum[..12].to_string(),
            });
        }
        if entry.uid != id.uid {
            tracing::info!(recorded_uid = %entry.uid, uid = %id.uid, "ledger entry was written by an earlier object of the same name");
        }
        if entry.applied {
            if entry.uid != id.uid && !id.uid.is_empty() {
                // The same SQL of this object is applied here: record that this object's phase
                // is in this database (contract's PHASEGATE_REQUIRE_EXPAND looks for it).
                ledger::adopt(&client, id, phase)
                    .await
                    .map_err(|e| ApplyError::db(&e, None))?;
            }
            tracing::info!("phase already applied with the same checksum; nothing to do");
            return Ok(Outcome::AlreadyApplied);
        }
        done = usize::try_from(entry.statements_done)
            .unwrap_or(0)
            .min(statements.len());
        tracing::info!(
            done,
            total = statements.len(),
            "resuming a partially applied phase"
        );
    }

    for step in steps(&statements, done, version) {
        if let Some(signal) = cfg.stop.requested() {
            return Err(signal.into());
        }
        if step.own {
            runner
                .run_own(&mut client, &statements, step.range.start)
                .await?;
        } else {
            runner
                .run_transaction(&mut client, &statements, step.range)
                .await?;
        }
    }
    let _ = client
        .execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&locks::ADVISORY_CLASS, &locks::ADVISORY_OBJ],
        )
        .await;
    Ok(Outcome::Applied)
}

/// PHASEGATE_REQUIRE_EXPAND: this database's ledger must hold the applied expand of the same
/// migration (namespace, name, uid). Reads only; creates nothing.
async fn require_expand(client: &Client, id: &Identity) -> Result<(), ApplyError> {
    let db = |e: tokio_postgres::Error| ApplyError::db(&e, None);
    let has_ledger: bool = client
        .query_one("SELECT to_regclass('phasegate.ledger') IS NOT NULL", &[])
        .await
        .map_err(db)?
        .get(0);
    let entry = if has_ledger {
        ledger::get(client, id, Phase::Expand.as_str())
            .await
            .map_err(db)?
    } else {
        None
    };
    let (ns, name) = (&id.namespace, &id.name);
    let why = match entry {
        None if !has_ledger => format!(
            "this database has no record of expand of {ns}/{name} (it has no Phasegate ledger)"
        ),
        None => format!("this database has no record of expand of {ns}/{name}"),
        Some(e) if e.uid != id.uid => format!(
            "expand of {ns}/{name} in this database was recorded for another object (uid {}), not this one (uid {})",
            if e.uid.is_empty() { "none" } else { &e.uid },
            id.uid
        ),
        Some(e) if !e.applied => format!(
            "expand of {ns}/{name} in this database is only partially applied ({} of {} statements)",
            e.statements_done, e.statements_total
        ),
        Some(_) => return Ok(()),
    };
    Err(ApplyError::ExpandNotRecorded {
        namespace: ns.clone(),
        name: name.clone(),
        why,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Step {
    range: Range<usize>,
    /// Runs outside a transaction block.
    own: bool,
}

/// Groups statements from `from` on: runs of transactional statements, and each
/// non-transactional statement alone.
fn steps(statements: &[Statement], from: usize, version: i32) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    for (i, s) in statements.iter().enumerate().skip(from) {
        let own = s.tx.needs_own_transaction(version);
        match out.last_mut() {
            Some(last) if !own && !last.own => last.range.end = i + 1,
            _ => out.push(Step {
                range: i..i + 1,
                own,
            }),
        }
    }
    out
}

fn is_lock_failure(e: &tokio_postgres::Error) -> bool {
    matches!(e.code().map(|c| c.code()), Some("55P03") | Some("40P01"))
}

/// Jittered exponential backoff: 50 ms, 100 ms, … capped at 5 s, each scaled by 0.5–1.0.
fn backoff(retry: u32) -> Duration {
    let base = 50u64.saturating_mul(1u64 << retry.min(7)).min(5_000);
    let jittered = rand::rng().random_range(base / 2..=base);
    Duration::from_millis(jittered)
}

fn pg_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn qualified(schema: &str, name: &str) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    if schema.is_empty() {
        q(name)
    } else {
        format!("{}.{}", q(schema), q(name))
    }
}

/// State of a named index in the schema of `table`: None if absent, Some(valid) otherwise.
async fn index_state(
    client: &Client,
    ci: &sql::ConcurrentIndex,
) -> Result<Option<(bool, String)>, tokio_postgres::Error> {
    let table = qualified(&ci.table.schema, &ci.table.name);
    let row = client
        .query_opt(
            "SELECT i.indisvalid AND i.indisready, quote_ident(n.nspname) || '.' || quote_ident(c.relname)
               FROM pg_class c
               JOIN pg_index i ON i.indexrelid = c.oid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relname = $1
                AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = to_regclass($2))",
            &[&ci.index, &table],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

async fn failpoint(cfg: &Config, name: &str) {
    if cfg.failpoint.as_deref() == Some(name) {
        eprintln!("phasegate failpoint {name} reached");
        // A stop ends the pause, so tests can signal a run that sits at a failpoint.
        let _ = pause(&cfg.stop, Duration::from_secs(600)).await;
    }
}

/// The database-side check of contract, run right before every attempt (outside any
/// transaction, holding no table lock), with one time budget for the whole run, and once more
/// inside each transaction right before COMMIT.
struct Gate {
    checker: Option<dbcheck::Checker>,
    timeout: Duration,
    waited: Duration,
}

impl Gate {
    fn new(cfg: &Config) -> Gate {
        let checker = (cfg.phase == Phase::Contract && cfg.database_check).then(|| {
            dbcheck::Checker::new(
                &cfg.identity.app_version,
                cfg.rollout_completed_at.map(|t| t.to_string()),
                cfg.application_names.clone(),
            )
        });
        let checker = checker.map(|mut c| {
            c.rule.order = cfg.version_order;
            c.rule.previous = cfg.previous_versions.clone();
            c
        });
        if let Some(c) = &checker {
            if c.want.is_empty() {
                tracing::warn!("database check: no app version (PHASEGATE_APP_VERSION) given; sessions are not checked for old versions");
            }
            if c.rollout_completed_at.is_none() {
                tracing::info!("database check: no rollout completion time (PHASEGATE_ROLLOUT_COMPLETED_AT) given; transactions are not checked for their age");
            }
        }
        Gate {
            checker: checker.filter(dbcheck::Checker::active),
            timeout: cfg.database_check_timeout,
            waited: Duration::ZERO,
        }
    }

    /// Waits until the check passes; returns how long this call waited for blockers.
    async fn pass(
        &mut self,
        client: &Client,
        stats: &mut Stats,
        waits: &mut Waits,
    ) -> Result<Duration, ApplyError> {
        let Some(checker) = self.checker.as_mut() else {
            return Ok(Duration::ZERO);
        };
        let budget = self.timeout.saturating_sub(self.waited);
        let (waited, blockers) = checker
            .wait_until_clear(client, budget, waits)
            .await
            .map_err(|e| ApplyError::db(&e, None))?;
        self.waited += waited;
        stats.db_check_wait = Some(self.waited);
        if stats.db_check_warning.is_none() {
            stats.db_check_warning = checker.warning();
        }
        if blockers.is_empty() {
            return Ok(waited);
        }
        let mut list: Vec<String> = blockers
            .iter()
            .take(dbcheck::MAX_NAMED)
            .map(|b| b.to_string())
            .collect();
        if blockers.len() > dbcheck::MAX_NAMED {
            list.push(format!("and {} more", blockers.len() - dbcheck::MAX_NAMED));
        }
        Err(ApplyError::DatabaseCheckTimeout {
            count: blockers.len(),
            waited: humantime::format_duration(Duration::from_millis(
                self.waited.as_millis() as u64
            ))
            .to_string(),
            blockers: list.join("; "),
        })
    }

    /// One look inside the transaction, locks held, without waiting: the blockers that appeared
    /// since [`Gate::pass`] (empty when the check is off).
    async fn recheck(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<Vec<dbcheck::Blocker>, ApplyError> {
        let Some(checker) = self.checker.as_mut() else {
            return Ok(Vec::new());
        };
        let seen = checker
            .recheck(tx)
            .await
            .map_err(|e| ApplyError::db(&e, None))?;
        Ok(seen.blockers)
    }
}

/// One run's working state: settings, counters, the gate and the announced waits.
struct Runner<'a> {
    cfg: &'a Config,
    sum: &'a str,
    /// `server_version_num`.
    server_version: i32,
    settings: ConnSettings,
    /// Cancels the statement running on our connection (a stop while it waits for a lock).
    cancel: CancelToken,
    stats: &'a mut Stats,
    gate: Gate,
    waits: Waits,
}

impl Runner<'_> {
    /// Awaits a statement; on a stop request, asks the server to cancel it (a DDL statement in
    /// the lock queue blocks every application query behind it) and gives it [`CANCEL_GRACE`]
    /// to report back. Ok(result) when the statement finished, Err(Stopped) otherwise.
    async fn stoppable(
        &self,
        statement: impl Future<Output = Result<(), tokio_postgres::Error>>,
    ) -> Result<Result<(), tokio_postgres::Error>, ApplyError> {
        tokio::pin!(statement);
        let signal = tokio::select! {
            biased;
            r = &mut statement => return Ok(r),
            signal = self.cfg.stop.wait() => signal,
        };
        // Bounded: an unreachable server must not hold up the exit (closing our connection
        // ends the statement too, within client_connection_check_interval).
        match tokio::time::timeout(CANCEL_GRACE, connect::cancel(&self.settings, &self.cancel))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not cancel the running statement; the connection closes on exit")
            }
            Err(_) => tracing::warn!(
                "cancelling the running statement timed out; the connection closes on exit"
            ),
        }
        match tokio::time::timeout(CANCEL_GRACE, &mut statement).await {
            // It finished before the cancel arrived: the caller records what is true.
            Ok(Ok(())) => Ok(Ok(())),
            _ => Err(signal.into()),
        }
    }

    /// Waits outside the lock queue; fails clearly if the budget runs out.
    async fn wait_for_tables(
        &mut self,
        client: &Client,
        stmts: &[Statement],
        range: &Range<usize>,
        budget_used: &mut Duration,
    ) -> Result<(), ApplyError> {
        let cfg = self.cfg;
        if cfg.lock_wait_timeout.is_zero() {
            // Explicitly disabled: blind retries only (as pgroll or GitLab do).
            return Ok(());
        }
        let mut targets = locks::lock_targets(stmts);
        let budget = cfg.lock_wait_timeout.saturating_sub(*budget_used);
        let waits = &mut self.waits;
        let (waited, blockers) = or_stop(&cfg.stop, async {
            // Looked up on every attempt: an earlier step may have changed the catalog.
            locks::add_implicit_targets(client, stmts, &mut targets)
                .await
                .map_err(|e| ApplyError::db(&e, None))?;
            locks::wait_until_clear(client, &targets, budget, waits)
                .await
                .map_err(|e| ApplyError::db(&e, None))
        })
        .await?;
        self.stats.lock_wait += waited;
        *budget_used += waited;
        if !blockers.is_empty() {
            let list: Vec<String> = blockers.iter().take(3).map(|b| b.to_string()).collect();
            return Err(ApplyError::LockWaitTimeout {
                first: range.start + 1,
                last: range.end,
                waited: humantime::format_duration(Duration::from_secs(budget_used.as_secs()))
                    .to_string(),
                blockers: list.join("; "),
            });
        }
        Ok(())
    }

    /// The database check outside any lock, unless a stop comes first; returns the time it
    /// waited for blockers.
    async fn pass_gate(&mut self, client: &Client) -> Result<Duration, ApplyError> {
        let (gate, stats, waits) = (&mut self.gate, &mut *self.stats, &mut self.waits);
        or_stop(&self.cfg.stop, gate.pass(client, stats, waits)).await
    }

    /// Before an attempt: the tables are free and the database check passes, both observed
    /// just now. The check can wait for minutes, and a new long transaction may take a table
    /// meanwhile; queueing behind it blind would stall the application for up to
    /// `lock_timeout` × retries. So whenever the check waited, look at the locks again. Ends:
    /// each round that waits spends the check's budget, which is finite.
    async fn clear_to_attempt(
        &mut self,
        client: &Client,
        stmts: &[Statement],
        range: &Range<usize>,
        lock_waited: &mut Duration,
    ) -> Result<(), ApplyError> {
        loop {
            self.wait_for_tables(client, stmts, range, lock_waited)
                .await?;
            if self.pass_gate(client).await?.is_zero() {
                return Ok(());
            }
        }
    }

    /// Runs `range` in one transaction together with the ledger update, retrying lock timeouts.
    async fn run_transaction(
        &mut self,
        client: &mut Client,
        all: &[Statement],
        range: Range<usize>,
    ) -> Result<(), ApplyError> {
        let cfg = self.cfg;
        let stmts = &all[range.clone()];
        let mut retries = 0u32;
        let mut waited = Duration::ZERO;
        loop {
            self.clear_to_attempt(client, stmts, &range, &mut waited)
                .await?;
            if let Some(signal) = cfg.stop.requested() {
                return Err(signal.into());
            }
            self.stats.attempts += 1;
            let attempt = self.stats.attempts;
            let tx = client
                .transaction()
                .await
                .map_err(|e| ApplyError::db(&e, None))?;
            let mut set = format!(
                "SET LOCAL lock_timeout = '{}'; SET LOCAL statement_timeout = '{}'",
                pg_ms(cfg.lock_timeout),
                pg_ms(cfg.statement_timeout)
            );
            if self.server_version >= 170_000 && !cfg.statement_timeout.is_zero() {
                // Bounds the whole transaction too, whatever state the session is in.
                set.push_str(&format!(
                    "; SET LOCAL transaction_timeout = '{}'",
                    pg_ms(transaction_timeout(cfg.statement_timeout, stmts.len()))
                ));
            }
            tx.batch_execute(&set)
                .await
                .map_err(|e| ApplyError::db(&e, None))?;
            let mut failure = None;
            for (offset, s) in stmts.iter().enumerate() {
                let n = range.start + offset + 1;
                tracing::debug!(statement = n, kind = %s.kind, attempt, "executing");
                let result = match self.stoppable(tx.batch_execute(&s.sql)).await {
                    Ok(r) => r,
                    Err(stopped) => {
                        rollback(tx).await;
                        return Err(stopped);
                    }
                };
                if let Err(e) = result {
                    failure = Some((n, e));
                    break;
                }
                if let Some(signal) = cfg.stop.requested() {
                    rollback(tx).await;
                    return Err(signal.into());
                }
            }
            if let Some((n, e)) = failure {
                // Dropping the transaction would roll back too, but only lazily; be explicit.
                rollback(tx).await;
                if is_lock_failure(&e) {
                    if retries >= cfg.max_lock_retries {
                        return Err(ApplyError::LockRetriesExhausted {
                            statement: n,
                            attempts: retries + 1,
                            lock_timeout: humantime::format_duration(cfg.lock_timeout).to_string(),
                        });
                    }
                    retries += 1;
                    self.stats.lock_retries += 1;
                    let delay = backoff(retries - 1);
                    tracing::warn!(
                        statement = n,
                        attempt,
                        retry_in_ms = delay.as_millis() as u64,
                        sqlstate = e.code().map(|c| c.code()).unwrap_or(""),
                        "lock not available; rolled back, will retry"
                    );
                    pause(&cfg.stop, delay).await?;
                    continue;
                }
                return Err(ApplyError::db(&e, Some(n)));
            }
            ledger::record(
                &tx,
                &cfg.identity,
                cfg.phase.as_str(),
                self.sum,
                all.len(),
                range.end,
                retries + 1,
            )
            .await
            .map_err(|e| ApplyError::db(&e, None))?;
            failpoint(cfg, "pause-before-commit").await;

            // The gate holds until COMMIT: with our locks held, look once more. A session that
            // connected while we queued for a lock would otherwise meet the new schema.
            let blockers = self.gate.recheck(&tx).await?;
            if !blockers.is_empty() {
                rollback(tx).await;
                self.stats.db_check_rollbacks += 1;
                for b in &blockers {
                    dbcheck::announce(&mut self.waits, b);
                }
                tracing::warn!(
                    attempt,
                    blockers = blockers.len(),
                    "database check failed right before COMMIT; rolled back, waiting outside the locks"
                );
                // Each lost attempt costs the check's budget a poll interval, so a flapping
                // blocker cannot keep us taking and dropping locks forever.
                self.gate.waited += dbcheck::POLL;
                pause(&cfg.stop, dbcheck::POLL).await?;
                continue;
            }
            // Last word before COMMIT: a stop request means never commit.
            if let Some(signal) = cfg.stop.requested() {
                rollback(tx).await;
                return Err(signal.into());
            }
            let gate_checked = Instant::now();
            let committed = tx.commit().await;
            let window = gate_checked.elapsed();
            if let Err(e) = committed {
                if is_lock_failure(&e) && retries < cfg.max_lock_retries {
                    retries += 1;
                    self.stats.lock_retries += 1;
                    pause(&cfg.stop, backoff(retries - 1)).await?;
                    continue;
                }
                return Err(ApplyError::db(&e, Some(range.end)));
            }
            self.stats.gate_to_commit =
                Some(self.stats.gate_to_commit.unwrap_or_default().max(window));
            if let Some(signal) = cfg.stop.requested() {
                tracing::warn!(
                    signal = signal.name(),
                    "a stop request arrived after COMMIT was sent; the transaction committed and the ledger records it"
                );
            }
            failpoint(cfg, "pause-after-commit").await;
            self.stats.statements += stmts.len();
            tracing::info!(
                statements = stmts.len(),
                attempt,
                window_us = window.as_micros() as u64,
                "transaction committed"
            );
            return Ok(());
        }
    }

    /// Runs one statement outside a transaction block, idempotently, then records progress.
    async fn run_own(
        &mut self,
        client: &mut Client,
        all: &[Statement],
        index: usize,
    ) -> Result<(), ApplyError> {
        let cfg = self.cfg;
        let s = &all[index];
        let n = index + 1;
        let range = index..index + 1;
        let mut retries = 0u32;
        let mut waited = Duration::ZERO;
        let mut skip = false;
        loop {
            // A concurrent build that failed or was killed leaves an invalid index behind: drop it
            // and build again; a valid one means the build finished before the ledger was updated.
            if let Some(ci) = &s.concurrent_index {
                match index_state(client, ci)
                    .await
                    .map_err(|e| ApplyError::db(&e, Some(n)))?
                {
                    Some((true, _)) => {
                        tracing::info!(index = %ci.index, "index already exists and is valid; skipping its build");
                        skip = true;
                    }
                    Some((false, qname)) => {
                        tracing::warn!(index = %qname, "dropping invalid index left by an interrupted concurrent build");
                        client
                            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {qname}"))
                            .await
                            .map_err(|e| ApplyError::db(&e, Some(n)))?;
                    }
                    None => {}
                }
            }
            if s.kind == "DropStmt" && s.concurrent {
                // Re-running DROP INDEX CONCURRENTLY after it succeeded must not fail.
                let mut any = false;
                for t in &s.tables {
                    let row = client
                        .query_one(
                            "SELECT to_regclass($1) IS NOT NULL",
                            &[&qualified(&t.schema, &t.name)],
                        )
                        .await
                        .map_err(|e| ApplyError::db(&e, Some(n)))?;
                    any |= row.get::<_, bool>(0);
                }
                skip = !any;
            }
            if skip {
                break;
            }
            self.clear_to_attempt(client, std::slice::from_ref(s), &range, &mut waited)
                .await?;
            if let Some(signal) = cfg.stop.requested() {
                return Err(signal.into());
            }
            self.stats.attempts += 1;
            // Concurrent variants take only SHARE UPDATE EXCLUSIVE, which never blocks application
            // reads or writes, and must wait for older transactions by design: no lock_timeout.
            let lock_timeout = if s.concurrent {
                Duration::ZERO
            } else {
                cfg.lock_timeout
            };
            client
                .batch_execute(&format!(
                    "SET lock_timeout = '{}'; SET statement_timeout = '{}'",
                    pg_ms(lock_timeout),
                    pg_ms(cfg.statement_timeout)
                ))
                .await
                .map_err(|e| ApplyError::db(&e, None))?;
            // A stop cancels the statement; if it finished anyway, it is applied (it commits by
            // itself) and is recorded below before the run stops at the next step.
            let result = self.stoppable(client.batch_execute(&s.sql)).await?;
            let _ = client
                .batch_execute("RESET lock_timeout; RESET statement_timeout")
                .await;
            match result {
                Ok(()) => {
                    self.stats.statements += 1;
                    break;
                }
                Err(e) if is_lock_failure(&e) && retries < cfg.max_lock_retries => {
                    retries += 1;
                    self.stats.lock_retries += 1;
                    let delay = backoff(retries - 1);
                    tracing::warn!(
                        statement = n,
                        retry_in_ms = delay.as_millis() as u64,
                        "lock not available; will retry"
                    );
                    pause(&cfg.stop, delay).await?;
                }
                Err(e) => {
                    if let Some(ci) = &s.concurrent_index {
                        if let Ok(Some((false, qname))) = index_state(client, ci).await {
                            let _ = client
                                .batch_execute(&format!(
                                    "DROP INDEX CONCURRENTLY IF EXISTS {qname}"
                                ))
                                .await;
                            tracing::warn!(index = %qname, "dropped the invalid index left by the failed build");
                        }
                    }
                    if is_lock_failure(&e) {
                        return Err(ApplyError::LockRetriesExhausted {
                            statement: n,
                            attempts: retries + 1,
                            lock_timeout: humantime::format_duration(lock_timeout).to_string(),
                        });
                    }
                    return Err(ApplyError::db(&e, Some(n)));
                }
            }
        }
        failpoint(cfg, "pause-before-commit").await;
        ledger::record(
            &*client,
            &cfg.identity,
            cfg.phase.as_str(),
            self.sum,
            all.len(),
            index + 1,
            retries + 1,
        )
        .await
        .map_err(|e| ApplyError::db(&e, None))?;
        failpoint(cfg, "pause-after-commit").await;
        Ok(())
    }
}

/// Rolls back explicitly (dropping a transaction only queues the ROLLBACK), but never waits
/// long for it: a stopping run must exit promptly, and the server rolls back on disconnect.
async fn rollback(tx: tokio_postgres::Transaction<'_>) {
    let _ = tokio::time::timeout(CANCEL_GRACE, tx.rollback()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_group_transactional_runs() {
        let st = sql::parse_phase(
            "ALTER TABLE a ADD x int; ALTER TABLE a ADD y int; CREATE INDEX CONCURRENTLY i ON a (x); ALTER TABLE a ADD z int; ALTER TYPE m ADD VALUE 'v'",
        )
        .expect("parses");
        assert_eq!(
            steps(&st, 0, 150_000),
            vec![
                Step {
                    range: 0..2,
                    own: false
                },
                Step {
                    range: 2..3,
                    own: true
                },
                Step {
                    range: 3..5,
                    own: false
                }
            ]
        );
        assert_eq!(
            steps(&st, 3, 110_000),
            vec![
                Step {
                    range: 3..4,
                    own: false
                },
                Step {
                    range: 4..5,
                    own: true
                }
            ]
        );
        assert!(steps(&st, 5, 150_000).is_empty());
    }

    #[test]
    fn durations_and_backoff() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
        for r in 0..20 {
            let b = backoff(r);
            assert!(
                b <= Duration::from_secs(5) && b >= Duration::from_millis(25),
                "{b:?}"
            );
        }
    }

    #[test]
    fn session_timeouts() {
        let s = Duration::from_secs;
        assert_eq!(idle_in_transaction_timeout(s(2)), s(6));
        assert_eq!(idle_in_transaction_timeout(Duration::from_millis(50)), s(1));
        assert_eq!(transaction_timeout(s(600), 2), s(1800));
    }

    #[test]
    fn checksum_ignores_surrounding_whitespace() {
        assert_eq!(checksum("SELECT 1;\n"), checksum("  SELECT 1;"));
        assert_ne!(checksum("SELECT 1"), checksum("SELECT 2"));
        assert_eq!(checksum("x").len(), 64);
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s: Secret = "postgres://u:pw@h/db".parse().unwrap_or_default();
        assert_eq!(format!("{s:?}"), "\"***\"");
    }
}
