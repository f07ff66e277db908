//! Watched copies of the objects the planner reads, pruned to what it reads, so that a
//! reconcile costs no API request in the common case and 20,000 pods fit in a small operator.
//!
//! The caches trail the API server by the watch latency. That is fine for every decision but
//! one: the contract Job is created only after a fresh read from the API server (see
//! `reconcile.rs`), so a rollback the cache has not seen yet cannot open the gate.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;

use super::argo::{self, Rollout};
use crate::api::{DatabaseMigration, LABEL_EXECUTOR};

/// The readers of every cache the reconcile uses.
#[derive(Clone)]
pub struct Caches {
    pub migrations: Store<DatabaseMigration>,
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
    pub deployments: Store<Deployment>,
    pub statefulsets: Store<StatefulSet>,
    pub daemonsets: Store<DaemonSet>,
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
        self.pods.wait_until_ready().await?;
        self.deployments.wait_until_ready().await?;
        self.statefulsets.wait_until_ready().await?;
        self.daemonsets.wait_until_ready().await?;
        self.rollouts.wait_until_ready().await
    }

    /// Pods of a namespace (shared, not copied: a reconcile copies only the pods it judges).
    pub fn pods_in(&self, ns: &str) -> Vec<std::sync::Arc<Pod>> {
        self.pods
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .collect()
    }

    /// The pods of a Job (by the label the Job controller sets).
    pub fn job_pods(&self, ns: &str, job: &str) -> Vec<Pod> {
        self.pods
            .state()
            .iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && p.labels()
                        .get("batch.kubernetes.io/job-name")
                        .map(String::as_str)
                        == Some(job)
            })
            .map(|p| p.as_ref().clone())
            .collect()
    }

    pub fn job(&self, ns: &str, name: &str) -> Option<Job> {
        self.jobs
            .get(&ObjectRef::new(name).within(ns))
            .map(|j| j.as_ref().clone())
    }

    /// Every migration of a namespace.
    pub fn migrations_in(&self, ns: &str) -> Vec<DatabaseMigration> {
        self.migrations
            .state()
            .iter()
            .filter(|m| m.metadata.namespace.as_deref() == Some(ns))
            .map(|m| m.as_ref().clone())
            .collect()
    }
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

fn prune_pod_spec(s: &mut PodSpec) {
    *s = PodSpec {
        containers: s.containers.iter().map(prune_container).collect(),
        node_name: s.node_name.take(),
        ..Default::default()
    };
}

fn prune_template(t: &mut PodTemplateSpec) {
    if let Some(m) = t.metadata.as_mut() {
        prune_meta(m, true);
    }
    if let Some(s) = t.spec.as_mut() {
        prune_pod_spec(s);
    }
}

/// A pod as the planner reads it: labels, annotations, owners, deletion, phase and the
/// containers' images. Executor pods keep their status whole (container states, termination
/// messages and conditions explain a stuck or finished attempt).
pub fn prune_pod(p: &mut Pod) {
    let executor = p.labels().contains_key(LABEL_EXECUTOR);
    prune_meta(&mut p.metadata, true);
    if executor {
        return;
    }
    if let Some(s) = p.spec.as_mut() {
        prune_pod_spec(s);
    }
    if let Some(st) = p.status.as_mut() {
        *st = k8s_openapi::api::core::v1::PodStatus {
            phase: st.phase.take(),
            ..Default::default()
        };
    }
}

/// A Deployment as the planner reads it: replicas, selector, paused, the template's version
/// and the status counters and conditions.
pub fn prune_deployment(d: &mut Deployment) {
    prune_meta(&mut d.metadata, false);
    if let Some(s) = d.spec.as_mut() {
        prune_template(&mut s.template);
    }
}

pub fn prune_statefulset(s: &mut StatefulSet) {
    prune_meta(&mut s.metadata, false);
    if let Some(spec) = s.spec.as_mut() {
        prune_template(&mut spec.template);
        spec.volume_claim_templates = None;
    }
}

pub fn prune_rollout(r: &mut Rollout) {
    prune_meta(&mut r.metadata, false);
    if let Some(t) = r.spec.template.as_mut() {
        prune_template(t);
    }
}

pub fn prune_daemonset(d: &mut DaemonSet) {
    prune_meta(&mut d.metadata, false);
    if let Some(s) = d.spec.as_mut() {
        prune_template(&mut s.template);
    }
}

/// An executor Job: its status and identity (labels, annotations) matter, its template not.
pub fn prune_job(j: &mut Job) {
    prune_meta(&mut j.metadata, true);
    if let Some(s) = j.spec.as_mut() {
        s.template = PodTemplateSpec::default();
    }
}

/// A migration as the reconcile and the event mapping read it (everything but managedFields).
pub fn prune_migration(m: &mut DatabaseMigration) {
    prune_meta(&mut m.metadata, true);
}

/// The workload that owns a pod, as `(kind, name)`: a StatefulSet or DaemonSet directly, a
/// Deployment or an Argo Rollout through its ReplicaSet (`<name>-<pod-template-hash>`).
pub fn owning_workload(p: &Pod) -> Option<(crate::api::TargetKind, String)> {
    use crate::api::TargetKind;
    let owner = p
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))?;
    match owner.kind.as_str() {
        "StatefulSet" => Some((TargetKind::StatefulSet, owner.name.clone())),
        "DaemonSet" => Some((TargetKind::DaemonSet, owner.name.clone())),
        // Argo Rollouts names its ReplicaSets like Deployments do, with its own label.
        "ReplicaSet" => {
            let (kind, hash) = match p.labels().get(argo::POD_TEMPLATE_HASH) {
                Some(h) => (TargetKind::Rollout, h),
                None => (TargetKind::Deployment, p.labels().get("pod-template-hash")?),
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
    use crate::controller::workloads::{deployment_observation, version_of};

    fn pod(extra: serde_json::Value) -> Pod {
        let mut v = serde_json::json!({
            "metadata": {
                "name": "api-7d9f-abcde", "namespace": "shop",
                "labels": {"app": "api", "version": "2.0.0", "pod-template-hash": "7d9f"},
                "annotations": {"app.example/version": "2.0.0"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d9f", "uid": "u", "controller": true}],
                "managedFields": [{"manager": "kubectl"}],
                "deletionTimestamp": "2026-11-30T12:00:00Z"
            },
            "spec": {"nodeName": "n1", "containers": [{"name": "api", "image": "shop/api:2.0.0",
                     "env": [{"name": "X", "value": "y"}], "args": ["--big"]}],
                     "volumes": [{"name": "v", "emptyDir": {}}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                       "containerStatuses": [{"name": "api", "image": "", "imageID": "", "ready": true, "restartCount": 0}]}
        });
        json_patch(&mut v, extra);
        serde_json::from_value(v).expect("pod")
    }

    fn json_patch(a: &mut serde_json::Value, b: serde_json::Value) {
        if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
            for (k, v) in b {
                a.insert(k, v);
            }
        }
    }

    #[test]
    fn a_pruned_pod_keeps_what_the_planner_reads() {
        let full = pod(serde_json::json!({}));
        let mut p = full.clone();
        prune_pod(&mut p);
        assert_eq!(p.metadata.managed_fields, None);
        assert_eq!(p.metadata.labels, full.metadata.labels);
        assert_eq!(
            p.metadata.deletion_timestamp,
            full.metadata.deletion_timestamp
        );
        assert_eq!(
            owning_workload(&p),
            Some((TargetKind::Deployment, "api".into()))
        );
        let spec = p.spec.clone().unwrap_or_default();
        assert_eq!(spec.volumes, None);
        assert_eq!(spec.containers[0].env, None);
        let status = p.status.clone().unwrap_or_default();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.container_statuses, None);
        // Every way of reading the version gives the same answer on the pruned pod.
        for vf in [
            serde_json::json!({"label": "version"}),
            serde_json::json!({"annotation": "app.example/version"}),
            serde_json::json!({"image": {"container": "api"}}),
        ] {
            let vf: VersionFrom = serde_json::from_value(vf).expect("versionFrom");
            assert_eq!(
                version_of(Some(&p.metadata), p.spec.as_ref(), &vf),
                version_of(Some(&full.metadata), full.spec.as_ref(), &vf),
            );
        }
    }

    #[test]
    fn an_executor_pod_keeps_its_status() {
        let full = pod(serde_json::json!({}));
        let mut e = full.clone();
        e.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(LABEL_EXECUTOR.into(), "true".into());
        prune_pod(&mut e);
        assert_eq!(e.status, full.status);
    }

    #[test]
    fn a_pruned_deployment_is_judged_as_the_full_one() {
        let full: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api", "namespace": "shop", "generation": 3,
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{…}"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "api"}},
                     "template": {"metadata": {"labels": {"app": "api", "version": "2.0.0"}},
                                  "spec": {"containers": [{"name": "api", "image": "shop/api:2.0.0", "env": [{"name": "X", "value": "y"}]}]}}},
            "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}
        }))
        .expect("deployment");
        let mut d = full.clone();
        prune_deployment(&mut d);
        assert_eq!(d.metadata.annotations, None);
        assert_eq!(d.metadata.managed_fields, None);
        let vf: VersionFrom =
            serde_json::from_value(serde_json::json!({"label": "version"})).expect("vf");
        let pods = [pod(serde_json::json!({}))];
        assert_eq!(
            deployment_observation(&d, &vf, &pods),
            deployment_observation(&full, &vf, &pods)
        );
    }

    #[test]
    fn owners_of_statefulset_and_stray_pods() {
        let mut p = pod(serde_json::json!({}));
        p.metadata.owner_references = Some(vec![serde_json::from_value(serde_json::json!(
            {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u", "controller": true}
        ))
        .expect("owner")]);
        assert_eq!(
            owning_workload(&p),
            Some((TargetKind::StatefulSet, "db".into()))
        );
        p.metadata.owner_references = None;
        assert_eq!(owning_workload(&p), None);
    }
}
