#!/usr/bin/env bash
# Local Kubernetes control plane for Phasegate e2e tests: kwok (fake nodes/pods)
# driving a real kube-apiserver, kube-controller-manager, kube-scheduler and etcd,
# all built from Go modules (no container engine, no release downloads).
#
#   hack/local-cluster.sh build    build binaries into the cache (idempotent)
#   hack/local-cluster.sh up       build if needed, create cluster "phasegate" (idempotent)
#   hack/local-cluster.sh down     delete the cluster and all its processes
#   hack/local-cluster.sh status   print whether the cluster is up (exit 0 if up)
#   hack/local-cluster.sh env      print exports: eval "$(hack/local-cluster.sh env)"
#
# Environment:
#   PHASEGATE_CACHE       cache root (default: $HOME/.cache/phasegate)
#   PHASEGATE_CLUSTER     cluster name (default: phasegate); another name gets its own
#                         kubeconfig (kubeconfig-<name>) and lock, so it can run beside the default
#   PHASEGATE_NODES       number of fake nodes (default: 2)
#   PHASEGATE_KWOKCTL_ARGS  extra `kwokctl create cluster` arguments (default: none)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HACK="${REPO_ROOT}/hack"
TOOLS="${HACK}/tools"

# Versions come from the pinned tool modules (hack/tools/*/go.mod).
modver() { awk -v m="$2" '$1 == m && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' "$1"; }
K8S_VERSION="$(modver "${TOOLS}/kube/go.mod" k8s.io/kubernetes)"
ETCD_VERSION="$(modver "${TOOLS}/etcd/go.mod" go.etcd.io/etcd/server/v3)"
KWOK_VERSION="$(modver "${TOOLS}/kwok/go.mod" sigs.k8s.io/kwok)"

CACHE="${PHASEGATE_CACHE:-${HOME}/.cache/phasegate}"
CLUSTER="${PHASEGATE_CLUSTER:-phasegate}"
NODES="${PHASEGATE_NODES:-2}"
K8S_BIN="${CACHE}/k8s-${K8S_VERSION}/bin"
ETCD_BIN="${CACHE}/etcd-${ETCD_VERSION}/bin"
KWOK_BIN="${CACHE}/kwok-${KWOK_VERSION}/bin"
BIN="${CACHE}/bin" # symlinks to the versioned binaries, for PATH
# The default cluster keeps the historical paths; any other cluster has its own kubeconfig and
# up/down lock, so e.g. `make bench-scale` can run beside the e2e cluster (kwokctl picks free ports).
if [[ "${CLUSTER}" == "phasegate" ]]; then CLUSTER_SUFFIX=""; else CLUSTER_SUFFIX="-${CLUSTER}"; fi
KUBECONFIG_PATH="${CACHE}/kubeconfig${CLUSTER_SUFFIX}"
STAGES="${HACK}/kwok/stages.yaml"
# kwokctl keeps cluster state (pki, etcd data, logs, pids) here instead of ~/.kwok.
export KWOK_WORKDIR="${CACHE}/kwok-workdir"

log() { echo "[local-cluster] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- build

k8s_ldflags() {
  local date p flags="-s -w"
  # Deterministic build date: the module's publication time.
  date="$(cd "${TOOLS}/kube" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes 2>/dev/null || true)"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X ${p}.gitVersion=${K8S_VERSION}"
    flags+=" -X ${p}.gitMajor=$(echo "${K8S_VERSION#v}" | cut -d. -f1)"
    flags+=" -X ${p}.gitMinor=$(echo "${K8S_VERSION#v}" | cut -d. -f2)"
    flags+=" -X ${p}.gitTreeState=clean"
    [[ -n "${date}" ]] && flags+=" -X ${p}.buildDate=${date}"
  done
  echo "${flags}"
}

# go_build <module dir> <output> <package> [ldflags]
go_build() {
  local dir="$1" out="$2" pkg="$3" ldflags="${4:--s -w}" start tmp
  if [[ -x "${out}" ]]; then
    log "have $(basename "${out}") (${out})"
    return 0
  fi
  command -v go >/dev/null || die "go is required to build $(basename "${out}")"
  mkdir -p "$(dirname "${out}")"
  tmp="${out}.tmp.$$"
  start=$(date +%s)
  log "building $(basename "${out}") from ${pkg} ..."
  (cd "${dir}" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "${ldflags}" -o "${tmp}" "${pkg}") || {
    rm -f "${tmp}"
    die "build of ${pkg} failed"
  }
  mv -f "${tmp}" "${out}"
  log "built $(basename "${out}") in $(($(date +%s) - start))s"
}

cmd_build() {
  mkdir -p "${CACHE}"
  # Serialize concurrent builds (e.g. a background build and an `up`).
  exec 9>"${CACHE}/.build.lock"
  if ! flock -n 9; then
    log "another build is running; waiting for it ..."
    flock 9
  fi
  local kflags kwokflags b
  kflags="$(k8s_ldflags)"
  kwokflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION}"
  # Cheapest first, so a partially finished background build is already useful.
  go_build "${TOOLS}/kwok" "${KWOK_BIN}/kwokctl" sigs.k8s.io/kwok/cmd/kwokctl "${kwokflags}"
  go_build "${TOOLS}/kwok" "${KWOK_BIN}/kwok" sigs.k8s.io/kwok/cmd/kwok "${kwokflags}"
  go_build "${TOOLS}/etcd" "${ETCD_BIN}/etcd" go.etcd.io/etcd/server/v3
  for b in kubectl kube-scheduler kube-controller-manager kube-apiserver; do
    go_build "${TOOLS}/kube" "${K8S_BIN}/${b}" "k8s.io/kubernetes/cmd/${b}" "${kflags}"
  done
  mkdir -p "${BIN}"
  for b in "${KWOK_BIN}/kwokctl" "${KWOK_BIN}/kwok" "${ETCD_BIN}/etcd" \
    "${K8S_BIN}/kubectl" "${K8S_BIN}/kube-scheduler" "${K8S_BIN}/kube-controller-manager" "${K8S_BIN}/kube-apiserver"; do
    ln -sfn "${b}" "${BIN}/$(basename "${b}")"
  done
  exec 9>&-
  log "binaries ready in ${BIN}"
}

have_binaries() {
  local b
  for b in "${KWOK_BIN}/kwokctl" "${KWOK_BIN}/kwok" "${ETCD_BIN}/etcd" "${K8S_BIN}/kubectl" \
    "${K8S_BIN}/kube-scheduler" "${K8S_BIN}/kube-controller-manager" "${K8S_BIN}/kube-apiserver"; do
    [[ -x "${b}" ]] || return 1
  done
}

# ---------------------------------------------------------------- cluster

kwokctl() { "${KWOK_BIN}/kwokctl" "$@"; }
kc() { "${K8S_BIN}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" "$@"; }

cluster_exists() {
  [[ -x "${KWOK_BIN}/kwokctl" ]] || return 1
  kwokctl get clusters 2>/dev/null | grep -qx "${CLUSTER}"
}

# Healthy = API ready, expected number of Ready nodes, default ServiceAccount present.
cluster_healthy() {
  [[ -s "${KUBECONFIG_PATH}" ]] || return 1
  [[ "$(kc get --raw /readyz --request-timeout=5s 2>/dev/null)" == "ok" ]] || return 1
  kc get serviceaccount default -n default --request-timeout=5s >/dev/null 2>&1 || return 1
  local ready
  ready="$(kc get nodes --request-timeout=5s -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c '^True$' || true)"
  [[ "${ready}" -ge "${NODES}" ]] || return 1
  # Created with the kwok Logs CRD (older clusters lack it: recreate them).
  kc get crd logs.kwok.x-k8s.io --request-timeout=5s >/dev/null 2>&1 || return 1
  # Every kwokctl-managed process (etcd, apiserver, kcm, scheduler, kwok-controller) alive.
  local pidfile pid n=0
  for pidfile in "${KWOK_WORKDIR}/clusters/${CLUSTER}"/pids/*.pid; do
    [[ -f "${pidfile}" ]] || continue
    pid="$(cat "${pidfile}")"
    # Alive and not a zombie (kwokctl's children are reparented to PID 1).
    [[ -n "${pid}" ]] && [[ "$(ps -o stat= -p "${pid}" 2>/dev/null)" =~ ^[^Z] ]] || return 1
    n=$((n + 1))
  done
  [[ "${n}" -ge 5 ]]
}

# wait_for <seconds> <description> <command...>
wait_for() {
  local timeout="$1" what="$2" deadline
  shift 2
  deadline=$(($(date +%s) + timeout))
  until "$@" >/dev/null 2>&1; do
    (($(date +%s) < deadline)) || die "timed out after ${timeout}s waiting for ${what}"
    sleep 0.5
  done
}

api_ready() { [[ "$(kc get --raw /readyz --request-timeout=5s 2>/dev/null)" == "ok" ]]; }
default_sa() { kc get serviceaccount default -n default --request-timeout=5s; }
nodes_ready() {
  local ready
  ready="$(kc get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$' || true)"
  [[ "${ready}" -ge "${NODES}" ]]
}

cmd_down() {
  if cluster_exists; then
    log "deleting cluster ${CLUSTER} ..."
    kwokctl delete cluster --name "${CLUSTER}" --kubeconfig "${KUBECONFIG_PATH}" >&2 || true
  fi
  kill_leftovers
  rm -f "${KUBECONFIG_PATH}"
  log "cluster ${CLUSTER} is down"
}

# Kill any process still running from this cluster's workdir (e.g. after a crash of kwokctl).
kill_leftovers() {
  local dir="${KWOK_WORKDIR}/clusters/${CLUSTER}" pids pid
  pids="$(pgrep -f -- "${dir}/" 2>/dev/null || true)"
  [[ -n "${pids}" ]] || { rm -rf "${dir}"; return 0; }
  log "killing leftover processes: $(echo ${pids})"
  for pid in ${pids}; do kill "${pid}" 2>/dev/null || true; done
  for _ in $(seq 1 20); do
    pids="$(pgrep -f -- "${dir}/" 2>/dev/null || true)"
    [[ -z "${pids}" ]] && break
    sleep 0.25
  done
  for pid in ${pids}; do kill -9 "${pid}" 2>/dev/null || true; done
  rm -rf "${dir}"
}

cmd_up() {
  local start
  start=$(date +%s)
  have_binaries || cmd_build
  mkdir -p "${CACHE}"
  if cluster_exists; then
    if cluster_healthy; then
      log "cluster ${CLUSTER} is already up (KUBECONFIG=${KUBECONFIG_PATH})"
      return 0
    fi
    log "cluster ${CLUSTER} exists but is not healthy; recreating"
    cmd_down
  else
    kill_leftovers
  fi

  log "creating cluster ${CLUSTER} (kube ${K8S_VERSION}, etcd ${ETCD_VERSION}, kwok ${KWOK_VERSION}) ..."
  rm -f "${KUBECONFIG_PATH}"
  # Every binary is given explicitly so kwokctl never downloads anything.
  # --kubeconfig: kwokctl writes its context here instead of ~/.kube/config.
  # kubectl and the kube version have no flags, only env vars.
  KWOK_KUBE_VERSION="${K8S_VERSION}" KWOK_KUBECTL_BINARY="${K8S_BIN}/kubectl" \
  kwokctl create cluster \
    --name "${CLUSTER}" \
    --runtime binary \
    --kubeconfig "${KUBECONFIG_PATH}" \
    --kube-apiserver-binary "${K8S_BIN}/kube-apiserver" \
    --kube-controller-manager-binary "${K8S_BIN}/kube-controller-manager" \
    --kube-scheduler-binary "${K8S_BIN}/kube-scheduler" \
    --etcd-binary "${ETCD_BIN}/etcd" \
    --kwok-controller-binary "${KWOK_BIN}/kwok" \
    --config "${STAGES}" \
    --enable-crds Logs \
    --disable-qps-limits \
    --wait 120s \
    --quiet-pull ${PHASEGATE_KWOKCTL_ARGS:-} >&2 8>&- || {
    log "kwokctl create cluster failed; cleaning up"
    cmd_down || true
    die "could not create cluster ${CLUSTER}"
  }
  # Standalone kubeconfig for this cluster only (current-context set).
  kwokctl get kubeconfig --name "${CLUSTER}" >"${KUBECONFIG_PATH}.tmp"
  mv -f "${KUBECONFIG_PATH}.tmp" "${KUBECONFIG_PATH}"
  chmod 600 "${KUBECONFIG_PATH}"

  wait_for 120 "API server readiness" api_ready
  log "adding ${NODES} fake nodes ..."
  kwokctl scale node --name "${CLUSTER}" --replicas "${NODES}" >&2 8>&-
  wait_for 120 "${NODES} Ready nodes" nodes_ready
  wait_for 120 "ServiceAccount default/default" default_sa
  log "cluster ${CLUSTER} is up in $(($(date +%s) - start))s (KUBECONFIG=${KUBECONFIG_PATH})"
}

cmd_status() {
  if cluster_exists && cluster_healthy; then
    echo "up: cluster ${CLUSTER} (KUBECONFIG=${KUBECONFIG_PATH})"
    kc get nodes 2>/dev/null || true
    return 0
  elif cluster_exists; then
    echo "broken: cluster ${CLUSTER} exists but is not healthy (run: $0 up to recreate)"
    return 1
  fi
  echo "down: cluster ${CLUSTER} does not exist"
  return 1
}

cmd_env() {
  echo "export KUBECONFIG='${KUBECONFIG_PATH}'"
  echo "export PATH='${BIN}':\"\$PATH\""
  echo "export KWOK_WORKDIR='${KWOK_WORKDIR}'"
}

# One up/down at a time: two concurrent `up`s (a test run and a developer) would delete
# each other's half-created cluster. The cluster's daemons must not inherit the lock's fd.
locked() {
  mkdir -p "${CACHE}"
  exec 8>"${CACHE}/cluster${CLUSTER_SUFFIX}.lock"
  flock 8
  "$@"
}

case "${1:-}" in
  build) cmd_build ;;
  up) locked cmd_up ;;
  down) locked cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *)
    echo "usage: $0 build|up|down|status|env" >&2
    exit 2
    ;;
esac
