//! How a run fails: [`ApplyError`], and its form in the report.

use std::path::PathBuf;

use super::stop::Signal;
use super::{connect, locks};
use crate::protocol::report::ReportError;
use crate::sql::SqlError;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("no SQL given: set PHASEGATE_SQL, --sql or --file")]
    NoSql,
    #[error("invalid setting: {0}")]
    Setting(String),
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sql(#[from] SqlError),
    #[error(transparent)]
    Connect(#[from] connect::ConnectError),
    #[error(transparent)]
    Advisory(#[from] locks::AdvisoryError),
    #[error("{message}")]
    Db {
        sqlstate: Option<String>,
        message: String,
        statement: Option<usize>,
    },
    #[error(
        "{phase} of {namespace}/{name} was already {state} with checksum {recorded}, but the SQL now has checksum {current}; an applied phase is immutable: revert the SQL, or create a new migration for further changes"
    )]
    ChecksumMismatch {
        phase: &'static str,
        namespace: String,
        name: String,
        state: &'static str,
        recorded: String,
        current: String,
    },
    #[error("statement {statement}: gave up after {attempts} attempts, the lock could not be taken within lock_timeout {lock_timeout}")]
    LockRetriesExhausted {
        statement: usize,
        attempts: u32,
        lock_timeout: String,
    },
    #[error("statements {first}..{last}: still blocked after waiting {waited} outside the lock queue: {blockers}")]
    LockWaitTimeout {
        first: usize,
        last: usize,
        waited: String,
        blockers: String,
    },
    #[error("contract refused by the database check: still {count} old session(s) or transaction(s) after waiting {waited} (PHASEGATE_DATABASE_CHECK_TIMEOUT): {blockers}; nothing was applied, retry once they are gone")]
    DatabaseCheckTimeout {
        count: usize,
        waited: String,
        blockers: String,
    },
    /// A hot standby could not be checked until the check's time ran out: it may serve old code.
    #[error("contract refused by the database check: {count} standby(s) could not be checked after waiting {waited} (PHASEGATE_DATABASE_CHECK_TIMEOUT): {blockers}; a standby that cannot be checked may still serve old code, so it holds contract; nothing was applied, retry once it answers")]
    StandbyUnchecked {
        count: usize,
        waited: String,
        blockers: String,
    },
    #[error(transparent)]
    StandbyUrl(#[from] InvalidUrl),
    #[error("contract of {namespace}/{name} refused (PHASEGATE_REQUIRE_EXPAND): {why}; nothing was applied. Check that the database Secret still points at the database expand ran on")]
    ExpandNotRecorded {
        namespace: String,
        name: String,
        why: String,
    },
    /// The operator never confirmed that every gate holds for this attempt (see
    /// [`crate::protocol::grant`]): rolled back, nothing committed by the step that waited.
    #[error("no commit grant from the operator for contract attempt {attempt} after waiting {waited} (PHASEGATE_GRANT_WAIT): {why}; rolled back, nothing was applied by this step. The operator may be down or not leading, or a gate is closed: see the migration's status")]
    NoCommitGrant {
        attempt: u32,
        waited: String,
        why: String,
    },
    /// The operator said this attempt will never commit (stopped, replaced, migration gone).
    #[error("contract attempt {attempt} was superseded: {why}; rolled back, nothing was applied by this step")]
    Superseded { attempt: u32, why: String },
    /// `committed`: statements this run had committed before the stop (filled in by [`execute`]).
    #[error("{}", stopped_message(*signal, *committed))]
    Stopped { signal: Signal, committed: usize },
}

/// A hot standby's URL that does not parse (the reason never quotes the URL).
#[derive(Debug, thiserror::Error)]
#[error(
    "{name} is not a valid PostgreSQL URL (the same forms as PHASEGATE_DATABASE_URL are taken)"
)]
pub struct InvalidUrl {
    pub name: &'static str,
}

fn stopped_message(signal: Signal, committed: usize) -> String {
    let s = signal.name();
    if committed == 0 {
        format!("stopped by {s} before COMMIT: nothing was applied by this run and the ledger is unchanged")
    } else {
        format!("stopped by {s}: the {committed} statement(s) this run committed earlier are applied and recorded in the ledger; nothing after them was applied")
    }
}

impl ApplyError {
    pub(super) fn db(e: &tokio_postgres::Error, statement: Option<usize>) -> ApplyError {
        let (sqlstate, message) = connect::describe(e);
        ApplyError::Db {
            sqlstate,
            message,
            statement,
        }
    }

    pub(super) fn to_report_error(&self) -> ReportError {
        let (sqlstate, statement) = match self {
            ApplyError::Sql(e) => (Some(e.sqlstate().to_string()), e.statement()),
            ApplyError::Connect(connect::ConnectError::Connect { sqlstate, .. }) => {
                (sqlstate.clone(), None)
            }
            ApplyError::Advisory(locks::AdvisoryError::Db(e)) => {
                (e.code().map(|c| c.code().to_string()), None)
            }
            ApplyError::Advisory(locks::AdvisoryError::Timeout { .. }) => {
                (Some("55P03".into()), None)
            }
            ApplyError::Db {
                sqlstate,
                statement,
                ..
            } => (sqlstate.clone(), *statement),
            ApplyError::LockRetriesExhausted { statement, .. } => {
                (Some("55P03".into()), Some(*statement))
            }
            ApplyError::LockWaitTimeout { first, .. } => (Some("55P03".into()), Some(*first)),
            _ => (None, None),
        };
        ReportError {
            sqlstate,
            message: self.to_string(),
            statement,
        }
    }
}

impl From<Signal> for ApplyError {
    fn from(signal: Signal) -> ApplyError {
        ApplyError::Stopped {
            signal,
            committed: 0,
        }
    }
}

/// Runs `fut` unless a stop is requested first (then `fut` is dropped where it waits, and the
/// run fails with the stop).
pub(super) async fn or_stop<T>(
    stop: &super::stop::Stop,
    fut: impl std::future::Future<Output = Result<T, ApplyError>>,
) -> Result<T, ApplyError> {
    tokio::select! {
        biased;
        signal = stop.wait() => Err(signal.into()),
        r = fut => r,
    }
}
