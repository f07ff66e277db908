//! Connections a fleet run hands from one tenant's run to the next (kept apart from
//! `session`, which needs the run's settings, so that the settings can name this type).

use tokio_postgres::Client;

use super::connect::ConnSettings;

/// Connections a fleet run hands from one run to the next (see [`super::fleet`]): a run takes
/// an idle pair if there is one and gives it back once it ended cleanly (no transaction open:
/// the executor sets nothing on the session but a schema tenant's `search_path`, and its
/// advisory lock is transaction-scoped). Schema tenants pass theirs from tenant to tenant,
/// which needs one server session per connection (never a transaction pooler); a database
/// tenant's own runs (contract's look at expand, then contract) share one pool of their own.
#[derive(Clone, Default)]
pub struct Sessions(std::sync::Arc<std::sync::Mutex<Vec<Pair>>>);

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions")
    }
}

/// The statements' connection of one run, and the advisory lock's guard if the run opened one
/// (for a statement outside a transaction block).
pub(super) struct Pair {
    pub client: Client,
    pub guard: Option<Client>,
    pub settings: ConnSettings,
    pub version: i32,
}

impl Sessions {
    pub(super) fn take(&self) -> Option<Pair> {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(p) = idle.pop() {
            if !p.client.is_closed() && !p.guard.as_ref().is_some_and(Client::is_closed) {
                return Some(p);
            }
        }
        None
    }

    pub(super) fn put(&self, pair: Pair) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(pair);
    }
}
