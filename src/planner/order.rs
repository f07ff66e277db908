//! The order of expand among migrations: explicit `dependsOn`, and creation order among
//! migrations on the same database (same namespace and database Secret key), so that
//! migrations applied together run in a documented, repeatable order.
//!
//! The same-database order is kept in the database where it can be: the expand Jobs of up to
//! [`WINDOW`] migrations start together and each executor waits until the ledger records the
//! expand of every earlier one it was given (`PHASEGATE_EXPAND_AFTER`). A Job and pod start
//! costs seconds; in series, a GitOps bootstrap of 200 migrations took minutes. Only where
//! the ledger cannot tell — a user `job` phase on either side — does the operator hold expand
//! back until the earlier expand is recorded in status.

use kube::ResourceExt;

use crate::api::{DatabaseMigration, Phase};

/// Migrations of one database whose expand Jobs run at once, the earliest waiting in none:
/// each waiting executor holds one database connection.
pub const WINDOW: usize = 16;

/// Where `me`'s expand stands among the migrations of its namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpandOrder {
    /// What holds the Job back (empty: it may start), one line each, e.g. `add-email
    /// (dependsOn; Expanding)`. Of the same database only the nearest earlier migration is
    /// named, so a waiting migration's status changes when the one in front of it moves, not
    /// whenever the queue does.
    pub holds: Vec<String>,
    /// Earlier migrations of the same database whose expand the executor waits for in the
    /// ledger before its own, by name.
    pub after: Vec<String>,
}

/// Where `me`'s expand stands among `all` (the migrations of its namespace).
pub fn expand_order<M: std::borrow::Borrow<DatabaseMigration>>(
    me: &DatabaseMigration,
    all: &[M],
) -> ExpandOrder {
    let mut holds = depends_on_holds(me, all);
    let earlier = earlier_on_same_database(me, all);
    let Some(nearest) = earlier.last() else {
        return ExpandOrder {
            holds,
            after: Vec::new(),
        };
    };
    // A user Job writes no ledger row; a fleet migration writes one per tenant.
    let in_ledger = |m: &DatabaseMigration| m.spec.expand.sql.is_some() && m.spec.tenants.is_none();
    if !in_ledger(me) || !earlier.iter().all(|m| in_ledger(m)) || earlier.len() >= WINDOW {
        holds.push(format!(
            "{} (same database, created earlier; {})",
            nearest.name_any(),
            phase_of(nearest)
        ));
        return ExpandOrder {
            holds,
            after: Vec::new(),
        };
    }
    ExpandOrder {
        holds,
        after: earlier.iter().map(|m| m.name_any()).collect(),
    }
}

/// Whether one of `after` (names given to a running expand executor) has left the line without
/// its expand applied — failed or deleted — so the executor would wait for it forever; which.
pub fn left_the_line<M: std::borrow::Borrow<DatabaseMigration>>(
    me: &DatabaseMigration,
    after: &[String],
    all: &[M],
) -> Option<String> {
    let in_line: Vec<String> = earlier_on_same_database(me, all)
        .iter()
        .map(|m| m.name_any())
        .collect();
    after.iter().find_map(|name| {
        let m = all.iter().map(M::borrow).find(|m| &m.name_any() == name);
        match m {
            None => Some(format!("{name} was deleted")),
            Some(m) if expand_applied(m) || in_line.contains(name) => None,
            Some(m) => Some(format!("{name} left the line ({})", phase_of(m))),
        }
    })
}

/// The migrations of `all` whose expand may be waiting for `changed` to move: the next
/// [`WINDOW`] not started on its database after it, and those whose `dependsOn` names it.
/// Their own objects do not change when it does, so no watch event wakes them: a phase change
/// of `changed` does ([`crate::controller`]).
pub fn waiting_behind<'a, M: std::borrow::Borrow<DatabaseMigration>>(
    changed: &DatabaseMigration,
    all: &'a [M],
) -> Vec<&'a DatabaseMigration> {
    let name = changed.name_any();
    let key = |m: &DatabaseMigration| (m.metadata.creation_timestamp.clone(), m.name_any());
    let not_started = |m: &DatabaseMigration| {
        matches!(
            m.status.as_ref().and_then(|s| s.phase),
            None | Some(Phase::Pending)
        ) && m.name_any() != name
    };
    let mut out: Vec<&DatabaseMigration> = all
        .iter()
        .map(M::borrow)
        .filter(|m| {
            not_started(m)
                && m.spec.database.url_secret_ref == changed.spec.database.url_secret_ref
                && key(m) > key(changed)
        })
        .collect();
    out.sort_by_key(|m| key(m));
    out.truncate(WINDOW);
    for m in all.iter().map(M::borrow) {
        let named = m.spec.depends_on.contains(&name);
        if named && not_started(m) && !out.iter().any(|o| o.name_any() == m.name_any()) {
            out.push(m);
        }
    }
    out
}

fn expand_applied(m: &DatabaseMigration) -> bool {
    m.status
        .as_ref()
        .and_then(|s| s.expand.as_ref())
        .is_some_and(|e| e.succeeded)
}

fn phase_of(m: &DatabaseMigration) -> &'static str {
    m.status
        .as_ref()
        .and_then(|s| s.phase)
        .map_or("not reconciled yet", Phase::as_str)
}

/// `me`'s `dependsOn` not applied yet, one line each.
fn depends_on_holds<M: std::borrow::Borrow<DatabaseMigration>>(
    me: &DatabaseMigration,
    all: &[M],
) -> Vec<String> {
    let mut out = Vec::new();
    for dep in &me.spec.depends_on {
        match all.iter().map(M::borrow).find(|m| &m.name_any() == dep) {
            None => out.push(format!(
                "{dep} (dependsOn; no such migration in this namespace)"
            )),
            Some(m) if !expand_applied(m) => {
                out.push(format!("{dep} (dependsOn; {})", phase_of(m)))
            }
            Some(_) => {}
        }
    }
    out
}

/// The migrations of `me`'s database created before it (then by name) whose expand is still
/// to run, in that order.
fn earlier_on_same_database<'a, M: std::borrow::Borrow<DatabaseMigration>>(
    me: &DatabaseMigration,
    all: &'a [M],
) -> Vec<&'a DatabaseMigration> {
    let my_name = me.name_any();
    let key = |m: &DatabaseMigration| (m.metadata.creation_timestamp.clone(), m.name_any());
    let same_db =
        |m: &DatabaseMigration| m.spec.database.url_secret_ref == me.spec.database.url_secret_ref;
    let mut out: Vec<&DatabaseMigration> = all
        .iter()
        .map(M::borrow)
        .filter(|m| {
            let name = m.name_any();
            // A failed one no longer holds the line; one that waits for us would deadlock.
            let in_line = !expand_applied(m)
                && m.status.as_ref().and_then(|s| s.phase) != Some(Phase::Failed)
                && m.metadata.deletion_timestamp.is_none()
                && !m.spec.depends_on.contains(&my_name);
            name != my_name
                && same_db(m)
                && key(m) < key(me)
                && in_line
                && !me.spec.depends_on.contains(&name)
        })
        .collect();
    out.sort_by_key(|m| key(m));
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
    fn a_migration_that_moves_wakes_the_next_window_behind_it_and_its_dependents() {
        let mut all: Vec<DatabaseMigration> = (0..40)
            .map(|i| m(&format!("m{i:03}"), i, "db", false))
            .collect();
        for d in all.iter_mut().take(16) {
            d.status.as_mut().expect("status").phase = Some(Phase::Expanding);
        }
        let mut other = m("other", 100, "other-db", false);
        other.spec.depends_on = vec!["m000".into()];
        all.push(other);
        let woken: Vec<String> = waiting_behind(&all[0], &all)
            .iter()
            .map(|d| d.name_any())
            .collect();
        let want: Vec<String> = (16..32)
            .map(|i| format!("m{i:03}"))
            .chain(["other".to_string()])
            .collect();
        assert_eq!(woken, want);
        // Nothing behind the last one on its database, and nothing depends on it.
        assert!(waiting_behind(&all[39], &all).is_empty());
    }

    fn with_job_expand(mut d: DatabaseMigration) -> DatabaseMigration {
        d.spec.expand = serde_json::from_value(serde_json::json!({"job": {"template": {
            "spec": {"restartPolicy": "Never", "containers": [{"name": "m", "image": "flyway"}]}
        }}}))
        .expect("job phase");
        d
    }

    #[test]
    fn same_database_starts_together_and_orders_in_the_ledger_by_creation_then_name() {
        let a = m("b-first", 0, "db", false);
        let b = m("a-second", 5, "db", false);
        let c = m("c-tie", 0, "db", false);
        let all = [a.clone(), b.clone(), c.clone()];
        assert_eq!(expand_order(&a, &all), ExpandOrder::default());
        assert_eq!(
            expand_order(&c, &all).after,
            vec!["b-first".to_string()],
            "same second: by name, b-first < c-tie"
        );
        let o = expand_order(&b, &all);
        assert!(o.holds.is_empty(), "{o:?}");
        assert_eq!(o.after, vec!["b-first".to_string(), "c-tie".to_string()]);
    }

    #[test]
    fn a_user_job_on_either_side_is_held_by_the_operator_naming_only_the_nearest() {
        let first = with_job_expand(m("first", 0, "db", false));
        let second = m("second", 1, "db", false);
        let third = m("third", 2, "db", false);
        let all = [first.clone(), second.clone(), third.clone()];
        let o = expand_order(&third, &all);
        assert_eq!(
            o.holds,
            vec!["second (same database, created earlier; Pending)".to_string()]
        );
        assert!(o.after.is_empty());
        let me = with_job_expand(m("me", 3, "db", false));
        let o = expand_order(&me, &[second, me.clone()]);
        assert_eq!(o.holds.len(), 1, "{o:?}");
    }

    #[test]
    fn beyond_the_window_expand_is_held_and_its_message_names_one_migration() {
        let all: Vec<DatabaseMigration> = (0..WINDOW as i64 + 3)
            .map(|i| m(&format!("m{i:03}"), i, "db", false))
            .collect();
        let last_in = expand_order(&all[WINDOW - 1], &all);
        assert!(last_in.holds.is_empty());
        assert_eq!(last_in.after.len(), WINDOW - 1);
        let held = expand_order(&all[WINDOW + 2], &all);
        assert!(held.after.is_empty());
        assert_eq!(
            held.holds,
            vec![format!(
                "m{:03} (same database, created earlier; Pending)",
                WINDOW + 1
            )],
            "the message does not change while migrations further ahead move"
        );
    }

    #[test]
    fn other_databases_applied_and_failed_ones_do_not_hold_the_line() {
        let me = m("me", 10, "db", false);
        let other_db = m("other", 0, "other-db", false);
        let applied = m("applied", 0, "db", true);
        let mut failed = m("failed", 0, "db", false);
        failed.status.as_mut().expect("status").phase = Some(Phase::Failed);
        let o = expand_order(&me, &[me.clone(), other_db, applied, failed]);
        assert_eq!(o, ExpandOrder::default());
    }

    #[test]
    fn depends_on_waits_for_the_named_expand_whatever_the_database() {
        let mut me = m("comment", 0, "db", false);
        me.spec.depends_on = vec!["add-email".into(), "ghost".into()];
        let dep = m("add-email", 10, "other-db", false);
        let o = expand_order(&me, &[me.clone(), dep.clone()]);
        assert_eq!(
            o.holds,
            vec![
                "add-email (dependsOn; Pending)".to_string(),
                "ghost (dependsOn; no such migration in this namespace)".to_string()
            ]
        );
        let done = m("add-email", 10, "other-db", true);
        assert_eq!(
            expand_order(&me, &[me.clone(), done]).holds.len(),
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
        assert_eq!(expand_order(&later, &all), ExpandOrder::default());
        assert_eq!(
            expand_order(&earlier, &all).holds,
            vec!["later (dependsOn; Pending)".to_string()]
        );
    }

    #[test]
    fn an_executor_waiting_for_a_migration_that_failed_or_was_deleted_is_told() {
        let me = m("me", 10, "db", false);
        let a = m("a", 0, "db", false);
        let b = m("b", 1, "db", true);
        let after = vec!["a".to_string(), "b".to_string()];
        assert_eq!(left_the_line(&me, &after, &[&me, &a, &b]), None);
        let mut failed = a.clone();
        failed.status.as_mut().expect("status").phase = Some(Phase::Failed);
        assert_eq!(
            left_the_line(&me, &after, &[&me, &failed, &b]).as_deref(),
            Some("a left the line (Failed)")
        );
        assert_eq!(
            left_the_line(&me, &after, &[&me, &b]).as_deref(),
            Some("a was deleted")
        );
    }
}
