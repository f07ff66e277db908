//! Splitting and classifying a phase's SQL with the real PostgreSQL parser (`pg_query`).
//!
//! The executor needs two facts per statement that only a parser can give reliably:
//! whether the statement may run inside a transaction block, and which tables it will lock
//! (so it can wait *outside* the lock queue while an older transaction holds one of them).

use pg_query::protobuf::{self, node::Node as N};

/// How a statement relates to transaction blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxMode {
    /// Can run inside the phase's single transaction.
    Transactional,
    /// Must run on its own, outside any transaction block
    /// (e.g. `CREATE INDEX CONCURRENTLY`, `VACUUM`).
    NonTransactional,
    /// `ALTER TYPE … ADD VALUE`: allowed in a transaction block from PostgreSQL 12 on,
    /// refused by the server inside one before that.
    NonTransactionalBeforePg12,
}

impl TxMode {
    /// Whether the statement must run outside a transaction block on a server of `server_version_num`.
    pub fn needs_own_transaction(self, server_version_num: i32) -> bool {
        match self {
            TxMode::Transactional => false,
            TxMode::NonTransactional => true,
            TxMode::NonTransactionalBeforePg12 => server_version_num < 120_000,
        }
    }
}

/// The lock a statement is expected to take on the tables it touches, in PostgreSQL's
/// table-level lock modes. Used only to decide which existing locks would make it queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockMode {
    AccessShare,
    RowShare,
    RowExclusive,
    ShareUpdateExclusive,
    Share,
    ShareRowExclusive,
    Exclusive,
    AccessExclusive,
}

impl LockMode {
    /// Parses the `pg_locks.mode` spelling (e.g. `AccessExclusiveLock`).
    pub fn from_pg(mode: &str) -> Option<LockMode> {
        Some(match mode {
            "AccessShareLock" => LockMode::AccessShare,
            "RowShareLock" => LockMode::RowShare,
            "RowExclusiveLock" => LockMode::RowExclusive,
            "ShareUpdateExclusiveLock" => LockMode::ShareUpdateExclusive,
            "ShareLock" => LockMode::Share,
            "ShareRowExclusiveLock" => LockMode::ShareRowExclusive,
            "ExclusiveLock" => LockMode::Exclusive,
            "AccessExclusiveLock" => LockMode::AccessExclusive,
            _ => return None,
        })
    }

    /// PostgreSQL's table-level lock conflict matrix.
    pub fn conflicts_with(self, other: LockMode) -> bool {
        use LockMode::*;
        let conflicts: &[LockMode] = match self {
            AccessShare => &[AccessExclusive],
            RowShare => &[Exclusive, AccessExclusive],
            RowExclusive => &[Share, ShareRowExclusive, Exclusive, AccessExclusive],
            ShareUpdateExclusive => &[
                ShareUpdateExclusive,
                Share,
                ShareRowExclusive,
                Exclusive,
                AccessExclusive,
            ],
            Share => &[
                RowExclusive,
                ShareUpdateExclusive,
                ShareRowExclusive,
                Exclusive,
                AccessExclusive,
            ],
            ShareRowExclusive => &[
                RowExclusive,
                ShareUpdateExclusive,
                Share,
                ShareRowExclusive,
                Exclusive,
                AccessExclusive,
            ],
            Exclusive => &[
                RowShare,
                RowExclusive,
                ShareUpdateExclusive,
                Share,
                ShareRowExclusive,
                Exclusive,
                AccessExclusive,
            ],
            AccessExclusive => &[
                AccessShare,
                RowShare,
                RowExclusive,
                ShareUpdateExclusive,
                Share,
                ShareRowExclusive,
                Exclusive,
                AccessExclusive,
            ],
        };
        conflicts.contains(&other)
    }
}

/// A table named by a statement, as written (unquoted identifiers already case-folded by the parser).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableRef {
    /// Empty when unqualified (resolved through `search_path`).
    pub schema: String,
    pub name: String,
}

impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.schema.is_empty() {
            write!(f, "{}", self.name)
        } else {
            write!(f, "{}.{}", self.schema, self.name)
        }
    }
}

/// What is needed to resume a `CREATE INDEX CONCURRENTLY` idempotently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrentIndex {
    pub index: String,
    pub table: TableRef,
}

/// One statement of a phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement's text, exactly as written (without the trailing semicolon).
    pub sql: String,
    /// Parser node name, e.g. `AlterTableStmt`.
    pub kind: String,
    pub tx: TxMode,
    /// Tables the statement references (and may lock), deduplicated.
    pub tables: Vec<TableRef>,
    /// The strongest lock the statement is expected to take on those tables.
    pub lock: LockMode,
    /// Set for `CREATE INDEX CONCURRENTLY`, so a failed build can be detected and cleaned up.
    pub concurrent_index: Option<ConcurrentIndex>,
    /// Set for `DROP INDEX CONCURRENTLY`/`REINDEX … CONCURRENTLY`; these use a weak lock and
    /// wait for older transactions by design, so no short `lock_timeout` is applied.
    pub concurrent: bool,
    /// Tables altered or dropped: PostgreSQL also locks tables the statement does not name
    /// (foreign-key peers, partitions, a partition's parent), found in the catalog before waiting.
    pub reaches: Vec<Reach>,
}

/// A table an `ALTER TABLE` or `DROP TABLE` changes, with what makes PostgreSQL lock other
/// tables too; resolved from the catalog by `executor::locks::implicit_targets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub table: TableRef,
    /// `DROP TABLE`: every foreign key to or from it (their triggers live on the other table)
    /// and, for a partition, its parent.
    pub dropped: bool,
    /// Columns dropped or retyped: foreign keys on them are dropped or rebuilt.
    pub columns: Vec<String>,
    /// Constraints dropped: a foreign key among them locks its referenced table.
    pub constraints: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SqlError {
    #[error("syntax error: {0}")]
    Syntax(String),
    #[error("the SQL contains no statement")]
    Empty,
    #[error(
        "statement {index} is a transaction control statement ({kind}); Phasegate runs each phase in its own transaction, remove BEGIN/COMMIT/SAVEPOINT from the SQL"
    )]
    TransactionControl { index: usize, kind: String },
    #[error(
        "statement {index}: CREATE INDEX CONCURRENTLY needs an explicit index name so that an interrupted build can be detected and resumed"
    )]
    UnnamedConcurrentIndex { index: usize },
}

impl SqlError {
    /// The PostgreSQL SQLSTATE that best describes the error (for reports).
    pub fn sqlstate(&self) -> &'static str {
        match self {
            SqlError::Syntax(_) => "42601",
            SqlError::Empty => "42601",
            SqlError::TransactionControl { .. } => "25000",
            SqlError::UnnamedConcurrentIndex { .. } => "42601",
        }
    }

    /// 1-based index of the offending statement, when known.
    pub fn statement(&self) -> Option<usize> {
        match self {
            SqlError::TransactionControl { index, .. }
            | SqlError::UnnamedConcurrentIndex { index } => Some(*index),
            _ => None,
        }
    }
}

/// Parses a phase's SQL into classified statements.
pub fn parse_phase(sql: &str) -> Result<Vec<Statement>, SqlError> {
    let parsed = pg_query::parse(sql, 0).map_err(|e| SqlError::Syntax(error_text(e)))?;
    let mut out = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        let index = out.len() + 1;
        let text = slice_statement(sql, raw.stmt_location, raw.stmt_len);
        out.push(classify(index, text, node)?);
    }
    if out.is_empty() {
        return Err(SqlError::Empty);
    }
    Ok(out)
}

fn error_text(e: pg_query::Error) -> String {
    match e {
        pg_query::Error::Parse(m) => m,
        other => other.to_string(),
    }
}

/// `stmt_location`/`stmt_len` are byte offsets; a length of 0 means "to the end".
fn slice_statement(sql: &str, location: i32, len: i32) -> String {
    let start = usize::try_from(location).unwrap_or(0).min(sql.len());
    let end = if len <= 0 {
        sql.len()
    } else {
        start
            .saturating_add(usize::try_from(len).unwrap_or(0))
            .min(sql.len())
    };
    sql.get(start..end)
        .unwrap_or("")
        .trim()
        .trim_end_matches(';')
        .trim()
        .to_string()
}

fn node_name(node: &N) -> String {
    // `Debug` of the enum starts with the variant name, e.g. `AlterTableStmt(AlterTableStmt { .. })`.
    let dbg = format!("{node:?}");
    dbg.split(['(', ' ', '{'])
        .next()
        .unwrap_or("Unknown")
        .to_string()
}

fn classify(index: usize, sql: String, node: &N) -> Result<Statement, SqlError> {
    let kind = node_name(node);
    let mut tx = TxMode::Transactional;
    let mut lock = LockMode::AccessExclusive;
    let mut concurrent_index = None;
    let mut concurrent = false;

    match node {
        N::TransactionStmt(_) => return Err(SqlError::TransactionControl { index, kind }),
        N::IndexStmt(s) => {
            lock = LockMode::Share;
            if s.concurrent {
                tx = TxMode::NonTransactional;
                lock = LockMode::ShareUpdateExclusive;
                concurrent = true;
                if s.idxname.is_empty() {
                    return Err(SqlError::UnnamedConcurrentIndex { index });
                }
                let table = s
                    .relation
                    .as_ref()
                    .map(range_var)
                    .unwrap_or_else(|| TableRef {
                        schema: String::new(),
                        name: String::new(),
                    });
                concurrent_index = Some(ConcurrentIndex {
                    index: s.idxname.clone(),
                    table,
                });
            }
        }
        N::DropStmt(s) if s.concurrent => {
            tx = TxMode::NonTransactional;
            lock = LockMode::ShareUpdateExclusive;
            concurrent = true;
        }
        N::ReindexStmt(s) => {
            let kind_enum = protobuf::ReindexObjectType::try_from(s.kind)
                .unwrap_or(protobuf::ReindexObjectType::Undefined);
            if has_option(&s.params, "concurrently") {
                tx = TxMode::NonTransactional;
                lock = LockMode::ShareUpdateExclusive;
                concurrent = true;
            } else {
                lock = LockMode::Share;
            }
            // REINDEX SCHEMA/SYSTEM/DATABASE commit per table and cannot run in a block.
            if matches!(
                kind_enum,
                protobuf::ReindexObjectType::ReindexObjectSchema
                    | protobuf::ReindexObjectType::ReindexObjectSystem
                    | protobuf::ReindexObjectType::ReindexObjectDatabase
            ) {
                tx = TxMode::NonTransactional;
            }
        }
        N::VacuumStmt(s) => {
            lock = LockMode::ShareUpdateExclusive;
            // Plain ANALYZE may run in a transaction block; VACUUM may not.
            if s.is_vacuumcmd {
                tx = TxMode::NonTransactional;
                if has_option(&s.options, "full") {
                    lock = LockMode::AccessExclusive;
                }
            }
        }
        N::AlterEnumStmt(s) if !s.new_val.is_empty() && s.old_val.is_empty() => {
            tx = TxMode::NonTransactionalBeforePg12;
        }
        N::CreatedbStmt(_)
        | N::DropdbStmt(_)
        | N::CreateTableSpaceStmt(_)
        | N::DropTableSpaceStmt(_)
        | N::AlterSystemStmt(_) => {
            tx = TxMode::NonTransactional;
        }
        // Creating a subscription with a replication slot (the default) cannot run in a block;
        // likewise dropping one. Be conservative and run all of them on their own.
        N::CreateSubscriptionStmt(_) | N::DropSubscriptionStmt(_) => {
            tx = TxMode::NonTransactional;
        }
        N::AlterDatabaseStmt(s) if has_option(&s.options, "tablespace") => {
            tx = TxMode::NonTransactional;
        }
        N::InsertStmt(_) | N::UpdateStmt(_) | N::DeleteStmt(_) | N::MergeStmt(_) => {
            lock = LockMode::RowExclusive;
        }
        N::SelectStmt(_) => {
            lock = LockMode::AccessShare;
        }
        N::CreateTrigStmt(_) => {
            lock = LockMode::ShareRowExclusive;
        }
        _ => {}
    }

    let tables = tables_of(&sql);
    Ok(Statement {
        sql,
        kind,
        tx,
        tables,
        lock,
        concurrent_index,
        concurrent,
        reaches: reaches_of(node),
    })
}

/// The tables an `ALTER TABLE` or `DROP TABLE` changes (see [`Reach`]).
fn reaches_of(node: &N) -> Vec<Reach> {
    match node {
        N::AlterTableStmt(a) => {
            let Some(rel) = a.relation.as_ref() else {
                return Vec::new();
            };
            let mut reach = Reach {
                table: range_var(rel),
                dropped: false,
                columns: Vec::new(),
                constraints: Vec::new(),
            };
            for cmd in &a.cmds {
                let Some(N::AlterTableCmd(c)) = cmd.node.as_ref() else {
                    continue;
                };
                match protobuf::AlterTableType::try_from(c.subtype) {
                    Ok(protobuf::AlterTableType::AtDropColumn)
                    | Ok(protobuf::AlterTableType::AtAlterColumnType) => {
                        reach.columns.push(c.name.clone())
                    }
                    Ok(protobuf::AlterTableType::AtDropConstraint) => {
                        reach.constraints.push(c.name.clone())
                    }
                    _ => {}
                }
            }
            vec![reach]
        }
        N::DropStmt(d)
            if matches!(
                protobuf::ObjectType::try_from(d.remove_type),
                Ok(protobuf::ObjectType::ObjectTable)
            ) =>
        {
            d.objects
                .iter()
                .filter_map(|o| match o.node.as_ref() {
                    Some(N::List(list)) => qualified_name(&list.items),
                    _ => None,
                })
                .map(|table| Reach {
                    table,
                    dropped: true,
                    columns: Vec::new(),
                    constraints: Vec::new(),
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

/// `[schema.]name` from the string list of a DROP object.
pub(crate) fn qualified_name(items: &[protobuf::Node]) -> Option<TableRef> {
    let parts: Vec<String> = items
        .iter()
        .filter_map(|i| match i.node.as_ref() {
            Some(N::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect();
    match parts.as_slice() {
        [name] => Some(TableRef {
            schema: String::new(),
            name: name.clone(),
        }),
        [.., schema, name] => Some(TableRef {
            schema: schema.clone(),
            name: name.clone(),
        }),
        [] => None,
    }
}

fn range_var(v: &protobuf::RangeVar) -> TableRef {
    TableRef {
        schema: v.schemaname.clone(),
        name: v.relname.clone(),
    }
}

fn collect_range_vars(v: &serde_json::Value, out: &mut Vec<TableRef>) {
    match v {
        serde_json::Value::Object(map) => {
            if let (Some(serde_json::Value::String(rel)), true) =
                (map.get("relname"), map.contains_key("relpersistence"))
            {
                let schema = map.get("schemaname").and_then(|s| s.as_str()).unwrap_or("");
                out.push(TableRef {
                    schema: schema.to_string(),
                    name: rel.clone(),
                });
            }
            map.values().for_each(|c| collect_range_vars(c, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|c| collect_range_vars(c, out)),
        _ => {}
    }
}

fn has_option(options: &[protobuf::Node], name: &str) -> bool {
    options.iter().any(|o| match o.node.as_ref() {
        Some(N::DefElem(d)) => d.defname.eq_ignore_ascii_case(name),
        _ => false,
    })
}

/// Every relation the statement names, via the parser's own tree walk (RangeVar nodes and
/// DROP TABLE objects), split into schema and name.
fn tables_of(sql: &str) -> Vec<TableRef> {
    let mut out: Vec<TableRef> = Vec::new();
    let Ok(parsed) = pg_query::parse(sql, 0) else {
        return out;
    };
    // pg_query's own walker skips some subtrees (e.g. the referenced table of an inline
    // REFERENCES constraint), so walk the whole tree generically for RangeVar-shaped nodes.
    if let Ok(tree) = serde_json::to_value(&parsed.protobuf) {
        collect_range_vars(&tree, &mut out);
    }
    // DROP TABLE names its objects as lists of strings, not RangeVars; DROP TRIGGER, RULE and
    // POLICY name theirs as the table's name followed by their own.
    for raw in &parsed.protobuf.stmts {
        if let Some(N::DropStmt(d)) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
            let on_table = match protobuf::ObjectType::try_from(d.remove_type) {
                Ok(protobuf::ObjectType::ObjectTable | protobuf::ObjectType::ObjectIndex) => false,
                Ok(
                    protobuf::ObjectType::ObjectTrigger
                    | protobuf::ObjectType::ObjectRule
                    | protobuf::ObjectType::ObjectPolicy,
                ) => true,
                _ => continue,
            };
            for o in &d.objects {
                if let Some(N::List(list)) = o.node.as_ref() {
                    let items = if on_table {
                        list.items.split_last().map(|(_, t)| t).unwrap_or(&[])
                    } else {
                        &list.items[..]
                    };
                    out.extend(qualified_name(items));
                }
            }
        }
    }
    out.retain(|t| !t.name.is_empty());
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> Statement {
        let mut v = parse_phase(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(v.len(), 1, "{sql}");
        v.remove(0)
    }

    fn t(name: &str) -> TableRef {
        match name.split_once('.') {
            Some((s, n)) => TableRef {
                schema: s.into(),
                name: n.into(),
            },
            None => TableRef {
                schema: String::new(),
                name: name.into(),
            },
        }
    }

    #[test]
    fn classification_table() {
        use TxMode::*;
        let cases: &[(&str, TxMode, &[&str], LockMode)] = &[
            (
                "ALTER TABLE users ADD COLUMN email_verified boolean",
                Transactional,
                &["users"],
                LockMode::AccessExclusive,
            ),
            (
                "alter table shop.Users drop column legacy",
                Transactional,
                &["shop.users"],
                LockMode::AccessExclusive,
            ),
            (
                r#"ALTER TABLE "Shop"."Users" ADD c int"#,
                Transactional,
                &["Shop.Users"],
                LockMode::AccessExclusive,
            ),
            (
                "CREATE TABLE orders (id bigint primary key, user_id bigint references users(id))",
                Transactional,
                &["orders", "users"],
                LockMode::AccessExclusive,
            ),
            (
                "CREATE INDEX idx_a ON users (email)",
                Transactional,
                &["users"],
                LockMode::Share,
            ),
            (
                "CREATE INDEX CONCURRENTLY idx_b ON shop.users (email)",
                NonTransactional,
                &["shop.users"],
                LockMode::ShareUpdateExclusive,
            ),
            (
                "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_c ON users (email)",
                NonTransactional,
                &["users"],
                LockMode::ShareUpdateExclusive,
            ),
            (
                "DROP INDEX CONCURRENTLY IF EXISTS idx_b",
                NonTransactional,
                &["idx_b"],
                LockMode::ShareUpdateExclusive,
            ),
            (
                "DROP INDEX idx_b",
                Transactional,
                &["idx_b"],
                LockMode::AccessExclusive,
            ),
            (
                "REINDEX INDEX CONCURRENTLY idx_b",
                NonTransactional,
                &["idx_b"],
                LockMode::ShareUpdateExclusive,
            ),
            (
                "REINDEX (CONCURRENTLY) TABLE users",
                NonTransactional,
                &["users"],
                LockMode::ShareUpdateExclusive,
            ),
            (
                "REINDEX TABLE users",
                Transactional,
                &["users"],
                LockMode::Share,
            ),
            (
                "REINDEX SCHEMA public",
                NonTransactional,
                &[],
                LockMode::Share,
            ),
            (
                "VACUUM users",
                NonTransactional,
                &["users"],
                LockMode::ShareUpdateExclusive,
            ),
            (
                "VACUUM (FULL) users",
                NonTransactional,
                &["users"],
                LockMode::AccessExclusive,
            ),
            (
                "ANALYZE users",
                Transactional,
                &["users"],
                LockMode::ShareUpdateExclusive,
            ),
            (
                "ALTER TYPE mood ADD VALUE 'meh'",
                NonTransactionalBeforePg12,
                &[],
                LockMode::AccessExclusive,
            ),
            (
                "ALTER TYPE mood RENAME VALUE 'meh' TO 'ok'",
                Transactional,
                &[],
                LockMode::AccessExclusive,
            ),
            (
                "CREATE DATABASE other",
                NonTransactional,
                &[],
                LockMode::AccessExclusive,
            ),
            (
                "ALTER SYSTEM SET work_mem = '8MB'",
                NonTransactional,
                &[],
                LockMode::AccessExclusive,
            ),
            (
                "DROP TABLE a, public.b",
                Transactional,
                &["a", "public.b"],
                LockMode::AccessExclusive,
            ),
            (
                "UPDATE users SET x = 1 WHERE id IN (SELECT user_id FROM orders)",
                Transactional,
                &["orders", "users"],
                LockMode::RowExclusive,
            ),
            (
                "INSERT INTO t SELECT * FROM s",
                Transactional,
                &["s", "t"],
                LockMode::RowExclusive,
            ),
            (
                "CREATE TRIGGER trg BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION f()",
                Transactional,
                &["users"],
                LockMode::ShareRowExclusive,
            ),
            (
                "DROP POLICY p ON users",
                Transactional,
                &["users"],
                LockMode::AccessExclusive,
            ),
            (
                "DROP RULE r ON users",
                Transactional,
                &["users"],
                LockMode::AccessExclusive,
            ),
            (
                "DROP TRIGGER trg ON shop.users",
                Transactional,
                &["shop.users"],
                LockMode::AccessExclusive,
            ),
            (
                "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id)",
                Transactional,
                &["orders", "users"],
                LockMode::AccessExclusive,
            ),
            (
                "COMMENT ON TABLE users IS 'x'",
                Transactional,
                &[],
                LockMode::AccessExclusive,
            ),
            (
                "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$",
                Transactional,
                &[],
                LockMode::AccessExclusive,
            ),
        ];
        for (sql, tx, tables, lock) in cases {
            let s = one(sql);
            assert_eq!(s.tx, *tx, "tx of {sql}");
            let want: Vec<TableRef> = tables.iter().map(|n| t(n)).collect();
            assert_eq!(s.tables, want, "tables of {sql}");
            assert_eq!(s.lock, *lock, "lock of {sql}");
        }
    }

    #[test]
    fn reaches_of_alter_and_drop_table() {
        let r = |table: &str, dropped: bool, columns: &[&str], constraints: &[&str]| Reach {
            table: t(table),
            dropped,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            constraints: constraints.iter().map(|c| c.to_string()).collect(),
        };
        assert_eq!(
            one("DROP TABLE legacy, shop.old").reaches,
            vec![r("legacy", true, &[], &[]), r("shop.old", true, &[], &[])]
        );
        assert_eq!(
            one("ALTER TABLE orders DROP COLUMN user_id, ALTER COLUMN n TYPE bigint, DROP CONSTRAINT fk, ADD COLUMN x int").reaches,
            vec![r("orders", false, &["user_id", "n"], &["fk"])]
        );
        assert!(one("DROP INDEX i").reaches.is_empty());
        assert!(one("CREATE TABLE x (id int)").reaches.is_empty());
    }

    #[test]
    fn splits_statements_keeping_text() {
        let sql = "ALTER TABLE users ADD COLUMN a int;\n-- comment; with a semicolon\nCREATE INDEX CONCURRENTLY idx ON users (a);\nCREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;\n  SELECT 'a;b'  ";
        let v = parse_phase(sql).expect("parses");
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].sql, "ALTER TABLE users ADD COLUMN a int");
        assert!(
            v[1].sql
                .ends_with("CREATE INDEX CONCURRENTLY idx ON users (a)"),
            "{}",
            v[1].sql
        );
        assert_eq!(
            v[1].concurrent_index,
            Some(ConcurrentIndex {
                index: "idx".into(),
                table: t("users")
            })
        );
        assert_eq!(
            v[2].sql,
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$"
        );
        assert_eq!(v[3].sql, "SELECT 'a;b'");
        assert_eq!(v[0].kind, "AlterTableStmt");
    }

    #[test]
    fn multibyte_text_is_sliced_on_byte_offsets() {
        let v = parse_phase("COMMENT ON TABLE t IS 'größe';SELECT 'ü'").expect("parses");
        assert_eq!(v[0].sql, "COMMENT ON TABLE t IS 'größe'");
        assert_eq!(v[1].sql, "SELECT 'ü'");
    }

    #[test]
    fn errors() {
        assert!(matches!(
            parse_phase("ALTER TABLE users ADD COLUMN"),
            Err(SqlError::Syntax(_))
        ));
        assert_eq!(parse_phase("  -- nothing\n ;"), Err(SqlError::Empty));
        assert_eq!(
            parse_phase("BEGIN; ALTER TABLE a ADD b int; COMMIT;")
                .err()
                .map(|e| e.statement()),
            Some(Some(1))
        );
        assert_eq!(
            parse_phase("SELECT 1; CREATE INDEX CONCURRENTLY ON users (a)"),
            Err(SqlError::UnnamedConcurrentIndex { index: 2 })
        );
        assert_eq!(SqlError::Syntax("x".into()).sqlstate(), "42601");
    }

    #[test]
    fn tx_mode_depends_on_server_version() {
        assert!(TxMode::NonTransactionalBeforePg12.needs_own_transaction(110_005));
        assert!(!TxMode::NonTransactionalBeforePg12.needs_own_transaction(150_004));
        assert!(TxMode::NonTransactional.needs_own_transaction(170_000));
        assert!(!TxMode::Transactional.needs_own_transaction(90_600));
    }

    #[test]
    fn lock_conflicts_are_symmetric() {
        use LockMode::*;
        let all = [
            AccessShare,
            RowShare,
            RowExclusive,
            ShareUpdateExclusive,
            Share,
            ShareRowExclusive,
            Exclusive,
            AccessExclusive,
        ];
        for a in all {
            for b in all {
                assert_eq!(a.conflicts_with(b), b.conflicts_with(a), "{a:?} vs {b:?}");
            }
        }
        assert!(!RowExclusive.conflicts_with(RowExclusive));
        assert!(AccessExclusive.conflicts_with(AccessShare));
        assert_eq!(
            LockMode::from_pg("ShareRowExclusiveLock"),
            Some(ShareRowExclusive)
        );
    }
}
