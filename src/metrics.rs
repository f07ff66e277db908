//! Prometheus metrics, encoded as OpenMetrics text by `prometheus-client` and served on
//! `/metrics` by [`crate::server`].
//!
//! Every series is low-cardinality: labels are a namespace, a phase, a step, a result or an
//! error reason, never a migration name — except the `phasegate_backfill_*` gauges, which
//! exist only while a migration is in `Backfilling` (a handful at a time, gone at the next
//! scrape once it moves on or is deleted). Values that describe the migrations themselves
//! (`phasegate_migrations`, `phasegate_rollout_wait_seconds`, `phasegate_approval_wait_seconds`,
//! `phasegate_executor_wait_seconds`) are computed from the
//! controller's cache at scrape time, so only the leader reports them; a standby reports them
//! empty and `phasegate_leader 0`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::api::{DatabaseMigration, DatabaseMigrationStatus, Phase, PhaseStatus};
use crate::protocol::log::{throttle_kind, THROTTLE_KINDS};
use crate::protocol::report::Report;

/// The Warning Event reasons that say an executor Job (or its pods) was refused: their
/// series exist from the start at 0, so that `increase()` sees the first refusal.
pub const REFUSAL_REASONS: [&str; 4] = [
    crate::planner::reason::JOB_REJECTED,
    crate::planner::reason::JOB_CONFLICT,
    crate::planner::reason::POLICY_REFUSED,
    crate::planner::reason::JOB_STUCK,
];

/// Every phase, so that a namespace's gauge shows zeros rather than missing series.
pub const PHASES: [Phase; 9] = [
    Phase::Pending,
    Phase::Expanding,
    Phase::AwaitingRollout,
    Phase::Soaking,
    Phase::AwaitingApproval,
    Phase::Backfilling,
    Phase::Contracting,
    Phase::Succeeded,
    Phase::Failed,
];

/// Buckets of phase durations: a second to a day (rollout waits can be long).
const DURATION_BUCKETS: [f64; 14] = [
    1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
];
/// Buckets of one reconcile: a millisecond to half a minute.
const RECONCILE_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub namespace: String,
    pub phase: String,
}

/// Tenants of fleet migrations: `phase` `expand`, `backfill` or `contract`, `state` `applied`, `failed` or
/// `not_run`, summed over a namespace (never a label per tenant or per migration).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct TenantLabels {
    pub namespace: String,
    pub phase: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

/// `step`: `expand`, `rollout_wait` or `contract`; `result`: `succeeded` or `failed`
/// (a rollout wait fails when it times out).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub step: String,
    pub result: String,
}

/// `phase`: the executor Job's phase (`expand`, `contract`, `backfill`); `waiting`: what it
/// waits on (`advisory-lock`, `table-lock`, `database-check`, `commit-grant`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct WaitLabels {
    pub namespace: String,
    pub phase: String,
    pub waiting: String,
}

/// `phase`: the executor Job's phase, `expand` or `contract`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub phase: String,
}

/// One migration. Only for migrations in `Backfilling`, so the set stays small.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MigrationLabels {
    pub namespace: String,
    pub migration: String,
}

/// `reason`: one of [`THROTTLE_KINDS`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ThrottleLabels {
    pub namespace: String,
    pub migration: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The operator's metrics. Cheap to share behind an `Arc`; every metric is internally atomic.
pub struct Metrics {
    registry: Registry,
    /// The controller's cache of migrations, set by the leader once its controller runs.
    store: Mutex<Option<Store<DatabaseMigration>>>,
    /// Serialises refresh + encode of the scrape-time gauges.
    scrape: Mutex<()>,
    pub migrations: Family<PhaseLabels, Gauge>,
    pub rollout_wait: Family<NamespaceLabels, Gauge<f64, AtomicU64>>,
    pub approval_wait: Family<NamespaceLabels, Gauge<f64, AtomicU64>>,
    pub executor_wait: Family<WaitLabels, Gauge<f64, AtomicU64>>,
    pub tenants: Family<TenantLabels, Gauge>,
    pub backfill_rows_done: Family<MigrationLabels, Gauge>,
    pub backfill_rows_estimated: Family<MigrationLabels, Gauge>,
    pub backfill_rows_per_second: Family<MigrationLabels, Gauge>,
    pub backfill_key_range_done: Family<MigrationLabels, Gauge<f64, AtomicU64>>,
    pub backfill_throttled: Family<ThrottleLabels, Gauge>,
    pub phase_duration: HistogramFamily<StepLabels>,
    pub lock_retries: Family<JobLabels, Counter>,
    pub lock_wait: Family<JobLabels, Counter<f64, AtomicU64>>,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ReasonLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub leader: Gauge,
    /// Commit grants answered, by verdict (`Granted`, `Withheld`, `Superseded`).
    pub commit_grants: Family<ReasonLabels, Counter>,
    /// Warning Events published, by reason (the fixed set of `planner::reason`).
    pub warning_events: Family<ReasonLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("phasegate");
        let migrations = Family::<PhaseLabels, Gauge>::default();
        let rollout_wait = Family::<NamespaceLabels, Gauge<f64, AtomicU64>>::default();
        let approval_wait = Family::<NamespaceLabels, Gauge<f64, AtomicU64>>::default();
        let executor_wait = Family::<WaitLabels, Gauge<f64, AtomicU64>>::default();
        let tenants = Family::<TenantLabels, Gauge>::default();
        let warning_events = Family::<ReasonLabels, Counter>::default();
        let backfill_rows_done = Family::<MigrationLabels, Gauge>::default();
        let backfill_rows_estimated = Family::<MigrationLabels, Gauge>::default();
        let backfill_rows_per_second = Family::<MigrationLabels, Gauge>::default();
        let backfill_key_range_done = Family::<MigrationLabels, Gauge<f64, AtomicU64>>::default();
        let backfill_throttled = Family::<ThrottleLabels, Gauge>::default();
        let phase_duration: HistogramFamily<StepLabels> =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        let lock_retries = Family::<JobLabels, Counter>::default();
        let lock_wait = Family::<JobLabels, Counter<f64, AtomicU64>>::default();
        let reconciles = Counter::default();
        let reconcile_errors = Family::<ReasonLabels, Counter>::default();
        let reconcile_duration = Histogram::new(RECONCILE_BUCKETS);
        let leader = Gauge::default();

        registry.register(
            "migrations",
            "DatabaseMigrations by namespace and phase (reported by the leader, from its cache)",
            migrations.clone(),
        );
        registry.register_with_unit(
            "rollout_wait",
            "Longest current wait for a rollout among the namespace's migrations in AwaitingRollout",
            Unit::Seconds,
            rollout_wait.clone(),
        );
        registry.register_with_unit(
            "approval_wait",
            "Longest current wait for approval among the namespace's migrations in AwaitingApproval",
            Unit::Seconds,
            approval_wait.clone(),
        );
        registry.register_with_unit(
            "executor_wait",
            "Longest current wait of a running executor, by Job phase and what it waits on (label waiting)",
            Unit::Seconds,
            executor_wait.clone(),
        );
        registry.register(
            "tenants",
            "Tenants of fleet migrations (spec.tenants) by phase (expand, backfill, contract) and state in the latest attempt (applied, failed, not_run), summed per namespace",
            tenants.clone(),
        );
        registry.register(
            "warning_events",
            "Warning Events the operator published, by reason (e.g. JobRejected, JobStuck, PolicyRefused)",
            warning_events.clone(),
        );
        registry.register(
            "backfill_rows_done",
            "Rows the running backfill has changed in this rollout epoch (migrations in Backfilling)",
            backfill_rows_done.clone(),
        );
        registry.register(
            "backfill_rows_estimated",
            "The backfilled table's estimated row count (pg_class.reltuples)",
            backfill_rows_estimated.clone(),
        );
        registry.register(
            "backfill_rows_per_second",
            "Rows per second of the running backfill attempt (0 while no attempt runs, e.g. paused)",
            backfill_rows_per_second.clone(),
        );
        registry.register(
            "backfill_key_range_done_ratio",
            "Share of the backfill's key range walked, 0 to 1",
            backfill_key_range_done.clone(),
        );
        registry.register(
            "backfill_throttled",
            "1 for the reason the running backfill holds off now, 0 for the others",
            backfill_throttled.clone(),
        );
        registry.register_with_unit(
            "phase_duration",
            "Duration of finished steps (expand, rollout_wait, contract) from status timestamps",
            Unit::Seconds,
            phase_duration.clone(),
        );
        registry.register(
            "executor_lock_retries",
            "Transaction attempts the executor rolled back on a lock timeout or deadlock",
            lock_retries.clone(),
        );
        registry.register_with_unit(
            "executor_lock_wait",
            "Time the executor waited outside the lock queue and for the migration advisory lock",
            Unit::Seconds,
            lock_wait.clone(),
        );
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by reason",
            reconcile_errors.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Duration of one reconcile",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and runs the controller",
            leader.clone(),
        );
        for reason in REFUSAL_REASONS {
            warning_events
                .get_or_create(&ReasonLabels {
                    reason: reason.to_string(),
                })
                .inc_by(0);
        }
        let commit_grants = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "commit_grants",
            "Commit grant requests of contract executors answered, by verdict (label reason)",
            commit_grants.clone(),
        );

        Metrics {
            registry,
            store: Mutex::new(None),
            scrape: Mutex::new(()),
            migrations,
            rollout_wait,
            approval_wait,
            executor_wait,
            tenants,
            backfill_rows_done,
            backfill_rows_estimated,
            backfill_rows_per_second,
            backfill_key_range_done,
            backfill_throttled,
            phase_duration,
            lock_retries,
            lock_wait,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            leader,
            commit_grants,
            warning_events,
        }
    }

    /// Report the migrations of this cache (the leader's controller store); `None` on a standby.
    pub fn set_store(&self, store: Option<Store<DatabaseMigration>>) {
        *self.store.lock().unwrap_or_else(|e| e.into_inner()) = store;
    }

    /// A failed reconcile, by [`crate::controller::Error::reason`].
    pub fn reconcile_failed(&self, reason: &str) {
        self.reconcile_errors
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// A Warning Event published (`reason` is one of `planner::reason`'s constants).
    pub fn warning_event(&self, reason: &str) {
        self.warning_events
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// A commit grant request answered.
    pub fn record_grant(&self, verdict: crate::protocol::grant::Verdict) {
        self.commit_grants
            .get_or_create(&ReasonLabels {
                reason: format!("{verdict:?}"),
            })
            .inc();
    }

    /// Record what changed between the status a reconcile read and the one it wrote: finished
    /// expand/contract attempts (duration, and the executor's lock figures from its report) and a
    /// rollout wait that completed or timed out. Call only after the status write succeeded, so a
    /// transition is counted once, whichever replica or restart observes it.
    pub fn record_transition(
        &self,
        before: &DatabaseMigrationStatus,
        after: &DatabaseMigrationStatus,
        expand_report: Option<&Report>,
        contract_report: Option<&Report>,
    ) {
        for (step, b, a, report) in [
            ("expand", &before.expand, &after.expand, expand_report),
            (
                "contract",
                &before.contract,
                &after.contract,
                contract_report,
            ),
        ] {
            let Some(a) = a else { continue };
            if !newly_finished(b.as_ref(), a) {
                continue;
            }
            if let Some(secs) = seconds_between(a.started_at.as_ref(), a.finished_at.as_ref()) {
                self.observe_step(step, a.succeeded, secs);
            }
            if let Some(r) = report {
                let labels = JobLabels {
                    phase: step.to_string(),
                };
                self.lock_retries
                    .get_or_create(&labels)
                    .inc_by(r.lock_retries.into());
                self.lock_wait
                    .get_or_create(&labels)
                    .inc_by(r.lock_wait_ms as f64 / 1000.0);
            }
        }
        let started = after.rollout_started_at.as_ref();
        if after.rollout_completed_at.is_some()
            && after.rollout_completed_at != before.rollout_completed_at
        {
            if let Some(secs) = seconds_between(started, after.rollout_completed_at.as_ref()) {
                self.observe_step("rollout_wait", true, secs);
            }
        }
        if after.rollout_timed_out_at.is_some()
            && after.rollout_timed_out_at != before.rollout_timed_out_at
        {
            if let Some(secs) = seconds_between(started, after.rollout_timed_out_at.as_ref()) {
                self.observe_step("rollout_wait", false, secs);
            }
        }
    }

    fn observe_step(&self, step: &str, succeeded: bool, secs: f64) {
        let result = if succeeded { "succeeded" } else { "failed" };
        self.phase_duration
            .get_or_create(&StepLabels {
                step: step.to_string(),
                result: result.to_string(),
            })
            .observe(secs);
    }

    /// Recompute the gauges that describe the cached migrations.
    fn refresh(&self, now: Timestamp) {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.migrations.clear();
        self.rollout_wait.clear();
        self.approval_wait.clear();
        self.executor_wait.clear();
        self.tenants.clear();
        // Rebuilt from the cache at every scrape: a finished, failed or deleted backfill
        // leaves no stale series behind.
        self.backfill_rows_done.clear();
        self.backfill_rows_estimated.clear();
        self.backfill_rows_per_second.clear();
        self.backfill_key_range_done.clear();
        self.backfill_throttled.clear();
        let Some(store) = store else { return };
        let mut by_ns: BTreeMap<String, NamespaceFigures> = BTreeMap::new();
        let mut waits: BTreeMap<WaitLabels, f64> = BTreeMap::new();
        let mut tenants: BTreeMap<TenantLabels, i64> = BTreeMap::new();
        for m in store.state() {
            let namespace = m.namespace().unwrap_or_default();
            let entry = by_ns.entry(namespace.clone()).or_default();
            let status = m.status.as_ref();
            let phase = status.and_then(|s| s.phase).unwrap_or(Phase::Pending);
            if let Some(i) = PHASES.iter().position(|p| *p == phase) {
                entry.counts[i] += 1;
            }
            if phase == Phase::Backfilling {
                self.set_backfill(&namespace, &m.name_any(), status);
            }
            let Some(status) = status else { continue };
            add_tenants(&mut tenants, &namespace, status);
            let since = |t: Option<Timestamp>| t.map_or(0.0, |t| seconds_since(t, now));
            match phase {
                Phase::AwaitingRollout => {
                    let started = status.rollout_started_at.as_ref().map(|t| t.0);
                    entry.rollout_wait = entry.rollout_wait.max(since(started));
                }
                Phase::AwaitingApproval => {
                    entry.approval_wait = entry.approval_wait.max(since(approval_since(status)));
                }
                _ => {}
            }
            if let Some((labels, t)) = executor_waiting(&namespace, phase, status) {
                let w = waits.entry(labels).or_default();
                *w = w.max(seconds_since(t, now));
            }
        }
        for (labels, n) in tenants {
            self.tenants.get_or_create(&labels).set(n);
        }
        for (namespace, fig) in by_ns {
            for (phase, n) in PHASES.iter().zip(fig.counts) {
                self.migrations
                    .get_or_create(&PhaseLabels {
                        namespace: namespace.clone(),
                        phase: phase.as_str().to_string(),
                    })
                    .set(n);
            }
            let labels = NamespaceLabels { namespace };
            self.rollout_wait
                .get_or_create(&labels)
                .set(fig.rollout_wait);
            self.approval_wait
                .get_or_create(&labels)
                .set(fig.approval_wait);
        }
        for (labels, secs) in waits {
            self.executor_wait.get_or_create(&labels).set(secs);
        }
    }

    /// The backfill gauges of one migration in `Backfilling`, from the progress its executor
    /// last reported (none before the first progress line).
    fn set_backfill(
        &self,
        namespace: &str,
        migration: &str,
        status: Option<&DatabaseMigrationStatus>,
    ) {
        let Some(b) = status.and_then(|s| s.backfill.as_ref()) else {
            return;
        };
        let Some(p) = b.progress.as_ref() else { return };
        // The progress of a stopped attempt (paused, gate closed, waiting for a retry) stays in
        // status; its rate and throttle reason are not current.
        let running = b.run.started_at.is_some() && b.run.finished_at.is_none();
        let labels = MigrationLabels {
            namespace: namespace.to_string(),
            migration: migration.to_string(),
        };
        self.backfill_rows_done
            .get_or_create(&labels)
            .set(p.rows_done);
        self.backfill_rows_estimated
            .get_or_create(&labels)
            .set(p.estimated_rows);
        self.backfill_rows_per_second
            .get_or_create(&labels)
            .set(if running { p.rows_per_second } else { 0 });
        self.backfill_key_range_done
            .get_or_create(&labels)
            .set(p.key_range_done_permille.clamp(0, 1000) as f64 / 1000.0);
        let current = p
            .throttled
            .as_deref()
            .filter(|_| running)
            .map(throttle_kind);
        for kind in THROTTLE_KINDS {
            self.backfill_throttled
                .get_or_create(&ThrottleLabels {
                    namespace: namespace.to_string(),
                    migration: migration.to_string(),
                    reason: kind.to_string(),
                })
                .set(i64::from(current == Some(kind)));
        }
    }

    /// The OpenMetrics text of every metric (scrape-time gauges refreshed first).
    pub fn encode(&self) -> String {
        let _guard = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(Timestamp::now());
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What the scrape-time gauges of one namespace add up.
#[derive(Default)]
struct NamespaceFigures {
    counts: [i64; PHASES.len()],
    rollout_wait: f64,
    approval_wait: f64,
}

/// Adds a fleet migration's tenant counts (its latest expand, backfill and contract attempts;
/// a running backfill's so far).
fn add_tenants(
    into: &mut BTreeMap<TenantLabels, i64>,
    namespace: &str,
    status: &DatabaseMigrationStatus,
) {
    let backfill = status.backfill.as_ref().map(|b| &b.run);
    for (phase, rec) in [
        ("expand", status.expand.as_ref()),
        ("backfill", backfill),
        ("contract", status.contract.as_ref()),
    ] {
        let Some(t) = rec.and_then(|r| r.tenants.as_ref()) else {
            continue;
        };
        for (state, n) in [
            ("applied", t.applied),
            ("failed", t.failed),
            ("not_run", t.not_run),
        ] {
            let labels = TenantLabels {
                namespace: namespace.to_string(),
                phase: phase.to_string(),
                state: state.to_string(),
            };
            *into.entry(labels).or_default() += i64::from(n);
        }
    }
}

fn seconds_since(t: Timestamp, now: Timestamp) -> f64 {
    now.duration_since(t).as_secs_f64().max(0.0)
}

/// When a migration in `AwaitingApproval` began to wait: once the rollout completed, the soak
/// ended and the backfill finished, whichever came last.
fn approval_since(status: &DatabaseMigrationStatus) -> Option<Timestamp> {
    let backfilled = status
        .backfill
        .as_ref()
        .and_then(|b| b.run.finished_at.as_ref());
    [
        status.rollout_completed_at.as_ref(),
        status.contract_not_before.as_ref(),
        backfilled,
    ]
    .into_iter()
    .flatten()
    .map(|t| t.0)
    .max()
}

/// What the running executor of a migration waits on, and since when, from the wait its
/// status message carries (the operator copies it there from the executor's log).
fn executor_waiting(
    namespace: &str,
    phase: Phase,
    status: &DatabaseMigrationStatus,
) -> Option<(WaitLabels, Timestamp)> {
    let job_phase = match phase {
        Phase::Expanding => "expand",
        Phase::Contracting => "contract",
        Phase::Backfilling => "backfill",
        _ => return None,
    };
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    let (kind, since) = crate::protocol::log::wait_in_message(&ready.message)?;
    let labels = WaitLabels {
        namespace: namespace.to_string(),
        phase: job_phase.to_string(),
        waiting: kind.as_str().to_string(),
    };
    Some((labels, since))
}

fn newly_finished(before: Option<&PhaseStatus>, after: &PhaseStatus) -> bool {
    after.finished_at.is_some()
        && before.is_none_or(|b| b.finished_at != after.finished_at || b.attempts != after.attempts)
}

fn seconds_between(from: Option<&Time>, to: Option<&Time>) -> Option<f64> {
    let (from, to) = (from?, to?);
    Some(to.0.duration_since(from.0).as_secs_f64().max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::report::Outcome;

    fn t(s: &str) -> Option<Time> {
        Some(Time(s.parse().expect("timestamp")))
    }

    fn report(lock_retries: u32, lock_wait_ms: u64) -> Report {
        Report {
            statements: 1,
            attempts: lock_retries + 1,
            lock_retries,
            lock_wait_ms,
            duration_ms: 10,
            ..Report::new(Outcome::Applied, "expand")
        }
    }

    fn lines(text: &str, prefix: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn encodes_openmetrics_with_prefix_units_and_eof() {
        let m = Metrics::new();
        m.reconciles.inc();
        m.reconcile_failed("KubeApi");
        m.reconcile_failed("KubeApi");
        m.leader.set(1);
        let text = m.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("# TYPE phasegate_reconciles counter\n"),
            "{text}"
        );
        assert!(text.contains("\nphasegate_reconciles_total 1\n"), "{text}");
        assert!(
            text.contains("\nphasegate_reconcile_errors_total{reason=\"KubeApi\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("\nphasegate_leader 1\n"), "{text}");
        assert!(
            text.contains("# TYPE phasegate_reconcile_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("# UNIT phasegate_reconcile_duration_seconds seconds\n"),
            "{text}"
        );
        // Families without a series yet are left out entirely.
        assert!(!text.contains("phasegate_migrations"), "{text}");
    }

    #[test]
    fn finished_phases_record_durations_and_lock_figures_once() {
        let m = Metrics::new();
        let running = DatabaseMigrationStatus {
            expand: Some(PhaseStatus {
                attempts: 1,
                started_at: t("2025-01-01T00:00:00Z"),
                ..Default::default()
            }),
            ..Default::default()
        };
        let expanded = DatabaseMigrationStatus {
            expand: Some(PhaseStatus {
                attempts: 1,
                started_at: t("2025-01-01T00:00:00Z"),
                finished_at: t("2025-01-01T00:00:04Z"),
                succeeded: true,
                ..Default::default()
            }),
            rollout_started_at: t("2025-01-01T00:00:04Z"),
            ..Default::default()
        };
        let r = report(3, 1500);
        m.record_transition(&running, &expanded, Some(&r), None);
        // The same status observed again (another reconcile, a restart) adds nothing.
        m.record_transition(&expanded, &expanded, Some(&r), None);
        let text = m.encode();
        assert_eq!(
            lines(&text, "phasegate_executor_lock_retries_total"),
            ["phasegate_executor_lock_retries_total{phase=\"expand\"} 3"]
        );
        assert_eq!(
            lines(&text, "phasegate_executor_lock_wait_seconds_total"),
            ["phasegate_executor_lock_wait_seconds_total{phase=\"expand\"} 1.5"]
        );
        assert!(
            text.contains(
                "phasegate_phase_duration_seconds_count{step=\"expand\",result=\"succeeded\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "phasegate_phase_duration_seconds_sum{step=\"expand\",result=\"succeeded\"} 4.0\n"
            ),
            "{text}"
        );
        assert!(text.contains("phasegate_phase_duration_seconds_bucket{le=\"5.0\",step=\"expand\",result=\"succeeded\"} 1\n"), "{text}");
        assert!(text.contains("phasegate_phase_duration_seconds_bucket{le=\"2.0\",step=\"expand\",result=\"succeeded\"} 0\n"), "{text}");

        let rolled = DatabaseMigrationStatus {
            rollout_completed_at: t("2025-01-01T00:10:04Z"),
            ..expanded.clone()
        };
        m.record_transition(&expanded, &rolled, None, None);
        let failed_contract = DatabaseMigrationStatus {
            contract: Some(PhaseStatus {
                attempts: 1,
                started_at: t("2025-01-01T00:11:00Z"),
                finished_at: t("2025-01-01T00:11:30Z"),
                succeeded: false,
                ..Default::default()
            }),
            ..rolled.clone()
        };
        m.record_transition(&rolled, &failed_contract, None, None);
        let text = m.encode();
        assert!(text.contains("phasegate_phase_duration_seconds_sum{step=\"rollout_wait\",result=\"succeeded\"} 600.0\n"), "{text}");
        assert!(
            text.contains(
                "phasegate_phase_duration_seconds_sum{step=\"contract\",result=\"failed\"} 30.0\n"
            ),
            "{text}"
        );
        // A retry is a new attempt: it finishes again and is counted again.
        let retried = DatabaseMigrationStatus {
            contract: Some(PhaseStatus {
                attempts: 2,
                started_at: t("2025-01-01T00:12:00Z"),
                finished_at: t("2025-01-01T00:12:02Z"),
                succeeded: true,
                ..Default::default()
            }),
            ..rolled
        };
        m.record_transition(&failed_contract, &retried, None, Some(&report(0, 0)));
        let text = m.encode();
        assert!(text.contains("phasegate_phase_duration_seconds_count{step=\"contract\",result=\"succeeded\"} 1\n"), "{text}");
        assert_eq!(
            lines(
                &text,
                "phasegate_executor_lock_retries_total{phase=\"contract\"}"
            ),
            ["phasegate_executor_lock_retries_total{phase=\"contract\"} 0"]
        );
    }

    #[test]
    fn a_rollout_timeout_is_a_failed_wait() {
        let m = Metrics::new();
        let waiting = DatabaseMigrationStatus {
            rollout_started_at: t("2025-01-01T00:00:00Z"),
            ..Default::default()
        };
        let timed_out = DatabaseMigrationStatus {
            rollout_timed_out_at: t("2025-01-01T01:00:00Z"),
            ..waiting.clone()
        };
        m.record_transition(&waiting, &timed_out, None, None);
        let text = m.encode();
        assert!(text.contains("phasegate_phase_duration_seconds_sum{step=\"rollout_wait\",result=\"failed\"} 3600.0\n"), "{text}");
    }

    #[test]
    fn phase_gauge_counts_cached_migrations_by_namespace_with_zeros() {
        use kube::runtime::reflector::store;
        use kube::runtime::watcher;
        let m = Metrics::new();
        let (reader, mut writer) = store::<DatabaseMigration>();
        let mk = |ns: &str, name: &str, phase: Option<Phase>, started: Option<Time>| {
            let mut dbm: DatabaseMigration = serde_json::from_value(serde_json::json!({
                "apiVersion": "phasegate.dev/v1alpha1",
                "kind": "DatabaseMigration",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "appVersion": "2.0.0",
                    "database": {"urlSecretRef": {"name": "db", "key": "url"}},
                    "expand": {"sql": "SELECT 1"},
                    "contract": {"sql": "SELECT 1"},
                    "rollout": {"targets": [{"kind": "Deployment", "name": "api"}]}
                }
            }))
            .expect("migration");
            dbm.status = Some(DatabaseMigrationStatus {
                phase,
                rollout_started_at: started,
                ..Default::default()
            });
            dbm
        };
        let started = Some(Time(
            Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(90),
        ));
        for obj in [
            mk("shop", "a", Some(Phase::AwaitingRollout), started),
            mk("shop", "b", Some(Phase::Succeeded), None),
            mk("shop", "c", Some(Phase::Succeeded), None),
            mk("billing", "d", None, None),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(obj));
        }
        // A standby has no cache: no series.
        assert!(lines(&m.encode(), "phasegate_migrations{").is_empty());
        m.set_store(Some(reader.clone()));
        let text = m.encode();
        let got = lines(&text, "phasegate_migrations{");
        assert_eq!(
            got.len(),
            2 * PHASES.len(),
            "every phase of every namespace: {got:?}"
        );
        assert!(
            got.contains(
                &"phasegate_migrations{namespace=\"shop\",phase=\"Succeeded\"} 2".to_string()
            ),
            "{got:?}"
        );
        assert!(
            got.contains(
                &"phasegate_migrations{namespace=\"shop\",phase=\"AwaitingRollout\"} 1".to_string()
            ),
            "{got:?}"
        );
        assert!(
            got.contains(
                &"phasegate_migrations{namespace=\"shop\",phase=\"Failed\"} 0".to_string()
            ),
            "{got:?}"
        );
        assert!(
            got.contains(
                &"phasegate_migrations{namespace=\"billing\",phase=\"Pending\"} 1".to_string()
            ),
            "{got:?}"
        );
        let wait = lines(&text, "phasegate_rollout_wait_seconds{namespace=\"shop\"}");
        let secs: f64 = wait[0]
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("value");
        assert!((89.0..120.0).contains(&secs), "{wait:?}");
        // Deleted migrations disappear at the next scrape.
        writer.apply_watcher_event(&watcher::Event::Delete(mk("billing", "d", None, None)));
        assert!(lines(&m.encode(), "phasegate_migrations{namespace=\"billing\"").is_empty());
    }

    fn backfilling(
        ns: &str,
        name: &str,
        phase: Phase,
        running: bool,
        progress: Option<crate::api::BackfillProgress>,
    ) -> DatabaseMigration {
        let mut dbm: DatabaseMigration = serde_json::from_value(serde_json::json!({
            "apiVersion": "phasegate.dev/v1alpha1",
            "kind": "DatabaseMigration",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "appVersion": "2.0.0",
                "database": {"urlSecretRef": {"name": "db", "key": "url"}},
                "expand": {"sql": "SELECT 1"},
                "backfill": {"table": "users", "key": "id", "sql": "SELECT $1::bigint, $2::bigint"},
                "contract": {"sql": "SELECT 1"},
                "rollout": {"targets": [{"kind": "Deployment", "name": "api"}]}
            }
        }))
        .expect("migration");
        dbm.status = Some(DatabaseMigrationStatus {
            phase: Some(phase),
            backfill: Some(crate::api::BackfillStatus {
                run: PhaseStatus {
                    attempts: 1,
                    started_at: t("2025-01-01T00:00:00Z"),
                    finished_at: if running {
                        None
                    } else {
                        t("2025-01-01T00:01:00Z")
                    },
                    ..Default::default()
                },
                progress,
                ..Default::default()
            }),
            ..Default::default()
        });
        dbm
    }

    #[test]
    fn backfill_progress_gauges_per_running_backfill_and_none_once_finished_or_deleted() {
        use kube::runtime::reflector::store;
        use kube::runtime::watcher;
        let m = Metrics::new();
        let (reader, mut writer) = store::<DatabaseMigration>();
        m.set_store(Some(reader));
        let progress = crate::api::BackfillProgress {
            rows_done: 412_000,
            estimated_rows: 1_000_000,
            key_range_done_permille: 412,
            batches: 83,
            batch_size: 6400,
            rows_per_second: 20_500,
            eta_seconds: Some(29),
            throttled: Some(
                "1 session(s) wait for a lock on the table; letting them go first".into(),
            ),
            tenants: None,
        };
        let running = backfilling(
            "shop",
            "fill",
            Phase::Backfilling,
            true,
            Some(progress.clone()),
        );
        writer.apply_watcher_event(&watcher::Event::Apply(running.clone()));
        // Started, no progress line read yet: no series.
        writer.apply_watcher_event(&watcher::Event::Apply(backfilling(
            "shop",
            "starting",
            Phase::Backfilling,
            true,
            None,
        )));
        // Finished (the phase moved on; progress is kept in status): no series.
        writer.apply_watcher_event(&watcher::Event::Apply(backfilling(
            "shop",
            "done",
            Phase::Soaking,
            false,
            Some(progress.clone()),
        )));
        let text = m.encode();
        let l = "{namespace=\"shop\",migration=\"fill\"}";
        assert_eq!(
            lines(&text, "phasegate_backfill_rows_done"),
            [format!("phasegate_backfill_rows_done{l} 412000")]
        );
        assert_eq!(
            lines(&text, "phasegate_backfill_rows_estimated"),
            [format!("phasegate_backfill_rows_estimated{l} 1000000")]
        );
        assert_eq!(
            lines(&text, "phasegate_backfill_rows_per_second"),
            [format!("phasegate_backfill_rows_per_second{l} 20500")]
        );
        assert_eq!(
            lines(&text, "phasegate_backfill_key_range_done_ratio"),
            [format!("phasegate_backfill_key_range_done_ratio{l} 0.412")]
        );
        let throttled = lines(&text, "phasegate_backfill_throttled{");
        assert_eq!(throttled.len(), THROTTLE_KINDS.len(), "{throttled:?}");
        for reason in THROTTLE_KINDS {
            let v = if reason == "lock_waiters" { 1 } else { 0 };
            let want = format!(
                "phasegate_backfill_throttled{{namespace=\"shop\",migration=\"fill\",reason=\"{reason}\"}} {v}"
            );
            assert!(throttled.contains(&want), "{want} in {throttled:?}");
        }

        // Paused (no attempt runs): the series stay, the rate and throttling read 0.
        writer.apply_watcher_event(&watcher::Event::Apply(backfilling(
            "shop",
            "fill",
            Phase::Backfilling,
            false,
            Some(progress.clone()),
        )));
        let text = m.encode();
        assert_eq!(
            lines(&text, "phasegate_backfill_rows_per_second"),
            [format!("phasegate_backfill_rows_per_second{l} 0")]
        );
        assert!(
            lines(&text, "phasegate_backfill_throttled{")
                .iter()
                .all(|s| s.ends_with(" 0")),
            "{text}"
        );
        assert_eq!(
            lines(&text, "phasegate_backfill_rows_done"),
            [format!("phasegate_backfill_rows_done{l} 412000")]
        );

        // Finished: every series of the migration is gone at the next scrape.
        writer.apply_watcher_event(&watcher::Event::Apply(backfilling(
            "shop",
            "fill",
            Phase::Soaking,
            false,
            Some(progress.clone()),
        )));
        assert!(lines(&m.encode(), "phasegate_backfill_").is_empty());

        // Deleted while running: gone too.
        writer.apply_watcher_event(&watcher::Event::Apply(running.clone()));
        assert!(!lines(&m.encode(), "phasegate_backfill_rows_done").is_empty());
        writer.apply_watcher_event(&watcher::Event::Delete(running));
        assert!(lines(&m.encode(), "phasegate_backfill_").is_empty());
        // A standby reports none.
        m.set_store(None);
        assert!(lines(&m.encode(), "phasegate_backfill_").is_empty());
    }

    #[test]
    fn throttle_messages_map_to_a_fixed_set_of_reasons() {
        for (msg, want) in [
            (
                "replication lag 12.3s exceeds maxReplicationLag 10s",
                "replication_lag",
            ),
            (
                "2 session(s) wait for a lock on the table; letting them go first",
                "lock_waiters",
            ),
            ("lock timeout (1s) on the table, retry 3", "lock_timeout"),
            ("deadlock, retry 1", "deadlock"),
            (
                "statement timeout, retry 2 with a smaller batch",
                "statement_timeout",
            ),
            ("batch took 950 ms, target 200 ms", "slow_batch"),
            ("something a newer executor says", "other"),
        ] {
            assert_eq!(crate::protocol::log::throttle_kind(msg), want, "{msg}");
            assert!(THROTTLE_KINDS.contains(&want));
        }
    }

    fn migration_in(ns: &str, name: &str, status: DatabaseMigrationStatus) -> DatabaseMigration {
        let mut dbm = backfilling(ns, name, Phase::Pending, false, None);
        dbm.status = Some(status);
        dbm
    }

    fn ready(message: String) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: "Contracting".into(),
            message,
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::now()),
        }]
    }

    fn ago(secs: i64) -> Option<Time> {
        Some(Time(
            Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(secs),
        ))
    }

    fn seconds(text: &str, series: &str) -> f64 {
        let got = lines(text, &format!("{series} "));
        got.first()
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{series} in {text}"))
    }

    #[test]
    fn approval_and_executor_waits_are_the_longest_current_ones() {
        use kube::runtime::reflector::store;
        use kube::runtime::watcher;
        let m = Metrics::new();
        let (reader, mut writer) = store::<DatabaseMigration>();
        m.set_store(Some(reader));
        let waiting = |secs: i64| {
            let since = ago(secs).map(|t| t.0.round(jiff::Unit::Second).expect("round"));
            format!(
                "contract Job attempt 1 is running; waiting for old sessions or transactions \
                 (database check) since {}: pid 7 shop-api@1.0.0 (and 1 more)",
                since.expect("since")
            )
        };
        for obj in [
            // Approval waits from the last of rollout, soak and backfill.
            migration_in(
                "shop",
                "a",
                DatabaseMigrationStatus {
                    phase: Some(Phase::AwaitingApproval),
                    rollout_completed_at: ago(900),
                    contract_not_before: ago(600),
                    ..Default::default()
                },
            ),
            migration_in(
                "shop",
                "b",
                DatabaseMigrationStatus {
                    phase: Some(Phase::AwaitingApproval),
                    rollout_completed_at: ago(300),
                    ..Default::default()
                },
            ),
            migration_in(
                "shop",
                "c",
                DatabaseMigrationStatus {
                    phase: Some(Phase::Contracting),
                    conditions: ready(waiting(120)),
                    ..Default::default()
                },
            ),
            migration_in(
                "shop",
                "d",
                DatabaseMigrationStatus {
                    phase: Some(Phase::Contracting),
                    conditions: ready(waiting(30)),
                    ..Default::default()
                },
            ),
            // A message that no longer describes a running Job is not a wait.
            migration_in(
                "billing",
                "e",
                DatabaseMigrationStatus {
                    phase: Some(Phase::Failed),
                    conditions: ready(waiting(500)),
                    ..Default::default()
                },
            ),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(obj));
        }
        let text = m.encode();
        let approval = seconds(&text, "phasegate_approval_wait_seconds{namespace=\"shop\"}");
        assert!((599.0..620.0).contains(&approval), "{text}");
        assert_eq!(
            seconds(
                &text,
                "phasegate_approval_wait_seconds{namespace=\"billing\"}"
            ),
            0.0
        );
        let wait = seconds(
            &text,
            "phasegate_executor_wait_seconds{namespace=\"shop\",phase=\"contract\",waiting=\"database-check\"}",
        );
        assert!((119.0..140.0).contains(&wait), "{text}");
        assert_eq!(
            lines(&text, "phasegate_executor_wait_seconds{").len(),
            1,
            "{text}"
        );
        // The wait over (status says the Job runs, nothing more): the series goes.
        writer.apply_watcher_event(&watcher::Event::Delete(migration_in(
            "shop",
            "d",
            Default::default(),
        )));
        writer.apply_watcher_event(&watcher::Event::Apply(migration_in(
            "shop",
            "c",
            DatabaseMigrationStatus {
                phase: Some(Phase::Contracting),
                conditions: ready("contract Job attempt 1 is running".into()),
                ..Default::default()
            },
        )));
        assert!(lines(&m.encode(), "phasegate_executor_wait_seconds{").is_empty());
    }

    #[test]
    fn warning_events_are_counted_by_reason() {
        let m = Metrics::new();
        m.warning_event("JobRejected");
        m.warning_event("JobStuck");
        m.warning_event("JobStuck");
        m.warning_event("RolloutTimeout");
        let mut got = lines(&m.encode(), "phasegate_warning_events_total{");
        got.sort();
        // The refusals exist at 0 before the first one, so increase() counts it.
        assert_eq!(
            got,
            [
                "phasegate_warning_events_total{reason=\"JobConflict\"} 0",
                "phasegate_warning_events_total{reason=\"JobRejected\"} 1",
                "phasegate_warning_events_total{reason=\"JobStuck\"} 2",
                "phasegate_warning_events_total{reason=\"PolicyRefused\"} 0",
                "phasegate_warning_events_total{reason=\"RolloutTimeout\"} 1",
            ]
        );
    }

    /// Every family with one series, so that the text names every sample the operator can
    /// export (a family without series is left out of the text).
    fn every_family() -> Metrics {
        let m = Metrics::new();
        let ns = || NamespaceLabels {
            namespace: "n".into(),
        };
        let mig = || MigrationLabels {
            namespace: "n".into(),
            migration: "m".into(),
        };
        let job = || JobLabels {
            phase: "expand".into(),
        };
        let reason = || ReasonLabels { reason: "r".into() };
        m.migrations
            .get_or_create(&PhaseLabels {
                namespace: "n".into(),
                phase: "Pending".into(),
            })
            .set(0);
        m.rollout_wait.get_or_create(&ns()).set(0.0);
        m.approval_wait.get_or_create(&ns()).set(0.0);
        m.executor_wait
            .get_or_create(&WaitLabels {
                namespace: "n".into(),
                phase: "contract".into(),
                waiting: "database-check".into(),
            })
            .set(0.0);
        m.tenants
            .get_or_create(&TenantLabels {
                namespace: "n".into(),
                phase: "expand".into(),
                state: "failed".into(),
            })
            .set(0);
        m.backfill_rows_done.get_or_create(&mig()).set(0);
        m.backfill_rows_estimated.get_or_create(&mig()).set(0);
        m.backfill_rows_per_second.get_or_create(&mig()).set(0);
        m.backfill_key_range_done.get_or_create(&mig()).set(0.0);
        m.backfill_throttled
            .get_or_create(&ThrottleLabels {
                namespace: "n".into(),
                migration: "m".into(),
                reason: "other".into(),
            })
            .set(0);
        m.observe_step("expand", true, 1.0);
        m.lock_retries.get_or_create(&job()).inc();
        m.lock_wait.get_or_create(&job()).inc();
        m.reconcile_errors.get_or_create(&reason()).inc();
        m.commit_grants.get_or_create(&reason()).inc();
        m.warning_events.get_or_create(&reason()).inc();
        m
    }

    /// The list the chart's alert rules and dashboard are checked against (hack/monitoring-test.sh):
    /// every sample name the operator exports. Scrape-time gauges are refreshed from the cache
    /// at encode, so they are read from the families directly.
    #[test]
    fn tenants_are_counted_by_state_not_by_tenant() {
        let mut status = DatabaseMigrationStatus::default();
        let counts = |applied, failed, not_run| crate::api::TenantsStatus {
            total: applied + failed + not_run,
            applied,
            failed,
            not_run,
            ..Default::default()
        };
        status.expand = Some(PhaseStatus {
            tenants: Some(counts(48, 2, 0)),
            ..Default::default()
        });
        let mut into = BTreeMap::new();
        add_tenants(&mut into, "shop", &status);
        status.expand = Some(PhaseStatus {
            tenants: Some(counts(1, 0, 9)),
            ..Default::default()
        });
        add_tenants(&mut into, "shop", &status);
        let got: Vec<(String, String, i64)> = into
            .into_iter()
            .map(|(l, n)| (l.phase, l.state, n))
            .collect();
        assert_eq!(
            got,
            vec![
                ("expand".into(), "applied".into(), 49),
                ("expand".into(), "failed".into(), 2),
                ("expand".into(), "not_run".into(), 9),
            ]
        );
    }

    #[test]
    fn the_list_of_exported_metric_names_is_current() {
        let m = every_family();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).expect("encode");
        let mut names: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        names.sort();
        names.dedup();
        let want = names.join("\n") + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/metric-names.txt");
        let have = std::fs::read_to_string(path).unwrap_or_default();
        if std::env::var_os("PHASEGATE_UPDATE_METRIC_NAMES").is_some() {
            std::fs::write(path, &want).expect("write the list");
            return;
        }
        assert_eq!(
            have, want,
            "{path} is out of date: run PHASEGATE_UPDATE_METRIC_NAMES=1 cargo test --lib metrics"
        );
    }
}
