//! The operator's log lines as a log collector sees them: stderr is a pipe, not a terminal,
//! so no ANSI colour codes; `--log-format json` gives one JSON object per line.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_phasegate");

/// `phasegate controller` with a policy file that does not exist: it logs one error and
/// exits before it looks for a cluster. stderr is captured through a pipe.
fn controller_stderr(format: &str) -> String {
    let out = Command::new(BIN)
        .args([
            "--log-format",
            format,
            "controller",
            "--job-policy",
            "/nonexistent/phasegate-job-policy.yaml",
        ])
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .output()
        .expect("run phasegate");
    assert!(!out.status.success(), "a missing policy file stops it");
    String::from_utf8(out.stderr).expect("utf-8 stderr")
}

#[test]
fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let err = controller_stderr("text");
    assert!(err.contains("cannot load the Job policy"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escape in piped logs: {err:?}"
    );
}

#[test]
fn json_logs_are_one_object_per_line_without_colour_codes() {
    let err = controller_stderr("json");
    assert!(!err.contains('\u{1b}'), "ANSI escape in JSON logs: {err:?}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log line");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(err.contains("cannot load the Job policy"), "{err}");
}
