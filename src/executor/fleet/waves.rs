//! The order tenants run in: canaries (named, then the first others by name), then the rest.

use crate::api::Canary;

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Waves {
    /// One at a time, first; a failure among them halts the rest.
    pub canaries: Vec<String>,
    pub rest: Vec<String>,
}

/// `tenants` sorted by name; Err names the canaries that are not among them.
pub(super) fn plan(tenants: &[String], canary: &Canary) -> Result<Waves, String> {
    let missing: Vec<&str> = canary
        .names
        .iter()
        .filter(|n| !tenants.contains(n))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(missing.join(", "));
    }
    let mut canaries: Vec<String> = Vec::new();
    for n in &canary.names {
        if !canaries.contains(n) {
            canaries.push(n.clone());
        }
    }
    let extra: Vec<String> = tenants
        .iter()
        .filter(|t| !canaries.contains(t))
        .take(canary.count as usize)
        .cloned()
        .collect();
    canaries.extend(extra);
    let rest = tenants
        .iter()
        .filter(|t| !canaries.contains(t))
        .cloned()
        .collect();
    Ok(Waves { canaries, rest })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn named_canaries_then_the_first_others_then_the_rest() {
        let all = names(&["t1", "t2", "t3", "t4", "t5"]);
        let c = Canary {
            names: names(&["t4", "t4"]),
            count: 2,
        };
        assert_eq!(
            plan(&all, &c),
            Ok(Waves {
                canaries: names(&["t4", "t1", "t2"]),
                rest: names(&["t3", "t5"])
            })
        );
        let none = plan(&all, &Canary::default()).expect("plan");
        assert!(none.canaries.is_empty());
        assert_eq!(none.rest, all);
    }

    #[test]
    fn a_canary_that_is_not_a_tenant_is_an_error() {
        let all = names(&["t1"]);
        let c = Canary {
            names: names(&["demo", "t1", "x"]),
            count: 0,
        };
        assert_eq!(plan(&all, &c), Err("demo, x".to_string()));
    }
}
