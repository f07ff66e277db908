//! Announcing why the executor waits: one JSON line on stderr per distinct reason, whatever the
//! log format, so `kubectl logs` of a waiting Job says what it waits for without repeating
//! itself on every poll, and one line when that kind of wait is over. The operator reads the
//! tail of the log with [`current`] to say in status what a running Job waits on.

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
    /// The operator's commit grant (every gate holds for this attempt).
    CommitGrant,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AdvisoryLock => "advisory-lock",
            Kind::TableLock => "table-lock",
            Kind::DatabaseCheck => "database-check",
            Kind::CommitGrant => "commit-grant",
        }
    }

    const ALL: [Kind; 4] = [
        Kind::AdvisoryLock,
        Kind::TableLock,
        Kind::DatabaseCheck,
        Kind::CommitGrant,
    ];

    fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// What the wait is for, as a user reads it in status.
    fn describe(self) -> &'static str {
        match self {
            Kind::AdvisoryLock => "another migration on this database",
            Kind::TableLock => "an older transaction's lock",
            Kind::DatabaseCheck => "old sessions or transactions (database check)",
            Kind::CommitGrant => "the operator's commit grant",
        }
    }
}

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
            eprintln!(
                "{}",
                serde_json::json!({
                    "timestamp": jiff::Timestamp::now().to_string(),
                    "level": "INFO",
                    "message": "wait over",
                    "waited": kind.as_str(),
                })
            );
        }
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

/// Longest `detail` copied into status: one blocker's description, not a log.
const MAX_DETAIL_CHARS: usize = 300;

/// What the executor waits on now, from the tail of its log (other lines are ignored): the
/// newest announced reason whose wait is not over, with how many other reasons are pending,
/// e.g. `waiting for an older transaction's lock since 12:00:01Z: pid 42 … (and 2 more)`.
/// `None` when the newest wait line says the wait is over, or there is none.
pub fn current(log_tail: &str) -> Option<String> {
    let mut newest: Option<(Kind, String, String)> = None;
    let mut more = 0usize;
    // Kinds whose wait ended after (below) the lines read so far from the end.
    let mut over: HashSet<Kind> = HashSet::new();
    for raw in log_tail.lines().rev() {
        let Some(v) = raw
            .find('{')
            .and_then(|i| serde_json::from_str::<serde_json::Value>(&raw[i..]).ok())
        else {
            continue;
        };
        if let Some(k) = v
            .get("waited")
            .and_then(|w| w.as_str())
            .and_then(Kind::parse)
        {
            over.insert(k);
            continue;
        }
        let Some(kind) = v
            .get("waiting")
            .and_then(|w| w.as_str())
            .and_then(Kind::parse)
        else {
            continue;
        };
        if over.contains(&kind) {
            continue;
        }
        match &newest {
            None => {
                let detail: String = v
                    .get("detail")
                    .and_then(|d| d.as_str())
                    .unwrap_or_default()
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_DETAIL_CHARS)
                    .collect();
                let since = v
                    .get("timestamp")
                    .and_then(|t| t.as_str())
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map(|t| format!(" since {}", t.round(jiff::Unit::Second).unwrap_or(t)))
                    .unwrap_or_default();
                newest = Some((kind, since, detail));
            }
            Some(_) => more += 1,
        }
    }
    let (kind, since, detail) = newest?;
    let mut s = format!("waiting for {}{since}", kind.describe());
    if !detail.is_empty() {
        s.push_str(": ");
        s.push_str(&detail);
    }
    if more > 0 {
        s.push_str(&format!(" (and {more} more)"));
    }
    Some(s)
}

/// The wait a status message carries (the text of [`current`] inside it) and since when: how
/// the metrics tell, from the cache alone, how long a running executor has been waiting.
pub fn in_message(message: &str) -> Option<(Kind, jiff::Timestamp)> {
    Kind::ALL.into_iter().find_map(|kind| {
        let prefix = format!("waiting for {} since ", kind.describe());
        let rest = &message[message.find(&prefix)? + prefix.len()..];
        let stamp = rest.split(' ').next()?.trim_end_matches(':');
        Some((kind, stamp.parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_is_read_back_from_the_status_message() {
        let log = format!(
            "{}\n",
            serde_json::json!({"timestamp": "2025-01-01T12:00:01.25Z", "level": "INFO",
                "message": "contract waits", "waiting": "database-check",
                "detail": "pid 7 shop-api@1.0.0"})
        );
        let text = current(&log).expect("a wait");
        let message = format!("contract Job attempt 1 is running; {text}");
        assert_eq!(
            in_message(&message),
            Some((
                Kind::DatabaseCheck,
                "2025-01-01T12:00:01Z".parse().expect("ts")
            ))
        );
        // Cut by the condition's length limit after the timestamp, or without detail.
        assert!(in_message(&message[..message.find(": pid").expect("detail")]).is_some());
        assert_eq!(in_message("expand Job attempt 1 is running"), None);
        assert_eq!(
            in_message("waiting for the operator's commit grant since soon"),
            None
        );
    }

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

    fn waiting(kind: Kind, detail: &str) -> String {
        line(kind, "m", detail)
    }

    fn over(kind: Kind) -> String {
        serde_json::json!({"waited": kind.as_str()}).to_string()
    }

    #[test]
    fn the_newest_wait_still_on_is_the_current_one() {
        let log = [
            "starting".to_string(),
            waiting(
                Kind::AdvisoryLock,
                "backend pid 7 holds the Phasegate advisory lock",
            ),
            over(Kind::AdvisoryLock),
            waiting(
                Kind::TableLock,
                "pid 42 holds AccessShareLock on public.users",
            ),
            waiting(
                Kind::TableLock,
                "pid 43 holds RowExclusiveLock on public.users",
            ),
            r#"{"level":"INFO","message":"something else"}"#.to_string(),
        ]
        .join("\n");
        let now = current(&log).unwrap_or_default();
        assert!(
            now.starts_with("waiting for an older transaction's lock since "),
            "{now}"
        );
        assert!(
            now.ends_with(": pid 43 holds RowExclusiveLock on public.users (and 1 more)"),
            "{now}"
        );
    }

    #[test]
    fn nothing_when_the_newest_wait_is_over_or_there_is_none() {
        let log = [
            waiting(Kind::DatabaseCheck, "pid 5 app@1.0.0"),
            over(Kind::DatabaseCheck),
        ]
        .join("\n");
        assert_eq!(current(&log), None);
        assert_eq!(current("plain text\nnot json {"), None);
        assert_eq!(current(""), None);
    }

    #[test]
    fn a_wait_that_ended_under_a_newer_one_does_not_count() {
        // Database check waits, then a lock wait starts and the database check wait ends:
        // only the lock wait is current.
        let log = [
            waiting(Kind::DatabaseCheck, "pid 5 app@1.0.0"),
            waiting(
                Kind::TableLock,
                "pid 42 holds AccessShareLock on public.users",
            ),
            over(Kind::DatabaseCheck),
        ]
        .join("\n");
        let now = current(&log).unwrap_or_default();
        assert!(now.contains("pid 42"), "{now}");
        assert!(!now.contains("and 1 more"), "{now}");
    }

    #[test]
    fn control_characters_and_long_details_are_cut() {
        let long = format!("a\u{1b}[31m{}", "x".repeat(1000));
        let now = current(&waiting(Kind::TableLock, &long)).unwrap_or_default();
        assert!(!now.contains('\u{1b}'), "{now}");
        assert!(now.len() < 400, "{}", now.len());
    }
}
