//! Benchmarks on the local cluster (not tests: `make bench-order` runs them, with this tree's
//! operator and a baseline one, and prints the figures side by side).

use std::time::{Duration, Instant};

use phasegate::api::Phase;

use crate::harness::Env;
use crate::order::{chain_name, create_chain, expand_order_in_ledger};
use crate::seed_users_table;

/// Status writes (PATCH, PUT, server-side apply) of DatabaseMigrations the API server counted
/// so far, cluster-wide.
async fn status_writes(env: &Env) -> u64 {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = env
        .client
        .request_text(req)
        .await
        .expect("apiserver metrics");
    text.lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains("resource=\"databasemigrations\"")
                && l.contains("subresource=\"status\"")
                && ["PATCH", "PUT", "APPLY"]
                    .iter()
                    .any(|v| l.contains(&format!("verb=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A GitOps bootstrap of one service's history: N migrations on one database applied at once,
/// each needing the column the one before it adds. Prints how long until every one has
/// expanded, how many status writes and expand Jobs that took, and whether the ledger kept
/// creation order.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: make bench-order"]
async fn bench_migrations_per_db() {
    let n: usize = std::env::var("PHASEGATE_BENCH_MIGRATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let env = Env::new("bench-order").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    let writes_before = status_writes(&env).await;
    let started = Instant::now();
    create_chain(&env, n).await;
    let limit = Duration::from_secs(
        std::env::var("PHASEGATE_BENCH_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(900),
    );
    let mut expanded = 0;
    while started.elapsed() < limit {
        let list = env
            .migrations()
            .list(&Default::default())
            .await
            .expect("list migrations");
        expanded = list
            .items
            .iter()
            .filter(|m| m.status.as_ref().and_then(|s| s.phase) == Some(Phase::AwaitingRollout))
            .count();
        if expanded == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let writes = status_writes(&env).await - writes_before;
    let order = expand_order_in_ledger(&env).await;
    let want: Vec<String> = (0..expanded).map(chain_name).collect();
    let jobs = env.job_names("expand").await.len();
    println!(
        "migrations_per_db: migrations={n} expanded={expanded} seconds={seconds:.1} status_writes={writes} jobs={jobs} ordered={}",
        order == want
    );
    env.cleanup().await;
}

/// The operator's memory with a fleet migration of `PHASEGATE_BENCH_TENANTS` tenant schemas
/// (default 1,000), run to Succeeded through the real operator and executors: its status holds
/// counts and 10 failures whatever the tenants, so the figure should not grow with them.
/// `make bench-fanout` runs it with 10 and with 1,000 tenants and prints both.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: make bench-fanout"]
async fn bench_fleet_operator_rss() {
    let n: usize = std::env::var("PHASEGATE_BENCH_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let env = Env::new("bench-fleet").await;
    env.pg
        .client()
        .await
        .batch_execute(&format!(
            "DO $$ BEGIN FOR i IN 1..{n} LOOP
               EXECUTE format('CREATE SCHEMA tenant_%s; CREATE TABLE tenant_%s.users (id int PRIMARY KEY, legacy text)', i, i);
             END LOOP; END $$"
        ))
        .await
        .expect("tenant schemas");
    env.create_deployment("shop-api", 1, "2.0.0").await;
    let started = Instant::now();
    env.create_migration(
        "fleet",
        serde_json::json!({
            "appVersion": "2.0.0",
            "database": {"urlSecretRef": {"name": "shop-db", "key": "url"}},
            "expand": {"sql": "ALTER TABLE users ADD COLUMN verified boolean;"},
            "contract": {"sql": "ALTER TABLE users DROP COLUMN legacy;"},
            "rollout": {"targets": [{"kind": "Deployment", "name": "shop-api"}]},
            "tenants": {"schemas": "tenant\\_%", "canary": {"count": 1}}
        }),
    )
    .await
    .expect("create");
    let m = env
        .wait_phase("fleet", Phase::Succeeded, Duration::from_secs(900))
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let applied = m
        .status
        .as_ref()
        .and_then(|s| s.contract.as_ref())
        .and_then(|c| c.tenants.as_ref())
        .map_or(0, |t| t.applied);
    let (rss, peak) = env.operator_rss_kib().expect("operator's /proc status");
    println!(
        "fleet_operator: tenants={n} applied={applied} seconds={seconds:.1} operator_rss_mib={:.1} operator_peak_mib={:.1}",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    env.cleanup().await;
}
