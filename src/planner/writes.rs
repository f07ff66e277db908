//! Which status changes are written at once and which may wait a little.
//!
//! During a rollout every pod that starts or stops changes a target's replica counts and the
//! message that carries them; written each time, that is tens of status writes per migration
//! per rollout, which at a thousand migrations is most of what the operator sends the API
//! server and queues the reconciles that open gates. Progress is still worth showing, so it is
//! written at most once per [`PROGRESS_WRITE_INTERVAL`]; any other change (phase, a condition's
//! status or reason, a recorded time, an attempt, a target completing) is written at once.
//! Nothing here delays an action: Jobs are started and stopped before status is written.

use std::time::Duration;

use crate::api::DatabaseMigrationStatus;

/// How often a migration's progress-only changes are written.
pub const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_secs(5);

/// Whether `new` differs from `old` only in progress: targets' replica counts and messages,
/// conditions' messages, the backfill's progress figures, a running fleet phase's tenant counts.
pub fn progress_only(old: &DatabaseMigrationStatus, new: &DatabaseMigrationStatus) -> bool {
    without_progress(old) == without_progress(new)
}

fn without_progress(s: &DatabaseMigrationStatus) -> DatabaseMigrationStatus {
    let mut s = s.clone();
    for t in &mut s.targets {
        t.replicas = 0;
        t.updated_replicas = 0;
        t.available_replicas = 0;
        t.old_pods = 0;
        t.message = None;
    }
    for c in &mut s.conditions {
        c.message.clear();
    }
    if let Some(b) = s.backfill.as_mut() {
        b.progress = None;
        // A fleet backfill's counts while it runs; its end changes more than the counts.
        if b.run.finished_at.is_none() {
            b.run.tenants = None;
        }
    }
    for p in [s.expand.as_mut(), s.contract.as_mut()]
        .into_iter()
        .flatten()
    {
        if p.finished_at.is_none() {
            p.tenants = None;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::api::{Phase, PhaseStatus, TargetStatus};
    use crate::planner::conditions;

    fn waiting(updated: i32, old: i32) -> DatabaseMigrationStatus {
        let mut s = DatabaseMigrationStatus {
            phase: Some(Phase::AwaitingRollout),
            expand: Some(PhaseStatus {
                succeeded: true,
                ..PhaseStatus::default()
            }),
            targets: vec![TargetStatus {
                kind: "Deployment".into(),
                name: "api".into(),
                version: Some("2.0.0".into()),
                complete: false,
                replicas: 4,
                updated_replicas: updated,
                available_replicas: 4,
                old_pods: old,
                message: Some(format!("{updated}/4 replicas updated, {old} old pods")),
                not_found: false,
            }],
            targets_ready: Some("0/1".into()),
            ..DatabaseMigrationStatus::default()
        };
        let msg = format!("waiting for Deployment api: {updated}/4 replicas updated");
        conditions::apply(
            &mut s,
            Phase::AwaitingRollout,
            "AwaitingRollout",
            &msg,
            1,
            Timestamp::from_second(0).expect("ts"),
        );
        s
    }

    #[test]
    fn replica_counts_and_their_messages_are_progress() {
        assert!(progress_only(&waiting(1, 3), &waiting(2, 2)));
        assert!(progress_only(&waiting(1, 3), &waiting(1, 3)));
    }

    #[test]
    fn a_target_completing_or_a_phase_change_is_written_at_once() {
        let before = waiting(3, 1);
        let mut done = waiting(4, 0);
        done.targets[0].complete = true;
        assert!(!progress_only(&before, &done), "a target completed");

        let mut ready = waiting(4, 0);
        ready.targets_ready = Some("1/1".into());
        assert!(!progress_only(&before, &ready), "targetsReady changed");

        let mut completed = waiting(4, 0);
        completed.rollout_completed_at = Some(Time(Timestamp::from_second(9).expect("ts")));
        assert!(!progress_only(&before, &completed), "a recorded time");

        let mut soaking = waiting(4, 0);
        conditions::apply(
            &mut soaking,
            Phase::Soaking,
            "Soaking",
            "soaking",
            1,
            Timestamp::from_second(9).expect("ts"),
        );
        soaking.phase = Some(Phase::Soaking);
        assert!(!progress_only(&before, &soaking), "a phase change");

        let backfilling = |applied: u32, finished: bool| {
            let mut s = waiting(4, 0);
            s.backfill = Some(crate::api::BackfillStatus {
                run: PhaseStatus {
                    tenants: Some(crate::api::TenantsStatus {
                        total: 10,
                        applied,
                        not_run: 10 - applied,
                        ..Default::default()
                    }),
                    finished_at: finished.then(|| Time(Timestamp::from_second(9).expect("ts"))),
                    ..PhaseStatus::default()
                },
                ..Default::default()
            });
            s
        };
        assert!(
            progress_only(&backfilling(1, false), &backfilling(2, false)),
            "a running fleet backfill's counts are progress"
        );
        assert!(
            !progress_only(&backfilling(2, false), &backfilling(10, true)),
            "its end is not"
        );

        let mut version = waiting(3, 1);
        version.targets[0].version = Some("1.0.0".into());
        assert!(!progress_only(&before, &version), "a rollback");
    }
}
