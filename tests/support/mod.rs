pub mod apply;
pub mod backfill;
pub mod pgbouncer;
pub mod postgres;
pub mod sessions;
