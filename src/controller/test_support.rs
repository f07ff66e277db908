//! Fixtures for the controller's unit tests: ready stores, synced caches, one migration, and
//! a mocked API server for tests of a single request.

use kube::runtime::reflector::Store;

use super::cache::Caches;
use super::views::DeploymentView;
use crate::api::DatabaseMigration;

/// A ready store holding `objs`.
pub(crate) fn test_store<K>(objs: Vec<K>) -> Store<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    use kube::runtime::watcher::Event;
    let (reader, mut writer) = kube::runtime::reflector::store();
    writer.apply_watcher_event(&Event::Init);
    for o in objs {
        writer.apply_watcher_event(&Event::InitApply(o));
    }
    writer.apply_watcher_event(&Event::InitDone);
    reader
}

impl Caches {
    /// Synced caches holding these migrations and Deployments, and nothing else.
    pub(crate) fn for_tests(
        migrations: Vec<DatabaseMigration>,
        deployments: Vec<DeploymentView>,
    ) -> Caches {
        Caches {
            migrations: test_store(migrations),
            jobs: test_store(vec![]),
            pods: Default::default(),
            executor_pods: test_store(vec![]),
            deployments: test_store(deployments),
            statefulsets: test_store(vec![]),
            daemonsets: test_store(vec![]),
            rollouts: test_store(vec![]),
            rollouts_installed: false,
            synced: tokio::sync::watch::channel(true).1,
        }
    }
}

/// Migration `name` in namespace `shop` at resourceVersion `rv`: inline expand and contract
/// SQL, one Deployment target `api` whose version is its `version` label, `appVersion` 2.0.0.
/// `status` is the object's status as JSON (`null` for none).
pub(crate) fn test_migration(name: &str, rv: &str, status: serde_json::Value) -> DatabaseMigration {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "phasegate.dev/v1alpha1", "kind": "DatabaseMigration",
        "metadata": {"name": name, "namespace": "shop", "uid": "0a1b2c3d-0000-4000-8000-000000000000",
                     "resourceVersion": rv, "generation": 1},
        "spec": {
            "appVersion": "2.0.0",
            "database": {"urlSecretRef": {"name": "db", "key": "url"}},
            "expand": {"sql": "SELECT 1"}, "contract": {"sql": "SELECT 2"},
            "rollout": {"targets": [{"kind": "Deployment", "name": "api"}],
                        "versionFrom": {"label": "version"}}
        },
        "status": status
    }))
    .expect("migration")
}

/// A client whose API server is a mock answering the requests it gets with `answers`, in
/// order; a request past them fails. The task returns each request as "METHOD path".
pub(crate) fn mock_api(
    answers: Vec<(u16, serde_json::Value)>,
) -> (kube::Client, tokio::task::JoinHandle<Vec<String>>) {
    let (svc, mut server) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let served = tokio::spawn(async move {
        let mut asked = Vec::new();
        for (code, body) in answers {
            let Some((req, send)) = server.next_request().await else {
                break;
            };
            asked.push(format!("{} {}", req.method(), req.uri().path()));
            send.send_response(
                http::Response::builder()
                    .status(code)
                    .body(kube::client::Body::from(body.to_string().into_bytes()))
                    .expect("response"),
            );
        }
        asked
    });
    (kube::Client::new(svc, "shop"), served)
}

/// A controller context over `caches` that talks to `client` (a [`mock_api`]), with the
/// executor settings `executor`, watching every namespace, never shutting down.
pub(crate) fn test_context(
    client: kube::Client,
    caches: Caches,
    executor: super::ExecutorConfig,
) -> super::Context {
    use futures::FutureExt;
    super::Context {
        client: client.clone(),
        recorder: kube::runtime::events::Recorder::new(
            client,
            kube::runtime::events::Reporter {
                controller: "phasegate".into(),
                instance: None,
            },
        ),
        config: super::Config {
            namespace: None,
            executor,
        },
        metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
        caches,
        shutdown: futures::future::pending().boxed().shared(),
        failures: Default::default(),
        status_writes: Default::default(),
        history_checked: Default::default(),
        created_jobs: Default::default(),
        recalls: Default::default(),
        // Nobody reconciles here: what a reconcile wakes is dropped.
    }
}
