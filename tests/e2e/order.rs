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

/// The `i`th migration of [`create_chain`].
pub(crate) fn chain_name(i: usize) -> String {
    format!("m{i:03}")
}

/// `n` migrations on the shop database, each needing the column the one before it adds, so
/// that only creation order applies them. Created within seconds: where the second is the
/// same the names decide, and they sort in creation order.
pub(crate) async fn create_chain(env: &Env, n: usize) {
    for i in 0..n {
        let mut sql = format!("ALTER TABLE users ADD COLUMN c{i:03} int;");
        if i > 0 {
            sql.push_str(&format!(
                " COMMENT ON COLUMN users.c{:03} IS 'before';",
                i - 1
            ));
        }
        env.create_migration(
            &chain_name(i),
            migration_spec(&sql, json!({"sql": "SELECT 1;"})),
        )
        .await
        .expect("create");
    }
}

/// The migrations whose expand the ledger records as applied, in the order they were.
pub(crate) async fn expand_order_in_ledger(env: &Env) -> Vec<String> {
    env.pg
        .client()
        .await
        .query(
            "SELECT name FROM phasegate.ledger WHERE phase = 'expand' ORDER BY applied_at, name",
            &[],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
}

/// Applied at once (a GitOps bootstrap of a service's history), migrations of one database
/// start their expand Jobs together and keep creation order in the ledger: each one needs the
/// column the one before it adds. More than `WINDOW` of them: the rest wait in line.
#[tokio::test(flavor = "multi_thread")]
async fn many_migrations_on_one_database_expand_together_in_creation_order() {
    const N: usize = phasegate::planner::order::WINDOW + 4;
    let env = Env::new("order-many").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    let started = std::time::Instant::now();
    create_chain(&env, N).await;
    for i in 0..N {
        env.wait_phase(&chain_name(i), Phase::AwaitingRollout, T)
            .await;
    }
    eprintln!(
        "order-many: {N} migrations on one database expanded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let order = expand_order_in_ledger(&env).await;
    let want: Vec<String> = (0..N).map(chain_name).collect();
    assert_eq!(order, want, "applied in creation order");
    env.cleanup().await;
}

/// An earlier migration that fails does not hold the line: a later one whose executor was
/// waiting for it in the ledger is started again without it.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_earlier_migration_does_not_hold_the_ones_waiting_for_it() {
    let env = Env::new("order-failed").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    // Fails after a few seconds, with the later migration's executor already waiting for it.
    env.create_migration(
        "a-fails",
        migration_spec(
            "SELECT pg_sleep(4); ALTER TABLE no_such_table ADD COLUMN x int;",
            json!({"sql": "SELECT 1;"}),
        ),
    )
    .await
    .expect("create");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.create_migration(
        "b-add-email",
        migration_spec(ADD, json!({"sql": "SELECT 1;"})),
    )
    .await
    .expect("create");
    let waiting = env
        .wait_migration("b-add-email", T, "waiting for a-fails in the ledger", |m| {
            m.status
                .as_ref()
                .is_some_and(|s| s.expand_after == ["a-fails".to_string()])
        })
        .await;
    assert_eq!(waiting.status.and_then(|s| s.phase), Some(Phase::Expanding));
    env.wait_phase("a-fails", Phase::Failed, T).await;
    let m = env
        .wait_phase("b-add-email", Phase::AwaitingRollout, T)
        .await;
    let expand = m.status.and_then(|s| s.expand).expect("expand status");
    assert_eq!(expand.attempts, 2, "restarted without a-fails: {expand:?}");
    env.cleanup().await;
}
