//! The SQL linter runs in the operator before any Job: refusals, overrides and warnings are
//! visible in status and Events.

use kube::api::{Patch, PatchParams};
use phasegate::api::Phase;
use serde_json::json;

use crate::harness::{condition, Env};
use crate::{migration_spec, seed_users_table, T};

#[tokio::test(flavor = "multi_thread")]
async fn drop_in_expand_is_refused_until_explicitly_allowed() {
    let env = Env::new("lint").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    let sql = "ALTER TABLE users ADD COLUMN nickname text;\nALTER TABLE users DROP COLUMN email;";
    env.create_migration("risky", migration_spec(sql, json!({})))
        .await
        .expect("create");
    let m = env.wait_phase("risky", Phase::Failed, T).await;
    let (stalled, reason, msg) = condition(&m, "Stalled").expect("Stalled");
    assert_eq!((stalled.as_str(), reason.as_str()), ("True", "SqlRefused"));
    for part in [
        "spec.expand.sql",
        "line 2",
        "[drop-column]",
        "DROP COLUMN email",
        "Fix:",
    ] {
        assert!(msg.contains(part), "{part:?} in {msg}");
    }
    assert!(
        env.job_names("expand").await.is_empty(),
        "refused before any Job"
    );
    env.wait_event("risky", "SqlRefused").await;
    assert!(env.column_exists("users", "email").await);

    let patch = json!({"spec": {"safety": {"allow": ["drop-column"]}}});
    env.migrations()
        .patch("risky", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("allow");
    let m = env.wait_phase("risky", Phase::AwaitingRollout, T).await;
    let overrides = m
        .status
        .and_then(|s| s.lint)
        .map(|l| l.overrides)
        .unwrap_or_default();
    assert!(
        overrides.iter().any(|o| o.contains("[drop-column]")),
        "override recorded: {overrides:?}"
    );
    env.wait_event("risky", "LintOverride").await;
    assert!(
        !env.column_exists("users", "email").await,
        "the expert's expand ran"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_heavy_expand_warns_and_proceeds() {
    let env = Env::new("lintwarn").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    env.create_migration(
        "index",
        migration_spec("CREATE INDEX users_email ON users (email);", json!({})),
    )
    .await
    .expect("create");
    let m = env.wait_phase("index", Phase::AwaitingRollout, T).await;
    let warnings = m
        .status
        .and_then(|s| s.lint)
        .map(|l| l.warnings)
        .unwrap_or_default();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("create-index-non-concurrently")),
        "{warnings:?}"
    );
    env.wait_event("index", "LintWarning").await;
    env.cleanup().await;
}
