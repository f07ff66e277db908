//! Walking the waves, whatever runs on one tenant (a phase, or a backfill): the canaries one
//! at a time (one that fails halts the rest), then at most `maxConcurrent` tenants at once,
//! until more than `failureBudget` have failed or a stop is asked: then no further tenant
//! starts (those running finish) and the run is *halted*.

use std::future::Future;

use futures::stream::{FuturesUnordered, StreamExt};

use super::super::stop::Stop;
use super::waves::Waves;
use crate::api::{TenantFailure, TenantsSpec, TenantsStatus, MAX_TENANT_FAILURES};

/// Longest error of one tenant kept in the report.
const MAX_TENANT_ERROR: usize = 300;

/// What one tenant's run came to, as the waves count it.
pub(crate) enum Verdict {
    /// Applied (now or before).
    Done,
    /// Failed, with why (already scrubbed of secrets).
    Failed(String),
    /// Interrupted by a stop, not failed: it counts as not run, and runs again next attempt.
    Stopped,
}

/// Runs `run` on every tenant of `waves` by the fleet's rules; `add` takes each tenant's
/// result (for the caller's own sums) and says how it counts. Returns the counts.
pub(super) async fn walk<'a, R, Fut>(
    waves: &'a Waves,
    spec: &TenantsSpec,
    stop: &Stop,
    run: impl Fn(&'a str) -> Fut,
    mut add: impl FnMut(&str, R) -> Verdict,
) -> TenantsStatus
where
    Fut: Future<Output = R>,
{
    let mut status = TenantsStatus {
        total: (waves.canaries.len() + waves.rest.len()) as u32,
        ..TenantsStatus::default()
    };
    for tenant in &waves.canaries {
        if halted(&mut status, spec, stop) {
            break;
        }
        let verdict = add(tenant, run(tenant).await);
        count(&mut status, tenant, verdict);
        if status.failed > 0 && status.halted.is_none() {
            status.halted = Some(format!("canary tenant {tenant} failed"));
        }
    }
    let mut queue = waves.rest.iter();
    let mut running = FuturesUnordered::new();
    let limit = spec.max_concurrent.max(1) as usize;
    loop {
        while running.len() < limit && !halted(&mut status, spec, stop) {
            let Some(tenant) = queue.next() else { break };
            let one = run(tenant);
            running.push(async move { (tenant, one.await) });
        }
        let Some((tenant, result)) = running.next().await else {
            break;
        };
        let verdict = add(tenant, result);
        count(&mut status, tenant, verdict);
    }
    status.not_run = status.total - status.applied - status.failed;
    status
}

fn count(status: &mut TenantsStatus, tenant: &str, verdict: Verdict) {
    match verdict {
        Verdict::Done => status.applied += 1,
        Verdict::Stopped => {}
        Verdict::Failed(error) => {
            status.failed += 1;
            tracing::warn!(tenant, error = %error, "tenants: failed on this tenant");
            if status.failures.len() < MAX_TENANT_FAILURES {
                status.failures.push(TenantFailure {
                    tenant: tenant.to_string(),
                    error: crate::protocol::report::truncate(&error, MAX_TENANT_ERROR),
                });
            }
        }
    }
}

/// No further tenant starts: a canary failed, the budget is spent, or a stop was asked.
fn halted(status: &mut TenantsStatus, spec: &TenantsSpec, stop: &Stop) -> bool {
    if status.halted.is_none() {
        if status.failed > spec.failure_budget {
            status.halted = Some(format!(
                "{} failed, over the failure budget of {}",
                status.failed, spec.failure_budget
            ));
        } else if let Some(s) = stop.requested() {
            status.halted = Some(format!("stopped by {}", s.name()));
        }
    }
    status.halted.is_some()
}
