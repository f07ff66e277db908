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
        let all: Vec<_> = self
            .store
            .state()
            .into_iter()
            .filter(|o| o.metadata.namespace.as_deref() == Some(ns))
            .collect();
        for w in crate::planner::order::waiting_behind(m, &all) {
            // Gone only when the controller is: nothing left to wake.
            let _ = self.wake.send(ObjectRef::from_obj(w));
        }
    }
}
