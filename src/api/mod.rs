//! The `DatabaseMigration` API (`phasegate.dev/v1alpha1`).
//!
//! Doc comments on fields become `kubectl explain` text; keep them user-facing.

mod backfill;
mod replicas;
mod spec;
mod status;
mod tenants;

pub use backfill::*;
pub use replicas::*;
pub use spec::*;
pub use status::*;
pub use tenants::*;

/// API group of every Phasegate resource.
pub const GROUP: &str = "phasegate.dev";
/// Field manager used for every server-side apply Phasegate makes.
pub const FIELD_MANAGER: &str = "phasegate";

/// Annotation approving contract when `spec.contract.approval` is `Manual`.
pub const ANNOTATION_APPROVE: &str = "phasegate.dev/approve";
/// Annotation whose new value requests a retry of a failed phase.
pub const ANNOTATION_RETRY: &str = "phasegate.dev/retry";

/// Label put on every executor Job and its pods.
pub const LABEL_EXECUTOR: &str = "phasegate.dev/executor";
/// Label naming the migration an executor Job belongs to (shortened with a hash when the
/// name is longer than a label value may be; see [`ANNOTATION_MIGRATION`]).
pub const LABEL_MIGRATION: &str = "phasegate.dev/migration";
/// Annotation on executor Jobs and pods with the migration's full name.
pub const ANNOTATION_MIGRATION: &str = "phasegate.dev/migration";
/// Label with the UID of the migration that created an executor Job: only such Jobs are
/// ever adopted or read as this migration's.
pub const LABEL_MIGRATION_UID: &str = "phasegate.dev/migration-uid";
/// Label with the start of the SHA-256 of an inline-SQL phase's SQL: a Job is only taken for
/// this phase's when it runs this SQL.
pub const LABEL_SQL_CHECKSUM: &str = "phasegate.dev/sql-checksum";
/// Label naming the phase an executor Job runs.
pub const LABEL_PHASE: &str = "phasegate.dev/phase";
