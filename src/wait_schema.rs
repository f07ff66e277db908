//! `phasegate wait-schema`: the app's side of expand. As an init container of the app's pods
//! it returns once the database's own ledger says that expand for the version the code needs
//! is applied, so a new pod never starts serving before its schema — whatever order GitOps or
//! `kubectl apply` created things in. It needs no Kubernetes rights, only the app's database
//! credentials with read access to the ledger (docs/wait-schema.md says why this and not a
//! readiness gate).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::executor::connect::{self, ConnectError, Scrubber};

/// What the app's pod runs, e.g. `phasegate wait-schema --version 2.0.0`.
#[derive(clap::Args, Debug)]
pub struct WaitSchemaArgs {
    /// The migration whose expand this code needs (its name); repeat for several. The precise
    /// form: in a database several apps share, their versions collide.
    #[arg(
        long = "migration",
        value_name = "NAME",
        required_unless_present = "version"
    )]
    pub migrations: Vec<String>,
    /// Or: every expand the ledger records for this app version (a migration's
    /// `spec.appVersion`); only for a database that one app uses. With `--migration`, both
    /// must match.
    #[arg(long)]
    pub version: Option<String>,
    /// Only migrations of this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// The database, as the app reaches it.
    #[arg(long, env = "PHASEGATE_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Give up after this long, exit 1 (0: wait as long as it takes; the Deployment's
    /// progressDeadlineSeconds says when a rollout is stuck).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// How often to ask.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Ask once: exit 0 when applied, 1 when not (a startup probe's `exec` command).
    #[arg(long)]
    pub once: bool,
}

/// One expand the ledger records for the version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandRow {
    pub namespace: String,
    pub name: String,
    pub applied: bool,
    pub statements_done: i32,
    pub statements_total: i32,
}

/// What the ledger says of the version's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schema {
    /// Every expand recorded for the version is applied (at least one is).
    Ready { migrations: Vec<String> },
    /// Not yet, and why.
    Pending(String),
}

/// Why waiting stopped without the schema.
#[derive(Debug, thiserror::Error)]
pub enum WaitSchemaError {
    #[error("{0}")]
    Url(#[from] ConnectError),
    #[error("this role may not read Phasegate's ledger ({message}); grant it: GRANT USAGE ON SCHEMA phasegate TO <app role>; GRANT SELECT ON phasegate.ledger TO <app role>;")]
    Permission { message: String },
    #[error("expand of {wanted} is not applied after {waited}: {why}")]
    Timeout {
        wanted: String,
        waited: String,
        why: String,
    },
}

impl WaitSchemaError {
    /// 1: not applied (yet); 2: it cannot work as configured.
    fn exit_code(&self) -> u8 {
        match self {
            WaitSchemaError::Timeout { .. } => 1,
            WaitSchemaError::Url(_) | WaitSchemaError::Permission { .. } => 2,
        }
    }
}

/// What is waited for, for messages.
fn wanted(args: &WaitSchemaArgs) -> String {
    match (&args.version, args.migrations.is_empty()) {
        (Some(v), true) => format!("app version {v}"),
        (Some(v), false) => format!("{} (app version {v})", args.migrations.join(", ")),
        (None, _) => args.migrations.join(", "),
    }
}

/// Judges the ledger's rows: every named migration's expand applied, or — by version alone —
/// at least one expand of the version and none still in progress (a migration the ledger has
/// not seen yet cannot be waited for that way: name it).
pub fn judge(migrations: &[String], version: Option<&str>, rows: &[ExpandRow]) -> Schema {
    let mut pending: Vec<String> = migrations
        .iter()
        .filter(|m| !rows.iter().any(|r| &r.name == *m))
        .map(|m| format!("{m}: no expand recorded yet"))
        .collect();
    if migrations.is_empty() && rows.is_empty() {
        pending.push(format!(
            "no expand for app version {} recorded yet",
            version.unwrap_or_default()
        ));
    }
    pending.extend(rows.iter().filter(|r| !r.applied).map(|r| {
        format!(
            "{}/{} in progress ({} of {} statements)",
            r.namespace, r.name, r.statements_done, r.statements_total
        )
    }));
    if pending.is_empty() {
        Schema::Ready {
            migrations: rows
                .iter()
                .map(|r| format!("{}/{}", r.namespace, r.name))
                .collect(),
        }
    } else {
        Schema::Pending(pending.join("; "))
    }
}

/// `phasegate wait-schema`.
pub async fn run(args: WaitSchemaArgs) -> ExitCode {
    match wait(&args).await {
        Ok(migrations) => {
            tracing::info!(migrations = %migrations.join(", "), "schema ready: expand applied for {}", wanted(&args));
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Asks until the schema is ready, the timeout passes, or the configuration cannot work.
pub async fn wait(args: &WaitSchemaArgs) -> Result<Vec<String>, WaitSchemaError> {
    let settings = connect::parse(&args.database_url)?;
    let scrub = Scrubber::for_url(&args.database_url);
    let start = Instant::now();
    let mut said = String::new();
    loop {
        let why = match ask(args, &settings, &scrub).await? {
            Schema::Ready { migrations } => return Ok(migrations),
            Schema::Pending(why) => why,
        };
        if why != said {
            tracing::info!("waiting for the schema of {}: {why}", wanted(args));
            said.clone_from(&why);
        }
        let waited = start.elapsed();
        if args.once || (!args.timeout.is_zero() && waited >= args.timeout) {
            return Err(WaitSchemaError::Timeout {
                wanted: wanted(args),
                waited: humantime::format_duration(Duration::from_secs(waited.as_secs()))
                    .to_string(),
                why,
            });
        }
        tokio::time::sleep(args.interval).await;
    }
}

/// One look at the ledger. A database that cannot be reached yet, or has no ledger yet, is
/// pending, not an error: pods may start before either.
async fn ask(
    args: &WaitSchemaArgs,
    settings: &connect::ConnSettings,
    scrub: &Scrubber,
) -> Result<Schema, WaitSchemaError> {
    let timeout = args.interval.max(Duration::from_secs(5));
    let client = match connect::connect(settings, timeout, scrub).await {
        Ok(c) => c,
        Err(e) => {
            return Ok(Schema::Pending(format!(
                "database not reachable: {}",
                scrub.scrub(&e.to_string())
            )))
        }
    };
    // Unnamed statements only: nothing a transaction pooler could lose between queries.
    let rows = client
        .query_typed(
            "SELECT namespace, name, status = 'applied', statements_done, statements_total
               FROM phasegate.ledger
              WHERE phase = 'expand' AND ($1::text IS NULL OR app_version = $1)
                AND (cardinality($2::text[]) = 0 OR name = ANY($2))
                AND ($3::text IS NULL OR namespace = $3)
              ORDER BY namespace, name",
            &[
                (&args.version, tokio_postgres::types::Type::TEXT),
                (&args.migrations, tokio_postgres::types::Type::TEXT_ARRAY),
                (&args.namespace, tokio_postgres::types::Type::TEXT),
            ],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            let code = e.code().map(|c| c.code().to_string());
            let (_, message) = connect::describe(&e);
            let message = scrub.scrub(&message);
            return match code.as_deref() {
                // undefined_table, invalid_schema_name: no migration has run here yet.
                Some("42P01" | "3F000") => Ok(Schema::Pending(
                    "no Phasegate ledger in this database yet".into(),
                )),
                Some("42501") => Err(WaitSchemaError::Permission { message }),
                _ => Ok(Schema::Pending(format!("reading the ledger: {message}"))),
            };
        }
    };
    let rows: Vec<ExpandRow> = rows
        .iter()
        .map(|r| ExpandRow {
            namespace: r.get(0),
            name: r.get(1),
            applied: r.get(2),
            statements_done: r.get(3),
            statements_total: r.get(4),
        })
        .collect();
    Ok(judge(&args.migrations, args.version.as_deref(), &rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, applied: bool) -> ExpandRow {
        ExpandRow {
            namespace: "shop".into(),
            name: name.into(),
            applied,
            statements_done: u8::from(applied).into(),
            statements_total: 1,
        }
    }

    #[test]
    fn ready_only_when_every_recorded_expand_of_the_version_is_applied() {
        let judge_v = |rows: &[ExpandRow]| judge(&[], Some("2.0.0"), rows);
        assert!(
            matches!(judge_v(&[]), Schema::Pending(w) if w.contains("no expand for app version 2.0.0"))
        );
        assert_eq!(
            judge_v(&[row("a", true), row("b", true)]),
            Schema::Ready {
                migrations: vec!["shop/a".into(), "shop/b".into()]
            }
        );
        assert!(
            matches!(judge_v(&[row("a", true), row("b", false)]), Schema::Pending(w) if w == "shop/b in progress (0 of 1 statements)")
        );
    }

    #[test]
    fn named_migrations_wait_for_each_one_even_before_the_ledger_knows_it() {
        let names = ["a".to_string(), "b".to_string()];
        assert!(
            matches!(judge(&names, None, &[row("a", true)]), Schema::Pending(w) if w == "b: no expand recorded yet")
        );
        assert!(matches!(
            judge(&names, None, &[row("a", true), row("b", true)]),
            Schema::Ready { .. }
        ));
    }
}
