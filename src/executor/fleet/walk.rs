//! Walking the waves, whatever runs on one tenant (a phase, or a backfill): the canaries one
//! at a time (one that fails halts the rest), then wave by wave with at most `maxConcurrent`
//! tenants at once on each server, every tenant of a wave finished before the next starts,
//! until more than `failureBudget` have failed or a stop is asked: then no further tenant
//! starts (those running finish) and the run is *halted*.

use std::collections::VecDeque;
use std::future::Future;

use futures::stream::{FuturesUnordered, StreamExt};

use super::super::stop::Stop;
use super::tenant::Tenant;
use super::waves::Waves;
use crate::api::{TenantFailure, TenantsSpec, TenantsStatus, MAX_TENANT_FAILURES};

/// Longest error of one tenant kept in the report.
const MAX_TENANT_ERROR: usize = 300;

/// What one tenant's run came to, as the waves count it.
pub(super) enum Verdict {
    /// Applied (now or before).
    Done,
    /// Failed, with why (already scrubbed of secrets).
    Failed(String),
    /// Interrupted by a stop, not failed: it counts as not run, and runs again next attempt.
    Stopped,
    /// Not run, and no further tenant may start, with why: the operator superseded the
    /// attempt. Counts as not run; the run is halted.
    Halt(String),
}

/// What the caller keeps of the tenants' runs besides the counts.
pub(super) trait Counter<R> {
    /// Takes one tenant's result into the caller's sums; says how it counts.
    fn add(&mut self, tenant: &Tenant, run: R) -> Verdict;
    /// The tenants so far, after each tenant and (`wave_end`) at the end of each wave.
    fn progress(&mut self, so_far: &TenantsStatus, wave_end: bool);
}

/// Runs `run` on every tenant of `waves` (on `servers` servers) by the fleet's rules; returns
/// the counts.
pub(super) async fn walk<R, Fut>(
    waves: Waves,
    servers: usize,
    spec: &TenantsSpec,
    stop: &Stop,
    run: impl Fn(Tenant) -> Fut,
    counter: &mut impl Counter<R>,
) -> TenantsStatus
where
    Fut: Future<Output = R>,
{
    let total = waves.canaries.len() + waves.rest.iter().map(Vec::len).sum::<usize>();
    let mut status = TenantsStatus {
        total: total as u32,
        ..TenantsStatus::default()
    };
    for tenant in waves.canaries {
        if halted(&mut status, spec, stop) {
            break;
        }
        let result = run(tenant.clone()).await;
        let verdict = counter.add(&tenant, result);
        count(&mut status, &tenant.label, verdict);
        counter.progress(&status, false);
        if status.failed > 0 && status.halted.is_none() {
            status.halted = Some(format!("canary tenant {} failed", tenant.label));
        }
    }
    let count_waves = waves.rest.len();
    for (i, wave) in waves.rest.into_iter().enumerate() {
        if halted(&mut status, spec, stop) {
            break;
        }
        if count_waves > 1 {
            tracing::info!(wave = i + 1, tenants = wave.len(), "tenants: wave starting");
        }
        let each = Each {
            servers,
            spec,
            stop,
        };
        run_wave(&each, wave, &run, counter, &mut status).await;
        counter.progress(&status, true);
    }
    status.not_run = status.total - status.applied - status.failed;
    status
}

/// What every wave of a walk shares.
struct Each<'a> {
    servers: usize,
    spec: &'a TenantsSpec,
    stop: &'a Stop,
}

/// One wave's tenants, all finished before it returns: on each server at most
/// `maxConcurrent` at once, servers side by side, until the run is halted.
async fn run_wave<R, Fut>(
    each: &Each<'_>,
    wave: Vec<Tenant>,
    run: &impl Fn(Tenant) -> Fut,
    counter: &mut impl Counter<R>,
    status: &mut TenantsStatus,
) where
    Fut: Future<Output = R>,
{
    let mut queues: Vec<VecDeque<Tenant>> = (0..each.servers).map(|_| VecDeque::new()).collect();
    for t in wave {
        queues[t.server].push_back(t);
    }
    let mut running_on = vec![0usize; each.servers];
    let mut running = FuturesUnordered::new();
    let limit = each.spec.max_concurrent.max(1) as usize;
    loop {
        if !halted(status, each.spec, each.stop) {
            for (i, queue) in queues.iter_mut().enumerate() {
                while running_on[i] < limit {
                    let Some(tenant) = queue.pop_front() else {
                        break;
                    };
                    running_on[i] += 1;
                    let one = run(tenant.clone());
                    running.push(async move { (tenant, one.await) });
                }
            }
        }
        let Some((tenant, result)) = running.next().await else {
            break;
        };
        running_on[tenant.server] -= 1;
        let verdict = counter.add(&tenant, result);
        count(status, &tenant.label, verdict);
        counter.progress(status, false);
    }
}

fn count(status: &mut TenantsStatus, tenant: &str, verdict: Verdict) {
    match verdict {
        Verdict::Done => status.applied += 1,
        Verdict::Stopped => {}
        Verdict::Halt(why) => {
            status.halted.get_or_insert(why);
        }
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
