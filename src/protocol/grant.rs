//! The commit grant: before COMMIT a contract attempt must hold a fresh "yes" from the
//! leading operator, bound to (migration UID, phase, attempt). Silence — an operator that is
//! down, not the leader, partitioned, refused by RBAC or confused by an invalid spec — means
//! no grant, and the executor rolls back and waits: the fence fails safe.
//!
//! The executor asks over HTTP (`POST` [`PATH`] with a [`Request`]) and keeps asking while it
//! waits; an answer is valid for [`Answer::valid_for_ms`] counted on the executor's own
//! monotonic clock from the moment it *sent* the request (a held renewal: plus the time the
//! operator held it before it read the world, [`Answer::held_ms`]), so neither clock skew
//! nor a slow answer stretches it.

use serde::{Deserialize, Serialize};

/// The operator's endpoint for grants.
pub const PATH: &str = "/v1/commit-grant";

/// The executor's environment variable naming the operator's grant endpoint (base URL). Set
/// by the operator on every contract Job it builds for inline SQL.
pub const ENV_URL: &str = "PHASEGATE_GRANT_URL";
/// The executor's environment variable naming the attempt number of its Job.
pub const ENV_ATTEMPT: &str = "PHASEGATE_ATTEMPT";
/// How long an executor waits for a grant (in all) before it gives up with a clear report.
pub const ENV_WAIT: &str = "PHASEGATE_GRANT_WAIT";

/// How long a grant is valid after the executor sent its request. The longest a commit can
/// follow the last "yes": the window the fail-silent cases (operator stopped, partitioned)
/// leave, documented in docs/guarantees.md.
pub const VALIDITY_MS: u64 = 2_000;
/// How often the executor asks again while it holds or waits for a grant: while the operator
/// runs, a gate that closes withdraws a held grant within this (plus one answer's time).
pub const RENEW_EVERY_MS: u64 = 500;
/// The longest the operator holds a renewal ([`Request::hold_ms`]) before it judges.
pub const MAX_HOLD_MS: u64 = 1_000;

/// What the executor asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub namespace: String,
    pub migration: String,
    /// The migration's UID: a migration deleted and created again under the same name is
    /// another migration.
    pub uid: String,
    /// `contract`.
    pub phase: String,
    pub attempt: u32,
    /// A renewal of a held "yes": the operator may keep the request this long before it
    /// judges, and answers at once if it stops the attempt meanwhile. So the "yes" the executor
    /// holds is withdrawn the moment the operator decides to stop, not at the next renewal.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hold_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The operator's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    pub verdict: Verdict,
    /// Why, for the executor's log and report (e.g. the gate that is closed).
    pub reason: String,
    /// How long a `Granted` answer stays valid, from when the request was sent (plus
    /// [`Answer::held_ms`]).
    #[serde(default)]
    pub valid_for_ms: u64,
    /// How long the operator held the request before it began to read the world (at most the
    /// request's `holdMs`): the validity starts that much later, as the read did, so a held
    /// renewal costs the executor none of it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_ms: u64,
}

/// The three answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Every gate holds for this attempt, judged on a fresh read of the API server.
    Granted,
    /// Not now: a gate is closed, this replica does not lead, the status has not recorded
    /// the attempt yet. Roll back, wait, ask again.
    Withheld,
    /// This attempt will never get a grant: it was stopped or replaced, or the migration is
    /// gone. Roll back and exit.
    Superseded,
}

impl Answer {
    pub fn granted() -> Answer {
        Answer {
            verdict: Verdict::Granted,
            reason: "every gate holds".into(),
            valid_for_ms: VALIDITY_MS,
            held_ms: 0,
        }
    }

    pub fn withheld(reason: impl Into<String>) -> Answer {
        Answer {
            verdict: Verdict::Withheld,
            reason: reason.into(),
            valid_for_ms: 0,
            held_ms: 0,
        }
    }

    pub fn superseded(reason: impl Into<String>) -> Answer {
        Answer {
            verdict: Verdict::Superseded,
            reason: reason.into(),
            valid_for_ms: 0,
            held_ms: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_round_trips() {
        let req = Request {
            namespace: "shop".into(),
            migration: "m".into(),
            uid: "u-1".into(),
            phase: "contract".into(),
            attempt: 2,
            hold_ms: 0,
        };
        let text = serde_json::to_string(&req).expect("json");
        assert_eq!(
            text,
            r#"{"namespace":"shop","migration":"m","uid":"u-1","phase":"contract","attempt":2}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).expect("parse"), req);
        let ans = Answer::granted();
        let text = serde_json::to_string(&ans).expect("json");
        assert!(text.contains(r#""verdict":"Granted""#), "{text}");
        assert!(text.contains(r#""validForMs":2000"#), "{text}");
        assert_eq!(serde_json::from_str::<Answer>(&text).expect("parse"), ans);
    }

    #[test]
    fn a_renewal_says_how_long_it_may_be_held() {
        let req = Request {
            namespace: "shop".into(),
            migration: "m".into(),
            uid: "u-1".into(),
            phase: "contract".into(),
            attempt: 1,
            hold_ms: 500,
        };
        let text = serde_json::to_string(&req).expect("json");
        assert!(text.ends_with(r#""attempt":1,"holdMs":500}"#), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).expect("parse"), req);
        let held = Answer {
            held_ms: 500,
            ..Answer::granted()
        };
        let text = serde_json::to_string(&held).expect("json");
        assert!(
            text.ends_with(r#""validForMs":2000,"heldMs":500}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Answer>(&text).expect("parse"), held);
    }
}
