//! Version ordering between a workload's version and `spec.appVersion`.

use crate::api::VersionOrder;

/// When a version is new enough, as `spec.rollout.versionOrder` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRule {
    /// `spec.appVersion`.
    pub want: String,
    pub order: VersionOrder,
    /// `NotPrevious`: the versions that count as old. Not recorded yet: only `want` itself
    /// is new enough, so an unrecorded history never lets everything through.
    pub previous: Option<Vec<String>>,
}

impl VersionRule {
    /// The default rule (`SemVer`) for `want`.
    pub fn semver(want: &str) -> VersionRule {
        VersionRule {
            want: want.to_string(),
            order: VersionOrder::SemVer,
            previous: None,
        }
    }

    /// Whether code of version `have` is new enough.
    pub fn satisfied_by(&self, have: &str) -> bool {
        let have = have.trim();
        match self.order {
            VersionOrder::SemVer => at_least(have, &self.want),
            VersionOrder::Exact => have == self.want,
            VersionOrder::NotPrevious => {
                have == self.want
                    || self
                        .previous
                        .as_ref()
                        .is_some_and(|old| !have.is_empty() && !old.iter().any(|o| o == have))
            }
        }
    }

    /// What is wanted of `have`, in words, for status messages.
    pub fn wanted(&self, have: &str) -> String {
        match self.order {
            VersionOrder::SemVer => wanted(have, &self.want),
            VersionOrder::Exact => format!("exactly {}", self.want),
            VersionOrder::NotPrevious => match &self.previous {
                Some(old) => format!(
                    "{} or any version other than those running before the migration ({})",
                    self.want,
                    old.join(", ")
                ),
                None => format!(
                    "{} (the versions running before the migration are not recorded yet)",
                    self.want
                ),
            },
        }
    }
}

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
    fn orders() {
        use super::VersionRule;
        use crate::api::VersionOrder;
        let rule = |order, previous: Option<&[&str]>| VersionRule {
            want: "abc123".into(),
            order,
            previous: previous.map(|p| p.iter().map(|s| s.to_string()).collect()),
        };
        let exact = rule(VersionOrder::Exact, None);
        assert!(exact.satisfied_by("abc123") && !exact.satisfied_by("def456"));
        let semver = VersionRule::semver("2.4.0");
        assert!(semver.satisfied_by("2.5.0") && !semver.satisfied_by("2.3.0"));
        let not_prev = rule(VersionOrder::NotPrevious, Some(&["old111", "old222"]));
        assert!(not_prev.satisfied_by("abc123"));
        assert!(
            not_prev.satisfied_by("fff999"),
            "newer than anything seen before"
        );
        assert!(!not_prev.satisfied_by("old222"));
        assert!(!not_prev.satisfied_by(""));
        assert!(not_prev.wanted("old111").contains("old111, old222"));
        let unrecorded = rule(VersionOrder::NotPrevious, None);
        assert!(unrecorded.satisfied_by("abc123") && !unrecorded.satisfied_by("fff999"));
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
