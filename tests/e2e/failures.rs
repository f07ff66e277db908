//! Every stuck or dead attempt explains itself: in status, and in a Warning Event.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use kube::Api;
use phasegate::api::Phase;
use serde_json::json;

use crate::harness::{condition, Env};
use crate::{migration_spec, seed_users_table, EXPAND, T};

const NAME: &str = "users-email-verified";

#[tokio::test(flavor = "multi_thread")]
async fn pods_refused_by_pod_security_are_named_in_status() {
    let env = Env::new("psa-refused").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    // Enforced from now on: the app's own pods were admitted before.
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    let label =
        json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}});
    namespaces
        .patch(&env.ns, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .expect("label namespace");
    // Admitted by the Job policy (non-root, no host access), refused by restricted Pod
    // Security: privilege escalation, capabilities and seccomp are left unset.
    let mut spec = migration_spec(EXPAND, json!({}));
    spec["expand"] = json!({"job": {"template": {"spec": {
        "securityContext": {"runAsNonRoot": true, "runAsUser": 70},
        "containers": [{"name": "migrate", "image": "busybox", "command": ["true"]}]}}}});
    env.create_migration(NAME, spec).await.expect("create");
    let m = env
        .wait_migration(NAME, T, "the refusal in Reconciling", |m| {
            condition(m, "Reconciling").is_some_and(|(_, _, msg)| msg.contains("FailedCreate"))
        })
        .await;
    let (status, reason, msg) = condition(&m, "Reconciling").expect("Reconciling");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Expanding"));
    assert!(
        msg.starts_with("expand Job attempt 1 is running; pods refused: FailedCreate: pods \""),
        "{msg}"
    );
    assert!(
        msg.contains("violates PodSecurity \"restricted:latest\""),
        "{msg}"
    );
    assert!(msg.contains("allowPrivilegeEscalation"), "{msg}");
    assert_eq!(
        m.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Expanding)
    );
    crate::harness::wait_until(T, "a JobStuck Event", || async {
        env.event_reasons(NAME)
            .await
            .iter()
            .any(|r| r == "JobStuck")
    })
    .await;
    env.cleanup().await;
}
