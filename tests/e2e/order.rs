//! Order among migrations: `dependsOn`, and creation order on the same database.

use std::time::Duration;

use phasegate::api::Phase;
use serde_json::json;

use crate::harness::{condition, Env};
use crate::{migration_spec, seed_users_table, T};

const ADD: &str = "ALTER TABLE users ADD COLUMN email_address text;";
const COMMENT: &str = "COMMENT ON COLUMN users.email_address IS 'verified address';";

async fn comment_exists(env: &Env) -> bool {
    let db = env.pg.client().await;
    let row = db
        .query_one(
            "SELECT col_description('users'::regclass, attnum) IS NOT NULL FROM pg_attribute \
             WHERE attrelid = 'users'::regclass AND attname = 'email_address'",
            &[],
        )
        .await;
    row.map(|r| r.get::<_, bool>(0)).unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn depends_on_holds_expand_until_the_other_expand_is_applied() {
    let env = Env::new("order-depends").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    // The dependent migration arrives first.
    let mut comment = migration_spec(COMMENT, json!({"sql": "SELECT 1;"}));
    comment["dependsOn"] = json!(["add-email"]);
    env.create_migration("comment-email", comment)
        .await
        .expect("create");
    let m = env
        .wait_migration("comment-email", T, "waiting for add-email", |m| {
            condition(m, "Reconciling").is_some_and(|c| c.1 == "WaitingForMigration")
        })
        .await;
    let (_, _, msg) = condition(&m, "Reconciling").expect("Reconciling");
    assert!(msg.contains("add-email (dependsOn;"), "{msg}");
    assert_eq!(m.status.and_then(|s| s.phase), Some(Phase::Pending));
    assert!(env.job_names("expand").await.is_empty(), "nothing ran");

    env.create_migration(
        "add-email",
        migration_spec(ADD, json!({"sql": "SELECT 1;"})),
    )
    .await
    .expect("create");
    env.wait_phase("comment-email", Phase::AwaitingRollout, T)
        .await;
    env.wait_phase("add-email", Phase::AwaitingRollout, T).await;
    assert!(
        comment_exists(&env).await,
        "the dependent expand ran after the column existed"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_on_one_database_expand_in_creation_order() {
    let env = Env::new("order-created").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    env.create_migration(
        "z-add-email",
        migration_spec(ADD, json!({"sql": "SELECT 1;"})),
    )
    .await
    .expect("create");
    // Created a second later, and first by name: still runs second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.create_migration(
        "a-comment-email",
        migration_spec(COMMENT, json!({"sql": "SELECT 1;"})),
    )
    .await
    .expect("create");
    env.wait_phase("a-comment-email", Phase::AwaitingRollout, T)
        .await;
    env.wait_phase("z-add-email", Phase::AwaitingRollout, T)
        .await;
    assert!(comment_exists(&env).await);
    env.cleanup().await;
}
