//! Contract's database check in a run: the check of [`dbcheck`] before each attempt (waiting,
//! with one budget for the run) and once more inside the transaction right before COMMIT.

use std::time::Duration;

use tokio_postgres::Client;

use super::connect::Scrubber;
use super::dbcheck::MoreSessions;
use super::error::{ApplyError, InvalidUrl};
use super::pooler_clients::PoolerClients;
use super::standbys::Standbys;
use super::stats::Stats;
use super::waits::Waits;
use super::{dbcheck, Config, Phase};

/// The database-side check of contract, run right before every attempt (outside any
/// transaction, holding no table lock), with one time budget for the whole run, and once more
/// inside each transaction right before COMMIT.
pub(super) struct DbCheckRun {
    pub(super) checker: Option<dbcheck::Checker>,
    timeout: Duration,
    pub(super) waited: Duration,
    /// `spec.database.pooler`: PgBouncer's clients, looked at with every look of the check.
    pooler: Option<PoolerClients>,
    /// `spec.database.replicas`: hot standbys judged by the same rules at each look.
    standbys: Option<Standbys>,
}

impl DbCheckRun {
    pub(super) fn new(cfg: &Config, scrub: &Scrubber) -> Result<DbCheckRun, InvalidUrl> {
        let checker = (cfg.phase == Phase::Contract && cfg.database_check).then(|| {
            dbcheck::Checker::new(
                &cfg.identity.app_version,
                cfg.rollout_completed_at.map(|t| t.to_string()),
                cfg.application_names.clone(),
            )
        });
        let checker = checker.map(|mut c| {
            c.rule.order = cfg.version_order;
            c.rule.previous = cfg.previous_versions.clone();
            c
        });
        if let Some(c) = &checker {
            if c.want.is_empty() {
                tracing::warn!("database check: no app version (PHASEGATE_APP_VERSION) given; sessions are not checked for old versions");
            }
            if c.rollout_completed_at.is_none() {
                tracing::info!("database check: no rollout completion time (PHASEGATE_ROLLOUT_COMPLETED_AT) given; transactions are not checked for their age");
            }
        }
        let checker = checker.filter(dbcheck::Checker::active);
        let pooler =
            cfg.pooler.as_ref().filter(|_| checker.is_some()).map(|p| {
                PoolerClients::new(p, &cfg.database_url, cfg.connect_timeout, scrub.clone())
            });
        let standbys = match &checker {
            Some(c) => Standbys::new(cfg, c)?,
            None => None,
        };
        Ok(DbCheckRun {
            checker,
            timeout: cfg.database_check_timeout,
            waited: Duration::ZERO,
            pooler,
            standbys,
        })
    }

    /// Waits until the check passes on the primary and then on every standby, in one round
    /// (a wait for a standby sends it back to the primary); returns how long it waited.
    pub(super) async fn pass(
        &mut self,
        client: &Client,
        stats: &mut Stats,
        waits: &mut Waits,
    ) -> Result<Duration, ApplyError> {
        let mut total = Duration::ZERO;
        loop {
            total += self.pass_primary(client, stats, waits).await?;
            let waited = self.pass_standbys(client, stats, waits).await?;
            if waited.is_zero() {
                return Ok(total);
            }
            total += waited;
        }
    }

    /// The hot standbys' part of [`DbCheckRun::pass`] (none configured: nothing to do).
    async fn pass_standbys(
        &mut self,
        client: &Client,
        stats: &mut Stats,
        waits: &mut Waits,
    ) -> Result<Duration, ApplyError> {
        let Some(standbys) = self.standbys.as_mut() else {
            return Ok(Duration::ZERO);
        };
        let budget = self.timeout.saturating_sub(self.waited);
        let (waited, blockers) = standbys
            .wait_until_clear(client, budget, waits)
            .await
            .map_err(|e| ApplyError::db(&e, None))?;
        self.waited += waited;
        stats.db_check_wait = Some(self.waited);
        if stats.db_check_warning.is_none() {
            stats.db_check_warning = standbys.warning();
        }
        if blockers.is_empty() {
            return Ok(waited);
        }
        Err(timeout_error(&blockers, self.waited))
    }

    /// The primary's part of [`DbCheckRun::pass`].
    async fn pass_primary(
        &mut self,
        client: &Client,
        stats: &mut Stats,
        waits: &mut Waits,
    ) -> Result<Duration, ApplyError> {
        let Some(checker) = self.checker.as_mut() else {
            return Ok(Duration::ZERO);
        };
        let budget = self.timeout.saturating_sub(self.waited);
        let (waited, blockers) = checker
            .wait_until_clear(client, budget, waits, &mut more(&mut self.pooler))
            .await
            .map_err(|e| ApplyError::db(&e, None))?;
        self.waited += waited;
        stats.db_check_wait = Some(self.waited);
        if stats.db_check_warning.is_none() {
            stats.db_check_warning = checker.warning();
        }
        if blockers.is_empty() {
            return Ok(waited);
        }
        Err(timeout_error(&blockers, self.waited))
    }

    /// One look inside the transaction, locks held, without waiting: the blockers that appeared
    /// since [`DbCheckRun::pass`] (empty when the check is off).
    pub(super) async fn recheck(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<Vec<dbcheck::Blocker>, ApplyError> {
        let Some(checker) = self.checker.as_mut() else {
            return Ok(Vec::new());
        };
        let mut seen = checker
            .recheck(tx)
            .await
            .map_err(|e| ApplyError::db(&e, None))?;
        for m in more(&mut self.pooler) {
            seen.blockers.extend(m.look(checker).await);
        }
        if !seen.blockers.is_empty() {
            return Ok(seen.blockers);
        }
        match self.standbys.as_mut() {
            Some(s) => s.recheck(tx).await.map_err(|e| ApplyError::db(&e, None)),
            None => Ok(Vec::new()),
        }
    }
}

/// The failure once the check's time ran out with `blockers` left, naming up to
/// [`dbcheck::MAX_NAMED`] of them; a standby that could not be checked says so first.
fn timeout_error(blockers: &[dbcheck::Blocker], waited: Duration) -> ApplyError {
    let unchecked = |b: &&dbcheck::Blocker| matches!(b.reason, dbcheck::Reason::Unchecked { .. });
    let mut ordered: Vec<&dbcheck::Blocker> = blockers.iter().filter(unchecked).collect();
    let count = ordered.len();
    ordered.extend(blockers.iter().filter(|b| !unchecked(b)));
    let mut list: Vec<String> = ordered
        .iter()
        .take(dbcheck::MAX_NAMED)
        .map(|b| b.to_string())
        .collect();
    if blockers.len() > dbcheck::MAX_NAMED {
        list.push(format!("and {} more", blockers.len() - dbcheck::MAX_NAMED));
    }
    let waited =
        humantime::format_duration(Duration::from_millis(waited.as_millis() as u64)).to_string();
    let blockers = list.join("; ");
    if count > 0 {
        return ApplyError::StandbyUnchecked {
            count,
            waited,
            blockers,
        };
    }
    ApplyError::DatabaseCheckTimeout {
        count: ordered.len(),
        waited,
        blockers,
    }
}

/// The places besides this server's `pg_stat_activity` each look of the check covers.
fn more(pooler: &mut Option<PoolerClients>) -> Vec<&mut dyn MoreSessions> {
    let mut more: Vec<&mut dyn MoreSessions> = Vec::new();
    if let Some(p) = pooler.as_mut() {
        more.push(p);
    }
    more
}
