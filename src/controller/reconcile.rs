//! One reconcile: observe → validate & plan (pure) → apply.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use crate::api::{DatabaseMigration, Phase, FIELD_MANAGER};
use crate::planner::{self, Input, JobPhase, JobState};

use super::error::Error;
use super::workloads::Source;
use super::{fence, history, jobs, workloads, Context};

/// How often a running Job is looked at without a watch event (see `reconcile_once`).
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
    // Plans are made from the caches: never from a half-filled one. A shutdown does not wait
    // for them.
    tokio::select! {
        ready = ctx.caches.ready() => {
            if !ready {
                return Ok(Action::await_change());
            }
        }
        _ = ctx.shutdown.clone() => return Ok(Action::await_change()),
    }
    // Our own last status write replaced this copy and its watch event is on the way (it
    // reconciles again). A plan from here is stale: it may only stop a running attempt whose
    // gate closed (stopping never commits, and the fence must not wait for our own write to
    // come back); it starts nothing and writes nothing (the write would get 409).
    let stale = ctx
        .status_writes
        .replaced(&dbm, planner::writes::PROGRESS_WRITE_INTERVAL);
    let ns = dbm
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = dbm.name_any();
    let client = &ctx.client;
    let jobs_api: Api<Job> = Api::namespaced(client.clone(), &ns);
    let apis = jobs::JobApis::new(client, &ns);
    let status = dbm.status.clone().unwrap_or_default();

    // Observe. A phase recorded as applied is never looked at again (the planner ignores
    // its Job then, and its report was counted when it finished): no Job or pod reads for it
    // on the reconciles every pod event of the namespace triggers.
    let applied = |p: &Option<crate::api::PhaseStatus>| p.as_ref().is_some_and(|s| s.succeeded);
    let (expand_job, expand_report) = if applied(&status.expand) {
        (JobState::Absent, None)
    } else {
        jobs::observe_reported(
            &ctx.caches,
            &apis,
            &dbm,
            JobPhase::Expand,
            status.expand.as_ref(),
            ctx.config.executor.job_policy.show_job_output,
        )
        .await?
    };
    let expanded = applied(&status.expand) || matches!(expand_job, JobState::Succeeded(_));
    let contracted = applied(&status.contract);
    let (contract_job, contract_report) = if expanded && !contracted {
        jobs::observe_reported(
            &ctx.caches,
            &apis,
            &dbm,
            JobPhase::Contract,
            status.contract.as_ref(),
            ctx.config.executor.job_policy.show_job_output,
        )
        .await?
    } else {
        (JobState::Absent, None)
    };
    // The backfill's Job, while it may still run (see planner/backfill.rs).
    let backfill_job = match (&dbm.spec.backfill, &status.backfill) {
        (Some(_), rec)
            if expanded && !contracted && !rec.as_ref().is_some_and(|b| b.run.succeeded) =>
        {
            jobs::observe_reported(
                &ctx.caches,
                &apis,
                &dbm,
                JobPhase::Backfill,
                rec.as_ref().map(|b| &b.run),
                false,
            )
            .await?
            .0
        }
        _ => JobState::Absent,
    };
    // A finished migration no longer looks at its targets (the planner ignores them then);
    // with versionOrder NotPrevious they are looked at from the start, to record what ran.
    let record_previous = dbm.spec.rollout.version_order == crate::api::VersionOrder::NotPrevious
        && status.previous_versions.is_none();
    let rule = planner::version_rule(&dbm.spec, &status);
    let observe_targets = |source| {
        workloads::observe_targets(
            source,
            &ns,
            &dbm.spec.rollout.targets,
            &dbm.spec.rollout.version_from,
            &rule,
            ctx.caches.rollouts_installed,
        )
    };
    let look_at_targets = (expanded || record_previous) && !contracted;
    let targets = if look_at_targets {
        observe_targets(Source::Cache(&ctx.caches)).await?
    } else {
        Vec::new()
    };
    // The order among migrations matters only until expand first starts.
    let waits_for = if status.expand.as_ref().is_some_and(|e| e.attempts > 0) {
        Vec::new()
    } else {
        planner::order::waits_for(&dbm, &ctx.caches.migrations_in(&ns))
    };

    // Plan.
    let now = Timestamp::now();
    let generation = dbm.metadata.generation.unwrap_or(0);
    let uid = dbm.uid().unwrap_or_default();
    // A running Job is looked at again now and then even without a watch event: a pod the
    // API server refuses never exists, so only the Job controller's Events tell (unwatched).
    let running = matches!(expand_job, JobState::Running(_))
        || matches!(contract_job, JobState::Running(_))
        || matches!(backfill_job, JobState::Running(_));
    let (approved, retry, backfill_paused) = fence::marks(&dbm);
    let mut input = Input {
        now,
        name: &name,
        uid: &uid,
        generation,
        spec: &dbm.spec,
        status: &status,
        approved,
        retry,
        expand_job,
        contract_job,
        backfill_job,
        backfill_paused,
        targets,
        job_policy: &ctx.config.executor.job_policy,
        waits_for,
        history: None,
        unconfirmed_stop: if expanded && !contracted {
            fence::unconfirmed_stop(ctx, &dbm, &status)
        } else {
            None
        },
    };
    let mut plan = planner::plan(&input);
    if stale {
        if let planner::Action::StopJob { phase, attempt } = plan.action {
            if !ctx.stopping() {
                stop_attempt(&jobs_api, &dbm, phase, attempt).await?;
            }
        }
        tracing::debug!(migration = %name, namespace = %ns, "the cache has not caught up with our last status write; waiting for it");
        return Ok(Action::await_change());
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
        input.targets = observe_targets(Source::Api(client, &ctx.caches)).await?;
        quorum_read = Some(read.elapsed());
        plan = planner::plan(&input);
    }
    // A rollback the operator was not there to see (down, not leading, between two looks)
    // shows in the targets' rollout history: read it where the epoch matters
    // (src/controller/history.rs), and plan again.
    if ctx.history_checked.wanted(&uid, &status, &plan) {
        input.history = Some(
            history::observe(
                client,
                &ctx.caches,
                &ns,
                &dbm.spec.rollout,
                ctx.caches.rollouts_installed,
            )
            .await?,
        );
        plan = planner::plan(&input);
        ctx.history_checked.note(&uid, &status, &plan);
    }
    // Asked to stop (SIGTERM, or leadership lost): start nothing new.
    if ctx.stopping() {
        tracing::info!(migration = %name, namespace = %ns, "shutting down: not acting on this reconcile");
        return Ok(Action::await_change());
    }

    // Apply: the Job first, so a crash before the status write is healed by adoption (or,
    // for a stop, by the next plan stopping it again).
    match plan.action {
        planner::Action::StartJob { phase, attempt } => {
            let job = jobs::build_job(&dbm, &plan.status, phase, attempt, &ctx.config.executor)?;
            let owner = dbm
                .controller_owner_ref(&())
                .ok_or(Error::MissingField("metadata.uid"))?;
            match jobs::create_or_adopt(&jobs_api, &job, &owner).await {
                Ok(_) => {
                    // How long the gate took inside the operator (see docs/scale.md).
                    let ms = |d: Duration| d.as_millis() as u64;
                    tracing::info!(
                        migration = %name, namespace = %ns, %phase, attempt,
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
                    plan = planner::job_refused(
                        plan,
                        phase,
                        planner::JobRefusal::Rejected,
                        &e.message,
                        now,
                        generation,
                    );
                }
                Err(e @ Error::JobConflict { .. }) => {
                    tracing::warn!(migration = %name, namespace = %ns, %phase, error = %e, "Job name taken by a Job this migration did not create");
                    plan = planner::job_refused(
                        plan,
                        phase,
                        planner::JobRefusal::Conflict,
                        &e.to_string(),
                        now,
                        generation,
                    );
                }
                Err(e) => return Err(e),
            }
        }
        planner::Action::StopJob { phase, attempt } => {
            stop_attempt(&jobs_api, &dbm, phase, attempt).await?;
        }
        planner::Action::None => {}
    }
    // Whatever the plan says (a failure, an invalid spec, a policy refusal), no attempt of a
    // fenced phase it does not want keeps running.
    if expanded && !contracted {
        fence::sweep(ctx, &dbm, &plan).await?;
    }
    // Progress alone (replica counts, their messages) is written at most every few seconds;
    // a change that comes with an Event is written at once so the Event is not repeated.
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
                .progress_wait(&dbm, planner::writes::PROGRESS_WRITE_INTERVAL)
        });
    if changed && progress_wait.is_none() {
        // The plan was made from this resourceVersion; if our own last write has not reached
        // the cache yet, the plan is stale and must not overwrite it (it would forget, e.g.,
        // when the rollout completed). The newer object's watch event plans again.
        let patch = serde_json::json!({
            "apiVersion": "phasegate.dev/v1alpha1",
            "kind": "DatabaseMigration",
            "metadata": {"resourceVersion": dbm.resource_version()},
            "status": plan.status,
        });
        let api: Api<DatabaseMigration> = Api::namespaced(client.clone(), &ns);
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
                tracing::debug!(migration = %name, namespace = %ns, "planned from a stale copy; planning again");
                return Ok(Action::requeue(Duration::from_millis(500)));
            }
            Err(e) => {
                return Err(Error::Kube {
                    action: format!("writing status of DatabaseMigration {name}"),
                    source: e,
                })
            }
        };
        ctx.status_writes.written(
            &dbm,
            dbm.resource_version(),
            written.metadata.resource_version.as_deref(),
            planner::writes::PROGRESS_WRITE_INTERVAL,
        );
        // Counted once the new status is stored, so each transition is counted once.
        ctx.metrics.record_transition(
            &status,
            &plan.status,
            expand_report.as_ref(),
            contract_report.as_ref(),
        );
    }
    if let Some(t) = &plan.transition {
        tracing::info!(migration = %name, namespace = %ns, phase = ?plan.status.phase, reason = %t.reason, message = %t.message, "phase changed");
    }
    for t in plan.transition.iter().chain(plan.notices.iter()) {
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
    let poll = running.then_some(RUNNING_JOB_POLL);
    // Watch events are mapped to the migrations they concern (see `migrations_waiting_on`);
    // a rare change no mapping foresees (overlapping selectors) is caught up with here.
    let waiting = matches!(
        plan.status.phase,
        Some(Phase::AwaitingRollout | Phase::Soaking | Phase::AwaitingApproval)
    );
    let resync = waiting.then_some(WAITING_RESYNC);
    Ok(
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
        },
    )
}

/// A gate closed while an attempt runs: its Job goes (the executor rolls back on SIGTERM).
async fn stop_attempt(
    jobs_api: &Api<Job>,
    dbm: &DatabaseMigration,
    phase: JobPhase,
    attempt: u32,
) -> Result<(), Error> {
    jobs::stop(jobs_api, dbm, phase, attempt).await?;
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
    use crate::controller::{cache, test_support, Config, ExecutorConfig};
    use futures::FutureExt;
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
                               "contract": {"attempts": 1, "startedAt": "2026-12-01T00:00:00Z"},
                               "rolloutCompletedAt": "2026-12-01T00:00:00Z"}),
        );
        let cfg = ExecutorConfig::default();
        let status = m.status.clone().unwrap_or_default();
        let mut job =
            jobs::build_job(&m, &status, JobPhase::Contract, 1, &cfg).expect("contract Job");
        job.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
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
        let ctx = Context {
            client: client.clone(),
            recorder: kube::runtime::events::Recorder::new(
                client,
                kube::runtime::events::Reporter {
                    controller: "phasegate".into(),
                    instance: None,
                },
            ),
            config: Config {
                namespace: None,
                executor: cfg,
            },
            metrics: Arc::new(crate::metrics::Metrics::new()),
            caches,
            shutdown: futures::future::pending().boxed().shared(),
            failures: Default::default(),
            status_writes: Default::default(),
            history_checked: Default::default(),
        };
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
        let ctx = Context {
            client: client.clone(),
            recorder: kube::runtime::events::Recorder::new(
                client,
                kube::runtime::events::Reporter {
                    controller: "phasegate".into(),
                    instance: None,
                },
            ),
            config: Config {
                namespace: None,
                executor: ExecutorConfig::default(),
            },
            metrics: Arc::new(crate::metrics::Metrics::new()),
            caches,
            shutdown: futures::future::pending().boxed().shared(),
            failures: Default::default(),
            status_writes: Default::default(),
            history_checked: Default::default(),
        };
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
