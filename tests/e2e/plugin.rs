//! The `kubectl phasegate` plugin commands (`approve`, `retry`, `status`), run as the real
//! binary against the test cluster, the way a user runs them from a shell.

use std::time::Duration;

use phasegate::api::Phase;
use serde_json::json;

use crate::harness::{condition, Env};

const T: Duration = Duration::from_secs(90);
const NAME: &str = "users-email-verified";

async fn seed(env: &Env) {
    let db = env.pg.client().await;
    db.batch_execute("CREATE TABLE users (id bigserial PRIMARY KEY, email text, legacy_flag boolean); INSERT INTO users (email) VALUES ('a@example.com');")
        .await
        .expect("seed table");
}

fn spec(expand_sql: &str, approval: &str) -> serde_json::Value {
    json!({
        "appVersion": "2.0.0",
        "database": {"urlSecretRef": {"name": "shop-db", "key": "url"}},
        "expand": {"sql": expand_sql},
        "contract": {"sql": "ALTER TABLE users DROP COLUMN legacy_flag;", "approval": approval},
        "rollout": {"targets": [{"kind": "Deployment", "name": "shop-api"}]},
        "safety": {"lockTimeout": "1s", "statementTimeout": "30s", "maxLockRetries": 3}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_approve_releases_a_manual_contract() {
    let env = Env::new("plugin-approve").await;
    seed(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    env.create_migration(
        NAME,
        spec(
            "ALTER TABLE users ADD COLUMN email_verified boolean;",
            "Manual",
        ),
    )
    .await
    .expect("create");
    env.wait_phase(NAME, Phase::AwaitingRollout, T).await;
    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_phase(NAME, Phase::AwaitingApproval, T).await;

    let ns = env.ns.clone();
    let (ok, out, _) = env.phasegate_cli(&["status", NAME, "-n", &ns], None).await;
    assert!(ok);
    assert!(out.contains("Phase:       AwaitingApproval"), "{out}");
    assert!(out.contains("approval Manual (not approved yet)"), "{out}");
    assert!(
        out.contains(&format!(
            "Next: approve contract: phasegate approve {NAME} -n {ns}"
        )),
        "{out}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        env.job_names("contract").await.is_empty(),
        "no contract before approval"
    );

    let (ok, out, err) = env.phasegate_cli(&["approve", NAME, "-n", &ns], None).await;
    assert!(ok, "approve succeeds: {err}");
    assert!(out.contains("approved; contract starts now"), "{out}");
    let m = env.migrations().get(NAME).await.expect("get");
    assert_eq!(
        m.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("phasegate.dev/approve"))
            .map(String::as_str),
        Some("true")
    );
    let m = env.wait_phase(NAME, Phase::Succeeded, T).await;
    assert_eq!(
        condition(&m, "Contracted").map(|c| c.0).as_deref(),
        Some("True")
    );
    assert!(
        !env.column_exists("users", "legacy_flag").await,
        "contract ran after approval"
    );

    // Approving again changes nothing and says so; a missing migration is a clear error.
    let (ok, out, _) = env.phasegate_cli(&["approve", NAME, "-n", &ns], None).await;
    assert!(ok && out.contains("already approved"), "{out}");
    let (ok, _, err) = env
        .phasegate_cli(&["approve", "no-such-migration", "-n", &ns], None)
        .await;
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "DatabaseMigration \"no-such-migration\" not found in namespace \"{ns}\""
        )),
        "{err}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_retry_reruns_a_fixed_expand() {
    let env = Env::new("plugin-retry").await;
    seed(&env).await;
    env.create_deployment("shop-api", 1, "2.0.0").await;
    env.create_migration(
        NAME,
        spec("ALTER TABLE orders ADD COLUMN note text;", "Automatic"),
    )
    .await
    .expect("create");
    env.wait_phase(NAME, Phase::Failed, T).await;

    let ns = env.ns.clone();
    let (ok, out, _) = env.phasegate_cli(&["status", NAME, "-n", &ns], None).await;
    assert!(ok);
    assert!(out.contains("Phase:       Failed"), "{out}");
    assert!(
        out.contains("Stalled") && out.contains("ExpandFailed") && out.contains("orders"),
        "{out}"
    );
    assert!(out.contains("attempts:  1  (failed)"), "{out}");
    assert!(
        out.contains(&format!(
            "Next: fix the cause above, then: phasegate retry {NAME} -n {ns}"
        )),
        "{out}"
    );

    // Fix the cause, then retry.
    env.pg
        .client()
        .await
        .batch_execute("CREATE TABLE orders (id bigserial PRIMARY KEY);")
        .await
        .expect("create orders");
    let (ok, out, err) = env.phasegate_cli(&["retry", NAME, "-n", &ns], None).await;
    assert!(ok, "retry succeeds: {err}");
    assert!(
        out.contains("retry requested; expand runs again (attempt 2)"),
        "{out}"
    );
    let m = env.wait_phase(NAME, Phase::Succeeded, T).await;
    assert_eq!(
        m.status
            .as_ref()
            .and_then(|s| s.expand.as_ref())
            .map(|e| e.attempts),
        Some(2)
    );
    assert!(env.column_exists("orders", "note").await);
    assert!(!env.column_exists("users", "legacy_flag").await);

    // Nothing has failed now: retry refuses instead of setting a value the operator ignores.
    let (ok, _, err) = env.phasegate_cli(&["retry", NAME, "-n", &ns], None).await;
    assert!(!ok);
    assert!(
        err.contains("is Succeeded, not Failed: there is nothing to retry"),
        "{err}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_status_summarises_phase_targets_and_conditions() {
    let env = Env::new("plugin-status").await;
    seed(&env).await;
    env.create_deployment("shop-api", 3, "1.0.0").await;
    env.create_migration(
        NAME,
        spec(
            "ALTER TABLE users ADD COLUMN email_verified boolean;",
            "Automatic",
        ),
    )
    .await
    .expect("create");
    env.wait_migration(NAME, T, "the target observed", |m| {
        m.status.as_ref().is_some_and(|s| {
            s.phase == Some(Phase::AwaitingRollout)
                && s.targets.first().is_some_and(|t| t.old_pods == 3)
        })
    })
    .await;

    // No -n: the namespace comes from the kubeconfig context.
    let text = std::fs::read_to_string(env.kubeconfig()).expect("read kubeconfig");
    let mut kc: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig yaml");
    let current = kc["current-context"]
        .as_str()
        .expect("current-context")
        .to_string();
    let contexts = kc["contexts"].as_sequence_mut().expect("contexts");
    let ctx = contexts
        .iter_mut()
        .find(|c| c["name"].as_str() == Some(&current))
        .expect("current context");
    ctx["context"]["namespace"] = serde_yaml::Value::from(env.ns.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kc).expect("yaml")).expect("write kubeconfig");

    let (ok, out, err) = env.phasegate_cli(&["status", NAME], Some(&path)).await;
    assert!(ok, "{err}");
    for want in [
        format!("Migration:   {}/{NAME}", env.ns),
        "Phase:       AwaitingRollout".into(),
        "App version: 2.0.0".into(),
        "Targets (0/1 ready)".into(),
        "Deployment/shop-api  waiting  version 1.0.0  replicas 3  updated 3  available 3  old pods 3".into(),
        "why: ".into(),
        "Conditions".into(),
        "Ready ".into(),
        "RolloutComplete  False".into(),
        "Expanded ".into(),
        format!("job:       {NAME}-expand-1-"),
        "attempts:  1  (applied)".into(),
    ] {
        assert!(out.contains(&want), "missing {want:?} in:\n{out}");
    }
    assert!(
        !out.contains('\x1b'),
        "no colour when stdout is not a terminal: {out:?}"
    );

    // Clear errors without a usable kubeconfig.
    let missing = dir.path().join("missing");
    let (ok, _, err) = env.phasegate_cli(&["status", NAME], Some(&missing)).await;
    assert!(
        !ok && err.contains("cannot read kubeconfig") && err.contains("missing"),
        "{err}"
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .args(["status", NAME])
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", dir.path())
        .output()
        .await
        .expect("run phasegate");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no kubeconfig found"), "{err}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_refused_expand_is_fixed_in_place_not_retried() {
    let env = Env::new("plugin-refused").await;
    seed(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    env.create_migration(
        NAME,
        spec(
            "ALTER TABLE users ADD COLUMN email_verified boolean; ALTER TABLE users DROP COLUMN legacy_flag;",
            "Automatic",
        ),
    )
    .await
    .expect("create");
    let m = env.wait_phase(NAME, Phase::Failed, T).await;
    assert_eq!(
        condition(&m, "Stalled").map(|c| c.1).as_deref(),
        Some("SqlRefused")
    );

    let ns = env.ns.clone();
    let (ok, out, _) = env.phasegate_cli(&["status", NAME, "-n", &ns], None).await;
    assert!(ok);
    assert!(out.contains("Next: Fix the spec in place"), "{out}");
    assert!(!out.contains("phasegate retry"), "no retry hint: {out}");
    let (ok, out, err) = env.phasegate_cli(&["retry", NAME, "-n", &ns], None).await;
    assert!(!ok, "retry refuses: {out}");
    assert!(
        err.contains("refused before anything ran (SqlRefused)")
            && err.contains("nothing would run"),
        "{err}"
    );
    assert!(!err.contains("runs again"), "{err}");

    // What the status says, done: edit expand in place; the migration resumes by itself.
    let patch = json!({"spec": {"expand": {"sql": "ALTER TABLE users ADD COLUMN email_verified boolean;"}}});
    env.migrations()
        .patch(
            NAME,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("expand is editable while nothing has run");
    env.wait_phase(NAME, Phase::AwaitingRollout, T).await;
    assert!(env.column_exists("users", "email_verified").await);
    // Now expand has run: it is immutable again.
    let patch = json!({"spec": {"expand": {"sql": "ALTER TABLE users ADD COLUMN other int;"}}});
    let err = env
        .migrations()
        .patch(
            NAME,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect_err("expand is immutable once it ran");
    assert!(err.to_string().contains("expand is immutable"), "{err}");

    // Flags before the command, as `kubectl phasegate -n NS …` passes them; list; -o json.
    let (ok, out, err) = env.phasegate_cli(&["-n", &ns, "status"], None).await;
    assert!(ok, "{err}");
    assert!(
        out.lines().next().is_some_and(|l| l.starts_with("NAME"))
            && out.contains(NAME)
            && out.contains("AwaitingRollout"),
        "{out}"
    );
    let (ok, out, err) = env
        .phasegate_cli(&["--namespace", &ns, "status", NAME, "-o", "json"], None)
        .await;
    assert!(ok, "{err}");
    let obj: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(obj["status"]["phase"], "AwaitingRollout", "{out}");
    let (ok, out, _) = env
        .phasegate_cli(&["status", "-n", &ns, "-o", "yaml"], None)
        .await;
    assert!(
        ok && out.contains("kind: List") && out.contains(NAME),
        "{out}"
    );
    env.cleanup().await;
}
