//! Unit and property tests of the planner: every transition, the gates, retries, lost status
//! writes, conditions and Job names; then a simulator fed random observations.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};

use super::conditions::{CONTRACTED, EXPANDED, READY, RECONCILING, ROLLOUT_COMPLETE, STALLED};
use super::*;
use crate::api::{
    Approval, ContractSpec, DatabaseMigrationSpec, DatabaseMigrationStatus, DatabaseSpec, JobSpec,
    Phase, PhaseSpec, RolloutSpec, SafetySpec, SecretKeyRef, TargetKind, TargetSpec, TargetStatus,
    VersionFrom,
};

const NAME: &str = "users-email-verified";
static POLICY: std::sync::LazyLock<crate::policy::JobPolicy> =
    std::sync::LazyLock::new(crate::policy::JobPolicy::default);
const T0: i64 = 1_700_000_000;

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(T0 + secs).unwrap()
}

fn time(secs: i64) -> Time {
    Time(ts(secs))
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

struct SpecBuilder(DatabaseMigrationSpec);

impl SpecBuilder {
    fn new() -> Self {
        Self(DatabaseMigrationSpec {
            app_version: "2.4.0".into(),
            database: DatabaseSpec {
                url_secret_ref: SecretKeyRef {
                    name: "shop-db".into(),
                    key: "url".into(),
                },
                replicas: None,
                pooler: None,
            },
            expand: PhaseSpec {
                sql: Some("ALTER TABLE users ADD COLUMN email_verified boolean;".into()),
                job: None,
            },
            contract: ContractSpec {
                sql: Some("ALTER TABLE users DROP COLUMN legacy_flag;".into()),
                job: None,
                approval: Approval::Automatic,
                delay: None,
            },
            rollout: RolloutSpec {
                targets: vec![named("shop-api")],
                version_from: VersionFrom::default(),
                version_order: Default::default(),
                timeout: None,
            },
            safety: SafetySpec::default(),
            depends_on: Vec::new(),
            backfill: None,
            tenants: None,
        })
    }
    fn targets(mut self, names: &[&str]) -> Self {
        self.0.rollout.targets = names.iter().map(|n| named(n)).collect();
        self
    }
    fn delay(mut self, d: &str) -> Self {
        self.0.contract.delay = Some(d.into());
        self
    }
    fn timeout(mut self, d: &str) -> Self {
        self.0.rollout.timeout = Some(d.into());
        self
    }
    fn manual(mut self) -> Self {
        self.0.contract.approval = Approval::Manual;
        self
    }
    fn with(mut self, f: impl FnOnce(&mut DatabaseMigrationSpec)) -> Self {
        f(&mut self.0);
        self
    }
    fn build(self) -> DatabaseMigrationSpec {
        self.0
    }
}

fn named(name: &str) -> TargetSpec {
    TargetSpec {
        kind: TargetKind::Deployment,
        name: Some(name.into()),
        selector: None,
    }
}

fn target(name: &str, complete: bool) -> TargetStatus {
    TargetStatus {
        kind: "Deployment".into(),
        name: name.into(),
        version: Some(if complete { "2.4.0" } else { "2.3.0" }.into()),
        complete,
        replicas: 2,
        updated_replicas: if complete { 2 } else { 0 },
        available_replicas: 2,
        old_pods: if complete { 0 } else { 2 },
        message: (!complete)
            .then(|| format!("Deployment {name} runs version 2.3.0, needs 2.4.0 or newer")),
        not_found: false,
    }
}

/// One migration and what the controller observes of it; `step` plans and persists the status.
struct Fx {
    name: String,
    generation: i64,
    spec: DatabaseMigrationSpec,
    status: DatabaseMigrationStatus,
    now: i64,
    approved: bool,
    retry: Option<String>,
    expand_job: JobState,
    contract_job: JobState,
    backfill_job: JobState,
    backfill_paused: bool,
    /// What the observed backfill attempt's report said across the tenants.
    backfill_tenants: Option<crate::api::TenantsStatus>,
    targets: Vec<TargetStatus>,
    history: Option<Vec<regression::TargetHistory>>,
}

impl Fx {
    fn new(spec: DatabaseMigrationSpec) -> Self {
        let targets = spec
            .rollout
            .targets
            .iter()
            .map(|t| target(t.name.as_deref().unwrap_or("sel"), false))
            .collect();
        Self {
            name: NAME.into(),
            generation: 1,
            spec,
            status: DatabaseMigrationStatus::default(),
            now: 0,
            approved: false,
            retry: None,
            expand_job: JobState::Absent,
            contract_job: JobState::Absent,
            backfill_job: JobState::Absent,
            backfill_paused: false,
            backfill_tenants: None,
            targets,
            history: None,
        }
    }
    fn input(&self) -> Input<'_> {
        Input {
            now: ts(self.now),
            name: &self.name,
            uid: "",
            generation: self.generation,
            spec: &self.spec,
            status: &self.status,
            approved: self.approved,
            retry: self.retry.as_deref(),
            expand_job: self.expand_job.clone(),
            contract_job: self.contract_job.clone(),
            backfill_job: self.backfill_job.clone(),
            backfill_paused: self.backfill_paused,
            targets: self.targets.clone(),
            job_policy: &POLICY,
            waits_for: Vec::new(),
            expand_seat: None,
            expand_batch: Vec::new(),
            expand_tenants: None,
            contract_tenants: None,
            backfill_tenants: self.backfill_tenants.clone(),
            history: self.history.clone(),
            unconfirmed_stop: None,
        }
    }
    fn plan(&self) -> Plan {
        plan(&self.input())
    }
    /// Plan and persist the status.
    fn step(&mut self) -> Plan {
        let p = self.plan();
        self.status = p.status.clone();
        p
    }
    fn complete(&mut self, yes: bool) {
        for t in &mut self.targets {
            *t = target(&t.name.clone(), yes);
        }
    }
    fn retry(&mut self, token: &str) {
        self.retry = Some(token.into());
    }
    /// Expand applied, waiting for the rollout (at `now`).
    fn expanded(spec: DatabaseMigrationSpec) -> Self {
        let mut fx = Fx::new(spec);
        assert_eq!(
            fx.step().action,
            Action::StartJob {
                phase: JobPhase::Expand,
                attempt: 1
            }
        );
        fx.expand_job = JobState::Running(None);
        fx.step();
        fx.expand_job = JobState::Succeeded(Some("expand applied".into()));
        assert_eq!(fx.step().status.phase, Some(Phase::AwaitingRollout));
        fx
    }
    /// Contract attempt 1 started (targets complete).
    fn contracting(spec: DatabaseMigrationSpec) -> Self {
        let mut fx = Fx::expanded(spec);
        fx.complete(true);
        fx.approved = true;
        assert_eq!(
            fx.step().action,
            Action::StartJob {
                phase: JobPhase::Contract,
                attempt: 1
            }
        );
        fx.contract_job = JobState::Running(None);
        fx
    }
}

fn phase(p: &Plan) -> Phase {
    p.status.phase.expect("phase is always set")
}

fn cond<'a>(s: &'a DatabaseMigrationStatus, type_: &str) -> &'a Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

fn is_true(s: &DatabaseMigrationStatus, type_: &str) -> bool {
    cond(s, type_).status == "True"
}

/// Why the migration failed: the `Ready` condition's reason, for failures before and after
/// expand alike (`Stalled` carries only the former).
fn failure_reason(s: &DatabaseMigrationStatus) -> Option<&str> {
    conditions::get(&s.conditions, READY)
        .filter(|_| s.phase == Some(Phase::Failed))
        .map(|c| c.reason.as_str())
}

fn start(phase: JobPhase, attempt: u32) -> Action {
    Action::StartJob { phase, attempt }
}

// ---------------------------------------------------------------------------------------
// The happy path
// ---------------------------------------------------------------------------------------

#[test]
fn fresh_migration_starts_expand_attempt_1() {
    let fx = Fx::new(SpecBuilder::new().build());
    let p = fx.plan();
    assert_eq!(p.action, start(JobPhase::Expand, 1));
    assert_eq!(phase(&p), Phase::Expanding);
    let e = p.status.expand.as_ref().unwrap();
    assert_eq!(e.attempts, 1);
    assert_eq!(e.job_name.as_deref(), Some("users-email-verified-expand-1"));
    assert_eq!(e.started_at, Some(time(0)));
    assert!(!e.succeeded && e.finished_at.is_none());
    assert!(p.status.contract.is_none());
    assert_eq!(p.status.observed_generation, Some(1));
    let t = p.transition.expect("Pending -> Expanding is a transition");
    assert!(!t.warning);
    assert_eq!(t.reason, "Expanding");
    assert!(is_true(&p.status, RECONCILING));
    assert!(!is_true(&p.status, READY));
    assert!(!is_true(&p.status, STALLED));
    assert_eq!(cond(&p.status, EXPANDED).reason, reason::EXPANDING);
}

#[test]
fn expand_running_waits_without_action() {
    let mut fx = Fx::new(SpecBuilder::new().build());
    fx.step();
    fx.expand_job = JobState::Running(None);
    fx.now = 30;
    let p = fx.step();
    assert_eq!(p.action, Action::None);
    assert_eq!(phase(&p), Phase::Expanding);
    assert_eq!(p.transition, None);
    assert_eq!(p.status.expand.as_ref().unwrap().attempts, 1);
    assert_eq!(
        p.status.expand.as_ref().unwrap().started_at,
        Some(time(0)),
        "started_at is kept"
    );
    assert!(is_true(&p.status, RECONCILING));
}

#[test]
fn expand_succeeded_awaits_rollout_without_action() {
    let mut fx = Fx::new(
        SpecBuilder::new()
            .targets(&["shop-api", "shop-worker"])
            .build(),
    );
    fx.step();
    fx.expand_job = JobState::Running(None);
    fx.step();
    fx.now = 60;
    fx.targets[0] = target("shop-api", true);
    fx.expand_job = JobState::Succeeded(Some("2 statements applied".into()));
    let p = fx.step();
    assert_eq!(p.action, Action::None);
    assert_eq!(phase(&p), Phase::AwaitingRollout);
    assert_eq!(p.transition.as_ref().unwrap().reason, "AwaitingRollout");
    let e = p.status.expand.as_ref().unwrap();
    assert!(e.succeeded);
    assert_eq!(e.finished_at, Some(time(60)));
    assert_eq!(e.message.as_deref(), Some("2 statements applied"));
    assert_eq!(p.status.targets_ready.as_deref(), Some("1/2"));
    assert_eq!(p.status.targets, fx.targets);
    assert_eq!(p.status.rollout_started_at, Some(time(60)));
    assert_eq!(p.status.rollout_completed_at, None);
    assert!(p.status.contract.is_none());
    assert!(
        is_true(&p.status, READY),
        "Ready once expand is applied (Argo CD / Flux gate)"
    );
    assert!(is_true(&p.status, EXPANDED));
    assert!(!is_true(&p.status, RECONCILING));
    assert!(!is_true(&p.status, STALLED));
    let rc = cond(&p.status, ROLLOUT_COMPLETE);
    assert_eq!(
        (rc.status.as_str(), rc.reason.as_str()),
        ("False", reason::AWAITING_ROLLOUT)
    );
    assert!(rc.message.contains("shop-worker"), "{}", rc.message);
    assert!(
        !rc.message.contains("Deployment shop-api"),
        "{}",
        rc.message
    );
}

#[test]
fn targets_complete_start_contract() {
    let mut fx = Fx::expanded(SpecBuilder::new().build());
    fx.now = 120;
    fx.complete(true);
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Contract, 1));
    assert_eq!(phase(&p), Phase::Contracting);
    assert_eq!(p.transition.as_ref().unwrap().reason, "Contracting");
    let c = p.status.contract.as_ref().unwrap();
    assert_eq!(c.attempts, 1);
    assert_eq!(
        c.job_name.as_deref(),
        Some("users-email-verified-contract-1")
    );
    assert_eq!(c.started_at, Some(time(120)));
    assert_eq!(p.status.rollout_completed_at, Some(time(120)));
    assert_eq!(p.status.targets_ready.as_deref(), Some("1/1"));
    assert!(is_true(&p.status, ROLLOUT_COMPLETE));
    assert!(is_true(&p.status, READY));
    assert_eq!(cond(&p.status, CONTRACTED).reason, reason::CONTRACTING);
}

#[test]
fn contract_running_then_succeeded() {
    let mut fx = Fx::contracting(SpecBuilder::new().build());
    fx.now = 200;
    let p = fx.step();
    assert_eq!(p.action, Action::None);
    assert_eq!(phase(&p), Phase::Contracting);
    assert_eq!(p.transition, None);

    fx.now = 260;
    fx.contract_job = JobState::Succeeded(Some("1 statement applied".into()));
    let p = fx.step();
    assert_eq!(p.action, Action::None);
    assert_eq!(phase(&p), Phase::Succeeded);
    let t = p.transition.as_ref().unwrap();
    assert_eq!((t.reason.as_str(), t.warning), ("Succeeded", false));
    let c = p.status.contract.as_ref().unwrap();
    assert!(c.succeeded);
    assert_eq!(c.finished_at, Some(time(260)));
    assert_eq!(c.message.as_deref(), Some("1 statement applied"));
    for ty in [READY, EXPANDED, ROLLOUT_COMPLETE, CONTRACTED] {
        assert!(is_true(&p.status, ty), "{ty}");
    }
    assert!(!is_true(&p.status, RECONCILING));
    assert!(!is_true(&p.status, STALLED));

    // Succeeded is terminal: a later rollback or the Job's TTL cleanup changes nothing.
    fx.now = 10_000;
    fx.complete(false);
    fx.contract_job = JobState::Absent;
    fx.expand_job = JobState::Absent;
    let p = fx.step();
    assert_eq!(
        (phase(&p), &p.action, &p.transition),
        (Phase::Succeeded, &Action::None, &None)
    );
}

// ---------------------------------------------------------------------------------------
// Failures and retries
// ---------------------------------------------------------------------------------------

fn expand_failed() -> Fx {
    let mut fx = Fx::new(SpecBuilder::new().build());
    fx.step();
    fx.expand_job = JobState::Running(None);
    fx.step();
    fx.now = 50;
    fx.expand_job = JobState::Failed("relation \"users\" does not exist".into());
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Failed);
    fx
}

#[test]
fn expand_failed_is_failed_with_message_and_no_action() {
    let mut fx = Fx::new(SpecBuilder::new().build());
    fx.step();
    fx.expand_job = JobState::Running(None);
    fx.step();
    fx.now = 50;
    fx.expand_job = JobState::Failed("relation \"users\" does not exist".into());
    let p = fx.step();
    assert_eq!(p.action, Action::None);
    assert_eq!(phase(&p), Phase::Failed);
    let t = p.transition.as_ref().unwrap();
    assert!(t.warning);
    assert_eq!(t.reason, reason::EXPAND_FAILED);
    assert!(
        t.message.contains("relation \"users\" does not exist"),
        "{}",
        t.message
    );
    assert_eq!(failure_reason(&p.status), Some(reason::EXPAND_FAILED));
    assert!(cond(&p.status, STALLED).message.contains("does not exist"));
    assert_eq!(cond(&p.status, EXPANDED).reason, reason::EXPAND_FAILED);
    assert!(!is_true(&p.status, READY));
    assert!(!is_true(&p.status, RECONCILING));
    let e = p.status.expand.as_ref().unwrap();
    assert_eq!(e.finished_at, Some(time(50)));
    assert_eq!(
        e.message.as_deref(),
        Some("relation \"users\" does not exist")
    );
    assert!(!e.succeeded);

    // Re-planning keeps the failure time; a deleted failed Job is still a failure.
    fx.now = 500;
    let p = fx.step();
    assert_eq!(
        (p.action.clone(), p.transition.clone()),
        (Action::None, None)
    );
    assert_eq!(
        p.status.expand.as_ref().unwrap().finished_at,
        Some(time(50))
    );
    fx.expand_job = JobState::Absent;
    let p = fx.step();
    assert_eq!((phase(&p), p.action.clone()), (Phase::Failed, Action::None));
    assert!(p.transition.is_none());
    assert!(cond(&p.status, STALLED).message.contains("does not exist"));
}

#[test]
fn retry_after_expand_failure_starts_attempt_2() {
    let mut fx = expand_failed();
    fx.now = 100;
    fx.retry("1");
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Expand, 2));
    assert_eq!(phase(&p), Phase::Expanding);
    assert_eq!(p.status.observed_retry.as_deref(), Some("1"));
    let e = p.status.expand.as_ref().unwrap();
    assert_eq!(e.attempts, 2);
    assert_eq!(e.job_name.as_deref(), Some("users-email-verified-expand-2"));
    assert_eq!(e.started_at, Some(time(100)));
    assert_eq!((e.finished_at.clone(), e.message.clone()), (None, None));
    assert!(!is_true(&p.status, STALLED));
    assert_eq!(p.transition.as_ref().unwrap().reason, "Expanding");

    // The new attempt runs; the same token does nothing more.
    fx.expand_job = JobState::Running(None);
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::Expanding, Action::None)
    );
}

#[test]
fn retry_after_expand_failure_whose_job_is_gone() {
    let mut fx = expand_failed();
    fx.expand_job = JobState::Absent;
    fx.retry("1");
    assert_eq!(fx.step().action, start(JobPhase::Expand, 2));
}

#[test]
fn stale_retry_token_does_nothing() {
    let mut fx = expand_failed();
    fx.retry("1");
    fx.step();
    fx.expand_job = JobState::Failed("again".into());
    let p = fx.step();
    assert_eq!((phase(&p), p.action.clone()), (Phase::Failed, Action::None));
    assert_eq!(p.status.expand.as_ref().unwrap().attempts, 2);
    assert_eq!(p.status.observed_retry.as_deref(), Some("1"));
    // Same token again, later, with the Job gone: still nothing.
    fx.now = 1000;
    fx.expand_job = JobState::Absent;
    let p = fx.step();
    assert_eq!((phase(&p), p.action.clone()), (Phase::Failed, Action::None));
}

#[test]
fn empty_retry_token_is_no_retry() {
    let mut fx = expand_failed();
    fx.retry("");
    let p = fx.step();
    assert_eq!((phase(&p), p.action.clone()), (Phase::Failed, Action::None));
}

#[test]
fn retry_token_set_before_any_failure_is_recorded_and_not_acted_on_later() {
    let mut fx = Fx::new(SpecBuilder::new().build());
    fx.step();
    fx.expand_job = JobState::Running(None);
    fx.retry("early");
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Expanding);
    assert_eq!(
        p.status.observed_retry.as_deref(),
        Some("early"),
        "recorded while nothing failed"
    );

    fx.expand_job = JobState::Failed("boom".into());
    let p = fx.step();
    assert_eq!((phase(&p), p.action.clone()), (Phase::Failed, Action::None));

    fx.retry("late");
    assert_eq!(fx.step().action, start(JobPhase::Expand, 2));
}

#[test]
fn retry_token_set_during_rollout_does_not_retry_a_later_contract_failure() {
    let mut fx = Fx::expanded(SpecBuilder::new().build());
    fx.retry("early");
    assert_eq!(fx.step().status.observed_retry.as_deref(), Some("early"));
    fx.complete(true);
    fx.step();
    fx.contract_job = JobState::Failed("boom".into());
    let p = fx.step();
    assert_eq!((phase(&p), p.action.clone()), (Phase::Failed, Action::None));
}

#[test]
fn a_failure_after_expand_is_not_stalled_so_gitops_does_not_hold_the_app() {
    // kstatus calls Stalled=True Failed; Flux would then hold back the app's Kustomization
    // (and the fix of whatever failed). After expand the app needs nothing more.
    let p = contract_failed().step();
    assert_eq!(phase(&p), Phase::Failed);
    assert_eq!(cond(&p.status, STALLED).status, "False");
    assert_eq!(cond(&p.status, STALLED).reason, reason::FAILED_AFTER_EXPAND);
    // Ready stays True (the schema is ready for appVersion; kstatus reads Ready=False as
    // InProgress) and says what failed.
    assert_eq!(cond(&p.status, READY).status, "True");
    assert_eq!(cond(&p.status, READY).reason, reason::CONTRACT_FAILED);
    assert!(cond(&p.status, READY)
        .message
        .contains("lock timeout on users"));
    // Before expand, the same kind of failure is Stalled: the app must not roll out.
    let mut fx = Fx::new(SpecBuilder::new().build());
    fx.step();
    fx.expand_job = JobState::Failed("relation \"orders\" does not exist".into());
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Failed);
    assert_eq!(cond(&p.status, STALLED).status, "True");
    assert_eq!(cond(&p.status, STALLED).reason, reason::EXPAND_FAILED);
}

fn contract_failed() -> Fx {
    let mut fx = Fx::contracting(SpecBuilder::new().build());
    fx.now = 300;
    fx.contract_job = JobState::Failed("lock timeout on users".into());
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Failed);
    fx
}

#[test]
fn contract_failed_is_failed_with_message_and_no_action() {
    let mut fx = Fx::contracting(SpecBuilder::new().build());
    fx.now = 300;
    fx.contract_job = JobState::Failed("lock timeout on users".into());
    let p = fx.step();
    assert_eq!(p.action, Action::None);
    let t = p.transition.as_ref().unwrap();
    assert!(t.warning);
    assert_eq!(t.reason, reason::CONTRACT_FAILED);
    assert!(t.message.contains("lock timeout on users"));
    assert_eq!(failure_reason(&p.status), Some(reason::CONTRACT_FAILED));
    assert_eq!(cond(&p.status, CONTRACTED).reason, reason::CONTRACT_FAILED);
    assert!(
        is_true(&p.status, READY),
        "the schema stays ready for appVersion"
    );
    let c = p.status.contract.as_ref().unwrap();
    assert_eq!(
        (c.finished_at.clone(), c.succeeded),
        (Some(time(300)), false)
    );

    // The failed Job deleted: still failed, nothing started.
    fx.contract_job = JobState::Absent;
    fx.now = 900;
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone(), p.transition.clone()),
        (Phase::Failed, Action::None, None)
    );
}

#[test]
fn retry_after_contract_failure_starts_attempt_2_when_gates_open() {
    let mut fx = contract_failed();
    fx.now = 400;
    fx.retry("1");
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Contract, 2));
    assert_eq!(phase(&p), Phase::Contracting);
    assert_eq!(p.status.observed_retry.as_deref(), Some("1"));
    let c = p.status.contract.as_ref().unwrap();
    assert_eq!((c.attempts, c.finished_at.clone()), (2, None));
    assert_eq!(
        c.job_name.as_deref(),
        Some("users-email-verified-contract-2")
    );
    fx.contract_job = JobState::Running(None);
    assert_eq!(fx.step().action, Action::None);
}

#[test]
fn retry_after_contract_failure_rechecks_the_gates() {
    let mut fx = contract_failed();
    fx.complete(false); // a rollback happened since
    fx.retry("1");
    let p = fx.step();
    assert_eq!(
        p.action,
        Action::None,
        "contract must not run while the rollout is incomplete"
    );
    assert_eq!(phase(&p), Phase::AwaitingRollout);
    assert_eq!(p.status.rollout_completed_at, None);

    fx.approved = false;
    fx.spec.contract.approval = Approval::Manual;
    fx.complete(true);
    let p = fx.step();
    assert_eq!(
        p.action,
        Action::None,
        "contract must not run without approval"
    );
}

#[test]
fn retry_after_contract_failure_survives_a_closed_gate() {
    // Contract failed; the user retries while the rollout is (momentarily) incomplete.
    let mut fx = contract_failed();
    fx.complete(false);
    fx.retry("1");
    let p = fx.step();
    assert_eq!(phase(&p), Phase::AwaitingRollout);
    // The rollout completes: the retry must now start contract attempt 2.
    fx.now = 500;
    fx.complete(true);
    let p = fx.step();
    assert_eq!(
        phase(&p),
        Phase::Contracting,
        "retry lost: {:?}",
        p.status.conditions
    );
    assert_eq!(p.action, start(JobPhase::Contract, 2));
}

#[test]
fn retry_after_contract_failure_survives_awaiting_approval() {
    let mut fx = contract_failed();
    fx.spec.contract.approval = Approval::Manual;
    fx.approved = false;
    fx.retry("1");
    assert_eq!(phase(&fx.step()), Phase::AwaitingApproval);
    fx.approved = true;
    let p = fx.step();
    assert_eq!(
        p.action,
        start(JobPhase::Contract, 2),
        "retry lost: phase {:?}",
        p.status.phase
    );
}

#[test]
fn a_rollback_while_contract_failed_restarts_the_soak() {
    let mut fx = Fx::expanded(SpecBuilder::new().delay("10m").build());
    fx.complete(true);
    fx.step(); // Soaking from t=0
    fx.now = 600;
    assert_eq!(fx.step().action, start(JobPhase::Contract, 1));
    fx.contract_job = JobState::Failed("boom".into());
    fx.now = 700;
    fx.step();
    // While failed, the app is rolled back and rolled out again.
    fx.now = 800;
    fx.complete(false);
    fx.step();
    fx.now = 900;
    fx.complete(true);
    fx.step();
    fx.retry("1");
    let p = fx.step();
    assert_eq!(
        phase(&p),
        Phase::Soaking,
        "the rollout completed 0s ago; action {:?}",
        p.action
    );
}

// ---------------------------------------------------------------------------------------
// Gates: soak delay, approval, timeout, targets
// ---------------------------------------------------------------------------------------

#[test]
fn soak_delay_then_contract() {
    let mut fx = Fx::expanded(SpecBuilder::new().delay("10m").build());
    fx.now = 100;
    fx.complete(true);
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::Soaking, Action::None)
    );
    assert_eq!(p.requeue_after, Some(Duration::from_secs(600)));
    assert_eq!(p.status.rollout_completed_at, Some(time(100)));
    assert_eq!(p.transition.as_ref().unwrap().reason, "Soaking");
    assert!(is_true(&p.status, ROLLOUT_COMPLETE));
    assert!(is_true(&p.status, READY));

    fx.now = 400;
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone(), p.transition.clone()),
        (Phase::Soaking, Action::None, None)
    );
    assert_eq!(p.requeue_after, Some(Duration::from_secs(300)));
    assert_eq!(
        p.status.rollout_completed_at,
        Some(time(100)),
        "soak counts from the first complete observation"
    );
    // The message names the deadline, not a countdown: status is not rewritten while
    // nothing changes.
    let msg = cond(&p.status, READY).message.clone();
    assert!(
        msg.contains(&format!("contract not before {}", ts(700))),
        "{msg}"
    );
    assert_eq!(p.status.contract_not_before, Some(time(700)));
    fx.now = 500;
    assert_eq!(cond(&fx.step().status, READY).message, msg);

    fx.now = 699;
    assert_eq!(phase(&fx.step()), Phase::Soaking);
    fx.now = 700;
    assert_eq!(fx.step().action, start(JobPhase::Contract, 1));
}

#[test]
fn rollback_during_soak_resets_the_soak() {
    let mut fx = Fx::expanded(SpecBuilder::new().delay("10m").build());
    fx.now = 100;
    fx.complete(true);
    fx.step();
    fx.now = 400;
    fx.complete(false);
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::AwaitingRollout, Action::None)
    );
    assert_eq!(p.status.rollout_completed_at, None);
    assert!(!is_true(&p.status, ROLLOUT_COMPLETE));
    assert_eq!(p.transition.as_ref().unwrap().reason, "AwaitingRollout");

    fx.now = 800; // 700s after the first completion, but only 0s after the second
    fx.complete(true);
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::Soaking, Action::None)
    );
    assert_eq!(p.status.rollout_completed_at, Some(time(800)));
    assert_eq!(p.requeue_after, Some(Duration::from_secs(600)));
    fx.now = 1399;
    assert_eq!(fx.step().action, Action::None);
    fx.now = 1400;
    assert_eq!(fx.step().action, start(JobPhase::Contract, 1));
}

#[test]
fn one_target_rolling_back_closes_the_gate() {
    let mut fx = Fx::expanded(SpecBuilder::new().targets(&["a", "b", "c"]).build());
    fx.complete(true);
    fx.targets[1] = target("b", false);
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::AwaitingRollout, Action::None)
    );
    assert_eq!(p.status.targets_ready.as_deref(), Some("2/3"));
    assert!(
        cond(&p.status, READY).message.contains("1/3"),
        "{}",
        cond(&p.status, READY).message
    );
}

#[test]
fn manual_approval_waits_until_approved() {
    let mut fx = Fx::expanded(SpecBuilder::new().manual().build());
    fx.complete(true);
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::AwaitingApproval, Action::None)
    );
    assert!(p
        .transition
        .as_ref()
        .unwrap()
        .message
        .contains(crate::api::ANNOTATION_APPROVE));
    assert!(is_true(&p.status, ROLLOUT_COMPLETE));
    fx.now = 3600;
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone(), p.transition.clone()),
        (Phase::AwaitingApproval, Action::None, None)
    );
    fx.approved = true;
    assert_eq!(fx.step().action, start(JobPhase::Contract, 1));
}

#[test]
fn manual_approval_after_soak() {
    let mut fx = Fx::expanded(SpecBuilder::new().manual().delay("1m").build());
    fx.approved = true; // approved early: the soak still applies
    fx.complete(true);
    assert_eq!(phase(&fx.step()), Phase::Soaking);
    fx.approved = false;
    fx.now = 60;
    assert_eq!(phase(&fx.step()), Phase::AwaitingApproval);
    fx.approved = true;
    assert_eq!(fx.step().action, start(JobPhase::Contract, 1));
}

#[test]
fn approval_does_not_bypass_the_rollout() {
    let mut fx = Fx::expanded(SpecBuilder::new().manual().build());
    fx.approved = true;
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::AwaitingRollout, Action::None)
    );
}

#[test]
fn rollout_timeout_fails_and_stays_failed_until_retry() {
    let mut fx = Fx::expanded(SpecBuilder::new().timeout("1h").build());
    assert_eq!(fx.status.rollout_started_at, Some(time(0)));
    assert_eq!(fx.plan().requeue_after, Some(Duration::from_secs(3600)));
    fx.now = 1800;
    assert_eq!(fx.step().requeue_after, Some(Duration::from_secs(1800)));
    fx.now = 3600;
    let p = fx.step();
    assert_eq!((phase(&p), p.action.clone()), (Phase::Failed, Action::None));
    let t = p.transition.as_ref().unwrap();
    assert!(t.warning);
    assert_eq!(t.reason, reason::ROLLOUT_TIMEOUT);
    assert!(t.message.contains("1h"), "{}", t.message);
    assert_eq!(failure_reason(&p.status), Some(reason::ROLLOUT_TIMEOUT));
    assert_eq!(
        cond(&p.status, ROLLOUT_COMPLETE).reason,
        reason::ROLLOUT_TIMEOUT
    );
    assert!(
        is_true(&p.status, READY),
        "the schema stays ready for appVersion"
    );

    // The targets complete later: still failed, contract does not run.
    fx.now = 4000;
    fx.complete(true);
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone(), p.transition.clone()),
        (Phase::Failed, Action::None, None)
    );
    assert_eq!(failure_reason(&p.status), Some(reason::ROLLOUT_TIMEOUT));
    fx.approved = true;
    fx.now = 100_000;
    assert_eq!(fx.step().action, Action::None);

    // A retry re-opens the gates.
    fx.retry("1");
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Contract, 1));
    assert_eq!(p.status.observed_retry.as_deref(), Some("1"));
}

#[test]
fn retry_after_rollout_timeout_restarts_the_timeout_clock() {
    let mut fx = Fx::expanded(SpecBuilder::new().timeout("10m").build());
    fx.now = 600;
    assert_eq!(phase(&fx.step()), Phase::Failed);
    fx.now = 1000;
    fx.retry("1");
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::AwaitingRollout, Action::None)
    );
    assert_eq!(p.status.rollout_started_at, Some(time(1000)));
    assert_eq!(p.requeue_after, Some(Duration::from_secs(600)));
    fx.now = 1599;
    assert_eq!(phase(&fx.step()), Phase::AwaitingRollout);
    fx.now = 1600;
    assert_eq!(phase(&fx.step()), Phase::Failed);
}

#[test]
fn rollout_timeout_survives_an_invalid_spec_edit() {
    let mut fx = Fx::expanded(SpecBuilder::new().timeout("10m").build());
    fx.now = 600;
    assert_eq!(
        failure_reason(&fx.step().status),
        Some(reason::ROLLOUT_TIMEOUT)
    );
    // An edit makes the spec invalid, then the edit is reverted; meanwhile the rollout completed.
    let good = fx.spec.clone();
    fx.spec.contract.delay = Some("10 parsecs".into());
    assert_eq!(
        failure_reason(&fx.step().status),
        Some(reason::INVALID_SPEC)
    );
    fx.spec = good;
    fx.complete(true);
    let p = fx.step();
    assert_eq!(
        p.action,
        Action::None,
        "a timed-out rollout must stay failed until a retry"
    );
    assert_eq!(failure_reason(&p.status), Some(reason::ROLLOUT_TIMEOUT));
}

#[test]
fn targets_complete_before_timeout_never_time_out() {
    let mut fx = Fx::expanded(SpecBuilder::new().timeout("10m").delay("1h").build());
    fx.complete(true);
    assert_eq!(phase(&fx.step()), Phase::Soaking);
    fx.now = 1200; // past the rollout timeout, inside the soak
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Soaking);
    fx.now = 3600;
    assert_eq!(fx.step().action, start(JobPhase::Contract, 1));
}

#[test]
fn empty_targets_list_never_counts_as_complete() {
    let mut fx = Fx::expanded(SpecBuilder::new().build());
    fx.targets.clear();
    fx.approved = true;
    fx.now = 1_000_000;
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::AwaitingRollout, Action::None)
    );
    assert_eq!(p.status.targets_ready.as_deref(), Some("0/0"));
    assert!(cond(&p.status, READY)
        .message
        .contains("no rollout targets"));
    assert!(!is_true(&p.status, ROLLOUT_COMPLETE));
}

#[test]
fn a_missing_target_reported_incomplete_blocks_contract() {
    let mut fx = Fx::expanded(
        SpecBuilder::new()
            .targets(&["shop-api", "shop-worker"])
            .build(),
    );
    fx.targets = vec![
        target("shop-api", true),
        TargetStatus {
            kind: "Deployment".into(),
            name: "shop-worker".into(),
            message: Some("Deployment shop-worker not found".into()),
            ..Default::default()
        },
    ];
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::AwaitingRollout, Action::None)
    );
    assert!(cond(&p.status, READY)
        .message
        .contains("shop-worker not found"));
}

#[test]
fn a_named_target_absent_from_the_observation_blocks_contract() {
    let mut fx = Fx::expanded(
        SpecBuilder::new()
            .targets(&["shop-api", "shop-worker"])
            .build(),
    );
    fx.targets = vec![target("shop-api", true)];
    let p = fx.step();
    assert_eq!(p.action, Action::None, "shop-worker was never observed");
}

// ---------------------------------------------------------------------------------------
// Invalid specs
// ---------------------------------------------------------------------------------------

fn invalid_specs() -> Vec<(&'static str, DatabaseMigrationSpec)> {
    let empty_selector = TargetSpec {
        kind: TargetKind::Deployment,
        name: None,
        selector: Some(LabelSelector::default()),
    };
    let both = TargetSpec {
        kind: TargetKind::Deployment,
        name: Some("a".into()),
        selector: Some(LabelSelector {
            match_labels: Some([("app".to_string(), "a".to_string())].into()),
            ..Default::default()
        }),
    };
    let no_containers = JobSpec {
        template: serde_json::json!({"spec": {"containers": []}}),
        backoff_limit: None,
    };
    vec![
        (
            "spec.expand",
            SpecBuilder::new()
                .with(|s| {
                    s.expand = PhaseSpec {
                        sql: None,
                        job: None,
                    }
                })
                .build(),
        ),
        (
            "spec.expand",
            SpecBuilder::new()
                .with(|s| s.expand.sql = Some("  ".into()))
                .build(),
        ),
        (
            "spec.expand",
            SpecBuilder::new()
                .with(|s| {
                    s.expand = PhaseSpec {
                        sql: None,
                        job: Some(no_containers),
                    }
                })
                .build(),
        ),
        (
            "spec.contract",
            SpecBuilder::new().with(|s| s.contract.sql = None).build(),
        ),
        (
            "spec.contract.delay",
            SpecBuilder::new().delay("10 parsecs").build(),
        ),
        (
            "spec.rollout.timeout",
            SpecBuilder::new().timeout("soon").build(),
        ),
        (
            "spec.rollout.targets",
            SpecBuilder::new()
                .with(|s| s.rollout.targets = vec![empty_selector])
                .build(),
        ),
        (
            "spec.rollout.targets",
            SpecBuilder::new()
                .with(|s| s.rollout.targets = vec![both])
                .build(),
        ),
        (
            "spec.rollout.targets",
            SpecBuilder::new()
                .with(|s| s.rollout.targets.clear())
                .build(),
        ),
        (
            "spec.rollout.versionFrom",
            SpecBuilder::new()
                .with(|s| s.rollout.version_from.label = None)
                .build(),
        ),
        (
            "spec.appVersion",
            SpecBuilder::new()
                .with(|s| s.app_version = " ".into())
                .build(),
        ),
        (
            "spec.safety.lockTimeout",
            SpecBuilder::new()
                .with(|s| s.safety.lock_timeout = "2 fortnights".into())
                .build(),
        ),
        (
            "spec.safety.youngTransaction",
            SpecBuilder::new()
                .with(|s| s.safety.young_transaction = "a blink".into())
                .build(),
        ),
        (
            "spec.safety.lockWaitAttemptAfter",
            SpecBuilder::new()
                .with(|s| s.safety.lock_wait_attempt_after = "later".into())
                .build(),
        ),
    ]
}

#[test]
fn invalid_spec_fails_with_the_field_and_does_nothing() {
    for (field, spec) in invalid_specs() {
        let mut fx = Fx::new(spec);
        let p = fx.step();
        assert_eq!(p.action, Action::None, "{field}");
        assert_eq!(phase(&p), Phase::Failed, "{field}");
        assert_eq!(
            failure_reason(&p.status),
            Some(reason::INVALID_SPEC),
            "{field}"
        );
        let msg = &cond(&p.status, STALLED).message;
        assert!(msg.starts_with(field), "{field}: {msg}");
        let t = p.transition.as_ref().unwrap();
        assert_eq!(
            (t.warning, t.reason.as_str()),
            (true, reason::INVALID_SPEC),
            "{field}"
        );
        assert!(p.status.expand.is_none(), "{field}: nothing recorded");
        // Still invalid: no new Event.
        assert_eq!(fx.step().transition, None, "{field}");
    }
}

#[test]
fn fixed_spec_resumes_from_recorded_progress() {
    let mut fx = Fx::expanded(SpecBuilder::new().build());
    let good = fx.spec.clone();
    fx.spec.contract.delay = Some("10 parsecs".into());
    fx.expand_job = JobState::Absent; // the expand Job was cleaned up meanwhile
    fx.now = 100;
    let p = fx.step();
    assert_eq!((phase(&p), p.action.clone()), (Phase::Failed, Action::None));
    assert!(cond(&p.status, READY)
        .message
        .contains("spec.contract.delay"));
    assert!(
        is_true(&p.status, READY),
        "the schema stays ready for appVersion"
    );
    assert!(is_true(&p.status, EXPANDED), "expand stays applied");

    fx.spec = good;
    fx.now = 200;
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::AwaitingRollout, Action::None),
        "expand is not re-run"
    );
    assert_eq!(p.status.expand.as_ref().unwrap().attempts, 1);
    assert!(is_true(&p.status, READY));
    fx.complete(true);
    assert_eq!(fx.step().action, start(JobPhase::Contract, 1));
}

#[test]
fn invalid_spec_while_expand_runs_resumes_the_same_attempt() {
    let mut fx = Fx::new(SpecBuilder::new().build());
    fx.step();
    fx.expand_job = JobState::Running(None);
    fx.step();
    let good = fx.spec.clone();
    fx.spec.rollout.targets.clear();
    assert_eq!(phase(&fx.step()), Phase::Failed);
    fx.spec = good;
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::Expanding, Action::None)
    );
    assert_eq!(p.status.expand.as_ref().unwrap().attempts, 1);
}

// ---------------------------------------------------------------------------------------
// Lost Jobs and lost status writes
// ---------------------------------------------------------------------------------------

#[test]
fn expand_job_vanished_while_running_starts_a_new_attempt() {
    let mut fx = Fx::new(SpecBuilder::new().build());
    fx.step();
    fx.expand_job = JobState::Running(None);
    fx.step();
    fx.expand_job = JobState::Absent;
    fx.now = 10;
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Expand, 2));
    assert_eq!(
        p.status.expand.as_ref().unwrap().job_name.as_deref(),
        Some("users-email-verified-expand-2")
    );
}

#[test]
fn contract_job_vanished_while_running_starts_a_new_attempt_through_the_gates() {
    let mut fx = Fx::contracting(SpecBuilder::new().build());
    fx.step();
    fx.contract_job = JobState::Absent;
    fx.complete(false);
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::AwaitingRollout, Action::None)
    );
    fx.complete(true);
    assert_eq!(fx.step().action, start(JobPhase::Contract, 2));
}

#[test]
fn an_invalid_edit_while_contract_runs_stops_the_attempt() {
    let mut fx = Fx::contracting(SpecBuilder::new().build());
    assert_eq!(phase(&fx.step()), Phase::Contracting);
    let good = fx.spec.clone();
    // Admitted by the API server, refused by the planner: below youngTransaction.
    fx.spec.safety.lock_timeout = "20ms".into();
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone()),
        (
            Phase::Failed,
            Action::StopJob {
                phase: JobPhase::Contract,
                attempt: 1
            }
        ),
        "a plan that judges no gate must not let the running attempt commit"
    );
    let rec = p.status.contract.clone().unwrap();
    assert_eq!(rec.reason.as_deref(), Some(reason::GATE_CLOSED), "{rec:?}");
    assert!(
        rec.message
            .as_deref()
            .unwrap_or_default()
            .contains("is out of range"),
        "{rec:?}"
    );
    assert!(p.notices.iter().any(|n| n.reason == reason::GATE_CLOSED));
    // Its Job is still there (a kubelet that has not stopped it): still stopped, once noticed.
    let p = fx.step();
    assert!(matches!(p.action, Action::StopJob { .. }));
    assert!(p.notices.iter().all(|n| n.reason != reason::GATE_CLOSED));
    // Fixed: the stopped attempt is not resumed; a new one starts through the gates.
    fx.contract_job = JobState::Absent;
    fx.spec = good;
    assert_eq!(fx.step().action, start(JobPhase::Contract, 2));
}

#[test]
fn a_policy_refusal_while_contract_runs_stops_the_attempt() {
    let mut fx = Fx::contracting(SpecBuilder::new().build());
    fx.step();
    fx.spec.depends_on = vec![NAME.to_string()];
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Failed);
    assert_eq!(
        p.action,
        Action::StopJob {
            phase: JobPhase::Contract,
            attempt: 1
        }
    );
}

// ---------------------------------------------------------------------------------------
// The commit grant's verdict
// ---------------------------------------------------------------------------------------

fn verdict(fx: &Fx, attempt: u32) -> crate::protocol::grant::Verdict {
    grant::verdict(&fx.input(), attempt).verdict
}

#[test]
fn the_grant_holds_only_while_every_gate_does_for_the_recorded_attempt() {
    use crate::protocol::grant::Verdict::*;
    let mut fx = Fx::contracting(SpecBuilder::new().build());
    fx.step();
    assert_eq!(verdict(&fx, 1), Granted);
    // The Job of attempt 2 exists but the status write that recorded it was lost: no grant
    // until status says so (attempt 1's plan must not vouch for it).
    assert_eq!(verdict(&fx, 2), Withheld);
    // A rollback the operator has not planned on yet: a fresh view withholds.
    fx.complete(false);
    assert_eq!(verdict(&fx, 1), Withheld);
    fx.complete(true);
    // An invalid edit: nothing is granted while the spec is refused.
    let good = fx.spec.clone();
    fx.spec.safety.lock_timeout = "20ms".into();
    assert_eq!(verdict(&fx, 1), Withheld);
    fx.spec = good;
    // Once the plan stopped the attempt, it is superseded for good.
    fx.complete(false);
    fx.step();
    fx.complete(true);
    assert_eq!(verdict(&fx, 1), Superseded);
}

#[test]
fn the_grant_needs_the_approval_to_stay() {
    use crate::protocol::grant::Verdict::*;
    let mut fx = Fx::contracting(SpecBuilder::new().manual().build());
    fx.step();
    assert_eq!(verdict(&fx, 1), Granted);
    fx.approved = false;
    assert_eq!(verdict(&fx, 1), Withheld);
}

#[test]
fn expand_job_found_while_status_write_was_lost_is_adopted() {
    // The Job of attempt 1 exists but the status recording its start was lost.
    let mut fx = Fx::new(SpecBuilder::new().build());
    fx.expand_job = JobState::Running(None);
    let p = fx.step();
    assert_eq!(p.action, Action::None, "adopted, not duplicated");
    assert_eq!(phase(&p), Phase::Expanding);
    assert_eq!(p.status.expand.as_ref().unwrap().attempts, 1);

    let mut fx = Fx::new(SpecBuilder::new().build());
    fx.expand_job = JobState::Succeeded(None);
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::AwaitingRollout, Action::None)
    );
    assert!(p.status.expand.as_ref().unwrap().succeeded);
    assert_eq!(p.status.expand.as_ref().unwrap().attempts, 1);

    let mut fx = Fx::new(SpecBuilder::new().build());
    fx.expand_job = JobState::Failed("x".into());
    let p = fx.step();
    assert_eq!((phase(&p), p.action.clone()), (Phase::Failed, Action::None));
    assert_eq!(p.status.expand.as_ref().unwrap().attempts, 1);
}

#[test]
fn contract_job_found_while_status_write_was_lost_is_adopted() {
    let mut fx = Fx::expanded(SpecBuilder::new().build());
    fx.complete(true);
    fx.contract_job = JobState::Running(None);
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::Contracting, Action::None)
    );
    assert_eq!(p.status.contract.as_ref().unwrap().attempts, 1);
    fx.contract_job = JobState::Succeeded(None);
    assert_eq!(phase(&fx.step()), Phase::Succeeded);
}

#[test]
fn adopted_job_is_named_in_status() {
    let mut fx = Fx::new(SpecBuilder::new().build());
    fx.expand_job = JobState::Running(None);
    let p = fx.step();
    let e = p.status.expand.as_ref().unwrap();
    assert_eq!(e.job_name.as_deref(), Some("users-email-verified-expand-1"));
    assert!(e.started_at.is_some());
}

#[test]
fn retry_replanned_from_a_stale_status_re_issues_the_same_attempt() {
    // Expand failed; a retry started attempt 2 but that status write was lost.
    let mut fx = expand_failed();
    let before = fx.status.clone();
    fx.retry("1");
    assert_eq!(fx.step().action, start(JobPhase::Expand, 2));
    fx.status = before;
    // Re-planned from the old status: the same attempt (the controller adopts it), not a third.
    assert_eq!(fx.step().action, start(JobPhase::Expand, 2));
}

#[test]
fn expand_is_never_rerun_once_recorded_succeeded() {
    let mut fx = Fx::expanded(SpecBuilder::new().build());
    for job in [
        JobState::Absent,
        JobState::Running(None),
        JobState::Failed("x".into()),
    ] {
        fx.expand_job = job;
        fx.retry(&format!("{:?}", fx.expand_job));
        let p = fx.step();
        assert!(!matches!(
            p.action,
            Action::StartJob {
                phase: JobPhase::Expand,
                ..
            }
        ));
        assert_eq!(phase(&p), Phase::AwaitingRollout);
    }
}

// ---------------------------------------------------------------------------------------
// Transitions and conditions
// ---------------------------------------------------------------------------------------

#[test]
fn transition_only_when_the_phase_changes() {
    // Walk the whole path; at every step a second plan from the output status is silent.
    let mut fx = Fx::new(SpecBuilder::new().manual().delay("1m").build());
    let mut seen = Vec::new();
    let check = |fx: &mut Fx, seen: &mut Vec<Phase>| {
        let p = fx.step();
        assert!(p.transition.is_some(), "{:?}", p.status.phase);
        seen.push(phase(&p));
        if let Action::StartJob {
            phase: JobPhase::Expand,
            ..
        } = p.action
        {
            fx.expand_job = JobState::Running(None);
        }
        if let Action::StartJob {
            phase: JobPhase::Contract,
            ..
        } = p.action
        {
            fx.contract_job = JobState::Running(None);
        }
        let again = fx.step();
        assert_eq!(again.transition, None, "{:?}", again.status.phase);
        assert_eq!(again.action, Action::None);
    };
    check(&mut fx, &mut seen); // Expanding
    fx.expand_job = JobState::Succeeded(None);
    check(&mut fx, &mut seen); // AwaitingRollout
    fx.complete(true);
    check(&mut fx, &mut seen); // Soaking
    fx.now = 60;
    check(&mut fx, &mut seen); // AwaitingApproval
    fx.approved = true;
    check(&mut fx, &mut seen); // Contracting
    fx.contract_job = JobState::Failed("x".into());
    check(&mut fx, &mut seen); // Failed
    fx.retry("1");
    check(&mut fx, &mut seen); // Contracting
    fx.contract_job = JobState::Succeeded(None);
    check(&mut fx, &mut seen); // Succeeded
    use Phase::*;
    assert_eq!(
        seen,
        [
            Expanding,
            AwaitingRollout,
            Soaking,
            AwaitingApproval,
            Contracting,
            Failed,
            Contracting,
            Succeeded
        ]
    );
}

#[test]
fn conditions_keep_last_transition_time_while_unchanged() {
    let mut fx = Fx::new(SpecBuilder::new().build());
    let p = fx.step();
    assert_eq!(p.status.conditions.len(), 7);
    for c in &p.status.conditions {
        assert_eq!(c.last_transition_time, time(0), "{}", c.type_);
        assert_eq!(c.observed_generation, Some(1), "{}", c.type_);
    }
    fx.expand_job = JobState::Running(None);
    fx.now = 10;
    fx.generation = 2;
    let p = fx.step();
    assert_eq!(p.status.observed_generation, Some(2));
    for c in &p.status.conditions {
        assert_eq!(c.last_transition_time, time(0), "{} unchanged", c.type_);
        assert_eq!(c.observed_generation, Some(2), "{}", c.type_);
    }
    fx.expand_job = JobState::Succeeded(None);
    fx.now = 20;
    let p = fx.step();
    assert_eq!(cond(&p.status, READY).last_transition_time, time(20));
    assert_eq!(cond(&p.status, EXPANDED).last_transition_time, time(20));
    assert_eq!(cond(&p.status, RECONCILING).last_transition_time, time(20));
    assert_eq!(cond(&p.status, STALLED).last_transition_time, time(0));
    assert_eq!(cond(&p.status, CONTRACTED).last_transition_time, time(0));
    // A message change alone (another target state) keeps the time.
    fx.now = 30;
    fx.targets[0].message = Some("something else".into());
    let p = fx.step();
    assert_eq!(cond(&p.status, READY).last_transition_time, time(20));
    assert!(cond(&p.status, ROLLOUT_COMPLETE)
        .message
        .contains("something else"));
    assert_eq!(
        cond(&p.status, ROLLOUT_COMPLETE).last_transition_time,
        time(0)
    );
}

#[test]
fn condition_messages_are_bounded() {
    let mut fx = Fx::expanded(SpecBuilder::new().build());
    fx.targets[0].message = Some("x".repeat(5000));
    let p = fx.step();
    assert!(p
        .status
        .conditions
        .iter()
        .all(|c| c.message.chars().count() <= 1024));
}

#[test]
fn status_is_stable_when_nothing_changes() {
    // The controller skips the status write when the plan's status equals the input's.
    let mut fx = Fx::expanded(SpecBuilder::new().timeout("1h").build());
    fx.step();
    let p = fx.plan();
    assert_eq!(p.status, fx.status);
}

// ---------------------------------------------------------------------------------------
// Job names
// ---------------------------------------------------------------------------------------

#[test]
fn job_names_are_deterministic_and_distinct() {
    assert_eq!(job_name("m", "", JobPhase::Expand, 1), "m-expand-1");
    assert_eq!(job_name("m", "", JobPhase::Contract, 12), "m-contract-12");
    let long = "a".repeat(200);
    let n = job_name(&long, "", JobPhase::Contract, 3);
    assert_eq!(n, job_name(&long, "", JobPhase::Contract, 3));
    assert!(n.len() <= 52, "{n}");
    assert!(n.ends_with("-contract-3"), "{n}");
    let other = format!("{}b", "a".repeat(199));
    assert_ne!(
        n,
        job_name(&other, "", JobPhase::Contract, 3),
        "same prefix, different names"
    );
    let mut all = std::collections::HashSet::new();
    for name in ["m", long.as_str()] {
        for ph in [JobPhase::Expand, JobPhase::Contract] {
            for a in [1, 2, 10, u32::MAX] {
                let j = job_name(name, "", ph, a);
                assert!(j.len() <= 52, "{j}");
                assert!(all.insert(j));
            }
        }
    }
}

#[test]
fn job_names_at_the_length_boundary() {
    for len in 30..70 {
        let name = "m".repeat(len);
        for ph in [JobPhase::Expand, JobPhase::Contract] {
            let j = job_name(&name, "", ph, 9);
            assert!(j.len() <= 52, "{len}: {j}");
            if len + format!("-{ph}-9").len() <= 52 {
                assert_eq!(j, format!("{name}-{ph}-9"));
            }
        }
    }
    // No double dash where the name is cut.
    let name = format!("{}-{}", "a".repeat(22), "b".repeat(40));
    let j = job_name(&name, "", JobPhase::Expand, 1);
    assert!(!j.contains("--"), "{j}");
}

/// Fixed seeds: the suite is deterministic (set `PROPTEST_CASES` to explore more).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(0x9A5E_6A7E),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn job_name_is_a_short_valid_name(name in "[a-z0-9]([a-z0-9.-]{0,200}[a-z0-9])?", attempt in 1u32..1000) {
        for ph in [JobPhase::Expand, JobPhase::Contract] {
            let j = job_name(&name, "", ph, attempt);
            prop_assert!(j.len() <= 52, "{}", j);
            prop_assert_eq!(&j, &job_name(&name, "", ph, attempt));
            let suffix = format!("-{}-{}", ph.as_str(), attempt);
            prop_assert!(j.ends_with(&suffix));
            prop_assert!(j.chars().next().unwrap().is_ascii_alphanumeric());
            prop_assert!(j.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'));
        }
        prop_assert_ne!(job_name(&name, "", JobPhase::Expand, attempt), job_name(&name, "", JobPhase::Contract, attempt));
        prop_assert_ne!(job_name(&name, "", JobPhase::Expand, attempt), job_name(&name, "", JobPhase::Expand, attempt + 1));
    }
}

// ---------------------------------------------------------------------------------------
// Property tests: a simulated world fed random observations
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Tgt {
    /// The pod template carries `appVersion`.
    new_version: bool,
    /// A pod of an older version exists (running or terminating).
    old_pods: bool,
    /// Every desired replica is updated and available.
    rolled_out: bool,
}

impl Tgt {
    const OLD: Tgt = Tgt {
        new_version: false,
        old_pods: true,
        rolled_out: true,
    };
    const DONE: Tgt = Tgt {
        new_version: true,
        old_pods: false,
        rolled_out: true,
    };
    fn runs_old_code(&self) -> bool {
        !self.new_version || self.old_pods
    }
    fn complete(&self) -> bool {
        !self.runs_old_code() && self.rolled_out
    }
}

#[derive(Clone, Debug)]
enum Ev {
    /// Target `i`'s template moves to `appVersion`; its rollout starts.
    Update(usize),
    /// Target `i` is rolled back to the old version.
    Rollback(usize),
    /// Target `i`'s rollout finishes.
    RolloutDone(usize),
    /// Target `i` loses availability (a stalled rollout, or a dip after it completed).
    Stall(usize),
    /// An old pod of target `i` appears (an old ReplicaSet scaled up by hand).
    OldPod(usize),
    JobSucceeds(JobPhase),
    JobFails(JobPhase),
    /// The executor is killed before its report (OOM, a signal).
    JobDies(JobPhase),
    /// A running Job is deleted by hand.
    JobVanishes(JobPhase),
    Approve(bool),
    /// The `phasegate.dev/backfill-paused` annotation is set (or removed).
    Pause(bool),
    /// A new `retry` annotation value (or none).
    Retry(bool),
    Advance(u32),
    /// While the operator is down, target `i` is rolled back to the old version (old code
    /// runs, its rollout completes) and rolled forward again; then the operator restarts.
    /// Only the kept revisions tell.
    Unseen(usize),
    /// Target `i`'s kept revisions are pruned to its newest (`revisionHistoryLimit`).
    Prune(usize),
    /// Re-plan; with `lost`, the last status write never landed.
    Restart {
        lost: bool,
    },
    /// The kubelet stops (or resumes) delivering stops: a deleted Job's executor keeps
    /// running until it resumes.
    KubeletStall(bool),
    /// The operator is stopped (or back): no plan, no grant, while it is away.
    OperatorAway(bool),
    /// The operator's caches freeze at what the targets look like now (or catch up).
    StaleView(bool),
}

fn job_phase() -> impl Strategy<Value = JobPhase> {
    prop_oneof![
        Just(JobPhase::Expand),
        Just(JobPhase::Contract),
        Just(JobPhase::Backfill)
    ]
}

fn event(lost_writes: bool) -> impl Strategy<Value = Ev> {
    prop_oneof![
        3 => (0usize..3).prop_map(Ev::Update),
        1 => (0usize..3).prop_map(Ev::Rollback),
        4 => (0usize..3).prop_map(Ev::RolloutDone),
        1 => (0usize..3).prop_map(Ev::Stall),
        1 => (0usize..3).prop_map(Ev::OldPod),
        4 => job_phase().prop_map(Ev::JobSucceeds),
        1 => job_phase().prop_map(Ev::JobFails),
        1 => job_phase().prop_map(Ev::JobDies),
        1 => job_phase().prop_map(Ev::JobVanishes),
        1 => any::<bool>().prop_map(Ev::Approve),
        1 => prop::bool::weighted(0.3).prop_map(Ev::Pause),
        1 => prop::bool::weighted(0.85).prop_map(Ev::Retry),
        3 => prop_oneof![1u32..60, 60u32..1500].prop_map(Ev::Advance),
        1 => (0usize..3).prop_map(Ev::Unseen),
        1 => (0usize..3).prop_map(Ev::Prune),
        1 => any::<bool>().prop_map(move |l| Ev::Restart { lost: l && lost_writes }),
        1 => any::<bool>().prop_map(Ev::KubeletStall),
        1 => any::<bool>().prop_map(Ev::OperatorAway),
        1 => any::<bool>().prop_map(Ev::StaleView),
    ]
}

#[derive(Clone, Debug)]
struct Params {
    targets: usize,
    delay: Option<&'static str>,
    timeout: Option<&'static str>,
    manual: bool,
    backfill: bool,
}

fn params() -> impl Strategy<Value = Params> {
    (
        1usize..=3,
        prop_oneof![Just(None), Just(Some("30s")), Just(Some("5m"))],
        prop_oneof![Just(None), Just(Some("3m")), Just(Some("20m"))],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(targets, delay, timeout, manual, backfill)| Params {
            targets,
            delay,
            timeout,
            manual,
            backfill,
        })
}

fn secs(d: &str) -> i64 {
    humantime::parse_duration(d).unwrap().as_secs() as i64
}

struct Sim {
    lost_writes: bool,
    spec: DatabaseMigrationSpec,
    status: DatabaseMigrationStatus,
    prev_status: DatabaseMigrationStatus,
    now: i64,
    approved: bool,
    retry: Option<String>,
    retries: u32,
    jobs: BTreeMap<(u8, u32), JobState>,
    targets: Vec<Tgt>,
    /// When every target last became complete (world truth).
    complete_since: Option<i64>,
    /// (phase, attempt) → whether the status recording that start is persisted.
    started: BTreeMap<(u8, u32), bool>,
    last_write_started: Option<(u8, u32)>,
    /// The planner reported a rollout timeout and the user has not asked for a retry since.
    timed_out: bool,
    /// A persisted status said Succeeded.
    succeeded: bool,
    /// Contract commits that happened while a gate was closed in the world, or before a
    /// backfill had completed with no old code running since it started.
    unsafe_commits: u32,
    /// The backfill-paused annotation.
    paused: bool,
    /// Backfill attempts during which old code ran in the world (their scan may have missed
    /// rows old code wrote).
    tainted: std::collections::BTreeSet<u32>,
    /// World truth: a backfill attempt completed and no old code ran since it started.
    backfilled: bool,
    /// Each target's kept revisions: (number, carries appVersion).
    revisions: Vec<Vec<(i64, bool)>>,
    /// The operator (re)started and has not read the rollout history in this epoch yet.
    history_due: bool,
    /// When old code last ran unseen (`Ev::Unseen`): the soak counts from then at the
    /// earliest, lost status writes or not (the history is not lost with them).
    last_unseen: Option<i64>,
    /// Backfill attempts running when old code ran unseen.
    unseen_tainted: std::collections::BTreeSet<u32>,
    /// World truth, lost writes or not: a backfill attempt that did not run during an unseen
    /// regression succeeded since the last one.
    backfilled_since_unseen: bool,
    /// The kubelet delivers no stop.
    stalled: bool,
    /// Executors still running whose Job was deleted while the kubelet stalled.
    zombies: std::collections::BTreeSet<(u8, u32)>,
    /// The operator is stopped: it neither plans nor grants.
    away: bool,
    /// What the operator's caches show of the targets, frozen; None when current.
    stale: Option<Vec<Tgt>>,
    /// Old code ran while the operator was away or its view stale: a regression it may never
    /// see (the rollout looks complete again by the time it looks). What it then forgets — a
    /// soak to restart, a backfill to rerun — is known only from the workloads' rollout
    /// history. The simulation models that history for rollbacks and roll-forwards while the
    /// operator is away (`Ev::Unseen`, checked by `last_unseen` and
    /// `backfilled_since_unseen` whatever `blind` says); an old pod that comes and goes
    /// (`Ev::OldPod`) leaves no revision behind, so `blind` still relaxes the world-truth
    /// soak and backfill checks for the other events. The gates themselves still hold.
    blind: bool,
    log: Vec<String>,
}

fn key(p: JobPhase) -> u8 {
    match p {
        JobPhase::Expand => 0,
        JobPhase::Contract => 1,
        JobPhase::Backfill => 2,
    }
}

impl Sim {
    fn new(p: &Params, lost_writes: bool) -> Self {
        let names: Vec<String> = (0..p.targets).map(|i| format!("app-{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut b = SpecBuilder::new().targets(&names);
        if let Some(d) = p.delay {
            b = b.delay(d);
        }
        if let Some(t) = p.timeout {
            b = b.timeout(t);
        }
        if p.manual {
            b = b.manual();
        }
        if p.backfill {
            b = b.with(|s| {
                s.backfill = Some(crate::api::BackfillSpec {
                    table: "users".into(),
                    key: "id".into(),
                    sql: "UPDATE users SET b = a WHERE id > $1 AND id <= $2".into(),
                    batch_size: None,
                    max_batch_size: None,
                    target_batch_duration: None,
                    pause: None,
                    lock_timeout: None,
                    max_replication_lag: None,
                })
            });
        }
        Self {
            lost_writes,
            spec: b.build(),
            status: Default::default(),
            prev_status: Default::default(),
            now: 0,
            approved: false,
            retry: None,
            retries: 0,
            jobs: BTreeMap::new(),
            targets: vec![Tgt::OLD; p.targets],
            complete_since: None,
            started: BTreeMap::new(),
            last_write_started: None,
            timed_out: false,
            succeeded: false,
            unsafe_commits: 0,
            paused: false,
            tainted: Default::default(),
            backfilled: false,
            revisions: vec![vec![(1, false)]; p.targets],
            history_due: false,
            last_unseen: None,
            unseen_tainted: Default::default(),
            backfilled_since_unseen: true,
            stalled: false,
            zombies: Default::default(),
            away: false,
            stale: None,
            blind: false,
            log: Vec::new(),
        }
    }

    fn all_complete(&self) -> bool {
        self.targets.iter().all(Tgt::complete)
    }

    /// A new revision of target `i`'s template.
    fn roll(&mut self, i: usize, new_version: bool) {
        let revs = &mut self.revisions[i];
        let next = revs.iter().map(|r| r.0).max().unwrap_or(0) + 1;
        revs.push((next, new_version));
    }

    /// The kept revisions, as the controller reads them.
    fn history(&self) -> Vec<regression::TargetHistory> {
        self.revisions
            .iter()
            .enumerate()
            .map(|(i, revs)| regression::TargetHistory {
                kind: TargetKind::Deployment,
                name: format!("app-{i}"),
                uid: "u".into(),
                revisions: revs
                    .iter()
                    .map(|&(n, new)| regression::Revision {
                        name: format!("app-{i}-{n}"),
                        number: n,
                        version: Some(if new { "2.4.0" } else { "2.3.0" }.into()),
                        earlier: Vec::new(),
                    })
                    .collect(),
            })
            .collect()
    }

    fn old_code_runs(&self) -> bool {
        self.targets.iter().any(Tgt::runs_old_code)
    }

    /// Old code runs now: what a backfill had done may be incomplete again.
    fn taint_backfills(&mut self) {
        if self.old_code_runs() {
            self.backfilled = false;
            let running: Vec<u32> = self
                .jobs
                .iter()
                .filter(|((k, _), s)| {
                    *k == key(JobPhase::Backfill) && **s == JobState::Running(None)
                })
                .map(|((_, a), _)| *a)
                .collect();
            self.tainted.extend(running);
        }
    }

    /// A gate is closed in the world: old code can run, or a needed approval is missing.
    fn gate_closed(&self) -> bool {
        self.targets.iter().any(Tgt::runs_old_code)
            || (self.spec.contract.approval == Approval::Manual && !self.approved)
    }

    fn observed_targets(&self) -> Vec<TargetStatus> {
        self.view(&self.targets)
    }

    fn view(&self, targets: &[Tgt]) -> Vec<TargetStatus> {
        targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut s = target(&format!("app-{i}"), t.complete());
                s.version = Some(if t.new_version { "2.4.0" } else { "2.3.0" }.into());
                s.old_pods = i32::from(t.old_pods);
                s
            })
            .collect()
    }

    fn job(&self, p: JobPhase, rec: &Option<PhaseStatus>) -> JobState {
        let attempt = rec.as_ref().map_or(1, |r| r.attempts.max(1));
        self.jobs
            .get(&(key(p), attempt))
            .cloned()
            .unwrap_or_default()
    }

    fn any_job(&self, p: JobPhase, f: impl Fn(u32, &JobState) -> bool) -> bool {
        self.jobs.iter().any(|((k, a), s)| *k == key(p) && f(*a, s))
    }

    fn latest_running(&self, p: JobPhase) -> Option<(u8, u32)> {
        self.jobs
            .iter()
            .filter(|((k, _), s)| *k == key(p) && **s == JobState::Running(None))
            .map(|(k, _)| *k)
            .next_back()
    }

    fn apply(&mut self, ev: &Ev) {
        let n = self.targets.len();
        match *ev {
            Ev::Update(i) => {
                self.roll(i % n, true);
                self.targets[i % n] = Tgt {
                    new_version: true,
                    old_pods: true,
                    rolled_out: false,
                }
            }
            Ev::Rollback(i) => {
                self.roll(i % n, false);
                self.targets[i % n] = Tgt {
                    new_version: false,
                    old_pods: true,
                    rolled_out: false,
                }
            }
            Ev::RolloutDone(i) => {
                let t = &mut self.targets[i % n];
                t.rolled_out = true;
                t.old_pods = !t.new_version;
            }
            Ev::Stall(i) => self.targets[i % n].rolled_out = false,
            Ev::OldPod(i) => {
                let t = &mut self.targets[i % n];
                t.old_pods = true;
                t.rolled_out = false;
            }
            Ev::JobSucceeds(JobPhase::Contract) => self.contract_commits(),
            Ev::JobSucceeds(p) => {
                if let Some(k) = self.latest_running(p) {
                    // The executor commits now: the world must still let it.
                    if p == JobPhase::Contract
                        && (self.gate_closed()
                            || (self.spec.backfill.is_some()
                                && !self.backfilled
                                && !self.lost_writes))
                    {
                        self.unsafe_commits += 1;
                    }
                    if p == JobPhase::Backfill {
                        self.backfilled = !self.tainted.contains(&k.1) && !self.old_code_runs();
                        if !self.unseen_tainted.contains(&k.1) {
                            self.backfilled_since_unseen = true;
                        }
                    }
                    self.jobs
                        .insert(k, JobState::Succeeded(Some(format!("{p} ok"))));
                }
            }
            Ev::JobFails(p) => {
                if let Some(k) = self.latest_running(p) {
                    self.jobs.insert(k, JobState::Failed(format!("{p} failed")));
                }
            }
            Ev::JobDies(p) => {
                if let Some(k) = self.latest_running(p) {
                    self.jobs.insert(k, JobState::Died(format!("{p} killed")));
                }
            }
            Ev::JobVanishes(p) => {
                if let Some(k) = self.latest_running(p) {
                    self.jobs.remove(&k);
                }
            }
            Ev::Approve(a) => self.approved = a,
            Ev::Pause(p) => self.paused = p,
            Ev::Retry(set) => {
                if set {
                    self.retries += 1;
                    self.retry = Some(format!("r{}", self.retries));
                    self.timed_out = false;
                } else {
                    self.retry = None;
                }
            }
            Ev::Advance(s) => self.now += i64::from(s),
            Ev::Unseen(i) => {
                // Old code ran: what a backfill did meanwhile may have missed its rows, and
                // the rollout completed again only now.
                self.roll(i % n, false);
                self.roll(i % n, true);
                self.targets[i % n] = Tgt::OLD;
                self.complete_since = None;
                self.taint_backfills();
                self.targets[i % n] = Tgt::DONE;
                self.history_due = true;
                self.last_unseen = Some(self.now);
                self.backfilled_since_unseen = false;
                let running: Vec<u32> = self
                    .jobs
                    .iter()
                    .filter(|((k, _), s)| {
                        *k == key(JobPhase::Backfill) && **s == JobState::Running(None)
                    })
                    .map(|((_, a), _)| *a)
                    .collect();
                self.unseen_tainted.extend(running);
            }
            Ev::Prune(i) => {
                let revs = &mut self.revisions[i % n];
                let newest = revs.iter().copied().max_by_key(|r| r.0);
                revs.retain(|r| Some(*r) == newest);
            }
            Ev::KubeletStall(stalled) => {
                self.stalled = stalled;
                if !stalled {
                    // SIGTERM at last: each rolls back.
                    self.zombies.clear();
                }
            }
            Ev::OperatorAway(away) => {
                // Back: a new process, which reads the rollout history once per epoch.
                if self.away && !away {
                    self.history_due = true;
                }
                self.away = away;
            }
            Ev::StaleView(stale) => self.stale = stale.then(|| self.targets.clone()),
            Ev::Restart { lost } => {
                self.history_due = true;
                if lost {
                    self.status = self.prev_status.clone();
                    if let Some(k) = self.last_write_started.take() {
                        self.started.insert(k, false);
                    }
                    self.succeeded = false;
                }
            }
        }
        // The soak counts from the first complete rollout; a dip in availability does not
        // restart it, old code running again does.
        if self.targets.iter().any(Tgt::runs_old_code) {
            self.complete_since = None;
        } else if self.all_complete() && self.complete_since.is_none() {
            self.complete_since = Some(self.now);
        }
        self.taint_backfills();
        if (self.away || self.stale.is_some()) && self.old_code_runs() {
            self.blind = true;
        }
    }

    /// A contract executor reaches COMMIT: the running attempt, or one whose Job was deleted
    /// while the kubelet stalled. It commits only with a grant: the operator is there and the
    /// verdict on a fresh view of the world is Granted for that very attempt.
    fn contract_commits(&mut self) {
        let c = key(JobPhase::Contract);
        let Some(k) = self
            .latest_running(JobPhase::Contract)
            .or_else(|| self.zombies.iter().rfind(|(p, _)| *p == c).copied())
        else {
            return;
        };
        if self.away {
            return;
        }
        let targets = self.observed_targets();
        let input = Input {
            now: ts(self.now),
            name: NAME,
            uid: "",
            generation: 1,
            spec: &self.spec,
            status: &self.status,
            approved: self.approved,
            retry: self.retry.as_deref(),
            expand_job: JobState::Absent,
            contract_job: JobState::Running(None),
            backfill_job: JobState::Absent,
            backfill_paused: self.paused,
            targets,
            job_policy: &POLICY,
            waits_for: Vec::new(),
            expand_seat: None,
            expand_batch: Vec::new(),
            expand_tenants: None,
            contract_tenants: None,
            backfill_tenants: None,
            unconfirmed_stop: None,
            // The endpoint reads the rollout history with every grant.
            history: Some(self.history()),
        };
        if super::grant::verdict(&input, k.1).verdict != crate::protocol::grant::Verdict::Granted {
            return;
        }
        // A rollback and roll-forward while the operator was away: its grant reads the
        // rollout history, lost status writes or not.
        if (self.spec.backfill.is_some() && !self.backfilled_since_unseen)
            || self
                .spec
                .contract
                .delay
                .as_deref()
                .zip(self.last_unseen)
                .is_some_and(|(d, u)| self.now - u < secs(d))
        {
            self.unsafe_commits += 1;
        }
        if self.gate_closed()
            || (self.spec.backfill.is_some()
                && !self.backfilled
                && !self.lost_writes
                && !self.blind)
        {
            self.unsafe_commits += 1;
        }
        self.zombies.remove(&k);
        self.jobs
            .insert(k, JobState::Succeeded(Some("contract ok".into())));
    }

    /// Plan from the current status and world, check the invariants, apply the plan.
    fn step(&mut self) -> Result<(), TestCaseError> {
        if self.away {
            return Ok(());
        }
        let targets = match &self.stale {
            Some(frozen) => self.view(frozen),
            None => self.observed_targets(),
        };
        let unconfirmed = self
            .zombies
            .contains(&(
                key(JobPhase::Contract),
                self.status.contract.as_ref().map_or(0, |c| c.attempts),
            ))
            .then(|| "pod x is still Running".to_string());
        let mut input = Input {
            now: ts(self.now),
            name: NAME,
            uid: "",
            generation: 1,
            spec: &self.spec,
            status: &self.status,
            approved: self.approved,
            retry: self.retry.as_deref(),
            expand_job: self.job(JobPhase::Expand, &self.status.expand),
            contract_job: self.job(JobPhase::Contract, &self.status.contract),
            backfill_job: self.job(
                JobPhase::Backfill,
                &self.status.backfill.as_ref().map(|b| b.run.clone()),
            ),
            backfill_paused: self.paused,
            targets,
            job_policy: &POLICY,
            waits_for: Vec::new(),
            expand_seat: None,
            expand_batch: Vec::new(),
            expand_tenants: None,
            contract_tenants: None,
            backfill_tenants: None,
            unconfirmed_stop: unconfirmed,
            history: None,
        };
        let mut plan = plan(&input);
        // As the controller does: contract and the backfill start only on a quorum read.
        let gated_start = matches!(
            plan.action,
            Action::StartJob {
                phase: JobPhase::Contract | JobPhase::Backfill,
                ..
            }
        );
        if gated_start {
            input.targets = self.observed_targets();
            plan = super::plan(&input);
        }
        // The controller reads the rollout history where the epoch matters: before a
        // backfill or contract starts, when an epoch has revisions to record, and once per
        // epoch after it (re)started.
        if plan.status.rollout_completed_at.is_some()
            && (gated_start || self.history_due || regression::unrecorded(&plan.status))
        {
            input.history = Some(self.history());
            plan = super::plan(&input);
            if plan.status.rollout_completed_at == input.status.rollout_completed_at
                && !regression::unrecorded(input.status)
            {
                self.history_due = false;
            }
        }
        self.log.push(format!(
            "t={} phase={:?} action={:?} expand_job={:?} contract_job={:?}",
            self.now, plan.status.phase, plan.action, input.expand_job, input.contract_job
        ));
        self.log.push(format!(
            "   backfill_job={:?} paused={} backfilled={} backfill={:?}",
            input.backfill_job,
            self.paused,
            self.backfilled,
            plan.status.backfill.as_ref().map(|b| (
                &b.run.attempts,
                &b.run.succeeded,
                &b.run.reason,
                &b.epoch
            )),
        ));
        self.check(&input, &plan)?;

        let mut started = None;
        match plan.action {
            Action::StartJob { phase, attempt } => {
                self.jobs
                    .entry((key(phase), attempt))
                    .or_insert(JobState::Running(None));
                started = Some((key(phase), attempt));
                if phase == JobPhase::Backfill && self.old_code_runs() {
                    self.tainted.insert(attempt);
                }
            }
            // The Job is deleted; its executor rolls back (a Job that already finished keeps
            // its outcome: deleting it changes nothing in the database).
            Action::StopJob { phase, attempt } => {
                if self.jobs.get(&(key(phase), attempt)) == Some(&JobState::Running(None)) {
                    self.jobs.remove(&(key(phase), attempt));
                    if self.stalled {
                        self.zombies.insert((key(phase), attempt));
                    }
                }
            }
            Action::None => {}
        }
        // The fence: once a plan has seen a closed gate, no contract attempt is left running.
        if self.gate_closed() && self.stale.is_none() {
            prop_assert!(
                self.latest_running(JobPhase::Contract).is_none(),
                "a contract attempt still runs after the plan saw a closed gate"
            );
        }
        // The backfill's fence: no backfill attempt runs while old code can.
        if self.old_code_runs() && self.stale.is_none() {
            prop_assert!(
                self.latest_running(JobPhase::Backfill).is_none(),
                "a backfill attempt still runs after the plan saw old code"
            );
        }
        if self.paused {
            prop_assert!(
                self.latest_running(JobPhase::Backfill).is_none(),
                "a backfill attempt still runs after the plan saw the pause"
            );
        }
        self.prev_status = std::mem::replace(&mut self.status, plan.status.clone());
        self.last_write_started = started;
        if let Some(k) = started {
            self.started.insert(k, true);
        }
        if plan.status.phase == Some(Phase::Failed)
            && failure_reason(&plan.status) == Some(reason::ROLLOUT_TIMEOUT)
        {
            self.timed_out = true;
        }
        self.succeeded = plan.status.phase == Some(Phase::Succeeded);
        Ok(())
    }

    fn check(&self, input: &Input<'_>, plan: &Plan) -> Result<(), TestCaseError> {
        let expand_done =
            self.any_job(JobPhase::Expand, |_, s| matches!(s, JobState::Succeeded(_)));
        let contract_done = self.any_job(JobPhase::Contract, |_, s| {
            matches!(s, JobState::Succeeded(_))
        });
        // What GitOps tools read: Stalled (kstatus Failed, which holds back everything that
        // depends on the migration) only while the schema the app needs is missing; Ready
        // (kstatus InProgress while False) exactly when expand is applied.
        let expanded = plan.status.expand.as_ref().is_some_and(|e| e.succeeded);
        let failed = plan.status.phase == Some(Phase::Failed);
        prop_assert_eq!(
            conditions::is_true(&plan.status.conditions, STALLED),
            failed && !expanded,
            "Stalled must be True exactly for a failure before expand"
        );
        prop_assert_eq!(
            conditions::is_true(&plan.status.conditions, READY),
            expanded,
            "Ready must be True exactly when expand is applied"
        );
        match plan.action {
            Action::StartJob {
                phase: JobPhase::Contract,
                attempt,
            } => {
                // (a) every gate open in this very input: only new code runs, and the
                // rollout completed (availability may have dipped since).
                prop_assert!(
                    !input.targets.is_empty()
                        && input.targets.iter().all(|t| rollout::runs_only_new_code(
                            t,
                            &version::VersionRule::semver(&self.spec.app_version)
                        )),
                    "contract started while old code can run"
                );
                prop_assert!(
                    plan.status.rollout_completed_at.is_some(),
                    "contract started before the rollout ever completed"
                );
                prop_assert!(!self.gate_closed(), "contract started with a gate closed");
                prop_assert!(expand_done, "contract started before expand succeeded");
                // The backfill's invariant: contract never starts before the backfill
                // succeeded in the current rollout epoch (world truth, and as status says).
                // A rollback and roll-forward while the operator was away: found in the
                // rollout history whatever status writes were lost.
                if self.spec.backfill.is_some() {
                    prop_assert!(
                        self.backfilled_since_unseen,
                        "contract started before a backfill ran again after an unseen regression"
                    );
                }
                if let (Some(d), Some(u)) = (self.spec.contract.delay.as_deref(), self.last_unseen)
                {
                    prop_assert!(
                        self.now - u >= secs(d),
                        "contract started {}s after an unseen regression",
                        self.now - u
                    );
                }
                if self.spec.backfill.is_some() {
                    // World truth, unless a status write was lost: then the planner may
                    // have forgotten a regression it saw (as it may forget the soak).
                    prop_assert!(
                        self.backfilled || self.lost_writes || self.blind,
                        "contract started before a backfill completed with no old code since"
                    );
                    prop_assert!(
                        plan.status
                            .backfill
                            .as_ref()
                            .is_some_and(|b| b.run.succeeded
                                && b.epoch.is_some()
                                && b.epoch == plan.status.rollout_completed_at),
                        "contract started before the backfill succeeded in this rollout epoch"
                    );
                }
                if self.spec.contract.approval == Approval::Manual {
                    prop_assert!(input.approved, "contract started without approval");
                }
                if let Some(d) = self.spec.contract.delay.as_deref() {
                    let since = input
                        .status
                        .rollout_completed_at
                        .as_ref()
                        .map(|t| t.0.as_second() - T0);
                    prop_assert!(
                        since.is_some_and(|s| self.now - s >= secs(d)),
                        "contract started inside the soak"
                    );
                    // Against the world's truth, retries and replacement attempts included.
                    if !self.lost_writes && !self.blind {
                        let Some(truth) = self.complete_since else {
                            return Err(TestCaseError::fail(
                                "contract started before the rollout completed (world truth)",
                            ));
                        };
                        prop_assert!(
                            self.now - truth >= secs(d),
                            "contract started {}s after the rollout completed",
                            self.now - truth
                        );
                    }
                }
                if !self.lost_writes {
                    prop_assert!(
                        !self.timed_out,
                        "contract started after a rollout timeout without a retry"
                    );
                }
                prop_assert!(
                    !self.any_job(JobPhase::Contract, |a, s| a != attempt
                        && matches!(s, JobState::Running(None) | JobState::Succeeded(_))),
                    "contract started while another contract Job runs or succeeded"
                );
                self.check_attempt(JobPhase::Contract, attempt)?;
            }
            Action::StartJob {
                phase: JobPhase::Expand,
                attempt,
            } => {
                // (b) never once succeeded, never beside a running or succeeded attempt.
                prop_assert!(
                    !input.status.expand.as_ref().is_some_and(|e| e.succeeded),
                    "expand re-run after recorded success"
                );
                prop_assert!(
                    !self.any_job(JobPhase::Expand, |a, s| a != attempt
                        && matches!(s, JobState::Running(None) | JobState::Succeeded(_))),
                    "expand started while another expand Job runs or succeeded"
                );
                prop_assert!(
                    !matches!(
                        input.expand_job,
                        JobState::Running(None) | JobState::Succeeded(_)
                    ),
                    "expand started while the current attempt runs or succeeded"
                );
                self.check_attempt(JobPhase::Expand, attempt)?;
            }
            Action::StartJob {
                phase: JobPhase::Backfill,
                attempt,
            } => {
                prop_assert!(
                    self.spec.backfill.is_some(),
                    "backfill without spec.backfill"
                );
                prop_assert!(expand_done, "backfill started before expand succeeded");
                prop_assert!(
                    !input.targets.is_empty()
                        && input.targets.iter().all(|t| rollout::runs_only_new_code(
                            t,
                            &version::VersionRule::semver(&self.spec.app_version)
                        ))
                        && plan.status.rollout_completed_at.is_some(),
                    "backfill started while old code can run"
                );
                prop_assert!(!input.backfill_paused, "backfill started while paused");
                prop_assert!(
                    !self.any_job(JobPhase::Backfill, |a, s| a != attempt
                        && matches!(s, JobState::Running(None))),
                    "backfill started while another backfill Job runs"
                );
                prop_assert!(
                    !self.any_job(JobPhase::Contract, |_, s| matches!(
                        s,
                        JobState::Running(None) | JobState::Succeeded(_)
                    )),
                    "backfill started while contract runs or after it succeeded"
                );
                self.check_attempt(JobPhase::Backfill, attempt)?;
            }
            Action::StopJob {
                phase: JobPhase::Backfill,
                attempt,
            } => {
                let rec = input.status.backfill.as_ref();
                prop_assert!(
                    self.old_code_runs()
                        || input.backfill_paused
                        || rec.is_some_and(|b| b.epoch != plan.status.rollout_completed_at
                            || matches!(
                                b.run.reason.as_deref(),
                                Some(reason::GATE_CLOSED | reason::BACKFILL_PAUSED)
                            )),
                    "stopped a backfill attempt for no reason"
                );
                prop_assert_eq!(
                    Some(attempt),
                    rec.map(|b| b.run.attempts.max(1)).or(Some(1))
                );
            }
            Action::StopJob { phase, attempt } => {
                prop_assert_eq!(phase, JobPhase::Contract, "only contract is fenced");
                prop_assert!(
                    self.gate_closed()
                        || input
                            .status
                            .contract
                            .as_ref()
                            .is_some_and(|c| c.reason.as_deref() == Some(reason::GATE_CLOSED))
                        // The rollout history shows old code rolled out since the epoch began
                        // (or can no longer rule it out).
                        || (input.history.is_some()
                            && plan.status.last_regression != input.status.last_regression),
                    "stopped an attempt with every gate open"
                );
                prop_assert_eq!(
                    Some(attempt),
                    input
                        .status
                        .contract
                        .as_ref()
                        .map(|c| c.attempts.max(1))
                        .or(Some(1))
                );
            }
            Action::None => {}
        }
        // The invariant the fence exists for.
        prop_assert_eq!(
            self.unsafe_commits,
            0,
            "contract committed while a gate was closed"
        );
        // (d) Succeeded only after contract's Job succeeded (and expand's).
        if plan.status.phase == Some(Phase::Succeeded) {
            prop_assert!(
                contract_done && expand_done,
                "Succeeded without both Jobs succeeded"
            );
        }
        if conditions::is_true(&plan.status.conditions, READY) {
            prop_assert!(expand_done, "Ready before expand succeeded");
        }
        if !self.lost_writes && self.succeeded {
            prop_assert_eq!(
                plan.status.phase,
                Some(Phase::Succeeded),
                "Succeeded is terminal"
            );
        }
        // Transition exactly when the phase changes.
        prop_assert_eq!(
            plan.transition.is_some(),
            input.status.phase != plan.status.phase
        );
        Ok(())
    }

    /// (c) attempt numbers never repeat (unless the status recording the start was lost: then
    /// the same attempt is re-issued and adopted) and never skip.
    fn check_attempt(&self, p: JobPhase, attempt: u32) -> Result<(), TestCaseError> {
        let max = self
            .started
            .keys()
            .filter(|(k, _)| *k == key(p))
            .map(|(_, a)| *a)
            .max()
            .unwrap_or(0);
        match self.started.get(&(key(p), attempt)) {
            Some(true) => prop_assert!(false, "{} attempt {} started twice", p, attempt),
            Some(false) => {}
            None => prop_assert_eq!(attempt, max + 1, "{} attempt numbers skip", p),
        }
        Ok(())
    }

    /// Make the world favourable and keep retrying: the migration must finish.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        self.approved = true;
        self.apply(&Ev::KubeletStall(false));
        self.apply(&Ev::OperatorAway(false));
        self.apply(&Ev::StaleView(false));
        for i in 0..self.targets.len() {
            // A new template is a new revision.
            if self.revisions[i]
                .iter()
                .max_by_key(|r| r.0)
                .is_some_and(|r| !r.1)
            {
                self.roll(i, true);
            }
            self.targets[i] = Tgt::DONE;
        }
        self.apply(&Ev::Advance(0));
        for _ in 0..12 {
            if self.status.phase == Some(Phase::Failed) {
                self.apply(&Ev::Retry(true));
            }
            self.apply(&Ev::Advance(3600));
            self.step()?;
            self.paused = false;
            for p in [JobPhase::Expand, JobPhase::Backfill, JobPhase::Contract] {
                self.apply(&Ev::JobSucceeds(p));
            }
            self.step()?;
        }
        prop_assert_eq!(
            self.status.phase,
            Some(Phase::Succeeded),
            "stuck: {:?}",
            self.status.conditions
        );
        Ok(())
    }
}

fn simulate(
    p: &Params,
    events: &[Ev],
    lost_writes: bool,
    drain: bool,
) -> Result<(), TestCaseError> {
    let mut sim = Sim::new(p, lost_writes);
    sim.step()?;
    for ev in events {
        sim.apply(ev);
        if let Err(e) = sim.step() {
            return Err(TestCaseError::fail(format!(
                "{e}\nlast steps:\n{}",
                sim.log
                    .iter()
                    .rev()
                    .take(8)
                    .rev()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            )));
        }
    }
    if drain {
        sim.drain()?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn gates_hold_under_random_observations(p in params(), events in prop::collection::vec(event(false), 0..80)) {
        simulate(&p, &events, false, false)?;
    }

    #[test]
    fn gates_hold_with_lost_status_writes(p in params(), events in prop::collection::vec(event(true), 0..80)) {
        simulate(&p, &events, true, false)?;
    }

    #[test]
    fn a_favourable_world_and_a_retry_always_finish(p in params(), events in prop::collection::vec(event(false), 0..60)) {
        simulate(&p, &events, false, true)?;
    }
}

proptest! {
    // The fence's invariant over many interleavings: no contract commit while old code can
    // run or a needed approval is missing; every running attempt stopped once a gate closes.
    #![proptest_config(config(10_000))]

    #[test]
    fn contract_never_commits_while_a_gate_is_closed(p in params(), events in prop::collection::vec(event(true), 0..60)) {
        simulate(&p, &events, true, false)?;
    }
}

#[test]
fn simulator_reaches_every_phase() {
    // The random walks above are only meaningful if they get past the gates; one scripted walk
    // through the simulator shows the plumbing works.
    let p = Params {
        targets: 2,
        delay: Some("30s"),
        timeout: None,
        manual: true,
        backfill: false,
    };
    let mut sim = Sim::new(&p, false);
    sim.step().unwrap();
    let mut phases = vec![sim.status.phase];
    for ev in [
        Ev::JobSucceeds(JobPhase::Expand),
        Ev::Update(0),
        Ev::Update(1),
        Ev::RolloutDone(0),
        Ev::RolloutDone(1),
        Ev::Advance(30),
        Ev::Approve(true),
        Ev::JobFails(JobPhase::Contract),
        Ev::Retry(true),
        Ev::JobSucceeds(JobPhase::Contract),
    ] {
        sim.apply(&ev);
        sim.step().unwrap();
        phases.push(sim.status.phase);
    }
    phases.dedup();
    use Phase::*;
    let want = [
        Expanding,
        AwaitingRollout,
        Soaking,
        AwaitingApproval,
        Contracting,
        Failed,
        Contracting,
        Succeeded,
    ];
    assert_eq!(phases, want.map(Some).to_vec());
}

// ---- SQL lint policy: refused before any Job, overrides and warnings recorded ----

fn expand_sql(sql: &str) -> SpecBuilder {
    let sql = sql.to_string();
    SpecBuilder::new().with(move |s| {
        s.expand = PhaseSpec {
            sql: Some(sql),
            job: None,
        }
    })
}

#[test]
fn backward_incompatible_expand_is_refused_before_any_job() {
    let fx = Fx::new(
        expand_sql(
            "ALTER TABLE users ADD COLUMN a int;\nALTER TABLE users DROP COLUMN legacy_flag;",
        )
        .build(),
    );
    let p = fx.plan();
    assert_eq!(p.action, Action::None, "no Job for refused SQL");
    assert_eq!(phase(&p), Phase::Failed);
    assert_eq!(failure_reason(&p.status), Some(reason::SQL_REFUSED));
    let msg = &cond(&p.status, STALLED).message;
    for part in [
        "spec.expand.sql",
        "line 2",
        "[drop-column]",
        "DROP COLUMN legacy_flag",
        "Fix:",
    ] {
        assert!(msg.contains(part), "{part:?} in {msg}");
    }
    let t = p.transition.expect("an Event");
    assert!(t.warning && t.reason == reason::SQL_REFUSED);
}

#[test]
fn unparseable_sql_is_refused_with_its_line() {
    let fx = Fx::new(
        expand_sql("ALTER TABLE users ADD COLUMN a int;\nALTER TABLE users ADD COLUMN;").build(),
    );
    let p = fx.plan();
    assert_eq!(p.action, Action::None);
    assert_eq!(failure_reason(&p.status), Some(reason::SQL_REFUSED));
    let msg = &cond(&p.status, STALLED).message;
    assert!(
        msg.contains("syntax-error") && msg.contains("line 2"),
        "{msg}"
    );
}

#[test]
fn explicit_override_lets_the_expert_proceed_and_is_recorded_once() {
    let spec = expand_sql("ALTER TABLE users DROP COLUMN legacy_flag;")
        .with(|s| s.safety.allow = vec!["drop-column".into()])
        .build();
    let mut fx = Fx::new(spec);
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Expand, 1));
    let overrides = p
        .status
        .lint
        .as_ref()
        .map(|l| l.overrides.clone())
        .unwrap_or_default();
    assert_eq!(overrides.len(), 1);
    assert!(overrides[0].contains("[drop-column]"));
    assert_eq!(p.notices.len(), 1);
    assert_eq!(p.notices[0].reason, reason::LINT_OVERRIDE);
    assert!(
        fx.step().notices.is_empty(),
        "an override is announced once"
    );
}

#[test]
fn lock_dangerous_statements_warn_or_are_refused_when_strict() {
    let sql = "CREATE INDEX users_email ON users (email);";
    let mut fx = Fx::new(expand_sql(sql).build());
    let p = fx.step();
    assert_eq!(
        p.action,
        start(JobPhase::Expand, 1),
        "a warning does not stop expand"
    );
    let warnings = p
        .status
        .lint
        .as_ref()
        .map(|l| l.warnings.clone())
        .unwrap_or_default();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("create-index-non-concurrently")),
        "{warnings:?}"
    );
    assert_eq!(
        p.notices.first().map(|n| n.reason.as_str()),
        Some(reason::LINT_WARNING)
    );

    let strict = Fx::new(expand_sql(sql).with(|s| s.safety.strict = true).build()).plan();
    assert_eq!(strict.action, Action::None);
    assert_eq!(failure_reason(&strict.status), Some(reason::SQL_REFUSED));
}

#[test]
fn contract_accepts_drops_but_lints_syntax_before_expand_runs() {
    // DROP COLUMN belongs in contract.
    let p = Fx::new(SpecBuilder::new().build()).plan();
    assert_eq!(p.action, start(JobPhase::Expand, 1));
    // Broken contract SQL is refused up front, not after expand has run.
    let spec = SpecBuilder::new()
        .with(|s| s.contract.sql = Some("ALTER TABLE users DROP COLUMN;".into()))
        .build();
    let p = Fx::new(spec).plan();
    assert_eq!(p.action, Action::None);
    assert!(cond(&p.status, STALLED)
        .message
        .contains("spec.contract.sql"));
}

#[test]
fn a_composite_backfill_key_is_an_invalid_spec_before_expand() {
    let spec = SpecBuilder::new()
        .with(|s| {
            s.backfill = Some(crate::api::BackfillSpec {
                table: "order_items".into(),
                key: "order_id, line".into(),
                sql: "UPDATE order_items SET b = a WHERE order_id > $1 AND order_id <= $2".into(),
                batch_size: None,
                max_batch_size: None,
                target_batch_duration: None,
                pause: None,
                lock_timeout: None,
                max_replication_lag: None,
            })
        })
        .build();
    let p = Fx::new(spec).plan();
    assert_eq!(failure_reason(&p.status), Some(reason::INVALID_SPEC));
    let msg = &cond(&p.status, STALLED).message;
    assert!(
        msg.contains("spec.backfill.key") && msg.contains("composite"),
        "{msg}"
    );
}

#[test]
fn unknown_override_rule_is_an_invalid_spec() {
    let spec = SpecBuilder::new()
        .with(|s| s.safety.allow = vec!["drop-everything".into()])
        .build();
    let p = Fx::new(spec).plan();
    assert_eq!(failure_reason(&p.status), Some(reason::INVALID_SPEC));
    assert!(cond(&p.status, STALLED)
        .message
        .contains("spec.safety.allow"));
}

#[test]
fn fixing_a_refused_spec_resumes() {
    let mut fx = Fx::new(expand_sql("ALTER TABLE users DROP COLUMN legacy_flag;").build());
    assert_eq!(phase(&fx.step()), Phase::Failed);
    fx.spec.safety.allow = vec!["drop-column".into()];
    fx.generation = 2;
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Expand, 1));
    assert_eq!(cond(&p.status, STALLED).status, "False");
}

#[test]
fn a_stuck_executor_pod_is_explained_while_expanding() {
    let mut fx = Fx::new(SpecBuilder::new().build());
    fx.step();
    fx.expand_job = JobState::Running(Some(Holdup::Stuck(
        "CreateContainerConfigError: secret \"shop-db\" not found".into(),
    )));
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Expanding);
    assert!(is_true(&p.status, RECONCILING));
    let msg = &cond(&p.status, RECONCILING).message;
    assert!(msg.contains("secret \"shop-db\" not found"), "{msg}");
}

#[test]
fn a_rejected_job_fails_the_phase_and_stays_failed_until_retry() {
    let mut fx = Fx::new(SpecBuilder::new().build());
    let p = fx.plan();
    assert_eq!(p.action, start(JobPhase::Expand, 1));
    let p = job_refused(
        p,
        JobPhase::Expand,
        JobRefusal::Rejected,
        "spec.template.spec.containers[0].name: Invalid value",
        ts(0),
        1,
    );
    assert_eq!(phase(&p), Phase::Failed);
    assert_eq!(p.action, Action::None);
    assert_eq!(failure_reason(&p.status), Some(reason::JOB_REJECTED));
    assert!(cond(&p.status, STALLED).message.contains("Invalid value"));
    fx.status = p.status;
    // The Job never existed: the recorded failure keeps it Failed, without a new Job, and
    // keeps saying why.
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Failed);
    assert_eq!(p.action, Action::None);
    assert_eq!(failure_reason(&p.status), Some(reason::JOB_REJECTED));
    assert!(p.transition.is_none());
    fx.retry("1");
    assert_eq!(fx.step().action, start(JobPhase::Expand, 2));
}

// ---------------------------------------------------------------------------------------
// The contract fence
// ---------------------------------------------------------------------------------------

fn stop(attempt: u32) -> Action {
    Action::StopJob {
        phase: JobPhase::Contract,
        attempt,
    }
}

#[test]
fn a_rollback_while_contract_runs_stops_the_attempt() {
    let mut fx = Fx::contracting(SpecBuilder::new().build());
    assert_eq!(phase(&fx.step()), Phase::Contracting);
    fx.now += 5;
    fx.complete(false); // rolled back: old version in the template, old pods
    let p = fx.step();
    assert_eq!(p.action, stop(1));
    assert_eq!(phase(&p), Phase::AwaitingRollout);
    let rec = p.status.contract.clone().unwrap();
    assert_eq!(rec.reason.as_deref(), Some(reason::GATE_CLOSED));
    assert!(rec.finished_at.is_some() && !rec.succeeded);
    assert!(
        rec.message.unwrap().contains("runs version 2.3.0"),
        "says which gate closed"
    );
    let t = p.transition.expect("an Event");
    assert!(t.warning);
    assert_eq!(t.reason, reason::GATE_CLOSED);
    assert!(p.status.rollout_completed_at.is_none(), "the soak restarts");
    assert!(!is_true(&p.status, STALLED), "a stop is no failure");

    // The Job is gone; nothing starts while old code runs.
    fx.contract_job = JobState::Absent;
    let p = fx.step();
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::AwaitingRollout, Action::None)
    );
    assert!(p.transition.is_none());
    // Rolled forward: the next attempt, without a retry annotation.
    fx.complete(true);
    assert_eq!(fx.step().action, start(JobPhase::Contract, 2));
}

#[test]
fn a_stopped_attempt_whose_job_still_exists_is_stopped_again_never_resumed() {
    let mut fx = Fx::contracting(SpecBuilder::new().build());
    fx.step();
    fx.complete(false);
    assert_eq!(fx.step().action, stop(1));
    // The deletion has not landed yet and the app is already rolled forward again.
    fx.complete(true);
    let p = fx.step();
    assert_eq!(p.action, stop(1), "never resumes a stopped attempt");
    fx.contract_job = JobState::Absent;
    assert_eq!(fx.step().action, start(JobPhase::Contract, 2));
}

#[test]
fn a_stopped_attempt_that_had_committed_is_a_success() {
    let mut fx = Fx::contracting(SpecBuilder::new().build());
    fx.step();
    fx.complete(false);
    assert_eq!(fx.step().action, stop(1));
    // The executor committed just before the SIGTERM: the Job completed. Report the truth.
    fx.contract_job = JobState::Succeeded(Some("applied".into()));
    assert_eq!(phase(&fx.step()), Phase::Succeeded);
}

#[test]
fn a_withdrawn_approval_stops_contract() {
    let mut fx = Fx::contracting(SpecBuilder::new().manual().build());
    fx.step();
    fx.approved = false;
    let p = fx.step();
    assert_eq!(p.action, stop(1));
    assert_eq!(phase(&p), Phase::AwaitingApproval);
    assert!(cond(&p.status, READY)
        .message
        .contains("approval was withdrawn"));
    fx.contract_job = JobState::Absent;
    assert_eq!(phase(&fx.step()), Phase::AwaitingApproval);
    fx.approved = true;
    assert_eq!(fx.step().action, start(JobPhase::Contract, 2));
}

#[test]
fn an_old_pod_appearing_while_contract_runs_stops_it() {
    let mut fx = Fx::contracting(SpecBuilder::new().build());
    fx.step();
    fx.targets[0].old_pods = 1; // template still new, one old pod back
    fx.targets[0].complete = false;
    assert_eq!(fx.step().action, stop(1));
}

#[test]
fn an_availability_dip_after_completion_neither_stops_nor_resets_nor_times_out() {
    let mut fx = Fx::expanded(SpecBuilder::new().delay("10m").timeout("5m").build());
    fx.complete(true);
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Soaking);
    let completed = p.status.rollout_completed_at.clone();
    // New-version pods become unavailable (HPA scale-up, node drain, a crash loop).
    fx.targets[0].complete = false;
    fx.targets[0].available_replicas = 0;
    fx.targets[0].message = Some("Deployment shop-api: 2/2 replicas updated, 0 available".into());
    fx.now += 9 * 60;
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Soaking, "no timeout, no reset");
    assert_eq!(p.status.rollout_completed_at, completed);
    fx.now += 61;
    let p = fx.step();
    assert_eq!(
        p.action,
        start(JobPhase::Contract, 1),
        "soak counted from the completion"
    );
    fx.contract_job = JobState::Running(None);
    assert_eq!(
        fx.step().action,
        Action::None,
        "a dip does not stop contract"
    );
}

#[test]
fn a_dip_before_the_first_completion_is_still_waiting() {
    let mut fx = Fx::expanded(SpecBuilder::new().build());
    fx.complete(true);
    fx.targets[0].complete = false;
    fx.targets[0].available_replicas = 1;
    let p = fx.step();
    assert_eq!(
        phase(&p),
        Phase::AwaitingRollout,
        "completion needs full availability once"
    );
    assert_eq!(p.action, Action::None);
}

#[test]
fn the_timeout_clock_restarts_when_old_code_returns_after_completion() {
    let mut fx = Fx::expanded(SpecBuilder::new().delay("1h").timeout("5m").build());
    fx.now += 4 * 60;
    fx.complete(true);
    assert_eq!(phase(&fx.step()), Phase::Soaking);
    fx.now += 30 * 60; // long after the first wait began
    fx.complete(false); // a rollback
    let p = fx.step();
    assert_eq!(phase(&p), Phase::AwaitingRollout, "not timed out at once");
    assert_eq!(p.status.rollout_started_at, Some(time(34 * 60)));
    fx.now += 5 * 60;
    assert_eq!(
        failure_reason(&fx.step().status),
        Some(reason::ROLLOUT_TIMEOUT)
    );
}

#[test]
fn succeeded_is_terminal_whatever_the_spec_says_later() {
    let mut fx = Fx::contracting(SpecBuilder::new().build());
    fx.contract_job = JobState::Succeeded(None);
    assert_eq!(phase(&fx.step()), Phase::Succeeded);
    // An operator upgrade with a rule that refuses the old expand, or an unknown allow entry.
    fx.spec.expand.sql = Some("ALTER TABLE users DROP COLUMN x;".into());
    fx.spec.safety.allow = vec!["no-such-rule".into()];
    fx.complete(false);
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Succeeded);
    assert_eq!(p.action, Action::None);
}

#[test]
fn applied_expand_is_not_linted_again() {
    let mut fx = Fx::expanded(SpecBuilder::new().build());
    fx.spec.expand.sql = Some("ALTER TABLE users DROP COLUMN x;".into());
    let p = fx.step();
    assert_eq!(phase(&p), Phase::AwaitingRollout);
}

#[test]
fn timeouts_that_switch_limits_off_or_cannot_run_are_invalid() {
    for (lock, stmt) in [("0s", "10m"), ("9999h", "10m"), ("2s", "0s"), ("2s", "30d")] {
        let spec = SpecBuilder::new()
            .with(|s| {
                s.safety.lock_timeout = lock.into();
                s.safety.statement_timeout = stmt.into();
            })
            .build();
        let mut fx = Fx::new(spec);
        let p = fx.step();
        assert_eq!(phase(&p), Phase::Failed, "{lock}/{stmt}");
        assert_eq!(failure_reason(&p.status), Some(reason::INVALID_SPEC));
        assert!(cond(&p.status, STALLED).message.contains("out of range"));
    }
}

#[test]
fn starvation_settings_out_of_range_are_invalid() {
    // (youngTransaction, lockWaitAttemptAfter) with the default lockTimeout of 2s.
    for (young, after, field) in [
        // Older than lockTimeout is no longer short: attempting past it would time out.
        ("3s", "10s", "spec.safety.youngTransaction"),
        // Past the 10-minute wait limit: it would never attempt (say so with 0s).
        ("30ms", "11m", "spec.safety.lockWaitAttemptAfter"),
    ] {
        let spec = SpecBuilder::new()
            .with(|s| {
                s.safety.young_transaction = young.into();
                s.safety.lock_wait_attempt_after = after.into();
            })
            .build();
        let mut fx = Fx::new(spec);
        let p = fx.step();
        assert_eq!(phase(&p), Phase::Failed, "{young}/{after}");
        assert_eq!(failure_reason(&p.status), Some(reason::INVALID_SPEC));
        let msg = &cond(&p.status, STALLED).message;
        assert!(
            msg.starts_with(field) && msg.contains("out of range"),
            "{young}/{after}: {msg}"
        );
    }
    // 0s is meaningful for both: wait for every transaction; never attempt past a blocker.
    for (young, after) in [("0s", "0s"), ("2s", "10m"), ("30ms", "10s")] {
        let spec = SpecBuilder::new()
            .with(|s| {
                s.safety.young_transaction = young.into();
                s.safety.lock_wait_attempt_after = after.into();
            })
            .build();
        let valid = crate::planner::validate::validate(&spec, true);
        assert!(valid.is_ok(), "{young}/{after}: {valid:?}");
    }
}

#[test]
fn job_names_carry_the_uid_and_labels_fit() {
    let uid = "3F2A9c1e-0000-4000-8000-000000000000";
    assert_eq!(job_name("m", uid, JobPhase::Expand, 1), "m-expand-1-3f2a9");
    assert_ne!(
        job_name("m", uid, JobPhase::Expand, 1),
        job_name("m", "99999999-0000", JobPhase::Expand, 1)
    );
    let long = "x".repeat(200);
    assert!(job_name(&long, uid, JobPhase::Contract, 1000).len() <= 52);
    let l = migration_label(&long);
    assert!(l.len() <= 63 && l.chars().last().unwrap().is_ascii_alphanumeric());
    assert_ne!(l, migration_label(&"x".repeat(199)));
    assert_eq!(migration_label("short"), "short");
}

#[test]
fn a_job_conflict_fails_with_its_reason_until_retry() {
    let mut fx = Fx::new(SpecBuilder::new().build());
    let p = fx.plan();
    let p = job_refused(
        p,
        JobPhase::Expand,
        JobRefusal::Conflict,
        "a Job named m-expand-1 exists",
        ts(0),
        1,
    );
    assert_eq!(failure_reason(&p.status), Some(reason::JOB_CONFLICT));
    fx.status = p.status;
    let p = fx.step();
    assert_eq!(failure_reason(&p.status), Some(reason::JOB_CONFLICT));
    assert!(p.transition.is_none());
    fx.retry("1");
    assert_eq!(fx.step().action, start(JobPhase::Expand, 2));
}

#[test]
fn a_user_template_the_job_policy_forbids_is_refused_before_any_job() {
    let spec = SpecBuilder::new()
        .with(|s| {
            s.contract.sql = None;
            s.contract.job = Some(JobSpec {
                template: serde_json::json!({"spec": {"hostNetwork": true,
                    "securityContext": {"runAsNonRoot": true},
                    "containers": [{"name": "c", "image": "psql"}]}}),
                backoff_limit: None,
            });
        })
        .build();
    // Contract's template is judged before expand runs: nothing starts.
    let mut fx = Fx::new(spec);
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Failed);
    assert_eq!(p.action, Action::None);
    assert_eq!(failure_reason(&p.status), Some(reason::POLICY_REFUSED));
    let msg = &cond(&p.status, STALLED).message;
    assert!(
        msg.contains("spec.contract.job.template.spec.hostNetwork"),
        "{msg}"
    );
    // Fixing the template resumes.
    fx.spec.contract.job = Some(JobSpec {
        template: serde_json::json!({"spec": {"securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "c", "image": "psql",
                "securityContext": {"allowPrivilegeEscalation": false}}]}}),
        backoff_limit: None,
    });
    assert_eq!(fx.step().action, start(JobPhase::Expand, 1));
}

/// A user Job's contract cannot hold a commit grant: status says it is fenced by SIGTERM only.
#[test]
fn a_user_job_contract_says_it_is_fenced_by_signal_only() {
    let spec = SpecBuilder::new()
        .with(|s| {
            s.contract.sql = None;
            s.contract.job = Some(JobSpec {
                template: serde_json::json!({"spec": {"securityContext": {"runAsNonRoot": true},
                    "containers": [{"name": "c", "image": "psql",
                        "securityContext": {"allowPrivilegeEscalation": false}}]}}),
                backoff_limit: None,
            });
        })
        .build();
    let mut fx = Fx::contracting(spec);
    let p = fx.step();
    let msg = &cond(&p.status, READY).message;
    assert!(msg.contains("fenced by SIGTERM only"), "{msg}");
    // Phasegate's own executor asks for the grant: no such note.
    let mut fx = Fx::contracting(SpecBuilder::new().build());
    let p = fx.step();
    assert!(!cond(&p.status, READY).message.contains("SIGTERM"));
}

/// A template that breaks many rules: status still names every field and rule (issue 23;
/// the full advice for each did not fit the 1,024 characters a condition keeps).
#[test]
fn a_long_policy_refusal_still_names_every_field_and_rule() {
    let spec = SpecBuilder::new()
        .with(|s| {
            s.expand.sql = None;
            s.expand.job = Some(JobSpec {
                template: serde_json::json!({
                    "metadata": {"labels": {"app": "shop-api"},
                        "annotations": {"seccomp.security.alpha.kubernetes.io/pod": "unconfined"}},
                    "spec": {"serviceAccountName": "deployer", "hostPID": true,
                        "priorityClassName": "system-node-critical",
                        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
                        "containers": [{"name": "pwn", "image": "busybox",
                            "securityContext": {"privileged": true}}]}}),
                backoff_limit: None,
            });
        })
        .build();
    let mut fx = Fx::new(spec);
    let p = fx.step();
    assert_eq!(failure_reason(&p.status), Some(reason::POLICY_REFUSED));
    let msg = &cond(&p.status, STALLED).message;
    assert!(msg.chars().count() <= 1000, "{msg}");
    for part in [
        "spec.expand.job.template.metadata.labels[\"app\"] [labels]",
        "spec.expand.job.template.spec.serviceAccountName [service-account]",
        "spec.expand.job.template.spec.priorityClassName [priority-class]",
        "spec.expand.job.template.spec.containers[0].securityContext.privileged [privileged]",
        "spec.expand.job.template.spec.containers[0].securityContext.allowPrivilegeEscalation [privilege-escalation]",
    ] {
        assert!(msg.contains(part), "{part} not in {msg}");
    }
}

#[test]
fn inline_sql_larger_than_one_environment_variable_is_invalid() {
    // One statement that lints fine, padded past MAX_ARG_STRLEN with a comment.
    let big = |n: usize| {
        let head = "ALTER TABLE users ADD COLUMN email_verified boolean; -- ";
        format!("{head}{}", "x".repeat(n - head.len()))
    };
    let spec = SpecBuilder::new()
        .with(|s| s.expand.sql = Some(big(validate::MAX_INLINE_SQL_BYTES + 1)))
        .build();
    let mut fx = Fx::new(spec);
    let p = fx.step();
    assert_eq!(p.action, Action::None);
    assert_eq!(failure_reason(&p.status), Some(reason::INVALID_SPEC));
    let msg = &cond(&p.status, STALLED).message;
    assert!(msg.starts_with("spec.expand: sql is 131058 bytes"), "{msg}");
    assert!(msg.contains("at most 131057 bytes"), "{msg}");
    assert!(msg.contains("MAX_ARG_STRLEN"), "{msg}");

    // At the limit it runs.
    let spec = SpecBuilder::new()
        .with(|s| s.expand.sql = Some(big(validate::MAX_INLINE_SQL_BYTES)))
        .build();
    let mut fx = Fx::new(spec);
    assert_eq!(fx.step().action, start(JobPhase::Expand, 1));
}

#[test]
fn pods_refused_by_the_api_server_are_explained_with_one_warning() {
    let mut fx = Fx::new(SpecBuilder::new().build());
    fx.step();
    let refused = "pods refused: FailedCreate: pods \"m-expand-1-x\" is forbidden: violates \
                   PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false";
    fx.expand_job = JobState::Running(Some(Holdup::Stuck(refused.into())));
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Expanding);
    let msg = &cond(&p.status, RECONCILING).message;
    assert_eq!(
        msg,
        &format!("expand Job attempt 1 is running; {refused}"),
        "{msg}"
    );
    let warnings: Vec<_> = p
        .notices
        .iter()
        .filter(|n| n.reason == reason::JOB_STUCK)
        .collect();
    assert_eq!(warnings.len(), 1, "{:?}", p.notices);
    assert!(warnings[0].warning);
    assert!(warnings[0].message.contains("violates PodSecurity"));
    // The same reason again: no new Event.
    assert!(fx.step().notices.is_empty());
    // Another reason (the quota now): one more.
    fx.expand_job = JobState::Running(Some(Holdup::Stuck(
        "pods refused: FailedCreate: exceeded quota: pods".into(),
    )));
    assert_eq!(fx.step().notices.len(), 1);
    // Fine again: none.
    fx.expand_job = JobState::Running(None);
    assert!(fx.step().notices.is_empty());
}

const DIED: &str = "the executor of Job x died without its report (container exited with code \
                    137 (OOMKilled; killed by signal 9, SIGKILL))";

#[test]
fn an_executor_that_died_without_a_report_is_retried_automatically_three_attempts_in_all() {
    let mut fx = Fx::new(SpecBuilder::new().build());
    assert_eq!(fx.step().action, start(JobPhase::Expand, 1));
    for attempt in 1..MAX_AUTOMATIC_ATTEMPTS {
        fx.expand_job = JobState::Died(DIED.into());
        let p = fx.step();
        assert_eq!(p.action, start(JobPhase::Expand, attempt + 1), "{attempt}");
        assert_eq!(phase(&p), Phase::Expanding);
        let e = p.status.expand.as_ref().unwrap();
        assert_eq!(e.reason.as_deref(), Some(reason::EXECUTOR_DIED));
        let why = e.message.as_deref().unwrap_or_default();
        assert!(
            why.starts_with(&format!("attempt {attempt} died: ")),
            "{why}"
        );
        let msg = &cond(&p.status, RECONCILING).message;
        assert!(
            msg.starts_with(&format!(
                "expand Job attempt {} started automatically ({} of 3): attempt {attempt} died",
                attempt + 1,
                attempt + 1
            )),
            "{msg}"
        );
        assert!(msg.contains("OOMKilled"), "{msg}");
        let n: Vec<_> = p
            .notices
            .iter()
            .filter(|n| n.reason == reason::EXECUTOR_DIED && n.warning)
            .collect();
        assert_eq!(n.len(), 1, "one Warning Event per death: {:?}", p.notices);
        // The new attempt runs and still says why it exists.
        fx.expand_job = JobState::Running(None);
        let p = fx.step();
        assert!(p.notices.is_empty());
        let msg = &cond(&p.status, RECONCILING).message;
        assert!(msg.contains("retried automatically: attempt"), "{msg}");
    }
    // The third death is final, with the retry hint.
    fx.expand_job = JobState::Died(DIED.into());
    let p = fx.step();
    assert_eq!((phase(&p), p.action.clone()), (Phase::Failed, Action::None));
    let msg = &cond(&p.status, STALLED).message;
    assert!(msg.contains("OOMKilled"), "{msg}");
    assert!(
        msg.contains("attempt 3 of 3 retried automatically, no more"),
        "{msg}"
    );
    assert!(msg.contains("phasegate.dev/retry"), "{msg}");
    assert_eq!(fx.step().action, Action::None, "stays failed");
    fx.retry("again");
    assert_eq!(fx.step().action, start(JobPhase::Expand, 4));
    // Success after a death clears the death's reason.
    fx.expand_job = JobState::Succeeded(None);
    let p = fx.step();
    assert_eq!(p.status.expand.as_ref().unwrap().reason, None);
}

#[test]
fn failures_with_a_report_and_user_jobs_are_never_retried_automatically() {
    let mut fx = Fx::new(SpecBuilder::new().build());
    fx.step();
    fx.expand_job = JobState::Failed("relation \"users\" does not exist".into());
    let p = fx.step();
    assert_eq!((phase(&p), p.action.clone()), (Phase::Failed, Action::None));

    let spec = SpecBuilder::new()
        .with(|s| {
            s.expand.sql = None;
            s.expand.job = Some(JobSpec {
                template: serde_json::json!({"spec": {"securityContext": {"runAsNonRoot": true},
                    "containers": [{"name": "c", "image": "flyway",
                        "securityContext": {"allowPrivilegeEscalation": false}}]}}),
                backoff_limit: None,
            });
        })
        .build();
    let mut fx = Fx::new(spec);
    fx.step();
    fx.expand_job = JobState::Died(DIED.into());
    let p = fx.step();
    assert_eq!((phase(&p), p.action.clone()), (Phase::Failed, Action::None));
    assert!(cond(&p.status, STALLED)
        .message
        .contains("phasegate.dev/retry"));
}

#[test]
fn a_contract_executor_death_is_retried_through_the_gates() {
    let mut fx = Fx::contracting(SpecBuilder::new().build());
    fx.now = 300;
    // The app is rolled back meanwhile: no new attempt while the gate is closed.
    fx.complete(false);
    fx.contract_job = JobState::Died(DIED.into());
    let p = fx.step();
    assert_eq!(p.action, Action::None);
    assert_eq!(phase(&p), Phase::AwaitingRollout);
    // Open again: attempt 2 starts by itself.
    fx.complete(true);
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Contract, 2));
    let c = p.status.contract.as_ref().unwrap();
    assert_eq!(c.reason.as_deref(), Some(reason::EXECUTOR_DIED));
    assert!(p.notices.iter().any(|n| n.reason == reason::EXECUTOR_DIED));
}

#[test]
fn a_missing_target_is_a_warning_not_just_a_wait() {
    let mut fx = Fx::expanded(
        SpecBuilder::new()
            .targets(&["shop-api", "shop-apy"])
            .build(),
    );
    fx.targets[1] = rollout::missing(
        TargetKind::Deployment,
        "shop-apy",
        "Deployment shop-apy not found in namespace shop",
    );
    let p = fx.step();
    assert_eq!(phase(&p), Phase::AwaitingRollout);
    let c = cond(&p.status, conditions::TARGETS_FOUND);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reason::TARGET_NOT_FOUND)
    );
    assert!(c.message.contains("shop-apy not found"), "{}", c.message);
    let warned: Vec<_> = p
        .notices
        .iter()
        .filter(|n| n.reason == reason::TARGET_NOT_FOUND)
        .collect();
    assert_eq!(warned.len(), 1, "one Warning Event: {:?}", p.notices);
    assert!(warned[0].warning);
    // Once: the next plan with the same world publishes nothing new.
    assert!(fx.step().notices.is_empty());
    // Fixed: the condition turns True.
    fx.targets[1] = target("shop-apy", false);
    let p = fx.step();
    assert!(is_true(&p.status, conditions::TARGETS_FOUND));
}

#[test]
fn expand_waits_for_the_migrations_before_it() {
    let mut fx = Fx::new(SpecBuilder::new().build());
    let mut input = fx.input();
    input.waits_for = vec!["add-email (dependsOn; Expanding)".into()];
    let p = plan(&input);
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::Pending, Action::None)
    );
    assert_eq!(
        cond(&p.status, RECONCILING).reason,
        reason::WAITING_FOR_MIGRATION
    );
    assert!(cond(&p.status, RECONCILING)
        .message
        .contains("add-email (dependsOn; Expanding)"));
    assert!(
        p.requeue_after.is_some(),
        "looks again without an event of its own"
    );
    fx.status = p.status;
    assert_eq!(fx.step().action, start(JobPhase::Expand, 1));
    // Once expand has started, later arrivals never hold it back.
    fx.expand_job = JobState::Running(None);
    let mut input = fx.input();
    input.waits_for = vec!["x".into()];
    assert_eq!(phase(&plan(&input)), Phase::Expanding);
}

fn seat() -> Seat {
    Seat {
        job_name: "first-expand-1-abcde".into(),
        job_uid: "job-uid-1".into(),
        lead: "first".into(),
    }
}

#[test]
fn a_migration_in_an_earlier_ones_batch_takes_its_seat_and_waits_in_no_line() {
    let mut fx = Fx::new(SpecBuilder::new().build());
    fx.expand_job = JobState::Running(None);
    let mut input = fx.input();
    input.waits_for = vec!["first (same database, created earlier; Expanding)".into()];
    input.expand_seat = Some(seat());
    let p = plan(&input);
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::Expanding, Action::None)
    );
    let rec = p.status.expand.clone().expect("expand record");
    assert_eq!(
        (
            rec.attempts,
            rec.job_name.as_deref(),
            rec.job_uid.as_deref()
        ),
        (1, Some("first-expand-1-abcde"), Some("job-uid-1"))
    );
    let msg = &cond(&p.status, RECONCILING).message;
    assert!(msg.contains("the expand batch of first"), "{msg}");
    fx.status = p.status;
    // Applied by the batch: on to the rollout, nothing started of its own.
    fx.expand_job = JobState::Succeeded(Some("applied by Job first-expand-1-abcde".into()));
    let mut input = fx.input();
    input.expand_seat = Some(seat());
    let p = plan(&input);
    assert_eq!(p.action, Action::None);
    assert!(p
        .status
        .expand
        .as_ref()
        .is_some_and(|e| e.succeeded && e.attempts == 1));
    assert_eq!(phase(&p), Phase::AwaitingRollout);
}

#[test]
fn a_seat_that_ended_before_its_turn_goes_back_in_line_then_starts_its_own_attempt() {
    let mut fx = Fx::new(SpecBuilder::new().build());
    fx.expand_job = JobState::Running(None);
    let mut input = fx.input();
    input.expand_seat = Some(seat());
    fx.status = plan(&input).status;
    // An earlier one in the batch failed: its Job did not run this one.
    fx.expand_job = JobState::Absent;
    let mut input = fx.input();
    input.waits_for = vec!["second (same database, created earlier; Pending)".into()];
    let p = plan(&input);
    assert_eq!(
        (phase(&p), p.action.clone()),
        (Phase::Pending, Action::None)
    );
    fx.status = p.status;
    // First in line now: its own Job, the next attempt.
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Expand, 2));
    assert_eq!(
        p.status.expand.and_then(|e| e.job_name),
        Some(job_name(NAME, "", JobPhase::Expand, 2))
    );
}

#[test]
fn the_lead_of_a_batch_says_which_migrations_its_job_applies_after_it() {
    let fx = Fx::new(SpecBuilder::new().build());
    let mut input = fx.input();
    input.expand_batch = (1..=7).map(|i| format!("m{i}")).collect();
    let p = plan(&input);
    assert_eq!(p.action, start(JobPhase::Expand, 1));
    let msg = &cond(&p.status, RECONCILING).message;
    assert!(
        msg.contains("the next 7 migrations of this database after this one, in order: m1, m2, m3, m4, m5 and 2 more"),
        "{msg}"
    );
}

#[test]
fn a_seat_whose_migration_failed_in_the_batch_is_failed() {
    let mut fx = Fx::new(SpecBuilder::new().build());
    fx.expand_job = JobState::Failed("ERROR 42P01: relation \"nope\" does not exist".into());
    let mut input = fx.input();
    input.expand_seat = Some(seat());
    let p = plan(&input);
    assert_eq!(failure_reason(&p.status), Some(reason::EXPAND_FAILED));
    assert_eq!(p.action, Action::None);
    assert_eq!(
        p.status.expand.and_then(|e| e.job_name).as_deref(),
        Some("first-expand-1-abcde")
    );
}

#[test]
fn depending_on_itself_is_invalid() {
    let mut fx = Fx::new(
        SpecBuilder::new()
            .with(|s| s.depends_on = vec![NAME.into()])
            .build(),
    );
    let p = fx.step();
    assert_eq!(failure_reason(&p.status), Some(reason::INVALID_SPEC));
}

#[test]
fn not_previous_order_records_what_ran_and_accepts_anything_else() {
    let spec = SpecBuilder::new()
        .with(|s| {
            s.app_version = "a1b2c3d".into();
            s.rollout.version_order = crate::api::VersionOrder::NotPrevious;
        })
        .build();
    let mut fx = Fx::new(spec);
    fx.targets[0].version = Some("9f8e7d6".into());
    let p = fx.step();
    assert_eq!(
        p.status.previous_versions,
        Some(vec!["9f8e7d6".to_string()])
    );
    assert_eq!(p.action, start(JobPhase::Expand, 1));
    fx.expand_job = JobState::Succeeded(None);
    fx.step();
    // A later build (not the exact appVersion) counts as new; the old one never does.
    let rule = fx.plan().status.previous_versions.clone();
    assert_eq!(rule, Some(vec!["9f8e7d6".to_string()]), "recorded once");
    fx.targets[0] = target("shop-api", true);
    fx.targets[0].version = Some("0c0ffee".into());
    assert_eq!(phase(&fx.step()), Phase::Contracting);
    fx.contract_job = JobState::Running(None);
    fx.targets[0].version = Some("9f8e7d6".into()); // rolled back to what ran before
    fx.targets[0].complete = false;
    assert!(matches!(fx.step().action, Action::StopJob { .. }));
}

#[test]
fn a_retry_waiting_for_the_gates_is_used_up_by_a_rollout_timeout() {
    // Found by the property tests with more cases: contract failed, a retry waits for the
    // gates, the app rolls again and times out; that older retry must not also lift the
    // timeout once the rollout completes.
    let mut fx = Fx::contracting(SpecBuilder::new().timeout("3m").build());
    fx.contract_job = JobState::Failed("boom".into());
    assert_eq!(phase(&fx.step()), Phase::Failed);
    fx.complete(false);
    fx.retry("r1");
    assert_eq!(phase(&fx.step()), Phase::AwaitingRollout);
    fx.now += 180;
    let p = fx.step();
    assert_eq!(failure_reason(&p.status), Some(reason::ROLLOUT_TIMEOUT));
    fx.complete(true);
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Failed, "r1 does not lift the timeout");
    assert_eq!(p.action, Action::None);
    assert!(p.status.rollout_timed_out_at.is_some());
    fx.retry("r2");
    assert_eq!(fx.step().action, start(JobPhase::Contract, 2));
}

#[test]
fn what_the_contract_executor_waits_on_is_in_status_and_one_event() {
    let mut fx = Fx::contracting(SpecBuilder::new().build());
    fx.step();
    let wait = "waiting for an older transaction's lock since 2026-11-30T12:00:01Z: pid 42 \
                (report, idle in transaction) holds AccessShareLock on public.users";
    fx.contract_job = JobState::Running(Some(Holdup::Waiting(wait.into())));
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Contracting);
    assert_eq!(p.action, Action::None);
    let msg = &cond(&p.status, READY).message;
    assert!(msg.contains(wait), "{msg}");
    assert_eq!(p.notices.len(), 1, "{:?}", p.notices);
    assert!(!p.notices[0].warning, "a wait is normal, not a warning");
    assert_eq!(p.notices[0].reason, reason::EXECUTOR_WAITING);
    // The same wait again: no new Event.
    assert!(fx.step().notices.is_empty());
    // The wait does not weaken the fence: a rollback still stops the attempt.
    fx.complete(false);
    let p = fx.step();
    assert!(matches!(p.action, Action::StopJob { .. }), "{:?}", p.action);
}

#[test]
fn a_regression_clears_the_contract_deadline() {
    let mut fx = Fx::expanded(SpecBuilder::new().delay("10m").build());
    fx.now = 100;
    fx.complete(true);
    assert_eq!(fx.step().status.contract_not_before, Some(time(700)));
    fx.now = 200;
    fx.complete(false);
    let p = fx.step();
    assert_eq!(phase(&p), Phase::AwaitingRollout);
    assert_eq!(p.status.contract_not_before, None);
    fx.now = 300;
    fx.complete(true);
    assert_eq!(fx.step().status.contract_not_before, Some(time(900)));
}

// ---- Backfill (issue 13): after the rollout, before soak/approval/contract, fenced ----

fn with_backfill(b: SpecBuilder) -> DatabaseMigrationSpec {
    b.with(|s| {
        s.backfill = Some(crate::api::BackfillSpec {
            table: "users".into(),
            key: "id".into(),
            sql: "UPDATE users SET email_address = email WHERE id > $1 AND id <= $2 AND email_address IS NULL".into(),
            batch_size: None,
            max_batch_size: None,
            target_batch_duration: None,
            pause: None,
            lock_timeout: None,
            max_replication_lag: None,
        })
    })
    .build()
}

#[test]
fn backfill_runs_after_the_rollout_and_contract_waits_for_it() {
    let mut fx = Fx::expanded(with_backfill(SpecBuilder::new()));
    // Never while old code runs.
    assert_eq!(fx.step().action, Action::None);
    fx.complete(true);
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Backfill, 1));
    assert_eq!(phase(&p), Phase::Backfilling);
    let b = p.status.backfill.clone().expect("backfill status");
    assert_eq!(b.epoch, p.status.rollout_completed_at);
    assert_eq!(
        b.run.job_name.as_deref(),
        Some("users-email-verified-backfill-1")
    );
    // Running with progress: in status, no contract, no Event per progress line.
    let progress = crate::api::BackfillProgress {
        rows_done: 500,
        estimated_rows: 1000,
        key_range_done_permille: 500,
        batches: 5,
        batch_size: 100,
        rows_per_second: 50,
        eta_seconds: Some(10),
        throttled: None,
        tenants: None,
    };
    fx.backfill_job = JobState::Running(Some(Holdup::Progress(progress.clone())));
    fx.now += 3600;
    let p = fx.step();
    assert_eq!(p.action, Action::None);
    assert_eq!(phase(&p), Phase::Backfilling);
    assert!(p.notices.is_empty(), "{:?}", p.notices);
    assert_eq!(
        p.status.backfill.as_ref().and_then(|b| b.progress.clone()),
        Some(progress)
    );
    assert!(
        cond(&p.status, READY)
            .message
            .contains("backfilled 500 row(s) of ~1000"),
        "{:?}",
        cond(&p.status, READY)
    );
    // Done: contract starts in the same plan.
    fx.backfill_job = JobState::Succeeded(Some("backfill done".into()));
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Contract, 1));
    assert!(p.status.backfill.as_ref().is_some_and(|b| b.run.succeeded));
    // Argo CD: Ready (expand applied) all along.
    assert_eq!(cond(&p.status, READY).status, "True");
}

#[test]
fn a_rollback_while_backfilling_stops_it_and_the_next_rollout_starts_over() {
    let mut fx = Fx::expanded(with_backfill(SpecBuilder::new()));
    fx.complete(true);
    assert_eq!(fx.step().action, start(JobPhase::Backfill, 1));
    let first_epoch = fx.status.rollout_completed_at.clone();
    fx.backfill_job = JobState::Running(None);
    fx.now += 10;
    fx.step();
    // Old code again: the backfill Job is stopped at once.
    fx.complete(false);
    let p = fx.step();
    assert_eq!(
        p.action,
        Action::StopJob {
            phase: JobPhase::Backfill,
            attempt: 1
        }
    );
    assert_eq!(phase(&p), Phase::AwaitingRollout);
    assert_eq!(
        p.status.backfill.as_ref().map(|b| b.regressions),
        Some(1),
        "the regression is recorded: the next run scans from the first key"
    );
    // Still stopping while its Job exists.
    assert!(matches!(fx.step().action, Action::StopJob { .. }));
    fx.backfill_job = JobState::Absent;
    assert_eq!(fx.step().action, Action::None);
    // A new complete rollout: a new attempt in a new epoch.
    fx.now += 60;
    fx.complete(true);
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Backfill, 2));
    let b = p.status.backfill.clone().unwrap();
    assert_ne!(b.epoch, first_epoch);
    assert_eq!(b.epoch, p.status.rollout_completed_at);
    assert_eq!(b.regressions, 1);
}

#[test]
fn a_regression_after_the_backfill_succeeded_runs_it_again_before_contract() {
    let mut fx = Fx::expanded(with_backfill(SpecBuilder::new().delay("10m")));
    fx.complete(true);
    assert_eq!(fx.step().action, start(JobPhase::Backfill, 1));
    fx.backfill_job = JobState::Succeeded(None);
    assert_eq!(phase(&fx.step()), Phase::Soaking);
    fx.complete(false);
    fx.step();
    fx.complete(true);
    // Within the same second as before: the regression count still tells the epochs apart.
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Backfill, 2));
    assert!(!p.status.backfill.as_ref().unwrap().run.succeeded);
}

#[test]
fn pausing_stops_the_backfill_and_resuming_continues_in_the_same_epoch() {
    let mut fx = Fx::expanded(with_backfill(SpecBuilder::new()));
    fx.complete(true);
    fx.step();
    let epoch = fx.status.rollout_completed_at.clone();
    fx.backfill_job = JobState::Running(None);
    fx.step();
    fx.backfill_paused = true;
    let p = fx.step();
    assert_eq!(
        p.action,
        Action::StopJob {
            phase: JobPhase::Backfill,
            attempt: 1
        }
    );
    assert_eq!(
        crate::planner::conditions::reason_of(&p.status.conditions, READY),
        Some(reason::BACKFILL_PAUSED)
    );
    fx.backfill_job = JobState::Absent;
    let p = fx.step();
    assert_eq!(p.action, Action::None);
    assert_eq!(phase(&p), Phase::Backfilling);
    fx.backfill_paused = false;
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Backfill, 2));
    assert_eq!(p.status.backfill.as_ref().unwrap().epoch, epoch);
    assert_eq!(p.status.backfill.as_ref().unwrap().regressions, 0);
}

#[test]
fn a_failed_backfill_fails_the_migration_until_a_retry_resumes_it() {
    let mut fx = Fx::expanded(with_backfill(SpecBuilder::new()));
    fx.complete(true);
    fx.step();
    fx.backfill_job = JobState::Failed("ERROR 23502: null value".into());
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Failed);
    assert_eq!(failure_reason(&p.status), Some(reason::BACKFILL_FAILED));
    assert!(cond(&p.status, READY).message.contains("checkpoint"));
    assert_eq!(p.action, Action::None);
    assert_eq!(fx.step().action, Action::None);
    fx.retry("1");
    assert_eq!(fx.step().action, start(JobPhase::Backfill, 2));
}

#[test]
fn a_dead_backfill_executor_is_retried_once_automatically() {
    let mut fx = Fx::expanded(with_backfill(SpecBuilder::new()));
    fx.complete(true);
    fx.step();
    fx.backfill_job = JobState::Died("OOMKilled".into());
    assert_eq!(fx.step().action, start(JobPhase::Backfill, 2));
    fx.backfill_job = JobState::Died("OOMKilled".into());
    let p = fx.step();
    assert_eq!(p.action, Action::None);
    assert_eq!(phase(&p), Phase::Failed);
}

#[test]
fn a_running_contract_stops_if_the_backfill_is_not_done_in_this_epoch() {
    // Defense in depth: only reachable through a status that lost the backfill's success.
    let mut fx = Fx::expanded(with_backfill(SpecBuilder::new()));
    fx.complete(true);
    fx.step();
    fx.backfill_job = JobState::Succeeded(None);
    assert_eq!(fx.step().action, start(JobPhase::Contract, 1));
    fx.contract_job = JobState::Running(None);
    fx.backfill_job = JobState::Absent;
    if let Some(b) = fx.status.backfill.as_mut() {
        b.run.succeeded = false;
    }
    assert!(matches!(
        fx.step().action,
        Action::StopJob {
            phase: JobPhase::Contract,
            ..
        }
    ));
}

/// The examples a user copies validate and lint clean: no refusal, no warning (issue 10, item
/// 7: examples/rename-column backfilled under the ADD COLUMN's lock).
#[test]
fn examples_lint_clean() {
    use serde::Deserialize;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&root).expect("examples/") {
        let dir = entry.expect("entry").path();
        // examples/plan is a migration to review with `phasegate plan`: risky on purpose.
        if dir.ends_with("plan") {
            continue;
        }
        for file in std::fs::read_dir(&dir).into_iter().flatten() {
            let path = file.expect("file").path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v = serde_json::Value::deserialize(doc).expect("yaml");
                if v["kind"] != "DatabaseMigration" {
                    continue;
                }
                let spec: crate::api::DatabaseMigrationSpec =
                    serde_json::from_value(v["spec"].clone())
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                if path.ends_with("cloudnativepg/migration.yaml") {
                    // serde ignores unknown keys: make sure the pooler was read, not skipped.
                    let pooler = spec.database.pooler.as_ref().expect("spec.database.pooler");
                    assert!(pooler.admin_url_secret_ref.is_some(), "{}", path.display());
                }
                let valid =
                    validate(&spec, true).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(
                    valid.lint_warnings,
                    Vec::<String>::new(),
                    "{}",
                    path.display()
                );
                checked.push(path.display().to_string());
            }
        }
    }
    for want in [
        "rename-column/migration.yaml",
        "cloudnativepg/migration.yaml",
    ] {
        assert!(checked.iter().any(|p| p.ends_with(want)), "{checked:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Regressions seen from the rollout history (issue 22): a rollback and a roll-forward while
// the operator was away
// ---------------------------------------------------------------------------------------

/// `shop-api`'s kept revisions: (number, version).
fn history(revs: &[(i64, &str)]) -> Option<Vec<regression::TargetHistory>> {
    Some(vec![regression::TargetHistory {
        kind: TargetKind::Deployment,
        name: "shop-api".into(),
        uid: "u".into(),
        revisions: revs
            .iter()
            .map(|&(n, v)| regression::Revision {
                name: format!("shop-api-{n}"),
                number: n,
                version: Some(v.into()),
                earlier: Vec::new(),
            })
            .collect(),
    }])
}

#[test]
fn the_epoch_records_each_targets_revision_and_config_changes_are_no_regression() {
    let mut fx = Fx::expanded(SpecBuilder::new().delay("10m").build());
    fx.complete(true);
    fx.history = history(&[(1, "2.3.0"), (2, "2.4.0")]);
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Soaking);
    assert_eq!(
        p.status.rollout_revisions,
        [crate::api::TargetRevision {
            kind: "Deployment".into(),
            name: "shop-api".into(),
            uid: "u".into(),
            revision: 2
        }]
    );
    assert!(!regression::unrecorded(&p.status));
    // A config-only change since (same version, new revision): the soak goes on.
    fx.now += 60;
    fx.history = history(&[(1, "2.3.0"), (2, "2.4.0"), (3, "2.4.0")]);
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Soaking);
    assert_eq!(p.status.rollout_completed_at, Some(time(0)));
    assert!(p.notices.is_empty(), "{:?}", p.notices);
    assert_eq!(p.status.rollout_revisions[0].revision, 2);
}

#[test]
fn a_rollback_behind_our_back_found_in_the_history_restarts_the_soak() {
    let mut fx = Fx::expanded(SpecBuilder::new().delay("10m").build());
    fx.complete(true);
    fx.history = history(&[(1, "2.3.0"), (2, "2.4.0")]);
    fx.step();
    // The operator was down for 15 minutes: 2.3.0 was rolled out again (its ReplicaSet 1 →
    // 3) and 2.4.0 after it (2 → 4). From what it sees now, the soak is over:
    fx.now += 900;
    fx.history = None;
    assert_eq!(fx.plan().action, start(JobPhase::Contract, 1));
    // ... but the kept revisions show old code rolled out since the rollout completed.
    fx.history = history(&[(3, "2.3.0"), (4, "2.4.0")]);
    let p = fx.step();
    assert_eq!(p.action, Action::None);
    assert_eq!(phase(&p), Phase::AwaitingRollout);
    assert_eq!(p.status.rollout_completed_at, None);
    assert!(p.status.rollout_revisions.is_empty());
    let n = p
        .notices
        .iter()
        .find(|n| n.reason == reason::REGRESSION_IN_HISTORY)
        .expect("an Event");
    assert!(n.warning);
    assert!(
        n.message.contains("revision 3 (shop-api-3, version 2.3.0)")
            && n.message.contains("completed at revision 2"),
        "{}",
        n.message
    );
    assert!(p
        .status
        .last_regression
        .as_ref()
        .is_some_and(|r| r.message == n.message && r.seen_at == time(900)));
    // The next plan opens a new epoch: the soak counts from now, the revision is recorded
    // anew (no regression any more).
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Soaking);
    assert_eq!(p.status.rollout_completed_at, Some(time(900)));
    assert_eq!(p.status.rollout_revisions[0].revision, 4);
    fx.now += 599;
    assert_eq!(phase(&fx.step()), Phase::Soaking);
    fx.now += 1;
    assert_eq!(fx.step().action, start(JobPhase::Contract, 1));
}

#[test]
fn a_backfill_that_finished_behind_a_hidden_rollback_runs_again_from_the_first_key() {
    let mut fx = Fx::expanded(with_backfill(SpecBuilder::new()));
    fx.complete(true);
    fx.history = history(&[(1, "2.3.0"), (2, "2.4.0")]);
    assert_eq!(fx.step().action, start(JobPhase::Backfill, 1));
    let first_epoch = fx.status.rollout_completed_at.clone();
    fx.backfill_job = JobState::Running(None);
    fx.history = None;
    fx.now += 10;
    fx.step();
    // The operator is killed; the app is rolled back and forward; the Job kept running and
    // finished meanwhile. From what it sees now, contract may start:
    fx.now += 300;
    fx.backfill_job = JobState::Succeeded(Some("backfill done".into()));
    assert_eq!(fx.plan().action, start(JobPhase::Contract, 1));
    // The history read after the restart shows the regression.
    fx.history = history(&[(3, "2.3.0"), (4, "2.4.0")]);
    let p = fx.step();
    assert_eq!(p.action, Action::None);
    assert_eq!(phase(&p), Phase::AwaitingRollout);
    let b = p.status.backfill.clone().expect("backfill");
    assert_eq!((b.regressions, b.run.succeeded, b.epoch), (1, false, None));
    assert!(p
        .notices
        .iter()
        .any(|n| n.reason == reason::REGRESSION_IN_HISTORY
            && n.message
                .contains("the backfill runs again from its first key")));
    // A new epoch: attempt 2, from the first key (a new epoch for the executor).
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Backfill, 2));
    let b = p.status.backfill.clone().expect("backfill");
    assert_eq!(b.epoch, p.status.rollout_completed_at);
    assert_ne!(b.epoch, first_epoch);
}

#[test]
fn a_regression_in_the_history_stops_running_attempts() {
    // A backfill still running after the restart.
    let mut fx = Fx::expanded(with_backfill(SpecBuilder::new()));
    fx.complete(true);
    fx.history = history(&[(1, "2.3.0"), (2, "2.4.0")]);
    fx.step();
    fx.backfill_job = JobState::Running(None);
    fx.now += 60;
    fx.history = history(&[(3, "2.3.0"), (4, "2.4.0")]);
    let p = fx.step();
    assert_eq!(
        p.action,
        Action::StopJob {
            phase: JobPhase::Backfill,
            attempt: 1
        }
    );
    // A running contract attempt.
    let mut fx = Fx::expanded(SpecBuilder::new().build());
    fx.complete(true);
    fx.history = history(&[(1, "2.3.0"), (2, "2.4.0")]);
    assert_eq!(fx.step().action, start(JobPhase::Contract, 1));
    fx.contract_job = JobState::Running(None);
    fx.history = history(&[(3, "2.3.0"), (4, "2.4.0")]);
    let p = fx.step();
    assert_eq!(
        p.action,
        Action::StopJob {
            phase: JobPhase::Contract,
            attempt: 1
        }
    );
    assert_eq!(
        p.status.contract.as_ref().and_then(|c| c.reason.as_deref()),
        Some(reason::GATE_CLOSED)
    );
}

#[test]
fn history_pruned_since_the_epoch_counts_as_a_regression() {
    let mut fx = Fx::expanded(SpecBuilder::new().delay("10m").build());
    fx.complete(true);
    fx.history = history(&[(1, "2.3.0"), (2, "2.4.0")]);
    fx.step();
    fx.now += 900;
    // revisionHistoryLimit: 0: only the live ReplicaSet is kept, revision 3 is gone.
    fx.history = history(&[(4, "2.4.0")]);
    let p = fx.step();
    assert_eq!(phase(&p), Phase::AwaitingRollout);
    assert!(p
        .notices
        .iter()
        .any(|n| n.message.contains("revision 3") && n.message.contains("no longer kept")));
}

#[test]
fn a_retry_set_while_the_operator_was_away_does_not_retry_a_later_timeout() {
    // Found by the favourable-world property once the simulator's event mix changed: the
    // retry annotation is set while the operator is away, the rollout times out meanwhile;
    // the operator's first plan declares the timeout, and the retry, asked before it, does
    // not undo it (only a new value does).
    let p = Params {
        targets: 1,
        delay: None,
        timeout: Some("3m"),
        manual: false,
        backfill: false,
    };
    let events = vec![
        Ev::Update(0),
        Ev::JobSucceeds(JobPhase::Expand),
        Ev::RolloutDone(0),
        Ev::Update(0),
        Ev::OperatorAway(true),
        Ev::Retry(true),
        Ev::Advance(180),
        Ev::OperatorAway(false),
        Ev::Advance(1),
        Ev::Update(0),
    ];
    simulate(&p, &events, false, true).unwrap();
}

#[test]
fn a_fleet_migration_keeps_what_its_executor_did_across_the_tenants() {
    let tenants = crate::api::TenantsSpec {
        schemas: Some("tenant\\_%".into()),
        max_concurrent: 4,
        ..Default::default()
    };
    let mut fx = Fx::new(
        SpecBuilder::new()
            .with(|s| s.tenants = Some(tenants.clone()))
            .build(),
    );
    assert_eq!(fx.step().action, start(JobPhase::Expand, 1));
    let counts = crate::api::TenantsStatus {
        total: 3,
        applied: 2,
        failed: 1,
        ..Default::default()
    };
    fx.expand_job = JobState::Failed("failed on 1 of 3 tenants".into());
    let mut input = fx.input();
    input.expand_tenants = Some(counts.clone());
    let p = plan(&input);
    assert_eq!(phase(&p), Phase::Failed);
    assert_eq!(
        p.status.expand.as_ref().and_then(|e| e.tenants.clone()),
        Some(counts)
    );
    // A retry starts afresh.
    fx.status = p.status;
    fx.retry("1");
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Expand, 2));
    assert_eq!(
        p.status.expand.as_ref().and_then(|e| e.tenants.clone()),
        None
    );
}

#[test]
fn a_fleet_migration_refuses_what_cannot_run_per_tenant() {
    let tenants = |schemas: bool| crate::api::TenantsSpec {
        schemas: schemas.then(|| "tenant\\_%".into()),
        databases: (!schemas).then(|| "shop\\_%".into()),
        ..Default::default()
    };
    // A user's own Job cannot run per tenant.
    let job = SpecBuilder::new()
        .with(|s| {
            s.tenants = Some(tenants(false));
            s.expand.sql = None;
            s.expand.job = Some(JobSpec {
                template: serde_json::json!({"spec": {"containers": [{"name": "c", "image": "psql"}]}}),
                backoff_limit: None,
            });
        })
        .build();
    let p = Fx::new(job).step();
    assert_eq!(failure_reason(&p.status), Some(reason::INVALID_SPEC));
    assert!(
        cond(&p.status, READY).message.contains("spec.tenants"),
        "{:?}",
        cond(&p.status, READY)
    );
    // Schema tenants walk each their own table: a schema-qualified one is refused before
    // expand; database tenants may name one.
    let qualified = |schemas: bool| {
        let mut spec =
            with_backfill(SpecBuilder::new().with(|s| s.tenants = Some(tenants(schemas))));
        if let Some(b) = spec.backfill.as_mut() {
            b.table = "app.users".into();
        }
        spec
    };
    let p = Fx::new(qualified(true)).step();
    assert_eq!(failure_reason(&p.status), Some(reason::INVALID_SPEC));
    assert!(
        cond(&p.status, READY)
            .message
            .contains("spec.backfill.table"),
        "{:?}",
        cond(&p.status, READY)
    );
    assert_eq!(
        Fx::new(qualified(false)).step().action,
        start(JobPhase::Expand, 1)
    );
}

/// A fleet migration with a backfill: expand on every tenant, the rollout gate, the backfill on
/// every tenant (its counts in status while it runs and once it ended), then contract.
#[test]
fn a_fleet_backfill_runs_between_the_rollout_and_contract_with_its_counts_in_status() {
    let tenants = crate::api::TenantsSpec {
        schemas: Some("tenant\\_%".into()),
        max_concurrent: 4,
        ..Default::default()
    };
    let mut fx = Fx::expanded(with_backfill(
        SpecBuilder::new().with(|s| s.tenants = Some(tenants.clone())),
    ));
    // Not before the rollout completed.
    assert_eq!(fx.step().action, Action::None);
    fx.complete(true);
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Backfill, 1));
    // Running: the aggregate progress in status, its counts beside expand's and contract's.
    let counts = |applied: u32, failed: u32, not_run: u32| crate::api::TenantsStatus {
        total: 10,
        applied,
        failed,
        not_run,
        ..Default::default()
    };
    let progress = crate::api::BackfillProgress {
        rows_done: 4_000,
        estimated_rows: 6_000,
        key_range_done_permille: 400,
        rows_per_second: 100,
        tenants: Some(counts(3, 0, 3)),
        ..Default::default()
    };
    fx.backfill_job = JobState::Running(Some(Holdup::Progress(progress)));
    let p = fx.step();
    assert_eq!(phase(&p), Phase::Backfilling);
    let b = p.status.backfill.clone().expect("backfill status");
    assert_eq!(b.run.tenants, Some(counts(3, 0, 3)));
    let kept = b.progress.expect("progress");
    assert_eq!(
        (kept.rows_done, kept.tenants),
        (4_000, None),
        "counts kept once"
    );
    let msg = &cond(&p.status, READY).message;
    assert!(
        msg.contains("backfilled 3 of 10 tenants (4 running, 0 failed; 40.0% of the work)"),
        "{msg}"
    );
    // Halted by a failure: the migration fails with the report's counts; contract waits.
    let mut halted = counts(5, 1, 4);
    halted.halted = Some("1 failed, over the failure budget of 0".into());
    fx.backfill_job = JobState::Failed("backfill done on 5 of 10 tenants; 1 failed".into());
    fx.backfill_tenants = Some(halted.clone());
    let p = fx.step();
    assert_eq!(failure_reason(&p.status), Some(reason::BACKFILL_FAILED));
    assert_eq!(
        p.status
            .backfill
            .as_ref()
            .and_then(|b| b.run.tenants.clone()),
        Some(halted)
    );
    assert_eq!(p.action, Action::None);
    // Retried: a new attempt (only the unfinished tenants have work), then contract.
    fx.retry("1");
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Backfill, 2));
    assert_eq!(
        p.status
            .backfill
            .as_ref()
            .and_then(|b| b.run.tenants.clone()),
        None
    );
    fx.backfill_job = JobState::Succeeded(Some("backfill done on 10 of 10 tenants".into()));
    fx.backfill_tenants = Some(counts(10, 0, 0));
    let p = fx.step();
    assert_eq!(p.action, start(JobPhase::Contract, 1));
    assert_eq!(
        p.status
            .backfill
            .as_ref()
            .and_then(|b| b.run.tenants.clone()),
        Some(counts(10, 0, 0))
    );
}

/// `spec.tenants.servers` with what names one server only — listed standbys, a pooler's admin
/// URL — or with a Secret key used twice (its tenants would run twice) is InvalidSpec before
/// anything runs; `replicas.discover` and a pooler without an admin URL work per server.
#[test]
fn a_fleet_migration_on_several_servers_refuses_what_names_one_server() {
    let tenants: crate::api::TenantsSpec = serde_json::from_value(serde_json::json!({
        "schemas": "tenant\\_%",
        "servers": [{"name": "eu-2", "urlSecretRef": {"name": "db-eu-2", "key": "url"}}]
    }))
    .expect("tenants");
    let key = |name: &str| crate::api::SecretKeyRef {
        name: name.into(),
        key: "url".into(),
    };
    type Edit = Box<dyn Fn(&mut crate::api::DatabaseMigrationSpec)>;
    let refused: Vec<(&str, Edit)> = vec![
        (
            "spec.database.replicas.urlSecretRefs",
            Box::new(move |s| {
                s.database.replicas = Some(crate::api::ReplicasSpec {
                    url_secret_refs: vec![key("standby")],
                    discover: false,
                })
            }),
        ),
        (
            "spec.database.pooler.adminUrlSecretRef",
            Box::new(move |s| {
                s.database.pooler = Some(crate::api::PoolerSpec {
                    admin_url_secret_ref: Some(key("pooler-admin")),
                })
            }),
        ),
        (
            "uses the Secret key shop-db/url of spec.database",
            Box::new(move |s| {
                if let Some(t) = s.tenants.as_mut() {
                    t.servers[0].url_secret_ref = s.database.url_secret_ref.clone();
                }
            }),
        ),
        (
            "listed twice",
            Box::new(move |s| {
                if let Some(t) = s.tenants.as_mut() {
                    let again = t.servers[0].clone();
                    t.servers.push(again);
                }
            }),
        ),
    ];
    for (says, edit) in refused {
        let spec = SpecBuilder::new()
            .with(|s| {
                s.tenants = Some(tenants.clone());
                edit(s);
            })
            .build();
        let p = Fx::new(spec).step();
        assert_eq!(
            failure_reason(&p.status),
            Some(reason::INVALID_SPEC),
            "{says}"
        );
        let message = &cond(&p.status, READY).message;
        assert!(message.contains(says), "{says}: {message}");
    }
    let per_server = SpecBuilder::new()
        .with(|s| {
            s.tenants = Some(tenants.clone());
            s.database.replicas = Some(crate::api::ReplicasSpec {
                url_secret_refs: Vec::new(),
                discover: true,
            });
            s.database.pooler = Some(crate::api::PoolerSpec::default());
        })
        .build();
    assert!(crate::planner::validate::validate(&per_server, true).is_ok());
    assert_eq!(
        Fx::new(per_server).step().action,
        start(JobPhase::Expand, 1)
    );
}

#[test]
fn a_fleet_wave_that_is_neither_a_count_nor_a_share_is_an_invalid_spec() {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let tenants = crate::api::TenantsSpec {
        schemas: Some("tenant\\_%".into()),
        waves: vec![IntOrString::Int(5), IntOrString::String("half".into())],
        ..Default::default()
    };
    let mut fx = Fx::new(
        SpecBuilder::new()
            .with(|s| s.tenants = Some(tenants))
            .build(),
    );
    let p = fx.step();
    assert_eq!(failure_reason(&p.status), Some(reason::INVALID_SPEC));
    let ready = cond(&p.status, READY);
    assert!(
        ready.message.contains("spec.tenants.waves") && ready.message.contains("\"half\""),
        "{ready:?}"
    );
}

#[test]
fn a_running_fleet_phase_shows_its_tenants_so_far_without_an_event_each_time() {
    let tenants = crate::api::TenantsSpec {
        schemas: Some("tenant\\_%".into()),
        max_concurrent: 4,
        ..Default::default()
    };
    let mut fx = Fx::new(
        SpecBuilder::new()
            .with(|s| s.tenants = Some(tenants))
            .build(),
    );
    assert_eq!(fx.step().action, start(JobPhase::Expand, 1));
    let so_far = crate::api::TenantsStatus {
        total: 10_000,
        applied: 4_210,
        failed: 0,
        not_run: 5_790,
        ..Default::default()
    };
    fx.expand_job = JobState::Running(Some(Holdup::Tenants(so_far.clone())));
    let p = fx.step();
    assert_eq!(p.action, Action::None);
    assert!(p.notices.is_empty(), "{:?}", p.notices);
    assert_eq!(
        p.status.expand.as_ref().and_then(|e| e.tenants.clone()),
        Some(so_far.clone())
    );
    let ready = cond(&p.status, READY);
    assert!(
        ready
            .message
            .contains("4210 of 10000 tenant(s) applied so far"),
        "{ready:?}"
    );
    // Counts that move are progress: written at its pace, not on every change.
    let mut later = p.status.clone();
    if let Some(e) = later.expand.as_mut() {
        e.tenants = Some(crate::api::TenantsStatus {
            applied: 4_900,
            not_run: 5_100,
            ..so_far
        });
    }
    assert!(crate::planner::writes::progress_only(&p.status, &later));
}
