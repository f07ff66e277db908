#!/usr/bin/env bash
# Build (once) and print the path of tests/gitops' driver: Argo CD v3's Lua health path and
# sync engine (see tests/gitops/main.go). Cached under $PHASEGATE_CACHE/bin, keyed by the
# hash of the module's go.mod, go.sum and sources, like hack/local-cluster.sh's tools.
#
#   hack/gitops-driver.sh            # prints the binary's path (builds it if needed)
#   hack/gitops-driver.sh flux       # the same for tests/gitops/flux (Flux's CEL + kstatus)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${PHASEGATE_CACHE:-${HOME}/.cache/phasegate}"
case "${1:-argocd}" in
  argocd) dir="${REPO_ROOT}/tests/gitops" name=gitops-driver ;;
  flux) dir="${REPO_ROOT}/tests/gitops/flux" name=flux-driver ;;
  *) echo "usage: $0 [argocd|flux]" >&2; exit 2 ;;
esac
command -v go >/dev/null || { echo "[gitops-driver] ERROR: go is required" >&2; exit 1; }
key="$(cd "${dir}" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-16)"
out="${CACHE}/bin/${name}-${key}"
if [[ ! -x "${out}" ]]; then
  mkdir -p "${CACHE}/bin"
  exec 9>"${CACHE}/.${name}.lock"
  flock 9
  if [[ ! -x "${out}" ]]; then
    start=$(date +%s)
    echo "[gitops-driver] building ${name} (first time: a few minutes) ..." >&2
    tmp="${out}.tmp.$$"
    (cd "${dir}" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" -o "${tmp}" .) || {
      rm -f "${tmp}"
      echo "[gitops-driver] ERROR: build of ${name} failed" >&2
      exit 1
    }
    mv -f "${tmp}" "${out}"
    echo "[gitops-driver] built ${name} in $(($(date +%s) - start))s" >&2
  fi
fi
echo "${out}"
