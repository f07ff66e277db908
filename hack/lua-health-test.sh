#!/usr/bin/env bash
# Run the Argo CD health check (deploy/argocd/health.lua) against its test table
# (deploy/argocd/health_test.yaml) with gopher-lua, the Lua interpreter Argo CD embeds.
# Prints one line per case and "N passed, M failed"; exits non-zero on any failure.
# First, the same inputs' kstatus (what Flux uses) against deploy/flux/kstatus_test.yaml.
#
#   hack/lua-health-test.sh [health.lua] [health_test.yaml]
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT="$(realpath "${1:-${REPO_ROOT}/deploy/argocd/health.lua}")"
TABLE="$(realpath "${2:-${REPO_ROOT}/deploy/argocd/health_test.yaml}")"
command -v go >/dev/null || { echo "[lua-health-test] ERROR: go is required" >&2; exit 1; }
# `go run` rebuilds only when hack/tools/lua changes (Go's build cache).
cd "${REPO_ROOT}/hack/tools/lua"
if [[ $# -eq 0 ]]; then
  echo "--- kstatus (Flux): deploy/flux/kstatus_test.yaml"
  go run -mod=readonly . kstatus "${REPO_ROOT}/deploy/flux/kstatus_test.yaml"
  echo "--- Argo CD health: deploy/argocd/health_test.yaml"
fi
exec go run -mod=readonly . "${SCRIPT}" "${TABLE}"
