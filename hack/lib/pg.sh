# Sourced by the benchmarks that need a throwaway PostgreSQL server and pgbench (bench-lock.sh,
# bench-backfill.sh, bench-fanout.sh). Needs `root` (the repo), `log`, and BENCH_NAME (for
# messages and the work directory's name).

# The PostgreSQL client and server programs: PHASEGATE_PG_BINDIR, else the newest Debian
# cluster's, else pg_config's; PSQL and PGBENCH set.
pg_tools() {
  bindir=${PHASEGATE_PG_BINDIR:-}
  if [[ -z $bindir ]]; then
    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  fi
  if [[ -z $bindir ]] && command -v pg_config >/dev/null; then bindir=$(pg_config --bindir); fi
  local t
  for t in initdb pg_ctl pgbench psql; do
    tool "$t" >/dev/null || { echo "$BENCH_NAME: $t not found (set PHASEGATE_PG_BINDIR)" >&2; exit 1; }
  done
  PSQL=$(tool psql); PGBENCH=$(tool pgbench)
}
tool() { if [[ -x $bindir/$1 ]]; then echo "$bindir/$1"; else command -v "$1"; fi; }

# phasegate_bin [release]: PHASEGATE_BIN, built unless given — a debug build, or with
# `release` the release build the image ships (Dockerfile: cargo build --release).
phasegate_bin() {
  if [[ -z ${PHASEGATE_BIN:-} ]]; then
    local profile=debug flags=()
    if [[ ${1:-} == release ]]; then profile=release flags=(--release); fi
    log "building phasegate ($profile)"
    (cd "$root" && cargo build --quiet "${flags[@]}" --bin phasegate)
    PHASEGATE_BIN=${CARGO_TARGET_DIR:-$root/target}/$profile/phasegate
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo "$1"
}

# pg_start <extra server options>: initdb and start a server in a new `work` directory (as
# postgres when root), role `bench`, trust auth, no fsync; sets work, port, url, as_pg and the
# libpq environment. pg_stop stops it and removes `work`.
pg_start() {
  work=$(mktemp -d "/tmp/phasegate-$BENCH_NAME-XXXXXX")
  as_pg=()
  if [[ $(id -u) == 0 ]]; then
    local user=postgres; id -u postgres >/dev/null 2>&1 || user=nobody
    chown "$user:" "$work"; as_pg=(runuser -u "$user" --)
  fi
  port=$(free_port 55432)
  log "initdb in $work (port $port)"
  "${as_pg[@]}" "$(tool initdb)" -D "$work/data" -U bench --auth=trust -N -E UTF8 --locale=C >/dev/null
  "${as_pg[@]}" "$(tool pg_ctl)" -D "$work/data" -l "$work/server.log" -w \
    -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off $1" \
    start >/dev/null
  export PGHOST=127.0.0.1 PGPORT=$port PGUSER=bench PGDATABASE=postgres
  url="postgres://bench@127.0.0.1:$port/postgres?sslmode=disable"
}
pg_stop() {
  [[ -n ${work:-} ]] || return 0
  "${as_pg[@]}" "$(tool pg_ctl)" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}

# latency_summary <dir> <expected queries> [<from> <to>]: from pgbench --rate per-transaction
# logs (`<dir>/app.*`) prints "p50 p99 max failed done" (ms, ms, ms, count, count), of the
# queries that completed between the epoch times <from> and <to> when given. With --rate the
# logged time already counts from the scheduled start: it is reported alone (adding the lag
# would count it twice). Clients an error stopped send nothing more: when pgbench says a client
# aborted (`<dir>/pgbench.out`), queries missing from the open loop's schedule (beyond 2 %) count
# as failed. Without an abort a shortfall is the schedule's own randomness (Poisson arrivals:
# two 5 s windows at 500/s vary by about 70), not a failure.
latency_summary() {
  local dir=$1 expected=$2 from=${3:-0} to=${4:-0}
  grep -qs "aborted" "$dir/pgbench.out" || expected=0
  local in_range='$3 != "skipped" && ('"$to"' == 0 || ($5 + $6 / 1e6 >= '"$from"' && $5 + $6 / 1e6 <= '"$to"'))'
  cat "$dir"/app.* 2>/dev/null | awk "$in_range"' && $3 != "failed" { printf "%.3f\n", $3 / 1000.0 }' \
    | sort -n >"$dir/lat.txt"
  local failed; failed=$(cat "$dir"/app.* 2>/dev/null | awk "$in_range"' && $3 == "failed"' | wc -l)
  local n; n=$(wc -l <"$dir/lat.txt")
  awk -v n="$n" -v failed="$failed" -v expected="$expected" '
      { a[NR] = $1 }
      END {
        if (n == 0) { print "0 0 0", failed, 0; exit }
        p50 = a[int(n * 0.50) > 0 ? int(n * 0.50) : 1]; p99 = a[int(n * 0.99) > 0 ? int(n * 0.99) : 1]
        missing = expected - n - failed; if (missing < 0 || missing < expected * 0.02) missing = 0
        printf "%.1f %.1f %.1f %d %d\n", p50, p99, a[n], failed + missing, n
      }' "$dir/lat.txt"
}
