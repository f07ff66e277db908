//! The recall: contract attempts this process stopped. A stop recalls the attempt's commit
//! grant before the Job is deleted and status written; the grant desk answers every request
//! for a recalled attempt `Superseded` at once, also one it holds or is judging
//! ([`super::fence::GrantDesk`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::planner::JobPhase;
use crate::protocol::grant::Request;

/// How long a recall is remembered: the fresh judgement answers the same from status after
/// that (an executor waits 10 min for a grant at most).
const RECALL_KEPT: Duration = Duration::from_secs(15 * 60);

/// An attempt: (migration UID, phase, attempt number).
type AttemptKey = (String, String, u32);

/// Attempts this process stopped, with why and when.
#[derive(Default)]
pub(crate) struct Recalls {
    stopped: Mutex<HashMap<AttemptKey, (String, Instant)>>,
    changed: tokio::sync::Notify,
}

impl Recalls {
    /// `attempt` of `phase` will never commit: answer its grant requests so from now on.
    pub(crate) fn recall(&self, uid: &str, phase: JobPhase, attempt: u32, why: &str) {
        // A poisoned lock still holds a usable map: a recall is never lost to it.
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        stopped.retain(|_, (_, at)| at.elapsed() < RECALL_KEPT);
        stopped.insert(
            (uid.to_string(), phase.as_str().to_string(), attempt),
            (why.to_string(), Instant::now()),
        );
        drop(stopped);
        self.changed.notify_waiters();
    }

    /// Why `req`'s attempt was recalled, if it was.
    pub(super) fn recalled(&self, req: &Request) -> Option<String> {
        let stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let key = (req.uid.clone(), req.phase.clone(), req.attempt);
        stopped.get(&key).map(|(why, _)| why.clone())
    }

    /// Resolves once `req`'s attempt is recalled (at once if it was): why.
    pub(super) async fn recalled_at_last(&self, req: &Request) -> String {
        crate::notified::until_some(&self.changed, || self.recalled(req)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(attempt: u32) -> Request {
        Request {
            namespace: "shop".into(),
            migration: "m".into(),
            uid: "u-1".into(),
            phase: "contract".into(),
            attempt,
            hold_ms: 500,
        }
    }

    #[tokio::test]
    async fn a_recall_is_seen_by_whoever_waits_for_it_and_by_later_asks() {
        let recalls = std::sync::Arc::new(Recalls::default());
        let waiting = {
            let recalls = recalls.clone();
            tokio::spawn(async move { recalls.recalled_at_last(&request(2)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Another attempt's recall does not end the wait.
        recalls.recall("u-1", JobPhase::Contract, 1, "attempt 1 stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        recalls.recall("u-1", JobPhase::Contract, 2, "a gate closed");
        assert_eq!(waiting.await.expect("waited"), "a gate closed");
        assert_eq!(
            recalls.recalled(&request(2)).as_deref(),
            Some("a gate closed")
        );
        assert_eq!(recalls.recalled(&request(3)), None);
    }
}
