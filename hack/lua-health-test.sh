#!/usr/bin/env bash
# Run the Argo CD health check (deploy/argocd/health.lua) against its test table
# (deploy/argocd/health_test.yaml) with gopher-lua, the Lua interpreter Argo CD embeds.
# Prints one line per case and "N passed, M failed"; exits non-zero on any failure.
# (The same table through Argo CD's own Lua path, and Flux's view of every state, run in
# `make gitops-test`.)
#
#   hack/lua-health-test.sh [health.lua] [health_test.yaml]
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT="$(realpath "${1:-${REPO_ROOT}/deploy/argocd/health.lua}")"
TABLE="$(realpath "${2:-${REPO_ROOT}/deploy/argocd/health_test.yaml}")"
command -v go >/dev/null || { echo "[lua-health-test] ERROR: go is required" >&2; exit 1; }
# `go run` rebuilds only when hack/tools/lua changes (Go's build cache).
cd "${REPO_ROOT}/hack/tools/lua"
exec go run -mod=readonly . "${SCRIPT}" "${TABLE}"
