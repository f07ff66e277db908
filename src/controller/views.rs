//! Pods and workloads as the operator keeps them: its own types holding only the fields the
//! planner and the event mapping read. Every other field of a response (managedFields,
//! volumes, env, probes, container statuses…) is skipped while deserializing, so it is never
//! allocated. A k8s-openapi `Pod` costs ~4 KB even pruned (its structs are inline); a
//! [`PodView`] a few hundred bytes, which is what lets 20,000–40,000 pods fit in a small
//! operator (issue 11).
//!
//! The same types serve the quorum read (`Api<PodView>` lists and gets), so the cache and the
//! API server are judged by one code path.

use std::borrow::Cow;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference, Time,
};
use serde::{Deserialize, Deserializer};

use super::labels::Labels;

/// Metadata as kept for executor Jobs and pods: identity, labels, owners, creation, deletion,
/// generation, and (pods only) annotations. Never `managedFields`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaWire {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    creation_timestamp: Option<Time>,
    labels: Option<std::collections::BTreeMap<String, String>>,
    annotations: Option<std::collections::BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
    deletion_timestamp: Option<Time>,
}

impl MetaWire {
    /// Keeps the annotations `keep` names.
    fn into_meta(self, keep: impl Fn(&str) -> bool) -> ObjectMeta {
        let annotations = self
            .annotations
            .map(|a| {
                a.into_iter()
                    .filter(|(k, _)| keep(k))
                    .collect::<std::collections::BTreeMap<_, _>>()
            })
            .filter(|a| !a.is_empty());
        ObjectMeta {
            name: self.name,
            namespace: self.namespace,
            uid: self.uid,
            resource_version: self.resource_version,
            generation: self.generation,
            creation_timestamp: self.creation_timestamp,
            labels: self.labels,
            annotations,
            owner_references: self.owner_references,
            deletion_timestamp: self.deletion_timestamp,
            ..Default::default()
        }
    }
}

/// Of a Job's annotations only the expand batch's members are read (see
/// [`crate::protocol::batch`]).
fn job_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    Ok(MetaWire::deserialize(d)?
        .into_meta(|k| k == crate::protocol::batch::ANNOTATION_EXPAND_BATCH))
}

/// An executor pod's annotations name its migration in full (a label value is cut at 63).
fn executor_pod_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    Ok(MetaWire::deserialize(d)?.into_meta(|_| true))
}

/// Reads a JSON value that may be `null` as its type's default.
fn or_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A container's name and image (a version may be an image tag).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ContainerView {
    pub name: Box<str>,
    #[serde(default)]
    pub image: Option<Box<str>>,
}

/// The containers of a pod or a pod template.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PodSpecView {
    #[serde(default, deserialize_with = "or_default")]
    pub containers: Box<[ContainerView]>,
}

impl PodSpecView {
    /// `(name, image)` of each container, as [`super::observations::version_of`] reads them.
    pub fn images(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.containers
            .iter()
            .map(|c| (c.name.as_ref(), c.image.as_deref()))
    }
}

/// Where a version may be written on a pod or a pod template besides its images.
pub trait Labelled {
    fn label(&self, key: &str) -> Option<&str>;
    fn annotation(&self, key: &str) -> Option<&str>;
}

impl Labelled for ObjectMeta {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key).map(String::as_str)
    }
    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// A pod template's labels and annotations.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct TemplateMeta {
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: Labels,
}

impl Labelled for TemplateMeta {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key)
    }
    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key)
    }
}

/// A pod template: the version it carries is in its labels, annotations or images.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct TemplateView {
    #[serde(default, deserialize_with = "or_default")]
    pub metadata: TemplateMeta,
    #[serde(default, deserialize_with = "or_default")]
    pub spec: PodSpecView,
}

/// The controller (owner with `controller: true`) of a pod.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Owner {
    pub kind: Box<str>,
    pub name: Box<str>,
}

/// What the operator knows of a workload's pod: whom it belongs to, which version it runs,
/// whether it is going away or done. Shared (`Arc`) between the watch event and the index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodFacts {
    pub name: Arc<str>,
    pub labels: Labels,
    pub annotations: Labels,
    pub controller: Option<Owner>,
    pub spec: PodSpecView,
    /// A deletion timestamp is set: the pod still runs until it is gone.
    pub terminating: bool,
    /// Phase `Succeeded` or `Failed`: the pod runs no code any more.
    pub finished: bool,
}

impl Labelled for PodFacts {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key)
    }
    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key)
    }
}

/// A workload's pod as the API server sends it, decoded straight into [`PodFacts`].
/// `metadata` holds only what the watch machinery reads (name, namespace, uid,
/// resourceVersion): a pod's labels, annotations and owner are in `pod`, never in
/// `metadata` (`ResourceExt::labels()` on a `PodView` is always empty).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "PodWire")]
pub struct PodView {
    pub metadata: ObjectMeta,
    pub pod: Arc<PodFacts>,
}

#[derive(Deserialize)]
struct PodWire {
    #[serde(default, deserialize_with = "or_default")]
    metadata: PodMetaWire,
    #[serde(default, deserialize_with = "or_default")]
    spec: PodSpecView,
    #[serde(default, deserialize_with = "or_default")]
    status: PodStatusWire,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodMetaWire {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    annotations: Labels,
    #[serde(default, deserialize_with = "or_default")]
    owner_references: Vec<OwnerWire>,
    #[serde(default)]
    deletion_timestamp: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct OwnerWire {
    kind: Box<str>,
    name: Box<str>,
    #[serde(default)]
    controller: Option<bool>,
}

#[derive(Default, Deserialize)]
struct PodStatusWire {
    #[serde(default)]
    phase: Option<String>,
}

impl From<PodWire> for PodView {
    fn from(w: PodWire) -> Self {
        let m = w.metadata;
        let name: Arc<str> = m.name.as_deref().unwrap_or_default().into();
        let controller = m
            .owner_references
            .into_iter()
            .find(|o| o.controller == Some(true))
            .map(|o| Owner {
                kind: o.kind,
                name: o.name,
            });
        PodView {
            metadata: ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                uid: m.uid,
                resource_version: m.resource_version,
                ..Default::default()
            },
            pod: Arc::new(PodFacts {
                name,
                labels: m.labels,
                annotations: m.annotations,
                controller,
                spec: w.spec,
                terminating: m.deletion_timestamp.is_some(),
                finished: matches!(w.status.phase.as_deref(), Some("Succeeded" | "Failed")),
            }),
        }
    }
}

/// A workload's pod selector (`matchLabels` kept compact).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SelectorView {
    #[serde(default)]
    pub match_labels: Labels,
    #[serde(default, deserialize_with = "or_default")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

impl SelectorView {
    pub fn to_label_selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: (!self.match_labels.is_empty()).then(|| {
                self.match_labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            match_expressions: (!self.match_expressions.is_empty())
                .then(|| self.match_expressions.clone()),
        }
    }
}

/// The spec of a Deployment, StatefulSet or DaemonSet: one shape serves all three (a field a
/// kind does not have, such as a DaemonSet's `replicas`, decodes as `None` and is not read).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpecView {
    #[serde(default)]
    pub replicas: Option<i32>,
    #[serde(default)]
    pub selector: Option<SelectorView>,
    #[serde(default)]
    pub paused: Option<bool>,
    #[serde(default)]
    pub template: TemplateView,
}

/// A workload: its identity and generation, its labels, spec, and its kind's own status.
/// Its labels are in `labels`, never in `metadata` (`ResourceExt::labels()` on a view is
/// always empty); no decision reads its annotations or owners.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(
    from = "WorkloadWire<Status>",
    bound(deserialize = "Status: Deserialize<'de> + Default")
)]
pub struct WorkloadView<Status> {
    pub metadata: ObjectMeta,
    pub labels: Labels,
    pub spec: WorkloadSpecView,
    pub status: Status,
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "Status: Deserialize<'de> + Default"))]
struct WorkloadWire<Status> {
    #[serde(default, deserialize_with = "or_default")]
    metadata: WorkloadMetaWire,
    #[serde(default, deserialize_with = "or_default")]
    spec: WorkloadSpecView,
    #[serde(default, deserialize_with = "or_default")]
    status: Status,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorkloadMetaWire {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    #[serde(default)]
    labels: Labels,
}

impl<Status> From<WorkloadWire<Status>> for WorkloadView<Status> {
    fn from(w: WorkloadWire<Status>) -> Self {
        let m = w.metadata;
        WorkloadView {
            metadata: ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                uid: m.uid,
                resource_version: m.resource_version,
                generation: m.generation,
                ..Default::default()
            },
            labels: m.labels,
            spec: w.spec,
            status: w.status,
        }
    }
}

pub type DeploymentView = WorkloadView<DeploymentStatusView>;
pub type StatefulSetView = WorkloadView<StatefulSetStatusView>;
pub type DaemonSetView = WorkloadView<DaemonSetStatusView>;

/// A workload condition's type, status and reason (its message and times are not read).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatusView {
    #[serde(default)]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub replicas: Option<i32>,
    #[serde(default)]
    pub updated_replicas: Option<i32>,
    #[serde(default)]
    pub available_replicas: Option<i32>,
    #[serde(default)]
    pub conditions: Vec<ConditionView>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatefulSetStatusView {
    #[serde(default)]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub updated_replicas: Option<i32>,
    #[serde(default)]
    pub available_replicas: Option<i32>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetStatusView {
    #[serde(default)]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub desired_number_scheduled: i32,
    #[serde(default)]
    pub updated_number_scheduled: Option<i32>,
    #[serde(default)]
    pub number_available: Option<i32>,
}

/// An executor Job: who created it and for which SQL (labels), its owner, and its
/// conditions. Its spec (the pod template is most of a Job) is never read from the cache.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct JobView {
    #[serde(default, deserialize_with = "job_meta")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "or_default")]
    pub status: JobStatusView,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct JobStatusView {
    #[serde(default, deserialize_with = "or_default")]
    pub conditions: Vec<ConditionWithMessage>,
}

impl JobStatusView {
    /// The Job completed or failed.
    pub fn finished(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
    }
}

/// A Job or pod condition as read (`Complete`, `Failed`, `PodScheduled`…), whether it holds,
/// and why.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ConditionWithMessage {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// An executor pod: which Job and migration it works for (labels, annotations), whether it
/// runs, and how its containers wait or ended (that explains a stuck or finished attempt).
/// Decoded without its spec and without the rest of its status: at 1,000 executor pods a
/// k8s-openapi `Pod` per watch event cost ~23 MiB of RSS (docs/scale.md).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ExecutorPodView {
    #[serde(default, deserialize_with = "executor_pod_meta")]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "or_default")]
    pub status: ExecutorPodStatus,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExecutorPodStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default, deserialize_with = "or_default")]
    pub conditions: Vec<ConditionWithMessage>,
    #[serde(default, deserialize_with = "or_default")]
    pub container_statuses: Vec<ContainerStatusView>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ContainerStatusView {
    #[serde(default, deserialize_with = "or_default")]
    pub state: ContainerStateView,
}

/// A container's state; a running one has neither.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ContainerStateView {
    #[serde(default)]
    pub waiting: Option<ContainerWaitingView>,
    #[serde(default)]
    pub terminated: Option<ContainerTerminatedView>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ContainerWaitingView {
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// How a container ended; `message` is its termination message (the executor's report).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerTerminatedView {
    #[serde(default)]
    pub exit_code: i32,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub finished_at: Option<Time>,
}

/// A view is read from (and watched at) the full kind's API.
macro_rules! view_of {
    ($view:ty, $full:ty) => {
        impl kube::Resource for $view {
            type DynamicType = ();
            type Scope = <$full as k8s_openapi::Resource>::Scope;

            fn kind(_: &()) -> Cow<'_, str> {
                <$full as k8s_openapi::Resource>::KIND.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                <$full as k8s_openapi::Resource>::GROUP.into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                <$full as k8s_openapi::Resource>::VERSION.into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                <$full as k8s_openapi::Resource>::URL_PATH_SEGMENT.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

view_of!(PodView, k8s_openapi::api::core::v1::Pod);
view_of!(DeploymentView, k8s_openapi::api::apps::v1::Deployment);
view_of!(StatefulSetView, k8s_openapi::api::apps::v1::StatefulSet);
view_of!(DaemonSetView, k8s_openapi::api::apps::v1::DaemonSet);
view_of!(JobView, k8s_openapi::api::batch::v1::Job);
view_of!(ExecutorPodView, k8s_openapi::api::core::v1::Pod);

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    #[test]
    fn views_address_the_full_kinds_api() {
        assert_eq!(
            PodView::url_path(&(), Some("shop")),
            "/api/v1/namespaces/shop/pods"
        );
        assert_eq!(
            DeploymentView::url_path(&(), None),
            "/apis/apps/v1/deployments"
        );
        assert_eq!(StatefulSetView::kind(&()), "StatefulSet");
        assert_eq!(DaemonSetView::api_version(&()), "apps/v1");
    }

    #[test]
    fn a_pod_view_skips_what_no_decision_reads() {
        let p: PodView = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "api-7d9f-abcde", "namespace": "shop", "uid": "u1", "resourceVersion": "42",
                "labels": {"app": "api"}, "annotations": {"app.example/version": "2.0.0"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d9f", "uid": "u", "controller": true}],
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:metadata": {}}}],
                "deletionTimestamp": "2026-11-30T12:00:00Z"
            },
            "spec": {"nodeName": "n1", "containers": [{"name": "api", "image": "shop/api:2.0.0",
                     "env": [{"name": "X", "value": "y"}], "args": ["--big"]}],
                     "volumes": [{"name": "v", "emptyDir": {}}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                       "containerStatuses": [{"name": "api", "image": "", "imageID": "", "ready": true, "restartCount": 0}]}
        }))
        .expect("pod");
        // Identity only in `metadata`; everything read is in `pod`.
        assert_eq!(
            p.metadata,
            ObjectMeta {
                name: Some("api-7d9f-abcde".into()),
                namespace: Some("shop".into()),
                uid: Some("u1".into()),
                resource_version: Some("42".into()),
                ..Default::default()
            }
        );
        let f = &p.pod;
        assert_eq!(f.name.as_ref(), "api-7d9f-abcde");
        assert_eq!(f.labels.get("app"), Some("api"));
        assert_eq!(f.annotation("app.example/version"), Some("2.0.0"));
        assert_eq!(
            f.controller,
            Some(Owner {
                kind: "ReplicaSet".into(),
                name: "api-7d9f".into()
            })
        );
        assert!(f.terminating);
        assert!(!f.finished);
        assert_eq!(
            f.spec.images().collect::<Vec<_>>(),
            [("api", Some("shop/api:2.0.0"))]
        );
    }

    #[test]
    fn a_pod_without_a_controller_or_deletion_or_labels() {
        let p: PodView = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "stray", "labels": null, "deletionTimestamp": null,
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "u"}]},
            "spec": {"containers": null},
            "status": {"phase": "Succeeded"}
        }))
        .expect("pod");
        assert_eq!(p.pod.controller, None);
        assert!(!p.pod.terminating);
        assert!(p.pod.finished);
        assert!(p.pod.labels.is_empty());
    }

    #[test]
    fn a_workload_view_drops_its_annotations_but_not_its_templates() {
        let d: DeploymentView = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api", "namespace": "shop", "generation": 3, "labels": {"tier": "web"},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{…}"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "api"}},
                     "template": {"metadata": {"labels": {"app": "api"}, "annotations": {"v": "2"}},
                                  "spec": {"containers": [{"name": "api", "image": "api:2"}]}}},
            "status": {"observedGeneration": 3, "conditions": [
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                 "message": "…", "lastUpdateTime": "2026-11-30T12:00:00Z"}]}
        }))
        .expect("deployment");
        assert_eq!(d.metadata.annotations, None);
        assert_eq!(d.metadata.generation, Some(3));
        // Labels are kept compact, outside `metadata`.
        assert_eq!(
            (d.labels.get("tier"), d.metadata.labels.as_ref()),
            (Some("web"), None)
        );
        assert_eq!(d.spec.template.metadata.annotation("v"), Some("2"));
        assert_eq!(d.spec.template.metadata.label("app"), Some("api"));
        assert_eq!(
            d.spec.selector.map(|s| s.to_label_selector()),
            Some(LabelSelector {
                match_labels: Some([("app".to_string(), "api".to_string())].into()),
                match_expressions: None,
            })
        );
        assert_eq!(
            d.status.conditions[0].reason.as_deref(),
            Some("ProgressDeadlineExceeded")
        );
    }

    #[test]
    fn a_job_view_keeps_identity_owner_and_conditions_only() {
        let j: JobView = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "m-expand-1-abcde", "namespace": "shop", "uid": "j1",
                         "labels": {"phasegate.dev/migration-uid": "u1"},
                         "annotations": {"phasegate.dev/migration": "m"},
                         "ownerReferences": [{"apiVersion": "phasegate.dev/v1alpha1", "kind": "DatabaseMigration",
                                              "name": "m", "uid": "u1", "controller": true}]},
            "spec": {"backoffLimit": 0, "template": {"spec": {"containers": [{"name": "executor", "image": "x"}]}}},
            "status": {"succeeded": 1, "conditions": [
                {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                 "message": "Reached expected number of succeeded pods", "lastProbeTime": "2026-11-30T12:00:00Z"}]}
        }))
        .expect("job");
        assert_eq!(j.metadata.annotations, None);
        assert_eq!(
            j.metadata.labels,
            Some([("phasegate.dev/migration-uid".to_string(), "u1".to_string())].into())
        );
        assert_eq!(
            j.metadata.owner_references.map(|o| o[0].uid.clone()),
            Some("u1".into())
        );
        assert_eq!(
            j.status.conditions,
            [ConditionWithMessage {
                type_: "Complete".into(),
                status: "True".into(),
                reason: Some("CompletionsReached".into()),
                message: Some("Reached expected number of succeeded pods".into()),
            }]
        );
    }

    #[test]
    fn an_executor_pod_view_reads_what_the_full_pod_says() {
        let v = serde_json::json!({
            "metadata": {"name": "m-contract-1-abcde", "namespace": "shop",
                         "labels": {"batch.kubernetes.io/job-name": "m-contract-1"},
                         "annotations": {"phasegate.dev/migration": "m"},
                         "managedFields": [{"manager": "kubelet"}],
                         "deletionTimestamp": "2026-11-30T12:00:05Z"},
            "spec": {"containers": [{"name": "executor", "image": "phasegate:dev"}]},
            "status": {"phase": "Pending", "qosClass": "BestEffort",
                       "conditions": [{"type": "PodScheduled", "status": "False",
                                       "reason": "Unschedulable", "message": "0/3 nodes are available"}],
                       "containerStatuses": [
                {"name": "executor", "image": "", "imageID": "", "ready": false, "restartCount": 1,
                 "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"db\" not found"}},
                 "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}},
                {"name": "executor-2", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "message": "{\"phase\":\"contract\"}",
                                          "startedAt": "2026-11-30T12:00:00Z", "finishedAt": "2026-11-30T12:00:04Z"}}}]}
        });
        let full: k8s_openapi::api::core::v1::Pod = serde_json::from_value(v.clone()).expect("pod");
        let e: ExecutorPodView = serde_json::from_value(v).expect("executor pod");
        assert_eq!(e.metadata.managed_fields, None);
        assert_eq!(
            (&e.metadata.labels, &e.metadata.annotations),
            (&full.metadata.labels, &full.metadata.annotations)
        );
        assert_eq!(
            e.metadata.deletion_timestamp,
            full.metadata.deletion_timestamp
        );
        let fs = full.status.expect("status");
        assert_eq!(e.status.phase, fs.phase);
        let conditions: Vec<_> = fs
            .conditions
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.type_, c.status, c.reason, c.message))
            .collect();
        let read: Vec<_> = e
            .status
            .conditions
            .into_iter()
            .map(|c| (c.type_, c.status, c.reason, c.message))
            .collect();
        assert_eq!(read, conditions);
        let states: Vec<_> = fs
            .container_statuses
            .unwrap_or_default()
            .into_iter()
            .map(|cs| {
                let s = cs.state.unwrap_or_default();
                (
                    s.waiting.map(|w| (w.reason, w.message)),
                    s.terminated
                        .map(|t| (t.exit_code, t.reason, t.message, t.finished_at)),
                )
            })
            .collect();
        let read: Vec<_> = e
            .status
            .container_statuses
            .into_iter()
            .map(|cs| {
                (
                    cs.state.waiting.map(|w| (w.reason, w.message)),
                    cs.state
                        .terminated
                        .map(|t| (t.exit_code, t.reason, t.message, t.finished_at)),
                )
            })
            .collect();
        assert_eq!(read, states);
        assert!(read[1].1.is_some() && read[0].0.is_some(), "{read:?}");
    }

    #[test]
    fn an_empty_object_still_decodes() {
        // A watch event that fails to decode would stop the whole watch: be lenient.
        for v in [
            serde_json::json!({}),
            serde_json::json!({"metadata": {}, "spec": {}, "status": {}}),
        ] {
            serde_json::from_value::<PodView>(v.clone()).expect("pod");
            serde_json::from_value::<DeploymentView>(v.clone()).expect("deployment");
            serde_json::from_value::<StatefulSetView>(v.clone()).expect("statefulset");
            serde_json::from_value::<JobView>(v.clone()).expect("job");
            serde_json::from_value::<ExecutorPodView>(v.clone()).expect("executor pod");
            serde_json::from_value::<DaemonSetView>(v).expect("daemonset");
        }
    }
}
