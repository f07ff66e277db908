//! Tenant safety: authoring a migration grants no more than running SQL against the database
//! its Secret names.

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::Api;
use phasegate::api::Phase;
use serde_json::json;

use crate::harness::{condition, Env};
use crate::{migration_spec, seed_users_table, EXPAND, T};

const NAME: &str = "users-email-verified";

#[tokio::test(flavor = "multi_thread")]
async fn a_template_the_job_policy_forbids_is_refused_before_any_job() {
    let env = Env::new("policy-refused").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    // What a migration author without pod rights would like to run.
    let mut spec = migration_spec(EXPAND, json!({}));
    spec["expand"] = json!({"job": {"template": {
        "metadata": {"annotations": {"seccomp.security.alpha.kubernetes.io/pod": "unconfined"}},
        "spec": {
        "serviceAccountName": "deployer",
        "priorityClassName": "system-node-critical",
        "hostPID": true,
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        "containers": [{"name": "pwn", "image": "busybox",
            "securityContext": {"privileged": true},
            "volumeMounts": [{"name": "root", "mountPath": "/host"}]}]}}}});
    env.create_migration(NAME, spec).await.expect("create");
    let m = env.wait_phase(NAME, Phase::Failed, T).await;
    let (_, reason, msg) = condition(&m, "Stalled").expect("Stalled");
    assert_eq!(reason, "PolicyRefused", "{msg}");
    for rule in [
        "service-account",
        "host-namespace",
        "host-path",
        "privileged",
        "privilege-escalation",
        "priority-class",
        "seccomp",
    ] {
        assert!(msg.contains(rule), "names the rule {rule}: {msg}");
    }
    assert!(
        msg.contains("spec.expand.job.template.spec.containers[0].securityContext.privileged"),
        "names the field: {msg}"
    );
    for field in [
        "spec.expand.job.template.spec.priorityClassName",
        "spec.expand.job.template.metadata.annotations[\"seccomp.security.alpha.kubernetes.io/pod\"]",
        "spec.expand.job.template.spec.containers[0].securityContext.allowPrivilegeEscalation",
    ] {
        assert!(msg.contains(field), "names the field {field}: {msg}");
    }
    assert!(env.job_names("expand").await.is_empty(), "no Job");
    assert!(env
        .event_reasons(NAME)
        .await
        .iter()
        .any(|r| r == "PolicyRefused"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_job_cannot_read_a_secret_back_through_status() {
    let env = Env::new("secret-echo").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    const VALUE: &str = "sk_live_9f8e7d6c5b4a";
    env.create_secret("payments-api-key", VALUE).await;
    // The author names an unrelated Secret and prints what Phasegate hands the container.
    let mut spec = migration_spec(EXPAND, json!({}));
    spec["database"] = json!({"urlSecretRef": {"name": "payments-api-key", "key": "url"}});
    spec["expand"] = json!({"job": {"template": {"spec": {
        "securityContext": {"runAsNonRoot": true, "runAsUser": 70},
        "containers": [{"name": "leak", "image": "busybox",
            "securityContext": {"allowPrivilegeEscalation": false},
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "command": ["sh", "-c", "echo \"url=$PHASEGATE_DATABASE_URL\"; exit 3"]}]}}}});
    env.create_migration(NAME, spec).await.expect("create");
    let m = env.wait_phase(NAME, Phase::Failed, T).await;
    let (_, reason, msg) = condition(&m, "Stalled").expect("Stalled");
    assert_eq!(reason, "ExpandFailed", "{msg}");
    assert!(
        msg.contains("exited with code 3"),
        "says how it ended: {msg}"
    );
    assert!(
        msg.contains("kubectl logs job/"),
        "says where the output is: {msg}"
    );

    let status = serde_json::to_string(&m.status).expect("status");
    assert!(
        !status.contains(VALUE),
        "the Secret's value is not in status: {status}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.ns);
    for e in events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
    {
        let note = e.note.unwrap_or_default();
        assert!(
            !note.contains(VALUE),
            "the Secret's value is not in an Event: {note}"
        );
    }
    let logs = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-logs");
    let operator_log = std::fs::read_to_string(logs.join(format!("{}-operator-1.log", env.ns)))
        .unwrap_or_default();
    assert!(!operator_log.is_empty(), "the operator log was read");
    assert!(
        !operator_log.contains(VALUE),
        "the Secret's value is not in the operator log"
    );
    env.cleanup().await;
}
