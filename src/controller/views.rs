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
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use serde::{Deserialize, Deserializer};

/// The metadata a view keeps: identity, labels, owners, deletion, generation, and (for pods
/// and templates, where a version may be an annotation) annotations. Never `managedFields`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaWire<A> {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<A>,
    owner_references: Option<Vec<OwnerReference>>,
    deletion_timestamp: Option<Time>,
}

impl<A> MetaWire<A> {
    fn into_meta(self, annotations: Option<BTreeMap<String, String>>) -> ObjectMeta {
        ObjectMeta {
            name: self.name,
            namespace: self.namespace,
            uid: self.uid,
            resource_version: self.resource_version,
            generation: self.generation,
            labels: self.labels,
            annotations,
            owner_references: self.owner_references,
            deletion_timestamp: self.deletion_timestamp,
            ..Default::default()
        }
    }
}

/// Metadata with annotations (pods, pod templates).
fn meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let mut w = MetaWire::<BTreeMap<String, String>>::deserialize(d)?;
    let annotations = w.annotations.take();
    Ok(w.into_meta(annotations))
}

/// Metadata without annotations (workloads: `last-applied-configuration` can be large, and no
/// decision reads a workload's annotations).
fn workload_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    Ok(MetaWire::<serde::de::IgnoredAny>::deserialize(d)?.into_meta(None))
}

/// A container's name and image (a version may be an image tag).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ContainerView {
    pub name: String,
    #[serde(default)]
    pub image: Option<String>,
}

/// The containers of a pod or a pod template.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PodSpecView {
    #[serde(default)]
    pub containers: Vec<ContainerView>,
}

impl PodSpecView {
    /// `(name, image)` of each container, as [`super::workloads::version_of`] reads them.
    pub fn images(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.containers
            .iter()
            .map(|c| (c.name.as_str(), c.image.as_deref()))
    }
}

/// A pod template: the version it carries is in its labels, annotations or images.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct TemplateView {
    #[serde(default, deserialize_with = "meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpecView,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PodStatusView {
    #[serde(default)]
    pub phase: Option<String>,
}

/// A workload's pod: whom it belongs to, which version it runs, whether it is going away.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct PodView {
    #[serde(default, deserialize_with = "meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpecView,
    #[serde(default)]
    pub status: PodStatusView,
}

/// The spec of a Deployment, StatefulSet or DaemonSet: one shape serves all three (a field a
/// kind does not have, such as a DaemonSet's `replicas`, decodes as `None` and is not read).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpecView {
    #[serde(default)]
    pub replicas: Option<i32>,
    #[serde(default)]
    pub selector: Option<LabelSelector>,
    #[serde(default)]
    pub paused: Option<bool>,
    #[serde(default)]
    pub template: TemplateView,
}

/// A workload: its metadata (no annotations), spec, and its kind's own status.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(bound(deserialize = "Status: Deserialize<'de> + Default"))]
pub struct WorkloadView<Status> {
    #[serde(default, deserialize_with = "workload_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: WorkloadSpecView,
    #[serde(default)]
    pub status: Status,
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
        assert_eq!(p.metadata.managed_fields, None);
        assert_eq!(p.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(
            p.metadata.annotations,
            Some([("app.example/version".to_string(), "2.0.0".to_string())].into())
        );
        assert!(p.metadata.deletion_timestamp.is_some());
        assert_eq!(p.metadata.owner_references.as_ref().map(Vec::len), Some(1));
        assert_eq!(
            p.spec.images().collect::<Vec<_>>(),
            [("api", Some("shop/api:2.0.0"))]
        );
        assert_eq!(p.status.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn a_workload_view_drops_its_annotations_but_not_its_templates() {
        let d: DeploymentView = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api", "namespace": "shop", "generation": 3,
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
        assert_eq!(
            d.spec.template.metadata.annotations,
            Some([("v".to_string(), "2".to_string())].into())
        );
        assert_eq!(
            d.status.conditions[0].reason.as_deref(),
            Some("ProgressDeadlineExceeded")
        );
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
            serde_json::from_value::<DaemonSetView>(v).expect("daemonset");
        }
    }
}
