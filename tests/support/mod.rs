pub mod apply;
pub mod pgbouncer;
pub mod postgres;
