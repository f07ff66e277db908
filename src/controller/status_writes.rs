//! The operator's recent status writes, per migration: when (progress-only changes wait a
//! little, see `planner::writes`) and which resourceVersion each write replaced. A reconcile
//! handed that replaced version is planning from a copy the watch has not brought up to date
//! yet: it may stop a running attempt whose gate closed, but it starts and writes nothing (the
//! write would only get 409); the write's own watch event reconciles again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use crate::api::DatabaseMigration;

#[derive(Default)]
pub struct StatusWrites(Mutex<HashMap<ObjectRef<DatabaseMigration>, Written>>);

struct Written {
    at: Instant,
    /// The resourceVersion the write replaced, when it made a new one.
    replaced: Option<String>,
}

impl StatusWrites {
    /// `m`'s status was just written over resourceVersion `from`, giving `to`. Entries older
    /// than `keep` are dropped, so the map holds only migrations written recently.
    pub fn written(
        &self,
        m: &DatabaseMigration,
        from: Option<String>,
        to: Option<&str>,
        keep: Duration,
    ) {
        if let Ok(mut writes) = self.0.lock() {
            writes.retain(|_, w| w.at.elapsed() < keep);
            let replaced = from.filter(|f| to.is_some_and(|t| t != f));
            writes.insert(
                ObjectRef::from_obj(m),
                Written {
                    at: Instant::now(),
                    replaced,
                },
            );
        }
    }

    /// How long a progress-only status change of `m` must still wait, if its status was
    /// written less than `interval` ago.
    pub fn progress_wait(&self, m: &DatabaseMigration, interval: Duration) -> Option<Duration> {
        let writes = self.0.lock().ok()?;
        let since = writes.get(&ObjectRef::from_obj(m))?.at.elapsed();
        interval.checked_sub(since).filter(|d| !d.is_zero())
    }

    /// Whether `m` is the version one of our writes replaced less than `within` ago. Past
    /// that, a plan is made anyway (and a stale one still fails on the resourceVersion).
    pub fn replaced(&self, m: &DatabaseMigration, within: Duration) -> bool {
        let Ok(writes) = self.0.lock() else {
            return false;
        };
        writes.get(&ObjectRef::from_obj(m)).is_some_and(|w| {
            w.at.elapsed() < within
                && w.replaced.is_some()
                && w.replaced.as_deref() == m.resource_version().as_deref()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(name: &str, rv: &str) -> DatabaseMigration {
        crate::controller::test_support::test_migration(name, rv, serde_json::Value::Null)
    }

    const KEEP: Duration = Duration::from_secs(5);

    #[test]
    fn only_the_version_a_write_replaced_is_stale() {
        let w = StatusWrites::default();
        let m = migration("m", "10");
        assert!(!w.replaced(&m, KEEP));
        w.written(&m, Some("10".into()), Some("11"), KEEP);
        assert!(w.replaced(&m, KEEP), "our write made 11: copy 10 is stale");
        assert!(
            !w.replaced(&migration("m", "11"), KEEP),
            "the written version"
        );
        assert!(!w.replaced(&migration("m", "12"), KEEP), "a newer version");
        assert!(!w.replaced(&migration("other", "10"), KEEP));
        assert!(!w.replaced(&m, Duration::ZERO), "too long ago: plan anyway");
        // A write that changed nothing (same resourceVersion) replaced nothing.
        w.written(&m, Some("10".into()), Some("10"), KEEP);
        assert!(!w.replaced(&m, KEEP));
        w.written(&m, Some("10".into()), None, KEEP);
        assert!(!w.replaced(&m, KEEP));
    }

    #[test]
    fn progress_waits_out_the_interval_since_the_last_write() {
        let w = StatusWrites::default();
        let m = migration("m", "10");
        assert_eq!(w.progress_wait(&m, KEEP), None);
        w.written(&m, Some("10".into()), Some("11"), KEEP);
        assert!(w
            .progress_wait(&m, KEEP)
            .is_some_and(|d| d > Duration::from_secs(4)));
        assert_eq!(w.progress_wait(&m, Duration::ZERO), None);
    }
}
