//! The checksum of a phase's SQL, computed by the executor (its ledger row, its report) and by
//! the operator (the label on the phase's Job that proves which SQL it runs).

use sha2::{Digest, Sha256};

/// Hex digits of the checksum in a Job's `phasegate.dev/sql-checksum` label.
pub const LABEL_LEN: usize = 16;
/// Hex digits of the checksum in the executor's report.
pub const REPORT_LEN: usize = 12;

/// SHA-256 of the SQL (surrounding whitespace ignored), hex.
pub fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.trim().as_bytes()))
}

/// The label value of the SQL's checksum.
pub fn label(sql: &str) -> String {
    checksum(sql)[..LABEL_LEN].to_string()
}

/// The leading digits of a checksum as the report carries them (fewer if it is shorter).
pub fn short(sum: &str) -> String {
    sum[..REPORT_LEN.min(sum.len())].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_surrounding_whitespace_and_cuts_on_both_sides_alike() {
        assert_eq!(checksum("SELECT 1;\n"), checksum("  SELECT 1;"));
        assert_ne!(checksum("SELECT 1"), checksum("SELECT 2"));
        assert_eq!(checksum("x").len(), 64);
        assert!(checksum("x").starts_with(&label("x")));
        assert!(label("x").starts_with(&short(&checksum("x"))));
        assert_eq!(short("abc"), "abc");
    }
}
