#!/usr/bin/env bash
# Test the Helm chart (charts/phasegate):
#   1. helm lint --strict with default, namespace-scoped and ServiceMonitor values;
#   2. helm template with default and namespace-scoped values (CRDs included), checked for
#      Secrets access and for the restricted security context;
#   3. the rendered manifests pass `kubectl apply --dry-run=server` on a real API server,
#      in namespaces that enforce the `restricted` Pod Security Standard;
#   4. the RBAC is applied for real and probed with `kubectl auth can-i` as the operator's
#      ServiceAccount (what it may do, and that it may not read Secrets), then removed;
#   5. the Job policy at admission: the chart is installed for real (its ValidatingAdmissionPolicy
#      bound to one test namespace) and an impersonated migration author, bound only to the
#      chart's -author ClusterRole, tries each attack of issue 12 (privileged, hostPID, hostPath
#      /, a foreign ServiceAccount, ...): each must be refused with the field and the rule, and
#      plain templates must be admitted; then every case of tests/data/policy-cases.json, the
#      table tests/chart.rs runs through the operator's check, must be refused with exactly the
#      rules and fields the table names (or admitted).
#
# Cluster: $PHASEGATE_E2E_KUBECONFIG if set, else the local control plane
# (hack/local-cluster.sh up). helm comes from hack/helm.sh (built from its Go module).
# Only objects this script creates (names starting with phasegate-chart-test) are deleted;
# the CRD is created if it is missing (helm would install it too), never changed or deleted.
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
expect_render "${WORK}/cluster.yaml" "cluster: operator and author ClusterRoles" '^kind: ClusterRole$' 2
expect_render "${WORK}/cluster.yaml" "cluster: no PHASEGATE_NAMESPACE" 'PHASEGATE_NAMESPACE' 0
expect_render "${WORK}/namespaced.yaml" "namespaced: only the author ClusterRole" '^kind: ClusterRole$' 1
expect_render "${WORK}/namespaced.yaml" "namespaced: no ClusterRoleBinding" '^kind: ClusterRoleBinding$' 0
expect_render "${WORK}/namespaced.yaml" "namespaced: PHASEGATE_NAMESPACE" 'name: PHASEGATE_NAMESPACE' 1
expect_render "${WORK}/namespaced.yaml" "namespaced: Role in the watched namespace" "^  namespace: ${WATCH_NS}$" 2
expect_render "${WORK}/namespaced.yaml" "namespaced: PodDisruptionBudget with 2 replicas" '^kind: PodDisruptionBudget$' 1
# The Job policy: a ConfigMap the operator reads, and the same rules at admission.
"${HELM}" template "${RELEASE}" "${CHART}" -n "${NS}" --set admissionPolicy.enabled=false >"${WORK}/no-vap.yaml"
"${HELM}" template "${RELEASE}" "${CHART}" -n "${NS}" --set jobPolicy.enabled=false >"${WORK}/policy-off.yaml"
"${HELM}" template "${RELEASE}" "${CHART}" -n "${NS}" --set rbac.author.aggregateToEdit=true >"${WORK}/aggregate.yaml"
for f in cluster namespaced; do
  expect_render "${WORK}/${f}.yaml" "${f}: ValidatingAdmissionPolicy" '^kind: ValidatingAdmissionPolicy$' 1
  expect_render "${WORK}/${f}.yaml" "${f}: ValidatingAdmissionPolicyBinding" '^kind: ValidatingAdmissionPolicyBinding$' 1
  expect_render "${WORK}/${f}.yaml" "${f}: Job policy ConfigMap" "^  name: ${RELEASE}-job-policy$" 3
  expect_render "${WORK}/${f}.yaml" "${f}: PHASEGATE_JOB_POLICY" 'name: PHASEGATE_JOB_POLICY' 1
  expect_render "${WORK}/${f}.yaml" "${f}: author ClusterRole" "^  name: ${RELEASE}-author$" 1
  expect_render "${WORK}/${f}.yaml" "${f}: author role not aggregated by default" 'aggregate-to-edit' 0
done
# The binding's own documents only (the grant's NetworkPolicy has a namespaceSelector too).
docs_of() { awk -v kind="$2" '/^---/ {if (doc ~ "\nkind: " kind "\n") printf "%s", doc; doc = ""} {doc = doc $0 "\n"} END {if (doc ~ "\nkind: " kind "\n") printf "%s", doc}' "$1"; }
docs_of "${WORK}/cluster.yaml" ValidatingAdmissionPolicyBinding >"${WORK}/cluster-binding.yaml"
expect_render "${WORK}/cluster-binding.yaml" "cluster: binding rendered" '^kind: ValidatingAdmissionPolicyBinding$' 1
expect_render "${WORK}/cluster-binding.yaml" "cluster: binding covers every namespace" 'namespaceSelector' 0
expect_render "${WORK}/namespaced.yaml" "namespaced: binding covers the watched namespace" "kubernetes.io/metadata.name: \"${WATCH_NS}\"" 1
expect_render "${WORK}/no-vap.yaml" "admissionPolicy.enabled=false: no admission policy" 'ValidatingAdmissionPolicy' 0
expect_render "${WORK}/no-vap.yaml" "admissionPolicy.enabled=false: the operator still polices" 'name: PHASEGATE_JOB_POLICY' 1
expect_render "${WORK}/policy-off.yaml" "jobPolicy.enabled=false: no admission policy" 'ValidatingAdmissionPolicy' 0
expect_render "${WORK}/policy-off.yaml" "jobPolicy.enabled=false: in the operator's policy file" 'enabled: false' 1
expect_render "${WORK}/aggregate.yaml" "aggregateToEdit: edit label" 'rbac.authorization.k8s.io/aggregate-to-edit: "true"' 1
if "${HELM}" template "${RELEASE}" "${CHART}" --set jobPolicy.allowedServiceAcounts[0]=x >/dev/null 2>&1; then
  fail "a misspelt jobPolicy key is accepted by the chart"
else
  pass "a misspelt jobPolicy key is refused (values.schema.json)"
fi

# Executor pod settings: rendered as JSON into PHASEGATE_EXECUTOR_POD; unknown keys refused.
"${HELM}" template "${RELEASE}" "${CHART}" -n "${NS}" \
  --set-json 'executor.pod={"nodeSelector":{"pool":"db"},"tolerations":[{"key":"db","operator":"Exists"}],"priorityClassName":"migrations"}' \
  --set-json 'extraEnv=[{"name":"KUBERNETES_SERVICE_HOST","value":"192.0.2.2"}]' >"${WORK}/executor-pod.yaml"
expect_render "${WORK}/cluster.yaml" "executor.pod defaults: PHASEGATE_EXECUTOR_POD sets nothing" \
  'value: "\{\\"annotations\\":\{\},\\"nodeSelector\\":\{\},\\"priorityClassName\\":\\"\\",\\"resources\\":\{\},\\"tolerations\\":\[\]\}"' 1
expect_render "${WORK}/executor-pod.yaml" "executor.pod: nodeSelector in PHASEGATE_EXECUTOR_POD" '\\"nodeSelector\\":\{\\"pool\\":\\"db\\"\}' 1
expect_render "${WORK}/executor-pod.yaml" "executor.pod: tolerations in PHASEGATE_EXECUTOR_POD" '\\"tolerations\\":\[\{\\"key\\":\\"db\\"' 1
expect_render "${WORK}/executor-pod.yaml" "extraEnv reaches the operator container" 'name: KUBERNETES_SERVICE_HOST' 1
if "${HELM}" template "${RELEASE}" "${CHART}" --set executor.pod.nodeSelectors.a=b >/dev/null 2>&1; then
  fail "a misspelt executor.pod key is accepted by the chart"
else
  pass "a misspelt executor.pod key is refused (values.schema.json)"
fi

if out=$("${HELM}" template "${RELEASE}" "${CHART}" --set replicas=2 --set leaderElection.enabled=false 2>&1); then
  fail "replicas=2 without leader election renders"
elif grep -q "needs leaderElection.enabled=true" <<<"${out}"; then
  pass "replicas=2 without leader election is refused with the reason"
else
  fail "replicas=2 without leader election fails for another reason: ${out}"
fi
if "${HELM}" template "${RELEASE}" "${CHART}" --set replicas=2 >/dev/null 2>&1; then
  pass "replicas=2 with leader election (the default) renders"
else
  fail "replicas=2 with leader election does not render"
fi

expect_render "${WORK}/monitor.yaml" "ServiceMonitor rendered when enabled" '^kind: ServiceMonitor$' 1

# The commit grant: container and Service port `grant`, the URL executors get, the NetworkPolicy
# letting executor pods (and only them) reach it; a fixed ClusterIP and URL where pods have no DNS.
"${HELM}" template "${RELEASE}" "${CHART}" -n "${NS}" --set service.clusterIP=10.0.0.12 \
  --set grant.url=http://10.0.0.12:8082 >"${WORK}/grant-ip.yaml"
"${HELM}" template "${RELEASE}" "${CHART}" -n "${NS}" --set grant.networkPolicy.enabled=false >"${WORK}/no-netpol.yaml"
for f in cluster namespaced; do
  expect_render "${WORK}/${f}.yaml" "${f}: grant port on the container and the Service" '^ *- name: grant$|^ *targetPort: grant$' 3
  expect_render "${WORK}/${f}.yaml" "${f}: grant served on 8082" 'value: "0\.0\.0\.0:8082"' 1
  expect_render "${WORK}/${f}.yaml" "${f}: executors ask the Service by its DNS name" \
    "value: \"http://${RELEASE}\\.${NS}\\.svc:8082\"" 1
  expect_render "${WORK}/${f}.yaml" "${f}: NetworkPolicy" '^kind: NetworkPolicy$' 1
  expect_render "${WORK}/${f}.yaml" "${f}: grant port from executor pods only" 'phasegate.dev/executor: "true"' 1
  expect_render "${WORK}/${f}.yaml" "${f}: no fixed ClusterIP by default" 'clusterIP:' 0
done
expect_render "${WORK}/grant-ip.yaml" "service.clusterIP: a fixed ClusterIP" '^  clusterIP: 10\.0\.0\.12$' 1
expect_render "${WORK}/grant-ip.yaml" "grant.url: executors ask that URL" 'value: "http://10\.0\.0\.12:8082"' 1
expect_render "${WORK}/no-netpol.yaml" "grant.networkPolicy.enabled=false: no NetworkPolicy" 'NetworkPolicy' 0
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
  "${HELM}" uninstall phasegate-chart-test-vap -n "${NS}" >/dev/null 2>&1
  k delete namespace --ignore-not-found --wait=false "${NS}" "${WATCH_NS}" "${OTHER_NS}" \
    phasegate-chart-test-author >/dev/null 2>&1
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
  can_i no patch jobs.batch "${OTHER_NS}" # no adoption: a Job the operator did not create is a conflict
  can_i yes watch jobs.batch ""
  can_i yes delete jobs.batch "${OTHER_NS}" # the fence's fast stop
  can_i yes get deployments.apps "${OTHER_NS}"
  can_i yes watch deployments.apps ""
  can_i yes get statefulsets.apps "${OTHER_NS}"
  can_i yes list statefulsets.apps ""
  can_i yes get daemonsets.apps "${OTHER_NS}"
  can_i yes watch daemonsets.apps ""
  can_i yes get rollouts.argoproj.io "${OTHER_NS}"
  can_i yes watch rollouts.argoproj.io ""
  can_i no patch rollouts.argoproj.io "${OTHER_NS}"
  can_i yes list pods ""
  can_i yes list replicasets.apps ""
  can_i yes list controllerrevisions.apps ""
  can_i no watch replicasets.apps ""
  can_i yes watch pods ""
  can_i yes get pods "${OTHER_NS}" log
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
  can_i no update jobs.batch "${OTHER_NS}"
  can_i no patch deployments.apps "${OTHER_NS}"
  can_i no update statefulsets.apps "${OTHER_NS}"
  can_i no get replicasets.apps "${OTHER_NS}"
  can_i no get pods "${OTHER_NS}"
  can_i no create pods "${OTHER_NS}"
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
  can_i yes delete jobs.batch "${WATCH_NS}"
  can_i yes list pods "${WATCH_NS}"
  can_i yes create events.events.k8s.io "${WATCH_NS}"
  can_i yes create leases.coordination.k8s.io "${NS}"
  can_i no list databasemigrations.phasegate.dev ""
  can_i no list databasemigrations.phasegate.dev "${OTHER_NS}"
  can_i no create jobs.batch "${OTHER_NS}"
  can_i no delete jobs.batch "${OTHER_NS}"
  can_i no list pods ""
  can_i yes get pods "${WATCH_NS}" log
  can_i no get pods "${OTHER_NS}" log
  can_i no get secrets "${WATCH_NS}"
  can_i no get secrets "${NS}"
  k delete --wait=false -f "${WORK}/namespaced-nocrd.yaml" >/dev/null
else
  fail "applying the namespace-scoped install"
fi

# ---------------------------------------------------------------- Job policy at admission
# The chart installed for real, its admission policy bound to AUTHOR_NS only (watchNamespace),
# so other users of the cluster are not affected. AUTHOR may do nothing but what the chart's
# -author ClusterRole grants, bound in AUTHOR_NS.
VAP_RELEASE=phasegate-chart-test-vap    # contains the chart name: fullname = release name
AUTHOR_NS=phasegate-chart-test-author
AUTHOR=phasegate-chart-test-author       # an impersonated user (kubectl --as)
ka() { k --as="${AUTHOR}" -n "${AUTHOR_NS}" "$@"; }

# The policy of the shared case table (tests/data/policy-cases.json), as the operator's test uses.
CASES="${REPO_ROOT}/tests/data/policy-cases.json"
jq --arg ns "${AUTHOR_NS}" '{watchNamespace: $ns, jobPolicy: .policy}' "${CASES}" >"${WORK}/vap-values.yaml"

# migration <name> <expand job template> [contract phase]: a DatabaseMigration in AUTHOR_NS
# (flow YAML), with an inline-SQL contract unless one is given.
migration() {
  local contract="${3:-}"
  [[ -n "${contract}" ]] || contract="{sql: 'ALTER TABLE users DROP COLUMN legacy_flag'}"
  cat <<DBM
apiVersion: phasegate.dev/v1alpha1
kind: DatabaseMigration
metadata: {name: $1, namespace: ${AUTHOR_NS}}
spec:
  appVersion: "1.0.0"
  database: {urlSecretRef: {name: shop-db, key: url}}
  expand: {job: {template: $2}}
  contract: ${contract}
  rollout: {targets: [{kind: Deployment, name: shop-api}]}
DBM
}
PSQL='{name: psql, image: "postgres:17-alpine", command: [psql, "$(PHASEGATE_DATABASE_URL)", -c, "SELECT 1"], securityContext: {allowPrivilegeEscalation: false}}'
NONROOT='securityContext: {runAsNonRoot: true, runAsUser: 70}'
PLAIN="{spec: {${NONROOT}, containers: [${PSQL}]}}"

# refused <name> <description> <expand template> <contract or ""> <text the refusal must hold>...
refused() {
  local name="$1" desc="$2" out want missing=()
  if out="$(migration "${name}" "$3" "$4" | ka create -f - 2>&1)"; then
    fail "admission: ${desc}: admitted"
    ka delete databasemigration "${name}" --wait=false >/dev/null 2>&1 || true
    return 0
  fi
  for want in "ValidatingAdmissionPolicy '${VAP_RELEASE}-job-policy'" "${@:5}"; do
    grep -qF -- "${want}" <<<"${out}" || missing+=("'${want}'")
  done
  if ((${#missing[@]} > 0)); then
    fail "admission: ${desc}: refused, but the message lacks ${missing[*]}:"$'\n'"${out}"
  else
    pass "admission: ${desc}: refused: ${out#*denied request: }"
  fi
}

# admitted <name> <description> <expand template> [contract]: created for real, then deleted.
admitted() {
  local out
  if out="$(migration "$1" "$3" "${4:-}" | ka create -f - 2>&1)"; then
    pass "admission: $2: admitted"
    ka delete databasemigration "$1" --wait=false >/dev/null 2>&1 || true
  else
    fail "admission: $2: refused:"$'\n'"${out}"
  fi
}

# policy_cases: every case of the shared table as an expand template, refused with exactly the
# rules the table names (each naming its field), or admitted when it names none.
policy_cases() {
  local n i name tmpl out created want got f missing
  n="$(jq '.cases | length' "${CASES}")"
  for ((i = 0; i < n; i++)); do
    name="$(jq -r ".cases[${i}].name" "${CASES}")"
    tmpl="$(jq -c ".cases[${i}] as \$c | (\$c.template // (.base * \$c.patch))" "${CASES}")"
    created=yes
    out="$(migration "case-${name}" "${tmpl}" "" | ka create --dry-run=server -f - 2>&1)" || created=no
    want="$(jq -r ".cases[${i}].refused[].rule" "${CASES}" | sort -u)"
    got="$(grep -oE '\[Phasegate Job policy: [a-z-]+\]' <<<"${out}" | sed -E 's/.*: ([a-z-]+)\]$/\1/' | sort -u || true)"
    missing=()
    while IFS= read -r f; do
      [[ -z "${f}" ]] || grep -qF -- "spec.expand.job.template.${f}" <<<"${out}" || missing+=("${f}")
    done < <(jq -r ".cases[${i}].refused[].field" "${CASES}")
    if [[ -z "${want}" && "${created}" == no ]]; then
      fail "policy case ${name}: refused, the table admits it:"$'\n'"${out}"
    elif [[ "${got}" != "${want}" || ${#missing[@]} -gt 0 ]]; then
      fail "policy case ${name}: want rules [${want//$'\n'/ }], got [${got//$'\n'/ }], fields not named: ${missing[*]:-none}:"$'\n'"${out}"
    else
      pass "policy case ${name}: $([[ -n "${want}" ]] && echo "refused (${want//$'\n'/ })" || echo admitted)"
    fi
  done
}

# can_author <yes|no> <verb> <resource> [subresource]: `kubectl auth can-i` as AUTHOR in AUTHOR_NS.
can_author() {
  local got
  got="$(ka auth can-i "$2" "$3" ${4:+--subresource="$4"} 2>/dev/null || true)"
  [[ "${got}" == "$1" ]] && pass "author can-i $2 $3${4:+/$4} = ${got}" \
    || fail "author can-i $2 $3${4:+/$4}: want $1, got ${got}"
}

k wait --for=delete "namespace/${AUTHOR_NS}" --timeout=120s >/dev/null 2>&1 || true
k create namespace "${AUTHOR_NS}" >/dev/null
k label namespace "${AUTHOR_NS}" pod-security.kubernetes.io/enforce=restricted >/dev/null
# A migration stored before the policy existed (as the admin, so nothing judged it): the policy
# must not lock it (annotations such as approve and retry are UPDATEs). Its template breaks a
# rule harmlessly: it names a node that does not exist.
PRIV="{spec: {${NONROOT}, containers: [{name: pwn, image: \"postgres:17\", securityContext: {privileged: true}}]}}"
LEGACY="{spec: {nodeName: phasegate-chart-test-nowhere, ${NONROOT}, containers: [${PSQL}]}}"
k get crd databasemigrations.phasegate.dev >/dev/null 2>&1 \
  || k create -f "${CHART}/crds/databasemigrations.phasegate.dev.yaml" >/dev/null
k wait --for=condition=Established crd/databasemigrations.phasegate.dev --timeout=60s >/dev/null
legacy=no
migration legacy "${LEGACY}" | k create -f - >/dev/null && legacy=yes
if "${HELM}" install "${VAP_RELEASE}" "${CHART}" -n "${NS}" -f "${WORK}/vap-values.yaml" >/dev/null; then
  pass "helm install with the admission policy bound to ${AUTHOR_NS}"
  k wait --for=condition=Established crd/databasemigrations.phasegate.dev --timeout=60s >/dev/null
  k create rolebinding "${VAP_RELEASE}-author" -n "${AUTHOR_NS}" \
    --clusterrole="${VAP_RELEASE}-author" --user="${AUTHOR}" >/dev/null

  # The premise: the author may write migrations and nothing that runs or reads anything.
  deadline=$(($(date +%s) + 30))
  until [[ "$(ka auth can-i create databasemigrations.phasegate.dev 2>/dev/null)" == yes ]]; do
    (($(date +%s) < deadline)) || break
    sleep 0.5
  done
  can_author yes create databasemigrations.phasegate.dev
  can_author yes delete databasemigrations.phasegate.dev
  can_author no update databasemigrations.phasegate.dev status
  can_author no create pods
  can_author no create jobs.batch
  can_author no get secrets
  can_author no create serviceaccounts token

  # Policies reach the API server's admission asynchronously: wait until the attack is refused
  # (a server-side dry run creates nothing).
  deadline=$(($(date +%s) + 30))
  until ! migration probe "${PRIV}" | ka create --dry-run=server -f - >/dev/null 2>&1; do
    (($(date +%s) < deadline)) || break
    sleep 0.5
  done
  if warnings="$(k get validatingadmissionpolicy "${VAP_RELEASE}-job-policy" \
    -o jsonpath='{.status.typeChecking.expressionWarnings}' 2>&1)"; then
    [[ -z "${warnings}" ]] || log "type-checking warnings of the admission policy: ${warnings}"
  else
    fail "the chart installed no ValidatingAdmissionPolicy: ${warnings}"
  fi

  # Each attack of issue 12 on its own, then all at once (the field and the rule must be named).
  refused privileged "privileged container" "${PRIV}" "" \
    'spec.expand.job.template.spec.containers[name=pwn].securityContext.privileged' '[Phasegate Job policy: privileged]'
  refused host-pid "hostPID" "{spec: {hostPID: true, ${NONROOT}, containers: [${PSQL}]}}" "" \
    'spec.expand.job.template.spec.hostPID' '[Phasegate Job policy: host-namespace]'
  refused host-path "hostPath /" \
    "{spec: {${NONROOT}, volumes: [{name: host, hostPath: {path: /}}], containers: [${PSQL}]}}" "" \
    'spec.expand.job.template.spec.volumes[name=host].hostPath (/)' '[Phasegate Job policy: host-path]'
  refused foreign-sa "a foreign serviceAccountName (in contract)" "${PLAIN}" \
    "{job: {template: {spec: {serviceAccountName: deployer, ${NONROOT}, containers: [${PSQL}]}}}}" \
    'spec.contract.job.template.spec.serviceAccountName (deployer)' '[Phasegate Job policy: service-account]'
  refused attack "the whole attack (privileged, hostPID, hostPath /, deployer)" \
    "{spec: {serviceAccountName: deployer, hostPID: true, volumes: [{name: host, hostPath: {path: /}}], containers: [{name: pwn, image: busybox, securityContext: {privileged: true}, volumeMounts: [{name: host, mountPath: /host}]}]}}" "" \
    'spec.expand.job.template.spec.serviceAccountName (deployer)' '[Phasegate Job policy: service-account]' \
    '[Phasegate Job policy: host-namespace]' '[Phasegate Job policy: host-path]' '[Phasegate Job policy: privileged]'
  refused root "no runAsNonRoot" "{spec: {containers: [${PSQL}]}}" "" \
    'spec.expand.job.template.spec.containers[name=psql].securityContext.runAsNonRoot' '[Phasegate Job policy: run-as-non-root]'
  refused init-root "an init container running as uid 0" \
    "{spec: {${NONROOT}, initContainers: [{name: init, image: \"postgres:17\", securityContext: {runAsUser: 0}}], containers: [${PSQL}]}}" "" \
    'spec.expand.job.template.spec.initContainers[name=init].securityContext.runAsUser' '[Phasegate Job policy: run-as-non-root]'
  refused token "a ServiceAccount token" "{spec: {automountServiceAccountToken: true, ${NONROOT}, containers: [${PSQL}]}}" "" \
    'spec.expand.job.template.spec.automountServiceAccountToken' '[Phasegate Job policy: service-account-token]'
  refused projected-token "a projected ServiceAccount token" \
    "{spec: {${NONROOT}, volumes: [{name: t, projected: {sources: [{serviceAccountToken: {path: t}}]}}], containers: [${PSQL}]}}" "" \
    'spec.expand.job.template.spec.volumes[name=t].projected.sources[*].serviceAccountToken' '[Phasegate Job policy: service-account-token]'
  refused caps "an added capability" \
    "{spec: {${NONROOT}, containers: [{name: psql, image: \"postgres:17\", securityContext: {capabilities: {add: [SYS_ADMIN]}}}]}}" "" \
    'spec.expand.job.template.spec.containers[name=psql].securityContext.capabilities.add' '[Phasegate Job policy: capabilities]'
  refused image "an image outside jobPolicy.allowedImages" \
    "{spec: {${NONROOT}, containers: [{name: evil, image: \"registry.example.com/dbx/evil:1\"}]}}" "" \
    'spec.expand.job.template.spec.containers[name=evil].image' '[Phasegate Job policy: image]'
  refused seccomp "seccomp Unconfined" \
    "{spec: {securityContext: {runAsNonRoot: true, seccompProfile: {type: Unconfined}}, containers: [${PSQL}]}}" "" \
    'spec.expand.job.template.spec.securityContext.seccompProfile.type' '[Phasegate Job policy: seccomp]'
  refused node-name "nodeName" "{spec: {nodeName: node-0, ${NONROOT}, containers: [${PSQL}]}}" "" \
    'spec.expand.job.template.spec.nodeName' '[Phasegate Job policy: node-name]'

  policy_cases

  admitted plain "a plain psql template (non-root)" "${PLAIN}"
  admitted allowed-sa "the allowed ServiceAccount migrator, both phases as Jobs" \
    "{spec: {serviceAccountName: migrator, ${NONROOT}, containers: [${PSQL}]}}" "{job: {template: ${PLAIN}}}"
  admitted hardened "a restricted template (drop ALL, RuntimeDefault, allowed image)" \
    "{spec: {securityContext: {runAsNonRoot: true, runAsUser: 1000, seccompProfile: {type: RuntimeDefault}}, containers: [{name: m, image: \"registry.example.com/db/migrate:2\", securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}, readOnlyRootFilesystem: true}}]}}"

  # Cost: a template far larger than any real one (40 containers with 40 mounts and 10 ports
  # each, 40 volumes, in both phases) stays within the API server's CEL cost limits.
  vols="" mounts="" ports="" ctrs=""
  for i in $(seq 40); do
    vols+="${vols:+, }{name: v${i}, emptyDir: {}}"
    mounts+="${mounts:+, }{name: v${i}, mountPath: /m${i}}"
  done
  for i in $(seq 10); do ports+="${ports:+, }{containerPort: $((5000 + i))}"; done
  for i in $(seq 40); do
    ctrs+="${ctrs:+, }{name: c${i}, image: \"postgres:17\", ports: [${ports}], volumeMounts: [${mounts}], securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}}"
  done
  BIG="{spec: {${NONROOT}, volumes: [${vols}], containers: [${ctrs}]}}"
  admitted big "a very large template in both phases (CEL cost)" "${BIG}" "{job: {template: ${BIG}}}"

  # An UPDATE that keeps the template (approve, retry) is not judged again.
  if migration kept "${PLAIN}" | ka create -f - >/dev/null 2>&1 \
    && ka annotate databasemigration kept phasegate.dev/retry=1 >/dev/null 2>&1; then
    pass "admission: annotating an admitted migration"
  else
    fail "admission: annotating an admitted migration"
  fi
  ka delete databasemigration kept --ignore-not-found --wait=false >/dev/null 2>&1 || true
  if [[ "${legacy}" == yes ]] && ka annotate databasemigration legacy phasegate.dev/retry=1 >/dev/null 2>&1 \
    && ka delete databasemigration legacy >/dev/null 2>&1; then
    pass "admission: a migration stored before the policy can still be annotated and deleted"
  else
    fail "admission: a migration stored before the policy (created: ${legacy}) is locked by the policy"
  fi

  # Outside the bound namespace the chart's binding does not apply (watchNamespace scopes it).
  if migration outside "${PRIV}" | sed "s/namespace: ${AUTHOR_NS}/namespace: ${OTHER_NS}/" \
    | k create --dry-run=server -f - >/dev/null 2>&1; then
    pass "admission: the binding is scoped to ${AUTHOR_NS}"
  else
    fail "admission: the binding refused a migration in ${OTHER_NS}, outside watchNamespace"
  fi

  "${HELM}" uninstall "${VAP_RELEASE}" -n "${NS}" --wait >/dev/null || fail "helm uninstall ${VAP_RELEASE}"
else
  fail "helm install with the admission policy"
fi
k delete namespace "${AUTHOR_NS}" --wait=false >/dev/null 2>&1 || true

# The README's install command, for real: helm installs the chart and waits for the operator
# Deployment (kwok marks its pod Ready; the image itself is not pulled here). Its admission
# policy is bound to no namespace, since the cluster may be shared with e2e runs whose templates
# it would judge (it is tested above, bound to one namespace).
README_NS=phasegate-chart-test-readme
if "${HELM}" install phasegate-readme "${CHART}" -n "${README_NS}" --create-namespace \
  --set image.repository=registry.example.com/phasegate \
  --set admissionPolicy.namespaceSelector.matchLabels.phasegate-chart-test=readme \
  --wait --timeout 120s >/dev/null; then
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
