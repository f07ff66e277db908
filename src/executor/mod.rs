//! `phasegate apply`: runs one phase (expand or contract) of a migration against PostgreSQL,
//! exactly once, without stalling application traffic while it waits for locks.
//!
//! Order of work: parse and classify the SQL (before touching the database), connect, read the
//! ledger, then run the statements: consecutive transactional statements as one transaction
//! that also writes the ledger row; statements that cannot run in a transaction block one by
//! one, with the ledger recording progress after each. Each attempt first waits outside the
//! lock queue ([`locks`]) and, for contract, for the database-side check ([`dbcheck`]), without
//! the per-database advisory lock; then takes the advisory lock (inside the attempt's own
//! transaction), claims the ledger row, and holds the lock until COMMIT. Contract runs the check
//! once more inside the transaction, with its locks held, right before COMMIT.
//!
//! The fence: a stop request (SIGTERM, SIGINT; see [`stop`]) ends every wait at once, cancels a
//! statement in flight, rolls the transaction back and is checked again immediately before
//! COMMIT, so a stopped run never commits anything it had not committed already.

pub mod backfill;
mod batch;
mod config;
pub mod connect;
pub mod dbcheck;
mod dbcheck_run;
mod error;
mod facts;
pub mod fleet;
pub mod grant;
pub mod ledger;
pub mod locks;
mod order;
pub mod pooler_clients;
mod rerun;
mod runner;
mod session;
mod sessions;
mod standbys;
mod stats;
pub mod stop;
pub mod waits;

use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::protocol::env::ExecutorEnv;
pub use crate::protocol::report::{Outcome, Report, ReportError};
use crate::sql::{self, Statement};
use config::config_from_args;
pub use config::{config_from_env, ApplyArgs, Config, ContractArgs, Phase, RunArgs, Secret};
use connect::Scrubber;
use dbcheck_run::DbCheckRun;
pub use error::ApplyError;
pub use ledger::Identity;
pub use pooler_clients::PoolerConfig;
use runner::Runner;
pub use session::idle_in_transaction_timeout;
use stats::Stats;
pub use stop::{Signal, Stop};
use waits::Waits;
//
// Modules, each with one job: `config` (arguments and settings), `session` (connecting and the
// session's timeouts), `locks` (what the statements lock and waiting outside the lock queue),
// `dbcheck` and `dbcheck_run` (contract's database check; `standbys` for hot standbys), `grant` (the commit grant), `runner` (attempts and the one retry loop),
// `rerun` (statements outside a transaction made safe to run again), `ledger`, `report`, `stop`,
// `waits`, `error`, `order` (waiting for earlier migrations' expand in the ledger), `batch`
// (later migrations of the database applied after this one, in order), `fleet` (one
// phase on every tenant) and `sessions` (the connections its tenants' runs pass on). This file:
// the entry points and the order of work.

/// Entry point of `phasegate apply`: runs the phase, writes the report to the termination log
/// and prints it as the last line on stdout. Exit status: 0 when applied (or already applied),
/// 143 (SIGTERM) or 130 (SIGINT) when stopped before COMMIT, 1 on any other failure.
pub async fn apply(args: ApplyArgs) -> std::process::ExitCode {
    let env = match ExecutorEnv::from_process() {
        Ok(env) => env,
        Err(e) => return usage_error(&e.to_string()),
    };
    let members = match batch_environments(&args, &env) {
        Ok(m) => m,
        Err(e) => return usage_error(&e),
    };
    let settings = match args.clone().resolve(env) {
        Ok(s) => s,
        Err(e) => return usage_error(&e),
    };
    let termination_log = settings.run.termination_log.clone();
    let stop = stop_on_signals();
    let report = match config_from_args(settings) {
        Ok(mut cfg) if !members.is_empty() && cfg.phase == Phase::Expand => {
            cfg.stop = stop.clone();
            let members = members
                .into_iter()
                .map(|(name, env)| {
                    let cfg = args
                        .clone()
                        .resolve(env)
                        .map_err(|e| Box::new(ApplyError::Setting(e)))
                        .and_then(|s| config_from_args(s).map_err(|(_, e)| e))
                        .map_err(|e| *e);
                    (name, cfg)
                })
                .collect();
            batch::execute_batch(&cfg, members).await
        }
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
    finish(&report, &termination_log, &stop)
}

/// `PHASEGATE_EXPAND_BATCH`: each member's environment, by name (see [`batch`]). Each runs
/// its own SQL, so flags that set one SQL for all, or tenants, cannot go with it.
fn batch_environments(
    args: &ApplyArgs,
    env: &ExecutorEnv<crate::protocol::env::Secret>,
) -> Result<Vec<(String, ExecutorEnv<crate::protocol::env::Secret>)>, String> {
    let members = env.expand_batch.clone().unwrap_or_default();
    if members.is_empty() {
        return Ok(Vec::new());
    }
    if args.sql.is_some() || args.file.is_some() || env.tenants.is_some() {
        return Err(format!(
            "{} cannot be combined with --sql, --file or {}: each migration of a batch runs \
             its own SQL on the one database",
            crate::protocol::env::EXPAND_BATCH,
            crate::protocol::env::TENANTS
        ));
    }
    Ok(members
        .iter()
        .map(|m| (m.name.clone(), m.environment(env.clone())))
        .collect())
}

/// A setting missing or invalid, as clap reports one: on stderr, exit status 2.
fn usage_error(message: &str) -> std::process::ExitCode {
    eprintln!("error: {message}");
    std::process::ExitCode::from(2)
}

/// A stop requested by SIGTERM or SIGINT (handlers installed now).
fn stop_on_signals() -> Stop {
    let stop = Stop::new();
    if let Err(e) = stop.on_signals() {
        tracing::warn!(error = %e, "cannot handle SIGTERM/SIGINT; a stop will kill the process instead");
    }
    stop
}

/// Writes the report to the termination log and prints it as the last line on stdout; the
/// exit status: 0 on success, 128 + the signal when stopped, 1 on any other failure.
fn finish(report: &Report, termination_log: &Path, stop: &Stop) -> std::process::ExitCode {
    let line = report.to_json_line();
    write_termination_log(termination_log, &line);
    println!("{line}");
    match (report.is_success(), stop.requested()) {
        (true, _) => std::process::ExitCode::SUCCESS,
        (false, Some(signal)) => std::process::ExitCode::from(signal.exit_code()),
        (false, None) => std::process::ExitCode::FAILURE,
    }
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

pub use crate::protocol::checksum::checksum;

/// Runs one phase — on every tenant with `cfg.tenants` — and returns its report. Never panics
/// on database errors.
pub async fn execute(cfg: &Config) -> Report {
    match &cfg.tenants {
        Some(spec) => fleet::execute_fleet(cfg, spec).await,
        None => execute_one(cfg).await,
    }
}

/// Runs one phase on one database.
async fn execute_one(cfg: &Config) -> Report {
    let start = Instant::now();
    let mut stats = Stats::default();
    let sum = checksum(&cfg.sql);
    let scrub = Scrubber::for_urls(&cfg.secret_urls());
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
                checksum: Some(crate::protocol::checksum::short(&sum)),
                db_check_wait_ms: stats.db_check_wait.map(|d| d.as_millis() as u64),
                db_check_warning: stats.db_check_warning.as_deref().map(|w| scrub.scrub(w)),
                db_check_rollbacks: (stats.db_check_rollbacks > 0)
                    .then_some(stats.db_check_rollbacks),
                grant_rollbacks: (stats.grant_rollbacks > 0).then_some(stats.grant_rollbacks),
                gate_to_commit_us: stats.gate_to_commit.map(|d| d.as_micros() as u64),
                stopped_by: None,
                recovered: stats.recovered.iter().map(|n| scrub.scrub(n)).collect(),
                tenants: None,
                batch: None,
                error: None,
            };
            if !cfg.quiet {
                tracing::info!(summary = %report.summary(), "phase done");
            }
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
        checksum: sum.map(crate::protocol::checksum::short),
        db_check_wait_ms: stats.db_check_wait.map(|d| d.as_millis() as u64),
        db_check_warning: stats.db_check_warning.as_deref().map(|w| scrub.scrub(w)),
        db_check_rollbacks: (stats.db_check_rollbacks > 0).then_some(stats.db_check_rollbacks),
        grant_rollbacks: (stats.grant_rollbacks > 0).then_some(stats.grant_rollbacks),
        gate_to_commit_us: stats.gate_to_commit.map(|d| d.as_micros() as u64),
        stopped_by: None,
        recovered: stats.recovered.iter().map(|n| scrub.scrub(n)).collect(),
        tenants: None,
        batch: None,
        error: Some(error),
    }
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
    if !cfg.quiet {
        tracing::info!(phase, namespace = %id.namespace, name = %id.name, statements = statements.len(), checksum = &sum[..12], "applying phase");
    }

    // A fleet run's next tenant takes the connections the last one gave back.
    let reused = cfg.sessions.as_ref().and_then(sessions::Sessions::take);
    let (reused_guard, (mut client, settings, version)) = match reused {
        Some(p) => (p.guard, (p.client, p.settings, p.version)),
        None => (None, session::open(cfg, scrub).await?),
    };
    // A schema tenant's search_path is set with the setup below: nothing before it resolves
    // an unqualified name.
    let mut waits = Waits::new();
    let waited = order::wait_for_earlier(
        &client,
        &id.namespace,
        &cfg.expand_after,
        &cfg.stop,
        &mut waits,
    )
    .await?;
    if !waited.is_zero() {
        tracing::info!(
            waited_ms = waited.as_millis() as u64,
            "earlier migrations on this database applied their expand"
        );
    }
    let mut runner = Runner {
        cfg,
        sum,
        server_version: version,
        settings,
        cancel: client.cancel_token(),
        scrub,
        guard: reused_guard,
        guard_idle: guard_idle(cfg, statements.len()),
        stats,
        db_check: DbCheckRun::new(cfg, scrub)?,
        waits,
        advisory_waited: Duration::ZERO,
        // Asked from now on, while the run waits, so that a grant is usually held by the time
        // the tables are clear.
        grant: cfg.shared_grant.clone().or_else(|| {
            cfg.grant
                .clone()
                .map(|g| std::sync::Arc::new(grant::Grant::start(g)))
        }),
        grant_waited: Duration::ZERO,
        skipped: 0,
        patience: locks::Patience::new(
            cfg.young_transaction,
            cfg.lock_wait_attempt_after,
            cfg.lock_timeout,
        ),
    };
    if !cfg.lock_wait_timeout.is_zero() || runner.db_check.checker.is_some() {
        // Once per run (a fleet's tenants: once per phase); the database check reuses it
        // rather than adding its own.
        runner.stats.db_check_warning = cfg
            .facts
            .visibility(&runner.settings, &client)
            .await
            .map_err(|e| ApplyError::db(&e, None))?;
        if let Some(w) = &runner.stats.db_check_warning {
            tracing::warn!("{}", scrub.scrub(w));
        }
        if let Some(checker) = runner.db_check.checker.as_mut() {
            checker.sees_all = runner.stats.db_check_warning.is_none();
        }
    }
    if runner.db_check.checker.is_some() && cfg.pooler.is_none() {
        let port = cfg.facts.port(&runner.settings, &client).await;
        let pooler = pooler_clients::undeclared_pooler_warning(port, &runner.settings);
        if let Some(w) = pooler {
            tracing::warn!("{}", scrub.scrub(&w));
            runner.stats.add_warning(w);
        }
    }
    // The per-database advisory lock serialises what applies SQL: it is held only for each
    // attempt (and to create the ledger where there is none), never while waiting for tables
    // or the database check, so a contract waiting for an old transaction does not hold up
    // other migrations on the same database. Reading the ledger needs no lock: each attempt
    // claims its row (and reads it again) under the lock.
    let entry = read_ledger(&mut runner, &client).await?;
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
                recorded: crate::protocol::checksum::short(&entry.checksum),
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
            if !cfg.quiet {
                tracing::info!("phase already applied with the same checksum; nothing to do");
            }
            give_back(client, runner);
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

    let steps = steps(&statements, done, version);
    let n_steps = steps.len();
    for step in steps {
        if let Some(signal) = cfg.stop.requested() {
            return Err(signal.into());
        }
        runner
            .run_step(&mut client, &statements, step.range, step.own)
            .await?;
    }
    if runner.skipped == n_steps && n_steps > 0 {
        // Another executor of this phase applied every step while this one waited.
        tracing::info!("another run applied the phase meanwhile; nothing to do");
        give_back(client, runner);
        return Ok(Outcome::AlreadyApplied);
    }
    give_back(client, runner);
    Ok(Outcome::Applied)
}

/// The phase's ledger row, with what must come first, all sent at once (one round trip): a
/// schema tenant's `search_path` on the session, and PHASEGATE_REQUIRE_EXPAND's look at expand's
/// row (before anything is created: this may not be our database at all). Where there is no
/// ledger yet, creates it under the advisory lock and reads again.
async fn read_ledger(
    runner: &mut Runner<'_>,
    client: &Client,
) -> Result<Option<ledger::Entry>, ApplyError> {
    let cfg = runner.cfg;
    let (id, phase) = (&cfg.identity, cfg.phase.as_str());
    let db = |e: tokio_postgres::Error| ApplyError::db(&e, None);
    let search_path = async {
        match &cfg.search_path {
            Some(schema) => {
                let sql = format!("SET search_path TO \"{}\"", schema.replace('"', "\"\""));
                client.batch_execute(&sql).await
            }
            None => Ok(()),
        }
    };
    let required = async {
        match cfg.require_expand {
            true => require_expand(client, id).await,
            false => Ok(()),
        }
    };
    let (set, required, entry) =
        futures::future::join3(search_path, required, ledger::get(client, id, phase)).await;
    set.map_err(db)?;
    required?;
    match entry {
        Ok(entry) => return Ok(entry),
        Err(e) if !ledger::is_missing(&e) => return Err(db(e)),
        Err(_) => {}
    }
    runner.begin_setup(client).await?;
    ledger::ensure(client).await.map_err(db)?;
    let entry = ledger::get(client, id, phase).await.map_err(db)?;
    runner.end_setup(client).await?;
    Ok(entry)
}

/// Whether `cfg`'s phase is recorded applied in its database, for the same SQL and by this
/// object (a run would find nothing to do): a fleet contract's look at a tenant's expand, one
/// query on the connection its runs share (from `cfg.sessions`, or opened and left there for
/// the run that follows). False whenever it cannot tell: then the phase runs, with every
/// guarantee, and finds out itself.
async fn recorded_applied(cfg: &Config) -> bool {
    let Some(sessions) = &cfg.sessions else {
        return false;
    };
    let pair = match sessions.take() {
        Some(p) => p,
        None => match session::open(cfg, &Scrubber::for_urls(&cfg.secret_urls())).await {
            Ok((client, settings, version)) => sessions::Pair {
                client,
                guard: None,
                settings,
                version,
            },
            Err(_) => return false,
        },
    };
    let id = &cfg.identity;
    let entry = ledger::get(&pair.client, id, cfg.phase.as_str()).await;
    sessions.put(pair);
    matches!(entry, Ok(Some(e)) if e.applied
        && e.checksum == checksum(&cfg.sql)
        && (id.uid.is_empty() || e.uid == id.uid))
}

/// A run that ended cleanly gives its connections back for a fleet run's next tenant.
fn give_back(client: Client, runner: Runner<'_>) {
    if let Some(sessions) = &runner.cfg.sessions {
        let version = runner.server_version;
        let Runner {
            guard, settings, ..
        } = runner;
        sessions.put(sessions::Pair {
            client,
            guard,
            settings,
            version,
        });
    }
}

/// How long the advisory lock's transaction may sit idle while the statements of a step run:
/// each statement's `statement_timeout`, plus one more and the attempt's `lock_timeout` bound
/// (zero, no bound, when statements have no timeout). A frozen executor gives the lock up then.
fn guard_idle(cfg: &Config, statements: usize) -> Duration {
    if cfg.statement_timeout.is_zero() {
        return Duration::ZERO;
    }
    session::transaction_timeout(cfg.statement_timeout, statements)
        + session::idle_in_transaction_timeout(cfg.lock_timeout)
}

/// PHASEGATE_REQUIRE_EXPAND: this database's ledger must hold the applied expand of the same
/// migration (namespace, name, uid). Reads only; creates nothing.
async fn require_expand(client: &Client, id: &Identity) -> Result<(), ApplyError> {
    let db = |e: tokio_postgres::Error| ApplyError::db(&e, None);
    // Both at once: where there is no ledger the read fails, and is not looked at.
    let (has_ledger, entry) = futures::future::join(
        client.query_typed_one("SELECT to_regclass('phasegate.ledger') IS NOT NULL", &[]),
        ledger::get(client, id, Phase::Expand.as_str()),
    )
    .await;
    let has_ledger: bool = has_ledger.map_err(db)?.get(0);
    let entry = if has_ledger { entry.map_err(db)? } else { None };
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
            Some(last) if !own && !last.own && !s.new_transaction => last.range.end = i + 1,
            _ => out.push(Step {
                range: i..i + 1,
                own,
            }),
        }
    }
    out
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
    fn a_commit_marker_ends_the_transaction() {
        let st = sql::parse_phase(
            "ALTER TABLE a ADD x int; CREATE INDEX i ON a (x);\n-- phasegate:commit\nUPDATE a SET x = 1 WHERE x IS NULL; UPDATE a SET x = 2 WHERE x = 1",
        )
        .expect("parses");
        let ranges: Vec<Range<usize>> = steps(&st, 0, 150_000)
            .into_iter()
            .map(|s| s.range)
            .collect();
        assert_eq!(ranges, vec![0..2, 2..4]);
        // Resuming after the first transaction starts at the marker.
        let ranges: Vec<Range<usize>> = steps(&st, 2, 150_000)
            .into_iter()
            .map(|s| s.range)
            .collect();
        assert_eq!(ranges, vec![2..4]);
    }
}
