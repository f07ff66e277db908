//! Phasegate: expand/contract PostgreSQL migrations gated on Kubernetes rollouts.
//!
//! - [`api`]: the `DatabaseMigration` resource.
//! - [`planner`]: pure decisions (no I/O); where the safety lives.
//! - [`controller`]: Kubernetes plumbing: observe, plan, apply.
//! - [`executor`]: `phasegate apply`, the only code that touches the database.
//! - [`plugin`]: `phasegate approve|retry|status`, the `kubectl phasegate` plugin.
//! - [`sql`]: statement parsing with PostgreSQL's own parser.
//! - [`leader`], [`metrics`], [`server`]: leader election on a Lease, Prometheus metrics,
//!   and the `/metrics`, `/healthz`, `/readyz` endpoints.
//! - [`plan`]: `phasegate plan`, what a migration will lock, rewrite and build, for pull requests.
//! - [`lint`]: classifying a phase's statements and the policy that refuses them.
//! - [`policy`]: what a user-supplied Job template may ask of the cluster (admin-set rules).
//! - [`protocol`]: the contract between the operator and its executor (the commit grant).
//! - [`wait_schema`]: `phasegate wait-schema`, the app pods' wait for their expand.

pub mod api;
pub mod controller;
pub mod executor;
pub mod leader;
pub mod lint;
pub mod metrics;
pub mod notified;
pub mod plan;
pub mod planner;
pub mod plugin;
pub mod policy;
pub mod protocol;
pub mod server;
pub mod sql;
pub mod telemetry;
pub mod wait_schema;
