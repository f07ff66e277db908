//! Announcing why the executor waits: one JSON line on stderr per distinct reason, whatever the
//! log format, so `kubectl logs` of a waiting Job says what it waits for without repeating
//! itself on every poll.

use std::collections::HashSet;

/// What kind of wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Another migration holds the per-database advisory lock.
    AdvisoryLock,
    /// An older transaction holds (or waits for) a lock on a table we need.
    TableLock,
    /// Contract's database check: an old-version session or a pre-rollout transaction.
    DatabaseCheck,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AdvisoryLock => "advisory-lock",
            Kind::TableLock => "table-lock",
            Kind::DatabaseCheck => "database-check",
        }
    }
}

/// The reasons announced so far in this run.
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
}

/// The shape of the JSON lines `tracing` prints with `--log-format json`, plus `waiting` and
/// `detail`.
fn line(kind: Kind, message: &str, detail: &str) -> String {
    serde_json::json!({
        "timestamp": jiff::Timestamp::now().to_string(),
        "level": "INFO",
        "message": message,
        "waiting": kind.as_str(),
        "detail": detail,
    })
    .to_string()
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
}
