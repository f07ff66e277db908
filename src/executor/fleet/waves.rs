//! The order tenants run in: canaries (named, then the first others in discovery's order),
//! then the rest.

use super::tenant::Tenant;
use crate::api::Canary;

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Waves {
    /// One at a time, first; a failure among them halts the rest.
    pub canaries: Vec<Tenant>,
    pub rest: Vec<Tenant>,
}

/// `tenants` in discovery's order (server by server, by name on each); canaries are named by
/// their labels (`tenant_07`, `eu-2/tenant_07`). Err names the canaries that are not tenants.
pub(super) fn plan(tenants: &[Tenant], canary: &Canary) -> Result<Waves, String> {
    let find = |label: &String| tenants.iter().find(|t| &t.label == label);
    let missing: Vec<&str> = canary
        .names
        .iter()
        .filter(|n| find(n).is_none())
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(missing.join(", "));
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

    /// Tenants of `spec.database`'s server.
    fn tenants(v: &[&str]) -> Vec<Tenant> {
        v.iter()
            .map(|s| Tenant::on(0, None, s.to_string()))
            .collect()
    }

    #[test]
    fn named_canaries_then_the_first_others_then_the_rest() {
        let all = tenants(&["t1", "t2", "t3", "t4", "t5"]);
        let c = Canary {
            names: names(&["t4", "t4"]),
            count: 2,
        };
        assert_eq!(
            plan(&all, &c),
            Ok(Waves {
                canaries: tenants(&["t4", "t1", "t2"]),
                rest: tenants(&["t3", "t5"])
            })
        );
        let none = plan(&all, &Canary::default()).expect("plan");
        assert!(none.canaries.is_empty());
        assert_eq!(none.rest, all);
    }

    #[test]
    fn a_canary_that_is_not_a_tenant_is_an_error() {
        let all = tenants(&["t1"]);
        let c = Canary {
            names: names(&["demo", "t1", "x"]),
            count: 0,
        };
        assert_eq!(plan(&all, &c), Err("demo, x".to_string()));
    }

    #[test]
    fn a_canary_on_a_listed_server_goes_by_its_servers_name() {
        let mut all = vec![Tenant::on(0, None, "t1".into())];
        all.push(Tenant::on(1, Some("eu-2"), "t1".into()));
        all.push(Tenant::on(1, Some("eu-2"), "t2".into()));
        let c = Canary {
            names: vec!["eu-2/t2".into()],
            count: 1,
        };
        let w = plan(&all, &c).expect("plan");
        let labels = |v: &[Tenant]| v.iter().map(|t| t.label.clone()).collect::<Vec<_>>();
        assert_eq!(labels(&w.canaries), ["eu-2/t2", "t1"]);
        assert_eq!(labels(&w.rest), ["eu-2/t1"]);
        let c = Canary {
            names: vec!["t2".into()],
            count: 0,
        };
        assert_eq!(
            plan(&all, &c),
            Err("t2".into()),
            "plain names are spec.database's"
        );
    }
}
