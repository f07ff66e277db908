//! Which Jobs are this migration's: created by the operator for it (owner, UID, checksum), and
//! the Jobs this process created until status records them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{LABEL_MIGRATION_UID, LABEL_SQL_CHECKSUM};

use crate::controller::views::JobView;

/// Whether a Job was created for this migration's phase: the migration controls it (Phasegate
/// creates every Job with that owner) and it carries the migration's UID (and, for inline SQL,
/// the SQL's checksum). Labels alone prove nothing: whoever may create Jobs can copy them onto
/// a no-op Job, and an adopted one would pass for the phase (issue 23).
pub(super) fn created_for(job: &ObjectMeta, uid: &str, checksum: Option<&str>) -> bool {
    let label = |k: &str| job.labels.as_ref()?.get(k).map(String::as_str);
    let labelled = label(LABEL_MIGRATION_UID) == Some(uid)
        && checksum.is_none_or(|c| label(LABEL_SQL_CHECKSUM) == Some(c));
    labelled && claims(job, uid)
}

/// Whether a Job names this migration (UID `uid`) as its controller: what it claims, not
/// proof that the operator created it (only the UID recorded in status is).
pub(super) fn claims(job: &ObjectMeta, uid: &str) -> bool {
    !uid.is_empty()
        && job
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// A Job this migration owns (controller reference to its UID) that has not finished and is
/// not being deleted: an attempt that may still commit.
pub fn ours_and_running(job: &JobView, uid: &str) -> bool {
    let owned = job
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid);
    !uid.is_empty() && owned && !job.status.finished() && job.metadata.deletion_timestamp.is_none()
}

/// The Jobs this process created whose UID status may not record yet (its write failed or is
/// still to come): the one proof of authorship besides status. One entry per Job name, taken
/// out once status records it; lost with the process (a new leader then deletes such a Job and
/// creates it again).
#[derive(Default)]
pub struct CreatedJobs(std::sync::Mutex<std::collections::HashMap<(String, String), String>>);

impl CreatedJobs {
    pub(super) fn remember(&self, ns: &str, name: &str, uid: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.insert((ns.to_string(), name.to_string()), uid.to_string());
        }
    }

    pub(super) fn created(&self, ns: &str, name: &str, uid: &str) -> bool {
        self.0.lock().is_ok_and(|m| {
            m.get(&(ns.to_string(), name.to_string()))
                .is_some_and(|u| u == uid)
        })
    }

    /// Status now records `name`'s UID: nothing left to remember.
    pub fn recorded(&self, ns: &str, name: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&(ns.to_string(), name.to_string()));
        }
    }
}
