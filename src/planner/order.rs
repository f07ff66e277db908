//! The order of expand among migrations: explicit `dependsOn`, and creation order among
//! migrations on the same database (same namespace and database Secret key), so that
//! migrations applied together run in a documented, repeatable order.

use kube::ResourceExt;

use crate::api::{DatabaseMigration, Phase};

/// What `me`'s expand waits for among `all` (the migrations of its namespace): one line per
/// migration, e.g. `add-email (dependsOn; Expanding)`. Empty: expand may start.
pub fn waits_for<M: std::borrow::Borrow<DatabaseMigration>>(
    me: &DatabaseMigration,
    all: &[M],
) -> Vec<String> {
    let my_name = me.name_any();
    let expand_applied = |m: &DatabaseMigration| {
        m.status
            .as_ref()
            .and_then(|s| s.expand.as_ref())
            .is_some_and(|e| e.succeeded)
    };
    let phase = |m: &DatabaseMigration| {
        m.status
            .as_ref()
            .and_then(|s| s.phase)
            .map_or("not reconciled yet", Phase::as_str)
    };
    let mut out = Vec::new();
    for dep in &me.spec.depends_on {
        match all.iter().map(M::borrow).find(|m| &m.name_any() == dep) {
            None => out.push(format!(
                "{dep} (dependsOn; no such migration in this namespace)"
            )),
            Some(m) if !expand_applied(m) => out.push(format!("{dep} (dependsOn; {})", phase(m))),
            Some(_) => {}
        }
    }
    let key = |m: &DatabaseMigration| (m.metadata.creation_timestamp.clone(), m.name_any());
    let same_db =
        |m: &DatabaseMigration| m.spec.database.url_secret_ref == me.spec.database.url_secret_ref;
    for m in all.iter().map(M::borrow) {
        let earlier = key(m) < key(me);
        let name = m.name_any();
        // A failed one no longer holds the line; one that waits for us would deadlock.
        let in_line = !expand_applied(m)
            && m.status.as_ref().and_then(|s| s.phase) != Some(Phase::Failed)
            && m.metadata.deletion_timestamp.is_none()
            && !m.spec.depends_on.contains(&my_name);
        if name != my_name
            && same_db(m)
            && earlier
            && in_line
            && !me.spec.depends_on.contains(&name)
        {
            out.push(format!(
                "{name} (same database, created earlier; {})",
                phase(m)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::api::{DatabaseMigrationStatus, PhaseStatus};

    fn m(name: &str, created: i64, secret: &str, expand_applied: bool) -> DatabaseMigration {
        let spec = serde_json::from_value(serde_json::json!({
            "appVersion": "2.0.0",
            "database": {"urlSecretRef": {"name": secret, "key": "url"}},
            "expand": {"sql": "SELECT 1;"},
            "contract": {"sql": "SELECT 1;"},
            "rollout": {"targets": [{"kind": "Deployment", "name": "api"}]}
        }))
        .expect("spec");
        let mut d = DatabaseMigration::new(name, spec);
        d.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(1_700_000_000 + created).expect("ts"),
        ));
        d.status = Some(DatabaseMigrationStatus {
            phase: Some(if expand_applied {
                Phase::AwaitingRollout
            } else {
                Phase::Pending
            }),
            expand: expand_applied.then(|| PhaseStatus {
                succeeded: true,
                ..PhaseStatus::default()
            }),
            ..DatabaseMigrationStatus::default()
        });
        d
    }

    #[test]
    fn same_database_runs_in_creation_order_then_name() {
        let a = m("b-first", 0, "db", false);
        let b = m("a-second", 5, "db", false);
        let c = m("c-tie", 0, "db", false);
        let all = [a.clone(), b.clone(), c.clone()];
        assert!(waits_for(&a, &all).is_empty());
        assert_eq!(
            waits_for(&c, &all).len(),
            1,
            "same second: by name, b-first < c-tie"
        );
        let w = waits_for(&b, &all);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("b-first (same database, created earlier; Pending)"));
    }

    #[test]
    fn other_databases_applied_and_failed_ones_do_not_hold_the_line() {
        let me = m("me", 10, "db", false);
        let other_db = m("other", 0, "other-db", false);
        let applied = m("applied", 0, "db", true);
        let mut failed = m("failed", 0, "db", false);
        failed.status.as_mut().expect("status").phase = Some(Phase::Failed);
        assert!(waits_for(&me, &[me.clone(), other_db, applied, failed]).is_empty());
    }

    #[test]
    fn depends_on_waits_for_the_named_expand_whatever_the_database() {
        let mut me = m("comment", 0, "db", false);
        me.spec.depends_on = vec!["add-email".into(), "ghost".into()];
        let dep = m("add-email", 10, "other-db", false);
        let w = waits_for(&me, &[me.clone(), dep.clone()]);
        assert_eq!(
            w,
            vec![
                "add-email (dependsOn; Pending)".to_string(),
                "ghost (dependsOn; no such migration in this namespace)".to_string()
            ]
        );
        let done = m("add-email", 10, "other-db", true);
        assert_eq!(
            waits_for(&me, &[me.clone(), done]).len(),
            1,
            "only ghost left"
        );
    }

    #[test]
    fn an_earlier_migration_that_depends_on_me_does_not_deadlock() {
        let mut earlier = m("earlier", 0, "db", false);
        earlier.spec.depends_on = vec!["later".into()];
        let later = m("later", 10, "db", false);
        let all = [earlier.clone(), later.clone()];
        assert!(waits_for(&later, &all).is_empty());
        assert_eq!(
            waits_for(&earlier, &all),
            vec!["later (dependsOn; Pending)".to_string()]
        );
    }
}
