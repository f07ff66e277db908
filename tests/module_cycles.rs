//! No import cycle among the modules of `src/controller/` and of `src/executor/`: a module
//! can be read (and moved) knowing only what it imports. Each file's non-test code is scanned
//! for `super::…` and `crate::<dir>::…` paths; a path to an item the parent module defines
//! (or re-exports) counts as an edge to the file that defines it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The code of a file before its test module (tests may reach anywhere).
fn non_test_code(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests")
        .map_or(text, |i| &text[..i])
}

/// Identifiers named right after `prefix` in `code`, brace groups included:
/// `super::{a, b::{c}}` names `a` and `b`.
fn named_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.push(ident(&group[start..j]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(ident(&group[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident(rest));
        }
    }
    out.into_iter().filter(|s| !s.is_empty()).collect()
}

fn ident(s: &str) -> &str {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The module (file stem) of `dir` that defines the item `name`, if any.
fn defined_in<'a>(files: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    let kinds = [
        "struct", "enum", "fn", "async fn", "type", "const", "trait", "static",
    ];
    files.iter().find_map(|(module, code)| {
        let defines = kinds.iter().any(|k| {
            [
                format!("pub {k} {name}"),
                format!("pub(crate) {k} {name}"),
                format!("pub(super) {k} {name}"),
            ]
            .iter()
            .any(|d| {
                code.match_indices(d.as_str()).any(|(i, _)| {
                    let after = code[i + d.len()..].chars().next();
                    !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
                })
            })
        });
        defines.then_some(module.as_str())
    })
}

/// A file's non-test code without comments (doc links import nothing).
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read");
    non_test_code(&text)
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The import graph of the modules of `src/<dir>/` (`mod` is `mod.rs`).
fn graph(dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    let mut files = BTreeMap::new();
    // Modules that are directories (`jobs/`): one node; their `super::` is their own.
    let mut dirs = BTreeSet::new();
    for entry in std::fs::read_dir(&path).expect("read dir") {
        let p = entry.expect("entry").path();
        let stem = p.file_stem().expect("stem").to_string_lossy().into_owned();
        // Test-only helpers are not part of the build.
        if stem == "test_support" {
            continue;
        }
        if p.is_dir() {
            let mut code = String::new();
            for f in std::fs::read_dir(&p).expect("read dir") {
                let f = f.expect("entry").path();
                if f.extension().is_some_and(|e| e == "rs") && !f.ends_with("tests.rs") {
                    code.push_str(&code_of(&f));
                }
            }
            dirs.insert(stem.clone());
            files.insert(stem, code);
        } else if p.extension().is_some_and(|e| e == "rs") {
            files.insert(stem, code_of(&p));
        }
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in &files {
        let mut names = named_after(code, &format!("crate::{dir}::"));
        if module == "mod" {
            // The parent names its children directly: `use runner::Runner`.
            for child in files.keys().filter(|c| *c != "mod") {
                if named_after(code, &format!("{child}::"))
                    .iter()
                    .any(|_| true)
                {
                    names.push(child);
                }
            }
        } else if !dirs.contains(module) {
            names.extend(named_after(code, "super::"));
        }
        for name in names {
            let target = if files.contains_key(name) && name != "mod" {
                Some(name)
            } else {
                defined_in(&files, name)
            };
            if let Some(t) = target.filter(|t| t != module) {
                edges
                    .entry(module.clone())
                    .or_default()
                    .insert(t.to_string());
            }
        }
        edges.entry(module.clone()).or_default();
    }
    edges
}

/// A cycle of the graph, if there is one (depth-first search).
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        n: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(g, m, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(g, n, &mut Vec::new(), &mut done))
}

#[test]
fn the_scanner_sees_imports() {
    let code = "use super::{connect::{self, X}, error::ApplyError};\nuse super::stop::Stop;\nfn f() { crate::executor::waits::Waits::new(); }";
    assert_eq!(named_after(code, "super::"), ["connect", "error", "stop"]);
    assert_eq!(named_after(code, "crate::executor::"), ["waits"]);
    assert!(cycle(&BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["a".to_string()])),
    ]))
    .is_some());
}

#[test]
fn no_import_cycle_among_the_controllers_modules() {
    let g = graph("controller");
    assert!(
        g["workloads"].contains("cache"),
        "the scan finds edges: {g:?}"
    );
    assert_eq!(cycle(&g), None, "{g:#?}");
}

#[test]
fn no_import_cycle_among_the_executors_modules() {
    let g = graph("executor");
    assert!(
        g["runner"].contains("session"),
        "the scan finds edges: {g:?}"
    );
    assert_eq!(cycle(&g), None, "{g:#?}");
}

#[test]
fn no_import_cycle_among_the_executor_job_modules() {
    let g = graph("controller/jobs");
    assert!(
        g["observe"].contains("build"),
        "the scan finds edges: {g:?}"
    );
    assert_eq!(cycle(&g), None, "{g:#?}");
}
