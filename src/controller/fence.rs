//! The fence: a contract attempt commits only while every gate holds. Three parts:
//!
//! - **The fast stop** (reconcile): when a plan sees a gate close, the attempt's Job is
//!   deleted and its executor rolls back on SIGTERM; so is every other running attempt of the
//!   migration that the plan does not want ([`sweep`]).
//! - **The commit grant** ([`GrantDesk`]): the executor never COMMITs without a fresh "yes"
//!   for its very attempt, issued only by the leading operator after reading the migration and
//!   its targets from the API server (not the caches). Whatever breaks the fast stop — the
//!   operator stopped or refused by RBAC, an invalid edit, a kubelet that never delivers
//!   SIGTERM — also withholds the grant: the fence fails safe.
//! - **The recall** ([`super::recalls::Recalls`]): a stop this process decides is recalled before the Job is
//!   deleted and status written; renewals the desk holds for that attempt are answered
//!   `Superseded` at once, so a "yes" from just before the stop is void by the time status
//!   says the attempt stopped.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::{Resource, ResourceExt};

use crate::api::{
    DatabaseMigration, Phase, ANNOTATION_APPROVE, ANNOTATION_BACKFILL_PAUSED, ANNOTATION_RETRY,
};
use crate::planner::{self, Action, Input, JobPhase, JobState};
use crate::protocol::grant::{self, Answer, Request};
use crate::server::{Health, Role};

use super::context::Context;
use super::workloads::{self, Source};
use super::{jobs, Error};

/// What the annotations tell the planner: approved, the retry token, backfill paused.
pub(super) fn marks(dbm: &DatabaseMigration) -> (bool, Option<&str>, bool) {
    let a = dbm.annotations();
    (
        a.get(ANNOTATION_APPROVE).is_some_and(|v| v == "true"),
        a.get(ANNOTATION_RETRY).map(String::as_str),
        a.get(ANNOTATION_BACKFILL_PAUSED)
            .is_some_and(|v| v == "true"),
    )
}

/// Where executors' grant requests are answered: the controller's context while this process
/// leads, nothing otherwise.
pub struct GrantDesk {
    health: Arc<Health>,
    ctx: RwLock<Option<Arc<Context>>>,
}

impl GrantDesk {
    pub fn new(health: Arc<Health>) -> GrantDesk {
        GrantDesk {
            health,
            ctx: RwLock::new(None),
        }
    }

    /// The controller runs: grants may be issued from its context.
    pub(super) fn open(&self, ctx: Arc<Context>) {
        if let Ok(mut c) = self.ctx.write() {
            *c = Some(ctx);
        }
    }

    /// The controller stopped: no grant from now on.
    pub(super) fn close(&self) {
        if let Ok(mut c) = self.ctx.write() {
            *c = None;
        }
    }

    /// This replica leads and its controller runs: the one replica whose answers count.
    pub fn leads(&self) -> bool {
        self.health.role() == Role::Leader
            && self
                .ctx
                .read()
                .ok()
                .is_some_and(|c| c.as_ref().is_some_and(|c| !c.stopping()))
    }

    /// The answer to one request. Every doubt withholds.
    pub async fn answer(&self, req: &Request) -> Answer {
        if self.health.role() != Role::Leader {
            return Answer::withheld("this operator replica does not hold the leader Lease");
        }
        let ctx = match self.ctx.read() {
            Ok(c) => c.clone(),
            Err(_) => None,
        };
        let Some(ctx) = ctx.filter(|c| !c.stopping()) else {
            return Answer::withheld("the controller is not running in this replica");
        };
        // A renewal waits out its hold, then the world is read; a recall meanwhile, even
        // during the read (it takes a while when the API server is busy), answers at once.
        let hold = Duration::from_millis(req.hold_ms.min(grant::MAX_HOLD_MS));
        let judged = async {
            tokio::time::sleep(hold).await;
            if !self.leads() {
                return Answer::withheld("this operator replica stopped leading");
            }
            match judge(&ctx, req).await {
                Ok(a) => Answer {
                    held_ms: hold.as_millis() as u64,
                    ..a
                },
                Err(e) => {
                    Answer::withheld(format!("cannot read the world from the API server: {e}"))
                }
            }
        };
        let answer = tokio::select! {
            biased;
            why = ctx.recalls.recalled_at_last(req) => Answer::superseded(why),
            a = judged => a,
        };
        ctx.metrics.record_grant(answer.verdict);
        answer
    }
}

/// Judge a request on a fresh read: the migration itself, then its targets, from the API
/// server; the verdict is the planner's, as if the attempt's Job were running.
async fn judge(ctx: &Context, req: &Request) -> Result<Answer, Error> {
    if req.phase != JobPhase::Contract.as_str() {
        return Ok(Answer::superseded(format!(
            "grants are issued for contract only, not {:?}",
            req.phase
        )));
    }
    if ctx
        .config
        .namespace
        .as_deref()
        .is_some_and(|ns| ns != req.namespace)
    {
        return Ok(Answer::withheld(format!(
            "namespace {} is not watched by this operator",
            req.namespace
        )));
    }
    let api: Api<DatabaseMigration> = Api::namespaced(ctx.client.clone(), &req.namespace);
    let Some(dbm) = api.get_opt(&req.migration).await.map_err(|e| Error::Kube {
        action: format!("reading DatabaseMigration {}", req.migration),
        source: e,
    })?
    else {
        return Ok(Answer::superseded("the migration no longer exists"));
    };
    if dbm.uid().as_deref() != Some(req.uid.as_str()) || req.uid.is_empty() {
        return Ok(Answer::superseded(
            "the migration was deleted and created again (another UID)",
        ));
    }
    if dbm.meta().deletion_timestamp.is_some() {
        return Ok(Answer::superseded("the migration is being deleted"));
    }
    let status = dbm.status.clone().unwrap_or_default();
    let name = dbm.name_any();
    let rule = planner::version_rule(&dbm.spec, &status);
    let targets = workloads::observe_targets(
        Source::Api(&ctx.client, &ctx.caches),
        &req.namespace,
        &dbm.spec.rollout.targets,
        &dbm.spec.rollout.version_from,
        &rule,
        ctx.caches.rollouts_installed,
    )
    .await?;
    // What the cluster keeps decides: a rollback and a roll-forward since the rollout
    // completed (the operator down, its caches behind) withholds the grant although the
    // targets look complete now (src/controller/history.rs).
    let history = super::history::observe(
        &ctx.client,
        &ctx.caches,
        &req.namespace,
        &dbm.spec.rollout,
        ctx.caches.rollouts_installed,
    )
    .await?;
    let (approved, retry, backfill_paused) = marks(&dbm);
    let input = Input {
        now: Timestamp::now(),
        name: &name,
        uid: &req.uid,
        generation: dbm.metadata.generation.unwrap_or(0),
        spec: &dbm.spec,
        status: &status,
        approved,
        retry,
        expand_job: JobState::Absent,
        contract_job: JobState::Running(None),
        backfill_job: JobState::Absent,
        backfill_paused,
        targets,
        job_policy: &ctx.config.executor.job_policy,
        waits_for: Vec::new(),
        expand_seat: None,
        expand_batch: Vec::new(),
        expand_tenants: None,
        contract_tenants: None,
        backfill_tenants: None,
        unconfirmed_stop: None,
        history: Some(history),
    };
    Ok(planner::grant::verdict(&input, req.attempt))
}

/// The attempts of the fenced phases (contract, backfill) the plan wants running.
fn wanted(plan: &planner::Plan, phase: JobPhase) -> Option<u32> {
    let (running, rec) = match phase {
        JobPhase::Contract => (Phase::Contracting, plan.status.contract.as_ref()),
        JobPhase::Backfill => (
            Phase::Backfilling,
            plan.status.backfill.as_ref().map(|b| &b.run),
        ),
        JobPhase::Expand => return None,
    };
    let starts = matches!(plan.action, Action::StartJob { phase: p, .. } if p == phase);
    (plan.status.phase == Some(running) || starts)
        .then(|| rec.map(|r| r.attempts))
        .flatten()
}

/// Every running Job of a fenced phase of this migration that the plan does not want is
/// stopped: an attempt whose status write was lost, one an invalid edit or a failure left
/// behind. Found by name (attempts up to one past the recorded one) and owner, not only
/// through the attempt status records. Returns the attempts stopped.
pub(super) async fn sweep(
    ctx: &Context,
    dbm: &DatabaseMigration,
    plan: &planner::Plan,
) -> Result<Vec<(JobPhase, u32)>, Error> {
    let ns = dbm.namespace().unwrap_or_default();
    let uid = dbm.uid().unwrap_or_default();
    let jobs_api = Api::namespaced(ctx.client.clone(), &ns);
    let mut stopped = Vec::new();
    for phase in [JobPhase::Contract, JobPhase::Backfill] {
        let recorded = match phase {
            JobPhase::Contract => plan.status.contract.as_ref().map_or(0, |r| r.attempts),
            _ => plan.status.backfill.as_ref().map_or(0, |b| b.run.attempts),
        };
        let keep = wanted(plan, phase);
        for attempt in 1..=recorded + 1 {
            if Some(attempt) == keep {
                continue;
            }
            let name = planner::job_name(&dbm.name_any(), &uid, phase, attempt);
            let Some(job) = ctx.caches.job(&ns, &name) else {
                continue;
            };
            if !jobs::ours_and_running(&job, &uid) {
                continue;
            }
            stop(ctx, &jobs_api, dbm, plan, phase, attempt).await?;
            tracing::warn!(migration = %dbm.name_any(), namespace = %ns, %phase, attempt, "stopped a running attempt the plan does not want");
            stopped.push((phase, attempt));
        }
    }
    Ok(stopped)
}

/// Stops `attempt` of `phase`: its grant is recalled first (a renewal held for it is answered
/// at once), then its Job deleted (its executor gets SIGTERM). The recall does not depend on
/// the delete: RBAC that refuses it leaves the attempt without a grant all the same.
pub(super) async fn stop(
    ctx: &Context,
    jobs_api: &Api<k8s_openapi::api::batch::v1::Job>,
    dbm: &DatabaseMigration,
    plan: &planner::Plan,
    phase: JobPhase,
    attempt: u32,
) -> Result<(), Error> {
    let recorded = match phase {
        JobPhase::Contract => plan.status.contract.as_ref(),
        _ => None,
    };
    let why = recorded
        .filter(|r| r.attempts == attempt)
        .and_then(|r| r.message.clone())
        .unwrap_or_else(|| format!("{phase} attempt {attempt} was stopped by the operator"));
    ctx.recalls
        .recall(&dbm.uid().unwrap_or_default(), phase, attempt, &why);
    jobs::stop(jobs_api, dbm, phase, attempt).await
}

/// The executor pod of a contract attempt recorded as stopped that has not ended yet: the
/// stop is not confirmed until it has (a kubelet that never delivers SIGTERM keeps it), and
/// the next attempt waits for that. Described for status.
pub(super) fn unconfirmed_stop(
    ctx: &Context,
    dbm: &DatabaseMigration,
    status: &crate::api::DatabaseMigrationStatus,
) -> Option<String> {
    let rec = status.contract.as_ref()?;
    let stopped = rec.reason.as_deref() == Some(planner::reason::GATE_CLOSED)
        && rec.finished_at.is_some()
        && !rec.succeeded;
    if !stopped || rec.attempts == 0 {
        return None;
    }
    let ns = dbm.namespace().unwrap_or_default();
    let uid = dbm.uid().unwrap_or_default();
    let job = planner::job_name(&dbm.name_any(), &uid, JobPhase::Contract, rec.attempts);
    ctx.caches
        .pods_labelled_for_job(&ns, &job)
        .iter()
        .find(|p| !matches!(p.status.phase.as_deref(), Some("Succeeded" | "Failed")))
        .map(|p| {
            format!(
                "pod {} is still {}",
                p.metadata.name.as_deref().unwrap_or("?"),
                p.status.phase.as_deref().unwrap_or("Pending")
            )
        })
}
