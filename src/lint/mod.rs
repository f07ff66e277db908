//! Linting a phase's SQL with PostgreSQL's own parser (`pg_query`), and the policy that
//! decides what a phase may run.
//!
//! Pure: no I/O. The planner calls [`lint`] and [`judge`] before any Job is created; the
//! `phasegate lint` CLI ([`cli`]) is a thin wrapper around the same two functions.
//!
//! - [`lint`] parses the SQL and returns a [`Finding`] for every statement (or part of an
//!   `ALTER TABLE`) that is backward-incompatible or lock-dangerous. A statement without a
//!   finding is safe; `lint` never returns [`Class::Safe`] findings.
//! - [`judge`] sorts findings into refused / warnings / overridden / accepted for a phase and a
//!   [`Policy`]:
//!
//! | class                 | expand                         | contract                       |
//! |-----------------------|--------------------------------|--------------------------------|
//! | backward-incompatible | refused (overridden if allowed)| accepted (informational)       |
//! | lock-dangerous        | warning; refused when `strict` | warning; refused when `strict` |
//!
//! A rule listed in `Policy::allow` moves its findings to `overridden` in either phase
//! (including plain warnings), so an expert's override is explicit and can be recorded.
//!
//! Changes to a table created earlier in the same SQL (index, constraints, drops) are not
//! findings: no running code uses that table and nobody waits for its locks.
//!
//! Consecutive statements run in one transaction (until a statement that cannot, or a
//! `-- phasegate:commit` line): a data change after DDL in that transaction runs under the DDL's
//! locks (`dml-after-ddl`), using the executor's lock levels ([`crate::sql`]).
//!
//! Not inspected: bodies of `DO` blocks and functions, and facts only the catalog knows
//! (whether a function is volatile, whether a type change is binary compatible) — there the
//! linter assumes the risky answer and says so in the message.

pub mod cli;
mod rules;

pub use rules::{Rule, RULES};

use pg_query::protobuf::Token;

use crate::sql::SqlError;

/// How a statement affects the code running now and the database's other sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// Breaks code that is running now (drops, renames, type changes, new NOT NULLs, …):
    /// belongs in contract.
    BackwardIncompatible,
    /// Compatible, but holds a lock that makes application queries wait (non-concurrent
    /// index builds, validating constraints, table rewrites, …).
    LockDangerous,
    /// Neither.
    Safe,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::BackwardIncompatible => "backward-incompatible",
            Class::LockDangerous => "lock-dangerous",
            Class::Safe => "safe",
        }
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem in a phase's SQL.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Stable kebab-case rule id (see [`RULES`]).
    pub rule: &'static str,
    pub class: Class,
    /// 1-based index of the statement in the phase.
    pub statement: usize,
    /// 1-based line in the phase SQL where the statement starts.
    pub line: usize,
    /// The statement, whitespace collapsed, shortened to about 200 characters.
    pub sql: String,
    /// What is wrong, naming the objects involved.
    pub message: String,
    /// How to fix it, one sentence.
    pub fix: String,
}

impl std::fmt::Display for Finding {
    /// `line 3: [drop-column] ALTER TABLE users DROP COLUMN legacy_flag — drops column …. Fix: …`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}: [{}] {} — {}. Fix: {}",
            self.line, self.rule, self.sql, self.message, self.fix
        )
    }
}

/// The phase whose SQL is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LintPhase {
    Expand,
    Contract,
}

/// SQL that cannot be linted (and that the executor would not run either).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("line {line}{}: {message}", column.map(|c| format!(", column {c}")).unwrap_or_default())]
pub struct LintError {
    /// `syntax-error`, `empty-sql`, `transaction-control` or `unnamed-concurrent-index`.
    pub rule: &'static str,
    pub message: String,
    /// 1-based index of the offending statement, when known.
    pub statement: Option<usize>,
    /// 1-based line of the error (or of the offending statement).
    pub line: usize,
    /// 1-based column (in characters) of the offending token, when known.
    pub column: Option<usize>,
    /// 1-based character position in the whole SQL, like PostgreSQL's `cursorpos`.
    pub cursor: Option<usize>,
}

/// How strictly a phase is judged (from `spec.safety`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Refuse lock-dangerous statements too, not just warn.
    pub strict: bool,
    /// Rule ids explicitly overridden: their findings are never refused.
    pub allow: Vec<String>,
}

/// The outcome of [`judge`]. The phase may run iff `refused` is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// Findings that stop the phase.
    pub refused: Vec<Finding>,
    /// Lock-dangerous findings that do not stop it (report them in status and Events).
    pub warnings: Vec<Finding>,
    /// Findings whose rule is in `Policy::allow` (record them).
    pub overridden: Vec<Finding>,
    /// Backward-incompatible findings in contract, where they belong: informational.
    pub accepted: Vec<Finding>,
}

impl Verdict {
    pub fn is_refused(&self) -> bool {
        !self.refused.is_empty()
    }
}

/// Findings plus the number of statements (for summaries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub statements: usize,
    pub findings: Vec<Finding>,
}

/// Whether `id` names a rule (for validating `--allow` and `spec.safety.allow`).
pub fn is_known_rule(id: &str) -> bool {
    rules::find(id).is_some()
}

/// Lints a phase's SQL. Errors for SQL that does not parse, contains no statement, or that
/// the executor refuses (transaction control, an unnamed `CREATE INDEX CONCURRENTLY`).
pub fn lint(sql: &str) -> Result<Vec<Finding>, LintError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    // A migration's SQL is immutable and every reconcile lints it: parse each text once.
    type Cache = Mutex<HashMap<String, Result<Vec<Finding>, LintError>>>;
    const MAX_ENTRIES: usize = 512;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Cache::default);
    if let Some(hit) = cache.lock().ok().and_then(|c| c.get(sql).cloned()) {
        return hit;
    }
    let result = lint_report(sql).map(|r| r.findings);
    if let Ok(mut c) = cache.lock() {
        if c.len() >= MAX_ENTRIES {
            c.clear();
        }
        c.insert(sql.to_string(), result.clone());
    }
    result
}

/// [`lint`], also counting statements.
pub fn lint_report(sql: &str) -> Result<Report, LintError> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| syntax_error(sql, e))?;
    let starts = statement_spans(sql, &parsed.protobuf.stmts);
    // What the executor refuses is refused here too, before any Job exists.
    let statements = match crate::sql::parse_phase(sql) {
        Ok(s) => s,
        Err(e) => return Err(executor_error(sql, e, &starts)),
    };
    let mut ctx = rules::Ctx::default();
    let mut held = rules::Held::default();
    let mut findings = Vec::new();
    let mut index = 0;
    for (raw, (start, end)) in parsed.protobuf.stmts.iter().zip(&starts) {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        index += 1;
        let mut hits = rules::check(node, &mut ctx);
        // parse_phase keeps exactly the statements with a node, in order.
        if let Some(s) = statements.get(index - 1) {
            hits.extend(rules::transaction_locks(s, index, node, &ctx, &mut held));
        }
        if hits.is_empty() {
            continue;
        }
        let text = shorten(statement_text(sql, *start, *end));
        let line = line_col(sql, *start).0;
        for h in hits {
            // Every hit names a rule of RULES (`hit` debug-asserts it); skip rather than panic.
            let Some(rule) = rules::find(h.rule) else {
                continue;
            };
            findings.push(Finding {
                rule: rule.id,
                class: rule.class,
                statement: index,
                line,
                sql: text.clone(),
                message: h.message,
                fix: rule.fix.to_string(),
            });
        }
    }
    Ok(Report {
        statements: index,
        findings,
    })
}

/// Applies the policy of a phase to findings. See the module documentation for the table.
pub fn judge(findings: &[Finding], phase: LintPhase, policy: &Policy) -> Verdict {
    let mut v = Verdict::default();
    for f in findings {
        let allowed = policy.allow.iter().any(|a| a == f.rule);
        let bucket = match (f.class, phase) {
            (Class::Safe, _) => continue,
            (Class::BackwardIncompatible, LintPhase::Contract) => &mut v.accepted,
            _ if allowed => &mut v.overridden,
            (Class::BackwardIncompatible, LintPhase::Expand) => &mut v.refused,
            (Class::LockDangerous, _) if policy.strict => &mut v.refused,
            (Class::LockDangerous, _) => &mut v.warnings,
        };
        bucket.push(f.clone());
    }
    v
}

/// Byte span of each statement (of `stmts` with a node): from its first token that is not a
/// comment to its end (before the `;`).
fn statement_spans(sql: &str, stmts: &[pg_query::protobuf::RawStmt]) -> Vec<(usize, usize)> {
    let tokens = pg_query::scan(sql).map(|s| s.tokens).unwrap_or_default();
    stmts
        .iter()
        .map(|raw| {
            let loc = usize::try_from(raw.stmt_location)
                .unwrap_or(0)
                .min(sql.len());
            let end = if raw.stmt_len <= 0 {
                sql.len()
            } else {
                (loc + usize::try_from(raw.stmt_len).unwrap_or(0)).min(sql.len())
            };
            let start = tokens
                .iter()
                .filter(|t| {
                    t.token != Token::SqlComment as i32 && t.token != Token::CComment as i32
                })
                .map(|t| usize::try_from(t.start).unwrap_or(0))
                .find(|&s| s >= loc)
                .filter(|&s| s < end)
                .unwrap_or(loc);
            (start, end)
        })
        .collect()
}

fn statement_text(sql: &str, start: usize, end: usize) -> &str {
    sql.get(start..end)
        .unwrap_or("")
        .trim()
        .trim_end_matches(';')
        .trim_end()
}

const MAX_SQL_CHARS: usize = 200;

/// Collapses whitespace and shortens to about 200 characters (for one-line reports).
fn shorten(sql: &str) -> String {
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= MAX_SQL_CHARS {
        return one_line;
    }
    let mut s: String = one_line.chars().take(MAX_SQL_CHARS - 1).collect();
    s.push('…');
    s
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(sql: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(sql.len());
    while !sql.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &sql[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

fn executor_error(sql: &str, e: SqlError, spans: &[(usize, usize)]) -> LintError {
    let rule = match e {
        SqlError::Empty => "empty-sql",
        SqlError::TransactionControl { .. } => "transaction-control",
        SqlError::UnnamedConcurrentIndex { .. } => "unnamed-concurrent-index",
        SqlError::Syntax(_) => "syntax-error",
    };
    let statement = e.statement();
    let line = statement
        .and_then(|i| spans.get(i - 1))
        .map(|(start, _)| line_col(sql, *start).0)
        .unwrap_or(1);
    LintError {
        rule,
        message: e.to_string(),
        statement,
        line,
        column: None,
        cursor: None,
    }
}

/// Locates a parse error. `pg_query` reports only the message, so: split the SQL with the
/// scanner, find the first statement that does not parse on its own, then the first token
/// whose inclusion makes a prefix of that statement fail other than "at end of input".
fn syntax_error(sql: &str, e: pg_query::Error) -> LintError {
    let message = match e {
        pg_query::Error::Parse(m) => m,
        other => other.to_string(),
    };
    let mut err = LintError {
        rule: "syntax-error",
        message,
        statement: None,
        line: 1,
        column: None,
        cursor: None,
    };
    let Ok(pieces) = pg_query::split_with_scanner(sql) else {
        return err;
    };
    let base = sql.as_ptr() as usize;
    let mut index = 0;
    for piece in pieces {
        let offset = (piece.as_ptr() as usize).saturating_sub(base);
        if piece.trim().is_empty() {
            continue;
        }
        index += 1;
        if pg_query::parse(piece, 0).is_ok() {
            continue;
        }
        err.statement = Some(index);
        let tokens = match pg_query::scan(piece) {
            Ok(s) => s.tokens,
            Err(_) => Vec::new(),
        };
        let code: Vec<_> = tokens
            .iter()
            .filter(|t| t.token != Token::SqlComment as i32 && t.token != Token::CComment as i32)
            .collect();
        let mut at = code
            .first()
            .map(|t| t.start as usize)
            .unwrap_or(piece.len() - piece.trim_start().len());
        // Bounded: statements in a phase are small, and each parse is microseconds.
        for t in code.iter().take(5_000) {
            let end = (t.end as usize).min(piece.len());
            match pg_query::parse(&piece[..end], 0) {
                Err(pg_query::Error::Parse(m)) if !m.contains("at end of input") => {
                    at = t.start as usize;
                    break;
                }
                _ => at = end,
            }
        }
        let abs = offset + at.min(piece.len());
        let (line, col) = line_col(sql, abs);
        err.line = line;
        err.column = Some(col);
        err.cursor = Some(sql[..abs.min(sql.len())].chars().count() + 1);
        return err;
    }
    err
}

#[cfg(test)]
mod tests;
