//! Expand batches on the operator's side (see [`crate::protocol::batch`]): the lead's Job
//! carries its members — their SQL and settings, their seats, an owner reference to each — and
//! each member finds its seat, takes it only when the lead's status records the Job (or this
//! process created it), and reads back what the batch did for it.

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use crate::api::{DatabaseMigration, PhaseStatus};
use crate::planner::{expand_in_a_seat, JobPhase, JobState, Seat};
use crate::protocol::batch::{seats, BatchMember, SeatOutcome, ANNOTATION_EXPAND_BATCH};
use crate::protocol::env::{EnvText, EXPAND_BATCH};
use crate::protocol::report::Report;

use super::build::{sql_checksum, EXECUTOR_CONTAINER};
use super::observe::{last_termination, pods_of, summarise, JobApis};
use super::ownership::{created_for, CreatedJobs};
use crate::controller::cache::Caches;
use crate::controller::error::{Error, KubeContext};
use crate::controller::views::JobView;

/// The lead's expand Job made a batch: `members` are applied after the lead, in order.
pub fn add_members(job: &mut Job, members: &[&DatabaseMigration]) {
    if members.is_empty() {
        return;
    }
    let env: Vec<BatchMember> = members.iter().map(|m| member(m)).collect();
    let listed: Vec<crate::protocol::batch::Seat> = members
        .iter()
        .map(|m| crate::protocol::batch::Seat {
            name: m.name_any(),
            uid: m.uid().unwrap_or_default(),
            checksum: sql_checksum(m, JobPhase::Expand).unwrap_or_default(),
        })
        .collect();
    let meta = &mut job.metadata;
    meta.annotations
        .get_or_insert_with(Default::default)
        .insert(
            ANNOTATION_EXPAND_BATCH.to_string(),
            serde_json::to_string(&listed).unwrap_or_default(),
        );
    // Each member owns the Job too (not as its controller): its events wake the member, and
    // the Job stays while any of them does.
    let owners = meta.owner_references.get_or_insert_with(Vec::new);
    for m in members {
        if let Some(mut r) = m.controller_owner_ref(&()) {
            r.controller = None;
            r.block_owner_deletion = None;
            owners.push(r);
        }
    }
    let containers = job
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .map(|ps| ps.containers.iter_mut())
        .into_iter()
        .flatten();
    for c in containers.filter(|c| c.name == EXECUTOR_CONTAINER) {
        c.env.get_or_insert_with(Vec::new).push(EnvVar {
            name: EXPAND_BATCH.to_string(),
            value: Some(env.to_text()),
            value_from: None,
        });
    }
}

/// What the executor needs of a member.
fn member(m: &DatabaseMigration) -> BatchMember {
    let safety = &m.spec.safety;
    BatchMember {
        name: m.name_any(),
        uid: m.uid().unwrap_or_default(),
        app_version: m.spec.app_version.clone(),
        sql: m.spec.expand.sql.clone().unwrap_or_default(),
        lock_timeout: safety.lock_timeout.clone(),
        statement_timeout: safety.statement_timeout.clone(),
        young_transaction: safety.young_transaction.clone(),
        lock_wait_attempt_after: safety.lock_wait_attempt_after.clone(),
        max_lock_retries: safety.max_lock_retries,
    }
}

/// Whether expand's latest attempt is a seat in another migration's Job (its recorded Job is
/// not this migration's own Job of that attempt).
pub fn recorded_seat(dbm: &DatabaseMigration, rec: Option<&PhaseStatus>) -> bool {
    let uid = dbm.uid().unwrap_or_default();
    rec.is_some_and(|r| expand_in_a_seat(&dbm.name_any(), &uid, r))
}

/// This migration's expand seat and what its Job did for it: the seat status records while
/// its Job still may apply it, else the newest seat a lead created for it since. `None`: no
/// batch carries it (its own Job, if any, is read as usual).
pub async fn observe_seat(
    caches: &Caches,
    apis: &JobApis,
    dbm: &DatabaseMigration,
    rec: Option<&PhaseStatus>,
    all: &[Arc<DatabaseMigration>],
    created: &CreatedJobs,
) -> Result<Option<(Seat, JobState)>, Error> {
    let Some(checksum) = sql_checksum(dbm, JobPhase::Expand) else {
        return Ok(None);
    };
    let uid = dbm.uid().unwrap_or_default();
    let ns = dbm.namespace().unwrap_or_default();
    let mut ended: Option<String> = None;
    if recorded_seat(dbm, rec) {
        let rec = rec.cloned().unwrap_or_default();
        if let Some(job) = recorded_job(caches, apis, &ns, &rec).await? {
            if let Some(index) = place(&job, &uid, &checksum) {
                if let Some(state) = what_it_did(caches, apis, &job, index, dbm).await? {
                    return Ok(Some((seat_of(&job), state)));
                }
            }
        }
        ended = rec.job_uid;
    } else if rec.is_some_and(|r| r.attempts > 0) {
        // Its own attempt: not in a batch.
        return Ok(None);
    }
    let newest = caches
        .jobs
        .state()
        .into_iter()
        .filter(|j| {
            j.metadata.namespace.as_deref() == Some(ns.as_str())
                && j.metadata.uid != ended
                && j.metadata.deletion_timestamp.is_none()
                && owned_by(j, &uid)
                && trusted(j, all, created)
        })
        .filter_map(|j| Some((place(&j, &uid, &checksum)?, j)))
        .max_by(|a, b| {
            a.1.metadata
                .creation_timestamp
                .cmp(&b.1.metadata.creation_timestamp)
        });
    let Some((index, job)) = newest else {
        return Ok(None);
    };
    Ok(what_it_did(caches, apis, &job, index, dbm)
        .await?
        .map(|state| (seat_of(&job), state)))
}

/// The Job status records for the seat, from the cache, else the API server; only that UID.
async fn recorded_job(
    caches: &Caches,
    apis: &JobApis,
    ns: &str,
    rec: &PhaseStatus,
) -> Result<Option<Arc<JobView>>, Error> {
    let Some(name) = rec.job_name.as_deref() else {
        return Ok(None);
    };
    let job = match caches.job(ns, name) {
        Some(j) => Some(j),
        None => apis
            .jobs
            .get_opt(name)
            .await
            .during(format!("reading Job {name}"))?
            .map(Arc::new),
    };
    Ok(job.filter(|j| j.metadata.uid.is_some() && j.metadata.uid == rec.job_uid))
}

/// The member's place in the Job's batch (the lead is 0), if the Job lists it with this SQL.
fn place(job: &JobView, uid: &str, checksum: &str) -> Option<usize> {
    let listed = job
        .metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_EXPAND_BATCH)?;
    seats(listed)?
        .iter()
        .position(|s| s.uid == uid && s.checksum == checksum)
        .map(|i| i + 1)
}

fn owned_by(job: &JobView, uid: &str) -> bool {
    !uid.is_empty()
        && job
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == uid)
}

/// The Job was created by the operator for its lead: the lead's status records its UID (or
/// this process created it and that write is still to come), and it is the lead's expand Job
/// for the lead's SQL. Whoever may create Jobs can copy the annotation and owner references.
fn trusted(job: &JobView, all: &[Arc<DatabaseMigration>], created: &CreatedJobs) -> bool {
    let Some(lead) = lead_ref(job).and_then(|r| {
        all.iter()
            .find(|m| m.uid().as_deref() == Some(r.uid.as_str()))
    }) else {
        return false;
    };
    let lead_uid = lead.uid().unwrap_or_default();
    let job_uid = job.metadata.uid.as_deref().unwrap_or_default();
    let ns = job.metadata.namespace.as_deref().unwrap_or_default();
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let recorded = lead
        .status
        .as_ref()
        .and_then(|s| s.expand.as_ref())
        .and_then(|e| e.job_uid.as_deref())
        == Some(job_uid);
    (recorded || created.created(ns, name, job_uid))
        && created_for(
            &job.metadata,
            &lead_uid,
            sql_checksum(lead, JobPhase::Expand).as_deref(),
        )
}

/// The Job's controller: its lead, if the Job is what it claims.
fn lead_ref(job: &JobView) -> Option<&OwnerReference> {
    job.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

fn seat_of(job: &JobView) -> Seat {
    let lead = lead_ref(job).map(|r| r.name.clone()).unwrap_or_default();
    Seat {
        job_name: job.name_any(),
        job_uid: job.metadata.uid.clone().unwrap_or_default(),
        lead,
    }
}

/// What the Job did for the member at `index`: running, applied, failed; `None` when it did
/// not run it (an earlier one failed, the executor was stopped or died first).
async fn what_it_did(
    caches: &Caches,
    apis: &JobApis,
    job: &JobView,
    index: usize,
    dbm: &DatabaseMigration,
) -> Result<Option<JobState>, Error> {
    if !job.status.finished() {
        return Ok(Some(JobState::Running(None)));
    }
    let pods = pods_of(caches, apis, job, true).await?;
    let raw = last_termination(&pods).and_then(|t| t.message);
    let Some((report, raw)) = raw
        .as_deref()
        .and_then(|m| Some((Report::parse(m)?, m.to_string())))
    else {
        return Ok(None);
    };
    let Some(batch) = &report.batch else {
        return Ok(None);
    };
    let job_name = job.name_any();
    Ok(match batch.of(index, &dbm.name_any()) {
        SeatOutcome::Applied => Some(JobState::Succeeded(Some(format!(
            "applied by Job {job_name}, in the expand batch of {} ({} of {})",
            seat_of(job).lead,
            index + 1,
            batch.total
        )))),
        SeatOutcome::Failed => Some(JobState::Failed(summarise(&raw))),
        SeatOutcome::NotRun => None,
    })
}
