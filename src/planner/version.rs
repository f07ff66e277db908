//! Version ordering between a workload's version and `spec.appVersion`.

/// Whether `have` is at or above `want`: semantic-version order when both parse (a leading
/// `v` is ignored), exact equality otherwise.
pub fn at_least(have: &str, want: &str) -> bool {
    match (parse(have), parse(want)) {
        (Some(h), Some(w)) => h >= w,
        _ => have == want,
    }
}

/// What `want` asks of `have`, in words: "2.4.0 or newer" where both are semantic versions,
/// else "exactly abc123" (versions that do not parse are compared for equality).
pub fn wanted(have: &str, want: &str) -> String {
    match (parse(have), parse(want)) {
        (Some(_), Some(_)) => format!("{want} or newer"),
        _ => format!(
            "exactly {want} (not both semantic versions, so they are compared for equality)"
        ),
    }
}

fn parse(v: &str) -> Option<semver::Version> {
    let v = v.trim();
    let v = v.strip_prefix('v').unwrap_or(v);
    semver::Version::parse(v).ok()
}

#[cfg(test)]
mod tests {
    use super::at_least;

    #[test]
    fn semver_order_where_both_parse() {
        assert!(at_least("2.4.0", "2.4.0"));
        assert!(at_least("2.10.0", "2.4.0"));
        assert!(at_least("v2.4.1", "2.4.0"));
        assert!(!at_least("2.3.9", "2.4.0"));
        assert!(!at_least("2.4.0-rc.1", "2.4.0"));
        assert!(at_least("3.0.0", "v2.4.0"));
    }

    #[test]
    fn what_is_wanted_is_said_truthfully() {
        assert_eq!(super::wanted("2.3.0", "2.4.0"), "2.4.0 or newer");
        assert!(super::wanted("abc122", "abc123").starts_with("exactly abc123"));
        assert!(super::wanted("2.3.0", "abc123").starts_with("exactly abc123"));
    }

    #[test]
    fn equality_otherwise() {
        assert!(at_least("abc123", "abc123"));
        assert!(!at_least("abc124", "abc123"));
        assert!(!at_least("2.4", "2.4.0"));
        assert!(!at_least("latest", "2.4.0"));
    }
}
