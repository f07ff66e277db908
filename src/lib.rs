//! Phasegate: expand/contract PostgreSQL migrations gated on Kubernetes rollouts.
//!
//! - [`api`]: the `DatabaseMigration` resource.
//! - [`planner`]: pure decisions (no I/O); where the safety lives.
//! - [`controller`]: Kubernetes plumbing: observe, plan, apply.
//! - [`executor`]: `phasegate apply`, the only code that touches the database.
//! - [`sql`]: statement parsing with PostgreSQL's own parser.

pub mod api;
pub mod planner;
pub mod controller;
pub mod executor;
pub mod sql;
pub mod telemetry;
