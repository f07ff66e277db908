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
/// expanded, how many status writes that took, and whether the ledger kept creation order.
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
    println!(
        "migrations_per_db: migrations={n} expanded={expanded} seconds={seconds:.1} status_writes={writes} ordered={}",
        order == want
    );
    env.cleanup().await;
}
