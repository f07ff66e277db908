//! Writes to the API server: create an attempt's Job (or take up the one this process
//! created), and stop one.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::PostParams;
use kube::{Api, ResourceExt};

use crate::api::DatabaseMigration;
use crate::planner::{job_name, JobPhase};

use super::ownership::{claims, CreatedJobs};
use crate::controller::error::{Error, KubeContext};

/// Create the Job; its UID, from the API server's answer, is what status records (only the
/// Job of that UID is ever read back). A Job of that name already there is taken up only if
/// this process created it (its status write failed). Nothing else shows who made it —
/// labels, owner references and even the field manager can be copied by anyone who may create
/// Jobs — so one that claims this migration as its controller (our own from before a restart
/// that lost the status write, or a forgery) is deleted and the attempt starts again; anything
/// else is a conflict the user must clear.
pub async fn create(
    jobs: &Api<Job>,
    job: &Job,
    owner: &OwnerReference,
    created: &CreatedJobs,
) -> Result<Job, Error> {
    let name = job.name_any();
    let ns = job.namespace().unwrap_or_default();
    match jobs.create(&PostParams::default(), job).await {
        Ok(j) => {
            created.remember(&ns, &name, j.metadata.uid.as_deref().unwrap_or_default());
            Ok(j)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = jobs
                .get(&name)
                .await
                .during(format!("reading existing Job {name}"))?;
            let uid = existing.metadata.uid.clone().unwrap_or_default();
            if !claims(&existing.metadata, &owner.uid) {
                return Err(Error::JobConflict { job: name });
            }
            if created.created(&ns, &name, &uid) {
                return Ok(existing);
            }
            let dp = kube::api::DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..kube::api::DeleteParams::background()
            };
            match jobs.delete(&name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => {
                    return Err(Error::Kube {
                        action: format!("deleting unrecorded Job {name}"),
                        source: e,
                    })
                }
            }
            Err(Error::UnrecordedJob { job: name })
        }
        Err(e) => Err(Error::Kube {
            action: format!("creating Job {name}"),
            source: e,
        }),
    }
}

/// Stop a running attempt: delete its Job; the pod goes with it (the kubelet sends SIGTERM
/// and the executor rolls back). Gone already is fine.
pub async fn stop(
    jobs: &Api<Job>,
    dbm: &DatabaseMigration,
    phase: JobPhase,
    attempt: u32,
) -> Result<(), Error> {
    let name = job_name(
        &dbm.name_any(),
        dbm.uid().as_deref().unwrap_or_default(),
        phase,
        attempt,
    );
    match jobs
        .delete(&name, &kube::api::DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube {
            action: format!("deleting Job {name}"),
            source: e,
        }),
    }
}
