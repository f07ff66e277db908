//! One phase on every tenant of a server, or of several (`spec.tenants`, docs/fleet.md): the
//! tenants are discovered from every server when the phase runs, canaries go first one at a
//! time, then the rest with at most `maxConcurrent` at once on each server, until the failure
//! budget is spent. Each tenant is a complete single-database run ([`super::execute_one`])
//! with its own ledger row, so a retry or a run after a SIGKILL skips what is applied and runs
//! only the failed and unfinished.

mod discover;
mod servers;
mod target;
mod tenant;
mod waves;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often a fleet prints its tenants so far (the operator reads the newest line).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

use futures::stream::{FuturesUnordered, StreamExt};
use tracing::Instrument;

use super::connect::Scrubber;
use super::{Config, Outcome, Phase, Report, ReportError};
use crate::api::{TenantFailure, TenantsSpec, TenantsStatus, MAX_TENANT_FAILURES};
use servers::Server;
use tenant::Tenant;

pub use target::TenantKind;

/// Longest error of one tenant kept in the report.
const MAX_TENANT_ERROR: usize = 300;

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
    let kind = TenantKind::of(spec).map_err(FleetError::Spec)?;
    let mut servers = servers::of(cfg, spec)?;
    // Every server before any tenant runs: one that cannot be read fails the phase now.
    let found = servers::discover(&servers, &kind, scrub).await?;
    let tenants = waves::interleave(found.iter().map(|f| f.tenants.clone()).collect());
    if tenants.is_empty() {
        return Err(FleetError::NoTenants(kind.describe()));
    }
    let waves = waves::plan(&tenants, &spec.canary, &spec.waves).map_err(|e| match e {
        waves::PlanError::MissingCanary(names) => FleetError::MissingCanary(names),
        waves::PlanError::Spec(why) => FleetError::Spec(why),
    })?;
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
        tenants = tenants.len(),
        servers = servers.len(),
        canaries = waves.canaries.len(),
        waves = waves.rest.len(),
        max_concurrent = spec.max_concurrent,
        failure_budget = spec.failure_budget,
        "tenants: starting"
    );
    let mut tally = Tally {
        status: TenantsStatus {
            total: tenants.len() as u32,
            ..TenantsStatus::default()
        },
        ..Tally::default()
    };
    for tenant in &waves.canaries {
        if tally.halted(cfg, spec) {
            break;
        }
        let done = run_tenant(&servers[tenant.server].cfg, &kind, tenant).await;
        tally.add(&tenant.label, done);
        tally.progress(false);
        if tally.status.failed > 0 && tally.status.halted.is_none() {
            tally.status.halted = Some(format!("canary tenant {} failed", tenant.label));
        }
    }
    let count = waves.rest.len();
    for (i, wave) in waves.rest.into_iter().enumerate() {
        if tally.halted(cfg, spec) {
            break;
        }
        if count > 1 {
            tracing::info!(wave = i + 1, tenants = wave.len(), "tenants: wave starting");
        }
        run_wave(cfg, spec, &servers, &kind, wave, &mut tally).await;
        tally.progress(true);
    }
    tally.status.not_run = tally.status.total - tally.status.applied - tally.status.failed;
    Ok(tally)
}

/// One wave's tenants, all finished before it returns: on each server at most
/// `maxConcurrent` at once, servers side by side, until the run is halted.
async fn run_wave(
    cfg: &Config,
    spec: &TenantsSpec,
    servers: &[Server],
    kind: &TenantKind,
    wave: Vec<Tenant>,
    tally: &mut Tally,
) {
    let mut queues: Vec<VecDeque<Tenant>> = servers.iter().map(|_| VecDeque::new()).collect();
    for t in wave {
        queues[t.server].push_back(t);
    }
    let mut running_on = vec![0usize; servers.len()];
    let mut running = FuturesUnordered::new();
    let limit = spec.max_concurrent.max(1) as usize;
    loop {
        if !tally.halted(cfg, spec) {
            for (i, queue) in queues.iter_mut().enumerate() {
                while running_on[i] < limit {
                    let Some(tenant) = queue.pop_front() else {
                        break;
                    };
                    running_on[i] += 1;
                    let server = &servers[i].cfg;
                    running.push(async move {
                        let done = run_tenant(server, kind, &tenant).await;
                        (tenant, done)
                    });
                }
            }
        }
        let Some((tenant, done)) = running.next().await else {
            break;
        };
        running_on[tenant.server] -= 1;
        tally.add(&tenant.label, done);
        tally.progress(false);
    }
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
        let mut expand = one.clone();
        expand.phase = Phase::Expand;
        expand.sql = expand_sql.clone();
        expand.grant = None;
        expand.shared_grant = None;
        expand.database_check = false;
        expand.require_expand = false;
        let r = super::execute_one(&expand).await;
        if !r.is_success() {
            return TenantRun {
                report: r,
                expanded_late: false,
            };
        }
        expanded_late = r.outcome == Outcome::Applied;
        if expanded_late {
            tracing::info!(
                tenant = %tenant.label,
                "tenants: created since expand; expand applied there first"
            );
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

impl Tally {
    /// Prints the tenants so far on stderr, at most every [`PROGRESS_EVERY`] unless `now`.
    fn progress(&mut self, now: bool) {
        if !now && self.printed.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.printed = Some(Instant::now());
        let mut so_far = self.status.clone();
        so_far.not_run = so_far.total - so_far.applied - so_far.failed;
        eprintln!("{}", crate::protocol::log::tenants_line(&so_far));
    }

    fn add(&mut self, tenant: &str, run: TenantRun) {
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
            self.status.applied += 1;
            self.applied_now += u32::from(r.outcome == Outcome::Applied);
            return;
        }
        if r.stopped_by.is_some() {
            // Interrupted, not failed: it counts as not run, and runs again next attempt.
            return;
        }
        self.status.failed += 1;
        let error = r.summary();
        tracing::warn!(tenant, error = %error, "tenants: failed on this tenant");
        if self.status.failures.len() < MAX_TENANT_FAILURES {
            self.status.failures.push(TenantFailure {
                tenant: tenant.to_string(),
                error: crate::protocol::report::truncate(&error, MAX_TENANT_ERROR),
            });
        }
    }

    /// No further tenant starts: a canary failed, the budget is spent, or a stop was asked.
    fn halted(&mut self, cfg: &Config, spec: &TenantsSpec) -> bool {
        if self.status.halted.is_none() {
            if self.status.failed > spec.failure_budget {
                self.status.halted = Some(format!(
                    "{} failed, over the failure budget of {}",
                    self.status.failed, spec.failure_budget
                ));
            } else if let Some(s) = cfg.stop.requested() {
                self.status.halted = Some(format!("stopped by {}", s.name()));
            }
        }
        self.status.halted.is_some()
    }

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
