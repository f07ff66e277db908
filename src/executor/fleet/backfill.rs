//! `phasegate backfill` on every tenant (`spec.tenants` with `spec.backfill`, docs/fleet.md):
//! the tenants are discovered on every server and ordered as for a phase
//! ([`super::servers::plan`]) and walked by the fleet's rules ([`super::walk::walk`]); each
//! tenant is a complete single-database backfill (the caller's `run`) with a checkpoint of its
//! own, so a retry or a run after a SIGKILL resumes each tenant where it stopped and finds a
//! finished one done.
//!
//! Status stays bounded: one aggregate progress line (rows summed, the share of the work done,
//! the tenants' counts), never a line per tenant, is what the operator reads.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::Instrument;

use super::super::backfill::PROGRESS_EVERY;
use super::super::connect::Scrubber;
use super::super::Config;
use super::servers::{self, Planned, Server};
use super::tenant::Tenant;
use super::walk::{Counter, Verdict};
use super::{late, target, TenantKind};
use crate::api::{BackfillProgress, TenantsSpec, TenantsStatus};
use crate::protocol::report::{Outcome, Report, ReportError};

/// One aggregate progress line per [`PROGRESS_EVERY`] (as a single backfill prints its own),
/// and one per this many finished tenants, and at the end of each wave: the operator reads
/// the log's last 50 lines, and a tenant logs its warnings (throttled, a failure).
const PROGRESS_EVERY_TENANTS: u32 = 5;

/// Where one tenant's backfill runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackfillTenant {
    /// A schema of the database `url` names: the table and the batch SQL are unqualified and
    /// run with it as `search_path`; its checkpoint row is `<migration>/<schema>`.
    Schema { name: String, url: String },
    /// A database (`url` names it): its own checkpoint table, the migration's own name.
    Database { name: String, url: String },
}

/// What a fleet backfill needs besides the per-tenant run.
pub struct FleetBackfill<'a> {
    /// The run's settings as `phasegate apply` has them: the servers (`database_url`,
    /// `server_urls`), `connect_timeout`, the stop, and in `tenant_expand_sql` expand's SQL,
    /// run first on a tenant created since expand ran (as contract does).
    pub base: &'a Config,
    pub spec: &'a TenantsSpec,
    /// The backfill's checksum, for the report.
    pub checksum: &'a str,
}

/// Runs `run` (one tenant's complete backfill, reporting its progress to the sink it is given)
/// on every tenant, and reports across them.
pub async fn execute_backfill<F, Fut>(fleet: FleetBackfill<'_>, run: F) -> Report
where
    F: Fn(BackfillTenant, ProgressSink) -> Fut,
    Fut: Future<Output = Report>,
{
    let started = Instant::now();
    let scrub = Scrubber::for_urls(&fleet.base.secret_urls());
    let planned = match servers::plan(fleet.base, fleet.spec, &scrub).await {
        Ok(p) => p,
        Err(e) => {
            let message = scrub.scrub(&e.to_string());
            tracing::error!(error = %message, "tenants: the backfill did not start");
            let mut r = failed(message);
            r.duration_ms = started.elapsed().as_millis() as u64;
            r.checksum = Some(crate::protocol::checksum::short(fleet.checksum));
            return r;
        }
    };
    let expanded = expanded_schemas(fleet.base, &planned).await;
    let Planned {
        kind,
        servers,
        found,
        waves,
        total,
    } = planned;
    // Not held while the tenants run: each run has a connection of its own.
    drop(found);
    tracing::info!(
        tenants = total,
        servers = servers.len(),
        canaries = waves.canaries.len(),
        waves = waves.rest.len(),
        max_concurrent = fleet.spec.max_concurrent,
        failure_budget = fleet.spec.failure_budget,
        "tenants: starting the backfill"
    );
    let agg = Arc::new(Mutex::new(Aggregate::new(total as u32)));
    let each = Each {
        kind: &kind,
        servers: &servers,
        expanded: expanded.as_ref(),
    };
    let (each, run) = (&each, &run);
    let one = |t: Tenant| one_tenant(each, agg.clone(), t, run);
    let mut counter = Tally {
        sums: Sums::default(),
        agg: agg.clone(),
    };
    let status = {
        let stop = &fleet.base.stop;
        let walking = super::walk::walk(waves, servers.len(), fleet.spec, stop, one, &mut counter);
        let mut walking = std::pin::pin!(walking);
        loop {
            tokio::select! {
                s = &mut walking => break s,
                () = tokio::time::sleep(PROGRESS_EVERY) => lock(&agg).print(None),
            }
        }
    };
    lock(&agg).print(Some(&status));
    counter.sums.report(&fleet, started, status)
}

/// The schema tenants whose expand each server's ledger records (read once per server); None
/// when every tenant checks its own (database tenants) or none needs it (no expand's SQL).
async fn expanded_schemas(base: &Config, planned: &Planned) -> Option<HashSet<(usize, String)>> {
    let sql = base.tenant_expand_sql.as_deref()?;
    if !matches!(planned.kind, TenantKind::Schemas(_)) {
        return None;
    }
    let mut all = HashSet::new();
    for (i, f) in planned.found.iter().enumerate() {
        for name in late::expanded_schemas(f.client(), base, sql).await {
            all.insert((i, name));
        }
    }
    Some(all)
}

/// What every tenant's run shares.
struct Each<'a> {
    kind: &'a TenantKind,
    servers: &'a [Server],
    /// Schema tenants (server, name) whose expand the ledger has.
    expanded: Option<&'a HashSet<(usize, String)>>,
}

/// One tenant: expand first where it was created since expand ran, then its complete
/// backfill; whether expand was applied there now.
async fn one_tenant<F, Fut>(
    each: &Each<'_>,
    agg: Arc<Mutex<Aggregate>>,
    tenant: Tenant,
    run: &F,
) -> (Report, bool)
where
    F: Fn(BackfillTenant, ProgressSink) -> Fut,
    Fut: Future<Output = Report>,
{
    lock(&agg).start(&tenant.label);
    let server = &each.servers[tenant.server].cfg;
    let target = match backfill_tenant(&server.database_url.0, each.kind, &tenant.name) {
        Ok(t) => t,
        Err(e) => return (failed(e), false),
    };
    let span = tracing::info_span!("tenant", tenant = %tenant.label);
    let known = each
        .expanded
        .is_some_and(|e| e.contains(&(tenant.server, tenant.name.clone())));
    let expand_sql = server.tenant_expand_sql.as_deref().filter(|_| !known);
    let expanded_late = match expand_sql {
        Some(sql) => match expand_late(server, each.kind, &tenant, sql)
            .instrument(span.clone())
            .await
        {
            Ok(late) => late,
            Err(report) => return (report, false),
        },
        None => false,
    };
    let sink = ProgressSink {
        agg,
        tenant: tenant.label.clone(),
    };
    (run(target, sink).instrument(span).await, expanded_late)
}

/// Expand's SQL on `tenant` if it does not have it yet ([`late::expand_first`]).
async fn expand_late(
    server: &Config,
    kind: &TenantKind,
    tenant: &Tenant,
    sql: &str,
) -> Result<bool, Report> {
    let mut one = target::config_for(server, kind, &tenant.name).map_err(failed)?;
    one.quiet = true;
    late::expand_first(&one, sql, &tenant.label).await
}

/// Where `tenant` of `kind` on the server at `url` runs; an error for a name the executor
/// cannot put into a URL or a `search_path` as it is.
fn backfill_tenant(url: &str, kind: &TenantKind, tenant: &str) -> Result<BackfillTenant, String> {
    target::check_plain(kind, tenant)?;
    Ok(match kind {
        TenantKind::Schemas(_) => BackfillTenant::Schema {
            name: tenant.to_string(),
            url: url.to_string(),
        },
        TenantKind::Databases(_) => BackfillTenant::Database {
            name: tenant.to_string(),
            url: target::with_database(url, tenant)?,
        },
    })
}

/// The walk's view of the tenants' backfills: the sums of their reports, and the aggregate
/// the progress line says.
struct Tally {
    sums: Sums,
    agg: Arc<Mutex<Aggregate>>,
}

impl Counter<(Report, bool)> for Tally {
    fn add(&mut self, tenant: &Tenant, (r, expanded_late): (Report, bool)) -> Verdict {
        self.sums.expanded_late += u32::from(expanded_late);
        let verdict = self.sums.add(&r);
        let found_done = r.outcome == Outcome::AlreadyApplied;
        lock(&self.agg).finish(&tenant.label, found_done);
        verdict
    }

    fn progress(&mut self, so_far: &TenantsStatus, wave_end: bool) {
        let mut a = lock(&self.agg);
        a.counts = TenantsStatus {
            expanded_late: self.sums.expanded_late,
            ..so_far.clone()
        };
        if wave_end || a.finished_since_print >= PROGRESS_EVERY_TENANTS {
            a.print(None);
        }
    }
}

fn error(message: String) -> ReportError {
    ReportError {
        sqlstate: None,
        message,
        statement: None,
    }
}

fn failed(message: String) -> Report {
    let mut r = Report::new(Outcome::Failed, "backfill");
    r.error = Some(error(message));
    r
}

fn lock(agg: &Mutex<Aggregate>) -> std::sync::MutexGuard<'_, Aggregate> {
    // A panic while printing a line must not stop the backfill: the counts are plain numbers.
    agg.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sums of the tenants' reports.
#[derive(Default)]
struct Sums {
    batches: usize,
    attempts: u32,
    lock_retries: u32,
    throttle_wait_ms: u64,
    /// Tenants where this run committed a batch (not found done).
    walked_now: u32,
    /// Tenants created since expand, which got expand first.
    expanded_late: u32,
}

impl Sums {
    fn add(&mut self, r: &Report) -> Verdict {
        self.batches += r.statements;
        self.attempts += r.attempts;
        self.lock_retries += r.lock_retries;
        self.throttle_wait_ms += r.lock_wait_ms;
        if r.is_success() {
            self.walked_now += u32::from(r.outcome == Outcome::Applied);
            return Verdict::Done;
        }
        if r.stopped_by.is_some() {
            return Verdict::Stopped;
        }
        Verdict::Failed(r.summary())
    }

    fn report(self, fleet: &FleetBackfill<'_>, started: Instant, status: TenantsStatus) -> Report {
        let ok = status.failed == 0 && status.not_run == 0;
        let outcome = match (ok, self.walked_now == 0) {
            (true, true) => Outcome::AlreadyApplied,
            (true, false) => Outcome::Applied,
            (false, _) => Outcome::Failed,
        };
        let mut r = Report::new(outcome, "backfill");
        r.statements = self.batches;
        r.attempts = self.attempts;
        r.lock_retries = self.lock_retries;
        r.lock_wait_ms = self.throttle_wait_ms;
        r.duration_ms = started.elapsed().as_millis() as u64;
        r.checksum = Some(crate::protocol::checksum::short(fleet.checksum));
        r.stopped_by = fleet.base.stop.requested().map(|s| s.name().to_string());
        r.tenants = Some(TenantsStatus {
            expanded_late: self.expanded_late,
            ..status
        });
        if !ok {
            r.error = Some(error(r.summary()));
        }
        tracing::info!(summary = %r.summary(), "tenants: backfill done");
        r
    }
}

/// Where one tenant's backfill sends its progress (instead of printing it): the fleet prints
/// one line for all of them.
#[derive(Clone)]
pub struct ProgressSink {
    agg: Arc<Mutex<Aggregate>>,
    tenant: String,
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProgressSink({})", self.tenant)
    }
}

impl ProgressSink {
    /// The tenant's progress now; `run_rows`: rows its batches changed in this run.
    pub fn report(&self, progress: &BackfillProgress, run_rows: i64) {
        lock(&self.agg).running.insert(
            self.tenant.clone(),
            Latest {
                progress: progress.clone(),
                run_rows,
            },
        );
    }
}

/// A running tenant's latest progress.
struct Latest {
    progress: BackfillProgress,
    run_rows: i64,
}

/// Everything the aggregate line says: bounded by `maxConcurrent` (the running tenants'
/// latest progress), whatever the number of tenants.
struct Aggregate {
    started: Instant,
    counts: TenantsStatus,
    /// Tenants started so far.
    begun: u32,
    /// Tenants found done in this epoch when they started (no work this run).
    found_done: u32,
    running: BTreeMap<String, Latest>,
    /// Of the finished tenants: rows done (this epoch), estimated rows, batches, rows this run.
    rows_done: i64,
    estimated: i64,
    batches: i64,
    run_rows: i64,
    finished_since_print: u32,
}

impl Aggregate {
    fn new(total: u32) -> Aggregate {
        Aggregate {
            started: Instant::now(),
            counts: TenantsStatus {
                total,
                ..TenantsStatus::default()
            },
            begun: 0,
            found_done: 0,
            running: BTreeMap::new(),
            rows_done: 0,
            estimated: 0,
            batches: 0,
            run_rows: 0,
            finished_since_print: 0,
        }
    }

    fn start(&mut self, tenant: &str) {
        self.begun += 1;
        self.running.insert(
            tenant.to_string(),
            Latest {
                progress: BackfillProgress::default(),
                run_rows: 0,
            },
        );
    }

    /// `tenant` ended (its counts come from the walk, see [`Tally::progress`]); `found_done`:
    /// its backfill was done in this epoch before this run.
    fn finish(&mut self, tenant: &str, found_done: bool) {
        if let Some(l) = self.running.remove(tenant) {
            self.rows_done += l.progress.rows_done;
            self.estimated += l.progress.estimated_rows;
            self.batches += l.progress.batches;
            self.run_rows += l.run_rows;
        }
        self.finished_since_print += 1;
        self.found_done += u32::from(found_done);
    }

    /// Prints the aggregate line; `last` is the walk's final count.
    fn print(&mut self, last: Option<&TenantsStatus>) {
        self.finished_since_print = 0;
        let p = self.progress(last);
        eprintln!("{}", crate::protocol::log::progress_line(&p));
    }

    fn progress(&self, last: Option<&TenantsStatus>) -> BackfillProgress {
        let mut counts = last.cloned().unwrap_or_else(|| self.counts.clone());
        if last.is_none() {
            counts.not_run = counts.total - self.begun;
        }
        let running = self.running.values();
        let share: f64 = running
            .clone()
            .map(|l| l.progress.key_range_done_permille as f64 / 1000.0)
            .sum();
        let total = f64::from(counts.total.max(1));
        let fraction = ((f64::from(counts.applied) + share) / total).clamp(0.0, 1.0);
        // The pace of this run's work: tenants found done cost nothing and do not count.
        let todo = f64::from(counts.total.saturating_sub(self.found_done).max(1));
        let this_run = (f64::from(counts.applied.saturating_sub(self.found_done)) + share) / todo;
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let run_rows = self.run_rows + running.clone().map(|l| l.run_rows).sum::<i64>();
        let eta = (this_run > 0.0).then(|| (secs * (1.0 - this_run) / this_run).round() as i64);
        let throttled = self.running.iter().find_map(|(t, l)| {
            l.progress
                .throttled
                .as_ref()
                .map(|why| format!("{why} (tenant {t})"))
        });
        BackfillProgress {
            rows_done: self.rows_done + running.clone().map(|l| l.progress.rows_done).sum::<i64>(),
            estimated_rows: self.estimated
                + running
                    .clone()
                    .map(|l| l.progress.estimated_rows)
                    .sum::<i64>(),
            key_range_done_permille: (fraction * 1000.0) as i64,
            batches: self.batches + running.clone().map(|l| l.progress.batches).sum::<i64>(),
            batch_size: running.map(|l| l.progress.batch_size).max().unwrap_or(0),
            rows_per_second: (run_rows as f64 / secs) as i64,
            eta_seconds: if fraction >= 1.0 { Some(0) } else { eta },
            throttled,
            tenants: Some(counts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rows: i64, estimated: i64, permille: i64) -> Latest {
        Latest {
            progress: BackfillProgress {
                rows_done: rows,
                estimated_rows: estimated,
                key_range_done_permille: permille,
                batches: 2,
                batch_size: 100,
                ..BackfillProgress::default()
            },
            run_rows: rows,
        }
    }

    #[test]
    fn the_line_sums_the_tenants_and_counts_the_running_ones_share() {
        let mut a = Aggregate::new(4);
        a.start("t1");
        a.running.insert("t1".into(), at(100, 100, 1000));
        a.finish("t1", true);
        a.start("t2");
        let mut t2 = at(50, 100, 500);
        t2.progress.throttled = Some("lock timeout (1s) on the table, retry 1".into());
        a.running.insert("t2".into(), t2);
        a.start("t3");
        a.finish("t3", false);
        // The walk's counts so far: t1 done, t3 failed.
        a.counts = TenantsStatus {
            total: 4,
            applied: 1,
            failed: 1,
            failures: vec![crate::api::TenantFailure {
                tenant: "t3".into(),
                error: "failed: ERROR 42703: no n".into(),
            }],
            ..TenantsStatus::default()
        };
        let p = a.progress(None);
        let t = p.tenants.clone().expect("counts");
        assert_eq!((t.total, t.applied, t.failed, t.not_run), (4, 1, 1, 1));
        assert_eq!(t.failures[0].tenant, "t3");
        assert_eq!((p.rows_done, p.estimated_rows, p.batches), (150, 200, 4));
        // One tenant done and half of another, of four.
        assert_eq!(p.key_range_done_permille, 375);
        assert_eq!(
            p.throttled.as_deref(),
            Some("lock timeout (1s) on the table, retry 1 (tenant t2)")
        );
        assert_eq!(
            crate::protocol::log::throttle_kind(p.throttled.as_deref().unwrap_or("")),
            "lock_timeout",
            "the metrics still tell the reason"
        );
        assert!(p.eta_seconds.is_some());
        assert!(
            p.summary()
                .starts_with("backfilled 1 of 4 tenants (1 running, 1 failed; 37.5% of the work)"),
            "{}",
            p.summary()
        );
    }

    #[test]
    fn the_last_line_has_the_walks_counts() {
        let mut a = Aggregate::new(2);
        for t in ["t1", "t2"] {
            a.start(t);
            a.running.insert(t.into(), at(10, 10, 1000));
            a.finish(t, false);
        }
        let last = TenantsStatus {
            total: 2,
            applied: 2,
            ..TenantsStatus::default()
        };
        let p = a.progress(Some(&last));
        assert_eq!(p.tenants, Some(last));
        assert_eq!(
            (p.rows_done, p.key_range_done_permille, p.eta_seconds),
            (20, 1000, Some(0))
        );
    }
}
