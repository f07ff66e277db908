//! Production table sizes (`--stats FILE`) and the duration estimates drawn from them.
//!
//! The file is CSV with a header line, as `psql --csv` writes it:
//! `schema,table,rows,table_bytes,index_bytes` (extra columns are ignored, order is free).
//! `examples/plan/table-stats.sql` is the query that produces it from `pg_class`.

use std::collections::HashMap;
use std::path::Path;

use super::PlanError;

/// One table's size in production.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TableSize {
    pub rows: i64,
    pub table_bytes: i64,
    pub index_bytes: i64,
}

/// Sizes by `schema.table`, and the rates estimates assume.
#[derive(Debug, Clone)]
pub struct Stats {
    tables: HashMap<String, TableSize>,
    /// Bytes per second the server reads or writes while scanning, sorting or rewriting.
    pub bytes_per_second: f64,
    /// Rows per second a backfill fills.
    pub backfill_rows_per_second: f64,
}

/// How long a statement may take, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub seconds: f64,
    /// E.g. `rewrites public.users: 1.2 GiB table + 300 MiB indexes at 100 MiB/s`.
    pub basis: String,
}

/// What a statement does to a table that costs time proportional to its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Writes the table and all its indexes anew.
    Rewrite,
    /// Reads the table and sorts into a new index.
    IndexBuild,
    /// Reads the whole table (validating a constraint, SET NOT NULL).
    Scan,
    /// Fills every row in batches.
    Backfill,
}

impl Stats {
    pub fn parse(text: &str, bytes_per_second: f64, rows_per_second: f64) -> Result<Stats, String> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header = csv_fields(lines.next().ok_or("the file is empty")?);
        let col = |name: &str| {
            header
                .iter()
                .position(|h| h.trim() == name)
                .ok_or(format!("no column {name:?} in the header (expected schema,table,rows,table_bytes,index_bytes)"))
        };
        let (s, t, r, tb, ib) = (
            col("schema")?,
            col("table")?,
            col("rows")?,
            col("table_bytes")?,
            col("index_bytes")?,
        );
        let mut tables = HashMap::new();
        for (i, line) in lines.enumerate() {
            let f = csv_fields(line);
            let get = |c: usize| f.get(c).map(|v| v.trim()).unwrap_or("");
            let num = |c: usize| -> Result<i64, String> {
                let v = get(c);
                // reltuples is a float (-1 when never analysed).
                v.parse::<f64>()
                    .map(|n| n.max(0.0) as i64)
                    .map_err(|_| format!("line {}: {v:?} is not a number", i + 2))
            };
            let size = TableSize {
                rows: num(r)?,
                table_bytes: num(tb)?,
                index_bytes: num(ib)?,
            };
            tables.insert(format!("{}.{}", get(s), get(t)), size);
        }
        Ok(Stats {
            tables,
            bytes_per_second,
            backfill_rows_per_second: rows_per_second,
        })
    }

    pub fn read(
        path: &Path,
        bytes_per_second: f64,
        rows_per_second: f64,
    ) -> Result<Stats, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|e| PlanError::Input {
            file: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Stats::parse(&text, bytes_per_second, rows_per_second).map_err(|message| PlanError::Input {
            file: path.display().to_string(),
            message,
        })
    }

    pub fn get(&self, table: &str) -> Option<TableSize> {
        self.tables.get(table).copied()
    }

    /// The estimate for `work` on `table` (`schema.table`); `None` without sizes for it.
    pub fn estimate(&self, work: Work, table: &str) -> Option<Estimate> {
        let t = self.get(table)?;
        let rate = mib(self.bytes_per_second as i64);
        let (seconds, basis) = match work {
            Work::Rewrite => (
                (t.table_bytes + t.index_bytes) as f64 / self.bytes_per_second,
                format!(
                    "rewrites {table}: {} table + {} indexes at {rate}/s",
                    mib(t.table_bytes),
                    mib(t.index_bytes)
                ),
            ),
            Work::IndexBuild => (
                t.table_bytes as f64 / self.bytes_per_second,
                format!(
                    "builds an index on {table}: reads {} at {rate}/s",
                    mib(t.table_bytes)
                ),
            ),
            Work::Scan => (
                t.table_bytes as f64 / self.bytes_per_second,
                format!("scans {table}: {} at {rate}/s", mib(t.table_bytes)),
            ),
            Work::Backfill => (
                t.rows as f64 / self.backfill_rows_per_second,
                format!(
                    "fills {} rows of {table} at {} rows/s",
                    t.rows, self.backfill_rows_per_second as i64
                ),
            ),
        };
        Some(Estimate { seconds, basis })
    }
}

/// `1.2 GiB`, `300 MiB`, `12 KiB`.
fn mib(bytes: i64) -> String {
    let b = bytes as f64;
    const K: f64 = 1024.0;
    if b >= K * K * K {
        format!("{:.1} GiB", b / (K * K * K))
    } else if b >= K * K {
        format!("{:.0} MiB", b / (K * K))
    } else {
        format!("{:.0} KiB", b / K)
    }
}

/// `0.2 s`, `45 s`, `12 min`, `3.5 h`.
pub fn human_seconds(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.1} s")
    } else if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

/// Fields of one CSV line (double quotes, `""` inside quotes).
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "schema,table,rows,table_bytes,index_bytes\npublic,users,1000000,1073741824,268435456\n\"public\",\"odd,name\",-1,0,0\n";

    #[test]
    fn parses_psql_csv_and_estimates() {
        let s = Stats::parse(CSV, 100.0 * 1024.0 * 1024.0, 5000.0).unwrap();
        assert_eq!(s.get("public.users").unwrap().rows, 1_000_000);
        assert_eq!(s.get("public.odd,name").unwrap().rows, 0);
        let e = s.estimate(Work::Rewrite, "public.users").unwrap();
        assert!((e.seconds - 12.8).abs() < 0.01, "{e:?}");
        assert!(
            e.basis.contains("1.0 GiB table + 256 MiB indexes"),
            "{}",
            e.basis
        );
        assert_eq!(
            s.estimate(Work::Backfill, "public.users").unwrap().seconds,
            200.0
        );
        assert!(s.estimate(Work::Scan, "public.missing").is_none());
    }

    #[test]
    fn names_a_missing_column() {
        let e = Stats::parse("schema,table,rows\n", 1.0, 1.0).unwrap_err();
        assert!(e.contains("table_bytes"), "{e}");
    }
}
