//! The plan as Markdown, for a pull-request comment.

use std::fmt::Write;

use super::stats::human_seconds;
use super::{MigrationPlan, PhasePlan, Plan, StatementPlan};

/// The whole plan as Markdown.
pub fn markdown(plan: &Plan) -> String {
    let mut s = String::from("## Phasegate plan\n\n");
    let _ = writeln!(
        s,
        "PostgreSQL {} on {}. Schema: {} statement(s) from {}.{}{}",
        plan.server_version,
        plan.database,
        plan.schema.statements,
        if plan.schema.files.is_empty() {
            "no file".to_string()
        } else {
            plan.schema
                .files
                .iter()
                .map(|f| code(f))
                .collect::<Vec<_>>()
                .join(", ")
        },
        if plan.schema.skipped.is_empty() {
            String::new()
        } else {
            format!(
                " Skipped {} ownership/privilege statement(s) naming roles that do not exist here.",
                plan.schema.skipped.len()
            )
        },
        match &plan.stats {
            Some(f) => format!(" Durations estimated from table sizes in {}.", code(f)),
            None => " No table sizes given (`--stats`): no duration estimates.".into(),
        }
    );
    s.push('\n');
    for m in &plan.migrations {
        migration(&mut s, m);
    }
    s
}

fn migration(s: &mut String, m: &MigrationPlan) {
    let version = m
        .app_version
        .as_deref()
        .map(|v| format!(" (appVersion {v})"))
        .unwrap_or_default();
    let _ = writeln!(s, "### {}{version}\n\n{}\n", m.name, code(&m.file));
    for p in &m.phases {
        phase(s, p);
    }
    if let Some(targets) = &m.targets {
        s.push_str("#### Contract is gated by\n\n");
        for t in targets {
            let now: Vec<String> = t
                .workloads
                .iter()
                .map(|w| {
                    format!(
                        "{} runs {}",
                        code(&w.name),
                        w.version.as_deref().unwrap_or("no version")
                    )
                })
                .collect();
            let _ = writeln!(
                s,
                "- {} {} in {}: {}{}",
                t.kind,
                code(&t.target),
                code(&t.namespace),
                t.gate,
                if now.is_empty() {
                    String::new()
                } else {
                    format!(" (now: {})", now.join(", "))
                }
            );
        }
        s.push('\n');
    }
}

fn phase(s: &mut String, p: &PhasePlan) {
    let title = p.phase.as_str();
    let estimate = p
        .estimate
        .as_ref()
        .map(|e| format!(" — about {}", human_seconds(e.seconds)))
        .unwrap_or_default();
    let _ = writeln!(s, "#### {}{estimate}\n", capitalize(title));
    if let Some(e) = &p.error {
        let _ = writeln!(s, "**Error:** {}\n", cell(e));
    }
    if let Some(n) = &p.note {
        let _ = writeln!(s, "{}\n", n);
    }
    if p.statements.is_empty() {
        return;
    }
    s.push_str(
        "| # | Tx | Statement | Locks taken | Blocks | Rewrites / indexes | Lint | Estimate |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|\n");
    for st in &p.statements {
        row(s, st);
    }
    s.push('\n');
    details(s, p);
    holds(s, p);
}

/// Locks held across statements of one transaction: what other sessions wait on.
fn holds(s: &mut String, p: &PhasePlan) {
    let mut transactions: Vec<usize> = p.holds.iter().map(|h| h.transaction).collect();
    transactions.dedup();
    for t in transactions {
        let held: Vec<String> = p
            .holds
            .iter()
            .filter(|h| h.transaction == t)
            .map(|h| {
                let span = match (h.statements.first(), h.statements.last()) {
                    (Some(a), Some(b)) if a != b => format!(" (#{a}–#{b})"),
                    (Some(a), _) => format!(" (#{a})"),
                    _ => String::new(),
                };
                format!("{} on {}{span}", mode(&h.mode), code(&h.relation))
            })
            .collect();
        let _ = writeln!(
            s,
            "Transaction {t} holds until it commits: {}.\n",
            held.join(", ")
        );
    }
}

fn row(s: &mut String, st: &StatementPlan) {
    let locks = if !st.sampled {
        "not sampled".to_string()
    } else if st.observed.locks.is_empty() {
        "none".to_string()
    } else {
        st.observed
            .locks
            .iter()
            .map(|l| {
                let new = if l.new_relation { " (new)" } else { "" };
                format!("{} on {}{new}", mode(&l.mode), code(&l.relation))
            })
            .collect::<Vec<_>>()
            .join("<br>")
    };
    let mut work: Vec<String> = st
        .observed
        .rewrites
        .iter()
        .map(|t| format!("**rewrites** {}", code(t)))
        .collect();
    work.extend(st.observed.index_builds.iter().map(|i| {
        let verb = if i.rebuilt { "rebuilds" } else { "builds" };
        let on = i
            .table
            .as_deref()
            .map(|t| format!(" on {}", code(t)))
            .unwrap_or_default();
        format!("{verb} index {}{on}", code(&i.index))
    }));
    let lint: Vec<String> = st
        .findings
        .iter()
        .map(|f| format!("{} `{}`", f.verdict, f.rule))
        .collect();
    let estimate = st
        .estimate
        .as_ref()
        .map(|e| human_seconds(e.seconds))
        .unwrap_or_default();
    let status = if st.error.is_some() {
        " **failed**"
    } else {
        ""
    };
    let _ = writeln!(
        s,
        "| {} | {} | {}{status} | {} | {} | {} | {} | {} |",
        st.index,
        st.transaction.map(|t| t.to_string()).unwrap_or_default(),
        code(&st.sql),
        locks,
        st.blocks
            .as_deref()
            .map(|b| format!("**{b}**"))
            .unwrap_or_default(),
        work.join("<br>"),
        lint.join("<br>"),
        estimate
    );
}

/// Errors, notes, lint messages and estimate bases below the table.
fn details(s: &mut String, p: &PhasePlan) {
    let mut lines = Vec::new();
    for st in &p.statements {
        if let Some(e) = &st.error {
            lines.push(format!("- #{} failed: {}", st.index, cell(e)));
        }
        if let Some(n) = &st.note {
            lines.push(format!("- #{}: {n}", st.index));
        }
        for f in st.findings.iter().filter(|f| f.verdict != "accepted") {
            lines.push(format!(
                "- #{} {} `{}`: {}. Fix: {}",
                st.index,
                f.verdict,
                f.rule,
                cell(&f.message),
                f.fix
            ));
        }
        if let Some(e) = &st.estimate {
            lines.push(format!("- #{} estimate: {}", st.index, e.basis));
        }
    }
    if !lines.is_empty() {
        s.push_str(&lines.join("\n"));
        s.push_str("\n\n");
    }
}

/// `AccessExclusiveLock` → `ACCESS EXCLUSIVE`.
fn mode(pg: &str) -> String {
    let base = pg.strip_suffix("Lock").unwrap_or(pg);
    let mut out = String::new();
    for (i, c) in base.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// Inline code safe inside a table cell.
fn code(text: &str) -> String {
    format!("`{}`", text.replace('`', "'").replace('|', "\\|"))
}

/// Plain text safe inside a table cell or list item.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_modes_read_as_in_the_documentation() {
        assert_eq!(super::mode("AccessExclusiveLock"), "ACCESS EXCLUSIVE");
        assert_eq!(super::mode("ShareLock"), "SHARE");
        assert_eq!(
            super::mode("ShareUpdateExclusiveLock"),
            "SHARE UPDATE EXCLUSIVE"
        );
    }
}
