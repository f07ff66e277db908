//! Announcing why the executor waits: one JSON line on stderr per distinct reason, whatever the
//! log format, so `kubectl logs` of a waiting Job says what it waits for without repeating
//! itself on every poll, and one line when that kind of wait is over. The operator reads the
//! tail of the log with [`crate::protocol::log::current_wait`] to say in status what a running Job waits on.

use std::collections::HashSet;

pub use crate::protocol::log::WaitKind as Kind;
use crate::protocol::log::{over_line, wait_line as line};

/// The reasons announced so far in this run and not yet over.
#[derive(Debug, Default)]
pub struct Waits {
    seen: HashSet<(Kind, String)>,
}

impl Waits {
    pub fn new() -> Waits {
        Waits::default()
    }

    /// Prints the line unless this `(kind, key)` was announced before; returns whether it did.
    pub fn announce(&mut self, kind: Kind, key: String, message: &str, detail: &str) -> bool {
        if !self.seen.insert((kind, key)) {
            return false;
        }
        eprintln!("{}", line(kind, message, detail));
        true
    }

    /// The wait of this kind is over: says so once, and forgets its reasons so that a later
    /// wait for the same reason is announced again.
    pub fn done(&mut self, kind: Kind) {
        let before = self.seen.len();
        self.seen.retain(|(k, _)| *k != kind);
        if self.seen.len() != before {
            eprintln!("{}", over_line(kind));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_reason() {
        let mut w = Waits::new();
        assert!(w.announce(Kind::TableLock, "1".into(), "m", "d"));
        assert!(!w.announce(Kind::TableLock, "1".into(), "m", "d"));
        assert!(w.announce(Kind::DatabaseCheck, "1".into(), "m", "d"));
        let v: serde_json::Value =
            serde_json::from_str(&line(Kind::AdvisoryLock, "m", "pid 7")).unwrap_or_default();
        assert_eq!(v["waiting"], "advisory-lock");
        assert_eq!(v["detail"], "pid 7");
    }

    #[test]
    fn a_reason_is_announced_again_after_its_wait_was_over() {
        let mut w = Waits::new();
        assert!(w.announce(Kind::TableLock, "1".into(), "m", "d"));
        assert!(w.announce(Kind::DatabaseCheck, "9".into(), "m", "d"));
        w.done(Kind::TableLock);
        assert!(w.announce(Kind::TableLock, "1".into(), "m", "d"));
        assert!(!w.announce(Kind::DatabaseCheck, "9".into(), "m", "d"));
    }
}
