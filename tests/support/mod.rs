pub mod apply;
pub mod postgres;
