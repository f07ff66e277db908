//! Argo Rollouts' `Rollout` as a target: the fields Phasegate reads (how it judges one:
//! [`super::observations::rollout_observation`]).
//!
//! A Rollout replaces a Deployment's pods through ReplicaSets it manages itself (canary steps,
//! or a blue-green preview and promotion). It is done when it is fully promoted — its stable
//! ReplicaSet is the one of the current template (`status.stableRS == status.currentPodHash`)
//! — and, as for every kind, no pod of an older version is left: a blue-green scale-down delay
//! keeps the old pods (and contract closed) until they are gone. An aborted Rollout went back
//! to its stable (old) pods, so contract stays closed.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// The parts of an Argo Rollouts Rollout's spec Phasegate reads.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "argoproj.io",
    version = "v1alpha1",
    kind = "Rollout",
    namespaced,
    status = "RolloutStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodTemplateSpec>,
    /// A Rollout may take its template from a Deployment instead (not supported here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_ref: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// The parts of a Rollout's status Phasegate reads.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
    /// The pod-template hash of the current template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_pod_hash: Option<String>,
    /// The pod-template hash of the stable ReplicaSet.
    #[serde(default, rename = "stableRS", skip_serializing_if = "Option::is_none")]
    pub stable_rs: Option<String>,
    /// A string in Argo Rollouts (e.g. `"3"`), unlike apps/v1 workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_conditions: Option<Vec<serde_json::Value>>,
}

/// The label Argo Rollouts puts on the pods of each of its ReplicaSets.
pub const POD_TEMPLATE_HASH: &str = "rollouts-pod-template-hash";
