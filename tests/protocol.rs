//! The operator↔executor environment, checked from both sides: what the operator writes into
//! an executor Job ([`ExecutorEnv`]) is what `phasegate apply` / `phasegate backfill` parse
//! back, and the settings they run with are the spec's. A name or format changed on one side
//! only fails here, not in a cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use phasegate::api::{DatabaseMigration, DatabaseMigrationSpec, DatabaseMigrationStatus};
use phasegate::controller::jobs::{add_members, build_job, executor_env, ExecutorConfig};
use phasegate::executor::backfill::BackfillConfig;
use phasegate::planner::JobPhase;
use phasegate::protocol::env::{ExecutorEnv, Secret};

const URL: &str = "postgres://app:pw@db:5432/shop";
const ADMIN_URL: &str = "postgres://stats:pw2@shop-pooler:5432/pgbouncer";
const GRANT_URL: &str = "http://phasegate.phasegate-system.svc:8082";
const UID: &str = "0a1b2c3d-0000-4000-8000-000000000000";
/// The hot standbys' Secrets (name, key) and the URLs they hold.
const STANDBYS: [(&str, &str, &str); 2] = [
    ("standby-a", "url", "postgres://app:pw@standby-a:5432/shop"),
    ("standby-b", "uri", "postgres://app:pw@standby-b:5432/shop"),
];
/// The listed servers of a fleet migration: (name, Secret name, key, the URL it holds).
const SHARDS: [(&str, &str, &str, &str); 2] = [
    (
        "eu-2",
        "shop-db-eu-2",
        "url",
        "postgres://app:pw3@eu-2:5432/shop",
    ),
    (
        "us-1",
        "shop-db-us-1",
        "uri",
        "postgres://app:pw4@us-1:5432/shop",
    ),
];

/// What the kubelet puts in a variable whose value is the Secret key `name`/`key`.
fn resolve(name: &str, key: &str) -> String {
    if (name, key) == ("db", "url") {
        return URL.to_string();
    }
    if (name, key) == ("pooler-admin", "url") {
        return ADMIN_URL.to_string();
    }
    if let Some((_, _, _, url)) = SHARDS.iter().find(|(_, n, k, _)| (*n, *k) == (name, key)) {
        return url.to_string();
    }
    match STANDBYS.iter().find(|(n, k, _)| (*n, *k) == (name, key)) {
        Some((_, _, url)) => url.to_string(),
        None => panic!("unexpected secret key {name}/{key}"),
    }
}

/// `m` as a fleet migration on its server and the two [`SHARDS`] (no pooler admin URL: that
/// names one server's pooler).
fn with_servers(mut m: DatabaseMigration) -> DatabaseMigration {
    m.spec.tenants = Some(
        serde_json::from_value(serde_json::json!({
            "schemas": "tenant\\_%",
            "servers": SHARDS.iter().map(|(s, n, k, _)| serde_json::json!({"name": s, "urlSecretRef": {"name": n, "key": k}})).collect::<Vec<_>>(),
        }))
        .expect("tenants"),
    );
    m.spec.database.pooler = Some(Default::default());
    m
}

/// `m` with `spec.database.replicas`: both standbys listed, and discovery on.
fn with_replicas(mut m: DatabaseMigration) -> DatabaseMigration {
    m.spec.database.replicas = Some(
        serde_json::from_value(serde_json::json!({
            "urlSecretRefs": STANDBYS.iter().map(|(n, k, _)| serde_json::json!({"name": n, "key": k})).collect::<Vec<_>>(),
            "discover": true
        }))
        .expect("replicas"),
    );
    m
}

fn migration(backfill: bool, user_job: bool) -> DatabaseMigration {
    let mut spec = serde_json::json!({
        "appVersion": "2.0.0",
        "database": {"urlSecretRef": {"name": "db", "key": "url"},
                     "pooler": {"adminUrlSecretRef": {"name": "pooler-admin", "key": "url"}}},
        "expand": {"sql": "ALTER TABLE users ADD COLUMN a int;"},
        "contract": {"sql": "ALTER TABLE users DROP COLUMN b;"},
        "rollout": {"targets": [{"kind": "Deployment", "name": "shop-api"}],
                    "versionOrder": "NotPrevious"},
        "safety": {"applicationNames": ["shop-api", "shop-worker"], "lockTimeout": "20ms",
                   "maxLockRetries": 4, "youngTransaction": "5ms"}
    });
    if backfill {
        spec["backfill"] = serde_json::json!({
            "table": "users", "key": "id", "batchSize": 250, "pause": "10ms",
            "sql": "UPDATE users SET a = 1 WHERE id > $1 AND id <= $2"
        });
    }
    if user_job {
        spec["contract"] = serde_json::json!({"job": {"template": {"spec": {
            "containers": [{"name": "psql", "image": "postgres:17"}]}}}});
    }
    let spec: DatabaseMigrationSpec = serde_json::from_value(spec).expect("spec");
    let mut m = DatabaseMigration::new("m", spec);
    m.metadata.namespace = Some("shop".into());
    m.metadata.uid = Some(UID.into());
    m
}

fn status() -> DatabaseMigrationStatus {
    serde_json::from_value(serde_json::json!({
        "rolloutCompletedAt": "2026-12-01T00:00:00Z",
        "previousVersions": ["1.0.0"],
        "targets": [{"kind": "Deployment", "name": "shop-api", "complete": true, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1, "oldPods": 0}]
    }))
    .expect("status")
}

/// The variables of the Job's first container as the kubelet gives them to the process: the
/// Secret key `db`/`url` resolved to [`URL`].
fn job_env(m: &DatabaseMigration, phase: JobPhase) -> Vec<(String, String)> {
    let cfg = ExecutorConfig {
        image: "phasegate:test".into(),
        grant_url: GRANT_URL.into(),
        ..ExecutorConfig::default()
    };
    container_env(build_job(m, &status(), phase, 3, &cfg).expect("job"))
}

/// The variables of a Job's first container, as the kubelet gives them to the process.
fn container_env(job: k8s_openapi::api::batch::v1::Job) -> Vec<(String, String)> {
    let pod = job.spec.expect("job spec").template.spec.expect("pod spec");
    pod.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = match e
                .value_from
                .as_ref()
                .and_then(|f| f.secret_key_ref.as_ref())
            {
                Some(k) => resolve(&k.name, &k.key),
                None => e.value.clone().unwrap_or_default(),
            };
            (e.name.clone(), value)
        })
        .collect()
}

fn parsed(env: &[(String, String)]) -> ExecutorEnv<Secret> {
    let map: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(map.len(), env.len(), "a variable is set twice: {env:?}");
    ExecutorEnv::parse(|name| map.get(name).map(|v| v.to_string())).expect("parses")
}

fn built(m: &DatabaseMigration, phase: JobPhase) -> ExecutorEnv {
    executor_env(m, &status(), phase, 3, ("shop", "m", UID), GRANT_URL)
}

#[test]
fn what_the_operator_writes_the_executor_parses_back() {
    for (m, phase) in [
        (migration(false, false), JobPhase::Expand),
        (migration(false, false), JobPhase::Contract),
        (migration(true, false), JobPhase::Backfill),
        (migration(false, true), JobPhase::Contract),
        (with_replicas(migration(false, false)), JobPhase::Contract),
        (with_replicas(migration(false, false)), JobPhase::Expand),
        (with_replicas(migration(false, true)), JobPhase::Contract),
        (with_servers(migration(false, false)), JobPhase::Expand),
        (with_servers(migration(false, false)), JobPhase::Contract),
    ] {
        let env = job_env(&m, phase);
        let written = built(&m, phase);
        // The Job carries exactly the struct's variables, in its order, the URL from the Secret.
        let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
        let want: Vec<&str> = written.to_env().iter().map(|v| v.name).collect();
        assert_eq!(names, want, "{phase}");
        assert!(names
            .iter()
            .all(|n| ExecutorEnv::<Secret>::names().contains(n)));
        let url = Some(Secret(URL.into()));
        let replicas: Vec<Secret> = written
            .replica_urls
            .iter()
            .map(|k| Secret(resolve(&k.name, &k.key)))
            .collect();
        let servers: Vec<Secret> = written
            .server_urls
            .iter()
            .map(|k| Secret(resolve(&k.name, &k.key)))
            .collect();
        // Only Phasegate's own contract executor reads the pooler admin console's Secret.
        let own_contract = phase == JobPhase::Contract && written.sql.is_some();
        let admin_listed = m
            .spec
            .database
            .pooler
            .as_ref()
            .and_then(|p| p.admin_url_secret_ref.as_ref())
            .is_some();
        assert_eq!(
            written.pooler_admin_url.is_some(),
            own_contract && admin_listed,
            "{phase}"
        );
        let admin = written
            .pooler_admin_url
            .as_ref()
            .map(|_| Secret(ADMIN_URL.into()));
        assert_eq!(
            parsed(&env),
            written
                .with_urls(url, admin)
                .with_replica_urls(replicas)
                .with_server_urls(servers),
            "{phase}"
        );
    }
}

#[test]
fn each_member_of_an_expand_batch_runs_with_its_own_identity_sql_and_settings() {
    let lead = migration(false, false);
    let mut next = migration(false, false);
    next.metadata.name = Some("m-next".into());
    next.metadata.uid = Some("uid-next".into());
    next.spec.app_version = "2.1.0".into();
    next.spec.expand.sql = Some("CREATE INDEX users_v ON users (verified);".into());
    next.spec.safety.lock_timeout = "750ms".into();
    next.spec.safety.max_lock_retries = 4;
    let cfg = ExecutorConfig {
        image: "phasegate:test".into(),
        grant_url: GRANT_URL.into(),
        ..ExecutorConfig::default()
    };
    let mut job = build_job(&lead, &status(), JobPhase::Expand, 1, &cfg).expect("job");
    add_members(&mut job, &[&next]);
    let vars = container_env(job);
    let env = parsed(&vars);
    let members = env.expand_batch.clone().expect("the batch");
    assert_eq!(members.len(), 1);
    let member_env = members[0].environment(env.clone());
    let cfg = phasegate::executor::config_from_env(member_env).expect("config");
    assert_eq!(
        (cfg.identity.name.as_str(), cfg.identity.uid.as_str()),
        ("m-next", "uid-next")
    );
    assert_eq!(cfg.identity.app_version, "2.1.0");
    assert_eq!(cfg.sql, "CREATE INDEX users_v ON users (verified);");
    assert_eq!(cfg.lock_timeout, Duration::from_millis(750));
    assert_eq!(cfg.max_lock_retries, 4);
    assert_eq!(cfg.database_url.0, URL, "the lead's database");
    // The lead's own run is the lead's.
    let lead_cfg = phasegate::executor::config_from_env(env).expect("lead config");
    assert_eq!(lead_cfg.identity.name, "m");
}

#[test]
fn a_contract_executor_runs_with_the_specs_settings() {
    let env = parsed(&job_env(&migration(false, false), JobPhase::Contract));
    let cfg = phasegate::executor::config_from_env(env).expect("config");
    assert_eq!(cfg.phase, phasegate::executor::Phase::Contract);
    assert_eq!(cfg.database_url, Secret(URL.into()));
    assert_eq!(cfg.sql, "ALTER TABLE users DROP COLUMN b;");
    assert_eq!(cfg.identity.namespace, "shop");
    assert_eq!(cfg.identity.name, "m");
    assert_eq!(cfg.identity.uid, UID);
    assert_eq!(cfg.identity.app_version, "2.0.0");
    assert_eq!(cfg.lock_timeout, Duration::from_millis(20));
    assert_eq!(cfg.young_transaction, Duration::from_millis(5));
    assert_eq!(cfg.max_lock_retries, 4);
    assert!(cfg.database_check);
    assert!(cfg.require_expand);
    assert_eq!(
        cfg.rollout_completed_at.map(|t| t.to_string()),
        Some("2026-12-01T00:00:00Z".to_string())
    );
    assert_eq!(
        cfg.application_names,
        Some(vec!["shop-api".to_string(), "shop-worker".to_string()])
    );
    assert_eq!(cfg.version_order, phasegate::api::VersionOrder::NotPrevious);
    assert_eq!(cfg.previous_versions, Some(vec!["1.0.0".to_string()]));
    let grant = cfg
        .grant
        .clone()
        .expect("a contract Job is fenced by the grant");
    assert_eq!(grant.url, GRANT_URL);
    assert_eq!(grant.request.attempt, 3);
    assert_eq!(grant.request.uid, UID);
    assert_eq!(
        cfg.pooler,
        Some(phasegate::executor::PoolerConfig {
            admin_url: Some(Secret(ADMIN_URL.into()))
        })
    );
    assert_eq!(cfg.secret_urls(), vec![URL, ADMIN_URL]);
}

/// The standbys reach Phasegate's own contract executor, each URL from its Secret; expand and
/// a user's contract Job get none (its template was vetted without those Secrets).
#[test]
fn a_contract_executor_checks_the_specs_standbys() {
    let m = with_replicas(migration(false, false));
    let env = job_env(&m, JobPhase::Contract);
    let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"PHASEGATE_REPLICA_URL_0") && names.contains(&"PHASEGATE_REPLICA_URL_1")
    );
    let cfg = phasegate::executor::config_from_env(parsed(&env)).expect("config");
    let urls: Vec<Secret> = STANDBYS
        .iter()
        .map(|(_, _, u)| Secret(u.to_string()))
        .collect();
    assert_eq!(cfg.replica_urls, urls);
    assert!(cfg.replica_discover);
    // Their passwords are scrubbed from every message like the database URL's.
    assert!(urls
        .iter()
        .all(|u| cfg.secret_urls().contains(&u.0.as_str())));
    for (m, phase) in [
        (with_replicas(migration(false, false)), JobPhase::Expand),
        (with_replicas(migration(false, true)), JobPhase::Contract),
        (migration(false, false), JobPhase::Contract),
    ] {
        let env = job_env(&m, phase);
        assert!(
            env.iter()
                .all(|(n, _)| !n.starts_with("PHASEGATE_REPLICA_")),
            "{phase}: {env:?}"
        );
        let cfg = phasegate::executor::config_from_env(parsed(&env));
        if let Ok(cfg) = cfg {
            assert!(
                cfg.replica_urls.is_empty() && !cfg.replica_discover,
                "{phase}"
            );
        }
    }
    // A gap ends the list; the executor never reads past it.
    let env = ExecutorEnv::parse(|n| match n {
        "PHASEGATE_REPLICA_URL_0" => Some("postgres://a/db".into()),
        "PHASEGATE_REPLICA_URL_2" => Some("postgres://c/db".into()),
        _ => None,
    })
    .expect("parses");
    assert_eq!(env.replica_urls, vec![Secret("postgres://a/db".into())]);
}

#[test]
fn a_backfill_executor_runs_with_the_specs_settings() {
    let env = parsed(&job_env(&migration(true, false), JobPhase::Backfill));
    assert_eq!(env.phase, None, "backfill reads no phase");
    let cfg = BackfillConfig::from_env(&env).expect("config");
    assert_eq!(cfg.table, "users");
    assert_eq!(cfg.key, "id");
    assert_eq!(cfg.batch_size, 250);
    assert_eq!(cfg.pause, Duration::from_millis(10));
    assert_eq!(cfg.uid, UID);
    assert_eq!(cfg.epoch, "2026-12-01T00:00:00Z/0");
    assert_eq!(cfg.tenants, None);
}

/// A fleet migration's backfill Job tells its executor the tenants: it backfills every one,
/// and a tenant created since expand gets expand first, with the spec's safety settings.
#[test]
fn a_fleet_backfill_executor_runs_on_the_specs_tenants() {
    let mut m = migration(true, false);
    let tenants: phasegate::api::TenantsSpec =
        serde_json::from_value(serde_json::json!({"schemas": "tenant\\_%", "maxConcurrent": 3}))
            .expect("tenants");
    m.spec.tenants = Some(tenants.clone());
    let cfg = BackfillConfig::from_env(&parsed(&job_env(&m, JobPhase::Backfill))).expect("config");
    assert_eq!(cfg.tenants, Some(tenants));
    assert_eq!(cfg.table, "users");
    let fleet = cfg.fleet.expect("the fleet's settings");
    assert_eq!(
        fleet.tenant_expand_sql.as_deref(),
        Some("ALTER TABLE users ADD COLUMN a int;"),
        "expand first on a tenant created since expand ran"
    );
    assert_eq!(fleet.phase, phasegate::executor::Phase::Expand);
    assert_eq!(fleet.lock_timeout, Duration::from_millis(20));
    assert_eq!(fleet.max_lock_retries, 4);
    assert_eq!(
        (fleet.identity.name.as_str(), fleet.identity.uid.as_str()),
        ("m", UID)
    );
    assert_eq!(fleet.tenants, None);
    // On several servers, each server's URL from its Secret.
    let sharded = with_servers(m);
    let cfg =
        BackfillConfig::from_env(&parsed(&job_env(&sharded, JobPhase::Backfill))).expect("config");
    let urls: Vec<String> = cfg
        .fleet
        .map(|f| f.server_urls.into_iter().map(|u| u.0).collect())
        .unwrap_or_default();
    let want: Vec<String> = SHARDS.iter().map(|(_, _, _, u)| u.to_string()).collect();
    assert_eq!(urls, want);
    // A single database's backfill has no fleet.
    let single = parsed(&job_env(&migration(true, false), JobPhase::Backfill));
    assert!(BackfillConfig::from_env(&single)
        .expect("config")
        .fleet
        .is_none());
}

#[test]
fn a_bad_value_names_its_variable() {
    let e = ExecutorEnv::parse(|n| (n == "PHASEGATE_MAX_LOCK_RETRIES").then(|| "many".into()))
        .expect_err("not a number");
    assert_eq!(e.name, "PHASEGATE_MAX_LOCK_RETRIES");
    assert!(e.to_string().contains("\"many\""), "{e}");
}

/// A fleet migration's Job carries each listed server's URL from its own Secret, in the list's
/// order, in every phase; the executor gets them with the names from `PHASEGATE_TENANTS`, and
/// scrubs their passwords like the database URL's.
#[test]
fn a_fleet_executor_gets_each_servers_url_from_its_secret() {
    let m = with_servers(migration(false, false));
    for phase in [JobPhase::Expand, JobPhase::Contract] {
        let env = job_env(&m, phase);
        let vars: Vec<(&str, &str)> = env
            .iter()
            .filter(|(n, _)| n.starts_with("PHASEGATE_SERVER_URL_"))
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            vars,
            [
                ("PHASEGATE_SERVER_URL_0", SHARDS[0].3),
                ("PHASEGATE_SERVER_URL_1", SHARDS[1].3)
            ],
            "{phase}"
        );
        let cfg = phasegate::executor::config_from_env(parsed(&env)).expect("config");
        let names: Vec<String> = cfg
            .tenants
            .as_ref()
            .map(|t| t.servers.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default();
        assert_eq!(names, ["eu-2", "us-1"], "{phase}");
        let urls: Vec<&str> = cfg.server_urls.iter().map(|u| u.0.as_str()).collect();
        assert_eq!(urls, [SHARDS[0].3, SHARDS[1].3], "{phase}");
        assert!(
            urls.iter().all(|u| cfg.secret_urls().contains(u)),
            "{phase}"
        );
    }
    // A migration without servers sets none.
    let env = job_env(&migration(false, false), JobPhase::Contract);
    assert!(env
        .iter()
        .all(|(n, _)| !n.starts_with("PHASEGATE_SERVER_URL_")));
}
