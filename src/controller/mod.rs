//! The Kubernetes side: watch DatabaseMigrations, their Jobs, target workloads and pods;
//! observe, plan (see [`crate::planner`]), apply.

pub mod argo;
pub mod cache;
mod context;
pub mod error;
pub mod fence;
pub mod history;
pub mod jobs;
pub mod labels;
pub mod observations;
pub mod pod_index;
mod recalls;
mod reconcile;
mod status_writes;
#[cfg(test)]
mod test_support;
pub mod views;
mod wakes;
pub mod workloads;

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use kube::core::Selector;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};

use crate::api::{
    DatabaseMigration, Phase, TargetKind, ANNOTATION_MIGRATION, LABEL_EXECUTOR, LABEL_MIGRATION,
};
use crate::leader::Shutdown;
use crate::metrics::Metrics;
use crate::server::Health;

pub use context::{Config, Context};
pub use error::Error;
pub use jobs::{ExecutorConfig, ExecutorPod};
use labels::{LabelQuery, Labels};
use views::{DaemonSetView, DeploymentView, PodView, StatefulSetView};

/// What the controller reports to and stops on.
#[derive(Clone)]
pub struct Ops {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// The controller drains in-flight reconciles and returns once this resolves.
    pub shutdown: Shutdown,
    /// Answers executors' commit grant requests while this controller runs.
    pub grants: Arc<fence::GrantDesk>,
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
    let jobs: Api<views::JobView> = scoped(&client, &config.namespace);
    let deployments: Api<DeploymentView> = scoped(&client, &config.namespace);
    let statefulsets: Api<StatefulSetView> = scoped(&client, &config.namespace);
    let daemonsets: Api<DaemonSetView> = scoped(&client, &config.namespace);
    let pods: Api<PodView> = scoped(&client, &config.namespace);
    let executor_pods: Api<views::ExecutorPodView> = scoped(&client, &config.namespace);

    // Every watched kind is cached with only what the planner reads (pods and workloads as
    // views, see `views.rs`); the initial lists may be served from the API server's watch
    // cache (any semantic), in pages.
    let wc = || watcher::Config::default().any_semantic().page_size(500);
    let not_executor = format!("!{LABEL_EXECUTOR}");
    // Small pages for migrations: an author may make one up to the API server's object limit
    // (about 1.5 MiB; the cache prunes it after decoding), and a page is held whole.
    let (migration_store, migration_stream) = cached(
        migrations,
        wc().page_size(MIGRATION_PAGE_SIZE),
        cache::prune_migration,
    );
    let (wake, woken) = tokio::sync::mpsc::unbounded_channel();
    let wakes = wakes::PhaseWakes::new(migration_store.clone(), wake);
    let migration_stream = migration_stream.applied_objects().map_ok(move |m| {
        wakes.seen(&m);
        m
    });
    let (job_store, job_stream) = cached(jobs, wc().labels(LABEL_EXECUTOR), |_| ());
    let pod_cache = pod_index::PodCache::default();
    let pod_stream = {
        let cache = pod_cache.clone();
        watcher(pods, wc().labels(&not_executor))
            .default_backoff()
            .map_ok(move |event| {
                cache.apply(&event);
                event
            })
    };
    // Finished executor pods stay cached (as views, ~1 KB each while their Job exists): caching only
    // running ones made each finished Job's reconcile list its pods from the API server, and
    // those LISTs held reconcile slots at the end of a wave (reaction p99 1.2 s -> 7 s,
    // docs/scale.md).
    let (executor_pod_store, executor_pod_stream) =
        cached(executor_pods, wc().labels(LABEL_EXECUTOR), |_| ());
    let (deployment_store, deployment_stream) = cached(deployments, wc(), |_| ());
    let (statefulset_store, statefulset_stream) = cached(statefulsets, wc(), |_| ());
    let (daemonset_store, daemonset_stream) = cached(daemonsets, wc(), |_| ());
    let (job_stream, pod_stream) = (job_stream.touched_objects(), pod_stream.touched_objects());
    let executor_pod_stream = executor_pod_stream.touched_objects();
    let deployment_stream = deployment_stream.touched_objects();
    let statefulset_stream = statefulset_stream.touched_objects();
    let daemonset_stream = daemonset_stream.touched_objects();
    // Argo Rollouts is optional: watch Rollouts only where its API exists (a watch on a
    // missing API would keep the caches from ever syncing).
    let rollouts: Api<argo::Rollout> = scoped(&client, &config.namespace);
    let rollouts_installed = match rollouts
        .list(&kube::api::ListParams::default().limit(1))
        .await
    {
        Ok(_) => true,
        Err(kube::Error::Api(e)) if e.code == 404 => false,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list Argo Rollouts; Rollout targets will not be judged");
            false
        }
    };
    let (rollout_store, rollout_stream) = if rollouts_installed {
        let (store, events) = cached(rollouts, wc(), cache::prune_rollout);
        (store, events.touched_objects().boxed())
    } else {
        // Never filled, and ready: nothing waits for it.
        let (store, mut w) = reflector::store();
        w.apply_watcher_event(&watcher::Event::Init);
        w.apply_watcher_event(&watcher::Event::InitDone);
        (store, futures::stream::pending().boxed())
    };
    let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
    let caches = cache::Caches {
        migrations: migration_store.clone(),
        jobs: job_store,
        pods: pod_cache,
        executor_pods: executor_pod_store,
        deployments: deployment_store,
        statefulsets: statefulset_store,
        daemonsets: daemonset_store,
        rollouts: rollout_store,
        rollouts_installed,
        synced: synced_rx,
    };

    let reporter = Reporter {
        controller: "phasegate".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        config,
        metrics: ops.metrics.clone(),
        caches: caches.clone(),
        shutdown: ops.shutdown.clone(),
        failures: Default::default(),
        status_writes: Default::default(),
        history_checked: Default::default(),
        created_jobs: Default::default(),
        recalls: Default::default(),
    });

    ops.grants.open(ctx.clone());
    let store = migration_store.clone();
    ops.metrics.set_store(Some(store.clone()));
    let (s1, s2, s3, s4) = (store.clone(), store.clone(), store.clone(), store.clone());
    let for_pods = caches.clone();
    let caches_ready = caches.clone();
    let reconciling = Controller::for_stream(migration_stream, migration_store)
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .owns_stream(job_stream)
        .watches_stream(deployment_stream, move |w| {
            migrations_targeting(&s1, TargetKind::Deployment, &w, &w.labels)
        })
        .watches_stream(statefulset_stream, move |w| {
            migrations_targeting(&s2, TargetKind::StatefulSet, &w, &w.labels)
        })
        .watches_stream(daemonset_stream, move |w| {
            migrations_targeting(&s3, TargetKind::DaemonSet, &w, &w.labels)
        })
        .watches_stream(rollout_stream, move |w| {
            migrations_targeting(&s4, TargetKind::Rollout, &w, &Labels::from(w.labels()))
        })
        .watches_stream(pod_stream, move |p| migrations_waiting_on(&for_pods, &p))
        .watches_stream(executor_pod_stream, |p| executor_pod_migration(&p))
        // Migrations another one's phase change may let go (wakes.rs).
        .reconcile_on(futures::stream::unfold(woken, |mut rx| async move {
            rx.recv().await.map(|r| (r, rx))
        }))
        .graceful_shutdown_on(ops.shutdown.clone())
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(migration = %obj, "reconciled"),
                // A watch that keeps failing (e.g. RBAC lost for a kind) keeps the caches
                // from syncing: every reconcile waits, and /readyz says not synced.
                Err(controller::Error::QueueError(e)) => {
                    tracing::warn!(error = %e, "watch failed; retrying with backoff")
                }
                Err(e) => tracing::debug!(error = %e, "reconcile failed"),
            }
        });
    let synced = async {
        if caches_ready.wait_until_ready().await.is_ok() {
            let _ = synced_tx.send(true);
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
    ops.grants.close();
    ops.metrics.set_store(None);
    ops.health.set_synced(false);
    Ok(())
}

/// Migrations per list page: 20 objects of at most about 1.5 MiB each bound what a relist
/// holds at once before pruning.
const MIGRATION_PAGE_SIZE: u32 = 20;

/// A watch of `api`, pruned by `prune` and reflected into a cache: the cache's reader and the
/// watch's events (to trigger reconciles from).
fn cached<K>(
    api: Api<K>,
    config: watcher::Config,
    prune: fn(&mut K),
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
)
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let events = watcher(api, config)
        .default_backoff()
        .modify(prune)
        .reflect(writer);
    (store, events)
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

/// Whether a migration still looks at its targets: not once it succeeded, nor while it
/// failed (a retry comes through the migration's own watch event).
fn watches_targets(m: &DatabaseMigration) -> bool {
    !matches!(
        m.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Succeeded | Phase::Failed)
    )
}

/// The unfinished migrations whose targets name or select this workload.
fn migrations_targeting<K: kube::Resource>(
    store: &Store<DatabaseMigration>,
    kind: TargetKind,
    w: &K,
    labels: &Labels,
) -> Vec<ObjectRef<DatabaseMigration>> {
    // Borrowed, not cloned: this runs for every migration on every workload event.
    let ns = w.meta().namespace.as_deref();
    let name = w.meta().name.as_deref().unwrap_or_default();
    store
        .state()
        .iter()
        .filter(|m| m.metadata.namespace.as_deref() == ns && watches_targets(m))
        .filter(|m| targets_workload(m, kind, name, labels))
        .map(|m| ObjectRef::from_obj(m.as_ref()))
        .collect()
}

/// Whether one of the migration's targets is this workload (by name, or by a selector
/// matching its labels).
fn targets_workload(m: &DatabaseMigration, kind: TargetKind, name: &str, labels: &Labels) -> bool {
    m.spec
        .rollout
        .targets
        .iter()
        .filter(|t| t.kind == kind)
        .any(|t| match (&t.name, &t.selector) {
            (Some(n), _) => n == name,
            (None, Some(sel)) => {
                Selector::try_from(sel.clone()).is_ok_and(|s| LabelQuery::from(s).matches(labels))
            }
            _ => false,
        })
}

/// The migration an executor pod works for: a stuck pod (missing Secret, bad image) changes
/// no Job status, but the migration's status should say why it waits.
fn executor_pod_migration(p: &views::ExecutorPodView) -> Option<ObjectRef<DatabaseMigration>> {
    let name = p
        .annotations()
        .get(ANNOTATION_MIGRATION)
        .or_else(|| p.labels().get(LABEL_MIGRATION))?;
    Some(ObjectRef::new(name).within(&p.namespace()?))
}

/// The migrations a (non-executor) pod's arrival, change or departure (terminating pods
/// included) can concern: the migrations that wait on a rollout or run contract and target
/// the workload owning it. A pod no workload owns (a stray pod a selector may still match)
/// wakes every waiting migration of its namespace.
fn migrations_waiting_on(caches: &cache::Caches, p: &PodView) -> Vec<ObjectRef<DatabaseMigration>> {
    let ns = p.namespace().unwrap_or_default();
    let owner = cache::owning_workload(&p.pod).map(|(kind, name)| {
        let labels = workload_labels(caches, kind, &ns, &name);
        (kind, name, labels)
    });
    caches
        .migrations
        .state()
        .iter()
        .filter(|m| m.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|m| {
            matches!(
                m.status.as_ref().and_then(|s| s.phase),
                Some(
                    Phase::AwaitingRollout
                        | Phase::Soaking
                        | Phase::AwaitingApproval
                        | Phase::Backfilling
                        | Phase::Contracting
                )
            )
        })
        .filter(|m| match &owner {
            Some((kind, name, labels)) => targets_workload(m, *kind, name, labels),
            None => true,
        })
        .map(|m| ObjectRef::from_obj(m.as_ref()))
        .collect()
}

/// A workload's labels from the cache (empty when it is not cached: only selector targets
/// need them).
fn workload_labels(caches: &cache::Caches, kind: TargetKind, ns: &str, name: &str) -> Labels {
    fn key<K: kube::Resource<DynamicType = ()>>(ns: &str, name: &str) -> ObjectRef<K> {
        ObjectRef::new(name).within(ns)
    }
    let labels = match kind {
        TargetKind::Deployment => caches
            .deployments
            .get(&key(ns, name))
            .map(|w| w.labels.clone()),
        TargetKind::StatefulSet => caches
            .statefulsets
            .get(&key(ns, name))
            .map(|w| w.labels.clone()),
        TargetKind::DaemonSet => caches
            .daemonsets
            .get(&key(ns, name))
            .map(|w| w.labels.clone()),
        TargetKind::Rollout => caches
            .rollouts
            .get(&key(ns, name))
            .map(|w| Labels::from(w.labels())),
    };
    labels.unwrap_or_default()
}

/// Reconciles running at once. A reconcile reads only caches but may wait on a status write
/// or a quorum read; during a rollout wave on a busy API server, 8 at once queued the
/// reconciles that open gates (reaction p99 9.6 s at 1,000 Deployments / 200 migrations, 1.3 s
/// with 32: docs/scale.md). No trailing-edge debounce: it would delay (and under a burst of
/// pod events keep delaying) the reconcile that stops a contract attempt after a rollback.
/// Triggers for a migration that is queued or being reconciled are merged into one reconcile.
const CONCURRENCY: u16 = 32;

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(name: &str, phase: &str, targets: serde_json::Value) -> DatabaseMigration {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "phasegate.dev/v1alpha1", "kind": "DatabaseMigration",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {
                "appVersion": "2.0.0",
                "database": {"urlSecretRef": {"name": "db", "key": "url"}},
                "expand": {"sql": "SELECT 1"}, "contract": {"sql": "SELECT 1"},
                "rollout": {"targets": targets, "versionFrom": {"label": "version"}}
            },
            "status": {"phase": phase}
        }))
        .expect("migration")
    }

    fn caches(migrations: Vec<DatabaseMigration>) -> cache::Caches {
        let deployment: DeploymentView = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api", "namespace": "shop", "labels": {"tier": "web"}}
        }))
        .expect("deployment");
        cache::Caches::for_tests(migrations, vec![deployment])
    }

    fn pod(owner: Option<&str>) -> PodView {
        let owners = owner.map(|rs| {
            serde_json::json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": "u", "controller": true}])
        });
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "shop",
                         "labels": {"app": "api", "pod-template-hash": "7d9f"},
                         "ownerReferences": owners.unwrap_or_default()}
        }))
        .expect("pod")
    }

    fn names(refs: Vec<ObjectRef<DatabaseMigration>>) -> Vec<String> {
        let mut v: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        v.sort();
        v
    }

    #[test]
    fn a_pod_wakes_only_the_waiting_migrations_that_target_its_workload() {
        let named = serde_json::json!([{"kind": "Deployment", "name": "api"}]);
        let by_selector = serde_json::json!([{"kind": "Deployment", "selector": {"matchLabels": {"tier": "web"}}}]);
        let other = serde_json::json!([{"kind": "Deployment", "name": "worker"}]);
        let c = caches(vec![
            migration("named", "AwaitingRollout", named.clone()),
            migration("selected", "Contracting", by_selector),
            migration("other", "AwaitingRollout", other),
            migration("done", "Succeeded", named.clone()),
            migration("new", "Pending", named),
        ]);
        assert_eq!(
            names(migrations_waiting_on(&c, &pod(Some("api-7d9f")))),
            ["named", "selected"]
        );
        // A pod no workload owns may still be matched by a selector: every waiting one.
        assert_eq!(
            names(migrations_waiting_on(&c, &pod(None))),
            ["named", "other", "selected"]
        );
    }

    #[test]
    fn an_executor_pod_wakes_its_own_migration() {
        let p: views::ExecutorPodView = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x-contract-1-abcde", "namespace": "shop",
                         "labels": {LABEL_EXECUTOR: "true"},
                         "annotations": {ANNOTATION_MIGRATION: "a-very-long-migration-name"}}
        }))
        .expect("pod");
        assert_eq!(
            executor_pod_migration(&p),
            Some(ObjectRef::new("a-very-long-migration-name").within("shop"))
        );
        let stray: views::ExecutorPodView = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "shop", "labels": {LABEL_EXECUTOR: "true"}}
        }))
        .expect("pod");
        assert_eq!(executor_pod_migration(&stray), None);
    }

    #[test]
    fn a_workload_wakes_only_unfinished_migrations_that_target_it() {
        let named = serde_json::json!([{"kind": "Deployment", "name": "api"}]);
        let store = test_support::test_store(vec![
            migration("waiting", "AwaitingRollout", named.clone()),
            migration("done", "Succeeded", named.clone()),
            migration("failed", "Failed", named.clone()),
            migration(
                "selected",
                "Soaking",
                serde_json::json!([{"kind": "Deployment", "selector": {"matchLabels": {"tier": "web"}}}]),
            ),
            migration(
                "unselected",
                "Soaking",
                serde_json::json!([{"kind": "Deployment", "selector": {"matchLabels": {"tier": "db"}}}]),
            ),
            migration(
                "sts",
                "AwaitingRollout",
                serde_json::json!([{"kind": "StatefulSet", "name": "api"}]),
            ),
        ]);
        let d: DeploymentView = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "api", "namespace": "shop", "labels": {"tier": "web"}}
        }))
        .expect("deployment");
        assert_eq!(
            names(migrations_targeting(
                &store,
                TargetKind::Deployment,
                &d,
                &d.labels
            )),
            ["selected", "waiting"]
        );
    }
}
