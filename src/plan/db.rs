//! The database a plan runs in — a throwaway server, or a scratch copy of the `--url`
//! database that is dropped afterwards — and loading the schema into it.

use std::path::Path;
use std::time::Duration;

use tokio_postgres::{Client, Config};

use super::server::Throwaway;
use super::PlanError;
use crate::executor::connect::{self, ConnSettings, Scrubber, SslMode};

/// Where the plan's database lives. Dropping it stops a throwaway server; a scratch database
/// must be dropped with [`Env::cleanup`].
pub struct Env {
    settings: ConnSettings,
    scrub: Scrubber,
    /// `--url`: the admin connection's settings and the scratch database to drop.
    scratch: Option<(ConnSettings, String)>,
    _server: Option<Throwaway>,
    /// Shown in the report, e.g. `throwaway server (/usr/lib/postgresql/15/bin)`.
    pub source: String,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

impl Env {
    pub fn throwaway(bindir: Option<&Path>) -> Result<Env, PlanError> {
        let server = Throwaway::start(bindir)?;
        Ok(Env {
            settings: ConnSettings {
                config: server.config(),
                ssl_mode: SslMode::Disable,
                root_cert: None,
            },
            scrub: Scrubber::new(Vec::new()),
            scratch: None,
            source: format!("a throwaway server ({})", server.bindir().display()),
            _server: Some(server),
        })
    }

    /// A scratch database on the server of `url`: a copy of the URL's database when `copy`
    /// (its schema is what is planned against; no other session may be connected to it), else
    /// a new empty one. Needs the CREATEDB privilege.
    pub async fn scratch(url: &str, copy: bool) -> Result<Env, PlanError> {
        let admin = connect::parse(url).map_err(|e| PlanError::Database(e.to_string()))?;
        let scrub = Scrubber::new(admin.secrets(url));
        let client = connect::connect(&admin, CONNECT_TIMEOUT, &scrub)
            .await
            .map_err(|e| PlanError::Database(scrub.scrub(&e.to_string())))?;
        let template: String = client
            .query_one("SELECT current_database()", &[])
            .await
            .map_err(|e| db_error(&scrub, "reading the database name", e))?
            .get(0);
        let name = format!(
            "phasegate_plan_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let (create, why) = if copy {
            (
                format!("CREATE DATABASE {} TEMPLATE {}", ident(&name), ident(&template)),
                format!("creating the scratch database {name} as a copy of {template} (the URL's user needs CREATEDB, and no other session may be connected to {template}; or give --schema to start from an empty database)"),
            )
        } else {
            (
                format!("CREATE DATABASE {}", ident(&name)),
                format!("creating the scratch database {name} (the URL's user needs CREATEDB)"),
            )
        };
        client
            .batch_execute(&create)
            .await
            .map_err(|e| db_error(&scrub, &why, e))?;
        let mut config: Config = admin.config.clone();
        config.dbname(&name);
        let settings = ConnSettings {
            config,
            ssl_mode: admin.ssl_mode,
            root_cert: admin.root_cert.clone(),
        };
        Ok(Env {
            settings,
            scrub,
            scratch: Some((admin, name.clone())),
            _server: None,
            source: if copy {
                format!("scratch database {name}, a copy of {template} on the --url server")
            } else {
                format!("scratch database {name} on the --url server")
            },
        })
    }

    pub async fn connect(&self) -> Result<Client, PlanError> {
        connect::connect(&self.settings, CONNECT_TIMEOUT, &self.scrub)
            .await
            .map_err(|e| PlanError::Database(self.scrub.scrub(&e.to_string())))
    }

    pub fn scrub(&self, text: &str) -> String {
        self.scrub.scrub(text)
    }

    /// Drops the scratch database (ending its sessions); a throwaway server stops on drop.
    pub async fn cleanup(self) -> Result<(), PlanError> {
        let Some((admin, name)) = &self.scratch else {
            return Ok(());
        };
        let client = connect::connect(admin, CONNECT_TIMEOUT, &self.scrub)
            .await
            .map_err(|e| PlanError::Database(self.scrub.scrub(&e.to_string())))?;
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                ident(name)
            ))
            .await
            .map_err(|e| {
                db_error(
                    &self.scrub,
                    &format!("dropping the scratch database {name}"),
                    e,
                )
            })
    }
}

/// What loading the schema did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SchemaLoad {
    pub files: Vec<String>,
    pub statements: usize,
    /// Ownership and privilege statements skipped because their role does not exist here.
    pub skipped: Vec<String>,
}

/// Runs schema SQL statement by statement on its own session (a dump changes session settings
/// such as `search_path`). Statements naming a missing role (`ALTER … OWNER TO`, `GRANT`) are
/// skipped and listed: ownership does not change what a migration locks.
pub async fn load_schema(env: &Env, parts: &[(String, String)]) -> Result<SchemaLoad, PlanError> {
    let client = env.connect().await?;
    let mut load = SchemaLoad::default();
    for (file, sql) in parts {
        if !load.files.contains(file) {
            load.files.push(file.clone());
        }
        let text = super::input::strip_psql_meta(sql);
        let statements = pg_query::split_with_scanner(&text).map_err(|e| PlanError::Schema {
            file: file.clone(),
            message: e.to_string(),
        })?;
        for stmt in statements
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            match client.batch_execute(stmt).await {
                Ok(()) => load.statements += 1,
                Err(e) if missing_role(&e) => load.skipped.push(super::shorten(stmt, 120)),
                Err(e) => {
                    return Err(PlanError::Schema {
                        file: file.clone(),
                        message: format!(
                            "{} in: {}",
                            env.scrub(&connect::describe(&e).1),
                            super::shorten(stmt, 200)
                        ),
                    })
                }
            }
        }
    }
    Ok(load)
}

fn missing_role(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| d.code().code() == "42704" && d.message().starts_with("role "))
}

fn db_error(scrub: &Scrubber, doing: &str, e: tokio_postgres::Error) -> PlanError {
    PlanError::Database(format!(
        "{doing}: {}",
        scrub.scrub(&connect::describe(&e).1)
    ))
}

/// A quoted SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
