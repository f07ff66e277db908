//! Reads target workloads and their pods, and turns them into the planner's observations.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::ListParams;
use kube::core::Selector;
use kube::{Api, Client};

use crate::api::{TargetKind, TargetSpec, TargetStatus, VersionFrom};
use crate::planner::rollout::{self, PodObservation, WorkloadObservation};

use super::error::{Error, KubeContext};

/// Judge every target of a migration. A target that does not exist, or a selector that
/// matches nothing, yields an incomplete target, never a vacuous success.
pub async fn observe_targets(
    client: &Client,
    namespace: &str,
    targets: &[TargetSpec],
    version_from: &VersionFrom,
    app_version: &str,
) -> Result<Vec<TargetStatus>, Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut out = Vec::new();
    for t in targets {
        let found: Vec<Deployment> = match (&t.name, &t.selector) {
            (Some(name), _) => match deployments.get_opt(name).await.during(format!("reading Deployment {name}"))? {
                Some(d) => vec![d],
                None => {
                    out.push(rollout::missing(t.kind, name.clone(), format!("{} {name} not found in namespace {namespace}", t.kind)));
                    continue;
                }
            },
            (None, Some(sel)) => {
                let selector = to_selector(sel, &describe_selector(sel))?;
                let list = deployments
                    .list(&ListParams::default().labels_from(&selector))
                    .await
                    .during(format!("listing Deployments matching {selector}"))?;
                if list.items.is_empty() {
                    out.push(rollout::missing(t.kind, format!("selector {selector}"), format!("selector {selector} matches no {}", t.kind)));
                    continue;
                }
                list.items
            }
            (None, None) => continue,
        };
        for d in found {
            let obs = observe_deployment(&pods, &d, t.kind, version_from).await?;
            out.push(rollout::evaluate(&obs, app_version));
        }
    }
    Ok(out)
}

async fn observe_deployment(pods: &Api<Pod>, d: &Deployment, kind: TargetKind, vf: &VersionFrom) -> Result<WorkloadObservation, Error> {
    let name = d.metadata.name.clone().ok_or(Error::MissingField("metadata.name"))?;
    let spec = d.spec.as_ref().ok_or(Error::MissingField("spec"))?;
    let selector = to_selector(&spec.selector, &name)?;
    let pod_list = pods.list(&ListParams::default().labels_from(&selector)).await.during(format!("listing pods of Deployment {name}"))?;
    Ok(deployment_observation(d, kind, vf, &pod_list.items))
}

/// The planner's view of a Deployment and its pods (pure).
pub fn deployment_observation(d: &Deployment, kind: TargetKind, vf: &VersionFrom, pods: &[Pod]) -> WorkloadObservation {
    let spec = d.spec.clone().unwrap_or_default();
    let status = d.status.clone().unwrap_or_default();
    let progress_deadline_exceeded = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing" && c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    WorkloadObservation {
        kind,
        name: d.metadata.name.clone().unwrap_or_default(),
        generation: d.metadata.generation.unwrap_or(0),
        observed_generation: status.observed_generation.unwrap_or(0),
        template_version: version_of(spec.template.metadata.as_ref(), spec.template.spec.as_ref(), vf),
        replicas: spec.replicas.unwrap_or(1),
        current_replicas: status.replicas.unwrap_or(0),
        updated_replicas: status.updated_replicas.unwrap_or(0),
        available_replicas: status.available_replicas.unwrap_or(0),
        paused: spec.paused.unwrap_or(false),
        progress_deadline_exceeded,
        pods: pods
            .iter()
            // A pod that has finished runs no code; every other one counts, terminating too.
            .filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
            .map(|p| PodObservation {
                name: p.metadata.name.clone().unwrap_or_default(),
                version: version_of(Some(&p.metadata), p.spec.as_ref(), vf),
                terminating: p.metadata.deletion_timestamp.is_some(),
            })
            .collect(),
    }
}

/// The version a pod (template) carries, read as `versionFrom` says.
pub fn version_of(meta: Option<&ObjectMeta>, spec: Option<&PodSpec>, vf: &VersionFrom) -> Option<String> {
    let empty = BTreeMap::new();
    if let Some(key) = &vf.label {
        return meta.and_then(|m| m.labels.as_ref()).unwrap_or(&empty).get(key).cloned();
    }
    if let Some(key) = &vf.annotation {
        return meta.and_then(|m| m.annotations.as_ref()).unwrap_or(&empty).get(key).cloned();
    }
    if let Some(img) = &vf.image {
        let c = spec?.containers.iter().find(|c| c.name == img.container)?;
        return image_tag(c.image.as_deref()?);
    }
    None
}

/// The tag of an image reference (`repo/name:tag@digest` → `tag`).
pub fn image_tag(image: &str) -> Option<String> {
    let without_digest = image.split('@').next()?;
    let last = without_digest.rsplit('/').next()?;
    last.split_once(':').map(|(_, tag)| tag.to_string())
}

fn to_selector(sel: &LabelSelector, what: &str) -> Result<Selector, Error> {
    Selector::try_from(sel.clone()).map_err(|e| Error::Selector { target: what.to_string(), reason: e.to_string() })
}

fn describe_selector(sel: &LabelSelector) -> String {
    match Selector::try_from(sel.clone()) {
        Ok(s) => s.to_string(),
        Err(_) => "selector".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ImageVersion;

    #[test]
    fn image_tags() {
        assert_eq!(image_tag("registry:5000/shop/api:2.4.0").as_deref(), Some("2.4.0"));
        assert_eq!(image_tag("api:2.4.0@sha256:abc").as_deref(), Some("2.4.0"));
        assert_eq!(image_tag("registry:5000/shop/api"), None);
    }

    #[test]
    fn version_from_image() {
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "sidecar", "image": "envoy:1.0"}, {"name": "api", "image": "shop/api:v2.4.0"}]
        }))
        .expect("pod spec");
        let vf = VersionFrom { label: None, annotation: None, image: Some(ImageVersion { container: "api".into() }) };
        assert_eq!(version_of(None, Some(&spec), &vf).as_deref(), Some("v2.4.0"));
    }
}
