//! Executor Jobs, by responsibility: how they are run ([`config`]), the pure Job of an attempt
//! ([`build`]), expand batches ([`batch`]), which Jobs are a migration's ([`ownership`]), the API writes ([`apply`]) and
//! reading Jobs, pods and logs back ([`observe`]).

mod apply;
mod batch;
mod build;
mod config;
mod observe;
mod ownership;

pub use apply::{create, stop};
pub use batch::{add_members, observe_seat, recorded_seat};
pub use build::{backfill_epoch, build_job, executor_env, sql_checksum};
pub use config::{ExecutorConfig, ExecutorPod};
pub use observe::{explain_running, observe, observe_reported, summarise, Detail, JobApis};
pub use ownership::{ours_and_running, CreatedJobs};

#[cfg(test)]
mod tests;
