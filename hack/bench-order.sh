#!/usr/bin/env bash
# `make bench-order`: migrations on one database applied at once (a GitOps bootstrap of a
# service's history), this tree's operator side by side with a baseline's, on the local kwok
# cluster with a real PostgreSQL and real executors (the e2e harness: tests/e2e/bench.rs).
# Each migration needs the column the one before it adds, so only creation order works.
#
# Both runs' executors are this tree's release build, as users run them (the suite's own are
# debug builds, several times the CPU on a 2-core machine that also hosts the control plane).
#
# Per run: seconds from the first create until every migration has expanded, the status
# writes the API server counted meanwhile, the expand Jobs it took, and whether the ledger kept
# creation order. Last line:
#   migrations_per_db: migrations=N baseline_s=A phasegate_s=B speedup=X baseline_writes=W phasegate_writes=V baseline_jobs=J phasegate_jobs=K baseline_expanded=E phasegate_expanded=F ordered=true|false
# (a run that hits BENCH_TIMEOUT stops there: its *_expanded is below N).
#
# Environment:
#   MIGRATIONS            how many (default 200)
#   BASELINE_REF          git ref of the baseline operator (default f44ca95, before expand
#                         batches: Jobs of up to 16 migrations started together and waited in
#                         the ledger); "none": this tree only
#   OPERATOR_BIN, BASELINE_BIN   use these operator binaries instead of building (release)
#   BENCH_TIMEOUT         seconds a run may take (default 900)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${PHASEGATE_CACHE:-$HOME/.cache/phasegate}"
WORK="${CACHE}/bench-order"
BASELINE_REF="${BASELINE_REF-f44ca95}"
MIGRATIONS="${MIGRATIONS:-200}"
log() { echo "[bench-order] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
mkdir -p "${WORK}"

# shellcheck source=hack/lib/baseline.sh
source "${ROOT}/hack/lib/baseline.sh"

"${ROOT}/hack/local-cluster.sh" up >&2
eval "$("${ROOT}/hack/local-cluster.sh" env)"
CURRENT_BIN="${OPERATOR_BIN:-$(build_current)}"
BASE_BIN=""
if [[ "${BASELINE_REF}" != "none" ]]; then
  BASE_BIN="${BASELINE_BIN:-$(build_baseline)}"
fi
(cd "${ROOT}" && cargo test -q --features e2e --test e2e --no-run) >&2

run_one() { # run_one <operator binary>: prints the benchmark's line
  log "load before: $(uptime)"
  # Each operator with its own CRD: this tree's may prune status fields an older one writes.
  "$1" crd > "${WORK}/crd.yaml"
  local line
  line="$(cd "${ROOT}" && PHASEGATE_E2E_KUBECONFIG="${KUBECONFIG}" PHASEGATE_E2E_OPERATOR_BIN="$1" \
    PHASEGATE_E2E_CRD="${WORK}/crd.yaml" \
    PHASEGATE_E2E_EXECUTOR_BIN="${CURRENT_BIN}" \
    PHASEGATE_BENCH_MIGRATIONS="${MIGRATIONS}" PHASEGATE_BENCH_TIMEOUT="${BENCH_TIMEOUT:-900}" \
    cargo test -q --features e2e --test e2e -- --ignored --exact bench::bench_migrations_per_db --nocapture \
    2>"${WORK}/run.err" | grep '^migrations_per_db:')" || true
  [[ -n "${line}" ]] || { log "the run printed no result; its last lines:"; tail -20 "${WORK}/run.err" >&2; }
  echo "${line}" | tee /dev/stderr
  log "load after: $(uptime)"
}
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

base_line=""
if [[ -n "${BASE_BIN}" ]]; then
  log "baseline operator ${BASELINE_REF}: ${BASE_BIN}"
  base_line="$(run_one "${BASE_BIN}")"
fi
log "this tree's operator: ${CURRENT_BIN}"
cur_line="$(run_one "${CURRENT_BIN}")"
[[ -n "${cur_line}" ]] || die "no result from this tree's run"
cur_s="$(field seconds "${cur_line}")"
if [[ -n "${base_line}" ]]; then
  base_s="$(field seconds "${base_line}")"
  speedup="$(awk -v a="${base_s}" -v b="${cur_s}" 'BEGIN { printf "%.1f", a / b }')"
  echo "migrations_per_db: migrations=${MIGRATIONS} baseline_s=${base_s} phasegate_s=${cur_s} speedup=${speedup} baseline_writes=$(field status_writes "${base_line}") phasegate_writes=$(field status_writes "${cur_line}") baseline_jobs=$(field jobs "${base_line}") phasegate_jobs=$(field jobs "${cur_line}") baseline_expanded=$(field expanded "${base_line}") phasegate_expanded=$(field expanded "${cur_line}") ordered=$(field ordered "${cur_line}")"
else
  echo "migrations_per_db: migrations=${MIGRATIONS} phasegate_s=${cur_s} phasegate_writes=$(field status_writes "${cur_line}") phasegate_jobs=$(field jobs "${cur_line}") phasegate_expanded=$(field expanded "${cur_line}") ordered=$(field ordered "${cur_line}")"
fi
