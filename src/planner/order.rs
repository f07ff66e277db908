//! The order of expand among migrations: explicit `dependsOn`, and creation order among
//! migrations on the same database (same namespace and database Secret key), so that
//! migrations applied together run in a documented, repeatable order.
//!
//! Only the first migration in line on a database starts its expand Job; the later ones that
//! are ready with it ride in that Job ([`batch`], [`crate::protocol::batch`]) and its executor
//! applies them after it, in order. A Job and pod start costs seconds: one per migration, in
//! series, a GitOps bootstrap of 200 migrations took minutes.

use kube::ResourceExt;

use crate::api::{DatabaseMigration, Phase};

/// The later migrations of the database one batch carries at most: each adds its SQL to the
/// Job's environment.
pub const BATCH_MAX: usize = 64;

/// The SQL one batch carries at most, in bytes as JSON quotes it: the executor's environment
/// holds it, and Linux takes at most 128 KiB in one variable (with each member's other fields,
/// a few hundred bytes each).
pub const BATCH_SQL_BYTES: usize = 48 * 1024;

/// How many migrations not started behind one that moved are woken (see [`waiting_behind`]).
const WAKE_BEHIND: usize = BATCH_MAX;

/// Where `me`'s expand stands among the migrations of its namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpandOrder {
    /// What holds the Job back (empty: it may start), one line each, e.g. `add-email
    /// (dependsOn; Expanding)`. Of the same database only the nearest earlier migration is
    /// named, so a waiting migration's status changes when the one in front of it moves, not
    /// whenever the queue does.
    pub holds: Vec<String>,
}

/// Where `me`'s expand stands among `all` (the migrations of its namespace).
pub fn expand_order<M: std::borrow::Borrow<DatabaseMigration>>(
    me: &DatabaseMigration,
    all: &[M],
) -> ExpandOrder {
    let mut holds = depends_on_holds(me, all);
    if let Some(nearest) = earlier_on_same_database(me, all).last() {
        holds.push(format!(
            "{} (same database, created earlier; {})",
            nearest.name_any(),
            phase_of(nearest)
        ));
    }
    ExpandOrder { holds }
}

/// The later migrations of `lead`'s database that its expand Job applies after it, in order:
/// those next in line that are ready with it — Phasegate's own SQL on one database (a user Job
/// or tenants write no ledger row the next could be ordered by), not started, valid, with
/// nothing in line before them but the lead and the ones already taken, and whatever they
/// `dependsOn` applied or taken — up to [`BATCH_MAX`] and [`BATCH_SQL_BYTES`]. The first that
/// is not ready ends the batch: every later one has it in line before it.
pub fn batch<'a, M: std::borrow::Borrow<DatabaseMigration>>(
    lead: &DatabaseMigration,
    all: &'a [M],
) -> Vec<&'a M> {
    let mut taken: Vec<&'a M> = Vec::new();
    if !in_ledger(lead) {
        return taken;
    }
    let lead_name = lead.name_any();
    let mut bytes = sql_len(lead);
    for entry in later_on_same_database(lead, all) {
        let next: &DatabaseMigration = entry.borrow();
        let name = next.name_any();
        let is_taken =
            |n: &String| *n == lead_name || taken.iter().any(|t| t.borrow().name_any() == *n);
        let deps_met = next.spec.depends_on.iter().all(|d| {
            is_taken(d)
                || all
                    .iter()
                    .map(M::borrow)
                    .any(|m| &m.name_any() == d && expand_applied(m))
        });
        let line_taken = earlier_on_same_database(next, all)
            .iter()
            .all(|e| is_taken(&e.name_any()));
        let ready = in_ledger(next)
            && (not_started(next) || seated_with(next, lead))
            && !next.spec.depends_on.contains(&name)
            && deps_met
            && line_taken
            && super::validate(&next.spec, true).is_ok();
        if !ready || taken.len() == BATCH_MAX || bytes + sql_len(next) > BATCH_SQL_BYTES {
            break;
        }
        bytes += sql_len(next);
        taken.push(entry);
    }
    taken
}

/// Phasegate's own executor applies its expand, on one database: the ledger orders it. A
/// user Job writes no ledger row; a fleet writes one per tenant.
fn in_ledger(m: &DatabaseMigration) -> bool {
    m.spec.expand.sql.is_some()
        && m.spec.tenants.is_none()
        && m.spec.contract.job.is_none()
        && m.metadata.deletion_timestamp.is_none()
}

/// The bytes its expand SQL takes JSON-quoted in the Job's environment.
fn sql_len(m: &DatabaseMigration) -> usize {
    let quoted = |c: char| match c {
        '"' | '\\' | '\n' | '\r' | '\t' => 2,
        c if c.is_control() => 6,
        c => c.len_utf8(),
    };
    m.spec
        .expand
        .sql
        .as_deref()
        .map_or(0, |s| s.chars().map(quoted).sum())
}

/// `m`'s latest expand attempt is a seat in the Job of `lead`'s latest attempt, and did not
/// finish: a lead starts anew only once that Job ended (died, failed after it, gone), so the
/// seat will not run — the cache may just not show `m` back in line yet.
fn seated_with(m: &DatabaseMigration, lead: &DatabaseMigration) -> bool {
    let rec = |d: &DatabaseMigration| d.status.as_ref().and_then(|s| s.expand.clone());
    let (Some(mine), Some(leads)) = (rec(m), rec(lead)) else {
        return false;
    };
    !mine.succeeded
        && mine.finished_at.is_none()
        && mine.job_name.is_some()
        && mine.job_name == leads.job_name
}

/// No expand attempt of its own runs or ran: it waits in line (or was never reconciled).
fn not_started(m: &DatabaseMigration) -> bool {
    matches!(
        m.status.as_ref().and_then(|s| s.phase),
        None | Some(Phase::Pending)
    ) && !expand_applied(m)
}

/// The migrations of `all` whose expand may be waiting for `changed` to move: the next
/// [`WAKE_BEHIND`] not started on its database after it, and those whose `dependsOn` names it.
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
    out.truncate(WAKE_BEHIND);
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
    let waiting = |m: &DatabaseMigration| {
        !expand_applied(m)
            && m.status.as_ref().and_then(|s| s.phase) != Some(Phase::Failed)
            && m.metadata.deletion_timestamp.is_none()
    };
    // One that waits for us (`dependsOn`) comes after us, and so does every one created after
    // it: in our line they would deadlock (z waits for b, b for a, a for z).
    let after_us = all
        .iter()
        .map(M::borrow)
        .filter(|m| same_db(m) && waiting(m) && m.spec.depends_on.contains(&my_name))
        .map(&key)
        .min();
    let mut out: Vec<&DatabaseMigration> = all
        .iter()
        .map(M::borrow)
        .filter(|m| {
            let name = m.name_any();
            // A failed one no longer holds the line.
            name != my_name
                && same_db(m)
                && key(m) < key(me)
                && waiting(m)
                && after_us.as_ref().is_none_or(|k| key(m) < *k)
                && !me.spec.depends_on.contains(&name)
        })
        .collect();
    out.sort_by_key(|m| key(m));
    out
}

/// The migrations of `me`'s database created after it whose expand is still to run and that
/// have not left the line (failed, being deleted), in creation order.
fn later_on_same_database<'a, M: std::borrow::Borrow<DatabaseMigration>>(
    me: &DatabaseMigration,
    all: &'a [M],
) -> Vec<&'a M> {
    let key = |m: &DatabaseMigration| (m.metadata.creation_timestamp.clone(), m.name_any());
    let mut out: Vec<&'a M> = all
        .iter()
        .filter(|m| {
            let m: &DatabaseMigration = (*m).borrow();
            m.spec.database.url_secret_ref == me.spec.database.url_secret_ref
                && key(m) > key(me)
                && !expand_applied(m)
                && m.status.as_ref().and_then(|s| s.phase) != Some(Phase::Failed)
                && m.metadata.deletion_timestamp.is_none()
        })
        .collect();
    out.sort_by_key(|m| key((*m).borrow()));
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
    fn a_migration_that_moves_wakes_the_ones_not_started_behind_it_and_its_dependents() {
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
        let want: Vec<String> = (16..40)
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
    fn on_one_database_the_first_in_line_starts_and_the_others_name_the_nearest_before_them() {
        let a = m("b-first", 0, "db", false);
        let b = m("a-second", 5, "db", false);
        let c = m("c-tie", 0, "db", false);
        let all = [a.clone(), b.clone(), c.clone()];
        assert_eq!(expand_order(&a, &all), ExpandOrder::default());
        assert_eq!(
            expand_order(&c, &all).holds,
            vec!["b-first (same database, created earlier; Pending)".to_string()],
            "same second: by name, b-first < c-tie"
        );
        assert_eq!(
            expand_order(&b, &all).holds,
            vec!["c-tie (same database, created earlier; Pending)".to_string()]
        );
    }

    fn names(ms: &[&DatabaseMigration]) -> Vec<String> {
        ms.iter().map(|m| m.name_any()).collect()
    }

    #[test]
    fn a_batch_takes_the_next_ones_in_line_until_one_is_not_ready() {
        let all: Vec<DatabaseMigration> = (0..6)
            .map(|i| m(&format!("m{i}"), i, "db", false))
            .chain([
                m("elsewhere", 3, "other-db", false),
                m("done", 2, "db", true),
            ])
            .collect();
        assert_eq!(names(&batch(&all[0], &all)), ["m1", "m2", "m3", "m4", "m5"]);
        // A user Job, one that started on its own, invalid SQL: each ends the batch there.
        let mut with_job = all.clone();
        with_job[3] = with_job_expand(with_job[3].clone());
        assert_eq!(names(&batch(&with_job[0], &with_job)), ["m1", "m2"]);
        let mut started = all.clone();
        started[2].status.as_mut().expect("status").phase = Some(Phase::Expanding);
        assert_eq!(names(&batch(&started[0], &started)), ["m1"]);
        let mut invalid = all.clone();
        invalid[1].spec.expand.sql = Some("ALTER TABLE;".into());
        assert!(batch(&invalid[0], &invalid).is_empty());
        // A failed one left the line: the batch goes on past it.
        let mut failed = all.clone();
        failed[2].status.as_mut().expect("status").phase = Some(Phase::Failed);
        assert_eq!(names(&batch(&failed[0], &failed)), ["m1", "m3", "m4", "m5"]);
        // A lead whose expand is a user Job carries none.
        let mut job_lead = all.clone();
        job_lead[0] = with_job_expand(job_lead[0].clone());
        assert!(batch(&job_lead[0], &job_lead).is_empty());
    }

    #[test]
    fn a_member_may_depend_on_the_lead_or_one_taken_before_it_but_not_on_one_still_to_come() {
        let mut all: Vec<DatabaseMigration> = (0..4)
            .map(|i| m(&format!("m{i}"), i, "db", false))
            .collect();
        all[2].spec.depends_on = vec!["m0".into(), "m1".into()];
        all.push(m("other-done", 0, "other-db", true));
        all[3].spec.depends_on = vec!["other-done".into()];
        assert_eq!(names(&batch(&all[0], &all)), ["m1", "m2", "m3"]);
        let mut elsewhere = m("other-pending", 0, "other-db", false);
        elsewhere.metadata.name = Some("other-pending".into());
        all.push(elsewhere);
        all[2].spec.depends_on = vec!["other-pending".into()];
        assert_eq!(names(&batch(&all[0], &all)), ["m1"]);
    }

    #[test]
    fn a_new_attempt_of_the_lead_takes_back_the_seats_of_its_last_job() {
        let all: Vec<DatabaseMigration> = (0..4)
            .map(|i| m(&format!("m{i}"), i, "db", false))
            .collect();
        let seated = |mut d: DatabaseMigration, job: &str, phase: Phase| {
            let s = d.status.as_mut().expect("status");
            s.phase = Some(phase);
            s.expand = Some(PhaseStatus {
                attempts: 1,
                job_name: Some(job.into()),
                ..PhaseStatus::default()
            });
            d
        };
        // The lead's Job died: its members still show the seat.
        let mut died = all.clone();
        died[0] = seated(died[0].clone(), "m0-expand-1", Phase::Expanding);
        for d in died.iter_mut().skip(1) {
            *d = seated(d.clone(), "m0-expand-1", Phase::Expanding);
        }
        assert_eq!(names(&batch(&died[0], &died)), ["m1", "m2", "m3"]);
        // A seat in another Job is not this lead's to take.
        died[2] = seated(died[2].clone(), "other-expand-1", Phase::Expanding);
        assert_eq!(names(&batch(&died[0], &died)), ["m1"]);
    }

    #[test]
    fn a_batch_is_bounded_by_count_and_by_its_sql() {
        let all: Vec<DatabaseMigration> = (0..BATCH_MAX as i64 + 10)
            .map(|i| m(&format!("m{i:03}"), i, "db", false))
            .collect();
        assert_eq!(batch(&all[0], &all).len(), BATCH_MAX);
        let big = format!(
            "COMMENT ON TABLE t IS '{}';",
            "x".repeat(BATCH_SQL_BYTES / 3)
        );
        let mut heavy = all.clone();
        for d in &mut heavy {
            d.spec.expand.sql = Some(big.clone());
        }
        assert_eq!(
            batch(&heavy[0], &heavy).len(),
            1,
            "the lead's SQL counts too"
        );
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
        let me = with_job_expand(m("me", 3, "db", false));
        let o = expand_order(&me, &[second, me.clone()]);
        assert_eq!(o.holds.len(), 1, "{o:?}");
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
    fn the_ones_created_after_a_migration_that_depends_on_me_do_not_hold_me_either() {
        let mut a = m("a", 0, "db", false);
        a.spec.depends_on = vec!["z".into()];
        let (b, c, z) = (
            m("b", 1, "db", false),
            m("c", 2, "db", false),
            m("z", 3, "db", false),
        );
        let all = [a.clone(), b.clone(), c.clone(), z.clone()];
        assert_eq!(
            expand_order(&z, &all),
            ExpandOrder::default(),
            "z goes first"
        );
        assert_eq!(
            expand_order(&c, &all).holds,
            vec!["b (same database, created earlier; Pending)".to_string()]
        );
        // z applied: a leads and carries b and c.
        let all = [a.clone(), b, c, m("z", 3, "db", true)];
        assert!(expand_order(&a, &all).holds.is_empty());
        assert_eq!(names(&batch(&a, &all)), ["b", "c"]);
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
}
