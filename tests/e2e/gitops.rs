//! Argo CD's own sync engine against the real operator: `tests/gitops` (built from
//! `github.com/argoproj/argo-cd/v3`: gitops-engine's sync and Argo CD's Lua health path)
//! syncs a "git" directory with the shipped `deploy/argocd/health.lua` installed, sync wave
//! −1 for the migration and 0 for the app, the way Argo CD's application controller runs a
//! sync operation. Each step asserts what the Argo CD user sees: the operation's outcome, the
//! resources' health, and what was applied.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;
use kube::Api;
use phasegate::api::Phase;
use serde_json::{json, Value};

use crate::harness::Env;
use crate::{seed_users_table, EXPAND, T};

/// The shipped health check; `PHASEGATE_GITOPS_HEALTH_LUA` runs the same scenarios against
/// another script (e.g. an older one, to see which scenarios it hangs or fails).
fn health_lua() -> String {
    std::env::var("PHASEGATE_GITOPS_HEALTH_LUA").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/argocd/health.lua").to_string()
    })
}
const MIGRATION: &str = "users-email-verified";

/// The driver binary: `$PHASEGATE_GITOPS_DRIVER`, or built (once, cached) by
/// `hack/gitops-driver.sh`.
fn driver() -> &'static Path {
    static DRIVER: OnceLock<PathBuf> = OnceLock::new();
    DRIVER.get_or_init(|| {
        std::env::var_os("PHASEGATE_GITOPS_DRIVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| build_driver("argocd"))
    })
}

/// The Flux driver (kstatus + Flux's CEL evaluator), built once by `hack/gitops-driver.sh`.
fn flux_driver() -> &'static Path {
    static DRIVER: OnceLock<PathBuf> = OnceLock::new();
    DRIVER.get_or_init(|| build_driver("flux"))
}

fn build_driver(which: &str) -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/gitops-driver.sh");
    let out = std::process::Command::new(script)
        .arg(which)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} {which} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The application's git path: every commit replaces its manifests.
struct Git(tempfile::TempDir);

impl Git {
    fn new() -> Git {
        Git(tempfile::tempdir().expect("temp dir"))
    }

    fn commit(&self, docs: &[Value]) {
        let yaml: Vec<String> = docs
            .iter()
            .map(|d| serde_yaml::to_string(d).expect("manifest"))
            .collect();
        std::fs::write(self.0.path().join("app.yaml"), yaml.join("---\n")).expect("write");
    }
}

/// One sync operation's outcome, as the driver reports it.
struct Synced(Value);

impl Synced {
    fn phase(&self) -> &str {
        self.0["phase"].as_str().unwrap_or_default()
    }

    fn resource(&self, kind: &str, name: &str) -> Option<&Value> {
        self.0["resources"]
            .as_array()?
            .iter()
            .find(|r| r["kind"] == kind && r["name"] == name)
    }

    /// The health of `other` in the round `kind/name` was applied, when it was applied.
    fn health_when_applied(&self, kind: &str, name: &str, other: &str) -> Option<String> {
        self.0["applied"]
            .as_array()?
            .iter()
            .find(|a| a["kind"] == kind && a["name"] == name)
            .map(|a| a["healthAtApply"][other].as_str().unwrap_or("").to_string())
    }

    fn applied(&self, kind: &str, name: &str) -> bool {
        self.health_when_applied(kind, name, "").is_some()
    }

    fn migration_health(&self) -> (String, String) {
        let r = self
            .resource("DatabaseMigration", MIGRATION)
            .unwrap_or_else(|| panic!("no sync result for the migration: {}", self.0));
        (
            r["health"].as_str().unwrap_or_default().to_string(),
            r["healthMessage"].as_str().unwrap_or_default().to_string(),
        )
    }

    #[track_caller]
    fn assert_phase(&self, want: &str, what: &str) {
        assert_eq!(
            self.phase(),
            want,
            "{what}: the sync operation is {} ({}); report:\n{}",
            self.phase(),
            self.0["message"],
            serde_json::to_string_pretty(&self.0).unwrap_or_default()
        );
    }
}

async fn sync(env: &Env, git: &Git, timeout: Duration) -> Synced {
    let out = tokio::process::Command::new(driver())
        .arg("sync")
        .arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args(["--namespace", &env.ns, "--health-lua", &health_lua()])
        .arg("--dir")
        .arg(git.0.path())
        .arg(format!("--timeout={}s", timeout.as_secs()))
        .output()
        .await
        .expect("run the gitops driver");
    assert!(
        out.status.success(),
        "gitops driver failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "driver output is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    eprintln!(
        "[{}] sync: {} {}",
        env.ns, report["phase"], report["message"]
    );
    Synced(report)
}

/// How long a sync may take before it counts as hung (expand or a rollout under kwok take
/// seconds).
const SYNC: Duration = Duration::from_secs(60);

fn wave(n: i32) -> Value {
    json!({"argocd.argoproj.io/sync-wave": n.to_string()})
}

fn migration(
    expand_sql: &str,
    contract: Value,
    rollout_timeout: Option<&str>,
    annotations: Value,
) -> Value {
    let mut a = wave(-1);
    if let (Some(a), Some(extra)) = (a.as_object_mut(), annotations.as_object()) {
        a.extend(extra.clone());
    }
    let mut contract = contract;
    contract["sql"] = json!("ALTER TABLE users DROP COLUMN legacy_flag;");
    let mut rollout = json!({"targets": [{"kind": "Deployment", "name": "shop-api"}]});
    if let Some(t) = rollout_timeout {
        rollout["timeout"] = json!(t);
    }
    json!({
        "apiVersion": "phasegate.dev/v1alpha1",
        "kind": "DatabaseMigration",
        "metadata": {"name": MIGRATION, "annotations": a},
        "spec": {
            "appVersion": "2.0.0",
            "database": {"urlSecretRef": {"name": "shop-db", "key": "url"}},
            "expand": {"sql": expand_sql},
            "contract": contract,
            "rollout": rollout,
            "safety": {"lockTimeout": "1s", "statementTimeout": "30s", "maxLockRetries": 3}
        }
    })
}

/// The app: `shop-api` at `version`; `broken` pods never become ready (a bad image).
fn deployment(version: &str, broken: bool) -> Value {
    let mut labels = json!({"app": "shop-api", "app.kubernetes.io/version": version});
    if broken {
        labels["e2e.phasegate.dev/unready"] = json!("true");
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shop-api", "annotations": wave(0)},
        "spec": {
            "replicas": 1,
            "progressDeadlineSeconds": 10,
            "selector": {"matchLabels": {"app": "shop-api"}},
            "strategy": {"rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "api", "image": format!("shop/api:{version}")}]}
            }
        }
    })
}

fn config(color: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "shop-config", "annotations": wave(0)},
        "data": {"color": color}
    })
}

async fn template_version(env: &Env) -> String {
    let d = env.deployments().get("shop-api").await.expect("Deployment");
    d.spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.labels)
        .and_then(|l| l.get("app.kubernetes.io/version").cloned())
        .unwrap_or_default()
}

/// The health fixture for `state` (`deploy/argocd/testdata/<state>.yaml`, the input of the
/// Argo CD and Flux health tables) is what the operator writes live in that state: the same
/// phase and the same conditions (type, status, reason). And Flux judges the live object as
/// `deploy/flux/kstatus_test.yaml` says it judges the fixture: kstatus (both libraries) and
/// the shipped `healthCheckExprs`, run by the Flux driver on the live object.
/// `PHASEGATE_WRITE_FIXTURES=1 make gitops-test` rewrites these fixtures from the live
/// objects (then `make lua-test gitops-test` shows what the health tables make of them).
async fn assert_live_matches_fixture(env: &Env, state: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let live = env.migrations().get(MIGRATION).await.expect("migration");
    let live = fixture_of(&serde_json::to_value(&live).expect("live object"));
    let fixture = format!("deploy/argocd/testdata/{state}.yaml");
    if std::env::var_os("PHASEGATE_WRITE_FIXTURES").is_some() {
        let text = format!(
            "# Generated from the live object in state {state} by tests/e2e/gitops.rs\n\
             # (PHASEGATE_WRITE_FIXTURES=1 make gitops-test); times and the namespace normalised.\n{}",
            serde_yaml::to_string(&live).expect("YAML")
        );
        std::fs::write(root.join(&fixture), text).expect("write fixture");
    }
    let text = std::fs::read_to_string(root.join(&fixture)).expect("fixture");
    let fixture_obj: Value = serde_yaml::from_str(&text).expect("fixture YAML");
    let shape = |o: &Value| {
        let mut conds: Vec<String> = o["status"]["conditions"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| format!("{} {} {}", c["type"], c["status"], c["reason"]))
                    .collect()
            })
            .unwrap_or_default();
        conds.sort();
        (o["status"]["phase"].clone(), conds)
    };
    assert_eq!(
        shape(&live),
        shape(&fixture_obj),
        "{fixture} no longer matches what the operator writes in that state \
         (PHASEGATE_WRITE_FIXTURES=1 regenerates it); live status:\n{}",
        serde_yaml::to_string(&live["status"]).unwrap_or_default()
    );

    let table: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("deploy/flux/kstatus_test.yaml")).expect("table"),
    )
    .expect("kstatus_test.yaml");
    let row = table["tests"]
        .as_array()
        .and_then(|rows| {
            rows.iter().find(|r| {
                r["inputPath"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&format!("/{state}.yaml")))
            })
        })
        .unwrap_or_else(|| panic!("no row for {state} in deploy/flux/kstatus_test.yaml"))
        .clone();
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("live.yaml"),
        serde_yaml::to_string(&live).expect("YAML"),
    )
    .expect("write live object");
    let one = json!({"tests": [{"inputPath": "live.yaml", "kstatus": row["kstatus"],
        "healthCheckExprs": row["healthCheckExprs"]}]});
    let table_path = dir.path().join("table.yaml");
    std::fs::write(&table_path, serde_yaml::to_string(&one).expect("YAML")).expect("write");
    let out = std::process::Command::new(flux_driver())
        .arg(root.join("deploy/flux/kustomizations.yaml"))
        .arg(&table_path)
        .output()
        .expect("run the Flux driver");
    assert!(
        out.status.success(),
        "Flux judges the live {state} object differently from its fixture:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A live DatabaseMigration as a fixture: no server-set metadata, namespace `shop`, every
/// time 2025-01-01, so a regenerated fixture differs only where the operator's output does.
fn fixture_of(live: &Value) -> Value {
    fn times(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if (k.ends_with("At") || k.ends_with("Time") || k == "contractNotBefore")
                        && v.is_string()
                    {
                        *v = json!("2025-01-01T00:00:00Z");
                    } else {
                        times(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(times),
            _ => {}
        }
    }
    let mut status = live["status"].clone();
    times(&mut status);
    let mut metadata = json!({
        "name": live["metadata"]["name"],
        "namespace": "shop",
        "generation": live["metadata"]["generation"],
    });
    if let Some(a) = live["metadata"]["annotations"].as_object() {
        let kept: serde_json::Map<String, Value> = a
            .iter()
            .filter(|(k, _)| {
                !k.starts_with("kubectl.kubernetes.io/")
                    && !k.starts_with("gitops-test.phasegate.dev/")
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !kept.is_empty() {
            metadata["annotations"] = Value::Object(kept);
        }
    }
    json!({
        "apiVersion": "phasegate.dev/v1alpha1",
        "kind": "DatabaseMigration",
        "metadata": metadata,
        "spec": live["spec"],
        "status": status,
    })
}

/// The app at 1.0.0, synced before any migration is in git.
async fn app_at_v1(test: &str) -> (Env, Git) {
    let env = Env::new(test).await;
    seed_users_table(&env).await;
    let git = Git::new();
    git.commit(&[deployment("1.0.0", false)]);
    sync(&env, &git, SYNC)
        .await
        .assert_phase("Succeeded", "the app without migrations");
    (env, git)
}

#[tokio::test(flavor = "multi_thread")]
async fn argocd_releases_the_app_exactly_when_expand_is_applied() {
    let (env, git) = app_at_v1("argo-happy").await;
    git.commit(&[
        migration(EXPAND, json!({}), None, json!({})),
        deployment("2.0.0", false),
    ]);
    let s = sync(&env, &git, SYNC).await;
    s.assert_phase("Succeeded", "expand, then the app");
    let gate = s
        .health_when_applied(
            "Deployment",
            "shop-api",
            &format!("DatabaseMigration/{MIGRATION}"),
        )
        .expect("the Deployment was applied");
    assert!(
        gate.starts_with("Healthy: Expand applied"),
        "wave 0 was released while the migration was {gate:?}"
    );
    assert_eq!(template_version(&env).await, "2.0.0");
    assert!(env.column_exists("users", "email_verified").await);
    // And in the cluster's own record: the 2.0.0 ReplicaSet came after expand finished.
    let m = env.migrations().get(MIGRATION).await.expect("migration");
    let expanded_at = m
        .status
        .and_then(|s| s.expand)
        .and_then(|e| e.finished_at)
        .expect("expand finishedAt")
        .0;
    let rs = Api::<ReplicaSet>::namespaced(env.client.clone(), &env.ns)
        .list(&ListParams::default().labels("app.kubernetes.io/version=2.0.0"))
        .await
        .expect("ReplicaSets");
    let created = rs
        .items
        .iter()
        .filter_map(|r| r.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
        .min()
        .expect("a 2.0.0 ReplicaSet");
    assert!(
        created >= expanded_at,
        "2.0.0 pods were created at {created}, before expand finished at {expanded_at}"
    );
    env.wait_phase(MIGRATION, Phase::Succeeded, T).await;
    assert_live_matches_fixture(&env, "succeeded").await;
    assert!(!env.column_exists("users", "legacy_flag").await);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn argocd_manual_approval_never_holds_a_sync() {
    let env = Env::new("argo-manual").await;
    seed_users_table(&env).await;
    let git = Git::new();
    git.commit(&[deployment("2.0.0", false), config("blue")]);
    sync(&env, &git, SYNC)
        .await
        .assert_phase("Succeeded", "the app at 2.0.0");
    env.wait_rolled_out("shop-api").await;

    // The version is already rolled out: Expanding goes straight to AwaitingApproval.
    git.commit(&[
        migration(EXPAND, json!({"approval": "Manual"}), None, json!({})),
        deployment("2.0.0", false),
        config("blue"),
    ]);
    let s = sync(&env, &git, SYNC).await;
    s.assert_phase(
        "Succeeded",
        "a Manual migration for a version already rolled out",
    );
    env.wait_phase(MIGRATION, Phase::AwaitingApproval, T).await;
    assert_live_matches_fixture(&env, "awaiting-approval").await;

    // An unrelated change lands while the approval is pending.
    git.commit(&[
        migration(EXPAND, json!({"approval": "Manual"}), None, json!({})),
        deployment("2.0.0", false),
        config("green"),
    ]);
    let s = sync(&env, &git, SYNC).await;
    s.assert_phase("Succeeded", "a ConfigMap change while approval is pending");
    let (health, msg) = s.migration_health();
    assert_eq!(health, "Healthy", "{msg}");
    assert!(
        msg.contains("phasegate.dev/approve"),
        "says how to approve: {msg}"
    );
    let cm = Api::<ConfigMap>::namespaced(env.client.clone(), &env.ns)
        .get("shop-config")
        .await
        .expect("ConfigMap");
    assert_eq!(
        cm.data.and_then(|d| d.get("color").cloned()).as_deref(),
        Some("green"),
        "the change landed"
    );
    assert!(
        env.job_names("contract").await.is_empty(),
        "no contract before approval"
    );

    // The approval, committed to git, lands too.
    git.commit(&[
        migration(
            EXPAND,
            json!({"approval": "Manual"}),
            None,
            json!({"phasegate.dev/approve": "true"}),
        ),
        deployment("2.0.0", false),
        config("green"),
    ]);
    sync(&env, &git, SYNC)
        .await
        .assert_phase("Succeeded", "the approval from git");
    env.wait_phase(MIGRATION, Phase::Succeeded, T).await;
    assert!(!env.column_exists("users", "legacy_flag").await);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn argocd_ships_the_fix_past_an_old_failed_migration() {
    let (env, git) = app_at_v1("argo-fix").await;
    // 2.0.0 ships with a bad image: its pods never become ready.
    git.commit(&[
        migration(EXPAND, json!({}), Some("6s"), json!({})),
        deployment("2.0.0", true),
    ]);
    let s = sync(&env, &git, SYNC).await;
    assert!(
        s.applied("Deployment", "shop-api"),
        "the broken Deployment was applied after expand: {}",
        s.0
    );
    let m = env.wait_phase(MIGRATION, Phase::Failed, T).await;
    let ready = crate::harness::condition(&m, "Ready").expect("Ready");
    assert_eq!(ready.1, "RolloutTimeout");
    // Plain kstatus too says Current: a Flux Kustomization that dependsOn the migrations
    // would let the fix through as well.
    assert_live_matches_fixture(&env, "rollout-timeout").await;

    // The fix: the same migration stays in git, the Deployment gets a good image.
    git.commit(&[
        migration(EXPAND, json!({}), Some("6s"), json!({})),
        deployment("2.0.0", false),
    ]);
    let s = sync(&env, &git, SYNC).await;
    s.assert_phase(
        "Succeeded",
        "the fixed Deployment past the timed-out migration",
    );
    let (health, msg) = s.migration_health();
    assert_eq!(health, "Healthy", "{msg}");
    assert!(
        msg.contains("contract blocked") && msg.contains("shop-api"),
        "says why contract is blocked: {msg}"
    );
    env.wait_rolled_out("shop-api").await;
    let d = env.deployments().get("shop-api").await.expect("Deployment");
    let labels = d
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.labels)
        .unwrap_or_default();
    assert!(
        !labels.contains_key("e2e.phasegate.dev/unready"),
        "the fix shipped: {labels:?}"
    );
    assert!(
        env.job_names("contract").await.is_empty(),
        "still no contract"
    );

    // A retry from git finishes the migration.
    git.commit(&[
        migration(
            EXPAND,
            json!({}),
            Some("6s"),
            json!({"phasegate.dev/retry": "after-fix"}),
        ),
        deployment("2.0.0", false),
    ]);
    sync(&env, &git, SYNC)
        .await
        .assert_phase("Succeeded", "the retry from git");
    env.wait_phase(MIGRATION, Phase::Succeeded, T).await;
    assert!(!env.column_exists("users", "legacy_flag").await);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn argocd_failed_expand_stops_the_wave() {
    let (env, git) = app_at_v1("argo-expandfail").await;
    git.commit(&[
        migration(
            "ALTER TABLE no_such_table ADD COLUMN x int;",
            json!({}),
            None,
            json!({}),
        ),
        deployment("2.0.0", false),
    ]);
    let s = sync(&env, &git, SYNC).await;
    s.assert_phase("Failed", "a failed expand fails the sync");
    let (health, msg) = s.migration_health();
    assert_eq!(health, "Degraded", "{msg}");
    assert!(msg.contains("no_such_table"), "the error is shown: {msg}");
    assert_live_matches_fixture(&env, "expand-failed").await;
    assert!(
        !s.applied("Deployment", "shop-api"),
        "wave 0 was applied: {}",
        s.0
    );
    assert_eq!(
        template_version(&env).await,
        "1.0.0",
        "the app was not released"
    );

    // Expand ran (and failed): editing it in git is refused by the API server, and the sync
    // says why.
    git.commit(&[
        migration(
            "ALTER TABLE users ADD COLUMN x int;",
            json!({}),
            None,
            json!({}),
        ),
        deployment("2.0.0", false),
    ]);
    let s = sync(&env, &git, SYNC).await;
    s.assert_phase("Failed", "an edit of an expand that ran");
    let text = s.0.to_string();
    assert!(
        text.contains("expand is immutable once the migration may have run it"),
        "the refusal is shown: {text}"
    );
    assert_eq!(template_version(&env).await, "1.0.0");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn argocd_refused_expand_is_fixed_in_git() {
    let (env, git) = app_at_v1("argo-refused").await;
    // The DROP belongs in contract: the linter refuses expand before anything runs.
    git.commit(&[
        migration(
            "ALTER TABLE users ADD COLUMN email_verified boolean; ALTER TABLE users DROP COLUMN legacy_flag;",
            json!({}),
            None,
            json!({}),
        ),
        deployment("2.0.0", false),
    ]);
    let s = sync(&env, &git, SYNC).await;
    s.assert_phase("Failed", "a refused expand fails the sync");
    let (health, msg) = s.migration_health();
    assert_eq!(health, "Degraded", "{msg}");
    assert!(msg.contains("refused"), "{msg}");
    assert!(!s.applied("Deployment", "shop-api"), "wave 0 was applied");

    // The fix, committed to the same migration: nothing had run, so the edit is accepted
    // and the migration resumes by itself.
    git.commit(&[
        migration(EXPAND, json!({}), None, json!({})),
        deployment("2.0.0", false),
    ]);
    let s = sync(&env, &git, SYNC).await;
    s.assert_phase("Succeeded", "the fixed migration, then the app");
    assert_eq!(template_version(&env).await, "2.0.0");
    env.wait_phase(MIGRATION, Phase::Succeeded, T).await;
    assert!(env.column_exists("users", "email_verified").await);
    assert!(!env.column_exists("users", "legacy_flag").await);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn argocd_waits_while_no_operator_handles_the_migration() {
    let (mut env, git) = app_at_v1("argo-nooperator").await;
    // Operator down (or not installed, or watching other namespaces).
    env.kill_operator().await;
    git.commit(&[
        migration(EXPAND, json!({}), None, json!({})),
        deployment("2.0.0", false),
    ]);
    let s = sync(&env, &git, Duration::from_secs(10)).await;
    s.assert_phase("Running", "the sync waits at wave -1");
    let (health, msg) = s.migration_health();
    assert_eq!(
        (health.as_str(), msg.as_str()),
        (
            "Progressing",
            "Waiting for the Phasegate operator to observe the migration"
        )
    );
    assert!(
        !s.applied("Deployment", "shop-api"),
        "wave 0 was applied: {}",
        s.0
    );
    assert_eq!(template_version(&env).await, "1.0.0");
    // What Flux's kstatus reads: the API server's default status, generation 1 not observed.
    let m = env.migrations().get(MIGRATION).await.expect("migration");
    let status = m.status.expect("the API server defaults status");
    assert_eq!(status.observed_generation, Some(0));
    assert_eq!(status.phase, None);
    assert_eq!(m.metadata.generation, Some(1));
    assert_live_matches_fixture(&env, "not-observed").await;

    // The operator comes back: the same sync finishes.
    env.start_operator();
    sync(&env, &git, SYNC)
        .await
        .assert_phase("Succeeded", "the sync once the operator runs");
    assert_eq!(template_version(&env).await, "2.0.0");
    env.cleanup().await;
}
