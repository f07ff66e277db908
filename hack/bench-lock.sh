#!/usr/bin/env bash
# Benchmark (not a test): what does a migration cost the application while a long transaction
# holds the table? An open-loop application (pgbench --rate: latency counted from each query's
# scheduled start, so a stall cannot hide) reads `users` while a 12 s transaction reads it too
# and a migration runs, in two scenarios:
#   add-column  ALTER TABLE users ADD COLUMN …            (the table the reader holds)
#   fk-peer     DROP TABLE legacy, legacy REFERENCES users (locks users without naming it)
#   validate    ALTER TABLE users VALIDATE CONSTRAINT …  (SHARE UPDATE EXCLUSIVE: readers do not
#               conflict; a runner that waits for them only finishes late — see migr_ms)
# each with three runners:
#   naive      psql -f, as Helm hooks and Argo CD PreSync Jobs do (queues behind the reader and
#              every application query queues behind it)
#   retry      blind retries with lock_timeout (pgroll / GitLab with_lock_retries style)
#   phasegate  `phasegate apply`: waits outside the lock queue, then tries with a short lock_timeout
# Prints p50/p99/worst application latency, failed queries and the migration's own duration
# (migr_ms, from its start 1 s into the long transaction) per scenario and runner, after a
# baseline without migration; last lines, one per scenario:
#   app p99: naive=<ms> retry=<ms> phasegate=<ms>
#   fk-peer app p99: naive=<ms> retry=<ms> phasegate=<ms>
#   validate app p99: … ; migration ms: naive=<ms> retry=<ms> phasegate=<ms>
#
# BENCH_POOLER=1 adds, in the same run on the same server, a PgBouncer in transaction pooling
# (hack/pgbouncer.sh) that the application, the long transaction and `phasegate apply` all go
# through: a baseline without migration (pgbouncer/baseline) and the phasegate runner per
# scenario (<scenario>/pgb_phasegate). Before the last lines above (which stay the last ones),
# one line per scenario, the ratio being phasegate / baseline (both through the pooler):
#   pgbouncer app p99: baseline=<ms> phasegate=<ms> ratio=<x>          (add-column)
#   <scenario> pgbouncer app p99: baseline=<ms> phasegate=<ms> ratio=<x>
#
# Knobs (env): BENCH_RATE (2000 q/s), BENCH_HOLD (12 s), BENCH_DURATION (20 s per runner),
# BENCH_RETRY_LOCK_TIMEOUT (200ms), BENCH_PG_LOCK_TIMEOUT (50ms), BENCH_SCENARIOS
# ("add-column fk-peer validate"), BENCH_POOLER (0), PHASEGATE_BIN, PHASEGATE_PG_BINDIR,
# PGBOUNCER_BIN.
set -euo pipefail

RATE=${BENCH_RATE:-2000}
HOLD=${BENCH_HOLD:-12}
DURATION=${BENCH_DURATION:-20}
RETRY_LT=${BENCH_RETRY_LOCK_TIMEOUT:-200ms}
PG_LT=${BENCH_PG_LOCK_TIMEOUT:-50ms}
SCENARIOS=${BENCH_SCENARIOS:-add-column fk-peer validate}
POOLER=${BENCH_POOLER:-0}
HOLD_START=2      # seconds after the application starts
MIGRATE_START=3   # the migration starts while the long transaction is running

root=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "bench-lock: $*" >&2; }
# shellcheck source=hack/pgbouncer.sh
. "$root/hack/pgbouncer.sh"

# --- binaries ---------------------------------------------------------------------------------
bindir=${PHASEGATE_PG_BINDIR:-}
if [[ -z $bindir ]]; then
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
fi
if [[ -z $bindir ]] && command -v pg_config >/dev/null; then bindir=$(pg_config --bindir); fi
for tool in initdb pg_ctl pgbench psql; do
  if [[ ! -x $bindir/$tool ]] && ! command -v "$tool" >/dev/null; then
    echo "bench-lock: $tool not found (set PHASEGATE_PG_BINDIR)" >&2; exit 1
  fi
done
tool() { if [[ -x $bindir/$1 ]]; then echo "$bindir/$1"; else command -v "$1"; fi; }
PSQL=$(tool psql); PGBENCH=$(tool pgbench)

if [[ -z ${PHASEGATE_BIN:-} ]]; then
  log "building phasegate"
  (cd "$root" && cargo build --quiet --bin phasegate)
  PHASEGATE_BIN=${CARGO_TARGET_DIR:-$root/target}/debug/phasegate
fi

# --- a throwaway server ----------------------------------------------------------------------
work=$(mktemp -d /tmp/phasegate-bench-XXXXXX)
as_pg=()
if [[ $(id -u) == 0 ]]; then
  user=postgres; id -u postgres >/dev/null 2>&1 || user=nobody
  chown "$user:" "$work"; as_pg=(runuser -u "$user" --)
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 55432)
cleanup() {
  pgbouncer_stop "$work/pgbouncer"
  "${as_pg[@]}" "$(tool pg_ctl)" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
log "initdb in $work (port $port)"
"${as_pg[@]}" "$(tool initdb)" -D "$work/data" -U bench --auth=trust -N -E UTF8 --locale=C >/dev/null
"${as_pg[@]}" "$(tool pg_ctl)" -D "$work/data" -l "$work/server.log" -w \
  -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=50 -c shared_buffers=64MB" \
  start >/dev/null
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=bench PGDATABASE=postgres
url="postgres://bench@127.0.0.1:$port/postgres?sslmode=disable"
psql_q() { "$PSQL" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql_q -c "CREATE TABLE users (id int PRIMARY KEY, v text NOT NULL)" \
       -c "INSERT INTO users SELECT g, md5(g::text) FROM generate_series(1, 10000) g" -c "VACUUM ANALYZE users"
printf '\\set id random(1, 10000)\nSELECT v FROM users WHERE id = :id;\n' >"$work/app.sql"

# --- one run: application + optional long transaction + optional migration --------------------
# Prints "p50 p99 max failed done migr" (ms, ms, ms, count, count, ms). With VIA=pgbouncer the
# application, the long transaction and phasegate connect through the pooler.
VIA=direct
run() {
  local name=$1 migrate=$2 duration=$3 scenario=${4:-add-column}
  local dir=$work/$scenario-$name; mkdir -p "$dir"
  local port_=$port url_=$url
  if [[ $VIA == pgbouncer ]]; then port_=$bouncer_port; url_=$bouncer_url; fi
  local sql
  case $scenario in
    add-column) sql="ALTER TABLE users ADD COLUMN c_$name int;" ;;
    fk-peer)
      psql_q -c "CREATE TABLE legacy_$name (id int PRIMARY KEY, user_id int REFERENCES users (id))" >/dev/null
      sql="DROP TABLE legacy_$name;" ;;
    validate)
      psql_q -c "ALTER TABLE users ADD CONSTRAINT positive_$name CHECK (id > 0) NOT VALID" >/dev/null
      sql="ALTER TABLE users VALIDATE CONSTRAINT positive_$name;" ;;
  esac
  (cd "$dir" && PGPORT=$port_ "$PGBENCH" -n -f "$work/app.sql" -c 8 -j 2 -T "$duration" --rate "$RATE" \
      -l --log-prefix=app >"$dir/pgbench.out" 2>&1) &
  local app=$!
  local holder="" migr_ms=-
  if [[ $migrate != none ]]; then
    sleep "$HOLD_START"
    PGPORT=$port_ psql_q -c "BEGIN; SELECT count(*) FROM users; SELECT pg_sleep($HOLD); COMMIT;" >/dev/null &
    holder=$!
    sleep $((MIGRATE_START - HOLD_START))
    local t0; t0=$(date +%s%N)
    case $migrate in
      naive)
        echo "$sql" >"$dir/m.sql"
        psql_q -f "$dir/m.sql" >"$dir/migration.out" 2>&1 ;;
      retry)
        # Blind retries: a short lock_timeout, roll back, sleep, try again.
        local n=0
        until psql_q -c "SET lock_timeout = '$RETRY_LT'" -c "$sql" >>"$dir/migration.out" 2>&1; do
          n=$((n + 1)); sleep 0.$((RANDOM % 5 + 5))   # 0.5–0.9 s
          [[ $n -lt 200 ]] || break
        done
        echo "retries=$n" >>"$dir/migration.out" ;;
      phasegate)
        PHASEGATE_DATABASE_URL=$url_ PHASEGATE_PHASE=expand PHASEGATE_SQL="$sql" \
        PHASEGATE_MIGRATION_NAME=bench-$scenario-$name PHASEGATE_LOCK_TIMEOUT=$PG_LT PHASEGATE_TERMINATION_LOG=$dir/termination-log \
          "$PHASEGATE_BIN" apply >"$dir/migration.out" 2>"$dir/migration.err" || true ;;
    esac
    migr_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    log "$scenario $name: migration done after $migr_ms ms"
  fi
  wait "$app" || true
  [[ -z $holder ]] || wait "$holder" || true
  # Per-transaction log: client tx time(us) script epoch us lag(us); "failed" in place of time.
  # With --rate, time already counts from the scheduled start (it includes the lag): report it
  # alone; adding lag would count the lag twice.
  cat "$dir"/app.* 2>/dev/null | awk '
      $3 == "failed" { failed++; next }
      $3 == "skipped" { next }
      { printf "%.3f\n", $3 / 1000.0 }' | sort -n >"$dir/lat.txt"
  local failed; failed=$(cat "$dir"/app.* 2>/dev/null | awk '$3 == "failed"' | wc -l)
  local n; n=$(wc -l <"$dir/lat.txt")
  # Clients aborted by an error stop sending: count what the open loop should have sent.
  local expected=$((RATE * duration))
  awk -v n="$n" -v failed="$failed" -v expected="$expected" -v migr="$migr_ms" '
      { a[NR] = $1 }
      END {
        if (n == 0) { print "0 0 0", failed, 0, migr; exit }
        p50 = a[int(n * 0.50) > 0 ? int(n * 0.50) : 1]; p99 = a[int(n * 0.99) > 0 ? int(n * 0.99) : 1]
        missing = expected - n - failed; if (missing < 0 || missing < expected * 0.02) missing = 0
        printf "%.1f %.1f %.1f %d %d %s\n", p50, p99, a[n], failed + missing, n, migr
      }' "$dir/lat.txt"
}

# Warm up caches and connections so the baseline measures the steady state.
run warmup none 3 >/dev/null
row() { printf '%-11s %-13s %10s %10s %10s %8s %8s %8s\n' "$@"; }
row scenario runner p50_ms p99_ms worst_ms failed queries migr_ms
read -r p50 p99v worst failed n migr <<<"$(run baseline none 8)"
row - baseline "$p50" "$p99v" "$worst" "$failed" "$n" "$migr"
declare -A p99 migr_of
for scenario in $SCENARIOS; do
  for name in naive retry phasegate; do
    read -r p50 p99v worst failed n migr <<<"$(run "$name" "$name" "$DURATION" "$scenario")"
    p99[$scenario-$name]=$p99v
    migr_of[$scenario-$name]=$migr
    row "$scenario" "$name" "$p50" "$p99v" "$worst" "$failed" "$n" "$migr"
  done
  if [[ -f $work/$scenario-phasegate/migration.out ]]; then
    log "$scenario phasegate report: $(tail -1 "$work/$scenario-phasegate/migration.out")"
  fi
done
if [[ $POOLER == 1 ]]; then
  # Transaction pooling: 8 application clients, the long transaction and phasegate's two
  # connections fit in the pool, so nothing waits for a server connection.
  bouncer_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  bouncer_url="postgres://bench@127.0.0.1:$bouncer_port/postgres?sslmode=disable"
  log "pgbouncer (transaction pooling) on port $bouncer_port"
  pgbouncer_start "$work/pgbouncer" "$bouncer_port" "$port" transaction 20 bench
  VIA=pgbouncer
  run pgb_warmup none 3 >/dev/null   # the pool's server connections, opened once
  read -r p50 p99v worst failed n migr <<<"$(run pgb_baseline none 8)"
  p99[pgb-baseline]=$p99v
  row pgbouncer baseline "$p50" "$p99v" "$worst" "$failed" "$n" "$migr"
  for scenario in $SCENARIOS; do
    read -r p50 p99v worst failed n migr <<<"$(run pgb_phasegate phasegate "$DURATION" "$scenario")"
    p99[$scenario-pgb-phasegate]=$p99v
    row "$scenario" pgb_phasegate "$p50" "$p99v" "$worst" "$failed" "$n" "$migr"
    log "$scenario phasegate via pgbouncer report: $(tail -1 "$work/$scenario-pgb_phasegate/migration.out")"
  done
  VIA=direct
  for scenario in $SCENARIOS; do
    b=${p99[pgb-baseline]} pg=${p99[$scenario-pgb-phasegate]}
    ratio=$(awk -v b="$b" -v p="$pg" 'BEGIN { printf "%.2f", (b > 0 ? p / b : 0) }')
    line="pgbouncer app p99: baseline=$b phasegate=$pg ratio=$ratio"
    if [[ $scenario == add-column ]]; then echo "$line"; else echo "$scenario $line"; fi
  done
fi
for scenario in $SCENARIOS; do
  line="app p99: naive=${p99[$scenario-naive]} retry=${p99[$scenario-retry]} phasegate=${p99[$scenario-phasegate]}"
  case $scenario in
    add-column) echo "$line" ;;
    validate) echo "$scenario $line; migration ms: naive=${migr_of[$scenario-naive]} retry=${migr_of[$scenario-retry]} phasegate=${migr_of[$scenario-phasegate]}" ;;
    *) echo "$scenario $line" ;;
  esac
done
