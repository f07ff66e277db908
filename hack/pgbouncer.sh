#!/usr/bin/env bash
# A throwaway PgBouncer (Debian's `pgbouncer` package, which hack/install-deps.sh installs) in
# front of a local PostgreSQL, for `make demo PGBOUNCER=…` and `BENCH_POOLER=1 make bench-lock`.
# Source it for the functions, or run them by hand:
#
#   hack/pgbouncer.sh start DIR PORT SERVER_PORT MODE POOL_SIZE USER [PASSWORD]
#   hack/pgbouncer.sh stop DIR
#
# start: writes DIR/pgbouncer.ini and DIR/userlist.txt and starts PgBouncer as a daemon on
# 127.0.0.1:PORT in front of 127.0.0.1:SERVER_PORT (every database), in pool_mode MODE
# (`session` or `transaction`) with POOL_SIZE server connections per database and user; USER
# is also its admin (`psql -p PORT -U USER pgbouncer -c 'SHOW POOLS'`). With PASSWORD, clients
# and the server authenticate with SCRAM; without, clients are trusted (for a server that
# trusts them too). Returns once it accepts connections; its log is DIR/pgbouncer.log.
# stop: ends the PgBouncer whose pid is in DIR/pgbouncer.pid (nothing if none runs).
#
# PgBouncer refuses to run as root: as root it runs as PGBOUNCER_USER (default postgres, else
# nobody), which must be able to enter DIR. Binary: PGBOUNCER_BIN, else pgbouncer on PATH,
# else /usr/sbin/pgbouncer.

pgbouncer_bin() {
  if [[ -n ${PGBOUNCER_BIN:-} ]]; then echo "$PGBOUNCER_BIN"; return; fi
  command -v pgbouncer 2>/dev/null && return
  [[ -x /usr/sbin/pgbouncer ]] && { echo /usr/sbin/pgbouncer; return; }
  echo "pgbouncer not found: run hack/install-deps.sh (Debian package pgbouncer) or set PGBOUNCER_BIN" >&2
  return 1
}

pgbouncer_start() {
  local dir=$1 port=$2 server_port=$3 mode=$4 pool=$5 user=$6 password=${7:-}
  local bin run_as=() auth=trust
  bin=$(pgbouncer_bin) || return 1
  mkdir -p "$dir"
  [[ -n $password ]] && auth=scram-sha-256
  cat >"$dir/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$server_port
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = $auth
auth_file = $dir/userlist.txt
admin_users = $user
pool_mode = $mode
default_pool_size = $pool
max_client_conn = 500
ignore_startup_parameters = extra_float_digits
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
  # A plain-text password lets PgBouncer answer SCRAM to clients and to the server.
  printf '"%s" "%s"\n' "$user" "$password" >"$dir/userlist.txt"
  if [[ $(id -u) == 0 ]]; then
    local as=${PGBOUNCER_USER:-postgres}
    id -u "$as" >/dev/null 2>&1 || as=nobody
    chown -R "$as:" "$dir"
    run_as=(-u "$as")
  fi
  "$bin" -d "${run_as[@]}" "$dir/pgbouncer.ini" || { cat "$dir/pgbouncer.log" >&2; return 1; }
  local _
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "pgbouncer did not listen on 127.0.0.1:$port within 10 s; log:" >&2
  cat "$dir/pgbouncer.log" >&2
  return 1
}

pgbouncer_stop() {
  local dir=$1 pid _
  [[ -f $dir/pgbouncer.pid ]] || return 0
  pid=$(cat "$dir/pgbouncer.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  rm -f "$dir/pgbouncer.pid"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  case ${1:-} in
    start) shift; pgbouncer_start "$@" ;;
    stop) shift; pgbouncer_stop "$@" ;;
    *) echo "usage: $0 start DIR PORT SERVER_PORT MODE POOL_SIZE USER [PASSWORD] | stop DIR" >&2; exit 2 ;;
  esac
fi
