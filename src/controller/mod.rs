//! The Kubernetes side: watch DatabaseMigrations, their Jobs, target workloads and pods;
//! observe, plan (see [`crate::planner`]), apply.

pub mod error;
pub mod jobs;
mod reconcile;
pub mod workloads;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::core::Selector;
use kube::core::SelectorExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use crate::api::{
    DatabaseMigration, Phase, TargetKind, ANNOTATION_MIGRATION, LABEL_EXECUTOR, LABEL_MIGRATION,
};
use crate::leader::Shutdown;
use crate::metrics::Metrics;
use crate::server::Health;

pub use error::Error;
pub use jobs::{ExecutorConfig, ExecutorPod};

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    pub executor: ExecutorConfig,
}

/// Shared state of every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub config: Config,
    pub metrics: Arc<Metrics>,
}

/// What the controller reports to and stops on.
#[derive(Clone)]
pub struct Ops {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// The controller drains in-flight reconciles and returns once this resolves.
    pub shutdown: Shutdown,
}

/// Run the controller until `ops.shutdown` resolves. Ticks `ops.health` from the task that
/// drives the controller, marks it synced once the migration cache is, and hands that cache to
/// `ops.metrics`.
pub async fn run(client: Client, config: Config, ops: Ops) -> anyhow::Result<()> {
    let api = |c: &Client| -> Api<DatabaseMigration> {
        match &config.namespace {
            Some(ns) => Api::namespaced(c.clone(), ns),
            None => Api::all(c.clone()),
        }
    };
    let migrations = api(&client);
    if let Err(e) = migrations
        .list(&kube::api::ListParams::default().limit(1))
        .await
    {
        anyhow::bail!("cannot list DatabaseMigrations (is the CRD installed? `phasegate crd | kubectl apply --server-side -f -`): {e}");
    }
    let jobs: Api<Job> = scoped(&client, &config.namespace);
    let deployments: Api<Deployment> = scoped(&client, &config.namespace);
    let statefulsets: Api<StatefulSet> = scoped(&client, &config.namespace);
    let daemonsets: Api<DaemonSet> = scoped(&client, &config.namespace);
    let pods: Api<Pod> = scoped(&client, &config.namespace);

    let reporter = Reporter {
        controller: "phasegate".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        config,
        metrics: ops.metrics.clone(),
    });

    let controller = Controller::new(migrations, watcher::Config::default().any_semantic());
    let store = controller.store();
    ops.metrics.set_store(Some(store.clone()));
    let (s1, s2, s3, pod_store) = (store.clone(), store.clone(), store.clone(), store.clone());
    let reconciling = controller
        .owns(jobs, watcher::Config::default().labels(LABEL_EXECUTOR))
        .watches(deployments, watcher::Config::default(), move |w| {
            migrations_targeting(&s1, TargetKind::Deployment, &w)
        })
        .watches(statefulsets, watcher::Config::default(), move |w| {
            migrations_targeting(&s2, TargetKind::StatefulSet, &w)
        })
        .watches(daemonsets, watcher::Config::default(), move |w| {
            migrations_targeting(&s3, TargetKind::DaemonSet, &w)
        })
        .watches(pods, watcher::Config::default(), move |p| {
            migrations_waiting_in(&pod_store, &p)
        })
        .graceful_shutdown_on(ops.shutdown.clone())
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(migration = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile failed"),
            }
        });
    let synced = async {
        if store.wait_until_ready().await.is_ok() {
            ops.health.set_synced(true);
            tracing::info!("migration cache synced; reconciling");
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = reconciling => {}
        _ = synced => {}
        _ = ops.health.keep_alive() => {}
    }
    ops.metrics.set_store(None);
    ops.health.set_synced(false);
    Ok(())
}

fn scoped<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The migrations whose targets name or select this workload.
fn migrations_targeting<K: kube::Resource>(
    store: &Store<DatabaseMigration>,
    kind: TargetKind,
    w: &K,
) -> Vec<ObjectRef<DatabaseMigration>> {
    let ns = w.namespace();
    let name = w.name_any();
    let labels = w.labels();
    store
        .state()
        .iter()
        .filter(|m| m.namespace() == ns)
        .filter(|m| {
            m.spec
                .rollout
                .targets
                .iter()
                .filter(|t| t.kind == kind)
                .any(|t| match (&t.name, &t.selector) {
                    (Some(n), _) => *n == name,
                    (None, Some(sel)) => {
                        Selector::try_from(sel.clone()).is_ok_and(|s| s.matches(labels))
                    }
                    _ => false,
                })
        })
        .map(|m| ObjectRef::from_obj(m.as_ref()))
        .collect()
}

/// The migrations of a pod's namespace that still wait on a rollout or run contract: a pod's
/// arrival or departure (terminating pods included) can open their gate, or close it.
fn migrations_waiting_in(
    store: &Store<DatabaseMigration>,
    p: &Pod,
) -> Vec<ObjectRef<DatabaseMigration>> {
    if p.labels().contains_key(LABEL_EXECUTOR) {
        // An executor pod wakes its own migration: a stuck pod (missing Secret, bad image)
        // changes no Job status, but the migration's status should say why it waits.
        let name = p
            .annotations()
            .get(ANNOTATION_MIGRATION)
            .or_else(|| p.labels().get(LABEL_MIGRATION));
        return match (name, p.namespace()) {
            (Some(name), Some(ns)) => vec![ObjectRef::new(name).within(&ns)],
            _ => Vec::new(),
        };
    }
    let ns = p.namespace();
    store
        .state()
        .iter()
        .filter(|m| m.namespace() == ns)
        .filter(|m| {
            matches!(
                m.status.as_ref().and_then(|s| s.phase),
                Some(
                    Phase::AwaitingRollout
                        | Phase::Soaking
                        | Phase::AwaitingApproval
                        | Phase::Contracting
                )
            )
        })
        .map(|m| ObjectRef::from_obj(m.as_ref()))
        .collect()
}

/// Requeue used after an error.
pub(crate) fn backoff(_: &Error) -> Action {
    Action::requeue(Duration::from_secs(10))
}
