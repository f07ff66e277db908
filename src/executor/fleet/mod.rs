//! One phase on every tenant of a server (`spec.tenants`, docs/fleet.md): the tenants are
//! discovered from the server when the phase runs, canaries go first one at a time, then the
//! rest with at most `maxConcurrent` at once, until the failure budget is spent. Each tenant is
//! a complete single-database run ([`super::execute_one`]) with its own ledger row, so a retry
//! or a run after a SIGKILL skips what is applied and runs only the failed and unfinished.

mod discover;
mod target;
mod waves;

use std::time::{Duration, Instant};

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
    let waves = waves::plan(&tenants, &spec.canary).map_err(FleetError::MissingCanary)?;
    let mut base = cfg.clone();
    if let TenantKind::Schemas(_) = kind {
        // Once: a pooler passes the options startup parameter on for every tenant or for none.
        let plain = |t: &&String| target::plain_name(&kind, t);
        if let Some(t) = waves.canaries.iter().chain(&waves.rest).find(plain) {
            discover::check_search_path(cfg, t)
                .await
                .map_err(FleetError::Spec)?;
        }
        discover::ensure_ledger(&mut client, scrub).await?;
        base.sessions = Some(super::sessions::Sessions::default());
    }
    // Not held while the tenants run: each run has connections of its own.
    drop(client);
    let cfg = &base;
    tracing::info!(
        tenants = tenants.len(),
        canaries = waves.canaries.len(),
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
        if tally.status.failed > 0 && tally.status.halted.is_none() {
            tally.status.halted = Some(format!("canary tenant {tenant} failed"));
        }
    }
    let mut queue = waves.rest.iter();
    let mut running = FuturesUnordered::new();
    let limit = spec.max_concurrent.max(1) as usize;
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
    let mut expanded_late = false;
    if let (Phase::Contract, Some(expand_sql)) = (cfg.phase, &cfg.tenant_expand_sql) {
        let mut expand = one.clone();
        expand.phase = Phase::Expand;
        expand.sql = expand_sql.clone();
        expand.grant = None;
        expand.database_check = false;
        expand.require_expand = false;
        // Nearly every tenant has it: one ledger read then, not a whole run.
        let r = match super::recorded_applied(&expand).await {
            true => Report::new(Outcome::AlreadyApplied, Phase::Expand.as_str()),
            false => super::execute_one(&expand).await,
        };
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
}

impl Tally {
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
