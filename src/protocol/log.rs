//! The log lines the operator reads from the tail of a running executor's log (the
//! executor's stderr): why it waits ([`wait_line`], [`over_line`], read back by
//! [`current_wait`]) and, for a backfill, its progress ([`progress_line`], read back by
//! [`progress`]; the throttle reasons in it by [`throttle_kind`]), and for a fleet its
//! tenants so far ([`tenants_line`], read back by [`tenants_progress`]). One JSON object a line, in
//! the shape of `tracing`'s JSON lines, whatever the log format; other lines are ignored.

use std::collections::HashSet;
use std::time::Duration;

use crate::api::{BackfillProgress, TenantsStatus};

/// What kind of wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitKind {
    /// Another migration holds the per-database advisory lock.
    AdvisoryLock,
    /// An older transaction holds (or waits for) a lock on a table we need.
    TableLock,
    /// Contract's database check: an old-version session or a pre-rollout transaction.
    DatabaseCheck,
    /// The operator's commit grant (every gate holds for this attempt).
    CommitGrant,
    /// Expand: an earlier migration on the same database has not applied its expand yet.
    EarlierMigration,
}

impl WaitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitKind::AdvisoryLock => "advisory-lock",
            WaitKind::TableLock => "table-lock",
            WaitKind::DatabaseCheck => "database-check",
            WaitKind::CommitGrant => "commit-grant",
            WaitKind::EarlierMigration => "earlier-migration",
        }
    }

    /// Every kind, for parsing.
    pub const ALL: [WaitKind; 5] = [
        WaitKind::AdvisoryLock,
        WaitKind::TableLock,
        WaitKind::DatabaseCheck,
        WaitKind::CommitGrant,
        WaitKind::EarlierMigration,
    ];

    pub fn parse(s: &str) -> Option<WaitKind> {
        WaitKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// What the wait is for, as a user reads it in status.
    pub fn describe(self) -> &'static str {
        match self {
            WaitKind::AdvisoryLock => "another migration on this database",
            WaitKind::TableLock => "an older transaction's lock",
            WaitKind::DatabaseCheck => "old sessions or transactions (database check)",
            WaitKind::CommitGrant => "the operator's commit grant",
            WaitKind::EarlierMigration => "the expand of earlier migrations on this database",
        }
    }
}

/// The line that says a kind of wait is over.
pub fn over_line(kind: WaitKind) -> String {
    serde_json::json!({
        "timestamp": jiff::Timestamp::now().to_string(),
        "level": "INFO",
        "message": "wait over",
        "waited": kind.as_str(),
    })
    .to_string()
}

/// The shape of the JSON lines `tracing` prints with `--log-format json`, plus `waiting` and
/// `detail`.
pub fn wait_line(kind: WaitKind, message: &str, detail: &str) -> String {
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
pub fn current_wait(log_tail: &str) -> Option<String> {
    let mut newest: Option<(WaitKind, String, String)> = None;
    let mut more = 0usize;
    // Kinds whose wait ended after (below) the lines read so far from the end.
    let mut over: HashSet<WaitKind> = HashSet::new();
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
            .and_then(WaitKind::parse)
        {
            over.insert(k);
            continue;
        }
        let Some(kind) = v
            .get("waiting")
            .and_then(|w| w.as_str())
            .and_then(WaitKind::parse)
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

/// The wait a status message carries (the text of [`current_wait`] inside it) and since
/// when: how the metrics tell, from the cache alone, how long a running executor has been
/// waiting.
pub fn wait_in_message(message: &str) -> Option<(WaitKind, jiff::Timestamp)> {
    WaitKind::ALL.into_iter().find_map(|kind| {
        let prefix = format!("waiting for {} since ", kind.describe());
        let rest = &message[message.find(&prefix)? + prefix.len()..];
        let stamp = rest.split(' ').next()?.trim_end_matches(':');
        Some((kind, stamp.parse().ok()?))
    })
}

impl BackfillProgress {
    /// One line for a status message.
    pub fn summary(&self) -> String {
        if let Some(t) = &self.tenants {
            return self.tenants_summary(t);
        }
        let mut s = format!(
            "backfilled {} row(s) of ~{} ({}.{}% of the key range, {} batches of {}, {} rows/s",
            self.rows_done,
            self.estimated_rows,
            self.key_range_done_permille / 10,
            self.key_range_done_permille % 10,
            self.batches,
            self.batch_size,
            self.rows_per_second
        );
        s.push_str(&self.eta());
        s.push(')');
        if let Some(t) = &self.throttled {
            s.push_str(&format!("; throttled: {t}"));
        }
        s
    }

    /// `, ETA 2m` when there is an estimate.
    fn eta(&self) -> String {
        self.eta_seconds.map_or_else(String::new, |eta| {
            format!(
                ", ETA {}",
                humantime::format_duration(Duration::from_secs(eta.max(0) as u64))
            )
        })
    }

    /// E.g. `backfilled 12 of 50 tenants (4 running, 1 failed; 27.5% of the work): 120000
    /// row(s) of ~480000 in the tenants walked so far, 5000 rows/s, ETA 2m`.
    fn tenants_summary(&self, t: &crate::api::TenantsStatus) -> String {
        let running = t.total.saturating_sub(t.applied + t.failed + t.not_run);
        let mut s = format!(
            "backfilled {} of {} tenants ({running} running, {} failed; {}.{}% of the work): \
             {} row(s) of ~{} in the tenants walked so far, {} rows/s",
            t.applied,
            t.total,
            t.failed,
            self.key_range_done_permille / 10,
            self.key_range_done_permille % 10,
            self.rows_done,
            self.estimated_rows,
            self.rows_per_second
        );
        s.push_str(&self.eta());
        if let Some(h) = &t.halted {
            s.push_str(&format!("; halted: {h}"));
        }
        if let Some(why) = &self.throttled {
            s.push_str(&format!("; throttled: {why}"));
        }
        s
    }
}

/// The newest progress line in the tail of the executor's log, if any.
pub fn progress(log_tail: &str) -> Option<BackfillProgress> {
    newest(log_tail, None, "backfill")
}

/// `key` of the newest JSON line in `log_tail` that has it (and, if given, this `message`).
fn newest<T: serde::de::DeserializeOwned>(
    log_tail: &str,
    message: Option<&str>,
    key: &str,
) -> Option<T> {
    log_tail.lines().rev().find_map(|raw| {
        let v: serde_json::Value = serde_json::from_str(&raw[raw.find('{')?..]).ok()?;
        if message.is_some_and(|m| v.get("message").and_then(|x| x.as_str()) != Some(m)) {
            return None;
        }
        serde_json::from_value(v.get(key)?.clone()).ok()
    })
}

/// The kinds of throttle reason, as metric label values: a small fixed set (the messages
/// themselves carry numbers and would make a new series per value).
pub const THROTTLE_KINDS: [&str; 7] = [
    "replication_lag",
    "lock_waiters",
    "lock_timeout",
    "deadlock",
    "statement_timeout",
    "slow_batch",
    "other",
];

/// The kind of a `throttled` message this executor prints (see [`THROTTLE_KINDS`]); `other`
/// for anything else, e.g. a message of a newer executor image.
pub fn throttle_kind(message: &str) -> &'static str {
    if message.starts_with("replication lag") {
        "replication_lag"
    } else if message.contains("wait for a lock on the table") {
        "lock_waiters"
    } else if message.starts_with("lock timeout") {
        "lock_timeout"
    } else if message.starts_with("deadlock") {
        "deadlock"
    } else if message.starts_with("statement timeout") {
        "statement_timeout"
    } else if message.starts_with("batch took") {
        "slow_batch"
    } else {
        "other"
    }
}

/// The progress line `phasegate backfill` prints on stderr (at most one per
/// couple of seconds), which the operator reads back with [`progress`].
pub fn progress_line(p: &BackfillProgress) -> String {
    serde_json::json!({
        "timestamp": jiff::Timestamp::now().to_string(),
        "level": "INFO",
        "message": "backfill progress",
        "backfill": p,
    })
    .to_string()
}

/// The line a fleet's executor prints on stderr (at most one per couple of seconds, and when
/// a wave ends): its tenants so far, read back by [`tenants_progress`].
pub fn tenants_line(t: &TenantsStatus) -> String {
    serde_json::json!({
        "timestamp": jiff::Timestamp::now().to_string(),
        "level": "INFO",
        "message": TENANTS_PROGRESS,
        "tenants": t,
    })
    .to_string()
}

/// The newest tenants line in the tail of the executor's log, if any.
pub fn tenants_progress(log_tail: &str) -> Option<TenantsStatus> {
    newest(log_tail, Some(TENANTS_PROGRESS), "tenants")
}

/// The message of [`tenants_line`].
const TENANTS_PROGRESS: &str = "tenants progress";

impl TenantsStatus {
    /// One line for a status message while the tenants run.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} of {} tenant(s) applied so far",
            self.applied, self.total
        );
        if self.failed > 0 {
            s.push_str(&format!(", {} failed", self.failed));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(kind: WaitKind, detail: &str) -> String {
        wait_line(kind, "m", detail)
    }

    fn over(kind: WaitKind) -> String {
        over_line(kind)
    }

    #[test]
    fn the_newest_wait_still_on_is_the_current_one() {
        let log = [
            "starting".to_string(),
            waiting(
                WaitKind::AdvisoryLock,
                "backend pid 7 holds the Phasegate advisory lock",
            ),
            over(WaitKind::AdvisoryLock),
            waiting(
                WaitKind::TableLock,
                "pid 42 holds AccessShareLock on public.users",
            ),
            waiting(
                WaitKind::TableLock,
                "pid 43 holds RowExclusiveLock on public.users",
            ),
            r#"{"level":"INFO","message":"something else"}"#.to_string(),
        ]
        .join("\n");
        let now = current_wait(&log).unwrap_or_default();
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
            waiting(WaitKind::DatabaseCheck, "pid 5 app@1.0.0"),
            over(WaitKind::DatabaseCheck),
        ]
        .join("\n");
        assert_eq!(current_wait(&log), None);
        assert_eq!(current_wait("plain text\nnot json {"), None);
        assert_eq!(current_wait(""), None);
    }

    #[test]
    fn a_wait_that_ended_under_a_newer_one_does_not_count() {
        // Database check waits, then a lock wait starts and the database check wait ends:
        // only the lock wait is current.
        let log = [
            waiting(WaitKind::DatabaseCheck, "pid 5 app@1.0.0"),
            waiting(
                WaitKind::TableLock,
                "pid 42 holds AccessShareLock on public.users",
            ),
            over(WaitKind::DatabaseCheck),
        ]
        .join("\n");
        let now = current_wait(&log).unwrap_or_default();
        assert!(now.contains("pid 42"), "{now}");
        assert!(!now.contains("and 1 more"), "{now}");
    }

    #[test]
    fn control_characters_and_long_details_are_cut() {
        let long = format!("a\u{1b}[31m{}", "x".repeat(1000));
        let now = current_wait(&waiting(WaitKind::TableLock, &long)).unwrap_or_default();
        assert!(!now.contains('\u{1b}'), "{now}");
        assert!(now.len() < 400, "{}", now.len());
    }

    #[test]
    fn reads_the_newest_tenants_line() {
        let t = |applied| TenantsStatus {
            total: 100,
            applied,
            ..Default::default()
        };
        let tail = format!(
            "{}\n{{\"message\":\"tenant_07: applied\"}}\n{}\nnot json\n{}\n",
            tenants_line(&t(10)),
            tenants_line(&t(40)),
            wait_line(WaitKind::TableLock, "waiting", "pid 1")
        );
        assert_eq!(tenants_progress(&tail), Some(t(40)));
        assert_eq!(tenants_progress("{\"message\":\"x\",\"tenants\":{}}"), None);
        assert_eq!(t(40).summary(), "40 of 100 tenant(s) applied so far");
    }

    #[test]
    fn reads_the_newest_progress_line() {
        let p1 = BackfillProgress {
            rows_done: 10,
            ..Default::default()
        };
        let p2 = BackfillProgress {
            rows_done: 20,
            throttled: Some("lock".into()),
            ..Default::default()
        };
        let log = format!(
            "{}\nnoise\n{}\n{{\"message\":\"other\"}}\n",
            progress_line(&p1),
            progress_line(&p2)
        );
        assert_eq!(progress(&log), Some(p2));
        assert_eq!(progress("nothing"), None);
    }

    #[test]
    fn every_wait_kind_round_trips() {
        for k in WaitKind::ALL {
            assert_eq!(WaitKind::parse(k.as_str()), Some(k));
            let now = current_wait(&wait_line(k, "m", "pid 1")).unwrap_or_default();
            assert!(
                now.starts_with(&format!("waiting for {} since ", k.describe())),
                "{now}"
            );
            assert!(now.ends_with(": pid 1"), "{now}");
            let ended = format!("{}\n{}", wait_line(k, "m", "pid 1"), over_line(k));
            assert_eq!(current_wait(&ended), None);
        }
    }

    #[test]
    fn throttle_reasons_keep_their_kind() {
        for (message, kind) in [
            ("replication lag 12s > 10s", "replication_lag"),
            ("lock timeout on batch 3", "lock_timeout"),
            ("something new", "other"),
        ] {
            assert_eq!(throttle_kind(message), kind);
            assert!(THROTTLE_KINDS.contains(&kind));
        }
    }

    #[test]
    fn the_wait_is_read_back_from_the_status_message() {
        let log = format!(
            "{}\n",
            serde_json::json!({"timestamp": "2025-01-01T12:00:01.25Z", "level": "INFO",
                "message": "contract waits", "waiting": "database-check",
                "detail": "pid 7 shop-api@1.0.0"})
        );
        let text = current_wait(&log).expect("a wait");
        let message = format!("contract Job attempt 1 is running; {text}");
        assert_eq!(
            wait_in_message(&message),
            Some((
                WaitKind::DatabaseCheck,
                "2025-01-01T12:00:01Z".parse().expect("ts")
            ))
        );
        // Cut by the condition's length limit after the timestamp, or without detail.
        assert!(wait_in_message(&message[..message.find(": pid").expect("detail")]).is_some());
        assert_eq!(wait_in_message("expand Job attempt 1 is running"), None);
        assert_eq!(
            wait_in_message("waiting for the operator's commit grant since soon"),
            None
        );
    }
}
