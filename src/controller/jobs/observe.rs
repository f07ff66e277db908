//! Reading an attempt back: its Job, its pods, their termination messages and the tail of the
//! executor's log, into the planner's [`JobState`].

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::api::DatabaseMigration;
use crate::planner::{job_name, phase_code, Holdup, JobPhase, JobState};
use crate::protocol::report::Report;

use super::build::{sql_checksum, EXECUTOR_CONTAINER};
use super::ownership::created_for;
use crate::controller::cache::Caches;
use crate::controller::error::{Error, KubeContext};
use crate::controller::views::{ContainerTerminatedView, ExecutorPodView, JobView};

/// A namespace's API endpoints for what the caches cannot tell (yet).
pub struct JobApis {
    pub jobs: Api<JobView>,
    pub pods: Api<ExecutorPodView>,
    /// `pods/log` is served on the full Pod API.
    pub pod_logs: Api<Pod>,
    pub events: Api<Event>,
}

impl JobApis {
    pub fn new(client: &kube::Client, ns: &str) -> JobApis {
        JobApis {
            jobs: Api::namespaced(client.clone(), ns),
            pods: Api::namespaced(client.clone(), ns),
            pod_logs: Api::namespaced(client.clone(), ns),
            events: Api::namespaced(client.clone(), ns),
        }
    }
}

/// The state of the Job of a phase's current attempt, with the executor's structured report
/// when the Job finished and its termination message carries one (for metrics: lock retries
/// and lock waits).
///
/// A user Job's own output (termination message, log tail) reaches status only when
/// `show_user_output`: it may print whatever its environment holds, the database URL too.
pub async fn observe_reported(
    caches: &Caches,
    apis: &JobApis,
    dbm: &DatabaseMigration,
    phase: JobPhase,
    rec: Option<&crate::api::PhaseStatus>,
    show_user_output: bool,
) -> Result<(JobState, Option<Report>), Error> {
    observe(
        caches,
        apis,
        dbm,
        phase,
        rec,
        show_user_output,
        Detail::Explained,
    )
    .await
}

/// How much [`observe`] says of a running Job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// What holds it up too: its pod's Events and its executor's log through the kubelet (up
    /// to 3 s when the kubelet hangs).
    Explained,
    /// Only that it runs: what the fence decides on, which must not wait for a kubelet. The
    /// plan that keeps the Job then asks [`explain_running`].
    Unexplained,
}

/// What holds up the running Job of `phase`'s current attempt, once the plan keeps it
/// running; `None` when nothing does, or it no longer runs.
pub async fn explain_running(
    caches: &Caches,
    apis: &JobApis,
    dbm: &DatabaseMigration,
    phase: JobPhase,
    rec: Option<&crate::api::PhaseStatus>,
    show_user_output: bool,
) -> Result<Option<Holdup>, Error> {
    let (state, _) = observe(
        caches,
        apis,
        dbm,
        phase,
        rec,
        show_user_output,
        Detail::Explained,
    )
    .await?;
    Ok(match state {
        JobState::Running(holdup) => holdup,
        _ => None,
    })
}

/// [`observe_reported`], with the detail asked for.
#[allow(clippy::too_many_arguments)]
pub async fn observe(
    caches: &Caches,
    apis: &JobApis,
    dbm: &DatabaseMigration,
    phase: JobPhase,
    rec: Option<&crate::api::PhaseStatus>,
    show_user_output: bool,
    detail: Detail,
) -> Result<(JobState, Option<Report>), Error> {
    let user_job = phase_code(&dbm.spec, phase).1.is_some();
    let hide = user_job && !show_user_output;
    let uid = dbm.uid().unwrap_or_default();
    let attempt = rec.map_or(1, |r| r.attempts.max(1));
    let name = job_name(&dbm.name_any(), &uid, phase, attempt);
    let ns = dbm.namespace().unwrap_or_default();
    // From the cache. A Job not seen there yet is absent, unless status says its attempt
    // runs: the Jobs watch may trail the migrations watch by a moment under load, and
    // "absent" would then read as "deleted by hand" and start another attempt beside it
    // (seen in the bench: up to 14 expand attempts of one migration). The API server says.
    // A Job of an attempt not recorded yet is deleted and started again (`create`).
    let recorded_running =
        rec.is_some_and(|r| r.attempts > 0 && r.finished_at.is_none() && !r.succeeded);
    let job = match caches.job(&ns, &name) {
        Some(job) => job,
        None if recorded_running => match apis
            .jobs
            .get_opt(&name)
            .await
            .during(format!("reading Job {name}"))?
        {
            Some(job) => Arc::new(job),
            None => return Ok((JobState::Absent, None)),
        },
        None => return Ok((JobState::Absent, None)),
    };
    // A Job of that name this migration did not create is not ours to read: only the one
    // whose UID status recorded at its creation is.
    let recorded = rec.and_then(|r| r.job_uid.as_deref());
    if recorded.is_none()
        || recorded != job.metadata.uid.as_deref()
        || !created_for(&job.metadata, &uid, sql_checksum(dbm, phase).as_deref())
    {
        return Ok((JobState::Absent, None));
    }
    let cond = |t: &str| {
        job.status
            .conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
            .cloned()
    };
    let finished = cond("Complete").is_some() || cond("Failed").is_some();
    let job_pods = pods_of(caches, apis, &job, finished).await?;
    if cond("Complete").is_some() {
        if hide {
            return Ok((JobState::Succeeded(None), None));
        }
        let raw = last_termination(&job_pods)
            .and_then(|t| t.message)
            .filter(|m| !m.trim().is_empty());
        let report = raw.as_deref().and_then(Report::parse);
        return Ok((JobState::Succeeded(raw.map(|m| summarise(&m))), report));
    }
    if let Some(failed) = cond("Failed") {
        let last = last_termination(&job_pods);
        let how = last.as_ref().map(|t| {
            format!(
                "container exited with code {}{}",
                t.exit_code,
                describe_exit(t.exit_code, t.reason.as_deref())
            )
        });
        // A container that could not start has the runtime's message, not its own output.
        let runtime_says = last.as_ref().is_some_and(|t| {
            matches!(
                t.reason.as_deref(),
                Some("StartError" | "ContainerCannotRun")
            )
        });
        // Hidden too when the runtime says it: `$(VAR)` in command, args and subPathExpr is
        // expanded from the container's env (any Secret of the namespace) before the runtime
        // quotes it back, e.g. `exec: "/<the Secret's value>": no such file` (issue 23).
        let raw = last
            .and_then(|t| t.message)
            .filter(|m| !m.trim().is_empty() && !hide);
        let report = raw.as_deref().and_then(Report::parse);
        // A batch that failed after this migration (its lead) applied: this one is applied.
        let batch = report.as_ref().and_then(|r| r.batch.as_ref());
        if let Some(b) = batch.filter(|b| b.applied > 0) {
            let why = raw.as_deref().map(summarise).unwrap_or_default();
            let message = match &b.failed {
                Some(failed) => format!(
                    "applied; its expand batch then applied {} of {}, {failed} failed: {why}",
                    b.applied, b.total
                ),
                None => format!(
                    "applied; its expand batch applied {} of {}, then stopped",
                    b.applied, b.total
                ),
            };
            return Ok((JobState::Succeeded(Some(message)), report));
        }
        // Phasegate's own executor always writes its report, unless it was killed first.
        if !user_job && report.is_none() && !runtime_says {
            let how = how.unwrap_or_else(|| {
                format!(
                    "no container status left ({})",
                    failed.reason.as_deref().unwrap_or("Failed")
                )
            });
            return Ok((
                JobState::Died(format!(
                    "the executor of Job {name} died without its report ({how}). PostgreSQL \
                     rolls back the transaction a dead client had open: nothing was committed \
                     by this attempt unless the ledger (phasegate.ledger) says otherwise (a \
                     COMMIT already sent, or a statement that runs outside a transaction, such \
                     as CREATE INDEX CONCURRENTLY, may have taken effect; the next attempt \
                     resumes from the ledger). Its log: kubectl logs job/{name}"
                )),
                None,
            ));
        }
        let msg = match (raw, how) {
            (Some(m), _) => summarise(&m),
            (None, Some(how)) if hide && runtime_says => format!(
                "Job {name} failed: {how}: its container could not start; the runtime's message \
                 is not copied into status (the cluster's jobPolicy.showJobOutput is off), see \
                 its pod's events: kubectl describe pod -n {ns} -l batch.kubernetes.io/job-name={name}"
            ),
            (None, Some(how)) if hide => format!(
                "Job {name} failed: {how}; its output is not copied into status \
                 (the cluster's jobPolicy.showJobOutput is off): kubectl logs job/{name}"
            ),
            (None, how) => format!(
                "Job {name} failed: {}",
                how.or(failed.message).or(failed.reason).unwrap_or_default()
            ),
        };
        return Ok((JobState::Failed(msg), report));
    }
    if detail == Detail::Unexplained {
        return Ok((JobState::Running(None), None));
    }
    let created = job.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let holdup = match stuck_reason(&job_pods, created, &apis.events, &name, hide).await? {
        Some(why) => Some(Holdup::Stuck(why)),
        // Only Phasegate's own executor writes wait lines; a user Job's log is not ours to read.
        // A backfill's log also carries its progress, a fleet phase's its tenants so far.
        None if !user_job && (phase == JobPhase::Backfill || dbm.spec.tenants.is_some()) => {
            executor_log(&apis.pod_logs, &job_pods)
                .await
                .and_then(|log| {
                    use crate::protocol::log::{current_wait, progress, tenants_progress};
                    current_wait(&log).map(Holdup::Waiting).or_else(|| {
                        if phase == JobPhase::Backfill {
                            progress(&log).map(Holdup::Progress)
                        } else {
                            tenants_progress(&log).map(Holdup::Tenants)
                        }
                    })
                })
        }
        None if !user_job => executor_wait(&apis.pod_logs, &job_pods)
            .await
            .map(Holdup::Waiting),
        None => None,
    };
    Ok((JobState::Running(holdup), None))
}

/// The pods of a Job. The pods watch may trail the Jobs watch: a finished Job whose pod's end
/// the cache has not seen yet is read from the API server, or a failure would look like a dead
/// executor.
pub(super) async fn pods_of(
    caches: &Caches,
    apis: &JobApis,
    job: &JobView,
    finished: bool,
) -> Result<Vec<Arc<ExecutorPodView>>, Error> {
    let ns = job.metadata.namespace.as_deref().unwrap_or_default();
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let job_uid = job.metadata.uid.as_deref().unwrap_or_default();
    let job_pods = caches.job_pods(ns, name, job_uid);
    if !finished || last_termination(&job_pods).is_some() {
        return Ok(job_pods);
    }
    Ok(apis
        .pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}")))
        .await
        .during(format!("listing pods of Job {name}"))?
        .items
        .into_iter()
        .filter(|p| crate::controller::cache::controlled_by(&p.metadata, job_uid))
        .map(Arc::new)
        .collect())
}

/// Most of the executor's log read to find what it waits on: its wait lines are short and
/// printed once per reason, so the tail holds the current ones.
const WAIT_LOG_TAIL_LINES: i64 = 50;

const WAIT_LOG_LIMIT_BYTES: i64 = 32 * 1024;

/// A kubelet that does not answer (node lost) must not hold up the reconcile.
const WAIT_LOG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// What the running executor waits on, from the tail of its log (see
/// [`crate::protocol::log::current_wait`]); `None` when it does not wait, or its log cannot be
/// read (no `pods/log` permission, a kubelet that does not answer): only the explanation is
/// lost, never the fence.
async fn executor_wait(pods: &Api<Pod>, job_pods: &[Arc<ExecutorPodView>]) -> Option<String> {
    crate::protocol::log::current_wait(&executor_log(pods, job_pods).await?)
}

/// The tail of the running executor's log; `None` when it cannot be read.
async fn executor_log(pods: &Api<Pod>, job_pods: &[Arc<ExecutorPodView>]) -> Option<String> {
    let running = job_pods.iter().find(|p| {
        p.metadata.deletion_timestamp.is_none() && p.status.phase.as_deref() == Some("Running")
    })?;
    let params = kube::api::LogParams {
        container: Some(EXECUTOR_CONTAINER.into()),
        tail_lines: Some(WAIT_LOG_TAIL_LINES),
        limit_bytes: Some(WAIT_LOG_LIMIT_BYTES),
        ..Default::default()
    };
    let name = running.name_any();
    match tokio::time::timeout(WAIT_LOG_TIMEOUT, pods.logs(&name, &params)).await {
        Ok(Ok(log)) => Some(log),
        Ok(Err(e)) => {
            tracing::debug!(pod = %name, error = %e, "could not read the executor's log");
            None
        }
        Err(_) => {
            tracing::debug!(pod = %name, "reading the executor's log timed out");
            None
        }
    }
}

/// How long a Job may have no pod before the operator looks for why (the running-Job poll
/// looks again after it).
const PODLESS_GRACE: jiff::SignedDuration = jiff::SignedDuration::from_secs(5);

/// Why a running Job's pod cannot make progress, as the kubelet or scheduler reports it
/// (a missing Secret, a bad image, an unschedulable pod), or as the Job controller does when
/// the API server refuses its pod (Pod Security admission, a ResourceQuota); `None` while it
/// is fine. With `hide` (a user Job, output not allowed) a container's waiting message is not
/// copied: the kubelet quotes what `$(VAR)` expanded to (`subPath … <a Secret's value>`) and
/// which Secrets and keys exist; the reason and where to look are given instead.
async fn stuck_reason(
    job_pods: &[Arc<ExecutorPodView>],
    job_created: Option<jiff::Timestamp>,
    events: &Api<Event>,
    job: &str,
    hide: bool,
) -> Result<Option<String>, Error> {
    if job_pods.is_empty() {
        // The Job controller creates the pod within moments; until then nothing is refused.
        // Listing Events by field selector makes the API server scan the namespace's Events
        // (1–3 s each during a rollout wave, holding a reconcile slot; docs/scale.md).
        let young =
            job_created.is_some_and(|t| jiff::Timestamp::now().duration_since(t) < PODLESS_GRACE);
        if young {
            return Ok(None);
        }
        return refused_pods(events, job).await;
    }
    for p in job_pods {
        let status = &p.status;
        let waiting = status
            .container_statuses
            .iter()
            .filter_map(|cs| cs.state.waiting.as_ref())
            .find(|w| {
                !matches!(
                    w.reason.as_deref(),
                    None | Some("ContainerCreating" | "PodInitializing")
                )
            });
        if let Some(w) = waiting {
            let reason = w.reason.clone().unwrap_or_default();
            return Ok(Some(match &w.message {
                Some(_) if hide => format!(
                    "pod waiting: {reason}; the kubelet's message is not copied into status (the \
                     cluster's jobPolicy.showJobOutput is off): kubectl describe pod -n {} {}",
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    p.metadata.name.as_deref().unwrap_or_default()
                ),
                Some(m) => format!("pod waiting: {reason}: {m}"),
                None => format!("pod waiting: {reason}"),
            }));
        }
        let unschedulable = status.conditions.iter().find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        });
        if let Some(c) = unschedulable {
            return Ok(Some(format!(
                "pod waiting: Unschedulable: {}",
                c.message.clone().unwrap_or_default()
            )));
        }
    }
    Ok(None)
}

/// A Job without pods: the newest `FailedCreate` Event the Job controller recorded for it.
/// Kubernetes (1.34) sets no Job condition for this, only the Event: `Error creating: pods
/// "…" is forbidden: violates PodSecurity "restricted:latest": …` or `… exceeded quota: …`.
async fn refused_pods(events: &Api<Event>, job: &str) -> Result<Option<String>, Error> {
    let lp = ListParams::default().fields(&format!("regarding.name={job},reason=FailedCreate"));
    let list = match events.list(&lp).await {
        Ok(list) => list,
        // An older Role without `list` on Events: only this explanation is lost.
        Err(kube::Error::Api(e)) if e.code == 403 => {
            tracing::warn!(job, error = %e.message, "cannot list Events: pods the API server refuses go unexplained");
            return Ok(None);
        }
        Err(e) => {
            return Err(Error::Kube {
                action: format!("listing Events of Job {job}"),
                source: e,
            })
        }
    };
    let when = |e: &Event| {
        e.series
            .as_ref()
            .map(|s| s.last_observed_time.0)
            .or(e.event_time.as_ref().map(|t| t.0))
            .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0))
            .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    Ok(list
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Job"))
        .max_by_key(|e| when(e))
        .map(|e| {
            let note = e.note.as_deref().unwrap_or_default();
            let note = note.strip_prefix("Error creating: ").unwrap_or(note);
            format!("pods refused: FailedCreate: {}", note.trim())
        }))
}

/// What an exit code and the runtime's reason say about how a container ended, e.g.
/// ` (OOMKilled; killed by signal 9, SIGKILL)`; empty when they say nothing more.
pub(super) fn describe_exit(code: i32, reason: Option<&str>) -> String {
    let mut parts: Vec<String> = reason
        .filter(|r| !r.is_empty() && *r != "Error")
        .map(str::to_string)
        .into_iter()
        .collect();
    // Runtimes report a process ended by signal N as exit code 128 + N.
    if (129..=128 + 31).contains(&code) {
        let signal = code - 128;
        let name = match signal {
            2 => Some("SIGINT"),
            6 => Some("SIGABRT"),
            9 => Some("SIGKILL"),
            11 => Some("SIGSEGV"),
            15 => Some("SIGTERM"),
            _ => None,
        };
        parts.push(match name {
            Some(n) => format!("killed by signal {signal}, {n}"),
            None => format!("killed by signal {signal}"),
        });
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join("; "))
    }
}

/// How the newest terminated container of a Job ended: exit code, reason and termination
/// message (the executor's report line, or a user Job's own message), as written.
pub(super) fn last_termination(
    job_pods: &[Arc<ExecutorPodView>],
) -> Option<ContainerTerminatedView> {
    job_pods
        .iter()
        .flat_map(|p| p.status.container_statuses.iter())
        .filter_map(|cs| cs.state.terminated.as_ref())
        .max_by(|a, b| a.finished_at.cmp(&b.finished_at))
        .cloned()
}

/// Turn a termination message into one line for status: the executor's report summary, or
/// the message itself for a user Job.
pub fn summarise(message: &str) -> String {
    match crate::protocol::report::Report::parse(message) {
        // The planner says which phase failed; keep just the cause.
        Some(r) => r.summary().trim_start_matches("failed: ").to_string(),
        None => message.trim().chars().take(1024).collect(),
    }
}
