//! What every run on one server as one role learns alike: the server's version, whether the
//! role sees other roles' sessions, the port the server listens on. A fleet run's tenants share
//! one cache through their cloned [`super::Config`], so each is asked once per phase, not once
//! per tenant. Keyed by role, host and port: a cache shared by runs on other servers (or as
//! other roles) never answers for them; a URL with several hosts is never cached (which of them
//! answered is unknown).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_postgres::Client;

use super::connect::ConnSettings;

#[derive(Clone, Default)]
pub struct ServerFacts(Arc<Mutex<HashMap<String, Known>>>);

impl std::fmt::Debug for ServerFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerFacts")
    }
}

#[derive(Clone, Default)]
struct Known {
    version: Option<i32>,
    visibility: Option<Option<String>>,
    port: Option<Option<i32>>,
}

impl ServerFacts {
    /// `server_version_num`.
    pub(super) async fn version(
        &self,
        settings: &ConnSettings,
        client: &Client,
    ) -> Result<i32, tokio_postgres::Error> {
        if let Some(v) = self.known(settings, |k| k.version) {
            return Ok(v);
        }
        let v = server_version(client).await?;
        self.learn(settings, |k| k.version = Some(v));
        Ok(v)
    }

    /// [`super::locks::visibility_warning`].
    pub(super) async fn visibility(
        &self,
        settings: &ConnSettings,
        client: &Client,
    ) -> Result<Option<String>, tokio_postgres::Error> {
        if let Some(w) = self.known(settings, |k| k.visibility.clone()) {
            return Ok(w);
        }
        let w = super::locks::visibility_warning(client).await?;
        self.learn(settings, |k| k.visibility = Some(w.clone()));
        Ok(w)
    }

    /// [`super::pooler_clients::server_port`] (None also when it cannot be read).
    pub(super) async fn port(&self, settings: &ConnSettings, client: &Client) -> Option<i32> {
        if let Some(p) = self.known(settings, |k| k.port) {
            return p;
        }
        let p = super::pooler_clients::server_port(client).await;
        self.learn(settings, |k| k.port = Some(p));
        p
    }

    fn known<T>(&self, settings: &ConnSettings, get: impl Fn(&Known) -> Option<T>) -> Option<T> {
        let key = key(settings)?;
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&key).and_then(get)
    }

    fn learn(&self, settings: &ConnSettings, set: impl FnOnce(&mut Known)) {
        if let Some(key) = key(settings) {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            set(map.entry(key).or_default());
        }
    }
}

/// `server_version_num`: which settings [`super::session::local_settings`] may use.
pub(super) async fn server_version(client: &Client) -> Result<i32, tokio_postgres::Error> {
    Ok(client
        .query_typed_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0))
}

/// Role, host and port of a URL with one host; None otherwise.
fn key(settings: &ConnSettings) -> Option<String> {
    let c = &settings.config;
    let [host] = c.get_hosts() else {
        return None;
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    Some(format!("{:?}@{host:?}:{port}", c.get_user()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_answer_per_role_host_and_port() {
        let k = |url: &str| super::super::connect::parse(url).ok().and_then(|s| key(&s));
        assert_eq!(k("postgres://a@db:5432/x"), k("postgres://a@db/y"));
        assert_ne!(k("postgres://a@db/x"), k("postgres://b@db/x"));
        assert_ne!(k("postgres://a@db/x"), k("postgres://a@db2/x"));
        assert_ne!(k("postgres://a@db/x"), k("postgres://a@db:6432/x"));
        assert_eq!(k("postgres://a@db1,db2/x"), None);
    }
}
