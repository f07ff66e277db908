//! Regressions seen from durable facts: a rollback that happened while the operator was away.
//!
//! The rollout gate is judged on what the operator observes now; a rollback to old code and a
//! roll-forward that both happen while it is not running (or between two of its looks) leave
//! the targets looking just as complete as before. What the cluster keeps still tells:
//! every rollout of a pod template gets a revision number above every earlier one, and a
//! rollback re-uses the old template's ReplicaSet (or ControllerRevision) and *bumps its
//! revision* above the current maximum (the Deployment, StatefulSet and DaemonSet controllers
//! and Argo Rollouts all do). So when the rollout completes, the planner records each target's
//! revision (`status.rolloutRevisions`); later, a kept revision above that number whose
//! template carries an older version proves old code was rolled out since.
//!
//! History can be pruned (`revisionHistoryLimit`): a revision number between the recorded one
//! and the newest that no kept object accounts for (a Deployment's ReplicaSet also lists the
//! numbers it held before, `deployment.kubernetes.io/revision-history`) may have been old
//! code. The planner assumes it was: a regression, conservatively. A workload whose UID
//! changed (deleted and created again) is treated the same way.
//!
//! A regression found this way is handled exactly like one seen live (see
//! [`Planner::rollout_regressed`]): the epoch ends, the soak restarts, the backfill runs again
//! from its first key, contract waits.
//!
//! The controller reads the history only where it matters (src/controller/history.rs); the
//! planner decides.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{RegressionStatus, TargetKind, TargetRevision};

use super::{reason, version::VersionRule, Planner, Transition};

/// One revision of a target's pod template, as the cluster keeps it (a ReplicaSet or a
/// ControllerRevision owned by the workload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    /// The kept object's name (for messages).
    pub name: String,
    /// Its revision number.
    pub number: i64,
    /// The version its pod template carries (read as `versionFrom` says).
    pub version: Option<String>,
    /// Revision numbers it held before it was rolled out again (a Deployment's
    /// `deployment.kubernetes.io/revision-history`); empty where the kind keeps none.
    pub earlier: Vec<i64>,
}

/// The kept revisions of one target workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetHistory {
    pub kind: TargetKind,
    pub name: String,
    pub uid: String,
    pub revisions: Vec<Revision>,
}

/// Revision numbers past the recorded one are walked at most this far; beyond, the history
/// counts as not kept.
const MAX_WALK: i64 = 100_000;

/// Why `history` shows that old code was rolled out after the revisions in `recorded`, if it
/// does. Targets without a record are not judged (they are recorded instead).
pub fn find(
    recorded: &[TargetRevision],
    history: &[TargetHistory],
    rule: &VersionRule,
) -> Option<String> {
    for h in history {
        let Some(r) = recorded
            .iter()
            .find(|r| r.kind == h.kind.as_str() && r.name == h.name)
        else {
            continue;
        };
        let (kind, name, since) = (h.kind, &h.name, r.revision);
        if !r.uid.is_empty() && r.uid != h.uid {
            return Some(format!(
                "{kind} {name} was deleted and created again since the rollout completed; \
                 what it ran meanwhile is not known"
            ));
        }
        let old = h
            .revisions
            .iter()
            .filter(|v| v.number > since)
            .filter(|v| !v.version.as_deref().is_some_and(|x| rule.satisfied_by(x)))
            .max_by_key(|v| v.number);
        if let Some(old) = old {
            return Some(format!(
                "{kind} {name}: revision {} ({}, {}) was rolled out after the rollout completed \
                 at revision {since}",
                old.number,
                old.name,
                old.version
                    .as_deref()
                    .map(|v| format!("version {v}"))
                    .unwrap_or_else(|| "no version".into())
            ));
        }
        let newest = h.revisions.iter().map(|v| v.number).max().unwrap_or(since);
        if newest - since > MAX_WALK {
            return Some(format!(
                "{kind} {name}: {} revisions since the rollout completed at revision {since}; \
                 their history is not kept",
                newest - since
            ));
        }
        let known: std::collections::BTreeSet<i64> = h
            .revisions
            .iter()
            .flat_map(|v| std::iter::once(v.number).chain(v.earlier.iter().copied()))
            .collect();
        if let Some(n) = (since + 1..=newest).find(|n| !known.contains(n)) {
            return Some(format!(
                "{kind} {name}: revision {n}, rolled out after the rollout completed at \
                 revision {since}, is no longer kept (revisionHistoryLimit); it may have run an \
                 older version"
            ));
        }
    }
    None
}

/// The revision to record for a target when the rollout completes: its newest revision
/// carrying a version the rule accepts (or its newest at all, if none does). A newer one of
/// an older version is then a regression at the next look.
pub fn epoch_revision(h: &TargetHistory, rule: &VersionRule) -> TargetRevision {
    let new = h
        .revisions
        .iter()
        .filter(|v| v.version.as_deref().is_some_and(|x| rule.satisfied_by(x)))
        .map(|v| v.number)
        .max();
    // None kept at all (not numbered yet): 0, so that any revision found later is judged.
    let revision = new
        .or_else(|| h.revisions.iter().map(|v| v.number).max())
        .unwrap_or(0);
    TargetRevision {
        kind: h.kind.to_string(),
        name: h.name.clone(),
        uid: h.uid.clone(),
        revision,
    }
}

/// What a regression seen live shows: the targets that may run old code again.
pub fn live(targets: &[crate::api::TargetStatus], rule: &VersionRule) -> String {
    let why: Vec<String> = targets
        .iter()
        .filter(|t| !super::rollout::runs_only_new_code(t, rule))
        .map(|t| {
            t.message
                .clone()
                .unwrap_or_else(|| format!("{} {} may run an older version", t.kind, t.name))
        })
        .collect();
    if why.is_empty() {
        "a target is no longer observed".to_string()
    } else {
        format!("old code can run again: {}", why.join("; "))
    }
}

/// The rollout epoch holds but some observed target has no recorded revision yet: the
/// controller must read the history (to record it) before it can be judged from history.
pub fn unrecorded(status: &crate::api::DatabaseMigrationStatus) -> bool {
    status.rollout_completed_at.is_some()
        && status.targets.iter().filter(|t| !t.not_found).any(|t| {
            !status
                .rollout_revisions
                .iter()
                .any(|r| r.kind == t.kind && r.name == t.name)
        })
}

impl Planner<'_> {
    /// With the history read (`Input::history`) while the epoch holds: a regression it shows
    /// ends the epoch like one seen live, and closes the rollout gate for this plan (a
    /// running backfill or contract attempt is stopped); the next plan opens a new epoch if
    /// the targets are complete. Returns why.
    pub(super) fn regression_from_history(&mut self) -> Option<String> {
        let history = self.input.history.as_deref()?;
        self.status.rollout_completed_at.as_ref()?;
        let why = find(
            &self.status.rollout_revisions,
            history,
            &self.version_rule(),
        )?;
        let message = format!(
            "a regression was found in the rollout history: {why}; the soak restarts{}",
            if self.input.spec.backfill.is_some() {
                " and the backfill runs again from its first key"
            } else {
                ""
            }
        );
        self.extra_notices.push(Transition {
            warning: true,
            reason: reason::REGRESSION_IN_HISTORY.into(),
            message: message.clone(),
        });
        self.rollout_regressed(message.clone());
        Some(message)
    }

    /// The rollout gate closed after having held (seen live, or from the history): the epoch
    /// ends. The soak and the rollout timeout restart, the backfill must run again from its
    /// first key, and the revisions are recorded anew when the rollout completes again.
    pub(super) fn rollout_regressed(&mut self, message: String) {
        self.status.rollout_completed_at = None;
        self.status.contract_not_before = None;
        self.status.rollout_started_at = Some(self.now());
        self.status.rollout_revisions.clear();
        // A contract attempt of the ended epoch never commits, even where its Job is no
        // longer seen (a stop whose record was lost, a Job deleted while its pod runs on).
        if let Some(c) = self
            .status
            .contract
            .as_mut()
            .filter(|c| c.attempts > 0 && !c.succeeded && c.finished_at.is_none())
        {
            c.finished_at = Some(Time(self.input.now));
            c.reason = Some(reason::GATE_CLOSED.to_string());
            c.message = Some(format!(
                "contract attempt {} stopped before commit: {message}",
                c.attempts
            ));
        }
        self.status.last_regression = Some(RegressionStatus {
            seen_at: self.now(),
            message,
        });
        self.backfill_regressed();
    }

    /// A contract attempt belongs to the rollout epoch it started in: one that started before
    /// the current epoch began (a regression since, its stop record lost) must stop, and the
    /// soak, backfill and approval hold anew for the next.
    pub(super) fn contract_predates_epoch(&self) -> Option<String> {
        let started = self.status.contract.as_ref()?.started_at.as_ref()?;
        let epoch = self.status.rollout_completed_at.as_ref()?;
        (started.0 < epoch.0).then(|| {
            format!(
                "the rollout regressed since this attempt started ({}); it completed again at {}",
                started.0, epoch.0
            )
        })
    }

    /// The epoch holds: record the revision of each target the history shows and that has
    /// none recorded (the epoch just began, a selector matched a new workload, or the status
    /// was written by an operator that did not record them).
    pub(super) fn record_epoch_revisions(&mut self) {
        let Some(history) = self.input.history.as_deref() else {
            return;
        };
        if self.status.rollout_completed_at.is_none() {
            return;
        }
        let rule = self.version_rule();
        for h in history {
            let known = self
                .status
                .rollout_revisions
                .iter()
                .any(|r| r.kind == h.kind.as_str() && r.name == h.name);
            if !known {
                let r = epoch_revision(h, &rule);
                self.status.rollout_revisions.push(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(name: &str, number: i64, version: &str, earlier: &[i64]) -> Revision {
        Revision {
            name: name.into(),
            number,
            version: Some(version.into()),
            earlier: earlier.to_vec(),
        }
    }

    fn deployment(revisions: Vec<Revision>) -> TargetHistory {
        TargetHistory {
            kind: TargetKind::Deployment,
            name: "api".into(),
            uid: "u1".into(),
            revisions,
        }
    }

    fn recorded(revision: i64) -> Vec<TargetRevision> {
        vec![TargetRevision {
            kind: "Deployment".into(),
            name: "api".into(),
            uid: "u1".into(),
            revision,
        }]
    }

    fn rule() -> VersionRule {
        VersionRule::semver("2.0.0")
    }

    #[test]
    fn nothing_since_the_epoch_is_no_regression() {
        let h = deployment(vec![
            rev("api-v1", 1, "1.0.0", &[]),
            rev("api-v2", 2, "2.0.0", &[]),
        ]);
        assert_eq!(find(&recorded(2), &[h], &rule()), None);
    }

    #[test]
    fn a_rollback_and_roll_forward_behind_our_back_is_a_regression() {
        // v1 (1) → v2 (2, recorded) → rollback: v1's ReplicaSet becomes 3 → forward: v2's
        // becomes 4 (it held 2 before).
        let h = deployment(vec![
            rev("api-v1", 3, "1.0.0", &[1]),
            rev("api-v2", 4, "2.0.0", &[2]),
        ]);
        let why = find(&recorded(2), &[h], &rule()).expect("regression");
        assert!(why.contains("revision 3 (api-v1, version 1.0.0)"), "{why}");
    }

    #[test]
    fn config_only_changes_are_no_regression() {
        // 2.0.0 (2) → a new env var, same version (3) → a newer version (4) → back to the
        // config of 3 (re-used: 5, held 3).
        let h = deployment(vec![
            rev("api-v1", 1, "1.0.0", &[]),
            rev("api-v2", 2, "2.0.0", &[]),
            rev("api-v2-env", 5, "2.0.0", &[3]),
            rev("api-v21", 4, "2.1.0", &[]),
        ]);
        assert_eq!(find(&recorded(2), &[h], &rule()), None);
    }

    #[test]
    fn a_pruned_revision_since_the_epoch_counts_as_a_regression() {
        // revisionHistoryLimit: 0: v1's ReplicaSet (3) was deleted once scaled down.
        let h = deployment(vec![rev("api-v2", 4, "2.0.0", &[2])]);
        let why = find(&recorded(2), &[h], &rule()).expect("conservative");
        assert!(
            why.contains("revision 3") && why.contains("no longer kept"),
            "{why}"
        );
        // Pruned history from before the epoch does not matter.
        let h = deployment(vec![rev("api-v2", 7, "2.0.0", &[])]);
        assert_eq!(find(&recorded(7), &[h], &rule()), None);
    }

    #[test]
    fn a_workload_created_again_counts_as_a_regression() {
        let mut h = deployment(vec![rev("api-v2", 2, "2.0.0", &[])]);
        h.uid = "u2".into();
        assert!(find(&recorded(2), &[h], &rule()).is_some());
    }

    #[test]
    fn an_unrecorded_target_is_not_judged() {
        let h = deployment(vec![rev("api-v1", 3, "1.0.0", &[])]);
        assert_eq!(find(&[], &[h], &rule()), None);
    }

    #[test]
    fn the_epoch_revision_is_the_newest_of_a_new_version() {
        let h = deployment(vec![
            rev("api-v1", 1, "1.0.0", &[]),
            rev("api-v2", 2, "2.0.0", &[]),
        ]);
        assert_eq!(epoch_revision(&h, &rule()).revision, 2);
        // A newer old revision (a rollback the caches have not shown yet) stays above it, and
        // so is a regression at the next look.
        let h = deployment(vec![
            rev("api-v2", 2, "2.0.0", &[]),
            rev("api-v1", 3, "1.0.0", &[1]),
        ]);
        let r = epoch_revision(&h, &rule());
        assert_eq!(r.revision, 2);
        assert!(find(&[r], &[h], &rule()).is_some());
    }
}
