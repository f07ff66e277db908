#!/usr/bin/env bash
# The chart's alerts and Grafana dashboard (docs/alerts.md), checked against the shipped chart:
#   1. both are off by default; helm lint --strict with both on;
#   2. monitoring-check (tests/monitoring/main.go, Prometheus' own PromQL parser): every
#      dashboard query and alert expression parses, and names only metrics the operator
#      exports (tests/data/metric-names.txt, which a unit test in src/metrics.rs keeps equal
#      to what the operator registers);
#   3. promtool check rules, then promtool test rules tests/monitoring/rules_test.yaml on the
#      rules rendered by helm (default thresholds);
#   4. thresholds set in values reach the rendered rules.
# promtool and the checker are built from their Go module into the cache (hack/promtool.sh);
# helm comes from hack/helm.sh. No cluster needed.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="${REPO_ROOT}/charts/phasegate"
HELM="${REPO_ROOT}/hack/helm.sh"
WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT
failures=0
log() { echo "[monitoring-test] $*" >&2; }
fail() { log "FAIL: $*"; failures=$((failures + 1)); }
pass() { log "ok: $*"; }

PROMTOOL="$("${REPO_ROOT}/hack/promtool.sh" --build-only)"
CHECKER="$("${REPO_ROOT}/hack/promtool.sh" --checker)"
on=(--set prometheusRule.enabled=true --set grafanaDashboard.enabled=true)

"${HELM}" template pg "${CHART}" -n phasegate-system >"${WORK}/default.yaml"
grep -qE '^kind: PrometheusRule$|grafana_dashboard' "${WORK}/default.yaml" \
  && fail "alerts or dashboard rendered by default" || pass "both off by default"
"${HELM}" lint --strict "${CHART}" "${on[@]}" >/dev/null \
  && pass "helm lint (alerts and dashboard on)" || fail "helm lint (alerts and dashboard on)"
"${HELM}" template pg "${CHART}" -n phasegate-system "${on[@]}" >"${WORK}/rendered.yaml"
[[ "$(grep -c '^    grafana_dashboard: "1"$' "${WORK}/rendered.yaml")" -eq 1 ]] \
  && pass "dashboard ConfigMap labelled for the Grafana sidecar" || fail "dashboard ConfigMap label"
grep -q '^  phasegate.json: |-$' "${WORK}/rendered.yaml" \
  && pass "dashboard JSON in the ConfigMap" || fail "dashboard JSON in the ConfigMap"

cp "${REPO_ROOT}/tests/monitoring/rules_test.yaml" "${WORK}/"
"${CHECKER}" -names "${REPO_ROOT}/tests/data/metric-names.txt" \
  -dashboard "${CHART}/dashboards/phasegate.json" \
  -rendered "${WORK}/rendered.yaml" -rules-out "${WORK}/rules.yaml" \
  && pass "queries parse and use exported metrics" || fail "monitoring-check"
# The check can fail: a misspelt metric, and a query that does not parse.
sed 's/phasegate_backfill_rows_per_second/phasegate_backfill_rows_per_sec/' \
  "${CHART}/dashboards/phasegate.json" >"${WORK}/misspelt.json"
sed 's/sum by (phase) (max by/sum by (phase) (max by (/' \
  "${CHART}/dashboards/phasegate.json" >"${WORK}/broken.json"
for bad in "misspelt:is not exported" "broken:does not parse"; do
  out="$("${CHECKER}" -names "${REPO_ROOT}/tests/data/metric-names.txt" -dashboard "${WORK}/${bad%%:*}.json" \
    -rendered "${WORK}/rendered.yaml" -rules-out "${WORK}/discard.yaml" 2>&1)" \
    && fail "monitoring-check passed a ${bad%%:*} dashboard" || {
      grep -q "${bad#*:}" <<<"${out}" && pass "monitoring-check refuses a ${bad%%:*} query" \
        || fail "monitoring-check on a ${bad%%:*} dashboard said: ${out}"
    }
done
"${PROMTOOL}" check rules "${WORK}/rules.yaml" >/dev/null \
  && pass "promtool check rules" || fail "promtool check rules"
(cd "${WORK}" && "${PROMTOOL}" test rules rules_test.yaml) \
  && pass "promtool test rules" || fail "promtool test rules"

"${HELM}" template pg "${CHART}" -n phasegate-system --set prometheusRule.enabled=true \
  --set prometheusRule.thresholds.rolloutWaitSeconds=600 \
  --set prometheusRule.thresholds.backfillStalledFor=2h \
  --set prometheusRule.alertLabels.team=db >"${WORK}/custom.yaml"
for p in 'phasegate_rollout_wait_seconds\) > 600$' 'rows_done\[2h\]\) == 0$' 'offset 2h\)$'; do
  grep -qE "${p}" "${WORK}/custom.yaml" && pass "threshold in values: ${p}" || fail "threshold ${p}"
done
[[ "$(grep -c '^            team: db$' "${WORK}/custom.yaml")" -eq 9 ]] \
  && pass "alertLabels on all 9 alerts" || fail "alertLabels on every alert"
"${HELM}" template pg "${CHART}" --set prometheusRule.enabled=true \
  --set prometheusRule.thresholds.rolloutWaitSeconds=1h >/dev/null 2>&1 \
  && fail "schema accepted a non-integer seconds threshold" || pass "schema refuses rolloutWaitSeconds=1h"

if [[ "${failures}" -gt 0 ]]; then
  log "${failures} check(s) failed"
  exit 1
fi
log "all checks passed"
