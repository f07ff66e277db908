//! `phasegate lint`: the linter for CI pipelines.
//!
//! Exit codes: 0 when nothing is refused (warnings alone are fine), 1 when a finding is
//! refused or a file does not parse, 2 on usage or I/O errors.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;

use super::{judge, lint_report, Finding, LintError, LintPhase, Policy, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PhaseArg {
    Expand,
    Contract,
}

impl From<PhaseArg> for LintPhase {
    fn from(p: PhaseArg) -> Self {
        match p {
            PhaseArg::Expand => LintPhase::Expand,
            PhaseArg::Contract => LintPhase::Contract,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Lint SQL files with PostgreSQL's own parser, as the operator does before running a phase.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 nothing refused, 1 something refused or unparseable, 2 usage or I/O error."
)]
pub struct LintArgs {
    /// The phase the SQL is for: expand refuses backward-incompatible statements, contract
    /// accepts them.
    #[arg(long, value_enum)]
    pub phase: PhaseArg,
    /// Refuse lock-dangerous statements too (as `spec.safety.strict`).
    #[arg(long)]
    pub strict: bool,
    /// Override a rule by id (repeatable), as `spec.safety.allow`.
    #[arg(long = "allow", value_name = "RULE")]
    pub allow: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// SQL files; `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

enum Outcome {
    Judged { statements: usize, verdict: Verdict },
    Invalid(LintError),
    Unreadable(String),
}

/// Runs `phasegate lint`.
pub fn run(args: LintArgs) -> ExitCode {
    let unknown: Vec<&String> = args
        .allow
        .iter()
        .filter(|a| !super::is_known_rule(a))
        .collect();
    if !unknown.is_empty() {
        let ids: Vec<&str> = super::RULES.iter().map(|r| r.id).collect();
        eprintln!(
            "error: unknown rule id(s) for --allow: {}\nknown rules: {}",
            unknown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            ids.join(", ")
        );
        return ExitCode::from(2);
    }
    let phase = LintPhase::from(args.phase);
    let policy = Policy {
        strict: args.strict,
        allow: args.allow.clone(),
    };
    let mut stdin_used = false;
    let results: Vec<(String, Outcome)> = args
        .files
        .iter()
        .map(|path| {
            let (name, text) = if path.as_os_str() == "-" {
                let mut s = String::new();
                let r = if stdin_used {
                    Err("standard input can be read only once".to_string())
                } else {
                    stdin_used = true;
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .map(|_| s)
                        .map_err(|e| e.to_string())
                };
                ("<stdin>".to_string(), r)
            } else {
                let r = std::fs::read_to_string(path).map_err(|e| e.to_string());
                (path.display().to_string(), r)
            };
            let outcome = match text {
                Err(e) => Outcome::Unreadable(e),
                Ok(sql) => match lint_report(&sql) {
                    Ok(r) => Outcome::Judged {
                        statements: r.statements,
                        verdict: judge(&r.findings, phase, &policy),
                    },
                    Err(e) => Outcome::Invalid(e),
                },
            };
            (name, outcome)
        })
        .collect();

    let rendered = match args.format {
        Format::Text => text(&results, phase, &policy),
        Format::Json => json_output(&results),
    };
    let mut out = std::io::stdout().lock();
    if out
        .write_all(rendered.as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        return ExitCode::from(2);
    }
    if results
        .iter()
        .any(|(_, o)| matches!(o, Outcome::Unreadable(_)))
    {
        ExitCode::from(2)
    } else if results.iter().any(|(_, o)| match o {
        Outcome::Invalid(_) => true,
        Outcome::Judged { verdict, .. } => verdict.is_refused(),
        Outcome::Unreadable(_) => false,
    }) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Findings of a verdict with their labels, in statement order.
fn labelled(v: &Verdict) -> Vec<(&'static str, &Finding)> {
    let mut all: Vec<(&'static str, &Finding)> = Vec::new();
    all.extend(v.refused.iter().map(|f| ("refused", f)));
    all.extend(v.warnings.iter().map(|f| ("warning", f)));
    all.extend(v.overridden.iter().map(|f| ("overridden", f)));
    all.extend(v.accepted.iter().map(|f| ("accepted", f)));
    all.sort_by_key(|(_, f)| (f.statement, f.line));
    all
}

fn text(results: &[(String, Outcome)], phase: LintPhase, policy: &Policy) -> String {
    let mut s = String::new();
    let (mut refused, mut warnings, mut overridden, mut accepted, mut errors) = (0, 0, 0, 0, 0);
    for (file, outcome) in results {
        match outcome {
            Outcome::Unreadable(e) => {
                errors += 1;
                s += &format!("{file}: error: cannot read: {e}\n");
            }
            Outcome::Invalid(e) => {
                errors += 1;
                let col = e.column.map(|c| format!(":{c}")).unwrap_or_default();
                s += &format!(
                    "{file}:{}{col}: refused [{}] {}\n",
                    e.line, e.rule, e.message
                );
            }
            Outcome::Judged { verdict, .. } => {
                refused += verdict.refused.len();
                warnings += verdict.warnings.len();
                overridden += verdict.overridden.len();
                accepted += verdict.accepted.len();
                for (label, f) in labelled(verdict) {
                    if label == "accepted" {
                        // Contract is where these belong: list them, nothing to fix.
                        s += &format!("{file}:{}: {label} [{}] {}\n", f.line, f.rule, f.sql);
                    } else {
                        s += &format!(
                            "{file}:{}: {label} [{}] {} — {}\n",
                            f.line, f.rule, f.sql, f.message
                        );
                        s += &format!("    fix: {}\n", f.fix);
                    }
                }
            }
        }
    }
    let phase = match phase {
        LintPhase::Expand => "expand",
        LintPhase::Contract => "contract",
    };
    let statements: usize = results
        .iter()
        .map(|(_, o)| match o {
            Outcome::Judged { statements, .. } => *statements,
            _ => 0,
        })
        .sum();
    let strict = if policy.strict { ", strict" } else { "" };
    let status = if errors > 0 || refused > 0 {
        "REFUSED"
    } else {
        "OK"
    };
    s += &format!(
        "{status}: {} file(s), {statements} statement(s) for {phase}{strict}: {refused} refused, {errors} error(s), {warnings} warning(s), {overridden} overridden, {accepted} accepted\n",
        results.len()
    );
    s
}

fn json_output(results: &[(String, Outcome)]) -> String {
    let mut items = Vec::new();
    for (file, outcome) in results {
        match outcome {
            Outcome::Unreadable(e) => items.push(json!({
                "file": file, "verdict": "error", "rule": "unreadable", "message": e,
            })),
            Outcome::Invalid(e) => items.push(json!({
                "file": file, "verdict": "refused", "rule": e.rule, "class": "unparseable",
                "statement": e.statement, "line": e.line, "column": e.column,
                "message": e.message,
            })),
            Outcome::Judged { verdict, .. } => {
                for (label, f) in labelled(verdict) {
                    items.push(json!({
                        "file": file, "verdict": label, "rule": f.rule, "class": f.class,
                        "statement": f.statement, "line": f.line, "sql": f.sql,
                        "message": f.message, "fix": f.fix,
                    }));
                }
            }
        }
    }
    let mut s = serde_json::to_string_pretty(&items).unwrap_or_else(|_| "[]".into());
    s.push('\n');
    s
}
