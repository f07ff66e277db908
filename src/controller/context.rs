//! What every reconcile shares: the controller's configuration, its clients and caches, and
//! the backoff of failed reconciles.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::events::Recorder;
use kube::runtime::reflector::ObjectRef;
use kube::Client;

use crate::api::DatabaseMigration;
use crate::leader::Shutdown;
use crate::metrics::Metrics;

use super::jobs::{self, ExecutorConfig};
use super::{cache, history, status_writes};

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    pub executor: ExecutorConfig,
}

/// Shared state of every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub caches: cache::Caches,
    /// Resolves when the controller must stop: no new work is started after that.
    pub shutdown: Shutdown,
    /// Consecutive failed reconciles per migration, for exponential backoff.
    pub(super) failures:
        std::sync::Mutex<std::collections::HashMap<ObjectRef<DatabaseMigration>, Failures>>,
    /// Recent status writes: progress pacing and stale-copy detection.
    pub(crate) status_writes: status_writes::StatusWrites,
    /// Migrations whose rollout history this process has read in their current epoch.
    pub(crate) history_checked: history::Checked,
    /// Jobs this process created, until status records them.
    pub(crate) created_jobs: jobs::CreatedJobs,
    /// Contract attempts this process stopped: their held grant requests end at once.
    pub(crate) recalls: super::recalls::Recalls,
}

impl Context {
    /// Whether the controller was asked to stop.
    pub fn stopping(&self) -> bool {
        self.shutdown.peek().is_some()
    }

    /// A reconcile failed: how long to wait before the next one (1 s, doubling, at most
    /// 5 minutes; reset by a success).
    pub(crate) fn failed(&self, m: &DatabaseMigration) -> Duration {
        let now = std::time::Instant::now();
        let n = self
            .failures
            .lock()
            .map(|mut f| f.entry(ObjectRef::from_obj(m)).or_default().record(now))
            .unwrap_or(1);
        error_backoff(n)
    }

    pub(crate) fn succeeded(&self, m: &DatabaseMigration) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(&ObjectRef::from_obj(m));
        }
    }
}

/// Consecutive failed reconciles of one migration.
#[derive(Debug, Default)]
pub(super) struct Failures {
    count: u32,
    last: Option<std::time::Instant>,
}

impl Failures {
    /// One more failure at `now`; returns the count to back off by. Failures within the
    /// current backoff count once: a burst of watch events each failing the same way (a
    /// refused status write) would otherwise reach the 5-minute cap within a second, and the
    /// cause fixed then would wait that long.
    fn record(&mut self, now: std::time::Instant) -> u32 {
        let within = self
            .last
            .is_some_and(|t| self.count > 0 && now.duration_since(t) < error_backoff(self.count));
        if !within {
            self.count = self.count.saturating_add(1);
            self.last = Some(now);
        }
        self.count
    }
}

/// The wait after the `n`th consecutive failure (n ≥ 1).
fn error_backoff(n: u32) -> Duration {
    const MAX: Duration = Duration::from_secs(300);
    Duration::from_secs(1)
        .checked_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX))
        .map_or(MAX, |d| d.min(MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_failures_backs_off_once() {
        let t0 = std::time::Instant::now();
        let mut f = Failures::default();
        let burst: Vec<u32> = (0..10)
            .map(|i| f.record(t0 + Duration::from_millis(i * 5)))
            .collect();
        assert_eq!(burst, [1; 10], "ten failures within 50 ms count once");
        assert_eq!(f.record(t0 + Duration::from_millis(1_100)), 2);
        assert_eq!(f.record(t0 + Duration::from_millis(1_200)), 2);
        assert_eq!(f.record(t0 + Duration::from_millis(3_200)), 3);
    }

    #[test]
    fn error_backoff_doubles_up_to_five_minutes() {
        let secs: Vec<u64> = (1..=12).map(|n| error_backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(error_backoff(u32::MAX).as_secs(), 300);
    }
}
