//! Watched copies of the objects the planner reads, pruned to what it reads, so that a
//! reconcile costs no API request in the common case and 20,000 pods fit in a small operator.
//!
//! The caches trail the API server by the watch latency. That is fine for every decision but
//! one: the contract Job is created only after a fresh read from the API server (see
//! `reconcile.rs`), so a rollback the cache has not seen yet cannot open the gate.

use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;

use super::argo::{self, Rollout};
use super::pod_index::PodCache;
use super::views::{
    DaemonSetView, DeploymentView, ExecutorPodView, JobView, PodFacts, StatefulSetView,
};
use crate::api::DatabaseMigration;
use crate::planner::validate;

/// The readers of every cache the reconcile uses.
#[derive(Clone)]
pub struct Caches {
    pub migrations: Store<DatabaseMigration>,
    pub jobs: Store<JobView>,
    /// Every pod but executor pods, as views, indexed by label.
    pub pods: PodCache,
    /// Executor pods, as views (their status, without their spec).
    pub executor_pods: Store<ExecutorPodView>,
    pub deployments: Store<DeploymentView>,
    pub statefulsets: Store<StatefulSetView>,
    pub daemonsets: Store<DaemonSetView>,
    /// Argo Rollouts' Rollouts; empty (and never filled) when Argo Rollouts is not installed.
    pub rollouts: Store<Rollout>,
    pub rollouts_installed: bool,
    /// Set once every store above is ready (see [`Caches::ready`]).
    pub synced: tokio::sync::watch::Receiver<bool>,
}

impl Caches {
    /// Whether every cache holds its first full list (a reconcile before that could see a
    /// Deployment without its pods); waits until then, `false` if the controller is gone.
    /// Many reconciles may wait here at once, unlike on `Store::wait_until_ready`, which
    /// wakes only its latest waiter.
    pub async fn ready(&self) -> bool {
        let mut synced = self.synced.clone();
        let ready = synced.wait_for(|s| *s).await.is_ok();
        ready
    }

    /// Resolves once every cache holds its first full list. Fails only if the controller is
    /// gone. Await it from one place only (see [`Caches::ready`]).
    pub async fn wait_until_ready(
        &self,
    ) -> Result<(), kube::runtime::reflector::store::WriterDropped> {
        self.migrations.wait_until_ready().await?;
        self.jobs.wait_until_ready().await?;
        self.pods.wait_until_ready().await;
        self.executor_pods.wait_until_ready().await?;
        self.deployments.wait_until_ready().await?;
        self.statefulsets.wait_until_ready().await?;
        self.daemonsets.wait_until_ready().await?;
        self.rollouts.wait_until_ready().await
    }

    /// The pods of a Job: labelled with its name by the Job controller and controlled by the
    /// Job of that UID. The label alone anyone who may create pods can set, and such a pod
    /// could plant a report or a termination message (issue 23).
    pub fn job_pods(
        &self,
        ns: &str,
        job: &str,
        job_uid: &str,
    ) -> Vec<std::sync::Arc<ExecutorPodView>> {
        let mut pods = self.pods_labelled_for_job(ns, job);
        pods.retain(|p| controlled_by(&p.metadata, job_uid));
        pods
    }

    /// Every pod labelled as a Job's, whoever controls it. Only for waiting longer (a stopped
    /// attempt's pod outlives its deleted Job, whose UID is gone with it): a planted pod can
    /// delay the next attempt, never let anything commit.
    pub fn pods_labelled_for_job(
        &self,
        ns: &str,
        job: &str,
    ) -> Vec<std::sync::Arc<ExecutorPodView>> {
        self.executor_pods
            .state()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && p.labels()
                        .get("batch.kubernetes.io/job-name")
                        .map(String::as_str)
                        == Some(job)
            })
            .collect()
    }

    pub fn job(&self, ns: &str, name: &str) -> Option<std::sync::Arc<JobView>> {
        self.jobs.get(&ObjectRef::new(name).within(ns))
    }

    /// Every migration of a namespace (shared, not copied: at 1,000 migrations a copy each
    /// for each reconcile before expand was a million deep clones at startup).
    pub fn migrations_in(&self, ns: &str) -> Vec<std::sync::Arc<DatabaseMigration>> {
        migrations_in(&self.migrations, ns)
    }
}

/// Every migration of a namespace in `store` (see [`Caches::migrations_in`]).
pub fn migrations_in(
    store: &Store<DatabaseMigration>,
    ns: &str,
) -> Vec<std::sync::Arc<DatabaseMigration>> {
    store
        .state()
        .into_iter()
        .filter(|m| m.metadata.namespace.as_deref() == Some(ns))
        .collect()
}

/// Whether the object's controller is the object of `uid` (never for an empty `uid`).
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    !uid.is_empty()
        && meta
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// Metadata the planner and the event mapping read: identity, labels, annotations (a version
/// may be an annotation), owners and deletion; never `managedFields`.
fn prune_meta(m: &mut ObjectMeta, keep_annotations: bool) {
    m.managed_fields = None;
    if !keep_annotations {
        m.annotations = None;
    }
}

/// A container reduced to its name and image (a version may be an image tag).
fn prune_container(c: &Container) -> Container {
    Container {
        name: c.name.clone(),
        image: c.image.clone(),
        ..Default::default()
    }
}

fn prune_template(t: &mut PodTemplateSpec) {
    if let Some(m) = t.metadata.as_mut() {
        prune_meta(m, true);
    }
    if let Some(s) = t.spec.as_mut() {
        *s = PodSpec {
            containers: s.containers.iter().map(prune_container).collect(),
            ..Default::default()
        };
    }
}

pub fn prune_rollout(r: &mut Rollout) {
    prune_meta(&mut r.metadata, false);
    if let Some(t) = r.spec.template.as_mut() {
        prune_template(t);
    }
}

/// A migration as the reconcile and the event mapping read it: no managedFields, no labels,
/// only Phasegate's own annotations (approve, retry, backfill pause: kubectl's last-applied
/// copy alone doubles what a migration costs, and an author may add 256 KiB of others), and a
/// job template larger than the planner accepts reduced to its size (the planner refuses it
/// by that size). What an author can make the operator hold is then bounded by the CRD's
/// limits on the SQL fields and [`validate::MAX_TEMPLATE_BYTES`]. Reading a new label or
/// annotation of a migration means keeping it here.
pub fn prune_migration(m: &mut DatabaseMigration) {
    prune_meta(&mut m.metadata, true);
    m.metadata.labels = None;
    if let Some(a) = m.metadata.annotations.as_mut() {
        a.retain(|k, _| k.starts_with(crate::policy::PHASEGATE_PREFIX));
    }
    let jobs = [m.spec.expand.job.as_mut(), m.spec.contract.job.as_mut()];
    for job in jobs.into_iter().flatten() {
        let bytes = validate::template_bytes(&job.template);
        if bytes > validate::MAX_TEMPLATE_BYTES {
            job.template = serde_json::json!({ validate::PRUNED_TEMPLATE_KEY: bytes });
        }
    }
}

/// The workload that owns a pod, as `(kind, name)`: a StatefulSet or DaemonSet directly, a
/// Deployment or an Argo Rollout through its ReplicaSet (`<name>-<pod-template-hash>`).
pub fn owning_workload(p: &PodFacts) -> Option<(crate::api::TargetKind, String)> {
    use crate::api::TargetKind;
    let owner = p.controller.as_ref()?;
    match owner.kind.as_ref() {
        "StatefulSet" => Some((TargetKind::StatefulSet, owner.name.to_string())),
        "DaemonSet" => Some((TargetKind::DaemonSet, owner.name.to_string())),
        // Argo Rollouts names its ReplicaSets like Deployments do, with its own label.
        "ReplicaSet" => {
            let (kind, hash) = match p.labels.get(argo::POD_TEMPLATE_HASH) {
                Some(h) => (TargetKind::Rollout, h),
                None => (TargetKind::Deployment, p.labels.get("pod-template-hash")?),
            };
            let name = owner.name.strip_suffix(&format!("-{hash}"))?;
            Some((kind, name.to_string()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{TargetKind, VersionFrom};
    use crate::controller::observations::{deployment_observation, version_of};
    use crate::controller::views::PodView;

    fn pod(owner: serde_json::Value) -> std::sync::Arc<PodFacts> {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "api-7d9f-abcde", "namespace": "shop",
                "labels": {"app": "api", "version": "2.0.0", "pod-template-hash": "7d9f"},
                "annotations": {"app.example/version": "2.0.0"},
                "ownerReferences": owner,
                "managedFields": [{"manager": "kubectl"}],
            },
            "spec": {"nodeName": "n1", "containers": [{"name": "api", "image": "shop/api:2.0.0",
                     "env": [{"name": "X", "value": "y"}]}]},
            "status": {"phase": "Running"}
        }))
        .map(|p: PodView| p.pod)
        .expect("pod")
    }

    fn rs_owner() -> serde_json::Value {
        serde_json::json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d9f", "uid": "u", "controller": true}])
    }

    #[test]
    fn a_pod_view_gives_its_owner_and_version_every_way() {
        let p = pod(rs_owner());
        assert_eq!(
            owning_workload(&p),
            Some((TargetKind::Deployment, "api".into()))
        );
        for vf in [
            serde_json::json!({"label": "version"}),
            serde_json::json!({"annotation": "app.example/version"}),
            serde_json::json!({"image": {"container": "api"}}),
        ] {
            let vf: VersionFrom = serde_json::from_value(vf).expect("versionFrom");
            assert_eq!(
                version_of(Some(p.as_ref()), p.spec.images(), &vf).as_deref(),
                Some("2.0.0")
            );
        }
    }

    #[test]
    fn a_deployment_view_is_judged_as_the_full_object_says() {
        let d: DeploymentView = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api", "namespace": "shop", "generation": 3,
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{…}"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "api"}},
                     "template": {"metadata": {"labels": {"app": "api", "version": "2.0.0"}},
                                  "spec": {"containers": [{"name": "api", "image": "shop/api:2.0.0", "env": [{"name": "X", "value": "y"}]}]}}},
            "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}
        }))
        .expect("deployment");
        let vf: VersionFrom =
            serde_json::from_value(serde_json::json!({"label": "version"})).expect("vf");
        let o = deployment_observation(&d, &vf, &[pod(rs_owner())]);
        assert_eq!(o.name, "api");
        assert_eq!((o.generation, o.observed_generation), (3, 3));
        assert_eq!(o.template_version.as_deref(), Some("2.0.0"));
        assert_eq!(
            (
                o.replicas,
                o.current_replicas,
                o.updated_replicas,
                o.available_replicas
            ),
            (2, 2, 2, 1)
        );
        assert_eq!(o.pods.len(), 1);
        assert_eq!(o.pods[0].version.as_deref(), Some("2.0.0"));
    }

    /// What one author can make the operator hold is bounded (issue 23): kubectl's copy of
    /// the object goes, and an oversize template leaves only its size, which the planner
    /// refuses with the limit.
    #[test]
    fn a_cached_migration_keeps_no_kubectl_copy_and_no_oversize_template() {
        let big = "x".repeat(validate::MAX_TEMPLATE_BYTES);
        let template = |cmd: &str| {
            serde_json::json!({"spec": {"containers": [{"name": "m", "image": "psql",
                "command": ["sh", "-c", cmd]}]}})
        };
        let mut m: DatabaseMigration = serde_json::from_value(serde_json::json!({
            "apiVersion": "phasegate.dev/v1alpha1", "kind": "DatabaseMigration",
            "metadata": {"name": "m", "namespace": "shop", "uid": "u",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": big.clone(),
                                "phasegate.dev/approve": "true", "example.com/notes": big.clone()},
                "labels": {"app.kubernetes.io/part-of": "shop"},
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {"appVersion": "2.0.0",
                "database": {"urlSecretRef": {"name": "db", "key": "url"}},
                "expand": {"job": {"template": template(&big)}},
                "contract": {"job": {"template": template("true")}},
                "rollout": {"targets": [{"kind": "Deployment", "name": "shop-api"}]}}
        }))
        .expect("migration");
        prune_migration(&mut m);
        assert!(m.metadata.managed_fields.is_none() && m.metadata.labels.is_none());
        let annotations = m.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            ["phasegate.dev/approve"]
        );
        let expand = m.spec.expand.job.as_ref().expect("expand job");
        assert!(
            serde_json::to_vec(&expand.template).expect("json").len() < 100,
            "{}",
            expand.template
        );
        let err = validate::pod_template(expand).expect_err("too large");
        assert!(
            err.contains("job.template is") && err.contains("more than the 32768"),
            "{err}"
        );
        let contract = m.spec.contract.job.as_ref().expect("contract job");
        assert_eq!(contract.template, template("true"));
        assert!(validate::pod_template(contract).is_ok());
    }

    #[test]
    fn owners_of_statefulset_and_stray_pods() {
        let p = pod(serde_json::json!(
            [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u", "controller": true}]
        ));
        assert_eq!(
            owning_workload(&p),
            Some((TargetKind::StatefulSet, "db".into()))
        );
        assert_eq!(owning_workload(&pod(serde_json::json!([]))), None);
    }
}
