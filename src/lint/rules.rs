//! The rules: one parse-tree node in, zero or more hits out.
//!
//! Everything here reads `pg_query`'s protobuf tree (PostgreSQL's own raw parse tree); no
//! regular expressions over SQL text. The catalog is not available, so where a rule needs a
//! fact only the database knows (is this function volatile? is this type change binary
//! compatible?) it assumes the risky answer and says so in the message.

use pg_query::protobuf::{
    self as pb, node::Node as N, AlterTableType as At, ConstrType as Ct, ObjectType as Ot,
};

use super::Class;
use crate::sql::{LockMode, Statement, TableRef};

/// A rule: a stable id, its class and how to fix what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Rule {
    /// Stable kebab-case id, as used in `--allow` and `spec.safety.allow`.
    pub id: &'static str,
    pub class: Class,
    /// What the rule detects, in a few words.
    pub summary: &'static str,
    /// How to fix it, one sentence.
    pub fix: &'static str,
}

const fn rule(id: &'static str, class: Class, summary: &'static str, fix: &'static str) -> Rule {
    Rule {
        id,
        class,
        summary,
        fix,
    }
}

use Class::{BackwardIncompatible as Bi, LockDangerous as Ld};

/// Every rule, backward-incompatible ones first.
pub const RULES: &[Rule] = &[
    rule("drop-column", Bi, "drops a column",
        "Move the DROP COLUMN to the contract phase, which runs once no old code reads the column."),
    rule("drop-table", Bi, "drops a table",
        "Move the DROP TABLE to the contract phase, which runs once no old code uses the table."),
    rule("drop-view", Bi, "drops a view or materialized view",
        "Move the DROP to the contract phase, which runs once no old code queries the view."),
    rule("drop-schema", Bi, "drops a schema",
        "Move the DROP SCHEMA to the contract phase, which runs once no old code uses its objects."),
    rule("drop-function", Bi, "drops a function, procedure or aggregate",
        "Move the DROP to the contract phase, which runs once no old code calls it."),
    rule("drop-type", Bi, "drops a type or domain",
        "Move the DROP to the contract phase, which runs once no old code uses the type."),
    rule("drop-sequence", Bi, "drops a sequence",
        "Move the DROP SEQUENCE to the contract phase, which runs once no old code uses it."),
    rule("rename-column", Bi, "renames a column",
        "Add the new column in expand, write both from the new code, and drop the old column in contract (or expose the new name through a view)."),
    rule("rename-table", Bi, "renames a table",
        "Create the new table (or an updatable view with the new name) in expand and drop the old name in contract."),
    rule("rename-object", Bi, "renames a view, sequence, schema, function, type or enum value",
        "Create the object under its new name in expand and drop the old one in contract."),
    rule("set-schema", Bi, "moves an object to another schema",
        "Create the object in the new schema in expand and drop the old one in contract."),
    rule("change-column-type", Bi, "changes a column's type",
        "Add a column of the new type in expand, backfill and dual-write it from the new code, and drop the old column in contract."),
    rule("set-not-null", Bi, "makes a column NOT NULL",
        "Add CHECK (col IS NOT NULL) NOT VALID in expand, VALIDATE it once the new code writes the column, and SET NOT NULL in contract."),
    rule("drop-not-null", Bi, "drops a NOT NULL constraint",
        "Drop NOT NULL in contract, once no old code relies on the column never being NULL."),
    rule("drop-default", Bi, "drops a column default",
        "Drop the default in contract, once no old code inserts rows without the column."),
    rule("add-not-null-column-without-default", Bi, "adds a NOT NULL column without a default",
        "Give the column a constant DEFAULT, or add it nullable in expand and SET NOT NULL in contract after a backfill."),
    rule("truncate", Bi, "empties a table",
        "Move the TRUNCATE to the contract phase, or delete the rows the new code no longer needs in batches."),
    rule("delete-without-where", Bi, "deletes every row of a table",
        "Move the DELETE to the contract phase or to spec.backfill (short batches once the rollout is complete, docs/backfill.md), or add a WHERE clause that keeps the rows the running code needs."),
    rule("create-index-non-concurrently", Ld, "builds an index while blocking writes",
        "Use CREATE INDEX CONCURRENTLY with an explicit index name (Phasegate runs it outside the transaction and resumes it)."),
    rule("drop-index-non-concurrently", Ld, "drops an index under an ACCESS EXCLUSIVE lock",
        "Use DROP INDEX CONCURRENTLY."),
    rule("reindex-non-concurrently", Ld, "rebuilds an index while blocking writes",
        "Use REINDEX ... CONCURRENTLY."),
    rule("add-constraint-without-not-valid", Ld, "adds a CHECK or FOREIGN KEY constraint that is validated under lock",
        "Add the constraint with NOT VALID, then run ALTER TABLE ... VALIDATE CONSTRAINT in a later statement or phase."),
    rule("add-unique-constraint-without-index", Ld, "adds a PRIMARY KEY, UNIQUE or EXCLUDE constraint that builds its index under lock",
        "Build a unique index with CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... PRIMARY KEY/UNIQUE USING INDEX."),
    rule("column-type-rewrite", Ld, "may rewrite the table and its indexes under an ACCESS EXCLUSIVE lock",
        "Add a new column of the target type and backfill it in batches instead of changing the type in place."),
    rule("add-column-rewrite", Ld, "adds a column whose value forces a table rewrite",
        "Add the column nullable (or with a constant default) and backfill it in batches."),
    rule("table-rewrite", Ld, "rewrites the whole table under an ACCESS EXCLUSIVE lock",
        "Run it in a maintenance window, or copy the data to a new table online."),
    rule("vacuum-full", Ld, "rewrites the table under an ACCESS EXCLUSIVE lock",
        "Use plain VACUUM, or pg_repack for online compaction."),
    rule("cluster", Ld, "rewrites the table under an ACCESS EXCLUSIVE lock",
        "Use pg_repack for online reordering, or run CLUSTER in a maintenance window."),
    rule("lock-table", Ld, "takes an explicit table lock",
        "Remove the LOCK TABLE; Phasegate already waits for conflicting transactions and retries lock timeouts."),
    rule("refresh-matview-non-concurrently", Ld, "refreshes a materialized view while blocking its readers",
        "Use REFRESH MATERIALIZED VIEW CONCURRENTLY (it needs a unique index on the view)."),
    rule("update-without-where", Ld, "updates every row in one transaction",
        "Move it to spec.backfill: Phasegate runs it in short keyset batches (UPDATE ... WHERE id > $1 AND id <= $2), throttled and resumable, after the rollout and before contract (docs/backfill.md)."),
    rule("delete-in-one-transaction", Ld, "deletes every row of a table in one transaction",
        "Move it to spec.backfill: Phasegate deletes in short keyset batches (DELETE ... WHERE id > $1 AND id <= $2), throttled and resumable, once the rollout is complete and before contract (docs/backfill.md)."),
    rule("dml-after-ddl", Ld, "changes data while an earlier statement of the same transaction holds a lock that blocks the application",
        "Commit the DDL first: put a line `-- phasegate:commit` before the data change (it then runs in a transaction of its own), or move it to a later phase or a batched Job."),
];

/// The rule with this id.
pub fn find(id: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.id == id)
}

/// One rule matched; the class and fix come from [`RULES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hit {
    pub rule: &'static str,
    pub message: String,
}

/// What earlier statements of the same SQL created: changes to those are invisible to
/// running code and hold no lock anyone waits for.
#[derive(Default)]
pub(super) struct Ctx {
    created: Vec<TableRef>,
}

impl Ctx {
    fn fresh(&self, t: &TableRef) -> bool {
        self.created.iter().any(|c| {
            c.name == t.name && (c.schema == t.schema || c.schema.is_empty() || t.schema.is_empty())
        })
    }
    fn fresh_rv(&self, rv: Option<&pb::RangeVar>) -> bool {
        rv.is_some_and(|rv| self.fresh(&table_ref(rv)))
    }
}

fn table_ref(rv: &pb::RangeVar) -> TableRef {
    TableRef {
        schema: rv.schemaname.clone(),
        name: rv.relname.clone(),
    }
}

fn rv_name(rv: Option<&pb::RangeVar>) -> String {
    rv.map(|rv| table_ref(rv).to_string())
        .unwrap_or_else(|| "?".into())
}

fn strings(items: &[pb::Node]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i.node.as_ref() {
            Some(N::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect()
}

/// A readable name for an object of a DROP/RENAME/… statement.
fn object_name(node: Option<&pb::Node>) -> String {
    match node.and_then(|n| n.node.as_ref()) {
        Some(N::List(l)) => strings(&l.items).join("."),
        Some(N::String(s)) => s.sval.clone(),
        Some(N::ObjectWithArgs(o)) => strings(&o.objname).join("."),
        Some(N::TypeName(t)) => strings(&t.names).join("."),
        Some(N::RangeVar(rv)) => table_ref(rv).to_string(),
        _ => "?".into(),
    }
}

fn list_ref(node: &pb::Node) -> Option<TableRef> {
    match node.node.as_ref() {
        Some(N::List(l)) => crate::sql::qualified_name(&l.items),
        _ => None,
    }
}

fn has_option(options: &[pb::Node], name: &str) -> bool {
    options.iter().any(|o| match o.node.as_ref() {
        Some(N::DefElem(d)) => d.defname.eq_ignore_ascii_case(name),
        _ => false,
    })
}

fn hit(out: &mut Vec<Hit>, rule: &'static str, message: String) {
    debug_assert!(find(rule).is_some(), "unknown rule {rule}");
    out.push(Hit { rule, message });
}

/// The rules for one statement. Updates `ctx` with what the statement creates.
pub(super) fn check(node: &N, ctx: &mut Ctx) -> Vec<Hit> {
    let mut out = Vec::new();
    match node {
        N::CreateStmt(s) => {
            if let Some(rv) = &s.relation {
                ctx.created.push(table_ref(rv));
            }
        }
        N::CreateTableAsStmt(s) => {
            if let Some(rv) = s.into.as_ref().and_then(|i| i.rel.as_ref()) {
                ctx.created.push(table_ref(rv));
            }
        }
        N::AlterTableStmt(s) => alter_table(s, ctx, &mut out),
        N::IndexStmt(s) if !s.concurrent && !ctx.fresh_rv(s.relation.as_ref()) => {
            let name = if s.idxname.is_empty() { String::new() } else { format!(" {}", s.idxname) };
            hit(&mut out, "create-index-non-concurrently", format!(
                "CREATE INDEX{name} on {} holds a SHARE lock that blocks every write to the table until the index is built",
                rv_name(s.relation.as_ref())
            ));
        }
        N::DropStmt(s) => drop(s, ctx, &mut out),
        N::RenameStmt(s) => rename(s, ctx, &mut out),
        N::AlterEnumStmt(s) if !s.old_val.is_empty() => hit(&mut out, "rename-object", format!(
            "renames value '{}' of enum {} to '{}'; running code still reads and writes the old value",
            s.old_val, strings(&s.type_name).join("."), s.new_val
        )),
        N::AlterObjectSchemaStmt(s) => {
            let ot = Ot::try_from(s.object_type).unwrap_or(Ot::Undefined);
            let relation = matches!(ot, Ot::ObjectTable | Ot::ObjectForeignTable | Ot::ObjectView | Ot::ObjectMatview | Ot::ObjectSequence);
            let other = matches!(ot, Ot::ObjectFunction | Ot::ObjectProcedure | Ot::ObjectRoutine | Ot::ObjectType | Ot::ObjectDomain);
            if (relation && !ctx.fresh_rv(s.relation.as_ref())) || other {
                let name = if relation { rv_name(s.relation.as_ref()) } else { object_name(s.object.as_deref()) };
                hit(&mut out, "set-schema", format!(
                    "moves {name} to schema {}; running code still uses the old qualified name or search_path",
                    s.newschema
                ));
            }
        }
        N::TruncateStmt(s) => {
            let names: Vec<String> = s
                .relations
                .iter()
                .filter_map(|r| match r.node.as_ref() {
                    Some(N::RangeVar(rv)) if !ctx.fresh(&table_ref(rv)) => Some(table_ref(rv).to_string()),
                    _ => None,
                })
                .collect();
            if !names.is_empty() {
                hit(&mut out, "truncate", format!(
                    "TRUNCATE {} deletes every row the running code may still need, under an ACCESS EXCLUSIVE lock",
                    names.join(", ")
                ));
            }
        }
        N::DeleteStmt(s) if s.where_clause.is_none() && !ctx.fresh_rv(s.relation.as_ref()) => {
            let table = rv_name(s.relation.as_ref());
            hit(&mut out, "delete-without-where", format!(
                "DELETE without WHERE removes every row of {table}"
            ));
            // Contract accepts the finding above (no old code needs the rows); the single long
            // transaction is a hazard in both phases.
            hit(&mut out, "delete-in-one-transaction", format!(
                "DELETE without WHERE locks every row of {table} against application writes until the phase commits, and writes all of it to the WAL in one transaction"
            ));
        }
        N::UpdateStmt(s) if s.where_clause.is_none() && !ctx.fresh_rv(s.relation.as_ref()) => {
            hit(&mut out, "update-without-where", format!(
                "UPDATE without WHERE rewrites every row of {} and keeps each one locked against application writes until the phase commits",
                rv_name(s.relation.as_ref())
            ));
        }
        N::VacuumStmt(s) if s.is_vacuumcmd && has_option(&s.options, "full") => {
            hit(&mut out, "vacuum-full", "VACUUM FULL rewrites each table under an ACCESS EXCLUSIVE lock; reads and writes wait until it finishes".into());
        }
        N::ClusterStmt(s) => {
            let what = if s.relation.is_some() { rv_name(s.relation.as_ref()) } else { "every previously clustered table".into() };
            hit(&mut out, "cluster", format!(
                "CLUSTER rewrites {what} under an ACCESS EXCLUSIVE lock; reads and writes wait until it finishes"
            ));
        }
        N::ReindexStmt(s) if !has_option(&s.params, "concurrently") => {
            let what = s
                .relation
                .as_ref()
                .map(|rv| table_ref(rv).to_string())
                .unwrap_or_else(|| s.name.clone());
            hit(&mut out, "reindex-non-concurrently", format!(
                "REINDEX of {what} without CONCURRENTLY blocks writes (and reads that use the index) until it finishes"
            ));
        }
        N::LockStmt(s) => {
            let names: Vec<String> = s
                .relations
                .iter()
                .filter_map(|r| match r.node.as_ref() {
                    Some(N::RangeVar(rv)) => Some(table_ref(rv).to_string()),
                    _ => None,
                })
                .collect();
            hit(&mut out, "lock-table", format!(
                "LOCK TABLE {} holds an explicit lock for the rest of the phase's transaction",
                names.join(", ")
            ));
        }
        N::RefreshMatViewStmt(s) if !s.concurrent => hit(&mut out, "refresh-matview-non-concurrently", format!(
            "REFRESH MATERIALIZED VIEW {} blocks every reader of the view until it finishes",
            rv_name(s.relation.as_ref())
        )),
        _ => {}
    }
    out
}

fn alter_table(s: &pb::AlterTableStmt, ctx: &Ctx, out: &mut Vec<Hit>) {
    if ctx.fresh_rv(s.relation.as_ref()) {
        return;
    }
    let t = rv_name(s.relation.as_ref());
    for cmd in &s.cmds {
        let Some(N::AlterTableCmd(c)) = cmd.node.as_ref() else {
            continue;
        };
        let def = c.def.as_deref().and_then(|d| d.node.as_ref());
        match At::try_from(c.subtype).unwrap_or(At::Undefined) {
            At::AtDropColumn => hit(out, "drop-column", format!(
                "drops column {t}.{}, which the code running now may still read or write", c.name
            )),
            At::AtAlterColumnType => {
                let ty = match def {
                    Some(N::ColumnDef(cd)) => cd.type_name.as_ref().map(type_name).unwrap_or_default(),
                    _ => String::new(),
                };
                hit(out, "change-column-type", format!(
                    "changes the type of {t}.{} to {ty}; the code running now reads and writes the old type", c.name
                ));
                hit(out, "column-type-rewrite", format!(
                    "changing the type of {t}.{} rewrites the table and its indexes under an ACCESS EXCLUSIVE lock unless the types are binary compatible", c.name
                ));
            }
            At::AtSetNotNull => hit(out, "set-not-null", format!(
                "makes {t}.{} NOT NULL: inserts from running code that omit it fail, and the whole table is scanned under an ACCESS EXCLUSIVE lock", c.name
            )),
            At::AtDropNotNull => hit(out, "drop-not-null", format!(
                "drops NOT NULL from {t}.{}; the code running now may not expect NULLs in it", c.name
            )),
            At::AtColumnDefault if def.is_none() => hit(out, "drop-default", format!(
                "drops the default of {t}.{}; inserts from running code that omit the column get NULL or fail", c.name
            )),
            At::AtAddColumn => {
                if let Some(N::ColumnDef(cd)) = def {
                    new_column(&t, cd, out);
                }
            }
            At::AtAddConstraint => {
                if let Some(N::Constraint(k)) = def {
                    add_constraint(&t, k, out);
                }
            }
            At::AtSetTableSpace => hit(out, "table-rewrite", format!("SET TABLESPACE copies {t} under an ACCESS EXCLUSIVE lock")),
            At::AtSetLogged | At::AtSetUnLogged => hit(out, "table-rewrite", format!("SET LOGGED/UNLOGGED rewrites {t} under an ACCESS EXCLUSIVE lock")),
            At::AtSetAccessMethod => hit(out, "table-rewrite", format!("SET ACCESS METHOD rewrites {t} under an ACCESS EXCLUSIVE lock")),
            _ => {}
        }
    }
}

fn type_name(t: &pb::TypeName) -> String {
    let names = strings(&t.names);
    // Built-in types are spelled pg_catalog.int4 etc. by the parser; show the short name.
    match names.as_slice() {
        [schema, name] if schema == "pg_catalog" => name.clone(),
        _ => names.join("."),
    }
}

fn new_column(t: &str, cd: &pb::ColumnDef, out: &mut Vec<Hit>) {
    let col = format!("{t}.{}", cd.colname);
    let mut not_null = cd.is_not_null;
    let mut default: Option<&pb::Node> = cd.raw_default.as_deref();
    let mut identity = !cd.identity.is_empty();
    let mut generated = !cd.generated.is_empty();
    let mut stored = false;
    for k in &cd.constraints {
        let Some(N::Constraint(k)) = k.node.as_ref() else {
            continue;
        };
        match Ct::try_from(k.contype).unwrap_or(Ct::Undefined) {
            Ct::ConstrNotnull => not_null = true,
            Ct::ConstrNull => not_null = false,
            Ct::ConstrDefault => default = k.raw_expr.as_deref(),
            Ct::ConstrIdentity => identity = true,
            Ct::ConstrGenerated => {
                generated = true;
                // PostgreSQL 18: generated columns are virtual unless STORED.
                stored = k.generated_kind != "v";
            }
            Ct::ConstrPrimary => {
                not_null = true;
                hit(out, "add-unique-constraint-without-index", format!(
                    "adding {col} as PRIMARY KEY builds its index under an ACCESS EXCLUSIVE lock"
                ));
            }
            Ct::ConstrUnique => hit(out, "add-unique-constraint-without-index", format!(
                "adding {col} as UNIQUE builds its index under an ACCESS EXCLUSIVE lock"
            )),
            Ct::ConstrCheck | Ct::ConstrForeign if !k.skip_validation => hit(out, "add-constraint-without-not-valid", format!(
                "the inline {} constraint on new column {col} is validated against every row under lock",
                if Ct::try_from(k.contype) == Ok(Ct::ConstrCheck) { "CHECK" } else { "REFERENCES" }
            )),
            _ => {}
        }
    }
    let serial = cd.type_name.as_ref().is_some_and(|tn| {
        matches!(
            strings(&tn.names)
                .last()
                .map(|s| s.to_ascii_lowercase())
                .as_deref(),
            Some("serial" | "serial2" | "serial4" | "serial8" | "smallserial" | "bigserial")
        )
    });
    if not_null && default.is_none() && !identity && !generated && !serial {
        hit(out, "add-not-null-column-without-default", format!(
            "adds NOT NULL column {col} without a default: it fails on a non-empty table, and inserts from the code running now would fail"
        ));
    }
    if serial || identity {
        hit(out, "add-column-rewrite", format!(
            "adding {col} as {} fills every existing row from a sequence, rewriting the table under an ACCESS EXCLUSIVE lock",
            if serial { "a serial column" } else { "an identity column" }
        ));
    } else if generated && stored {
        hit(out, "add-column-rewrite", format!(
            "adding the STORED generated column {col} computes it for every row, rewriting the table under an ACCESS EXCLUSIVE lock"
        ));
    } else if let Some(d) = default {
        if let Volatility::Volatile(why) = volatility(d) {
            hit(out, "add-column-rewrite", format!(
                "the default of {col} {why}, so adding it rewrites the table under an ACCESS EXCLUSIVE lock"
            ));
        }
    }
}

fn add_constraint(t: &str, k: &pb::Constraint, out: &mut Vec<Hit>) {
    let name = if k.conname.is_empty() {
        String::new()
    } else {
        format!(" {}", k.conname)
    };
    match Ct::try_from(k.contype).unwrap_or(Ct::Undefined) {
        Ct::ConstrCheck | Ct::ConstrForeign if !k.skip_validation => {
            let kind = if Ct::try_from(k.contype) == Ok(Ct::ConstrCheck) {
                "CHECK"
            } else {
                "FOREIGN KEY"
            };
            hit(out, "add-constraint-without-not-valid", format!(
                "ADD {kind}{name} on {t} without NOT VALID scans the whole table while holding a lock that blocks writes"
            ));
        }
        Ct::ConstrPrimary | Ct::ConstrUnique | Ct::ConstrExclusion if k.indexname.is_empty() => {
            let kind = match Ct::try_from(k.contype) {
                Ok(Ct::ConstrPrimary) => "PRIMARY KEY",
                Ok(Ct::ConstrUnique) => "UNIQUE",
                _ => "EXCLUDE",
            };
            hit(
                out,
                "add-unique-constraint-without-index",
                format!("ADD {kind}{name} on {t} builds its index under an ACCESS EXCLUSIVE lock"),
            );
        }
        // PostgreSQL 18: `ADD CONSTRAINT … NOT NULL col` is SET NOT NULL under another name.
        Ct::ConstrNotnull => {
            let col = strings(&k.keys).join(", ");
            hit(
                out,
                "set-not-null",
                format!("makes {t}.{col} NOT NULL: inserts from running code that omit it fail"),
            );
        }
        _ => {}
    }
}

/// Whether a column default is evaluated once (stored in the catalog, no rewrite since
/// PostgreSQL 11) or per row (rewrite).
enum Volatility {
    Constant,
    Volatile(String),
}

/// Functions known not to be volatile: their value is computed once for ALTER TABLE.
const NON_VOLATILE: &[&str] = &[
    "now",
    "statement_timestamp",
    "transaction_timestamp",
    "current_setting",
    "lower",
    "upper",
    "length",
    "coalesce",
    "concat",
    "concat_ws",
    "md5",
    "to_jsonb",
    "to_json",
    "jsonb_build_object",
    "json_build_object",
    "jsonb_build_array",
    "json_build_array",
    "array_fill",
    "make_interval",
    "make_date",
    "make_timestamp",
    "make_timestamptz",
    "to_timestamp",
    "to_date",
    "to_char",
    "btrim",
    "trim",
    "replace",
    "substr",
    "substring",
    "left",
    "right",
    "abs",
    "round",
    "floor",
    "ceil",
    "greatest",
    "least",
    "date_trunc",
    "timezone",
    "current_database",
    "current_schema",
];

/// Functions known to be volatile.
const VOLATILE: &[&str] = &[
    "random",
    "random_normal",
    "gen_random_uuid",
    "uuidv4",
    "uuidv7",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "clock_timestamp",
    "timeofday",
    "nextval",
    "setval",
    "txid_current",
    "pg_current_xact_id",
];

fn volatility(node: &pb::Node) -> Volatility {
    use Volatility::*;
    let all = |nodes: &[pb::Node]| {
        nodes
            .iter()
            .map(volatility)
            .find(|v| matches!(v, Volatile(_)))
            .unwrap_or(Constant)
    };
    match node.node.as_ref() {
        None | Some(N::AConst(_)) | Some(N::SqlvalueFunction(_)) => Constant,
        Some(N::TypeCast(c)) => c.arg.as_deref().map(volatility).unwrap_or(Constant),
        Some(N::AExpr(e)) => {
            let l = e.lexpr.as_deref().map(volatility).unwrap_or(Constant);
            if matches!(l, Volatile(_)) {
                return l;
            }
            e.rexpr.as_deref().map(volatility).unwrap_or(Constant)
        }
        Some(N::AArrayExpr(a)) => all(&a.elements),
        Some(N::CoalesceExpr(c)) => all(&c.args),
        Some(N::MinMaxExpr(m)) => all(&m.args),
        Some(N::FuncCall(f)) => {
            let name = strings(&f.funcname)
                .last()
                .map(|s| s.to_ascii_lowercase())
                .unwrap_or_default();
            if VOLATILE.contains(&name.as_str()) {
                Volatile(format!("calls {name}(), which is volatile"))
            } else if NON_VOLATILE.contains(&name.as_str()) {
                all(&f.args)
            } else {
                Volatile(format!(
                    "calls {name}(), which may be volatile (Phasegate cannot see the catalog)"
                ))
            }
        }
        Some(_) => Volatile("is an expression Phasegate cannot prove non-volatile".into()),
    }
}

fn drop(s: &pb::DropStmt, ctx: &Ctx, out: &mut Vec<Hit>) {
    let ot = Ot::try_from(s.remove_type).unwrap_or(Ot::Undefined);
    let names = |skip_fresh: bool| -> Vec<String> {
        s.objects
            .iter()
            .filter(|o| !(skip_fresh && list_ref(o).is_some_and(|t| ctx.fresh(&t))))
            .map(|o| object_name(Some(o)))
            .collect()
    };
    let (rule, what, names) = match ot {
        Ot::ObjectTable | Ot::ObjectForeignTable => ("drop-table", "table", names(true)),
        Ot::ObjectView | Ot::ObjectMatview => ("drop-view", "view", names(true)),
        Ot::ObjectSchema => ("drop-schema", "schema", names(false)),
        Ot::ObjectFunction | Ot::ObjectProcedure | Ot::ObjectRoutine | Ot::ObjectAggregate => {
            ("drop-function", "function", names(false))
        }
        Ot::ObjectType | Ot::ObjectDomain => ("drop-type", "type", names(false)),
        Ot::ObjectSequence => ("drop-sequence", "sequence", names(true)),
        Ot::ObjectIndex if !s.concurrent => {
            hit(out, "drop-index-non-concurrently", format!(
                "DROP INDEX {} takes an ACCESS EXCLUSIVE lock on its table; reads and writes queue behind it",
                names(false).join(", ")
            ));
            return;
        }
        _ => return,
    };
    if names.is_empty() {
        return;
    }
    let cascade = if s.behavior == pb::DropBehavior::DropCascade as i32 {
        " (CASCADE drops its dependents too)"
    } else {
        ""
    };
    hit(
        out,
        rule,
        format!(
            "drops {what} {}{cascade}, which the code running now may still use",
            names.join(", ")
        ),
    );
}

fn rename(s: &pb::RenameStmt, ctx: &Ctx, out: &mut Vec<Hit>) {
    let ot = Ot::try_from(s.rename_type).unwrap_or(Ot::Undefined);
    match ot {
        Ot::ObjectColumn if !ctx.fresh_rv(s.relation.as_ref()) => hit(
            out,
            "rename-column",
            format!(
                "renames column {}.{} to {}; the code running now still uses the old name",
                rv_name(s.relation.as_ref()),
                s.subname,
                s.newname
            ),
        ),
        Ot::ObjectTable | Ot::ObjectForeignTable if !ctx.fresh_rv(s.relation.as_ref()) => hit(
            out,
            "rename-table",
            format!(
                "renames table {} to {}; the code running now still uses the old name",
                rv_name(s.relation.as_ref()),
                s.newname
            ),
        ),
        Ot::ObjectView | Ot::ObjectMatview | Ot::ObjectSequence
            if !ctx.fresh_rv(s.relation.as_ref()) =>
        {
            hit(
                out,
                "rename-object",
                format!(
                    "renames {} to {}; the code running now still uses the old name",
                    rv_name(s.relation.as_ref()),
                    s.newname
                ),
            )
        }
        Ot::ObjectSchema => hit(
            out,
            "rename-object",
            format!(
                "renames schema {} to {}; the code running now still uses the old name",
                s.subname, s.newname
            ),
        ),
        Ot::ObjectFunction
        | Ot::ObjectProcedure
        | Ot::ObjectRoutine
        | Ot::ObjectType
        | Ot::ObjectDomain
        | Ot::ObjectAttribute => {
            let name = if s.relation.is_some() {
                format!("{}.{}", rv_name(s.relation.as_ref()), s.subname)
            } else {
                object_name(s.object.as_deref())
            };
            hit(
                out,
                "rename-object",
                format!(
                    "renames {name} to {}; the code running now still uses the old name",
                    s.newname
                ),
            )
        }
        _ => {}
    }
}

/// Locks taken by earlier statements of the transaction the next statement runs in, that block
/// application writes (SHARE and up) or reads too (ACCESS EXCLUSIVE), on tables that existed
/// before the phase: `(statement, table, mode)`.
#[derive(Default)]
pub(super) struct Held {
    locks: Vec<(usize, TableRef, LockMode)>,
}

/// `dml-after-ddl`: consecutive statements share one transaction (see `sql::COMMIT_MARKER`), so
/// a data change after DDL runs with the DDL's locks held. Call after [`check`] (which records
/// the tables the statement creates) for statement `index` (1-based).
pub(super) fn transaction_locks(
    s: &Statement,
    index: usize,
    node: &N,
    ctx: &Ctx,
    held: &mut Held,
) -> Vec<Hit> {
    let mut out = Vec::new();
    // PostgreSQL 12 and later: ALTER TYPE … ADD VALUE runs in the transaction.
    let own = s.tx.needs_own_transaction(120_000);
    if s.new_transaction || own {
        held.locks.clear();
    }
    if let Some(verb) = bulk_dml(node) {
        if let Some(strongest) = held.locks.iter().map(|(_, _, m)| *m).max() {
            let mut tables: Vec<String> = held
                .locks
                .iter()
                .filter(|(_, _, m)| *m == strongest)
                .map(|(_, t, _)| t.to_string())
                .collect();
            tables.dedup();
            let first = held
                .locks
                .iter()
                .find(|(_, _, m)| *m == strongest)
                .map(|(i, _, _)| *i)
                .unwrap_or(0);
            let blocked = if strongest == LockMode::AccessExclusive {
                "reads and writes"
            } else {
                "writes"
            };
            hit(&mut out, "dml-after-ddl", format!(
                "{verb} runs in the same transaction as statement {first}, which holds {} on {} until the phase commits: application {blocked} of {} wait for the whole {verb}",
                mode_name(strongest), tables.join(", "), tables.join(", ")
            ));
        }
        return out;
    }
    if own {
        return out;
    }
    for (t, m) in &s.locks {
        if *m >= LockMode::Share && !ctx.fresh(t) {
            held.locks.push((index, t.clone(), *m));
        }
    }
    out
}

/// The verb of a statement that may change many rows: UPDATE, DELETE, MERGE, INSERT … SELECT
/// … FROM (a single-row INSERT is quick).
fn bulk_dml(node: &N) -> Option<&'static str> {
    match node {
        N::UpdateStmt(_) => Some("UPDATE"),
        N::DeleteStmt(_) => Some("DELETE"),
        N::MergeStmt(_) => Some("MERGE"),
        N::InsertStmt(i) => match i.select_stmt.as_deref().and_then(|n| n.node.as_ref()) {
            Some(N::SelectStmt(sel)) if !sel.from_clause.is_empty() => Some("INSERT … SELECT"),
            _ => None,
        },
        _ => None,
    }
}

fn mode_name(m: LockMode) -> &'static str {
    match m {
        LockMode::AccessShare => "ACCESS SHARE",
        LockMode::RowShare => "ROW SHARE",
        LockMode::RowExclusive => "ROW EXCLUSIVE",
        LockMode::ShareUpdateExclusive => "SHARE UPDATE EXCLUSIVE",
        LockMode::Share => "SHARE",
        LockMode::ShareRowExclusive => "SHARE ROW EXCLUSIVE",
        LockMode::Exclusive => "EXCLUSIVE",
        LockMode::AccessExclusive => "ACCESS EXCLUSIVE",
    }
}
