//! One phase on every tenant of a server, or of several (`spec.tenants`, docs/fleet.md): the
//! tenants are discovered from every server when the phase runs, canaries go first one at a
//! time, then the rest with at most `maxConcurrent` at once on each server, until the failure
//! budget is spent. Each tenant is a complete single-database run ([`super::execute_one`])
//! with its own ledger row, so a retry or a run after a SIGKILL skips what is applied and runs
//! only the failed and unfinished. Discovery ([`servers`]) and the walk through the waves
//! ([`walk`]) are shared with the backfill on every tenant ([`backfill`]).

pub mod backfill;
mod discover;
mod late;
mod servers;
mod target;
mod tenant;
mod walk;
mod waves;

use std::time::{Duration, Instant};

use tracing::Instrument;

use super::backfill::PROGRESS_EVERY;
use super::connect::Scrubber;
use super::{Config, Outcome, Phase, Report, ReportError};
use crate::api::{TenantsSpec, TenantsStatus};
use tenant::Tenant;
use walk::{Counter, Verdict};

pub use target::TenantKind;

/// Why a fleet run could not start on its tenants.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    Spec(String),
    #[error("discovering tenants: {0}")]
    Discover(String),
    #[error("no tenant matches {0}")]
    NoTenants(String),
    #[error("canary tenant(s) not found: {0}")]
    MissingCanary(String),
    /// On one of several servers, named as status names it (never by its URL).
    #[error("{server}: {error}")]
    Server {
        server: String,
        error: Box<FleetError>,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Servers(Vec<FleetError>),
}

/// Runs `cfg`'s phase on every tenant of `spec` and reports across them.
pub async fn execute_fleet(cfg: &Config, spec: &TenantsSpec) -> Report {
    let started = Instant::now();
    let scrub = Scrubber::for_urls(&cfg.secret_urls());
    match run(cfg, spec, &scrub).await {
        Ok(tally) => tally.report(cfg, started.elapsed()),
        Err(e) => {
            let message = scrub.scrub(&e.to_string());
            tracing::error!(error = %message, "tenants: the phase did not start");
            Tally::default().failed_report(cfg, started.elapsed(), message)
        }
    }
}

async fn run(cfg: &Config, spec: &TenantsSpec, scrub: &Scrubber) -> Result<Tally, FleetError> {
    let servers::Planned {
        kind,
        mut servers,
        found,
        waves,
        total,
    } = servers::plan(cfg, spec, scrub).await?;
    servers::prepare(&mut servers, found, &kind, scrub).await?;
    // The grant is for the attempt: one renewal serves every tenant's COMMIT on every server.
    let grant = cfg
        .grant
        .clone()
        .map(|g| std::sync::Arc::new(super::grant::Grant::start(g)));
    for s in &mut servers {
        s.cfg.shared_grant = grant.clone();
    }
    tracing::info!(
        tenants = total,
        servers = servers.len(),
        canaries = waves.canaries.len(),
        waves = waves.rest.len(),
        max_concurrent = spec.max_concurrent,
        failure_budget = spec.failure_budget,
        "tenants: starting"
    );
    let mut tally = Tally {
        grant,
        ..Tally::default()
    };
    let (servers, kind) = (&servers, &kind);
    let run = |t: Tenant| async move { run_tenant(&servers[t.server].cfg, kind, &t).await };
    let status = walk::walk(waves, servers.len(), spec, &cfg.stop, run, &mut tally).await;
    tally.status = TenantsStatus {
        expanded_late: tally.status.expanded_late,
        ..status
    };
    Ok(tally)
}

/// What one tenant's run came to: its phase's report, and whether contract had to run
/// expand there first.
struct TenantRun {
    report: Report,
    expanded_late: bool,
}

/// One tenant, on its server's settings `cfg`, its logs in a span naming it.
async fn run_tenant(cfg: &Config, kind: &TenantKind, tenant: &Tenant) -> TenantRun {
    let span = tracing::info_span!("tenant", tenant = %tenant.label);
    run_one_tenant(cfg, kind, tenant).instrument(span).await
}

/// A complete single-database run; in contract, expand first where a tenant created since
/// expand (or on a server listed since) does not have it (already applied: a ledger read).
async fn run_one_tenant(cfg: &Config, kind: &TenantKind, tenant: &Tenant) -> TenantRun {
    let mut one = match target::config_for(cfg, kind, &tenant.name) {
        Ok(c) => c,
        Err(e) => {
            return TenantRun {
                report: Tally::default().failed_report(cfg, Duration::ZERO, e),
                expanded_late: false,
            }
        }
    };
    one.quiet = true;
    let mut expanded_late = false;
    if let (Phase::Contract, Some(expand_sql)) = (cfg.phase, &cfg.tenant_expand_sql) {
        match late::expand_first(&one, expand_sql, &tenant.label).await {
            Ok(late) => expanded_late = late,
            Err(report) => {
                return TenantRun {
                    report,
                    expanded_late: false,
                }
            }
        }
    }
    one.tenants = None;
    TenantRun {
        report: super::execute_one(&one).await,
        expanded_late,
    }
}

/// The counts so far, and the sums the fleet's report carries.
#[derive(Default)]
struct Tally {
    /// The attempt's commit grant (contract run by the operator): once superseded, a tenant
    /// that did not apply halts the run rather than failing.
    grant: Option<std::sync::Arc<super::grant::Grant>>,
    status: TenantsStatus,
    statements: usize,
    attempts: u32,
    lock_retries: u32,
    lock_wait_ms: u64,
    db_check_wait_ms: Option<u64>,
    db_check_warning: Option<String>,
    /// Tenants where this run applied the phase (not found applied).
    applied_now: u32,
    /// When the last progress line was printed.
    printed: Option<Instant>,
}

impl Counter<TenantRun> for Tally {
    fn add(&mut self, _tenant: &Tenant, run: TenantRun) -> Verdict {
        let r = run.report;
        self.statements += r.statements;
        self.attempts += r.attempts;
        self.lock_retries += r.lock_retries;
        self.lock_wait_ms += r.lock_wait_ms;
        self.db_check_wait_ms = self.db_check_wait_ms.max(r.db_check_wait_ms);
        if self.db_check_warning.is_none() {
            self.db_check_warning = r.db_check_warning.clone();
        }
        if run.expanded_late {
            self.status.expanded_late += 1;
        }
        if r.is_success() {
            self.applied_now += u32::from(r.outcome == Outcome::Applied);
            return Verdict::Done;
        }
        if r.stopped_by.is_some() {
            return Verdict::Stopped;
        }
        // Superseded, the tenant's own failure is that, and every later one's would be too.
        if let Some(why) = self.grant.as_ref().and_then(|g| g.superseded_why()) {
            return Verdict::Halt(format!("the operator stopped this attempt: {why}"));
        }
        Verdict::Failed(r.summary())
    }

    /// Prints the tenants so far on stderr, at most every [`PROGRESS_EVERY`] unless at the
    /// end of a wave.
    fn progress(&mut self, so_far: &TenantsStatus, wave_end: bool) {
        if !wave_end && self.printed.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.printed = Some(Instant::now());
        let mut so_far = so_far.clone();
        so_far.not_run = so_far.total - so_far.applied - so_far.failed;
        so_far.expanded_late = self.status.expanded_late;
        eprintln!("{}", crate::protocol::log::tenants_line(&so_far));
    }
}

impl Tally {
    fn report(mut self, cfg: &Config, elapsed: Duration) -> Report {
        let ok = self.status.failed == 0 && self.status.not_run == 0;
        let mut r = self.base(cfg, elapsed);
        r.outcome = match (ok, self.applied_now == 0) {
            (true, true) => Outcome::AlreadyApplied,
            (true, false) => Outcome::Applied,
            (false, _) => Outcome::Failed,
        };
        r.tenants = Some(std::mem::take(&mut self.status));
        if !ok {
            r.error = Some(ReportError {
                sqlstate: None,
                message: r.summary(),
                statement: None,
            });
        }
        tracing::info!(summary = %r.summary(), "tenants: done");
        r
    }

    fn failed_report(self, cfg: &Config, elapsed: Duration, message: String) -> Report {
        let mut r = self.base(cfg, elapsed);
        r.error = Some(ReportError {
            sqlstate: None,
            message,
            statement: None,
        });
        r
    }

    fn base(&self, cfg: &Config, elapsed: Duration) -> Report {
        Report {
            statements: self.statements,
            attempts: self.attempts,
            lock_retries: self.lock_retries,
            lock_wait_ms: self.lock_wait_ms,
            duration_ms: elapsed.as_millis() as u64,
            checksum: Some(crate::protocol::checksum::short(&super::checksum(&cfg.sql))),
            db_check_wait_ms: self.db_check_wait_ms,
            db_check_warning: self.db_check_warning.clone(),
            stopped_by: cfg.stop.requested().map(|s| s.name().to_string()),
            ..Report::new(Outcome::Failed, cfg.phase.as_str())
        }
    }
}
