//! How executor Jobs are run, as the operator is configured: the executor image, the admin's
//! pod settings for every executor Job, the Job template policy and the grant URL.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodTemplateSpec, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// How executor Jobs are run.
#[derive(Clone, Debug, Default)]
pub struct ExecutorConfig {
    /// Image holding the `phasegate` binary, for inline `sql`.
    pub image: String,
    /// What user-supplied `job` templates may ask for (set by the cluster admin).
    pub job_policy: crate::policy::JobPolicy,
    /// Pod settings the cluster admin gives every executor Job.
    pub pod: ExecutorPod,
    /// Where contract executors ask the operator for their commit grant.
    pub grant_url: String,
}

/// Pod settings the cluster admin gives every executor Job, Phasegate's own (inline `sql`)
/// and those built from a migration's `job` template alike: where they may run and what they
/// may use (chart value `executor.pod`, passed as JSON in `PHASEGATE_EXECUTOR_POD`).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ExecutorPod {
    /// Merged into the pod's nodeSelector; the admin's keys win over a template's.
    pub node_selector: BTreeMap<String, String>,
    /// Added to the pod's tolerations.
    pub tolerations: Vec<Toleration>,
    /// Pod annotations (e.g. `sidecar.istio.io/inject: "false"`); the admin's keys win.
    pub annotations: BTreeMap<String, String>,
    /// The pod's priorityClassName (empty: none set; a template's own is replaced).
    pub priority_class_name: String,
    /// Resources of Phasegate's executor container, and of every container of a `job`
    /// template that sets none itself.
    pub resources: Option<ResourceRequirements>,
}

impl ExecutorPod {
    /// Parse the JSON (or YAML) the chart renders; empty text is "no settings".
    pub fn from_json(text: &str) -> Result<ExecutorPod, String> {
        if text.trim().is_empty() {
            return Ok(ExecutorPod::default());
        }
        let mut pod: ExecutorPod = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        // The chart's default `resources: {}` sets nothing.
        if pod.resources == Some(ResourceRequirements::default()) {
            pod.resources = None;
        }
        for (k, v) in pod.node_selector.iter().chain(&pod.annotations) {
            if k.is_empty() {
                return Err(format!("an empty key (value {v:?})"));
            }
        }
        Ok(pod)
    }

    /// Apply the settings to an executor pod template.
    pub(super) fn apply(&self, template: &mut PodTemplateSpec) {
        if !self.annotations.is_empty() {
            template
                .metadata
                .get_or_insert_with(ObjectMeta::default)
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .extend(self.annotations.clone());
        }
        let Some(ps) = template.spec.as_mut() else {
            return;
        };
        if !self.node_selector.is_empty() {
            ps.node_selector
                .get_or_insert_with(BTreeMap::new)
                .extend(self.node_selector.clone());
        }
        if !self.tolerations.is_empty() {
            let tolerations = ps.tolerations.get_or_insert_with(Vec::new);
            for t in &self.tolerations {
                if !tolerations.contains(t) {
                    tolerations.push(t.clone());
                }
            }
        }
        if !self.priority_class_name.is_empty() {
            ps.priority_class_name = Some(self.priority_class_name.clone());
            // The admission plugin fills the priority from the class; a stale one is refused.
            ps.priority = None;
        }
        if let Some(resources) = &self.resources {
            for c in &mut ps.containers {
                if c.resources.is_none() {
                    c.resources = Some(resources.clone());
                }
            }
        }
    }
}
