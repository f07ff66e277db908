//! The commit grant's verdict (pure): may contract attempt `attempt` commit now? The same plan
//! that drives the migration judges it, as if the attempt's Job were running, from a fresh
//! observation of the targets; anything but "this attempt runs, every gate open" withholds.
//! The operator's endpoint ([`crate::controller::fence`]) reads the world, then asks this.

use crate::protocol::grant::Answer;

use super::{conditions, plan, reason, Action, Input, JobState, Phase};

/// The answer for contract attempt `attempt`, given a fresh `input`.
pub fn verdict(input: &Input<'_>, attempt: u32) -> Answer {
    let status = input.status;
    if !status.expand.as_ref().is_some_and(|e| e.succeeded) {
        return Answer::withheld("status does not record expand as applied");
    }
    let rec = status.contract.clone().unwrap_or_default();
    if rec.attempts > attempt {
        return Answer::superseded(format!("attempt {} replaced it", rec.attempts));
    }
    if rec.attempts < attempt {
        return Answer::withheld(format!("status has not recorded attempt {attempt} yet"));
    }
    if rec.succeeded || rec.finished_at.is_some() {
        let why = rec.message.unwrap_or_else(|| "it ended".into());
        let stopped = rec.reason.as_deref() == Some(reason::GATE_CLOSED);
        return Answer::superseded(if stopped {
            why
        } else {
            format!("attempt {attempt} is recorded as ended: {why}")
        });
    }
    let mut running = input.clone();
    running.expand_job = JobState::Absent;
    running.contract_job = JobState::Running(None);
    // Only a backfill status records as succeeded in this epoch counts.
    running.backfill_job = JobState::Absent;
    let p = plan(&running);
    let runs = p.action == Action::None
        && p.status.phase == Some(Phase::Contracting)
        && p.status
            .contract
            .as_ref()
            .is_some_and(|c| c.attempts == attempt);
    if runs {
        Answer::granted()
    } else {
        let why = conditions::get(&p.status.conditions, conditions::READY)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        Answer::withheld(format!("a gate is closed: {why}"))
    }
}
