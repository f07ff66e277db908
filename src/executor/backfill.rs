//! `phasegate backfill`: fills data between expand and contract in small keyset batches.
//!
//! Each batch runs the user's batch SQL for one key range `($1, $2]` (exclusive lower bound,
//! inclusive upper bound: `bigint` for an integer key, the key's own type otherwise) and
//! advances the checkpoint row in
//! `phasegate.backfill` in the same short transaction, so a batch is applied exactly once
//! whatever crashes or retries: a killed executor (SIGKILL, a node drain) loses at most the
//! batch in flight, which PostgreSQL rolls back, and the next run resumes after the last
//! committed batch. The checkpoint update is a compare-and-set on the previous upper bound, so
//! two executors of the same backfill (a stopped pod still terminating while the next attempt
//! starts) can never both commit the same batch; each transaction also takes the migration's
//! advisory lock (transaction-scoped), so their batches take turns and the one that finds the
//! checkpoint moved continues from it.
//!
//! Pooler-safe (PgBouncer in transaction pooling): unnamed statements only, settings as
//! `SET LOCAL` in each transaction, nothing held between transactions (docs/backfill.md,
//! "Connection poolers").
//!
//! The checkpoint is keyed by the migration (namespace, name), and carries its uid, the
//! backfill's checksum and the *rollout epoch* (`status.rolloutCompletedAt`). A different
//! epoch means the rollout regressed since the scan began (old code ran again and may have
//! written rows behind the checkpoint, without the new column): the scan restarts from the
//! beginning. The same epoch resumes.
//!
//! The scan ends at the largest key that existed when it began (recorded in the checkpoint):
//! the backfill only runs once no old code is left, so rows inserted later were written by new
//! code and need no backfill, and a busy table's growing tail is never chased.
//!
//! Key types: an integer key keeps the checkpoint in the `bigint` columns every version wrote
//! (a checkpoint of an older executor resumes as is, and an older executor can resume ours).
//! Any other supported type is walked by keyset queries (`WHERE key > $last ORDER BY key
//! LIMIT n`), its bounds passed as text in the key's input syntax and kept in `*_key_text`
//! columns; the first batch's exclusive lower bound is the type's smallest value (`''`, the nil
//! uuid, `-infinity`), and a table whose key *is* that value is refused before anything runs.
//!
//! Between batches: adapt the batch size toward the target batch duration, pause, and throttle
//! while replication lag is above the limit or other sessions wait for locks on the table. A
//! batch that hits `lock_timeout` is rolled back and retried with a smaller batch after a
//! jittered backoff. Progress is printed as one JSON line per batch (at most every
//! [`PROGRESS_EVERY`]) on stderr, which the operator reads from the pod's log tail.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, GenericClient, Transaction};

use super::config::{duration, parse_duration, setting, termination_log, RunArgs};
use super::connect::{self, Scrubber};
pub use super::fleet::backfill::ProgressSink;
use super::fleet::backfill::{execute_backfill, BackfillTenant, FleetBackfill};
use super::session;
use super::stop::{Signal, Stop};
use super::{checksum, finish, stop_on_signals, usage_error, Secret};
use crate::protocol::env::{self as penv, ExecutorEnv};
use crate::protocol::report::{Outcome, Report, ReportError};

/// Schema of the checkpoint table (created on first use, next to the ledger).
pub const SCHEMA_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS phasegate;
CREATE TABLE IF NOT EXISTS phasegate.backfill (
    namespace   text        NOT NULL,
    name        text        NOT NULL,
    uid         text        NOT NULL DEFAULT '',
    checksum    text        NOT NULL,
    epoch       text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('running', 'done')),
    min_key     bigint,
    end_key     bigint,
    last_key    bigint,
    key_type    text,
    end_key_text  text,
    last_key_text text,
    keys_done   bigint      NOT NULL DEFAULT 0,
    rows_done   bigint      NOT NULL DEFAULT 0,
    batches     bigint      NOT NULL DEFAULT 0,
    restarts    integer     NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (namespace, name)
);
COMMENT ON TABLE phasegate.backfill IS 'Backfill checkpoints of the Phasegate executor; do not edit by hand.';
"#;

/// Columns for keys other than integers, added to a checkpoint table an older executor created
/// (only when such a key is walked: integer keys leave the table as it is).
const TEXT_KEY_COLUMNS_SQL: &str = "ALTER TABLE phasegate.backfill
    ADD COLUMN IF NOT EXISTS key_type text,
    ADD COLUMN IF NOT EXISTS end_key_text text,
    ADD COLUMN IF NOT EXISTS last_key_text text,
    ADD COLUMN IF NOT EXISTS keys_done bigint NOT NULL DEFAULT 0";

/// Key types walked by keyset queries, by base type name, with a value of the type below
/// every other (the first batch's exclusive lower bound), in the type's input syntax.
const SORTED_KEY_TYPES: [(&str, &str); 12] = [
    ("text", ""),
    ("varchar", ""),
    ("bpchar", ""),
    ("citext", ""),
    ("bytea", ""),
    ("uuid", "00000000-0000-0000-0000-000000000000"),
    ("date", "-infinity"),
    ("timestamp", "-infinity"),
    ("timestamptz", "-infinity"),
    ("numeric", "-Infinity"),
    ("float4", "-Infinity"),
    ("float8", "-Infinity"),
];

/// How the key is walked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyKind {
    /// smallint, integer, bigint: bigint bounds, integer arithmetic for progress.
    Integer,
    /// Another orderable type (`type_name` as in `pg_type`): bounds in the key's own type,
    /// passed and stored as text.
    Sorted {
        type_name: String,
        before_all: &'static str,
    },
}

/// A bound of a key range, as bound to a statement: a `bigint`, or the text form of any
/// other key, sent in text format so that PostgreSQL parses it as the parameter's type.
#[derive(Debug, Clone, PartialEq)]
enum Key {
    Int(i64),
    Text(String),
}

impl tokio_postgres::types::ToSql for Key {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Key::Int(i) => i.to_sql(ty, out),
            Key::Text(t) => {
                out.extend_from_slice(t.as_bytes());
                Ok(tokio_postgres::types::IsNull::No)
            }
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> tokio_postgres::types::Format {
        match self {
            Key::Int(_) => tokio_postgres::types::Format::Binary,
            Key::Text(_) => tokio_postgres::types::Format::Text,
        }
    }

    tokio_postgres::types::to_sql_checked!();
}

/// The text form of a key that its input function reads back as the same value whatever the
/// session's DateStyle or TimeZone (ISO 8601 for dates and times; a key must round-trip
/// exactly, or a batch boundary would move).
fn key_text(expr: &str) -> String {
    format!("(to_json({expr}) #>> '{{}}')")
}

/// At most one progress line per this interval (and one per batch below it).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Arguments of `phasegate backfill`: flags for a run by hand. A Job sets the same settings
/// as `PHASEGATE_*` variables ([`ExecutorEnv`]); a flag wins over its variable.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(
    after_help = "Every setting can also come from its PHASEGATE_* environment variable (see \
docs/backfill.md); a flag wins over it. With --tenants it backfills every tenant it selects \
(docs/fleet.md). Exit status: 0 when the backfill is done (or was already done in this rollout \
epoch), on every tenant with --tenants; 1 when it failed (on any tenant); 2 when a setting is \
missing or invalid; 143 (SIGTERM) or 130 (SIGINT) when stopped: every batch committed so far is \
recorded in the checkpoint and the next run resumes after it."
)]
pub struct BackfillArgs {
    /// The database, the migration and where the report goes.
    #[command(flatten)]
    pub run: RunArgs,
    /// The table to fill (optionally schema-qualified) [env: PHASEGATE_BACKFILL_TABLE].
    #[arg(long)]
    pub table: Option<String>,
    /// A unique column of the table to walk in order: an integer, or text, uuid, a date or
    /// time, numeric... (see docs/backfill.md) [env: PHASEGATE_BACKFILL_KEY].
    #[arg(long)]
    pub key: Option<String>,
    /// SQL of one batch: `$1` is the exclusive lower and `$2` the inclusive upper bound of the
    /// key range (bigint for an integer key, else the key's type), e.g.
    /// `UPDATE t SET b = a WHERE id > $1 AND id <= $2 AND b IS NULL` [env: PHASEGATE_BACKFILL_SQL].
    #[arg(long)]
    pub sql: Option<String>,
    /// Rows in the first batch; later batches adapt toward the target duration [default: 1000].
    #[arg(long)]
    pub batch_size: Option<i64>,
    /// Largest batch the adaptation may reach [default: 50000].
    #[arg(long)]
    pub max_batch_size: Option<i64>,
    /// How long one batch's transaction should take [default: 200ms].
    #[arg(long, value_parser = parse_duration)]
    pub target_batch_duration: Option<Duration>,
    /// Sleep between batches [default: 50ms].
    #[arg(long, value_parser = parse_duration)]
    pub pause: Option<Duration>,
    /// `lock_timeout` of each batch [default: 1s].
    #[arg(long, value_parser = parse_duration)]
    pub lock_timeout: Option<Duration>,
    /// `statement_timeout` of each batch [default: 1m].
    #[arg(long, value_parser = parse_duration)]
    pub statement_timeout: Option<Duration>,
    /// Consecutive lock timeouts of one batch before the backfill fails [default: 30].
    #[arg(long)]
    pub max_lock_retries: Option<u32>,
    /// Throttle while a standby's replay lag (`pg_stat_replication`) exceeds this (0: off)
    /// [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    pub max_replication_lag: Option<Duration>,
    /// The rollout epoch (`status.rolloutCompletedAt`): a different one restarts the scan.
    #[arg(long)]
    pub epoch: Option<String>,
}

/// Everything a run needs (see [`BackfillArgs`]).
#[derive(Debug, Clone)]
pub struct BackfillConfig {
    pub database_url: Secret,
    pub table: String,
    pub key: String,
    pub sql: String,
    pub batch_size: i64,
    pub max_batch_size: i64,
    pub target_batch_duration: Duration,
    pub pause: Duration,
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
    pub max_lock_retries: u32,
    pub max_replication_lag: Duration,
    pub epoch: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub connect_timeout: Duration,
    pub stop: Stop,
    /// `spec.tenants`: every tenant it selects is backfilled ([`super::fleet::backfill`]).
    pub tenants: Option<crate::api::TenantsSpec>,
    /// A schema tenant's run: the table is in this schema, and every transaction runs with it
    /// as `search_path` (`SET LOCAL`: nothing stays on a pooled server connection).
    pub search_path: Option<String>,
    /// A tenant's run in a fleet: progress goes there instead of to stderr.
    pub progress: Option<ProgressSink>,
    /// A fleet's schema tenants: connections passed from one tenant's run to the next.
    pub connections: Option<Connections>,
    /// With tenants: the run's servers and `phasegate apply`'s settings, for discovery and
    /// for expand (`tenant_expand_sql`) on a tenant created since expand ran, before its
    /// backfill. Unset, they are this configuration's database and defaults.
    pub fleet: Option<super::Config>,
}

/// The flag of a `PHASEGATE_BACKFILL_*` variable, e.g. `table`.
fn flag_of(name: &str) -> String {
    name.trim_start_matches("PHASEGATE_BACKFILL_")
        .to_ascii_lowercase()
        .replace('_', "-")
}

impl BackfillConfig {
    pub fn new(
        url: impl Into<String>,
        table: impl Into<String>,
        key: impl Into<String>,
        sql: impl Into<String>,
    ) -> BackfillConfig {
        BackfillConfig {
            database_url: Secret(url.into()),
            table: table.into(),
            key: key.into(),
            sql: sql.into(),
            batch_size: 1000,
            max_batch_size: 50_000,
            target_batch_duration: Duration::from_millis(200),
            pause: Duration::from_millis(50),
            lock_timeout: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(60),
            max_lock_retries: 30,
            max_replication_lag: Duration::from_secs(10),
            epoch: String::new(),
            namespace: "default".into(),
            name: "local".into(),
            uid: String::new(),
            connect_timeout: Duration::from_secs(10),
            stop: Stop::new(),
            tenants: None,
            search_path: None,
            progress: None,
            connections: None,
            fleet: None,
        }
    }

    /// The configuration of a run told only by its environment, as in a Job.
    pub fn from_env(env: &ExecutorEnv<Secret>) -> Result<BackfillConfig, String> {
        BackfillConfig::resolve(BackfillArgs::default(), env)
    }

    /// Flags over the environment over defaults; a missing or invalid setting is a usage
    /// error (exit 2).
    fn resolve(a: BackfillArgs, env: &ExecutorEnv<Secret>) -> Result<BackfillConfig, String> {
        let required = |flag: Option<String>, var: &Option<String>, name: &str| {
            flag.or(var.clone())
                .ok_or_else(|| format!("--{} or {name} is required", flag_of(name)))
        };
        let ms = Duration::from_millis;
        let run = a.run.resolve(env)?;
        let mut cfg = BackfillConfig {
            database_url: run.database_url,
            table: required(a.table, &env.backfill_table, penv::BACKFILL_TABLE)?,
            key: required(a.key, &env.backfill_key, penv::BACKFILL_KEY)?,
            sql: required(a.sql, &env.backfill_sql, penv::BACKFILL_SQL)?,
            batch_size: setting(a.batch_size, env.backfill_batch_size, || 1000),
            max_batch_size: setting(a.max_batch_size, env.backfill_max_batch_size, || 50_000),
            target_batch_duration: duration(
                a.target_batch_duration,
                &env.backfill_target_batch_duration,
                penv::BACKFILL_TARGET_BATCH_DURATION,
                ms(200),
            )?,
            pause: duration(a.pause, &env.backfill_pause, penv::BACKFILL_PAUSE, ms(50))?,
            lock_timeout: duration(
                a.lock_timeout,
                &env.backfill_lock_timeout,
                penv::BACKFILL_LOCK_TIMEOUT,
                ms(1000),
            )?,
            statement_timeout: duration(
                a.statement_timeout,
                &env.backfill_statement_timeout,
                penv::BACKFILL_STATEMENT_TIMEOUT,
                Duration::from_secs(60),
            )?,
            max_lock_retries: setting(a.max_lock_retries, env.backfill_max_lock_retries, || 30),
            max_replication_lag: duration(
                a.max_replication_lag,
                &env.backfill_max_replication_lag,
                penv::BACKFILL_MAX_REPLICATION_LAG,
                Duration::from_secs(10),
            )?,
            epoch: setting(a.epoch, env.backfill_epoch.clone(), String::new),
            namespace: run.migration_namespace,
            name: run.migration_name,
            uid: run.migration_uid,
            connect_timeout: run.connect_timeout,
            stop: Stop::new(),
            tenants: run.tenants,
            search_path: None,
            progress: None,
            connections: None,
            fleet: None,
        };
        if cfg.tenants.is_some() {
            let e = ExecutorEnv {
                server_urls: run.server_urls,
                ..env.clone()
            };
            cfg.fleet = Some(cfg.fleet_config(e, run.tenant_expand_sql)?);
        }
        Ok(cfg)
    }

    /// A fleet's servers and `phasegate apply`'s settings from `env`, this run's database and
    /// migration; `expand_sql`: expand's, for tenants created since it ran.
    fn fleet_config(
        &self,
        mut e: ExecutorEnv<Secret>,
        expand_sql: Option<String>,
    ) -> Result<super::Config, String> {
        e.database_url = Some(self.database_url.clone());
        e.phase = Some("expand".into());
        e.sql = Some(expand_sql.clone().unwrap_or_default());
        e.tenants = None;
        e.tenant_expand_sql = None;
        e.migration_namespace = Some(self.namespace.clone());
        e.migration_name = Some(self.name.clone());
        e.migration_uid = Some(self.uid.clone());
        e.connect_timeout = Some(self.connect_timeout.as_millis().to_string());
        let mut c = super::config_from_env(e).map_err(|m| format!("tenants: {m}"))?;
        c.tenant_expand_sql = expand_sql;
        Ok(c)
    }

    /// [`Self::fleet`], or one of this configuration's database and defaults; stopped with
    /// this run.
    fn fleet_base(&self) -> super::Config {
        let mut c = self.fleet.clone().unwrap_or_else(|| {
            let mut c = super::Config::new(&self.database_url.0, super::Phase::Expand, "");
            c.identity.namespace.clone_from(&self.namespace);
            c.identity.name.clone_from(&self.name);
            c.identity.uid.clone_from(&self.uid);
            c.connect_timeout = self.connect_timeout;
            c
        });
        c.stop = self.stop.clone();
        c
    }

    /// A fleet's tenant: its routine lines (resuming, done) are left out; the fleet prints
    /// progress for all tenants instead, so the log does not grow with them.
    fn quiet(&self) -> bool {
        self.progress.is_some()
    }

    /// What identifies this backfill's work: a change restarts the scan.
    pub fn checksum(&self) -> String {
        checksum(&format!(
            "{}\n{}\n{}",
            self.table.trim(),
            self.key.trim(),
            self.sql.trim()
        ))
    }
}

pub use crate::api::BackfillProgress;
use crate::protocol::log::progress_line;

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("invalid setting: {0}")]
    Setting(String),
    #[error(transparent)]
    Connect(#[from] connect::ConnectError),
    #[error("{message}")]
    Db {
        sqlstate: Option<String>,
        message: String,
    },
    #[error("a batch could not take its locks within lock_timeout {lock_timeout} in {attempts} consecutive attempts; the checkpoint keeps every committed batch, retry later")]
    LockRetriesExhausted { attempts: u32, lock_timeout: String },
    #[error("the checkpoint moved under this run (another executor runs the same backfill); this run's batch was rolled back")]
    CheckpointMoved,
    #[error("stopped by {}: {batches} batch(es) committed by this run are recorded in the checkpoint; the next run resumes after them", signal.name())]
    Stopped { signal: Signal, batches: u64 },
}

impl BackfillError {
    fn db(e: &tokio_postgres::Error) -> BackfillError {
        let (sqlstate, message) = connect::describe(e);
        BackfillError::Db { sqlstate, message }
    }

    fn sqlstate(&self) -> Option<String> {
        match self {
            BackfillError::Db { sqlstate, .. } => sqlstate.clone(),
            BackfillError::Connect(connect::ConnectError::Connect { sqlstate, .. }) => {
                sqlstate.clone()
            }
            BackfillError::LockRetriesExhausted { .. } => Some("55P03".into()),
            _ => None,
        }
    }
}

/// Counters of one run.
#[derive(Debug, Default)]
struct RunStats {
    batches: u64,
    attempts: u32,
    lock_retries: u32,
    throttle_wait: Duration,
}

/// Entry point of `phasegate backfill`.
pub async fn run(args: BackfillArgs) -> std::process::ExitCode {
    let env = match ExecutorEnv::from_process() {
        Ok(env) => env,
        Err(e) => return usage_error(&e.to_string()),
    };
    let termination_log = termination_log(args.run.termination_log.clone(), &env);
    let mut cfg = match BackfillConfig::resolve(args, &env) {
        Ok(cfg) => cfg,
        Err(e) => return usage_error(&e),
    };
    let stop = stop_on_signals();
    cfg.stop = stop.clone();
    let report = execute(&cfg).await;
    finish(&report, &termination_log, &stop)
}

/// Runs the backfill — on every tenant with `cfg.tenants` — and returns its report (phase
/// `backfill`; `statements` counts the batches this run committed). Never panics on database
/// errors.
pub async fn execute(cfg: &BackfillConfig) -> Report {
    let Some(spec) = &cfg.tenants else {
        return execute_one(cfg).await;
    };
    let sum = cfg.checksum();
    let base = cfg.fleet_base();
    let fleet = FleetBackfill {
        base: &base,
        spec,
        checksum: &sum,
    };
    // Schema tenants share their database's connections (database tenants cannot).
    let mut base = cfg.clone();
    base.connections = Some(Connections::default());
    let base = &base;
    execute_backfill(fleet, |tenant, sink| execute_tenant(base, tenant, sink)).await
}

/// One tenant's complete backfill: a schema tenant's checkpoint row is `<migration>/<schema>`
/// (a Kubernetes name has no `/`), and so is its advisory key; a database tenant keeps the
/// migration's own name in its own checkpoint table.
async fn execute_tenant(
    cfg: &BackfillConfig,
    tenant: BackfillTenant,
    sink: ProgressSink,
) -> Report {
    let mut one = cfg.clone();
    one.tenants = None;
    one.fleet = None;
    one.progress = Some(sink);
    match tenant {
        BackfillTenant::Schema { name, url } => {
            one.name = format!("{}/{name}", cfg.name);
            one.search_path = Some(name);
            one.database_url = Secret(url);
        }
        BackfillTenant::Database { url, .. } => {
            one.database_url = Secret(url);
            one.connections = None;
        }
    }
    execute_one(&one).await
}

/// The backfill of one database (or one tenant's schema).
async fn execute_one(cfg: &BackfillConfig) -> Report {
    let start = Instant::now();
    let scrub = Scrubber::for_url(&cfg.database_url.0);
    let sum = cfg.checksum();
    let mut stats = RunStats::default();
    let result = run_inner(cfg, &sum, &mut stats, &scrub).await;
    let (outcome, error) = match result {
        Ok(o) => (o, None),
        Err(e) => {
            let message = scrub.scrub(&e.to_string());
            tracing::error!(error = %message, "backfill failed");
            (
                Outcome::Failed,
                Some(ReportError {
                    sqlstate: e.sqlstate(),
                    message,
                    statement: None,
                }),
            )
        }
    };
    Report {
        statements: stats.batches as usize,
        attempts: stats.attempts,
        lock_retries: stats.lock_retries,
        lock_wait_ms: stats.throttle_wait.as_millis() as u64,
        duration_ms: start.elapsed().as_millis() as u64,
        checksum: Some(crate::protocol::checksum::short(&sum)),
        stopped_by: cfg.stop.requested().map(|s| s.name().to_string()),
        error,
        ..Report::new(outcome, "backfill")
    }
}

/// Runs `fut` unless a stop is requested first.
async fn or_stop<T>(
    stop: &Stop,
    batches: u64,
    fut: impl std::future::Future<Output = Result<T, BackfillError>>,
) -> Result<T, BackfillError> {
    tokio::select! {
        biased;
        signal = stop.wait() => Err(BackfillError::Stopped { signal, batches }),
        r = fut => r,
    }
}

async fn sleep(stop: &Stop, batches: u64, d: Duration) -> Result<(), BackfillError> {
    or_stop(stop, batches, async {
        tokio::time::sleep(d).await;
        Ok(())
    })
    .await
}

/// Before the first batch (the checkpoint's first look at the table): a lock
/// timeout on the table is retried after a short pause, up to `max_lock_retries`. `None`:
/// try again.
async fn retry_before_first_batch<T>(
    r: Result<T, BackfillError>,
    cfg: &BackfillConfig,
    stats: &mut RunStats,
    stop: &Stop,
) -> Result<Option<T>, BackfillError> {
    match r {
        Err(BackfillError::Db {
            sqlstate: Some(code),
            ..
        }) if code == "55P03" && stats.lock_retries < cfg.max_lock_retries => {
            stats.lock_retries += 1;
            tracing::warn!(
                reason = "lock timeout on the table before the first batch; retrying",
                "backfill throttled"
            );
            sleep(stop, 0, Duration::from_millis(200)).await?;
            Ok(None)
        }
        other => other.map(Some),
    }
}

/// `name` double-quoted as one identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A double-quoted identifier, schema-qualified when `name` has one dot outside quotes.
fn quote_ident_path(name: &str) -> Result<String, BackfillError> {
    let name = name.trim();
    if name.is_empty() || name.contains('"') || name.contains('\0') {
        return Err(BackfillError::Setting(format!(
            "{name:?} is not a plain table or column name"
        )));
    }
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(BackfillError::Setting(format!(
            "{name:?} is not a plain (optionally schema-qualified) name"
        )));
    }
    Ok(parts
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

/// Where the scan stands, from the checkpoint row.
#[derive(Debug, Clone)]
struct Checkpoint {
    last_key: Option<i64>,
    min_key: Option<i64>,
    end_key: Option<i64>,
    /// A non-integer key's bounds (text form) and the keys walked so far (for progress).
    last_text: Option<String>,
    end_text: Option<String>,
    keys_done: i64,
    sorted: bool,
    rows_done: i64,
    batches: i64,
    done: bool,
    /// The scan (re)started in this run.
    fresh: bool,
}

impl Checkpoint {
    /// The checkpoint after a committed batch up to `upper` of `rows` rows and `keys` keys.
    fn advance(&mut self, upper: Key, rows: i64, keys: i64, done: bool) {
        match upper {
            Key::Int(u) => self.last_key = Some(u),
            Key::Text(t) => self.last_text = Some(t),
        }
        self.keys_done += keys;
        self.done = done;
        self.rows_done += rows;
        self.batches += 1;
    }
}

/// Whether `phasegate.backfill` exists.
async fn table_exists<C: GenericClient>(c: &C) -> Result<bool, BackfillError> {
    Ok(c.query_typed_one(
        "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = 'phasegate' AND c.relname = 'backfill')",
        &[],
    )
    .await
    .map_err(|e| BackfillError::db(&e))?
    .get(0))
}

/// Creates the checkpoint table if missing, under a transaction-scoped advisory lock of its
/// own: the tenants of one database starting at once (a fleet), or two executors, would race
/// on `CREATE TABLE IF NOT EXISTS` (`type "backfill" already exists`).
async fn ensure_table(c: &mut Client) -> Result<(), BackfillError> {
    let db = |e: tokio_postgres::Error| BackfillError::db(&e);
    if table_exists(&*c).await? {
        return Ok(());
    }
    let tx = c.transaction().await.map_err(db)?;
    tx.batch_execute("SELECT pg_advisory_xact_lock(hashtext('phasegate.backfill'))")
        .await
        .map_err(db)?;
    if table_exists(&tx).await? {
        return tx.commit().await.map_err(db);
    }
    match tx.batch_execute(SCHEMA_SQL).await {
        Ok(()) => tx.commit().await.map_err(db),
        // An older executor, which takes no such lock, created it at the same time (its
        // transaction committed first): it exists. This one rolls back.
        Err(e)
            if e.code()
                .is_some_and(|s| matches!(s.code(), "23505" | "42P07" | "42P06" | "42710")) =>
        {
            tx.rollback().await.map_err(db)
        }
        Err(e) => Err(db(e)),
    }
}

/// Whether the checkpoint table has the columns of non-integer keys (an older executor's
/// table does not).
async fn has_text_key_columns<C: GenericClient>(c: &C) -> Result<bool, BackfillError> {
    Ok(c.query_typed_one(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute
                             WHERE attrelid = 'phasegate.backfill'::regclass
                               AND attname = 'last_key_text' AND NOT attisdropped)",
        &[],
    )
    .await
    .map_err(|e| BackfillError::db(&e))?
    .get(0))
}

/// Adds the columns of non-integer keys to an older executor's checkpoint table.
async fn ensure_text_key_columns(c: &Client) -> Result<(), BackfillError> {
    if has_text_key_columns(c).await? {
        return Ok(());
    }
    tracing::info!("adding the columns of non-integer keys to phasegate.backfill");
    c.batch_execute(TEXT_KEY_COLUMNS_SQL).await.map_err(|e| {
        BackfillError::Setting(format!(
            "phasegate.backfill lacks the columns of non-integer keys and this role cannot add \
             them ({}); run once as the table's owner: {TEXT_KEY_COLUMNS_SQL}",
            BackfillError::db(&e)
        ))
    })
}

/// Reads the checkpoint: the scan to resume, or why it restarts (no row, another object (uid),
/// other SQL (checksum), another rollout epoch or a key of another kind).
async fn read_checkpoint<C: GenericClient>(
    c: &C,
    cfg: &BackfillConfig,
    sum: &str,
    kind: &KeyKind,
) -> Result<Result<Checkpoint, String>, BackfillError> {
    // An integer key reads only the columns every version has (the table may be an older
    // executor's).
    let select = match kind {
        KeyKind::Integer => {
            "SELECT uid, checksum, epoch, status = 'done', min_key, end_key, last_key, rows_done, batches,
                    NULL::text, NULL::text, 0::bigint, NULL::text
               FROM phasegate.backfill WHERE namespace = $1 AND name = $2"
        }
        KeyKind::Sorted { .. } => {
            "SELECT uid, checksum, epoch, status = 'done', min_key, end_key, last_key, rows_done, batches,
                    end_key_text, last_key_text, keys_done, key_type
               FROM phasegate.backfill WHERE namespace = $1 AND name = $2"
        }
    };
    let row = c
        .query_typed_opt(
            select,
            &[(&cfg.namespace, Type::TEXT), (&cfg.name, Type::TEXT)],
        )
        .await
        .map_err(|e| BackfillError::db(&e))?;
    let Some(r) = row else {
        return Ok(Err("no checkpoint".into()));
    };
    let (uid, checksum, epoch): (String, String, String) = (r.get(0), r.get(1), r.get(2));
    let cp = Checkpoint {
        done: r.get(3),
        min_key: r.get(4),
        end_key: r.get(5),
        last_key: r.get(6),
        rows_done: r.get(7),
        batches: r.get(8),
        end_text: r.get(9),
        last_text: r.get(10),
        keys_done: r.get(11),
        sorted: matches!(kind, KeyKind::Sorted { .. }),
        fresh: false,
    };
    let key_type: Option<String> = r.get(12);
    // A running scan keeps its lower bound in the columns of its key's kind; a row whose
    // bound is in the other ones was written for a key of another type.
    let same_kind = match kind {
        KeyKind::Integer => cp.done || cp.last_key.is_some(),
        KeyKind::Sorted { type_name, .. } => {
            key_type.as_deref() == Some(type_name.as_str()) && (cp.done || cp.last_text.is_some())
        }
    };
    Ok(if uid != cfg.uid {
        Err("the checkpoint belongs to another object of this name".into())
    } else if checksum != sum {
        Err("the backfill's table, key or SQL changed".into())
    } else if epoch != cfg.epoch {
        Err(format!("the rollout epoch changed from {epoch:?} (the rollout regressed after the scan began: old code may have written rows behind the checkpoint)"))
    } else if !same_kind {
        Err("the key's type changed".into())
    } else {
        Ok(cp)
    })
}

/// Reads the checkpoint, or (re)starts the scan from the first key.
async fn load_checkpoint<C: GenericClient>(
    c: &C,
    cfg: &BackfillConfig,
    sum: &str,
    table: &str,
    key: &str,
    kind: &KeyKind,
) -> Result<Checkpoint, BackfillError> {
    match read_checkpoint(c, cfg, sum, kind).await? {
        Ok(cp) => {
            if !cp.done && !cfg.quiet() {
                tracing::info!(
                    last_key = cp.last_key,
                    last_key_text = cp.last_text,
                    end_key = cp.end_key,
                    end_key_text = cp.end_text,
                    rows_done = cp.rows_done,
                    "resuming the backfill from its checkpoint"
                );
            }
            return Ok(cp);
        }
        Err(why) if why != "no checkpoint" => {
            tracing::warn!(epoch = %cfg.epoch, "restarting the backfill from the first key: {why}");
        }
        Err(_) => {}
    }
    match kind {
        KeyKind::Integer => restart_integer(c, cfg, sum, table, key).await,
        KeyKind::Sorted {
            type_name,
            before_all,
        } => restart_sorted(c, cfg, sum, table, key, type_name, before_all).await,
    }
}

/// `$1`–`$5` of the statements that (re)start a scan (the checkpoint row's namespace, name,
/// uid, checksum and epoch), then `rest`.
fn scan_params<'a, const N: usize>(
    cfg: &'a BackfillConfig,
    sum: &'a &'a str,
    rest: [(&'a (dyn ToSql + Sync), Type); N],
) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    let mut params: Vec<(&'a (dyn ToSql + Sync), Type)> = vec![
        (&cfg.namespace, Type::TEXT),
        (&cfg.name, Type::TEXT),
        (&cfg.uid, Type::TEXT),
        (sum, Type::TEXT),
        (&cfg.epoch, Type::TEXT),
    ];
    params.extend(rest);
    params
}

async fn restart_integer<C: GenericClient>(
    c: &C,
    cfg: &BackfillConfig,
    sum: &str,
    table: &str,
    key: &str,
) -> Result<Checkpoint, BackfillError> {
    let db = |e: tokio_postgres::Error| BackfillError::db(&e);
    // The key range to walk: from the smallest key to the largest that exists now.
    let bounds = c
        .query_typed_one(
            &format!("SELECT min({key})::bigint, max({key})::bigint FROM {table}"),
            &[],
        )
        .await
        .map_err(db)?;
    let (min_key, end_key): (Option<i64>, Option<i64>) = (bounds.get(0), bounds.get(1));
    let start_after = match min_key {
        Some(m) => Some(m.checked_sub(1).ok_or_else(|| {
            BackfillError::Setting(format!(
                "the smallest key of {table} is the smallest bigint; it cannot be given as an exclusive lower bound"
            ))
        })?),
        None => None,
    };
    let done = end_key.is_none();
    c.execute_typed(
        "INSERT INTO phasegate.backfill AS b
             (namespace, name, uid, checksum, epoch, status, min_key, end_key, last_key)
         VALUES ($1, $2, $3, $4, $5, CASE WHEN $8 THEN 'done' ELSE 'running' END, $6, $7, $6)
         ON CONFLICT (namespace, name) DO UPDATE SET
             uid = EXCLUDED.uid, checksum = EXCLUDED.checksum, epoch = EXCLUDED.epoch,
             status = EXCLUDED.status, min_key = EXCLUDED.min_key, end_key = EXCLUDED.end_key,
             last_key = EXCLUDED.last_key, rows_done = 0, batches = 0,
             restarts = b.restarts + 1, started_at = clock_timestamp(),
             updated_at = clock_timestamp(),
             finished_at = CASE WHEN $8 THEN clock_timestamp() END",
        &scan_params(
            cfg,
            &sum,
            [
                (&start_after, Type::INT8),
                (&end_key, Type::INT8),
                (&done, Type::BOOL),
            ],
        ),
    )
    .await
    .map_err(db)?;
    // A row once written for a non-integer key (the key's type changed since) must not look
    // like one of those to a later run. Only a table that has those columns can hold one.
    if has_text_key_columns(c).await? {
        c.execute_typed(
            "UPDATE phasegate.backfill SET key_type = NULL, last_key_text = NULL, end_key_text = NULL,
                    keys_done = 0
              WHERE namespace = $1 AND name = $2 AND key_type IS NOT NULL",
            &[(&cfg.namespace, Type::TEXT), (&cfg.name, Type::TEXT)],
        )
        .await
        .map_err(db)?;
    }
    Ok(Checkpoint {
        last_key: start_after,
        min_key: start_after,
        end_key,
        last_text: None,
        end_text: None,
        keys_done: 0,
        sorted: false,
        rows_done: 0,
        batches: 0,
        done,
        fresh: true,
    })
}

#[allow(clippy::too_many_arguments)]
async fn restart_sorted<C: GenericClient>(
    c: &C,
    cfg: &BackfillConfig,
    sum: &str,
    table: &str,
    key: &str,
    type_name: &str,
    before_all: &str,
) -> Result<Checkpoint, BackfillError> {
    let db = |e: tokio_postgres::Error| BackfillError::db(&e);
    // The scan ends at the largest key that exists now (an index scan backwards).
    let end: Option<String> = c
        .query_typed_opt(
            &format!(
                "SELECT {} FROM {table} WHERE {key} IS NOT NULL ORDER BY {key} DESC LIMIT 1",
                key_text(key)
            ),
            &[],
        )
        .await
        .map_err(db)?
        .map(|r| r.get(0));
    // The first batch starts after the type's smallest value: a key that equals it (or sorts
    // with it, e.g. a string of characters the collation ignores) would never be walked.
    if end.is_some() {
        let at_start: Option<String> = c
            .query_typed_opt(
                &format!(
                    "SELECT {} FROM {table} WHERE {key} <= $1 ORDER BY {key} LIMIT 1",
                    key_text(key)
                ),
                // `unknown`: PostgreSQL gives it the key's type, as for the batch SQL.
                &[(&Key::Text(before_all.to_string()), Type::UNKNOWN)],
            )
            .await
            .map_err(db)?
            .map(|r| r.get(0));
        if let Some(k) = at_start {
            return Err(BackfillError::Setting(format!(
                "key {} of {} has the value {k:?}, which sorts with the smallest {type_name} value                  {before_all:?} that the first batch starts after; walk another unique column",
                cfg.key, cfg.table
            )));
        }
    }
    let done = end.is_none();
    c.execute_typed(
        "INSERT INTO phasegate.backfill AS b
             (namespace, name, uid, checksum, epoch, status, key_type, end_key_text, last_key_text)
         VALUES ($1, $2, $3, $4, $5, CASE WHEN $9 THEN 'done' ELSE 'running' END, $6, $7, $8)
         ON CONFLICT (namespace, name) DO UPDATE SET
             uid = EXCLUDED.uid, checksum = EXCLUDED.checksum, epoch = EXCLUDED.epoch,
             status = EXCLUDED.status, min_key = NULL, end_key = NULL, last_key = NULL,
             key_type = EXCLUDED.key_type, end_key_text = EXCLUDED.end_key_text,
             last_key_text = EXCLUDED.last_key_text, keys_done = 0, rows_done = 0, batches = 0,
             restarts = b.restarts + 1, started_at = clock_timestamp(),
             updated_at = clock_timestamp(),
             finished_at = CASE WHEN $9 THEN clock_timestamp() END",
        &scan_params(
            cfg,
            &sum,
            [
                (&type_name, Type::TEXT),
                (&end, Type::TEXT),
                (&before_all, Type::TEXT),
                (&done, Type::BOOL),
            ],
        ),
    )
    .await
    .map_err(db)?;
    Ok(Checkpoint {
        last_key: None,
        min_key: None,
        end_key: None,
        last_text: Some(before_all.to_string()),
        end_text: end,
        keys_done: 0,
        sorted: true,
        rows_done: 0,
        batches: 0,
        done,
        fresh: true,
    })
}

/// Why to hold off before the next batch, if anything says so.
async fn throttle_reason(
    c: &Client,
    cfg: &BackfillConfig,
    table_oid: u32,
) -> Result<Option<String>, BackfillError> {
    let db = |e: tokio_postgres::Error| BackfillError::db(&e);
    if !cfg.max_replication_lag.is_zero() {
        let lag: Option<f64> = c
            .query_typed_one(
                "SELECT max(extract(epoch FROM greatest(write_lag, flush_lag, replay_lag)))::float8
                   FROM pg_stat_replication",
                &[],
            )
            .await
            .map_err(db)?
            .get(0);
        if let Some(lag) = lag.filter(|l| *l > cfg.max_replication_lag.as_secs_f64()) {
            return Ok(Some(format!(
                "replication lag {lag:.1}s exceeds maxReplicationLag {}",
                humantime::format_duration(cfg.max_replication_lag)
            )));
        }
    }
    let waiting: i64 = c
        .query_typed_one(
            "SELECT count(DISTINCT pid) FROM pg_locks
              WHERE locktype = 'relation' AND relation = $1 AND NOT granted
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[(&table_oid, Type::OID)],
        )
        .await
        .map_err(db)?
        .get(0);
    if waiting > 0 {
        return Ok(Some(format!(
            "{waiting} session(s) wait for a lock on the table; letting them go first"
        )));
    }
    Ok(None)
}

/// The next batch size: toward the target duration, at most doubling or halving per batch.
pub fn adapt(current: i64, took: Duration, target: Duration, max: i64) -> i64 {
    let took = took.as_secs_f64().max(0.000_5);
    let ratio = (target.as_secs_f64() / took).clamp(0.5, 2.0);
    ((current as f64 * ratio) as i64).clamp(10, max.max(10))
}

async fn run_inner(
    cfg: &BackfillConfig,
    sum: &str,
    stats: &mut RunStats,
    scrub: &Scrubber,
) -> Result<Outcome, BackfillError> {
    let (table, key) = checked_names(cfg)?;
    let (mut client, version) = open(cfg, scrub).await?;
    let outcome = scan_table(&mut client, cfg, sum, stats, (table, key), version).await?;
    // A fleet's next schema tenant takes the connection: nothing was set on its session.
    if let Some(pool) = &cfg.connections {
        pool.give_back(&cfg.database_url.0, client, version);
    }
    Ok(outcome)
}

/// The backfill on `client`: the checkpoint read (or the scan restarted), then the walk.
async fn scan_table(
    client: &mut Client,
    cfg: &BackfillConfig,
    sum: &str,
    stats: &mut RunStats,
    (table, key): (String, String),
    version: i32,
) -> Result<Outcome, BackfillError> {
    let set_local = local_settings(cfg, version);
    let kind = key_kind(client, cfg, &table).await?;
    let db = |e: tokio_postgres::Error| BackfillError::db(&e);
    let table_oid: u32 = client
        .query_typed_one("SELECT $1::text::regclass::oid", &[(&table, Type::TEXT)])
        .await
        .map_err(db)?
        .get(0);
    ensure_table(&mut *client).await?;
    if matches!(kind, KeyKind::Sorted { .. }) {
        ensure_text_key_columns(client).await?;
    }
    let scan = Scan::new(cfg, sum, table, key, kind, table_oid, set_local);
    let cp = start(client, &scan, stats).await?;
    if cp.done && cp.fresh {
        if !cfg.quiet() {
            tracing::info!("nothing to backfill: the table is empty");
        }
        return Ok(Outcome::Applied);
    }
    if cp.done {
        if !cfg.quiet() {
            tracing::info!(
                rows_done = cp.rows_done,
                "backfill already done in this rollout epoch"
            );
        }
        report_done(client, cfg, &cp, table_oid).await?;
        return Ok(Outcome::AlreadyApplied);
    }
    walk(client, &scan, cp, stats).await
}

/// A fleet's tenant found done: its rows still count in the fleet's progress.
async fn report_done(
    c: &Client,
    cfg: &BackfillConfig,
    cp: &Checkpoint,
    table_oid: u32,
) -> Result<(), BackfillError> {
    if cfg.progress.is_none() {
        return Ok(());
    }
    let estimated = estimated_rows(c, table_oid).await?;
    let p = BackfillProgress {
        rows_done: cp.rows_done,
        estimated_rows: estimated,
        key_range_done_permille: 1000,
        batches: cp.batches,
        eta_seconds: Some(0),
        ..Default::default()
    };
    emit(cfg, &p, 0);
    Ok(())
}

/// The table and the key, quoted; refuses a composite key and batch SQL without both bounds.
fn checked_names(cfg: &BackfillConfig) -> Result<(String, String), BackfillError> {
    let table = match &cfg.search_path {
        None => quote_ident_path(&cfg.table)?,
        // A schema tenant's own table: qualified here for the executor's own queries, which
        // run outside the batches' transactions.
        Some(schema) if !cfg.table.contains('.') => {
            format!("{}.{}", quote_ident(schema), quote_ident_path(&cfg.table)?)
        }
        Some(_) => {
            return Err(BackfillError::Setting(format!(
                "table {:?} is schema-qualified: with tenants.schemas the table is each \
                 tenant's own, unqualified",
                cfg.table
            )))
        }
    };
    // A composite key would need row comparisons in every bound and two placeholders per
    // bound: not supported yet (docs/backfill.md).
    if cfg.key.contains(',') || cfg.key.contains('(') {
        return Err(BackfillError::Setting(format!(
            "key {:?} names several columns: composite keys are not supported; walk one unique \
             column (e.g. a surrogate id)",
            cfg.key
        )));
    }
    let key = quote_ident_path(&cfg.key)?;
    if cfg.key.contains('.') {
        return Err(BackfillError::Setting(
            "the key is a column name, without table or schema".into(),
        ));
    }
    if !cfg.sql.contains("$1") || !cfg.sql.contains("$2") {
        return Err(BackfillError::Setting(
            "the batch SQL must use $1 (exclusive lower bound) and $2 (inclusive upper bound) of the key range".into(),
        ));
    }
    Ok((table, key))
}

/// Connects, with the same client-side keepalives as `phasegate apply` (or takes the
/// connection a fleet's last schema tenant gave back); returns the client and the server's
/// version. Nothing is set on the session: behind a transaction pooler a session setting
/// would stay on a pooled server connection for whichever client gets it next.
async fn open(cfg: &BackfillConfig, scrub: &Scrubber) -> Result<(Client, i32), BackfillError> {
    if let Some(reused) = cfg
        .connections
        .as_ref()
        .and_then(|c| c.take(&cfg.database_url.0))
    {
        return Ok(reused);
    }
    let mut settings = session::settings(&cfg.database_url.0)?;
    // A startup parameter, not a SET: PgBouncer gives it to every server connection it lends.
    settings.config.application_name("phasegate-backfill");
    let client = or_stop(&cfg.stop, 0, async {
        Ok(connect::connect(&settings, cfg.connect_timeout, scrub).await?)
    })
    .await?;
    let version = super::facts::server_version(&client)
        .await
        .map_err(|e| BackfillError::db(&e))?;
    Ok((client, version))
}

/// The `SET LOCAL`s every transaction of the run starts with.
fn local_settings(cfg: &BackfillConfig, version: i32) -> String {
    let mut set_local = session::local_settings(cfg.lock_timeout, cfg.statement_timeout, version);
    if let Some(schema) = &cfg.search_path {
        // The batch SQL is unqualified: it runs in the tenant's schema (and nothing else).
        set_local.push_str(&format!(
            "; SET LOCAL search_path TO {}",
            quote_ident(schema)
        ));
    }
    set_local
}

/// The connections a fleet's schema tenants pass from one tenant's backfill to the next on the
/// same server (at most one per running tenant), by URL: every setting is per transaction, so
/// any tenant of the database can use any. A run that failed drops its connection instead.
#[derive(Clone, Default)]
pub struct Connections(Arc<Mutex<Vec<(String, Client, i32)>>>);

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connections")
    }
}

impl Connections {
    fn take(&self, url: &str) -> Option<(Client, i32)> {
        let mut idle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Closed ones go; those of other servers stay.
        idle.retain(|(_, c, _)| !c.is_closed());
        let i = idle.iter().position(|(u, _, _)| u == url)?;
        let (_, client, version) = idle.swap_remove(i);
        Some((client, version))
    }

    fn give_back(&self, url: &str, client: Client, version: i32) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((url.to_string(), client, version));
    }
}

/// How the key is walked, from its base type (through a domain).
async fn key_kind(c: &Client, cfg: &BackfillConfig, table: &str) -> Result<KeyKind, BackfillError> {
    let key_type: Option<(String, String)> = c
        .query_typed_opt(
            "SELECT t.typname::text, format_type(a.atttypid, a.atttypmod)
               FROM pg_attribute a
               JOIN pg_type d ON d.oid = a.atttypid
               JOIN pg_type t ON t.oid = CASE WHEN d.typtype = 'd' THEN d.typbasetype ELSE d.oid END
              WHERE a.attrelid = $1::text::regclass AND a.attname = $2 AND NOT a.attisdropped",
            &[(&table, Type::TEXT), (&cfg.key.trim(), Type::TEXT)],
        )
        .await
        .map_err(|e| BackfillError::db(&e))?
        .map(|r| (r.get(0), r.get(1)));
    Ok(match key_type {
        Some((base, _)) if matches!(base.as_str(), "int2" | "int4" | "int8") => KeyKind::Integer,
        Some((base, shown)) => match SORTED_KEY_TYPES.iter().find(|(t, _)| *t == base) {
            Some((t, before_all)) => KeyKind::Sorted {
                type_name: t.to_string(),
                before_all,
            },
            None => {
                return Err(BackfillError::Setting(format!(
                    "key {} of {} is {shown}; a backfill walks a key of type smallint, integer, \
                     bigint, text, varchar, char, citext, bytea, uuid, date, timestamp, \
                     timestamptz, numeric, real or double precision (types with a \
                     known smallest value, the first batch's exclusive lower bound)",
                    cfg.key, cfg.table
                )))
            }
        },
        None => {
            return Err(BackfillError::Setting(format!(
                "table {} has no column {}",
                cfg.table, cfg.key
            )))
        }
    })
}

/// One scan's fixed parts: the statements of a batch, the `SET LOCAL`s, the advisory key.
struct Scan<'a> {
    cfg: &'a BackfillConfig,
    sum: &'a str,
    table: String,
    key: String,
    kind: KeyKind,
    table_oid: u32,
    set_local: String,
    /// `hashtext` of this, the advisory lock of this backfill (the key earlier executors
    /// took as a session lock, so that both kinds exclude each other).
    lock_key: String,
    sorted: bool,
    /// The type the bounds are sent as: `bigint`, or `unknown` for PostgreSQL to give them
    /// the type the SQL compares them with (the key's).
    bound_type: Type,
    /// The next batch's upper bound (and, for a keyset walk, how many keys that is).
    upper_sql: String,
}

impl<'a> Scan<'a> {
    fn new(
        cfg: &'a BackfillConfig,
        sum: &'a str,
        table: String,
        key: String,
        kind: KeyKind,
        table_oid: u32,
        set_local: String,
    ) -> Scan<'a> {
        let sorted = matches!(kind, KeyKind::Sorted { .. });
        let upper_sql = if sorted {
            // Keyset: the n-th key after the lower bound, and how many keys that is (fewer
            // than n at the end of the range).
            format!(
                "SELECT {}, n FROM (SELECT {key} AS k, row_number() OVER (ORDER BY {key}) AS n
                   FROM {table} WHERE {key} > $1 AND {key} <= $2 ORDER BY {key} LIMIT $3) s
                  ORDER BY n DESC LIMIT 1",
                key_text("s.k")
            )
        } else {
            format!(
                "SELECT max(k) FROM (SELECT {key}::bigint AS k FROM {table}
                  WHERE {key} > $1 AND {key} <= $2 ORDER BY {key} LIMIT $3) s"
            )
        };
        Scan {
            lock_key: format!("phasegate-backfill/{}/{}", cfg.namespace, cfg.name),
            bound_type: if sorted { Type::UNKNOWN } else { Type::INT8 },
            cfg,
            sum,
            table,
            key,
            kind,
            table_oid,
            set_local,
            sorted,
            upper_sql,
        }
    }
}

/// Advances an integer key's checkpoint from `$3` (compare-and-set) to `$4`.
const ADVANCE_INTEGER: &str = "UPDATE phasegate.backfill
    SET last_key = $4, rows_done = rows_done + $5, batches = batches + 1,
        status = CASE WHEN $4 >= end_key THEN 'done' ELSE 'running' END,
        finished_at = CASE WHEN $4 >= end_key THEN clock_timestamp() END,
        updated_at = clock_timestamp()
  WHERE namespace = $1 AND name = $2 AND epoch = $6 AND last_key = $3";

/// The same for a keyset walk, with the keys walked (`$7`) and whether it is the last batch.
const ADVANCE_SORTED: &str = "UPDATE phasegate.backfill
    SET last_key_text = $4, rows_done = rows_done + $5, keys_done = keys_done + $7,
        batches = batches + 1,
        status = CASE WHEN $8 THEN 'done' ELSE 'running' END,
        finished_at = CASE WHEN $8 THEN clock_timestamp() END,
        updated_at = clock_timestamp()
  WHERE namespace = $1 AND name = $2 AND epoch = $6 AND last_key_text = $3";

/// Waiting while another executor of this backfill holds its lock.
const BUSY_WAIT: Duration = Duration::from_millis(200);

/// Begins a transaction with the run's `SET LOCAL`s and this backfill's advisory lock. The
/// lock is transaction-scoped: nothing outlives the transaction on a pooled server connection,
/// and a killed executor's lock goes with its transaction. `None`: another executor of this
/// backfill holds it right now (this transaction is rolled back).
async fn begin_locked<'c>(
    client: &'c mut Client,
    scan: &Scan<'_>,
) -> Result<Option<Transaction<'c>>, BackfillError> {
    let db = |e: tokio_postgres::Error| BackfillError::db(&e);
    let tx = client.transaction().await.map_err(db)?;
    tx.batch_execute(&scan.set_local).await.map_err(db)?;
    let got: bool = tx
        .query_typed_one(
            "SELECT pg_try_advisory_xact_lock(hashtext($1))",
            &[(&scan.lock_key, Type::TEXT)],
        )
        .await
        .map_err(db)?
        .get(0);
    if got {
        return Ok(Some(tx));
    }
    tx.rollback().await.map_err(db)?;
    Ok(None)
}

/// The checkpoint to walk from: read, or the scan restarted, under this backfill's advisory
/// lock, so that of two runs starting at once only one restarts the scan and the other
/// resumes it.
async fn start(
    client: &mut Client,
    scan: &Scan<'_>,
    stats: &mut RunStats,
) -> Result<Checkpoint, BackfillError> {
    let (cfg, stop) = (scan.cfg, &scan.cfg.stop);
    let mut announced = false;
    loop {
        while let Some(why) = or_stop(stop, 0, throttle_reason(client, cfg, scan.table_oid)).await?
        {
            tracing::warn!(reason = %why, "backfill throttled");
            let p = BackfillProgress {
                throttled: Some(why),
                ..Default::default()
            };
            emit(cfg, &p, 0);
            stats.throttle_wait += Duration::from_millis(500);
            sleep(stop, 0, Duration::from_millis(500)).await?;
        }
        let loaded = or_stop(stop, 0, async {
            let Some(tx) = begin_locked(client, scan).await? else {
                return Ok(None);
            };
            let cp =
                load_checkpoint(&tx, cfg, scan.sum, &scan.table, &scan.key, &scan.kind).await?;
            tx.commit().await.map_err(|e| BackfillError::db(&e))?;
            Ok(Some(cp))
        })
        .await;
        match retry_before_first_batch(loaded, cfg, stats, stop).await? {
            Some(Some(cp)) => return Ok(cp),
            Some(None) => {
                if !announced {
                    tracing::warn!("another executor runs this backfill; waiting for its batch");
                    announced = true;
                }
                stats.throttle_wait += BUSY_WAIT;
                sleep(stop, 0, BUSY_WAIT).await?;
            }
            None => {}
        }
    }
}

/// What one batch attempt came to.
enum Batch {
    /// Another executor of this backfill holds its lock (runs a batch) right now.
    Busy,
    /// Another executor committed a batch since this run read the checkpoint: rolled back.
    Moved,
    Committed {
        upper: Key,
        rows: i64,
        keys: i64,
        done: bool,
    },
}

/// One batch: the keys in `(lower, end]` up to `size` of them, the batch SQL over them and
/// the checkpoint's compare-and-set, in one transaction under this backfill's advisory lock.
/// Unnamed statements only: a transaction pooler keeps no prepared statement between
/// transactions.
async fn run_batch(
    client: &mut Client,
    scan: &Scan<'_>,
    lower: &Key,
    end: &Key,
    size: i64,
    end_key: i64,
) -> Result<Batch, BackfillError> {
    let (cfg, db) = (scan.cfg, |e: tokio_postgres::Error| BackfillError::db(&e));
    let Some(tx) = begin_locked(client, scan).await? else {
        return Ok(Batch::Busy);
    };
    let t = scan.bound_type.clone();
    let row = tx
        .query_typed_opt(
            &scan.upper_sql,
            &[(lower, t.clone()), (end, t.clone()), (&size, Type::INT8)],
        )
        .await
        .map_err(db)?;
    // (upper bound, keys in the batch, the range's last batch); no key left in
    // (lower, end]: the scan ends at the end of the range.
    let (upper, keys, done) = match row {
        Some(r) if scan.sorted => {
            let (k, keys): (String, i64) = (r.get(0), r.get(1));
            if keys < size {
                (Some(end.clone()), keys, true)
            } else {
                let k = Key::Text(k);
                let done = &k == end;
                (Some(k), keys, done)
            }
        }
        Some(r) => match r.get::<_, Option<i64>>(0) {
            Some(u) => (Some(Key::Int(u)), 0, u >= end_key),
            None => (None, 0, true),
        },
        None => (None, 0, true),
    };
    let (upper, n) = match upper {
        Some(upper) => {
            let n = tx
                .execute_typed(&cfg.sql, &[(lower, t.clone()), (&upper, t)])
                .await
                .map_err(db)?;
            (upper, n as i64)
        }
        None => (end.clone(), 0),
    };
    // The bounds as text for a keyset walk; its count of keys and end flag too.
    let (advance, bound) = match scan.sorted {
        true => (ADVANCE_SORTED, Type::TEXT),
        false => (ADVANCE_INTEGER, Type::INT8),
    };
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
        (&cfg.namespace, Type::TEXT),
        (&cfg.name, Type::TEXT),
        (lower, bound.clone()),
        (&upper, bound),
        (&n, Type::INT8),
        (&cfg.epoch, Type::TEXT),
    ];
    if scan.sorted {
        params.extend([
            (&keys as &(dyn ToSql + Sync), Type::INT8),
            (&done, Type::BOOL),
        ]);
    }
    let moved = tx.execute_typed(advance, &params).await.map_err(db)?;
    if moved != 1 {
        tx.rollback().await.map_err(db)?;
        return Ok(Batch::Moved);
    }
    // The last look at the stop flag before COMMIT (a stop during COMMIT is harmless: the
    // batch and its checkpoint commit together or not at all).
    if let Some(signal) = cfg.stop.requested() {
        tx.rollback().await.map_err(db)?;
        return Err(BackfillError::Stopped { signal, batches: 0 });
    }
    tx.commit().await.map_err(db)?;
    Ok(Batch::Committed {
        upper,
        rows: n,
        keys,
        done,
    })
}

/// Why a batch rolled back by `code` (lock timeout, deadlock, statement timeout) is retried, for
/// the progress line; the error that ends the run once `attempt` exceeds the retries allowed.
fn retry_reason(
    code: String,
    message: String,
    attempt: u32,
    cfg: &BackfillConfig,
) -> Result<String, BackfillError> {
    let lock_timeout = humantime::format_duration(cfg.lock_timeout).to_string();
    if attempt > cfg.max_lock_retries {
        return Err(if code == "57014" {
            BackfillError::Db {
                sqlstate: Some(code),
                message,
            }
        } else {
            BackfillError::LockRetriesExhausted {
                attempts: attempt,
                lock_timeout,
            }
        });
    }
    Ok(match code.as_str() {
        "55P03" => format!("lock timeout ({lock_timeout}) on the table, retry {attempt}"),
        "40P01" => format!("deadlock, retry {attempt}"),
        _ => format!("statement timeout, retry {attempt} with a smaller batch"),
    })
}

/// The planner's estimate of the table's rows (for progress and its ETA).
async fn estimated_rows<C: GenericClient>(c: &C, table_oid: u32) -> Result<i64, BackfillError> {
    Ok(c.query_typed_one(
        "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = $1",
        &[(&table_oid, Type::OID)],
    )
    .await
    .map_err(|e| BackfillError::db(&e))?
    .get(0))
}

/// Walks the key range from the checkpoint to its end, batch by batch.
async fn walk(
    client: &mut Client,
    scan: &Scan<'_>,
    mut cp: Checkpoint,
    stats: &mut RunStats,
) -> Result<Outcome, BackfillError> {
    let (cfg, stop, sorted, table_oid) = (scan.cfg, &scan.cfg.stop, scan.sorted, scan.table_oid);
    let estimated = estimated_rows(client, table_oid).await?;
    let end_key = cp.end_key.unwrap_or(i64::MIN);
    let min_key = cp.min_key.unwrap_or(0);
    let run_start = Instant::now();
    let mut run_rows: i64 = 0;
    let mut size = cfg.batch_size.clamp(1, cfg.max_batch_size.max(1));
    let mut last_print: Option<Instant> = None;
    let mut consecutive_lock_timeouts = 0u32;
    let mut throttled: Option<String> = None;
    let mut busy_announced = false;
    loop {
        if cp.done {
            break;
        }
        let (lower, end) = if sorted {
            (
                Key::Text(cp.last_text.clone().unwrap_or_default()),
                Key::Text(cp.end_text.clone().unwrap_or_default()),
            )
        } else {
            let lower = cp.last_key.unwrap_or(min_key);
            if lower >= end_key {
                break;
            }
            (Key::Int(lower), Key::Int(end_key))
        };
        // Throttle outside any transaction.
        if let Some(why) =
            or_stop(stop, stats.batches, throttle_reason(client, cfg, table_oid)).await?
        {
            if throttled.as_deref() != Some(why.as_str()) {
                tracing::warn!(reason = %why, "backfill throttled");
                throttled = Some(why.clone());
                last_print = None;
            }
            print_progress(
                &mut last_print,
                cfg,
                &cp,
                estimated,
                end_key,
                size,
                run_rows,
                run_start,
                throttled.clone(),
            );
            let wait = Duration::from_millis(500);
            stats.throttle_wait += wait;
            sleep(stop, stats.batches, wait).await?;
            continue;
        }
        if throttled.take().is_some() {
            tracing::info!("backfill no longer throttled");
            last_print = None;
        }
        let began = Instant::now();
        let result = or_stop(
            stop,
            stats.batches,
            run_batch(client, scan, &lower, &end, size, end_key),
        )
        .await;
        let took = began.elapsed();
        if !matches!(result, Ok(Batch::Busy)) {
            stats.attempts += 1;
        }
        match result {
            Ok(Batch::Busy) => {
                if !busy_announced {
                    tracing::warn!("another executor runs this backfill; its batches go first");
                    busy_announced = true;
                }
                stats.throttle_wait += BUSY_WAIT;
                sleep(stop, stats.batches, BUSY_WAIT).await?;
            }
            Ok(Batch::Moved) => {
                // Continue where the other executor got to, if it walks the same scan.
                cp = read_checkpoint(&*client, cfg, scan.sum, &scan.kind)
                    .await?
                    .map_err(|_| BackfillError::CheckpointMoved)?;
                tracing::info!(
                    rows_done = cp.rows_done,
                    "another executor of this backfill advanced the checkpoint; continuing from it"
                );
            }
            Ok(Batch::Committed {
                upper,
                rows: n,
                keys,
                done,
            }) => {
                consecutive_lock_timeouts = 0;
                stats.batches += 1;
                run_rows += n;
                cp.advance(upper, n, keys, done);
                size = adapt(size, took, cfg.target_batch_duration, cfg.max_batch_size);
                // A batch far over target even so: give the database as long again.
                let extra = if took > cfg.target_batch_duration * 4 {
                    throttled = Some(format!(
                        "batch took {} ms, target {} ms",
                        took.as_millis(),
                        cfg.target_batch_duration.as_millis()
                    ));
                    took
                } else {
                    Duration::ZERO
                };
                print_progress(
                    &mut last_print,
                    cfg,
                    &cp,
                    estimated,
                    end_key,
                    size,
                    run_rows,
                    run_start,
                    throttled.clone(),
                );
                stats.throttle_wait += extra;
                sleep(stop, stats.batches, cfg.pause + extra).await?;
            }
            Err(BackfillError::Db {
                sqlstate: Some(code),
                message,
            }) if code == "55P03" || code == "40P01" || code == "57014" => {
                // Lock timeout, deadlock, or statement timeout (a batch too large): roll back
                // (done), shrink, back off, retry.
                stats.lock_retries += 1;
                consecutive_lock_timeouts += 1;
                let why = retry_reason(code, message, consecutive_lock_timeouts, cfg)?;
                size = (size / 2).max(10);
                tracing::warn!(reason = %why, batch_size = size, "backfill batch rolled back");
                throttled = Some(why);
                last_print = None;
                print_progress(
                    &mut last_print,
                    cfg,
                    &cp,
                    estimated,
                    end_key,
                    size,
                    run_rows,
                    run_start,
                    throttled.clone(),
                );
                let base = 100u64 << consecutive_lock_timeouts.min(6);
                let jitter = rand::rng().random_range(0..=base / 2);
                let wait = Duration::from_millis((base + jitter).min(5_000));
                stats.throttle_wait += wait;
                sleep(stop, stats.batches, wait).await?;
            }
            Err(BackfillError::Stopped { signal, .. }) => {
                return Err(BackfillError::Stopped {
                    signal,
                    batches: stats.batches,
                })
            }
            Err(e) => return Err(e),
        }
    }
    cp.done = true;
    last_print_final(cfg, &cp, estimated, end_key, size, run_rows, run_start);
    if !cfg.quiet() {
        tracing::info!(
            rows_done = cp.rows_done,
            batches = cp.batches,
            "backfill done"
        );
    }
    // Another executor of this backfill walked it to the end.
    if stats.batches == 0 {
        return Ok(Outcome::AlreadyApplied);
    }
    Ok(Outcome::Applied)
}

#[allow(clippy::too_many_arguments)]
fn print_progress(
    last_print: &mut Option<Instant>,
    cfg: &BackfillConfig,
    cp: &Checkpoint,
    estimated: i64,
    end_key: i64,
    size: i64,
    run_rows: i64,
    run_start: Instant,
    throttled: Option<String>,
) {
    // A fleet's tenant hands every batch's progress on: the fleet prints one line for all.
    if cfg.progress.is_none() && last_print.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
        return;
    }
    *last_print = Some(Instant::now());
    let p = compute(cp, estimated, end_key, size, run_rows, run_start, throttled);
    emit(cfg, &p, run_rows);
}

/// A progress line on stderr, for the operator; in a fleet, to the fleet's aggregate.
fn emit(cfg: &BackfillConfig, p: &BackfillProgress, run_rows: i64) {
    match &cfg.progress {
        Some(sink) => sink.report(p, run_rows),
        None => eprintln!("{}", progress_line(p)),
    }
}

fn last_print_final(
    cfg: &BackfillConfig,
    cp: &Checkpoint,
    estimated: i64,
    end_key: i64,
    size: i64,
    run_rows: i64,
    run_start: Instant,
) {
    let mut p = compute(cp, estimated, end_key, size, run_rows, run_start, None);
    p.key_range_done_permille = 1000;
    p.eta_seconds = Some(0);
    emit(cfg, &p, run_rows);
}

fn compute(
    cp: &Checkpoint,
    estimated: i64,
    end_key: i64,
    size: i64,
    run_rows: i64,
    run_start: Instant,
    throttled: Option<String>,
) -> BackfillProgress {
    let fraction = if cp.sorted {
        // No arithmetic on the key: the share of the estimated rows walked, short of 1 until
        // the end (the estimate can be low).
        let total = estimated.max(cp.keys_done).max(1) as f64;
        (cp.keys_done as f64 / total).clamp(0.0, 0.999)
    } else {
        let min = cp.min_key.unwrap_or(0) as f64;
        let span = (end_key as f64 - min).max(1.0);
        let walked = (cp.last_key.unwrap_or(cp.min_key.unwrap_or(0)) as f64 - min).max(0.0);
        (walked / span).clamp(0.0, 1.0)
    };
    let secs = run_start.elapsed().as_secs_f64().max(0.001);
    let rate = run_rows as f64 / secs;
    // Pace over the key range in this run (a resumed run started part-way).
    let eta = (fraction > 0.0 && rate > 0.0).then(|| {
        let rows_left = (1.0 - fraction) * estimated.max(cp.rows_done) as f64;
        (rows_left / rate).round() as i64
    });
    BackfillProgress {
        rows_done: cp.rows_done,
        estimated_rows: estimated,
        key_range_done_permille: (fraction * 1000.0) as i64,
        batches: cp.batches,
        batch_size: size,
        rows_per_second: rate as i64,
        eta_seconds: eta,
        throttled,
        tenants: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapts_toward_the_target_within_bounds() {
        let t = Duration::from_millis(200);
        assert_eq!(adapt(1000, Duration::from_millis(100), t, 50_000), 2000);
        assert_eq!(adapt(1000, Duration::from_millis(400), t, 50_000), 500);
        assert_eq!(adapt(1000, Duration::from_millis(1), t, 50_000), 2000);
        assert_eq!(adapt(1000, Duration::from_secs(10), t, 50_000), 500);
        assert_eq!(adapt(40_000, Duration::from_millis(1), t, 50_000), 50_000);
        assert_eq!(adapt(12, Duration::from_secs(1), t, 50_000), 10);
    }

    #[test]
    fn quotes_names_and_refuses_odd_ones() {
        assert_eq!(quote_ident_path("users").unwrap(), "\"users\"");
        assert_eq!(quote_ident_path("app.users").unwrap(), "\"app\".\"users\"");
        assert!(quote_ident_path("a\"b").is_err());
        assert!(quote_ident_path("a.b.c").is_err());
        assert!(quote_ident_path("").is_err());
    }
}
