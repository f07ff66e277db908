#!/usr/bin/env bash
# Benchmark (not a test): what does a backfill cost the application? An open-loop application
# (pgbench --rate: each transaction's time counts from its scheduled start, so a stall cannot
# hide; the lag is already included, never added again) reads and writes `users` while one of
# two runners fills a new column of every row:
#   single     one UPDATE users SET email_address = email (what people put in expand)
#   phasegate  `phasegate backfill`: keyset batches in short transactions, adaptive batch size,
#              lock_timeout per batch, throttled on lock waiters
# after a baseline without backfill, all in one run on one server. Prints p50/p99/worst app
# latency, failed app queries, and the backfill's duration and rows/s per runner; the last line:
#   app p99: baseline=<ms> single=<ms> phasegate=<ms>
#
# Knobs (env): BENCH_ROWS (1000000), BENCH_RATE (500 transactions/s, each one read and one
# write), BENCH_DURATION (seconds per run; default: until the backfill is done + 3 s, at least 20),
# BENCH_CLIENTS (8), PHASEGATE_BIN, PHASEGATE_PG_BINDIR.
set -euo pipefail

ROWS=${BENCH_ROWS:-1000000}
RATE=${BENCH_RATE:-500}
CLIENTS=${BENCH_CLIENTS:-8}
START=3   # seconds after the application starts

root=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "bench-backfill: $*" >&2; }

BENCH_NAME=bench-backfill
# shellcheck source=hack/lib/pg.sh
. "$root/hack/lib/pg.sh"
pg_tools
phasegate_bin
trap pg_stop EXIT
pg_start "-c max_connections=50 -c shared_buffers=128MB"
psql_q() { PGOPTIONS="-c client_min_messages=warning" "$PSQL" -X -q -v ON_ERROR_STOP=1 "$@"; }

# A fresh table per run: the same starting point for every runner.
setup_table() {
  psql_q -c "DROP TABLE IF EXISTS users" \
         -c "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, hits int NOT NULL DEFAULT 0)" \
         -c "INSERT INTO users SELECT g, 'u' || g || '@example.com', 0 FROM generate_series(1, $ROWS) g" \
         -c "ALTER TABLE users ADD COLUMN email_address text" \
         -c "VACUUM ANALYZE users" -c "CHECKPOINT" >/dev/null
  psql_q -c "DROP SCHEMA IF EXISTS phasegate CASCADE" >/dev/null 2>&1 || true
}
# The application: a read and a write of a random row (the write is what a single UPDATE blocks).
printf '\\set id random(1, %d)\nSELECT email FROM users WHERE id = :id;\nUPDATE users SET hits = hits + 1 WHERE id = :id;\n' \
  "$ROWS" >"$work/app.sql"

SQL_SINGLE="UPDATE users SET email_address = email WHERE email_address IS NULL"
SQL_BATCH='UPDATE users SET email_address = email WHERE id > $1 AND id <= $2 AND email_address IS NULL'

# One run. Prints "p50 p99 max failed done backfill_ms rows_per_s".
run() {
  local name=$1 duration=$2
  local dir=$work/$name; mkdir -p "$dir"
  setup_table
  (cd "$dir" && "$PGBENCH" -n -f "$work/app.sql" -c "$CLIENTS" -j 2 -T "$duration" --rate "$RATE" \
      -l --log-prefix=app >"$dir/pgbench.out" 2>&1) &
  local app=$!
  local ms=0
  if [[ $name != baseline ]]; then
    sleep "$START"
    local t0; t0=$(date +%s%N)
    case $name in
      single) psql_q -c "$SQL_SINGLE" >"$dir/backfill.out" 2>&1 || true ;;
      phasegate)
        PHASEGATE_DATABASE_URL=$url PHASEGATE_BACKFILL_TABLE=users PHASEGATE_BACKFILL_KEY=id \
        PHASEGATE_BACKFILL_SQL="$SQL_BATCH" PHASEGATE_MIGRATION_NAME=bench PHASEGATE_BACKFILL_EPOCH=bench \
        PHASEGATE_TERMINATION_LOG=$dir/termination-log \
          "$PHASEGATE_BIN" backfill >"$dir/backfill.out" 2>"$dir/backfill.err" || true ;;
    esac
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    local left; left=$(psql_q -At -c "SELECT count(*) FROM users WHERE email_address IS NULL")
    log "$name: backfill done after $ms ms; rows left unfilled: $left"
  fi
  wait "$app" || true
  local rps=0; [[ $ms -gt 0 ]] && rps=$(( ROWS * 1000 / ms ))
  echo "$(latency_summary "$dir" $((RATE * duration))) $ms $rps"
}

# How long the application runs: the single UPDATE's duration is unknown up front; a first
# phasegate run (not reported) would take as long as the bench itself, so use a generous default.
DURATION=${BENCH_DURATION:-$(( ROWS / 20000 + 20 ))}
log "rows=$ROWS rate=$RATE tx/s (1 read + 1 write each), $DURATION s per run; load: $(cut -d' ' -f1-3 /proc/loadavg)"
row() { printf '%-10s %8s %8s %9s %7s %8s %12s %10s\n' "$@"; }
row runner p50_ms p99_ms worst_ms failed txns backfill_ms rows_per_s
declare -A p99
for name in baseline single phasegate; do
  read -r p50 p99v worst failed n ms rps <<<"$(run "$name" "$DURATION")"
  row "$name" "$p50" "$p99v" "$worst" "$failed" "$n" "$ms" "$rps"
  p99[$name]=$p99v
done
echo "app p99: baseline=${p99[baseline]} single=${p99[single]} phasegate=${p99[phasegate]}"
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
