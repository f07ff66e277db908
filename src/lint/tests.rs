use super::*;

/// Rules reported for one statement (linted on its own).
fn rules_of(sql: &str) -> Vec<&'static str> {
    lint(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|f| f.rule)
        .collect()
}

/// The worst class of a statement: backward-incompatible > lock-dangerous > safe.
fn class_of(sql: &str) -> Class {
    lint(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|f| f.class)
        .min()
        .unwrap_or(Class::Safe)
}

use Class::{BackwardIncompatible as B, LockDangerous as L, Safe as S};

#[test]
fn statement_table() {
    let cases: &[(&str, Class, &[&str])] = &[
        // backward-incompatible
        ("ALTER TABLE users DROP COLUMN legacy_flag", B, &["drop-column"]),
        ("alter table shop.users drop legacy_flag cascade", B, &["drop-column"]),
        ("ALTER TABLE users DROP COLUMN a, DROP COLUMN b", B, &["drop-column", "drop-column"]),
        ("DROP TABLE old_orders", B, &["drop-table"]),
        ("DROP TABLE IF EXISTS a, shop.b CASCADE", B, &["drop-table"]),
        ("DROP VIEW active_users", B, &["drop-view"]),
        ("DROP MATERIALIZED VIEW stats", B, &["drop-view"]),
        ("DROP SCHEMA legacy CASCADE", B, &["drop-schema"]),
        ("DROP FUNCTION f(int)", B, &["drop-function"]),
        ("DROP TYPE mood", B, &["drop-type"]),
        ("DROP SEQUENCE order_seq", B, &["drop-sequence"]),
        ("ALTER TABLE users RENAME COLUMN email TO email_address", B, &["rename-column"]),
        ("ALTER TABLE users RENAME TO customers", B, &["rename-table"]),
        ("ALTER VIEW v RENAME TO w", B, &["rename-object"]),
        ("ALTER TYPE mood RENAME VALUE 'sad' TO 'unhappy'", B, &["rename-object"]),
        ("ALTER TABLE users SET SCHEMA archive", B, &["set-schema"]),
        ("ALTER TABLE users ALTER COLUMN id TYPE bigint", B, &["change-column-type", "column-type-rewrite"]),
        ("ALTER TABLE users ALTER COLUMN email SET NOT NULL", B, &["set-not-null"]),
        ("ALTER TABLE users ALTER COLUMN email DROP NOT NULL", B, &["drop-not-null"]),
        ("ALTER TABLE users ALTER COLUMN status DROP DEFAULT", B, &["drop-default"]),
        ("ALTER TABLE users ADD COLUMN tenant_id bigint NOT NULL", B, &["add-not-null-column-without-default"]),
        ("TRUNCATE sessions", B, &["truncate"]),
        ("DELETE FROM sessions", B, &["delete-without-where", "delete-in-one-transaction"]),
        // lock-dangerous
        ("CREATE INDEX idx_users_email ON users (email)", L, &["create-index-non-concurrently"]),
        ("CREATE UNIQUE INDEX ON users (email)", L, &["create-index-non-concurrently"]),
        ("DROP INDEX idx_users_email", L, &["drop-index-non-concurrently"]),
        ("REINDEX TABLE users", L, &["reindex-non-concurrently"]),
        ("ALTER TABLE orders ADD CONSTRAINT fk_user FOREIGN KEY (user_id) REFERENCES users (id)", L, &["add-constraint-without-not-valid"]),
        ("ALTER TABLE orders ADD CONSTRAINT positive CHECK (total >= 0)", L, &["add-constraint-without-not-valid"]),
        ("ALTER TABLE orders ADD COLUMN user_id bigint REFERENCES users (id)", L, &["add-constraint-without-not-valid"]),
        ("ALTER TABLE users ADD PRIMARY KEY (id)", L, &["add-unique-constraint-without-index"]),
        ("ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email)", L, &["add-unique-constraint-without-index"]),
        ("ALTER TABLE users ADD COLUMN token uuid DEFAULT gen_random_uuid()", L, &["add-column-rewrite"]),
        ("ALTER TABLE users ADD COLUMN n bigserial", L, &["add-column-rewrite"]),
        ("ALTER TABLE users ADD COLUMN seen timestamptz DEFAULT clock_timestamp()", L, &["add-column-rewrite"]),
        ("ALTER TABLE users SET TABLESPACE fast", L, &["table-rewrite"]),
        ("VACUUM FULL users", L, &["vacuum-full"]),
        ("CLUSTER users USING users_pkey", L, &["cluster"]),
        ("LOCK TABLE users IN ACCESS EXCLUSIVE MODE", L, &["lock-table"]),
        ("REFRESH MATERIALIZED VIEW stats", L, &["refresh-matview-non-concurrently"]),
        ("UPDATE users SET email_verified = false", L, &["update-without-where"]),
        ("ALTER TABLE users ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY", L, &["add-column-rewrite"]),
        ("ALTER TABLE users ADD COLUMN e text GENERATED ALWAYS AS (lower(email)) STORED", L, &["add-column-rewrite"]),
        ("ALTER TABLE users ADD COLUMN score int CHECK (score > 0)", L, &["add-constraint-without-not-valid"]),
        ("ALTER TABLE users ADD COLUMN k text DEFAULT my_func()", L, &["add-column-rewrite"]),
        // safe
        ("ALTER TABLE users ADD COLUMN email_verified boolean", S, &[]),
        ("ALTER TABLE users ADD COLUMN status text NOT NULL DEFAULT 'active'", S, &[]),
        ("ALTER TABLE users ADD COLUMN prefs jsonb NOT NULL DEFAULT '{}'::jsonb", S, &[]),
        ("ALTER TABLE users ADD COLUMN created timestamptz NOT NULL DEFAULT now()", S, &[]),
        ("ALTER TABLE users ADD COLUMN day date DEFAULT CURRENT_DATE", S, &[]),
        ("ALTER TABLE users ADD COLUMN lower_email text GENERATED ALWAYS AS (lower(email)) VIRTUAL", S, &[]),
        ("CREATE TABLE audit (id bigint PRIMARY KEY, user_id bigint NOT NULL REFERENCES users (id))", S, &[]),
        ("CREATE INDEX CONCURRENTLY idx_users_email ON users (email)", S, &[]),
        ("DROP INDEX CONCURRENTLY idx_users_email", S, &[]),
        ("REINDEX INDEX CONCURRENTLY idx_users_email", S, &[]),
        ("ALTER TABLE orders ADD CONSTRAINT fk_user FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID", S, &[]),
        ("ALTER TABLE orders ADD CONSTRAINT positive CHECK (total >= 0) NOT VALID", S, &[]),
        ("ALTER TABLE orders VALIDATE CONSTRAINT fk_user", S, &[]),
        ("ALTER TABLE users ADD CONSTRAINT users_pkey PRIMARY KEY USING INDEX users_id_idx", S, &[]),
        ("ALTER TABLE users ALTER COLUMN status SET DEFAULT 'active'", S, &[]),
        ("COMMENT ON COLUMN users.email IS 'primary address'", S, &[]),
        ("INSERT INTO settings (k, v) VALUES ('a', 'b')", S, &[]),
        ("UPDATE users SET email_verified = false WHERE id < 10000", S, &[]),
        ("ALTER TYPE mood ADD VALUE 'ok'", S, &[]),
        ("CREATE VIEW v AS SELECT id FROM users", S, &[]),
        ("ALTER INDEX idx_a RENAME TO idx_b", S, &[]),
        ("VACUUM ANALYZE users", S, &[]),
    ];
    assert!(cases.len() >= 40);
    for (sql, class, rules) in cases {
        assert_eq!(rules_of(sql), *rules, "rules of {sql}");
        assert_eq!(class_of(sql), *class, "class of {sql}");
    }
}

#[test]
fn a_delete_of_every_row_warns_toward_backfill_in_contract_too() {
    // Contract accepts the backward-incompatible finding (no old code reads the rows), but one
    // long transaction still locks every row against application writes: a warning.
    let f = lint("DELETE FROM sessions").unwrap();
    let v = judge(&f, LintPhase::Contract, &Policy::default());
    assert!(v.refused.is_empty(), "{v:#?}");
    let w = &v.warnings;
    assert_eq!(w.len(), 1, "{v:#?}");
    assert_eq!(w[0].rule, "delete-in-one-transaction");
    assert!(w[0].fix.contains("spec.backfill"), "{}", w[0].fix);
    assert!(w[0].message.contains("sessions"), "{}", w[0].message);
    // Expand refuses it, and the refusal's fix names backfill as well.
    let f = lint("DELETE FROM sessions").unwrap();
    let v = judge(&f, LintPhase::Expand, &Policy::default());
    assert_eq!(v.refused.len(), 1, "{v:#?}");
    assert!(
        v.refused[0].fix.contains("spec.backfill"),
        "{}",
        v.refused[0].fix
    );
    // The UPDATE counterpart already points there, in both phases.
    let f = lint("UPDATE users SET email_verified = false").unwrap();
    for phase in [LintPhase::Expand, LintPhase::Contract] {
        let v = judge(&f, phase, &Policy::default());
        assert_eq!(v.warnings.len(), 1, "{v:#?}");
        assert!(v.warnings[0].fix.contains("spec.backfill"));
    }
    // With a WHERE, neither.
    assert!(lint("DELETE FROM sessions WHERE expires_at < now()")
        .unwrap()
        .is_empty());
}

#[test]
fn every_rule_is_documented_once() {
    let mut ids: Vec<&str> = RULES.iter().map(|r| r.id).collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "duplicate rule ids");
    for r in RULES {
        assert!(
            r.id.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
            "{}",
            r.id
        );
        assert!(r.fix.ends_with('.'), "{}", r.id);
        assert_ne!(r.class, Class::Safe);
    }
}

#[test]
fn a_table_created_in_the_same_sql_is_exempt() {
    let sql = "CREATE TABLE shop.audit (id bigint, note text);
CREATE INDEX audit_note ON shop.audit (note);
ALTER TABLE audit ADD CONSTRAINT audit_pkey PRIMARY KEY (id);
ALTER TABLE shop.audit ADD COLUMN at timestamptz NOT NULL;
CREATE INDEX users_note ON users (note);";
    let f = lint(sql).unwrap();
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].rule, "create-index-non-concurrently");
    assert_eq!(f[0].statement, 5);
    assert_eq!(f[0].line, 5);
}

#[test]
fn lines_skip_comments_and_statements_are_shortened() {
    let sql = "-- expand for 2.4.0\nALTER TABLE users ADD COLUMN a int;\n\n/* legacy */\n-- gone\nALTER TABLE users\n  DROP COLUMN legacy_flag;\n";
    let f = lint(sql).unwrap();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].statement, 2);
    assert_eq!(f[0].line, 6);
    assert_eq!(f[0].sql, "ALTER TABLE users DROP COLUMN legacy_flag");
    assert!(
        f[0].message.contains("users.legacy_flag"),
        "{}",
        f[0].message
    );

    let long = format!("UPDATE users SET note = '{}'", "x".repeat(500));
    let f = lint(&long).unwrap();
    assert!(f[0].sql.chars().count() <= 200);
    assert!(f[0].sql.ends_with('…'));
}

#[test]
fn unparseable_sql_reports_line_and_column() {
    let sql = "ALTER TABLE users ADD COLUMN a int;\nALTER TABLE users\n  DROPP COLUMN b;\n";
    let e = lint(sql).unwrap_err();
    assert_eq!(e.rule, "syntax-error");
    assert!(e.message.contains("DROPP"), "{e}");
    assert_eq!(e.statement, Some(2));
    assert_eq!((e.line, e.column), (3, Some(3)));
    assert_eq!(e.cursor, Some(sql.find("DROPP").unwrap() + 1));

    // Columns count characters, not bytes.
    let e = lint("SELECT 'ünïcödé';\nSELECT 'é' ,, 1").unwrap_err();
    assert_eq!((e.line, e.column), (2, Some(13)), "{e}");

    let e = lint("SELECT 1;\nALTER TABLE users DROP").unwrap_err();
    assert_eq!((e.line, e.statement), (2, Some(2)));
}

#[test]
fn what_the_executor_refuses_is_an_error() {
    let e = lint("BEGIN;\nALTER TABLE users ADD COLUMN a int;\nCOMMIT;").unwrap_err();
    assert_eq!(
        (e.rule, e.statement, e.line),
        ("transaction-control", Some(1), 1)
    );
    let e = lint("SELECT 1;\nCREATE INDEX CONCURRENTLY ON users (email);").unwrap_err();
    assert_eq!(
        (e.rule, e.statement, e.line),
        ("unnamed-concurrent-index", Some(2), 2)
    );
    assert_eq!(lint("-- nothing\n").unwrap_err().rule, "empty-sql");
}

fn sample() -> Vec<Finding> {
    lint(
        "ALTER TABLE users ADD COLUMN email_verified boolean;
CREATE INDEX idx_users_email ON users (email);
ALTER TABLE users DROP COLUMN legacy_flag;",
    )
    .unwrap()
}

fn rules(fs: &[Finding]) -> Vec<&'static str> {
    fs.iter().map(|f| f.rule).collect()
}

#[test]
fn expand_refuses_backward_incompatible_and_warns_on_locks() {
    let v = judge(&sample(), LintPhase::Expand, &Policy::default());
    assert!(v.is_refused());
    assert_eq!(rules(&v.refused), ["drop-column"]);
    assert_eq!(rules(&v.warnings), ["create-index-non-concurrently"]);
    assert!(v.overridden.is_empty() && v.accepted.is_empty());
}

#[test]
fn contract_accepts_backward_incompatible() {
    let v = judge(&sample(), LintPhase::Contract, &Policy::default());
    assert!(!v.is_refused());
    assert_eq!(rules(&v.accepted), ["drop-column"]);
    assert_eq!(rules(&v.warnings), ["create-index-non-concurrently"]);
}

#[test]
fn strict_refuses_lock_dangerous_in_both_phases() {
    let strict = Policy {
        strict: true,
        allow: vec![],
    };
    let v = judge(&sample(), LintPhase::Expand, &strict);
    assert_eq!(
        rules(&v.refused),
        ["create-index-non-concurrently", "drop-column"]
    );
    let v = judge(&sample(), LintPhase::Contract, &strict);
    assert_eq!(rules(&v.refused), ["create-index-non-concurrently"]);
    assert_eq!(rules(&v.accepted), ["drop-column"]);
}

#[test]
fn allow_overrides_the_named_rule_only() {
    let p = Policy {
        strict: true,
        allow: vec!["drop-column".into()],
    };
    let v = judge(&sample(), LintPhase::Expand, &p);
    assert_eq!(rules(&v.refused), ["create-index-non-concurrently"]);
    assert_eq!(rules(&v.overridden), ["drop-column"]);

    let p = Policy {
        strict: true,
        allow: vec!["drop-column".into(), "create-index-non-concurrently".into()],
    };
    let v = judge(&sample(), LintPhase::Expand, &p);
    assert!(!v.is_refused());
    assert_eq!(
        rules(&v.overridden),
        ["create-index-non-concurrently", "drop-column"]
    );

    // An override of a plain warning is recorded as an override, too.
    let p = Policy {
        strict: false,
        allow: vec!["create-index-non-concurrently".into()],
    };
    let v = judge(&sample(), LintPhase::Expand, &p);
    assert!(v.warnings.is_empty());
    assert_eq!(rules(&v.overridden), ["create-index-non-concurrently"]);
    assert!(is_known_rule("drop-column") && !is_known_rule("drop-everything"));
}

#[test]
fn finding_display_names_rule_statement_and_fix() {
    let f = &sample()[1];
    let s = f.to_string();
    assert!(
        s.starts_with("line 3: [drop-column] ALTER TABLE users DROP COLUMN legacy_flag — "),
        "{s}"
    );
    assert!(
        s.contains("Fix: Move the DROP COLUMN to the contract phase"),
        "{s}"
    );
}

/// Issue 10, item 7: consecutive statements share one transaction, so a backfill after DDL runs
/// with the DDL's lock held (examples/rename-column did this).
#[test]
fn dml_after_ddl_in_the_same_transaction() {
    let rules = |sql: &str| -> Vec<(usize, &'static str)> {
        lint(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .filter(|f| f.rule == "dml-after-ddl")
            .map(|f| (f.statement, f.rule))
            .collect()
    };
    let d = "dml-after-ddl";
    let sql = "ALTER TABLE users ADD COLUMN display_name text;
UPDATE users SET display_name = fullname WHERE display_name IS NULL;";
    assert_eq!(rules(sql), vec![(2, d)]);
    let f = lint(sql).unwrap();
    assert!(
        f[0].message
            .contains("statement 1, which holds ACCESS EXCLUSIVE on users")
            && f[0]
                .message
                .contains("application reads and writes of users wait for the whole UPDATE"),
        "{}",
        f[0].message
    );
    assert!(f[0].fix.contains("-- phasegate:commit"), "{}", f[0].fix);
    // Another table is held just the same; a trigger (SHARE ROW EXCLUSIVE) blocks writes.
    let sql = "CREATE TRIGGER t BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION f();
DELETE FROM sessions WHERE expired;";
    assert_eq!(rules(sql), vec![(2, d)]);
    assert!(lint(sql).unwrap()[0]
        .message
        .contains("application writes of users"));
    assert_eq!(
        rules("ALTER TABLE a ADD x int; INSERT INTO b SELECT * FROM c; MERGE INTO a USING c ON a.id = c.id WHEN MATCHED THEN DELETE"),
        vec![(2, d), (3, d)]
    );
    // The safe shapes: a commit marker, a statement outside the transaction in between, data
    // changes first, a table created here, locks that block nobody, a single-row insert.
    for sql in [
        "ALTER TABLE users ADD COLUMN n text;\n-- phasegate:commit\nUPDATE users SET n = 'x' WHERE n IS NULL;",
        "ALTER TABLE users ADD COLUMN n text; CREATE INDEX CONCURRENTLY i ON users (n); UPDATE users SET n = 'x' WHERE n IS NULL;",
        "UPDATE users SET n = 'x' WHERE n IS NULL; ALTER TABLE users ADD COLUMN m text;",
        "CREATE TABLE audit (id int, note text); CREATE INDEX audit_note ON audit (note); INSERT INTO audit SELECT id, 'x' FROM users;",
        "ALTER TABLE orders VALIDATE CONSTRAINT fk; ALTER TABLE orders ALTER COLUMN n SET STATISTICS 500; UPDATE orders SET n = 1 WHERE n = 0;",
        "ALTER TABLE settings ADD COLUMN k text; INSERT INTO settings (k) VALUES ('a');",
    ] {
        assert_eq!(rules(sql), vec![], "{sql}");
    }
    // ADD CONSTRAINT … NOT VALID (a CHECK) still takes ACCESS EXCLUSIVE.
    assert_eq!(
        rules("ALTER TABLE orders ADD CONSTRAINT c CHECK (n > 0) NOT VALID; UPDATE orders SET n = 1 WHERE n = 0;"),
        vec![(2, d)]
    );
}
