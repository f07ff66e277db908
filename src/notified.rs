//! Waiting for a condition that whoever changes it announces with a [`Notify`].

use tokio::sync::Notify;

/// Resolves with the first `Some` that `look` returns, looking again each time `notify` wakes
/// its waiters (`notify_waiters`). Cancel-safe.
pub async fn until_some<T>(notify: &Notify, mut look: impl FnMut() -> Option<T>) -> T {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        // Registered before looking, so a change in between is not missed.
        notified.as_mut().enable();
        if let Some(found) = look() {
            return found;
        }
        notified.await;
    }
}
