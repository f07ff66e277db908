//! Waking the migrations whose expand waits for another one when that one changes phase: their
//! own objects do not change, so no watch event of theirs would. The change is taken from the
//! migrations watch, after the cache has it, so the woken plan from a cache that shows it. (A
//! wake sent right after our own status write came before the cache had the write: the woken
//! still saw the old phase and waited for their 5 s fallback, about 5 s per expand batch.)

use std::collections::HashMap;
use std::sync::Mutex;

use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;
use tokio::sync::mpsc::UnboundedSender;

use crate::api::{DatabaseMigration, Phase};

/// Each migration's phase as last seen on the watch, and where to send wakes.
pub struct PhaseWakes {
    seen: Mutex<HashMap<String, Option<Phase>>>,
    store: Store<DatabaseMigration>,
    wake: UnboundedSender<ObjectRef<DatabaseMigration>>,
}

impl PhaseWakes {
    pub fn new(
        store: Store<DatabaseMigration>,
        wake: UnboundedSender<ObjectRef<DatabaseMigration>>,
    ) -> PhaseWakes {
        PhaseWakes {
            seen: Mutex::default(),
            store,
            wake,
        }
    }

    /// A migration as the watch delivers it (the cache has it already): when its phase changed
    /// since last seen, reconcile the ones that may wait for it. The first sight wakes none (at
    /// startup every migration reconciles anyway).
    pub fn seen(&self, m: &DatabaseMigration) {
        let phase = m.status.as_ref().and_then(|s| s.phase);
        let before = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.insert(m.uid().unwrap_or_default(), phase)
        };
        if before.is_none_or(|b| b == phase) {
            return;
        }
        let Some(ns) = m.metadata.namespace.as_deref() else {
            return;
        };
        let all = super::cache::migrations_in(&self.store, ns);
        for w in crate::planner::order::waiting_behind(m, &all) {
            // Gone only when the controller is: nothing left to wake.
            let _ = self.wake.send(ObjectRef::from_obj(w));
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::controller::test_support::{test_migration, test_store};

    fn m(name: &str, created: i64, phase: &str) -> DatabaseMigration {
        let mut d = test_migration(name, "1", serde_json::json!({"phase": phase}));
        d.metadata.uid = Some(format!("uid-{name}"));
        d.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(1_700_000_000 + created).expect("ts"),
        ));
        d
    }

    #[test]
    fn a_phase_change_seen_on_the_watch_wakes_the_ones_waiting_behind_and_nothing_else_does() {
        let first = m("a-first", 0, "Expanding");
        let behind = [m("b-next", 1, "Pending"), m("c-last", 2, "Pending")];
        let mut all = vec![first.clone()];
        all.extend(behind.iter().cloned());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let wakes = PhaseWakes::new(test_store(all), tx);
        let woken =
            |rx: &mut tokio::sync::mpsc::UnboundedReceiver<ObjectRef<DatabaseMigration>>| {
                let mut names = Vec::new();
                while let Ok(r) = rx.try_recv() {
                    names.push(r.name);
                }
                names
            };
        wakes.seen(&first);
        assert!(woken(&mut rx).is_empty(), "the first sight wakes none");
        wakes.seen(&first);
        assert!(woken(&mut rx).is_empty(), "no phase change, no wake");
        wakes.seen(&m("a-first", 0, "AwaitingRollout"));
        assert_eq!(woken(&mut rx), ["b-next", "c-last"]);
        // The last one on its database wakes no one.
        wakes.seen(&behind[1]);
        wakes.seen(&m("c-last", 2, "Expanding"));
        assert!(woken(&mut rx).is_empty());
    }
}
