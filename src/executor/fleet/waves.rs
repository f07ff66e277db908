//! The order tenants run in: canaries (named, then the first others by name), then the rest in
//! waves (`tenants.waves`: where each wave ends, a count or a share of the rest).

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::Canary;

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Waves {
    /// One at a time, first; a failure among them halts the rest.
    pub canaries: Vec<String>,
    /// The rest, wave by wave: a wave's tenants all finish before the next wave starts.
    pub rest: Vec<Vec<String>>,
}

impl Waves {
    /// Every tenant, in the order they run.
    pub fn all(&self) -> impl Iterator<Item = &String> {
        self.canaries.iter().chain(self.rest.iter().flatten())
    }
}

/// Why the tenants cannot be planned.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PlanError {
    /// Canaries named that are not tenants.
    MissingCanary(String),
    /// `tenants.waves` has an entry that is neither a count nor a share.
    Spec(String),
}

/// `tenants` sorted by name, in the order and waves they run.
pub(super) fn plan(
    tenants: &[String],
    canary: &Canary,
    waves: &[IntOrString],
) -> Result<Waves, PlanError> {
    let missing: Vec<&str> = canary
        .names
        .iter()
        .filter(|n| !tenants.contains(n))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(PlanError::MissingCanary(missing.join(", ")));
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
    let rest: Vec<String> = tenants
        .iter()
        .filter(|t| !canaries.contains(t))
        .cloned()
        .collect();
    let mut start = 0;
    let mut split = Vec::new();
    for end in crate::api::wave_ends(waves, rest.len()).map_err(PlanError::Spec)? {
        split.push(rest[start..end].to_vec());
        start = end;
    }
    split.retain(|w| !w.is_empty());
    Ok(Waves {
        canaries,
        rest: split,
    })
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
            plan(&all, &c, &[]),
            Ok(Waves {
                canaries: names(&["t4", "t1", "t2"]),
                rest: vec![names(&["t3", "t5"])]
            })
        );
        let none = plan(&all, &Canary::default(), &[]).expect("plan");
        assert!(none.canaries.is_empty());
        assert_eq!(none.rest, vec![all]);
    }

    #[test]
    fn a_canary_that_is_not_a_tenant_is_an_error() {
        let all = names(&["t1"]);
        let c = Canary {
            names: names(&["demo", "t1", "x"]),
            count: 0,
        };
        assert_eq!(
            plan(&all, &c, &[]),
            Err(PlanError::MissingCanary("demo, x".to_string()))
        );
    }

    #[test]
    fn the_rest_runs_in_waves() {
        let int = IntOrString::Int;
        let pct = |s: &str| IntOrString::String(s.into());
        let all = names(&["c", "t1", "t2", "t3", "t4", "t5"]);
        let c = Canary {
            names: names(&["c"]),
            count: 0,
        };
        let w = plan(&all, &c, &[int(1), pct("60%")]).expect("plan");
        assert_eq!(
            w.rest,
            vec![names(&["t1"]), names(&["t2", "t3"]), names(&["t4", "t5"])]
        );
        assert_eq!(w.all().count(), 6);
    }
}
