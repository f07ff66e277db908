#!/usr/bin/env bash
# helm, built from its Go module (hack/tools/helm/go.mod) into the Phasegate cache, then run.
#
#   hack/helm.sh [helm args...]     build if needed (idempotent), then exec helm
#   hack/helm.sh --build-only       build if needed and print the binary's path
#
# Environment: PHASEGATE_CACHE (default: $HOME/.cache/phasegate). The binary lands in
# ${PHASEGATE_CACHE}/helm-<version>/bin/helm and is linked into ${PHASEGATE_CACHE}/bin.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODDIR="${REPO_ROOT}/hack/tools/helm"
HELM_VERSION="$(awk '$1 == "helm.sh/helm/v3" && $2 ~ /^v/ {print $2; exit}' "${MODDIR}/go.mod")"
[[ -n "${HELM_VERSION}" ]] || { echo "[helm] ERROR: no helm.sh/helm/v3 version in ${MODDIR}/go.mod" >&2; exit 1; }
CACHE="${PHASEGATE_CACHE:-${HOME}/.cache/phasegate}"
HELM="${CACHE}/helm-${HELM_VERSION}/bin/helm"

log() { echo "[helm] $*" >&2; }

build() {
  [[ -x "${HELM}" ]] && return 0
  command -v go >/dev/null || { log "ERROR: go is required to build helm"; exit 1; }
  mkdir -p "${CACHE}" "$(dirname "${HELM}")"
  exec 8>"${CACHE}/.helm-build.lock"
  flock 8
  if [[ ! -x "${HELM}" ]]; then
    local tmp="${HELM}.tmp.$$" start
    start=$(date +%s)
    log "building helm ${HELM_VERSION} from helm.sh/helm/v3/cmd/helm (a few minutes, once) ..."
    local v="helm.sh/helm/v3/internal/version"
    (cd "${MODDIR}" && CGO_ENABLED=0 go build -mod=readonly -trimpath \
      -ldflags "-s -w -X ${v}.version=${HELM_VERSION} -X ${v}.gitTreeState=clean" \
      -o "${tmp}" helm.sh/helm/v3/cmd/helm) || { rm -f "${tmp}"; log "ERROR: build failed"; exit 1; }
    mv -f "${tmp}" "${HELM}"
    log "built helm in $(($(date +%s) - start))s: ${HELM}"
  fi
  exec 8>&-
  mkdir -p "${CACHE}/bin"
  ln -sfn "${HELM}" "${CACHE}/bin/helm"
}

build
if [[ "${1:-}" == "--build-only" ]]; then
  echo "${HELM}"
  exit 0
fi
# Keep helm's own state out of the user's home: no repositories or plugins are needed.
export HELM_CACHE_HOME="${HELM_CACHE_HOME:-${CACHE}/helm-home/cache}"
export HELM_CONFIG_HOME="${HELM_CONFIG_HOME:-${CACHE}/helm-home/config}"
export HELM_DATA_HOME="${HELM_DATA_HOME:-${CACHE}/helm-home/data}"
exec "${HELM}" "$@"
