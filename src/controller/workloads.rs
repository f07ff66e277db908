//! Reads target workloads and their pods (from the watch caches or the API server) and judges
//! them; [`super::observations`] turns what it read into the planner's observations.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::ListParams;
use kube::core::Selector;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};

use crate::api::{TargetKind, TargetSpec, TargetStatus, VersionFrom};
use crate::planner::rollout::{self, WorkloadObservation};
use crate::planner::version::VersionRule;

use super::argo::Rollout;
use super::cache::Caches;
use super::error::{Error, KubeContext};
use super::labels::{LabelQuery, Labels};
use super::observations::{
    daemonset_observation, deployment_observation, rollout_observation, statefulset_observation,
};
use super::views::{DaemonSetView, DeploymentView, PodFacts, PodView, StatefulSetView};

/// Where targets are read from: the watch caches (every reconcile), or the API server (a
/// quorum read, once, right before the contract Job is created; the caches only tell which
/// pods to list).
#[derive(Clone, Copy)]
pub enum Source<'a> {
    Cache(&'a Caches),
    Api(&'a Client, &'a Caches),
}

/// Judge every target of a migration. A target that does not exist, or a selector that
/// matches nothing, yields an incomplete target, never a vacuous success.
///
/// Pods are read first, workloads second: a rollback that lands between the two reads shows
/// in the workload's template, whereas workload-first could miss the old pods the rollback
/// has not created yet. From the API server, only the pods of the targets' workloads are
/// listed, by the selectors the caches know (workload selectors are immutable); should a
/// workload turn up whose selector was not listed, every pod of the namespace is read again
/// and the targets judged anew, pods first.
pub async fn observe_targets(
    source: Source<'_>,
    namespace: &str,
    targets: &[TargetSpec],
    version_from: &VersionFrom,
    rule: &VersionRule,
    rollouts_installed: bool,
) -> Result<Vec<TargetStatus>, Error> {
    let judge = Judge {
        source,
        namespace,
        targets,
        version_from,
        rule,
        rollouts_installed,
    };
    match source {
        Source::Cache(c) => Ok(judge.run(&Pods::Cached(c), None).await?.0),
        Source::Api(client, caches) => {
            let pods: Api<PodView> = Api::namespaced(client.clone(), namespace);
            if let Some(selectors) =
                cached_selectors(caches, namespace, targets, rollouts_installed).await?
            {
                // The LISTs at once: the gate waits for the slowest, not the sum.
                let lists =
                    futures::future::try_join_all(pod_lists(&selectors).iter().map(|sel| {
                        let pods = &pods;
                        async move {
                            pods.list(&ListParams::default().labels(sel))
                                .await
                                .during(format!("listing pods matching {sel} in {namespace}"))
                        }
                    }))
                    .await?;
                let mut seen = std::collections::HashSet::new();
                let listed: Vec<_> = lists
                    .into_iter()
                    .flat_map(|l| l.items)
                    .filter(|p| seen.insert(p.uid()))
                    .map(|p| p.pod)
                    .collect();
                let (out, complete) = judge.run(&Pods::Listed(listed), Some(&selectors)).await?;
                if complete {
                    return Ok(out);
                }
            }
            let all = pods
                .list(&ListParams::default())
                .await
                .during(format!("listing pods in {namespace}"))?
                .items
                .into_iter()
                .map(|p| p.pod)
                .collect();
            Ok(judge.run(&Pods::Listed(all), None).await?.0)
        }
    }
}

/// The pods a judgement reads: the indexed cache, or what the API server listed.
enum Pods<'a> {
    Cached(&'a Caches),
    Listed(Vec<Arc<PodFacts>>),
}

impl Pods<'_> {
    fn matching(&self, namespace: &str, selector: &Selector) -> Vec<Arc<PodFacts>> {
        let query = LabelQuery::from(selector);
        match self {
            Pods::Cached(c) => c.pods.matching(namespace, &query),
            Pods::Listed(pods) => pods
                .iter()
                .filter(|p| query.matches(&p.labels))
                .cloned()
                .collect(),
        }
    }
}

/// The pod selectors of the targets' workloads as the caches know them; `None` when a target
/// has no cached workload (then every pod of the namespace is listed).
async fn cached_selectors(
    caches: &Caches,
    namespace: &str,
    targets: &[TargetSpec],
    rollouts_installed: bool,
) -> Result<Option<Selectors>, Error> {
    let mut out = Selectors::new();
    for t in targets {
        let found = find(Source::Cache(caches), namespace, t, rollouts_installed).await?;
        let Found::Workloads(workloads) = found else {
            return Ok(None);
        };
        for w in workloads {
            let sel = to_selector(&w.selector, &format!("{} {}", t.kind, w.name))?;
            // An empty selector selects every pod: list them all.
            if sel.selects_all() {
                return Ok(None);
            }
            out.insert(sel.to_string(), sel);
        }
    }
    Ok(Some(out))
}

/// Pod selectors by their string form.
type Selectors = std::collections::BTreeMap<String, Selector>;

/// The label selectors that list the pods of `selectors` (as strings): one selector each, or,
/// when every one is a single `key=value` on the same key (`app=api`, `app=worker`), one
/// `key in (…)` for all. The API server then filters a namespace's pods once per gate instead
/// of once per target (the quorum read is most of the time a gate takes to open under load).
fn pod_lists(selectors: &Selectors) -> Vec<String> {
    use kube::core::Expression;
    let one_per_selector = || selectors.keys().cloned().collect();
    let mut key: Option<String> = None;
    let mut values = std::collections::BTreeSet::new();
    for sel in selectors.values() {
        let mut exprs = sel.clone().into_iter();
        let (Some(Expression::Equal(k, v)), None) = (exprs.next(), exprs.next()) else {
            return one_per_selector();
        };
        if key.get_or_insert_with(|| k.clone()) != &k {
            return one_per_selector();
        }
        values.insert(v);
    }
    match key {
        Some(k) if values.len() > 1 => vec![Selector::from(Expression::In(k, values)).to_string()],
        _ => one_per_selector(),
    }
}

/// The workloads a target names or selects, read from `source`.
async fn find(
    source: Source<'_>,
    namespace: &str,
    t: &TargetSpec,
    rollouts_installed: bool,
) -> Result<Found, Error> {
    Ok(match t.kind {
        TargetKind::Deployment => fetch::<DeploymentView>(source, namespace, t).await?,
        TargetKind::StatefulSet => fetch::<StatefulSetView>(source, namespace, t).await?,
        TargetKind::DaemonSet => fetch::<DaemonSetView>(source, namespace, t).await?,
        TargetKind::Rollout if !rollouts_installed => Found::Missing(rollout::missing(
            t.kind,
            t.name.clone().unwrap_or_else(|| "selector".into()),
            "Argo Rollouts is not installed (no rollouts.argoproj.io API), or the operator \
             started before it was: install it, then restart the operator",
        )),
        TargetKind::Rollout => fetch::<Rollout>(source, namespace, t).await?,
    })
}

/// A target workload's identity: what its revision history is read by
/// (src/controller/history.rs).
pub struct WorkloadId {
    pub kind: TargetKind,
    pub name: String,
    pub uid: String,
    pub selector: Selector,
}

/// Every workload the targets name or select, read from `source` (targets not found are
/// left out: the rollout gate is closed for them anyway).
pub async fn workload_ids(
    source: Source<'_>,
    namespace: &str,
    targets: &[TargetSpec],
    rollouts_installed: bool,
) -> Result<Vec<WorkloadId>, Error> {
    let found = futures::future::try_join_all(
        targets
            .iter()
            .map(|t| find(source, namespace, t, rollouts_installed)),
    )
    .await?;
    let mut out = Vec::new();
    for (t, found) in targets.iter().zip(found) {
        let Found::Workloads(workloads) = found else {
            continue;
        };
        for w in workloads {
            let selector = to_selector(&w.selector, &format!("{} {}", t.kind, w.name))?;
            out.push(WorkloadId {
                kind: t.kind,
                name: w.name,
                uid: w.uid,
                selector,
            });
        }
    }
    Ok(out)
}

/// What judging a migration's targets needs besides the pods.
struct Judge<'a> {
    source: Source<'a>,
    namespace: &'a str,
    targets: &'a [TargetSpec],
    version_from: &'a VersionFrom,
    rule: &'a VersionRule,
    rollouts_installed: bool,
}

impl Judge<'_> {
    /// Judges the targets on `pods`. With `listed` (the selectors `pods` were listed by), also
    /// says whether every workload found was covered by them (`false`: judge again on every pod).
    async fn run(
        &self,
        pods: &Pods<'_>,
        listed: Option<&Selectors>,
    ) -> Result<(Vec<TargetStatus>, bool), Error> {
        let Judge {
            source,
            namespace,
            targets,
            version_from,
            rule,
            rollouts_installed,
        } = *self;
        // After the pods (see `Source::Api`), every target's workloads at once.
        let found = futures::future::try_join_all(
            targets
                .iter()
                .map(|t| find(source, namespace, t, rollouts_installed)),
        )
        .await?;
        let mut out = Vec::new();
        for (t, found) in targets.iter().zip(found) {
            let workloads = match found {
                Found::Workloads(w) => w,
                Found::Missing(status) => {
                    out.push(status);
                    continue;
                }
            };
            for w in workloads {
                let selector = to_selector(&w.selector, &format!("{} {}", t.kind, w.name))?;
                if listed.is_some_and(|l| !l.contains_key(&selector.to_string())) {
                    return Ok((out, false));
                }
                let matched = pods.matching(namespace, &selector);
                let obs = (w.observe)(version_from, &matched);
                out.push(rollout::evaluate(&obs, rule));
            }
        }
        Ok((out, true))
    }
}

/// Turns a found workload and its pods into the planner's observation.
type Observe = Box<dyn Fn(&VersionFrom, &[Arc<PodFacts>]) -> WorkloadObservation + Send>;

/// A workload found for a target, ready to be judged once its pods are listed.
struct FoundWorkload {
    name: String,
    uid: String,
    selector: LabelSelector,
    observe: Observe,
}

enum Found {
    Workloads(Vec<FoundWorkload>),
    Missing(TargetStatus),
}

/// The workload kinds Phasegate can judge.
trait Workload:
    kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    const KIND: TargetKind;
    fn cache(c: &Caches) -> &Store<Self>;
    fn selector(&self) -> Option<LabelSelector>;
    /// The workload's own labels (a view keeps them outside `metadata`).
    fn workload_labels(&self) -> std::borrow::Cow<'_, Labels>;
    fn observation(&self, vf: &VersionFrom, pods: &[Arc<PodFacts>]) -> WorkloadObservation;
}

macro_rules! workload {
    ($ty:ty, $kind:expr, $cache:ident, $observe:path) => {
        impl Workload for $ty {
            const KIND: TargetKind = $kind;
            fn cache(c: &Caches) -> &Store<Self> {
                &c.$cache
            }
            fn selector(&self) -> Option<LabelSelector> {
                self.spec.selector.as_ref().map(|s| s.to_label_selector())
            }
            fn workload_labels(&self) -> std::borrow::Cow<'_, Labels> {
                std::borrow::Cow::Borrowed(&self.labels)
            }
            fn observation(&self, vf: &VersionFrom, pods: &[Arc<PodFacts>]) -> WorkloadObservation {
                $observe(self, vf, pods)
            }
        }
    };
}

workload!(
    DeploymentView,
    TargetKind::Deployment,
    deployments,
    deployment_observation
);
workload!(
    StatefulSetView,
    TargetKind::StatefulSet,
    statefulsets,
    statefulset_observation
);
workload!(
    DaemonSetView,
    TargetKind::DaemonSet,
    daemonsets,
    daemonset_observation
);

impl Workload for Rollout {
    const KIND: TargetKind = TargetKind::Rollout;
    fn cache(c: &Caches) -> &Store<Self> {
        &c.rollouts
    }
    fn selector(&self) -> Option<LabelSelector> {
        self.spec.selector.clone()
    }
    fn workload_labels(&self) -> std::borrow::Cow<'_, Labels> {
        std::borrow::Cow::Owned(Labels::from(self.labels()))
    }
    fn observation(&self, vf: &VersionFrom, pods: &[Arc<PodFacts>]) -> WorkloadObservation {
        rollout_observation(self, vf, pods)
    }
}

async fn fetch<K: Workload>(
    source: Source<'_>,
    namespace: &str,
    t: &TargetSpec,
) -> Result<Found, Error> {
    let kind = K::KIND;
    let items: Vec<K> = match (&t.name, &t.selector) {
        (Some(name), _) => match get::<K>(source, namespace, name).await? {
            Some(w) => vec![w],
            None => {
                return Ok(Found::Missing(rollout::missing(
                    kind,
                    name.clone(),
                    format!("{kind} {name} not found in namespace {namespace}"),
                )));
            }
        },
        (None, Some(sel)) => {
            let selector = to_selector(sel, &format!("{kind} target"))?;
            let items = list::<K>(source, namespace, &selector).await?;
            if items.is_empty() {
                return Ok(Found::Missing(rollout::missing(
                    kind,
                    format!("selector {selector}"),
                    format!("selector {selector} matches no {kind}"),
                )));
            }
            items
        }
        (None, None) => {
            return Ok(Found::Missing(rollout::missing(
                kind,
                "?",
                "target names neither name nor selector",
            )))
        }
    };
    let mut out = Vec::new();
    for w in items {
        let name = w
            .meta()
            .name
            .clone()
            .ok_or(Error::MissingField("metadata.name"))?;
        let selector = w.selector().ok_or(Error::MissingField("spec.selector"))?;
        let uid = w.meta().uid.clone().unwrap_or_default();
        out.push(FoundWorkload {
            name,
            uid,
            selector,
            observe: Box::new(move |vf, pods| w.observation(vf, pods)),
        });
    }
    Ok(Found::Workloads(out))
}

async fn get<K: Workload>(
    source: Source<'_>,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, Error> {
    match source {
        Source::Cache(c) => Ok(K::cache(c)
            .get(&ObjectRef::new(name).within(namespace))
            .map(|w| w.as_ref().clone())),
        Source::Api(client, _) => Api::<K>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await
            .during(format!("reading {} {name}", K::KIND)),
    }
}

async fn list<K: Workload>(
    source: Source<'_>,
    namespace: &str,
    selector: &Selector,
) -> Result<Vec<K>, Error> {
    match source {
        Source::Cache(c) => {
            let query = LabelQuery::from(selector);
            Ok(K::cache(c)
                .state()
                .iter()
                .filter(|w| w.meta().namespace.as_deref() == Some(namespace))
                .filter(|w| query.matches(&w.workload_labels()))
                .map(|w| w.as_ref().clone())
                .collect())
        }
        Source::Api(client, _) => Ok(Api::<K>::namespaced(client.clone(), namespace)
            .list(&ListParams::default().labels_from(selector))
            .await
            .during(format!("listing {}s matching {selector}", K::KIND))?
            .items),
    }
}

fn to_selector(sel: &LabelSelector, what: &str) -> Result<Selector, Error> {
    Selector::try_from(sel.clone()).map_err(|e| Error::Selector {
        target: what.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_of_single_equality_selectors_on_one_key_are_listed_at_once() {
        let set = |v: &[serde_json::Value]| -> Selectors {
            v.iter()
                .map(|j| {
                    let ls: LabelSelector = serde_json::from_value(j.clone()).expect("selector");
                    let s = Selector::try_from(ls).expect("valid");
                    (s.to_string(), s)
                })
                .collect()
        };
        let labels = |l: serde_json::Value| serde_json::json!({ "matchLabels": l });
        let (api, worker) = (
            labels(serde_json::json!({"app": "api"})),
            labels(serde_json::json!({"app": "worker"})),
        );
        assert_eq!(
            pod_lists(&set(&[api.clone(), worker.clone()])),
            ["app in (api,worker)"]
        );
        // Anything else: one LIST per selector.
        for v in [
            vec![api.clone(), labels(serde_json::json!({"tier": "web"}))],
            vec![
                labels(serde_json::json!({"app": "api", "tier": "web"})),
                worker.clone(),
            ],
            vec![
                serde_json::json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]}),
                worker.clone(),
            ],
            vec![
                serde_json::json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]}),
                worker.clone(),
            ],
            vec![api.clone()],
            vec![],
        ] {
            let s = set(&v);
            assert_eq!(
                pod_lists(&s),
                s.keys().cloned().collect::<Vec<_>>(),
                "{v:?}"
            );
        }
    }
}
