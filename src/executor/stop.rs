//! Stopping `phasegate apply` on SIGTERM or SIGINT.
//!
//! The operator deletes the Job of a contract attempt whose gate closed (a rollback, a revoked
//! approval), and Kubernetes then sends SIGTERM. From then on the executor must never send
//! COMMIT: every wait races against [`Stop::wait`], a statement in flight is cancelled on the
//! server, and the flag is read once more immediately before COMMIT.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// The signal that asked us to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Int,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
        }
    }

    /// Exit status of a run stopped before COMMIT: 128 + the signal number, as a shell reports
    /// a process killed by it.
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Term => 143,
            Signal::Int => 130,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Signal::Term => 1,
            Signal::Int => 2,
        }
    }

    fn from_u8(v: u8) -> Option<Signal> {
        match v {
            1 => Some(Signal::Term),
            2 => Some(Signal::Int),
            _ => None,
        }
    }
}

/// A shared stop request; clones observe the same request.
#[derive(Clone, Default)]
pub struct Stop(Arc<Inner>);

#[derive(Default)]
struct Inner {
    signal: AtomicU8,
    notify: Notify,
}

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stop({:?})", self.requested())
    }
}

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Records the request (the first signal wins) and wakes every waiter.
    pub fn request(&self, signal: Signal) {
        let _ =
            self.0
                .signal
                .compare_exchange(0, signal.to_u8(), Ordering::SeqCst, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    pub fn requested(&self) -> Option<Signal> {
        Signal::from_u8(self.0.signal.load(Ordering::SeqCst))
    }

    /// Resolves once a stop is requested (at once if it already was). Cancel-safe.
    pub async fn wait(&self) -> Signal {
        crate::notified::until_some(&self.0.notify, || self.requested()).await
    }

    /// Turns SIGTERM and SIGINT into stop requests for the rest of the process's life. The
    /// handlers replace the default action (terminate), also for PID 1 in a container.
    pub fn on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stop = self.clone();
        tokio::spawn(async move {
            loop {
                let s = tokio::select! {
                    Some(()) = term.recv() => Signal::Term,
                    Some(()) = int.recv() => Signal::Int,
                    else => return,
                };
                stop.request(s);
                tracing::warn!(
                    signal = s.name(),
                    "stop requested: nothing more will be committed"
                );
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_request_wins_and_wakes_waiters() {
        let stop = Stop::new();
        assert_eq!(stop.requested(), None);
        let waiter = {
            let stop = stop.clone();
            tokio::spawn(async move { stop.wait().await })
        };
        tokio::task::yield_now().await;
        stop.request(Signal::Int);
        stop.request(Signal::Term);
        assert_eq!(waiter.await.ok(), Some(Signal::Int));
        assert_eq!(stop.requested(), Some(Signal::Int));
        assert_eq!(stop.wait().await, Signal::Int);
        assert_eq!(
            (Signal::Term.exit_code(), Signal::Int.exit_code()),
            (143, 130)
        );
    }
}
