#!/usr/bin/env bash
# Test the Helm chart (charts/phasegate):
#   1. helm lint --strict with default, namespace-scoped and ServiceMonitor values;
#   2. helm template with default and namespace-scoped values (CRDs included), checked for
#      Secrets access and for the restricted security context;
#   3. the rendered manifests pass `kubectl apply --dry-run=server` on a real API server,
#      in namespaces that enforce the `restricted` Pod Security Standard;
#   4. the RBAC is applied for real and probed with `kubectl auth can-i` as the operator's
#      ServiceAccount (what it may do, and that it may not read Secrets), then removed.
#
# Cluster: $PHASEGATE_E2E_KUBECONFIG if set, else the local control plane
# (hack/local-cluster.sh up). helm comes from hack/helm.sh (built from its Go module).
# Only objects this script creates (names starting with phasegate-chart-test) are deleted;
# the CRD is applied only as a dry run.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="${REPO_ROOT}/charts/phasegate"
HELM="${REPO_ROOT}/hack/helm.sh"
RELEASE=phasegate-chart-test
NS=phasegate-chart-test           # release namespace
WATCH_NS=phasegate-chart-test-app # watched namespace of the namespace-scoped install
OTHER_NS=phasegate-chart-test-other
SA="system:serviceaccount:${NS}:${RELEASE}"
WORK="$(mktemp -d)"
failures=0

log() { echo "[chart-test] $*" >&2; }
fail() { log "FAIL: $*"; failures=$((failures + 1)); }
pass() { log "ok: $*"; }

# ---------------------------------------------------------------- lint and template

"${HELM}" --build-only >/dev/null
"${HELM}" lint --strict "${CHART}" >/dev/null && pass "helm lint (defaults)" || fail "helm lint (defaults)"
"${HELM}" lint --strict "${CHART}" --set watchNamespace="${WATCH_NS}" --set replicas=2 >/dev/null \
  && pass "helm lint (namespace-scoped, 2 replicas)" || fail "helm lint (namespace-scoped)"
"${HELM}" lint --strict "${CHART}" --set serviceMonitor.enabled=true >/dev/null \
  && pass "helm lint (ServiceMonitor)" || fail "helm lint (ServiceMonitor)"

"${HELM}" template "${RELEASE}" "${CHART}" -n "${NS}" --include-crds >"${WORK}/cluster.yaml"
"${HELM}" template "${RELEASE}" "${CHART}" -n "${NS}" --include-crds \
  --set watchNamespace="${WATCH_NS}" --set replicas=2 >"${WORK}/namespaced.yaml"
"${HELM}" template "${RELEASE}" "${CHART}" -n "${NS}" --set serviceMonitor.enabled=true >"${WORK}/monitor.yaml"
"${HELM}" template "${RELEASE}" "${CHART}" -n "${NS}" >"${WORK}/cluster-nocrd.yaml"
"${HELM}" template "${RELEASE}" "${CHART}" -n "${NS}" --set watchNamespace="${WATCH_NS}" >"${WORK}/namespaced-nocrd.yaml"

# expect_render <file> <description> <grep -E pattern> [count]
expect_render() {
  local n
  n="$(grep -cE -- "$3" "$1" || true)"
  if [[ -n "${4:-}" ]]; then [[ "${n}" -eq "$4" ]]; else [[ "${n}" -gt 0 ]]; fi \
    && pass "$2" || fail "$2 (pattern '$3' found ${n} times in $(basename "$1"))"
}
for f in cluster namespaced; do
  expect_render "${WORK}/${f}.yaml" "${f}: no Secrets access" '(^|[^a-zA-Z])secrets([^a-zA-Z]|$)' 0
  expect_render "${WORK}/${f}.yaml" "${f}: no wildcard grants" '"\*"' 0
  expect_render "${WORK}/${f}.yaml" "${f}: CRD included" '^  name: databasemigrations\.phasegate\.dev$' 1
  for p in 'runAsNonRoot: true' 'readOnlyRootFilesystem: true' 'allowPrivilegeEscalation: false' \
    'type: RuntimeDefault' '- ALL' 'path: /healthz' 'path: /readyz' 'fieldPath: metadata.name' \
    'name: PHASEGATE_EXECUTOR_IMAGE' 'name: PHASEGATE_LOG_FORMAT'; do
    expect_render "${WORK}/${f}.yaml" "${f}: ${p}" "${p}"
  done
done
expect_render "${WORK}/cluster.yaml" "cluster: ClusterRole" '^kind: ClusterRole$' 1
expect_render "${WORK}/cluster.yaml" "cluster: no PHASEGATE_NAMESPACE" 'PHASEGATE_NAMESPACE' 0
expect_render "${WORK}/namespaced.yaml" "namespaced: no ClusterRole" '^kind: ClusterRole' 0
expect_render "${WORK}/namespaced.yaml" "namespaced: PHASEGATE_NAMESPACE" 'name: PHASEGATE_NAMESPACE' 1
expect_render "${WORK}/namespaced.yaml" "namespaced: Role in the watched namespace" "^  namespace: ${WATCH_NS}$" 2
expect_render "${WORK}/namespaced.yaml" "namespaced: PodDisruptionBudget with 2 replicas" '^kind: PodDisruptionBudget$' 1
expect_render "${WORK}/monitor.yaml" "ServiceMonitor rendered when enabled" '^kind: ServiceMonitor$' 1
expect_render "${WORK}/cluster.yaml" "no ServiceMonitor by default" 'ServiceMonitor' 0

# ---------------------------------------------------------------- against the API server

if [[ -n "${PHASEGATE_E2E_KUBECONFIG:-}" ]]; then
  export KUBECONFIG="${PHASEGATE_E2E_KUBECONFIG}"
  command -v kubectl >/dev/null || { log "ERROR: kubectl not on PATH"; exit 1; }
else
  "${REPO_ROOT}/hack/local-cluster.sh" up >&2
  eval "$("${REPO_ROOT}/hack/local-cluster.sh" env)"
fi
k() { kubectl --request-timeout=30s "$@"; }

cleanup() {
  set +e
  k delete --ignore-not-found --wait=false -f "${WORK}/cluster-nocrd.yaml" >/dev/null 2>&1
  k delete --ignore-not-found --wait=false -f "${WORK}/namespaced-nocrd.yaml" >/dev/null 2>&1
  k delete namespace --ignore-not-found --wait=false "${NS}" "${WATCH_NS}" "${OTHER_NS}" >/dev/null 2>&1
  rm -rf "${WORK}"
}
trap cleanup EXIT

for n in "${NS}" "${WATCH_NS}" "${OTHER_NS}"; do
  # A previous run's namespace may still be terminating.
  k wait --for=delete "namespace/${n}" --timeout=120s >/dev/null 2>&1 || true
  k create namespace "${n}" --dry-run=client -o yaml | k apply -f - >/dev/null
  # The operator must run under the restricted Pod Security Standard.
  k label namespace "${n}" --overwrite \
    pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted >/dev/null
done

# dry_run <file> <description>
dry_run() {
  local out
  if out="$(k apply --dry-run=server -f "$1" 2>&1)"; then
    if grep -qi 'would violate PodSecurity' <<<"${out}"; then
      fail "$2: violates the restricted Pod Security Standard:"$'\n'"${out}"
    else
      pass "$2: accepted by the API server (dry run, $(grep -c . <<<"${out}") objects)"
    fi
  else
    fail "$2: rejected by the API server:"$'\n'"${out}"
  fi
}
dry_run "${WORK}/cluster.yaml" "cluster-wide install"
dry_run "${WORK}/namespaced.yaml" "namespace-scoped install"

# allowed <verb> <resource[.group]> <namespace or ""> [subresource]: "yes" or "no", from a
# SubjectAccessReview for the operator's ServiceAccount (with its groups). Unlike
# `kubectl auth can-i`, it needs no discovery, so it works before the CRD is installed.
allowed() {
  local res="${2%%.*}" group="" out
  [[ "$2" == *.* ]] && group="${2#*.}"
  out="$(k create -o jsonpath='{.status.allowed}' -f - <<SAR
apiVersion: authorization.k8s.io/v1
kind: SubjectAccessReview
spec:
  user: ${SA}
  groups: ["system:serviceaccounts", "system:serviceaccounts:${NS}", "system:authenticated"]
  resourceAttributes: {verb: "$1", group: "${group}", resource: "${res}", namespace: "$3", subresource: "${4:-}"}
SAR
)" || { echo error; return 0; }
  [[ "${out}" == true ]] && echo yes || echo no
}

# can_i <yes|no> <verb> <resource[.group]> <namespace or "" for all> [subresource]
can_i() {
  local got
  got="$(allowed "${@:2}")"
  [[ "${got}" == "$1" ]] && pass "can-i $2 $3${5:+/$5} in ${4:-all namespaces} = ${got}" \
    || fail "can-i $2 $3${5:+/$5} in ${4:-all namespaces}: want $1, got ${got}"
}

# RBAC changes reach the authorizer's cache asynchronously: wait for a grant (or its removal).
# wait_for_grant <yes|no> <verb> <resource[.group]> <namespace> [subresource]
wait_for_grant() {
  local deadline=$(($(date +%s) + 30))
  until [[ "$(allowed "${@:2}")" == "$1" ]]; do
    (($(date +%s) < deadline)) || { fail "RBAC: $2 $3 in ${4:-all namespaces} not $1 after 30s"; return 0; }
    sleep 0.5
  done
}

# Cluster-wide RBAC, applied for real (the CRD is not applied; pods' fate does not matter).
if k apply -f "${WORK}/cluster-nocrd.yaml" >/dev/null; then
  wait_for_grant yes list databasemigrations.phasegate.dev ""
  wait_for_grant yes create leases.coordination.k8s.io "${NS}"
  # Exactly what src/controller uses ...
  can_i yes list databasemigrations.phasegate.dev ""
  can_i yes watch databasemigrations.phasegate.dev ""
  can_i yes get databasemigrations.phasegate.dev "${OTHER_NS}"
  can_i yes patch databasemigrations.phasegate.dev "${OTHER_NS}" status
  can_i yes create jobs.batch "${OTHER_NS}"
  can_i yes get jobs.batch "${OTHER_NS}"
  can_i yes patch jobs.batch "${OTHER_NS}"
  can_i yes watch jobs.batch ""
  can_i yes get deployments.apps "${OTHER_NS}"
  can_i yes watch deployments.apps ""
  can_i yes get statefulsets.apps "${OTHER_NS}"
  can_i yes list statefulsets.apps ""
  can_i yes get daemonsets.apps "${OTHER_NS}"
  can_i yes watch daemonsets.apps ""
  can_i yes list pods ""
  can_i yes watch pods ""
  can_i yes create events.events.k8s.io "${OTHER_NS}"
  can_i yes create leases.coordination.k8s.io "${NS}"
  can_i yes patch leases.coordination.k8s.io "${NS}"
  can_i no update leases.coordination.k8s.io "${NS}"
  # ... and nothing more: no Secrets, no writes to migrations' spec or to workloads.
  can_i no get secrets "${OTHER_NS}"
  can_i no list secrets ""
  can_i no watch secrets ""
  can_i no get secrets "${NS}"
  can_i no get configmaps "${OTHER_NS}"
  can_i no update databasemigrations.phasegate.dev "${OTHER_NS}"
  can_i no patch databasemigrations.phasegate.dev "${OTHER_NS}"
  can_i no delete databasemigrations.phasegate.dev "${OTHER_NS}"
  can_i no update databasemigrations.phasegate.dev "${OTHER_NS}" status
  can_i no delete jobs.batch "${OTHER_NS}"
  can_i no update jobs.batch "${OTHER_NS}"
  can_i no patch deployments.apps "${OTHER_NS}"
  can_i no update statefulsets.apps "${OTHER_NS}"
  can_i no get replicasets.apps "${OTHER_NS}"
  can_i no get pods "${OTHER_NS}"
  can_i no create pods "${OTHER_NS}"
  can_i no get pods "${OTHER_NS}" log
  can_i no create pods "${OTHER_NS}" exec
  can_i no create events "${OTHER_NS}"
  can_i no create leases.coordination.k8s.io "${OTHER_NS}"
  can_i no delete leases.coordination.k8s.io "${NS}"
  k delete --wait=false -f "${WORK}/cluster-nocrd.yaml" >/dev/null
  wait_for_grant no list databasemigrations.phasegate.dev ""
else
  fail "applying the cluster-wide install"
fi

# Namespace-scoped RBAC: the same grants, in the watched namespace only.
if k apply -f "${WORK}/namespaced-nocrd.yaml" >/dev/null; then
  wait_for_grant yes list databasemigrations.phasegate.dev "${WATCH_NS}"
  wait_for_grant yes create leases.coordination.k8s.io "${NS}"
  can_i yes list databasemigrations.phasegate.dev "${WATCH_NS}"
  can_i yes patch databasemigrations.phasegate.dev "${WATCH_NS}" status
  can_i yes create jobs.batch "${WATCH_NS}"
  can_i yes list pods "${WATCH_NS}"
  can_i yes create events.events.k8s.io "${WATCH_NS}"
  can_i yes create leases.coordination.k8s.io "${NS}"
  can_i no list databasemigrations.phasegate.dev ""
  can_i no list databasemigrations.phasegate.dev "${OTHER_NS}"
  can_i no create jobs.batch "${OTHER_NS}"
  can_i no list pods ""
  can_i no get secrets "${WATCH_NS}"
  can_i no get secrets "${NS}"
  k delete --wait=false -f "${WORK}/namespaced-nocrd.yaml" >/dev/null
else
  fail "applying the namespace-scoped install"
fi

# The README's install command, for real: helm installs the chart and waits for the operator
# Deployment (kwok marks its pod Ready; the image itself is not pulled here).
README_NS=phasegate-chart-test-readme
if "${HELM}" install phasegate-readme "${CHART}" -n "${README_NS}" --create-namespace \
  --set image.repository=registry.example.com/phasegate --wait --timeout 120s >/dev/null; then
  pass "helm install as in docs/install.md"
  "${HELM}" uninstall phasegate-readme -n "${README_NS}" --wait >/dev/null && pass "helm uninstall" || fail "helm uninstall"
else
  fail "helm install as in docs/install.md"
fi
k delete namespace "${README_NS}" --wait=false >/dev/null 2>&1 || true

if ((failures > 0)); then
  log "${failures} check(s) failed"
  exit 1
fi
log "chart OK"
