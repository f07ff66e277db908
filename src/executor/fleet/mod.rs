//! One phase on every tenant of a server (`spec.tenants`, docs/fleet.md): the tenants are
//! discovered from the server when the phase runs, canaries go first one at a time, then the
//! rest with at most `maxConcurrent` at once, until the failure budget is spent. Each tenant is
//! a complete single-database run ([`super::execute_one`]) with its own ledger row, so a retry
//! or a run after a SIGKILL skips what is applied and runs only the failed and unfinished.

mod discover;
mod target;
mod waves;

use std::time::{Duration, Instant};

/// How often a fleet prints its tenants so far (the operator reads the newest line).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

use futures::stream::{FuturesUnordered, StreamExt};

use super::connect::Scrubber;
use super::{Config, Outcome, Phase, Report, ReportError};
use crate::api::{TenantFailure, TenantsSpec, TenantsStatus, MAX_TENANT_FAILURES};

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
}

/// Runs `cfg`'s phase on every tenant of `spec` and reports across them.
pub async fn execute_fleet(cfg: &Config, spec: &TenantsSpec) -> Report {
    let started = Instant::now();
    let scrub = Scrubber::for_url(&cfg.database_url.0);
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
    let mut client = discover::connect(cfg, scrub).await?;
    let tenants = discover::tenants(&client, &kind, scrub).await?;
    if tenants.is_empty() {
        return Err(FleetError::NoTenants(kind.describe()));
    }
    let waves = waves::plan(&tenants, &spec.canary, &spec.waves).map_err(|e| match e {
        waves::PlanError::MissingCanary(names) => FleetError::MissingCanary(names),
        waves::PlanError::Spec(why) => FleetError::Spec(why),
    })?;
    let mut base = cfg.clone();
    if let TenantKind::Schemas(_) = kind {
        // Once: a pooler passes the options startup parameter on for every tenant or for none.
        let plain = |t: &&String| target::plain_name(&kind, t);
        if let Some(t) = waves.all().find(plain) {
            discover::check_search_path(cfg, t)
                .await
                .map_err(FleetError::Spec)?;
        }
        discover::ensure_ledger(&mut client, scrub).await?;
        base.sessions = Some(super::sessions::Sessions::default());
    }
    // Not held while the tenants run: each run has connections of its own.
    drop(client);
    // The grant is for the attempt: one renewal serves every tenant's COMMIT.
    base.shared_grant = cfg
        .grant
        .clone()
        .map(|g| std::sync::Arc::new(super::grant::Grant::start(g)));
    let cfg = &base;
    tracing::info!(
        tenants = tenants.len(),
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
        let done = run_tenant(cfg, &kind, tenant).await;
        tally.add(tenant, done);
        tally.progress(false);
        if tally.status.failed > 0 && tally.status.halted.is_none() {
            tally.status.halted = Some(format!("canary tenant {tenant} failed"));
        }
    }
    let limit = spec.max_concurrent.max(1) as usize;
    for (i, wave) in waves.rest.iter().enumerate() {
        if tally.halted(cfg, spec) {
            break;
        }
        if waves.rest.len() > 1 {
            tracing::info!(wave = i + 1, tenants = wave.len(), "tenants: wave starting");
        }
        // Every tenant of a wave finishes before the next wave starts.
        let mut queue = wave.iter();
        let mut running = FuturesUnordered::new();
        loop {
            while running.len() < limit && !tally.halted(cfg, spec) {
                let Some(tenant) = queue.next() else { break };
                let kind = &kind;
                running.push(async move { (tenant, run_tenant(cfg, kind, tenant).await) });
            }
            let Some((tenant, done)) = running.next().await else {
                break;
            };
            tally.add(tenant, done);
            tally.progress(false);
        }
        tally.progress(true);
    }
    tally.status.not_run = tally.status.total - tally.status.applied - tally.status.failed;
    Ok(tally)
}

/// What one tenant's run came to: its phase's report, and whether contract had to run
/// expand there first.
struct TenantRun {
    report: Report,
    expanded_late: bool,
}

/// One tenant: a complete single-database run; in contract, expand first where a tenant
/// created since expand does not have it (already applied elsewhere: a ledger read, no SQL).
async fn run_tenant(cfg: &Config, kind: &TenantKind, tenant: &str) -> TenantRun {
    let mut one = match target::config_for(cfg, kind, tenant) {
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
                tenant,
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
