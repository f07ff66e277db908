#!/usr/bin/env bash
# `make demo`: the operator drives a real migration on the local control plane and a local
# PostgreSQL. `hack/demo.sh down` stops everything it started.
#
# PGBOUNCER=transaction (or session; `make demo PGBOUNCER=transaction`): a PgBouncer in that
# pool mode in front of the PostgreSQL (on 127.0.0.1:PHASEGATE_DEMO_PGBOUNCER_PORT, default
# 56432; hack/pgbouncer.sh), and the migration's Secret URL points at it instead, so every
# executor Job connects through the pooler. Its admin console and log are printed at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${PHASEGATE_CACHE:-$HOME/.cache/phasegate}"
DEMO="${CACHE}/demo"
# PostgreSQL refuses to run as root and the postgres user cannot enter /root: when run as
# root, its data lives under /var/tmp instead.
if [ "$(id -u)" -eq 0 ]; then PGHOME="/var/tmp/phasegate-demo-postgres"; else PGHOME="${DEMO}/pg"; fi
PGDATA="${PGHOME}/data"
PGPORT="${PHASEGATE_DEMO_PGPORT:-55432}"
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
NS=shop
POOLER="${PGBOUNCER:-}"
[ "${POOLER}" = 1 ] && POOLER=transaction
case "${POOLER}" in ""|session|transaction) ;; *) echo "PGBOUNCER must be session or transaction, not ${POOLER}" >&2; exit 2 ;; esac
BOUNCER_PORT="${PHASEGATE_DEMO_PGBOUNCER_PORT:-56432}"
BOUNCER_DIR="${PGHOME}/pgbouncer"
# shellcheck source=hack/pgbouncer.sh
. "${ROOT}/hack/pgbouncer.sh"
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

stop_processes() {
  for p in operator runner; do
    if [ -f "${DEMO}/${p}.pid" ]; then kill "$(cat "${DEMO}/${p}.pid")" 2>/dev/null || true; rm -f "${DEMO}/${p}.pid"; fi
  done
}

if [ "${1:-}" = "down" ]; then
  stop_processes
  pgbouncer_stop "${BOUNCER_DIR}"
  [ -d "${PGDATA}" ] && as_pg "${PGBIN}/pg_ctl" -D "${PGDATA}" -m fast stop >/dev/null 2>&1 || true
  "${ROOT}/hack/local-cluster.sh" down
  exit 0
fi

say "Building phasegate"
(cd "${ROOT}" && cargo build -q --bins)
PHASEGATE="${ROOT}/target/debug/phasegate"

say "Starting the local control plane (first run builds Kubernetes from its Go modules)"
"${ROOT}/hack/local-cluster.sh" up
eval "$("${ROOT}/hack/local-cluster.sh" env)"

say "Starting a local PostgreSQL on 127.0.0.1:${PGPORT}"
mkdir -p "${DEMO}"
if [ ! -f "${PGDATA}/PG_VERSION" ]; then
  mkdir -p "${PGDATA}"
  echo "demo" > "${PGHOME}/pwfile"
  if [ "$(id -u)" -eq 0 ]; then chown -R postgres: "${PGHOME}"; fi
  as_pg "${PGBIN}/initdb" -D "${PGDATA}" -U shop --pwfile="${PGHOME}/pwfile" -A scram-sha-256 >/dev/null
fi
if ! as_pg "${PGBIN}/pg_ctl" -D "${PGDATA}" status >/dev/null 2>&1; then
  as_pg "${PGBIN}/pg_ctl" -D "${PGDATA}" -l "${PGHOME}/postgres.log" -w \
    -o "-p ${PGPORT} -c listen_addresses=127.0.0.1 -k ${PGDATA}" start >/dev/null
fi
URL="postgres://shop:demo@127.0.0.1:${PGPORT}/postgres"
pgbouncer_stop "${BOUNCER_DIR}"
if [ -n "${POOLER}" ]; then
  say "Starting PgBouncer (${POOLER} pooling) on 127.0.0.1:${BOUNCER_PORT} in front of it"
  # Two server connections per executor (statements, and the advisory lock's transaction).
  pgbouncer_start "${BOUNCER_DIR}" "${BOUNCER_PORT}" "${PGPORT}" "${POOLER}" 10 shop demo
  URL="postgres://shop:demo@127.0.0.1:${BOUNCER_PORT}/postgres"
fi
PGPASSWORD=demo psql -q -h 127.0.0.1 -p "${PGPORT}" -U shop -d postgres -v ON_ERROR_STOP=1 <<'SQL'
DROP TABLE IF EXISTS users;
DROP SCHEMA IF EXISTS phasegate CASCADE;
CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL, legacy_flag boolean);
INSERT INTO users (email) VALUES ('ada@example.com'), ('grace@example.com');
SQL
columns() { PGPASSWORD=demo psql -qtA -h 127.0.0.1 -p "${PGPORT}" -U shop -d postgres -c \
  "SELECT string_agg(column_name, ', ' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'users'"; }
echo "users columns: $(columns)"

say "Installing the CRD and the quickstart"
# The local cluster may hold the CRD from the e2e suite (another field manager): take it over.
kubectl apply --server-side --force-conflicts -f "${ROOT}/crds/" >/dev/null
# `kubectl wait` fails at once ("accessor error") while a new CRD has no conditions yet.
for _ in $(seq 30); do
  [[ "$(kubectl get crd databasemigrations.phasegate.dev -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" == True ]] && break
  sleep 1
done
kubectl delete namespace "${NS}" --ignore-not-found --wait=true >/dev/null
kubectl apply -f "${ROOT}/examples/quickstart/00-namespace.yaml" >/dev/null
kubectl -n "${NS}" create secret generic shop-db --from-literal=url="${URL}" >/dev/null
kubectl apply -f "${ROOT}/examples/quickstart/10-deployment.yaml"
kubectl -n "${NS}" rollout status deployment/shop-api --timeout=60s

say "Starting the operator (logs: ${DEMO}/operator.log)"
stop_processes
"${PHASEGATE}" controller > "${DEMO}/operator.log" 2>&1 & echo $! > "${DEMO}/operator.pid"
# kwok simulates pods without running them; this runner runs executor pods on this machine.
"${ROOT}/target/debug/phasegate-kwok-runner" --phasegate-bin "${PHASEGATE}" > "${DEMO}/runner.log" 2>&1 & echo $! > "${DEMO}/runner.pid"
trap stop_processes EXIT

kubectl apply -f "${ROOT}/examples/quickstart/20-migration.yaml"

watch_until() { # watch_until <phase>...: print phase changes until one of the phases
  local last="" phase deadline=$((SECONDS + 120))
  while [ $SECONDS -lt $deadline ]; do
    phase="$(kubectl -n "${NS}" get dbm users-email-verified -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    if [ -n "${phase}" ] && [ "${phase}" != "${last}" ]; then
      kubectl -n "${NS}" get dbm users-email-verified --no-headers | sed 's/^/  dbm: /'
      last="${phase}"
    fi
    for want in "$@"; do [ "${phase}" = "${want}" ] && return 0; done
    [ "${phase}" = "Failed" ] && { kubectl -n "${NS}" describe dbm users-email-verified; return 1; }
    sleep 0.5
  done
  echo "timed out"; return 1
}

say "Expand runs; contract waits for shop-api 2.0.0"
watch_until AwaitingRollout
echo "users columns: $(columns)   (email_verified added, legacy_flag still there for 1.0.0)"
kubectl -n "${NS}" get dbm users-email-verified -o jsonpath='{range .status.conditions[*]}{"  "}{.type}={.status} {.reason}: {.message}{"\n"}{end}'

say "Rolling out shop-api 2.0.0"
kubectl -n "${NS}" patch deployment shop-api --type merge -p \
  '{"spec":{"template":{"metadata":{"labels":{"app.kubernetes.io/version":"2.0.0"}},"spec":{"containers":[{"name":"api","image":"example.com/shop/api:2.0.0"}]}}}}'
kubectl -n "${NS}" rollout status deployment/shop-api --timeout=60s
watch_until Succeeded
echo "users columns: $(columns)   (legacy_flag dropped after the rollout)"

say "Events"
kubectl -n "${NS}" get events --field-selector involvedObject.name=users-email-verified --sort-by=.lastTimestamp \
  -o custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message 2>/dev/null || true

if [ -n "${POOLER}" ]; then
  say "PgBouncer (${POOLER} pooling): the executors' transactions went through it"
  PGPASSWORD=demo psql -X -h 127.0.0.1 -p "${BOUNCER_PORT}" -U shop -d pgbouncer \
    -c "SHOW STATS" -c "SHOW POOLS" 2>/dev/null | grep -E 'database|postgres' || true
  echo "  log: ${BOUNCER_DIR}/pgbouncer.log"
fi

cat <<EOT

Done. The cluster and PostgreSQL (and PgBouncer, if started) are still running; look around with:
  eval "\$(hack/local-cluster.sh env)"
  kubectl -n ${NS} get dbm
  kubectl -n ${NS} describe dbm users-email-verified
  kubectl -n ${NS} get jobs,pods
  kubectl explain databasemigration.spec.contract
Stop everything with: make demo-down
EOT
