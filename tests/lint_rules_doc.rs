//! docs/lint-rules.md lists every lint rule; it must match the code.
//! Regenerate with `PHASEGATE_BLESS=1 cargo test --test lint_rules_doc`.

fn render() -> String {
    let mut out = String::from(
        "# Lint rules\n\nGenerated from `src/lint/rules.rs` (`PHASEGATE_BLESS=1 cargo test --test lint_rules_doc`).\n\
         Use an id in `spec.safety.allow` or `phasegate lint --allow` to override it.\n\n\
         | id | class | detects | fix |\n|---|---|---|---|\n",
    );
    for r in phasegate::lint::RULES {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            r.id,
            r.class,
            r.summary.replace('|', "\\|"),
            r.fix.replace('|', "\\|")
        ));
    }
    out
}

#[test]
fn lint_rules_doc_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/lint-rules.md");
    let want = render();
    if std::env::var_os("PHASEGATE_BLESS").is_some() {
        std::fs::write(path, &want).expect("write docs/lint-rules.md");
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        have == want,
        "docs/lint-rules.md is stale: run `PHASEGATE_BLESS=1 cargo test --test lint_rules_doc`"
    );
}
