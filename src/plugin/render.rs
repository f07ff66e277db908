//! `phasegate status`: a readable summary of one migration, rendered from the object alone
//! (pure, no I/O), so what the user sees is exactly what the status says.

use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{Approval, DatabaseMigration, Phase, PhaseStatus, ANNOTATION_APPROVE};

/// How to render: with ANSI colours (a terminal) or plain text (a pipe, a file, `NO_COLOR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Style {
    pub color: bool,
}

#[derive(Clone, Copy)]
enum Tone {
    Good,
    Warn,
    Bad,
    Dim,
    Bold,
}

impl Style {
    fn paint(self, tone: Tone, text: &str) -> String {
        if !self.color {
            return text.to_string();
        }
        let code = match tone {
            Tone::Good => "32",
            Tone::Warn => "33",
            Tone::Bad => "31",
            Tone::Dim => "2",
            Tone::Bold => "1",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

fn phase_tone(p: Phase) -> Tone {
    match p {
        Phase::Succeeded => Tone::Good,
        Phase::Failed => Tone::Bad,
        _ => Tone::Warn,
    }
}

/// Whether a condition's status is the healthy one: `Stalled` and `Reconciling` are
/// abnormal-true (kstatus), the others normal-true. A failed migration's `Ready` is shown as
/// bad whatever its status: after expand it stays True (for GitOps tools) and carries the
/// failure.
fn condition_tone(type_: &str, status: &str, failed: bool) -> Tone {
    if failed && type_ == "Ready" {
        return Tone::Bad;
    }
    let abnormal_true = matches!(type_, "Stalled" | "Reconciling");
    match (abnormal_true, status) {
        (false, "True") | (true, "False") => Tone::Good,
        (true, "True") if type_ == "Stalled" => Tone::Bad,
        _ => Tone::Warn,
    }
}

fn time(t: &Option<Time>) -> Option<String> {
    t.as_ref()
        .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Pad `text` to `width` display columns, then paint it (so colour never breaks alignment).
fn cell(style: Style, tone: Tone, text: &str, width: usize) -> String {
    let pad = width.saturating_sub(text.chars().count());
    format!("{}{}", style.paint(tone, text), " ".repeat(pad))
}

/// Indent every line after the first of a multi-line message.
fn indented(text: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    text.trim()
        .lines()
        .collect::<Vec<_>>()
        .join(&format!("\n{pad}"))
}

/// Whether `phasegate.dev/approve: "true"` is set.
pub fn is_approved(dbm: &DatabaseMigration) -> bool {
    dbm.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_APPROVE))
        .is_some_and(|v| v == "true")
}

/// The `phasegate status` text of a migration.
/// The migrations of a namespace, one line each: name, phase, version, targets ready, and
/// the reason of the `Ready` condition (why it is not ready, or what it waits for).
pub fn render_list(items: &[DatabaseMigration], ns: &str) -> String {
    if items.is_empty() {
        return format!("No DatabaseMigrations in namespace {ns}.\n");
    }
    let rows: Vec<[String; 5]> = items
        .iter()
        .map(|m| {
            let status = m.status.clone().unwrap_or_default();
            let reason = crate::planner::conditions::reason_of(&status.conditions, "Ready")
                .map(str::to_owned)
                .or_else(|| {
                    status
                        .conditions
                        .iter()
                        .find(|c| c.type_ == "Ready")
                        .map(|c| c.reason.clone())
                })
                .unwrap_or_default();
            [
                m.metadata.name.clone().unwrap_or_default(),
                status
                    .phase
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| "(not observed yet)".into()),
                m.spec.app_version.clone(),
                status.targets_ready.unwrap_or_default(),
                reason,
            ]
        })
        .collect();
    let header = ["NAME", "PHASE", "VERSION", "TARGETS", "REASON"].map(String::from);
    let mut widths = [0usize; 5];
    for r in std::iter::once(&header).chain(rows.iter()) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

pub fn render_status(dbm: &DatabaseMigration, style: Style) -> String {
    let mut out = String::new();
    let name = dbm.metadata.name.clone().unwrap_or_default();
    let ns = dbm.metadata.namespace.clone().unwrap_or_default();
    let spec = &dbm.spec;
    let status = dbm.status.clone().unwrap_or_default();
    let label = |s: &str| style.paint(Tone::Bold, &format!("{s:<13}"));

    let _ = writeln!(
        out,
        "{}{}",
        label("Migration:"),
        format_args!("{ns}/{name}")
    );
    let phase = match status.phase {
        Some(p) => style.paint(phase_tone(p), p.as_str()),
        None => style.paint(Tone::Dim, "(not observed by the operator yet)"),
    };
    let _ = writeln!(out, "{}{phase}", label("Phase:"));
    let (generation, observed) = (dbm.metadata.generation, status.observed_generation);
    if status.phase.is_some() && generation.is_some() && observed != generation {
        let note = format!(
            "status is stale: it reflects generation {}, the spec is at generation {}",
            observed
                .map(|g| g.to_string())
                .unwrap_or_else(|| "none".into()),
            generation.unwrap_or_default()
        );
        let _ = writeln!(out, "{}{}", label(""), style.paint(Tone::Warn, &note));
    }
    let _ = writeln!(out, "{}{}", label("App version:"), spec.app_version);
    let db = &spec.database.url_secret_ref;
    let _ = writeln!(
        out,
        "{}Secret {}, key {}",
        label("Database:"),
        db.name,
        db.key
    );
    if let Some(pooler) = &spec.database.pooler {
        let admin = match &pooler.admin_url_secret_ref {
            Some(r) => format!("admin console from Secret {}, key {}", r.name, r.key),
            None => "admin console: the database URL on database pgbouncer".to_string(),
        };
        let _ = writeln!(
            out,
            "{}PgBouncer (contract reads SHOW CLIENTS); {admin}",
            label("Pooler:")
        );
    }

    let mut gates = Vec::new();
    match spec.contract.approval {
        Approval::Automatic => gates.push("approval Automatic".to_string()),
        Approval::Manual if is_approved(dbm) => {
            gates.push("approval Manual (approved)".to_string())
        }
        Approval::Manual => gates.push("approval Manual (not approved yet)".to_string()),
    }
    if let Some(d) = &spec.contract.delay {
        gates.push(format!("delay {d}"));
    }
    if let Some(t) = &spec.rollout.timeout {
        gates.push(format!("rollout timeout {t}"));
    }
    let _ = writeln!(out, "{}{}", label("Gates:"), gates.join(", "));
    let mut rollout = Vec::new();
    if let Some(t) = time(&status.rollout_started_at) {
        rollout.push(format!("waiting since {t}"));
    }
    if let Some(t) = time(&status.rollout_completed_at) {
        rollout.push(format!("complete since {t}"));
    }
    if let Some(t) = time(&status.rollout_timed_out_at) {
        rollout.push(style.paint(Tone::Bad, &format!("timed out at {t}")));
    }
    if !rollout.is_empty() {
        let _ = writeln!(out, "{}{}", label("Rollout:"), rollout.join(", "));
    }

    // Targets.
    let ready = status.targets_ready.clone().unwrap_or_else(|| {
        format!(
            "{}/{}",
            status.targets.iter().filter(|t| t.complete).count(),
            status.targets.len()
        )
    });
    if status.targets.is_empty() {
        let _ = writeln!(out, "\n{}", style.paint(Tone::Bold, "Targets"));
    } else {
        let _ = writeln!(
            out,
            "\n{} ({ready} ready)",
            style.paint(Tone::Bold, "Targets")
        );
    }
    if status.targets.is_empty() {
        for t in &spec.rollout.targets {
            let what = match (&t.name, &t.selector) {
                (Some(n), _) => format!("{}/{n}", t.kind),
                (None, Some(sel)) => format!("{} selector {}", t.kind, selector_text(sel)),
                (None, None) => t.kind.to_string(),
            };
            let _ = writeln!(
                out,
                "  {what}  {}",
                style.paint(Tone::Dim, "(not observed yet)")
            );
        }
    }
    let width = status
        .targets
        .iter()
        .map(|t| t.kind.len() + 1 + t.name.len())
        .max()
        .unwrap_or(0);
    for t in &status.targets {
        let id = format!("{}/{}", t.kind, t.name);
        let (tone, state) = if t.complete {
            (Tone::Good, "ready")
        } else {
            (Tone::Warn, "waiting")
        };
        let _ = writeln!(
            out,
            "  {}  {}  version {}  replicas {}  updated {}  available {}  old pods {}",
            cell(style, Tone::Bold, &id, width),
            cell(style, tone, state, 7),
            t.version.as_deref().unwrap_or("(none)"),
            t.replicas,
            t.updated_replicas,
            t.available_replicas,
            t.old_pods
        );
        if let Some(m) = t.message.as_deref().filter(|m| !m.trim().is_empty()) {
            let _ = writeln!(out, "    why: {}", indented(m, 9));
        }
    }

    // Conditions.
    let _ = writeln!(out, "\n{}", style.paint(Tone::Bold, "Conditions"));
    if status.conditions.is_empty() {
        let _ = writeln!(out, "  {}", style.paint(Tone::Dim, "(none yet)"));
    } else {
        let tw = status
            .conditions
            .iter()
            .map(|c| c.type_.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let rw = status
            .conditions
            .iter()
            .map(|c| c.reason.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let _ = writeln!(
            out,
            "  {:<tw$}  {:<6}  {:<rw$}  MESSAGE",
            "TYPE", "STATUS", "REASON"
        );
        for c in &status.conditions {
            let _ = writeln!(
                out,
                "  {:<tw$}  {}  {:<rw$}  {}",
                c.type_,
                cell(
                    style,
                    condition_tone(&c.type_, &c.status, status.phase == Some(Phase::Failed)),
                    &c.status,
                    6
                ),
                c.reason,
                indented(&c.message, tw + rw + 14)
            );
        }
    }

    // Phases.
    let _ = writeln!(out, "\n{}", style.paint(Tone::Bold, "Expand"));
    render_phase(&mut out, style, status.expand.as_ref(), LEDGER);
    if dbm.spec.backfill.is_some() {
        let _ = writeln!(out, "\n{}", style.paint(Tone::Bold, "Backfill"));
        let b = status.backfill.clone().unwrap_or_default();
        render_phase(&mut out, style, Some(&b.run), "the Job's log");
        if let Some(p) = &b.progress {
            // A fleet's progress is read with its counts (status keeps them beside it).
            let mut p = p.clone();
            p.tenants = p.tenants.or_else(|| b.run.tenants.clone());
            let _ = writeln!(out, "  progress:  {}", indented(&p.summary(), 13));
        }
    }
    let _ = writeln!(out, "\n{}", style.paint(Tone::Bold, "Contract"));
    render_phase(&mut out, style, status.contract.as_ref(), LEDGER);

    if let Some(hint) = next_step(dbm) {
        let _ = writeln!(out, "\n{} {hint}", style.paint(Tone::Bold, "Next:"));
    }
    // No trailing blanks (empty condition messages, padding).
    out.lines()
        .map(str::trim_end)
        .fold(String::new(), |mut acc, l| {
            acc.push_str(l);
            acc.push('\n');
            acc
        })
}

/// Where a phase's per-tenant record is kept (the status keeps counts and the first failures).
const LEDGER: &str = "the ledger";

fn render_phase(out: &mut String, style: Style, phase: Option<&PhaseStatus>, record: &str) {
    let Some(p) = phase.filter(|p| p.attempts > 0 || p.job_name.is_some()) else {
        let _ = writeln!(out, "  {}", style.paint(Tone::Dim, "not started"));
        return;
    };
    let state = if p.succeeded {
        style.paint(Tone::Good, "applied")
    } else if p.finished_at.is_some() {
        style.paint(Tone::Bad, "failed")
    } else {
        style.paint(Tone::Warn, "running")
    };
    let _ = writeln!(out, "  attempts:  {}  ({state})", p.attempts);
    if let Some(j) = &p.job_name {
        let _ = writeln!(out, "  job:       {j}");
    }
    if let Some(t) = time(&p.started_at) {
        let _ = writeln!(out, "  started:   {t}");
    }
    if let Some(t) = time(&p.finished_at) {
        let _ = writeln!(out, "  finished:  {t}");
    }
    if let Some(m) = p.message.as_deref().filter(|m| !m.trim().is_empty()) {
        let _ = writeln!(out, "  report:    {}", indented(m, 13));
    }
    if let Some(t) = &p.tenants {
        render_tenants(out, style, t, record);
    }
}

/// Counts by state, then each failed tenant the status keeps, one per line.
fn render_tenants(out: &mut String, style: Style, t: &crate::api::TenantsStatus, record: &str) {
    // A running backfill's counts so far: the rest run now, or have not started yet.
    let running = t.total.saturating_sub(t.applied + t.failed + t.not_run);
    let state = if running > 0 {
        format!("{running} running, {} not started", t.not_run)
    } else {
        format!("{} not run", t.not_run)
    };
    let _ = writeln!(
        out,
        "  tenants:   {} applied, {} failed, {state} (of {})",
        t.applied, t.failed, t.total
    );
    if let Some(h) = &t.halted {
        let _ = writeln!(out, "  halted:    {}", style.paint(Tone::Bad, h));
    }
    for f in &t.failures {
        let _ = writeln!(
            out,
            "  failed:    {}  {}",
            style.paint(Tone::Bad, &f.tenant),
            indented(&f.error, 13)
        );
    }
    if (t.failures.len() as u32) < t.failed {
        let _ = writeln!(
            out,
            "             … and {} more ({record} lists every one)",
            t.failed - t.failures.len() as u32
        );
    }
}

fn selector_text(sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        parts.push(format!(
            "{} {} ({})",
            e.key,
            e.operator.to_lowercase(),
            e.values.clone().unwrap_or_default().join(",")
        ));
    }
    parts.join(",")
}

/// What the user can do next, when it is up to them.
fn next_step(dbm: &DatabaseMigration) -> Option<String> {
    let name = dbm.metadata.name.clone().unwrap_or_default();
    let ns = dbm.metadata.namespace.clone().unwrap_or_default();
    match dbm.status.as_ref()?.phase? {
        Phase::AwaitingApproval if !is_approved(dbm) => Some(format!(
            "approve contract: phasegate approve {name} -n {ns}"
        )),
        Phase::Failed if super::refused_before_running(dbm.status.as_ref()?) => {
            Some(super::FIX_IN_PLACE.to_string())
        }
        Phase::Failed => Some(format!(
            "fix the cause above, then: phasegate retry {name} -n {ns}"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DatabaseMigrationStatus, TargetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn migration(approval: &str, status: Option<DatabaseMigrationStatus>) -> DatabaseMigration {
        let mut m: DatabaseMigration = serde_json::from_value(serde_json::json!({
            "apiVersion": "phasegate.dev/v1alpha1",
            "kind": "DatabaseMigration",
            "metadata": {"name": "users-email-verified", "namespace": "shop", "generation": 1},
            "spec": {
                "appVersion": "2.0.0",
                "database": {"urlSecretRef": {"name": "shop-db", "key": "url"}},
                "expand": {"sql": "ALTER TABLE users ADD COLUMN email_verified boolean;"},
                "contract": {"sql": "ALTER TABLE users DROP COLUMN legacy_flag;", "approval": approval, "delay": "5m"},
                "rollout": {"targets": [{"kind": "Deployment", "name": "shop-api"}], "timeout": "1h"}
            }
        }))
        .expect("migration");
        m.status = status;
        m
    }

    fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        serde_json::from_value(serde_json::json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2025-01-01T00:00:00Z"
        }))
        .expect("condition")
    }

    fn waiting() -> DatabaseMigrationStatus {
        DatabaseMigrationStatus {
            phase: Some(Phase::AwaitingRollout),
            observed_generation: Some(1),
            conditions: vec![
                cond("Ready", "True", "ExpandApplied", "expand is applied"),
                cond(
                    "RolloutComplete",
                    "False",
                    "AwaitingRollout",
                    "Deployment/shop-api runs 1.0.0, waiting for 2.0.0",
                ),
                cond("Stalled", "False", "Progressing", ""),
            ],
            targets: vec![TargetStatus {
                kind: "Deployment".into(),
                name: "shop-api".into(),
                version: Some("1.0.0".into()),
                complete: false,
                replicas: 3,
                updated_replicas: 3,
                available_replicas: 3,
                old_pods: 3,
                message: Some("template version 1.0.0 is older than 2.0.0".into()),
                not_found: false,
            }],
            targets_ready: Some("0/1".into()),
            expand: Some(PhaseStatus {
                attempts: 1,
                job_name: Some("users-email-verified-expand-1".into()),
                succeeded: true,
                finished_at: Some(Time("2025-01-01T00:00:05Z".parse().expect("time"))),
                message: Some("applied 1 statement in 12ms".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn waiting_migration_shows_phase_targets_conditions_and_jobs() {
        let out = render_status(&migration("Automatic", Some(waiting())), Style::default());
        for want in [
            "Migration:   shop/users-email-verified",
            "Phase:       AwaitingRollout",
            "App version: 2.0.0",
            "Database:    Secret shop-db, key url",
            "Gates:       approval Automatic, delay 5m, rollout timeout 1h",
            "Targets (0/1 ready)",
            "Deployment/shop-api  waiting  version 1.0.0  replicas 3  updated 3  available 3  old pods 3",
            "why: template version 1.0.0 is older than 2.0.0",
            "RolloutComplete  False   AwaitingRollout  Deployment/shop-api runs 1.0.0, waiting for 2.0.0",
            "job:       users-email-verified-expand-1",
            "report:    applied 1 statement in 12ms",
            "finished:  2025-01-01T00:00:05Z",
            "attempts:  1  (applied)",
        ] {
            assert!(out.contains(want), "missing {want:?} in:\n{out}");
        }
        assert!(!out.contains("Pooler:"), "{out}");
        let mut pooled = migration("Automatic", Some(waiting()));
        pooled.spec.database.pooler = Some(crate::api::PoolerSpec::default());
        let pooled = render_status(&pooled, Style::default());
        assert!(
            pooled.contains("Pooler:      PgBouncer (contract reads SHOW CLIENTS); admin console: the database URL on database pgbouncer"),
            "{pooled}"
        );
        let contract = out.split("Contract\n").nth(1).expect("contract section");
        assert!(contract.contains("not started"), "{out}");
        assert!(
            !out.contains("Next:"),
            "nothing for the user to do while waiting: {out}"
        );
    }

    #[test]
    fn plain_style_has_no_escape_codes_and_colour_style_has_them() {
        let m = migration("Automatic", Some(waiting()));
        assert!(!render_status(&m, Style { color: false }).contains('\x1b'));
        let coloured = render_status(&m, Style { color: true });
        assert!(
            coloured.contains("\x1b[33mAwaitingRollout\x1b[0m"),
            "{coloured}"
        );
        // Colour never changes the text once the escape codes are removed.
        let stripped = coloured
            .replace("\x1b[0m", "")
            .replace("\x1b[1m", "")
            .replace("\x1b[2m", "");
        let stripped = stripped
            .replace("\x1b[31m", "")
            .replace("\x1b[32m", "")
            .replace("\x1b[33m", "");
        assert_eq!(stripped, render_status(&m, Style { color: false }));
    }

    #[test]
    fn awaiting_approval_says_how_to_approve_until_approved() {
        let mut st = waiting();
        st.phase = Some(Phase::AwaitingApproval);
        let mut m = migration("Manual", Some(st));
        let out = render_status(&m, Style::default());
        assert!(out.contains("approval Manual (not approved yet)"), "{out}");
        assert!(
            out.contains("Next: approve contract: phasegate approve users-email-verified -n shop"),
            "{out}"
        );
        m.metadata.annotations =
            Some([(ANNOTATION_APPROVE.to_string(), "true".to_string())].into());
        let out = render_status(&m, Style::default());
        assert!(
            out.contains("approval Manual (approved)") && !out.contains("Next:"),
            "{out}"
        );
    }

    #[test]
    fn list_shows_one_line_per_migration() {
        let st = DatabaseMigrationStatus {
            phase: Some(Phase::AwaitingRollout),
            targets_ready: Some("0/1".into()),
            conditions: vec![cond("Ready", "True", "AwaitingRollout", "waiting")],
            ..Default::default()
        };
        let out = render_list(
            &[
                migration("Automatic", Some(st)),
                migration("Automatic", None),
            ],
            "shop",
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("NAME"), "{out}");
        assert!(
            lines[1].contains("AwaitingRollout") && lines[1].contains("0/1"),
            "{out}"
        );
        assert!(lines[2].contains("(not observed yet)"), "{out}");
        assert_eq!(
            render_list(&[], "shop"),
            "No DatabaseMigrations in namespace shop.\n"
        );
    }

    #[test]
    fn refused_migration_says_fix_in_place_not_retry() {
        let st = DatabaseMigrationStatus {
            phase: Some(Phase::Failed),
            observed_generation: Some(1),
            conditions: vec![cond(
                "Stalled",
                "True",
                "SqlRefused",
                "spec.expand.sql refused before anything ran",
            )],
            ..Default::default()
        };
        let out = render_status(&migration("Automatic", Some(st)), Style::default());
        assert!(out.contains("Next: Fix the spec in place"), "{out}");
        assert!(!out.contains("phasegate retry"), "{out}");
    }

    #[test]
    fn a_fleet_migration_lists_its_failing_tenants() {
        let st = DatabaseMigrationStatus {
            phase: Some(Phase::Failed),
            expand: Some(PhaseStatus {
                attempts: 1,
                finished_at: Some(Time("2025-01-01T00:00:05Z".parse().expect("time"))),
                tenants: Some(crate::api::TenantsStatus {
                    total: 50,
                    applied: 0,
                    failed: 1,
                    not_run: 49,
                    halted: Some("canary tenant tenant_03 failed".into()),
                    failures: vec![crate::api::TenantFailure {
                        tenant: "tenant_03".into(),
                        error: "failed: ERROR 42701: column exists".into(),
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = render_status(&migration("Automatic", Some(st)), Style::default());
        assert!(
            out.contains("tenants:   0 applied, 1 failed, 49 not run (of 50)"),
            "{out}"
        );
        assert!(
            out.contains("halted:    canary tenant tenant_03 failed"),
            "{out}"
        );
        assert!(
            out.contains("failed:    tenant_03  failed: ERROR 42701: column exists"),
            "{out}"
        );
    }

    #[test]
    fn a_running_fleet_backfill_shows_its_counts_so_far_and_its_progress() {
        let mut m = migration("Automatic", None);
        m.spec.backfill = Some(
            serde_json::from_value(serde_json::json!({
                "table": "users", "key": "id",
                "sql": "UPDATE users SET a = 1 WHERE id > $1 AND id <= $2"
            }))
            .expect("backfill"),
        );
        let failures: Vec<crate::api::TenantFailure> = (0..10)
            .map(|i| crate::api::TenantFailure {
                tenant: format!("tenant_{i:02}"),
                error: "failed: ERROR 42703: column \"a\" does not exist".into(),
            })
            .collect();
        m.status = Some(DatabaseMigrationStatus {
            phase: Some(Phase::Backfilling),
            backfill: Some(crate::api::BackfillStatus {
                run: PhaseStatus {
                    attempts: 1,
                    job_name: Some("m-backfill-1".into()),
                    tenants: Some(crate::api::TenantsStatus {
                        total: 50,
                        applied: 30,
                        failed: 12,
                        not_run: 4,
                        failures,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                progress: Some(crate::api::BackfillProgress {
                    rows_done: 1200,
                    estimated_rows: 2000,
                    key_range_done_permille: 640,
                    rows_per_second: 300,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let out = render_status(&m, Style::default());
        assert!(
            out.contains("tenants:   30 applied, 12 failed, 4 running, 4 not started (of 50)"),
            "{out}"
        );
        assert!(
            out.contains("… and 2 more (the Job's log lists every one)"),
            "{out}"
        );
        assert!(
            out.contains("backfilled 30 of 50 tenants (4 running, 12 failed; 64.0% of the work)"),
            "{out}"
        );
    }

    #[test]
    fn failed_migration_shows_the_error_and_the_retry_hint() {
        let st = DatabaseMigrationStatus {
            phase: Some(Phase::Failed),
            observed_generation: Some(1),
            conditions: vec![cond(
                "Stalled",
                "True",
                "ExpandFailed",
                "relation \"orders\" does not exist (SQLSTATE 42P01)",
            )],
            expand: Some(PhaseStatus {
                attempts: 2,
                job_name: Some("x-expand-2".into()),
                finished_at: Some(Time("2025-01-01T00:00:05Z".parse().expect("time"))),
                message: Some("line one\nline two".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = render_status(&migration("Automatic", Some(st)), Style::default());
        assert!(out.contains("Phase:       Failed"), "{out}");
        assert!(out.contains("Stalled  True    ExpandFailed  relation \"orders\" does not exist (SQLSTATE 42P01)"), "{out}");
        assert!(out.contains("attempts:  2  (failed)"), "{out}");
        assert!(
            out.contains("report:    line one\n             line two"),
            "multi-line reports stay indented: {out}"
        );
        assert!(
            out.contains(
                "Next: fix the cause above, then: phasegate retry users-email-verified -n shop"
            ),
            "{out}"
        );
        let coloured = render_status(
            &migration(
                "Automatic",
                Some(DatabaseMigrationStatus {
                    phase: Some(Phase::Failed),
                    ..Default::default()
                }),
            ),
            Style { color: true },
        );
        assert!(coloured.contains("\x1b[31mFailed\x1b[0m"), "{coloured}");
    }

    #[test]
    fn unobserved_and_stale_status_are_called_out() {
        let out = render_status(&migration("Automatic", None), Style::default());
        assert!(out.contains("(not observed by the operator yet)"), "{out}");
        assert!(
            out.contains("Deployment/shop-api  (not observed yet)"),
            "spec targets listed: {out}"
        );
        assert!(
            out.contains("(none yet)") && out.contains("not started"),
            "{out}"
        );
        assert!(
            out.contains("\nTargets\n") && !out.contains("ready)"),
            "no ready count before observation: {out}"
        );
        assert!(
            out.lines().all(|l| l == l.trim_end()),
            "no trailing blanks: {out:?}"
        );
        let mut m = migration("Automatic", Some(waiting()));
        m.metadata.generation = Some(2);
        let out = render_status(&m, Style::default());
        assert!(
            out.contains("status is stale: it reflects generation 1, the spec is at generation 2"),
            "{out}"
        );
    }

    #[test]
    fn condition_tones_follow_kstatus_polarity() {
        assert!(matches!(condition_tone("Ready", "True", false), Tone::Good));
        assert!(matches!(
            condition_tone("Stalled", "False", false),
            Tone::Good
        ));
        assert!(matches!(condition_tone("Stalled", "True", true), Tone::Bad));
        assert!(matches!(
            condition_tone("Reconciling", "True", false),
            Tone::Warn
        ));
        assert!(matches!(
            condition_tone("Contracted", "False", false),
            Tone::Warn
        ));
        // Failed after expand: Ready stays True for GitOps tools but carries the failure.
        assert!(matches!(condition_tone("Ready", "True", true), Tone::Bad));
        assert!(matches!(
            condition_tone("Stalled", "False", true),
            Tone::Good
        ));
    }
}
