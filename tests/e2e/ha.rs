//! High availability and observability: two elected operators for one namespace (failover on
//! SIGKILL, Lease release on SIGTERM), and `/metrics`, `/healthz`, `/readyz` of a running one.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use phasegate::api::Phase;
use serde_json::json;
use tokio::process::Child;

use crate::harness::{free_port, http_get, wait_until, Env};
use crate::{migration_spec, seed_users_table, EXPAND, T};

/// Short leases so that failover takes seconds: renewed every ~4 s, expired 6 s after.
fn elected(identity: &str, port: u16) -> Vec<String> {
    [
        "--leader-election",
        "--lease-identity",
        identity,
        "--lease-duration",
        "6",
        "--lease-grace",
        "2",
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn spawn(env: &Env, label: &str, args: &[String]) -> Child {
    env.spawn_operator(label, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

async fn holder(env: &Env) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    let name = format!("phasegate-{}", env.ns);
    leases
        .get_opt(&name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

async fn metrics(port: u16) -> String {
    let (code, body) = http_get(port, "/metrics").await.expect("GET /metrics");
    assert_eq!(code, 200, "/metrics: {body}");
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF: {body}"
    );
    body
}

/// The value of the series `series` (name with its labels, exactly as exposed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn probes_ok(port: u16) -> bool {
    matches!(http_get(port, "/healthz").await, Ok((200, _)))
        && matches!(http_get(port, "/readyz").await, Ok((200, _)))
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_failover() {
    let mut env = Env::new("ha").await;
    // This test runs its own operators, both elected.
    env.kill_operator().await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;

    let (port_a, port_b) = (free_port(), free_port());
    let mut a = Some(spawn(&env, "op-a", &elected("op-a", port_a)));
    let mut b = Some(spawn(&env, "op-b", &elected("op-b", port_b)));
    wait_until(Duration::from_secs(30), "a holder of the Lease", || async {
        holder(&env).await.is_some()
    })
    .await;
    let leader = holder(&env).await.expect("holder");
    let ((mut leader_proc, leader_port), (standby, mut standby_proc, standby_port)) =
        match leader.as_str() {
            "op-a" => (
                (a.take().expect("a"), port_a),
                ("op-b", b.take().expect("b"), port_b),
            ),
            "op-b" => (
                (b.take().expect("b"), port_b),
                ("op-a", a.take().expect("a"), port_a),
            ),
            other => panic!("unexpected Lease holder {other}"),
        };
    // Both are live and ready: the leader once its cache synced, the standby as a standby.
    wait_until(Duration::from_secs(30), "both operators ready", || async {
        probes_ok(leader_port).await && probes_ok(standby_port).await
    })
    .await;

    env.create_migration("first", migration_spec(EXPAND, json!({})))
        .await
        .expect("create migration");
    env.wait_phase("first", Phase::AwaitingRollout, T).await;
    assert_eq!(
        holder(&env).await.as_deref(),
        Some(leader.as_str()),
        "the Lease did not move"
    );
    // Only the leader reconciles.
    let lm = metrics(leader_port).await;
    let sm = metrics(standby_port).await;
    assert_eq!(value(&lm, "phasegate_leader"), Some(1.0), "{lm}");
    assert!(
        value(&lm, "phasegate_reconciles_total").unwrap_or(0.0) > 0.0,
        "{lm}"
    );
    assert_eq!(value(&sm, "phasegate_leader"), Some(0.0), "{sm}");
    assert_eq!(
        value(&sm, "phasegate_reconciles_total"),
        Some(0.0),
        "the standby reconciled: {sm}"
    );
    assert!(
        !sm.contains("phasegate_migrations{"),
        "a standby reports no migrations: {sm}"
    );
    let gauge = format!(
        "phasegate_migrations{{namespace=\"{}\",phase=\"AwaitingRollout\"}}",
        env.ns
    );
    assert_eq!(value(&lm, &gauge), Some(1.0), "{lm}");

    // A node failure: the leader dies without releasing the Lease.
    leader_proc.kill().await.expect("SIGKILL the leader");
    let killed = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "the standby takes the Lease",
        || async { holder(&env).await.as_deref() == Some(standby) },
    )
    .await;
    let failover = killed.elapsed();
    eprintln!("failover to {standby} took {failover:?}");
    assert!(
        failover < Duration::from_secs(20),
        "failover took {failover:?}"
    );

    // The new leader reconciles both the old migration and one created after the failover.
    let second = migration_spec(
        "ALTER TABLE users ADD COLUMN nickname text;",
        json!({"sql": "ALTER TABLE users DROP COLUMN email;"}),
    );
    env.create_migration("second", second)
        .await
        .expect("create migration");
    env.wait_phase("second", Phase::AwaitingRollout, T).await;
    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_phase("first", Phase::Succeeded, T).await;
    env.wait_phase("second", Phase::Succeeded, T).await;
    assert!(
        !env.column_exists("users", "legacy_flag").await
            && !env.column_exists("users", "email").await,
        "both contracts ran"
    );
    assert!(
        env.column_exists("users", "email_verified").await
            && env.column_exists("users", "nickname").await
    );
    let nm = metrics(standby_port).await;
    assert_eq!(value(&nm, "phasegate_leader"), Some(1.0), "{nm}");
    let gauge = format!(
        "phasegate_migrations{{namespace=\"{}\",phase=\"Succeeded\"}}",
        env.ns
    );
    assert_eq!(value(&nm, &gauge), Some(2.0), "{nm}");
    assert!(probes_ok(standby_port).await);

    // SIGTERM: the leader drains, releases the Lease and exits cleanly.
    let pid = standby_proc.id().expect("pid");
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .expect("kill -TERM");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), standby_proc.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(exit.success(), "clean exit after SIGTERM: {exit:?}");
    assert_eq!(holder(&env).await, None, "the Lease is released on SIGTERM");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_probes() {
    let mut env = Env::new("metrics").await;
    env.kill_operator().await;
    let port = free_port();
    // Without election (the default outside a pod): this process is the leader.
    let _op = env.spawn_operator("metrics", &["--metrics-addr", &format!("127.0.0.1:{port}")]);
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    wait_until(
        Duration::from_secs(30),
        "/healthz and /readyz answer 200",
        || probes_ok(port),
    )
    .await;

    env.create_migration("users-email-verified", migration_spec(EXPAND, json!({})))
        .await
        .expect("create migration");
    env.wait_phase("users-email-verified", Phase::AwaitingRollout, T)
        .await;
    let m = metrics(port).await;
    let ns = &env.ns;
    assert_eq!(
        value(
            &m,
            &format!("phasegate_migrations{{namespace=\"{ns}\",phase=\"AwaitingRollout\"}}")
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            &format!("phasegate_migrations{{namespace=\"{ns}\",phase=\"Succeeded\"}}")
        ),
        Some(0.0),
        "{m}"
    );
    assert!(
        value(
            &m,
            &format!("phasegate_rollout_wait_seconds{{namespace=\"{ns}\"}}")
        )
        .is_some(),
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            "phasegate_phase_duration_seconds_count{step=\"expand\",result=\"succeeded\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            "phasegate_executor_lock_retries_total{phase=\"expand\"}"
        ),
        Some(0.0),
        "{m}"
    );
    assert!(
        value(
            &m,
            "phasegate_executor_lock_wait_seconds_total{phase=\"expand\"}"
        )
        .is_some(),
        "{m}"
    );

    env.set_version("shop-api", "2.0.0", json!({})).await;
    env.wait_phase("users-email-verified", Phase::Succeeded, T)
        .await;
    let m = metrics(port).await;
    assert_eq!(
        value(
            &m,
            &format!("phasegate_migrations{{namespace=\"{ns}\",phase=\"Succeeded\"}}")
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        value(
            &m,
            &format!("phasegate_migrations{{namespace=\"{ns}\",phase=\"AwaitingRollout\"}}")
        ),
        Some(0.0),
        "{m}"
    );
    for step in ["expand", "rollout_wait", "contract"] {
        let series = format!(
            "phasegate_phase_duration_seconds_count{{step=\"{step}\",result=\"succeeded\"}}"
        );
        assert_eq!(value(&m, &series), Some(1.0), "{series} in {m}");
    }
    assert!(
        value(&m, "phasegate_reconciles_total").unwrap_or(0.0) >= 4.0,
        "{m}"
    );
    assert!(
        value(&m, "phasegate_reconcile_duration_seconds_count").unwrap_or(0.0) >= 4.0,
        "{m}"
    );
    assert_eq!(value(&m, "phasegate_leader"), Some(1.0), "{m}");
    assert!(probes_ok(port).await, "still live and ready");
    let (code, _) = http_get(port, "/nope").await.expect("GET");
    assert_eq!(code, 404);
    env.cleanup().await;
}
