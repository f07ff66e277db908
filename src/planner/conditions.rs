//! Status conditions: kstatus' `Ready`/`Reconciling`/`Stalled` plus Phasegate's own.
//!
//! `Ready` is True from the moment expand is applied: the schema is then ready for
//! `appVersion`, so GitOps tools that wait for Ready (Flux `dependsOn`, Argo CD sync waves)
//! release the application rollout that contract is waiting for.
//!
//! It stays True when a later phase fails (rollout timeout, backfill or contract failed): the
//! schema is still ready for `appVersion`, and kstatus (Flux's `healthChecks`/`wait`) reads
//! `Ready=False` as InProgress and `Stalled=True` as Failed, either of which holds back every
//! Kustomization that depends on the migration — and with it the fix of a failed rollout.
//! So `Stalled` is True only for a failure that leaves expand unapplied. A failure after
//! expand shows in the phase (`Failed`), `Ready`'s reason and message, the condition of the
//! phase that failed (`RolloutComplete`, `Contracted`) and a Warning Event.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{DatabaseMigrationStatus, Phase};

use super::reason;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const EXPANDED: &str = "Expanded";
pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
pub const CONTRACTED: &str = "Contracted";
/// False while a target does not exist: a typo must not look like a wait.
pub const TARGETS_FOUND: &str = "TargetsFound";

/// Set every condition from the outcome of a plan.
pub fn apply(
    status: &mut DatabaseMigrationStatus,
    phase: Phase,
    why: &str,
    message: &str,
    generation: i64,
    now: Timestamp,
) {
    let missing = not_found(status);
    let expanded = status.expand.as_ref().is_some_and(|e| e.succeeded);
    let contracted = status.contract.as_ref().is_some_and(|c| c.succeeded);
    let failed = phase == Phase::Failed;
    let ready = expanded;
    let stalled = failed && !expanded;
    let reconciling = matches!(phase, Phase::Pending | Phase::Expanding);
    let mut set = |t: &str, ok: bool, r: &str, m: &str| {
        set_condition(&mut status.conditions, t, ok, r, m, generation, now)
    };

    set(READY, ready, why, message);
    set(
        RECONCILING,
        reconciling,
        if reconciling { why } else { "Idle" },
        if reconciling { message } else { "" },
    );
    let (stalled_reason, stalled_msg) = if stalled {
        (why, message)
    } else if failed {
        (
            reason::FAILED_AFTER_EXPAND,
            "expand is applied, so nothing that depends on this migration is held back; Ready says what failed",
        )
    } else {
        ("NotStalled", "")
    };
    set(STALLED, stalled, stalled_reason, stalled_msg);
    let expand_reason = if expanded {
        reason::EXPANDED
    } else if why == reason::EXPAND_FAILED {
        reason::EXPAND_FAILED
    } else if phase == Phase::Expanding {
        reason::EXPANDING
    } else {
        reason::PENDING
    };
    let expand_msg = status
        .expand
        .as_ref()
        .and_then(|e| e.message.clone())
        .unwrap_or_default();
    set(EXPANDED, expanded, expand_reason, &expand_msg);

    let targets_done = !status.targets.is_empty() && status.targets.iter().all(|t| t.complete);
    let rollout_done = contracted || (expanded && targets_done) || phase == Phase::Contracting;
    let rollout_reason = if rollout_done {
        reason::ROLLOUT_COMPLETE
    } else if why == reason::ROLLOUT_TIMEOUT {
        reason::ROLLOUT_TIMEOUT
    } else if expanded {
        reason::AWAITING_ROLLOUT
    } else {
        reason::PENDING
    };
    let rollout_msg = if rollout_done || !expanded {
        String::new()
    } else if phase == Phase::AwaitingRollout || why == reason::ROLLOUT_TIMEOUT {
        message.to_string()
    } else {
        String::new()
    };
    set(ROLLOUT_COMPLETE, rollout_done, rollout_reason, &rollout_msg);

    let contract_reason = if contracted {
        reason::CONTRACTED
    } else if why == reason::CONTRACT_FAILED {
        reason::CONTRACT_FAILED
    } else if phase == Phase::Contracting {
        reason::CONTRACTING
    } else {
        reason::PENDING
    };
    let contract_msg = status
        .contract
        .as_ref()
        .and_then(|c| c.message.clone())
        .unwrap_or_default();
    set(CONTRACTED, contracted, contract_reason, &contract_msg);

    set(
        TARGETS_FOUND,
        missing.is_empty(),
        if missing.is_empty() {
            "TargetsFound"
        } else {
            reason::TARGET_NOT_FOUND
        },
        &missing.join("; "),
    );
}

/// Why each target that does not exist is missing, e.g. `Deployment shop-apy not found`.
pub fn not_found(status: &DatabaseMigrationStatus) -> Vec<String> {
    status
        .targets
        .iter()
        .filter(|t| t.not_found)
        .map(|t| {
            t.message
                .clone()
                .unwrap_or_else(|| format!("{} {} not found", t.kind, t.name))
        })
        .collect()
}

/// Condition messages are cut to this many characters.
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// Upsert a condition, keeping `lastTransitionTime` while its status is unchanged.
pub fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: i64,
    now: Timestamp,
) {
    let status = if ok { "True" } else { "False" };
    let message: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = Time(now);
        }
        c.status = status.into();
        c.reason = reason.into();
        c.message = message;
        c.observed_generation = Some(generation);
    } else {
        conds.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: Some(generation),
            last_transition_time: Time(now),
        });
    }
}

/// Condition `type_`, whatever its status.
pub fn get<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// Condition `type_` when it is True.
fn get_true<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    get(conds, type_).filter(|c| c.status == "True")
}

/// The reason of condition `type_`, when it is True.
pub fn reason_of<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a str> {
    get_true(conds, type_).map(|c| c.reason.as_str())
}

/// Whether condition `type_` is True.
pub fn is_true(conds: &[Condition], type_: &str) -> bool {
    get_true(conds, type_).is_some()
}
