//! The operator↔executor contract, checked from both sides: every `PHASEGATE_*` variable the
//! operator puts into an executor Job is one the executor reads (`phasegate apply` or
//! `phasegate backfill`), so a name changed on one side only fails here, not in a cluster.

use std::collections::BTreeSet;

use clap::{Args, Command};
use phasegate::api::{DatabaseMigration, DatabaseMigrationSpec, DatabaseMigrationStatus};
use phasegate::controller::jobs::{build_job, ExecutorConfig};
use phasegate::planner::JobPhase;

/// The variables a clap argument group reads.
fn declared<A: Args>() -> BTreeSet<String> {
    A::augment_args(Command::new("x"))
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

fn migration(backfill: bool) -> DatabaseMigration {
    let mut spec = serde_json::json!({
        "appVersion": "2.0.0",
        "database": {"urlSecretRef": {"name": "db", "key": "url"}},
        "expand": {"sql": "ALTER TABLE users ADD COLUMN a int;"},
        "contract": {"sql": "ALTER TABLE users DROP COLUMN b;"},
        "rollout": {"targets": [{"kind": "Deployment", "name": "shop-api"}],
                    "versionOrder": "NotPrevious"},
        "safety": {"applicationNames": ["shop-api"]}
    });
    if backfill {
        spec["backfill"] = serde_json::json!({
            "table": "users", "key": "id",
            "sql": "UPDATE users SET a = 1 WHERE id > $1 AND id <= $2"
        });
    }
    let spec: DatabaseMigrationSpec = serde_json::from_value(spec).expect("spec");
    let mut m = DatabaseMigration::new("m", spec);
    m.metadata.namespace = Some("shop".into());
    m.metadata.uid = Some("0a1b2c3d-0000-4000-8000-000000000000".into());
    m
}

fn job_env(m: &DatabaseMigration, phase: JobPhase) -> BTreeSet<String> {
    let status: DatabaseMigrationStatus = serde_json::from_value(serde_json::json!({
        "rolloutCompletedAt": "2026-12-01T00:00:00Z",
        "previousVersions": ["1.0.0"],
        "targets": [{"kind": "Deployment", "name": "shop-api", "complete": true, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1, "oldPods": 0}]
    }))
    .expect("status");
    let cfg = ExecutorConfig {
        image: "phasegate:test".into(),
        grant_url: "http://phasegate.phasegate-system.svc:8082".into(),
        ..ExecutorConfig::default()
    };
    let job = build_job(m, &status, phase, 1, &cfg).expect("job");
    let pod = job.spec.expect("job spec").template.spec.expect("pod spec");
    pod.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| e.name.clone())
        .collect()
}

#[test]
fn every_variable_the_operator_sets_is_one_the_executor_reads() {
    let apply = declared::<phasegate::executor::ApplyArgs>();
    let backfill = declared::<phasegate::executor::backfill::BackfillArgs>();
    for (phase, reads) in [
        (JobPhase::Expand, &apply),
        (JobPhase::Contract, &apply),
        (JobPhase::Backfill, &backfill),
    ] {
        let set = job_env(&migration(true), phase);
        let unread: Vec<&String> = set
            .iter()
            .filter(|n| n.starts_with("PHASEGATE_") && !reads.contains(*n))
            .collect();
        assert!(
            unread.is_empty(),
            "{phase}: the operator sets {unread:?}, which the executor never reads"
        );
    }
    // The commit grant's variables, on both sides.
    let contract = job_env(&migration(false), JobPhase::Contract);
    for name in [
        phasegate::protocol::grant::ENV_URL,
        phasegate::protocol::grant::ENV_ATTEMPT,
    ] {
        assert!(contract.contains(name), "contract Job lacks {name}");
        assert!(apply.contains(name), "the executor does not read {name}");
    }
    assert!(apply.contains(phasegate::protocol::grant::ENV_WAIT));
}
