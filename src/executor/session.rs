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

/// Connects (a stop ends the wait); returns the client, the settings (for cancel requests)
/// and `server_version_num`. Sets nothing on the session: behind a transaction pooler a
/// session setting would stay on a pooled server connection for whichever client gets it next,
/// so the executor's settings go into each transaction instead ([`local_settings`]).
pub(super) async fn open(
    cfg: &Config,
    scrub: &Scrubber,
) -> Result<(Client, ConnSettings, i32), ApplyError> {
    let settings = settings(&cfg.database_url.0)?;
    let client = connect_stoppable(cfg, &settings, scrub).await?;
    let version = cfg
        .facts
        .version(&settings, &client)
        .await
        .map_err(|e| ApplyError::db(&e, None))?;
    Ok((client, settings, version))
}

/// The connection settings of `url`, with client-side TCP keepalives: a server (or network)
/// that died is noticed instead of waited on forever. Shared with `phasegate backfill`.
pub(super) fn settings(url: &str) -> Result<ConnSettings, connect::ConnectError> {
    let mut settings = connect::parse(url)?;
    settings
        .config
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_COUNT);
    Ok(settings)
}

/// A second connection, which holds the advisory lock in a transaction of its own while the
/// first applies statements (see [`super::locks::advisory_lock`]).
pub(super) async fn open_guard(
    cfg: &Config,
    settings: &ConnSettings,
    scrub: &Scrubber,
) -> Result<Client, ApplyError> {
    connect_stoppable(cfg, settings, scrub).await
}

async fn connect_stoppable(
    cfg: &Config,
    settings: &ConnSettings,
    scrub: &Scrubber,
) -> Result<Client, ApplyError> {
    or_stop(&cfg.stop, async {
        Ok(connect::connect(settings, cfg.connect_timeout, scrub).await?)
    })
    .await
}

/// `SET LOCAL`s every transaction of the executor starts with: the statement's timeouts, and
/// what bounds a frozen or vanished executor. The server ends the session once it sits idle
/// inside a transaction (the executor never waits there: a pause means it is stuck), probes the
/// connection with TCP keepalives, and (PostgreSQL 14 on) notices a dead client mid-statement
/// within a second and rolls back instead of holding the locks until the statement ends.
pub(super) fn local_settings(
    lock_timeout: Duration,
    statement_timeout: Duration,
    server_version: i32,
) -> String {
    let mut set = format!(
        "SET LOCAL lock_timeout = '{}'; SET LOCAL statement_timeout = '{}'; \
         SET LOCAL idle_in_transaction_session_timeout = '{}'; \
         SET LOCAL tcp_keepalives_idle = {}; SET LOCAL tcp_keepalives_interval = {}; \
         SET LOCAL tcp_keepalives_count = {}",
        pg_ms(lock_timeout),
        pg_ms(statement_timeout),
        pg_ms(idle_in_transaction_timeout(lock_timeout)),
        KEEPALIVE_IDLE.as_secs(),
        KEEPALIVE_INTERVAL.as_secs(),
        KEEPALIVE_COUNT
    );
    if server_version >= 140_000 {
        set.push_str("; SET LOCAL client_connection_check_interval = '1s'");
    }
    set
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
