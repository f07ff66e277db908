//! The executor's half of the commit grant ([`crate::protocol::grant`]): a background task
//! asks the operator while the run waits and renews the answer every half second; the run checks
//! the grant locally right before COMMIT, so the round trip never adds to the time the DDL
//! holds its locks. Whatever goes wrong on the way — the operator down or not leading, no
//! route, a slow answer — leaves no valid grant, and no valid grant means no COMMIT.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::error::ApplyError;
use super::stop::Stop;
use super::waits::{Kind, Waits};
use crate::protocol::grant::{self, Answer, Request, Verdict};

/// How long one request may take beyond its hold; a slower answer is no answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a run asks for its grant, and for which attempt.
#[derive(Clone, Debug)]
pub struct GrantConfig {
    /// The operator's base URL (`http://host:port`).
    pub url: String,
    pub request: Request,
    /// How long a step may wait for a grant before the run gives up.
    pub wait: Duration,
}

#[derive(Debug, Default)]
struct State {
    /// Until when the last "yes" holds, on this process's monotonic clock.
    valid_until: Option<Instant>,
    /// The operator said this attempt will never commit.
    superseded: bool,
    /// The last answer's reason, or why there was none.
    reason: String,
}

impl State {
    /// A valid "yes" is held right now.
    fn holds(&self) -> bool {
        !self.superseded && self.valid_until.is_some_and(|t| Instant::now() < t)
    }
}

/// A running grant: the renewal task and what it learnt last.
pub struct Grant {
    attempt: u32,
    wait: Duration,
    state: Arc<Mutex<State>>,
    changed: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("attempt", &self.attempt)
            .field("holds", &self.holds())
            .finish()
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Grant {
    /// Start asking now and keep asking every [`grant::RENEW_EVERY_MS`].
    pub fn start(cfg: GrantConfig) -> Grant {
        let state = Arc::new(Mutex::new(State {
            reason: "not asked yet".into(),
            ..State::default()
        }));
        let changed = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(renew(cfg.clone(), state.clone(), changed.clone()));
        Grant {
            attempt: cfg.request.attempt,
            wait: cfg.wait,
            state,
            changed,
            task,
        }
    }

    /// A valid grant is held right now.
    pub fn holds(&self) -> bool {
        self.with(State::holds)
    }

    /// Why no grant is held (the last answer's reason).
    pub fn reason(&self) -> String {
        self.with(|s| s.reason.clone())
    }

    fn with<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        match self.state.lock() {
            Ok(s) => f(&s),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Why the operator said this attempt will never commit, if it has.
    pub fn superseded_why(&self) -> Option<String> {
        self.with(|s| s.superseded.then(|| s.reason.clone()))
    }

    /// The error that ends the run, once the operator said this attempt will never commit.
    fn superseded_error(&self) -> Option<ApplyError> {
        self.superseded_why().map(|why| ApplyError::Superseded {
            attempt: self.attempt,
            why,
        })
    }

    /// Resolves once the operator says this attempt will never commit (at once if it has):
    /// the error that ends the run.
    pub async fn superseded(&self) -> ApplyError {
        crate::notified::until_some(&self.changed, || self.superseded_error()).await
    }

    /// Waits until a grant is held, announcing the wait; fails once the operator says the
    /// attempt is superseded, or after the run's grant budget (`waited` counts across steps).
    pub async fn acquire(
        &self,
        stop: &Stop,
        waits: &mut Waits,
        waited: &mut Duration,
    ) -> Result<(), ApplyError> {
        let start = Instant::now();
        loop {
            if let Some(e) = self.superseded_error() {
                return Err(e);
            }
            if self.holds() {
                *waited += start.elapsed();
                waits.done(Kind::CommitGrant);
                return Ok(());
            }
            let total = *waited + start.elapsed();
            if total >= self.wait {
                *waited = total;
                return Err(ApplyError::NoCommitGrant {
                    attempt: self.attempt,
                    waited: humantime::format_duration(Duration::from_secs(total.as_secs()))
                        .to_string(),
                    why: self.reason(),
                });
            }
            let reason = self.reason();
            waits.announce(
                Kind::CommitGrant,
                reason.clone(),
                "waiting for the operator's commit grant",
                &reason,
            );
            let notified = self.changed.notified();
            tokio::select! {
                biased;
                signal = stop.wait() => return Err(signal.into()),
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(grant::RENEW_EVERY_MS)) => {}
            }
        }
    }
}

/// The renewal loop: ask, record, sleep; forever (the run aborts it when done). While a "yes"
/// is held, each renewal lets the operator hold it for up to [`grant::RENEW_EVERY_MS`], so
/// a stop it decides meanwhile is answered at once; an operator that answers at once is
/// asked again after that interval all the same.
async fn renew(cfg: GrantConfig, state: Arc<Mutex<State>>, changed: Arc<tokio::sync::Notify>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut last_verdict: Option<Verdict> = None;
    let holding = |s: &Arc<Mutex<State>>| match s.lock() {
        Ok(s) => s.holds(),
        Err(poisoned) => poisoned.into_inner().holds(),
    };
    loop {
        let sent = Instant::now();
        let mut cfg = cfg.clone();
        cfg.request.hold_ms = if holding(&state) {
            grant::RENEW_EVERY_MS
        } else {
            0
        };
        let limit = ASK_TIMEOUT + Duration::from_millis(cfg.request.hold_ms);
        let answer = tokio::time::timeout(limit, ask(&client, &cfg)).await;
        let answer = match answer {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!(
                "the operator did not answer within {} ms",
                limit.as_millis()
            )),
        };
        // Logged before the run can act on it: a COMMIT is always preceded by its grant's line.
        let verdict = answer.as_ref().ok().map(|a| a.verdict);
        if verdict != last_verdict {
            match &answer {
                Ok(a) => tracing::info!(verdict = ?a.verdict, reason = %a.reason, "commit grant"),
                Err(e) => tracing::warn!(error = %e, "no answer to the commit grant request"),
            }
            last_verdict = verdict;
        }
        if let Ok(mut s) = state.lock() {
            match &answer {
                Ok(a) => {
                    s.reason.clone_from(&a.reason);
                    match a.verdict {
                        Verdict::Granted => {
                            // Never more held than asked: the operator cannot stretch it.
                            let held = a.held_ms.min(cfg.request.hold_ms);
                            s.valid_until =
                                sent.checked_add(Duration::from_millis(held + a.valid_for_ms))
                        }
                        Verdict::Withheld => s.valid_until = None,
                        Verdict::Superseded => {
                            s.valid_until = None;
                            s.superseded = true;
                        }
                    }
                }
                // No answer leaves the last grant to run out on its own.
                Err(e) => s.reason = format!("no answer from the operator: {e}"),
            }
        }
        changed.notify_waiters();
        let elapsed = sent.elapsed();
        tokio::time::sleep(Duration::from_millis(grant::RENEW_EVERY_MS).saturating_sub(elapsed))
            .await;
    }
}

/// One request: the operator's answer, or why there was none.
async fn ask<C>(client: &Client<C, Full<Bytes>>, cfg: &GrantConfig) -> Result<Answer, String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let body = serde_json::to_vec(&cfg.request).map_err(|e| e.to_string())?;
    let url = format!("{}{}", cfg.url.trim_end_matches('/'), grant::PATH);
    let req = hyper::Request::post(&url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("{url}: {e}"))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    if !status.is_success() {
        let text: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
        return Err(format!("{url}: HTTP {status}: {text}"));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("{url}: not a grant answer: {e}"))
}
