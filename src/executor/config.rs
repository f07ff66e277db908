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

use crate::protocol::env::{self as penv, parse_bool, ExecutorEnv};
pub use crate::protocol::env::{parse_duration, Secret};

/// Arguments of `phasegate apply`: flags for a run by hand. A Job sets the same settings as
/// `PHASEGATE_*` variables ([`ExecutorEnv`]); a flag wins over its variable.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(
    after_help = "Every setting can also come from its PHASEGATE_* environment variable (see \
docs/executor.md); a flag wins over it. Exit status: 0 when the phase is applied (or was already); \
1 when it failed; 2 when a setting is missing or invalid; 143 (SIGTERM) or 130 (SIGINT) when a \
stop signal ended the run before COMMIT: nothing it had not committed yet was applied. A signal \
after COMMIT was sent changes nothing: the report says applied. The JSON report is the last line \
on stdout and goes to --termination-log."
)]
pub struct ApplyArgs {
    /// Which phase to run [env: PHASEGATE_PHASE].
    #[arg(long, value_enum)]
    pub phase: Option<Phase>,
    /// The phase's SQL [env: PHASEGATE_SQL].
    #[arg(long, conflicts_with = "file")]
    pub sql: Option<String>,
    /// Read the phase's SQL from a file instead.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The database, the migration and where the report goes.
    #[command(flatten)]
    pub run: RunArgs,
    /// The migration's `appVersion`: recorded in the ledger; contract's database check
    /// compares sessions' versions with it.
    #[arg(long)]
    pub app_version: Option<String>,
    /// Expand only: wait until the ledger records as applied the expand of each of these
    /// migrations (comma-separated names, in the same namespace) before running this one.
    #[arg(long, value_name = "NAME,...")]
    pub expand_after: Option<String>,
    /// `lock_timeout` of each attempt [default: 2s].
    #[arg(long, value_parser = parse_duration)]
    pub lock_timeout: Option<Duration>,
    /// `statement_timeout` of each statement [default: 10m].
    #[arg(long, value_parser = parse_duration)]
    pub statement_timeout: Option<Duration>,
    /// Retries after a lock timeout (SQLSTATE 55P03) or deadlock [default: 10].
    #[arg(long)]
    pub max_lock_retries: Option<u32>,
    /// How long to wait, outside the lock queue, for older transactions to release the tables
    /// (0 disables lock-aware waiting: plain retries on lock timeouts) [default: 10m].
    #[arg(long, value_parser = parse_duration)]
    pub lock_wait_timeout: Option<Duration>,
    /// Waiting outside the lock queue, transactions younger than this are short application work
    /// and attempted past (the attempt's lock_timeout bounds what it costs them) [default: 30ms].
    #[arg(long, value_parser = parse_duration)]
    pub young_transaction: Option<Duration>,
    /// After waiting this long outside the lock queue with only transactions younger than
    /// lock_timeout in the way (a steady stream of short ones), attempt anyway with lock_timeout
    /// (never before lock_timeout has passed; 0: never) [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    pub lock_wait_attempt_after: Option<Duration>,
    /// How long to wait for another migration on the same database to finish [default: 10m].
    #[arg(long, value_parser = parse_duration)]
    pub advisory_lock_timeout: Option<Duration>,
    /// Test hook: `pause-before-commit` or `pause-after-commit` makes the process sleep there
    /// (until a stop signal).
    #[arg(long, hide = true)]
    pub failpoint: Option<String>,
    /// Settings of contract's database check and identity check (ignored for expand); last,
    /// because their help heading applies to every argument after them.
    #[command(flatten, next_help_heading = "Contract only")]
    pub contract: Box<ContractArgs>,
}

/// What `phasegate apply` and `phasegate backfill` both take: the database, the migration
/// whose ledger rows the run keeps, its tenants and where its report goes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// PostgreSQL URL (postgres://user:password@host:port/db?sslmode=verify-full&sslrootcert=...)
    /// [env: PHASEGATE_DATABASE_URL].
    #[arg(long)]
    pub database_url: Option<Secret>,
    /// Namespace of the migration: with its name, the key of its ledger rows
    /// [default: default].
    #[arg(long)]
    pub migration_namespace: Option<String>,
    /// Name of the migration (ledger key) [default: local].
    #[arg(long)]
    pub migration_name: Option<String>,
    /// UID of the DatabaseMigration object, recorded in the ledger.
    #[arg(long)]
    pub migration_uid: Option<String>,
    /// Run on every tenant this selects, as JSON of the DatabaseMigration's `spec.tenants`,
    /// e.g. `{"schemas":"tenant\\_%","maxConcurrent":4}` (docs/fleet.md) [env: PHASEGATE_TENANTS].
    #[arg(long, value_name = "JSON")]
    pub tenants: Option<String>,
    /// With --tenants: expand's SQL, run first on a tenant whose expand is not applied (created
    /// since expand ran) [env: PHASEGATE_TENANT_EXPAND_SQL].
    #[arg(long, value_name = "SQL")]
    pub tenant_expand_sql: Option<String>,
    /// With --tenants listing `servers`: the URL of each, in their order (repeat for each)
    /// [env: PHASEGATE_SERVER_URL_0, _1, …].
    #[arg(long = "server-url", value_name = "URL")]
    pub server_urls: Vec<Secret>,
    /// How long to wait for the database connection [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Where the JSON report goes (skipped when the directory does not exist)
    /// [default: /dev/termination-log].
    #[arg(long)]
    pub termination_log: Option<PathBuf>,
}

/// [`RunArgs`] resolved: flags over the environment over defaults.
#[derive(Debug)]
pub(super) struct RunSettings {
    pub database_url: Secret,
    pub migration_namespace: String,
    pub migration_name: String,
    pub migration_uid: String,
    pub tenants: Option<crate::api::TenantsSpec>,
    pub tenant_expand_sql: Option<String>,
    pub server_urls: Vec<Secret>,
    pub connect_timeout: Duration,
    pub termination_log: PathBuf,
}

impl RunArgs {
    pub(super) fn resolve(self, env: &ExecutorEnv<Secret>) -> Result<RunSettings, String> {
        let Some(database_url) = self.database_url.or(env.database_url.clone()) else {
            return Err(format!(
                "--database-url or {} is required",
                penv::DATABASE_URL
            ));
        };
        Ok(RunSettings {
            database_url,
            migration_namespace: setting(
                self.migration_namespace,
                env.migration_namespace.clone(),
                || "default".into(),
            ),
            migration_name: setting(self.migration_name, env.migration_name.clone(), || {
                "local".into()
            }),
            migration_uid: setting(self.migration_uid, env.migration_uid.clone(), String::new),
            tenants: match self.tenants {
                Some(text) => Some(
                    <crate::api::TenantsSpec as penv::EnvText>::from_text(&text)
                        .map_err(|e| format!("--tenants: {e}"))?,
                ),
                None => env.tenants.clone(),
            },
            tenant_expand_sql: self.tenant_expand_sql.or(env.tenant_expand_sql.clone()),
            server_urls: if self.server_urls.is_empty() {
                env.server_urls.clone()
            } else {
                self.server_urls
            },
            connect_timeout: duration(
                self.connect_timeout,
                &env.connect_timeout,
                penv::CONNECT_TIMEOUT,
                Duration::from_secs(10),
            )?,
            termination_log: termination_log(self.termination_log, env),
        })
    }
}

/// Contract-only arguments of `phasegate apply` (boxed in [`ApplyArgs`]: they are many).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ContractArgs {
    /// Refuse to run while sessions of older application versions (`application_name`
    /// `<app>@<version>`) or transactions begun before the rollout completed are in the
    /// database, here and again right before COMMIT (`true`/`false`; default true).
    #[arg(long)]
    pub database_check: Option<String>,
    /// When the rollout completed (RFC 3339); older transactions block contract.
    #[arg(long)]
    pub rollout_completed_at: Option<String>,
    /// How long contract waits for old sessions and transactions to end before failing
    /// [default: 5m].
    #[arg(long, value_parser = parse_duration)]
    pub database_check_timeout: Option<Duration>,
    /// The applications the database check judges by version, as comma-separated
    /// `<app>` names of `application_name` `<app>@<version>` (compared ignoring ASCII case).
    /// Sessions of other applications are not judged by version (the transaction rule still
    /// applies to them). Unset or empty: every `<app>@<version>` session is judged.
    #[arg(long, value_name = "APP,...")]
    pub application_names: Option<String>,
    /// How a session's version compares with the app version: `SemVer` (default;
    /// semantic order where both parse, equality otherwise), `Exact`, or `NotPrevious`
    /// (only the versions in --previous-versions are old).
    #[arg(long, value_name = "ORDER")]
    pub version_order: Option<String>,
    /// With `NotPrevious`: the comma-separated versions that count as old.
    #[arg(long, value_name = "V,...")]
    pub previous_versions: Option<String>,
    /// Refuse (nothing applied) unless this database's ledger records the applied
    /// expand of the same migration — namespace, name and migration UID — e.g. when the
    /// Secret was repointed to another database (`true`/`false`; default false).
    #[arg(long)]
    pub require_expand: Option<String>,
    /// The operator's commit-grant endpoint (base URL). When set, contract never COMMITs
    /// without a fresh grant for this attempt from the leading operator (the operator sets
    /// it on every contract Job; without it, a run by hand is not fenced by the operator).
    #[arg(long, value_name = "URL")]
    pub grant_url: Option<String>,
    /// The attempt this run is (its Job's attempt number), for the grant [default: 0].
    #[arg(long)]
    pub attempt: Option<u32>,
    /// How long the run waits for a grant, in all, before it gives up (exit 1, report
    /// `no commit grant`) [default: 10m].
    #[arg(long, value_parser = parse_duration)]
    pub grant_wait: Option<Duration>,
    /// The URL of a hot standby whose sessions the database check judges too (repeat for
    /// each; a standby that cannot be reached or read holds contract)
    /// [env: PHASEGATE_REPLICA_URL_0, _1, …].
    #[arg(long = "replica-url", value_name = "URL")]
    pub replica_urls: Vec<Secret>,
    /// Also check every physical standby in the primary's `pg_stat_replication`, at its
    /// `client_addr` with the primary URL's other settings (`true`/`false`; default false).
    #[arg(long)]
    pub replica_discover: Option<String>,
    /// PgBouncer is in front of the database: the database check also reads `SHOW CLIENTS` on
    /// every address of the pooler's host name and judges its clients' application names
    /// (`true`/`false`; default false, or true when --pooler-admin-url is given).
    #[arg(long)]
    pub pooler: Option<String>,
    /// URL of PgBouncer's admin console (a `stats_users`/`admin_users` user, database
    /// `pgbouncer`) [default: the database URL with the database name `pgbouncer`].
    #[arg(long, value_name = "URL")]
    pub pooler_admin_url: Option<Secret>,
}

/// A setting's value: its flag, else its variable, else `default`.
pub(super) fn setting<T>(flag: Option<T>, var: Option<T>, default: impl FnOnce() -> T) -> T {
    flag.or(var).unwrap_or_else(default)
}

/// A duration setting: its flag, else its variable (text), else `default`.
pub(super) fn duration(
    flag: Option<Duration>,
    var: &Option<String>,
    name: &str,
    default: Duration,
) -> Result<Duration, String> {
    match (flag, var) {
        (Some(d), _) => Ok(d),
        (None, Some(text)) => parse_duration(text).map_err(|e| format!("{name}: {e}")),
        (None, None) => Ok(default),
    }
}

/// The settings of a run, flags over the environment over defaults: what clap once read
/// from both. A missing or invalid one is a usage error (exit 2).
#[derive(Debug)]
pub(super) struct Settings {
    pub run: RunSettings,
    pub phase: Phase,
    pub sql: Option<String>,
    pub file: Option<PathBuf>,
    pub app_version: String,
    pub expand_after: Vec<String>,
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
    pub max_lock_retries: u32,
    pub lock_wait_timeout: Duration,
    pub young_transaction: Duration,
    pub lock_wait_attempt_after: Duration,
    pub advisory_lock_timeout: Duration,
    pub failpoint: Option<String>,
    pub contract: ContractSettings,
}

/// [`ContractArgs`] resolved.
#[derive(Debug)]
pub(super) struct ContractSettings {
    pub database_check: Option<String>,
    pub rollout_completed_at: Option<String>,
    pub database_check_timeout: Duration,
    pub application_names: Option<String>,
    pub version_order: Option<String>,
    pub previous_versions: Option<String>,
    pub require_expand: Option<String>,
    pub grant_url: Option<String>,
    pub attempt: u32,
    pub grant_wait: Duration,
    pub replica_urls: Vec<Secret>,
    pub replica_discover: Option<String>,
    pub pooler: Option<String>,
    pub pooler_admin_url: Option<Secret>,
}

/// The termination log a run writes: its flag, else its variable, else the kubelet's file.
pub(super) fn termination_log(flag: Option<PathBuf>, env: &ExecutorEnv<Secret>) -> PathBuf {
    setting(flag, env.termination_log.clone().map(PathBuf::from), || {
        PathBuf::from("/dev/termination-log")
    })
}

impl ApplyArgs {
    /// Flags over the environment over defaults.
    pub(super) fn resolve(self, env: ExecutorEnv<Secret>) -> Result<Settings, String> {
        let phase = match (self.phase, env.phase.as_deref()) {
            (Some(p), _) => p,
            (None, Some(text)) => <Phase as clap::ValueEnum>::from_str(text.trim(), false)
                .map_err(|_| format!("{}: expand or contract, not {text:?}", penv::PHASE))?,
            (None, None) => return Err(format!("--phase or {} is required", penv::PHASE)),
        };
        let run = self.run.resolve(&env)?;
        let ms = Duration::from_millis;
        let c = *self.contract;
        let contract = ContractSettings {
            database_check: c.database_check.or(env.database_check.clone()),
            rollout_completed_at: c.rollout_completed_at.or(env.rollout_completed_at.clone()),
            database_check_timeout: duration(
                c.database_check_timeout,
                &env.database_check_timeout,
                penv::DATABASE_CHECK_TIMEOUT,
                Duration::from_secs(300),
            )?,
            application_names: c
                .application_names
                .or(env.application_names.as_ref().map(|v| v.join(","))),
            version_order: c.version_order.or(env.version_order.clone()),
            previous_versions: c
                .previous_versions
                .or(env.previous_versions.as_ref().map(|v| v.join(","))),
            require_expand: c.require_expand.or(env.require_expand.clone()),
            grant_url: c.grant_url.or(env.grant_url.clone()),
            attempt: setting(c.attempt, env.attempt, || 0),
            grant_wait: duration(
                c.grant_wait,
                &env.grant_wait,
                crate::protocol::grant::ENV_WAIT,
                Duration::from_secs(600),
            )?,
            replica_urls: if c.replica_urls.is_empty() {
                env.replica_urls.clone()
            } else {
                c.replica_urls
            },
            replica_discover: c.replica_discover.or(env.replica_discover.clone()),
            pooler: c.pooler.or(env.pooler.clone()),
            pooler_admin_url: c.pooler_admin_url.or(env.pooler_admin_url.clone()),
        };
        Ok(Settings {
            run,
            phase,
            sql: self.sql.or(env.sql.clone()).filter(|_| self.file.is_none()),
            file: self.file,
            app_version: setting(self.app_version, env.app_version, String::new),
            expand_after: match self.expand_after {
                Some(text) => <Vec<String> as penv::EnvText>::from_text(&text)?,
                None => env.expand_after.unwrap_or_default(),
            },
            lock_timeout: duration(
                self.lock_timeout,
                &env.lock_timeout,
                penv::LOCK_TIMEOUT,
                ms(2000),
            )?,
            statement_timeout: duration(
                self.statement_timeout,
                &env.statement_timeout,
                penv::STATEMENT_TIMEOUT,
                Duration::from_secs(600),
            )?,
            max_lock_retries: setting(self.max_lock_retries, env.max_lock_retries, || 10),
            lock_wait_timeout: duration(
                self.lock_wait_timeout,
                &env.lock_wait_timeout,
                penv::LOCK_WAIT_TIMEOUT,
                Duration::from_secs(600),
            )?,
            young_transaction: duration(
                self.young_transaction,
                &env.young_transaction,
                penv::YOUNG_TRANSACTION,
                ms(30),
            )?,
            lock_wait_attempt_after: duration(
                self.lock_wait_attempt_after,
                &env.lock_wait_attempt_after,
                penv::LOCK_WAIT_ATTEMPT_AFTER,
                Duration::from_secs(10),
            )?,
            advisory_lock_timeout: duration(
                self.advisory_lock_timeout,
                &env.advisory_lock_timeout,
                penv::ADVISORY_LOCK_TIMEOUT,
                Duration::from_secs(600),
            )?,
            failpoint: self.failpoint.or(env.failpoint),
            contract,
        })
    }
}

/// Everything a run needs, independent of clap.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: Secret,
    pub phase: Phase,
    pub sql: String,
    pub identity: Identity,
    /// Expand only: earlier migrations whose expand the ledger must record first.
    pub expand_after: Vec<String>,
    /// Run the phase on every tenant this selects (see [`super::fleet`]).
    pub tenants: Option<crate::api::TenantsSpec>,
    /// The advisory lock's object key: [`super::locks::ADVISORY_OBJ`], or a tenant schema's.
    pub advisory_obj: i32,
    /// A fleet run's connections, handed from one tenant's run to the next.
    pub sessions: Option<super::sessions::Sessions>,
    /// A fleet tenant's run: its routine lines (applying, committed, done) are left out; the
    /// fleet prints progress instead, so the log does not grow with the tenants.
    pub quiet: bool,
    /// What runs on the same server as the same role all learn alike (shared by clones: a
    /// fleet's tenants ask once).
    pub facts: super::facts::ServerFacts,
    /// A schema tenant's run: its session's `search_path` (set on the reused connection).
    pub search_path: Option<String>,
    /// Contract with tenants: expand's SQL, for a tenant created since expand ran.
    pub tenant_expand_sql: Option<String>,
    /// With tenants: the URL of each of `tenants.servers`, in their order.
    pub server_urls: Vec<Secret>,
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
    /// A fleet's contract: one grant, asked for the attempt, serving every tenant's run (the
    /// requests would be the same); None starts a grant per run from `grant`.
    pub shared_grant: Option<std::sync::Arc<super::grant::Grant>>,
    /// Contract with the database check: hot standbys checked too (see [`super::standbys`]).
    pub replica_urls: Vec<Secret>,
    /// Contract with the database check: also check the standbys the primary streams to.
    pub replica_discover: bool,
    /// Contract only, with the database check: PgBouncer in front of the database, whose
    /// clients the check reads too (see [`super::pooler_clients`]).
    pub pooler: Option<super::pooler_clients::PoolerConfig>,
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
            expand_after: Vec::new(),
            tenants: None,
            tenant_expand_sql: None,
            server_urls: Vec::new(),
            advisory_obj: super::locks::ADVISORY_OBJ,
            sessions: None,
            quiet: false,
            facts: Default::default(),
            search_path: None,
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
            shared_grant: None,
            replica_urls: Vec::new(),
            replica_discover: false,
            pooler: None,
            stop: Stop::new(),
            failpoint: None,
        }
    }
}

impl Config {
    /// The URLs whose secrets must never be printed: the database's, the pooler admin
    /// console's, the hot standbys' and the tenants' other servers'.
    pub fn secret_urls(&self) -> Vec<&str> {
        let admin = self.pooler.as_ref().and_then(|p| p.admin_url.as_ref());
        std::iter::once(&self.database_url)
            .chain(admin)
            .chain(&self.replica_urls)
            .chain(&self.server_urls)
            .map(|u| u.0.as_str())
            .collect()
    }
}

/// The [`Config`] of a run told only by its environment, as in a Job.
pub fn config_from_env(env: ExecutorEnv<Secret>) -> Result<Config, String> {
    let settings = ApplyArgs::default().resolve(env)?;
    config_from_args(settings).map_err(|(_, e)| e.to_string())
}

pub(super) fn config_from_args(args: Settings) -> Result<Config, (Phase, Box<ApplyError>)> {
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
    if require_expand && args.run.migration_uid.trim().is_empty() {
        return Err(fail(ApplyError::Setting(
            "PHASEGATE_REQUIRE_EXPAND=true needs PHASEGATE_MIGRATION_UID: the expand to require is identified by it".into(),
        )));
    }
    let replica_discover = database_check
        && parse_bool(
            "PHASEGATE_REPLICA_DISCOVER",
            args.contract.replica_discover.as_deref(),
        )
        .map_err(setting)?
        .unwrap_or(false);
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
                namespace: args.run.migration_namespace.clone(),
                migration: args.run.migration_name.clone(),
                uid: args.run.migration_uid.clone(),
                phase: phase.as_str().to_string(),
                attempt: args.contract.attempt,
                hold_ms: 0,
            },
            wait: args.contract.grant_wait,
        });
    let pooler =
        pooler_config(&args.contract, &args.run.database_url, database_check).map_err(setting)?;
    Ok(Config {
        database_url: args.run.database_url,
        phase,
        sql,
        identity: Identity {
            namespace: args.run.migration_namespace,
            name: args.run.migration_name,
            uid: args.run.migration_uid,
            app_version: args.app_version,
        },
        tenants: args.run.tenants,
        advisory_obj: super::locks::ADVISORY_OBJ,
        sessions: None,
        quiet: false,
        facts: Default::default(),
        search_path: None,
        tenant_expand_sql: args.run.tenant_expand_sql.filter(|_| contract),
        server_urls: args.run.server_urls,
        expand_after: if contract {
            Vec::new()
        } else {
            args.expand_after
        },
        lock_timeout: args.lock_timeout,
        statement_timeout: args.statement_timeout,
        max_lock_retries: args.max_lock_retries,
        lock_wait_timeout: args.lock_wait_timeout,
        young_transaction: args.young_transaction,
        lock_wait_attempt_after: args.lock_wait_attempt_after,
        advisory_lock_timeout: args.advisory_lock_timeout,
        connect_timeout: args.run.connect_timeout,
        database_check,
        rollout_completed_at,
        database_check_timeout: args.contract.database_check_timeout,
        application_names,
        version_order,
        previous_versions,
        require_expand,
        grant,
        shared_grant: None,
        replica_urls: if database_check {
            args.contract.replica_urls
        } else {
            Vec::new()
        },
        replica_discover,
        pooler,
        stop: Stop::new(),
        failpoint: args.failpoint,
    })
}

/// `PHASEGATE_POOLER` and `PHASEGATE_POOLER_ADMIN_URL`: an admin URL alone declares the
/// pooler; `false` turns it off either way. Only with the database check (contract).
fn pooler_config(
    c: &ContractSettings,
    database_url: &Secret,
    database_check: bool,
) -> Result<Option<super::pooler_clients::PoolerConfig>, String> {
    let declared = parse_bool(penv::POOLER, c.pooler.as_deref())?;
    let admin_url = c
        .pooler_admin_url
        .clone()
        .filter(|u| !u.0.trim().is_empty());
    let on = declared.unwrap_or(admin_url.is_some());
    if !(on && database_check) {
        return Ok(None);
    }
    // A URL that cannot work fails the run now, not after the check's timeout.
    super::pooler_clients::admin_settings(database_url, admin_url.as_ref())
        .map_err(|e| format!("{}: {e}", penv::POOLER_ADMIN_URL))?;
    Ok(Some(super::pooler_clients::PoolerConfig { admin_url }))
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

    /// `apply` and `backfill` share their database, migration, tenant and report flags: each
    /// wins over its variable in both.
    #[test]
    fn apply_and_backfill_take_the_same_run_flags() {
        #[derive(clap::Parser)]
        enum Cli {
            Apply(ApplyArgs),
            Backfill(super::super::backfill::BackfillArgs),
        }
        let run = [
            "--database-url=postgres://u@flag/db",
            "--migration-name=from-flag",
            "--tenants={\"schemas\":\"t%\"}",
            "--server-url=postgres://u@s1/db",
            "--connect-timeout=3s",
            "--termination-log=/tmp/report",
        ];
        let env = ExecutorEnv::<Secret> {
            database_url: Some(Secret("postgres://u@env/db".into())),
            migration_name: Some("from-env".into()),
            migration_namespace: Some("shop".into()),
            ..Default::default()
        };
        let check = |r: RunSettings| {
            assert_eq!(r.database_url.0, "postgres://u@flag/db");
            assert_eq!(
                (r.migration_namespace.as_str(), r.migration_name.as_str()),
                ("shop", "from-flag")
            );
            assert_eq!(r.tenants.and_then(|t| t.schemas).as_deref(), Some("t%"));
            assert_eq!(r.server_urls, [Secret("postgres://u@s1/db".into())]);
            assert_eq!(r.connect_timeout, Duration::from_secs(3));
            assert_eq!(r.termination_log, PathBuf::from("/tmp/report"));
        };
        let parse = |cmd: &str, extra: &[&str]| {
            <Cli as clap::Parser>::try_parse_from(
                ["phasegate", cmd].iter().chain(&run).chain(extra).copied(),
            )
            .map_err(|e| e.to_string())
        };
        match parse("apply", &["--phase=expand", "--sql=SELECT 1"]) {
            Ok(Cli::Apply(a)) => check(a.run.resolve(&env).expect("apply settings")),
            other => panic!("{:?}", other.err()),
        }
        match parse("backfill", &["--table=t", "--key=id", "--sql=SELECT 1"]) {
            Ok(Cli::Backfill(b)) => check(b.run.resolve(&env).expect("backfill settings")),
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s: Secret = "postgres://u:pw@h/db".parse().unwrap_or_default();
        assert_eq!(format!("{s:?}"), "\"***\"");
    }
}
