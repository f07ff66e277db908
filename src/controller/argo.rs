//! Argo Rollouts' `Rollout` as a target: the fields Phasegate reads, and how it judges one.
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

use crate::api::{TargetKind, VersionFrom};
use crate::planner::rollout::WorkloadObservation;

use std::sync::Arc;

use super::views::PodFacts;
use super::workloads::{pod_observations, version_of};

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

/// The planner's view of a Rollout and its pods (pure).
pub fn rollout_observation(
    r: &Rollout,
    vf: &VersionFrom,
    pods: &[Arc<PodFacts>],
) -> WorkloadObservation {
    let spec = &r.spec;
    let status = r.status.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let observed_generation = match &status.observed_generation {
        Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
        Some(serde_json::Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    };
    let paused = spec.paused.unwrap_or(false)
        || status
            .pause_conditions
            .as_ref()
            .is_some_and(|c| !c.is_empty())
        || status.phase.as_deref() == Some("Paused");
    let unfinished = if status.abort.unwrap_or(false) {
        Some(format!(
            "rollout aborted; its stable (old) pods serve{}",
            status
                .message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        ))
    } else if spec.template.is_none() && spec.workload_ref.is_some() {
        Some("spec.workloadRef is not supported: give the Rollout its own template".into())
    } else if status.current_pod_hash.is_none() || status.current_pod_hash != status.stable_rs {
        let mut m = format!(
            "not fully promoted (stable ReplicaSet {}, current {})",
            status.stable_rs.as_deref().unwrap_or("none"),
            status.current_pod_hash.as_deref().unwrap_or("none")
        );
        if paused {
            m.push_str("; rollout is paused");
        }
        Some(m)
    } else {
        None
    };
    let template = spec.template.as_ref();
    WorkloadObservation {
        kind: TargetKind::Rollout,
        name: r.metadata.name.clone().unwrap_or_default(),
        generation: r.metadata.generation.unwrap_or(0),
        observed_generation,
        template_version: version_of(
            template.and_then(|t| t.metadata.as_ref()),
            template
                .and_then(|t| t.spec.as_ref())
                .into_iter()
                .flat_map(|s| s.containers.iter())
                .map(|c| (c.name.as_str(), c.image.as_deref())),
            vf,
        ),
        replicas,
        current_replicas: status.replicas.unwrap_or(0),
        updated_replicas: status.updated_replicas.unwrap_or(0),
        available_replicas: status.available_replicas.unwrap_or(0),
        paused,
        progress_deadline_exceeded: status.phase.as_deref() == Some("Degraded"),
        unfinished,
        pods: pod_observations(pods, vf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::rollout::evaluate;
    use crate::planner::version::VersionRule;

    fn rollout(status: serde_json::Value) -> Rollout {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "api", "namespace": "shop", "generation": 4},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "api"}},
                "template": {"metadata": {"labels": {"app": "api", "version": "2.0.0"}},
                             "spec": {"containers": [{"name": "api", "image": "api:2.0.0"}]}},
                "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}}
            },
            "status": status
        }))
        .expect("rollout")
    }

    fn pod(version: &str) -> Arc<PodFacts> {
        serde_json::from_value::<crate::controller::views::PodView>(serde_json::json!({
            "metadata": {"name": format!("api-{version}"), "labels": {"app": "api", "version": version}},
            "status": {"phase": "Running"}
        }))
        .expect("pod")
        .pod
    }

    fn judge(r: &Rollout, pods: &[Arc<PodFacts>]) -> crate::api::TargetStatus {
        let vf: VersionFrom =
            serde_json::from_value(serde_json::json!({"label": "version"})).expect("vf");
        evaluate(
            &rollout_observation(r, &vf, pods),
            &VersionRule::semver("2.0.0"),
        )
    }

    #[test]
    fn a_canary_halfway_is_not_complete() {
        let r = rollout(serde_json::json!({
            "observedGeneration": "4", "replicas": 3, "updatedReplicas": 1, "availableReplicas": 3,
            "currentPodHash": "7c9b", "stableRS": "6d4f", "phase": "Paused",
            "pauseConditions": [{"reason": "CanaryPauseStep"}]
        }));
        let s = judge(&r, &[pod("1.0.0"), pod("1.0.0"), pod("2.0.0")]);
        assert!(!s.complete);
        let m = s.message.unwrap_or_default();
        assert!(
            m.contains("not fully promoted (stable ReplicaSet 6d4f, current 7c9b)"),
            "{m}"
        );
        assert!(m.contains("paused"), "{m}");
    }

    #[test]
    fn fully_promoted_with_only_new_pods_is_complete() {
        let r = rollout(serde_json::json!({
            "observedGeneration": "4", "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
            "currentPodHash": "7c9b", "stableRS": "7c9b", "phase": "Healthy"
        }));
        assert!(judge(&r, &[pod("2.0.0"), pod("2.0.0")]).complete);
        // Blue-green scale-down delay: promoted, but the old pods still run.
        let s = judge(&r, &[pod("2.0.0"), pod("2.0.0"), pod("1.0.0")]);
        assert!(!s.complete);
        assert!(s
            .message
            .unwrap_or_default()
            .contains("older version remain"));
    }

    #[test]
    fn an_aborted_rollout_is_not_complete() {
        let r = rollout(serde_json::json!({
            "observedGeneration": "4", "replicas": 2, "updatedReplicas": 0, "availableReplicas": 2,
            "currentPodHash": "7c9b", "stableRS": "6d4f", "abort": true, "phase": "Degraded",
            "message": "RolloutAborted: Rollout aborted update to revision 2"
        }));
        let s = judge(&r, &[pod("1.0.0"), pod("1.0.0")]);
        assert!(!s.complete);
        assert!(s.message.unwrap_or_default().contains("rollout aborted"));
    }

    #[test]
    fn an_unobserved_generation_is_not_complete() {
        let r = rollout(serde_json::json!({
            "observedGeneration": "3", "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
            "currentPodHash": "7c9b", "stableRS": "7c9b"
        }));
        assert!(!judge(&r, &[pod("2.0.0"), pod("2.0.0")]).complete);
    }
}
