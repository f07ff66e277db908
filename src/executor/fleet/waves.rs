//! The order tenants run in: canaries (named, then the first others in order), then the rest in
//! waves (`tenants.waves`: where each wave ends, a count or a share of the rest). With several
//! servers the order takes each server's tenants in turn, so that a count of canaries and each
//! wave reach every server.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::tenant::Tenant;
use crate::api::Canary;

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Waves {
    /// One at a time, first; a failure among them halts the rest.
    pub canaries: Vec<Tenant>,
    /// The rest, wave by wave: a wave's tenants all finish before the next wave starts.
    pub rest: Vec<Vec<Tenant>>,
}

/// Why the tenants cannot be planned.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PlanError {
    /// Canaries named that are not tenants.
    MissingCanary(String),
    /// `tenants.waves` has an entry that is neither a count nor a share.
    Spec(String),
}

/// Each server's tenants (sorted by name) in one order: the first of each server in the
/// servers' order, then the second of each, and so on. One server: by name.
pub(super) fn interleave(per_server: Vec<Vec<Tenant>>) -> Vec<Tenant> {
    let longest = per_server.iter().map(Vec::len).max().unwrap_or(0);
    let mut columns: Vec<_> = per_server.into_iter().map(Vec::into_iter).collect();
    let mut order = Vec::new();
    for _ in 0..longest {
        order.extend(columns.iter_mut().filter_map(Iterator::next));
    }
    order
}

/// `tenants` in [`interleave`]'s order, in the order and waves they run; canaries are named by
/// their labels (`tenant_07`, `eu-2/tenant_07`).
pub(super) fn plan(
    tenants: &[Tenant],
    canary: &Canary,
    waves: &[IntOrString],
) -> Result<Waves, PlanError> {
    let find = |label: &String| tenants.iter().find(|t| &t.label == label);
    let missing: Vec<&str> = canary
        .names
        .iter()
        .filter(|n| find(n).is_none())
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(PlanError::MissingCanary(missing.join(", ")));
    }
    let mut canaries: Vec<Tenant> = Vec::new();
    for t in canary.names.iter().filter_map(find) {
        if !canaries.contains(t) {
            canaries.push(t.clone());
        }
    }
    let extra: Vec<Tenant> = tenants
        .iter()
        .filter(|t| !canaries.contains(t))
        .take(canary.count as usize)
        .cloned()
        .collect();
    canaries.extend(extra);
    let rest: Vec<Tenant> = tenants
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

    /// Tenants of `spec.database`'s server.
    fn tenants(v: &[&str]) -> Vec<Tenant> {
        v.iter()
            .map(|s| Tenant::on(0, None, s.to_string()))
            .collect()
    }

    fn labels(v: &[Tenant]) -> Vec<String> {
        v.iter().map(|t| t.label.clone()).collect()
    }

    #[test]
    fn named_canaries_then_the_first_others_then_the_rest() {
        let all = tenants(&["t1", "t2", "t3", "t4", "t5"]);
        let c = Canary {
            names: names(&["t4", "t4"]),
            count: 2,
        };
        assert_eq!(
            plan(&all, &c, &[]),
            Ok(Waves {
                canaries: tenants(&["t4", "t1", "t2"]),
                rest: vec![tenants(&["t3", "t5"])]
            })
        );
        let none = plan(&all, &Canary::default(), &[]).expect("plan");
        assert!(none.canaries.is_empty());
        assert_eq!(none.rest, vec![all]);
    }

    #[test]
    fn a_canary_that_is_not_a_tenant_is_an_error() {
        let all = tenants(&["t1"]);
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
        let all = tenants(&["c", "t1", "t2", "t3", "t4", "t5"]);
        let c = Canary {
            names: names(&["c"]),
            count: 0,
        };
        let w = plan(&all, &c, &[int(1), pct("60%")]).expect("plan");
        assert_eq!(
            w.rest,
            vec![
                tenants(&["t1"]),
                tenants(&["t2", "t3"]),
                tenants(&["t4", "t5"])
            ]
        );
    }

    #[test]
    fn a_canary_on_a_listed_server_goes_by_its_servers_name() {
        let all = interleave(vec![
            vec![Tenant::on(0, None, "t1".into())],
            vec![
                Tenant::on(1, Some("eu-2"), "t1".into()),
                Tenant::on(1, Some("eu-2"), "t2".into()),
            ],
        ]);
        let c = Canary {
            names: vec!["eu-2/t2".into()],
            count: 1,
        };
        let w = plan(&all, &c, &[]).expect("plan");
        assert_eq!(labels(&w.canaries), ["eu-2/t2", "t1"]);
        assert_eq!(labels(&w.rest[0]), ["eu-2/t1"]);
        let c = Canary {
            names: vec!["t2".into()],
            count: 0,
        };
        assert_eq!(
            plan(&all, &c, &[]),
            Err(PlanError::MissingCanary("t2".into())),
            "plain names are spec.database's"
        );
    }

    /// Canaries by count and each wave take every server's tenants in turn.
    #[test]
    fn servers_take_turns() {
        let on = |i: usize, server: Option<&str>, v: &[&str]| -> Vec<Tenant> {
            v.iter()
                .map(|n| Tenant::on(i, server, n.to_string()))
                .collect()
        };
        let all = interleave(vec![
            on(0, None, &["a1", "a2", "a3"]),
            on(1, Some("eu-2"), &["b1"]),
            on(2, Some("us-1"), &["c1", "c2"]),
        ]);
        let c = Canary {
            names: Vec::new(),
            count: 3,
        };
        let w = plan(&all, &c, &[IntOrString::Int(2)]).expect("plan");
        assert_eq!(labels(&w.canaries), ["a1", "eu-2/b1", "us-1/c1"]);
        assert_eq!(labels(&w.rest[0]), ["a2", "us-1/c2"]);
        assert_eq!(labels(&w.rest[1]), ["a3"]);
    }
}
