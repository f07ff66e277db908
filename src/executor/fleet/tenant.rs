//! One tenant of a fleet run: the server it lives on, its name there, and the name it goes by
//! in status, logs and `canary.names`.

/// A tenant found by discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Tenant {
    /// Its server: an index into the run's servers (0 is `spec.database`'s).
    pub server: usize,
    /// Its schema's or database's name on that server.
    pub name: String,
    /// What status, logs and canary names call it: `name` on `spec.database`'s server,
    /// `<server>/<name>` on a listed one (a server name has no `/`, see
    /// [`crate::api::TenantsSpec::check_servers`]).
    pub label: String,
}

impl Tenant {
    /// `name` on the server at `server`, called `server_name` (None: `spec.database`'s).
    pub fn on(server: usize, server_name: Option<&str>, name: String) -> Tenant {
        let label = match server_name {
            Some(s) => format!("{s}/{name}"),
            None => name.clone(),
        };
        Tenant {
            server,
            name,
            label,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_servers_tenants_carry_its_name() {
        let t = Tenant::on(2, Some("eu-2"), "tenant_07".into());
        assert_eq!(
            (t.label.as_str(), t.name.as_str()),
            ("eu-2/tenant_07", "tenant_07")
        );
        assert_eq!(Tenant::on(0, None, "tenant_07".into()).label, "tenant_07");
    }
}
