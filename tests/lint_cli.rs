//! `phasegate lint`, run as the real binary on the sample files in `examples/lint/`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/lint")
        .join(name)
        .display()
        .to_string()
}

fn lint(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .arg("lint")
        .args(args)
        .output()
        .expect("run phasegate lint")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> Vec<serde_json::Value> {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

#[test]
fn safe_expand_exits_zero() {
    let o = lint(&["--phase", "expand", &example("expand-safe.sql")]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("OK: 1 file(s), 8 statement(s) for expand: 0 refused"),
        "{out}"
    );
}

#[test]
fn drop_in_expand_is_refused_with_line_rule_and_fix() {
    let file = example("expand-unsafe.sql");
    let o = lint(&["--phase", "expand", &file]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains(&format!(
            "{file}:4: refused [drop-column] ALTER TABLE users DROP COLUMN legacy_flag — drops column users.legacy_flag"
        )),
        "{out}"
    );
    assert!(
        out.contains("    fix: Move the DROP COLUMN to the contract phase"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{file}:5: refused [rename-column]")),
        "{out}"
    );
    // A multi-line statement is shown on one line, at the line where it starts.
    assert!(
        out.contains(&format!(
            "{file}:6: refused [change-column-type] ALTER TABLE orders ALTER COLUMN total TYPE numeric(12, 2) —"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{file}:8: warning [create-index-non-concurrently]"
        )),
        "{out}"
    );
    assert!(
        out.lines()
            .last()
            .unwrap()
            .starts_with("REFUSED: 1 file(s), 5 statement(s) for expand: 3 refused"),
        "{out}"
    );
}

#[test]
fn warnings_alone_exit_zero_and_strict_refuses_them() {
    let file = example("expand-warnings.sql");
    let o = lint(&["--phase", "expand", &file]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains(&format!(
        "{file}:3: warning [create-index-non-concurrently]"
    )));

    let o = lint(&["--phase", "expand", "--strict", &file]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains(&format!(
        "{file}:3: refused [create-index-non-concurrently]"
    )));

    let o = lint(&[
        "--phase",
        "expand",
        "--strict",
        "--allow",
        "create-index-non-concurrently",
        "--allow",
        "add-constraint-without-not-valid",
        &file,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains(&format!(
        "{file}:3: overridden [create-index-non-concurrently]"
    )));
}

#[test]
fn contract_accepts_drops() {
    let o = lint(&["--phase", "contract", &example("contract.sql")]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("accepted [drop-column] ALTER TABLE users DROP COLUMN legacy_flag"));

    // The same file is refused as expand.
    let o = lint(&["--phase", "expand", &example("contract.sql")]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn json_lists_findings_with_file_and_verdict() {
    let unsafe_sql = example("expand-unsafe.sql");
    let safe_sql = example("expand-safe.sql");
    let o = lint(&[
        "--phase",
        "expand",
        "--format",
        "json",
        &safe_sql,
        &unsafe_sql,
    ]);
    assert_eq!(o.status.code(), Some(1));
    let items = json(&o);
    assert_eq!(items.len(), 5, "{items:#?}");
    let first = &items[0];
    assert_eq!(first["file"], unsafe_sql.as_str());
    assert_eq!(first["verdict"], "refused");
    assert_eq!(first["rule"], "drop-column");
    assert_eq!(first["class"], "backward-incompatible");
    assert_eq!(first["line"], 4);
    assert_eq!(first["statement"], 2);
    assert_eq!(first["sql"], "ALTER TABLE users DROP COLUMN legacy_flag");
    assert!(first["fix"].as_str().unwrap().contains("contract"));
    let verdicts: Vec<&str> = items
        .iter()
        .map(|i| i["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        ["refused", "refused", "refused", "warning", "warning"]
    );

    let o = lint(&["--phase", "expand", "--format", "json", &safe_sql]);
    assert_eq!(o.status.code(), Some(0));
    assert!(json(&o).is_empty());
}

#[test]
fn unparseable_sql_is_refused_with_position() {
    let file = example("broken.sql");
    let o = lint(&["--phase", "expand", &file]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains(&format!(
            "{file}:3:5: refused [syntax-error] syntax error at or near \"DROPP\""
        )),
        "{}",
        stdout(&o)
    );
    let o = lint(&["--phase", "contract", "--format", "json", &file]);
    assert_eq!(o.status.code(), Some(1));
    let items = json(&o);
    assert_eq!(items[0]["rule"], "syntax-error");
    assert_eq!(items[0]["line"], 3);
    assert_eq!(items[0]["column"], 5);
}

#[test]
fn reads_stdin() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_phasegate"))
        .args(["lint", "--phase", "expand", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"ALTER TABLE users ADD COLUMN a int;\nTRUNCATE sessions;\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("<stdin>:2: refused [truncate] TRUNCATE sessions"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn usage_and_io_errors_exit_two() {
    let o = lint(&["--phase", "expand", "/nonexistent/phasegate.sql"]);
    assert_eq!(o.status.code(), Some(2));
    let o = lint(&[
        "--phase",
        "expand",
        "--allow",
        "no-such-rule",
        &example("expand-safe.sql"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown rule id"));
    let o = lint(&["--phase", "sideways", &example("expand-safe.sql")]);
    assert_eq!(o.status.code(), Some(2));
    let o = lint(&["--phase", "expand"]);
    assert_eq!(o.status.code(), Some(2));
}
