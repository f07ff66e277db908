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
/// expand in creation order in a few Jobs, not one Job and pod start each: the first in line
/// carries the ones ready with it (an expand batch). Each needs the column the one before it
/// adds.
#[tokio::test(flavor = "multi_thread")]
async fn many_migrations_on_one_database_expand_in_a_few_jobs_in_creation_order() {
    const N: usize = 24;
    let env = Env::new("order-many").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    let started = std::time::Instant::now();
    create_chain(&env, N).await;
    for i in 0..N {
        env.wait_phase(&chain_name(i), Phase::AwaitingRollout, T)
            .await;
    }
    let jobs = env.job_names("expand").await;
    eprintln!(
        "order-many: {N} migrations on one database expanded in {:.1} s by {} Jobs",
        started.elapsed().as_secs_f64(),
        jobs.len()
    );
    let order = expand_order_in_ledger(&env).await;
    let want: Vec<String> = (0..N).map(chain_name).collect();
    assert_eq!(order, want, "applied in creation order");
    // The first may start before the others exist; the rest ride in batches.
    assert!(jobs.len() <= 4, "{} expand Jobs: {jobs:?}", jobs.len());
    // Each names the Job that applied it.
    for m in env
        .migrations()
        .list(&Default::default())
        .await
        .expect("list")
        .items
    {
        let job = m.status.and_then(|s| s.expand).and_then(|e| e.job_name);
        assert!(
            job.as_ref().is_some_and(|j| jobs.contains(j)),
            "{job:?} not in {jobs:?}"
        );
    }
    env.cleanup().await;
}

/// A migration that fails inside a batch fails alone: the ones before it stay applied, and the
/// ones after it, which its Job never ran, expand next in their own Job, in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_migration_that_fails_in_a_batch_fails_alone_and_the_later_ones_expand_next() {
    let env = Env::new("order-failed").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    // a-add waits for z-gate (created last), so that all three are there when its Job starts.
    let mut lead = migration_spec(ADD, json!({"sql": "SELECT 1;"}));
    lead["dependsOn"] = json!(["z-gate"]);
    env.create_migration("a-add", lead).await.expect("create");
    env.create_migration(
        "b-fails",
        migration_spec(
            "ALTER TABLE no_such_table ADD COLUMN x int;",
            json!({"sql": "SELECT 1;"}),
        ),
    )
    .await
    .expect("create");
    env.create_migration(
        "c-comment",
        migration_spec(COMMENT, json!({"sql": "SELECT 1;"})),
    )
    .await
    .expect("create");
    env.wait_phase("c-comment", Phase::Pending, T).await;
    env.create_migration(
        "z-gate",
        migration_spec("SELECT 1;", json!({"sql": "SELECT 1;"})),
    )
    .await
    .expect("create");
    let failed = env.wait_phase("b-fails", Phase::Failed, T).await;
    let (_, _, message) = condition(&failed, "Ready").expect("Ready");
    assert!(message.contains("no_such_table"), "{message}");
    let a = env.wait_phase("a-add", Phase::AwaitingRollout, T).await;
    let c = env.wait_phase("c-comment", Phase::AwaitingRollout, T).await;
    let job = |m: &phasegate::api::DatabaseMigration| {
        m.status
            .as_ref()
            .and_then(|s| s.expand.as_ref())
            .and_then(|e| e.job_name.clone())
    };
    assert_eq!(job(&failed), job(&a), "b-fails ran in a-add's batch Job");
    let c_expand = c.status.and_then(|s| s.expand).expect("expand status");
    assert_eq!(
        c_expand.attempts, 2,
        "its seat did not run, then its own Job: {c_expand:?}"
    );
    assert!(comment_exists(&env).await);
    assert_eq!(
        expand_order_in_ledger(&env).await,
        ["z-gate", "a-add", "c-comment"]
    );
    env.cleanup().await;
}

/// A Job anyone who may create Jobs can make — naming a waiting migration as a member of a
/// batch, with the lead's labels and owner reference — is not taken for its expand: only a Job
/// the lead's status records (or this operator created) is. Taken, it would mark the expand
/// applied by whatever the forged Job's pod reports, and contract would then drop what the app
/// still needs.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_merely_claims_to_carry_a_migration_is_not_taken_for_its_expand() {
    use phasegate::protocol::batch::{Seat, ANNOTATION_EXPAND_BATCH};
    use phasegate::protocol::checksum;
    let env = Env::new("order-forged").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    // The lead waits for a migration that never comes; the member waits behind it.
    let mut lead = migration_spec(ADD, json!({"sql": "SELECT 1;"}));
    lead["dependsOn"] = json!(["never"]);
    let lead = env.create_migration("a-lead", lead).await.expect("create");
    let member = env
        .create_migration(
            "b-member",
            migration_spec(COMMENT, json!({"sql": "SELECT 1;"})),
        )
        .await
        .expect("create");
    env.wait_phase("b-member", Phase::Pending, T).await;
    let owner = |m: &kube::api::DynamicObject, controller: bool| {
        json!({"apiVersion": "phasegate.dev/v1alpha1", "kind": "DatabaseMigration",
               "name": m.metadata.name, "uid": m.metadata.uid, "controller": controller})
    };
    let seats = vec![Seat {
        name: "b-member".into(),
        uid: member.metadata.uid.clone().unwrap_or_default(),
        checksum: checksum::label(COMMENT),
    }];
    let forged: k8s_openapi::api::batch::v1::Job = serde_json::from_value(json!({
        "metadata": {
            "name": "a-lead-expand-1-forged",
            "labels": {
                "phasegate.dev/executor": "true",
                "phasegate.dev/migration": "a-lead",
                "phasegate.dev/migration-uid": lead.metadata.uid,
                "phasegate.dev/phase": "expand",
                "phasegate.dev/sql-checksum": checksum::label(ADD),
            },
            "annotations": {ANNOTATION_EXPAND_BATCH: serde_json::to_string(&seats).expect("json")},
            "ownerReferences": [owner(&lead, true), owner(&member, false)],
        },
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "executor", "image": "busybox", "command": ["true"]}],
        }}},
    }))
    .expect("job");
    env.jobs()
        .create(&Default::default(), &forged)
        .await
        .expect("create the forged Job");
    // Its creation wakes the member (it is an owner); give it several reconciles.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let m = env.migrations().get("b-member").await.expect("get");
    let status = m.status.expect("status");
    assert_eq!(status.phase, Some(Phase::Pending), "{status:?}");
    assert!(
        status
            .expand
            .as_ref()
            .is_none_or(|e| e.attempts == 0 && e.job_name.is_none()),
        "took the forged Job: {:?}",
        status.expand
    );
    env.cleanup().await;
}

/// The executor of a batch SIGKILLed while a member waits for a table: what it applied stays
/// applied, the lead is retried automatically, the ones its Job did not finish go back in line
/// and expand next, and every migration applies exactly once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_executor_killed_mid_way_resumes_and_applies_each_migration_once() {
    let env = Env::new("order-killed").await;
    seed_users_table(&env).await;
    env.create_deployment("shop-api", 1, "1.0.0").await;
    let db = env.pg.client().await;
    db.batch_execute("CREATE TABLE other (id int)")
        .await
        .expect("other");
    // An old transaction holds `other`: m3 waits for it with m0..m2 applied.
    let holder = env.pg.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE other IN ACCESS SHARE MODE;")
        .await
        .expect("hold other");
    let sql = |i: usize| match i {
        3 => "ALTER TABLE other ADD COLUMN x int;".to_string(),
        i => format!("ALTER TABLE users ADD COLUMN k{i} int;"),
    };
    let names: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let mut spec = migration_spec(&sql(i), json!({"sql": "SELECT 1;"}));
        if i == 0 {
            spec["dependsOn"] = json!(["gate"]);
        }
        env.create_migration(name, spec).await.expect("create");
    }
    env.wait_phase("m5", Phase::Pending, T).await;
    env.create_migration(
        "gate",
        migration_spec("SELECT 1;", json!({"sql": "SELECT 1;"})),
    )
    .await
    .expect("create");
    crate::harness::wait_until(T, "m2 applied by the batch", || async {
        expand_order_in_ledger(&env)
            .await
            .contains(&"m2".to_string())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = crate::harness::executor_pid(&env.ns, "expand", 1).expect("the batch's executor");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success(), "killed executor {pid}");
    // The lead's next attempt carries the rest again; m3 still waits for the table.
    env.wait_migration("m0", T, "attempt 2 of the lead", |m| {
        m.status
            .as_ref()
            .and_then(|s| s.expand.as_ref())
            .is_some_and(|e| e.attempts == 2)
    })
    .await;
    holder.batch_execute("COMMIT").await.expect("release other");
    for name in &names {
        env.wait_phase(name, Phase::AwaitingRollout, T).await;
    }
    let rows: Vec<(String, i32)> = db
        .query(
            "SELECT name, attempts FROM phasegate.ledger WHERE phase = 'expand' AND name LIKE 'm%'
              ORDER BY applied_at",
            &[],
        )
        .await
        .expect("ledger")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want: Vec<(String, i32)> = names.iter().map(|n| (n.clone(), 1)).collect();
    assert_eq!(rows, want, "each applied once, in order");
    let m1 = env.migrations().get("m1").await.expect("m1");
    let e = m1.status.and_then(|s| s.expand).expect("expand");
    assert_eq!(
        e.attempts, 2,
        "its first seat died with the executor: {e:?}"
    );
    env.cleanup().await;
}
