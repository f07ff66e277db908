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
    let mut env = Env::new("psa-refused").await;
    let (_operator, port) = env.operator_with_metrics().await;
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
    // Security: capabilities and seccomp are left unset.
    let mut spec = migration_spec(EXPAND, json!({}));
    spec["expand"] = json!({"job": {"template": {"spec": {
        "securityContext": {"runAsNonRoot": true, "runAsUser": 70},
        "containers": [{"name": "migrate", "image": "busybox", "command": ["true"],
            "securityContext": {"allowPrivilegeEscalation": false}}]}}}});
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
    assert!(msg.contains("seccompProfile"), "{msg}");
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
    // Counted for the alert PhasegateExecutorJobRefused.
    crate::harness::wait_metric(
        port,
        "phasegate_warning_events_total{reason=\"JobStuck\"}",
        |v| v >= 1.0,
    )
    .await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_executor_is_retried_automatically_and_applies_once() {
    let env = Env::new("executor-killed").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    // An older transaction holds the table: the executor waits for it (outside the lock
    // queue), which gives the test a live executor to kill.
    let holder = env.pg.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE users IN ACCESS SHARE MODE;")
        .await
        .expect("hold users");
    env.create_migration(NAME, migration_spec(EXPAND, json!({})))
        .await
        .expect("create");
    let pid = std::cell::Cell::new(None);
    crate::harness::wait_until(T, "the executor of attempt 1", || {
        pid.set(crate::harness::executor_pid(&env.ns, "expand", 1));
        std::future::ready(pid.get().is_some())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let pid = pid.get().expect("executor pid");
    // SIGKILL, as the OOM killer would: no report, no rollback by the executor itself.
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success(), "killed executor {pid}");

    let m = env
        .wait_migration(NAME, T, "attempt 2 started by itself", |m| {
            m.status
                .as_ref()
                .and_then(|s| s.expand.as_ref())
                .is_some_and(|e| e.attempts == 2)
        })
        .await;
    let e = m
        .status
        .as_ref()
        .and_then(|s| s.expand.clone())
        .expect("expand");
    assert_eq!(e.reason.as_deref(), Some("ExecutorDied"), "{e:?}");
    let why = e.message.unwrap_or_default();
    for part in [
        "attempt 1 died: the executor of Job",
        "died without its report (container exited with code 137 (killed by signal 9, SIGKILL))",
        "nothing was committed by this attempt unless the ledger (phasegate.ledger) says otherwise",
        "kubectl logs job/",
    ] {
        assert!(why.contains(part), "{part:?} in {why}");
    }
    let (_, _, msg) = condition(&m, "Reconciling").expect("Reconciling");
    assert!(msg.contains("attempt 1 died"), "{msg}");
    crate::harness::wait_until(T, "an ExecutorDied Event", || async {
        env.event_reasons(NAME)
            .await
            .iter()
            .any(|r| r == "ExecutorDied")
    })
    .await;
    assert!(
        !env.column_exists("users", "email_verified").await,
        "nothing applied yet"
    );

    // Let attempt 2 through: it applies, once.
    holder.batch_execute("COMMIT").await.expect("release");
    let m = env.wait_phase(NAME, Phase::AwaitingRollout, T).await;
    let e = m
        .status
        .as_ref()
        .and_then(|s| s.expand.clone())
        .expect("expand");
    assert!(e.succeeded && e.attempts == 2, "{e:?}");
    assert_eq!(e.reason, None);
    assert!(env.column_exists("users", "email_verified").await);
    let rows: i64 = holder
        .query_one(
            "SELECT count(*) FROM phasegate.ledger WHERE phase = 'expand'",
            &[],
        )
        .await
        .expect("ledger")
        .get(0);
    assert_eq!(rows, 1, "applied once");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn inputs_that_could_never_run_say_why() {
    let env = Env::new("never-run").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;

    // Inline SQL over the CRD's bound: refused at admission, naming the field.
    let huge = format!("{EXPAND} -- {}", "x".repeat(131_072));
    let refused = env
        .create_migration("too-huge", migration_spec(&huge, json!({})))
        .await
        .expect_err("the API server refuses it");
    let text = refused.to_string();
    assert!(
        text.contains("spec.expand.sql") && text.contains("Too long"),
        "{text}"
    );
    // Within the schema's length but over what one environment variable may hold: refused at
    // admission too, saying why (the planner keeps the same bound for objects stored before).
    let big = format!("{EXPAND} -- {}", "x".repeat(131_010));
    let refused = env
        .create_migration("too-big", migration_spec(&big, json!({})))
        .await
        .expect_err("the API server refuses it");
    let text = refused.to_string();
    assert!(
        text.contains("spec.expand.sql") && text.contains("at most 131057 bytes"),
        "{text}"
    );

    // Timeouts that would switch PostgreSQL's limit off, or that no server accepts.
    for (name, lock, statement) in [("lock-off", "0s", "30s"), ("lock-forever", "9999h", "30s")] {
        let mut spec = migration_spec(EXPAND, json!({}));
        spec["safety"]["lockTimeout"] = json!(lock);
        spec["safety"]["statementTimeout"] = json!(statement);
        env.create_migration(name, spec)
            .await
            .expect("the API server admits it");
        let m = env.wait_phase(name, Phase::Failed, T).await;
        let (_, reason, msg) = condition(&m, "Stalled").expect("Stalled");
        assert_eq!(reason, "InvalidSpec", "{msg}");
        assert!(
            msg.contains("spec.safety.lockTimeout") && msg.contains("out of range"),
            "{msg}"
        );
    }
    assert!(
        env.job_names("expand").await.is_empty(),
        "no Job for any of them"
    );

    // A misspelt URL parameter: the executor names it, and never the password.
    let url = env
        .pg
        .url_with("127.0.0.1", "sslmode=disable&statement_timout=5");
    env.create_secret("typo-db", &url).await;
    let mut spec = migration_spec(EXPAND, json!({}));
    spec["database"] = json!({"urlSecretRef": {"name": "typo-db", "key": "url"}});
    env.create_migration("typo", spec).await.expect("create");
    let m = env.wait_phase("typo", Phase::Failed, T).await;
    let (_, reason, msg) = condition(&m, "Stalled").expect("Stalled");
    assert_eq!(reason, "ExpandFailed", "{msg}");
    assert!(
        msg.contains("unknown option `statement_timout`"),
        "names the parameter: {msg}"
    );
    let status = serde_json::to_string(&m.status).expect("status");
    assert!(!status.contains(crate::postgres::PASSWORD), "{status}");
    env.cleanup().await;
}
