//! The operator's HTTP endpoints (axum): `/metrics` (OpenMetrics text), `/healthz`
//! (liveness) and `/readyz` (readiness), on `--metrics-addr`; and, on `--grant-addr`, the
//! commit grant endpoint contract executors ask before COMMIT
//! ([`crate::protocol::grant`], answered by [`crate::controller::fence::GrantDesk`]).
//!
//! - `/healthz` is 200 while the task that drives the lease election and the controller keeps
//!   ticking (see [`Health::keep_alive`]) and nothing fatal happened; a stuck or dead loop fails
//!   it, and the kubelet restarts the container.
//! - `/readyz` is 200 on a standby that takes part in the election, and on the leader once the
//!   controller's cache of migrations is synced; 503 while starting, while the new leader's
//!   caches fill, and while shutting down. A standby must be ready, or `replicas: 2` would never
//!   become ready.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use crate::metrics::Metrics;

/// How often the main loop ticks.
pub const TICK: Duration = Duration::from_secs(2);
/// Liveness fails when the main loop has not ticked for this long.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// What this replica is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Connecting, checking the CRD, creating the Lease.
    Starting = 0,
    /// Taking part in the election without holding the Lease.
    Standby = 1,
    /// Holding the Lease (or running without election) and running the controller.
    Leader = 2,
    /// Shutting down: the controller drains and the Lease is released.
    Stopping = 3,
}

impl Role {
    fn from_u8(v: u8) -> Role {
        match v {
            1 => Role::Standby,
            2 => Role::Leader,
            3 => Role::Stopping,
            _ => Role::Starting,
        }
    }
}

/// Liveness and readiness state, shared by the main loop, the controller and the server.
pub struct Health {
    epoch: Instant,
    /// Milliseconds since `epoch` of the main loop's last tick.
    last_tick_ms: AtomicU64,
    role: AtomicU8,
    /// The leader's controller cache of migrations is synced.
    synced: AtomicBool,
    fatal: Mutex<Option<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health {
            epoch: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
            role: AtomicU8::new(Role::Starting as u8),
            synced: AtomicBool::new(false),
            fatal: Mutex::new(None),
        }
    }

    /// Record that the main loop made progress.
    pub fn tick(&self) {
        self.last_tick_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Tick every [`TICK`] forever. Poll it in the same task (`select!`) as the loop it vouches
    /// for, so that a blocked loop stops the ticks.
    pub async fn keep_alive(&self) {
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.tick();
        }
    }

    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Relaxed);
        if role != Role::Leader {
            self.synced.store(false, Ordering::Relaxed);
        }
    }

    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Relaxed))
    }

    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Relaxed);
    }

    /// Something this process cannot recover from; liveness fails from now on.
    pub fn fail(&self, why: impl Into<String>) {
        *self.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.into());
    }

    /// `Ok` while alive, or why not.
    pub fn live(&self) -> Result<(), String> {
        self.live_at(self.epoch.elapsed())
    }

    fn live_at(&self, now: Duration) -> Result<(), String> {
        if let Some(why) = self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(why);
        }
        let last = Duration::from_millis(self.last_tick_ms.load(Ordering::Relaxed));
        let since = now.saturating_sub(last);
        if since > STALE_AFTER {
            return Err(format!(
                "the main loop has not ticked for {}s",
                since.as_secs()
            ));
        }
        Ok(())
    }

    /// `Ok` while ready, or why not.
    pub fn ready(&self) -> Result<&'static str, String> {
        self.live()?;
        match self.role() {
            Role::Starting => Err("starting".into()),
            Role::Stopping => Err("shutting down".into()),
            Role::Standby => Ok("standby: waiting for the leader Lease"),
            Role::Leader if self.synced.load(Ordering::Relaxed) => Ok("leader: caches synced"),
            Role::Leader => Err("leader: waiting for the migration cache to sync".into()),
        }
    }
}

/// The router of `/metrics`, `/healthz` and `/readyz`.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(metrics)
        .merge(
            Router::new()
                .route("/healthz", get(healthz))
                .route("/readyz", get(readyz))
                .with_state(health),
        )
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn healthz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    match health.live() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    match health.ready() {
        Ok(what) => (StatusCode::OK, format!("{what}\n")),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// Bind `addr` (port 0 picks a free port) and serve in the background. Returns the bound
/// address; a bind failure is an error (another process on the port, a bad address).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} for /metrics, /healthz and /readyz: {e}")
    })?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "serving /metrics, /healthz and /readyz");
    let app = router(metrics, health);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics and health server stopped");
        }
    });
    Ok(local)
}

/// Serve the commit grant endpoint on `addr` (its own listener, so that a NetworkPolicy can
/// open it to executor pods and nothing else). Returns the bound address.
pub async fn serve_grants(
    addr: SocketAddr,
    desk: Arc<crate::controller::fence::GrantDesk>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for commit grants: {e}"))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "serving commit grants");
    let app = Router::new()
        .route(crate::protocol::grant::PATH, post(grant_handler))
        .with_state(desk);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the commit grant server stopped");
        }
    });
    Ok(local)
}

async fn grant_handler(
    State(desk): State<Arc<crate::controller::fence::GrantDesk>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let json = [(header::CONTENT_TYPE, "application/json")];
    let req: crate::protocol::grant::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                json,
                serde_json::json!({"error": format!("not a grant request: {e}")}).to_string(),
            )
                .into_response()
        }
    };
    let answer = desk.answer(&req).await;
    tracing::debug!(namespace = %req.namespace, migration = %req.migration, attempt = req.attempt, verdict = ?answer.verdict, reason = %answer.reason, "commit grant answered");
    let mut resp = match serde_json::to_string(&answer) {
        Ok(text) => (StatusCode::OK, json, text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json,
            serde_json::json!({"error": e.to_string()}).to_string(),
        )
            .into_response(),
    };
    // The Service balances connections, not requests, and the executor keeps its connection
    // open between asks: a replica that does not lead (a standby, or a leader that lost the
    // Lease) closes it after answering, so the executor's next ask goes through the Service
    // again and finds the leader, whose connection then stays open.
    if !desk.leads() {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_follows_the_ticks() {
        let h = Health::new();
        h.tick();
        assert!(h.live_at(Duration::from_secs(5)).is_ok());
        assert!(
            h.live_at(STALE_AFTER + Duration::from_secs(1)).is_err(),
            "no tick for too long"
        );
        h.fail("lease lost");
        assert_eq!(h.live_at(Duration::ZERO), Err("lease lost".to_string()));
    }

    /// A replica that does not lead closes the executor's connection after its answer, so the
    /// next ask goes through the Service again (which balances connections, not requests).
    #[tokio::test]
    async fn a_replica_that_does_not_lead_closes_the_connection() {
        use http_body_util::{BodyExt, Full};
        use hyper::body::Bytes;
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;

        let health = Arc::new(Health::new());
        health.set_role(Role::Standby);
        let desk = Arc::new(crate::controller::fence::GrantDesk::new(health));
        let addr = serve_grants("127.0.0.1:0".parse().expect("addr"), desk)
            .await
            .expect("serve");
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let body = serde_json::to_vec(&crate::protocol::grant::Request {
            namespace: "shop".into(),
            migration: "m".into(),
            uid: "u".into(),
            phase: "contract".into(),
            attempt: 1,
            hold_ms: 0,
        })
        .expect("json");
        let req = hyper::Request::post(format!("http://{addr}{}", crate::protocol::grant::PATH))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let resp = client.request(req).await.expect("answer");
        assert_eq!(
            resp.headers().get(header::CONNECTION).map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "{:?}",
            resp.headers()
        );
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let answer: crate::protocol::grant::Answer =
            serde_json::from_slice(&bytes).expect("an answer");
        assert_eq!(answer.verdict, crate::protocol::grant::Verdict::Withheld);
        assert!(answer.reason.contains("leader"), "{}", answer.reason);
    }

    #[test]
    fn readiness_by_role() {
        let h = Health::new();
        h.tick();
        assert!(h.ready().is_err(), "not ready while starting");
        h.set_role(Role::Standby);
        assert!(h.ready().is_ok(), "a standby is ready");
        h.set_role(Role::Leader);
        assert!(h.ready().is_err(), "a new leader waits for its cache");
        h.set_synced(true);
        assert!(h.ready().is_ok());
        h.set_role(Role::Stopping);
        assert!(h.ready().is_err());
    }
}
