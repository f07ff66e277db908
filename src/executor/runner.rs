//! One run's attempts: waiting outside the lock queue and for contract's database check, the
//! advisory lock around each attempt, the attempt itself (a transaction with the ledger row, or
//! one statement outside any), and the one retry loop around them ([`Runner::run_step`]).

use std::future::Future;
use std::ops::Range;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_postgres::{CancelToken, Client};

use super::connect::{self, ConnSettings, Scrubber};
use super::dbcheck_run::DbCheckRun;
use super::error::{or_stop, ApplyError};
use super::grant::Grant;
use super::rerun::{self, Rerun};
use super::session::{
    self, idle_in_transaction_timeout, local_settings, pg_ms, transaction_timeout,
};
use super::stats::Stats;
use super::stop::Stop;
use super::waits::{Kind, Waits};
use super::{dbcheck, ledger, locks, Config};
use crate::sql::Statement;

/// One run's working state: settings, counters, the database check, the commit grant and
/// the announced waits.
pub(super) struct Runner<'a> {
    pub(super) cfg: &'a Config,
    pub(super) sum: &'a str,
    /// `server_version_num`.
    pub(super) server_version: i32,
    pub(super) settings: ConnSettings,
    /// Cancels the statement running on our connection (a stop while it waits for a lock).
    pub(super) cancel: CancelToken,
    pub(super) scrub: &'a Scrubber,
    /// A second connection, opened for the first statement that runs outside a transaction
    /// block: it holds the advisory lock in a transaction of its own while that statement runs
    /// on the first. Everything else takes the lock inside its own transaction.
    pub(super) guard: Option<Client>,
    /// How long the guard's transaction may sit idle (zero: no bound): while the statement
    /// runs on the first connection.
    pub(super) guard_idle: Duration,
    pub(super) stats: &'a mut Stats,
    pub(super) db_check: DbCheckRun,
    pub(super) waits: Waits,
    /// Time spent waiting for the advisory lock so far (one budget for the run).
    pub(super) advisory_waited: Duration,
    /// Contract run by the operator: the commit grant, renewed in the background.
    pub(super) grant: Option<std::sync::Arc<Grant>>,
    /// Time spent waiting for a grant so far (one budget for the run).
    pub(super) grant_waited: Duration,
    /// Steps another executor of this phase applied while this one waited.
    pub(super) skipped: usize,
    /// Which transactions the wait outside the lock queue waits for; remembers sessions.
    pub(super) patience: locks::Patience,
}

/// What [`Runner::enter`] found once it held the advisory lock.
#[derive(Debug, PartialEq, Eq)]
enum Entered {
    /// Go ahead: the lock is held.
    Go,
    /// Another executor of this phase applied the step meanwhile (the lock is released).
    Done,
    /// We waited for another migration to finish applying; the tables may have been taken in
    /// the meantime, so look at them again (the lock is released).
    LookAgain,
}

impl Runner<'_> {
    /// Takes the per-database advisory lock in a new transaction of `on`, waiting while
    /// another migration holds it (it is applying: holders never wait for tables with it),
    /// within PHASEGATE_ADVISORY_LOCK_TIMEOUT over the whole run; `idle` bounds how long that
    /// transaction may sit idle. Returns the time waited.
    async fn take_lock(&mut self, on: &Client, idle: Duration) -> Result<Duration, ApplyError> {
        let budget = self
            .cfg
            .advisory_lock_timeout
            .saturating_sub(self.advisory_waited);
        let waits = &mut self.waits;
        let waited = or_stop(&self.cfg.stop, async {
            let obj = self.cfg.advisory_obj;
            Ok(locks::advisory_lock(on, obj, budget, idle, waits).await?)
        })
        .await;
        if waited.is_err() {
            // A stop may have dropped the wait between BEGIN and its end.
            locks::advisory_unlock(on).await;
        }
        let waited = waited?;
        self.advisory_waited += waited;
        self.stats.lock_wait += waited;
        Ok(waited)
    }

    /// The ledger's creation under the advisory lock: begins a transaction of `client` that
    /// holds it; [`Runner::end_setup`] commits it.
    pub(super) async fn begin_setup(&mut self, client: &Client) -> Result<(), ApplyError> {
        let idle = idle_in_transaction_timeout(self.cfg.lock_timeout);
        self.take_lock(client, idle).await.map(|_| ())
    }

    /// Commits the setup's transaction, and with it lets go of the advisory lock.
    pub(super) async fn end_setup(&self, client: &Client) -> Result<(), ApplyError> {
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| ApplyError::db(&e, None))
    }

    /// Waits, outside any lock, until the advisory lock another migration holds is free (an
    /// attempt found it taken); returns the time waited.
    async fn wait_for_lock(&mut self, client: &Client) -> Result<Duration, ApplyError> {
        let idle = idle_in_transaction_timeout(self.cfg.lock_timeout);
        let waited = self.take_lock(client, idle).await?;
        locks::advisory_unlock(client).await;
        Ok(waited)
    }

    /// Releases the guard's advisory lock (the server releases it anyway when the guard's
    /// connection ends).
    async fn unlock_guard(&self) {
        if let Some(guard) = &self.guard {
            locks::advisory_unlock(guard).await;
        }
    }

    /// Right before an attempt at a statement outside a transaction block, with the tables
    /// clear: takes the advisory lock on the guard (opened now if this is the run's first such
    /// statement) and reads the ledger again, since another executor of this phase (a stale
    /// Job, a retry) may have applied it while this one waited without the lock. Transactional
    /// attempts take the lock inside their own transaction instead, where the ledger row's
    /// claim reads it again.
    async fn enter_guarded(
        &mut self,
        client: &Client,
        range: &Range<usize>,
    ) -> Result<Entered, ApplyError> {
        let guard = match self.guard.take() {
            Some(g) => g,
            None => session::open_guard(self.cfg, &self.settings, self.scrub).await?,
        };
        let taken = self.take_lock(&guard, self.guard_idle).await;
        self.guard = Some(guard);
        let waited = taken?;
        if !waited.is_zero() && !self.cfg.lock_wait_timeout.is_zero() {
            self.unlock_guard().await;
            return Ok(Entered::LookAgain);
        }
        let entry = ledger::get(client, &self.cfg.identity, self.cfg.phase.as_str())
            .await
            .map_err(|e| ApplyError::db(&e, None))?;
        let done = entry
            .filter(|e| e.checksum == self.sum)
            .map(|e| usize::try_from(e.statements_done).unwrap_or(0))
            .unwrap_or(0);
        if done >= range.end {
            tracing::info!(
                statements = range.end,
                "another run applied these statements meanwhile; skipping them"
            );
            self.unlock_guard().await;
            self.skipped += 1;
            return Ok(Entered::Done);
        }
        Ok(Entered::Go)
    }

    /// Awaits a statement; on a stop request, asks the server to cancel it (a DDL statement in
    /// the lock queue blocks every application query behind it) and gives it [`CANCEL_GRACE`]
    /// to report back. Ok(result) when the statement finished, Err(Stopped) otherwise.
    async fn stoppable(
        &self,
        statement: impl Future<Output = Result<(), tokio_postgres::Error>>,
    ) -> Result<Result<(), tokio_postgres::Error>, ApplyError> {
        tokio::pin!(statement);
        let signal = tokio::select! {
            biased;
            r = &mut statement => return Ok(r),
            signal = self.cfg.stop.wait() => signal,
        };
        // Bounded: an unreachable server must not hold up the exit (closing our connection
        // ends the statement too, within client_connection_check_interval).
        match tokio::time::timeout(CANCEL_GRACE, connect::cancel(&self.settings, &self.cancel))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not cancel the running statement; the connection closes on exit")
            }
            Err(_) => tracing::warn!(
                "cancelling the running statement timed out; the connection closes on exit"
            ),
        }
        match tokio::time::timeout(CANCEL_GRACE, &mut statement).await {
            // It finished before the cancel arrived: the caller records what is true.
            Ok(Ok(())) => Ok(Ok(())),
            _ => Err(signal.into()),
        }
    }

    /// [`Self::stoppable`], and the statement is cancelled once it has run for `timeout` (zero:
    /// never); says whether that happened.
    async fn stoppable_within(
        &self,
        statement: impl Future<Output = Result<(), tokio_postgres::Error>>,
        timeout: Duration,
    ) -> Result<(Result<(), tokio_postgres::Error>, bool), ApplyError> {
        let timed_out = std::sync::atomic::AtomicBool::new(false);
        let timed = async {
            tokio::pin!(statement);
            if timeout.is_zero() {
                return statement.await;
            }
            tokio::select! {
                r = &mut statement => return r,
                _ = tokio::time::sleep(timeout) => {}
            }
            timed_out.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = connect::cancel(&self.settings, &self.cancel).await {
                tracing::warn!(error = %e, "could not cancel the statement after statement_timeout");
            }
            statement.await
        };
        let r = self.stoppable(timed).await?;
        Ok((r, timed_out.load(std::sync::atomic::Ordering::Relaxed)))
    }

    /// Waits outside the lock queue; fails clearly if the budget runs out.
    async fn wait_for_tables(
        &mut self,
        client: &Client,
        stmts: &[Statement],
        range: &Range<usize>,
        budget_used: &mut Duration,
    ) -> Result<(), ApplyError> {
        let cfg = self.cfg;
        if cfg.lock_wait_timeout.is_zero() {
            // Explicitly disabled: blind retries only (as pgroll or GitLab do).
            return Ok(());
        }
        let mut targets = locks::lock_targets(stmts);
        let budget = cfg.lock_wait_timeout.saturating_sub(*budget_used);
        let (waits, patience) = (&mut self.waits, &mut self.patience);
        let (waited, blockers) = or_stop(&cfg.stop, async {
            // Looked up on every attempt: an earlier step may have changed the catalog.
            let free = locks::add_implicit_and_look(client, stmts, &mut targets, true)
                .await
                .map_err(|e| ApplyError::db(&e, None))?;
            if free {
                // Nobody has any lock on the tables: nothing to wait for, no need to look closer.
                waits.done(Kind::TableLock);
                return Ok((Duration::ZERO, Vec::new()));
            }
            locks::wait_until_clear(client, &targets, budget, waits, patience)
                .await
                .map_err(|e| ApplyError::db(&e, None))
        })
        .await?;
        self.stats.lock_wait += waited;
        *budget_used += waited;
        if !blockers.is_empty() {
            let list: Vec<String> = blockers.iter().take(3).map(|b| b.to_string()).collect();
            return Err(ApplyError::LockWaitTimeout {
                first: range.start + 1,
                last: range.end,
                waited: humantime::format_duration(Duration::from_secs(budget_used.as_secs()))
                    .to_string(),
                blockers: list.join("; "),
            });
        }
        Ok(())
    }

    /// The database check outside any lock, unless a stop comes first; returns the time it
    /// waited for blockers.
    async fn pass_database_check(&mut self, client: &Client) -> Result<Duration, ApplyError> {
        let (check, stats, waits) = (&mut self.db_check, &mut *self.stats, &mut self.waits);
        or_stop(&self.cfg.stop, check.pass(client, stats, waits)).await
    }

    /// Before an attempt: the tables are free and the database check passes, both observed
    /// just now. The check can wait for minutes, and a new long transaction may take a table
    /// meanwhile; queueing behind it blind would stall the application for up to
    /// `lock_timeout` × retries. So whenever the check waited, look at the locks again. Ends:
    /// each round that waits spends the check's budget, which is finite. A contract attempt
    /// the operator stops meanwhile ends here (the recall tells it at once, SIGTERM or not),
    /// rather than waiting on until the tables are free only to be told again.
    async fn clear_to_attempt(
        &mut self,
        client: &Client,
        stmts: &[Statement],
        range: &Range<usize>,
        lock_waited: &mut Duration,
    ) -> Result<(), ApplyError> {
        let grant = self.grant.clone();
        let rounds = async {
            loop {
                self.wait_for_tables(client, stmts, range, lock_waited)
                    .await?;
                if self.pass_database_check(client).await?.is_zero() {
                    return Ok(());
                }
            }
        };
        match grant {
            Some(grant) => tokio::select! {
                biased;
                stopped = grant.superseded() => Err(stopped),
                r = rounds => r,
            },
            None => rounds.await,
        }
    }

    /// Runs one step — one transaction, or one statement outside any — until it is applied or
    /// fails for good. The executor's one retry loop: wait outside the lock queue (and for
    /// contract's database check), take the advisory lock, attempt; after a lock timeout or
    /// deadlock, or a blocker found right before COMMIT, roll back, let go of the advisory lock,
    /// back off and start over.
    pub(super) async fn run_step(
        &mut self,
        client: &mut Client,
        all: &[Statement],
        range: Range<usize>,
        own: bool,
    ) -> Result<(), ApplyError> {
        let cfg = self.cfg;
        let stmts = &all[range.clone()];
        let mut retries = 0u32;
        let mut waited = Duration::ZERO;
        loop {
            self.clear_to_attempt(client, stmts, &range, &mut waited)
                .await?;
            if let Some(grant) = &self.grant {
                if !grant.holds() {
                    // Waited for a grant: the tables may have been taken meanwhile.
                    grant
                        .acquire(&cfg.stop, &mut self.waits, &mut self.grant_waited)
                        .await?;
                    continue;
                }
            }
            if own {
                match self.enter_guarded(client, &range).await? {
                    Entered::Go => {}
                    Entered::Done => return Ok(()),
                    Entered::LookAgain => continue,
                }
            }
            if let Some(signal) = cfg.stop.requested() {
                return Err(signal.into());
            }
            let attempt = if own {
                self.attempt_own(client, all, range.start, retries).await?
            } else {
                self.attempt_transaction(client, all, range.clone(), retries)
                    .await?
            };
            let delay = match attempt {
                Attempt::Done => {
                    if own {
                        self.unlock_guard().await;
                    }
                    return Ok(());
                }
                Attempt::LockBusy => {
                    // Another migration is applying: wait until it is done, then look at the
                    // tables again (they may have been taken meanwhile).
                    self.wait_for_lock(client).await?;
                    continue;
                }
                Attempt::LockFailure {
                    statement,
                    sqlstate,
                    lock_timeout,
                } => {
                    if retries >= cfg.max_lock_retries {
                        return Err(ApplyError::LockRetriesExhausted {
                            statement,
                            attempts: retries + 1,
                            lock_timeout: humantime::format_duration(lock_timeout).to_string(),
                        });
                    }
                    retries += 1;
                    self.stats.lock_retries += 1;
                    let delay = backoff(retries - 1);
                    tracing::warn!(
                        statement,
                        attempt = self.stats.attempts,
                        retry_in_ms = delay.as_millis() as u64,
                        sqlstate,
                        "lock not available; rolled back, will retry"
                    );
                    delay
                }
                Attempt::DatabaseBlocked => {
                    // Each lost attempt costs the check's budget a poll interval, so a flapping
                    // blocker cannot keep us taking and dropping locks forever.
                    self.db_check.waited += dbcheck::POLL;
                    dbcheck::POLL
                }
                // The next round waits for a grant outside the locks.
                Attempt::NoGrant => Duration::ZERO,
            };
            if own {
                self.unlock_guard().await;
            }
            pause(&cfg.stop, delay).await?;
        }
    }

    /// The transaction's `SET LOCAL`s and the advisory lock, in one round trip; false when
    /// another migration holds the lock (never waited for inside a transaction).
    async fn settings_and_lock(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        statements: usize,
    ) -> Result<bool, ApplyError> {
        let cfg = self.cfg;
        let mut sql = local_settings(cfg.lock_timeout, cfg.statement_timeout, self.server_version);
        if self.server_version >= 170_000 && !cfg.statement_timeout.is_zero() {
            // Bounds the whole transaction too, whatever state the session is in.
            sql.push_str(&format!(
                "; SET LOCAL transaction_timeout = '{}'",
                pg_ms(transaction_timeout(cfg.statement_timeout, statements))
            ));
        }
        sql.push_str(&format!("; {}", locks::try_lock_sql(cfg.advisory_obj)));
        let replies = tx
            .simple_query(&sql)
            .await
            .map_err(|e| ApplyError::db(&e, None))?;
        Ok(locks::lock_granted(&replies))
    }

    /// One attempt at `range` in one transaction, together with the ledger update, under the
    /// advisory lock taken first in the same transaction.
    async fn attempt_transaction(
        &mut self,
        client: &mut Client,
        all: &[Statement],
        range: Range<usize>,
        retries: u32,
    ) -> Result<Attempt, ApplyError> {
        let cfg = self.cfg;
        let stmts = &all[range.clone()];
        let tx = client
            .transaction()
            .await
            .map_err(|e| ApplyError::db(&e, None))?;
        if !self.settings_and_lock(&tx, stmts.len()).await? {
            rollback(tx).await;
            return Ok(Attempt::LockBusy);
        }
        self.stats.attempts += 1;
        let attempt = self.stats.attempts;
        // Exactly once in the ledger itself: the phase's row is claimed (locked) in this
        // transaction before any statement; another executor of the phase waits for it. The
        // row is recorded in the same round trip, before the statements (it commits with them or
        // not at all): after they take their locks only the check before COMMIT and COMMIT
        // itself remain, so the application waits behind those locks less.
        let progress = ledger::Progress {
            phase: cfg.phase.as_str(),
            checksum: self.sum,
            total: all.len(),
            done: range.end,
            attempts: retries + 1,
        };
        let claimed = ledger::claim_and_record(&tx, &cfg.identity, &progress).await;
        match claimed {
            Ok(done) if done >= range.end => {
                rollback(tx).await;
                tracing::info!(
                    statements = range.end,
                    "another run applied these statements meanwhile (ledger); skipping them"
                );
                self.skipped += 1;
                return Ok(Attempt::Done);
            }
            Ok(_) => {}
            Err(e) => {
                rollback(tx).await;
                return lock_failure(&e, range.start + 1, cfg.lock_timeout)
                    .ok_or_else(|| ApplyError::db(&e, None));
            }
        }
        for (offset, s) in stmts.iter().enumerate() {
            let n = range.start + offset + 1;
            tracing::debug!(statement = n, kind = %s.kind, attempt, "executing");
            let result = match self.stoppable(tx.batch_execute(&s.sql)).await {
                Ok(r) => r,
                Err(stopped) => {
                    rollback(tx).await;
                    return Err(stopped);
                }
            };
            if let Err(e) = result {
                // Dropping the transaction would roll back too, but only lazily; be explicit.
                rollback(tx).await;
                return lock_failure(&e, n, cfg.lock_timeout)
                    .ok_or_else(|| ApplyError::db(&e, Some(n)));
            }
            if let Some(signal) = cfg.stop.requested() {
                rollback(tx).await;
                return Err(signal.into());
            }
        }
        failpoint(cfg, "pause-before-commit").await;

        // The database check holds until COMMIT: with our locks held, look once more. A session that
        // connected while we queued for a lock would otherwise meet the new schema.
        let blockers = self.db_check.recheck(&tx).await?;
        if !blockers.is_empty() {
            rollback(tx).await;
            self.stats.db_check_rollbacks += 1;
            for b in &blockers {
                dbcheck::announce(&mut self.waits, b);
            }
            tracing::warn!(
                attempt,
                blockers = blockers.len(),
                "database check failed right before COMMIT; rolled back, waiting outside the locks"
            );
            return Ok(Attempt::DatabaseBlocked);
        }
        // Last word before COMMIT: a stop request means never commit, and neither does the
        // absence of a fresh grant (checked locally: no round trip while the locks are held).
        if let Some(signal) = cfg.stop.requested() {
            rollback(tx).await;
            return Err(signal.into());
        }
        if let Some(grant) = self.grant.as_ref().filter(|g| !g.holds()) {
            rollback(tx).await;
            self.stats.grant_rollbacks += 1;
            tracing::warn!(
                attempt,
                reason = %grant.reason(),
                "no valid commit grant right before COMMIT; rolled back, waiting for one outside the locks"
            );
            return Ok(Attempt::NoGrant);
        }
        let gate_checked = Instant::now();
        let committed = tx.commit().await;
        let window = gate_checked.elapsed();
        if let Err(e) = committed {
            return lock_failure(&e, range.end, cfg.lock_timeout)
                .ok_or_else(|| ApplyError::db(&e, Some(range.end)));
        }
        self.stats.gate_to_commit = Some(self.stats.gate_to_commit.unwrap_or_default().max(window));
        if let Some(signal) = cfg.stop.requested() {
            tracing::warn!(
                signal = signal.name(),
                "a stop request arrived after COMMIT was sent; the transaction committed and the ledger records it"
            );
        }
        failpoint(cfg, "pause-after-commit").await;
        self.stats.statements += stmts.len();
        if !cfg.quiet {
            tracing::info!(
                statements = stmts.len(),
                attempt,
                window_us = window.as_micros() as u64,
                "transaction committed"
            );
        }
        Ok(Attempt::Done)
    }

    /// One attempt at statement `index` outside a transaction block, safe to rerun (see
    /// [`rerun`]), then the ledger records progress.
    async fn attempt_own(
        &mut self,
        client: &mut Client,
        all: &[Statement],
        index: usize,
        retries: u32,
    ) -> Result<Attempt, ApplyError> {
        let cfg = self.cfg;
        let s = &all[index];
        let n = index + 1;
        // Under the advisory lock: no other executor of this phase is running it right now.
        let rerun =
            rerun::prepare(client, s, n, self.server_version, &mut self.stats.recovered).await?;
        let run = match &rerun {
            Rerun::Skip => None,
            // Concurrent variants take only SHARE UPDATE EXCLUSIVE, which never blocks
            // application reads or writes, and must wait for older transactions by design: no
            // lock_timeout.
            Rerun::Run if s.concurrent => Some((s.sql.as_str(), Duration::ZERO)),
            Rerun::Run => Some((s.sql.as_str(), cfg.lock_timeout)),
            Rerun::Finalize(sql) => Some((sql.as_str(), cfg.lock_timeout)),
        };
        if let Some((sql, lock_timeout)) = run {
            self.stats.attempts += 1;
            // No SET here: outside a transaction block a session setting would stay on a pooled
            // server connection. statement_timeout is kept by cancelling from here instead.
            // A stop cancels the statement too; if it finished anyway, it is applied (it commits
            // by itself) and is recorded below before the run stops at the next step.
            let (result, timed_out) = self
                .stoppable_within(client.batch_execute(sql), cfg.statement_timeout)
                .await?;
            if let Err(e) = result {
                rerun::clean_up_after_failure(client, s).await;
                if timed_out {
                    return Err(ApplyError::Db {
                        sqlstate: Some("57014".into()),
                        message: format!(
                            "statement {n} ran longer than statement_timeout {} and was cancelled",
                            humantime::format_duration(cfg.statement_timeout)
                        ),
                        statement: Some(n),
                    });
                }
                return lock_failure(&e, n, lock_timeout)
                    .ok_or_else(|| ApplyError::db(&e, Some(n)));
            }
            self.stats.statements += 1;
        }
        failpoint(cfg, "pause-before-commit").await;
        let progress = ledger::Progress {
            phase: cfg.phase.as_str(),
            checksum: self.sum,
            total: all.len(),
            done: index + 1,
            attempts: retries + 1,
        };
        ledger::record(&*client, &cfg.identity, &progress)
            .await
            .map_err(|e| ApplyError::db(&e, None))?;
        failpoint(cfg, "pause-after-commit").await;
        Ok(Attempt::Done)
    }
}

/// What one attempt at a step came to (anything else is an error that ends the run).
enum Attempt {
    /// Committed, or run outside a transaction, and recorded in the ledger.
    Done,
    /// Another migration holds the advisory lock: rolled back before anything ran.
    LockBusy,
    /// The lock could not be taken within `lock_timeout` (55P03), or a deadlock (40P01):
    /// rolled back, nothing applied.
    LockFailure {
        statement: usize,
        sqlstate: &'static str,
        lock_timeout: Duration,
    },
    /// The database check found a blocker right before COMMIT: rolled back.
    DatabaseBlocked,
    /// No valid commit grant right before COMMIT: rolled back.
    NoGrant,
}

/// [`Attempt::LockFailure`] when `e` is a lock timeout or deadlock.
fn lock_failure(
    e: &tokio_postgres::Error,
    statement: usize,
    lock_timeout: Duration,
) -> Option<Attempt> {
    let sqlstate = match e.code().map(|c| c.code()) {
        Some("55P03") => "55P03",
        Some("40P01") => "40P01",
        _ => return None,
    };
    Some(Attempt::LockFailure {
        statement,
        sqlstate,
        lock_timeout,
    })
}

/// Rolls back explicitly (dropping a transaction only queues the ROLLBACK), but never waits
/// long for it: a stopping run must exit promptly, and the server rolls back on disconnect.
async fn rollback(tx: tokio_postgres::Transaction<'_>) {
    let _ = tokio::time::timeout(CANCEL_GRACE, tx.rollback()).await;
}

/// Jittered exponential backoff: 50 ms, 100 ms, … capped at 5 s, each scaled by 0.5–1.0.
fn backoff(retry: u32) -> Duration {
    let base = 50u64.saturating_mul(1u64 << retry.min(7)).min(5_000);
    let jittered = rand::rng().random_range(base / 2..=base);
    Duration::from_millis(jittered)
}

async fn failpoint(cfg: &Config, name: &str) {
    if cfg.failpoint.as_deref() == Some(name) {
        eprintln!("phasegate failpoint {name} reached");
        // A stop ends the pause, so tests can signal a run that sits at a failpoint.
        let _ = pause(&cfg.stop, Duration::from_secs(600)).await;
    }
}

/// Sleeps unless a stop is requested first.
async fn pause(stop: &Stop, d: Duration) -> Result<(), ApplyError> {
    or_stop(stop, async {
        tokio::time::sleep(d).await;
        Ok(())
    })
    .await
}

/// How long a cancelled statement may take to report back before we stop waiting for it.
const CANCEL_GRACE: Duration = Duration::from_millis(700);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_jittered() {
        for r in 0..20 {
            let b = backoff(r);
            assert!(
                b <= Duration::from_secs(5) && b >= Duration::from_millis(25),
                "{b:?}"
            );
        }
    }
}
