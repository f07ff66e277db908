//! What `phasegate plan` reads: the migration (a DatabaseMigration YAML, or SQL files) and
//! the schema to load first (`pg_dump --schema-only` output, SQL files, or earlier
//! migrations' YAML).

use std::path::Path;

use kube::ResourceExt;

use super::PlanError;
use crate::api::{BackfillSpec, DatabaseMigration, RolloutSpec};
use crate::lint::{LintPhase, Policy};

/// A phase, in the order the operator runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseKind {
    Expand,
    Backfill,
    Contract,
}

impl PhaseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseKind::Expand => "expand",
            PhaseKind::Backfill => "backfill",
            PhaseKind::Contract => "contract",
        }
    }

    /// How the linter judges the phase (a backfill batch is judged as expand SQL would be).
    pub fn lint_phase(self) -> LintPhase {
        match self {
            PhaseKind::Contract => LintPhase::Contract,
            _ => LintPhase::Expand,
        }
    }
}

/// What a phase runs.
#[derive(Debug, Clone)]
pub enum PhaseBody {
    Sql(String),
    /// A Job of the user's own: nothing Phasegate can plan.
    Job,
    Backfill(BackfillSpec),
}

#[derive(Debug, Clone)]
pub struct PhaseInput {
    pub kind: PhaseKind,
    pub body: PhaseBody,
}

/// One migration to plan.
#[derive(Debug, Clone)]
pub struct MigrationInput {
    /// `metadata.name`, or the SQL file's name.
    pub name: String,
    pub file: String,
    pub namespace: Option<String>,
    pub app_version: Option<String>,
    pub policy: Policy,
    pub rollout: Option<RolloutSpec>,
    pub phases: Vec<PhaseInput>,
}

/// Reads a migration file: every DatabaseMigration of a YAML file, or one SQL file as a
/// single phase of kind `sql_phase`.
pub fn read_migrations(
    path: &Path,
    sql_phase: PhaseKind,
) -> Result<Vec<MigrationInput>, PlanError> {
    let text = read(path)?;
    let file = path.display().to_string();
    if !is_yaml(path) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| file.clone());
        return Ok(vec![MigrationInput {
            name,
            file,
            namespace: None,
            app_version: None,
            policy: Policy::default(),
            rollout: None,
            phases: vec![PhaseInput {
                kind: sql_phase,
                body: PhaseBody::Sql(text),
            }],
        }]);
    }
    let found = migrations_in_yaml(&text, &file)?;
    if found.is_empty() {
        return Err(PlanError::Input {
            file,
            message: "no DatabaseMigration (apiVersion phasegate.dev/v1alpha1) in this YAML".into(),
        });
    }
    Ok(found.into_iter().map(|m| from_resource(m, &file)).collect())
}

/// The SQL that brings a database to the state a schema file describes, in order.
pub fn read_schema(path: &Path) -> Result<Vec<String>, PlanError> {
    let text = read(path)?;
    if !is_yaml(path) {
        return Ok(vec![text]);
    }
    // Earlier migrations: their expand and contract, as the operator would have run them
    // (backfills only move data, which a schema does not hold).
    let file = path.display().to_string();
    let mut out = Vec::new();
    for m in migrations_in_yaml(&text, &file)? {
        out.extend(m.spec.expand.sql.clone());
        out.extend(m.spec.contract.sql.clone());
    }
    Ok(out)
}

/// Removes psql meta-commands (`\restrict`, `\connect`, …) that `pg_dump` writes into plain
/// dumps: the server does not understand them.
pub fn strip_psql_meta(sql: &str) -> String {
    sql.lines()
        .map(|l| if l.starts_with('\\') { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

fn from_resource(m: DatabaseMigration, file: &str) -> MigrationInput {
    let spec = &m.spec;
    let phase = |kind, sql: &Option<String>| PhaseInput {
        kind,
        body: sql.clone().map(PhaseBody::Sql).unwrap_or(PhaseBody::Job),
    };
    let mut phases = vec![phase(PhaseKind::Expand, &spec.expand.sql)];
    if let Some(b) = &spec.backfill {
        phases.push(PhaseInput {
            kind: PhaseKind::Backfill,
            body: PhaseBody::Backfill(b.clone()),
        });
    }
    phases.push(phase(PhaseKind::Contract, &spec.contract.sql));
    MigrationInput {
        name: m.name_any(),
        file: file.to_string(),
        namespace: m.namespace(),
        app_version: Some(spec.app_version.clone()),
        policy: Policy {
            strict: spec.safety.strict,
            allow: spec.safety.allow.clone(),
        },
        rollout: Some(spec.rollout.clone()),
        phases,
    }
}

fn migrations_in_yaml(text: &str, file: &str) -> Result<Vec<DatabaseMigration>, PlanError> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| PlanError::Input {
            file: file.to_string(),
            message: format!("YAML document {}: {e}", i + 1),
        })?;
        if value.get("kind").and_then(|k| k.as_str()) != Some("DatabaseMigration") {
            continue;
        }
        let m: DatabaseMigration = serde_yaml::from_value(value).map_err(|e| PlanError::Input {
            file: file.to_string(),
            message: format!(
                "YAML document {}: not a valid DatabaseMigration: {e}",
                i + 1
            ),
        })?;
        out.push(m);
    }
    Ok(out)
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

fn read(path: &Path) -> Result<String, PlanError> {
    std::fs::read_to_string(path).map_err(|e| PlanError::Input {
        file: path.display().to_string(),
        message: format!("cannot read: {e}"),
    })
}
