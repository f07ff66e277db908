#!/usr/bin/env bash
# Builds the Argo Rollouts controller from its Go module (no release download), caches it under
# ~/.cache/phasegate, and prints two lines: the controller binary and the directory of its CRDs.
# Used by `make e2e` for the Rollout-target tests (tests/e2e/argo.rs). Idempotent.
#
#   hack/argo-rollouts.sh build    build if needed; print "<binary>\n<crd dir>"
set -euo pipefail

# v1.10.2 needs go >= 1.26.10; v1.10.1 builds with the toolchain this machine has.
VERSION="v1.10.1"
CACHE="${PHASEGATE_CACHE:-${HOME}/.cache/phasegate}"
OUT="${CACHE}/argo-rollouts-${VERSION}"
BIN="${OUT}/bin/rollouts-controller"
CRDS="${OUT}/crds"

log() { echo "[argo-rollouts] $*" >&2; }

build() {
  if [[ -x "${BIN}" && -s "${CRDS}/rollout-crd.yaml" ]]; then
    return 0
  fi
  local src dir start
  start=$(date +%s)
  log "building rollouts-controller ${VERSION} from its Go module (first time only) ..."
  src="$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "github.com/argoproj/argo-rollouts@${VERSION}" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "${src}" ]] || { log "go mod download gave no source directory"; exit 1; }
  # The module cache is read-only, and the module's own go.mod (with its replace directives)
  # must be the main module: build in a writable copy.
  dir="$(mktemp -d)"
  trap 'rm -rf "${dir}"' RETURN
  cp -r "${src}/." "${dir}/"
  chmod -R u+w "${dir}"
  mkdir -p "${OUT}/bin" "${CRDS}.tmp"
  (cd "${dir}" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" \
    -o "${BIN}.tmp" ./cmd/rollouts-controller)
  cp "${dir}"/manifests/crds/*-crd.yaml "${CRDS}.tmp/"
  rm -rf "${CRDS}"
  mv "${CRDS}.tmp" "${CRDS}"
  mv "${BIN}.tmp" "${BIN}"
  log "built in $(($(date +%s) - start))s"
}

case "${1:-}" in
  build)
    build
    echo "${BIN}"
    echo "${CRDS}"
    ;;
  *)
    echo "usage: $0 build" >&2
    exit 2
    ;;
esac
