#!/usr/bin/env bash
# promtool and the dashboard/rules checker (tests/monitoring), both built from the Go module
# github.com/prometheus/prometheus at the version tests/monitoring/go.mod pins. Cached under
# $PHASEGATE_CACHE; promtool keyed by that version, the checker by the hash of its sources.
#
#   hack/promtool.sh [promtool args...]   build if needed (idempotent), then exec promtool
#   hack/promtool.sh --build-only         build if needed and print promtool's path
#   hack/promtool.sh --checker            build if needed and print the checker's path
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODDIR="${REPO_ROOT}/tests/monitoring"
PKG=github.com/prometheus/prometheus
VERSION="$(awk -v p="${PKG}" '($1 == p || ($1 == "require" && $2 == p)) {print $NF; exit}' "${MODDIR}/go.mod")"
[[ "${VERSION}" == v* ]] || { echo "[promtool] ERROR: no ${PKG} version in ${MODDIR}/go.mod" >&2; exit 1; }
CACHE="${PHASEGATE_CACHE:-${HOME}/.cache/phasegate}"
PROMTOOL="${CACHE}/promtool-${VERSION}/bin/promtool"

log() { echo "[promtool] $*" >&2; }

# go_build <output> <package> [ldflags...]: build once, under a lock, atomically.
go_build() {
  local out="$1" pkg="$2" ldflags="-s -w ${3:-}"
  [[ -x "${out}" ]] && return 0
  command -v go >/dev/null || { log "ERROR: go is required"; exit 1; }
  mkdir -p "$(dirname "${out}")"
  exec 8>"${CACHE}/.promtool-build.lock"
  flock 8
  if [[ ! -x "${out}" ]]; then
    local tmp="${out}.tmp.$$" start
    start=$(date +%s)
    log "building $(basename "${out}") from ${PKG} ${VERSION} (first time: a few minutes) ..."
    (cd "${MODDIR}" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "${ldflags}" \
      -o "${tmp}" "${pkg}") || { rm -f "${tmp}"; log "ERROR: build of ${pkg} failed"; exit 1; }
    mv -f "${tmp}" "${out}"
    log "built $(basename "${out}") in $(($(date +%s) - start))s: ${out}"
  fi
  exec 8>&-
}

case "${1:-}" in
  --checker)
    key="$(cd "${MODDIR}" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-16)"
    out="${CACHE}/bin/monitoring-check-${key}"
    go_build "${out}" .
    echo "${out}"
    exit 0
    ;;
esac
v="github.com/prometheus/common/version"
go_build "${PROMTOOL}" "${PKG}/cmd/promtool" "-X ${v}.Version=${VERSION#v} -X ${v}.Branch=HEAD"
if [[ "${1:-}" == "--build-only" ]]; then
  echo "${PROMTOOL}"
  exit 0
fi
exec "${PROMTOOL}" "$@"
