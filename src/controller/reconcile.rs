//! One reconcile, as a pipeline, one stage per function: observe (the caches, the Jobs and
//! the targets) → plan (pure; again on a quorum read and the rollout history where a gate is
//! about to open) → fence (a stale plan may only stop) → act (start or stop the one Job; stop
//! any other running attempt) → write status → publish Events → when to look again.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use crate::api::{DatabaseMigration, DatabaseMigrationStatus, Phase, TargetStatus, FIELD_MANAGER};
use crate::planner::{self, Input, JobPhase, JobState, Plan};
use crate::protocol::report::Report;

use super::context::Context;
use super::error::Error;
use super::workloads::Source;
use super::{fence, history, jobs, workloads};

/// How often a running Job is looked at without a watch event (see [`next_wakeup`]).
const RUNNING_JOB_POLL: Duration = Duration::from_secs(10);
/// How often a migration waiting on a rollout is looked at without a watch event.
const WAITING_RESYNC: Duration = Duration::from_secs(300);

pub async fn reconcile(dbm: Arc<DatabaseMigration>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = std::time::Instant::now();
    let result = reconcile_once(dbm.clone(), &ctx).await;
    if result.is_ok() {
        ctx.succeeded(&dbm);
    }
    ctx.metrics.reconciles.inc();
    ctx.metrics
        .reconcile_duration
        .observe(start.elapsed().as_secs_f64());
    result
}

async fn reconcile_once(dbm: Arc<DatabaseMigration>, ctx: &Context) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    if !caches_ready(ctx).await {
        return Ok(Action::await_change());
    }
    // Our own last status write replaced this copy and its watch event is on the way (it
    // reconciles again). A plan from here is stale: it may only stop a running attempt whose
    // gate closed (stopping never commits, and the fence must not wait for our own write to
    // come back); it starts nothing and writes nothing (the write would get 409).
    let stale = ctx
        .status_writes
        .replaced(&dbm, planner::writes::PROGRESS_WRITE_INTERVAL);
    let seen = observe(ctx, &dbm).await?;
    let Some(decided) = plan(ctx, &dbm, &seen, stale).await? else {
        return Ok(Action::await_change());
    };
    // Asked to stop (SIGTERM, or leadership lost): start nothing new.
    if ctx.stopping() {
        tracing::info!(migration = %dbm.name_any(), namespace = ?dbm.namespace(), "shutting down: not acting on this reconcile");
        return Ok(Action::await_change());
    }
    let plan = act(ctx, &dbm, &seen, decided, started).await?;
    let progress_wait = match write_status(ctx, &dbm, &seen, &plan).await? {
        Written::Done { progress_wait } => progress_wait,
        Written::Stale => return Ok(Action::requeue(Duration::from_millis(500))),
    };
    publish(ctx, &dbm, &plan).await;
    Ok(next_wakeup(&plan, seen.running(), progress_wait))
}

/// Plans are made from the caches: never from a half-filled one. A shutdown does not wait for
/// them.
async fn caches_ready(ctx: &Context) -> bool {
    tokio::select! {
        ready = ctx.caches.ready() => ready,
        _ = ctx.shutdown.clone() => false,
    }
}

/// What one reconcile observed (from the caches, and the API server where they cannot tell).
struct Observed {
    ns: String,
    status: DatabaseMigrationStatus,
    expand_job: JobState,
    expand_report: Option<Report>,
    contract_job: JobState,
    contract_report: Option<Report>,
    backfill_job: JobState,
    backfill_report: Option<Report>,
    targets: Vec<TargetStatus>,
    order: planner::order::ExpandOrder,
    /// See [`Input::expand_seat`].
    expand_seat: Option<planner::Seat>,
    /// The later migrations a new expand attempt's Job would carry (see [`Input::expand_batch`]).
    expand_batch: Vec<Arc<DatabaseMigration>>,
    unconfirmed_stop: Option<String>,
    /// Expand is applied (recorded, or its Job succeeded) and contract is not recorded yet:
    /// the fenced phases may run.
    fenced_phases_live: bool,
}

impl Observed {
    /// A running Job is looked at again now and then even without a watch event: a pod the
    /// API server refuses never exists, so only the Job controller's Events tell (unwatched).
    fn running(&self) -> bool {
        [&self.expand_job, &self.contract_job, &self.backfill_job]
            .iter()
            .any(|j| matches!(j, JobState::Running(_)))
    }
}

/// Observe. A phase recorded as applied is never looked at again (the planner ignores its Job
/// then, and its report was counted when it finished): no Job or pod reads for it on the
/// reconciles every pod event of the namespace triggers.
async fn observe(ctx: &Context, dbm: &DatabaseMigration) -> Result<Observed, Error> {
    let ns = dbm
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let apis = jobs::JobApis::new(&ctx.client, &ns);
    let status = dbm.status.clone().unwrap_or_default();
    let show_output = ctx.config.executor.job_policy.show_job_output;
    let applied = |p: &Option<crate::api::PhaseStatus>| p.as_ref().is_some_and(|s| s.succeeded);
    // The namespace's migrations, while expand is still to be applied: its seat and its order.
    let all = match applied(&status.expand) {
        true => Vec::new(),
        false => ctx.caches.migrations_in(&ns),
    };
    let (expand_job, expand_report, expand_seat) = if applied(&status.expand) {
        (JobState::Absent, None, None)
    } else {
        observe_expand(ctx, &apis, dbm, &status, &all, show_output).await?
    };
    let expanded = applied(&status.expand) || matches!(expand_job, JobState::Succeeded(_));
    let contracted = applied(&status.contract);
    // Fenced phases are observed without what holds a running Job up (see `explain`): a
    // stop must not wait for a kubelet that does not answer.
    let (contract_job, contract_report) = if expanded && !contracted {
        let rec = status.contract.as_ref();
        jobs::observe(
            &ctx.caches,
            &apis,
            dbm,
            JobPhase::Contract,
            rec,
            show_output,
            jobs::Detail::Unexplained,
        )
        .await?
    } else {
        (JobState::Absent, None)
    };
    // The backfill's Job, while it may still run (see planner/backfill.rs).
    let (backfill_job, backfill_report) = match (&dbm.spec.backfill, &status.backfill) {
        (Some(_), rec)
            if expanded && !contracted && !rec.as_ref().is_some_and(|b| b.run.succeeded) =>
        {
            let rec = rec.as_ref().map(|b| &b.run);
            jobs::observe(
                &ctx.caches,
                &apis,
                dbm,
                JobPhase::Backfill,
                rec,
                false,
                jobs::Detail::Unexplained,
            )
            .await?
        }
        _ => (JobState::Absent, None),
    };
    // A finished migration no longer looks at its targets (the planner ignores them then);
    // with versionOrder NotPrevious they are looked at from the start, to record what ran.
    let record_previous = dbm.spec.rollout.version_order == crate::api::VersionOrder::NotPrevious
        && status.previous_versions.is_none();
    let targets = if (expanded || record_previous) && !contracted {
        targets(ctx, dbm, &status, Source::Cache(&ctx.caches)).await?
    } else {
        Vec::new()
    };
    // Only an expand that may start now carries a batch (not one running, nor a seat).
    let may_lead = expand_seat.is_none() && !matches!(expand_job, JobState::Running(_));
    let (order, expand_batch) = expand_order(dbm, &status, &all, may_lead);
    let fenced_phases_live = expanded && !contracted;
    let unconfirmed_stop = fenced_phases_live
        .then(|| fence::unconfirmed_stop(ctx, dbm, &status))
        .flatten();
    Ok(Observed {
        ns,
        status,
        expand_job,
        expand_report,
        contract_job,
        contract_report,
        backfill_job,
        backfill_report,
        targets,
        order,
        expand_seat,
        expand_batch,
        unconfirmed_stop,
        fenced_phases_live,
    })
}

/// Expand's Job: its own attempt's, or a seat in another migration's batch Job (see
/// [`jobs::observe_seat`]).
async fn observe_expand(
    ctx: &Context,
    apis: &jobs::JobApis,
    dbm: &DatabaseMigration,
    status: &DatabaseMigrationStatus,
    all: &[Arc<DatabaseMigration>],
    show_output: bool,
) -> Result<(JobState, Option<Report>, Option<planner::Seat>), Error> {
    let rec = status.expand.as_ref();
    if let Some((seat, state)) =
        jobs::observe_seat(&ctx.caches, apis, dbm, rec, all, &ctx.created_jobs).await?
    {
        return Ok((state, None, Some(seat)));
    }
    // A seat that ended: no Job of its own to read.
    if jobs::recorded_seat(dbm, rec) {
        return Ok((JobState::Absent, None, None));
    }
    let (state, report) =
        jobs::observe_reported(&ctx.caches, apis, dbm, JobPhase::Expand, rec, show_output).await?;
    Ok((state, report, None))
}

/// Expand's place among `all` (the migrations of its namespace) while it is still to be
/// applied, and the later ones its Job would carry when it is first in line and `may_lead`.
fn expand_order(
    dbm: &DatabaseMigration,
    status: &DatabaseMigrationStatus,
    all: &[Arc<DatabaseMigration>],
    may_lead: bool,
) -> (planner::order::ExpandOrder, Vec<Arc<DatabaseMigration>>) {
    if status.expand.as_ref().is_some_and(|e| e.succeeded) {
        return Default::default();
    }
    let order = planner::order::expand_order(dbm, all);
    let batch = if order.holds.is_empty() && may_lead {
        planner::order::batch(dbm, all)
            .into_iter()
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    (order, batch)
}

/// Every target of the migration, judged, from the caches or from the API server.
async fn targets(
    ctx: &Context,
    dbm: &DatabaseMigration,
    status: &DatabaseMigrationStatus,
    source: Source<'_>,
) -> Result<Vec<TargetStatus>, Error> {
    workloads::observe_targets(
        source,
        dbm.metadata.namespace.as_deref().unwrap_or_default(),
        &dbm.spec.rollout.targets,
        &dbm.spec.rollout.version_from,
        &planner::version_rule(&dbm.spec, status),
        ctx.caches.rollouts_installed,
    )
    .await
}

/// The plan, and how long its quorum read took (if it made one).
struct Decided {
    plan: Plan,
    quorum_read: Option<Duration>,
}

/// Plan from what was observed. Where a gate is about to open, judge it again on a quorum read
/// from the API server, and read the rollout history where the epoch matters. A stale copy's
/// plan only fences: `None` then.
async fn plan(
    ctx: &Context,
    dbm: &DatabaseMigration,
    seen: &Observed,
    stale: bool,
) -> Result<Option<Decided>, Error> {
    let name = dbm.name_any();
    let uid = dbm.uid().unwrap_or_default();
    let (approved, retry, backfill_paused) = fence::marks(dbm);
    let mut input = Input {
        now: Timestamp::now(),
        name: &name,
        uid: &uid,
        generation: dbm.metadata.generation.unwrap_or(0),
        spec: &dbm.spec,
        status: &seen.status,
        approved,
        retry,
        expand_job: seen.expand_job.clone(),
        contract_job: seen.contract_job.clone(),
        backfill_job: seen.backfill_job.clone(),
        backfill_paused,
        targets: seen.targets.clone(),
        job_policy: &ctx.config.executor.job_policy,
        // The planner applies them only while expand waits in line.
        waits_for: seen.order.holds.clone(),
        expand_seat: seen.expand_seat.clone(),
        expand_batch: seen.expand_batch.iter().map(|m| m.name_any()).collect(),
        expand_tenants: seen.expand_report.as_ref().and_then(|r| r.tenants.clone()),
        contract_tenants: seen
            .contract_report
            .as_ref()
            .and_then(|r| r.tenants.clone()),
        backfill_tenants: seen
            .backfill_report
            .as_ref()
            .and_then(|r| r.tenants.clone()),
        history: None,
        unconfirmed_stop: seen.unconfirmed_stop.clone(),
    };
    let mut plan = planner::plan(&input);
    if stale {
        fence_only(ctx, dbm, &plan).await?;
        tracing::debug!(migration = %name, namespace = %seen.ns, "the cache has not caught up with our last status write; waiting for it");
        return Ok(None);
    }
    let mut quorum_read = None;
    // The gate is about to open: judge it again on a quorum read from the API server, so that
    // a rollback the caches have not seen yet cannot let contract (or the backfill) start.
    if matches!(
        plan.action,
        planner::Action::StartJob {
            phase: JobPhase::Contract | JobPhase::Backfill,
            ..
        }
    ) {
        let read = std::time::Instant::now();
        let api = Source::Api(&ctx.client, &ctx.caches);
        input.targets = targets(ctx, dbm, &seen.status, api).await?;
        quorum_read = Some(read.elapsed());
        plan = planner::plan(&input);
    }
    // A rollback the operator was not there to see (down, not leading, between two looks)
    // shows in the targets' rollout history: read it where the epoch matters
    // (src/controller/history.rs), and plan again.
    if ctx.history_checked.wanted(&uid, &seen.status, &plan) {
        input.history = Some(
            history::observe(
                &ctx.client,
                &ctx.caches,
                &seen.ns,
                &dbm.spec.rollout,
                ctx.caches.rollouts_installed,
            )
            .await?,
        );
        plan = planner::plan(&input);
        ctx.history_checked.note(&uid, &seen.status, &plan);
    }
    explain(ctx, dbm, seen, &mut input, &mut plan).await?;
    Ok(Some(Decided { plan, quorum_read }))
}

/// A running contract or backfill Job the plan keeps gets what holds it up (its pod's state,
/// its executor's wait or progress lines), and the plan is made again with it; one the plan
/// stops needs none, so the stop never waits for the kubelet.
async fn explain(
    ctx: &Context,
    dbm: &DatabaseMigration,
    seen: &Observed,
    input: &mut Input<'_>,
    plan: &mut Plan,
) -> Result<(), Error> {
    let apis = jobs::JobApis::new(&ctx.client, &seen.ns);
    let show_output = ctx.config.executor.job_policy.show_job_output;
    let mut explained = false;
    for phase in [JobPhase::Contract, JobPhase::Backfill] {
        let (job, rec, show) = match phase {
            JobPhase::Contract => (
                &mut input.contract_job,
                seen.status.contract.as_ref(),
                show_output,
            ),
            _ => (
                &mut input.backfill_job,
                seen.status.backfill.as_ref().map(|b| &b.run),
                false,
            ),
        };
        let stops = matches!(plan.action, planner::Action::StopJob { phase: p, .. } if p == phase);
        if *job != JobState::Running(None) || stops {
            continue;
        }
        let holdup = jobs::explain_running(&ctx.caches, &apis, dbm, phase, rec, show).await?;
        if holdup.is_some() {
            *job = JobState::Running(holdup);
            explained = true;
        }
    }
    if explained {
        *plan = planner::plan(input);
    }
    Ok(())
}

/// A stale plan may stop a running attempt whose gate closed, and nothing else.
async fn fence_only(ctx: &Context, dbm: &DatabaseMigration, plan: &Plan) -> Result<(), Error> {
    if let planner::Action::StopJob { phase, attempt } = plan.action {
        if !ctx.stopping() {
            let ns = dbm.namespace().unwrap_or_default();
            stop_attempt(
                ctx,
                &Api::namespaced(ctx.client.clone(), &ns),
                dbm,
                plan,
                phase,
                attempt,
            )
            .await?;
        }
    }
    Ok(())
}

/// Act: the Job first, its UID into the status to write (a crash before that write leaves a
/// Job no status recorded: the next attempt to create it deletes it and starts again; a stop is
/// repeated by the next plan); then no attempt of a fenced phase the plan does
/// not want keeps running, whatever the plan says (a failure, an invalid spec, a policy
/// refusal). Returns the plan, failed when the API server refused the Job it asked for.
async fn act(
    ctx: &Context,
    dbm: &DatabaseMigration,
    seen: &Observed,
    decided: Decided,
    started: std::time::Instant,
) -> Result<Plan, Error> {
    let Decided {
        mut plan,
        quorum_read,
    } = decided;
    let (name, ns) = (dbm.name_any(), &seen.ns);
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    match plan.action {
        planner::Action::StartJob { phase, attempt } => {
            let mut job = jobs::build_job(dbm, &plan.status, phase, attempt, &ctx.config.executor)?;
            let members: Vec<&DatabaseMigration> = match phase {
                JobPhase::Expand => seen.expand_batch.iter().map(|m| m.as_ref()).collect(),
                _ => Vec::new(),
            };
            jobs::add_members(&mut job, &members);
            let owner = dbm
                .controller_owner_ref(&())
                .ok_or(Error::MissingField("metadata.uid"))?;
            let refused = |why: planner::JobRefusal, text: &str, plan: Plan| {
                let generation = dbm.metadata.generation.unwrap_or(0);
                planner::job_refused(plan, phase, why, text, Timestamp::now(), generation)
            };
            match jobs::create(&jobs_api, &job, &owner, &ctx.created_jobs).await {
                Ok(created) => {
                    planner::record_mut(&mut plan.status, phase).job_uid = created.metadata.uid;
                    // How long the gate took inside the operator (see docs/scale.md).
                    let ms = |d: Duration| d.as_millis() as u64;
                    tracing::info!(
                        migration = %name, namespace = %ns, %phase, attempt,
                        batch = members.len(),
                        reconcile_ms = ms(started.elapsed()),
                        quorum_read_ms = quorum_read.map(ms),
                        "started Job"
                    )
                }
                // The API server refused the Job built from the spec (e.g. an invalid pod
                // template): no retry can fix that, so say so in status instead of looping.
                Err(Error::Kube {
                    source: kube::Error::Api(e),
                    ..
                }) if e.code == 400 || e.code == 422 => {
                    tracing::warn!(migration = %name, namespace = %ns, %phase, error = %e.message, "Job rejected by the API server");
                    plan = refused(planner::JobRefusal::Rejected, &e.message, plan);
                }
                Err(e @ Error::JobConflict { .. }) => {
                    tracing::warn!(migration = %name, namespace = %ns, %phase, error = %e, "Job name taken by a Job this migration did not create");
                    plan = refused(planner::JobRefusal::Conflict, &e.to_string(), plan);
                }
                Err(e) => return Err(e),
            }
        }
        planner::Action::StopJob { phase, attempt } => {
            stop_attempt(ctx, &jobs_api, dbm, &plan, phase, attempt).await?;
        }
        planner::Action::None => {}
    }
    if seen.fenced_phases_live {
        fence::sweep(ctx, dbm, &plan).await?;
    }
    Ok(plan)
}

/// What the status write came to.
enum Written {
    /// Written (or nothing to write); progress alone waits this long for its next write.
    Done { progress_wait: Option<Duration> },
    /// The plan was made from a copy our own last write replaced: plan again.
    Stale,
}

/// Write status under the field manager `phasegate`, with the resourceVersion the plan was
/// made from. Progress alone (replica counts, their messages) is written at most every few
/// seconds; a change that comes with an Event is written at once so the Event is not repeated.
async fn write_status(
    ctx: &Context,
    dbm: &DatabaseMigration,
    seen: &Observed,
    plan: &Plan,
) -> Result<Written, Error> {
    let name = dbm.name_any();
    let changed = dbm.status.as_ref() != Some(&plan.status);
    let progress_wait = dbm
        .status
        .as_ref()
        .filter(|old| {
            changed
                && plan.transition.is_none()
                && plan.notices.is_empty()
                && planner::writes::progress_only(old, &plan.status)
        })
        .and_then(|_| {
            ctx.status_writes
                .progress_wait(dbm, planner::writes::PROGRESS_WRITE_INTERVAL)
        });
    if !changed || progress_wait.is_some() {
        return Ok(Written::Done { progress_wait });
    }
    // If our own last write has not reached the cache yet, the plan is stale and must not
    // overwrite it (it would forget, e.g., when the rollout completed). The newer object's
    // watch event plans again.
    let patch = serde_json::json!({
        "apiVersion": "phasegate.dev/v1alpha1",
        "kind": "DatabaseMigration",
        "metadata": {"resourceVersion": dbm.resource_version()},
        "status": plan.status,
    });
    let api: Api<DatabaseMigration> = Api::namespaced(ctx.client.clone(), &seen.ns);
    let written = match api
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(written) => written,
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::debug!(migration = %name, namespace = %seen.ns, "planned from a stale copy; planning again");
            return Ok(Written::Stale);
        }
        Err(e) => {
            return Err(Error::Kube {
                action: format!("writing status of DatabaseMigration {name}"),
                source: e,
            })
        }
    };
    ctx.status_writes.written(
        dbm,
        dbm.resource_version(),
        written.metadata.resource_version.as_deref(),
        planner::writes::PROGRESS_WRITE_INTERVAL,
    );
    // A seat's Job is its lead's to take out of `created_jobs`.
    let expand = plan
        .status
        .expand
        .as_ref()
        .filter(|_| seen.expand_seat.is_none());
    for rec in [expand, plan.status.contract.as_ref()]
        .into_iter()
        .flatten()
        .chain(plan.status.backfill.as_ref().map(|b| &b.run))
        .filter(|r| r.job_uid.is_some())
    {
        if let Some(job) = &rec.job_name {
            ctx.created_jobs.recorded(&seen.ns, job);
        }
    }
    // Counted once the new status is stored, so each transition is counted once.
    ctx.metrics.record_transition(
        &seen.status,
        &plan.status,
        seen.expand_report.as_ref(),
        seen.contract_report.as_ref(),
    );
    Ok(Written::Done { progress_wait })
}

/// Events for the transition and the notices, each published once.
async fn publish(ctx: &Context, dbm: &DatabaseMigration, plan: &Plan) {
    let name = dbm.name_any();
    if let Some(t) = &plan.transition {
        tracing::info!(migration = %name, namespace = ?dbm.namespace(), phase = ?plan.status.phase, reason = %t.reason, message = %t.message, "phase changed");
    }
    for t in plan.transition.iter().chain(plan.notices.iter()) {
        if t.warning {
            ctx.metrics.warning_event(&t.reason);
        }
        let event = Event {
            type_: if t.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: t.reason.clone(),
            note: Some(t.message.chars().take(1000).collect()),
            action: event_action(&t.message),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &dbm.object_ref(&())).await {
            tracing::warn!(migration = %name, error = %e, "could not publish Event");
        }
    }
}

/// When to look again without a watch event: the plan's own deadline (soak, timeout), a
/// running Job's poll, a waiting migration's resync, or the next progress write.
fn next_wakeup(plan: &Plan, running: bool, progress_wait: Option<Duration>) -> Action {
    let poll = running.then_some(RUNNING_JOB_POLL);
    // Watch events are mapped to the migrations they concern (see `migrations_waiting_on`);
    // a rare change no mapping foresees (overlapping selectors) is caught up with here.
    let waiting = matches!(
        plan.status.phase,
        Some(Phase::AwaitingRollout | Phase::Soaking | Phase::AwaitingApproval)
    );
    let resync = waiting.then_some(WAITING_RESYNC);
    match plan
        .requeue_after
        .map(|d| d + Duration::from_millis(200))
        .into_iter()
        .chain(poll)
        .chain(resync)
        .chain(progress_wait)
        .min()
    {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    }
}

/// A gate closed while an attempt runs: its grant is recalled and its Job goes (the executor
/// rolls back on the recall or on SIGTERM, whichever reaches it first).
async fn stop_attempt(
    ctx: &Context,
    jobs_api: &Api<Job>,
    dbm: &DatabaseMigration,
    plan: &Plan,
    phase: JobPhase,
    attempt: u32,
) -> Result<(), Error> {
    fence::stop(ctx, jobs_api, dbm, plan, phase, attempt).await?;
    tracing::warn!(migration = %dbm.name_any(), namespace = ?dbm.namespace(), %phase, attempt, "a gate closed: stopped the running attempt before it could commit");
    Ok(())
}

/// The Event's action. kube's Recorder folds Events with the same type, reason and action
/// into one series that keeps the first message, so a second attempt's Event would only bump
/// the count of the first. The action names the message (a short hash): each distinct
/// message is its own Event, and only a repeat of the very same one joins a series.
fn event_action(message: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    message.hash(&mut h);
    format!("Reconcile-{:08x}", h.finish() as u32)
}

pub fn error_policy(dbm: Arc<DatabaseMigration>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(err.reason());
    tracing::warn!(migration = %dbm.name_any(), namespace = ?dbm.namespace(), reason = err.reason(), error = %err, "reconcile failed");
    Action::requeue(ctx.failed(&dbm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::views::{DeploymentView, JobView};
    use crate::controller::{cache, test_support, ExecutorConfig};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    /// A migration whose contract attempt 1 runs, read from a copy our last status write
    /// replaced, while its target was rolled back to 1.0.0: the attempt is stopped at once
    /// (the one request: DELETE of its Job), and nothing is started or written.
    #[tokio::test]
    async fn a_stale_copy_still_stops_an_attempt_whose_gate_closed() {
        let m = test_support::test_migration(
            "m",
            "10",
            serde_json::json!({"phase": "Contracting", "observedGeneration": 1,
                               "expand": {"attempts": 1, "succeeded": true},
                               "contract": {"attempts": 1, "startedAt": "2026-12-01T00:00:00Z",
                                            "jobUid": "job-1"},
                               "rolloutCompletedAt": "2026-12-01T00:00:00Z"}),
        );
        let cfg = ExecutorConfig::default();
        let status = m.status.clone().unwrap_or_default();
        let mut job =
            jobs::build_job(&m, &status, JobPhase::Contract, 1, &cfg).expect("contract Job");
        job.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        job.metadata.uid = Some("job-1".into());
        let job: JobView =
            serde_json::from_value(serde_json::to_value(&job).expect("json")).expect("job view");
        let job_name = job.metadata.name.clone().expect("name");
        let rolled_back: DeploymentView = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api", "namespace": "shop", "generation": 2},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "api"}},
                     "template": {"metadata": {"labels": {"app": "api", "version": "1.0.0"}}}},
            "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
        }))
        .expect("deployment");
        let mut caches = cache::Caches::for_tests(vec![m.clone()], vec![rolled_back]);
        caches.jobs = test_support::test_store(vec![job]);

        // One answer: a second request would fail the reconcile.
        let deleted =
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Success"});
        let (client, served) = test_support::mock_api(vec![(200, deleted)]);
        let ctx = test_support::test_context(client, caches, cfg);
        // Our write replaced resourceVersion 10 with 11; the cache still has 10.
        ctx.status_writes.written(
            &m,
            Some("10".into()),
            Some("11"),
            planner::writes::PROGRESS_WRITE_INTERVAL,
        );
        let action = reconcile_once(Arc::new(m), &ctx).await.expect("reconcile");
        assert_eq!(action, Action::await_change());
        drop(ctx);
        assert_eq!(
            served.await.expect("mock"),
            [format!(
                "DELETE /apis/batch/v1/namespaces/shop/jobs/{job_name}"
            )]
        );
    }

    /// Issue 22: an operator that (re)starts while a migration soaks reads its target's
    /// rollout history once, from the API server (the Deployment, then its ReplicaSets), and
    /// a ReplicaSet of the old version rolled out since the epoch began ends the epoch: the
    /// status is written, and no contract Job is created.
    #[tokio::test]
    async fn a_restarted_operator_reads_the_rollout_history_and_finds_a_hidden_rollback() {
        let mut m = test_support::test_migration(
            "m",
            "10",
            serde_json::json!({"phase": "Soaking", "observedGeneration": 1,
                               "expand": {"attempts": 1, "succeeded": true},
                               "rolloutCompletedAt": "2026-12-01T00:00:00Z",
                               "rolloutRevisions": [{"kind": "Deployment", "name": "api", "uid": "d1", "revision": 2}]}),
        );
        m.spec.contract.delay = Some("1000000h".into());
        let deployment = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "api", "namespace": "shop", "uid": "d1", "generation": 4,
                         "annotations": {"deployment.kubernetes.io/revision": "4"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "api"}},
                     "template": {"metadata": {"labels": {"app": "api", "version": "2.0.0"}}}},
            "status": {"observedGeneration": 4, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
        });
        let view: DeploymentView = serde_json::from_value(deployment.clone()).expect("view");
        let rs = |name: &str, revision: &str, history: Option<&str>, version: &str| {
            let mut annotations =
                serde_json::json!({"deployment.kubernetes.io/revision": revision});
            if let Some(h) = history {
                annotations["deployment.kubernetes.io/revision-history"] = h.into();
            }
            serde_json::json!({
                "metadata": {"name": name, "namespace": "shop", "annotations": annotations,
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                         "name": "api", "uid": "d1", "controller": true}]},
                "spec": {"selector": {"matchLabels": {"app": "api"}},
                         "template": {"metadata": {"labels": {"app": "api", "version": version}}}}
            })
        };
        // While the operator was down: 1.0.0's ReplicaSet rolled out again (1 → 3), then
        // 2.0.0's (2 → 4).
        let replicasets = serde_json::json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSetList", "metadata": {},
            "items": [rs("api-v1", "3", Some("1"), "1.0.0"), rs("api-v2", "4", Some("2"), "2.0.0")]
        });
        let mut written = serde_json::to_value(&m).expect("json");
        written["metadata"]["resourceVersion"] = "11".into();
        let caches = cache::Caches::for_tests(vec![m.clone()], vec![view]);
        let (client, served) =
            test_support::mock_api(vec![(200, deployment), (200, replicasets), (200, written)]);
        let ctx = test_support::test_context(client, caches, ExecutorConfig::default());
        reconcile_once(Arc::new(m), &ctx).await.expect("reconcile");
        drop(ctx);
        assert_eq!(
            served.await.expect("mock"),
            [
                "GET /apis/apps/v1/namespaces/shop/deployments/api",
                "GET /apis/apps/v1/namespaces/shop/replicasets",
                "PATCH /apis/phasegate.dev/v1alpha1/namespaces/shop/databasemigrations/m/status",
            ]
        );
    }
}
