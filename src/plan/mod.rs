//! `phasegate plan`: what a migration will do to production, for a pull request.
//!
//! Loads the schema into a database of its own (a throwaway server it starts, or a scratch
//! copy of the `--url` database), then runs each phase — expand, the backfill's batch SQL,
//! contract — transaction by transaction: observed and rolled back, then committed so the next
//! phase sees the schema it builds on. Per statement it reports the locks taken (from
//! `pg_locks`, read by a second session while the transaction is open), table rewrites
//! (`relfilenode` changed), index builds, lint findings, and, with production's table sizes,
//! an estimate of the duration. With a kubeconfig, which workloads will gate contract.
//!
//! `… CONCURRENTLY` statements cannot run in a transaction block: they are linted and run
//! (so later statements find their index), but no lock is sampled for them.

pub mod cli;
mod db;
pub mod input;
pub mod observe;
mod render;
pub mod server;
pub mod stats;
pub mod targets;

use std::path::PathBuf;

pub use db::SchemaLoad;
pub use input::PhaseKind;
pub use render::markdown;

use input::{MigrationInput, PhaseBody, PhaseInput};
use observe::{Observed, Outcome, Sessions, Step};
use stats::{Estimate, Stats, Work};

use crate::executor::stop::Stop;
use crate::lint;
use crate::sql::LockMode;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{file}: {message}")]
    Input { file: String, message: String },
    #[error("cannot start a throwaway PostgreSQL: {0}")]
    Server(String),
    #[error("database: {0}")]
    Database(String),
    #[error("loading the schema from {file}: {message}")]
    Schema { file: String, message: String },
    #[error("Kubernetes: {0}")]
    Kube(String),
    #[error("interrupted")]
    Interrupted,
}

/// What to plan, from the command line.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// DatabaseMigration YAML files or SQL files, planned in order, each on top of the last.
    pub migrations: Vec<PathBuf>,
    /// The phase plain SQL files are judged as.
    pub sql_phase: Option<PhaseKind>,
    /// Loaded first, in order: SQL (`pg_dump --schema-only`) or earlier migrations' YAML.
    pub schema: Vec<PathBuf>,
    /// Plan on a scratch copy of this database instead of a throwaway server.
    pub url: Option<String>,
    pub pg_bindir: Option<PathBuf>,
    pub stats: Option<PathBuf>,
    pub bytes_per_second: f64,
    pub backfill_rows_per_second: f64,
    pub kube: Option<targets::KubeArgs>,
}

/// The whole report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    /// Where it ran, e.g. `a throwaway server (/usr/lib/postgresql/15/bin)`.
    pub database: String,
    pub server_version: String,
    pub schema: SchemaLoad,
    /// The `--stats` file, when given.
    pub stats: Option<String>,
    pub migrations: Vec<MigrationPlan>,
}

impl Plan {
    /// Whether a reviewer must act: a statement failed, lint refused one, or a phase's SQL
    /// does not parse.
    pub fn has_problems(&self) -> bool {
        self.migrations.iter().flat_map(|m| &m.phases).any(|p| {
            p.error.is_some()
                || p.statements
                    .iter()
                    .any(|s| s.error.is_some() || s.findings.iter().any(|f| f.verdict == "refused"))
        })
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationPlan {
    pub name: String,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
    pub phases: Vec<PhasePlan>,
    /// With a kubeconfig: the workloads that gate contract.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<targets::TargetPlan>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PhasePlan {
    pub phase: PhaseKind,
    /// Why nothing was run (a Job phase, SQL that does not parse, an earlier phase failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub statements: Vec<StatementPlan>,
    /// Transactions of more than one statement: the strongest lock each holds per relation
    /// until it commits (the executor runs them as one transaction).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<Hold>,
    /// Sum of the statements' estimates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<Estimate>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StatementPlan {
    /// 1-based, within the phase.
    pub index: usize,
    /// 1-based line in the phase's SQL.
    pub line: usize,
    pub sql: String,
    /// 1-based transaction of the phase the statement runs in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction: Option<usize>,
    /// `false` for statements that run outside a transaction block or were not run.
    pub sampled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(flatten)]
    pub observed: Observed,
    /// What the locks on relations other sessions see block: `reads and writes`, `writes`
    /// or nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<String>,
    pub findings: Vec<PlanFinding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<Estimate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A lock a transaction of the phase holds until it commits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hold {
    pub transaction: usize,
    pub relation: String,
    /// The strongest mode taken on it, as `pg_locks.mode` spells it.
    pub mode: String,
    /// The statements of the transaction that run while it is held (from the first that
    /// takes it to the last).
    pub statements: Vec<usize>,
}

/// A lint finding with its verdict for the phase (`refused`, `warning`, `overridden`,
/// `accepted`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanFinding {
    pub verdict: &'static str,
    pub rule: &'static str,
    pub class: lint::Class,
    pub message: String,
    pub fix: String,
}

/// Plans everything in `req`. Inputs are read before any server starts; the database is
/// cleaned up on success, error and Ctrl-C (SIGINT/SIGTERM) alike.
pub async fn plan(req: &Request) -> Result<Plan, PlanError> {
    let sql_phase = req.sql_phase.unwrap_or(PhaseKind::Expand);
    let mut migrations = Vec::new();
    for path in &req.migrations {
        migrations.extend(input::read_migrations(path, sql_phase)?);
    }
    let mut schema = Vec::new();
    for path in &req.schema {
        let file = path.display().to_string();
        schema.extend(
            input::read_schema(path)?
                .into_iter()
                .map(|s| (file.clone(), s)),
        );
    }
    let stats = match &req.stats {
        Some(p) => Some(Stats::read(
            p,
            req.bytes_per_second,
            req.backfill_rows_per_second,
        )?),
        None => None,
    };
    // Listening from here: a signal while the server starts is held until it has, and then
    // stops the plan like one later (its default action would end the process and leave the
    // server running).
    let stop = Stop::new();
    stop.on_signals()
        .map_err(|e| PlanError::Server(format!("listening for SIGINT/SIGTERM: {e}")))?;
    let env = match &req.url {
        Some(url) => db::Env::scratch(url, req.schema.is_empty()).await?,
        None => {
            let bindir = req.pg_bindir.clone();
            tokio::task::spawn_blocking(move || db::Env::throwaway(bindir.as_deref()))
                .await
                .map_err(|e| PlanError::Server(e.to_string()))??
        }
    };
    let work = async {
        let mut plan = run_all(&env, &schema, &migrations, stats.as_ref()).await?;
        plan.stats = req.stats.as_ref().map(|p| p.display().to_string());
        if let Some(kube) = &req.kube {
            targets::attach(kube, &migrations, &mut plan.migrations).await?;
        }
        Ok(plan)
    };
    let result = tokio::select! {
        biased;
        _ = stop.wait() => Err(PlanError::Interrupted),
        r = work => r,
    };
    let cleaned = env.cleanup().await;
    let plan = result?;
    cleaned?;
    Ok(plan)
}

async fn run_all(
    env: &db::Env,
    schema: &[(String, String)],
    migrations: &[MigrationInput],
    stats: Option<&Stats>,
) -> Result<Plan, PlanError> {
    let schema = db::load_schema(env, schema).await?;
    let runner = env.connect().await?;
    let observer = env.connect().await?;
    let dberr = |e: tokio_postgres::Error| PlanError::Database(env.scrub(&e.to_string()));
    let row = runner
        .query_one("SELECT pg_backend_pid(), current_setting('server_version'), current_setting('server_version_num')::int", &[])
        .await
        .map_err(dberr)?;
    let sessions = Sessions {
        runner: &runner,
        runner_pid: row.get(0),
        observer: &observer,
    };
    let version_num: i32 = row.get(2);
    let mut out = Vec::new();
    for m in migrations {
        let mut phases = Vec::new();
        let mut failed: Option<PhaseKind> = None;
        for p in &m.phases {
            let planned = match failed {
                Some(k) => not_run(p.kind, format!("not run: {} failed", k.as_str())),
                None => plan_phase(&sessions, m, p, version_num, stats)
                    .await
                    .map_err(dberr)?,
            };
            if failed.is_none() && planned_failed(&planned) {
                failed = Some(p.kind);
            }
            phases.push(planned);
        }
        out.push(MigrationPlan {
            name: m.name.clone(),
            file: m.file.clone(),
            app_version: m.app_version.clone(),
            phases,
            targets: None,
        });
    }
    Ok(Plan {
        database: env.source.clone(),
        server_version: row.get(1),
        schema,
        stats: None,
        migrations: out,
    })
}

fn planned_failed(p: &PhasePlan) -> bool {
    p.error.is_some() || p.statements.iter().any(|s| s.error.is_some())
}

fn not_run(phase: PhaseKind, why: String) -> PhasePlan {
    PhasePlan {
        phase,
        error: None,
        note: Some(why),
        statements: Vec::new(),
        holds: Vec::new(),
        estimate: None,
    }
}

async fn plan_phase(
    s: &Sessions<'_>,
    m: &MigrationInput,
    p: &PhaseInput,
    version_num: i32,
    stats: Option<&Stats>,
) -> Result<PhasePlan, tokio_postgres::Error> {
    let (sql, steps, statements) = match phase_steps(&p.body, version_num) {
        Ok(parts) => parts,
        Err(Unplanned::Job) => {
            return Ok(not_run(
                p.kind,
                "runs a Job of its own: Phasegate cannot see its SQL, nothing planned".into(),
            ))
        }
        Err(Unplanned::Invalid(e)) => {
            let mut plan = not_run(p.kind, String::new());
            plan.note = None;
            plan.error = Some(format!("the SQL cannot be run: {e}"));
            return Ok(plan);
        }
    };
    let outcomes = observe::run_phase(s, &steps).await?;
    let findings = phase_findings(&sql, p.kind, m);
    let mut planned = Vec::new();
    let mut from = 0;
    for (i, (step, outcome)) in steps.iter().zip(outcomes).enumerate() {
        let (line, next) = line_of(&sql, &step.sql, from);
        from = next;
        let mut sp = statement_plan(i + 1, line, step, outcome, findings.get(&(i + 1)));
        if let PhaseBody::Backfill(b) = &p.body {
            sp.sql = shorten(&b.sql, 200);
        }
        sp.estimate = stats.and_then(|st| estimate(st, p.kind, &sp, statements.get(i), &p.body));
        planned.push(sp);
    }
    Ok(PhasePlan {
        phase: p.kind,
        holds: holds(&planned),
        error: None,
        note: match &p.body {
            PhaseBody::Backfill(b) => Some(format!(
                "one batch of the backfill of {} run with NULL key bounds (no row changes): the locks every batch takes, each in its own short transaction",
                b.table
            )),
            _ => None,
        },
        estimate: sum_estimates(&planned),
        statements: planned,
    })
}

enum Unplanned {
    Job,
    Invalid(crate::sql::SqlError),
}

/// The phase's SQL, the steps to run and the parsed statements (none for a backfill).
fn phase_steps(
    body: &PhaseBody,
    version_num: i32,
) -> Result<(String, Vec<Step>, Vec<crate::sql::Statement>), Unplanned> {
    match body {
        PhaseBody::Job => Err(Unplanned::Job),
        PhaseBody::Backfill(b) => Ok(backfill_steps(b)),
        PhaseBody::Sql(sql) => {
            let statements = crate::sql::parse_phase(sql).map_err(Unplanned::Invalid)?;
            let steps = statements
                .iter()
                .map(|st| Step {
                    sql: st.sql.clone(),
                    own_transaction: st.tx.needs_own_transaction(version_num),
                    new_transaction: st.new_transaction,
                })
                .collect();
            Ok((sql.clone(), steps, statements))
        }
    }
}

/// A backfill batch, prepared and executed with NULL bounds: it touches no row but takes
/// the locks every batch takes.
fn backfill_steps(b: &crate::api::BackfillSpec) -> (String, Vec<Step>, Vec<crate::sql::Statement>) {
    let sql = format!(
        "PREPARE phasegate_plan_batch AS {};\nEXECUTE phasegate_plan_batch(NULL, NULL);\nDEALLOCATE phasegate_plan_batch",
        b.sql.trim().trim_end_matches(';')
    );
    let step = Step {
        sql,
        own_transaction: false,
        new_transaction: false,
    };
    (b.sql.clone(), vec![step], Vec::new())
}

/// Lint findings by statement index, judged for the phase with the migration's policy.
fn phase_findings(
    sql: &str,
    kind: PhaseKind,
    m: &MigrationInput,
) -> std::collections::HashMap<usize, Vec<PlanFinding>> {
    let mut out: std::collections::HashMap<usize, Vec<PlanFinding>> = Default::default();
    if kind == PhaseKind::Backfill {
        return out;
    }
    let Ok(report) = lint::lint_report(sql) else {
        return out;
    };
    let v = lint::judge(&report.findings, kind.lint_phase(), &m.policy);
    let labelled = [
        ("refused", &v.refused),
        ("warning", &v.warnings),
        ("overridden", &v.overridden),
        ("accepted", &v.accepted),
    ];
    for (verdict, list) in labelled {
        for f in list {
            out.entry(f.statement).or_default().push(PlanFinding {
                verdict,
                rule: f.rule,
                class: f.class,
                message: f.message.clone(),
                fix: f.fix.clone(),
            });
        }
    }
    out
}

fn statement_plan(
    index: usize,
    line: usize,
    step: &Step,
    outcome: Outcome,
    findings: Option<&Vec<PlanFinding>>,
) -> StatementPlan {
    let mut sp = StatementPlan {
        index,
        line,
        sql: shorten(&step.sql, 200),
        transaction: None,
        sampled: false,
        note: None,
        observed: Observed::default(),
        blocks: None,
        findings: findings.cloned().unwrap_or_default(),
        estimate: None,
        error: None,
    };
    match outcome {
        Outcome::Observed { transaction, seen } => {
            sp.transaction = Some(transaction);
            sp.sampled = true;
            sp.blocks = blocks(&seen);
            sp.observed = seen;
        }
        Outcome::RanAlone { transaction } => {
            sp.transaction = Some(transaction);
            sp.note = Some("runs outside a transaction block (CONCURRENTLY): no locks sampled; it takes SHARE UPDATE EXCLUSIVE on its table, which blocks neither reads nor writes, and waits for older transactions".into());
        }
        Outcome::Failed { transaction, error } => {
            sp.transaction = Some(transaction);
            sp.error = Some(error);
        }
        Outcome::Skipped => sp.note = Some("not run: an earlier statement failed".into()),
    }
    sp
}

/// The strongest lock per relation of each transaction with more than one statement.
fn holds(statements: &[StatementPlan]) -> Vec<Hold> {
    let mut out: Vec<Hold> = Vec::new();
    for st in statements.iter().filter(|s| s.sampled) {
        let Some(t) = st.transaction else { continue };
        if statements
            .iter()
            .filter(|o| o.transaction == Some(t))
            .count()
            < 2
        {
            continue;
        }
        let last = statements
            .iter()
            .filter(|o| o.transaction == Some(t))
            .map(|o| o.index)
            .max()
            .unwrap_or(st.index);
        for l in st.observed.locks.iter().filter(|l| !l.new_relation) {
            let strength = |m: &str| LockMode::from_pg(m);
            match out
                .iter_mut()
                .find(|h| h.transaction == t && h.relation == l.relation)
            {
                Some(h) => {
                    if strength(&l.mode) > strength(&h.mode) {
                        h.mode = l.mode.clone();
                    }
                }
                None => out.push(Hold {
                    transaction: t,
                    relation: l.relation.clone(),
                    mode: l.mode.clone(),
                    statements: (st.index..=last).collect(),
                }),
            }
        }
    }
    out
}

/// What the statement's locks on relations other sessions can see block.
fn blocks(seen: &Observed) -> Option<String> {
    let modes: Vec<LockMode> = seen
        .locks
        .iter()
        .filter(|l| !l.new_relation)
        .filter_map(|l| LockMode::from_pg(&l.mode))
        .collect();
    if modes
        .iter()
        .any(|m| m.conflicts_with(LockMode::AccessShare))
    {
        Some("reads and writes".into())
    } else if modes
        .iter()
        .any(|m| m.conflicts_with(LockMode::RowExclusive))
    {
        Some("writes".into())
    } else {
        None
    }
}

/// The duration a statement may take in production, from what it was seen doing.
fn estimate(
    st: &Stats,
    kind: PhaseKind,
    sp: &StatementPlan,
    statement: Option<&crate::sql::Statement>,
    body: &PhaseBody,
) -> Option<Estimate> {
    let mut parts: Vec<Estimate> = Vec::new();
    if let (PhaseKind::Backfill, PhaseBody::Backfill(b)) = (kind, body) {
        parts.extend(st.estimate(Work::Backfill, &qualify(&b.table)));
    }
    for t in &sp.observed.rewrites {
        parts.extend(st.estimate(Work::Rewrite, t));
    }
    for ix in sp.observed.index_builds.iter().filter(|i| !i.rebuilt) {
        if let Some(t) = &ix.table {
            parts.extend(st.estimate(Work::IndexBuild, t));
        }
    }
    if let Some(ci) = statement.and_then(|s| s.concurrent_index.as_ref()) {
        parts.extend(st.estimate(Work::IndexBuild, &qualify(&ci.table.to_string())));
    }
    let scans = sp
        .findings
        .iter()
        .any(|f| matches!(f.rule, "add-constraint-without-not-valid" | "set-not-null"));
    if scans && sp.observed.rewrites.is_empty() {
        for t in statement.map(|s| s.tables.as_slice()).unwrap_or(&[]) {
            parts.extend(st.estimate(Work::Scan, &qualify(&t.to_string())));
        }
    }
    combine(parts)
}

fn sum_estimates(statements: &[StatementPlan]) -> Option<Estimate> {
    let parts: Vec<Estimate> = statements
        .iter()
        .filter_map(|s| s.estimate.clone())
        .collect();
    let seconds = parts.iter().map(|e| e.seconds).sum();
    (!parts.is_empty()).then(|| Estimate {
        seconds,
        basis: format!("sum of {} statement estimate(s)", parts.len()),
    })
}

fn combine(parts: Vec<Estimate>) -> Option<Estimate> {
    if parts.is_empty() {
        return None;
    }
    Some(Estimate {
        seconds: parts.iter().map(|e| e.seconds).sum(),
        basis: parts
            .iter()
            .map(|e| e.basis.as_str())
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// `users` → `public.users` (names as the stats file has them).
fn qualify(table: &str) -> String {
    if table.contains('.') {
        table.to_string()
    } else {
        format!("public.{table}")
    }
}

/// The 1-based line where `stmt` starts in `sql` (searching from byte `from`), and where to
/// search for the next one.
fn line_of(sql: &str, stmt: &str, from: usize) -> (usize, usize) {
    let from = from.min(sql.len());
    match sql.get(from..).and_then(|rest| rest.find(stmt)) {
        Some(pos) => {
            let at = from + pos;
            (sql[..at].matches('\n').count() + 1, at + stmt.len())
        }
        None => (1, from),
    }
}

/// Whitespace collapsed, at most `max` characters.
pub(crate) fn shorten(sql: &str, max: usize) -> String {
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut s: String = one_line.chars().take(max).collect();
    s.push('…');
    s
}
