#!/usr/bin/env bash
# `make bench-scale`: the operator at scale on its own kwok cluster (issue 11).
#
# N Deployments x R replicas (kwok pods) and M DatabaseMigrations with 5 named targets each;
# the operator (a release build, a host process with the admin identity behind a counting
# proxy) expands all of them, then one rollout wave moves every Deployment to the new version
# and every migration contracts. Reported: operator RSS (peak, steady), CPU seconds, the
# operator's API requests by verb and resource, apiserver_request_total deltas, status writes,
# and the reaction time from "last target complete" to "contract Job created".
#
# The same wave runs first against BASELINE_REF (built in a cached worktree), then against
# this tree, each on a freshly created cluster, and the report puts them side by side.
#
# Environment:
#   DEPLOYMENTS, REPLICAS, MIGRATIONS  sizes (default 5000, 4, 1000)
#   PRESET=small|medium|full           200x2/40, 1000x2/200, 5000x4/1000 (explicit sizes win)
#   BASELINE_REF                       git ref of the baseline (default a47a784; "none": skip)
#   OPERATOR_BIN, BASELINE_BIN         use these binaries instead of building
#   STARTUP_TIMEOUT, WAVE_TIMEOUT      seconds (default 900, 1200)
#   WAVE_DEPLOYMENTS                   roll only the first N Deployments (default: all); the
#                                      migrations whose targets all roll are the ones measured
#   IDLE_SECONDS                       idle window before the wave (default 20)
#   BENCH_CLUSTER                      kwok cluster name (default phasegate-bench; never the
#                                      e2e cluster "phasegate")
#   RUNS                               "baseline current" (default), or one of them
#   KEEP_CLUSTER=1                     leave the cluster of the last run up
#   BENCH_OUT                          results directory (default $CACHE/bench-scale/results/<time>)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${PHASEGATE_CACHE:-$HOME/.cache/phasegate}"
WORK="${CACHE}/bench-scale"
log() { echo "[bench-scale] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

case "${PRESET:-}" in
  small) d=200 r=2 m=40 ;;
  medium) d=1000 r=2 m=200 ;;
  full | "") d=5000 r=4 m=1000 ;;
  *) die "unknown PRESET ${PRESET} (small, medium, full)" ;;
esac
DEPLOYMENTS="${DEPLOYMENTS:-$d}"
REPLICAS="${REPLICAS:-$r}"
MIGRATIONS="${MIGRATIONS:-$m}"
PODS=$((DEPLOYMENTS * REPLICAS))
BASELINE_REF="${BASELINE_REF-a47a784}"
STARTUP_TIMEOUT="${STARTUP_TIMEOUT:-900}"
WAVE_TIMEOUT="${WAVE_TIMEOUT:-1200}"
IDLE_SECONDS="${IDLE_SECONDS:-20}"
export PHASEGATE_CLUSTER="${BENCH_CLUSTER:-phasegate-bench}"
[[ "${PHASEGATE_CLUSTER}" != "phasegate" ]] || die "the bench needs a cluster of its own, not the e2e cluster \"phasegate\""
# kwokctl's fake nodes take 110 pods each (and a /24 of pod IPs): one node per 100 pods, plus
# a quarter for the surge of the rolling update and the executor pods, plus 2.
export PHASEGATE_NODES="${BENCH_NODES:-$(((PODS * 125 / 100 + MIGRATIONS + 99) / 100 + 2))}"
(((DEPLOYMENTS >= MIGRATIONS * 5))) || log "note: fewer Deployments than 5 x migrations: targets are shared"
# On a busy machine the controller-manager and the scheduler lose their leader lease (renewals
# time out) and exit, and kwokctl does not restart them: with one replica each, no election.
export PHASEGATE_KWOKCTL_ARGS="--extra-args kube-scheduler=leader-elect=false --extra-args kube-controller-manager=leader-elect=false"
OUT="${BENCH_OUT:-${WORK}/results/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "${OUT}"

# ---------------------------------------------------------------- builds

HELPER="${WORK}/benchscale"
log "building the measuring helper (hack/tools/benchscale)"
(cd "${ROOT}/hack/tools/benchscale" && CGO_ENABLED=0 go build -mod=readonly -trimpath -o "${HELPER}.tmp" . && mv -f "${HELPER}.tmp" "${HELPER}")

"${ROOT}/hack/local-cluster.sh" build

# shellcheck source=hack/lib/baseline.sh
source "${ROOT}/hack/lib/baseline.sh"

CURRENT_BIN="${OPERATOR_BIN:-$(build_current)}"
BASE_BIN=""
if [[ -n "${BASELINE_REF}" && "${BASELINE_REF}" != "none" ]]; then
  BASE_BIN="${BASELINE_BIN:-$(build_baseline)}"
fi

# ---------------------------------------------------------------- runs

KUBECONFIG_BENCH="$("${ROOT}/hack/local-cluster.sh" env | sed -n "s/^export KUBECONFIG='\(.*\)'$/\1/p")"
kc() { "${CACHE}/bin/kubectl" --kubeconfig "${KUBECONFIG_BENCH}" "$@"; }

run_one() { # run_one <label> <operator binary>
  local label="$1" bin="$2"
  log "=== ${label}: ${bin}"
  log "fresh cluster ${PHASEGATE_CLUSTER} with ${PHASEGATE_NODES} fake nodes"
  "${ROOT}/hack/local-cluster.sh" down
  "${ROOT}/hack/local-cluster.sh" up
  "${bin}" crd | kc apply --server-side -f - >/dev/null
  # `kubectl wait` fails at once ("accessor error") while a new CRD has no conditions yet.
  local i
  for i in $(seq 60); do
    [[ "$(kc get crd databasemigrations.phasegate.dev -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null)" == True ]] && break
    sleep 1
  done
  log "load before the run: $(uptime)"
  "${HELPER}" run --kubeconfig "${KUBECONFIG_BENCH}" --operator "${bin}" --label "${label}" \
    --out "${OUT}/${label}.json" --operator-log "${OUT}/${label}-operator.log" \
    --deployments "${DEPLOYMENTS}" --replicas "${REPLICAS}" --migrations "${MIGRATIONS}" \
    --startup-timeout "${STARTUP_TIMEOUT}s" --wave-timeout "${WAVE_TIMEOUT}s" --idle "${IDLE_SECONDS}s" \
    --wave "${WAVE_DEPLOYMENTS:-0}"
  log "load after the run: $(uptime)"
}

cleanup() {
  if [[ "${KEEP_CLUSTER:-}" != "1" ]]; then "${ROOT}/hack/local-cluster.sh" down || true; fi
}
trap cleanup EXIT

log "sizes: ${DEPLOYMENTS} Deployments x ${REPLICAS} replicas = ${PODS} pods, ${MIGRATIONS} migrations; results in ${OUT}"
# RUNS=baseline or RUNS=current runs one side only (into the same BENCH_OUT as the other).
RUNS="${RUNS:-baseline current}"
if [[ -n "${BASE_BIN}" && " ${RUNS} " == *" baseline "* ]]; then
  run_one baseline "${BASE_BIN}"
fi
if [[ " ${RUNS} " == *" current "* ]]; then
  run_one current "${CURRENT_BIN}"
fi

if [[ -f "${OUT}/baseline.json" && -f "${OUT}/current.json" ]]; then
  "${HELPER}" report --baseline "${OUT}/baseline.json" "${OUT}/current.json" | tee "${OUT}/report.txt"
elif [[ -f "${OUT}/current.json" ]]; then
  "${HELPER}" report "${OUT}/current.json" | tee "${OUT}/report.txt"
else
  "${HELPER}" report "${OUT}/baseline.json" | tee "${OUT}/report.txt"
fi
