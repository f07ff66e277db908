//! Lock handling: the per-database advisory lock that serialises migrations, and lock-aware
//! waiting, which keeps the executor out of the lock queue while an older transaction holds a
//! table it needs (queueing there would block every application query behind it).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::waits::{Kind, Waits};
use crate::sql::{LockMode, Reach, Statement, TableRef};

/// `pg_advisory_lock(int4, int4)` key: "PHAG" and 1. Advisory locks are per database.
pub const ADVISORY_CLASS: i32 = 0x5048_4147;
pub const ADVISORY_OBJ: i32 = 1;

/// The advisory key of one tenant schema's runs (see [`super::fleet`]): tenants of one database
/// apply at once, each serialised only with runs of the same schema (a collision only
/// serialises two tenants). Never [`ADVISORY_OBJ`].
pub fn tenant_advisory_obj(schema: &str) -> i32 {
    // FNV-1a: stable across processes and versions, unlike the std hasher.
    let h = schema.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    2 + (h % 0x3fff_fff0) as i32
}

/// Default of [`Patience::young`]: transactions younger than this are ordinary short
/// application work: attempting with a short `lock_timeout` costs them at most that long. Older
/// ones are waited out.
pub const YOUNG_TRANSACTION: Duration = Duration::from_millis(30);
const POLL: Duration = Duration::from_millis(20);

/// Another backend in the way, for messages and logs (no query text: it may hold user data).
#[derive(Debug, Clone, PartialEq)]
pub struct Blocker {
    pub pid: i32,
    pub table: String,
    pub mode: String,
    pub granted: bool,
    pub xact_ms: f64,
    pub state: String,
    pub application: String,
    /// The lock we will request on the table, which conflicts with `mode`.
    pub want: LockMode,
}

impl std::fmt::Display for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} ({}{}) {} {} on {}, transaction open for {:.1} s; we need {}",
            self.pid,
            if self.application.is_empty() {
                "no application_name"
            } else {
                &self.application
            },
            if self.state.is_empty() {
                String::new()
            } else {
                format!(", {}", self.state)
            },
            if self.granted { "holds" } else { "waits for" },
            self.mode,
            self.table,
            self.xact_ms / 1000.0,
            self.want.as_pg()
        )
    }
}

/// Takes the advisory lock in a new transaction of `on` (the run's connection, to create the
/// ledger or to wait until another migration is done; the guard, for a statement outside a
/// transaction block), trying
/// `pg_try_advisory_xact_lock` until `timeout`; returns the time waited, or the holder's pid.
/// The lock is transaction-scoped, so nothing outlives the transaction on a pooled server
/// connection (a session-level lock taken through a transaction pooler stays on the server
/// connection after the client has gone); [`advisory_unlock`] ends the transaction, as does
/// the connection closing. `idle` bounds how long the transaction may sit idle
/// (`idle_in_transaction_session_timeout`; zero: no bound).
pub async fn advisory_lock(
    on: &Client,
    obj: i32,
    timeout: Duration,
    idle: Duration,
    waits: &mut Waits,
) -> Result<Duration, AdvisoryError> {
    let start = Instant::now();
    let mut logged = false;
    // Constants only, in one simple query: no prepared statement, one round trip.
    let try_lock = format!(
        "BEGIN; SET LOCAL idle_in_transaction_session_timeout = '{}ms'; {}",
        idle.as_millis(),
        try_lock_sql(obj)
    );
    loop {
        let got = lock_granted(
            &on.simple_query(&try_lock)
                .await
                .map_err(AdvisoryError::Db)?,
        );
        if got {
            waits.done(Kind::AdvisoryLock);
            // The first try is no wait; only time spent behind another holder counts.
            return Ok(if logged {
                start.elapsed()
            } else {
                Duration::ZERO
            });
        }
        advisory_unlock(on).await;
        let holder = advisory_holder(on, obj).await.ok().flatten();
        if start.elapsed() >= timeout {
            return Err(AdvisoryError::Timeout {
                waited: start.elapsed(),
                holder,
            });
        }
        waits.announce(
            Kind::AdvisoryLock,
            holder.map(|p| p.to_string()).unwrap_or_default(),
            "another migration is running on this database; waiting for it to finish",
            &match holder {
                Some(p) => format!("backend pid {p} holds the Phasegate advisory lock"),
                None => "the Phasegate advisory lock is held".to_string(),
            },
        );
        logged = true;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The query that tries the advisory lock of `obj` in the current transaction, without
/// waiting (see [`lock_granted`]).
pub fn try_lock_sql(obj: i32) -> String {
    format!("SELECT pg_try_advisory_xact_lock({ADVISORY_CLASS}, {obj})")
}

/// Whether the replies of a simple query ending in [`try_lock_sql`] say the lock was taken.
pub fn lock_granted(replies: &[SimpleQueryMessage]) -> bool {
    replies
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::Row(r) if r.get(0) == Some("t")))
}

/// Ends the transaction [`advisory_lock`] began, and with it the lock (a no-op without one).
pub async fn advisory_unlock(on: &Client) {
    let _ = on.batch_execute("ROLLBACK").await;
}

async fn advisory_holder(client: &Client, obj: i32) -> Result<Option<i32>, tokio_postgres::Error> {
    let row = client
        .query_typed_opt(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND classid = $1::int::oid AND objid = $2::int::oid AND objsubid = 2 LIMIT 1",
            &[(&ADVISORY_CLASS, Type::INT4), (&obj, Type::INT4)],
        )
        .await?;
    Ok(row.and_then(|r| r.get(0)))
}

#[derive(Debug, thiserror::Error)]
pub enum AdvisoryError {
    #[error(transparent)]
    Db(tokio_postgres::Error),
    #[error("another migration holds the Phasegate lock on this database{}; gave up after {}",
        holder.map(|p| format!(" (backend pid {p})")).unwrap_or_default(), humantime::format_duration(Duration::from_secs(waited.as_secs())))]
    Timeout {
        waited: Duration,
        holder: Option<i32>,
    },
}

/// Tables and the strongest lock the statements will request on each.
pub fn lock_targets<'a>(
    statements: impl IntoIterator<Item = &'a Statement>,
) -> BTreeMap<TableRef, LockMode> {
    let mut out: BTreeMap<TableRef, LockMode> = BTreeMap::new();
    for s in statements {
        for (t, mode) in &s.locks {
            raise(&mut out, t.clone(), *mode);
        }
    }
    out
}

fn raise(targets: &mut BTreeMap<TableRef, LockMode>, t: TableRef, mode: LockMode) {
    let e = targets.entry(t).or_insert(mode);
    *e = (*e).max(mode);
}

/// Tables PostgreSQL locks that the statement does not name, from the catalog, each with the
/// lock it takes there:
/// - for a table altered or dropped, its partitions and inheritance children (the command
///   recurses to them, in its own mode); for `DROP INDEX`, the index's table (and its
///   partitions), in the statement's mode;
/// - for `DROP TABLE`, the parent of a partition and every foreign-key peer (the key's triggers
///   on the other table are dropped with it): ACCESS EXCLUSIVE;
/// - for dropped or retyped columns and dropped constraints, the other side of the foreign keys
///   among them: ACCESS EXCLUSIVE;
/// - for `VALIDATE CONSTRAINT` of a foreign key, its referenced table: ROW SHARE;
/// - for `ATTACH/DETACH PARTITION`, the default partition (ACCESS EXCLUSIVE) and, attaching,
///   the other side of the parent's foreign keys, which are cloned (SHARE ROW EXCLUSIVE);
/// - for `TRUNCATE`, partitions and children (unless `ONLY`) and, with `CASCADE`, every table
///   referencing it by a foreign key, recursively (ACCESS EXCLUSIVE).
///
/// `CREATE/DROP TRIGGER … ON t` and `… REFERENCES t` name their table and need nothing here.
/// Tables that do not exist yet (created earlier in the phase) add nothing.
///
/// Not resolved: what functions, `DO` blocks and triggers do when they run (opaque to a
/// parser); a statement naming no table at all is waited for by no one and relies on the short
/// `lock_timeout` with retries.
pub async fn add_implicit_targets(
    client: &Client,
    statements: &[Statement],
    targets: &mut BTreeMap<TableRef, LockMode>,
) -> Result<(), tokio_postgres::Error> {
    add_implicit_and_look(client, statements, targets, false)
        .await
        .map(|_| ())
}

/// [`add_implicit_targets`], and whether the targets are certainly free: `look` asks, in the
/// same query, whether any other backend (or prepared transaction) holds or awaits any lock on
/// the named targets at all. True only when that is not so and no statement reaches another
/// table: then [`wait_until_clear`] would find nothing to wait for, and need not look.
pub async fn add_implicit_and_look(
    client: &Client,
    statements: &[Statement],
    targets: &mut BTreeMap<TableRef, LockMode>,
    look: bool,
) -> Result<bool, tokio_postgres::Error> {
    let reaches: Vec<&Reach> = statements.iter().flat_map(|s| &s.reaches).collect();
    if reaches.is_empty() && (targets.is_empty() || !look) {
        // Nothing to resolve; no target at all is nothing to wait for.
        return Ok(look && targets.is_empty());
    }
    let named: Vec<String> = if look {
        targets.keys().map(qualified).collect()
    } else {
        Vec::new()
    };
    let (alone, locked) = first_look(client, &reaches, &named).await?;
    let mut free = !locked;
    for (reach, alone) in reaches.into_iter().zip(alone) {
        if alone {
            continue;
        }
        free = false;
        for (t, role) in implied_by(client, reach).await? {
            raise(targets, t, implied_mode(reach, &role));
        }
    }
    Ok(look && free)
}

/// One cheap query: for each reach, whether [`implied_by`] would find nothing for it (its table
/// is missing, or is an ordinary table with no partitions or inheritance children, no parent,
/// and no foreign key on either side; an index, for `DROP INDEX`, always asks) — that is most
/// tables, and the full query costs milliseconds of planning on the server each time, once per
/// tenant in a fleet run; and whether another backend has any lock on the `named` tables.
async fn first_look(
    client: &Client,
    reaches: &[&Reach],
    named: &[String],
) -> Result<(Vec<bool>, bool), tokio_postgres::Error> {
    let names: Vec<String> = reaches.iter().map(|r| qualified(&r.table)).collect();
    let row = client
        .query_typed_one(
            "WITH r AS (
                 SELECT u.ord, c.oid, c.relkind, c.relhassubclass
                   FROM unnest($1::text[]) WITH ORDINALITY AS u(name, ord)
                   LEFT JOIN pg_class c ON c.oid = to_regclass(u.name))
             SELECT ARRAY(
                      SELECT r.oid IS NULL
                             OR (r.relkind = 'r' AND NOT r.relhassubclass
                                 AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = r.oid)
                                 AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.contype = 'f'
                                                  AND (k.conrelid = r.oid OR k.confrelid = r.oid)))
                        FROM r ORDER BY r.ord),
                    EXISTS (SELECT 1 FROM pg_locks l
                             WHERE l.locktype = 'relation'
                               AND l.pid IS DISTINCT FROM pg_backend_pid()
                               AND l.relation IN (SELECT to_regclass(n) FROM unnest($2::text[]) AS n)
                               AND l.database = (SELECT oid FROM pg_database
                                                  WHERE datname = current_database()))",
            &[(&names, Type::TEXT_ARRAY), (&named, Type::TEXT_ARRAY)],
        )
        .await?;
    let alone: Vec<bool> = row.get(0);
    let alone = reaches
        .iter()
        .zip(alone.into_iter().chain(std::iter::repeat(false)))
        .map(|(reach, alone)| alone && !reach.index)
        .collect();
    Ok((alone, row.get(1)))
}

/// `t` quoted for `to_regclass`, unqualified when the statement leaves it to `search_path`.
fn qualified(t: &TableRef) -> String {
    if t.schema.is_empty() {
        quote_ident(&t.name)
    } else {
        format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name))
    }
}

/// The lock PostgreSQL takes on a table found by [`implied_by`] in the role it names.
pub fn implied_mode(reach: &Reach, role: &str) -> LockMode {
    match role {
        // Recursion to partitions and children, or the table of a dropped index.
        "tree" => reach.mode,
        "validated" => LockMode::RowShare,
        "cloned" => LockMode::ShareRowExclusive,
        // "parent", "fk", "default", and anything unforeseen.
        _ => LockMode::AccessExclusive,
    }
}

async fn implied_by(
    client: &Client,
    reach: &Reach,
) -> Result<Vec<(TableRef, String)>, tokio_postgres::Error> {
    let name = qualified(&reach.table);
    let rows = client
        .query_typed(
            "WITH RECURSIVE named AS (SELECT to_regclass($1)::oid AS oid),
             root AS (SELECT CASE WHEN $5 THEN (SELECT indrelid FROM pg_index WHERE indexrelid = named.oid)
                                  ELSE named.oid END AS oid FROM named),
             tree AS (SELECT oid FROM root WHERE oid IS NOT NULL
                      UNION SELECT i.inhrelid FROM pg_inherits i JOIN tree ON i.inhparent = tree.oid
                       WHERE NOT $8),
             parents AS (SELECT i.inhparent AS oid FROM pg_inherits i JOIN root ON i.inhrelid = root.oid
                          WHERE $2),
             cols AS (SELECT attrelid, attnum FROM pg_attribute
                       WHERE attrelid IN (SELECT oid FROM tree) AND attname = ANY($3::text[])),
             fk AS (SELECT CASE WHEN c.conrelid IN (SELECT oid FROM tree) THEN c.confrelid
                                ELSE c.conrelid END AS oid
                      FROM pg_constraint c
                     WHERE c.contype = 'f'
                       AND (c.conrelid IN (SELECT oid FROM tree) OR c.confrelid IN (SELECT oid FROM tree))
                       AND ($2
                            OR (c.conname = ANY($4::text[]) AND c.conrelid IN (SELECT oid FROM tree))
                            OR EXISTS (SELECT 1 FROM cols
                                        WHERE (cols.attrelid = c.conrelid AND cols.attnum = ANY(c.conkey))
                                           OR (cols.attrelid = c.confrelid AND cols.attnum = ANY(c.confkey))))),
             validated AS (SELECT c.confrelid AS oid FROM pg_constraint c
                            WHERE c.contype = 'f' AND c.conname = ANY($6::text[])
                              AND c.conrelid IN (SELECT oid FROM tree)),
             dflt AS (SELECT p.partdefid AS oid FROM pg_partitioned_table p JOIN root ON p.partrelid = root.oid
                       WHERE $7 AND p.partdefid <> 0),
             cloned AS (SELECT CASE WHEN c.conrelid = root.oid THEN c.confrelid ELSE c.conrelid END AS oid
                          FROM pg_constraint c, root
                         WHERE $7 AND c.contype = 'f' AND (c.conrelid = root.oid OR c.confrelid = root.oid)),
             referencing AS (SELECT c.conrelid AS oid FROM pg_constraint c
                              WHERE $9 AND c.contype = 'f' AND c.confrelid IN (SELECT oid FROM tree)
                             UNION SELECT c.conrelid FROM pg_constraint c
                               JOIN referencing r ON c.confrelid = r.oid WHERE c.contype = 'f'),
             cascaded AS (SELECT oid FROM referencing
                          UNION SELECT i.inhrelid FROM pg_inherits i JOIN cascaded ON i.inhparent = cascaded.oid),
             found AS (SELECT oid, 'tree' AS role FROM tree
                       UNION ALL SELECT oid, 'parent' FROM parents
                       UNION ALL SELECT oid, 'fk' FROM fk
                       UNION ALL SELECT oid, 'validated' FROM validated
                       UNION ALL SELECT oid, 'default' FROM dflt
                       UNION ALL SELECT oid, 'cloned' FROM cloned
                       UNION ALL SELECT oid, 'cascade' FROM cascaded)
             SELECT DISTINCT n.nspname::text, r.relname::text, x.role
               FROM found x
               JOIN pg_class r ON r.oid = x.oid
               JOIN pg_namespace n ON n.oid = r.relnamespace
              WHERE x.oid IS DISTINCT FROM (SELECT oid FROM named)",
            &[
                (&name, Type::TEXT),
                (&reach.dropped, Type::BOOL),
                (&reach.columns, Type::TEXT_ARRAY),
                (&reach.constraints, Type::TEXT_ARRAY),
                (&reach.index, Type::BOOL),
                (&reach.validated, Type::TEXT_ARRAY),
                (&reach.partitions_change, Type::BOOL),
                (&reach.only, Type::BOOL),
                (&reach.cascade, Type::BOOL),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                TableRef {
                    schema: r.get(0),
                    name: r.get(1),
                },
                r.get(2),
            )
        })
        .collect())
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Current backends whose locks on the targets would make our request queue.
pub async fn blockers(
    client: &Client,
    targets: &BTreeMap<TableRef, LockMode>,
) -> Result<Vec<Blocker>, tokio_postgres::Error> {
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let schemas: Vec<String> = targets.keys().map(|t| t.schema.clone()).collect();
    let names: Vec<String> = targets.keys().map(|t| t.name.clone()).collect();
    let modes: Vec<LockMode> = targets.values().copied().collect();
    // Resolve names the way the statements will (search_path), then look at relation locks of
    // other backends; prepared transactions have no pid and count as infinitely old, and so do
    // sessions whose start time is hidden (no pg_read_all_stats: their state reads NULL too).
    // pg_locks and pg_stat_activity are not one snapshot: a visible session whose transaction
    // ended (or just began) between the two reads shows a lock and no xact_start. It is young,
    // not infinitely old — read as old it was marked a "long" session and waited for forever,
    // so a stream of short transactions starved the executor now and then.
    let rows = client
        .query_typed(
            "WITH t AS (
                 SELECT ord, to_regclass(CASE WHEN s = '' THEN quote_ident(n)
                                              ELSE quote_ident(s) || '.' || quote_ident(n) END) AS oid,
                        CASE WHEN s = '' THEN n ELSE s || '.' || n END AS label
                   FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(s, n, ord))
             SELECT t.ord::int, t.label, l.pid, l.mode, l.granted,
                    CASE WHEN a.xact_start IS NULL AND a.state IS NOT NULL THEN 0
                         ELSE coalesce(extract(epoch FROM clock_timestamp() - a.xact_start) * 1000, 1e9)
                    END::float8,
                    coalesce(a.state, ''), coalesce(a.application_name, ''),
                    a.backend_type,
                    CASE WHEN a.backend_type = 'autovacuum worker' THEN a.query END
               FROM pg_locks l
               JOIN t ON l.relation = t.oid
               LEFT JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'relation'
                AND l.pid IS DISTINCT FROM pg_backend_pid()
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[(&schemas, Type::TEXT_ARRAY), (&names, Type::TEXT_ARRAY)],
        )
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let ord: i32 = r.get(0);
        let Some(want) = usize::try_from(ord - 1).ok().and_then(|i| modes.get(i)) else {
            continue;
        };
        let mode: String = r.get(3);
        let Some(held) = LockMode::from_pg(&mode) else {
            continue;
        };
        if !want.conflicts_with(held) {
            continue;
        }
        if yields_to_ddl(r.get(8), r.get(9)) {
            continue;
        }
        out.push(Blocker {
            pid: r.get::<_, Option<i32>>(2).unwrap_or(0),
            table: r.get(1),
            mode,
            granted: r.get(4),
            xact_ms: r.get(5),
            state: r.get(6),
            application: r.get(7),
            want: *want,
        });
    }
    Ok(out)
}

/// Whether a lock holder gives way by itself: PostgreSQL cancels an autovacuum worker that
/// blocks a lock request (after `deadlock_timeout`, 1 s by default), except one run to prevent
/// transaction-id wraparound, which must finish. Waiting for a cancellable autovacuum can cost
/// minutes for nothing; the attempt pays at most `deadlock_timeout` in the queue instead (with a
/// `lock_timeout` shorter than that it times out before the cancel and retries). Without
/// `pg_read_all_stats` an autovacuum's `backend_type` and query are hidden, so it is waited for
/// like any other session.
pub fn yields_to_ddl(backend_type: Option<&str>, query: Option<&str>) -> bool {
    backend_type == Some("autovacuum worker")
        && query.is_some_and(|q| !q.contains("(to prevent wraparound)"))
}

/// The warning for the report when the executor's role cannot see other roles' sessions in
/// `pg_stat_activity` (no `pg_read_all_stats`; superusers have it). Their `xact_start`,
/// `backend_type` and query then read NULL / `<insufficient privilege>`: the lock wait counts
/// their transactions as old, cannot tell an autovacuum apart, and the database check waits out
/// their open transactions (see `dbcheck`). Safe, but it may wait longer than needed.
pub async fn visibility_warning(client: &Client) -> Result<Option<String>, tokio_postgres::Error> {
    let row = client
        .query_typed_one(
            "SELECT pg_has_role('pg_read_all_stats', 'USAGE'), current_user::text",
            &[],
        )
        .await?;
    let (privileged, role): (bool, String) = (row.get(0), row.get(1));
    Ok((!privileged).then(|| {
        format!(
            "role {role} lacks pg_read_all_stats: other roles' sessions show <insufficient privilege>, so their transactions count as old and are waited out, autovacuum is waited for, and the database check is conservative (GRANT pg_read_all_stats TO {role} for an exact view)"
        )
    }))
}

/// Which transactions the wait outside the lock queue waits for, and when it stops waiting for
/// a stream of short ones (issue 10, item 10). One per run: it remembers sessions.
#[derive(Debug, Clone)]
pub struct Patience {
    /// Transactions younger than this are ordinary short application work: attempting with a
    /// short `lock_timeout` costs them at most that long (`PHASEGATE_YOUNG_TRANSACTION`).
    pub young: Duration,
    /// After waiting this long with only transactions younger than `lock_timeout` in the way (a
    /// steady stream of short transactions that never leaves the table free), attempt anyway:
    /// the attempt costs the application at most `lock_timeout`
    /// (`PHASEGATE_LOCK_WAIT_ATTEMPT_AFTER`; zero never attempts past a blocker).
    pub attempt_after: Duration,
    /// The attempt's `lock_timeout` (zero: none, so never attempt past a blocker).
    pub lock_timeout: Duration,
    /// Sessions seen in a transaction older than `lock_timeout`: one that ends a long transaction
    /// and at once starts another is waited for even while the new one is young.
    pub long_sessions: HashSet<i32>,
}

impl Patience {
    pub fn new(young: Duration, attempt_after: Duration, lock_timeout: Duration) -> Patience {
        Patience {
            young,
            attempt_after,
            lock_timeout,
            long_sessions: HashSet::new(),
        }
    }

    /// Worth waiting for: a queued request, an old transaction, or any transaction of a
    /// session known for long ones.
    pub fn blocks(&self, b: &Blocker) -> bool {
        !b.granted
            || b.xact_ms >= self.young.as_secs_f64() * 1000.0
            || (b.pid != 0 && self.long_sessions.contains(&b.pid))
    }

    fn is_long(&self, b: &Blocker) -> bool {
        !self.lock_timeout.is_zero() && b.xact_ms >= self.lock_timeout.as_secs_f64() * 1000.0
    }

    /// After `waited`, whether to attempt past `blocking`: only short transactions (younger than
    /// `lock_timeout`, of sessions not known for long ones) are in the way. Never before
    /// `lock_timeout` has passed, so a transaction that was there when the wait began is old
    /// by then and still waited for.
    pub fn attempt_anyway(&self, waited: Duration, blocking: &[Blocker]) -> bool {
        !self.attempt_after.is_zero()
            && !self.lock_timeout.is_zero()
            && waited >= self.attempt_after.max(self.lock_timeout)
            && blocking
                .iter()
                .all(|b| !self.is_long(b) && !self.long_sessions.contains(&b.pid) && b.pid != 0)
    }
}

impl Default for Patience {
    fn default() -> Patience {
        Patience::new(
            YOUNG_TRANSACTION,
            Duration::from_secs(10),
            Duration::from_secs(2),
        )
    }
}

/// Polls until no conflicting lock worth waiting for ([`Patience::blocks`]) is held on the
/// targets, or only short transactions have been in the way for `attempt_after`
/// ([`Patience::attempt_anyway`]), or `budget` runs out (then returns the blockers still there).
/// Never queues for a lock itself.
pub async fn wait_until_clear(
    client: &Client,
    targets: &BTreeMap<TableRef, LockMode>,
    budget: Duration,
    waits: &mut Waits,
    patience: &mut Patience,
) -> Result<(Duration, Vec<Blocker>), tokio_postgres::Error> {
    let start = Instant::now();
    let mut logged = false;
    loop {
        let all = blockers(client, targets).await?;
        let long: Vec<i32> = all
            .iter()
            .filter(|b| patience.is_long(b) && b.pid != 0)
            .map(|b| b.pid)
            .collect();
        patience.long_sessions.extend(long);
        let blocking: Vec<Blocker> = all.into_iter().filter(|b| patience.blocks(b)).collect();
        let short_stream = patience.attempt_anyway(start.elapsed(), &blocking);
        if blocking.is_empty() || short_stream {
            waits.done(Kind::TableLock);
            if short_stream {
                tracing::warn!(
                    waited_ms = start.elapsed().as_millis() as u64,
                    transactions = blocking.len(),
                    "only short transactions in the way, never none: attempting anyway with lock_timeout"
                );
            } else if logged {
                tracing::info!(
                    waited_ms = start.elapsed().as_millis() as u64,
                    "tables are free, attempting"
                );
            }
            let waited = if logged {
                start.elapsed()
            } else {
                Duration::ZERO
            };
            return Ok((waited, Vec::new()));
        }
        if start.elapsed() >= budget {
            return Ok((start.elapsed(), blocking));
        }
        for b in &blocking {
            waits.announce(
                Kind::TableLock,
                format!("{} {} {}", b.pid, b.table, b.mode),
                "waiting outside the lock queue for an older transaction",
                &b.to_string(),
            );
        }
        logged = true;
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(pid: i32, xact_ms: f64) -> Blocker {
        Blocker {
            pid,
            table: "users".into(),
            mode: "AccessShareLock".into(),
            granted: true,
            xact_ms,
            state: String::new(),
            application: String::new(),
            want: LockMode::AccessExclusive,
        }
    }

    #[test]
    fn patience_with_short_and_long_transactions() {
        let s = Duration::from_secs;
        let mut p = Patience::new(Duration::from_millis(30), s(5), s(2));
        assert!(!p.blocks(&holder(1, 10.0)));
        assert!(p.blocks(&holder(1, 40.0)));
        assert!(p.blocks(&Blocker {
            granted: false,
            ..holder(1, 1.0)
        }));
        // A stream of short transactions: waited for, then attempted past after 5 s.
        let stream = [holder(1, 150.0), holder(2, 90.0)];
        assert!(!p.attempt_anyway(s(4), &stream));
        assert!(p.attempt_anyway(s(5), &stream));
        // A long transaction is never attempted past, nor a prepared one (no pid).
        assert!(!p.attempt_anyway(s(60), &[holder(1, 150.0), holder(3, 2500.0)]));
        assert!(!p.attempt_anyway(s(60), &[holder(0, 150.0)]));
        // A session known for long transactions: its next one is waited for while young.
        p.long_sessions.insert(3);
        assert!(p.blocks(&holder(3, 5.0)));
        assert!(!p.attempt_anyway(s(60), &[holder(3, 5.0)]));
        // Zero: never attempt past a blocker; nor without a lock_timeout.
        assert!(
            !Patience::new(Duration::from_millis(30), Duration::ZERO, s(2))
                .attempt_anyway(s(60), &stream)
        );
        assert!(
            !Patience::new(Duration::from_millis(30), s(5), Duration::ZERO)
                .attempt_anyway(s(60), &stream)
        );
    }

    #[test]
    fn cancellable_autovacuum_is_not_waited_for() {
        let av = Some("autovacuum worker");
        assert!(yields_to_ddl(av, Some("autovacuum: VACUUM public.users")));
        assert!(yields_to_ddl(
            av,
            Some("autovacuum: VACUUM ANALYZE public.users")
        ));
        assert!(yields_to_ddl(av, Some("autovacuum: ANALYZE public.users")));
        // Wraparound vacuums are never cancelled by PostgreSQL: wait for them.
        assert!(!yields_to_ddl(
            av,
            Some("autovacuum: VACUUM public.users (to prevent wraparound)")
        ));
        // Unknown query (hidden or missing): wait.
        assert!(!yields_to_ddl(av, None));
        // Hidden backend type (no pg_read_all_stats), clients, a manual VACUUM: wait.
        assert!(!yields_to_ddl(
            None,
            Some("autovacuum: VACUUM public.users")
        ));
        assert!(!yields_to_ddl(Some("client backend"), Some("VACUUM users")));
    }
}
