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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum LockMode {
    AccessShare,
    RowShare,
    RowExclusive,
    ShareUpdateExclusive,
    Share,
    ShareRowExclusive,
    Exclusive,
    #[default]
    AccessExclusive,
}

impl LockMode {
    /// The `pg_locks.mode` spelling (e.g. `AccessExclusiveLock`).
    pub fn as_pg(self) -> &'static str {
        match self {
            LockMode::AccessShare => "AccessShareLock",
            LockMode::RowShare => "RowShareLock",
            LockMode::RowExclusive => "RowExclusiveLock",
            LockMode::ShareUpdateExclusive => "ShareUpdateExclusiveLock",
            LockMode::Share => "ShareLock",
            LockMode::ShareRowExclusive => "ShareRowExclusiveLock",
            LockMode::Exclusive => "ExclusiveLock",
            LockMode::AccessExclusive => "AccessExclusiveLock",
        }
    }

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
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
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

/// The tables of an `ALTER TABLE parent DETACH PARTITION partition CONCURRENTLY`, so a rerun can
/// tell from the catalog whether an earlier run finished it or left it pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachPartition {
    pub parent: TableRef,
    pub partition: TableRef,
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
    /// The lock expected on each of `tables`, in the same order: PostgreSQL's documented level
    /// per command and `ALTER TABLE` sub-command (the strongest over the sub-commands), e.g.
    /// SHARE UPDATE EXCLUSIVE for `VALIDATE CONSTRAINT` and SHARE ROW EXCLUSIVE on both tables of
    /// `ADD FOREIGN KEY`. Where the level is not known, the statement's strongest.
    pub locks: Vec<(TableRef, LockMode)>,
    /// Set for `CREATE INDEX CONCURRENTLY`, so a failed build can be detected and cleaned up.
    pub concurrent_index: Option<ConcurrentIndex>,
    /// Set for `DETACH PARTITION … CONCURRENTLY`: it commits by itself, so it cannot commit
    /// with the ledger row, and run again after it finished it fails.
    pub detach: Option<DetachPartition>,
    /// Set for `DROP INDEX CONCURRENTLY`/`REINDEX … CONCURRENTLY`; these use a weak lock and
    /// wait for older transactions by design, so no short `lock_timeout` is applied.
    pub concurrent: bool,
    /// Tables altered or dropped: PostgreSQL also locks tables the statement does not name
    /// (foreign-key peers, partitions, a partition's parent), found in the catalog before waiting.
    pub reaches: Vec<Reach>,
    /// A [`COMMIT_MARKER`] line precedes the statement: it starts a new transaction, so what
    /// follows (a backfill) does not run under the locks of the DDL before it.
    pub new_transaction: bool,
}

/// A comment line in a phase's SQL that ends the transaction before the next statement:
/// consecutive statements otherwise share one transaction.
pub const COMMIT_MARKER: &str = "-- phasegate:commit";

/// Whether the text between the previous statement and this one's first token holds a
/// [`COMMIT_MARKER`] line (`gap`: from the end of the previous statement, its `;` included;
/// `text`: the statement, which may start with its leading comments).
fn starts_new_transaction(gap: &str, text: &str) -> bool {
    let marker = |l: &str| {
        l.trim()
            .trim_start_matches(';')
            .trim()
            .eq_ignore_ascii_case(COMMIT_MARKER)
    };
    gap.lines().any(marker)
        || text
            .lines()
            .map(str::trim)
            .take_while(|l| l.is_empty() || l.starts_with("--"))
            .any(marker)
}

/// A table an `ALTER TABLE`, `DROP TABLE` or `DROP INDEX` changes, with what makes PostgreSQL
/// lock other tables too; resolved from the catalog by `executor::locks::add_implicit_targets`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reach {
    pub table: TableRef,
    /// The lock taken on `table`, and on its partitions and inheritance children, to which the
    /// command recurses.
    pub mode: LockMode,
    /// `table` names an index (`DROP INDEX`): the lock is taken on its table too.
    pub index: bool,
    /// `DROP TABLE`: every foreign key to or from it (their triggers live on the other table)
    /// and, for a partition, its parent.
    pub dropped: bool,
    /// Columns dropped or retyped: foreign keys on them are dropped or rebuilt.
    pub columns: Vec<String>,
    /// Constraints dropped: a foreign key among them locks its referenced table.
    pub constraints: Vec<String>,
    /// Constraints validated: a foreign key among them takes ROW SHARE on its referenced table.
    pub validated: Vec<String>,
    /// `ATTACH PARTITION` / `DETACH PARTITION` (not concurrently), `CREATE TABLE … PARTITION
    /// OF`: the default partition's constraint changes (ACCESS EXCLUSIVE on it); a new partition
    /// also gets clones of the parent's foreign keys (SHARE ROW EXCLUSIVE on the tables on their
    /// other side).
    pub partitions_change: bool,
    /// The command does not recurse to `table`'s partitions and children.
    pub only: bool,
    /// `TRUNCATE … CASCADE`: every table with a foreign key to `table` (recursively) is
    /// truncated too, under ACCESS EXCLUSIVE.
    pub cascade: bool,
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
    let mut prev_end = 0usize;
    for raw in &parsed.protobuf.stmts {
        let location = usize::try_from(raw.stmt_location)
            .unwrap_or(0)
            .min(sql.len());
        let gap = sql.get(prev_end.min(location)..location).unwrap_or("");
        prev_end = if raw.stmt_len <= 0 {
            sql.len()
        } else {
            location
                .saturating_add(usize::try_from(raw.stmt_len).unwrap_or(0))
                .min(sql.len())
        };
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        let index = out.len() + 1;
        let text = slice_statement(sql, raw.stmt_location, raw.stmt_len);
        let mut statement = classify(index, text, node)?;
        statement.new_transaction = index > 1 && starts_new_transaction(gap, &statement.sql);
        out.push(statement);
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
    let mut detach = None;
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
        // COMMENT ON TABLE/COLUMN takes SHARE UPDATE EXCLUSIVE on the table.
        N::CommentStmt(_) => {
            lock = LockMode::ShareUpdateExclusive;
        }
        N::AlterTableStmt(a) => {
            lock = alter_table_lock(a);
            // DETACH PARTITION … CONCURRENTLY commits in two steps of its own and refuses a
            // transaction block; like CREATE INDEX CONCURRENTLY it waits for older transactions
            // by design (it takes only SHARE UPDATE EXCLUSIVE).
            let detached = alter_cmds(a).find_map(|(t, c)| {
                match c.def.as_deref().and_then(|d| d.node.as_ref()) {
                    Some(N::PartitionCmd(p))
                        if t == protobuf::AlterTableType::AtDetachPartition && p.concurrent =>
                    {
                        Some(p.name.as_ref().map(range_var))
                    }
                    _ => None,
                }
            });
            if let Some(partition) = detached {
                tx = TxMode::NonTransactional;
                concurrent = true;
                detach = a
                    .relation
                    .as_ref()
                    .map(range_var)
                    .zip(partition)
                    .map(|(parent, partition)| DetachPartition { parent, partition });
            }
        }
        _ => {}
    }

    let tables = tables_of(&sql);
    let known = table_locks(node, lock);
    let locks: Vec<(TableRef, LockMode)> = tables
        .iter()
        .map(|t| (t.clone(), known.get(t).copied().unwrap_or(lock)))
        .collect();
    // The strongest over the tables (a statement naming none keeps its command's level).
    let lock = locks.iter().map(|(_, m)| *m).max().unwrap_or(lock);
    Ok(Statement {
        sql,
        kind,
        tx,
        tables,
        lock,
        locks,
        concurrent_index,
        detach,
        concurrent,
        reaches: reaches_of(node, lock),
        new_transaction: false,
    })
}

/// The sub-commands of an `ALTER TABLE` with their types.
fn alter_cmds(
    a: &protobuf::AlterTableStmt,
) -> impl Iterator<Item = (protobuf::AlterTableType, &protobuf::AlterTableCmd)> {
    a.cmds.iter().filter_map(|c| match c.node.as_ref() {
        Some(N::AlterTableCmd(c)) => Some((
            protobuf::AlterTableType::try_from(c.subtype)
                .unwrap_or(protobuf::AlterTableType::Undefined),
            c.as_ref(),
        )),
        _ => None,
    })
}

fn is_alter_table(a: &protobuf::AlterTableStmt) -> bool {
    matches!(
        protobuf::ObjectType::try_from(a.objtype),
        Ok(protobuf::ObjectType::ObjectTable | protobuf::ObjectType::ObjectForeignTable)
    )
}

/// The lock `ALTER TABLE` takes on its table: the strongest over its sub-commands, as in
/// PostgreSQL's `AlterTableGetLockLevel` (documented per sub-command on the ALTER TABLE page).
/// ACCESS EXCLUSIVE for anything not listed, and for `ALTER INDEX/VIEW/SEQUENCE/…`.
pub fn alter_table_lock(a: &protobuf::AlterTableStmt) -> LockMode {
    if !is_alter_table(a) {
        return LockMode::AccessExclusive;
    }
    alter_cmds(a)
        .map(|(t, c)| alter_cmd_lock(t, c))
        .max()
        // No sub-command at all cannot parse; be safe anyway.
        .unwrap_or(LockMode::AccessExclusive)
}

/// One `ALTER TABLE` sub-command's lock level.
pub fn alter_cmd_lock(t: protobuf::AlterTableType, c: &protobuf::AlterTableCmd) -> LockMode {
    use protobuf::AlterTableType as T;
    use LockMode::*;
    match t {
        // Performance and maintenance strategy only: never blocks reads or writes.
        T::AtSetStatistics
        | T::AtClusterOn
        | T::AtDropCluster
        | T::AtSetOptions
        | T::AtResetOptions
        | T::AtValidateConstraint
        | T::AtAttachPartition
        | T::AtDetachPartitionFinalize => ShareUpdateExclusive,
        T::AtDetachPartition => match c.def.as_deref().and_then(|d| d.node.as_ref()) {
            Some(N::PartitionCmd(p)) if p.concurrent => ShareUpdateExclusive,
            _ => AccessExclusive,
        },
        // Affect writes only (triggers fire on writes).
        T::AtEnableTrig
        | T::AtEnableAlwaysTrig
        | T::AtEnableReplicaTrig
        | T::AtEnableTrigAll
        | T::AtEnableTrigUser
        | T::AtDisableTrig
        | T::AtDisableTrigAll
        | T::AtDisableTrigUser => ShareRowExclusive,
        T::AtAddConstraint => match c.def.as_deref().and_then(|d| d.node.as_ref()) {
            // Foreign keys add triggers to both tables: as CREATE TRIGGER.
            Some(N::Constraint(k))
                if protobuf::ConstrType::try_from(k.contype)
                    == Ok(protobuf::ConstrType::ConstrForeign) =>
            {
                ShareRowExclusive
            }
            _ => AccessExclusive,
        },
        T::AtSetRelOptions | T::AtResetRelOptions => {
            let options: &[protobuf::Node] = match c.def.as_deref().and_then(|d| d.node.as_ref()) {
                Some(N::List(l)) => &l.items,
                _ => &[],
            };
            if !options.is_empty() && options.iter().all(reloption_is_light) {
                ShareUpdateExclusive
            } else {
                AccessExclusive
            }
        }
        _ => AccessExclusive,
    }
}

/// Storage parameters PostgreSQL changes under SHARE UPDATE EXCLUSIVE (`reloptions.c`): fill
/// factor, TOAST and autovacuum settings, `parallel_workers`. Others (`user_catalog_table`, a
/// view's options, …) take ACCESS EXCLUSIVE.
fn reloption_is_light(o: &protobuf::Node) -> bool {
    let Some(N::DefElem(d)) = o.node.as_ref() else {
        return false;
    };
    if !(d.defnamespace.is_empty() || d.defnamespace == "toast") {
        return false;
    }
    let name = d.defname.as_str();
    name.starts_with("autovacuum_")
        || matches!(
            name,
            "fillfactor"
                | "toast_tuple_target"
                | "parallel_workers"
                | "vacuum_index_cleanup"
                | "vacuum_truncate"
                | "log_autovacuum_min_duration"
        )
}

/// Locks known per table role, where a table's lock differs from the statement's own: the
/// referenced table of a foreign key (SHARE ROW EXCLUSIVE), a partition attached or detached, a
/// `CREATE TABLE`'s parent (SHARE UPDATE EXCLUSIVE; ACCESS EXCLUSIVE for `PARTITION OF`) and
/// `LIKE` source (ACCESS SHARE). A table in several roles gets the strongest.
fn table_locks(node: &N, lock: LockMode) -> std::collections::BTreeMap<TableRef, LockMode> {
    use LockMode::*;
    let mut out = std::collections::BTreeMap::new();
    let mut put = |t: TableRef, m: LockMode| {
        let e = out.entry(t).or_insert(m);
        *e = (*e).max(m);
    };
    match node {
        N::AlterTableStmt(a) => {
            if let Some(rel) = a.relation.as_ref() {
                put(range_var(rel), lock);
            }
            if !is_alter_table(a) {
                return out;
            }
            for (t, c) in alter_cmds(a) {
                let def = c.def.as_deref().and_then(|d| d.node.as_ref());
                match (t, def) {
                    (_, Some(N::Constraint(k))) => {
                        for pk in foreign_key_targets(std::slice::from_ref(k)) {
                            put(pk, ShareRowExclusive);
                        }
                    }
                    (_, Some(N::ColumnDef(col))) => {
                        for pk in foreign_key_targets_of(&col.constraints) {
                            put(pk, ShareRowExclusive);
                        }
                    }
                    (protobuf::AlterTableType::AtAttachPartition, Some(N::PartitionCmd(p))) => {
                        if let Some(r) = &p.name {
                            put(range_var(r), AccessExclusive);
                        }
                    }
                    (protobuf::AlterTableType::AtDetachPartition, Some(N::PartitionCmd(p))) => {
                        if let Some(r) = &p.name {
                            put(
                                range_var(r),
                                if p.concurrent {
                                    ShareUpdateExclusive
                                } else {
                                    AccessExclusive
                                },
                            );
                        }
                    }
                    (
                        protobuf::AlterTableType::AtDetachPartitionFinalize,
                        Some(N::PartitionCmd(p)),
                    ) => {
                        // It opens the partition with ACCESS EXCLUSIVE (pg_locks), then waits
                        // for older snapshots holding it.
                        if let Some(r) = &p.name {
                            put(range_var(r), AccessExclusive);
                        }
                    }
                    _ => {}
                }
            }
        }
        N::CreateStmt(c) => {
            if let Some(rel) = c.relation.as_ref() {
                put(range_var(rel), AccessExclusive);
            }
            for pk in foreign_key_targets_of(&c.constraints) {
                put(pk, ShareRowExclusive);
            }
            for e in &c.table_elts {
                match e.node.as_ref() {
                    Some(N::ColumnDef(col)) => {
                        for pk in foreign_key_targets_of(&col.constraints) {
                            put(pk, ShareRowExclusive);
                        }
                    }
                    Some(N::Constraint(k)) => {
                        for pk in foreign_key_targets(std::slice::from_ref(k)) {
                            put(pk, ShareRowExclusive);
                        }
                    }
                    Some(N::TableLikeClause(l)) => {
                        if let Some(r) = &l.relation {
                            put(range_var(r), AccessShare);
                        }
                    }
                    _ => {}
                }
            }
            let parent = if c.partbound.is_some() {
                AccessExclusive
            } else {
                ShareUpdateExclusive
            };
            for p in &c.inh_relations {
                if let Some(N::RangeVar(r)) = p.node.as_ref() {
                    put(range_var(r), parent);
                }
            }
        }
        _ => {}
    }
    out
}

fn foreign_key_targets_of(constraints: &[protobuf::Node]) -> Vec<TableRef> {
    let ks: Vec<protobuf::Constraint> = constraints
        .iter()
        .filter_map(|n| match n.node.as_ref() {
            Some(N::Constraint(k)) => Some((**k).clone()),
            _ => None,
        })
        .collect();
    foreign_key_targets(&ks)
}

fn foreign_key_targets(constraints: &[protobuf::Constraint]) -> Vec<TableRef> {
    constraints
        .iter()
        .filter(|k| {
            protobuf::ConstrType::try_from(k.contype) == Ok(protobuf::ConstrType::ConstrForeign)
        })
        .filter_map(|k| k.pktable.as_ref().map(range_var))
        .collect()
}

/// The tables an `ALTER TABLE`, `DROP TABLE` or `DROP INDEX` changes (see [`Reach`]); `lock`
/// is the statement's lock on the table it alters.
fn reaches_of(node: &N, lock: LockMode) -> Vec<Reach> {
    match node {
        N::AlterTableStmt(a) => {
            let Some(rel) = a.relation.as_ref() else {
                return Vec::new();
            };
            let table_cmds = is_alter_table(a);
            let mut reach = Reach {
                table: range_var(rel),
                mode: if table_cmds {
                    alter_table_lock(a)
                } else {
                    lock
                },
                ..Reach::default()
            };
            let mut out = Vec::new();
            for (t, c) in alter_cmds(a) {
                use protobuf::AlterTableType as T;
                match t {
                    T::AtDropColumn | T::AtAlterColumnType => reach.columns.push(c.name.clone()),
                    T::AtDropConstraint => reach.constraints.push(c.name.clone()),
                    T::AtValidateConstraint => reach.validated.push(c.name.clone()),
                    T::AtAttachPartition | T::AtDetachPartition if table_cmds => {
                        let Some(N::PartitionCmd(p)) =
                            c.def.as_deref().and_then(|d| d.node.as_ref())
                        else {
                            continue;
                        };
                        if !p.concurrent {
                            reach.partitions_change = true;
                        }
                        // Attaching checks the new partition (and its own partitions) under
                        // ACCESS EXCLUSIVE.
                        if let (T::AtAttachPartition, Some(r)) = (t, &p.name) {
                            out.push(Reach {
                                table: range_var(r),
                                mode: LockMode::AccessExclusive,
                                ..Reach::default()
                            });
                        }
                    }
                    _ => {}
                }
            }
            out.insert(0, reach);
            out
        }
        // TRUNCATE recurses to partitions and children (unless ONLY) and, with CASCADE, to the
        // tables referencing it.
        N::TruncateStmt(t) => t
            .relations
            .iter()
            .filter_map(|r| match r.node.as_ref() {
                Some(N::RangeVar(rv)) => Some(Reach {
                    table: range_var(rv),
                    mode: LockMode::AccessExclusive,
                    only: !rv.inh,
                    cascade: protobuf::DropBehavior::try_from(t.behavior)
                        == Ok(protobuf::DropBehavior::DropCascade),
                    ..Reach::default()
                }),
                _ => None,
            })
            .collect(),
        // A new partition changes its parent's partition bounds, not the other partitions.
        N::CreateStmt(c) if c.partbound.is_some() => c
            .inh_relations
            .iter()
            .filter_map(|p| match p.node.as_ref() {
                Some(N::RangeVar(r)) => Some(Reach {
                    table: range_var(r),
                    mode: LockMode::AccessExclusive,
                    partitions_change: true,
                    only: true,
                    ..Reach::default()
                }),
                _ => None,
            })
            .collect(),
        N::DropStmt(d) => {
            let (dropped, index) = match protobuf::ObjectType::try_from(d.remove_type) {
                Ok(protobuf::ObjectType::ObjectTable) => (true, false),
                Ok(protobuf::ObjectType::ObjectIndex) => (false, true),
                _ => return Vec::new(),
            };
            d.objects
                .iter()
                .filter_map(|o| match o.node.as_ref() {
                    Some(N::List(list)) => qualified_name(&list.items),
                    _ => None,
                })
                .map(|table| Reach {
                    table,
                    mode: lock,
                    index,
                    dropped,
                    ..Reach::default()
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
        if let Some(N::CommentStmt(c)) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
            let items = match c.object.as_deref().and_then(|o| o.node.as_ref()) {
                Some(N::List(list)) => &list.items[..],
                _ => &[],
            };
            match protobuf::ObjectType::try_from(c.objtype) {
                Ok(protobuf::ObjectType::ObjectTable) => out.extend(qualified_name(items)),
                Ok(protobuf::ObjectType::ObjectColumn) => out.extend(
                    items
                        .split_last()
                        .and_then(|(_, table)| qualified_name(table)),
                ),
                _ => {}
            }
        }
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
                LockMode::ShareRowExclusive,
            ),
            (
                "COMMENT ON TABLE users IS 'x'",
                Transactional,
                &["users"],
                LockMode::ShareUpdateExclusive,
            ),
            (
                "COMMENT ON COLUMN shop.users.email IS 'x'",
                Transactional,
                &["shop.users"],
                LockMode::ShareUpdateExclusive,
            ),
            (
                "ALTER TABLE events DETACH PARTITION events_2020 CONCURRENTLY",
                NonTransactional,
                &["events", "events_2020"],
                LockMode::ShareUpdateExclusive,
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
        use LockMode::*;
        let r =
            |table: &str, mode: LockMode, dropped: bool, columns: &[&str], constraints: &[&str]| {
                Reach {
                    table: t(table),
                    mode,
                    dropped,
                    columns: columns.iter().map(|c| c.to_string()).collect(),
                    constraints: constraints.iter().map(|c| c.to_string()).collect(),
                    ..Reach::default()
                }
            };
        assert_eq!(
            one("DROP TABLE legacy, shop.old").reaches,
            vec![
                r("legacy", AccessExclusive, true, &[], &[]),
                r("shop.old", AccessExclusive, true, &[], &[])
            ]
        );
        assert_eq!(
            one("ALTER TABLE orders DROP COLUMN user_id, ALTER COLUMN n TYPE bigint, DROP CONSTRAINT fk, ADD COLUMN x int").reaches,
            vec![r("orders", AccessExclusive, false, &["user_id", "n"], &["fk"])]
        );
        assert_eq!(
            one("ALTER TABLE orders VALIDATE CONSTRAINT orders_user_fk").reaches,
            vec![Reach {
                validated: vec!["orders_user_fk".into()],
                ..r("orders", ShareUpdateExclusive, false, &[], &[])
            }]
        );
        assert_eq!(
            one("DROP INDEX shop.i").reaches,
            vec![Reach {
                index: true,
                ..r("shop.i", AccessExclusive, false, &[], &[])
            }]
        );
        assert_eq!(
            one("DROP INDEX CONCURRENTLY i").reaches,
            vec![Reach {
                index: true,
                ..r("i", ShareUpdateExclusive, false, &[], &[])
            }]
        );
        assert_eq!(
            one("ALTER TABLE events ATTACH PARTITION events_2027 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')").reaches,
            vec![
                Reach { partitions_change: true, ..r("events", ShareUpdateExclusive, false, &[], &[]) },
                r("events_2027", AccessExclusive, false, &[], &[]),
            ]
        );
        assert!(one("CREATE TABLE x (id int)").reaches.is_empty());
        assert_eq!(
            one("TRUNCATE users, ONLY shop.orders CASCADE").reaches,
            vec![
                Reach {
                    cascade: true,
                    ..r("users", AccessExclusive, false, &[], &[])
                },
                Reach {
                    cascade: true,
                    only: true,
                    ..r("shop.orders", AccessExclusive, false, &[], &[])
                },
            ]
        );
        assert_eq!(
            one("TRUNCATE users").reaches,
            vec![r("users", AccessExclusive, false, &[], &[])]
        );
    }

    /// PostgreSQL's documented lock per command and `ALTER TABLE` sub-command (ALTER TABLE,
    /// CREATE INDEX, CREATE TRIGGER, COMMENT pages; `AlterTableGetLockLevel` in tablecmds.c),
    /// per table: the strongest over the sub-commands of one statement.
    #[test]
    fn lock_mode_table() {
        use LockMode::*;
        let cases: &[(&str, &[(&str, LockMode)])] = &[
            ("ALTER TABLE orders VALIDATE CONSTRAINT orders_user_fk", &[("orders", ShareUpdateExclusive)]),
            (
                "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID",
                &[("orders", ShareRowExclusive), ("users", ShareRowExclusive)],
            ),
            (
                "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (user_id) REFERENCES shop.users",
                &[("orders", ShareRowExclusive), ("shop.users", ShareRowExclusive)],
            ),
            // A self-reference: one table, one lock.
            ("ALTER TABLE t ADD FOREIGN KEY (parent) REFERENCES t (id) NOT VALID", &[("t", ShareRowExclusive)]),
            (
                "ALTER TABLE orders ADD COLUMN user_id bigint REFERENCES users (id)",
                &[("orders", AccessExclusive), ("users", ShareRowExclusive)],
            ),
            // The strongest sub-command wins on the altered table.
            (
                "ALTER TABLE orders VALIDATE CONSTRAINT a, ALTER COLUMN n SET STATISTICS 500",
                &[("orders", ShareUpdateExclusive)],
            ),
            (
                "ALTER TABLE orders VALIDATE CONSTRAINT a, ADD CONSTRAINT fk FOREIGN KEY (u) REFERENCES users NOT VALID",
                &[("orders", ShareRowExclusive), ("users", ShareRowExclusive)],
            ),
            ("ALTER TABLE orders VALIDATE CONSTRAINT a, ADD COLUMN x int", &[("orders", AccessExclusive)]),
            ("ALTER TABLE orders ALTER COLUMN n SET STATISTICS 500", &[("orders", ShareUpdateExclusive)]),
            ("ALTER TABLE orders ALTER COLUMN n SET (n_distinct = 100)", &[("orders", ShareUpdateExclusive)]),
            ("ALTER TABLE orders ALTER COLUMN n RESET (n_distinct)", &[("orders", ShareUpdateExclusive)]),
            ("ALTER TABLE orders CLUSTER ON orders_pkey", &[("orders", ShareUpdateExclusive)]),
            ("ALTER TABLE orders SET WITHOUT CLUSTER", &[("orders", ShareUpdateExclusive)]),
            (
                "ALTER TABLE orders SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01, toast.autovacuum_enabled = false)",
                &[("orders", ShareUpdateExclusive)],
            ),
            ("ALTER TABLE orders RESET (parallel_workers)", &[("orders", ShareUpdateExclusive)]),
            ("ALTER TABLE orders SET (user_catalog_table = true)", &[("orders", AccessExclusive)]),
            ("ALTER TABLE orders SET (fillfactor = 70, user_catalog_table = true)", &[("orders", AccessExclusive)]),
            ("ALTER TABLE orders DISABLE TRIGGER orders_audit", &[("orders", ShareRowExclusive)]),
            ("ALTER TABLE orders ENABLE ALWAYS TRIGGER orders_audit", &[("orders", ShareRowExclusive)]),
            ("ALTER TABLE orders ENABLE RULE r", &[("orders", AccessExclusive)]),
            (
                "ALTER TABLE events ATTACH PARTITION events_2027 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')",
                &[("events", ShareUpdateExclusive), ("events_2027", AccessExclusive)],
            ),
            (
                "ALTER TABLE events DETACH PARTITION events_2020",
                &[("events", AccessExclusive), ("events_2020", AccessExclusive)],
            ),
            (
                // The partition is opened with ACCESS EXCLUSIVE (pg_locks, PostgreSQL 15).
                "ALTER TABLE events DETACH PARTITION events_2020 FINALIZE",
                &[("events", ShareUpdateExclusive), ("events_2020", AccessExclusive)],
            ),
            // Everything else ALTER TABLE does takes ACCESS EXCLUSIVE.
            ("ALTER TABLE orders ADD COLUMN x int", &[("orders", AccessExclusive)]),
            ("ALTER TABLE orders DROP COLUMN x", &[("orders", AccessExclusive)]),
            ("ALTER TABLE orders ALTER COLUMN x TYPE bigint", &[("orders", AccessExclusive)]),
            ("ALTER TABLE orders ALTER COLUMN x SET DEFAULT 0", &[("orders", AccessExclusive)]),
            ("ALTER TABLE orders ALTER COLUMN x SET NOT NULL", &[("orders", AccessExclusive)]),
            ("ALTER TABLE orders ADD CONSTRAINT c CHECK (x > 0) NOT VALID", &[("orders", AccessExclusive)]),
            ("ALTER TABLE orders ADD CONSTRAINT u UNIQUE USING INDEX i", &[("orders", AccessExclusive)]),
            ("ALTER TABLE orders ADD PRIMARY KEY (id)", &[("orders", AccessExclusive)]),
            ("ALTER TABLE orders DROP CONSTRAINT fk", &[("orders", AccessExclusive)]),
            ("ALTER TABLE orders ALTER COLUMN x SET STORAGE EXTERNAL", &[("orders", AccessExclusive)]),
            ("ALTER TABLE orders OWNER TO someone", &[("orders", AccessExclusive)]),
            ("ALTER TABLE orders INHERIT base", &[("base", AccessExclusive), ("orders", AccessExclusive)]),
            // Not tables: as before, the strongest.
            ("ALTER INDEX i SET (fillfactor = 70)", &[("i", AccessExclusive)]),
            ("ALTER VIEW v SET (security_barrier = true)", &[("v", AccessExclusive)]),
            ("ALTER TABLE orders RENAME COLUMN a TO b", &[("orders", AccessExclusive)]),
            ("CREATE INDEX i ON orders (x)", &[("orders", Share)]),
            ("CREATE INDEX CONCURRENTLY i ON orders (x)", &[("orders", ShareUpdateExclusive)]),
            (
                "CREATE TRIGGER trg AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION f()",
                &[("orders", ShareRowExclusive)],
            ),
            ("COMMENT ON COLUMN orders.x IS 'y'", &[("orders", ShareUpdateExclusive)]),
            (
                "CREATE TABLE orders (id bigint, user_id bigint REFERENCES users, LIKE tmpl, FOREIGN KEY (id) REFERENCES other (id))",
                &[("orders", AccessExclusive), ("other", ShareRowExclusive), ("tmpl", AccessShare), ("users", ShareRowExclusive)],
            ),
            (
                "CREATE TABLE events_2028 PARTITION OF events FOR VALUES FROM ('2028-01-01') TO ('2029-01-01')",
                &[("events", AccessExclusive), ("events_2028", AccessExclusive)],
            ),
            ("CREATE TABLE child () INHERITS (base)", &[("base", ShareUpdateExclusive), ("child", AccessExclusive)]),
            ("ANALYZE orders", &[("orders", ShareUpdateExclusive)]),
            ("UPDATE orders SET x = 1", &[("orders", RowExclusive)]),
            ("DROP TABLE orders", &[("orders", AccessExclusive)]),
        ];
        for (sql, want) in cases {
            let s = one(sql);
            let want: Vec<(TableRef, LockMode)> = want.iter().map(|(n, m)| (t(n), *m)).collect();
            assert_eq!(s.locks, want, "locks of {sql}");
            assert_eq!(
                Some(s.lock),
                want.iter().map(|(_, m)| *m).max(),
                "strongest lock of {sql}"
            );
        }
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
    fn a_concurrent_detach_names_its_parent_and_partition() {
        let s = one("ALTER TABLE shop.events DETACH PARTITION shop.\"Events 1\" CONCURRENTLY");
        assert_eq!(
            s.detach,
            Some(DetachPartition {
                parent: t("shop.events"),
                partition: t("shop.Events 1"),
            })
        );
        // Only the concurrent form needs it: the others commit with the ledger.
        assert_eq!(
            one("ALTER TABLE events DETACH PARTITION events_1").detach,
            None
        );
        assert_eq!(
            one("ALTER TABLE events DETACH PARTITION events_1 FINALIZE").detach,
            None
        );
    }

    #[test]
    fn commit_marker_starts_a_new_transaction() {
        let v = parse_phase(
            "-- phasegate:commit\nALTER TABLE a ADD x int;\n  -- phasegate:commit  \n-- backfill\nUPDATE a SET x = 1 WHERE x IS NULL; SELECT 1; -- phasegate:commit\nSELECT 2; /* -- phasegate:commit */ SELECT 3",
        )
        .expect("parses");
        let marks: Vec<bool> = v.iter().map(|s| s.new_transaction).collect();
        // The first statement starts a transaction anyway; a marker after a statement on the
        // same line belongs to the next one.
        assert_eq!(marks, vec![false, true, false, true, false]);
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
        for m in all {
            assert_eq!(LockMode::from_pg(m.as_pg()), Some(m));
        }
    }

    /// The table of "Conflicting Lock Modes" in the PostgreSQL manual (explicit locking), row by
    /// row: X marks a conflict.
    #[test]
    fn lock_conflicts_match_the_manual() {
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
        let manual = [
            ".......X", // ACCESS SHARE
            "......XX", // ROW SHARE
            "....XXXX", // ROW EXCLUSIVE
            "...XXXXX", // SHARE UPDATE EXCLUSIVE
            "..XX.XXX", // SHARE
            "..XXXXXX", // SHARE ROW EXCLUSIVE
            ".XXXXXXX", // EXCLUSIVE
            "XXXXXXXX", // ACCESS EXCLUSIVE
        ];
        for (a, row) in all.iter().zip(manual) {
            for (b, cell) in all.iter().zip(row.chars()) {
                assert_eq!(a.conflicts_with(*b), cell == 'X', "{a:?} vs {b:?}");
            }
        }
    }
}
