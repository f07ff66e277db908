//! The executor's database session: connecting, and the settings that bound what a frozen or
//! vanished executor can cost (see docs/executor.md, "A frozen or vanished executor").

use std::time::Duration;

use tokio_postgres::Client;

use super::connect::{self, ConnSettings, Scrubber};
use super::error::{or_stop, ApplyError};
use super::Config;

/// TCP keepalives, both ends: a dead peer is noticed after about 30 + 3 × 10 = 60 s.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_COUNT: u32 = 3;

/// `idle_in_transaction_session_timeout` of the executor's session: 3 × `lock_timeout`, at
/// least 1 s. The executor never waits inside a transaction, so its session is idle there only
/// for a round trip, unless the process is frozen or gone; the locks it then holds stall the
/// application like a lock attempt does, so the stall is bounded on the same scale.
pub fn idle_in_transaction_timeout(lock_timeout: Duration) -> Duration {
    (lock_timeout * 3).max(Duration::from_secs(1))
}

/// PostgreSQL 17's `transaction_timeout` for a transaction of `statements` statements: each may
/// use its `statement_timeout`, plus one more for the ledger and the check before COMMIT.
pub(super) fn transaction_timeout(statement_timeout: Duration, statements: usize) -> Duration {
    let n = u32::try_from(statements.saturating_add(1)).unwrap_or(u32::MAX);
    statement_timeout.saturating_mul(n)
}

pub(super) fn pg_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Connects (a stop ends the wait) and sets up the session; returns the client, the settings
/// (for cancel requests) and `server_version_num`.
pub(super) async fn open(
    cfg: &Config,
    scrub: &Scrubber,
) -> Result<(Client, ConnSettings, i32), ApplyError> {
    let mut settings = connect::parse(&cfg.database_url.0)?;
    // Client side: notice a server (or network) that died, instead of waiting on a dead socket.
    settings
        .config
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_COUNT);
    let client = or_stop(&cfg.stop, async {
        Ok(connect::connect(&settings, cfg.connect_timeout, scrub).await?)
    })
    .await?;
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| ApplyError::db(&e, None))?
        .get(0);
    if version >= 140_000 {
        // If this process is killed mid-statement, the server notices the dead client within a
        // second and rolls back, instead of holding its locks until the statement ends.
        let _ = client
            .batch_execute("SET client_connection_check_interval = '1s'")
            .await;
    }
    // A frozen or partitioned executor must not hold its locks for hours: the server ends our
    // session once it sits idle inside a transaction (we never wait there: a pause means we are
    // stuck) and probes the connection with TCP keepalives (a dead node or network).
    client
        .batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = '{}'; SET tcp_keepalives_idle = {}; \
             SET tcp_keepalives_interval = {}; SET tcp_keepalives_count = {}",
            pg_ms(idle_in_transaction_timeout(cfg.lock_timeout)),
            KEEPALIVE_IDLE.as_secs(),
            KEEPALIVE_INTERVAL.as_secs(),
            KEEPALIVE_COUNT
        ))
        .await
        .map_err(|e| ApplyError::db(&e, None))?;
    Ok((client, settings, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_timeouts() {
        let s = Duration::from_secs;
        assert_eq!(idle_in_transaction_timeout(s(2)), s(6));
        assert_eq!(idle_in_transaction_timeout(Duration::from_millis(50)), s(1));
        assert_eq!(transaction_timeout(s(600), 2), s(1800));
    }
}
