//! The planner's view of what the watch caches (or a quorum read) hold: a pure translation
//! of workload and pod views into [`WorkloadObservation`]s, no I/O. How a Rollout is judged
//! lives here too (see [`super::argo`] for its fields).

use std::sync::Arc;

use crate::api::{TargetKind, VersionFrom};
use crate::planner::rollout::{PodObservation, WorkloadObservation};

use super::argo::Rollout;
use super::views::{DaemonSetView, DeploymentView, Labelled, PodFacts, StatefulSetView};

/// The planner's view of a Deployment and its pods (pure).
pub fn deployment_observation(
    d: &DeploymentView,
    vf: &VersionFrom,
    pods: &[Arc<PodFacts>],
) -> WorkloadObservation {
    let (spec, status) = (&d.spec, &d.status);
    let progress_deadline_exceeded = status.conditions.iter().any(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    WorkloadObservation {
        kind: TargetKind::Deployment,
        name: d.metadata.name.clone().unwrap_or_default(),
        generation: d.metadata.generation.unwrap_or(0),
        observed_generation: status.observed_generation.unwrap_or(0),
        template_version: version_of(
            Some(&spec.template.metadata),
            spec.template.spec.images(),
            vf,
        ),
        replicas: spec.replicas.unwrap_or(1),
        current_replicas: status.replicas.unwrap_or(0),
        updated_replicas: status.updated_replicas.unwrap_or(0),
        available_replicas: status.available_replicas.unwrap_or(0),
        paused: spec.paused.unwrap_or(false),
        progress_deadline_exceeded,
        unfinished: None,
        pods: pod_observations(pods, vf),
    }
}

/// The planner's view of a StatefulSet and its pods (pure). With `OnDelete` or a partition,
/// pods not yet replaced keep it incomplete.
pub fn statefulset_observation(
    s: &StatefulSetView,
    vf: &VersionFrom,
    pods: &[Arc<PodFacts>],
) -> WorkloadObservation {
    let (spec, status) = (&s.spec, &s.status);
    WorkloadObservation {
        kind: TargetKind::StatefulSet,
        name: s.metadata.name.clone().unwrap_or_default(),
        generation: s.metadata.generation.unwrap_or(0),
        observed_generation: status.observed_generation.unwrap_or(0),
        template_version: version_of(
            Some(&spec.template.metadata),
            spec.template.spec.images(),
            vf,
        ),
        replicas: spec.replicas.unwrap_or(1),
        current_replicas: status.replicas,
        updated_replicas: status.updated_replicas.unwrap_or(0),
        available_replicas: status.available_replicas.unwrap_or(0),
        paused: false,
        progress_deadline_exceeded: false,
        unfinished: None,
        pods: pod_observations(pods, vf),
    }
}

/// The planner's view of a DaemonSet and its pods (pure): one pod per eligible node.
pub fn daemonset_observation(
    d: &DaemonSetView,
    vf: &VersionFrom,
    pods: &[Arc<PodFacts>],
) -> WorkloadObservation {
    let (spec, status) = (&d.spec, &d.status);
    WorkloadObservation {
        kind: TargetKind::DaemonSet,
        name: d.metadata.name.clone().unwrap_or_default(),
        generation: d.metadata.generation.unwrap_or(0),
        observed_generation: status.observed_generation.unwrap_or(0),
        template_version: version_of(
            Some(&spec.template.metadata),
            spec.template.spec.images(),
            vf,
        ),
        replicas: status.desired_number_scheduled,
        // Surplus pods of an old version are caught by the pod check below.
        current_replicas: status.desired_number_scheduled,
        updated_replicas: status.updated_number_scheduled.unwrap_or(0),
        available_replicas: status.number_available.unwrap_or(0),
        paused: false,
        progress_deadline_exceeded: false,
        unfinished: None,
        pods: pod_observations(pods, vf),
    }
}

pub(crate) fn pod_observations(pods: &[Arc<PodFacts>], vf: &VersionFrom) -> Vec<PodObservation> {
    pods.iter()
        // A pod that has finished runs no code; every other one counts, terminating too.
        .filter(|p| !p.finished)
        .map(|p| PodObservation {
            name: p.name.to_string(),
            version: version_of(Some(p.as_ref()), p.spec.images(), vf),
            terminating: p.terminating,
        })
        .collect()
}

/// The version a pod (template) carries, read as `versionFrom` says; `images` are its
/// containers' `(name, image)`.
pub fn version_of<'a, M: Labelled + ?Sized>(
    meta: Option<&M>,
    mut images: impl Iterator<Item = (&'a str, Option<&'a str>)>,
    vf: &VersionFrom,
) -> Option<String> {
    if let Some(key) = &vf.label {
        return meta?.label(key).map(str::to_string);
    }
    if let Some(key) = &vf.annotation {
        return meta?.annotation(key).map(str::to_string);
    }
    if let Some(img) = &vf.image {
        let (_, image) = images.find(|(name, _)| *name == img.container)?;
        return image_tag(image?);
    }
    None
}

/// The tag of an image reference (`repo/name:tag@digest` → `tag`).
pub fn image_tag(image: &str) -> Option<String> {
    let without_digest = image.split('@').next()?;
    let last = without_digest.rsplit('/').next()?;
    last.split_once(':').map(|(_, tag)| tag.to_string())
}

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
    use crate::api::ImageVersion;
    use crate::planner::rollout::evaluate;
    use crate::planner::version::VersionRule;

    #[test]
    fn image_tags() {
        assert_eq!(
            image_tag("registry:5000/shop/api:2.4.0").as_deref(),
            Some("2.4.0")
        );
        assert_eq!(image_tag("api:2.4.0@sha256:abc").as_deref(), Some("2.4.0"));
        assert_eq!(image_tag("registry:5000/shop/api"), None);
    }

    #[test]
    fn version_from_image() {
        let spec: crate::controller::views::PodSpecView = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "sidecar", "image": "envoy:1.0"}, {"name": "api", "image": "shop/api:v2.4.0"}]
        }))
        .expect("pod spec");
        let vf = VersionFrom {
            label: None,
            annotation: None,
            image: Some(ImageVersion {
                container: "api".into(),
            }),
        };
        assert_eq!(
            version_of(
                None::<&k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
                spec.images(),
                &vf
            )
            .as_deref(),
            Some("v2.4.0")
        );
    }

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
