-- Table sizes for `phasegate plan --stats`. Run against production (a replica will do):
--   psql "$PRODUCTION_URL" --csv -f table-stats.sql > table-stats.csv
-- Reads only pg_class; no table data leaves the database.
SELECT n.nspname                       AS schema,
       c.relname                       AS table,
       greatest(c.reltuples, 0)::bigint AS rows,
       pg_table_size(c.oid)            AS table_bytes,
       pg_indexes_size(c.oid)          AS index_bytes
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'm', 'p')
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_toast%'
 ORDER BY 1, 2;
