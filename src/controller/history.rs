//! The rollout history of target workloads, as the cluster keeps it: the ReplicaSets of a
//! Deployment or an Argo Rollout (`deployment.kubernetes.io/revision`,
//! `rollout.argoproj.io/revision`, and the numbers a re-used one held before in
//! `…/revision-history`), the ControllerRevisions of a StatefulSet or a DaemonSet
//! (`revision`), each with the version its pod template carries. The planner judges it (see
//! [`crate::planner::regression`]); this module only reads it, from the API server, and only
//! where a regression behind the operator's back matters (see [`wanted`]): never from a
//! cache, and never on the reconciles every pod event triggers.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::apps::v1::{ControllerRevision, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use crate::api::{DatabaseMigrationStatus, RolloutSpec, TargetKind, VersionFrom};
use crate::planner::regression::{self, Revision, TargetHistory};
use crate::planner::{Action, JobPhase, Plan};

use super::cache::Caches;
use super::error::{Error, KubeContext};
use super::observations::version_of;
use super::views::TemplateView;
use super::workloads::{workload_ids, Source, WorkloadId};

pub const DEPLOYMENT_REVISION: &str = "deployment.kubernetes.io/revision";
pub const DEPLOYMENT_REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const ROLLOUT_REVISION: &str = "rollout.argoproj.io/revision";
pub const ROLLOUT_REVISION_HISTORY: &str = "rollout.argoproj.io/revision-history";

/// Every target workload's kept revisions, read from the API server (the workloads too: a
/// workload deleted and created again has a new UID).
pub async fn observe(
    client: &Client,
    caches: &Caches,
    namespace: &str,
    rollout: &RolloutSpec,
    rollouts_installed: bool,
) -> Result<Vec<TargetHistory>, Error> {
    let ids = workload_ids(
        Source::Api(client, caches),
        namespace,
        &rollout.targets,
        rollouts_installed,
    )
    .await?;
    futures::future::try_join_all(
        ids.iter()
            .map(|id| target_history(client, namespace, id, &rollout.version_from)),
    )
    .await
}

async fn target_history(
    client: &Client,
    namespace: &str,
    id: &WorkloadId,
    vf: &VersionFrom,
) -> Result<TargetHistory, Error> {
    let lp = ListParams::default().labels_from(&id.selector);
    let revisions = match id.kind {
        TargetKind::Deployment | TargetKind::Rollout => {
            Api::<ReplicaSet>::namespaced(client.clone(), namespace)
                .list(&lp)
                .await
                .during(format!(
                    "listing the ReplicaSets of {} {} (its rollout history)",
                    id.kind, id.name
                ))?
                .items
                .iter()
                .filter(|rs| controlled_by(rs.owner_references(), &id.uid))
                .filter_map(|rs| replicaset_revision(rs, id.kind, vf))
                .collect()
        }
        TargetKind::StatefulSet | TargetKind::DaemonSet => {
            Api::<ControllerRevision>::namespaced(client.clone(), namespace)
                .list(&lp)
                .await
                .during(format!(
                    "listing the ControllerRevisions of {} {} (its rollout history)",
                    id.kind, id.name
                ))?
                .items
                .iter()
                .filter(|cr| controlled_by(cr.owner_references(), &id.uid))
                .map(|cr| controller_revision(cr, vf))
                .collect()
        }
    };
    Ok(TargetHistory {
        kind: id.kind,
        name: id.name.clone(),
        uid: id.uid.clone(),
        revisions,
    })
}

fn controlled_by(owners: &[OwnerReference], uid: &str) -> bool {
    owners
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// A ReplicaSet of a Deployment (or an Argo Rollout) as a revision; `None` without a
/// revision number (its controller has not numbered it yet, and skips it too).
pub fn replicaset_revision(
    rs: &ReplicaSet,
    kind: TargetKind,
    vf: &VersionFrom,
) -> Option<Revision> {
    let (number_key, history_key) = match kind {
        TargetKind::Rollout => (ROLLOUT_REVISION, ROLLOUT_REVISION_HISTORY),
        _ => (DEPLOYMENT_REVISION, DEPLOYMENT_REVISION_HISTORY),
    };
    let annotations = rs.annotations();
    let number = annotations.get(number_key)?.trim().parse().ok()?;
    let earlier = annotations
        .get(history_key)
        .map(|h| h.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_default();
    let template = rs.spec.as_ref().and_then(|s| s.template.as_ref());
    let version = version_of(
        template.and_then(|t| t.metadata.as_ref()),
        template
            .and_then(|t| t.spec.as_ref())
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| (c.name.as_str(), c.image.as_deref())),
        vf,
    );
    Some(Revision {
        name: rs.name_any(),
        number,
        version,
        earlier,
    })
}

/// A ControllerRevision of a StatefulSet or a DaemonSet as a revision: its `data` is a
/// patch holding the pod template (`{"spec": {"template": …}}`).
pub fn controller_revision(cr: &ControllerRevision, vf: &VersionFrom) -> Revision {
    let template: TemplateView = cr
        .data
        .as_ref()
        .and_then(|d| d.0.get("spec")?.get("template"))
        .and_then(|t| serde_json::from_value(t.clone()).ok())
        .unwrap_or_default();
    Revision {
        name: cr.name_any(),
        number: cr.revision,
        version: version_of(Some(&template.metadata), template.spec.images(), vf),
        earlier: Vec::new(),
    }
}

/// Migrations (by UID) whose rollout history this process has read in their current epoch
/// (`rolloutCompletedAt`) and found no regression in, with every target's revision recorded.
/// A restarted operator (or a new leader) has read none: it reads each once.
#[derive(Default)]
pub struct Checked(Mutex<HashMap<String, String>>);

fn epoch_key(status: &DatabaseMigrationStatus) -> Option<String> {
    status
        .rollout_completed_at
        .as_ref()
        .map(|t| t.0.to_string())
}

impl Checked {
    /// Whether the plan made without the history must be made again with it: the epoch holds
    /// and a backfill or contract attempt is about to start (their gate), an epoch has
    /// revisions to record, or this process has not read the history in this epoch yet (it
    /// was not running, or not leading, when a rollback may have come and gone).
    pub fn wanted(&self, uid: &str, status: &DatabaseMigrationStatus, plan: &Plan) -> bool {
        // Nothing to judge before the epoch, nor once contract is applied.
        if plan.status.rollout_completed_at.is_none()
            || plan.status.phase == Some(crate::api::Phase::Succeeded)
        {
            return false;
        }
        let gated_start = matches!(
            plan.action,
            Action::StartJob {
                phase: JobPhase::Contract | JobPhase::Backfill,
                ..
            }
        );
        let seen = {
            let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.get(uid)
                .is_some_and(|e| Some(e) == epoch_key(status).as_ref())
        };
        gated_start || !seen || regression::unrecorded(&plan.status)
    }

    /// After a plan made with the history: remember the epoch as checked if the plan kept
    /// it and recorded nothing new (else the status write must land first, and the next
    /// reconcile reads again).
    pub fn note(&self, uid: &str, status: &DatabaseMigrationStatus, plan: &Plan) {
        if plan.status.rollout_completed_at != status.rollout_completed_at
            || regression::unrecorded(status)
            || plan.status.rollout_revisions != status.rollout_revisions
        {
            return;
        }
        if let Some(epoch) = epoch_key(status) {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.insert(uid.to_string(), epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label() -> VersionFrom {
        VersionFrom {
            label: Some("app.kubernetes.io/version".into()),
            annotation: None,
            image: None,
        }
    }

    #[test]
    fn a_rolled_back_replicaset_keeps_its_earlier_numbers() {
        let rs: ReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api-6d4f", "namespace": "shop",
                "annotations": {"deployment.kubernetes.io/revision": "3",
                                "deployment.kubernetes.io/revision-history": "1"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "api",
                                     "uid": "u1", "controller": true}]},
            "spec": {"selector": {"matchLabels": {"app": "api"}},
                     "template": {"metadata": {"labels": {"app": "api", "app.kubernetes.io/version": "1.0.0"}},
                                  "spec": {"containers": [{"name": "api", "image": "api:1.0.0"}]}}}
        }))
        .expect("replicaset");
        assert!(controlled_by(rs.owner_references(), "u1"));
        assert!(!controlled_by(rs.owner_references(), "u2"));
        let r = replicaset_revision(&rs, TargetKind::Deployment, &label()).expect("numbered");
        assert_eq!(
            r,
            Revision {
                name: "api-6d4f".into(),
                number: 3,
                version: Some("1.0.0".into()),
                earlier: vec![1],
            }
        );
        // An Argo Rollout's ReplicaSets carry its own annotation.
        assert_eq!(
            replicaset_revision(&rs, TargetKind::Rollout, &label()),
            None
        );
    }

    #[test]
    fn the_history_is_read_once_per_epoch_and_before_every_gated_start() {
        use crate::api::{DatabaseMigrationStatus, TargetRevision, TargetStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let epoch = |s: i64| {
            Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(s).expect("t"),
            ))
        };
        let recorded = DatabaseMigrationStatus {
            rollout_completed_at: epoch(100),
            targets: vec![TargetStatus {
                kind: "Deployment".into(),
                name: "api".into(),
                complete: true,
                ..Default::default()
            }],
            rollout_revisions: vec![TargetRevision {
                kind: "Deployment".into(),
                name: "api".into(),
                uid: "u".into(),
                revision: 2,
            }],
            ..Default::default()
        };
        let plan = |status: &DatabaseMigrationStatus, action: Action| Plan {
            status: status.clone(),
            action,
            requeue_after: None,
            transition: None,
            notices: Vec::new(),
        };
        let checked = Checked::default();
        let idle = plan(&recorded, Action::None);
        // A (re)started operator reads it once in the epoch ...
        assert!(checked.wanted("m", &recorded, &idle));
        checked.note("m", &recorded, &idle);
        assert!(!checked.wanted("m", &recorded, &idle));
        assert!(checked.wanted("other", &recorded, &idle));
        // ... and again before a backfill or contract starts, and in a new epoch.
        let start = plan(
            &recorded,
            Action::StartJob {
                phase: JobPhase::Contract,
                attempt: 1,
            },
        );
        assert!(checked.wanted("m", &recorded, &start));
        let mut next = recorded.clone();
        next.rollout_completed_at = epoch(200);
        assert!(checked.wanted("m", &next, &plan(&next, Action::None)));
        // An epoch without recorded revisions: read until they are written.
        let mut bare = recorded.clone();
        bare.rollout_revisions.clear();
        let p = plan(&bare, Action::None);
        assert!(checked.wanted("n", &bare, &p));
        checked.note("n", &bare, &p);
        assert!(checked.wanted("n", &bare, &p));
        // No epoch, or contract applied: nothing to judge.
        let none = DatabaseMigrationStatus::default();
        assert!(!checked.wanted("o", &none, &plan(&none, Action::None)));
        let mut done = recorded.clone();
        done.phase = Some(crate::api::Phase::Succeeded);
        assert!(!checked.wanted("p", &done, &plan(&done, Action::None)));
    }

    #[test]
    fn a_controller_revision_carries_its_template_in_data() {
        let cr: ControllerRevision = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-7c9b", "namespace": "shop"},
            "revision": 4,
            "data": {"spec": {"template": {"$patch": "replace",
                "metadata": {"labels": {"app": "web", "app.kubernetes.io/version": "2.0.0"}},
                "spec": {"containers": [{"name": "web", "image": "web:2.0.0"}]}}}}
        }))
        .expect("controller revision");
        let r = controller_revision(&cr, &label());
        assert_eq!((r.number, r.version.as_deref()), (4, Some("2.0.0")));
        let image = VersionFrom {
            label: None,
            annotation: None,
            image: Some(crate::api::ImageVersion {
                container: "web".into(),
            }),
        };
        assert_eq!(
            controller_revision(&cr, &image).version.as_deref(),
            Some("2.0.0")
        );
    }
}
