//! Optional part of a plan (`--kubeconfig`): which workloads will gate contract — the
//! migration's `spec.rollout.targets`, looked up in the cluster, with the version each one
//! runs now. Read-only: it lists workloads and changes nothing.

use std::path::PathBuf;

use kube::api::{Api, DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind, Selector};
use kube::{Client, Config, ResourceExt};

use super::input::MigrationInput;
use super::{MigrationPlan, PlanError};
use crate::api::{TargetKind, TargetSpec, VersionFrom};

#[derive(Debug, Clone)]
pub struct KubeArgs {
    pub kubeconfig: PathBuf,
    pub context: Option<String>,
    /// Overrides the migration's `metadata.namespace`.
    pub namespace: Option<String>,
}

/// One target of `spec.rollout.targets` and the workloads it names or selects.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetPlan {
    pub kind: TargetKind,
    /// `name` or `selector app=shop`.
    pub target: String,
    pub namespace: String,
    pub workloads: Vec<WorkloadNow>,
    /// What this means for contract.
    pub gate: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkloadNow {
    pub name: String,
    /// The version its pod template carries now (as `versionFrom` says), if any.
    pub version: Option<String>,
}

/// Fills `targets` of every planned migration that has a rollout.
pub async fn attach(
    args: &KubeArgs,
    inputs: &[MigrationInput],
    plans: &mut [MigrationPlan],
) -> Result<(), PlanError> {
    let (client, default_ns) = client(args).await?;
    for (m, plan) in inputs.iter().zip(plans.iter_mut()) {
        let Some(rollout) = &m.rollout else { continue };
        let ns = args
            .namespace
            .clone()
            .or_else(|| m.namespace.clone())
            .unwrap_or_else(|| default_ns.clone());
        let mut out = Vec::new();
        for t in &rollout.targets {
            let workloads = lookup(&client, &ns, t, &rollout.version_from).await?;
            out.push(TargetPlan {
                kind: t.kind,
                target: describe(t),
                namespace: ns.clone(),
                gate: gate(&workloads, m.app_version.as_deref().unwrap_or("")),
                workloads,
            });
        }
        plan.targets = Some(out);
    }
    Ok(())
}

fn gate(workloads: &[WorkloadNow], app_version: &str) -> String {
    if workloads.is_empty() {
        return "not found: contract would wait until it exists (a typo?)".into();
    }
    format!("contract waits until these run {app_version} (or newer) with no older pod left")
}

fn describe(t: &TargetSpec) -> String {
    match (&t.name, &t.selector) {
        (Some(n), _) => n.clone(),
        (None, Some(s)) => match Selector::try_from(s.clone()) {
            Ok(sel) => format!("selector {sel}"),
            Err(e) => format!("invalid selector: {e}"),
        },
        (None, None) => "(no name or selector)".into(),
    }
}

async fn lookup(
    client: &Client,
    ns: &str,
    t: &TargetSpec,
    vf: &VersionFrom,
) -> Result<Vec<WorkloadNow>, PlanError> {
    let (group, version, plural) = match t.kind {
        TargetKind::Deployment => ("apps", "v1", "deployments"),
        TargetKind::StatefulSet => ("apps", "v1", "statefulsets"),
        TargetKind::DaemonSet => ("apps", "v1", "daemonsets"),
        TargetKind::Rollout => ("argoproj.io", "v1alpha1", "rollouts"),
    };
    let gvk = GroupVersionKind::gvk(group, version, t.kind.as_str());
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    );
    let err = |e: kube::Error| PlanError::Kube(format!("reading {}s in {ns}: {e}", t.kind));
    let found: Vec<DynamicObject> = match (&t.name, &t.selector) {
        (Some(name), _) => api.get_opt(name).await.map_err(err)?.into_iter().collect(),
        (None, Some(sel)) => {
            let sel = Selector::try_from(sel.clone())
                .map_err(|e| PlanError::Kube(format!("target selector: {e}")))?;
            api.list(&ListParams::default().labels(&sel.to_string()))
                .await
                .map_err(err)?
                .items
        }
        (None, None) => Vec::new(),
    };
    Ok(found
        .iter()
        .map(|o| WorkloadNow {
            name: o.name_any(),
            version: template_version(&o.data, vf),
        })
        .collect())
}

/// The version in `spec.template`, read as `versionFrom` says.
fn template_version(data: &serde_json::Value, vf: &VersionFrom) -> Option<String> {
    let template = data.pointer("/spec/template")?;
    let meta = |field: &str, key: &str| {
        template
            .pointer(&format!("/metadata/{field}"))?
            .get(key)?
            .as_str()
            .map(str::to_string)
    };
    if let Some(k) = &vf.label {
        return meta("labels", k);
    }
    if let Some(k) = &vf.annotation {
        return meta("annotations", k);
    }
    let wanted = &vf.image.as_ref()?.container;
    template
        .pointer("/spec/containers")?
        .as_array()?
        .iter()
        .find(|c| c.get("name").and_then(|n| n.as_str()) == Some(wanted))
        .and_then(|c| c.get("image")?.as_str())
        .and_then(crate::controller::observations::image_tag)
}

async fn client(args: &KubeArgs) -> Result<(Client, String), PlanError> {
    let kc = Kubeconfig::read_from(&args.kubeconfig).map_err(|e| {
        PlanError::Kube(format!(
            "cannot read kubeconfig {}: {e}",
            args.kubeconfig.display()
        ))
    })?;
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let config = Config::from_custom_kubeconfig(kc, &options)
        .await
        .map_err(|e| PlanError::Kube(format!("cannot use the kubeconfig: {e}")))?;
    let ns = config.default_namespace.clone();
    let client = Client::try_from(config)
        .map_err(|e| PlanError::Kube(format!("cannot build a Kubernetes client: {e}")))?;
    Ok((client, ns))
}
