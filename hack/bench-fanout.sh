#!/usr/bin/env bash
# `make bench-fanout` (benchmark, not a test): one migration on every tenant of a server — 1,000
# tenant schemas and 200 tenant databases, an expand and a contract each — under an open-loop
# application load (pgbench --rate reading the schema tenants' tables; latency counted from each
# query's scheduled start, the lag never added again), side by side with what users do today: a
# sequential loop of one `phasegate apply` per tenant and phase. No cluster: the executor alone
# (`phasegate apply --tenants`, as the operator's Job runs it).
#
# Both sides run the same binary: the release build, as the image ships it (the Dockerfile
# builds with --release; a debug build costs the loop's process starts and the fleet's
# per-tenant work several times more CPU). Both get the settings the operator gives a contract
# Job (the app version, the rollout's completion time, the application names, and
# PHASEGATE_REQUIRE_EXPAND with the migration's uid); the fleet's contract also gets expand's
# SQL (PHASEGATE_TENANT_EXPAND_SQL: a tenant created since expand gets it first), so each of
# its tenants reads the expand row too. Not here: the operator's commit grant (no operator
# runs). The loop is what a user writes: each schema tenant its own ledger row
# (`loop/<schema>`; one shared name would find the first tenant's row and skip the other 999),
# each database its own ledger. Both find the same state: every database has a ledger from an
# earlier migration and has been connected to once (as a live fleet's have). Afterwards every
# tenant is checked for both sides' columns.
#
# Last line:
#   fanout: tenants=N phasegate_s=A loop_s=B app_p99_baseline_ms=X app_p99_phasegate_ms=Y failed=F executor_rss_mib=E operator_rss_mib=O
# failed: application queries that failed during the phasegate run (plus tenants that failed).
# operator_rss_mib: the operator's resident memory after a fleet migration of SCHEMAS tenant
# schemas through the real operator and executors on the local kwok cluster (tests/e2e/bench.rs;
# the log also shows it with 10 tenants); "na" with BENCH_OPERATOR=0.
#
# Knobs (env): SCHEMAS (1000), DATABASES (200), BENCH_RATE (500 q/s), BENCH_CONCURRENCY (4,
# maxConcurrent), BENCH_LOOP=0 skips the loop, BENCH_OPERATOR=0 skips the operator's memory
# (which needs the local cluster), BENCH_NICE (e.g. 19: both sides' `phasegate apply` at that
# CPU niceness, as an executor on another node than the database would be), PHASEGATE_BIN
# (default: the release build), PHASEGATE_PG_BINDIR.
set -euo pipefail

SCHEMAS=${SCHEMAS:-1000}
DATABASES=${DATABASES:-200}
RATE=${BENCH_RATE:-500}
CONCURRENCY=${BENCH_CONCURRENCY:-4}
LOOP=${BENCH_LOOP:-1}
WINDOW=5   # seconds per pgbench window while a run goes on

root=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "bench-fanout: $*" >&2; }
BENCH_NAME=bench-fanout
# shellcheck source=hack/lib/pg.sh
. "$root/hack/lib/pg.sh"
pg_tools
phasegate_bin release
trap pg_stop EXIT
pg_start "-c max_connections=200 -c shared_buffers=128MB"
psql_q() { PGOPTIONS="-c client_min_messages=warning" "$PSQL" -X -q -v ON_ERROR_STOP=1 "$@"; }

# The settings the operator gives a contract Job (ignored by expand).
export PHASEGATE_APP_VERSION=2.0.0 PHASEGATE_APPLICATION_NAMES=shop-api \
  PHASEGATE_ROLLOUT_COMPLETED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ) PHASEGATE_REQUIRE_EXPAND=true \
  PHASEGATE_TERMINATION_LOG=/nonexistent/x
apply() { # apply <url> <phase> <name> <sql> [tenants json]
  local tenants=(); [[ -z ${5:-} ]] || tenants=(--tenants "$5")
  PHASEGATE_DATABASE_URL=$1 PHASEGATE_PHASE=$2 PHASEGATE_MIGRATION_NAME=$3 PHASEGATE_SQL=$4 \
  PHASEGATE_MIGRATION_UID=uid-$3 ${BENCH_NICE:+nice -n $BENCH_NICE} "$PHASEGATE_BIN" apply "${tenants[@]}"
}
export -f apply
export PHASEGATE_BIN

# --- tenants: schemas t1000… in `postgres`, databases d1000… from a template ------------------
log "creating $SCHEMAS schemas and $DATABASES databases"
first=1000
psql_q -c "DO \$\$ BEGIN FOR i IN $first..$((first + SCHEMAS - 1)) LOOP
  EXECUTE format('CREATE SCHEMA t%s; CREATE TABLE t%s.users (id int PRIMARY KEY, v text, old_a int, old_b int);
                  INSERT INTO t%s.users SELECT g, md5(g::text), 0, 0 FROM generate_series(1, 100) g', i, i, i);
END LOOP; END \$\$"
psql_q -c "CREATE DATABASE tenant_template"
psql_q -d tenant_template -c "CREATE TABLE users (id int PRIMARY KEY, v text, old_a int, old_b int)" \
  -c "INSERT INTO users SELECT g, md5(g::text), 0, 0 FROM generate_series(1, 100) g"
# An earlier migration left a ledger in every database, as in a fleet migrated before: neither
# side creates 200 ledgers (the side run first would, alone: about 0.9 s here).
init() { apply "$@" >/dev/null 2>"$work/init.err" || { cat "$work/init.err" >&2; exit 1; }; }
init "postgres://bench@127.0.0.1:$port/tenant_template?sslmode=disable" expand init \
  "COMMENT ON TABLE users IS 'tenant';"
init "$url" expand init "COMMENT ON SCHEMA public IS 'tenants';"
for i in $(seq "$first" $((first + DATABASES - 1))); do
  psql_q -c "CREATE DATABASE d$i TEMPLATE tenant_template"
done
psql_q -c "VACUUM ANALYZE"
# Each database used once already, as a live tenant's is: the first connection to a new
# database builds its relation cache file, several times the cost of later ones, and would
# fall to whichever side runs first.
for i in $(seq "$first" $((first + DATABASES - 1))); do
  psql_q -d "d$i" -c "ANALYZE users"
done
printf '\\set t random(%d, %d)\n\\set id random(1, 100)\nSELECT v FROM t:t.users WHERE id = :id;\n' \
  "$first" $((first + SCHEMAS - 1)) >"$work/app.sql"

# --- the application, in windows while a command runs -----------------------------------------
# measure <name> <command...>: runs the command with the application reading meanwhile; prints
# "seconds p50 p99 max failed done".
measure() {
  local name=$1; shift
  local dir=$work/$name; mkdir -p "$dir"
  local t0; t0=$(date +%s%N)
  # The command's own time, not the end of the window it finished in.
  ( "$@"; echo "$? $(date +%s%N)" >"$dir/end" ) >"$dir/run.out" 2>"$dir/run.err" &
  local pid=$!
  local windows=0
  while kill -0 "$pid" 2>/dev/null || [[ $windows == 0 ]]; do
    (cd "$dir" && "$PGBENCH" -n -f "$work/app.sql" -c 4 -j 2 -T "$WINDOW" --rate "$RATE" \
        -l --log-prefix="app.$windows" >>"$dir/pgbench.out" 2>&1) || true
    windows=$((windows + 1))
  done
  wait "$pid" || true
  local status end; read -r status end <"$dir/end"
  local secs; secs=$(awk -v ns=$(( end - t0 )) 'BEGIN { printf "%.1f", ns / 1e9 }')
  [[ $status == 0 ]] || log "$name: exit $status: $(tail -3 "$dir/run.err")"
  # Only the queries that completed while the command ran: the rest of its last window is the
  # application alone again.
  local from to; from=$(awk -v ns="$t0" 'BEGIN { printf "%.6f", ns / 1e9 }')
  to=$(awk -v ns="$end" 'BEGIN { printf "%.6f", ns / 1e9 }')
  echo "$secs $(latency_summary "$dir" "$(awk -v s="$secs" -v r="$RATE" 'BEGIN { printf "%d", s * r }')" "$from" "$to")"
}


# What users do today: one process per tenant and phase, one after another.
loop() {
  local i
  for phase in expand contract; do
    local sql="ALTER TABLE users ADD COLUMN new_a int;"
    [[ $phase == contract ]] && sql="ALTER TABLE users DROP COLUMN old_a;"
    for i in $(seq "$first" $((first + SCHEMAS - 1))); do
      apply "$url&options=-c%20search_path%3Dt$i" "$phase" "loop/t$i" "$sql" >/dev/null
    done
    for i in $(seq "$first" $((first + DATABASES - 1))); do
      apply "postgres://bench@127.0.0.1:$port/d$i?sslmode=disable" "$phase" "loop" "$sql" >/dev/null
    done
  done
}

# Phasegate: one executor per kind of tenant and phase; its peak RSS (KiB) into rss.
fleet() {
  local t="\"maxConcurrent\":$CONCURRENCY" expand_sql="ALTER TABLE users ADD COLUMN new_b int;"
  for phase in expand contract; do
    local sql=$expand_sql late=""
    # As the operator's contract Job: expand's SQL for a tenant created since expand.
    [[ $phase == contract ]] && sql="ALTER TABLE users DROP COLUMN old_b;" late=$expand_sql
    PHASEGATE_TENANT_EXPAND_SQL=$late /usr/bin/time -f "%M" -a -o "$work/rss" bash -c 'apply "$@"' _ "$url" "$phase" fleet "$sql" "{\"schemas\":\"t%\",$t}" >"$work/fleet-$phase-schemas.json"
    PHASEGATE_TENANT_EXPAND_SQL=$late /usr/bin/time -f "%M" -a -o "$work/rss" bash -c 'apply "$@"' _ "$url" "$phase" fleet "$sql" "{\"databases\":\"d%\",$t}" >"$work/fleet-$phase-databases.json"
  done
}
[[ -x /usr/bin/time ]] || { log "/usr/bin/time is needed (apt-get install time)"; exit 1; }

# unmigrated <new column> <old column>: tenants (schemas and databases) whose users table
# lacks the new column or still has the old one.
unmigrated() {
  local has="SELECT count(*) FROM pg_attribute WHERE NOT attisdropped AND attrelid = to_regclass(%s) AND attname = '%s'"
  local n i
  n=$(psql_q -At -c "SELECT count(*) FROM pg_namespace s WHERE s.nspname ~ '^t[0-9]+\$'
        AND (($(printf "$has" "s.nspname || '.users'" "$1")) = 0 OR ($(printf "$has" "s.nspname || '.users'" "$2")) > 0)")
  for i in $(seq "$first" $((first + DATABASES - 1))); do
    n=$((n + $(psql_q -d "d$i" -At -c "SELECT (($(printf "$has" "'users'" "$1")) = 0 OR ($(printf "$has" "'users'" "$2")) > 0)::int")))
  done
  echo "$n"
}
export -f loop fleet
export url port first SCHEMAS DATABASES CONCURRENCY work

# The set-up's writes flushed first: a checkpoint during the baseline window would inflate
# the baseline (and flatter the ratio against it).
psql_q -c "CHECKPOINT"
sleep 2
log "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
read -r _ _ base_p99 _ base_failed _ <<<"$(measure baseline sleep 10)"
log "baseline: app p99 ${base_p99} ms, failed ${base_failed}"
read -r pg_s _ pg_p99 _ pg_failed _ <<<"$(measure phasegate fleet)"
tenant_failed=0
for f in "$work"/fleet-*.json; do
  log "$(basename "$f"): $(tail -1 "$f" | cut -c1-300)"
  n=$(tail -1 "$f" | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); print((r.get("tenants") or {}).get("failed", 0) + (0 if r["outcome"] != "failed" or r.get("tenants") else 1))' 2>/dev/null || echo 1)
  tenant_failed=$((tenant_failed + n))
done
rss_mib=$(sort -n "$work/rss" | tail -1 | awk '{ printf "%.1f", $1 / 1024 }')
log "load after phasegate: $(cut -d' ' -f1-3 /proc/loadavg)"
pg_missed=$(unmigrated new_b old_b)
[[ $pg_missed == 0 ]] || log "phasegate: $pg_missed tenants not migrated"
tenant_failed=$((tenant_failed + pg_missed))
log "phasegate: ${pg_s} s, app p99 ${pg_p99} ms, failed queries ${pg_failed}, failed tenants ${tenant_failed}, executor peak RSS ${rss_mib} MiB"
loop_s=na
if [[ $LOOP == 1 ]]; then
  read -r loop_s _ loop_p99 _ loop_failed _ <<<"$(measure loop loop)"
  log "loop: ${loop_s} s, app p99 ${loop_p99} ms, failed queries ${loop_failed}"
  loop_missed=$(unmigrated new_a old_a)
  [[ $loop_missed == 0 ]] || log "loop: $loop_missed tenants not migrated: its figure does not count"
  ratio=$(awk -v a="$loop_s" -v b="$pg_s" 'BEGIN { printf "%.1f", a / b }')
  log "phasegate is ${ratio}x faster than the loop"
fi
# The operator's memory, with a fleet migration through the real operator and executors on the
# local kwok cluster (tests/e2e/bench.rs): 10 tenants, then as many as SCHEMAS; the line
# carries the larger run's figure, the log both. BENCH_OPERATOR=0 skips it (operator_rss_mib=na).
operator_rss=na
if [[ ${BENCH_OPERATOR:-1} == 1 ]]; then
  "$root/hack/local-cluster.sh" up >&2
  eval "$("$root/hack/local-cluster.sh" env)"
  for n in 10 "$SCHEMAS"; do
    line=$(cd "$root" && PHASEGATE_E2E_KUBECONFIG="$KUBECONFIG" PHASEGATE_BENCH_TENANTS=$n \
      cargo test -q --features e2e --test e2e -- --ignored --exact bench::bench_fleet_operator_rss --nocapture 2>/dev/null \
      | grep '^fleet_operator:' || true)
    log "operator: ${line:-no result with $n tenants}"
    operator_rss=$(sed -n 's/.* operator_rss_mib=\([^ ]*\).*/\1/p' <<<"$line")
    operator_rss=${operator_rss:-na}
  done
fi
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "fanout: tenants=$((SCHEMAS + DATABASES)) phasegate_s=$pg_s loop_s=$loop_s app_p99_baseline_ms=$base_p99 app_p99_phasegate_ms=$pg_p99 failed=$((pg_failed + tenant_failed)) executor_rss_mib=$rss_mib operator_rss_mib=$operator_rss"
# A loop that did not migrate every tenant measured something else: say so by the exit status.
[[ ${loop_missed:-0} == 0 ]]
