//! Every example in `examples/` (and the Argo CD app in `deploy/argocd/`), applied from the
//! files on disk. The only changes made to them: the namespace `shop` becomes the test's
//! namespace, and long soak delays are shortened (`contract.delay`, mutable by design). The
//! Secret `shop-db` (key `url`) is the test's throwaway PostgreSQL, made by the harness.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::ResourceExt;
use phasegate::api::Phase;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::harness::{condition, wait_until, Env};

const T: Duration = Duration::from_secs(120);

fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The YAML documents of a file of the repository.
fn docs(rel: &str) -> Vec<Value> {
    let text =
        std::fs::read_to_string(repo_path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("parse {rel}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Run a `.sql` file of the repository against the test database.
async fn run_sql_file(env: &Env, rel: &str) {
    let sql = std::fs::read_to_string(repo_path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"));
    env.pg
        .client()
        .await
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("run {rel}: {e}"));
}

/// Server-side apply one manifest into the test's namespace.
async fn apply(env: &Env, mut doc: Value) -> DynamicObject {
    let kind = doc["kind"].as_str().expect("kind").to_string();
    let api_version = doc["apiVersion"].as_str().expect("apiVersion").to_string();
    assert_eq!(
        doc["metadata"]["namespace"], "shop",
        "examples are written for namespace shop: {kind}"
    );
    doc["metadata"]["namespace"] = json!(env.ns);
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    let (ar, _) =
        kube::discovery::pinned_kind(&env.client, &GroupVersionKind::gvk(group, version, &kind))
            .await
            .expect("discover kind");
    let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &ar);
    let name = doc["metadata"]["name"].as_str().expect("name").to_string();
    let obj: DynamicObject = serde_json::from_value(doc).expect("object");
    api.patch(
        &name,
        &PatchParams::apply("phasegate-examples").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("the API server accepts {kind} {name}: {e}"))
}

async fn apply_file(env: &Env, rel: &str) {
    for doc in docs(rel) {
        apply(env, doc).await;
    }
}

/// Ship a new version of a Deployment: its pod template's `app.kubernetes.io/version`.
async fn ship(env: &Env, deployment: &str, version: &str) {
    let patch = json!({"spec": {"template": {"metadata": {"labels": {"app.kubernetes.io/version": version}}}}});
    env.deployments()
        .patch(deployment, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch deployment");
}

async fn wait_deployments(env: &Env, names: &[&str]) {
    for n in names {
        env.wait_rolled_out(n).await;
    }
}

async fn query_strings(env: &Env, sql: &str) -> Vec<(String, String)> {
    let rows = env
        .pg
        .client()
        .await
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .map(|r| {
            (
                r.get::<_, Option<String>>(0).unwrap_or_default(),
                r.get::<_, Option<String>>(1).unwrap_or_default(),
            )
        })
        .collect()
}

async fn count(env: &Env, sql: &str) -> i64 {
    env.pg
        .client()
        .await
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn examples_inline_sql() {
    let env = Env::new("ex-inline").await;
    run_sql_file(&env, "examples/inline-sql/schema.sql").await;
    apply_file(&env, "examples/inline-sql/deployments.yaml").await;
    wait_deployments(&env, &["shop-api", "shop-worker"]).await;
    apply_file(&env, "examples/inline-sql/migration.yaml").await;
    let name = "orders-events-2-0-0";

    let m = env
        .wait_migration(name, T, "both selected targets observed", |m| {
            m.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(Phase::AwaitingRollout) && s.targets.len() == 2)
        })
        .await;
    assert_eq!(
        m.status.as_ref().and_then(|s| s.targets_ready.as_deref()),
        Some("0/2")
    );
    assert!(
        env.column_exists("orders", "currency").await,
        "expand added orders.currency"
    );
    assert_eq!(
        count(&env, "SELECT count(*) FROM order_events").await,
        0,
        "expand created order_events"
    );
    assert!(env.column_exists("orders", "status_code").await);

    // One workload on 2.0.0 is not enough: the selector covers the worker too.
    ship(&env, "shop-api", "2.0.0").await;
    env.wait_migration(name, T, "shop-api complete", |m| {
        m.status.as_ref().and_then(|s| s.targets_ready.as_deref()) == Some("1/2")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        env.job_names("contract").await.is_empty(),
        "no contract while shop-worker runs 1.0.0"
    );
    assert!(env.column_exists("orders", "status_code").await);

    ship(&env, "shop-worker", "2.0.0").await;
    env.wait_phase(name, Phase::Succeeded, T).await;
    assert!(
        !env.column_exists("orders", "status_code").await,
        "contract dropped orders.status_code"
    );
    env.cleanup().await;
}

/// examples/psql-job applied as its README says: the schema, the app at 1.0.0, the migration.
async fn apply_psql_example(env: &Env) -> &'static str {
    run_sql_file(env, "examples/psql-job/schema.sql").await;
    apply_file(env, "examples/psql-job/deployment.yaml").await;
    env.wait_rolled_out("shop-api").await;
    apply_file(env, "examples/psql-job/migration.yaml").await;
    "users-locale-2-0-0"
}

#[tokio::test(flavor = "multi_thread")]
async fn examples_psql_job() {
    let env = Env::new("ex-psql").await;
    let name = apply_psql_example(&env).await;

    // The runner executes the Job's `sh -c 'psql …'` with this machine's sh and psql.
    env.wait_phase(name, Phase::AwaitingRollout, T).await;
    assert!(
        env.column_exists("users", "locale").await,
        "psql expand Job added users.locale"
    );
    assert_eq!(
        count(&env, "SELECT count(*) FROM users WHERE locale = 'en'").await,
        2
    );
    assert!(
        env.column_exists("users", "legacy_flag").await,
        "contract waits for the rollout"
    );
    let job_name = phasegate::planner::job_name(
        name,
        &env.migrations()
            .get(name)
            .await
            .expect("migration")
            .uid()
            .unwrap_or_default(),
        phasegate::planner::JobPhase::Expand,
        1,
    );
    let job = env.jobs().get(&job_name).await.expect("expand Job");
    let pod = job.spec.and_then(|s| s.template.spec).expect("pod spec");
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("postgres:17-alpine")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(env.job_names("contract").await.is_empty());

    ship(&env, "shop-api", "2.0.0").await;
    let m = env.wait_phase(name, Phase::Succeeded, T).await;
    assert!(
        !env.column_exists("users", "legacy_flag").await,
        "psql contract Job dropped users.legacy_flag after the rollout"
    );
    let status = m.status.expect("status");
    assert_eq!(
        (
            status.expand.map(|e| e.attempts),
            status.contract.map(|c| c.attempts)
        ),
        (Some(1), Some(1))
    );
    env.cleanup().await;
}

/// examples/psql-job stops on SIGTERM: a rollback while its contract psql waits for a lock
/// deletes the Job, and psql ends with the shell (the example forwards the signal), so the
/// DROP never commits once the lock frees. A bare `sh -c 'psql …'` leaves psql running.
#[tokio::test(flavor = "multi_thread")]
async fn examples_psql_job_stops_on_sigterm() {
    let env = Env::new("ex-psql-stop").await;
    let name = apply_psql_example(&env).await;
    env.wait_phase(name, Phase::AwaitingRollout, T).await;

    let reader = env.pg.client().await;
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM users;")
        .await
        .expect("reader");
    ship(&env, "shop-api", "2.0.0").await;
    let db = env.pg.client().await;
    wait_until(T, "contract's psql waits for the reader's lock", || async {
        count(
            &env,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query ILIKE '%DROP COLUMN legacy_flag%'",
        )
        .await
            > 0
    })
    .await;
    // Rolled back: the Job goes and the stand-in kubelet sends SIGTERM. The reader ends right
    // then, long before psql's own lock_timeout: a psql still running would now commit.
    ship(&env, "shop-api", "1.0.0").await;
    let runner_log = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("e2e-logs")
        .join(format!("{}-runner.log", env.ns));
    wait_until(T, "SIGTERM sent to the contract pod", || async {
        std::fs::read_to_string(&runner_log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("pod deleted: sending SIGTERM") && l.contains("-contract-1-"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    reader.batch_execute("COMMIT").await.expect("end reader");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = count(
        &env,
        "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE '%DROP COLUMN legacy_flag%' \
         AND pid <> pg_backend_pid()",
    )
    .await;
    assert_eq!(waiting, 0, "no psql left behind by the stopped Job");
    assert!(
        env.column_exists("users", "legacy_flag").await,
        "the stopped psql never dropped the column"
    );
    drop(db);

    ship(&env, "shop-api", "2.0.0").await;
    let m = env.wait_phase(name, Phase::Succeeded, T).await;
    assert!(!env.column_exists("users", "legacy_flag").await);
    assert_eq!(
        m.status.and_then(|s| s.contract).map(|c| c.attempts),
        Some(2)
    );
    env.cleanup().await;
}

/// Flyway cannot run here: the test runner (kubelet for kwok) runs a container's command on
/// this machine, which has no `flyway`. So this checks everything short of Flyway itself:
/// the manifests are accepted, the expand Job is built from the user's template with
/// Phasegate's environment, and a container that cannot start fails the phase cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn examples_flyway_job() {
    let env = Env::new("ex-flyway").await;
    // Flyway's keys in the Secret, as the example README has users create them.
    let url = env.pg.url();
    let rest = url.strip_prefix("postgres://").expect("postgres url");
    let (creds, host_db) = rest.split_once('@').expect("credentials");
    let (user, password) = creds.split_once(':').expect("user:password");
    let patch = json!({"stringData": {"jdbc-url": format!("jdbc:postgresql://{host_db}"), "username": user, "password": password}});
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    secrets
        .patch("shop-db", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("add Flyway keys");

    run_sql_file(&env, "examples/flyway-job/schema.sql").await;
    apply_file(&env, "examples/flyway-job/configmap.yaml").await;
    apply_file(&env, "examples/flyway-job/deployment.yaml").await;
    env.wait_rolled_out("shop-catalog").await;
    apply_file(&env, "examples/flyway-job/migration.yaml").await;
    let name = "products-slug-2-1-0";
    let m = env
        .migrations()
        .get(name)
        .await
        .expect("the migration is stored");

    let job_name = phasegate::planner::job_name(
        name,
        &m.uid().unwrap_or_default(),
        phasegate::planner::JobPhase::Expand,
        1,
    );
    let jobs = env.jobs();
    wait_until(T, "the expand Job", || async {
        jobs.get_opt(&job_name).await.ok().flatten().is_some()
    })
    .await;
    let job = jobs.get(&job_name).await.expect("expand Job");
    assert!(
        job.owner_references()
            .iter()
            .any(|r| Some(&r.uid) == m.metadata.uid.as_ref() && r.controller == Some(true)),
        "owned by the migration"
    );
    assert_eq!(
        job.labels().get("phasegate.dev/phase").map(String::as_str),
        Some("expand")
    );
    let spec = job.spec.clone().expect("job spec");
    assert_eq!(spec.backoff_limit, Some(1), "backoffLimit from the example");
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(
        pod.volumes
            .as_ref()
            .and_then(|v| v.first())
            .and_then(|v| v.config_map.as_ref())
            .map(|c| c.name.as_str()),
        Some("shop-flyway-migrations")
    );
    let c = &pod.containers[0];
    assert_eq!(
        (c.name.as_str(), c.image.as_deref()),
        ("flyway", Some("flyway/flyway:11"))
    );
    assert_eq!(c.command.clone().unwrap_or_default(), ["flyway"]);
    assert_eq!(
        c.args.clone().unwrap_or_default(),
        ["migrate", "-target=2.1"]
    );
    assert_eq!(
        c.volume_mounts
            .as_ref()
            .and_then(|v| v.first())
            .map(|v| v.mount_path.as_str()),
        Some("/flyway/sql")
    );
    let env_vars = c.env.clone().unwrap_or_default();
    let secret_ref = |var: &str| {
        env_vars
            .iter()
            .find(|e| e.name == var)
            .and_then(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
            .map(|s| (s.name.clone(), s.key.clone()))
    };
    let value = |var: &str| {
        env_vars
            .iter()
            .find(|e| e.name == var)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        secret_ref("PHASEGATE_DATABASE_URL"),
        Some(("shop-db".into(), "url".into())),
        "database URL from the Secret"
    );
    assert_eq!(
        secret_ref("FLYWAY_URL"),
        Some(("shop-db".into(), "jdbc-url".into())),
        "the user's own env is kept"
    );
    assert_eq!(
        secret_ref("FLYWAY_PASSWORD"),
        Some(("shop-db".into(), "password".into()))
    );
    assert_eq!(
        value("FLYWAY_LOCATIONS").as_deref(),
        Some("filesystem:/flyway/sql")
    );
    assert_eq!(value("PHASEGATE_PHASE").as_deref(), Some("expand"));
    assert_eq!(value("PHASEGATE_MIGRATION_NAME").as_deref(), Some(name));
    assert_eq!(value("PHASEGATE_APP_VERSION").as_deref(), Some("2.1.0"));
    assert_eq!(value("PHASEGATE_ATTEMPT").as_deref(), Some("1"));

    // Here the container cannot start (no flyway binary): the phase fails, nothing contracts.
    let m = env.wait_phase(name, Phase::Failed, T).await;
    let (stalled, reason, msg) = condition(&m, "Stalled").expect("Stalled");
    assert_eq!(
        (stalled.as_str(), reason.as_str()),
        ("True", "ExpandFailed")
    );
    assert!(
        msg.contains("flyway"),
        "the reason names the missing executable: {msg}"
    );
    assert!(env.job_names("contract").await.is_empty());
    assert!(env.column_exists("products", "permalink").await);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn examples_rename_column() {
    let env = Env::new("ex-rename").await;
    run_sql_file(&env, "examples/rename-column/schema.sql").await;
    apply_file(&env, "examples/rename-column/deployment.yaml").await;
    env.wait_rolled_out("shop-api").await;
    let mut migration = docs("examples/rename-column/migration.yaml").remove(0);
    migration["spec"]["contract"]["delay"] = json!("2s"); // the example soaks 1m
    apply(&env, migration).await;
    let name = "users-display-name-1-5-0";
    env.wait_phase(name, Phase::AwaitingRollout, T).await;

    // Backfilled.
    let rows = query_strings(&env, "SELECT fullname, display_name FROM users ORDER BY id").await;
    assert_eq!(
        rows,
        [
            ("Ada Lovelace".into(), "Ada Lovelace".into()),
            ("Alan Turing".into(), "Alan Turing".into())
        ]
    );
    // 1.4 pods still write the old column: their writes appear in the new one.
    let db = env.pg.client().await;
    db.batch_execute(
        "INSERT INTO users (email, fullname) VALUES ('grace@example.com', 'Grace Hopper');
         UPDATE users SET fullname = 'Ada King' WHERE email = 'ada@example.com';",
    )
    .await
    .expect("old-code writes");
    // 1.5 pods write the new column: old readers still see it.
    db.batch_execute(
        "INSERT INTO users (email, display_name) VALUES ('edsger@example.com', 'Edsger Dijkstra');
         UPDATE users SET display_name = 'A. M. Turing' WHERE email = 'alan@example.com';",
    )
    .await
    .expect("new-code writes");
    let rows = query_strings(&env, "SELECT fullname, display_name FROM users ORDER BY id").await;
    let both = |s: &str| (s.to_string(), s.to_string());
    assert_eq!(
        rows,
        [
            both("Ada King"),
            both("A. M. Turing"),
            both("Grace Hopper"),
            both("Edsger Dijkstra")
        ],
        "dual write keeps both columns equal"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        env.job_names("contract").await.is_empty(),
        "the old column stays while 1.4 runs"
    );

    ship(&env, "shop-api", "1.5.0").await;
    env.wait_phase(name, Phase::Succeeded, T).await;
    assert!(
        !env.column_exists("users", "fullname").await,
        "contract dropped the old column"
    );
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'users_sync_display_name'"
        )
        .await,
        0,
        "trigger dropped"
    );
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM pg_proc WHERE proname = 'users_sync_display_name'"
        )
        .await,
        0,
        "function dropped"
    );
    let names: Vec<String> = query_strings(&env, "SELECT display_name, '' FROM users ORDER BY id")
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(
        names,
        [
            "Ada King",
            "A. M. Turing",
            "Grace Hopper",
            "Edsger Dijkstra"
        ]
    );
    // 1.5 keeps writing after contract.
    env.pg.client().await.batch_execute("INSERT INTO users (email, display_name) VALUES ('barbara@example.com', 'Barbara Liskov')").await.expect("insert after contract");
    env.cleanup().await;
}

/// Argo CD's sync waves, played by hand: wave 0, wait for what `deploy/argocd/health.lua`
/// calls Healthy (Expanded=True on an up-to-date status), then wave 1.
#[tokio::test(flavor = "multi_thread")]
async fn examples_argocd_sync_waves() {
    let app = docs("deploy/argocd/application.yaml").remove(0);
    assert_eq!(app["kind"], "Application");
    let path = app["spec"]["source"]["path"].as_str().expect("source.path");
    assert!(
        repo_path(path).is_dir(),
        "the Application syncs {path}, which exists"
    );
    assert!(repo_path("examples/argocd/README.md").is_file());

    let env = Env::new("ex-argocd").await;
    env.pg
        .client()
        .await
        .batch_execute(
            "CREATE TABLE users (id bigserial PRIMARY KEY, email text, legacy_flag boolean);",
        )
        .await
        .expect("seed");
    let mut waves: Vec<(i64, Value)> = Vec::new();
    for entry in std::fs::read_dir(repo_path(path)).expect("read app dir") {
        let file = entry.expect("entry").path();
        let rel = file
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .expect("in repo")
            .to_string_lossy()
            .into_owned();
        for doc in docs(&rel) {
            let wave = doc["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]
                .as_str()
                .unwrap_or("0")
                .parse()
                .expect("wave");
            waves.push((wave, doc));
        }
    }
    waves.sort_by_key(|(w, _)| *w);
    assert_eq!(
        waves
            .iter()
            .map(|(w, d)| (*w, d["kind"].as_str().unwrap_or_default().to_string()))
            .collect::<Vec<_>>(),
        [
            (0, "DatabaseMigration".to_string()),
            (1, "Deployment".to_string())
        ]
    );
    let mut wave0 = waves[0].1.clone();
    wave0["spec"]["contract"]["delay"] = json!("2s"); // the example soaks 5m
    let name = wave0["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    apply(&env, wave0).await;

    let m = env
        .wait_migration(&name, T, "Healthy in Argo CD's terms", |m| {
            m.status
                .as_ref()
                .is_some_and(|s| s.observed_generation == m.metadata.generation)
                && condition(m, "Expanded").is_some_and(|c| c.0 == "True")
        })
        .await;
    assert_eq!(
        m.status.as_ref().and_then(|s| s.phase),
        Some(Phase::AwaitingRollout),
        "contract waits for wave 1"
    );
    assert!(env.column_exists("users", "email_verified").await);
    assert!(env.column_exists("users", "legacy_flag").await);

    apply(&env, waves[1].1.clone()).await;
    env.wait_phase(&name, Phase::Succeeded, T).await;
    assert!(!env.column_exists("users", "legacy_flag").await);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn examples_backfill() {
    let env = Env::new("ex-backfill").await;
    run_sql_file(&env, "examples/backfill/schema.sql").await;
    apply_file(&env, "examples/backfill/deployment.yaml").await;
    wait_deployments(&env, &["shop-api"]).await;
    apply_file(&env, "examples/backfill/migration.yaml").await;
    let name = "users-email-address-2-0-0";
    env.wait_phase(name, Phase::AwaitingRollout, T).await;
    assert!(env.column_exists("users", "email_address").await);
    assert!(env.job_names("backfill").await.is_empty());
    ship(&env, "shop-api", "2.0.0").await;
    env.wait_phase(name, Phase::Succeeded, T).await;
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM users WHERE email_address IS NULL"
        )
        .await,
        0,
        "the backfill filled every row"
    );
    assert!(
        !env.column_exists("users", "email").await,
        "contract dropped users.email after the backfill"
    );
    env.cleanup().await;
}
