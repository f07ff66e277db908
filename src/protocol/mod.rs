//! The contract between the operator and its executor (`phasegate apply`), two processes that
//! share only what is here: no I/O and no Kubernetes types.
//!
//! - [`env`]: the names of the variables an executor Job carries.
//! - [`grant`]: the commit grant — the operator's fresh, attempt-bound "every gate holds"
//!   without which a contract attempt never sends COMMIT (the fail-safe half of the fence).

pub mod env;
pub mod grant;
