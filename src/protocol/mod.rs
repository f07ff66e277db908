//! The contract between the operator and its executor (`phasegate apply`), two processes that
//! share only what is here: no I/O and no Kubernetes types.
//!
//! - [`env`]: the executor's environment, [`env::ExecutorEnv`]: what the operator writes into
//!   an executor Job and the executor parses.
//! - [`report`]: the executor's report, the JSON line the operator reads from the Job's
//!   termination message.
//! - [`log`]: the wait and backfill progress lines the operator reads from the log's tail.
//! - [`checksum`]: the checksum of a phase's SQL (the executor's ledger and report, the
//!   operator's Job label).
//! - [`batch`]: an expand batch: later migrations of one database applied by the first
//!   one's executor, in order.
//! - [`grant`]: the commit grant — the operator's fresh, attempt-bound "every gate holds"
//!   without which a contract attempt never sends COMMIT (the fail-safe half of the fence).

pub mod batch;
pub mod checksum;
pub mod env;
pub mod grant;
pub mod log;
pub mod report;
